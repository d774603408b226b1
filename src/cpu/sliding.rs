//! Direct loops vectorised along the innermost dim: for convs whose groups
//! are too thin for a GEMM tile (depthwise, small channel multipliers).
//!
//! Each `src` plane is first copied into a [`Layout`]: zero borders in every
//! dim wide enough that no tap reads outside it, rows split into their
//! `src_stride[2]` phases so that the elements a tap reads for consecutive
//! outputs are contiguous. A `dst` row is then a sum over source channels and
//! taps of contiguous slices (`taps`: up to four output channels at once, all
//! terms accumulated in registers; with unit row strides the whole plane is one
//! such row, its pad columns computed and dropped), and a `dw` row a set of dot
//! products of one `dy` row with shifted slices (`dots`). Where a group has one
//! output (depthwise) and the taps form a grid of consecutive rows, the rows go
//! in blocks that load each source row once for all the block's rows that read
//! it (`row_taps`), stored straight into `dst` when it holds the accumulators.
//! At unit strides over whole planes of f32 or f64 those blocks read `src`
//! itself, with no copy (`row_taps_in_place`): a vector that hangs over a
//! row's ends loads only its lanes inside, a row outside the plane is skipped.
//!
//! A task owns the `dst` planes of one (image, group) (terms summed by channel, then tap), the `dw` rows of
//! one group (images, then rows, in order), or one channel of the bias gradient:
//! nothing depends on the thread count.

use rayon::prelude::*;

use super::kernels::{IN_PLACE_COLUMNS, IN_PLACE_PLANES, Kernels, RowSet, TapGrid};
use super::pass::{Pass, as_accumulators, as_accumulators_mut, epilogue, store_row, widen, widened};
use super::threads::Tasks;
use crate::backend::Activation;
use crate::element::{Accumulator, DType, Element};

/// Taps handed to one kernel call: bounded so their pointers live on the stack.
const TAP_CHUNK: usize = 32;

/// How one `src` plane is laid out so that no tap of the passes reads outside
/// it: zero borders in every dim, rows split into `stride2` phases.
#[derive(Debug, Clone)]
struct Layout {
    /// Zeros before the data in dims 0 and 1, and in a row.
    lo: [usize; 3],
    phase_len: usize,
    stride2: usize,
    /// Distance between rows (dim 1) and between slabs (dim 0).
    pitch: [usize; 2],
    /// Output points per row, rounded up to the lane count.
    outputs: usize,
    lanes: usize,
    len: usize,
}

impl Layout {
    /// The layout for `passes`, each swept as one run where `runs` says so
    /// (else row by row, each row a whole number of vectors).
    fn new(passes: &[Pass], runs: bool, lanes: usize) -> Layout {
        let first = &passes[0];
        let offsets = |d: usize| passes.iter().flat_map(move |p| p.taps.iter().map(move |t| t.offset[d]));
        let lo: [usize; 3] = std::array::from_fn(|d| (-offsets(d).min().unwrap_or(0)).max(0) as usize);
        // The extent each dim must have (past `lo`) for every output's furthest tap.
        let reach = |d: usize, outputs: usize| {
            let max_offset = offsets(d).max().unwrap_or(0).max(0) as usize;
            (outputs.saturating_sub(1) * first.src_stride[d] + max_offset + 1).max(first.src_size[d])
        };
        let count = |d: usize| passes.iter().map(|p| p.count[d]).max().unwrap_or(0);
        let outputs = count(2).next_multiple_of(lanes);
        // A row computed by a call of its own is a whole number of vectors;
        // in a single run, the columns past a row's outputs read the next
        // row's border and are dropped, so the row need only reach its own.
        let row_outputs = if runs { count(2) } else { outputs };
        let stride2 = first.src_stride[2];
        let phase_len = (lo[2] + reach(2, row_outputs)).div_ceil(stride2);
        let pitch1 = phase_len * stride2;
        let pitch0 = (lo[1] + reach(1, count(1))) * pitch1;
        let slabs = lo[0] + reach(0, count(0));
        // Slack so a whole-volume run starting at any tap stays inside.
        let len = slabs * pitch0 + pitch0 + lanes;
        Layout { lo, phase_len, stride2, pitch: [pitch0, pitch1], outputs, lanes, len }
    }

    /// Where tap `offset` reads the output at grid point 0.
    fn tap_start(&self, offset: [i64; 3]) -> usize {
        self.row_start(offset[0], offset[1]) + self.column_start(offset[2])
    }

    /// Where the row a tap at offsets `(d0, d1)` reads for grid point 0 starts.
    fn row_start(&self, d0: i64, d1: i64) -> usize {
        (self.lo[0] as i64 + d0) as usize * self.pitch[0] + (self.lo[1] as i64 + d1) as usize * self.pitch[1]
    }

    /// Where, from its row's start, a tap at offset `d2` reads for grid point 0.
    fn column_start(&self, d2: i64) -> usize {
        let e = (self.lo[2] as i64 + d2) as usize;
        (e % self.stride2) * self.phase_len + e / self.stride2
    }

    /// Whether the whole grid of `pass` is one run with the volume's pitches
    /// (unit strides along dims 0 and 1), so one kernel call covers it.
    fn single_run(pass: &Pass) -> bool {
        pass.src_stride[0] == 1 && pass.src_stride[1] == 1
    }

    /// Length of the accumulator of `pass` (swept as one run, or not), and
    /// where grid row `(m0, m1)` starts in it.
    fn acc_len(&self, pass: &Pass, run: bool) -> usize {
        if run {
            let [c0, c1, c2] = pass.count;
            ((c0 - 1) * self.pitch[0] + (c1 - 1) * self.pitch[1] + c2).next_multiple_of(self.lanes)
        } else {
            pass.count[0] * pass.count[1] * self.outputs
        }
    }

    fn acc_row(&self, pass: &Pass, run: bool, m0: usize, m1: usize) -> usize {
        if run { m0 * self.pitch[0] + m1 * self.pitch[1] } else { (m0 * pass.count[1] + m1) * self.outputs }
    }
}

/// How [`correlate`] walks the grid of one pass.
#[derive(Debug)]
enum Sweep {
    /// The whole grid as one run with the layout's pitches (unit strides
    /// along dims 0 and 1): one `taps` call, its pad columns computed and dropped.
    Run,
    /// Blocks of grid rows sharing their source rows (`row_taps`): where a
    /// group has one output, whose `taps` would load each source vector for
    /// it alone, and the taps form a grid of two or more consecutive rows.
    RowBlocks(TapRows),
    /// One `taps` call per grid row.
    Rows,
}

impl Sweep {
    fn of(pass: &Pass) -> Sweep {
        if !Layout::single_run(pass) {
            return Sweep::Rows;
        }
        let thin = pass.dst_channels == 1 && pass.count[1] > 1;
        match thin.then(|| TapRows::of(pass)).flatten().filter(|rows| rows.rows > 1) {
            Some(rows) => Sweep::RowBlocks(rows),
            None => Sweep::Run,
        }
    }

    fn is_run(&self) -> bool {
        matches!(self, Sweep::Run)
    }

    /// The pass's taps in the order its kernel takes their weights.
    fn order(&self, pass: &Pass) -> Vec<usize> {
        match self {
            Sweep::RowBlocks(rows) => rows.order.clone(),
            _ => (0..pass.taps.len()).collect(),
        }
    }
}

/// The taps of a pass as a grid: each combination of a dim-0 offset in
/// `slabs`, one of `rows` consecutive dim-1 offsets from `first_row` and a
/// dim-2 offset in `columns` is one tap.
#[derive(Debug)]
struct TapRows {
    /// Indices into the pass's taps, in grid order (slab, row, column).
    order: Vec<usize>,
    slabs: Vec<i64>,
    first_row: i64,
    rows: usize,
    columns: Vec<i64>,
}

impl TapRows {
    fn of(pass: &Pass) -> Option<TapRows> {
        let distinct = |d: usize| {
            let mut offsets: Vec<i64> = pass.taps.iter().map(|t| t.offset[d]).collect();
            offsets.sort_unstable();
            offsets.dedup();
            offsets
        };
        let (slabs, rows, columns) = (distinct(0), distinct(1), distinct(2));
        if rows.is_empty() || !rows.windows(2).all(|pair| pair[1] == pair[0] + 1) {
            return None;
        }
        let mut order: Vec<usize> = (0..pass.taps.len()).collect();
        order.sort_unstable_by_key(|&t| pass.taps[t].offset);
        // Sorted, the taps are the grid exactly when each combination occurs once.
        let (row_list, column_list) = (&rows, &columns);
        let grid =
            slabs.iter().flat_map(|&a| row_list.iter().flat_map(move |&b| column_list.iter().map(move |&c| [a, b, c])));
        if !order.iter().map(|&t| pass.taps[t].offset).eq(grid) {
            return None;
        }
        Some(TapRows { order, first_row: rows[0], rows: rows.len(), slabs, columns })
    }

    /// The grid in element offsets of `layout`, and the origin they count from.
    fn in_layout(&self, layout: &Layout) -> (TapGrid, usize) {
        let rows: Vec<usize> = self.slabs.iter().map(|&d0| layout.row_start(d0, self.first_row)).collect();
        let columns: Vec<usize> = self.columns.iter().map(|&d2| layout.column_start(d2)).collect();
        let (row0, column0) = (rows.iter().min().copied().unwrap_or(0), columns.iter().min().copied().unwrap_or(0));
        let grid = TapGrid {
            slabs: rows.iter().map(|r| r - row0).collect(),
            tap_rows: self.rows,
            columns: columns.iter().map(|c| c - column0).collect(),
            pitch: layout.pitch[1],
        };
        (grid, row0 + column0)
    }
}

/// The tap grid of a pass that [`Kernels::row_taps_in_place`] reads from
/// `src` itself, skipping the bordered copy (a memory-bound pass over `src`
/// that took a third of MobileNet's depthwise layer): a `RowBlocks` sweep at
/// unit strides over whole `dst` planes, with few enough column taps and
/// terms for the kernel, where `src` holds the accumulators themselves.
fn in_place_rows<'a>(pass: &Pass, sweep: &'a Sweep, accumulator_src: bool) -> Option<&'a TapRows> {
    let Sweep::RowBlocks(rows) = sweep else { return None };
    let whole = pass.step == [1; 3] && pass.count == pass.dst_size;
    let fits = rows.columns.len() <= IN_PLACE_COLUMNS && pass.src_channels * rows.slabs.len() <= IN_PLACE_PLANES;
    (accumulator_src && whole && fits && pass.src_stride == [1; 3]).then_some(rows)
}

/// Computes the `cd` planes `dst` of (image `n`, `group`) for `pass` by
/// [`Kernels::row_taps_in_place`] on `src`'s planes, then the epilogue.
#[allow(clippy::too_many_arguments)]
fn correlate_in_place<A: Accumulator>(
    ks: &Kernels<A>,
    pass: &Pass,
    rows: &TapRows,
    src: &[A],
    weights: &[A],
    (n, group): (usize, usize),
    (bias, activation): (Option<&[A]>, Activation),
    dst: &mut [A],
) {
    let ([_, c1, c2], [depth, height, width]) = (pass.count, pass.src_size);
    let (cs, cd, ntaps, plane_len) = (pass.src_channels, pass.dst_channels, pass.taps.len(), height * width);
    let per_slab = rows.rows * rows.columns.len();
    let columns: Vec<isize> = rows.columns.iter().map(|&c| c as isize).collect();
    for (o, plane) in dst.chunks_mut(pass.dst_volume()).enumerate() {
        let kernels = &weights[(group * cd + o) * cs * ntaps..][..cs * ntaps];
        for (m0, out) in plane.chunks_mut(c1 * c2).enumerate() {
            // The terms this output slab reads: (channel, slab) pairs inside the source.
            let mut terms = [(&src[..0], &kernels[..0]); IN_PLACE_PLANES];
            let mut count = 0;
            for (c, kernel) in kernels.chunks(ntaps).enumerate() {
                let channel = pass.src_plane(n, group, c);
                for (s, &d0) in rows.slabs.iter().enumerate() {
                    let slab = m0 as i64 + d0;
                    if (0..depth as i64).contains(&slab) {
                        let source = &src[channel + slab as usize * plane_len..][..plane_len];
                        terms[count] = (source, &kernel[s * per_slab..][..per_slab]);
                        count += 1;
                    }
                }
            }
            let grid = (rows.first_row as isize, rows.rows);
            ks.row_taps_in_place(&terms[..count], [height, width], grid, &columns, (c1, c2), out, c2);
        }
        epilogue(plane, bias.map(|b| b[group * cd + o]), activation);
    }
}

/// Copies one `src` plane to its place in `data`, laid out per [`Layout`].
/// Only the data positions are written: they are the same for every plane,
/// so a buffer that starts zeroed keeps its zero borders from plane to plane.
fn fill<T: Element>(plane: &[T], size: [usize; 3], layout: &Layout, data: &mut [T::Accum], buffer: &mut Vec<T::Accum>) {
    let width = size[2];
    if width == 0 {
        return;
    }
    let plane = widened(plane, buffer);
    for (i0, slab) in plane.chunks(size[1] * width).enumerate() {
        for (i1, row) in slab.chunks(width).enumerate() {
            let dst = &mut data[(layout.lo[0] + i0) * layout.pitch[0] + (layout.lo[1] + i1) * layout.pitch[1]..];
            if layout.stride2 == 1 {
                dst[layout.lo[2]..][..width].copy_from_slice(row);
                continue;
            }
            for (i, &v) in row.iter().enumerate() {
                let e = layout.lo[2] + i;
                dst[(e % layout.stride2) * layout.phase_len + e / layout.stride2] = v;
            }
        }
    }
}

/// Bytes of scratch `correlate` (or, with `weight`, `correlate_weight`) takes for
/// `passes` with `threads` tasks in flight: each task's laid-out source planes
/// and accumulators.
pub(crate) fn workspace_bytes<A>(
    ks: &Kernels<A>,
    passes: &[Pass],
    weight: bool,
    dtype: DType,
    threads: usize,
) -> usize {
    let Some(first) = passes.first() else { return 0 };
    if first.dst_volume() == 0 {
        return 0;
    }
    let accumulator_src = matches!(dtype, DType::F32 | DType::F64);
    if let [pass] = passes
        && !weight
        && in_place_rows(pass, &Sweep::of(pass), accumulator_src).is_some()
    {
        return 0;
    }
    let (layout, accumulators) = if weight {
        let layout = Layout::new(passes, Layout::single_run(first), ks.lanes);
        (layout, first.dst_channels * first.src_channels * first.taps.len() + first.dst_volume())
    } else {
        let sweeps: Vec<Sweep> = passes.iter().map(Sweep::of).collect();
        let layout = Layout::new(passes, sweeps.iter().all(Sweep::is_run), ks.lanes);
        let accumulators = passes.iter().zip(&sweeps).map(|(p, sweep)| layout.acc_len(p, sweep.is_run())).sum();
        (layout, accumulators)
    };
    let sources = first.src_channels * layout.len;
    threads.max(1) * (sources + accumulators) * std::mem::size_of::<A>()
}

/// Output channels one `taps` call computes at most: its widest block.
const OUTPUT_BLOCK: usize = 4;

/// A worker's buffers, reused from task to task.
struct Scratch<A> {
    /// The task's `src` planes, laid out.
    sources: Vec<A>,
    /// `OUTPUT_BLOCK` accumulators of one pass.
    accs: Vec<A>,
    /// Widened `src` values (half types only).
    widened: Vec<A>,
}

/// Runs `passes` (which together cover `dst`); a task owns the `cd` planes of
/// one (image, group), computed a few channels at a time, each output the sum
/// over source channels, then taps, of one chain of multiply-adds.
pub(crate) fn correlate<T: Element>(
    ks: &Kernels<T::Accum>,
    passes: &[Pass],
    src: &[T],
    w: &[T],
    bias: Option<&[T]>,
    activation: Activation,
    dst: &mut [T],
) {
    let Some(first) = passes.first() else { return };
    let (volume, cd, cs, groups) = (first.dst_volume(), first.dst_channels, first.src_channels, first.groups);
    if volume == 0 {
        return;
    }
    let sweeps: Vec<Sweep> = passes.iter().map(Sweep::of).collect();
    let layout = Layout::new(passes, sweeps.iter().all(Sweep::is_run), ks.lanes);
    let orders: Vec<Vec<usize>> = passes.iter().zip(&sweeps).map(|(p, sweep)| sweep.order(p)).collect();
    // Where each tap of `taps` reads; `row_taps` takes its grid instead.
    let starts: Vec<Vec<usize>> = passes
        .iter()
        .zip(&sweeps)
        .map(|(p, sweep)| match sweep {
            Sweep::RowBlocks(_) => Vec::new(),
            _ => p.taps.iter().map(|t| layout.tap_start(t.offset)).collect(),
        })
        .collect();
    let grids: Vec<Option<(TapGrid, usize)>> = sweeps
        .iter()
        .map(|sweep| match sweep {
            Sweep::RowBlocks(rows) => Some(rows.in_layout(&layout)),
            _ => None,
        })
        .collect();
    // Per pass, the weights in the order its kernel reads them: [group][o][c][tap].
    let weights: Vec<Vec<T::Accum>> = passes
        .iter()
        .zip(&orders)
        .map(|(p, order)| {
            let mut reordered = Vec::with_capacity(groups * cd * cs * p.taps.len());
            for (group, o) in (0..groups).flat_map(|group| (0..cd).map(move |o| (group, o))) {
                for c in 0..cs {
                    let kernel = p.kernel_start(group, o, c);
                    reordered.extend(order.iter().map(|&t| w[kernel + p.taps[t].index].to_accum()));
                }
            }
            reordered
        })
        .collect();
    // A single pass read in place: `src` and `dst` are then the accumulators themselves.
    let in_place = match (passes, as_accumulators(src)) {
        ([pass], Some(src)) => in_place_rows(pass, &sweeps[0], true).map(|rows| (pass, rows, src)),
        _ => None,
    };
    let bias_accumulators = bias.and_then(as_accumulators);
    let scratch = || Scratch { sources: Vec::new(), accs: Vec::new(), widened: Vec::new() };
    dst.par_chunks_mut(cd * volume).tasks().enumerate().for_each_init(scratch, |scratch, (task, dst_planes)| {
        let (n, group) = (task / groups, task % groups);
        if let (Some((pass, rows, src)), Some(planes)) = (in_place, as_accumulators_mut(dst_planes)) {
            let epilogue = (bias_accumulators, activation);
            correlate_in_place(ks, pass, rows, src, &weights[0], (n, group), epilogue, planes);
            return;
        }
        let Scratch { sources, accs, widened } = scratch;
        // Zeroed once: `fill` rewrites the same data positions for every task.
        sources.resize(cs * layout.len, T::Accum::ZERO);
        for (c, data) in sources.chunks_mut(layout.len).enumerate() {
            let start = first.src_plane(n, group, c);
            fill(&src[start..][..first.src_volume()], first.src_size, &layout, data, widened);
        }
        for (((pass, sweep), starts), (weights, grid)) in
            passes.iter().zip(&sweeps).zip(&starts).zip(weights.iter().zip(&grids))
        {
            let mut rows = RowSet::with_capacity(cs * starts.len());
            for data in sources.chunks(layout.len) {
                for &s in starts {
                    rows.push(&data[s..]);
                }
            }
            let run = sweep.is_run();
            let (acc_len, reduction) = (layout.acc_len(pass, run), pass.reduction());
            accs.resize(OUTPUT_BLOCK * acc_len, T::Accum::ZERO);
            for o0 in (0..cd).step_by(OUTPUT_BLOCK) {
                let outputs = OUTPUT_BLOCK.min(cd - o0);
                let acc = &mut accs[..outputs * acc_len];
                let weights = &weights[(group * cd + o0) * reduction..][..outputs * reduction];
                if reduction == 0 {
                    acc.fill(T::Accum::ZERO);
                } else if let Some((grid, origin)) = grid {
                    let slab = |m0: usize| {
                        let mut slab = RowSet::with_capacity(cs);
                        for data in sources.chunks(layout.len) {
                            slab.push(&data[origin + m0 * layout.pitch[0]..]);
                        }
                        slab
                    };
                    let [c0, c1, c2] = pass.count;
                    // Straight into `dst` where it holds the accumulators and the
                    // pass covers whole planes: the stores then overlap the
                    // arithmetic, where copying the rows out afterwards waits on
                    // `dst`'s cache lines alone (mbv2_dw_144: 0.69 -> 0.57 ms).
                    let whole = pass.step == [1; 3] && pass.count == pass.dst_size;
                    if let Some(planes) = as_accumulators_mut(dst_planes).filter(|_| whole) {
                        for (o, weights) in (o0..o0 + outputs).zip(weights.chunks(reduction)) {
                            let plane = &mut planes[o * volume..][..volume];
                            for (m0, out) in plane.chunks_mut(c1 * c2).enumerate() {
                                ks.row_taps(grid, &slab(m0), weights, c1, c2, out, c2);
                            }
                            epilogue(plane, bias.map(|b| b[group * cd + o].to_accum()), activation);
                        }
                        continue;
                    }
                    for (acc, weights) in acc.chunks_mut(acc_len).zip(weights.chunks(reduction)) {
                        for m0 in 0..c0 {
                            let out = &mut acc[layout.acc_row(pass, run, m0, 0)..];
                            ks.row_taps(grid, &slab(m0), weights, c1, layout.outputs, out, layout.outputs);
                        }
                    }
                } else if run {
                    ks.taps(&rows, 0, weights, acc, acc_len, acc_len);
                } else {
                    for m0 in 0..pass.count[0] {
                        for m1 in 0..pass.count[1] {
                            let stride = pass.src_stride;
                            let offset = m0 * stride[0] * layout.pitch[0] + m1 * stride[1] * layout.pitch[1];
                            let out = &mut acc[layout.acc_row(pass, run, m0, m1)..];
                            ks.taps(&rows, offset, weights, out, acc_len, layout.outputs);
                        }
                    }
                }
                for (o, acc) in (o0..o0 + outputs).zip(acc.chunks_mut(acc_len)) {
                    let b = bias.map(|b| b[group * cd + o].to_accum());
                    let dst_plane = &mut dst_planes[o * volume..][..volume];
                    for m0 in 0..pass.count[0] {
                        for m1 in 0..pass.count[1] {
                            let out = &mut acc[layout.acc_row(pass, run, m0, m1)..][..pass.count[2]];
                            let q = pass.dst_position([m0, m1, 0]);
                            store_row(out, b, activation, &mut dst_plane[q..], pass.step[2]);
                        }
                    }
                }
            }
        }
    });
}

/// `dw[g·cd + o, c·taps + j] = Σ_n Σ_rows dot(dy row, shifted x row)` for the
/// forward `pass`. A task owns the `cd` rows of `dw` of one group, so each `x`
/// plane is laid out once per image for all of them; terms are summed by
/// image, then row.
///
/// With unit strides along dims 0 and 1, rows that end in a partial vector,
/// and an all-finite image, the rows are one run instead: `dy` laid out with
/// the pitches of the `x` layout and zeros in its gaps, so each dot product is
/// one long run with no row tails (the gaps meet `x` values that only leave
/// the sums unchanged when finite).
pub(crate) fn correlate_weight<T: Element>(ks: &Kernels<T::Accum>, pass: &Pass, x: &[T], y: &[T], dw: &mut [T]) {
    let (cd, cs, ntaps) = (pass.dst_channels, pass.src_channels, pass.taps.len());
    let (y_volume, x_volume) = (pass.dst_volume(), pass.src_volume());
    if cd * cs * ntaps == 0 || y_volume == 0 {
        return;
    }
    let layout = Layout::new(std::slice::from_ref(pass), Layout::single_run(pass), ks.lanes);
    let starts: Vec<usize> = pass.taps.iter().map(|t| layout.tap_start(t.offset)).collect();
    let [_, c1, c2] = pass.count;
    // Rows a whole number of vectors long have no tails to save.
    let single_run = Layout::single_run(pass) && !c2.is_multiple_of(ks.lanes);
    let run_len = if single_run { layout.acc_len(pass, true) } else { 0 };
    dw.par_chunks_mut(cd * cs * ntaps).tasks().enumerate().for_each(|(group, dw_rows)| {
        let mut acc = vec![T::Accum::ZERO; cd * cs * ntaps];
        let mut sources = vec![T::Accum::ZERO; cs * layout.len];
        // Zeroed once: only the data positions are rewritten, image by image.
        let mut dy_run = vec![T::Accum::ZERO; run_len];
        let (mut x_buffer, mut y_buffer) = (Vec::new(), Vec::new());
        let mut partial = [T::Accum::ZERO; TAP_CHUNK];
        // Adds to `grads` (one per tap) the dots of `rows` rows of `len` values of
        // `a` (packed) with the tap's rows of the laid-out source `data`, from `base`, `ldb` apart.
        let mut dots = |data: &[T::Accum],
                        a: &[T::Accum],
                        rows: usize,
                        len: usize,
                        base: usize,
                        ldb: usize,
                        grads: &mut [T::Accum]| {
            for (starts, grads) in starts.chunks(TAP_CHUNK).zip(grads.chunks_mut(TAP_CHUNK)) {
                let mut slices = [&data[..0]; TAP_CHUNK];
                for (slice, &s) in slices.iter_mut().zip(starts) {
                    *slice = &data[base + s..];
                }
                let partial = &mut partial[..starts.len()];
                partial.fill(T::Accum::ZERO);
                ks.dots(len, rows, a, len, &slices[..starts.len()], ldb, partial);
                for (g, &p) in grads.iter_mut().zip(partial.iter()) {
                    *g += p;
                }
            }
        };
        for n in 0..pass.batch {
            for (c, data) in sources.chunks_mut(layout.len).enumerate() {
                let start = pass.src_plane(n, group, c);
                fill(&x[start..][..x_volume], pass.src_size, &layout, data, &mut x_buffer);
            }
            // A finite sum means finite values (an overflow only costs the faster path).
            let as_run = single_run && ks.sum(&sources).to_f64().is_finite();
            for (o, acc) in acc.chunks_mut(cs * ntaps).enumerate() {
                let plane = (n * pass.groups + group) * cd + o;
                let dy = &y[plane * y_volume..][..y_volume];
                if as_run {
                    for (r, row) in dy.chunks(c2).enumerate() {
                        let at = (r / c1) * layout.pitch[0] + (r % c1) * layout.pitch[1];
                        widen(row, &mut dy_run[at..][..c2]);
                    }
                    for (data, grads) in sources.chunks(layout.len).zip(acc.chunks_mut(ntaps)) {
                        dots(data, &dy_run, 1, run_len, 0, run_len, grads);
                    }
                    continue;
                }
                let dy = widened(dy, &mut y_buffer);
                let stride = pass.src_stride;
                for (data, grads) in sources.chunks(layout.len).zip(acc.chunks_mut(ntaps)) {
                    // One slab (dim 0) at a time: its rows are evenly spaced in both planes.
                    for (m0, dy_slab) in dy.chunks(c1 * c2).enumerate() {
                        let base = m0 * stride[0] * layout.pitch[0];
                        dots(data, dy_slab, c1, c2, base, stride[1] * layout.pitch[1], grads);
                    }
                }
            }
        }
        for (d, a) in dw_rows.iter_mut().zip(acc) {
            *d = T::from_accum(a);
        }
    });
}

/// Elements summed per `sum` call in [`channel_sums`]: the widening buffer stays in L1.
const SUM_CHUNK: usize = 2048;

/// `sums[c] = Σ_{n, p} t[n, c, p]`, one channel per task, in fixed chunks.
pub(crate) fn channel_sums<T: Element>(
    ks: &Kernels<T::Accum>,
    batch: usize,
    channels: usize,
    volume: usize,
    t: &[T],
    sums: &mut [T],
) {
    sums.par_iter_mut().tasks().enumerate().for_each(|(c, dst)| {
        let mut acc = T::Accum::ZERO;
        let mut buffer = Vec::new();
        for n in 0..batch {
            for chunk in t[(n * channels + c) * volume..][..volume].chunks(SUM_CHUNK) {
                acc += ks.sum(widened(chunk, &mut buffer));
            }
        }
        *dst = T::from_accum(acc);
    });
}

#[cfg(test)]
mod tests {
    use super::{Sweep, TapRows};
    use crate::cpu::pass::Pass;
    use crate::geometry::{ConvGeometry, ConvOptions};

    fn conv(x: &[usize], w: &[usize], options: ConvOptions) -> ConvGeometry {
        ConvGeometry::conv(x.len() - 2, x, w, None, &options).unwrap()
    }

    #[test]
    fn taps_form_a_grid_of_consecutive_rows_or_none() {
        // A 3×3 kernel: one slab, rows -1..=1, in the pass's own order.
        let pass = Pass::forward(&conv(&[1, 4, 8, 8], &[4, 1, 3, 3], ConvOptions::new().padding(1).groups(4)));
        let rows = TapRows::of(&pass).unwrap();
        assert_eq!((rows.slabs, rows.first_row, rows.rows, rows.columns), (vec![0], -1, 3, vec![-1, 0, 1]));
        assert_eq!(rows.order, (0..9).collect::<Vec<_>>());
        assert!(matches!(Sweep::of(&pass), Sweep::RowBlocks(_)));
        // Its adjoint reads the flipped kernel: the same grid, the taps reversed.
        let adjoint = &Pass::adjoint(&conv(&[1, 4, 8, 8], &[4, 1, 3, 3], ConvOptions::new().padding(1).groups(4)))[0];
        assert_eq!(TapRows::of(adjoint).unwrap().order, (0..9).rev().collect::<Vec<_>>());
        // Rows two apart share no source rows between neighbouring outputs.
        let dilated = Pass::forward(&conv(&[1, 4, 8, 8], &[4, 1, 3, 3], ConvOptions::new().dilation([2, 1]).groups(4)));
        assert!(TapRows::of(&dilated).is_none() && matches!(Sweep::of(&dilated), Sweep::Run));
        // Two outputs per group share loads in `taps` instead; strided rows go row by row.
        let two = Pass::forward(&conv(&[1, 4, 8, 8], &[8, 1, 3, 3], ConvOptions::new().groups(4)));
        assert!(matches!(Sweep::of(&two), Sweep::Run));
        let strided = Pass::forward(&conv(&[1, 4, 8, 8], &[4, 1, 3, 3], ConvOptions::new().stride(2).groups(4)));
        assert!(matches!(Sweep::of(&strided), Sweep::Rows));
        // A 3-D kernel: three slabs of three rows.
        let cube = Pass::forward(&conv(&[1, 2, 5, 5, 5], &[2, 1, 3, 3, 3], ConvOptions::new().groups(2)));
        let rows = TapRows::of(&cube).unwrap();
        assert_eq!((rows.slabs.len(), rows.rows, rows.columns.len(), rows.order.len()), (3, 3, 3, 27));
    }
}
