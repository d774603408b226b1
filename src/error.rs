//! The one error type of the crate.
//!
//! Every invalid argument is an [`Error`](enum@Error) whose message names the argument and
//! its values; [`Error::kind`] gives a stable category string. The first twenty
//! kinds are the rules PyTorch enforces (the fixtures' `error_kind` names); the
//! rest cover what the library adds: overflow, allocation, devices and CUDA.

use thiserror::Error;

/// Convenience alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in ferroconv.
///
/// ```
/// use ferroconv::{conv2d, ConvOptions, Tensor};
///
/// # fn main() -> ferroconv::Result<()> {
/// let x = Tensor::<f32>::zeros(&[1, 3, 8, 8])?;
/// let w = Tensor::<f32>::zeros(&[4, 2, 3, 3])?; // 2 input channels per group, but x has 3
/// let err = conv2d(&x, &w, None, &ConvOptions::default()).unwrap_err();
/// assert_eq!(err.kind(), "weight_shape_mismatch");
/// assert!(err.to_string().contains("weight"));
/// # Ok(()) }
/// ```
// Variant fields are the values each variant's message names.
#[allow(missing_docs)]
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The input's rank is not `spatial_dims + 2`.
    #[error("input: expected a tensor of rank {expected} (N, C and {spatial_dims} spatial dims), got shape {shape:?}")]
    BadInputRank { expected: usize, spatial_dims: usize, shape: Vec<usize> },

    /// The weight's rank is not `spatial_dims + 2`.
    #[error("weight: expected a tensor of rank {expected}, got shape {shape:?}")]
    WeightRankMismatch { expected: usize, shape: Vec<usize> },

    /// A per-dimension parameter list has the wrong number of entries.
    #[error("{param}: expected {expected} values (one per spatial dim), got {got:?}")]
    ParamLengthMismatch { param: &'static str, expected: usize, got: Vec<i64> },

    /// Some stride is zero or negative.
    #[error("stride: every value must be positive, got {stride:?}")]
    NonPositiveStride { stride: Vec<i64> },

    /// Some padding is negative.
    #[error("padding: every value must be non-negative, got {padding:?}")]
    NegativePadding { padding: Vec<i64> },

    /// Some dilation is zero or negative.
    #[error("dilation: every value must be positive, got {dilation:?}")]
    NonPositiveDilation { dilation: Vec<i64> },

    /// `groups` is zero or negative.
    #[error("groups: must be positive, got {groups}")]
    NonPositiveGroups { groups: i64 },

    /// Some output padding is negative.
    #[error("output_padding: every value must be non-negative, got {output_padding:?}")]
    NegativeOutputPadding { output_padding: Vec<i64> },

    /// `"same"` / `"valid"` padding given to a transposed convolution.
    #[error("padding: conv_transpose takes explicit integer padding, not {padding:?}")]
    StringPaddingForTranspose { padding: &'static str },

    /// `"same"` padding with a stride other than 1.
    #[error("padding: \"same\" requires stride 1 in every dim, got stride {stride:?}")]
    SamePaddingWithStride { stride: Vec<usize> },

    /// A channel count is not divisible by `groups`.
    #[error("groups: {what} ({channels}) must be divisible by groups ({groups})")]
    ChannelsNotDivisibleByGroups { what: &'static str, channels: usize, groups: usize },

    /// The weight's shape does not fit the input's channels.
    #[error("weight: shape {weight:?} does not fit input channels {in_channels} with groups {groups} ({rule})")]
    WeightShapeMismatch { weight: Vec<usize>, in_channels: usize, groups: usize, rule: &'static str },

    /// The bias is not a vector of `out_channels` values.
    #[error("bias: expected shape [{out_channels}], got {shape:?}")]
    BiasShapeMismatch { out_channels: usize, shape: Vec<usize> },

    /// Some spatial size of the input is zero.
    #[error("input: every spatial size must be positive, got shape {shape:?}")]
    EmptySpatialInput { shape: Vec<usize> },

    /// Reflect padding must be smaller than the input in that dim.
    #[error(
        "padding: reflect padding ({pad_lo}, {pad_hi}) in spatial dim {dim} must be smaller than the input size {size}"
    )]
    ReflectPaddingTooLarge { dim: usize, pad_lo: usize, pad_hi: usize, size: usize },

    /// Circular padding must not exceed the input in that dim.
    #[error(
        "padding: circular padding ({pad_lo}, {pad_hi}) in spatial dim {dim} must not exceed the input size {size}"
    )]
    CircularPaddingTooLarge { dim: usize, pad_lo: usize, pad_hi: usize, size: usize },

    /// The dilated kernel does not fit in the padded input.
    #[error("weight: dilated kernel extent {extent} in spatial dim {dim} exceeds the padded input size {padded}")]
    KernelLargerThanPaddedInput { dim: usize, extent: usize, padded: usize },

    /// `output_size` outside `[min_size, min_size + stride - 1]`.
    #[error("output_size: {requested} in spatial dim {dim} must lie in [{min}, {max}]")]
    OutputSizeOutOfRange { dim: usize, requested: i64, min: i64, max: i64 },

    /// An output padding that is neither below the stride nor below the dilation.
    #[error(
        "output_padding: {output_padding} in spatial dim {dim} must be smaller than the stride ({stride}) or the dilation ({dilation})"
    )]
    OutputPaddingTooLarge { dim: usize, output_padding: usize, stride: usize, dilation: usize },

    /// The transposed convolution's output would be empty or negative.
    #[error(
        "output size: {size} in spatial dim {dim} is not positive (input {input}, stride {stride}, padding {padding}, dilation {dilation}, kernel {kernel}, output_padding {output_padding})"
    )]
    NonPositiveOutputSize {
        dim: usize,
        size: i64,
        input: usize,
        stride: usize,
        padding: usize,
        dilation: usize,
        kernel: usize,
        output_padding: usize,
    },

    /// A pooling kernel size is zero or negative.
    #[error("kernel_size: every value must be positive, got {kernel_size:?}")]
    NonPositiveKernelSize { kernel_size: Vec<i64> },

    /// Pooling padding larger than half the kernel.
    #[error("padding: {padding} in spatial dim {dim} must be at most half the kernel size ({kernel_size})")]
    PoolPaddingTooLarge { dim: usize, padding: usize, kernel_size: usize },

    /// A pooling window that leaves no output.
    #[error(
        "output size: pooling input of size {input} in spatial dim {dim} gives output size {output}, which is too small"
    )]
    PoolOutputTooSmall { dim: usize, input: usize, output: i64 },

    /// An input with no channels where the op needs some.
    #[error("input: the channel count must be positive, got shape {shape:?}")]
    EmptyChannels { shape: Vec<usize> },

    /// A size or index computation overflows `usize` (or the kernels' index type).
    #[error("{what}: size overflows ({detail})")]
    SizeOverflow { what: &'static str, detail: String },

    /// A buffer of the requested size could not be allocated.
    #[error("allocation of {bytes} bytes for {what} failed")]
    AllocationFailed { what: &'static str, bytes: usize },

    /// A tensor's data does not match its shape, or a gradient's shape is wrong.
    #[error("{what}: expected shape {expected:?}, got {got:?}")]
    ShapeMismatch { what: &'static str, expected: Vec<usize>, got: Vec<usize> },

    /// A tensor's element count does not match its shape.
    #[error("{what}: shape {shape:?} needs {expected} elements, got {got}")]
    DataLength { what: &'static str, shape: Vec<usize>, expected: usize, got: usize },

    /// Operands live on different devices.
    #[error("{what}: lives on {got}, but the op runs on {expected}; copy it explicitly with Tensor::to_device")]
    DeviceMismatch { what: &'static str, expected: String, got: String },

    /// The requested device cannot be used.
    #[error("device {device}: unavailable ({reason})")]
    DeviceUnavailable { device: String, reason: String },

    /// An invalid argument that none of the above describes (a malformed name, an unknown option).
    #[error("{what}: {detail}")]
    InvalidArgument { what: &'static str, detail: String },

    /// The CUDA driver, NVRTC or a kernel launch reported an error.
    #[error("CUDA: {context}: {message}")]
    Cuda { context: String, message: String },
}

impl Error {
    /// A stable, machine-readable category, e.g. `"non_positive_stride"`.
    ///
    /// The first twenty are the `error_kind` names of the PyTorch fixtures.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::BadInputRank { .. } => "bad_input_rank",
            Error::WeightRankMismatch { .. } => "weight_rank_mismatch",
            Error::ParamLengthMismatch { .. } => "param_length_mismatch",
            Error::NonPositiveStride { .. } => "non_positive_stride",
            Error::NegativePadding { .. } => "negative_padding",
            Error::NonPositiveDilation { .. } => "non_positive_dilation",
            Error::NonPositiveGroups { .. } => "non_positive_groups",
            Error::NegativeOutputPadding { .. } => "negative_output_padding",
            Error::StringPaddingForTranspose { .. } => "string_padding_for_transpose",
            Error::SamePaddingWithStride { .. } => "same_padding_with_stride",
            Error::ChannelsNotDivisibleByGroups { .. } => "channels_not_divisible_by_groups",
            Error::WeightShapeMismatch { .. } => "weight_shape_mismatch",
            Error::BiasShapeMismatch { .. } => "bias_shape_mismatch",
            Error::EmptySpatialInput { .. } => "empty_spatial_input",
            Error::ReflectPaddingTooLarge { .. } => "reflect_padding_too_large",
            Error::CircularPaddingTooLarge { .. } => "circular_padding_too_large",
            Error::KernelLargerThanPaddedInput { .. } => "kernel_larger_than_padded_input",
            Error::OutputSizeOutOfRange { .. } => "output_size_out_of_range",
            Error::OutputPaddingTooLarge { .. } => "output_padding_too_large",
            Error::NonPositiveOutputSize { .. } => "non_positive_output_size",
            Error::NonPositiveKernelSize { .. } => "non_positive_kernel_size",
            Error::PoolPaddingTooLarge { .. } => "pool_padding_too_large",
            Error::PoolOutputTooSmall { .. } => "pool_output_too_small",
            Error::EmptyChannels { .. } => "empty_channels",
            Error::SizeOverflow { .. } => "size_overflow",
            Error::AllocationFailed { .. } => "allocation_failed",
            Error::ShapeMismatch { .. } => "shape_mismatch",
            Error::DataLength { .. } => "data_length",
            Error::DeviceMismatch { .. } => "device_mismatch",
            Error::DeviceUnavailable { .. } => "device_unavailable",
            Error::InvalidArgument { .. } => "invalid_argument",
            Error::Cuda { .. } => "cuda",
        }
    }

    pub(crate) fn overflow(what: &'static str, detail: impl Into<String>) -> Self {
        Error::SizeOverflow { what, detail: detail.into() }
    }
}

/// Product of sizes with overflow checking; `what` names the tensor for the error.
pub(crate) fn checked_product(what: &'static str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::overflow(what, format!("product of {dims:?}")))
}

/// Allocates a vector of `len` copies of `value`, reporting failure instead of aborting.
pub(crate) fn try_filled_vec<T: Clone>(what: &'static str, len: usize, value: T) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| Error::AllocationFailed { what, bytes: len.saturating_mul(std::mem::size_of::<T>()) })?;
    v.resize(len, value);
    Ok(v)
}
