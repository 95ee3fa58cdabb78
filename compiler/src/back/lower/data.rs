//! Lowering of data movement and `quantize_u8`.
//!
//! Every data-movement op is one strided copy per piece ([`CopyKernel`]):
//! - `concat` / `stack`: each input is copied into its slice of the
//!   output (the step writes a sub-range of the output buffer); a concat
//!   heading a concat → norm group is lowered by [`super::norm`] instead;
//! - `split`: each output is a slice of the input;
//! - `permute`: the input read through permuted strides;
//! - `slice` / `select`: the input read from an offset with (scaled or
//!   dropped) strides;
//! - `frame`: overlapping windows, the framed dim read with stride
//!   `hop · stride` and the window dim with the dim's stride.
//!
//! Views (`reshape`, `dropout`, and `flatten` / `squeeze` / `unsqueeze`,
//! which elaborate to `reshape`) are aliases, lowered in
//! [`super::pointwise`]. `quantize_u8` is one [`QuantizeKernel`] call; its
//! u8 result is held as f32 integers in the arena.

use super::LowerCx;
use crate::back::copy::CopyKernel;
use crate::back::jit::KernelId;
use crate::back::quantize::QuantizeKernel;
use crate::back::BackError;
use crate::ir::{Attr, Node};
use netc_runtime::plan::{Buf, Step, Work};

/// Lowers the data-movement ops and `quantize_u8`; `None` for other ops.
pub fn try_lower(cx: &mut LowerCx, node: &Node) -> Option<Result<(), BackError>> {
    let r = match node.op.name {
        "concat" | "stack" => join(cx, node),
        "split" => split(cx, node),
        "permute" | "slice" | "select" | "frame" => view_copy(cx, node),
        "quantize_u8" => quantize(cx, node),
        _ => return None,
    };
    Some(r)
}

/// Appends a call of the compiled kernel `id` over `units` work units.
pub fn call(
    cx: &mut LowerCx,
    id: KernelId,
    units: usize,
    grain: usize,
    inputs: Vec<Buf>,
    extents: Vec<usize>,
    output: Buf,
) -> Result<(), BackError> {
    let kernel = cx.jit.code(id)?;
    cx.push(Step {
        work: Work::Kernel {
            kernel,
            units,
            grain,
        },
        inputs,
        output,
        extents,
    });
    Ok(())
}

/// Row-major strides of `shape`.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

fn int(node: &Node, key: &str) -> Result<usize, BackError> {
    match node.op.attr(key) {
        Some(Attr::Int(v)) if *v >= 0 => Ok(*v as usize),
        _ => Err(BackError(format!(
            "`{}` at {} has no valid `{key}`",
            node.op.name, node.path
        ))),
    }
}

/// Copies `input` through `kernel` into `out` starting `at` elements in.
fn copy(
    cx: &mut LowerCx,
    kernel: &CopyKernel,
    input: Buf,
    out: Buf,
    at: usize,
) -> Result<(), BackError> {
    let out = match out {
        Buf::Arena { offset, len } => Buf::Arena {
            offset: offset + at,
            len: len.saturating_sub(at),
        },
        _ if at == 0 => out,
        _ => {
            return Err(BackError(format!(
                "copy into {out:?} at element {at}: only arena buffers take offsets"
            )))
        }
    };
    if kernel.units() == 0 {
        return Ok(());
    }
    let id = kernel.compile(cx.jit)?;
    call(
        cx,
        id,
        kernel.units(),
        kernel.grain(),
        vec![input],
        vec![kernel.in_extent(), kernel.out_extent()],
        out,
    )
}

/// `concat` and `stack` along `dim`: each input into its slice.
fn join(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let followers = cx.followers(node);
    if !followers.is_empty() {
        return super::norm::concat_norm(cx, node, &followers);
    }
    let d = int(node, "dim")?;
    let ys = cx.shape(node.outputs[0])?;
    let out = cx.output(node.outputs[0])?;
    if ys.iter().product::<usize>() == 0 {
        return Ok(());
    }
    let ystr = strides(&ys);
    let stack = node.op.name == "stack";
    let mut at = 0;
    for (i, &x) in node.inputs.iter().enumerate() {
        let xs = cx.shape(x)?;
        let mut out_strides = ystr.clone();
        if stack {
            out_strides.remove(d);
            at = i * ystr[d];
        }
        if xs.len() != out_strides.len() {
            return Err(BackError(format!(
                "`{}` at {}: input {xs:?} does not fit output {ys:?}",
                node.op.name, node.path
            )));
        }
        let kernel = CopyKernel::new(&xs, &strides(&xs), &out_strides, 0);
        let input = cx.buf(x)?;
        copy(cx, &kernel, input, out, at)?;
        if !stack {
            at += xs[d] * ystr[d];
        }
    }
    Ok(())
}

/// `split` along `dim`: each output is the next slice of the input.
fn split(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let d = int(node, "dim")?;
    let xs = cx.shape(node.inputs[0])?;
    let xstr = strides(&xs);
    let input = cx.buf(node.inputs[0])?;
    let mut start = 0;
    for &y in &node.outputs {
        let ys = cx.shape(y)?;
        let out = cx.output(y)?;
        let kernel = CopyKernel::new(&ys, &xstr, &strides(&ys), start * xstr[d]);
        copy(cx, &kernel, input, out, 0)?;
        start += ys[d];
    }
    Ok(())
}

/// `permute`, `slice`, `select`, `frame`: the output read from the input
/// through an offset and per-output-dim input strides.
fn view_copy(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let xs = cx.shape(node.inputs[0])?;
    let ys = cx.shape(node.outputs[0])?;
    let xstr = strides(&xs);
    let bad = || {
        BackError(format!(
            "`{}` at {}: input {xs:?} and output {ys:?} do not match its attributes",
            node.op.name, node.path
        ))
    };
    let (offset, in_strides) = match node.op.name {
        "permute" => {
            let dims = match node.op.attr("dims") {
                Some(Attr::Ints(v)) => v.clone(),
                _ => return Err(bad()),
            };
            let s = dims
                .iter()
                .map(|&p| xstr.get(p as usize).copied().ok_or_else(bad))
                .collect::<Result<Vec<_>, _>>()?;
            (0, s)
        }
        "slice" => {
            let (d, start, step) = (int(node, "dim")?, int(node, "start")?, int(node, "step")?);
            let mut s = xstr.clone();
            *s.get_mut(d).ok_or_else(bad)? *= step;
            (start * xstr[d], s)
        }
        "select" => {
            let (d, index) = (int(node, "dim")?, int(node, "index")?);
            let mut s = xstr.clone();
            if d >= s.len() {
                return Err(bad());
            }
            s.remove(d);
            (index * xstr[d], s)
        }
        _ => {
            let (d, hop) = (int(node, "dim")?, int(node, "hop")?);
            let mut s = xstr.clone();
            let sd = *xstr.get(d).ok_or_else(bad)?;
            s[d] = hop * sd;
            s.insert(d + 1, sd);
            (0, s)
        }
    };
    if in_strides.len() != ys.len() {
        return Err(bad());
    }
    let out = cx.output(node.outputs[0])?;
    if ys.iter().product::<usize>() == 0 {
        return Ok(());
    }
    let kernel = CopyKernel::new(&ys, &in_strides, &strides(&ys), offset);
    if kernel.in_extent() > xs.iter().product() {
        return Err(bad());
    }
    let input = cx.buf(node.inputs[0])?;
    copy(cx, &kernel, input, out, 0)
}

/// `quantize_u8`: clamp, scale to 0..=255 and round, as f32 integers.
fn quantize(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let float = |key: &str, default: f64| match node.op.attr(key) {
        Some(Attr::Float(v)) => *v as f32,
        _ => default as f32,
    };
    let kernel = QuantizeKernel {
        lo: float("min", -2.0),
        hi: float("max", 2.0),
        truncate: matches!(node.op.attr("rounding"), Some(Attr::Str(r)) if r == "truncate"),
    };
    let n = cx.numel(node.outputs[0])?;
    let id = kernel.compile(cx.jit)?;
    let input = cx.buf(node.inputs[0])?;
    let out = cx.output(node.outputs[0])?;
    if n == 0 {
        return Ok(());
    }
    call(cx, id, n, 4096, vec![input], vec![n, n], out)
}

#[cfg(test)]
mod tests;
