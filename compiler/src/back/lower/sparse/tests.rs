//! The sparse and scoring lowerings against the reference interpreter
//! (which reads a sparse input as its dense array): random CSR bags with
//! empty bags, repeated and unsorted ids and long bags, on 1 and 2 threads;
//! invalid CSR tensors; the `dssm` model end to end.

use super::super::oracle::{assert_close, check, data, params};
use crate::elab::Value;
use crate::interp::{self, Array};
use crate::ir::Graph;
use crate::options::CompileOptions;
use crate::session::{load_model, CompiledModel};
use crate::testing::program;
use netc_runtime::plan::PlanError;
use netc_runtime::{Storage, Tensor};
use std::collections::HashMap;

/// A seeded xorshift stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Raw CSR tensors (not canonical: unsorted, repeated ids) of `rows` bags
/// over `vocab` columns, with their dense array for the interpreter. Every
/// seventh bag is empty and bag 3 holds `2 · vocab` entries.
pub(super) struct Csr {
    pub(super) indices: Vec<i64>,
    pub(super) offsets: Vec<i64>,
    pub(super) values: Vec<f32>,
    pub(super) dense: Vec<f32>,
}

pub(super) fn random_csr(rows: usize, vocab: usize, seed: u64, unit_values: bool) -> Csr {
    let mut rng = Rng(seed | 1);
    let mut c = Csr {
        indices: Vec::new(),
        offsets: vec![0],
        values: Vec::new(),
        dense: vec![0.0; rows * vocab],
    };
    for r in 0..rows {
        let n = match r {
            3 => 2 * vocab,
            _ if r % 7 == 0 => 0,
            _ => 1 + rng.below(8),
        };
        for _ in 0..n {
            let id = rng.below(vocab);
            let v = if unit_values {
                1.0
            } else {
                [1.0, 2.0, 0.5, -1.5][rng.below(4)]
            };
            c.indices.push(id as i64);
            c.values.push(v);
            c.dense[r * vocab + id] += v;
        }
        c.offsets.push(c.indices.len() as i64);
    }
    c
}

pub(super) fn i64_tensor(v: &[i64]) -> Tensor {
    Tensor::new(&[v.len()], Storage::I64(v.to_vec())).unwrap()
}

pub(super) fn f32_tensor(v: &[f32]) -> Tensor {
    Tensor::from_f32(&[v.len()], v.to_vec()).unwrap()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&a| f64::from(a)).collect()
}

/// The outputs of `g` compiled on `threads` threads for inputs of
/// `shapes`, with weights from `params`, on named tensors `given`.
pub(super) fn run_compiled(
    g: &Graph,
    shapes: &[(&str, &[usize])],
    ps: &[(String, Vec<usize>, Vec<f32>)],
    given: &[(&str, &Tensor)],
    threads: usize,
) -> Vec<(String, Tensor)> {
    let options = CompileOptions {
        threads,
        ..Default::default()
    };
    let mut m = CompiledModel::new(g.clone(), shapes, options).unwrap();
    let by_path: HashMap<&str, &(String, Vec<usize>, Vec<f32>)> =
        ps.iter().map(|p| (p.0.as_str(), p)).collect();
    let weights = m
        .weight_specs()
        .iter()
        .map(|s| {
            let (_, shape, v) = by_path[s.name.as_str()];
            Tensor::from_f32(shape, v.clone()).unwrap()
        })
        .collect();
    m.set_weights(weights).unwrap();
    m.run(given).unwrap()
}

/// The interpreter's outputs of `g` on dense inputs.
pub(super) fn reference(
    g: &Graph,
    inputs: &[(&str, Vec<usize>, &[f32])],
    ps: &[(String, Vec<usize>, Vec<f32>)],
) -> Vec<(String, Array)> {
    let named: HashMap<String, Array> = ps
        .iter()
        .map(|(p, s, v)| (p.clone(), Array::new(s, f64s(v))))
        .collect();
    let ins: Vec<(&str, Array)> = inputs
        .iter()
        .map(|(n, s, v)| (*n, Array::new(s, f64s(v))))
        .collect();
    interp::run(g, &ins, &named).unwrap()
}

/// `sparse_linear` and `embedding_bag` (sum and mean) over `[N, 3, V]`
/// bags equal the interpreter on the dense input, on 1 and 2 threads
/// (wide outputs and `nnz = 1` make bags cheap enough per thread that the
/// 600 bags are split), with the values given and absent (all ones).
#[test]
fn bag_products_equal_the_interpreter() {
    let g = program(
        "model m() { input q: sparse f32[N, 3, 40]
                     output y = q |> fc: sparse_linear(300, nnz = 1)
                     output s = q |> emb: embedding_bag(256, nnz = 1)
                     output a = q |> avg: embedding_bag(256, mode = \"mean\", nnz = 1) }",
    )
    .unwrap();
    let (n, vocab) = (200, 40);
    let ps = params(&g);
    for unit in [false, true] {
        let c = random_csr(n * 3, vocab, 7 + unit as u64, unit);
        let want = reference(&g, &[("q", vec![n, 3, vocab], &c.dense)], &ps);
        let (idx, off, val) = (
            i64_tensor(&c.indices),
            i64_tensor(&c.offsets),
            f32_tensor(&c.values),
        );
        let mut given = vec![("q.indices", &idx), ("q.offsets", &off)];
        if !unit {
            given.push(("q.values", &val));
        }
        for threads in [1, 2] {
            let got = run_compiled(&g, &[("q", &[n, 3, vocab])], &ps, &given, threads);
            for ((name, t), (wname, w)) in got.iter().zip(&want) {
                assert_eq!(name, wname);
                assert_eq!(t.shape(), w.shape.as_slice());
                let what = format!("{name}, {threads} threads, unit values {unit}");
                assert_close(t.as_f32().unwrap(), &w.data, 1e-5, &what);
            }
        }
    }
}

/// `bag_conv1d` over sequences of bags (padded and not, extra leading
/// dims) equals the interpreter on 1 and 2 threads.
#[test]
fn bag_convolution_equals_the_interpreter() {
    let g = program(
        "model m() { input q: sparse f32[N, 6, 30]  input d: sparse f32[N, 2, 4, 30]
                     output y = q |> conv: bag_conv1d(16, 3, pad = 1)
                     output z = d |> dconv: bag_conv1d(5, 2, bias = false) }",
    )
    .unwrap();
    let n = 20;
    let ps = params(&g);
    let (cq, cd) = (
        random_csr(n * 6, 30, 17, false),
        random_csr(n * 8, 30, 19, false),
    );
    let want = reference(
        &g,
        &[
            ("q", vec![n, 6, 30], &cq.dense),
            ("d", vec![n, 2, 4, 30], &cd.dense),
        ],
        &ps,
    );
    let ts = [
        ("q.indices", i64_tensor(&cq.indices)),
        ("q.offsets", i64_tensor(&cq.offsets)),
        ("q.values", f32_tensor(&cq.values)),
        ("d.indices", i64_tensor(&cd.indices)),
        ("d.offsets", i64_tensor(&cd.offsets)),
        ("d.values", f32_tensor(&cd.values)),
    ];
    let given: Vec<(&str, &Tensor)> = ts.iter().map(|(n, t)| (*n, t)).collect();
    for threads in [1, 2] {
        let shapes: [(&str, &[usize]); 2] = [("q", &[n, 6, 30]), ("d", &[n, 2, 4, 30])];
        let got = run_compiled(&g, &shapes, &ps, &given, threads);
        for ((name, t), (_, w)) in got.iter().zip(&want) {
            assert_eq!(t.shape(), w.shape.as_slice());
            assert_close(
                t.as_f32().unwrap(),
                &w.data,
                1e-5,
                &format!("{name}, {threads} threads"),
            );
        }
    }
}

/// Shared towers: one packed copy of the shared weight serves both
/// inputs, and both equal the interpreter.
#[test]
fn a_shared_weight_is_packed_once() {
    let g = program(
        "model m() { input q: sparse f32[N, 30]  input d: sparse f32[N, 2, 30]
                     output yq = q |> shared fc: sparse_linear(8)
                     output yd = d |> shared fc: sparse_linear(8) }",
    )
    .unwrap();
    let mut jit = crate::back::jit::Jit::new().unwrap();
    let lowered =
        super::super::lower(&g, &[("N".into(), 3)], CompileOptions::default(), &mut jit).unwrap();
    assert_eq!(lowered.plan.prepare.len(), 1, "one transpose");
    assert_eq!(
        lowered.inputs,
        [
            "q.indices",
            "q.offsets",
            "q.values",
            "d.indices",
            "d.offsets",
            "d.values"
        ]
    );
    let ps = params(&g);
    let (cq, cd) = (random_csr(3, 30, 3, false), random_csr(6, 30, 5, false));
    let want = reference(
        &g,
        &[
            ("q", vec![3, 30], &cq.dense),
            ("d", vec![3, 2, 30], &cd.dense),
        ],
        &ps,
    );
    let t = |c: &Csr| {
        (
            i64_tensor(&c.indices),
            i64_tensor(&c.offsets),
            f32_tensor(&c.values),
        )
    };
    let ((qi, qo, qv), (di, dof, dv)) = (t(&cq), t(&cd));
    let given = [
        ("d.offsets", &dof),
        ("q.indices", &qi),
        ("q.offsets", &qo),
        ("q.values", &qv),
        ("d.indices", &di),
        ("d.values", &dv),
    ];
    let got = run_compiled(&g, &[("q", &[3, 30]), ("d", &[3, 2, 30])], &ps, &given, 2);
    for ((name, t), (_, w)) in got.iter().zip(&want) {
        assert_close(t.as_f32().unwrap(), &w.data, 1e-5, name);
    }
}

/// `cosine_similarity` broadcasting a query over documents (last dim and
/// dim 0) and `dssm_loss` of the scaled scores equal the interpreter; the
/// 8000 last-dim similarities are split over 2 threads.
#[test]
fn cosine_and_loss_equal_the_interpreter() {
    let g = program(
        "model m() { input a: f32[N, 1, 6]  input b: f32[N, 4, 6]
                     t = cosine_similarity(a, b) * 10.0
                     output s = t
                     output c0 = cosine_similarity(a, b, dim = 0)
                     output l = dssm_loss(t) }",
    )
    .unwrap();
    let n = 2000;
    let mut a = data(n * 6, 0.4, 2.0);
    a[..6].iter_mut().for_each(|x| *x = 0.0); // a zero vector: eps clamps its norm
    let b = data(n * 24, 1.3, 2.0);
    check(
        &g,
        &[("N", n as i64)],
        &[("a", vec![n, 1, 6], a), ("b", vec![n, 4, 6], b)],
        1e-5,
    );
}

/// Invalid CSR tensors are errors naming the tensor, never panics; the
/// executor itself refuses malformed bags handed to it directly.
#[test]
fn invalid_sparse_inputs_are_named_errors() {
    let g =
        program("model m() { input q: sparse f32[N, 10]  output y = q |> fc: sparse_linear(4) }")
            .unwrap();
    let mut m = CompiledModel::new(g, &[("q", &[2, 10])], CompileOptions::default()).unwrap();
    m.init_weights(0).unwrap();
    let i = |v: &[i64]| i64_tensor(v);
    let cases: Vec<(Vec<(&str, Tensor)>, &str)> = vec![
        (
            vec![("q.indices", i(&[1, 2])), ("q.offsets", i(&[0, 2, 1]))],
            "tensor `q.offsets`: decreases at entry 2",
        ),
        (
            vec![("q.indices", i(&[1, 12])), ("q.offsets", i(&[0, 1, 2]))],
            "tensor `q.indices`: entry 1 is 12, outside the columns 0..10",
        ),
        (
            vec![("q.indices", i(&[1, 2])), ("q.offsets", i(&[0, 2]))],
            "tensor `q.offsets` holds 1 bags, but the model was compiled for 2",
        ),
        (
            vec![("q.offsets", i(&[0, 0, 0]))],
            "tensor `q.indices`: missing",
        ),
        (
            vec![
                ("q.indices", i(&[1])),
                ("q.offsets", i(&[0, 1, 1])),
                ("q.values", f32_tensor(&[1.0, 2.0])),
            ],
            "tensor `q.values`: expected a 1-D f32 tensor of 1 entries",
        ),
        (
            vec![
                ("q.indices", i(&[1])),
                ("q.offsets", i(&[0, 1, 1])),
                ("q.value", f32_tensor(&[1.0])),
            ],
            "unknown tensor `q.value`",
        ),
        (
            vec![("q", f32_tensor(&[0.0; 20]))],
            "input `q` is sparse: give `q.indices`",
        ),
    ];
    for (tensors, want) in cases {
        let given: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
        let err = m.run(&given).unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
    }
    let ok = [("q.indices", i(&[3])), ("q.offsets", i(&[0, 0, 1]))];
    let given: Vec<(&str, &Tensor)> = ok.iter().map(|(n, t)| (*n, t)).collect();
    assert_eq!(m.run(&given).unwrap()[0].1.shape(), &[2, 4]);

    // Straight to the executor, past the host checks: an offset beyond the
    // entries and an id beyond the table.
    let g =
        program("model m() { input q: sparse f32[N, 10]  output y = q |> fc: sparse_linear(4) }")
            .unwrap();
    let mut jit = crate::back::jit::Jit::new().unwrap();
    let lowered =
        super::super::lower(&g, &[("N".into(), 1)], CompileOptions::default(), &mut jit).unwrap();
    let mut ex = netc_runtime::plan::Executor::new(lowered.plan, 2).unwrap();
    let w = vec![0.0f32; 40];
    let bias = vec![0.0f32; 4];
    ex.prepare(&[&w, &bias]).unwrap();
    let word = f32::from_bits;
    let mut y = vec![0.0f32; 4];
    for (idx, off, want) in [
        (
            vec![word(1)],
            vec![word(0), word(3)],
            "bag 0 spans entries 0..3",
        ),
        (vec![word(10)], vec![word(0), word(1)], "bag 0 holds id 10"),
    ] {
        let vals = vec![1.0f32; idx.len()];
        let err = ex
            .run(&[&idx, &off, &vals], &[&w, &bias], &mut [&mut y])
            .unwrap_err();
        assert!(
            matches!(&err, PlanError::Rows { reason, .. } if reason.contains(want)),
            "{err}"
        );
    }
}

/// The plain DSSM (two towers, and shared towers) compiled with CSR
/// inputs equals the interpreter on the dense inputs, on 1 and 2 threads.
#[test]
fn dssm_model_runs_on_csr_inputs() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/dssm.net");
    for shared in [false, true] {
        let args = [
            ("trigrams".to_string(), Value::Int(500)),
            ("shared_towers".to_string(), Value::Bool(shared)),
        ];
        let g = load_model(&path, Some("dssm"), &args).unwrap();
        let (n, v) = (4, 500);
        // Small weights keep the tanh layers off saturation.
        let mut ps = params(&g);
        ps.iter_mut()
            .for_each(|p| p.2.iter_mut().for_each(|x| *x *= 0.1));
        let (cq, cd) = (random_csr(n, v, 11, false), random_csr(n * 5, v, 13, false));
        let want = reference(
            &g,
            &[
                ("q", vec![n, v], &cq.dense),
                ("docs", vec![n, 5, v], &cd.dense),
            ],
            &ps,
        );
        let ts = [
            ("q.indices", i64_tensor(&cq.indices)),
            ("q.offsets", i64_tensor(&cq.offsets)),
            ("q.values", f32_tensor(&cq.values)),
            ("docs.indices", i64_tensor(&cd.indices)),
            ("docs.offsets", i64_tensor(&cd.offsets)),
            ("docs.values", f32_tensor(&cd.values)),
        ];
        let given: Vec<(&str, &Tensor)> = ts.iter().map(|(n, t)| (*n, t)).collect();
        for threads in [1, 2] {
            let got = run_compiled(
                &g,
                &[("q", &[n, v]), ("docs", &[n, 5, v])],
                &ps,
                &given,
                threads,
            );
            assert_eq!(got[0].1.shape(), &[n, 5]);
            let what = format!("scores, shared {shared}, {threads} threads");
            assert_close(got[0].1.as_f32().unwrap(), &want[0].1.data, 1e-4, &what);
        }
    }
}
