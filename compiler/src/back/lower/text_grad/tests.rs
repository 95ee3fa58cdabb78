//! The text gradient lowerings against the reference interpreter: a
//! training step with every text gradient op (sum and mean bags,
//! `sparse_linear` with and without bias, broadcast cosine, the DSSM loss,
//! a cosine along a middle dim) compiled on 1 and 2 threads, on random
//! CSR bags with empty bags, repeated and unsorted ids and a long bag,
//! equals the interpreter running the same training graph on the dense
//! bags.

use super::super::oracle::{assert_close, params};
use super::super::sparse::host_buffers;
use crate::grad::training_graph;
use crate::interp::{self, Array};
use crate::options::CompileOptions;
use crate::testing::program;
use crate::train::step::TrainStep;
use netc_runtime::{Storage, Tensor};
use std::collections::HashMap;

/// A seeded xorshift stream.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Raw CSR tensors of `rows` bags (every fifth empty, bag 2 holding
/// `3 · vocab` entries, ids drawn with repetition, counts ±) and the
/// dense array the interpreter reads.
fn random_csr(rows: usize, vocab: usize, seed: u64) -> (Vec<(String, Tensor)>, Vec<f64>) {
    let mut rng = Rng(seed | 1);
    let (mut idx, mut off, mut val) = (Vec::new(), vec![0i64], Vec::new());
    let mut dense = vec![0.0; rows * vocab];
    for r in 0..rows {
        let n = match r {
            2 => 3 * vocab,
            _ if r % 5 == 0 => 0,
            _ => 1 + rng.below(6),
        };
        for _ in 0..n {
            let id = rng.below(vocab);
            let v = [1.0f32, 2.0, 0.5, -1.5][rng.below(4)];
            idx.push(id as i64);
            val.push(v);
            dense[r * vocab + id] += f64::from(v);
        }
        off.push(idx.len() as i64);
    }
    let t = |v: Vec<i64>| Tensor::new(&[v.len()], Storage::I64(v)).unwrap();
    let tensors = vec![
        ("indices".to_string(), t(idx)),
        ("offsets".to_string(), t(off)),
        (
            "values".to_string(),
            Tensor::from_f32(&[val.len()], val).unwrap(),
        ),
    ];
    (tensors, dense)
}

#[test]
fn text_gradients_equal_the_interpreter() {
    let src = "model m {
        input q: sparse f32[N, 2000]
        input docs: sparse f32[N, 3, 2000]
        input x: f32[N, 2, 64, 3]
        a = q |> qe: embedding_bag(70, mode = \"mean\") |> tanh |> ql: linear(70)
        b = q |> qs: embedding_bag(70) |> tanh
        d = docs |> ds: sparse_linear(70) |> tanh
        e = docs |> dn: sparse_linear(70, bias = false)
        output scores = cosine_similarity(unsqueeze(a + b, 1), d + e) * 5.0
        param p: f32[1, 64, 3] = 0.5
        output c = cosine_similarity(p, x, dim = 2)
    }
    train m { label w: f32[N, 2, 3]  loss = dssm_loss(scores) + sum(c * w)  optimizer = sgd(lr = 0.1) }";
    let g = program(src).unwrap();
    let t = training_graph(&g).unwrap();
    let n = 200;
    let vocab = 2000;
    let ps = params(&t.graph);
    let (q, q_dense) = random_csr(n, vocab, 3);
    let (docs, d_dense) = random_csr(3 * n, vocab, 5);
    let x: Vec<f32> = (0..n * 384)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let w: Vec<f32> = (0..n * 6)
        .map(|i| ((i * 13 % 7) as f32 / 3.0) - 1.0)
        .collect();
    let f64s = |v: &[f32]| v.iter().map(|&a| f64::from(a)).collect::<Vec<_>>();
    let named: HashMap<String, Array> = ps
        .iter()
        .map(|(p, s, v)| (p.clone(), Array::new(s, f64s(v))))
        .collect();
    let want: HashMap<String, Array> = interp::run(
        &t.graph,
        &[
            ("q", Array::new(&[n, vocab], q_dense)),
            ("docs", Array::new(&[n, 3, vocab], d_dense)),
            ("x", Array::new(&[n, 2, 64, 3], f64s(&x))),
            ("w", Array::new(&[n, 2, 3], f64s(&w))),
        ],
        &named,
    )
    .unwrap()
    .into_iter()
    .collect();
    let csr = |name: &str, shape: &[usize], ts: &[(String, Tensor)]| {
        let full: Vec<(String, &Tensor)> =
            ts.iter().map(|(p, t)| (format!("{name}.{p}"), t)).collect();
        let given: Vec<(&str, &Tensor)> = full.iter().map(|(n, t)| (n.as_str(), *t)).collect();
        host_buffers(name, shape, &given).unwrap()
    };
    let (qb, db) = (
        csr("q", &[n, vocab], &q),
        csr("docs", &[n, 3, vocab], &docs),
    );
    let shapes: [(&str, &[usize]); 4] = [
        ("q", &[n, vocab]),
        ("docs", &[n, 3, vocab]),
        ("x", &[n, 2, 64, 3]),
        ("w", &[n, 2, 3]),
    ];
    for threads in [1, 2] {
        let options = CompileOptions {
            threads,
            ..Default::default()
        };
        let mut step = TrainStep::compile(&t, &shapes, options).unwrap();
        let by_name: HashMap<&str, &[f32]> = [
            ("q.indices", &qb.indices[..]),
            ("q.offsets", &qb.offsets[..]),
            ("q.values", &qb.values[..]),
            ("docs.indices", &db.indices[..]),
            ("docs.offsets", &db.offsets[..]),
            ("docs.values", &db.values[..]),
            ("x", &x[..]),
            ("w", &w[..]),
        ]
        .into_iter()
        .collect();
        let ins: Vec<&[f32]> = step
            .input_names()
            .iter()
            .map(|n| by_name[n.as_str()])
            .collect();
        let pv: Vec<&[f32]> = ps.iter().map(|(_, _, v)| v.as_slice()).collect();
        step.run(&ins, &pv).unwrap();
        for (k, (name, _)) in t.graph.outputs.iter().enumerate() {
            let what = format!("{name}, {threads} threads");
            assert_close(step.output(k), &want[name].data, 1e-4, &what);
        }
    }
}
