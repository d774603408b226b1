//! Element types: f32, f64, f16 and bf16, each with the type it accumulates in.

use half::{bf16, f16};

/// The run-time name of an element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// `f32`.
    F32,
    /// `f64`.
    F64,
    /// `half::f16` (IEEE binary16).
    F16,
    /// `half::bf16` (bfloat16).
    BF16,
}

impl DType {
    /// All element types, in a fixed order.
    pub const ALL: [DType; 4] = [DType::F32, DType::F64, DType::F16, DType::BF16];

    /// The lower-case name PyTorch users know (`"f32"`, `"bf16"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    /// Size of one element in bytes.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F64 => 8,
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DType {
    type Err = crate::Error;

    /// Parses `"f32"`, `"f64"`, `"f16"` or `"bf16"`.
    ///
    /// ```
    /// use ferroconv::DType;
    /// assert_eq!("bf16".parse::<DType>().unwrap(), DType::BF16);
    /// assert!("f8".parse::<DType>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DType::ALL.into_iter().find(|d| d.name() == s).ok_or_else(|| crate::Error::InvalidArgument {
            what: "dtype",
            detail: format!("unknown element type {s:?} (f32, f64, f16, bf16)"),
        })
    }
}

/// A floating-point type the accumulator of a convolution is computed in (f32 or f64).
pub trait Accumulator:
    Copy
    + Send
    + Sync
    + Default
    + PartialEq
    + PartialOrd
    + std::fmt::Debug
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::AddAssign
    + std::iter::Sum
    + 'static
{
    /// Zero.
    const ZERO: Self;
    /// One.
    const ONE: Self;
    /// Rounds from f64 (exact for f64).
    fn from_f64(v: f64) -> Self;
    /// Widens to f64 (exact).
    fn to_f64(self) -> f64;
    /// True for NaN.
    fn is_nan(self) -> bool;
    /// True unless infinite or NaN.
    fn is_finite(self) -> bool;
    /// `self + a * b`, unfused, so scalar paths round alike on every target.
    fn mul_add(self, a: Self, b: Self) -> Self;
}

macro_rules! accumulator {
    ($t:ty) => {
        impl Accumulator for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            #[inline]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            #[inline]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            #[inline]
            fn mul_add(self, a: Self, b: Self) -> Self {
                self + a * b
            }
        }
    };
}
accumulator!(f32);
accumulator!(f64);

/// An element type of tensors: f32, f64, f16 or bf16.
///
/// Convolutions compute in [`Element::Accum`] (f32 for the half types, so a
/// long reduction is not rounded at every step) and round once when storing.
///
/// ```
/// use ferroconv::Element;
/// use half::bf16;
/// let x = bf16::from_f32(1.5);
/// assert_eq!(x.to_accum(), 1.5f32);
/// assert_eq!(<bf16 as Element>::from_accum(1.5f32), x);
/// ```
pub trait Element: Copy + Send + Sync + Default + PartialEq + std::fmt::Debug + 'static {
    /// The type sums are accumulated in.
    type Accum: Accumulator;
    /// The run-time name of this type.
    const DTYPE: DType;
    /// Widens to the accumulator type (exact).
    fn to_accum(self) -> Self::Accum;
    /// Rounds from the accumulator type (to nearest, ties to even).
    fn from_accum(v: Self::Accum) -> Self;
    /// Widens to f64 (exact).
    fn to_f64(self) -> f64;
    /// Rounds from f64 (to nearest, ties to even).
    fn from_f64(v: f64) -> Self;
    /// A quiet NaN, used to poison outputs in tests.
    fn nan() -> Self;
}

impl Element for f32 {
    type Accum = f32;
    const DTYPE: DType = DType::F32;
    #[inline]
    fn to_accum(self) -> f32 {
        self
    }
    #[inline]
    fn from_accum(v: f32) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn nan() -> Self {
        f32::NAN
    }
}

impl Element for f64 {
    type Accum = f64;
    const DTYPE: DType = DType::F64;
    #[inline]
    fn to_accum(self) -> f64 {
        self
    }
    #[inline]
    fn from_accum(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
    fn nan() -> Self {
        f64::NAN
    }
}

macro_rules! half_element {
    ($t:ty, $dtype:expr) => {
        impl Element for $t {
            type Accum = f32;
            const DTYPE: DType = $dtype;
            #[inline]
            fn to_accum(self) -> f32 {
                self.to_f32()
            }
            #[inline]
            fn from_accum(v: f32) -> Self {
                <$t>::from_f32(v)
            }
            fn to_f64(self) -> f64 {
                <$t>::to_f64(self)
            }
            fn from_f64(v: f64) -> Self {
                <$t>::from_f64(v)
            }
            fn nan() -> Self {
                <$t>::NAN
            }
        }
    };
}
half_element!(f16, DType::F16);
half_element!(bf16, DType::BF16);
