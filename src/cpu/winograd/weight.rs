//! The weight gradient by F(2, 3): the forward transforms read backwards.
//!
//! A tile's outputs are `y = Aᵀ[(G g) ⊙ (Bᵀ d)]` along each 3-tap axis, so
//! the gradient of the kernel `g` over that tile is `Gᵀ[(A dy) ⊙ (Bᵀ d)]`,
//! and over all tiles `Gᵀ` of the sum. Per transform point `ξ` the sum over
//! tiles is one GEMM that reduces along them,
//! `M_ξ (K × C) = D_ξ (K × tiles) · V_ξᵀ (tiles × C)`, with `D = A dy` (each
//! output channel's gradient, transformed) and `V = Bᵀ d` (as the forward
//! pass's); then `dW = Gᵀ M` once per weight. For 3×3, 16 products per tile
//! and channel pair where the direct sum takes 36.
//!
//! Tiles go in blocks of at most [`BLOCK_TILES`], one after another: the
//! tables of a block are made once, its `V` and `D` rows transformed in
//! parallel (a task per group of [`CHUNK`] channels, so each writes one
//! contiguous region), then its GEMMs run in parallel by (group, point, block
//! of output channels) on the `nt` kernel, each adding the block's sum into
//! `M`. Each weight is one fixed chain of operations whatever the thread
//! count: blocks in order, and within one the kernel's fixed reduction.
//!
//! As in the forward pass, the transforms may meet ∞ − ∞ where the direct sum
//! meets ∞, and a non-finite input or gradient reaches some weight (as ∞ or
//! NaN): an op with a weight that is not finite reports
//! [`Outcome::NotFinite`] and the caller computes it another way.

use rayon::prelude::*;

use super::{NONE, Outcome, Tables, Tiling, Vectorised, grid, rows4, vectorised};
use crate::cpu::keep::Keep;
use crate::cpu::kernels::Kernels;
use crate::cpu::threads::Tasks;
use crate::element::{Accumulator, Element};
use crate::geometry::ConvGeometry;

/// Tiles a block reduces at most: long enough that the `nt` kernel's final
/// sums across lanes are a small part of each call, and that a block's two
/// parallel loops and its tables are few (U-Net's and ResNet's 64-channel
/// layers spent 1.1-1.6x as long transforming in blocks of 256 and 128
/// tiles, 2 Zen 4 threads), where a GEMM task's rows of `D` and `V`
/// (2 × 64 × 512 f32) still fit in L2.
const BLOCK_TILES: usize = 512;
/// Bytes a block's `V` and `D` take at most (fewer tiles per block where its
/// channels are many).
const BLOCK_BYTES: usize = 16 << 20;
/// Channels a transform task takes at least: the rows of `V` and `D` are
/// grouped by this many (rounded to whole `nt` tiles).
const CHUNK: usize = 16;
/// Parallel GEMM tasks an op aims for per thread.
const TASKS_PER_THREAD: usize = 4;

/// How an op is split.
struct Plan {
    points: usize,
    /// Input and output channels per group, and both padded to whole chunks.
    cs: usize,
    cd: usize,
    cs_pad: usize,
    cd_pad: usize,
    /// Channels per transform chunk: whole `nt` tiles on both sides.
    chunk: usize,
    /// Tiles per block (the `ld` of `V` and `D`), and blocks.
    block: usize,
    blocks: usize,
    /// Output channels a GEMM task computes.
    task_rows: usize,
}

impl Plan {
    fn new<A>(ks: &Kernels<A>, g: &ConvGeometry, tiling: &Tiling, threads: usize) -> Plan {
        let (mr, nr) = (ks.nt_rows, ks.nt_cols);
        let unit = mr * nr / gcd(mr, nr);
        let chunk = CHUNK.next_multiple_of(unit);
        let (cs, cd) = (g.in_channels_per_group(), g.out_channels_per_group());
        let (cs_pad, cd_pad) = (cs.next_multiple_of(chunk), cd.next_multiple_of(chunk));
        let points = tiling.points;
        let per_tile = g.groups * points * (cs_pad + cd_pad) * std::mem::size_of::<A>();
        let fits = (BLOCK_BYTES / per_tile.max(1)) / ks.lanes * ks.lanes;
        let block = BLOCK_TILES.min(fits).min(tiling.tiles.next_multiple_of(ks.lanes)).max(ks.lanes);
        // Output channels per GEMM task: up to four chunks (each `V` row
        // then meets more of `D` while in L1), fewer where tasks are few;
        // a whole number of tasks per point.
        let wanted = TASKS_PER_THREAD * threads;
        let task_rows = (1..=4)
            .rev()
            .map(|k| k * chunk)
            .find(|&rows| cd_pad.is_multiple_of(rows) && g.groups * points * (cd_pad / rows) >= wanted)
            .unwrap_or(chunk);
        Plan { points, cs, cd, cs_pad, cd_pad, chunk, block, blocks: tiling.tiles.div_ceil(block), task_rows }
    }

    /// Elements of one chunk's transformed rows: `points × chunk` rows of `block` tiles.
    fn region(&self) -> usize {
        self.points * self.chunk * self.block
    }

    /// Chunks of `V` (then of `D`) per group.
    fn chunks(&self) -> (usize, usize) {
        (self.cs_pad / self.chunk, self.cd_pad / self.chunk)
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// `A dy` along one axis, in place: the two outputs in the first two rows become four points.
#[inline(always)]
fn gradient_transform<A: Accumulator>([r0, r1, r2, r3]: [&mut [A]; 4]) {
    for (((p0, p1), p2), p3) in r0.iter_mut().zip(r1.iter_mut()).zip(r2.iter_mut()).zip(r3.iter_mut()) {
        let (a, b) = (*p0, *p1);
        *p1 = a + b;
        *p2 = a - b;
        *p3 = A::ZERO - b;
    }
}

/// `Gᵀ m` along one axis, in place: four points become the three taps in the first three rows.
#[inline(always)]
fn weight_gradient_transform<A: Accumulator>([r0, r1, r2, r3]: [&mut [A]; 4]) {
    let half = A::from_f64(0.5);
    for (((m0, m1), m2), m3) in r0.iter_mut().zip(r1.iter_mut()).zip(r2.iter_mut()).zip(r3.iter()) {
        let (a, b, c, d) = (*m0, *m1, *m2, *m3);
        let (sum, difference) = ((b + c) * half, (b - c) * half);
        *m0 = a + sum;
        *m1 = difference;
        *m2 = sum + d;
    }
}

impl Tables {
    /// `D = A dy Aᵀ` for `channels` of `dy`: gathers each one's outputs of the
    /// located tiles (zeros past the edges) and expands them along each
    /// 4-point axis, last axis first. Rows as in [`Tables::transform_inputs`].
    #[allow(clippy::too_many_arguments)] // as `transform_inputs`
    #[inline(always)]
    fn transform_gradients<T: Element>(
        &self,
        g: &ConvGeometry,
        tiling: &Tiling,
        columns: usize,
        channels: std::ops::Range<usize>,
        dy: &[T],
        (d, rows, ld): (&mut [T::Accum], usize, usize),
    ) {
        for (r, o) in channels.enumerate() {
            let channel = o * g.out_volume();
            for (&xi, &offset) in tiling.output_points.iter().zip(&tiling.output_offsets) {
                let row = &mut d[(xi * rows + r) * ld..][..columns];
                for run in &self.out_runs {
                    let first = run.first as usize + offset + channel;
                    super::gather(&mut row[run.tile..][..run.len], &dy[first..], tiling.out_step);
                }
                for &t in &self.out_edges {
                    let at = self.dst[xi * self.stride + t];
                    row[t] = if at == NONE { T::Accum::ZERO } else { dy[at + channel].to_accum() };
                }
            }
            // The reverse of the forward pass's order: each axis expands lines whose
            // earlier axes still hold outputs only and whose later ones hold every point.
            for (axis, starts) in tiling.output_lines.iter().rev() {
                let gap = tiling.point_stride[*axis] * rows * ld;
                for &start in starts {
                    gradient_transform(rows4(d, (start * rows + r) * ld, gap, columns));
                }
            }
        }
    }
}

/// `dw = x ⋆ dy` (the weight gradient of the correlation `g`, an
/// [`applicable`](super::applicable) geometry) by F(2, 3).
pub(crate) fn correlate_weight<T: Element>(
    ks: &Kernels<T::Accum>,
    keep: &Keep,
    g: &ConvGeometry,
    x: &[T],
    dy: &[T],
    dw: &mut [T],
) -> Outcome {
    let tiling = Tiling::new(g);
    let plan = Plan::new(ks, g, &tiling, rayon::current_num_threads());
    let (points, groups, taps) = (plan.points, g.groups, g.kernel_volume());
    if tiling.tiles == 0 || plan.cs * plan.cd * taps == 0 {
        dw.fill(T::from_f64(0.0));
        return Outcome::Done;
    }
    let (v_chunks, d_chunks) = plan.chunks();
    let region = plan.region();
    // Per group, the chunks of `V`, then per group those of `D`. `M` per
    // group and point: `cd_pad × cs_pad`, zeroed by the first block's tasks.
    let mut buffers = keep.take(Buffers::<T::Accum>::default);
    let Buffers { vd, m, tables } = &mut *buffers;
    vd.resize(vd.len().max(groups * (v_chunks + d_chunks) * region), T::Accum::ZERO);
    m.resize(groups * points * plan.cd_pad * plan.cs_pad, T::Accum::ZERO);
    for block in 0..plan.blocks {
        let first_tile = block * plan.block;
        let columns = (tiling.tiles - first_tile).min(plan.block).next_multiple_of(ks.lanes);
        tables.locate(g, &tiling, first_tile, columns, plan.block);
        let tables = &*tables;
        vd[..groups * (v_chunks + d_chunks) * region].par_chunks_mut(region).tasks().enumerate().for_each(
            |(index, rows)| {
                let inputs = index < groups * v_chunks;
                let (index, chunks, per_group) = match inputs {
                    true => (index, v_chunks, plan.cs),
                    false => (index - groups * v_chunks, d_chunks, plan.cd),
                };
                let (group, k) = (index / chunks, index % chunks);
                let channels =
                    group * per_group + k * plan.chunk..group * per_group + per_group.min((k + 1) * plan.chunk);
                let source = if inputs { x } else { dy };
                // A last chunk's rows past its channels meet the other side's padding rows: zeros.
                for xi in 0..points {
                    for r in channels.len()..plan.chunk {
                        rows[(xi * plan.chunk + r) * plan.block..][..columns].fill(T::Accum::ZERO);
                    }
                }
                let target = (rows, plan.chunk, plan.block);
                vectorised(TransformChunk {
                    ks,
                    tables,
                    g,
                    tiling: &tiling,
                    columns,
                    inputs,
                    channels,
                    source,
                    target,
                });
            },
        );
        let (v, d) = vd.split_at(groups * v_chunks * region);
        let blocks_per_point = plan.cd_pad.div_ceil(plan.task_rows);
        m.par_chunks_mut(plan.task_rows * plan.cs_pad).tasks().enumerate().for_each(|(index, m)| {
            let (group, xi, first) = (
                index / (points * blocks_per_point),
                index / blocks_per_point % points,
                index % blocks_per_point * plan.task_rows,
            );
            // Row `r` of point `xi` in a group's chunked rows.
            let row = |chunks: usize, r: usize| {
                let at = ((group * chunks + r / plan.chunk) * points + xi) * plan.chunk + r % plan.chunk;
                at * plan.block
            };
            if block == 0 {
                m.fill(T::Accum::ZERO);
            }
            let rows = m.len() / plan.cs_pad;
            for c in (0..plan.cs_pad).step_by(ks.nt_cols) {
                let b = &v[row(v_chunks, c)..];
                for o in (0..rows).step_by(ks.nt_rows) {
                    let a = &d[row(d_chunks, first + o)..];
                    ks.nt(columns, a, plan.block, b, plan.block, &mut m[o * plan.cs_pad + c..], plan.cs_pad);
                }
            }
        });
    }
    weights_from_points(&plan, g, &tiling, m, dw)
}

/// An op's buffers, kept by the backend from op to op (a layer run again and
/// again allocates and zeroes them once): a block's `V` and `D`, `M`, and the
/// block's tables.
#[derive(Default)]
struct Buffers<A> {
    vd: Vec<A>,
    m: Vec<A>,
    tables: Tables,
}

/// One transform task of a block: a chunk of `V`'s rows (`inputs`, from `x`)
/// or of `D`'s (from `dy`).
struct TransformChunk<'a, T: Element> {
    ks: &'a Kernels<T::Accum>,
    tables: &'a Tables,
    g: &'a ConvGeometry,
    tiling: &'a Tiling,
    columns: usize,
    inputs: bool,
    channels: std::ops::Range<usize>,
    source: &'a [T],
    target: (&'a mut [T::Accum], usize, usize),
}

impl<T: Element> Vectorised for TransformChunk<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let TransformChunk { ks, tables, g, tiling, columns, inputs, channels, source, target } = self;
        match inputs {
            true => tables.transform_inputs(ks, g, tiling, columns, channels, source, target),
            false => tables.transform_gradients(g, tiling, columns, channels, source, target),
        }
    }
}

/// One row of `dw` (an output channel's kernels) from its points in `M`:
/// `Gᵀ` along each axis; false if a weight is not finite.
struct WeightRow<'a, T: Element> {
    plan: &'a Plan,
    g: &'a ConvGeometry,
    tiling: &'a Tiling,
    tap_points: &'a [usize],
    m: &'a [T::Accum],
    /// The row's points, one row of `cs` per point.
    scratch: &'a mut Vec<T::Accum>,
    row: usize,
    kernels: &'a mut [T],
}

impl<T: Element> Vectorised for WeightRow<'_, T> {
    type Output = bool;
    #[inline(always)]
    fn run(self) -> bool {
        let WeightRow { plan, g, tiling, tap_points, m, scratch, row, kernels } = self;
        let (points, cs, taps) = (plan.points, plan.cs, g.kernel_volume());
        let (group, o) = (row / plan.cd, row % plan.cd);
        scratch.clear();
        for xi in 0..points {
            let at = ((group * points + xi) * plan.cd_pad + o) * plan.cs_pad;
            scratch.extend_from_slice(&m[at..][..cs]);
        }
        // Each axis reduces lines whose earlier axes hold every point and whose later ones hold taps.
        for (axis, starts) in tiling.weight_lines.iter().rev() {
            for &start in starts {
                weight_gradient_transform(rows4(scratch, start * cs, tiling.point_stride[*axis] * cs, cs));
            }
        }
        let mut finite = true;
        for (c, kernel) in kernels.chunks_exact_mut(taps).enumerate() {
            for (w, &point) in kernel.iter_mut().zip(tap_points) {
                let v = scratch[point * cs + c];
                finite &= v.is_finite();
                *w = T::from_accum(v);
            }
        }
        finite
    }
}

/// `dw = Gᵀ M` per weight, a row of `dw` per task; `NotFinite` if a weight is not finite.
fn weights_from_points<T: Element>(
    plan: &Plan,
    g: &ConvGeometry,
    tiling: &Tiling,
    m: &[T::Accum],
    dw: &mut [T],
) -> Outcome {
    // Tap (t0, t1, t2) ends at point (t0, t1, t2), as it starts there in the forward pass.
    let tap_points = &grid(g.kernel_size, tiling.point_stride);
    let row_len = plan.cs * g.kernel_volume();
    let finite = dw.par_chunks_mut(row_len).tasks().enumerate().map_init(Vec::new, |scratch, (row, kernels)| {
        vectorised(WeightRow { plan, g, tiling, tap_points, m, scratch, row, kernels })
    });
    if finite.reduce(|| true, |a, b| a & b) { Outcome::Done } else { Outcome::NotFinite }
}

/// Bytes of scratch [`correlate_weight`] takes for `g` with `threads` threads:
/// a block's `V` and `D`, `M`, the tables and each task's points of one row.
pub(crate) fn weight_workspace_bytes<A>(ks: &Kernels<A>, g: &ConvGeometry, threads: usize) -> usize {
    let tiling = Tiling::new(g);
    let plan = Plan::new(ks, g, &tiling, threads);
    let (v_chunks, d_chunks) = plan.chunks();
    let elements = g.groups * (v_chunks + d_chunks) * plan.region()
        + g.groups * plan.points * plan.cd_pad * plan.cs_pad
        + threads * plan.points * plan.cs;
    elements * std::mem::size_of::<A>() + 2 * plan.points * plan.block * std::mem::size_of::<usize>()
}
