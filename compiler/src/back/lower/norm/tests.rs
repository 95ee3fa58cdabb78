//! Batch norms compiled vs the reference interpreter: channels first and
//! last, affine or not, frozen, with a fused ReLU.

use super::super::lower;
use super::super::oracle::{check, compiled, make_nhwc, params, reference, to_nhwc};
use crate::back::jit::Jit;
use crate::options::CompileOptions;
use crate::testing::program;

fn input(n: usize, rest: &[usize]) -> (Vec<usize>, Vec<f32>) {
    let mut shape = vec![n];
    shape.extend_from_slice(rest);
    let len = shape.iter().product();
    (shape, super::super::oracle::data(len, 0.5, 3.0))
}

#[test]
fn batch_norm_matches_the_interpreter_channels_first_batch_1_and_3() {
    for (src, rest) in [
        ("x |> bn: batch_norm", vec![5, 3, 7]),
        (
            "x |> bn: batch_norm(affine = false, eps = 1e-3)",
            vec![5, 3, 7],
        ),
        ("x |> bn: frozen_batch_norm", vec![5, 3, 7]),
        ("x |> bn: batch_norm", vec![6]),
        ("x |> bn: batch_norm", vec![3, 11]),
    ] {
        let ty = rest
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let g = program(&format!(
            "model m() {{ input x: f32[N, {ty}]  output y = {src} }}"
        ))
        .unwrap();
        for n in [1, 3] {
            let (shape, x) = input(n, &rest);
            check(&g, &[("N", n as i64)], &[("x", shape, x)], 1e-5);
        }
    }
}

/// The ReLU fused into the norm runs inside the norm's kernel: the plan
/// has the two folding kernels as prepare steps and one kernel (plus the
/// output copy) per run.
#[test]
fn a_fused_relu_runs_inside_the_norm_kernel() {
    let mut g =
        program("model m() { input x: f32[N, 4, 5, 3]  output y = x |> bn: batch_norm |> relu }")
            .unwrap();
    let bn = g
        .nodes
        .iter()
        .position(|n| n.op.name == "batch_norm")
        .unwrap();
    let head = g.nodes[bn].outputs[0];
    let relu = g.nodes.iter().position(|n| n.op.name == "relu").unwrap();
    g.nodes[relu].fused_into = Some(head);
    let mut jit = Jit::new().unwrap();
    let lowered = lower(&g, &[("N".into(), 3)], CompileOptions::default(), &mut jit).unwrap();
    assert_eq!(
        lowered.plan.prepare.len(),
        2,
        "scale and shift are prepared"
    );
    assert_eq!(
        lowered.plan.steps.len(),
        2,
        "norm + relu, then the output copy"
    );
    let (shape, x) = input(3, &[4, 5, 3]);
    check(&g, &[("N", 3)], &[("x", shape.clone(), x.clone())], 1e-5);
    let want = reference(&g, &[("x", shape, x)], &params(&g));
    assert!(want[0].contains(&0.0) && want[0].iter().any(|v| *v > 0.0));
}

#[test]
fn channels_last_batch_norm_matches_the_interpreter_on_permuted_data() {
    for c in [5, 8] {
        let src = format!(
            "model m() {{ input x: f32[2, {c}, 3, 7]  output y = x |> bn: batch_norm |> relu }}"
        );
        let g = program(&src).unwrap();
        let (shape, x) = input(2, &[c, 3, 7]);
        let ps = params(&g);
        let want = reference(&g, &[("x", shape, x.clone())], &ps);
        let mut h = g.clone();
        make_nhwc(&mut h, "batch_norm");
        let relu = h.nodes.iter().position(|n| n.op.name == "relu").unwrap();
        let bn_out = h.nodes[relu].inputs[0];
        h.values[h.nodes[relu].outputs[0].0 as usize].ty = h.ty(bn_out).clone();
        h.nodes[relu].fused_into = Some(bn_out);
        let xl = to_nhwc(&x, 2, c, 3, 7);
        let wl = to_nhwc(&want[0], 2, c, 3, 7);
        for threads in [1, 2] {
            let got = compiled(&h, &[], &[&xl], &ps, threads);
            super::super::oracle::assert_close(&got[0], &wl, 1e-5, "nhwc batch norm");
        }
    }
}

/// A channels-last concat read only by a norm → relu heads their group
/// (the fusion pass): each input is normalised straight into its columns
/// of the result, the concatenation is never stored, and the result equals
/// the interpreter's concat → norm → relu, on pieces of 3, 6 and 8
/// channels (scalar tails, one f32x4 group and a tail, whole groups).
#[test]
fn a_concat_fused_with_its_norm_matches_the_interpreter() {
    let (n, h, w, cs) = (2, 4, 5, [3usize, 6, 8]);
    let total: usize = cs.iter().sum();
    let src = format!(
        "model m() {{ input a: f32[{n}, {}, {h}, {w}]  input b: f32[{n}, {}, {h}, {w}]
                      input c: f32[{n}, {}, {h}, {w}]
                      output y = concat([a, b, c], dim = 1) |> bn: batch_norm |> relu }}",
        cs[0], cs[1], cs[2]
    );
    let g = program(&src).unwrap();
    let xs: Vec<Vec<f32>> = cs
        .iter()
        .enumerate()
        .map(|(i, c)| super::super::oracle::data(n * c * h * w, 0.3 + i as f32, 3.0))
        .collect();
    let ps = params(&g);
    let named: Vec<(&str, Vec<usize>, Vec<f32>)> = ["a", "b", "c"]
        .iter()
        .zip(&cs)
        .zip(&xs)
        .map(|((name, c), x)| (*name, vec![n, *c, h, w], x.clone()))
        .collect();
    let want = reference(&g, &named, &ps);
    assert!(want[0].contains(&0.0) && want[0].iter().any(|v| *v > 0.0));

    // The same graph channels last: inputs, concat (dim 3), norm and relu.
    let mut g = g;
    make_nhwc(&mut g, "batch_norm");
    let nhwc = |s: &[crate::ir::Dim]| vec![s[0].clone(), s[2].clone(), s[3].clone(), s[1].clone()];
    let concat = g.nodes.iter().position(|n| n.op.name == "concat").unwrap();
    for v in g.nodes[concat].inputs.clone() {
        let s = g.values[v.0 as usize].ty.shape.clone();
        g.values[v.0 as usize].ty.shape = nhwc(&s);
    }
    for attr in &mut g.nodes[concat].op.attrs {
        if attr.0 == "dim" {
            attr.1 = crate::ir::Attr::Int(3);
        }
    }
    let relu = g.nodes.iter().position(|n| n.op.name == "relu").unwrap();
    let bn_out = g.nodes[relu].inputs[0];
    g.values[g.nodes[relu].outputs[0].0 as usize].ty = g.ty(bn_out).clone();
    let stats = crate::passes::fuse::run(&mut g, true);
    assert_eq!(stats.fused, 2, "the norm and the relu join the concat");
    let head = g.nodes[concat].outputs[0];
    assert!(g.nodes[relu].fused_into == Some(head));

    let mut jit = Jit::new().unwrap();
    let lowered = lower(&g, &[], CompileOptions::default(), &mut jit).unwrap();
    assert_eq!(
        lowered.plan.steps.len(),
        cs.len() + 1,
        "one kernel per concat input, then the output copy"
    );
    let ins: Vec<Vec<f32>> = cs
        .iter()
        .zip(&xs)
        .map(|(c, x)| to_nhwc(x, n, *c, h, w))
        .collect();
    let ins: Vec<&[f32]> = ins.iter().map(Vec::as_slice).collect();
    let wl = to_nhwc(&want[0], n, total, h, w);
    for threads in [1, 2] {
        let got = compiled(&g, &[], &ins, &ps, threads);
        super::super::oracle::assert_close(&got[0], &wl, 1e-5, "concat + nhwc batch norm");
    }
}
