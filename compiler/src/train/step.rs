//! One compiled training step: the training graph (forward, loss,
//! backward) lowered for one batch size into one plan, with its executor.
//! Outputs (loss, gradients, new buffer values) stay in the arena where
//! they were computed and are read from there: running a step allocates
//! nothing and compiles nothing.

use crate::back::jit::Jit;
use crate::back::lower::contract::runs_channels_last;
use crate::back::lower::{lower_with, Lowered, OutputMode};
use crate::grad::TrainingGraph;
use crate::ir::{Graph, Node, SymId, ValueId};
use crate::options::{CompileOptions, LayoutChoice};
use crate::session::{layer_times, LayerTime, RunError};
use netc_runtime::plan::{Buf, Executor};
use netc_runtime::DType;
use std::collections::HashMap;

/// Runs the training layout pass (`passes::layout::run_training`) on
/// `graph` for the symbol values `bound`: a convolution or gradient goes
/// channels last when, at these sizes and under `options`, the lowering
/// has a channels-last path for it.
pub(crate) fn training_layout(
    graph: &mut Graph,
    bound: &HashMap<SymId, i64>,
    options: &CompileOptions,
) -> crate::passes::layout::LayoutStats {
    let sizes = |g: &Graph, v: ValueId| -> Option<Vec<usize>> {
        g.ty(v)
            .shape
            .iter()
            .map(|d| usize::try_from(d.eval(&|s| bound.get(&s).copied()).as_known()?).ok())
            .collect()
    };
    let ready = |g: &Graph, n: &Node| {
        let operand = |k: usize| n.inputs.get(k).and_then(|v| sizes(g, *v));
        match (sizes(g, n.outputs[0]), operand(0), operand(1)) {
            (Some(out), Some(a), Some(b)) => runs_channels_last(n, (&out, &a, &b), options),
            _ => false,
        }
    };
    crate::passes::layout::run_training(graph, &ready)
}

/// The training plan of one batch shape.
pub struct TrainStep {
    lowered: Lowered,
    /// Declared before `jit`: it holds pointers into the JIT's code.
    executor: Executor,
    jit: Jit,
    input_shapes: Vec<Vec<usize>>,
}

impl TrainStep {
    /// Compiles `tg` for inputs and labels of the given shapes (by name;
    /// the seed input, when the graph has one, is `[2]` and implied).
    /// The inference passes run up to the layout pass; then, with
    /// `layout = auto`, the training layout pass (convolution chains
    /// that run channels last at these sizes, `passes::layout`), then
    /// fusion.
    pub fn compile(
        tg: &TrainingGraph,
        shapes: &[(&str, &[usize])],
        options: CompileOptions,
    ) -> Result<TrainStep, RunError> {
        let channels_last = options.layout == LayoutChoice::Auto;
        let options = CompileOptions {
            layout: LayoutChoice::Nchw,
            ..options
        };
        let mut graph =
            crate::passes::pipeline::optimize(tg.graph.clone(), &options, Some("layout"))
                .map_err(RunError::Inputs)?;
        let bound = bind(&graph, shapes)?;
        if channels_last {
            training_layout(&mut graph, &bound, &options);
        }
        if options.fuse {
            crate::passes::fuse::run(&mut graph, false);
        }
        crate::passes::rewrite::verify(&graph).map_err(RunError::Inputs)?;
        let symbols: Vec<(String, i64)> = bound
            .iter()
            .map(|(s, v)| (graph.sym_name(*s), *v))
            .collect();
        let mut jit = Jit::new()?;
        let lowered = lower_with(&graph, &symbols, options, &mut jit, OutputMode::InPlace)?;
        let executor = Executor::new(lowered.plan.clone(), options.threads)?.inline_when_small();
        let input_shapes = graph
            .inputs
            .iter()
            .map(|(_, v)| {
                graph
                    .ty(*v)
                    .shape
                    .iter()
                    .map(|d| d.eval(&|s| bound.get(&s).copied()).as_known().unwrap_or(0) as usize)
                    .collect()
            })
            .collect();
        Ok(TrainStep {
            lowered,
            executor,
            jit,
            input_shapes,
        })
    }

    /// Input names in the order [`TrainStep::run`] takes them: a sparse
    /// input `q` is three buffers `q.indices`, `q.offsets`, `q.values`
    /// (the plan encoding of `netc_runtime::sparse`).
    pub fn input_names(&self) -> &[String] {
        &self.lowered.inputs
    }

    /// The shape each input must have, in input order.
    pub fn input_shapes(&self) -> &[Vec<usize>] {
        &self.input_shapes
    }

    /// Runs one step: recomputes parameter-derived tensors, then forward,
    /// loss and backward. `inputs` are in [`TrainStep::input_names`] order
    /// (class labels as f32), `params` in the graph's parameter order.
    pub fn run(&mut self, inputs: &[&[f32]], params: &[&[f32]]) -> Result<(), RunError> {
        self.executor.prepare(params)?;
        self.executor.run(inputs, params, &mut [])?;
        Ok(())
    }

    /// Times the step per layer (forward and backward nodes of a layer
    /// share its path; they are told apart by op): `reps` profiled runs
    /// after the caller's warm-up, each layer's median.
    pub fn profile(
        &mut self,
        inputs: &[&[f32]],
        params: &[&[f32]],
        reps: usize,
    ) -> Result<Vec<LayerTime>, RunError> {
        self.executor.prepare(params)?;
        let executor = &mut self.executor;
        layer_times(&self.lowered.labels, reps, |times| {
            executor.run_profiled(inputs, params, &mut [], times)?;
            Ok(())
        })
    }

    /// Output `k` of the last run, in the training graph's output order.
    pub fn output(&self, k: usize) -> &[f32] {
        let n = self.lowered.outputs[k].1;
        match self.lowered.output_bufs[k] {
            Buf::Arena { offset, .. } => &self.executor.arena()[offset..offset + n],
            Buf::Const(c) => &self.executor.constant(c)[..n],
            // `lower_with(.., InPlace)` hands out nothing else.
            _ => &[],
        }
    }

    /// Kernels compiled for this step (constant after compilation).
    pub fn kernels_compiled(&self) -> usize {
        self.jit.stats().compilations
    }

    /// Size of the step's arena in f32 elements (the activation memory of
    /// a training step, gradients included).
    pub fn arena_len(&self) -> usize {
        self.lowered.plan.arena_len
    }
}

/// Binds the input symbols from the given shapes (a sparse input by its
/// logical shape `[..., V]`); the seed input is implied. Inputs may be
/// f32, sparse f32, i32 (voxel coordinates), (labels) i64 or bool (masks,
/// as 0/1 f32 values).
fn bind(g: &Graph, shapes: &[(&str, &[usize])]) -> Result<HashMap<SymId, i64>, RunError> {
    let mut values = HashMap::new();
    for (name, v) in &g.inputs {
        if name == crate::grad::SEED_INPUT {
            continue;
        }
        let ty = g.ty(*v);
        let shape = shapes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| *s)
            .ok_or_else(|| RunError::Inputs(format!("`{name}` is not given")))?;
        if !matches!(ty.dtype, DType::F32 | DType::I64 | DType::I32 | DType::Bool)
            || (ty.sparse && ty.dtype != DType::F32)
        {
            return Err(RunError::Inputs(format!(
                "`{name}` is {}; training runs f32 inputs (dense or sparse), i32 voxel coordinates, i64 class labels and bool masks",
                g.type_text(ty)
            )));
        }
        g.bind_shape(*v, shape, &mut values)
            .map_err(|e| RunError::Inputs(format!("`{name}` {e}")))?;
    }
    Ok(values)
}
