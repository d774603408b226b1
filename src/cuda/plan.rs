//! Launch plans: each primitive call becomes a list of [`Step`]s, computed as
//! plain data (kernel, grid, block, arguments) before anything runs, so plans
//! are tested without a GPU and executed by any [`Executor`](super::Executor).
//!
//! Kernel conventions the planner relies on (see `kernels/`): every block has
//! [`BLOCK_THREADS`] threads and only static shared memory; every kernel loops
//! over its work with a stride of the grid, so a grid smaller than the work is
//! correct and the grid is capped at [`MAX_GRID_BLOCKS`].

use crate::backend::Activation;
use crate::element::DType;
use crate::error::{Error, Result, checked_product};
use crate::geometry::ConvGeometry;

use super::kernels::{KernelFamily, KernelId};
use super::params::{KernelArgs, activation_code, to_i64};

/// Threads per block of every kernel (`FERRO_BLOCK_THREADS` in common.cuh).
pub const BLOCK_THREADS: u32 = 256;
/// Warps per block (`FERRO_WARPS_PER_BLOCK`): kernels working a warp per output fit this many in a block.
pub const WARPS_PER_BLOCK: u64 = BLOCK_THREADS as u64 / 32;
/// Outputs of one row (of one stride phase, for the adjoint) each thread of the
/// direct correlation and its adjoint computes (`FERRO_DIRECT_ROW` in direct.cu).
pub const DIRECT_ROW: u64 = 4;
/// The implicit GEMM's output tile: rows (`FERRO_GEMM_TILE_M` in gemm.cu).
pub const GEMM_TILE_M: u64 = 64;
/// The implicit GEMM's output tile: columns (`FERRO_GEMM_TILE_N`).
pub const GEMM_TILE_N: u64 = 64;
/// The implicit GEMM's reduction step (`FERRO_GEMM_TILE_K`): split chunks are multiples of it.
pub const GEMM_TILE_K: u64 = 16;
/// The most blocks a plan launches; kernels stride over the rest of their work.
pub const MAX_GRID_BLOCKS: u64 = 1 << 20;

/// Blocks a split reduction aims for (a few waves on the largest GPUs).
const TARGET_BLOCKS: u64 = 2048;
/// The fewest reduction elements worth a chunk of their own.
const MIN_CHUNK: u64 = 1024;
/// At most this many chunks (the grid's y dimension holds them).
const MAX_SPLITS: u64 = 1024;
/// At most this much workspace for the partial sums.
const MAX_WORKSPACE_BYTES: u64 = 256 << 20;

/// One step of a plan, executed in order on one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Set `bytes` bytes at `address` to zero (every element type's zero is all zero bits).
    Zero {
        /// The buffer.
        address: u64,
        /// Its length in bytes.
        bytes: u64,
    },
    /// Launch a kernel (boxed: a launch is large next to a zero step).
    Kernel(Box<Launch>),
}

/// One kernel launch, as data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The entry point.
    pub kernel: KernelId,
    /// Blocks in x, y, z.
    pub grid: [u32; 3],
    /// Threads per block in x, y, z.
    pub block: [u32; 3],
    /// Dynamic shared memory per block, in bytes.
    pub shared_bytes: u32,
    /// The kernel's one parameter.
    pub args: KernelArgs,
    /// The buffers the kernel writes. Each is overwritten entirely (no plan
    /// accumulates into memory: reductions are split in two deterministic
    /// passes), so an emulator may poison them with NaN before the launch.
    pub writes: Vec<BufferWrite>,
}

/// A buffer a launch overwrites entirely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferWrite {
    /// Its address (as in the launch's arguments).
    pub address: u64,
    /// Its length in bytes.
    pub bytes: u64,
    /// The type of its elements (the accumulator type for partial sums).
    pub dtype: DType,
}

/// A list of steps that computes one primitive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The steps, in order.
    pub steps: Vec<Step>,
}

impl Plan {
    /// The kernel launches, in order.
    pub fn launches(&self) -> impl Iterator<Item = &Launch> {
        self.steps.iter().filter_map(|s| match s {
            Step::Kernel(launch) => Some(&**launch),
            Step::Zero { .. } => None,
        })
    }
}

/// Which kernels compute the three correlations on a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum GpuAlgorithm {
    /// Chosen per problem and primitive: direct where a GEMM tile would be mostly empty
    /// (depthwise, small groups, few channels on the tile's side), implicit GEMM otherwise.
    #[default]
    Auto,
    /// Shared-memory tiled implicit GEMM.
    ImplicitGemm,
    /// A few outputs of one row per thread (one warp per weight element for the weight gradient).
    Direct,
}

impl GpuAlgorithm {
    /// Every algorithm that can be forced.
    pub const ALL: &'static [GpuAlgorithm] = &[GpuAlgorithm::ImplicitGemm, GpuAlgorithm::Direct];

    /// A short name for tables and benchmark ids.
    pub fn name(self) -> &'static str {
        match self {
            GpuAlgorithm::Auto => "auto",
            GpuAlgorithm::ImplicitGemm => "implicit-gemm",
            GpuAlgorithm::Direct => "direct",
        }
    }

    /// The algorithm `Auto` stands for on this geometry, for a primitive whose GEMM
    /// tile rows run over `tile_rows` channels of a group (the output channels for
    /// the correlation and the weight gradient, the input channels for the
    /// adjoint) and whose direct kernel beats the GEMM up to `direct_rows` of them
    /// ([`DIRECT_ROWS_CORRELATE`], [`DIRECT_ROWS_OTHERS`]). The GEMM also wastes
    /// most of its tiles when a group has only a few channels on both sides.
    pub fn resolve(self, geometry: &ConvGeometry, tile_rows: usize, direct_rows: usize) -> GpuAlgorithm {
        let few_channels = geometry.in_channels_per_group().saturating_mul(geometry.out_channels_per_group()) <= 16;
        match self {
            GpuAlgorithm::Auto if few_channels || tile_rows <= direct_rows => GpuAlgorithm::Direct,
            GpuAlgorithm::Auto => GpuAlgorithm::ImplicitGemm,
            forced => forced,
        }
    }
}

/// GEMM tile rows up to which `Auto` correlates directly. The direct kernel runs at
/// about an eighth of the GEMM's full-tile rate (H200, f32: resnext_g32's forward,
/// 8 output channels a group, 1.00 ms direct against 1.34 ms GEMM).
pub const DIRECT_ROWS_CORRELATE: usize = 8;
/// The same for the adjoint and the weight gradient, whose direct kernels are slower
/// (resnext_g32's backward: 9.4 ms direct, 4.0 ms GEMM), though far ahead at 3 rows
/// (r50_stem's input gradient: 23.1 ms with the GEMM, 7.4 ms direct).
pub const DIRECT_ROWS_OTHERS: usize = 4;

/// The buffers of [`Planner::correlate`] and [`Planner::correlate_adjoint`]
/// (the first writes `y`, the second `x`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorrelateBuffers {
    /// `x [N, in_channels, in_size]`.
    pub x: u64,
    /// `w [out_channels, in_channels / groups, kernel_size]`.
    pub w: u64,
    /// The bias: `[out_channels]` for correlate, `[in_channels]` for its adjoint.
    pub bias: Option<u64>,
    /// `y [N, out_channels, out_size]`.
    pub y: u64,
}

/// The buffers of [`Planner::correlate_weight`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightBuffers {
    /// `x [N, in_channels, in_size]`.
    pub x: u64,
    /// `y [N, out_channels, out_size]`.
    pub y: u64,
    /// The result, shaped like the weight.
    pub dw: u64,
}

/// Scratch memory for a plan's partial sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Workspace {
    /// Where it starts (0 when there is none).
    pub address: u64,
    /// Its length in bytes.
    pub bytes: u64,
}

/// How a reduction of `length` results over `reduction` elements each is cut in chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Split {
    splits: u64,
    split_length: u64,
}

/// Turns primitive calls into plans for one element type.
///
/// ```
/// use ferroconv::cuda::{CorrelateBuffers, GpuAlgorithm, Planner};
/// use ferroconv::{Activation, ConvGeometry, ConvOptions, DType};
/// # fn main() -> ferroconv::Result<()> {
/// let g = ConvGeometry::conv(2, &[8, 64, 56, 56], &[64, 64, 3, 3], None, &ConvOptions::new().padding(1))?;
/// let planner = Planner::new(DType::F32, GpuAlgorithm::Auto);
/// let buffers = CorrelateBuffers { x: 0x1000, w: 0x2000, bias: None, y: 0x3000 };
/// let plan = planner.correlate(&g, buffers, Activation::Relu)?;
/// let launch = plan.launches().next().unwrap();
/// assert_eq!(launch.kernel.name(), "gemm_correlate_f32");
/// assert_eq!(launch.grid, [(8 * 56 * 56 / 64) as u32, 1, 1]);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planner {
    dtype: DType,
    algorithm: GpuAlgorithm,
}

impl Planner {
    /// A planner for `dtype` using `algorithm` for the correlations.
    pub fn new(dtype: DType, algorithm: GpuAlgorithm) -> Self {
        Planner { dtype, algorithm }
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// `y = act(x ⋆ w + bias)` on a zero-padded geometry.
    pub fn correlate(&self, g: &ConvGeometry, b: CorrelateBuffers, activation: Activation) -> Result<Plan> {
        let outputs = elements("y", &g.y_shape())?;
        if outputs == 0 {
            return Ok(Plan::default());
        }
        let mut args = KernelArgs::for_geometry(g)?;
        (args.x, args.w, args.bias, args.out) = (b.x, b.w, b.bias.unwrap_or(0), b.y);
        args.activation = activation_code(activation);
        let launch = match self.correlate_algorithm(g) {
            GpuAlgorithm::Direct => {
                let [depth, height, width] = g.out_size;
                let segments = width.div_ceil(DIRECT_ROW as usize);
                let threads = product("y", &[g.batch, g.out_channels, depth, height, segments])?;
                self.elementwise(KernelFamily::DirectCorrelate, threads, args)?
            }
            _ => {
                let columns = product("y", &[g.batch, g.out_volume()])?;
                let tiles = gemm_tiles(g.out_channels_per_group(), columns, g.groups)?;
                self.tiled(KernelFamily::GemmCorrelate, tiles, args)?
            }
        };
        Ok(Plan { steps: vec![Step::Kernel(Box::new(launch.writing(b.y, outputs, self.dtype)?))] })
    }

    /// `x = act(yᵀ ⋆ w + bias)`, the adjoint of [`correlate`](Self::correlate), on a zero-padded geometry.
    pub fn correlate_adjoint(&self, g: &ConvGeometry, b: CorrelateBuffers, activation: Activation) -> Result<Plan> {
        let outputs = elements("x", &g.x_shape())?;
        if outputs == 0 {
            return Ok(Plan::default());
        }
        let mut args = KernelArgs::for_geometry(g)?;
        (args.y, args.w, args.bias, args.out) = (b.y, b.w, b.bias.unwrap_or(0), b.x);
        args.activation = activation_code(activation);
        let launch = match self.adjoint_algorithm(g) {
            GpuAlgorithm::Direct => {
                let [depth, height, width] = g.in_size;
                let phases = g.stride[2].min(width);
                let segments = width.div_ceil(g.stride[2]).div_ceil(DIRECT_ROW as usize);
                let threads = product("x", &[g.batch, g.in_channels, depth, height, phases, segments])?;
                self.elementwise(KernelFamily::DirectCorrelateAdjoint, threads, args)?
            }
            _ => {
                // One GEMM per stride phase: the x positions i ≡ i0 (mod stride) for each
                // i0 < min(stride, in_size) meet the same taps. Tiles cover the largest phase.
                let phases: [usize; 3] = std::array::from_fn(|d| g.stride[d].min(g.in_size[d]));
                let largest: [usize; 3] = std::array::from_fn(|d| g.in_size[d].div_ceil(g.stride[d]));
                let columns = product("x", &[g.batch, largest[0], largest[1], largest[2]])?;
                let tiles = gemm_tiles(g.in_channels_per_group(), columns, g.groups)?;
                let tiles = tiles.checked_mul(product("phases", &phases)?).ok_or_else(|| overflow("phases"))?;
                self.tiled(KernelFamily::GemmCorrelateAdjoint, tiles, args)?
            }
        };
        Ok(Plan { steps: vec![Step::Kernel(Box::new(launch.writing(b.x, outputs, self.dtype)?))] })
    }

    /// Bytes of workspace [`correlate_weight`](Self::correlate_weight) needs for `g`.
    pub fn correlate_weight_workspace(&self, g: &ConvGeometry) -> Result<u64> {
        let (outputs, split) = self.weight_split(g)?;
        self.partials_bytes(outputs, split)
    }

    /// `dw = Σ x ⋆ y` on a zero-padded geometry, with `workspace` of at least
    /// [`correlate_weight_workspace`](Self::correlate_weight_workspace) bytes.
    pub fn correlate_weight(&self, g: &ConvGeometry, b: WeightBuffers, workspace: Workspace) -> Result<Plan> {
        let (outputs, split) = self.weight_split(g)?;
        let Some(split) = split else {
            return zero_or_empty(b.dw, outputs, self.dtype);
        };
        let mut args = KernelArgs::for_geometry(g)?;
        (args.x, args.y) = (b.x, b.y);
        let first = match self.weight_algorithm(g) {
            GpuAlgorithm::Direct => {
                let blocks = outputs.div_ceil(WARPS_PER_BLOCK);
                self.launch(
                    KernelFamily::DirectCorrelateWeight,
                    [blocks, split.splits, 1],
                    with_split(args, split, outputs)?,
                )?
            }
            _ => {
                let tiles = gemm_tiles(g.out_channels_per_group(), weight_columns(g)?, g.groups)?;
                let tiles = tiles.checked_mul(split.splits).ok_or_else(|| overflow("weight gradient"))?;
                self.tiled(KernelFamily::GemmCorrelateWeight, tiles, with_split(args, split, outputs)?)?
            }
        };
        self.split_reduction(first, outputs, split, b.dw, workspace)
    }

    /// Bytes of workspace [`channel_sums`](Self::channel_sums) needs.
    pub fn channel_sums_workspace(&self, batch: usize, channels: usize, volume: usize) -> Result<u64> {
        self.partials_bytes(channels as u64, sums_split(batch, channels, volume)?)
    }

    /// `sums[c] = Σ_{n, p} t[n, c, p]` for `t` of shape `[batch, channels, volume]`.
    pub fn channel_sums(
        &self,
        batch: usize,
        channels: usize,
        volume: usize,
        t: u64,
        sums: u64,
        workspace: Workspace,
    ) -> Result<Plan> {
        let Some(split) = sums_split(batch, channels, volume)? else {
            return zero_or_empty(sums, channels as u64, self.dtype);
        };
        let args = KernelArgs {
            x: t,
            batch: to_i64("batch", batch)?,
            in_channels: to_i64("channels", channels)?,
            in_size: [1, 1, to_i64("volume", volume)?],
            ..KernelArgs::default()
        };
        let first = self.per_output_blocks(KernelFamily::ChannelSums, channels as u64, split, args)?;
        self.split_reduction(first, channels as u64, split, sums, workspace)
    }

    /// `padded = pad(x)` by the geometry's padding and mode.
    pub fn pad(&self, g: &ConvGeometry, x: u64, padded: u64) -> Result<Plan> {
        let outputs = elements("padded x", &g.padded_x_shape())?;
        if outputs == 0 {
            return Ok(Plan::default());
        }
        let args = KernelArgs { x, out: padded, ..KernelArgs::for_geometry(g)? };
        let launch = self.elementwise(KernelFamily::Pad, outputs, args)?;
        Ok(Plan { steps: vec![Step::Kernel(Box::new(launch.writing(padded, outputs, self.dtype)?))] })
    }

    /// `x = padᵀ(padded)`: each x element gathers the padded positions copied from it.
    pub fn fold_padding(&self, g: &ConvGeometry, padded: u64, x: u64) -> Result<Plan> {
        let outputs = elements("x", &g.x_shape())?;
        if outputs == 0 {
            return Ok(Plan::default());
        }
        let args = KernelArgs { x: padded, out: x, ..KernelArgs::for_geometry(g)? };
        let launch = self.elementwise(KernelFamily::FoldPadding, outputs, args)?;
        Ok(Plan { steps: vec![Step::Kernel(Box::new(launch.writing(x, outputs, self.dtype)?))] })
    }

    /// One grid-stride launch of `family` over `work` items (one thread each).
    /// `output` is the buffer it overwrites entirely, as (address, elements);
    /// `None` when it writes only part of its output (which must then not be poisoned).
    pub fn grid_stride(
        &self,
        family: KernelFamily,
        work: u64,
        args: KernelArgs,
        output: Option<(u64, u64)>,
    ) -> Result<Plan> {
        if work == 0 {
            return Ok(Plan::default());
        }
        let mut launch = self.elementwise(family, work, args)?;
        if let Some((address, elements)) = output {
            launch = launch.writing(address, elements, self.dtype)?;
        }
        Ok(Plan { steps: vec![Step::Kernel(Box::new(launch))] })
    }

    /// The algorithm of the correlation (`Auto` resolved for `g`).
    pub(crate) fn correlate_algorithm(&self, g: &ConvGeometry) -> GpuAlgorithm {
        self.algorithm.resolve(g, g.out_channels_per_group(), DIRECT_ROWS_CORRELATE)
    }

    /// The algorithm of the adjoint.
    pub(crate) fn adjoint_algorithm(&self, g: &ConvGeometry) -> GpuAlgorithm {
        self.algorithm.resolve(g, g.in_channels_per_group(), DIRECT_ROWS_OTHERS)
    }

    /// The algorithm of the weight gradient, whose split and launch must agree on it.
    pub(crate) fn weight_algorithm(&self, g: &ConvGeometry) -> GpuAlgorithm {
        self.algorithm.resolve(g, g.out_channels_per_group(), DIRECT_ROWS_OTHERS)
    }

    /// The weight gradient's element count and its split (`None`: nothing to reduce).
    fn weight_split(&self, g: &ConvGeometry) -> Result<(u64, Option<Split>)> {
        let outputs = elements("grad_weight", &g.weight_shape())?;
        let reduction = product("reduction", &[g.batch, g.out_volume()])?;
        let split = match self.weight_algorithm(g) {
            // The direct kernel walks whole rows of y.
            GpuAlgorithm::Direct => {
                choose_split(outputs.div_ceil(WARPS_PER_BLOCK), reduction, g.out_size[2] as u64, outputs)?
            }
            _ => {
                let tiles = gemm_tiles(g.out_channels_per_group(), weight_columns(g)?, g.groups)?;
                choose_split(tiles, reduction, GEMM_TILE_K, outputs)?
            }
        };
        Ok((outputs, split))
    }

    fn partials_bytes(&self, outputs: u64, split: Option<Split>) -> Result<u64> {
        match split {
            Some(Split { splits, .. }) if splits > 1 => {
                [splits, outputs, accumulator(self.dtype).size_in_bytes() as u64]
                    .into_iter()
                    .try_fold(1u64, u64::checked_mul)
                    .ok_or_else(|| overflow("workspace"))
            }
            _ => Ok(0),
        }
    }

    /// The first pass of a split reduction followed, when there are several
    /// chunks, by the pass that sums their partials into `out`.
    fn split_reduction(
        &self,
        first: Launch,
        outputs: u64,
        split: Split,
        out: u64,
        workspace: Workspace,
    ) -> Result<Plan> {
        if split.splits == 1 {
            let mut first = first;
            first.args.out = out;
            return Ok(Plan { steps: vec![Step::Kernel(Box::new(first.writing(out, outputs, self.dtype)?))] });
        }
        let needed = self.partials_bytes(outputs, Some(split))?;
        if workspace.bytes < needed || workspace.address == 0 {
            return Err(Error::InvalidArgument {
                what: "workspace",
                detail: format!("the plan needs {needed} bytes of workspace, got {} bytes", workspace.bytes),
            });
        }
        let acc = accumulator(self.dtype);
        let mut first = first;
        first.args.partials = workspace.address;
        let first = first.writing(workspace.address, split.splits * outputs, acc)?; // bounded by MAX_WORKSPACE_BYTES
        let args = KernelArgs {
            partials: workspace.address,
            out,
            splits: arg("splits", split.splits)?,
            length: arg("outputs", outputs)?,
            ..KernelArgs::default()
        };
        let second = self.elementwise(KernelFamily::SumPartials, outputs, args)?.writing(out, outputs, self.dtype)?;
        Ok(Plan { steps: vec![Step::Kernel(Box::new(first)), Step::Kernel(Box::new(second))] })
    }

    /// A launch of `threads` threads (grid-stride beyond the cap).
    fn elementwise(&self, family: KernelFamily, threads: u64, args: KernelArgs) -> Result<Launch> {
        self.launch(family, [threads.div_ceil(BLOCK_THREADS as u64), 1, 1], args)
    }

    /// A launch with one block per tile.
    fn tiled(&self, family: KernelFamily, tiles: u64, args: KernelArgs) -> Result<Launch> {
        self.launch(family, [tiles, 1, 1], args)
    }

    /// A launch with one block per (output, chunk): outputs in x, chunks in y.
    fn per_output_blocks(&self, family: KernelFamily, outputs: u64, split: Split, args: KernelArgs) -> Result<Launch> {
        self.launch(family, [outputs, split.splits, 1], with_split(args, split, outputs)?)
    }

    fn launch(&self, family: KernelFamily, blocks: [u64; 3], args: KernelArgs) -> Result<Launch> {
        let grid_dim = |d: usize, blocks: u64| {
            u32::try_from(blocks.min(MAX_GRID_BLOCKS))
                .map_err(|_| overflow("grid"))
                .and_then(|b| if d > 0 && b > 65535 { Err(overflow("grid")) } else { Ok(b) })
        };
        Ok(Launch {
            kernel: family.kernel(self.dtype),
            grid: [grid_dim(0, blocks[0])?, grid_dim(1, blocks[1])?, grid_dim(2, blocks[2])?],
            block: [BLOCK_THREADS, 1, 1],
            shared_bytes: 0,
            args,
            writes: Vec::new(),
        })
    }
}

impl Launch {
    /// The same launch, recording that it overwrites `elements` of `dtype` at `address`.
    fn writing(mut self, address: u64, elements: u64, dtype: DType) -> Result<Launch> {
        let bytes = elements.checked_mul(dtype.size_in_bytes() as u64).ok_or_else(|| overflow("output"))?;
        self.writes.push(BufferWrite { address, bytes, dtype });
        Ok(self)
    }
}

/// The accumulator type of an element type (f32 for the half types).
pub fn accumulator(dtype: DType) -> DType {
    match dtype {
        DType::F64 => DType::F64,
        DType::F32 | DType::F16 | DType::BF16 => DType::F32,
    }
}

fn overflow(what: &'static str) -> Error {
    Error::overflow(what, "the launch's size exceeds the 64-bit range of a plan")
}

fn product(what: &'static str, dims: &[usize]) -> Result<u64> {
    Ok(checked_product(what, dims)? as u64)
}

fn elements(what: &'static str, shape: &[usize]) -> Result<u64> {
    product(what, shape)
}

/// Tiles of the GEMM `[rows x columns]` per group, times the groups.
fn gemm_tiles(rows: usize, columns: u64, groups: usize) -> Result<u64> {
    (rows as u64)
        .div_ceil(GEMM_TILE_M)
        .checked_mul(columns.div_ceil(GEMM_TILE_N))
        .and_then(|t| t.checked_mul(groups as u64))
        .ok_or_else(|| overflow("tiles"))
}

/// Columns of the weight gradient's GEMM: `in_channels / groups * prod(kernel_size)`.
fn weight_columns(g: &ConvGeometry) -> Result<u64> {
    product("weight", &[g.in_channels_per_group(), g.kernel_volume()])
}

fn with_split(mut args: KernelArgs, split: Split, outputs: u64) -> Result<KernelArgs> {
    args.splits = arg("splits", split.splits)?;
    args.split_length = arg("split length", split.split_length)?;
    args.length = arg("outputs", outputs)?;
    Ok(args)
}

/// A count as a kernel argument (`long long`).
fn arg(what: &'static str, v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::overflow(what, format!("{v} exceeds the kernels' 64-bit index range")))
}

/// Chunks for a reduction of `reduction` elements per result, with `blocks`
/// blocks per chunk and `outputs` results; chunks are multiples of `granule`.
/// `None` when there is nothing to reduce (the results are zero).
fn choose_split(blocks: u64, reduction: u64, granule: u64, outputs: u64) -> Result<Option<Split>> {
    if reduction == 0 || outputs == 0 {
        return Ok(None);
    }
    let wanted = TARGET_BLOCKS.div_ceil(blocks.max(1));
    let by_length = (reduction / MIN_CHUNK).max(1);
    // f64 partials are the largest; the same count serves every type.
    let by_memory = (MAX_WORKSPACE_BYTES / outputs.saturating_mul(8)).max(1);
    let splits = wanted.min(by_length).min(by_memory).clamp(1, MAX_SPLITS);
    let split_length = reduction.div_ceil(splits).next_multiple_of(granule);
    Ok(Some(Split { splits: reduction.div_ceil(split_length), split_length }))
}

fn sums_split(batch: usize, channels: usize, volume: usize) -> Result<Option<Split>> {
    choose_split(channels as u64, product("tensor", &[batch, volume])?, 1, channels as u64)
}

/// A plan that zeroes `outputs` elements at `address` (an empty sum), or does
/// nothing when there are none.
fn zero_or_empty(address: u64, outputs: u64, dtype: DType) -> Result<Plan> {
    if outputs == 0 {
        return Ok(Plan::default());
    }
    let bytes = outputs.checked_mul(dtype.size_in_bytes() as u64).ok_or_else(|| overflow("output"))?;
    Ok(Plan { steps: vec![Step::Zero { address, bytes }] })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::{ConvOptions, ConvTransposeOptions};

    const X: u64 = 0x1000;
    const W: u64 = 0x2000;
    const B: u64 = 0x3000;
    const Y: u64 = 0x4000;
    const WS: u64 = 0x5000;

    fn conv2d(x: &[usize], w: &[usize], options: ConvOptions) -> ConvGeometry {
        ConvGeometry::conv(2, x, w, Some(&[w[0]]), &options).unwrap()
    }

    fn only_launch(plan: &Plan) -> &Launch {
        assert_eq!(plan.steps.len(), 1, "{plan:#?}");
        plan.launches().next().unwrap()
    }

    #[test]
    fn resnet_conv_is_one_gemm_launch_with_its_arguments_in_place() {
        let g = conv2d(&[8, 64, 56, 56], &[64, 64, 3, 3], ConvOptions::new().padding(1));
        let planner = Planner::new(DType::F32, GpuAlgorithm::Auto);
        let plan =
            planner.correlate(&g, CorrelateBuffers { x: X, w: W, bias: Some(B), y: Y }, Activation::Relu).unwrap();
        let launch = only_launch(&plan);
        assert_eq!(launch.kernel, KernelId::GemmCorrelateF32);
        // One 64-row tile of output channels, 8·56·56 / 64 column tiles.
        assert_eq!(launch.grid, [392, 1, 1]);
        assert_eq!(launch.block, [BLOCK_THREADS, 1, 1]);
        assert_eq!(launch.shared_bytes, 0);
        let a = &launch.args;
        assert_eq!((a.x, a.w, a.bias, a.out, a.y, a.partials), (X, W, B, Y, 0, 0));
        assert_eq!((a.batch, a.in_channels, a.out_channels, a.groups), (8, 64, 64, 1));
        assert_eq!((a.in_size, a.out_size, a.kernel_size), ([1, 56, 56], [1, 56, 56], [1, 3, 3]));
        assert_eq!((a.padding_lo, a.stride, a.dilation), ([0, 1, 1], [1; 3], [1; 3]));
        assert_eq!(a.activation, activation_code(Activation::Relu));
        assert_eq!(launch.writes, vec![BufferWrite { address: Y, bytes: 8 * 64 * 56 * 56 * 4, dtype: DType::F32 }]);
    }

    #[test]
    fn depthwise_goes_direct_and_the_dtype_picks_the_instantiation() {
        let g = conv2d(&[2, 32, 10, 10], &[32, 1, 3, 3], ConvOptions::new().groups(32).padding(1));
        let planner = Planner::new(DType::BF16, GpuAlgorithm::Auto);
        let plan =
            planner.correlate(&g, CorrelateBuffers { x: X, w: W, bias: None, y: Y }, Activation::Identity).unwrap();
        let launch = only_launch(&plan);
        assert_eq!(launch.kernel, KernelId::DirectCorrelateBf16);
        // One thread per DIRECT_ROW outputs of a row: 10 rows of 10 for each of the 2·32 planes.
        assert_eq!(launch.grid, [(2 * 32 * 10 * 3u32).div_ceil(BLOCK_THREADS), 1, 1]);
        assert_eq!(launch.args.bias, 0);
        assert_eq!(launch.writes[0].bytes, 2 * 32 * 100 * 2);
        // Forcing the GEMM is honoured.
        let gemm = Planner::new(DType::BF16, GpuAlgorithm::ImplicitGemm);
        let plan = gemm.correlate(&g, CorrelateBuffers { x: X, w: W, bias: None, y: Y }, Activation::Identity).unwrap();
        assert_eq!(only_launch(&plan).kernel, KernelId::GemmCorrelateBf16);
    }

    /// The value of `#define NAME value` in the embedded source of `kernels/FILE.cu`.
    fn kernel_define(file: &str, name: &str) -> u64 {
        let source = crate::cuda::kernels::sources().into_iter().find(|f| f.name == file).unwrap().text;
        let prefix = format!("#define {name} ");
        let line = source.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or_else(|| panic!("{name} in {file}"));
        line.trim().parse().unwrap()
    }

    #[test]
    fn launch_sizes_match_the_kernels_defines() {
        assert_eq!(u64::from(BLOCK_THREADS), kernel_define("direct", "FERRO_BLOCK_THREADS"));
        assert_eq!(DIRECT_ROW, kernel_define("direct", "FERRO_DIRECT_ROW"));
        assert_eq!(GEMM_TILE_M, kernel_define("gemm", "FERRO_GEMM_TILE_M"));
        assert_eq!(GEMM_TILE_N, kernel_define("gemm", "FERRO_GEMM_TILE_N"));
        assert_eq!(GEMM_TILE_K, kernel_define("gemm", "FERRO_GEMM_TILE_K"));
    }

    #[test]
    fn auto_picks_per_primitive_by_the_rows_a_gemm_tile_would_fill() {
        // The ResNet stem: 3 input channels fill 3 of the adjoint's 64 tile rows; the
        // correlation and the weight gradient tile over its 64 output channels.
        let g = conv2d(&[2, 3, 32, 32], &[64, 3, 7, 7], ConvOptions::new().stride(2).padding(3));
        let planner = Planner::new(DType::F32, GpuAlgorithm::Auto);
        let buffers = CorrelateBuffers { x: X, w: W, bias: None, y: Y };
        let forward = planner.correlate(&g, buffers, Activation::Identity).unwrap();
        assert_eq!(only_launch(&forward).kernel, KernelId::GemmCorrelateF32);
        let adjoint = planner.correlate_adjoint(&g, buffers, Activation::Identity).unwrap();
        assert_eq!(only_launch(&adjoint).kernel, KernelId::DirectCorrelateAdjointF32);
        // A thread per DIRECT_ROW x positions of one row and stride phase: 2 images x 3 channels x 32 rows
        // x 2 phases x 16 positions / 4.
        assert_eq!(only_launch(&adjoint).grid, [(2 * 3 * 32 * 2 * 4u32).div_ceil(BLOCK_THREADS), 1, 1]);
        let weight = planner.correlate_weight(&g, WeightBuffers { x: X, y: Y, dw: W }, Workspace::default()).unwrap();
        assert_eq!(weight.launches().next().unwrap().kernel, KernelId::GemmCorrelateWeightF32);
        // Forcing the GEMM is honoured for the adjoint too.
        let gemm = Planner::new(DType::F32, GpuAlgorithm::ImplicitGemm);
        let adjoint = gemm.correlate_adjoint(&g, buffers, Activation::Identity).unwrap();
        assert_eq!(only_launch(&adjoint).kernel, KernelId::GemmCorrelateAdjointF32);
        // ResNeXt's groups of 8 channels: the correlation goes direct, the others stay GEMMs.
        let g = conv2d(&[2, 256, 14, 14], &[256, 8, 3, 3], ConvOptions::new().groups(32).padding(1));
        let forward = planner.correlate(&g, buffers, Activation::Identity).unwrap();
        assert_eq!(only_launch(&forward).kernel, KernelId::DirectCorrelateF32);
        let adjoint = planner.correlate_adjoint(&g, buffers, Activation::Identity).unwrap();
        assert_eq!(only_launch(&adjoint).kernel, KernelId::GemmCorrelateAdjointF32);
        let workspace = Workspace { address: 0x9000, bytes: planner.correlate_weight_workspace(&g).unwrap() };
        let weight = planner.correlate_weight(&g, WeightBuffers { x: X, y: Y, dw: W }, workspace).unwrap();
        assert_eq!(weight.launches().next().unwrap().kernel, KernelId::GemmCorrelateWeightF32);
    }

    #[test]
    fn the_adjoint_tiles_cover_every_stride_phase() {
        // ConvTranspose2d(16, 3, 3, stride=2, padding=1, output_padding=1) on 16x16 -> 32x32.
        let options = ConvTransposeOptions::new().stride(2).padding(1).output_padding(1);
        let g = ConvGeometry::conv_transpose(2, &[4, 16, 16, 16], &[16, 3, 3, 3], None, &options).unwrap();
        let planner = Planner::new(DType::F16, GpuAlgorithm::ImplicitGemm);
        let plan = planner
            .correlate_adjoint(&g, CorrelateBuffers { x: X, w: W, bias: None, y: Y }, Activation::Identity)
            .unwrap();
        let launch = only_launch(&plan);
        assert_eq!(launch.kernel, KernelId::GemmCorrelateAdjointF16);
        // 4 phases (2x2), each 4·16·16 x positions = 16 column tiles, one row tile.
        assert_eq!(launch.grid, [4 * 16, 1, 1]);
        assert_eq!((launch.args.y, launch.args.out, launch.args.x), (Y, X, 0));
        assert_eq!(launch.writes, vec![BufferWrite { address: X, bytes: 4 * 3 * 32 * 32 * 2, dtype: DType::F16 }]);
    }

    #[test]
    fn a_long_weight_reduction_is_split_in_two_deterministic_passes() {
        let g = conv2d(&[32, 64, 56, 56], &[64, 64, 3, 3], ConvOptions::new().padding(1));
        let planner = Planner::new(DType::F16, GpuAlgorithm::Auto);
        let bytes = planner.correlate_weight_workspace(&g).unwrap();
        let outputs = 64 * 64 * 9;
        assert!(bytes > 0 && bytes.is_multiple_of(outputs * 4), "{bytes}: f32 partials of whole chunks");
        let splits = bytes / (outputs * 4);

        let buffers = WeightBuffers { x: X, y: Y, dw: W };
        let plan = planner.correlate_weight(&g, buffers, Workspace { address: WS, bytes }).unwrap();
        let launches: Vec<&Launch> = plan.launches().collect();
        assert_eq!(launches.len(), 2);
        let (first, second) = (launches[0], launches[1]);
        assert_eq!(first.kernel, KernelId::GemmCorrelateWeightF16);
        assert_eq!(first.args.splits as u64, splits);
        assert_eq!(first.args.split_length as u64 % GEMM_TILE_K, 0);
        assert!(first.args.split_length as u64 * splits >= 32 * 56 * 56);
        assert_eq!(first.args.partials, WS);
        assert_eq!(first.writes, vec![BufferWrite { address: WS, bytes, dtype: DType::F32 }]);
        // 1 row tile x 9 column tiles per chunk.
        assert_eq!(first.grid, [9 * splits as u32, 1, 1]);
        assert_eq!(second.kernel, KernelId::SumPartialsF16);
        assert_eq!((second.args.partials, second.args.out, second.args.length), (WS, W, outputs as i64));
        assert_eq!(second.writes, vec![BufferWrite { address: W, bytes: outputs * 2, dtype: DType::F16 }]);

        let short = planner.correlate_weight(&g, buffers, Workspace { address: WS, bytes: bytes - 1 }).unwrap_err();
        assert_eq!(short.kind(), "invalid_argument");
    }

    #[test]
    fn a_short_reduction_writes_its_result_directly() {
        let g = conv2d(&[1, 8, 6, 6], &[8, 8, 3, 3], ConvOptions::new());
        let planner = Planner::new(DType::F64, GpuAlgorithm::Direct);
        assert_eq!(planner.correlate_weight_workspace(&g).unwrap(), 0);
        let plan = planner.correlate_weight(&g, WeightBuffers { x: X, y: Y, dw: W }, Workspace::default()).unwrap();
        let launch = only_launch(&plan);
        assert_eq!(launch.kernel, KernelId::DirectCorrelateWeightF64);
        assert_eq!(launch.grid, [8 * 8 * 9 / WARPS_PER_BLOCK as u32, 1, 1]);
        assert_eq!((launch.args.splits, launch.args.out, launch.args.length), (1, W, 8 * 8 * 9));
    }

    #[test]
    fn an_empty_batch_zeroes_the_sums_and_launches_nothing_else() {
        let g = conv2d(&[0, 3, 5, 5], &[4, 3, 3, 3], ConvOptions::new());
        let planner = Planner::new(DType::F32, GpuAlgorithm::Auto);
        let correlate =
            planner.correlate(&g, CorrelateBuffers { x: X, w: W, bias: None, y: Y }, Activation::Identity).unwrap();
        assert!(correlate.steps.is_empty());
        let weight = planner.correlate_weight(&g, WeightBuffers { x: X, y: Y, dw: W }, Workspace::default()).unwrap();
        assert_eq!(weight.steps, vec![Step::Zero { address: W, bytes: 4 * 3 * 9 * 4 }]);
        let sums = planner.channel_sums(0, 4, 9, Y, B, Workspace::default()).unwrap();
        assert_eq!(sums.steps, vec![Step::Zero { address: B, bytes: 16 }]);
    }

    #[test]
    fn channel_sums_split_over_blocks_in_y() {
        let planner = Planner::new(DType::F32, GpuAlgorithm::Auto);
        let (batch, channels, volume) = (16, 8, 64 * 64);
        let bytes = planner.channel_sums_workspace(batch, channels, volume).unwrap();
        let plan = planner.channel_sums(batch, channels, volume, Y, B, Workspace { address: WS, bytes }).unwrap();
        let launches: Vec<&Launch> = plan.launches().collect();
        assert_eq!(launches.len(), 2);
        assert_eq!(launches[0].kernel, KernelId::ChannelSumsF32);
        assert_eq!(launches[0].grid[0], 8);
        assert_eq!(launches[0].grid[1] as u64 * 8 * 4, bytes);
        assert_eq!((launches[0].args.x, launches[0].args.in_channels, launches[0].args.in_size), (Y, 8, [1, 1, 4096]));
        assert_eq!(launches[1].kernel, KernelId::SumPartialsF32);
    }

    #[test]
    fn huge_problems_cap_the_grid_instead_of_overflowing() {
        // 2^40 output elements: far beyond a u32 grid of 256-thread blocks.
        let g = ConvGeometry::conv(1, &[1 << 20, 1, 1 << 20], &[1, 1, 1], None, &ConvOptions::new()).unwrap();
        for algorithm in GpuAlgorithm::ALL {
            let planner = Planner::new(DType::F32, *algorithm);
            let plan =
                planner.correlate(&g, CorrelateBuffers { x: X, w: W, bias: None, y: Y }, Activation::Identity).unwrap();
            assert_eq!(only_launch(&plan).grid, [MAX_GRID_BLOCKS as u32, 1, 1]);
            assert_eq!(only_launch(&plan).writes[0].bytes, 4 << 40);
        }
        let pad = Planner::new(DType::F64, GpuAlgorithm::Auto).fold_padding(&g, X, Y).unwrap();
        assert_eq!(only_launch(&pad).grid, [MAX_GRID_BLOCKS as u32, 1, 1]);
    }

    #[test]
    fn pad_and_fold_read_and_write_the_right_buffers() {
        let options = ConvOptions::new().padding(2).padding_mode(crate::geometry::PaddingMode::Reflect);
        let g = conv2d(&[2, 3, 5, 6], &[4, 3, 3, 3], options);
        let planner = Planner::new(DType::F32, GpuAlgorithm::Auto);
        let pad = planner.pad(&g, X, Y).unwrap();
        let launch = only_launch(&pad);
        assert_eq!((launch.kernel, launch.args.x, launch.args.out), (KernelId::PadF32, X, Y));
        assert_eq!(launch.args.padding_mode, 1);
        assert_eq!((launch.args.padding_lo, launch.args.padding_hi), ([0, 2, 2], [0, 2, 2]));
        assert_eq!(launch.writes[0].bytes, 2 * 3 * 9 * 10 * 4);
        let fold = planner.fold_padding(&g, Y, X).unwrap();
        let launch = only_launch(&fold);
        assert_eq!((launch.kernel, launch.args.x, launch.args.out), (KernelId::FoldPaddingF32, Y, X));
        assert_eq!(launch.writes[0].bytes, 2 * 3 * 5 * 6 * 4);
    }
}
