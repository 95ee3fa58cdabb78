//! DSSM training through the compiled back end on sparse CSR inputs: the
//! training step's loss, scores and parameter gradients equal PyTorch's
//! float64 ones (`tests/fixtures/grads/dssm*.safetensors`, written by
//! `make_dssm_reference.py`; counter weights of seed 0), and a few epochs
//! of `fit` on a small synthetic sparse data set lower the loss; after
//! warm-up a step on sparse batches allocates and compiles nothing.

use netc::elab::Value;
use netc::grad::{evaluation_graph, training_graph};
use netc::ir::{Attr, Graph};
use netc::options::CompileOptions;
use netc::session::load_model;
use netc::train::fit::{self, FitOptions, Outcome, RunState};
use netc::train::rows::{rows_layout, transpose};
use netc::train::step::TrainStep;
use netc::train::trainer::{TrainConfig, Trainer};
use netc_runtime::counter::unit;
use netc_runtime::sparse::CsrBuffers;
use netc_runtime::text::bags::SparseBags;
use netc_runtime::train::data::ColumnSpec;
use netc_runtime::train::data::DataSet;
use netc_runtime::train::optim::{Hyper, Optimizer, OptimizerSpec};
use netc_runtime::weights::read_safetensors;
use netc_runtime::{Storage, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;

#[path = "common/counter_params.rs"]
mod counter_params;
#[path = "common/counting_alloc.rs"]
mod counting_alloc;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Model `name` of models/dssm.net with the `--set` string of a fixture
/// (`k=v` pairs).
fn dssm_model(name: &str, set: &str) -> Graph {
    let args: Vec<(String, Value)> = set
        .split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            let v = match v {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                n => Value::Int(n.parse().unwrap()),
            };
            (k.to_string(), v)
        })
        .collect();
    load_model(&repo().join("models/dssm.net"), Some(name), &args).unwrap()
}

/// `dssm` with the `--set` string of a fixture.
fn dssm(set: &str) -> Graph {
    dssm_model("dssm", set)
}

fn f64s(t: &Tensor) -> Vec<f64> {
    match t.storage() {
        Storage::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
        Storage::F64(v) => v.clone(),
        Storage::I64(v) => v.iter().map(|&x| x as f64).collect(),
        other => panic!("unexpected storage {other:?}"),
    }
}

fn rel_l2(got: &[f64], want: &[f64]) -> f64 {
    let num: f64 = got.iter().zip(want).map(|(a, b)| (a - b) * (a - b)).sum();
    let den: f64 = want.iter().map(|b| b * b).sum();
    (num / den.max(1e-300)).sqrt()
}

/// The fixture's projections: `Σ g[i] (2 u(1000 + k, path, i) - 1)`.
fn projections(path: &str, g: &[f64]) -> Vec<f64> {
    (0..8)
        .map(|k| {
            g.iter()
                .enumerate()
                .map(|(i, &x)| x * (2.0 * unit(1000 + k, path, i as u64) - 1.0))
                .sum()
        })
        .collect()
}

fn empty_csr() -> CsrBuffers {
    CsrBuffers {
        indices: Vec::new(),
        offsets: Vec::new(),
        values: Vec::new(),
    }
}

/// Loss, scores and every gradient of the compiled step (2 threads) on
/// the fixture's CSR inputs (read through `DataSet`'s sparse columns, as
/// `netc train` reads them) against PyTorch's f64 values.
fn check_fixture(case: &str, set: &str) {
    check_model_fixture(
        case,
        "dssm",
        set,
        &[("q", Some(&[300])), ("docs", Some(&[3, 300]))],
    );
}

/// [`check_fixture`] for any model of models/dssm.net: `columns` are its
/// two inputs with, for a sparse one, the shape of one sample (dense
/// inputs, the word ids, take theirs from the fixture). The batch is 3.
fn check_model_fixture(case: &str, model: &str, set: &str, columns: &[ColumnSpec]) {
    let fix: HashMap<String, Tensor> =
        read_safetensors(&repo().join(format!("tests/fixtures/grads/{case}.safetensors")))
            .unwrap()
            .into_iter()
            .collect();
    let (_, meta) = netc_runtime::weights::read_safetensors_meta(
        &repo().join(format!("tests/fixtures/grads/{case}.safetensors")),
    )
    .unwrap();
    let fixture_meta = meta.get("fixture").cloned().unwrap_or_default();
    assert!(
        fixture_meta.contains(&format!("\"set\": \"{set}\"")),
        "{case}: the fixture was made with other settings: {fixture_meta}"
    );
    let g = dssm_model(model, set);
    let mut tensors = Vec::new();
    for (k, t) in &fix {
        if let Some(name) = k.strip_prefix("input.") {
            tensors.push((name.to_string(), t.clone()));
        }
    }
    let n = 3;
    let data = DataSet::from_columns(case, tensors, columns).unwrap();
    let all: Vec<usize> = (0..n).collect();
    let mut buffers: Vec<Vec<f32>> = Vec::new();
    let mut shapes: Vec<(&str, Vec<usize>)> = Vec::new();
    let mut names = Vec::new();
    for (k, (name, sparse)) in columns.iter().enumerate() {
        match sparse {
            Some(sample) => {
                let mut csr = empty_csr();
                data.gather_bags(k, &all, &mut csr).unwrap();
                buffers.extend([csr.indices, csr.offsets, csr.values]);
                names.extend(["indices", "offsets", "values"].map(|p| format!("{name}.{p}")));
                shapes.push((name, [&[n][..], sample].concat()));
            }
            None => {
                let mut dense = vec![0.0; n * data.row_len(k)];
                data.gather(k, &all, &mut dense).unwrap();
                buffers.push(dense);
                names.push(name.to_string());
                shapes.push((name, [&[n][..], data.sample_shape(k)].concat()));
            }
        }
    }
    let shape_refs: Vec<(&str, &[usize])> =
        shapes.iter().map(|(n, s)| (*n, s.as_slice())).collect();
    let options = CompileOptions {
        threads: 2,
        ..Default::default()
    };
    // The file layout, then the trainer's row layout of the bag layers'
    // weights (weights transposed in, their gradients transposed back).
    for rows in [false, true] {
        let mut tg = training_graph(&g).unwrap();
        let mut eval = evaluation_graph(&g).unwrap();
        let row_params = match rows {
            true => rows_layout(&mut tg, &mut eval),
            false => Vec::new(),
        };
        let layout = if rows { "row layout" } else { "file layout" };
        assert_eq!(
            rows && model != "lstm_dssm" && !set.contains("shared_towers=true"),
            !row_params.is_empty(),
            "{case}: which weights take the row layout: {row_params:?}"
        );
        let mut step = TrainStep::compile(&tg, &shape_refs, options).unwrap();
        assert_eq!(step.input_names(), names);
        let mut params: Vec<Tensor> = counter_params::counter_params(&g);
        for r in &row_params {
            params[r.param] = r.to_rows(&params[r.param]).unwrap();
        }
        let ps: Vec<&[f32]> = params.iter().map(|t| t.as_f32().unwrap()).collect();
        let ins: Vec<&[f32]> = buffers.iter().map(Vec::as_slice).collect();
        step.run(&ins, &ps).unwrap();
        let loss = f64::from(step.output(0)[0]);
        let want = f64s(&fix["loss"])[0];
        assert!(
            (loss - want).abs() <= 1e-5 * want.abs(),
            "{case}: loss {loss} vs PyTorch {want}"
        );
        let scores: Vec<f64> = step
            .output(tg.first_model_output)
            .iter()
            .map(|&x| f64::from(x))
            .collect();
        let e = rel_l2(&scores, &f64s(&fix["output.scores"]));
        assert!(e < 1e-5, "{case}: scores rel L2 {e:.2e}");
        let mut checked = 0;
        for &(pi, oi) in &tg.grads {
            let path = &g.params[pi].path;
            let got = match row_params.iter().find(|r| r.param == pi) {
                Some(r) => transpose(step.output(oi), r.cols, r.rows),
                None => step.output(oi).to_vec(),
            };
            let got: Vec<f64> = got.iter().map(|&x| f64::from(x)).collect();
            let (e, what) = match fix.get(&format!("grad.{path}")) {
                Some(w) => (rel_l2(&got, &f64s(w)), "whole"),
                None => {
                    let norm = got.iter().map(|x| x * x).sum::<f64>().sqrt();
                    let want_norm = f64s(&fix[&format!("norm.{path}")])[0];
                    assert!(
                        (norm - want_norm).abs() <= 1e-4 * want_norm,
                        "{case}: |grad {path}| = {norm}, PyTorch {want_norm}"
                    );
                    let w = f64s(&fix[&format!("proj.{path}")]);
                    (rel_l2(&projections(path, &got), &w), "projected")
                }
            };
            println!("{case} ({layout}): {path} {what} rel L2 {e:.2e}");
            assert!(
                e < 1e-4,
                "{case} ({layout}): gradient of {path}: {what} rel L2 {e:.2e}"
            );
            checked += 1;
        }
        assert_eq!(
            checked,
            g.params.len(),
            "{case}: every parameter has a gradient"
        );
    }
}

#[test]
fn dssm_gradients_equal_pytorch() {
    check_fixture("dssm", "trigrams=300 negatives=2");
}

#[test]
fn shared_tower_gradients_equal_pytorch() {
    check_fixture("dssm_shared", "trigrams=300 negatives=2 shared_towers=true");
}

#[test]
fn cnn_dssm_gradients_equal_pytorch() {
    let columns: [ColumnSpec; 2] = [("q", Some(&[5, 200])), ("docs", Some(&[3, 5, 200]))];
    check_model_fixture(
        "cnn_dssm",
        "cnn_dssm",
        "trigrams=200 words=5 negatives=2",
        &columns,
    );
}

#[test]
fn lstm_dssm_gradients_equal_pytorch_with_and_without_peepholes() {
    let columns: [ColumnSpec; 2] = [("q", None), ("docs", None)];
    check_model_fixture(
        "lstm_dssm",
        "lstm_dssm",
        "vocab=50 words=5 negatives=2",
        &columns,
    );
    check_model_fixture(
        "lstm_dssm_plain",
        "lstm_dssm",
        "vocab=50 words=5 negatives=2 peephole=false",
        &columns,
    );
}

/// A synthetic retrieval task over 500 trigram ids: query `i` is a bag of
/// 6 ids of topic `i % 8`, its positive document 8 other ids of the same
/// topic, the negatives documents of other topics (all seeded).
fn synthetic(samples: usize, negatives: usize, vocab: usize) -> Vec<(String, Tensor)> {
    let topic_bag = |topic: usize, key: u64, len: usize| -> Vec<usize> {
        (0..len)
            .map(|j| {
                let u = unit(91, "bag", key * 64 + j as u64);
                // Topic t owns the ids t, t + 8, t + 16, ... below `vocab`.
                topic + 8 * ((u * (vocab / 8) as f64) as usize % (vocab / 8))
            })
            .collect()
    };
    let (mut q, mut d) = (SparseBags::new(vocab), SparseBags::new(vocab));
    for i in 0..samples {
        let topic = i % 8;
        q.push_bag(topic_bag(topic, i as u64 * 10, 6)).unwrap();
        d.push_bag(topic_bag(topic, i as u64 * 10 + 1, 8)).unwrap();
        for k in 0..negatives {
            let other = (topic + 1 + k + (unit(92, "neg", (i * 8 + k) as u64) * 3.0) as usize) % 8;
            d.push_bag(topic_bag(other, i as u64 * 10 + 2 + k as u64, 8))
                .unwrap();
        }
    }
    let mut t = q.to_tensors("q");
    t.extend(d.to_tensors("docs"));
    t
}

/// `fit` on sparse columns: three epochs of SGD (the model's train
/// section) on 96 synthetic samples in batches of 16 (the last partial)
/// lower the training and validation losses.
#[test]
fn dssm_learns_a_synthetic_sparse_task() {
    let g = dssm("trigrams=500 negatives=4 nnz=6");
    let config = TrainConfig {
        options: CompileOptions {
            threads: 2,
            ..Default::default()
        },
        batch: 16,
        seed: 5,
        lr: None,
    };
    let mut trainer = Trainer::new(g, config).unwrap();
    let columns = trainer.data_columns();
    assert_eq!(columns[0], ("q".to_string(), Some(vec![500])));
    assert_eq!(columns[1], ("docs".to_string(), Some(vec![5, 500])));
    let specs: Vec<(&str, Option<&[usize]>)> = columns
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_deref()))
        .collect();
    let train = DataSet::from_columns("synthetic", synthetic(90, 4, 500), &specs).unwrap();
    let val = DataSet::from_columns("synthetic val", synthetic(40, 4, 500), &specs).unwrap();
    let before = fit::evaluate(&mut trainer, &val, &mut |_| {})
        .unwrap()
        .loss();
    let mut state = RunState::default();
    let options = FitOptions {
        epochs: 3,
        checkpoint: None,
        stop: None,
    };
    let outcome = fit::fit(
        &mut trainer,
        &mut state,
        &train,
        Some(&val),
        &options,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(outcome, Outcome::Completed);
    let losses: Vec<f64> = state.history.iter().map(|e| e.train_loss).collect();
    let after = state.history.last().unwrap().val_loss.unwrap();
    println!("val loss {before:.4} -> {after:.4}, train losses {losses:?}");
    assert!(losses[2] < losses[0], "train losses {losses:?}");
    assert!(after < 0.8 * before, "val loss {before} -> {after}");
}

/// Sparse batches reuse the trainer's CSR buffers: once every batch has
/// been seen, steps allocate nothing (rayon's job-queue block aside, as in
/// `tests/training.rs`) and compile nothing.
#[test]
fn cached_sparse_steps_allocate_nothing() {
    let g = dssm("trigrams=500 negatives=4 nnz=6");
    let config = TrainConfig {
        options: CompileOptions {
            threads: 2,
            ..Default::default()
        },
        batch: 16,
        seed: 5,
        lr: None,
    };
    let mut trainer = Trainer::new(g, config).unwrap();
    let columns = trainer.data_columns();
    let specs: Vec<(&str, Option<&[usize]>)> = columns
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_deref()))
        .collect();
    let data = DataSet::from_columns("synthetic", synthetic(40, 4, 500), &specs).unwrap();
    let batches: Vec<Vec<usize>> = vec![
        (0..16).collect(),
        (16..32).rev().collect(),
        (32..40).collect(),
    ];
    for b in &batches {
        trainer.step(&data, b, &mut |_| {}).unwrap();
    }
    let compiled = trainer.compiled();
    let (count, largest) = counting_alloc::count_allocations(|| {
        for _ in 0..3 {
            for b in &batches {
                trainer.step(&data, b, &mut |_| {}).unwrap();
            }
        }
    });
    assert!(
        count <= 1 && largest <= 4096,
        "{count} allocations during cached steps, the largest {largest} bytes"
    );
    assert_eq!(trainer.compiled(), compiled, "no new plan");
}

/// `lazy = true` on an embedding table: a row that the step's ids do not
/// touch keeps its value and its Adam state, while without `lazy` Adam's
/// momentum keeps moving a row touched one step earlier.
#[test]
fn lazy_adam_updates_only_the_embedding_rows_a_step_touches() {
    let dir = std::env::temp_dir().join(format!("netc-lazy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut moved = Vec::new();
    for lazy in [true, false] {
        let path = dir.join(format!("lazy_{lazy}.net"));
        std::fs::write(
            &path,
            format!(
                "model m() {{\n  input ids: i64[N, 2]\n  output y = sum(ids |> emb: embedding(6, 3), dim = 1)\n}}\n\
                 train m {{\n  label target: f32[N, 3]\n  loss = mse(y, target)\n  optimizer = adam(lr = 0.1, lazy = {lazy})\n}}\n"
            ),
        )
        .unwrap();
        let g = load_model(&path, None, &[]).unwrap();
        let config = TrainConfig {
            options: CompileOptions::default(),
            batch: 1,
            seed: 1,
            lr: None,
        };
        let mut trainer = Trainer::new(g, config).unwrap();
        let ids = Tensor::new(&[2, 2], Storage::I64(vec![1, 2, 3, 4])).unwrap();
        let target = Tensor::from_f32(&[2, 3], vec![1.0; 6]).unwrap();
        let data = DataSet::from_tensors(
            "toy",
            vec![("ids".into(), ids), ("target".into(), target)],
            &["ids", "target"],
        )
        .unwrap();
        // Step 1 touches rows 1 and 2, step 2 rows 3 and 4.
        trainer.step(&data, &[0], &mut |_| {}).unwrap();
        let after_first = trainer.params()[0].as_f32().unwrap().to_vec();
        trainer.step(&data, &[1], &mut |_| {}).unwrap();
        let after_second = trainer.params()[0].as_f32().unwrap().to_vec();
        assert_ne!(
            after_second[9..15],
            after_first[9..15],
            "rows 3 and 4 train"
        );
        assert_eq!(
            after_second[..3],
            after_first[..3],
            "row 0 is never touched"
        );
        moved.push(after_second[3..9] != after_first[3..9]);
    }
    assert_eq!(
        moved,
        [false, true],
        "rows 1-2 in step 2: lazy keeps them, Adam moves them"
    );
}

/// The dssm model of [`dssm`] with its optimizer replaced by `kind` with
/// `hypers`.
fn dssm_with_optimizer(kind: &str, hypers: &[(&str, Attr)]) -> Graph {
    let mut g = dssm("trigrams=500 negatives=4 nnz=6");
    let train = g.train.as_mut().unwrap();
    train.optimizer.kind = kind.to_string();
    train.optimizer.values = hypers
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    g
}

/// A trainer for `g` on batches of up to 16, seed 5, 2 threads.
fn trainer_for(g: Graph) -> Trainer {
    let config = TrainConfig {
        options: CompileOptions {
            threads: 2,
            ..Default::default()
        },
        batch: 16,
        seed: 5,
        lr: None,
    };
    Trainer::new(g, config).unwrap()
}

/// The synthetic data of [`synthetic`] for `trainer`'s columns.
fn synthetic_for(trainer: &Trainer, samples: usize) -> DataSet {
    let columns = trainer.data_columns();
    let specs: Vec<(&str, Option<&[usize]>)> = columns
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_deref()))
        .collect();
    DataSet::from_columns("synthetic", synthetic(samples, 4, 500), &specs).unwrap()
}

/// The parameters after the steps `batches` of `spec` from `init`, by the
/// file-layout path: the plain training graph (dense `[out, V]` weight
/// gradients of every element) and a dense optimizer.
fn dense_reference(
    g: &Graph,
    init: &[Tensor],
    spec: OptimizerSpec,
    data: &DataSet,
    batches: &[Vec<usize>],
) -> Vec<Tensor> {
    let tg = training_graph(g).unwrap();
    let mut params = init.to_vec();
    let lens: Vec<usize> = tg.grads.iter().map(|(pi, _)| params[*pi].numel()).collect();
    let mut opt = Optimizer::new(spec, &lens);
    let options = CompileOptions {
        threads: 2,
        ..Default::default()
    };
    for b in batches {
        let n = b.len();
        let shapes: [(&str, Vec<usize>); 2] = [("q", vec![n, 500]), ("docs", vec![n, 5, 500])];
        let refs: Vec<(&str, &[usize])> = shapes.iter().map(|(k, s)| (*k, s.as_slice())).collect();
        let mut step = TrainStep::compile(&tg, &refs, options).unwrap();
        let mut bufs = Vec::new();
        for k in 0..2 {
            let mut csr = empty_csr();
            data.gather_bags(k, b, &mut csr).unwrap();
            bufs.extend([csr.indices, csr.offsets, csr.values]);
        }
        let ins: Vec<&[f32]> = bufs.iter().map(Vec::as_slice).collect();
        let ps: Vec<&[f32]> = params.iter().map(|t| t.as_f32().unwrap()).collect();
        step.run(&ins, &ps).unwrap();
        let grads: Vec<&[f32]> = tg.grads.iter().map(|(_, oi)| step.output(*oi)).collect();
        let mut slices: Vec<&mut [f32]> =
            params.iter_mut().map(|t| t.as_f32_mut().unwrap()).collect();
        opt.step(&mut slices, &grads, spec.lr()).unwrap();
    }
    params
}

/// Without `lazy`, the trainer's row layout (row-wise weight gradients,
/// weights stored `[V, out]`) gives the parameters of the file-layout
/// path (dense `[out, V]` gradients, checked against PyTorch above), for
/// SGD with momentum and Adam, over steps of two batch sizes.
#[test]
fn row_layout_training_equals_the_dense_path() {
    let batches: Vec<Vec<usize>> = vec![
        (0..16).collect(),
        (16..32).rev().collect(),
        (32..40).collect(),
    ];
    let cases: [(&str, Vec<(&str, Attr)>); 2] = [
        (
            "sgd",
            vec![("lr", Attr::Float(0.5)), ("momentum", Attr::Float(0.9))],
        ),
        ("adam", vec![("lr", Attr::Float(0.01))]),
    ];
    for (kind, hypers) in cases {
        let g = dssm_with_optimizer(kind, &hypers);
        let mut trainer = trainer_for(g.clone());
        let data = synthetic_for(&trainer, 40);
        let init = trainer.params().to_vec();
        for b in &batches {
            trainer.step(&data, b, &mut |_| {}).unwrap();
        }
        let hv: Vec<(&str, Hyper)> = hypers
            .iter()
            .map(|(k, v)| match v {
                Attr::Float(f) => (*k, Hyper::Float(*f)),
                _ => unreachable!("numbers only"),
            })
            .collect();
        let spec = OptimizerSpec::from_params(kind, &hv).unwrap();
        let want = dense_reference(&g, &init, spec, &data, &batches);
        let got = trainer.params();
        for ((p, a), b) in g.params.iter().zip(got.iter()).zip(&want) {
            assert_eq!(
                a.shape(),
                b.shape(),
                "{kind}: {} in the file layout",
                p.path
            );
            let (a, b) = (a.as_f32().unwrap(), b.as_f32().unwrap());
            let worst = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs() / y.abs().max(1e-3))
                .fold(0.0f32, f32::max);
            assert!(worst < 1e-5, "{kind}: {} differs by {worst:.2e}", p.path);
        }
    }
}

/// `lazy = true` on dssm's `sparse_linear` weights (stored `[V, out]`,
/// one row per trigram id): after a second step over other ids, every
/// row that step did not touch keeps its value and both Adam moments bit
/// for bit, while the non-lazy optimizer moves the rows the first step
/// touched; the rows the second step touched equal the non-lazy update
/// (the same gradient from the same state).
#[test]
fn lazy_adam_updates_only_the_sparse_linear_rows_a_step_touches() {
    let batches: [Vec<usize>; 2] = [(0..8).collect(), (8..16).collect()];
    let mut runs = Vec::new();
    for lazy in [true, false] {
        let g = dssm_with_optimizer(
            "adam",
            &[("lr", Attr::Float(0.01)), ("lazy", Attr::Bool(lazy))],
        );
        let mut trainer = trainer_for(g);
        let data = synthetic_for(&trainer, 16);
        let mut snaps = Vec::new();
        for b in &batches {
            trainer.step(&data, b, &mut |_| {}).unwrap();
            let state: Vec<Vec<f32>> = trainer
                .optimizer()
                .state_tensors()
                .iter()
                .map(|t| t.data.to_vec())
                .collect();
            snaps.push((trainer.params().to_vec(), state));
        }
        // The ids of the second batch's queries and documents.
        let mut ids = [vec![false; 500], vec![false; 500]];
        for (k, seen) in ids.iter_mut().enumerate() {
            let mut csr = empty_csr();
            data.gather_bags(k, &batches[1], &mut csr).unwrap();
            for i in &csr.indices {
                seen[i.to_bits() as usize] = true;
            }
        }
        let paths: Vec<String> = trainer
            .trained_paths()
            .iter()
            .map(|s| s.to_string())
            .collect();
        let names = trainer.optimizer().spec().state_names().len();
        runs.push((snaps, ids, paths, names, trainer.graph().clone()));
    }
    let (lazy, dense) = (&runs[0], &runs[1]);
    let (g, paths, names) = (&lazy.4, &lazy.2, lazy.3);
    let mut moved_by_dense = 0;
    for (tower, weight) in [(0, "q_tower.net.0.weight"), (1, "d_tower.net.0.weight")] {
        let pi = g.params.iter().position(|p| p.path == weight).unwrap();
        let slot = paths.iter().position(|p| p == weight).unwrap();
        let (out, vocab) = (300, 500);
        let column = |t: &[f32], v: usize| -> Vec<u32> {
            (0..out).map(|o| t[o * vocab + v].to_bits()).collect()
        };
        let touched = &lazy.1[tower];
        for (v, &hit) in touched.iter().enumerate().take(vocab) {
            let before = lazy.0[0].0[pi].as_f32().unwrap();
            let after = lazy.0[1].0[pi].as_f32().unwrap();
            let dense_after = dense.0[1].0[pi].as_f32().unwrap();
            if hit {
                assert_ne!(
                    column(after, v),
                    column(before, v),
                    "{weight}: id {v} trains"
                );
                assert_eq!(
                    column(after, v),
                    column(dense_after, v),
                    "{weight}: id {v} as Adam"
                );
                continue;
            }
            assert_eq!(
                column(after, v),
                column(before, v),
                "{weight}: id {v} is kept"
            );
            for k in 0..names {
                let s = slot * names + k;
                assert_eq!(
                    column(&lazy.0[1].1[s], v),
                    column(&lazy.0[0].1[s], v),
                    "{weight}: Adam state {k} of id {v} is kept"
                );
            }
            if column(dense_after, v) != column(before, v) {
                moved_by_dense += 1;
            }
        }
    }
    assert!(
        moved_by_dense > 0,
        "without lazy, Adam's momentum moves rows of the first step"
    );
}

/// A checkpoint of a trainer with row-layout weights holds them (and
/// their Adam moments) in PyTorch's `[out, V]` layout, and resuming it
/// restores the trainer exactly.
#[test]
fn row_layout_checkpoints_keep_pytorch_layout() {
    let g = dssm_with_optimizer("adam", &[("lr", Attr::Float(0.01))]);
    let mut trainer = trainer_for(g.clone());
    let data = synthetic_for(&trainer, 16);
    trainer
        .step(&data, &(0..16).collect::<Vec<_>>(), &mut |_| {})
        .unwrap();
    let dir = std::env::temp_dir().join(format!("netc-rows-ck-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ck.safetensors");
    fit::save(&trainer, &RunState::default(), &path).unwrap();
    let file: HashMap<String, Tensor> = read_safetensors(&path).unwrap().into_iter().collect();
    let w = &file["q_tower.net.0.weight"];
    assert_eq!(w.shape(), [300, 500]);
    assert_eq!(w, &trainer.params()[0]);
    assert_eq!(
        file["optimizer.exp_avg.q_tower.net.0.weight"].shape(),
        [300, 500]
    );
    // exp_avg after one Adam step is (1 - beta1) · grad: non-zero exactly
    // in the columns of the ids the queries hold.
    let m = file["optimizer.exp_avg.q_tower.net.0.weight"]
        .as_f32()
        .unwrap();
    let mut csr = empty_csr();
    data.gather_bags(0, &(0..16).collect::<Vec<_>>(), &mut csr)
        .unwrap();
    for v in 0..500 {
        let held = csr.indices.iter().any(|i| i.to_bits() as usize == v);
        assert_eq!(held, (0..300).any(|o| m[o * 500 + v] != 0.0), "id {v}");
    }
    let mut resumed = trainer_for(g);
    fit::resume(&mut resumed, &path).unwrap();
    assert_eq!(resumed.params(), trainer.params());
    assert_eq!(
        resumed.optimizer().state_tensors(),
        trainer.optimizer().state_tensors()
    );
    // Both go on identically (the stored layout was restored, not just the file's).
    let next: Vec<usize> = (8..16).collect();
    trainer.step(&data, &next, &mut |_| {}).unwrap();
    resumed.step(&data, &next, &mut |_| {}).unwrap();
    assert_eq!(resumed.params(), trainer.params());
    std::fs::remove_dir_all(&dir).ok();
}
