//! Backward rules of the sparse 3D convolutions (`subm_conv3d`,
//! `sparse_conv3d`). Both ops read `(features, coords, weight[, bias])`;
//! the coordinates (and a strided conv's output coordinates) are integers
//! and get no gradient. The gradient ops carry the forward's attributes
//! (its `rulebook` key included, so the back end reuses the forward's rule
//! book) plus `subm`:
//! `sparse_conv3d_grad_input(dy, coords, weight)` (the rule book
//! transposed), `sparse_conv3d_grad_weight(dy, features, coords)` (outer
//! products summed over the rule book's pairs) and
//! `sparse_conv3d_grad_bias(dy, coords)` (the rows of `dy` summed).
//! `sparse_global_avg_pool` (a head's per-sample mean) has
//! `sparse_global_avg_pool_grad(dy, coords)`.

use super::{GradCx, GradError, Rule};
use crate::ir::{Attr, Node, Op, ValueId};
use crate::passes::rewrite::per_element;

/// The family's rules.
pub const RULES: &[(&str, Rule)] = &[
    ("subm_conv3d", conv),
    ("sparse_conv3d", conv),
    ("sparse_global_avg_pool", pool),
];

/// `sparse_global_avg_pool_grad(dy, coords)`: each site gets its sample's
/// row of `dy` over the sample's site count.
fn pool(
    cx: &mut GradCx,
    n: &Node,
    d: &[Option<ValueId>],
    _: &[bool],
) -> Result<Vec<Option<ValueId>>, GradError> {
    let dy = super::only(cx, d)?;
    let [feats, coords] = n.inputs[..] else {
        return Err(cx.error("expects features and coords"));
    };
    let mut op = Op::new("sparse_global_avg_pool_grad");
    op.attrs = n.op.attrs.clone();
    let ty = cx.ty(feats);
    let flops = per_element(&ty);
    Ok(vec![Some(cx.emit1(op, vec![dy, coords], ty, flops)), None])
}

fn conv(
    cx: &mut GradCx,
    n: &Node,
    d: &[Option<ValueId>],
    needs: &[bool],
) -> Result<Vec<Option<ValueId>>, GradError> {
    let Some(dy) = d.first().copied().flatten() else {
        // Only the output coordinates were read by the loss: integers.
        return Ok(vec![None; n.inputs.len()]);
    };
    let [feats, coords, w, ..] = n.inputs[..] else {
        return Err(cx.error("expects features, coords and a weight"));
    };
    let op = |name: &'static str| {
        let mut op = Op::new(name);
        op.attrs = n.op.attrs.clone();
        op.with("subm", Attr::Bool(n.op.name == "subm_conv3d"))
    };
    let mut out = vec![None; n.inputs.len()];
    if needs[0] {
        let g = op("sparse_conv3d_grad_input");
        out[0] = Some(cx.emit1(g, vec![dy, coords, w], cx.ty(feats), n.flops.clone()));
    }
    if needs[2] {
        let g = op("sparse_conv3d_grad_weight");
        out[2] = Some(cx.emit1(g, vec![dy, feats, coords], cx.ty(w), n.flops.clone()));
    }
    if let Some(&b) = n.inputs.get(3).filter(|_| needs[3]) {
        let g = op("sparse_conv3d_grad_bias");
        let flops = per_element(&cx.ty(dy));
        out[3] = Some(cx.emit1(g, vec![dy, coords], cx.ty(b), flops));
    }
    Ok(out)
}
