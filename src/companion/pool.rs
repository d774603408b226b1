//! `MaxPool1d/2d/3d` options, validated into a [`PoolGeometry`] with PyTorch's rules.

use crate::error::{Error, Result, checked_product};
use crate::geometry::{Dims, MAX_SPATIAL_DIMS, check_non_negative, check_positive, lift, to_usizes};

/// Options of `nn.MaxPoolNd`: kernel size, stride (default: the kernel size),
/// padding (implicit `-inf`), dilation and `ceil_mode`.
///
/// ```
/// use ferroconv::MaxPoolOptions;
/// let pool = MaxPoolOptions::new(2); // nn.MaxPool2d(2): stride 2
/// let overlapping = MaxPoolOptions::new(3).stride(2).padding(1).ceil_mode(true);
/// # let _ = (pool, overlapping);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaxPoolOptions {
    /// The window size, per spatial dim.
    pub kernel_size: Dims,
    /// `None` means the kernel size, as in PyTorch.
    pub stride: Option<Dims>,
    /// Implicit `-inf` padding on both sides, per spatial dim (at most half the window).
    pub padding: Dims,
    /// Spacing between window taps, per spatial dim.
    pub dilation: Dims,
    /// Round the output size up instead of down.
    pub ceil_mode: bool,
}

impl MaxPoolOptions {
    /// A window of `kernel_size`, stride equal to it, no padding, dilation 1, floor mode.
    pub fn new(kernel_size: impl Into<Dims>) -> Self {
        MaxPoolOptions {
            kernel_size: kernel_size.into(),
            stride: None,
            padding: Dims::All(0),
            dilation: Dims::All(1),
            ceil_mode: false,
        }
    }
    /// Sets the stride.
    pub fn stride(mut self, stride: impl Into<Dims>) -> Self {
        self.stride = Some(stride.into());
        self
    }
    /// Sets the padding (at most half the kernel size).
    pub fn padding(mut self, padding: impl Into<Dims>) -> Self {
        self.padding = padding.into();
        self
    }
    /// Sets the dilation.
    pub fn dilation(mut self, dilation: impl Into<Dims>) -> Self {
        self.dilation = dilation.into();
        self
    }
    /// Rounds the output size up instead of down (a last window must still start inside the input or left padding).
    pub fn ceil_mode(mut self, ceil_mode: bool) -> Self {
        self.ceil_mode = ceil_mode;
        self
    }
}

/// A validated max-pooling problem, lifted to three spatial dims like [`crate::ConvGeometry`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolGeometry {
    /// Spatial dims as the caller sees them.
    pub spatial_dims: usize,
    /// Items in the batch (N).
    pub batch: usize,
    /// Channels (C), pooled independently.
    pub channels: usize,
    /// Spatial size of the input, lifted to three dims.
    pub in_size: [usize; 3],
    /// Spatial size of the output, lifted to three dims.
    pub out_size: [usize; 3],
    /// The window size, per spatial dim.
    pub kernel_size: [usize; 3],
    /// Step between windows, per dim.
    pub stride: [usize; 3],
    /// Implicit `-inf` padding on both sides, per spatial dim (at most half the window).
    pub padding: [usize; 3],
    /// Spacing between window taps, per spatial dim.
    pub dilation: [usize; 3],
}

impl PoolGeometry {
    /// Validates `F.max_poolNd(input, ...)` for an input of shape `[N, C, *spatial]`.
    ///
    /// ```
    /// use ferroconv::{MaxPoolOptions, PoolGeometry};
    /// let g = PoolGeometry::new(2, &[1, 8, 7, 7], &MaxPoolOptions::new(2).ceil_mode(true)).unwrap();
    /// assert_eq!(g.output_shape(), vec![1, 8, 4, 4]);
    /// ```
    pub fn new(spatial_dims: usize, input: &[usize], options: &MaxPoolOptions) -> Result<Self> {
        if !(1..=MAX_SPATIAL_DIMS).contains(&spatial_dims) {
            return Err(Error::InvalidArgument {
                what: "spatial_dims",
                detail: format!("must be 1, 2 or 3, got {spatial_dims}"),
            });
        }
        if input.len() != spatial_dims + 2 {
            return Err(Error::BadInputRank { expected: spatial_dims + 2, spatial_dims, shape: input.to_vec() });
        }
        let kernel = options.kernel_size.resolve("kernel_size", spatial_dims)?;
        let stride = match &options.stride {
            Some(s) => s.resolve("stride", spatial_dims)?,
            None => kernel.clone(),
        };
        let padding = options.padding.resolve("padding", spatial_dims)?;
        let dilation = options.dilation.resolve("dilation", spatial_dims)?;
        check_positive(&kernel, |kernel_size| Error::NonPositiveKernelSize { kernel_size })?;
        check_positive(&stride, |stride| Error::NonPositiveStride { stride })?;
        check_non_negative(&padding, |padding| Error::NegativePadding { padding })?;
        check_positive(&dilation, |dilation| Error::NonPositiveDilation { dilation })?;
        let (kernel, stride) = (to_usizes("kernel_size", &kernel)?, to_usizes("stride", &stride)?);
        let (padding, dilation) = (to_usizes("padding", &padding)?, to_usizes("dilation", &dilation)?);
        if input[1] == 0 {
            return Err(Error::EmptyChannels { shape: input.to_vec() });
        }
        let spatial = &input[2..];
        if spatial.contains(&0) {
            return Err(Error::EmptySpatialInput { shape: input.to_vec() });
        }
        checked_product("input", input)?;
        let mut out = vec![0usize; spatial_dims];
        for d in 0..spatial_dims {
            if padding[d] > kernel[d] / 2 {
                return Err(Error::PoolPaddingTooLarge { dim: d, padding: padding[d], kernel_size: kernel[d] });
            }
            let size = output_size(spatial[d], kernel[d], stride[d], padding[d], dilation[d], options.ceil_mode)
                .ok_or_else(|| Error::overflow("kernel_size", format!("window extent in spatial dim {d}")))?;
            if size < 1 {
                return Err(Error::PoolOutputTooSmall { dim: d, input: spatial[d], output: size });
            }
            out[d] = size as usize;
        }
        Ok(PoolGeometry {
            spatial_dims,
            batch: input[0],
            channels: input[1],
            in_size: lift(spatial, 1),
            out_size: lift(&out, 1),
            kernel_size: lift(&kernel, 1),
            stride: lift(&stride, 1),
            padding: lift(&padding, 0),
            dilation: lift(&dilation, 1),
        })
    }

    fn shape(&self, size: &[usize; 3]) -> Vec<usize> {
        let mut s = vec![self.batch, self.channels];
        s.extend_from_slice(&size[MAX_SPATIAL_DIMS - self.spatial_dims..]);
        s
    }

    /// `[N, C, *in]`.
    pub fn input_shape(&self) -> Vec<usize> {
        self.shape(&self.in_size)
    }

    /// `[N, C, *out]`.
    pub fn output_shape(&self) -> Vec<usize> {
        self.shape(&self.out_size)
    }

    /// Elements of one input plane.
    pub fn in_volume(&self) -> usize {
        self.in_size.iter().product()
    }

    /// Elements of one output plane.
    pub fn out_volume(&self) -> usize {
        self.out_size.iter().product()
    }
}

/// PyTorch's `pooling_output_shape` for one dim, in i128 (so no valid input overflows);
/// `None` when the window extent overflows.
fn output_size(input: usize, kernel: usize, stride: usize, padding: usize, dilation: usize, ceil: bool) -> Option<i64> {
    let (n, k, s, p, d) = (input as i128, kernel as i128, stride as i128, padding as i128, dilation as i128);
    let extent = d.checked_mul(k - 1)? + 1;
    let numerator = n + 2 * p - extent + if ceil { s - 1 } else { 0 };
    let mut out = numerator.div_euclid(s) + 1;
    // The last window must start inside the input or its left padding.
    if ceil && (out - 1) * s >= n + p {
        out -= 1;
    }
    i64::try_from(out).ok()
}
