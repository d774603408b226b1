// direct.cu: the three correlations computed directly, for depthwise and small-group convolutions, where
// a group has too few channels to fill a GEMM tile.
//
//   direct_correlate          one thread per FERRO_DIRECT_ROW consecutive elements of a y row
//                             [batch, out_channels, out_size] (grid-stride)
//       reads x, w, bias; writes out (= y)
//   direct_correlate_adjoint  one thread per FERRO_DIRECT_ROW elements of an x row [batch, in_channels, in_size]
//                             in one stride phase (grid-stride)
//       reads y, w, bias; writes out (= x)
//   direct_correlate_weight   one warp per (dw element [out_channels, in_channels/groups, kernel_size], chunk
//                             of whole rows of the batch·out_volume reduction): elements in x (8 per block,
//                             striding by the grid), chunks in y
//       reads x, y; writes out (= dw), or with splits > 1 the partials of its chunk
#include "common.cuh"
#include "geometry.cuh"

// Outputs of one row per thread in direct_correlate and direct_correlate_adjoint (DIRECT_ROW in
// src/cuda/plan.rs).
#define FERRO_DIRECT_ROW 4

// y[n, o, p] = act(bias[o] + Σ_{c, t} w[o, c, t] · x[n, group·Cin_g + c, p·stride + t·dilation - padding]).
// Each thread computes FERRO_DIRECT_ROW consecutive outputs of one y row: the index arithmetic (64-bit
// divisions, tap ranges), which cost ~100 instructions per multiply-add with one output a thread, is paid
// once per segment, and each weight is loaded once for all of them.
template <typename T, typename Acc>
__device__ void direct_correlate(const KernelArgs& a) {
    const T* x = static_cast<const T*>(a.x);
    const T* w = static_cast<const T*>(a.w);
    const long long in_volume = volume3(a.in_size);
    const long long kernel_volume = volume3(a.kernel_size);
    const long long channels = a.in_channels / a.groups;
    const long long out_channels = a.out_channels / a.groups;
    const long long segments_per_row = ceil_div(a.out_size[2], FERRO_DIRECT_ROW);
    const long long rows = a.batch * a.out_channels * a.out_size[0] * a.out_size[1];
    for (long long i = grid_first_index(); i < rows * segments_per_row; i += grid_stride()) {
        const long long row = i / segments_per_row;  // (n, o, d, h), row-major
        const long long first = (i - row * segments_per_row) * FERRO_DIRECT_ROW;
        const long long count = min((long long)FERRO_DIRECT_ROW, a.out_size[2] - first);
        const long long h = row % a.out_size[1];
        const long long d = row / a.out_size[1] % a.out_size[0];
        const long long o = row / a.out_size[1] / a.out_size[0] % a.out_channels;
        const long long n = row / a.out_size[1] / a.out_size[0] / a.out_channels;
        const long long origin_d = d * a.stride[0] - a.padding_lo[0];
        const long long origin_h = h * a.stride[1] - a.padding_lo[1];
        const long long origin_w = first * a.stride[2] - a.padding_lo[2];
        long long begin_d, end_d, begin_h, end_h;
        tap_range(origin_d, a.in_size[0], a.kernel_size[0], a.dilation[0], begin_d, end_d);
        tap_range(origin_h, a.in_size[1], a.kernel_size[1], a.dilation[1], begin_h, end_h);
        const Acc bias = a.bias != nullptr ? load_acc<T, Acc>(static_cast<const T*>(a.bias), o) : Acc(0);
        Acc acc[FERRO_DIRECT_ROW];
        for (int r = 0; r < FERRO_DIRECT_ROW; ++r) {
            acc[r] = bias;
        }
        for (long long c = 0; c < channels; ++c) {
            const T* x_plane = x + (n * a.in_channels + o / out_channels * channels + c) * in_volume;
            const T* w_taps = w + (o * channels + c) * kernel_volume;
            for (long long td = begin_d; td < end_d; ++td) {
                for (long long th = begin_h; th < end_h; ++th) {
                    const long long x_row = (origin_d + td * a.dilation[0]) * a.in_size[1] + origin_h + th * a.dilation[1];
                    const T* x_line = x_plane + x_row * a.in_size[2];
                    const T* w_line = w_taps + (td * a.kernel_size[1] + th) * a.kernel_size[2];
                    for (long long tw = 0; tw < a.kernel_size[2]; ++tw) {
                        const Acc weight = load_acc<T, Acc>(w_line, tw);
                        const long long column = origin_w + tw * a.dilation[2];
#pragma unroll
                        for (int r = 0; r < FERRO_DIRECT_ROW; ++r) {
                            const long long at = column + r * a.stride[2];
                            if (r < count && at >= 0 && at < a.in_size[2]) {
                                acc[r] += weight * load_acc<T, Acc>(x_line, at);
                            }
                        }
                    }
                }
            }
        }
        T* y_line = static_cast<T*>(a.out) + row * a.out_size[2] + first;
        for (int r = 0; r < count; ++r) {
            store_acc<T, Acc>(y_line, r, activate(a.activation, acc[r]));
        }
    }
}

// x[n, c_x, i] = act(bias[c_x] + Σ_{o in the group, t} w[o, c, t] · y[n, o, (i + padding - t·dilation) / stride])
// over the taps where the division is exact and lands inside y: those of i's stride phase, whose y position
// q falls as the tap index u grows. Each thread computes FERRO_DIRECT_ROW x positions of one row and one
// stride phase (i_w, i_w + stride, ...): they meet the same taps at consecutive y positions, so the phase
// (divisions, a gcd) is found once for all of them and each weight is loaded once.
template <typename T, typename Acc>
__device__ void direct_correlate_adjoint(const KernelArgs& a) {
    const T* y = static_cast<const T*>(a.y);
    const T* w = static_cast<const T*>(a.w);
    const long long out_volume = volume3(a.out_size);
    const long long kernel_volume = volume3(a.kernel_size);
    const long long channels = a.in_channels / a.groups;
    const long long out_channels = a.out_channels / a.groups;
    const long long phases = min(a.stride[2], a.in_size[2]);
    const long long segments = ceil_div(ceil_div(a.in_size[2], a.stride[2]), FERRO_DIRECT_ROW);
    const long long rows = a.batch * a.in_channels * a.in_size[0] * a.in_size[1];
    for (long long i = grid_first_index(); i < rows * phases * segments; i += grid_stride()) {
        const long long row = i / (phases * segments);  // (n, c_x, d, h), row-major
        const long long phase = i / segments % phases;
        const long long first_j = i % segments * FERRO_DIRECT_ROW;
        // This phase's x positions in the row are phase + j·stride for j < its count.
        const long long count = min((long long)FERRO_DIRECT_ROW, ceil_div(a.in_size[2] - phase, a.stride[2]) - first_j);
        if (count <= 0) {
            continue;
        }
        const long long channel = row / a.in_size[1] / a.in_size[0] % a.in_channels;
        const long long n = row / a.in_size[1] / a.in_size[0] / a.in_channels;
        const long long group = channel / channels;
        const long long c = channel % channels;
        const long long position[3] = {row / a.in_size[1] % a.in_size[0], row % a.in_size[1],
                                       phase + first_j * a.stride[2]};
        Phase ph;
        phase_init(ph, a, position);
        const Acc bias = a.bias != nullptr ? load_acc<T, Acc>(static_cast<const T*>(a.bias), channel) : Acc(0);
        Acc acc[FERRO_DIRECT_ROW];
        for (int r = 0; r < FERRO_DIRECT_ROW; ++r) {
            acc[r] = bias;
        }
        long long q[3], t[3];
        for (long long ud = 0; ud < ph.taps[0] && (q[0] = ph.q0[0] - ud * ph.q_step[0]) >= 0; ++ud) {
            if (q[0] >= a.out_size[0]) {
                continue;
            }
            t[0] = ph.tap_first[0] + ud * ph.tap_step[0];
            for (long long uh = 0; uh < ph.taps[1] && (q[1] = ph.q0[1] - uh * ph.q_step[1]) >= 0; ++uh) {
                if (q[1] >= a.out_size[1]) {
                    continue;
                }
                t[1] = ph.tap_first[1] + uh * ph.tap_step[1];
                // Position r of the segment reads y at q[2] + r.
                for (long long uw = 0; uw < ph.taps[2] && (q[2] = ph.q0[2] - uw * ph.q_step[2]) + count > 0; ++uw) {
                    t[2] = ph.tap_first[2] + uw * ph.tap_step[2];
                    const T* w_tap = w + (group * out_channels * channels + c) * kernel_volume + flatten3(t, a.kernel_size);
                    const T* y_line = y + (n * a.out_channels + group * out_channels) * out_volume + flatten3(q, a.out_size);
                    bool inside[FERRO_DIRECT_ROW];
#pragma unroll
                    for (int r = 0; r < FERRO_DIRECT_ROW; ++r) {
                        inside[r] = r < count && q[2] + r >= 0 && q[2] + r < a.out_size[2];
                    }
                    for (long long o = 0; o < out_channels; ++o) {
                        const Acc weight = load_acc<T, Acc>(w_tap, o * channels * kernel_volume);
#pragma unroll
                        for (int r = 0; r < FERRO_DIRECT_ROW; ++r) {
                            if (inside[r]) {
                                acc[r] += weight * load_acc<T, Acc>(y_line, o * out_volume + r);
                            }
                        }
                    }
                }
            }
        }
        T* x_line = static_cast<T*>(a.out) + row * a.in_size[2] + position[2];
        for (int r = 0; r < count; ++r) {
            store_acc<T, Acc>(x_line, r * a.stride[2], activate(a.activation, acc[r]));
        }
    }
}

// dw[o, c, t] = Σ_{n, p} y[n, o, p] · x[n, group·Cin_g + c, p·stride + t·dilation - padding], over chunk
// blockIdx.y of the (n, p) reduction, summed by one warp in a fixed order. Chunks hold whole y rows (the
// plan's split granule is out_size[2]): the warp walks them row by row, skipping rows whose x row is
// padding, and its lanes read neighbouring elements of a row, so no division is left in the loop.
template <typename T, typename Acc>
__device__ void direct_correlate_weight(const KernelArgs& a) {
    const T* x = static_cast<const T*>(a.x);
    const T* y = static_cast<const T*>(a.y);
    const long long in_volume = volume3(a.in_size);
    const long long out_volume = volume3(a.out_size);
    const long long kernel_volume = volume3(a.kernel_size);
    const long long channels = a.in_channels / a.groups;
    const long long split = blockIdx.y;
    const long long row_begin = split_begin(a, split) / a.out_size[2];
    const long long row_end = min(split_begin(a, split) + a.split_length, a.batch * out_volume) / a.out_size[2];
    const int lane = threadIdx.x % 32;
    const long long first = (long long)blockIdx.x * FERRO_WARPS_PER_BLOCK + threadIdx.x / 32;
    for (long long element = first; element < a.length; element += (long long)gridDim.x * FERRO_WARPS_PER_BLOCK) {
        const long long o = element / kernel_volume / channels;
        const long long c = element / kernel_volume % channels;
        long long t[3];
        unflatten3(element % kernel_volume, a.kernel_size, t);
        long long offset[3];
        for (int d = 0; d < 3; ++d) {
            offset[d] = t[d] * a.dilation[d] - a.padding_lo[d];
        }
        // The y columns p whose x column p·stride + offset lies inside x.
        long long column_begin, column_end;
        tap_range(offset[2], a.in_size[2], a.out_size[2], a.stride[2], column_begin, column_end);
        const T* x_channel = x + (o / (a.out_channels / a.groups) * channels + c) * in_volume + offset[2];
        const T* y_channel = y + o * out_volume;
        // The first row's (n, p_d, p_h); later rows count up without dividing.
        long long p_h = row_begin % a.out_size[1];
        long long p_d = row_begin / a.out_size[1] % a.out_size[0];
        long long n = row_begin / a.out_size[1] / a.out_size[0];
        Acc acc = Acc(0);
        for (long long row = row_begin; row < row_end; ++row) {
            const long long x_d = p_d * a.stride[0] + offset[0];
            const long long x_h = p_h * a.stride[1] + offset[1];
            if (x_d >= 0 && x_d < a.in_size[0] && x_h >= 0 && x_h < a.in_size[1]) {
                const T* y_row = y_channel + n * a.out_channels * out_volume + (p_d * a.out_size[1] + p_h) * a.out_size[2];
                const T* x_row = x_channel + n * a.in_channels * in_volume + (x_d * a.in_size[1] + x_h) * a.in_size[2];
                for (long long p = column_begin + lane; p < column_end; p += 32) {
                    acc += load_acc<T, Acc>(y_row, p) * load_acc<T, Acc>(x_row, p * a.stride[2]);
                }
            }
            if (++p_h == a.out_size[1]) {
                p_h = 0;
                if (++p_d == a.out_size[0]) {
                    p_d = 0;
                    ++n;
                }
            }
        }
        acc = warp_sum(acc);
        if (lane == 0) {
            store_reduced<T, Acc>(a, split, element, acc);
        }
    }
}

// At least two resident blocks (at most 128 registers a thread; the tap loops' unrolling takes more).
FERRO_INSTANTIATE_WITH_OCCUPANCY(direct_correlate, 2)
FERRO_INSTANTIATE_WITH_OCCUPANCY(direct_correlate_adjoint, 2)
FERRO_INSTANTIATE(direct_correlate_weight)
