// geometry.cuh: index helpers over the three lifted spatial dims (D, H, W), row-major, in 64-bit.
#pragma once

#include "common.cuh"

__device__ __forceinline__ long long ceil_div(const long long a, const long long b) {
    return (a + b - 1) / b;
}

__device__ __forceinline__ long long volume3(const long long size[3]) {
    return size[0] * size[1] * size[2];
}

// The coordinates of flat index `i` in a box of `size`.
__device__ __forceinline__ void unflatten3(long long i, const long long size[3], long long coord[3]) {
    coord[2] = i % size[2];
    i /= size[2];
    coord[1] = i % size[1];
    coord[0] = i / size[1];
}

// The flat index of `coord` in a box of `size` (coordinates may lie outside the box: the result is
// then an offset, used only after a bounds check or as part of a sum that lands inside).
__device__ __forceinline__ long long flatten3(const long long coord[3], const long long size[3]) {
    return (coord[0] * size[1] + coord[1]) * size[2] + coord[2];
}

__device__ __forceinline__ bool inside3(const long long coord[3], const long long size[3]) {
    return coord[0] >= 0 && coord[0] < size[0] && coord[1] >= 0 && coord[1] < size[1] && coord[2] >= 0 &&
           coord[2] < size[2];
}

__device__ __forceinline__ long long gcd(long long a, long long b) {
    while (b != 0) {
        const long long r = a % b;
        a = b;
        b = r;
    }
    return a;
}

// One stride phase of the adjoint along one dim: the x positions i = first + j * stride (j < count)
// all meet the same taps t = tap_first + u * tap_step (u < taps), reading y at
// p = j + q0 - u * q_step (exact: (i + padding - t * dilation) / stride).
struct PhaseDim {
    long long first;
    long long count;
    long long tap_first;
    long long tap_step;
    long long taps;
    long long q0;
    long long q_step;
};

__device__ __forceinline__ PhaseDim phase_dim(const long long first, const long long in_size, const long long kernel,
                                              const long long stride, const long long dilation,
                                              const long long padding) {
    PhaseDim p;
    p.first = first;
    p.count = ceil_div(in_size - first, stride);
    const long long residue = (first + padding) % stride;
    const long long g = gcd(stride, dilation);
    p.tap_step = stride / g;
    p.q_step = dilation / g;
    // The taps with t * dilation ≡ residue (mod stride) are t ≡ tap_first (mod tap_step).
    p.tap_first = -1;
    for (long long t = 0; t < p.tap_step; ++t) {
        if ((t * dilation) % stride == residue) {
            p.tap_first = t;
            break;
        }
    }
    p.taps = (p.tap_first >= 0 && p.tap_first < kernel) ? ceil_div(kernel - p.tap_first, p.tap_step) : 0;
    p.q0 = p.tap_first >= 0 ? (first + padding - p.tap_first * dilation) / stride : 0;
    return p;
}
