//! Test support for the training ops' lowering: append a node of an op
//! that has no surface syntax to an elaborated graph, and compare compiled
//! outputs with the reference interpreter by relative L2 error.

use super::oracle::{compiled, reference};
use crate::ir::{Graph, Op, TensorType, ValueDef, ValueId};
use crate::passes::rewrite::{new_node, set_nodes};
use netc_runtime::DType;

/// Appends a node `op(inputs)` with f32 results of `shapes` to `g` and
/// makes its results the graph's outputs `r0`, `r1`, ...
pub fn append(g: &mut Graph, op: Op, inputs: Vec<ValueId>, shapes: &[Vec<usize>]) -> Vec<ValueId> {
    let ty = |s: &Vec<usize>| {
        TensorType::known(DType::F32, &s.iter().map(|&d| d as i64).collect::<Vec<_>>())
    };
    let like = g.nodes[0].clone();
    let flops = crate::ir::Dim::known(0);
    let mut node = new_node(g, op, inputs, ty(&shapes[0]), flops, &like);
    for s in &shapes[1..] {
        let v = g.add_value(
            ty(s),
            ValueDef::Node(crate::ir::NodeId(u32::MAX), 0),
            like.span,
        );
        node.outputs.push(v);
    }
    let outs = node.outputs.clone();
    let mut nodes = g.nodes.clone();
    nodes.push(node);
    set_nodes(g, nodes);
    g.outputs = outs
        .iter()
        .enumerate()
        .map(|(k, v)| (format!("r{k}"), *v))
        .collect();
    outs
}

/// `‖got − want‖ / max(‖want‖, 1e-30)`.
pub fn rel_l2(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "lengths");
    let (mut num, mut den) = (0.0, 0.0);
    for (a, e) in got.iter().zip(want) {
        num += (f64::from(*a) - e).powi(2);
        den += e * e;
    }
    (num / den.max(1e-60)).sqrt()
}

/// Runs `g` compiled on 1 and 2 threads and through the interpreter on
/// `inputs` (name, shape, data; the graph's input order) and asserts every
/// output's relative L2 error is at most `tol`; returns the compiled
/// outputs of the 2-thread run and the reference.
pub fn check_rel(
    g: &Graph,
    inputs: &[(&str, Vec<usize>, Vec<f32>)],
    tol: f64,
    what: &str,
) -> (Vec<Vec<f32>>, Vec<Vec<f64>>) {
    let want = reference(g, inputs, &[]);
    let ins: Vec<&[f32]> = inputs.iter().map(|(_, _, v)| v.as_slice()).collect();
    let mut last = Vec::new();
    for threads in [1, 2] {
        let got = compiled(g, &[], &ins, &[], threads);
        for (k, (a, e)) in got.iter().zip(&want).enumerate() {
            let err = rel_l2(a, e);
            assert!(
                err <= tol,
                "{what}: output {k}, {threads} threads: rel L2 {err:e}"
            );
        }
        last = got;
    }
    (last, want)
}
