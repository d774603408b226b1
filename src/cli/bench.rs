//! `ferroconv bench`: times the suite and prints a table (stdout), a progress
//! bar (stderr) and, with `--json`, one record per case, direction and algorithm.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use ferroconv::bench::{self, AlgorithmSelection, BenchConfig, Direction, Meta, Outcome, PeakProbe, Report, Suite};
use ferroconv::{DType, Device, Error, Result};
use indicatif::{ProgressBar, ProgressStyle};

/// Times the built-in suite of real layer shapes (or a suite file): median ms,
/// GFLOP/s and % of the machine's FP32 peak, per case, direction and algorithm.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Where to run: cpu, cuda, cuda:N, or auto (the best device; FERROCONV_DEVICE overrides).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// A suite file in ../shared/bench/suite.json's format [default: the built-in suite].
    #[arg(long, value_name = "FILE")]
    pub suite: Option<PathBuf>,
    /// Element type: f32, f16, bf16 or f64.
    #[arg(long, default_value = "f32")]
    pub dtype: DType,
    /// CPU threads (also for the peak probe) [default: one per core].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,
    /// fwd (forward, no bias), bwd (grad input + grad weight + grad bias) or all (both, separately).
    #[arg(long, default_value = "fwd", value_parser = ["fwd", "bwd", "all"])]
    pub direction: String,
    /// Only these cases (comma-separated names).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub cases: Vec<String>,
    /// auto (the backend chooses per shape), all (each algorithm in turn) or one algorithm's name.
    #[arg(long, default_value = "auto")]
    pub algorithm: AlgorithmSelection,
    /// Exactly N timed calls per record (after one untimed call).
    #[arg(long, value_name = "N", conflicts_with = "min_time", value_parser = clap::value_parser!(u32).range(1..))]
    pub reps: Option<u32>,
    /// Time each record for about this long, in samples of back-to-back calls [default: 0.5].
    #[arg(long, value_name = "SECS")]
    pub min_time: Option<f64>,
    /// Multiply every case's batch by K.
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_mult: u32,
    /// Also write the results here as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// Runs the benchmark; the exit status is a failure when any run failed.
pub fn run(args: &BenchArgs) -> Result<ExitCode> {
    let device = resolve_device(&args.device)?;
    let suite = match &args.suite {
        Some(path) => Suite::from_file(path)?,
        None => Suite::builtin()?,
    };
    let suite = if args.cases.is_empty() { suite } else { suite.select(&args.cases)? };
    let config = BenchConfig {
        device,
        threads: args.threads.map_or(BenchConfig::default().threads, |t| t as usize),
        dtype: args.dtype,
        directions: Direction::parse_list(&args.direction)?,
        algorithms: args.algorithm.clone(),
        timing: timing(args)?,
        batch_mult: args.batch_mult as usize,
    };
    // Bad settings are errors before the peak probe runs and the table starts.
    config.validate()?;
    bench::check_device(config.device)?;
    // Opened now, so a path that cannot be written fails before the run, not after it.
    let json = args
        .json
        .as_deref()
        .map(|path| Ok((path, File::create(path).map_err(|e| json_error(path, e))?)))
        .transpose()?;

    let peak = (config.device == Device::Cpu).then(|| {
        eprintln!("measuring the FP32 FMA peak on {} threads...", config.threads);
        PeakProbe::measure(config.threads)
    });
    let meta = Meta {
        library: "ferroconv".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        device: config.device.to_string(),
        dtype: config.dtype.to_string(),
        threads: config.threads,
        peak: peak.as_ref().map(Into::into),
        suite: args.suite.as_ref().map_or("built-in".into(), |p| p.display().to_string()),
        batch_mult: config.batch_mult,
        env: Meta::current_env(),
    };
    println!("{}", bench::table_header(&meta));
    let mut progress = Bar::new();
    let outcomes = bench::run(&config, &suite, peak.map(|p| p.gflops), &mut progress);
    progress.bar.finish_and_clear();
    let outcomes = outcomes?;

    let report = Report::new(meta, outcomes);
    if let Some((path, file)) = json {
        let mut out = BufWriter::new(file);
        serde_json::to_writer_pretty(&mut out, &report).map_err(|e| json_error(path, e))?;
        writeln!(out).and_then(|()| out.flush()).map_err(|e| json_error(path, e))?;
    }
    if !report.failed.is_empty() {
        eprintln!("{} run(s) failed", report.failed.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `auto` is the dispatcher's best device where the benchmark can run there, else the CPU.
fn resolve_device(requested: &str) -> Result<Device> {
    if requested != "auto" {
        return requested.parse();
    }
    let best = Device::best();
    match bench::check_device(best) {
        Ok(()) => Ok(best),
        Err(why) => {
            eprintln!("note: using the CPU: {why}");
            Ok(Device::Cpu)
        }
    }
}

fn timing(args: &BenchArgs) -> Result<bench::Timing> {
    let repetitions = match (args.reps, args.min_time) {
        (Some(n), _) => bench::Repetitions::Fixed(n as usize),
        (None, Some(secs)) => {
            bench::Repetitions::MinTime(Duration::try_from_secs_f64(secs).ok().filter(|d| !d.is_zero()).ok_or_else(
                || Error::InvalidArgument { what: "min-time", detail: format!("{secs} is not a positive time") },
            )?)
        }
        (None, None) => bench::Timing::default().repetitions,
    };
    Ok(bench::Timing { repetitions, ..bench::Timing::default() })
}

fn json_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument { what: "json", detail: format!("cannot write {}: {e}", path.display()) }
}

/// A progress bar on stderr; table rows go to stdout above it as runs finish.
///
/// The bar redraws only when a run starts or ends (no ticker thread), so it
/// never competes with the timed code for a core.
struct Bar {
    bar: ProgressBar,
}

impl Bar {
    fn new() -> Bar {
        let bar = ProgressBar::new(0);
        if let Ok(style) = ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len} {msg}") {
            bar.set_style(style);
        }
        Bar { bar }
    }
}

impl bench::Progress for Bar {
    fn start(&mut self, runs: usize) {
        self.bar.set_length(runs as u64);
    }

    fn running(&mut self, name: &str, direction: &str, algorithm: &str) {
        self.bar.set_message(format!("{name} {direction} {algorithm}"));
    }

    fn done(&mut self, outcome: &Outcome) {
        self.bar.suspend(|| println!("{}", bench::table_row(outcome)));
        self.bar.inc(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn parse(args: &[&str]) -> std::result::Result<BenchArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn arguments_parse_and_bad_ones_are_refused() {
        let args = parse(&["--cases", "a,b", "--dtype", "bf16", "--algorithm", "all", "--threads", "3"]).unwrap();
        assert_eq!(args.cases, ["a", "b"]);
        assert_eq!((args.dtype, &args.algorithm, args.threads), (DType::BF16, &AlgorithmSelection::All, Some(3)));
        assert_eq!(timing(&args).unwrap().repetitions, bench::Timing::default().repetitions);
        let fixed = parse(&["--reps", "4"]).unwrap();
        assert_eq!(timing(&fixed).unwrap().repetitions, bench::Repetitions::Fixed(4));
        let min_time = parse(&["--min-time", "0.25"]).unwrap();
        assert_eq!(timing(&min_time).unwrap().repetitions, bench::Repetitions::MinTime(Duration::from_millis(250)));
        assert!(timing(&parse(&["--min-time", "0"]).unwrap()).is_err());
        assert!(timing(&parse(&["--min-time=-1"]).unwrap()).is_err());
        for bad in
            [&["--reps", "2", "--min-time", "1"][..], &["--threads", "0"], &["--direction", "up"], &["--dtype", "f8"]]
        {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_run_writes_one_json_record_per_case_and_direction() {
        let dir = std::env::temp_dir().join(format!("ferroconv-cli-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (suite, json) = (dir.join("suite.json"), dir.join("out.json"));
        std::fs::write(
            &suite,
            r#"{"cases": [{"name": "tiny", "op": "conv_transpose", "x": [1, 2, 4], "w": [2, 3, 3],
                "stride": [2], "padding": [1], "dilation": [1], "groups": 1}]}"#,
        )
        .unwrap();
        let to_str = |p: &Path| p.to_str().unwrap().to_string();
        let args = parse(&[
            "--device",
            "cpu",
            "--suite",
            &to_str(&suite),
            "--direction",
            "all",
            "--reps",
            "2",
            "--threads",
            "1",
            "--json",
            &to_str(&json),
        ])
        .unwrap();
        assert_eq!(run(&args).unwrap(), ExitCode::SUCCESS);
        let report: Report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let rows: Vec<(&str, &str, usize)> =
            report.results.iter().map(|r| (r.name.as_str(), r.direction.as_str(), r.reps)).collect();
        assert_eq!(rows, [("tiny", "fwd", 2), ("tiny", "bwd", 2)]);
        assert_eq!((report.meta.threads, report.meta.device.as_str()), (1, "cpu"));
        assert!(report.meta.peak.is_some() && report.failed.is_empty());
    }
}
