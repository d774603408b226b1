//! `ferroconv`: device information, fixture checks and the article's examples.
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
}

fn main() -> ExitCode {
    let outcome = match Cli::parse().command {
        Command::Info(args) => cli::info::run(&args),
        Command::Check(args) => cli::check::run(&args),
        Command::Demo(args) => cli::demo::run(&args),
    };
    outcome.unwrap_or_else(|error| {
        eprintln!("ferroconv: error: {error}");
        ExitCode::from(cli::EXIT_USAGE)
    })
}
