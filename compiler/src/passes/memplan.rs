//! Memory planning: assigns every intermediate tensor an offset in one arena
//! so that tensors whose lifetimes overlap never share bytes, and tensors
//! whose lifetimes do not can reuse the same bytes.
//!
//! Lifetimes are measured in node positions: a value is live from the node
//! that produces it to the last node that reads it (model outputs stay live
//! to the end). Views (`reshape`) share their input's storage, which extends
//! the input's lifetime. Offsets are chosen greedily, largest tensor first,
//! at the lowest address that does not collide with an already placed
//! tensor of overlapping lifetime (the "greedy by size" heuristic of TFLite's
//! arena planner), which is near-optimal for feed-forward networks and
//! deterministic.
//!
//! Sizes come from the symbol values given (the batch), and data-dependent
//! sizes from their upper bounds, so the plan holds for every run.

use crate::ir::{Dim, Graph, SymId, SymKind, ValueId};
use std::collections::{HashMap, HashSet};

/// Offsets are multiples of this (cache-line and AVX-512 alignment).
pub const ALIGN: u64 = 64;

/// Node positions per block of the placement index (see `plan_skipping`).
const LIFETIME_BLOCK: usize = 64;

/// Where one intermediate value lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The value.
    pub value: ValueId,
    /// Byte offset in the arena (for views: the offset of the storage they share).
    pub offset: u64,
    /// Bytes reserved (rounded up to [`ALIGN`]).
    pub size: u64,
    /// First node position at which it is live.
    pub first: usize,
    /// Last node position at which it is live.
    pub last: usize,
}

/// The arena layout of one graph.
#[derive(Clone, Debug)]
pub struct MemoryPlan {
    /// One placement per intermediate value (views included, sharing offsets).
    pub placements: Vec<Placement>,
    /// Arena size in bytes.
    pub arena_bytes: u64,
    /// What the intermediates would take without reuse.
    pub naive_bytes: u64,
}

/// Size in bytes of a value with symbols evaluated by `sym`.
fn value_bytes(g: &Graph, v: ValueId, sym: &dyn Fn(SymId) -> i64) -> u64 {
    let ty = g.ty(v);
    let elems = ty.shape.iter().fold(1u64, |acc, d| {
        acc.saturating_mul(eval_dim(d, sym).max(0) as u64)
    });
    // The back end's arena holds every value as f32 (the u8 result of
    // `quantize_u8` too), so no element takes fewer than 4 bytes.
    elems.saturating_mul(ty.dtype.size_bytes().max(4) as u64)
}

fn eval_dim(d: &Dim, sym: &dyn Fn(SymId) -> i64) -> i64 {
    d.terms().iter().fold(d.constant(), |acc, &(s, k)| {
        acc.saturating_add(k.saturating_mul(sym(s)))
    })
}

/// Values that are views of another value's storage: op name and input index.
fn view_source(op: &str) -> Option<usize> {
    matches!(op, "reshape" | "dropout").then_some(0)
}

/// Plans the forward pass of `g` (train-only nodes excluded) for symbol
/// values `symbols` (by name); unnamed input symbols count 1 and
/// data-dependent symbols their upper bound.
pub fn plan(g: &Graph, symbols: &[(String, i64)]) -> MemoryPlan {
    plan_skipping(g, symbols, &HashSet::new(), true)
}

/// [`plan`], leaving out the values in `skip` (they are never stored: the
/// inner links of fused kernels, or tensors kept outside the transient
/// arena). A node fused into another (`fused_into`) is computed by its
/// head's kernel, so its results are live from the head's position on,
/// and the inputs of one fused into a later head (a prologue) up to it.
/// With `reuse` false no two intermediates share bytes (the arena is the
/// sum of their sizes): the switch that measures what reuse saves.
pub fn plan_skipping(
    g: &Graph,
    symbols: &[(String, i64)],
    skip: &HashSet<ValueId>,
    reuse: bool,
) -> MemoryPlan {
    let sym = |s: SymId| -> i64 { symbol_value(g, s, symbols, 0) };
    let nodes: Vec<_> = g.nodes.iter().filter(|n| !n.train_only).collect();
    let produced_at: HashMap<ValueId, usize> = nodes
        .iter()
        .enumerate()
        .flat_map(|(pos, n)| n.outputs.iter().map(move |v| (*v, pos)))
        .collect();
    // Storage root of each value (views resolve to what they view).
    let mut root: HashMap<ValueId, ValueId> = HashMap::new();
    let mut first: HashMap<ValueId, usize> = HashMap::new();
    let mut last: HashMap<ValueId, usize> = HashMap::new();
    for (pos, n) in nodes.iter().enumerate() {
        // A node fused into a later head (its prologue) reads its inputs
        // when the head runs.
        let read_at = n
            .fused_into
            .and_then(|h| produced_at.get(&h).copied())
            .map_or(pos, |h| h.max(pos));
        for v in &n.inputs {
            let r = *root.get(v).unwrap_or(v);
            if let Some(l) = last.get_mut(&r) {
                *l = (*l).max(read_at);
            }
        }
        for (i, v) in n.outputs.iter().enumerate() {
            match view_source(n.op.name).filter(|_| i == 0) {
                Some(src) => {
                    let src = n.inputs[src];
                    let r = *root.get(&src).unwrap_or(&src);
                    root.insert(*v, r);
                }
                None if skip.contains(v) => {}
                None => {
                    let start = n
                        .fused_into
                        .and_then(|h| produced_at.get(&h).copied())
                        .unwrap_or(pos);
                    root.insert(*v, *v);
                    first.insert(*v, start);
                    last.insert(*v, pos);
                }
            }
        }
    }
    let end = nodes.len().saturating_sub(1);
    for (_, v) in &g.outputs {
        let r = *root.get(v).unwrap_or(v);
        if let Some(l) = last.get_mut(&r) {
            *l = end;
        }
    }
    // Only values produced by nodes are planned; inputs, parameters and
    // constants live elsewhere. A view of an input has no storage of its own.
    let mut roots: Vec<ValueId> = first.keys().copied().collect();
    let size = |v: ValueId| value_bytes(g, v, &sym).div_ceil(ALIGN) * ALIGN;
    roots.sort_by_cached_key(|v| (std::cmp::Reverse(size(*v)), first[v], v.0));
    let mut placed: Vec<Placement> = Vec::new();
    // Placed values by the blocks of node positions their lifetimes touch,
    // so a value is checked only against values live near it: placement
    // stays near-linear on deep models instead of scanning every placed
    // value (quadratic).
    let mut by_block: Vec<Vec<usize>> = vec![Vec::new(); end / LIFETIME_BLOCK + 1];
    let mut checked_for: Vec<usize> = Vec::new();
    let mut conflicts: Vec<(u64, u64)> = Vec::new();
    for (k, v) in roots.into_iter().enumerate() {
        let (f, l, s) = (first[&v], last[&v], size(v));
        // Without reuse every lifetime counts as overlapping every other.
        let (f, l) = if reuse { (f, l) } else { (0, end) };
        let blocks = f / LIFETIME_BLOCK..=l / LIFETIME_BLOCK;
        conflicts.clear();
        for b in blocks.clone() {
            for &i in &by_block[b] {
                let p: &Placement = &placed[i];
                if checked_for[i] != k && p.first <= l && f <= p.last {
                    checked_for[i] = k;
                    conflicts.push((p.offset, p.offset + p.size));
                }
            }
        }
        conflicts.sort_unstable();
        let mut offset = 0;
        for &(start, stop) in &conflicts {
            if offset + s <= start {
                break;
            }
            offset = offset.max(stop);
        }
        for b in blocks {
            by_block[b].push(placed.len());
        }
        checked_for.push(usize::MAX);
        placed.push(Placement {
            value: v,
            offset,
            size: s,
            first: first[&v],
            last: last[&v],
        });
    }
    let arena_bytes = placed.iter().map(|p| p.offset + p.size).max().unwrap_or(0);
    let naive_bytes = placed.iter().map(|p| p.size).sum();
    // Views share their root's placement.
    let by_root: HashMap<ValueId, Placement> =
        placed.iter().map(|p| (p.value, p.clone())).collect();
    for (v, r) in &root {
        if v != r {
            if let Some(p) = by_root.get(r) {
                placed.push(Placement {
                    value: *v,
                    ..p.clone()
                });
            }
        }
    }
    placed.sort_by_key(|p| p.value);
    MemoryPlan {
        placements: placed,
        arena_bytes,
        naive_bytes,
    }
}

fn symbol_value(g: &Graph, s: SymId, given: &[(String, i64)], depth: usize) -> i64 {
    let symbol = &g.symbols[s.0 as usize];
    if let Some((_, v)) = given.iter().find(|(n, _)| *n == symbol.name) {
        return *v;
    }
    match &symbol.kind {
        SymKind::Input => 1,
        kind if depth < 16 => kind
            .planned_bound(&|t| Some(symbol_value(g, t, given, depth + 1)))
            .unwrap_or(0),
        SymKind::DataDependent { .. } => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::program;

    /// No two placements of different storage with overlapping lifetimes overlap in bytes.
    fn assert_valid(plan: &MemoryPlan) {
        for (i, a) in plan.placements.iter().enumerate() {
            for b in &plan.placements[i + 1..] {
                let same_storage = a.offset == b.offset
                    && a.first == b.first
                    && a.last == b.last
                    && a.size == b.size;
                let live_together = a.first <= b.last && b.first <= a.last;
                let bytes_overlap = a.offset < b.offset + b.size && b.offset < a.offset + a.size;
                assert!(
                    same_storage || !(live_together && bytes_overlap),
                    "{a:?} collides with {b:?}"
                );
            }
            assert_eq!(a.offset % ALIGN, 0);
        }
    }

    #[test]
    fn a_chain_reuses_memory_and_views_share_storage() {
        let g = program(
            "model m() { input x: f32[N, 1024]
                         h = x |> a: linear(1024) |> relu |> b: linear(1024) |> relu
                         output y = h |> reshape([-1, 32, 32]) }",
        )
        .unwrap();
        let p = plan(&g, &[("N".into(), 4)]);
        assert_valid(&p);
        // Four 16 KiB intermediates, at most two live at a time.
        assert_eq!(p.naive_bytes, 4 * 16384);
        assert_eq!(p.arena_bytes, 2 * 16384);
        let out = g.outputs[0].1;
        let relu = g
            .nodes
            .iter()
            .rev()
            .find(|n| n.op.name == "relu")
            .unwrap()
            .outputs[0];
        let (po, pr) = (
            p.placements.iter().find(|q| q.value == out).unwrap(),
            p.placements.iter().find(|q| q.value == relu).unwrap(),
        );
        assert_eq!(po.offset, pr.offset, "the reshape is a view of the relu");
    }

    /// Without reuse the same chain gets one slot per intermediate: the
    /// arena is the sum of their sizes and no two share a byte.
    #[test]
    fn without_reuse_every_intermediate_has_its_own_bytes() {
        let g = program(
            "model m() { input x: f32[N, 1024]
                         output y = x |> a: linear(1024) |> relu |> b: linear(1024) |> relu }",
        )
        .unwrap();
        let p = plan_skipping(&g, &[("N".into(), 4)], &HashSet::new(), false);
        assert_eq!(p.arena_bytes, p.naive_bytes);
        assert_eq!(p.naive_bytes, 4 * 16384);
        let mut spans: Vec<(u64, u64)> = p.placements.iter().map(|q| (q.offset, q.size)).collect();
        spans.sort_unstable();
        for w in spans.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "{spans:?}");
        }
    }

    /// A stride-2 sparse conv after another: the second one's features are
    /// planned for at most its grid's cells (the run-time site count's cap),
    /// not for 8 times the first one's bound.
    #[test]
    fn strided_sparse_convs_are_planned_for_at_most_their_grid() {
        let g = program(
            "model m() { input f: f32[M, 4]
                         input c: i32[M, 4]
                         s = sparse_tensor(f, c, shape = [40, 200, 200], batch = 2)
                         s = s |> a: sparse_conv3d(8, k = 3, stride = 2, pad = 1)
                               |> b: sparse_conv3d(16, k = 3, stride = 2, pad = 1)
                         output y = s.features }",
        )
        .unwrap();
        let p = plan(&g, &[("M".into(), 20000)]);
        assert_valid(&p);
        let size = |value| p.placements.iter().find(|q| q.value == value).unwrap().size;
        let cells = 2 * 10 * 50 * 50;
        assert!(size(g.outputs[0].1) <= cells * 16 * 4);
        // The first conv's rows: 8 per input site (160000), below its
        // grid's 2 x 20 x 100 x 100.
        let first = g
            .nodes
            .iter()
            .find(|n| n.op.name == "sparse_conv3d")
            .unwrap();
        assert!(size(first.outputs[0]) <= 160_000 * 8 * 4);
    }

    #[test]
    fn skip_connections_stay_live_and_plans_are_valid_on_real_models() {
        let g = program(
            "model m() { input x: f32[N, 8, 16, 16]
                         a = x |> c1: conv2d(8, k = 3, pad = 1)
                         b = a |> relu |> c2: conv2d(8, k = 3, pad = 1) |> relu
                         output y = a + b }",
        )
        .unwrap();
        let p = plan(&g, &[]);
        assert_valid(&p);
        let a = g.nodes[0].outputs[0];
        let add_pos = g.nodes.iter().position(|n| n.op.name == "add").unwrap();
        assert_eq!(
            p.placements.iter().find(|q| q.value == a).unwrap().last,
            add_pos
        );

        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/densenet.net");
        let (prog, diags) = crate::program::Program::load(&root);
        assert!(diags.is_empty());
        let g =
            crate::elab::elaborate(&prog, prog.model(Some("densenet121")).unwrap(), &[]).unwrap();
        let p = plan(&g, &[("N".into(), 2)]);
        assert_valid(&p);
        assert!(
            p.arena_bytes * 3 < p.naive_bytes,
            "{} vs {}",
            p.arena_bytes,
            p.naive_bytes
        );
    }
}
