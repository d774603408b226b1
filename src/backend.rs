//! The backend traits: a handful of primitives each backend implements, and the
//! `Conv` / `ConvTranspose` ops written once in terms of them.
//!
//! The primitives work on a [`ConvGeometry`] with zero padding (see
//! [`ConvGeometry::with_materialised_padding`]); in its terms, with
//! `x [N, in_channels, in_size]`, `w [out_channels, in_channels/groups, k]` and
//! `y [N, out_channels, out_size]`:
//!
//! | primitive | computes |
//! |---|---|
//! | [`correlate`](ConvPrimitives::correlate) | `y = x ⋆ w (+ bias)`: conv forward, conv_transpose backward-data |
//! | [`correlate_adjoint`](ConvPrimitives::correlate_adjoint) | `x = yᵀ ⋆ w (+ bias)`: conv_transpose forward, conv backward-data |
//! | [`correlate_weight`](ConvPrimitives::correlate_weight) | `dw = Σ x ⋆ y`: the weight gradient of both ops |
//! | [`channel_sums`](ConvPrimitives::channel_sums) | the bias gradient of both ops |
//! | [`pad`](ConvPrimitives::pad) / [`fold_padding`](ConvPrimitives::fold_padding) | reflect/replicate/circular padding and its adjoint |

use crate::element::Element;
use crate::error::{Error, Result};
use crate::geometry::{ConvGeometry, OpKind};

/// An elementwise function applied to an op's output in the same pass that
/// writes it (the "fused epilogue"), after the bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Activation {
    /// The output as computed.
    #[default]
    Identity,
    /// `max(0, v)`, keeping NaN.
    Relu,
}

impl Activation {
    /// Applies the activation to one accumulated value.
    #[inline]
    pub fn apply<A: crate::element::Accumulator>(self, v: A) -> A {
        match self {
            // Like PyTorch's relu: negatives become zero, NaN stays NaN.
            Activation::Relu if v < A::ZERO => A::ZERO,
            _ => v,
        }
    }
}

/// A device a backend computes on, with its own buffer type.
pub trait Backend: Send + Sync {
    /// A buffer of `T` owned by this backend (a `Vec<T>` on the CPU, device memory on a GPU).
    type Buffer<T: Element>;

    /// A short, human-readable name, e.g. `"cpu (2 threads)"`.
    fn name(&self) -> String;
}

/// The primitives of the convolution family. Each works on a zero-padded
/// geometry (`geometry.zero_padded()`), except [`pad`](Self::pad) and
/// [`fold_padding`](Self::fold_padding), which take the original one.
///
/// Outputs are overwritten, never accumulated into; every element of an
/// output is written, whatever it held before.
pub trait ConvPrimitives<T: Element>: Backend {
    /// A buffer of `len` elements whose contents the caller will overwrite.
    fn alloc(&self, len: usize) -> Result<Self::Buffer<T>>;

    /// `y[n, o, p] = act(bias[o] + Σ_{c, t} x[n, g·Cin_g + c, p·stride + t·dilation - padding_lo] · w[o, c, t])`.
    fn correlate(
        &self,
        geometry: &ConvGeometry,
        x: &Self::Buffer<T>,
        w: &Self::Buffer<T>,
        bias: Option<&Self::Buffer<T>>,
        activation: Activation,
        y: &mut Self::Buffer<T>,
    ) -> Result<()>;

    /// The adjoint of [`correlate`](Self::correlate) in `x`: every `y[n, o, p] · w[o, c, t]` lands
    /// on `x[n, g·Cin_g + c, p·stride + t·dilation - padding_lo]` when that lies inside `x`;
    /// then `bias[c]` (indexed by `x`'s channel) is added and `activation` applied.
    fn correlate_adjoint(
        &self,
        geometry: &ConvGeometry,
        y: &Self::Buffer<T>,
        w: &Self::Buffer<T>,
        bias: Option<&Self::Buffer<T>>,
        activation: Activation,
        x: &mut Self::Buffer<T>,
    ) -> Result<()>;

    /// `dw[o, c, t] = Σ_{n, p} x[n, g·Cin_g + c, p·stride + t·dilation - padding_lo] · y[n, o, p]`.
    fn correlate_weight(
        &self,
        geometry: &ConvGeometry,
        x: &Self::Buffer<T>,
        y: &Self::Buffer<T>,
        dw: &mut Self::Buffer<T>,
    ) -> Result<()>;

    /// `sums[c] = Σ_{n, p} t[n, c, p]` for `t` of shape `[batch, channels, volume]`.
    fn channel_sums(
        &self,
        batch: usize,
        channels: usize,
        volume: usize,
        t: &Self::Buffer<T>,
        sums: &mut Self::Buffer<T>,
    ) -> Result<()>;

    /// Writes `x` padded by the geometry's padding and mode (shape `geometry.padded_x_shape()`).
    fn pad(&self, geometry: &ConvGeometry, x: &Self::Buffer<T>, padded: &mut Self::Buffer<T>) -> Result<()>;

    /// The adjoint of [`pad`](Self::pad): each padded position's value is added to
    /// the `x` position it was copied from.
    fn fold_padding(&self, geometry: &ConvGeometry, padded: &Self::Buffer<T>, x: &mut Self::Buffer<T>) -> Result<()>;
}

/// Which gradients a backward pass computes; the others are skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GradRequest {
    /// The gradient with respect to the op's input.
    pub input: bool,
    /// The gradient with respect to the weight.
    pub weight: bool,
    /// The gradient with respect to the bias (only where the op has one).
    pub bias: bool,
}

impl GradRequest {
    /// Every gradient (the bias one only where there is a bias).
    pub const ALL: GradRequest = GradRequest { input: true, weight: true, bias: true };
}

impl Default for GradRequest {
    fn default() -> Self {
        Self::ALL
    }
}

/// `F.convNd` on a backend: forward and the three gradients.
///
/// Implemented for every backend that has the [`ConvPrimitives`]; the methods
/// validate that the geometry is a conv's, then compose the primitives.
pub trait Conv<T: Element>: ConvPrimitives<T> {
    /// `output = activation(conv(input, weight) + bias)`, written once.
    fn forward(
        &self,
        geometry: &ConvGeometry,
        input: &Self::Buffer<T>,
        weight: &Self::Buffer<T>,
        bias: Option<&Self::Buffer<T>>,
        activation: Activation,
        output: &mut Self::Buffer<T>,
    ) -> Result<()> {
        expect_op(geometry, OpKind::Conv)?;
        if geometry.zero_padded() {
            return self.correlate(geometry, input, weight, bias, activation, output);
        }
        let padded = self.padded_input(geometry, input)?;
        self.correlate(&geometry.with_materialised_padding(), &padded, weight, bias, activation, output)
    }

    /// `grad_input = ∂⟨output, grad_output⟩ / ∂input`: a transposed convolution.
    fn backward_data(
        &self,
        geometry: &ConvGeometry,
        grad_output: &Self::Buffer<T>,
        weight: &Self::Buffer<T>,
        grad_input: &mut Self::Buffer<T>,
    ) -> Result<()> {
        expect_op(geometry, OpKind::Conv)?;
        if geometry.zero_padded() {
            return self.correlate_adjoint(geometry, grad_output, weight, None, Activation::Identity, grad_input);
        }
        let padded_geometry = geometry.with_materialised_padding();
        let mut grad_padded = self.alloc(padded_len(geometry)?)?;
        self.correlate_adjoint(&padded_geometry, grad_output, weight, None, Activation::Identity, &mut grad_padded)?;
        self.fold_padding(geometry, &grad_padded, grad_input)
    }

    /// `grad_weight = ∂⟨output, grad_output⟩ / ∂weight`.
    fn backward_weight(
        &self,
        geometry: &ConvGeometry,
        input: &Self::Buffer<T>,
        grad_output: &Self::Buffer<T>,
        grad_weight: &mut Self::Buffer<T>,
    ) -> Result<()> {
        expect_op(geometry, OpKind::Conv)?;
        if geometry.zero_padded() {
            return self.correlate_weight(geometry, input, grad_output, grad_weight);
        }
        let padded = self.padded_input(geometry, input)?;
        self.correlate_weight(&geometry.with_materialised_padding(), &padded, grad_output, grad_weight)
    }

    /// `grad_bias[o] = Σ grad_output[:, o, ...]`.
    fn backward_bias(
        &self,
        geometry: &ConvGeometry,
        grad_output: &Self::Buffer<T>,
        grad_bias: &mut Self::Buffer<T>,
    ) -> Result<()> {
        expect_op(geometry, OpKind::Conv)?;
        self.channel_sums(geometry.batch, geometry.out_channels, geometry.out_volume(), grad_output, grad_bias)
    }

    #[doc(hidden)]
    fn padded_input(&self, geometry: &ConvGeometry, input: &Self::Buffer<T>) -> Result<Self::Buffer<T>> {
        let mut padded = self.alloc(padded_len(geometry)?)?;
        self.pad(geometry, input, &mut padded)?;
        Ok(padded)
    }
}

/// `F.conv_transposeNd` on a backend: forward and the three gradients, by duality.
pub trait ConvTranspose<T: Element>: ConvPrimitives<T> {
    /// `output = activation(conv_transpose(input, weight) + bias)`, written once.
    fn forward(
        &self,
        geometry: &ConvGeometry,
        input: &Self::Buffer<T>,
        weight: &Self::Buffer<T>,
        bias: Option<&Self::Buffer<T>>,
        activation: Activation,
        output: &mut Self::Buffer<T>,
    ) -> Result<()> {
        expect_op(geometry, OpKind::ConvTranspose)?;
        self.correlate_adjoint(geometry, input, weight, bias, activation, output)
    }

    /// `grad_input`: a convolution of `grad_output` with the same weight.
    fn backward_data(
        &self,
        geometry: &ConvGeometry,
        grad_output: &Self::Buffer<T>,
        weight: &Self::Buffer<T>,
        grad_input: &mut Self::Buffer<T>,
    ) -> Result<()> {
        expect_op(geometry, OpKind::ConvTranspose)?;
        self.correlate(geometry, grad_output, weight, None, Activation::Identity, grad_input)
    }

    /// `grad_weight`: the weight correlation with the roles of input and gradient swapped.
    fn backward_weight(
        &self,
        geometry: &ConvGeometry,
        input: &Self::Buffer<T>,
        grad_output: &Self::Buffer<T>,
        grad_weight: &mut Self::Buffer<T>,
    ) -> Result<()> {
        expect_op(geometry, OpKind::ConvTranspose)?;
        self.correlate_weight(geometry, grad_output, input, grad_weight)
    }

    /// `grad_bias[c] = Σ grad_output[:, c, ...]`.
    fn backward_bias(
        &self,
        geometry: &ConvGeometry,
        grad_output: &Self::Buffer<T>,
        grad_bias: &mut Self::Buffer<T>,
    ) -> Result<()> {
        expect_op(geometry, OpKind::ConvTranspose)?;
        self.channel_sums(geometry.batch, geometry.in_channels, geometry.in_volume(), grad_output, grad_bias)
    }
}

impl<T: Element, B: ConvPrimitives<T>> Conv<T> for B {}
impl<T: Element, B: ConvPrimitives<T>> ConvTranspose<T> for B {}

fn expect_op(geometry: &ConvGeometry, op: OpKind) -> Result<()> {
    if geometry.op == op {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            what: "geometry",
            detail: format!("validated for {}, used for {}", geometry.op.name(), op.name()),
        })
    }
}

fn padded_len(geometry: &ConvGeometry) -> Result<usize> {
    crate::error::checked_product("padded input", &geometry.padded_x_shape())
}
