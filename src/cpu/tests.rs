//! Every shipped algorithm, on every instruction set this CPU has, against the
//! direct loops, on random geometries of every parameter kind.
//!
//! Inputs are multiples of 1/8 in [-2, 2]: every product and partial sum is
//! then exact in f32, so any summation order gives the same value and the
//! algorithms must agree *bitwise* with the reference, in every dtype.

use super::*;
use crate::geometry::{ConvOptions, ConvTransposeOptions};
use half::{bf16, f16};

/// SplitMix64: a tiny seeded generator for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    fn eighths<T: Element>(&mut self, len: usize) -> Vec<T> {
        (0..len).map(|_| T::from_f64((self.below(33) as f64 - 16.0) / 8.0)).collect()
    }

    fn uniform<T: Element>(&mut self, len: usize) -> Vec<T> {
        (0..len).map(|_| T::from_f64((self.next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0)).collect()
    }
}

/// A random valid conv or conv_transpose geometry with every parameter drawn.
fn random_geometry(rng: &mut Rng) -> ConvGeometry {
    loop {
        let dims = rng.range(1, 3);
        let groups = rng.range(1, 3);
        let (cin_g, cout_g) = if rng.below(4) == 0 { (1, rng.range(1, 2)) } else { (rng.range(1, 5), rng.range(1, 7)) };
        let batch = if rng.below(16) == 0 { 0 } else { rng.range(1, 3) };
        let size: Vec<usize> = (0..dims).map(|_| rng.range(1, if dims == 3 { 5 } else { 9 })).collect();
        let kernel: Vec<usize> = (0..dims).map(|_| rng.range(1, 4)).collect();
        let stride: Vec<i64> = (0..dims).map(|_| rng.range(1, 3) as i64).collect();
        let dilation: Vec<i64> = (0..dims).map(|_| rng.range(1, 2) as i64).collect();
        let padding: Vec<i64> = (0..dims).map(|d| rng.range(0, kernel[d]) as i64).collect();
        let transposed = rng.below(2) == 0;
        let geometry = if transposed {
            let output_padding: Vec<i64> =
                (0..dims).map(|d| rng.range(0, (stride[d].max(dilation[d]) - 1) as usize) as i64).collect();
            let x = [vec![batch, groups * cout_g], size].concat();
            let w = [vec![groups * cout_g, cin_g], kernel].concat();
            let opts = ConvTransposeOptions::new()
                .stride(stride)
                .padding(padding)
                .dilation(dilation)
                .output_padding(output_padding)
                .groups(groups as i64);
            ConvGeometry::conv_transpose(dims, &x, &w, None, &opts)
        } else {
            let x = [vec![batch, groups * cin_g], size].concat();
            let w = [vec![groups * cout_g, cin_g], kernel].concat();
            let opts = ConvOptions::new().stride(stride).padding(padding).dilation(dilation).groups(groups as i64);
            ConvGeometry::conv(dims, &x, &w, None, &opts)
        };
        if let Ok(g) = geometry {
            return g;
        }
    }
}

/// Shapes past the tile sizes: several `KC` blocks, position blocks, grouped images, strips.
fn large_geometries() -> Vec<ConvGeometry> {
    let conv = |x: &[usize], w: &[usize], o: ConvOptions| ConvGeometry::conv(x.len() - 2, x, w, None, &o).unwrap();
    let convt = |x: &[usize], w: &[usize], o: ConvTransposeOptions| {
        ConvGeometry::conv_transpose(x.len() - 2, x, w, None, &o).unwrap()
    };
    vec![
        conv(&[2, 40, 19, 23], &[29, 40, 3, 3], ConvOptions::new().padding(1)),
        conv(&[3, 6, 7, 5], &[50, 3, 2, 3], ConvOptions::new().padding([1, 0]).stride([2, 1]).groups(2)),
        conv(&[1, 8, 700], &[13, 8, 5], ConvOptions::new().padding(2).dilation(2)),
        convt(&[2, 24, 9, 10], &[24, 14, 4, 4], ConvTransposeOptions::new().stride(2).padding(1)),
        convt(&[1, 16, 30, 17], &[16, 20, 2, 2], ConvTransposeOptions::new().stride(2)),
        conv(&[2, 12, 33, 20], &[12, 1, 3, 3], ConvOptions::new().padding(1).groups(12)),
        conv(&[2, 8, 33, 40], &[24, 8, 3, 3], ConvOptions::new().padding(1).stride(2)),
        conv(&[1, 3, 40, 44], &[20, 3, 7, 7], ConvOptions::new().padding(3).stride(2)),
        conv(&[1, 4, 9, 12, 20], &[10, 4, 3, 2, 3], ConvOptions::new().padding([1, 0, 1]).stride([1, 2, 2])),
        // A kernel as large as its stride: `x` read in place by implicit GEMM
        // (whole planes of 32-column blocks), over blocks of positions that
        // start inside a 32-column block, and in 3-D.
        convt(&[2, 16, 8, 16], &[16, 20, 2, 2], ConvTransposeOptions::new().stride(2)),
        convt(&[1, 96, 48, 40], &[96, 24, 2, 2], ConvTransposeOptions::new().stride(2)),
        convt(&[1, 8, 4, 8, 8], &[8, 4, 2, 2, 2], ConvTransposeOptions::new().stride(2)),
        // Small planes packed into a panel, their last few columns as dot products
        // (`multiply_dots`): the last weight rows padded, and a reduction of two `KC` blocks.
        conv(&[4, 16, 7, 7], &[22, 16, 3, 3], ConvOptions::new().padding(1)),
        conv(&[1, 48, 6, 6], &[13, 48, 3, 3], ConvOptions::new().padding(1)),
        // One output per group, in blocks of rows: 3-D, strided and dilated along
        // dim 2, two sources per group; dilated along dim 1 (one run instead).
        conv(&[1, 6, 5, 9, 21], &[6, 1, 3, 3, 3], ConvOptions::new().padding(1).groups(6)),
        conv(
            &[2, 4, 13, 30],
            &[4, 1, 3, 5],
            ConvOptions::new().padding([1, 4]).dilation([1, 2]).stride([1, 2]).groups(4),
        ),
        conv(&[2, 8, 11, 18], &[4, 2, 3, 3], ConvOptions::new().padding(1).groups(4)),
        conv(&[2, 8, 11, 18], &[4, 2, 3, 3], ConvOptions::new().padding(2).dilation([2, 1]).groups(4)),
        // One output per group read in place (no bordered copy): 5×5 taps hanging
        // two past each edge, unpadded, dilated along dim 2 over rows narrower
        // than a vector, 1-D, and taps that read only padding for whole rows.
        conv(&[2, 6, 17, 37], &[6, 1, 5, 5], ConvOptions::new().padding(2).groups(6)),
        conv(&[1, 4, 6, 5], &[4, 1, 3, 3], ConvOptions::new().dilation([1, 2]).padding([1, 2]).groups(4)),
        conv(&[3, 5, 40], &[5, 1, 7], ConvOptions::new().padding(3).groups(5)),
        conv(&[1, 3, 4, 19], &[3, 1, 3, 3], ConvOptions::new().padding([3, 1]).groups(3)),
        // Pointwise, run on the merged volume: over several column blocks, and transposed in 3-D.
        conv(&[2, 40, 19, 23], &[21, 40, 1, 1], ConvOptions::new()),
        convt(&[2, 20, 5, 6, 7], &[20, 9, 1, 1, 1], ConvTransposeOptions::new()),
    ]
}

/// Only a pointwise op (1×1 kernel, stride 1, no padding) has its spatial dims merged.
#[test]
fn pointwise_ops_run_on_one_merged_dim() {
    let conv = |x: &[usize], w: &[usize], o: ConvOptions| ConvGeometry::conv(x.len() - 2, x, w, None, &o).unwrap();
    let merged = super::simplified(&conv(&[2, 8, 5, 6, 7], &[4, 8, 1, 1, 1], ConvOptions::new()));
    assert_eq!((merged.in_size, merged.out_size), ([1, 1, 210], [1, 1, 210]));
    assert_eq!(merged.macs(), conv(&[2, 8, 5, 6, 7], &[4, 8, 1, 1, 1], ConvOptions::new()).macs());
    for g in [
        conv(&[2, 8, 5, 6], &[4, 8, 1, 1], ConvOptions::new().stride([1, 2])),
        conv(&[2, 8, 5, 6], &[4, 8, 1, 1], ConvOptions::new().padding([0, 1])),
        conv(&[2, 8, 5, 6], &[4, 8, 1, 3], ConvOptions::new()),
    ] {
        assert_eq!(super::simplified(&g).in_size, g.in_size, "{g:?}");
    }
    // A dim with one output has no stride: still pointwise.
    let single = conv(&[2, 8, 1, 6], &[4, 8, 1, 1], ConvOptions::new().stride([5, 1]));
    assert_eq!(super::simplified(&single).out_size, [1, 1, 6]);
}

/// The four primitives of `g` on `backend`, on inputs drawn by `draw`.
fn outputs<T: Element>(backend: &CpuBackend, g: &ConvGeometry, seed: u64, exact: bool) -> Vec<Vec<T>> {
    let mut rng = Rng(seed);
    let mut draw = |len: usize| if exact { rng.eighths::<T>(len) } else { rng.uniform::<T>(len) };
    let len = |shape: Vec<usize>| shape.iter().product::<usize>();
    let x = draw(len(g.x_shape()));
    let w = draw(len(g.weight_shape()));
    let y = draw(len(g.y_shape()));
    let bias_y = draw(g.out_channels);
    let bias_x = draw(g.in_channels);
    let poison = |n: usize| vec![T::nan(); n];
    let mut fwd = poison(y.len());
    backend.correlate(g, &x, &w, Some(&bias_y), Activation::Relu, &mut fwd).unwrap();
    let mut adj = poison(x.len());
    backend.correlate_adjoint(g, &y, &w, Some(&bias_x), Activation::Identity, &mut adj).unwrap();
    let mut adj_plain = poison(x.len());
    backend.correlate_adjoint(g, &y, &w, None, Activation::Relu, &mut adj_plain).unwrap();
    let mut dw = poison(w.len());
    backend.correlate_weight(g, &x, &y, &mut dw).unwrap();
    let mut sums = poison(g.out_channels);
    backend.channel_sums(g.batch, g.out_channels, g.out_volume(), &y, &mut sums).unwrap();
    vec![fwd, adj, adj_plain, dw, sums]
}

/// Every fast algorithm on every instruction set, each with a label for messages.
fn backends() -> Vec<(CpuAlgorithm, String, CpuBackend)> {
    let mut all = Vec::new();
    for &algorithm in CpuAlgorithm::ALL.iter().filter(|&&a| a != CpuAlgorithm::Direct) {
        for isa in CpuIsa::ALL {
            // Every op on the pool: the thread-count test covers the inline path.
            let backend = CpuBackend::with_threads(2).unwrap().with_algorithm(algorithm).with_inline_limit(0);
            // An instruction set this CPU lacks still has its tilings checked, in plain Rust.
            let (label, backend) = match isa.is_supported() {
                true => (isa.to_string(), backend.with_isa(isa).unwrap()),
                false => (format!("{isa} shapes"), backend.shaped_as(isa)),
            };
            all.push((algorithm, label, backend));
        }
    }
    all
}

fn check_against_direct<T: Element>(geometries: &[ConvGeometry]) {
    let reference = CpuBackend::with_threads(2).unwrap().with_algorithm(CpuAlgorithm::Direct);
    let names =
        ["correlate", "correlate_adjoint", "correlate_adjoint (no bias, relu)", "correlate_weight", "channel_sums"];
    for (i, g) in geometries.iter().enumerate() {
        let want = outputs::<T>(&reference, g, i as u64, true);
        for (algorithm, label, backend) in backends() {
            let got = outputs::<T>(&backend, g, i as u64, true);
            for ((name, got), want) in names.iter().zip(&got).zip(&want) {
                let same = got.iter().zip(want).all(|(a, b)| a.to_f64().to_bits() == b.to_f64().to_bits());
                assert!(same, "{} {:?} {label} {name} differs from direct on {g:?}", T::DTYPE, algorithm);
            }
        }
    }
}

fn random_geometries(seed: u64, count: usize) -> Vec<ConvGeometry> {
    let mut rng = Rng(seed);
    (0..count).map(|_| random_geometry(&mut rng)).collect()
}

#[test]
fn every_algorithm_equals_direct_on_random_geometries_f32() {
    check_against_direct::<f32>(&random_geometries(1, 60));
}

#[test]
fn every_algorithm_equals_direct_on_random_geometries_f64() {
    check_against_direct::<f64>(&random_geometries(2, 30));
}

#[test]
fn every_algorithm_equals_direct_on_random_geometries_halves() {
    check_against_direct::<f16>(&random_geometries(3, 25));
    check_against_direct::<bf16>(&random_geometries(4, 25));
}

#[test]
fn every_algorithm_equals_direct_past_the_tile_sizes() {
    check_against_direct::<f32>(&large_geometries());
}

/// Shapes Winograd's F(2, 3) takes, each reaching a different part of its
/// tiling: rank, dilation (tiles per residue class), uneven and one-sided
/// padding, 1-tap axes, groups, tiles across images and task blocks, odd
/// output sizes (tiles with one output), two `KC` blocks of channels.
fn winograd_geometries() -> Vec<ConvGeometry> {
    let conv = |x: &[usize], w: &[usize], o: ConvOptions| ConvGeometry::conv(x.len() - 2, x, w, None, &o).unwrap();
    vec![
        conv(&[3, 13, 9, 11], &[17, 13, 3, 3], ConvOptions::new().padding(1)),
        conv(&[2, 6, 13, 14], &[7, 6, 3, 3], ConvOptions::new().padding([2, 3]).dilation([2, 3])),
        conv(&[1, 5, 12, 9], &[4, 5, 3, 3], ConvOptions::new().same().dilation([2, 1])),
        conv(&[2, 4, 7, 8], &[6, 2, 3, 3], ConvOptions::new().groups(2)),
        conv(&[1, 3, 5, 9], &[8, 3, 3, 1], ConvOptions::new().padding([1, 0]).stride([1, 2])),
        conv(&[2, 3, 17], &[5, 3, 3], ConvOptions::new().padding(1).dilation(2)),
        conv(&[1, 4, 5, 6, 7], &[6, 4, 3, 3, 3], ConvOptions::new().padding(1)),
        conv(&[1, 270, 6, 5], &[9, 270, 3, 3], ConvOptions::new().padding(1)),
        conv(&[4, 16, 30, 18], &[40, 16, 3, 3], ConvOptions::new().padding(1)),
        // Padding below the kernel's reach on one side only: the adjoint pads the other way.
        conv(&[2, 6, 9, 10], &[5, 6, 3, 3], ConvOptions::new().padding([0, 1])),
        ConvGeometry::conv_transpose(
            2,
            &[2, 7, 6, 7],
            &[7, 5, 3, 3],
            None,
            &ConvTransposeOptions::new().padding(1).dilation(2).output_padding(1),
        )
        .unwrap(),
    ]
}

#[test]
fn winograd_equals_direct_on_exact_operands() {
    // On eighths every transform and sum is exact, so F(2, 3) must agree to the bit.
    let geometries = winograd_geometries();
    assert!(geometries.iter().all(winograd::applicable));
    // The adjoint runs as a Winograd correlation on all but the strided one.
    let adjoints = geometries.iter().filter_map(winograd::adjoint_geometry).filter(winograd::applicable).count();
    assert_eq!(adjoints, geometries.len() - 1);
    check_against_direct::<f32>(&geometries);
    check_against_direct::<f64>(&geometries[..4]);
    check_against_direct::<f16>(&geometries[..4]);
}

/// `got` against the f64 reference `want` by the fixtures' f32 rule: rtol 1e-4, atol 1e-5 · √L.
fn assert_within_f32_tolerance(name: &str, got: &[f32], want: &[f64], reduction_len: usize) {
    let atol = 1e-5 * (reduction_len as f64).sqrt();
    for (i, (&a, &e)) in got.iter().zip(want).enumerate() {
        assert!((a as f64 - e).abs() <= atol + 1e-4 * e.abs(), "{name}[{i}] = {a}, reference {e}");
    }
}

#[test]
fn winograd_stays_within_the_fixture_tolerance() {
    let g = ConvGeometry::conv(2, &[2, 64, 12, 14], &[48, 64, 3, 3], None, &ConvOptions::new().padding(1)).unwrap();
    let mut rng = Rng(11);
    let (x, w, bias) = (rng.uniform::<f64>(2 * 64 * 12 * 14), rng.uniform::<f64>(48 * 64 * 9), rng.uniform::<f64>(48));
    let mut want = vec![0f64; 2 * 48 * 12 * 14];
    let direct = CpuBackend::with_threads(2).unwrap().with_algorithm(CpuAlgorithm::Direct);
    direct.correlate(&g, &x, &w, Some(&bias), Activation::Identity, &mut want).unwrap();
    // The reference of the f32-rounded operands differs from this one by less than an ulp.
    let narrow = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
    let winograd = CpuBackend::with_threads(2).unwrap().with_algorithm(CpuAlgorithm::Winograd);
    let mut got = vec![f32::NAN; want.len()];
    winograd.correlate(&g, &narrow(&x), &narrow(&w), Some(&narrow(&bias)), Activation::Identity, &mut got).unwrap();
    assert_within_f32_tolerance("y", &got, &want, 64 * 9 + 1);
}

#[test]
fn winograd_weight_gradient_stays_within_the_fixture_tolerance() {
    // A long reduction (2 images × 30 × 34 positions), 2-D and 1-D dilated.
    let conv = |x: &[usize], w: &[usize], o: ConvOptions| ConvGeometry::conv(x.len() - 2, x, w, None, &o).unwrap();
    for g in [
        conv(&[2, 40, 30, 34], &[36, 40, 3, 3], ConvOptions::new().padding(1)),
        conv(&[4, 33, 700], &[35, 33, 3], ConvOptions::new().padding(2).dilation(2)),
    ] {
        let len = |shape: Vec<usize>| shape.iter().product::<usize>();
        let mut rng = Rng(12);
        let (x, dy) = (rng.uniform::<f64>(len(g.x_shape())), rng.uniform::<f64>(len(g.y_shape())));
        let mut want = vec![0f64; len(g.weight_shape())];
        let direct = CpuBackend::with_threads(2).unwrap().with_algorithm(CpuAlgorithm::Direct);
        direct.correlate_weight(&g, &x, &dy, &mut want).unwrap();
        let narrow = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
        let winograd = CpuBackend::with_threads(2).unwrap().with_algorithm(CpuAlgorithm::Winograd);
        let mut got = vec![f32::NAN; want.len()];
        winograd.correlate_weight(&g, &narrow(&x), &narrow(&dy), &mut got).unwrap();
        assert_within_f32_tolerance("dw", &got, &want, g.batch * g.out_volume());
    }
}

#[test]
fn auto_picks_winograd_for_wide_3x3_layers_with_tiles_enough() {
    let conv = |x: &[usize], w: &[usize], o: ConvOptions| ConvGeometry::conv(x.len() - 2, x, w, None, &o).unwrap();
    let r50 = conv(&[4, 64, 56, 56], &[64, 64, 3, 3], ConvOptions::new().padding(1));
    let pick = |g: &ConvGeometry, dtype| select_algorithm(g, dtype);
    assert_eq!(pick(&r50, DType::F32), CpuAlgorithm::Winograd);
    assert_eq!(pick(&r50, DType::F16), CpuAlgorithm::Winograd);
    // bf16 keeps the GEMM whose pair kernel doubles its rate on AVX-512 BF16.
    assert_eq!(pick(&r50, DType::BF16), CpuAlgorithm::ImplicitGemm);
    // 64 tiles of 2×2 outputs: U costs more than it saves; 196 repay it.
    let deep = conv(&[4, 512, 7, 7], &[512, 512, 3, 3], ConvOptions::new().padding(1));
    let r50_256 = conv(&[4, 256, 14, 14], &[256, 256, 3, 3], ConvOptions::new().padding(1));
    assert_eq!(pick(&deep, DType::F32), CpuAlgorithm::ImplicitGemm);
    assert_eq!(pick(&r50_256, DType::F32), CpuAlgorithm::Winograd);
    // One 3-tap axis is enough: 4 multiplies for 6.
    let one_d = conv(&[8, 256, 1024], &[256, 256, 3], ConvOptions::new().padding(1));
    assert_eq!(pick(&one_d, DType::F32), CpuAlgorithm::Winograd);
    // The 3-D layer: 32 channels are enough.
    let three_d = conv(&[1, 32, 16, 32, 32], &[32, 32, 3, 3, 3], ConvOptions::new().padding(1));
    assert_eq!(pick(&three_d, DType::F32), CpuAlgorithm::Winograd);
    // Strided, narrow (fewer than 32 input channels), and 1×1 layers.
    let strided = conv(&[4, 64, 56, 56], &[64, 64, 3, 3], ConvOptions::new().padding(1).stride(2));
    let narrow = conv(&[4, 16, 56, 56], &[64, 16, 3, 3], ConvOptions::new().padding(1));
    let pointwise = conv(&[4, 256, 56, 56], &[64, 256, 1, 1], ConvOptions::new());
    for g in [&strided, &narrow, &pointwise] {
        assert_eq!(pick(g, DType::F32), CpuAlgorithm::ImplicitGemm, "{g:?}");
    }
    // The input gradient of a stride-1 layer is a correlation Winograd runs (with the kernel flipped),
    // and its weight gradient too, also in bf16 (which has no pair kernel for it); a forced
    // Winograd runs implicit GEMM where it does not apply.
    let for_primitive = |g: &ConvGeometry, p| select_algorithm_for(g, p, DType::F32);
    assert_eq!(for_primitive(&r50, Primitive::CorrelateAdjoint), CpuAlgorithm::Winograd);
    assert_eq!(for_primitive(&r50, Primitive::CorrelateWeight), CpuAlgorithm::Winograd);
    assert_eq!(select_algorithm_for(&r50, Primitive::CorrelateWeight, DType::BF16), CpuAlgorithm::Winograd);
    assert_eq!(for_primitive(&deep, Primitive::CorrelateWeight), CpuAlgorithm::ImplicitGemm);
    assert_eq!(for_primitive(&strided, Primitive::CorrelateWeight), CpuAlgorithm::ImplicitGemm);
    assert_eq!(for_primitive(&strided, Primitive::CorrelateAdjoint), CpuAlgorithm::ImplicitGemm);
    let forced = CpuBackend::new().with_algorithm(CpuAlgorithm::Winograd);
    assert_eq!(
        forced.algorithm_for_primitive(&strided, Primitive::CorrelateAdjoint, DType::F32),
        CpuAlgorithm::ImplicitGemm
    );
    // Padding past the kernel's reach: outputs that read only padding have no adjoint correlation.
    let wide_pad = conv(&[1, 40, 9, 9], &[40, 40, 3, 3], ConvOptions::new().padding(3));
    assert_eq!(forced.algorithm_for_primitive(&wide_pad, Primitive::Correlate, DType::F32), CpuAlgorithm::Winograd);
    assert_eq!(
        forced.algorithm_for_primitive(&wide_pad, Primitive::CorrelateAdjoint, DType::F32),
        CpuAlgorithm::ImplicitGemm
    );
    assert_eq!(forced.algorithm_for(&strided, DType::F32), CpuAlgorithm::ImplicitGemm);
    assert_eq!(forced.algorithm_for(&narrow, DType::F32), CpuAlgorithm::Winograd);
}

/// The adjoint as a GEMM and col2im past its tile sizes: two `KC` blocks of
/// `y` channels with a last strip that reads past the weights (copied), two
/// column blocks of images with a short last one, blocks of channels in two
/// groups, 1-D dilated and 3-D strided with output padding.
#[test]
fn gemm_col2im_equals_direct_past_its_tile_sizes() {
    let conv = |x: &[usize], w: &[usize], o: ConvOptions| ConvGeometry::conv(x.len() - 2, x, w, None, &o).unwrap();
    let convt = |x: &[usize], w: &[usize], o: ConvTransposeOptions| {
        ConvGeometry::conv_transpose(x.len() - 2, x, w, None, &o).unwrap()
    };
    let geometries = [
        convt(&[2, 270, 3, 4], &[270, 5, 3, 3], ConvTransposeOptions::new().stride(2).padding(1).output_padding(1)),
        conv(&[5, 20, 9, 8], &[30, 10, 3, 3], ConvOptions::new().padding(1).groups(2)),
        convt(&[2, 12, 40], &[12, 7, 5], ConvTransposeOptions::new().stride(3).dilation(2).padding(2)),
        convt(&[1, 16, 3, 4, 5], &[16, 6, 3, 3, 3], ConvTransposeOptions::new().stride(2).padding(1).output_padding(1)),
    ];
    assert!(geometries.iter().all(|g| super::gemm::col2im::applicable(&super::simplified(g))));
    check_against_direct::<f32>(&geometries);
    check_against_direct::<f64>(&geometries[..2]);
    // Halves, their weights widened first.
    check_against_direct::<f16>(&geometries[..2]);
    check_against_direct::<bf16>(&geometries[2..]);
}

#[test]
fn auto_runs_the_adjoint_of_small_planes_as_gemm_col2im() {
    let conv = |x: &[usize], w: &[usize], o: ConvOptions| ConvGeometry::conv(x.len() - 2, x, w, None, &o).unwrap();
    let convt = |x: &[usize], w: &[usize], o: ConvTransposeOptions| {
        ConvGeometry::conv_transpose(x.len() - 2, x, w, None, &o).unwrap()
    };
    let adjoint = |g: &ConvGeometry, dtype| select_algorithm_for(g, Primitive::CorrelateAdjoint, dtype);
    // DCGAN's transposed conv: 16 images of 4×4; ResNet's 512-channel input gradient: 4 of 7×7.
    let dcgan = convt(&[16, 512, 4, 4], &[512, 256, 4, 4], ConvTransposeOptions::new().stride(2).padding(1));
    let deep = conv(&[4, 512, 7, 7], &[512, 512, 3, 3], ConvOptions::new().padding(1));
    for g in [&dcgan, &deep] {
        // f16 too, its weights widened once; bf16 keeps the pair kernel's implicit GEMM.
        for dtype in [DType::F32, DType::F64, DType::F16] {
            assert_eq!(adjoint(g, dtype), CpuAlgorithm::GemmCol2im, "{g:?}");
        }
        assert_eq!(adjoint(g, DType::BF16), CpuAlgorithm::ImplicitGemm, "{g:?}");
        assert_eq!(select_algorithm_for(g, Primitive::Correlate, DType::F32), CpuAlgorithm::ImplicitGemm);
    }
    assert_eq!(select_algorithm(&dcgan, DType::F32), CpuAlgorithm::GemmCol2im);
    // U-Net's transposed conv (4096 positions of `y`) packs its few weights.
    let unet = convt(&[1, 128, 64, 64], &[128, 64, 2, 2], ConvTransposeOptions::new().stride(2));
    assert_eq!(select_algorithm(&unet, DType::F32), CpuAlgorithm::ImplicitGemm);
    // Forced, it runs the adjoint only, in any dtype.
    let forced = CpuBackend::new().with_algorithm(CpuAlgorithm::GemmCol2im);
    assert_eq!(forced.algorithm_for(&unet, DType::BF16), CpuAlgorithm::GemmCol2im);
    assert_eq!(forced.algorithm_for(&deep, DType::F32), CpuAlgorithm::ImplicitGemm);
    assert_eq!(
        forced.algorithm_for_primitive(&deep, Primitive::CorrelateWeight, DType::F32),
        CpuAlgorithm::ImplicitGemm
    );
}

#[test]
fn bf16_channel_pairs_equal_direct_past_the_tile_sizes() {
    let conv = |x: &[usize], w: &[usize], o: ConvOptions| ConvGeometry::conv(x.len() - 2, x, w, None, &o).unwrap();
    let mut geometries = large_geometries();
    // An odd channel count whose pairs fill two `KC` blocks, and odd channels per group, strided.
    geometries.push(conv(&[2, 61, 6, 20], &[10, 61, 3, 3], ConvOptions::new().padding(1)));
    geometries.push(conv(&[1, 10, 8, 40], &[18, 5, 3, 3], ConvOptions::new().padding(1).stride(2).groups(2)));
    // Panels of pairs: a 1×1 conv with an odd channel count, and a plane too small for the bordered copy.
    geometries.push(conv(&[2, 7, 9, 30], &[12, 7, 1, 1], ConvOptions::new()));
    geometries.push(conv(&[2, 45, 7, 7], &[16, 45, 3, 3], ConvOptions::new().padding(1)));
    // Pairs along the reduction, the weights read in place: an even channel
    // count, and an odd one whose pairs straddle two channels (K = 45·4).
    geometries.push(conv(&[2, 46, 7, 7], &[16, 46, 3, 3], ConvOptions::new().padding(1)));
    geometries.push(conv(&[2, 45, 7, 7], &[14, 45, 2, 2], ConvOptions::new().padding(1)));
    check_against_direct::<bf16>(&geometries);
}

#[test]
fn bf16_channel_pairs_keep_an_odd_last_channel_alone() {
    // The last of 3 channels pairs with zeros, not with itself: an infinity there
    // reaches only the outputs its own weights touch, as in the direct loops.
    let g = ConvGeometry::conv(2, &[1, 3, 4, 20], &[4, 3, 3, 3], None, &ConvOptions::new().padding(1)).unwrap();
    let mut x = vec![bf16::ONE; 3 * 4 * 20];
    x[2 * 80 + 25] = bf16::INFINITY;
    let w: Vec<bf16> = (0..4 * 3 * 9).map(|i| bf16::from_f32((i % 5) as f32 - 2.0)).collect();
    let run = |algorithm, isa| {
        let cpu = CpuBackend::with_threads(2).unwrap().with_algorithm(algorithm).with_isa(isa).unwrap();
        let mut y = vec![bf16::ZERO; 4 * 4 * 20];
        cpu.correlate(&g, &x, &w, None, Activation::Identity, &mut y).unwrap();
        y
    };
    let (pairs, direct) =
        (run(CpuAlgorithm::ImplicitGemm, CpuIsa::Portable), run(CpuAlgorithm::Direct, CpuIsa::Portable));
    for (i, (p, d)) in pairs.iter().zip(&direct).enumerate() {
        assert!(p == d || (p.is_nan() && d.is_nan()), "y[{i}]: pairs {p}, direct {d}");
    }
    assert!(direct.iter().any(|v| v.is_infinite()) && direct.iter().any(|v| v.is_nan()));
}

#[test]
fn a_forward_conv_over_few_columns_counts_no_packed_weights() {
    // 512 -> 512 channels, 3×3, on a 7×7 plane: 196 grid points, 9.4 MB of weights.
    let g = ConvGeometry::conv(2, &[4, 512, 7, 7], &[512, 512, 3, 3], None, &ConvOptions::new().padding(1)).unwrap();
    let cpu = CpuBackend::new().with_algorithm(CpuAlgorithm::ImplicitGemm);
    let weights = 512 * 512 * 9 * 4;
    let bytes = |dtype| cpu.workspace_bytes(&g, Primitive::Correlate, dtype);
    // f32 reads its weights in place; f16's are widened into packed strips.
    assert!(bytes(DType::F32) < weights && bytes(DType::F16) > weights, "{} {}", bytes(DType::F32), bytes(DType::F16));
    assert!(cpu.workspace_bytes(&g, Primitive::CorrelateAdjoint, DType::F32) > weights, "the adjoint packs");
    // bf16 on a pair kernel (the portable one under test) reads them in place
    // too, as pairs along the reduction: no strips of pairs either.
    let pairs = cpu.with_isa(CpuIsa::Portable).unwrap();
    let bf16_bytes = pairs.workspace_bytes(&g, Primitive::Correlate, DType::BF16);
    assert!(bf16_bytes < weights / 2, "{bf16_bytes}");
}

#[test]
fn bf16_reads_channel_pairs_where_a_pair_kernel_exists() {
    // Under test the portable instruction set has the pair kernel (standing in for AVX-512 BF16's).
    let g = ConvGeometry::conv(2, &[2, 61, 6, 20], &[10, 61, 3, 3], None, &ConvOptions::new().padding(1)).unwrap();
    let cpu = CpuBackend::new().with_algorithm(CpuAlgorithm::ImplicitGemm).with_isa(CpuIsa::Portable).unwrap();
    let bytes = |dtype| cpu.workspace_bytes(&g, Primitive::Correlate, dtype);
    // Pairs of bf16 in one word: the copy of x and the packed weights take half the f32 words of f16's.
    assert!(bytes(DType::BF16) < bytes(DType::F16) * 6 / 10, "{} vs {}", bytes(DType::BF16), bytes(DType::F16));
    if CpuIsa::Avx2.is_supported() {
        let avx2 = cpu.with_isa(CpuIsa::Avx2).unwrap();
        let bytes = |dtype| avx2.workspace_bytes(&g, Primitive::Correlate, dtype);
        assert_eq!(bytes(DType::BF16), bytes(DType::F16), "AVX2 has no pair kernel: bf16 is widened as f16 is");
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let mut geometries = random_geometries(5, 12);
    geometries.extend(large_geometries());
    for (i, g) in geometries.iter().enumerate() {
        for &algorithm in CpuAlgorithm::ALL {
            // One thread with the default inline limit (small ops run on the caller), more on the pool only.
            let run = |threads| {
                let limit = if threads == 1 { CpuBackend::new().inline_limit() } else { 0 };
                let backend = CpuBackend::with_threads(threads).unwrap().with_algorithm(algorithm);
                outputs::<f32>(&backend.with_inline_limit(limit), g, 100 + i as u64, false)
            };
            let one = run(1);
            for threads in [2, 3] {
                let many = run(threads);
                let same = one.iter().flatten().zip(many.iter().flatten()).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{algorithm:?} with {threads} threads differs from 1 thread on {g:?}");
            }
        }
    }
}

#[test]
fn auto_picks_the_direct_simd_path_for_thin_groups_only() {
    let g = |x: &[usize], w: &[usize], groups| {
        ConvGeometry::conv(2, x, w, None, &ConvOptions::new().groups(groups)).unwrap()
    };
    let simd = CpuAlgorithm::SimdDirect;
    assert_eq!(select_algorithm(&g(&[1, 8, 5, 5], &[8, 1, 3, 3], 8), DType::F32), simd);
    assert_eq!(select_algorithm(&g(&[1, 8, 5, 5], &[16, 1, 3, 3], 8), DType::F32), simd);
    assert_eq!(select_algorithm(&g(&[1, 64, 5, 5], &[64, 8, 3, 3], 8), DType::F32), simd);
    assert_eq!(select_algorithm(&g(&[1, 64, 5, 5], &[256, 8, 3, 3], 8), DType::F32), CpuAlgorithm::ImplicitGemm);
    assert_eq!(select_algorithm(&g(&[1, 3, 5, 5], &[16, 3, 3, 3], 1), DType::F16), CpuAlgorithm::ImplicitGemm);
    // A transposed conv's output is x: 16 -> 3 channels is thin.
    let up =
        ConvGeometry::conv_transpose(2, &[1, 16, 4, 4], &[16, 3, 3, 3], None, &ConvTransposeOptions::new().stride(2))
            .unwrap();
    assert_eq!(select_algorithm(&up, DType::F32), simd);
}

#[test]
fn unsupported_isas_are_refused() {
    for isa in CpuIsa::ALL.into_iter().filter(|isa| !isa.is_supported()) {
        assert!(CpuBackend::new().with_isa(isa).is_err());
    }
}

#[test]
fn workspace_stays_bounded_on_large_layers() {
    let cpu = CpuBackend::with_threads(2).unwrap();
    let convt = ConvGeometry::conv_transpose(
        2,
        &[16, 512, 4, 4],
        &[512, 256, 4, 4],
        None,
        &ConvTransposeOptions::new().stride(2).padding(1),
    )
    .unwrap();
    let dense =
        ConvGeometry::conv(2, &[4, 512, 7, 7], &[512, 512, 3, 3], None, &ConvOptions::new().padding(1)).unwrap();
    for g in [&convt, &dense] {
        for primitive in [Primitive::Correlate, Primitive::CorrelateAdjoint, Primitive::CorrelateWeight] {
            let bytes = cpu.workspace_bytes(g, primitive, DType::F32);
            assert!(bytes > 0 && bytes < 64 << 20, "{primitive:?}: {bytes} bytes");
        }
    }
}

/// An infinity in `x` reaches the outputs exactly as in the direct loops: the
/// in-place paths drop the columns between rows (forward) or fall back to
/// packing (weight gradient), where the infinity would meet a zero, and
/// Winograd, whose transforms would meet ∞ − ∞, to implicit GEMM.
#[test]
fn infinities_propagate_as_in_the_direct_loops() {
    // 40 columns, 3-wide kernel, no padding: 38 outputs per row, and the pad
    // columns of row r read the first columns of row r + 1.
    let g = ConvGeometry::conv(2, &[1, 2, 5, 40], &[12, 2, 3, 3], None, &ConvOptions::new()).unwrap();
    let mut rng = Rng(7);
    let mut x: Vec<f32> = rng.eighths(g.x_shape().iter().product());
    x[40] = f32::INFINITY; // channel 0, row 1, column 0: never read by a tap of column offset 2
    let w: Vec<f32> = rng.eighths(g.weight_shape().iter().product());
    let y: Vec<f32> = (0..g.y_shape().iter().product()).map(|i| if i % 7 == 0 { 0.0 } else { 0.5 }).collect();
    let run = |algorithm| {
        let cpu = CpuBackend::with_threads(2).unwrap().with_algorithm(algorithm);
        let mut fwd = vec![0f32; y.len()];
        cpu.correlate(&g, &x, &w, None, Activation::Identity, &mut fwd).unwrap();
        let mut dw = vec![0f32; w.len()];
        cpu.correlate_weight(&g, &x, &y, &mut dw).unwrap();
        (fwd, dw)
    };
    let same =
        |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()));
    let (fwd, dw) = run(CpuAlgorithm::Direct);
    assert!(dw.iter().any(|v| v.is_finite()) && dw.iter().any(|v| !v.is_finite()));
    for &algorithm in &[CpuAlgorithm::ImplicitGemm, CpuAlgorithm::SimdDirect, CpuAlgorithm::Winograd] {
        let (f, d) = run(algorithm);
        assert!(same(&f, &fwd), "{algorithm:?} forward");
        assert!(same(&d, &dw), "{algorithm:?} weight gradient");
    }
}
