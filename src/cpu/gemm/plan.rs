//! How an op is cut into tasks: column blocks of positions, row blocks of channels.

use std::ops::Range;

use super::bordered::BorderedLayout;
use super::{COLUMNS, MIN_TASKS, PANEL_BYTES, ROWS};
use crate::cpu::pass::Pass;

/// Column blocks: `batch` planes of `volume` positions cut into blocks of
/// whole planes (`images` of them) or of `positions` positions of one plane.
/// A function of the shape only.
#[derive(Debug, Clone)]
pub(crate) struct Columns {
    pub(super) images: usize,
    pub(super) positions: usize,
    pub(super) position_blocks: usize,
    pub(super) blocks: usize,
}

impl Columns {
    /// Blocks of about `target` positions.
    pub(super) fn new(batch: usize, volume: usize, target: usize) -> Columns {
        let target = target.max(1);
        let (images, positions) =
            if volume <= target { ((target / volume.max(1)).clamp(1, batch.max(1)), volume) } else { (1, target) };
        let position_blocks = volume.div_ceil(positions.max(1)).max(1);
        Columns { images, positions, position_blocks, blocks: batch.div_ceil(images) * position_blocks }
    }

    /// The images and positions of block `index`.
    pub(super) fn block(&self, index: usize, batch: usize, volume: usize) -> (Range<usize>, Range<usize>) {
        let (ib, pb) = (index / self.position_blocks, index % self.position_blocks);
        let images = ib * self.images..((ib + 1) * self.images).min(batch);
        let positions = pb * self.positions..((pb + 1) * self.positions).min(volume);
        (images, positions)
    }
}

/// Positions per column block for one pass read in place, on planes larger
/// than `target` with rows no longer: whole rows, as many (up to `2·target`
/// positions) as compute the fewest columns per output. A block of `r` rows
/// computes `r·pitch − (pitch − width)` virtual columns rounded up to `nr`:
/// on a 56-wide row of pitch 58, 5 rows waste 3% where 256 positions waste 6%;
/// on a 128-wide row of pitch 130, 1 row wastes none. `None` elsewhere.
pub(super) fn whole_rows(passes: &[Pass], nr: usize, target: usize) -> Option<usize> {
    let [pass] = passes else { return None };
    let layout = BorderedLayout::new(passes, nr)?;
    let (width, pitch) = (pass.dst_size[2], layout.extent[2]);
    if pass.count[2] != width || pass.dst_volume() <= target || width > target {
        return None;
    }
    let computed = |rows: usize| (rows * pitch - (pitch - width)).next_multiple_of(nr);
    // Fewest computed columns per output (`computed(a)/a < computed(b)/b`), then more rows.
    // Blocks of at least `target / 2` positions: smaller ones cost more in per-task work than they save.
    (target.div_ceil(2).div_ceil(width)..=2 * target / width)
        .min_by(|&a, &b| (computed(a) * b).cmp(&(computed(b) * a)).then(b.cmp(&a)))
        .map(|rows| rows * width)
}

/// `rows` cut into about `parts` blocks, each a multiple of `align` and at most `cap` (rounded up to `align`).
pub(super) fn row_block(rows: usize, parts: usize, align: usize, cap: usize) -> usize {
    rows.div_ceil(parts.max(1)).clamp(1, cap.max(1)).next_multiple_of(align)
}

/// How a forward or adjoint op is split: column blocks × groups are tasks,
/// each cut into row blocks that run in parallel on the task's shared panel.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    pub(super) columns: Columns,
    /// The most channels in a row block.
    pub(super) rows: usize,
    /// Row blocks per task: whole `MR` strips, as even in count as they can be,
    /// so that no block is a straggler.
    pub(super) row_blocks: usize,
    pub(super) strips: usize,
    pub(super) mr: usize,
    /// Panel leading dimension bound (columns rounded up to `NR`).
    pub(super) max_ldb: usize,
}

impl Plan {
    pub(super) fn new(passes: &[Pass], mr: usize, nr: usize, element: usize) -> Option<Plan> {
        let first = passes.first()?;
        let k = passes.iter().map(Pass::reduction).max().unwrap_or(0).max(1);
        let target = COLUMNS.min((PANEL_BYTES / (k * element)).max(nr));
        let columns = match whole_rows(passes, nr, target) {
            Some(positions) => Columns::new(first.batch, first.dst_volume(), positions),
            // Positions so that each pass gets about `target` grid points.
            None => Columns::new(first.batch, first.dst_volume(), target * passes.len()),
        };
        let tasks = columns.blocks * first.groups;
        let rows = row_block(first.dst_channels, MIN_TASKS.div_ceil(tasks.max(1)), mr, ROWS);
        let strips = first.dst_channels.div_ceil(mr);
        let row_blocks = strips.div_ceil(rows / mr).max(1);
        let rows = strips.div_ceil(row_blocks) * mr;
        let max_ldb = passes.iter().map(|p| grid_columns(p, &columns)).max().unwrap_or(0).next_multiple_of(nr);
        Some(Plan { columns, rows, row_blocks, strips, mr, max_ldb })
    }

    /// The channels of row block `index` among `channels` (those of one group).
    pub(super) fn row_block_channels(&self, index: usize, channels: usize) -> Range<usize> {
        let strip = |b: usize| b * self.strips / self.row_blocks;
        (strip(index) * self.mr).min(channels)..(strip(index + 1) * self.mr).min(channels)
    }
}

/// The most grid points a column block holds in `pass`.
pub(super) fn grid_columns(pass: &Pass, columns: &Columns) -> usize {
    let per_image = if columns.positions >= pass.dst_volume() {
        pass.count.iter().product()
    } else {
        // A run of `positions` touches at most this many rows, each with at most this many points.
        let rows = columns.positions.div_ceil(pass.dst_size[2]) + 1;
        rows * pass.count[2].min(columns.positions)
    };
    per_image * columns.images
}
