//! The runtime side of training: optimizers with PyTorch's update rules
//! ([`optim`]), per-epoch learning-rate schedules ([`schedule`]),
//! checkpoints in one safetensors file ([`checkpoint`]) and seeded,
//! allocation-free batching of a data set ([`data`]; point clouds:
//! [`points`]), and the layout
//! changes around the implicit-GEMM convolutions of training plans
//! ([`layout`]). The training loop
//! itself (the compiled step, the CLI) lives in the compiler crate.

pub mod checkpoint;
pub mod data;
pub mod layout;
pub mod optim;
pub mod points;
pub mod schedule;

#[cfg(test)]
mod fixture;
