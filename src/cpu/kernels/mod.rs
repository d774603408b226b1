//! The SIMD kernels, written once over [`Lanes`] and instantiated per
//! instruction set, and the table ([`Kernels`]) an op looks them up in.
//!
//! - `nn`: the GEMM micro-kernel `C[MR×NR] (+)= Σ_k a[k][MR] ⊗ b[k][NR]`
//!   (broadcast `a`, vector loads of `b`): implicit GEMM forward and adjoint,
//!   col2im's GEMM, Winograd's products; `a` packed in strips, or read in
//!   place from `MR` weight rows or from runs of `MR` values ([`AOperand`]).
//! - `nt`: `C[MR×NR] (+)= Σ_r a[i][r] · b[j][r]`, dot products along the
//!   contiguous dim: the weight gradient, where both operands are im2col-like rows.
//! - `taps`, `row_taps`, `dots`: rows of the direct path for thin groups (a
//!   few outputs summed over every source channel and tap; `row_taps` one
//!   output over blocks of rows that share their source rows, from a bordered
//!   copy or, `row_taps_in_place`, from the source planes with masked edge
//!   loads); `sum`: bias gradients.
//! - `input_row`: Winograd's input transform of a row of tiles, in registers.
//!
//! Each output element is one chain of multiply-adds in a fixed order, so a
//! result depends on the data and the instruction set only, never on tiling
//! or threads.
//!
//! The generic bodies are in `nn.rs`, `nt.rs`, `rows.rs` and `winograd.rs`; here are the
//! operands callers hand them and the table, instantiated per instruction set.

use std::any::Any;

#[cfg(target_arch = "x86_64")]
use super::isa::{Avx2, Avx512};
use super::isa::{CpuIsa, Lanes, Portable};
use super::pairs::PairKernels;

mod nn;
mod nt;
mod rows;
#[cfg(test)]
mod tests;
mod winograd;

use nn::nn;
pub(crate) use nn::{AStrip, AValues, NnTile, PackedA, RowsA, StridedA};
pub(crate) use nt::NtTile;
use nt::nt;
pub(crate) use rows::{DotsRow, IN_PLACE_COLUMNS, IN_PLACE_PLANES, RowTaps, RowTapsInPlace, TapGrid, TapsBlock};
use rows::{dots_row, row_taps, row_taps_in_place, square_in_place, square_taps, sum, taps_block};
use winograd::{InputRow, input_row};

/// A micro-kernel that reads the `b` rows of its tile where they are:
/// `c[i·ldc + j] (+)= Σ_k a[k][i] · rows.row(k)[offset + j]` over its
/// `MR × NR` tile, with `a` and the rows in `B` and `c` in `A` (the `nn`
/// kernels, and the bf16 pair kernel with `B` = pairs).
pub(crate) trait IndirectKernel<A, B> {
    /// Tile rows (MR) and columns (NR).
    fn tile(&self) -> (usize, usize);
    /// Runs one tile, checking every operand holds it: its first `rows` rows
    /// and `cols` columns at least (see [`Kernels::nn`]).
    #[allow(clippy::too_many_arguments)] // as `Kernels::nn`
    fn nn_indirect(
        &self,
        live: (usize, usize),
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
    let a = a.strip(k, (mr, mr), kernel);
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
        (live_rows, live_cols): (usize, usize),
        a: AOperand<'_, A>,
        rows: &RowSet<'_, A>,
        offset: usize,
        c: &mut [A],
        ldc: usize,
        accumulate: bool,
    ) {
        let (width, height, _) = self.nn_kernel(live_rows, live_cols);
        let (k, a) = check_indirect("nn_indirect", self.tile(), a, rows, offset, c, ldc);
        let tile = NnTile { k, a, b: rows.gathered(0, offset), c: c.as_mut_ptr(), ldc, accumulate };
        // SAFETY: the table exists only for a supported ISA, and `check_indirect` bounds every access.
        unsafe { (self.nn_indirect[width][height])(&tile) }
    }
}

/// Among kernels of `heights` (two edge heights, then `MR`) and of two widths
/// (one vector of `lanes`, then `NR`), the one that computes `rows × cols`
/// with the least work: its indices (width, height) and its height.
pub(crate) fn edge_kernel(heights: &[usize; 3], lanes: usize, rows: usize, cols: usize) -> (usize, usize, usize) {
    let height = heights.iter().position(|&h| h >= rows).unwrap_or(2);
    (usize::from(cols > lanes), height, heights[height])
}

/// The `a` operand of an `nn` micro-tile (`MR` rows of the weights, `k` long).
#[derive(Clone, Copy)]
pub(crate) enum AOperand<'a, A> {
    /// Packed: `k` rows of `MR` values.
    Packed(&'a [A]),
    /// In place: `MR` rows, each read for `k` values from `offset`.
    Rows(&'a RowSet<'a, A>, usize),
    /// In place: `k` runs of `MR` values, `lda` apart (the rows of a matrix
    /// whose columns are the tile's rows: the weights of an adjoint GEMM).
    /// The last run need only hold the rows the kernel computes.
    Strided(&'a [A], usize),
}

impl<A> AOperand<'_, A> {
    /// The operand as the kernels take it, checked to hold `k` steps of `mr`
    /// rows (of `height`, the rows the kernel computes, where read in place).
    pub fn strip(self, k: usize, (mr, height): (usize, usize), kernel: &str) -> AStrip<A> {
        match self {
            AOperand::Strided(a, lda) => {
                assert!(k == 0 || a.len() >= (k - 1) * lda + height, "{kernel}: a holds {} < {k}×{lda}", a.len());
                AStrip::Strided(a.as_ptr(), lda)
            }
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

/// Where the `b` rows of a micro-tile are: [`Strided`] through a matrix, or
/// [`Gathered`] wherever they lie.
pub(crate) trait BRows<B> {
    /// Row `i`; the caller keeps `i` below the rows the tile was checked for.
    unsafe fn row(&self, i: usize) -> *const B;
}

/// Rows `ld` apart from `start`.
pub(crate) struct Strided<B> {
    pub start: *const B,
    pub ld: usize,
}

impl<B> BRows<B> for Strided<B> {
    #[inline(always)]
    unsafe fn row(&self, i: usize) -> *const B {
        // SAFETY: the caller keeps `i` below the tile's rows.
        unsafe { self.start.add(i * self.ld) }
    }
}

/// Row `i` at `rows[i] + offset`: rows read in place (see [`RowSet::gathered`]).
pub(crate) struct Gathered<B> {
    pub rows: *const *const B,
    pub offset: usize,
}

impl<B> BRows<B> for Gathered<B> {
    #[inline(always)]
    unsafe fn row(&self, i: usize) -> *const B {
        // SAFETY: the caller keeps `i` below the tile's rows.
        unsafe { (*self.rows.add(i)).add(self.offset) }
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

    /// Rows `first..` of the set, each read from `offset`, as a micro-tile takes them.
    ///
    /// # Panics
    /// If `first` is past the last row.
    pub fn gathered(&self, first: usize, offset: usize) -> Gathered<A> {
        Gathered { rows: self.pointers[first..].as_ptr(), offset }
    }
}

/// The rows of tiles of an op [`Kernels::winograd_input_row`] transforms:
/// 1-D (`rows` = 1) or 2-D (`rows` = 4) F(2, 3) tiles at dilation 1 along
/// the last axis, input rows `row_gap` apart and `width` long.
pub(crate) struct TileRowShape {
    pub rows: usize,
    pub row_gap: usize,
    pub width: usize,
}

/// One row of `len` neighbouring tiles: tile `j`'s point `(u1, u2)` is
/// `src[first + u1·row_gap + 2j + u2]`, at column `column + 2j + u2` of its
/// row; zero where that column lies outside the row, or where bit `u1` of
/// `rows` is clear (a row in the padding).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TileRow {
    pub first: isize,
    pub column: isize,
    pub rows: u32,
    pub len: usize,
}

/// An `nn` kernel whose `b` rows are `R`.
type NnKernel<A, R> = unsafe fn(&NnTile<A, A, R>);

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
    /// The rows each `nn` kernel below computes: two edge heights, then `MR`.
    nn_heights: [usize; 3],
    /// `nn` kernels by width (one vector, then `NR`) and height.
    nn: [[NnKernel<A, Strided<A>>; 3]; 2],
    nn_indirect: [[NnKernel<A, Gathered<A>>; 3]; 2],
    nt: unsafe fn(&NtTile<A, Strided<A>>),
    nt_indirect: unsafe fn(&NtTile<A, Gathered<A>>),
    sum: unsafe fn(usize, *const A) -> A,
    /// `taps` blocks of 1, 2 and 4 outputs.
    taps: [unsafe fn(&TapsBlock<A>); 3],
    row_taps: unsafe fn(&RowTaps<A>),
    /// `row_taps` for a 3×3 grid of one slab (depthwise 2-D convs'), its
    /// nine weights in registers: 10% faster on MobileNet's layer than the
    /// loops over any grid.
    square_taps: unsafe fn(&RowTaps<A>),
    /// `row_taps` from the source planes themselves (see [`RowTapsInPlace`]).
    row_taps_in_place: unsafe fn(&RowTapsInPlace<A>),
    /// `row_taps_in_place` for a 3×3 grid, its weights in registers.
    square_in_place: unsafe fn(&RowTapsInPlace<A>),
    dots_row: unsafe fn(&DotsRow<A>),
    /// `input_row` for 1-D and 2-D tiles.
    input_row: [unsafe fn(&InputRow<A>); 2],
    /// The bf16 channel-pair kernel, where this instruction set has one.
    pub pairs: Option<PairKernels<A>>,
}

/// Instantiates the generic kernels for one instruction set, inside
/// `#[target_feature]` wrappers when it names features, and builds its tables.
/// Each table names its accumulator, the register type, and the shapes:
/// `nn` rows × vectors and the heights of its two edge kernels, `nt` rows ×
/// columns, the vectors of the `taps` blocks of 1, 2 and 4 outputs, the
/// rows × vectors of a `row_taps` block (its 3×3 kernel: the rows by one
/// vector), and the rows of `dots`.
macro_rules! isa_kernels {
    ($module:ident, [$($features:literal)?],
     $($table:ident: $a:ty, $s:ty, nn: ($mr:literal, $nv:literal), edges: ($e1:literal, $e2:literal),
       nt: ($tr:literal, $tc:literal), taps: ($t1:literal, $t2:literal, $t4:literal),
       row_taps: ($rr:literal, $rv:literal), dots: $dots:literal;)+) => {
        mod $module {
            use super::*;

            $(#[target_feature(enable = $features)])?
            unsafe fn nn_k<S: Lanes<A>, A: Copy, R: BRows<A>, const MR: usize, const ROWS: usize, const NV: usize>(
                t: &NnTile<A, A, R>,
            ) {
                // SAFETY: forwarded from the caller (a supported ISA, valid operands).
                unsafe { nn::<S, A, R, MR, ROWS, NV>(t) }
            }

            /// The `nn` kernels of one `b` row kind, by width (one vector,
            /// then `NV`) and height (`E1`, `E2`, then `MR`).
            const fn nn_table<S: Lanes<A>, A: Copy, R: BRows<A>, const MR: usize, const E1: usize, const E2: usize, const NV: usize>(
            ) -> [[NnKernel<A, R>; 3]; 2] {
                [
                    [nn_k::<S, A, R, MR, E1, 1>, nn_k::<S, A, R, MR, E2, 1>, nn_k::<S, A, R, MR, MR, 1>],
                    [nn_k::<S, A, R, MR, E1, NV>, nn_k::<S, A, R, MR, E2, NV>, nn_k::<S, A, R, MR, MR, NV>],
                ]
            }

            $(#[target_feature(enable = $features)])?
            unsafe fn nt_k<S: Lanes<A>, A: Copy + std::ops::Add<Output = A>, R: BRows<A>, const MR: usize, const NR: usize>(
                t: &NtTile<A, R>,
            ) {
                // SAFETY: forwarded from the caller.
                unsafe { nt::<S, A, R, MR, NR>(t) }
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
            unsafe fn row_taps_k<S: Lanes<A>, A: Copy, const R: usize, const V: usize>(r: &RowTaps<A>) {
                // SAFETY: forwarded from the caller.
                unsafe { row_taps::<S, A, R, V>(r) }
            }

            $(#[target_feature(enable = $features)])?
            unsafe fn row_taps_in_place_k<S: Lanes<A>, A: Copy, const R: usize, const V: usize>(r: &RowTapsInPlace<A>) {
                // SAFETY: forwarded from the caller.
                unsafe { row_taps_in_place::<S, A, R, V>(r) }
            }

            $(#[target_feature(enable = $features)])?
            unsafe fn square_in_place_k<S: Lanes<A>, A: Copy, const R: usize, const K: usize>(r: &RowTapsInPlace<A>) {
                // SAFETY: forwarded from the caller.
                unsafe { square_in_place::<S, A, R, K>(r) }
            }

            $(#[target_feature(enable = $features)])?
            unsafe fn square_taps_k<S: Lanes<A>, A: Copy, const R: usize, const K: usize>(r: &RowTaps<A>) {
                // SAFETY: forwarded from the caller.
                unsafe { square_taps::<S, A, R, K>(r) }
            }

            $(#[target_feature(enable = $features)])?
            unsafe fn input_row_k<S: Lanes<A>, A: Copy, const ROWS: usize>(r: &InputRow<A>) {
                // SAFETY: forwarded from the caller.
                unsafe { input_row::<S, A, ROWS>(r) }
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
                    nn_heights: [$e1, $e2, $mr],
                    nn: nn_table::<$s, $a, Strided<$a>, $mr, $e1, $e2, $nv>(),
                    nn_indirect: nn_table::<$s, $a, Gathered<$a>, $mr, $e1, $e2, $nv>(),
                    nt: nt_k::<$s, $a, Strided<$a>, $tr, $tc>,
                    nt_indirect: nt_k::<$s, $a, Gathered<$a>, $tr, $tc>,
                    sum: sum_k::<$s, $a>,
                    taps: [taps_k::<$s, $a, 1, $t1>, taps_k::<$s, $a, 2, $t2>, taps_k::<$s, $a, 4, $t4>],
                    row_taps: row_taps_k::<$s, $a, $rr, $rv>,
                    square_taps: square_taps_k::<$s, $a, $rr, 3>,
                    row_taps_in_place: row_taps_in_place_k::<$s, $a, $rr, $rv>,
                    square_in_place: square_in_place_k::<$s, $a, $rr, 3>,
                    dots_row: dots_k::<$s, $a, $dots>,
                    input_row: [input_row_k::<$s, $a, 1>, input_row_k::<$s, $a, 4>],
                    pairs: None,
                };
            )+
        }
    };
}

// Edge kernels compute the last strip of a block whose rows are not a multiple
// of `MR`: 64 channels are 5 strips of 12 and one of 4 on AVX-512, where a
// whole strip would compute 72 rows (11% of the work wasted on the suite's
// many 64-channel layers). Narrow ones (one vector wide) compute a last
// column block of at most `lanes` columns: ResNet's 7×7 layers have 196
// columns, 6 blocks of 32 and 4 columns.
// Register budgets: AVX-512 has 32 registers (nn: 12×2 accumulators + 2 loads +
// a broadcast; nt: 4×4 + 4 + 4; taps of four outputs: 4×4 + 4 + 1, where 4×2
// ran ResNeXt's grouped layer 7-10% slower), AVX2 has 16 (nn: 6×2 + 2 + 1;
// nt: 3×4 + 3 + 1). An AVX-512 `nt` of 4×6 (24 + 4 + 1 on paper) had its
// accumulators spilled to the stack by the compiler and ran at a third of
// 4×4's speed on Zen 4.
// The `tile_shapes` modules below repeat both in plain Rust for the tests.
#[cfg(target_arch = "x86_64")]
isa_kernels!(avx512, ["avx512f,avx2,fma"],
    F32: f32, Avx512, nn: (12, 2), edges: (4, 8), nt: (4, 4), taps: (8, 4, 4), row_taps: (4, 4), dots: 9;
    F64: f64, Avx512, nn: (12, 2), edges: (4, 8), nt: (4, 4), taps: (8, 4, 4), row_taps: (4, 4), dots: 9;
);
#[cfg(target_arch = "x86_64")]
isa_kernels!(avx2, ["avx2,fma"],
    F32: f32, Avx2, nn: (6, 2), edges: (2, 4), nt: (3, 4), taps: (8, 4, 2), row_taps: (4, 2), dots: 9;
    F64: f64, Avx2, nn: (6, 2), edges: (2, 4), nt: (3, 4), taps: (8, 4, 2), row_taps: (4, 2), dots: 9;
);
isa_kernels!(portable, [],
    F32: f32, Portable<4>, nn: (4, 2), edges: (1, 2), nt: (2, 2), taps: (2, 2, 1), row_taps: (2, 1), dots: 4;
    F64: f64, Portable<4>, nn: (4, 2), edges: (1, 2), nt: (2, 2), taps: (2, 2, 1), row_taps: (2, 1), dots: 4;
);

// The x86 tables' shapes and register widths, computed in plain Rust: the
// tests run every algorithm on them, so the tilings AVX-512 and AVX2 use are
// checked on any CPU, whichever this one has.
#[cfg(test)]
isa_kernels!(avx512_shapes, [],
    F32: f32, Portable<16>, nn: (12, 2), edges: (4, 8), nt: (4, 4), taps: (8, 4, 4), row_taps: (4, 4), dots: 9;
    F64: f64, Portable<8>, nn: (12, 2), edges: (4, 8), nt: (4, 4), taps: (8, 4, 4), row_taps: (4, 4), dots: 9;
);
#[cfg(test)]
isa_kernels!(avx2_shapes, [],
    F32: f32, Portable<8>, nn: (6, 2), edges: (2, 4), nt: (3, 4), taps: (8, 4, 2), row_taps: (4, 2), dots: 9;
    F64: f64, Portable<4>, nn: (6, 2), edges: (2, 4), nt: (3, 4), taps: (8, 4, 2), row_taps: (4, 2), dots: 9;
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
    /// The `nn` kernel that computes the first `rows` rows and `cols`
    /// columns of a tile with the least work: the lowest height that holds
    /// the rows (an edge kernel's, else `MR`), one vector wide where that
    /// holds the columns. Returns its indices (width, height) and height.
    fn nn_kernel(&self, rows: usize, cols: usize) -> (usize, usize, usize) {
        edge_kernel(&self.nn_heights, self.lanes, rows, cols)
    }

    /// The rows the `nn` kernel for a tile's first `rows` rows computes (an edge kernel's height, or `MR`).
    pub fn nn_height(&self, rows: usize) -> usize {
        self.nn_kernel(rows, self.nn_cols).2
    }

    /// Runs one `nn` micro-tile on slices, checking every operand holds the
    /// whole `MR × NR` tile, of which it computes the first `rows` rows and
    /// `cols` columns at least (an edge kernel's height, or `MR`; one vector,
    /// or `NR`); the other elements of `c` are not written.
    #[allow(clippy::too_many_arguments)] // the BLAS operand list: each slice with its leading dimension
    pub fn nn(
        &self,
        (rows, cols): (usize, usize),
        k: usize,
        a: AOperand<'_, A>,
        b: &[A],
        ldb: usize,
        c: &mut [A],
        ldc: usize,
        accumulate: bool,
    ) {
        let (mr, nr) = (self.nn_rows, self.nn_cols);
        let (width, height, rows_computed) = self.nn_kernel(rows, cols);
        let a = a.strip(k, (mr, rows_computed), "nn");
        assert!(k == 0 || (ldb >= nr && b.len() >= (k - 1) * ldb + nr), "nn: b too short");
        assert!(ldc >= nr && c.len() >= (mr - 1) * ldc + nr, "nn: c too short");
        let tile = NnTile { k, a, b: Strided { start: b.as_ptr(), ld: ldb }, c: c.as_mut_ptr(), ldc, accumulate };
        // SAFETY: the table exists only for a supported ISA, and the asserts bound every access.
        unsafe { (self.nn[width][height])(&tile) }
    }

    /// Winograd's input transform of a row of tiles from `src` (see
    /// [`TileRow`]), the point `ξ` of its `j`-th tile to `out[ξ·point_gap + j]`.
    pub fn winograd_input_row(&self, src: &[A], shape: &TileRowShape, row: &TileRow, out: &mut [A], point_gap: usize) {
        let &TileRowShape { rows, row_gap, width } = shape;
        assert!(rows == 1 || rows == 4, "winograd_input_row: {rows} rows per tile");
        if row.len == 0 {
            return;
        }
        for u1 in (0..rows).filter(|u1| row.rows & (1 << u1) != 0) {
            let start = row.first + (u1 * row_gap) as isize - row.column;
            let inside = start >= 0 && start as usize + width <= src.len();
            assert!(inside, "winograd_input_row: row {u1} at {start} is not inside the source");
        }
        assert!(out.len() >= (4 * rows - 1) * point_gap + row.len, "winograd_input_row: out too short");
        let call = InputRow {
            first: src.as_ptr().wrapping_offset(row.first),
            row_gap,
            rows: row.rows,
            column: row.column,
            width,
            len: row.len,
            out: out.as_mut_ptr(),
            point_gap,
        };
        // SAFETY: as in `nn`; the kernel loads only columns `0..width` of the rows checked above.
        unsafe { (self.input_row[rows / 4])(&call) }
    }

    /// Runs one `nt` micro-tile on slices (`k` a multiple of the lane count).
    #[allow(clippy::too_many_arguments)] // as `nn`
    pub fn nt(&self, k: usize, a: &[A], lda: usize, b: &[A], ldb: usize, c: &mut [A], ldc: usize) {
        let (mr, nr) = (self.nt_rows, self.nt_cols);
        assert!(k.is_multiple_of(self.lanes), "nt: k = {k} is not a multiple of {}", self.lanes);
        assert!(k == 0 || (lda >= k && a.len() >= (mr - 1) * lda + k), "nt: a too short");
        assert!(k == 0 || (ldb >= k && b.len() >= (nr - 1) * ldb + k), "nt: b too short");
        assert!(ldc >= nr && c.len() >= (mr - 1) * ldc + nr, "nt: c too short");
        let tile = NtTile { k, a: a.as_ptr(), lda, b: Strided { start: b.as_ptr(), ld: ldb }, c: c.as_mut_ptr(), ldc };
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
        let tile = NtTile { k, a: a.as_ptr(), lda, b: rows.gathered(first, 0), c: c.as_mut_ptr(), ldc };
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

    /// `out[m·ldo + i] = Σ_c Σ_{(s, r, j)} weights[c][s][r][j] · sources.row(c)[grid(s, r, j) + m·pitch + i]`
    /// for `m < rows` and `i < width`: one output over the taps of `grid` on
    /// every source, in blocks of rows that load each source row once (see
    /// [`TapGrid`]). Rows are computed in whole vectors, so the sources are
    /// read up to `width` rounded up to the lane count; only `width` values of
    /// each output row are stored.
    #[allow(clippy::too_many_arguments)] // as `nn`
    pub fn row_taps(
        &self,
        grid: &TapGrid,
        sources: &RowSet<'_, A>,
        weights: &[A],
        rows: usize,
        width: usize,
        out: &mut [A],
        ldo: usize,
    ) {
        let channels = sources.rows();
        assert_eq!(
            weights.len(),
            channels * grid.taps(),
            "row_taps: weights for {channels} sources of {} taps",
            grid.taps()
        );
        if rows == 0 || width == 0 {
            return;
        }
        let reach = grid.reach(rows, width.next_multiple_of(self.lanes));
        assert!(channels == 0 || sources.row_len() >= reach, "row_taps: sources hold {} < {reach}", sources.row_len());
        assert!(ldo >= width && out.len() >= (rows - 1) * ldo + width, "row_taps: out too short");
        let call = RowTaps {
            sources: sources.pointers(),
            channels,
            slabs: grid.slabs.as_ptr(),
            slab_count: grid.slabs.len(),
            tap_rows: grid.tap_rows,
            columns: grid.columns.as_ptr(),
            column_count: grid.columns.len(),
            pitch: grid.pitch,
            weights: weights.as_ptr(),
            rows,
            width,
            out: out.as_mut_ptr(),
            ldo,
        };
        // SAFETY: as in `nn`; every source holds the grid's reach over the call's rows.
        unsafe { if grid.is_square(3) { (self.square_taps)(&call) } else { (self.row_taps)(&call) } }
    }

    /// [`row_taps`](Self::row_taps) read from the source planes themselves:
    /// `out[m·ldo + i] = Σ_p Σ_r Σ_j weights[p][r·columns + j] · planes[p](m + first_row + r, i + columns[j])`
    /// for `m < rows`, `i < width`, each plane `height × plane_width` and
    /// zero outside (see [`RowTapsInPlace`]): no bordered copy to make.
    #[allow(clippy::too_many_arguments)] // as `nn`
    pub fn row_taps_in_place(
        &self,
        planes: &[(&[A], &[A])],
        [height, plane_width]: [usize; 2],
        (first_row, tap_rows): (isize, usize),
        columns: &[isize],
        (rows, width): (usize, usize),
        out: &mut [A],
        ldo: usize,
    ) {
        assert!(columns.len() <= IN_PLACE_COLUMNS, "row_taps_in_place: {} column taps", columns.len());
        assert!(planes.len() <= IN_PLACE_PLANES, "row_taps_in_place: {} planes", planes.len());
        let taps = tap_rows * columns.len();
        for (plane, weights) in planes {
            assert!(plane.len() >= height * plane_width, "row_taps_in_place: a plane holds {}", plane.len());
            assert_eq!(weights.len(), taps, "row_taps_in_place: weights for {taps} taps");
        }
        if rows == 0 || width == 0 {
            return;
        }
        assert!(ldo >= width && out.len() >= (rows - 1) * ldo + width, "row_taps_in_place: out too short");
        let (mut pointers, mut weights) = ([std::ptr::null(); IN_PLACE_PLANES], [std::ptr::null(); IN_PLACE_PLANES]);
        for ((p, w), (plane, plane_weights)) in pointers.iter_mut().zip(&mut weights).zip(planes) {
            (*p, *w) = (plane.as_ptr(), plane_weights.as_ptr());
        }
        let call = RowTapsInPlace {
            planes: pointers.as_ptr(),
            weights: weights.as_ptr(),
            plane_count: planes.len(),
            height,
            plane_width,
            first_row,
            tap_rows,
            columns: columns.as_ptr(),
            column_count: columns.len(),
            rows,
            width,
            out: out.as_mut_ptr(),
            ldo,
        };
        // SAFETY: as in `nn`; every plane holds `height × plane_width` values,
        // which is all the kernel reads of it, and the output holds the rows.
        let square = tap_rows == 3 && columns.len() == 3;
        unsafe { if square { (self.square_in_place)(&call) } else { (self.row_taps_in_place)(&call) } }
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
