//! Lowering of elementwise nodes, views, and fused elementwise chains.
//!
//! The fusion pass marks a node `fused_into` the head of its group. A
//! group is a head (an elementwise node or a contraction) and followers;
//! each follower reads the previous link's result as its running value
//! and at most one other operand. One kernel computes the whole group in
//! registers and stores only the last link; the inner links are never
//! stored ([`unstored_links`]).

use super::{sparse, LowerCx};
use crate::back::clif::{binary_node, classify, node_kernel, unary_of};
use crate::back::elementwise::{Bcast, Chain, Domain, Operand, Step};
use crate::back::BackError;
use crate::ir::{Graph, Node, ValueId};
use netc_runtime::plan::Buf;
use netc_runtime::pointwise::{self as wide, PointwiseChain};
use std::collections::{HashMap, HashSet};

/// Lowers views and elementwise heads; `None` for other ops.
pub fn try_lower(cx: &mut LowerCx, node: &Node) -> Option<Result<(), BackError>> {
    if matches!(node.op.name, "reshape" | "dropout") {
        return Some(cx.alias(node.outputs[0], node.inputs[0]));
    }
    let (chain, reads) = node_kernel(cx.g, node)?;
    Some(lower_chain(cx, node, chain, reads))
}

fn lower_chain(
    cx: &mut LowerCx,
    head: &Node,
    mut chain: Chain,
    reads: Vec<ValueId>,
) -> Result<(), BackError> {
    let followers = cx.followers(head);
    let mut values = reads;
    let domain = (chain.domain != Domain::Flat).then_some(chain.domain);
    let extra = extend(cx.g, head, &followers, domain, &mut chain, &mut values)?;
    chain.domain = extra.unwrap_or(chain.domain);
    let last = followers.last().map_or(head.outputs[0], |n| n.outputs[0]);
    let out = cx.output(last)?;
    let inputs = values
        .iter()
        .map(|v| cx.buf(*v))
        .collect::<Result<Vec<Buf>, _>>()?;
    let elems = cx.numel(last)?;
    match wide_chain(&chain) {
        Some(wide) if cx.options.wide_pointwise && wide::available() && elems > 0 => {
            let extents = wide
                .scalar
                .iter()
                .map(|&s| if s { 1 } else { elems })
                .collect();
            sparse::push_rows(cx, wide, inputs, extents, out, (elems, 1, WIDE_GRAIN));
            Ok(())
        }
        _ => cx.kernel(&chain, inputs, out, elems),
    }
}

/// The fewest elements worth giving a thread in a [`PointwiseChain`]
/// (a few microseconds of GELU).
const WIDE_GRAIN: usize = 8192;

/// `chain` as the runtime's AVX-512 [`PointwiseChain`], when it is flat,
/// reads every input whole or as one broadcast value, has only steps that
/// kernel runs, and at least one of them is transcendental (an
/// activation, or the GELU or SiLU gradient) (a chain of
/// cheap steps is bound by memory, where the JIT's kernel is as fast).
fn wide_chain(chain: &Chain) -> Option<PointwiseChain> {
    use crate::back::elementwise::{Binary, Grad, Unary};
    if chain.domain != Domain::Flat {
        return None;
    }
    let scalar = chain
        .inputs
        .iter()
        .map(|b| match b {
            Bcast::Full => Some(false),
            Bcast::Scalar => Some(true),
            _ => None,
        })
        .collect::<Option<Vec<bool>>>()?;
    let steps = chain
        .steps
        .iter()
        .map(|s| {
            Some(match *s {
                Step::Unary(u) => wide::Step::Unary(match u {
                    Unary::Neg => wide::Unary::Neg,
                    Unary::Exp => wide::Unary::Exp,
                    Unary::Sigmoid => wide::Unary::Sigmoid,
                    Unary::Silu => wide::Unary::Silu,
                    Unary::Gelu => wide::Unary::Gelu,
                    _ => return None,
                }),
                Step::Binary { op, rhs, swap } => wide::Step::Binary {
                    op: match op {
                        Binary::Add => wide::Binary::Add,
                        Binary::Sub => wide::Binary::Sub,
                        Binary::Mul => wide::Binary::Mul,
                        Binary::Div => wide::Binary::Div,
                        Binary::Grad(Grad::Silu) => wide::Binary::SiluGrad,
                        Binary::Grad(Grad::Gelu) => wide::Binary::GeluGrad,
                        _ => return None,
                    },
                    rhs: match rhs {
                        Operand::Input(k) => wide::Operand::Input(k),
                        Operand::Const(c) => wide::Operand::Const(c),
                    },
                    swap,
                },
            })
        })
        .collect::<Option<Vec<wide::Step>>>()?;
    let costly = steps.iter().any(|s| match s {
        wide::Step::Unary(u) => u.is_transcendental(),
        wide::Step::Binary { op, .. } => {
            matches!(op, wide::Binary::SiluGrad | wide::Binary::GeluGrad)
        }
    });
    costly.then_some(PointwiseChain { scalar, steps })
}

/// The nodes fused into one head: positions in `g.nodes`, in execution
/// order.
#[derive(Clone, Debug, Default)]
pub struct Fused {
    /// Those before the head (its prologue: a normalised concatenation
    /// that a 1×1 convolution reads).
    pub prologue: Vec<usize>,
    /// Those after it (an epilogue or the rest of a chain).
    pub followers: Vec<usize>,
}

/// Per fusion head (its first output), the nodes fused into it: one pass
/// over the graph, so lowering finds a head's followers without scanning
/// every node for each head (which was quadratic in the depth of the
/// model).
pub fn fusion_groups(g: &Graph) -> HashMap<ValueId, Fused> {
    let mut groups: HashMap<ValueId, Fused> = HashMap::new();
    let mut produced: HashSet<ValueId> = HashSet::new();
    for (i, n) in g.nodes.iter().enumerate() {
        produced.extend(n.outputs.iter().copied());
        if let (false, Some(head)) = (n.train_only, n.fused_into) {
            let group = groups.entry(head).or_default();
            if produced.contains(&head) {
                group.followers.push(i);
            } else {
                group.prologue.push(i);
            }
        }
    }
    groups
}

/// Values that fused kernels never store: the results of heads that have
/// followers, of every follower but the last, and of every node of a
/// head's prologue (nodes fused into a head that comes after them).
pub fn unstored_links(nodes: &[&Node]) -> HashSet<ValueId> {
    let mut last_of: std::collections::HashMap<ValueId, ValueId> = Default::default();
    let mut links: HashSet<ValueId> = HashSet::new();
    let mut seen: HashSet<ValueId> = HashSet::new();
    for n in nodes {
        seen.extend(n.outputs.iter().copied());
        if n.fused_into.is_some_and(|h| !seen.contains(&h)) {
            links.extend(n.outputs.iter().copied());
            continue;
        }
        if let Some(h) = n.fused_into {
            links.insert(h);
            if let Some(prev) = last_of.insert(h, n.outputs[0]) {
                links.insert(prev);
            }
        }
    }
    links
}

/// Appends the followers of a group to `chain` as steps; their extra
/// operands are appended to `values` (kernel inputs). `domain` is the
/// iteration space the head fixes (`None`: flat so far, may become rows).
/// Returns the domain the chain needs.
pub fn extend(
    g: &Graph,
    head: &Node,
    followers: &[&Node],
    mut domain: Option<Domain>,
    chain: &mut Chain,
    values: &mut Vec<ValueId>,
) -> Result<Option<Domain>, BackError> {
    let mut running = head.outputs[0];
    for f in followers {
        let step = link_step(g, f, running, &mut domain, chain, values)?;
        chain.steps.push(step);
        running = f.outputs[0];
    }
    Ok(domain)
}

/// Whether `node` can follow a group whose running value is `running` and
/// whose iteration space is `domain` (`None`: flat so far).
pub fn can_follow(g: &Graph, node: &Node, running: ValueId, domain: Option<Domain>) -> bool {
    let mut d = domain;
    let mut chain = Chain {
        inputs: vec![Bcast::Full],
        domain: Domain::Flat,
        steps: Vec::new(),
    };
    link_step(g, node, running, &mut d, &mut chain, &mut Vec::new()).is_ok()
}

fn link_step(
    g: &Graph,
    node: &Node,
    running: ValueId,
    domain: &mut Option<Domain>,
    chain: &mut Chain,
    values: &mut Vec<ValueId>,
) -> Result<Step, BackError> {
    let bad = |why: &str| {
        BackError(format!(
            "`{}` at {} cannot be fused: {why}",
            node.op.name, node.path
        ))
    };
    if node.outputs.len() != 1 || g.ty(node.outputs[0]).shape != g.ty(running).shape {
        return Err(bad("its result is not the running value's shape"));
    }
    if let Some(u) = unary_of(node) {
        return match node.inputs[..] {
            [x] if x == running => Ok(Step::Unary(u)),
            _ => Err(bad("it does not read the running value")),
        };
    }
    let op = binary_node(node).ok_or_else(|| bad("not an elementwise op"))?;
    let (y, swap) = match node.inputs[..] {
        [x, y] if x == running && y != running => (y, false),
        [y, x] if x == running && y != running => (y, true),
        _ => return Err(bad("it does not read the running value once")),
    };
    let (constant, bcast, want) = classify(g, y, &g.ty(running).shape)
        .ok_or_else(|| bad("its operand does not broadcast to the running value"))?;
    match (want, *domain) {
        (Domain::Flat, _) => {}
        (rows, None) => *domain = Some(rows),
        (rows, Some(d)) if rows == d => {}
        (rows, Some(Domain::Flat)) => *domain = Some(rows),
        _ => {
            return Err(bad(
                "its operand needs another iteration space than the group",
            ))
        }
    }
    let rhs = match constant {
        Some(c) => Operand::Const(c),
        None => {
            chain.inputs.push(bcast);
            values.push(y);
            Operand::Input(chain.inputs.len() - 1)
        }
    };
    Ok(Step::Binary { op, rhs, swap })
}

#[cfg(test)]
mod tests;
