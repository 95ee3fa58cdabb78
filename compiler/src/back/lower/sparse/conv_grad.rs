//! Lowering of `bag_conv1d_grad_weight(dy, bags)` (the weight gradient of
//! `bag_conv1d`) to one row step of `netc_runtime::sparse::BagConvGradWeight`:
//! a dense `[C, V, k]` gradient (the parameter's layout), one row per
//! output channel, so threads own disjoint channels.

use super::{bags, fail, push_rows, GRAIN_WORK};
use crate::back::lower::LowerCx;
use crate::back::BackError;
use crate::ir::{Attr, Node};
use netc_runtime::sparse::BagConvGradWeight;

/// `bag_conv1d_grad_weight(dy [..., T', C], bags [..., T, V]) {k, pad}`.
pub(super) fn lower(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let (&dy, &x) = match node.inputs.as_slice() {
        [dy, x] => (dy, x),
        _ => return Err(fail(node, "expects dy and the bags".into())),
    };
    let b = bags(cx, node, x)?;
    let ds = cx.shape(dy)?;
    let int = |name: &str| match node.op.attr(name) {
        Some(Attr::Int(v)) => usize::try_from(*v).ok(),
        _ => None,
    };
    let (k, pad) = match (int("k"), int("pad")) {
        (Some(k), Some(pad)) => (k, pad),
        _ => return Err(fail(node, "needs the forward's `k` and `pad`".into())),
    };
    let (t_in, t_out, c) = match (b.lead.split_last(), ds.split_last()) {
        (Some((&t_in, seq)), Some((&c, [dlead @ .., t_out]))) if seq == dlead => (t_in, *t_out, c),
        _ => {
            return Err(fail(
                node,
                format!(
                    "dy {ds:?} is not [..., T', C] for bags {:?}",
                    [b.lead.as_slice(), &[b.vocab]].concat()
                ),
            ))
        }
    };
    let ws = cx.shape(node.outputs[0])?;
    if ws != [c, b.vocab, k] {
        return Err(fail(
            node,
            format!("the gradient {ws:?} is not [{c}, {}, {k}]", b.vocab),
        ));
    }
    let kernel = BagConvGradWeight {
        vocab: b.vocab,
        k,
        pad,
        t_in,
        t_out,
        channels: c,
        bags: b.rows,
    };
    let mut inputs = b.bufs.to_vec();
    inputs.push(cx.buf(dy)?);
    let extents = vec![0, b.rows + 1, 0, ds.iter().product()];
    let dst = cx.output(node.outputs[0])?;
    // A channel costs every entry's taps: about bags · nnz · k.
    let nnz = match node.op.attr("nnz") {
        Some(Attr::Int(n)) => usize::try_from(*n).unwrap_or(1).max(1),
        _ => 1,
    };
    let per_channel = b.rows.saturating_mul(nnz).saturating_mul(k).max(1);
    let grain = (GRAIN_WORK / per_channel).max(1);
    let width = b.vocab * k;
    push_rows(cx, kernel, inputs, extents, dst, (c, width, grain));
    Ok(())
}

#[cfg(test)]
mod tests;
