//! The `nn` micro-kernel: `C[MR×NR] (+)= Σ_k a[k][MR] ⊗ b[k][NR]`, a broadcast of `a` times vector loads of `b`.

use crate::cpu::isa::Lanes;

/// Where the `a` operand of an `nn` micro-tile is.
#[derive(Clone, Copy)]
pub(crate) enum AStrip<A> {
    /// Packed: `k` rows of `MR` values.
    Packed(*const A),
    /// In place: `MR` row pointers, row `i` read for `k` values from `rows[i] + offset`.
    Rows(*const *const A, usize),
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

/// The operands of one `nn` micro-tile.
pub(crate) struct NnTile<A> {
    /// Reduction length.
    pub k: usize,
    pub a: AStrip<A>,
    /// `k` rows of `NR` values, `ldb` apart.
    pub b: *const A,
    pub ldb: usize,
    /// `MR` rows of `NR` values, `ldc` apart.
    pub c: *mut A,
    pub ldc: usize,
    /// Add to `c` rather than overwrite it.
    pub accumulate: bool,
}

/// The operands of one `nn` micro-tile whose `b` rows are anywhere: row `k` is
/// `rows[k] + offset`.
pub(crate) struct NnRowsTile<A> {
    pub k: usize,
    pub a: AStrip<A>,
    pub rows: *const *const A,
    pub offset: usize,
    pub c: *mut A,
    pub ldc: usize,
    pub accumulate: bool,
}

/// Where the `b` rows of a micro-tile are.
trait BRows<A> {
    unsafe fn row(&self, k: usize) -> *const A;
}

impl<A> BRows<A> for NnTile<A> {
    #[inline(always)]
    unsafe fn row(&self, k: usize) -> *const A {
        // SAFETY: the caller keeps `k` below the tile's reduction length.
        unsafe { self.b.add(k * self.ldb) }
    }
}

impl<A> BRows<A> for NnRowsTile<A> {
    #[inline(always)]
    unsafe fn row(&self, k: usize) -> *const A {
        // SAFETY: the caller keeps `k` below the tile's reduction length.
        unsafe { (*self.rows.add(k)).add(self.offset) }
    }
}

#[inline(always)]
pub(super) unsafe fn nn<S: Lanes<A>, A: Copy, const MR: usize, const NV: usize>(t: &NnTile<A>) {
    // SAFETY: forwarded.
    unsafe { nn_any_a::<S, A, MR, NV>(t.k, t.a, t, t.c, t.ldc, t.accumulate) }
}

#[inline(always)]
pub(super) unsafe fn nn_rows<S: Lanes<A>, A: Copy, const MR: usize, const NV: usize>(t: &NnRowsTile<A>) {
    // SAFETY: forwarded.
    unsafe { nn_any_a::<S, A, MR, NV>(t.k, t.a, t, t.c, t.ldc, t.accumulate) }
}

/// [`nn_body`] for either kind of `a` operand (one body each, chosen per call).
#[inline(always)]
unsafe fn nn_any_a<S: Lanes<A>, A: Copy, const MR: usize, const NV: usize>(
    k: usize,
    a: AStrip<A>,
    b: &impl BRows<A>,
    c: *mut A,
    ldc: usize,
    accumulate: bool,
) {
    // SAFETY: forwarded; `AOperand::strip` checked that `Rows` holds `MR` pointers.
    unsafe {
        match a {
            AStrip::Packed(a) => nn_body::<S, A, MR, NV>(k, &PackedA(a), b, c, ldc, accumulate),
            AStrip::Rows(rows, offset) => {
                nn_body::<S, A, MR, NV>(k, &RowsA::<A, MR>::new(rows, offset), b, c, ldc, accumulate)
            }
        }
    }
}

/// One step of the `nn` reduction: `acc += a[..MR] ⊗ b.row(kk)[..NV·lanes]`.
#[inline(always)]
unsafe fn nn_step<S: Lanes<A>, A: Copy, const MR: usize, const NV: usize>(
    acc: &mut [[S::V; NV]; MR],
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
unsafe fn nn_body<S: Lanes<A>, A: Copy, const MR: usize, const NV: usize>(
    k: usize,
    a: &impl AValues<A>,
    b: &impl BRows<A>,
    c: *mut A,
    ldc: usize,
    accumulate: bool,
) {
    let l = S::LANES;
    // SAFETY (whole body): `Kernels::nn` / `Kernels::nn_indirect` checked the operands against the tile.
    unsafe {
        let mut acc = [[S::zero(); NV]; MR];
        if accumulate {
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
            nn_step::<S, A, MR, NV>(&mut acc, b, a, kk);
            nn_step::<S, A, MR, NV>(&mut acc, b, a, kk + 1);
            nn_step::<S, A, MR, NV>(&mut acc, b, a, kk + 2);
            nn_step::<S, A, MR, NV>(&mut acc, b, a, kk + 3);
            kk += 4;
        }
        while kk < k {
            nn_step::<S, A, MR, NV>(&mut acc, b, a, kk);
            kk += 1;
        }
        for (i, row) in acc.iter().enumerate() {
            for (v, &r) in row.iter().enumerate() {
                S::store(c.add(i * ldc + v * l), r);
            }
        }
    }
}
