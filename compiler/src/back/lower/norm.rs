//! Lowering of inference batch norms (`batch_norm` with running
//! statistics, `frozen_batch_norm`).
//!
//! The per-channel `scale = γ / sqrt(var + eps)` and
//! `shift = β − mean · scale` depend on parameters only, so two small
//! elementwise kernels compute them into the persistent region as
//! **prepare steps** (run once per weight change; [`persistent_len`] sizes
//! that region before lowering). The run step is one rows-domain kernel
//! `y = x · scale[c] + shift[c]` followed by the nodes fused into the norm
//! (the ReLU after each DenseNet norm), computed in registers:
//!
//! - channels first `[N, C, ...]`: rows of the spatial size, `PerChannel`
//!   operands;
//! - channels last (`layout = "nhwc"`, `[N, H, W, C]`) and `[N, C]`: rows
//!   of `C`, `PerColumn` operands.

use super::{align, pointwise, LowerCx};
use crate::back::elementwise::{Bcast, Binary, Chain, Domain, Operand, Step, Unary};
use crate::back::BackError;
use crate::ir::{Attr, Node, ValueId};
use netc_runtime::plan::Buf;

/// Lowers `batch_norm` and `frozen_batch_norm`; `None` for other ops.
pub fn try_lower(cx: &mut LowerCx, node: &Node) -> Option<Result<(), BackError>> {
    is_norm(node).then(|| batch_norm(cx, node))
}

fn is_norm(node: &Node) -> bool {
    matches!(node.op.name, "batch_norm" | "frozen_batch_norm")
}

/// The operands of a batch norm.
struct Operands {
    x: ValueId,
    weight: Option<ValueId>,
    bias: Option<ValueId>,
    mean: ValueId,
    var: ValueId,
}

fn operands(node: &Node) -> Result<Operands, BackError> {
    let affine = node.op.name == "frozen_batch_norm"
        || !matches!(node.op.attr("affine"), Some(Attr::Bool(false)));
    let bad = || {
        BackError(format!(
            "`{}` at {} has {} operands",
            node.op.name,
            node.path,
            node.inputs.len()
        ))
    };
    let at = |i: usize| node.inputs.get(i).copied().ok_or_else(bad);
    Ok(if affine {
        Operands {
            x: at(0)?,
            weight: Some(at(1)?),
            bias: Some(at(2)?),
            mean: at(3)?,
            var: at(4)?,
        }
    } else {
        Operands {
            x: at(0)?,
            weight: None,
            bias: None,
            mean: at(1)?,
            var: at(2)?,
        }
    })
}

/// Whether a node's data is channels-last (`layout = "nhwc"`).
pub fn channels_last(node: &Node) -> bool {
    matches!(node.op.attr("layout"), Some(Attr::Str(l)) if l == "nhwc")
}

/// Elements of the persistent region `node` needs beyond its graph values:
/// a batch norm's folded scale and shift.
pub fn persistent_len(cx: &LowerCx, node: &Node) -> Result<usize, BackError> {
    if !is_norm(node) {
        return Ok(0);
    }
    let c = cx.numel(operands(node)?.mean)?;
    Ok(2 * align(c))
}

fn batch_norm(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let ops = operands(node)?;
    let shape = cx.shape(ops.x)?;
    let c = cx.numel(ops.mean)?;
    let last = channels_last(node) || shape.len() == 2;
    let channel_dim = if last { shape.len() - 1 } else { 1 };
    if shape.get(channel_dim) != Some(&c) {
        return Err(BackError(format!(
            "`{}` at {}: input {shape:?} does not have {c} channels in dim {channel_dim}",
            node.op.name, node.path
        )));
    }
    let eps = match node.op.attr("eps") {
        Some(Attr::Float(e)) => *e as f32,
        _ => 1e-5,
    };
    let (scale, shift) = (cx.persistent(c), cx.persistent(c));
    cx.preparing(|cx| fold(cx, &ops, eps, scale, shift, c))?;

    let numel: usize = shape.iter().product();
    if numel == 0 {
        return Ok(());
    }
    let (domain, per) = if last {
        (
            Domain::Rows {
                channels: 1,
                inner: c as u64,
            },
            Bcast::PerColumn,
        )
    } else {
        (
            Domain::Rows {
                channels: c as u64,
                inner: (numel / shape[0] / c) as u64,
            },
            Bcast::PerChannel,
        )
    };
    let mut chain = Chain {
        inputs: vec![Bcast::Full, per, per],
        domain,
        steps: vec![
            Step::Binary {
                op: Binary::Mul,
                rhs: Operand::Input(1),
                swap: false,
            },
            Step::Binary {
                op: Binary::Add,
                rhs: Operand::Input(2),
                swap: false,
            },
        ],
    };
    let followers = cx.followers(node);
    let mut values = Vec::new();
    let d = pointwise::extend(
        cx.g,
        node,
        &followers,
        Some(domain),
        &mut chain,
        &mut values,
    )?;
    chain.domain = d.unwrap_or(domain);
    let result = followers.last().map_or(node.outputs[0], |f| f.outputs[0]);
    let out = cx.output(result)?;
    let mut inputs = vec![cx.buf(ops.x)?, scale, shift];
    for v in values {
        inputs.push(cx.buf(v)?);
    }
    cx.kernel(&chain, inputs, out, numel)
}

/// The prepare kernels: `scale = γ / sqrt(var + eps)` (or `1 / ...`
/// without affine terms), then `shift = β − mean · scale` (or
/// `−mean · scale`).
fn fold(
    cx: &mut LowerCx,
    ops: &Operands,
    eps: f32,
    scale: Buf,
    shift: Buf,
    c: usize,
) -> Result<(), BackError> {
    let bin = |op, rhs, swap| Step::Binary { op, rhs, swap };
    let mut chain = Chain {
        inputs: vec![Bcast::Full],
        domain: Domain::Flat,
        steps: vec![
            bin(Binary::Add, Operand::Const(eps), false),
            Step::Unary(Unary::Sqrt),
        ],
    };
    let mut inputs = vec![cx.buf(ops.var)?];
    match ops.weight {
        Some(w) => {
            chain.inputs.push(Bcast::Full);
            chain.steps.push(bin(Binary::Div, Operand::Input(1), true));
            inputs.push(cx.buf(w)?);
        }
        None => chain
            .steps
            .push(bin(Binary::Div, Operand::Const(1.0), true)),
    }
    cx.kernel(&chain, inputs, scale, c)?;
    let mut chain = Chain {
        inputs: vec![Bcast::Full, Bcast::Full],
        domain: Domain::Flat,
        steps: vec![bin(Binary::Mul, Operand::Input(1), false)],
    };
    let mut inputs = vec![cx.buf(ops.mean)?, scale];
    match ops.bias {
        Some(b) => {
            chain.inputs.push(Bcast::Full);
            chain.steps.push(bin(Binary::Sub, Operand::Input(2), true));
            inputs.push(cx.buf(b)?);
        }
        None => chain.steps.push(Step::Unary(Unary::Neg)),
    }
    cx.kernel(&chain, inputs, shift, c)
}

#[cfg(test)]
mod tests;
