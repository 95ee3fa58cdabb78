//! Reverse-mode automatic differentiation on the graph IR.
//!
//! [`training_graph`] turns a model with a `train` section into one graph
//! that computes, for one batch, the loss, the model outputs, the gradient
//! of the loss with respect to every trained parameter, and the new values
//! of state buffers (batch-norm running statistics). The result is an
//! ordinary graph: it goes through the same passes, lowering and runtime as
//! an inference graph, so the backward pass gets the same kernels, fusion
//! and memory planning.
//!
//! Steps:
//! 1. `train_mode`: ops whose training semantics differ are replaced
//!    (`batch_norm` → `batch_norm_train`, `dropout` → `dropout_train`),
//!    and the loss nodes become ordinary nodes.
//! 2. `reverse`: a sweep over the nodes in reverse order calls each
//!    op's backward rule ([`rules`]), which emits gradient nodes; the
//!    gradients of a value read several times are summed. Blocks listed in
//!    the `train` section's `recompute` are recomputed just before their
//!    backward instead of keeping their activations alive.
//!
//! The gradient ops the rules emit are listed in `docs/training.md`.

mod cx;
mod reverse;
pub mod rules;
mod train_mode;

pub use cx::GradCx;

use crate::diag::Diagnostic;
use crate::ir::{Graph, ValueId};
use crate::source::Span;

/// An error building the training graph: an op without a backward rule,
/// a model without a `train` section, or a malformed operand.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct GradError {
    /// What went wrong.
    pub message: String,
    /// Where in the source the op being differentiated was written, when
    /// the error is about one op.
    pub span: Option<Span>,
    /// What the user can do about it, when more specific than the default.
    pub hint: Option<String>,
}

impl GradError {
    /// An error about the model as a whole (no source position).
    pub fn new(message: impl Into<String>) -> GradError {
        GradError {
            message: message.into(),
            span: None,
            hint: None,
        }
    }

    /// The error as a diagnostic at the op's source position (`None` for
    /// an error about the model as a whole).
    pub fn diagnostic(&self) -> Option<Diagnostic> {
        let hint = self.hint.clone().unwrap_or_else(|| {
            "training differentiates the loss through this op back to every trained parameter"
                .into()
        });
        Some(
            Diagnostic::new(self.span?, self.message.clone())
                .label("differentiated here")
                .hint(hint),
        )
    }
}

/// Name of the plan input carrying the step's random seed (dropout masks):
/// `f32[2]` holding the bit patterns of the low and high 32 bits of a u64.
pub const SEED_INPUT: &str = "__seed";

/// Prefix of the outputs holding parameter gradients (`grad:conv1.weight`).
pub const GRAD_PREFIX: &str = "grad:";

/// Prefix of the outputs holding new buffer values (`state:norm.running_mean`).
pub const STATE_PREFIX: &str = "state:";

/// A graph computing one training step's loss and gradients.
#[derive(Clone, Debug)]
pub struct TrainingGraph {
    /// The graph. Its inputs are the model's inputs, then the labels, then
    /// [`SEED_INPUT`] when the model has dropout. Its outputs are `loss`,
    /// the model's outputs, one `grad:<path>` per trained parameter that
    /// the loss depends on, and one `state:<path>` per updated buffer.
    pub graph: Graph,
    /// For each gradient output (in output order), the parameter index.
    pub grads: Vec<(usize, usize)>,
    /// For each state output, `(parameter index of the buffer, output index)`.
    pub state: Vec<(usize, usize)>,
    /// Index of the model's first output among the graph's outputs.
    pub first_model_output: usize,
    /// Whether the graph reads [`SEED_INPUT`].
    pub uses_seed: bool,
}

/// Builds the training graph of `g`, which must have a `train` section.
pub fn training_graph(g: &Graph) -> Result<TrainingGraph, GradError> {
    let train = g.train.clone().ok_or_else(|| {
        GradError::new(format!(
            "model `{}` has no `train` section: add `train {} {{ loss = ...; optimizer = ... }}`",
            g.name, g.name
        ))
    })?;
    let mut graph = g.clone();
    let moded = train_mode::rewrite(&mut graph)?;
    for (name, v) in &train.labels {
        graph.inputs.push((name.clone(), *v));
    }
    if moded.uses_seed {
        graph.inputs.push((SEED_INPUT.to_string(), moded.seed));
    }
    let grads = reverse::differentiate(&mut graph, train.loss, &train.recompute)?;
    let model_outputs = std::mem::take(&mut graph.outputs);
    graph.outputs.push(("loss".to_string(), train.loss));
    let first_model_output = graph.outputs.len();
    graph.outputs.extend(model_outputs);
    let mut grad_outputs = Vec::new();
    for (pi, v) in grads {
        grad_outputs.push((pi, graph.outputs.len()));
        let name = format!("{GRAD_PREFIX}{}", graph.params[pi].path);
        graph.outputs.push((name, v));
    }
    let mut state = Vec::new();
    for (pi, v) in moded.state {
        state.push((pi, graph.outputs.len()));
        let name = format!("{STATE_PREFIX}{}", graph.params[pi].path);
        graph.outputs.push((name, v));
    }
    crate::passes::rewrite::verify(&graph).map_err(GradError::new)?;
    Ok(TrainingGraph {
        graph,
        grads: grad_outputs,
        state,
        first_model_output,
        uses_seed: moded.uses_seed,
    })
}

/// The evaluation graph of `g` (which must have a `train` section): the
/// forward pass in inference semantics (running statistics, no dropout)
/// plus the loss, for validation. Outputs: `loss`, then the model's
/// outputs; inputs: the model's, then the labels. It has no gradients.
pub fn evaluation_graph(g: &Graph) -> Result<TrainingGraph, GradError> {
    let train = g
        .train
        .clone()
        .ok_or_else(|| GradError::new(format!("model `{}` has no `train` section", g.name)))?;
    let mut graph = g.clone();
    for n in &mut graph.nodes {
        n.train_only = false;
    }
    for (name, v) in &train.labels {
        graph.inputs.push((name.clone(), *v));
    }
    let model_outputs = std::mem::take(&mut graph.outputs);
    graph.outputs.push(("loss".to_string(), train.loss));
    graph.outputs.extend(model_outputs);
    Ok(TrainingGraph {
        graph,
        grads: Vec::new(),
        state: Vec::new(),
        first_model_output: 1,
        uses_seed: false,
    })
}

/// What the train-mode rewrite produced.
pub(crate) struct Moded {
    /// Buffers the step updates: (parameter index, new value).
    pub state: Vec<(usize, ValueId)>,
    /// The seed input value (meaningful when `uses_seed`).
    pub seed: ValueId,
    /// Whether any node reads the seed.
    pub uses_seed: bool,
}

#[cfg(test)]
mod fd_tests;
#[cfg(test)]
mod tests;
