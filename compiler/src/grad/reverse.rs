//! The reverse sweep: visits the forward nodes from last to first, calls
//! each op's backward rule with the gradients of its results, and sums the
//! gradients of values read more than once.
//!
//! Recomputation: when a node belongs to a call of a block listed in the
//! `train` section's `recompute`, the whole call is re-emitted (fresh
//! values, same ops) just before the first of its backward rules runs, and
//! the rules read the recomputed values. The call's own activations are
//! then read by nothing after the forward pass, so the memory planner
//! frees them early: memory traded for one more forward of the block.

use super::cx::subject;
use super::rules;
use super::{GradCx, GradError};
use crate::ir::{Graph, Node, RegionId, ValueId};
use crate::passes::rewrite::set_nodes;
use std::collections::{HashMap, HashSet};

/// Emits the backward pass of `loss` into `g`; returns, for every trained
/// parameter the loss depends on, `(parameter index, gradient value)`.
pub(crate) fn differentiate(
    g: &mut Graph,
    loss: ValueId,
    recompute: &[String],
) -> Result<Vec<(usize, ValueId)>, GradError> {
    let loss_ty = g.ty(loss).clone();
    if !loss_ty.shape.is_empty() || !loss_ty.dtype.is_float() {
        return Err(GradError::new(format!(
            "the loss must be a float scalar, got {}",
            g.type_text(&loss_ty)
        )));
    }
    let forward = g.nodes.clone();
    let active = requires_grad(g, &forward);
    let recompute_of: Vec<Option<RegionId>> = forward
        .iter()
        .map(|n| recompute_region(g, n.region, recompute))
        .collect();
    let mut cx = GradCx::new(g);
    let mut grads: HashMap<ValueId, ValueId> = HashMap::new();
    let one = cx.scalar(1.0);
    grads.insert(loss, one);
    let mut remap: HashMap<ValueId, ValueId> = HashMap::new();
    let mut recomputed: HashSet<RegionId> = HashSet::new();
    for (i, node) in forward.iter().enumerate().rev() {
        let dys: Vec<Option<ValueId>> =
            node.outputs.iter().map(|o| grads.get(o).copied()).collect();
        let needs: Vec<bool> = node.inputs.iter().map(|v| active.contains(v)).collect();
        if dys.iter().all(Option::is_none) || !needs.iter().any(|&n| n) {
            continue;
        }
        let view = match recompute_of[i] {
            Some(r) => {
                if recomputed.insert(r) {
                    replay(&mut cx, &forward, &recompute_of, r, &mut remap);
                }
                remapped(node, &remap)
            }
            None => node.clone(),
        };
        cx.attribute_to(node);
        let rule = rules::lookup(node.op.name).ok_or_else(|| GradError {
            message: format!("{} has no backward rule", subject(node)),
            span: Some(node.span),
            hint: Some(format!(
                "ops with backward rules: {}",
                rules::names().collect::<Vec<_>>().join(", ")
            )),
        })?;
        let dxs = rule(&mut cx, &view, &dys, &needs)?;
        for ((&v, dx), &need) in node.inputs.iter().zip(dxs).zip(&needs) {
            let Some(dx) = dx.filter(|_| need) else {
                continue;
            };
            if cx.g.ty(dx).shape != cx.g.ty(v).shape {
                return Err(cx.error(format!(
                    "the backward rule gave a gradient of type {} for an operand of type {}",
                    cx.g.type_text(cx.g.ty(dx)),
                    cx.g.type_text(cx.g.ty(v))
                )));
            }
            let sum = match grads.get(&v) {
                Some(&prev) => cx.binary("add", prev, dx),
                None => dx,
            };
            grads.insert(v, sum);
        }
    }
    let emitted = std::mem::take(&mut cx.emitted);
    let mut nodes = forward;
    nodes.extend(emitted);
    set_nodes(g, nodes);
    Ok(g.params
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.buffer)
        .filter_map(|(i, p)| grads.get(&p.value).map(|&v| (i, v)))
        .collect())
}

/// Values that depend on a trained parameter through float-valued ops.
pub(super) fn requires_grad(g: &Graph, nodes: &[Node]) -> HashSet<ValueId> {
    let mut active: HashSet<ValueId> = g
        .params
        .iter()
        .filter(|p| !p.buffer)
        .map(|p| p.value)
        .collect();
    for n in nodes {
        for (i, &out) in n.outputs.iter().enumerate() {
            if g.ty(out).dtype.is_float() && operands_of_result(n, i).any(|v| active.contains(&v)) {
                active.insert(out);
            }
        }
    }
    active
}

/// The operands result `i` of `n` is computed from: result `i` of a
/// `boolean_mask` over a list selects from operand `i` only (a label
/// masked beside a prediction does not need a gradient); any other
/// result from all operands.
fn operands_of_result(n: &Node, i: usize) -> impl Iterator<Item = ValueId> + '_ {
    let only = (n.op.name == "boolean_mask").then_some(i);
    n.inputs
        .iter()
        .enumerate()
        .filter(move |&(j, _)| only.is_none_or(|i| j == i))
        .map(|(_, &v)| v)
}

/// The outermost enclosing call of a block listed in `recompute`.
fn recompute_region(
    g: &Graph,
    mut region: Option<RegionId>,
    recompute: &[String],
) -> Option<RegionId> {
    let mut found = None;
    while let Some(r) = region {
        let info = &g.regions[r.0 as usize];
        if recompute.contains(&info.block) {
            found = Some(r);
        }
        region = info.parent;
    }
    found
}

/// Re-emits the forward nodes of region `r` with fresh result values and
/// records the correspondence in `remap`.
fn replay(
    cx: &mut GradCx,
    forward: &[Node],
    recompute_of: &[Option<RegionId>],
    r: RegionId,
    remap: &mut HashMap<ValueId, ValueId>,
) {
    for (node, _) in forward
        .iter()
        .zip(recompute_of)
        .filter(|(_, reg)| **reg == Some(r))
    {
        cx.attribute_to(node);
        let inputs = node
            .inputs
            .iter()
            .map(|v| *remap.get(v).unwrap_or(v))
            .collect();
        let types = node.outputs.iter().map(|v| cx.ty(*v)).collect();
        let outs = cx.emit(node.op.clone(), inputs, types, node.flops.clone());
        remap.extend(node.outputs.iter().copied().zip(outs));
    }
}

/// `node` reading (and producing) the recomputed values.
fn remapped(node: &Node, remap: &HashMap<ValueId, ValueId>) -> Node {
    let mut n = node.clone();
    for v in n.inputs.iter_mut().chain(n.outputs.iter_mut()) {
        if let Some(&r) = remap.get(v) {
            *v = r;
        }
    }
    n
}
