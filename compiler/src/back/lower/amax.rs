//! Lowering of `amax` over one run of adjacent dims and of its gradient
//! `amax_grad` to runtime row steps (kernels in `netc_runtime::amax`): the
//! input is viewed as `[outer, len, inner]`, the reduced dims merged into
//! `len`; a row is one `outer` index. The CNN-DSSM tower's max over word
//! positions (`amax(h, dim = -2)` of `[..., words, 300]`) is this with
//! `inner = 300`.

use super::LowerCx;
use crate::back::BackError;
use crate::ir::{Attr, Node};
use netc_runtime::amax::{AmaxGrad, AmaxRows};
use netc_runtime::plan::{Rows, Step, Work};
use std::sync::Arc;

/// Elements worth giving a thread.
const GRAIN_WORK: usize = 1 << 14;

/// Lowers `amax` and `amax_grad`; `None` for other ops.
pub fn try_lower(cx: &mut LowerCx, node: &Node) -> Option<Result<(), BackError>> {
    match node.op.name {
        "amax" => Some(amax(cx, node, false)),
        "amax_grad" => Some(amax(cx, node, true)),
        _ => None,
    }
}

/// `(outer, len, inner)` of `shape` reduced over `dims`, which must be
/// adjacent.
fn geometry(node: &Node, shape: &[usize]) -> Result<(usize, usize, usize), BackError> {
    let dims: Vec<usize> = match node.op.attr("dims") {
        Some(Attr::Ints(d)) => d.iter().map(|&d| d as usize).collect(),
        _ => (0..shape.len()).collect(),
    };
    let fail = |what: &str| {
        BackError(format!(
            "`{}` at {}: {what} (dims {dims:?} of {shape:?})",
            node.op.name, node.path
        ))
    };
    let (lo, hi) = match (dims.iter().min(), dims.iter().max()) {
        (Some(&lo), Some(&hi)) => (lo, hi + 1),
        _ => return Err(fail("no dims to reduce")),
    };
    if hi > shape.len() {
        return Err(fail("a dim is out of range"));
    }
    if hi - lo != dims.len() {
        return Err(fail("only a maximum over adjacent dims is lowered"));
    }
    let len: usize = shape[lo..hi].iter().product();
    if len == 0 {
        return Err(fail("a maximum over no elements"));
    }
    Ok((
        shape[..lo].iter().product(),
        len,
        shape[hi..].iter().product(),
    ))
}

/// `amax(x)` or, when `grad`, `amax_grad(dy, x)`.
fn amax(cx: &mut LowerCx, node: &Node, grad: bool) -> Result<(), BackError> {
    let x = *node.inputs.get(usize::from(grad)).ok_or_else(|| {
        BackError(format!(
            "`{}` at {}: expects {} operands",
            node.op.name,
            node.path,
            1 + usize::from(grad)
        ))
    })?;
    let xs = cx.shape(x)?;
    let (outer, len, inner) = geometry(node, &xs)?;
    let numel = outer * len * inner;
    let (kernel, width, inputs, extents): (Arc<dyn netc_runtime::plan::RowKernel>, _, _, _) =
        if grad {
            let dy = node.inputs[0];
            (
                Arc::new(AmaxGrad { len, inner }),
                len * inner,
                vec![cx.buf(dy)?, cx.buf(x)?],
                vec![outer * inner, numel, numel],
            )
        } else {
            (
                Arc::new(AmaxRows { len, inner }),
                inner,
                vec![cx.buf(x)?],
                vec![numel, outer * inner],
            )
        };
    let output = cx.output(node.outputs[0])?;
    if outer * width == 0 {
        return Ok(());
    }
    cx.push(Step {
        work: Work::Rows(Rows {
            kernel,
            rows: outer,
            width,
            grain: (GRAIN_WORK / (len * inner).max(1)).max(1),
        }),
        inputs,
        output,
        extents,
    });
    Ok(())
}

#[cfg(test)]
mod tests;
