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
        const long long group = o / (a.out_channels / a.groups);
        Acc acc = a.bias != nullptr ? load_acc<T, Acc>(static_cast<const T*>(a.bias), o) : Acc(0);
        for (long long c = 0; c < channels; ++c) {
            const T* x_plane = x + (n * a.in_channels + group * channels + c) * in_volume;
            const T* w_taps = w + (o * channels + c) * kernel_volume;
            for (long long tap = 0; tap < kernel_volume; ++tap) {
                long long t[3];
                unflatten3(tap, a.kernel_size, t);
                long long position[3];
                for (int d = 0; d < 3; ++d) {
                    position[d] = p[d] * a.stride[d] + t[d] * a.dilation[d] - a.padding_lo[d];
                }
                if (inside3(position, a.in_size)) {
                    acc += load_acc<T, Acc>(w_taps, tap) * load_acc<T, Acc>(x_plane, flatten3(position, a.in_size));
                }
            }
        }
        store_acc<T, Acc>(static_cast<T*>(a.out), i, activate(a.activation, acc));
    }
}

// x[n, c_x, i] = act(bias[c_x] + Σ_{o in the group, t} w[o, c, t] · y[n, o, (i + padding - t·dilation) / stride])
// over the taps where the division is exact and lands inside y.
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
        Acc acc = a.bias != nullptr ? load_acc<T, Acc>(static_cast<const T*>(a.bias), channel) : Acc(0);
        for (long long tap = 0; tap < kernel_volume; ++tap) {
            long long t[3];
            unflatten3(tap, a.kernel_size, t);
            long long p[3];
            bool hit = true;
            for (int d = 0; d < 3; ++d) {
                const long long offset = position[d] + a.padding_lo[d] - t[d] * a.dilation[d];
                hit = hit && offset >= 0 && offset % a.stride[d] == 0;
                p[d] = offset / a.stride[d];
            }
            if (!hit || !inside3(p, a.out_size)) {
                continue;
            }
            const long long y_position = flatten3(p, a.out_size);
            for (long long o = group * out_channels; o < (group + 1) * out_channels; ++o) {
                acc += load_acc<T, Acc>(w, (o * channels + c) * kernel_volume + tap) *
                       load_acc<T, Acc>(y, (n * a.out_channels + o) * out_volume + y_position);
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
        const long long x_channel = o / (a.out_channels / a.groups) * channels + c;
        Acc acc = Acc(0);
        for (long long k = begin + lane; k < end; k += 32) {
            const long long n = k / out_volume;
            long long p[3];
            unflatten3(k % out_volume, a.out_size, p);
            long long position[3];
            for (int d = 0; d < 3; ++d) {
                position[d] = p[d] * a.stride[d] + t[d] * a.dilation[d] - a.padding_lo[d];
            }
            if (inside3(position, a.in_size)) {
                acc += load_acc<T, Acc>(y, (n * a.out_channels + o) * out_volume + k % out_volume) *
                       load_acc<T, Acc>(x, (n * a.in_channels + x_channel) * in_volume + flatten3(position, a.in_size));
            }
        }
        acc = warp_sum(acc);
        if (lane == 0) {
            store_reduced<T, Acc>(a, split, element, acc);
        }
    }
}

FERRO_INSTANTIATE(direct_correlate)
FERRO_INSTANTIATE(direct_correlate_adjoint)
FERRO_INSTANTIATE(direct_correlate_weight)
