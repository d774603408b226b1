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
    Zero { address: u64, bytes: u64 },
    /// Launch a kernel.
    Kernel(Launch),
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
            Step::Kernel(launch) => Some(launch),
            Step::Zero { .. } => None,
        })
    }
}

/// Which kernels compute the three correlations on a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum GpuAlgorithm {
    /// Chosen per problem: direct for depthwise and tiny groups, implicit GEMM otherwise.
    #[default]
    Auto,
    /// Shared-memory tiled implicit GEMM.
    ImplicitGemm,
    /// One thread per output element (one block per weight element for the weight gradient).
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

    /// The algorithm `Auto` stands for on this geometry: the GEMM wastes most of
    /// its 64x64 tiles when a group has only a few channels on either side.
    pub fn resolve(self, geometry: &ConvGeometry) -> GpuAlgorithm {
        match self {
            GpuAlgorithm::Auto
                if geometry.in_channels_per_group().saturating_mul(geometry.out_channels_per_group()) <= 16 =>
            {
                GpuAlgorithm::Direct
            }
            GpuAlgorithm::Auto => GpuAlgorithm::ImplicitGemm,
            forced => forced,
        }
    }
}

/// The buffers of [`Planner::correlate`] and [`Planner::correlate_adjoint`]
/// (the first writes `y`, the second `x`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorrelateBuffers {
    pub x: u64,
    pub w: u64,
    pub bias: Option<u64>,
    pub y: u64,
}

/// The buffers of [`Planner::correlate_weight`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightBuffers {
    pub x: u64,
    pub y: u64,
    pub dw: u64,
}

/// Scratch memory for a plan's partial sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Workspace {
    pub address: u64,
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
        let launch = match self.algorithm.resolve(g) {
            GpuAlgorithm::Direct => self.elementwise(KernelFamily::DirectCorrelate, outputs, args)?,
            _ => {
                let columns = product("y", &[g.batch, g.out_volume()])?;
                let tiles = gemm_tiles(g.out_channels_per_group(), columns, g.groups)?;
                self.tiled(KernelFamily::GemmCorrelate, tiles, args)?
            }
        };
        Ok(Plan { steps: vec![Step::Kernel(launch.writing(b.y, outputs, self.dtype)?)] })
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
        let launch = match self.algorithm.resolve(g) {
            GpuAlgorithm::Direct => self.elementwise(KernelFamily::DirectCorrelateAdjoint, outputs, args)?,
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
        Ok(Plan { steps: vec![Step::Kernel(launch.writing(b.x, outputs, self.dtype)?)] })
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
            return Ok(zero_or_empty(b.dw, outputs, self.dtype));
        };
        let mut args = KernelArgs::for_geometry(g)?;
        (args.x, args.y) = (b.x, b.y);
        let first = match self.algorithm.resolve(g) {
            GpuAlgorithm::Direct => {
                self.per_output_blocks(KernelFamily::DirectCorrelateWeight, outputs, split, args)?
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
            return Ok(zero_or_empty(sums, channels as u64, self.dtype));
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
        Ok(Plan { steps: vec![Step::Kernel(launch.writing(padded, outputs, self.dtype)?)] })
    }

    /// `x = padᵀ(padded)`: each x element gathers the padded positions copied from it.
    pub fn fold_padding(&self, g: &ConvGeometry, padded: u64, x: u64) -> Result<Plan> {
        let outputs = elements("x", &g.x_shape())?;
        if outputs == 0 {
            return Ok(Plan::default());
        }
        let args = KernelArgs { x: padded, out: x, ..KernelArgs::for_geometry(g)? };
        let launch = self.elementwise(KernelFamily::FoldPadding, outputs, args)?;
        Ok(Plan { steps: vec![Step::Kernel(launch.writing(x, outputs, self.dtype)?)] })
    }

    /// The weight gradient's element count and its split (`None`: nothing to reduce).
    fn weight_split(&self, g: &ConvGeometry) -> Result<(u64, Option<Split>)> {
        let outputs = elements("grad_weight", &g.weight_shape())?;
        let reduction = product("reduction", &[g.batch, g.out_volume()])?;
        let split = match self.algorithm.resolve(g) {
            GpuAlgorithm::Direct => choose_split(outputs, reduction, 1, outputs)?,
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
            return Ok(Plan { steps: vec![Step::Kernel(first.writing(out, outputs, self.dtype)?)] });
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
        let first = first.writing(workspace.address, split.splits * outputs, acc)?;
        let args = KernelArgs {
            partials: workspace.address,
            out,
            splits: to_i64("splits", split.splits as usize)?,
            length: outputs as i64,
            ..KernelArgs::default()
        };
        let second = self.elementwise(KernelFamily::SumPartials, outputs, args)?.writing(out, outputs, self.dtype)?;
        Ok(Plan { steps: vec![Step::Kernel(first), Step::Kernel(second)] })
    }

    /// A launch with one thread per output element (grid-stride beyond the cap).
    fn elementwise(&self, family: KernelFamily, outputs: u64, args: KernelArgs) -> Result<Launch> {
        self.launch(family, [outputs.div_ceil(BLOCK_THREADS as u64), 1, 1], args)
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
    args.splits = to_i64("splits", split.splits as usize)?;
    args.split_length = to_i64("split length", split.split_length as usize)?;
    args.length = to_i64("outputs", outputs as usize)?;
    Ok(args)
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
    let splits = wanted.min(by_length).min(by_memory).min(MAX_SPLITS).max(1);
    let split_length = reduction.div_ceil(splits).next_multiple_of(granule);
    Ok(Some(Split { splits: reduction.div_ceil(split_length), split_length }))
}

fn sums_split(batch: usize, channels: usize, volume: usize) -> Result<Option<Split>> {
    choose_split(channels as u64, product("tensor", &[batch, volume])?, 1, channels as u64)
}

/// A plan that zeroes `outputs` elements at `address` (an empty sum), or does
/// nothing when there are none.
fn zero_or_empty(address: u64, outputs: u64, dtype: DType) -> Plan {
    if outputs == 0 {
        return Plan::default();
    }
    Plan { steps: vec![Step::Zero { address, bytes: outputs * dtype.size_in_bytes() as u64 }] }
}
