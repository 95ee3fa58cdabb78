//! Fusion: marks elementwise followers `fused_into` the head whose kernel
//! computes them, so that the lowering runs a head and its followers as one
//! kernel (a contraction's epilogue, or one elementwise chain) and never
//! stores the links in between.
//!
//! Heads are contractions (`conv1d`, `conv2d`, `linear`, `matmul`: bias,
//! activation, residual add and scalar ops become their epilogue), batch
//! norms (DenseNet's norm → relu) and elementwise nodes (chains). Walking
//! the nodes in order, a head takes the reader of its running value as the
//! next follower while
//!
//! - the running value has exactly that one reader and is not an output,
//! - the lowering can append it to the group's kernel
//!   ([`pointwise::can_follow`] in the group's iteration space),
//! - its other operand is computed before the head (the group runs at the
//!   head's position, so node order stays valid).
//!
//! Parameter-only nodes are not fused: they run once, at weight load.
//!
//! A channels-last `concat` whose only reader is a channels-last batch
//! norm heads a group too ([`concat_norm_group`]: DenseNet's concat →
//! norm → relu): the norm and its unary followers are computed piece by
//! piece, each concat input written straight into its columns of the
//! result, so the concatenation itself is never stored. When that group
//! (norm, at most a `relu`) is read only by a 1×1 convolution of an
//! inference graph, it becomes the convolution's **prologue** instead
//! (`prologue_reader`): marked `fused_into` the convolution after it,
//! whose implicit GEMM gathers A through the norm, so not even the
//! normalised concatenation is stored.
//!
//! A training `batch_norm_train` and a `group_norm` take the `relu`
//! reading their normalised result ([`norm_relu`]): the norm's apply
//! kernel writes the relu's result, and the normalised values are never
//! stored. The sparse convs take the `relu` of their features
//! (`sparse_relu`) the same way.

use super::rewrite;
use crate::back::clif::{node_kernel, unary_of};
use crate::back::elementwise::{Bcast, Chain, Domain};
use crate::back::lower::{contract, pointwise};
use crate::ir::{Attr, Dim, Graph, Node, ValueDef, ValueId};
use std::collections::{HashMap, HashSet};

/// What the fusion pass did to a graph.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FuseStats {
    /// Heads that took at least one follower.
    pub groups: usize,
    /// Nodes marked `fused_into` a head.
    pub fused: usize,
}

/// Runs the fusion pass on `g`; with `prologues`, a concat → norm → relu
/// group read only by a 1×1 convolution is fused into that convolution
/// (`prologue_reader`).
pub fn run(g: &mut Graph, prologues: bool) -> FuseStats {
    let mut stats = FuseStats::default();
    let readers = rewrite::readers(g);
    let derived = rewrite::param_derived(g);
    let position: HashMap<ValueId, usize> = g
        .nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.outputs.iter().map(move |v| (*v, i)))
        .collect();
    let mut taken: HashSet<usize> = HashSet::new();
    for h in 0..g.nodes.len() {
        let head = &g.nodes[h];
        if taken.contains(&h) || head.train_only {
            continue;
        }
        if matches!(
            head.op.name,
            "batch_norm_train" | "group_norm" | "subm_conv3d" | "sparse_conv3d"
        ) {
            if let Some(f) = norm_relu(g, h, &readers, &taken) {
                g.nodes[f].fused_into = Some(g.nodes[h].outputs[0]);
                taken.insert(f);
                stats.groups += 1;
                stats.fused += 1;
            }
            continue;
        }
        if head.outputs.len() != 1 {
            continue;
        }
        if derived.contains(&head.outputs[0]) {
            continue;
        }
        if head.op.name == "concat" {
            let followers = concat_norm_group(g, h, &readers, &taken);
            let reader = prologues
                .then(|| prologue_reader(g, &followers, &readers, &derived))
                .flatten();
            if let Some(conv) = reader {
                let key = g.nodes[conv].outputs[0];
                for f in std::iter::once(h).chain(followers.iter().copied()) {
                    g.nodes[f].fused_into = Some(key);
                    taken.insert(f);
                }
                stats.groups += 1;
                stats.fused += 1 + followers.len();
            } else if !followers.is_empty() {
                let key = g.nodes[h].outputs[0];
                for f in &followers {
                    g.nodes[*f].fused_into = Some(key);
                    taken.insert(*f);
                }
                stats.groups += 1;
                stats.fused += followers.len();
            }
            continue;
        }
        let Some(initial) = head_domain(g, head) else {
            continue;
        };
        let mut domain = initial;
        let mut running = head.outputs[0];
        let mut followers: Vec<usize> = Vec::new();
        while let Some([f]) = readers.get(&running).map(Vec::as_slice) {
            let node = &g.nodes[*f];
            let early = |v: &ValueId| {
                *v == running
                    || !matches!(g.value(*v).def, ValueDef::Node(..))
                    || position.get(v).is_some_and(|p| *p < h)
            };
            let ok = !node.train_only
                && !taken.contains(f)
                && !rewrite::is_output(g, running)
                && node.inputs.iter().all(early)
                && pointwise::can_follow(g, node, running, domain);
            if !ok {
                break;
            }
            followers.push(*f);
            let Some(d) = group_domain(g, head, &followers, initial) else {
                followers.pop();
                break;
            };
            domain = d;
            running = node.outputs[0];
        }
        if followers.is_empty() {
            continue;
        }
        let key = g.nodes[h].outputs[0];
        for f in &followers {
            g.nodes[*f].fused_into = Some(key);
            taken.insert(*f);
        }
        stats.groups += 1;
        stats.fused += followers.len();
    }
    stats
}

/// The followers of the `concat` at `h` when it can head a concat → norm
/// group: the concat joins channels-last tensors on their last axis and
/// its only reader is a channels-last inference batch norm (whose
/// parameters are not computed by nodes), followed by unary ops, each the
/// only reader of the value before it. No value of the group but the last
/// is a graph output. Empty when the concat cannot head such a group.
fn concat_norm_group(
    g: &Graph,
    h: usize,
    readers: &HashMap<ValueId, Vec<usize>>,
    taken: &HashSet<usize>,
) -> Vec<usize> {
    let head = &g.nodes[h];
    let rank = g.ty(head.outputs[0]).shape.len();
    let last_axis =
        matches!(head.op.attr("dim"), Some(Attr::Int(d)) if rank > 0 && *d as usize == rank - 1);
    let channels_last = head
        .inputs
        .iter()
        .all(|v| g.ty(*v).shape.len() == rank && rank == 4);
    if !last_axis || !channels_last {
        return Vec::new();
    }
    let mut running = head.outputs[0];
    let mut followers = Vec::new();
    while let Some([f]) = readers.get(&running).map(Vec::as_slice) {
        let node = &g.nodes[*f];
        let fits = if followers.is_empty() {
            matches!(node.op.name, "batch_norm" | "frozen_batch_norm")
                && is_nhwc(node)
                && node.inputs.first() == Some(&running)
                && node.inputs[1..]
                    .iter()
                    .all(|v| !matches!(g.value(*v).def, ValueDef::Node(..)))
        } else {
            unary_of(node).is_some() && node.inputs[..] == [running]
        };
        if !fits || node.train_only || taken.contains(f) || rewrite::is_output(g, running) {
            break;
        }
        followers.push(*f);
        running = node.outputs[0];
    }
    followers
}

/// The 1×1 convolution that can take a concat → norm group (`followers`
/// of the concat: the norm, then at most a `relu`) as its prologue: the
/// only reader of the group's result, an NHWC `conv2d` reading it as its
/// input, 1×1 with stride 1, no padding, one group and a
/// parameter-derived weight (inference plans pack it, so the convolution
/// runs as an implicit GEMM that gathers its A through the norm). The
/// concat, the norm and the relu are then marked `fused_into` the
/// convolution, which comes after them: a head's prologue.
fn prologue_reader(
    g: &Graph,
    followers: &[usize],
    readers: &HashMap<ValueId, Vec<usize>>,
    derived: &HashSet<ValueId>,
) -> Option<usize> {
    let (&last, tail) = followers.split_last()?;
    let shape_ok = match tail {
        [] => true,
        [_] => g.nodes[last].op.name == "relu",
        _ => false,
    };
    let y = g.nodes[last].outputs[0];
    let &[c] = readers.get(&y)?.as_slice() else {
        return None;
    };
    let conv = &g.nodes[c];
    let ints = |name: &str| match conv.op.attr(name) {
        Some(Attr::Ints(v)) => Some(v.clone()),
        _ => None,
    };
    let one_by_one = matches!(&g.ty(*conv.inputs.get(1)?).shape[..], [_, kh, kw, _]
        if kh.as_known() == Some(1) && kw.as_known() == Some(1));
    let fits = shape_ok
        && conv.op.name == "conv2d"
        && is_nhwc(conv)
        && !conv.train_only
        && conv.inputs[0] == y
        && derived.contains(&conv.inputs[1])
        && one_by_one
        && ints("stride")? == [1, 1]
        && ints("pad")? == [0, 0]
        && ints("dilation")? == [1, 1]
        && matches!(conv.op.attr("groups"), None | Some(Attr::Int(1)))
        && !rewrite::is_output(g, y);
    fits.then_some(c)
}

/// The `relu` reading the normalised result of the norm at `h` (a
/// training batch norm or a group norm; or the features of a sparse
/// conv), when it is that result's only
/// reader and neither is a graph output (the norm's apply kernel then
/// writes `max(y, 0)` straight into the relu's result; a training norm's
/// backward reads the norm's input, not `y`).
fn norm_relu(
    g: &Graph,
    h: usize,
    readers: &HashMap<ValueId, Vec<usize>>,
    taken: &HashSet<usize>,
) -> Option<usize> {
    let y = g.nodes[h].outputs[0];
    let &[f] = readers.get(&y)?.as_slice() else {
        return None;
    };
    let node = &g.nodes[f];
    let fits = node.op.name == "relu"
        && node.inputs[..] == [y]
        && !node.train_only
        && !taken.contains(&f)
        && !rewrite::is_output(g, y);
    fits.then_some(f)
}

/// The iteration space a head fixes for its group (`Some(None)`: flat so
/// far), or `None` if the node cannot head a group.
fn head_domain(g: &Graph, head: &Node) -> Option<Option<Domain>> {
    match head.op.name {
        "conv1d" | "conv2d" | "linear" | "matmul" => contract::epilogue_domain(g, head).map(Some),
        "batch_norm" | "frozen_batch_norm" => norm_domain(g, head).map(Some),
        _ => {
            let (chain, _) = node_kernel(g, head)?;
            Some((chain.domain != Domain::Flat).then_some(chain.domain))
        }
    }
}

/// The iteration space of `head`'s group once `followers` are appended
/// (`Some(None)`: still flat), or `None` if they cannot be appended.
fn group_domain(
    g: &Graph,
    head: &Node,
    followers: &[usize],
    initial: Option<Domain>,
) -> Option<Option<Domain>> {
    let nodes: Vec<&Node> = followers.iter().map(|f| &g.nodes[*f]).collect();
    let mut chain = Chain {
        inputs: vec![Bcast::Full],
        domain: Domain::Flat,
        steps: Vec::new(),
    };
    pointwise::extend(g, head, &nodes, initial, &mut chain, &mut Vec::new()).ok()
}

fn known(dims: &[Dim]) -> Option<u64> {
    dims.iter().try_fold(1u64, |acc, d| {
        acc.checked_mul(u64::try_from(d.as_known()?).ok()?)
    })
}

fn is_nhwc(node: &Node) -> bool {
    matches!(node.op.attr("layout"), Some(Attr::Str(s)) if s == "nhwc")
}

/// The iteration space of a batch norm's kernel: `Rows { C, spatial }` in
/// NCHW, `Rows { 1, C }` in NHWC.
fn norm_domain(g: &Graph, node: &Node) -> Option<Domain> {
    let shape = &g.ty(node.outputs[0]).shape;
    if is_nhwc(node) {
        return Some(Domain::Rows {
            channels: 1,
            inner: known(shape.last().map(std::slice::from_ref)?)?,
        });
    }
    Some(Domain::Rows {
        channels: known(shape.get(1..2)?)?,
        inner: known(shape.get(2..)?)?.max(1),
    })
}
