//! Backward rules of FCOS's training tail: the detection losses
//! (`sigmoid_focal`, `iou_loss`: one gradient op each, as the other
//! losses), the box decoder (linear in the regression), `boolean_mask`
//! (each result's gradient scattered back into the rows the mask kept;
//! how many is known only at run time) and the frozen batch norm of the
//! pretrained-backbone setting (a per-channel scale).

use super::loss::loss;
use super::{GradCx, GradError, Rule};
use crate::ir::{Attr, Dim, Node, Op, ValueId};
use crate::passes::rewrite::per_element;

/// The family's rules.
pub const RULES: &[(&str, Rule)] = &[
    ("sigmoid_focal", |cx, n, d, needs| {
        loss(cx, n, d, needs, "sigmoid_focal_grad")
    }),
    ("iou_loss", |cx, n, d, needs| {
        loss(cx, n, d, needs, "iou_loss_grad")
    }),
    ("decode_boxes", decode_boxes),
    ("boolean_mask", boolean_mask),
    ("frozen_batch_norm", frozen_batch_norm),
];

type Grads = Result<Vec<Option<ValueId>>, GradError>;

/// `decode_boxes(reference, rel)`: `decode_boxes_grad(reference, dy)`
/// (with the forward's `normalize_by_size`) is the gradient with respect
/// to `rel` in the result's shape, summed back over dims `rel` was
/// broadcast along. The reference (anchors) gets none.
fn decode_boxes(cx: &mut GradCx, n: &Node, d: &[Option<ValueId>], needs: &[bool]) -> Grads {
    let dy = super::only(cx, d)?;
    if needs[0] {
        return Err(GradError {
            hint: Some("decode against anchors or points computed from constants".into()),
            ..cx.error("the gradient with respect to the reference boxes is not defined")
        });
    }
    let mut op = Op::new("decode_boxes_grad");
    op.attrs = n.op.attrs.clone();
    let flops = per_element(&cx.ty(dy));
    let full = cx.emit1(op, vec![n.inputs[0], dy], cx.ty(dy), flops);
    Ok(vec![None, Some(cx.unbroadcast(full, n.inputs[1])?)])
}

/// `boolean_mask([x...], mask)`: result `i`'s gradient `dy` (`[P, ...]`,
/// P the run-time count) becomes `boolean_mask_grad(dy, mask)` in the
/// shape of operand `i`: row `k` of `dy` lands at the `k`-th set position
/// of the mask, zeros elsewhere.
fn boolean_mask(cx: &mut GradCx, n: &Node, d: &[Option<ValueId>], needs: &[bool]) -> Grads {
    let (&mask, xs) = n.inputs.split_last().expect("a mask operand");
    let mut out = vec![None; n.inputs.len()];
    for (i, &x) in xs.iter().enumerate() {
        let Some(dy) = d[i].filter(|_| needs[i]) else {
            continue;
        };
        let ty = cx.ty(x);
        let flops = per_element(&ty);
        out[i] = Some(cx.emit1(Op::new("boolean_mask_grad"), vec![dy, mask], ty, flops));
    }
    Ok(out)
}

/// `frozen_batch_norm(x, weight, bias, mean, var)` with fixed statistics:
/// `dx = dy · weight / sqrt(var + eps)` per channel (dim 1). The affine
/// terms and statistics are buffers and get no gradient.
fn frozen_batch_norm(cx: &mut GradCx, n: &Node, d: &[Option<ValueId>], _: &[bool]) -> Grads {
    let dy = super::only(cx, d)?;
    let [x, w, _, _, var] = n.inputs[..] else {
        return Err(cx.error("expects x, weight, bias, running_mean, running_var"));
    };
    let eps = match n.op.attr("eps") {
        Some(Attr::Float(e)) => *e,
        _ => 1e-5,
    };
    let shifted = {
        let e = cx.scalar(eps);
        cx.binary("add", var, e)
    };
    let root = cx.pointwise(Op::new("sqrt"), vec![shifted], shifted);
    let scale = cx.binary("div", w, root);
    let tx = cx.ty(x);
    let mut shape = vec![Dim::known(1); tx.rank()];
    shape[1] = tx.shape[1].clone();
    let scale = cx.reshape(scale, shape);
    let dx = cx.binary("mul", dy, scale);
    Ok(vec![Some(dx), None, None, None, None])
}
