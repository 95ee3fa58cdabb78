//! `group_norm` compiled (f32) against the reference interpreter (f64):
//! channels first and last, with and without the affine parameters, 1 and
//! 2 threads; and through the optimisation passes, where the layout pass
//! keeps the norm in its convolutions' NHWC chain and the fusion pass
//! hands it the following `relu`. And `group_norm_grad`, compiled
//! against the interpreter.

use super::super::oracle::{
    assert_close, check, compiled, data, make_nhwc, params, reference, to_nhwc,
};
use super::super::train_oracle::{append, check_rel, rel_l2};
use crate::ir::{Attr, Op};
use crate::options::CompileOptions;
use crate::passes::pipeline::optimize;
use crate::testing::model;

#[test]
fn group_norms_equal_the_interpreter() {
    for (shape, call) in [
        ([2, 32, 5, 7], "x |> gn: group_norm(8)"),
        ([1, 6, 9, 4], "x |> gn: group_norm(3, affine = false)"),
        ([3, 4, 1, 1], "x |> gn: group_norm(1, eps = 0.01)"),
        ([2, 16, 11, 13], "x |> gn: group_norm(16)"),
    ] {
        let dims = format!("{shape:?}");
        let g = model(&format!("input x: f32{dims}\noutput y = {call}")).unwrap();
        let n: usize = shape.iter().product();
        let x = data(n, 0.7, 3.0);
        check(&g, &[], &[("x", shape.to_vec(), x.clone())], 1e-5);

        let want = reference(&g, &[("x", shape.to_vec(), x.clone())], &params(&g));
        let [b, c, h, w] = shape;
        let mut nhwc = g.clone();
        make_nhwc(&mut nhwc, "group_norm");
        let xl = to_nhwc(&x, b, c, h, w);
        let wl = to_nhwc(&want[0], b, c, h, w);
        for threads in [1, 2] {
            let got = compiled(&nhwc, &[], &[&xl], &params(&g), threads);
            assert_close(&got[0], &wl, 1e-5, &format!("nhwc {call} on {dims}"));
        }
    }
}

/// FCOS's tower step `conv → group_norm → relu` and the FPN's
/// `lateral + resize_nearest(coarser)`, optimised: the norm and the resize
/// run channels last inside the convolutions' chain, the relu is fused
/// into the norm, and the outputs equal the interpreter's on the
/// unoptimised graph (relative L2: the weights are not scaled by fan-in,
/// so outputs are sums of large terms that partly cancel).
#[test]
fn fcos_tower_steps_run_channels_last_with_the_relu_fused() {
    let g = model(
        "input x: f32[N, 32, 12, 10]\n\
         t = x |> c1: conv2d(32, k = 3, pad = 1) |> gn: group_norm(8) |> relu\n\
         coarse = t |> c2: conv2d(32, k = 3, stride = 2, pad = 1)\n\
         up = resize_nearest(coarse, size = [12, 10])\n\
         output y = (t |> c3: conv2d(32, k = 1)) + up\n\
         output z = upsample_nearest(coarse, scale = 2) |> c4: conv2d(16, k = 3, pad = 1)",
    )
    .unwrap();
    let h = optimize(g.clone(), &CompileOptions::default(), None).unwrap();
    let node = |name: &str| h.nodes.iter().find(|n| n.op.name == name).unwrap();
    for name in ["group_norm", "resize_nearest", "upsample_nearest"] {
        assert!(
            matches!(node(name).op.attr("layout"), Some(Attr::Str(l)) if l == "nhwc"),
            "{name} is not channels last"
        );
    }
    let gn_out = node("group_norm").outputs[0];
    let relu = node("relu");
    assert_eq!(
        relu.fused_into,
        Some(gn_out),
        "relu not fused into the norm"
    );

    let x = data(2 * 32 * 12 * 10, 0.3, 2.0);
    let inputs = [("x", vec![2, 32, 12, 10], x.clone())];
    let ps = params(&g);
    let want = reference(&g, &inputs, &ps);
    for threads in [1, 2] {
        let got = compiled(&h, &[("N", 2)], &[&x], &ps, threads);
        for (k, (a, e)) in got.iter().zip(&want).enumerate() {
            let err = rel_l2(a, e);
            assert!(err < 1e-5, "output {k}, {threads} threads: rel L2 {err}");
        }
    }
}

/// `group_norm_grad` (training plans, channels first): `dx`, `dweight`
/// and `dbias` compiled against the interpreter's definition (itself
/// checked by finite differences), with and without the affine terms, one
/// position per channel, and data offset per channel.
#[test]
fn group_norm_grads_equal_the_interpreter() {
    for (shape, groups, affine) in [
        (vec![2, 8, 5, 3], 2, true),
        (vec![3, 6, 4], 3, false),
        (vec![4, 6], 2, true),
        (vec![2, 32, 9, 7], 8, true),
    ] {
        let c = shape[1];
        let dims = format!("{shape:?}");
        let mut g = model(&format!(
            "input x: f32{dims}\ninput dy: f32{dims}\ninput w: f32[{c}]\noutput y = relu(x)"
        ))
        .unwrap();
        let v: Vec<_> = g.inputs.iter().map(|(_, v)| *v).collect();
        let op = Op::new("group_norm_grad")
            .with("groups", Attr::Int(groups))
            .with("eps", Attr::Float(1e-5))
            .with("affine", Attr::Bool(affine));
        let (inputs, results) = if affine {
            (
                vec![v[1], v[0], v[2]],
                vec![shape.clone(), vec![c], vec![c]],
            )
        } else {
            (vec![v[1], v[0]], vec![shape.clone()])
        };
        append(&mut g, op, inputs, &results);
        let n: usize = shape.iter().product();
        let inner = n / shape[0] / c;
        let x: Vec<f32> = data(n, 0.3, 2.0)
            .iter()
            .enumerate()
            .map(|(i, v)| v + 3.0 * ((i / inner) % c) as f32)
            .collect();
        let inputs = vec![
            ("x", shape.clone(), x),
            ("dy", shape.clone(), data(n, 1.1, 1.0)),
            ("w", vec![c], data(c, 2.0, 1.0)),
        ];
        check_rel(&g, &inputs, 1e-5, &format!("{dims} groups {groups}"));
    }
}
