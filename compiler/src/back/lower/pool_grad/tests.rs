//! Pooling gradients compiled (f32) vs the reference interpreter (f64):
//! odd sizes, stride > 1, padding, dilation, `ceil_mode`,
//! `count_include_pad` both ways, non-divisible adaptive bins, ties, batch
//! 1 and more, 1 and 2 threads.

use super::super::oracle::data;
use super::super::train_oracle::{append, check_rel};
use crate::ir::{Attr, Dim, Op};
use crate::testing::model;

const POOLS: &[&str] = &[
    "max_pool2d(3, stride = 2, pad = 1)",
    "max_pool2d(3, stride = 2, pad = 1, ceil_mode = true)",
    "max_pool2d(2, stride = 2)",
    "max_pool2d(2, stride = 2, ceil_mode = true)",
    "max_pool2d(3, stride = 1, pad = 1)",
    "max_pool2d([3, 2], stride = [1, 2], pad = [1, 0], dilation = [2, 1])",
    "avg_pool2d(2, stride = 2)",
    "avg_pool2d(3, stride = 2, pad = 1)",
    "avg_pool2d(3, stride = 2, pad = 1, count_include_pad = false)",
    "avg_pool2d(3, stride = 2, pad = 1, ceil_mode = true)",
    "avg_pool2d(3, stride = 2, pad = 1, ceil_mode = true, count_include_pad = false)",
    "avg_pool2d([2, 3], stride = [3, 1], pad = [1, 1])",
    "adaptive_avg_pool2d([3, 2])",
    "adaptive_avg_pool2d([4, 3])",
    "adaptive_avg_pool2d(1)",
    "adaptive_avg_pool2d([9, 6])",
];

/// The gradient of `pool` on an `x` of `shape`, compared with the
/// interpreter; `x` from `values`.
fn check_pool(shape: [usize; 4], pool: &str, values: &dyn Fn(usize) -> Vec<f32>) {
    let dims = shape.map(|d| d.to_string()).join(", ");
    let f = model(&format!("input x: f32[{dims}]\noutput y = x |> {pool}")).unwrap();
    let fwd = f.nodes.last().unwrap();
    let ys: Vec<usize> = f.ty(fwd.outputs[0]).known_dims().unwrap();
    let ydims = ys
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let mut g = model(&format!(
        "input x: f32[{dims}]\ninput dy: f32[{ydims}]\noutput y = relu(x)"
    ))
    .unwrap();
    let (x, dy) = (g.inputs[0].1, g.inputs[1].1);
    let (name, inputs) = match fwd.op.name {
        "max_pool2d" => ("max_pool2d_grad", vec![dy, x]),
        "avg_pool2d" => ("avg_pool2d_grad", vec![dy]),
        _ => ("adaptive_avg_pool2d_grad", vec![dy]),
    };
    let mut op = Op::new(name);
    op.attrs = fwd.op.attrs.clone();
    op.attrs.push((
        "input_shape",
        Attr::Dims(shape.iter().map(|&d| Dim::known(d as i64)).collect()),
    ));
    append(&mut g, op, inputs, &[shape.to_vec()]);
    let (n, m): (usize, usize) = (shape.iter().product(), ys.iter().product());
    let ins = vec![
        ("x", shape.to_vec(), values(n)),
        ("dy", ys.clone(), data(m, 0.9, 2.0)),
    ];
    check_rel(&g, &ins, 1e-5, &format!("{pool} on {shape:?}"));
}

#[test]
fn pool_grads_match_the_interpreter() {
    for pool in POOLS {
        for shape in [[2, 3, 7, 9], [1, 2, 6, 8], [3, 1, 5, 5], [1, 2, 5, 21]] {
            check_pool(shape, pool, &|n| data(n, 0.25, 4.0));
        }
    }
}

/// Integer-valued inputs with many equal values: the compiled kernel
/// sends each window's gradient to the same (first) maximum.
#[test]
fn max_pool_grad_ties_match_the_interpreter() {
    for pool in &POOLS[..6] {
        check_pool([2, 2, 7, 9], pool, &|n| {
            (0..n).map(|i| ((i * 7) % 5) as f32).collect()
        });
    }
}

/// NaNs and ties in the paired (2×2, four windows per pass) path and its
/// scalar tail: every window's gradient goes to the tap PyTorch picks (the
/// last NaN, else the first maximum).
#[test]
fn max_pool_grad_nans_and_ties_match_the_interpreter() {
    for pool in [POOLS[2], POOLS[3]] {
        check_pool([2, 2, 5, 19], pool, &|n| {
            (0..n)
                .map(|i| match (i * 11) % 7 {
                    0 | 3 => f32::NAN,
                    k => (k % 3) as f32,
                })
                .collect()
        });
    }
}
