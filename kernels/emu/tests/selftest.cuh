// The emulator's own test kernels (kernels/emu/tests/*.cu): their argument struct.
// Its Rust twin is `SelfTestArgs` in src/cuda/emu/selftest.rs. These kernels exist to test the
// emulator (barriers, shuffles, atomics, guard pages, error reports), not the library.
#ifndef FERROCONV_EMU_SELFTEST_CUH
#define FERROCONV_EMU_SELFTEST_CUH

struct SelfTestArgs {
    const void* input;
    void* output;
    long long n;      // elements of `input`
    long long param;  // kernel-specific
};

#endif
