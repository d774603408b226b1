//! The CUDA backend on a real GPU. Every test skips itself (saying so on
//! stderr) when no CUDA device answers; the same checks run on the emulator.

mod gpu_suite;

use ferroconv::cuda::{CudaExecutor, GpuBackend};
use ferroconv::{ConvOptions, Device, Tensor, conv2d};

/// The device to test on, or `None` (with the reason on stderr) when there is none.
fn gpu() -> Option<usize> {
    match ferroconv::cuda::probe(0) {
        Ok(_) => Some(0),
        Err(reason) => {
            eprintln!("skipping: no usable CUDA device ({reason})");
            None
        }
    }
}

#[test]
fn every_op_matches_the_cpu_on_the_gpu() {
    let Some(ordinal) = gpu() else { return };
    gpu_suite::check_everything(|algorithm| {
        GpuBackend::new(CudaExecutor::new(ordinal).expect("the device answered the probe")).with_algorithm(algorithm)
    });
}

#[test]
fn tensors_move_to_the_gpu_and_back() {
    let Some(ordinal) = gpu() else { return };
    let x = Tensor::<f32>::from_vec(&[1, 1, 3, 3], (0..9).map(|v| v as f32).collect()).unwrap();
    let w = Tensor::<f32>::full(&[2, 1, 2, 2], 1.0).unwrap();
    let expected = conv2d(&x, &w, None, &ConvOptions::new()).unwrap().to_vec().unwrap();

    let device = Device::Cuda(ordinal);
    let (gx, gw) = (x.to_device(device).unwrap(), w.to_device(device).unwrap());
    assert_eq!(gx.device(), device);
    let gy = conv2d(&gx, &gw, None, &ConvOptions::new()).unwrap();
    assert_eq!(gy.device(), device);
    assert_eq!(gy.to_vec().unwrap(), expected);
    assert_eq!(gy.to_device(Device::Cpu).unwrap().as_slice().unwrap(), expected.as_slice());

    let mixed = conv2d(&x, &gw, None, &ConvOptions::new()).unwrap_err();
    assert_eq!(mixed.kind(), "device_mismatch");
}

#[test]
fn without_a_device_tensors_stay_put_and_say_why() {
    if gpu().is_some() {
        return;
    }
    let x = Tensor::<f32>::zeros(&[1, 1, 4]).unwrap();
    let e = x.to_device(Device::Cuda(0)).unwrap_err();
    assert_eq!(e.kind(), "device_unavailable");
    assert!(e.to_string().contains("cuda:0"), "{e}");
}
