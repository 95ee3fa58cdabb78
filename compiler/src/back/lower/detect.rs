//! Lowering of FCOS's training tail to row steps (kernels in
//! `netc_runtime::detect::kernels`): the box coder (`decode_boxes`,
//! `encode_boxes`, `decode_boxes_grad`), `centerness`, `boolean_mask`
//! and `boolean_mask_grad`, and the per-item losses `sigmoid_focal`,
//! `iou_loss` and their gradients, plus `bce_with_logits` (and its
//! gradient) over rows a `boolean_mask` kept; and a `cast` of booleans or
//! integers to f32 (a copy: plans hold them as exact f32 values).
//!
//! A `boolean_mask` result has a run-time row count (a data-dependent
//! symbol): its buffer is planned for the bound and holds the kept rows
//! first. A loss over such rows reads the mask as an extra last input and
//! counts the set elements itself ([`count_mask`]); `boolean_mask_grad`
//! needs only the mask to scatter the rows back.

use super::{sparse, LowerCx};
use crate::back::BackError;
use crate::ir::{Attr, Node, ValueId};
use netc_runtime::detect::kernels::{
    BooleanMask, BooleanMaskGrad, BoxCoder, CastCopy, Centerness, CoderMode, PairLoss, PairOp,
    Reduction,
};
use netc_runtime::detect::IouKind;
use netc_runtime::plan::RowKernel;
use netc_runtime::DType;

/// Items worth giving a thread.
const GRAIN: usize = 4096;

/// Lowers the ops above; `None` for other ops (and for a
/// `bce_with_logits` whose rows are not a `boolean_mask`'s).
pub fn try_lower(cx: &mut LowerCx, node: &Node) -> Option<Result<(), BackError>> {
    let r = match node.op.name {
        "decode_boxes" => coder(cx, node, CoderMode::Decode),
        "encode_boxes" => coder(cx, node, CoderMode::Encode),
        "decode_boxes_grad" => coder(cx, node, CoderMode::DecodeGrad),
        "centerness" => centerness(cx, node),
        "cast" if stored_exactly(cx, node) => {
            let rows = match cx.numel(node.outputs[0]) {
                Ok(n) => n,
                Err(e) => return Some(Err(e)),
            };
            push(cx, node, CastCopy, &[node.inputs[0]], (rows, 1, GRAIN))
        }
        "boolean_mask" => boolean_mask(cx, node),
        "boolean_mask_grad" => boolean_mask_grad(cx, node),
        "sigmoid_focal" | "sigmoid_focal_grad" | "iou_loss" | "iou_loss_grad" => {
            pair_loss(cx, node)
        }
        "bce_with_logits" | "bce_with_logits_grad"
            if node.inputs.len() == 2 + usize::from(node.op.name.ends_with("_grad"))
                && count_mask(cx, node.inputs[0]).is_some() =>
        {
            pair_loss(cx, node)
        }
        _ => return None,
    };
    Some(r)
}

fn fail(node: &Node, why: String) -> BackError {
    BackError(format!("`{}` at {}: {why}", node.op.name, path_of(node)))
}

fn path_of(node: &Node) -> &str {
    if node.path.is_empty() {
        "the model"
    } else {
        &node.path
    }
}

/// Whether `node` casts booleans or integers to f32: plans store those
/// as exact f32 values already, so the cast is a copy (`num_fg`'s cast of
/// the foreground mask).
fn stored_exactly(cx: &LowerCx, node: &Node) -> bool {
    let (from, to) = (
        cx.g.ty(node.inputs[0]).dtype,
        cx.g.ty(node.outputs[0]).dtype,
    );
    to == DType::F32 && !from.is_float()
}

/// The mask of the `boolean_mask` whose run-time count is `v`'s leading
/// dim, if it is one.
fn count_mask(cx: &LowerCx, v: ValueId) -> Option<ValueId> {
    let lead = cx.g.ty(v).shape.first()?;
    if lead.terms().len() != 1 || lead.constant() != 0 {
        return None;
    }
    cx.g.nodes
        .iter()
        .filter(|n| n.op.name == "boolean_mask")
        .find(|n| cx.g.ty(n.outputs[0]).shape.first() == Some(lead))
        .and_then(|n| n.inputs.last().copied())
}

/// Pushes a row step of `node` reading `inputs` into its first result.
fn push(
    cx: &mut LowerCx,
    node: &Node,
    kernel: impl RowKernel + 'static,
    inputs: &[ValueId],
    (rows, width, grain): (usize, usize, usize),
) -> Result<(), BackError> {
    let bufs = cx.buf_list(inputs)?;
    let extents = inputs
        .iter()
        .map(|&v| cx.numel(v))
        .collect::<Result<Vec<_>, _>>()?;
    let output = cx.output(node.outputs[0])?;
    if rows * width > 0 {
        sparse::push_rows(cx, kernel, bufs, extents, output, (rows, width, grain));
    }
    Ok(())
}

/// The box coder: reference and other operand repeat over the result's
/// leading dims (right-aligned, as the interpreter broadcasts them).
fn coder(cx: &mut LowerCx, node: &Node, mode: CoderMode) -> Result<(), BackError> {
    let (r, o) = (node.inputs[0], node.inputs[1]);
    let (rs, os, ys) = (cx.shape(r)?, cx.shape(o)?, cx.shape(node.outputs[0])?);
    let suffix = |s: &[usize]| {
        let lead = &s[..s.len().saturating_sub(1)];
        let out = &ys[..ys.len() - 1];
        let lead = &lead[lead.iter().take_while(|&&d| d == 1).count()..];
        lead.len() <= out.len() && out.ends_with(lead)
    };
    let ref_width = *rs.last().unwrap_or(&0);
    if ys.last() != Some(&4)
        || os.last() != Some(&4)
        || !matches!(ref_width, 2 | 4)
        || !suffix(&rs)
        || !suffix(&os)
    {
        return Err(fail(
            node,
            format!("cannot code boxes {os:?} against {rs:?} into {ys:?}"),
        ));
    }
    let normalize = !matches!(node.op.attr("normalize_by_size"), Some(Attr::Bool(false)));
    let kernel = BoxCoder {
        mode,
        ref_width,
        normalize,
        ref_rows: rs.iter().product::<usize>() / ref_width,
        other_rows: os.iter().product::<usize>() / 4,
    };
    let rows = ys.iter().product::<usize>() / 4;
    push(cx, node, kernel, &[r, o], (rows, 4, GRAIN))
}

fn centerness(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let rows = cx.numel(node.outputs[0])?;
    push(cx, node, Centerness, &[node.inputs[0]], (rows, 1, GRAIN))
}

/// One step per result: the kept rows of its operand.
fn boolean_mask(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let (&mask, xs) = node
        .inputs
        .split_last()
        .ok_or_else(|| fail(node, "no mask".into()))?;
    let set = cx.numel(mask)?;
    for (&x, &y) in xs.iter().zip(&node.outputs) {
        let inner = cx.numel(x)? / set.max(1);
        let inputs = cx.buf_list(&[x, mask])?;
        let extents = vec![cx.numel(x)?, set];
        let output = cx.output(y)?;
        if set * inner > 0 {
            let kernel = BooleanMask { inner };
            sparse::push_rows(cx, kernel, inputs, extents, output, (1, set * inner, 1));
        }
    }
    Ok(())
}

fn boolean_mask_grad(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let [dy, mask] = node.inputs[..] else {
        return Err(fail(node, "expects (dy, mask)".into()));
    };
    let len = cx.numel(node.outputs[0])?;
    let inner = len / cx.numel(mask)?.max(1);
    push(
        cx,
        node,
        BooleanMaskGrad { inner },
        &[dy, mask],
        (1, len, 1),
    )
}

fn float(node: &Node, key: &str, default: f64) -> f64 {
    match node.op.attr(key) {
        Some(Attr::Float(f)) => *f,
        _ => default,
    }
}

/// A per-item loss or its gradient: operands `(x, target[, dloss])`,
/// plus the mask when the items are rows a `boolean_mask` kept.
fn pair_loss(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let grad = node.op.name.ends_with("_grad");
    let text = |k: &str| match node.op.attr(k) {
        Some(Attr::Str(s)) => s.clone(),
        _ => String::new(),
    };
    let op = match node.op.name.trim_end_matches("_grad") {
        "sigmoid_focal" => PairOp::Focal {
            alpha: float(node, "alpha", 0.25),
            gamma: float(node, "gamma", 2.0),
        },
        "iou_loss" => PairOp::Iou {
            kind: IouKind::parse(&text("kind"))
                .ok_or_else(|| fail(node, format!("unknown kind `{}`", text("kind"))))?,
            eps: float(node, "eps", 1e-7),
        },
        _ => PairOp::Bce,
    };
    let red = text("reduction");
    let reduction =
        Reduction::parse(&red).ok_or_else(|| fail(node, format!("unknown reduction `{red}`")))?;
    let x = node.inputs[0];
    let numel = cx.numel(x)?;
    if cx.numel(node.inputs[1])? != numel || node.inputs.len() != 2 + usize::from(grad) {
        return Err(fail(
            node,
            "expects (input, target[, dloss]) of one shape".into(),
        ));
    }
    let items = numel / op.width();
    let mask = count_mask(cx, x);
    let counted = match mask {
        Some(m) => {
            let bound = cx.shape(x)?.first().copied().unwrap_or(0).max(1);
            let set = cx.numel(m)?;
            if bound != set {
                return Err(fail(
                    node,
                    format!("{bound} rows planned for a mask of {set}"),
                ));
            }
            Some(items / bound)
        }
        None => None,
    };
    let kernel = PairLoss {
        op,
        reduction,
        grad,
        items,
        counted,
    };
    let shape = kernel.shape();
    let mut inputs = node.inputs.clone();
    inputs.extend(mask);
    push(cx, node, kernel, &inputs, (shape.0, shape.1, GRAIN))
}

#[cfg(test)]
mod tests;
