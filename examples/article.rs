//! The article's examples with their true shapes, built from layers.
//!
//! `cargo run --example article`

use ferroconv::{Conv2d, ConvTranspose2d, Tensor};

fn show(layer: &str, input: &Tensor<f32>, output: &Tensor<f32>) {
    println!("{layer:<80} {:?} -> {:?}", input.shape(), output.shape());
}

fn main() -> ferroconv::Result<()> {
    // nn.Conv2d(3, 16, 3, padding=1) keeps the image size.
    let conv = Conv2d::<f32>::builder(3, 16, 3).padding(1).build_seeded(0)?;
    let image = Tensor::<f32>::full(&[1, 3, 32, 32], 0.5)?;
    show("Conv2d(3, 16, 3, padding=1)", &image, &conv.forward(&image)?);

    // nn.ConvTranspose2d(16, 3, 3, stride=2, padding=1) does not double 16x16:
    // (16 - 1)*2 - 2*1 + 1*(3 - 1) + 1 = 31.
    let x = Tensor::<f32>::full(&[1, 16, 16, 16], 0.5)?;
    let up = ConvTranspose2d::<f32>::builder(16, 3, 3).stride(2).padding(1).build_seeded(0)?;
    show("ConvTranspose2d(16, 3, 3, stride=2, padding=1)", &x, &up.forward(&x)?);

    // output_padding=1 adds the missing row and column at the end ...
    let padded = ConvTranspose2d::<f32>::builder(16, 3, 3).stride(2).padding(1).output_padding(1).build_seeded(0)?;
    show("ConvTranspose2d(16, 3, 3, stride=2, padding=1, output_padding=1)", &x, &padded.forward(&x)?);

    // ... and so does asking forward for the size, as nn.ConvTranspose2d.forward(x, output_size) does.
    let sized = up.forward_with_output_size(&x, [32, 32])?;
    show("ConvTranspose2d(16, 3, 3, stride=2, padding=1), output_size=[32, 32]", &x, &sized);
    Ok(())
}
