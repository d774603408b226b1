//! Tiles of accumulators to `dst`: the epilogue, and the interleaved store of a pass pair.

use std::ops::Range;

use crate::backend::Activation;
use crate::cpu::pass::{Pass, Segment, epilogue, store_row};
use crate::element::Element;

/// Where a tile goes: its images, positions, group and channels.
pub(super) struct Region {
    pub(super) images: Range<usize>,
    pub(super) positions: Range<usize>,
    pub(super) group: usize,
    pub(super) channels: Range<usize>,
}

/// A computed tile: a row per channel, `ldb` apart, each segment's values from its column.
pub(super) struct Tile<'a, A> {
    pub(super) values: &'a mut [A],
    pub(super) ldb: usize,
    pub(super) segments: &'a [Segment],
}

/// Writes `act(tile + bias)` to the region's grid points of `pass`; `pieces` are ordered (channel, image).
pub(super) fn write_tile<T: Element>(
    pass: &Pass,
    bias: Option<&[T]>,
    activation: Activation,
    tile: Tile<'_, T::Accum>,
    region: &Region,
    pieces: &mut [&mut [T]],
) {
    let images = region.images.len();
    let rows = tile.values.chunks_mut(tile.ldb);
    for ((o, tile_row), planes) in region.channels.clone().zip(rows).zip(pieces.chunks_mut(images)) {
        let b = bias.map(|b| b[region.group * pass.dst_channels + o].to_accum());
        for seg in tile.segments {
            let piece = &mut planes[seg.n - region.images.start];
            let first = pass.dst_position([seg.m[0], seg.m[1], seg.m2.start]) - region.positions.start;
            let values = &mut tile_row[seg.column..][..seg.m2.len()];
            store_row(values, b, activation, &mut piece[first..], pass.step[2]);
        }
    }
}

/// [`write_tile`] for the tiles of two passes that [`interleave`](interleaves)
/// (`even` of `pass`, `odd` of the next, their segments alike): each row's
/// values alternate, one contiguous run per segment.
pub(super) fn write_tile_pair<T: Element>(
    pass: &Pass,
    bias: Option<&[T]>,
    activation: Activation,
    even: Tile<'_, T::Accum>,
    odd: Tile<'_, T::Accum>,
    region: &Region,
    pieces: &mut [&mut [T]],
) {
    let images = region.images.len();
    let rows = even.values.chunks_mut(even.ldb).zip(odd.values.chunks_mut(odd.ldb));
    for ((o, (even_row, odd_row)), planes) in region.channels.clone().zip(rows).zip(pieces.chunks_mut(images)) {
        let b = bias.map(|b| b[region.group * pass.dst_channels + o].to_accum());
        for (e, d) in even.segments.iter().zip(odd.segments) {
            let piece = &mut planes[e.n - region.images.start];
            let first = pass.dst_position([e.m[0], e.m[1], e.m2.start]) - region.positions.start;
            let even_values = &mut even_row[e.column..][..e.m2.len()];
            let odd_values = &mut odd_row[d.column..][..d.m2.len()];
            epilogue(even_values, b, activation);
            epilogue(odd_values, b, activation);
            for ((pair, &x), &y) in
                piece[first..][..2 * e.m2.len()].chunks_exact_mut(2).zip(&*even_values).zip(&*odd_values)
            {
                pair[0] = T::from_accum(x);
                pair[1] = T::from_accum(y);
            }
        }
    }
}
