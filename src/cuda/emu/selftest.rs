//! The emulator's self-test hooks: its own test kernels (`kernels/emu/tests/`) and the shim's
//! half-type conversions, for the emulator's tests (tests/emu_*.rs). Not part of the library's API.

use std::ffi::c_void;

use super::EmuKernel;

include!(concat!(env!("OUT_DIR"), "/emu_selftest_kernels.rs"));

impl SelfTestKernel {
    /// The compiled kernel.
    pub fn kernel(self) -> EmuKernel {
        let kernel = EmuKernel::selftest(self as usize);
        // The table and this enum are generated from the same kernels.def by the same build step.
        kernel.filter(|k| k.name() == self.name()).expect("the self-test table follows kernels/emu/tests/kernels.def")
    }
}

/// The argument struct of every self-test kernel; its C++ twin is in `kernels/emu/tests/selftest.cuh`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SelfTestArgs {
    /// What the kernel reads.
    pub input: *const c_void,
    /// What the kernel writes.
    pub output: *mut c_void,
    /// Elements of `input`.
    pub n: i64,
    /// Kernel-specific.
    pub param: i64,
}

const _: () = assert!(size_of::<SelfTestArgs>() == 32 && align_of::<SelfTestArgs>() == 8);

/// The shim's `__float2half_rn`, as bits.
pub fn f32_to_f16_bits(value: f32) -> u16 {
    super::ffi::ferro_emu_f32_to_f16_bits(value)
}

/// The shim's `__half2float`, from bits.
pub fn f16_bits_to_f32(bits: u16) -> f32 {
    super::ffi::ferro_emu_f16_bits_to_f32(bits)
}

/// The shim's `__float2bfloat16_rn`, as bits.
pub fn f32_to_bf16_bits(value: f32) -> u16 {
    super::ffi::ferro_emu_f32_to_bf16_bits(value)
}

/// The shim's `__bfloat162float`, from bits.
pub fn bf16_bits_to_f32(bits: u16) -> f32 {
    super::ffi::ferro_emu_bf16_bits_to_f32(bits)
}
