//! The layers a U-Net needs around its convolutions: ReLU, max pooling, and
//! concatenation / split along channels. Small and exact; not a tensor library.
//!
//! Each is a primitive of [`CompanionPrimitives`] (implemented by every backend)
//! plus a function on tensors that runs where the tensors live.

mod cpu;
mod cuda;
mod pool;

pub use pool::{MaxPoolOptions, PoolGeometry};

use crate::backend::ConvPrimitives;

use crate::element::Element;
use crate::error::{Error, Result, checked_product};
use crate::ops::{TensorBackend, common_device, on_device};
use crate::tensor::Tensor;

/// Where a block of channels is copied from and to: `count` channels starting at
/// `src_offset` of a `[batch, src_channels, volume]` tensor go to `dst_offset` of a
/// `[batch, dst_channels, volume]` one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelBlock {
    /// Items in the batch (dim 0 of both tensors).
    pub batch: usize,
    /// Elements of one channel plane (the product of the spatial dims).
    pub volume: usize,
    /// Channels copied.
    pub count: usize,
    /// Channels of the source tensor.
    pub src_channels: usize,
    /// First source channel copied.
    pub src_offset: usize,
    /// Channels of the destination tensor.
    pub dst_channels: usize,
    /// Destination channel the first copied channel lands on.
    pub dst_offset: usize,
}

/// The companion primitives of a backend.
pub trait CompanionPrimitives<T: Element>: ConvPrimitives<T> {
    /// `y = max(x, 0)` elementwise (NaN stays NaN).
    fn relu(&self, x: &Self::Buffer<T>, y: &mut Self::Buffer<T>) -> Result<()>;

    /// `dx = dy` where `y > 0`, else 0 (`y` is the ReLU's output, as PyTorch's `threshold_backward`).
    fn relu_backward(&self, y: &Self::Buffer<T>, dy: &Self::Buffer<T>, dx: &mut Self::Buffer<T>) -> Result<()>;

    /// Max pooling: each output is the maximum of its window (padding counts as `-inf`; NaN wins).
    fn max_pool(&self, geometry: &PoolGeometry, x: &Self::Buffer<T>, y: &mut Self::Buffer<T>) -> Result<()>;

    /// The gradient of [`max_pool`](Self::max_pool): each output's gradient goes to its window's
    /// argmax (the first maximum in scan order, as PyTorch picks it), recomputed from `x`.
    fn max_pool_backward(
        &self,
        geometry: &PoolGeometry,
        x: &Self::Buffer<T>,
        dy: &Self::Buffer<T>,
        dx: &mut Self::Buffer<T>,
    ) -> Result<()>;

    /// `out = a + b` elementwise: where the two gradients of a tensor used twice
    /// (a skip connection) meet.
    fn add(&self, a: &Self::Buffer<T>, b: &Self::Buffer<T>, out: &mut Self::Buffer<T>) -> Result<()>;

    /// Copies a block of channels; the rest of `dst` is left as it was.
    fn copy_channels(&self, block: &ChannelBlock, src: &Self::Buffer<T>, dst: &mut Self::Buffer<T>) -> Result<()>;
}

fn check_same_shape<T: Element>(what: &'static str, t: &Tensor<T>, expected: &[usize]) -> Result<()> {
    if t.shape() != expected {
        return Err(Error::ShapeMismatch { what, expected: expected.to_vec(), got: t.shape().to_vec() });
    }
    Ok(())
}

fn unary<T, B>(backend: &B, shape: Vec<usize>, f: impl FnOnce(&B, &mut B::Buffer<T>) -> Result<()>) -> Result<Tensor<T>>
where
    T: Element,
    B: TensorBackend<T> + CompanionPrimitives<T>,
{
    let mut out = backend.alloc(checked_product("output", &shape)?)?;
    f(backend, &mut out)?;
    Ok(backend.wrap(shape, out))
}

/// `F.relu`.
///
/// ```
/// use ferroconv::{relu, Tensor};
/// # fn main() -> ferroconv::Result<()> {
/// let x = Tensor::<f32>::from_vec(&[3], vec![-1., 0., 2.])?;
/// assert_eq!(relu(&x)?.to_vec()?, vec![0., 0., 2.]);
/// # Ok(()) }
/// ```
pub fn relu<T: Element>(input: &Tensor<T>) -> Result<Tensor<T>> {
    on_device!(input.device(), |backend| unary(backend, input.shape().to_vec(), |b, out| {
        b.relu(b.view("input", input)?, out)
    }))
}

/// The gradient of [`relu`] from its output and the output's gradient.
pub fn relu_backward<T: Element>(output: &Tensor<T>, grad_output: &Tensor<T>) -> Result<Tensor<T>> {
    check_same_shape("grad_output", grad_output, output.shape())?;
    let device = common_device(&[("output", Some(output)), ("grad_output", Some(grad_output))])?;
    on_device!(device, |backend| unary(backend, output.shape().to_vec(), |b, out| {
        b.relu_backward(b.view("output", output)?, b.view("grad_output", grad_output)?, out)
    }))
}

/// `a + b`, for tensors of one shape: the sum of a skip connection's two gradients.
///
/// ```
/// use ferroconv::{add, Tensor};
/// # fn main() -> ferroconv::Result<()> {
/// let a = Tensor::<f32>::from_vec(&[2], vec![1., 2.])?;
/// assert_eq!(add(&a, &a)?.to_vec()?, vec![2., 4.]);
/// # Ok(()) }
/// ```
pub fn add<T: Element>(a: &Tensor<T>, b: &Tensor<T>) -> Result<Tensor<T>> {
    check_same_shape("b", b, a.shape())?;
    let device = common_device(&[("a", Some(a)), ("b", Some(b))])?;
    on_device!(device, |backend| unary(backend, a.shape().to_vec(), |be, out| {
        be.add(be.view("a", a)?, be.view("b", b)?, out)
    }))
}

/// `F.max_poolNd` for `spatial_dims` = 1, 2 or 3.
///
/// ```
/// use ferroconv::{max_pool, MaxPoolOptions, Tensor};
/// # fn main() -> ferroconv::Result<()> {
/// let x = Tensor::<f32>::from_vec(&[1, 1, 2, 2], vec![1., 4., 3., 2.])?;
/// assert_eq!(max_pool(2, &x, &MaxPoolOptions::new(2))?.to_vec()?, vec![4.]);
/// # Ok(()) }
/// ```
pub fn max_pool<T: Element>(spatial_dims: usize, input: &Tensor<T>, options: &MaxPoolOptions) -> Result<Tensor<T>> {
    let g = PoolGeometry::new(spatial_dims, input.shape(), options)?;
    on_device!(input.device(), |backend| unary(backend, g.output_shape(), |b, out| {
        b.max_pool(&g, b.view("input", input)?, out)
    }))
}

/// `F.max_pool2d`: input `[N, C, H, W]`.
pub fn max_pool2d<T: Element>(input: &Tensor<T>, options: &MaxPoolOptions) -> Result<Tensor<T>> {
    max_pool(2, input, options)
}

/// The gradient of [`max_pool`] with respect to its input.
pub fn max_pool_backward<T: Element>(
    spatial_dims: usize,
    input: &Tensor<T>,
    grad_output: &Tensor<T>,
    options: &MaxPoolOptions,
) -> Result<Tensor<T>> {
    let g = PoolGeometry::new(spatial_dims, input.shape(), options)?;
    check_same_shape("grad_output", grad_output, &g.output_shape())?;
    let device = common_device(&[("input", Some(input)), ("grad_output", Some(grad_output))])?;
    on_device!(device, |backend| unary(backend, g.input_shape(), |b, out| {
        b.max_pool_backward(&g, b.view("input", input)?, b.view("grad_output", grad_output)?, out)
    }))
}

/// The channel counts of tensors that agree in every dim but the channels (dim 1).
fn channel_counts<T: Element>(parts: &[&Tensor<T>]) -> Result<(Vec<usize>, Vec<usize>)> {
    let first = parts
        .first()
        .ok_or_else(|| Error::InvalidArgument { what: "tensors", detail: "cat needs at least one tensor".into() })?;
    let reference = first.shape();
    if reference.len() < 2 {
        return Err(Error::BadInputRank { expected: 2, spatial_dims: 0, shape: reference.to_vec() });
    }
    let mut counts = Vec::with_capacity(parts.len());
    for part in parts {
        let s = part.shape();
        if s.len() != reference.len() || s[0] != reference[0] || s[2..] != reference[2..] {
            let mut expected = reference.to_vec();
            if s.len() == reference.len() {
                expected[1] = s[1];
            }
            return Err(Error::ShapeMismatch {
                what: "tensors (all dims but the channels must agree)",
                expected,
                got: s.to_vec(),
            });
        }
        counts.push(s[1]);
    }
    Ok((reference.to_vec(), counts))
}

/// `torch.cat(tensors, dim=1)`: concatenation along channels.
///
/// ```
/// use ferroconv::{cat_channels, Tensor};
/// # fn main() -> ferroconv::Result<()> {
/// let a = Tensor::<f32>::from_vec(&[1, 1, 2], vec![1., 2.])?;
/// let b = Tensor::<f32>::from_vec(&[1, 2, 2], vec![3., 4., 5., 6.])?;
/// let c = cat_channels(&[&a, &b])?;
/// assert_eq!(c.shape(), &[1, 3, 2]);
/// assert_eq!(c.to_vec()?, vec![1., 2., 3., 4., 5., 6.]);
/// # Ok(()) }
/// ```
pub fn cat_channels<T: Element>(tensors: &[&Tensor<T>]) -> Result<Tensor<T>> {
    let (reference, counts) = channel_counts(tensors)?;
    let total = counts
        .iter()
        .try_fold(0usize, |a, &c| a.checked_add(c))
        .ok_or_else(|| Error::overflow("channels", "sum of channel counts"))?;
    let mut shape = reference.clone();
    shape[1] = total;
    let (batch, volume) = (reference[0], reference[2..].iter().product());
    let named: Vec<_> = tensors.iter().map(|t| ("tensors", Some(*t))).collect();
    let device = common_device(&named)?;
    on_device!(device, |backend| unary(backend, shape, |b, out| {
        let mut offset = 0;
        for (part, &count) in tensors.iter().zip(&counts) {
            let block = ChannelBlock {
                batch,
                volume,
                count,
                src_channels: count,
                src_offset: 0,
                dst_channels: total,
                dst_offset: offset,
            };
            b.copy_channels(&block, b.view("tensors", part)?, out)?;
            offset += count;
        }
        Ok(())
    }))
}

/// `torch.split(tensor, sizes, dim=1)`: the inverse of [`cat_channels`] (and its backward).
///
/// ```
/// use ferroconv::{split_channels, Tensor};
/// # fn main() -> ferroconv::Result<()> {
/// let t = Tensor::<f32>::from_vec(&[1, 3, 1], vec![1., 2., 3.])?;
/// let parts = split_channels(&t, &[1, 2])?;
/// assert_eq!(parts[1].to_vec()?, vec![2., 3.]);
/// # Ok(()) }
/// ```
pub fn split_channels<T: Element>(tensor: &Tensor<T>, sizes: &[usize]) -> Result<Vec<Tensor<T>>> {
    let shape = tensor.shape();
    if shape.len() < 2 {
        return Err(Error::BadInputRank { expected: 2, spatial_dims: 0, shape: shape.to_vec() });
    }
    if sizes.iter().try_fold(0usize, |a, &c| a.checked_add(c)) != Some(shape[1]) {
        return Err(Error::InvalidArgument {
            what: "sizes",
            detail: format!("{sizes:?} must add up to the {} channels of shape {shape:?}", shape[1]),
        });
    }
    let (batch, volume) = (shape[0], shape[2..].iter().product());
    let mut parts = Vec::with_capacity(sizes.len());
    let mut offset = 0;
    for &count in sizes {
        let mut part_shape = shape.to_vec();
        part_shape[1] = count;
        let block = ChannelBlock {
            batch,
            volume,
            count,
            src_channels: shape[1],
            src_offset: offset,
            dst_channels: count,
            dst_offset: 0,
        };
        parts.push(on_device!(tensor.device(), |backend| unary(backend, part_shape, |b, out| {
            b.copy_channels(&block, b.view("tensor", tensor)?, out)
        }))?);
        offset += count;
    }
    Ok(parts)
}
