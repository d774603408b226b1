//! The runtime's C ABI (`kernels/emu/runtime.h`), declared by hand: keep the two in step.

use std::ffi::{c_char, c_int, c_void};

/// One row of a kernel table: `ferro_emu_kernel`.
#[repr(C)]
pub struct KernelEntry {
    pub name: *const c_char,
    pub entry: Option<unsafe extern "C" fn(args: *const c_void)>,
}

// SAFETY: the tables are immutable static data (string literals and function pointers) defined in C++.
unsafe impl Sync for KernelEntry {}

/// `ferro_emu_dim3`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Dim3 {
    pub x: u32,
    pub y: u32,
    pub z: u32,
}

/// `ferro_emu_allocation`.
#[repr(C)]
#[derive(Debug)]
pub struct Allocation {
    pub data: *mut c_void,
    pub base: *mut c_void,
    pub mapped: usize,
}

pub const OK: c_int = 0;
pub const INVALID_LAUNCH: c_int = 1;
pub const BARRIER_DIVERGENCE: c_int = 2;
pub const WARP_COLLECTIVE: c_int = 3;
pub const RESOURCES: c_int = 4;

unsafe extern "C" {
    pub fn ferro_emu_kernel_table(count: *mut usize) -> *const KernelEntry;
    pub fn ferro_emu_selftest_kernel_table(count: *mut usize) -> *const KernelEntry;
    pub fn ferro_emu_alloc(bytes: usize, align: usize, guard_before: c_int, out: *mut Allocation) -> c_int;
    pub fn ferro_emu_free(allocation: *const Allocation);
    #[allow(clippy::too_many_arguments)]
    pub fn ferro_emu_launch(
        kernel: *const KernelEntry,
        grid: Dim3,
        block: Dim3,
        shared_bytes: usize,
        args: *const c_void,
        seed: u64,
        os_threads: u32,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
    pub safe fn ferro_emu_f32_to_f16_bits(value: f32) -> u16;
    pub safe fn ferro_emu_f16_bits_to_f32(bits: u16) -> f32;
    pub safe fn ferro_emu_f32_to_bf16_bits(value: f32) -> u16;
    pub safe fn ferro_emu_bf16_bits_to_f32(bits: u16) -> f32;
}
