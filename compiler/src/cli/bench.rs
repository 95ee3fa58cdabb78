//! `netc bench`: latency of a compiled model at one or more batch sizes on
//! seeded random inputs and default-initialised weights: warm-up, then
//! timed calls; median, min, max, samples/s and achieved GFLOP/s, as a
//! table or (`--json`) one JSON object per batch size. Also reports the
//! cold compile time (parse → passes → lowering → JIT → prepared, ready to
//! run) of each batch size, and apart from it the time to initialise the
//! weights (what loading a weight file replaces).

use super::options::{input_sizes, CompileFlags, ModelArgs};
use super::Failure;
use netc::bench::{forward_flops, measure, measure_training, BenchConfig, Timing};
use netc::ir::Graph;
use netc::session::CompiledModel;
use netc::source::SourceMap;
use netc::train::trainer::{TrainConfig, Trainer};
use netc_runtime::train::data::DataSet;
use netc_runtime::{DType, Storage, Tensor};
use std::time::{Duration, Instant};

/// The arguments of `netc bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Batch sizes (the input symbol `N`), comma-separated: `--batch 1,8`.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    batch: Vec<usize>,
    /// Untimed calls before measuring.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// At least this many timed calls.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Keep timing until this many seconds have passed.
    #[arg(long, default_value_t = 2.0)]
    min_time: f64,
    /// One JSON object per batch size instead of a table.
    #[arg(long)]
    json: bool,
    /// Time training steps (forward, loss, backward, optimizer update) of
    /// the model's `train` section on seeded random data instead of the
    /// forward pass.
    #[arg(long)]
    train: bool,
    /// With `--train`: store the activations of the blocks the `train`
    /// section lists in `recompute` instead of recomputing them.
    #[arg(long)]
    no_recompute: bool,
    #[command(flatten)]
    flags: CompileFlags,
}

/// Runs `netc bench`.
pub fn bench(args: &BenchArgs) -> Result<(), Failure> {
    let options = args.flags.options()?;
    if !(args.min_time >= 0.0 && args.min_time <= 3600.0) {
        return Err(Failure::Usage(format!(
            "`--min-time {}`: expected seconds between 0 and 3600",
            args.min_time
        )));
    }
    let config = BenchConfig {
        warmup: args.warmup,
        min_reps: args.reps.max(1),
        min_time: Duration::from_secs_f64(args.min_time),
    };
    for (i, &batch) in args.batch.iter().enumerate() {
        if batch == 0 {
            return Err(Failure::Usage("`--batch 0`: batches are at least 1".into()));
        }
        let start = Instant::now();
        let loaded = super::options::load(&args.model)?;
        let mut sizes = loaded.sizes.clone();
        if loaded.graph.find_symbol("N").is_some() {
            sizes.push(("N".into(), batch as i64));
        } else if batch != 1 {
            return Err(Failure::Usage(format!(
                "`--batch {batch}`: model `{}` has no batch size `N` (its inputs have fixed shapes); use --batch 1",
                loaded.graph.name
            )));
        }
        let shapes = input_shapes(&loaded.graph, &sizes)?;
        let name = loaded.graph.name.clone();
        if args.train {
            let mut graph = loaded.graph;
            if args.no_recompute {
                if let Some(t) = graph.train.as_mut() {
                    t.recompute.clear();
                }
            }
            if super::bench_voxel::is_voxel_model(&graph) {
                let options = args.flags.options()?;
                let sources = &loaded.sources;
                super::bench_voxel::train_row(
                    args,
                    options,
                    graph,
                    sources,
                    &shapes,
                    config,
                    i == 0,
                )?;
            } else {
                train_row(args, graph, &loaded.sources, batch, config, i == 0)?;
            }
            continue;
        }
        let flops = forward_flops(&loaded.graph, &shape_refs(&shapes)).map_err(Failure::error)?;
        let graph = loaded.graph;
        let mut model = CompiledModel::new(graph.clone(), &shape_refs(&shapes), options)
            .map_err(Failure::error)?;
        let compile_ms = start.elapsed().as_secs_f64() * 1e3;
        let start = Instant::now();
        model.init_weights(0).map_err(Failure::error)?;
        let init_ms = start.elapsed().as_secs_f64() * 1e3;
        let inputs = model_inputs(&graph, &shapes);
        let refs: Vec<(&str, &Tensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let t = measure(&mut model, &refs, config).map_err(Failure::error)?;
        let gflops = flops / (t.median_ms / 1e3) / 1e9;
        if args.json {
            println!(
                "{{\"model\": \"{name}\", \"batch\": {batch}, \"threads\": {}, \"train\": false, \"median_ms\": {:.6}, \"min_ms\": {:.6}, \"max_ms\": {:.6}, \"samples_per_s\": {:.3}, \"gflops\": {:.3}, \"flops\": {flops:.0}, \"compile_ms\": {compile_ms:.3}, \"init_ms\": {init_ms:.3}, \"arena_mb\": {:.3}, \"times_ms\": [{}]}}",
                options.threads,
                t.median_ms,
                t.min_ms,
                t.max_ms,
                t.samples_per_s(batch),
                gflops,
                model.arena_len() as f64 * 4.0 / 1e6,
                t.times_ms.iter().map(|v| format!("{v:.6}")).collect::<Vec<_>>().join(", ")
            );
        } else {
            if i == 0 {
                print_header();
            }
            println!(
                "{batch:>6} {:>11.3} {:>11.3} {:>11.3} {:>13.1} {:>9.1} {:>11.1} {:>9.1}",
                t.median_ms,
                t.min_ms,
                t.max_ms,
                t.samples_per_s(batch),
                gflops,
                compile_ms,
                init_ms
            );
        }
    }
    Ok(())
}

/// Times training steps at one batch size and prints one row.
fn train_row(
    args: &BenchArgs,
    graph: Graph,
    sources: &SourceMap,
    batch: usize,
    config: BenchConfig,
    first: bool,
) -> Result<(), Failure> {
    let options = args.flags.options()?;
    let start = Instant::now();
    let name = graph.name.clone();
    let trainer_config = TrainConfig {
        options,
        batch,
        seed: 0,
        lr: None,
    };
    let mut trainer = Trainer::new(graph, trainer_config).map_err(|e| Failure::run(e, sources))?;
    let data = random_data(&trainer, batch)?;
    let indices: Vec<usize> = (0..batch).collect();
    trainer
        .step(&data, &indices, &mut |_| {})
        .map_err(Failure::error)?;
    let compile_ms = start.elapsed().as_secs_f64() * 1e3;
    let (kernels, arena) = trainer.compiled_size();
    let t = measure_training(&mut trainer, &data, batch, config).map_err(Failure::error)?;
    let sizes = (compile_ms, kernels, arena);
    print_train_row(args, &name, (batch, options.threads), &t, sizes, first);
    Ok(())
}

/// Prints one `--train` row (a table row, with the header when `first`,
/// or a JSON object): batch and threads, the step timing `t`, the time to
/// the end of the first step, and the plan's kernels and arena elements.
pub(super) fn print_train_row(
    args: &BenchArgs,
    name: &str,
    (batch, threads): (usize, usize),
    t: &Timing,
    (compile_ms, kernels, arena): (f64, usize, usize),
    first: bool,
) {
    let arena_mb = arena as f64 * 4.0 / 1e6;
    if args.json {
        println!(
            "{{\"model\": \"{name}\", \"batch\": {batch}, \"threads\": {}, \"train\": true, \"median_ms\": {:.6}, \"min_ms\": {:.6}, \"max_ms\": {:.6}, \"samples_per_s\": {:.3}, \"compile_ms\": {compile_ms:.3}, \"kernels\": {kernels}, \"arena_mb\": {arena_mb:.3}, \"times_ms\": [{}]}}",
            threads,
            t.median_ms,
            t.min_ms,
            t.max_ms,
            t.samples_per_s(batch),
            t.times_ms.iter().map(|v| format!("{v:.6}")).collect::<Vec<_>>().join(", ")
        );
    } else {
        if first {
            println!(
                "{:>6} {:>11} {:>11} {:>11} {:>13} {:>17} {:>10}",
                "batch", "median ms", "min ms", "max ms", "samples/s", "first step ms", "arena MB"
            );
        }
        println!(
            "{batch:>6} {:>11.3} {:>11.3} {:>11.3} {:>13.1} {:>17.1} {:>10.1}",
            t.median_ms,
            t.min_ms,
            t.max_ms,
            t.samples_per_s(batch),
            compile_ms,
            arena_mb
        );
    }
}

/// Seeded data for `trainer`: model inputs as [`model_inputs`] (sparse
/// inputs as CSR bags), class labels cycling through the classes (taken
/// from the first model output's last dim, or 2), masks (bool labels) set
/// at every third element.
pub(super) fn random_data(trainer: &Trainer, batch: usize) -> Result<DataSet, Failure> {
    let g = &trainer.training_graph().graph;
    let model = trainer.graph();
    let classes = model
        .outputs
        .first()
        .and_then(|(_, v)| model.ty(*v).shape.last()?.as_known())
        .unwrap_or(2)
        .max(1) as usize;
    let shape_of = |ty: &netc::ir::TensorType| -> Vec<usize> {
        std::iter::once(batch)
            .chain(
                ty.shape[1..]
                    .iter()
                    .map(|d| d.as_known().unwrap_or(1).max(0) as usize),
            )
            .collect()
    };
    let shapes: Vec<(String, Vec<usize>)> = model
        .inputs
        .iter()
        .map(|(n, v)| (n.clone(), shape_of(model.ty(*v))))
        .collect();
    let mut tensors = model_inputs(model, &shapes);
    for (name, v) in &g.inputs {
        if shapes.iter().any(|(n, _)| n == name) || name == netc::grad::SEED_INPUT {
            continue;
        }
        let ty = g.ty(*v);
        let shape = shape_of(ty);
        let n: usize = shape.iter().product();
        let storage = match ty.dtype {
            DType::I64 => Some(Storage::I64((0..n).map(|i| (i % classes) as i64).collect())),
            DType::Bool => Some(Storage::Bool(
                (0..n).map(|i| u8::from(i % 3 == 0)).collect(),
            )),
            _ => None,
        };
        let t = if let Some(storage) = storage {
            Tensor::new(&shape, storage)
                .ok_or_else(|| Failure::Error(format!("cannot build label `{name}`")))?
        } else {
            random_inputs(&[(name.clone(), shape)]).remove(0).1
        };
        tensors.push((name.clone(), t));
    }
    let columns = trainer.data_columns();
    let specs: Vec<netc_runtime::train::data::ColumnSpec> = columns
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_deref()))
        .collect();
    DataSet::from_columns("random data", tensors, &specs).map_err(Failure::error)
}

/// The column titles of the table output.
fn print_header() {
    println!(
        "{:>6} {:>11} {:>11} {:>11} {:>13} {:>9} {:>11} {:>9}",
        "batch", "median ms", "min ms", "max ms", "samples/s", "GFLOP/s", "compile ms", "init ms"
    );
}

/// The concrete shape of every input for the given sizes.
pub(super) fn input_shapes(
    g: &Graph,
    sizes: &[(String, i64)],
) -> Result<Vec<(String, Vec<usize>)>, Failure> {
    let known = input_sizes(g, sizes)?;
    g.inputs
        .iter()
        .map(|(name, v)| {
            let dims = g
                .ty(*v)
                .shape
                .iter()
                .map(|d| {
                    let value = d.eval(&|s| {
                        let n = g.sym_name(s);
                        known.iter().find(|(k, _)| *k == n).map(|(_, v)| *v)
                    });
                    value
                        .as_known()
                        .and_then(|n| usize::try_from(n).ok())
                        .ok_or_else(|| {
                            Failure::Usage(format!(
                                "input `{name}`: size {} is not given (use --set)",
                                g.dim_text(d)
                            ))
                        })
                })
                .collect::<Result<Vec<usize>, _>>()?;
            Ok((name.clone(), dims))
        })
        .collect()
}

/// The shapes as `(name, shape)` references, as the session takes them.
pub(super) fn shape_refs(shapes: &[(String, Vec<usize>)]) -> Vec<(&str, &[usize])> {
    shapes
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_slice()))
        .collect()
}

/// Seeded inputs for every input of `g`: dense f32 inputs as
/// [`random_inputs`]; a sparse input `q` of logical shape `[..., V]` as
/// CSR tensors `q.indices`/`q.offsets`/`q.values` with the `nnz` ids per
/// bag that its reading op declares (the expected count its FLOPs assume,
/// default 20), ids spread over `0..V`, counts 1; i64 ids (an embedding's
/// input) spread over the table's rows.
pub(super) fn model_inputs(g: &Graph, shapes: &[(String, Vec<usize>)]) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    for ((name, shape), (_, v)) in shapes.iter().zip(&g.inputs) {
        let ty = g.ty(*v);
        let reader = g.nodes.iter().find(|n| n.inputs.first() == Some(v));
        if ty.sparse {
            let nnz = reader
                .and_then(|n| match n.op.attr("nnz") {
                    Some(netc::ir::Attr::Int(k)) => Some(*k as usize),
                    _ => None,
                })
                .unwrap_or(20);
            let dim = *shape.last().unwrap_or(&1) as u64;
            let rows: usize = shape[..shape.len().saturating_sub(1)].iter().product();
            let indices: Vec<i64> = (0..rows * nnz)
                .map(|i| (netc_runtime::counter::splitmix64(i as u64) % dim.max(1)) as i64)
                .collect();
            let offsets: Vec<i64> = (0..=rows).map(|r| (r * nnz) as i64).collect();
            let values = vec![1.0; rows * nnz];
            let tensor = |data: Storage, len: usize| {
                Tensor::new(&[len], data).expect("the data has the shape's element count")
            };
            out.push((
                format!("{name}.indices"),
                tensor(Storage::I64(indices), rows * nnz),
            ));
            out.push((
                format!("{name}.offsets"),
                tensor(Storage::I64(offsets), rows + 1),
            ));
            out.push((
                format!("{name}.values"),
                tensor(Storage::F32(values), rows * nnz),
            ));
        } else if let Some(conv) = g.nodes.iter().find(|n| {
            matches!(n.op.name, "subm_conv3d" | "sparse_conv3d") && n.inputs.get(1) == Some(v)
        }) {
            out.push((name.clone(), voxel_coords(conv, shape[0])));
        } else if ty.dtype == DType::I64 {
            let table = reader
                .and_then(|n| n.inputs.get(1))
                .and_then(|w| g.ty(*w).shape.first()?.as_known())
                .unwrap_or(2)
                .max(1) as u64;
            let n: usize = shape.iter().product();
            let ids = (0..n)
                .map(|i| (netc_runtime::counter::splitmix64(i as u64) % table) as i64)
                .collect();
            let t = Tensor::new(shape, Storage::I64(ids))
                .expect("the data has the shape's element count");
            out.push((name.clone(), t));
        } else {
            out.extend(random_inputs(&[(name.clone(), shape.clone())]));
        }
    }
    out
}

/// `m` distinct seeded voxel coordinates `[m, 4]` (batch, z, y, x) in
/// random order over the input grid of the sparse conv `conv` (its
/// `in_shape` and `batch`), as spconv's benchmark draws them; capped at
/// the grid's voxel count.
fn voxel_coords(conv: &netc::ir::Node, m: usize) -> Tensor {
    use netc::ir::Attr;
    let grid = match conv.op.attr("in_shape") {
        Some(Attr::Ints(v)) => v.iter().map(|&n| n.max(1) as u64).collect(),
        _ => vec![1],
    };
    let batch = match conv.op.attr("batch") {
        Some(Attr::Dims(d)) => d.first().and_then(|d| d.as_known()).unwrap_or(1).max(1) as u64,
        _ => 1,
    };
    let plane: u64 = grid.iter().product();
    let m = m.min((plane * batch) as usize);
    let mut taken = std::collections::HashSet::with_capacity(m);
    let mut coords = Vec::with_capacity(m * 4);
    let mut k = 0u64;
    while taken.len() < m {
        k += 1;
        let cell = netc_runtime::counter::splitmix64(k) % (plane * batch);
        if !taken.insert(cell) {
            continue;
        }
        let mut rest = cell % plane;
        let mut site = vec![(cell / plane) as i32];
        for d in 0..grid.len() {
            let inner: u64 = grid[d + 1..].iter().product();
            site.push((rest / inner) as i32);
            rest %= inner;
        }
        coords.extend(site);
    }
    Tensor::new(&[m, 1 + grid.len()], Storage::I32(coords))
        .expect("the data has the shape's element count")
}

/// Seeded inputs in [-1, 1) (a fixed linear congruential sequence: the
/// values only need to be ordinary numbers, not statistically good).
pub(super) fn random_inputs(shapes: &[(String, Vec<usize>)]) -> Vec<(String, Tensor)> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    shapes
        .iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let data = (0..n)
                .map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    ((state >> 40) as f32 / (1u64 << 23) as f32) - 1.0
                })
                .collect();
            let t = Tensor::from_f32(shape, data).expect("the data has the shape's element count");
            (name.clone(), t)
        })
        .collect()
}
