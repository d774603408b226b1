// companion.cu: the layers a U-Net needs around its convolutions (src/companion/).
//
//   relu               one thread per element: out = x < 0 ? 0 : x (NaN stays)         x, out [length]
//   relu_backward      out = x > 0 ? y : 0, x the relu's output, y its gradient          x, y, out [length]
//   add                out = x + y                                                       x, y, out [length]
//   max_pool           one thread per output element: the window's first maximum (NaN wins)
//       reads x [batch, in_channels, in_size]; writes out [batch, in_channels, out_size]
//   max_pool_backward  one thread per input element: the gradients of the windows whose argmax it is,
//                      gathered over the window taps in a fixed order (no atomics)
//       reads x (the input), y [batch, in_channels, out_size] (the output's gradient); writes out [like x]
//   copy_channels      a block of channels: spare = {src_offset, dst_offset, count}, length = volume
//       reads x [batch, in_channels, length]; writes channels [dst_offset, dst_offset + count) of
//       out [batch, out_channels, length], leaving the rest of out as it was
//
// Pooling geometry uses KernelArgs as the convolutions do: kernel_size, stride, dilation, padding_lo,
// in_size, out_size, with in_channels the channel count.
#include "common.cuh"
#include "geometry.cuh"

template <typename T, typename Acc>
__device__ void relu(const KernelArgs& a) {
    const T* x = static_cast<const T*>(a.x);
    for (long long i = grid_first_index(); i < a.length; i += grid_stride()) {
        const Acc v = load_acc<T, Acc>(x, i);
        store_acc<T, Acc>(static_cast<T*>(a.out), i, v < Acc(0) ? Acc(0) : v);
    }
}

template <typename T, typename Acc>
__device__ void relu_backward(const KernelArgs& a) {
    const T* output = static_cast<const T*>(a.x);
    const T* grad = static_cast<const T*>(a.y);
    for (long long i = grid_first_index(); i < a.length; i += grid_stride()) {
        const Acc v = load_acc<T, Acc>(output, i) > Acc(0) ? load_acc<T, Acc>(grad, i) : Acc(0);
        store_acc<T, Acc>(static_cast<T*>(a.out), i, v);
    }
}

template <typename T, typename Acc>
__device__ void add(const KernelArgs& a) {
    const T* x = static_cast<const T*>(a.x);
    const T* y = static_cast<const T*>(a.y);
    for (long long i = grid_first_index(); i < a.length; i += grid_stride()) {
        store_acc<T, Acc>(static_cast<T*>(a.out), i, load_acc<T, Acc>(x, i) + load_acc<T, Acc>(y, i));
    }
}

// The flat index (within one plane of x) of the first maximum of output position `o`'s window, NaN
// winning as in PyTorch; -1 when the window holds no element of x.
template <typename T, typename Acc>
__device__ long long window_argmax(const KernelArgs& a, const T* plane, const long long o[3]) {
    long long best = -1;
    Acc max = Acc(0);
    long long start[3];
    for (int d = 0; d < 3; ++d) {
        start[d] = o[d] * a.stride[d] - a.padding_lo[d];
    }
    long long q[3];
    for (long long t0 = 0; t0 < a.kernel_size[0]; ++t0) {
        q[0] = start[0] + t0 * a.dilation[0];
        for (long long t1 = 0; t1 < a.kernel_size[1]; ++t1) {
            q[1] = start[1] + t1 * a.dilation[1];
            for (long long t2 = 0; t2 < a.kernel_size[2]; ++t2) {
                q[2] = start[2] + t2 * a.dilation[2];
                if (!inside3(q, a.in_size)) {
                    continue;
                }
                const long long index = flatten3(q, a.in_size);
                const Acc v = load_acc<T, Acc>(plane, index);
                if (best < 0 || v > max || v != v) {  // v != v: NaN
                    best = index;
                    max = v;
                }
            }
        }
    }
    return best;
}

template <typename T, typename Acc>
__device__ void max_pool(const KernelArgs& a) {
    const T* x = static_cast<const T*>(a.x);
    const long long in_volume = volume3(a.in_size);
    const long long out_volume = volume3(a.out_size);
    const long long outputs = a.batch * a.in_channels * out_volume;
    for (long long i = grid_first_index(); i < outputs; i += grid_stride()) {
        const T* plane = x + i / out_volume * in_volume;
        long long o[3];
        unflatten3(i % out_volume, a.out_size, o);
        const long long best = window_argmax<T, Acc>(a, plane, o);
        // Validation keeps every window overlapping x; -inf for an empty one all the same.
        const Acc v = best < 0 ? Acc(-1.0 / 0.0) : load_acc<T, Acc>(plane, best);
        store_acc<T, Acc>(static_cast<T*>(a.out), i, v);
    }
}

template <typename T, typename Acc>
__device__ void max_pool_backward(const KernelArgs& a) {
    const T* x = static_cast<const T*>(a.x);
    const T* grad = static_cast<const T*>(a.y);
    const long long in_volume = volume3(a.in_size);
    const long long out_volume = volume3(a.out_size);
    const long long inputs = a.batch * a.in_channels * in_volume;
    for (long long i = grid_first_index(); i < inputs; i += grid_stride()) {
        const long long plane_index = i / in_volume;
        const long long own = i % in_volume;
        const T* plane = x + plane_index * in_volume;
        const T* grad_plane = grad + plane_index * out_volume;
        long long p[3];
        unflatten3(own, a.in_size, p);
        Acc sum = Acc(0);
        // The windows holding p: o * stride - padding + t * dilation == p for some tap t.
        long long o[3];
        for (long long t0 = a.kernel_size[0] - 1; t0 >= 0; --t0) {
            const long long n0 = p[0] + a.padding_lo[0] - t0 * a.dilation[0];
            if (n0 < 0 || n0 % a.stride[0] != 0 || n0 / a.stride[0] >= a.out_size[0]) continue;
            o[0] = n0 / a.stride[0];
            for (long long t1 = a.kernel_size[1] - 1; t1 >= 0; --t1) {
                const long long n1 = p[1] + a.padding_lo[1] - t1 * a.dilation[1];
                if (n1 < 0 || n1 % a.stride[1] != 0 || n1 / a.stride[1] >= a.out_size[1]) continue;
                o[1] = n1 / a.stride[1];
                for (long long t2 = a.kernel_size[2] - 1; t2 >= 0; --t2) {
                    const long long n2 = p[2] + a.padding_lo[2] - t2 * a.dilation[2];
                    if (n2 < 0 || n2 % a.stride[2] != 0 || n2 / a.stride[2] >= a.out_size[2]) continue;
                    o[2] = n2 / a.stride[2];
                    if (window_argmax<T, Acc>(a, plane, o) == own) {
                        sum += load_acc<T, Acc>(grad_plane, flatten3(o, a.out_size));
                    }
                }
            }
        }
        store_acc<T, Acc>(static_cast<T*>(a.out), i, sum);
    }
}

template <typename T, typename Acc>
__device__ void copy_channels(const KernelArgs& a) {
    const T* src = static_cast<const T*>(a.x);
    T* dst = static_cast<T*>(a.out);
    const long long src_offset = a.spare[0];
    const long long dst_offset = a.spare[1];
    const long long count = a.spare[2];
    const long long run = count * a.length;  // one item's block of channels
    const long long elements = a.batch * run;
    for (long long i = grid_first_index(); i < elements; i += grid_stride()) {
        const long long n = i / run;
        const long long within = i % run;
        dst[(n * a.out_channels + dst_offset) * a.length + within] =
            src[(n * a.in_channels + src_offset) * a.length + within];
    }
}

FERRO_INSTANTIATE(relu)
FERRO_INSTANTIATE(relu_backward)
FERRO_INSTANTIATE(add)
FERRO_INSTANTIATE(max_pool)
FERRO_INSTANTIATE(max_pool_backward)
FERRO_INSTANTIATE(copy_channels)
