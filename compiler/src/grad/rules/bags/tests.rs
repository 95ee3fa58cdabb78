//! Finite-difference checks of the `amax` and `bag_conv1d` rules, in f64
//! on the reference interpreter: every parameter gradient of a small
//! training graph equals central differences of the graph's own loss
//! (evaluated without any backward rule). Sparse bag inputs are dense
//! arrays holding mostly zeros, whole empty bags among them.

use crate::grad::training_graph;
use crate::interp::{self, Array};
use crate::ir::Graph;
use netc_runtime::counter::unit;
use std::collections::HashMap;

/// Every input symbol (the batch `N`) is bound to this.
const BATCH: usize = 3;

fn shape(g: &Graph, v: crate::ir::ValueId) -> Vec<usize> {
    g.ty(v)
        .shape
        .iter()
        .map(|d| d.eval(&|_| Some(BATCH as i64)).as_known().unwrap() as usize)
        .collect()
}

/// Deterministic inputs: a sparse input holds counts in about a quarter
/// of its entries (bag 1 is empty), a dense one values in [-1, 1).
fn inputs(g: &Graph) -> Vec<(String, Array)> {
    g.inputs
        .iter()
        .map(|(name, v)| {
            let s = shape(g, *v);
            let n: usize = s.iter().product();
            let data = if g.ty(*v).sparse {
                let vocab = s[s.len() - 1];
                (0..n)
                    .map(|i| match unit(5, name, i as u64) {
                        _ if i / vocab == 1 => 0.0,
                        u if u < 0.1 => 2.0,
                        u if u < 0.25 => 1.0,
                        _ => 0.0,
                    })
                    .collect()
            } else {
                (0..n)
                    .map(|i| 2.0 * unit(11, name, i as u64) - 1.0)
                    .collect()
            };
            (name.clone(), Array::new(&s, data))
        })
        .collect()
}

fn params(g: &Graph) -> HashMap<String, Array> {
    g.params
        .iter()
        .map(|p| {
            let s = shape(g, p.value);
            let n = s.iter().product();
            let data = (0..n).map(|i| unit(3, &p.path, i as u64) - 0.5).collect();
            (p.path.clone(), Array::new(&s, data))
        })
        .collect()
}

fn run(g: &Graph, ins: &[(String, Array)], ps: &HashMap<String, Array>) -> HashMap<String, Array> {
    let named: Vec<(&str, Array)> = ins.iter().map(|(n, a)| (n.as_str(), a.clone())).collect();
    interp::run(g, &named, ps)
        .unwrap_or_else(|e| panic!("interpreter: {e}"))
        .into_iter()
        .collect()
}

/// Checks every element of every parameter gradient of `src` against
/// central differences of the loss; returns how many were not zero.
fn check(src: &str) -> usize {
    let g = crate::testing::program(src).unwrap();
    let t = training_graph(&g).unwrap();
    let ins = inputs(&t.graph);
    let mut ps = params(&t.graph);
    let outs = run(&t.graph, &ins, &ps);
    let h = 1e-6;
    let mut nonzero = 0;
    for &(pi, oi) in &t.grads {
        let path = t.graph.params[pi].path.clone();
        let grad = outs[&t.graph.outputs[oi].0].data.clone();
        for (i, &got) in grad.iter().enumerate() {
            let orig = ps[&path].data[i];
            let mut loss_at = |x: f64| {
                ps.get_mut(&path).unwrap().data[i] = x;
                run(&t.graph, &ins, &ps)["loss"].data[0]
            };
            let fd = (loss_at(orig + h) - loss_at(orig - h)) / (2.0 * h);
            ps.get_mut(&path).unwrap().data[i] = orig;
            assert!(
                (got - fd).abs() <= 1e-6 * (1.0 + fd.abs()),
                "d loss / d {path}[{i}] = {got}, finite differences give {fd}"
            );
            nonzero += usize::from(got != 0.0);
        }
    }
    nonzero
}

/// A CNN-DSSM tower: `bag_conv1d` (padded, with bias) -> tanh -> max over
/// word positions -> linear; every weight and bias element.
#[test]
fn cnn_tower_gradients_match_finite_differences() {
    let nonzero = check(
        "model m() {
            input q: sparse f32[N, 5, 12]
            h = q |> conv: bag_conv1d(4, 3, pad = 1) |> tanh
            output y = amax(h, dim = -2) |> fc: linear(3)
        }
        train m { label r: f32[N, 3]  loss = sum(y * r)  optimizer = sgd(lr = 0.1) }",
    );
    assert!(nonzero > 40, "{nonzero} non-zero gradient elements");
}

/// `bag_conv1d` without padding or bias over `[N, 2, T, V]`, and `amax`
/// over two dims with `keepdim`.
#[test]
fn unpadded_convolution_and_multi_dim_maxima_match_finite_differences() {
    check(
        "model m() {
            input d: sparse f32[N, 2, 4, 10]
            output y = d |> conv: bag_conv1d(3, 2, bias = false) |> tanh
        }
        train m { label r: f32[N, 2, 3, 3]  loss = sum(y * r)  optimizer = sgd(lr = 0.1) }",
    );
    check(
        "model m() {
            input x: f32[N, 4, 5, 6]
            output y = amax(x |> fc: linear(6), dim = [1, 2], keepdim = true)
        }
        train m { label r: f32[N, 1, 1, 6]  loss = sum(y * r)  optimizer = sgd(lr = 0.1) }",
    );
}
