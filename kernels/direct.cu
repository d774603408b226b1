// direct.cu: the three correlations computed directly, for depthwise and small-group convolutions, where
// a group has too few channels to fill a GEMM tile.
//
//   direct_correlate          one thread per y element [batch, out_channels, out_size] (grid-stride)
//       reads x, w, bias; writes out (= y)
//   direct_correlate_adjoint  one thread per x element [batch, in_channels, in_size] (grid-stride)
//       reads y, w, bias; writes out (= x)
//   direct_correlate_weight   one warp per (dw element [out_channels, in_channels/groups, kernel_size], chunk
//                             of the batch·out_volume reduction): elements in x (8 per block, striding by the
//                             grid), chunks in y
//       reads x, y; writes out (= dw), or with splits > 1 the partials of its chunk
#include "common.cuh"
#include "geometry.cuh"

// y[n, o, p] = act(bias[o] + Σ_{c, t} w[o, c, t] · x[n, group·Cin_g + c, p·stride + t·dilation - padding]).
// Each thread loops over the taps that land inside x, found once per output.
template <typename T, typename Acc>
__device__ void direct_correlate(const KernelArgs& a) {
    const T* x = static_cast<const T*>(a.x);
    const T* w = static_cast<const T*>(a.w);
    const long long in_volume = volume3(a.in_size);
    const long long out_volume = volume3(a.out_size);
    const long long kernel_volume = volume3(a.kernel_size);
    const long long channels = a.in_channels / a.groups;
    const long long outputs = a.batch * a.out_channels * out_volume;
    for (long long i = grid_first_index(); i < outputs; i += grid_stride()) {
        const long long o = i / out_volume % a.out_channels;
        const long long n = i / out_volume / a.out_channels;
        long long p[3];
        unflatten3(i % out_volume, a.out_size, p);
        long long origin[3], begin[3], end[3];
        for (int d = 0; d < 3; ++d) {
            origin[d] = p[d] * a.stride[d] - a.padding_lo[d];
            tap_range(origin[d], a.in_size[d], a.kernel_size[d], a.dilation[d], begin[d], end[d]);
        }
        const long long group = o / (a.out_channels / a.groups);
        Acc acc = a.bias != nullptr ? load_acc<T, Acc>(static_cast<const T*>(a.bias), o) : Acc(0);
        for (long long c = 0; c < channels; ++c) {
            const T* x_plane = x + (n * a.in_channels + group * channels + c) * in_volume;
            const T* w_taps = w + (o * channels + c) * kernel_volume;
            for (long long td = begin[0]; td < end[0]; ++td) {
                for (long long th = begin[1]; th < end[1]; ++th) {
                    const long long row = (origin[0] + td * a.dilation[0]) * a.in_size[1] + origin[1] + th * a.dilation[1];
                    const T* x_row = x_plane + row * a.in_size[2] + origin[2];
                    const T* w_row = w_taps + (td * a.kernel_size[1] + th) * a.kernel_size[2];
                    for (long long tw = begin[2]; tw < end[2]; ++tw) {
                        acc += load_acc<T, Acc>(w_row, tw) * load_acc<T, Acc>(x_row, tw * a.dilation[2]);
                    }
                }
            }
        }
        store_acc<T, Acc>(static_cast<T*>(a.out), i, activate(a.activation, acc));
    }
}

// x[n, c_x, i] = act(bias[c_x] + Σ_{o in the group, t} w[o, c, t] · y[n, o, (i + padding - t·dilation) / stride])
// over the taps where the division is exact and lands inside y: those of i's stride phase, whose y position
// q falls as the tap index u grows.
template <typename T, typename Acc>
__device__ void direct_correlate_adjoint(const KernelArgs& a) {
    const T* y = static_cast<const T*>(a.y);
    const T* w = static_cast<const T*>(a.w);
    const long long in_volume = volume3(a.in_size);
    const long long out_volume = volume3(a.out_size);
    const long long kernel_volume = volume3(a.kernel_size);
    const long long channels = a.in_channels / a.groups;
    const long long out_channels = a.out_channels / a.groups;
    const long long outputs = a.batch * a.in_channels * in_volume;
    for (long long i = grid_first_index(); i < outputs; i += grid_stride()) {
        const long long channel = i / in_volume % a.in_channels;
        const long long n = i / in_volume / a.in_channels;
        const long long group = channel / channels;
        const long long c = channel % channels;
        long long position[3];
        unflatten3(i % in_volume, a.in_size, position);
        Phase ph;
        phase_init(ph, a, position);
        Acc acc = a.bias != nullptr ? load_acc<T, Acc>(static_cast<const T*>(a.bias), channel) : Acc(0);
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
                for (long long uw = 0; uw < ph.taps[2] && (q[2] = ph.q0[2] - uw * ph.q_step[2]) >= 0; ++uw) {
                    if (q[2] >= a.out_size[2]) {
                        continue;
                    }
                    t[2] = ph.tap_first[2] + uw * ph.tap_step[2];
                    const long long tap = flatten3(t, a.kernel_size);
                    const long long y_position = flatten3(q, a.out_size);
                    for (long long o = group * out_channels; o < (group + 1) * out_channels; ++o) {
                        acc += load_acc<T, Acc>(w, (o * channels + c) * kernel_volume + tap) *
                               load_acc<T, Acc>(y, (n * a.out_channels + o) * out_volume + y_position);
                    }
                }
            }
        }
        store_acc<T, Acc>(static_cast<T*>(a.out), i, activate(a.activation, acc));
    }
}

// dw[o, c, t] = Σ_{n, p} y[n, o, p] · x[n, group·Cin_g + c, p·stride + t·dilation - padding], over chunk
// blockIdx.y of the (n, p) reduction, summed by one warp in a fixed order.
template <typename T, typename Acc>
__device__ void direct_correlate_weight(const KernelArgs& a) {
    const T* x = static_cast<const T*>(a.x);
    const T* y = static_cast<const T*>(a.y);
    const long long in_volume = volume3(a.in_size);
    const long long out_volume = volume3(a.out_size);
    const long long kernel_volume = volume3(a.kernel_size);
    const long long channels = a.in_channels / a.groups;
    const long long split = blockIdx.y;
    const long long begin = split_begin(a, split);
    const long long end = min(begin + a.split_length, a.batch * out_volume);
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
        const T* x_channel = x + (o / (a.out_channels / a.groups) * channels + c) * in_volume;
        const T* y_channel = y + o * out_volume;
        Acc acc = Acc(0);
        Walker at = walker_at(begin + lane, a.out_size);
        for (long long k = begin + lane; k < end; k += 32, walker_advance(at, 32, a.out_size)) {
            long long position[3];
            for (int d = 0; d < 3; ++d) {
                position[d] = at.p[d] * a.stride[d] + offset[d];
            }
            if (inside3(position, a.in_size)) {
                acc += load_acc<T, Acc>(y_channel, at.n * a.out_channels * out_volume + flatten3(at.p, a.out_size)) *
                       load_acc<T, Acc>(x_channel, at.n * a.in_channels * in_volume + flatten3(position, a.in_size));
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
