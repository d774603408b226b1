//! The `nt` micro-kernel: `C[MR×NR] (+)= Σ_r a[i][r] · b[j][r]`, dot products along the contiguous dim.

use super::BRows;
use crate::cpu::isa::Lanes;

/// The operands of one `nt` micro-tile.
pub(crate) struct NtTile<A, R> {
    /// Reduction length, a multiple of the lane count.
    pub k: usize,
    /// `MR` rows of `k` values, `lda` apart.
    pub a: *const A,
    pub lda: usize,
    /// `NR` rows of `k` values.
    pub b: R,
    /// `MR` rows of `NR` values, `ldc` apart; always accumulated into.
    pub c: *mut A,
    pub ldc: usize,
}

/// One step of the `nt` reduction: `acc[i][j] += a[i·lda + r..][..lanes] · b[j][r..][..lanes]`, lane-wise.
#[inline(always)]
unsafe fn nt_step<S: Lanes<A>, A: Copy, const MR: usize, const NR: usize>(
    acc: &mut [[S::V; NR]; MR],
    a: *const A,
    lda: usize,
    b: &[*const A; NR],
    r: usize,
) {
    // SAFETY: as in `nt_body`, for the lanes from `r`.
    unsafe {
        let av: [S::V; MR] = std::array::from_fn(|i| S::load(a.add(i * lda + r)));
        for (j, &b) in b.iter().enumerate() {
            let bv = S::load(b.add(r));
            for (row, &av) in acc.iter_mut().zip(&av) {
                row[j] = S::mul_add(av, bv, row[j]);
            }
        }
    }
}

#[inline(always)]
pub(super) unsafe fn nt<
    S: Lanes<A>,
    A: Copy + std::ops::Add<Output = A>,
    R: BRows<A>,
    const MR: usize,
    const NR: usize,
>(
    t: &NtTile<A, R>,
) {
    let (a, lda, c, ldc, k) = (t.a, t.lda, t.c, t.ldc, t.k);
    // SAFETY (whole body): `Kernels::nt` / `Kernels::nt_indirect` checked the operands against the tile.
    unsafe {
        let b: [*const A; NR] = std::array::from_fn(|j| t.b.row(j));
        let mut acc = [[S::zero(); NR]; MR];
        let l = S::LANES;
        // Four steps per trip, as in `nn_body`.
        let mut r = 0;
        while r + 4 * l <= k {
            for step in 0..4 {
                nt_step::<S, A, MR, NR>(&mut acc, a, lda, &b, r + step * l);
            }
            r += 4 * l;
        }
        while r < k {
            nt_step::<S, A, MR, NR>(&mut acc, a, lda, &b, r);
            r += l;
        }
        for (i, row) in S::reduce_tile(&acc).iter().enumerate() {
            for (j, &sum) in row.iter().enumerate() {
                let c = c.add(i * ldc + j);
                *c = *c + sum;
            }
        }
    }
}
