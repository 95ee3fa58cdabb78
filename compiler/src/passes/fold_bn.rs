//! Batch-norm folding: at inference, `batch_norm(conv(x, w[, b]))` with
//! running statistics is an affine map per output channel, so it folds into
//! the convolution: `conv(x, w', b')` with
//!
//! ```text
//! scale = γ / sqrt(var + eps)          (1 / sqrt(var + eps) without affine)
//! w'    = w · scale[oc]                (scale reshaped to [OC, 1, ...])
//! b'    = (b − mean) · scale + β       (−mean · scale + β without a bias)
//! ```
//!
//! The new terms are ordinary IR nodes (`add`, `sqrt`, `div`, `reshape`,
//! `mul`, `sub`, `neg`) over parameters and buffers only, placed just
//! before the convolution: the lowering computes them once per weight load
//! (prepare steps) and the reference interpreter evaluates them as they
//! stand. The convolution takes over the batch norm's result value, so its
//! readers are unchanged; the batch norm node disappears.
//!
//! A pair folds when the convolution (`conv1d`/`conv2d`) is an inference
//! node whose only reader is a `batch_norm`/`frozen_batch_norm` on its
//! result, the convolution's result is not a model output, and every
//! weight, bias and statistic is parameter-derived.

use super::rewrite::{self, new_node, per_element};
use crate::ir::{Attr, Dim, Graph, Node, Op, TensorType, ValueId};
use netc_runtime::DType;
use std::collections::HashMap;

/// Folds every eligible batch norm into its convolution; returns how many
/// were folded.
pub fn run(g: &mut Graph) -> usize {
    let readers = rewrite::readers(g);
    let derived = rewrite::param_derived(g);
    // conv position -> batch norm position
    let mut pairs: HashMap<usize, usize> = HashMap::new();
    for (i, conv) in g.nodes.iter().enumerate() {
        if conv.train_only
            || !matches!(conv.op.name, "conv1d" | "conv2d")
            || conv.outputs.len() != 1
            || conv.op.attr("layout").is_some()
        {
            continue;
        }
        let c = conv.outputs[0];
        let Some([r]) = readers.get(&c).map(Vec::as_slice) else {
            continue;
        };
        let bn = &g.nodes[*r];
        let foldable = !bn.train_only
            && bn.inputs.first() == Some(&c)
            && !rewrite::is_output(g, c)
            && g.ty(c).dtype == DType::F32
            && stats(bn).is_some()
            && conv.inputs[1..].iter().all(|v| derived.contains(v))
            && bn.inputs[1..].iter().all(|v| derived.contains(v))
            && g.ty(c).shape.get(1).and_then(Dim::as_known).is_some();
        if foldable {
            pairs.insert(i, *r);
        }
    }
    if pairs.is_empty() {
        return 0;
    }
    let old = std::mem::take(&mut g.nodes);
    let dropped: std::collections::HashSet<usize> = pairs.values().copied().collect();
    let mut nodes = Vec::with_capacity(old.len() + pairs.len() * 8);
    let mut scalars: HashMap<u64, ValueId> = HashMap::new();
    for (i, node) in old.iter().enumerate() {
        if dropped.contains(&i) {
            continue;
        }
        match pairs.get(&i) {
            Some(&b) => fold(g, node, &old[b], &mut scalars, &mut nodes),
            None => nodes.push(node.clone()),
        }
    }
    rewrite::set_nodes(g, nodes);
    pairs.len()
}

/// The operands of a batch norm that fold: the affine terms `(γ, β)` if
/// it has them, the running mean and the running variance.
type Stats = (Option<(ValueId, ValueId)>, ValueId, ValueId);

/// The [`Stats`] of a batch norm, or `None` if its operands are not as
/// ops/norm.rs builds them.
fn stats(bn: &Node) -> Option<Stats> {
    let affine = bn.op.name == "frozen_batch_norm"
        || !matches!(bn.op.attr("affine"), Some(Attr::Bool(false)));
    match (bn.op.name, affine, &bn.inputs[..]) {
        ("frozen_batch_norm", _, [_, w, b, m, v]) | ("batch_norm", true, [_, w, b, m, v, _]) => {
            Some((Some((*w, *b)), *m, *v))
        }
        ("batch_norm", false, [_, m, v, _]) => Some((None, *m, *v)),
        _ => None,
    }
}

/// Appends the folded terms and the rewritten convolution to `nodes`;
/// `scalars` holds the scalar constants made so far (by their bits), so
/// that every fold with the same `eps` shares one.
fn fold(
    g: &mut Graph,
    conv: &Node,
    bn: &Node,
    scalars: &mut HashMap<u64, ValueId>,
    nodes: &mut Vec<Node>,
) {
    let Some((affine, mean, var)) = stats(bn) else {
        nodes.push(conv.clone());
        return;
    };
    let eps = match bn.op.attr("eps") {
        Some(Attr::Float(e)) => *e,
        _ => 1e-5,
    };
    let channel_ty = g.ty(var).clone();
    let mut emit = |g: &mut Graph, op: Op, inputs: Vec<ValueId>, ty: TensorType| {
        let flops = per_element(&ty);
        let n = new_node(g, op, inputs, ty, flops, bn);
        let v = n.outputs[0];
        nodes.push(n);
        v
    };
    let mut scalar = |g: &mut Graph, x: f64| {
        *scalars
            .entry(x.to_bits())
            .or_insert_with(|| rewrite::scalar_const(g, x, bn))
    };
    let eps_v = scalar(g, eps);
    let var_eps = emit(g, Op::new("add"), vec![var, eps_v], channel_ty.clone());
    let std = emit(g, Op::new("sqrt"), vec![var_eps], channel_ty.clone());
    let gamma = match affine {
        Some((w, _)) => w,
        None => scalar(g, 1.0),
    };
    let scale = emit(g, Op::new("div"), vec![gamma, std], channel_ty.clone());
    // [OC] -> [OC, 1, ...] so that it scales the weight's output channels.
    let w = conv.inputs[1];
    let w_ty = g.ty(w).clone();
    let mut col = vec![Dim::known(1); w_ty.rank()];
    col[0] = channel_ty.shape[0].clone();
    let col_ty = TensorType::new(DType::F32, col.clone());
    let scale_col = emit(
        g,
        Op::new("reshape").with("shape", Attr::Dims(col)),
        vec![scale],
        col_ty,
    );
    let w2 = emit(g, Op::new("mul"), vec![w, scale_col], w_ty);
    let shifted = match conv.inputs.get(2) {
        Some(&b) => emit(g, Op::new("sub"), vec![b, mean], channel_ty.clone()),
        None => emit(g, Op::new("neg"), vec![mean], channel_ty.clone()),
    };
    let mut b2 = emit(g, Op::new("mul"), vec![shifted, scale], channel_ty.clone());
    if let Some((_, beta)) = affine {
        b2 = emit(g, Op::new("add"), vec![b2, beta], channel_ty);
    }
    let mut folded = conv.clone();
    folded.inputs = vec![conv.inputs[0], w2, b2];
    folded.outputs = vec![bn.outputs[0]];
    nodes.push(folded);
}
