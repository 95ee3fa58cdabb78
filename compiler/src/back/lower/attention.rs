//! Lowering of `attention` and `timestep_embedding` (the UNet's
//! transformer blocks and first step) to row steps: kernels
//! [`netc_runtime::attention::Attention`] (a row per query token) and
//! [`netc_runtime::timestep::TimestepEmbedding`] (a row per timestep; an
//! integer input arrives as f32 values, as ids do). `attention_grad`
//! (training plans) lowers to [`netc_runtime::attention::grad`]'s steps.

use super::{sparse, LowerCx};
use crate::back::BackError;
use crate::ir::{Attr, Node, ValueId};
use netc_runtime::attention::grad::{KeyGrad, QueryGrad, Unpack};
use netc_runtime::attention::Attention;
use netc_runtime::plan::{Buf, RowKernel, Rows, Step, Work};
use netc_runtime::timestep::TimestepEmbedding;
use std::sync::Arc;

/// Elements of work worth giving a thread.
const GRAIN_WORK: usize = 1 << 15;

/// Lowers `attention` and `timestep_embedding`; `None` for other ops.
pub fn try_lower(cx: &mut LowerCx, node: &Node) -> Option<Result<(), BackError>> {
    match node.op.name {
        "attention" => Some(attention(cx, node)),
        "attention_grad" => Some(backward(cx, node)),
        "timestep_embedding" => Some(timestep_embedding(cx, node)),
        _ => None,
    }
}

fn fail(node: &Node, what: String) -> BackError {
    BackError(format!("`{}` at {}: {what}", node.op.name, node.path))
}

fn float(node: &Node, key: &str, default: f64) -> f64 {
    match node.op.attr(key) {
        Some(Attr::Float(v)) => *v,
        Some(Attr::Int(v)) => *v as f64,
        _ => default,
    }
}

/// Appends one row step of `kernel` over `rows` rows of `width`, each
/// row `work_per_row` units of work, reading `inputs` (`extents` of each)
/// into `out`.
#[allow(clippy::too_many_arguments)]
fn push_rows(
    cx: &mut LowerCx,
    kernel: impl RowKernel + 'static,
    rows: usize,
    width: usize,
    work_per_row: usize,
    inputs: &[ValueId],
    extents: Vec<usize>,
    out: ValueId,
) -> Result<(), BackError> {
    let inputs = cx.buf_list(inputs)?;
    let output = cx.output(out)?;
    if rows * width > 0 {
        let grain = (GRAIN_WORK / work_per_row.max(1)).max(1);
        sparse::push_rows(cx, kernel, inputs, extents, output, (rows, width, grain));
    }
    Ok(())
}

/// `attention(q, k, v, heads, scale)` over `[..., L, C]`, `[..., S, C]`,
/// `[..., S, Cv]`.
fn attention(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let [q, k, v] = node.inputs[..] else {
        return Err(fail(node, format!("{} operands, not 3", node.inputs.len())));
    };
    let (kernel, batch) = describe(cx, node, [q, k, v])?;
    let (l, c, s, cv) = (kernel.queries, kernel.dim, kernel.keys, kernel.value_dim);
    let extents = vec![batch * l * c, batch * s * c, batch * s * cv];
    push_rows(
        cx,
        kernel,
        batch * l,
        cv,
        s * (c + cv),
        &[q, k, v],
        extents,
        node.outputs[0],
    )
}

/// `attention_grad(dout, q, k, v) -> dq, dk, dv` in two row steps of
/// [`netc_runtime::attention::grad`] into two scratch regions (a row per
/// query token of `dq` and its softmax statistics, then a row per key
/// token of `dk | dv`), each split over threads by tokens, then the three
/// gradients copied out of their rows.
fn backward(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let [_, q, k, v] = node.inputs[..] else {
        return Err(fail(node, format!("{} operands, not 4", node.inputs.len())));
    };
    let (attention, batch) = describe(cx, node, [q, k, v])?;
    let (l, c, s, cv) = (
        attention.queries,
        attention.dim,
        attention.keys,
        attention.value_dim,
    );
    let inputs = cx.buf_list(&node.inputs)?;
    let outputs = cx.output_list(&node.outputs)?;
    let queries = QueryGrad {
        attention: attention.clone(),
    };
    let keys = KeyGrad { attention };
    let (qw, kw) = (queries.width(), keys.width());
    if batch * l * s == 0 || outputs.len() != 3 {
        return Ok(());
    }
    let (qlen, klen) = (batch * l * qw, batch * s * kw);
    // Two regions of the scratch: the key step reads the query step's rows.
    let at = qlen.div_ceil(16) * 16;
    let base = match cx.scratch(at + klen) {
        Buf::Arena { offset, .. } => offset,
        other => {
            return Err(fail(
                node,
                format!("the scratch region is {other:?}, not in the arena"),
            ))
        }
    };
    let (qrows, krows) = (
        Buf::Arena {
            offset: base,
            len: qlen,
        },
        Buf::Arena {
            offset: base + at,
            len: klen,
        },
    );
    let rows = |kernel: Arc<dyn RowKernel>, rows: usize, width: usize, grain: usize| {
        Work::Rows(Rows {
            kernel,
            rows,
            width,
            grain,
        })
    };
    // A query row's work: its logits, dp and dq against every key; a key
    // row's: its logits, dp, dk and dv against every query.
    let grain = |others: usize| (GRAIN_WORK / (others * (2 * c + 2 * cv)).max(1)).max(1);
    let extents = [batch * l * cv, batch * l * c, batch * s * c, batch * s * cv];
    cx.push(Step {
        work: rows(Arc::new(queries), batch * l, qw, grain(s)),
        inputs: inputs.clone(),
        output: qrows,
        extents: [&extents[..], &[qlen]].concat(),
    });
    cx.push(Step {
        work: rows(Arc::new(keys), batch * s, kw, grain(l)),
        inputs: [&inputs[..], &[qrows]].concat(),
        output: krows,
        extents: [&extents[..], &[qlen, klen]].concat(),
    });
    let copies = [
        (qrows, qw, 0, l, c),
        (krows, kw, 0, s, c),
        (krows, kw, c, s, cv),
    ];
    for ((src, stride, offset, per_item, width), output) in copies.into_iter().zip(outputs) {
        let unpack = Unpack {
            stride,
            offset,
            width,
        };
        cx.push(Step {
            work: rows(Arc::new(unpack), batch * per_item, width, 1),
            inputs: vec![src],
            output,
            extents: vec![batch * per_item * stride, batch * per_item * width],
        });
    }
    Ok(())
}

/// The forward kernel's description of the call on `q`, `k`, `v` (shapes
/// checked) and the number of batch items.
fn describe(
    cx: &LowerCx,
    node: &Node,
    [q, k, v]: [ValueId; 3],
) -> Result<(Attention, usize), BackError> {
    let (qs, ks, vs) = (cx.shape(q)?, cx.shape(k)?, cx.shape(v)?);
    let r = qs.len();
    if r < 2
        || ks.len() != r
        || vs.len() != r
        || qs[..r - 2] != ks[..r - 2]
        || ks[..r - 1] != vs[..r - 1]
    {
        return Err(fail(
            node,
            format!("cannot attend {qs:?} over {ks:?} and {vs:?}"),
        ));
    }
    let heads = match node.op.attr("heads") {
        Some(Attr::Int(h)) if *h > 0 => *h as usize,
        other => return Err(fail(node, format!("bad `heads` {other:?}"))),
    };
    let (l, c, s, cv) = (qs[r - 2], qs[r - 1], ks[r - 2], vs[r - 1]);
    let batch: usize = qs[..r - 2].iter().product();
    let kernel = Attention {
        queries: l,
        keys: s,
        dim: c,
        value_dim: cv,
        heads,
        scale: float(node, "scale", 1.0) as f32,
    };
    Ok((kernel, batch))
}

/// `timestep_embedding(t, dim, ...)`: `t [N]` → `[N, dim]`.
fn timestep_embedding(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let t = node.inputs[0];
    let n: usize = cx
        .sizes(t)
        .ok_or_else(|| fail(node, "the number of timesteps is not given".into()))?
        .iter()
        .product();
    let dim = match node.op.attr("dim") {
        Some(Attr::Int(d)) if *d >= 0 => *d as usize,
        other => return Err(fail(node, format!("bad `dim` {other:?}"))),
    };
    let kernel = TimestepEmbedding {
        dim,
        flip_sin_to_cos: !matches!(node.op.attr("flip_sin_to_cos"), Some(Attr::Bool(false))),
        shift: float(node, "shift", 0.0),
        max_period: float(node, "max_period", 10000.0),
        scale: float(node, "scale", 1.0),
    };
    push_rows(cx, kernel, n, dim, dim * 16, &[t], vec![n], node.outputs[0])
}

#[cfg(test)]
mod tests;
