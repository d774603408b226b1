//! Run-time instruction-set dispatch: which SIMD kernels this CPU runs,
//! decided once, and the few vector operations the kernels are written in.
//!
//! Every kernel is one generic function over [`Lanes`]; an instruction set is
//! a marker type implementing it with `std::arch` intrinsics. The generic body
//! is instantiated inside a `#[target_feature]` wrapper per instruction set
//! (see `kernels.rs`), so the AVX-512 and AVX2 kernels are the same code with
//! different register widths, and the portable one is plain Rust arrays that
//! the compiler vectorises for whatever target it builds for.

use std::sync::OnceLock;

/// Asks for every cache line of `values` to be brought into L1: a hint,
/// which reads nothing into the program and never faults (a no-op off x86-64).
pub(crate) fn prefetch<T>(values: &[T]) {
    #[cfg(target_arch = "x86_64")]
    for offset in (0..std::mem::size_of_val(values)).step_by(64) {
        let line = values.as_ptr().cast::<i8>().wrapping_add(offset);
        // SAFETY: a prefetch only hints the cache; `line` is inside `values` anyway.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = values;
}

/// The SIMD instruction set the CPU kernels use.
///
/// [`CpuIsa::detect`] picks the widest one this CPU supports (once, then
/// cached); `FERROCONV_CPU_ISA=avx512|avx2|portable` caps it, for testing a
/// narrower path on a wider machine.
///
/// ```
/// use ferroconv::cpu::CpuIsa;
/// let isa = CpuIsa::detect();
/// assert!(isa.is_supported());
/// assert!(CpuIsa::supported().contains(&CpuIsa::Portable));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CpuIsa {
    /// Plain Rust, vectorised by the compiler for the build target; runs anywhere.
    Portable,
    /// x86-64 AVX2 with FMA (and F16C for f16 conversions): 8 f32 lanes, 16 registers.
    Avx2,
    /// x86-64 AVX-512 F: 16 f32 lanes, 32 registers.
    Avx512,
}

impl CpuIsa {
    /// Every instruction set, narrowest first.
    pub const ALL: [CpuIsa; 3] = [CpuIsa::Portable, CpuIsa::Avx2, CpuIsa::Avx512];

    /// A short name (`"avx512"`, `"avx2"`, `"portable"`).
    pub fn name(self) -> &'static str {
        match self {
            CpuIsa::Portable => "portable",
            CpuIsa::Avx2 => "avx2",
            CpuIsa::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run the kernels of `self`.
    pub fn is_supported(self) -> bool {
        match self {
            CpuIsa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            CpuIsa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            CpuIsa::Avx512 => CpuIsa::Avx2.is_supported() && std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            CpuIsa::Avx2 | CpuIsa::Avx512 => false,
        }
    }

    /// The instruction sets this CPU supports, narrowest first.
    pub fn supported() -> Vec<CpuIsa> {
        CpuIsa::ALL.into_iter().filter(|isa| isa.is_supported()).collect()
    }

    /// The widest supported instruction set, capped by `FERROCONV_CPU_ISA`
    /// when it names one; decided on the first call and cached.
    pub fn detect() -> CpuIsa {
        static DETECTED: OnceLock<CpuIsa> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            let widest = CpuIsa::supported().into_iter().max().unwrap_or(CpuIsa::Portable);
            let cap = std::env::var("FERROCONV_CPU_ISA").ok();
            match cap.and_then(|name| CpuIsa::ALL.into_iter().find(|isa| isa.name() == name)) {
                Some(cap) => widest.min(cap),
                None => widest,
            }
        })
    }
}

impl std::fmt::Display for CpuIsa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A SIMD register of `LANES` values of `A` and the operations the kernels need.
///
/// # Safety
/// Implementors use instructions of one instruction set: a caller must only
/// call these functions where the CPU supports it (the kernels are reached
/// through `Kernels`, which is only built for a supported [`CpuIsa`]), and
/// every pointer must be valid for `LANES` elements.
pub(crate) unsafe trait Lanes<A: Copy>: Copy + 'static {
    type V: Copy;
    const LANES: usize;
    /// Vector registers the instruction set has (AVX-512: 32; AVX2: 16).
    const REGISTERS: usize = 16;
    unsafe fn zero() -> Self::V;
    unsafe fn splat(a: A) -> Self::V;
    /// Loads `LANES` values from `p` (no alignment needed).
    unsafe fn load(p: *const A) -> Self::V;
    /// Stores `LANES` values at `p` (no alignment needed).
    unsafe fn store(p: *mut A, v: Self::V);
    /// `c + a * b`, fused where the instruction set has FMA.
    unsafe fn mul_add(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    /// The even and the odd lanes of `a` followed by `b`, each in order:
    /// pairs of neighbouring values taken apart. Here through buffers; the
    /// x86 sets shuffle registers.
    #[inline(always)]
    unsafe fn deinterleave(a: Self::V, b: Self::V) -> (Self::V, Self::V) {
        const { assert!(Self::LANES <= MAX_LANES) };
        // SAFETY (whole body): the buffers hold `2 · LANES` and `LANES` values.
        unsafe {
            let zero = Self::reduce_sum(Self::zero());
            let (mut both, mut even, mut odd) = ([zero; 2 * MAX_LANES], [zero; MAX_LANES], [zero; MAX_LANES]);
            Self::store(both.as_mut_ptr(), a);
            Self::store(both.as_mut_ptr().add(Self::LANES), b);
            for i in 0..Self::LANES {
                (even[i], odd[i]) = (both[2 * i], both[2 * i + 1]);
            }
            (Self::load(even.as_ptr()), Self::load(odd.as_ptr()))
        }
    }
    /// The sum of the lanes, in a fixed order.
    unsafe fn reduce_sum(v: Self::V) -> A;
    /// The lane sums of a tile of registers, `sums[i][j]` of `tile[i][j]`, in
    /// a fixed order (not necessarily [`Lanes::reduce_sum`]'s): where an
    /// instruction set can reduce a whole tile at once, transposing as it
    /// adds, that takes a few shuffles per register rather than a reduction each.
    ///
    /// Plain index loops, not iterator adaptors: a closure inside std's
    /// adaptors does not inherit the kernels' `target_feature`, and the
    /// reductions' intrinsics then became calls (AVX2's `nt` spent a quarter
    /// of its time in them).
    #[inline(always)]
    unsafe fn reduce_tile<const R: usize, const C: usize>(tile: &[[Self::V; C]; R]) -> [[A; C]; R] {
        // SAFETY (whole body): the caller's contract.
        let mut sums = [[unsafe { Self::reduce_sum(Self::zero()) }; C]; R];
        for i in 0..R {
            for j in 0..C {
                sums[i][j] = unsafe { Self::reduce_sum(tile[i][j]) };
            }
        }
        sums
    }
    /// Stores the first `n` lanes of `v` at `p` (`n <= LANES`): a row's last
    /// partial vector. Here through a register-sized buffer; the x86 sets
    /// store under a mask (with the buffer and a copy call per row,
    /// MobileNet's depthwise layer took 16% longer).
    #[inline(always)]
    unsafe fn store_first(p: *mut A, v: Self::V, n: usize) {
        const { assert!(Self::LANES <= MAX_LANES) };
        // SAFETY (whole body): the buffer holds `LANES` values, the caller
        // guarantees `n <= LANES` writable elements at `p`.
        unsafe {
            let mut lanes = [Self::reduce_sum(Self::zero()); MAX_LANES];
            Self::store(lanes.as_mut_ptr(), v);
            std::ptr::copy_nonoverlapping(lanes.as_ptr(), p, n);
        }
    }
    /// Lanes `lo..hi` loaded from `p + lo..p + hi`, the others zero
    /// (`lo <= hi <= LANES`): a vector that hangs over a row's ends, whose
    /// lanes outside the row are neither read nor faulted on (on x86, a masked
    /// load). Only `p + lo..p + hi` need be valid; `p` itself may point outside.
    /// Kernels call it for every register of a row, whole ones included,
    /// without a branch of their own: a whole register is a plain load here
    /// and on AVX2, and AVX-512's masked load is as fast as a plain one.
    #[inline(always)]
    unsafe fn load_lanes(p: *const A, lo: usize, hi: usize) -> Self::V {
        const { assert!(Self::LANES <= MAX_LANES) };
        // SAFETY (whole body): the caller guarantees `hi - lo` readable elements from `p + lo`.
        unsafe {
            if lo == 0 && hi == Self::LANES {
                return Self::load(p);
            }
            let zero = Self::reduce_sum(Self::zero());
            let mut lanes = [zero; MAX_LANES];
            std::ptr::copy_nonoverlapping(p.wrapping_add(lo), lanes.as_mut_ptr().add(lo), hi - lo);
            Self::load(lanes.as_ptr())
        }
    }
    /// `c + a * b` on scalars, with the same rounding as [`Lanes::mul_add`].
    fn mul_add_scalar(a: A, b: A, c: A) -> A;
}

/// The most lanes any register of [`Lanes`] has (AVX-512's f32).
const MAX_LANES: usize = 16;

/// `L` lanes as a plain array, vectorised by the compiler for the build
/// target. The portable instruction set is `Portable<4>`; tests also run the
/// register shapes of the x86 sets this CPU may lack (`Portable<16>` for
/// AVX-512's f32), so their tile geometry is checked everywhere.
#[derive(Clone, Copy)]
pub(crate) struct Portable<const L: usize>;

macro_rules! portable_lanes {
    ($a:ty) => {
        // SAFETY: plain Rust, valid on every CPU; pointers are the caller's contract.
        unsafe impl<const L: usize> Lanes<$a> for Portable<L> {
            type V = [$a; L];
            const LANES: usize = L;
            // As x86's (below), so that the tests' plain-Rust AVX-512 shapes take AVX-512's paths.
            const REGISTERS: usize = if std::mem::size_of::<Self::V>() == 64 { 32 } else { 16 };
            #[inline(always)]
            unsafe fn zero() -> Self::V {
                [0.0; L]
            }
            #[inline(always)]
            unsafe fn splat(a: $a) -> Self::V {
                [a; L]
            }
            #[inline(always)]
            unsafe fn load(p: *const $a) -> Self::V {
                // SAFETY: the caller guarantees `L` readable elements at `p`.
                unsafe { p.cast::<[$a; L]>().read_unaligned() }
            }
            #[inline(always)]
            unsafe fn store(p: *mut $a, v: Self::V) {
                // SAFETY: the caller guarantees `L` writable elements at `p`.
                unsafe { p.cast::<[$a; L]>().write_unaligned(v) }
            }
            #[inline(always)]
            unsafe fn mul_add(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
                std::array::from_fn(|i| c[i] + a[i] * b[i])
            }
            #[inline(always)]
            unsafe fn add(a: Self::V, b: Self::V) -> Self::V {
                std::array::from_fn(|i| a[i] + b[i])
            }
            #[inline(always)]
            unsafe fn sub(a: Self::V, b: Self::V) -> Self::V {
                std::array::from_fn(|i| a[i] - b[i])
            }
            /// Folds the upper half onto the lower until one lane is left, as
            /// the x86 reductions do (`L` is a power of two).
            #[inline(always)]
            unsafe fn reduce_sum(mut v: Self::V) -> $a {
                let mut half = L;
                while half > 1 {
                    half /= 2;
                    for i in 0..half {
                        v[i] += v[i + half];
                    }
                }
                v[0]
            }
            #[inline(always)]
            fn mul_add_scalar(a: $a, b: $a, c: $a) -> $a {
                c + a * b
            }
        }
    };
}
portable_lanes!(f32);
portable_lanes!(f64);

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Lanes;
    use std::arch::x86_64::*;

    /// AVX2 + FMA, 256-bit registers.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx2;

    /// AVX-512 F, 512-bit registers.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx512;

    /// Implements [`Lanes`] by naming the intrinsics; `$hsum` reduces to a scalar.
    macro_rules! x86_lanes {
        ($isa:ty, $a:ty, $v:ty, $lanes:expr, $zero:ident, $splat:ident, $load:ident, $store:ident,
         $fma:ident, $add:ident, $sub:ident, $store_first:ident, $load_lanes:ident, $deinterleave:ident, |$r:ident| $hsum:expr) => {
            x86_lanes!($isa, $a, $v, $lanes, $zero, $splat, $load, $store, $fma, $add, $sub, $store_first, $load_lanes, $deinterleave, |$r| $hsum, {});
        };
        ($isa:ty, $a:ty, $v:ty, $lanes:expr, $zero:ident, $splat:ident, $load:ident, $store:ident,
         $fma:ident, $add:ident, $sub:ident, $store_first:ident, $load_lanes:ident, $deinterleave:ident, |$r:ident| $hsum:expr, reduce_tile: blocks of $block:literal) => {
            x86_lanes!($isa, $a, $v, $lanes, $zero, $splat, $load, $store, $fma, $add, $sub, $store_first, $load_lanes, $deinterleave, |$r| $hsum, {
                #[inline(always)]
                unsafe fn reduce_tile<const R: usize, const C: usize>(tile: &[[$v; C]; R]) -> [[$a; C]; R] {
                    // SAFETY: see the impl.
                    unsafe { reduce_in_blocks::<Self, $block, R, C>(tile) }
                }
            });
        };
        ($isa:ty, $a:ty, $v:ty, $lanes:expr, $zero:ident, $splat:ident, $load:ident, $store:ident,
         $fma:ident, $add:ident, $sub:ident, $store_first:ident, $load_lanes:ident, $deinterleave:ident, |$r:ident| $hsum:expr, {$($extra:item)*}) => {
            // SAFETY: each method is one intrinsic of `$isa`; callers run them only
            // where the CPU supports it and pass pointers valid for `$lanes` elements.
            unsafe impl Lanes<$a> for $isa {
                type V = $v;
                const LANES: usize = $lanes;
                // 512-bit registers come with AVX-512's 32 of them.
                const REGISTERS: usize = if std::mem::size_of::<$v>() == 64 { 32 } else { 16 };
                #[inline(always)]
                unsafe fn zero() -> $v {
                    // SAFETY: see the impl.
                    unsafe { $zero() }
                }
                #[inline(always)]
                unsafe fn splat(a: $a) -> $v {
                    // SAFETY: see the impl.
                    unsafe { $splat(a) }
                }
                #[inline(always)]
                unsafe fn load(p: *const $a) -> $v {
                    // SAFETY: see the impl.
                    unsafe { $load(p) }
                }
                #[inline(always)]
                unsafe fn store(p: *mut $a, v: $v) {
                    // SAFETY: see the impl.
                    unsafe { $store(p, v) }
                }
                #[inline(always)]
                unsafe fn mul_add(a: $v, b: $v, c: $v) -> $v {
                    // SAFETY: see the impl.
                    unsafe { $fma(a, b, c) }
                }
                #[inline(always)]
                unsafe fn add(a: $v, b: $v) -> $v {
                    // SAFETY: see the impl.
                    unsafe { $add(a, b) }
                }
                #[inline(always)]
                unsafe fn sub(a: $v, b: $v) -> $v {
                    // SAFETY: see the impl.
                    unsafe { $sub(a, b) }
                }
                #[inline(always)]
                unsafe fn deinterleave(a: $v, b: $v) -> ($v, $v) {
                    // SAFETY: see the impl.
                    unsafe { $deinterleave(a, b) }
                }
                #[inline(always)]
                unsafe fn reduce_sum($r: $v) -> $a {
                    // SAFETY: see the impl.
                    unsafe { $hsum }
                }
                #[inline(always)]
                unsafe fn store_first(p: *mut $a, v: $v, n: usize) {
                    // SAFETY: see the impl; masked-off lanes are neither written nor faulted on.
                    unsafe { $store_first(p, v, n) }
                }
                #[inline(always)]
                unsafe fn load_lanes(p: *const $a, lo: usize, hi: usize) -> $v {
                    // SAFETY: see the impl; masked-off lanes are neither read nor faulted on.
                    unsafe { $load_lanes(p, lo, hi) }
                }
                $($extra)*
                #[inline(always)]
                fn mul_add_scalar(a: $a, b: $a, c: $a) -> $a {
                    a.mul_add(b, c)
                }
            }
        };
    }

    /// Registers whose lane sums an instruction set makes `B` at a time, as one
    /// register of `B` lanes ([`reduce_in_blocks`]).
    trait BlockSums<const B: usize>: Lanes<f32> {
        /// Lane `i` of the result sums the lanes of `v[i]`.
        unsafe fn block_sums(v: [Self::V; B]) -> [f32; B];
    }

    impl BlockSums<8> for Avx2 {
        #[inline(always)]
        unsafe fn block_sums(v: [__m256; 8]) -> [f32; 8] {
            let mut lanes = [0f32; 8];
            // SAFETY: AVX2, as the caller's contract; `lanes` holds 8.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sums8(v)) };
            lanes
        }
    }

    impl BlockSums<16> for Avx512 {
        #[inline(always)]
        unsafe fn block_sums(v: [__m512; 16]) -> [f32; 16] {
            let mut lanes = [0f32; 16];
            // SAFETY: AVX-512 F, as the caller's contract; `lanes` holds 16.
            unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), sums16(v)) };
            lanes
        }
    }

    /// [`Lanes::reduce_tile`] with the tile's registers taken `B` at a time in
    /// row-major order ([`BlockSums`]), the rest one by one: AVX2's `nt` tile
    /// of 3×4 is a block of 8 and 4 single registers, AVX-512's 4×4 one block
    /// of 16. On Zen 4 the AVX-512 `nt` kernel ran at 91 GFLOP/s on one core
    /// over 208 columns (ResNet's 7×7 layers) with a reduction per register,
    /// 113 with this. Plain index loops, no closures, as the trait's default says.
    #[inline(always)]
    unsafe fn reduce_in_blocks<S: BlockSums<B>, const B: usize, const R: usize, const C: usize>(
        tile: &[[S::V; C]; R],
    ) -> [[f32; C]; R] {
        let mut sums = [[0f32; C]; R];
        let full = R * C / B * B;
        let mut first = 0;
        while first < full {
            let mut registers = [tile[0][0]; B];
            for k in 0..B {
                registers[k] = tile[(first + k) / C][(first + k) % C];
            }
            // SAFETY: the caller's contract.
            let lanes = unsafe { S::block_sums(registers) };
            for k in 0..B {
                sums[(first + k) / C][(first + k) % C] = lanes[k];
            }
            first += B;
        }
        for k in full..R * C {
            // SAFETY: the caller's contract.
            sums[k / C][k % C] = unsafe { S::reduce_sum(tile[k / C][k % C]) };
        }
        sums
    }

    /// The lane sums of 8 registers as one: lane `i` sums `v[i]` (two rounds of
    /// pairwise horizontal adds, then the two 128-bit halves added).
    #[inline(always)]
    unsafe fn sums8(v: [__m256; 8]) -> __m256 {
        // SAFETY: AVX, as the caller's contract.
        unsafe {
            // Per 128-bit half: [a0 + a1, a2 + a3, b0 + b1, b2 + b3], then the half's sums of 4 registers.
            let mut pairs = [v[0]; 4];
            for k in 0..4 {
                pairs[k] = _mm256_hadd_ps(v[2 * k], v[2 * k + 1]);
            }
            let (low, high) = (_mm256_hadd_ps(pairs[0], pairs[1]), _mm256_hadd_ps(pairs[2], pairs[3]));
            _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(low, high), _mm256_permute2f128_ps::<0x31>(low, high))
        }
    }

    /// The lane sums of 16 registers as one: lane `i` sums `v[i]`. Each step
    /// adds pairs of registers with their lanes interleaved, halving the lanes
    /// each one sums over: 15 adds and 30 shuffles for the 16 sums.
    #[inline(always)]
    unsafe fn sums16(v: [__m512; 16]) -> __m512 {
        // SAFETY: AVX-512 F, as the caller's contract.
        unsafe {
            // Per 128-bit block: [a0 + a2, b0 + b2, a1 + a3, b1 + b3] of `a = v[2k]`, `b = v[2k + 1]`.
            let mut w = [v[0]; 8];
            for k in 0..8 {
                let (a, b) = (v[2 * k], v[2 * k + 1]);
                w[k] = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
            }
            // Per block: the block's sums of `v[4k..4k + 4]`.
            let mut x = [v[0]; 4];
            for k in 0..4 {
                let (a, b) = (w[2 * k], w[2 * k + 1]);
                x[k] = _mm512_add_ps(_mm512_shuffle_ps::<0x44>(a, b), _mm512_shuffle_ps::<0xEE>(a, b));
            }
            // Blocks (0 + 1, 2 + 3) of two registers, then of all four: block `m` sums `x[m]`'s.
            let (y, z) = (halves16(x[0], x[1]), halves16(x[2], x[3]));
            halves16(y, z)
        }
    }

    /// `[a0 + a1, a2 + a3, b0 + b1, b2 + b3]` over the 128-bit blocks of `a` and `b`.
    #[inline(always)]
    unsafe fn halves16(a: __m512, b: __m512) -> __m512 {
        // SAFETY: AVX-512 F, as the caller's contract.
        unsafe { _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(a, b), _mm512_shuffle_f32x4::<0xDD>(a, b)) }
    }

    /// The first `n <= 8` lanes of `v` to `p`, by a masked store: lane `i` is
    /// written where `n > i`.
    #[inline(always)]
    unsafe fn store_first_ps256(p: *mut f32, v: __m256, n: usize) {
        // SAFETY: AVX2, as the caller's contract; only `n` lanes are written.
        unsafe {
            let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
            _mm256_maskstore_ps(p, mask, v)
        }
    }

    /// [`store_first_ps256`] for four f64 lanes.
    #[inline(always)]
    unsafe fn store_first_pd256(p: *mut f64, v: __m256d, n: usize) {
        // SAFETY: as in `store_first_ps256`.
        unsafe {
            let mask = _mm256_cmpgt_epi64(_mm256_set1_epi64x(n as i64), _mm256_setr_epi64x(0, 1, 2, 3));
            _mm256_maskstore_pd(p, mask, v)
        }
    }

    /// [`store_first_ps256`] for sixteen f32 lanes, by an AVX-512 write mask.
    #[inline(always)]
    unsafe fn store_first_ps512(p: *mut f32, v: __m512, n: usize) {
        // SAFETY: AVX-512 F, as the caller's contract; only `n` lanes are written.
        unsafe { _mm512_mask_storeu_ps(p, ((1u32 << n) - 1) as u16, v) }
    }

    /// [`store_first_ps512`] for eight f64 lanes.
    #[inline(always)]
    unsafe fn store_first_pd512(p: *mut f64, v: __m512d, n: usize) {
        // SAFETY: as in `store_first_ps512`.
        unsafe { _mm512_mask_storeu_pd(p, ((1u32 << n) - 1) as u8, v) }
    }

    /// Lanes `lo..hi` of eight from `p + lane`, the others zero, by a masked
    /// load: lane `i` is read where `lo <= i < hi`. A whole register takes a
    /// plain load: `vmaskmovps` costs more (MobileNet's depthwise layer ran
    /// 8% slower on AVX2 with every register masked).
    #[inline(always)]
    unsafe fn load_lanes_ps256(p: *const f32, lo: usize, hi: usize) -> __m256 {
        // SAFETY: AVX2, as the caller's contract; only lanes `lo..hi` are read.
        unsafe {
            if lo == 0 && hi == 8 {
                return _mm256_loadu_ps(p);
            }
            let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let from = _mm256_cmpgt_epi32(lane, _mm256_set1_epi32(lo as i32 - 1));
            let below = _mm256_cmpgt_epi32(_mm256_set1_epi32(hi as i32), lane);
            _mm256_maskload_ps(p, _mm256_and_si256(from, below))
        }
    }

    /// [`load_lanes_ps256`] for four f64 lanes.
    #[inline(always)]
    unsafe fn load_lanes_pd256(p: *const f64, lo: usize, hi: usize) -> __m256d {
        // SAFETY: as in `load_lanes_ps256`.
        unsafe {
            if lo == 0 && hi == 4 {
                return _mm256_loadu_pd(p);
            }
            let lane = _mm256_setr_epi64x(0, 1, 2, 3);
            let from = _mm256_cmpgt_epi64(lane, _mm256_set1_epi64x(lo as i64 - 1));
            let below = _mm256_cmpgt_epi64(_mm256_set1_epi64x(hi as i64), lane);
            _mm256_maskload_pd(p, _mm256_and_si256(from, below))
        }
    }

    /// [`load_lanes_ps256`] for sixteen f32 lanes, by an AVX-512 zeroing mask.
    #[inline(always)]
    unsafe fn load_lanes_ps512(p: *const f32, lo: usize, hi: usize) -> __m512 {
        // SAFETY: AVX-512 F, as the caller's contract; only lanes `lo..hi` are read.
        unsafe { _mm512_maskz_loadu_ps((((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as u16, p) }
    }

    /// [`load_lanes_ps512`] for eight f64 lanes.
    #[inline(always)]
    unsafe fn load_lanes_pd512(p: *const f64, lo: usize, hi: usize) -> __m512d {
        // SAFETY: as in `load_lanes_ps512`.
        unsafe { _mm512_maskz_loadu_pd((((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as u8, p) }
    }

    /// The even and the odd lanes of `a` followed by `b` (eight f32 each):
    /// within each 128-bit half, then its 64-bit pieces put in order.
    #[inline(always)]
    unsafe fn deinterleave_ps256(a: __m256, b: __m256) -> (__m256, __m256) {
        // SAFETY: AVX2, as the caller's contract.
        unsafe {
            let order = |v: __m256| _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)));
            (order(_mm256_shuffle_ps::<0b10_00_10_00>(a, b)), order(_mm256_shuffle_ps::<0b11_01_11_01>(a, b)))
        }
    }

    /// [`deinterleave_ps256`] for four f64 lanes.
    #[inline(always)]
    unsafe fn deinterleave_pd256(a: __m256d, b: __m256d) -> (__m256d, __m256d) {
        // SAFETY: AVX2, as the caller's contract.
        unsafe {
            let order = |v: __m256d| _mm256_permute4x64_pd::<0b11_01_10_00>(v);
            (order(_mm256_unpacklo_pd(a, b)), order(_mm256_unpackhi_pd(a, b)))
        }
    }

    /// [`deinterleave_ps256`] for sixteen f32 lanes: one two-source permute each.
    #[inline(always)]
    unsafe fn deinterleave_ps512(a: __m512, b: __m512) -> (__m512, __m512) {
        // SAFETY: AVX-512 F, as the caller's contract.
        unsafe {
            let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
            (_mm512_permutex2var_ps(a, even, b), _mm512_permutex2var_ps(a, odd, b))
        }
    }

    /// [`deinterleave_ps512`] for eight f64 lanes.
    #[inline(always)]
    unsafe fn deinterleave_pd512(a: __m512d, b: __m512d) -> (__m512d, __m512d) {
        // SAFETY: AVX-512 F, as the caller's contract.
        unsafe {
            let even = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
            let odd = _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15);
            (_mm512_permutex2var_pd(a, even, b), _mm512_permutex2var_pd(a, odd, b))
        }
    }

    // Horizontal sums halve the register until one lane is left: a fixed order.
    #[inline(always)]
    unsafe fn hsum_ps128(v: __m128) -> f32 {
        // SAFETY: SSE is part of x86-64.
        unsafe {
            let h = _mm_add_ps(v, _mm_movehl_ps(v, v));
            _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps::<1>(h, h)))
        }
    }

    #[inline(always)]
    unsafe fn hsum_pd128(v: __m128d) -> f64 {
        // SAFETY: SSE2 is part of x86-64.
        unsafe { _mm_cvtsd_f64(_mm_add_sd(v, _mm_unpackhi_pd(v, v))) }
    }

    x86_lanes!(
        Avx2,
        f32,
        __m256,
        8,
        _mm256_setzero_ps,
        _mm256_set1_ps,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_fmadd_ps,
        _mm256_add_ps,
        _mm256_sub_ps,
        store_first_ps256,
        load_lanes_ps256,
        deinterleave_ps256,
        |v| hsum_ps128(_mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v))),
        reduce_tile: blocks of 8
    );
    x86_lanes!(
        Avx2,
        f64,
        __m256d,
        4,
        _mm256_setzero_pd,
        _mm256_set1_pd,
        _mm256_loadu_pd,
        _mm256_storeu_pd,
        _mm256_fmadd_pd,
        _mm256_add_pd,
        _mm256_sub_pd,
        store_first_pd256,
        load_lanes_pd256,
        deinterleave_pd256,
        |v| hsum_pd128(_mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd::<1>(v)))
    );
    x86_lanes!(
        Avx512,
        f32,
        __m512,
        16,
        _mm512_setzero_ps,
        _mm512_set1_ps,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_fmadd_ps,
        _mm512_add_ps,
        _mm512_sub_ps,
        store_first_ps512,
        load_lanes_ps512,
        deinterleave_ps512,
        |v| {
            let h = _mm256_add_ps(
                _mm512_castps512_ps256(v),
                _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))),
            );
            hsum_ps128(_mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h)))
        },
        reduce_tile: blocks of 16
    );
    x86_lanes!(
        Avx512,
        f64,
        __m512d,
        8,
        _mm512_setzero_pd,
        _mm512_set1_pd,
        _mm512_loadu_pd,
        _mm512_storeu_pd,
        _mm512_fmadd_pd,
        _mm512_add_pd,
        _mm512_sub_pd,
        store_first_pd512,
        load_lanes_pd512,
        deinterleave_pd512,
        |v| {
            let h = _mm256_add_pd(_mm512_castpd512_pd256(v), _mm512_extractf64x4_pd::<1>(v));
            hsum_pd128(_mm_add_pd(_mm256_castpd256_pd128(h), _mm256_extractf128_pd::<1>(h)))
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_detected_isa_is_supported_and_portable_always_is() {
        assert!(CpuIsa::detect().is_supported());
        assert!(CpuIsa::Portable.is_supported());
        assert_eq!(CpuIsa::supported()[0], CpuIsa::Portable);
    }
}
