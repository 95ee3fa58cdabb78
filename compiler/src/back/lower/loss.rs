//! Lowering of the losses `cross_entropy`, `multi_margin`,
//! `bce_with_logits`, `mse` and their gradients `*_grad` (with respect to
//! the first operand) to one [`LossKernel`] call each.
//!
//! Operands: `(x, target[, weight])` for a loss, `(x, target, dloss[,
//! weight])` for a gradient; `weight` is the `[C]` class weights of
//! `cross_entropy` / `multi_margin` or the `pos_weight` of
//! `bce_with_logits`, which may broadcast like a bias (a scalar, or one
//! contiguous run of the input's dims, e.g. `[C]` over `[N, C]`).
//! Class-index targets are f32 buffers holding the integers; their shape
//! follows from the input's.

use super::{data::call, LowerCx};
use crate::back::loss::{LossKernel, LossKind, Reduction};
use crate::back::BackError;
use crate::ir::{Attr, Node};

/// Lowers the losses and their gradients; `None` for other ops.
pub fn try_lower(cx: &mut LowerCx, node: &Node) -> Option<Result<(), BackError>> {
    let name = node.op.name;
    let (loss, grad) = match name.strip_suffix("_grad") {
        Some(base) => (base, true),
        None => (name, false),
    };
    if !matches!(
        loss,
        "cross_entropy" | "multi_margin" | "bce_with_logits" | "mse"
    ) {
        return None;
    }
    Some(lower_loss(cx, node, loss, grad))
}

fn float(node: &Node, key: &str, default: f64) -> f64 {
    match node.op.attr(key) {
        Some(Attr::Float(f)) => *f,
        Some(Attr::Int(i)) => *i as f64,
        _ => default,
    }
}

fn int(node: &Node, key: &str, default: i64) -> i64 {
    match node.op.attr(key) {
        Some(Attr::Int(i)) => *i,
        _ => default,
    }
}

fn lower_loss(cx: &mut LowerCx, node: &Node, loss: &str, grad: bool) -> Result<(), BackError> {
    let x = node.inputs[0];
    let xs = cx.shape(x)?;
    let bad = |why: String| {
        BackError(format!(
            "`{}` at {}: {why} (input {xs:?})",
            node.op.name,
            if node.path.is_empty() {
                "the model"
            } else {
                &node.path
            }
        ))
    };
    let fixed = 2 + usize::from(grad);
    if node.inputs.len() < fixed || node.inputs.len() > fixed + 1 {
        return Err(bad(format!("{} operands", node.inputs.len())));
    }
    let extra = node.inputs.get(fixed).copied();
    let red_name = match node.op.attr("reduction") {
        Some(Attr::Str(s)) => s.as_str(),
        _ => "mean",
    };
    let reduction =
        Reduction::parse(red_name).ok_or_else(|| bad(format!("unknown reduction `{red_name}`")))?;
    let numel: usize = xs.iter().product();
    let classes = || {
        xs.get(1)
            .copied()
            .filter(|_| xs.len() >= 2)
            .ok_or_else(|| bad("expects [N, C, ...]".into()))
    };
    let extra_len = match extra {
        Some(v) => Some(cx.numel(v)?),
        None => None,
    };
    let check_weights = |c: usize| match extra_len {
        Some(n) if n != c => Err(bad(format!("{n} class weights for {c} classes"))),
        _ => Ok(()),
    };
    let (kind, rows) = match loss {
        "cross_entropy" => {
            let c = classes()?;
            check_weights(c)?;
            let inner: usize = xs[2..].iter().product();
            (
                LossKind::CrossEntropy {
                    classes: c as u64,
                    inner: inner as u64,
                    smoothing: float(node, "label_smoothing", 0.0) as f32,
                    ignore: int(node, "ignore_index", -100) as f32,
                    weighted: extra.is_some(),
                },
                xs[0] * inner,
            )
        }
        "multi_margin" => {
            let c = classes()?;
            if xs.len() != 2 {
                return Err(bad("expects scores [N, C]".into()));
            }
            check_weights(c)?;
            let p = int(node, "p", 1);
            if p != 1 && p != 2 {
                return Err(bad(format!("p = {p}, expected 1 or 2")));
            }
            (
                LossKind::MultiMargin {
                    classes: c as u64,
                    p: p as u8,
                    margin: float(node, "margin", 1.0) as f32,
                    weighted: extra.is_some(),
                },
                xs[0],
            )
        }
        "bce_with_logits" => {
            let pos_weight = match extra {
                Some(v) => Some(broadcast_period(&cx.shape(v)?, &xs).ok_or_else(|| {
                    bad("pos_weight does not broadcast as a contiguous run".into())
                })?),
                None => None,
            };
            (LossKind::Bce { pos_weight }, numel)
        }
        _ => (LossKind::Mse, numel),
    };
    let kernel = LossKernel {
        kind,
        reduction,
        grad,
        rows: rows as u64,
    };
    kernel.validate().map_err(|e| bad(e.0))?;
    let per_row = if reduction == Reduction::None {
        rows
    } else {
        1
    };
    let mut inputs = vec![cx.buf(x)?, cx.buf(node.inputs[1])?];
    let target_len = if matches!(kind, LossKind::Bce { .. } | LossKind::Mse) {
        numel
    } else {
        rows
    };
    let mut extents = vec![numel, target_len];
    if grad {
        let d = node.inputs[2];
        let n = cx.numel(d)?;
        if n != per_row {
            return Err(bad(format!(
                "dloss has {n} elements, the `{red_name}` loss has {per_row}"
            )));
        }
        inputs.push(cx.buf(d)?);
        extents.push(n);
    }
    if let (Some(v), Some(n)) = (extra, extra_len) {
        inputs.push(cx.buf(v)?);
        extents.push(n);
    }
    if inputs.len() != kernel.inputs() {
        return Err(bad(format!(
            "{} operands for a kernel reading {}",
            inputs.len(),
            kernel.inputs()
        )));
    }
    let out = cx.output(node.outputs[0])?;
    let out_len = if grad { numel } else { per_row };
    if cx.numel(node.outputs[0])? != out_len {
        return Err(bad(format!("the result does not have {out_len} elements")));
    }
    extents.push(out_len);
    let units = kernel.units() as usize;
    if units == 0 {
        return Ok(());
    }
    let id = kernel.compile(cx.jit)?;
    let grain = (1024 / kernel.row_len().max(1) as usize).max(1);
    call(cx, id, units, grain, inputs, extents, out)
}

/// How a `pos_weight` of shape `pw` broadcasts over `xs` as the kernel
/// reads it: element `i` of the input uses `pw[(i / div) % period]`.
/// `None` unless `pw`'s non-1 dims are one contiguous run equal to the
/// input's dims there (right-aligned, as numpy broadcasting).
fn broadcast_period(pw: &[usize], xs: &[usize]) -> Option<(u64, u64)> {
    if pw.len() > xs.len() {
        return None;
    }
    let pad = xs.len() - pw.len();
    let idx: Vec<usize> = (0..pw.len()).filter(|&i| pw[i] != 1).collect();
    let (Some(&first), Some(&last)) = (idx.first(), idx.last()) else {
        return Some((1, 1));
    };
    if (first..=last).any(|i| pw[i] != xs[pad + i]) {
        return None;
    }
    let period: usize = xs[pad + first..=pad + last].iter().product();
    let div: usize = xs[pad + last + 1..].iter().product();
    Some((div.max(1) as u64, period as u64))
}

#[cfg(test)]
mod tests;
