//! The text-matching rules on the reference interpreter: parameter
//! gradients equal central differences of the training graph's own loss
//! (sparse bags with empty bags, repeated columns and counts), and the
//! cosine gradient in the clamped region equals PyTorch's.

use crate::elab::Value;
use crate::grad::training_graph;
use crate::interp::{self, Array};
use crate::ir::Graph;
use crate::session::load_model;
use netc_runtime::counter::unit;
use std::collections::HashMap;

const BATCH: usize = 3;

fn shape_of(g: &Graph, v: crate::ir::ValueId) -> Vec<usize> {
    g.ty(v)
        .shape
        .iter()
        .map(|d| d.eval(&|_| Some(BATCH as i64)).as_known().unwrap() as usize)
        .collect()
}

/// Dense arrays of sparse bags: row 0 and every fifth row empty, the
/// others 1 to 4 entries of counts 1, 2 or 0.5 (a column drawn twice adds
/// up); dense f32 inputs uniform in [-1, 1).
fn inputs(g: &Graph) -> Vec<(String, Array)> {
    g.inputs
        .iter()
        .map(|(name, v)| {
            let shape = shape_of(g, *v);
            let n: usize = shape.iter().product();
            if !g.ty(*v).sparse {
                let data = (0..n)
                    .map(|i| 2.0 * unit(11, name, i as u64) - 1.0)
                    .collect();
                return (name.clone(), Array::new(&shape, data));
            }
            let vocab = *shape.last().unwrap();
            let mut data = vec![0.0; n];
            for r in 0..n / vocab {
                if r % 5 == 0 {
                    continue;
                }
                let k = 1 + (unit(5, name, r as u64) * 4.0) as usize;
                for e in 0..k {
                    let key = (r * 16 + e) as u64;
                    let col = (unit(6, name, key) * vocab as f64) as usize % vocab;
                    data[r * vocab + col] +=
                        [1.0, 2.0, 0.5][(unit(7, name, key) * 3.0) as usize % 3];
                }
            }
            (name.clone(), Array::new(&shape, data))
        })
        .collect()
}

fn params(g: &Graph) -> HashMap<String, Array> {
    g.params
        .iter()
        .map(|p| {
            let shape: Vec<usize> = p.ty.known_dims().unwrap();
            let n = shape.iter().product::<usize>();
            let data = (0..n)
                .map(|i| 2.0 * unit(3, &p.path, i as u64) - 1.0)
                .collect();
            (p.path.clone(), Array::new(&shape, data))
        })
        .collect()
}

fn run(
    g: &Graph,
    inputs: &[(String, Array)],
    ps: &HashMap<String, Array>,
) -> HashMap<String, Array> {
    let named: Vec<(&str, Array)> = inputs
        .iter()
        .map(|(n, a)| (n.as_str(), a.clone()))
        .collect();
    interp::run(g, &named, ps)
        .unwrap_or_else(|e| panic!("interpreter: {e}"))
        .into_iter()
        .collect()
}

/// Up to `per_param` elements (spread over rows and columns) of every trained parameter
/// of `g` against central differences.
fn check(name: &str, g: &Graph, per_param: usize) {
    let t = training_graph(g).unwrap_or_else(|e| panic!("{name}: {e}"));
    let ins = inputs(&t.graph);
    let mut ps = params(&t.graph);
    let outs = run(&t.graph, &ins, &ps);
    let h = 1e-6;
    let mut checked = 0;
    for &(pi, oi) in &t.grads {
        let path = t.graph.params[pi].path.clone();
        let grad = &outs[&t.graph.outputs[oi].0];
        let mut nonzero = 0;
        let n = grad.data.len();
        let picks: Vec<usize> = if per_param >= n {
            (0..n).collect()
        } else {
            (0..per_param).map(|k| (k * 7919 + k / 3) % n).collect()
        };
        for i in picks {
            let orig = ps[&path].data[i];
            let mut loss_at = |x: f64| {
                ps.get_mut(&path).unwrap().data[i] = x;
                run(&t.graph, &ins, &ps)["loss"].data[0]
            };
            let fd = (loss_at(orig + h) - loss_at(orig - h)) / (2.0 * h);
            ps.get_mut(&path).unwrap().data[i] = orig;
            let got = grad.data[i];
            assert!(
                (got - fd).abs() <= 1e-6 * (1.0 + fd.abs()),
                "{name}: d loss / d {path}[{i}] = {got}, finite differences give {fd}"
            );
            nonzero += usize::from(got != 0.0);
            checked += 1;
        }
        assert!(nonzero > 0, "{name}: the gradient of {path} is all zeros");
    }
    assert!(checked > 0, "{name}: no parameter was checked");
}

/// Two towers over sparse bags (sum and mean bags, `sparse_linear` with
/// and without bias), scored by cosine against broadcast documents.
#[test]
fn bag_towers_cosine_and_dssm_loss() {
    let src = "model m {
        input q: sparse f32[N, 7]
        input docs: sparse f32[N, 3, 7]
        a = q |> qe: embedding_bag(5, mode = \"mean\") |> tanh |> ql: linear(4)
        b = q |> qs: embedding_bag(4) |> tanh
        d = docs |> ds: sparse_linear(4) |> tanh
        e = docs |> dn: sparse_linear(4, bias = false)
        output scores = cosine_similarity(unsqueeze(a + b, 1), d + e) * 5.0
    }
    train m { loss = dssm_loss(scores)  optimizer = sgd(lr = 0.1) }";
    check("towers", &crate::testing::program(src).unwrap(), usize::MAX);
}

/// Cosine along a non-last dim with both operands broadcast, under a
/// weighted-sum loss.
#[test]
fn cosine_along_a_middle_dim() {
    let src = "model m {
        param p: f32[1, 4, 3] = 0.5
        param r: f32[2, 4, 1] = 0.5
        input x: f32[N, 2, 4, 3]
        output y = cosine_similarity(p, x * r, dim = 2, eps = 1e-6)
    }
    train m { label w: f32[N, 2, 3]  loss = sum(y * w)  optimizer = sgd(lr = 0.1) }";
    check(
        "middle dim",
        &crate::testing::program(src).unwrap(),
        usize::MAX,
    );
}

/// The dssm model itself (9 trigrams), separate and shared towers.
#[test]
fn dssm_model() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/dssm.net");
    for shared in [false, true] {
        let sets = [
            ("trigrams".to_string(), Value::Int(9)),
            ("nnz".to_string(), Value::Int(2)),
            ("negatives".to_string(), Value::Int(2)),
            ("shared_towers".to_string(), Value::Bool(shared)),
        ];
        let g = load_model(&path, Some("dssm"), &sets).unwrap();
        check(&format!("dssm, shared towers {shared}"), &g, 12);
    }
}

/// In the clamped region (`|a| < eps`) the gradient is PyTorch's, which
/// passes no gradient through the clamp (values from torch 2.15,
/// `F.cosine_similarity(a, b, eps = 1e-8)` in f64, upstream 0.7).
#[test]
fn cosine_gradient_under_the_eps_clamp_is_pytorchs() {
    let src = "model m {
        param a: f32[1, 3] = 0.0
        param b: f32[1, 3] = 0.0
        output y = cosine_similarity(a, b)
    }
    train m { label w: f32[1]  loss = sum(y * w)  optimizer = sgd(lr = 0.1) }";
    let t = training_graph(&crate::testing::program(src).unwrap()).unwrap();
    let ps: HashMap<String, Array> = [("a", vec![3e-9, -4e-9, 1e-9]), ("b", vec![1.0, 2.0, -0.5])]
        .into_iter()
        .map(|(n, v)| (n.to_string(), Array::new(&[1, 3], v)))
        .collect();
    let outs = run(&t.graph, &[("w".into(), Array::new(&[1], vec![0.7]))], &ps);
    let want_y = -0.2400396792595917;
    let want = [
        (
            "grad:a",
            [40436392.01004101, 47919826.09674174, -11979956.524185436],
        ),
        (
            "grad:b",
            [
                0.12365680446706234,
                -0.058191437396264645,
                0.014547859349066161,
            ],
        ),
    ];
    assert!((outs["y"].data[0] - want_y).abs() < 1e-12);
    for (name, w) in want {
        for (g, w) in outs[name].data.iter().zip(w) {
            assert!(
                (g - w).abs() <= 1e-9 * w.abs(),
                "{name}: {g} vs PyTorch {w}"
            );
        }
    }
}
