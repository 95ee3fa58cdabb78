//! Lowering of `expand(x) {shape}` (numpy broadcast: trailing dims
//! aligned, size-1 dims repeated) to one strided copy
//! ([`crate::back::copy::CopyKernel`]) that reads repeated dims with
//! stride 0.

use super::data::call;
use super::LowerCx;
use crate::back::copy::CopyKernel;
use crate::back::BackError;
use crate::ir::Node;

/// Lowers `expand`; `None` for other ops.
pub fn try_lower(cx: &mut LowerCx, node: &Node) -> Option<Result<(), BackError>> {
    (node.op.name == "expand").then(|| expand(cx, node))
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
    let x = node.inputs[0];
    let (xs, ys) = (cx.shape(x)?, cx.shape(node.outputs[0])?);
    let lead = ys.len().checked_sub(xs.len());
    let fits = lead.is_some_and(|lead| xs.iter().zip(&ys[lead..]).all(|(&a, &b)| a == b || a == 1));
    let Some(lead) = lead.filter(|_| fits) else {
        return Err(BackError(format!(
            "`expand` at {}: input {xs:?} does not broadcast to {ys:?}",
            node.path
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
    let out = cx.output(node.outputs[0])?;
    let kernel = CopyKernel::new(&ys, &in_strides, &strides(&ys), 0);
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
