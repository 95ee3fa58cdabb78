//! Optimizers with PyTorch's exact update rules, in f32 like `torch.optim`
//! on float32 tensors: SGD (momentum, dampening, Nesterov, L2 weight decay),
//! Adam (L2 weight decay added to the gradient, bias correction) and AdamW
//! (decoupled weight decay).
//!
//! [`Optimizer::new`] allocates all state once; [`Optimizer::step`] updates
//! the parameters in place and allocates nothing. Large tensors are split
//! into chunks updated in parallel on the current rayon pool (call `step`
//! inside `ThreadPool::install` to choose the pool); every element's update
//! is independent of the others, so results do not depend on the thread
//! count.
//!
//! Differences from PyTorch, all deliberate:
//! - one step count for the whole optimizer (PyTorch keeps one per
//!   parameter; they agree when every step updates every parameter);
//! - SGD's momentum buffers exist (as zeros) before the first step, and the
//!   first step copies the gradient into them exactly as PyTorch's
//!   `buf = grad.clone()` does;
//! - `lazy = true` (not in PyTorch's dense optimizers): see [`Optimizer::set_row_len`].

use rayon::prelude::*;
use std::borrow::Cow;
use std::fmt;

/// Elements per parallel chunk; tensors up to twice this are updated serially.
const CHUNK: usize = 1 << 14;

/// What can go wrong building, stepping or restoring an optimizer.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OptimError {
    /// The optimizer kind is not one of sgd, adam, adamw.
    #[error("unknown optimizer `{0}`: expected one of sgd, adam, adamw")]
    UnknownKind(String),
    /// A hyper-parameter the kind does not have, or one of the wrong type.
    #[error("optimizer {kind}: {message}")]
    Hyper {
        /// The optimizer kind.
        kind: String,
        /// What is wrong, naming the hyper-parameter.
        message: String,
    },
    /// Parameters, gradients or state do not match the optimizer's layout.
    #[error("optimizer {kind}: {message}")]
    Layout {
        /// The optimizer kind.
        kind: &'static str,
        /// What is wrong, naming the tensor, its index and the lengths.
        message: String,
    },
}

/// A hyper-parameter value as the compiler's `train` section gives it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Hyper {
    /// A number.
    Float(f64),
    /// A flag.
    Bool(bool),
}

/// SGD's hyper-parameters (PyTorch's `torch.optim.SGD`, `maximize = false`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdSpec {
    /// Base learning rate (schedules scale it; `step` takes the rate to use).
    pub lr: f64,
    /// Momentum factor; 0 keeps no state.
    pub momentum: f64,
    /// Dampening of the gradient added to the momentum buffer.
    pub dampening: f64,
    /// Nesterov momentum (needs momentum > 0 and dampening = 0).
    pub nesterov: bool,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// Skip rows whose gradient is entirely zero (see [`Optimizer::set_row_len`]).
    pub lazy: bool,
}

/// Adam's and AdamW's hyper-parameters (`amsgrad = false`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamSpec {
    /// Base learning rate.
    pub lr: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Adam: L2 penalty added to the gradient; AdamW: decoupled decay.
    pub weight_decay: f64,
    /// Skip rows whose gradient is entirely zero (see [`Optimizer::set_row_len`]).
    pub lazy: bool,
}

/// An optimizer and its hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimizerSpec {
    /// `torch.optim.SGD`.
    Sgd(SgdSpec),
    /// `torch.optim.Adam`.
    Adam(AdamSpec),
    /// `torch.optim.AdamW`.
    AdamW(AdamSpec),
}

impl OptimizerSpec {
    /// Builds a spec from the kind (`sgd`, `adam`, `adamw`) and named
    /// hyper-parameters, with the names and defaults of
    /// `compiler/src/ops/train.rs` (PyTorch's defaults):
    /// sgd: `lr` (required), `momentum` 0, `dampening` 0, `nesterov` false,
    /// `weight_decay` 0, `lazy` false; adam / adamw: `lr` 1e-3, `beta1` 0.9,
    /// `beta2` 0.999, `eps` 1e-8, `weight_decay` 0 (adamw 0.01), `lazy` false.
    /// Unknown kinds or names, a flag given a number (or the reverse), a
    /// negative or non-finite value and Nesterov without momentum are errors.
    pub fn from_params(kind: &str, params: &[(&str, Hyper)]) -> Result<Self, OptimError> {
        let err = |message: String| OptimError::Hyper {
            kind: kind.to_string(),
            message,
        };
        let names: &[&str] = match kind {
            "sgd" => &[
                "lr",
                "momentum",
                "dampening",
                "nesterov",
                "weight_decay",
                "lazy",
            ],
            "adam" | "adamw" => &["lr", "beta1", "beta2", "eps", "weight_decay", "lazy"],
            _ => return Err(OptimError::UnknownKind(kind.to_string())),
        };
        for (i, (name, _)) in params.iter().enumerate() {
            if !names.contains(name) {
                return Err(err(format!(
                    "unknown hyper-parameter `{name}`; expected one of {}",
                    names.join(", ")
                )));
            }
            if params[..i].iter().any(|(n, _)| n == name) {
                return Err(err(format!("hyper-parameter `{name}` given twice")));
            }
        }
        let get = |name: &str| params.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        let float = |name: &str, default: Option<f64>| -> Result<f64, OptimError> {
            match get(name) {
                Some(Hyper::Float(v)) if v.is_finite() && v >= 0.0 => Ok(v),
                Some(Hyper::Float(v)) => Err(err(format!(
                    "`{name}` must be finite and non-negative, got {v}"
                ))),
                Some(Hyper::Bool(b)) => Err(err(format!("`{name}` is a number, got {b}"))),
                None => default.ok_or_else(|| err(format!("`{name}` is required"))),
            }
        };
        let flag = |name: &str| -> Result<bool, OptimError> {
            match get(name) {
                Some(Hyper::Bool(b)) => Ok(b),
                Some(Hyper::Float(v)) => Err(err(format!("`{name}` is a flag, got {v}"))),
                None => Ok(false),
            }
        };
        if kind == "sgd" {
            let s = SgdSpec {
                lr: float("lr", None)?,
                momentum: float("momentum", Some(0.0))?,
                dampening: float("dampening", Some(0.0))?,
                nesterov: flag("nesterov")?,
                weight_decay: float("weight_decay", Some(0.0))?,
                lazy: flag("lazy")?,
            };
            if s.nesterov && (s.momentum == 0.0 || s.dampening != 0.0) {
                return Err(err(
                    "Nesterov momentum needs momentum > 0 and dampening = 0".into(),
                ));
            }
            return Ok(OptimizerSpec::Sgd(s));
        }
        let a = AdamSpec {
            lr: float("lr", Some(1e-3))?,
            beta1: float("beta1", Some(0.9))?,
            beta2: float("beta2", Some(0.999))?,
            eps: float("eps", Some(1e-8))?,
            weight_decay: float(
                "weight_decay",
                Some(if kind == "adamw" { 1e-2 } else { 0.0 }),
            )?,
            lazy: flag("lazy")?,
        };
        for (name, v) in [("beta1", a.beta1), ("beta2", a.beta2)] {
            if v >= 1.0 {
                return Err(err(format!("`{name}` must be below 1, got {v}")));
            }
        }
        Ok(if kind == "adam" {
            OptimizerSpec::Adam(a)
        } else {
            OptimizerSpec::AdamW(a)
        })
    }

    /// `sgd`, `adam` or `adamw`.
    pub fn kind(&self) -> &'static str {
        match self {
            OptimizerSpec::Sgd(_) => "sgd",
            OptimizerSpec::Adam(_) => "adam",
            OptimizerSpec::AdamW(_) => "adamw",
        }
    }

    /// The base learning rate (what a schedule scales).
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerSpec::Sgd(s) => s.lr,
            OptimizerSpec::Adam(a) | OptimizerSpec::AdamW(a) => a.lr,
        }
    }

    /// Whether rows with an all-zero gradient are skipped.
    pub fn lazy(&self) -> bool {
        match self {
            OptimizerSpec::Sgd(s) => s.lazy,
            OptimizerSpec::Adam(a) | OptimizerSpec::AdamW(a) => a.lazy,
        }
    }

    /// The names of the state tensors kept per parameter, in the order of
    /// [`Optimizer::state_tensors`]: `momentum_buffer` for SGD with
    /// momentum, none for plain SGD, `exp_avg` and `exp_avg_sq` for Adam(W).
    pub fn state_names(&self) -> &'static [&'static str] {
        match self {
            OptimizerSpec::Sgd(s) if s.momentum != 0.0 => &["momentum_buffer"],
            OptimizerSpec::Sgd(_) => &[],
            OptimizerSpec::Adam(_) | OptimizerSpec::AdamW(_) => &["exp_avg", "exp_avg_sq"],
        }
    }
}

/// One state tensor of one parameter, as saved in a checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct StateTensor<'a> {
    /// `momentum_buffer`, `exp_avg` or `exp_avg_sq`.
    pub suffix: &'a str,
    /// Index of the parameter (in the order given to [`Optimizer::new`]).
    pub param: usize,
    /// The values, one per parameter element, in the parameter's file
    /// layout (see [`Optimizer::set_stored_transposed`]).
    pub data: Cow<'a, [f32]>,
}

/// An optimizer with its state for a fixed list of parameter tensors.
pub struct Optimizer {
    spec: OptimizerSpec,
    lens: Vec<usize>,
    row_lens: Vec<usize>,
    /// Per parameter: `Some((rows, cols))` when it is stored as the
    /// transpose of its `[rows, cols]` file layout.
    transposed: Vec<Option<(usize, usize)>>,
    /// `state[k][i]`: state tensor `spec.state_names()[k]` of parameter `i`.
    state: Vec<Vec<Vec<f32>>>,
    steps: u64,
}

impl fmt::Debug for Optimizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Optimizer")
            .field("spec", &self.spec)
            .field("lens", &self.lens)
            .field("steps", &self.steps)
            .finish()
    }
}

impl Optimizer {
    /// An optimizer for parameters of `param_lens` elements each, with all
    /// its state allocated (zeros) and a step count of 0. Every parameter is
    /// one row until [`Optimizer::set_row_len`] says otherwise.
    pub fn new(spec: OptimizerSpec, param_lens: &[usize]) -> Optimizer {
        let state = spec
            .state_names()
            .iter()
            .map(|_| param_lens.iter().map(|&n| vec![0.0; n]).collect())
            .collect();
        Optimizer {
            spec,
            lens: param_lens.to_vec(),
            row_lens: param_lens.to_vec(),
            transposed: vec![None; param_lens.len()],
            state,
            steps: 0,
        }
    }

    /// Forgets every step taken: zeroes the state in place and sets the
    /// step count to 0, as a fresh optimizer of the same shape would be.
    pub fn reset(&mut self) {
        for buffers in &mut self.state {
            for b in buffers.iter_mut() {
                b.fill(0.0);
            }
        }
        self.steps = 0;
    }

    /// The hyper-parameters.
    pub fn spec(&self) -> &OptimizerSpec {
        &self.spec
    }

    /// The element count of each parameter.
    pub fn param_lens(&self) -> &[usize] {
        &self.lens
    }

    /// Steps taken so far (Adam's bias correction uses it).
    pub fn step_count(&self) -> u64 {
        self.steps
    }

    /// Declares parameter `param` as rows of `row_len` elements (e.g. an
    /// embedding table `[vocab, dim]` has rows of `dim`). It matters only
    /// when the spec is lazy: a row whose gradient is entirely zero is then
    /// left alone — parameter values and state of that row unchanged, no
    /// weight decay — like TensorFlow's LazyAdam. Bias correction still uses
    /// the optimizer's global step count, and an SGD momentum row first
    /// touched after step 1 starts from a zero buffer (identical to
    /// PyTorch's copy of the gradient when dampening is 0). By default a
    /// parameter is one row, so a lazy optimizer skips a parameter whose
    /// whole gradient is zero.
    pub fn set_row_len(&mut self, param: usize, row_len: usize) -> Result<(), OptimError> {
        let len = *self.lens.get(param).ok_or_else(|| {
            self.layout(format!(
                "no parameter {param} (the optimizer has {})",
                self.lens.len()
            ))
        })?;
        if row_len == 0 || len % row_len != 0 {
            return Err(self.layout(format!(
                "row length {row_len} does not divide parameter {param}'s {len} elements"
            )));
        }
        self.row_lens[param] = row_len;
        Ok(())
    }

    /// Declares parameter `param` (and so its gradient and state) as stored
    /// transposed: the parameter is `[rows, cols]` in a file (a checkpoint)
    /// and `[cols, rows]` as given to [`Optimizer::step`]. The update is
    /// elementwise, so only [`Optimizer::state_tensors`] and
    /// [`Optimizer::load_state`] care: they speak the file layout.
    pub fn set_stored_transposed(
        &mut self,
        param: usize,
        rows: usize,
        cols: usize,
    ) -> Result<(), OptimError> {
        let len = *self.lens.get(param).ok_or_else(|| {
            self.layout(format!(
                "no parameter {param} (the optimizer has {})",
                self.lens.len()
            ))
        })?;
        if rows.checked_mul(cols) != Some(len) {
            return Err(self.layout(format!(
                "[{rows}, {cols}] is not parameter {param}'s {len} elements"
            )));
        }
        self.transposed[param] = Some((rows, cols));
        Ok(())
    }

    fn layout(&self, message: String) -> OptimError {
        OptimError::Layout {
            kind: self.spec.kind(),
            message,
        }
    }

    /// One update of every parameter in place with learning rate `lr`
    /// (the schedule's rate for this epoch), PyTorch's rules in f32. The
    /// parameter and gradient lists must match the lengths given to
    /// [`Optimizer::new`]; nothing is updated otherwise. Allocates nothing.
    pub fn step(
        &mut self,
        params: &mut [&mut [f32]],
        grads: &[&[f32]],
        lr: f64,
    ) -> Result<(), OptimError> {
        if !lr.is_finite() || lr < 0.0 {
            return Err(self.layout(format!(
                "learning rate must be finite and non-negative, got {lr}"
            )));
        }
        for (what, got) in [("parameters", params.len()), ("gradients", grads.len())] {
            if got != self.lens.len() {
                return Err(self.layout(format!(
                    "{got} {what} given, the optimizer was built for {}",
                    self.lens.len()
                )));
            }
        }
        for (i, &n) in self.lens.iter().enumerate() {
            for (what, got) in [("parameter", params[i].len()), ("gradient", grads[i].len())] {
                if got != n {
                    return Err(self.layout(format!(
                        "{what} {i} has {got} elements, the optimizer was built for {n}"
                    )));
                }
            }
        }
        self.steps += 1;
        let lazy = self.spec.lazy();
        match self.spec {
            OptimizerSpec::Sgd(s) => {
                let k = SgdConsts {
                    lr: lr as f32,
                    wd: s.weight_decay as f32,
                    momentum: s.momentum as f32,
                    damp: (1.0 - s.dampening) as f32,
                    nesterov: s.nesterov,
                    first: self.steps == 1,
                };
                for i in 0..self.lens.len() {
                    let row = if lazy { self.row_lens[i] } else { 0 };
                    let (p, g) = (&mut *params[i], grads[i]);
                    match self.state.first_mut() {
                        Some(bufs) => sgd_momentum(p, g, &mut bufs[i], row, &k),
                        None => sgd_plain(p, g, row, &k),
                    }
                }
            }
            OptimizerSpec::Adam(a) | OptimizerSpec::AdamW(a) => {
                let decoupled = matches!(self.spec, OptimizerSpec::AdamW(_));
                let t = self.steps as f64;
                let bc1 = 1.0 - a.beta1.powf(t);
                let bc2 = 1.0 - a.beta2.powf(t);
                let k = AdamConsts {
                    decay: (1.0 - lr * a.weight_decay) as f32,
                    decoupled: decoupled && a.weight_decay != 0.0,
                    l2: if decoupled {
                        0.0
                    } else {
                        a.weight_decay as f32
                    },
                    w1: (1.0 - a.beta1) as f32,
                    beta2: a.beta2 as f32,
                    w2: (1.0 - a.beta2) as f32,
                    bc2_sqrt: bc2.sqrt() as f32,
                    eps: a.eps as f32,
                    neg_step: (-(lr / bc1)) as f32,
                };
                let (ms, vs) = self.state.split_at_mut(1);
                for i in 0..self.lens.len() {
                    let row = if lazy { self.row_lens[i] } else { 0 };
                    adam(
                        &mut *params[i],
                        grads[i],
                        &mut ms[0][i],
                        &mut vs[0][i],
                        row,
                        &k,
                    );
                }
            }
        }
        Ok(())
    }

    /// The state tensors, parameter by parameter, in the order of
    /// [`OptimizerSpec::state_names`] within a parameter, each in its
    /// parameter's file layout (a copy for a parameter stored transposed).
    /// Save them with [`Optimizer::step_count`].
    pub fn state_tensors(&self) -> Vec<StateTensor<'_>> {
        let names = self.spec.state_names();
        let mut out = Vec::with_capacity(names.len() * self.lens.len());
        for i in 0..self.lens.len() {
            for (k, name) in names.iter().enumerate() {
                let data = &self.state[k][i];
                let data = match self.transposed[i] {
                    Some((rows, cols)) => Cow::Owned(transpose(data, cols, rows)),
                    None => Cow::Borrowed(&data[..]),
                };
                out.push(StateTensor {
                    suffix: name,
                    param: i,
                    data,
                });
            }
        }
        out
    }

    /// Restores the step count and every state tensor (as returned by
    /// [`Optimizer::state_tensors`], in any order). A missing, duplicated,
    /// unknown or mis-sized tensor is an error naming it, and then nothing
    /// is changed.
    pub fn load_state(
        &mut self,
        steps: u64,
        tensors: &[StateTensor<'_>],
    ) -> Result<(), OptimError> {
        let names = self.spec.state_names();
        let mut slot = Vec::with_capacity(tensors.len());
        for t in tensors {
            let k = names.iter().position(|n| *n == t.suffix).ok_or_else(|| {
                self.layout(format!(
                    "unexpected state tensor `{}` of parameter {} (expected {})",
                    t.suffix,
                    t.param,
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ))
            })?;
            let want = *self.lens.get(t.param).ok_or_else(|| {
                self.layout(format!(
                    "state tensor `{}` of parameter {}: the optimizer has {} parameters",
                    t.suffix,
                    t.param,
                    self.lens.len()
                ))
            })?;
            if t.data.len() != want {
                return Err(self.layout(format!(
                    "state tensor `{}` of parameter {} has {} elements, expected {want}",
                    t.suffix,
                    t.param,
                    t.data.len()
                )));
            }
            if slot.contains(&(k, t.param)) {
                return Err(self.layout(format!(
                    "state tensor `{}` of parameter {} given twice",
                    t.suffix, t.param
                )));
            }
            slot.push((k, t.param));
        }
        for i in 0..self.lens.len() {
            for (k, name) in names.iter().enumerate() {
                if !slot.contains(&(k, i)) {
                    return Err(
                        self.layout(format!("missing state tensor `{name}` of parameter {i}"))
                    );
                }
            }
        }
        for (t, &(k, i)) in tensors.iter().zip(&slot) {
            match self.transposed[i] {
                Some((rows, cols)) => {
                    let dst = &mut self.state[k][i];
                    for (r, src) in t.data.chunks_exact(cols).enumerate() {
                        for (c, &x) in src.iter().enumerate() {
                            dst[c * rows + r] = x;
                        }
                    }
                }
                None => self.state[k][i].copy_from_slice(&t.data),
            }
        }
        self.steps = steps;
        Ok(())
    }
}

/// `x` (`[rows, cols]`, row-major) transposed to `[cols, rows]`.
fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    for (r, src) in x.chunks_exact(cols.max(1)).take(rows).enumerate() {
        for (c, &v) in src.iter().enumerate() {
            out[c * rows + r] = v;
        }
    }
    out
}

/// SGD's per-step constants, in f32 as PyTorch casts its scalars.
struct SgdConsts {
    lr: f32,
    wd: f32,
    momentum: f32,
    /// `1 - dampening`.
    damp: f32,
    nesterov: bool,
    /// The first step copies the gradient into the momentum buffer.
    first: bool,
}

/// Adam's per-step constants.
struct AdamConsts {
    /// AdamW's `1 - lr * weight_decay`.
    decay: f32,
    decoupled: bool,
    /// Adam's L2 weight decay (0 for AdamW).
    l2: f32,
    /// `1 - beta1`, the weight of `lerp`.
    w1: f32,
    beta2: f32,
    w2: f32,
    bc2_sqrt: f32,
    eps: f32,
    /// `-lr / (1 - beta1^t)`.
    neg_step: f32,
}

/// Elements per chunk for a parameter of `len` elements whose rows have
/// `row` elements (0: not lazy), or `None` to update it serially.
fn chunk_len(len: usize, row: usize) -> Option<usize> {
    if len <= 2 * CHUNK {
        return None;
    }
    Some(if row == 0 {
        CHUNK
    } else {
        CHUNK.div_ceil(row) * row
    })
}

/// Calls `f(start, end)` for each row to update in `[0, len)`: the whole
/// range when `row` is 0, otherwise every row whose gradient is not all zero.
fn for_rows(g: &[f32], row: usize, mut f: impl FnMut(usize, usize)) {
    if row == 0 {
        f(0, g.len());
        return;
    }
    for (r, gr) in g.chunks(row).enumerate() {
        if gr.iter().any(|&x| x != 0.0) {
            f(r * row, (r + 1) * row);
        }
    }
}

fn sgd_plain(p: &mut [f32], g: &[f32], row: usize, k: &SgdConsts) {
    let run = |p: &mut [f32], g: &[f32]| {
        for_rows(g, row, |a, b| {
            for (p, &g) in p[a..b].iter_mut().zip(&g[a..b]) {
                let g = if k.wd != 0.0 { g + k.wd * *p } else { g };
                *p += -k.lr * g;
            }
        })
    };
    match chunk_len(p.len(), row) {
        None => run(p, g),
        Some(c) => p
            .par_chunks_mut(c)
            .zip(g.par_chunks(c))
            .for_each(|(p, g)| run(p, g)),
    }
}

fn sgd_momentum(p: &mut [f32], g: &[f32], buf: &mut [f32], row: usize, k: &SgdConsts) {
    let run = |p: &mut [f32], g: &[f32], buf: &mut [f32]| {
        for_rows(g, row, |a, b| {
            for ((p, &g), m) in p[a..b].iter_mut().zip(&g[a..b]).zip(&mut buf[a..b]) {
                let g = if k.wd != 0.0 { g + k.wd * *p } else { g };
                *m = if k.first {
                    g
                } else {
                    *m * k.momentum + k.damp * g
                };
                let d = if k.nesterov { g + k.momentum * *m } else { *m };
                *p += -k.lr * d;
            }
        })
    };
    match chunk_len(p.len(), row) {
        None => run(p, g, buf),
        Some(c) => p
            .par_chunks_mut(c)
            .zip(g.par_chunks(c))
            .zip(buf.par_chunks_mut(c))
            .for_each(|((p, g), m)| run(p, g, m)),
    }
}

fn adam(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], row: usize, k: &AdamConsts) {
    let run = |p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
        for_rows(g, row, |a, b| {
            adam_range(&mut p[a..b], &g[a..b], &mut m[a..b], &mut v[a..b], k)
        })
    };
    match chunk_len(p.len(), row) {
        None => run(p, g, m, v),
        Some(c) => p
            .par_chunks_mut(c)
            .zip(g.par_chunks(c))
            .zip(m.par_chunks_mut(c).zip(v.par_chunks_mut(c)))
            .for_each(|((p, g), (m, v))| run(p, g, m, v)),
    }
}

/// Adam's update of one range, with the per-step choices taken once
/// outside the loop so that it vectorises (the same operations in the
/// same order per element, so the same results as a scalar loop).
fn adam_range(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: &AdamConsts) {
    match (k.l2 != 0.0, k.w1 < 0.5) {
        (false, false) => adam_span::<false, false>(p, g, m, v, k),
        (false, true) => adam_span::<false, true>(p, g, m, v, k),
        (true, false) => adam_span::<true, false>(p, g, m, v, k),
        (true, true) => adam_span::<true, true>(p, g, m, v, k),
    }
}

/// [`adam_range`] for one choice: `L2` adds Adam's L2 term to the
/// gradient, `LOW` takes `torch.lerp`'s form for a weight below 0.5 (as
/// ATen does). AdamW's decay multiplies every element, by 1 (exactly the
/// identity) for Adam.
#[inline(always)]
fn adam_span<const L2: bool, const LOW: bool>(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    k: &AdamConsts,
) {
    let decay = if k.decoupled { k.decay } else { 1.0 };
    let (l2, w1, beta2, w2) = (k.l2, k.w1, k.beta2, k.w2);
    let (bc2_sqrt, eps, neg_step) = (k.bc2_sqrt, k.eps, k.neg_step);
    let n = p.len();
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    for i in 0..n {
        let pi = p[i] * decay;
        let gi = if L2 { g[i] + l2 * pi } else { g[i] };
        let mi = if LOW {
            m[i] + w1 * (gi - m[i])
        } else {
            gi - (gi - m[i]) * (1.0 - w1)
        };
        let vi = v[i] * beta2 + w2 * gi * gi;
        let denom = vi.sqrt() / bc2_sqrt + eps;
        m[i] = mi;
        v[i] = vi;
        p[i] = pi + neg_step * (mi / denom);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::fixture::Fixture;

    /// Parses the fixture's `name=value,...` hyper-parameters.
    fn hypers(text: &str) -> Vec<(&str, Hyper)> {
        text.split(',')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                let h = match v {
                    "true" => Hyper::Bool(true),
                    "false" => Hyper::Bool(false),
                    _ => Hyper::Float(v.parse().unwrap()),
                };
                (k, h)
            })
            .collect()
    }

    /// Runs a fixture case (two steps) and compares every parameter with
    /// PyTorch's after each step; returns the optimizer for further checks.
    fn check_case(case: &str, row_len: Option<usize>) -> Optimizer {
        let fx = Fixture::load();
        let spec = OptimizerSpec::from_params(
            fx.meta(&format!("{case}.kind")),
            &hypers(fx.meta(&format!("{case}.hparams"))),
        )
        .unwrap();
        let lrs: Vec<f64> = fx
            .meta(&format!("{case}.lrs"))
            .split(',')
            .map(|x| x.parse().unwrap())
            .collect();
        let n = (0..)
            .take_while(|i| fx.has(&format!("{case}.p{i}.init")))
            .count();
        let mut params: Vec<Vec<f32>> = (0..n)
            .map(|i| fx.f32(&format!("{case}.p{i}.init")))
            .collect();
        let lens: Vec<usize> = params.iter().map(Vec::len).collect();
        let mut opt = Optimizer::new(spec, &lens);
        if let Some(r) = row_len {
            opt.set_row_len(0, r).unwrap();
        }
        for (s, &lr) in lrs.iter().enumerate() {
            let s = s + 1;
            let grads: Vec<Vec<f32>> = (0..n)
                .map(|i| fx.f32(&format!("{case}.p{i}.grad{s}")))
                .collect();
            let mut ps: Vec<&mut [f32]> = params.iter_mut().map(|p| p.as_mut_slice()).collect();
            let gs: Vec<&[f32]> = grads.iter().map(|g| g.as_slice()).collect();
            opt.step(&mut ps, &gs, lr).unwrap();
            for (i, p) in params.iter().enumerate() {
                let want = fx.f32(&format!("{case}.p{i}.after{s}"));
                let worst = p
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(
                    worst <= 1e-5,
                    "{case} step {s} parameter {i}: max |netc - torch| = {worst}"
                );
                let moved = p
                    .iter()
                    .zip(fx.f32(&format!("{case}.p{i}.init")))
                    .any(|(a, b)| *a != b);
                assert!(moved, "{case}: the step changed nothing");
            }
        }
        opt
    }

    #[test]
    fn sgd_momentum_nesterov_weight_decay_matches_pytorch() {
        check_case("sgd_nesterov", None);
    }

    #[test]
    fn sgd_momentum_with_dampening_matches_pytorch_over_two_steps() {
        check_case("sgd_momentum", None);
    }

    #[test]
    fn adam_with_l2_matches_pytorch_over_two_steps_with_changing_lr() {
        check_case("adam", None);
    }

    #[test]
    fn adamw_matches_pytorch_over_two_steps() {
        check_case("adamw", None);
    }

    #[test]
    fn lazy_adam_skips_zero_gradient_rows_and_their_state() {
        // The reference is torch.optim.Adam run on the non-zero rows alone.
        let opt = check_case("adam_lazy", Some(8));
        for t in opt.state_tensors() {
            for r in [1, 4, 7] {
                assert!(
                    t.data[r * 8..(r + 1) * 8].iter().all(|&x| x == 0.0),
                    "{} of skipped row {r} was touched",
                    t.suffix
                );
            }
        }
    }

    #[test]
    fn large_tensors_update_in_parallel_exactly_as_serially() {
        // A parameter past the parallel threshold against the same values
        // updated as many small (serial) parameters.
        let n = 5 * CHUNK + 77;
        let spec = OptimizerSpec::from_params("adamw", &[("lr", Hyper::Float(0.01))]).unwrap();
        let init: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect();
        let grad: Vec<f32> = (0..n)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 30.0)
            .collect();
        let mut big = init.clone();
        let mut one = Optimizer::new(spec, &[n]);
        let lens: Vec<usize> = init.chunks(1000).map(<[f32]>::len).collect();
        let mut small = Optimizer::new(spec, &lens);
        let mut pieces: Vec<Vec<f32>> = init.chunks(1000).map(<[f32]>::to_vec).collect();
        for _ in 0..3 {
            one.step(&mut [big.as_mut_slice()], &[grad.as_slice()], 0.01)
                .unwrap();
            let mut ps: Vec<&mut [f32]> = pieces.iter_mut().map(|p| p.as_mut_slice()).collect();
            let gs: Vec<&[f32]> = grad.chunks(1000).collect();
            small.step(&mut ps, &gs, 0.01).unwrap();
        }
        assert_eq!(big, pieces.concat());
        assert_ne!(big, init);
    }

    #[test]
    fn specs_reject_unknown_kinds_names_and_types() {
        let e = OptimizerSpec::from_params("rmsprop", &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown optimizer `rmsprop`: expected one of sgd, adam, adamw"
        );
        let e = OptimizerSpec::from_params(
            "sgd",
            &[("lr", Hyper::Float(0.1)), ("beta1", Hyper::Float(0.9))],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown hyper-parameter `beta1`"), "{e}");
        let e = OptimizerSpec::from_params("sgd", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`lr` is required"), "{e}");
        let e = OptimizerSpec::from_params("adam", &[("lazy", Hyper::Float(1.0))])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`lazy` is a flag"), "{e}");
        let e = OptimizerSpec::from_params(
            "sgd",
            &[("lr", Hyper::Float(0.1)), ("nesterov", Hyper::Bool(true))],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("Nesterov"), "{e}");
        let OptimizerSpec::AdamW(a) = OptimizerSpec::from_params("adamw", &[]).unwrap() else {
            panic!("adamw")
        };
        assert_eq!((a.lr, a.weight_decay, a.eps), (1e-3, 1e-2, 1e-8));
    }

    #[test]
    fn steps_check_lengths_and_change_nothing_on_error() {
        let spec = OptimizerSpec::from_params("sgd", &[("lr", Hyper::Float(0.1))]).unwrap();
        let mut opt = Optimizer::new(spec, &[3, 2]);
        let mut a = vec![1.0f32; 3];
        let mut b = vec![1.0f32; 2];
        let e = opt
            .step(&mut [&mut a, &mut b], &[&[1.0; 3], &[1.0; 3]], 0.1)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "optimizer sgd: gradient 1 has 3 elements, the optimizer was built for 2"
        );
        let e = opt.step(&mut [&mut a], &[&[1.0; 3]], 0.1).unwrap_err();
        assert!(e.to_string().contains("1 parameters given"), "{e}");
        assert_eq!((a, b, opt.step_count()), (vec![1.0; 3], vec![1.0; 2], 0));
    }

    #[test]
    fn state_round_trips_and_load_names_the_bad_tensor() {
        let spec = OptimizerSpec::from_params("adam", &[]).unwrap();
        let mut opt = Optimizer::new(spec, &[4, 2]);
        let mut p = [vec![0.5f32; 4], vec![-1.0f32; 2]];
        let [p0, p1] = &mut p;
        opt.step(&mut [p0, p1], &[&[0.1, 0.2, 0.3, 0.4], &[1.0, -1.0]], 1e-3)
            .unwrap();
        let saved: Vec<(String, usize, Vec<f32>)> = opt
            .state_tensors()
            .iter()
            .map(|t| (t.suffix.to_string(), t.param, t.data.to_vec()))
            .collect();
        assert_eq!(saved.len(), 4);
        let view: Vec<StateTensor> = saved
            .iter()
            .map(|(s, i, d)| StateTensor {
                suffix: s,
                param: *i,
                data: Cow::Borrowed(d),
            })
            .collect();
        let mut fresh = Optimizer::new(spec, &[4, 2]);
        fresh.load_state(opt.step_count(), &view).unwrap();
        assert_eq!(fresh.step_count(), 1);
        assert_eq!(fresh.state_tensors(), opt.state_tensors());

        let e = fresh.load_state(1, &view[..3]).unwrap_err().to_string();
        assert!(
            e.contains("missing state tensor `exp_avg_sq` of parameter 1"),
            "{e}"
        );
        let mut bad = view.clone();
        bad[2].data = Cow::Borrowed(&[0.0; 3]);
        let e = fresh.load_state(1, &bad).unwrap_err().to_string();
        assert!(
            e.contains("state tensor `exp_avg` of parameter 1 has 3 elements, expected 2"),
            "{e}"
        );
        bad[2].suffix = "momentum_buffer";
        let e = fresh.load_state(1, &bad).unwrap_err().to_string();
        assert!(
            e.contains("unexpected state tensor `momentum_buffer`"),
            "{e}"
        );
    }
}
