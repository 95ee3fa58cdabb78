//! Lowering of pooling: `max_pool1d/2d`, `avg_pool1d/2d` (PyTorch's
//! windows, `ceil_mode` already in the output shape),
//! `adaptive_avg_pool2d`, `adaptive_max_pool2d` and `global_avg_pool`
//! (1 or 2 spatial dims) to one [`PoolKernel`] call each.
//!
//! Channels first `[N, C, (H,) W]` by default; with `layout = "nhwc"` the
//! 2-D pools take and give `[N, H, W, C]` (the layout pass's form).
//!
//! Channels-first max pooling over strided windows (other than 2×2 at
//! stride 2) runs as the runtime's [`MaxPool2d`] row step instead
//! (separable: window rows reduced column by column, then each output's
//! taps of that row, vectorised; see its module).

use super::{data::call, norm::channels_last, LowerCx};
use crate::back::pool::{Axis, PoolKernel, PoolLayout, PoolOp, Window};
use crate::back::BackError;
use crate::ir::{Attr, Node};
use netc_runtime::maxpool::{MaxPool2d, PoolAxis};
use netc_runtime::plan::{Rows, Step, Work};
use std::sync::Arc;

/// Lowers the pooling ops; `None` for other ops.
pub fn try_lower(cx: &mut LowerCx, node: &Node) -> Option<Result<(), BackError>> {
    let op = match node.op.name {
        "max_pool1d" | "max_pool2d" | "adaptive_max_pool2d" => PoolOp::Max,
        "avg_pool1d" | "avg_pool2d" => PoolOp::Avg {
            include_pad: !matches!(node.op.attr("count_include_pad"), Some(Attr::Bool(false))),
        },
        "adaptive_avg_pool2d" | "global_avg_pool" => PoolOp::Avg { include_pad: false },
        _ => return None,
    };
    Some(pool(cx, node, op))
}

fn ints(node: &Node, key: &str, nd: usize, default: u64) -> Vec<u64> {
    match node.op.attr(key) {
        Some(Attr::Ints(v)) => v.iter().map(|&x| x.max(0) as u64).collect(),
        _ => vec![default; nd],
    }
}

fn pool(cx: &mut LowerCx, node: &Node, op: PoolOp) -> Result<(), BackError> {
    let x = node.inputs[0];
    let xs = cx.shape(x)?;
    let ys = cx.shape(node.outputs[0])?;
    let nhwc = channels_last(node);
    let bad = |why: &str| {
        BackError(format!(
            "`{}` at {}: {why} (input {xs:?}, output {ys:?})",
            node.op.name, node.path
        ))
    };
    if xs.len() != ys.len() && node.op.name != "global_avg_pool" {
        return Err(bad("input and output ranks differ"));
    }
    // (outer blocks, spatial input sizes, spatial output sizes, layout)
    let (outer, sin, sout, layout) = if nhwc {
        let [n, h, w, c] = xs[..] else {
            return Err(bad("channels-last pooling needs [N, H, W, C]"));
        };
        (
            n,
            vec![h, w],
            ys[1..3].to_vec(),
            PoolLayout::Nhwc { channels: c as u64 },
        )
    } else {
        if !(3..=4).contains(&xs.len()) {
            return Err(bad("only 1-D and 2-D pooling is lowered"));
        }
        let sout = if node.op.name == "global_avg_pool" {
            vec![1; xs.len() - 2]
        } else {
            ys[2..].to_vec()
        };
        (xs[0] * xs[1], xs[2..].to_vec(), sout, PoolLayout::Nchw)
    };
    let nd = sin.len();
    let adaptive = node.op.name.starts_with("adaptive") || node.op.name == "global_avg_pool";
    let (k, stride, pad) = (
        ints(node, "k", nd, 1),
        ints(node, "stride", nd, 1),
        ints(node, "pad", nd, 0),
    );
    let dilation = ints(node, "dilation", nd, 1);
    let axis = |i: usize| Axis {
        input: sin[i] as u64,
        output: sout[i] as u64,
        window: if adaptive {
            Window::Adaptive
        } else {
            Window::Strided {
                k: k.get(i).copied().unwrap_or(1),
                stride: stride.get(i).copied().unwrap_or(1),
                pad: pad.get(i).copied().unwrap_or(0),
                dilation: dilation.get(i).copied().unwrap_or(1),
            }
        },
    };
    let unit = Axis {
        input: 1,
        output: 1,
        window: Window::Adaptive,
    };
    let (h, w) = if nd == 1 {
        (unit, axis(0))
    } else {
        (axis(0), axis(1))
    };
    if let (PoolOp::Max, PoolLayout::Nchw, Some(pool)) = (op, layout, max_pool(h, w)) {
        pool.validate().map_err(|e| bad(&e))?;
        return max_pool_rows(cx, node, outer, pool);
    }
    let kernel = PoolKernel { op, layout, h, w };
    kernel.validate().map_err(|e| bad(&e.0))?;
    let units = kernel.units(outer);
    if units == 0 || kernel.row_len() == 0 {
        cx.output(node.outputs[0])?;
        return Ok(());
    }
    let id = kernel.compile(cx.jit)?;
    let input = cx.buf(x)?;
    let out = cx.output(node.outputs[0])?;
    let grain = (2048 / kernel.row_len()).max(1);
    call(
        cx,
        id,
        units,
        grain,
        vec![input],
        vec![outer * kernel.in_block(), units * kernel.row_len()],
        out,
    )
}

/// The runtime's form of a channels-first max pool over axes `h`, `w`:
/// both strided (or `h` the unit axis of a 1-D pool); `None` for
/// adaptive windows and for W windows that are unpadded pairs at stride
/// 2 (VGG's `k = 2, stride = 2`), which the generated kernels' pair
/// loads serve faster (vggish at batch 32: 1.7× forward, 1.9× backward).
pub(super) fn max_pool(h: Axis, w: Axis) -> Option<MaxPool2d> {
    let pair = Window::Strided {
        k: 2,
        stride: 2,
        pad: 0,
        dilation: 1,
    };
    if w.window == pair {
        return None;
    }
    let axis = |a: Axis| match a.window {
        Window::Strided {
            k,
            stride,
            pad,
            dilation,
        } => Some(PoolAxis {
            input: a.input as usize,
            output: a.output as usize,
            k: k as usize,
            stride: stride as usize,
            pad: pad as usize,
            dilation: dilation as usize,
        }),
        Window::Adaptive if a.input == 1 && a.output == 1 => Some(PoolAxis {
            input: 1,
            output: 1,
            k: 1,
            stride: 1,
            pad: 0,
            dilation: 1,
        }),
        Window::Adaptive => None,
    };
    Some(MaxPool2d {
        h: axis(h)?,
        w: axis(w)?,
    })
}

/// `pool` over `planes` planes as one row step: a row per output row.
fn max_pool_rows(
    cx: &mut LowerCx,
    node: &Node,
    planes: usize,
    pool: MaxPool2d,
) -> Result<(), BackError> {
    let (rows, width) = (planes * pool.h.output, pool.w.output);
    let input = cx.buf(node.inputs[0])?;
    let output = cx.output(node.outputs[0])?;
    if rows * width == 0 {
        return Ok(());
    }
    cx.push(Step {
        work: Work::Rows(Rows {
            kernel: Arc::new(pool),
            rows,
            width,
            grain: (2048 / width).max(1),
        }),
        inputs: vec![input],
        output,
        extents: vec![planes * pool.plane(), rows * width],
    });
    Ok(())
}

#[cfg(test)]
mod tests;
