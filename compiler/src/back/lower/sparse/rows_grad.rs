//! Lowering of the bag layers' weight gradients in the row layout
//! (`sparse_linear_grad_weight` → `[V, out]`, `bag_conv1d_grad_weight` →
//! `[V, k, C]`, both with the attribute `weight_rows`) to one row step of
//! `netc_runtime::sparse::BagGradRows`, which zeroes and writes only the
//! rows of the ids a step's bags hold.
//!
//! The gradient lives in the persistent region, not in the memory
//! planner's arena: the kernel relies on its rows staying as it left them
//! from one run to the next (only the rows it wrote last time need
//! zeroing), and the region is padded to whole blocks of ids.

use super::{bags, fail, push_rows, weight_rows};
use crate::back::lower::LowerCx;
use crate::back::BackError;
use crate::ir::{Attr, Node, ValueId};
use netc_runtime::sparse::{BagGradRows, BLOCK};

/// Whether `node` is a bag weight gradient in the row layout.
pub(super) fn is_rows_grad(node: &Node) -> bool {
    matches!(
        node.op.name,
        "sparse_linear_grad_weight" | "bag_conv1d_grad_weight"
    ) && weight_rows(node)
}

/// Elements of gradient `v` (`[V, ...]`) padded to whole blocks of ids.
pub(super) fn padded_len(cx: &LowerCx, v: ValueId) -> Result<usize, BackError> {
    let shape = cx.shape(v)?;
    let row: usize = shape.iter().skip(1).product();
    Ok(shape.first().map_or(0, |n| n.div_ceil(BLOCK) * BLOCK * row))
}

/// `sparse_linear_grad_weight(dy [..., out], bags [..., V])` → `[V, out]`,
/// or `bag_conv1d_grad_weight(dy [..., T', C], bags [..., T, V]) {k, pad}`
/// → `[V, k, C]`.
pub(super) fn lower(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let (&dy, &x) = match node.inputs.as_slice() {
        [dy, x] => (dy, x),
        _ => return Err(fail(node, "expects dy and the bags".into())),
    };
    let b = bags(cx, node, x)?;
    let ds = cx.shape(dy)?;
    let conv = node.op.name == "bag_conv1d_grad_weight";
    let int = |name: &str| match node.op.attr(name) {
        Some(Attr::Int(v)) => usize::try_from(*v).ok(),
        _ => None,
    };
    let (k, pad) = if conv {
        match (int("k"), int("pad")) {
            (Some(k), Some(pad)) => (k, pad),
            _ => return Err(fail(node, "needs the forward's `k` and `pad`".into())),
        }
    } else {
        (1, 0)
    };
    let bad_dy = || {
        fail(
            node,
            format!(
                "dy {ds:?} does not match bags {:?}",
                [b.lead.as_slice(), &[b.vocab]].concat()
            ),
        )
    };
    let (t_in, t_out, width) = if conv {
        match (b.lead.split_last(), ds.split_last()) {
            (Some((&t_in, seq)), Some((&c, [dlead @ .., t_out]))) if seq == dlead => {
                (t_in, *t_out, c)
            }
            _ => return Err(bad_dy()),
        }
    } else {
        match ds.split_last() {
            Some((&out, lead)) if lead == b.lead => (1, 1, out),
            _ => return Err(bad_dy()),
        }
    };
    let want: Vec<usize> = if conv {
        vec![b.vocab, k, width]
    } else {
        vec![b.vocab, width]
    };
    let ws = cx.shape(node.outputs[0])?;
    if ws != want {
        return Err(fail(
            node,
            format!("the gradient {ws:?} is not {want:?} (row layout)"),
        ));
    }
    let kernel = BagGradRows::new(b.vocab, (k, pad), (t_in, t_out), width, b.rows);
    let (blocks, block_len) = (kernel.blocks(), kernel.block_len());
    let out = node.outputs[0];
    let dst = cx.persistent(padded_len(cx, out)?);
    cx.place(out, dst);
    let mut inputs = b.bufs.to_vec();
    inputs.push(cx.buf(dy)?);
    let extents = vec![0, b.rows + 1, 0, ds.iter().product()];
    // Every thread reads every bag entry and writes the rows of its own
    // blocks: split the blocks evenly over the threads.
    let grain = blocks.div_ceil(8).max(1);
    push_rows(cx, kernel, inputs, extents, dst, (blocks, block_len, grain));
    Ok(())
}
