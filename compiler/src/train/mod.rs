//! Training on the host: the compiled training step ([`step`]), cached per
//! batch shape and driven by the [`Trainer`](trainer::Trainer); the epoch
//! loop with validation, checkpoints and resumption ([`fit`]); the row
//! layout of the bag layers' weights ([`rows`]); and the
//! loss/accuracy curve picture ([`curve`]).

pub mod curve;
pub mod fit;
pub mod rows;
mod slices;
pub mod step;
pub mod trainer;
