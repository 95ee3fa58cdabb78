//! Passes over the IR. Each pass has one job and a printed result so that
//! its effect can be inspected and tested.

pub mod memplan;
pub mod pipeline;
