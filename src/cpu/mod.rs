//! The CPU backend: rayon over disjoint output slices, so every element is
//! computed by one task in a fixed order and results are bitwise identical for
//! any number of threads.
//!
//! Algorithms (see [`select_algorithm`]): implicit GEMM with SIMD micro-kernels
//! (`gemm/`; for bf16 on AVX-512 BF16, on channel pairs: `pairs.rs`),
//! Winograd's F(2, 3) on the same micro-kernels for wide 3×3 layers
//! (`winograd/`, the weight gradient in `winograd/weight.rs`), direct loops vectorised along rows for thin groups
//! (`sliding.rs`), and the plain direct loops (`direct.rs`), the reference.
//! The forward correlation and each stride phase of its adjoint share one
//! description (`pass.rs`), so conv_transpose runs as stride-1 correlations
//! with no scratch the size of its output.

mod direct;
mod gemm;
mod isa;
mod keep;
mod kernels;
mod padding;
mod pairs;
mod pass;
mod sliding;
#[cfg(test)]
mod tests;
mod threads;
mod winograd;

pub use isa::CpuIsa;

use crate::backend::{Activation, Backend, ConvPrimitives};
use crate::element::{DType, Element};
use crate::error::{Result, try_filled_vec};
use crate::geometry::ConvGeometry;
use kernels::{Kernels, kernels};
use pass::Pass;

/// The CPU backend. Runs on rayon's global pool, or on a pool of its own.
///
/// It keeps its ops' scratch buffers (im2col panels, tiles, Winograd's
/// transformed tiles) for the next op rather than allocating and zeroing them
/// on every call; at most a few sets of them, freed with the backend.
///
/// ```
/// use ferroconv::{Activation, Conv, ConvGeometry, ConvOptions, CpuBackend};
/// # fn main() -> ferroconv::Result<()> {
/// let cpu = CpuBackend::with_threads(2)?;
/// let g = ConvGeometry::conv(1, &[1, 1, 4], &[1, 1, 2], None, &ConvOptions::new())?;
/// let mut y = vec![0f32; 3];
/// Conv::forward(&cpu, &g, &vec![1., 2., 3., 4.], &vec![1., 1.], None, Activation::Identity, &mut y)?;
/// assert_eq!(y, vec![3., 5., 7.]);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct CpuBackend {
    pool: Option<rayon::ThreadPool>,
    algorithm: CpuAlgorithm,
    isa: IsaChoice,
    /// Ops with fewer multiply-adds run on the calling thread (see `threads.rs`).
    inline_macs: u64,
    /// Scratch buffers kept from op to op (see `keep.rs`).
    keep: keep::Keep,
}

/// Which kernels a backend runs.
#[derive(Debug, Clone, Copy)]
enum IsaChoice {
    /// The widest instruction set this CPU has ([`CpuIsa::detect`]).
    Detected,
    /// One the caller chose ([`CpuBackend::with_isa`]).
    Chosen(CpuIsa),
    /// Tests only: the shapes of one, in plain Rust (`kernels_shaped_as`).
    #[cfg(test)]
    ShapedAs(CpuIsa),
}

impl Default for CpuBackend {
    fn default() -> Self {
        CpuBackend::new()
    }
}

/// Which CPU algorithm computes the primitives.
///
/// `Auto` picks per problem (see [`select_algorithm`]); the others force one, for
/// benchmarks and for tests that check every algorithm against the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum CpuAlgorithm {
    /// Chosen per problem.
    #[default]
    Auto,
    /// Direct loops over kernel taps, in scalar code: the reference.
    Direct,
    /// Implicit GEMM with a register-blocked SIMD micro-kernel: the im2col
    /// matrix is read in place from a zero-bordered, stride-phase-split copy
    /// of the input (or, for tiny planes and 1×1 convs, packed from NCHW in
    /// cache-sized panels); conv_transpose as one stride-1 correlation per
    /// stride phase; the weight gradient as `dY · X̂ᵀ`.
    ImplicitGemm,
    /// Direct loops vectorised along the innermost spatial dim, one output
    /// plane per task: for depthwise and other thin-group convs.
    SimdDirect,
    /// Winograd's F(2, 3) for kernels with 3 taps at stride 1 (any dilation)
    /// or 1 tap along each axis: 2.25× fewer multiplies than direct for 3×3,
    /// as one GEMM per transform point on the implicit GEMM's micro-kernels.
    /// It runs the correlation, the adjoint where every stride is 1 (as the
    /// correlation with the kernel flipped) and the weight gradient (the
    /// transforms read backwards: one GEMM per point reducing over tiles).
    /// Other problems run [`ImplicitGemm`](CpuAlgorithm::ImplicitGemm), as
    /// does an op with an output that is not finite (the transforms may turn
    /// ∞ − ∞ into NaN where the direct sum gives ∞).
    Winograd,
    /// The adjoint (conv_transpose, conv's input gradient) as one GEMM of the
    /// weights as they lie by `y`, `Z = Wᵀ·Y`, whose rows (an `x` channel at
    /// one tap) are then added into `x` at the positions the tap reaches
    /// (col2im): no packed copy of the weights, for small planes, where
    /// packing them costs as much as the product (f16 and bf16 weights are
    /// widened once, in one parallel pass). It runs the adjoint of ops whose
    /// `taps × y plane` is at most 2^20; other problems run
    /// [`ImplicitGemm`](CpuAlgorithm::ImplicitGemm).
    GemmCol2im,
}

impl CpuAlgorithm {
    /// Every algorithm that can be forced.
    pub const ALL: &'static [CpuAlgorithm] = &[
        CpuAlgorithm::Direct,
        CpuAlgorithm::ImplicitGemm,
        CpuAlgorithm::SimdDirect,
        CpuAlgorithm::Winograd,
        CpuAlgorithm::GemmCol2im,
    ];

    /// A short name for tables and benchmark ids.
    pub fn name(self) -> &'static str {
        match self {
            CpuAlgorithm::Auto => "auto",
            CpuAlgorithm::Direct => "direct",
            CpuAlgorithm::ImplicitGemm => "implicit_gemm",
            CpuAlgorithm::SimdDirect => "simd_direct",
            CpuAlgorithm::Winograd => "winograd",
            CpuAlgorithm::GemmCol2im => "gemm_col2im",
        }
    }
}

/// Output channels per group at or below which [`select_algorithm`] picks the direct SIMD path.
const THIN_GROUP: usize = 8;
/// Input and output channels per group from which [`select_algorithm_for`] picks Winograd.
const WINOGRAD_CHANNELS: usize = 32;
/// Positions of `y` up to which [`select_algorithm_for`] runs the adjoint as a GEMM and col2im.
const COL2IM_COLUMNS: usize = 1024;

/// The algorithm [`CpuAlgorithm::Auto`] runs for the forward pass of
/// `geometry`'s op in `dtype` (see [`select_algorithm_for`] for each primitive).
///
/// ```
/// use ferroconv::{ConvGeometry, ConvOptions, CpuAlgorithm, DType};
/// use ferroconv::cpu::select_algorithm;
/// let depthwise = ConvGeometry::conv(2, &[1, 8, 9, 9], &[8, 1, 3, 3], None, &ConvOptions::new().groups(8)).unwrap();
/// assert_eq!(select_algorithm(&depthwise, DType::F32), CpuAlgorithm::SimdDirect);
/// let dense = ConvGeometry::conv(2, &[1, 8, 9, 9], &[16, 8, 3, 3], None, &ConvOptions::new()).unwrap();
/// assert_eq!(select_algorithm(&dense, DType::BF16), CpuAlgorithm::ImplicitGemm);
/// ```
pub fn select_algorithm(geometry: &ConvGeometry, dtype: DType) -> CpuAlgorithm {
    let forward = match geometry.op {
        crate::geometry::OpKind::Conv => Primitive::Correlate,
        crate::geometry::OpKind::ConvTranspose => Primitive::CorrelateAdjoint,
    };
    select_algorithm_for(geometry, forward, dtype)
}

/// The algorithm [`CpuAlgorithm::Auto`] runs for `primitive` of `geometry` in `dtype`.
///
/// The heuristic looks at the channels per group of the primitive's output:
/// `y` for [`Correlate`](Primitive::Correlate), `x` for
/// [`CorrelateAdjoint`](Primitive::CorrelateAdjoint), the rows of `dw` (`y`'s
/// channels) for [`CorrelateWeight`](Primitive::CorrelateWeight).
///
/// - [`SimdDirect`](CpuAlgorithm::SimdDirect) when there are at most 8 of them
///   (depthwise, channel multipliers, ResNeXt-style groups, a 3-channel image
///   gradient): the GEMM's register tile spans 6 (AVX2) to 12 (AVX-512)
///   output channels, so thinner groups waste most of it, and each im2col
///   element would feed only a handful of multiply-adds. The direct path lays
///   each input plane out once and sums every tap of a row chunk in
///   registers, one load per multiply-add.
/// - [`Winograd`](CpuAlgorithm::Winograd) for the correlation (and, at
///   stride 1, the adjoint: conv's input gradient; and the weight gradient)
///   when the kernel has 3 taps at stride 1 along one axis or more (and 1
///   tap along the others), both sides have at least 32 channels per group
///   and the correlation's output has at least 128 tiles: the GEMMs then
///   outweigh the transforms of inputs, outputs and weights, so 2.25× (3×3),
///   3.4× (3×3×3) or 1.5× (3) fewer multiply-adds pay. On 2 Zen 4 cores
///   (AVX-512), ResNet's 64- and 256-channel, U-Net's, the dilated, the 3-D
///   and the 1-D layers of the suite ran 0.74–0.93× the time of implicit GEMM
///   (forward; the input gradient 0.90–0.94×); with the weight gradient by
///   Winograd too, their whole backward passes took 0.75–0.85× the time
///   (the 3-D layer's 0.95–0.99×), while ResNet's 512-channel 7×7 layer (64
///   tiles) ran 1.06× slower. Not for bf16's correlation and adjoint, whose
///   implicit GEMM multiplies channel pairs at twice f32's rate on AVX-512
///   BF16; its weight gradient, widened to f32 on every path, runs Winograd
///   (backward 0.72–0.91× the time).
/// - [`GemmCol2im`](CpuAlgorithm::GemmCol2im) otherwise for the adjoint
///   where `y` holds at most 1024 positions (batch × plane): each
///   weight then meets few of them, and implicit GEMM's packing of the weights
///   (a read and a write of each, gathered from `x channels × taps` apart)
///   costs about as much as the product, where this GEMM reads them as they
///   lie. On 2 Zen 4 cores, DCGAN's transposed conv (4×4 planes) ran in 0.72×
///   implicit GEMM's time, ResNet's 512- and 256-channel input gradients
///   (7×7 and 14×14 planes) 0.85-0.93×; at 3136 positions (ResNet's 28×28
///   layer) the two were even, and U-Net's 64×64 transposed conv ran 1.3×
///   slower (its weights are few: packing them costs nothing). f16 too, its
///   weights widened once (DCGAN's layer: 0.64× the time); not bf16, whose
///   implicit GEMM on channel pairs ran that layer in 0.78× this GEMM's time
///   (AVX-512 BF16).
/// - [`ImplicitGemm`](CpuAlgorithm::ImplicitGemm) otherwise: the reduction is
///   `channels per group × prod(kernel)` long and each im2col element is
///   reused by every output channel of the group.
///
/// The element type does not change the choice: halves are widened to f32
/// while copied and run the f32 kernels, except bf16 on a CPU with AVX-512
/// BF16, whose implicit GEMM keeps bf16 and multiplies channel pairs with
/// `vdpbf16ps` (two multiply-adds per lane and instruction; see `pairs.rs`).
/// It is a parameter so that a kernel with other half arithmetic can weigh in.
///
/// ```
/// use ferroconv::{ConvGeometry, ConvOptions, CpuAlgorithm, DType};
/// use ferroconv::cpu::{Primitive, select_algorithm_for};
/// // ResNet's stem: 3 -> 64 channels. Its input gradient has 3 channels.
/// let stem = ConvGeometry::conv(2, &[1, 3, 32, 32], &[64, 3, 7, 7], None, &ConvOptions::new().stride(2)).unwrap();
/// assert_eq!(select_algorithm_for(&stem, Primitive::Correlate, DType::F32), CpuAlgorithm::ImplicitGemm);
/// assert_eq!(select_algorithm_for(&stem, Primitive::CorrelateAdjoint, DType::F32), CpuAlgorithm::SimdDirect);
/// ```
pub fn select_algorithm_for(geometry: &ConvGeometry, primitive: Primitive, dtype: DType) -> CpuAlgorithm {
    let output_channels_per_group = match primitive {
        Primitive::CorrelateAdjoint => geometry.in_channels_per_group(),
        Primitive::Correlate | Primitive::CorrelateWeight | Primitive::ChannelSums => geometry.out_channels_per_group(),
    };
    // bf16's forward and input gradient keep the implicit GEMM on channel pairs; its weight gradient widens to f32 either way.
    let winograd = (dtype != DType::BF16 || primitive == Primitive::CorrelateWeight)
        && geometry.in_channels_per_group().min(geometry.out_channels_per_group()) >= WINOGRAD_CHANNELS
        && winograd_geometry(geometry, primitive).is_some_and(|g| winograd::worthwhile(&g));
    let col2im = dtype != DType::BF16
        && col2im_applies(geometry, primitive)
        && geometry.batch * geometry.out_volume() <= COL2IM_COLUMNS;
    match output_channels_per_group {
        ..=THIN_GROUP => CpuAlgorithm::SimdDirect,
        _ if winograd => CpuAlgorithm::Winograd,
        _ if col2im => CpuAlgorithm::GemmCol2im,
        _ => CpuAlgorithm::ImplicitGemm,
    }
}

/// `g` as the backend runs it: [canonical](ConvGeometry::canonical), and
/// with a pointwise op's spatial dims merged into one. A 1×1 kernel at
/// stride 1 without padding maps each position to the same one, so the whole
/// volume is one row: a panel row is then one copy per column block, where a
/// 56-wide plane made it runs of 56, each with its bounds, tap and prefetch
/// work (ResNet's 1×1 layers).
fn simplified(g: &ConvGeometry) -> ConvGeometry {
    let mut g = g.canonical();
    let pointwise = g.kernel_size == [1; 3] && g.stride == [1; 3] && g.padding_lo == [0; 3] && g.padding_hi == [0; 3];
    if pointwise && g.in_size == g.out_size {
        let volume = g.in_volume();
        (g.in_size, g.out_size) = ([1, 1, volume], [1, 1, volume]);
    }
    g
}

/// Whether [`GemmCol2im`](CpuAlgorithm::GemmCol2im) runs `primitive` of `g`.
fn col2im_applies(g: &ConvGeometry, primitive: Primitive) -> bool {
    primitive == Primitive::CorrelateAdjoint && gemm::col2im::applicable(g)
}

/// The geometry of the correlation Winograd runs for `primitive`, if it can.
fn winograd_geometry(g: &ConvGeometry, primitive: Primitive) -> Option<std::borrow::Cow<'_, ConvGeometry>> {
    let correlation = match primitive {
        Primitive::Correlate => std::borrow::Cow::Borrowed(g),
        Primitive::CorrelateAdjoint => std::borrow::Cow::Owned(winograd::adjoint_geometry(g)?),
        Primitive::CorrelateWeight => std::borrow::Cow::Borrowed(g),
        Primitive::ChannelSums => return None,
    };
    winograd::applicable(&correlation).then_some(correlation)
}

/// A primitive of [`ConvPrimitives`], to ask [`CpuBackend::workspace_bytes`] about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Primitive {
    /// [`ConvPrimitives::correlate`]: conv forward, conv_transpose backward-data.
    Correlate,
    /// [`ConvPrimitives::correlate_adjoint`]: conv_transpose forward, conv backward-data.
    CorrelateAdjoint,
    /// [`ConvPrimitives::correlate_weight`]: the weight gradient of both ops.
    CorrelateWeight,
    /// [`ConvPrimitives::channel_sums`]: the bias gradient.
    ChannelSums,
}

impl CpuBackend {
    /// A backend on rayon's global pool (as many threads as cores, or `RAYON_NUM_THREADS`).
    pub fn new() -> Self {
        CpuBackend {
            pool: None,
            algorithm: CpuAlgorithm::Auto,
            isa: IsaChoice::Detected,
            inline_macs: threads::INLINE_MACS,
            keep: keep::Keep::new(),
        }
    }

    /// A backend with a pool of its own of `threads` threads.
    pub fn with_threads(threads: usize) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| {
            crate::Error::InvalidArgument { what: "threads", detail: format!("cannot start {threads} threads: {e}") }
        })?;
        Ok(CpuBackend { pool: Some(pool), ..CpuBackend::new() })
    }

    /// The same backend, running ops of fewer than `macs` multiply-adds
    /// ([`ConvGeometry::macs`]) on the calling thread instead of the pool,
    /// whose wake-up would cost more than they take. The default is 2^19
    /// (half a million); 0 sends every op to the pool.
    ///
    /// ```
    /// use ferroconv::CpuBackend;
    /// let always_parallel = CpuBackend::with_threads(2).unwrap().with_inline_limit(0);
    /// assert_eq!(always_parallel.inline_limit(), 0);
    /// ```
    pub fn with_inline_limit(mut self, macs: u64) -> Self {
        self.inline_macs = macs;
        self
    }

    /// Ops with fewer multiply-adds than this run on the calling thread.
    pub fn inline_limit(&self) -> u64 {
        self.inline_macs
    }

    /// The same backend, forced to use `algorithm`.
    pub fn with_algorithm(mut self, algorithm: CpuAlgorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// The algorithm this backend was asked to use.
    pub fn algorithm(&self) -> CpuAlgorithm {
        self.algorithm
    }

    /// The same backend, with its SIMD kernels for `isa` (an error when this CPU lacks it).
    ///
    /// ```
    /// use ferroconv::CpuBackend;
    /// use ferroconv::cpu::CpuIsa;
    /// let cpu = CpuBackend::new().with_isa(CpuIsa::Portable).unwrap();
    /// assert_eq!(cpu.isa(), CpuIsa::Portable);
    /// ```
    pub fn with_isa(mut self, isa: CpuIsa) -> Result<Self> {
        if !isa.is_supported() {
            return Err(crate::Error::InvalidArgument {
                what: "isa",
                detail: format!("this CPU cannot run {isa} kernels (it supports {:?})", CpuIsa::supported()),
            });
        }
        self.isa = IsaChoice::Chosen(isa);
        Ok(self)
    }

    /// Tests only: the same backend, running `isa`'s tile shapes and register
    /// widths in plain Rust, so that any CPU checks the tilings of all of them.
    #[cfg(test)]
    pub(crate) fn shaped_as(mut self, isa: CpuIsa) -> Self {
        self.isa = IsaChoice::ShapedAs(isa);
        self
    }

    /// The instruction set the SIMD kernels use.
    pub fn isa(&self) -> CpuIsa {
        match self.isa {
            IsaChoice::Detected => CpuIsa::detect(),
            IsaChoice::Chosen(isa) => isa,
            #[cfg(test)]
            IsaChoice::ShapedAs(isa) => isa,
        }
    }

    /// This backend's kernels for accumulator `A` (`None` where there are none).
    fn kernels<A: Copy + 'static>(&self) -> Option<Kernels<A>> {
        match self.isa {
            #[cfg(test)]
            IsaChoice::ShapedAs(isa) => kernels::kernels_shaped_as(isa),
            _ => kernels(self.isa()),
        }
    }

    /// The algorithm that computes the forward pass of `geometry` in `dtype` on
    /// this backend: the forced one, or [`select_algorithm`]'s choice.
    pub fn algorithm_for(&self, geometry: &ConvGeometry, dtype: DType) -> CpuAlgorithm {
        let forward = match geometry.op {
            crate::geometry::OpKind::Conv => Primitive::Correlate,
            crate::geometry::OpKind::ConvTranspose => Primitive::CorrelateAdjoint,
        };
        self.algorithm_for_primitive(geometry, forward, dtype)
    }

    /// The algorithm that computes `primitive` of `geometry` in `dtype` on this
    /// backend: the forced one, or [`select_algorithm_for`]'s choice, with
    /// [`Winograd`](CpuAlgorithm::Winograd) standing in for implicit GEMM
    /// only where it applies.
    ///
    /// ```
    /// use ferroconv::{ConvGeometry, ConvOptions, CpuAlgorithm, CpuBackend, DType};
    /// use ferroconv::cpu::Primitive;
    /// let cpu = CpuBackend::new().with_algorithm(CpuAlgorithm::Winograd);
    /// let g = ConvGeometry::conv(2, &[1, 8, 9, 9], &[8, 8, 3, 3], None, &ConvOptions::new()).unwrap();
    /// assert_eq!(cpu.algorithm_for_primitive(&g, Primitive::Correlate, DType::F32), CpuAlgorithm::Winograd);
    /// assert_eq!(cpu.algorithm_for_primitive(&g, Primitive::CorrelateWeight, DType::F32), CpuAlgorithm::Winograd);
    /// // At stride 2 no F(2, 3) applies.
    /// let strided = ConvGeometry::conv(2, &[1, 8, 9, 9], &[8, 8, 3, 3], None, &ConvOptions::new().stride(2)).unwrap();
    /// assert_eq!(cpu.algorithm_for_primitive(&strided, Primitive::Correlate, DType::F32), CpuAlgorithm::ImplicitGemm);
    /// ```
    pub fn algorithm_for_primitive(&self, geometry: &ConvGeometry, primitive: Primitive, dtype: DType) -> CpuAlgorithm {
        let chosen = match self.algorithm {
            CpuAlgorithm::Auto => select_algorithm_for(geometry, primitive, dtype),
            forced => forced,
        };
        match chosen {
            CpuAlgorithm::Winograd if winograd_geometry(geometry, primitive).is_none() => CpuAlgorithm::ImplicitGemm,
            CpuAlgorithm::GemmCol2im if !col2im_applies(geometry, primitive) => CpuAlgorithm::ImplicitGemm,
            other => other,
        }
    }

    /// Bytes of scratch memory `primitive` allocates for `geometry` in `dtype`
    /// (packed weights, per-task panels and accumulators, with as many tasks
    /// in flight as this backend has threads), beyond its inputs and outputs.
    /// Excludes the padded copy of the input that non-zero padding modes make.
    ///
    /// ```
    /// use ferroconv::{ConvGeometry, ConvOptions, CpuBackend, DType};
    /// use ferroconv::cpu::Primitive;
    /// let g = ConvGeometry::conv(2, &[4, 64, 56, 56], &[64, 64, 3, 3], None, &ConvOptions::new().padding(1)).unwrap();
    /// let bytes = CpuBackend::new().workspace_bytes(&g, Primitive::Correlate, DType::F32);
    /// assert!(bytes > 0 && bytes < 64 << 20);
    /// ```
    pub fn workspace_bytes(&self, geometry: &ConvGeometry, primitive: Primitive, dtype: DType) -> usize {
        match dtype {
            DType::F64 => self.workspace::<f64>(geometry, primitive, dtype),
            DType::F32 | DType::F16 | DType::BF16 => self.workspace::<f32>(geometry, primitive, dtype),
        }
    }

    fn workspace<A: Copy + 'static>(&self, g: &ConvGeometry, primitive: Primitive, dtype: DType) -> usize {
        let (threads, g) = (self.threads(), &simplified(g));
        let elements = match (self.algorithm_for_primitive(g, primitive, dtype), self.kernels::<A>()) {
            (_, _) if primitive == Primitive::ChannelSums => 0,
            (CpuAlgorithm::ImplicitGemm, Some(ks)) => {
                return match primitive {
                    Primitive::Correlate => gemm::workspace_bytes(&ks, &[Pass::forward(g)], dtype, threads),
                    Primitive::CorrelateAdjoint => gemm::workspace_bytes(&ks, &Pass::adjoint(g), dtype, threads),
                    _ => gemm::weight_workspace_bytes(&ks, &Pass::forward(g), threads),
                };
            }
            (CpuAlgorithm::Winograd, Some(ks)) => {
                let Some(correlation) = winograd_geometry(g, primitive) else { return 0 };
                return match primitive {
                    Primitive::CorrelateWeight => winograd::weight_workspace_bytes(&ks, &correlation, threads),
                    // The adjoint's flipped copy of the weights.
                    Primitive::CorrelateAdjoint => {
                        let flipped = g.weight_shape().iter().product::<usize>() * dtype.size_in_bytes();
                        winograd::workspace_bytes(&ks, &correlation, threads) + flipped
                    }
                    _ => winograd::workspace_bytes(&ks, &correlation, threads),
                };
            }
            (CpuAlgorithm::GemmCol2im, Some(ks)) => return gemm::col2im::workspace_bytes(&ks, g, dtype, threads),
            (CpuAlgorithm::SimdDirect, Some(ks)) => {
                return match primitive {
                    Primitive::Correlate => sliding::workspace_bytes(&ks, &[Pass::forward(g)], false, dtype, threads),
                    Primitive::CorrelateAdjoint => {
                        sliding::workspace_bytes(&ks, &Pass::adjoint(g), false, dtype, threads)
                    }
                    _ => sliding::workspace_bytes(&ks, &[Pass::forward(g)], true, dtype, threads),
                };
            }
            _ => match primitive {
                Primitive::Correlate => g.out_volume(),
                Primitive::CorrelateAdjoint => g.in_volume(),
                _ => g.in_channels_per_group() * g.kernel_volume(),
            },
        };
        threads * elements * std::mem::size_of::<A>()
    }

    /// The kernels to run `primitive` of `geometry` with, or `None` for the direct loops.
    fn plan<T: Element>(&self, g: &ConvGeometry, primitive: Primitive) -> (CpuAlgorithm, Option<Kernels<T::Accum>>) {
        // An empty batch or a side without channels leaves nothing to tile: the direct loops
        // write what there is (zeros or the bias) without the fast paths' layout arithmetic.
        if g.batch == 0 || g.in_channels == 0 || g.out_channels == 0 {
            return (CpuAlgorithm::Direct, None);
        }
        match self.algorithm_for_primitive(g, primitive, T::DTYPE) {
            CpuAlgorithm::Direct | CpuAlgorithm::Auto => (CpuAlgorithm::Direct, None),
            fast => match self.kernels::<T::Accum>() {
                Some(ks) => (fast, Some(ks)),
                None => (CpuAlgorithm::Direct, None),
            },
        }
    }

    /// The shared backend on the global pool.
    pub fn global() -> &'static CpuBackend {
        static GLOBAL: CpuBackend = CpuBackend {
            pool: None,
            algorithm: CpuAlgorithm::Auto,
            isa: IsaChoice::Detected,
            inline_macs: threads::INLINE_MACS,
            keep: keep::Keep::new(),
        };
        &GLOBAL
    }

    /// Number of threads ops run on.
    pub fn threads(&self) -> usize {
        self.pool.as_ref().map_or_else(rayon::current_num_threads, |p| p.current_num_threads())
    }

    /// Runs `f`, an op of `macs` multiply-adds (or of elements touched), on the pool or inline.
    fn install<R: Send>(&self, macs: u128, f: impl FnOnce() -> R + Send) -> R {
        if macs < u128::from(self.inline_macs) {
            return threads::inline(f);
        }
        match &self.pool {
            Some(pool) => pool.install(f),
            None => f(),
        }
    }
}

impl Backend for CpuBackend {
    type Buffer<T: Element> = Vec<T>;

    fn name(&self) -> String {
        format!("cpu ({} threads)", self.threads())
    }
}

/// Checks that a buffer has the length its geometry implies.
pub(crate) fn check_len<T>(what: &'static str, buffer: &[T], shape: &[usize]) -> Result<()> {
    let expected = crate::error::checked_product(what, shape)?;
    if buffer.len() != expected {
        return Err(crate::Error::DataLength { what, shape: shape.to_vec(), expected, got: buffer.len() });
    }
    Ok(())
}

impl<T: Element> ConvPrimitives<T> for CpuBackend {
    fn alloc(&self, len: usize) -> Result<Vec<T>> {
        try_filled_vec("buffer", len, T::default())
    }

    fn correlate(
        &self,
        g: &ConvGeometry,
        x: &Vec<T>,
        w: &Vec<T>,
        bias: Option<&Vec<T>>,
        activation: Activation,
        y: &mut Vec<T>,
    ) -> Result<()> {
        check_len("x", x, &g.x_shape())?;
        check_len("weight", w, &g.weight_shape())?;
        check_len("y", y, &g.y_shape())?;
        if let Some(b) = bias {
            check_len("bias", b, &[g.out_channels])?;
        }
        let g = &simplified(g);
        let bias = bias.map(Vec::as_slice);
        self.install(g.macs(), || match self.plan::<T>(g, Primitive::Correlate) {
            (CpuAlgorithm::ImplicitGemm, Some(ks)) => {
                gemm::correlate(&ks, &self.keep, &[Pass::forward(g)], x, w, bias, activation, y)
            }
            (CpuAlgorithm::SimdDirect, Some(ks)) => {
                sliding::correlate(&ks, &[Pass::forward(g)], x, w, bias, activation, y)
            }
            (CpuAlgorithm::Winograd, Some(ks)) => {
                if winograd::correlate(&ks, &self.keep, g, x, w, bias, activation, y) == winograd::Outcome::NotFinite {
                    gemm::correlate(&ks, &self.keep, &[Pass::forward(g)], x, w, bias, activation, y)
                }
            }
            _ => direct::correlate(g, x, w, bias, activation, y),
        });
        Ok(())
    }

    fn correlate_adjoint(
        &self,
        g: &ConvGeometry,
        y: &Vec<T>,
        w: &Vec<T>,
        bias: Option<&Vec<T>>,
        activation: Activation,
        x: &mut Vec<T>,
    ) -> Result<()> {
        check_len("y", y, &g.y_shape())?;
        check_len("weight", w, &g.weight_shape())?;
        check_len("x", x, &g.x_shape())?;
        if let Some(b) = bias {
            check_len("bias", b, &[g.in_channels])?;
        }
        let g = &simplified(g);
        let bias = bias.map(Vec::as_slice);
        self.install(g.macs(), || match self.plan::<T>(g, Primitive::CorrelateAdjoint) {
            (CpuAlgorithm::ImplicitGemm, Some(ks)) => {
                gemm::correlate(&ks, &self.keep, &Pass::adjoint(g), y, w, bias, activation, x)
            }
            (CpuAlgorithm::SimdDirect, Some(ks)) => {
                sliding::correlate(&ks, &Pass::adjoint(g), y, w, bias, activation, x)
            }
            (CpuAlgorithm::GemmCol2im, Some(ks)) => {
                let mut wide = self.keep.take(Vec::new);
                let w = gemm::col2im::weights_as_accumulators(w, &mut wide);
                gemm::col2im::correlate_adjoint(&ks, &self.keep, g, y, w, bias, activation, x)
            }
            (CpuAlgorithm::Winograd, Some(ks)) => {
                let done = winograd::adjoint_geometry(g).is_some_and(|adjoint| {
                    let flipped = winograd::adjoint_weights(g, w);
                    winograd::correlate(&ks, &self.keep, &adjoint, y, &flipped, bias, activation, x)
                        == winograd::Outcome::Done
                });
                if !done {
                    gemm::correlate(&ks, &self.keep, &Pass::adjoint(g), y, w, bias, activation, x)
                }
            }
            _ => direct::correlate_adjoint(g, y, w, bias, activation, x),
        });
        Ok(())
    }

    fn correlate_weight(&self, g: &ConvGeometry, x: &Vec<T>, y: &Vec<T>, dw: &mut Vec<T>) -> Result<()> {
        check_len("x", x, &g.x_shape())?;
        check_len("y", y, &g.y_shape())?;
        check_len("grad_weight", dw, &g.weight_shape())?;
        let g = &simplified(g);
        self.install(g.macs(), || match self.plan::<T>(g, Primitive::CorrelateWeight) {
            (CpuAlgorithm::ImplicitGemm, Some(ks)) => gemm::correlate_weight(&ks, &Pass::forward(g), x, y, dw),
            (CpuAlgorithm::SimdDirect, Some(ks)) => sliding::correlate_weight(&ks, &Pass::forward(g), x, y, dw),
            (CpuAlgorithm::Winograd, Some(ks)) => {
                if winograd::correlate_weight(&ks, &self.keep, g, x, y, dw) == winograd::Outcome::NotFinite {
                    gemm::correlate_weight(&ks, &Pass::forward(g), x, y, dw)
                }
            }
            _ => direct::correlate_weight(g, x, y, dw),
        });
        Ok(())
    }

    fn channel_sums(&self, batch: usize, channels: usize, volume: usize, t: &Vec<T>, sums: &mut Vec<T>) -> Result<()> {
        check_len("tensor", t, &[batch, channels, volume])?;
        check_len("sums", sums, &[channels])?;
        self.install(t.len() as u128, || match self.kernels::<T::Accum>() {
            Some(ks) if self.algorithm != CpuAlgorithm::Direct => {
                sliding::channel_sums(&ks, batch, channels, volume, t, sums)
            }
            _ => direct::channel_sums(batch, channels, volume, t, sums),
        });
        Ok(())
    }

    fn pad(&self, g: &ConvGeometry, x: &Vec<T>, padded: &mut Vec<T>) -> Result<()> {
        check_len("x", x, &g.x_shape())?;
        check_len("padded x", padded, &g.padded_x_shape())?;
        self.install(padded.len() as u128, || padding::pad(g, x, padded));
        Ok(())
    }

    fn fold_padding(&self, g: &ConvGeometry, padded: &Vec<T>, x: &mut Vec<T>) -> Result<()> {
        check_len("padded x", padded, &g.padded_x_shape())?;
        check_len("x", x, &g.x_shape())?;
        self.install(padded.len() as u128, || padding::fold(g, padded, x));
        Ok(())
    }
}
