use super::bordered::deinterleave_pairs;
use super::plan::whole_rows;
use super::*;
use crate::cpu::isa::CpuIsa;
use crate::cpu::kernels::kernels_shaped_as;
use crate::geometry::{ConvGeometry, ConvOptions, ConvTransposeOptions};

/// Row blocks cover a group's channels once, in whole strips, none more than a strip longer than another.
#[test]
fn row_blocks_are_whole_strips_of_even_length() {
    let opts = ConvTransposeOptions::new().stride(2).padding(1);
    let up = ConvGeometry::conv_transpose(2, &[16, 512, 4, 4], &[512, 256, 4, 4], None, &opts).unwrap();
    let mr = 6;
    let plan = Plan::new(&Pass::adjoint(&up), mr, 16, 4).unwrap();
    assert!(plan.row_blocks > 1);
    let blocks: Vec<_> = (0..plan.row_blocks).map(|b| plan.row_block_channels(b, 256)).collect();
    assert_eq!(blocks[0].start, 0);
    assert_eq!(blocks.last().unwrap().end, 256);
    assert!(blocks.windows(2).all(|pair| pair[0].end == pair[1].start));
    assert!(blocks.iter().all(|b| b.start % mr == 0 && b.len() <= plan.rows));
    let strips: Vec<_> = blocks.iter().map(|b| b.len().div_ceil(mr)).collect();
    assert!(strips.iter().max().unwrap() - strips.iter().min().unwrap() <= 1, "{strips:?}");
}

/// Column blocks of whole rows where that computes fewer border columns, and only there.
#[test]
fn blocks_take_the_rows_that_waste_least() {
    let pad1 = ConvOptions::new().padding(1);
    let conv = |x: &[usize], w: &[usize], o: &ConvOptions| {
        Pass::forward(&ConvGeometry::conv(x.len() - 2, x, w, None, o).unwrap())
    };
    // 56 wide, pitch 58: 5 rows compute 288 columns for 280 outputs.
    assert_eq!(whole_rows(&[conv(&[4, 64, 56, 56], &[64, 64, 3, 3], &pad1)], 16, 256), Some(280));
    // 128 wide, pitch 130: one row computes exactly its 128 outputs.
    assert_eq!(whole_rows(&[conv(&[1, 64, 128, 128], &[64, 64, 3, 3], &pad1)], 16, 256), Some(128));
    // Rows longer than a block, planes smaller than one, or several passes: blocks of `target`.
    assert_eq!(whole_rows(&[conv(&[8, 256, 1024], &[256, 256, 3], &pad1)], 16, 256), None);
    assert_eq!(whole_rows(&[conv(&[4, 512, 7, 7], &[512, 512, 3, 3], &pad1)], 16, 256), None);
    let opts = ConvTransposeOptions::new().stride(2);
    let up = ConvGeometry::conv_transpose(2, &[1, 128, 64, 64], &[128, 64, 2, 2], None, &opts).unwrap();
    assert_eq!(whole_rows(&Pass::adjoint(&up), 16, 256), None);
}

/// Even elements land in one run and odd ones in the other, whichever comes first in the buffer.
#[test]
fn pairs_split_into_their_phases() {
    for len in [0usize, 1, 2, 7, 16, 33] {
        let row: Vec<f32> = (0..len).map(|i| i as f32).collect();
        let evens: Vec<f32> = row.iter().copied().step_by(2).collect();
        let odds: Vec<f32> = row.iter().copied().skip(1).step_by(2).collect();
        for (even, odd) in [(1, 40), (41, 2)] {
            let mut dst = vec![-1f32; 80];
            deinterleave_pairs(&row, &mut dst, even, odd);
            assert_eq!(dst[even..][..evens.len()], evens[..], "len {len}, evens at {even}");
            assert_eq!(dst[odd..][..odds.len()], odds[..], "len {len}, odds at {odd}");
            let written = evens.len() + odds.len();
            assert_eq!(dst.iter().filter(|&&v| v != -1.0).count(), written, "len {len}: nothing else written");
        }
    }
}

/// A stride-2 transposed conv's adjoint passes pair up along the rows where
/// the two phases have the same grid, and only there.
#[test]
fn row_phases_of_stride_two_interleave() {
    let pairs = |x: &[usize], w: &[usize], opts: &ConvTransposeOptions| {
        let passes = Pass::adjoint(&ConvGeometry::conv_transpose(2, x, w, None, opts).unwrap());
        passes.windows(2).filter(|pair| interleaves(&pair[0], &pair[1])).count()
    };
    let stride2 = ConvTransposeOptions::new().stride(2);
    // 2x2 stride 2: the phases (a, 0), (a, 1) of each row phase a.
    assert_eq!(pairs(&[1, 16, 30, 17], &[16, 20, 2, 2], &stride2), 2);
    // An odd output width gives the even phase one more column: no pairs.
    let odd = ConvTransposeOptions::new().stride(2).output_padding([0, 1]);
    assert_eq!(pairs(&[1, 4, 5, 5], &[4, 3, 2, 2], &odd), 0);
    // Stride 1 along the rows has a single phase there.
    assert_eq!(pairs(&[1, 4, 5, 5], &[4, 3, 2, 2], &ConvTransposeOptions::new().stride([2, 1])), 0);
}

/// The shapes `cpu::tests` checks against the direct loops past the tile sizes
/// run both ways of reading `X̂`: in place and packed.
#[test]
fn large_test_shapes_cover_both_panel_sources() {
    let nr = 16;
    let conv = ConvGeometry::conv(2, &[2, 40, 19, 23], &[29, 40, 3, 3], None, &ConvOptions::new().padding(1));
    assert!(BorderedLayout::new(&[Pass::forward(&conv.unwrap())], nr).is_some());
    let opts = ConvTransposeOptions::new().stride(2);
    let up = ConvGeometry::conv_transpose(2, &[1, 16, 30, 17], &[16, 20, 2, 2], None, &opts).unwrap();
    assert!(BorderedLayout::new(&Pass::adjoint(&up), nr).is_some());
    let strided = ConvOptions::new().padding(1).stride(2);
    let strided = ConvGeometry::conv(2, &[2, 8, 33, 40], &[24, 8, 3, 3], None, &strided).unwrap();
    assert!(BorderedLayout::new(&[Pass::forward(&strided)], nr).is_some());
    let stem = ConvOptions::new().padding(3).stride(2);
    let stem = ConvGeometry::conv(2, &[1, 3, 40, 44], &[20, 3, 7, 7], None, &stem).unwrap();
    assert!(BorderedLayout::new(&[Pass::forward(&stem)], nr).is_some());
    let narrow = ConvOptions::new().padding([1, 0]).stride([2, 1]).groups(2);
    let narrow = ConvGeometry::conv(2, &[3, 6, 7, 5], &[50, 3, 2, 3], None, &narrow).unwrap();
    assert!(BorderedLayout::new(&[Pass::forward(&narrow)], nr).is_none());
    let pointwise = ConvGeometry::conv(2, &[1, 8, 6, 6], &[16, 8, 1, 1], None, &ConvOptions::new()).unwrap();
    assert!(BorderedLayout::new(&[Pass::forward(&pointwise)], nr).is_none());
}

/// The bordered copy is the source itself only for whole-grid passes of one
/// tap at offset zero over planes of whole `nr` blocks, with tiles of 32
/// columns; only f32 and f64 then count no copy in their workspace.
#[test]
fn the_source_is_read_in_place_only_where_it_is_the_copy() {
    let up = |x: &[usize], k: usize, s: usize| {
        let opts = ConvTransposeOptions::new().stride(s);
        Pass::adjoint(&ConvGeometry::conv_transpose(2, x, &[x[1], 64, k, k], None, &opts).unwrap())
    };
    assert!(BorderedLayout::is_source(&up(&[1, 128, 64, 64], 2, 2), 32));
    // 63 × 63 positions are not whole blocks of 32; a 4×4 kernel at stride 2 has offset taps.
    assert!(!BorderedLayout::is_source(&up(&[1, 128, 63, 63], 2, 2), 32));
    assert!(!BorderedLayout::is_source(&up(&[1, 128, 64, 64], 4, 2), 32));
    let conv = ConvGeometry::conv(2, &[1, 64, 64, 64], &[64, 64, 3, 3], None, &ConvOptions::new().padding(1)).unwrap();
    assert!(!BorderedLayout::is_source(&[Pass::forward(&conv)], 32));
    assert!(!BorderedLayout::is_source(&up(&[1, 128, 64, 64], 2, 2), 16), "AVX2's tiles copy");
    let ks = kernels_shaped_as::<f32>(CpuIsa::Avx512).unwrap();
    let passes = up(&[1, 128, 64, 64], 2, 2);
    let copy = BorderedLayout::len(&passes, ks.nn_cols, 128) * 4;
    let f32_bytes = workspace_bytes(&ks, &passes, DType::F32, 2);
    let f16_bytes = workspace_bytes(&ks, &passes, DType::F16, 2);
    assert!(f16_bytes >= f32_bytes + copy, "{f16_bytes} vs {f32_bytes} + {copy}");
}
