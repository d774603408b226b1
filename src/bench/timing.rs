//! Timing one operation: warm-up, an adaptive number of samples, the median.
//!
//! The clock stops only after the device has finished: every sample ends with
//! the `synchronize` hook (a no-op on the CPU, a stream synchronisation on a GPU).

use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How many samples to take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Repetitions {
    /// Exactly this many samples of one call each (after one untimed call).
    Fixed(usize),
    /// Enough samples (each the mean of enough back-to-back calls) that the
    /// measurement takes about this long, within [`Timing::min_samples`] and
    /// [`Timing::max_samples`] samples.
    MinTime(Duration),
}

/// How an operation is timed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// How many samples.
    pub repetitions: Repetitions,
    /// The least number of samples for [`Repetitions::MinTime`], however slow the call.
    pub min_samples: usize,
    /// The most samples for [`Repetitions::MinTime`]; faster calls are batched into samples instead.
    pub max_samples: usize,
    /// How long warm-up calls run (after the first, untimed call) to estimate the cost of one call.
    pub warmup: Duration,
}

impl Default for Timing {
    /// About half a second per measurement, 5 to 50 samples, 0.1 s of warm-up.
    fn default() -> Self {
        Timing {
            repetitions: Repetitions::MinTime(Duration::from_millis(500)),
            min_samples: 5,
            max_samples: 50,
            warmup: Duration::from_millis(100),
        }
    }
}

/// The result of timing one operation; times in milliseconds per call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// Median over the samples.
    pub median_ms: f64,
    /// Fastest sample.
    pub min_ms: f64,
    /// First quartile.
    pub p25_ms: f64,
    /// Third quartile.
    pub p75_ms: f64,
    /// Number of samples.
    pub samples: usize,
    /// Calls per sample (each sample is their mean).
    pub inner: usize,
}

/// Times `call`: one untimed call, warm-up calls to estimate its cost, then the
/// samples. `synchronize` runs before every clock stop, so work a device queued
/// asynchronously is inside the time.
///
/// ```
/// use ferroconv::bench::{measure, Repetitions, Timing};
/// let timing = Timing { repetitions: Repetitions::Fixed(3), ..Timing::default() };
/// let mut calls = 0;
/// let m = measure(&timing, || { calls += 1; Ok(()) }, || Ok(())).unwrap();
/// assert_eq!((m.samples, m.inner), (3, 1));
/// ```
pub fn measure(
    timing: &Timing,
    mut call: impl FnMut() -> Result<()>,
    mut synchronize: impl FnMut() -> Result<()>,
) -> Result<Measurement> {
    if timing.repetitions == Repetitions::Fixed(0) {
        return Err(Error::InvalidArgument { what: "reps", detail: "must be at least 1".into() });
    }
    let mut timed = |calls: usize| -> Result<f64> {
        let start = Instant::now();
        for _ in 0..calls {
            call()?;
        }
        synchronize()?;
        Ok(start.elapsed().as_secs_f64())
    };
    timed(1)?;
    let (samples, inner) = match timing.repetitions {
        Repetitions::Fixed(n) => (n, 1),
        Repetitions::MinTime(target) => {
            let mut estimates = vec![];
            let start = Instant::now();
            while estimates.len() < 2 || (start.elapsed() < timing.warmup && estimates.len() < 50) {
                estimates.push(timed(1)?);
            }
            let per_call = median(&estimates).unwrap_or(0.0).max(1e-9);
            plan(target.as_secs_f64(), per_call, timing.min_samples.max(1), timing.max_samples.max(1))
        }
    };
    let mut times_ms = Vec::with_capacity(samples);
    for _ in 0..samples {
        times_ms.push(timed(inner)? * 1e3 / inner as f64);
    }
    times_ms.sort_by(f64::total_cmp);
    Ok(Measurement {
        median_ms: quantile(&times_ms, 0.5),
        min_ms: times_ms[0],
        p25_ms: quantile(&times_ms, 0.25),
        p75_ms: quantile(&times_ms, 0.75),
        samples,
        inner,
    })
}

/// Samples and calls per sample so that `samples · inner · per_call ≈ target`.
fn plan(target: f64, per_call: f64, min_samples: usize, max_samples: usize) -> (usize, usize) {
    let calls = (target / per_call).max(1.0);
    let samples = (calls as usize).clamp(min_samples, max_samples.max(min_samples));
    let inner = ((calls / samples as f64) as usize).max(1);
    (samples, inner)
}

/// The median of `values` (the mean of the two middle ones for an even count); `None` when empty.
///
/// ```
/// assert_eq!(ferroconv::bench::median(&[3.0, 1.0, 2.0, 10.0]), Some(2.5));
/// ```
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    Some(quantile(&sorted, 0.5))
}

/// The `q`-quantile of non-empty sorted values, interpolating linearly between
/// neighbours (Python's `statistics.quantiles(method="inclusive")`, as PyTorch's script uses).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let position = q * (sorted.len() - 1) as f64;
    let (lo, frac) = (position.floor() as usize, position.fract());
    match sorted.get(lo + 1) {
        Some(&hi) if frac > 0.0 => sorted[lo] + (hi - sorted[lo]) * frac,
        _ => sorted[lo],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[5.0]), Some(5.0));
        assert_eq!(median(&[9.0, 1.0, 5.0]), Some(5.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[1.0, 1.0, 1.0, 100.0, 100.0]), Some(1.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn quartiles_match_pythons_inclusive_method() {
        // statistics.quantiles([1, 2, 3, 4], n=4, method="inclusive") == [1.75, 2.5, 3.25]
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!([quantile(&v, 0.25), quantile(&v, 0.5), quantile(&v, 0.75)], [1.75, 2.5, 3.25]);
        // ... and [2.0, 3.0, 4.0] for 1..=5
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!([quantile(&v, 0.25), quantile(&v, 0.5), quantile(&v, 0.75)], [2.0, 3.0, 4.0]);
    }

    #[test]
    fn plan_batches_fast_calls_and_bounds_slow_ones() {
        // About 1 µs per call (2^-20 s), 0.5 s: 2^19 calls in 50 samples.
        assert_eq!(plan(0.5, 2f64.powi(-20), 5, 50), (50, (1 << 19) / 50));
        // 15.6 ms per call (2^-6 s): 32 calls, one per sample.
        assert_eq!(plan(0.5, 2f64.powi(-6), 5, 50), (32, 1));
        // 1 s per call: still the minimum number of samples.
        assert_eq!(plan(0.5, 1.0, 5, 50), (5, 1));
    }

    #[test]
    fn every_sample_is_synchronised_before_the_clock_stops() {
        let timing = Timing { repetitions: Repetitions::Fixed(4), ..Timing::default() };
        let events = std::cell::RefCell::new(String::new());
        let m = measure(
            &timing,
            || {
                events.borrow_mut().push('c');
                Ok(())
            },
            || {
                events.borrow_mut().push('s');
                Ok(())
            },
        )
        .unwrap();
        // One untimed call, then four samples, each a call followed by a synchronisation.
        assert_eq!(events.into_inner(), "cscscscscs");
        assert_eq!((m.samples, m.inner), (4, 1));
        assert!(m.min_ms <= m.p25_ms && m.p25_ms <= m.median_ms && m.median_ms <= m.p75_ms);
    }

    #[test]
    fn min_time_takes_at_least_the_minimum_samples_and_errors_propagate() {
        let timing = Timing {
            repetitions: Repetitions::MinTime(Duration::ZERO),
            min_samples: 3,
            max_samples: 3,
            warmup: Duration::ZERO,
        };
        let mut calls = 0;
        let m = measure(
            &timing,
            || {
                calls += 1;
                Ok(())
            },
            || Ok(()),
        )
        .unwrap();
        // 1 untimed + 2 warm-up estimates + 3 samples of one call.
        assert_eq!((m.samples, m.inner, calls), (3, 1, 6));

        let failing = measure(&timing, || Err(Error::InvalidArgument { what: "x", detail: "boom".into() }), || Ok(()));
        assert!(failing.unwrap_err().to_string().contains("boom"));
        let zero = Timing { repetitions: Repetitions::Fixed(0), ..timing };
        assert!(measure(&zero, || Ok(()), || Ok(())).is_err());
    }
}
