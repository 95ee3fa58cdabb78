//! Training on the host: the compiled training step ([`step`]), cached per
//! batch shape and driven by the [`Trainer`](trainer::Trainer); the epoch
//! loop with validation, checkpoints and resumption ([`fit`]); and the
//! loss/accuracy curve picture ([`curve`]).

pub mod curve;
pub mod fit;
mod slices;
pub mod step;
pub mod trainer;
