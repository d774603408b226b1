// Self-test kernels with the bugs the emulator must report: divergent barriers, warp collectives
// some lanes never join, accesses outside a buffer.
#include "selftest.cuh"

// Thread `param` returns before the barrier the others wait at.
extern "C" __global__ void selftest_early_return(const SelfTestArgs args) {
    float* out = static_cast<float*>(args.output);
    if (threadIdx.x == args.param) return;
    __syncthreads();
    out[threadIdx.x] = 1.0f;
}

// Threads below 16 reach one more barrier than the others.
extern "C" __global__ void selftest_divergent_barriers(const SelfTestArgs args) {
    float* out = static_cast<float*>(args.output);
    __syncthreads();
    if (threadIdx.x < 16) __syncthreads();
    out[threadIdx.x] = 1.0f;
}

// Lane `param` of each warp returns; the others shuffle with the full mask.
extern "C" __global__ void selftest_shuffle_after_return(const SelfTestArgs args) {
    float* out = static_cast<float*>(args.output);
    if (threadIdx.x % warpSize == args.param) return;
    out[threadIdx.x] = __shfl_xor_sync(0xFFFFFFFFu, 1.0f, 1);
}

// A shuffle naming half the warp: outside the contract (full mask only).
extern "C" __global__ void selftest_shuffle_partial_mask(const SelfTestArgs args) {
    float* out = static_cast<float*>(args.output);
    out[threadIdx.x] = __shfl_sync(0x0000FFFFu, 1.0f, 0);
}

// Thread 0 of block 0 writes out[n]: one element past the end of an n-element output.
extern "C" __global__ void selftest_write_past_end(const SelfTestArgs args) {
    float* out = static_cast<float*>(args.output);
    if (threadIdx.x == 0 && blockIdx.x == 0) out[args.n] = 1.0f;
}

// Thread 0 of block 0 copies in[-1], one element before the start of the input.
extern "C" __global__ void selftest_read_before_start(const SelfTestArgs args) {
    const float* in = static_cast<const float*>(args.input);
    float* out = static_cast<float*>(args.output);
    if (threadIdx.x == 0 && blockIdx.x == 0) out[0] = in[-1];
}
