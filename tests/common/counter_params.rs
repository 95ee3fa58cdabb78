//! The counter-initialised parameters of a graph (seed 0), in the order of
//! `g.params`: what the PyTorch fixture scripts regenerate on their side.

use netc::ir::Graph;
use netc_runtime::{counter, Tensor};

/// One tensor per parameter of `g`, from `counter::tensor(0, path, ...)`.
pub fn counter_params(g: &Graph) -> Vec<Tensor> {
    g.params
        .iter()
        .map(|p| {
            let shape: Vec<usize> = p.ty.known_dims().unwrap();
            counter::tensor(0, &p.path, p.ty.dtype, &shape)
        })
        .collect()
}
