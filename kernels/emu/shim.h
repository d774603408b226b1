// The emulator's CUDA shim: forced in first (`-include kernels/emu/shim.h -DFERRO_EMU`) when the
// kernels are compiled as host C++, so the unchanged kernel sources run on the CPU.
//
// It provides exactly the device features of the kernel contract (CUDA-CONTRACT.md): qualifiers,
// the coordinates, static and dynamic shared memory, __syncthreads, full-mask warp shuffles,
// float/double atomicAdd, __half/__nv_bfloat16 with their conversions, and the math functions.
// A kernel using anything else fails to compile here, which is the point.
//
// Execution model (runtime.cpp): each block runs on one OS thread; its CUDA threads are fibers
// that switch only at __syncthreads and at warp collectives. So `static thread_local` is per-block
// storage, and the coordinates are read through a thread-local pointer the scheduler sets before
// it resumes a fiber.
#ifndef FERROCONV_EMU_SHIM_H
#define FERROCONV_EMU_SHIM_H

#ifndef FERRO_EMU
#error "shim.h is the emulator's forced include: compile with -DFERRO_EMU"
#endif

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>

// ---- Qualifiers ----------------------------------------------------------------------------
// (`__restrict__` is already a GCC/Clang keyword.)
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

// Static shared memory: one instance per OS thread, and a block's fibers all run on one OS thread.
// Like CUDA shared memory it is uninitialised at block start (it holds the previous block's data).
#define __shared__ static thread_local

// ---- Coordinates ---------------------------------------------------------------------------
struct uint3 {
    unsigned int x, y, z;
};

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

namespace ferro_emu {

// The CUDA coordinates of the fiber that is running on this OS thread.
struct Coordinates {
    uint3 thread_idx;
    uint3 block_idx;
    dim3 block_dim;
    dim3 grid_dim;
};

// Set by the scheduler before it resumes a fiber; plain `__thread` (no TLS wrapper call).
extern __thread const Coordinates* current_coordinates;

// Provided by runtime.cpp; each may suspend the calling fiber.
void block_barrier();
uint64_t warp_shuffle(unsigned int mask, uint64_t bits, int kind, int lane_arg, int width);
void* dynamic_shared_memory();

enum ShuffleKind : int { shuffle_index = 0, shuffle_down = 1, shuffle_xor = 2 };

}  // namespace ferro_emu

#define threadIdx (::ferro_emu::current_coordinates->thread_idx)
#define blockIdx (::ferro_emu::current_coordinates->block_idx)
#define blockDim (::ferro_emu::current_coordinates->block_dim)
#define gridDim (::ferro_emu::current_coordinates->grid_dim)

static constexpr int warpSize = 32;

// Dynamic shared memory: the launch's `shared_bytes`, 16-byte aligned, NaN-poisoned (all bits set)
// at each block start and followed by a guard page. Use it inside a kernel or device function.
#define FERRO_DYNAMIC_SHARED(Type, name) Type* const name = static_cast<Type*>(::ferro_emu::dynamic_shared_memory())

// ---- Barriers and warp collectives ---------------------------------------------------------
inline void __syncthreads() { ::ferro_emu::block_barrier(); }

namespace ferro_emu {

template <typename T>
inline T shuffle(unsigned int mask, T value, ShuffleKind kind, int lane_arg, int width) {
    static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= sizeof(uint64_t),
                  "warp shuffles move values of at most 8 bytes");
    uint64_t bits = 0;
    memcpy(&bits, &value, sizeof(T));
    bits = warp_shuffle(mask, bits, kind, lane_arg, width);
    T out;
    memcpy(&out, &bits, sizeof(T));
    return out;
}

}  // namespace ferro_emu

template <typename T>
inline T __shfl_sync(unsigned int mask, T var, int src_lane, int width = warpSize) {
    return ::ferro_emu::shuffle(mask, var, ::ferro_emu::shuffle_index, src_lane, width);
}

template <typename T>
inline T __shfl_down_sync(unsigned int mask, T var, unsigned int delta, int width = warpSize) {
    return ::ferro_emu::shuffle(mask, var, ::ferro_emu::shuffle_down, static_cast<int>(delta), width);
}

template <typename T>
inline T __shfl_xor_sync(unsigned int mask, T var, int lane_mask, int width = warpSize) {
    return ::ferro_emu::shuffle(mask, var, ::ferro_emu::shuffle_xor, lane_mask, width);
}

// ---- Atomics (blocks run on several OS threads at once) -----------------------------------
namespace ferro_emu {

template <typename F>
inline F atomic_add_float(F* address, F value) {
    F old;
    __atomic_load(address, &old, __ATOMIC_RELAXED);
    F desired;
    do {
        desired = old + value;
    } while (!__atomic_compare_exchange(address, &old, &desired, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return old;
}

}  // namespace ferro_emu

inline float atomicAdd(float* address, float value) { return ::ferro_emu::atomic_add_float(address, value); }
inline double atomicAdd(double* address, double value) { return ::ferro_emu::atomic_add_float(address, value); }

// ---- Half types (bit-exact with Rust's `half` crate: round to nearest even, NaN kept quiet) --
namespace ferro_emu {

inline uint32_t float_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

inline float float_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

// Shifts `value` right by `shift` (>= 1), rounding to nearest, ties to even.
inline uint32_t shift_right_round_even(uint32_t value, unsigned int shift) {
    const uint32_t kept = value >> shift;
    const uint32_t rest = value & ((1u << shift) - 1);
    const uint32_t half_way = 1u << (shift - 1);
    return kept + ((rest > half_way || (rest == half_way && (kept & 1))) ? 1 : 0);
}

inline uint16_t f32_to_f16_bits(float f) {
    const uint32_t u = float_bits(f);
    const uint32_t sign = (u >> 16) & 0x8000u;
    const uint32_t exponent = (u >> 23) & 0xFFu;
    const uint32_t mantissa = u & 0x7FFFFFu;
    if (exponent == 0xFF) {  // infinity, or NaN made quiet with its top payload bits kept
        return static_cast<uint16_t>(sign | 0x7C00u | (mantissa ? 0x200u | (mantissa >> 13) : 0));
    }
    const int half_exponent = static_cast<int>(exponent) - 127 + 15;
    if (half_exponent >= 0x1F) return static_cast<uint16_t>(sign | 0x7C00u);
    if (half_exponent <= 0) {  // a subnormal half (or zero): the implicit bit joins the shift
        const unsigned int shift = static_cast<unsigned int>(14 - half_exponent);
        if (shift > 24) return static_cast<uint16_t>(sign);
        return static_cast<uint16_t>(sign | shift_right_round_even(mantissa | 0x800000u, shift));
    }
    // A carry out of the mantissa correctly bumps the exponent (up to infinity).
    const uint32_t magnitude = (static_cast<uint32_t>(half_exponent) << 10) + shift_right_round_even(mantissa, 13);
    return static_cast<uint16_t>(sign | magnitude);
}

inline float f16_bits_to_f32(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exponent = (h >> 10) & 0x1Fu;
    uint32_t mantissa = h & 0x3FFu;
    if (exponent == 0x1F) return float_from_bits(sign | 0x7F800000u | (mantissa ? 0x400000u | (mantissa << 13) : 0));
    if (exponent != 0) return float_from_bits(sign | ((exponent + 127 - 15) << 23) | (mantissa << 13));
    if (mantissa == 0) return float_from_bits(sign);
    int e = 127 - 15 + 1;  // normalise the subnormal
    while (!(mantissa & 0x400u)) {
        mantissa <<= 1;
        --e;
    }
    return float_from_bits(sign | (static_cast<uint32_t>(e) << 23) | ((mantissa & 0x3FFu) << 13));
}

inline uint16_t f32_to_bf16_bits(float f) {
    const uint32_t u = float_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
    return static_cast<uint16_t>(shift_right_round_even(u, 16));  // a carry rounds up to infinity
}

inline float bf16_bits_to_f32(uint16_t b) {
    uint32_t u = static_cast<uint32_t>(b) << 16;
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) u |= 0x400000u;  // quiet NaN
    return float_from_bits(u);
}

}  // namespace ferro_emu

// The storage types: two bytes, no arithmetic (kernels compute in their accumulator type);
// conversions are explicit and round to nearest even, like CUDA's.
struct __half {
    uint16_t __x;
    __half() = default;
    explicit __half(float f) : __x(::ferro_emu::f32_to_f16_bits(f)) {}
    explicit operator float() const { return ::ferro_emu::f16_bits_to_f32(__x); }
};

struct __nv_bfloat16 {
    uint16_t __x;
    __nv_bfloat16() = default;
    explicit __nv_bfloat16(float f) : __x(::ferro_emu::f32_to_bf16_bits(f)) {}
    explicit operator float() const { return ::ferro_emu::bf16_bits_to_f32(__x); }
};

static_assert(sizeof(__half) == 2 && sizeof(__nv_bfloat16) == 2, "half types are two bytes");

inline float __half2float(__half h) { return ::ferro_emu::f16_bits_to_f32(h.__x); }
inline __half __float2half_rn(float f) { return __half(f); }
inline __half __float2half(float f) { return __half(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return ::ferro_emu::bf16_bits_to_f32(b.__x); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }

// ---- Math (fmaf, fma, fminf, fmaxf, sqrtf come from <math.h>) ------------------------------
// CUDA's integer and floating min/max overloads.
#define FERRO_EMU_MIN_MAX(T)                                 \
    inline T min(T a, T b) { return b < a ? b : a; }         \
    inline T max(T a, T b) { return a < b ? b : a; }
FERRO_EMU_MIN_MAX(int)
FERRO_EMU_MIN_MAX(unsigned int)
FERRO_EMU_MIN_MAX(long)
FERRO_EMU_MIN_MAX(unsigned long)
FERRO_EMU_MIN_MAX(long long)
FERRO_EMU_MIN_MAX(unsigned long long)
#undef FERRO_EMU_MIN_MAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

#endif  // FERROCONV_EMU_SHIM_H
