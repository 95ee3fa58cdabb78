//! Lowering of the sparse convs' gradients (`grad/rules/voxel.rs`) on the
//! forward's rule books (kernels in `netc_runtime::voxel::grad`):
//!
//! - `sparse_conv3d_grad_input`: an inverse table per `rulebook` key (per
//!   input row and offset, the output row that read it; built once per
//!   run, after the forward), then a [`VoxelConv`] over it with each
//!   offset's weight block transposed (a prepare step, once per weight);
//! - `sparse_conv3d_grad_weight`: the per-offset sums `[volume, cin,
//!   cout]` into scratch, then transposed into the weight's `[out, kz, ky,
//!   kx, in]`;
//! - `sparse_conv3d_grad_bias`: the output gradient's rows summed up to
//!   the rule book's count.
//!
//! All of them read only the rows the run computed (the counts in the
//! rule books), never the rest of the buffers planned at the bounds.

use super::super::sparse::{fail, packed_weight, push_rows};
use super::super::{align, LowerCx};
use super::{key, Book};
use crate::back::BackError;
use crate::ir::{Node, ValueId};
use netc_runtime::plan::Buf;
use netc_runtime::sparse::Transpose;
use netc_runtime::voxel::grad::{BlockTranspose, InvertRuleBook, SumRows, VoxelGradWeight};
use netc_runtime::voxel::{VoxelConv, COORDS_AT};
use std::collections::{HashMap, HashSet};

/// The buffers the gradient lowering builds once and shares.
#[derive(Debug, Default)]
pub struct GradBufs {
    /// Inverse tables, by `rulebook` key.
    inverse: HashMap<String, Buf>,
    /// Weights with each offset's block transposed, by weight.
    transposed: HashMap<ValueId, Buf>,
}

/// Lowers the gradient ops; `None` for other ops.
pub fn try_lower(cx: &mut LowerCx, node: &Node) -> Option<Result<(), BackError>> {
    let r = match node.op.name {
        "sparse_conv3d_grad_input" => grad_input(cx, node),
        "sparse_conv3d_grad_weight" => grad_weight(cx, node),
        "sparse_conv3d_grad_bias" => grad_bias(cx, node),
        _ => return None,
    };
    Some(r)
}

/// Persistent elements of the inverse tables (one per key) and the
/// transposed weights (one per weight).
pub fn persistent_len(cx: &LowerCx, nodes: &[&Node]) -> Result<usize, BackError> {
    let (mut keys, mut weights) = (HashSet::new(), HashSet::new());
    let mut len = 0;
    for n in nodes
        .iter()
        .filter(|n| n.op.name == "sparse_conv3d_grad_input")
    {
        let (in_bound, volume) = (rows(cx, n, n.inputs[1])?, volume(n)?);
        if keys.insert(key(n)?) {
            len += align(COORDS_AT + in_bound * volume);
        }
        if weights.insert(n.inputs[2]) {
            len += align(cx.numel(n.inputs[2])?);
        }
    }
    Ok(len)
}

/// The rows `v` is planned for (a count's bound).
fn rows(cx: &LowerCx, node: &Node, v: ValueId) -> Result<usize, BackError> {
    cx.sizes(v)
        .and_then(|s| s.first().copied())
        .ok_or_else(|| fail(node, format!("the row count of %{} is not known", v.0)))
}

/// Kernel offsets of the node's `k`.
fn volume(node: &Node) -> Result<usize, BackError> {
    Ok(super::three(node, "k")?
        .iter()
        .map(|&k| k.max(0) as usize)
        .product())
}

/// The forward's rule book of the node's key.
fn book(cx: &LowerCx, node: &Node) -> Result<Book, BackError> {
    cx.rule_books.get(&key(node)?).copied().ok_or_else(|| {
        fail(
            node,
            "the forward conv's rule book was not built before it".into(),
        )
    })
}

/// Refuses fused followers: the gradient kernels apply none.
fn no_followers(cx: &LowerCx, node: &Node) -> Result<(), BackError> {
    match cx.followers(node)[..] {
        [] => Ok(()),
        _ => Err(fail(node, "cannot run fused followers".into())),
    }
}

/// `(cout, cin)` of a weight `[out, kz, ky, kx, in]`.
fn channels(cx: &LowerCx, node: &Node, w: ValueId) -> Result<(usize, usize), BackError> {
    match cx.shape(w)?[..] {
        [cout, .., cin] => Ok((cout, cin)),
        ref s => Err(fail(node, format!("bad weight shape {s:?}"))),
    }
}

/// `sparse_conv3d_grad_input(dy, coords, weight)`.
fn grad_input(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    no_followers(cx, node)?;
    let [dy, coords, w] = node.inputs[..] else {
        return Err(fail(node, "expects dy, coords and a weight".into()));
    };
    let fwd = book(cx, node)?;
    let (cout, cin) = channels(cx, node, w)?;
    let (vol, in_bound) = (volume(node)?, rows(cx, node, coords)?);
    let inverse = match cx.voxel_grad.inverse.get(&key(node)?) {
        Some(b) => *b,
        None => {
            let kernel = InvertRuleBook {
                volume: vol,
                pairs_at: fwd.layout.pairs_at(),
                in_bound,
            };
            let buf = cx.persistent(kernel.elements());
            let len = kernel.elements();
            let extents = vec![fwd.layout.grid_at()];
            push_rows(cx, kernel, vec![fwd.buf], extents, buf, (1, len, 1));
            cx.voxel_grad.inverse.insert(key(node)?, buf);
            buf
        }
    };
    let transposed = match cx.voxel_grad.transposed.get(&w) {
        Some(b) => *b,
        None => {
            let packed = packed_weight(cx, node, w, cout, vol * cin)?;
            let buf = cx.persistent(vol * cin * cout);
            let kernel = BlockTranspose {
                blocks: vol,
                rows: cin,
                cols: cout,
            };
            let n = vol * cin * cout;
            cx.preparing(|cx| push_rows(cx, kernel, vec![packed], vec![n], buf, (1, n, 1)));
            cx.voxel_grad.transposed.insert(w, buf);
            buf
        }
    };
    let out_bound = rows(cx, node, dy)?;
    let kernel = VoxelConv {
        cin: cout,
        cout: cin,
        volume: vol,
        pairs_at: COORDS_AT,
        bias: false,
        relu: false,
        threads: cx.options.threads,
    };
    let inputs = vec![cx.buf(dy)?, inverse, transposed];
    let extents = vec![
        out_bound * cout,
        COORDS_AT + in_bound * vol,
        vol * cin * cout,
    ];
    let output = cx.output(node.outputs[0])?;
    push_rows(cx, kernel, inputs, extents, output, (1, in_bound * cin, 1));
    Ok(())
}

/// `sparse_conv3d_grad_weight(dy, features, coords)`.
fn grad_weight(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    no_followers(cx, node)?;
    let [dy, feats, _] = node.inputs[..] else {
        return Err(fail(node, "expects dy, features and coords".into()));
    };
    let fwd = book(cx, node)?;
    let (cout, cin) = channels(cx, node, node.outputs[0])?;
    let vol = volume(node)?;
    let n = vol * cin * cout;
    let scratch = cx.scratch(n);
    let kernel = VoxelGradWeight {
        cin,
        cout,
        volume: vol,
        pairs_at: fwd.layout.pairs_at(),
        threads: cx.options.threads,
    };
    let inputs = vec![cx.buf(dy)?, cx.buf(feats)?, fwd.buf];
    let extents = vec![cx.numel(dy)?, cx.numel(feats)?, fwd.layout.grid_at()];
    push_rows(cx, kernel, inputs, extents, scratch, (1, n, 1));
    let output = cx.output(node.outputs[0])?;
    let transpose = Transpose {
        rows: vol * cin,
        cols: cout,
    };
    push_rows(
        cx,
        transpose,
        vec![scratch],
        vec![n],
        output,
        (cout, vol * cin, 1),
    );
    Ok(())
}

/// `sparse_conv3d_grad_bias(dy, coords)`.
fn grad_bias(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    no_followers(cx, node)?;
    let fwd = book(cx, node)?;
    let dy = node.inputs[0];
    let width = cx.numel(node.outputs[0])?;
    let inputs = vec![cx.buf(dy)?, fwd.buf];
    let extents = vec![cx.numel(dy)?, 1];
    let output = cx.output(node.outputs[0])?;
    push_rows(
        cx,
        SumRows { width },
        inputs,
        extents,
        output,
        (1, width, 1),
    );
    Ok(())
}

#[cfg(test)]
mod tests;
