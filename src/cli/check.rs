//! `ferroconv check`: runs PyTorch fixture files and compares the results.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use ferroconv::fixture::{Summary, fixture_files, run_file};

use super::{DeviceArg, Outcome};

#[derive(clap::Args)]
pub struct Args {
    /// Where to run: auto, cpu, cuda, cuda:N or emu.
    #[arg(long, default_value = "auto")]
    device: DeviceArg,
    /// Fixture files, or folders of them (their *.json files, sorted by name).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

/// Prints one line per case and then `N passed, M failed`; exit status 1 when any case fails.
pub fn run(args: &Args) -> Outcome {
    let device = args.device.resolve()?;
    let mut files = Vec::new();
    for path in &args.paths {
        files.extend(fixture_files(path)?);
    }
    if files.is_empty() {
        return Err(format!("no fixture files (*.json) in {:?}", args.paths).into());
    }
    eprintln!("checking {} fixture files on {device}", files.len());
    let mut summary = Summary::default();
    let mut out = std::io::stdout().lock();
    for file in &files {
        let report = run_file(file, device);
        summary.add(&report);
        writeln!(out, "{report}")?;
    }
    writeln!(out, "{summary}")?;
    Ok(if summary.failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
