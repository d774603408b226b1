//! The CUDA backend's own suite (tests/gpu_suite: every op, direction and algorithm of a set of
//! geometries against the CPU backend) on the emulator, once per fiber order: forward, reverse
//! and random (seeds 0, 1, 2), on two OS threads.
#![cfg(feature = "emu")]

mod gpu_suite;

use ferroconv::cuda::GpuBackend;
use ferroconv::cuda::emu::{EmuExecutor, Schedule};

#[test]
fn the_cuda_suite_passes_on_the_emulator_in_every_fiber_order() {
    for seed in 0..3 {
        gpu_suite::check_everything(|algorithm| {
            let executor = EmuExecutor::with_schedule(Schedule { seed, os_threads: 2 }).unwrap();
            GpuBackend::new(executor).with_algorithm(algorithm)
        });
    }
}
