//! EmuExecutor's own checks: its kernel table matches KernelId, plans run, addresses outside its
//! live allocations are refused, zero steps zero, and an output element a launch claims to
//! overwrite but leaves alone is reported.
#![cfg(feature = "emu")]

use ferroconv::cuda::emu::{EmuAllocation, EmuExecutor, EmuKernel, Schedule};
use ferroconv::cuda::{CorrelateBuffers, Executor, GpuAlgorithm, KernelId, Plan, Planner, Step};
use ferroconv::{Activation, ConvGeometry, ConvOptions, DType};

fn executor() -> EmuExecutor {
    EmuExecutor::with_schedule(Schedule { seed: 4, os_threads: 2 }).unwrap()
}

fn upload(emu: &EmuExecutor, values: &[f32]) -> EmuAllocation {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
    let mut allocation = emu.alloc(bytes.len()).unwrap();
    emu.upload(&bytes, &mut allocation).unwrap();
    allocation
}

fn download(emu: &EmuExecutor, allocation: &EmuAllocation, len: usize) -> Vec<f32> {
    let mut bytes = vec![0u8; len * 4];
    emu.download(allocation, &mut bytes).unwrap();
    bytes.chunks_exact(4).map(|b| f32::from_ne_bytes(b.try_into().unwrap())).collect()
}

/// `y = x ⋆ w` for x = [1, 2, 3, 4], w = [1, 10]: y = [21, 32, 43] (direct kernel), into `y`.
fn correlate_plan(emu: &EmuExecutor, x: &EmuAllocation, w: &EmuAllocation, y: &EmuAllocation) -> Plan {
    let g = ConvGeometry::conv(1, &[1, 1, 4], &[1, 1, 2], None, &ConvOptions::new()).unwrap();
    let buffers = CorrelateBuffers { x: emu.address(x), w: emu.address(w), bias: None, y: emu.address(y) };
    Planner::new(DType::F32, GpuAlgorithm::Direct).correlate(&g, buffers, Activation::Identity).unwrap()
}

#[test]
fn the_kernel_table_follows_kernel_ids() {
    assert!(EmuExecutor::new().is_ok());
    assert_eq!(EmuKernel::library_count(), KernelId::ALL.len());
    for id in KernelId::ALL {
        assert_eq!(EmuKernel::library(id as usize).unwrap().name(), id.name());
    }
    assert!(EmuKernel::library(KernelId::ALL.len()).is_none());
}

#[test]
fn a_plan_runs() {
    let emu = executor();
    let (x, w) = (upload(&emu, &[1.0, 2.0, 3.0, 4.0]), upload(&emu, &[1.0, 10.0]));
    let y = emu.alloc(12).unwrap();
    emu.execute(&correlate_plan(&emu, &x, &w, &y)).unwrap();
    assert_eq!(download(&emu, &y, 3), [21.0, 32.0, 43.0]);
}

#[test]
fn addresses_outside_live_allocations_are_refused() {
    let emu = executor();
    let (x, w, y) = (upload(&emu, &[1.0, 2.0, 3.0, 4.0]), upload(&emu, &[1.0, 10.0]), emu.alloc(12).unwrap());
    let freed = emu.alloc(16).unwrap();
    let mut plan = correlate_plan(&emu, &freed, &w, &y);
    drop(freed);
    let err = emu.execute(&plan).unwrap_err().to_string();
    assert!(err.contains("args.x") && err.contains("not inside any live allocation"), "{err}");

    // The output range runs past the end of y.
    plan = correlate_plan(&emu, &x, &w, &y);
    let Step::Kernel(launch) = &mut plan.steps[0] else { panic!("a correlate plan is one launch") };
    launch.writes[0].bytes += 4;
    let err = emu.execute(&plan).unwrap_err().to_string();
    assert!(err.contains("16 bytes at") && err.contains("not inside any live allocation"), "{err}");

    let beyond = Plan { steps: vec![Step::Zero { address: emu.address(&y) + 4, bytes: 12 }] };
    assert!(emu.execute(&beyond).is_err());
}

#[test]
fn zero_steps_zero_their_range() {
    let emu = executor();
    let buffer = emu.alloc(16).unwrap();
    assert!(download(&emu, &buffer, 4).iter().all(|v| v.is_nan()), "new allocations are poisoned");
    let plan = Plan { steps: vec![Step::Zero { address: emu.address(&buffer) + 4, bytes: 8 }] };
    emu.execute(&plan).unwrap();
    let values = download(&emu, &buffer, 4);
    assert!(values[0].is_nan() && values[3].is_nan());
    assert_eq!(values[1..3], [0.0, 0.0]);
}

#[test]
fn an_output_element_left_unwritten_is_reported() {
    let emu = executor();
    let (x, w) = (upload(&emu, &[1.0, 2.0, 3.0, 4.0]), upload(&emu, &[1.0, 10.0]));
    let y = emu.alloc(16).unwrap(); // one element more than the kernel writes
    let mut plan = correlate_plan(&emu, &x, &w, &y);
    let Step::Kernel(launch) = &mut plan.steps[0] else { panic!("a correlate plan is one launch") };
    launch.writes[0].bytes = 16;
    let err = emu.execute(&plan).unwrap_err().to_string();
    assert!(err.contains("direct_correlate_f32") && err.contains("1 of the 4 f32 elements"), "{err}");
    assert!(err.contains("first at index 3") && err.contains("FERROCONV_EMU_SEED=0x4"), "{err}");
}

#[test]
fn copies_are_bounded_by_the_allocation() {
    let emu = executor();
    let mut small = emu.alloc(4).unwrap();
    assert!(emu.upload(&[0u8; 5], &mut small).is_err());
    assert!(emu.download(&small, &mut [0u8; 5]).is_err());
    assert!(emu.alloc(0).is_ok());
}
