// The emulator's C ABI, shared by runtime.cpp, the generated kernel tables and (by hand) the Rust
// declarations in src/cuda/emu/ffi.rs. Keep the three in step.
#ifndef FERROCONV_EMU_RUNTIME_H
#define FERROCONV_EMU_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// A kernel entry point: unpacks its argument struct (`const KernelArgs*`) and runs the kernel
// body for the calling fiber's coordinates.
typedef void (*ferro_emu_entry)(const void* args);

// One row of a kernel table: the name in kernels.def and its trampoline.
typedef struct {
    const char* name;
    ferro_emu_entry entry;
} ferro_emu_kernel;

typedef struct {
    uint32_t x, y, z;
} ferro_emu_dim3;

// A guard-paged allocation: `data` is what kernels see; `base`/`mapped` are what munmap needs.
typedef struct {
    void* data;
    void* base;
    size_t mapped;
} ferro_emu_allocation;

// Launch outcomes (the message buffer says more).
enum {
    FERRO_EMU_OK = 0,
    FERRO_EMU_INVALID_LAUNCH = 1,     // a grid, block or shared size CUDA would refuse
    FERRO_EMU_BARRIER_DIVERGENCE = 2, // threads of a block disagree on the __syncthreads they reach
    FERRO_EMU_WARP_COLLECTIVE = 3,    // a warp collective some lanes of the warp never join, or a bad mask/width
    FERRO_EMU_RESOURCES = 4,          // the host ran out of memory or threads
};

// The library's kernels (kernels/kernels.def order) and the emulator's self-test kernels
// (kernels/emu/tests/kernels.def order); `count` receives the number of rows.
const ferro_emu_kernel* ferro_emu_kernel_table(size_t* count);
const ferro_emu_kernel* ferro_emu_selftest_kernel_table(size_t* count);

// Maps `bytes` (0 allowed) with a PROT_NONE guard page on both sides and the data placed against
// the guard after it (`guard_before == 0`; its start aligned to `align`) or against the guard
// before it (`guard_before != 0`; page-aligned start). The data is filled with 0xFF bytes (NaN
// in every float format). Returns 0, or FERRO_EMU_RESOURCES with `out` zeroed.
int ferro_emu_alloc(size_t bytes, size_t align, int guard_before, ferro_emu_allocation* out);
void ferro_emu_free(const ferro_emu_allocation* allocation);

// Runs `kernel` over `grid` x `block` with `args` (a pointer to its argument struct), `shared_bytes`
// of dynamic shared memory per block, on `os_threads` OS threads (at least 1). `seed` picks the
// fibers' order between barriers (forward, reverse or a random permutation drawn from it) and the
// order blocks are handed out. Returns a FERRO_EMU_* code; on failure, a message (NUL-terminated,
// truncated to `error_len`) is written to `error`.
int ferro_emu_launch(const ferro_emu_kernel* kernel, ferro_emu_dim3 grid, ferro_emu_dim3 block, size_t shared_bytes,
                     const void* args, uint64_t seed, uint32_t os_threads, char* error, size_t error_len);

// The shim's conversions, exported so the Rust tests can compare them with the `half` crate.
uint16_t ferro_emu_f32_to_f16_bits(float value);
float ferro_emu_f16_bits_to_f32(uint16_t bits);
uint16_t ferro_emu_f32_to_bf16_bits(float value);
float ferro_emu_bf16_bits_to_f32(uint16_t bits);

#ifdef __cplusplus
}
#endif

#endif  // FERROCONV_EMU_RUNTIME_H
