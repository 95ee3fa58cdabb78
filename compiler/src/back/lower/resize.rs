//! Lowering of `resize_nearest` and `upsample_nearest` (the FPN's top-down
//! path, the UNet's upsampler) to a row step (kernel
//! [`netc_runtime::resize::ResizeNearest`]): channels first
//! (`[N, C, *spatial]`, 1 to 3 spatial dims) or, with `layout = "nhwc"`
//! (the layout pass keeps the FPN's resize in its convolutions' chain),
//! channels last (`[N, H, W, C]`). `resize_nearest_grad`, their backward,
//! lowers channels first ([`netc_runtime::resize::ResizeNearestGrad`]).

use super::norm::channels_last;
use super::{sparse, LowerCx};
use crate::back::BackError;
use crate::ir::Node;
use netc_runtime::group_norm::ChannelAxis;
use netc_runtime::plan::RowKernel;
use netc_runtime::resize::{ResizeNearest, ResizeNearestGrad};

/// Elements worth giving a thread.
const GRAIN_ELEMS: usize = 1 << 14;

/// Lowers `resize_nearest`, `upsample_nearest` and `resize_nearest_grad`;
/// `None` for other ops.
pub fn try_lower(cx: &mut LowerCx, node: &Node) -> Option<Result<(), BackError>> {
    match node.op.name {
        "resize_nearest" | "upsample_nearest" => Some(resize(cx, node)),
        "resize_nearest_grad" => Some(backward(cx, node)),
        _ => None,
    }
}

/// `resize_nearest_grad(dy)` (training plans, channels first): one row
/// per `(n, c)` plane of the input gradient.
fn backward(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let (dys, xs) = (cx.shape(node.inputs[0])?, cx.shape(node.outputs[0])?);
    if xs.len() != dys.len() || xs.len() < 3 || xs[..2] != dys[..2] {
        return Err(BackError(format!(
            "`resize_nearest_grad` at {}: cannot take {dys:?} back to {xs:?}",
            node.path
        )));
    }
    let kernel = ResizeNearestGrad::new(&xs[2..], &dys[2..]);
    let (rows, width) = (xs[0] * xs[1], kernel.in_positions());
    push_rows(cx, node, kernel, (rows, width), dys.iter().product())
}

/// Pushes the row step of a one-operand node: `rows × width` results from
/// an operand of `in_len` elements.
fn push_rows(
    cx: &mut LowerCx,
    node: &Node,
    kernel: impl RowKernel + 'static,
    (rows, width): (usize, usize),
    in_len: usize,
) -> Result<(), BackError> {
    let input = cx.buf(node.inputs[0])?;
    let output = cx.output(node.outputs[0])?;
    if rows * width > 0 {
        let grain = (GRAIN_ELEMS / width).max(1);
        sparse::push_rows(
            cx,
            kernel,
            vec![input],
            vec![in_len],
            output,
            (rows, width, grain),
        );
    }
    Ok(())
}

fn resize(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let x = node.inputs[0];
    let (xs, ys) = (cx.shape(x)?, cx.shape(node.outputs[0])?);
    let last = channels_last(node);
    if xs.len() != ys.len() || xs.len() < 3 || (last && xs.len() != 4) {
        return Err(BackError(format!(
            "`{}` at {}: cannot resize {xs:?} to {ys:?}",
            node.op.name, node.path
        )));
    }
    let (channels, spatial) = if last {
        (xs[3], 1..3)
    } else {
        (xs[1], 2..xs.len())
    };
    let axis = if last {
        ChannelAxis::Last
    } else {
        ChannelAxis::First
    };
    let kernel = ResizeNearest::new(&xs[spatial.clone()], &ys[spatial], channels, axis);
    let shape = kernel.shape(xs[0]);
    push_rows(cx, node, kernel, shape, xs.iter().product())
}

#[cfg(test)]
mod tests;
