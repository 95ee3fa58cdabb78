//! Graph-rewriting helpers shared by the passes: who reads a value, making
//! new nodes and constants, installing a rebuilt node list (which renumbers
//! every `ValueDef::Node`), and a structural check of the result.
//!
//! Value ids are stable across rewrites: a pass adds values, retypes
//! values or stops producing some, but never renumbers them. A value that
//! no node produces any more keeps its last definition; nothing reads it.

use crate::ir::{Dim, Graph, Node, NodeId, Op, TensorType, ValueDef, ValueId};
use std::collections::{HashMap, HashSet};

/// For every value, the positions of the distinct nodes that read it
/// (training nodes included), in node order.
pub fn readers(g: &Graph) -> HashMap<ValueId, Vec<usize>> {
    let mut r: HashMap<ValueId, Vec<usize>> = HashMap::new();
    for (i, n) in g.nodes.iter().enumerate() {
        for v in &n.inputs {
            let list = r.entry(*v).or_default();
            if list.last() != Some(&i) {
                list.push(i);
            }
        }
    }
    r
}

/// Whether `v` leaves the graph: a model output or the training loss.
pub fn is_output(g: &Graph, v: ValueId) -> bool {
    g.outputs.iter().any(|(_, o)| *o == v) || g.train.as_ref().is_some_and(|t| t.loss == v)
}

/// Values computed from parameters and constants only (by inference nodes):
/// the lowering runs their nodes once, in the prepare steps.
pub fn param_derived(g: &Graph) -> HashSet<ValueId> {
    let mut derived: HashSet<ValueId> = g
        .params
        .iter()
        .map(|p| p.value)
        .chain(g.consts.iter().map(|c| c.value))
        .collect();
    for n in g.nodes.iter().filter(|n| !n.train_only) {
        if !n.inputs.is_empty() && n.inputs.iter().all(|v| derived.contains(v)) {
            derived.extend(n.outputs.iter().copied());
        }
    }
    derived
}

/// A new node applying `op` to `inputs` with one result of type `ty`,
/// attributed to the same layer, source and region as `like`. Its result
/// is defined once the node list is installed with [`set_nodes`].
pub fn new_node(
    g: &mut Graph,
    op: Op,
    inputs: Vec<ValueId>,
    ty: TensorType,
    flops: Dim,
    like: &Node,
) -> Node {
    let span = like.span;
    let v = g.add_value(ty, ValueDef::Node(NodeId(u32::MAX), 0), span);
    Node {
        op,
        inputs,
        outputs: vec![v],
        path: like.path.clone(),
        span,
        flops,
        region: like.region,
        train_only: like.train_only,
        fused_into: None,
    }
}

/// One flop per element of `ty` (zero if its size is not a linear form).
pub fn per_element(ty: &TensorType) -> Dim {
    ty.numel().unwrap_or_else(|| Dim::known(0))
}

/// A new f32 scalar constant `value`, printed as `scalar(value)`.
pub fn scalar_const(g: &mut Graph, value: f64, like: &Node) -> ValueId {
    let ty = TensorType::known(netc_runtime::DType::F32, &[]);
    let id = crate::ir::ConstId(g.consts.len() as u32);
    let v = g.add_value(ty, ValueDef::Const(id), like.span);
    g.consts.push(crate::ir::ConstTensor {
        desc: format!("scalar({})", crate::ir::format_float(value)),
        data: vec![value],
        value: v,
    });
    v
}

/// Installs `nodes` as the graph's node list and points the definition of
/// every value they produce at its new position.
pub fn set_nodes(g: &mut Graph, nodes: Vec<Node>) {
    for (i, n) in nodes.iter().enumerate() {
        for (k, v) in n.outputs.iter().enumerate() {
            g.values[v.0 as usize].def = ValueDef::Node(NodeId(i as u32), k);
        }
    }
    g.nodes = nodes;
}

/// Makes every reader of `old` (nodes, model outputs, the loss) read `new`.
pub fn replace_uses(g: &mut Graph, old: ValueId, new: ValueId) {
    for n in &mut g.nodes {
        for v in &mut n.inputs {
            if *v == old {
                *v = new;
            }
        }
        if n.fused_into == Some(old) {
            n.fused_into = Some(new);
        }
    }
    for (_, v) in &mut g.outputs {
        if *v == old {
            *v = new;
        }
    }
    if let Some(t) = &mut g.train {
        if t.loss == old {
            t.loss = new;
        }
    }
}

/// Checks that the graph is well formed after a rewrite: every operand is
/// defined before it is read, every result's definition names its node,
/// every output is defined, and every `fused_into` names the first result
/// of an inference node (an earlier one, or a later one whose prologue the
/// node is). The error names the node and the value.
pub fn verify(g: &Graph) -> Result<(), String> {
    let defined_outside = |v: ValueId| {
        matches!(
            g.value(v).def,
            ValueDef::Input(_) | ValueDef::Label(_) | ValueDef::Param(_) | ValueDef::Const(_)
        )
    };
    let mut produced: HashSet<ValueId> = HashSet::new();
    let mut heads: HashSet<ValueId> = HashSet::new();
    // Nodes fused into a head computed after them (a prologue).
    let mut prologues: Vec<(ValueId, String)> = Vec::new();
    for (i, n) in g.nodes.iter().enumerate() {
        let at = || format!("`{}` (node {i}) at {}", n.op.name, n.path);
        for v in &n.inputs {
            if !produced.contains(v) && !defined_outside(*v) {
                return Err(format!("{} reads %{} before it is computed", at(), v.0));
            }
        }
        if let Some(h) = n.fused_into {
            if n.train_only {
                return Err(format!("{} is a training node fused into %{}", at(), h.0));
            }
            if !heads.contains(&h) {
                prologues.push((h, at()));
            }
        }
        for (k, v) in n.outputs.iter().enumerate() {
            if g.value(*v).def != ValueDef::Node(NodeId(i as u32), k) {
                return Err(format!(
                    "{} computes %{}, whose definition says {:?}",
                    at(),
                    v.0,
                    g.value(*v).def
                ));
            }
            produced.insert(*v);
        }
        if !n.train_only {
            heads.extend(n.outputs.first().copied());
        }
    }
    for (h, at) in prologues {
        if !heads.contains(&h) {
            return Err(format!(
                "{at} is fused into %{}, which no inference node computes first",
                h.0
            ));
        }
    }
    for (name, v) in &g.outputs {
        if !produced.contains(v) && !defined_outside(*v) {
            return Err(format!("output `{name}` = %{} is never computed", v.0));
        }
    }
    Ok(())
}
