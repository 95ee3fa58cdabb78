//! Runtime for netc-compiled models.
//!
//! Today it holds the element types shared by the compiler and generated
//! code; the plan executor, arena and weight I/O grow here (see
//! `docs/architecture.md`). It never depends on the compiler, so that an
//! ahead-of-time compiled model links against the runtime alone.
#![deny(missing_docs)]

mod dtype;

pub use dtype::DType;
