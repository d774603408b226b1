//! The CUDA backend's checks, generic over the [`Executor`]: every op and
//! direction of a set of geometries (ranks, strides, dilations, groups,
//! padding modes, stride phases, split reductions, empty batches), for each
//! algorithm, against the CPU backend in f64 on the same values.
//!
//! tests/cuda.rs runs it on a GPU; the emulator's tests run it with `EmuExecutor`.

#![allow(dead_code)] // each test binary uses part of it

use ferroconv::cuda::{Executor, GpuAlgorithm, GpuBackend};
use ferroconv::{
    Activation, Conv, ConvGeometry, ConvOptions, ConvTranspose, ConvTransposeOptions, CpuBackend, Element, PaddingMode,
    bf16, f16,
};

/// A problem: the op's validated geometry (for tensors shaped as PyTorch's).
pub struct Case {
    pub name: &'static str,
    pub geometry: ConvGeometry,
}

fn conv(name: &'static str, dims: usize, x: &[usize], w: &[usize], options: ConvOptions) -> Case {
    let bias = [w[0]];
    let geometry = ConvGeometry::conv(dims, x, w, Some(&bias), &options).unwrap_or_else(|e| panic!("{name}: {e}"));
    Case { name, geometry }
}

fn transpose(name: &'static str, dims: usize, x: &[usize], w: &[usize], options: ConvTransposeOptions) -> Case {
    let bias = [w[1] * options.groups as usize];
    let geometry =
        ConvGeometry::conv_transpose(dims, x, w, Some(&bias), &options).unwrap_or_else(|e| panic!("{name}: {e}"));
    Case { name, geometry }
}

/// Small problems that between them take every path of every kernel.
pub fn cases() -> Vec<Case> {
    use PaddingMode::*;
    let c = ConvOptions::new;
    let t = ConvTransposeOptions::new;
    vec![
        conv("conv2d_pad1", 2, &[2, 3, 7, 6], &[5, 3, 3, 3], c().padding(1)),
        conv("conv2d_stride2_dilation2", 2, &[2, 8, 9, 10], &[16, 8, 3, 2], c().stride(2).dilation(2).padding([2, 1])),
        conv("conv2d_multi_tile", 2, &[2, 70, 9, 9], &[66, 70, 3, 3], c().padding(1).stride([1, 2])),
        conv("conv2d_groups2", 2, &[1, 8, 6, 6], &[6, 4, 3, 3], c().groups(2).stride([1, 2])),
        conv("conv2d_depthwise_x2", 2, &[2, 8, 7, 7], &[16, 1, 3, 3], c().groups(8).padding(1)),
        conv("conv1d_stride3_dilation2", 1, &[3, 4, 20], &[6, 4, 5], c().stride(3).dilation(2).padding(4)),
        conv("conv3d", 3, &[1, 3, 5, 6, 4], &[4, 3, 3, 2, 3], c().padding([1, 0, 1]).stride([2, 1, 1])),
        conv("conv2d_same_even_kernel", 2, &[1, 2, 6, 6], &[2, 2, 4, 4], c().same()),
        conv("conv2d_reflect", 2, &[1, 2, 5, 6], &[3, 2, 3, 3], c().padding(2).padding_mode(Reflect)),
        conv("conv2d_replicate", 2, &[2, 2, 4, 5], &[3, 2, 2, 3], c().padding([3, 1]).padding_mode(Replicate)),
        conv("conv1d_circular", 1, &[2, 3, 5], &[2, 3, 3], c().padding(2).padding_mode(Circular)),
        conv("conv3d_replicate", 3, &[1, 2, 3, 4, 3], &[2, 2, 2, 2, 2], c().padding(1).padding_mode(Replicate)),
        conv("conv2d_split_weight", 2, &[4, 8, 32, 32], &[8, 8, 3, 3], c().padding(1)),
        conv("conv2d_empty_batch", 2, &[0, 3, 5, 5], &[4, 3, 3, 3], c()),
        transpose("convT2d_stride2_op1", 2, &[2, 6, 5, 5], &[6, 4, 3, 3], t().stride(2).padding(1).output_padding(1)),
        transpose("convT2d_dilation2_stride2", 2, &[1, 4, 4, 5], &[4, 20, 3, 3], t().stride(2).dilation(2)),
        transpose("convT1d_kernel_below_stride", 1, &[2, 4, 6], &[4, 3, 2], t().stride(3).groups(2).padding(1)),
        transpose("convT3d", 3, &[1, 3, 3, 2, 3], &[3, 2, 2, 3, 2], t().stride([2, 1, 2]).padding([0, 1, 1])),
        transpose("convT2d_depthwise", 2, &[2, 6, 4, 4], &[6, 1, 3, 3], t().groups(6).stride(2).padding(1)),
    ]
}

/// Deterministic values in [-1, 1), exactly representable in every element type.
fn values(len: usize, seed: u64) -> Vec<f64> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f64 / (1u64 << 24) as f64) * 2.0 - 1.0
        })
        .map(|v| (v * 256.0).round() / 256.0)
        .collect()
}

/// How far a result may be from the f64 reference, per unit of the sum of
/// absolute products behind it (which bounds every rounding error).
pub trait Tolerance: Element {
    const RTOL: f64;
}
impl Tolerance for f64 {
    const RTOL: f64 = 1e-12;
}
impl Tolerance for f32 {
    const RTOL: f64 = 1e-5;
}
impl Tolerance for f16 {
    const RTOL: f64 = 2e-3;
}
impl Tolerance for bf16 {
    const RTOL: f64 = 1e-2;
}

/// The four tensors of an op and its four results, on the CPU in f64.
struct Reference {
    input: Vec<f64>,
    weight: Vec<f64>,
    bias: Vec<f64>,
    grad_output: Vec<f64>,
    /// forward (+bias, ReLU), grad input, grad weight, grad bias
    results: [Vec<f64>; 4],
    /// The same ops on absolute values: the scale each result's error is measured against.
    scales: [Vec<f64>; 4],
}

fn len(shape: &[usize]) -> usize {
    shape.iter().product()
}

fn run_ops<T: Element, B: Conv<T> + ConvTranspose<T>>(
    backend: &B,
    g: &ConvGeometry,
    [input, weight, bias, grad_output]: [&B::Buffer<T>; 4],
    mut alloc: impl FnMut(usize) -> B::Buffer<T>,
) -> ferroconv::Result<[B::Buffer<T>; 4]> {
    let mut out = alloc(len(&g.op_output_shape()));
    let mut grad_input = alloc(len(&g.op_input_shape()));
    let mut grad_weight = alloc(len(&g.weight_shape()));
    let mut grad_bias = alloc(g.op_out_channels());
    match g.op {
        ferroconv::OpKind::Conv => {
            Conv::forward(backend, g, input, weight, Some(bias), Activation::Relu, &mut out)?;
            Conv::backward_data(backend, g, grad_output, weight, &mut grad_input)?;
            Conv::backward_weight(backend, g, input, grad_output, &mut grad_weight)?;
            Conv::backward_bias(backend, g, grad_output, &mut grad_bias)?;
        }
        ferroconv::OpKind::ConvTranspose => {
            ConvTranspose::forward(backend, g, input, weight, Some(bias), Activation::Relu, &mut out)?;
            ConvTranspose::backward_data(backend, g, grad_output, weight, &mut grad_input)?;
            ConvTranspose::backward_weight(backend, g, input, grad_output, &mut grad_weight)?;
            ConvTranspose::backward_bias(backend, g, grad_output, &mut grad_bias)?;
        }
    }
    Ok([out, grad_input, grad_weight, grad_bias])
}

fn reference(g: &ConvGeometry, seed: u64, round: impl Fn(f64) -> f64) -> Reference {
    let input: Vec<f64> = values(len(&g.op_input_shape()), seed).into_iter().map(&round).collect();
    let weight: Vec<f64> = values(len(&g.weight_shape()), seed + 1).into_iter().map(&round).collect();
    let bias: Vec<f64> = values(g.op_out_channels(), seed + 2).into_iter().map(&round).collect();
    let grad_output: Vec<f64> = values(len(&g.op_output_shape()), seed + 3).into_iter().map(&round).collect();
    let cpu = CpuBackend::new();
    let alloc = |n| vec![0f64; n];
    let results = run_ops(&cpu, g, [&input, &weight, &bias, &grad_output], alloc).unwrap();
    let abs = |v: &Vec<f64>| v.iter().map(|x| x.abs()).collect::<Vec<_>>();
    let (ai, aw, ab, ag) = (abs(&input), abs(&weight), abs(&bias), abs(&grad_output));
    let scales = run_ops(&cpu, g, [&ai, &aw, &ab, &ag], alloc).unwrap();
    Reference { input, weight, bias, grad_output, results, scales }
}

/// Runs every case through `backend` in `T` and compares with the CPU; returns the failures.
pub fn check_cases<T: Tolerance, E: Executor>(backend: &GpuBackend<E>, cases: &[&Case]) -> Vec<String> {
    let mut failures = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        let reference = reference(&case.geometry, 17 * index as u64, |v| T::from_f64(v).to_f64());
        let upload = |v: &[f64]| backend.upload(&v.iter().map(|&x| T::from_f64(x)).collect::<Vec<T>>()).unwrap();
        let (i, w, b, go) = (
            upload(&reference.input),
            upload(&reference.weight),
            upload(&reference.bias),
            upload(&reference.grad_output),
        );
        let alloc = |n| backend.alloc_buffer::<T>(n).unwrap();
        let results = match run_ops(backend, &case.geometry, [&i, &w, &b, &go], alloc) {
            Ok(results) => results,
            Err(e) => {
                failures.push(format!("{} {} {}: {e}", case.name, T::DTYPE, backend.algorithm().name()));
                continue;
            }
        };
        for (k, what) in ["output", "grad_input", "grad_weight", "grad_bias"].into_iter().enumerate() {
            let got = backend.download(&results[k]).unwrap();
            let (want, scale) = (&reference.results[k], &reference.scales[k]);
            let bad = got.iter().zip(want.iter().zip(scale)).enumerate().find(|(_, (got, (want, scale)))| {
                let error = (got.to_f64() - **want).abs();
                error.is_nan() || error > T::RTOL * **scale + 1e-30
            });
            if let Some((at, (got, (want, _)))) = bad {
                failures.push(format!(
                    "{} {} {} {what}[{at}]: got {}, want {want}",
                    case.name,
                    T::DTYPE,
                    backend.algorithm().name(),
                    got.to_f64()
                ));
            }
        }
    }
    failures
}

/// Forcing the direct kernels on a wide GEMM-sized problem only slows the
/// emulator down: above this many multiply-adds a case runs them under `Auto` only.
const DIRECT_MACS_LIMIT: u128 = 1 << 20;

/// Every case with every algorithm (and `Auto`) in f64 and f32; in f16 and bf16
/// (which differ only in loading and storing) with `Auto`.
pub fn check_everything<E: Executor>(make_backend: impl Fn(GpuAlgorithm) -> GpuBackend<E>) {
    let all = cases();
    let mut failures = Vec::new();
    for algorithm in [GpuAlgorithm::Auto, GpuAlgorithm::ImplicitGemm, GpuAlgorithm::Direct] {
        let backend = make_backend(algorithm);
        let forced_direct = algorithm == GpuAlgorithm::Direct;
        let cases: Vec<&Case> =
            all.iter().filter(|c| !forced_direct || c.geometry.macs() <= DIRECT_MACS_LIMIT).collect();
        failures.extend(check_cases::<f64, E>(&backend, &cases));
        failures.extend(check_cases::<f32, E>(&backend, &cases));
        if algorithm == GpuAlgorithm::Auto {
            failures.extend(check_cases::<f16, E>(&backend, &cases));
            failures.extend(check_cases::<bf16, E>(&backend, &cases));
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
