//! Lowering of `layer_norm` (the UNet's transformer blocks) to a row step
//! (kernel [`netc_runtime::layer_norm::LayerNorm`]): a row is the trailing
//! `shape` elements normalised together. `layer_norm_grad(dy, x[,
//! weight]) -> dx[, dweight, dbias]` lowers to a row step for `dx` and,
//! when affine, one step per parameter gradient
//! ([`netc_runtime::layer_norm::grad`]).

use super::LowerCx;
use crate::back::BackError;
use crate::ir::{Attr, Node};
use netc_runtime::layer_norm::{grad, LayerNorm};
use netc_runtime::plan::{Rows, Step, Work};
use std::sync::Arc;

/// Elements worth giving a thread.
const GRAIN_ELEMS: usize = 1 << 14;

/// Lowers `layer_norm` and `layer_norm_grad`; `None` for other ops.
pub fn try_lower(cx: &mut LowerCx, node: &Node) -> Option<Result<(), BackError>> {
    match node.op.name {
        "layer_norm" => Some(layer_norm(cx, node)),
        "layer_norm_grad" => Some(backward(cx, node)),
        _ => None,
    }
}

/// The row width (the product of `shape`) and `eps` of a norm node.
fn row_and_eps(node: &Node) -> Result<(usize, f32), BackError> {
    let width = match node.op.attr("shape") {
        Some(Attr::Ints(s)) => s.iter().map(|&d| d.max(0) as usize).product::<usize>(),
        _ => {
            return Err(BackError(format!(
                "`{}` at {}: no `shape`",
                node.op.name, node.path
            )))
        }
    };
    let eps = match node.op.attr("eps") {
        Some(Attr::Float(e)) => *e as f32,
        _ => 1e-5,
    };
    Ok((width, eps))
}

fn layer_norm(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let x = node.inputs[0];
    let numel = cx.numel(x)?;
    let (width, eps) = row_and_eps(node)?;
    let affine = node.inputs.len() == 3;
    let inputs = cx.buf_list(&node.inputs)?;
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

/// `layer_norm_grad`: `dx` row by row, then `dweight` and `dbias` each
/// summed over all rows.
fn backward(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let numel = cx.numel(node.inputs[1])?;
    let (width, eps) = row_and_eps(node)?;
    let affine = node.inputs.len() == 3;
    if node.outputs.len() != 1 + 2 * usize::from(affine) {
        return Err(BackError(format!(
            "`layer_norm_grad` at {}: {} results",
            node.path,
            node.outputs.len()
        )));
    }
    let inputs = cx.buf_list(&node.inputs)?;
    let outputs = cx.output_list(&node.outputs)?;
    if numel == 0 || width == 0 {
        return Ok(());
    }
    let rows = numel / width;
    let mut extents = vec![numel, numel];
    extents.extend(affine.then_some(width));
    extents.push(numel);
    cx.push(Step {
        work: Work::Rows(Rows {
            kernel: Arc::new(grad::GradInput { width, eps, affine }),
            rows,
            width,
            grain: (GRAIN_ELEMS / width).max(1),
        }),
        inputs: inputs.clone(),
        output: outputs[0],
        extents,
    });
    for (param, &output) in [grad::Param::Weight, grad::Param::Bias]
        .into_iter()
        .zip(&outputs[1..])
    {
        cx.push(Step {
            work: Work::Rows(Rows {
                kernel: Arc::new(grad::GradParam {
                    width,
                    rows,
                    eps,
                    param,
                }),
                rows: 1,
                width,
                grain: 1,
            }),
            inputs: inputs[..2].to_vec(),
            output,
            extents: vec![numel, numel, width],
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
