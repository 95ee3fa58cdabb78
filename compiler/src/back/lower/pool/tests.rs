//! Pooling compiled vs the reference interpreter: odd sizes, padding,
//! dilation, `ceil_mode`, `count_include_pad`, adaptive bins, 1-D pools,
//! batch 1 and 3, channels first and last, 1 and 2 threads.

use super::super::oracle::{
    assert_close, check, compiled, data, make_nhwc, params, reference, to_nhwc,
};
use crate::testing::program;

const POOLS_2D: &[&str] = &[
    "max_pool2d(3, stride = 2, pad = 1)",
    "max_pool2d(3, stride = 2, pad = 1, ceil_mode = true)",
    "max_pool2d(2, stride = 2)",
    "max_pool2d(2, stride = 2, ceil_mode = true)",
    "max_pool2d([3, 2], stride = [1, 2], pad = [1, 0], dilation = [2, 1])",
    "max_pool2d([3, 2], stride = [2, 2], pad = [1, 0])",
    "avg_pool2d([3, 2], stride = [2, 2], pad = [1, 0])",
    "avg_pool2d([3, 2], stride = [2, 2], pad = [1, 0], count_include_pad = false)",
    "avg_pool2d(2, stride = 2, ceil_mode = true)",
    "avg_pool2d(2, stride = 2)",
    "avg_pool2d(3, stride = 2, pad = 1)",
    "avg_pool2d(3, stride = 2, pad = 1, count_include_pad = false)",
    "avg_pool2d(3, stride = 2, pad = 1, ceil_mode = true)",
    "avg_pool2d(3, stride = 2, pad = 1, ceil_mode = true, count_include_pad = false)",
    "avg_pool2d([2, 3], stride = [3, 1], pad = [1, 1])",
    "adaptive_avg_pool2d(1)",
    "adaptive_avg_pool2d([3, 4])",
    "adaptive_avg_pool2d([5, 2])",
    "adaptive_max_pool2d([3, 4])",
];

/// Rows of 9 and 21 inputs: the pair windows (`k = 2, stride = 2` along
/// W) run one or two four-output chunks, and the general path the rest.
#[test]
fn pools_2d_match_the_interpreter_channels_first() {
    for pool in POOLS_2D {
        for (c, h, w) in [(3, 7, 9), (2, 5, 21)] {
            let g = program(&format!(
                "model m() {{ input x: f32[N, {c}, {h}, {w}]  output y = x |> {pool} }}"
            ))
            .unwrap();
            for n in [1, 3] {
                let x = data(n * c * h * w, 0.25, 4.0);
                check(&g, &[("N", n as i64)], &[("x", vec![n, c, h, w], x)], 1e-5);
            }
        }
    }
}

#[test]
fn pools_1d_and_global_average_match_the_interpreter() {
    for (ty, pool) in [
        ("f32[N, 4, 11]", "max_pool1d(3, stride = 2, pad = 1)"),
        (
            "f32[N, 4, 11]",
            "max_pool1d(3, stride = 2, ceil_mode = true)",
        ),
        ("f32[N, 4, 11]", "avg_pool1d(3, stride = 2, pad = 1)"),
        (
            "f32[N, 4, 11]",
            "avg_pool1d(4, stride = 3, pad = 2, ceil_mode = true, count_include_pad = false)",
        ),
        ("f32[N, 4, 11]", "global_avg_pool"),
        ("f32[N, 4, 5, 7]", "global_avg_pool"),
    ] {
        let g = program(&format!(
            "model m() {{ input x: {ty}  output y = x |> {pool} }}"
        ))
        .unwrap();
        for n in [1, 3] {
            let shape: Vec<usize> = if ty.contains("5, 7") {
                vec![n, 4, 5, 7]
            } else {
                vec![n, 4, 11]
            };
            let x = data(shape.iter().product(), 1.5, 4.0);
            check(&g, &[("N", n as i64)], &[("x", shape, x)], 1e-5);
        }
    }
}

/// The channels-last pools (layout pass form) on permuted data equal the
/// permuted channels-first reference, for channel counts with and
/// without an f32x4 tail, below, at and above the 16-channel
/// groups.
#[test]
fn channels_last_pools_match_the_interpreter_on_permuted_data() {
    for pool in POOLS_2D.iter().filter(|p| !p.contains("dilation")) {
        for c in [3, 8, 9, 16, 21, 36] {
            let g = program(&format!(
                "model m() {{ input x: f32[2, {c}, 7, 9]  output y = x |> {pool} }}"
            ))
            .unwrap();
            let x = data(2 * c * 63, 0.75, 4.0);
            let want = reference(&g, &[("x", vec![2, c, 7, 9], x.clone())], &[]);
            let out = g.ty(g.outputs[0].1).known_shape().unwrap();
            let (oh, ow) = (out[2] as usize, out[3] as usize);
            let mut h = g.clone();
            let name = h.nodes[0].op.name;
            make_nhwc(&mut h, name);
            let xl = to_nhwc(&x, 2, c, 7, 9);
            let wl = to_nhwc(&want[0], 2, c, oh, ow);
            for threads in [1, 2] {
                let got = compiled(&h, &[], &[&xl], &params(&h), threads);
                assert_close(&got[0], &wl, 1e-5, &format!("nhwc {pool}, C = {c}"));
            }
        }
    }
}
