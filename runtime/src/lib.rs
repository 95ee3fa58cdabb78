//! Runtime for netc-compiled models.
//!
//! Today it holds the element types shared by the compiler and generated
//! code, host tensors, parameter initialisation and safetensors weight I/O;
//! the plan executor and arena grow here (see `docs/architecture.md`). It
//! never depends on the compiler, so that an ahead-of-time compiled model
//! links against the runtime alone.
#![deny(missing_docs)]

mod dtype;
pub mod gemm;
mod init;
mod tensor;
pub mod weights;

pub use dtype::DType;
pub use init::{Init, Initializer};
pub use tensor::{Storage, Tensor};
