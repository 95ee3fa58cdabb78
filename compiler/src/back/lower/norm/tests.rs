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
