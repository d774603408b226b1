//! What a benchmark run produces: one [`Record`] per case, direction and
//! algorithm, the [`Report`] written by `--json`, the [`Progress`] observer,
//! and the text table.
//!
//! Field names follow `../shared/bench/torch_suite.py` where the two mean the
//! same (`name`, `threads`, `op`, `flops`, `out_shape`, `median_ms`, `min_ms`,
//! `p25_ms`, `p75_ms`, `reps`, `inner`), so a script can join the two files on
//! `name` and `threads`.

use serde::{Deserialize, Serialize};

/// The measurement of one case in one direction with one algorithm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The case's name in the suite.
    pub name: String,
    /// `"conv"` or `"conv_transpose"`.
    pub op: String,
    /// Where it ran: `"cpu"`, `"cuda:0"`.
    pub device: String,
    /// `"f32"`, `"f64"`, `"f16"` or `"bf16"`.
    pub dtype: String,
    /// `"fwd"` or `"bwd"` (grad input + grad weight + grad bias).
    pub direction: String,
    /// The algorithm's name (`"auto"` when the backend chose).
    pub algorithm: String,
    /// The algorithms that ran, per primitive (`"winograd"`, or
    /// `"simd_direct+implicit_gemm"` for a backward pass whose two primitives differ).
    pub ran: String,
    /// Threads the CPU backend ran on.
    pub threads: usize,
    /// The batch size, after `--batch-mult`.
    pub batch: usize,
    /// The op's output shape.
    pub out_shape: Vec<usize>,
    /// FLOPs of one call in this direction.
    pub flops: u64,
    /// Median time of one call.
    pub median_ms: f64,
    /// Fastest sample.
    pub min_ms: f64,
    /// First quartile of the samples.
    pub p25_ms: f64,
    /// Third quartile of the samples.
    pub p75_ms: f64,
    /// Number of samples.
    pub reps: usize,
    /// Calls per sample.
    pub inner: usize,
    /// `flops / median`, in GFLOP/s.
    pub gflops: f64,
    /// The FP32 peak the percentage is of (`None` where no probe ran).
    pub peak_gflops: Option<f64>,
    /// `100 · gflops / peak_gflops`.
    pub percent_of_peak: Option<f64>,
    /// Memory the op allocates beyond its operands.
    pub workspace_bytes: u64,
}

/// A run that did not produce a measurement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The case's name.
    pub name: String,
    /// `"fwd"` or `"bwd"`.
    pub direction: String,
    /// The algorithm's name.
    pub algorithm: String,
    /// The error.
    pub reason: String,
}

/// The end of one run.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // one per case and algorithm of a run: boxing would buy nothing
pub enum Outcome {
    /// It ran and was timed.
    Measured(Record),
    /// It returned an error (an algorithm that does not support the shape, a device error).
    Failed(Failure),
}

/// The peak probe's result as written to the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeakInfo {
    /// FP32 GFLOP/s.
    pub gflops: f64,
    /// `"avx512"`, `"avx2+fma"` or `"portable"`.
    pub isa: String,
    /// Threads that ran at once.
    pub threads: usize,
}

impl From<&crate::bench::PeakProbe> for PeakInfo {
    fn from(p: &crate::bench::PeakProbe) -> Self {
        PeakInfo { gflops: p.gflops, isa: p.isa.name().to_string(), threads: p.threads }
    }
}

/// How the run was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// `"ferroconv"`.
    pub library: String,
    /// The crate's version.
    pub version: String,
    /// The device's name.
    pub device: String,
    /// The element type.
    pub dtype: String,
    /// CPU threads.
    pub threads: usize,
    /// The FP32 peak probe, where one ran.
    pub peak: Option<PeakInfo>,
    /// `"built-in"` or the suite file's path.
    pub suite: String,
    /// The batch multiplier.
    pub batch_mult: usize,
    /// The allocator settings that change timings (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`).
    pub env: std::collections::BTreeMap<String, Option<String>>,
}

impl Meta {
    /// The environment variables recorded in [`Meta::env`], as they are now.
    pub fn current_env() -> std::collections::BTreeMap<String, Option<String>> {
        ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "RAYON_NUM_THREADS", "FERROCONV_DEVICE"]
            .into_iter()
            .map(|k| (k.to_string(), std::env::var(k).ok()))
            .collect()
    }
}

/// The `--json` file: `{"meta": ..., "results": [...], "failed": [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// How the run was made.
    pub meta: Meta,
    /// One record per case, direction and algorithm, in run order.
    pub results: Vec<Record>,
    /// The runs that failed.
    pub failed: Vec<Failure>,
}

impl Report {
    /// The report of `outcomes`, measured and failed runs apart, each in run order.
    pub fn new(meta: Meta, outcomes: Vec<Outcome>) -> Report {
        let (mut results, mut failed) = (vec![], vec![]);
        for outcome in outcomes {
            match outcome {
                Outcome::Measured(r) => results.push(r),
                Outcome::Failed(f) => failed.push(f),
            }
        }
        Report { meta, results, failed }
    }
}

/// Follows a run as it goes (a progress bar, a streamed table).
pub trait Progress {
    /// Before the first run: how many runs there will be.
    fn start(&mut self, runs: usize);
    /// A run begins.
    fn running(&mut self, name: &str, direction: &str, algorithm: &str);
    /// A run ended.
    fn done(&mut self, outcome: &Outcome);
}

/// A [`Progress`] that shows nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Quiet;

impl Progress for Quiet {
    fn start(&mut self, _: usize) {}
    fn running(&mut self, _: &str, _: &str, _: &str) {}
    fn done(&mut self, _: &Outcome) {}
}

/// The text table: [`table_header`] once, then a [`table_row`] per outcome.
///
/// ```text
/// case             dir  algorithm                   median ms    GFLOP/s  % peak  workspace
/// r50_3x3_64       fwd  auto: winograd                  3.106        298    85.1  800.0 KiB
/// ```
///
/// The algorithm column names the one asked for, then the one that ran where they differ.
pub fn table_header(meta: &Meta) -> String {
    let peak = match &meta.peak {
        Some(p) => format!("FP32 peak {:.1} GFLOP/s ({} FMA probe, {} threads)", p.gflops, p.isa, p.threads),
        None => "no peak probe".to_string(),
    };
    format!(
        "# ferroconv {} bench: {}, {} threads, {}, suite {}, batch x{}\n# {peak}\n{:<16} {:<4} {:<24} {:>12} {:>10} {:>7} {:>10}",
        meta.version,
        meta.device,
        meta.threads,
        meta.dtype,
        meta.suite,
        meta.batch_mult,
        "case",
        "dir",
        "algorithm",
        "median ms",
        "GFLOP/s",
        "% peak",
        "workspace",
    )
}

/// One line of the table.
pub fn table_row(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Measured(r) => format!(
            "{:<16} {:<4} {:<24} {:>12.3} {:>10} {:>7} {:>10}",
            r.name,
            r.direction,
            match r.ran == r.algorithm {
                true => r.algorithm.clone(),
                false => format!("{}: {}", r.algorithm, r.ran),
            },
            r.median_ms,
            three_digits(r.gflops),
            r.percent_of_peak.map_or("-".to_string(), three_digits),
            human_bytes(r.workspace_bytes),
        ),
        Outcome::Failed(f) => format!("{:<16} {:<4} {:<24} failed: {}", f.name, f.direction, f.algorithm, f.reason),
    }
}

/// About three significant digits: `297.8` → `"298"`, `34.94` → `"34.9"`, `0.123` → `"0.12"`.
fn three_digits(v: f64) -> String {
    match v.abs() {
        a if a >= 99.95 => format!("{v:.0}"),
        a if a >= 9.995 => format!("{v:.1}"),
        _ => format!("{v:.2}"),
    }
}

/// `1536` → `"1.5 KiB"`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_record() -> Record {
        Record {
            name: "r50_3x3_64".into(),
            op: "conv".into(),
            device: "cpu".into(),
            dtype: "f32".into(),
            direction: "fwd".into(),
            algorithm: "auto".into(),
            ran: "winograd".into(),
            threads: 2,
            batch: 4,
            out_shape: vec![4, 64, 56, 56],
            flops: 924_844_032,
            median_ms: 3.106,
            min_ms: 3.0,
            p25_ms: 3.05,
            p75_ms: 3.2,
            reps: 50,
            inner: 3,
            gflops: 297.8,
            peak_gflops: Some(350.0),
            percent_of_peak: Some(85.1),
            workspace_bytes: 1536,
        }
    }

    #[test]
    fn record_json_has_the_documented_fields() {
        let json = serde_json::to_value(sample_record()).unwrap();
        let mut keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut expected = vec![
            "name",
            "op",
            "device",
            "dtype",
            "direction",
            "algorithm",
            "ran",
            "threads",
            "batch",
            "out_shape",
            "flops",
            "median_ms",
            "min_ms",
            "p25_ms",
            "p75_ms",
            "reps",
            "inner",
            "gflops",
            "peak_gflops",
            "percent_of_peak",
            "workspace_bytes",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(json["median_ms"], 3.106);
        assert_eq!(json["out_shape"], serde_json::json!([4, 64, 56, 56]));
        let mut no_peak = sample_record();
        no_peak.peak_gflops = None;
        assert!(serde_json::to_value(no_peak).unwrap()["peak_gflops"].is_null());
    }

    #[test]
    fn report_round_trips_through_json() {
        let failure =
            Failure { name: "x".into(), direction: "bwd".into(), algorithm: "direct".into(), reason: "nope".into() };
        let outcomes = vec![Outcome::Failed(failure.clone()), Outcome::Measured(sample_record())];
        let report = Report::new(
            Meta {
                library: "ferroconv".into(),
                version: "0.1.0".into(),
                device: "cpu".into(),
                dtype: "f32".into(),
                threads: 2,
                peak: Some(PeakInfo { gflops: 350.0, isa: "avx512".into(), threads: 2 }),
                suite: "built-in".into(),
                batch_mult: 1,
                env: Meta::current_env(),
            },
            outcomes,
        );
        assert_eq!((report.results.clone(), report.failed.clone()), (vec![sample_record()], vec![failure]));
        let text = serde_json::to_string(&report).unwrap();
        assert_eq!(serde_json::from_str::<Report>(&text).unwrap(), report);
        assert!(text.starts_with(r#"{"meta":{"library":"ferroconv""#));
    }

    #[test]
    fn table_rows_line_up_with_the_header() {
        let row = table_row(&Outcome::Measured(sample_record()));
        assert_eq!(row, "r50_3x3_64       fwd  auto: winograd                  3.106        298    85.1    1.5 KiB");
        let forced = Record { algorithm: "winograd".into(), ..sample_record() };
        assert!(table_row(&Outcome::Measured(forced)).starts_with("r50_3x3_64       fwd  winograd    "));
        let meta_free_header = table_header(&Meta {
            library: "ferroconv".into(),
            version: "0.1.0".into(),
            device: "cpu".into(),
            dtype: "f32".into(),
            threads: 2,
            peak: None,
            suite: "built-in".into(),
            batch_mult: 1,
            env: Default::default(),
        });
        let columns = meta_free_header.lines().last().unwrap();
        assert_eq!(columns.len(), row.len());
        assert!(meta_free_header.contains("no peak probe"));
    }

    #[test]
    fn bytes_are_human_readable() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
        assert_eq!([three_digits(297.8), three_digits(34.94), three_digits(0.123)], ["298", "34.9", "0.12"]);
    }
}
