//! Training batch norm compiled (f32) vs the reference interpreter (f64):
//! forward statistics, running-stat updates and the backward, ranks 2 to
//! 4, batch 1 and more, 1 and 2 threads.

use super::super::oracle::data;
use super::super::train_oracle::{append, check_rel};
use crate::ir::{Attr, Op};
use crate::testing::model;

/// `batch_norm_train` followed by `batch_norm_grad` on its statistics:
/// all eight results match the interpreter.
#[test]
fn batch_norm_train_and_grad_match_the_interpreter() {
    for shape in [
        vec![8, 3, 5, 7],
        vec![1, 4, 3, 3],
        vec![2, 5, 17],
        vec![6, 3],
        vec![3, 2, 33, 9],
    ] {
        let c = shape[1];
        let dims = shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let mut g = model(&format!(
            "input x: f32[{dims}]\ninput dy: f32[{dims}]\ninput w: f32[{c}]\ninput b: f32[{c}]
             input rm: f32[{c}]\ninput rv: f32[{c}]\noutput y = relu(x)"
        ))
        .unwrap();
        let v: Vec<_> = g.inputs.iter().map(|(_, v)| *v).collect();
        let op = Op::new("batch_norm_train")
            .with("eps", Attr::Float(1e-5))
            .with("momentum", Attr::Float(0.1));
        let per = vec![c];
        let f = append(
            &mut g,
            op,
            vec![v[0], v[2], v[3], v[4], v[5]],
            &[
                shape.clone(),
                per.clone(),
                per.clone(),
                per.clone(),
                per.clone(),
            ],
        );
        let mut outs = g.outputs.clone();
        append(
            &mut g,
            Op::new("batch_norm_grad"),
            vec![v[1], v[0], f[1], f[2], v[2]],
            &[shape.clone(), per.clone(), per.clone()],
        );
        outs.extend(g.outputs.iter().map(|(n, v)| (format!("g{n}"), *v)));
        g.outputs = outs;
        let n: usize = shape.iter().product();
        // An offset per channel tests the shifted statistics.
        let x: Vec<f32> = data(n, 0.3, 2.0)
            .iter()
            .enumerate()
            .map(|(i, v)| v + 3.0 * ((i / n.div_ceil(c * shape[0])) % c) as f32)
            .collect();
        let inputs = vec![
            ("x", shape.clone(), x),
            ("dy", shape.clone(), data(n, 1.1, 1.0)),
            ("w", per.clone(), data(c, 2.0, 1.0)),
            ("b", per.clone(), data(c, 2.5, 1.0)),
            ("rm", per.clone(), data(c, 3.0, 1.0)),
            (
                "rv",
                per.clone(),
                data(c, 3.5, 1.0).iter().map(|v| v.abs() + 0.5).collect(),
            ),
        ];
        check_rel(&g, &inputs, 1e-5, &format!("{shape:?}"));
    }
}

/// A `relu` reading the normalised result is fused into the norm by the
/// fusion pass, and the fused group (the norm's kernel writing the relu's
/// result) still matches the interpreter, the statistics and running
/// stats included.
#[test]
fn batch_norm_train_with_a_fused_relu_matches_the_interpreter() {
    for shape in [vec![4, 3, 5, 7], vec![3, 6, 2, 33]] {
        let c = shape[1];
        let dims = shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let mut g = model(&format!(
            "input x: f32[{dims}]\ninput w: f32[{c}]\ninput b: f32[{c}]
             input rm: f32[{c}]\ninput rv: f32[{c}]\noutput y = relu(x)"
        ))
        .unwrap();
        let v: Vec<_> = g.inputs.iter().map(|(_, v)| *v).collect();
        let op = Op::new("batch_norm_train")
            .with("eps", Attr::Float(1e-5))
            .with("momentum", Attr::Float(0.1));
        let per = vec![c];
        let f = append(
            &mut g,
            op,
            vec![v[0], v[1], v[2], v[3], v[4]],
            &[
                shape.clone(),
                per.clone(),
                per.clone(),
                per.clone(),
                per.clone(),
            ],
        );
        let r = append(
            &mut g,
            Op::new("relu"),
            vec![f[0]],
            std::slice::from_ref(&shape),
        );
        g.outputs = std::iter::once(r[0])
            .chain(f[1..].iter().copied())
            .enumerate()
            .map(|(k, v)| (format!("r{k}"), v))
            .collect();
        let stats = crate::passes::fuse::run(&mut g, true);
        assert_eq!(stats.fused, 1, "{shape:?}: the relu is fused");
        assert!(g.nodes.iter().any(|n| n.fused_into == Some(f[0])));
        let n: usize = shape.iter().product();
        // Small biases: about half the normalised values are negative
        // (the offset keeps the means away from 0 for the relative check).
        let x = data(n, 0.7, 2.0).iter().map(|v| v + 1.5).collect();
        let inputs = vec![
            ("x", shape.clone(), x),
            ("w", per.clone(), data(c, 2.0, 1.0)),
            ("b", per.clone(), data(c, 2.5, 0.5)),
            ("rm", per.clone(), data(c, 3.0, 1.0)),
            (
                "rv",
                per.clone(),
                data(c, 3.5, 1.0).iter().map(|v| v.abs() + 0.5).collect(),
            ),
        ];
        let (got, _) = check_rel(&g, &inputs, 1e-5, &format!("fused {shape:?}"));
        let negatives = got[0].iter().filter(|v| **v == 0.0).count();
        assert!(
            negatives > n / 8,
            "{shape:?}: relu clipped {negatives} of {n}"
        );
    }
}
