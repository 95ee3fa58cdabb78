//! Passes over the IR. Each pass has one job and a printed result so that
//! its effect can be inspected and tested.

pub mod fold_bn;
pub mod fuse;
pub mod layout;
pub mod memplan;
pub mod pipeline;
pub mod pool_first;
pub mod rewrite;

#[cfg(test)]
mod tests;
