//! [`KernelArgs`]: the one by-value parameter of every kernel, the twin of the
//! struct of the same name in `kernels/common.cuh`.

use crate::backend::Activation;
use crate::error::{Error, Result};
use crate::geometry::{ConvGeometry, PaddingMode};

/// The parameter every kernel takes by value (`kernels/common.cuh`).
///
/// Buffers are addresses: device addresses on a GPU, host addresses in the
/// emulator; 0 is a null pointer. The geometry is the correlation's, in
/// `i64` (the kernels' index type), spatial sizes lifted to three dims.
/// Which fields a kernel reads is written at the top of each kernel.
///
/// ```
/// use ferroconv::cuda::KernelArgs;
/// assert_eq!(std::mem::size_of::<KernelArgs>(), 312);
/// assert_eq!(KernelArgs::default().splits, 1);
/// ```
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelArgs {
    /// `x`: the large side of the correlation (or the tensor a reduction or padding reads).
    pub x: u64,
    /// `w`: the weight.
    pub w: u64,
    /// `y`: the strided side of the correlation.
    pub y: u64,
    /// The bias, or 0 for none.
    pub bias: u64,
    /// The buffer the kernel writes its result to.
    pub out: u64,
    /// Per-split partial sums (in the accumulator type) of a split reduction.
    pub partials: u64,
    /// `N`.
    pub batch: i64,
    /// Groups of channels.
    pub groups: i64,
    /// Channels of `x`.
    pub in_channels: i64,
    /// Channels of `y`.
    pub out_channels: i64,
    /// Spatial size of `x` (D, H, W).
    pub in_size: [i64; 3],
    /// Spatial size of `y`.
    pub out_size: [i64; 3],
    /// Spatial size of `w`.
    pub kernel_size: [i64; 3],
    /// `y[p]` reads `x[p·stride + t·dilation - padding_lo]`.
    pub stride: [i64; 3],
    /// Spacing of the kernel taps.
    pub dilation: [i64; 3],
    /// Padding before the start of `x` (zero for the correlations unless the mode is zeros).
    pub padding_lo: [i64; 3],
    /// Padding after the end of `x` (used by pad and fold_padding).
    pub padding_hi: [i64; 3],
    /// `FERRO_PADDING_*`: see [`padding_mode_code`].
    pub padding_mode: i64,
    /// `FERRO_ACTIVATION_*`: see [`activation_code`].
    pub activation: i64,
    /// Chunks of a split reduction; 1 means the kernel writes `out` itself.
    pub splits: i64,
    /// Reduction elements per chunk (the last chunk may be shorter).
    pub split_length: i64,
    /// Elements of a reduction's result: the stride between the partials of two chunks.
    pub length: i64,
    /// Unused; zero.
    pub spare: [i64; 3],
}

// The C struct is 6 pointers and 33 `long long`s, with no padding.
const _: () = assert!(std::mem::size_of::<KernelArgs>() == 6 * 8 + 33 * 8);
const _: () = assert!(std::mem::align_of::<KernelArgs>() == 8);

// SAFETY: `KernelArgs` is `#[repr(C)]`, made only of u64 / i64 fields (no
// padding, no pointers into Rust memory), and laid out exactly as the
// `KernelArgs` of kernels/common.cuh, which every kernel takes by value.
unsafe impl cudarc::driver::DeviceRepr for KernelArgs {}

impl Default for KernelArgs {
    /// Null buffers, an empty geometry with unit sizes, one split.
    fn default() -> Self {
        KernelArgs {
            x: 0,
            w: 0,
            y: 0,
            bias: 0,
            out: 0,
            partials: 0,
            batch: 0,
            groups: 1,
            in_channels: 0,
            out_channels: 0,
            in_size: [1; 3],
            out_size: [1; 3],
            kernel_size: [1; 3],
            stride: [1; 3],
            dilation: [1; 3],
            padding_lo: [0; 3],
            padding_hi: [0; 3],
            padding_mode: padding_mode_code(PaddingMode::Zeros),
            activation: activation_code(Activation::Identity),
            splits: 1,
            split_length: 0,
            length: 0,
            spare: [0; 3],
        }
    }
}

/// A size as the kernels' `long long`; validated geometries always fit.
pub(crate) fn to_i64(what: &'static str, v: usize) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::overflow(what, format!("{v} exceeds the kernels' 64-bit index range")))
}

pub(crate) fn to_i64s(what: &'static str, v: &[usize; 3]) -> Result<[i64; 3]> {
    Ok([to_i64(what, v[0])?, to_i64(what, v[1])?, to_i64(what, v[2])?])
}

impl KernelArgs {
    /// The geometry fields of `geometry`; buffers null, one split.
    pub fn for_geometry(geometry: &ConvGeometry) -> Result<Self> {
        let g = geometry;
        Ok(KernelArgs {
            batch: to_i64("batch", g.batch)?,
            groups: to_i64("groups", g.groups)?,
            in_channels: to_i64("in_channels", g.in_channels)?,
            out_channels: to_i64("out_channels", g.out_channels)?,
            in_size: to_i64s("in_size", &g.in_size)?,
            out_size: to_i64s("out_size", &g.out_size)?,
            kernel_size: to_i64s("kernel_size", &g.kernel_size)?,
            stride: to_i64s("stride", &g.stride)?,
            dilation: to_i64s("dilation", &g.dilation)?,
            padding_lo: to_i64s("padding", &g.padding_lo)?,
            padding_hi: to_i64s("padding", &g.padding_hi)?,
            padding_mode: padding_mode_code(g.padding_mode),
            ..KernelArgs::default()
        })
    }
}

/// The `FERRO_PADDING_*` code of a padding mode.
pub fn padding_mode_code(mode: PaddingMode) -> i64 {
    match mode {
        PaddingMode::Zeros => 0,
        PaddingMode::Reflect => 1,
        PaddingMode::Replicate => 2,
        PaddingMode::Circular => 3,
    }
}

/// The `FERRO_ACTIVATION_*` code of an activation.
pub fn activation_code(activation: Activation) -> i64 {
    match activation {
        Activation::Identity => 0,
        Activation::Relu => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    /// The fields of common.cuh's `KernelArgs`, in order, with the offsets a C compiler gives them
    /// (every field is 8 bytes or an array of them, so there is no padding).
    fn c_fields(source: &str) -> Vec<(String, usize)> {
        let body = source.split("struct KernelArgs {").nth(1).and_then(|rest| rest.split("};").next());
        let mut offset = 0;
        let mut fields = Vec::new();
        for declaration in body.expect("common.cuh declares struct KernelArgs").lines() {
            let Some(declaration) = declaration.split(';').next().filter(|d| d.contains(' ')) else { continue };
            let name = declaration.rsplit([' ', '*']).next().unwrap_or_default();
            let (name, count) = match name.split_once('[') {
                Some((name, count)) => (name, count.trim_end_matches(']').parse::<usize>().unwrap()),
                None => (name, 1),
            };
            fields.push((name.to_string(), offset));
            offset += 8 * count;
        }
        fields
    }

    #[test]
    fn layout_matches_common_cuh() {
        macro_rules! offsets {
            ($($field:ident),*) => { vec![$((stringify!($field).to_string(), offset_of!(KernelArgs, $field))),*] };
        }
        let rust = offsets!(
            x,
            w,
            y,
            bias,
            out,
            partials,
            batch,
            groups,
            in_channels,
            out_channels,
            in_size,
            out_size,
            kernel_size,
            stride,
            dilation,
            padding_lo,
            padding_hi,
            padding_mode,
            activation,
            splits,
            split_length,
            length,
            spare
        );
        assert_eq!(c_fields(include_str!("../../kernels/common.cuh")), rust);
        assert_eq!(std::mem::size_of::<KernelArgs>(), 312);
    }

    #[test]
    fn codes_match_common_cuh() {
        let source = include_str!("../../kernels/common.cuh");
        for (name, code) in [
            ("FERRO_PADDING_ZEROS", padding_mode_code(PaddingMode::Zeros)),
            ("FERRO_PADDING_REFLECT", padding_mode_code(PaddingMode::Reflect)),
            ("FERRO_PADDING_REPLICATE", padding_mode_code(PaddingMode::Replicate)),
            ("FERRO_PADDING_CIRCULAR", padding_mode_code(PaddingMode::Circular)),
            ("FERRO_ACTIVATION_IDENTITY", activation_code(Activation::Identity)),
            ("FERRO_ACTIVATION_RELU", activation_code(Activation::Relu)),
        ] {
            assert!(source.contains(&format!("#define {name} {code}\n")), "{name} is not {code} in common.cuh");
        }
    }
}
