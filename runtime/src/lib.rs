//! Runtime for netc-compiled models.
//!
//! Today it holds the element types shared by the compiler and generated
//! code, host tensors, parameter initialisation (and the counter-based weight
//! generator the PyTorch fixtures share), safetensors weight I/O, and the plan
//! executor (one arena, kernel calls split over a rayon pool); the lowering
//! that builds plans lives in the compiler's back end (see `docs/architecture.md`). It
//! never depends on the compiler, so that an ahead-of-time compiled model
//! links against the runtime alone.
#![deny(missing_docs)]

pub mod amax;
pub mod attention;
pub mod counter;
pub mod deap;
pub mod detect;
mod dtype;
pub mod fsutil;
pub mod gemm;
pub mod group_norm;
mod init;
pub mod layer_norm;
pub mod maxpool;
pub mod npy;
pub mod plan;
pub mod pointwise;
pub mod resize;
pub mod rnn;
pub mod similarity;
pub mod sparse;
mod tensor;
#[cfg(test)]
mod test_support;
pub mod text;
pub mod text_grad;
pub mod timestep;
pub mod train;
pub mod voxel;
pub mod weights;
pub mod winograd;

pub use dtype::DType;
pub use init::{Init, Initializer};
pub use tensor::{Storage, Tensor};
