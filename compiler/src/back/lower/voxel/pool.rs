//! Lowering of `sparse_global_avg_pool` and its gradient to one
//! [`SitePool`] row step each, over the sites the run computed: a strided
//! conv's sites are counted by its rule book, the input sites by the
//! plan's input size.

use super::super::sparse::{fail, push_rows};
use super::super::LowerCx;
use crate::back::BackError;
use crate::ir::{Attr, Node};
use netc_runtime::voxel::pool::SitePool;

/// Lowers the pool and its gradient; `None` for other ops.
pub fn try_lower(cx: &mut LowerCx, node: &Node) -> Option<Result<(), BackError>> {
    let grad = match node.op.name {
        "sparse_global_avg_pool" => false,
        "sparse_global_avg_pool_grad" => true,
        _ => return None,
    };
    Some(pool(cx, node, grad))
}

fn pool(cx: &mut LowerCx, node: &Node, grad: bool) -> Result<(), BackError> {
    if !cx.followers(node).is_empty() {
        return Err(fail(node, "cannot run fused followers".into()));
    }
    let [v, coords] = node.inputs[..] else {
        return Err(fail(node, "expects values and coords".into()));
    };
    let batch = match node.op.attr("batch") {
        Some(Attr::Int(b)) if *b >= 0 => *b as usize,
        other => return Err(fail(node, format!("bad `batch` {other:?}"))),
    };
    let width = *cx
        .shape(v)?
        .last()
        .ok_or_else(|| fail(node, "scalar values".into()))?;
    let sites = cx
        .sizes(coords)
        .and_then(|s| s.first().copied())
        .ok_or_else(|| fail(node, "the site count is not known".into()))?;
    let book = cx.books_of.get(&coords).copied();
    let mut inputs = vec![cx.buf(v)?, cx.buf(coords)?];
    let mut extents = vec![cx.numel(v)?, sites * 4];
    if let Some(b) = book {
        inputs.push(b.buf);
        extents.push(1);
    }
    let kernel = SitePool {
        width,
        batch,
        sites,
        counted: book.is_some(),
        grad,
    };
    let output = cx.output(node.outputs[0])?;
    let len = cx.numel(node.outputs[0])?;
    push_rows(cx, kernel, inputs, extents, output, (1, len, 1));
    Ok(())
}
