//! The host API for running a model: compile a graph for the shapes of its
//! inputs, load (or initialise) its weights, and run it as many times as
//! needed. Compilation happens once per [`CompiledModel`]; each run only
//! executes the plan over the same arena.
//!
//! ```no_run
//! use netc::options::CompileOptions;
//! use netc::session::{load_model, CompiledModel};
//! use netc_runtime::Tensor;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let graph = load_model(std::path::Path::new("models/eeg_svm.net"), None, &[])?;
//! let x = Tensor::from_f32(&[8, 4, 9, 9], vec![0.0; 8 * 324]).unwrap();
//! let options = CompileOptions { threads: 2, ..Default::default() };
//! let mut model = CompiledModel::new(graph, &[("x", x.shape())], options)?;
//! model.init_weights(0)?;
//! let outputs = model.run(&[("x", &x)])?;
//! # Ok(())
//! # }
//! ```
//!
//! `compiler/examples/run_model.rs` is a complete program.

use crate::back::jit::Jit;
use crate::back::lower::{lower, sparse, Lowered, StepLabel};
use crate::back::BackError;
use crate::diag::render_all;
use crate::elab::{elaborate, Value};
use crate::grad::GradError;
use crate::ir::{Graph, SymId, ValueId};
use crate::options::CompileOptions;
use crate::program::Program;
use netc_runtime::plan::{Executor, PlanError};
use netc_runtime::weights::{load_checked, TensorSpec, WeightError};
use netc_runtime::{DType, Initializer, Storage, Tensor};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// Why a model cannot be loaded, compiled or run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The model file does not parse or elaborate: the rendered
    /// diagnostics (file, line, column, message), or why no model fits.
    #[error("{0}")]
    Source(String),
    /// Inputs do not fit the model's input types.
    #[error("{0}")]
    Inputs(String),
    /// The training graph cannot be built (an op without a backward rule,
    /// a gradient that is not defined); at the op's source position.
    #[error(transparent)]
    Gradient(#[from] GradError),
    /// The back end cannot compile the graph (yet).
    #[error("cannot compile: {0}")]
    Back(#[from] BackError),
    /// The plan cannot run on the given buffers.
    #[error("cannot run: {0}")]
    Plan(#[from] PlanError),
    /// The weight file does not match the model.
    #[error(transparent)]
    Weights(#[from] WeightError),
}

/// A model compiled for fixed input shapes, with its weights.
pub struct CompiledModel {
    graph: Graph,
    lowered: Lowered,
    /// Declared before `jit`: it holds pointers into the JIT's code and is
    /// dropped first.
    executor: Executor,
    jit: Jit,
    params: Vec<Tensor>,
    /// The input shapes the plan was compiled for, in executor order.
    input_shapes: Vec<Vec<usize>>,
    /// The output shapes those inputs give, in executor order (a
    /// data-dependent size, known only after a run, as 0).
    output_shapes: Vec<Vec<usize>>,
    /// The values of the input symbols.
    symbols: HashMap<SymId, i64>,
}

impl CompiledModel {
    /// Compiles `graph` for inputs of the given shapes (by input name;
    /// a sparse input by its logical shape `[..., V]`) with `options`.
    /// Weights start at zero; call [`CompiledModel::load_weights`] or
    /// [`CompiledModel::init_weights`].
    pub fn new(
        graph: Graph,
        input_shapes: &[(&str, &[usize])],
        options: CompileOptions,
    ) -> Result<CompiledModel, RunError> {
        let graph =
            crate::passes::pipeline::optimize(graph, &options, None).map_err(RunError::Inputs)?;
        let bound = bind_symbols(&graph, input_shapes)?;
        let symbols: Vec<(String, i64)> = bound
            .iter()
            .map(|(s, v)| (graph.sym_name(*s), *v))
            .collect();
        let shape_of = |v: ValueId| shape_at(&graph, v, &bound);
        let input_shapes = graph.inputs.iter().map(|(_, v)| shape_of(*v)).collect();
        let mut jit = Jit::new()?;
        let lowered = lower(&graph, &symbols, options, &mut jit)?;
        let output_shapes = graph.outputs.iter().map(|(_, v)| shape_of(*v)).collect();
        let mut executor =
            Executor::new(lowered.plan.clone(), options.threads)?.inline_when_small();
        if options.team {
            executor = executor.with_team();
        }
        let params = graph
            .params
            .iter()
            .map(|p| {
                Tensor::zeros(
                    p.ty.dtype,
                    &known_shape(&p.ty.known_shape().unwrap_or_default()),
                )
            })
            .collect();
        let mut model = CompiledModel {
            graph,
            lowered,
            executor,
            jit,
            params,
            input_shapes,
            output_shapes,
            symbols: bound,
        };
        model.prepare()?;
        Ok(model)
    }

    /// Recomputes the parameter-derived tensors after the weights changed.
    fn prepare(&mut self) -> Result<(), RunError> {
        let params = param_slices(&self.params);
        self.executor.prepare(&params)?;
        Ok(())
    }

    /// The graph this model runs.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// How many kernels were compiled for this model.
    pub fn kernels_compiled(&self) -> usize {
        self.jit.stats().compilations
    }

    /// Size of the executor's arena in f32 elements (intermediates, values
    /// prepared from the weights and scratch).
    pub fn arena_len(&self) -> usize {
        self.executor.arena().len()
    }

    /// The tensors a weight file must hold (parameter paths, types, shapes).
    pub fn weight_specs(&self) -> Vec<TensorSpec> {
        self.graph
            .params
            .iter()
            .zip(&self.params)
            .map(|(p, t)| TensorSpec {
                name: p.path.clone(),
                dtype: p.ty.dtype,
                shape: t.shape().to_vec(),
            })
            .collect()
    }

    /// Loads every parameter and buffer from a safetensors file; any
    /// missing, unexpected or mis-shaped tensor fails the whole load.
    pub fn load_weights(&mut self, path: &Path) -> Result<(), RunError> {
        self.params = load_checked(path, &self.weight_specs())?;
        self.prepare()
    }

    /// Sets every parameter and buffer from tensors computed in memory
    /// (for instance by [`netc_runtime::counter`]), given in
    /// [`CompiledModel::weight_specs`] order. A tensor of another type or
    /// shape fails the whole call and changes nothing.
    pub fn set_weights(&mut self, tensors: Vec<Tensor>) -> Result<(), RunError> {
        let specs = self.weight_specs();
        if tensors.len() != specs.len() {
            return Err(RunError::Inputs(format!(
                "{} weight tensors given, the model has {}",
                tensors.len(),
                specs.len()
            )));
        }
        for (spec, t) in specs.iter().zip(&tensors) {
            if t.dtype() != spec.dtype || t.shape() != spec.shape.as_slice() {
                return Err(RunError::Inputs(format!(
                    "weight `{}` is {}{:?}, expected {spec}",
                    spec.name,
                    t.dtype(),
                    t.shape()
                )));
            }
        }
        self.params = tensors;
        self.prepare()
    }

    /// Initialises parameters as PyTorch does by default for each layer
    /// (the schemes recorded in the IR), from a seed.
    pub fn init_weights(&mut self, seed: u64) -> Result<(), RunError> {
        let mut init = Initializer::new(seed);
        self.params = self
            .graph
            .params
            .iter()
            .zip(&self.params)
            .map(|(p, t)| init.tensor(p.ty.dtype, t.shape(), &p.init))
            .collect();
        self.prepare()
    }

    /// The executor-ordered input buffers for named inputs, checked
    /// against the shapes the model was compiled for. A sparse input `q`
    /// is given as `q.indices`, `q.offsets` and optional `q.values`
    /// (validated, then encoded for the plan: three buffers).
    fn input_slices<'t>(
        &self,
        inputs: &[(&str, &'t Tensor)],
    ) -> Result<Vec<Cow<'t, [f32]>>, RunError> {
        let mut slices: Vec<Cow<'t, [f32]>> = Vec::with_capacity(self.lowered.inputs.len());
        for ((name, v), want) in self.graph.inputs.iter().zip(&self.input_shapes) {
            if self.graph.ty(*v).sparse {
                let csr = sparse::host_buffers(name, want, inputs).map_err(RunError::Inputs)?;
                slices.push(Cow::Owned(csr.indices));
                slices.push(Cow::Owned(csr.offsets));
                slices.push(Cow::Owned(csr.values));
                continue;
            }
            let t = inputs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| *t)
                .ok_or_else(|| RunError::Inputs(format!("input `{name}` is not given")))?;
            if t.shape() != want.as_slice() {
                return Err(RunError::Inputs(format!(
                    "input `{name}` has shape {:?}, but the model was compiled for {want:?}",
                    t.shape()
                )));
            }
            if self.graph.ty(*v).dtype.is_float() {
                let data = t.as_f32().ok_or_else(|| {
                    RunError::Inputs(format!("input `{name}` is {}, expected f32", t.dtype()))
                })?;
                slices.push(Cow::Borrowed(data));
            } else {
                slices.push(Cow::Owned(ids_as_f32(name, t)?));
            }
        }
        Ok(slices)
    }

    /// Zeroed buffers for every output, in executor order.
    fn output_buffers(&self) -> Vec<Vec<f32>> {
        self.lowered
            .outputs
            .iter()
            .map(|(_, n)| vec![0.0; *n])
            .collect()
    }

    /// Runs the model on named inputs (f32, of the shapes it was compiled
    /// for; a sparse input `q` as `q.indices`, `q.offsets` and optional
    /// `q.values`, see `docs/text.md`) and returns every output by name.
    pub fn run(&mut self, inputs: &[(&str, &Tensor)]) -> Result<Vec<(String, Tensor)>, RunError> {
        let bufs = self.input_slices(inputs)?;
        let slices: Vec<&[f32]> = bufs.iter().map(|b| &**b).collect();
        let params = param_slices(&self.params);
        let mut outs = self.output_buffers();
        let mut out_refs: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
        self.executor.run(&slices, &params, &mut out_refs)?;
        let shapes = self.run_shapes();
        let mut result = Vec::with_capacity(outs.len());
        for (((name, v), shape), mut data) in self.graph.outputs.iter().zip(shapes.iter()).zip(outs)
        {
            data.truncate(shape.iter().product());
            // The arena holds every value as f32; a u8 output (`quantize_u8`)
            // holds integers 0..=255 and is handed out as u8, i32 voxel
            // coordinates as i32.
            let t = match self.graph.ty(*v).dtype {
                DType::U8 => {
                    Tensor::new(shape, Storage::U8(data.iter().map(|&x| x as u8).collect()))
                }
                DType::I32 => Tensor::new(
                    shape,
                    Storage::I32(data.iter().map(|&x| x as i32).collect()),
                ),
                _ => Tensor::from_f32(shape, data),
            }
            .ok_or_else(|| RunError::Inputs(format!("output `{name}` has an unexpected size")))?;
            result.push((name.clone(), t));
        }
        Ok(result)
    }

    /// The output shapes of the last run: with data-dependent sizes (the
    /// site counts of sparse convs) read from where the run left them
    /// ([`Lowered::counts`]); otherwise the compiled shapes.
    fn run_shapes(&self) -> Cow<'_, [Vec<usize>]> {
        if self.lowered.counts.is_empty() {
            return Cow::Borrowed(&self.output_shapes);
        }
        let arena = self.executor.arena();
        let mut values = self.symbols.clone();
        for &(s, at) in &self.lowered.counts {
            values.insert(s, i64::from(arena[at].to_bits()));
        }
        let shapes = self
            .graph
            .outputs
            .iter()
            .map(|(_, v)| shape_at(&self.graph, *v, &values))
            .collect();
        Cow::Owned(shapes)
    }

    /// Times the forward pass per layer: one warm-up run, then `reps`
    /// (at least 1) profiled runs. Steps of one lowered node (or fused
    /// group, or output copy) add up to one [`LayerTime`], listed in plan
    /// order with the median over the runs.
    pub fn profile(
        &mut self,
        inputs: &[(&str, &Tensor)],
        reps: usize,
    ) -> Result<Vec<LayerTime>, RunError> {
        let bufs = self.input_slices(inputs)?;
        let slices: Vec<&[f32]> = bufs.iter().map(|b| &**b).collect();
        let params = param_slices(&self.params);
        let mut outs = self.output_buffers();
        let mut out_refs: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
        self.executor.run(&slices, &params, &mut out_refs)?;
        let executor = &mut self.executor;
        layer_times(&self.lowered.labels, reps, |times| {
            executor.run_profiled(&slices, &params, &mut out_refs, times)?;
            Ok(())
        })
    }
}

/// Groups the steps of a plan into layers (by [`StepLabel`]) and times
/// them: `run` executes the plan once, filling one duration per step; it
/// is called `reps` times (at least once) and each layer gets its median.
/// Layers are listed in order of first appearance; distinct nodes with
/// the same path and op share a layer and add their FLOPs.
pub fn layer_times(
    labels: &[StepLabel],
    reps: usize,
    mut run: impl FnMut(&mut [Duration]) -> Result<(), RunError>,
) -> Result<Vec<LayerTime>, RunError> {
    // Step -> layer, layers in order of first appearance; distinct
    // nodes with the same path and op share a layer and add their
    // FLOPs (a node's steps are consecutive and share its FLOPs).
    let mut layers: Vec<LayerTime> = Vec::new();
    let mut index: HashMap<(&str, &str), usize> = HashMap::new();
    let mut layer_of = Vec::with_capacity(labels.len());
    let mut last_group = None;
    for l in labels {
        let at = *index.entry((&l.layer, &l.op)).or_insert_with(|| {
            layers.push(LayerTime {
                layer: l.layer.clone(),
                op: l.op.clone(),
                flops: 0.0,
                median_ms: 0.0,
            });
            layers.len() - 1
        });
        if last_group != Some(l.group) {
            layers[at].flops += l.flops;
            last_group = Some(l.group);
        }
        layer_of.push(at);
    }
    let reps = reps.max(1);
    let mut times = vec![Duration::ZERO; labels.len()];
    // Per run, milliseconds per layer.
    let mut runs: Vec<Vec<f64>> = Vec::with_capacity(reps);
    for _ in 0..reps {
        run(&mut times)?;
        let mut ms = vec![0.0f64; layers.len()];
        for (t, &at) in times.iter().zip(&layer_of) {
            ms[at] += t.as_secs_f64() * 1e3;
        }
        runs.push(ms);
    }
    for (i, layer) in layers.iter_mut().enumerate() {
        let mut ms: Vec<f64> = runs.iter().map(|r| r[i]).collect();
        ms.sort_by(f64::total_cmp);
        layer.median_ms = ms[ms.len() / 2];
    }
    Ok(layers)
}

/// The forward time of one layer (see [`CompiledModel::profile`]).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerTime {
    /// The layer path (a fused group: its head's; an output copy: the
    /// output name).
    pub layer: String,
    /// The op name, or `output` for an output copy.
    pub op: String,
    /// Floating-point operations of the layer at the compiled shapes.
    pub flops: f64,
    /// Median milliseconds per forward pass.
    pub median_ms: f64,
}

/// Parses the `.net` file at `path` (and the files it imports), picks
/// `model` (`None`: the file's only model) and elaborates it with the
/// compile-time arguments `args` (`("classes", Value::Int(10))`).
///
/// Errors carry rendered diagnostics, ready to print.
pub fn load_model(
    path: &Path,
    model: Option<&str>,
    args: &[(String, Value)],
) -> Result<Graph, RunError> {
    let (program, diags) = Program::load(path);
    if !diags.is_empty() {
        return Err(RunError::Source(render_all(&diags, &program.sources)));
    }
    let m = program
        .model(model)
        .map_err(|e| RunError::Source(format!("{}: {e}", path.display())))?;
    elaborate(&program, m, args).map_err(|d| RunError::Source(render_all(&d, &program.sources)))
}

/// The parameters as the executor reads them (non-f32 buffers, such as
/// `num_batches_tracked`, are never read by a plan and pass as empty).
fn param_slices(params: &[Tensor]) -> Vec<&[f32]> {
    params.iter().map(|t| t.as_f32().unwrap_or(&[])).collect()
}

/// The shape of `v` at the symbol values `values` (an unknown size: 0).
fn shape_at(g: &Graph, v: ValueId, values: &HashMap<SymId, i64>) -> Vec<usize> {
    g.ty(v)
        .shape
        .iter()
        .map(|d| {
            d.eval(&|s| values.get(&s).copied())
                .as_known()
                .unwrap_or(0)
                .max(0) as usize
        })
        .collect()
}

fn known_shape(dims: &[i64]) -> Vec<usize> {
    dims.iter().map(|&d| d.max(0) as usize).collect()
}

/// The largest id an integer input may hold: the plan carries ids as f32
/// values (as class labels), exact below 2^24.
pub const MAX_ID: i64 = 1 << 24;

/// An integer input's ids as the f32 values the plan reads (see
/// `netc_runtime::rnn`); refuses a negative id or one of 2^24 or more.
/// Ids past a table are refused by the kernel that reads them.
fn ids_as_f32(name: &str, t: &Tensor) -> Result<Vec<f32>, RunError> {
    let ids: Vec<i64> = match t.storage() {
        Storage::I64(v) => v.clone(),
        Storage::I32(v) => v.iter().map(|&x| i64::from(x)).collect(),
        _ => {
            return Err(RunError::Inputs(format!(
                "input `{name}` is {}, expected integer ids (i64 or i32)",
                t.dtype()
            )))
        }
    };
    ids.iter()
        .enumerate()
        .map(|(i, &id)| {
            if (0..MAX_ID).contains(&id) {
                Ok(id as f32)
            } else {
                Err(RunError::Inputs(format!(
                    "input `{name}` holds id {id} at position {i}; ids must be in 0..2^24"
                )))
            }
        })
        .collect()
}

/// Binds the graph's input symbols (`N`, ...) from actual input shapes,
/// checking every input's rank and sizes against its declared type.
pub fn bind_symbols(
    g: &Graph,
    shapes: &[(&str, &[usize])],
) -> Result<HashMap<SymId, i64>, RunError> {
    let mut values: HashMap<SymId, i64> = HashMap::new();
    for (name, v) in &g.inputs {
        let ty = g.ty(*v);
        let shape = shapes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| *s)
            .ok_or_else(|| RunError::Inputs(format!("input `{name}` is not given")))?;
        if !matches!(ty.dtype, DType::F32 | DType::I64 | DType::I32) {
            return Err(RunError::Inputs(format!(
                "input `{name}` is {}; this back end runs f32 inputs (dense or sparse) and i64/i32 ids",
                g.type_text(ty)
            )));
        }
        g.bind_shape(*v, shape, &mut values)
            .map_err(|e| RunError::Inputs(format!("input `{name}` {e}")))?;
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::program;

    #[test]
    fn compiles_once_and_runs_many_times() {
        let g = program(
            "model m() { input x: f32[N, 3]  param s: f32[3] = 2.0  output y = relu(x * s) - 1.0 }",
        )
        .unwrap();
        let x = Tensor::from_f32(&[2, 3], vec![-1.0, 0.5, 2.0, 3.0, -0.25, 0.0]).unwrap();
        let options = CompileOptions {
            threads: 2,
            ..Default::default()
        };
        let mut m = CompiledModel::new(g, &[("x", x.shape())], options).unwrap();
        m.init_weights(0).unwrap();
        let kernels = m.kernels_compiled();
        for _ in 0..3 {
            let out = m.run(&[("x", &x)]).unwrap();
            assert_eq!(out[0].0, "y");
            assert_eq!(out[0].1.shape(), &[2, 3]);
            assert_eq!(
                out[0].1.as_f32().unwrap(),
                &[-1.0, 0.0, 3.0, 5.0, -1.0, -1.0]
            );
        }
        assert_eq!(m.kernels_compiled(), kernels, "running compiles nothing");
    }

    /// Per-layer times cover every lowered layer once, in plan order, with
    /// FLOPs counted by hand: fc1 is 5·3·(2·4 + 1) = 135, relu 15 (in
    /// fc1's epilogue when fused), fc2 5·2·(2·3 + 1) = 70. Profiling
    /// leaves the results of later runs unchanged.
    #[test]
    fn profile_times_each_layer_once_with_its_flops() {
        let g = program(
            "model m() { input x: f32[N, 4]  output y = x |> fc1: linear(3) |> relu |> fc2: linear(2) }",
        )
        .unwrap();
        let x = Tensor::from_f32(&[5, 4], (0..20).map(|i| i as f32 * 0.1 - 1.0).collect()).unwrap();
        for fuse in [true, false] {
            let options = CompileOptions {
                threads: 2,
                fuse,
                ..Default::default()
            };
            let mut m = CompiledModel::new(g.clone(), &[("x", x.shape())], options).unwrap();
            m.init_weights(1).unwrap();
            let before = m.run(&[("x", &x)]).unwrap();
            let layers = m.profile(&[("x", &x)], 3).unwrap();
            let names: Vec<(&str, &str, f64)> = layers
                .iter()
                .map(|l| (l.layer.as_str(), l.op.as_str(), l.flops))
                .collect();
            let want: Vec<(&str, &str, f64)> = if fuse {
                vec![
                    ("fc1", "linear", 150.0),
                    ("fc2", "linear", 70.0),
                    ("y", "output", 0.0),
                ]
            } else {
                vec![
                    ("fc1", "linear", 135.0),
                    ("relu", "relu", 15.0),
                    ("fc2", "linear", 70.0),
                    ("y", "output", 0.0),
                ]
            };
            assert_eq!(names, want, "fuse {fuse}");
            assert!(layers.iter().all(|l| l.median_ms >= 0.0));
            assert_eq!(m.run(&[("x", &x)]).unwrap(), before);
        }
    }

    #[test]
    fn set_weights_checks_every_shape_and_changes_nothing_on_error() {
        let g =
            program("model m() { input x: f32[N, 2]  param s: f32[2] = 1.0  output y = x * s }")
                .unwrap();
        let mut m = CompiledModel::new(g, &[("x", &[1, 2])], CompileOptions::default()).unwrap();
        let x = Tensor::from_f32(&[1, 2], vec![1.0, 2.0]).unwrap();
        let bad = vec![Tensor::from_f32(&[3], vec![1.0; 3]).unwrap()];
        let err = m.set_weights(bad).err().unwrap().to_string();
        assert!(
            err.contains("weight `s` is f32[3], expected s f32[2]"),
            "{err}"
        );
        let good = vec![Tensor::from_f32(&[2], vec![3.0, -1.0]).unwrap()];
        m.set_weights(good).unwrap();
        let y = m.run(&[("x", &x)]).unwrap();
        assert_eq!(y[0].1.as_f32().unwrap(), &[3.0, -2.0]);
    }

    #[test]
    fn inputs_of_another_shape_than_compiled_are_refused() {
        let g = program("model m() { input x: f32[N, 3]  output y = relu(x) }").unwrap();
        let mut m = CompiledModel::new(g, &[("x", &[2, 3])], CompileOptions::default()).unwrap();
        let x = Tensor::from_f32(&[4, 3], vec![1.0; 12]).unwrap();
        let err = m.run(&[("x", &x)]).err().unwrap().to_string();
        assert!(
            err.contains("input `x` has shape [4, 3], but the model was compiled for [2, 3]"),
            "{err}"
        );
    }

    #[test]
    fn wrong_inputs_are_named() {
        let g = program("model m() { input x: f32[N, 3]  output y = relu(x) }").unwrap();
        let err = CompiledModel::new(g.clone(), &[("x", &[2, 4])], CompileOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("input `x` has shape [2, 4], expected f32[N, 3]"),
            "{err}"
        );
        let err = CompiledModel::new(g, &[], CompileOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("input `x` is not given"), "{err}");
    }
}
