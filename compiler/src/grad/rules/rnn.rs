//! Backward rules of the recurrent and lookup layers: `lstm`
//! (backpropagation through time) and `embedding` (scatter-add into the
//! table; ids get no gradient).
//!
//! `lstm` stores nothing extra in the forward pass: its rule re-runs the
//! recurrence as `lstm_state`, which keeps per position the gate
//! activations, `c_t`, `c_{t-1}` and `h_{t-1}` (`7H` values), so the
//! forward node itself stays the plain inference kernel and the extra
//! memory lives only from the backward's start to its end. From the state,
//! `lstm_grad_gates` runs the recurrence backwards to the gradients `G` of
//! the four gate pre-activations at every position; everything else is a
//! product over positions with existing ops:
//!
//! - `dx = G · W_ih` (`linear_grad_input`), `dW_ih = Gᵀ · x` and
//!   `dW_hh = Gᵀ · h_{t-1}` (`linear_grad_weight`);
//! - `db_ih = db_hh = Σ G` over positions;
//! - peepholes: `dw_ci = Σ G_i ⊙ c_{t-1}`, `dw_cf = Σ G_f ⊙ c_{t-1}`,
//!   `dw_co = Σ G_o ⊙ c_t` (slices of `G` and of the state).

use super::{only, GradCx, GradError, Rule};
use crate::ir::{Attr, Dim, Node, Op, TensorType, ValueId};
use crate::passes::rewrite::per_element;

/// The family's rules.
pub const RULES: &[(&str, Rule)] = &[("lstm", lstm), ("embedding", embedding)];

type Grads = Result<Vec<Option<ValueId>>, GradError>;

/// `embedding(ids, w)`: `dw = embedding_grad(dy, ids)` with the forward's
/// `padding_idx`.
fn embedding(cx: &mut GradCx, n: &Node, d: &[Option<ValueId>], needs: &[bool]) -> Grads {
    let dy = only(cx, d)?;
    let mut out = vec![None; n.inputs.len()];
    if needs.get(1) == Some(&true) {
        let mut op = Op::new("embedding_grad");
        op.attrs = n.op.attrs.clone();
        let w = n.inputs[1];
        let flops = per_element(&cx.ty(dy));
        out[1] = Some(cx.emit1(op, vec![dy, n.inputs[0]], cx.ty(w), flops));
    }
    Ok(out)
}

/// `x` with its last dim replaced by `features`.
fn with_features(t: &TensorType, features: i64) -> TensorType {
    let mut shape = t.shape.clone();
    if let Some(last) = shape.last_mut() {
        *last = Dim::known(features);
    }
    TensorType::new(t.dtype, shape)
}

fn lstm(cx: &mut GradCx, n: &Node, d: &[Option<ValueId>], needs: &[bool]) -> Grads {
    let int = |k: &str| match n.op.attr(k) {
        Some(Attr::Int(v)) => Ok(*v),
        _ => Err(cx.error(format!("missing `{k}`"))),
    };
    let flag = |k: &str| matches!(n.op.attr(k), Some(Attr::Bool(true)));
    let h = int("hidden")?;
    let peephole = flag("peephole");
    let batch_first = flag("batch_first");
    let (dseq, dlast) = match n.op.attr("returns") {
        Some(Attr::Str(r)) if r == "sequence" => (d.first().copied().flatten(), None),
        Some(Attr::Str(r)) if r == "both" => {
            (d.first().copied().flatten(), d.get(1).copied().flatten())
        }
        _ => (None, d.first().copied().flatten()),
    };
    let (x, w_ih, w_hh) = (n.inputs[0], n.inputs[1], n.inputs[2]);
    let tx = cx.ty(x);
    let rank = tx.rank();
    let input = tx.shape[rank - 1]
        .as_known()
        .ok_or_else(|| cx.error("a symbolic feature count"))?;
    let attrs = |op: Op| {
        op.with("hidden", Attr::Int(h))
            .with("peephole", Attr::Bool(peephole))
            .with("batch_first", Attr::Bool(batch_first))
    };
    let state = cx.emit1(
        attrs(Op::new("lstm_state")),
        n.inputs.clone(),
        with_features(&tx, 7 * h),
        n.flops.clone(),
    );
    let mut inputs = vec![state, w_hh];
    inputs.extend(dseq);
    inputs.extend(dlast);
    if peephole {
        inputs.extend(&n.inputs[5..8]);
    }
    let gates_ty = with_features(&tx, 4 * h);
    // Per position and unit: about 30 elementwise operations, and the
    // 4H x H product with W_hh.
    let positions = per_element(&with_features(&tx, 1));
    let g = cx.emit1(
        attrs(Op::new("lstm_grad_gates"))
            .with("seq_grad", Attr::Bool(dseq.is_some()))
            .with("last_grad", Attr::Bool(dlast.is_some())),
        inputs,
        gates_ty.clone(),
        positions.scale(8 * h * h + 30 * h),
    );
    let per_gate = per_element(&gates_ty);
    let mut out = vec![None; n.inputs.len()];
    if needs[0] {
        out[0] = Some(cx.emit1(
            Op::new("linear_grad_input"),
            vec![g, w_ih],
            tx.clone(),
            per_gate.scale(2 * input),
        ));
    }
    if needs[1] {
        out[1] = Some(cx.emit1(
            Op::new("linear_grad_weight"),
            vec![g, x],
            cx.ty(w_ih),
            per_gate.scale(2 * input),
        ));
    }
    let slice = |cx: &mut GradCx, v: ValueId, k: i64| {
        let op = Op::new("slice")
            .with("dim", Attr::Int(rank as i64 - 1))
            .with("start", Attr::Int(k * h))
            .with("end", Attr::Int((k + 1) * h))
            .with("step", Attr::Int(1));
        cx.emit1(op, vec![v], with_features(&tx, h), Dim::known(0))
    };
    if needs[2] {
        let h_prev = slice(cx, state, 6);
        out[2] = Some(cx.emit1(
            Op::new("linear_grad_weight"),
            vec![g, h_prev],
            cx.ty(w_hh),
            per_gate.scale(2 * h),
        ));
    }
    let lead: Vec<usize> = (0..rank - 1).collect();
    if needs[3] || needs[4] {
        let db = cx.sum(g, &lead, false);
        out[3] = needs[3].then_some(db);
        out[4] = needs[4].then_some(db);
    }
    if peephole {
        // (weight input, gate, state slot it multiplies): c_{t-1} is slot
        // 5 of the state, c_t slot 4.
        for (k, gate, slot) in [(5, 0, 5), (6, 1, 5), (7, 3, 4)] {
            if needs[k] {
                let dg = slice(cx, g, gate);
                let c = slice(cx, state, slot);
                let prod = cx.binary("mul", dg, c);
                out[k] = Some(cx.sum(prod, &lead, false));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod fd_tests;
