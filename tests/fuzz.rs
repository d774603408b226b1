//! Fuzzing the parameter space: random ranks (also wrong ones), sizes from 0
//! to `usize::MAX`, negative and huge strides, paddings, dilations, groups,
//! output paddings and output sizes, lists of the wrong length, string padding
//! for a transposed conv, every padding mode.
//!
//! Every call must return `Ok` with exactly the shape of the README's formula
//! or an `Err` of the kind the README's first broken rule names; never a panic.
//! The expectation comes from [`oracle`], a transcription of the fixtures
//! README's rules in 128-bit arithmetic, independent of the library. Tiny
//! cases also run forward and backward on tensors; large ones only validate
//! the geometry.
//!
//! A second property builds valid configurations and breaks chosen rules on
//! purpose, to check that the kind reported is the first broken rule's.

use std::panic::{AssertUnwindSafe, catch_unwind};

use ferroconv::{
    ConvGeometry, ConvOptions, ConvTransposeOptions, Dims, Error, GradRequest, Padding, PaddingMode, Tensor,
};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Conv,
    ConvTranspose,
}

/// One call, with every argument as the user could pass it.
#[derive(Debug, Clone)]
struct Case {
    op: Op,
    spatial_dims: usize,
    input: Vec<usize>,
    weight: Vec<usize>,
    bias: Option<Vec<usize>>,
    stride: Dims,
    padding: Padding,
    dilation: Dims,
    groups: i64,
    /// Conv only.
    mode: PaddingMode,
    /// Conv transpose only.
    output_padding: Dims,
    /// Conv transpose only.
    output_size: Option<Dims>,
}

impl Case {
    fn conv_options(&self) -> ConvOptions {
        ConvOptions {
            stride: self.stride.clone(),
            padding: self.padding.clone(),
            dilation: self.dilation.clone(),
            groups: self.groups,
            padding_mode: self.mode,
        }
    }

    fn conv_transpose_options(&self) -> ConvTransposeOptions {
        ConvTransposeOptions {
            stride: self.stride.clone(),
            padding: self.padding.clone(),
            output_padding: self.output_padding.clone(),
            output_size: self.output_size.clone(),
            dilation: self.dilation.clone(),
            groups: self.groups,
        }
    }

    /// The library's geometry for this call, reduced to the op's output shape.
    fn geometry(&self) -> Result<Vec<usize>, Error> {
        let bias = self.bias.as_deref();
        let g = match self.op {
            Op::Conv => ConvGeometry::conv(self.spatial_dims, &self.input, &self.weight, bias, &self.conv_options()),
            Op::ConvTranspose => ConvGeometry::conv_transpose(
                self.spatial_dims,
                &self.input,
                &self.weight,
                bias,
                &self.conv_transpose_options(),
            ),
        }?;
        Ok(g.op_output_shape())
    }

    /// Forward then backward through the functional API on zero tensors; the
    /// output shape, after checking that every gradient has its operand's shape.
    fn run(&self) -> Result<Vec<usize>, Error> {
        let x = Tensor::<f32>::zeros(&self.input)?;
        let w = Tensor::<f32>::zeros(&self.weight)?;
        let b = self.bias.as_deref().map(Tensor::<f32>::zeros).transpose()?;
        let (sd, b) = (self.spatial_dims, b.as_ref());
        let y = match self.op {
            Op::Conv => ferroconv::conv(sd, &x, &w, b, &self.conv_options())?,
            Op::ConvTranspose => ferroconv::conv_transpose(sd, &x, &w, b, &self.conv_transpose_options())?,
        };
        let dy = Tensor::<f32>::zeros(y.shape())?;
        let grads = match self.op {
            Op::Conv => ferroconv::conv_backward(sd, &x, &w, b, &dy, &self.conv_options(), GradRequest::ALL)?,
            Op::ConvTranspose => ferroconv::conv_transpose_backward(
                sd,
                &x,
                &w,
                b,
                &dy,
                &self.conv_transpose_options(),
                GradRequest::ALL,
            )?,
        };
        let shape = |t: Option<Tensor<f32>>| t.map(|t| t.shape().to_vec());
        assert_eq!(shape(grads.input), Some(self.input.clone()), "grad_input shape");
        assert_eq!(shape(grads.weight), Some(self.weight.clone()), "grad_weight shape");
        assert_eq!(shape(grads.bias), self.bias.clone(), "grad_bias shape");
        Ok(y.shape().to_vec())
    }
}

// ---------------------------------------------------------------------------
// The oracle: the README's rules, in order, in 128-bit arithmetic.

const I64_MAX: i128 = i64::MAX as i128;

/// What the oracle expects of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Verdict {
    /// The output shape, or the kind of the first broken rule.
    expected: Result<Vec<i128>, &'static str>,
    /// The number of that rule in the README's table, 21 when valid; a check
    /// of the library's own gets the number of the rule it follows (0 first).
    rule: u32,
    /// Some size the problem involves exceeds `i64::MAX`, the library's index
    /// range: from rule 13 on, a `size_overflow` is then an acceptable answer.
    huge: bool,
    /// Elements of the padded input a backend may materialise (reflect,
    /// replicate, circular), which can be huge while every tensor is tiny.
    padded_elements: i128,
}

fn product(v: &[i128]) -> i128 {
    v.iter().fold(1i128, |acc, &x| acc.saturating_mul(x))
}

/// The product of a shape's extents with zeros counted as ones: the largest
/// index along the tensor, even when a zero batch leaves it empty.
fn index_range(v: &[i128]) -> i128 {
    v.iter().fold(1i128, |acc, &x| acc.saturating_mul(x.max(1)))
}

/// The values of a per-dim parameter for `dims` dims, or `None` for a list of the wrong length.
fn values(d: &Dims, dims: usize) -> Option<Vec<i128>> {
    match d {
        Dims::All(v) => Some(vec![*v as i128; dims]),
        Dims::Each(v) if v.len() == dims => Some(v.iter().map(|&x| x as i128).collect()),
        Dims::Each(_) => None,
    }
}

fn oracle(c: &Case) -> Verdict {
    let mut huge = false;
    let verdict =
        |rule: u32, kind: &'static str, huge: bool| Verdict { expected: Err(kind), rule, huge, padded_elements: 0 };
    let sd = c.spatial_dims;
    let transpose = c.op == Op::ConvTranspose;
    // Not a rule of the README: the library has no op of another rank.
    if !(1..=3).contains(&sd) {
        return verdict(0, "invalid_argument", huge);
    }
    if c.input.len() != sd + 2 {
        return verdict(1, "bad_input_rank", huge);
    }
    if c.weight.len() != sd + 2 {
        return verdict(2, "weight_rank_mismatch", huge);
    }
    let stride = values(&c.stride, sd);
    let dilation = values(&c.dilation, sd);
    let padding = match &c.padding {
        Padding::Explicit(p) => Some(values(p, sd)),
        Padding::Same | Padding::Valid => None,
    };
    let output_list = match (&c.output_size, transpose) {
        (_, false) => Some(Some(vec![])),
        (Some(size), true) => Some(values(size, sd)),
        (None, true) => Some(values(&c.output_padding, sd)),
    };
    let (Some(stride), Some(dilation), Some(Some(output_list))) = (stride, dilation, output_list) else {
        return verdict(3, "param_length_mismatch", huge);
    };
    let padding = match padding {
        Some(None) => return verdict(3, "param_length_mismatch", huge),
        Some(Some(p)) => Some(p),
        None => None,
    };
    if stride.iter().any(|&s| s <= 0) {
        return verdict(4, "non_positive_stride", huge);
    }
    if padding.as_ref().is_some_and(|p| p.iter().any(|&p| p < 0)) {
        return verdict(5, "negative_padding", huge);
    }
    if dilation.iter().any(|&d| d <= 0) {
        return verdict(6, "non_positive_dilation", huge);
    }
    if c.groups <= 0 {
        return verdict(7, "non_positive_groups", huge);
    }
    if transpose && c.output_size.is_none() && output_list.iter().any(|&op| op < 0) {
        return verdict(8, "negative_output_padding", huge);
    }
    if transpose && padding.is_none() {
        return verdict(9, "string_padding_for_transpose", huge);
    }
    if !transpose && c.padding == Padding::Same && stride.iter().any(|&s| s != 1) {
        return verdict(10, "same_padding_with_stride", huge);
    }

    let g = c.groups as i128;
    let input: Vec<i128> = c.input.iter().map(|&v| v as i128).collect();
    let weight: Vec<i128> = c.weight.iter().map(|&v| v as i128).collect();
    let (batch, in_channels, n) = (input[0], input[1], &input[2..]);
    let kernel = &weight[2..];
    let divisible = if transpose { weight[0] % g == 0 } else { in_channels % g == 0 && weight[0] % g == 0 };
    if !divisible {
        return verdict(11, "channels_not_divisible_by_groups", huge);
    }
    let fits = if transpose { weight[0] == in_channels } else { weight[1] * g == in_channels };
    if !fits {
        return verdict(12, "weight_shape_mismatch", huge);
    }
    let out_channels = if transpose { weight[1] * g } else { weight[0] };
    huge |= index_range(&input) > I64_MAX || index_range(&weight) > I64_MAX || out_channels > I64_MAX;
    huge |= weight[1].saturating_mul(product(kernel)) > I64_MAX;
    if c.bias.as_ref().is_some_and(|b| b.len() != 1 || b[0] as i128 != out_channels) {
        return verdict(13, "bias_shape_mismatch", huge);
    }
    if n.contains(&0) {
        return verdict(14, "empty_spatial_input", huge);
    }
    // Not a rule of the README; PyTorch rejects it too ("kernel size should be greater than zero").
    if kernel.contains(&0) {
        return verdict(14, "invalid_argument", huge);
    }

    // d*(k-1) + 1, the dilated kernel's extent.
    let extent: Vec<i128> = (0..sd).map(|d| dilation[d].saturating_mul(kernel[d] - 1).saturating_add(1)).collect();
    huge |= extent.iter().any(|&e| e > I64_MAX);
    let mut padded_elements = 0;
    let out: Vec<i128> = if transpose {
        let p = padding.expect("explicit, checked by rule 9");
        let min: Vec<i128> = (0..sd)
            .map(|d| (n[d] - 1).saturating_mul(stride[d]).saturating_sub(2 * p[d]).saturating_add(extent[d]))
            .collect();
        huge |= (0..sd).any(|d| (n[d] - 1).saturating_mul(stride[d]) > I64_MAX || 2 * p[d] > I64_MAX);
        let out: Vec<i128> = match &c.output_size {
            Some(_) => {
                let size = &output_list;
                if (0..sd).any(|d| size[d] < min[d] || size[d] > min[d].saturating_add(stride[d] - 1)) {
                    return verdict(18, "output_size_out_of_range", huge);
                }
                size.clone()
            }
            None => {
                let op = &output_list;
                if (0..sd).any(|d| op[d] >= stride[d] && op[d] >= dilation[d]) {
                    return verdict(19, "output_padding_too_large", huge);
                }
                (0..sd).map(|d| min[d].saturating_add(op[d])).collect()
            }
        };
        if out.iter().any(|&o| o <= 0) {
            return verdict(20, "non_positive_output_size", huge);
        }
        // The library also bounds the output padded by `p` on both sides (the
        // conv's padded input, in its terms), though nothing materialises it here.
        let padded: Vec<i128> = (0..sd).map(|d| out[d] + 2 * p[d]).collect();
        huge |= index_range(&[&[batch, out_channels][..], &padded].concat()) > I64_MAX;
        out
    } else {
        let pads: Vec<(i128, i128)> = (0..sd)
            .map(|d| match (&c.padding, &padding) {
                (Padding::Same, _) => {
                    let total = extent[d] - 1;
                    (total / 2, total - total / 2)
                }
                (_, Some(p)) => (p[d], p[d]),
                _ => (0, 0),
            })
            .collect();
        let padded: Vec<i128> = (0..sd).map(|d| n[d] + pads[d].0 + pads[d].1).collect();
        padded_elements = index_range(&[&[batch, in_channels][..], &padded].concat());
        huge |= padded_elements > I64_MAX;
        if c.mode == PaddingMode::Reflect && (0..sd).any(|d| pads[d].0 >= n[d] || pads[d].1 >= n[d]) {
            return verdict(15, "reflect_padding_too_large", huge);
        }
        if c.mode == PaddingMode::Circular && (0..sd).any(|d| pads[d].0 > n[d] || pads[d].1 > n[d]) {
            return verdict(16, "circular_padding_too_large", huge);
        }
        if (0..sd).any(|d| extent[d] > padded[d]) {
            return verdict(17, "kernel_larger_than_padded_input", huge);
        }
        (0..sd).map(|d| (padded[d] - extent[d]) / stride[d] + 1).collect()
    };
    let shape = [&[batch, out_channels][..], &out].concat();
    huge |= index_range(&shape) > I64_MAX;
    Verdict { expected: Ok(shape), rule: 21, huge, padded_elements }
}

/// `Err` describing how `got` differs from the verdict.
fn judge(verdict: &Verdict, got: &Result<Vec<usize>, Error>) -> Result<(), String> {
    let tolerated_overflow = verdict.huge && verdict.rule >= 13;
    match (&verdict.expected, got) {
        (Ok(shape), Ok(got)) if got.iter().map(|&v| v as i128).eq(shape.iter().copied()) => Ok(()),
        (Err(kind), Err(e)) if e.kind() == *kind => Ok(()),
        (_, Err(e)) if e.kind() == "size_overflow" && tolerated_overflow => Ok(()),
        (expected, got) => Err(format!("expected {expected:?} (huge: {}), got {got:?}", verdict.huge)),
    }
}

/// Calls `f`, turning a panic into an `Err` that shows the case.
fn no_panic<R>(what: &str, case: &Case, f: impl FnOnce() -> R) -> Result<R, TestCaseError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        TestCaseError::fail(format!("{what} panicked ({msg}) on {case:#?}"))
    })
}

/// Small enough to run forward and backward on tensors in a debug build
/// (every buffer a backend may allocate, and the work).
fn tiny(case: &Case, verdict: &Verdict) -> bool {
    const LIMIT: i128 = 4096;
    // Zeros count as ones: a tensor of shape [0, usize::MAX] cannot be built either.
    let elements = |shape: &[usize]| index_range(&shape.iter().map(|&v| v as i128).collect::<Vec<_>>());
    let output_small = match &verdict.expected {
        Ok(shape) => product(shape) <= LIMIT && product(shape).saturating_mul(elements(&case.weight)) <= 1 << 20,
        Err(_) => true,
    };
    elements(&case.input) <= LIMIT
        && elements(&case.weight) <= LIMIT
        && case.bias.as_deref().is_none_or(|b| elements(b) <= LIMIT)
        && verdict.padded_elements <= LIMIT
        && output_small
}

fn check_case(case: &Case) -> Result<(), TestCaseError> {
    let verdict = oracle(case);
    let got = no_panic("geometry", case, || case.geometry())?;
    judge(&verdict, &got).map_err(|e| TestCaseError::fail(format!("geometry: {e} on {case:#?}")))?;
    if tiny(case, &verdict) {
        let ran = no_panic("forward/backward", case, || case.run())?;
        judge(&verdict, &ran).map_err(|e| TestCaseError::fail(format!("forward/backward: {e} on {case:#?}")))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Strategies

/// A size: mostly small, sometimes 0, sometimes absurd.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        30 => 0usize..5,
        1 => Just(usize::MAX),
        1 => Just(i64::MAX as usize),
        1 => Just(i64::MAX as usize + 1),
        1 => Just(usize::MAX / 3 + 1),
        1 => Just(1usize << 32),
        1 => any::<usize>(),
    ]
}

/// A size for channels and kernels: small and positive more often.
fn small_size() -> impl Strategy<Value = usize> {
    prop_oneof![12 => 1usize..4, 1 => size()]
}

/// An integer parameter: mostly 1..4, also 0, negative and absurd.
fn int() -> impl Strategy<Value = i64> {
    prop_oneof![
        60 => 1i64..4,
        3 => Just(0i64),
        3 => -3i64..0,
        1 => Just(i64::MAX),
        1 => Just(i64::MIN),
        1 => Just(i64::MAX / 3 + 1),
        1 => Just(1i64 << 32),
        1 => any::<i64>(),
    ]
}

/// A padding-like parameter: mostly 0..3.
fn pad_int() -> impl Strategy<Value = i64> {
    prop_oneof![4 => 0i64..3, 1 => int()]
}

/// A per-dim parameter: one value, one per dim, or (rarely) a list of another length.
fn dims(spatial_dims: usize, value: BoxedStrategy<i64>) -> impl Strategy<Value = Dims> {
    prop_oneof![
        4 => value.clone().prop_map(Dims::All),
        16 => proptest::collection::vec(value.clone(), spatial_dims).prop_map(Dims::Each),
        1 => proptest::collection::vec(value, 0..5).prop_map(Dims::Each),
    ]
}

fn padding_mode() -> impl Strategy<Value = PaddingMode> {
    prop_oneof![
        Just(PaddingMode::Zeros),
        Just(PaddingMode::Reflect),
        Just(PaddingMode::Replicate),
        Just(PaddingMode::Circular)
    ]
}

/// How the bias is chosen.
#[derive(Debug, Clone)]
enum BiasChoice {
    None,
    /// `[C_out]`.
    Fitting,
    Shape(Vec<usize>),
}

/// How a transposed conv's `output_size` is chosen.
#[derive(Debug, Clone)]
enum OutputSizeChoice {
    None,
    /// `min_size + (draw % stride)` where that is computable: mostly valid.
    Fitting(u64),
    Given(Dims),
}

/// Channel and group arguments: `(groups, in/groups, out/groups)`, and
/// occasionally raw `(C_in, weight.shape[0], weight.shape[1])` that need not fit.
type Channels = (i64, usize, usize, Option<(usize, usize, usize)>);

fn channels() -> impl Strategy<Value = Channels> {
    let groups = prop_oneof![12 => 1i64..4, 1 => int()];
    let raw = prop_oneof![8 => Just(None), 1 => (size(), size(), size()).prop_map(Some)];
    (groups, small_size(), small_size(), raw)
}

fn case() -> impl Strategy<Value = Case> {
    let op = prop_oneof![Just(Op::Conv), Just(Op::ConvTranspose)];
    let spatial_dims = prop_oneof![30 => 1usize..=3, 1 => 0usize..=5];
    (op, spatial_dims).prop_flat_map(|(op, sd)| {
        let nd = sd.clamp(1, 3);
        let shapes = (
            size(),
            channels(),
            proptest::collection::vec(prop_oneof![6 => 1usize..6, 1 => size()], nd),
            proptest::collection::vec(small_size(), nd),
            prop_oneof![20 => Just(None), 1 => proptest::collection::vec(size(), 0..7).prop_map(Some)],
            prop_oneof![20 => Just(None), 1 => proptest::collection::vec(small_size(), 0..7).prop_map(Some)],
        );
        let bias = prop_oneof![
            3 => Just(BiasChoice::Fitting),
            2 => Just(BiasChoice::None),
            1 => proptest::collection::vec(size(), 0..3).prop_map(BiasChoice::Shape),
        ];
        let padding = prop_oneof![
            8 => dims(sd, pad_int().boxed()).prop_map(Padding::Explicit),
            1 => Just(Padding::Same),
            1 => Just(Padding::Valid),
        ];
        let output_size = prop_oneof![
            3 => Just(OutputSizeChoice::None),
            2 => any::<u64>().prop_map(OutputSizeChoice::Fitting),
            1 => dims(sd, int().boxed()).prop_map(OutputSizeChoice::Given),
        ];
        let params = (
            dims(sd, int().boxed()),
            padding,
            dims(sd, prop_oneof![4 => 1i64..3, 1 => int()].boxed()),
            padding_mode(),
            dims(sd, pad_int().boxed()),
            output_size,
        );
        (shapes, bias, params).prop_map(move |(shapes, bias, params)| {
            let (batch, (groups, cin_g, cout_g, raw), spatial, kernel, input_override, weight_override) = shapes;
            let (stride, padding, dilation, mode, output_padding, output_size) = params;
            let g = usize::try_from(groups).unwrap_or(1).max(1);
            let (mut c_in, mut w0, mut w1) = match op {
                Op::Conv => (g.saturating_mul(cin_g), g.saturating_mul(cout_g), cin_g),
                Op::ConvTranspose => (g.saturating_mul(cin_g), g.saturating_mul(cin_g), cout_g),
            };
            if let Some(raw) = raw {
                (c_in, w0, w1) = raw;
            }
            let mut case = Case {
                op,
                spatial_dims: sd,
                input: input_override.unwrap_or_else(|| [&[batch, c_in][..], &spatial].concat()),
                weight: weight_override.unwrap_or_else(|| [&[w0, w1][..], &kernel].concat()),
                bias: None,
                stride,
                padding,
                dilation,
                groups,
                mode,
                output_padding,
                output_size: None,
            };
            case.bias = match bias {
                BiasChoice::None => None,
                BiasChoice::Shape(s) => Some(s),
                BiasChoice::Fitting => Some(vec![match op {
                    Op::Conv => case.weight.first().copied().unwrap_or(1),
                    Op::ConvTranspose => case.weight.get(1).copied().unwrap_or(1).saturating_mul(g),
                }]),
            };
            if op == Op::ConvTranspose {
                case.output_size = match output_size {
                    OutputSizeChoice::None => None,
                    OutputSizeChoice::Given(d) => Some(d),
                    OutputSizeChoice::Fitting(draw) => fitting_output_size(&case, draw),
                };
            }
            case
        })
    })
}

/// `min_size + (draw % stride)` per dim, when the case's lists make it computable.
fn fitting_output_size(case: &Case, draw: u64) -> Option<Dims> {
    let sd = case.spatial_dims;
    let (Some(stride), Some(dilation), Padding::Explicit(p)) =
        (values(&case.stride, sd), values(&case.dilation, sd), &case.padding)
    else {
        return None;
    };
    let padding = values(p, sd)?;
    if case.input.len() != sd + 2 || case.weight.len() != sd + 2 || stride.iter().any(|&s| s <= 0) {
        return None;
    }
    let sizes = (0..sd).map(|d| {
        let (n, k) = (case.input[d + 2] as i128, case.weight[d + 2] as i128);
        let min = (n - 1)
            .saturating_mul(stride[d])
            .saturating_sub(2 * padding[d])
            .saturating_add(dilation[d].saturating_mul(k - 1))
            .saturating_add(1);
        i64::try_from(min.saturating_add(draw as i128 % stride[d])).ok()
    });
    sizes.collect::<Option<Vec<i64>>>().map(Dims::Each)
}

// ---------------------------------------------------------------------------
// Breaking chosen rules on purpose

/// A valid call of either op, small enough to run.
fn valid_case() -> impl Strategy<Value = Case> {
    let op = prop_oneof![Just(Op::Conv), Just(Op::ConvTranspose)];
    (op, 1usize..=3)
        .prop_flat_map(|(op, sd)| {
            let per_dim = proptest::collection::vec((1usize..=3, 1i64..=3, 1i64..=2, 0i64..=2, 1usize..=3), sd);
            let padding = prop_oneof![4 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)];
            let channels = (1i64..=3, 1usize..=2, 1usize..=2);
            (Just(op), Just(sd), 0usize..=2, channels, per_dim, padding, padding_mode(), any::<bool>(), any::<u64>())
        })
        .prop_map(|(op, sd, batch, (groups, cin_g, cout_g), per_dim, padding_kind, mode, bias, draw)| {
            let g = groups as usize;
            let kernel: Vec<usize> = per_dim.iter().map(|d| d.0).collect();
            let stride: Vec<i64> = per_dim.iter().map(|d| d.1).collect();
            let dilation: Vec<i64> = per_dim.iter().map(|d| d.2).collect();
            let pads: Vec<i64> = per_dim.iter().map(|d| d.3).collect();
            let (padding, stride) = match (op, padding_kind) {
                (Op::Conv, 1) => (Padding::Same, vec![1; sd]),
                (Op::Conv, 2) => (Padding::Valid, stride),
                _ => (Padding::Explicit(Dims::Each(pads.clone())), stride),
            };
            // Large enough for the kernel and for reflect / circular padding.
            let input: Vec<usize> = (0..sd)
                .map(|d| {
                    let extent = dilation[d] as usize * (kernel[d] - 1) + 1;
                    extent + 2 * pads[d] as usize + per_dim[d].4
                })
                .collect();
            let (c_in, weight) = match op {
                Op::Conv => (g * cin_g, [&[g * cout_g, cin_g][..], &kernel].concat()),
                Op::ConvTranspose => (g * cin_g, [&[g * cin_g, cout_g][..], &kernel].concat()),
            };
            let mut case = Case {
                op,
                spatial_dims: sd,
                input: [&[batch, c_in][..], &input].concat(),
                weight,
                bias: bias.then_some(vec![g * cout_g]),
                stride: Dims::Each(stride),
                padding,
                dilation: Dims::Each(dilation),
                groups,
                mode: if op == Op::Conv { mode } else { PaddingMode::Zeros },
                output_padding: Dims::All(0),
                output_size: None,
            };
            if op == Op::ConvTranspose && draw.is_multiple_of(2) {
                case.output_size = fitting_output_size(&case, draw / 2);
            }
            case
        })
        .prop_filter("the oracle accepts it", |c| oracle(c).expected.is_ok())
}

/// The rules that can be broken for `op`.
fn breakable(op: Op) -> Vec<usize> {
    let conv_only = [10, 15, 16, 17];
    let transpose_only = [8, 9, 18, 19, 20];
    (1..=20)
        .filter(|r| match op {
            Op::Conv => !transpose_only.contains(r),
            Op::ConvTranspose => !conv_only.contains(r),
        })
        .collect()
}

/// Changes `case` so that it breaks rule `rule` of the README's table; it may
/// break later rules too, never an earlier one. `draw` picks the dim and the way.
fn break_rule(case: &mut Case, rule: usize, draw: u64) {
    let sd = case.spatial_dims;
    let dim = draw as usize % sd;
    let pick = (draw / 8) % 4;
    let n = |c: &Case| c.input[2 + dim] as i64;
    let each = |d: &Dims| values(d, sd).expect("valid lengths").iter().map(|&v| v as i64).collect::<Vec<i64>>();
    let set = |d: &Dims, value: i64| {
        let mut v = each(d);
        v[dim] = value;
        Dims::Each(v)
    };
    match rule {
        1 => {
            if pick.is_multiple_of(2) {
                case.input.push(1);
            } else {
                case.input.pop();
            }
        }
        2 => {
            if pick.is_multiple_of(2) {
                case.weight.push(1);
            } else {
                case.weight.pop();
            }
        }
        3 => {
            let wrong = Dims::Each(vec![1; sd + 1 + pick as usize % 2]);
            match pick {
                0 => case.stride = wrong,
                1 => case.dilation = wrong,
                2 => case.padding = Padding::Explicit(wrong),
                _ if case.op == Op::ConvTranspose && case.output_size.is_some() => case.output_size = Some(wrong),
                _ if case.op == Op::ConvTranspose => case.output_padding = wrong,
                _ => case.stride = wrong,
            }
        }
        4 => case.stride = set(&case.stride, -(pick as i64)),
        5 => {
            let base = match &case.padding {
                Padding::Explicit(p) => p.clone(),
                _ => Dims::All(0),
            };
            case.padding = Padding::Explicit(set(&base, -1 - pick as i64));
        }
        6 => case.dilation = set(&case.dilation, -(pick as i64)),
        7 => case.groups = -(pick as i64),
        8 => {
            case.output_size = None;
            case.output_padding = set(&Dims::All(0), -1);
        }
        9 => case.padding = if pick.is_multiple_of(2) { Padding::Same } else { Padding::Valid },
        10 => {
            case.padding = Padding::Same;
            case.stride = set(&case.stride, 2);
        }
        11 => {
            case.groups = match case.op {
                Op::Conv => case.input[1] as i64 + 1,
                Op::ConvTranspose => case.weight[0] as i64 + 1,
            }
        }
        12 => match case.op {
            Op::Conv => case.weight[1] += 1,
            Op::ConvTranspose => case.input[1] += 1,
        },
        13 => {
            let c_out = match case.op {
                Op::Conv => case.weight[0],
                Op::ConvTranspose => case.weight[1] * case.groups as usize,
            };
            case.bias = Some(if pick.is_multiple_of(2) { vec![c_out + 1] } else { vec![c_out, 1] });
        }
        14 => case.input[2 + dim] = 0,
        15 => {
            case.mode = PaddingMode::Reflect;
            case.padding = Padding::Explicit(set(&Dims::All(0), n(case)));
        }
        16 => {
            case.mode = PaddingMode::Circular;
            case.padding = Padding::Explicit(set(&Dims::All(0), n(case) + 1));
        }
        17 => {
            if case.padding == Padding::Same {
                case.padding = Padding::Valid;
            }
            let p = match &case.padding {
                Padding::Explicit(p) => each(p)[dim],
                _ => 0,
            };
            let d = each(&case.dilation)[dim];
            case.weight[2 + dim] = ((n(case) + 2 * p) / d + 2) as usize;
        }
        18 => {
            let min = transpose_min_sizes(case);
            let mut size = min.clone();
            size[dim] = if pick.is_multiple_of(2) { min[dim] - 1 } else { min[dim] + each(&case.stride)[dim] };
            case.output_size = Some(Dims::Each(size));
        }
        19 => {
            let largest = each(&case.stride)[dim].max(each(&case.dilation)[dim]);
            case.output_size = None;
            case.output_padding = set(&Dims::All(0), largest + pick as i64);
        }
        20 => {
            // A padding so large that min_size + output_padding <= 0.
            let (s, d, k) = (each(&case.stride)[dim], each(&case.dilation)[dim], case.weight[2 + dim] as i64);
            case.padding = Padding::Explicit(set(&case_padding(case), (n(case) - 1) * s + d * (k - 1) + s + 1));
            case.output_size = None;
            case.output_padding = Dims::All(0);
        }
        _ => unreachable!("rules are numbered 1 to 20"),
    }
}

fn case_padding(case: &Case) -> Dims {
    match &case.padding {
        Padding::Explicit(p) => p.clone(),
        _ => Dims::All(0),
    }
}

/// `(n - 1)*s - 2p + d*(k-1) + 1` per dim of a transposed conv with valid lists.
fn transpose_min_sizes(case: &Case) -> Vec<i64> {
    let sd = case.spatial_dims;
    let list = |d: &Dims| values(d, sd).expect("valid lengths");
    let (stride, dilation, padding) = (list(&case.stride), list(&case.dilation), list(&case_padding(case)));
    (0..sd)
        .map(|d| {
            let (n, k) = (case.input[2 + d] as i128, case.weight[2 + d] as i128);
            ((n - 1) * stride[d] - 2 * padding[d] + dilation[d] * (k - 1) + 1) as i64
        })
        .collect()
}

/// A valid case, the rules to break (a non-empty subset of those that apply), and a draw.
fn broken_case() -> impl Strategy<Value = (Case, Vec<usize>, u64)> {
    (valid_case(), any::<u64>()).prop_flat_map(|(case, draw)| {
        let rules = breakable(case.op);
        // Mostly one rule, so that the late rules are often the first broken.
        let count = prop_oneof![2 => Just(1usize), 1 => 2usize..=3];
        (Just(case), count.prop_flat_map(move |count| proptest::sample::subsequence(rules.clone(), count)), Just(draw))
    })
}

// ---------------------------------------------------------------------------
// Properties

fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(cases);
    ProptestConfig { cases, max_shrink_iters: 1024, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config(2000))]

    /// Any arguments at all: the formula's shape or the first broken rule's kind, never a panic.
    #[test]
    fn any_arguments_give_the_formula_shape_or_a_typed_error(case in case()) {
        check_case(&case)?;
    }
}

proptest! {
    #![proptest_config(config(400))]

    /// Valid calls with chosen rules broken report the first of them.
    #[test]
    fn the_first_broken_rule_names_the_error(
        (case, rules, draw) in broken_case()
    ) {
        let mut broken = case.clone();
        // Highest rule first: a mutation never breaks an earlier rule, and the
        // first rule's mutation, applied last, is not undone by another.
        for &rule in rules.iter().rev() {
            break_rule(&mut broken, rule, draw);
        }
        let verdict = oracle(&broken);
        prop_assert_eq!(verdict.rule, rules[0] as u32, "the oracle disagrees with the mutations on {:#?}", broken);
        check_case(&broken)?;
    }
}

/// A few absurd configurations, spelled out so they never stop being tested.
#[test]
fn absurd_configurations_are_errors_or_the_formula_shape() {
    let conv = |input: Vec<usize>, weight: Vec<usize>, opts: ConvOptions| Case {
        op: Op::Conv,
        spatial_dims: input.len().saturating_sub(2),
        input,
        weight,
        bias: None,
        stride: opts.stride,
        padding: opts.padding,
        dilation: opts.dilation,
        groups: opts.groups,
        mode: opts.padding_mode,
        output_padding: Dims::All(0),
        output_size: None,
    };
    let transpose = |input: Vec<usize>, weight: Vec<usize>, opts: ConvTransposeOptions| Case {
        op: Op::ConvTranspose,
        spatial_dims: input.len().saturating_sub(2),
        input,
        weight,
        bias: None,
        stride: opts.stride,
        padding: opts.padding,
        dilation: opts.dilation,
        groups: opts.groups,
        mode: PaddingMode::Zeros,
        output_padding: opts.output_padding,
        output_size: opts.output_size,
    };
    let third = usize::MAX / 3 + 1;
    let cases = [
        // The dilated kernel's extent d*(k-1) + 1 is exactly usize::MAX + 1.
        conv(vec![1, 1, 4], vec![1, 1, third], ConvOptions::new().dilation(3)),
        conv(vec![1, 1, 4], vec![1, 1, third], ConvOptions::new().dilation(3).same()),
        // A stride far beyond the input, on tensors small enough to run.
        conv(vec![1, 1, 3], vec![1, 1, 1], ConvOptions::new().stride(i64::MAX)),
        conv(vec![1, 1, 5, 5], vec![1, 1, 2, 2], ConvOptions::new().stride([i64::MAX, 1])),
        conv(vec![1, 1, 3], vec![1, 1, 1], ConvOptions::new().dilation(i64::MAX)),
        conv(vec![1, 1, 3], vec![1, 1, 1], ConvOptions::new().padding(i64::MAX)),
        conv(vec![1, 1, 3], vec![1, 1, 1], ConvOptions::new().padding(i64::MAX).padding_mode(PaddingMode::Replicate)),
        conv(
            vec![usize::MAX, usize::MAX, usize::MAX],
            vec![usize::MAX, 1, usize::MAX],
            ConvOptions::new().groups(i64::MAX),
        ),
        // (n-1)*s + d*(k-1) overflows 128 bits.
        transpose(
            vec![1, 1, usize::MAX],
            vec![1, 1, usize::MAX],
            ConvTransposeOptions::new().stride(i64::MAX).dilation(i64::MAX),
        ),
        transpose(vec![1, 1, 3], vec![1, 1, 1], ConvTransposeOptions::new().stride(i64::MAX)),
        transpose(
            vec![1, 1, 1],
            vec![1, 1, 1],
            ConvTransposeOptions::new().stride(i64::MAX).output_padding(i64::MAX - 1),
        ),
        transpose(vec![1, 1, 1], vec![1, 1, 1], ConvTransposeOptions::new().stride(i64::MAX).output_size(i64::MAX)),
        transpose(vec![1, 1, 2], vec![1, 1, 1], ConvTransposeOptions::new().padding(i64::MAX)),
        transpose(vec![1, 1, 2], vec![1, 1, 1], ConvTransposeOptions::new().output_size(i64::MIN)),
        transpose(vec![1, 1, 2], vec![1, usize::MAX, 1], ConvTransposeOptions::new().groups(i64::MAX)),
    ];
    for case in &cases {
        if let Err(e) = check_case(case) {
            panic!("{e}");
        }
    }
}
