// padding.cu: reflect / replicate / circular padding of x, and its adjoint.
//
//   pad           one thread per element of padded [batch, in_channels, in_size + padding_lo + padding_hi]
//       reads x [batch, in_channels, in_size]; writes out (= padded)
//   fold_padding  one thread per element of x: the sum of the padded elements copied from it, gathered in
//                 ascending order (no atomics, the same order as the CPU backend)
//       reads x (= padded); writes out [batch, in_channels, in_size]
#include "common.cuh"
#include "geometry.cuh"

// The position of x that padded position `position` (relative to x's start, so possibly outside
// [0, size)) copies, or -1 for zero padding. Validation keeps reflect and circular within one period.
__device__ __forceinline__ long long padding_source(const long long position, const long long size,
                                                    const long long mode) {
    if (position >= 0 && position < size) {
        return position;
    }
    switch (mode) {
        case FERRO_PADDING_REFLECT:
            return position < 0 ? -position : 2 * (size - 1) - position;
        case FERRO_PADDING_REPLICATE:
            return position < 0 ? 0 : size - 1;
        case FERRO_PADDING_CIRCULAR:
            return position < 0 ? position + size : position - size;
        default:
            return -1;
    }
}

template <typename T, typename Acc>
__device__ void pad(const KernelArgs& a) {
    const T* x = static_cast<const T*>(a.x);
    long long padded_size[3];
    for (int d = 0; d < 3; ++d) {
        padded_size[d] = a.in_size[d] + a.padding_lo[d] + a.padding_hi[d];
    }
    const long long in_volume = volume3(a.in_size);
    const long long padded_volume = volume3(padded_size);
    const long long outputs = a.batch * a.in_channels * padded_volume;
    for (long long i = grid_first_index(); i < outputs; i += grid_stride()) {
        long long q[3];
        unflatten3(i % padded_volume, padded_size, q);
        long long source[3];
        bool zero = false;
        for (int d = 0; d < 3; ++d) {
            source[d] = padding_source(q[d] - a.padding_lo[d], a.in_size[d], a.padding_mode);
            zero = zero || source[d] < 0;
        }
        const Acc v = zero ? Acc(0) : load_acc<T, Acc>(x, i / padded_volume * in_volume + flatten3(source, a.in_size));
        store_acc<T, Acc>(static_cast<T*>(a.out), i, v);
    }
}

// The padded positions (along one dim) that copy x position i: at most three runs, in ascending order.
struct Preimage {
    long long begin[3];
    long long end[3];
    int runs;
};

__device__ __forceinline__ void add_run(Preimage& p, const long long begin, const long long end) {
    p.begin[p.runs] = begin;
    p.end[p.runs] = end;
    ++p.runs;
}

__device__ __forceinline__ Preimage preimage(const long long i, const long long size, const long long lo,
                                             const long long hi, const long long mode) {
    Preimage p;
    p.runs = 0;
    switch (mode) {
        case FERRO_PADDING_REFLECT:
            if (i >= 1 && i <= lo) {
                add_run(p, lo - i, lo - i + 1);  // position -i
            }
            add_run(p, lo + i, lo + i + 1);
            if (i <= size - 2 && i >= size - 1 - hi) {
                add_run(p, lo + 2 * (size - 1) - i, lo + 2 * (size - 1) - i + 1);  // position 2(size-1) - i
            }
            break;
        case FERRO_PADDING_REPLICATE:  // the edges take every position beyond them
            add_run(p, i == 0 ? 0 : lo + i, i == size - 1 ? lo + size + hi : lo + i + 1);
            break;
        case FERRO_PADDING_CIRCULAR:
            if (i >= size - lo) {
                add_run(p, lo + i - size, lo + i - size + 1);  // position i - size
            }
            add_run(p, lo + i, lo + i + 1);
            if (i < hi) {
                add_run(p, lo + i + size, lo + i + size + 1);  // position i + size
            }
            break;
        default:
            add_run(p, lo + i, lo + i + 1);
    }
    return p;
}

template <typename T, typename Acc>
__device__ void fold_padding(const KernelArgs& a) {
    const T* padded = static_cast<const T*>(a.x);
    long long padded_size[3];
    for (int d = 0; d < 3; ++d) {
        padded_size[d] = a.in_size[d] + a.padding_lo[d] + a.padding_hi[d];
    }
    const long long in_volume = volume3(a.in_size);
    const long long padded_volume = volume3(padded_size);
    const long long outputs = a.batch * a.in_channels * in_volume;
    for (long long i = grid_first_index(); i < outputs; i += grid_stride()) {
        long long position[3];
        unflatten3(i % in_volume, a.in_size, position);
        Preimage runs[3];
        for (int d = 0; d < 3; ++d) {
            runs[d] = preimage(position[d], a.in_size[d], a.padding_lo[d], a.padding_hi[d], a.padding_mode);
        }
        const T* plane = padded + i / in_volume * padded_volume;
        Acc acc = Acc(0);
        long long q[3];
        for (int r0 = 0; r0 < runs[0].runs; ++r0) {
            for (q[0] = runs[0].begin[r0]; q[0] < runs[0].end[r0]; ++q[0]) {
                for (int r1 = 0; r1 < runs[1].runs; ++r1) {
                    for (q[1] = runs[1].begin[r1]; q[1] < runs[1].end[r1]; ++q[1]) {
                        for (int r2 = 0; r2 < runs[2].runs; ++r2) {
                            for (q[2] = runs[2].begin[r2]; q[2] < runs[2].end[r2]; ++q[2]) {
                                acc += load_acc<T, Acc>(plane, flatten3(q, padded_size));
                            }
                        }
                    }
                }
            }
        }
        store_acc<T, Acc>(static_cast<T*>(a.out), i, acc);
    }
}

FERRO_INSTANTIATE(pad)
FERRO_INSTANTIATE(fold_padding)
