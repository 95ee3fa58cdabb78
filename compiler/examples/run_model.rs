//! Running a model from Rust with the host API (`netc::session`): parse a
//! `.net` file, compile it with options, load or initialise its weights,
//! run it on a tensor, print the outputs.
//!
//! ```text
//! cargo run --release --example run_model -- [MODEL.net [WEIGHTS.safetensors]]
//! ```
//!
//! Without arguments it runs `models/eeg_mlp.net` on a batch of 8 with
//! PyTorch's default initialisation. Every input gets a deterministic
//! pattern, with 8 for each symbolic size (the batch `N`).

use netc::options::{CompileOptions, GemmChoice, LayoutChoice};
use netc::session::{load_model, CompiledModel};
use netc_runtime::Tensor;
use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

/// The size given to every symbolic dimension of the inputs.
const BATCH: i64 = 8;

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let file = args.next().map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/eeg_mlp.net"),
        PathBuf::from,
    );
    let weights = args.next().map(PathBuf::from);

    // 1. Parse and elaborate the file's only model with its default
    //    arguments (pass `("classes", Value::Int(3))` and the like to
    //    override them).
    let graph = load_model(&file, None, &[])?;

    // 2. One input tensor per model input, of the shape its type gives
    //    when every symbol is BATCH.
    let mut inputs = Vec::new();
    for (name, v) in &graph.inputs {
        let shape = graph
            .ty(*v)
            .shape
            .iter()
            .map(|d| d.eval(&|_| Some(BATCH)).as_known().map(|n| n as usize))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| format!("input `{name}` has a size that is not a plain symbol"))?;
        let n: usize = shape.iter().product();
        let data = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let t = Tensor::from_f32(&shape, data).ok_or("the input does not fit its shape")?;
        inputs.push((name.clone(), t));
    }
    let shapes: Vec<(&str, &[usize])> = inputs
        .iter()
        .map(|(n, t)| (n.as_str(), t.shape()))
        .collect();

    // 3. Compile for those shapes: two threads, every pass on (the same
    //    switches as `netc run --threads --gemm --no-fuse --layout`).
    let options = CompileOptions {
        threads: 2,
        gemm: GemmChoice::Auto,
        fuse: true,
        fold_bn: true,
        pool_first: true,
        reuse_arena: true,
        layout: LayoutChoice::Auto,
        team: true,
        wide_pointwise: true,
        thin_linear: true,
        winograd: true,
        norm_prologue: true,
    };
    let t0 = Instant::now();
    let mut model = CompiledModel::new(graph, &shapes, options)?;
    println!(
        "compiled `{}` in {:.1} ms ({} kernels)",
        model.graph().name,
        t0.elapsed().as_secs_f64() * 1e3,
        model.kernels_compiled()
    );

    // 4. Weights: a safetensors file whose names are the parameter paths
    //    (`netc check FILE --params` lists them), or PyTorch's default
    //    initialisation from a seed.
    match &weights {
        Some(w) => model.load_weights(w)?,
        None => model.init_weights(0)?,
    }

    // 5. Run (as often as needed; nothing is compiled again) and print.
    let named: Vec<(&str, &Tensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let t0 = Instant::now();
    let outputs = model.run(&named)?;
    println!("ran in {:.3} ms", t0.elapsed().as_secs_f64() * 1e3);
    for (name, t) in &outputs {
        let head: Vec<String> = t
            .as_f32()
            .unwrap_or(&[])
            .iter()
            .take(6)
            .map(|v| format!("{v:.5}"))
            .collect();
        println!(
            "{name}: {}{:?} [{}, ...]",
            t.dtype(),
            t.shape(),
            head.join(", ")
        );
    }
    Ok(())
}
