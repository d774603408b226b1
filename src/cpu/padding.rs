//! Explicit reflect / replicate / circular padding, and its adjoint.

use rayon::prelude::*;

use super::threads::Tasks;
use crate::element::{Accumulator, Element};
use crate::geometry::ConvGeometry;

/// The source index in `x` of each padded position along one dim.
fn source_map(g: &ConvGeometry, d: usize) -> Vec<usize> {
    let padded = g.in_size[d] + g.padding_lo[d] + g.padding_hi[d];
    (0..padded)
        .map(|p| {
            let pos = p as i64 - g.padding_lo[d] as i64;
            // Validation bounds the padding so every mode other than zeros maps inside x.
            g.padding_mode.source_index(pos, g.in_size[d]).unwrap_or(usize::MAX)
        })
        .collect()
}

/// Visits every padded position of one plane with its source index in `x`
/// (`None` for zero padding).
fn for_each_source(g: &ConvGeometry, mut f: impl FnMut(usize, Option<usize>)) {
    let maps: [Vec<usize>; 3] = std::array::from_fn(|d| source_map(g, d));
    let [_, ih, iw] = g.in_size;
    let mut p = 0;
    for &s0 in &maps[0] {
        for &s1 in &maps[1] {
            for &s2 in &maps[2] {
                let src = (s0 != usize::MAX && s1 != usize::MAX && s2 != usize::MAX).then(|| (s0 * ih + s1) * iw + s2);
                f(p, src);
                p += 1;
            }
        }
    }
}

/// `padded = pad(x)`, one task per `(n, c)` plane.
pub(crate) fn pad<T: Element>(g: &ConvGeometry, x: &[T], padded: &mut [T]) {
    let in_vol = g.in_volume();
    let padded_vol = padded.len() / (g.batch * g.in_channels).max(1);
    if padded_vol == 0 {
        return;
    }
    padded.par_chunks_mut(padded_vol).tasks().enumerate().for_each(|(plane, out)| {
        let x_plane = &x[plane * in_vol..][..in_vol];
        for_each_source(g, |p, src| out[p] = src.map_or(T::default(), |s| x_plane[s]));
    });
}

/// `x = padᵀ(padded)`: every padded value is added to its source, one task per `(n, c)` plane.
pub(crate) fn fold<T: Element>(g: &ConvGeometry, padded: &[T], x: &mut [T]) {
    let in_vol = g.in_volume();
    let padded_vol = padded.len() / (g.batch * g.in_channels).max(1);
    if in_vol == 0 {
        return;
    }
    x.par_chunks_mut(in_vol).tasks().enumerate().for_each(|(plane, x_plane)| {
        let src_plane = &padded[plane * padded_vol..][..padded_vol];
        let mut acc = vec![T::Accum::ZERO; in_vol];
        for_each_source(g, |p, src| {
            if let Some(s) = src {
                acc[s] += src_plane[p].to_accum();
            }
        });
        for (dst, a) in x_plane.iter_mut().zip(acc) {
            *dst = T::from_accum(a);
        }
    });
}
