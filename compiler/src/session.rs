//! The host API for running a model: compile a graph for the shapes of its
//! inputs, load (or initialise) its weights, and run it as many times as
//! needed. Compilation happens once per [`CompiledModel`]; each run only
//! executes the plan over the same arena.
//!
//! ```no_run
//! use netc::program::Program;
//! use netc::session::CompiledModel;
//! use netc_runtime::Tensor;
//! let (program, _) = Program::load(std::path::Path::new("models/eeg_svm.net"));
//! let graph = netc::elab::elaborate(&program, program.model(None).unwrap(), &[]).unwrap();
//! let x = Tensor::from_f32(&[8, 4, 9, 9], vec![0.0; 8 * 324]).unwrap();
//! let mut model = CompiledModel::new(graph, &[("x", x.shape())], 2).unwrap();
//! model.init_weights(0);
//! let outputs = model.run(&[("x", &x)]).unwrap();
//! ```

use crate::back::jit::Jit;
use crate::back::lower::{lower, Lowered};
use crate::back::BackError;
use crate::ir::{Graph, SymId};
use netc_runtime::plan::{Executor, PlanError};
use netc_runtime::weights::{load_checked, TensorSpec, WeightError};
use netc_runtime::{DType, Initializer, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Why a model cannot be compiled or run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Inputs do not fit the model's input types.
    #[error("{0}")]
    Inputs(String),
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
}

impl CompiledModel {
    /// Compiles `graph` for inputs of the given shapes (by input name),
    /// running on `threads` threads. Weights start at zero; call
    /// [`CompiledModel::load_weights`] or [`CompiledModel::init_weights`].
    pub fn new(
        graph: Graph,
        input_shapes: &[(&str, &[usize])],
        threads: usize,
    ) -> Result<CompiledModel, RunError> {
        let symbols = bind_symbols(&graph, input_shapes)?;
        let mut jit = Jit::new()?;
        let lowered = lower(&graph, &symbols, &mut jit)?;
        let executor = Executor::new(lowered.plan.clone(), threads)?;
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
        Ok(CompiledModel {
            graph,
            lowered,
            executor,
            jit,
            params,
        })
    }

    /// The graph this model runs.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// How many kernels were compiled for this model.
    pub fn kernels_compiled(&self) -> usize {
        self.jit.stats().compilations
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
        Ok(())
    }

    /// Initialises parameters as PyTorch does by default for each layer
    /// (the schemes recorded in the IR), from a seed.
    pub fn init_weights(&mut self, seed: u64) {
        let mut init = Initializer::new(seed);
        self.params = self
            .graph
            .params
            .iter()
            .zip(&self.params)
            .map(|(p, t)| init.tensor(p.ty.dtype, t.shape(), &p.init))
            .collect();
    }

    /// Runs the model on named inputs (f32, of the shapes it was compiled
    /// for) and returns every output by name.
    pub fn run(&mut self, inputs: &[(&str, &Tensor)]) -> Result<Vec<(String, Tensor)>, RunError> {
        let mut slices: Vec<&[f32]> = Vec::with_capacity(self.lowered.inputs.len());
        for name in &self.lowered.inputs {
            let t = inputs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| *t)
                .ok_or_else(|| RunError::Inputs(format!("input `{name}` is not given")))?;
            let data = t.as_f32().ok_or_else(|| {
                RunError::Inputs(format!("input `{name}` is {}, expected f32", t.dtype()))
            })?;
            slices.push(data);
        }
        let params: Vec<&[f32]> = self
            .params
            .iter()
            .map(|t| t.as_f32().unwrap_or(&[]))
            .collect();
        let mut outs: Vec<Vec<f32>> = self
            .lowered
            .outputs
            .iter()
            .map(|(_, n)| vec![0.0; *n])
            .collect();
        let mut out_refs: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
        self.executor.run(&slices, &params, &mut out_refs)?;
        let symbols = self.symbols_from(inputs)?;
        let mut result = Vec::new();
        for ((name, v), data) in self.graph.outputs.iter().zip(outs) {
            let shape: Vec<usize> = self
                .graph
                .ty(*v)
                .shape
                .iter()
                .map(|d| {
                    d.eval(&|s| symbols.get(&s).copied())
                        .as_known()
                        .unwrap_or(0) as usize
                })
                .collect();
            let t = Tensor::from_f32(&shape, data).ok_or_else(|| {
                RunError::Inputs(format!("output `{name}` has an unexpected size"))
            })?;
            result.push((name.clone(), t));
        }
        Ok(result)
    }

    fn symbols_from(&self, inputs: &[(&str, &Tensor)]) -> Result<HashMap<SymId, i64>, RunError> {
        let shapes: Vec<(&str, &[usize])> = inputs.iter().map(|(n, t)| (*n, t.shape())).collect();
        let named = bind_symbols(&self.graph, &shapes)?;
        Ok(named
            .into_iter()
            .filter_map(|(n, v)| self.graph.find_symbol(&n).map(|s| (s, v)))
            .collect())
    }
}

fn known_shape(dims: &[i64]) -> Vec<usize> {
    dims.iter().map(|&d| d.max(0) as usize).collect()
}

/// Binds the graph's input symbols (`N`, ...) from actual input shapes,
/// checking every input's rank and sizes against its declared type.
pub fn bind_symbols(
    g: &Graph,
    shapes: &[(&str, &[usize])],
) -> Result<Vec<(String, i64)>, RunError> {
    let mut values: HashMap<SymId, i64> = HashMap::new();
    for (name, v) in &g.inputs {
        let ty = g.ty(*v);
        let shape = shapes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| *s)
            .ok_or_else(|| RunError::Inputs(format!("input `{name}` is not given")))?;
        let declared = g.type_text(ty);
        if ty.dtype != DType::F32 || ty.sparse {
            return Err(RunError::Inputs(format!(
                "input `{name}` is {declared}; this back end runs dense f32 inputs only"
            )));
        }
        if shape.len() != ty.rank() {
            return Err(RunError::Inputs(format!(
                "input `{name}` has shape {shape:?}, but the model declares {declared}"
            )));
        }
        for (d, &n) in ty.shape.iter().zip(shape) {
            if let ([(s, 1)], 0) = (d.terms(), d.constant()) {
                let prev = *values.entry(*s).or_insert(n as i64);
                if prev != n as i64 {
                    return Err(RunError::Inputs(format!(
                        "size {} is {prev} in one input but {n} in `{name}`",
                        g.sym_name(*s)
                    )));
                }
            }
        }
        let concrete: Option<Vec<i64>> = ty
            .shape
            .iter()
            .map(|d| d.eval(&|s| values.get(&s).copied()).as_known())
            .collect();
        if concrete
            .as_deref()
            .map(|c| c.iter().map(|&x| x as usize).collect::<Vec<_>>())
            != Some(shape.to_vec())
        {
            return Err(RunError::Inputs(format!(
                "input `{name}` has shape {shape:?}, but the model declares {declared}"
            )));
        }
    }
    Ok(values
        .into_iter()
        .map(|(s, v)| (g.sym_name(s), v))
        .collect())
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
        let mut m = CompiledModel::new(g, &[("x", x.shape())], 2).unwrap();
        m.init_weights(0);
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

    #[test]
    fn wrong_inputs_are_named() {
        let g = program("model m() { input x: f32[N, 3]  output y = relu(x) }").unwrap();
        let err = CompiledModel::new(g.clone(), &[("x", &[2, 4])], 1)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("input `x` has shape [2, 4], but the model declares f32[N, 3]"),
            "{err}"
        );
        let err = CompiledModel::new(g, &[], 1).err().unwrap().to_string();
        assert!(err.contains("input `x` is not given"), "{err}");
    }
}
