//! The activation gradients compiled (f32) vs the reference interpreter
//! (f64): alone, fused after their activation (the running value is the
//! right operand), heading a chain, and in the epilogue of a linear and a
//! conv; odd sizes, batch 1 and 3, 1 and 2 threads (relative L2 <= 1e-5).

use super::super::oracle::{assert_close, compiled, data, params, reference, run_lowered};
use crate::ir::{Attr, Dim, Graph, Op, TensorType, ValueId};
use crate::passes::{fuse, rewrite};
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

fn input(g: &Graph, name: &str) -> ValueId {
    g.inputs.iter().find(|(n, _)| n == name).unwrap().1
}

/// The value computed by the node with layer path or op `name`.
fn node_value(g: &Graph, name: &str) -> ValueId {
    g.nodes
        .iter()
        .find(|n| n.path == name || n.op.name == name)
        .unwrap()
        .outputs[0]
}

/// Appends `op(a, b)` (result: `a`'s type); makes it the output `name`
/// when `output`. Returns its value.
fn append(g: &mut Graph, op: Op, a: ValueId, b: ValueId, name: &str, output: bool) -> ValueId {
    let like = g.nodes[0].clone();
    let ty = TensorType::new(DType::F32, g.ty(a).shape.clone());
    let mut node = rewrite::new_node(g, op, vec![a, b], ty, Dim::known(0), &like);
    node.path = name.into();
    let v = node.outputs[0];
    let mut nodes = g.nodes.clone();
    nodes.push(node);
    rewrite::set_nodes(g, nodes);
    if output {
        g.outputs.push((name.into(), v));
    }
    v
}

/// The grad ops: (forward activation call, grad op, whether it reads the
/// activation's output).
fn grads() -> Vec<(&'static str, Op, bool)> {
    vec![
        ("relu(x)", Op::new("relu_grad"), true),
        ("tanh(x)", Op::new("tanh_grad"), true),
        ("sigmoid(x)", Op::new("sigmoid_grad"), true),
        (
            "leaky_relu(x, negative_slope = 0.2)",
            Op::new("leaky_relu_grad").with("negative_slope", Attr::Float(0.2)),
            false,
        ),
        ("silu(x)", Op::new("silu_grad"), false),
        (
            "gelu(x)",
            Op::new("gelu_grad").with("approximate", Attr::Str("none".into())),
            false,
        ),
        (
            "gelu(x, approximate = \"tanh\")",
            Op::new("gelu_grad").with("approximate", Attr::Str("tanh".into())),
            false,
        ),
    ]
}

/// Compiles and runs `g` for N in 1 and 3 on 1 and 2 threads against the
/// interpreter; every input `[N, ...]` gets test data.
fn check(g: &Graph, what: &str) {
    for n in [1usize, 3] {
        let inputs: Vec<(&str, Vec<usize>, Vec<f32>)> = g
            .inputs
            .iter()
            .enumerate()
            .map(|(k, (name, v))| {
                let shape: Vec<usize> = g
                    .ty(*v)
                    .shape
                    .iter()
                    .map(|d| d.as_known().map_or(n, |d| d as usize))
                    .collect();
                let len = shape.iter().product();
                (name.as_str(), shape, data(len, k as f32 * 0.9 + 0.2, 6.0))
            })
            .collect();
        let ps = params(g);
        let want = reference(g, &inputs, &ps);
        let ins: Vec<&[f32]> = inputs.iter().map(|(_, _, v)| v.as_slice()).collect();
        for threads in [1, 2] {
            let got = compiled(g, &[("N", n as i64)], &ins, &ps, threads);
            for (k, (a, e)) in got.iter().zip(&want).enumerate() {
                let err = rel_l2(a, e);
                assert!(
                    err <= 1e-5,
                    "{what}: output {} at N = {n}, {threads} threads: rel L2 {err:e}",
                    g.outputs[k].0
                );
            }
        }
    }
}

#[test]
fn activation_grads_alone_and_fused_after_the_activation() {
    for (act, op, reads_output) in grads() {
        for fused in [false, true] {
            // Alone: the activation is an output, so nothing fuses.
            let mut g = program(&format!(
                "model m() {{ input x: f32[N, 3, 5]  input dy: f32[N, 3, 5]  output h = {act} }}"
            ))
            .unwrap();
            if fused {
                g.outputs.clear();
            }
            let (h, x, dy) = (g.nodes[0].outputs[0], input(&g, "x"), input(&g, "dy"));
            let v = if reads_output { h } else { x };
            append(&mut g, op.clone(), dy, v, "dx", true);
            let stats = fuse::run(&mut g, true);
            let want = usize::from(fused && reads_output);
            assert_eq!(stats.fused, want, "{act}: {stats:?}");
            check(&g, &format!("{} after {act}, fused {fused}", op.name));
        }
    }
}

#[test]
fn activation_grads_head_chains_and_join_contraction_epilogues() {
    for (_, op, _) in grads() {
        // A chain headed by a grad op, with a second grad op following.
        let mut g = program(
            "model m() { input x: f32[N, 4, 7]  input dy: f32[N, 4, 7]  output y = relu(x) }",
        )
        .unwrap();
        let (x, dy) = (input(&g, "x"), input(&g, "dy"));
        let a = append(&mut g, op.clone(), dy, x, "a", false);
        let y = node_value(&g, "relu");
        append(&mut g, Op::new("relu_grad"), a, y, "dx", true);
        assert_eq!(fuse::run(&mut g, true).fused, 1, "{}", op.name);
        check(&g, &format!("{} heading a chain", op.name));

        // The epilogue of a linear (e.g. linear_grad_input's result).
        let mut g = program(
            "model m() { input x: f32[N, 7]  input r: f32[N, 6]  output z = x |> fc: linear(6) }",
        )
        .unwrap();
        g.outputs.clear();
        let (h, r) = (node_value(&g, "fc"), input(&g, "r"));
        append(&mut g, op.clone(), h, r, "dx", true);
        let stats = fuse::run(&mut g, true);
        assert!(stats.fused >= 1, "{} after linear: {stats:?}", op.name);
        assert!(g
            .nodes
            .iter()
            .any(|n| n.path == "dx" && n.fused_into.is_some()));
        check(&g, &format!("{} after linear", op.name));

        // The epilogue of a conv (stride 2, padding).
        let mut g = program(
            "model m() { input x: f32[N, 3, 9, 9]  input r: f32[N, 4, 5, 5]  \
             output z = x |> c: conv2d(4, 3, stride = 2, pad = 1) }",
        )
        .unwrap();
        g.outputs.clear();
        let (h, r) = (node_value(&g, "c"), input(&g, "r"));
        append(&mut g, op.clone(), h, r, "dx", true);
        let stats = fuse::run(&mut g, true);
        assert!(
            g.nodes
                .iter()
                .any(|n| n.path == "dx" && n.fused_into.is_some()),
            "{stats:?}"
        );
        check(&g, &format!("{} after conv2d", op.name));
    }
}

/// Runs `g` for `N = n` lowered with `options`; returns the outputs and
/// how many of the plan's steps are row steps (the runtime's kernels).
fn compiled_with(
    g: &Graph,
    n: usize,
    ins: &[&[f32]],
    threads: usize,
    options: crate::options::CompileOptions,
) -> (Vec<Vec<f32>>, usize) {
    let mut jit = crate::back::jit::Jit::new().unwrap();
    let lowered = super::super::lower(g, &[("N".into(), n as i64)], options, &mut jit).unwrap();
    let rows = lowered
        .plan
        .steps
        .iter()
        .filter(|s| matches!(s.work, netc_runtime::plan::Work::Rows(_)))
        .count();
    (run_lowered(lowered, ins, &[], threads), rows)
}

/// Chains whose cost is a GELU, SiLU, sigmoid or `exp` run on the
/// runtime's AVX-512 kernel (one row step each, on CPUs with AVX-512F)
/// and match the interpreter's f64 definitions element by element, over
/// x in [-12, 12] and sizes that end in partial vectors and blocks; with
/// `wide_pointwise` off they stay JIT kernels (no row step) and match too.
#[test]
fn transcendental_chains_run_wide_and_match_the_interpreter() {
    let cases = [
        "gelu(x)",
        "y * gelu(x)",
        "2.0 - sigmoid(x) / y",
        "silu(x) + y",
        "exp(x * 0.5) - 1.0",
        "-sigmoid(x) * 3.0",
    ];
    for case in cases {
        let g = program(&format!(
            "model m() {{ input x: f32[N, 7, 301]  input y: f32[N, 7, 301]  output z = {case} }}"
        ))
        .unwrap();
        let n = 3;
        let len = n * 7 * 301;
        let x: Vec<f32> = (0..len)
            .map(|i| -12.0 + 24.0 * i as f32 / len as f32)
            .collect();
        let y: Vec<f32> = (0..len).map(|i| 1.5 + (i as f32 * 0.37).sin()).collect();
        let shape = vec![n, 7, 301];
        let inputs = [("x", shape.clone(), x.clone()), ("y", shape, y.clone())];
        let want = reference(&g, &inputs, &[]);
        for wide in [true, false] {
            for threads in [1, 2] {
                let options = crate::options::CompileOptions {
                    wide_pointwise: wide,
                    ..Default::default()
                };
                let (got, rows) = compiled_with(&g, n, &[&x, &y], threads, options);
                let expect_rows = usize::from(wide && netc_runtime::pointwise::available());
                assert_eq!(rows, expect_rows, "{case}: row steps with wide = {wide}");
                assert_close(
                    &got[0],
                    &want[0],
                    5e-7,
                    &format!("{case}, wide {wide}, {threads} threads"),
                );
            }
        }
    }
}

/// The GELU and SiLU gradients (`op(dy, v)`, `v` the activation's input)
/// run on the AVX-512 kernel too, and both paths match the interpreter
/// element by element over v in [-12, 12].
#[test]
fn gelu_and_silu_gradients_run_wide_and_match_the_interpreter() {
    let ops = [
        Op::new("silu_grad"),
        Op::new("gelu_grad").with("approximate", Attr::Str("none".into())),
    ];
    for op in ops {
        let mut g = program(
            "model m() { input v: f32[N, 7, 301]  input dy: f32[N, 7, 301]  output h = v * 2.0 }",
        )
        .unwrap();
        g.outputs.clear();
        let (v, dy) = (input(&g, "v"), input(&g, "dy"));
        append(&mut g, op.clone(), dy, v, "dv", true);
        let n = 2;
        let len = n * 7 * 301;
        let vs: Vec<f32> = (0..len)
            .map(|i| -12.0 + 24.0 * i as f32 / len as f32)
            .collect();
        let dys: Vec<f32> = (0..len).map(|i| (i as f32 * 0.29).cos() * 2.0).collect();
        let shape = vec![n, 7, 301];
        let inputs = [("v", shape.clone(), vs.clone()), ("dy", shape, dys.clone())];
        let want = reference(&g, &inputs, &[]);
        for wide in [true, false] {
            let options = crate::options::CompileOptions {
                wide_pointwise: wide,
                ..Default::default()
            };
            let (got, rows) = compiled_with(&g, n, &[&vs, &dys], 2, options);
            let expect_rows = usize::from(wide && netc_runtime::pointwise::available());
            assert_eq!(rows, expect_rows, "{}: row steps, wide {wide}", op.name);
            // Both paths share the formulas, whose `1 − σ(v)` (SiLU) loses
            // relative accuracy for large v: 2e-6, not the forward's 5e-7.
            assert_close(
                &got[0],
                &want[0],
                2e-6,
                &format!("{}, wide {wide}", op.name),
            );
        }
    }
}
