//! Helpers shared by the integration tests.
//!
//! The heart of it is a slow, obviously-correct reference in f64, written
//! straight from the formulas of the fixtures README and independently of the
//! library's geometry code: an op is the list of its product terms
//! `(output element, input element, weight element)`, enumerated with explicit
//! loops over positions and kernel taps (and, for the padding modes, an
//! explicit map from each padded position to its source). The forward pass sums
//! the terms; each gradient is its definition applied to the same terms.
//!
//! Also here: seeded random values, the README's tolerance rule, and runners
//! that compute a problem with the library (the functional API, or a backend
//! through the `Conv` / `ConvTranspose` traits).

#![allow(dead_code)] // each test crate uses a different part

use ferroconv::{
    Activation, Conv, ConvGeometry, ConvOptions, ConvTranspose, ConvTransposeOptions, CpuBackend, Device, Element,
    GradRequest, PaddingMode, Tensor,
};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

// ---------------------------------------------------------------------------
// Index arithmetic

/// Row-major flat index of `index` in a tensor of `shape`.
pub fn flat(index: &[usize], shape: &[usize]) -> usize {
    index.iter().zip(shape).fold(0, |acc, (&i, &n)| acc * n + i)
}

/// Every multi-index of `shape`, in row-major order.
pub fn all_indices(shape: &[usize]) -> Vec<Vec<usize>> {
    let mut out = vec![vec![]];
    for &n in shape {
        out = out.into_iter().flat_map(|prefix| (0..n).map(move |i| [prefix.as_slice(), &[i]].concat())).collect();
    }
    out
}

fn product(v: &[usize]) -> usize {
    v.iter().product()
}

fn shape_of(batch: usize, channels: usize, spatial: &[usize]) -> Vec<usize> {
    [&[batch, channels][..], spatial].concat()
}

// ---------------------------------------------------------------------------
// Problems

/// A conv's padding as the user gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pad {
    /// The same amount on both sides, one value per spatial dim.
    Each(Vec<usize>),
    /// `"same"`.
    Same,
    /// `"valid"`.
    Valid,
}

/// `F.convNd` with every parameter, in PyTorch terms.
#[derive(Debug, Clone)]
pub struct ConvProblem {
    pub batch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub groups: usize,
    pub input: Vec<usize>,
    pub kernel: Vec<usize>,
    pub stride: Vec<usize>,
    pub dilation: Vec<usize>,
    pub padding: Pad,
    pub mode: PaddingMode,
    pub bias: bool,
}

/// `F.conv_transposeNd` (with `nn.ConvTransposeNd.forward`'s `output_size`), in PyTorch terms.
#[derive(Debug, Clone)]
pub struct ConvTransposeProblem {
    pub batch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub groups: usize,
    pub input: Vec<usize>,
    pub kernel: Vec<usize>,
    pub stride: Vec<usize>,
    pub dilation: Vec<usize>,
    pub padding: Vec<usize>,
    pub output_padding: Vec<usize>,
    pub output_size: Option<Vec<usize>>,
    pub bias: bool,
}

/// The source in `[0, n)` of padded position `q` (padding `lo` before the
/// input), or `None` for a zero; straight from the README's description.
fn padded_source(mode: PaddingMode, q: usize, lo: usize, n: usize) -> Option<usize> {
    let (q, lo) = (q as i64, lo as i64);
    let n_i = n as i64;
    let pos = q - lo;
    let src = if (0..n_i).contains(&pos) {
        pos
    } else {
        match mode {
            PaddingMode::Zeros => return None,
            // Mirror without repeating the edge: x[-1] = x[1], x[n] = x[n-2].
            PaddingMode::Reflect if pos < 0 => -pos,
            PaddingMode::Reflect => 2 * (n_i - 1) - pos,
            // Clamp to the edge.
            PaddingMode::Replicate if pos < 0 => 0,
            PaddingMode::Replicate => n_i - 1,
            // Wrap around (the padding is at most n).
            PaddingMode::Circular if pos < 0 => pos + n_i,
            PaddingMode::Circular => pos - n_i,
        }
    };
    assert!((0..n_i).contains(&src), "reference: padded position {q} maps outside the input");
    Some(src as usize)
}

impl ConvProblem {
    /// `(pl, pr)` per spatial dim.
    pub fn pads(&self) -> Vec<(usize, usize)> {
        (0..self.input.len())
            .map(|d| match &self.padding {
                Pad::Each(p) => (p[d], p[d]),
                Pad::Valid => (0, 0),
                Pad::Same => {
                    let total = self.dilation[d] * (self.kernel[d] - 1);
                    (total / 2, total - total / 2)
                }
            })
            .collect()
    }

    /// `floor((n + pl + pr - d*(k-1) - 1) / s) + 1` per spatial dim.
    pub fn output_spatial(&self) -> Vec<usize> {
        self.pads()
            .iter()
            .enumerate()
            .map(|(d, (pl, pr))| {
                (self.input[d] + pl + pr - self.dilation[d] * (self.kernel[d] - 1) - 1) / self.stride[d] + 1
            })
            .collect()
    }

    /// Per spatial dim, the source of every padded position.
    fn index_maps(&self) -> Vec<Vec<Option<usize>>> {
        self.pads()
            .iter()
            .enumerate()
            .map(|(d, &(pl, pr))| {
                (0..self.input[d] + pl + pr).map(|q| padded_source(self.mode, q, pl, self.input[d])).collect()
            })
            .collect()
    }

    /// The product over dims of the largest number of padded positions with the
    /// same source (the README's `m`).
    pub fn padding_multiplicity(&self) -> usize {
        self.index_maps()
            .iter()
            .zip(&self.input)
            .map(|(map, &n)| (0..n).map(|i| map.iter().filter(|&&s| s == Some(i)).count()).max().unwrap_or(1))
            .product()
    }

    /// The library's options for this problem.
    pub fn options(&self) -> ConvOptions {
        let opts = ConvOptions::new()
            .stride(self.stride.clone())
            .dilation(self.dilation.clone())
            .groups(self.groups as i64)
            .padding_mode(self.mode);
        match &self.padding {
            Pad::Each(p) => opts.padding(p.clone()),
            Pad::Same => opts.same(),
            Pad::Valid => opts.valid(),
        }
    }
}

impl ConvTransposeProblem {
    /// `(n - 1)*s - 2p + d*(k-1) + 1` per spatial dim.
    pub fn min_size(&self) -> Vec<i64> {
        (0..self.input.len())
            .map(|d| {
                (self.input[d] as i64 - 1) * self.stride[d] as i64 - 2 * self.padding[d] as i64
                    + self.dilation[d] as i64 * (self.kernel[d] as i64 - 1)
                    + 1
            })
            .collect()
    }

    /// `output_size`, or `min_size + output_padding`, per spatial dim.
    pub fn output_spatial(&self) -> Vec<usize> {
        match &self.output_size {
            Some(size) => size.clone(),
            None => {
                self.min_size().iter().zip(&self.output_padding).map(|(&m, &op)| (m + op as i64) as usize).collect()
            }
        }
    }

    /// The library's options for this problem.
    pub fn options(&self) -> ConvTransposeOptions {
        let opts = ConvTransposeOptions::new()
            .stride(self.stride.clone())
            .padding(self.padding.clone())
            .dilation(self.dilation.clone())
            .groups(self.groups as i64)
            .output_padding(self.output_padding.clone());
        match &self.output_size {
            Some(size) => opts.output_size(size.clone()),
            None => opts,
        }
    }
}

/// What a problem computes: the output and the three gradients, flat, in f64.
#[derive(Debug, Clone, PartialEq)]
pub struct Results {
    pub output: Vec<f64>,
    pub grad_input: Vec<f64>,
    pub grad_weight: Vec<f64>,
    pub grad_bias: Option<Vec<f64>>,
}

impl Results {
    /// The tensors with their names, in a fixed order.
    pub fn named(&self) -> Vec<(&'static str, &[f64])> {
        let mut v = vec![
            ("output", self.output.as_slice()),
            ("grad_input", self.grad_input.as_slice()),
            ("grad_weight", self.grad_weight.as_slice()),
        ];
        if let Some(b) = &self.grad_bias {
            v.push(("grad_bias", b.as_slice()));
        }
        v
    }
}

/// The operands of a problem, flat, in f64.
#[derive(Debug, Clone)]
pub struct Operands {
    pub input: Vec<f64>,
    pub weight: Vec<f64>,
    pub bias: Option<Vec<f64>>,
    pub grad_output: Vec<f64>,
}

impl Operands {
    /// Random operands for `problem`, drawn by `draw(seed, len)`.
    pub fn random<P: Problem>(problem: &P, seed: u64, draw: fn(u64, usize) -> Vec<f64>) -> Self {
        Operands {
            input: draw(seed, product(&problem.input_shape())),
            weight: draw(seed ^ 0x5745_4947, product(&problem.weight_shape())),
            bias: problem.has_bias().then(|| draw(seed ^ 0x4249_4153, problem.output_channels())),
            grad_output: draw(seed ^ 0x4752_4144, product(&problem.output_shape())),
        }
    }

    /// The same operands rounded to `T` (what a `T` computation actually sees).
    pub fn rounded<T: Element>(&self) -> Self {
        let r = |v: &[f64]| v.iter().map(|&x| T::from_f64(x).to_f64()).collect::<Vec<_>>();
        Operands {
            input: r(&self.input),
            weight: r(&self.weight),
            bias: self.bias.as_deref().map(r),
            grad_output: r(&self.grad_output),
        }
    }
}

/// A conv or conv_transpose problem: its shapes, its product terms, and how to
/// run it with the library.
pub trait Problem: std::fmt::Debug {
    fn spatial_dims(&self) -> usize;
    fn input_shape(&self) -> Vec<usize>;
    fn weight_shape(&self) -> Vec<usize>;
    fn output_shape(&self) -> Vec<usize>;
    fn has_bias(&self) -> bool;
    /// Channels of the op's output (the bias length).
    fn output_channels(&self) -> usize;

    /// Calls `f(output_index, input_index, weight_index)` once per product
    /// `input[i] * weight[w]` summed into `output[o]`.
    fn for_each_term(&self, f: &mut dyn FnMut(usize, usize, usize));

    /// The README's `reduction_len` of output, grad_input, grad_weight, grad_bias.
    fn reduction_lens(&self) -> [usize; 4];

    /// The library's validated geometry.
    fn geometry(&self) -> ferroconv::Result<ConvGeometry>;

    /// Forward and every gradient through the functional API, computed in `T`.
    fn run_functional<T: Element>(&self, operands: &Operands, device: Device) -> ferroconv::Result<Results>;

    /// Forward and every gradient on `backend` through the `Conv` / `ConvTranspose` traits, in `T`.
    fn run_backend<T: Element>(&self, backend: &CpuBackend, operands: &Operands) -> ferroconv::Result<Results>;

    /// The f64 reference: the terms summed, and each gradient by its definition.
    fn reference(&self, operands: &Operands) -> Results {
        let Operands { input: x, weight: w, bias, grad_output: gy } = operands;
        let mut output = vec![0.0; product(&self.output_shape())];
        let mut grad_input = vec![0.0; x.len()];
        let mut grad_weight = vec![0.0; w.len()];
        self.for_each_term(&mut |o, i, k| {
            output[o] += x[i] * w[k];
            grad_input[i] += gy[o] * w[k];
            grad_weight[k] += gy[o] * x[i];
        });
        let channels = self.output_channels();
        let volume = product(&self.output_shape()[2..]);
        let channel_of = |o: usize| (o / volume) % channels;
        if let Some(b) = bias {
            for (o, y) in output.iter_mut().enumerate() {
                *y += b[channel_of(o)];
            }
        }
        let grad_bias = bias.as_ref().map(|_| {
            let mut db = vec![0.0; channels];
            for (o, g) in gy.iter().enumerate() {
                db[channel_of(o)] += g;
            }
            db
        });
        Results { output, grad_input, grad_weight, grad_bias }
    }
}

fn tensor<T: Element>(shape: &[usize], data: &[f64], device: Device) -> Tensor<T> {
    Tensor::from_f64(shape, data).and_then(|t| t.to_device(device)).expect("operand shapes match their data")
}

fn to_f64<T: Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

fn gradients_to_results<T: Element>(
    output: Tensor<T>,
    grads: ferroconv::Gradients<T>,
    has_bias: bool,
) -> ferroconv::Result<Results> {
    let missing = |what| ferroconv::Error::InvalidArgument { what, detail: "gradient not returned".into() };
    let grad_bias = match (has_bias, grads.bias) {
        (true, Some(b)) => Some(b.to_f64_vec()?),
        (false, None) => None,
        _ => return Err(missing("grad_bias")),
    };
    Ok(Results {
        output: output.to_f64_vec()?,
        grad_input: grads.input.ok_or_else(|| missing("grad_input"))?.to_f64_vec()?,
        grad_weight: grads.weight.ok_or_else(|| missing("grad_weight"))?.to_f64_vec()?,
        grad_bias,
    })
}

/// Buffers of `T` for the backend runners.
struct Buffers<T> {
    x: Vec<T>,
    w: Vec<T>,
    b: Option<Vec<T>>,
    gy: Vec<T>,
}

impl<T: Element> Buffers<T> {
    fn new(o: &Operands) -> Self {
        let c = |v: &[f64]| v.iter().map(|&x| T::from_f64(x)).collect::<Vec<T>>();
        Buffers { x: c(&o.input), w: c(&o.weight), b: o.bias.as_deref().map(c), gy: c(&o.grad_output) }
    }
}

/// Output buffers poisoned with NaN, so an element a backend forgets to write shows.
fn poisoned<T: Element>(shape: &[usize]) -> Vec<T> {
    vec![T::nan(); product(shape)]
}

impl Problem for ConvProblem {
    fn spatial_dims(&self) -> usize {
        self.input.len()
    }
    fn input_shape(&self) -> Vec<usize> {
        shape_of(self.batch, self.in_channels, &self.input)
    }
    fn weight_shape(&self) -> Vec<usize> {
        shape_of(self.out_channels, self.in_channels / self.groups, &self.kernel)
    }
    fn output_shape(&self) -> Vec<usize> {
        shape_of(self.batch, self.out_channels, &self.output_spatial())
    }
    fn has_bias(&self) -> bool {
        self.bias
    }
    fn output_channels(&self) -> usize {
        self.out_channels
    }

    // y[n, o, i] = Σ_{c, t} xpad[n, g*Cin_g + c, i*s + t*d] * w[o, c, t]
    fn for_each_term(&self, f: &mut dyn FnMut(usize, usize, usize)) {
        let (x_shape, w_shape, y_shape) = (self.input_shape(), self.weight_shape(), self.output_shape());
        let (cin_g, cout_g) = (self.in_channels / self.groups, self.out_channels / self.groups);
        let maps = self.index_maps();
        let positions = all_indices(&self.output_spatial());
        let taps = all_indices(&self.kernel);
        for n in 0..self.batch {
            for o in 0..self.out_channels {
                let g = o / cout_g;
                for i in &positions {
                    for c in 0..cin_g {
                        for t in &taps {
                            let source: Option<Vec<usize>> = (0..i.len())
                                .map(|d| maps[d][i[d] * self.stride[d] + t[d] * self.dilation[d]])
                                .collect();
                            let Some(source) = source else { continue };
                            f(
                                flat(&[&[n, o][..], i].concat(), &y_shape),
                                flat(&[&[n, g * cin_g + c][..], &source].concat(), &x_shape),
                                flat(&[&[o, c][..], t].concat(), &w_shape),
                            );
                        }
                    }
                }
            }
        }
    }

    fn reduction_lens(&self) -> [usize; 4] {
        let (cin_g, cout_g) = (self.in_channels / self.groups, self.out_channels / self.groups);
        let k = product(&self.kernel);
        let out = self.batch * product(&self.output_spatial());
        [cin_g * k + self.bias as usize, cout_g * k * self.padding_multiplicity(), out, out].map(|l| l.max(1))
    }

    fn geometry(&self) -> ferroconv::Result<ConvGeometry> {
        let bias = [self.out_channels];
        let bias = self.bias.then_some(&bias[..]);
        ConvGeometry::conv(self.spatial_dims(), &self.input_shape(), &self.weight_shape(), bias, &self.options())
    }

    fn run_functional<T: Element>(&self, o: &Operands, device: Device) -> ferroconv::Result<Results> {
        let x = tensor::<T>(&self.input_shape(), &o.input, device);
        let w = tensor::<T>(&self.weight_shape(), &o.weight, device);
        let b = o.bias.as_ref().map(|b| tensor::<T>(&[b.len()], b, device));
        let gy = tensor::<T>(&self.output_shape(), &o.grad_output, device);
        let opts = self.options();
        let y = ferroconv::conv(self.spatial_dims(), &x, &w, b.as_ref(), &opts)?;
        let grads = ferroconv::conv_backward(self.spatial_dims(), &x, &w, b.as_ref(), &gy, &opts, GradRequest::ALL)?;
        gradients_to_results(y, grads, self.bias)
    }

    fn run_backend<T: Element>(&self, backend: &CpuBackend, o: &Operands) -> ferroconv::Result<Results> {
        let g = self.geometry()?;
        let Buffers { x, w, b, gy } = Buffers::<T>::new(o);
        let mut y = poisoned::<T>(&self.output_shape());
        Conv::forward(backend, &g, &x, &w, b.as_ref(), Activation::Identity, &mut y)?;
        let mut dx = poisoned::<T>(&self.input_shape());
        Conv::backward_data(backend, &g, &gy, &w, &mut dx)?;
        let mut dw = poisoned::<T>(&self.weight_shape());
        Conv::backward_weight(backend, &g, &x, &gy, &mut dw)?;
        let grad_bias = match b {
            Some(_) => {
                let mut db = poisoned::<T>(&[self.out_channels]);
                Conv::backward_bias(backend, &g, &gy, &mut db)?;
                Some(to_f64(&db))
            }
            None => None,
        };
        Ok(Results { output: to_f64(&y), grad_input: to_f64(&dx), grad_weight: to_f64(&dw), grad_bias })
    }
}

impl Problem for ConvTransposeProblem {
    fn spatial_dims(&self) -> usize {
        self.input.len()
    }
    fn input_shape(&self) -> Vec<usize> {
        shape_of(self.batch, self.in_channels, &self.input)
    }
    fn weight_shape(&self) -> Vec<usize> {
        shape_of(self.in_channels, self.out_channels / self.groups, &self.kernel)
    }
    fn output_shape(&self) -> Vec<usize> {
        shape_of(self.batch, self.out_channels, &self.output_spatial())
    }
    fn has_bias(&self) -> bool {
        self.bias
    }
    fn output_channels(&self) -> usize {
        self.out_channels
    }

    // y[n, g*Cout_g + o, i*s + t*d - p] += x[n, g*Cin_g + c, i] * w[g*Cin_g + c, o, t]
    fn for_each_term(&self, f: &mut dyn FnMut(usize, usize, usize)) {
        let (x_shape, w_shape, y_shape) = (self.input_shape(), self.weight_shape(), self.output_shape());
        let (cin_g, cout_g) = (self.in_channels / self.groups, self.out_channels / self.groups);
        let out = self.output_spatial();
        let positions = all_indices(&self.input);
        let taps = all_indices(&self.kernel);
        for n in 0..self.batch {
            for ci in 0..self.in_channels {
                let g = ci / cin_g;
                for i in &positions {
                    for o in 0..cout_g {
                        for t in &taps {
                            let target: Option<Vec<usize>> = (0..i.len())
                                .map(|d| {
                                    let p = (i[d] * self.stride[d] + t[d] * self.dilation[d]) as i64
                                        - self.padding[d] as i64;
                                    (0..out[d] as i64).contains(&p).then_some(p as usize)
                                })
                                .collect();
                            let Some(target) = target else { continue };
                            f(
                                flat(&[&[n, g * cout_g + o][..], &target].concat(), &y_shape),
                                flat(&[&[n, ci][..], i].concat(), &x_shape),
                                flat(&[&[ci, o][..], t].concat(), &w_shape),
                            );
                        }
                    }
                }
            }
        }
    }

    fn reduction_lens(&self) -> [usize; 4] {
        let (cin_g, cout_g) = (self.in_channels / self.groups, self.out_channels / self.groups);
        let k = product(&self.kernel);
        [
            cin_g * k + self.bias as usize,
            cout_g * k,
            self.batch * product(&self.input),
            self.batch * product(&self.output_spatial()),
        ]
        .map(|l| l.max(1))
    }

    fn geometry(&self) -> ferroconv::Result<ConvGeometry> {
        let bias = [self.out_channels];
        let bias = self.bias.then_some(&bias[..]);
        ConvGeometry::conv_transpose(
            self.spatial_dims(),
            &self.input_shape(),
            &self.weight_shape(),
            bias,
            &self.options(),
        )
    }

    fn run_functional<T: Element>(&self, o: &Operands, device: Device) -> ferroconv::Result<Results> {
        let x = tensor::<T>(&self.input_shape(), &o.input, device);
        let w = tensor::<T>(&self.weight_shape(), &o.weight, device);
        let b = o.bias.as_ref().map(|b| tensor::<T>(&[b.len()], b, device));
        let gy = tensor::<T>(&self.output_shape(), &o.grad_output, device);
        let opts = self.options();
        let y = ferroconv::conv_transpose(self.spatial_dims(), &x, &w, b.as_ref(), &opts)?;
        let grads =
            ferroconv::conv_transpose_backward(self.spatial_dims(), &x, &w, b.as_ref(), &gy, &opts, GradRequest::ALL)?;
        gradients_to_results(y, grads, self.bias)
    }

    fn run_backend<T: Element>(&self, backend: &CpuBackend, o: &Operands) -> ferroconv::Result<Results> {
        let g = self.geometry()?;
        let Buffers { x, w, b, gy } = Buffers::<T>::new(o);
        let mut y = poisoned::<T>(&self.output_shape());
        ConvTranspose::forward(backend, &g, &x, &w, b.as_ref(), Activation::Identity, &mut y)?;
        let mut dx = poisoned::<T>(&self.input_shape());
        ConvTranspose::backward_data(backend, &g, &gy, &w, &mut dx)?;
        let mut dw = poisoned::<T>(&self.weight_shape());
        ConvTranspose::backward_weight(backend, &g, &x, &gy, &mut dw)?;
        let grad_bias = match b {
            Some(_) => {
                let mut db = poisoned::<T>(&[self.out_channels]);
                ConvTranspose::backward_bias(backend, &g, &gy, &mut db)?;
                Some(to_f64(&db))
            }
            None => None,
        };
        Ok(Results { output: to_f64(&y), grad_input: to_f64(&dx), grad_weight: to_f64(&dw), grad_bias })
    }
}

// ---------------------------------------------------------------------------
// Random values

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// `len` values drawn uniformly from [-1, 1) as f32, like the fixtures
/// (`torch.rand(...) * 2 - 1`).
pub fn uniform(seed: u64, len: usize) -> Vec<f64> {
    let mut r = rng(seed);
    (0..len).map(|_| ((r.next_u32() >> 8) as f32 * 2f32.powi(-24) * 2.0 - 1.0) as f64).collect()
}

/// `len` multiples of 2^-10 in [-1, 1): every product and sum a test forms
/// from them is exact in f64, so results do not depend on summation order and
/// can be compared for equality.
pub fn dyadic(seed: u64, len: usize) -> Vec<f64> {
    let mut r = rng(seed);
    (0..len).map(|_| ((r.next_u32() >> 21) as i64 - 1024) as f64 / 1024.0).collect()
}

// ---------------------------------------------------------------------------
// Comparisons

/// The README's tolerance for a tensor of `dtype` with reduction length `l`:
/// `(rtol, atol) = (R[dtype], A[dtype] * sqrt(L))`, rounded to 3 significant digits.
pub fn tolerance(dtype: ferroconv::DType, l: usize) -> (f64, f64) {
    use ferroconv::DType;
    let (r, a) = match dtype {
        DType::F64 => (1e-10, 1e-11),
        DType::F32 => (1e-4, 1e-5),
        DType::F16 => (2e-3, 1e-3),
        DType::BF16 => (1.6e-2, 8e-3),
    };
    let three_digits = |v: f64| format!("{v:.2e}").parse::<f64>().expect("a formatted float parses");
    (three_digits(r), three_digits(a * (l as f64).sqrt()))
}

/// `Err` naming the first element with `|actual - expected| > atol + rtol * |expected|`.
pub fn check_close(what: &str, actual: &[f64], expected: &[f64], rtol: f64, atol: f64) -> Result<(), String> {
    if actual.len() != expected.len() {
        return Err(format!("{what}: {} elements, expected {}", actual.len(), expected.len()));
    }
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let bound = atol + rtol * e.abs();
        // Written so that NaN fails.
        let within = (a - e).abs() <= bound;
        if !within {
            return Err(format!("{what}[{i}]: got {a}, expected {e} (|diff| {} > {bound})", (a - e).abs()));
        }
    }
    Ok(())
}

/// `Err` naming the first element whose bits differ (so -0 != +0 and NaN == NaN of the same bits).
pub fn check_bitwise(what: &str, actual: &[f64], expected: &[f64]) -> Result<(), String> {
    if actual.len() != expected.len() {
        return Err(format!("{what}: {} elements, expected {}", actual.len(), expected.len()));
    }
    match actual.iter().zip(expected).position(|(a, e)| a.to_bits() != e.to_bits()) {
        Some(i) => Err(format!("{what}[{i}]: got {:e}, expected {:e}", actual[i], expected[i])),
        None => Ok(()),
    }
}

/// Compares two `Results` tensor by tensor with `check`.
pub fn check_results(
    actual: &Results,
    expected: &Results,
    mut check: impl FnMut(&str, usize, &[f64], &[f64]) -> Result<(), String>,
) -> Result<(), String> {
    if actual.grad_bias.is_some() != expected.grad_bias.is_some() {
        return Err(format!(
            "grad_bias: present {}, expected {}",
            actual.grad_bias.is_some(),
            expected.grad_bias.is_some()
        ));
    }
    for (k, ((name, a), (_, e))) in actual.named().into_iter().zip(expected.named()).enumerate() {
        check(name, k, a, e)?;
    }
    Ok(())
}
