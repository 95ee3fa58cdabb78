//! Training on the host: the compiled training step ([`step`]), cached per
//! batch shape, driven by the [`Trainer`](trainer::Trainer).

mod slices;
pub mod step;
pub mod trainer;
