//! Parameters as a PyTorch user gives them, validated once into a [`ConvGeometry`].
//!
//! Every backend consumes the geometry; none re-derives a shape. Ranks 1 and 2
//! are rank 3 with leading unit dims, so each algorithm has one code path.
//!
//! The geometry always describes a *convolution* (a correlation) `y = x ⋆ w` in
//! the terms of `F.conv3d`: `x` is the large side `[N, in_channels, in_size]`,
//! `y` the strided side `[N, out_channels, out_size]`, `w` is
//! `[out_channels, in_channels / groups, kernel_size]`. A transposed convolution
//! is the adjoint of such a convolution: its input is `y`, its output is `x`,
//! and its weight `[C_in, C_out / groups, k]` is exactly `w`. So the same three
//! primitives (correlate, its adjoint, and the weight correlation) serve both ops.

use crate::error::{Error, Result, checked_product};

/// Number of spatial dims every geometry is lifted to.
pub const MAX_SPATIAL_DIMS: usize = 3;

/// A per-spatial-dim integer parameter: one value for every dim (like PyTorch's
/// `stride=2`) or one value per dim (`stride=(2, 1)`).
///
/// Values are signed so that every input PyTorch rejects can be represented
/// and rejected with the right error.
///
/// ```
/// use ferroconv::Dims;
/// assert_eq!(Dims::from(2).resolve("stride", 3).unwrap(), vec![2, 2, 2]);
/// assert_eq!(Dims::from([1, 2]).resolve("stride", 2).unwrap(), vec![1, 2]);
/// assert_eq!(Dims::from([1, 2]).resolve("stride", 3).unwrap_err().kind(), "param_length_mismatch");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dims {
    /// The same value in every spatial dim.
    All(i64),
    /// One value per spatial dim.
    Each(Vec<i64>),
}

impl Dims {
    /// The values for `spatial_dims` dims; `param` names the parameter in the error.
    pub fn resolve(&self, param: &'static str, spatial_dims: usize) -> Result<Vec<i64>> {
        match self {
            Dims::All(v) => Ok(vec![*v; spatial_dims]),
            Dims::Each(v) if v.len() == spatial_dims => Ok(v.clone()),
            Dims::Each(v) => Err(Error::ParamLengthMismatch { param, expected: spatial_dims, got: v.clone() }),
        }
    }
}

macro_rules! dims_from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Dims {
            fn from(v: $t) -> Self {
                Dims::All(saturating_i64(v))
            }
        }
        impl<const N: usize> From<[$t; N]> for Dims {
            fn from(v: [$t; N]) -> Self {
                Dims::Each(v.iter().map(|&x| saturating_i64(x)).collect())
            }
        }
        impl From<&[$t]> for Dims {
            fn from(v: &[$t]) -> Self {
                Dims::Each(v.iter().map(|&x| saturating_i64(x)).collect())
            }
        }
        impl From<Vec<$t>> for Dims {
            fn from(v: Vec<$t>) -> Self {
                Dims::from(v.as_slice())
            }
        }
    )*};
}
dims_from_int!(i32, i64, u32, usize);

/// Converts an integer to i64, saturating: a value too large for i64 is absurd
/// anyway and is then rejected as an overflow by validation.
fn saturating_i64<T: TryInto<i64> + Copy>(v: T) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

/// Padding of a convolution: explicit amounts, or PyTorch's `"same"` / `"valid"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Padding {
    /// The same amount on both sides of each dim.
    Explicit(Dims),
    /// Output size equal to input size (stride 1 only); an odd total puts the extra element at the end.
    Same,
    /// No padding.
    Valid,
}

impl Default for Padding {
    fn default() -> Self {
        Padding::Explicit(Dims::All(0))
    }
}

/// How a convolution fills its padding (`nn.ConvNd`'s `padding_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum PaddingMode {
    /// Zeros.
    #[default]
    Zeros,
    /// Mirror without repeating the edge: `x[-1] = x[1]`.
    Reflect,
    /// Repeat the edge value.
    Replicate,
    /// Wrap around.
    Circular,
}

impl PaddingMode {
    /// PyTorch's spelling: `"zeros"`, `"reflect"`, `"replicate"` or `"circular"`.
    pub fn name(self) -> &'static str {
        match self {
            PaddingMode::Zeros => "zeros",
            PaddingMode::Reflect => "reflect",
            PaddingMode::Replicate => "replicate",
            PaddingMode::Circular => "circular",
        }
    }

    /// The source index of padded position `pos` (which may lie outside
    /// `[0, size)`), or `None` where the padding is zero.
    ///
    /// Valid for `pos` in `[-size, 2 * size)` (validation guarantees that range
    /// for reflect and circular; replicate clamps any position).
    ///
    /// ```
    /// use ferroconv::PaddingMode;
    /// assert_eq!(PaddingMode::Reflect.source_index(-1, 4), Some(1));
    /// assert_eq!(PaddingMode::Replicate.source_index(9, 4), Some(3));
    /// assert_eq!(PaddingMode::Circular.source_index(-1, 4), Some(3));
    /// assert_eq!(PaddingMode::Zeros.source_index(-1, 4), None);
    /// ```
    pub fn source_index(self, pos: i64, size: usize) -> Option<usize> {
        let n = size as i64;
        if (0..n).contains(&pos) {
            return Some(pos as usize);
        }
        let src = match self {
            PaddingMode::Zeros => return None,
            PaddingMode::Reflect if pos < 0 => -pos,
            PaddingMode::Reflect => 2 * (n - 1) - pos,
            PaddingMode::Replicate => pos.clamp(0, n - 1),
            PaddingMode::Circular => pos.rem_euclid(n),
        };
        Some(src as usize)
    }
}

impl std::str::FromStr for PaddingMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        [PaddingMode::Zeros, PaddingMode::Reflect, PaddingMode::Replicate, PaddingMode::Circular]
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| Error::InvalidArgument {
                what: "padding_mode",
                detail: format!("unknown mode {s:?} (zeros, reflect, replicate, circular)"),
            })
    }
}

/// Options of `F.convNd` / `nn.ConvNd`: stride, padding, dilation, groups, padding mode.
///
/// ```
/// use ferroconv::{ConvOptions, PaddingMode};
/// let opts = ConvOptions::new().stride(2).padding([1, 0]).groups(4).padding_mode(PaddingMode::Reflect);
/// assert_eq!(opts.groups, 4);
/// let same = ConvOptions::new().same().dilation(2);
/// # let _ = (opts, same);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvOptions {
    /// Step between output positions, per spatial dim.
    pub stride: Dims,
    /// Padding: explicit amounts, `"same"` or `"valid"`.
    pub padding: Padding,
    /// Spacing between kernel taps, per spatial dim.
    pub dilation: Dims,
    /// Number of channel groups (both channel counts must divide by it).
    pub groups: i64,
    /// How the padding is filled.
    pub padding_mode: PaddingMode,
}

impl Default for ConvOptions {
    fn default() -> Self {
        ConvOptions {
            stride: Dims::All(1),
            padding: Padding::default(),
            dilation: Dims::All(1),
            groups: 1,
            padding_mode: PaddingMode::Zeros,
        }
    }
}

impl ConvOptions {
    /// Stride 1, padding 0, dilation 1, groups 1, zeros padding.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the stride.
    pub fn stride(mut self, stride: impl Into<Dims>) -> Self {
        self.stride = stride.into();
        self
    }
    /// Sets an explicit, symmetric padding.
    pub fn padding(mut self, padding: impl Into<Dims>) -> Self {
        self.padding = Padding::Explicit(padding.into());
        self
    }
    /// PyTorch's `padding="same"`.
    pub fn same(mut self) -> Self {
        self.padding = Padding::Same;
        self
    }
    /// PyTorch's `padding="valid"`.
    pub fn valid(mut self) -> Self {
        self.padding = Padding::Valid;
        self
    }
    /// Sets the dilation.
    pub fn dilation(mut self, dilation: impl Into<Dims>) -> Self {
        self.dilation = dilation.into();
        self
    }
    /// Sets the number of groups.
    pub fn groups(mut self, groups: i64) -> Self {
        self.groups = groups;
        self
    }
    /// Sets the padding mode.
    pub fn padding_mode(mut self, mode: PaddingMode) -> Self {
        self.padding_mode = mode;
        self
    }
}

/// Options of `F.conv_transposeNd` / `nn.ConvTransposeNd`, including the
/// forward's `output_size`.
///
/// ```
/// use ferroconv::ConvTransposeOptions;
/// let opts = ConvTransposeOptions::new().stride(2).padding(1).output_padding(1);
/// let sized = ConvTransposeOptions::new().stride(2).padding(1).output_size([32, 32]);
/// # let _ = (opts, sized);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvTransposeOptions {
    /// Step between output positions, per spatial dim.
    pub stride: Dims,
    /// Only [`Padding::Explicit`] is valid; the strings are rejected as PyTorch does.
    pub padding: Padding,
    /// Extra size added at the end of each output dim (below the stride or the dilation).
    pub output_padding: Dims,
    /// When set, `output_padding` is ignored and derived from this size.
    pub output_size: Option<Dims>,
    /// Spacing between kernel taps, per spatial dim.
    pub dilation: Dims,
    /// Number of channel groups (both channel counts must divide by it).
    pub groups: i64,
}

impl Default for ConvTransposeOptions {
    fn default() -> Self {
        ConvTransposeOptions {
            stride: Dims::All(1),
            padding: Padding::default(),
            output_padding: Dims::All(0),
            output_size: None,
            dilation: Dims::All(1),
            groups: 1,
        }
    }
}

impl ConvTransposeOptions {
    /// Stride 1, padding 0, output padding 0, dilation 1, groups 1.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the stride.
    pub fn stride(mut self, stride: impl Into<Dims>) -> Self {
        self.stride = stride.into();
        self
    }
    /// Sets the (symmetric) padding.
    pub fn padding(mut self, padding: impl Into<Dims>) -> Self {
        self.padding = Padding::Explicit(padding.into());
        self
    }
    /// Sets the extra size added at the end of each output dim.
    pub fn output_padding(mut self, output_padding: impl Into<Dims>) -> Self {
        self.output_padding = output_padding.into();
        self
    }
    /// Asks for this output size (spatial dims only), as `forward(x, output_size)` does.
    pub fn output_size(mut self, output_size: impl Into<Dims>) -> Self {
        self.output_size = Some(output_size.into());
        self
    }
    /// Sets the dilation.
    pub fn dilation(mut self, dilation: impl Into<Dims>) -> Self {
        self.dilation = dilation.into();
        self
    }
    /// Sets the number of groups.
    pub fn groups(mut self, groups: i64) -> Self {
        self.groups = groups;
        self
    }
}

/// Which op a geometry was validated for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// `F.convNd`.
    Conv,
    /// `F.conv_transposeNd`.
    ConvTranspose,
}

impl OpKind {
    /// `"conv"` or `"conv_transpose"`, as the fixtures spell it.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Conv => "conv",
            OpKind::ConvTranspose => "conv_transpose",
        }
    }
}

/// A validated convolution problem: every size checked and resolved.
///
/// All fields describe the correlation `y = x ⋆ w` (see the module docs); for
/// [`OpKind::ConvTranspose`] the op maps `y` to `x`. Spatial arrays are lifted
/// to three dims with leading unit dims.
///
/// ```
/// use ferroconv::{ConvGeometry, ConvTransposeOptions};
/// // The article's trap: ConvTranspose2d(16, 3, 3, stride=2, padding=1) on 16x16 gives 31x31.
/// let g = ConvGeometry::conv_transpose(2, &[1, 16, 16, 16], &[16, 3, 3, 3], Some(&[3]),
///     &ConvTransposeOptions::new().stride(2).padding(1)).unwrap();
/// assert_eq!(g.op_output_shape(), vec![1, 3, 31, 31]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConvGeometry {
    /// The op this geometry was validated for.
    pub op: OpKind,
    /// Spatial dims as the caller sees them (1, 2 or 3).
    pub spatial_dims: usize,
    /// Items in the batch (N).
    pub batch: usize,
    /// Number of channel groups (both channel counts must divide by it).
    pub groups: usize,
    /// Channels of `x` (the conv's input; the transposed conv's output).
    pub in_channels: usize,
    /// Channels of `y` (the conv's output; the transposed conv's input).
    pub out_channels: usize,
    /// Spatial size of `x` (unpadded).
    pub in_size: [usize; 3],
    /// Spatial size of `y`.
    pub out_size: [usize; 3],
    /// Kernel taps per spatial dim.
    pub kernel_size: [usize; 3],
    /// Step between output positions, per spatial dim.
    pub stride: [usize; 3],
    /// Spacing between kernel taps, per spatial dim.
    pub dilation: [usize; 3],
    /// Padding before the start of `x` in each dim: `y[o]` reads `x[o*stride + t*dilation - padding_lo]`.
    pub padding_lo: [usize; 3],
    /// Padding after the end of `x`, as given (for a transposed conv, taps past
    /// the end of `x` simply fall outside it: only bounds matter there).
    pub padding_hi: [usize; 3],
    /// How padded positions of `x` are filled (always zeros for a transposed conv).
    pub padding_mode: PaddingMode,
    /// Whether the op adds a bias.
    pub has_bias: bool,
}

/// A validated `i64` turned into a size.
pub(crate) fn to_usize(what: &'static str, v: i64) -> Result<usize> {
    usize::try_from(v).map_err(|_| Error::overflow(what, format!("{v} does not fit a size")))
}

pub(crate) fn to_usizes(what: &'static str, v: &[i64]) -> Result<Vec<usize>> {
    v.iter().map(|&x| to_usize(what, x)).collect()
}

/// Lifts `values` (one per spatial dim) to three dims, filling leading dims with `fill`.
pub(crate) fn lift(values: &[usize], fill: usize) -> [usize; 3] {
    let mut out = [fill; 3];
    out[MAX_SPATIAL_DIMS - values.len()..].copy_from_slice(values);
    out
}

/// The checks shared by both ops, in PyTorch's order (rules 1-7 of the fixtures README).
struct Common {
    stride: Vec<i64>,
    dilation: Vec<i64>,
}

fn check_ranks(spatial_dims: usize, input: &[usize], weight: &[usize]) -> Result<()> {
    if !(1..=MAX_SPATIAL_DIMS).contains(&spatial_dims) {
        return Err(Error::InvalidArgument {
            what: "spatial_dims",
            detail: format!("must be 1, 2 or 3, got {spatial_dims}"),
        });
    }
    if input.len() != spatial_dims + 2 {
        return Err(Error::BadInputRank { expected: spatial_dims + 2, spatial_dims, shape: input.to_vec() });
    }
    if weight.len() != spatial_dims + 2 {
        return Err(Error::WeightRankMismatch { expected: spatial_dims + 2, shape: weight.to_vec() });
    }
    Ok(())
}

pub(crate) fn check_positive(values: &[i64], err: impl FnOnce(Vec<i64>) -> Error) -> Result<()> {
    if values.iter().any(|&v| v <= 0) { Err(err(values.to_vec())) } else { Ok(()) }
}

pub(crate) fn check_non_negative(values: &[i64], err: impl FnOnce(Vec<i64>) -> Error) -> Result<()> {
    if values.iter().any(|&v| v < 0) { Err(err(values.to_vec())) } else { Ok(()) }
}

fn check_kernel_and_input(input: &[usize], weight: &[usize]) -> Result<()> {
    if weight[2..].contains(&0) {
        return Err(Error::InvalidArgument {
            what: "weight",
            detail: format!("every kernel size must be positive, got shape {weight:?}"),
        });
    }
    // Bounding both by i64::MAX also keeps the 128-bit size arithmetic below from overflowing.
    check_index_range("input", input)?;
    check_index_range("weight", weight)
}

/// Every index a backend forms along a tensor of `shape` must fit in `i64`
/// (the kernels' index type). Zeros count as ones: a tensor left empty by a
/// zero batch or channel count still has its other extents multiplied (a
/// plane's volume, say).
fn check_index_range(what: &'static str, shape: &[usize]) -> Result<()> {
    let extents: Vec<usize> = shape.iter().map(|&d| d.max(1)).collect();
    let n = checked_product(what, &extents)?;
    if n > i64::MAX as usize {
        return Err(Error::overflow(what, format!("shape {shape:?} exceeds the 64-bit index range")));
    }
    Ok(())
}

fn check_bias(bias: Option<&[usize]>, out_channels: usize) -> Result<()> {
    match bias {
        Some(shape) if shape != [out_channels] => Err(Error::BiasShapeMismatch { out_channels, shape: shape.to_vec() }),
        _ => Ok(()),
    }
}

impl ConvGeometry {
    /// Validates `F.convNd(input, weight, bias, ...)` with `spatial_dims` = N.
    ///
    /// Shapes are the PyTorch shapes: `input [N, C_in, *in]`, `weight [C_out, C_in/groups, *k]`,
    /// `bias [C_out]` or `None`. Checks follow PyTorch's rules in PyTorch's order.
    pub fn conv(
        spatial_dims: usize,
        input: &[usize],
        weight: &[usize],
        bias: Option<&[usize]>,
        options: &ConvOptions,
    ) -> Result<Self> {
        check_ranks(spatial_dims, input, weight)?;
        let stride = options.stride.resolve("stride", spatial_dims)?;
        let explicit_padding = match &options.padding {
            Padding::Explicit(d) => Some(d.resolve("padding", spatial_dims)?),
            _ => None,
        };
        let dilation = options.dilation.resolve("dilation", spatial_dims)?;
        let common = Common { stride, dilation };
        check_positive(&common.stride, |stride| Error::NonPositiveStride { stride })?;
        if let Some(p) = &explicit_padding {
            check_non_negative(p, |padding| Error::NegativePadding { padding })?;
        }
        check_positive(&common.dilation, |dilation| Error::NonPositiveDilation { dilation })?;
        if options.groups <= 0 {
            return Err(Error::NonPositiveGroups { groups: options.groups });
        }
        let stride = to_usizes("stride", &common.stride)?;
        let dilation = to_usizes("dilation", &common.dilation)?;
        let groups = to_usize("groups", options.groups)?;
        if options.padding == Padding::Same && stride.iter().any(|&s| s != 1) {
            return Err(Error::SamePaddingWithStride { stride });
        }

        let (batch, in_channels) = (input[0], input[1]);
        let out_channels = weight[0];
        if !in_channels.is_multiple_of(groups) {
            return Err(Error::ChannelsNotDivisibleByGroups { what: "input channels", channels: in_channels, groups });
        }
        if !out_channels.is_multiple_of(groups) {
            return Err(Error::ChannelsNotDivisibleByGroups {
                what: "output channels (weight.shape[0])",
                channels: out_channels,
                groups,
            });
        }
        if weight[1].checked_mul(groups) != Some(in_channels) {
            return Err(Error::WeightShapeMismatch {
                weight: weight.to_vec(),
                in_channels,
                groups,
                rule: "weight.shape[1] * groups must equal the input channels",
            });
        }
        check_bias(bias, out_channels)?;
        let in_spatial = &input[2..];
        if in_spatial.contains(&0) {
            return Err(Error::EmptySpatialInput { shape: input.to_vec() });
        }
        check_kernel_and_input(input, weight)?;
        let kernel = &weight[2..];

        // Resolve padding per dim into (lo, hi).
        let mut pad_lo = vec![0usize; spatial_dims];
        let mut pad_hi = vec![0usize; spatial_dims];
        for d in 0..spatial_dims {
            let extent_minus_one = dilation[d]
                .checked_mul(kernel[d] - 1)
                .ok_or_else(|| Error::overflow("weight", "dilation * (kernel_size - 1)"))?;
            let (lo, hi) = match &options.padding {
                Padding::Valid => (0, 0),
                Padding::Same => (extent_minus_one / 2, extent_minus_one - extent_minus_one / 2),
                Padding::Explicit(_) => {
                    let p = to_usize("padding", explicit_padding.as_ref().map_or(0, |p| p[d]))?;
                    (p, p)
                }
            };
            pad_lo[d] = lo;
            pad_hi[d] = hi;
        }
        for d in 0..spatial_dims {
            let (lo, hi, n) = (pad_lo[d], pad_hi[d], in_spatial[d]);
            match options.padding_mode {
                PaddingMode::Reflect if lo >= n || hi >= n => {
                    return Err(Error::ReflectPaddingTooLarge { dim: d, pad_lo: lo, pad_hi: hi, size: n });
                }
                PaddingMode::Circular if lo > n || hi > n => {
                    return Err(Error::CircularPaddingTooLarge { dim: d, pad_lo: lo, pad_hi: hi, size: n });
                }
                _ => {}
            }
        }
        let mut out_spatial = vec![0usize; spatial_dims];
        for d in 0..spatial_dims {
            let padded = in_spatial[d]
                .checked_add(pad_lo[d])
                .and_then(|v| v.checked_add(pad_hi[d]))
                .ok_or_else(|| Error::overflow("padding", format!("input size plus padding in spatial dim {d}")))?;
            // The product was checked as extent_minus_one above; the + 1 can still overflow.
            let extent = (dilation[d] * (kernel[d] - 1))
                .checked_add(1)
                .ok_or_else(|| Error::overflow("weight", "dilation * (kernel_size - 1) + 1"))?;
            if extent > padded {
                return Err(Error::KernelLargerThanPaddedInput { dim: d, extent, padded });
            }
            out_spatial[d] = (padded - extent) / stride[d] + 1;
        }

        let geometry = ConvGeometry {
            op: OpKind::Conv,
            spatial_dims,
            batch,
            groups,
            in_channels,
            out_channels,
            in_size: lift(in_spatial, 1),
            out_size: lift(&out_spatial, 1),
            kernel_size: lift(kernel, 1),
            stride: lift(&stride, 1),
            dilation: lift(&dilation, 1),
            padding_lo: lift(&pad_lo, 0),
            padding_hi: lift(&pad_hi, 0),
            padding_mode: options.padding_mode,
            has_bias: bias.is_some(),
        };
        geometry.check_sizes()?;
        Ok(geometry)
    }

    /// Validates `F.conv_transposeNd(input, weight, bias, ...)` (with the
    /// `output_size` of `nn.ConvTransposeNd.forward` when the options hold one).
    ///
    /// Shapes: `input [N, C_in, *in]`, `weight [C_in, C_out/groups, *k]`, `bias [C_out]`.
    pub fn conv_transpose(
        spatial_dims: usize,
        input: &[usize],
        weight: &[usize],
        bias: Option<&[usize]>,
        options: &ConvTransposeOptions,
    ) -> Result<Self> {
        check_ranks(spatial_dims, input, weight)?;
        let stride = options.stride.resolve("stride", spatial_dims)?;
        let padding = match &options.padding {
            Padding::Explicit(d) => Some(d.resolve("padding", spatial_dims)?),
            _ => None,
        };
        let dilation = options.dilation.resolve("dilation", spatial_dims)?;
        let (output_padding, output_size) = match &options.output_size {
            Some(size) => (None, Some(size.resolve("output_size", spatial_dims)?)),
            None => (Some(options.output_padding.resolve("output_padding", spatial_dims)?), None),
        };
        check_positive(&stride, |stride| Error::NonPositiveStride { stride })?;
        if let Some(p) = &padding {
            check_non_negative(p, |padding| Error::NegativePadding { padding })?;
        }
        check_positive(&dilation, |dilation| Error::NonPositiveDilation { dilation })?;
        if options.groups <= 0 {
            return Err(Error::NonPositiveGroups { groups: options.groups });
        }
        if let Some(op) = &output_padding {
            check_non_negative(op, |output_padding| Error::NegativeOutputPadding { output_padding })?;
        }
        let padding = match (&options.padding, padding) {
            (_, Some(p)) => p,
            (Padding::Same, None) => return Err(Error::StringPaddingForTranspose { padding: "same" }),
            (_, None) => return Err(Error::StringPaddingForTranspose { padding: "valid" }),
        };
        let stride = to_usizes("stride", &stride)?;
        let dilation = to_usizes("dilation", &dilation)?;
        let padding = to_usizes("padding", &padding)?;
        let groups = to_usize("groups", options.groups)?;

        let (batch, op_in_channels) = (input[0], input[1]);
        if !weight[0].is_multiple_of(groups) {
            return Err(Error::ChannelsNotDivisibleByGroups { what: "weight.shape[0]", channels: weight[0], groups });
        }
        if weight[0] != op_in_channels {
            return Err(Error::WeightShapeMismatch {
                weight: weight.to_vec(),
                in_channels: op_in_channels,
                groups,
                rule: "weight.shape[0] must equal the input channels",
            });
        }
        let op_out_channels =
            weight[1].checked_mul(groups).ok_or_else(|| Error::overflow("weight", "weight.shape[1] * groups"))?;
        check_bias(bias, op_out_channels)?;
        let in_spatial = &input[2..];
        if in_spatial.contains(&0) {
            return Err(Error::EmptySpatialInput { shape: input.to_vec() });
        }
        check_kernel_and_input(input, weight)?;
        let kernel = &weight[2..];

        // min_size = (n-1)*s - 2p + d*(k-1) + 1, in i128 so no valid-range input overflows.
        let min_size: Vec<i128> = (0..spatial_dims)
            .map(|d| {
                (in_spatial[d] as i128 - 1) * stride[d] as i128 - 2 * padding[d] as i128
                    + dilation[d] as i128 * (kernel[d] as i128 - 1)
                    + 1
            })
            .collect();
        let effective_output_padding: Vec<i128> = match (&output_size, &output_padding) {
            (Some(size), _) => {
                for d in 0..spatial_dims {
                    let (lo, hi) = (min_size[d], min_size[d] + stride[d] as i128 - 1);
                    let requested = size[d] as i128;
                    if requested < lo || requested > hi {
                        return Err(Error::OutputSizeOutOfRange {
                            dim: d,
                            requested: size[d],
                            min: lo.clamp(i64::MIN as i128, i64::MAX as i128) as i64,
                            max: hi.clamp(i64::MIN as i128, i64::MAX as i128) as i64,
                        });
                    }
                }
                (0..spatial_dims).map(|d| size[d] as i128 - min_size[d]).collect()
            }
            (None, Some(op)) => {
                for d in 0..spatial_dims {
                    let op_d = to_usize("output_padding", op[d])?;
                    if op_d >= stride[d] && op_d >= dilation[d] {
                        return Err(Error::OutputPaddingTooLarge {
                            dim: d,
                            output_padding: op_d,
                            stride: stride[d],
                            dilation: dilation[d],
                        });
                    }
                }
                op.iter().map(|&v| v as i128).collect()
            }
            (None, None) => unreachable!("one of output_size and output_padding is always resolved"),
        };
        let mut out_spatial = vec![0usize; spatial_dims];
        for d in 0..spatial_dims {
            let size = min_size[d] + effective_output_padding[d];
            if size <= 0 {
                return Err(Error::NonPositiveOutputSize {
                    dim: d,
                    size: size.max(i64::MIN as i128) as i64,
                    input: in_spatial[d],
                    stride: stride[d],
                    padding: padding[d],
                    dilation: dilation[d],
                    kernel: kernel[d],
                    output_padding: effective_output_padding[d] as usize,
                });
            }
            out_spatial[d] = usize::try_from(size)
                .map_err(|_| Error::overflow("output", format!("spatial size {size} in dim {d}")))?;
        }

        let geometry = ConvGeometry {
            op: OpKind::ConvTranspose,
            spatial_dims,
            batch,
            groups,
            in_channels: op_out_channels,
            out_channels: op_in_channels,
            in_size: lift(&out_spatial, 1),
            out_size: lift(in_spatial, 1),
            kernel_size: lift(kernel, 1),
            stride: lift(&stride, 1),
            dilation: lift(&dilation, 1),
            padding_lo: lift(&padding, 0),
            padding_hi: lift(&padding, 0),
            padding_mode: PaddingMode::Zeros,
            has_bias: bias.is_some(),
        };
        geometry.check_sizes()?;
        Ok(geometry)
    }

    /// Every tensor and index a backend forms must fit in `i64` (the kernels' index type).
    fn check_sizes(&self) -> Result<()> {
        for (what, shape) in [
            ("input", self.op_input_shape()),
            ("output", self.op_output_shape()),
            ("weight", self.weight_shape()),
            ("padded input", self.padded_x_shape()),
        ] {
            check_index_range(what, &shape)?;
        }
        // The reduction length of one output element, and the im2col row count.
        checked_product("reduction", &[self.in_channels_per_group(), self.kernel_volume()])?;
        Ok(())
    }

    fn spatial(&self, a: &[usize; 3]) -> Vec<usize> {
        a[MAX_SPATIAL_DIMS - self.spatial_dims..].to_vec()
    }

    fn shape(&self, channels: usize, size: &[usize; 3]) -> Vec<usize> {
        let mut s = vec![self.batch, channels];
        s.extend(self.spatial(size));
        s
    }

    /// Shape of `x` (the conv's input, the transposed conv's output), at the caller's rank.
    pub fn x_shape(&self) -> Vec<usize> {
        self.shape(self.in_channels, &self.in_size)
    }

    /// Shape of `y` (the conv's output, the transposed conv's input), at the caller's rank.
    pub fn y_shape(&self) -> Vec<usize> {
        self.shape(self.out_channels, &self.out_size)
    }

    /// Shape of `x` after explicit padding, at the caller's rank.
    pub fn padded_x_shape(&self) -> Vec<usize> {
        let padded: [usize; 3] = std::array::from_fn(|d| {
            self.in_size[d].saturating_add(self.padding_lo[d]).saturating_add(self.padding_hi[d])
        });
        self.shape(self.in_channels, &padded)
    }

    /// Shape of the weight, in PyTorch's layout for this op (the same array for both ops).
    pub fn weight_shape(&self) -> Vec<usize> {
        let mut s = vec![self.out_channels, self.in_channels_per_group()];
        s.extend(self.spatial(&self.kernel_size));
        s
    }

    /// Shape of the op's input tensor.
    pub fn op_input_shape(&self) -> Vec<usize> {
        match self.op {
            OpKind::Conv => self.x_shape(),
            OpKind::ConvTranspose => self.y_shape(),
        }
    }

    /// Shape of the op's output tensor.
    pub fn op_output_shape(&self) -> Vec<usize> {
        match self.op {
            OpKind::Conv => self.y_shape(),
            OpKind::ConvTranspose => self.x_shape(),
        }
    }

    /// Channels of the op's output (the length of its bias).
    pub fn op_out_channels(&self) -> usize {
        match self.op {
            OpKind::Conv => self.out_channels,
            OpKind::ConvTranspose => self.in_channels,
        }
    }

    /// `in_channels / groups`.
    pub fn in_channels_per_group(&self) -> usize {
        self.in_channels / self.groups
    }

    /// `out_channels / groups`.
    pub fn out_channels_per_group(&self) -> usize {
        self.out_channels / self.groups
    }

    /// Number of kernel taps, `prod(kernel_size)`.
    pub fn kernel_volume(&self) -> usize {
        self.kernel_size.iter().product()
    }

    /// Elements in one spatial plane of `x`.
    pub fn in_volume(&self) -> usize {
        self.in_size.iter().product()
    }

    /// Elements in one spatial plane of `y`.
    pub fn out_volume(&self) -> usize {
        self.out_size.iter().product()
    }

    /// True when padding is zeros (or absent), so backends can read `x` in place.
    pub fn zero_padded(&self) -> bool {
        self.padding_mode == PaddingMode::Zeros || (self.padding_lo == [0; 3] && self.padding_hi == [0; 3])
    }

    /// The geometry of the zero-padded convolution over `x` explicitly padded by
    /// `padding_mode`: what a backend runs after materialising the padding.
    pub fn with_materialised_padding(&self) -> ConvGeometry {
        let mut g = self.clone();
        g.in_size = std::array::from_fn(|d| self.in_size[d] + self.padding_lo[d] + self.padding_hi[d]);
        g.padding_lo = [0; 3];
        g.padding_hi = [0; 3];
        g.padding_mode = PaddingMode::Zeros;
        g
    }

    /// The same problem with no parameter larger than it has to be: a dim with
    /// one output position has no stride (stride 1), and a dim with a one-tap
    /// kernel no dilation (dilation 1). Every index `o*stride + t*dilation - padding_lo`
    /// a kernel forms is unchanged, but an absurd stride or dilation that PyTorch
    /// accepts can no longer overflow a backend's arithmetic.
    ///
    /// ```
    /// use ferroconv::{ConvGeometry, ConvOptions};
    /// let g = ConvGeometry::conv(1, &[1, 1, 3], &[1, 1, 1], None, &ConvOptions::new().stride(i64::MAX)).unwrap();
    /// assert_eq!(g.out_size, [1, 1, 1]);
    /// assert_eq!(g.canonical().stride, [1, 1, 1]);
    /// ```
    pub fn canonical(&self) -> ConvGeometry {
        let mut g = self.clone();
        for d in 0..MAX_SPATIAL_DIMS {
            if g.out_size[d] == 1 {
                g.stride[d] = 1;
            }
            if g.kernel_size[d] == 1 {
                g.dilation[d] = 1;
            }
        }
        g
    }

    /// Multiply-adds of the forward op: `N * C_out * prod(out) * (C_in/groups) * prod(k)`
    /// (the same count for a transposed conv, seen from its weight).
    pub fn macs(&self) -> u128 {
        self.batch as u128
            * self.out_channels as u128
            * self.out_volume() as u128
            * self.in_channels_per_group() as u128
            * self.kernel_volume() as u128
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv2(x: &[usize], w: &[usize], o: ConvOptions) -> Result<ConvGeometry> {
        ConvGeometry::conv(2, x, w, None, &o)
    }

    #[test]
    fn same_padding_puts_the_extra_element_at_the_end() {
        let g = conv2(&[1, 1, 5, 5], &[1, 1, 4, 2], ConvOptions::new().same()).unwrap();
        assert_eq!(g.padding_lo[1..], [1, 0]);
        assert_eq!(g.padding_hi[1..], [2, 1]);
        assert_eq!(g.y_shape(), vec![1, 1, 5, 5]);
    }

    #[test]
    fn transposed_output_padding_below_dilation_is_valid() {
        let o = ConvTransposeOptions::new().stride(1).dilation(2).output_padding(1);
        let g = ConvGeometry::conv_transpose(1, &[1, 1, 4], &[1, 1, 3], None, &o).unwrap();
        assert_eq!(g.op_output_shape(), vec![1, 1, 9]);
    }

    #[test]
    fn rank_one_lifts_to_three_dims() {
        let g = ConvGeometry::conv(1, &[2, 3, 10], &[4, 3, 3], Some(&[4]), &ConvOptions::new().stride(2)).unwrap();
        assert_eq!(g.in_size, [1, 1, 10]);
        assert_eq!(g.out_size, [1, 1, 4]);
        assert_eq!(g.kernel_size, [1, 1, 3]);
    }

    #[test]
    fn absurd_sizes_are_overflow_errors() {
        let e = conv2(&[usize::MAX, 1, 4, 4], &[1, 1, 1, 1], ConvOptions::new()).unwrap_err();
        assert_eq!(e.kind(), "size_overflow");
        let e = conv2(&[1, 1, 4, 4], &[1, 1, 1, 1], ConvOptions::new().padding(i64::MAX)).unwrap_err();
        assert_eq!(e.kind(), "size_overflow");
    }
}
