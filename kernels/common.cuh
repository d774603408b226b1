// common.cuh: what every kernel shares. KernelArgs (the one by-value parameter of every entry point; its
// Rust twin is src/cuda/params.rs), element conversions, launch constants, a deterministic block sum and
// the per-dtype instantiation macro.
//
// Compiles three ways: nvcc (__CUDACC__), NVRTC (__CUDACC_RTC__, no headers at all) and host C++ for the
// emulator (FERRO_EMU, with kernels/emu/shim.h forced in first, which provides the CUDA vocabulary).
#pragma once

#if defined(__CUDACC_RTC__)
// NVRTC ships no cuda_fp16.h / cuda_bf16.h, so the two storage types and their four conversions are
// written here in plain integer C++, rounding to nearest even exactly as cvt.rn does.
struct __half {
    unsigned short bits;
};
struct __nv_bfloat16 {
    unsigned short bits;
};

__device__ __forceinline__ float __half2float(const __half h) {
    const unsigned int sign = (unsigned int)(h.bits & 0x8000u) << 16;
    const unsigned int exponent = (h.bits >> 10) & 0x1fu;
    const unsigned int mantissa = h.bits & 0x3ffu;
    if (exponent == 0x1fu) {  // infinity or NaN
        return __uint_as_float(sign | 0x7f800000u | (mantissa << 13));
    }
    if (exponent != 0) {
        return __uint_as_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
    }
    // Zero or subnormal: mantissa * 2^-24, exact in float.
    const float magnitude = (float)mantissa * 5.9604644775390625e-8f;
    return sign ? -magnitude : magnitude;
}

__device__ __forceinline__ __half __float2half_rn(const float f) {
    const unsigned int u = __float_as_uint(f);
    const unsigned short sign = (unsigned short)((u >> 16) & 0x8000u);
    const unsigned int magnitude = u & 0x7fffffffu;
    __half h;
    if (magnitude > 0x7f800000u) {  // NaN: keep it quiet
        h.bits = sign | 0x7e00u | (unsigned short)((magnitude >> 13) & 0x3ffu);
    } else if (magnitude >= 0x477ff000u) {  // rounds to infinity (65520 and up)
        h.bits = sign | 0x7c00u;
    } else if (magnitude >= 0x38800000u) {  // a normal half: rebias the exponent, round on bit 13
        const unsigned int rebiased = magnitude - 0x38000000u;
        h.bits = sign | (unsigned short)((rebiased + 0x0fffu + ((rebiased >> 13) & 1u)) >> 13);
    } else if (magnitude <= 0x33000000u) {  // 2^-25 and below round to zero (2^-25 is a tie, to even)
        h.bits = sign;
    } else {  // a subnormal half: the float's mantissa in units of 2^-24, rounded to nearest even
        const unsigned int mantissa = (magnitude & 0x7fffffu) | 0x800000u;
        const unsigned int shift = 126u - (magnitude >> 23);
        const unsigned int kept = mantissa >> shift;
        const unsigned int rest = mantissa & ((1u << shift) - 1u);
        const unsigned int half_way = 1u << (shift - 1u);
        const unsigned int rounded = kept + ((rest > half_way || (rest == half_way && (kept & 1u))) ? 1u : 0u);
        h.bits = sign | (unsigned short)rounded;
    }
    return h;
}

__device__ __forceinline__ float __bfloat162float(const __nv_bfloat16 b) {
    return __uint_as_float((unsigned int)b.bits << 16);
}

__device__ __forceinline__ __nv_bfloat16 __float2bfloat16_rn(const float f) {
    const unsigned int u = __float_as_uint(f);
    __nv_bfloat16 b;
    if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep it quiet
        b.bits = (unsigned short)((u >> 16) | 0x40u);
    } else {
        b.bits = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
    return b;
}
#elif defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

// Dynamic shared memory, the one way kernels may declare it (the emulator's shim defines its own).
#ifndef FERRO_DYNAMIC_SHARED
#define FERRO_DYNAMIC_SHARED(Type, name)                               \
    extern __shared__ __align__(16) unsigned char ferro_dynamic_smem[]; \
    Type* name = reinterpret_cast<Type*>(ferro_dynamic_smem)
#endif

// The parameter of every kernel, by value. Geometry in the terms of src/geometry.rs: the correlation
// y = x * w with x [batch, in_channels, in_size], y [batch, out_channels, out_size] and
// w [out_channels, in_channels / groups, kernel_size], spatial sizes lifted to three dims (D, H, W).
// Which buffers a kernel reads and writes is in the comment at the top of each kernel.
// Keep in sync with src/cuda/params.rs (which asserts the size).
struct KernelArgs {
    const void* x;
    const void* w;
    const void* y;
    const void* bias;  // null: no bias
    void* out;         // the buffer the kernel writes (when it writes its result directly)
    void* partials;    // per-split partial sums (in the accumulator type) of a split reduction
    long long batch;
    long long groups;
    long long in_channels;
    long long out_channels;
    long long in_size[3];
    long long out_size[3];
    long long kernel_size[3];
    long long stride[3];
    long long dilation[3];
    long long padding_lo[3];
    long long padding_hi[3];
    long long padding_mode;  // FERRO_PADDING_*
    long long activation;    // FERRO_ACTIVATION_*
    long long splits;        // chunks of a split reduction; 1: the kernel writes `out` itself
    long long split_length;  // reduction elements per chunk (the last chunk may be shorter)
    long long length;        // elements of the reduction's result (the stride between partials)
    long long spare[3];
};

#define FERRO_PADDING_ZEROS 0
#define FERRO_PADDING_REFLECT 1
#define FERRO_PADDING_REPLICATE 2
#define FERRO_PADDING_CIRCULAR 3

#define FERRO_ACTIVATION_IDENTITY 0
#define FERRO_ACTIVATION_RELU 1

// Threads per block of every kernel, and warps (src/cuda/plan.rs: BLOCK_THREADS, WARPS_PER_BLOCK).
#define FERRO_BLOCK_THREADS 256
#define FERRO_WARPS_PER_BLOCK (FERRO_BLOCK_THREADS / 32)

// Element <-> accumulator. T is float, double, __half or __nv_bfloat16; Acc is float or double.
template <typename T, typename Acc>
struct Convert;

template <>
struct Convert<float, float> {
    static __device__ __forceinline__ float load(const float v) { return v; }
    static __device__ __forceinline__ float store(const float v) { return v; }
};

template <>
struct Convert<double, double> {
    static __device__ __forceinline__ double load(const double v) { return v; }
    static __device__ __forceinline__ double store(const double v) { return v; }
};

template <>
struct Convert<__half, float> {
    static __device__ __forceinline__ float load(const __half v) { return __half2float(v); }
    static __device__ __forceinline__ __half store(const float v) { return __float2half_rn(v); }
};

template <>
struct Convert<__nv_bfloat16, float> {
    static __device__ __forceinline__ float load(const __nv_bfloat16 v) { return __bfloat162float(v); }
    static __device__ __forceinline__ __nv_bfloat16 store(const float v) { return __float2bfloat16_rn(v); }
};

template <typename T, typename Acc>
__device__ __forceinline__ Acc load_acc(const T* p, const long long i) {
    return Convert<T, Acc>::load(p[i]);
}

template <typename T, typename Acc>
__device__ __forceinline__ void store_acc(T* p, const long long i, const Acc v) {
    p[i] = Convert<T, Acc>::store(v);
}

template <typename Acc>
__device__ __forceinline__ Acc activate(const long long activation, const Acc v) {
    return (activation == FERRO_ACTIVATION_RELU && !(v > Acc(0))) ? Acc(0) : v;
}

// Grid-stride loops: every thread of the grid visits indices first, first + stride, ...
__device__ __forceinline__ long long grid_first_index() {
    return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ long long grid_stride() {
    return (long long)gridDim.x * blockDim.x;
}

// The sum of `v` over the warp, in a fixed order; valid in lane 0. Every lane of the warp must call it.
template <typename Acc>
__device__ __forceinline__ Acc warp_sum(Acc v) {
    for (int offset = 16; offset > 0; offset /= 2) {
        v += __shfl_down_sync(0xffffffffu, v, offset);
    }
    return v;
}

// The sum of `v` over the block, in a fixed order (so results are reproducible run to run); valid in
// thread 0. Every thread of the block must call it; blockDim.x must be a multiple of 32.
template <typename Acc>
__device__ Acc block_sum(Acc v) {
    __shared__ Acc warp_sums[32];
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    v = warp_sum(v);
    if (lane == 0) {
        warp_sums[warp] = v;
    }
    __syncthreads();
    if (warp == 0) {
        v = warp_sum(lane < (int)(blockDim.x / 32) ? warp_sums[lane] : Acc(0));
    }
    __syncthreads();  // warp_sums may be reused by the caller's next call
    return v;
}

// A reduction split in chunks: where chunk `split` of it begins and ends.
__device__ __forceinline__ long long split_begin(const KernelArgs& a, const long long split) {
    return split * a.split_length;
}

// Writes the result of chunk `split` for output element `i`: straight to `out` when there is one chunk,
// otherwise to the partials, summed later by sum_partials.
template <typename T, typename Acc>
__device__ __forceinline__ void store_reduced(const KernelArgs& a, const long long split, const long long i,
                                              const Acc v) {
    if (a.splits == 1) {
        store_acc<T, Acc>(static_cast<T*>(a.out), i, v);
    } else {
        static_cast<Acc*>(a.partials)[split * a.length + i] = v;
    }
}

// The four extern "C" entry points of a kernel template `family<T, Acc>(const KernelArgs&)`, named
// family_f32, family_f16, family_bf16 and family_f64 as in kernels.def, with at least `min_blocks` blocks
// of FERRO_BLOCK_THREADS resident per multiprocessor (which caps registers per thread).
#define FERRO_INSTANTIATE_WITH_OCCUPANCY(family, min_blocks)                                                  \
    extern "C" __global__ void __launch_bounds__(FERRO_BLOCK_THREADS, min_blocks)                            \
        family##_f32(const KernelArgs args) {                                                                \
        family<float, float>(args);                                                                          \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(FERRO_BLOCK_THREADS, min_blocks)                            \
        family##_f16(const KernelArgs args) {                                                                \
        family<__half, float>(args);                                                                         \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(FERRO_BLOCK_THREADS, min_blocks)                            \
        family##_bf16(const KernelArgs args) {                                                               \
        family<__nv_bfloat16, float>(args);                                                                  \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(FERRO_BLOCK_THREADS, min_blocks)                            \
        family##_f64(const KernelArgs args) {                                                                \
        family<double, double>(args);                                                                        \
    }

#define FERRO_INSTANTIATE(family) FERRO_INSTANTIATE_WITH_OCCUPANCY(family, 1)
