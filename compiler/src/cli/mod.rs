//! The subcommands of `netc`, one module each, and what they share:
//! - [`options`]: the model selection (`FILE --model --set`) and compile
//!   flags (`--threads --gemm --no-fuse --layout`) of several subcommands;
//! - [`check`]: `netc check`, summaries, parameter lists, weight checks;
//! - [`compile`]: `netc compile --emit`, what a compile stage produced;
//! - [`run`]: `netc run`, a model on inputs from files;
//! - [`rank`]: `netc run --queries --docs`, document ranking;
//! - [`text_data`]: `netc train --data X.tsv`, text training data;
//! - [`bench`]: `netc bench`, latency at given batch sizes;
//! - [`time`]: `netc time`, forward time per layer.

pub mod bench;
mod bench_voxel;
pub mod check;
pub mod compile;
pub mod options;
pub mod rank;
pub mod run;
pub mod text_data;
pub mod time;
pub mod train;

use netc::diag::render_all;
use netc::session::RunError;
use netc::source::SourceMap;
use std::fmt::Display;
use std::process::ExitCode;

/// Why a subcommand failed; [`Failure::report`] prints it and gives the
/// exit code.
pub enum Failure {
    /// The command line is wrong (exit code 2).
    Usage(String),
    /// The command failed (exit code 1); printed after `error: `.
    Error(String),
    /// Rendered diagnostics, printed as they are (exit code 1).
    Diagnostics(String),
}

impl Failure {
    /// A failure from any error.
    pub fn error(e: impl Display) -> Failure {
        Failure::Error(e.to_string())
    }

    /// A failure from a compile or run error: an error about one op of
    /// the model (a gradient that cannot be built) rendered at its place
    /// in `sources`, the others as [`Failure::error`].
    pub fn run(e: RunError, sources: &SourceMap) -> Failure {
        match e {
            RunError::Gradient(g) => match g.diagnostic() {
                Some(d) => Failure::Diagnostics(render_all(&[d], sources)),
                None => Failure::error(g),
            },
            e => Failure::error(e),
        }
    }

    /// Prints the failure to stderr and returns the exit code.
    pub fn report(self) -> ExitCode {
        match self {
            Failure::Usage(m) => {
                eprintln!("error: {m}");
                ExitCode::from(2)
            }
            Failure::Error(m) => {
                eprintln!("error: {m}");
                ExitCode::FAILURE
            }
            Failure::Diagnostics(d) => {
                eprint!("{d}");
                ExitCode::FAILURE
            }
        }
    }
}
