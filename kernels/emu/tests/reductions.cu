// Self-test kernels that must compute the right thing under every fiber order: shared-memory and
// warp reductions, shuffles, atomics, coordinates, half-type conversions.
#include "selftest.cuh"

static constexpr unsigned int kFullMask = 0xFFFFFFFFu;

// out[blockIdx.x] = the sum of a grid-stride slice of in (float), reduced through `partial`
// (blockDim.x floats, blockDim.x a power of two). Without the loop's barrier a thread reads
// partial sums other threads have not written yet.
template <bool kBarrierInLoop>
__device__ void block_sum(const SelfTestArgs& args, float* partial) {
    const float* in = static_cast<const float*>(args.input);
    float* out = static_cast<float*>(args.output);
    const unsigned int t = threadIdx.x;
    float acc = 0.0f;
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + t; i < args.n;
         i += static_cast<long long>(gridDim.x) * blockDim.x) {
        acc += in[i];
    }
    partial[t] = acc;
    __syncthreads();
    for (unsigned int s = blockDim.x / 2; s > 0; s /= 2) {
        if (t < s) partial[t] += partial[t + s];
        if (kBarrierInLoop) __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = partial[0];
}

extern "C" __global__ void selftest_block_sum(const SelfTestArgs args) {
    __shared__ float partial[1024];
    block_sum<true>(args, partial);
}

extern "C" __global__ void selftest_block_sum_missing_barrier(const SelfTestArgs args) {
    __shared__ float partial[1024];
    block_sum<false>(args, partial);
}

extern "C" __global__ void selftest_block_sum_dynamic(const SelfTestArgs args) {
    FERRO_DYNAMIC_SHARED(float, partial);
    block_sum<true>(args, partial);
}

// out[block * blockDim.x + t] = the bits of dynamic shared memory before this block wrote it;
// then it writes it, so a later block on the same OS thread would see 1.0f if it were not re-poisoned.
extern "C" __global__ void selftest_dynamic_shared_poison(const SelfTestArgs args) {
    FERRO_DYNAMIC_SHARED(unsigned int, scratch);
    unsigned int* out = static_cast<unsigned int*>(args.output);
    const unsigned int t = threadIdx.x;
    out[blockIdx.x * blockDim.x + t] = scratch[t];
    scratch[t] = 0x3F800000u;
}

// Per warp w (32 full lanes): out[2w] = the sum by __shfl_down_sync (lane 0's), out[2w + 1] = the
// sum by a __shfl_xor_sync butterfly (lane 31's: every lane has it).
extern "C" __global__ void selftest_warp_sum(const SelfTestArgs args) {
    const float* in = static_cast<const float*>(args.input);
    float* out = static_cast<float*>(args.output);
    const long long g = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    const long long warp = g / warpSize;
    const int lane = static_cast<int>(threadIdx.x % warpSize);
    float down = in[g];
    float butterfly = in[g];
    for (int offset = warpSize / 2; offset > 0; offset /= 2) {
        down += __shfl_down_sync(kFullMask, down, offset);
        butterfly += __shfl_xor_sync(kFullMask, butterfly, offset);
    }
    if (lane == 0) out[2 * warp] = down;
    if (lane == warpSize - 1) out[2 * warp + 1] = butterfly;
}

// out[g] = one shuffle of in[g] (float), with param = kind | width << 2 | lane_arg << 8
// (kind 0: __shfl_sync, 1: __shfl_down_sync, 2: __shfl_xor_sync).
extern "C" __global__ void selftest_shuffle_probe(const SelfTestArgs args) {
    const float* in = static_cast<const float*>(args.input);
    float* out = static_cast<float*>(args.output);
    const long long g = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    const int kind = static_cast<int>(args.param & 3);
    const int width = static_cast<int>((args.param >> 2) & 63);
    const int lane_arg = static_cast<int>(args.param >> 8);
    const float v = in[g];
    float r;
    if (kind == 0) {
        r = __shfl_sync(kFullMask, v, lane_arg, width);
    } else if (kind == 1) {
        r = __shfl_down_sync(kFullMask, v, static_cast<unsigned int>(lane_arg), width);
    } else {
        r = __shfl_xor_sync(kFullMask, v, lane_arg, width);
    }
    out[g] = r;
}

// out[0] += every in[i], one atomicAdd each, from every thread of every block.
template <typename F>
__device__ void atomic_sum(const SelfTestArgs& args) {
    const F* in = static_cast<const F*>(args.input);
    F* out = static_cast<F*>(args.output);
    for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < args.n;
         i += static_cast<long long>(gridDim.x) * blockDim.x) {
        atomicAdd(out, in[i]);
    }
}

extern "C" __global__ void selftest_atomic_sum_f32(const SelfTestArgs args) { atomic_sum<float>(args); }
extern "C" __global__ void selftest_atomic_sum_f64(const SelfTestArgs args) { atomic_sum<double>(args); }

// Each thread writes its coordinates (12 unsigned ints) at its linear index in the grid.
extern "C" __global__ void selftest_coordinates(const SelfTestArgs args) {
    unsigned int* out = static_cast<unsigned int*>(args.output);
    const unsigned long long block = (static_cast<unsigned long long>(blockIdx.z) * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    const unsigned long long thread = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    unsigned int* mine = out + 12 * (block * blockDim.x * blockDim.y * blockDim.z + thread);
    const unsigned int values[12] = {threadIdx.x, threadIdx.y, threadIdx.z, blockIdx.x, blockIdx.y, blockIdx.z,
                                     blockDim.x,  blockDim.y,  blockDim.z,  gridDim.x,  gridDim.y,  gridDim.z};
    for (int i = 0; i < 12; ++i) mine[i] = values[i];
}

// out[i] = T(fma(in[i], 2, 1)) computed in the accumulator type, the way the library's templated
// kernels load and store their element types.
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_acc(float v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ float affine(float v) { return fmaf(v, 2.0f, 1.0f); }
__device__ __forceinline__ double affine(double v) { return fma(v, 2.0, 1.0); }

template <typename T, typename Acc>
__device__ void affine_kernel(const SelfTestArgs& args) {
    const T* in = static_cast<const T*>(args.input);
    T* out = static_cast<T*>(args.output);
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= args.n) return;
    const Acc r = affine(static_cast<Acc>(to_acc(in[i])));
    if constexpr (sizeof(Acc) == sizeof(T) && sizeof(T) == 8) {
        out[i] = r;
    } else {
        out[i] = from_acc<T>(static_cast<float>(r));
    }
}

extern "C" __global__ void selftest_affine_f32(const SelfTestArgs args) { affine_kernel<float, float>(args); }
extern "C" __global__ void selftest_affine_f64(const SelfTestArgs args) { affine_kernel<double, double>(args); }
extern "C" __global__ void selftest_affine_f16(const SelfTestArgs args) { affine_kernel<__half, float>(args); }
extern "C" __global__ void selftest_affine_bf16(const SelfTestArgs args) { affine_kernel<__nv_bfloat16, float>(args); }
