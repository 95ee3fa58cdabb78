//! Training on the host: the compiled training step ([`step`]), cached per
//! batch shape and driven by the [`Trainer`](trainer::Trainer); the epoch
//! loop with validation, checkpoints and resumption ([`fit`]); the row
//! layout of the bag layers' weights ([`rows`]); and the
//! loss/accuracy curve picture ([`curve`]); a voxel model's point-cloud
//! columns ([`points`]).

pub mod curve;
pub mod fit;
pub mod points;
pub mod rows;
mod slices;
pub mod step;
pub mod trainer;
