//! `ferroconv demo`: the article's examples, with the shapes they really have.

use std::process::ExitCode;

use ferroconv::{ConvOptions, ConvTransposeOptions, Device, Tensor, conv_transpose2d, conv2d};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use super::Outcome;

#[derive(clap::Args)]
pub struct Args {
    /// Seed of the random inputs and weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Random tensors on one device: inputs uniform in [-1, 1), weights and biases
/// uniform in ±1/√fan_in (PyTorch's default initialisation of conv layers).
struct Random {
    rng: ChaCha8Rng,
    device: Device,
}

impl Random {
    fn uniform(&mut self, shape: &[usize], bound: f32) -> ferroconv::Result<Tensor<f32>> {
        let len = shape.iter().product();
        // 24 random bits: exactly representable, uniform on [-1, 1).
        let values = (0..len).map(|_| bound * ((self.rng.next_u32() >> 8) as f32 / (1 << 23) as f32 - 1.0)).collect();
        Tensor::from_vec(shape, values)?.to_device(self.device)
    }

    fn input(&mut self, shape: &[usize]) -> ferroconv::Result<Tensor<f32>> {
        self.uniform(shape, 1.0)
    }

    /// A weight of `shape` and a bias of `bias_len`, with `fan_in = shape[1] * prod(kernel)`.
    fn layer(&mut self, shape: &[usize], bias_len: usize) -> ferroconv::Result<(Tensor<f32>, Tensor<f32>)> {
        let fan_in: usize = shape[1..].iter().product();
        let bound = 1.0 / (fan_in as f32).sqrt();
        Ok((self.uniform(shape, bound)?, self.uniform(&[bias_len], bound)?))
    }
}

fn show(what: &str, input: &Tensor<f32>, output: &Tensor<f32>) -> ferroconv::Result<()> {
    let checksum: f64 = output.to_f64_vec()?.iter().sum();
    println!("{what:<68} {:?} -> {:?}  checksum {checksum:+.6}", input.shape(), output.shape());
    Ok(())
}

pub fn run(args: &Args) -> Outcome {
    let choice = Device::choice();
    println!("device: {} ({})", choice.device, choice.reason);
    let mut random = Random { rng: ChaCha8Rng::seed_from_u64(args.seed), device: choice.device };

    let x = random.input(&[1, 3, 32, 32])?;
    let (w, b) = random.layer(&[16, 3, 3, 3], 16)?;
    let y = conv2d(&x, &w, Some(&b), &ConvOptions::new().padding(1))?;
    show("Conv2d(3, 16, 3, padding=1)", &x, &y)?;

    let x = random.input(&[1, 16, 16, 16])?;
    let (w, b) = random.layer(&[16, 3, 3, 3], 3)?;
    let up = ConvTransposeOptions::new().stride(2).padding(1);
    let y = conv_transpose2d(&x, &w, Some(&b), &up)?;
    show("ConvTranspose2d(16, 3, 3, stride=2, padding=1)", &x, &y)?;
    let padded = conv_transpose2d(&x, &w, Some(&b), &up.clone().output_padding(1))?;
    show("ConvTranspose2d(16, 3, 3, stride=2, padding=1, output_padding=1)", &x, &padded)?;
    let sized = conv_transpose2d(&x, &w, Some(&b), &up.clone().output_size([32, 32]))?;
    show("ConvTranspose2d(16, 3, 3, stride=2, padding=1), output_size=[32, 32]", &x, &sized)?;
    let same = sized.to_vec()? == padded.to_vec()?;
    println!("output_size=[32, 32] and output_padding=1 give identical outputs: {same}");
    println!(
        "the trap: (16-1)*2 - 2*1 + (3-1) + 1 = 31, since a stride-2 conv maps both 31 and 32 to 16; \
         output_padding=1 (or output_size) asks for 32"
    );
    Ok(ExitCode::SUCCESS)
}
