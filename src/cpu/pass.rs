//! One shape for every fast CPU algorithm: a *pass* writes a sub-grid of `dst`
//! planes as a correlation of `src` planes,
//!
//! `dst[n, g·cd + o, start + m·step] = Σ_{c < cs, j} w(g, o, c, j) · src[n, g·cs + c, m·src_stride + offset_j]`
//!
//! with taps outside `src` reading zero. The forward correlation is one pass
//! (`dst = y`, `src = x`, the whole grid). Its adjoint is one pass per stride
//! phase `r` (`dst = x`, `src = y`, the grid `r + m·stride`): the taps `t` that
//! reach phase `r` are those with `(r + padding_lo - t·dilation) ≡ 0 (mod stride)`, at
//! `src` offset `(r + padding_lo - t·dilation) / stride` — a plain stride-1
//! correlation of `y`, with no scatter and no overlap between phases. For
//! stride 1 that is the usual "flipped kernel" form.

use std::any::TypeId;
use std::ops::Range;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use super::direct::tap_range;
use super::isa::prefetch;
use crate::backend::Activation;
use crate::element::{Accumulator, Element};
use crate::geometry::ConvGeometry;

/// Runs shorter than this are packed value by value (see [`Pass::pack_row`]).
const SHORT_RUN: usize = 16;
/// How many rows ahead of the one it packs [`RowPacker::pack_rows`] asks for
/// the source: a 1×1 conv's panel (a copy of rows of 256 planes from memory)
/// packs 9% faster reading four ahead.
const PREFETCH_ROWS: usize = 4;

/// One tap of a pass: where it reads in `src`, and which kernel tap of the weight it is.
#[derive(Debug, Clone)]
pub(crate) struct Tap {
    pub offset: [i64; 3],
    pub index: usize,
    /// The grid points `m2` of a row for which this tap reads inside `src` along dim 2.
    pub inner: Range<usize>,
}

/// Whether `dst` is `y` (the forward correlation) or `x` (its adjoint), which
/// decides where `w(g, o, c, j)` lives in the `[out_channels, in_channels/groups, k]` weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Forward,
    Adjoint,
}

/// A correlation from `src` planes to a sub-grid of `dst` planes (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct Pass {
    pub direction: Direction,
    pub batch: usize,
    pub groups: usize,
    /// Channels per group of `src` (the reduction's channels) and of `dst`.
    pub src_channels: usize,
    pub dst_channels: usize,
    pub src_size: [usize; 3],
    pub dst_size: [usize; 3],
    pub src_stride: [usize; 3],
    /// The grid of `dst` positions this pass writes: `start + m·step`, `m < count`.
    pub start: [usize; 3],
    pub step: [usize; 3],
    pub count: [usize; 3],
    pub taps: Vec<Tap>,
    pub kernel_volume: usize,
}

impl Pass {
    /// The forward correlation `y = x ⋆ w`.
    pub fn forward(g: &ConvGeometry) -> Pass {
        let [kd, kh, kw] = g.kernel_size;
        let taps = (0..kd * kh * kw)
            .map(|index| {
                let t = [index / (kh * kw), index / kw % kh, index % kw];
                let offset = std::array::from_fn(|d| (t[d] * g.dilation[d]) as i64 - g.padding_lo[d] as i64);
                let inner = tap_range(g.in_size[2], g.out_size[2], g.stride[2], offset[2]);
                Tap { offset, index, inner }
            })
            .collect();
        Pass {
            direction: Direction::Forward,
            batch: g.batch,
            groups: g.groups,
            src_channels: g.in_channels_per_group(),
            dst_channels: g.out_channels_per_group(),
            src_size: g.in_size,
            dst_size: g.out_size,
            src_stride: g.stride,
            start: [0; 3],
            step: [1; 3],
            count: g.out_size,
            taps,
            kernel_volume: g.kernel_volume(),
        }
    }

    /// The adjoint `x = yᵀ ⋆ w`, one pass per stride phase that holds a position of `x`.
    pub fn adjoint(g: &ConvGeometry) -> Vec<Pass> {
        let [kd, kh, kw] = g.kernel_size;
        // Phases beyond the size of x hold no position (and a stride may be absurdly large).
        let [s0, s1, s2]: [usize; 3] = std::array::from_fn(|d| g.stride[d].min(g.in_size[d]));
        let mut passes = Vec::with_capacity(s0 * s1 * s2);
        for r in (0..s0).flat_map(|a| (0..s1).flat_map(move |b| (0..s2).map(move |c| [a, b, c]))) {
            let count: [usize; 3] = std::array::from_fn(|d| g.in_size[d].saturating_sub(r[d]).div_ceil(g.stride[d]));
            if count.contains(&0) {
                continue;
            }
            let taps = (0..kd * kh * kw)
                .filter_map(|index| {
                    let t = [index / (kh * kw), index / kw % kh, index % kw];
                    let mut offset = [0i64; 3];
                    for d in 0..3 {
                        let shift = (r[d] + g.padding_lo[d]) as i64 - (t[d] * g.dilation[d]) as i64;
                        let stride = g.stride[d] as i64;
                        if shift.rem_euclid(stride) != 0 {
                            return None;
                        }
                        offset[d] = shift.div_euclid(stride);
                    }
                    let inner = tap_range(g.out_size[2], count[2], 1, offset[2]);
                    Some(Tap { offset, index, inner })
                })
                .collect();
            passes.push(Pass {
                direction: Direction::Adjoint,
                batch: g.batch,
                groups: g.groups,
                src_channels: g.out_channels_per_group(),
                dst_channels: g.in_channels_per_group(),
                src_size: g.out_size,
                dst_size: g.in_size,
                src_stride: [1; 3],
                start: r,
                step: g.stride,
                count,
                taps,
                kernel_volume: g.kernel_volume(),
            });
        }
        passes
    }

    /// The reduction length `cs · taps` of one output element.
    pub fn reduction(&self) -> usize {
        self.src_channels * self.taps.len()
    }

    pub fn src_volume(&self) -> usize {
        self.src_size.iter().product()
    }

    pub fn dst_volume(&self) -> usize {
        self.dst_size.iter().product()
    }

    /// Index in the weight of the kernel of `(group, o, c)`: `w(group, o, c, j)`
    /// is `taps[j].index` further.
    pub fn kernel_start(&self, group: usize, o: usize, c: usize) -> usize {
        let (out, inner) = match self.direction {
            Direction::Forward => (group * self.dst_channels + o, c),
            Direction::Adjoint => (group * self.src_channels + c, o),
        };
        let in_per_group = match self.direction {
            Direction::Forward => self.src_channels,
            Direction::Adjoint => self.dst_channels,
        };
        (out * in_per_group + inner) * self.kernel_volume
    }

    /// Offset of the `src` plane `(n, group, c)`.
    #[inline]
    pub fn src_plane(&self, n: usize, group: usize, c: usize) -> usize {
        ((n * self.groups + group) * self.src_channels + c) * self.src_volume()
    }

    /// The flat `dst` position of grid point `m`.
    #[inline]
    pub fn dst_position(&self, m: [usize; 3]) -> usize {
        let q: [usize; 3] = std::array::from_fn(|d| self.start[d] + m[d] * self.step[d]);
        (q[0] * self.dst_size[1] + q[1]) * self.dst_size[2] + q[2]
    }

    /// The grid points of this pass whose `dst` position lies in `positions`, as
    /// runs along the innermost dim (in grid order), numbered as consecutive columns.
    pub fn segments(&self, images: Range<usize>, positions: Range<usize>, out: &mut Vec<Segment>) -> usize {
        out.clear();
        let mut column = 0;
        for n in images {
            for m0 in 0..self.count[0] {
                for m1 in 0..self.count[1] {
                    let row_start = self.dst_position([m0, m1, 0]);
                    // Grid points m2 with row_start + m2·step2 in positions.
                    let lo = positions.start.saturating_sub(row_start).div_ceil(self.step[2]);
                    let hi = positions.end.saturating_sub(row_start).div_ceil(self.step[2]).min(self.count[2]);
                    if lo < hi {
                        out.push(Segment { n, m: [m0, m1], m2: lo..hi, column });
                        column += hi - lo;
                    }
                }
            }
        }
        column
    }

    /// Writes row `(c, j)` of the im2col panel for `segments` into `row`
    /// (one value per column; taps outside `src` read zero).
    pub fn pack_row<T: Element>(
        &self,
        src: &[T],
        group: usize,
        c: usize,
        j: usize,
        segments: &[Segment],
        row: &mut [T::Accum],
    ) {
        let offset = self.taps[j].offset;
        let [_, h, _] = self.src_size;
        let w = self.src_size[2];
        for seg in segments {
            let dst = &mut row[seg.column..][..seg.m2.len()];
            let i0 = (seg.m[0] * self.src_stride[0]) as i64 + offset[0];
            let i1 = (seg.m[1] * self.src_stride[1]) as i64 + offset[1];
            let inside = (0..self.src_size[0] as i64).contains(&i0) && (0..h as i64).contains(&i1);
            if seg.m2.len() < SHORT_RUN {
                // Tiny planes: one select per value costs less than calls to copy and fill a few.
                let base =
                    if inside { self.src_plane(seg.n, group, c) + (i0 as usize * h + i1 as usize) * w } else { 0 };
                for (d, m2) in dst.iter_mut().zip(seg.m2.clone()) {
                    let i2 = (m2 * self.src_stride[2]) as i64 + offset[2];
                    *d = if inside && (0..w as i64).contains(&i2) {
                        src[base + i2 as usize].to_accum()
                    } else {
                        T::Accum::ZERO
                    };
                }
                continue;
            }
            let Some((Range { start: lo, end: hi }, first)) = self.run_source(group, c, j, seg) else {
                dst.fill(T::Accum::ZERO);
                continue;
            };
            dst[..lo].fill(T::Accum::ZERO);
            dst[hi..].fill(T::Accum::ZERO);
            if self.src_stride[2] == 1 {
                widen(&src[first..][..hi - lo], &mut dst[lo..hi]);
            } else {
                for (d, s) in dst[lo..hi].iter_mut().zip(src[first..].iter().step_by(self.src_stride[2])) {
                    *d = s.to_accum();
                }
            }
        }
    }

    /// What row `(c, j)` reads of `src` for the run `seg`: the run's columns
    /// that tap `j` finds inside `src` (counted from the run's start), and the
    /// index of the first one's value; `None` where it finds none.
    fn run_source(&self, group: usize, c: usize, j: usize, seg: &Segment) -> Option<(Range<usize>, usize)> {
        let (offset, inner) = (self.taps[j].offset, &self.taps[j].inner);
        let [d0, h, w] = self.src_size;
        let i0 = (seg.m[0] * self.src_stride[0]) as i64 + offset[0];
        let i1 = (seg.m[1] * self.src_stride[1]) as i64 + offset[1];
        if !(0..d0 as i64).contains(&i0) || !(0..h as i64).contains(&i1) {
            return None;
        }
        let base = self.src_plane(seg.n, group, c) + (i0 as usize * h + i1 as usize) * w;
        let start = inner.start.clamp(seg.m2.start, seg.m2.end);
        let valid = start..inner.end.clamp(start, seg.m2.end);
        let first = (base as i64 + (valid.start * self.src_stride[2]) as i64 + offset[2]) as usize;
        (!valid.is_empty()).then(|| (valid.start - seg.m2.start..valid.end - seg.m2.start, first))
    }
}

/// Packs rows `(c, j)` of the im2col panel of one task's segments.
///
/// Where the runs are short (tiny planes), the per-run bounds work of
/// [`Pass::pack_row`] costs more than the copying; but which element each
/// column reads for tap `j` is the same for every channel, one plane apart.
/// So per tap a table of those offsets (`OUTSIDE` for zeros) is made once,
/// and each row is one plain gather.
pub(crate) struct RowPacker<'a> {
    pass: &'a Pass,
    group: usize,
    segments: &'a [Segment],
    columns: usize,
    /// Per tap, per column: the offset in channel 0's plane.
    gathers: Vec<Vec<usize>>,
}

/// A column that reads a zero.
const OUTSIDE: usize = usize::MAX;

impl<'a> RowPacker<'a> {
    pub fn new(pass: &'a Pass, group: usize, segments: &'a [Segment], columns: usize) -> Self {
        let short = columns < SHORT_RUN * segments.len();
        let gathers = if short {
            (0..pass.taps.len()).map(|j| pass.gather(group, j, segments, columns)).collect()
        } else {
            Vec::new()
        };
        RowPacker { pass, group, segments, columns, gathers }
    }

    /// Writes rows `rows` (row `(c, j)` is `c·taps + j`) to `out`, `ld` apart,
    /// each with zeros past its columns, reading the source [`PREFETCH_ROWS`] rows ahead.
    pub fn pack_rows<T: Element>(&self, src: &[T], rows: Range<usize>, out: &mut [T::Accum], ld: usize) {
        let ntaps = self.pass.taps.len();
        let prefetch = |kk: usize| {
            if rows.contains(&kk) {
                self.prefetch(src, kk / ntaps, kk % ntaps);
            }
        };
        (rows.start..rows.start + PREFETCH_ROWS).for_each(prefetch);
        for (kk, row) in rows.clone().zip(out.chunks_mut(ld)) {
            prefetch(kk + PREFETCH_ROWS);
            self.pack(src, kk / ntaps, kk % ntaps, &mut row[..self.columns]);
            row[self.columns..].fill(T::Accum::ZERO);
        }
    }

    /// Asks for the values row `(c, j)` reads of `src` to be brought into
    /// cache, where they are runs: each a few lines of one plane's row, too
    /// short for the hardware prefetcher to follow. Tables serve tiny planes, in cache.
    fn prefetch<T: Element>(&self, src: &[T], c: usize, j: usize) {
        if !self.gathers.is_empty() {
            return;
        }
        for seg in self.segments.iter().filter(|seg| seg.m2.len() >= SHORT_RUN) {
            if let Some((columns, first)) = self.pass.run_source(self.group, c, j, seg) {
                let last = first + (columns.len() - 1) * self.pass.src_stride[2];
                prefetch(&src[first..=last]);
            }
        }
    }

    /// Writes row `(c, j)` (one value per column; taps outside `src` read zero).
    pub fn pack<T: Element>(&self, src: &[T], c: usize, j: usize, row: &mut [T::Accum]) {
        let Some(gather) = self.gathers.get(j) else {
            return self.pass.pack_row(src, self.group, c, j, self.segments, row);
        };
        let plane = c * self.pass.src_volume();
        for (d, &at) in row.iter_mut().zip(gather) {
            *d = if at == OUTSIDE { T::Accum::ZERO } else { src[plane + at].to_accum() };
        }
    }
}

impl Pass {
    /// Where each column of row `(0, j)` reads in `src` (`OUTSIDE` for a zero).
    fn gather(&self, group: usize, j: usize, segments: &[Segment], columns: usize) -> Vec<usize> {
        let offset = self.taps[j].offset;
        let [d0, h, w] = self.src_size.map(|d| d as i64);
        let mut gather = vec![OUTSIDE; columns];
        for seg in segments {
            let i0 = (seg.m[0] * self.src_stride[0]) as i64 + offset[0];
            let i1 = (seg.m[1] * self.src_stride[1]) as i64 + offset[1];
            if !(0..d0).contains(&i0) || !(0..h).contains(&i1) {
                continue;
            }
            let row = self.src_plane(seg.n, group, 0) + ((i0 * h + i1) * w) as usize;
            for (at, m2) in gather[seg.column..].iter_mut().zip(seg.m2.clone()) {
                let i2 = (m2 * self.src_stride[2]) as i64 + offset[2];
                if (0..w).contains(&i2) {
                    *at = row + i2 as usize;
                }
            }
        }
        gather
    }
}

/// A run of grid points `(m[0], m[1], m2)` of one image, written to consecutive columns.
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    /// Image index.
    pub n: usize,
    pub m: [usize; 2],
    pub m2: Range<usize>,
    /// The column of the first point.
    pub column: usize,
}

/// `dst[i] = src[i].to_accum()`, with the half types converted a register at a time.
pub(crate) fn widen<T: Element>(src: &[T], dst: &mut [T::Accum]) {
    debug_assert_eq!(src.len(), dst.len());
    let t = TypeId::of::<T>();
    if t == TypeId::of::<T::Accum>() {
        // SAFETY: T and T::Accum are the same type.
        let src = unsafe { std::slice::from_raw_parts(src.as_ptr().cast::<T::Accum>(), src.len()) };
        dst.copy_from_slice(src);
    } else if TypeId::of::<T::Accum>() == TypeId::of::<f32>() && (t == TypeId::of::<f16>() || t == TypeId::of::<bf16>())
    {
        // SAFETY: T::Accum is f32, checked above.
        let dst = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<f32>(), dst.len()) };
        if t == TypeId::of::<f16>() {
            // SAFETY: T is f16, checked above.
            unsafe { std::slice::from_raw_parts(src.as_ptr().cast::<f16>(), src.len()) }.convert_to_f32_slice(dst);
        } else {
            // SAFETY: T is bf16, checked above.
            unsafe { std::slice::from_raw_parts(src.as_ptr().cast::<bf16>(), src.len()) }.convert_to_f32_slice(dst);
        }
    } else {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.to_accum();
        }
    }
}

/// `dst[i] = T::from_accum(src[i])`, with the half types converted a register at a time.
pub(crate) fn narrow<T: Element>(src: &[T::Accum], dst: &mut [T]) {
    debug_assert_eq!(src.len(), dst.len());
    let t = TypeId::of::<T>();
    if t == TypeId::of::<T::Accum>() {
        // SAFETY: T and T::Accum are the same type.
        let dst = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<T::Accum>(), dst.len()) };
        dst.copy_from_slice(src);
    } else if TypeId::of::<T::Accum>() == TypeId::of::<f32>() && (t == TypeId::of::<f16>() || t == TypeId::of::<bf16>())
    {
        // SAFETY: T::Accum is f32, checked above.
        let src = unsafe { std::slice::from_raw_parts(src.as_ptr().cast::<f32>(), src.len()) };
        if t == TypeId::of::<f16>() {
            // SAFETY: T is f16, checked above.
            unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<f16>(), dst.len()) }
                .convert_from_f32_slice(src);
        } else {
            // SAFETY: T is bf16, checked above.
            unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<bf16>(), dst.len()) }
                .convert_from_f32_slice(src);
        }
    } else {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = T::from_accum(*s);
        }
    }
}

/// `values = act(values + bias)`, in place (no addition without a bias, so a `-0.0` stays one).
pub(crate) fn epilogue<A: Accumulator>(values: &mut [A], bias: Option<A>, activation: Activation) {
    // One loop per case, so each is a plain vectorisable loop.
    match (activation, bias) {
        (Activation::Identity, None) => {}
        (Activation::Identity, Some(b)) => values.iter_mut().for_each(|v| *v += b),
        (Activation::Relu, None) => values.iter_mut().for_each(|v| *v = Activation::Relu.apply(*v)),
        (Activation::Relu, Some(b)) => values.iter_mut().for_each(|v| *v = Activation::Relu.apply(*v + b)),
    }
}

/// The epilogue of one row ([`epilogue`]), stored to `dst[i·step]`.
pub(crate) fn store_row<T: Element>(
    values: &mut [T::Accum],
    bias: Option<T::Accum>,
    activation: Activation,
    dst: &mut [T],
    step: usize,
) {
    epilogue(values, bias, activation);
    if step == 1 {
        narrow(values, &mut dst[..values.len()]);
    } else {
        // Chunks rather than `step_by`: a plain loop of stores, with no bounds checks.
        for (d, &v) in dst.chunks_mut(step).zip(values.iter()) {
            d[0] = T::from_accum(v);
        }
    }
}

/// `values` as a slice of `U` when `T` is `U`.
pub(crate) fn as_type<T: 'static, U: 'static>(values: &[T]) -> Option<&[U]> {
    (TypeId::of::<T>() == TypeId::of::<U>()).then(|| {
        // SAFETY: `T` and `U` are the same type.
        unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<U>(), values.len()) }
    })
}

/// `values` as the accumulator type when `T` is that type (f32, f64).
pub(crate) fn as_accumulators<T: Element>(values: &[T]) -> Option<&[T::Accum]> {
    as_type(values)
}

/// [`as_accumulators`], writable.
pub(crate) fn as_accumulators_mut<T: Element>(values: &mut [T]) -> Option<&mut [T::Accum]> {
    (TypeId::of::<T>() == TypeId::of::<T::Accum>()).then(|| {
        // SAFETY: `T` and `T::Accum` are the same type.
        unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<T::Accum>(), values.len()) }
    })
}

/// `src` widened to the accumulator type: borrowed as it is when `T` already is
/// that type, converted into `buffer` otherwise.
pub(crate) fn widened<'a, T: Element>(src: &'a [T], buffer: &'a mut Vec<T::Accum>) -> &'a [T::Accum] {
    if let Some(values) = as_accumulators(src) {
        return values;
    }
    buffer.clear();
    buffer.resize(src.len(), T::Accum::ZERO);
    widen(src, buffer);
    buffer
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::{ConvOptions, ConvTransposeOptions};

    /// The gather tables of short runs pack exactly what `pack_row` packs, taps
    /// outside the planes included, for conv and conv_transpose passes and for
    /// blocks that start and end inside a plane.
    #[test]
    fn gathered_rows_equal_packed_rows() {
        let conv = ConvOptions::new().padding([1, 2]).stride([2, 1]).dilation([1, 2]).groups(2);
        let up = ConvTransposeOptions::new().stride(2).padding(1).output_padding(1);
        let geometries = [
            ConvGeometry::conv(2, &[3, 4, 5, 6], &[6, 2, 3, 3], None, &conv).unwrap(),
            ConvGeometry::conv_transpose(2, &[2, 3, 4, 4], &[3, 5, 4, 4], None, &up).unwrap(),
        ];
        for g in &geometries {
            let passes = match g.op {
                crate::geometry::OpKind::Conv => vec![Pass::forward(g)],
                crate::geometry::OpKind::ConvTranspose => Pass::adjoint(g),
            };
            for pass in &passes {
                let src: Vec<f64> = (0..pass.batch * pass.groups * pass.src_channels * pass.src_volume())
                    .map(|i| i as f64 + 1.0)
                    .collect();
                let volume = pass.dst_volume();
                for (images, positions) in [(0..pass.batch, 0..volume), (1..2, 3..volume - 2)] {
                    let mut segments = Vec::new();
                    let columns = pass.segments(images, positions, &mut segments);
                    for group in 0..pass.groups {
                        let packer = RowPacker::new(pass, group, &segments, columns);
                        assert!(!packer.gathers.is_empty(), "these runs are short");
                        for (c, j) in (0..pass.src_channels).flat_map(|c| (0..pass.taps.len()).map(move |j| (c, j))) {
                            let (mut gathered, mut packed) = (vec![f64::NAN; columns], vec![f64::NAN; columns]);
                            packer.pack(&src, c, j, &mut gathered);
                            pass.pack_row(&src, group, c, j, &segments, &mut packed);
                            assert_eq!(gathered, packed, "group {group}, row ({c}, {j})");
                        }
                    }
                }
            }
        }
    }

    /// Every (x position, y position, tap) link of the adjoint appears in exactly one phase, once.
    #[test]
    fn adjoint_phases_cover_every_link_once() {
        let opts = ConvTransposeOptions::new().stride([2, 3]).padding([1, 2]).dilation([2, 1]).output_padding([1, 2]);
        let g = ConvGeometry::conv_transpose(2, &[1, 1, 4, 5], &[1, 1, 3, 4], None, &opts).unwrap();
        let forward = Pass::forward(&g);
        let mut links = std::collections::BTreeSet::new();
        let mut segs = Vec::new();
        forward.segments(0..1, 0..g.out_volume(), &mut segs);
        for seg in &segs {
            for m2 in seg.m2.clone() {
                for tap in &forward.taps {
                    let m = [seg.m[0], seg.m[1], m2];
                    let i: [i64; 3] = std::array::from_fn(|d| (m[d] * g.stride[d]) as i64 + tap.offset[d]);
                    if (0..3).all(|d| (0..g.in_size[d] as i64).contains(&i[d])) {
                        links.insert((i, m, tap.index));
                    }
                }
            }
        }
        let mut found = std::collections::BTreeSet::new();
        for pass in Pass::adjoint(&g) {
            let mut segs = Vec::new();
            pass.segments(0..1, 0..g.in_volume(), &mut segs);
            for seg in &segs {
                for m2 in seg.m2.clone() {
                    for tap in &pass.taps {
                        let m = [seg.m[0], seg.m[1], m2];
                        let q: [i64; 3] = std::array::from_fn(|d| (pass.start[d] + m[d] * pass.step[d]) as i64);
                        let p: [i64; 3] = std::array::from_fn(|d| m[d] as i64 + tap.offset[d]);
                        if (0..3).all(|d| (0..g.out_size[d] as i64).contains(&p[d])) {
                            let p = p.map(|v| v as usize);
                            assert!(found.insert((q, p, tap.index)), "link found twice");
                        }
                    }
                }
            }
        }
        assert_eq!(found, links);
    }

    #[test]
    fn segments_clip_to_the_position_range_in_grid_order() {
        let g = ConvGeometry::conv(2, &[2, 1, 3, 4], &[1, 1, 1, 1], None, &ConvOptions::new()).unwrap();
        let pass = Pass::forward(&g);
        let mut segs = Vec::new();
        let columns = pass.segments(0..2, 5..11, &mut segs);
        assert_eq!(columns, 12);
        let runs: Vec<_> = segs.iter().map(|s| (s.n, s.m, s.m2.clone(), s.column)).collect();
        assert_eq!(runs[..2], [(0, [0, 1], 1..4, 0), (0, [0, 2], 0..3, 3)]);
    }

    #[test]
    fn widening_matches_to_accum() {
        let v: Vec<f16> = (0..37).map(|i| f16::from_f32(i as f32 * 0.37 - 5.0)).collect();
        let mut out = vec![0f32; v.len()];
        widen(&v, &mut out);
        assert!(v.iter().zip(&out).all(|(a, b)| a.to_f32() == *b));
        let v: Vec<bf16> = v.iter().map(|x| bf16::from_f32(x.to_f32())).collect();
        widen(&v, &mut out);
        assert!(v.iter().zip(&out).all(|(a, b)| a.to_f32() == *b));
    }
}
