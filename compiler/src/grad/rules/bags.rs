//! Backward rules of the CNN-DSSM tower's own ops: `amax` over dims (max
//! pooling over word positions) and the convolution over sequences of
//! sparse bags, `bag_conv1d`.

use super::{only, GradCx, GradError, Rule};
use crate::ir::{Node, Op, ValueId};
use crate::passes::rewrite::per_element;

/// The family's rules.
pub const RULES: &[(&str, Rule)] = &[("amax", amax), ("bag_conv1d", bag_conv1d)];

type Grads = Result<Vec<Option<ValueId>>, GradError>;

/// `amax_grad(dy, x)` with the forward's `dims` and `keepdim`: each
/// reduction's gradient goes to its first maximal element in row-major
/// order over the reduced dims (the first NaN, if any).
///
/// Ties: PyTorch's `amax` splits the gradient evenly among all elements
/// equal to the maximum; this rule gives it all to the first. The input
/// gradients differ at exact ties only, and in the CNN-DSSM tower the
/// parameter gradients do not differ even then: positions tie exactly
/// when their windows hold the same bags (above all, windows of empty
/// padding bags, whose value is `tanh(bias)`), and such positions add the
/// same terms to the weight and bias gradients wherever the share lands.
fn amax(cx: &mut GradCx, n: &Node, d: &[Option<ValueId>], _: &[bool]) -> Grads {
    let dy = only(cx, d)?;
    let x = n.inputs[0];
    let mut op = Op::new("amax_grad");
    op.attrs = n.op.attrs.clone();
    let tx = cx.ty(x);
    let flops = per_element(&tx);
    Ok(vec![Some(cx.emit1(op, vec![dy, x], tx, flops))])
}

/// `bag_conv1d(bags, weight [C, V, k], bias [C]?)`: the weight gradient
/// `bag_conv1d_grad_weight(dy, bags)` (with the forward's `k`, `pad` and
/// `nnz`; dense, in the weight's `[C, V, k]` layout), the bias gradient
/// the sum of `dy` over every dim but the channels. The bags are a sparse
/// model input and get no gradient.
fn bag_conv1d(cx: &mut GradCx, n: &Node, d: &[Option<ValueId>], needs: &[bool]) -> Grads {
    let dy = only(cx, d)?;
    let (x, w) = (n.inputs[0], n.inputs[1]);
    let mut out = vec![None; n.inputs.len()];
    if needs[1] {
        let mut op = Op::new("bag_conv1d_grad_weight");
        op.attrs = n.op.attrs.clone();
        out[1] = Some(cx.emit1(op, vec![dy, x], cx.ty(w), n.flops.clone()));
    }
    if n.inputs.len() > 2 && needs[2] {
        let rank = cx.ty(dy).rank();
        out[2] = Some(cx.sum(dy, &(0..rank - 1).collect::<Vec<_>>(), false));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
