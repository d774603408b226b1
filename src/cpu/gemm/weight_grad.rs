//! The weight gradient `dW[g] = dY[g] · X̂[g]ᵀ` by the `nt` kernel.

use rayon::prelude::*;

use super::MIN_TASKS;
use super::bordered::{Bordered, BorderedLayout, virtual_columns};
use super::plan::{Columns, grid_columns, row_block};
use crate::cpu::kernels::{Kernels, RowSet};
use crate::cpu::pass::{Pass, RowPacker, widen};
use crate::cpu::threads::Tasks;
use crate::element::{Accumulator, Element};

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
                            xhat.push(&bordered.data()[start..plane + bordered.plane_len]);
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
