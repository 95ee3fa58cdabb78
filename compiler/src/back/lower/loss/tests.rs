//! Losses and their gradients compiled (f32) vs the reference interpreter
//! (f64): every reduction, class weights, label smoothing, ignored and
//! out-of-range targets, spatial cross entropy, `p = 1, 2` margins,
//! broadcast `pos_weight`, batch 1 and 4, 1 and 2 threads (relative L2
//! error <= 1e-5).

use super::super::oracle::{compiled, data, params, reference};
use crate::ir::{Dim, Graph, Op, TensorType, ValueId};
use crate::passes::rewrite;
use crate::testing::program;
use netc_runtime::DType;

fn rel_l2(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(a, e)| (f64::from(*a) - e).powi(2))
        .sum();
    let den: f64 = want.iter().map(|e| e * e).sum();
    (num / den.max(1e-30)).sqrt()
}

fn value(g: &Graph, name: &str) -> ValueId {
    g.inputs.iter().find(|(n, _)| n == name).unwrap().1
}

/// Appends `op(inputs)` (result: f32 of `like`'s shape, or `[]`) as a
/// new output `name`.
fn append(g: &mut Graph, op: Op, inputs: Vec<ValueId>, shape: Vec<Dim>, name: &str) {
    let like = g.nodes[0].clone();
    let mut node = rewrite::new_node(
        g,
        op,
        inputs,
        TensorType::new(DType::F32, shape),
        Dim::known(0),
        &like,
    );
    node.train_only = false;
    let v = node.outputs[0];
    let mut nodes = g.nodes.clone();
    nodes.push(node);
    rewrite::set_nodes(g, nodes);
    g.outputs.push((name.into(), v));
}

/// Compiles and runs `g` at `N = n` on 1 and 2 threads; every output is
/// within relative L2 1e-5 of the interpreter.
fn check(g: &Graph, n: usize, inputs: &[(&str, Vec<usize>, Vec<f32>)], what: &str) {
    let ps = params(g);
    let want = reference(g, inputs, &ps);
    let ins: Vec<&[f32]> = inputs.iter().map(|(_, _, v)| v.as_slice()).collect();
    for threads in [1, 2] {
        let got = compiled(g, &[("N", n as i64)], &ins, &ps, threads);
        for (k, (a, e)) in got.iter().zip(&want).enumerate() {
            let err = rel_l2(a, e);
            assert!(
                err <= 1e-5,
                "{what}: output {} at N = {n}, {threads} threads: rel L2 {err:e}\n{a:?}\n{e:?}",
                g.outputs[k].0
            );
        }
    }
}

/// Class indices `0..classes` with every `every`-th set to `ignore`.
fn targets(len: usize, classes: usize, every: usize, ignore: i64) -> Vec<f32> {
    (0..len)
        .map(|i| {
            if every > 0 && i % every == every - 1 {
                ignore as f32
            } else {
                ((i * 7 + 3) % classes) as f32
            }
        })
        .collect()
}

/// A graph with the forward loss `call` (over inputs `x`, `t`) and its
/// gradient node with incoming gradient input `d` (shape `[]` or, for
/// `none`, `[N]`).
fn loss_graph(decl: &str, call: &str, none: bool) -> Graph {
    let mut g = program(&format!(
        "model m() {{ {decl}  input d: {}  output l = {call} }}",
        if none { "f32[N]" } else { "f32[]" }
    ))
    .unwrap_or_else(|e| panic!("{call}: {e}"));
    add_grad(&mut g);
    g
}

/// Appends the gradient of the graph's (single) loss node.
fn add_grad(g: &mut Graph) {
    let k = g.nodes.len() - 1;
    let fwd = g.nodes[k].clone();
    let mut inputs = vec![fwd.inputs[0], fwd.inputs[1], value(g, "d")];
    inputs.extend(fwd.inputs.get(2));
    let mut op = fwd.op.clone();
    op.name = match fwd.op.name {
        "cross_entropy" => "cross_entropy_grad",
        "multi_margin" => "multi_margin_grad",
        "bce_with_logits" => "bce_with_logits_grad",
        _ => "mse_grad",
    };
    let shape = g.ty(fwd.inputs[0]).shape.clone();
    append(g, op, inputs, shape, "dx");
    // The rules emit the loss nodes outside train-only regions.
    for n in &mut g.nodes {
        n.train_only = false;
    }
}

#[test]
fn cross_entropy_and_its_grad_match_the_interpreter() {
    let w = "weight = [0.5, 1.0, 2.0, 1.5, 0.25]";
    for red in ["mean", "sum", "none"] {
        for (opts, ignore) in [
            (format!("{w}, label_smoothing = 0.1, ignore_index = 2"), 2),
            ("label_smoothing = 0.0".to_string(), -100),
            (format!("{w}, ignore_index = -1"), -1),
            ("label_smoothing = 0.3".to_string(), -100),
        ] {
            let call = format!("cross_entropy(x, t, {opts}, reduction = \"{red}\")");
            let g = loss_graph("input x: f32[N, 5]  input t: i64[N]", &call, red == "none");
            for n in [1, 4, 9] {
                let x = data(n * 5, 0.3, 6.0);
                let t = targets(n, 5, 3, ignore);
                let d = data(if red == "none" { n } else { 1 }, 1.1, 2.0);
                let dshape = if red == "none" { vec![n] } else { vec![] };
                check(
                    &g,
                    n,
                    &[("x", vec![n, 5], x), ("t", vec![n], t), ("d", dshape, d)],
                    &call,
                );
            }
        }
    }
}

#[test]
fn spatial_cross_entropy_and_its_grad_match_the_interpreter() {
    for red in ["mean", "sum", "none"] {
        let call = format!(
            "cross_entropy(x, t, weight = [1.0, 0.5, 2.0], label_smoothing = 0.1, reduction = \"{red}\")"
        );
        let none = red == "none";
        let mut g = program(&format!(
            "model m() {{ input x: f32[N, 3, 4, 5]  input t: i64[N, 4, 5]  input d: {}  output l = {call} }}",
            if none { "f32[N, 4, 5]" } else { "f32[]" }
        ))
        .unwrap();
        add_grad(&mut g);
        for n in [1, 2] {
            let x = data(n * 60, 0.7, 8.0);
            let t = targets(n * 20, 3, 7, -100);
            let dn = if none { n * 20 } else { 1 };
            let dshape = if none { vec![n, 4, 5] } else { vec![] };
            check(
                &g,
                n,
                &[
                    ("x", vec![n, 3, 4, 5], x),
                    ("t", vec![n, 4, 5], t),
                    ("d", dshape, data(dn, 2.3, 1.0)),
                ],
                &call,
            );
        }
    }
}

/// Out-of-range targets read nothing out of bounds and count as ignored:
/// the compiled loss equals the interpreter's with those rows ignored.
#[test]
fn out_of_range_targets_contribute_nothing() {
    for red in ["mean", "none"] {
        let call = format!("cross_entropy(x, t, label_smoothing = 0.2, reduction = \"{red}\")");
        let g = loss_graph("input x: f32[N, 4]  input t: i64[N]", &call, red == "none");
        let n = 6;
        let x = data(n * 4, 0.1, 3.0);
        let bad = vec![1.0, 4.0, -3.0, 2.0, 1e9, 0.0];
        let ignored = vec![1.0, -100.0, -100.0, 2.0, -100.0, 0.0];
        let d = data(if red == "none" { n } else { 1 }, 0.5, 1.0);
        let dshape = if red == "none" { vec![n] } else { vec![] };
        let ps = params(&g);
        let want = reference(
            &g,
            &[
                ("x", vec![n, 4], x.clone()),
                ("t", vec![n], ignored),
                ("d", dshape, d.clone()),
            ],
            &ps,
        );
        let got = compiled(&g, &[("N", n as i64)], &[&x, &bad, &d], &ps, 2);
        for (a, e) in got.iter().zip(&want) {
            assert!(rel_l2(a, e) <= 1e-5, "{red}: {a:?} vs {e:?}");
        }
    }
}

#[test]
fn multi_margin_and_its_grad_match_the_interpreter() {
    for red in ["mean", "sum", "none"] {
        for (p, margin, weighted) in [(1, 1.0, false), (2, 0.5, true), (1, 0.75, true)] {
            let call =
                format!("multi_margin(x, t, p = {p}, margin = {margin}, reduction = \"{red}\")");
            let none = red == "none";
            let mut g = program(&format!(
                "model m() {{ input x: f32[N, 6]  input t: i64[N]  input w: f32[6]  input d: {}  output l = {call} }}",
                if none { "f32[N]" } else { "f32[]" }
            ))
            .unwrap();
            if weighted {
                // The class weights are an operand of the op (the rules
                // pass them); the surface call has none.
                let w = value(&g, "w");
                let k = g.nodes.len() - 1;
                g.nodes[k].inputs.push(w);
            }
            add_grad(&mut g);
            for n in [1, 5] {
                let x = data(n * 6, 0.9, 3.0);
                let t = targets(n, 6, 0, 0);
                let dn = if none { n } else { 1 };
                let dshape = if none { vec![n] } else { vec![] };
                let w: Vec<f32> = vec![1.0, 0.5, 2.0, 0.25, 1.5, 3.0];
                check(
                    &g,
                    n,
                    &[
                        ("x", vec![n, 6], x),
                        ("t", vec![n], t),
                        ("w", vec![6], w),
                        ("d", dshape, data(dn, 0.2, 1.0)),
                    ],
                    &call,
                );
            }
        }
    }
}

#[test]
fn bce_with_logits_and_mse_and_their_grads_match_the_interpreter() {
    for red in ["mean", "sum", "none"] {
        for (pw, extra) in [
            ("", None),
            (", pos_weight = pw", Some(("pw", "f32[5]", vec![5]))),
            (", pos_weight = pc", Some(("pc", "f32[3, 1]", vec![3, 1]))),
        ] {
            for loss in ["bce_with_logits", "mse"] {
                if loss == "mse" && extra.is_some() {
                    continue;
                }
                let call = format!("{loss}(x, t{pw}, reduction = \"{red}\")");
                let none = red == "none";
                let decl = extra
                    .as_ref()
                    .map_or(String::new(), |(n, ty, _)| format!("input {n}: {ty}"));
                let mut g = program(&format!(
                    "model m() {{ input x: f32[N, 3, 5]  input t: f32[N, 3, 5]  {decl}  input d: {}  output l = {call} }}",
                    if none { "f32[N, 3, 5]" } else { "f32[]" }
                ))
                .unwrap_or_else(|e| panic!("{call}: {e}"));
                add_grad(&mut g);
                for n in [1, 3] {
                    let x = data(n * 15, 0.4, 12.0);
                    // Hard and soft targets.
                    let t: Vec<f32> = (0..n * 15)
                        .map(|i| [0.0, 1.0, 0.25, 1.0, 0.0, 0.8][i % 6])
                        .collect();
                    let mut ins = vec![("x", vec![n, 3, 5], x), ("t", vec![n, 3, 5], t)];
                    if let Some((name, _, shape)) = &extra {
                        let len = shape.iter().product();
                        let v = data(len, 1.7, 1.0).iter().map(|v| v.abs() + 0.5).collect();
                        ins.push((name, shape.clone(), v));
                    }
                    let (dn, dshape) = if none {
                        (n * 15, vec![n, 3, 5])
                    } else {
                        (1, vec![])
                    };
                    ins.push(("d", dshape, data(dn, 0.6, 1.0)));
                    check(&g, n, &ins, &call);
                }
            }
        }
    }
}

#[test]
fn unsupported_operands_are_named_errors() {
    let g = program(
        "model m() { input x: f32[N, 3, 4, 5]  input t: f32[N, 3, 4, 5]  input pw: f32[3, 1, 5] \
         output l = x |> bl: bce_with_logits(t, pos_weight = pw) }",
    )
    .unwrap();
    let mut jit = crate::back::jit::Jit::new().unwrap();
    let err = super::super::lower(
        &g,
        &[("N".into(), 2)],
        crate::options::CompileOptions::default(),
        &mut jit,
    )
    .err()
    .unwrap();
    assert!(
        err.0
            .contains("`bce_with_logits` at bl: pos_weight does not broadcast")
            && err.0.contains("[2, 3, 4, 5]"),
        "{err}"
    );
}
