//! Forward time of `lstm_dssm` (models/dssm.net at its defaults: vocabulary
//! 30000, 20 words, 4 negatives, peepholes) per batch size and thread
//! count, with the LSTM layers' share from the per-layer profile, and the
//! time of a training step of one tower (ids -> embedding -> LSTM, loss
//! `sum(y * r)`: forward, recomputed state, BPTT and all gradients).
//!
//! `cargo run --release --example lstm_speed` (a measurement, not a test;
//! the runtime kernels are optimised in dev builds too).

use netc::grad::training_graph;
use netc::options::CompileOptions;
use netc::session::{load_model, CompiledModel};
use netc::train::step::TrainStep;
use netc_runtime::{Initializer, Storage, Tensor};
use std::time::Instant;

fn ids(n: usize, seed: u64) -> Vec<i64> {
    (0..n as u64)
        .map(|i| (netc_runtime::counter::splitmix64(seed ^ i) % 30000) as i64)
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/dssm.net");
    let g = load_model(&path, Some("lstm_dssm"), &[])?;
    println!("lstm_dssm forward (vocab 30000, 20 words, 4 negatives, peepholes)");
    for batch in [64usize, 256] {
        for threads in [1usize, 2] {
            let (qs, ds) = (vec![batch, 20], vec![batch, 5, 20]);
            let options = CompileOptions {
                threads,
                ..Default::default()
            };
            let mut m = CompiledModel::new(g.clone(), &[("q", &qs), ("docs", &ds)], options)?;
            m.init_weights(1)?;
            let q = Tensor::new(&qs, Storage::I64(ids(batch * 20, 1))).ok_or("q")?;
            let d = Tensor::new(&ds, Storage::I64(ids(batch * 100, 2))).ok_or("d")?;
            let layers = m.profile(&[("q", &q), ("docs", &d)], 10)?;
            let total: f64 = layers.iter().map(|l| l.median_ms).sum();
            let lstm: f64 = layers
                .iter()
                .filter(|l| l.op == "lstm")
                .map(|l| l.median_ms)
                .sum();
            let flops: f64 = layers.iter().map(|l| l.flops).sum();
            println!(
                "  batch {batch:4} threads {threads}: {total:8.2} ms ({:6.0} queries/s, {:5.1} GFLOP/s), lstm layers {lstm:8.2} ms",
                batch as f64 / total * 1e3,
                flops / total * 1e-6
            );
        }
    }
    let src = "model m {\ninput ids: i64[N, 20]\noutput y = ids |> emb: embedding(30000, 128) |> l: lstm(128, peephole = true)\n}\ntrain m {\nlabel r: f32[N, 128]\nloss = sum(y * r)\noptimizer = adam(lr = 0.001)\n}\n";
    let (p, _) = netc::program::Program::from_text(std::path::Path::new("t.net"), src);
    let tg = training_graph(&netc::elab::elaborate(&p, p.model(None)?, &[]).map_err(|_| "elab")?)?;
    println!("one tower's training step (ids [N, 20] -> embedding 128 -> LSTM 128)");
    let mut init = Initializer::new(2);
    let params: Vec<Tensor> = tg
        .graph
        .params
        .iter()
        .map(|p| {
            let s: Vec<usize> = p.ty.known_dims().unwrap_or_default();
            init.tensor(p.ty.dtype, &s, &p.init)
        })
        .collect();
    let ps: Vec<&[f32]> = params.iter().map(|t| t.as_f32().unwrap_or(&[])).collect();
    for batch in [384usize] {
        for threads in [1usize, 2] {
            let options = CompileOptions {
                threads,
                ..Default::default()
            };
            let (is, rs) = (vec![batch, 20], vec![batch, 128]);
            let mut step = TrainStep::compile(&tg, &[("ids", &is), ("r", &rs)], options)?;
            let x: Vec<f32> = ids(batch * 20, 3).iter().map(|&v| v as f32).collect();
            let r = vec![0.01f32; batch * 128];
            step.run(&[&x, &r], &ps)?;
            let mut times: Vec<f64> = (0..5)
                .map(|_| {
                    let t0 = Instant::now();
                    step.run(&[&x, &r], &ps)
                        .map(|_| t0.elapsed().as_secs_f64() * 1e3)
                })
                .collect::<Result<_, _>>()?;
            times.sort_by(f64::total_cmp);
            println!(
                "  {batch} sequences, threads {threads}: {:8.2} ms per step",
                times[2]
            );
        }
    }
    Ok(())
}
