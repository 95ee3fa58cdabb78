//! GFLOP/s of DenseNet-shaped convolutions through the whole contraction
//! path (im2col packing, GEMM, epilogue with a fused ReLU, the plan
//! executor): 3x3 128→32 on 56x56 (pad 1) and 1x1 256→128 on 28x28, at
//! batch 1 and 8, on 2 threads, native vs Cranelift GEMM, NCHW and NHWC.
//!
//! `cargo run --release --example conv_speed [FILTER]` (a measurement, not
//! a test); FILTER keeps the rows whose `gemm layout batch` text contains it,
//! e.g. `"native nchw 8"`.

use netc::back::jit::Jit;
use netc::back::lower::lower;
use netc::ir::{Attr, Dim, Graph};
use netc::options::{CompileOptions, GemmChoice};
use netc::program::Program;
use netc_runtime::plan::Executor;
use std::path::Path;
use std::time::Instant;

/// Median wall seconds and mean CPU seconds (all threads) per run of `f`,
/// over enough runs (at least 9) to take half a second, after a warm-up.
fn measure(mut f: impl FnMut()) -> (f64, f64) {
    let t0 = Instant::now();
    f();
    let reps = ((0.5 / t0.elapsed().as_secs_f64()).ceil() as usize).clamp(9, 500);
    let cpu0 = cpu_secs();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    let cpu = (cpu_secs() - cpu0) / reps as f64;
    t.sort_by(|a, b| a.total_cmp(b));
    (t[t.len() / 2], cpu)
}

/// CPU seconds this process has used, all threads (user + system, from
/// `/proc/self/stat` in 1/100 s ticks; 0 where that is not available).
fn cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are
    // fields 14 and 15 of the whole line.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<f64>() / 100.0
}

/// A conv + ReLU model, the ReLU fused into the conv's epilogue.
fn graph(c: usize, hw: usize, oc: usize, k: usize) -> Result<Graph, String> {
    let src = format!(
        "model m() {{ input x: f32[N, {c}, {hw}, {hw}]
             output y = x |> c: conv2d({oc}, k = {k}, pad = {}, bias = false) |> relu }}",
        k / 2
    );
    let (p, diags) = Program::from_text(Path::new("conv.net"), &src);
    if !diags.is_empty() {
        return Err(format!("{} diagnostics", diags.len()));
    }
    let def = p.model(None).map_err(|e| e.to_string())?;
    let mut g = netc::elab::elaborate(&p, def, &[]).map_err(|ds| {
        ds.iter()
            .map(|d| d.message.clone())
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    let head = g.nodes[0].outputs[0];
    g.nodes[1].fused_into = Some(head);
    Ok(g)
}

/// The graph with the conv in NHWC (weight `[OC, KH, KW, C]`).
fn nhwc(g: &Graph) -> Graph {
    let mut g = g.clone();
    g.nodes[0]
        .op
        .attrs
        .push(("layout", Attr::Str("nhwc".into())));
    let vals = [
        g.inputs[0].1,
        g.nodes[0].inputs[1],
        g.nodes[0].outputs[0],
        g.nodes[1].outputs[0],
    ];
    for v in vals {
        let s: &mut Vec<Dim> = &mut g.values[v.0 as usize].ty.shape;
        *s = vec![s[0].clone(), s[2].clone(), s[3].clone(), s[1].clone()];
    }
    g
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let threads = 2;
    let filter = std::env::args().nth(1).unwrap_or_default();
    println!(
        "conv + fused relu, {threads} threads: median wall time of >= 9 runs;\n\
         cpu = mean CPU time of all threads per run (GFLOP per CPU-second: \
         a machine-load-independent view; spinning pool threads count too)"
    );
    println!(
        "{:<28} {:>5} {:>9} {:>5} {:>9} {:>8} {:>9} {:>8}",
        "conv", "batch", "gemm", "lay", "ms", "GFLOP/s", "cpu ms", "per cpu-s"
    );
    for (c, hw, oc, k) in [(128, 56, 32, 3), (256, 28, 128, 1)] {
        let base = graph(c, hw, oc, k).map_err(|e| e.to_string())?;
        for batch in [1, 8] {
            let flops = 2.0 * (batch * oc * hw * hw * c * k * k) as f64;
            for gemm in [GemmChoice::Native, GemmChoice::Cranelift] {
                for (layout, g) in [("nchw", base.clone()), ("nhwc", nhwc(&base))] {
                    let name = format!("{k}x{k} {c}->{oc} on {hw}x{hw}");
                    let tag = format!(
                        "{} {name} {} {layout} {batch}",
                        "",
                        format!("{gemm:?}").to_lowercase()
                    );
                    if !tag.contains(&filter) {
                        continue;
                    }
                    let mut jit = Jit::new()?;
                    let options = CompileOptions {
                        threads,
                        gemm,
                        ..CompileOptions::default()
                    };
                    let lowered = lower(&g, &[("N".into(), batch as i64)], options, &mut jit)?;
                    let mut ex = Executor::new(lowered.plan, threads)?;
                    let x: Vec<f32> = (0..batch * c * hw * hw)
                        .map(|i| ((i % 29) as f32 - 14.0) * 0.01)
                        .collect();
                    let w: Vec<f32> = (0..oc * c * k * k)
                        .map(|i| ((i % 13) as f32 - 6.0) * 0.01)
                        .collect();
                    let mut y = vec![0.0f32; lowered.outputs[0].1];
                    ex.prepare(&[&w])?;
                    let mut failed = None;
                    let (secs, cpu) = measure(|| {
                        if let Err(e) = ex.run(&[&x], &[&w], &mut [&mut y]) {
                            failed = Some(e);
                        }
                    });
                    if let Some(e) = failed {
                        return Err(e.into());
                    }
                    println!(
                        "{:<28} {:>5} {:>9} {:>5} {:>9.3} {:>8.1} {:>9.3} {:>8.1}",
                        name,
                        batch,
                        format!("{gemm:?}").to_lowercase(),
                        layout,
                        secs * 1e3,
                        flops / secs / 1e9,
                        cpu * 1e3,
                        flops / cpu / 1e9
                    );
                }
            }
        }
    }
    Ok(())
}
