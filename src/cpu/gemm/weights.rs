//! The weights as the `nn` kernel reads them: packed strips, or rows in place.

use std::mem::MaybeUninit;
use std::ops::Range;

use half::bf16;
use rayon::prelude::*;

use crate::cpu::isa::prefetch;
use crate::cpu::kernels::{AOperand, RowSet};
use crate::cpu::pairs::pair;
use crate::cpu::pass::{Direction, Pass};
use crate::cpu::threads::Tasks;
use crate::element::{Accumulator, Element};

/// Weights packed for the `nn` kernel: per pass, `[group][strip][K][MR]`, rows past `cd` zero.
pub(super) fn pack_weights<T: Element>(passes: &[Pass], w: &[T], mr: usize) -> Vec<Vec<T::Accum>> {
    pack_strips(passes, w, 1, mr, T::Accum::ZERO, |tile, at, (i_step, _), _| {
        for (v, x) in tile.iter_mut().zip(w[at..].iter().step_by(i_step)) {
            v.write(x.to_accum());
        }
    })
}

/// Weights packed for the pair kernel: as [`pack_weights`], with `K` over
/// (channel pair, tap) and each element the [`pair`] of the two channels' weights.
pub(super) fn pack_weight_pairs(passes: &[Pass], w: &[bf16], mr: usize) -> Vec<Vec<u32>> {
    let Some(first) = passes.first() else { return Vec::new() };
    let cs = first.src_channels;
    pack_strips(passes, w, 2, mr, 0, |tile, at, (i_step, c_step), p| {
        for (i, v) in tile.iter_mut().enumerate() {
            let at = at + i * i_step;
            let odd = if 2 * p + 1 < cs { w[at + c_step] } else { bf16::ZERO };
            v.write(pair(w[at], odd));
        }
    })
}

/// Source channels ahead of the one being packed whose kernels are prefetched:
/// DCGAN's transposed conv (strips of 12 output channels, 16 KiB apart from one
/// channel to the next) packed 3% faster.
const PACK_AHEAD: usize = 4;

/// Weight strips with the source channels in slots of `per_slot` (1, or 2
/// for pairs): per pass, `[group][strip][slots × taps][MR]`, rows past `cd`
/// `zero`, each tile of rows written by `gather(tile, at, (i_step, c_step), c)`:
/// the weights of slot `c` at one tap, row `i`'s at index `at + i·i_step` of
/// `w` (the slot's first channel; its next `c_step` on).
///
/// A strip is `MR` weight rows transposed. One task packs a strip for every
/// pass, channel by channel: the strip's kernels of a channel are read once
/// for all passes (an adjoint's strips gather kernels far apart, and a sweep
/// per stride phase would cost a trip to memory each), and each pass's block
/// is written in order, every element once (the buffers are not zeroed first:
/// for large layers that would be another pass over megabytes).
fn pack_strips<W: Sync, V: Copy + Send + Sync>(
    passes: &[Pass],
    w: &[W],
    per_slot: usize,
    mr: usize,
    zero: V,
    gather: impl Fn(&mut [MaybeUninit<V>], usize, (usize, usize), usize) + Sync,
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
            // An adjoint strip's kernels of a channel are a few lines, far
            // from the next channel's, where the hardware prefetcher does not look.
            for k in (per_slot * (c + PACK_AHEAD)..).take(per_slot).take_while(|&k| k < cs) {
                for i in 0..rows {
                    prefetch(&w[base + i * i_step + k * c_step..][..kvol]);
                }
            }
            for (pass, block) in passes.iter().zip(blocks.iter_mut()) {
                let ntaps = pass.taps.len();
                for (tap, tile) in pass.taps.iter().zip(block[c * ntaps * mr..][..ntaps * mr].chunks_exact_mut(mr)) {
                    let at = base + per_slot * c * c_step + tap.index;
                    let (values, padding) = tile.split_at_mut(rows);
                    gather(values, at, (i_step, c_step), c);
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
pub(super) fn weights_in_place(passes: &[Pass], accumulator_weights: bool) -> bool {
    matches!(passes, [pass] if accumulator_weights
        && pass.direction == Direction::Forward
        && pass.batch * pass.dst_volume() <= IN_PLACE_COLUMNS)
}

/// A forward pass's bf16 weights as rows of [`pair`]s of neighbouring
/// reduction steps, where the f32 weights would be read in place
/// ([`weights_in_place`]) and every row is a whole number of pairs: each row
/// of `w` is then its own run of pairs (the even step in the low half, as
/// [`pair`] puts it), read in place with nothing to pack. `None` where `w` is
/// not aligned for that.
pub(super) fn weight_pair_rows<'a>(passes: &[Pass], w: &'a [bf16]) -> Option<&'a [u32]> {
    if !pairs_in_place(passes) {
        return None;
    }
    // SAFETY: every bit pattern of two bf16 is a valid u32, and `align_to`
    // takes only the aligned middle of `w`, which must then be all of it.
    let (head, rows, tail) = unsafe { w.align_to::<u32>() };
    (head.is_empty() && tail.is_empty()).then_some(rows)
}

/// Whether [`weight_pair_rows`] reads the bf16 weights of `passes` in place
/// (where `w` is aligned for it).
pub(super) fn pairs_in_place(passes: &[Pass]) -> bool {
    let even = matches!(passes, [pass] if pass.reduction().is_multiple_of(2));
    even && weights_in_place(passes, true) && cfg!(target_endian = "little")
}

/// The weights as the micro-kernel reads them.
pub(super) enum Weights<'a, B> {
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
    pub(super) fn block(
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
pub(super) enum BlockWeights<'a, B> {
    /// Strips of `k × MR` values, from strip 0.
    Packed(&'a [B], usize, usize),
    /// `MR` rows per strip.
    Rows(Vec<RowSet<'a, B>>),
}

impl<B> BlockWeights<'_, B> {
    /// Strip `s` from reduction step `k0`.
    pub(super) fn strip(&self, s: usize, k0: usize) -> AOperand<'_, B> {
        match self {
            BlockWeights::Packed(packed, k, mr) => AOperand::Packed(&packed[(s * k + k0) * mr..]),
            BlockWeights::Rows(strips) => AOperand::Rows(&strips[s], k0),
        }
    }
}
