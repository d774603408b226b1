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

/// Where the taps of a [`RowTaps`] call read, relative to a source's origin:
/// every (slab, tap row, column) combination is one tap. Tap row `r` of slab
/// `s` at column `j` reads `slabs[s] + r·pitch + columns[j]` for output row 0,
/// and one `pitch` further for each row after it, so output row `m + k` reads
/// as its tap row `r` the source row output row `m` reads as tap row `r + k`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TapGrid {
    pub slabs: Vec<usize>,
    pub tap_rows: usize,
    pub columns: Vec<usize>,
    pub pitch: usize,
}

impl TapGrid {
    /// How many taps the grid has: one per (slab, tap row, column).
    pub fn taps(&self) -> usize {
        self.slabs.len() * self.tap_rows * self.columns.len()
    }

    /// Whether the grid is one slab of `k` rows by `k` columns.
    pub fn is_square(&self, k: usize) -> bool {
        self.slabs.len() == 1 && self.tap_rows == k && self.columns.len() == k
    }

    /// How far past its origin a source is read for `rows` output rows of
    /// `width` (a whole number of vectors).
    pub fn reach(&self, rows: usize, width: usize) -> usize {
        let (Some(&slab), Some(&column)) = (self.slabs.iter().max(), self.columns.iter().max()) else { return 0 };
        if rows == 0 || self.tap_rows == 0 || width == 0 {
            return 0;
        }
        slab + (rows - 1 + self.tap_rows - 1) * self.pitch + column + width
    }
}

/// The operands of one `row_taps` call: `rows` output rows of `width` values,
/// `ldo` apart (computed in whole vectors, stored up to `width`), each
/// `out[m·ldo + i] = Σ_c Σ_s Σ_r Σ_j weights[c][s][r][j] · sources[c][grid(s, r, j) + m·pitch + i]`,
/// summed in that order (see [`TapGrid`]).
pub(crate) struct RowTaps<A> {
    /// One origin per source channel, each valid for the grid's reach.
    pub sources: *const *const A,
    pub channels: usize,
    pub slabs: *const usize,
    pub slab_count: usize,
    pub tap_rows: usize,
    pub columns: *const usize,
    pub column_count: usize,
    pub pitch: usize,
    /// `channels × slabs × tap_rows × columns` weights.
    pub weights: *const A,
    pub rows: usize,
    pub width: usize,
    pub out: *mut A,
    pub ldo: usize,
}

/// [`RowTaps`] in blocks of `R` output rows by `V` registers: each source
/// vector a block needs is loaded once for all the block's rows that read it
/// (a 3-row kernel over 4 rows loads 6 source rows, not 12), and `R·V` chains
/// run side by side.
#[inline(always)]
pub(super) unsafe fn row_taps<S: Lanes<A>, A: Copy, const R: usize, const V: usize>(r: &RowTaps<A>) {
    // SAFETY: `Kernels::row_taps` checked the lengths; the caller the pointers.
    unsafe { row_blocks::<S, A, _, R, V, 0>(r) }
}

/// Operands computed in blocks of output rows by registers: [`row_blocks`]
/// walks the bordered ([`RowTaps`]) and the in-place ([`RowTapsInPlace`])
/// kernels alike.
trait RowBlocks<A: Copy> {
    fn rows(&self) -> usize;
    fn width(&self) -> usize;
    /// The `R × W` registers of output rows `m..m + R` at column `i`.
    unsafe fn chunk<S: Lanes<A>, const R: usize, const W: usize>(&self, m: usize, i: usize);
    /// The `R` registers of output rows `m..m + R` at column `i`, for a
    /// `K × K` grid whose weights stay in registers.
    unsafe fn square_chunk<S: Lanes<A>, const R: usize, const K: usize>(&self, m: usize, i: usize);
}

/// Every output of `b`: rows `R` at a time, then two and one; in each block
/// of rows, `V` registers at a time, then the vectors left two and one at a
/// time (56 columns are 3.5 vectors of 16: one `V = 2` chunk and one of two,
/// not four chunks of one chain per row) — or, for a `SQUARE × SQUARE` grid
/// (`SQUARE > 0`), one register at a time.
#[inline(always)]
unsafe fn row_blocks<S: Lanes<A>, A: Copy, B: RowBlocks<A>, const R: usize, const V: usize, const SQUARE: usize>(
    b: &B,
) {
    let mut m = 0;
    // SAFETY: the caller's operands hold every row and column of `b`.
    unsafe {
        while m < b.rows() {
            let left = b.rows() - m;
            if left >= R {
                row_block::<S, A, B, R, V, SQUARE>(b, m);
                m += R;
            } else if left >= 2 {
                row_block::<S, A, B, 2, V, SQUARE>(b, m);
                m += 2;
            } else {
                row_block::<S, A, B, 1, V, SQUARE>(b, m);
                m += 1;
            }
        }
    }
}

/// Output rows `m..m + R` of [`row_blocks`].
#[inline(always)]
unsafe fn row_block<S: Lanes<A>, A: Copy, B: RowBlocks<A>, const R: usize, const V: usize, const SQUARE: usize>(
    b: &B,
    m: usize,
) {
    let l = S::LANES;
    let vectors = b.width().div_ceil(l);
    // SAFETY: as in `row_blocks`.
    unsafe {
        if SQUARE > 0 {
            for v in 0..vectors {
                b.square_chunk::<S, R, SQUARE>(m, v * l);
            }
            return;
        }
        let mut v = 0;
        while v < vectors {
            let left = vectors - v;
            if left >= V {
                b.chunk::<S, R, V>(m, v * l);
                v += V;
            } else if left >= 2 {
                b.chunk::<S, R, 2>(m, v * l);
                v += 2;
            } else {
                b.chunk::<S, R, 1>(m, v * l);
                v += 1;
            }
        }
    }
}

impl<A: Copy> RowBlocks<A> for RowTaps<A> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn width(&self) -> usize {
        self.width
    }
    #[inline(always)]
    unsafe fn chunk<S: Lanes<A>, const R: usize, const W: usize>(&self, m: usize, i: usize) {
        // SAFETY: forwarded from `row_blocks`.
        unsafe { row_chunk::<S, A, R, W>(self, m, i) }
    }
    #[inline(always)]
    unsafe fn square_chunk<S: Lanes<A>, const R: usize, const K: usize>(&self, m: usize, i: usize) {
        // SAFETY: forwarded from `row_blocks`.
        unsafe { square_chunk::<S, A, R, K>(self, m, i) }
    }
}

/// The `R × W` registers of output rows `m..m + R` at column `i`. Index
/// loops only: a closure would not inherit the caller's target features.
#[inline(always)]
unsafe fn row_chunk<S: Lanes<A>, A: Copy, const R: usize, const W: usize>(r: &RowTaps<A>, m: usize, i: usize) {
    let (tap_rows, columns) = (r.tap_rows, r.column_count);
    // SAFETY: rows `m..m + R` and columns `i..i + W·LANES` are inside the
    // call's; every source holds the grid's reach, the weights all taps.
    unsafe {
        let mut acc = [[S::zero(); W]; R];
        let mut weights = r.weights;
        for c in 0..r.channels {
            let origin = (*r.sources.add(c)).add(m * r.pitch + i);
            for s in 0..r.slab_count {
                let slab = origin.add(*r.slabs.add(s));
                // Source row q of the block is tap row q - k of its row k.
                for q in 0..tap_rows + R - 1 {
                    let row = slab.add(q * r.pitch);
                    for j in 0..columns {
                        let x = load_row::<S, A, W>(row.add(*r.columns.add(j)));
                        for (k, acc) in acc.iter_mut().enumerate() {
                            if q >= k && q - k < tap_rows {
                                let w = S::splat(*weights.add((q - k) * columns + j));
                                for (acc, &x) in acc.iter_mut().zip(&x) {
                                    *acc = S::mul_add(w, x, *acc);
                                }
                            }
                        }
                    }
                }
                weights = weights.add(tap_rows * columns);
            }
        }
        store_rows::<S, A, R, W>((r.out, r.ldo, r.width), m, i, &acc);
    }
}

/// [`RowTaps`] for a `K × K` grid of one slab, in blocks of `R` rows by one
/// register: the `K²` weights of a source stay in registers, every loop but
/// the channels' unrolls, and each block loads `K + R - 1` rows of `K`
/// vectors. The same sums in the same order as [`row_taps`].
#[inline(always)]
pub(super) unsafe fn square_taps<S: Lanes<A>, A: Copy, const R: usize, const K: usize>(r: &RowTaps<A>) {
    // SAFETY: `Kernels::row_taps` checked the lengths and the grid's shape.
    unsafe { row_blocks::<S, A, _, R, 1, K>(r) }
}

/// The `R` registers of output rows `m..m + R` at column `i` of [`square_taps`].
#[inline(always)]
unsafe fn square_chunk<S: Lanes<A>, A: Copy, const R: usize, const K: usize>(r: &RowTaps<A>, m: usize, i: usize) {
    // SAFETY: as in `row_chunk`.
    unsafe {
        let mut acc = [[S::zero(); 1]; R];
        let mut columns = [0; K];
        for (j, column) in columns.iter_mut().enumerate() {
            *column = *r.columns.add(j);
        }
        for c in 0..r.channels {
            let slab = (*r.sources.add(c)).add(*r.slabs + m * r.pitch + i);
            let mut w = [[S::zero(); K]; K];
            for (t, w) in w.iter_mut().enumerate() {
                for (j, w) in w.iter_mut().enumerate() {
                    *w = S::splat(*r.weights.add((c * K + t) * K + j));
                }
            }
            for q in 0..K + R - 1 {
                let row = slab.add(q * r.pitch);
                for j in 0..K {
                    let x = S::load(row.add(columns[j]));
                    for (k, acc) in acc.iter_mut().enumerate() {
                        if q >= k && q - k < K {
                            acc[0] = S::mul_add(w[q - k][j], x, acc[0]);
                        }
                    }
                }
            }
        }
        store_rows::<S, A, R, 1>((r.out, r.ldo, r.width), m, i, &acc);
    }
}

/// `W` registers from `at`.
#[inline(always)]
unsafe fn load_row<S: Lanes<A>, A: Copy, const W: usize>(at: *const A) -> [S::V; W] {
    // SAFETY: the caller's source holds `W` vectors at `at`.
    unsafe {
        let mut x = [S::zero(); W];
        for (v, x) in x.iter_mut().enumerate() {
            *x = S::load(at.add(v * S::LANES));
        }
        x
    }
}

/// The block's registers to output rows `m..m + R` of `out` (rows `ldo`
/// apart, `width` long) from column `i`.
#[inline(always)]
unsafe fn store_rows<S: Lanes<A>, A: Copy, const R: usize, const W: usize>(
    (out, ldo, width): (*mut A, usize, usize),
    m: usize,
    i: usize,
    acc: &[[S::V; W]; R],
) {
    for (k, acc) in acc.iter().enumerate() {
        for (v, &acc) in acc.iter().enumerate() {
            let column = i + v * S::LANES;
            // SAFETY: the caller's rows are inside the output, each `width` long.
            unsafe {
                let at = out.add((m + k) * ldo + column);
                if column + S::LANES <= width {
                    S::store(at, acc);
                } else {
                    S::store_first(at, acc, width - column);
                }
            }
        }
    }
}

/// Column taps a [`RowTapsInPlace`] call takes at most (its spans live on the stack).
pub(crate) const IN_PLACE_COLUMNS: usize = 16;
/// Planes a [`RowTapsInPlace`] call takes at most (their pointers live on the stack).
pub(crate) const IN_PLACE_PLANES: usize = 16;

/// The operands of one `row_taps_in_place` call: [`RowTaps`] read from the
/// source planes themselves, with no bordered copy. Each term is one 2-D
/// plane (`height × plane_width`, row-major) with its own weights, and
/// `out[m·ldo + i] = Σ_p Σ_r Σ_j weights[p][r·columns + j] · plane[p](m + first_row + r, i + columns[j])`,
/// summed in that order, where a position outside the plane reads zero: a
/// source row outside it is skipped, and a vector that hangs over a row's
/// ends loads only its lanes inside ([`Lanes::load_lanes`]).
pub(crate) struct RowTapsInPlace<A> {
    /// At most [`IN_PLACE_PLANES`] planes.
    pub planes: *const *const A,
    /// `tap_rows × column_count` weights per plane.
    pub weights: *const *const A,
    pub plane_count: usize,
    pub height: usize,
    pub plane_width: usize,
    pub first_row: isize,
    pub tap_rows: usize,
    /// At most [`IN_PLACE_COLUMNS`] column offsets.
    pub columns: *const isize,
    pub column_count: usize,
    pub rows: usize,
    pub width: usize,
    pub out: *mut A,
    pub ldo: usize,
}

/// [`RowTapsInPlace`] in blocks of `R` rows by `V` registers, as [`row_taps`].
#[inline(always)]
pub(super) unsafe fn row_taps_in_place<S: Lanes<A>, A: Copy, const R: usize, const V: usize>(r: &RowTapsInPlace<A>) {
    // SAFETY: `Kernels::row_taps_in_place` checked the planes, weights and output.
    unsafe { row_blocks::<S, A, _, R, V, 0>(r) }
}

impl<A: Copy> RowBlocks<A> for RowTapsInPlace<A> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn width(&self) -> usize {
        self.width
    }
    #[inline(always)]
    unsafe fn chunk<S: Lanes<A>, const R: usize, const W: usize>(&self, m: usize, i: usize) {
        // SAFETY: forwarded from `row_blocks`.
        unsafe { in_place_chunk::<S, A, R, W>(self, m, i) }
    }
    #[inline(always)]
    unsafe fn square_chunk<S: Lanes<A>, const R: usize, const K: usize>(&self, m: usize, i: usize) {
        // SAFETY: forwarded from `row_blocks`.
        unsafe { square_in_place_chunk::<S, A, R, K>(self, m, i) }
    }
}

/// The lanes `lo..hi` of a vector of `lanes` from column `start` of a row
/// `width` long that fall inside it (`lo == hi` where none do).
#[inline(always)]
fn lanes_inside(start: isize, width: usize, lanes: usize) -> (usize, usize) {
    let lo = (-start).clamp(0, lanes as isize) as usize;
    (lo, (width as isize - start).clamp(lo as isize, lanes as isize) as usize)
}

/// The `R × W` registers of output rows `m..m + R` at column `i`, read in place.
#[inline(always)]
unsafe fn in_place_chunk<S: Lanes<A>, A: Copy, const R: usize, const W: usize>(
    r: &RowTapsInPlace<A>,
    m: usize,
    i: usize,
) {
    let (l, tap_rows, columns) = (S::LANES, r.tap_rows, r.column_count);
    // SAFETY: rows `m..m + R` and columns `i..i + W·LANES` are inside the
    // call's; every load reads only lanes inside a plane's row.
    unsafe {
        // Where each column tap's vectors start in a row, and their lanes inside it.
        let mut starts = [[0isize; W]; IN_PLACE_COLUMNS];
        let mut spans = [[(0usize, 0usize); W]; IN_PLACE_COLUMNS];
        for j in 0..columns {
            for v in 0..W {
                let start = (i + v * l) as isize + *r.columns.add(j);
                starts[j][v] = start;
                spans[j][v] = lanes_inside(start, r.plane_width, l);
            }
        }
        let mut acc = [[S::zero(); W]; R];
        for p in 0..r.plane_count {
            let (plane, weights) = (*r.planes.add(p), *r.weights.add(p));
            // Source row q of the block is tap row q - k of its row k.
            for q in 0..tap_rows + R - 1 {
                let row = (m + q) as isize + r.first_row;
                if row < 0 || row >= r.height as isize {
                    continue;
                }
                let row = plane.add(row as usize * r.plane_width);
                for j in 0..columns {
                    let mut x = [S::zero(); W];
                    for v in 0..W {
                        let (lo, hi) = spans[j][v];
                        x[v] = S::load_lanes(row.wrapping_offset(starts[j][v]), lo, hi);
                    }
                    for (k, acc) in acc.iter_mut().enumerate() {
                        if q >= k && q - k < tap_rows {
                            let w = S::splat(*weights.add((q - k) * columns + j));
                            for (acc, &x) in acc.iter_mut().zip(&x) {
                                *acc = S::mul_add(w, x, *acc);
                            }
                        }
                    }
                }
            }
        }
        store_rows::<S, A, R, W>((r.out, r.ldo, r.width), m, i, &acc);
    }
}

/// [`RowTapsInPlace`] for a `K × K` grid, as [`square_taps`] is for
/// [`RowTaps`]: blocks of `R` rows by one register, the `K²` weights of a
/// plane in registers, the lanes each column tap loads fixed per register.
#[inline(always)]
pub(super) unsafe fn square_in_place<S: Lanes<A>, A: Copy, const R: usize, const K: usize>(r: &RowTapsInPlace<A>) {
    // SAFETY: `Kernels::row_taps_in_place` checked the planes, weights, output and grid.
    unsafe {
        // One plane's weights stay in registers for the whole call where they,
        // the accumulators and a row's loads leave a register to spare: in
        // AVX2's 16 they did not, and the compiler's spills made MobileNet's
        // depthwise layer 1.5× slower.
        if r.plane_count == 1 && K * K + R + K < S::REGISTERS {
            square_plane::<S, A, R, K>(r)
        } else {
            row_blocks::<S, A, _, R, 1, K>(r)
        }
    }
}

/// [`square_in_place`] on one plane (a depthwise layer's): its `K²` weights
/// are splatted once per call, where [`square_in_place_chunk`] splats each
/// plane's once per register (the compiler cannot hoist them: `out` may alias
/// them), and a block of rows whose source rows all lie inside the plane
/// tests none of them. MobileNet's depthwise layer took 0.76–0.85× the time
/// (2 Zen 4 threads, AVX-512).
#[inline(always)]
unsafe fn square_plane<S: Lanes<A>, A: Copy, const R: usize, const K: usize>(r: &RowTapsInPlace<A>) {
    // SAFETY: as in `square_in_place`.
    unsafe {
        let w = splat_grid::<S, A, K>(*r.weights);
        let mut m = 0;
        while m < r.rows {
            let top = m as isize + r.first_row;
            let inside = top >= 0 && top + (R + K - 1) as isize <= r.height as isize;
            if r.rows - m < R {
                square_plane_rows::<S, A, 1, K, false>(r, &w, m);
                m += 1;
            } else if inside {
                square_plane_rows::<S, A, R, K, true>(r, &w, m);
                m += R;
            } else {
                square_plane_rows::<S, A, R, K, false>(r, &w, m);
                m += R;
            }
        }
    }
}

/// Output rows `m..m + R` of [`square_plane`], one register column at a time;
/// `INSIDE`: every source row of the block lies inside the plane.
#[inline(always)]
unsafe fn square_plane_rows<S: Lanes<A>, A: Copy, const R: usize, const K: usize, const INSIDE: bool>(
    r: &RowTapsInPlace<A>,
    w: &[[S::V; K]; K],
    m: usize,
) {
    // SAFETY: as in `square_in_place`.
    unsafe {
        for i in (0..r.width).step_by(S::LANES) {
            let mut acc = [[S::zero(); 1]; R];
            square_plane_taps::<S, A, R, K, INSIDE>(r, *r.planes, w, (m, i), &mut acc);
            store_rows::<S, A, R, 1>((r.out, r.ldo, r.width), m, i, &acc);
        }
    }
}

/// The `R` registers of output rows `m..m + R` at column `i`, read in place.
#[inline(always)]
unsafe fn square_in_place_chunk<S: Lanes<A>, A: Copy, const R: usize, const K: usize>(
    r: &RowTapsInPlace<A>,
    m: usize,
    i: usize,
) {
    // SAFETY: as in `in_place_chunk`.
    unsafe {
        let mut acc = [[S::zero(); 1]; R];
        for p in 0..r.plane_count {
            let w = splat_grid::<S, A, K>(*r.weights.add(p));
            square_plane_taps::<S, A, R, K, false>(r, *r.planes.add(p), &w, (m, i), &mut acc);
        }
        store_rows::<S, A, R, 1>((r.out, r.ldo, r.width), m, i, &acc);
    }
}

/// The `K × K` weights at `weights`, one register each.
#[inline(always)]
unsafe fn splat_grid<S: Lanes<A>, A: Copy, const K: usize>(weights: *const A) -> [[S::V; K]; K] {
    // SAFETY: the caller's `weights` hold `K²` values.
    std::array::from_fn(|t| std::array::from_fn(|j| unsafe { S::splat(*weights.add(t * K + j)) }))
}

/// Adds to `acc` the taps of `plane` (weights `w`) for output rows
/// `m..m + R` at column `i`. A source row outside the plane is skipped (a
/// masked load of no lanes instead ran AVX2's depthwise layer 2× slower);
/// with `INSIDE` none is, and none is tested: the unrolled loop has no branch.
#[inline(always)]
unsafe fn square_plane_taps<S: Lanes<A>, A: Copy, const R: usize, const K: usize, const INSIDE: bool>(
    r: &RowTapsInPlace<A>,
    plane: *const A,
    w: &[[S::V; K]; K],
    (m, i): (usize, usize),
    acc: &mut [[S::V; 1]; R],
) {
    // SAFETY: the caller's rows and columns are inside the call's, which has
    // `K` column taps; every load reads only lanes inside a row of the plane.
    unsafe {
        // Where each column tap's register starts in a row, and its lanes inside the row.
        let starts: [isize; K] = std::array::from_fn(|j| i as isize + *r.columns.add(j));
        let spans = starts.map(|start| lanes_inside(start, r.plane_width, S::LANES));
        for q in 0..K + R - 1 {
            let row = (m + q) as isize + r.first_row;
            if !INSIDE && !(0..r.height as isize).contains(&row) {
                continue;
            }
            let row = plane.add(row as usize * r.plane_width);
            for j in 0..K {
                let (lo, hi) = spans[j];
                let x = S::load_lanes(row.wrapping_offset(starts[j]), lo, hi);
                for (k, acc) in acc.iter_mut().enumerate() {
                    if q >= k && q - k < K {
                        acc[0] = S::mul_add(w[q - k][j], x, acc[0]);
                    }
                }
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
