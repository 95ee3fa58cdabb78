//! Lowering of `layer_norm` (the UNet's transformer blocks) to a row step
//! (kernel [`netc_runtime::layer_norm::LayerNorm`]): a row is the trailing
//! `shape` elements normalised together.

use super::LowerCx;
use crate::back::BackError;
use crate::ir::{Attr, Node};
use netc_runtime::layer_norm::LayerNorm;
use netc_runtime::plan::{Rows, Step, Work};
use std::sync::Arc;

/// Elements worth giving a thread.
const GRAIN_ELEMS: usize = 1 << 14;

/// Lowers `layer_norm`; `None` for other ops.
pub fn try_lower(cx: &mut LowerCx, node: &Node) -> Option<Result<(), BackError>> {
    (node.op.name == "layer_norm").then(|| layer_norm(cx, node))
}

fn layer_norm(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let x = node.inputs[0];
    let numel = cx.numel(x)?;
    let width = match node.op.attr("shape") {
        Some(Attr::Ints(s)) => s.iter().map(|&d| d.max(0) as usize).product::<usize>(),
        _ => {
            return Err(BackError(format!(
                "`layer_norm` at {}: no `shape`",
                node.path
            )))
        }
    };
    let eps = match node.op.attr("eps") {
        Some(Attr::Float(e)) => *e as f32,
        _ => 1e-5,
    };
    let affine = node.inputs.len() == 3;
    let inputs = node
        .inputs
        .iter()
        .map(|v| cx.buf(*v))
        .collect::<Result<Vec<_>, _>>()?;
    let output = cx.output(node.outputs[0])?;
    if numel == 0 || width == 0 {
        return Ok(());
    }
    let mut extents = vec![numel];
    if affine {
        extents.extend([width, width]);
    }
    extents.push(numel);
    cx.push(Step {
        work: Work::Rows(Rows {
            kernel: Arc::new(LayerNorm { width, eps, affine }),
            rows: numel / width,
            width,
            grain: (GRAIN_ELEMS / width).max(1),
        }),
        inputs,
        output,
        extents,
    });
    Ok(())
}
