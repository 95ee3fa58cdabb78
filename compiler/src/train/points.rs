//! Which data tensors of a voxel model are per-site point-cloud columns
//! (`netc_runtime::train::points`): the coordinate input a sparse conv reads,
//! the inputs sharing its run-time site count, and the grid and batch of
//! that conv.

use crate::ir::{Attr, Graph};
use crate::session::RunError;
use netc_runtime::train::points::PointSpec;

/// The point-cloud columns of `g` and the samples its sparse tensor holds
/// per batch; `None` when no sparse conv reads a model input as its
/// coordinates.
pub fn point_spec(g: &Graph) -> Option<(PointSpec, Option<i64>)> {
    let (node, coords) = g.nodes.iter().find_map(|n| {
        if !matches!(n.op.name, "subm_conv3d" | "sparse_conv3d") {
            return None;
        }
        let c = *n.inputs.get(1)?;
        g.inputs.iter().any(|(_, v)| *v == c).then_some((n, c))
    })?;
    let grid = match node.op.attr("in_shape") {
        Some(Attr::Ints(v)) if v.len() == 3 => [v[0], v[1], v[2]],
        _ => return None,
    };
    let batch = match node.op.attr("batch") {
        Some(Attr::Dims(d)) if d.len() == 1 => d[0].as_known(),
        _ => None,
    };
    let sites = g.ty(coords).shape.first()?.clone();
    let name = |v| {
        g.inputs
            .iter()
            .find(|(_, w)| *w == v)
            .map(|(n, _)| n.clone())
    };
    let features = g
        .inputs
        .iter()
        .filter(|(_, v)| *v != coords && g.ty(*v).shape.first() == Some(&sites))
        .map(|(n, v)| {
            let width = g.ty(*v).shape[1..]
                .iter()
                .map(|d| d.as_known().unwrap_or(0).max(0) as usize)
                .product();
            (n.clone(), width)
        })
        .collect();
    let spec = PointSpec {
        coords: name(coords)?,
        grid,
        features,
    };
    Some((spec, batch))
}

/// Refuses a step batch other than the samples the model's sparse tensor
/// holds (its pooled outputs and labels are `[batch, ...]`).
pub fn check_batch(model_batch: Option<i64>, batch: usize) -> Result<(), RunError> {
    match model_batch {
        Some(n) if n == batch as i64 => Ok(()),
        Some(n) => Err(RunError::Inputs(format!(
            "the model's sparse tensor holds {n} point clouds per batch but the step takes {batch}: make them equal (e.g. `--set batch={batch}`)"
        ))),
        None => Err(RunError::Inputs(
            "the model's sparse tensor has no known batch size; training on point clouds needs one".into(),
        )),
    }
}
