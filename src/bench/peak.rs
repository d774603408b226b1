//! A short probe of the machine's FP32 multiply-add peak, the yardstick of "% of peak".
//!
//! What it measures: every thread runs independent chains of `acc = acc · a + b`
//! on the widest FP32 FMA the CPU has (AVX-512F, else AVX2 + FMA, chosen at run
//! time; elsewhere a portable loop the compiler vectorises for the baseline
//! ISA). There are enough chains to cover the FMA latency on every FMA port, and
//! nothing is loaded or stored, so the result is the core's arithmetic
//! throughput with the registers full: an upper bound no convolution can beat.
//! Each FMA counts as 2 FLOPs. Threads run at once, as many as the benchmark
//! uses; the best of a few short trials is reported (a peak, not a typical value).
//! The portable loop counts a separate multiply and add as one multiply-add, so
//! where it is used the "peak" is the baseline ISA's, not the hardware's.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// The instruction set the probe used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FmaIsa {
    /// 512-bit `vfmadd` (16 lanes).
    Avx512,
    /// 256-bit `vfmadd` (8 lanes).
    Avx2Fma,
    /// A plain multiply and add per element, left to the compiler.
    Portable,
}

/// Independent accumulator chains per thread: at least FMA latency (4) × FMA ports (2) vectors in flight.
const AVX512_CHAINS: usize = 16;
const AVX2_CHAINS: usize = 12;
const PORTABLE_CHAINS: usize = 8;
const PORTABLE_LANES: usize = 8;

// acc → acc·A + B converges to B / (1 - A) = 1: no overflow, no subnormals.
const A: f32 = 0.999_999;
const B: f32 = 0.000_001;

/// The constants and a distinct start for every lane of every chain, hidden
/// from the optimiser: with known values it folds `1·A + B` to 1 and drops the
/// loop, and equal values would let it merge chains or lanes.
fn opaque_inputs<const CHAINS: usize, const LANES: usize>() -> (f32, f32, [[f32; LANES]; CHAINS]) {
    let starts = std::array::from_fn(|chain| std::array::from_fn(|lane| 1.0 + (chain * LANES + lane) as f32 / 4096.0));
    black_box((A, B, starts))
}

impl FmaIsa {
    /// The widest FMA this CPU has, detected at run time.
    pub fn detect() -> FmaIsa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return FmaIsa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return FmaIsa::Avx2Fma;
            }
        }
        FmaIsa::Portable
    }

    /// `"avx512"`, `"avx2+fma"` or `"portable"`.
    pub fn name(self) -> &'static str {
        match self {
            FmaIsa::Avx512 => "avx512",
            FmaIsa::Avx2Fma => "avx2+fma",
            FmaIsa::Portable => "portable",
        }
    }

    /// FLOPs of one iteration of the chain loop.
    fn flops_per_iteration(self) -> u64 {
        let (chains, lanes) = match self {
            FmaIsa::Avx512 => (AVX512_CHAINS, 16),
            FmaIsa::Avx2Fma => (AVX2_CHAINS, 8),
            FmaIsa::Portable => (PORTABLE_CHAINS, PORTABLE_LANES),
        };
        2 * (chains * lanes) as u64
    }

    /// Runs `iterations` of the chain loop on this thread; returns a sum of the chains so none is dead code.
    fn run(self, iterations: u64) -> f32 {
        #[cfg(target_arch = "x86_64")]
        match self {
            // SAFETY: `detect` returns Avx512 only where the CPU has avx512f.
            FmaIsa::Avx512 => return unsafe { x86::chains_avx512(iterations) },
            // SAFETY: `detect` returns Avx2Fma only where the CPU has avx2 and fma.
            FmaIsa::Avx2Fma => return unsafe { x86::chains_avx2(iterations) },
            FmaIsa::Portable => {}
        }
        chains_portable(iterations)
    }
}

/// The probe's result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeakProbe {
    /// FP32 GFLOP/s of all threads together.
    pub gflops: f64,
    /// The instruction set used.
    pub isa: FmaIsa,
    /// Threads that ran at once.
    pub threads: usize,
}

impl PeakProbe {
    /// Probes with `threads` threads for about a quarter of a second.
    ///
    /// ```no_run
    /// let peak = ferroconv::bench::PeakProbe::measure(2);
    /// println!("{:.1} GFLOP/s ({}, {} threads)", peak.gflops, peak.isa.name(), peak.threads);
    /// ```
    pub fn measure(threads: usize) -> PeakProbe {
        Self::measure_for(threads, Duration::from_millis(60), 3)
    }

    /// Probes with `threads` threads: the best of `trials` runs of about `trial` each.
    pub fn measure_for(threads: usize, trial: Duration, trials: usize) -> PeakProbe {
        let isa = FmaIsa::detect();
        let threads = threads.max(1);
        // Calibrate: grow the iteration count until one run takes a measurable time.
        let mut iterations = 1 << 12;
        let mut seconds = run_on_threads(isa, threads, iterations);
        while seconds < trial.as_secs_f64() / 4.0 && iterations < 1 << 40 {
            iterations *= 2;
            seconds = run_on_threads(isa, threads, iterations);
        }
        let iterations = ((iterations as f64 * trial.as_secs_f64() / seconds.max(1e-9)) as u64).max(1);
        let best = (0..trials.max(1)).map(|_| run_on_threads(isa, threads, iterations)).fold(f64::INFINITY, f64::min);
        let flops = isa.flops_per_iteration() as f64 * iterations as f64 * threads as f64;
        PeakProbe { gflops: flops / best.max(1e-9) / 1e9, isa, threads }
    }
}

/// Seconds from the first thread's start to the last one's end, all started together.
///
/// Each worker reads the clock itself: a timer thread preempted between the
/// barrier and its clock read would miss part of the work and inflate the peak.
fn run_on_threads(isa: FmaIsa, threads: usize, iterations: u64) -> f64 {
    let ready = Barrier::new(threads);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    ready.wait();
                    let start = Instant::now();
                    black_box(isa.run(black_box(iterations)));
                    (start, Instant::now())
                })
            })
            .collect();
        // A worker only computes and cannot panic; were it to, its span is simply missing.
        workers.into_iter().filter_map(|w| w.join().ok()).collect()
    });
    let first_start = spans.iter().map(|s| s.0).min();
    let last_end = spans.iter().map(|s| s.1).max();
    match (first_start, last_end) {
        (Some(start), Some(end)) => (end - start).as_secs_f64(),
        _ => f64::INFINITY,
    }
}

fn chains_portable(iterations: u64) -> f32 {
    let (a, b, mut acc) = opaque_inputs::<PORTABLE_CHAINS, PORTABLE_LANES>();
    for _ in 0..iterations {
        for chain in &mut acc {
            for v in chain {
                *v = *v * a + b;
            }
        }
    }
    acc.iter().flatten().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{AVX2_CHAINS, AVX512_CHAINS, opaque_inputs};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub(super) fn chains_avx512(iterations: u64) -> f32 {
        let (a, b, starts) = opaque_inputs::<AVX512_CHAINS, 16>();
        let (a, b) = (_mm512_set1_ps(a), _mm512_set1_ps(b));
        // SAFETY: each `lanes` is 16 readable f32s, as the unaligned load requires.
        let mut acc = starts.map(|lanes| unsafe { _mm512_loadu_ps(lanes.as_ptr()) });
        for _ in 0..iterations {
            for chain in &mut acc {
                *chain = _mm512_fmadd_ps(*chain, a, b);
            }
        }
        _mm512_reduce_add_ps(acc.into_iter().fold(_mm512_setzero_ps(), |s, c| _mm512_add_ps(s, c)))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn chains_avx2(iterations: u64) -> f32 {
        let (a, b, starts) = opaque_inputs::<AVX2_CHAINS, 8>();
        let (a, b) = (_mm256_set1_ps(a), _mm256_set1_ps(b));
        // SAFETY: each `lanes` is 8 readable f32s, as the unaligned load requires.
        let mut acc = starts.map(|lanes| unsafe { _mm256_loadu_ps(lanes.as_ptr()) });
        for _ in 0..iterations {
            for chain in &mut acc {
                *chain = _mm256_fmadd_ps(*chain, a, b);
            }
        }
        let sum = acc.into_iter().fold(_mm256_setzero_ps(), |s, c| _mm256_add_ps(s, c));
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` is 8 writable f32s, as `_mm256_storeu_ps` (unaligned) requires.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
        lanes.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_isa_path_computes_the_converging_chain() {
        // From starts in [1, 1.07), acc·A + B moves towards 1, so each path returns about its element count.
        let mut isas = vec![FmaIsa::Portable];
        if FmaIsa::detect() != FmaIsa::Portable {
            isas.push(FmaIsa::Avx2Fma);
        }
        if FmaIsa::detect() == FmaIsa::Avx512 {
            isas.push(FmaIsa::Avx512);
        }
        for isa in isas {
            let elements = isa.flops_per_iteration() as f32 / 2.0;
            let sum = isa.run(1000);
            assert!((sum - elements).abs() < 0.05 * elements, "{isa:?}: {sum} vs {elements}");
        }
    }

    #[test]
    fn probe_reports_a_finite_rate_for_the_threads_asked() {
        let peak = PeakProbe::measure_for(2, Duration::from_millis(2), 1);
        assert_eq!((peak.threads, peak.isa), (2, FmaIsa::detect()));
        assert!(peak.gflops.is_finite() && peak.gflops > 0.0, "{peak:?}");
    }
}
