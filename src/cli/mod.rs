//! The `ferroconv` command line.

pub mod bench;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Convolution kernels with PyTorch's exact semantics, on the CPU and CUDA.
#[derive(Debug, Parser)]
#[command(name = "ferroconv", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Bench(bench::BenchArgs),
}

/// Parses the command line, runs the command, and turns an error into a message and exit status 2.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Bench(args) => bench::run(args),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}
