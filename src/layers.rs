//! Layers as PyTorch has them: `nn.Conv1d/2d/3d` and `nn.ConvTranspose1d/2d/3d`.
//!
//! One generic type per op, over the rank: [`ConvNd`] and [`ConvTransposeNd`],
//! with the aliases [`Conv1d`] ... [`ConvTranspose3d`]. A layer holds its
//! options, its weight and optional bias, initialised as PyTorch does; its
//! forward and backward are the functional API of [`crate::ops`].
//!
//! ```
//! use ferroconv::{Conv2d, ConvTranspose2d, GradRequest, Tensor};
//! # fn main() -> ferroconv::Result<()> {
//! let conv = Conv2d::<f32>::builder(3, 16, 3).padding(1).build_seeded(0)?;
//! let x = Tensor::<f32>::zeros(&[1, 3, 32, 32])?;
//! let y = conv.forward(&x)?;
//! assert_eq!(y.shape(), &[1, 16, 32, 32]);
//!
//! // The article's upsampling layer: 16x16 becomes 31x31, not 32x32 ...
//! let up = ConvTranspose2d::<f32>::builder(16, 3, 3).stride(2).padding(1).build_seeded(0)?;
//! let x = Tensor::<f32>::zeros(&[1, 16, 16, 16])?;
//! assert_eq!(up.forward(&x)?.shape(), &[1, 3, 31, 31]);
//! // ... unless the output size is asked for.
//! assert_eq!(up.forward_with_output_size(&x, [32, 32])?.shape(), &[1, 3, 32, 32]);
//!
//! let grads = conv.backward(&Tensor::zeros(&[1, 3, 32, 32])?, &y, GradRequest::ALL)?;
//! assert_eq!(grads.weight.unwrap().shape(), conv.weight().shape());
//! # Ok(()) }
//! ```

use std::marker::PhantomData;

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use crate::backend::Activation;
use crate::backend::GradRequest;
use crate::device::Device;
use crate::element::Element;
use crate::error::{Error, Result, checked_product, try_filled_vec};
use crate::geometry::{ConvOptions, ConvTransposeOptions, Dims, PaddingMode};
use crate::ops::{
    Gradients, conv, conv_backward, conv_geometry, conv_transpose, conv_transpose_backward, conv_transpose_geometry,
    forward,
};
use crate::tensor::Tensor;

/// `nn.Conv1d`.
pub type Conv1d<T> = ConvNd<T, 1>;
/// `nn.Conv2d`.
pub type Conv2d<T> = ConvNd<T, 2>;
/// `nn.Conv3d`.
pub type Conv3d<T> = ConvNd<T, 3>;
/// `nn.ConvTranspose1d`.
pub type ConvTranspose1d<T> = ConvTransposeNd<T, 1>;
/// `nn.ConvTranspose2d`.
pub type ConvTranspose2d<T> = ConvTransposeNd<T, 2>;
/// `nn.ConvTranspose3d`.
pub type ConvTranspose3d<T> = ConvTransposeNd<T, 3>;

/// A convolution layer over `N` spatial dims (`nn.ConvNd`): weight
/// `[out_channels, in_channels / groups, *kernel_size]` and an optional bias
/// `[out_channels]`.
///
/// Built with [`ConvNd::builder`]; see the [module docs](self) for an example.
/// `N` is 1, 2 or 3; another rank does not compile:
///
/// ```compile_fail
/// let layer = ferroconv::ConvNd::<f32, 4>::builder(1, 1, 1).build_seeded(0);
/// ```
#[derive(Debug, Clone)]
pub struct ConvNd<T: Element, const N: usize> {
    in_channels: usize,
    out_channels: usize,
    kernel_size: [usize; N],
    options: ConvOptions,
    weight: Tensor<T>,
    bias: Option<Tensor<T>>,
}

/// A transposed convolution layer over `N` spatial dims (`nn.ConvTransposeNd`):
/// weight `[in_channels, out_channels / groups, *kernel_size]` and an optional
/// bias `[out_channels]`.
///
/// Built with [`ConvTransposeNd::builder`]; see the [module docs](self) for an example.
#[derive(Debug, Clone)]
pub struct ConvTransposeNd<T: Element, const N: usize> {
    in_channels: usize,
    out_channels: usize,
    kernel_size: [usize; N],
    options: ConvTransposeOptions,
    weight: Tensor<T>,
    bias: Option<Tensor<T>>,
}

/// The options of a [`ConvNd`] before it is built (`nn.ConvNd`'s keyword arguments).
///
/// ```
/// use ferroconv::{Conv1d, PaddingMode};
/// # fn main() -> ferroconv::Result<()> {
/// let layer = Conv1d::<f64>::builder(4, 8, 5)
///     .same()
///     .dilation(2)
///     .groups(4)
///     .padding_mode(PaddingMode::Reflect)
///     .bias(false)
///     .build_seeded(42)?;
/// assert_eq!(layer.weight().shape(), &[8, 1, 5]);
/// assert!(layer.bias().is_none());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct ConvBuilder<T: Element, const N: usize> {
    in_channels: usize,
    out_channels: usize,
    kernel_size: Dims,
    options: ConvOptions,
    bias: bool,
    element: PhantomData<T>,
}

/// The options of a [`ConvTransposeNd`] before it is built (`nn.ConvTransposeNd`'s keyword arguments).
///
/// ```
/// use ferroconv::ConvTranspose3d;
/// # fn main() -> ferroconv::Result<()> {
/// let layer = ConvTranspose3d::<f32>::builder(4, 2, [2, 3, 3]).stride(2).output_padding([1, 0, 0]).build_seeded(7)?;
/// assert_eq!(layer.weight().shape(), &[4, 2, 2, 3, 3]);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct ConvTransposeBuilder<T: Element, const N: usize> {
    in_channels: usize,
    out_channels: usize,
    kernel_size: Dims,
    options: ConvTransposeOptions,
    bias: bool,
    element: PhantomData<T>,
}

/// Rejects ranks the library has no op for, when a layer type is used.
struct SpatialDims<const N: usize>;

impl<const N: usize> SpatialDims<N> {
    const CHECKED: () = assert!(N >= 1 && N <= 3, "layers have 1, 2 or 3 spatial dims");
}

fn kernel_size<const N: usize>(kernel_size: &Dims) -> Result<[usize; N]> {
    let k = kernel_size.resolve("kernel_size", N)?;
    if k.iter().any(|&v| v <= 0) {
        return Err(Error::InvalidArgument {
            what: "kernel_size",
            detail: format!("every kernel size must be positive, got {k:?}"),
        });
    }
    // Positive i64 values fit usize.
    Ok(std::array::from_fn(|d| k[d] as usize))
}

/// `groups`, checked as `nn.ConvNd`'s constructor checks it.
fn groups(in_channels: usize, out_channels: usize, groups: i64) -> Result<usize> {
    let g = usize::try_from(groups).ok().filter(|&g| g > 0).ok_or(Error::NonPositiveGroups { groups })?;
    for (what, channels) in [("in_channels", in_channels), ("out_channels", out_channels)] {
        if !channels.is_multiple_of(g) {
            return Err(Error::ChannelsNotDivisibleByGroups { what, channels, groups: g });
        }
    }
    Ok(g)
}

/// A weight of `shape` and optionally a bias of `bias_len` values,
/// initialised as PyTorch's `reset_parameters` does:
/// kaiming-uniform with `a = sqrt(5)`, which is U(±1/sqrt(fan_in)), and the
/// bias U(±1/sqrt(fan_in)), with `fan_in = shape[1] * prod(kernel)`. The
/// weight is drawn first, in row-major order, then the bias.
fn init_parameters<T: Element>(
    rng: &mut impl Rng,
    shape: &[usize],
    bias_len: Option<usize>,
) -> Result<(Tensor<T>, Option<Tensor<T>>)> {
    let fan_in = checked_product("weight", &shape[1..])?;
    let bound = if fan_in == 0 { 0.0 } else { 1.0 / (fan_in as f64).sqrt() };
    let mut uniform = |what: &'static str, shape: &[usize]| -> Result<Tensor<T>> {
        let mut data = try_filled_vec(what, checked_product(what, shape)?, T::default())?;
        for v in &mut data {
            // 53 random bits: u uniform in [0, 1).
            let u = (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
            *v = T::from_f64(bound * (2.0 * u - 1.0));
        }
        Tensor::from_vec(shape, data)
    };
    let weight = uniform("weight", shape)?;
    let bias = bias_len.map(|len| uniform("bias", &[len])).transpose()?;
    Ok((weight, bias))
}

/// `[a, b, *kernel_size]`.
fn weight_shape<const N: usize>(a: usize, b: usize, kernel_size: &[usize; N]) -> Vec<usize> {
    [&[a, b][..], kernel_size].concat()
}

/// Checks that replacement parameters have the shapes of the current ones.
fn check_parameters<T: Element>(
    weight: &Tensor<T>,
    bias: Option<&Tensor<T>>,
    current_weight: &Tensor<T>,
    current_bias: Option<&Tensor<T>>,
) -> Result<()> {
    if weight.shape() != current_weight.shape() {
        return Err(Error::ShapeMismatch {
            what: "weight",
            expected: current_weight.shape().to_vec(),
            got: weight.shape().to_vec(),
        });
    }
    match (bias, current_bias) {
        (Some(b), Some(current)) if b.shape() != current.shape() => {
            Err(Error::ShapeMismatch { what: "bias", expected: current.shape().to_vec(), got: b.shape().to_vec() })
        }
        (Some(_), None) | (None, Some(_)) => Err(Error::InvalidArgument {
            what: "bias",
            detail: format!("the layer was built {} a bias", if current_bias.is_some() { "with" } else { "without" }),
        }),
        _ => Ok(()),
    }
}

/// Copies of `weight` and `bias` on `device`.
fn parameters_on<T: Element>(
    device: Device,
    weight: &Tensor<T>,
    bias: Option<&Tensor<T>>,
) -> Result<(Tensor<T>, Option<Tensor<T>>)> {
    Ok((weight.to_device(device)?, bias.map(|b| b.to_device(device)).transpose()?))
}

impl<T: Element, const N: usize> ConvNd<T, N> {
    /// Starts a layer mapping `in_channels` to `out_channels` with `kernel_size`
    /// (one value for every dim, or one per dim). Defaults as in PyTorch:
    /// stride 1, padding 0, dilation 1, groups 1, zeros padding, with a bias.
    pub fn builder(in_channels: usize, out_channels: usize, kernel_size: impl Into<Dims>) -> ConvBuilder<T, N> {
        ConvBuilder {
            in_channels,
            out_channels,
            kernel_size: kernel_size.into(),
            options: ConvOptions::new(),
            bias: true,
            element: PhantomData,
        }
    }

    /// `nn.ConvNd.forward`: the convolution of `input` (`[batch, in_channels, *spatial]`).
    pub fn forward(&self, input: &Tensor<T>) -> Result<Tensor<T>> {
        conv(N, input, &self.weight, self.bias.as_ref(), &self.options)
    }

    /// `activation(forward(input))` in one pass: the output is written once.
    ///
    /// ```
    /// use ferroconv::{Activation, Conv1d, Tensor};
    /// # fn main() -> ferroconv::Result<()> {
    /// let conv = Conv1d::<f32>::builder(1, 2, 3).build_seeded(0)?;
    /// let x = Tensor::<f32>::full(&[1, 1, 8], 1.0)?;
    /// let fused = conv.forward_with(&x, Activation::Relu)?;
    /// let unfused = ferroconv::relu(&conv.forward(&x)?)?;
    /// assert_eq!(fused.to_vec()?, unfused.to_vec()?);
    /// # Ok(()) }
    /// ```
    pub fn forward_with(&self, input: &Tensor<T>, activation: Activation) -> Result<Tensor<T>> {
        let geometry = conv_geometry(N, input, &self.weight, self.bias.as_ref(), &self.options)?;
        forward(&geometry, input, &self.weight, self.bias.as_ref(), activation)
    }

    /// The requested gradients of `⟨forward(input), grad_output⟩` with respect
    /// to the input, the weight and the bias.
    pub fn backward(&self, input: &Tensor<T>, grad_output: &Tensor<T>, request: GradRequest) -> Result<Gradients<T>> {
        conv_backward(N, input, &self.weight, self.bias.as_ref(), grad_output, &self.options, request)
    }

    /// The same layer with its parameters copied to `device`.
    pub fn to_device(&self, device: Device) -> Result<Self> {
        let (weight, bias) = parameters_on(device, &self.weight, self.bias.as_ref())?;
        Ok(ConvNd { weight, bias, ..self.clone() })
    }

    /// The device the parameters live on.
    pub fn device(&self) -> Device {
        self.weight.device()
    }

    /// Replaces the parameters (after an optimiser step, or to load trained
    /// ones); they must have the shapes of the current ones.
    pub fn set_parameters(&mut self, weight: Tensor<T>, bias: Option<Tensor<T>>) -> Result<()> {
        check_parameters(&weight, bias.as_ref(), &self.weight, self.bias.as_ref())?;
        (self.weight, self.bias) = (weight, bias);
        Ok(())
    }

    /// The weight, `[out_channels, in_channels / groups, *kernel_size]`.
    pub fn weight(&self) -> &Tensor<T> {
        &self.weight
    }

    /// The bias, `[out_channels]`, if the layer has one.
    pub fn bias(&self) -> Option<&Tensor<T>> {
        self.bias.as_ref()
    }

    /// The options forward runs with.
    pub fn options(&self) -> &ConvOptions {
        &self.options
    }

    /// Channels of the input.
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }

    /// Channels of the output.
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// The kernel's size in each spatial dim.
    pub fn kernel_size(&self) -> [usize; N] {
        self.kernel_size
    }
}

impl<T: Element, const N: usize> ConvBuilder<T, N> {
    /// Sets the stride.
    pub fn stride(mut self, stride: impl Into<Dims>) -> Self {
        self.options = self.options.stride(stride);
        self
    }
    /// Sets an explicit, symmetric padding.
    pub fn padding(mut self, padding: impl Into<Dims>) -> Self {
        self.options = self.options.padding(padding);
        self
    }
    /// PyTorch's `padding="same"`.
    pub fn same(mut self) -> Self {
        self.options = self.options.same();
        self
    }
    /// PyTorch's `padding="valid"`.
    pub fn valid(mut self) -> Self {
        self.options = self.options.valid();
        self
    }
    /// Sets the dilation.
    pub fn dilation(mut self, dilation: impl Into<Dims>) -> Self {
        self.options = self.options.dilation(dilation);
        self
    }
    /// Sets the number of groups (`in_channels` for a depthwise layer).
    pub fn groups(mut self, groups: i64) -> Self {
        self.options = self.options.groups(groups);
        self
    }
    /// Sets how the padding is filled.
    pub fn padding_mode(mut self, mode: PaddingMode) -> Self {
        self.options = self.options.padding_mode(mode);
        self
    }
    /// With (the default) or without a bias.
    pub fn bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    /// Builds the layer, drawing its parameters from `rng` as PyTorch's
    /// `reset_parameters` does (weight, then bias, both U(±1/sqrt(fan_in)) with
    /// `fan_in = in_channels / groups * prod(kernel_size)`).
    ///
    /// Checks what `nn.ConvNd`'s constructor checks (kernel size, groups and
    /// their divisibility); stride, padding and dilation are validated by
    /// [`forward`](ConvNd::forward), as in PyTorch.
    pub fn build(self, rng: &mut impl Rng) -> Result<ConvNd<T, N>> {
        let () = SpatialDims::<N>::CHECKED;
        let kernel_size = kernel_size::<N>(&self.kernel_size)?;
        let g = groups(self.in_channels, self.out_channels, self.options.groups)?;
        let shape = weight_shape(self.out_channels, self.in_channels / g, &kernel_size);
        let (weight, bias) = init_parameters(rng, &shape, self.bias.then_some(self.out_channels))?;
        Ok(ConvNd {
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            kernel_size,
            options: self.options,
            weight,
            bias,
        })
    }

    /// [`build`](Self::build) with a ChaCha8 generator seeded by `seed`: the
    /// same seed gives the same parameters.
    pub fn build_seeded(self, seed: u64) -> Result<ConvNd<T, N>> {
        self.build(&mut ChaCha8Rng::seed_from_u64(seed))
    }
}

impl<T: Element, const N: usize> ConvTransposeNd<T, N> {
    /// Starts a layer mapping `in_channels` to `out_channels` with `kernel_size`
    /// (one value for every dim, or one per dim). Defaults as in PyTorch:
    /// stride 1, padding 0, output padding 0, dilation 1, groups 1, with a bias.
    pub fn builder(
        in_channels: usize,
        out_channels: usize,
        kernel_size: impl Into<Dims>,
    ) -> ConvTransposeBuilder<T, N> {
        ConvTransposeBuilder {
            in_channels,
            out_channels,
            kernel_size: kernel_size.into(),
            options: ConvTransposeOptions::new(),
            bias: true,
            element: PhantomData,
        }
    }

    /// `nn.ConvTransposeNd.forward(input)`: the output size follows from the
    /// layer's `output_padding`.
    pub fn forward(&self, input: &Tensor<T>) -> Result<Tensor<T>> {
        conv_transpose(N, input, &self.weight, self.bias.as_ref(), &self.options)
    }

    /// `activation(forward(input))` in one pass: the output is written once.
    pub fn forward_with(&self, input: &Tensor<T>, activation: Activation) -> Result<Tensor<T>> {
        let geometry = conv_transpose_geometry(N, input, &self.weight, self.bias.as_ref(), &self.options)?;
        forward(&geometry, input, &self.weight, self.bias.as_ref(), activation)
    }

    /// `nn.ConvTransposeNd.forward(input, output_size)`: the spatial output size
    /// is `output_size`, which must lie in `[min_size, min_size + stride - 1]`
    /// per dim; the layer's `output_padding` is ignored.
    pub fn forward_with_output_size(&self, input: &Tensor<T>, output_size: impl Into<Dims>) -> Result<Tensor<T>> {
        conv_transpose(N, input, &self.weight, self.bias.as_ref(), &self.options.clone().output_size(output_size))
    }

    /// The requested gradients of `⟨forward(input), grad_output⟩`.
    pub fn backward(&self, input: &Tensor<T>, grad_output: &Tensor<T>, request: GradRequest) -> Result<Gradients<T>> {
        conv_transpose_backward(N, input, &self.weight, self.bias.as_ref(), grad_output, &self.options, request)
    }

    /// The requested gradients of `⟨forward_with_output_size(input, output_size), grad_output⟩`.
    pub fn backward_with_output_size(
        &self,
        input: &Tensor<T>,
        output_size: impl Into<Dims>,
        grad_output: &Tensor<T>,
        request: GradRequest,
    ) -> Result<Gradients<T>> {
        let options = self.options.clone().output_size(output_size);
        conv_transpose_backward(N, input, &self.weight, self.bias.as_ref(), grad_output, &options, request)
    }

    /// The same layer with its parameters copied to `device`.
    pub fn to_device(&self, device: Device) -> Result<Self> {
        let (weight, bias) = parameters_on(device, &self.weight, self.bias.as_ref())?;
        Ok(ConvTransposeNd { weight, bias, ..self.clone() })
    }

    /// The device the parameters live on.
    pub fn device(&self) -> Device {
        self.weight.device()
    }

    /// Replaces the parameters; they must have the shapes of the current ones.
    pub fn set_parameters(&mut self, weight: Tensor<T>, bias: Option<Tensor<T>>) -> Result<()> {
        check_parameters(&weight, bias.as_ref(), &self.weight, self.bias.as_ref())?;
        (self.weight, self.bias) = (weight, bias);
        Ok(())
    }

    /// The weight, `[in_channels, out_channels / groups, *kernel_size]`.
    pub fn weight(&self) -> &Tensor<T> {
        &self.weight
    }

    /// The bias, `[out_channels]`, if the layer has one.
    pub fn bias(&self) -> Option<&Tensor<T>> {
        self.bias.as_ref()
    }

    /// The options forward runs with.
    pub fn options(&self) -> &ConvTransposeOptions {
        &self.options
    }

    /// Channels of the input.
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }

    /// Channels of the output.
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// The kernel's size in each spatial dim.
    pub fn kernel_size(&self) -> [usize; N] {
        self.kernel_size
    }
}

impl<T: Element, const N: usize> ConvTransposeBuilder<T, N> {
    /// Sets the stride.
    pub fn stride(mut self, stride: impl Into<Dims>) -> Self {
        self.options = self.options.stride(stride);
        self
    }
    /// Sets the (symmetric) padding.
    pub fn padding(mut self, padding: impl Into<Dims>) -> Self {
        self.options = self.options.padding(padding);
        self
    }
    /// Sets the extra size added at the end of each output dim.
    pub fn output_padding(mut self, output_padding: impl Into<Dims>) -> Self {
        self.options = self.options.output_padding(output_padding);
        self
    }
    /// Sets the dilation.
    pub fn dilation(mut self, dilation: impl Into<Dims>) -> Self {
        self.options = self.options.dilation(dilation);
        self
    }
    /// Sets the number of groups.
    pub fn groups(mut self, groups: i64) -> Self {
        self.options = self.options.groups(groups);
        self
    }
    /// With (the default) or without a bias.
    pub fn bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    /// Builds the layer, drawing its parameters from `rng` as PyTorch's
    /// `reset_parameters` does (weight, then bias, both U(±1/sqrt(fan_in))).
    /// PyTorch computes `fan_in` from the weight `[in, out / groups, *k]` as for
    /// a conv, so here it is `out_channels / groups * prod(kernel_size)`.
    ///
    /// Checks kernel size, groups and their divisibility; the rest is
    /// validated by [`forward`](ConvTransposeNd::forward), as in PyTorch.
    pub fn build(self, rng: &mut impl Rng) -> Result<ConvTransposeNd<T, N>> {
        let () = SpatialDims::<N>::CHECKED;
        let kernel_size = kernel_size::<N>(&self.kernel_size)?;
        let g = groups(self.in_channels, self.out_channels, self.options.groups)?;
        let shape = weight_shape(self.in_channels, self.out_channels / g, &kernel_size);
        let (weight, bias) = init_parameters(rng, &shape, self.bias.then_some(self.out_channels))?;
        Ok(ConvTransposeNd {
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            kernel_size,
            options: self.options,
            weight,
            bias,
        })
    }

    /// [`build`](Self::build) with a ChaCha8 generator seeded by `seed`: the
    /// same seed gives the same parameters.
    pub fn build_seeded(self, seed: u64) -> Result<ConvTransposeNd<T, N>> {
        self.build(&mut ChaCha8Rng::seed_from_u64(seed))
    }
}
