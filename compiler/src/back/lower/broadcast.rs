//! Lowering of `expand(x) {shape}` (numpy broadcast: trailing dims
//! aligned, size-1 dims repeated) to one strided copy
//! ([`crate::back::copy::CopyKernel`]) that reads repeated dims with
//! stride 0.
//!
//! Binary elementwise nodes whose operands broadcast in a way the
//! elementwise kernels do not index (`crate::back::clif::classify`:
//! e.g. `[N, C, 1] - ` against `[N, C, T]` with a symbolic `N`) reach
//! this module after [`super::pointwise`] declined them: each operand
//! that is not of the output's shape is expanded into the scratch region
//! by the same copy, then one flat elementwise kernel runs on
//! full-shape operands.

use super::data::call;
use super::LowerCx;
use crate::back::clif::binary_node;
use crate::back::copy::CopyKernel;
use crate::back::elementwise::{Bcast, Binary, Chain, Domain, Operand, Step};
use crate::back::BackError;
use crate::ir::{Node, ValueId};
use netc_runtime::plan::Buf;

/// Lowers `expand` and binary elementwise nodes with general broadcasting
/// (see the module docs); `None` for other ops.
pub fn try_lower(cx: &mut LowerCx, node: &Node) -> Option<Result<(), BackError>> {
    if node.op.name == "expand" {
        return Some(expand(cx, node));
    }
    let op = binary_node(node)?;
    match (&node.inputs[..], &node.outputs[..]) {
        ([_, _], [_]) => Some(binary(cx, node, op)),
        _ => None,
    }
}

/// `op(x, y)` with both operands expanded to the output's shape first.
fn binary(cx: &mut LowerCx, node: &Node, op: Binary) -> Result<(), BackError> {
    let ys = cx.shape(node.outputs[0])?;
    let n: usize = ys.iter().product();
    let expanded: Vec<bool> = node
        .inputs
        .iter()
        .map(|&v| cx.shape(v).map(|s| s != ys))
        .collect::<Result<_, _>>()?;
    let scratch = cx.scratch(n * expanded.iter().filter(|&&e| e).count());
    let Buf::Arena { offset, .. } = scratch else {
        return Err(BackError("scratch is not in the arena".into()));
    };
    let out = cx.output(node.outputs[0])?;
    if n == 0 {
        return Ok(());
    }
    let mut inputs = Vec::new();
    let mut at = offset;
    for (&v, &e) in node.inputs.iter().zip(&expanded) {
        if e {
            let to = Buf::Arena { offset: at, len: n };
            broadcast_copy(cx, v, &ys, to, node)?;
            inputs.push(to);
            at += n;
        } else {
            inputs.push(cx.buf(v)?);
        }
    }
    let chain = Chain {
        inputs: vec![Bcast::Full, Bcast::Full],
        domain: Domain::Flat,
        steps: vec![Step::Binary {
            op,
            rhs: Operand::Input(1),
            swap: false,
        }],
    };
    cx.kernel(&chain, inputs, out, n)
}

/// Row-major strides of `shape`.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

fn expand(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let ys = cx.shape(node.outputs[0])?;
    let out = cx.output(node.outputs[0])?;
    broadcast_copy(cx, node.inputs[0], &ys, out, node)
}

/// Copies `x` broadcast to the shape `ys` into `out` (for `node`, named in
/// errors).
fn broadcast_copy(
    cx: &mut LowerCx,
    x: ValueId,
    ys: &[usize],
    out: Buf,
    node: &Node,
) -> Result<(), BackError> {
    let xs = cx.shape(x)?;
    let lead = ys.len().checked_sub(xs.len());
    let fits = lead.is_some_and(|lead| xs.iter().zip(&ys[lead..]).all(|(&a, &b)| a == b || a == 1));
    let Some(lead) = lead.filter(|_| fits) else {
        return Err(BackError(format!(
            "`{}` at {}: input {xs:?} does not broadcast to {ys:?}",
            node.op.name, node.path
        )));
    };
    let xstr = strides(&xs);
    let in_strides: Vec<usize> = (0..ys.len())
        .map(|d| match d.checked_sub(lead) {
            Some(i) if xs[i] != 1 => xstr[i],
            _ => 0,
        })
        .collect();
    let input = cx.buf(x)?;
    let kernel = CopyKernel::new(ys, &in_strides, &strides(ys), 0);
    if ys.iter().product::<usize>() == 0 || kernel.units() == 0 {
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
