//! The SIMD kernels, written once over [`Lanes`] and instantiated per
//! instruction set, and the table ([`Kernels`]) an op looks them up in.
//!
//! - `nn`: the GEMM micro-kernel `C[MR×NR] (+)= Σ_k a[k][MR] ⊗ b[k][NR]`
//!   (broadcast `a`, vector loads of `b`): implicit GEMM forward and adjoint;
//!   `a` packed in strips, or read in place from `MR` weight rows ([`AOperand`]).
//! - `nt`: `C[MR×NR] (+)= Σ_r a[i][r] · b[j][r]`, dot products along the
//!   contiguous dim: the weight gradient, where both operands are im2col-like rows.
//! - `taps`, `dots`: rows of the direct path for thin groups (a few outputs
//!   summed over every source channel and tap); `sum`: bias gradients.
//!
//! Each output element is one chain of multiply-adds in a fixed order, so a
//! result depends on the data and the instruction set only, never on tiling
//! or threads.

use std::any::Any;

#[cfg(target_arch = "x86_64")]
use super::isa::{Avx2, Avx512};
use super::isa::{CpuIsa, Lanes, Portable};
use super::pairs::PairKernels;

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

/// The operands of one `nt` micro-tile.
pub(crate) struct NtTile<A> {
    /// Reduction length, a multiple of the lane count.
    pub k: usize,
    /// `MR` rows of `k` values, `lda` apart.
    pub a: *const A,
    pub lda: usize,
    /// `NR` rows of `k` values, `ldb` apart.
    pub b: *const A,
    pub ldb: usize,
    /// `MR` rows of `NR` values, `ldc` apart; always accumulated into.
    pub c: *mut A,
    pub ldc: usize,
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
unsafe fn nn<S: Lanes<A>, A: Copy, const MR: usize, const NV: usize>(t: &NnTile<A>) {
    // SAFETY: forwarded.
    unsafe { nn_any_a::<S, A, MR, NV>(t.k, t.a, t, t.c, t.ldc, t.accumulate) }
}

#[inline(always)]
unsafe fn nn_rows<S: Lanes<A>, A: Copy, const MR: usize, const NV: usize>(t: &NnRowsTile<A>) {
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

/// The operands of one `nt` micro-tile whose `b` rows are anywhere: row `j` is `rows[j] + offset`.
pub(crate) struct NtRowsTile<A> {
    pub k: usize,
    pub a: *const A,
    pub lda: usize,
    pub rows: *const *const A,
    pub offset: usize,
    pub c: *mut A,
    pub ldc: usize,
}

/// The operands an `nt` body needs, wherever its `b` rows are.
trait NtOperands<A> {
    fn k(&self) -> usize;
    fn a(&self) -> (*const A, usize);
    fn c(&self) -> (*mut A, usize);
    unsafe fn b_row(&self, j: usize) -> *const A;
}

impl<A> NtOperands<A> for NtTile<A> {
    fn k(&self) -> usize {
        self.k
    }
    fn a(&self) -> (*const A, usize) {
        (self.a, self.lda)
    }
    fn c(&self) -> (*mut A, usize) {
        (self.c, self.ldc)
    }
    #[inline(always)]
    unsafe fn b_row(&self, j: usize) -> *const A {
        // SAFETY: the caller keeps `j` below the tile's column count.
        unsafe { self.b.add(j * self.ldb) }
    }
}

impl<A> NtOperands<A> for NtRowsTile<A> {
    fn k(&self) -> usize {
        self.k
    }
    fn a(&self) -> (*const A, usize) {
        (self.a, self.lda)
    }
    fn c(&self) -> (*mut A, usize) {
        (self.c, self.ldc)
    }
    #[inline(always)]
    unsafe fn b_row(&self, j: usize) -> *const A {
        // SAFETY: the caller keeps `j` below the tile's column count.
        unsafe { (*self.rows.add(j)).add(self.offset) }
    }
}

#[inline(always)]
unsafe fn nt<S: Lanes<A>, A: Copy + std::ops::Add<Output = A>, const MR: usize, const NR: usize>(t: &NtTile<A>) {
    // SAFETY: forwarded.
    unsafe { nt_body::<S, A, MR, NR>(t) }
}

#[inline(always)]
unsafe fn nt_rows<S: Lanes<A>, A: Copy + std::ops::Add<Output = A>, const MR: usize, const NR: usize>(
    t: &NtRowsTile<A>,
) {
    // SAFETY: forwarded.
    unsafe { nt_body::<S, A, MR, NR>(t) }
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
unsafe fn nt_body<S: Lanes<A>, A: Copy + std::ops::Add<Output = A>, const MR: usize, const NR: usize>(
    t: &impl NtOperands<A>,
) {
    let ((a, lda), (c, ldc), k) = (t.a(), t.c(), t.k());
    // SAFETY (whole body): `Kernels::nt` / `Kernels::nt_indirect` checked the operands against the tile.
    unsafe {
        let b: [*const A; NR] = std::array::from_fn(|j| t.b_row(j));
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
        for (i, row) in acc.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                let c = c.add(i * ldc + j);
                *c = *c + S::reduce_sum(v);
            }
        }
    }
}

/// `Σ a[i]`: four vector chains, combined in a fixed order, then the tail.
#[inline(always)]
unsafe fn sum<S: Lanes<A>, A: Copy + std::ops::Add<Output = A>>(n: usize, a: *const A) -> A {
    // SAFETY (whole body): `Kernels::sum` checked the length is `n`.
    unsafe {
        let l = S::LANES;
        let mut acc = [S::zero(); 4];
        let mut i = 0;
        while i + 4 * l <= n {
            for (j, acc) in acc.iter_mut().enumerate() {
                *acc = S::add(S::load(a.add(i + j * l)), *acc);
            }
            i += 4 * l;
        }
        let mut s = S::reduce_sum(S::add(S::add(acc[0], acc[1]), S::add(acc[2], acc[3])));
        for i in i..n {
            s = s + *a.add(i);
        }
        s
    }
}

/// The operands of one `taps` block, `O` outputs of one thin group at a time:
/// `out[o·ldo + i] = Σ_t weights[o·taps + t] · src[t][offset + i]`, `i < len`.
pub(crate) struct TapsBlock<A> {
    /// A multiple of the lane count.
    pub len: usize,
    /// One pointer per tap (a source channel at a kernel offset), each valid
    /// for `offset + len` elements.
    pub src: *const *const A,
    pub offset: usize,
    pub taps: usize,
    /// `O` rows of `taps` weights.
    pub weights: *const A,
    /// `O` rows of `len` values, `ldo` apart.
    pub out: *mut A,
    pub ldo: usize,
}

/// [`TapsBlock`] for `O` outputs: every tap's source vectors are loaded once
/// for all of them, and `O·V` chains run side by side (enough to hide the
/// multiply-add latency), each summing its taps in order.
#[inline(always)]
unsafe fn taps_block<S: Lanes<A>, A: Copy, const O: usize, const V: usize>(r: &TapsBlock<A>) {
    let l = S::LANES;
    let full = r.len / (V * l) * (V * l);
    // SAFETY: `Kernels::taps` checked the lengths; the caller the pointers.
    unsafe {
        for i in (0..full).step_by(V * l) {
            taps_chunk::<S, A, O, V>(r, i);
        }
        for i in (full..r.len).step_by(l) {
            taps_chunk::<S, A, O, 1>(r, i);
        }
    }
}

/// [`taps_block`] for the `W` registers at `i` (a compile-time width, so they stay in registers).
#[inline(always)]
unsafe fn taps_chunk<S: Lanes<A>, A: Copy, const O: usize, const W: usize>(r: &TapsBlock<A>, i: usize) {
    let l = S::LANES;
    // SAFETY: `i + W·LANES <= len`; every pointer is valid for `offset + len`
    // elements, the weights for `O·taps`, the outputs for `O` rows.
    unsafe {
        let mut acc = [[S::zero(); W]; O];
        for t in 0..r.taps {
            let src = (*r.src.add(t)).add(r.offset + i);
            let x: [S::V; W] = std::array::from_fn(|v| S::load(src.add(v * l)));
            for (o, acc) in acc.iter_mut().enumerate() {
                let w = S::splat(*r.weights.add(o * r.taps + t));
                for (acc, &x) in acc.iter_mut().zip(&x) {
                    *acc = S::mul_add(w, x, *acc);
                }
            }
        }
        for (o, acc) in acc.iter().enumerate() {
            for (v, &acc) in acc.iter().enumerate() {
                S::store(r.out.add(o * r.ldo + i + v * l), acc);
            }
        }
    }
}

/// The operands of one `dots` call: `out[t] += Σ_{r < rows} Σ_{i < len} a[r·lda + i] · b[t][r·ldb + i]`.
pub(crate) struct DotsRow<A> {
    pub len: usize,
    pub rows: usize,
    pub a: *const A,
    pub lda: usize,
    /// One pointer per output, each valid for `(rows - 1)·ldb + len` elements.
    pub b: *const *const A,
    pub ldb: usize,
    pub count: usize,
    pub out: *mut A,
}

/// `out[t] += Σ_r Σ_i a[r][i] · b[t][r][i]`, `T` outputs at a time (then one at
/// a time): each `a` register loaded once per group, one vector chain and one
/// scalar chain (the row tails) per output, reduced once at the end.
#[inline(always)]
unsafe fn dots_row<S: Lanes<A>, A: Copy + std::ops::Add<Output = A>, const T: usize>(r: &DotsRow<A>) {
    let full = r.count / T * T;
    // SAFETY: `Kernels::dots_row` checked the lengths; the caller the pointers.
    unsafe {
        for t0 in (0..full).step_by(T) {
            dots_group::<S, A, T>(r, t0);
        }
        for t0 in full..r.count {
            dots_group::<S, A, 1>(r, t0);
        }
    }
}

/// [`dots_row`] for outputs `t0..t0 + W`.
#[inline(always)]
unsafe fn dots_group<S: Lanes<A>, A: Copy + std::ops::Add<Output = A>, const W: usize>(r: &DotsRow<A>, t0: usize) {
    let l = S::LANES;
    // SAFETY: `t0 + W <= count`; `a` and every `b` row are valid for `len` elements.
    unsafe {
        let b: [*const A; W] = std::array::from_fn(|t| *r.b.add(t0 + t));
        let mut acc = [S::zero(); W];
        let zero = S::reduce_sum(S::zero());
        let mut tails = [zero; W];
        let vector_len = r.len / l * l;
        for row in 0..r.rows {
            let a_row = r.a.add(row * r.lda);
            for i in (0..vector_len).step_by(l) {
                let a = S::load(a_row.add(i));
                for (acc, &b) in acc.iter_mut().zip(&b) {
                    *acc = S::mul_add(a, S::load(b.add(row * r.ldb + i)), *acc);
                }
            }
            for (tail, &b) in tails.iter_mut().zip(&b) {
                for i in vector_len..r.len {
                    *tail = S::mul_add_scalar(*a_row.add(i), *b.add(row * r.ldb + i), *tail);
                }
            }
        }
        for (t, (&acc, tail)) in acc.iter().zip(tails).enumerate() {
            let sum = S::reduce_sum(acc) + tail;
            let out = r.out.add(t0 + t);
            *out = *out + sum;
        }
    }
}

/// A micro-kernel that reads the `b` rows of its tile where they are:
/// `c[i·ldc + j] (+)= Σ_k a[k][i] · rows.row(k)[offset + j]` over its
/// `MR × NR` tile, with `a` and the rows in `B` and `c` in `A` (the `nn`
/// kernels, and the bf16 pair kernel with `B` = pairs).
pub(crate) trait IndirectKernel<A, B> {
    /// Tile rows (MR) and columns (NR).
    fn tile(&self) -> (usize, usize);
    /// Runs one tile, checking every operand holds it.
    fn nn_indirect(
        &self,
        a: AOperand<'_, B>,
        rows: &RowSet<'_, B>,
        offset: usize,
        c: &mut [A],
        ldc: usize,
        accumulate: bool,
    );
}

/// The checks every [`IndirectKernel`] makes before its tile runs: the tile's
/// reduction length and its `a` operand as the kernel takes it.
pub(crate) fn check_indirect<A, B>(
    kernel: &str,
    (mr, nr): (usize, usize),
    a: AOperand<'_, B>,
    rows: &RowSet<'_, B>,
    offset: usize,
    c: &[A],
    ldc: usize,
) -> (usize, AStrip<B>) {
    let k = rows.rows();
    let a = a.strip(k, mr, kernel);
    assert!(offset + nr <= rows.row_len(), "{kernel}: rows hold {} < {offset} + {nr}", rows.row_len());
    assert!(ldc >= nr && c.len() >= (mr - 1) * ldc + nr, "{kernel}: c too short");
    (k, a)
}

impl<A: Copy + 'static> IndirectKernel<A, A> for Kernels<A> {
    fn tile(&self) -> (usize, usize) {
        (self.nn_rows, self.nn_cols)
    }

    fn nn_indirect(
        &self,
        a: AOperand<'_, A>,
        rows: &RowSet<'_, A>,
        offset: usize,
        c: &mut [A],
        ldc: usize,
        accumulate: bool,
    ) {
        let (k, a) = check_indirect("nn_indirect", self.tile(), a, rows, offset, c, ldc);
        let tile = NnRowsTile { k, a, rows: rows.pointers(), offset, c: c.as_mut_ptr(), ldc, accumulate };
        // SAFETY: the table exists only for a supported ISA, and `check_indirect` bounds every access.
        unsafe { (self.nn_indirect)(&tile) }
    }
}

/// The `a` operand of an `nn` micro-tile (`MR` rows of the weights, `k` long).
#[derive(Clone, Copy)]
pub(crate) enum AOperand<'a, A> {
    /// Packed: `k` rows of `MR` values.
    Packed(&'a [A]),
    /// In place: `MR` rows, each read for `k` values from `offset`.
    Rows(&'a RowSet<'a, A>, usize),
}

impl<A> AOperand<'_, A> {
    /// The operand as the kernels take it, checked to hold `k` steps of `mr` rows.
    pub fn strip(self, k: usize, mr: usize, kernel: &str) -> AStrip<A> {
        match self {
            AOperand::Packed(a) => {
                assert!(a.len() >= k * mr, "{kernel}: a holds {} < {k}×{mr}", a.len());
                AStrip::Packed(a.as_ptr())
            }
            AOperand::Rows(rows, offset) => {
                assert_eq!(rows.rows(), mr, "{kernel}: a has {} rows, not {mr}", rows.rows());
                assert!(offset + k <= rows.row_len(), "{kernel}: a rows hold {} < {offset} + {k}", rows.row_len());
                AStrip::Rows(rows.pointers(), offset)
            }
        }
    }
}

/// The `b` rows of [`Kernels::nn_indirect`]: borrowed slices, all at least `len` long.
pub(crate) struct RowSet<'a, A> {
    pointers: Vec<*const A>,
    len: usize,
    _rows: std::marker::PhantomData<&'a [A]>,
}

impl<'a, A> RowSet<'a, A> {
    pub fn new() -> Self {
        RowSet::with_capacity(0)
    }

    /// An empty set with room for `rows` rows.
    pub fn with_capacity(rows: usize) -> Self {
        RowSet { pointers: Vec::with_capacity(rows), len: usize::MAX, _rows: std::marker::PhantomData }
    }

    pub fn clear(&mut self) {
        self.pointers.clear();
        self.len = usize::MAX;
    }

    pub fn push(&mut self, row: &'a [A]) {
        self.pointers.push(row.as_ptr());
        self.len = self.len.min(row.len());
    }

    /// How many rows there are.
    pub fn rows(&self) -> usize {
        self.pointers.len()
    }

    /// The length of the shortest row.
    pub fn row_len(&self) -> usize {
        self.len
    }

    /// The row pointers, each valid for [`RowSet::row_len`] elements.
    pub fn pointers(&self) -> *const *const A {
        self.pointers.as_ptr()
    }
}

/// The kernels of one instruction set for accumulator `A`, as function pointers.
#[derive(Clone, Copy)]
pub(crate) struct Kernels<A: 'static> {
    /// Lanes per register.
    pub lanes: usize,
    /// `nn` tile rows (MR) and columns (NR).
    pub nn_rows: usize,
    pub nn_cols: usize,
    /// `nt` tile rows and columns.
    pub nt_rows: usize,
    pub nt_cols: usize,
    nn: unsafe fn(&NnTile<A>),
    nn_indirect: unsafe fn(&NnRowsTile<A>),
    nt: unsafe fn(&NtTile<A>),
    nt_indirect: unsafe fn(&NtRowsTile<A>),
    sum: unsafe fn(usize, *const A) -> A,
    /// `taps` blocks of 1, 2 and 4 outputs.
    taps: [unsafe fn(&TapsBlock<A>); 3],
    dots_row: unsafe fn(&DotsRow<A>),
    /// The bf16 channel-pair kernel, where this instruction set has one.
    pub pairs: Option<PairKernels<A>>,
}

/// Instantiates the generic kernels for one instruction set, inside
/// `#[target_feature]` wrappers when it names features, and builds its tables.
/// Each table names its accumulator, the register type, and the shapes:
/// `nn` rows × vectors, `nt` rows × columns, the vectors of the `taps` blocks
/// of 1, 2 and 4 outputs, and the rows of `dots`.
macro_rules! isa_kernels {
    ($module:ident, [$($features:literal)?],
     $($table:ident: $a:ty, $s:ty, nn: ($mr:literal, $nv:literal), nt: ($tr:literal, $tc:literal),
       taps: ($t1:literal, $t2:literal, $t4:literal), dots: $dots:literal;)+) => {
        mod $module {
            use super::*;

            $(#[target_feature(enable = $features)])?
            unsafe fn nn_k<S: Lanes<A>, A: Copy, const MR: usize, const NV: usize>(t: &NnTile<A>) {
                // SAFETY: forwarded from the caller (a supported ISA, valid operands).
                unsafe { nn::<S, A, MR, NV>(t) }
            }

            $(#[target_feature(enable = $features)])?
            unsafe fn nn_rows_k<S: Lanes<A>, A: Copy, const MR: usize, const NV: usize>(t: &NnRowsTile<A>) {
                // SAFETY: forwarded from the caller.
                unsafe { nn_rows::<S, A, MR, NV>(t) }
            }

            $(#[target_feature(enable = $features)])?
            unsafe fn nt_k<S: Lanes<A>, A: Copy + std::ops::Add<Output = A>, const MR: usize, const NR: usize>(
                t: &NtTile<A>,
            ) {
                // SAFETY: forwarded from the caller.
                unsafe { nt::<S, A, MR, NR>(t) }
            }

            $(#[target_feature(enable = $features)])?
            unsafe fn nt_rows_k<S: Lanes<A>, A: Copy + std::ops::Add<Output = A>, const MR: usize, const NR: usize>(
                t: &NtRowsTile<A>,
            ) {
                // SAFETY: forwarded from the caller.
                unsafe { nt_rows::<S, A, MR, NR>(t) }
            }

            $(#[target_feature(enable = $features)])?
            unsafe fn sum_k<S: Lanes<A>, A: Copy + std::ops::Add<Output = A>>(n: usize, a: *const A) -> A {
                // SAFETY: forwarded from the caller.
                unsafe { sum::<S, A>(n, a) }
            }

            $(#[target_feature(enable = $features)])?
            unsafe fn taps_k<S: Lanes<A>, A: Copy, const O: usize, const V: usize>(r: &TapsBlock<A>) {
                // SAFETY: forwarded from the caller.
                unsafe { taps_block::<S, A, O, V>(r) }
            }

            $(#[target_feature(enable = $features)])?
            unsafe fn dots_k<S: Lanes<A>, A: Copy + std::ops::Add<Output = A>, const T: usize>(r: &DotsRow<A>) {
                // SAFETY: forwarded from the caller.
                unsafe { dots_row::<S, A, T>(r) }
            }

            $(
                pub(super) static $table: Kernels<$a> = Kernels {
                    lanes: <$s as Lanes<$a>>::LANES,
                    nn_rows: $mr,
                    nn_cols: $nv * <$s as Lanes<$a>>::LANES,
                    nt_rows: $tr,
                    nt_cols: $tc,
                    nn: nn_k::<$s, $a, $mr, $nv>,
                    nn_indirect: nn_rows_k::<$s, $a, $mr, $nv>,
                    nt: nt_k::<$s, $a, $tr, $tc>,
                    nt_indirect: nt_rows_k::<$s, $a, $tr, $tc>,
                    sum: sum_k::<$s, $a>,
                    taps: [taps_k::<$s, $a, 1, $t1>, taps_k::<$s, $a, 2, $t2>, taps_k::<$s, $a, 4, $t4>],
                    dots_row: dots_k::<$s, $a, $dots>,
                    pairs: None,
                };
            )+
        }
    };
}

// Register budgets: AVX-512 has 32 registers (nn: 12×2 accumulators + 2 loads +
// a broadcast; nt: 4×6 + 4 + 1), AVX2 has 16 (nn: 6×2 + 2 + 1; nt: 3×4 + 3 + 1).
// The `tile_shapes` modules below repeat both in plain Rust for the tests.
#[cfg(target_arch = "x86_64")]
isa_kernels!(avx512, ["avx512f,avx2,fma"],
    F32: f32, Avx512, nn: (12, 2), nt: (4, 6), taps: (8, 4, 2), dots: 9;
    F64: f64, Avx512, nn: (12, 2), nt: (4, 6), taps: (8, 4, 2), dots: 9;
);
#[cfg(target_arch = "x86_64")]
isa_kernels!(avx2, ["avx2,fma"],
    F32: f32, Avx2, nn: (6, 2), nt: (3, 4), taps: (8, 4, 2), dots: 9;
    F64: f64, Avx2, nn: (6, 2), nt: (3, 4), taps: (8, 4, 2), dots: 9;
);
isa_kernels!(portable, [],
    F32: f32, Portable<4>, nn: (4, 2), nt: (2, 2), taps: (2, 2, 1), dots: 4;
    F64: f64, Portable<4>, nn: (4, 2), nt: (2, 2), taps: (2, 2, 1), dots: 4;
);

// The x86 tables' shapes and register widths, computed in plain Rust: the
// tests run every algorithm on them, so the tilings AVX-512 and AVX2 use are
// checked on any CPU, whichever this one has.
#[cfg(test)]
isa_kernels!(avx512_shapes, [],
    F32: f32, Portable<16>, nn: (12, 2), nt: (4, 6), taps: (8, 4, 2), dots: 9;
    F64: f64, Portable<8>, nn: (12, 2), nt: (4, 6), taps: (8, 4, 2), dots: 9;
);
#[cfg(test)]
isa_kernels!(avx2_shapes, [],
    F32: f32, Portable<8>, nn: (6, 2), nt: (3, 4), taps: (8, 4, 2), dots: 9;
    F64: f64, Portable<4>, nn: (6, 2), nt: (3, 4), taps: (8, 4, 2), dots: 9;
);

/// The `f32` or `f64` table among two, as `Kernels<A>`.
fn pick<A: Copy + 'static>(f32_table: Kernels<f32>, f64_table: Kernels<f64>) -> Option<Kernels<A>> {
    let f32_any: &dyn Any = &f32_table;
    let f64_any: &dyn Any = &f64_table;
    f32_any.downcast_ref::<Kernels<A>>().or_else(|| f64_any.downcast_ref::<Kernels<A>>()).copied()
}

/// The kernel table for accumulator `A` on `isa`; `None` when the CPU does not
/// support `isa` or there are no kernels for `A` (only `f32` and `f64` have them).
pub(crate) fn kernels<A: Copy + 'static>(isa: CpuIsa) -> Option<Kernels<A>> {
    if !isa.is_supported() {
        return None;
    }
    let table = match isa {
        CpuIsa::Portable => pick(portable::F32, portable::F64),
        #[cfg(target_arch = "x86_64")]
        CpuIsa::Avx2 => pick(avx2::F32, avx2::F64),
        #[cfg(target_arch = "x86_64")]
        CpuIsa::Avx512 => pick(avx512::F32, avx512::F64),
        #[cfg(not(target_arch = "x86_64"))]
        _ => None,
    };
    table.map(|table| Kernels { pairs: PairKernels::for_isa(isa), ..table })
}

/// Tests only: the table with `isa`'s tile shapes and register widths, in
/// plain Rust (any CPU runs it), with the pair kernel of the same shape.
#[cfg(test)]
pub(crate) fn kernels_shaped_as<A: Copy + 'static>(isa: CpuIsa) -> Option<Kernels<A>> {
    let table = match isa {
        CpuIsa::Portable => pick(portable::F32, portable::F64),
        CpuIsa::Avx2 => pick(avx2_shapes::F32, avx2_shapes::F64),
        CpuIsa::Avx512 => pick(avx512_shapes::F32, avx512_shapes::F64),
    };
    table.map(|table| Kernels { pairs: PairKernels::shaped_as(isa), ..table })
}

impl<A: Copy + 'static> Kernels<A> {
    /// Runs one `nn` micro-tile on slices, checking every operand holds the tile.
    #[allow(clippy::too_many_arguments)] // the BLAS operand list: each slice with its leading dimension
    pub fn nn(&self, k: usize, a: AOperand<'_, A>, b: &[A], ldb: usize, c: &mut [A], ldc: usize, accumulate: bool) {
        let (mr, nr) = (self.nn_rows, self.nn_cols);
        let a = a.strip(k, mr, "nn");
        assert!(k == 0 || (ldb >= nr && b.len() >= (k - 1) * ldb + nr), "nn: b too short");
        assert!(ldc >= nr && c.len() >= (mr - 1) * ldc + nr, "nn: c too short");
        let tile = NnTile { k, a, b: b.as_ptr(), ldb, c: c.as_mut_ptr(), ldc, accumulate };
        // SAFETY: the table exists only for a supported ISA, and the asserts bound every access.
        unsafe { (self.nn)(&tile) }
    }

    /// Runs one `nt` micro-tile on slices (`k` a multiple of the lane count).
    #[allow(clippy::too_many_arguments)] // as `nn`
    pub fn nt(&self, k: usize, a: &[A], lda: usize, b: &[A], ldb: usize, c: &mut [A], ldc: usize) {
        let (mr, nr) = (self.nt_rows, self.nt_cols);
        assert!(k.is_multiple_of(self.lanes), "nt: k = {k} is not a multiple of {}", self.lanes);
        assert!(k == 0 || (lda >= k && a.len() >= (mr - 1) * lda + k), "nt: a too short");
        assert!(k == 0 || (ldb >= k && b.len() >= (nr - 1) * ldb + k), "nt: b too short");
        assert!(ldc >= nr && c.len() >= (mr - 1) * ldc + nr, "nt: c too short");
        let tile = NtTile { k, a: a.as_ptr(), lda, b: b.as_ptr(), ldb, c: c.as_mut_ptr(), ldc };
        // SAFETY: as in `nn`.
        unsafe { (self.nt)(&tile) }
    }

    /// Runs one `nt` micro-tile whose `b` row `j` is `rows.row(first + j)[..k]`.
    #[allow(clippy::too_many_arguments)] // as `nn`
    pub fn nt_indirect(
        &self,
        k: usize,
        a: &[A],
        lda: usize,
        rows: &RowSet<'_, A>,
        first: usize,
        c: &mut [A],
        ldc: usize,
    ) {
        let (mr, nr) = (self.nt_rows, self.nt_cols);
        assert!(k.is_multiple_of(self.lanes), "nt_indirect: k = {k} is not a multiple of {}", self.lanes);
        assert!(k == 0 || (lda >= k && a.len() >= (mr - 1) * lda + k), "nt_indirect: a too short");
        assert!(first + nr <= rows.pointers.len() && k <= rows.len, "nt_indirect: rows too few or short");
        assert!(ldc >= nr && c.len() >= (mr - 1) * ldc + nr, "nt_indirect: c too short");
        let tile = NtRowsTile {
            k,
            a: a.as_ptr(),
            lda,
            // SAFETY: `first + nr <= pointers.len()`, checked above.
            rows: unsafe { rows.pointers.as_ptr().add(first) },
            offset: 0,
            c: c.as_mut_ptr(),
            ldc,
        };
        // SAFETY: as in `nn`; every row holds `k` elements (checked by `RowSet`).
        unsafe { (self.nt_indirect)(&tile) }
    }

    /// `out[o·ldo + i] = Σ_t weights[o·taps + t] · src.row(t)[offset + i]` for
    /// every output `o` (`weights.len() / taps` of them) and `i < len` (a
    /// multiple of the lane count); outputs go four, then two, then one at a time.
    pub fn taps(&self, src: &RowSet<'_, A>, offset: usize, weights: &[A], out: &mut [A], ldo: usize, len: usize) {
        let taps = src.pointers.len();
        assert!(taps > 0, "taps: no source rows");
        assert!(len.is_multiple_of(self.lanes), "taps: {len} is not a multiple of {}", self.lanes);
        assert!(offset + len <= src.len, "taps: rows hold {} < {offset} + {len}", src.len);
        let outputs = weights.len() / taps;
        assert!(weights.len() == outputs * taps, "taps: {} weights for {taps} taps", weights.len());
        assert!(outputs == 0 || (ldo >= len && out.len() >= (outputs - 1) * ldo + len), "taps: out too short");
        let mut o = 0;
        while o < outputs {
            let log2 = match outputs - o {
                1 => 0,
                2 | 3 => 1,
                _ => 2,
            };
            let block = TapsBlock {
                len,
                src: src.pointers.as_ptr(),
                offset,
                taps,
                // SAFETY: `o < outputs`, so both offsets are inside their slices (checked above).
                weights: unsafe { weights.as_ptr().add(o * taps) },
                out: unsafe { out.as_mut_ptr().add(o * ldo) },
                ldo,
            };
            // SAFETY: as in `nn`; `1 << log2` outputs remain, each valid per the asserts.
            unsafe { (self.taps[log2])(&block) }
            o += 1 << log2;
        }
    }

    /// `out[t] += Σ_{r < rows} Σ_{i < len} a[r·lda + i] · b[t][r·ldb + i]`.
    #[allow(clippy::too_many_arguments)] // as `nn`
    pub fn dots(&self, len: usize, rows: usize, a: &[A], lda: usize, b: &[&[A]], ldb: usize, out: &mut [A]) {
        assert_eq!(b.len(), out.len(), "dots: one output per row");
        if rows == 0 || len == 0 {
            return;
        }
        assert!(a.len() >= (rows - 1) * lda + len, "dots: a too short");
        assert!(b.iter().all(|s| s.len() >= (rows - 1) * ldb + len), "dots: a row of b is too short");
        let mut pointers = [std::ptr::null::<A>(); 32];
        assert!(b.len() <= pointers.len(), "dots_row: at most {} rows a call", pointers.len());
        for (p, s) in pointers.iter_mut().zip(b) {
            *p = s.as_ptr();
        }
        let row = DotsRow {
            len,
            rows,
            a: a.as_ptr(),
            lda,
            b: pointers.as_ptr(),
            ldb,
            count: out.len(),
            out: out.as_mut_ptr(),
        };
        // SAFETY: as in `nn`; every pointer is valid for `len` elements.
        unsafe { (self.dots_row)(&row) }
    }

    /// `Σ a[i]` in a fixed order.
    pub fn sum(&self, a: &[A]) -> A {
        // SAFETY: as in `nn`; `a` holds `a.len()` elements.
        unsafe { (self.sum)(a.len(), a.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f64> {
        (0..n).map(|i| (((i as u64 * 2654435761 + seed * 40503) % 1000) as f64 - 500.0) / 250.0).collect()
    }

    fn check_isa<A>(isa: CpuIsa, ks: Kernels<A>)
    where
        A: Copy + 'static + crate::element::Accumulator,
    {
        let (mr, nr) = (ks.nn_rows, ks.nn_cols);
        let tol = if std::mem::size_of::<A>() == 4 { 1e-4 } else { 1e-12 };
        let close = |got: A, want: f64, what: &str| {
            assert!((got.to_f64() - want).abs() <= tol * (1.0 + want.abs()), "{isa:?} {what}: {got:?} vs {want}")
        };
        // nn: c = a·b, then accumulated once more.
        let k = 7;
        let a: Vec<A> = values(k * mr, 1).into_iter().map(A::from_f64).collect();
        let ldb = nr + 3;
        let b: Vec<A> = values(k * ldb, 2).into_iter().map(A::from_f64).collect();
        let ldc = nr + 1;
        let mut c = vec![A::ZERO; mr * ldc];
        ks.nn(k, AOperand::Packed(&a), &b, ldb, &mut c, ldc, false);
        ks.nn(k, AOperand::Packed(&a), &b, ldb, &mut c, ldc, true);
        for i in 0..mr {
            for j in 0..nr {
                let want: f64 = (0..k).map(|kk| a[kk * mr + i].to_f64() * b[kk * ldb + j].to_f64()).sum();
                close(c[i * ldc + j], 2.0 * want, "nn");
            }
        }
        // The same `a` read in place from rows (after 2 other values each): the same sums, bit for bit.
        let a_rows: Vec<Vec<A>> =
            (0..mr).map(|i| [A::ONE, A::ONE].into_iter().chain((0..k).map(|kk| a[kk * mr + i])).collect()).collect();
        let mut rows = RowSet::new();
        a_rows.iter().for_each(|row| rows.push(row));
        let mut in_place = vec![A::ZERO; mr * ldc];
        ks.nn(k, AOperand::Rows(&rows, 2), &b, ldb, &mut in_place, ldc, false);
        ks.nn(k, AOperand::Rows(&rows, 2), &b, ldb, &mut in_place, ldc, true);
        assert!(c.iter().zip(&in_place).all(|(x, y)| x.to_f64().to_bits() == y.to_f64().to_bits()), "{isa:?} nn rows");
        // nt
        let (mr, nr, k) = (ks.nt_rows, ks.nt_cols, 7 * ks.lanes);
        let lda = k + 2;
        let a: Vec<A> = values(mr * lda, 3).into_iter().map(A::from_f64).collect();
        let b: Vec<A> = values(nr * lda, 4).into_iter().map(A::from_f64).collect();
        let mut c = vec![A::ONE; mr * nr];
        ks.nt(k, &a, lda, &b, lda, &mut c, nr);
        for i in 0..mr {
            for j in 0..nr {
                let want: f64 = (0..k).map(|r| a[i * lda + r].to_f64() * b[j * lda + r].to_f64()).sum();
                close(c[i * nr + j], 1.0 + want, "nt");
            }
        }
        // rows, with lengths around the vector and unrolled widths
        for n in [0, 1, ks.lanes - 1, ks.lanes, 4 * ks.lanes + 3, 37] {
            let x: Vec<A> = values(n, 5).into_iter().map(A::from_f64).collect();
            close(ks.sum(&x), x.iter().map(|a| a.to_f64()).sum(), "sum");
        }
    }

    fn check_rows<A: Copy + 'static + crate::element::Accumulator>(isa: CpuIsa, ks: Kernels<A>) {
        let data: Vec<A> = values(400, 7).into_iter().map(A::from_f64).collect();
        for taps in [1, 3, 9, 12] {
            let weights: Vec<A> = values(7 * taps, 8).into_iter().map(A::from_f64).collect();
            let mut src = RowSet::new();
            for t in 0..taps {
                src.push(&data[t * 5..]);
            }
            for len in [ks.lanes, 5 * ks.lanes, 9 * ks.lanes] {
                // Every block width and remainder: 1..=7 outputs, rows `ldo` apart, read from `offset`.
                for outputs in 1..=7 {
                    let (offset, ldo) = (3, len + 2);
                    let mut out = vec![A::ONE; outputs * ldo];
                    ks.taps(&src, offset, &weights[..outputs * taps], &mut out, ldo, len);
                    for o in 0..outputs {
                        for i in 0..len {
                            let want = (0..taps)
                                .map(|t| weights[o * taps + t].to_f64() * data[t * 5 + offset + i].to_f64())
                                .sum::<f64>();
                            let got = out[o * ldo + i].to_f64();
                            assert!((got - want).abs() < 1e-4 * (1.0 + want.abs()), "taps {isa:?} {outputs} {o} {i}");
                        }
                        assert!(out[o * ldo + len..][..2].iter().all(|v| v.to_f64() == 1.0), "taps wrote between rows");
                    }
                }
                let src: Vec<&[A]> = (0..taps).map(|t| &data[t * 5..]).collect();
                let (n, rows, lda, ldb) = (len / 3 + 1, 3, len / 3 + 2, len / 3 + 4);
                let mut dots = vec![A::ONE; taps];
                ks.dots(n, rows, &data, lda, &src, ldb, &mut dots);
                for (t, &d) in dots.iter().enumerate() {
                    let want = 1.0
                        + (0..rows)
                            .flat_map(|r| (0..n).map(move |i| (r, i)))
                            .map(|(r, i)| data[r * lda + i].to_f64() * src[t][r * ldb + i].to_f64())
                            .sum::<f64>();
                    assert!((d.to_f64() - want).abs() < 1e-4 * (1.0 + want.abs()), "dots {isa:?}");
                }
            }
        }
    }

    #[test]
    fn every_supported_isa_computes_the_row_kernels() {
        for isa in CpuIsa::supported() {
            check_rows::<f32>(isa, kernels(isa).unwrap());
            check_rows::<f64>(isa, kernels(isa).unwrap());
        }
    }

    #[test]
    fn every_isa_shape_computes_the_kernels_in_plain_rust() {
        for isa in CpuIsa::ALL {
            check_rows::<f32>(isa, kernels_shaped_as(isa).unwrap());
            check_rows::<f64>(isa, kernels_shaped_as(isa).unwrap());
            check_isa::<f32>(isa, kernels_shaped_as(isa).unwrap());
            check_isa::<f64>(isa, kernels_shaped_as(isa).unwrap());
        }
        let (avx512, avx2) =
            (kernels_shaped_as::<f32>(CpuIsa::Avx512).unwrap(), kernels_shaped_as::<f32>(CpuIsa::Avx2).unwrap());
        assert_eq!((avx512.lanes, avx512.nn_rows, avx512.nn_cols, avx512.nt_rows, avx512.nt_cols), (16, 12, 32, 4, 6));
        assert_eq!((avx2.lanes, avx2.nn_rows, avx2.nn_cols, avx2.nt_rows, avx2.nt_cols), (8, 6, 16, 3, 4));
        assert!(avx512.pairs.is_some_and(|p| p.rows == 12 && p.cols == 32) && avx2.pairs.is_none());
    }

    #[test]
    fn every_supported_isa_computes_the_kernels_exactly_enough() {
        for isa in CpuIsa::supported() {
            check_isa::<f32>(isa, kernels(isa).unwrap());
            check_isa::<f64>(isa, kernels(isa).unwrap());
        }
    }

    #[test]
    fn unsupported_accumulators_have_no_kernels() {
        assert!(kernels::<u8>(CpuIsa::Portable).is_none());
    }
}
