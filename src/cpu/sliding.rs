//! Direct loops vectorised along the innermost dim: for convs whose groups
//! are too thin for a GEMM tile (depthwise, small channel multipliers).
//!
//! A task owns one `dst` plane. For each `src` channel of its group and each
//! tap it adds `w · (a shifted src row)` to an accumulator row (`axpy`), so
//! every element sums its terms in the order channel, tap. The weight
//! gradient takes one `dw` row per task and `dot`s shifted rows; channel sums
//! take one channel per task. None of them depends on the thread count.

use rayon::prelude::*;

use super::direct::tap_range;
use super::kernels::Kernels;
use super::pass::{Pass, widened};
use crate::backend::Activation;
use crate::element::{Accumulator, Element};

/// Visits the rows a tap reaches: `f(grid row start, first src element, m2 range)`
/// for the valid grid points `m2` of the row (`first` is the src element of `m2.start`;
/// the next ones are `src_stride[2]` apart).
fn for_each_row(pass: &Pass, offset: [i64; 3], mut f: impl FnMut(usize, usize, std::ops::Range<usize>)) {
    let [c0, c1, c2] = pass.count;
    let [s0, s1, s2] = pass.src_size;
    let r0 = tap_range(s0, c0, pass.src_stride[0], offset[0]);
    let r1 = tap_range(s1, c1, pass.src_stride[1], offset[1]);
    let r2 = tap_range(s2, c2, pass.src_stride[2], offset[2]);
    if r2.is_empty() {
        return;
    }
    for m0 in r0 {
        let i0 = (m0 * pass.src_stride[0]) as i64 + offset[0];
        for m1 in r1.clone() {
            let i1 = (m1 * pass.src_stride[1]) as i64 + offset[1];
            let first = ((i0 as usize * s1 + i1 as usize) * s2 + r2.start * pass.src_stride[2]) as i64 + offset[2];
            f((m0 * c1 + m1) * c2, first as usize, r2.clone());
        }
    }
}

/// `acc[m2] += w · src[first + (m2 - m2s.start)·stride]` over `m2s`.
fn add_row<A: Accumulator>(
    ks: &Kernels<A>,
    w: A,
    src: &[A],
    first: usize,
    stride: usize,
    acc: &mut [A],
    m2s: std::ops::Range<usize>,
) {
    let len = m2s.len();
    if stride == 1 {
        ks.axpy(w, &src[first..][..len], &mut acc[m2s]);
    } else {
        for (a, s) in acc[m2s].iter_mut().zip(src[first..].iter().step_by(stride)) {
            *a += w * *s;
        }
    }
}

/// Runs `passes` (which together cover `dst`), one `dst` plane per task.
pub(crate) fn correlate<T: Element>(
    ks: &Kernels<T::Accum>,
    passes: &[Pass],
    src: &[T],
    w: &[T],
    bias: Option<&[T]>,
    activation: Activation,
    dst: &mut [T],
) {
    let Some(first) = passes.first() else { return };
    let (volume, cd, cs) = (first.dst_volume(), first.dst_channels, first.src_channels);
    if volume == 0 {
        return;
    }
    dst.par_chunks_mut(volume).enumerate().for_each(|(plane, dst_plane)| {
        let (n, channel) = (plane / (first.groups * cd), plane % (first.groups * cd));
        let (group, o) = (channel / cd, channel % cd);
        let mut accs: Vec<Vec<T::Accum>> =
            passes.iter().map(|p| vec![T::Accum::ZERO; p.count.iter().product()]).collect();
        let mut buffer = Vec::new();
        for c in 0..cs {
            let start = first.src_plane(n, group, c);
            let src_plane = widened(&src[start..][..first.src_volume()], &mut buffer);
            for (pass, acc) in passes.iter().zip(&mut accs) {
                for (j, tap) in pass.taps.iter().enumerate() {
                    let wv = w[pass.weight_index(group, o, c, j)].to_accum();
                    for_each_row(pass, tap.offset, |acc_row, first, m2s| {
                        add_row(ks, wv, src_plane, first, pass.src_stride[2], &mut acc[acc_row..], m2s)
                    });
                }
            }
        }
        let b = bias.map_or(T::Accum::ZERO, |b| b[channel].to_accum());
        for (pass, acc) in passes.iter().zip(&accs) {
            let c2 = pass.count[2];
            for (row, acc_row) in acc.chunks(c2).enumerate() {
                let q = pass.dst_position([row / pass.count[1], row % pass.count[1], 0]);
                for (d, &a) in dst_plane[q..].iter_mut().step_by(pass.step[2]).zip(acc_row) {
                    *d = T::from_accum(activation.apply(a + b));
                }
            }
        }
    });
}

/// `dw[g·cd + o, c·taps + j] = Σ_n Σ_rows dot(y row, shifted x row)` for the forward `pass`, one `dw` row per task.
pub(crate) fn correlate_weight<T: Element>(ks: &Kernels<T::Accum>, pass: &Pass, x: &[T], y: &[T], dw: &mut [T]) {
    let (cd, cs, ntaps) = (pass.dst_channels, pass.src_channels, pass.taps.len());
    let (y_volume, x_volume) = (pass.dst_volume(), pass.src_volume());
    if cs * ntaps == 0 {
        return;
    }
    dw.par_chunks_mut(cs * ntaps).enumerate().for_each(|(channel, dw_row)| {
        let group = channel / cd;
        let mut acc = vec![T::Accum::ZERO; cs * ntaps];
        let (mut y_buffer, mut x_buffer) = (Vec::new(), Vec::new());
        for n in 0..pass.batch {
            let y_plane = widened(&y[(n * pass.groups * cd + channel) * y_volume..][..y_volume], &mut y_buffer);
            for c in 0..cs {
                let x_plane = widened(&x[pass.src_plane(n, group, c)..][..x_volume], &mut x_buffer);
                for (j, tap) in pass.taps.iter().enumerate() {
                    let mut sum = T::Accum::ZERO;
                    for_each_row(pass, tap.offset, |y_row, first, m2s| {
                        let dy = &y_plane[y_row + m2s.start..][..m2s.len()];
                        sum += if pass.src_stride[2] == 1 {
                            ks.dot(dy, &x_plane[first..][..m2s.len()])
                        } else {
                            let xs = x_plane[first..].iter().step_by(pass.src_stride[2]);
                            dy.iter().zip(xs).fold(T::Accum::ZERO, |s, (&a, &b)| s + a * b)
                        };
                    });
                    acc[c * ntaps + j] += sum;
                }
            }
        }
        for (d, a) in dw_row.iter_mut().zip(acc) {
            *d = T::from_accum(a);
        }
    });
}

/// Elements summed per `sum` call in [`channel_sums`]: the widening buffer stays in L1.
const SUM_CHUNK: usize = 2048;

/// `sums[c] = Σ_{n, p} t[n, c, p]`, one channel per task, in fixed chunks.
pub(crate) fn channel_sums<T: Element>(
    ks: &Kernels<T::Accum>,
    batch: usize,
    channels: usize,
    volume: usize,
    t: &[T],
    sums: &mut [T],
) {
    sums.par_iter_mut().enumerate().for_each(|(c, dst)| {
        let mut acc = T::Accum::ZERO;
        let mut buffer = Vec::new();
        for n in 0..batch {
            for chunk in t[(n * channels + c) * volume..][..volume].chunks(SUM_CHUNK) {
                acc += ks.sum(widened(chunk, &mut buffer));
            }
        }
        *dst = T::from_accum(acc);
    });
}
