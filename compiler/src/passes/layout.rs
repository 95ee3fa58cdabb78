//! Layout: convolution chains in NHWC (channels last).
//!
//! A *chain* is a connected group of inference nodes that can work in
//! either layout, linked by the 4-D activations they pass each other:
//! `conv2d`, `batch_norm`/`frozen_batch_norm`/`group_norm`,
//! `max_pool2d`/`avg_pool2d`, `resize_nearest`/`upsample_nearest`,
//! `concat` on the channel axis, `dropout` and elementwise ops whose other
//! operands are of the same shape or scalars. A chain goes NHWC when it
//! contains a `conv2d` with at least [`MIN_CHANNELS`] input channels (see
//! docs/architecture.md for why); then
//!
//! - every 4-D value it computes is retyped `[N, H, W, C]`;
//! - `conv2d`, the norms and the pools get `layout = "nhwc"`, the conv
//!   weight is read through an inserted `permute` to `[OC, KH, KW, C/g]`
//!   (parameter-only, so computed once at weight load), `concat` moves to
//!   dim 3;
//! - a `permute` (or a `reshape`, when it moves only size-1 dims) is
//!   inserted where an NCHW value enters the chain and where an NHWC value
//!   leaves it (a node outside the chain, a model output);
//! - finally, pairs of permutes that invert each other cancel (VGGish's
//!   channels-last flatten meets the chain's exit transform and both go).
//!
//! [`run_training`] does the same on a training graph (forward, loss and
//! backward) with the members a training plan can run channels last: the
//! convolutions, input gradients and weight gradients that the caller
//! finds a channels-last path for (the implicit GEMMs and the one-pass
//! weight gradient), and elementwise ops (`relu`, `relu_grad`, `add`,
//! ...). Their convolutions get `act_layout = "nhwc"`: channels-last
//! activations, the weight (and weight gradient) still `[OC, C, KH, KW]`,
//! since the optimizer owns it. A weight gradient and a per-channel `sum`
//! over `[0, 2, 3]` (a bias gradient, which becomes a sum over `[0, 1,
//! 2]`) are *sinks*: they read the chain's activations, and their results
//! are not activations. Why: each such convolution otherwise transposes
//! its activations in and its result out (`docs/training.md`), and a
//! chain of them transposed every activation twice per step.

use super::rewrite::{self, new_node};
use crate::back::clif::{binary_node, binary_of, unary_of};
use crate::ir::{Attr, Dim, Graph, Node, Op, TensorType, ValueId};
use netc_runtime::DType;
use std::collections::{HashMap, HashSet};

/// A chain goes NHWC when one of its `conv2d` nodes has at least this many
/// input channels.
pub const MIN_CHANNELS: i64 = 16;

const TO_NHWC: [usize; 4] = [0, 2, 3, 1];
const TO_NCHW: [usize; 4] = [0, 3, 1, 2];

/// What the layout pass did to a graph.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayoutStats {
    /// Chains found.
    pub chains: usize,
    /// Chains turned NHWC.
    pub nhwc_chains: usize,
    /// Nodes now working in NHWC.
    pub nhwc_nodes: usize,
    /// Layout transforms inserted (weight permutes included).
    pub transforms: usize,
    /// Permutes removed because they met their inverse.
    pub cancelled: usize,
}

/// Runs the layout pass on `g`.
pub fn run(g: &mut Graph) -> LayoutStats {
    let derived = rewrite::param_derived(g);
    let slots: Vec<Option<Vec<usize>>> = g
        .nodes
        .iter()
        .map(|n| {
            let prepared = n.outputs.iter().all(|v| derived.contains(v));
            (!n.train_only && !prepared)
                .then(|| activation_slots(g, n))
                .flatten()
        })
        .collect();
    let sinks = vec![false; g.nodes.len()];
    rewrite_chains(g, slots, sinks, false)
}

/// Runs the layout pass on the training graph `g` (see the module docs):
/// `ready(g, node)` says whether a convolution or gradient of it runs
/// channels last in the plan being built.
pub fn run_training(g: &mut Graph, ready: &dyn Fn(&Graph, &Node) -> bool) -> LayoutStats {
    let derived = rewrite::param_derived(g);
    // A layer's convolution, input gradient and weight gradient go
    // channels last together or not at all: one of them NCHW would put
    // transforms on both sides of it (densenet121 at batch 8, whose
    // input gradients on 56×56 maps have no channels-last path, took
    // 1.18× longer per step with its forwards and weight gradients
    // channels last alone).
    let mut layer_ready: HashMap<String, bool> = HashMap::new();
    for n in g.nodes.iter().filter(|n| is_conv_family(n)) {
        let ok = ready(g, n);
        *layer_ready.entry(n.path.clone()).or_insert(true) &= ok;
    }
    // Only convolution-family nodes ask, so their layer's verdict covers
    // them.
    let ready = |n: &Node| layer_ready.get(n.path.as_str()) == Some(&true);
    let mut sinks = vec![false; g.nodes.len()];
    let slots: Vec<Option<Vec<usize>>> = g
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let prepared = n.outputs.iter().all(|v| derived.contains(v));
            let (slots, sink) = training_slots(g, n, &ready)?;
            sinks[i] = sink;
            (!prepared).then_some(slots)
        })
        .collect();
    rewrite_chains(g, slots, sinks, true)
}

/// Turns NHWC the chains of the nodes with `slots` (their activation
/// operands; `sinks` mark the nodes whose results are not activations)
/// that hold a wide `conv2d`, inserting the transforms where layouts
/// meet.
fn rewrite_chains(
    g: &mut Graph,
    slots: Vec<Option<Vec<usize>>>,
    sinks: Vec<bool>,
    training: bool,
) -> LayoutStats {
    let mut stats = LayoutStats::default();
    let producer: HashMap<ValueId, usize> = g
        .nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.outputs.iter().map(move |v| (*v, i)))
        .collect();
    let mut parent: Vec<usize> = (0..g.nodes.len()).collect();
    for (i, s) in slots.iter().enumerate() {
        for &k in s.iter().flatten() {
            let p = producer.get(&g.nodes[i].inputs[k]).copied();
            if let Some(p) = p.filter(|p| slots[*p].is_some()) {
                let (a, b) = (find(&mut parent, p), find(&mut parent, i));
                parent[a] = b;
            }
        }
    }
    let mut roots: HashSet<usize> = HashSet::new();
    let mut nhwc_roots: HashSet<usize> = HashSet::new();
    for i in (0..g.nodes.len()).filter(|i| slots[*i].is_some()) {
        let r = find(&mut parent, i);
        roots.insert(r);
        let n = &g.nodes[i];
        let channels = g.ty(n.inputs[0]).shape.get(1).and_then(Dim::as_known);
        if n.op.name == "conv2d" && channels.is_some_and(|c| c >= MIN_CHANNELS) {
            nhwc_roots.insert(r);
        }
    }
    stats.chains = roots.len();
    stats.nhwc_chains = nhwc_roots.len();
    let nhwc: Vec<bool> = (0..g.nodes.len())
        .map(|i| slots[i].is_some() && nhwc_roots.contains(&find(&mut parent, i)))
        .collect();
    stats.nhwc_nodes = nhwc.iter().filter(|b| **b).count();
    if stats.nhwc_nodes == 0 {
        return stats;
    }
    // Retype the chain's values, remembering their NCHW types for exits.
    let mut nchw_ty: HashMap<ValueId, TensorType> = HashMap::new();
    for (_, n) in g
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| nhwc[*i] && !sinks[*i])
    {
        for v in &n.outputs {
            nchw_ty.insert(*v, g.ty(*v).clone());
        }
    }
    for (v, ty) in &nchw_ty {
        g.values[v.0 as usize].ty = permuted(ty, &TO_NHWC);
    }
    let old = std::mem::take(&mut g.nodes);
    let mut t = Transforms {
        nodes: Vec::with_capacity(old.len() * 2),
        to_nhwc: HashMap::new(),
        to_nchw: HashMap::new(),
        count: 0,
    };
    for (i, node) in old.iter().enumerate() {
        let mut node = node.clone();
        let inside = slots[i].as_deref().filter(|_| nhwc[i]).unwrap_or(&[]);
        for k in 0..node.inputs.len() {
            let v = node.inputs[k];
            let is_nhwc = nchw_ty.contains_key(&v);
            let want = inside.contains(&k);
            if want && !is_nhwc {
                node.inputs[k] = t.convert(g, v, &TO_NHWC, permuted(g.ty(v), &TO_NHWC), &node);
            } else if !want && is_nhwc {
                node.inputs[k] = t.convert(g, v, &TO_NCHW, nchw_ty[&v].clone(), &node);
            }
        }
        if nhwc[i] && training {
            to_nhwc_training_op(&mut node);
        } else if nhwc[i] {
            to_nhwc_op(g, &mut node, &mut t);
        }
        t.nodes.push(node);
    }
    let outputs = g.outputs.clone();
    for (k, (_, v)) in outputs.iter().enumerate() {
        if let Some(ty) = nchw_ty.get(v) {
            let like = old[producer[v]].clone();
            g.outputs[k].1 = t.convert(g, *v, &TO_NCHW, ty.clone(), &like);
        }
    }
    stats.transforms = t.count;
    rewrite::set_nodes(g, t.nodes);
    stats.cancelled = cancel_permutes(g);
    stats
}

fn find(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

/// The operand positions of `node` that carry its NCHW activation, or
/// `None` if the node cannot work in NHWC.
fn activation_slots(g: &Graph, node: &Node) -> Option<Vec<usize>> {
    let image = |v: &ValueId| {
        let t = g.ty(*v);
        t.rank() == 4 && t.dtype == DType::F32 && !t.sparse
    };
    let [out] = node.outputs[..] else {
        return None;
    };
    if !image(&out) || node.inputs.is_empty() {
        return None;
    }
    let x = &node.inputs[0];
    let plain = node.op.attr("layout").is_none();
    match node.op.name {
        "conv2d" if plain && image(x) => Some(vec![0]),
        "batch_norm" | "frozen_batch_norm" | "group_norm" | "max_pool2d" | "avg_pool2d"
        | "resize_nearest" | "upsample_nearest"
            if plain && image(x) =>
        {
            Some(vec![0])
        }
        "concat"
            if matches!(node.op.attr("dim"), Some(Attr::Int(1)))
                && node.inputs.iter().all(image) =>
        {
            Some((0..node.inputs.len()).collect())
        }
        "dropout" if image(x) => Some(vec![0]),
        _ if unary_of(node).is_some() && node.inputs.len() == 1 && image(x) => Some(vec![0]),
        name if binary_of(name).is_some() && node.inputs.len() == 2 => binary_slots(g, node),
        _ => None,
    }
}

/// The operands of a two-operand elementwise `node` with a 4-D result
/// that have its shape; `None` if another operand is not a size-1
/// broadcast.
fn binary_slots(g: &Graph, node: &Node) -> Option<Vec<usize>> {
    let out = g.ty(node.outputs[0]);
    let mut slots = Vec::new();
    for (k, v) in node.inputs.iter().enumerate() {
        let t = g.ty(*v);
        if t.shape == out.shape && t.rank() == 4 && t.dtype == DType::F32 && !t.sparse {
            slots.push(k);
        } else if !t.shape.iter().all(|d| d.as_known() == Some(1)) {
            return None;
        }
    }
    (!slots.is_empty()).then_some(slots)
}

/// The activation operands of a training graph's `node` that can work
/// channels last, and whether it is a sink (its results are not
/// activations); `None` if it cannot. `ready` says whether a convolution
/// or gradient belongs to a layer that runs channels last.
fn training_slots(
    g: &Graph,
    node: &Node,
    ready: &dyn Fn(&Node) -> bool,
) -> Option<(Vec<usize>, bool)> {
    let image = |v: &ValueId| {
        let t = g.ty(*v);
        t.rank() == 4 && t.dtype == DType::F32 && !t.sparse
    };
    let x = node.inputs.first()?;
    match node.op.name {
        "conv2d" | "conv2d_grad_input" if ready(node) => Some((vec![0], false)),
        "conv2d_grad_weight" if ready(node) => Some((vec![0, 1], true)),
        "sum"
            if image(x)
                && matches!(node.op.attr("dims"), Some(Attr::Ints(d)) if d[..] == [0, 2, 3])
                && !matches!(node.op.attr("keepdim"), Some(Attr::Bool(true))) =>
        {
            Some((vec![0], true))
        }
        "conv2d" | "conv2d_grad_input" | "conv2d_grad_weight" | "sum" => None,
        // Activation gradients (`relu_grad(dy, y)`) and arithmetic.
        _ if binary_node(node).is_some() && node.inputs.len() == 2 && image(&node.outputs[0]) => {
            binary_slots(g, node).map(|s| (s, false))
        }
        _ => activation_slots(g, node)
            .filter(|_| unary_of(node).is_some() || binary_of(node.op.name).is_some())
            .map(|s| (s, false)),
    }
}

/// Whether `node` is a 2-D convolution or one of its gradients.
fn is_conv_family(node: &Node) -> bool {
    matches!(
        node.op.name,
        "conv2d" | "conv2d_grad_input" | "conv2d_grad_weight"
    )
}

/// Rewrites a training chain's node into its channels-last form.
fn to_nhwc_training_op(node: &mut Node) {
    match node.op.name {
        "conv2d" | "conv2d_grad_input" | "conv2d_grad_weight" => {
            node.op.attrs.push(("act_layout", Attr::Str("nhwc".into())));
        }
        "sum" => {
            for (k, a) in &mut node.op.attrs {
                if *k == "dims" {
                    *a = Attr::Ints(vec![0, 1, 2]);
                }
            }
        }
        _ => {}
    }
}

/// `ty` with its dims reordered: result dim `i` is dim `dims[i]`.
fn permuted(ty: &TensorType, dims: &[usize]) -> TensorType {
    let mut t = ty.clone();
    t.shape = dims.iter().map(|&d| ty.shape[d].clone()).collect();
    t
}

/// Whether permuting `shape` by `dims` keeps the data in place (it moves
/// only dims of size 1): then a `reshape` does it.
fn is_view(shape: &[Dim], dims: &[usize]) -> bool {
    let moved: Vec<usize> = dims
        .iter()
        .copied()
        .filter(|&d| shape[d].as_known() != Some(1))
        .collect();
    moved.windows(2).all(|w| w[0] < w[1])
}

/// The layout transforms inserted so far, one per value and direction.
struct Transforms {
    nodes: Vec<Node>,
    to_nhwc: HashMap<ValueId, ValueId>,
    to_nchw: HashMap<(ValueId, bool), ValueId>,
    count: usize,
}

impl Transforms {
    /// `v` in the other layout (`dims` = [`TO_NHWC`] or [`TO_NCHW`]) as a
    /// value of type `ty`, inserting the transform before the node `reader`
    /// the first time it is asked for.
    fn convert(
        &mut self,
        g: &mut Graph,
        v: ValueId,
        dims: &[usize; 4],
        ty: TensorType,
        reader: &Node,
    ) -> ValueId {
        let forward = *dims == TO_NHWC;
        let cached = if forward {
            self.to_nhwc.get(&v)
        } else {
            self.to_nchw.get(&(v, reader.train_only))
        };
        if let Some(c) = cached {
            return *c;
        }
        let op = if is_view(&g.ty(v).shape, dims) {
            Op::new("reshape").with("shape", Attr::Dims(ty.shape.clone()))
        } else {
            Op::new("permute").with("dims", Attr::Ints(dims.iter().map(|&d| d as i64).collect()))
        };
        let n = new_node(g, op, vec![v], ty, Dim::known(0), reader);
        let out = n.outputs[0];
        self.nodes.push(n);
        self.count += 1;
        if forward {
            self.to_nhwc.insert(v, out);
        } else {
            self.to_nchw.insert((v, reader.train_only), out);
        }
        out
    }
}

/// Rewrites a chain node's op into its NHWC form.
fn to_nhwc_op(g: &mut Graph, node: &mut Node, t: &mut Transforms) {
    match node.op.name {
        "conv2d" => {
            let w = node.inputs[1];
            let ty = permuted(g.ty(w), &TO_NHWC);
            let like = node.clone();
            node.inputs[1] = t.convert(g, w, &TO_NHWC, ty, &like);
            node.op.attrs.push(("layout", Attr::Str("nhwc".into())));
        }
        "batch_norm" | "frozen_batch_norm" | "group_norm" | "max_pool2d" | "avg_pool2d"
        | "resize_nearest" | "upsample_nearest" => {
            node.op.attrs.push(("layout", Attr::Str("nhwc".into())));
        }
        "concat" => {
            for (k, a) in &mut node.op.attrs {
                if *k == "dim" {
                    *a = Attr::Int(3);
                }
            }
        }
        _ => {}
    }
}

fn permute_dims(n: &Node) -> Option<Vec<usize>> {
    match (n.op.name, n.op.attr("dims")) {
        ("permute", Some(Attr::Ints(d))) => d.iter().map(|&x| usize::try_from(x).ok()).collect(),
        _ => None,
    }
}

/// Removes `permute(permute(x, q), p)` pairs whose composition is the
/// identity: readers of the outer result read `x`; the inner permute goes
/// too when nothing else reads it. Returns how many permutes were removed.
fn cancel_permutes(g: &mut Graph) -> usize {
    let producer: HashMap<ValueId, usize> = g
        .nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.outputs.iter().map(move |v| (*v, i)))
        .collect();
    let mut pairs = Vec::new();
    let mut paired: HashSet<usize> = HashSet::new();
    for (i, n) in g.nodes.iter().enumerate() {
        let (Some(p), false) = (permute_dims(n), n.train_only) else {
            continue;
        };
        let Some(&j) = producer.get(&n.inputs[0]) else {
            continue;
        };
        let inner = &g.nodes[j];
        let Some(q) = permute_dims(inner).filter(|_| !inner.train_only) else {
            continue;
        };
        let x = inner.inputs[0];
        let identity = p.len() == q.len() && (0..p.len()).all(|k| q[p[k]] == k);
        if identity && g.ty(x) == g.ty(n.outputs[0]) && !paired.contains(&j) {
            paired.extend([i, j]);
            pairs.push((i, j, n.outputs[0], x));
        }
    }
    let mut removed: HashSet<usize> = HashSet::new();
    for (i, _, out, x) in &pairs {
        rewrite::replace_uses(g, *out, *x);
        removed.insert(*i);
    }
    let readers = rewrite::readers(g);
    for (_, j, _, _) in &pairs {
        let out = g.nodes[*j].outputs[0];
        let unread = readers
            .get(&out)
            .is_none_or(|rs| rs.iter().all(|r| removed.contains(r)));
        if unread && !rewrite::is_output(g, out) {
            removed.insert(*j);
        }
    }
    let nodes = std::mem::take(&mut g.nodes)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !removed.contains(i))
        .map(|(_, n)| n)
        .collect();
    rewrite::set_nodes(g, nodes);
    removed.len()
}
