//! Implicit GEMM: each [`Pass`] is `Y[g] (cd × P) = W[g] (cd × K) · X̂[g] (K × P)`
//! with `K = cs · taps` and `X̂` the im2col matrix, never formed whole.
//!
//! Tasks own disjoint blocks of `dst`: a column block (positions of one image,
//! or several small images) × one group, every pass included; each task runs
//! its channels in parallel row blocks on one shared source of `X̂`:
//! - read in place from [`Bordered`], a copy of `src` made once per op with zero
//!   borders and its stride phases split apart, so every im2col row is a
//!   contiguous run of it (`nn_indirect`); or, where that would waste columns
//!   (tiny planes) or is a plain 1×1 conv,
//! - packed from the NCHW planes into a panel for the task's columns.
//!
//! The weights are packed once per op into `MR`-row strips. For bf16 where
//! AVX-512 BF16 is available, the bordered copy (or panel) and the strips hold
//! pairs of source channels instead, for the pair kernel (`pairs.rs`); or,
//! where the weights are read in place, the panel pairs neighbouring steps of
//! the reduction, as each weight row already does ([`PairOrder`]).
//!
//! The weight gradient `dW[g] (cd × K) = dY[g] (cd × NP) · X̂[g]ᵀ` runs the `nt`
//! kernel over column blocks in a fixed order; its tasks own blocks of `K`
//! (each reads or packs only its rows of `X̂`), and `dY` is packed once per
//! block, in the same columns as `X̂` (zeros in the gap columns of the
//! in-place layout, which is therefore used only when `x` is all finite).
//!
//! Here: the tasks of a forward or adjoint op and the products they run.
//! `plan.rs` cuts an op into tasks, `bordered.rs` makes the bordered copy,
//! `weights.rs` the weight strips, `store.rs` writes tiles to `dst`, and
//! `weight_grad.rs` computes the weight gradient.

use std::ops::Range;

use rayon::prelude::*;

use half::bf16;

use super::keep::Keep;
use super::kernels::{IndirectKernel, Kernels, RowSet};
use super::pairs::{PairKernels, as_bf16, pair};
use super::pass::{Pass, RowPacker, Segment, as_accumulators};
use super::threads::Tasks;
use crate::backend::Activation;
use crate::element::{Accumulator, DType, Element};

mod bordered;
pub(crate) mod col2im;
mod plan;
mod store;
#[cfg(test)]
mod tests;
mod weight_grad;
mod weights;

use bordered::{Bordered, BorderedLayout, ImageColumns, virtual_columns};
use plan::{Columns, Plan};
use store::{Region, Tile, write_tile, write_tile_pair};
use weights::{
    BlockWeights, Weights, pack_weight_pairs, pack_weights, pairs_in_place, weight_pair_rows, weights_in_place,
};

pub(crate) use bordered::zeroed;
pub(crate) use weight_grad::{correlate_weight, weight_workspace_bytes};

/// Rows of `X̂` a micro-kernel call reduces over. The `KC × NR` block of `X̂`
/// a call reads stays in L1 while the row block's weight strips (`MR × KC`
/// each, from L2) pass over it: 16 KiB of f32 with AVX2's tile, 32 KiB with
/// AVX-512's, of an L1 of 32–48 KiB. On AVX2, 384 rows (24 KiB) ran as fast
/// and 512 (all of L1) 2–5% slower.
const KC: usize = 256;
/// Columns (grid points per pass) a column block aims for.
const COLUMNS: usize = 256;
/// At most this many bytes of im2col panel per column block (fewer columns when `K` is long).
const PANEL_BYTES: usize = 4 << 20;
/// Channels a row block of a forward or adjoint task aims for.
const ROWS: usize = 128;
/// Parallel pieces an op aims to split into when its shape allows, whatever
/// the thread count: enough to keep a few threads busy and balanced.
const MIN_TASKS: usize = 8;
/// Rows of the panel one packing job fills.
const PACK_ROWS: usize = 32;

/// One task's share of `dst`: the pieces of its planes, ordered by (channel, image).
struct Task<'a, T> {
    images: Range<usize>,
    positions: Range<usize>,
    group: usize,
    pieces: Vec<&'a mut [T]>,
}

/// Pieces of `dst` keyed by their place in a task (channel-major, then image).
type KeyedPieces<'a, T> = Vec<(usize, &'a mut [T])>;

/// Splits `dst` (`[batch, groups·cd, volume]`) into one task per column block and group.
fn split_tasks<'a, T>(dst: &'a mut [T], columns: &Columns, first: &Pass) -> Vec<Task<'a, T>> {
    let (batch, groups, cd, volume) = (first.batch, first.groups, first.dst_channels, first.dst_volume());
    let mut tasks: Vec<(Task<'a, T>, KeyedPieces<'a, T>)> = (0..columns.blocks * groups)
        .map(|index| {
            let (images, positions) = columns.block(index / groups, batch, volume);
            (Task { images, positions, group: index % groups, pieces: Vec::new() }, Vec::new())
        })
        .collect();
    if volume > 0 {
        for (plane_index, plane) in dst.chunks_mut(volume).enumerate() {
            let (n, channel) = (plane_index / (groups * cd), plane_index % (groups * cd));
            let (group, o) = (channel / cd, channel % cd);
            let mut rest = plane;
            for pb in 0..columns.position_blocks {
                let (piece, tail) = rest.split_at_mut(columns.positions.min(rest.len()));
                rest = tail;
                let block = n / columns.images * columns.position_blocks + pb;
                let (task, keyed) = &mut tasks[block * groups + group];
                keyed.push((o * columns.images + n - task.images.start, piece));
            }
        }
    }
    tasks
        .into_iter()
        .map(|(mut task, mut keyed)| {
            keyed.sort_by_key(|&(key, _)| key);
            task.pieces = keyed.into_iter().map(|(_, piece)| piece).collect();
            task
        })
        .collect()
}

/// Bytes of extra memory a forward or adjoint op on `dtype` elements takes
/// with `threads` threads (weights packed unless read in place, copies of
/// `src` in the accumulator type, or in bf16 pairs where the pair kernel runs).
pub(crate) fn workspace_bytes<A: Copy + 'static>(
    ks: &Kernels<A>,
    passes: &[Pass],
    dtype: DType,
    threads: usize,
) -> usize {
    let Some(first) = passes.first() else { return 0 };
    // Weights and `X̂` (copy or panels): per source channel, or per pair of them in words of two bf16.
    let pairs = ks.pairs.filter(|_| dtype == DType::BF16);
    let ((mr, nr), slots, slot_size) = match pairs {
        Some(p) => ((p.rows, p.cols), first.src_channels.div_ceil(2), std::mem::size_of::<u32>()),
        None => ((ks.nn_rows, ks.nn_cols), first.src_channels, std::mem::size_of::<A>()),
    };
    let size = std::mem::size_of::<A>();
    let Some(plan) = Plan::new(passes, mr, nr, size) else { return 0 };
    // As `Source::new`: f32 weights in place for a forward pass over few
    // columns, and bf16 pairs alike where `X̂` is packed and the reduction is even.
    // The bordered copy, unless it is the source itself (read in place).
    let source_in_place =
        pairs.is_none() && matches!(dtype, DType::F32 | DType::F64) && BorderedLayout::is_source(passes, nr);
    let bordered = if source_in_place { 0 } else { BorderedLayout::len(passes, nr, slots) };
    let in_place = match pairs {
        None => weights_in_place(passes, matches!(dtype, DType::F32 | DType::F64)),
        Some(_) => bordered == 0 && pairs_in_place(passes),
    };
    let weights: usize = match in_place {
        true => 0,
        false => passes.iter().map(|p| p.groups * p.dst_channels.div_ceil(mr) * mr * slots * p.taps.len()).sum(),
    };
    let k = slots * passes.iter().map(|p| p.taps.len()).max().unwrap_or(0);
    // Each thread holds at most one task's panel and one row block's tile per
    // pass it runs at once (two that interleave); the bordered copy replaces
    // the panels where it is used.
    let at_once = if passes.windows(2).any(|pair| interleaves(&pair[0], &pair[1])) { 2 } else { 1 };
    let panel = if bordered > 0 || source_in_place { 0 } else { plan.max_ldb * k };
    let per_thread = at_once * threads.max(1);
    (weights + bordered + per_thread * panel) * slot_size + per_thread * plan.max_ldb * plan.rows * size
}

/// Runs `passes` (which together cover `dst`) by implicit GEMM.
///
/// Two passes that fill the even and odd positions of the same `dst` rows
/// (the stride-2 phases of a transposed conv, see [`interleaves`]) run side
/// by side in a task, each row block computing both tiles and storing them
/// interleaved: whole runs of `dst` rather than every other element, twice.
#[allow(clippy::too_many_arguments)]
pub(crate) fn correlate<T: Element>(
    ks: &Kernels<T::Accum>,
    keep: &Keep,
    passes: &[Pass],
    src: &[T],
    w: &[T],
    bias: Option<&[T]>,
    activation: Activation,
    dst: &mut [T],
) {
    let source = Source::new(ks, passes, src, w);
    let (mr, nr) = source.tile(ks);
    let Some(plan) = Plan::new(passes, mr, nr, std::mem::size_of::<T::Accum>()) else { return };
    let tasks = split_tasks(dst, &plan.columns, &passes[0]);
    // Tile buffers, two per row block, and the inputs of a pass pair, kept by
    // each worker from task to task and by the backend from op to op: only
    // their growth is zeroed, and each tile and panel is written before it is read.
    let buffers = || keep.take(Buffers::<T::Accum>::default);
    tasks.into_par_iter().tasks().for_each_init(buffers, |held, mut task| {
        let Buffers { tiles, inputs } = &mut **held;
        if tiles.len() < plan.row_blocks {
            tiles.resize_with(plan.row_blocks, Default::default);
        }
        let mut p = 0;
        while p < passes.len() {
            let [first, second] = &mut *inputs;
            let columns = first.prepare(ks, &source, &passes[p], src, &task);
            let pair = p + 1 < passes.len()
                && interleaves(&passes[p], &passes[p + 1])
                && second.prepare(ks, &source, &passes[p + 1], src, &task) == columns
                && first.segments.iter().zip(&second.segments).all(|(a, b)| a.n == b.n && a.m == b.m && a.m2 == b.m2);
            let step = if pair { 2 } else { 1 };
            if columns == 0 {
                p += step;
                continue;
            }
            let (pass, group, image_count) = (&passes[p], task.group, task.images.len());
            let mut rest = &mut task.pieces[..];
            let mut blocks = Vec::with_capacity(plan.row_blocks);
            for index in 0..plan.row_blocks {
                let channels = plan.row_block_channels(index, pass.dst_channels);
                let (pieces, tail) = std::mem::take(&mut rest).split_at_mut(channels.len() * image_count);
                rest = tail;
                if !channels.is_empty() {
                    blocks.push((channels, pieces));
                }
            }
            let inputs = &*inputs;
            blocks.into_par_iter().zip(tiles.par_iter_mut()).tasks().for_each(|((channels, pieces), [a, b])| {
                // The tile of the task's pass `p + i` (`i` = 1: the second of a pair) in `buffer`.
                let tile = |i: usize, buffer: &mut Vec<T::Accum>| {
                    let (input, channels) = (&inputs[i], channels.clone());
                    let start = multiply_pass(ks, &source, &passes[p + i], p + i, input, group, channels, buffer);
                    (start, input.ldb, &input.segments[..])
                };
                let (start, ldb, segments) = tile(0, a);
                let first = Tile { values: &mut a[start..], ldb, segments };
                let channels = channels.clone();
                let region = Region { images: task.images.clone(), positions: task.positions.clone(), group, channels };
                if pair {
                    let (start, ldb, segments) = tile(1, b);
                    let second = Tile { values: &mut b[start..], ldb, segments };
                    write_tile_pair(pass, bias, activation, first, second, &region, pieces);
                } else {
                    write_tile(pass, bias, activation, first, &region, pieces);
                }
            });
            p += step;
        }
    });
}

/// A worker's buffers: two tiles per row block, and the inputs of a pass pair.
#[derive(Default)]
struct Buffers<A> {
    tiles: Vec<[Vec<A>; 2]>,
    inputs: [PassInput<A>; 2],
}

/// Whether `b` fills the positions right after those `a` fills along the
/// rows, at step 2: the two stride-2 phases of one row phase of a transposed
/// conv (the odd phase one column on), with equal grids.
fn interleaves(a: &Pass, b: &Pass) -> bool {
    a.step == b.step
        && a.step[2] == 2
        && a.count == b.count
        && a.start[..2] == b.start[..2]
        && b.start[2] == a.start[2] + 1
}

/// What one pass of a task reads: its grid points as segments, and where the
/// kernel finds `X̂` for them (a run per image in the bordered copy, or a panel).
#[derive(Default)]
struct PassInput<A> {
    segments: Vec<Segment>,
    images: Vec<ImageColumns>,
    panel: Vec<A>,
    pair_panel: Vec<u32>,
    panel_start: usize,
    /// The panel's last `dots` columns transposed, `K` values each, for
    /// [`multiply_dots`] (see [`dot_columns`]); zeros past them to whole `nt` tiles.
    dot_columns: Vec<A>,
    dots: usize,
    /// Grid points, the panel's columns.
    columns: usize,
    /// Tile width: the columns rounded up to `NR` (per image in the bordered copy).
    ldb: usize,
}

impl<A: Accumulator> PassInput<A> {
    /// The segments of `pass` in `task`, with the panel packed where `source`
    /// has no bordered copy; returns the number of grid points (0: nothing to do).
    fn prepare<T: Element<Accum = A>>(
        &mut self,
        ks: &Kernels<A>,
        source: &Source<'_, A>,
        pass: &Pass,
        src: &[T],
        task: &Task<'_, T>,
    ) -> usize {
        let columns = pass.segments(task.images.clone(), task.positions.clone(), &mut self.segments);
        if columns == 0 {
            return 0;
        }
        let (group, (_, nr)) = (task.group, source.tile(ks));
        self.columns = columns;
        self.dots = 0;
        self.ldb = match source {
            Source::Bordered(bordered, _) => virtual_columns(bordered, nr, &mut self.segments, &mut self.images),
            Source::Pairs { bordered: Some(bordered), .. } => {
                virtual_columns(bordered, nr, &mut self.segments, &mut self.images)
            }
            Source::Panel(weights) => {
                let (ldb, k) = (columns.next_multiple_of(nr), pass.reduction());
                self.panel_start = pack_panel(pass, src, group, &self.segments, columns, ldb, &mut self.panel);
                if let (Weights::Rows(_), Some(dots)) = (weights, dot_columns(ks, columns, k)) {
                    // Once per task, for all its row blocks.
                    let panel = &self.panel[self.panel_start..];
                    self.dot_columns.clear();
                    self.dot_columns.resize(dots.next_multiple_of(ks.nt_rows) * k, A::ZERO);
                    for (kk, row) in panel.chunks(ldb).take(k).enumerate() {
                        for (i, &v) in row[columns - dots..columns].iter().enumerate() {
                            self.dot_columns[i * k + kk] = v;
                        }
                    }
                    self.dots = dots;
                }
                ldb
            }
            Source::Pairs { src, bordered: None, order, .. } => {
                let ldb = columns.next_multiple_of(nr);
                let panel = &mut self.pair_panel;
                self.panel_start = pack_pair_panel(pass, *order, src, group, &self.segments, columns, ldb, panel);
                // The panel's columns as one run, for `multiply_rows`.
                self.images.clear();
                self.images.push(ImageColumns { n: 0, first: 0, column: 0, len: columns });
                ldb
            }
        };
        columns
    }
}

/// The tile of pass `p` (index `p` of its op) for `channels` of `group`,
/// written into `buffer` from the index returned.
#[allow(clippy::too_many_arguments)]
fn multiply_pass<A: Accumulator>(
    ks: &Kernels<A>,
    source: &Source<'_, A>,
    pass: &Pass,
    p: usize,
    input: &PassInput<A>,
    group: usize,
    channels: Range<usize>,
    buffer: &mut Vec<A>,
) -> usize {
    let (images, ldb) = (&input.images[..], input.ldb);
    match source {
        Source::Bordered(bordered, weights) => {
            multiply_indirect(ks, pass, weights, bordered, p, images, ldb, group, channels, buffer)
        }
        Source::Panel(weights) => {
            let panel = &input.panel[input.panel_start..];
            let dots = (&input.dot_columns[..], input.dots);
            multiply(ks, pass, weights, p, (panel, dots), (input.columns, ldb), group, channels, buffer)
        }
        Source::Pairs { bordered: Some(bordered), weights, kernels, .. } => {
            multiply_indirect(kernels, pass, weights, bordered, p, images, ldb, group, channels, buffer)
        }
        Source::Pairs { bordered: None, weights, kernels, order, .. } => {
            let k = order.pairs(pass);
            let panel = &input.pair_panel[input.panel_start..];
            let row = |_: &ImageColumns, kk: usize| &panel[kk * ldb..][..ldb];
            let weights = weights.block(pass, p, group, &channels, kernels.rows, k);
            multiply_rows(kernels, k, &weights, images, ldb, channels, buffer, row)
        }
    }
}

/// Where a forward or adjoint op reads `X̂` from, with the weights packed per pass for its kernel.
enum Source<'a, A: 'static> {
    /// Read in place from a bordered copy of `src`.
    Bordered(Bordered<'a, A>, Weights<'a, A>),
    /// Packed from NCHW into a panel per task.
    Panel(Weights<'a, A>),
    /// bf16 `src` in pairs, for the pair kernel: pairs of channels read in
    /// place from a bordered copy where one serves, else packed into a panel
    /// per task, in `order`.
    Pairs {
        src: &'a [bf16],
        bordered: Option<Bordered<'a, u32>>,
        weights: Weights<'a, u32>,
        kernels: PairKernels<A>,
        order: PairOrder,
    },
}

/// What one pair of the pair kernel's reduction holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PairOrder {
    /// Channels `2c` and `2c + 1` at one tap (zero past an odd last channel),
    /// as the bordered copy and the packed weight strips hold them.
    Channels,
    /// Reduction steps `2p` and `2p + 1`, in `(c, tap)` order: a forward
    /// pass's weight rows are runs of such pairs as they are, so they are read
    /// in place (see [`weight_pair_rows`]), and the panel pairs its rows alike.
    Reduction,
}

impl PairOrder {
    /// Pairs in the reduction of `pass`.
    fn pairs(self, pass: &Pass) -> usize {
        match self {
            PairOrder::Channels => pass.src_channels.div_ceil(2) * pass.taps.len(),
            PairOrder::Reduction => pass.reduction().div_ceil(2),
        }
    }

    /// The reduction steps `(c, tap)` pair `p` of `pass` holds: the even one,
    /// and the odd one (`None` for a zero).
    fn steps(self, pass: &Pass, p: usize) -> ((usize, usize), Option<(usize, usize)>) {
        let (cs, ntaps) = (pass.src_channels, pass.taps.len());
        match self {
            PairOrder::Channels => {
                let (c, j) = (2 * (p / ntaps), p % ntaps);
                ((c, j), (c + 1 < cs).then_some((c + 1, j)))
            }
            PairOrder::Reduction => {
                let step = |kk: usize| (kk / ntaps, kk % ntaps);
                (step(2 * p), (2 * p + 1 < cs * ntaps).then(|| step(2 * p + 1)))
            }
        }
    }
}

impl<'a, A: Accumulator> Source<'a, A> {
    /// Channel pairs for bf16 where the instruction set has a pair kernel; else
    /// the bordered copy where it serves, or panels.
    fn new<T: Element<Accum = A>>(ks: &Kernels<A>, passes: &[Pass], src: &'a [T], w: &'a [T]) -> Self {
        if let (Some(src), Some(w), Some(kernels)) = (as_bf16(src), as_bf16(w), ks.pairs) {
            let bordered = Bordered::bf16_pairs(passes, src, kernels.cols);
            let rows = if bordered.is_none() { weight_pair_rows(passes, w) } else { None };
            let (weights, order) = match rows {
                Some(rows) => (Weights::Rows(rows), PairOrder::Reduction),
                None => (Weights::Packed(pack_weight_pairs(passes, w, kernels.rows)), PairOrder::Channels),
            };
            return Source::Pairs { src, bordered, weights, kernels, order };
        }
        let weights = match as_accumulators(w) {
            Some(w) if weights_in_place(passes, true) => Weights::Rows(w),
            _ => Weights::Packed(pack_weights(passes, w, ks.nn_rows)),
        };
        match Bordered::new(passes, src, ks.nn_cols, false) {
            Some(bordered) => Source::Bordered(bordered, weights),
            None => Source::Panel(weights),
        }
    }

    /// The micro-tile (rows, columns) of the kernel that reads it.
    fn tile(&self, ks: &Kernels<A>) -> (usize, usize) {
        match self {
            Source::Pairs { kernels, .. } => (kernels.rows, kernels.cols),
            Source::Bordered(..) | Source::Panel(_) => (ks.nn_rows, ks.nn_cols),
        }
    }
}

/// Grows `buffer` (with zeros) to hold `len` elements from a 64-byte boundary
/// (a cache line), so that the kernels' vector loads never straddle two
/// lines, and returns the index of that boundary.
fn cache_aligned<V: Copy + Default>(buffer: &mut Vec<V>, len: usize) -> usize {
    let slack = 64 / std::mem::size_of::<V>();
    if buffer.len() < len + slack {
        buffer.resize(len + slack, V::default());
    }
    buffer.as_ptr().align_offset(64).min(slack)
}

/// A tile of `len` accumulators in `buffer` (reused from call to call), from
/// the index returned. The kernels overwrite it for any reduction length `k`
/// but 0 — a stride phase no tap reaches — whose tile must then hold zeros.
fn tile_in<A: Accumulator>(buffer: &mut Vec<A>, len: usize, k: usize) -> usize {
    let start = cache_aligned(buffer, len);
    if k == 0 {
        buffer[start..][..len].fill(A::ZERO);
    }
    start
}

/// The whole `K × ldb` im2col panel of `segments`, packed `PACK_ROWS` rows per job.
fn pack_panel<T: Element>(
    pass: &Pass,
    src: &[T],
    group: usize,
    segments: &[Segment],
    columns: usize,
    ldb: usize,
    panel: &mut Vec<T::Accum>,
) -> usize {
    let k = pass.reduction();
    let packer = RowPacker::new(pass, group, segments, columns);
    fill_in_jobs(panel, k * ldb, PACK_ROWS * ldb, |job, rows| {
        let first = job * PACK_ROWS;
        packer.pack_rows(src, first..first + rows.len() / ldb, rows, ldb);
    })
}

/// `len` elements of `buffer` (reused from call to call) from a 64-byte
/// boundary, as [`cache_aligned`], each written by `fill(job, chunk)` over
/// chunks of `chunk` elements in parallel; returns the index of the boundary.
///
/// Where `buffer` must grow, each job zeroes (`V::default()`) its own chunk just before
/// filling it, where [`Vec::resize`] would zero megabytes in one serial pass
/// first (ResNet's 512-channel 7×7 layer packs a 4 MiB panel per call).
fn fill_in_jobs<V: Copy + Default + Send + Sync>(
    buffer: &mut Vec<V>,
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [V]) + Sync,
) -> usize {
    let zero = V::default();
    let slack = 64 / std::mem::size_of::<V>();
    let chunk = chunk.max(1);
    if buffer.len() >= len + slack {
        let start = cache_aligned(buffer, len);
        buffer[start..][..len].par_chunks_mut(chunk).tasks().enumerate().for_each(|(job, dst)| fill(job, dst));
        return start;
    }
    // Everything is rewritten: start from an empty buffer, so that its whole capacity is spare.
    buffer.clear();
    buffer.reserve(len + slack);
    let start = buffer.as_ptr().align_offset(64).min(slack);
    let (head, body) = buffer.spare_capacity_mut()[..len + slack].split_at_mut(start);
    bordered::zeroed(head, zero);
    body.par_chunks_mut(chunk).tasks().enumerate().for_each(|(job, dst)| {
        let dst = bordered::zeroed(dst, zero);
        if job * chunk < len {
            let end = dst.len().min(len - job * chunk);
            fill(job, &mut dst[..end]);
        }
    });
    // SAFETY: `zeroed` initialised the whole of `[0, len + slack)`.
    unsafe { buffer.set_len(len + slack) };
    start
}

/// [`pack_panel`] for the pair kernel: row `p` holds the [`pair`]s of the two
/// im2col rows [`PairOrder::steps`] names (zeros for a missing odd one).
#[allow(clippy::too_many_arguments)]
fn pack_pair_panel(
    pass: &Pass,
    order: PairOrder,
    src: &[bf16],
    group: usize,
    segments: &[Segment],
    columns: usize,
    ldb: usize,
    panel: &mut Vec<u32>,
) -> usize {
    let k = order.pairs(pass);
    let packer = RowPacker::new(pass, group, segments, columns);
    fill_in_jobs(panel, k * ldb, PACK_ROWS * ldb, |job, rows| {
        let (mut even, mut odd) = (vec![0f32; columns], vec![0f32; columns]);
        for (i, row) in rows.chunks_mut(ldb).enumerate() {
            let ((c, j), odd_step) = order.steps(pass, job * PACK_ROWS + i);
            packer.pack(src, c, j, &mut even);
            match odd_step {
                Some((c, j)) => packer.pack(src, c, j, &mut odd),
                None => odd.fill(0.0),
            }
            // The values were bf16 widened: narrowing them back is exact.
            for ((d, &e), &o) in row.iter_mut().zip(&even).zip(&odd) {
                *d = pair(bf16::from_f32(e), bf16::from_f32(o));
            }
            row[columns..].fill(0);
        }
    })
}

/// `W[group][channels] · panel` (`columns` of its `ldb`), `KC` rows at a time:
/// `channels` (rounded up to `MR`) × `ldb`, written into `buffer` (grown as
/// needed) from the index returned. The panel's last `dots` columns, where
/// there are any, are computed from their transposed copy by [`multiply_dots`].
#[allow(clippy::too_many_arguments)]
fn multiply<A: Accumulator>(
    ks: &Kernels<A>,
    pass: &Pass,
    weights: &Weights<'_, A>,
    p: usize,
    (panel, (dot_columns, dots)): (&[A], (&[A], usize)),
    (columns, ldb): (usize, usize),
    group: usize,
    channels: Range<usize>,
    buffer: &mut Vec<A>,
) -> usize {
    let (mr, nr, k) = (ks.nn_rows, ks.nn_cols, pass.reduction());
    let strips = channels.len().div_ceil(mr);
    let start = tile_in(buffer, strips * mr * ldb, k);
    let tile = &mut buffer[start..][..strips * mr * ldb];
    let nn_columns = columns - dots;
    let block = weights.block(pass, p, group, &channels, mr, k);
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        let b = &panel[k0 * ldb..];
        // Each `KC × NR` block of the panel is read once and stays in L1 for every weight strip.
        for jr in (0..nn_columns).step_by(nr) {
            for (s, tile_strip) in tile.chunks_mut(mr * ldb).enumerate() {
                let live = (channels.len() - s * mr, nn_columns - jr);
                ks.nn(live, kc, block.strip(s, k0), &b[jr..], ldb, &mut tile_strip[jr..], ldb, k0 > 0);
            }
        }
    }
    if let (Weights::Rows(w), 1..) = (weights, dots) {
        let w = &w[group * pass.dst_channels * k..];
        multiply_dots(ks, w, (dot_columns, ldb), k, nn_columns..columns, channels, tile);
    }
    start
}

/// How many columns past the last whole block of `NR` [`multiply`] computes
/// by dot products ([`multiply_dots`]) rather than with the `nn` kernel's
/// narrow edge, whose broadcasts cost as much for 4 columns as for a whole
/// vector of them: where those columns fill at most two `nt` tiles and the
/// reduction is whole vectors (with the weights read in place, as rows).
/// ResNet's 512-channel 7×7 layer has 196 columns, 4 past 6 blocks of 32:
/// 0.96× the time (2 Zen 4 threads, AVX-512; 0.98× on one).
fn dot_columns<A: Copy + 'static>(ks: &Kernels<A>, columns: usize, k: usize) -> Option<usize> {
    let rest = columns % ks.nn_cols;
    (rest > 0 && rest <= 2 * ks.nt_rows && k > 0 && k.is_multiple_of(ks.lanes)).then_some(rest)
}

/// Columns `columns` of `tile` (`ldb` wide; rows `channels` of a group whose
/// weight rows, `k` long, are `w`), as dot products of the rows of `w` with
/// those of `transposed` (row `i`: the panel's column `columns.start + i`):
/// `tile[o][j] = Σ_kk w[o][kk] · panel[kk][j]`.
fn multiply_dots<A: Accumulator>(
    ks: &Kernels<A>,
    w: &[A],
    (transposed, ldb): (&[A], usize),
    k: usize,
    columns: Range<usize>,
    channels: Range<usize>,
    tile: &mut [A],
) {
    let (tr, tc) = (ks.nt_rows, ks.nt_cols);
    let (mut last, mut out) = (Vec::new(), vec![A::ZERO; tr * tc]);
    let tile_rows = tile.len() / ldb;
    for o0 in (0..channels.len()).step_by(tc) {
        let first = (channels.start + o0) * k;
        // Rows past the block's are computed and not stored; past the end of `w`, they are zeros.
        let rows = match w.get(first..first + tc * k) {
            Some(rows) => rows,
            None => {
                last.clear();
                last.extend_from_slice(&w[first..]);
                last.resize(tc * k, A::ZERO);
                &last
            }
        };
        for i0 in (0..columns.len()).step_by(tr) {
            out.fill(A::ZERO);
            ks.nt(k, &transposed[i0 * k..], k, rows, k, &mut out, tc);
            for (i, column) in out.chunks(tc).take(columns.len() - i0).enumerate() {
                for (j, &v) in column.iter().take(tile_rows - o0).enumerate() {
                    tile[(o0 + j) * ldb + columns.start + i0 + i] = v;
                }
            }
        }
    }
}

/// [`multiply`] with `X̂` read in place from the bordered planes, by `ks`
/// (whose reduction runs over the planes' channels, or channel pairs, and taps).
#[allow(clippy::too_many_arguments)]
fn multiply_indirect<A: Accumulator, B>(
    ks: &impl IndirectKernel<A, B>,
    pass: &Pass,
    weights: &Weights<'_, B>,
    bordered: &Bordered<'_, B>,
    pass_index: usize,
    images: &[ImageColumns],
    ldb: usize,
    group: usize,
    channels: Range<usize>,
    buffer: &mut Vec<A>,
) -> usize {
    let steps = &bordered.steps[pass_index];
    let k = steps.len();
    let row = |image: &ImageColumns, kk: usize| {
        let planes = (image.n * pass.groups + group) * bordered.channels * bordered.plane_len;
        let Range { start, end } = steps[kk];
        &bordered.data()[planes + start + image.first..planes + end]
    };
    let weights = weights.block(pass, pass_index, group, &channels, ks.tile().0, k);
    multiply_rows(ks, k, &weights, images, ldb, channels, buffer, row)
}

/// `W[group][channels] · X̂` by a kernel that reads `X̂`'s rows where they are:
/// row `kk` of image run `image` is `row(image, kk)`, read from its start.
/// `channels` (rounded up to `MR`) × `ldb`, written into `buffer` (grown as
/// needed) from the index returned.
#[allow(clippy::too_many_arguments)]
fn multiply_rows<'a, A: Accumulator, B: 'a>(
    ks: &impl IndirectKernel<A, B>,
    k: usize,
    weights: &BlockWeights<'_, B>,
    images: &[ImageColumns],
    ldb: usize,
    channels: Range<usize>,
    buffer: &mut Vec<A>,
    row: impl Fn(&ImageColumns, usize) -> &'a [B],
) -> usize {
    let (mr, nr) = ks.tile();
    let strips = channels.len().div_ceil(mr);
    let start = tile_in(buffer, strips * mr * ldb, k);
    let tile = &mut buffer[start..][..strips * mr * ldb];
    let mut rows = RowSet::new();
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        for image in images {
            rows.clear();
            for kk in k0..k0 + kc {
                rows.push(row(image, kk));
            }
            // Each `KC × NR` block of `X̂` is read once and stays in L1 for every weight strip.
            for jr in (0..image.len).step_by(nr) {
                for (s, tile_strip) in tile.chunks_mut(mr * ldb).enumerate() {
                    let (live, c) = ((channels.len() - s * mr, image.len - jr), &mut tile_strip[image.column + jr..]);
                    ks.nn_indirect(live, weights.strip(s, k0), &rows, jr, c, ldb, k0 > 0);
                }
            }
        }
    }
    start
}
