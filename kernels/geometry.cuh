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

// One stride phase of the adjoint: the x positions i = first + j * stride (j < count), per dim, all meet
// the same taps t = tap_first + u * tap_step (u < taps), reading y at p = j + q0 - u * q_step
// (exactly (i + padding - t * dilation) / stride). A phase is given by its first position in each dim.
struct Phase {
    long long first[3];
    long long count[3];
    long long taps[3];
    long long tap_first[3];
    long long tap_step[3];
    long long q0[3];
    long long q_step[3];
};

__device__ __forceinline__ void phase_init(Phase& p, const KernelArgs& a, const long long first[3]) {
    for (int d = 0; d < 3; ++d) {
        const long long stride = a.stride[d];
        const long long dilation = a.dilation[d];
        p.first[d] = first[d];
        p.count[d] = ceil_div(a.in_size[d] - first[d], stride);
        const long long residue = (first[d] + a.padding_lo[d]) % stride;
        const long long g = gcd(stride, dilation);
        p.tap_step[d] = stride / g;
        p.q_step[d] = dilation / g;
        // The taps with t * dilation ≡ residue (mod stride) are t ≡ tap_first (mod tap_step), if any.
        long long tap_first = -1;
        for (long long t = 0; t < p.tap_step[d] && tap_first < 0; ++t) {
            if ((t * dilation) % stride == residue) {
                tap_first = t;
            }
        }
        const bool any = tap_first >= 0 && tap_first < a.kernel_size[d];
        p.tap_first[d] = any ? tap_first : 0;
        p.taps[d] = any ? ceil_div(a.kernel_size[d] - tap_first, p.tap_step[d]) : 0;
        p.q0[d] = any ? (first[d] + a.padding_lo[d] - tap_first * dilation) / stride : 0;
    }
}

// The taps t < kernel with 0 <= origin + t * dilation < size, as [begin, end).
__device__ __forceinline__ void tap_range(const long long origin, const long long size, const long long kernel,
                                          const long long dilation, long long& begin, long long& end) {
    if (dilation == 1) {  // the common case, without two 64-bit divisions
        end = max(min(size - origin, kernel), 0ll);
        begin = min(max(-origin, 0ll), end);
        return;
    }
    begin = origin >= 0 ? 0 : (dilation - 1 - origin) / dilation;
    end = origin > size - 1 ? 0 : min((size - 1 - origin) / dilation + 1, kernel);
    begin = min(begin, end);
}

// A position (n, p) in [batch] x `size`, row-major, that moves forward `step` at a time, dividing only
// when a coordinate wraps (so a loop over a long flat range has no division per element).
struct Walker {
    long long n;
    long long p[3];
};

__device__ __forceinline__ Walker walker_at(const long long k, const long long size[3]) {
    Walker w;
    const long long volume = volume3(size);
    w.n = k / volume;
    unflatten3(k % volume, size, w.p);
    return w;
}

__device__ __forceinline__ void walker_advance(Walker& w, const long long step, const long long size[3]) {
    w.p[2] += step;
    if (w.p[2] < size[2]) {
        return;
    }
    long long carry = w.p[2] / size[2];
    w.p[2] %= size[2];
    for (int d = 1; d >= 0 && carry > 0; --d) {
        w.p[d] += carry;
        carry = w.p[d] / size[d];
        w.p[d] %= size[d];
    }
    w.n += carry;
}
