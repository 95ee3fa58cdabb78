//! Lowering a graph to a runtime [`Plan`]: every node becomes kernel calls
//! (or nothing, for views), every stored value gets a buffer, and model
//! outputs are copied out of the arena by an identity kernel at the end.
//!
//! The arena has three regions, in this order:
//! - **transient**: intermediate values, placed by the memory planner with
//!   lifetime-based reuse;
//! - **persistent**: values that depend on parameters and constants only
//!   (folded batch norms, re-laid-out weights). Their nodes are lowered
//!   into the plan's `prepare` steps, which run once per weight change;
//! - **scratch**: per-step working space (im2col panels), shared by all
//!   steps since steps run one after another.
//!
//! Each op family lowers in its own module through [`LowerCx`]; a module's
//! `try_lower` returns `None` for ops it does not own:
//! - [`pointwise`]: elementwise nodes and fused elementwise chains;
//! - [`contract`]: linear, matmul, conv1d and conv2d (GEMM + fused epilogue);
//! - [`norm`]: batch norms (scale and shift folded in prepare steps);
//! - [`group_norm`]: group norms (row steps, a fused relu included);
//! - [`resize`]: nearest-neighbour resizing (row steps);
//! - [`layer_norm`], [`attention`] (with `timestep_embedding`): the
//!   UNet's transformer blocks (row steps);
//! - [`pool`]: max, average and adaptive pooling;
//! - [`data`]: data movement (concat, permute, frame, ...) and `quantize_u8`;
//! - training ops: [`norm_train`] (batch norm with batch statistics and its
//!   backward), [`reduce`] (`sum`, `mean`), [`broadcast`] (`expand`),
//!   [`dropout`] (`dropout_train`), [`pool_grad`] (pooling gradients).
//! - [`loss`]: the losses and their gradients;
//! - [`detect`]: FCOS's training tail (box coder, centerness,
//!   `boolean_mask` with its run-time count, focal, IoU and counted BCE
//!   losses, their gradients; row steps);
//! - [`signal`]: `differential_entropy` and `grid_map`;
//! - [`sparse`]: ops over sparse bag inputs and the DSSM scoring ops (row
//!   steps); a sparse input is three executor inputs;
//! - [`rnn`]: `embedding`, `lstm` and their gradients (row steps);
//! - [`amax`]: `amax` over adjacent dims and its gradient (row steps);
//! - [`voxel`]: the sparse 3D convolutions (a rule-book step per
//!   `rulebook` key, a row step per conv).

pub mod amax;
pub mod attention;
pub mod broadcast;
pub mod contract;
pub mod data;
pub mod detect;
pub mod dropout;
pub mod group_norm;
pub mod layer_norm;
pub mod loss;
pub mod norm;
pub mod norm_train;
#[cfg(test)]
mod oracle;
pub mod pointwise;
pub mod pool;
pub mod pool_grad;
pub mod reduce;
pub mod resize;
pub mod rnn;
mod rows;
pub mod signal;
pub mod sparse;
mod text_grad;
#[cfg(test)]
mod train_oracle;
pub mod voxel;

use super::elementwise::{Bcast, Chain, Domain};
use super::jit::Jit;
use super::BackError;
use crate::ir::{Dim, Graph, Node, SymId, ValueDef, ValueId};
use crate::options::CompileOptions;
use crate::passes::memplan;
use netc_runtime::plan::{Buf, Plan, Step, Work};
use netc_runtime::DType;
use std::collections::{HashMap, HashSet};

/// A graph lowered for fixed symbol values: the plan, and the order in
/// which the executor expects inputs, parameters and outputs.
pub struct Lowered {
    /// The schedule over one arena.
    pub plan: Plan,
    /// Input names, in the executor's input order (a sparse input `q` is
    /// three: `q.indices`, `q.offsets`, `q.values`).
    pub inputs: Vec<String>,
    /// Parameter and buffer paths, in the executor's parameter order.
    pub params: Vec<String>,
    /// Output names with their element counts, in the executor's output order.
    pub outputs: Vec<(String, usize)>,
    /// Where each output is after a run: `Buf::Output(k)` when outputs are
    /// copied out, the value's own arena range (or constant) when they stay
    /// in place ([`OutputMode::InPlace`]).
    pub output_bufs: Vec<Buf>,
    /// Which layer each run step belongs to, parallel to `plan.steps`.
    pub labels: Vec<StepLabel>,
    /// The data-dependent sizes a run computes (the site counts of sparse
    /// convs): each symbol with the arena element that holds its value
    /// as a `u32` bit pattern after a run ([`voxel::counts`]). Buffers are
    /// sized for the symbols' bounds; outputs hold the actual sizes.
    pub counts: Vec<(SymId, usize)>,
}

/// The layer a run step computes part of, for per-layer profiles.
#[derive(Clone, Debug, PartialEq)]
pub struct StepLabel {
    /// The node's layer path (a fused group: its head's), or the output
    /// name for the final output copies.
    pub layer: String,
    /// The op name (`conv2d`, ...), or `output` for an output copy.
    pub op: String,
    /// Which lowered node (or output copy) the step belongs to, counted
    /// in lowering order: steps of one node share it, distinct nodes with
    /// the same path and op do not.
    pub group: usize,
    /// The FLOPs of the node and its fused followers at the bound sizes.
    pub flops: f64,
}

/// The state of one lowering: buffers of lowered values, the steps so far,
/// and the arena regions. Op modules read their operands' buffers and
/// shapes and push steps through it.
pub struct LowerCx<'a> {
    /// The graph being lowered.
    pub g: &'a Graph,
    /// The JIT that compiles (and deduplicates) kernels.
    pub jit: &'a mut Jit,
    /// The compile options.
    pub options: CompileOptions,
    symbols: &'a [(String, i64)],
    transient: HashMap<ValueId, usize>,
    bufs: HashMap<ValueId, Buf>,
    /// Values computed from parameters and constants only.
    derived: HashSet<ValueId>,
    /// Next free element of the persistent region.
    persistent_next: usize,
    /// Start of the scratch region and the largest scratch any step needs.
    scratch_base: usize,
    scratch_len: usize,
    constants: Vec<Vec<f32>>,
    prepare: Vec<Step>,
    steps: Vec<Step>,
    /// The label of every run step so far, parallel to `steps`.
    labels: Vec<StepLabel>,
    /// The label of the steps the node being lowered pushes.
    current: StepLabel,
    /// Weights already re-laid-out in the persistent region ([`sparse`]).
    packed: HashMap<ValueId, Buf>,
    /// Weights already in GEMM panels in the persistent region ([`contract`]).
    gemm_packed: HashMap<ValueId, Buf>,
    /// Whether the node being lowered is parameter-derived.
    in_prepare: bool,
    /// The rule books built so far, by `rulebook` key ([`voxel`]).
    rule_books: HashMap<String, voxel::Book>,
    /// The rule book whose output sites each strided conv's coordinates
    /// value holds ([`voxel`]).
    books_of: HashMap<ValueId, voxel::Book>,
    /// The sparse convs' gradient tables and transposed weights.
    voxel_grad: voxel::grad::GradBufs,
    /// Per fusion head (its first output), the positions in `g.nodes` of
    /// the nodes fused into it, in execution order.
    fused: HashMap<ValueId, pointwise::Fused>,
    /// Whether the plan is a training step (outputs left in place, weights
    /// updated between runs).
    pub training: bool,
}

/// How a plan hands out its outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputMode {
    /// Final steps copy every output into the caller's output buffers.
    Copy,
    /// Outputs stay where they were computed (the memory planner keeps
    /// them live to the end); the caller reads them from the arena. Saves
    /// a pass over every output: the training step's gradients.
    InPlace,
}

/// Lowers the forward pass of `g` with the symbol values `symbols` (every
/// input symbol must be given), compiling kernels into `jit`.
pub fn lower(
    g: &Graph,
    symbols: &[(String, i64)],
    options: CompileOptions,
    jit: &mut Jit,
) -> Result<Lowered, BackError> {
    lower_with(g, symbols, options, jit, OutputMode::Copy)
}

/// [`lower`] with a choice of how outputs are handed out.
pub fn lower_with(
    g: &Graph,
    symbols: &[(String, i64)],
    options: CompileOptions,
    jit: &mut Jit,
    mode: OutputMode,
) -> Result<Lowered, BackError> {
    let nodes: Vec<&Node> = g.nodes.iter().filter(|n| !n.train_only).collect();
    let derived = derived_values(g, &nodes);
    let unstored = pointwise::unstored_links(&nodes);
    let mut skip: HashSet<ValueId> = derived.union(&unstored).copied().collect();
    skip.extend(sparse::persistent_values(&nodes));
    skip.extend(voxel::book_values(&nodes));
    let mem = memplan::plan_skipping(g, symbols, &skip, options.reuse_arena);
    let transient: HashMap<ValueId, usize> = mem
        .placements
        .iter()
        .map(|p| (p.value, (p.offset / 4) as usize))
        .collect();
    let persistent_base = (mem.arena_bytes / 4) as usize;
    let mut cx = LowerCx {
        g,
        jit,
        options,
        symbols,
        transient,
        bufs: HashMap::new(),
        derived,
        persistent_next: persistent_base,
        scratch_base: 0,
        scratch_len: 0,
        constants: Vec::new(),
        prepare: Vec::new(),
        steps: Vec::new(),
        labels: Vec::new(),
        current: StepLabel {
            layer: String::new(),
            op: String::new(),
            group: 0,
            flops: 0.0,
        },
        packed: HashMap::new(),
        gemm_packed: HashMap::new(),
        in_prepare: false,
        rule_books: HashMap::new(),
        books_of: HashMap::new(),
        voxel_grad: Default::default(),
        fused: pointwise::fusion_groups(g),
        training: mode == OutputMode::InPlace,
    };
    let group_flops = group_flops(&cx, &nodes);
    // The persistent region's size is known before any node is lowered,
    // so scratch offsets can be handed out as nodes are lowered.
    let persistent_len: usize = cx
        .derived
        .iter()
        .filter(|v| matches!(g.value(**v).def, ValueDef::Node(..)))
        .map(|v| cx.numel(*v).map(align))
        .chain(nodes.iter().map(|n| norm::persistent_len(&cx, n)))
        .chain([sparse::persistent_len(&cx, &nodes)])
        .chain([voxel::persistent_len(&cx, &nodes)])
        .chain([rnn::persistent_len(&cx, &nodes)])
        .chain([Ok(contract::persistent_len(&cx, &nodes))])
        .sum::<Result<usize, _>>()?;
    cx.scratch_base = persistent_base + persistent_len;
    let inputs = sparse::executor_inputs(g);
    for (i, (_, v)) in inputs.iter().enumerate() {
        cx.bufs.entry(*v).or_insert(Buf::Input(i));
    }
    for (i, p) in g.params.iter().enumerate() {
        cx.bufs.insert(p.value, Buf::Param(i));
    }
    for c in &g.consts {
        let k = cx.constants.len();
        cx.constants
            .push(c.data.iter().map(|&x| x as f32).collect());
        cx.bufs.insert(c.value, Buf::Const(k));
    }
    for &node in &nodes {
        if node.fused_into.is_some() {
            continue;
        }
        cx.jit.set_requester(&node.path, node.op.name);
        cx.current = StepLabel {
            layer: if node.path.is_empty() {
                node.op.name.to_string()
            } else {
                node.path.clone()
            },
            op: node.op.name.to_string(),
            group: cx.current.group + 1,
            flops: node
                .outputs
                .first()
                .and_then(|v| group_flops.get(v))
                .copied()
                .unwrap_or(0.0),
        };
        cx.in_prepare = node.outputs.iter().all(|v| cx.derived.contains(v));
        let lowered = pointwise::try_lower(&mut cx, node)
            .or_else(|| contract::try_lower(&mut cx, node))
            .or_else(|| norm::try_lower(&mut cx, node))
            .or_else(|| group_norm::try_lower(&mut cx, node))
            .or_else(|| resize::try_lower(&mut cx, node))
            .or_else(|| layer_norm::try_lower(&mut cx, node))
            .or_else(|| attention::try_lower(&mut cx, node))
            .or_else(|| norm_train::try_lower(&mut cx, node))
            .or_else(|| reduce::try_lower(&mut cx, node))
            .or_else(|| broadcast::try_lower(&mut cx, node))
            .or_else(|| dropout::try_lower(&mut cx, node))
            .or_else(|| pool_grad::try_lower(&mut cx, node))
            .or_else(|| pool::try_lower(&mut cx, node))
            .or_else(|| data::try_lower(&mut cx, node))
            .or_else(|| detect::try_lower(&mut cx, node))
            .or_else(|| loss::try_lower(&mut cx, node))
            .or_else(|| signal::try_lower(&mut cx, node))
            .or_else(|| sparse::try_lower(&mut cx, node))
            .or_else(|| rnn::try_lower(&mut cx, node))
            .or_else(|| text_grad::try_lower(&mut cx, node))
            .or_else(|| amax::try_lower(&mut cx, node))
            .or_else(|| voxel::try_lower(&mut cx, node))
            .unwrap_or_else(|| Err(cx.unsupported(node)));
        lowered?;
    }
    cx.in_prepare = false;
    let counts = voxel::counts(&cx, &nodes)?;
    let identity = Chain {
        inputs: vec![Bcast::Full],
        domain: Domain::Flat,
        steps: Vec::new(),
    };
    let mut outputs = Vec::new();
    let mut output_bufs = Vec::new();
    for (k, (name, v)) in g.outputs.iter().enumerate() {
        if mode == OutputMode::InPlace {
            let buf = cx.buf(*v)?;
            if !matches!(buf, Buf::Arena { .. } | Buf::Const(_)) {
                return Err(BackError(format!(
                    "output `{name}` is an input or a parameter; it cannot be handed out in place"
                )));
            }
            output_bufs.push(buf);
            outputs.push((name.clone(), cx.numel(*v)?));
            continue;
        }
        cx.jit.set_requester(name, "output");
        cx.current = StepLabel {
            layer: name.clone(),
            op: "output".into(),
            group: cx.current.group + 1,
            flops: 0.0,
        };
        let src = cx.buf(*v)?;
        let n = cx.numel(*v)?;
        if !voxel::copy_output(&mut cx, &counts, *v, src, Buf::Output(k), n) {
            cx.kernel(&identity, vec![src], Buf::Output(k), n)?;
        }
        outputs.push((name.clone(), n));
        output_bufs.push(Buf::Output(k));
    }
    Ok(Lowered {
        plan: Plan {
            arena_len: cx.scratch_base + cx.scratch_len,
            prepare: cx.prepare,
            steps: cx.steps,
            constants: cx.constants,
        },
        inputs: inputs.into_iter().map(|(n, _)| n).collect(),
        params: g.params.iter().map(|p| p.path.clone()).collect(),
        outputs,
        output_bufs,
        labels: cx.labels,
        counts,
    })
}

/// The FLOPs of every lowered node at the bound sizes, by its first
/// output, with each fused group's followers added to its head.
fn group_flops(cx: &LowerCx, nodes: &[&Node]) -> HashMap<ValueId, f64> {
    let mut flops: HashMap<ValueId, f64> = HashMap::new();
    for n in nodes {
        let Some(&first) = n.outputs.first() else {
            continue;
        };
        let own = cx.eval(&n.flops).unwrap_or(0) as f64;
        *flops.entry(n.fused_into.unwrap_or(first)).or_default() += own;
    }
    flops
}

/// Rounds an element count up to 16 f32 (64 bytes, the arena alignment).
fn align(elems: usize) -> usize {
    elems.div_ceil(16) * 16
}

/// Values computed from parameters and constants only (never from an
/// input): their nodes go to the prepare steps.
fn derived_values(g: &Graph, nodes: &[&Node]) -> HashSet<ValueId> {
    let mut derived: HashSet<ValueId> = g
        .params
        .iter()
        .map(|p| p.value)
        .chain(g.consts.iter().map(|c| c.value))
        .collect();
    for n in nodes {
        if !n.inputs.is_empty() && n.inputs.iter().all(|v| derived.contains(v)) {
            derived.extend(n.outputs.iter().copied());
        }
    }
    derived
}

impl<'a> LowerCx<'a> {
    /// The buffer holding an already lowered value.
    pub fn buf(&self, v: ValueId) -> Result<Buf, BackError> {
        self.bufs.get(&v).copied().ok_or_else(|| {
            BackError(format!(
                "value %{} has no buffer (its producer was not lowered)",
                v.0
            ))
        })
    }

    /// The buffers of already lowered values, in order (a node's operands).
    pub fn buf_list(&self, vs: &[ValueId]) -> Result<Vec<Buf>, BackError> {
        vs.iter().map(|&v| self.buf(v)).collect()
    }

    /// Allocates the buffers of a node's results `vs`, in order (see
    /// [`LowerCx::output`]).
    pub fn output_list(&mut self, vs: &[ValueId]) -> Result<Vec<Buf>, BackError> {
        vs.iter().map(|&v| self.output(v)).collect()
    }

    /// Allocates the buffer a node writes for its result `v`: the memory
    /// planner's slot, or a slot of the persistent region for
    /// parameter-derived values.
    pub fn output(&mut self, v: ValueId) -> Result<Buf, BackError> {
        let len = self.numel(v)?;
        let offset = if self.derived.contains(&v) {
            let at = self.persistent_next;
            self.persistent_next += align(len);
            debug_assert!(self.persistent_next <= self.scratch_base);
            at
        } else {
            *self.transient.get(&v).ok_or_else(|| {
                BackError(format!("value %{} has no place in the arena plan", v.0))
            })?
        };
        let buf = Buf::Arena { offset, len };
        self.bufs.insert(v, buf);
        Ok(buf)
    }

    /// Puts `v` in `buf` (a slot of the persistent region the lowering of
    /// its node asked for, [`LowerCx::persistent`]).
    pub fn place(&mut self, v: ValueId, buf: Buf) {
        self.bufs.insert(v, buf);
    }

    /// Makes `v` share the storage of `src` (a view: reshape, dropout at
    /// inference).
    pub fn alias(&mut self, v: ValueId, src: ValueId) -> Result<(), BackError> {
        let b = self.buf(src)?;
        self.bufs.insert(v, b);
        Ok(())
    }

    /// A slot of `len` elements in the persistent region for a
    /// parameter-derived tensor that is not a graph value (a folded batch
    /// norm's scale and shift); the module that asks for it sizes it
    /// before lowering ([`norm::persistent_len`]).
    pub fn persistent(&mut self, len: usize) -> Buf {
        let offset = self.persistent_next;
        self.persistent_next += align(len);
        debug_assert!(self.persistent_next <= self.scratch_base);
        Buf::Arena { offset, len }
    }

    /// Whether `v` is computed from parameters and constants only.
    pub fn is_derived(&self, v: ValueId) -> bool {
        self.derived.contains(&v)
    }

    /// The GEMM panels of weight `w`, if a contraction packed it already.
    pub fn gemm_packed(&self, w: ValueId) -> Option<Buf> {
        self.gemm_packed.get(&w).copied()
    }

    /// Records that `buf` holds the GEMM panels of weight `w`.
    pub fn set_gemm_packed(&mut self, w: ValueId, buf: Buf) {
        self.gemm_packed.insert(w, buf);
    }

    /// Runs `f` with every step it pushes going to the prepare steps.
    pub fn preparing<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> T {
        let was = std::mem::replace(&mut self.in_prepare, true);
        let r = f(self);
        self.in_prepare = was;
        r
    }

    /// A scratch buffer of `len` elements, valid during one step (every
    /// step may reuse the same scratch).
    pub fn scratch(&mut self, len: usize) -> Buf {
        self.scratch_len = self.scratch_len.max(align(len));
        Buf::Arena {
            offset: self.scratch_base,
            len,
        }
    }

    /// The concrete shape of `v` (dense f32 values, the u8 results of
    /// `quantize_u8`, i32 voxel coordinates and bool masks, which the
    /// arena holds as f32 values).
    pub fn shape(&self, v: ValueId) -> Result<Vec<usize>, BackError> {
        let ty = self.g.ty(v);
        if !matches!(ty.dtype, DType::F32 | DType::U8 | DType::I32 | DType::Bool) || ty.sparse {
            return Err(BackError(format!(
                "value %{} is {}; this back end runs dense f32 only",
                v.0,
                self.g.type_text(ty)
            )));
        }
        ty.shape
            .iter()
            .map(|d| {
                let n = self.eval(d).ok_or_else(|| {
                    BackError(format!(
                        "size {} of %{} is not given (pass it with the inputs)",
                        self.g.dim_text(d),
                        v.0
                    ))
                })?;
                usize::try_from(n).map_err(|_| BackError(format!("negative size of %{}", v.0)))
            })
            .collect()
    }

    /// The concrete shape of `v` of any dtype (integer ids and timesteps
    /// included, which the arena holds as f32), if its sizes are bound.
    pub fn sizes(&self, v: ValueId) -> Option<Vec<usize>> {
        self.g
            .ty(v)
            .shape
            .iter()
            .map(|d| self.eval(d).and_then(|n| usize::try_from(n).ok()))
            .collect()
    }

    /// The value of a size expression at the bound symbols, if known.
    fn eval(&self, d: &Dim) -> Option<i64> {
        d.eval(&|s| self.symbol(s, 0)).as_known()
    }

    /// The value of symbol `s`: as given, or for a data-dependent size
    /// (known only when the model runs) its bound, which buffers are
    /// planned for (as the memory planner does).
    fn symbol(&self, s: SymId, depth: usize) -> Option<i64> {
        let name = self.g.sym_name(s);
        if let Some((_, v)) = self.symbols.iter().find(|(n, _)| *n == name) {
            return Some(*v);
        }
        if depth >= 16 {
            return None;
        }
        self.g.symbols[s.0 as usize]
            .kind
            .planned_bound(&|t| self.symbol(t, depth + 1))
    }

    /// The nodes fused into `head` after it, in execution order.
    pub fn followers(&self, head: &Node) -> Vec<&'a Node> {
        self.fused.get(&head.outputs[0]).map_or_else(Vec::new, |f| {
            f.followers.iter().map(|&i| &self.g.nodes[i]).collect()
        })
    }

    /// The nodes fused into `head` before it (its prologue), in execution
    /// order.
    pub fn prologue(&self, head: &Node) -> Vec<&'a Node> {
        self.fused.get(&head.outputs[0]).map_or_else(Vec::new, |f| {
            f.prologue.iter().map(|&i| &self.g.nodes[i]).collect()
        })
    }

    /// The element count of `v`.
    pub fn numel(&self, v: ValueId) -> Result<usize, BackError> {
        Ok(self.shape(v)?.iter().product())
    }

    /// Appends a step (to the prepare steps when the node being lowered is
    /// parameter-derived).
    pub fn push(&mut self, step: Step) {
        if self.in_prepare {
            self.prepare.push(step);
        } else {
            self.steps.push(step);
            self.labels.push(self.current.clone());
        }
    }

    /// Compiles `chain` and appends one call of it over `elems` output
    /// elements.
    pub fn kernel(
        &mut self,
        chain: &Chain,
        inputs: Vec<Buf>,
        output: Buf,
        elems: usize,
    ) -> Result<(), BackError> {
        let id = chain.compile(self.jit)?;
        let units = match chain.domain {
            Domain::Flat => elems as u64,
            Domain::Rows { inner, .. } => elems as u64 / inner,
        };
        let mut extents: Vec<usize> = (0..chain.inputs.len())
            .map(|k| chain.input_len(k, units) as usize)
            .collect();
        extents.push(chain.elements(units) as usize);
        let grain = match chain.domain {
            Domain::Flat => 4096,
            Domain::Rows { inner, .. } => (4096 / inner.max(1)).max(1) as usize,
        };
        self.push(Step {
            work: Work::Kernel {
                kernel: self.jit.code(id)?,
                units: units as usize,
                grain,
            },
            inputs,
            output,
            extents,
        });
        Ok(())
    }

    /// The error for a node no module lowers.
    pub fn unsupported(&self, node: &Node) -> BackError {
        BackError(format!(
            "`{}` at {} is not lowered by this back end yet",
            node.op.name,
            if node.path.is_empty() {
                "the model"
            } else {
                &node.path
            }
        ))
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::interp::{self, Array};
    use crate::testing::program;
    use netc_runtime::plan::Executor;

    /// The JIT-compiled plan of an elementwise graph equals the reference
    /// interpreter (itself checked against PyTorch) on 1 and 2 threads.
    #[test]
    fn elementwise_graph_runs_through_jit_kernels_and_the_executor() {
        let g = program(
            "model m() { input x: f32[N, 3, 5]  input r: f32[N, 3, 5]
                         param b: f32[3, 1] = 0.0
                         h = (x * 2.0 + b) |> relu
                         z = maximum(h - r, 0.25) |> leaky_relu(0.1)
                         output y = reshape(z, [-1, 15])
                         output w = abs(-h) }",
        )
        .unwrap();
        let n = 4;
        let x: Vec<f32> = (0..n * 15).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let r: Vec<f32> = (0..n * 15).map(|i| (i as f32 * 0.11).cos()).collect();
        let b = vec![0.5f32, -1.0, 0.25];
        let mut jit = Jit::new().unwrap();
        let lowered = lower(
            &g,
            &[("N".into(), n as i64)],
            CompileOptions::default(),
            &mut jit,
        )
        .unwrap();
        let compiled = jit.stats().compilations;
        let f64s = |v: &[f32]| v.iter().map(|&a| f64::from(a)).collect::<Vec<_>>();
        let params = HashMap::from([("b".to_string(), Array::new(&[3, 1], f64s(&b)))]);
        let want = interp::run(
            &g,
            &[
                ("x", Array::new(&[n, 3, 5], f64s(&x))),
                ("r", Array::new(&[n, 3, 5], f64s(&r))),
            ],
            &params,
        )
        .unwrap();
        for threads in [1, 2] {
            let mut ex = Executor::new(lowered.plan.clone(), threads).unwrap();
            let mut outs: Vec<Vec<f32>> = lowered
                .outputs
                .iter()
                .map(|(_, len)| vec![0.0; *len])
                .collect();
            let mut out_refs: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
            ex.run(&[&x, &r], &[&b], &mut out_refs).unwrap();
            for ((name, got), (wname, w)) in lowered.outputs.iter().zip(&outs).zip(&want) {
                assert_eq!(&name.0, wname);
                for (a, e) in got.iter().zip(&w.data) {
                    assert!(
                        (f64::from(*a) - e).abs() <= 1e-6 * e.abs().max(1.0),
                        "{wname}: {a} vs {e}"
                    );
                }
            }
        }
        // The second lowering of the same graph compiles nothing new.
        lower(
            &g,
            &[("N".into(), n as i64)],
            CompileOptions::default(),
            &mut jit,
        )
        .unwrap();
        assert_eq!(jit.stats().compilations, compiled);
    }

    /// The EEG MLP (flatten, linear through the GEMM plus a bias kernel,
    /// ReLU) equals the reference interpreter.
    #[test]
    fn mlp_runs_through_gemm_and_bias_kernels() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/eeg_mlp.net");
        let (prog, diags) = crate::program::Program::load(&root);
        assert!(diags.is_empty());
        let g = crate::elab::elaborate(&prog, prog.model(None).unwrap(), &[]).unwrap();
        let n = 5;
        let mut init = netc_runtime::Initializer::new(3);
        let params: Vec<netc_runtime::Tensor> = g
            .params
            .iter()
            .map(|p| {
                let shape: Vec<usize> = p.ty.known_dims().unwrap();
                init.tensor(p.ty.dtype, &shape, &p.init)
            })
            .collect();
        let x: Vec<f32> = (0..n * 324).map(|i| (i as f32 * 0.013).sin()).collect();
        let mut jit = Jit::new().unwrap();
        let lowered = lower(
            &g,
            &[("N".into(), n as i64)],
            CompileOptions::default(),
            &mut jit,
        )
        .unwrap();
        let mut y = vec![0.0f32; n * 2];
        let slices: Vec<&[f32]> = params.iter().map(|t| t.as_f32().unwrap()).collect();
        let mut ex = Executor::new(lowered.plan, 2).unwrap();
        ex.prepare(&slices).unwrap();
        ex.run(&[&x], &slices, &mut [&mut y]).unwrap();
        let to64 = |v: &[f32]| v.iter().map(|&a| f64::from(a)).collect::<Vec<_>>();
        let named: HashMap<String, Array> = g
            .params
            .iter()
            .zip(&params)
            .map(|(p, t)| {
                (
                    p.path.clone(),
                    Array::new(t.shape(), to64(t.as_f32().unwrap())),
                )
            })
            .collect();
        let want = interp::run(&g, &[("x", Array::new(&[n, 4, 9, 9], to64(&x)))], &named).unwrap();
        for (a, e) in y.iter().zip(&want[0].1.data) {
            assert!(
                (f64::from(*a) - e).abs() <= 1e-5 * e.abs().max(1.0),
                "{a} vs {e}"
            );
        }
    }

    /// Parameter-only nodes run in the prepare steps (into the persistent
    /// region), and a group marked `fused_into` runs as one kernel whose
    /// inner links are never stored; results equal the interpreter.
    #[test]
    fn derived_values_are_prepared_and_fused_groups_run_as_one_kernel() {
        let mut g = program(
            "model m() { input x: f32[N, 3, 4]
                         param w: f32[3, 1] = 0.0
                         s = w * 2.0 + 1.0
                         output y = (x * s - x) |> relu |> clamp(0.0, 5.0) }",
        )
        .unwrap();
        // Fuse the chain after `x * s`: sub, relu and clamp into the mul.
        let mul = g
            .nodes
            .iter()
            .position(|n| n.op.name == "mul" && n.inputs[0] == g.inputs[0].1)
            .unwrap();
        let head = g.nodes[mul].outputs[0];
        for n in &mut g.nodes[mul + 1..] {
            n.fused_into = Some(head);
        }
        let n = 2;
        let x: Vec<f32> = (0..n * 12).map(|i| (i as f32 * 0.7).sin() * 4.0).collect();
        let w = vec![0.5f32, -1.5, 2.0];
        let mut jit = Jit::new().unwrap();
        let lowered = lower(
            &g,
            &[("N".into(), n as i64)],
            CompileOptions::default(),
            &mut jit,
        )
        .unwrap();
        assert_eq!(
            lowered.plan.prepare.len(),
            2,
            "w * 2.0 and + 1.0 are prepared"
        );
        assert_eq!(
            lowered.plan.steps.len(),
            2,
            "one fused kernel and the output copy"
        );
        // The fused kernel is labelled by its head (mul) and carries the
        // group's FLOPs: mul, sub, relu and clamp, one each per element
        // of 2·3·4.
        let labels: Vec<(&str, &str, f64)> = lowered
            .labels
            .iter()
            .map(|l| (l.layer.as_str(), l.op.as_str(), l.flops))
            .collect();
        assert_eq!(labels, [("mul", "mul", 24.0 * 4.0), ("y", "output", 0.0)]);
        let mut ex = Executor::new(lowered.plan, 2).unwrap();
        let mut y = vec![0.0f32; n * 12];
        assert!(
            ex.run(&[&x], &[&w], &mut [&mut y]).is_err(),
            "run before prepare"
        );
        ex.prepare(&[&w]).unwrap();
        ex.run(&[&x], &[&w], &mut [&mut y]).unwrap();
        let f64s = |v: &[f32]| v.iter().map(|&a| f64::from(a)).collect::<Vec<_>>();
        let params = HashMap::from([("w".to_string(), Array::new(&[3, 1], f64s(&w)))]);
        let want = interp::run(&g, &[("x", Array::new(&[n, 3, 4], f64s(&x)))], &params).unwrap();
        for (a, e) in y.iter().zip(&want[0].1.data) {
            assert!(
                (f64::from(*a) - e).abs() <= 1e-6 * e.abs().max(1.0),
                "{a} vs {e}"
            );
        }
    }

    #[test]
    fn unsupported_nodes_and_missing_sizes_are_named() {
        let g = program("model m() { input x: f32[N, 2, 4, 4, 4]  output y = x |> max_pool3d(2) }")
            .unwrap();
        let mut jit = Jit::new().unwrap();
        let err = lower(&g, &[("N".into(), 2)], CompileOptions::default(), &mut jit)
            .err()
            .unwrap();
        assert!(
            err.0.contains("`max_pool3d` at the model is not lowered"),
            "{err}"
        );
        let g = program("model m() { input x: f32[N, 4]  output y = relu(x) }").unwrap();
        let err = lower(&g, &[], CompileOptions::default(), &mut jit)
            .err()
            .unwrap();
        assert!(err.0.contains("size N of"), "{err}");
    }
}
