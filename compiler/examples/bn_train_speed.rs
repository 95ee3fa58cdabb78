//! Wall time of training batch norm (`batch_norm_train` then
//! `batch_norm_grad` on its statistics) through the plan executor, on 1
//! and 2 threads, per op (from the profiled run's step times).
//!
//! `cargo run --release --example bn_train_speed [N C H W]` (a
//! measurement, not a test); default `8 256 28 28`.

use netc::back::jit::Jit;
use netc::back::lower::lower;
use netc::ir::{Attr, Dim, Graph, NodeId, Op, TensorType, ValueDef, ValueId};
use netc::options::CompileOptions;
use netc::passes::rewrite::{new_node, set_nodes};
use netc::program::Program;
use netc_runtime::plan::Executor;
use netc_runtime::DType;
use std::path::Path;
use std::time::Duration;

/// The graph `x -> batch_norm_train -> batch_norm_grad(dy, ...)`.
fn graph(shape: &[usize]) -> Result<Graph, String> {
    let dims = shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let c = shape[1];
    let src = format!(
        "model m() {{ input x: f32[{dims}]  input dy: f32[{dims}]  input w: f32[{c}]
           input b: f32[{c}]  input rm: f32[{c}]  input rv: f32[{c}]  output y = relu(w) }}"
    );
    let (p, diags) = Program::from_text(Path::new("bn.net"), &src);
    if !diags.is_empty() {
        return Err(format!("{} diagnostics", diags.len()));
    }
    let def = p.model(None).map_err(|e| e.to_string())?;
    let mut g = netc::elab::elaborate(&p, def, &[]).map_err(|ds| format!("{} errors", ds.len()))?;
    let v: Vec<ValueId> = g.inputs.iter().map(|(_, v)| *v).collect();
    let like = g.nodes[0].clone();
    let ty = |s: &[usize]| {
        TensorType::known(DType::F32, &s.iter().map(|&d| d as i64).collect::<Vec<_>>())
    };
    let node = |g: &mut Graph, op: Op, inputs: Vec<ValueId>, outs: &[&[usize]]| {
        let mut n = new_node(g, op, inputs, ty(outs[0]), Dim::known(0), &like);
        for s in &outs[1..] {
            let v = g.add_value(ty(s), ValueDef::Node(NodeId(u32::MAX), 0), like.span);
            n.outputs.push(v);
        }
        n
    };
    let per: &[usize] = &[c];
    let op = Op::new("batch_norm_train")
        .with("eps", Attr::Float(1e-5))
        .with("momentum", Attr::Float(0.1));
    let f = node(
        &mut g,
        op,
        vec![v[0], v[2], v[3], v[4], v[5]],
        &[shape, per, per, per, per],
    );
    let grad = Op::new("batch_norm_grad");
    let b = node(
        &mut g,
        grad,
        vec![v[1], v[0], f.outputs[1], f.outputs[2], v[2]],
        &[shape, per, per],
    );
    g.outputs = vec![
        ("y".into(), f.outputs[0]),
        ("rm".into(), f.outputs[3]),
        ("rv".into(), f.outputs[4]),
        ("dx".into(), b.outputs[0]),
        ("dw".into(), b.outputs[1]),
        ("db".into(), b.outputs[2]),
    ];
    let mut nodes = g.nodes.clone();
    nodes.extend([f, b]);
    set_nodes(&mut g, nodes);
    Ok(g)
}

fn main() -> Result<(), String> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let shape = if args.len() == 4 {
        args
    } else {
        vec![8, 256, 28, 28]
    };
    let g = graph(&shape)?;
    let mut jit = Jit::new().map_err(|e| e.0)?;
    let lowered = lower(&g, &[], CompileOptions::default(), &mut jit).map_err(|e| e.0)?;
    let (n, c) = (shape.iter().product::<usize>(), shape[1]);
    let big: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() + 0.5).collect();
    let dy: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
    let small: Vec<f32> = (0..c).map(|i| 1.0 + i as f32 * 1e-3).collect();
    println!("shape {shape:?}");
    for threads in [1, 2] {
        let mut ex = Executor::new(lowered.plan.clone(), threads).map_err(|e| e.to_string())?;
        ex.prepare(&[]).map_err(|e| e.to_string())?;
        let mut outs: Vec<Vec<f32>> = lowered.outputs.iter().map(|(_, l)| vec![0.0; *l]).collect();
        let mut times = vec![Duration::ZERO; lowered.plan.steps.len()];
        let mut per_op: Vec<(String, Vec<f64>)> = Vec::new();
        for _ in 0..30 {
            let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
            let ins: [&[f32]; 6] = [&big, &dy, &small, &small, &small, &small];
            ex.run_profiled(&ins, &[], &mut refs, &mut times)
                .map_err(|e| e.to_string())?;
            for op in ["batch_norm_train", "batch_norm_grad"] {
                let t: f64 = lowered
                    .labels
                    .iter()
                    .zip(&times)
                    .filter(|(l, _)| l.op == op)
                    .map(|(_, t)| t.as_secs_f64())
                    .sum();
                match per_op.iter_mut().find(|(o, _)| o == op) {
                    Some((_, v)) => v.push(t),
                    None => per_op.push((op.to_string(), vec![t])),
                }
            }
        }
        for (op, mut t) in per_op {
            t.sort_by(|a, b| a.total_cmp(b));
            let gbs = (if op == "batch_norm_train" { 3.0 } else { 5.0 }) * n as f64 * 4.0
                / t[t.len() / 2]
                / 1e9;
            println!(
                "{threads} threads  {op:<17} median {:.3} ms  (~{gbs:.1} GB/s of x/dy/y/dx traffic)",
                t[t.len() / 2] * 1e3
            );
        }
    }
    Ok(())
}
