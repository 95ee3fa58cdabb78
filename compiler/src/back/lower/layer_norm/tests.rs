//! `layer_norm_grad` compiled (f32) against the interpreter's definition
//! (itself checked by finite differences): `dx`, `dweight` and `dbias`,
//! one and two trailing dims, with and without the affine terms, rows
//! offset from zero, 1 and 2 threads. The forward's tests are with the
//! attention's (`attention/tests.rs`).

use super::super::oracle::data;
use super::super::train_oracle::{append, check_rel};
use crate::ir::{Attr, Op};
use crate::testing::model;

#[test]
fn layer_norm_grads_equal_the_interpreter() {
    for (shape, norm_shape, affine) in [
        (vec![2, 7, 16], vec![16], true),
        (vec![3, 4, 6], vec![4, 6], true),
        (vec![5, 9], vec![9], false),
    ] {
        let width: usize = norm_shape.iter().product();
        let dims = format!("{shape:?}");
        let wdims = format!("{norm_shape:?}");
        let mut g = model(&format!(
            "input x: f32{dims}\ninput dy: f32{dims}\ninput w: f32{wdims}\noutput y = relu(x)"
        ))
        .unwrap();
        let v: Vec<_> = g.inputs.iter().map(|(_, v)| *v).collect();
        let op = Op::new("layer_norm_grad")
            .with(
                "shape",
                Attr::Ints(norm_shape.iter().map(|&d| d as i64).collect()),
            )
            .with("eps", Attr::Float(1e-5))
            .with("affine", Attr::Bool(affine));
        let (inputs, results) = if affine {
            (
                vec![v[1], v[0], v[2]],
                vec![shape.clone(), norm_shape.clone(), norm_shape.clone()],
            )
        } else {
            (vec![v[1], v[0]], vec![shape.clone()])
        };
        append(&mut g, op, inputs, &results);
        let n: usize = shape.iter().product();
        let x: Vec<f32> = data(n, 0.3, 2.0)
            .iter()
            .enumerate()
            .map(|(i, v)| v + 2.0 * (i / width) as f32)
            .collect();
        let inputs = vec![
            ("x", shape.clone(), x),
            ("dy", shape.clone(), data(n, 1.1, 1.0)),
            ("w", norm_shape.clone(), data(width, 2.0, 1.0)),
        ];
        check_rel(&g, &inputs, 1e-5, &format!("{dims} over {wdims}"));
    }
}
