//! Lowering of the recurrent and lookup layers and their gradient ops to
//! runtime row steps ([`Work::Rows`], kernels in `netc_runtime::rnn`):
//!
//! - `embedding(ids, w)`: a gather of table rows, one output row per id,
//!   parallel over ids. Ids are f32 values in the plan (the host converts
//!   i64 ids, see `session.rs`); the kernel refuses an id outside the
//!   table with an error naming the layer.
//! - `lstm` and `lstm_state`: one row step, parallel over sequences, or
//!   with few sequences one call split by hidden units over the threads
//!   (`netc_runtime::rnn::forward_threads`), computing the input
//!   projection, the recurrent product and the cell
//!   (`netc_runtime::rnn::LstmForward`). `returns = "both"`
//!   writes the sequence and copies its last step.
//! - `lstm_grad_gates`: backpropagation through time over the state
//!   `lstm_state` kept, parallel over sequences.
//! - The LSTM kernels read the weights re-laid-out by an `LstmPack` step:
//!   a prepare step into the persistent region when the weights are
//!   parameters (once per weight load; [`persistent_len`] sizes it), else
//!   a run step into the scratch region just before the kernel.
//! - `embedding_grad(dy, ids)`: the table gradient, parallel over table
//!   rows (each piece scans the ids and adds the rows it owns).
//!
//! Time-first sequences (`batch_first = false`) interleave sequences in
//! memory, so their per-position steps are one row piece (the forward
//! splits it by hidden units where the CPU has AVX-512F).

use super::align;
use super::sparse::push_rows;
use super::LowerCx;
use crate::back::BackError;
use crate::ir::{Attr, Node, ValueId};
use netc_runtime::plan::Buf;
use netc_runtime::rnn::{
    backward_len, forward_len, forward_threads, Gather, LastStep, LstmBackward, LstmForward,
    LstmOutput, LstmPack, PackFor, ScatterAdd, Seqs, STATE_WIDTH,
};

/// Elements worth giving a thread of a gather or scatter.
const GRAIN_ELEMS: usize = 1 << 14;

/// Lowers the recurrent and lookup ops; `None` for other ops.
pub fn try_lower(cx: &mut LowerCx, node: &Node) -> Option<Result<(), BackError>> {
    let r = match node.op.name {
        "embedding" => embedding(cx, node),
        "embedding_grad" => embedding_grad(cx, node),
        "lstm" | "lstm_state" => lstm(cx, node),
        "lstm_grad_gates" => lstm_grad_gates(cx, node),
        _ => return None,
    };
    Some(r)
}

/// The error for `node` with `what` wrong.
fn fail(node: &Node, what: String) -> BackError {
    let at: &str = if node.path.is_empty() {
        "the model"
    } else {
        &node.path
    };
    BackError(format!("`{}` at {at}: {what}", node.op.name))
}

/// The concrete shape of `v` of any dtype (ids are integers).
fn dims(cx: &LowerCx, node: &Node, v: ValueId) -> Result<Vec<usize>, BackError> {
    cx.sizes(v).ok_or_else(|| {
        fail(
            node,
            format!("the sizes of {} are not given", cx.g.type_text(cx.g.ty(v))),
        )
    })
}

fn int(node: &Node, k: &str) -> Result<usize, BackError> {
    match node.op.attr(k) {
        Some(Attr::Int(v)) => usize::try_from(*v).map_err(|_| fail(node, format!("`{k}` = {v}"))),
        _ => Err(fail(node, format!("missing `{k}`"))),
    }
}

fn flag(node: &Node, k: &str) -> bool {
    matches!(node.op.attr(k), Some(Attr::Bool(true)))
}

/// Rows worth giving a thread when each is `width` elements.
fn grain(width: usize) -> usize {
    (GRAIN_ELEMS / width.max(1)).max(1)
}

/// `embedding(ids, w [V, D])`.
fn embedding(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let (&ids, &w) = match node.inputs.as_slice() {
        [i, w] => (i, w),
        _ => return Err(fail(node, "expects ids and a table".into())),
    };
    let positions: usize = dims(cx, node, ids)?.iter().product();
    let [vocab, width] = cx.shape(w)?[..] else {
        return Err(fail(node, "the table is not [V, D]".into()));
    };
    let inputs = vec![cx.buf(ids)?, cx.buf(w)?];
    let dst = cx.output(node.outputs[0])?;
    let kernel = Gather {
        name: node.path.clone(),
        vocab,
        width,
    };
    let extents = vec![positions, vocab * width];
    push_rows(
        cx,
        kernel,
        inputs,
        extents,
        dst,
        (positions, width, grain(width)),
    );
    Ok(())
}

/// `embedding_grad(dy [..., D], ids)` -> `[V, D]`.
fn embedding_grad(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let (&dy, &ids) = match node.inputs.as_slice() {
        [d, i] => (d, i),
        _ => return Err(fail(node, "expects dy and ids".into())),
    };
    let positions: usize = dims(cx, node, ids)?.iter().product();
    let [vocab, width] = cx.shape(node.outputs[0])?[..] else {
        return Err(fail(node, "the table gradient is not [V, D]".into()));
    };
    if cx.numel(dy)? != positions * width {
        return Err(fail(
            node,
            format!("dy {:?} is not one row of {width} per id", cx.shape(dy)?),
        ));
    }
    let padding = match node.op.attr("padding_idx") {
        Some(Attr::Int(p)) => usize::try_from(*p).ok(),
        _ => None,
    };
    let inputs = vec![cx.buf(dy)?, cx.buf(ids)?];
    let dst = cx.output(node.outputs[0])?;
    let kernel = ScatterAdd {
        name: node.path.clone(),
        vocab,
        width,
        positions,
        padding,
    };
    let extents = vec![positions * width, positions];
    push_rows(
        cx,
        kernel,
        inputs,
        extents,
        dst,
        (vocab, width, grain(width)),
    );
    Ok(())
}

/// The sequences of an input-shaped tensor of `shape` (`[N.., T, F]`
/// batch-first, `[T, N, F]` time-first) for the node's `hidden`.
fn sequences(node: &Node, shape: &[usize]) -> Result<Seqs, BackError> {
    let batch_first = flag(node, "batch_first");
    let r = shape.len();
    if r < 3 {
        return Err(fail(node, format!("{shape:?} is not a sequence [N, T, F]")));
    }
    let steps = if batch_first { shape[r - 2] } else { shape[0] };
    let positions: usize = shape[..r - 1].iter().product();
    Ok(Seqs {
        hidden: int(node, "hidden")?,
        steps,
        seqs: positions / steps.max(1),
        batch_first,
    })
}

/// The packing of `node`'s weights: `(what, weights, elements)`, the
/// weights as graph values.
fn packing(
    cx: &LowerCx,
    node: &Node,
) -> Result<Option<(LstmPack, Vec<ValueId>, usize)>, BackError> {
    if !matches!(node.op.name, "lstm" | "lstm_state" | "lstm_grad_gates") {
        return Ok(None);
    }
    let h = int(node, "hidden")?;
    Ok(match node.op.name {
        "lstm" | "lstm_state" => {
            let (w_ih, w_hh) = (node.inputs[1], node.inputs[2]);
            let input = match cx.shape(w_ih)?[..] {
                [_, d] => d,
                _ => {
                    return Err(fail(
                        node,
                        format!("weight_ih {:?} is not [4H, D]", cx.shape(w_ih)?),
                    ))
                }
            };
            let pack = LstmPack {
                hidden: h,
                input,
                dir: PackFor::Forward,
            };
            let ws = vec![w_ih, w_hh, node.inputs[3], node.inputs[4]];
            Some((pack, ws, forward_len(h, input)))
        }
        "lstm_grad_gates" => {
            let pack = LstmPack {
                hidden: h,
                input: 0,
                dir: PackFor::Backward,
            };
            Some((pack, vec![node.inputs[1]], backward_len(h)))
        }
        _ => None,
    })
}

/// Persistent elements the packed LSTM weights need: one packing per
/// LSTM node whose weights are parameters.
pub fn persistent_len(cx: &LowerCx, nodes: &[&Node]) -> Result<usize, BackError> {
    let mut len = 0;
    for n in nodes {
        if let Some((_, ws, elems)) = packing(cx, n)? {
            if ws.iter().all(|w| cx.derived.contains(w)) {
                len += align(elems);
            }
        }
    }
    Ok(len)
}

/// The buffer of `node`'s packed weights, after pushing the step that
/// packs them (a prepare step for parameters).
fn packed(cx: &mut LowerCx, node: &Node) -> Result<Buf, BackError> {
    let Some((pack, ws, len)) = packing(cx, node)? else {
        return Err(fail(node, "has no packed weights".into()));
    };
    let mut inputs = Vec::with_capacity(ws.len());
    let mut extents = Vec::with_capacity(ws.len());
    for &w in &ws {
        inputs.push(cx.buf(w)?);
        extents.push(cx.numel(w)?);
    }
    if ws.iter().all(|w| cx.derived.contains(w)) {
        let dst = cx.persistent(len);
        cx.preparing(|cx| push_rows(cx, pack, inputs, extents, dst, (1, len, 1)));
        Ok(dst)
    } else {
        let dst = cx.scratch(len);
        push_rows(cx, pack, inputs, extents, dst, (1, len, 1));
        Ok(dst)
    }
}

/// `lstm(x, w_ih, w_hh, b_ih, b_hh[, w_ci, w_cf, w_co])` and
/// `lstm_state` (same operands).
fn lstm(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let peephole = flag(node, "peephole");
    if node.inputs.len() != if peephole { 8 } else { 5 } {
        return Err(fail(node, format!("{} operands", node.inputs.len())));
    }
    let xs = cx.shape(node.inputs[0])?;
    let q = sequences(node, &xs)?;
    let (h, g4, d) = (q.hidden, 4 * q.hidden, xs[xs.len() - 1]);
    let packed = packed(cx, node)?;
    let mut inputs = Vec::with_capacity(node.inputs.len());
    let mut extents = Vec::with_capacity(node.inputs.len());
    for (k, &v) in node.inputs.iter().enumerate() {
        let want = [q.seqs * q.steps * d, g4 * d, g4 * h, g4, g4, h, h, h][k];
        if cx.numel(v)? != want {
            return Err(fail(node, format!("operand {k} is {:?}", cx.shape(v)?)));
        }
        // The biases reach the kernel inside the packing.
        if k == 3 {
            inputs.push(packed);
            extents.push(forward_len(h, d));
        }
        if k != 3 && k != 4 {
            inputs.push(cx.buf(v)?);
            extents.push(want);
        }
    }
    let ret = match (node.op.name, node.op.attr("returns")) {
        ("lstm_state", _) => "state",
        (_, Some(Attr::Str(r))) => r.as_str(),
        _ => "last",
    };
    let (output, per) = match ret {
        "state" => (LstmOutput::State, STATE_WIDTH * h),
        "last" => (LstmOutput::Last, h),
        _ => (LstmOutput::Sequence, h),
    };
    let (rows, width) = match output {
        LstmOutput::Last => (q.seqs, h),
        _ => q.step_rows(per),
    };
    // Few sequences: one call whose threads split every step by hidden
    // units; else pieces of sequences, one per thread.
    let threads = forward_threads(&q, cx.options.threads);
    let kernel = LstmForward {
        seqs: q,
        input: d,
        peephole,
        output,
        threads,
    };
    let dst = cx.output(node.outputs[0])?;
    let piece_rows = if threads > 1 { rows } else { 1 };
    push_rows(cx, kernel, inputs, extents, dst, (rows, width, piece_rows));
    if ret == "both" {
        let last = cx.output(node.outputs[1])?;
        let n = q.seqs * q.steps * h;
        push_rows(
            cx,
            LastStep { seqs: q },
            vec![dst],
            vec![n],
            last,
            (q.seqs, h, grain(h)),
        );
    }
    Ok(())
}

/// `lstm_grad_gates(state, w_hh[, dseq][, dlast][, w_ci, w_cf, w_co])`.
fn lstm_grad_gates(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let state = cx.shape(node.inputs[0])?;
    let q = sequences(node, &state)?;
    let (h, g4) = (q.hidden, 4 * q.hidden);
    let positions = q.seqs * q.steps;
    let (peephole, seq_grad, last_grad) = (
        flag(node, "peephole"),
        flag(node, "seq_grad"),
        flag(node, "last_grad"),
    );
    let mut want = vec![positions * STATE_WIDTH * h, g4 * h];
    if seq_grad {
        want.push(positions * h);
    }
    if last_grad {
        want.push(q.seqs * h);
    }
    if peephole {
        want.extend([h; 3]);
    }
    if node.inputs.len() != want.len() {
        return Err(fail(node, format!("{} operands", node.inputs.len())));
    }
    let mut inputs = Vec::with_capacity(want.len() + 1);
    for (&v, &n) in node.inputs.iter().zip(&want) {
        if cx.numel(v)? != n {
            return Err(fail(
                node,
                format!("operand {:?} does not hold {n} elements", cx.shape(v)?),
            ));
        }
        inputs.push(cx.buf(v)?);
    }
    inputs.insert(2, packed(cx, node)?);
    want.insert(2, backward_len(h));
    let kernel = LstmBackward {
        seqs: q,
        peephole,
        seq_grad,
        last_grad,
    };
    let (rows, width) = q.step_rows(g4);
    let dst = cx.output(node.outputs[0])?;
    push_rows(cx, kernel, inputs, want, dst, (rows, width, 1));
    Ok(())
}

#[cfg(test)]
mod tests;
