//! `ferroconv`: device information, fixture checks, benchmarks and the article's examples.
//!
//! Each subcommand lives in its own module of `cli/`, with its arguments (`Args`)
//! and a `run(&Args) -> cli::Outcome`; adding one is a variant here and a match arm.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(name = "ferroconv", version, about = "Convolution kernels with PyTorch's exact semantics")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Version, the device ops run on (and why), CPU features and CUDA kernels.
    Info(cli::info::Args),
    /// Run PyTorch fixture files (forward and backward) and compare; exit status 1 when any fails.
    Check(cli::check::Args),
    /// The article's examples with their true shapes, on the best device.
    Demo(cli::demo::Args),
    /// Time the suite of real layer shapes per backend and algorithm: median ms, GFLOP/s, % of peak.
    Bench(cli::bench::BenchArgs),
}

fn main() -> ExitCode {
    let outcome = match Cli::parse().command {
        Command::Info(args) => cli::info::run(&args),
        Command::Check(args) => cli::check::run(&args),
        Command::Demo(args) => cli::demo::run(&args),
        Command::Bench(args) => cli::bench::run(&args).map_err(Into::into),
    };
    outcome.unwrap_or_else(|error| {
        eprintln!("ferroconv: error: {error}");
        ExitCode::from(cli::EXIT_USAGE)
    })
}
