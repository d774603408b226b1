//! Direct loops over kernel taps: the plainest form of the three primitives.
//!
//! Each task owns one output plane (or one weight row), walks the taps in a
//! fixed order and accumulates in `T::Accum`, so results do not depend on the
//! number of threads.

use rayon::prelude::*;

use super::threads::Tasks;
use crate::backend::Activation;
use crate::element::{Accumulator, Element};
use crate::geometry::ConvGeometry;

/// The output positions `o` in `[0, out)` whose tap lands inside `[0, size)`:
/// `0 <= o * stride + offset < size`, as a half-open range.
pub(crate) fn tap_range(size: usize, out: usize, stride: usize, offset: i64) -> std::ops::Range<usize> {
    // In i128: each operand is below 2^64 in magnitude, so no sum here overflows
    // (a stride may be as large as i64::MAX).
    let (size, stride, offset) = (size as i128, stride as i128, offset as i128);
    // First o with o*stride + offset >= 0.
    let lo = if offset >= 0 { 0 } else { (-offset + stride - 1) / stride };
    // First o with o*stride + offset >= size.
    let hi = if size - offset <= 0 { 0 } else { (size - offset + stride - 1) / stride };
    let hi = hi.min(out as i128);
    lo.min(hi) as usize..hi as usize
}

/// One kernel tap: its flat index in the kernel and its offset in each dim.
#[derive(Clone, Copy)]
pub(crate) struct Tap {
    pub index: usize,
    offset: [i64; 3],
}

/// Every tap of `g`'s kernel, in index order.
pub(crate) fn taps(g: &ConvGeometry) -> Vec<Tap> {
    let [kd, kh, kw] = g.kernel_size;
    let mut taps = Vec::with_capacity(kd * kh * kw);
    for a in 0..kd {
        for b in 0..kh {
            for c in 0..kw {
                let k = [a, b, c];
                taps.push(Tap {
                    index: taps.len(),
                    offset: std::array::from_fn(|d| (k[d] * g.dilation[d]) as i64 - g.padding_lo[d] as i64),
                });
            }
        }
    }
    taps
}

/// Calls `f(out_index, in_index)` for every output position a tap reaches inside `x`.
fn for_each_run(g: &ConvGeometry, tap: &Tap, mut f: impl FnMut(usize, usize)) {
    let step = g.stride[2];
    for_each_row(g, tap, |out, input, len| (0..len).for_each(|j| f(out + j, input + j * step)));
}

/// Calls `f(out_start, in_start, len)` for every row of output positions a
/// tap reaches inside `x`: `len` of them from `out_start`, reaching `x` from
/// `in_start` on, `stride[2]` apart.
pub(crate) fn for_each_row(g: &ConvGeometry, tap: &Tap, mut f: impl FnMut(usize, usize, usize)) {
    let [od, oh, ow] = g.out_size;
    let [id, ih, iw] = g.in_size;
    let r0 = tap_range(id, od, g.stride[0], tap.offset[0]);
    let r1 = tap_range(ih, oh, g.stride[1], tap.offset[1]);
    let r2 = tap_range(iw, ow, g.stride[2], tap.offset[2]);
    if r2.is_empty() {
        return;
    }
    for o0 in r0 {
        let i0 = (o0 * g.stride[0]) as i64 + tap.offset[0];
        for o1 in r1.clone() {
            let i1 = (o1 * g.stride[1]) as i64 + tap.offset[1];
            let out_row = (o0 * oh + o1) * ow;
            let in_row = (i0 as usize * ih + i1 as usize) * iw;
            let i2 = (r2.start * g.stride[2]) as i64 + tap.offset[2];
            f(out_row + r2.start, in_row + i2 as usize, r2.len());
        }
    }
}

/// `y = x ⋆ w + bias`, one task per `(n, o)` plane of `y`.
pub(crate) fn correlate<T: Element>(
    g: &ConvGeometry,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    activation: Activation,
    y: &mut [T],
) {
    let (in_vol, out_vol, kvol) = (g.in_volume(), g.out_volume(), g.kernel_volume());
    let (cin_g, cout_g) = (g.in_channels_per_group(), g.out_channels_per_group());
    if out_vol == 0 {
        return;
    }
    let taps = taps(g);
    y.par_chunks_mut(out_vol).tasks().enumerate().for_each(|(plane, y_plane)| {
        let (n, o) = (plane / g.out_channels, plane % g.out_channels);
        let group = o / cout_g;
        let b = bias.map_or(T::Accum::ZERO, |b| b[o].to_accum());
        let mut acc = vec![b; out_vol];
        for c in 0..cin_g {
            let x_plane = &x[(n * g.in_channels + group * cin_g + c) * in_vol..][..in_vol];
            let w_row = &w[(o * cin_g + c) * kvol..][..kvol];
            for tap in &taps {
                let wv = w_row[tap.index].to_accum();
                for_each_run(g, tap, |oi, ii| acc[oi] += wv * x_plane[ii].to_accum());
            }
        }
        for (dst, a) in y_plane.iter_mut().zip(acc) {
            *dst = T::from_accum(activation.apply(a));
        }
    });
}

/// The adjoint in `x` (+ bias per `x` channel), one task per `(n, c)` plane of `x`.
pub(crate) fn correlate_adjoint<T: Element>(
    g: &ConvGeometry,
    y: &[T],
    w: &[T],
    bias: Option<&[T]>,
    activation: Activation,
    x: &mut [T],
) {
    let (in_vol, out_vol, kvol) = (g.in_volume(), g.out_volume(), g.kernel_volume());
    let (cin_g, cout_g) = (g.in_channels_per_group(), g.out_channels_per_group());
    if in_vol == 0 {
        return;
    }
    let taps = taps(g);
    x.par_chunks_mut(in_vol).tasks().enumerate().for_each(|(plane, x_plane)| {
        let (n, cx) = (plane / g.in_channels, plane % g.in_channels);
        let (group, c) = (cx / cin_g, cx % cin_g);
        let b = bias.map_or(T::Accum::ZERO, |b| b[cx].to_accum());
        let mut acc = vec![b; in_vol];
        for o in group * cout_g..(group + 1) * cout_g {
            let y_plane = &y[(n * g.out_channels + o) * out_vol..][..out_vol];
            let w_row = &w[(o * cin_g + c) * kvol..][..kvol];
            for tap in &taps {
                let wv = w_row[tap.index].to_accum();
                for_each_run(g, tap, |oi, ii| acc[ii] += wv * y_plane[oi].to_accum());
            }
        }
        for (dst, a) in x_plane.iter_mut().zip(acc) {
            *dst = T::from_accum(activation.apply(a));
        }
    });
}

/// `dw = Σ x ⋆ y`, one task per output channel (a row `[cin_g, k]` of `dw`).
pub(crate) fn correlate_weight<T: Element>(g: &ConvGeometry, x: &[T], y: &[T], dw: &mut [T]) {
    let (in_vol, out_vol, kvol) = (g.in_volume(), g.out_volume(), g.kernel_volume());
    let (cin_g, cout_g) = (g.in_channels_per_group(), g.out_channels_per_group());
    let row = cin_g * kvol;
    if row == 0 {
        return;
    }
    let taps = taps(g);
    dw.par_chunks_mut(row).tasks().enumerate().for_each(|(o, dw_row)| {
        let group = o / cout_g;
        let mut acc = vec![T::Accum::ZERO; row];
        for n in 0..g.batch {
            let y_plane = &y[(n * g.out_channels + o) * out_vol..][..out_vol];
            for c in 0..cin_g {
                let x_plane = &x[(n * g.in_channels + group * cin_g + c) * in_vol..][..in_vol];
                for tap in &taps {
                    let mut sum = T::Accum::ZERO;
                    for_each_run(g, tap, |oi, ii| sum += x_plane[ii].to_accum() * y_plane[oi].to_accum());
                    acc[c * kvol + tap.index] += sum;
                }
            }
        }
        for (dst, a) in dw_row.iter_mut().zip(acc) {
            *dst = T::from_accum(a);
        }
    });
}

/// `sums[c] = Σ_{n, p} t[n, c, p]`, one task per channel.
pub(crate) fn channel_sums<T: Element>(batch: usize, channels: usize, volume: usize, t: &[T], sums: &mut [T]) {
    sums.par_iter_mut().tasks().enumerate().for_each(|(c, dst)| {
        let mut acc = T::Accum::ZERO;
        for n in 0..batch {
            for &v in &t[(n * channels + c) * volume..][..volume] {
                acc += v.to_accum();
            }
        }
        *dst = T::from_accum(acc);
    });
}

#[cfg(test)]
mod tests {
    use super::tap_range;

    #[test]
    fn tap_range_matches_a_scan() {
        for size in 1..7 {
            for out in 0..7 {
                for stride in 1..4 {
                    for offset in -5i64..8 {
                        let expected: Vec<usize> = (0..out)
                            .filter(|&o| (0..size as i64).contains(&(o as i64 * stride as i64 + offset)))
                            .collect();
                        let got: Vec<usize> = tap_range(size, out, stride, offset).collect();
                        assert_eq!(got, expected, "size {size} out {out} stride {stride} offset {offset}");
                    }
                }
            }
        }
    }
}
