//! The adjoint of small planes (conv_transpose, conv's input gradient) as one
//! GEMM and a scatter: `Z[g] ((cx·taps) × P) = W[g]ᵀ · Y[g]` over the `P`
//! positions of a block of images, then each row `(c, tap)` of `Z` added into
//! `x[c]` at the positions its tap reaches (col2im).
//!
//! [`correlate`](super::correlate) runs the adjoint as one correlation per
//! stride phase, whose weight strips gather every weight from `cx · taps`
//! values apart: a packing pass that reads and writes each weight once before
//! the kernel reads it again. Here a row of `W[g]` (one `y` channel, its
//! `cx · taps` values contiguous) is one step of the reduction and holds a
//! value for every row of `Z`, so the kernel reads the weights as they lie
//! ([`AOperand::Strided`]). Where `y`'s planes are small the weights are most
//! of an op's memory traffic (DCGAN's 4×4 planes: 8 MiB of weights for 0.5
//! MiB of `y`), and that packing pass took 15% of its time.
//!
//! A task owns whole planes of `x` (a block of channels of one group, for a
//! block of images), so it adds every contribution to them itself, tap by tap
//! in a fixed order: the result does not depend on the tiling or the threads.

use std::ops::Range;

use rayon::prelude::*;

use super::plan::row_block;
use super::{KC, fill_in_jobs, tile_in};
use crate::backend::Activation;
use crate::cpu::direct::{for_each_row, taps};
use crate::cpu::keep::Keep;
use crate::cpu::kernels::{AOperand, Kernels};
use crate::cpu::pass::{as_accumulators, store_row, widen};
use crate::cpu::threads::Tasks;
use crate::element::{Accumulator, DType, Element};
use crate::geometry::ConvGeometry;

/// Positions (of `y`, in whole images) a column block aims for.
const COLUMNS: usize = 256;
/// Rows of `Z` (whole `x` channels of `taps` rows each) a task aims for.
const ROWS: usize = 128;
/// Parallel pieces a column block aims to split into, as [`super::MIN_TASKS`].
const MIN_TASKS: usize = 8;
/// Rows of the `y` panel one packing job fills.
const PACK_ROWS: usize = 32;
/// Weights one job widens to the accumulator type.
const WIDEN_CHUNK: usize = 1 << 16;
/// The most accumulators one `x` channel's rows of `Z` may hold (taps × the
/// positions of one `y` plane): a task's tile is at least that, per thread.
const MAX_CHANNEL_TILE: usize = 1 << 20;

/// Whether this path runs the adjoint of `g`: planes on both sides, and one
/// channel's rows of `Z` for one image within [`MAX_CHANNEL_TILE`].
pub(crate) fn applicable(g: &ConvGeometry) -> bool {
    let (plane, taps) = (g.out_volume(), g.kernel_volume());
    plane > 0 && g.in_volume() > 0 && taps.checked_mul(plane).is_some_and(|n| n <= MAX_CHANNEL_TILE)
}

/// `w` in the accumulator type: itself, or widened into `buffer` in parallel
/// (f16 and bf16 weights: one contiguous pass, where implicit GEMM's strips
/// gather them from `x channels × taps` apart).
pub(crate) fn weights_as_accumulators<'a, T: Element>(w: &'a [T], buffer: &'a mut Vec<T::Accum>) -> &'a [T::Accum] {
    if let Some(w) = as_accumulators(w) {
        return w;
    }
    buffer.clear();
    buffer.resize(w.len(), T::Accum::ZERO);
    buffer.par_chunks_mut(WIDEN_CHUNK).zip(w.par_chunks(WIDEN_CHUNK)).tasks().for_each(|(d, s)| widen(s, d));
    buffer
}

/// How the op is cut: column blocks of whole images, one after the other,
/// each in parallel tasks of one group and block of `x` channels.
struct Shape {
    /// `y` channels per group (the reduction), `x` channels per group, taps.
    cy: usize,
    cx: usize,
    taps: usize,
    /// Images per column block, and the blocks.
    images: usize,
    column_blocks: usize,
    /// Panel width: a block's positions rounded up to `NR`.
    ldb: usize,
    /// `x` channels per task, and the blocks of them per group.
    channels: usize,
    channel_blocks: usize,
}

impl Shape {
    fn new(g: &ConvGeometry, nr: usize) -> Shape {
        let (cy, cx, taps, plane) =
            (g.out_channels_per_group(), g.in_channels_per_group(), g.kernel_volume(), g.out_volume());
        let images = (COLUMNS / plane).clamp(1, g.batch.max(1));
        let column_blocks = g.batch.div_ceil(images);
        let parts = MIN_TASKS.div_ceil(g.groups);
        let channels = row_block(cx, parts, 1, (ROWS / taps).max(1));
        let channel_blocks = cx.div_ceil(channels);
        Shape {
            cy,
            cx,
            taps,
            images,
            column_blocks,
            ldb: (images * plane).next_multiple_of(nr),
            channels,
            channel_blocks,
        }
    }

    /// Elements of a column block's panels: `cy` rows of `ldb` per group.
    fn panels_len(&self, groups: usize) -> usize {
        groups * self.cy * self.ldb
    }

    /// Accumulators of one task's tile of `Z`: its rows in whole strips of `mr`.
    fn tile_len(&self, mr: usize) -> usize {
        (self.channels * self.taps).next_multiple_of(mr) * self.ldb
    }
}

/// Bytes of extra memory the adjoint of `g` in `dtype` takes with `threads`
/// threads: the weights widened where they are halves, a column block's `y`
/// panels, and per thread a tile of `Z`, a plane and a packed strip.
pub(crate) fn workspace_bytes<A: Copy + 'static>(
    ks: &Kernels<A>,
    g: &ConvGeometry,
    dtype: DType,
    threads: usize,
) -> usize {
    let shape = Shape::new(g, ks.nn_cols);
    let widened = match dtype {
        DType::F16 | DType::BF16 => g.groups * shape.cy * shape.cx * shape.taps,
        DType::F32 | DType::F64 => 0,
    };
    let per_thread = shape.tile_len(ks.nn_rows) + g.in_volume() + shape.cy * ks.nn_rows;
    (widened + shape.panels_len(g.groups) + threads.max(1) * per_thread) * std::mem::size_of::<A>()
}

/// A task: the planes of `x` of one column block, group and block of channels, ordered (image, channel).
struct Task<'a, T> {
    block: usize,
    group: usize,
    channels: Range<usize>,
    planes: Vec<&'a mut [T]>,
}

/// A worker's buffers, kept from op to op.
#[derive(Default)]
struct Buffers<A> {
    tile: Vec<A>,
    plane: Vec<A>,
    strip: Vec<A>,
}

/// `x = act(adjoint(y) + bias)` for `g` (see [`applicable`]), with `w` in the accumulator type.
#[allow(clippy::too_many_arguments)]
pub(crate) fn correlate_adjoint<T: Element>(
    ks: &Kernels<T::Accum>,
    keep: &Keep,
    g: &ConvGeometry,
    y: &[T],
    w: &[T::Accum],
    bias: Option<&[T]>,
    activation: Activation,
    x: &mut [T],
) {
    let shape = Shape::new(g, ks.nn_cols);
    let (plane_y, plane_x, groups) = (g.out_volume(), g.in_volume(), g.groups);
    // Every (tap, row) of the kernel's reach, computed once: (tap, first `y` position, first `x` position, length).
    let mut rows = Vec::new();
    for tap in taps(g) {
        for_each_row(g, &tap, |y, x, len| rows.push((tap.index, y, x, len)));
    }
    let buffers = || keep.take(Buffers::<T::Accum>::default);
    let mut panels = keep.take(Vec::<T::Accum>::new);
    let mut tasks = split_tasks(x, &shape, g).into_iter();
    for block in 0..shape.column_blocks {
        let start = pack_panels(&shape, g, y, block, &mut panels);
        let panels = &panels[start..][..shape.panels_len(groups)];
        let block_tasks: Vec<Task<'_, T>> = tasks.by_ref().take(groups * shape.channel_blocks).collect();
        block_tasks.into_par_iter().tasks().for_each_init(buffers, |held, task| {
            let Buffers { tile, plane, strip } = &mut **held;
            let panel = &panels[task.group * shape.cy * shape.ldb..][..shape.cy * shape.ldb];
            let start = multiply(ks, &shape, g, w, panel, &task, tile, strip);
            let tile = &tile[start..];
            plane.resize(plane_x, T::Accum::ZERO);
            let channels = task.channels.len();
            for (index, dst) in task.planes.into_iter().enumerate() {
                let (image, c) = (index / channels, index % channels);
                plane.fill(T::Accum::ZERO);
                let z = &tile[c * shape.taps * shape.ldb + image * plane_y..];
                for &(tap, y, x, len) in &rows {
                    add_row(&z[tap * shape.ldb + y..][..len], &mut plane[x..], g.stride[2]);
                }
                let b = bias.map(|b| b[task.group * shape.cx + task.channels.start + c].to_accum());
                store_row(plane, b, activation, dst, 1);
            }
        });
    }
}

/// `x[j·step] += z[j]` for every `j`.
fn add_row<A: Accumulator>(z: &[A], x: &mut [A], step: usize) {
    if step == 1 {
        x.iter_mut().zip(z).for_each(|(x, &z)| *x += z);
    } else {
        // Chunks rather than `step_by`: a plain loop, with no bounds checks.
        x.chunks_mut(step).zip(z).for_each(|(x, &z)| x[0] += z);
    }
}

/// Splits `x` (`[batch, groups·cx, plane]`) into tasks of whole planes, by column block, group and channels.
fn split_tasks<'a, T>(x: &'a mut [T], shape: &Shape, g: &ConvGeometry) -> Vec<Task<'a, T>> {
    let (groups, cx) = (g.groups, shape.cx);
    let mut tasks: Vec<Task<'a, T>> = (0..shape.column_blocks * groups * shape.channel_blocks)
        .map(|index| {
            let (block, rest) = (index / (groups * shape.channel_blocks), index % (groups * shape.channel_blocks));
            let (group, channel_block) = (rest / shape.channel_blocks, rest % shape.channel_blocks);
            let channels = channel_block * shape.channels..((channel_block + 1) * shape.channels).min(cx);
            Task { block, group, channels, planes: Vec::new() }
        })
        .collect();
    // Planes come image by image, channel by channel: each task's in (image, channel) order.
    for (index, plane) in x.chunks_mut(g.in_volume()).enumerate() {
        let (n, channel) = (index / (groups * cx), index % (groups * cx));
        let (group, c) = (channel / cx, channel % cx);
        let task = (n / shape.images * groups + group) * shape.channel_blocks + c / shape.channels;
        tasks[task].planes.push(plane);
    }
    tasks
}

/// The `y` panels of column block `block`, one per group: row `o` holds
/// channel `o` of the block's images side by side, zeros past them. Returns
/// where they start in `buffer`.
fn pack_panels<T: Element>(
    shape: &Shape,
    g: &ConvGeometry,
    y: &[T],
    block: usize,
    buffer: &mut Vec<T::Accum>,
) -> usize {
    let (ldb, cy, plane, groups) = (shape.ldb, shape.cy, g.out_volume(), g.groups);
    fill_in_jobs(buffer, shape.panels_len(groups), PACK_ROWS * ldb, |job, rows| {
        for (r, row) in (job * PACK_ROWS..).zip(rows.chunks_mut(ldb)) {
            let (group, o) = (r / cy, r % cy);
            let images = block * shape.images..((block + 1) * shape.images).min(g.batch);
            let filled = images.len() * plane;
            for (n, dst) in images.zip(row.chunks_mut(plane)) {
                let src = &y[(n * g.out_channels + group * cy + o) * plane..][..plane];
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = s.to_accum();
                }
            }
            row[filled..].fill(T::Accum::ZERO);
        }
    })
}

/// The task's rows of `Z` (its channels × taps, in strips of `MR`) × the
/// panel's `ldb` columns, written into `tile` from the index returned.
#[allow(clippy::too_many_arguments)]
fn multiply<A: Accumulator>(
    ks: &Kernels<A>,
    shape: &Shape,
    g: &ConvGeometry,
    w: &[A],
    panel: &[A],
    task: &Task<'_, impl Sized>,
    tile: &mut Vec<A>,
    strip: &mut Vec<A>,
) -> usize {
    let (mr, nr, ldb, k) = (ks.nn_rows, ks.nn_cols, shape.ldb, shape.cy);
    let lda = shape.cx * shape.taps;
    let rows = task.channels.len() * shape.taps;
    let strips = rows.div_ceil(mr);
    let columns = (shape.images.min(g.batch - task.block * shape.images)) * g.out_volume();
    let start = tile_in(tile, strips * mr * ldb, k);
    let tile = &mut tile[start..][..strips * mr * ldb];
    // Row `i` of the group's `Z` is column `i` of `W[g]`, whose row `o` starts at `o·lda`.
    let w = &w[task.group * k * lda..];
    let first_row = task.channels.start * shape.taps;
    // A last strip that would read past the end of `w` (its rows beyond the
    // task's, which are never stored) is copied into `strip`, zeros past them.
    let last = strips - 1;
    let height = ks.nn_height(rows - last * mr);
    let copied = k > 0 && w.len() < (k - 1) * lda + first_row + last * mr + height;
    if copied {
        strip.clear();
        strip.resize(k * mr, A::ZERO);
        let live = rows - last * mr;
        for (o, dst) in strip.chunks_mut(mr).enumerate() {
            dst[..live].copy_from_slice(&w[o * lda + first_row + last * mr..][..live]);
        }
    }
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        let b = &panel[k0 * ldb..];
        // The last column block may hold fewer images than the panel has room for.
        for jr in (0..columns).step_by(nr) {
            for (s, tile_strip) in tile.chunks_mut(mr * ldb).enumerate() {
                let a = match s == last && copied {
                    true => AOperand::Packed(&strip[k0 * mr..]),
                    false => AOperand::Strided(&w[k0 * lda + first_row + s * mr..], lda),
                };
                let live = (rows - s * mr, columns - jr);
                ks.nn(live, kc, a, &b[jr..], ldb, &mut tile_strip[jr..], ldb, k0 > 0);
            }
        }
    }
    start
}
