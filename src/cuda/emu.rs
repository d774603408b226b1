//! The CUDA kernel emulator (feature `emu`): the library's kernels, compiled as host C++ with a
//! shim (`kernels/emu/`), run on the CPU with CUDA's execution model made strict.
//!
//! - Each block runs on one OS thread; its CUDA threads are fibers that switch only at
//!   `__syncthreads` and warp collectives, in an order drawn from a per-launch seed (forward,
//!   reverse, random), so a missing barrier changes the result from run to run.
//! - A thread that returns while others wait at a barrier, or a warp collective some lanes never
//!   join, is an error (a hang or silent garbage on a GPU).
//! - Buffers ([`EmuBuffer`]) are bordered by guard pages and poisoned with NaN: an out-of-bounds
//!   access kills the process with a message naming the kernel, block and thread; an element a
//!   kernel should write but does not stays NaN.
//!
//! [`EmuExecutor`] runs the CUDA backend's plans this way: `GpuBackend<EmuExecutor>` is the
//! whole CUDA backend, kernels included, on the CPU.
//!
//! Seeds: each launch draws a fresh one unless `FERROCONV_EMU_SEED` fixes it; an error names the
//! seed to replay. `FERROCONV_EMU_THREADS` sets the OS threads per launch.

mod buffer;
mod executor;
mod ffi;
mod launch;
pub mod selftest;

pub use buffer::{EmuBuffer, GuardSide, PlainData};
pub use executor::{EmuAllocation, EmuExecutor};

use std::sync::{Arc, OnceLock};

use crate::cuda::{GpuBackend, GpuBuffer};
use crate::error::Result;

/// A buffer in the emulator's memory, as tensors on [`Device::Emu`](crate::Device::Emu) hold it.
pub type EmuDeviceBuffer<T> = GpuBuffer<T, EmuAllocation>;

/// The backend of [`Device::Emu`](crate::Device::Emu): the whole CUDA backend on the emulator,
/// created once and shared by every tensor on it.
pub fn device_backend() -> Result<Arc<GpuBackend<EmuExecutor>>> {
    static BACKEND: OnceLock<Arc<GpuBackend<EmuExecutor>>> = OnceLock::new();
    if let Some(backend) = BACKEND.get() {
        return Ok(Arc::clone(backend));
    }
    let backend = Arc::new(GpuBackend::new(EmuExecutor::new()?));
    Ok(Arc::clone(BACKEND.get_or_init(|| backend)))
}
pub use launch::{EmuKernel, LaunchShape, SEED_VARIABLE, Schedule, THREADS_VARIABLE, launch};
