//! bf16 GEMM on dot products of channel pairs, for AVX-512 BF16's `vdpbf16ps`.
//!
//! `vdpbf16ps` multiplies two bf16 pairs per 32-bit lane and adds both
//! products to an f32 accumulator: twice the multiply-adds of an f32 FMA per
//! instruction, from half the bytes. It wants both operands as pairs along the
//! reduction, so the implicit GEMM pairs source channels: the bordered copy of
//! `src` holds one plane per channel pair, each element a [`pair`] of the two
//! channels' values at that position (an odd last channel pairs with zeros),
//! and a packed weight strip holds, per (channel pair, tap), the pairs of its
//! rows' weights. Every im2col row the kernel reads is then a contiguous run
//! of pairs, exactly as the f32 path reads single values. Where `X̂` is packed
//! and the weights would be read in place (a forward pass over few columns),
//! the pairs are neighbouring steps of the reduction instead: a weight row is
//! then a run of pairs as it lies in memory, and only the panel is paired.
//!
//! [`PairKernels::for_isa`] has the AVX-512 BF16 kernel. Other instruction sets
//! keep the f32 path, which widens bf16 while copying: AVX2 has no such
//! instruction, and pairs taken apart in software run ~10% slower than the
//! widened f32 kernel. The tests still run this whole path on any CPU through
//! a portable kernel with the instruction's arithmetic in plain Rust (bf16
//! products are exact in f32, so `c + a·b` rounds once, as the fused
//! instruction does): under `cfg(test)` the portable instruction set has one,
//! and [`PairKernels::shaped_as`] runs it in the AVX-512 kernel's 12×32 tile.

use std::any::Any;

use half::bf16;

use super::isa::CpuIsa;
use super::kernels::{
    AOperand, AStrip, AValues, BRows, Gathered, IndirectKernel, NnTile, PackedA, RowSet, RowsA, StridedA,
    check_indirect, edge_kernel,
};
use super::pass::as_type;
use crate::element::Element;

/// `even` and `odd` in one word, `even` in the low half: the layout
/// `vdpbf16ps` reads a pair in.
pub(crate) fn pair(even: bf16, odd: bf16) -> u32 {
    u32::from(even.to_bits()) | u32::from(odd.to_bits()) << 16
}

/// `values` as bf16 when `T` is bf16.
pub(crate) fn as_bf16<T: Element>(values: &[T]) -> Option<&[bf16]> {
    as_type(values)
}

/// The operands of one pair micro-tile: `C[MR×NR] (+)= Σ_k a[k][MR] ⊙ b.row(k)[..NR]`,
/// where `⊙` is the dot product of two pairs.
type PairTile<A> = NnTile<A, u32, Gathered<u32>>;

/// A register of `LANES` f32 accumulators and the pair operations on it.
///
/// # Safety
/// As [`super::isa::Lanes`]: the instruction set's functions run only where
/// the CPU has it, and every pointer is valid for `LANES` elements.
unsafe trait PairLanes: Copy + 'static {
    type V: Copy;
    /// `LANES` pairs.
    type P: Copy;
    const LANES: usize;
    unsafe fn zero() -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    unsafe fn load_pairs(p: *const u32) -> Self::P;
    unsafe fn splat_pair(p: u32) -> Self::P;
    /// `acc + a.odd·b.odd + a.even·b.even` per lane, rounded after each addition.
    unsafe fn dot(acc: Self::V, a: Self::P, b: Self::P) -> Self::V;
}

/// `L` lanes in plain Rust; the compiler vectorises it for the build target.
#[derive(Clone, Copy)]
struct PortablePairs<const L: usize>;

/// The two halves of a pair as f32 (exact: a bf16 is the top half of an f32).
fn halves(p: u32) -> (f32, f32) {
    (f32::from_bits(p << 16), f32::from_bits(p & 0xFFFF_0000))
}

// SAFETY: plain Rust, valid on every CPU; pointers are the caller's contract.
unsafe impl<const L: usize> PairLanes for PortablePairs<L> {
    type V = [f32; L];
    type P = [u32; L];
    const LANES: usize = L;
    #[inline(always)]
    unsafe fn zero() -> Self::V {
        [0.0; L]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::V {
        // SAFETY: the caller guarantees `LANES` readable elements at `p`.
        unsafe { p.cast::<Self::V>().read_unaligned() }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::V) {
        // SAFETY: the caller guarantees `LANES` writable elements at `p`.
        unsafe { p.cast::<Self::V>().write_unaligned(v) }
    }
    #[inline(always)]
    unsafe fn load_pairs(p: *const u32) -> Self::P {
        // SAFETY: as `load`.
        unsafe { p.cast::<Self::P>().read_unaligned() }
    }
    #[inline(always)]
    unsafe fn splat_pair(p: u32) -> Self::P {
        [p; L]
    }
    #[inline(always)]
    unsafe fn dot(acc: Self::V, a: Self::P, b: Self::P) -> Self::V {
        std::array::from_fn(|i| {
            let ((a_even, a_odd), (b_even, b_odd)) = (halves(a[i]), halves(b[i]));
            // The odd pair first, as `vdpbf16ps` does.
            (acc[i] + a_odd * b_odd) + a_even * b_even
        })
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::PairLanes;

    /// AVX-512 F with BF16: 16 lanes, `vdpbf16ps`.
    #[derive(Clone, Copy)]
    pub(super) struct Avx512Bf16;

    // SAFETY: reached only through `PairKernels`, built only when the CPU has
    // AVX-512 F and BF16; pointers are the caller's contract.
    unsafe impl PairLanes for Avx512Bf16 {
        type V = __m512;
        type P = __m512bh;
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> __m512 {
            // SAFETY: AVX-512 F is available (see the impl).
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            // SAFETY: 16 readable values at `p`.
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            // SAFETY: 16 writable values at `p`.
            unsafe { _mm512_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn load_pairs(p: *const u32) -> __m512bh {
            // SAFETY: 16 readable pairs at `p`; a register of 32-bit words and one of
            // bf16 pairs are the same 512 bits.
            unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p.cast())) }
        }
        #[inline(always)]
        unsafe fn splat_pair(p: u32) -> __m512bh {
            // SAFETY: as `load_pairs`.
            unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(p as i32)) }
        }
        #[inline(always)]
        unsafe fn dot(acc: __m512, a: __m512bh, b: __m512bh) -> __m512 {
            // SAFETY: AVX-512 BF16 is available (see the impl).
            unsafe { _mm512_dpbf16_ps(acc, a, b) }
        }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn nn_pairs_k<const MR: usize, const ROWS: usize, const NV: usize>(t: &super::PairTile<f32>) {
        // SAFETY: forwarded from the caller (a CPU with these features, valid operands).
        unsafe { super::nn_pairs::<Avx512Bf16, MR, ROWS, NV>(t) }
    }
}

/// The pair micro-kernel: `ROWS × NV·LANES` accumulators (the first `ROWS`
/// rows of a strip of `MR`, as the `nn` edge kernels), one broadcast weight
/// pair and `NV` loaded data registers per reduction step.
#[inline(always)]
unsafe fn nn_pairs<S: PairLanes, const MR: usize, const ROWS: usize, const NV: usize>(t: &PairTile<f32>) {
    // SAFETY: forwarded; `AOperand::strip` checked that `Rows` holds `MR` pointers.
    unsafe {
        match t.a {
            AStrip::Packed(a) => nn_pairs_body::<S, MR, ROWS, NV>(t, &PackedA(a)),
            AStrip::Rows(rows, offset) => nn_pairs_body::<S, MR, ROWS, NV>(t, &RowsA::<u32, MR>::new(rows, offset)),
            AStrip::Strided(start, lda) => nn_pairs_body::<S, MR, ROWS, NV>(t, &StridedA { start, lda }),
        }
    }
}

#[inline(always)]
unsafe fn nn_pairs_body<S: PairLanes, const MR: usize, const ROWS: usize, const NV: usize>(
    t: &PairTile<f32>,
    a: &impl AValues<u32>,
) {
    let l = S::LANES;
    // SAFETY (whole body): `PairKernels::nn_indirect` checked the operands against the tile.
    unsafe {
        let mut acc = [[S::zero(); NV]; ROWS];
        if t.accumulate {
            for (i, row) in acc.iter_mut().enumerate() {
                for (v, r) in row.iter_mut().enumerate() {
                    *r = S::load(t.c.add(i * t.ldc + v * l));
                }
            }
        }
        for kk in 0..t.k {
            let row = t.b.row(kk);
            let b: [S::P; NV] = std::array::from_fn(|v| S::load_pairs(row.add(v * l)));
            for (i, acc_row) in acc.iter_mut().enumerate() {
                let w = S::splat_pair(a.value::<MR>(kk, i));
                for (r, &b) in acc_row.iter_mut().zip(&b) {
                    *r = S::dot(*r, w, b);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (v, &r) in row.iter().enumerate() {
                S::store(t.c.add(i * t.ldc + v * l), r);
            }
        }
    }
}

unsafe fn portable_nn_pairs<const L: usize, const MR: usize, const ROWS: usize, const NV: usize>(t: &PairTile<f32>) {
    // SAFETY: forwarded from the caller (valid operands); portable code runs anywhere.
    unsafe { nn_pairs::<PortablePairs<L>, MR, ROWS, NV>(t) }
}

/// The pair kernels of one shape: `$k::<MR, ROWS, NV>` by width (one vector,
/// then `NV`) and height (`$e1`, `$e2`, then `MR`), as [`PairKernels::nn`].
macro_rules! pair_table {
    ($k:ident $(<$lanes_arg:literal>)?, $lanes:literal, $mr:literal, ($e1:literal, $e2:literal), $nv:literal) => {
        PairKernels {
            rows: $mr,
            cols: $nv * $lanes,
            lanes: $lanes,
            heights: [$e1, $e2, $mr],
            nn: [
                [
                    $k::<$($lanes_arg,)? $mr, $e1, 1>,
                    $k::<$($lanes_arg,)? $mr, $e2, 1>,
                    $k::<$($lanes_arg,)? $mr, $mr, 1>,
                ],
                [
                    $k::<$($lanes_arg,)? $mr, $e1, $nv>,
                    $k::<$($lanes_arg,)? $mr, $e2, $nv>,
                    $k::<$($lanes_arg,)? $mr, $mr, $nv>,
                ],
            ],
        }
    };
}

/// A pair micro-kernel accumulating in `A`.
type PairKernel<A> = unsafe fn(&PairTile<A>);

/// The pair micro-kernel of one instruction set, accumulating in `A` (which
/// is always f32: the parameter lets generic code hold it).
#[derive(Clone, Copy)]
pub(crate) struct PairKernels<A: 'static> {
    /// Tile rows (output channels) and columns (positions).
    pub rows: usize,
    pub cols: usize,
    lanes: usize,
    /// The rows each kernel computes: two edge heights, then `MR` (as `Kernels`).
    heights: [usize; 3],
    /// By width (one vector, then `cols`) and height.
    nn: [[PairKernel<A>; 3]; 2],
}

impl<A: Copy + 'static> PairKernels<A> {
    /// The pair kernel for `isa`: AVX-512 with BF16 where the CPU has BF16;
    /// under test, the portable one for the portable instruction set. `None`
    /// elsewhere (the f32 kernels on widened values are faster than pairs taken
    /// apart in software) and for any `A` but f32.
    pub fn for_isa(isa: CpuIsa) -> Option<PairKernels<A>> {
        let table: PairKernels<f32> = match isa {
            CpuIsa::Portable if cfg!(test) => pair_table!(portable_nn_pairs<4>, 4, 4, (1, 2), 2),
            #[cfg(target_arch = "x86_64")]
            CpuIsa::Avx512 if isa.is_supported() && std::arch::is_x86_feature_detected!("avx512bf16") => {
                // Registers as the f32 AVX-512 kernel: 12×2 accumulators, 2 loads, a broadcast.
                use avx512::nn_pairs_k;
                pair_table!(nn_pairs_k, 16, 12, (4, 8), 2)
            }
            _ => return None,
        };
        (&table as &dyn Any).downcast_ref::<PairKernels<A>>().copied()
    }

    /// Tests only: the pair kernel of `isa`'s shape in plain Rust, where
    /// `isa` has one (as `kernels_shaped_as`).
    #[cfg(test)]
    pub fn shaped_as(isa: CpuIsa) -> Option<PairKernels<A>> {
        let table: PairKernels<f32> = match isa {
            CpuIsa::Portable => return PairKernels::for_isa(isa),
            CpuIsa::Avx512 => pair_table!(portable_nn_pairs<16>, 16, 12, (4, 8), 2),
            CpuIsa::Avx2 => return None,
        };
        (&table as &dyn Any).downcast_ref::<PairKernels<A>>().copied()
    }
}

impl<A: Copy + 'static> IndirectKernel<A, u32> for PairKernels<A> {
    fn tile(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// `c[i·ldc + j] (+)= Σ_k a[k·rows + i] ⊙ rows.row(k)[offset + j]` over
    /// the tile's live rows and columns at least (see [`Kernels::nn`](super::kernels::Kernels::nn)).
    fn nn_indirect(
        &self,
        (live_rows, live_cols): (usize, usize),
        a: AOperand<'_, u32>,
        rows: &RowSet<'_, u32>,
        offset: usize,
        c: &mut [A],
        ldc: usize,
        accumulate: bool,
    ) {
        let (width, height, _) = edge_kernel(&self.heights, self.lanes, live_rows, live_cols);
        let (k, a) = check_indirect("nn_pairs", self.tile(), a, rows, offset, c, ldc);
        let tile = PairTile { k, a, b: rows.gathered(0, offset), c: c.as_mut_ptr(), ldc, accumulate };
        // SAFETY: the table exists only where its instruction set runs, and `check_indirect` bounds every access.
        unsafe { (self.nn[width][height])(&tile) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_put_the_even_value_low() {
        let p = pair(bf16::from_f32(1.5), bf16::from_f32(-2.0));
        assert_eq!(halves(p), (1.5, -2.0));
        assert_eq!(p & 0xFFFF, u32::from(bf16::from_f32(1.5).to_bits()));
    }

    #[test]
    fn the_pair_kernel_sums_both_products_of_every_pair() {
        let Some(ks) = PairKernels::<f32>::for_isa(CpuIsa::Portable) else { panic!("the portable pair kernel exists") };
        let (mr, nr, k) = (ks.rows, ks.cols, 3);
        let value = |s: usize| bf16::from_f32(((s * 7) % 11) as f32 - 5.0);
        // a[k][i] pairs weights (2k, 2k+1) of row i; row k pairs data (2k, 2k+1) at every column.
        let a: Vec<u32> = (0..k * mr).map(|s| pair(value(2 * s), value(2 * s + 1))).collect();
        let data: Vec<Vec<u32>> =
            (0..k).map(|kk| (0..nr + 1).map(|j| pair(value(kk + j), value(3 * kk + j + 1))).collect()).collect();
        let mut rows = RowSet::new();
        data.iter().for_each(|row| rows.push(row));
        let mut c = vec![1.0f32; mr * nr];
        ks.nn_indirect((mr, nr), AOperand::Packed(&a), &rows, 1, &mut c, nr, true);
        for (i, j) in (0..mr).flat_map(|i| (0..nr).map(move |j| (i, j))) {
            let expected: f32 = 1.0
                + (0..k)
                    .map(|kk| {
                        let ((we, wo), (xe, xo)) = (halves(a[kk * mr + i]), halves(data[kk][j + 1]));
                        we * xe + wo * xo
                    })
                    .sum::<f32>();
            assert_eq!(c[i * nr + j], expected, "c[{i}][{j}]");
        }
    }

    #[test]
    fn edge_pair_kernels_compute_their_rows_and_columns_and_no_more() {
        let tables = [CpuIsa::Portable, CpuIsa::Avx512]
            .into_iter()
            .flat_map(|isa| [PairKernels::<f32>::for_isa(isa), PairKernels::shaped_as(isa)])
            .flatten();
        for ks in tables {
            let (mr, nr, k) = (ks.rows, ks.cols, 5);
            let value = |s: usize| bf16::from_f32(((s * 5) % 13) as f32 - 6.0);
            let a: Vec<u32> = (0..k * mr).map(|s| pair(value(2 * s), value(2 * s + 1))).collect();
            let data: Vec<Vec<u32>> =
                (0..k).map(|kk| (0..nr).map(|j| pair(value(kk + j), value(kk * j))).collect()).collect();
            let mut rows = RowSet::new();
            data.iter().for_each(|row| rows.push(row));
            let mut full = vec![0.0f32; mr * nr];
            ks.nn_indirect((mr, nr), AOperand::Packed(&a), &rows, 0, &mut full, nr, false);
            for (live_rows, live_cols) in (1..=mr).flat_map(|r| [1, ks.lanes, ks.lanes + 1, nr].map(|c| (r, c))) {
                let (wide, _, height) = edge_kernel(&ks.heights, ks.lanes, live_rows, live_cols);
                let width = if wide == 1 { nr } else { ks.lanes };
                let mut edge = vec![f32::NAN; mr * nr];
                ks.nn_indirect((live_rows, live_cols), AOperand::Packed(&a), &rows, 0, &mut edge, nr, false);
                for (at, (&got, &want)) in edge.iter().zip(&full).enumerate() {
                    let (i, j) = (at / nr, at % nr);
                    if i < live_rows && j < live_cols {
                        assert_eq!(got.to_bits(), want.to_bits(), "{live_rows}×{live_cols}: ({i}, {j})");
                    } else if i >= height || j >= width {
                        assert!(got.is_nan(), "{live_rows}×{live_cols} wrote ({i}, {j})");
                    }
                }
            }
        }
    }
}
