//! PyTorch golden cases ("fixtures") and the harness that runs them.
//!
//! A fixture is one JSON file (the format is described in `tests/fixtures/README.md`):
//! an op, its parameters and tensors, and either the expected output and
//! gradients (computed by PyTorch in float64) with a tolerance, or the
//! `error_kind` the call must fail with. [`Fixture::run`] runs a case on a
//! device through the public API only (validation, [`forward`] and
//! [`backward`]), so the same harness checks every backend.
//!
//! Each compared element must satisfy `|actual - expected| <= atol + rtol * |expected|`,
//! with the case's per-tensor tolerance where it has one; a NaN never passes.
//!
//! ```
//! use ferroconv::Device;
//! use ferroconv::fixture::Fixture;
//!
//! let case = Fixture::from_json("example", r#"{
//!     "name": "conv1d_by_hand", "op": "conv", "dims": 1, "dtype": "f32",
//!     "params": {"stride": [1], "padding": [0], "dilation": [1], "groups": 1, "padding_mode": "zeros"},
//!     "input": {"shape": [1, 1, 4], "data": [1, 2, 3, 4]},
//!     "weight": {"shape": [1, 1, 2], "data": [1, 1]},
//!     "bias": null, "expect_error": false,
//!     "output": {"shape": [1, 1, 3], "data": [3, 5, 7]},
//!     "grad_output": {"shape": [1, 1, 3], "data": [1, 1, 1]},
//!     "grad_input": {"shape": [1, 1, 4], "data": [1, 2, 2, 1]},
//!     "grad_weight": {"shape": [1, 1, 2], "data": [6, 9]},
//!     "grad_bias": null,
//!     "tolerance": {"rtol": 1e-4, "atol": 1e-5}
//! }"#).unwrap();
//! let report = case.run(Device::Cpu);
//! assert!(report.passed(), "{report}");
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::backend::{Activation, GradRequest};
use crate::device::Device;
use crate::element::{DType, Element};
use crate::error::{Error, Result};
use crate::geometry::{ConvGeometry, ConvOptions, ConvTransposeOptions, Dims, OpKind, Padding, PaddingMode};
use crate::ops::{backward, conv_geometry, conv_transpose_geometry, forward};
use crate::tensor::Tensor;
use crate::{bf16, f16};

/// A tensor as a fixture stores it: a shape and its values in row-major order.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TensorData {
    /// The shape, row-major.
    pub shape: Vec<usize>,
    /// `prod(shape)` values, the last index varying fastest.
    pub data: Vec<f64>,
}

impl TensorData {
    /// A tensor of `T` with these values, on `device` (exact for the fixtures' values).
    pub fn to_tensor<T: Element>(&self, device: Device) -> Result<Tensor<T>> {
        Tensor::from_f64(&self.shape, &self.data)?.to_device(device)
    }
}

/// An integer parameter as written in a fixture: one number or a list (of any
/// length and sign; validation judges it).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum IntParam {
    /// The same value in every spatial dim.
    One(i64),
    /// One value per spatial dim (when the list has the right length).
    Each(Vec<i64>),
}

impl From<&IntParam> for Dims {
    fn from(p: &IntParam) -> Dims {
        match p {
            IntParam::One(v) => Dims::All(*v),
            IntParam::Each(v) => Dims::Each(v.clone()),
        }
    }
}

/// `padding` as written in a fixture: amounts, or `"same"` / `"valid"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum PaddingParam {
    /// The same amount on both sides of each dim.
    Amount(IntParam),
    /// `"same"` or `"valid"` (any other name is rejected when the options are built).
    Named(String),
}

/// A fixture's `params`, as written. Absent keys take PyTorch's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The stride as the file gives it (validated by the library, not here).
    pub stride: Option<IntParam>,
    /// Amounts, or `"same"` / `"valid"`.
    pub padding: Option<PaddingParam>,
    /// The dilation as the file gives it.
    pub dilation: Option<IntParam>,
    /// The number of groups as the file gives it.
    pub groups: Option<i64>,
    /// conv only: `"zeros"`, `"reflect"`, `"replicate"` or `"circular"`.
    pub padding_mode: Option<String>,
    /// conv_transpose only.
    pub output_padding: Option<IntParam>,
    /// conv_transpose only: the spatial output size asked of `forward`; overrides `output_padding`.
    pub output_size: Option<IntParam>,
}

/// The options of either op, built from [`Params`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Options {
    /// For [`OpKind::Conv`].
    Conv(ConvOptions),
    /// For [`OpKind::ConvTranspose`].
    ConvTranspose(ConvTransposeOptions),
}

impl Params {
    /// The options of a conv. Every number is passed on as written, so that
    /// validation (not this conversion) rejects what PyTorch rejects; only what
    /// a conv has no parameter for is an error here.
    pub fn conv_options(&self) -> Result<ConvOptions> {
        if let Some(name) = [("output_padding", &self.output_padding), ("output_size", &self.output_size)]
            .into_iter()
            .find_map(|(name, p)| p.as_ref().map(|_| name))
        {
            return Err(Error::InvalidArgument { what: "params", detail: format!("conv has no parameter {name}") });
        }
        Ok(ConvOptions {
            stride: dims_or(&self.stride, 1),
            padding: self.padding()?,
            dilation: dims_or(&self.dilation, 1),
            groups: self.groups.unwrap_or(1),
            padding_mode: self.padding_mode.as_deref().map(str::parse).transpose()?.unwrap_or_default(),
        })
    }

    /// The options of a conv_transpose, passed on as written (a padding name
    /// included: validation rejects it as PyTorch does).
    pub fn conv_transpose_options(&self) -> Result<ConvTransposeOptions> {
        let mode = self.padding_mode.as_deref().map(str::parse::<PaddingMode>).transpose()?;
        if mode.is_some_and(|m| m != PaddingMode::Zeros) {
            return Err(Error::InvalidArgument {
                what: "padding_mode",
                detail: format!("conv_transpose supports \"zeros\" only, got {:?}", self.padding_mode),
            });
        }
        Ok(ConvTransposeOptions {
            stride: dims_or(&self.stride, 1),
            padding: self.padding()?,
            output_padding: dims_or(&self.output_padding, 0),
            output_size: self.output_size.as_ref().map(Dims::from),
            dilation: dims_or(&self.dilation, 1),
            groups: self.groups.unwrap_or(1),
        })
    }

    /// The options of `op`.
    pub fn options(&self, op: OpKind) -> Result<Options> {
        match op {
            OpKind::Conv => self.conv_options().map(Options::Conv),
            OpKind::ConvTranspose => self.conv_transpose_options().map(Options::ConvTranspose),
        }
    }

    /// The padding as written: amounts, `"same"` or `"valid"` (for either op).
    fn padding(&self) -> Result<Padding> {
        match &self.padding {
            None => Ok(Padding::default()),
            Some(PaddingParam::Amount(p)) => Ok(Padding::Explicit(p.into())),
            Some(PaddingParam::Named(name)) if name == "same" => Ok(Padding::Same),
            Some(PaddingParam::Named(name)) if name == "valid" => Ok(Padding::Valid),
            Some(PaddingParam::Named(name)) => Err(Error::InvalidArgument {
                what: "padding",
                detail: format!("expected amounts, \"same\" or \"valid\", got {name:?}"),
            }),
        }
    }
}

fn dims_or(p: &Option<IntParam>, default: i64) -> Dims {
    p.as_ref().map_or(Dims::All(default), Dims::from)
}

/// One of the tensors a case checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Checked {
    /// The forward result.
    Output,
    /// The gradient with respect to the op's input.
    GradInput,
    /// The gradient with respect to the weight.
    GradWeight,
    /// The gradient with respect to the bias.
    GradBias,
}

impl Checked {
    /// Every checked tensor, in the order they are reported.
    pub const ALL: [Checked; 4] = [Checked::Output, Checked::GradInput, Checked::GradWeight, Checked::GradBias];

    /// The fixture's key for this tensor.
    pub fn name(self) -> &'static str {
        match self {
            Checked::Output => "output",
            Checked::GradInput => "grad_input",
            Checked::GradWeight => "grad_weight",
            Checked::GradBias => "grad_bias",
        }
    }
}

impl fmt::Display for Checked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `|actual - expected| <= atol + rtol * |expected|`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct Tolerance {
    /// Relative tolerance.
    pub rtol: f64,
    /// Absolute tolerance.
    pub atol: f64,
}

impl Tolerance {
    /// The largest deviation allowed from `expected`.
    pub fn allowed(self, expected: f64) -> f64 {
        self.atol + self.rtol * expected.abs()
    }
}

/// The expected results of a valid case.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedValues {
    /// The upstream gradient fed to backward.
    pub grad_output: TensorData,
    /// The expected output.
    pub output: TensorData,
    /// The expected gradient of the input.
    pub grad_input: TensorData,
    /// The expected gradient of the weight.
    pub grad_weight: TensorData,
    /// `None` exactly when the case has no bias.
    pub grad_bias: Option<TensorData>,
    /// The pair that holds for every tensor of the case.
    pub tolerance: Tolerance,
    /// Tighter pairs for some tensors.
    pub tolerance_per_tensor: BTreeMap<Checked, Tolerance>,
}

impl ExpectedValues {
    /// The expected value of `which` (`None` only for the bias gradient of a case without bias).
    pub fn tensor(&self, which: Checked) -> Option<&TensorData> {
        match which {
            Checked::Output => Some(&self.output),
            Checked::GradInput => Some(&self.grad_input),
            Checked::GradWeight => Some(&self.grad_weight),
            Checked::GradBias => self.grad_bias.as_ref(),
        }
    }

    /// The tolerance for `which`: its own where the case gives one, else the case's.
    pub fn tolerance_for(&self, which: Checked) -> Tolerance {
        self.tolerance_per_tensor.get(&which).copied().unwrap_or(self.tolerance)
    }
}

/// What a case expects.
// Variant fields are described by their variant's doc.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq)]
pub enum Expected {
    /// The call fails with this [`Error::kind`]; `message` is PyTorch's, for information.
    Error { kind: String, message: String },
    /// The call succeeds with these results.
    Values(Box<ExpectedValues>),
}

/// One golden case.
#[derive(Debug, Clone, PartialEq)]
pub struct Fixture {
    /// The file name without `.json`.
    pub name: String,
    /// The op the case runs.
    pub op: OpKind,
    /// Spatial dims (1, 2 or 3 in a valid case).
    pub spatial_dims: usize,
    /// The element type to compute in.
    pub dtype: DType,
    /// The op's parameters as the file gives them.
    pub params: Params,
    /// `[N, C_in, *spatial]`.
    pub input: TensorData,
    /// In PyTorch's layout for the op.
    pub weight: TensorData,
    /// The bias, if the case has one.
    pub bias: Option<TensorData>,
    /// What the case expects: results, or an error kind.
    pub expected: Expected,
}

/// The file as written; [`Fixture::from_json`] checks it and gives it types.
#[derive(Deserialize)]
struct RawFixture {
    name: String,
    op: String,
    dims: usize,
    dtype: String,
    params: Params,
    input: TensorData,
    weight: TensorData,
    bias: Option<TensorData>,
    expect_error: bool,
    error_kind: Option<String>,
    message: Option<String>,
    output: Option<TensorData>,
    grad_output: Option<TensorData>,
    grad_input: Option<TensorData>,
    grad_weight: Option<TensorData>,
    grad_bias: Option<TensorData>,
    tolerance: Option<Tolerance>,
    #[serde(default)]
    tolerance_per_tensor: BTreeMap<Checked, Tolerance>,
}

/// A fixture file that cannot be read or is not a well-formed case.
// Variant fields are described by their variant's doc.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file (or folder) cannot be read.
    #[error("{}: cannot read: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// The text is not JSON in the fixtures' layout (unknown params included).
    #[error("{origin}: not a fixture: {source}")]
    Json { origin: String, source: serde_json::Error },
    /// The JSON is well-formed but inconsistent (a missing tensor, data not matching a shape, ...).
    #[error("{origin}: {detail}")]
    Invalid { origin: String, detail: String },
}

impl Fixture {
    /// Reads the case in the file at `path`.
    pub fn load(path: &Path) -> Result<Fixture, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io { path: path.into(), source })?;
        Fixture::from_json(&path.display().to_string(), &text)
    }

    /// Parses a case; `origin` (a path or a label) names it in errors.
    pub fn from_json(origin: &str, text: &str) -> Result<Fixture, LoadError> {
        let raw: RawFixture =
            serde_json::from_str(text).map_err(|source| LoadError::Json { origin: origin.into(), source })?;
        let invalid = |detail: String| LoadError::Invalid { origin: origin.into(), detail };
        let op = match raw.op.as_str() {
            "conv" => OpKind::Conv,
            "conv_transpose" => OpKind::ConvTranspose,
            other => return Err(invalid(format!("unknown op {other:?} (conv, conv_transpose)"))),
        };
        let dtype = raw.dtype.parse::<DType>().map_err(|e| invalid(e.to_string()))?;
        let expected = if raw.expect_error {
            let kind = raw.error_kind.ok_or_else(|| invalid("an error case needs error_kind".into()))?;
            Expected::Error { kind, message: raw.message.unwrap_or_default() }
        } else {
            let required = |what: &str, t: Option<TensorData>| t.ok_or_else(|| invalid(format!("missing {what}")));
            let values = ExpectedValues {
                grad_output: required("grad_output", raw.grad_output)?,
                output: required("output", raw.output)?,
                grad_input: required("grad_input", raw.grad_input)?,
                grad_weight: required("grad_weight", raw.grad_weight)?,
                grad_bias: raw.grad_bias,
                tolerance: raw.tolerance.ok_or_else(|| invalid("missing tolerance".into()))?,
                tolerance_per_tensor: raw.tolerance_per_tensor,
            };
            if values.grad_bias.is_some() != raw.bias.is_some() {
                return Err(invalid("grad_bias must be given exactly when bias is".into()));
            }
            Expected::Values(Box::new(values))
        };
        let fixture = Fixture {
            name: raw.name,
            op,
            spatial_dims: raw.dims,
            dtype,
            params: raw.params,
            input: raw.input,
            weight: raw.weight,
            bias: raw.bias,
            expected,
        };
        for (what, t) in fixture.tensors() {
            let len = t.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
            if len != Some(t.data.len()) {
                return Err(invalid(format!("{what}: shape {:?} does not hold {} values", t.shape, t.data.len())));
            }
        }
        Ok(fixture)
    }

    /// Every tensor the file holds, by key.
    fn tensors(&self) -> Vec<(&'static str, &TensorData)> {
        let mut all = vec![("input", &self.input), ("weight", &self.weight)];
        all.extend(self.bias.as_ref().map(|b| ("bias", b)));
        if let Expected::Values(v) = &self.expected {
            all.push(("grad_output", &v.grad_output));
            all.extend(Checked::ALL.into_iter().filter_map(|c| v.tensor(c).map(|t| (c.name(), t))));
        }
        all
    }

    /// Runs the case on `device` in its dtype and judges the result.
    pub fn run(&self, device: Device) -> CaseReport {
        let outcome = match self.dtype {
            DType::F32 => self.run_as::<f32>(device),
            DType::F64 => self.run_as::<f64>(device),
            DType::F16 => self.run_as::<f16>(device),
            DType::BF16 => self.run_as::<bf16>(device),
        };
        CaseReport { name: self.name.clone(), outcome }
    }

    fn run_as<T: Element>(&self, device: Device) -> Outcome {
        match &self.expected {
            Expected::Error { kind, .. } => self.expect_rejection::<T>(device, kind),
            Expected::Values(values) => self.compare::<T>(device, values),
        }
    }

    /// The op's operands on `device`.
    fn operands<T: Element>(&self, device: Device) -> Result<Operands<T>, Fail> {
        let upload = |what, t: &TensorData| t.to_tensor::<T>(device).map_err(|e| Fail::error(what, e));
        Ok(Operands {
            input: upload("input", &self.input)?,
            weight: upload("weight", &self.weight)?,
            bias: self.bias.as_ref().map(|b| upload("bias", b)).transpose()?,
        })
    }

    fn validate<T: Element>(&self, options: &Options, x: &Operands<T>) -> Result<ConvGeometry> {
        match options {
            Options::Conv(o) => conv_geometry(self.spatial_dims, &x.input, &x.weight, x.bias.as_ref(), o),
            Options::ConvTranspose(o) => {
                conv_transpose_geometry(self.spatial_dims, &x.input, &x.weight, x.bias.as_ref(), o)
            }
        }
    }

    /// An error case: validation (or, failing that, the forward call) must fail with `expected`.
    fn expect_rejection<T: Element>(&self, device: Device, expected: &str) -> Outcome {
        let options = match self.params.options(self.op) {
            Ok(options) => options,
            // The fixtures' README counts this as the expected rejection.
            Err(error) => return Ok(Pass::RejectedWhileBuilding { expected: expected.into(), error }),
        };
        let x = self.operands::<T>(device)?;
        let result = self
            .validate(&options, &x)
            .and_then(|g| forward(&g, &x.input, &x.weight, x.bias.as_ref(), Activation::Identity));
        match result {
            Err(error) if error.kind() == expected => Ok(Pass::Rejected { kind: error.kind() }),
            Err(error) => Err(Fail::WrongError { expected: expected.into(), error }),
            Ok(output) => Err(Fail::NotRejected { expected: expected.into(), output_shape: output.shape().to_vec() }),
        }
    }

    /// A valid case: forward and every gradient, each compared with PyTorch's.
    fn compare<T: Element>(&self, device: Device, expected: &ExpectedValues) -> Outcome {
        let options = self.params.options(self.op).map_err(|e| Fail::error("params", e))?;
        let x = self.operands::<T>(device)?;
        let grad_output = expected.grad_output.to_tensor::<T>(device).map_err(|e| Fail::error("grad_output", e))?;
        let geometry = self.validate(&options, &x).map_err(|e| Fail::error("validation", e))?;
        let output = forward(&geometry, &x.input, &x.weight, x.bias.as_ref(), Activation::Identity)
            .map_err(|e| Fail::error("forward", e))?;
        let grads = backward(&geometry, &x.input, &x.weight, &grad_output, GradRequest::ALL)
            .map_err(|e| Fail::error("backward", e))?;

        let actual = [Some(output), grads.input, grads.weight, grads.bias];
        let mut comparisons = Vec::new();
        for (which, actual) in Checked::ALL.into_iter().zip(&actual) {
            match (actual, expected.tensor(which)) {
                (None, None) => {}
                (Some(_), None) => return Err(Fail::Unexpected { tensor: which }),
                (None, Some(_)) => return Err(Fail::Missing { tensor: which }),
                (Some(a), Some(e)) => {
                    if a.shape() != e.shape.as_slice() {
                        return Err(Fail::Shape { tensor: which, expected: e.shape.clone(), got: a.shape().to_vec() });
                    }
                    let values = a.to_f64_vec().map_err(|err| Fail::error(which.name(), err))?;
                    comparisons.push(TensorComparison::new(which, &values, e, expected.tolerance_for(which)));
                }
            }
        }
        if comparisons.iter().all(TensorComparison::passed) {
            Ok(Pass::Matched(comparisons))
        } else {
            Err(Fail::OutOfTolerance(comparisons))
        }
    }
}

struct Operands<T: Element> {
    input: Tensor<T>,
    weight: Tensor<T>,
    bias: Option<Tensor<T>>,
}

/// How one computed tensor compares with the expected one.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorComparison {
    /// Which tensor.
    pub tensor: Checked,
    /// The tolerance it was held to.
    pub tolerance: Tolerance,
    /// Elements compared.
    pub len: usize,
    /// Elements outside the tolerance (NaNs included).
    pub failures: usize,
    /// The largest `|actual - expected|` (NaN if any element is NaN).
    pub max_abs: f64,
    /// The largest `|actual - expected| / |expected|` over elements whose expected value is non-zero.
    pub max_rel: f64,
    /// The largest `|actual - expected| / allowed`: below 1 passes.
    pub max_share: f64,
    /// The element furthest outside the tolerance, if any is.
    pub worst: Option<ElementMismatch>,
}

/// One element outside the tolerance.
#[derive(Debug, Clone, PartialEq)]
pub struct ElementMismatch {
    /// Its index, one entry per dim of the tensor.
    pub index: Vec<usize>,
    /// The value computed.
    pub actual: f64,
    /// The value expected.
    pub expected: f64,
    /// The deviation the tolerance allows there.
    pub allowed: f64,
}

/// The larger of two deviations, where NaN is the largest.
fn worse(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() { f64::NAN } else { a.max(b) }
}

/// The index in each dim of flat row-major position `flat`.
fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (i, &size) in index.iter_mut().zip(shape).rev() {
        *i = flat % size;
        flat /= size;
    }
    index
}

impl TensorComparison {
    /// Compares `actual` elementwise with `expected` (same length) under `tolerance`.
    pub fn new(tensor: Checked, actual: &[f64], expected: &TensorData, tolerance: Tolerance) -> Self {
        let mut c = TensorComparison {
            tensor,
            tolerance,
            len: actual.len(),
            failures: 0,
            max_abs: 0.0,
            max_rel: 0.0,
            max_share: 0.0,
            worst: None,
        };
        let mut worst: Option<(usize, f64)> = None;
        for (i, (&a, &e)) in actual.iter().zip(&expected.data).enumerate() {
            let diff = (a - e).abs();
            let allowed = tolerance.allowed(e);
            let share = diff / allowed;
            c.max_abs = worse(c.max_abs, diff);
            if e != 0.0 {
                c.max_rel = worse(c.max_rel, diff / e.abs());
            }
            c.max_share = worse(c.max_share, share);
            let within = diff <= allowed; // false for a NaN
            if !within {
                c.failures += 1;
                // The first NaN is the worst element; otherwise the largest share.
                if worst.is_none_or(|(_, s)| !s.is_nan() && (share.is_nan() || share > s)) {
                    worst = Some((i, share));
                }
            }
        }
        c.worst = worst.map(|(i, _)| ElementMismatch {
            index: unravel(i, &expected.shape),
            actual: actual[i],
            expected: expected.data[i],
            allowed: tolerance.allowed(expected.data[i]),
        });
        c
    }

    /// Every element within the tolerance.
    pub fn passed(&self) -> bool {
        self.failures == 0
    }
}

/// Why a case passed.
// Variant fields are described by their variant's doc.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq)]
pub enum Pass {
    /// Every checked tensor within its tolerance.
    Matched(Vec<TensorComparison>),
    /// The library rejected the call with the expected kind.
    Rejected { kind: &'static str },
    /// The parameters could not even be built; the fixtures' README counts
    /// this as the expected rejection.
    RejectedWhileBuilding { expected: String, error: Error },
}

/// Why a case failed.
// Variant fields are described by their variant's doc.
#[allow(missing_docs)]
#[derive(Debug)]
pub enum Fail {
    /// The file could not be loaded.
    Load(LoadError),
    /// A step that should succeed failed; `stage` names it (`params`, `input`, `validation`, `forward`, ...).
    Error { stage: &'static str, error: Error },
    /// An error case failed with another kind.
    WrongError { expected: String, error: Error },
    /// An error case succeeded.
    NotRejected { expected: String, output_shape: Vec<usize> },
    /// A computed tensor has the wrong shape.
    Shape { tensor: Checked, expected: Vec<usize>, got: Vec<usize> },
    /// A gradient the case expects was not returned.
    Missing { tensor: Checked },
    /// A gradient the case does not have was returned.
    Unexpected { tensor: Checked },
    /// Some tensor is outside its tolerance (every comparison is kept).
    OutOfTolerance(Vec<TensorComparison>),
}

impl Fail {
    fn error(stage: &'static str, error: Error) -> Fail {
        Fail::Error { stage, error }
    }
}

/// A case's verdict.
pub type Outcome = std::result::Result<Pass, Fail>;

/// The verdict on one case, named.
#[derive(Debug)]
pub struct CaseReport {
    /// The case's name (its path, when the file did not load).
    pub name: String,
    /// How the case ended.
    pub outcome: Outcome,
}

impl CaseReport {
    /// Whether the case passed.
    pub fn passed(&self) -> bool {
        self.outcome.is_ok()
    }
}

/// The largest of one statistic over several comparisons.
fn largest(comparisons: &[TensorComparison], stat: impl Fn(&TensorComparison) -> f64) -> f64 {
    comparisons.iter().map(stat).fold(0.0, worse)
}

impl fmt::Display for Pass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pass::Matched(c) => write!(
                f,
                "max_abs={:.3e} max_rel={:.3e} ({:.1}% of tolerance)",
                largest(c, |c| c.max_abs),
                largest(c, |c| c.max_rel),
                100.0 * largest(c, |c| c.max_share)
            ),
            Pass::Rejected { kind } => write!(f, "error kind {kind} as expected"),
            Pass::RejectedWhileBuilding { expected, error } => {
                write!(f, "rejected while building the parameters (expected {expected}): {error}")
            }
        }
    }
}

impl fmt::Display for TensorComparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} of {} elements out of tolerance", self.tensor, self.failures, self.len)?;
        if let Some(w) = &self.worst {
            write!(
                f,
                ", worst at {:?}: got {}, expected {}, allowed ±{:.3e}",
                w.index, w.actual, w.expected, w.allowed
            )?;
        }
        write!(f, " (max_abs={:.3e} max_rel={:.3e})", self.max_abs, self.max_rel)
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fail::Load(e) => write!(f, "cannot load: {e}"),
            Fail::Error { stage, error } => write!(f, "{stage}: {error} [{}]", error.kind()),
            Fail::WrongError { expected, error } => {
                write!(f, "expected error kind {expected}, got {}: {error}", error.kind())
            }
            Fail::NotRejected { expected, output_shape } => {
                write!(f, "expected error kind {expected}, but the op succeeded with output shape {output_shape:?}")
            }
            Fail::Shape { tensor, expected, got } => write!(f, "{tensor}: shape {got:?}, expected {expected:?}"),
            Fail::Missing { tensor } => write!(f, "{tensor}: expected, but not returned"),
            Fail::Unexpected { tensor } => write!(f, "{tensor}: returned, but the case has none"),
            Fail::OutOfTolerance(comparisons) => {
                let failed: Vec<String> = comparisons.iter().filter(|c| !c.passed()).map(|c| c.to_string()).collect();
                f.write_str(&failed.join("; "))
            }
        }
    }
}

impl fmt::Display for CaseReport {
    /// `PASS name  details` or `FAIL name  reason`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Ok(pass) => write!(f, "PASS {}  {pass}", self.name),
            Err(fail) => write!(f, "FAIL {}  {fail}", self.name),
        }
    }
}

/// The fixture files at `path`: the file itself, or the `*.json` files of a
/// folder (not its subfolders), sorted by name.
pub fn fixture_files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let io = |source| LoadError::Io { path: path.into(), source };
    if !path.is_dir() {
        // A missing file is reported here rather than as a failed case.
        std::fs::metadata(path).map_err(io)?;
        return Ok(vec![path.into()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let file = entry.map_err(io)?.path();
        if file.is_file() && file.extension().is_some_and(|e| e == "json") {
            files.push(file);
        }
    }
    files.sort();
    Ok(files)
}

/// Loads and runs one file; a file that does not load is a failed case named after its path.
pub fn run_file(path: &Path, device: Device) -> CaseReport {
    match Fixture::load(path) {
        Ok(case) => case.run(device),
        Err(e) => CaseReport { name: path.display().to_string(), outcome: Err(Fail::Load(e)) },
    }
}

/// Pass and fail counts of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Cases that passed.
    pub passed: usize,
    /// Cases that failed.
    pub failed: usize,
}

impl Summary {
    /// Counts `report`.
    pub fn add(&mut self, report: &CaseReport) {
        if report.passed() {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
    }
}

impl fmt::Display for Summary {
    /// `N passed, M failed`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} passed, {} failed", self.passed, self.failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// conv1d of [1, 2, 3, 4] with [1, 1] and bias 0.5, gradients for grad_output [1, 1, 1].
    fn by_hand() -> String {
        r#"{
            "name": "by_hand", "op": "conv", "dims": 1, "dtype": "f64",
            "params": {"stride": [1], "padding": [0], "dilation": [1], "groups": 1, "padding_mode": "zeros"},
            "input": {"shape": [1, 1, 4], "data": [1, 2, 3, 4]},
            "weight": {"shape": [1, 1, 2], "data": [1, 1]},
            "bias": {"shape": [1], "data": [0.5]}, "expect_error": false,
            "output": {"shape": [1, 1, 3], "data": [3.5, 5.5, 7.5]},
            "grad_output": {"shape": [1, 1, 3], "data": [1, 1, 1]},
            "grad_input": {"shape": [1, 1, 4], "data": [1, 2, 2, 1]},
            "grad_weight": {"shape": [1, 1, 2], "data": [6, 9]},
            "grad_bias": {"shape": [1], "data": [3]},
            "tolerance": {"rtol": 1e-10, "atol": 1e-11}
        }"#
        .to_string()
    }

    fn run(text: &str) -> CaseReport {
        Fixture::from_json("test", text).unwrap().run(Device::Cpu)
    }

    #[test]
    fn a_correct_case_passes() {
        let report = run(&by_hand());
        assert!(report.passed(), "{report}");
        assert!(report.to_string().starts_with("PASS by_hand  max_abs=0.000e0 max_rel=0.000e0"), "{report}");
    }

    #[test]
    fn a_wrong_value_fails_naming_tensor_and_index() {
        let report = run(&by_hand().replace("[1, 2, 2, 1]", "[1, 2, 2.001, 1]"));
        let Err(Fail::OutOfTolerance(c)) = &report.outcome else { panic!("{report}") };
        let failed: Vec<_> = c.iter().filter(|c| !c.passed()).collect();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].tensor, Checked::GradInput);
        assert_eq!(failed[0].failures, 1);
        assert_eq!(failed[0].worst.as_ref().unwrap().index, vec![0, 0, 2]);
        assert!(report.to_string().contains("grad_input: 1 of 4 elements out of tolerance, worst at [0, 0, 2]"));
    }

    #[test]
    fn nan_never_passes() {
        let t = TensorData { shape: vec![2], data: vec![1.0, 2.0] };
        let loose = Tolerance { rtol: 1e9, atol: 1e9 };
        let c = TensorComparison::new(Checked::Output, &[1.0, f64::NAN], &t, loose);
        assert!(!c.passed());
        assert!(c.max_abs.is_nan());
        assert_eq!(c.worst.unwrap().index, vec![1]);
    }

    #[test]
    fn the_tighter_per_tensor_tolerance_applies() {
        let off = by_hand().replace("[6, 9]", "[6, 9.000001]");
        let case_tolerance = r#""tolerance": {"rtol": 1e-10, "atol": 1e-11}"#;
        let loose = off.replace(case_tolerance, r#""tolerance": {"rtol": 1e-4, "atol": 1e-5}"#);
        assert!(run(&loose).passed());
        let tight = off.replace(
            case_tolerance,
            r#""tolerance": {"rtol": 1e-4, "atol": 1e-5},
               "tolerance_per_tensor": {"grad_weight": {"rtol": 1e-10, "atol": 1e-11, "reduction_len": 3}}"#,
        );
        let report = run(&tight);
        assert!(!report.passed(), "{report}");
        assert!(report.to_string().contains("grad_weight: 1 of 2 elements"), "{report}");
    }

    fn error_case(params: &str, expected: &str) -> String {
        format!(
            r#"{{"name": "err", "op": "conv_transpose", "dims": 1, "dtype": "f32", "params": {params},
                "input": {{"shape": [1, 1, 4], "data": [1, 2, 3, 4]}},
                "weight": {{"shape": [1, 1, 2], "data": [1, 1]}}, "bias": null,
                "expect_error": true, "error_kind": "{expected}", "message": "from PyTorch"}}"#
        )
    }

    #[test]
    fn error_cases_need_the_right_kind() {
        let report = run(&error_case(r#"{"stride": [2, 2]}"#, "param_length_mismatch"));
        assert_eq!(report.outcome.unwrap(), Pass::Rejected { kind: "param_length_mismatch" });
        let report = run(&error_case(r#"{"padding": "same"}"#, "string_padding_for_transpose"));
        assert!(matches!(report.outcome, Ok(Pass::Rejected { .. })), "{report}");
        let report = run(&error_case(r#"{"stride": -1}"#, "negative_padding"));
        assert!(matches!(report.outcome, Err(Fail::WrongError { .. })), "{report}");
        let report = run(&error_case(r#"{"stride": 1}"#, "negative_padding"));
        assert!(matches!(report.outcome, Err(Fail::NotRejected { .. })), "{report}");
    }

    #[test]
    fn malformed_files_do_not_load() {
        let unknown_param = by_hand().replace(r#""groups": 1"#, r#""groups": 1, "bogus": 3"#);
        assert!(matches!(Fixture::from_json("t", &unknown_param), Err(LoadError::Json { .. })));
        let short = by_hand().replace("[3.5, 5.5, 7.5]", "[3.5, 5.5]");
        assert!(matches!(Fixture::from_json("t", &short), Err(LoadError::Invalid { .. })));
        let no_grad_bias = by_hand().replace(r#""grad_bias": {"shape": [1], "data": [3]},"#, "");
        assert!(matches!(Fixture::from_json("t", &no_grad_bias), Err(LoadError::Invalid { .. })));
    }

    #[test]
    fn unravel_is_row_major() {
        assert_eq!(unravel(0, &[2, 3, 4]), vec![0, 0, 0]);
        assert_eq!(unravel(23, &[2, 3, 4]), vec![1, 2, 3]);
        assert_eq!(unravel(5, &[2, 3, 4]), vec![0, 1, 1]);
    }
}
