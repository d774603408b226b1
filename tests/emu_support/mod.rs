//! What the emulator's backend tests share: running a case's forward and three gradients on
//! any backend, and the fixtures' tolerance rule.

use ferroconv::{Activation, Conv, ConvGeometry, ConvPrimitives, ConvTranspose, Element, OpKind, Result};

/// A case's inputs in its element type.
pub struct Inputs<T> {
    pub input: Vec<T>,
    pub weight: Vec<T>,
    pub bias: Option<Vec<T>>,
    pub grad_output: Vec<T>,
}

/// A case's four results, as f64 (`grad_bias` only with a bias).
pub struct Results {
    pub output: Vec<f64>,
    pub grad_input: Vec<f64>,
    pub grad_weight: Vec<f64>,
    pub grad_bias: Option<Vec<f64>>,
}

/// Forward, grad input, grad weight and grad bias of the op of `g` on `backend`, moving data in
/// and out with `upload` / `download`.
pub fn run_directions<T: Element, B: ConvPrimitives<T>>(
    backend: &B,
    g: &ConvGeometry,
    inputs: &Inputs<T>,
    upload: impl Fn(&[T]) -> Result<B::Buffer<T>>,
    download: impl Fn(&B::Buffer<T>) -> Result<Vec<T>>,
) -> Result<Results> {
    let (x, w, dy) = (upload(&inputs.input)?, upload(&inputs.weight)?, upload(&inputs.grad_output)?);
    let b = inputs.bias.as_deref().map(&upload).transpose()?;
    let to_f64 =
        |buffer: &B::Buffer<T>| -> Result<Vec<f64>> { Ok(download(buffer)?.into_iter().map(T::to_f64).collect()) };
    let mut output = backend.alloc(inputs.grad_output.len())?;
    let mut grad_input = backend.alloc(inputs.input.len())?;
    let mut grad_weight = backend.alloc(inputs.weight.len())?;
    let mut grad_bias = inputs.bias.as_ref().map(|bias| backend.alloc(bias.len())).transpose()?;
    match g.op {
        OpKind::Conv => {
            Conv::forward(backend, g, &x, &w, b.as_ref(), Activation::Identity, &mut output)?;
            Conv::backward_data(backend, g, &dy, &w, &mut grad_input)?;
            Conv::backward_weight(backend, g, &x, &dy, &mut grad_weight)?;
            grad_bias.as_mut().map(|db| Conv::backward_bias(backend, g, &dy, db)).transpose()?;
        }
        OpKind::ConvTranspose => {
            ConvTranspose::forward(backend, g, &x, &w, b.as_ref(), Activation::Identity, &mut output)?;
            ConvTranspose::backward_data(backend, g, &dy, &w, &mut grad_input)?;
            ConvTranspose::backward_weight(backend, g, &x, &dy, &mut grad_weight)?;
            grad_bias.as_mut().map(|db| ConvTranspose::backward_bias(backend, g, &dy, db)).transpose()?;
        }
    }
    Ok(Results {
        output: to_f64(&output)?,
        grad_input: to_f64(&grad_input)?,
        grad_weight: to_f64(&grad_weight)?,
        grad_bias: grad_bias.as_ref().map(to_f64).transpose()?,
    })
}

/// `actual` against `expected` elementwise: `|a - e| <= atol + rtol * |e|`; the failure, if any.
pub fn compare(what: &str, actual: &[f64], expected: &[f64], rtol: f64, atol: f64) -> Option<String> {
    if actual.len() != expected.len() {
        return Some(format!("{what}: {} values, expected {}", actual.len(), expected.len()));
    }
    let bad: Vec<usize> = (0..actual.len())
        .filter(|&i| {
            let error = (actual[i] - expected[i]).abs();
            error.is_nan() || error > atol + rtol * expected[i].abs()
        })
        .collect();
    let &first = bad.first()?;
    Some(format!(
        "{what}: {} of {} elements off (rtol {rtol}, atol {atol}), first [{first}] = {} expected {}",
        bad.len(),
        actual.len(),
        actual[first],
        expected[first]
    ))
}
