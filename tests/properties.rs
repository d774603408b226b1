//! Properties of both ops over random configurations (ranks 1-3, strides,
//! paddings incl. "same"/"valid" and every mode, dilations, groups incl.
//! depthwise and channel multipliers, output_padding / output_size, bias or
//! none, N in 0..3):
//!
//! - f64 results equal the f64 reference of `common` (values chosen so every
//!   sum is exact), through the functional API and every forced CPU algorithm,
//!   and (with the `emu` feature) through the CUDA kernels on the emulator;
//! - the adjoint identity ⟨conv(x), y⟩ = ⟨x, conv_transpose(y)⟩;
//! - central finite differences of the forward agree with every gradient;
//! - every thread count gives bitwise the same result, for every algorithm;
//! - f32, f16 and bf16 results lie within the fixtures README's tolerances, on
//!   the CPU and (with the `emu` feature) on the emulator.
//!
//! Case counts are moderate so the suite stays quick in a debug build.

mod common;

use std::sync::OnceLock;

use common::{
    ConvProblem, ConvTransposeProblem, Operands, Pad, Problem, Results, check_bitwise, check_close, check_results,
    dyadic, tolerance, uniform,
};
use ferroconv::{CpuAlgorithm, CpuBackend, Device, Element, PaddingMode, bf16, f16};
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// Strategies

/// Largest kernel, padding and extra input size per dim for each rank, so a
/// case stays small enough for the reference in a debug build.
fn limits(dims: usize) -> (usize, usize, usize) {
    match dims {
        1 => (5, 3, 8),
        2 => (4, 2, 4),
        _ => (3, 1, 2),
    }
}

/// The batch size: mostly non-empty, sometimes empty.
fn batch() -> impl Strategy<Value = usize> {
    prop_oneof![1 => Just(0usize), 4 => 1usize..=2]
}

/// `(groups, in_channels / groups, out_channels / groups)`: depthwise is
/// `in/groups == 1`, a channel multiplier is `out/groups > 1` on top of that.
fn channels() -> impl Strategy<Value = (usize, usize, usize)> {
    (1usize..=4, 1usize..=3, 1usize..=3)
}

fn padding_mode() -> impl Strategy<Value = PaddingMode> {
    prop_oneof![
        Just(PaddingMode::Zeros),
        Just(PaddingMode::Reflect),
        Just(PaddingMode::Replicate),
        Just(PaddingMode::Circular)
    ]
}

/// How a conv's padding is given.
#[derive(Debug, Clone, Copy)]
enum PadKind {
    PerDim,
    Same,
    Valid,
}

fn conv_problem_with(
    modes: BoxedStrategy<PaddingMode>,
    pads: BoxedStrategy<PadKind>,
) -> impl Strategy<Value = ConvProblem> {
    (1usize..=3).prop_flat_map(move |dims| {
        let (kmax, pmax, extra_max) = limits(dims);
        // Per dim: kernel, stride, dilation, padding, input size beyond the smallest valid one.
        let per_dim = (1..=kmax, 1usize..=3, 1usize..=3, 0..=pmax, 0..=extra_max);
        (batch(), channels(), proptest::collection::vec(per_dim, dims), pads.clone(), modes.clone(), any::<bool>())
            .prop_map(|(batch, (groups, cin_g, cout_g), per_dim, pad_kind, mode, bias)| {
                let kernel: Vec<usize> = per_dim.iter().map(|p| p.0).collect();
                let dilation: Vec<usize> = per_dim.iter().map(|p| p.2).collect();
                let (stride, padding) = match pad_kind {
                    PadKind::PerDim => {
                        (per_dim.iter().map(|p| p.1).collect(), Pad::Each(per_dim.iter().map(|p| p.3).collect()))
                    }
                    PadKind::Same => (vec![1; per_dim.len()], Pad::Same),
                    PadKind::Valid => (per_dim.iter().map(|p| p.1).collect(), Pad::Valid),
                };
                let mut p = ConvProblem {
                    batch,
                    in_channels: groups * cin_g,
                    out_channels: groups * cout_g,
                    groups,
                    input: vec![0; per_dim.len()],
                    kernel,
                    stride,
                    dilation,
                    padding,
                    mode,
                    bias,
                };
                // The smallest input the README's rules accept, plus the drawn extra.
                for (d, (pl, pr)) in p.pads().into_iter().enumerate() {
                    let extent = p.dilation[d] * (p.kernel[d] - 1) + 1;
                    let for_kernel = extent.saturating_sub(pl + pr);
                    let for_mode = match mode {
                        PaddingMode::Reflect => pl.max(pr) + 1,
                        PaddingMode::Circular => pl.max(pr),
                        _ => 1,
                    };
                    p.input[d] = for_kernel.max(for_mode).max(1) + per_dim[d].4;
                }
                p
            })
    })
}

fn conv_problem() -> impl Strategy<Value = ConvProblem> {
    let pads = prop_oneof![3 => Just(PadKind::PerDim), 1 => Just(PadKind::Same), 1 => Just(PadKind::Valid)];
    conv_problem_with(padding_mode().boxed(), pads.boxed())
}

/// One spatial dim of a transposed conv as drawn.
#[derive(Debug, Clone)]
struct TransposeDim {
    kernel: usize,
    stride: usize,
    dilation: usize,
    padding: usize,
    input: usize,
    /// Picks the output padding (or the `output_size` offset) among the valid ones.
    extra_draw: usize,
}

fn conv_transpose_problem() -> impl Strategy<Value = ConvTransposeProblem> {
    (1usize..=3).prop_flat_map(|dims| {
        let (kmax, pmax, extra_max) = limits(dims);
        let dim = (1..=kmax, 1usize..=3, 1usize..=3, 0..=pmax, 1..=extra_max + 1, any::<u8>()).prop_map(
            |(kernel, stride, dilation, padding, input, extra_draw)| TransposeDim {
                kernel,
                stride,
                dilation,
                padding,
                input,
                extra_draw: extra_draw as usize,
            },
        );
        (batch(), channels(), proptest::collection::vec(dim, dims), any::<bool>(), any::<bool>()).prop_map(
            |(batch, (groups, cin_g, cout_g), per_dim, use_output_size, bias)| {
                let get = |f: fn(&TransposeDim) -> usize| per_dim.iter().map(f).collect();
                let mut p = ConvTransposeProblem {
                    batch,
                    in_channels: groups * cin_g,
                    out_channels: groups * cout_g,
                    groups,
                    input: get(|d| d.input),
                    kernel: get(|d| d.kernel),
                    stride: get(|d| d.stride),
                    dilation: get(|d| d.dilation),
                    padding: get(|d| d.padding),
                    output_padding: vec![0; per_dim.len()],
                    output_size: None,
                    bias,
                };
                // output_padding below the stride or the dilation; through
                // output_size only below the stride (nn.ConvTransposeNd's rule).
                let extra: Vec<usize> = per_dim
                    .iter()
                    .map(|d| d.extra_draw % if use_output_size { d.stride } else { d.stride.max(d.dilation) })
                    .collect();
                // Grow the input until the output is non-empty.
                for (d, &e) in extra.iter().enumerate() {
                    while p.min_size()[d] + (e as i64) < 1 {
                        p.input[d] += 1;
                    }
                }
                if use_output_size {
                    p.output_size =
                        Some(p.min_size().iter().zip(&extra).map(|(&m, &e)| (m + e as i64) as usize).collect());
                } else {
                    p.output_padding = extra;
                }
                p
            },
        )
    })
}

// ---------------------------------------------------------------------------
// Backends

/// `CpuBackend::with_threads(k)` for every thread count and algorithm (`Auto`
/// and every entry of `CpuAlgorithm::ALL`), built once.
fn backends() -> &'static [(usize, CpuAlgorithm, CpuBackend)] {
    static BACKENDS: OnceLock<Vec<(usize, CpuAlgorithm, CpuBackend)>> = OnceLock::new();
    BACKENDS.get_or_init(|| {
        let algorithms = std::iter::once(CpuAlgorithm::Auto).chain(CpuAlgorithm::ALL.iter().copied());
        algorithms
            .flat_map(|a| {
                // One thread runs small ops inline (the default); more send every op to the pool.
                [1, 2, 3, 8].map(|k| {
                    let backend = CpuBackend::with_threads(k).expect("a thread pool starts").with_algorithm(a);
                    let limit = if k == 1 { backend.inline_limit() } else { 0 };
                    (k, a, backend.with_inline_limit(limit))
                })
            })
            .collect()
    })
}

/// One backend per algorithm, on two threads.
fn algorithm_backends() -> impl Iterator<Item = (CpuAlgorithm, &'static CpuBackend)> {
    backends().iter().filter(|(k, _, _)| *k == 2).map(|(_, a, b)| (*a, b))
}

/// The devices the functional API is checked on: the CPU, and the CUDA kernels
/// on the emulator when the build has it.
fn devices() -> &'static [Device] {
    if cfg!(feature = "emu") { &[Device::Cpu, Device::Emu] } else { &[Device::Cpu] }
}

// ---------------------------------------------------------------------------
// Checks

/// The library in f64 equals the reference exactly (the operands make every sum exact).
fn matches_reference<P: Problem>(p: &P, seed: u64) -> Result<(), String> {
    let operands = Operands::random(p, seed, dyadic);
    let expected = p.reference(&operands);
    let exact = |name: &str, _, a: &[f64], e: &[f64]| check_close(name, a, e, 0.0, 0.0);
    for &device in devices() {
        let got = p.run_functional::<f64>(&operands, device).map_err(|e| format!("{device}: {e}"))?;
        check_results(&got, &expected, exact).map_err(|e| format!("{device}: {e}"))?;
    }
    for (algorithm, backend) in algorithm_backends() {
        let got = p.run_backend::<f64>(backend, &operands).map_err(|e| format!("{algorithm:?}: {e}"))?;
        check_results(&got, &expected, exact).map_err(|e| format!("{algorithm:?}: {e}"))?;
    }
    Ok(())
}

/// `T` results lie within the README tolerance of the f64 reference of the rounded operands.
fn within_tolerance<T: Element, P: Problem>(p: &P, seed: u64) -> Result<(), String> {
    let operands = Operands::random(p, seed, uniform).rounded::<T>();
    let expected = p.reference(&operands);
    let lens = p.reduction_lens();
    let close = |name: &str, k: usize, a: &[f64], e: &[f64]| {
        let (rtol, atol) = tolerance(T::DTYPE, lens[k]);
        check_close(name, a, e, rtol, atol)
    };
    for &device in devices() {
        let got = p.run_functional::<T>(&operands, device).map_err(|e| format!("{}: {device}: {e}", T::DTYPE))?;
        check_results(&got, &expected, close).map_err(|e| format!("{}: {device}: {e}", T::DTYPE))?;
    }
    for (algorithm, backend) in algorithm_backends() {
        let got = p.run_backend::<T>(backend, &operands).map_err(|e| format!("{}: {algorithm:?}: {e}", T::DTYPE))?;
        check_results(&got, &expected, close).map_err(|e| format!("{}: {algorithm:?}: {e}", T::DTYPE))?;
    }
    Ok(())
}

/// Every thread count gives bitwise the result of one thread, per algorithm.
fn thread_count_invariant<T: Element, P: Problem>(p: &P, seed: u64) -> Result<(), String> {
    let operands = Operands::random(p, seed, uniform).rounded::<T>();
    let mut baseline: Vec<(CpuAlgorithm, Results)> = Vec::new();
    for (threads, algorithm, backend) in backends() {
        let got =
            p.run_backend::<T>(backend, &operands).map_err(|e| format!("{algorithm:?}, {threads} threads: {e}"))?;
        match baseline.iter().find(|(a, _)| a == algorithm) {
            None => baseline.push((*algorithm, got)),
            Some((_, one_thread)) => check_results(&got, one_thread, |name, _, a, e| check_bitwise(name, a, e))
                .map_err(|e| format!("{}: {algorithm:?}, {threads} threads vs 1: {e}", T::DTYPE))?,
        }
    }
    Ok(())
}

/// `Σ output * grad_output` for the problem's operands, through the functional API in f64.
fn loss<P: Problem>(p: &P, operands: &Operands) -> f64 {
    let out = p.run_functional::<f64>(operands, Device::Cpu).expect("a valid problem runs").output;
    out.iter().zip(&operands.grad_output).map(|(y, g)| y * g).sum()
}

/// Central differences of the loss at a few coordinates of input, weight and
/// bias agree with the library's gradients.
fn finite_differences_agree<P: Problem>(p: &P, seed: u64) -> Result<(), String> {
    const H: f64 = 1e-3;
    let operands = Operands::random(p, seed, uniform);
    let grads = p.run_functional::<f64>(&operands, Device::Cpu).map_err(|e| e.to_string())?;
    let pick = uniform(seed ^ 0xC0FFEE, 9);
    type Field = fn(&mut Operands) -> Option<&mut Vec<f64>>;
    let fields: [(&str, Field, Option<&Vec<f64>>); 3] = [
        ("grad_input", |o| Some(&mut o.input), Some(&grads.grad_input)),
        ("grad_weight", |o| Some(&mut o.weight), Some(&grads.grad_weight)),
        ("grad_bias", |o| o.bias.as_mut(), grads.grad_bias.as_ref()),
    ];
    for (f, (name, field, grad)) in fields.into_iter().enumerate() {
        let Some(grad) = grad else { continue };
        for j in 0..3 {
            if grad.is_empty() {
                break;
            }
            let i = ((pick[3 * f + j] + 1.0) / 2.0 * grad.len() as f64) as usize % grad.len();
            let shifted = |delta: f64| {
                let mut o = operands.clone();
                field(&mut o).expect("the field has a gradient")[i] += delta;
                loss(p, &o)
            };
            let fd = (shifted(H) - shifted(-H)) / (2.0 * H);
            check_close(name, &[grad[i]], &[fd], 1e-7, 1e-8).map_err(|e| format!("{e} at element {i}"))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Properties

/// `cases` cases, unless `PROPTEST_CASES` asks for another number (for a longer search).
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(cases);
    ProptestConfig { cases, max_shrink_iters: 256, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn conv_f64_equals_reference(p in conv_problem(), seed in any::<u64>()) {
        matches_reference(&p, seed).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn conv_transpose_f64_equals_reference(p in conv_transpose_problem(), seed in any::<u64>()) {
        matches_reference(&p, seed).map_err(TestCaseError::fail)?;
    }
}

proptest! {
    #![proptest_config(config(32))]

    #[test]
    fn conv_low_precision_within_tolerance(p in conv_problem(), seed in any::<u64>()) {
        within_tolerance::<f32, _>(&p, seed).map_err(TestCaseError::fail)?;
        within_tolerance::<f16, _>(&p, seed).map_err(TestCaseError::fail)?;
        within_tolerance::<bf16, _>(&p, seed).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn conv_transpose_low_precision_within_tolerance(p in conv_transpose_problem(), seed in any::<u64>()) {
        within_tolerance::<f32, _>(&p, seed).map_err(TestCaseError::fail)?;
        within_tolerance::<f16, _>(&p, seed).map_err(TestCaseError::fail)?;
        within_tolerance::<bf16, _>(&p, seed).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn conv_gradients_match_finite_differences(p in conv_problem(), seed in any::<u64>()) {
        finite_differences_agree(&p, seed).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn conv_transpose_gradients_match_finite_differences(p in conv_transpose_problem(), seed in any::<u64>()) {
        finite_differences_agree(&p, seed).map_err(TestCaseError::fail)?;
    }
}

proptest! {
    #![proptest_config(config(16))]

    #[test]
    fn conv_is_bitwise_thread_count_invariant(p in conv_problem(), seed in any::<u64>()) {
        thread_count_invariant::<f32, _>(&p, seed).map_err(TestCaseError::fail)?;
        thread_count_invariant::<bf16, _>(&p, seed).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn conv_transpose_is_bitwise_thread_count_invariant(p in conv_transpose_problem(), seed in any::<u64>()) {
        thread_count_invariant::<f32, _>(&p, seed).map_err(TestCaseError::fail)?;
        thread_count_invariant::<bf16, _>(&p, seed).map_err(TestCaseError::fail)?;
    }
}

/// A zero-padded conv (symmetric padding, so a transposed conv can undo the
/// shapes) without bias, and whether to reach the input size through
/// `output_size` rather than `output_padding`.
fn adjoint_pair() -> impl Strategy<Value = (ConvProblem, bool)> {
    let pads = prop_oneof![3 => Just(PadKind::PerDim), 1 => Just(PadKind::Valid)];
    let conv = conv_problem_with(Just(PaddingMode::Zeros).boxed(), pads.boxed());
    (conv, any::<bool>()).prop_map(|(mut p, use_output_size)| {
        p.bias = false;
        (p, use_output_size)
    })
}

/// The transposed conv that maps `conv`'s output shape back to its input shape, with the same weight.
fn transpose_of(conv: &ConvProblem, use_output_size: bool) -> ConvTransposeProblem {
    let padding: Vec<usize> = conv.pads().iter().map(|&(lo, _)| lo).collect();
    let mut t = ConvTransposeProblem {
        batch: conv.batch,
        in_channels: conv.out_channels,
        out_channels: conv.in_channels,
        groups: conv.groups,
        input: conv.output_spatial(),
        kernel: conv.kernel.clone(),
        stride: conv.stride.clone(),
        dilation: conv.dilation.clone(),
        padding,
        output_padding: vec![0; conv.input.len()],
        output_size: None,
        bias: false,
    };
    if use_output_size {
        t.output_size = Some(conv.input.clone());
    } else {
        t.output_padding = t.min_size().iter().zip(&conv.input).map(|(&m, &n)| (n as i64 - m) as usize).collect();
    }
    t
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

proptest! {
    #![proptest_config(config(48))]

    /// ⟨conv(x), y⟩ = ⟨x, conv_transpose(y)⟩, exactly (the operands make every sum exact).
    #[test]
    fn adjoint_identity((conv, use_output_size) in adjoint_pair(), seed in any::<u64>()) {
        let transpose = transpose_of(&conv, use_output_size);
        prop_assert_eq!(transpose.output_shape(), conv.input_shape());
        let x = dyadic(seed, conv.input_shape().iter().product());
        let w = dyadic(seed ^ 1, conv.weight_shape().iter().product());
        let y = dyadic(seed ^ 2, conv.output_shape().iter().product());
        let f64_tensor = |shape: &[usize], data: &[f64]| ferroconv::Tensor::<f64>::from_vec(shape, data.to_vec()).unwrap();
        let (xt, wt, yt) = (f64_tensor(&conv.input_shape(), &x), f64_tensor(&conv.weight_shape(), &w), f64_tensor(&conv.output_shape(), &y));
        let dims = conv.input.len();
        let conv_x = ferroconv::conv(dims, &xt, &wt, None, &conv.options()).unwrap().to_vec().unwrap();
        let transpose_y = ferroconv::conv_transpose(dims, &yt, &wt, None, &transpose.options()).unwrap().to_vec().unwrap();
        prop_assert_eq!(dot(&conv_x, &y), dot(&x, &transpose_y));
    }
}
