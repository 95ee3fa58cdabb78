//! netc: a compiler for neural-network model files (`.net`).
//!
//! The pipeline: [`front`] parses text into an AST, [`program`] loads a file
//! and its imports, [`elab`] evaluates a model into the typed graph [`ir`],
//! and [`summary`] reports layers, parameters and FLOPs. See
//! `docs/architecture.md`.
#![deny(missing_docs)]

pub mod back;
pub mod bench;
pub mod diag;
pub mod elab;
pub mod front;
pub mod grad;
pub mod interp;
pub mod ir;
pub mod ops;
pub mod options;
pub mod passes;
pub mod program;
pub mod retrieval;
pub mod session;
pub mod source;
pub mod summary;
#[cfg(test)]
mod testing;
pub mod text_inputs;
pub mod train;
