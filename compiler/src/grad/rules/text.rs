//! Backward rules of the text-matching ops (ops/embed.rs): the layers over
//! sparse bags (`sparse_linear`, `embedding_bag`), `cosine_similarity` and
//! the DSSM loss. A sparse bag input is data, never trained: it gets no
//! gradient (asking for one is an error).
//!
//! - `sparse_linear(x, w [out, V], b)`: `sparse_linear_grad_weight(dy, x)`
//!   is `dyᵀ x` in the weight's layout `[out, V]`; `db = Σ dy`.
//! - `embedding_bag(x, w [V, dim])`: `embedding_bag_grad_weight(dy, x)`
//!   scatters `value · dy` (divided by the bag's non-zero count in `mean`
//!   mode) into the rows of the bag's ids.
//! - `cosine_similarity(a, b)`: `cosine_similarity_grad(a, b, dy)` is the
//!   gradient with respect to its first operand in the broadcast shape
//!   (the second operand's is the same op with `a` and `b` swapped), then
//!   summed back to the operand's shape. PyTorch's eps semantics: the norms
//!   are clamped to `eps` without a gradient through the clamp, so
//!   `d|a|/da = a/|a|` (0 for `a = 0`) even where the clamp is active.
//! - `dssm_loss(s)`: `dssm_loss_grad(s, dloss)` is
//!   `dloss / N · (softmax(s_i) - e_0)`.

use super::{only, GradCx, GradError, Rule};
use crate::ir::{Attr, Node, Op, ValueId};
use crate::passes::rewrite::per_element;

/// The family's rules.
pub const RULES: &[(&str, Rule)] = &[
    ("sparse_linear", sparse_linear),
    ("embedding_bag", embedding_bag),
    ("cosine_similarity", cosine_similarity),
    ("dssm_loss", dssm_loss),
];

type Grads = Result<Vec<Option<ValueId>>, GradError>;

/// Refuses a gradient for the sparse bags (operand 0).
fn no_bag_gradient(cx: &GradCx, needs: &[bool]) -> Result<(), GradError> {
    if needs.first() == Some(&true) {
        return Err(cx.error(
            "sparse bag inputs are data: no gradient flows into them (feed them from a model input)",
        ));
    }
    Ok(())
}

fn sparse_linear(cx: &mut GradCx, n: &Node, d: &[Option<ValueId>], needs: &[bool]) -> Grads {
    no_bag_gradient(cx, needs)?;
    let dy = only(cx, d)?;
    let (x, w) = (n.inputs[0], n.inputs[1]);
    let mut out = vec![None; n.inputs.len()];
    if needs[1] {
        let mut op = Op::new("sparse_linear_grad_weight");
        op.attrs = n.op.attrs.clone();
        out[1] = Some(cx.emit1(op, vec![dy, x], cx.ty(w), n.flops.clone()));
    }
    if n.inputs.len() > 2 && needs[2] {
        let rank = cx.ty(dy).rank();
        out[2] = Some(cx.sum(dy, &(0..rank - 1).collect::<Vec<_>>(), false));
    }
    Ok(out)
}

fn embedding_bag(cx: &mut GradCx, n: &Node, d: &[Option<ValueId>], needs: &[bool]) -> Grads {
    no_bag_gradient(cx, needs)?;
    let dy = only(cx, d)?;
    let (x, w) = (n.inputs[0], n.inputs[1]);
    let mut out = vec![None; n.inputs.len()];
    if needs[1] {
        let mut op = Op::new("embedding_bag_grad_weight");
        op.attrs = n.op.attrs.clone();
        out[1] = Some(cx.emit1(op, vec![dy, x], cx.ty(w), n.flops.clone()));
    }
    Ok(out)
}

fn cosine_similarity(cx: &mut GradCx, n: &Node, d: &[Option<ValueId>], needs: &[bool]) -> Grads {
    let dy = only(cx, d)?;
    let (a, b) = (n.inputs[0], n.inputs[1]);
    let dim = match n.op.attr("dim") {
        Some(Attr::Int(k)) => *k as usize,
        _ => return Err(cx.error("the forward has no `dim`")),
    };
    // The broadcast shape: the result with the reduced dim put back.
    let (ta, tb) = (cx.ty(a), cx.ty(b));
    let rank = ta.rank().max(tb.rank());
    let at = |t: &crate::ir::TensorType, k: usize| {
        (k + t.rank()).checked_sub(rank).map(|i| t.shape[i].clone())
    };
    let mut shape = Vec::with_capacity(rank);
    for k in 0..rank {
        let dim_k = match (at(&ta, k), at(&tb, k)) {
            (Some(p), Some(q)) if p.as_known() == Some(1) => q,
            (Some(p), _) => p,
            (None, Some(q)) => q,
            (None, None) => return Err(cx.error("operands of rank 0")),
        };
        shape.push(dim_k);
    }
    let full = crate::ir::TensorType::new(ta.dtype, shape);
    let flops = per_element(&full).scale(8);
    let mut out = vec![None; 2];
    for (k, (first, second)) in [(a, b), (b, a)].into_iter().enumerate() {
        if !needs[k] {
            continue;
        }
        let op = Op::new("cosine_similarity_grad")
            .with("dim", Attr::Int(dim as i64))
            .with(
                "eps",
                n.op.attr("eps").cloned().unwrap_or(Attr::Float(1e-8)),
            );
        let g = cx.emit1(op, vec![first, second, dy], full.clone(), flops.clone());
        out[k] = Some(cx.unbroadcast(g, first)?);
    }
    Ok(out)
}

fn dssm_loss(cx: &mut GradCx, n: &Node, d: &[Option<ValueId>], _: &[bool]) -> Grads {
    let dloss = only(cx, d)?;
    let s = n.inputs[0];
    let flops = per_element(&cx.ty(s)).scale(4);
    let ds = cx.emit1(Op::new("dssm_loss_grad"), vec![s, dloss], cx.ty(s), flops);
    Ok(vec![Some(ds)])
}

#[cfg(test)]
mod tests;
