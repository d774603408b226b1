//! Guard-paged host buffers: the emulator's device memory.

use std::ffi::c_void;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};

use super::ffi;
use crate::error::{Error, Result};

/// Element types an [`EmuBuffer`] can hold: plain data, for which every bit pattern is a valid
/// value (so the NaN poison, all bits set, can be read back) and which has no padding.
///
/// # Safety
///
/// Implement it only for `Copy` types without padding bytes for which every bit pattern of
/// `size_of::<Self>()` bytes is a valid value.
pub unsafe trait PlainData: Copy + Send + Sync + 'static {}

macro_rules! plain_data {
    ($($t:ty),*) => {
        // SAFETY: primitive numbers: no padding, every bit pattern valid.
        $(unsafe impl PlainData for $t {})*
    };
}
plain_data!(u8, u16, u32, u64, i8, i16, i32, i64, f32, f64, half::f16, half::bf16);

/// Which side of a buffer is flush against its guard page. Both sides have one; the flush side
/// catches an access one element out, the other side (which has up to a page of slack) catches
/// accesses further out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuardSide {
    /// The buffer ends where the guard page after it starts: catches overruns.
    After,
    /// The buffer starts where the guard page before it ends: catches underruns.
    Before,
}

impl GuardSide {
    /// `After` and `Before` in turn, process-wide, so both kinds of bug are caught over a run.
    pub fn alternate() -> GuardSide {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        if NEXT.fetch_add(1, Ordering::Relaxed).is_multiple_of(2) { GuardSide::After } else { GuardSide::Before }
    }
}

/// A buffer of `len` values of `T` in emulated device memory: a host mapping with a
/// `PROT_NONE` guard page on each side, so an out-of-bounds access by a kernel crashes the
/// process (with a message naming the kernel, block and thread) instead of going unnoticed.
///
/// A new buffer is poisoned: every byte is `0xFF`, which is NaN in every float format.
///
/// ```
/// use ferroconv::cuda::emu::EmuBuffer;
/// # fn main() -> ferroconv::Result<()> {
/// let mut buffer = EmuBuffer::from_slice(&[1.0f32, 2.0, 3.0])?;
/// assert_eq!(buffer.as_slice(), &[1.0, 2.0, 3.0]);
/// buffer.poison();
/// assert!(buffer.as_slice().iter().all(|v| v.is_nan()));
/// # Ok(()) }
/// ```
pub struct EmuBuffer<T: PlainData> {
    allocation: ffi::Allocation,
    len: usize,
    guard: GuardSide,
    _values: PhantomData<T>,
}

// SAFETY: an EmuBuffer owns its mapping exclusively, like a Box<[T]>; the raw pointers in
// `allocation` are never shared outside borrows of the buffer.
unsafe impl<T: PlainData> Send for EmuBuffer<T> {}
// SAFETY: as above; shared access only reads.
unsafe impl<T: PlainData> Sync for EmuBuffer<T> {}

impl<T: PlainData> EmuBuffer<T> {
    /// A poisoned buffer of `len` values, flush against the guard side [`GuardSide::alternate`] picks.
    pub fn new(len: usize) -> Result<Self> {
        Self::with_guard(len, GuardSide::alternate())
    }

    /// A poisoned buffer of `len` values, flush against the guard page on side `guard`.
    pub fn with_guard(len: usize, guard: GuardSide) -> Result<Self> {
        let bytes = len
            .checked_mul(size_of::<T>())
            .ok_or_else(|| Error::overflow("emulator buffer", format!("{len} elements of {} bytes", size_of::<T>())))?;
        let mut allocation = ffi::Allocation { data: std::ptr::null_mut(), base: std::ptr::null_mut(), mapped: 0 };
        // SAFETY: `allocation` is a valid place for the runtime to write its result to.
        let code = unsafe {
            ffi::ferro_emu_alloc(bytes, align_of::<T>(), i32::from(guard == GuardSide::Before), &mut allocation)
        };
        if code != ffi::OK {
            return Err(Error::AllocationFailed { what: "emulator buffer", bytes });
        }
        Ok(EmuBuffer { allocation, len, guard, _values: PhantomData })
    }

    /// A buffer holding a copy of `values`.
    pub fn from_slice(values: &[T]) -> Result<Self> {
        let mut buffer = Self::new(values.len())?;
        buffer.as_mut_slice().copy_from_slice(values);
        Ok(buffer)
    }

    /// The number of values.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no values.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The side whose guard page the buffer is flush against.
    pub fn guard_side(&self) -> GuardSide {
        self.guard
    }

    /// The values.
    pub fn as_slice(&self) -> &[T] {
        // SAFETY: `data` points to `len` values of T inside the readable part of the mapping, aligned
        // for T (the runtime aligns it, also for len 0), which this buffer owns; T is PlainData, so
        // any bytes there (poison included) are valid values.
        unsafe { std::slice::from_raw_parts(self.allocation.data.cast::<T>(), self.len) }
    }

    /// The values, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as in `as_slice`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.allocation.data.cast::<T>(), self.len) }
    }

    /// Sets every byte to `0xFF` (NaN in every float format), so an element a kernel should
    /// write but does not shows up.
    pub fn poison(&mut self) {
        let bytes = self.len * size_of::<T>();
        // SAFETY: the `bytes` bytes from `data` are this buffer's, writable, and exclusively borrowed.
        unsafe { std::ptr::write_bytes(self.allocation.data.cast::<u8>(), 0xFF, bytes) };
    }

    /// The address a kernel reads the buffer at (`const void*` in an argument struct).
    pub fn device_ptr(&self) -> *const c_void {
        self.allocation.data
    }

    /// The address a kernel writes the buffer at (`void*` in an argument struct).
    pub fn device_ptr_mut(&mut self) -> *mut c_void {
        self.allocation.data
    }
}

impl<T: PlainData + fmt::Debug> fmt::Debug for EmuBuffer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmuBuffer").field("len", &self.len).field("guard", &self.guard).finish_non_exhaustive()
    }
}

impl<T: PlainData> Drop for EmuBuffer<T> {
    fn drop(&mut self) {
        // SAFETY: `allocation` came from ferro_emu_alloc and is freed exactly once, here.
        unsafe { ffi::ferro_emu_free(&self.allocation) };
    }
}
