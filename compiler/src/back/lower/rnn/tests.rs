//! The recurrent and lookup lowering against the reference interpreter
//! (itself checked by finite differences and PyTorch): the `lstm` op in
//! every output mode, the LSTM-DSSM model through [`CompiledModel`] with
//! i64 id inputs, and every gradient op through whole training graphs.

use super::super::oracle::{check, data};
use crate::elab::Value;
use crate::grad::training_graph;
use crate::interp::{self, Array};
use crate::options::CompileOptions;
use crate::session::{load_model, CompiledModel};
use crate::testing::program;
use netc_runtime::{Initializer, Storage, Tensor};
use std::collections::HashMap;

/// `n` ids below `vocab`, as the f32 values a plan reads.
fn ids(n: usize, vocab: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7 + seed * 13 + i * i) % vocab) as f32)
        .collect()
}

/// The `lstm` op alone, batch-first with extra leading dims and
/// time-first, every `returns`, with and without peepholes; 40 sequences
/// so two threads split them.
#[test]
fn lstm_op_equals_the_interpreter() {
    for peephole in [false, true] {
        let cases = [
            (
                "input x: f32[N, 2, 5, 6]",
                "\"both\"",
                "true",
                vec![20, 2, 5, 6],
            ),
            ("input x: f32[N, 5, 6]", "\"last\"", "true", vec![40, 5, 6]),
            (
                "input x: f32[5, N, 6]",
                "\"sequence\"",
                "false",
                vec![5, 40, 6],
            ),
            ("input x: f32[5, N, 6]", "\"both\"", "false", vec![5, 40, 6]),
        ];
        for (input, returns, bf, shape) in cases {
            let out = if returns == "\"both\"" {
                "r = x |> l: lstm(7, peephole = P, batch_first = B, returns = R)\n output s = r.sequence\n output h = r.last"
            } else {
                "output y = x |> l: lstm(7, peephole = P, batch_first = B, returns = R)"
            };
            let out = out
                .replace("= P", &format!("= {peephole}"))
                .replace("= B", &format!("= {bf}"))
                .replace("= R", &format!("= {returns}"));
            let g = program(&format!("model m {{ {input}\n {out} }}")).unwrap();
            let n = if bf == "true" { shape[0] } else { shape[1] };
            let len = shape.iter().product();
            check(
                &g,
                &[("N", n as i64)],
                &[("x", shape.clone(), data(len, 0.4, 2.0))],
                2e-5,
            );
        }
    }
}

/// `models/dssm.net`'s `lstm_dssm` compiled (ids given as i64 tensors)
/// equals the interpreter, with and without peepholes and shared towers,
/// on 1 and 2 threads; an id past the vocabulary is a run-time error
/// naming the layer, a negative one an input error naming the input.
#[test]
fn lstm_dssm_equals_the_interpreter() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/dssm.net");
    let (n, words, neg, vocab) = (12usize, 5usize, 2usize, 50usize);
    for peephole in [true, false] {
        for shared in [false, true] {
            let sets = vec![
                ("vocab".to_string(), Value::Int(vocab as i64)),
                ("words".to_string(), Value::Int(words as i64)),
                ("negatives".to_string(), Value::Int(neg as i64)),
                ("peephole".to_string(), Value::Bool(peephole)),
                ("shared_towers".to_string(), Value::Bool(shared)),
            ];
            let g = load_model(&path, Some("lstm_dssm"), &sets).unwrap();
            let mut init = Initializer::new(3);
            let weights: Vec<Tensor> = g
                .params
                .iter()
                .map(|p| {
                    let s: Vec<usize> = p.ty.known_dims().unwrap();
                    init.tensor(p.ty.dtype, &s, &p.init)
                })
                .collect();
            let named: HashMap<String, Array> = g
                .params
                .iter()
                .zip(&weights)
                .map(|(p, t)| {
                    let v = t.as_f32().unwrap().iter().map(|&x| f64::from(x)).collect();
                    (p.path.clone(), Array::new(t.shape(), v))
                })
                .collect();
            let q_shape = vec![n, words];
            let d_shape = vec![n, 1 + neg, words];
            let q_ids: Vec<i64> = ids(n * words, vocab, 1).iter().map(|&x| x as i64).collect();
            let d_ids: Vec<i64> = ids(n * (1 + neg) * words, vocab, 2)
                .iter()
                .map(|&x| x as i64)
                .collect();
            let as_f64 = |v: &[i64]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
            let want = interp::run(
                &g,
                &[
                    ("q", Array::new(&q_shape, as_f64(&q_ids))),
                    ("docs", Array::new(&d_shape, as_f64(&d_ids))),
                ],
                &named,
            )
            .unwrap();
            let q = Tensor::new(&q_shape, Storage::I64(q_ids.clone())).unwrap();
            let d = Tensor::new(&d_shape, Storage::I64(d_ids)).unwrap();
            for threads in [1, 2] {
                let options = CompileOptions {
                    threads,
                    ..Default::default()
                };
                let shapes: [(&str, &[usize]); 2] = [("q", &q_shape), ("docs", &d_shape)];
                let mut m = CompiledModel::new(g.clone(), &shapes, options).unwrap();
                m.set_weights(weights.clone()).unwrap();
                let got = m.run(&[("q", &q), ("docs", &d)]).unwrap();
                let scores = got[0].1.as_f32().unwrap();
                let what = format!("peephole {peephole} shared {shared} threads {threads}");
                assert_eq!(scores.len(), n * (1 + neg), "{what}");
                for (a, e) in scores.iter().zip(&want[0].1.data) {
                    assert!((f64::from(*a) - e).abs() <= 1e-4, "{what}: {a} vs {e}");
                }
                let mut bad = q_ids.clone();
                bad[7] = vocab as i64;
                let bad = Tensor::new(&q_shape, Storage::I64(bad)).unwrap();
                let err = m.run(&[("q", &bad), ("docs", &d)]).unwrap_err().to_string();
                let layer = if shared { "tower.emb" } else { "q_tower.emb" };
                assert!(
                    err.contains(layer) && err.contains("id 50 at position 7"),
                    "{what}: {err}"
                );
                let mut neg_ids = q_ids.clone();
                neg_ids[3] = -2;
                let bad = Tensor::new(&q_shape, Storage::I64(neg_ids)).unwrap();
                let err = m.run(&[("q", &bad), ("docs", &d)]).unwrap_err().to_string();
                assert!(
                    err.contains("input `q` holds id -2 at position 3"),
                    "{what}: {err}"
                );
            }
        }
    }
}

/// Every gradient op (`lstm_state`, `lstm_grad_gates`, `embedding_grad`,
/// and the products the `lstm` rule builds from them) through the
/// training graphs of small models: loss, outputs and every parameter
/// gradient equal the interpreter's, on 1 and 2 threads.
#[test]
fn lstm_and_embedding_gradients_equal_the_interpreter() {
    let cases = [
        (
            "ids: i64[N, 3, 5]",
            "emb: embedding(11, 6) |> l: lstm(5, peephole = true)",
            "[N, 3, 5]",
            vec![12, 3, 5],
        ),
        (
            "ids: i64[N, 4]",
            "emb: embedding(11, 6, padding_idx = 2) |> l: lstm(5)",
            "[N, 5]",
            vec![36, 4],
        ),
        (
            "ids: i64[N, 4]",
            "emb: embedding(11, 3) |> l: lstm(4, peephole = true, returns = \"sequence\")",
            "[N, 4, 4]",
            vec![36, 4],
        ),
        (
            "ids: i64[4, N]",
            "emb: embedding(11, 3) |> l: lstm(4, batch_first = false, returns = \"sequence\")",
            "[4, N, 4]",
            vec![4, 9],
        ),
    ];
    for (input, layers, y, shape) in cases {
        let src = format!(
            "model m {{\ninput {input}\noutput y = ids |> {layers} |> tanh\n}}\ntrain m {{\nlabel r: f32{y}\nloss = sum(y * r)\noptimizer = sgd(lr = 0.1)\n}}\n"
        );
        let t = training_graph(&program(&src).unwrap()).unwrap();
        let n = if input.starts_with("ids: i64[N") {
            shape[0]
        } else {
            shape[1]
        };
        let len: usize = shape.iter().product();
        let r_len = t
            .graph
            .ty(t.graph.inputs[1].1)
            .shape
            .iter()
            .map(|d| d.eval(&|_| Some(n as i64)).as_known().unwrap() as usize);
        let r_shape: Vec<usize> = r_len.collect();
        let r = data(r_shape.iter().product(), 1.1, 1.0);
        check(
            &t.graph,
            &[("N", n as i64)],
            &[("ids", shape.clone(), ids(len, 11, 3)), ("r", r_shape, r)],
            5e-5,
        );
    }
}

/// A training step ([`TrainStep`]: the optimisation passes, outputs read
/// in place) of word ids -> embedding -> LSTM -> linear with a
/// cross-entropy loss takes the ids as f32 values, as the class labels,
/// and gives the interpreter's loss and gradients.
#[test]
fn a_training_step_takes_word_ids() {
    use crate::train::step::TrainStep;
    let src = "model m {\ninput ids: i64[N, 6]\noutput y = ids |> emb: embedding(13, 8) |> l: lstm(6, peephole = true) |> fc: linear(3)\n}\ntrain m {\nlabel t: i64[N]\nloss = cross_entropy(y, t)\noptimizer = adam(lr = 0.001)\n}\n";
    let t = training_graph(&program(src).unwrap()).unwrap();
    let n = 20;
    let inputs = [
        ("ids", vec![n, 6], ids(n * 6, 13, 5)),
        ("t", vec![n], ids(n, 3, 1)),
    ];
    let ps = super::super::oracle::params(&t.graph);
    let want = super::super::oracle::reference(&t.graph, &inputs, &ps);
    let shapes: Vec<(&str, &[usize])> = inputs.iter().map(|(n, s, _)| (*n, s.as_slice())).collect();
    for threads in [1, 2] {
        let options = CompileOptions {
            threads,
            ..Default::default()
        };
        let mut step = TrainStep::compile(&t, &shapes, options).unwrap();
        assert_eq!(step.input_names(), ["ids", "t"]);
        let ins: Vec<&[f32]> = inputs.iter().map(|(_, _, v)| v.as_slice()).collect();
        let params: Vec<&[f32]> = ps.iter().map(|(_, _, v)| v.as_slice()).collect();
        step.run(&ins, &params).unwrap();
        let mut outputs = vec![0];
        outputs.extend(t.grads.iter().map(|(_, o)| *o));
        assert_eq!(outputs.len(), 1 + 10, "loss and 10 parameter gradients");
        for k in outputs {
            super::super::oracle::assert_close(
                step.output(k),
                &want[k],
                5e-5,
                &format!("{}, {threads} threads", t.graph.outputs[k].0),
            );
        }
    }
}
