//! The CNN-DSSM through the compiled back end against the reference
//! interpreter (which reads a sparse input as its dense array), on random
//! CSR bags (repeated and unsorted ids, empty bags, one long bag), 1 and 2
//! threads: `bag_conv1d_grad_weight` on its own (padded, unpadded, extra
//! leading dims, a window wider than the sequence's padding, channels
//! in several blocks per thread); the
//! training graph of a CNN-DSSM tower (every gradient of `bag_conv1d`,
//! `amax`, `tanh`, `linear`); `cnn_dssm` of models/dssm.net forward, two
//! towers and shared towers.

use super::super::tests::{f32_tensor, i64_tensor, random_csr, reference, run_compiled, Csr};
use crate::back::lower::oracle::{assert_close, data, params};
use crate::back::lower::train_oracle::append;
use crate::elab::Value;
use crate::grad::training_graph;
use crate::ir::{Attr, Op};
use crate::session::load_model;
use crate::testing::program;
use netc_runtime::Tensor;

/// The three executor tensors of sparse input `name`.
fn csr_tensors(name: &str, c: &Csr) -> Vec<(String, Tensor)> {
    vec![
        (format!("{name}.indices"), i64_tensor(&c.indices)),
        (format!("{name}.offsets"), i64_tensor(&c.offsets)),
        (format!("{name}.values"), f32_tensor(&c.values)),
    ]
}

/// `bag_conv1d_grad_weight(dy, bags)` for bags of `shape` (`[..., T, V]`)
/// and the forward `conv` equals the interpreter on 1 and 2 threads.
fn check_grad_weight(shape: &[usize], conv: &str, seed: u64) {
    let dims = |s: &[usize]| {
        s.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let f = program(&format!(
        "model m() {{ input q: sparse f32[{}]  output y = q |> conv: {conv} }}",
        dims(shape)
    ))
    .unwrap();
    let fwd = f.nodes.last().unwrap().clone();
    let ys: Vec<usize> = f.ty(fwd.outputs[0]).known_dims().unwrap();
    let ws: Vec<usize> = f.ty(fwd.inputs[1]).known_dims().unwrap();
    let mut g = program(&format!(
        "model m() {{ input q: sparse f32[{}]  input dy: f32[{}]  output y = q |> conv: {conv} }}",
        dims(shape),
        dims(&ys)
    ))
    .unwrap();
    let (q, dy) = (g.inputs[0].1, g.inputs[1].1);
    let mut op = Op::new("bag_conv1d_grad_weight");
    op.attrs = fwd.op.attrs.clone();
    append(&mut g, op, vec![dy, q], &[ws]);
    let bags: usize = shape[..shape.len() - 1].iter().product();
    let vocab = shape[shape.len() - 1];
    let c = random_csr(bags, vocab, seed, false);
    let dyv = data(ys.iter().product(), seed as f32, 2.0);
    let ps = params(&g);
    let want = reference(
        &g,
        &[("q", shape.to_vec(), &c.dense), ("dy", ys.clone(), &dyv)],
        &ps,
    );
    let mut ts = csr_tensors("q", &c);
    ts.push(("dy".into(), Tensor::from_f32(&ys, dyv.clone()).unwrap()));
    let given: Vec<(&str, &Tensor)> = ts.iter().map(|(n, t)| (n.as_str(), t)).collect();
    for threads in [1, 2] {
        let got = run_compiled(&g, &[("q", shape), ("dy", &ys)], &ps, &given, threads);
        assert_close(
            got[0].1.as_f32().unwrap(),
            &want[0].1.data,
            1e-5,
            &format!("{conv} on {shape:?}, {threads} threads"),
        );
    }
}

#[test]
fn bag_conv_weight_gradients_equal_the_interpreter() {
    check_grad_weight(&[20, 6, 30], "bag_conv1d(21, 3, pad = 1)", 3);
    check_grad_weight(&[5, 2, 4, 30], "bag_conv1d(7, 2, bias = false)", 5);
    check_grad_weight(&[9, 2, 17], "bag_conv1d(4, 3, pad = 2, nnz = 2)", 9);
    check_grad_weight(&[1, 1, 12], "bag_conv1d(3, 1)", 1);
}

/// A CNN-DSSM tower's training graph: loss, output and the gradients of
/// both weights and biases, compiled, equal the interpreter.
#[test]
fn a_cnn_tower_trains_like_the_interpreter() {
    let src = "
        model m() {
            input q: sparse f32[N, 6, 40]
            input d: sparse f32[N, 2, 5, 40]
            hq = q |> conv: bag_conv1d(24, 3, pad = 1) |> tanh
            hd = d |> dconv: bag_conv1d(24, 2) |> tanh
            output yq = amax(hq, dim = -2) |> fc: linear(8) |> tanh
            output yd = amax(hd, dim = -2) |> fc2: linear(8) |> tanh
        }
        train m {
            label rq: f32[N, 8]
            label rd: f32[N, 2, 8]
            loss = sum(yq * rq) + sum(yd * rd)
            optimizer = sgd(lr = 0.1)
        }";
    let g = program(src).unwrap();
    let t = training_graph(&g).unwrap().graph;
    let n = 30;
    let mut ps = params(&t);
    ps.iter_mut()
        .for_each(|p| p.2.iter_mut().for_each(|x| *x *= 0.2));
    let (cq, cd) = (
        random_csr(n * 6, 40, 21, false),
        random_csr(n * 10, 40, 23, false),
    );
    let (rq, rd) = (data(n * 8, 0.5, 2.0), data(n * 16, 1.5, 2.0));
    let want = reference(
        &t,
        &[
            ("q", vec![n, 6, 40], &cq.dense),
            ("d", vec![n, 2, 5, 40], &cd.dense),
            ("rq", vec![n, 8], &rq),
            ("rd", vec![n, 2, 8], &rd),
        ],
        &ps,
    );
    let mut ts = csr_tensors("q", &cq);
    ts.extend(csr_tensors("d", &cd));
    ts.push(("rq".into(), Tensor::from_f32(&[n, 8], rq.clone()).unwrap()));
    ts.push((
        "rd".into(),
        Tensor::from_f32(&[n, 2, 8], rd.clone()).unwrap(),
    ));
    let given: Vec<(&str, &Tensor)> = ts.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let shapes: [(&str, &[usize]); 4] = [
        ("q", &[n, 6, 40]),
        ("d", &[n, 2, 5, 40]),
        ("rq", &[n, 8]),
        ("rd", &[n, 2, 8]),
    ];
    let names: Vec<&str> = want.iter().map(|(n, _)| n.as_str()).collect();
    for p in ["conv.weight", "conv.bias", "dconv.weight", "fc.weight"] {
        assert!(names.contains(&format!("grad:{p}").as_str()), "{names:?}");
    }
    for threads in [1, 2] {
        let got = run_compiled(&t, &shapes, &ps, &given, threads);
        assert_eq!(got.len(), want.len());
        for ((name, a), (wname, e)) in got.iter().zip(&want) {
            assert_eq!(name, wname);
            let what = format!("{name}, {threads} threads");
            assert_close(a.as_f32().unwrap(), &e.data, 1e-4, &what);
        }
    }
}

/// `cnn_dssm` (small sizes) compiled with CSR inputs equals the
/// interpreter on the dense inputs, two towers and shared towers, on 1
/// and 2 threads.
#[test]
fn cnn_dssm_runs_on_csr_inputs() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/dssm.net");
    let (n, words, v, docs) = (4, 6, 300, 3);
    for shared in [false, true] {
        let args = [
            ("trigrams".to_string(), Value::Int(v as i64)),
            ("words".to_string(), Value::Int(words as i64)),
            ("negatives".to_string(), Value::Int(docs as i64 - 1)),
            ("shared_towers".to_string(), Value::Bool(shared)),
        ];
        let g = load_model(&path, Some("cnn_dssm"), &args).unwrap();
        assert!(g.nodes.iter().any(|n| n.op.name == "amax"));
        let mut ps = params(&g);
        ps.iter_mut()
            .for_each(|p| p.2.iter_mut().for_each(|x| *x *= 0.1));
        let (cq, cd) = (
            random_csr(n * words, v, 31, false),
            random_csr(n * docs * words, v, 37, false),
        );
        let want = reference(
            &g,
            &[
                ("q", vec![n, words, v], &cq.dense),
                ("docs", vec![n, docs, words, v], &cd.dense),
            ],
            &ps,
        );
        let mut ts = csr_tensors("q", &cq);
        ts.extend(csr_tensors("docs", &cd));
        let given: Vec<(&str, &Tensor)> = ts.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let shapes: [(&str, &[usize]); 2] = [("q", &[n, words, v]), ("docs", &[n, docs, words, v])];
        for threads in [1, 2] {
            let got = run_compiled(&g, &shapes, &ps, &given, threads);
            assert_eq!(got[0].1.shape(), &[n, docs]);
            let what = format!("scores, shared {shared}, {threads} threads");
            assert_close(got[0].1.as_f32().unwrap(), &want[0].1.data, 1e-4, &what);
        }
    }
}

/// The op's attributes reach the kernel: a `pad` the lowering cannot
/// read is a named error, not a wrong gradient.
#[test]
fn a_gradient_without_its_window_is_refused() {
    let mut g = program(
        "model m() { input q: sparse f32[2, 3, 10]  input dy: f32[2, 3, 4]
                     output y = q |> conv: bag_conv1d(4, 3, pad = 1) }",
    )
    .unwrap();
    let (q, dy) = (g.inputs[0].1, g.inputs[1].1);
    let op = Op::new("bag_conv1d_grad_weight").with("k", Attr::Int(3));
    append(&mut g, op, vec![dy, q], &[vec![4, 10, 3]]);
    let mut jit = crate::back::jit::Jit::new().unwrap();
    let err =
        crate::back::lower::lower(&g, &[], crate::options::CompileOptions::default(), &mut jit)
            .err()
            .unwrap()
            .to_string();
    assert!(
        err.contains("`bag_conv1d_grad_weight`") && err.contains("`pad`"),
        "{err}"
    );
}
