//! Implicit GEMM: each [`Pass`] is `Y[g] (cd × P) = W[g] (cd × K) · X̂[g] (K × P)`
//! with `K = cs · taps`, and the im2col panel `X̂` packed straight from the
//! NCHW planes, `KC` rows at a time, for the columns of one task only.
//!
//! Tasks own disjoint blocks of `dst`: a block of positions (of one image, or
//! of several small images) × one group × a block of channels, every pass
//! included. A task packs `X̂` for its columns once per `KC` rows and runs the
//! `nn` micro-kernel over all its channels; the weights are packed once per op.
//!
//! The weight gradient `dW[g] (cd × K) = dY[g] (cd × NP) · X̂[g]ᵀ` runs the `nt`
//! kernel over the same column blocks, in a fixed order; its tasks own blocks
//! of `K` (each packs only its rows of `X̂`).

use std::ops::Range;

use rayon::prelude::*;

use super::kernels::Kernels;
use super::pass::{Pass, Segment, widen};
use crate::backend::Activation;
use crate::element::{Accumulator, Element};

/// Rows of `X̂` packed at a time: a `KC × columns` panel stays in L2, and a
/// `MR × KC` weight strip in L1.
const KC: usize = 256;
/// Columns (grid points per pass) a task aims for.
const COLUMNS: usize = 256;
/// Tasks an op is split into when its shape allows, whatever the thread
/// count: enough to keep a few threads busy and balanced.
const MIN_TASKS: usize = 16;

/// How an op's `dst` (or `dw`) is split into tasks; a function of the shape only.
#[derive(Debug, Clone)]
pub(crate) struct Blocking {
    /// Images per column block (several when a plane is small), and the
    /// number of blocks the batch splits into.
    images: usize,
    image_blocks: usize,
    /// Positions per column block within a plane, and blocks per plane.
    positions: usize,
    position_blocks: usize,
    /// Rows (channels, or `K` for the weight gradient) per task, and blocks per group.
    rows: usize,
    row_blocks: usize,
}

impl Blocking {
    /// Splits `batch` planes of `volume` positions into blocks of about
    /// `target` positions, and `rows` into blocks of a multiple of `align`,
    /// enough of them for [`MIN_TASKS`] tasks together with the `groups`, and
    /// with the column blocks when `columns_are_tasks` (they are reduced over otherwise).
    fn new(
        batch: usize,
        volume: usize,
        target: usize,
        groups: usize,
        rows: usize,
        align: usize,
        columns_are_tasks: bool,
    ) -> Blocking {
        let (images, positions) =
            if volume <= target { ((target / volume.max(1)).clamp(1, batch.max(1)), volume) } else { (1, target) };
        let image_blocks = batch.div_ceil(images);
        let position_blocks = volume.div_ceil(positions.max(1)).max(1);
        let column_blocks = if columns_are_tasks { image_blocks * position_blocks * groups } else { groups };
        let max_row_blocks = rows.div_ceil(align).max(1);
        let row_blocks = MIN_TASKS.div_ceil(column_blocks.max(1)).clamp(1, max_row_blocks);
        let rows_per_block = rows.div_ceil(row_blocks).div_ceil(align) * align;
        let row_blocks = rows.div_ceil(rows_per_block.max(1)).max(1);
        Blocking { images, image_blocks, positions, position_blocks, rows: rows_per_block.max(align), row_blocks }
    }

    /// Tasks of a forward or adjoint op: column blocks × groups × row blocks.
    fn tasks(&self, groups: usize) -> usize {
        self.image_blocks * self.position_blocks * groups * self.row_blocks
    }

    fn column_block(&self, index: usize, batch: usize, volume: usize) -> (Range<usize>, Range<usize>) {
        let (ib, pb) = (index / self.position_blocks, index % self.position_blocks);
        let images = ib * self.images..((ib + 1) * self.images).min(batch);
        let positions = pb * self.positions..((pb + 1) * self.positions).min(volume);
        (images, positions)
    }
}

/// The blocking of a forward or adjoint op: column blocks sized so each
/// pass gets about [`COLUMNS`] grid points.
fn pass_blocking(passes: &[Pass], mr: usize) -> Option<Blocking> {
    let first = passes.first()?;
    let target = COLUMNS * passes.len();
    Some(Blocking::new(first.batch, first.dst_volume(), target, first.groups, first.dst_channels, mr, true))
}

/// Weights packed for the `nn` kernel: per pass, `[group][strip][K][MR]`, rows past `cd` zero.
fn pack_weights<T: Element>(passes: &[Pass], w: &[T], mr: usize) -> Vec<Vec<T::Accum>> {
    passes
        .iter()
        .map(|pass| {
            let (k, strips) = (pass.reduction(), pass.dst_channels.div_ceil(mr));
            let ntaps = pass.taps.len();
            let mut packed = vec![T::Accum::ZERO; pass.groups * strips * k * mr];
            if k > 0 {
                packed.par_chunks_mut(k * mr).enumerate().for_each(|(strip_index, strip)| {
                    let (group, first) = (strip_index / strips, strip_index % strips * mr);
                    for (kk, row) in strip.chunks_mut(mr).enumerate() {
                        let (c, j) = (kk / ntaps, kk % ntaps);
                        for (i, v) in row.iter_mut().enumerate().take(pass.dst_channels.saturating_sub(first)) {
                            *v = w[pass.weight_index(group, first + i, c, j)].to_accum();
                        }
                    }
                });
            }
            packed
        })
        .collect()
}

/// One task's share of `dst`: the pieces of its planes, ordered by (image, channel).
struct Task<'a, T> {
    images: Range<usize>,
    positions: Range<usize>,
    group: usize,
    channels: Range<usize>,
    pieces: Vec<&'a mut [T]>,
}

/// Splits `dst` (`[batch, groups·rows_per_group, volume]`) into the tasks of `blocking`.
fn split_tasks<'a, T>(
    dst: &'a mut [T],
    blocking: &Blocking,
    batch: usize,
    groups: usize,
    rows_per_group: usize,
    volume: usize,
) -> Vec<Task<'a, T>> {
    let mut tasks: Vec<Task<'a, T>> = (0..blocking.tasks(groups))
        .map(|index| {
            let rb = index % blocking.row_blocks;
            let group = index / blocking.row_blocks % groups;
            let (images, positions) = blocking.column_block(index / blocking.row_blocks / groups, batch, volume);
            let channels = rb * blocking.rows..((rb + 1) * blocking.rows).min(rows_per_group);
            Task { images, positions, group, channels, pieces: Vec::new() }
        })
        .collect();
    if volume == 0 {
        return tasks;
    }
    for (plane_index, plane) in dst.chunks_mut(volume).enumerate() {
        let (n, channel) = (plane_index / (groups * rows_per_group), plane_index % (groups * rows_per_group));
        let (group, row) = (channel / rows_per_group, channel % rows_per_group);
        let mut rest = plane;
        for pb in 0..blocking.position_blocks {
            let len = blocking.positions.min(rest.len());
            let (piece, tail) = rest.split_at_mut(len);
            rest = tail;
            let column_block = n / blocking.images * blocking.position_blocks + pb;
            let index = (column_block * groups + group) * blocking.row_blocks + row / blocking.rows;
            tasks[index].pieces.push(piece);
        }
    }
    tasks
}

/// Bytes of extra memory a forward or adjoint op takes with `threads` tasks in flight.
pub(crate) fn workspace_bytes<A>(ks: &Kernels<A>, passes: &[Pass], threads: usize) -> usize {
    let Some(blocking) = pass_blocking(passes, ks.nn_rows) else { return 0 };
    let weights: usize =
        passes.iter().map(|p| p.groups * p.dst_channels.div_ceil(ks.nn_rows) * ks.nn_rows * p.reduction()).sum();
    let columns = passes.iter().map(|p| grid_columns(p, &blocking)).max().unwrap_or(0).next_multiple_of(ks.nn_cols);
    let per_task = columns * (KC + blocking.rows.next_multiple_of(ks.nn_rows));
    let in_flight = threads.min(blocking.tasks(passes[0].groups)).max(1);
    (weights + in_flight * per_task) * std::mem::size_of::<A>()
}

/// The most grid points a column block of `blocking` holds in `pass`.
fn grid_columns(pass: &Pass, blocking: &Blocking) -> usize {
    let per_image = if blocking.positions >= pass.dst_volume() {
        pass.count.iter().product()
    } else {
        // A run of `positions` holds at most this many points of the grid.
        let rows = blocking.positions.div_ceil(pass.dst_size[2]) + 1;
        rows.div_ceil(pass.step[1]) * pass.dst_size[2].div_ceil(pass.step[2]).min(blocking.positions)
    };
    per_image * blocking.images
}

/// Runs `passes` (which together cover `dst`) by implicit GEMM.
#[allow(clippy::too_many_arguments)]
pub(crate) fn correlate<T: Element>(
    ks: &Kernels<T::Accum>,
    passes: &[Pass],
    src: &[T],
    w: &[T],
    bias: Option<&[T]>,
    activation: Activation,
    dst: &mut [T],
) {
    let Some(blocking) = pass_blocking(passes, ks.nn_rows) else { return };
    let first = &passes[0];
    let packed = pack_weights(passes, w, ks.nn_rows);
    let tasks = split_tasks(dst, &blocking, first.batch, first.groups, first.dst_channels, first.dst_volume());
    tasks.into_par_iter().for_each(|mut task| {
        let mut scratch = Scratch::default();
        for (pass, packed) in passes.iter().zip(&packed) {
            let columns = pass.segments(task.images.clone(), task.positions.clone(), &mut scratch.segments);
            if columns > 0 {
                multiply(ks, pass, packed, src, task.group, task.channels.clone(), columns, &mut scratch);
                write_tile(pass, bias, activation, &scratch, &mut task);
            }
        }
    });
}

/// The buffers of one task, reused across its passes.
struct Scratch<A> {
    segments: Vec<Segment>,
    /// `KC × ldb` rows of `X̂`.
    panel: Vec<A>,
    /// The task's channels (rounded up to `MR`) × `ldb` columns of the result.
    tile: Vec<A>,
    ldb: usize,
}

impl<A> Default for Scratch<A> {
    fn default() -> Self {
        Scratch { segments: Vec::new(), panel: Vec::new(), tile: Vec::new(), ldb: 0 }
    }
}

/// `tile = W[group][channels] · X̂[:, columns]`, `KC` rows of `X̂` at a time.
#[allow(clippy::too_many_arguments)]
fn multiply<T: Element>(
    ks: &Kernels<T::Accum>,
    pass: &Pass,
    packed: &[T::Accum],
    src: &[T],
    group: usize,
    channels: Range<usize>,
    columns: usize,
    scratch: &mut Scratch<T::Accum>,
) {
    let (mr, nr) = (ks.nn_rows, ks.nn_cols);
    let ldb = columns.next_multiple_of(nr);
    let strips = channels.len().div_ceil(mr);
    let (k, ntaps) = (pass.reduction(), pass.taps.len());
    let strip_len = k * mr;
    let group_strips = pass.dst_channels.div_ceil(mr);
    scratch.ldb = ldb;
    scratch.tile.clear();
    scratch.tile.resize(strips * mr * ldb, T::Accum::ZERO);
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        scratch.panel.resize(kc * ldb, T::Accum::ZERO);
        for (kk, row) in scratch.panel.chunks_mut(ldb).take(kc).enumerate() {
            let (c, j) = ((k0 + kk) / ntaps, (k0 + kk) % ntaps);
            pass.pack_row(src, group, c, j, &scratch.segments, &mut row[..columns]);
            row[columns..].fill(T::Accum::ZERO);
        }
        for (s, tile_strip) in scratch.tile.chunks_mut(mr * ldb).enumerate() {
            let strip = group * group_strips + channels.start / mr + s;
            let a = &packed[strip * strip_len + k0 * mr..][..kc * mr];
            for jr in (0..ldb).step_by(nr) {
                ks.nn(kc, a, &scratch.panel[jr..], ldb, &mut tile_strip[jr..], ldb, k0 > 0);
            }
        }
    }
}

/// Writes `act(tile + bias)` to the task's grid points of `pass`.
fn write_tile<T: Element>(
    pass: &Pass,
    bias: Option<&[T]>,
    activation: Activation,
    scratch: &Scratch<T::Accum>,
    task: &mut Task<'_, T>,
) {
    let rows = task.channels.len();
    for (o, tile_row) in task.channels.clone().zip(scratch.tile.chunks(scratch.ldb)) {
        let channel = task.group * pass.dst_channels + o;
        let b = bias.map_or(T::Accum::ZERO, |b| b[channel].to_accum());
        for seg in &scratch.segments {
            let piece = &mut task.pieces[(seg.n - task.images.start) * rows + (o - task.channels.start)];
            let first = pass.dst_position([seg.m[0], seg.m[1], seg.m2.start]) - task.positions.start;
            let values = &tile_row[seg.column..][..seg.m2.len()];
            for (dst, &v) in piece[first..].iter_mut().step_by(pass.step[2]).zip(values) {
                *dst = T::from_accum(activation.apply(v + b));
            }
        }
    }
}

/// Column blocks of the weight gradient: about [`COLUMNS`] positions of `y`.
fn weight_blocking(pass: &Pass, nt_cols: usize) -> Blocking {
    let k = pass.src_channels * pass.kernel_volume;
    Blocking::new(pass.batch, pass.dst_volume(), COLUMNS, pass.groups, k, nt_cols, false)
}

/// Bytes of extra memory the weight gradient takes with `threads` tasks in flight.
pub(crate) fn weight_workspace_bytes<A>(ks: &Kernels<A>, pass: &Pass, threads: usize) -> usize {
    let blocking = weight_blocking(pass, ks.nt_cols);
    let ld = grid_columns(pass, &blocking).next_multiple_of(ks.lanes);
    let rows = pass.dst_channels.next_multiple_of(ks.nt_rows);
    let per_task = ld * (rows + blocking.rows) + rows * blocking.rows;
    threads.min(pass.groups * blocking.row_blocks).max(1) * per_task * std::mem::size_of::<A>()
}

/// `dw[g·cd + o, k] = Σ_{n, p} y[n, g·cd + o, p] · X̂[g][k, (n, p)]` for the forward `pass`.
pub(crate) fn correlate_weight<T: Element>(ks: &Kernels<T::Accum>, pass: &Pass, x: &[T], y: &[T], dw: &mut [T]) {
    let k = pass.src_channels * pass.kernel_volume;
    if k == 0 || pass.dst_channels == 0 {
        return;
    }
    let blocking = weight_blocking(pass, ks.nt_cols);
    let (mr, nr, lanes) = (ks.nt_rows, ks.nt_cols, ks.lanes);
    let (cd, ntaps, volume) = (pass.dst_channels, pass.taps.len(), pass.dst_volume());
    let column_blocks = blocking.image_blocks * blocking.position_blocks;
    let ktasks: Vec<(usize, Range<usize>, Vec<&mut [T]>)> = {
        let mut out: Vec<(usize, Range<usize>, Vec<&mut [T]>)> = (0..pass.groups * blocking.row_blocks)
            .map(|i| {
                let rb = i % blocking.row_blocks;
                (i / blocking.row_blocks, rb * blocking.rows..((rb + 1) * blocking.rows).min(k), Vec::new())
            })
            .collect();
        for (row_index, row) in dw.chunks_mut(k).enumerate() {
            let group = row_index / cd;
            let mut rest = row;
            for rb in 0..blocking.row_blocks {
                let (piece, tail) = rest.split_at_mut(blocking.rows.min(rest.len()));
                rest = tail;
                out[group * blocking.row_blocks + rb].2.push(piece);
            }
        }
        out
    };
    ktasks.into_par_iter().for_each(|(group, rows, mut pieces)| {
        let ktile = rows.len().next_multiple_of(nr);
        let cd_pad = cd.next_multiple_of(mr);
        let mut acc = vec![T::Accum::ZERO; cd_pad * ktile];
        let (mut segments, mut dy, mut xhat) = (Vec::new(), Vec::new(), Vec::new());
        for block in 0..column_blocks {
            let (images, positions) = blocking.column_block(block, pass.batch, volume);
            let columns = pass.segments(images, positions, &mut segments);
            if columns == 0 {
                continue;
            }
            let ld = columns.next_multiple_of(lanes);
            dy.clear();
            dy.resize(cd_pad * ld, T::Accum::ZERO);
            for (o, row) in dy.chunks_mut(ld).take(cd).enumerate() {
                for seg in &segments {
                    let plane = ((seg.n * pass.groups + group) * cd + o) * volume;
                    let first = plane + pass.dst_position([seg.m[0], seg.m[1], seg.m2.start]);
                    widen(&y[first..][..seg.m2.len()], &mut row[seg.column..][..seg.m2.len()]);
                }
            }
            xhat.clear();
            xhat.resize(ktile * ld, T::Accum::ZERO);
            for (kk, row) in rows.clone().zip(xhat.chunks_mut(ld)) {
                pass.pack_row(x, group, kk / ntaps, kk % ntaps, &segments, &mut row[..columns]);
            }
            for (s, acc_strip) in acc.chunks_mut(mr * ktile).enumerate() {
                let a = &dy[s * mr * ld..];
                for jr in (0..ktile).step_by(nr) {
                    ks.nt(ld, a, ld, &xhat[jr * ld..], ld, &mut acc_strip[jr..], ktile);
                }
            }
        }
        for (o, piece) in pieces.iter_mut().enumerate() {
            for (dst, &v) in piece.iter_mut().zip(&acc[o * ktile..]) {
                *dst = T::from_accum(v);
            }
        }
    });
}
