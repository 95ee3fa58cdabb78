//! The [`Trainer`]: the cached training loop. Forward, loss, backward and
//! the optimizer update are compiled once per batch shape (the last,
//! partial batch of an epoch gets its own cached step) and reused every
//! step; a step gathers its batch into buffers allocated once, runs the
//! plan, and updates the parameters in place. A voxel model's batch shape
//! includes the batch's site count: its plans are cached per site count,
//! at most [`POINT_PLANS`] at a time.

use super::points::{check_batch as check_point_batch, point_spec};
use super::rows::{rows_layout, RowParam};
use super::slices::{ReadList, WriteList};
use super::step::TrainStep;
use crate::grad::{evaluation_graph, training_graph, TrainingGraph, SEED_INPUT};
use crate::ir::{Attr, Graph, TrainSpec};
use crate::options::CompileOptions;
use crate::session::{LayerTime, RunError};
use netc_runtime::counter::splitmix64;
use netc_runtime::sparse::CsrBuffers;
use netc_runtime::train::data::DataSet;
use netc_runtime::train::optim::{Hyper, Optimizer, OptimizerSpec};
use netc_runtime::train::points::PointSpec;
use netc_runtime::train::schedule::{Field, Schedule};
use netc_runtime::{DType, Initializer, Tensor};
use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Instant;

/// The most plans of a point-cloud model kept at a time (one per batch
/// site count; the cache is emptied when full). Few: at real sizes nearly
/// every batch brings a new count, compiling takes about 0.1 s beside a
/// 0.45 s step at 20000 sites, and each plan holds its arena (188 MB there).
pub const POINT_PLANS: usize = 2;

/// The optimizer a `train` section asks for.
pub fn optimizer_spec(section: &TrainSpec) -> Result<OptimizerSpec, RunError> {
    let hypers: Vec<(&str, Hyper)> = section
        .optimizer
        .values
        .iter()
        .filter_map(|(k, v)| {
            let h = match v {
                Attr::Float(f) => Hyper::Float(*f),
                Attr::Int(i) => Hyper::Float(*i as f64),
                Attr::Bool(b) => Hyper::Bool(*b),
                _ => return None,
            };
            Some((k.as_str(), h))
        })
        .collect();
    OptimizerSpec::from_params(&section.optimizer.kind, &hypers)
        .map_err(|e| RunError::Inputs(e.to_string()))
}

/// How to train.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// Compile options of the training and evaluation plans.
    pub options: CompileOptions,
    /// Samples per step.
    pub batch: usize,
    /// Seeds the initial weights, the shuffling and the dropout masks.
    pub seed: u64,
    /// Overrides the optimizer's learning rate.
    pub lr: Option<f64>,
}

/// What one step (or one pass over a data set) measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Tally {
    /// Sum over samples of the per-sample loss (the batch mean times the
    /// batch size).
    pub loss_sum: f64,
    /// Samples seen.
    pub samples: usize,
    /// Correctly classified samples (classifiers only).
    pub correct: Option<usize>,
}

impl Tally {
    /// Adds another tally.
    pub fn add(&mut self, other: Tally) {
        self.loss_sum += other.loss_sum;
        self.samples += other.samples;
        self.correct = match (self.correct, other.correct) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
    }

    /// Mean loss per sample.
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.samples.max(1) as f64
    }

    /// Accuracy, for classifiers.
    pub fn accuracy(&self) -> Option<f64> {
        self.correct.map(|c| c as f64 / self.samples.max(1) as f64)
    }
}

/// Events the trainer reports while it works.
pub enum Event<'a> {
    /// A plan was compiled (once per batch shape): what, and seconds taken.
    Compiled(&'a str, f64),
    /// A training step finished.
    Step(Tally),
}

/// Which output holds class scores and which data column class indices.
#[derive(Clone, Copy, Debug)]
struct Classifier {
    /// Output index of the logits `[N, C]`.
    logits: usize,
    /// Data column of the i64 label `[N]`.
    label: usize,
    classes: usize,
}

/// The batch buffer of one data column: dense rows (room for the
/// configured batch), a sparse input's CSR buffers or a point cloud's site
/// rows (both refilled per batch, keeping their capacity).
enum Feed {
    Dense(Vec<f32>),
    Bags(CsrBuffers),
    Sites(Vec<f32>),
}

/// A model being trained: parameters, optimizer state, and the compiled
/// steps cached per batch shape.
pub struct Trainer {
    graph: Graph,
    train: TrainingGraph,
    eval: TrainingGraph,
    config: TrainConfig,
    /// Parameters and buffers, the [`RowParam`]s in their stored layout.
    params: Vec<Tensor>,
    /// The bag-layer weights stored in the row layout (`train/rows.rs`).
    row_params: Vec<RowParam>,
    optimizer: Optimizer,
    /// Per optimizer slot: the parameter index and the gradient output.
    slots: Vec<(usize, usize)>,
    schedule: Schedule,
    base_lr: f64,
    /// Plans by (batch, site count; 0 without point clouds).
    steps: HashMap<(usize, usize), TrainStep>,
    evals: HashMap<(usize, usize), TrainStep>,
    /// A voxel model's per-site data columns.
    points: Option<PointSpec>,
    /// Batch buffers, one per data column (model inputs, then labels),
    /// sized for the configured batch.
    columns: Vec<Feed>,
    seed_buf: [f32; 2],
    reads: ReadList,
    params_list: ReadList,
    writes: WriteList,
    grads_list: ReadList,
    classifier: Option<Classifier>,
    /// Epochs completed.
    pub epoch: u64,
}

impl Trainer {
    /// A trainer for `graph` (which needs a `train` section); weights start
    /// from PyTorch's default initialisation seeded with `config.seed`.
    pub fn new(graph: Graph, config: TrainConfig) -> Result<Trainer, RunError> {
        let bad = |e: String| RunError::Inputs(e);
        let mut train = training_graph(&graph)?;
        let mut eval = evaluation_graph(&graph)?;
        let row_params = rows_layout(&mut train, &mut eval);
        let section = graph
            .train
            .clone()
            .ok_or_else(|| bad(format!("model `{}` has no `train` section", graph.name)))?;
        let spec = optimizer_spec(&section)?;
        let schedule = match &section.schedule {
            Some(h) => {
                let fields: Vec<(&str, Field)> = h
                    .values
                    .iter()
                    .filter_map(|(k, v)| match v {
                        Attr::Float(f) => Some((k.as_str(), Field::Number(*f))),
                        Attr::Int(i) => Some((k.as_str(), Field::Number(*i as f64))),
                        Attr::Ints(l) => Some((
                            k.as_str(),
                            Field::List(l.iter().map(|&i| i as f64).collect()),
                        )),
                        _ => None,
                    })
                    .collect();
                Schedule::from_params(&h.kind, &fields).map_err(|e| bad(e.to_string()))?
            }
            None => Schedule::Constant,
        };
        let slots = train.grads.clone();
        let lens: Vec<usize> = slots.iter().map(|(pi, _)| param_len(&graph, *pi)).collect();
        let mut optimizer = Optimizer::new(spec, &lens);
        for (slot, (pi, _)) in slots.iter().enumerate() {
            let stored = row_params.iter().find(|r| r.param == *pi);
            if let Some(r) = stored {
                optimizer
                    .set_stored_transposed(slot, r.rows, r.cols)
                    .map_err(|e| bad(e.to_string()))?;
            }
            let row = stored
                .map(|r| r.row_len)
                .or_else(|| table_row_len(&graph, *pi));
            if let Some(row) = row {
                optimizer
                    .set_row_len(slot, row)
                    .map_err(|e| bad(e.to_string()))?;
            }
        }
        let classifier = classifier(&train);
        let points = match point_spec(&graph) {
            Some((spec, model_batch)) => {
                check_point_batch(model_batch, config.batch)?;
                Some(spec)
            }
            None => None,
        };
        let mut trainer = Trainer {
            points,
            params: Vec::new(),
            row_params,
            optimizer,
            slots,
            schedule,
            base_lr: config.lr.unwrap_or(spec.lr()),
            steps: HashMap::new(),
            evals: HashMap::new(),
            columns: Vec::new(),
            seed_buf: [0.0; 2],
            reads: ReadList::default(),
            params_list: ReadList::default(),
            writes: WriteList::default(),
            grads_list: ReadList::default(),
            classifier,
            epoch: 0,
            graph,
            train,
            eval,
            config,
        };
        trainer.init_weights(trainer.config.seed);
        let batch = trainer.config.batch.max(1);
        trainer.columns = trainer
            .data_columns()
            .iter()
            .map(|(n, sparse)| match sparse {
                Some(_) => Feed::Bags(CsrBuffers {
                    indices: Vec::new(),
                    offsets: Vec::new(),
                    values: Vec::new(),
                }),
                None if trainer.is_site_column(n) => Feed::Sites(Vec::new()),
                None => Feed::Dense(vec![0.0; batch * trainer.row_len(n)]),
            })
            .collect();
        Ok(trainer)
    }

    /// The forward graph being trained.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The training graph (forward, loss and backward).
    pub fn training_graph(&self) -> &TrainingGraph {
        &self.train
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The parameters and buffers, in the graph's parameter order and
    /// layout (PyTorch's): a copy when some weight is stored in the row
    /// layout (`train/rows.rs`).
    pub fn params(&self) -> Cow<'_, [Tensor]> {
        if self.row_params.is_empty() {
            return Cow::Borrowed(&self.params);
        }
        let mut out = self.params.clone();
        for r in &self.row_params {
            let shape = self.file_shape(r.param);
            if let Some(t) = r.to_file(&self.params[r.param], &shape) {
                out[r.param] = t;
            }
        }
        Cow::Owned(out)
    }

    /// The shape of parameter `pi` in the graph (and in a file).
    fn file_shape(&self, pi: usize) -> Vec<usize> {
        self.graph.params[pi]
            .ty
            .known_shape()
            .unwrap_or_default()
            .iter()
            .map(|&d| d.max(0) as usize)
            .collect()
    }

    /// Puts the row-layout weights of `params` (given in the file layout)
    /// in their stored layout.
    fn store(&self, params: &mut [Tensor]) {
        for r in &self.row_params {
            if let Some(t) = r.to_rows(&params[r.param]) {
                params[r.param] = t;
            }
        }
    }

    /// The optimizer and its state.
    pub fn optimizer(&self) -> &Optimizer {
        &self.optimizer
    }

    /// The optimizer, for restoring its state.
    pub fn optimizer_mut(&mut self) -> &mut Optimizer {
        &mut self.optimizer
    }

    /// Paths of the optimizer's parameters, in its slot order.
    pub fn trained_paths(&self) -> Vec<&str> {
        self.slots
            .iter()
            .map(|(pi, _)| self.graph.params[*pi].path.as_str())
            .collect()
    }

    /// Compiled plans so far: (training steps, evaluation steps).
    pub fn compiled(&self) -> (usize, usize) {
        (self.steps.len(), self.evals.len())
    }

    /// Kernels compiled over every cached plan, and their arenas' total
    /// size in f32 elements.
    pub fn compiled_size(&self) -> (usize, usize) {
        self.steps
            .values()
            .chain(self.evals.values())
            .fold((0, 0), |(k, a), s| {
                (k + s.kernels_compiled(), a + s.arena_len())
            })
    }

    /// Re-initialises every parameter (PyTorch's default schemes) from `seed`.
    pub fn init_weights(&mut self, seed: u64) {
        let mut init = Initializer::new(seed);
        self.params = self
            .graph
            .params
            .iter()
            .map(|p| {
                let shape: Vec<usize> =
                    p.ty.known_shape()
                        .unwrap_or_default()
                        .iter()
                        .map(|&d| d.max(0) as usize)
                        .collect();
                init.tensor(p.ty.dtype, &shape, &p.init)
            })
            .collect();
        let mut params = std::mem::take(&mut self.params);
        self.store(&mut params);
        self.params = params;
    }

    /// Starts training over without recompiling anything: fresh weights
    /// from `seed` (which from now on also seeds shuffling and dropout),
    /// a reset optimizer and epoch 0. Cross-validation calls this between
    /// folds so that each fold reuses the cached plans.
    pub fn restart(&mut self, seed: u64) {
        self.config.seed = seed;
        self.init_weights(seed);
        self.optimizer.reset();
        self.epoch = 0;
    }

    /// Replaces every parameter and buffer (graph order and layout),
    /// checking types and shapes; nothing changes on error.
    pub fn set_weights(&mut self, mut tensors: Vec<Tensor>) -> Result<(), RunError> {
        if tensors.len() != self.params.len() {
            return Err(RunError::Inputs(format!(
                "{} weight tensors given, the model has {}",
                tensors.len(),
                self.params.len()
            )));
        }
        for (i, ((p, old), new)) in self
            .graph
            .params
            .iter()
            .zip(&self.params)
            .zip(&tensors)
            .enumerate()
        {
            let shape = self.file_shape(i);
            if old.dtype() != new.dtype() || new.shape() != shape {
                return Err(RunError::Inputs(format!(
                    "weight `{}` is {}{:?}, expected {}{:?}",
                    p.path,
                    new.dtype(),
                    new.shape(),
                    old.dtype(),
                    shape
                )));
            }
        }
        self.store(&mut tensors);
        self.params = tensors;
        Ok(())
    }

    /// Names of the data tensors a step reads: model inputs, then labels.
    pub fn data_names(&self) -> Vec<String> {
        self.train
            .graph
            .inputs
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| n != SEED_INPUT)
            .collect()
    }

    /// The data columns a step reads ([`Trainer::data_names`]), each with
    /// the sample shape `[..., V]` of a sparse input (`None`: dense), as
    /// `DataSet::from_columns` / `DataSet::load_columns` take them.
    pub fn data_columns(&self) -> Vec<(String, Option<Vec<usize>>)> {
        let g = &self.train.graph;
        self.data_names()
            .into_iter()
            .map(|n| {
                let sparse = g.inputs.iter().find(|(m, _)| *m == n).and_then(|(_, v)| {
                    let ty = g.ty(*v);
                    ty.sparse.then(|| {
                        ty.shape[1..]
                            .iter()
                            .map(|d| d.as_known().unwrap_or(0).max(0) as usize)
                            .collect()
                    })
                });
                (n, sparse)
            })
            .collect()
    }

    /// The per-site data columns of a voxel model (load its data with
    /// `DataSet::load_points`); `None` for other models.
    pub fn point_spec(&self) -> Option<&PointSpec> {
        self.points.as_ref()
    }

    /// Whether data tensor `name` holds a point cloud's site rows.
    fn is_site_column(&self, name: &str) -> bool {
        self.points
            .as_ref()
            .is_some_and(|p| p.coords == name || p.features.iter().any(|(n, _)| n == name))
    }

    /// Whether partial batches are skipped: a point-cloud step holds the
    /// model's fixed number of samples.
    pub fn full_batches_only(&self) -> bool {
        self.points.is_some()
    }

    /// Elements of one sample of data tensor `name`.
    fn row_len(&self, name: &str) -> usize {
        let Some((_, v)) = self.train.graph.inputs.iter().find(|(n, _)| n == name) else {
            return 0;
        };
        self.train.graph.ty(*v).shape[1..]
            .iter()
            .map(|d| d.as_known().unwrap_or(0).max(0) as usize)
            .product()
    }

    /// The learning rate of the current epoch.
    pub fn lr(&self) -> f64 {
        self.schedule.lr(self.base_lr, self.epoch)
    }

    /// Compiles (once) the training or evaluation plan for `batch` samples
    /// holding `sites` point-cloud sites (0 without point clouds).
    fn ensure(
        &mut self,
        (batch, sites): (usize, usize),
        eval: bool,
        report: &mut dyn FnMut(Event),
    ) -> Result<(), RunError> {
        let cache = if eval {
            &mut self.evals
        } else {
            &mut self.steps
        };
        if cache.contains_key(&(batch, sites)) {
            return Ok(());
        }
        if self.points.is_some() && cache.len() >= POINT_PLANS {
            cache.clear();
        }
        let started = Instant::now();
        let graph = if eval { &self.eval } else { &self.train };
        let shapes: Vec<(String, Vec<usize>)> = self
            .data_names()
            .into_iter()
            .map(|n| {
                let rows = if self.is_site_column(&n) {
                    sites
                } else {
                    batch
                };
                let shape = match graph.graph.inputs.iter().find(|(m, _)| *m == n) {
                    Some((_, v)) => std::iter::once(rows)
                        .chain(
                            graph.graph.ty(*v).shape[1..]
                                .iter()
                                .map(|d| d.as_known().unwrap_or(0).max(0) as usize),
                        )
                        .collect(),
                    None => Vec::new(),
                };
                (n, shape)
            })
            .collect();
        let refs: Vec<(&str, &[usize])> = shapes
            .iter()
            .map(|(n, s)| (n.as_str(), s.as_slice()))
            .collect();
        let step = TrainStep::compile(graph, &refs, self.config.options)?;
        let what = format!(
            "compiled the {} step for batch {batch}{}: {} kernels, {:.1} MB arena",
            if eval { "evaluation" } else { "training" },
            if self.points.is_some() {
                format!(" ({sites} sites)")
            } else {
                String::new()
            },
            step.kernels_compiled(),
            step.arena_len() as f64 * 4.0 / 1e6
        );
        report(Event::Compiled(&what, started.elapsed().as_secs_f64()));
        if eval {
            self.evals.insert((batch, sites), step);
        } else {
            self.steps.insert((batch, sites), step);
        }
        Ok(())
    }

    /// One training step on the samples `indices` of `data` (whose columns
    /// are [`Trainer::data_names`], in that order): forward, loss,
    /// backward, optimizer update, buffer update. After the first step of
    /// a batch size it allocates nothing and compiles nothing.
    pub fn step(
        &mut self,
        data: &DataSet,
        indices: &[usize],
        report: &mut dyn FnMut(Event),
    ) -> Result<Tally, RunError> {
        let b = indices.len();
        self.check_batch(b)?;
        let key = (b, self.gather(data, indices)?);
        self.ensure(key, false, report)?;
        let s = splitmix64(self.config.seed ^ splitmix64(self.optimizer.step_count()));
        self.seed_buf = [f32::from_bits(s as u32), f32::from_bits((s >> 32) as u32)];
        let lr = self.lr();
        let cap = self.config.batch.max(1);
        let Trainer {
            columns,
            seed_buf,
            reads,
            params_list,
            params,
            train,
            steps,
            classifier,
            slots,
            optimizer,
            grads_list,
            writes,
            ..
        } = self;
        let step = steps
            .get_mut(&key)
            .ok_or_else(|| RunError::Inputs(format!("no step compiled for batch {b}")))?;
        let seed = train.uses_seed.then_some(&seed_buf[..]);
        feed(
            (reads, params_list),
            columns,
            (cap, b),
            seed,
            params,
            |ins, ps| step.run(ins, ps),
        )?;
        let tally = tally(step, *classifier, columns, b);
        let mut update = Ok(());
        grads_list.with(slots.iter().map(|(_, oi)| step.output(*oi)), |gs| {
            writes.with(trained_slices(params, slots), |ps| {
                update = optimizer.step(ps, gs, lr);
            })
        });
        update.map_err(|e| RunError::Inputs(e.to_string()))?;
        for &(pi, oi) in &train.state {
            if let Some(dst) = params[pi].as_f32_mut() {
                dst.copy_from_slice(step.output(oi));
            }
        }
        report(Event::Step(tally));
        Ok(tally)
    }

    /// Evaluates the loss (and accuracy) on `indices` of `data` in
    /// inference semantics (running statistics, no dropout); parameters
    /// are not changed.
    pub fn evaluate(
        &mut self,
        data: &DataSet,
        indices: &[usize],
        report: &mut dyn FnMut(Event),
    ) -> Result<Tally, RunError> {
        let b = indices.len();
        self.check_batch(b)?;
        let key = (b, self.gather(data, indices)?);
        self.ensure(key, true, report)?;
        let cap = self.config.batch.max(1);
        let Trainer {
            columns,
            reads,
            params_list,
            params,
            evals,
            classifier,
            ..
        } = self;
        let step = evals
            .get_mut(&key)
            .ok_or_else(|| RunError::Inputs(format!("no plan compiled for batch {b}")))?;
        feed(
            (reads, params_list),
            columns,
            (cap, b),
            None,
            params,
            |ins, ps| step.run(ins, ps),
        )?;
        Ok(tally(step, *classifier, columns, b))
    }

    /// Times the training step on `indices` of `data` per layer (after
    /// one ordinary step as warm-up, which also compiles it); the
    /// optimizer update is not included.
    pub fn profile(
        &mut self,
        data: &DataSet,
        indices: &[usize],
        reps: usize,
    ) -> Result<Vec<LayerTime>, RunError> {
        let b = indices.len();
        self.step(data, indices, &mut |_| {})?;
        let key = (b, self.gather(data, indices)?);
        let cap = self.config.batch.max(1);
        let Trainer {
            columns,
            seed_buf,
            reads,
            params_list,
            params,
            train,
            steps,
            ..
        } = self;
        let step = steps
            .get_mut(&key)
            .ok_or_else(|| RunError::Inputs(format!("no step compiled for batch {b}")))?;
        let seed = train.uses_seed.then_some(&seed_buf[..]);
        feed(
            (reads, params_list),
            columns,
            (cap, b),
            seed,
            params,
            |ins, ps| step.profile(ins, ps, reps),
        )
    }

    fn check_batch(&self, b: usize) -> Result<(), RunError> {
        if self.points.is_some() && b != self.config.batch {
            return Err(RunError::Inputs(format!(
                "a point-cloud step takes exactly {} samples, got {b}",
                self.config.batch
            )));
        }
        if b == 0 || b > self.config.batch {
            return Err(RunError::Inputs(format!(
                "a step takes 1 to {} samples, got {b}",
                self.config.batch
            )));
        }
        Ok(())
    }

    /// Copies the samples `indices` into the column buffers; returns the
    /// batch's point-cloud site count (0 without point clouds).
    fn gather(&mut self, data: &DataSet, indices: &[usize]) -> Result<usize, RunError> {
        let Trainer { columns, train, .. } = self;
        let mut sites = 0;
        for (k, col) in columns.iter_mut().enumerate() {
            let r = match col {
                Feed::Bags(csr) => data.gather_bags(k, indices, csr),
                Feed::Sites(rows) => data.gather_sites(k, indices, rows).map(|n| sites = n),
                Feed::Dense(_) if data.is_sparse(k) || data.is_sites(k) => {
                    let name = train
                        .graph
                        .inputs
                        .iter()
                        .filter(|(n, _)| n != SEED_INPUT)
                        .nth(k)
                        .map_or("?", |(n, _)| n.as_str());
                    return Err(RunError::Inputs(format!(
                        "data column {k} holds {}, but the model's `{name}` is dense",
                        if data.is_sparse(k) {
                            "sparse bags"
                        } else {
                            "point-cloud sites"
                        }
                    )));
                }
                Feed::Dense(col) => {
                    let n = indices.len() * data.row_len(k);
                    let room = col.len();
                    let dst = col.get_mut(..n).ok_or_else(|| {
                        RunError::Inputs(format!(
                            "data column {k} has {} elements per sample, more than the model's {} per batch",
                            data.row_len(k),
                            room
                        ))
                    })?;
                    data.gather(k, indices, dst)
                }
            };
            r.map_err(|e| RunError::Inputs(e.to_string()))?;
        }
        Ok(sites)
    }
}

/// Calls `f` with a plan's input slices (the first `b` samples of every
/// dense column, each holding room for `cap`; a sparse column's three
/// buffers; then the seed, when given) and the parameter slices, through
/// the reusable `lists`: no allocation.
fn feed<T>(
    lists: (&mut ReadList, &mut ReadList),
    columns: &[Feed],
    (cap, b): (usize, usize),
    seed: Option<&[f32]>,
    params: &[Tensor],
    f: impl FnOnce(&[&[f32]], &[&[f32]]) -> Result<T, RunError>,
) -> Result<T, RunError> {
    let (inputs, params_list) = lists;
    let columns = columns
        .iter()
        .flat_map(|c| {
            let (first, rest): (&[f32], [&[f32]; 2]) = match c {
                Feed::Dense(c) => (&c[..c.len() / cap * b], [&[], &[]]),
                Feed::Bags(csr) => (&csr.indices, [&csr.offsets, &csr.values]),
                Feed::Sites(rows) => (rows, [&[], &[]]),
            };
            let n = if matches!(c, Feed::Bags(_)) { 2 } else { 0 };
            std::iter::once(first).chain(rest.into_iter().take(n))
        })
        .chain(seed);
    inputs.with(columns, |ins| {
        params_list.with(params.iter().map(|t| t.as_f32().unwrap_or(&[])), |ps| {
            f(ins, ps)
        })
    })
}

/// The loss and accuracy of the step that just ran on `b` samples.
fn tally(step: &TrainStep, classifier: Option<Classifier>, columns: &[Feed], b: usize) -> Tally {
    let correct = classifier.and_then(|c| {
        let logits = step.output(c.logits);
        let Feed::Dense(labels) = &columns[c.label] else {
            return None;
        };
        Some(
            (0..b)
                .filter(|&i| {
                    argmax(&logits[i * c.classes..(i + 1) * c.classes]) == labels[i] as usize
                })
                .count(),
        )
    });
    Tally {
        loss_sum: f64::from(step.output(0)[0]) * b as f64,
        samples: b,
        correct,
    }
}

/// The trained parameters, in optimizer-slot order, as mutable slices.
fn trained_slices<'a>(
    params: &'a mut [Tensor],
    slots: &'a [(usize, usize)],
) -> impl Iterator<Item = &'a mut [f32]> + 'a {
    // Slots are in increasing parameter order (the training graph lists
    // gradients in parameter order), so one pass hands out disjoint borrows.
    let mut wanted = slots.iter().map(|(pi, _)| *pi).peekable();
    params.iter_mut().enumerate().filter_map(move |(i, t)| {
        if wanted.peek() == Some(&i) {
            wanted.next();
            t.as_f32_mut()
        } else {
            None
        }
    })
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

fn param_len(g: &Graph, pi: usize) -> usize {
    g.params[pi]
        .ty
        .known_shape()
        .unwrap_or_default()
        .iter()
        .product::<i64>()
        .max(0) as usize
}

/// A classifier: the first model output is `[N, C]` and a data column is
/// an i64 label `[N]`.
fn classifier(t: &TrainingGraph) -> Option<Classifier> {
    let g = &t.graph;
    let (_, logits) = g.outputs.get(t.first_model_output)?;
    let lt = g.ty(*logits);
    if lt.rank() != 2 {
        return None;
    }
    let classes = lt.shape[1].as_known()? as usize;
    let label = g
        .inputs
        .iter()
        .position(|(_, v)| g.ty(*v).dtype == DType::I64 && g.ty(*v).rank() == 1)?;
    Some(Classifier {
        logits: t.first_model_output,
        label,
        classes,
    })
}

/// The row length of parameter `pi` when it is a lookup table (the weight
/// of an `embedding` or `embedding_bag`, `[rows, dim]`): a lazy optimizer
/// then updates only the rows a step's ids touched (`Optimizer::set_row_len`).
fn table_row_len(g: &Graph, pi: usize) -> Option<usize> {
    let value = g.params[pi].value;
    let is_table = g.nodes.iter().any(|n| {
        matches!(n.op.name, "embedding" | "embedding_bag") && n.inputs.get(1) == Some(&value)
    });
    let dim = g.params[pi].ty.shape.get(1)?.as_known()?;
    (is_table && g.params[pi].ty.rank() == 2).then_some(dim as usize)
}
