//! The article's U-Net, built from ferroconv's layers and companion ops, with an
//! explicit backward pass: two levels down (MaxPool2d), two up (ConvTranspose2d,
//! stride 2) with skip concatenation, and a 1x1 head giving one logit per pixel.
//!
//! Shared by `examples/unet/main.rs` (training) and `tests/unet.rs` (the same
//! step on two backends).

use ferroconv::{
    Activation, Conv2d, ConvTranspose2d, Device, GradRequest, Gradients, MaxPoolOptions, Result, Tensor, add,
    cat_channels, max_pool_backward, max_pool2d, relu_backward, split_channels,
};

/// A layer with a weight and a bias that gradient descent updates.
pub trait Trainable {
    fn weight(&self) -> &Tensor<f32>;
    fn bias(&self) -> Option<&Tensor<f32>>;
    fn set_parameters(&mut self, weight: Tensor<f32>, bias: Option<Tensor<f32>>) -> Result<()>;
}

macro_rules! trainable {
    ($($layer:ty),*) => {$(
        impl Trainable for $layer {
            fn weight(&self) -> &Tensor<f32> {
                <$layer>::weight(self)
            }
            fn bias(&self) -> Option<&Tensor<f32>> {
                <$layer>::bias(self)
            }
            fn set_parameters(&mut self, weight: Tensor<f32>, bias: Option<Tensor<f32>>) -> Result<()> {
                <$layer>::set_parameters(self, weight, bias)
            }
        }
    )*};
}
trainable!(Conv2d<f32>, ConvTranspose2d<f32>);

/// The article's block: Conv2d(3x3, padding 1) → ReLU → Conv2d(3x3, padding 1) → ReLU,
/// each ReLU fused into its convolution's output pass.
pub struct DoubleConv {
    first: Conv2d<f32>,
    second: Conv2d<f32>,
}

/// What [`DoubleConv::forward`] keeps for the backward pass.
pub struct DoubleConvTrace {
    input: Tensor<f32>,
    hidden: Tensor<f32>,
    output: Tensor<f32>,
}

impl DoubleConv {
    fn new(in_channels: usize, out_channels: usize, seed: u64, device: Device) -> Result<Self> {
        let conv = |i, o, s| Conv2d::<f32>::builder(i, o, 3).padding(1).build_seeded(s)?.to_device(device);
        Ok(DoubleConv {
            first: conv(in_channels, out_channels, seed)?,
            second: conv(out_channels, out_channels, seed + 1)?,
        })
    }

    fn forward(&self, input: &Tensor<f32>) -> Result<DoubleConvTrace> {
        let hidden = self.first.forward_with(input, Activation::Relu)?;
        let output = self.second.forward_with(&hidden, Activation::Relu)?;
        Ok(DoubleConvTrace { input: input.clone(), hidden, output })
    }

    /// The input's gradient, and the layers' gradients (first, second) pushed onto `grads` in reverse.
    fn backward(
        &self,
        trace: &DoubleConvTrace,
        grad_output: &Tensor<f32>,
        grads: &mut Vec<Gradients<f32>>,
    ) -> Result<Tensor<f32>> {
        let grad = relu_backward(&trace.output, grad_output)?;
        let mut second = self.second.backward(&trace.hidden, &grad, GradRequest::ALL)?;
        let grad_hidden = relu_backward(&trace.hidden, &second.input.take().expect("requested"))?;
        grads.push(second);
        let mut first = self.first.backward(&trace.input, &grad_hidden, GradRequest::ALL)?;
        let grad_input = first.input.take().expect("requested");
        grads.push(first);
        Ok(grad_input)
    }

    fn layers_mut(&mut self) -> [&mut dyn Trainable; 2] {
        [&mut self.first, &mut self.second]
    }
}

/// A two-level U-Net mapping `[N, 1, H, W]` images (H, W multiples of 4) to `[N, 1, H, W]` logits.
pub struct UNet {
    down1: DoubleConv,
    down2: DoubleConv,
    bottom: DoubleConv,
    up2: ConvTranspose2d<f32>,
    decode2: DoubleConv,
    up1: ConvTranspose2d<f32>,
    decode1: DoubleConv,
    head: Conv2d<f32>,
}

/// Every intermediate tensor of one forward pass.
pub struct Trace {
    down1: DoubleConvTrace,
    down2: DoubleConvTrace,
    bottom: DoubleConvTrace,
    upsampled2: Tensor<f32>,
    decode2: DoubleConvTrace,
    upsampled1: Tensor<f32>,
    decode1: DoubleConvTrace,
    /// The network's output: one logit per pixel.
    pub logits: Tensor<f32>,
}

fn pool() -> MaxPoolOptions {
    MaxPoolOptions::new(2)
}

impl UNet {
    /// A U-Net with `width` channels at the top level (2x and 4x below), initialised
    /// like PyTorch from `seed`, with its parameters on `device`.
    pub fn new(width: usize, seed: u64, device: Device) -> Result<Self> {
        let (c1, c2, c3) = (width, 2 * width, 4 * width);
        let up = |i, o, s| ConvTranspose2d::<f32>::builder(i, o, 2).stride(2).build_seeded(s)?.to_device(device);
        Ok(UNet {
            down1: DoubleConv::new(1, c1, seed, device)?,
            down2: DoubleConv::new(c1, c2, seed + 10, device)?,
            bottom: DoubleConv::new(c2, c3, seed + 20, device)?,
            up2: up(c3, c2, seed + 30)?,
            decode2: DoubleConv::new(2 * c2, c2, seed + 40, device)?,
            up1: up(c2, c1, seed + 50)?,
            decode1: DoubleConv::new(2 * c1, c1, seed + 60, device)?,
            head: Conv2d::<f32>::builder(c1, 1, 1).build_seeded(seed + 70)?.to_device(device)?,
        })
    }

    /// The forward pass, keeping what backward needs.
    pub fn forward(&self, images: &Tensor<f32>) -> Result<Trace> {
        let down1 = self.down1.forward(images)?;
        let pooled1 = max_pool2d(&down1.output, &pool())?;
        let down2 = self.down2.forward(&pooled1)?;
        let pooled2 = max_pool2d(&down2.output, &pool())?;
        let bottom = self.bottom.forward(&pooled2)?;
        let upsampled2 = self.up2.forward(&bottom.output)?;
        let decode2 = self.decode2.forward(&cat_channels(&[&upsampled2, &down2.output])?)?;
        let upsampled1 = self.up1.forward(&decode2.output)?;
        let decode1 = self.decode1.forward(&cat_channels(&[&upsampled1, &down1.output])?)?;
        let logits = self.head.forward(&decode1.output)?;
        Ok(Trace { down1, down2, bottom, upsampled2, decode2, upsampled1, decode1, logits })
    }

    /// The gradients of every layer, in the order of [`UNet::layers_mut`], given the
    /// gradient of the loss with respect to the logits.
    pub fn backward(&self, trace: &Trace, grad_logits: &Tensor<f32>) -> Result<Vec<Gradients<f32>>> {
        let mut grads = Vec::new(); // filled from the last layer to the first, reversed at the end
        let mut head = self.head.backward(&trace.decode1.output, grad_logits, GradRequest::ALL)?;
        let grad = head.input.take().expect("requested");
        grads.push(head);

        let grad = self.decode1.backward(&trace.decode1, &grad, &mut grads)?;
        let c1 = trace.upsampled1.shape()[1];
        let [grad_up1, grad_skip1]: [Tensor<f32>; 2] =
            split_channels(&grad, &[c1, grad.shape()[1] - c1])?.try_into().expect("two parts");
        let mut up1 = self.up1.backward(&trace.decode2.output, &grad_up1, GradRequest::ALL)?;
        let grad = up1.input.take().expect("requested");
        grads.push(up1);

        let grad = self.decode2.backward(&trace.decode2, &grad, &mut grads)?;
        let c2 = trace.upsampled2.shape()[1];
        let [grad_up2, grad_skip2]: [Tensor<f32>; 2] =
            split_channels(&grad, &[c2, grad.shape()[1] - c2])?.try_into().expect("two parts");
        let mut up2 = self.up2.backward(&trace.bottom.output, &grad_up2, GradRequest::ALL)?;
        let grad = up2.input.take().expect("requested");
        grads.push(up2);

        let grad = self.bottom.backward(&trace.bottom, &grad, &mut grads)?;
        let grad = max_pool_backward(2, &trace.down2.output, &grad, &pool())?;
        let grad = add(&grad, &grad_skip2)?;
        let grad = self.down2.backward(&trace.down2, &grad, &mut grads)?;
        let grad = max_pool_backward(2, &trace.down1.output, &grad, &pool())?;
        let grad = add(&grad, &grad_skip1)?;
        self.down1.backward(&trace.down1, &grad, &mut grads)?;
        grads.reverse();
        Ok(grads)
    }

    /// Every layer, from the input to the head.
    pub fn layers_mut(&mut self) -> Vec<&mut dyn Trainable> {
        let mut layers: Vec<&mut dyn Trainable> = Vec::new();
        layers.extend(self.down1.layers_mut());
        layers.extend(self.down2.layers_mut());
        layers.extend(self.bottom.layers_mut());
        layers.push(&mut self.up2);
        layers.extend(self.decode2.layers_mut());
        layers.push(&mut self.up1);
        layers.extend(self.decode1.layers_mut());
        layers.push(&mut self.head);
        layers
    }
}

/// Binary cross-entropy with logits, averaged over pixels, and its gradient
/// with respect to the logits (on the logits' device).
pub fn bce_with_logits(logits: &Tensor<f32>, targets: &[f32]) -> Result<(f32, Tensor<f32>)> {
    let z = logits.to_vec()?;
    let count = z.len() as f32;
    let mut loss = 0.0f64;
    let grad: Vec<f32> = z
        .iter()
        .zip(targets)
        .map(|(&z, &t)| {
            loss += f64::from(z.max(0.0) - z * t + (-z.abs()).exp().ln_1p());
            (1.0 / (1.0 + (-z).exp()) - t) / count
        })
        .collect();
    Ok(((loss / f64::from(count)) as f32, Tensor::from_vec(logits.shape(), grad)?.to_device(logits.device())?))
}
