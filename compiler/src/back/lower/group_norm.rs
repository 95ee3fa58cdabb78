//! Lowering of `group_norm` (FCOS's head towers) to one row step per norm
//! (kernel [`netc_runtime::group_norm::GroupNorm`]): a row is one sample,
//! channels first (`[N, C, *spatial]`) or, with `layout = "nhwc"` (the
//! layout pass puts a norm between NHWC convolutions in their chain),
//! channels last (`[N, H, W, C]`). A `relu` the fusion pass attached to
//! the norm is applied by the same kernel, so the normalised values are
//! never stored.
//!
//! `group_norm_grad(dy, x[, weight]) -> dx[, dweight, dbias]` (training
//! plans, channels first) lowers to the three row steps of
//! [`netc_runtime::group_norm::grad`]: per-sample sums into a scratch row,
//! the parameter gradients summed over the samples, then `dx`.

use super::norm::channels_last;
use super::LowerCx;
use crate::back::BackError;
use crate::ir::{Attr, Node};
use netc_runtime::group_norm::{grad, ChannelAxis, GroupNorm};
use netc_runtime::plan::{RowKernel, Rows, Step, Work};
use std::sync::Arc;

/// Lowers `group_norm` and `group_norm_grad`; `None` for other ops.
pub fn try_lower(cx: &mut LowerCx, node: &Node) -> Option<Result<(), BackError>> {
    match node.op.name {
        "group_norm" => Some(group_norm(cx, node)),
        "group_norm_grad" => Some(backward(cx, node)),
        _ => None,
    }
}

/// The norm's kernel description from `x` (operand `x_at`), its
/// attributes and whether it is affine; `(kernel, samples, numel)`.
fn describe(
    cx: &LowerCx,
    node: &Node,
    x_at: usize,
    affine: bool,
) -> Result<(GroupNorm, usize, usize), BackError> {
    let fail = |what: String| BackError(format!("`{}` at {}: {what}", node.op.name, node.path));
    let shape = cx.shape(node.inputs[x_at])?;
    let axis = if channels_last(node) {
        ChannelAxis::Last
    } else {
        ChannelAxis::First
    };
    let channels = match axis {
        ChannelAxis::First => shape.get(1),
        ChannelAxis::Last => shape.last().filter(|_| shape.len() > 2),
    }
    .copied()
    .ok_or_else(|| fail(format!("expects [N, C, ...], got {shape:?}")))?;
    let samples = shape[0];
    let numel: usize = shape.iter().product();
    let inner = numel.checked_div(samples * channels).unwrap_or(0);
    let groups = match node.op.attr("groups") {
        Some(Attr::Int(g)) if *g > 0 => *g as usize,
        other => return Err(fail(format!("bad `groups` {other:?}"))),
    };
    let eps = match node.op.attr("eps") {
        Some(Attr::Float(e)) => *e as f32,
        _ => 1e-5,
    };
    let norm = GroupNorm {
        channels,
        groups,
        inner,
        axis,
        eps,
        affine,
        relu: false,
        threads: cx.options.threads,
    };
    Ok((norm, samples, numel))
}

fn group_norm(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let fail = |what: String| BackError(format!("`group_norm` at {}: {what}", node.path));
    let affine = node.inputs.len() == 3;
    let (norm, samples, numel) = describe(cx, node, 0, affine)?;
    let channels = norm.channels;
    let relu = match cx.followers(node)[..] {
        [] => false,
        [f] if f.op.name == "relu" => true,
        ref other => {
            return Err(fail(format!(
                "cannot run fused followers {:?}",
                other.iter().map(|f| f.op.name).collect::<Vec<_>>()
            )))
        }
    };
    let inputs = cx.buf_list(&node.inputs)?;
    let output = match cx.followers(node)[..] {
        [f] => cx.output(f.outputs[0])?,
        _ => cx.output(node.outputs[0])?,
    };
    if numel == 0 {
        return Ok(());
    }
    let mut extents = vec![numel];
    if affine {
        extents.extend([channels, channels]);
    }
    extents.push(numel);
    cx.push(Step {
        work: Work::Rows(Rows {
            kernel: Arc::new(GroupNorm { relu, ..norm }),
            rows: samples,
            width: numel / samples,
            // One call: the kernel splits each sample over the pool.
            grain: samples,
        }),
        inputs,
        output,
        extents,
    });
    Ok(())
}

/// `group_norm_grad`: the sums step, the parameter gradients, then `dx`
/// (see the module docs).
fn backward(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let affine = node.inputs.len() == 3;
    let (norm, samples, numel) = describe(cx, node, 1, affine)?;
    if norm.axis != ChannelAxis::First || node.outputs.len() != 1 + 2 * usize::from(affine) {
        return Err(BackError(format!(
            "`group_norm_grad` at {}: expects channels first and {} results",
            node.path,
            1 + 2 * usize::from(affine)
        )));
    }
    let inputs = cx.buf_list(&node.inputs)?;
    let outputs = cx.output_list(&node.outputs)?;
    if numel == 0 {
        return Ok(());
    }
    let (c, row) = (norm.channels, grad::sums_width(&norm));
    let sums = cx.scratch(samples * row);
    let rows = |kernel: Arc<dyn RowKernel>, rows: usize, width: usize| {
        Work::Rows(Rows {
            kernel,
            rows,
            width,
            // One call: the kernels split each sample over the pool.
            grain: rows,
        })
    };
    cx.push(Step {
        work: rows(
            Arc::new(grad::GradSums { norm: norm.clone() }),
            samples,
            row,
        ),
        inputs: inputs[..2].to_vec(),
        output: sums,
        extents: vec![numel, numel, samples * row],
    });
    for (offset, out) in [(0, 1), (c, 2)] {
        if let Some(&output) = outputs.get(out) {
            let kernel = grad::SampleSums {
                samples,
                stride: row,
                offset,
            };
            cx.push(Step {
                work: rows(Arc::new(kernel), 1, c),
                inputs: vec![sums],
                output,
                extents: vec![samples * row, c],
            });
        }
    }
    let mut step_inputs = inputs[..2].to_vec();
    step_inputs.push(sums);
    step_inputs.extend(inputs.get(2).copied());
    let mut extents = vec![numel, numel, samples * row];
    extents.extend(affine.then_some(c));
    extents.push(numel);
    cx.push(Step {
        work: rows(Arc::new(grad::GradInput { norm }), samples, numel / samples),
        inputs: step_inputs,
        output: outputs[0],
        extents,
    });
    Ok(())
}

#[cfg(test)]
mod tests;
