//! Training on the host: the compiled training step ([`step`]), cached per
//! batch shape, driven by the [`Trainer`](trainer::Trainer).

pub mod step;
