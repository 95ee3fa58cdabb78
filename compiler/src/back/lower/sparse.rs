//! Lowering of the ops over sparse bag inputs (`sparse_linear`,
//! `embedding_bag`) and of the DSSM scoring ops (`cosine_similarity`,
//! `dssm_loss`) to runtime row steps ([`Work::Rows`], kernels in
//! `netc_runtime::sparse` and `netc_runtime::similarity`).
//!
//! A sparse input `q: sparse f32[..., V]` is never densified: it enters
//! the plan as three executor inputs, `q.indices`, `q.offsets` and
//! `q.values` ([`executor_inputs`]; encoding in `netc_runtime::sparse`).
//! How many entries the bags hold is known only at run time, and only the
//! kernels that read the bags depend on it: their outputs are dense
//! (`[rows, out]`), so nothing in the arena has a data-dependent size. The
//! row kernels see each buffer's actual length and check the CSR
//! invariants as they read. Row steps, rather than generated kernels,
//! because a generated kernel sees base pointers only and the loop bounds
//! come from the data.
//!
//! - `sparse_linear`: its `[out, V]` weight (`nn.Linear`'s layout) is
//!   packed to `[V, out]` in a prepare step, once per weight load and per
//!   distinct weight (shared towers pack once), so a bag entry adds one
//!   contiguous row: `out[r] = bias + Σ values · Wt[id]`. With the
//!   attribute `weight_rows` (training plans, `compiler/src/train/rows.rs`)
//!   the weight is stored `[V, out]` already and read as it is.
//! - `embedding_bag`: the same product over its `[V, dim]` table as it is,
//!   `mean` dividing by the bag's non-zero count.
//! - `bag_conv1d`: its `[C, V, k]` weight is packed to `[V, k, C]` (the
//!   same transpose of `[C, V·k]`; stored so with `weight_rows`), and
//!   every output position adds, per tap, the rows of the bag that tap
//!   reads.
//! - their weight gradients with `weight_rows`: row-wise over the ids a
//!   step touches ([`rows_grad`]); without it, dense in the parameter's
//!   layout (`text_grad.rs`, [`conv_grad`]).
//! - `cosine_similarity`: one output element per row, any reduced dim,
//!   operands broadcast through zero strides.
//! - `dssm_loss`: one row, the batch mean of `-log softmax(s)[0]`.
//!
//! Bag products run in parallel over bags in pieces worth at least
//! ~64k multiply-adds (from the op's `nnz` hint).

use super::{align, LowerCx};
use crate::back::BackError;
use crate::ir::{Attr, Graph, Node, ValueId};
use netc_runtime::plan::{Buf, RowKernel, Rows, Step, Work};
use netc_runtime::similarity::{Cosine, DssmLoss};
use netc_runtime::sparse::{encode, BagConv, BagProduct, CsrBuffers, Transpose};
use netc_runtime::text::bags::SparseBags;
use netc_runtime::Tensor;
use std::collections::HashSet;
use std::sync::Arc;

mod conv_grad;
mod rows_grad;

/// The executor buffers of a sparse input `q`, in order: `q.indices`,
/// `q.offsets`, `q.values`.
pub const SPARSE_PARTS: [&str; 3] = ["indices", "offsets", "values"];

/// Multiply-adds worth giving a thread of a bag product.
pub(super) const GRAIN_WORK: usize = 1 << 16;

/// The executor inputs of `g`'s inputs, in order: a dense input is one
/// buffer under its own name; a sparse input `q` three, named
/// `q.indices`, `q.offsets` and `q.values` (all for the same value).
pub fn executor_inputs(g: &Graph) -> Vec<(String, ValueId)> {
    let mut out = Vec::with_capacity(g.inputs.len());
    for (name, v) in &g.inputs {
        if g.ty(*v).sparse {
            out.extend(SPARSE_PARTS.iter().map(|p| (format!("{name}.{p}"), *v)));
        } else {
            out.push((name.clone(), *v));
        }
    }
    out
}

/// The executor buffers of sparse input `name` of shape `shape`
/// (`[..., V]`) from the caller's tensors `name.indices`, `name.offsets`
/// and optional `name.values`: checked by [`SparseBags::from_tensors`]
/// (errors name the tensor), brought to canonical form, and required to
/// hold one bag per row of `shape`.
pub fn host_buffers(
    name: &str,
    shape: &[usize],
    given: &[(&str, &Tensor)],
) -> Result<CsrBuffers, String> {
    if given.iter().any(|(n, _)| *n == name) {
        return Err(format!(
            "input `{name}` is sparse: give `{name}.indices`, `{name}.offsets` and optionally `{name}.values`, not a dense `{name}`"
        ));
    }
    let mut tensors = Vec::with_capacity(3);
    for (n, t) in given {
        match n.strip_prefix(name).and_then(|r| r.strip_prefix('.')) {
            Some(p) if SPARSE_PARTS.contains(&p) => tensors.push((n.to_string(), (*t).clone())),
            Some(_) => {
                return Err(format!(
                    "unknown tensor `{n}`: sparse input `{name}` is `{name}.indices`, `{name}.offsets` and optionally `{name}.values`"
                ))
            }
            None => {}
        }
    }
    let (vocab, lead) = shape
        .split_last()
        .ok_or_else(|| format!("sparse input `{name}` has no vocabulary dim"))?;
    let bags = SparseBags::from_tensors(name, *vocab, &tensors).map_err(|e| e.to_string())?;
    let rows: usize = lead.iter().product();
    if bags.rows() != rows {
        return Err(format!(
            "tensor `{name}.offsets` holds {} bags, but the model was compiled for {rows} (input `{name}` of shape {shape:?})",
            bags.rows()
        ));
    }
    encode(name, &bags)
}

/// Whether `node` (a bag layer or its weight gradient) has its weight in
/// the row layout: one contiguous row per input id (`weight_rows`).
pub fn weight_rows(node: &Node) -> bool {
    matches!(node.op.attr("weight_rows"), Some(Attr::Bool(true)))
}

/// Persistent elements the packed `sparse_linear` and `bag_conv1d`
/// weights need (one copy per distinct weight stored `nn.Linear`-style),
/// and the row-wise weight gradients ([`rows_grad`]).
pub fn persistent_len(cx: &LowerCx, nodes: &[&Node]) -> Result<usize, BackError> {
    let mut seen = HashSet::new();
    let packed: usize = nodes
        .iter()
        .filter(|n| matches!(n.op.name, "sparse_linear" | "bag_conv1d") && !weight_rows(n))
        .filter_map(|n| n.inputs.get(1))
        .filter(|w| seen.insert(**w))
        .map(|w| cx.numel(*w).map(align))
        .sum::<Result<usize, _>>()?;
    let grads: usize = persistent_values(nodes)
        .iter()
        .map(|v| rows_grad::padded_len(cx, *v).map(align))
        .sum::<Result<usize, _>>()?;
    Ok(packed + grads)
}

/// The values the lowering keeps in the persistent region rather than in
/// the memory planner's arena: the row-wise weight gradients, which keep
/// their zero rows from one run to the next.
pub fn persistent_values(nodes: &[&Node]) -> HashSet<ValueId> {
    nodes
        .iter()
        .filter(|n| rows_grad::is_rows_grad(n))
        .filter_map(|n| n.outputs.first().copied())
        .collect()
}

/// Lowers the sparse and scoring ops; `None` for other ops.
pub fn try_lower(cx: &mut LowerCx, node: &Node) -> Option<Result<(), BackError>> {
    let r = match node.op.name {
        "sparse_linear" => sparse_linear(cx, node),
        "embedding_bag" => embedding_bag(cx, node),
        "bag_conv1d" => bag_conv1d(cx, node),
        "cosine_similarity" => cosine_similarity(cx, node),
        "dssm_loss" => dssm_loss(cx, node),
        _ if rows_grad::is_rows_grad(node) => rows_grad::lower(cx, node),
        "bag_conv1d_grad_weight" => conv_grad::lower(cx, node),
        _ => return None,
    };
    Some(r)
}

/// The error for `node` with `what` wrong.
pub(super) fn fail(node: &Node, what: String) -> BackError {
    let at: &str = if node.path.is_empty() {
        "the model"
    } else {
        &node.path
    };
    BackError(format!("`{}` at {at}: {what}", node.op.name))
}

/// A sparse operand: its three executor buffers, bags and vocabulary.
pub(super) struct Bags {
    pub(super) bufs: [Buf; 3],
    /// The leading dims (one bag per position).
    lead: Vec<usize>,
    pub(super) rows: usize,
    pub(super) vocab: usize,
}

/// The sparse operand `v` of `node`, which must be a model input.
pub(super) fn bags(cx: &LowerCx, node: &Node, v: ValueId) -> Result<Bags, BackError> {
    let ty = cx.g.ty(v);
    if !ty.sparse {
        return Err(fail(
            node,
            format!("expects a sparse input, got {}", cx.g.type_text(ty)),
        ));
    }
    let Buf::Input(k) = cx.buf(v)? else {
        return Err(fail(
            node,
            "its sparse operand must be a model input (sparse values are never computed in a plan)"
                .into(),
        ));
    };
    let dims = ty
        .shape
        .iter()
        .map(|d| cx.eval(d).and_then(|n| usize::try_from(n).ok()))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| {
            fail(
                node,
                format!("the sizes of {} are not given", cx.g.type_text(ty)),
            )
        })?;
    let (vocab, lead) = dims
        .split_last()
        .ok_or_else(|| fail(node, "a sparse operand has no vocabulary dim".into()))?;
    Ok(Bags {
        bufs: [Buf::Input(k), Buf::Input(k + 1), Buf::Input(k + 2)],
        lead: lead.to_vec(),
        rows: lead.iter().product(),
        vocab: *vocab,
    })
}

/// Appends a row step: `rows` rows of `width` elements into `output`;
/// `extents` lists what the step reads of each input.
pub(super) fn push_rows(
    cx: &mut LowerCx,
    kernel: impl RowKernel + 'static,
    inputs: Vec<Buf>,
    mut extents: Vec<usize>,
    output: Buf,
    (rows, width, grain): (usize, usize, usize),
) {
    extents.push(rows * width);
    cx.push(Step {
        work: Work::Rows(Rows {
            kernel: Arc::new(kernel),
            rows,
            width,
            grain,
        }),
        inputs,
        output,
        extents,
    });
}

/// Bags per thread for a product of `width` outputs with the op's `nnz`
/// hint of entries per bag.
fn bag_grain(node: &Node, width: usize) -> usize {
    let nnz = match node.op.attr("nnz") {
        Some(Attr::Int(n)) => usize::try_from(*n).unwrap_or(1).max(1),
        _ => 1,
    };
    (GRAIN_WORK / nnz.saturating_mul(width).max(1)).max(1)
}

/// The transposed copy (`[cols, rows]`) of weight `w` viewed as
/// `[rows, cols]`, made by a prepare step the first time a node asks for it.
pub(super) fn packed_weight(
    cx: &mut LowerCx,
    node: &Node,
    w: ValueId,
    out: usize,
    vocab: usize,
) -> Result<Buf, BackError> {
    if let Some(b) = cx.packed.get(&w) {
        return Ok(*b);
    }
    if !cx.derived.contains(&w) {
        return Err(fail(
            node,
            "the weight must be a parameter (it is packed once per weight load)".into(),
        ));
    }
    let src = cx.buf(w)?;
    let dst = cx.persistent(out * vocab);
    let transpose = Transpose {
        rows: out,
        cols: vocab,
    };
    cx.preparing(|cx| {
        push_rows(
            cx,
            transpose,
            vec![src],
            vec![out * vocab],
            dst,
            (vocab, out, (GRAIN_WORK / out.max(1)).max(1)),
        )
    });
    cx.packed.insert(w, dst);
    Ok(dst)
}

/// `sparse_linear(bags, weight [out, V], bias [out]?)` (weight `[V, out]`
/// with `weight_rows`).
fn sparse_linear(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let (&x, &w) = match node.inputs.as_slice() {
        [x, w, ..] => (x, w),
        _ => return Err(fail(node, "expects bags and a weight".into())),
    };
    let b = bags(cx, node, x)?;
    let ws = cx.shape(w)?;
    let rows = weight_rows(node);
    let out = match (rows, &ws[..]) {
        (false, &[out, v]) | (true, &[v, out]) if v == b.vocab => out,
        _ => {
            let want = if rows { "[{}, out]" } else { "[out, {}]" };
            return Err(fail(
                node,
                format!(
                    "weight {ws:?} is not {} for the bags",
                    want.replace("{}", &b.vocab.to_string())
                ),
            ));
        }
    };
    let table = if rows {
        cx.buf(w)?
    } else {
        packed_weight(cx, node, w, out, b.vocab)?
    };
    let mut inputs = b.bufs.to_vec();
    inputs.push(table);
    let mut extents = vec![0, b.rows + 1, 0, out * b.vocab];
    let bias = node.inputs.get(2).copied();
    if let Some(bv) = bias {
        inputs.push(cx.buf(bv)?);
        extents.push(out);
    }
    let kernel = BagProduct {
        vocab: b.vocab,
        width: out,
        bias: bias.is_some(),
        mean: false,
    };
    let dst = cx.output(node.outputs[0])?;
    let grain = bag_grain(node, out);
    push_rows(cx, kernel, inputs, extents, dst, (b.rows, out, grain));
    Ok(())
}

/// `embedding_bag(bags, weight [V, dim])`, mode `sum` or `mean`.
fn embedding_bag(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let (&x, &w) = match node.inputs.as_slice() {
        [x, w] => (x, w),
        _ => return Err(fail(node, "expects bags and a weight".into())),
    };
    let b = bags(cx, node, x)?;
    let ws = cx.shape(w)?;
    let dim = match ws[..] {
        [v, dim] if v == b.vocab => dim,
        _ => {
            return Err(fail(
                node,
                format!("weight {ws:?} is not [{}, dim] for the bags", b.vocab),
            ))
        }
    };
    let mean = matches!(node.op.attr("mode"), Some(Attr::Str(m)) if m == "mean");
    let mut inputs = b.bufs.to_vec();
    inputs.push(cx.buf(w)?);
    let kernel = BagProduct {
        vocab: b.vocab,
        width: dim,
        bias: false,
        mean,
    };
    let dst = cx.output(node.outputs[0])?;
    let grain = bag_grain(node, dim);
    let extents = vec![0, b.rows + 1, 0, b.vocab * dim];
    push_rows(cx, kernel, inputs, extents, dst, (b.rows, dim, grain));
    Ok(())
}

/// `bag_conv1d(bags [..., T, V], weight [C, V, k], bias [C]?)`, stride 1
/// (weight `[V, k, C]` with `weight_rows`).
fn bag_conv1d(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let (&x, &w) = match node.inputs.as_slice() {
        [x, w, ..] => (x, w),
        _ => return Err(fail(node, "expects bags and a weight".into())),
    };
    let b = bags(cx, node, x)?;
    let rows = weight_rows(node);
    let (c, k) = match (rows, &cx.shape(w)?[..]) {
        (false, &[c, v, k]) | (true, &[v, k, c]) if v == b.vocab => (c, k),
        (_, ws) => {
            let want = if rows { "[{}, k, C]" } else { "[C, {}, k]" };
            return Err(fail(
                node,
                format!(
                    "weight {ws:?} is not {} for the bags",
                    want.replace("{}", &b.vocab.to_string())
                ),
            ));
        }
    };
    let pad = match node.op.attr("pad") {
        Some(Attr::Int(p)) => usize::try_from(*p).unwrap_or(0),
        _ => 0,
    };
    let out_shape = cx.shape(node.outputs[0])?;
    let (t_in, t_out) = match (b.lead.last(), out_shape.len().checked_sub(2)) {
        (Some(&t), Some(d)) => (t, out_shape[d]),
        _ => return Err(fail(node, "expects sequences of bags [..., T, V]".into())),
    };
    let table = if rows {
        cx.buf(w)?
    } else {
        packed_weight(cx, node, w, c, b.vocab * k)?
    };
    let mut inputs = b.bufs.to_vec();
    inputs.push(table);
    let mut extents = vec![0, b.rows + 1, 0, c * b.vocab * k];
    let bias = node.inputs.get(2).copied();
    if let Some(bv) = bias {
        inputs.push(cx.buf(bv)?);
        extents.push(c);
    }
    let kernel = BagConv {
        vocab: b.vocab,
        k,
        pad,
        t_in,
        t_out,
        width: c,
        bias: bias.is_some(),
    };
    let rows: usize = out_shape[..out_shape.len() - 1].iter().product();
    let dst = cx.output(node.outputs[0])?;
    let grain = bag_grain(node, c * k);
    push_rows(cx, kernel, inputs, extents, dst, (rows, c, grain));
    Ok(())
}

/// Row-major strides of `shape` padded with leading 1s to `rank`, 0 along
/// every dim of size 1 (broadcast).
pub(super) fn broadcast_strides(shape: &[usize], rank: usize) -> Vec<usize> {
    let mut padded = vec![1; rank - shape.len()];
    padded.extend_from_slice(shape);
    let mut strides = vec![0; rank];
    let mut s = 1;
    for (st, &p) in strides.iter_mut().zip(&padded).rev() {
        *st = if p == 1 { 0 } else { s };
        s *= p;
    }
    strides
}

/// `cosine_similarity(a, b)` along attribute `dim` of the broadcast shape.
fn cosine_similarity(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let (&a, &b) = match node.inputs.as_slice() {
        [a, b] => (a, b),
        _ => return Err(fail(node, "expects two operands".into())),
    };
    let (sa, sb) = (cx.shape(a)?, cx.shape(b)?);
    let rank = sa.len().max(sb.len());
    let d = match node.op.attr("dim") {
        Some(Attr::Int(d)) => usize::try_from(*d).ok().filter(|d| *d < rank),
        _ => None,
    }
    .ok_or_else(|| fail(node, format!("no valid `dim` for rank {rank}")))?;
    let eps = match node.op.attr("eps") {
        Some(Attr::Float(e)) => *e,
        _ => 1e-8,
    };
    let (mut ta, mut tb) = (broadcast_strides(&sa, rank), broadcast_strides(&sb, rank));
    let at = |s: &[usize], k: usize| (k + s.len()).checked_sub(rank).map_or(1, |i| s[i]);
    let len = at(&sa, d).max(at(&sb, d));
    let (a_step, b_step) = (ta.remove(d), tb.remove(d));
    let out_dims = cx.shape(node.outputs[0])?;
    let rows: usize = out_dims.iter().product();
    let kernel = Cosine {
        out_dims,
        a_strides: ta,
        b_strides: tb,
        a_step,
        b_step,
        len,
        eps,
    };
    let inputs = vec![cx.buf(a)?, cx.buf(b)?];
    let extents: Vec<usize> = vec![sa.iter().product(), sb.iter().product()];
    let dst = cx.output(node.outputs[0])?;
    let grain = (GRAIN_WORK / (3 * len).max(1)).max(1);
    push_rows(cx, kernel, inputs, extents, dst, (rows, 1, grain));
    Ok(())
}

/// `dssm_loss(scores [N, docs])`: one scalar.
fn dssm_loss(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let s = *node
        .inputs
        .first()
        .ok_or_else(|| fail(node, "expects scores".into()))?;
    let shape = cx.shape(s)?;
    let [batch, docs] = shape[..] else {
        return Err(fail(node, format!("scores {shape:?} are not [N, docs]")));
    };
    let inputs = vec![cx.buf(s)?];
    let dst = cx.output(node.outputs[0])?;
    push_rows(
        cx,
        DssmLoss { batch, docs },
        inputs,
        vec![batch * docs],
        dst,
        (1, 1, 1),
    );
    Ok(())
}

#[cfg(test)]
mod tests;
