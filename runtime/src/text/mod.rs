//! Text input for the DSSM family (`models/dssm.net`): normalisation and
//! letter trigrams ([`trigrams`]), trigram and word ids from a vocabulary
//! file or a stable hash ([`vocab`]), CSR bags and word-id matrices in the
//! safetensors layout the compiled models read ([`bags`]), and TSV training
//! files with seeded in-batch negative sampling ([`tsv`]).
//!
//! The exact rules are in `docs/text.md`.

pub mod bags;
pub mod trigrams;
pub mod tsv;
pub mod vocab;

use std::path::PathBuf;

/// What can go wrong turning text into model inputs.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A line of a vocabulary or TSV file is malformed.
    #[error("{path}:{line}: {reason}")]
    Line {
        /// The file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A whole file is unusable (e.g. it holds no entries).
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A sparse-bag or word-id tensor is missing or inconsistent.
    #[error("tensor `{name}`: {reason}")]
    Tensor {
        /// The tensor's name (`q.indices`, `q.offsets`, ...).
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// Invalid arguments to a builder (sizes, ids, batch too small).
    #[error("{0}")]
    Invalid(String),
}
