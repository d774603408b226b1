//! Row kernels of the direct path (`taps`, `dots`) and the channel sums of the bias gradient (`sum`).

use crate::cpu::isa::Lanes;

/// `Σ a[i]`: four vector chains, combined in a fixed order, then the tail.
#[inline(always)]
pub(super) unsafe fn sum<S: Lanes<A>, A: Copy + std::ops::Add<Output = A>>(n: usize, a: *const A) -> A {
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
pub(super) unsafe fn taps_block<S: Lanes<A>, A: Copy, const O: usize, const V: usize>(r: &TapsBlock<A>) {
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
pub(super) unsafe fn dots_row<S: Lanes<A>, A: Copy + std::ops::Add<Output = A>, const T: usize>(r: &DotsRow<A>) {
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
