//! The loop over cases, directions and algorithms, generic over the backend.

use crate::bench::report::{Failure, Outcome, Progress, Record};
use crate::bench::{BenchConfig, BenchTarget, Measurement, Prepared, Suite, measure};
use crate::element::{DType, Element};
use crate::error::Result;
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
        for &direction in &config.directions {
            // Buffers live on the device, so any of its targets can allocate them for all.
            let mut prepared = Prepared::<T, B>::new(&first.backend, geometry.clone(), direction)?;
            for target in targets {
                progress.running(&case.name, direction.name(), target.algorithm);
                let measured = measure(
                    &config.timing,
                    || prepared.run(&target.backend),
                    || BenchTarget::<T>::synchronize(&target.backend),
                );
                let outcome = outcome(&case.name, target, &prepared, config, peak_gflops, measured);
                progress.done(&outcome);
                outcomes.push(outcome);
            }
        }
    }
    Ok(outcomes)
}

/// The record of one timed run, or its failure.
fn outcome<T: Element, B: BenchTarget<T>>(
    name: &str,
    target: &Target<B>,
    prepared: &Prepared<T, B>,
    config: &BenchConfig,
    peak_gflops: Option<f64>,
    measured: Result<Measurement>,
) -> Outcome {
    let (geometry, direction) = (prepared.geometry(), prepared.direction());
    let m = match measured {
        Ok(m) => m,
        Err(e) => {
            return Outcome::Failed(Failure {
                name: name.to_string(),
                direction: direction.name().to_string(),
                algorithm: target.algorithm.to_string(),
                reason: e.to_string(),
            });
        }
    };
    let flops = u64::try_from(prepared.flops()).unwrap_or(u64::MAX);
    let gflops = flops as f64 / (m.median_ms * 1e6);
    Outcome::Measured(Record {
        name: name.to_string(),
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
        workspace_bytes: target.backend.workspace_bytes(geometry, direction),
        ran: target.backend.algorithms_run(geometry, direction),
    })
}
