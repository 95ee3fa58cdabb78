//! Lowering of `group_norm` (FCOS's head towers) to one row step per norm
//! (kernel [`netc_runtime::group_norm::GroupNorm`]): a row is one sample,
//! channels first (`[N, C, *spatial]`) or, with `layout = "nhwc"` (the
//! layout pass puts a norm between NHWC convolutions in their chain),
//! channels last (`[N, H, W, C]`). A `relu` the fusion pass attached to
//! the norm is applied by the same kernel, so the normalised values are
//! never stored.

use super::norm::channels_last;
use super::LowerCx;
use crate::back::BackError;
use crate::ir::{Attr, Node};
use netc_runtime::group_norm::{ChannelAxis, GroupNorm};
use netc_runtime::plan::{Rows, Step, Work};
use std::sync::Arc;

/// Lowers `group_norm`; `None` for other ops.
pub fn try_lower(cx: &mut LowerCx, node: &Node) -> Option<Result<(), BackError>> {
    (node.op.name == "group_norm").then(|| group_norm(cx, node))
}

fn group_norm(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let fail = |what: String| BackError(format!("`group_norm` at {}: {what}", node.path));
    let x = node.inputs[0];
    let shape = cx.shape(x)?;
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
    let affine = node.inputs.len() == 3;
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
    let inputs = node
        .inputs
        .iter()
        .map(|v| cx.buf(*v))
        .collect::<Result<Vec<_>, _>>()?;
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
            kernel: Arc::new(GroupNorm {
                channels,
                groups,
                inner,
                axis,
                eps,
                affine,
                relu,
                threads: cx.options.threads,
            }),
            rows: samples,
            width: channels * inner,
            // One call: the kernel splits each sample over the pool.
            grain: samples,
        }),
        inputs,
        output,
        extents,
    });
    Ok(())
}

#[cfg(test)]
mod tests;
