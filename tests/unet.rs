//! One training step of the article's U-Net (examples/unet) computes the same loss and
//! gradients on the CPU backend and on the CUDA kernels under the emulator.
#![cfg(feature = "emu")]

// The optimiser's half of the model (parameter setters) is used by the example, not here.
#[allow(dead_code)]
#[path = "../examples/unet/model.rs"]
mod model;

use ferroconv::{Device, Gradients, Tensor};
use model::{UNet, bce_with_logits};

/// A fixed batch: two 16x16 images of a bright square on a ramp, and its mask.
fn batch() -> (Vec<f32>, Vec<f32>) {
    let (mut images, mut masks) = (Vec::new(), Vec::new());
    for n in 0..2 {
        for y in 0..16 {
            for x in 0..16 {
                let inside = (4 + n..10 + n).contains(&x) && (3..9 + 2 * n).contains(&y);
                masks.push(if inside { 1.0 } else { 0.0 });
                images.push(if inside { 0.6 } else { -0.4 } + 0.02 * (x as f32 - y as f32));
            }
        }
    }
    (images, masks)
}

/// The loss and every layer's gradients after one forward and backward pass on `device`.
fn step(device: Device) -> (f32, Vec<Gradients<f32>>) {
    let mut net = UNet::new(4, 11, device).expect("network");
    let (images, masks) = batch();
    let images = Tensor::from_vec(&[2, 1, 16, 16], images).and_then(|t| t.to_device(device)).expect("images");
    let trace = net.forward(&images).expect("forward");
    let (loss, grad_logits) = bce_with_logits(&trace.logits, &masks).expect("loss");
    let grads = net.backward(&trace, &grad_logits).expect("backward");
    let layers = net.layers_mut();
    assert_eq!(grads.len(), layers.len(), "one set of gradients per layer");
    for (layer, grad) in layers.iter().zip(&grads) {
        assert_eq!(grad.weight.as_ref().unwrap().shape(), layer.weight().shape(), "gradients in layer order");
    }
    (loss, grads)
}

fn assert_close(what: &str, cpu: &Tensor<f32>, emu: &Tensor<f32>) {
    let (a, b) = (cpu.to_vec().unwrap(), emu.to_vec().unwrap());
    assert_eq!(a.len(), b.len(), "{what}");
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        // f32 sums in another order: a few ulps of the tensor's largest term.
        assert!((x - y).abs() <= 1e-5 + 1e-4 * scale, "{what}[{i}]: cpu {x}, emulator {y} (scale {scale})");
    }
}

#[test]
fn a_training_step_agrees_on_the_cpu_and_the_emulator() {
    let (cpu_loss, cpu) = step(Device::Cpu);
    let (emu_loss, emu) = step(Device::Emu);
    assert!((cpu_loss - emu_loss).abs() <= 1e-6 * cpu_loss.abs().max(1.0), "loss {cpu_loss} vs {emu_loss}");
    assert_eq!(cpu.len(), emu.len());
    for (layer, (c, e)) in cpu.iter().zip(&emu).enumerate() {
        assert_close(&format!("layer {layer} weight"), c.weight.as_ref().unwrap(), e.weight.as_ref().unwrap());
        assert_close(&format!("layer {layer} bias"), c.bias.as_ref().unwrap(), e.bias.as_ref().unwrap());
    }
}
