//! The emulator's runtime on its own test kernels (kernels/emu/tests/): barriers, shuffles,
//! atomics, coordinates, shared memory and half types compute the right thing under every fiber
//! order and OS-thread count; a missing barrier changes the result; kernel bugs that hang or go
//! unnoticed on a GPU are reported as errors.
#![cfg(feature = "emu")]

use ferroconv::cuda::emu::selftest::{SelfTestArgs, SelfTestKernel};
use ferroconv::cuda::emu::{EmuBuffer, LaunchShape, PlainData, Schedule, launch};
use ferroconv::{bf16, f16};

/// Launches a self-test kernel with `input` (its `n` is the input's length) and `output`.
fn run<I: PlainData, O: PlainData>(
    kernel: SelfTestKernel,
    shape: LaunchShape,
    input: &EmuBuffer<I>,
    output: &mut EmuBuffer<O>,
    param: i64,
    schedule: Schedule,
) -> ferroconv::Result<()> {
    let args =
        SelfTestArgs { input: input.device_ptr(), output: output.device_ptr_mut(), n: input.len() as i64, param };
    // SAFETY: every self-test kernel takes SelfTestArgs; both buffers are borrowed for the whole
    // launch; each test sizes them for what its kernel reads and writes (the kernels' comments).
    unsafe { launch(kernel.kernel(), &shape, &args, schedule) }
}

fn shape(grid: u32, block: u32, shared_bytes: u32) -> LaunchShape {
    LaunchShape { grid: [grid, 1, 1], block: [block, 1, 1], shared_bytes }
}

/// Seeds covering each fiber order (seed % 3) several times, on 1 and 3 OS threads.
fn schedules() -> impl Iterator<Item = Schedule> {
    (0..9).flat_map(|seed| [1, 3].map(|os_threads| Schedule { seed, os_threads }))
}

/// Small integers, so float sums are exact in any order.
fn small_integers(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect()
}

/// The per-block sums `selftest_block_sum` computes: block b sums a grid-stride slice.
fn block_sums(input: &[f32], grid: usize, block: usize) -> Vec<f32> {
    let mut sums = vec![0.0; grid];
    for (i, v) in input.iter().enumerate() {
        sums[(i / block) % grid] += v;
    }
    sums
}

#[test]
fn block_reduction_is_right_in_every_order() {
    let (grid, block) = (6, 256);
    let values = small_integers(5000);
    let expected = block_sums(&values, grid, block);
    let input = EmuBuffer::from_slice(&values).unwrap();
    for schedule in schedules() {
        for (kernel, shared) in
            [(SelfTestKernel::SelftestBlockSum, 0), (SelfTestKernel::SelftestBlockSumDynamic, block * 4)]
        {
            let mut output = EmuBuffer::<f32>::new(grid).unwrap();
            run(kernel, shape(grid as u32, block as u32, shared as u32), &input, &mut output, 0, schedule).unwrap();
            assert_eq!(output.as_slice(), expected, "{kernel:?} {schedule:?}");
        }
    }
}

#[test]
fn a_missing_barrier_changes_the_result() {
    let (grid, block) = (4, 128);
    let values = small_integers(2000);
    let expected = block_sums(&values, grid, block);
    let input = EmuBuffer::from_slice(&values).unwrap();
    let mut wrong = 0;
    let mut distinct_results: Vec<Vec<f32>> = Vec::new();
    for seed in 0..9 {
        let mut output = EmuBuffer::<f32>::new(grid).unwrap();
        let schedule = Schedule { seed, os_threads: 2 };
        let kernel = SelfTestKernel::SelftestBlockSumMissingBarrier;
        run(kernel, shape(grid as u32, block as u32, 0), &input, &mut output, 0, schedule).unwrap();
        let result = output.as_slice().to_vec();
        wrong += usize::from(result != expected);
        if !distinct_results.contains(&result) {
            distinct_results.push(result);
        }
    }
    assert!(wrong >= 6, "the racy reduction came out right for {} of 9 seeds", 9 - wrong);
    assert!(distinct_results.len() >= 2, "every order gave the same result: the order does not vary");
}

#[test]
fn warp_reductions_by_shuffle_down_and_xor() {
    let (grid, block) = (3, 128);
    let values = small_integers(grid * block);
    let input = EmuBuffer::from_slice(&values).unwrap();
    let mut expected = Vec::new();
    for warp in values.chunks(32) {
        let sum: f32 = warp.iter().sum();
        expected.extend([sum, sum]);
    }
    for schedule in schedules() {
        let mut output = EmuBuffer::<f32>::new(expected.len()).unwrap();
        run(SelfTestKernel::SelftestWarpSum, shape(grid as u32, block as u32, 0), &input, &mut output, 0, schedule)
            .unwrap();
        assert_eq!(output.as_slice(), expected, "{schedule:?}");
    }
}

/// Which lane a shuffle reads, by the CUDA programming guide's rules; `None` for a lane that
/// does not exist (a partial warp).
fn reference_source_lane(kind: i64, lane: i64, width: i64, arg: i64, lanes_in_warp: i64) -> Option<i64> {
    let segment = lane / width * width;
    let source = match kind {
        0 => segment + arg.rem_euclid(width),
        1 if arg >= 0 && lane - segment + arg < width => lane + arg,
        1 => lane,
        _ if (0..segment + width).contains(&(lane ^ arg)) => lane ^ arg,
        _ => lane,
    };
    (source < lanes_in_warp).then_some(source)
}

#[test]
fn shuffles_read_the_lanes_cuda_defines() {
    // 48 threads: a full warp and a partial one (16 lanes), whose missing lanes read as poison.
    for block in [64u32, 48] {
        let grid = 2u32;
        let values: Vec<f32> = (0..grid * block).map(|g| g as f32).collect();
        let input = EmuBuffer::from_slice(&values).unwrap();
        for kind in 0..3i64 {
            for width in [32i64, 16, 4, 1] {
                // For __shfl_down_sync, -1 is the unsigned delta 2^32 - 1: past every lane.
                for arg in [0i64, 1, 3, 5, 16, 31, 37, -1] {
                    let param = kind | width << 2 | arg << 8;
                    let mut output = EmuBuffer::<f32>::new(values.len()).unwrap();
                    let schedule = Schedule { seed: (kind * 7 + arg).unsigned_abs(), os_threads: 2 };
                    run(
                        SelfTestKernel::SelftestShuffleProbe,
                        shape(grid, block, 0),
                        &input,
                        &mut output,
                        param,
                        schedule,
                    )
                    .unwrap();
                    for (g, got) in output.as_slice().iter().enumerate() {
                        let (b, t) = (g as i64 / i64::from(block), g as i64 % i64::from(block));
                        let (warp_base, lane) = (t / 32 * 32, t % 32);
                        let lanes = (i64::from(block) - warp_base).min(32);
                        let expected = reference_source_lane(kind, lane, width, arg, lanes)
                            .map(|src| (b * i64::from(block) + warp_base + src) as f32);
                        let context = format!("block {block} kind {kind} width {width} arg {arg} thread {t}");
                        match expected {
                            Some(v) => assert_eq!(*got, v, "{context}"),
                            None => assert_eq!(got.to_bits(), u32::MAX, "{context}: poison from a missing lane"),
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn atomic_adds_from_many_blocks_on_several_os_threads() {
    let n = 100_000;
    let values = small_integers(n);
    let expected: f64 = values.iter().map(|&v| f64::from(v)).sum();
    let input32 = EmuBuffer::from_slice(&values).unwrap();
    let input64 = EmuBuffer::from_slice(&values.iter().map(|&v| f64::from(v)).collect::<Vec<_>>()).unwrap();
    for os_threads in [1, 4] {
        let schedule = Schedule { seed: 11, os_threads };
        let mut sum32 = EmuBuffer::from_slice(&[0.0f32]).unwrap();
        run(SelfTestKernel::SelftestAtomicSumF32, shape(64, 128, 0), &input32, &mut sum32, 0, schedule).unwrap();
        assert_eq!(f64::from(sum32.as_slice()[0]), expected, "f32, {os_threads} OS threads");
        let mut sum64 = EmuBuffer::from_slice(&[0.0f64]).unwrap();
        run(SelfTestKernel::SelftestAtomicSumF64, shape(64, 128, 0), &input64, &mut sum64, 0, schedule).unwrap();
        assert_eq!(sum64.as_slice()[0], expected, "f64, {os_threads} OS threads");
    }
}

#[test]
fn every_thread_sees_its_coordinates() {
    let launch_shape = LaunchShape { grid: [3, 2, 2], block: [4, 3, 2], shared_bytes: 0 };
    let threads = 12 * 24;
    let none = EmuBuffer::<f32>::new(0).unwrap();
    for schedule in schedules() {
        let mut output = EmuBuffer::<u32>::new(12 * threads).unwrap();
        run(SelfTestKernel::SelftestCoordinates, launch_shape, &none, &mut output, 0, schedule).unwrap();
        let mut record = output.as_slice().chunks(12);
        for bz in 0..2 {
            for by in 0..2 {
                for bx in 0..3 {
                    for tz in 0..2 {
                        for ty in 0..3 {
                            for tx in 0..4 {
                                let expected = [tx, ty, tz, bx, by, bz, 4, 3, 2, 3, 2, 2];
                                assert_eq!(record.next().unwrap(), expected, "{schedule:?}");
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn dynamic_shared_memory_is_poisoned_at_each_block_start() {
    let (grid, block) = (4usize, 64usize);
    let none = EmuBuffer::<f32>::new(0).unwrap();
    let mut output = EmuBuffer::<u32>::from_slice(&vec![0; grid * block]).unwrap();
    // One OS thread: every block reuses the shared memory the previous one wrote 1.0f into.
    let schedule = Schedule { seed: 0, os_threads: 1 };
    run(SelfTestKernel::SelftestDynamicSharedPoison, shape(4, 64, 256), &none, &mut output, 0, schedule).unwrap();
    assert!(output.as_slice().iter().all(|&bits| bits == u32::MAX), "{:x?}", output.as_slice());
}

#[test]
fn element_types_load_and_store_like_the_half_crate() {
    let values: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.0123).collect();
    let affine = |v: f32| v.mul_add(2.0, 1.0);
    let schedule = Schedule { seed: 5, os_threads: 2 };
    let launch_shape = shape(4, 256, 0);

    let input = EmuBuffer::from_slice(&values).unwrap();
    let mut output = EmuBuffer::<f32>::new(values.len()).unwrap();
    run(SelfTestKernel::SelftestAffineF32, launch_shape, &input, &mut output, 0, schedule).unwrap();
    assert_eq!(output.as_slice(), values.iter().map(|&v| affine(v)).collect::<Vec<_>>());

    let wide: Vec<f64> = values.iter().map(|&v| f64::from(v) / 3.0).collect();
    let input = EmuBuffer::from_slice(&wide).unwrap();
    let mut output = EmuBuffer::<f64>::new(wide.len()).unwrap();
    run(SelfTestKernel::SelftestAffineF64, launch_shape, &input, &mut output, 0, schedule).unwrap();
    assert_eq!(output.as_slice(), wide.iter().map(|&v| v.mul_add(2.0, 1.0)).collect::<Vec<_>>());

    let halves: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
    let input = EmuBuffer::from_slice(&halves).unwrap();
    let mut output = EmuBuffer::<f16>::new(halves.len()).unwrap();
    run(SelfTestKernel::SelftestAffineF16, launch_shape, &input, &mut output, 0, schedule).unwrap();
    assert_eq!(output.as_slice(), halves.iter().map(|v| f16::from_f32(affine(v.to_f32()))).collect::<Vec<_>>());

    let brains: Vec<bf16> = values.iter().map(|&v| bf16::from_f32(v)).collect();
    let input = EmuBuffer::from_slice(&brains).unwrap();
    let mut output = EmuBuffer::<bf16>::new(brains.len()).unwrap();
    run(SelfTestKernel::SelftestAffineBf16, launch_shape, &input, &mut output, 0, schedule).unwrap();
    assert_eq!(output.as_slice(), brains.iter().map(|v| bf16::from_f32(affine(v.to_f32()))).collect::<Vec<_>>());
}

/// Runs a faulty kernel in every order and returns the error messages.
fn errors_of(kernel: SelfTestKernel, block: u32, param: i64) -> Vec<String> {
    let none = EmuBuffer::<f32>::new(0).unwrap();
    schedules()
        .map(|schedule| {
            let mut output = EmuBuffer::<f32>::new(block as usize).unwrap();
            match run(kernel, shape(2, block, 0), &none, &mut output, param, schedule) {
                Ok(()) => panic!("{kernel:?} {schedule:?}: the bug went unreported"),
                Err(e) => {
                    assert_eq!(e.kind(), "cuda");
                    let message = e.to_string();
                    assert!(message.contains(&format!("{:#x}", schedule.seed)), "names the seed: {message}");
                    message
                }
            }
        })
        .collect()
}

#[test]
fn a_thread_returning_before_a_barrier_is_reported() {
    for message in errors_of(SelfTestKernel::SelftestEarlyReturn, 64, 5) {
        assert!(message.contains("divergent __syncthreads"), "{message}");
        assert!(message.contains("thread (5,0,0)") && message.contains("returned"), "{message}");
    }
}

#[test]
fn threads_reaching_different_barrier_counts_are_reported() {
    for message in errors_of(SelfTestKernel::SelftestDivergentBarriers, 64, 0) {
        assert!(message.contains("divergent __syncthreads") && message.contains("number 2"), "{message}");
    }
}

#[test]
fn a_shuffle_a_returned_lane_cannot_join_is_reported() {
    for message in errors_of(SelfTestKernel::SelftestShuffleAfterReturn, 64, 7) {
        assert!(message.contains("broken warp collective") && message.contains("lane 7 has returned"), "{message}");
    }
}

#[test]
fn a_partial_mask_is_reported() {
    for message in errors_of(SelfTestKernel::SelftestShufflePartialMask, 32, 0) {
        assert!(message.contains("only the full mask"), "{message}");
    }
}

#[test]
fn a_shuffle_width_that_is_not_a_power_of_two_is_reported() {
    let input = EmuBuffer::from_slice(&[0.0f32; 64]).unwrap();
    let mut output = EmuBuffer::<f32>::new(64).unwrap();
    let param = 3 << 2; // __shfl_sync, width 3
    let schedule = Schedule { seed: 2, os_threads: 1 };
    let err = run(SelfTestKernel::SelftestShuffleProbe, shape(2, 32, 0), &input, &mut output, param, schedule);
    let message = err.unwrap_err().to_string();
    assert!(message.contains("width 3 is not a power of two"), "{message}");
}

#[test]
fn launches_cuda_would_refuse_are_errors() {
    let none = EmuBuffer::<f32>::new(0).unwrap();
    let mut output = EmuBuffer::<f32>::new(1).unwrap();
    let schedule = Schedule { seed: 0, os_threads: 1 };
    let bad_shapes = [
        LaunchShape { grid: [1, 1, 1], block: [1025, 1, 1], shared_bytes: 0 },
        LaunchShape { grid: [1, 1, 1], block: [1, 1, 65], shared_bytes: 0 },
        LaunchShape { grid: [0, 1, 1], block: [32, 1, 1], shared_bytes: 0 },
        LaunchShape { grid: [1, 65536, 1], block: [32, 1, 1], shared_bytes: 0 },
        LaunchShape { grid: [1, 1, 1], block: [32, 1, 1], shared_bytes: 1 << 20 },
    ];
    for bad in bad_shapes {
        let err = run(SelfTestKernel::SelftestBlockSum, bad, &none, &mut output, 0, schedule).unwrap_err();
        assert!(err.to_string().contains("invalid launch"), "{bad:?}: {err}");
    }
}

#[test]
fn each_launch_draws_a_fresh_seed_unless_one_is_fixed() {
    let seeds: Vec<u64> = (0..8).map(|_| Schedule::next().unwrap().seed).collect();
    match std::env::var(ferroconv::cuda::emu::SEED_VARIABLE) {
        Ok(fixed) => assert!(seeds.iter().all(|&s| s == seeds[0]), "{fixed}: {seeds:?}"),
        Err(_) => assert!(seeds.windows(2).all(|w| w[0] != w[1]), "{seeds:?}"),
    }
    assert!(Schedule::next().unwrap().os_threads >= 1);
}

#[test]
fn buffers_start_poisoned_and_hold_what_is_written() {
    let mut buffer = EmuBuffer::<f32>::new(1000).unwrap();
    assert!(buffer.as_slice().iter().all(|v| v.to_bits() == u32::MAX));
    buffer.as_mut_slice().iter_mut().enumerate().for_each(|(i, v)| *v = i as f32);
    assert_eq!(buffer.as_slice()[999], 999.0);
    buffer.poison();
    assert!(buffer.as_slice().iter().all(|v| v.is_nan()));
    assert!(EmuBuffer::<f64>::new(0).unwrap().is_empty());
}
