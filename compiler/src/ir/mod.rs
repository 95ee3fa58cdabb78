//! The graph IR: typed SSA values, nodes, parameters, and its printer.

mod dim;
mod graph;
mod print;

pub use dim::{Dim, SymId};
pub use graph::*;
pub use print::{attr_text, format_float, print_graph};
