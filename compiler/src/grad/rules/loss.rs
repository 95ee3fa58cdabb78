//! Backward rules of the losses: one gradient op per loss, reading the
//! loss's operands and the incoming gradient `dloss`, with the forward's
//! attributes. Targets get no gradient, except `mse`'s (the negation of
//! the prediction's).

use super::{only, GradCx, GradError, Rule};
use crate::ir::{Node, Op, ValueId};
use crate::passes::rewrite::per_element;

/// The family's rules.
pub const RULES: &[(&str, Rule)] = &[
    ("cross_entropy", |cx, n, d, needs| {
        loss(cx, n, d, needs, "cross_entropy_grad")
    }),
    ("multi_margin", |cx, n, d, needs| {
        loss(cx, n, d, needs, "multi_margin_grad")
    }),
    ("bce_with_logits", |cx, n, d, needs| {
        loss(cx, n, d, needs, "bce_with_logits_grad")
    }),
    ("mse", |cx, n, d, needs| loss(cx, n, d, needs, "mse_grad")),
];

/// `<loss>_grad(prediction, target, dloss[, weight...])`.
pub(super) fn loss(
    cx: &mut GradCx,
    n: &Node,
    d: &[Option<ValueId>],
    needs: &[bool],
    name: &'static str,
) -> Result<Vec<Option<ValueId>>, GradError> {
    let dloss = only(cx, d)?;
    let pred = n.inputs[0];
    let mut inputs = vec![pred, n.inputs[1], dloss];
    inputs.extend(&n.inputs[2..]);
    let mut op = Op::new(name);
    op.attrs = n.op.attrs.clone();
    let flops = per_element(&cx.ty(pred)).scale(4);
    let dpred = cx.emit1(op, inputs, cx.ty(pred), flops);
    let mut out = vec![None; n.inputs.len()];
    out[0] = Some(dpred);
    if needs.get(1) == Some(&true) {
        if name != "mse_grad" {
            return Err(GradError {
                hint: Some(
                    "compute the target from labels and inputs only, or use `mse`, whose target gradient is defined".into(),
                ),
                ..cx.error("the gradient with respect to the target is only defined for `mse`")
            });
        }
        out[1] = Some(cx.pointwise(Op::new("neg"), vec![dpred], dpred));
    }
    Ok(out)
}
