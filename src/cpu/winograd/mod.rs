//! Winograd's minimal filtering F(2, 3) (Lavin & Gray, 2016) for the
//! correlation when the kernel spans 3 taps at stride 1 along some axes and
//! 1 tap along the others: ResNet's and U-Net's 3×3 layers, dilated ones,
//! 1-D and 3-D ones; and for the adjoint of such a layer at stride 1 (its
//! input gradient), which is the correlation with the kernel flipped
//! ([`adjoint_geometry`]).
//!
//! Along a 3-tap axis a tile of 2 outputs reads 4 inputs `d`, and
//! `y = Aᵀ[(G g) ⊙ (Bᵀ d)]` takes 4 multiplies where the direct sum takes 6;
//! over two axes 16 instead of 36 (2.25× fewer), over three 64 instead of
//! 216. Summed over channels, the products of each transform point `ξ` are one
//! GEMM, `M_ξ (K × tiles) = U_ξ (K × C) · V_ξ (C × tiles)`, which the `nn`
//! micro-kernel runs:
//! - `U`, the transformed weights, is made once per op in `MR`-row strips;
//! - a task owns `TILE_BLOCKS · NR` tiles × a block of output channels: it gathers and
//!   transforms its tiles' inputs into `V` (`Bᵀ` along each axis), runs the
//!   GEMMs into `M`, and transforms `M` back (`Aᵀ` along each axis) into `y`
//!   with the bias and activation. Its tiles are read and written in runs
//!   along the last axis (strided loads, a pair of outputs interleaved per
//!   tile); only the tiles at that axis's edges go through per-point tables.
//!   2-D and 1-D tiles at dilation 1 along the last axis, from f32 or f64,
//!   are read instead as rows of tiles that a kernel loads, transforms and
//!   stores in registers, masking the lanes outside the input
//!   ([`Kernels::winograd_input_row`]): gathering points and transforming
//!   in passes took as long as the products on 64-channel layers.
//!
//! Each output is one fixed chain of operations whatever the thread count.
//! A tile's outputs and inputs are `dilation` apart, so a dilated axis is
//! tiled per residue class of its outputs.
//!
//! The transforms round a few more times than the direct sum (results differ
//! from it by a few ulps; on exactly representable operands they are exact).
//! An infinity would meet its own negation in them (∞ − ∞ = NaN where the
//! direct sum gives ∞). A non-finite input or weight reaches some output (as
//! ∞ or NaN, never finite), so an op with an output that is not finite (or
//! that overflowed) reports [`Outcome::NotFinite`] and the caller computes it
//! another way.

mod weight;

use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use super::gemm::zeroed;
use super::keep::Keep;
use super::kernels::{AOperand, Kernels, TileRow, TileRowShape};
use super::pass::as_accumulators;
use super::threads::Tasks;
use crate::backend::Activation;
use crate::element::{Accumulator, Element};
use crate::geometry::ConvGeometry;

/// Column blocks of the micro-kernel (`NR` tiles each) a task transforms and
/// multiplies together: its tiles, the columns of its GEMMs. Two blocks make
/// 32 tiles on AVX2, where 64 and 128 ran 0–20% slower on the suite's 3×3
/// layers, and 64 on AVX-512, where 32 ran 10–15% slower (ResNet's and
/// U-Net's 64-channel layers, the 1-D one; 2 threads, Zen 4) and 16 slower
/// still (3×3 `V` at 64 channels and 64 tiles: 256 KiB of f32, in L2).
const TILE_BLOCKS: usize = 2;
/// Input channels a micro-kernel call reduces over (as `gemm::KC`: the
/// `KC × NR` block of `V` stays in L1 while the weight strips pass over it).
const KC: usize = 256;
/// Output channels a task's block holds at most, so that the `KC` rows of its
/// `U_ξ` strips (384 KiB of f32) stay in L2 (1 MiB on Zen 4). Every block
/// gathers and transforms its tiles' inputs anew: at 128 (three blocks of
/// 256 channels) the dilated layer of the suite ran 1.25× the time it takes
/// in one block, the 1-D layer 1.1–1.2×.
const ROWS: usize = 384;
/// Parallel pieces an op aims for per thread when its tiles are too few
/// (ResNet's 14×14 layer: 196 tiles, 4 blocks of them): 2 kept two threads
/// busy, where 4 (a second block of output channels, transforming the inputs
/// again) ran that layer 1.2× slower.
const TASKS_PER_THREAD: usize = 2;
/// A table entry that reads or writes nothing (a padding input, an output past the edge).
const NONE: usize = usize::MAX;

/// Whether F(2, 3) computes the correlation of `g`: along every axis the
/// kernel has 1 tap, or 3 taps at stride 1, and along one at least 3.
pub(crate) fn applicable(g: &ConvGeometry) -> bool {
    let axis_ok = |d: usize| g.kernel_size[d] == 1 || (g.kernel_size[d] == 3 && g.stride[d] == 1);
    (0..3).all(axis_ok) && g.kernel_size.contains(&3)
}

/// Tiles from which [`worthwhile`] holds: `U` (16 values per weight pair
/// for 3×3, against 9) is made once per op and read once per block of tiles,
/// so with few tiles its making and reading cost more than the multiplies
/// saved. On 2 Zen 4 cores, ResNet's 256-channel 14×14 layer (4 images, 196
/// tiles) ran 0.81× the time of implicit GEMM (AVX-512; 0.61× on AVX2), its
/// 512-channel 7×7 layer (64 tiles) 1.7×.
const MIN_TILES: usize = 128;

/// Whether F(2, 3) should beat implicit GEMM on `g` (an [`applicable`]
/// geometry, so with a 3-tap axis at least): tiles enough to repay `U` (see
/// [`MIN_TILES`]). One 3-tap axis is enough: 4 multiplies for 6 made the
/// suite's 1-D layer 0.89× the time of implicit GEMM on AVX-512 (even on AVX2).
pub(crate) fn worthwhile(g: &ConvGeometry) -> bool {
    Tiling::new(g).tiles >= MIN_TILES
}

/// The correlation that computes the adjoint of `g`'s (conv's input
/// gradient, conv_transpose's forward) where every stride is 1:
/// `x = y ⋆ w̃`, with `w̃` the kernel flipped along every axis and its two
/// channel sides swapped ([`adjoint_weights`]), padded by `dilation · (k − 1)`
/// less the original's at the start, and at the end by what makes `x`'s size
/// (positions of `x` no output reads, as a conv_transpose's output padding,
/// get zeros from the padding). `None` where a stride is not 1 or the start
/// padding exceeds the kernel's reach (outputs that read nothing but padding).
pub(crate) fn adjoint_geometry(g: &ConvGeometry) -> Option<ConvGeometry> {
    let mut adjoint = g.clone();
    for d in 0..3 {
        let reach = g.dilation[d] * (g.kernel_size[d] - 1);
        let lo = g.padding_lo[d];
        let end = (g.in_size[d] + lo).checked_sub(g.out_size[d])?;
        if g.stride[d] != 1 || lo > reach {
            return None;
        }
        (adjoint.padding_lo[d], adjoint.padding_hi[d]) = (reach - lo, end);
    }
    (adjoint.in_channels, adjoint.out_channels) = (g.out_channels, g.in_channels);
    (adjoint.in_size, adjoint.out_size) = (g.out_size, g.in_size);
    Some(adjoint)
}

/// `g`'s weights as those of [`adjoint_geometry`]: per group, `w̃[c][o]` is
/// `w[o][c]` with its taps in reverse order (a flip along every axis), made
/// in parallel, a source channel's kernels at a time (on one thread it took
/// 4.5% of ResNet's 14×14 layer's backward pass).
pub(crate) fn adjoint_weights<T: Copy + Send + Sync>(g: &ConvGeometry, w: &[T]) -> Vec<T> {
    let (cs, cd, taps) = (g.in_channels_per_group(), g.out_channels_per_group(), g.kernel_volume());
    let mut flipped = Vec::with_capacity(w.len());
    flipped.spare_capacity_mut()[..w.len()].par_chunks_mut((cd * taps).max(1)).tasks().enumerate().for_each(
        |(index, kernels)| {
            let (group, c) = (index / cs, index % cs);
            for (o, kernel) in kernels.chunks_exact_mut(taps).enumerate() {
                let source = &w[((group * cd + o) * cs + c) * taps..][..taps];
                kernel.iter_mut().zip(source.iter().rev()).for_each(|(k, &v)| _ = k.write(v));
            }
        },
    );
    // SAFETY: the chunks cover `w.len()` elements (`groups · cs` chunks of `cd` kernels), each written above.
    unsafe { flipped.set_len(w.len()) };
    flipped
}

pub(crate) use weight::{correlate_weight, weight_workspace_bytes};

/// What [`correlate`] (or [`correlate_weight`]) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// `y` holds the result.
    Done,
    /// An output (before the activation) is an infinity or a NaN; `y` is partly written.
    NotFinite,
}

/// How the tiles cover one spatial axis.
struct Axis {
    /// Transform points per tile: 4 along a 3-tap axis, 1 along a 1-tap one.
    points: usize,
    /// Outputs per tile: 2 or 1.
    outputs: usize,
    /// Per tile: the input coordinate of each point (`NONE` in the padding),
    /// and that of its first point, signed (it may lie in the padding).
    inputs: Vec<[usize; 4]>,
    first_inputs: Vec<isize>,
    /// Per tile: the output coordinate of each output (`NONE` past the edge).
    dsts: Vec<[usize; 2]>,
}

impl Axis {
    fn new(g: &ConvGeometry, d: usize) -> Axis {
        let (size, out, pad) = (g.in_size[d] as i128, g.out_size[d], g.padding_lo[d] as i128);
        let coordinate = |i: i128| if (0..size).contains(&i) { i as usize } else { NONE };
        let (mut inputs, mut first_inputs, mut dsts) = (Vec::new(), Vec::new(), Vec::new());
        if g.kernel_size[d] == 1 {
            let stride = g.stride[d] as i128;
            for o in 0..out {
                inputs.push([coordinate(o as i128 * stride - pad), NONE, NONE, NONE]);
                first_inputs.push((o as i128 * stride - pad) as isize);
                dsts.push([o, NONE]);
            }
            return Axis { points: 1, outputs: 1, inputs, first_inputs, dsts };
        }
        let dilation = g.dilation[d];
        for phase in 0..dilation.min(out) {
            for o in (phase..out).step_by(2 * dilation) {
                inputs.push(std::array::from_fn(|u| coordinate(o as i128 + (u * dilation) as i128 - pad)));
                first_inputs.push((o as i128 - pad) as isize);
                dsts.push([o, if o + dilation < out { o + dilation } else { NONE }]);
            }
        }
        Axis { points: 4, outputs: 2, inputs, first_inputs, dsts }
    }

    fn tiles(&self) -> usize {
        self.inputs.len()
    }
}

/// The tiling of an op: its three axes and the strides of the transform points.
struct Tiling {
    axes: [Axis; 3],
    /// Transform points per tile (`∏ points`), and the stride of each axis among them.
    points: usize,
    point_stride: [usize; 3],
    /// Tiles per image, and in all.
    per_image: usize,
    tiles: usize,
    /// Per 4-point axis, in the order they are transformed: the axis and the
    /// first points of the lines the 1-D transform runs on, for the weights
    /// (whose later axes hold taps only), the inputs (every point) and the
    /// outputs (whose earlier axes hold outputs only).
    weight_lines: Vec<(usize, Vec<usize>)>,
    input_lines: Vec<(usize, Vec<usize>)>,
    output_lines: Vec<(usize, Vec<usize>)>,
    /// The points that hold the outputs once every axis is transformed back.
    output_points: Vec<usize>,
    /// Where in `x` each point of a tile inside the input lies, from its first.
    point_offsets: Vec<usize>,
    /// How far apart in `x` the first points of neighbouring tiles along the last axis are.
    run_step: usize,
    /// Where in `y` each of `output_points` lies, from the tile's first output.
    output_offsets: Vec<usize>,
    /// How far apart in `y` the first outputs of neighbouring tiles along the last axis are.
    out_step: usize,
    /// Whether a tile's two outputs along the last axis are neighbours in `y`
    /// (3 taps, dilation 1), so that a run of tiles writes one contiguous row.
    pairs: bool,
    /// Where the kernels transform whole rows of tiles in registers
    /// ([`Kernels::winograd_input_row`]): 2-D and 1-D tiles (1 tap along
    /// the first axis) at dilation 1 along the last.
    tile_rows: Option<TileRowShape>,
}

impl Tiling {
    fn new(g: &ConvGeometry) -> Tiling {
        let axes = [0, 1, 2].map(|d| Axis::new(g, d));
        let point_stride = [axes[1].points * axes[2].points, axes[2].points, 1];
        let per_image = axes.iter().map(Axis::tiles).product::<usize>();
        let points = [0, 1, 2].map(|d| axes[d].points);
        let outputs = [0, 1, 2].map(|d| axes[d].outputs);
        let lines = |extent: &dyn Fn(usize, usize) -> usize| -> Vec<(usize, Vec<usize>)> {
            (0..3)
                .filter(|&axis| points[axis] == 4)
                .map(|axis| {
                    let extent = [0, 1, 2].map(|d| if d == axis { 1 } else { extent(axis, d) });
                    (axis, grid(extent, point_stride))
                })
                .collect()
        };
        Tiling {
            weight_lines: lines(&|axis, d| if d < axis { points[d] } else { g.kernel_size[d] }),
            input_lines: lines(&|_, d| points[d]),
            output_lines: lines(&|axis, d| if d < axis { outputs[d] } else { points[d] }),
            output_points: grid(outputs, point_stride),
            run_step: if points[2] == 4 { 2 * g.dilation[2] } else { g.stride[2] },
            output_offsets: grid(outputs, {
                let [_, oh, ow] = g.out_size;
                let step = |d: usize| if points[d] == 4 { g.dilation[d] } else { 0 };
                [step(0) * oh * ow, step(1) * ow, step(2)]
            }),
            out_step: if points[2] == 4 { 2 * g.dilation[2] } else { 1 },
            pairs: points[2] == 4 && g.dilation[2] == 1,
            tile_rows: (points[2] == 4 && g.dilation[2] == 1 && points[0] == 1).then(|| TileRowShape {
                rows: points[1],
                row_gap: g.dilation[1] * g.in_size[2],
                width: g.in_size[2],
            }),
            point_offsets: grid(points, {
                let [_, ih, iw] = g.in_size;
                let step = |d: usize| if points[d] == 4 { g.dilation[d] } else { 0 };
                [step(0) * ih * iw, step(1) * iw, step(2)]
            }),
            points: point_stride[0] * points[0],
            point_stride,
            per_image,
            tiles: g.batch * per_image,
            axes,
        }
    }
}

/// The points `u0 · stride[0] + u1 · stride[1] + u2 · stride[2]` for every `u < extent`.
fn grid(extent: [usize; 3], stride: [usize; 3]) -> Vec<usize> {
    let mut points = Vec::with_capacity(extent.iter().product());
    for u0 in 0..extent[0] {
        for u1 in 0..extent[1] {
            for u2 in 0..extent[2] {
                points.push(u0 * stride[0] + u1 * stride[1] + u2 * stride[2]);
            }
        }
    }
    points
}

/// The four rows `start`, `start + gap`, … of `buf`, each `len` long.
#[inline(always)]
fn rows4<A>(buf: &mut [A], start: usize, gap: usize, len: usize) -> [&mut [A]; 4] {
    let (r0, rest) = buf[start..].split_at_mut(gap);
    let (r1, rest) = rest.split_at_mut(gap);
    let (r2, r3) = rest.split_at_mut(gap);
    [&mut r0[..len], &mut r1[..len], &mut r2[..len], &mut r3[..len]]
}

/// `Bᵀ d` along one axis, in place on four rows of tiles.
#[inline(always)]
fn input_transform<A: Accumulator>([r0, r1, r2, r3]: [&mut [A]; 4]) {
    for (((d0, d1), d2), d3) in r0.iter_mut().zip(r1.iter_mut()).zip(r2.iter_mut()).zip(r3.iter_mut()) {
        let (a, b, c, d) = (*d0, *d1, *d2, *d3);
        *d0 = a - c;
        *d1 = b + c;
        *d2 = c - b;
        *d3 = b - d;
    }
}

/// `Aᵀ m` along one axis, in place: the two outputs replace the first two rows.
#[inline(always)]
fn output_transform<A: Accumulator>([r0, r1, r2, r3]: [&mut [A]; 4]) {
    for (((m0, m1), m2), m3) in r0.iter_mut().zip(r1.iter_mut()).zip(r2.iter()).zip(r3.iter()) {
        let (a, b, c, d) = (*m0, *m1, *m2, *m3);
        *m0 = a + b + c;
        *m1 = b - c - d;
    }
}

/// `G g` along one axis, in place on four rows of output channels whose first three hold the taps.
fn weight_transform<A: Accumulator>([r0, r1, r2, r3]: [&mut [A]; 4]) {
    let half = A::from_f64(0.5);
    for (((g0, g1), g2), g3) in r0.iter().zip(r1.iter_mut()).zip(r2.iter_mut()).zip(r3.iter_mut()) {
        let (a, b, c) = (*g0, *g1, *g2);
        *g1 = (a + b + c) * half;
        *g2 = (a - b + c) * half;
        *g3 = c;
    }
}

/// `y = x ⋆ w (+ bias)` by F(2, 3), for a geometry [`applicable`] accepts.
#[allow(clippy::too_many_arguments)]
pub(crate) fn correlate<T: Element>(
    ks: &Kernels<T::Accum>,
    keep: &Keep,
    g: &ConvGeometry,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    activation: Activation,
    y: &mut [T],
) -> Outcome {
    let tiling = Tiling::new(g);
    if tiling.tiles == 0 {
        return Outcome::Done;
    }
    let shape = Shape::new(ks, g, &tiling, rayon::current_num_threads());
    let u = transformed_weights(ks, g, &tiling, w);
    let not_finite = AtomicBool::new(false);
    let y = Dst(y.as_mut_ptr());
    let op = Op { ks, g, tiling: &tiling, shape: &shape, x, u: &u, bias, activation, y: &y };
    let workspace = || {
        let mut kept = keep.take(Workspace::<T::Accum>::default);
        kept.fit(&shape, &tiling);
        kept
    };
    (0..shape.tasks()).into_par_iter().tasks().for_each_init(workspace, |ws, index| {
        if not_finite.load(Ordering::Relaxed) {
            return;
        }
        let task = shape.task(index, &tiling);
        // SAFETY: tasks write disjoint elements of `y` (see `Dst`), and it outlives the loop.
        if !vectorised(unsafe { ForwardTask::new(ws, &op, &task) }) {
            not_finite.store(true, Ordering::Relaxed);
        }
    });
    if not_finite.into_inner() { Outcome::NotFinite } else { Outcome::Done }
}

/// What every task of an op reads, and `y`.
struct Op<'a, T: Element> {
    ks: &'a Kernels<T::Accum>,
    g: &'a ConvGeometry,
    tiling: &'a Tiling,
    shape: &'a Shape,
    x: &'a [T],
    u: &'a [T::Accum],
    bias: Option<&'a [T]>,
    activation: Activation,
    y: &'a Dst<T>,
}

/// A body of loops the compiler vectorises, run by [`vectorised`]: `run` is
/// `#[inline(always)]` in every impl, so that it is compiled into each
/// instruction set's wrapper.
trait Vectorised {
    type Output;
    fn run(self) -> Self::Output;
}

/// Runs `body` compiled for the widest of AVX-512 (16 lanes) and AVX2 (8)
/// that the CPU has (the baseline x86-64 build has SSE's 4): the transforms
/// are loops over tiles or channels. Adds, subtracts and halvings round alike
/// at any width, so the results do not change.
fn vectorised<B: Vectorised>(body: B) -> B::Output {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx2")]
        fn avx512<B: Vectorised>(body: B) -> B::Output {
            body.run()
        }
        #[target_feature(enable = "avx2")]
        fn avx2<B: Vectorised>(body: B) -> B::Output {
            body.run()
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512 F.
            return unsafe { avx512(body) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { avx2(body) };
        }
    }
    body.run()
}

/// One task of [`correlate`]: locate its tiles, transform its inputs,
/// multiply, transform its outputs into `y`; false if an output is not finite.
struct ForwardTask<'a, 'b, T: Element> {
    ws: &'a mut Workspace<T::Accum>,
    op: &'a Op<'b, T>,
    task: &'a Task,
}

impl<'a, 'b, T: Element> ForwardTask<'a, 'b, T> {
    /// # Safety
    /// As [`Workspace::transform_outputs`]: no other task writes this task's outputs.
    unsafe fn new(ws: &'a mut Workspace<T::Accum>, op: &'a Op<'b, T>, task: &'a Task) -> Self {
        ForwardTask { ws, op, task }
    }
}

impl<T: Element> Vectorised for ForwardTask<'_, '_, T> {
    type Output = bool;
    #[inline(always)]
    fn run(self) -> bool {
        let ForwardTask { ws, op, task } = self;
        let (cs, tiles) = (op.shape.cs, op.shape.tiles);
        ws.tables.locate(op.g, op.tiling, task.first_tile, task.columns, tiles);
        let channels = task.group * cs..(task.group + 1) * cs;
        ws.tables.transform_inputs(op.ks, op.g, op.tiling, task.columns, channels, op.x, (&mut ws.v, cs, tiles));
        ws.multiply(op.ks, op.tiling, op.shape, task, op.u);
        // SAFETY: `new`'s contract.
        unsafe { ws.transform_outputs(op.g, op.tiling, op.shape, task, op.bias, op.activation, op.y) }
    }
}

/// `y`, written by tasks at disjoint elements: a task writes the outputs of
/// its own tiles (disjoint across tiles: each axis's tiles cover disjoint
/// outputs) for its own output channels.
struct Dst<T>(*mut T);

// SAFETY: see the type's comment; every write is to an element no other task touches.
unsafe impl<T: Send> Sync for Dst<T> {}

/// The sizes of an op's pieces.
struct Shape {
    mr: usize,
    nr: usize,
    groups: usize,
    /// Input and output channels per group.
    cs: usize,
    cd: usize,
    /// `MR`-row strips per group, and per task's block of them.
    strips: usize,
    strips_per_block: usize,
    strip_blocks: usize,
    tile_blocks: usize,
    /// Tiles per task, a multiple of `NR`.
    tiles: usize,
}

/// One task: a group, a block of tiles, a block of strips.
struct Task {
    group: usize,
    first_tile: usize,
    /// The columns it computes: its tiles, to a multiple of `NR` (the op's
    /// last block may have fewer than [`Shape::tiles`]).
    columns: usize,
    strips: std::ops::Range<usize>,
}

impl Shape {
    fn new<A>(ks: &Kernels<A>, g: &ConvGeometry, tiling: &Tiling, threads: usize) -> Shape {
        let (mr, nr) = (ks.nn_rows, ks.nn_cols);
        let (cs, cd) = (g.in_channels_per_group(), g.out_channels_per_group());
        let tiles = TILE_BLOCKS * nr;
        let tile_blocks = tiling.tiles.div_ceil(tiles).max(1);
        let strips = cd.div_ceil(mr);
        // As many strip blocks as keep U's rows in L2, and more where tiles alone give too few tasks.
        let min_tasks = TASKS_PER_THREAD * threads;
        let wanted = min_tasks.div_ceil(g.groups * tile_blocks).max(strips.div_ceil((ROWS / mr).max(1)));
        let strips_per_block = strips.div_ceil(wanted.min(strips).max(1));
        let strip_blocks = strips.div_ceil(strips_per_block);
        Shape { mr, nr, groups: g.groups, cs, cd, strips, strips_per_block, strip_blocks, tile_blocks, tiles }
    }

    fn tasks(&self) -> usize {
        self.groups * self.tile_blocks * self.strip_blocks
    }

    fn task(&self, index: usize, tiling: &Tiling) -> Task {
        let (group, rest) =
            (index / (self.tile_blocks * self.strip_blocks), index % (self.tile_blocks * self.strip_blocks));
        let (tile_block, strip_block) = (rest / self.strip_blocks, rest % self.strip_blocks);
        let (first, first_tile) = (strip_block * self.strips_per_block, tile_block * self.tiles);
        Task {
            group,
            first_tile,
            columns: (tiling.tiles - first_tile).min(self.tiles).next_multiple_of(self.nr),
            strips: first..(first + self.strips_per_block).min(self.strips),
        }
    }
}

/// `U`: per group and strip, per point `ξ`, `cs` steps of `MR` transformed
/// weights (zeros past the group's last output channel).
fn transformed_weights<T: Element>(
    ks: &Kernels<T::Accum>,
    g: &ConvGeometry,
    tiling: &Tiling,
    w: &[T],
) -> Vec<T::Accum> {
    let (mr, cs, cd, taps) = (ks.nn_rows, g.in_channels_per_group(), g.out_channels_per_group(), g.kernel_volume());
    let strips = cd.div_ceil(mr);
    let row = cs * mr;
    let len = g.groups * strips * tiling.points * row;
    let mut u = Vec::with_capacity(len);
    // Tap (t0, t1, t2) starts at point (t0, t1, t2).
    let tap_points = grid(g.kernel_size, tiling.point_stride);
    // Each task zeroes its own strip just before scattering the weights into
    // it, so that the scatter finds it in cache (zeroed whole by the caller,
    // `U` had left L2 by then: ResNet's 14×14 layer ran 4% slower).
    u.spare_capacity_mut()[..len].par_chunks_mut(tiling.points * row).tasks().enumerate().for_each(|(index, strip)| {
        let strip = zeroed(strip, T::Accum::ZERO);
        let (group, first) = (index / strips, index % strips * mr);
        for i in 0..mr.min(cd - first) {
            for c in 0..cs {
                let kernel = &w[((group * cd + first + i) * cs + c) * taps..][..taps];
                for (&point, &v) in tap_points.iter().zip(kernel) {
                    strip[point * row + c * mr + i] = v.to_accum();
                }
            }
        }
        // Each point's `cs × MR` values are one row: the 1-D transforms run along whole rows.
        for (axis, starts) in &tiling.weight_lines {
            for &start in starts {
                weight_transform(rows4(strip, start * row, tiling.point_stride[*axis] * row, row));
            }
        }
    });
    // SAFETY: the strips cover `len` elements, each zeroed or written above.
    unsafe { u.set_len(len) };
    u
}

/// A worker's buffers, kept from task to task and by the backend from op to op.
#[derive(Default)]
struct Workspace<A> {
    /// `V`: per point, `cs` rows of the task's tiles.
    v: Vec<A>,
    /// `M`: per point, the block's output channels (whole strips) × its tiles.
    m: Vec<A>,
    tables: Tables,
}

/// Where a block of consecutive tiles lies in `x` and in `y` (channel 0 of
/// each image), made by [`Tables::locate`] and read by the transforms.
#[derive(Default)]
struct Tables {
    /// Entries per point in `src` and `dst`: tile `t`'s entry for point `ξ` is at `ξ · stride + t`.
    stride: usize,
    /// The block's tiles inside the input, in runs along the last axis.
    runs: Vec<Run>,
    /// Where [`Tiling::tile_rows`] is: the block's tiles as rows of tiles
    /// (those past the op's last tile as rows in the padding), each with its first column.
    tile_rows: Vec<(usize, TileRow)>,
    /// The others (at the edges, or past the last tile), whose points are in `src`.
    edges: Vec<usize>,
    /// The block's tiles whose outputs are all inside `y`, in runs along the
    /// last axis (`first`: where in `y`, channel 0, the first tile's first
    /// output goes), and the others, whose outputs are in `dst`.
    out_runs: Vec<Run>,
    out_edges: Vec<usize>,
    /// Per point and edge tile: where in `x` (channel 0) the
    /// point's input is, or `NONE` in the padding; per output point and tile,
    /// where in `y` its output goes, or `NONE` past the edge.
    src: Vec<usize>,
    dst: Vec<usize>,
}

/// Neighbouring tiles of one row of tiles, whose first points lie
/// `Tiling::run_step` apart in `x` (or whose first outputs lie `out_step`
/// apart in `y`), all inside along the last axis.
struct Run {
    tile: usize,
    len: usize,
    /// Where in `x` (or `y`), channel 0, the first tile's first
    /// point (or output) lies, as if the padding were there.
    first: isize,
    /// Bit `u0 · points1 + u1`: whether the tiles' points at `(u0, u1)` along
    /// the leading axes are inside `x` (the same for every tile of a row).
    rows: u32,
}

impl Run {
    /// Extends the last of `runs` by tile `t` if it continues it, or starts a new run.
    fn push(runs: &mut Vec<Run>, t: usize, first: isize, rows: u32, step: usize) {
        match runs.last_mut() {
            Some(run)
                if run.tile + run.len == t && run.rows == rows && run.first + (run.len * step) as isize == first =>
            {
                run.len += 1
            }
            _ => runs.push(Run { tile: t, len: 1, first, rows }),
        }
    }
}

/// `dst[i] = src[i · step]`, widened; in pairs where `step` is 2, so the loop vectorises.
#[inline(always)]
fn gather<T: Element>(dst: &mut [T::Accum], src: &[T], step: usize) {
    match step {
        1 => dst.iter_mut().zip(src).for_each(|(d, &s)| *d = s.to_accum()),
        2 => {
            let Some((last, body)) = dst.split_last_mut() else { return };
            body.iter_mut().zip(src.chunks_exact(2)).for_each(|(d, pair)| *d = pair[0].to_accum());
            // The last element's partner may lie past `x`.
            *last = src[2 * body.len()].to_accum();
        }
        _ => dst.iter_mut().enumerate().for_each(|(i, d)| *d = src[i * step].to_accum()),
    }
}

impl<A: Accumulator> Workspace<A> {
    /// Grows the buffers (never shrinks them) to hold a task of `shape`:
    /// `V` and `M` are written before they are read.
    fn fit(&mut self, shape: &Shape, tiling: &Tiling) {
        let (v, m) =
            (tiling.points * shape.cs * shape.tiles, tiling.points * shape.strips_per_block * shape.mr * shape.tiles);
        self.v.resize(self.v.len().max(v), A::ZERO);
        self.m.resize(self.m.len().max(m), A::ZERO);
    }
}

impl Tables {
    /// Fills the tables of tiles `first_tile..first_tile + columns` (those
    /// past the op's last tile read and write nothing), `stride` entries per point.
    #[inline(always)]
    fn locate(&mut self, g: &ConvGeometry, tiling: &Tiling, first_tile: usize, columns: usize, stride: usize) {
        let tiles = stride;
        self.stride = stride;
        for table in [&mut self.src, &mut self.dst] {
            table.resize(table.len().max(tiling.points * stride), NONE);
        }
        let (in_volume, out_volume) = (g.in_volume(), g.out_volume());
        let [_, ih, iw] = g.in_size;
        let [_, oh, ow] = g.out_size;
        let [a0, a1, a2] = &tiling.axes;
        self.runs.clear();
        self.edges.clear();
        self.out_runs.clear();
        self.out_edges.clear();
        self.dst.fill(NONE);
        self.tile_rows.clear();
        let tile_rows = tiling.tile_rows.is_some();
        for t in 0..columns {
            let tile = first_tile + t;
            if tile >= tiling.tiles {
                if tile_rows {
                    self.push_tile_row(t, TileRow { first: 0, column: 0, rows: 0, len: 1 });
                }
                self.edges.push(t);
                self.out_edges.push(t);
                for xi in 0..tiling.points {
                    self.src[xi * tiles + t] = NONE;
                }
                continue;
            }
            let (n, rest) = (tile / tiling.per_image, tile % tiling.per_image);
            let (j0, j1, j2) = (rest / (a1.tiles() * a2.tiles()), rest / a2.tiles() % a1.tiles(), rest % a2.tiles());
            let (x_image, y_image) = (n * g.in_channels * in_volume, n * g.out_channels * out_volume);
            // Where the tile's first point lies (maybe in the padding), and which rows of its points are inside.
            let (s0, s1, s2) = (a0.first_inputs[j0], a1.first_inputs[j1], a2.first_inputs[j2]);
            let first = x_image as isize + (s0 * ih as isize + s1) * iw as isize + s2;
            let mut rows = 0;
            for u0 in 0..a0.points {
                for u1 in 0..a1.points {
                    if a0.inputs[j0][u0] != NONE && a1.inputs[j1][u1] != NONE {
                        rows |= 1 << (u0 * a1.points + u1);
                    }
                }
            }
            if tile_rows {
                self.push_tile_row(t, TileRow { first, column: s2, rows, len: 1 });
            }
            // Tiles inside along the last axis read their points in runs, rows of them in the padding as zeros.
            let interior = a2.inputs[j2][..a2.points].iter().all(|&i| i != NONE);
            if interior {
                Run::push(&mut self.runs, t, first, rows, tiling.run_step);
            } else {
                self.edges.push(t);
            }
            let filled = |axis: &Axis, j: usize| axis.dsts[j][..axis.outputs].iter().all(|&o| o != NONE);
            let whole = filled(a0, j0) && filled(a1, j1) && filled(a2, j2);
            if whole {
                let (o0, o1, o2) = (a0.dsts[j0][0], a1.dsts[j1][0], a2.dsts[j2][0]);
                let first = y_image + (o0 * oh + o1) * ow + o2;
                Run::push(&mut self.out_runs, t, first as isize, u32::MAX, tiling.out_step);
            } else {
                self.out_edges.push(t);
            }
            for u0 in 0..a0.points {
                for u1 in 0..a1.points {
                    for u2 in 0..a2.points {
                        let xi = u0 * tiling.point_stride[0] + u1 * tiling.point_stride[1] + u2;
                        let (i0, i1, i2) = (a0.inputs[j0][u0], a1.inputs[j1][u1], a2.inputs[j2][u2]);
                        if !interior {
                            let inside = i0 != NONE && i1 != NONE && i2 != NONE;
                            self.src[xi * tiles + t] = if inside { x_image + (i0 * ih + i1) * iw + i2 } else { NONE };
                        }
                        // Outputs sit at the first points along each axis.
                        if !whole && u0 < a0.outputs && u1 < a1.outputs && u2 < a2.outputs {
                            let (o0, o1, o2) = (a0.dsts[j0][u0], a1.dsts[j1][u1], a2.dsts[j2][u2]);
                            if o0 != NONE && o1 != NONE && o2 != NONE {
                                self.dst[xi * tiles + t] = y_image + (o0 * oh + o1) * ow + o2;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Extends the last of the block's rows of tiles by tile `t` (`row`, one
    /// tile) if it continues it, or starts a new row.
    fn push_tile_row(&mut self, t: usize, row: TileRow) {
        match self.tile_rows.last_mut() {
            Some((start, last))
                if *start + last.len == t
                    && last.rows == row.rows
                    && last.first + 2 * last.len as isize == row.first
                    && last.column + 2 * last.len as isize == row.column =>
            {
                last.len += 1
            }
            _ => self.tile_rows.push((t, row)),
        }
    }

    /// `V = Bᵀ d B` for `channels` of `x`: gathers each one's points of the
    /// located tiles and transforms them along each 4-point axis. The row of
    /// point `ξ` of the `r`-th channel is `v[(ξ · rows + r) · ld..]`, its
    /// first `columns` entries written.
    #[allow(clippy::too_many_arguments)] // the op's operands and where the rows go
    #[inline(always)]
    fn transform_inputs<T: Element>(
        &self,
        ks: &Kernels<T::Accum>,
        g: &ConvGeometry,
        tiling: &Tiling,
        columns: usize,
        channels: std::ops::Range<usize>,
        x: &[T],
        (v, rows, ld): (&mut [T::Accum], usize, usize),
    ) {
        // Rows of tiles in registers where `x` holds the accumulators themselves (f32, f64).
        if let Some((shape, x)) = tiling.tile_rows.as_ref().zip(as_accumulators(x)) {
            for (r, c) in channels.enumerate() {
                let channel = (c * g.in_volume()) as isize;
                for &(t, row) in &self.tile_rows {
                    let row = TileRow { first: row.first + channel, ..row };
                    ks.winograd_input_row(x, shape, &row, &mut v[r * ld + t..], rows * ld);
                }
            }
            return;
        }
        for (r, c) in channels.enumerate() {
            let channel = c * g.in_volume();
            for (xi, &offset) in tiling.point_offsets.iter().enumerate() {
                let row = &mut v[(xi * rows + r) * ld..][..columns];
                let lead = 1 << (xi / tiling.axes[2].points);
                for run in &self.runs {
                    let dst = &mut row[run.tile..][..run.len];
                    match run.rows & lead {
                        0 => dst.fill(T::Accum::ZERO),
                        // Inside `x`: the point's row is.
                        _ => gather(dst, &x[(run.first + offset as isize) as usize + channel..], tiling.run_step),
                    }
                }
                for &t in &self.edges {
                    let at = self.src[xi * self.stride + t];
                    row[t] = if at == NONE { T::Accum::ZERO } else { x[at + channel].to_accum() };
                }
            }
            for (axis, starts) in &tiling.input_lines {
                let gap = tiling.point_stride[*axis] * rows * ld;
                for &start in starts {
                    input_transform(rows4(v, (start * rows + r) * ld, gap, columns));
                }
            }
        }
    }
}

impl<A: Accumulator> Workspace<A> {
    /// `M_ξ = U_ξ · V_ξ` for every point, over the task's strips.
    #[inline(always)]
    fn multiply(&mut self, ks: &Kernels<A>, tiling: &Tiling, shape: &Shape, task: &Task, u: &[A]) {
        let (mr, nr, cs, tiles, points) = (shape.mr, shape.nr, shape.cs, shape.tiles, tiling.points);
        let block_rows = shape.strips_per_block * mr;
        for xi in 0..points {
            for k0 in (0..cs).step_by(KC) {
                let k = KC.min(cs - k0);
                for j in (0..task.columns).step_by(nr) {
                    let b = &self.v[(xi * cs + k0) * tiles + j..];
                    for (i, s) in task.strips.clone().enumerate() {
                        let strip = ((task.group * shape.strips + s) * points + xi) * cs * mr;
                        let a = &u[strip + k0 * mr..][..k * mr];
                        let c = &mut self.m[(xi * block_rows + i * mr) * tiles + j..];
                        ks.nn((shape.cd - s * mr, nr), k, AOperand::Packed(a), b, tiles, c, tiles, k0 > 0);
                    }
                }
            }
        }
    }

    /// `y = Aᵀ M A (+ bias)`, activated, for the task's channels and tiles;
    /// false if an output (before the activation) is not finite.
    ///
    /// # Safety
    /// `y` is the op's output, alive for the call, and no other task writes
    /// these channels of these tiles.
    #[allow(clippy::too_many_arguments)] // the op's operands and the task's place in it
    #[inline(always)]
    unsafe fn transform_outputs<T: Element<Accum = A>>(
        &mut self,
        g: &ConvGeometry,
        tiling: &Tiling,
        shape: &Shape,
        task: &Task,
        bias: Option<&[T]>,
        activation: Activation,
        y: &Dst<T>,
    ) -> bool {
        let (mr, tiles) = (shape.mr, shape.tiles);
        let mut finite = true;
        let block_rows = shape.strips_per_block * mr;
        let out_volume = g.out_volume();
        let first = task.strips.start * mr;
        for i in 0..(task.strips.len() * mr).min(shape.cd - first) {
            let o = first + i;
            // Axis by axis, each line's two outputs replace its first two points.
            for (axis, starts) in &tiling.output_lines {
                let gap = tiling.point_stride[*axis] * block_rows * tiles;
                for &start in starts {
                    output_transform(rows4(&mut self.m, (start * block_rows + i) * tiles, gap, task.columns));
                }
            }
            let b = bias.map_or(A::ZERO, |b| b[task.group * shape.cd + o].to_accum());
            let out = |v: A| T::from_accum(activation.apply(v + b));
            let channel = (task.group * shape.cd + o) * out_volume;
            let row = |xi: usize| &self.m[(xi * block_rows + i) * tiles..][..task.columns];
            for (&xi, &offset) in tiling.output_points.iter().zip(&tiling.output_offsets) {
                // A count, not a short-circuit, so that the check vectorises.
                finite &= row(xi).iter().filter(|&&v| !(v + b).is_finite()).count() == 0;
                for &t in &self.tables.out_edges {
                    let at = self.tables.dst[xi * tiles + t];
                    if at != NONE {
                        // SAFETY: `at + channel` is an element of `y` (the table holds only
                        // outputs inside it) that only this task writes (the caller's contract).
                        unsafe { *y.0.add(at + channel) = out(row(xi)[t]) };
                    }
                }
                if tiling.pairs && xi % 2 == 1 {
                    continue; // the right output of a pair (the last coordinate of `xi`; its other strides are multiples of 4): written with the left one below
                }
                for run in &self.tables.out_runs {
                    let start = run.first as usize + offset + channel;
                    let values = &row(xi)[run.tile..][..run.len];
                    if tiling.pairs {
                        // SAFETY: the run's outputs at these leading points are `2 · len`
                        // neighbours in `y`, all this task's (the caller's contract).
                        let dst = unsafe { std::slice::from_raw_parts_mut(y.0.add(start), 2 * run.len) };
                        let right = &row(xi + 1)[run.tile..][..run.len];
                        for ((pair, &l), &r) in dst.chunks_exact_mut(2).zip(values).zip(right) {
                            pair[0] = out(l);
                            pair[1] = out(r);
                        }
                    } else {
                        for (j, &v) in values.iter().enumerate() {
                            // SAFETY: as above, one output per tile of the run.
                            unsafe { *y.0.add(start + j * tiling.out_step) = out(v) };
                        }
                    }
                }
            }
        }
        finite
    }
}

/// Bytes of scratch [`correlate`] takes for `g` with `threads` tasks in
/// flight: the transformed weights, and per task `V`, `M` and the tables.
pub(crate) fn workspace_bytes<A>(ks: &Kernels<A>, g: &ConvGeometry, threads: usize) -> usize {
    let tiling = Tiling::new(g);
    let shape = Shape::new(ks, g, &tiling, threads);
    let size = std::mem::size_of::<A>();
    let u = shape.groups * shape.strips * shape.mr * tiling.points * shape.cs * size;
    let per_task = tiling.points * shape.tiles * (shape.cs + shape.strips_per_block * shape.mr) * size
        + 2 * tiling.points * shape.tiles * std::mem::size_of::<usize>();
    u + threads.min(shape.tasks()) * per_task
}
