//! The loop over cases, directions and algorithms, generic over the backend.

use crate::backend::{Activation, Conv, ConvTranspose};
use crate::bench::report::{Failure, Outcome, Progress, Record};
use crate::bench::{BenchConfig, BenchTarget, Direction, Suite, measure};
use crate::element::{DType, Element};
use crate::error::Result;
use crate::geometry::{ConvGeometry, OpKind};
use half::{bf16, f16};

/// One backend configured for one algorithm.
pub(crate) struct Target<B> {
    pub algorithm: &'static str,
    pub backend: B,
}

/// Runs the suite on `targets` (one per algorithm, all on one device) in the configured dtype.
pub(crate) fn run_suite<B>(
    targets: &[Target<B>],
    config: &BenchConfig,
    suite: &Suite,
    peak_gflops: Option<f64>,
    progress: &mut dyn Progress,
) -> Result<Vec<Outcome>>
where
    B: BenchTarget<f32> + BenchTarget<f64> + BenchTarget<f16> + BenchTarget<bf16>,
{
    match config.dtype {
        DType::F32 => run_typed::<f32, B>(targets, config, suite, peak_gflops, progress),
        DType::F64 => run_typed::<f64, B>(targets, config, suite, peak_gflops, progress),
        DType::F16 => run_typed::<f16, B>(targets, config, suite, peak_gflops, progress),
        DType::BF16 => run_typed::<bf16, B>(targets, config, suite, peak_gflops, progress),
    }
}

fn run_typed<T: Element, B: BenchTarget<T>>(
    targets: &[Target<B>],
    config: &BenchConfig,
    suite: &Suite,
    peak_gflops: Option<f64>,
    progress: &mut dyn Progress,
) -> Result<Vec<Outcome>> {
    let Some(first) = targets.first() else { return Ok(vec![]) };
    progress.start(suite.cases().len() * config.directions.len() * targets.len());
    let mut outcomes = vec![];
    for case in suite.cases() {
        let geometry = case.geometry(config.batch_mult)?;
        // The values PyTorch's script uses (offsets 0, 12345 and 999), so both see the same data.
        let input = first.backend.upload(deterministic_fill(&geometry.op_input_shape(), 0))?;
        let weight = first.backend.upload(deterministic_fill(&geometry.weight_shape(), 12345))?;
        for &direction in &config.directions {
            let mut work = Work::<T, B>::new(&first.backend, &geometry, direction)?;
            for target in targets {
                progress.running(&case.name, direction.name(), target.algorithm);
                let measured = measure(
                    &config.timing,
                    || work.run(&target.backend, &geometry, &input, &weight),
                    || BenchTarget::<T>::synchronize(&target.backend),
                );
                let outcome = match measured {
                    Ok(m) => {
                        let flops = u64::try_from(direction.flops(&geometry)).unwrap_or(u64::MAX);
                        let gflops = flops as f64 / (m.median_ms * 1e6);
                        Outcome::Measured(Record {
                            name: case.name.clone(),
                            op: geometry.op.name().to_string(),
                            device: config.device.to_string(),
                            dtype: T::DTYPE.name().to_string(),
                            direction: direction.name().to_string(),
                            algorithm: target.algorithm.to_string(),
                            threads: config.threads,
                            batch: geometry.batch,
                            out_shape: geometry.op_output_shape(),
                            flops,
                            median_ms: m.median_ms,
                            min_ms: m.min_ms,
                            p25_ms: m.p25_ms,
                            p75_ms: m.p75_ms,
                            reps: m.samples,
                            inner: m.inner,
                            gflops,
                            peak_gflops,
                            percent_of_peak: peak_gflops.map(|p| 100.0 * gflops / p),
                            workspace_bytes: target.backend.workspace_bytes(&geometry, direction),
                        })
                    }
                    Err(e) => Outcome::Failed(Failure {
                        name: case.name.clone(),
                        direction: direction.name().to_string(),
                        algorithm: target.algorithm.to_string(),
                        reason: e.to_string(),
                    }),
                };
                progress.done(&outcome);
                outcomes.push(outcome);
            }
        }
    }
    Ok(outcomes)
}

/// The buffers one direction writes (and the gradient it reads), allocated once per case.
pub(super) enum Work<T: Element, B: BenchTarget<T>> {
    Fwd { output: B::Buffer<T> },
    Bwd { grad_output: B::Buffer<T>, grad_input: B::Buffer<T>, grad_weight: B::Buffer<T>, grad_bias: B::Buffer<T> },
}

impl<T: Element, B: BenchTarget<T>> Work<T, B> {
    pub(super) fn new(backend: &B, g: &ConvGeometry, direction: Direction) -> Result<Self> {
        let alloc = |shape: &[usize]| backend.alloc(crate::error::checked_product("buffer", shape)?);
        Ok(match direction {
            Direction::Fwd => Work::Fwd { output: alloc(&g.op_output_shape())? },
            Direction::Bwd => Work::Bwd {
                grad_output: backend.upload(deterministic_fill(&g.op_output_shape(), 999))?,
                grad_input: alloc(&g.op_input_shape())?,
                grad_weight: alloc(&g.weight_shape())?,
                grad_bias: alloc(&[g.op_out_channels()])?,
            },
        })
    }

    /// One call of the direction's op(s) on `backend`.
    pub(super) fn run(
        &mut self,
        backend: &B,
        g: &ConvGeometry,
        input: &B::Buffer<T>,
        weight: &B::Buffer<T>,
    ) -> Result<()> {
        let none = Activation::Identity;
        match (self, g.op) {
            (Work::Fwd { output }, OpKind::Conv) => Conv::forward(backend, g, input, weight, None, none, output),
            (Work::Fwd { output }, OpKind::ConvTranspose) => {
                ConvTranspose::forward(backend, g, input, weight, None, none, output)
            }
            (Work::Bwd { grad_output, grad_input, grad_weight, grad_bias }, OpKind::Conv) => {
                Conv::backward_data(backend, g, grad_output, weight, grad_input)?;
                Conv::backward_weight(backend, g, input, grad_output, grad_weight)?;
                Conv::backward_bias(backend, g, grad_output, grad_bias)
            }
            (Work::Bwd { grad_output, grad_input, grad_weight, grad_bias }, OpKind::ConvTranspose) => {
                ConvTranspose::backward_data(backend, g, grad_output, weight, grad_input)?;
                ConvTranspose::backward_weight(backend, g, input, grad_output, grad_weight)?;
                ConvTranspose::backward_bias(backend, g, grad_output, grad_bias)
            }
        }
    }
}

/// `v[i] = ((i·2654435761 + offset) mod 2³²) / 2³² − 0.5`, PyTorch's script's `det_fill`:
/// values in [-0.5, 0.5), no zeros to skip, no subnormals.
pub(super) fn deterministic_fill<T: Element>(shape: &[usize], offset: u64) -> Vec<T> {
    let len: usize = shape.iter().product();
    (0..len as u64)
        .map(|i| {
            let hash = i.wrapping_mul(2_654_435_761).wrapping_add(offset) & 0xffff_ffff;
            T::from_f64(hash as f64 / 4_294_967_296.0 - 0.5)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_matches_pytorchs_script() {
        // det_fill(4, 12345) in torch_suite.py: i*2654435761 + 12345 mod 2^32, / 2^32, - 0.5.
        let v: Vec<f64> = deterministic_fill(&[2, 2], 12345);
        let expected: Vec<f64> =
            (0u64..4).map(|i| ((i * 2654435761 + 12345) % (1 << 32)) as f64 / 4294967296.0 - 0.5).collect();
        assert_eq!(v, expected);
        assert!(v.iter().all(|x| (-0.5..0.5).contains(x)));
    }
}
