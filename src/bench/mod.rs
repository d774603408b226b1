//! `ferroconv bench` as a library: the suite of real layer shapes, timing, the
//! FP32 peak probe, and the report.
//!
//! Each case runs through the [`Conv`](crate::Conv) / [`ConvTranspose`](crate::ConvTranspose)
//! traits on raw backend buffers, allocated once per case and direction, so
//! only the op is timed. `fwd` is the forward pass without bias; `bwd` is grad
//! input + grad weight + grad bias, counted as twice the forward FLOPs (the
//! bias gradient's additions are not counted, as in PyTorch's script, whose
//! forward + backward is 3× the forward).
//!
//! ```no_run
//! use ferroconv::bench::{self, BenchConfig, PeakProbe, Quiet, Suite};
//! # fn main() -> ferroconv::Result<()> {
//! let suite = Suite::builtin()?.select(&["r50_3x3_64"])?;
//! let config = BenchConfig { threads: 2, ..BenchConfig::default() };
//! let peak = PeakProbe::measure(config.threads);
//! for outcome in bench::run(&config, &suite, Some(peak.gflops), &mut Quiet)? {
//!     println!("{}", bench::table_row(&outcome));
//! }
//! # Ok(()) }
//! ```

mod peak;
mod prepared;
mod report;
mod runner;
mod suite;
mod target;
mod timing;

pub use peak::{FmaIsa, PeakProbe};
pub use prepared::Prepared;
pub use report::{Failure, Meta, Outcome, PeakInfo, Progress, Quiet, Record, Report, table_header, table_row};
pub use suite::{Case, Suite, forward_flops};
pub use target::BenchTarget;
pub use timing::{Measurement, Repetitions, Timing, measure, median};

use crate::cpu::{CpuAlgorithm, CpuBackend};
use crate::cuda::{CudaExecutor, GpuAlgorithm, GpuBackend};
use crate::device::Device;
use crate::element::DType;
use crate::error::{Error, Result};
use crate::geometry::ConvGeometry;

/// Which pass of an op is timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The forward pass, without bias.
    Fwd,
    /// Grad input, grad weight and grad bias.
    Bwd,
}

impl Direction {
    /// Both directions.
    pub const ALL: [Direction; 2] = [Direction::Fwd, Direction::Bwd];

    /// `"fwd"` or `"bwd"`.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Fwd => "fwd",
            Direction::Bwd => "bwd",
        }
    }

    /// FLOPs of one call: the forward's, or twice that for the two gradients that are convolutions.
    pub fn flops(self, geometry: &ConvGeometry) -> u128 {
        match self {
            Direction::Fwd => forward_flops(geometry),
            Direction::Bwd => 2 * forward_flops(geometry),
        }
    }

    /// Parses `fwd`, `bwd` or `all` (both).
    ///
    /// ```
    /// use ferroconv::bench::Direction;
    /// assert_eq!(Direction::parse_list("all").unwrap(), vec![Direction::Fwd, Direction::Bwd]);
    /// assert!(Direction::parse_list("up").is_err());
    /// ```
    pub fn parse_list(s: &str) -> Result<Vec<Direction>> {
        match s {
            "all" => Ok(Direction::ALL.to_vec()),
            _ => Direction::ALL.into_iter().find(|d| d.name() == s).map(|d| vec![d]).ok_or_else(|| {
                Error::InvalidArgument { what: "direction", detail: format!("expected fwd, bwd or all, got {s:?}") }
            }),
        }
    }
}

/// Which algorithms to time: the backend's own choice, every one it can be forced to, or one by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AlgorithmSelection {
    /// The backend picks per shape (`CpuAlgorithm::Auto`).
    #[default]
    Auto,
    /// Every algorithm that can be forced, one after another.
    All,
    /// One algorithm, by its `name()`.
    Named(String),
}

impl std::str::FromStr for AlgorithmSelection {
    type Err = Error;

    /// `auto`, `all` or an algorithm's name (checked against the device when the run starts).
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => AlgorithmSelection::Auto,
            "all" => AlgorithmSelection::All,
            _ => AlgorithmSelection::Named(s.to_string()),
        })
    }
}

impl AlgorithmSelection {
    /// The CPU algorithms this selection names.
    ///
    /// ```
    /// use ferroconv::{bench::AlgorithmSelection, CpuAlgorithm};
    /// assert_eq!(AlgorithmSelection::All.cpu_algorithms().unwrap(), CpuAlgorithm::ALL);
    /// assert!(AlgorithmSelection::Named("winograd-9000".into()).cpu_algorithms().is_err());
    /// ```
    pub fn cpu_algorithms(&self) -> Result<Vec<CpuAlgorithm>> {
        self.pick("CPU", CpuAlgorithm::Auto, CpuAlgorithm::ALL, CpuAlgorithm::name)
    }

    /// The GPU algorithms this selection names.
    ///
    /// ```
    /// use ferroconv::{bench::AlgorithmSelection, cuda::GpuAlgorithm};
    /// assert_eq!(AlgorithmSelection::Named("direct".into()).gpu_algorithms().unwrap(), [GpuAlgorithm::Direct]);
    /// ```
    pub fn gpu_algorithms(&self) -> Result<Vec<GpuAlgorithm>> {
        self.pick("GPU", GpuAlgorithm::Auto, GpuAlgorithm::ALL, GpuAlgorithm::name)
    }

    fn pick<A: Copy>(&self, device: &str, auto: A, all: &[A], name: fn(A) -> &'static str) -> Result<Vec<A>> {
        match self {
            AlgorithmSelection::Auto => Ok(vec![auto]),
            AlgorithmSelection::All => Ok(all.to_vec()),
            AlgorithmSelection::Named(wanted) => std::iter::once(auto)
                .chain(all.iter().copied())
                .find(|&a| name(a) == wanted)
                .map(|a| vec![a])
                .ok_or_else(|| {
                    let known: Vec<&str> = all.iter().map(|&a| name(a)).collect();
                    Error::InvalidArgument {
                        what: "algorithm",
                        detail: format!("unknown {device} algorithm {wanted:?} (auto, all, {})", known.join(", ")),
                    }
                }),
        }
    }
}

/// What to run and how.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchConfig {
    /// Where to run.
    pub device: Device,
    /// CPU threads (the backend's pool; the peak probe should use as many).
    pub threads: usize,
    /// The element type.
    pub dtype: DType,
    /// The passes to time, each a separate record.
    pub directions: Vec<Direction>,
    /// The algorithms to time, each a separate record.
    pub algorithms: AlgorithmSelection,
    /// How each record is timed.
    pub timing: Timing,
    /// Every case's batch is multiplied by this.
    pub batch_mult: usize,
}

impl Default for BenchConfig {
    /// The CPU with one thread per core, f32, forward, the backend's own algorithm choice.
    fn default() -> Self {
        BenchConfig {
            device: Device::Cpu,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            dtype: DType::F32,
            directions: vec![Direction::Fwd],
            algorithms: AlgorithmSelection::Auto,
            timing: Timing::default(),
            batch_mult: 1,
        }
    }
}

impl BenchConfig {
    /// Checks the settings that do not depend on the device answering: at
    /// least one thread, direction and batch multiple, and algorithm names the
    /// device's backend knows. [`run`] checks them first too; a caller can
    /// check them before its own set-up (the peak probe, a header).
    ///
    /// ```
    /// use ferroconv::bench::{AlgorithmSelection, BenchConfig};
    /// assert!(BenchConfig::default().validate().is_ok());
    /// let unknown = BenchConfig { algorithms: AlgorithmSelection::Named("fft".into()), ..BenchConfig::default() };
    /// assert!(unknown.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<()> {
        if self.batch_mult == 0 {
            return Err(Error::InvalidArgument { what: "batch_mult", detail: "must be at least 1".into() });
        }
        if self.threads == 0 {
            return Err(Error::InvalidArgument { what: "threads", detail: "must be at least 1".into() });
        }
        if self.directions.is_empty() {
            return Err(Error::InvalidArgument { what: "direction", detail: "no direction to run".into() });
        }
        match self.device {
            Device::Cpu => self.algorithms.cpu_algorithms().map(drop),
            Device::Cuda(_) => self.algorithms.gpu_algorithms().map(drop),
            Device::Emu => Ok(()),
        }
    }
}

/// Checks that the benchmark can run on `device` here, with the reason when it cannot.
///
/// ```
/// use ferroconv::{bench, Device};
/// assert!(bench::check_device(Device::Cpu).is_ok());
/// ```
pub fn check_device(device: Device) -> Result<()> {
    match device {
        Device::Cpu => Ok(()),
        Device::Cuda(_) => device.ensure_available(),
        Device::Emu => Err(emulator_not_timed()),
    }
}

/// The emulator checks kernels; its times say nothing about a GPU's.
fn emulator_not_timed() -> Error {
    Error::DeviceUnavailable {
        device: Device::Emu.to_string(),
        reason: "the kernel emulator checks correctness; it is not benchmarked".into(),
    }
}

/// Runs every case of `suite` in each direction with each algorithm, reporting
/// to `progress` as it goes. `peak_gflops` is what `% of peak` is of.
///
/// A run whose op returns an error becomes an [`Outcome::Failed`] and the rest
/// go on; invalid configurations (an unknown algorithm, an unusable device) are errors.
pub fn run(
    config: &BenchConfig,
    suite: &Suite,
    peak_gflops: Option<f64>,
    progress: &mut dyn Progress,
) -> Result<Vec<Outcome>> {
    config.validate()?;
    match config.device {
        Device::Cpu => {
            let targets = config
                .algorithms
                .cpu_algorithms()?
                .into_iter()
                .map(|a| {
                    Ok(runner::Target {
                        algorithm: a.name(),
                        backend: CpuBackend::with_threads(config.threads)?.with_algorithm(a),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            runner::run_suite(&targets, config, suite, peak_gflops, progress)
        }
        Device::Cuda(ordinal) => {
            config.device.ensure_available()?;
            let targets = config
                .algorithms
                .gpu_algorithms()?
                .into_iter()
                .map(|a| {
                    Ok(runner::Target {
                        algorithm: a.name(),
                        backend: GpuBackend::new(CudaExecutor::new(ordinal)?).with_algorithm(a),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            runner::run_suite(&targets, config, suite, peak_gflops, progress)
        }
        Device::Emu => Err(emulator_not_timed()),
    }
}

#[cfg(test)]
mod tests;
