//! Lowering of the text-matching gradient ops (grad/rules/text.rs) to
//! runtime row steps (kernels in `netc_runtime::text_grad`):
//!
//! - `sparse_linear_grad_weight(dy, bags)`: the dense `[out, V]` gradient,
//!   rows split over threads by output feature (every piece reads all
//!   bags, so nothing is written twice).
//! - `embedding_bag_grad_weight(dy, bags)`: the dense `[V, dim]` gradient,
//!   rows split by table row (a piece keeps the entries of its ids).
//! - `cosine_similarity_grad(p, q, dy)`: one row per outer index of the
//!   broadcast shape, operands read through broadcast strides.
//! - `dssm_loss_grad(s, dloss)`: one row per query.
//!
//! These bag gradients are dense in the weight's file layout; with the
//! attribute `weight_rows` (the trainer's row layout, `docs/architecture.md`,
//! "Sparse weight gradients") `sparse_linear_grad_weight` is lowered by
//! `sparse/rows_grad.rs` instead.

use super::sparse::{bags, broadcast_strides, fail, push_rows, GRAIN_WORK};
use super::LowerCx;
use crate::back::BackError;
use crate::ir::{Attr, Node};
use netc_runtime::text_grad::{
    BagEmbeddingGradWeight, BagLinearGradWeight, CosineGrad, DssmLossGrad,
};

/// Lowers the text gradient ops; `None` for other ops.
pub fn try_lower(cx: &mut LowerCx, node: &Node) -> Option<Result<(), BackError>> {
    let r = match node.op.name {
        "sparse_linear_grad_weight" => bag_grad(cx, node, false),
        "embedding_bag_grad_weight" => bag_grad(cx, node, true),
        "cosine_similarity_grad" => cosine_grad(cx, node),
        "dssm_loss_grad" => dssm_loss_grad(cx, node),
        _ => return None,
    };
    Some(r)
}

/// `<op>_grad_weight(dy [..., width], bags [..., V])`: `[out, V]` for
/// `sparse_linear`, `[V, dim]` for `embedding_bag`.
fn bag_grad(cx: &mut LowerCx, node: &Node, table: bool) -> Result<(), BackError> {
    let (&dy, &x) = match node.inputs.as_slice() {
        [dy, x] => (dy, x),
        _ => return Err(fail(node, "expects dy and the bags".into())),
    };
    let b = bags(cx, node, x)?;
    let width = *cx
        .shape(dy)?
        .last()
        .ok_or_else(|| fail(node, "dy has no feature dim".into()))?;
    let mut inputs = b.bufs.to_vec();
    inputs.push(cx.buf(dy)?);
    let extents = vec![0, b.rows + 1, 0, b.rows * width];
    let dst = cx.output(node.outputs[0])?;
    // Pieces worth GRAIN_WORK elements of their own output (every piece
    // also reads every bag, which costs far less than a weight's rows).
    let per_row = if table { width } else { b.vocab };
    let grain = (GRAIN_WORK / per_row.max(1)).max(1);
    if table {
        let mean = matches!(node.op.attr("mode"), Some(Attr::Str(m)) if m == "mean");
        let kernel = BagEmbeddingGradWeight {
            bags: b.rows,
            vocab: b.vocab,
            dim: width,
            mean,
        };
        push_rows(cx, kernel, inputs, extents, dst, (b.vocab, width, grain));
    } else {
        let kernel = BagLinearGradWeight {
            bags: b.rows,
            out: width,
            vocab: b.vocab,
        };
        push_rows(cx, kernel, inputs, extents, dst, (width, b.vocab, grain));
    }
    Ok(())
}

/// `cosine_similarity_grad(p, q, dy)` in the broadcast shape.
fn cosine_grad(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let (&p, &q, &dy) = match node.inputs.as_slice() {
        [p, q, dy] => (p, q, dy),
        _ => return Err(fail(node, "expects p, q and dy".into())),
    };
    let full = cx.shape(node.outputs[0])?;
    let (sp, sq) = (cx.shape(p)?, cx.shape(q)?);
    let rank = full.len();
    let dim = match node.op.attr("dim") {
        Some(Attr::Int(d)) => usize::try_from(*d).ok().filter(|d| *d < rank),
        _ => None,
    }
    .ok_or_else(|| fail(node, format!("no valid `dim` for rank {rank}")))?;
    if sp.len() > rank || sq.len() > rank {
        return Err(fail(
            node,
            format!("operands {sp:?} and {sq:?} exceed {full:?}"),
        ));
    }
    let eps = match node.op.attr("eps") {
        Some(Attr::Float(e)) => *e,
        _ => 1e-8,
    };
    let outer: usize = full[..dim].iter().product();
    let width: usize = full[dim..].iter().product();
    let kernel = CosineGrad {
        p_strides: broadcast_strides(&sp, rank),
        q_strides: broadcast_strides(&sq, rank),
        full,
        dim,
        eps,
    };
    let inputs = vec![cx.buf(p)?, cx.buf(q)?, cx.buf(dy)?];
    let extents = vec![sp.iter().product(), sq.iter().product(), cx.numel(dy)?];
    let dst = cx.output(node.outputs[0])?;
    let grain = (GRAIN_WORK / (4 * width).max(1)).max(1);
    push_rows(cx, kernel, inputs, extents, dst, (outer, width, grain));
    Ok(())
}

/// `dssm_loss_grad(scores [N, docs], dloss [])`.
fn dssm_loss_grad(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let (&s, &dloss) = match node.inputs.as_slice() {
        [s, d] => (s, d),
        _ => return Err(fail(node, "expects scores and dloss".into())),
    };
    let shape = cx.shape(s)?;
    let [batch, docs] = shape[..] else {
        return Err(fail(node, format!("scores {shape:?} are not [N, docs]")));
    };
    let inputs = vec![cx.buf(s)?, cx.buf(dloss)?];
    let dst = cx.output(node.outputs[0])?;
    let grain = (GRAIN_WORK / (8 * docs).max(1)).max(1);
    push_rows(
        cx,
        DssmLossGrad { batch, docs },
        inputs,
        vec![batch * docs, 1],
        dst,
        (batch, docs, grain),
    );
    Ok(())
}

#[cfg(test)]
mod tests;
