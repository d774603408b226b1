//! The fused epilogue: bias + ReLU applied in the pass that writes the output gives
//! exactly the unfused `relu(conv(x) + bias)`, for both ops, on the CPU and (with the
//! `emu` feature) on the CUDA kernels under the emulator.

use ferroconv::{Activation, ConvOptions, ConvTransposeOptions, Device, Element, OpKind, Tensor, bf16, forward, relu};

fn values(seed: u64, len: usize) -> Vec<f64> {
    // A small LCG: values in [-1, 1), about half of the outputs negative.
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect()
}

fn tensor<T: Element>(shape: &[usize], seed: u64, device: Device) -> Tensor<T> {
    let data = values(seed, shape.iter().product());
    Tensor::from_f64(shape, &data).and_then(|t| t.to_device(device)).unwrap()
}

fn devices() -> &'static [Device] {
    if cfg!(feature = "emu") { &[Device::Cpu, Device::Emu] } else { &[Device::Cpu] }
}

fn fused_equals_unfused<T: Element>(op: OpKind, device: Device) {
    let (geometry, input, weight) = match op {
        OpKind::Conv => {
            let opts = ConvOptions::new().stride([1, 2]).padding(1).groups(2);
            let g = ferroconv::ConvGeometry::conv(2, &[2, 4, 7, 9], &[6, 2, 3, 3], Some(&[6]), &opts).unwrap();
            (g, tensor::<T>(&[2, 4, 7, 9], 1, device), tensor::<T>(&[6, 2, 3, 3], 2, device))
        }
        OpKind::ConvTranspose => {
            let opts = ConvTransposeOptions::new().stride(2).padding(1).output_padding(1);
            let g =
                ferroconv::ConvGeometry::conv_transpose(2, &[2, 4, 5, 6], &[4, 3, 3, 3], Some(&[3]), &opts).unwrap();
            (g, tensor::<T>(&[2, 4, 5, 6], 3, device), tensor::<T>(&[4, 3, 3, 3], 4, device))
        }
    };
    let bias = tensor::<T>(&[geometry.op_out_channels()], 5, device);
    let fused = forward(&geometry, &input, &weight, Some(&bias), Activation::Relu).unwrap().to_vec().unwrap();
    let plain = forward(&geometry, &input, &weight, Some(&bias), Activation::Identity).unwrap();
    let unfused = relu(&plain).unwrap().to_vec().unwrap();
    assert!(unfused.iter().any(|v| v.to_f64() == 0.0) && unfused.iter().any(|v| v.to_f64() > 0.0));
    assert_eq!(fused, unfused, "{op:?} {} on {device}", T::DTYPE);
}

#[test]
fn fused_relu_equals_relu_of_the_output() {
    for &device in devices() {
        for op in [OpKind::Conv, OpKind::ConvTranspose] {
            fused_equals_unfused::<f32>(op, device);
            fused_equals_unfused::<bf16>(op, device);
        }
    }
}
