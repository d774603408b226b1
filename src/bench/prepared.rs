//! One case on a backend, ready to time: operands uploaded and outputs
//! allocated once, so a call runs the op and nothing else.

use crate::backend::{Activation, Conv, ConvTranspose};
use crate::bench::{BenchTarget, Direction};
use crate::element::Element;
use crate::error::{Result, checked_product};
use crate::geometry::{ConvGeometry, OpKind};

/// A case prepared for one direction on a backend (the criterion benches and
/// `bench::run` both time [`Prepared::run`]).
///
/// ```
/// use ferroconv::bench::{Direction, Prepared, Suite};
/// use ferroconv::CpuBackend;
/// # fn main() -> ferroconv::Result<()> {
/// let cpu = CpuBackend::with_threads(1)?;
/// let geometry = Suite::builtin()?.case("article_conv")?.geometry(1)?;
/// let mut prepared = Prepared::<f32, _>::new(&cpu, geometry, Direction::Bwd)?;
/// prepared.run(&cpu)?; // grad input, grad weight and grad bias
/// # Ok(()) }
/// ```
pub struct Prepared<T: Element, B: BenchTarget<T>> {
    pub(super) geometry: ConvGeometry,
    pub(super) input: B::Buffer<T>,
    pub(super) weight: B::Buffer<T>,
    pub(super) outputs: Outputs<T, B>,
}

/// What one direction writes (and the gradient it reads).
pub(super) enum Outputs<T: Element, B: BenchTarget<T>> {
    Fwd { output: B::Buffer<T> },
    Bwd { grad_output: B::Buffer<T>, grad_input: B::Buffer<T>, grad_weight: B::Buffer<T>, grad_bias: B::Buffer<T> },
}

impl<T: Element, B: BenchTarget<T>> Prepared<T, B> {
    /// Uploads the operands of `geometry` to `backend` and allocates what `direction` writes.
    ///
    /// The values are those of PyTorch's script (`det_fill` with offsets 0, 12345
    /// and 999 for input, weight and output gradient), so both time the same data.
    pub fn new(backend: &B, geometry: ConvGeometry, direction: Direction) -> Result<Self> {
        let alloc = |shape: &[usize]| backend.alloc(checked_product("buffer", shape)?);
        let filled = |shape: &[usize], offset| backend.upload(deterministic_fill(shape, offset)?);
        let outputs = match direction {
            Direction::Fwd => Outputs::Fwd { output: alloc(&geometry.op_output_shape())? },
            Direction::Bwd => Outputs::Bwd {
                grad_output: filled(&geometry.op_output_shape(), 999)?,
                grad_input: alloc(&geometry.op_input_shape())?,
                grad_weight: alloc(&geometry.weight_shape())?,
                grad_bias: alloc(&[geometry.op_out_channels()])?,
            },
        };
        Ok(Prepared {
            input: filled(&geometry.op_input_shape(), 0)?,
            weight: filled(&geometry.weight_shape(), 12345)?,
            geometry,
            outputs,
        })
    }

    /// The problem.
    pub fn geometry(&self) -> &ConvGeometry {
        &self.geometry
    }

    /// The direction this was prepared for.
    pub fn direction(&self) -> Direction {
        match self.outputs {
            Outputs::Fwd { .. } => Direction::Fwd,
            Outputs::Bwd { .. } => Direction::Bwd,
        }
    }

    /// FLOPs of one [`run`](Self::run).
    pub fn flops(&self) -> u128 {
        self.direction().flops(&self.geometry)
    }

    /// One call of the direction's op(s) on `backend` (which may be another
    /// backend of the same device, e.g. one forced to another algorithm).
    pub fn run(&mut self, backend: &B) -> Result<()> {
        let (g, input, weight, none) = (&self.geometry, &self.input, &self.weight, Activation::Identity);
        match (&mut self.outputs, g.op) {
            (Outputs::Fwd { output }, OpKind::Conv) => Conv::forward(backend, g, input, weight, None, none, output),
            (Outputs::Fwd { output }, OpKind::ConvTranspose) => {
                ConvTranspose::forward(backend, g, input, weight, None, none, output)
            }
            (Outputs::Bwd { grad_output, grad_input, grad_weight, grad_bias }, OpKind::Conv) => {
                Conv::backward_data(backend, g, grad_output, weight, grad_input)?;
                Conv::backward_weight(backend, g, input, grad_output, grad_weight)?;
                Conv::backward_bias(backend, g, grad_output, grad_bias)
            }
            (Outputs::Bwd { grad_output, grad_input, grad_weight, grad_bias }, OpKind::ConvTranspose) => {
                ConvTranspose::backward_data(backend, g, grad_output, weight, grad_input)?;
                ConvTranspose::backward_weight(backend, g, input, grad_output, grad_weight)?;
                ConvTranspose::backward_bias(backend, g, grad_output, grad_bias)
            }
        }
    }
}

/// `v[i] = ((i·2654435761 + offset) mod 2³²) / 2³² − 0.5`, PyTorch's script's `det_fill`:
/// values in [-0.5, 0.5), no zeros to skip, no subnormals.
pub(super) fn deterministic_fill<T: Element>(shape: &[usize], offset: u64) -> Result<Vec<T>> {
    let len = checked_product("buffer", shape)?;
    Ok((0..len as u64)
        .map(|i| {
            let hash = i.wrapping_mul(2_654_435_761).wrapping_add(offset) & 0xffff_ffff;
            T::from_f64(hash as f64 / 4_294_967_296.0 - 0.5)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_matches_pytorchs_script() {
        // torch_suite.py: h = (i * 2654435761 + off) % 2**32; h / 2**32 - 0.5, for i = 0, 1, 1000.
        let v: Vec<f64> = deterministic_fill(&[1001], 12345).unwrap();
        assert_eq!(v[0], 12345.0 / 4294967296.0 - 0.5);
        assert_eq!(v[1], (2654435761.0 + 12345.0) / 4294967296.0 - 0.5);
        assert_eq!(v[1000], ((1000 * 2654435761u64 + 12345) % (1 << 32)) as f64 / 4294967296.0 - 0.5);
        assert!(v.iter().all(|x| (-0.5..0.5).contains(x)));
    }
}
