//! The `ferroconv` tool: see `ferroconv --help`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
