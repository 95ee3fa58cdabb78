//! The `netc` command line: one module per subcommand under `cli/`.

mod cli;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// netc: compile neural-network model files (`.net`).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse, elaborate and shape-check a file; print a per-layer summary.
    Check(cli::check::CheckArgs),
    /// Compile a model and print what a stage produced (`--emit`).
    Compile(cli::compile::CompileArgs),
    /// Compile and run a model on inputs from files.
    Run(cli::run::RunArgs),
    /// Time a compiled model at one or more batch sizes.
    Bench(cli::bench::BenchArgs),
    /// Time the forward pass per layer, most expensive first.
    Time(cli::time::TimeArgs),
    /// Train a model's `train` section on a data file.
    Train(cli::train::TrainArgs),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Check(args) => cli::check::check(&args),
        Command::Compile(args) => cli::compile::compile(&args),
        Command::Run(args) => cli::run::run(&args),
        Command::Bench(args) => cli::bench::bench(&args),
        Command::Time(args) => cli::time::time(&args),
        Command::Train(args) => cli::train::train(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}
