//! `netc bench --train` for a model over voxel sets (sparse 3D convs): one
//! step is one batch of point clouds, `--set M=...` active sites drawn as
//! `netc bench` draws them for inference, labels seeded at the shapes the
//! `train` section declares. The random site list is not a point-cloud
//! data set (`netc train`'s input), so the compiled step and the
//! section's optimizer are driven directly: forward, loss, backward and
//! the optimizer update, as `Trainer::step` times them.

use super::bench::{model_inputs, print_train_row, random_inputs, BenchArgs};
use super::Failure;
use netc::bench::{time_calls, BenchConfig};
use netc::grad::{training_graph, SEED_INPUT};
use netc::ir::Graph;
use netc::session::RunError;
use netc::source::SourceMap;
use netc::train::step::TrainStep;
use netc::train::trainer::optimizer_spec;
use netc_runtime::train::optim::Optimizer;
use netc_runtime::{counter, Storage, Tensor};
use std::time::Instant;

/// Whether `g` runs sparse 3D convs (its inputs are voxel sets).
pub(super) fn is_voxel_model(g: &Graph) -> bool {
    g.nodes
        .iter()
        .any(|n| matches!(n.op.name, "subm_conv3d" | "sparse_conv3d"))
}

/// `t`'s values as f32 (coordinates as their values, as a plan takes them).
fn f32_values(t: &Tensor) -> Vec<f32> {
    match t.storage() {
        Storage::F32(v) => v.clone(),
        Storage::I32(v) => v.iter().map(|&x| x as f32).collect(),
        Storage::I64(v) => v.iter().map(|&x| x as f32).collect(),
        _ => Vec::new(),
    }
}

/// Times training steps of voxel model `graph` on inputs of `shapes` and
/// prints one row (batch 1: one batch of point clouds).
pub(super) fn train_row(
    args: &BenchArgs,
    options: netc::options::CompileOptions,
    graph: Graph,
    sources: &SourceMap,
    shapes: &[(String, Vec<usize>)],
    config: BenchConfig,
    first: bool,
) -> Result<(), Failure> {
    let start = Instant::now();
    let tg = training_graph(&graph).map_err(|e| Failure::run(RunError::Gradient(e), sources))?;
    let section = graph
        .train
        .as_ref()
        .ok_or_else(|| Failure::Error(format!("model `{}` has no `train` section", graph.name)))?;
    let spec = optimizer_spec(section).map_err(Failure::error)?;
    let mut tensors = model_inputs(&graph, shapes);
    for (name, v) in &tg.graph.inputs {
        if name == SEED_INPUT || tensors.iter().any(|(n, _)| n == name) {
            continue;
        }
        let shape: Vec<usize> = tg
            .graph
            .ty(*v)
            .shape
            .iter()
            .map(|d| d.as_known().unwrap_or(1).max(0) as usize)
            .collect();
        tensors.extend(random_inputs(&[(name.clone(), shape)]));
    }
    let values: Vec<(String, Vec<f32>, Vec<usize>)> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), f32_values(t), t.shape().to_vec()))
        .collect();
    let refs: Vec<(&str, &[usize])> = values
        .iter()
        .map(|(n, _, s)| (n.as_str(), s.as_slice()))
        .collect();
    let mut step = TrainStep::compile(&tg, &refs, options).map_err(Failure::error)?;
    let ins: Vec<&[f32]> = step
        .input_names()
        .iter()
        .map(|n| {
            values
                .iter()
                .find(|(m, _, _)| m == n)
                .map(|(_, v, _)| v.as_slice())
                .unwrap_or(&[])
        })
        .collect();
    let mut params: Vec<Tensor> = graph
        .params
        .iter()
        .map(|p| {
            let shape: Vec<usize> =
                p.ty.known_shape()
                    .unwrap_or_default()
                    .iter()
                    .map(|&d| d as usize)
                    .collect();
            counter::tensor(0, &p.path, p.ty.dtype, &shape)
        })
        .collect();
    let trained: Vec<usize> = tg.grads.iter().map(|&(pi, _)| pi).collect();
    let lens: Vec<usize> = trained
        .iter()
        .map(|&pi| params[pi].as_f32().map_or(0, <[f32]>::len))
        .collect();
    let mut optimizer = Optimizer::new(spec, &lens);
    let lr = spec.lr();
    let (kernels, arena) = (step.kernels_compiled(), step.arena_len());
    let mut one_step = || -> Result<(), RunError> {
        let ps: Vec<&[f32]> = params.iter().map(|t| t.as_f32().unwrap_or(&[])).collect();
        step.run(&ins, &ps)?;
        let grads: Vec<&[f32]> = tg.grads.iter().map(|&(_, oi)| step.output(oi)).collect();
        let mut slices: Vec<&mut [f32]> = params
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| trained.contains(i))
            .filter_map(|(_, t)| t.as_f32_mut())
            .collect();
        optimizer
            .step(&mut slices, &grads, lr)
            .map_err(|e| RunError::Inputs(e.to_string()))
    };
    one_step().map_err(Failure::error)?;
    let compile_ms = start.elapsed().as_secs_f64() * 1e3;
    let t = time_calls(config, one_step).map_err(Failure::error)?;
    let sizes = (compile_ms, kernels, arena);
    print_train_row(args, &graph.name, (1, options.threads), &t, sizes, first);
    Ok(())
}
