//! Winograd's input transform `Bᵀ d B` of a row of tiles, in registers.

use crate::cpu::isa::Lanes;

/// The operands of one `input_row` call: `len` neighbouring tiles of a row of
/// 1-D (`ROWS` = 1) or 2-D (`ROWS` = 4) F(2, 3) tiles at dilation 1 along the
/// last axis. Tile `j`'s point `(u1, u2)` is the value at column
/// `column + 2j + u2` of input row `u1` (at `first + u1·row_gap + 2j + u2`),
/// zero where that column lies outside `0..width` or where bit `u1` of `rows`
/// is clear (a row in the padding); its transformed point `ξ = 4·u1 + u2`
/// goes to `out[ξ·point_gap + j]`.
pub(crate) struct InputRow<A> {
    /// Where point (0, 0) of the first tile would be; it may lie outside the source.
    pub first: *const A,
    pub row_gap: usize,
    pub rows: u32,
    pub column: isize,
    pub width: usize,
    pub len: usize,
    pub out: *mut A,
    pub point_gap: usize,
}

/// `d0 − d2, d1 + d2, d2 − d1, d1 − d3`: `Bᵀ` along one axis.
#[inline(always)]
unsafe fn transform<S: Lanes<A>, A: Copy>([d0, d1, d2, d3]: [S::V; 4]) -> [S::V; 4] {
    // SAFETY: register arithmetic of the caller's instruction set.
    unsafe { [S::sub(d0, d2), S::add(d1, d2), S::sub(d2, d1), S::sub(d1, d3)] }
}

/// The lanes `lo..hi` of the register from column `column` that hold points
/// of the call's tiles inside the row: columns `0..width`, and the
/// `needed` values from `column`.
#[inline(always)]
fn lanes_inside(column: isize, width: usize, needed: usize, lanes: usize) -> (usize, usize) {
    let lo = (-column).clamp(0, lanes as isize) as usize;
    let hi = (width as isize - column).clamp(lo as isize, lanes as isize) as usize;
    (lo, hi.min(needed).max(lo))
}

/// [`InputRow`] a register of tiles at a time: each input row's four points
/// per tile are two pairs of loads (only of lanes inside the row) taken apart
/// into even and odd lanes, then `Bᵀ` runs along the rows and along the last
/// axis (the order of the axis-by-axis passes, so results are theirs to the
/// bit) and each point is stored once.
#[allow(clippy::needless_range_loop)] // plain index loops, as `Lanes::reduce_tile` says why
#[inline(always)]
pub(super) unsafe fn input_row<S: Lanes<A>, A: Copy, const ROWS: usize>(r: &InputRow<A>) {
    let l = S::LANES;
    // SAFETY (whole body): `Kernels::winograd_input_row` checked that every
    // row in `rows` lies inside the source from column 0 to `width`, which is
    // all that is loaded of it, and that the output holds every point's row.
    unsafe {
        for j in (0..r.len).step_by(l) {
            let n = l.min(r.len - j);
            let mut p = [[S::zero(); 4]; ROWS];
            for (u1, p) in p.iter_mut().enumerate() {
                if r.rows & (1 << u1) == 0 {
                    continue;
                }
                let row = r.first.wrapping_add(u1 * r.row_gap + 2 * j);
                let mut load = [S::zero(); 4];
                for (v, from) in load.iter_mut().zip([0, l, 2, l + 2]) {
                    let column = r.column + (2 * j + from) as isize;
                    let (lo, hi) = lanes_inside(column, r.width, (2 * n + 2).saturating_sub(from), l);
                    *v = S::load_lanes(row.wrapping_add(from), lo, hi);
                }
                let (even, odd) = S::deinterleave(load[0], load[1]);
                let (next_even, next_odd) = S::deinterleave(load[2], load[3]);
                *p = [even, odd, next_even, next_odd];
            }
            if ROWS == 4 {
                for u2 in 0..4 {
                    let column = transform::<S, A>([p[0][u2], p[1][u2], p[2][u2], p[3][u2]]);
                    for (u1, v) in column.into_iter().enumerate() {
                        p[u1][u2] = v;
                    }
                }
            }
            for (u1, &p) in p.iter().enumerate() {
                for (u2, v) in transform::<S, A>(p).into_iter().enumerate() {
                    let at = r.out.add((4 * u1 + u2) * r.point_gap + j);
                    if n == l {
                        S::store(at, v);
                    } else {
                        S::store_first(at, v, n);
                    }
                }
            }
        }
    }
}
