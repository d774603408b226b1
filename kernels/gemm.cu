// gemm.cu: the three correlations as implicit GEMMs C[m][n] = Σ_k A[m][k] · B[k][n], per group, with no
// im2col buffer: operands are gathered from the tensors while tiles are loaded.
//
//   gemm_correlate          C = y   [out_channels/g  x  batch·out_volume]     K = in_channels/g · kernel_volume
//       reads x, w, bias; writes out (= y) = act(C + bias[o])
//   gemm_correlate_adjoint  C = x   [in_channels/g  x  batch·(x positions of one stride phase)]
//                                                                        K = out_channels/g · (taps of that phase)
//       reads y, w, bias; writes out (= x) = act(C + bias[c])
//   gemm_correlate_weight   C = dw  [out_channels/g  x  in_channels/g · kernel_volume]     K = batch · out_volume
//       reads x, y; writes out (= dw), or with splits > 1 the partials of chunk `split` of K
//
// Each block computes 64x64 tiles of C (looping over tiles with the grid's stride: tile index = n-tile
// fastest, then m-tile, then group / phase / split), stepping through K 16 at a time via shared memory,
// each of its 256 threads accumulating a 4x4 micro-tile in registers from one vector load of A and one
// of B per step of k. The next K step's operands are
// fetched into registers while the current one is multiplied.
//
// A problem describes where its operands live. A[m][k] is a_src[a_base + row_offset(k) + m · a_row_stride];
// B[k][n] is b_src[column(n).base + b_offset(k)] when column(n).position + shift(k) lies inside `limit`
// (the zero padding), else 0. Each k is decoded once per block into a table in shared memory, each n once
// per thread, so the inner loops have no divisions.
#include "common.cuh"
#include "geometry.cuh"

#define FERRO_GEMM_TILE_M 64
#define FERRO_GEMM_TILE_N 64
#define FERRO_GEMM_TILE_K 16

// What a reduction index k contributes to the operands' addresses.
struct KEntry {
    long long a_offset;  // A's offset at row 0
    long long b_offset;  // B's offset from the column's base
    long long shift[3];  // added to the column's position for the bounds check
    bool valid;          // k < the end of the reduction (chunk)
};

// What a column n of C contributes.
struct Column {
    long long base;         // B's offset at k's offset 0
    long long position[3];  // bounds-checked against `limit` after adding k's shift
    bool valid;             // n < columns
};

// Four consecutive values, aligned so that a thread reads them from shared memory in one vector load.
template <typename Acc>
struct alignas(4 * sizeof(Acc)) Quad {
    Acc v[4];
};

template <typename T, typename Acc, typename Problem>
__device__ void gemm_tile(const Problem& p, const long long m0, const long long n0, const long long k_begin,
                          const long long k_end) {
    // a_tile rows are padded by one quad (68 values), which halves the bank conflicts of the column stores.
    __shared__ Quad<Acc> a_tile[FERRO_GEMM_TILE_K][FERRO_GEMM_TILE_M / 4 + 1];
    __shared__ Quad<Acc> b_tile[FERRO_GEMM_TILE_K][FERRO_GEMM_TILE_N / 4];
    __shared__ KEntry k_table[2][FERRO_GEMM_TILE_K];  // double-buffered: the step loaded next

    const int t = threadIdx.x;
    // Loads: A rows a_m + 16r at column a_k; B rows b_k + 4r at column b_n (r < 4).
    const int a_k = t % FERRO_GEMM_TILE_K;
    const int a_m = t / FERRO_GEMM_TILE_K;
    const int b_n = t % FERRO_GEMM_TILE_N;
    const int b_k = t / FERRO_GEMM_TILE_N;
    // Results: rows 4ty + i, columns 4tx + j (i, j < 4): one quad of A and one of B per step of k.
    const int tx = t % 16;
    const int ty = t / 16;

    const Column column = p.column(n0 + b_n);
    const T* a_src = p.a_src;
    const T* b_src = p.b_src;
    Acc a_next[4];
    Acc b_next[4];
    Acc c[4][4];
    for (int i = 0; i < 4; ++i) {
        for (int j = 0; j < 4; ++j) {
            c[i][j] = Acc(0);
        }
    }

    // Threads 0..15 decode the 16 k of the step starting at k0 into table `slot`.
    auto decode_step = [&](const long long k0, const int slot) {
        if (t < FERRO_GEMM_TILE_K) {
            const long long k = k0 + t;
            KEntry e = {};
            e.valid = k < k_end;
            if (e.valid) {
                p.k_entry(k, e);
            }
            k_table[slot][t] = e;
        }
    };
    auto fetch_step = [&](const int slot) {
        const KEntry& ea = k_table[slot][a_k];
        for (int r = 0; r < 4; ++r) {
            const long long m = m0 + a_m + 16 * r;
            a_next[r] = (ea.valid && m < p.rows) ? load_acc<T, Acc>(a_src, p.a_base + ea.a_offset + m * p.a_row_stride)
                                                 : Acc(0);
        }
        for (int r = 0; r < 4; ++r) {
            const KEntry& e = k_table[slot][b_k + 4 * r];
            const long long position[3] = {column.position[0] + e.shift[0], column.position[1] + e.shift[1],
                                           column.position[2] + e.shift[2]};
            b_next[r] = (e.valid && column.valid && inside3(position, p.limit))
                            ? load_acc<T, Acc>(b_src, column.base + e.b_offset)
                            : Acc(0);
        }
    };

    if (k_begin < k_end) {  // (uniform across the block) an empty reduction stores zeros (plus bias)
        decode_step(k_begin, 0);
        __syncthreads();
        fetch_step(0);
        decode_step(k_begin + FERRO_GEMM_TILE_K, 1);
    }
    int slot = 1;  // the table of the step fetched next
    for (long long k0 = k_begin; k0 < k_end; k0 += FERRO_GEMM_TILE_K) {
        for (int r = 0; r < 4; ++r) {
            a_tile[a_k][a_m / 4 + 4 * r].v[a_m % 4] = a_next[r];  // row a_m + 16r
            b_tile[b_k + 4 * r][b_n / 4].v[b_n % 4] = b_next[r];
        }
        __syncthreads();  // tiles stored; table `slot` decoded
        if (k0 + FERRO_GEMM_TILE_K < k_end) {
            fetch_step(slot);                                     // in flight during the products below
            decode_step(k0 + 2 * FERRO_GEMM_TILE_K, slot ^ 1);  // nobody reads that table before the next barrier
        }
        for (int kk = 0; kk < FERRO_GEMM_TILE_K; ++kk) {
            const Quad<Acc> a = a_tile[kk][ty];
            const Quad<Acc> b = b_tile[kk][tx];
            for (int i = 0; i < 4; ++i) {
                for (int j = 0; j < 4; ++j) {
                    c[i][j] += a.v[i] * b.v[j];
                }
            }
        }
        slot ^= 1;
        __syncthreads();  // products done before the tiles are overwritten
    }

    for (int i = 0; i < 4; ++i) {
        for (int j = 0; j < 4; ++j) {
            const long long m = m0 + 4 * ty + i;
            const long long n = n0 + 4 * tx + j;
            if (m < p.rows && n < p.columns) {
                p.store(m, n, c[i][j]);
            }
        }
    }
}

// Splits a tile index into (n tile, m tile, rest), n fastest.
struct TileIndex {
    long long n0;
    long long m0;
    long long rest;
};

__device__ __forceinline__ TileIndex tile_index(const long long tile, const long long rows, const long long columns) {
    const long long n_tiles = ceil_div(columns, FERRO_GEMM_TILE_N);
    const long long m_tiles = ceil_div(rows, FERRO_GEMM_TILE_M);
    TileIndex ti;
    ti.n0 = (tile % n_tiles) * FERRO_GEMM_TILE_N;
    ti.m0 = (tile / n_tiles % m_tiles) * FERRO_GEMM_TILE_M;
    ti.rest = tile / (n_tiles * m_tiles);
    return ti;
}

// y[n, o, p] = act(bias[o] + Σ_{c, t} w[o, c, t] · x[n, group·Cin_g + c, p·stride + t·dilation - padding]).
template <typename T, typename Acc>
struct CorrelateGemm {
    const KernelArgs& a;
    long long group, rows, columns, reduction, kernel_volume, in_volume, out_volume;
    const T* a_src;
    const T* b_src;
    long long a_base, a_row_stride;
    long long limit[3];

    __device__ CorrelateGemm(const KernelArgs& args, const long long g) : a(args), group(g) {
        rows = a.out_channels / a.groups;
        kernel_volume = volume3(a.kernel_size);
        in_volume = volume3(a.in_size);
        out_volume = volume3(a.out_size);
        columns = a.batch * out_volume;
        reduction = a.in_channels / a.groups * kernel_volume;
        a_src = static_cast<const T*>(a.w);
        b_src = static_cast<const T*>(a.x);
        a_base = group * rows * reduction;
        a_row_stride = reduction;
        for (int d = 0; d < 3; ++d) {
            limit[d] = a.in_size[d];
        }
    }

    __device__ void k_entry(const long long k, KEntry& e) const {
        long long tap[3];
        unflatten3(k % kernel_volume, a.kernel_size, tap);
        for (int d = 0; d < 3; ++d) {
            e.shift[d] = tap[d] * a.dilation[d];
        }
        e.a_offset = k;
        e.b_offset = k / kernel_volume * in_volume + flatten3(e.shift, a.in_size);
    }

    __device__ Column column(const long long n) const {
        Column col;
        col.valid = n < columns;
        const long long nn = col.valid ? n : 0;
        long long p[3];
        unflatten3(nn % out_volume, a.out_size, p);
        for (int d = 0; d < 3; ++d) {
            col.position[d] = p[d] * a.stride[d] - a.padding_lo[d];
        }
        const long long channels = a.in_channels / a.groups;
        col.base = (nn / out_volume * a.in_channels + group * channels) * in_volume + flatten3(col.position, a.in_size);
        return col;
    }

    __device__ void store(const long long m, const long long n, Acc v) const {
        const long long o = group * rows + m;
        if (a.bias != nullptr) {
            v += load_acc<T, Acc>(static_cast<const T*>(a.bias), o);
        }
        const long long i = (n / out_volume * a.out_channels + o) * out_volume + n % out_volume;
        store_acc<T, Acc>(static_cast<T*>(a.out), i, activate(a.activation, v));
    }
};

template <typename T, typename Acc>
__device__ void gemm_correlate(const KernelArgs& a) {
    const long long rows = a.out_channels / a.groups;
    const long long columns = a.batch * volume3(a.out_size);
    const long long tiles = ceil_div(rows, FERRO_GEMM_TILE_M) * ceil_div(columns, FERRO_GEMM_TILE_N) * a.groups;
    for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const TileIndex ti = tile_index(tile, rows, columns);
        const CorrelateGemm<T, Acc> p(a, ti.rest);
        gemm_tile<T, Acc>(p, ti.m0, ti.n0, 0, p.reduction);
    }
}

// x[n, group·Cin_g + c, i] = act(bias + Σ_{o, t} w[o, c, t] · y[n, o, (i + padding - t·dilation) / stride]), over
// the taps where the division is exact and lands inside y. The x positions of one stride phase (i ≡ first
// mod stride in each dim) meet the same taps, so each phase is a dense GEMM with no wasted products.
// The phase lives in shared memory (it is the same for the whole block, and registers are scarce).
template <typename T, typename Acc>
struct CorrelateAdjointGemm {
    const KernelArgs& a;
    const Phase& phase;
    long long group, rows, columns, reduction, kernel_volume, in_volume, out_volume, out_channels_g, taps, positions;
    const T* a_src;
    const T* b_src;
    long long a_base, a_row_stride;
    long long limit[3];

    __device__ CorrelateAdjointGemm(const KernelArgs& args, const Phase& ph, const long long g)
        : a(args), phase(ph), group(g) {
        rows = a.in_channels / a.groups;
        out_channels_g = a.out_channels / a.groups;
        kernel_volume = volume3(a.kernel_size);
        in_volume = volume3(a.in_size);
        out_volume = volume3(a.out_size);
        taps = volume3(phase.taps);
        positions = volume3(phase.count);
        columns = a.batch * positions;
        reduction = out_channels_g * taps;
        a_src = static_cast<const T*>(a.w);
        b_src = static_cast<const T*>(a.y);
        a_base = 0;
        a_row_stride = kernel_volume;
        for (int d = 0; d < 3; ++d) {
            limit[d] = a.out_size[d];
        }
    }

    __device__ void k_entry(const long long k, KEntry& e) const {
        const long long o = group * out_channels_g + k / taps;  // taps > 0 whenever k is decoded
        long long u[3];
        unflatten3(k % taps, phase.taps, u);
        long long tap[3];
        for (int d = 0; d < 3; ++d) {
            tap[d] = phase.tap_first[d] + u[d] * phase.tap_step[d];
            e.shift[d] = phase.q0[d] - u[d] * phase.q_step[d];
        }
        e.a_offset = o * rows * kernel_volume + flatten3(tap, a.kernel_size);
        e.b_offset = o * out_volume + flatten3(e.shift, a.out_size);
    }

    __device__ Column column(const long long n) const {
        Column col;
        col.valid = n < columns;
        const long long nn = col.valid ? n : 0;
        unflatten3(nn % positions, phase.count, col.position);
        col.base = nn / positions * a.out_channels * out_volume + flatten3(col.position, a.out_size);
        return col;
    }

    __device__ void store(const long long m, const long long n, Acc v) const {
        const long long channel = group * rows + m;
        if (a.bias != nullptr) {
            v += load_acc<T, Acc>(static_cast<const T*>(a.bias), channel);
        }
        long long j[3];
        unflatten3(n % positions, phase.count, j);
        long long position[3];
        for (int d = 0; d < 3; ++d) {
            position[d] = phase.first[d] + j[d] * a.stride[d];
        }
        const long long i = (n / positions * a.in_channels + channel) * in_volume + flatten3(position, a.in_size);
        store_acc<T, Acc>(static_cast<T*>(a.out), i, activate(a.activation, v));
    }
};

template <typename T, typename Acc>
__device__ void gemm_correlate_adjoint(const KernelArgs& a) {
    __shared__ Phase phase;
    const long long rows = a.in_channels / a.groups;
    long long phases[3];
    long long largest_phase = a.batch;
    for (int d = 0; d < 3; ++d) {
        phases[d] = min(a.stride[d], a.in_size[d]);
        largest_phase *= ceil_div(a.in_size[d], a.stride[d]);
    }
    const long long tiles =
        ceil_div(rows, FERRO_GEMM_TILE_M) * ceil_div(largest_phase, FERRO_GEMM_TILE_N) * a.groups * volume3(phases);
    for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const TileIndex ti = tile_index(tile, rows, largest_phase);
        __syncthreads();  // the previous tile is done with `phase`
        if (threadIdx.x == 0) {
            long long first[3];
            unflatten3(ti.rest / a.groups, phases, first);
            phase_init(phase, a, first);
        }
        __syncthreads();
        const CorrelateAdjointGemm<T, Acc> p(a, phase, ti.rest % a.groups);
        if (ti.n0 < p.columns) {  // smaller phases have fewer columns (uniform across the block)
            gemm_tile<T, Acc>(p, ti.m0, ti.n0, 0, p.reduction);
        }
    }
}

// dw[o, c, t] = Σ_{n, p} y[n, o, p] · x[n, group·Cin_g + c, p·stride + t·dilation - padding], over chunk `split`
// of the (n, p) reduction.
template <typename T, typename Acc>
struct CorrelateWeightGemm {
    const KernelArgs& a;
    long long group, split, rows, columns, reduction, kernel_volume, in_volume, out_volume;
    const T* a_src;
    const T* b_src;
    long long a_base, a_row_stride;
    long long limit[3];

    __device__ CorrelateWeightGemm(const KernelArgs& args, const long long g, const long long s)
        : a(args), group(g), split(s) {
        rows = a.out_channels / a.groups;
        kernel_volume = volume3(a.kernel_size);
        in_volume = volume3(a.in_size);
        out_volume = volume3(a.out_size);
        columns = a.in_channels / a.groups * kernel_volume;
        reduction = a.batch * out_volume;
        a_src = static_cast<const T*>(a.y);
        b_src = static_cast<const T*>(a.x);
        a_base = group * rows * out_volume;
        a_row_stride = out_volume;
        for (int d = 0; d < 3; ++d) {
            limit[d] = a.in_size[d];
        }
    }

    __device__ void k_entry(const long long k, KEntry& e) const {
        const long long n = k / out_volume;
        long long p[3];
        unflatten3(k % out_volume, a.out_size, p);
        for (int d = 0; d < 3; ++d) {
            e.shift[d] = p[d] * a.stride[d];
        }
        e.a_offset = n * a.out_channels * out_volume + k % out_volume;
        e.b_offset = n * a.in_channels * in_volume + flatten3(e.shift, a.in_size);
    }

    __device__ Column column(const long long n) const {
        Column col;
        col.valid = n < columns;
        const long long nn = col.valid ? n : 0;
        long long tap[3];
        unflatten3(nn % kernel_volume, a.kernel_size, tap);
        for (int d = 0; d < 3; ++d) {
            col.position[d] = tap[d] * a.dilation[d] - a.padding_lo[d];
        }
        const long long channel = group * (a.in_channels / a.groups) + nn / kernel_volume;
        col.base = channel * in_volume + flatten3(col.position, a.in_size);
        return col;
    }

    __device__ void store(const long long m, const long long n, const Acc v) const {
        store_reduced<T, Acc>(a, split, (group * rows + m) * columns + n, v);
    }
};

template <typename T, typename Acc>
__device__ void gemm_correlate_weight(const KernelArgs& a) {
    const long long rows = a.out_channels / a.groups;
    const long long columns = a.in_channels / a.groups * volume3(a.kernel_size);
    const long long reduction = a.batch * volume3(a.out_size);
    const long long tiles =
        ceil_div(rows, FERRO_GEMM_TILE_M) * ceil_div(columns, FERRO_GEMM_TILE_N) * a.groups * a.splits;
    for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        const TileIndex ti = tile_index(tile, rows, columns);
        const long long split = ti.rest / a.groups;
        const CorrelateWeightGemm<T, Acc> p(a, ti.rest % a.groups, split);
        const long long begin = split_begin(a, split);
        gemm_tile<T, Acc>(p, ti.m0, ti.n0, begin, min(begin + a.split_length, reduction));
    }
}

// Two resident blocks per multiprocessor (at most 128 registers a thread) hide more latency than the
// registers the compiler would otherwise take.
FERRO_INSTANTIATE_WITH_OCCUPANCY(gemm_correlate, 2)
FERRO_INSTANTIATE_WITH_OCCUPANCY(gemm_correlate_adjoint, 2)
FERRO_INSTANTIATE_WITH_OCCUPANCY(gemm_correlate_weight, 2)
