//! The `nn` micro-kernel: `C[MR×NR] (+)= Σ_k a[k][MR] ⊗ b[k][NR]`, a broadcast of `a` times vector loads of `b`.

use super::BRows;
use crate::cpu::isa::Lanes;

/// Where the `a` operand of an `nn` micro-tile is.
#[derive(Clone, Copy)]
pub(crate) enum AStrip<A> {
    /// Packed: `k` rows of `MR` values.
    Packed(*const A),
    /// In place: `MR` row pointers, row `i` read for `k` values from `rows[i] + offset`.
    Rows(*const *const A, usize),
    /// In place: `k` runs of `MR` values, the second argument apart.
    Strided(*const A, usize),
}

/// The `a` operand of a micro-tile as the kernel body reads it.
pub(crate) trait AValues<A> {
    /// `a[kk][i]`.
    unsafe fn value<const MR: usize>(&self, kk: usize, i: usize) -> A;
}

/// A packed strip: step `kk` is `MR` values at `kk·MR`.
pub(crate) struct PackedA<A>(pub *const A);

impl<A: Copy> AValues<A> for PackedA<A> {
    #[inline(always)]
    unsafe fn value<const MR: usize>(&self, kk: usize, i: usize) -> A {
        // SAFETY: the caller keeps `kk` below the reduction length and `i` below `MR`.
        unsafe { *self.0.add(kk * MR + i) }
    }
}

/// Runs of `MR` values read in place: step `kk` at `kk·lda` ([`PackedA`] is
/// the case `lda = MR`, kept apart so that its stride stays a compile-time constant).
pub(crate) struct StridedA<A> {
    pub start: *const A,
    pub lda: usize,
}

impl<A: Copy> AValues<A> for StridedA<A> {
    #[inline(always)]
    unsafe fn value<const MR: usize>(&self, kk: usize, i: usize) -> A {
        // SAFETY: the caller keeps `kk` below the reduction length and `i` below the kernel's height.
        unsafe { *self.start.add(kk * self.lda + i) }
    }
}

/// `MR` rows read in place.
pub(crate) struct RowsA<A, const MR: usize>(pub [*const A; MR]);

impl<A, const MR: usize> RowsA<A, MR> {
    /// The `MR` rows at `rows`, each from `offset`.
    ///
    /// # Safety
    /// `rows` holds `MR` pointers, each valid from `offset` on for the reduction.
    #[inline(always)]
    pub unsafe fn new(rows: *const *const A, offset: usize) -> Self {
        // SAFETY: the caller's contract.
        RowsA(std::array::from_fn(|i| unsafe { (*rows.add(i)).add(offset) }))
    }
}

impl<A: Copy, const R: usize> AValues<A> for RowsA<A, R> {
    #[inline(always)]
    unsafe fn value<const MR: usize>(&self, kk: usize, i: usize) -> A {
        // SAFETY: as for `PackedA`; every row holds the reduction length.
        unsafe { *self.0[i].add(kk) }
    }
}

/// The operands of one `nn` micro-tile: `C[MR×NR] (+)= Σ_k a[k][MR] ⊗ b.row(k)[..NR]`,
/// with `a` and `b` holding `B`s (the accumulator, or pairs of bf16 for the pair kernel).
pub(crate) struct NnTile<C, B, R> {
    /// Reduction length.
    pub k: usize,
    pub a: AStrip<B>,
    /// `k` rows of `NR` values.
    pub b: R,
    /// `MR` rows of `NR` values, `ldc` apart.
    pub c: *mut C,
    pub ldc: usize,
    /// Add to `c` rather than overwrite it.
    pub accumulate: bool,
}

/// The tile's first `ROWS` rows (`ROWS <= MR`: an edge strip computes only
/// the rows it has), with `a` laid out in strips of `MR`.
#[inline(always)]
pub(super) unsafe fn nn<S: Lanes<A>, A: Copy, R: BRows<A>, const MR: usize, const ROWS: usize, const NV: usize>(
    t: &NnTile<A, A, R>,
) {
    // SAFETY: forwarded; `AOperand::strip` checked that `Rows` holds `MR` pointers.
    unsafe {
        match t.a {
            AStrip::Packed(a) => nn_body::<S, A, R, MR, ROWS, NV>(t, &PackedA(a)),
            AStrip::Rows(rows, offset) => nn_body::<S, A, R, MR, ROWS, NV>(t, &RowsA::<A, MR>::new(rows, offset)),
            AStrip::Strided(start, lda) => nn_body::<S, A, R, MR, ROWS, NV>(t, &StridedA { start, lda }),
        }
    }
}

/// One step of the `nn` reduction: `acc += a[..ROWS] ⊗ b.row(kk)[..NV·lanes]`.
#[inline(always)]
unsafe fn nn_step<S: Lanes<A>, A: Copy, const MR: usize, const ROWS: usize, const NV: usize>(
    acc: &mut [[S::V; NV]; ROWS],
    b: &impl BRows<A>,
    a: &impl AValues<A>,
    kk: usize,
) {
    let l = S::LANES;
    // SAFETY: as in `nn_body`, for reduction step `kk`.
    unsafe {
        let row = b.row(kk);
        let bv: [S::V; NV] = std::array::from_fn(|v| S::load(row.add(v * l)));
        for (i, acc_row) in acc.iter_mut().enumerate() {
            let av = S::splat(a.value::<MR>(kk, i));
            for (r, &bv) in acc_row.iter_mut().zip(&bv) {
                *r = S::mul_add(av, bv, *r);
            }
        }
    }
}

#[inline(always)]
unsafe fn nn_body<S: Lanes<A>, A: Copy, R: BRows<A>, const MR: usize, const ROWS: usize, const NV: usize>(
    t: &NnTile<A, A, R>,
    a: &impl AValues<A>,
) {
    let (k, b, c, ldc) = (t.k, &t.b, t.c, t.ldc);
    let l = S::LANES;
    // SAFETY (whole body): `Kernels::nn` / `Kernels::nn_indirect` checked the operands against the tile.
    unsafe {
        let mut acc = [[S::zero(); NV]; ROWS];
        if t.accumulate {
            for (i, row) in acc.iter_mut().enumerate() {
                for (v, r) in row.iter_mut().enumerate() {
                    *r = S::load(c.add(i * ldc + v * l));
                }
            }
        }
        // Four steps per trip: the loop's bookkeeping falls from 4 instructions per
        // 12 FMAs to 4 per 48, and at ~25 instructions a step the issue width, not
        // the FMA units, bounds this loop (single-thread dense layers ~5% faster).
        let mut kk = 0;
        while kk + 4 <= k {
            nn_step::<S, A, MR, ROWS, NV>(&mut acc, b, a, kk);
            nn_step::<S, A, MR, ROWS, NV>(&mut acc, b, a, kk + 1);
            nn_step::<S, A, MR, ROWS, NV>(&mut acc, b, a, kk + 2);
            nn_step::<S, A, MR, ROWS, NV>(&mut acc, b, a, kk + 3);
            kk += 4;
        }
        while kk < k {
            nn_step::<S, A, MR, ROWS, NV>(&mut acc, b, a, kk);
            kk += 1;
        }
        for (i, row) in acc.iter().enumerate() {
            for (v, &r) in row.iter().enumerate() {
                S::store(c.add(i * ldc + v * l), r);
            }
        }
    }
}
