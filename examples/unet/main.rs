//! Trains the article's U-Net on a synthetic segmentation task (find the discs in
//! noisy images) on the best device, and prints the loss falling step by step,
//! the final pixel accuracy and the time per step.
//!
//! `cargo run --release --example unet [-- STEPS]` (FERROCONV_DEVICE=cpu|cuda picks the device).

mod model;

use std::time::Instant;

use ferroconv::{Device, Result, Tensor};
use model::{UNet, bce_with_logits};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

const SIZE: usize = 32;
const BATCH: usize = 8;
const WIDTH: usize = 8;
const LEARNING_RATE: f32 = 0.05;
const MOMENTUM: f32 = 0.9;

fn uniform(rng: &mut ChaCha8Rng) -> f32 {
    (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32
}

/// `count` images of one to three discs on a noisy background, and their masks.
fn discs(rng: &mut ChaCha8Rng, count: usize) -> (Vec<f32>, Vec<f32>) {
    let (mut images, mut masks) = (Vec::new(), Vec::new());
    for _ in 0..count {
        let discs: Vec<(f32, f32, f32)> = (0..1 + rng.next_u32() % 3)
            .map(|_| (uniform(rng) * SIZE as f32, uniform(rng) * SIZE as f32, 3.0 + 5.0 * uniform(rng)))
            .collect();
        for y in 0..SIZE {
            for x in 0..SIZE {
                let inside = discs.iter().any(|&(cx, cy, r)| (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2) < r * r);
                let mask = if inside { 1.0 } else { 0.0 };
                masks.push(mask);
                images.push(mask - 0.5 + 1.2 * (uniform(rng) - 0.5));
            }
        }
    }
    (images, masks)
}

fn pixel_accuracy(logits: &Tensor<f32>, masks: &[f32]) -> Result<f32> {
    let hits = logits.to_vec()?.iter().zip(masks).filter(|&(&z, &m)| (z > 0.0) == (m > 0.5)).count();
    Ok(hits as f32 / masks.len() as f32)
}

fn main() -> Result<()> {
    let steps: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(300);
    let device = Device::best();
    println!("device: {device} ({})", Device::choice().reason);

    let mut net = UNet::new(WIDTH, 7, device)?;
    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    let (eval_images, eval_masks) = discs(&mut rng, 32);
    let eval_images = Tensor::from_vec(&[32, 1, SIZE, SIZE], eval_images)?.to_device(device)?;
    println!(
        "pixel accuracy before training: {:.1}%",
        100.0 * pixel_accuracy(&net.forward(&eval_images)?.logits, &eval_masks)?
    );

    // SGD with momentum; the velocities live on the host next to the update.
    let mut velocity: Vec<(Vec<f32>, Vec<f32>)> = Vec::new();
    let started = Instant::now();
    let (mut first_loss, mut last_loss) = (None, f32::NAN);
    for step in 1..=steps {
        let (images, masks) = discs(&mut rng, BATCH);
        let images = Tensor::from_vec(&[BATCH, 1, SIZE, SIZE], images)?.to_device(device)?;
        let trace = net.forward(&images)?;
        let (loss, grad_logits) = bce_with_logits(&trace.logits, &masks)?;
        first_loss.get_or_insert(loss);
        last_loss = loss;
        let grads = net.backward(&trace, &grad_logits)?;
        for (i, (layer, grad)) in net.layers_mut().into_iter().zip(grads).enumerate() {
            let (dw, db) = (grad.weight.expect("requested").to_vec()?, grad.bias.expect("requested").to_vec()?);
            if velocity.len() <= i {
                velocity.push((vec![0.0; dw.len()], vec![0.0; db.len()]));
            }
            let (vw, vb) = &mut velocity[i];
            let descend = |param: &Tensor<f32>, grad: &[f32], v: &mut [f32]| -> Result<Tensor<f32>> {
                let mut values = param.to_vec()?;
                for ((p, g), v) in values.iter_mut().zip(grad).zip(v.iter_mut()) {
                    *v = MOMENTUM * *v + g;
                    *p -= LEARNING_RATE * *v;
                }
                Tensor::from_vec(param.shape(), values)?.to_device(device)
            };
            let weight = descend(layer.weight(), &dw, vw)?;
            let bias = descend(layer.bias().expect("every layer has a bias"), &db, vb)?;
            layer.set_parameters(weight, Some(bias))?;
        }
        if step == 1 || step % 25 == 0 || step == steps {
            println!("step {step:4}: loss {loss:.4}");
        }
    }
    let per_step = started.elapsed().as_secs_f64() * 1e3 / steps.max(1) as f64;
    let accuracy = pixel_accuracy(&net.forward(&eval_images)?.logits, &eval_masks)?;
    println!("pixel accuracy after {steps} steps: {:.1}%", 100.0 * accuracy);
    println!(
        "loss fell from {:.4} to {last_loss:.4}; {per_step:.1} ms per step on {device}",
        first_loss.unwrap_or(f32::NAN)
    );
    Ok(())
}
