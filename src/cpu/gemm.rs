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
//! pairs of source channels instead, for the pair kernel (`pairs.rs`).
//!
//! The weight gradient `dW[g] (cd × K) = dY[g] (cd × NP) · X̂[g]ᵀ` runs the `nt`
//! kernel over column blocks in a fixed order; its tasks own blocks of `K`
//! (each reads or packs only its rows of `X̂`), and `dY` is packed once per
//! block, in the same columns as `X̂` (zeros in the gap columns of the
//! in-place layout, which is therefore used only when `x` is all finite).

use std::mem::MaybeUninit;
use std::ops::Range;

use rayon::prelude::*;

use half::bf16;

use super::kernels::{AOperand, IndirectKernel, Kernels, RowSet};
use super::pairs::{PairKernels, as_bf16, pair};
use super::pass::{Direction, Pass, RowPacker, Segment, as_accumulators, epilogue, store_row, widen};
use super::threads::Tasks;
use crate::backend::Activation;
use crate::element::{Accumulator, DType, Element};

/// Rows of `X̂` a micro-kernel call reduces over: a `KC × columns` slice of
/// the panel stays in L2, and a `MR × KC` weight strip in L1.
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

/// Column blocks: `batch` planes of `volume` positions cut into blocks of
/// whole planes (`images` of them) or of `positions` positions of one plane.
/// A function of the shape only.
#[derive(Debug, Clone)]
pub(crate) struct Columns {
    images: usize,
    positions: usize,
    position_blocks: usize,
    blocks: usize,
}

impl Columns {
    /// Blocks of about `target` positions.
    fn new(batch: usize, volume: usize, target: usize) -> Columns {
        let target = target.max(1);
        let (images, positions) =
            if volume <= target { ((target / volume.max(1)).clamp(1, batch.max(1)), volume) } else { (1, target) };
        let position_blocks = volume.div_ceil(positions.max(1)).max(1);
        Columns { images, positions, position_blocks, blocks: batch.div_ceil(images) * position_blocks }
    }

    /// The images and positions of block `index`.
    fn block(&self, index: usize, batch: usize, volume: usize) -> (Range<usize>, Range<usize>) {
        let (ib, pb) = (index / self.position_blocks, index % self.position_blocks);
        let images = ib * self.images..((ib + 1) * self.images).min(batch);
        let positions = pb * self.positions..((pb + 1) * self.positions).min(volume);
        (images, positions)
    }
}

/// Positions per column block for one pass read in place, on planes larger
/// than `target` with rows no longer: whole rows, as many (up to `2·target`
/// positions) as compute the fewest columns per output. A block of `r` rows
/// computes `r·pitch − (pitch − width)` virtual columns rounded up to `nr`:
/// on a 56-wide row of pitch 58, 5 rows waste 3% where 256 positions waste 6%;
/// on a 128-wide row of pitch 130, 1 row wastes none. `None` elsewhere.
fn whole_rows(passes: &[Pass], nr: usize, target: usize) -> Option<usize> {
    let [pass] = passes else { return None };
    let layout = BorderedLayout::new(passes, nr)?;
    let (width, pitch) = (pass.dst_size[2], layout.extent[2]);
    if pass.count[2] != width || pass.dst_volume() <= target || width > target {
        return None;
    }
    let computed = |rows: usize| (rows * pitch - (pitch - width)).next_multiple_of(nr);
    // Fewest computed columns per output (`computed(a)/a < computed(b)/b`), then more rows.
    // Blocks of at least `target / 2` positions: smaller ones cost more in per-task work than they save.
    (target.div_ceil(2).div_ceil(width)..=2 * target / width)
        .min_by(|&a, &b| (computed(a) * b).cmp(&(computed(b) * a)).then(b.cmp(&a)))
        .map(|rows| rows * width)
}

/// `rows` cut into about `parts` blocks, each a multiple of `align` and at most `cap` (rounded up to `align`).
fn row_block(rows: usize, parts: usize, align: usize, cap: usize) -> usize {
    rows.div_ceil(parts.max(1)).clamp(1, cap.max(1)).next_multiple_of(align)
}

/// How a forward or adjoint op is split: column blocks × groups are tasks,
/// each cut into row blocks that run in parallel on the task's shared panel.
#[derive(Debug, Clone)]
struct Plan {
    columns: Columns,
    /// The most channels in a row block.
    rows: usize,
    /// Row blocks per task: whole `MR` strips, as even in count as they can be,
    /// so that no block is a straggler.
    row_blocks: usize,
    strips: usize,
    mr: usize,
    /// Panel leading dimension bound (columns rounded up to `NR`).
    max_ldb: usize,
}

impl Plan {
    fn new(passes: &[Pass], mr: usize, nr: usize, element: usize) -> Option<Plan> {
        let first = passes.first()?;
        let k = passes.iter().map(Pass::reduction).max().unwrap_or(0).max(1);
        let target = COLUMNS.min((PANEL_BYTES / (k * element)).max(nr));
        let columns = match whole_rows(passes, nr, target) {
            Some(positions) => Columns::new(first.batch, first.dst_volume(), positions),
            // Positions so that each pass gets about `target` grid points.
            None => Columns::new(first.batch, first.dst_volume(), target * passes.len()),
        };
        let tasks = columns.blocks * first.groups;
        let rows = row_block(first.dst_channels, MIN_TASKS.div_ceil(tasks.max(1)), mr, ROWS);
        let strips = first.dst_channels.div_ceil(mr);
        let row_blocks = strips.div_ceil(rows / mr).max(1);
        let rows = strips.div_ceil(row_blocks) * mr;
        let max_ldb = passes.iter().map(|p| grid_columns(p, &columns)).max().unwrap_or(0).next_multiple_of(nr);
        Some(Plan { columns, rows, row_blocks, strips, mr, max_ldb })
    }

    /// The channels of row block `index` among `channels` (those of one group).
    fn row_block_channels(&self, index: usize, channels: usize) -> Range<usize> {
        let strip = |b: usize| b * self.strips / self.row_blocks;
        (strip(index) * self.mr).min(channels)..(strip(index + 1) * self.mr).min(channels)
    }
}

/// The `src` planes copied once with zero borders wide enough that every tap
/// reads inside, and split into their stride phases (`x_r[i] = x[r + stride·i]`
/// per dim), so that every tap reads one phase with unit stride. Grid point
/// `m` of a pass then has the *virtual position* `v = m0·pitch[0] + m1·pitch[1] + m2`,
/// and im2col row `(c, j)` at column `v` is `plane(c)[starts[j] + v]`: the `nn`
/// kernel reads it in place (`nn_indirect`), with no panel to pack. Columns
/// that fall in the borders are computed and dropped.
///
/// A plane holds one source channel (values widened to the accumulator), or
/// for the bf16 pair kernel two, as [`pair`]s (see `pairs.rs`).
struct Bordered<V> {
    data: Vec<V>,
    /// Planes per (image, group): the source channels, or their pairs.
    channels: usize,
    plane_len: usize,
    pitch: [usize; 2],
    /// Per pass, per tap: where the tap reads grid point 0.
    starts: Vec<Vec<usize>>,
}

/// Where [`Bordered`] puts things: zeros before the data (in padded
/// coordinates), the extent of a phase in each dim, and the length of a plane.
struct BorderedLayout {
    lo: [usize; 3],
    extent: [usize; 3],
    plane_len: usize,
}

impl BorderedLayout {
    /// The layout for `passes`, or `None` where packing serves better: borders
    /// that would waste more than an eighth of the columns, or a single pass
    /// with a single tap (a 1×1 conv: its panel is a straight copy, and reading
    /// its rows in place touches a page per input channel for every strip).
    fn new(passes: &[Pass], nr: usize) -> Option<BorderedLayout> {
        let first = passes.first()?;
        let stride = first.src_stride;
        if passes.iter().any(|p| p.src_stride != stride) || (passes.len() == 1 && first.taps.len() == 1) {
            return None;
        }
        let offsets = |d: usize| passes.iter().flat_map(move |p| p.taps.iter().map(move |t| t.offset[d]));
        let count = |d: usize| passes.iter().map(|p| p.count[d]).max().unwrap_or(0);
        let lo: [usize; 3] = std::array::from_fn(|d| (-offsets(d).min().unwrap_or(0)).max(0) as usize);
        let extent: [usize; 3] = std::array::from_fn(|d| {
            let furthest = (lo[d] as i64 + offsets(d).max().unwrap_or(0)).max(0) as usize / stride[d];
            (count(d).saturating_sub(1) + furthest + 1).max((lo[d] + first.src_size[d]).div_ceil(stride[d]))
        });
        if 8 * (extent[2] - count(2)) > extent[2] {
            return None;
        }
        let phases = stride.iter().product::<usize>();
        Some(BorderedLayout { lo, extent, plane_len: phases * extent.iter().product::<usize>() + nr })
    }

    /// Elements of a copy of `passes`'s source with `channels` planes per (image, group).
    fn len(passes: &[Pass], nr: usize, channels: usize) -> usize {
        BorderedLayout::new(passes, nr).map_or(0, |layout| {
            let first = &passes[0];
            first.batch * first.groups * channels * layout.plane_len
        })
    }
}

/// Where each source row lands in a bordered plane: its stride phases, split apart.
struct RowPlacement {
    lo: [usize; 3],
    stride: [usize; 3],
    height: usize,
    pitch: [usize; 2],
    phase_len: usize,
}

impl RowPlacement {
    /// Where padded position `e` of dim `d` lands: its stride phase, and its index in it.
    fn place(&self, d: usize, e: usize) -> (usize, usize) {
        (e % self.stride[d], e / self.stride[d])
    }

    /// Writes source row `row` of a plane to `dst`: `fill` writes the row's
    /// values (in the copy's element type) to the slice it is given, which is
    /// `dst` itself for unit strides along the row, else `buffer` (as long as
    /// a row), split into phases from there.
    fn put<V: Copy>(&self, row: usize, dst: &mut [V], buffer: &mut [V], fill: impl FnOnce(&mut [V])) {
        let stride = self.stride;
        let ((r0, i0), (r1, i1)) =
            (self.place(0, self.lo[0] + row / self.height), self.place(1, self.lo[1] + row % self.height));
        let phase_row = (r0 * stride[1] + r1) * stride[2];
        let at = i0 * self.pitch[0] + i1 * self.pitch[1];
        // Where element `i` of the row lands: phase (lo + i) mod stride, at (lo + i) / stride.
        let target = |i: usize| {
            let (r2, i2) = self.place(2, self.lo[2] + i);
            (phase_row + r2) * self.phase_len + at + i2
        };
        let width = buffer.len();
        match stride[2] {
            1 => fill(&mut dst[target(0)..][..width]),
            2 => {
                fill(buffer);
                deinterleave_pairs(buffer, dst, target(0), target(1));
            }
            s => {
                fill(buffer);
                for first in 0..s.min(width) {
                    let phase = &mut dst[target(first)..];
                    for (d, &v) in phase.iter_mut().zip(buffer[first..].iter().step_by(s)) {
                        *d = v;
                    }
                }
            }
        }
    }
}

impl<V: Copy + Send + Sync> Bordered<V> {
    /// The copy for `passes` with `channels` planes per (image, group):
    /// `fill_row(plane, row, out)` writes source row `row` of plane `plane`
    /// (counted over images, groups and `channels`) to `out`, returning whether
    /// its values are finite (with `finite_only`, `None` where one is not).
    fn build(
        passes: &[Pass],
        nr: usize,
        channels: usize,
        zero: V,
        finite_only: bool,
        fill_row: impl Fn(usize, usize, &mut [V]) -> bool + Sync,
    ) -> Option<Self> {
        let BorderedLayout { lo, extent, plane_len } = BorderedLayout::new(passes, nr)?;
        let first = &passes[0];
        let stride = first.src_stride;
        let pitch = [extent[1] * extent[2], extent[2]];
        let phase_len = extent.iter().product::<usize>();
        let placement = RowPlacement { lo, stride, height: first.src_size[1], pitch, phase_len };
        let starts = passes
            .iter()
            .map(|p| {
                p.taps
                    .iter()
                    .map(|t| {
                        let q: [(usize, usize); 3] =
                            std::array::from_fn(|d| placement.place(d, (lo[d] as i64 + t.offset[d]) as usize));
                        let phase = (q[0].0 * stride[1] + q[1].0) * stride[2] + q[2].0;
                        phase * phase_len + q[0].1 * pitch[0] + q[1].1 * pitch[1] + q[2].1
                    })
                    .collect()
            })
            .collect();
        let planes = first.batch * first.groups * channels;
        let [d0, h, w] = first.src_size;
        // Each task zeroes its own planes before writing their data: in parallel,
        // and in cache when the data lands, where one `vec![0; len]` would be a
        // serial pass over megabytes.
        let mut data = Vec::with_capacity(planes * plane_len);
        let chunks = data.spare_capacity_mut()[..planes * plane_len].par_chunks_mut(plane_len).tasks();
        let finite = chunks.enumerate().all(|(plane, dst)| {
            let dst = zeroed(dst, zero);
            let mut buffer = vec![zero; w];
            let mut finite = true;
            for row in 0..d0 * h {
                placement.put(row, dst, &mut buffer, |out| finite &= fill_row(plane, row, out));
            }
            !finite_only || finite
        });
        if !finite {
            return None;
        }
        // SAFETY: `all` returned true, so it ran the closure on every plane, and
        // `zeroed` initialised each whole.
        unsafe { data.set_len(planes * plane_len) };
        Some(Bordered { data, channels, plane_len, pitch, starts })
    }

    fn virtual_position(&self, m0: usize, m1: usize, m2: usize) -> usize {
        m0 * self.pitch[0] + m1 * self.pitch[1] + m2
    }
}

impl<A: Accumulator> Bordered<A> {
    /// The copy of `src` for `passes`, a plane per channel; with `finite_only`,
    /// `None` as well when `src` holds an infinity or NaN (see `correlate_weight`).
    fn new<T: Element<Accum = A>>(passes: &[Pass], src: &[T], nr: usize, finite_only: bool) -> Option<Self> {
        let first = passes.first()?;
        let (volume, width) = (first.src_volume(), first.src_size[2]);
        assert_eq!(src.len(), first.batch * first.groups * first.src_channels * volume, "bordered copy: source length");
        Bordered::build(passes, nr, first.src_channels, A::ZERO, finite_only, |plane, row, out| {
            let values = &src[plane * volume + row * width..][..width];
            widen(values, out);
            !finite_only || values.iter().all(|v| v.to_f64().is_finite())
        })
    }
}

impl Bordered<u32> {
    /// The copy of bf16 `src` for `passes` with a plane per pair of channels
    /// (`2c`, `2c + 1`), as [`pair`]s; an odd last channel pairs with zeros.
    fn bf16_pairs(passes: &[Pass], src: &[bf16], nr: usize) -> Option<Self> {
        let first = passes.first()?;
        let (cs, volume, width) = (first.src_channels, first.src_volume(), first.src_size[2]);
        assert_eq!(src.len(), first.batch * first.groups * cs * volume, "bordered pairs: source length");
        let pairs = cs.div_ceil(2);
        Bordered::build(passes, nr, pairs, 0, false, |plane, row, out| {
            let (planes, p) = (plane / pairs, plane % pairs);
            let channel = |c: usize| &src[((planes * cs) + c) * volume + row * width..][..width];
            let even = channel(2 * p);
            if 2 * p + 1 < cs {
                for ((o, &e), &d) in out.iter_mut().zip(even).zip(channel(2 * p + 1)) {
                    *o = pair(e, d);
                }
            } else {
                for (o, &e) in out.iter_mut().zip(even) {
                    *o = pair(e, bf16::ZERO);
                }
            }
            true
        })
    }
}

/// `slots`, every one set to `zero`, as initialised values.
fn zeroed<V: Copy>(slots: &mut [MaybeUninit<V>], zero: V) -> &mut [V] {
    slots.fill(MaybeUninit::new(zero));
    // SAFETY: every slot was just written, and `MaybeUninit<V>` has `V`'s layout.
    unsafe { &mut *(slots as *mut [MaybeUninit<V>] as *mut [V]) }
}

/// Splits `row` over two runs of `dst`: even elements from `even`, odd ones
/// from `odd` (the two stride-2 phases of a row; the runs do not overlap).
/// One pass of pair copies, which the compiler turns into vector shuffles.
fn deinterleave_pairs<A: Copy>(row: &[A], dst: &mut [A], even: usize, odd: usize) {
    let (evens, odds) = (row.len().div_ceil(2), row.len() / 2);
    let (a, b) = if even < odd {
        let (head, tail) = dst.split_at_mut(odd);
        (&mut head[even..][..evens], &mut tail[..odds])
    } else {
        let (head, tail) = dst.split_at_mut(even);
        (&mut tail[..evens], &mut head[odd..][..odds])
    };
    for ((pair, x), y) in row.chunks_exact(2).zip(a.iter_mut()).zip(b.iter_mut()) {
        *x = pair[0];
        *y = pair[1];
    }
    if evens > odds {
        a[evens - 1] = row[row.len() - 1];
    }
}

/// The columns of one image in an indirect tile: its virtual positions from `first`, at tile column `column`.
struct ImageColumns {
    n: usize,
    first: usize,
    column: usize,
    len: usize,
}

/// Weights packed for the `nn` kernel: per pass, `[group][strip][K][MR]`, rows past `cd` zero.
fn pack_weights<T: Element>(passes: &[Pass], w: &[T], mr: usize) -> Vec<Vec<T::Accum>> {
    pack_strips(passes, 1, mr, T::Accum::ZERO, |at, _, _| w[at].to_accum())
}

/// Weights packed for the pair kernel: as [`pack_weights`], with `K` over
/// (channel pair, tap) and each element the [`pair`] of the two channels' weights.
fn pack_weight_pairs(passes: &[Pass], w: &[bf16], mr: usize) -> Vec<Vec<u32>> {
    let Some(first) = passes.first() else { return Vec::new() };
    let cs = first.src_channels;
    pack_strips(passes, 2, mr, 0, |at, c_step, p| {
        let odd = if 2 * p + 1 < cs { w[at + c_step] } else { bf16::ZERO };
        pair(w[at], odd)
    })
}

/// Weight strips with the source channels in slots of `per_slot` (1, or 2
/// for pairs): per pass, `[group][strip][slots × taps][MR]`, element
/// `(slot c, tap, row i)` given by `weight(at, c_step, c)`, with `at` the
/// index in `w` of the slot's first channel of row `i` at the tap and
/// `c_step` the distance between two channels; rows past `cd` are `zero`.
///
/// A strip is `MR` weight rows transposed. One task packs a strip for every
/// pass, channel by channel: the strip's kernels of a channel are read once
/// for all passes (an adjoint's strips gather kernels far apart, and a sweep
/// per stride phase would cost a trip to memory each), and each pass's block
/// is written in order, every element once (the buffers are not zeroed first:
/// for large layers that would be another pass over megabytes).
fn pack_strips<V: Copy + Send + Sync>(
    passes: &[Pass],
    per_slot: usize,
    mr: usize,
    zero: V,
    weight: impl Fn(usize, usize, usize) -> V + Sync,
) -> Vec<Vec<V>> {
    let Some(first) = passes.first() else { return Vec::new() };
    let (groups, cs, cd, kvol) = (first.groups, first.src_channels, first.dst_channels, first.kernel_volume);
    let channels = cs.div_ceil(per_slot);
    let strips = cd.div_ceil(mr);
    let lens: Vec<usize> = passes.iter().map(|p| groups * strips * channels * p.taps.len() * mr).collect();
    let mut packed: Vec<Vec<V>> = lens.iter().map(|&len| Vec::with_capacity(len)).collect();
    // One entry per (group, strip): that strip's block of every pass.
    let mut strip_blocks: Vec<Vec<&mut [MaybeUninit<V>]>> = (0..groups * strips).map(|_| Vec::new()).collect();
    for ((pass, buffer), &len) in passes.iter().zip(packed.iter_mut()).zip(&lens) {
        let spare = &mut buffer.spare_capacity_mut()[..len];
        let strip_len = channels * pass.taps.len() * mr;
        if strip_len == 0 {
            strip_blocks.iter_mut().for_each(|blocks| blocks.push(&mut []));
        } else {
            strip_blocks.iter_mut().zip(spare.chunks_mut(strip_len)).for_each(|(blocks, strip)| blocks.push(strip));
        }
    }
    strip_blocks.into_par_iter().tasks().enumerate().for_each(|(index, mut blocks)| {
        let (group, first_row) = (index / strips, index % strips * mr);
        let rows = mr.min(cd - first_row);
        // w(group, first_row + i, c, j) is at `base + i·i_step + c·c_step + j`.
        let (base, i_step, c_step) = match first.direction {
            Direction::Forward => ((group * cd + first_row) * cs * kvol, cs * kvol, kvol),
            Direction::Adjoint => ((group * cs * cd + first_row) * kvol, kvol, cd * kvol),
        };
        for c in 0..channels {
            for (pass, block) in passes.iter().zip(blocks.iter_mut()) {
                let ntaps = pass.taps.len();
                for (tap, tile) in pass.taps.iter().zip(block[c * ntaps * mr..][..ntaps * mr].chunks_exact_mut(mr)) {
                    let at = base + per_slot * c * c_step + tap.index;
                    let (values, padding) = tile.split_at_mut(rows);
                    for (i, v) in values.iter_mut().enumerate() {
                        v.write(weight(at + i * i_step, c_step, c));
                    }
                    for v in padding {
                        v.write(zero);
                    }
                }
            }
        }
    });
    for (buffer, len) in packed.iter_mut().zip(lens) {
        // SAFETY: the strips tile each pass's `[0, len)`, and every element of each was written above.
        unsafe { buffer.set_len(len) };
    }
    packed
}

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
    let in_place = pairs.is_none() && weights_in_place(passes, matches!(dtype, DType::F32 | DType::F64));
    let weights: usize = match in_place {
        true => 0,
        false => passes.iter().map(|p| p.groups * p.dst_channels.div_ceil(mr) * mr * slots * p.taps.len()).sum(),
    };
    let k = slots * passes.iter().map(|p| p.taps.len()).max().unwrap_or(0);
    // Each thread holds at most one task's panel and one row block's tile per
    // pass it runs at once (two that interleave); the bordered copy replaces
    // the panels where it is used.
    let at_once = if passes.windows(2).any(|pair| interleaves(&pair[0], &pair[1])) { 2 } else { 1 };
    let bordered = BorderedLayout::len(passes, nr, slots);
    let panel = if bordered > 0 { 0 } else { plan.max_ldb * k };
    let per_thread = at_once * threads.max(1);
    (weights + bordered + per_thread * panel) * slot_size + per_thread * plan.max_ldb * plan.rows * size
}

/// The most grid points a column block holds in `pass`.
fn grid_columns(pass: &Pass, columns: &Columns) -> usize {
    let per_image = if columns.positions >= pass.dst_volume() {
        pass.count.iter().product()
    } else {
        // A run of `positions` touches at most this many rows, each with at most this many points.
        let rows = columns.positions.div_ceil(pass.dst_size[2]) + 1;
        rows * pass.count[2].min(columns.positions)
    };
    per_image * columns.images
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
    // each worker from task to task: only their growth is zeroed (a panel's is
    // 256 KiB for a 1×1 conv), and each tile and panel is written before it is read.
    let buffers = || {
        let tiles = (0..plan.row_blocks).map(|_| [Vec::new(), Vec::new()]).collect::<Vec<[Vec<T::Accum>; 2]>>();
        (tiles, [PassInput::default(), PassInput::default()])
    };
    tasks.into_par_iter().tasks().for_each_init(buffers, |(tiles, inputs), mut task| {
        let mut p = 0;
        while p < passes.len() {
            let [first, second] = &mut *inputs;
            let columns = first.prepare(&source, &passes[p], src, &task, nr);
            let pair = p + 1 < passes.len()
                && interleaves(&passes[p], &passes[p + 1])
                && second.prepare(&source, &passes[p + 1], src, &task, nr) == columns
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
    /// Tile width: the columns rounded up to `NR` (per image in the bordered copy).
    ldb: usize,
}

impl<A: Accumulator> PassInput<A> {
    /// The segments of `pass` in `task`, with the panel packed where `source`
    /// has no bordered copy; returns the number of grid points (0: nothing to do).
    fn prepare<T: Element<Accum = A>>(
        &mut self,
        source: &Source<'_, A>,
        pass: &Pass,
        src: &[T],
        task: &Task<'_, T>,
        nr: usize,
    ) -> usize {
        let columns = pass.segments(task.images.clone(), task.positions.clone(), &mut self.segments);
        if columns == 0 {
            return 0;
        }
        let group = task.group;
        self.ldb = match source {
            Source::Bordered(bordered, _) => virtual_columns(bordered, nr, &mut self.segments, &mut self.images),
            Source::Pairs { bordered: Some(bordered), .. } => {
                virtual_columns(bordered, nr, &mut self.segments, &mut self.images)
            }
            Source::Panel(_) => {
                let ldb = columns.next_multiple_of(nr);
                self.panel_start = pack_panel(pass, src, group, &self.segments, columns, ldb, &mut self.panel);
                ldb
            }
            Source::Pairs { src, bordered: None, .. } => {
                let ldb = columns.next_multiple_of(nr);
                self.panel_start =
                    pack_pair_panel(pass, src, group, &self.segments, columns, ldb, &mut self.pair_panel);
                // The panel's columns as one run, for `multiply_rows`.
                self.images.clear();
                self.images.push(ImageColumns { n: 0, first: 0, column: 0, len: ldb });
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
            multiply(ks, pass, weights, p, &input.panel[input.panel_start..], ldb, group, channels, buffer)
        }
        Source::Pairs { bordered: Some(bordered), weights, kernels, .. } => {
            multiply_indirect(kernels, pass, weights, bordered, p, images, ldb, group, channels, buffer)
        }
        Source::Pairs { bordered: None, weights, kernels, .. } => {
            let k = pass.src_channels.div_ceil(2) * pass.taps.len();
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
    Bordered(Bordered<A>, Weights<'a, A>),
    /// Packed from NCHW into a panel per task.
    Panel(Weights<'a, A>),
    /// bf16 `src` in channel pairs, for the pair kernel: read in place from a
    /// bordered copy where one serves, else packed into a panel per task.
    Pairs { src: &'a [bf16], bordered: Option<Bordered<u32>>, weights: Weights<'a, u32>, kernels: PairKernels<A> },
}

/// Grid points (images × positions) up to which a forward pass reads its
/// weights in place. Packing costs a read and a write of every weight, once;
/// the kernel reads a packed strip faster (one stream rather than `MR`), and
/// that gain grows with the columns each weight meets: on this side packing
/// loses (ResNet-50's 3×3 conv with 512 channels, 196 points: 16% faster in
/// place), past it the kernel's speed wins (the 1-D conv of the suite, 8192
/// points: 12% slower in place; 784 points: even).
const IN_PLACE_COLUMNS: usize = 512;

/// Whether an op of `passes` reads its weights in place, given whether they
/// are in the accumulator type: a single forward pass over few columns.
fn weights_in_place(passes: &[Pass], accumulator_weights: bool) -> bool {
    matches!(passes, [pass] if accumulator_weights
        && pass.direction == Direction::Forward
        && pass.batch * pass.dst_volume() <= IN_PLACE_COLUMNS)
}

/// The weights as the micro-kernel reads them.
enum Weights<'a, B> {
    /// Packed per pass into `MR`-row strips ([`pack_weights`]).
    Packed(Vec<Vec<B>>),
    /// In place: a forward pass's weights in the accumulator type, whose every
    /// row (output channel) is one contiguous run of the reduction (`c`, tap),
    /// where packing would cost more than it saves (see [`IN_PLACE_COLUMNS`]).
    Rows(&'a [B]),
}

impl<'a, B> Weights<'a, B> {
    /// The weights of pass `p` for the strips of rows `channels` of `group`,
    /// `k` long, as the kernel's operands.
    fn block(
        &'a self,
        pass: &Pass,
        p: usize,
        group: usize,
        channels: &Range<usize>,
        mr: usize,
        k: usize,
    ) -> BlockWeights<'a, B> {
        match self {
            Weights::Packed(packed) => {
                let first_strip = group * pass.dst_channels.div_ceil(mr) + channels.start / mr;
                BlockWeights::Packed(&packed[p][first_strip * k * mr..], k, mr)
            }
            Weights::Rows(w) => {
                // Tile rows past the block's channels compute values that are never
                // stored: they read the last row again rather than zeros.
                let row = |o: usize| &w[(group * pass.dst_channels + o.min(channels.end - 1)) * k..][..k];
                let strips = channels.clone().step_by(mr).map(|first| {
                    let mut rows = RowSet::with_capacity(mr);
                    (first..first + mr).for_each(|o| rows.push(row(o)));
                    rows
                });
                BlockWeights::Rows(strips.collect())
            }
        }
    }
}

/// One row block's weight strips (see [`Weights::block`]).
enum BlockWeights<'a, B> {
    /// Strips of `k × MR` values, from strip 0.
    Packed(&'a [B], usize, usize),
    /// `MR` rows per strip.
    Rows(Vec<RowSet<'a, B>>),
}

impl<B> BlockWeights<'_, B> {
    /// Strip `s` from reduction step `k0`.
    fn strip(&self, s: usize, k0: usize) -> AOperand<'_, B> {
        match self {
            BlockWeights::Packed(packed, k, mr) => AOperand::Packed(&packed[(s * k + k0) * mr..]),
            BlockWeights::Rows(strips) => AOperand::Rows(&strips[s], k0),
        }
    }
}

impl<'a, A: Accumulator> Source<'a, A> {
    /// Channel pairs for bf16 where the instruction set has a pair kernel; else
    /// the bordered copy where it serves, or panels.
    fn new<T: Element<Accum = A>>(ks: &Kernels<A>, passes: &[Pass], src: &'a [T], w: &'a [T]) -> Self {
        if let (Some(src), Some(w), Some(kernels)) = (as_bf16(src), as_bf16(w), ks.pairs) {
            let bordered = Bordered::bf16_pairs(passes, src, kernels.cols);
            let weights = Weights::Packed(pack_weight_pairs(passes, w, kernels.rows));
            return Source::Pairs { src, bordered, weights, kernels };
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
    // Every element is written below, so the buffer only grows, never needs clearing.
    let start = cache_aligned(panel, k * ldb);
    let packer = RowPacker::new(pass, group, segments, columns);
    panel[start..][..k * ldb].par_chunks_mut(PACK_ROWS * ldb).tasks().enumerate().for_each(|(job, rows)| {
        let first = job * PACK_ROWS;
        packer.pack_rows(src, first..first + rows.len() / ldb, rows, ldb);
    });
    start
}

/// [`pack_panel`] for the pair kernel: row `(p, j)` holds the [`pair`]s of rows
/// `(2p, j)` and `(2p + 1, j)` (zeros past the last channel).
fn pack_pair_panel(
    pass: &Pass,
    src: &[bf16],
    group: usize,
    segments: &[Segment],
    columns: usize,
    ldb: usize,
    panel: &mut Vec<u32>,
) -> usize {
    let (cs, ntaps) = (pass.src_channels, pass.taps.len());
    let k = cs.div_ceil(2) * ntaps;
    let start = cache_aligned(panel, k * ldb);
    let packer = RowPacker::new(pass, group, segments, columns);
    panel[start..][..k * ldb].par_chunks_mut(PACK_ROWS * ldb).tasks().enumerate().for_each(|(job, rows)| {
        let (mut even, mut odd) = (vec![0f32; columns], vec![0f32; columns]);
        for (i, row) in rows.chunks_mut(ldb).enumerate() {
            let (p, j) = ((job * PACK_ROWS + i) / ntaps, (job * PACK_ROWS + i) % ntaps);
            packer.pack(src, 2 * p, j, &mut even);
            if 2 * p + 1 < cs {
                packer.pack(src, 2 * p + 1, j, &mut odd);
            } else {
                odd.fill(0.0);
            }
            // The values were bf16 widened: narrowing them back is exact.
            for ((d, &e), &o) in row.iter_mut().zip(&even).zip(&odd) {
                *d = pair(bf16::from_f32(e), bf16::from_f32(o));
            }
            row[columns..].fill(0);
        }
    });
    start
}

/// `W[group][channels] · panel`, `KC` rows at a time: `channels` (rounded up to
/// `MR`) × `ldb`, written into `buffer` (grown as needed) from the index returned.
#[allow(clippy::too_many_arguments)]
fn multiply<A: Accumulator>(
    ks: &Kernels<A>,
    pass: &Pass,
    weights: &Weights<'_, A>,
    p: usize,
    panel: &[A],
    ldb: usize,
    group: usize,
    channels: Range<usize>,
    buffer: &mut Vec<A>,
) -> usize {
    let (mr, nr, k) = (ks.nn_rows, ks.nn_cols, pass.reduction());
    let strips = channels.len().div_ceil(mr);
    let weights = weights.block(pass, p, group, &channels, mr, k);
    let start = tile_in(buffer, strips * mr * ldb, k);
    let tile = &mut buffer[start..][..strips * mr * ldb];
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        let b = &panel[k0 * ldb..];
        // Each `KC × NR` block of the panel is read once and stays in L1 for every weight strip.
        for jr in (0..ldb).step_by(nr) {
            for (s, tile_strip) in tile.chunks_mut(mr * ldb).enumerate() {
                ks.nn(kc, weights.strip(s, k0), &b[jr..], ldb, &mut tile_strip[jr..], ldb, k0 > 0);
            }
        }
    }
    start
}

/// Lays the segments' grid points out as virtual positions, image by image
/// (each image's run rounded up to `nr` columns), and points each segment at
/// its tile column. Returns the tile width.
fn virtual_columns<V: Copy + Send + Sync>(
    bordered: &Bordered<V>,
    nr: usize,
    segments: &mut [Segment],
    images: &mut Vec<ImageColumns>,
) -> usize {
    images.clear();
    let mut width = 0;
    for seg in segments.iter_mut() {
        let v = bordered.virtual_position(seg.m[0], seg.m[1], seg.m2.start);
        match images.last_mut() {
            Some(image) if image.n == seg.n => image.len = v + seg.m2.len() - image.first,
            _ => {
                if let Some(last) = images.last() {
                    width = last.column + last.len.next_multiple_of(nr);
                }
                images.push(ImageColumns { n: seg.n, first: v, column: width, len: seg.m2.len() });
            }
        }
        let image = images.last().map_or(0, |i| i.column + v - i.first);
        seg.column = image;
    }
    images.last().map_or(0, |last| last.column + last.len.next_multiple_of(nr))
}

/// [`multiply`] with `X̂` read in place from the bordered planes, by `ks`
/// (whose reduction runs over the planes' channels, or channel pairs, and taps).
#[allow(clippy::too_many_arguments)]
fn multiply_indirect<A: Accumulator, B>(
    ks: &impl IndirectKernel<A, B>,
    pass: &Pass,
    weights: &Weights<'_, B>,
    bordered: &Bordered<B>,
    pass_index: usize,
    images: &[ImageColumns],
    ldb: usize,
    group: usize,
    channels: Range<usize>,
    buffer: &mut Vec<A>,
) -> usize {
    let ntaps = pass.taps.len();
    let starts = &bordered.starts[pass_index];
    let k = bordered.channels * ntaps;
    let row = |image: &ImageColumns, kk: usize| {
        let (c, j) = (kk / ntaps, kk % ntaps);
        let plane = ((image.n * pass.groups + group) * bordered.channels + c) * bordered.plane_len;
        &bordered.data[plane + starts[j] + image.first..plane + bordered.plane_len]
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
                    ks.nn_indirect(weights.strip(s, k0), &rows, jr, &mut tile_strip[image.column + jr..], ldb, k0 > 0);
                }
            }
        }
    }
    start
}

/// Where a tile goes: its images, positions, group and channels.
struct Region {
    images: Range<usize>,
    positions: Range<usize>,
    group: usize,
    channels: Range<usize>,
}

/// A computed tile: a row per channel, `ldb` apart, each segment's values from its column.
struct Tile<'a, A> {
    values: &'a mut [A],
    ldb: usize,
    segments: &'a [Segment],
}

/// Writes `act(tile + bias)` to the region's grid points of `pass`; `pieces` are ordered (channel, image).
fn write_tile<T: Element>(
    pass: &Pass,
    bias: Option<&[T]>,
    activation: Activation,
    tile: Tile<'_, T::Accum>,
    region: &Region,
    pieces: &mut [&mut [T]],
) {
    let images = region.images.len();
    let rows = tile.values.chunks_mut(tile.ldb);
    for ((o, tile_row), planes) in region.channels.clone().zip(rows).zip(pieces.chunks_mut(images)) {
        let b = bias.map(|b| b[region.group * pass.dst_channels + o].to_accum());
        for seg in tile.segments {
            let piece = &mut planes[seg.n - region.images.start];
            let first = pass.dst_position([seg.m[0], seg.m[1], seg.m2.start]) - region.positions.start;
            let values = &mut tile_row[seg.column..][..seg.m2.len()];
            store_row(values, b, activation, &mut piece[first..], pass.step[2]);
        }
    }
}

/// [`write_tile`] for the tiles of two passes that [`interleave`](interleaves)
/// (`even` of `pass`, `odd` of the next, their segments alike): each row's
/// values alternate, one contiguous run per segment.
fn write_tile_pair<T: Element>(
    pass: &Pass,
    bias: Option<&[T]>,
    activation: Activation,
    even: Tile<'_, T::Accum>,
    odd: Tile<'_, T::Accum>,
    region: &Region,
    pieces: &mut [&mut [T]],
) {
    let images = region.images.len();
    let rows = even.values.chunks_mut(even.ldb).zip(odd.values.chunks_mut(odd.ldb));
    for ((o, (even_row, odd_row)), planes) in region.channels.clone().zip(rows).zip(pieces.chunks_mut(images)) {
        let b = bias.map(|b| b[region.group * pass.dst_channels + o].to_accum());
        for (e, d) in even.segments.iter().zip(odd.segments) {
            let piece = &mut planes[e.n - region.images.start];
            let first = pass.dst_position([e.m[0], e.m[1], e.m2.start]) - region.positions.start;
            let even_values = &mut even_row[e.column..][..e.m2.len()];
            let odd_values = &mut odd_row[d.column..][..d.m2.len()];
            epilogue(even_values, b, activation);
            epilogue(odd_values, b, activation);
            for ((pair, &x), &y) in
                piece[first..][..2 * e.m2.len()].chunks_exact_mut(2).zip(&*even_values).zip(&*odd_values)
            {
                pair[0] = T::from_accum(x);
                pair[1] = T::from_accum(y);
            }
        }
    }
}

/// Columns per block of the weight gradient's reduction.
const WEIGHT_COLUMNS: usize = 512;
/// Rows of `K` a weight-gradient task aims for at most.
const WEIGHT_ROWS: usize = 256;

/// How the weight gradient is split: column blocks reduced in order, and `K`
/// cut into blocks of `rows` (the parallel tasks, with the groups).
struct WeightPlan {
    columns: Columns,
    rows: usize,
    row_blocks: usize,
    k: usize,
}

impl WeightPlan {
    fn new(pass: &Pass, nt_cols: usize) -> WeightPlan {
        let k = pass.src_channels * pass.kernel_volume;
        let columns = Columns::new(pass.batch, pass.dst_volume(), WEIGHT_COLUMNS);
        let rows = row_block(k, MIN_TASKS.div_ceil(pass.groups), nt_cols, WEIGHT_ROWS);
        WeightPlan { columns, rows, row_blocks: k.div_ceil(rows).max(1), k }
    }
}

/// Bytes of extra memory the weight gradient takes with `threads` threads.
pub(crate) fn weight_workspace_bytes<A>(ks: &Kernels<A>, pass: &Pass, threads: usize) -> usize {
    let plan = WeightPlan::new(pass, ks.nt_cols);
    let ld = grid_columns(pass, &plan.columns).next_multiple_of(ks.lanes);
    let cd = pass.dst_channels.next_multiple_of(ks.nt_rows);
    let accumulators = pass.groups * plan.row_blocks * cd * plan.rows;
    // `X̂` is read in place from a bordered copy of `x` where one fits, else packed per task.
    let bordered = BorderedLayout::len(std::slice::from_ref(pass), ks.nn_cols, pass.src_channels);
    let panels = if bordered > 0 { 0 } else { threads.max(1) * plan.rows * ld };
    (accumulators + pass.groups * cd * ld + bordered + panels) * std::mem::size_of::<A>()
}

/// `dw[g·cd + o, k] = Σ_{n, p} y[n, g·cd + o, p] · X̂[g][k, (n, p)]` for the forward `pass`.
///
/// Column blocks are reduced in a fixed order; in each, `dY` is packed once
/// and every (group, K block) task packs its own rows of `X̂` and adds
/// `dY · X̂ᵀ` to its accumulator.
pub(crate) fn correlate_weight<T: Element>(ks: &Kernels<T::Accum>, pass: &Pass, x: &[T], y: &[T], dw: &mut [T]) {
    let plan = WeightPlan::new(pass, ks.nt_cols);
    let (cd, groups, k) = (pass.dst_channels, pass.groups, plan.k);
    if k == 0 || cd == 0 {
        return;
    }
    let (mr, nr, lanes) = (ks.nt_rows, ks.nt_cols, ks.lanes);
    let (cd_pad, ntaps, volume) = (cd.next_multiple_of(mr), pass.taps.len(), pass.dst_volume());
    let mut accumulators = vec![vec![T::Accum::ZERO; cd_pad * plan.rows]; groups * plan.row_blocks];
    // `X̂` read in place where it can be: its gap columns meet zeros of `dY`, which
    // only leaves the sums unchanged when every value of `x` is finite.
    let bordered = Bordered::new(std::slice::from_ref(pass), x, ks.nn_cols, true);
    let (mut segments, mut dy, mut images) = (Vec::new(), Vec::new(), Vec::new());
    for block in 0..plan.columns.blocks {
        let (image_range, positions) = plan.columns.block(block, pass.batch, volume);
        let columns = pass.segments(image_range, positions, &mut segments);
        if columns == 0 {
            continue;
        }
        let ld = match &bordered {
            Some(bordered) => virtual_columns(bordered, lanes, &mut segments, &mut images),
            None => columns.next_multiple_of(lanes),
        };
        dy.clear();
        dy.resize(groups * cd_pad * ld, T::Accum::ZERO);
        dy.par_chunks_mut(ld).tasks().enumerate().for_each(|(row, dy_row)| {
            let (group, o) = (row / cd_pad, row % cd_pad);
            if o < cd {
                for seg in &segments {
                    let plane = ((seg.n * groups + group) * cd + o) * volume;
                    let first = plane + pass.dst_position([seg.m[0], seg.m[1], seg.m2.start]);
                    widen(&y[first..][..seg.m2.len()], &mut dy_row[seg.column..][..seg.m2.len()]);
                }
            }
        });
        // The packed path's gather tables: per group, shared by its row blocks.
        let packers: Vec<RowPacker> = match &bordered {
            Some(_) => Vec::new(),
            None => (0..groups).map(|group| RowPacker::new(pass, group, &segments, columns)).collect(),
        };
        accumulators.par_iter_mut().tasks().enumerate().for_each(|(task, acc)| {
            let (group, rb) = (task / plan.row_blocks, task % plan.row_blocks);
            let rows = rb * plan.rows..((rb + 1) * plan.rows).min(k);
            let dy = &dy[group * cd_pad * ld..][..cd_pad * ld];
            match &bordered {
                Some(bordered) => {
                    let zeros = vec![T::Accum::ZERO; ld];
                    for image in &images {
                        let mut xhat = RowSet::with_capacity(rows.len().next_multiple_of(nr));
                        for kk in rows.clone() {
                            let (c, j) = (kk / ntaps, kk % ntaps);
                            let plane = ((image.n * groups + group) * pass.src_channels + c) * bordered.plane_len;
                            let start = plane + bordered.starts[0][j] + image.first;
                            xhat.push(&bordered.data[start..plane + bordered.plane_len]);
                        }
                        for _ in rows.len()..rows.len().next_multiple_of(nr) {
                            xhat.push(&zeros);
                        }
                        let len = image.len.next_multiple_of(lanes);
                        for (s, acc_strip) in acc.chunks_mut(mr * plan.rows).enumerate() {
                            let a = &dy[s * mr * ld + image.column..];
                            for jr in (0..rows.len()).step_by(nr) {
                                ks.nt_indirect(len, a, ld, &xhat, jr, &mut acc_strip[jr..], plan.rows);
                            }
                        }
                    }
                }
                None => {
                    let mut xhat = vec![T::Accum::ZERO; rows.len().next_multiple_of(nr) * ld];
                    packers[group].pack_rows(x, rows, &mut xhat, ld);
                    for (s, acc_strip) in acc.chunks_mut(mr * plan.rows).enumerate() {
                        for jr in (0..xhat.len() / ld).step_by(nr) {
                            ks.nt(ld, &dy[s * mr * ld..], ld, &xhat[jr * ld..], ld, &mut acc_strip[jr..], plan.rows);
                        }
                    }
                }
            }
        });
    }
    dw.par_chunks_mut(k).tasks().enumerate().for_each(|(channel, dw_row)| {
        let (group, o) = (channel / cd, channel % cd);
        for (rb, dw_part) in dw_row.chunks_mut(plan.rows).enumerate() {
            let acc = &accumulators[group * plan.row_blocks + rb][o * plan.rows..];
            for (d, &a) in dw_part.iter_mut().zip(acc) {
                *d = T::from_accum(a);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::{ConvGeometry, ConvOptions, ConvTransposeOptions};

    /// Row blocks cover a group's channels once, in whole strips, none more than a strip longer than another.
    #[test]
    fn row_blocks_are_whole_strips_of_even_length() {
        let opts = ConvTransposeOptions::new().stride(2).padding(1);
        let up = ConvGeometry::conv_transpose(2, &[16, 512, 4, 4], &[512, 256, 4, 4], None, &opts).unwrap();
        let mr = 6;
        let plan = Plan::new(&Pass::adjoint(&up), mr, 16, 4).unwrap();
        assert!(plan.row_blocks > 1);
        let blocks: Vec<_> = (0..plan.row_blocks).map(|b| plan.row_block_channels(b, 256)).collect();
        assert_eq!(blocks[0].start, 0);
        assert_eq!(blocks.last().unwrap().end, 256);
        assert!(blocks.windows(2).all(|pair| pair[0].end == pair[1].start));
        assert!(blocks.iter().all(|b| b.start % mr == 0 && b.len() <= plan.rows));
        let strips: Vec<_> = blocks.iter().map(|b| b.len().div_ceil(mr)).collect();
        assert!(strips.iter().max().unwrap() - strips.iter().min().unwrap() <= 1, "{strips:?}");
    }

    /// Column blocks of whole rows where that computes fewer border columns, and only there.
    #[test]
    fn blocks_take_the_rows_that_waste_least() {
        let pad1 = ConvOptions::new().padding(1);
        let conv = |x: &[usize], w: &[usize], o: &ConvOptions| {
            Pass::forward(&ConvGeometry::conv(x.len() - 2, x, w, None, o).unwrap())
        };
        // 56 wide, pitch 58: 5 rows compute 288 columns for 280 outputs.
        assert_eq!(whole_rows(&[conv(&[4, 64, 56, 56], &[64, 64, 3, 3], &pad1)], 16, 256), Some(280));
        // 128 wide, pitch 130: one row computes exactly its 128 outputs.
        assert_eq!(whole_rows(&[conv(&[1, 64, 128, 128], &[64, 64, 3, 3], &pad1)], 16, 256), Some(128));
        // Rows longer than a block, planes smaller than one, or several passes: blocks of `target`.
        assert_eq!(whole_rows(&[conv(&[8, 256, 1024], &[256, 256, 3], &pad1)], 16, 256), None);
        assert_eq!(whole_rows(&[conv(&[4, 512, 7, 7], &[512, 512, 3, 3], &pad1)], 16, 256), None);
        let opts = ConvTransposeOptions::new().stride(2);
        let up = ConvGeometry::conv_transpose(2, &[1, 128, 64, 64], &[128, 64, 2, 2], None, &opts).unwrap();
        assert_eq!(whole_rows(&Pass::adjoint(&up), 16, 256), None);
    }

    /// Even elements land in one run and odd ones in the other, whichever comes first in the buffer.
    #[test]
    fn pairs_split_into_their_phases() {
        for len in [0usize, 1, 2, 7, 16, 33] {
            let row: Vec<f32> = (0..len).map(|i| i as f32).collect();
            let evens: Vec<f32> = row.iter().copied().step_by(2).collect();
            let odds: Vec<f32> = row.iter().copied().skip(1).step_by(2).collect();
            for (even, odd) in [(1, 40), (41, 2)] {
                let mut dst = vec![-1f32; 80];
                deinterleave_pairs(&row, &mut dst, even, odd);
                assert_eq!(dst[even..][..evens.len()], evens[..], "len {len}, evens at {even}");
                assert_eq!(dst[odd..][..odds.len()], odds[..], "len {len}, odds at {odd}");
                let written = evens.len() + odds.len();
                assert_eq!(dst.iter().filter(|&&v| v != -1.0).count(), written, "len {len}: nothing else written");
            }
        }
    }

    /// A stride-2 transposed conv's adjoint passes pair up along the rows where
    /// the two phases have the same grid, and only there.
    #[test]
    fn row_phases_of_stride_two_interleave() {
        let pairs = |x: &[usize], w: &[usize], opts: &ConvTransposeOptions| {
            let passes = Pass::adjoint(&ConvGeometry::conv_transpose(2, x, w, None, opts).unwrap());
            passes.windows(2).filter(|pair| interleaves(&pair[0], &pair[1])).count()
        };
        let stride2 = ConvTransposeOptions::new().stride(2);
        // 2x2 stride 2: the phases (a, 0), (a, 1) of each row phase a.
        assert_eq!(pairs(&[1, 16, 30, 17], &[16, 20, 2, 2], &stride2), 2);
        // An odd output width gives the even phase one more column: no pairs.
        let odd = ConvTransposeOptions::new().stride(2).output_padding([0, 1]);
        assert_eq!(pairs(&[1, 4, 5, 5], &[4, 3, 2, 2], &odd), 0);
        // Stride 1 along the rows has a single phase there.
        assert_eq!(pairs(&[1, 4, 5, 5], &[4, 3, 2, 2], &ConvTransposeOptions::new().stride([2, 1])), 0);
    }

    /// The shapes `cpu::tests` checks against the direct loops past the tile sizes
    /// run both ways of reading `X̂`: in place and packed.
    #[test]
    fn large_test_shapes_cover_both_panel_sources() {
        let nr = 16;
        let conv = ConvGeometry::conv(2, &[2, 40, 19, 23], &[29, 40, 3, 3], None, &ConvOptions::new().padding(1));
        assert!(BorderedLayout::new(&[Pass::forward(&conv.unwrap())], nr).is_some());
        let opts = ConvTransposeOptions::new().stride(2);
        let up = ConvGeometry::conv_transpose(2, &[1, 16, 30, 17], &[16, 20, 2, 2], None, &opts).unwrap();
        assert!(BorderedLayout::new(&Pass::adjoint(&up), nr).is_some());
        let strided = ConvOptions::new().padding(1).stride(2);
        let strided = ConvGeometry::conv(2, &[2, 8, 33, 40], &[24, 8, 3, 3], None, &strided).unwrap();
        assert!(BorderedLayout::new(&[Pass::forward(&strided)], nr).is_some());
        let stem = ConvOptions::new().padding(3).stride(2);
        let stem = ConvGeometry::conv(2, &[1, 3, 40, 44], &[20, 3, 7, 7], None, &stem).unwrap();
        assert!(BorderedLayout::new(&[Pass::forward(&stem)], nr).is_some());
        let narrow = ConvOptions::new().padding([1, 0]).stride([2, 1]).groups(2);
        let narrow = ConvGeometry::conv(2, &[3, 6, 7, 5], &[50, 3, 2, 3], None, &narrow).unwrap();
        assert!(BorderedLayout::new(&[Pass::forward(&narrow)], nr).is_none());
        let pointwise = ConvGeometry::conv(2, &[1, 8, 6, 6], &[16, 8, 1, 1], None, &ConvOptions::new()).unwrap();
        assert!(BorderedLayout::new(&[Pass::forward(&pointwise)], nr).is_none());
    }
}
