//! The bordered copy of `src`: im2col rows as contiguous runs, read in place.

use std::mem::MaybeUninit;
use std::ops::Range;

use half::bf16;
use rayon::prelude::*;

use crate::cpu::pairs::pair;
use crate::cpu::pass::{Pass, Segment, as_accumulators, widen};
use crate::cpu::threads::Tasks;
use crate::element::{Accumulator, Element};

/// The `src` planes copied once with zero borders wide enough that every tap
/// reads inside, and split into their stride phases (`x_r[i] = x[r + stride·i]`
/// per dim), so that every tap reads one phase with unit stride. Grid point
/// `m` of a pass then has the *virtual position* `v = m0·pitch[0] + m1·pitch[1] + m2`,
/// and im2col row `(c, j)` at column `v` is `plane(c)[starts[j] + v]`: the `nn`
/// kernel reads it in place (`nn_indirect`), with no panel to pack. Columns
/// that fall in the borders are computed and dropped.
///
/// A plane holds one source channel (values widened to the accumulator), or
/// for the bf16 pair kernel two, as [`pair`]s (see `pairs.rs`). Where that
/// copy would be `src` itself, `src` is read in place (see
/// [`BorderedLayout::is_source`]).
pub(super) struct Bordered<'a, V> {
    data: Planes<'a, V>,
    /// Planes per (image, group): the source channels, or their pairs.
    pub(super) channels: usize,
    pub(super) plane_len: usize,
    pub(super) pitch: [usize; 2],
    /// Per pass, per tap: where the tap reads grid point 0.
    pub(super) starts: Vec<Vec<usize>>,
    /// Per pass, per reduction step `(c, j)`: where it reads grid point 0 and
    /// where its plane ends, from the first plane of an (image, group): a
    /// table, so that the kernel's row pointers cost an add, not a division.
    pub(super) steps: Vec<Vec<Range<usize>>>,
}

/// The narrowest tile that reads the source in place where it can. U-Net's
/// upsampling layer, alternating runs: AVX-512's 32-column tiles gain 10%
/// (1.72 -> 1.55 ms); AVX2's 16-column ones lose 5-10%, their `X̂` blocks
/// re-read by twice the strips (of 6 rows, not 12) from planes a power of two
/// apart (16 KiB), whose rows share cache sets where the copy's tail
/// staggers them.
const SOURCE_MIN_COLUMNS: usize = 32;

/// The planes of a [`Bordered`]: a copy, or the source itself.
enum Planes<'a, V> {
    Copy(Vec<V>),
    Source(&'a [V]),
}

impl<V> Bordered<'_, V> {
    /// Every plane, image by image and group by group.
    pub(super) fn data(&self) -> &[V] {
        match &self.data {
            Planes::Copy(data) => data,
            Planes::Source(data) => data,
        }
    }

    /// Where an image's run of columns must start: anywhere in a copy (its
    /// planes end in `nr` spare columns), at a multiple of `nr` in the source
    /// itself, so that the run, rounded up to `nr`, ends inside its plane.
    fn run_alignment(&self, nr: usize) -> usize {
        match self.data {
            Planes::Copy(_) => 1,
            Planes::Source(_) => nr,
        }
    }
}

/// Where [`Bordered`] puts things: zeros before the data (in padded
/// coordinates), the extent of a phase in each dim, and the length of a plane.
pub(super) struct BorderedLayout {
    pub(super) lo: [usize; 3],
    pub(super) extent: [usize; 3],
    pub(super) plane_len: usize,
}

impl BorderedLayout {
    /// The layout for `passes`, or `None` where packing serves better: borders
    /// that would waste more than an eighth of the columns, or a single pass
    /// with a single tap (a 1×1 conv: its panel is a straight copy, and reading
    /// its rows in place touches a page per input channel for every strip).
    pub(super) fn new(passes: &[Pass], nr: usize) -> Option<BorderedLayout> {
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

    /// Whether the copy would be the source itself: unit strides, every tap
    /// at offset zero, every pass over the whole source grid (a transposed
    /// conv whose kernel equals its stride, as U-Net's upsampling layer), and
    /// planes a whole number of `nr` columns, so a column block never reads
    /// past its plane; and tiles of [`SOURCE_MIN_COLUMNS`] columns at least.
    /// Reading `src` in place then saves the copy.
    pub(super) fn is_source(passes: &[Pass], nr: usize) -> bool {
        let Some(first) = passes.first() else { return false };
        nr >= SOURCE_MIN_COLUMNS
            && first.src_stride == [1; 3]
            && first.src_volume().is_multiple_of(nr)
            && passes.iter().all(|p| p.count == first.src_size && p.taps.iter().all(|t| t.offset == [0; 3]))
            && BorderedLayout::new(passes, nr).is_some()
    }

    /// Elements of a copy of `passes`'s source with `channels` planes per (image, group).
    pub(super) fn len(passes: &[Pass], nr: usize, channels: usize) -> usize {
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

impl<V: Copy + Send + Sync> Bordered<'_, V> {
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
        let starts: Vec<Vec<usize>> = passes
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
        let steps = steps(&starts, channels, plane_len);
        Some(Bordered { data: Planes::Copy(data), channels, plane_len, pitch, starts, steps })
    }

    pub(super) fn virtual_position(&self, m0: usize, m1: usize, m2: usize) -> usize {
        m0 * self.pitch[0] + m1 * self.pitch[1] + m2
    }
}

impl<'a, A: Accumulator> Bordered<'a, A> {
    /// The copy of `src` for `passes`, a plane per channel, or `src` itself
    /// where that is the copy and holds accumulators; with `finite_only`,
    /// `None` as well when `src` holds an infinity or NaN (see `correlate_weight`).
    pub(super) fn new<T: Element<Accum = A>>(
        passes: &[Pass],
        src: &'a [T],
        nr: usize,
        finite_only: bool,
    ) -> Option<Self> {
        let first = passes.first()?;
        let (volume, width) = (first.src_volume(), first.src_size[2]);
        assert_eq!(src.len(), first.batch * first.groups * first.src_channels * volume, "bordered copy: source length");
        let finite = || src.iter().all(|v| v.to_f64().is_finite());
        if let Some(values) = as_accumulators(src).filter(|_| BorderedLayout::is_source(passes, nr)) {
            if finite_only && !finite() {
                return None;
            }
            let (channels, [_, h, w]) = (first.src_channels, first.src_size);
            let starts: Vec<Vec<usize>> = passes.iter().map(|p| vec![0; p.taps.len()]).collect();
            let steps = steps(&starts, channels, volume);
            let (data, pitch) = (Planes::Source(values), [h * w, w]);
            return Some(Bordered { data, channels, plane_len: volume, pitch, starts, steps });
        }
        Bordered::build(passes, nr, first.src_channels, A::ZERO, finite_only, |plane, row, out| {
            let values = &src[plane * volume + row * width..][..width];
            widen(values, out);
            !finite_only || values.iter().all(|v| v.to_f64().is_finite())
        })
    }
}

impl Bordered<'_, u32> {
    /// The copy of bf16 `src` for `passes` with a plane per pair of channels
    /// (`2c`, `2c + 1`), as [`pair`]s; an odd last channel pairs with zeros.
    pub(super) fn bf16_pairs(passes: &[Pass], src: &[bf16], nr: usize) -> Option<Self> {
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

/// Per pass, per reduction step `(c, j)`: where tap `j` of channel `c` reads
/// grid point 0 and where that plane ends (see [`Bordered::steps`]).
fn steps(starts: &[Vec<usize>], channels: usize, plane_len: usize) -> Vec<Vec<Range<usize>>> {
    starts
        .iter()
        .map(|taps| {
            let planes = (0..channels).map(|c| c * plane_len);
            planes.flat_map(|plane| taps.iter().map(move |&start| plane + start..plane + plane_len)).collect()
        })
        .collect()
}

/// `slots`, every one set to `zero`, as initialised values.
pub(crate) fn zeroed<V: Copy>(slots: &mut [MaybeUninit<V>], zero: V) -> &mut [V] {
    slots.fill(MaybeUninit::new(zero));
    // SAFETY: every slot was just written, and `MaybeUninit<V>` has `V`'s layout.
    unsafe { &mut *(slots as *mut [MaybeUninit<V>] as *mut [V]) }
}

/// Splits `row` over two runs of `dst`: even elements from `even`, odd ones
/// from `odd` (the two stride-2 phases of a row; the runs do not overlap).
/// One pass of pair copies, which the compiler turns into vector shuffles.
pub(super) fn deinterleave_pairs<A: Copy>(row: &[A], dst: &mut [A], even: usize, odd: usize) {
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
pub(super) struct ImageColumns {
    pub(super) n: usize,
    pub(super) first: usize,
    pub(super) column: usize,
    pub(super) len: usize,
}

/// Lays the segments' grid points out as virtual positions, image by image
/// (each image's run rounded up to `nr` columns, and started at a multiple of
/// `nr` when read from the source itself: the columns before the first
/// segment are computed and dropped, or meet zeros of `dY`), and points each
/// segment at its tile column. Returns the tile width.
pub(super) fn virtual_columns<V: Copy + Send + Sync>(
    bordered: &Bordered<'_, V>,
    nr: usize,
    segments: &mut [Segment],
    images: &mut Vec<ImageColumns>,
) -> usize {
    images.clear();
    let align = bordered.run_alignment(nr);
    let mut width = 0;
    for seg in segments.iter_mut() {
        let v = bordered.virtual_position(seg.m[0], seg.m[1], seg.m2.start);
        match images.last_mut() {
            Some(image) if image.n == seg.n => image.len = v + seg.m2.len() - image.first,
            _ => {
                if let Some(last) = images.last() {
                    width = last.column + last.len.next_multiple_of(nr);
                }
                let first = v - v % align;
                images.push(ImageColumns { n: seg.n, first, column: width, len: v + seg.m2.len() - first });
            }
        }
        let image = images.last().map_or(0, |i| i.column + v - i.first);
        seg.column = image;
    }
    images.last().map_or(0, |last| last.column + last.len.next_multiple_of(nr))
}
