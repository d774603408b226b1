// reduce.cu: per-channel sums (the bias gradient) and the second pass of every split reduction.
//
//   channel_sums  one block per (channel in x, chunk of the batch·volume reduction in y) of
//                 x [batch, in_channels, in_size] (blocks stride over channels)
//       reads x; writes out [in_channels], or with splits > 1 the partials of its chunk
//   sum_partials  one thread per result (grid-stride): out[i] = Σ_{s < splits} partials[s·length + i], in order
//       reads partials (accumulator type); writes out [length]
#include "common.cuh"
#include "geometry.cuh"

template <typename T, typename Acc>
__device__ void channel_sums(const KernelArgs& a) {
    const T* x = static_cast<const T*>(a.x);
    const long long volume = volume3(a.in_size);
    const long long split = blockIdx.y;
    const long long begin = split_begin(a, split);
    const long long end = min(begin + a.split_length, a.batch * volume);
    for (long long channel = blockIdx.x; channel < a.in_channels; channel += gridDim.x) {
        Acc acc = Acc(0);
        for (long long k = begin + threadIdx.x; k < end; k += blockDim.x) {
            acc += load_acc<T, Acc>(x, (k / volume * a.in_channels + channel) * volume + k % volume);
        }
        acc = block_sum(acc);
        if (threadIdx.x == 0) {
            store_reduced<T, Acc>(a, split, channel, acc);
        }
    }
}

template <typename T, typename Acc>
__device__ void sum_partials(const KernelArgs& a) {
    const Acc* partials = static_cast<const Acc*>(a.partials);
    for (long long i = grid_first_index(); i < a.length; i += grid_stride()) {
        Acc acc = Acc(0);
        for (long long s = 0; s < a.splits; ++s) {
            acc += partials[s * a.length + i];
        }
        store_acc<T, Acc>(static_cast<T*>(a.out), i, acc);
    }
}

FERRO_INSTANTIATE(channel_sums)
FERRO_INSTANTIATE(sum_partials)
