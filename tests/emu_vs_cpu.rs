//! The CUDA backend on the emulator against the CPU backend in f64, on shapes larger than the
//! fixtures': several GEMM tiles in each direction, reductions of many tile steps with a
//! remainder, and weight and bias gradients long enough to be split in chunks and summed in a
//! second pass (which no fixture reaches). Each case runs with each algorithm forced, under its
//! own seed, with the fixtures' tolerance rule against the f64 reference.
#![cfg(feature = "emu")]

use ferroconv::cuda::emu::{EmuExecutor, Schedule};
use ferroconv::cuda::{GpuAlgorithm, GpuBackend, Planner};
use ferroconv::{
    Activation, Conv, ConvGeometry, ConvOptions, ConvPrimitives, ConvTranspose, ConvTransposeOptions, CpuBackend,
    DType, Element, OpKind, PaddingMode, bf16, f16,
};

mod emu_support;
use emu_support::{Inputs, Results, compare, run_directions};

type Emu = GpuBackend<EmuExecutor>;

/// Uniform values in [-1, 1) with 24-bit mantissas, rounded to `T` (exact in f64).
fn random_values<T: Element>(len: usize, seed: &mut u64) -> Vec<T> {
    (0..len)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            T::from_f64((*seed >> 40) as f64 / (1u64 << 23) as f64 - 1.0)
        })
        .collect()
}

/// The fixtures' tolerance for a sum of at most `terms` products of values in [-1, 1].
fn tolerance(dtype: DType, terms: usize) -> (f64, f64) {
    let (rtol, a) = match dtype {
        DType::F64 => (1e-10, 1e-11),
        DType::F32 => (1e-4, 1e-5),
        DType::F16 => (2e-3, 1e-3),
        DType::BF16 => (1.6e-2, 8e-3),
    };
    (rtol, a * (terms.max(1) as f64).sqrt())
}

/// The most products summed into one element of each result, in the correlation's terms.
fn reduction_lengths(g: &ConvGeometry) -> [usize; 4] {
    let bias = usize::from(g.has_bias);
    let kernel = g.kernel_volume();
    let folds: usize =
        (0..3).map(|d| if g.zero_padded() { 1 } else { 3.max(1 + g.padding_lo[d].max(g.padding_hi[d])) }).product();
    let correlate = g.in_channels_per_group() * kernel;
    let adjoint = g.out_channels_per_group() * kernel * folds;
    let weight = g.batch * g.out_volume();
    match g.op {
        OpKind::Conv => [correlate + bias, adjoint, weight, g.batch * g.out_volume()],
        OpKind::ConvTranspose => [adjoint + bias, correlate, weight, g.batch * g.in_volume()],
    }
}

fn check<T: Element>(g: &ConvGeometry, actual: &Results, reference: &Results) -> Vec<String> {
    let [output, input, weight, bias] = reduction_lengths(g).map(|terms| tolerance(T::DTYPE, terms));
    let mut failures: Vec<String> = [
        compare("output", &actual.output, &reference.output, output.0, output.1),
        compare("grad_input", &actual.grad_input, &reference.grad_input, input.0, input.1),
        compare("grad_weight", &actual.grad_weight, &reference.grad_weight, weight.0, weight.1),
    ]
    .into_iter()
    .flatten()
    .collect();
    if let (Some(a), Some(r)) = (&actual.grad_bias, &reference.grad_bias) {
        failures.extend(compare("grad_bias", a, r, bias.0, bias.1));
    }
    failures
}

/// Runs `g` on the emulator with each algorithm forced, and on the CPU in f64; the failures.
fn differential<T: Element>(name: &str, g: &ConvGeometry, seed: u64) -> Vec<String>
where
    Emu: ConvPrimitives<T>,
{
    let mut values = seed | 1;
    let inputs = Inputs::<T> {
        input: random_values(g.op_input_shape().iter().product(), &mut values),
        weight: random_values(g.weight_shape().iter().product(), &mut values),
        bias: g.has_bias.then(|| random_values(g.op_out_channels(), &mut values)),
        grad_output: random_values(g.op_output_shape().iter().product(), &mut values),
    };
    let wide = |v: &[T]| v.iter().map(|x| x.to_f64()).collect::<Vec<f64>>();
    let inputs_f64 = Inputs {
        input: wide(&inputs.input),
        weight: wide(&inputs.weight),
        bias: inputs.bias.as_deref().map(wide),
        grad_output: wide(&inputs.grad_output),
    };
    let cpu = CpuBackend::global();
    let reference = run_directions(cpu, g, &inputs_f64, |s| Ok(s.to_vec()), |b| Ok(b.clone())).unwrap();

    let mut failures = Vec::new();
    for (a, algorithm) in [GpuAlgorithm::ImplicitGemm, GpuAlgorithm::Direct].into_iter().enumerate() {
        let schedule = Schedule { seed: seed + a as u64, os_threads: 2 };
        let emu = GpuBackend::new(EmuExecutor::with_schedule(schedule).unwrap()).with_algorithm(algorithm);
        let context = format!("{name} [{}, seed {:#x}]", algorithm.name(), schedule.seed);
        match run_directions(&emu, g, &inputs, |s| emu.upload(s), |b| emu.download(b)) {
            Ok(results) => {
                failures.extend(check::<T>(g, &results, &reference).into_iter().map(|f| format!("{context}: {f}")))
            }
            Err(e) => failures.push(format!("{context}: {e}")),
        }
    }
    failures
}

/// Whether the weight gradient and the bias gradient of `g` (zero padded) are split in chunks.
fn gradients_are_split(g: &ConvGeometry, dtype: DType, algorithm: GpuAlgorithm) -> bool {
    let planner = Planner::new(dtype, algorithm);
    let weight = planner.correlate_weight_workspace(g).unwrap();
    let bias = planner.channel_sums_workspace(g.batch, g.out_channels, g.out_volume()).unwrap();
    weight > 0 && bias > 0
}

#[test]
fn conv2d_with_split_reductions_and_several_tiles_f32() {
    // GEMM: 70 rows (two M tiles), K = 12 * 9 = 108 (seven K steps, the last partial), 3200
    // columns; the weight and bias gradients reduce over 3200 positions: split in chunks.
    let options = ConvOptions::new().padding(1);
    let g = ConvGeometry::conv(2, &[2, 12, 40, 40], &[70, 12, 3, 3], Some(&[70]), &options).unwrap();
    assert!(gradients_are_split(&g, DType::F32, GpuAlgorithm::ImplicitGemm));
    let failures = differential::<f32>("conv2d 12->70 40x40", &g, 100);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn conv_transpose2d_grouped_strided_dilated_f16() {
    let options = ConvTransposeOptions::new().stride(2).padding(1).dilation(2).output_padding(1).groups(2);
    let g = ConvGeometry::conv_transpose(2, &[1, 8, 24, 24], &[8, 3, 3, 3], Some(&[6]), &options).unwrap();
    let failures = differential::<f16>("conv_transpose2d 8->6 g2 s2 d2", &g, 200);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn conv3d_reflect_strided_bf16() {
    let options = ConvOptions::new().stride([2, 1, 2]).padding([1, 1, 2]).padding_mode(PaddingMode::Reflect);
    let g = ConvGeometry::conv(3, &[2, 3, 10, 12, 14], &[5, 3, 3, 2, 3], Some(&[5]), &options).unwrap();
    let failures = differential::<bf16>("conv3d reflect", &g, 300);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn conv1d_depthwise_circular_long_f64() {
    // Depthwise with a channel multiplier; the weight gradient reduces over 3 * ~1500 positions.
    let options = ConvOptions::new().dilation(3).padding(4).groups(4).padding_mode(PaddingMode::Circular);
    let g = ConvGeometry::conv(1, &[3, 4, 1500], &[8, 1, 5], Some(&[8]), &options).unwrap();
    assert!(gradients_are_split(&g.with_materialised_padding(), DType::F64, GpuAlgorithm::Direct));
    let failures = differential::<f64>("conv1d depthwise circular", &g, 400);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn conv2d_grouped_replicate_uneven_f32() {
    let options = ConvOptions::new().stride([1, 2]).padding([3, 2]).groups(2).padding_mode(PaddingMode::Replicate);
    let g = ConvGeometry::conv(2, &[2, 6, 33, 31], &[10, 3, 4, 3], Some(&[10]), &options).unwrap();
    let failures = differential::<f32>("conv2d replicate g2", &g, 500);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The forward of `g` with the fused bias + ReLU epilogue, on `backend`.
fn forward_relu<T: Element, B: ConvPrimitives<T>>(
    backend: &B,
    g: &ConvGeometry,
    inputs: &Inputs<T>,
    upload: impl Fn(&[T]) -> ferroconv::Result<B::Buffer<T>>,
    download: impl Fn(&B::Buffer<T>) -> ferroconv::Result<Vec<T>>,
) -> Vec<f64> {
    let (x, w) = (upload(&inputs.input).unwrap(), upload(&inputs.weight).unwrap());
    let b = upload(inputs.bias.as_deref().unwrap()).unwrap();
    let mut y = backend.alloc(inputs.grad_output.len()).unwrap();
    match g.op {
        OpKind::Conv => Conv::forward(backend, g, &x, &w, Some(&b), Activation::Relu, &mut y).unwrap(),
        OpKind::ConvTranspose => {
            ConvTranspose::forward(backend, g, &x, &w, Some(&b), Activation::Relu, &mut y).unwrap()
        }
    }
    download(&y).unwrap().into_iter().map(T::to_f64).collect()
}

#[test]
fn the_fused_relu_matches_the_cpu() {
    let conv =
        ConvGeometry::conv(2, &[1, 5, 9, 11], &[7, 5, 3, 3], Some(&[7]), &ConvOptions::new().padding(1)).unwrap();
    let transpose_options = ConvTransposeOptions::new().stride(2);
    let transpose =
        ConvGeometry::conv_transpose(2, &[1, 5, 9, 11], &[5, 7, 3, 3], Some(&[7]), &transpose_options).unwrap();
    for (i, g) in [conv, transpose].iter().enumerate() {
        let mut values = 77 + i as u64;
        let inputs = Inputs::<f32> {
            input: random_values(g.op_input_shape().iter().product(), &mut values),
            weight: random_values(g.weight_shape().iter().product(), &mut values),
            bias: Some(random_values(g.op_out_channels(), &mut values)),
            grad_output: vec![0.0; g.op_output_shape().iter().product()],
        };
        let cpu = CpuBackend::global();
        let expected = forward_relu(cpu, g, &inputs, |s| Ok(s.to_vec()), |b| Ok(b.clone()));
        assert!(expected.contains(&0.0) && expected.iter().any(|&v| v > 0.0), "ReLU clips some outputs");
        for algorithm in [GpuAlgorithm::ImplicitGemm, GpuAlgorithm::Direct] {
            let schedule = Schedule { seed: 9 + i as u64, os_threads: 2 };
            let emu = GpuBackend::new(EmuExecutor::with_schedule(schedule).unwrap()).with_algorithm(algorithm);
            let actual = forward_relu(&emu, g, &inputs, |s| emu.upload(s), |b| emu.download(b));
            let (rtol, atol) = tolerance(DType::F32, g.in_channels_per_group().max(g.out_channels_per_group()) * 9 + 1);
            let failure = compare("relu output", &actual, &expected, rtol, atol);
            assert!(failure.is_none(), "{:?} {}: {}", g.op, algorithm.name(), failure.unwrap());
        }
    }
}
