//! The companion primitives on the CPU: one task per `(n, c)` plane, fixed order.

use rayon::prelude::*;

use super::{ChannelBlock, CompanionPrimitives, PoolGeometry};
use crate::cpu::{CpuBackend, check_len};
use crate::element::{Accumulator, Element};
use crate::error::{Error, Result};

/// The flat index (in one input plane) of the first maximum of output position
/// `out`'s window, NaN winning; `None` if the window holds no input element.
fn window_argmax<T: Element>(g: &PoolGeometry, x_plane: &[T], out: [usize; 3]) -> Option<usize> {
    let mut best: Option<(usize, T::Accum)> = None;
    let axis = |d: usize, t: usize| -> Option<usize> {
        let pos = (out[d] * g.stride[d] + t * g.dilation[d]) as i64 - g.padding[d] as i64;
        (0..g.in_size[d] as i64).contains(&pos).then_some(pos as usize)
    };
    for a in 0..g.kernel_size[0] {
        let Some(i0) = axis(0, a) else { continue };
        for b in 0..g.kernel_size[1] {
            let Some(i1) = axis(1, b) else { continue };
            for c in 0..g.kernel_size[2] {
                let Some(i2) = axis(2, c) else { continue };
                let index = (i0 * g.in_size[1] + i1) * g.in_size[2] + i2;
                let v = x_plane[index].to_accum();
                // PyTorch's rule: a strictly greater value or a NaN takes over.
                match best {
                    Some((_, m)) if !(v > m || v.is_nan()) => {}
                    _ => best = Some((index, v)),
                }
            }
        }
    }
    best.map(|(index, _)| index)
}

/// Visits every output position of one plane in row-major order.
fn for_each_output(g: &PoolGeometry, mut f: impl FnMut(usize, [usize; 3])) {
    let [d0, d1, d2] = g.out_size;
    let mut flat = 0;
    for a in 0..d0 {
        for b in 0..d1 {
            for c in 0..d2 {
                f(flat, [a, b, c]);
                flat += 1;
            }
        }
    }
}

impl<T: Element> CompanionPrimitives<T> for CpuBackend {
    fn relu(&self, x: &Vec<T>, y: &mut Vec<T>) -> Result<()> {
        check_len("output", y, &[x.len()])?;
        y.par_iter_mut().zip(x.par_iter()).for_each(|(dst, &v)| {
            // max(v, 0) that keeps NaN: PyTorch's relu propagates it.
            *dst = if v.to_accum() < T::Accum::ZERO { T::from_accum(T::Accum::ZERO) } else { v };
        });
        Ok(())
    }

    fn relu_backward(&self, y: &Vec<T>, dy: &Vec<T>, dx: &mut Vec<T>) -> Result<()> {
        check_len("grad_output", dy, &[y.len()])?;
        check_len("grad_input", dx, &[y.len()])?;
        dx.par_iter_mut().zip(y.par_iter().zip(dy.par_iter())).for_each(|(dst, (&v, &g))| {
            *dst = if v.to_accum() > T::Accum::ZERO { g } else { T::from_accum(T::Accum::ZERO) };
        });
        Ok(())
    }

    fn max_pool(&self, g: &PoolGeometry, x: &Vec<T>, y: &mut Vec<T>) -> Result<()> {
        check_len("input", x, &g.input_shape())?;
        check_len("output", y, &g.output_shape())?;
        let (in_vol, out_vol) = (g.in_volume(), g.out_volume());
        if out_vol == 0 {
            return Ok(());
        }
        y.par_chunks_mut(out_vol).enumerate().for_each(|(plane, y_plane)| {
            let x_plane = &x[plane * in_vol..][..in_vol];
            for_each_output(g, |flat, out| {
                y_plane[flat] = window_argmax(g, x_plane, out).map_or(T::from_f64(f64::NEG_INFINITY), |i| x_plane[i]);
            });
        });
        Ok(())
    }

    fn max_pool_backward(&self, g: &PoolGeometry, x: &Vec<T>, dy: &Vec<T>, dx: &mut Vec<T>) -> Result<()> {
        check_len("input", x, &g.input_shape())?;
        check_len("grad_output", dy, &g.output_shape())?;
        check_len("grad_input", dx, &[x.len()])?;
        let (in_vol, out_vol) = (g.in_volume(), g.out_volume());
        if in_vol == 0 {
            return Ok(());
        }
        dx.par_chunks_mut(in_vol).enumerate().for_each(|(plane, dx_plane)| {
            let x_plane = &x[plane * in_vol..][..in_vol];
            let dy_plane = &dy[plane * out_vol..][..out_vol];
            let mut acc = vec![T::Accum::ZERO; in_vol];
            for_each_output(g, |flat, out| {
                if let Some(i) = window_argmax(g, x_plane, out) {
                    acc[i] += dy_plane[flat].to_accum();
                }
            });
            for (dst, a) in dx_plane.iter_mut().zip(acc) {
                *dst = T::from_accum(a);
            }
        });
        Ok(())
    }

    fn add(&self, a: &Vec<T>, b: &Vec<T>, out: &mut Vec<T>) -> Result<()> {
        check_len("b", b, &[a.len()])?;
        check_len("output", out, &[a.len()])?;
        out.par_iter_mut().zip(a.par_iter().zip(b.par_iter())).for_each(|(dst, (&x, &y))| {
            *dst = T::from_accum(x.to_accum() + y.to_accum());
        });
        Ok(())
    }

    fn copy_channels(&self, block: &ChannelBlock, src: &Vec<T>, dst: &mut Vec<T>) -> Result<()> {
        let b = *block;
        check_len("source", src, &[b.batch, b.src_channels, b.volume])?;
        check_len("destination", dst, &[b.batch, b.dst_channels, b.volume])?;
        if b.src_offset + b.count > b.src_channels || b.dst_offset + b.count > b.dst_channels {
            return Err(Error::InvalidArgument {
                what: "channel block",
                detail: format!("{b:?} lies outside its tensors"),
            });
        }
        let run = b.count * b.volume;
        if run == 0 {
            return Ok(());
        }
        dst.par_chunks_mut(b.dst_channels * b.volume).enumerate().for_each(|(n, dst_item)| {
            let from = &src[(n * b.src_channels + b.src_offset) * b.volume..][..run];
            dst_item[b.dst_offset * b.volume..][..run].copy_from_slice(from);
        });
        Ok(())
    }
}
