//! The epoch loop: seeded shuffling, one cached step per batch,
//! per-epoch validation, a checkpoint after every epoch, and a clean stop
//! on request (Ctrl-C) with a checkpoint that resumes mid-epoch. A resumed
//! run continues exactly as the uninterrupted one: the shuffling depends
//! only on (seed, epoch), the dropout masks on (seed, step), and the
//! weights, buffers and optimizer state are saved bit for bit.

use super::trainer::{Event, Tally, Trainer};
use crate::session::RunError;
use netc_runtime::train::checkpoint::{self, CheckpointMeta};
use netc_runtime::train::data::{DataSet, Sampler};
use netc_runtime::Tensor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// The statistics of one epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochStats {
    /// The epoch (from 1).
    pub epoch: u64,
    /// The learning rate used.
    pub lr: f64,
    /// Mean training loss over the epoch's samples.
    pub train_loss: f64,
    /// Training accuracy (classifiers).
    pub train_accuracy: Option<f64>,
    /// Validation loss, when a validation set is given.
    pub val_loss: Option<f64>,
    /// Validation accuracy (classifiers with a validation set).
    pub val_accuracy: Option<f64>,
    /// Training throughput.
    pub samples_per_sec: f64,
}

/// How to run [`fit`].
pub struct FitOptions<'a> {
    /// Train until this many epochs are complete (counting resumed ones).
    pub epochs: u64,
    /// Where to write a checkpoint after every epoch (and on a stop).
    pub checkpoint: Option<PathBuf>,
    /// Set (e.g. by a Ctrl-C handler) to stop after the current step.
    pub stop: Option<&'a AtomicBool>,
}

/// What [`fit`] reports while it works.
pub enum Progress<'a> {
    /// A plan was compiled: what, and seconds taken.
    Compiled(&'a str, f64),
    /// An epoch starts: its number (from 1), its batches, and how many of
    /// them a resumed run already did.
    EpochStart {
        /// The epoch.
        epoch: u64,
        /// Batches in the epoch.
        batches: usize,
        /// Batches already done (a resumed mid-epoch run).
        done: usize,
    },
    /// A training step finished.
    Step(Tally),
    /// An epoch ended.
    EpochEnd(&'a EpochStats),
    /// A checkpoint was written.
    Saved(&'a Path),
}

/// How [`fit`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every epoch ran.
    Completed,
    /// A stop was requested; the state was checkpointed (when a path was given).
    Stopped,
}

/// Where a run is: the history and, mid-epoch, the sampler and partial tally.
#[derive(Clone, Debug, Default)]
pub struct RunState {
    /// Completed epochs' statistics.
    pub history: Vec<EpochStats>,
    /// Mid-epoch: the sampler state and the tally so far.
    pub partial: Option<([u64; 3], Tally)>,
}

/// Trains until `options.epochs` epochs are complete.
pub fn fit(
    trainer: &mut Trainer,
    state: &mut RunState,
    train: &DataSet,
    val: Option<&DataSet>,
    options: &FitOptions,
    report: &mut dyn FnMut(Progress),
) -> Result<Outcome, RunError> {
    let batch = trainer.config().batch;
    let mut sampler = Sampler::shuffled(train.len(), batch, trainer.config().seed);
    while trainer.epoch < options.epochs {
        let epoch = trainer.epoch;
        sampler.start_epoch(epoch);
        let mut tally = Tally::default();
        if let Some((s, t)) = state.partial.take() {
            sampler
                .restore(s)
                .map_err(|e| RunError::Inputs(e.to_string()))?;
            tally = t;
        }
        let done = tally.samples.div_ceil(batch.max(1));
        report(Progress::EpochStart {
            epoch: epoch + 1,
            batches: sampler.batches_per_epoch(),
            done,
        });
        let lr = trainer.lr();
        let started = Instant::now();
        let mut fresh = 0usize;
        let mut forward = |e: Event| match e {
            Event::Compiled(what, secs) => report(Progress::Compiled(what, secs)),
            Event::Step(t) => report(Progress::Step(t)),
        };
        while let Some(indices) = sampler.next_batch() {
            if skipped(trainer, indices) {
                continue;
            }
            let t = trainer.step(train, indices, &mut forward)?;
            fresh += t.samples;
            tally.add(t);
            if options.stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
                state.partial = Some((sampler.state(), tally));
                if let Some(path) = &options.checkpoint {
                    save(trainer, state, path)?;
                    report(Progress::Saved(path));
                }
                return Ok(Outcome::Stopped);
            }
        }
        let samples_per_sec = fresh as f64 / started.elapsed().as_secs_f64().max(1e-9);
        let (val_loss, val_accuracy) = match val {
            Some(v) => {
                let t = evaluate(trainer, v, &mut forward)?;
                (Some(t.loss()), t.accuracy())
            }
            None => (None, None),
        };
        trainer.epoch += 1;
        state.history.push(EpochStats {
            epoch: epoch + 1,
            lr,
            train_loss: tally.loss(),
            train_accuracy: tally.accuracy(),
            val_loss,
            val_accuracy,
            samples_per_sec,
        });
        report(Progress::EpochEnd(
            state.history.last().unwrap_or(&state.history[0]),
        ));
        if let Some(path) = &options.checkpoint {
            save(trainer, state, path)?;
            report(Progress::Saved(path));
        }
    }
    Ok(Outcome::Completed)
}

/// Whether the batch `indices` is left out: a partial batch of a model that
/// takes full batches only (point clouds: PyTorch's `drop_last`).
fn skipped(trainer: &Trainer, indices: &[usize]) -> bool {
    trainer.full_batches_only() && indices.len() < trainer.config().batch
}

/// Loss and accuracy over a whole data set, in inference semantics.
pub fn evaluate(
    trainer: &mut Trainer,
    data: &DataSet,
    report: &mut dyn FnMut(Event),
) -> Result<Tally, RunError> {
    let mut sampler = Sampler::sequential(data.len(), trainer.config().batch);
    let mut tally = Tally::default();
    while let Some(indices) = sampler.next_batch() {
        if !skipped(trainer, indices) {
            tally.add(trainer.evaluate(data, indices, report)?);
        }
    }
    Ok(tally)
}

/// Writes a checkpoint: every parameter and buffer, the optimizer state,
/// the epoch, the sampler position and the history.
pub fn save(trainer: &Trainer, state: &RunState, path: &Path) -> Result<(), RunError> {
    let params = trainer.params();
    let weights: Vec<(&str, &Tensor)> = trainer
        .graph()
        .params
        .iter()
        .zip(params.iter())
        .map(|(p, t)| (p.path.as_str(), t))
        .collect();
    let mut extra = BTreeMap::new();
    extra.insert("history".to_string(), history_json(&state.history));
    let rng = match state.partial {
        Some((s, t)) => {
            extra.insert(
                "partial".to_string(),
                format!(
                    "{} {} {}",
                    t.loss_sum,
                    t.samples,
                    t.correct.map_or(-1, |c| c as i64)
                ),
            );
            s.to_vec()
        }
        None => Vec::new(),
    };
    let meta = CheckpointMeta {
        epoch: trainer.epoch,
        rng,
        extra,
    };
    checkpoint::save(
        path,
        &weights,
        trainer.optimizer(),
        &trainer.trained_paths(),
        &meta,
    )
    .map_err(|e| RunError::Inputs(e.to_string()))
}

/// Restores a checkpoint written by [`save`] into `trainer`; returns the
/// run state to continue from.
pub fn resume(trainer: &mut Trainer, path: &Path) -> Result<RunState, RunError> {
    let bad = |m: String| RunError::Inputs(format!("{}: {m}", path.display()));
    let ck = checkpoint::load(path).map_err(|e| RunError::Inputs(e.to_string()))?;
    let mut by_name: BTreeMap<&str, &Tensor> =
        ck.weights.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut tensors = Vec::new();
    for p in &trainer.graph().params {
        let t = by_name
            .remove(p.path.as_str())
            .ok_or_else(|| bad(format!("the checkpoint has no tensor `{}`", p.path)))?;
        tensors.push(t.clone());
    }
    if let Some(extra) = by_name.keys().next() {
        return Err(bad(format!(
            "the checkpoint has a tensor `{extra}` the model does not"
        )));
    }
    trainer.set_weights(tensors)?;
    let names: Vec<String> = trainer
        .trained_paths()
        .iter()
        .map(|s| s.to_string())
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    ck.restore_optimizer(trainer.optimizer_mut(), &names)
        .map_err(|e| RunError::Inputs(e.to_string()))?;
    trainer.epoch = ck.meta.epoch;
    let history = match ck.meta.extra.get("history") {
        Some(h) => parse_history(h).ok_or_else(|| bad("unreadable `history` metadata".into()))?,
        None => Vec::new(),
    };
    let partial = match (ck.meta.rng.as_slice(), ck.meta.extra.get("partial")) {
        ([a, b, c], Some(p)) => {
            let f: Vec<&str> = p.split(' ').collect();
            let parse = || -> Option<Tally> {
                let correct: i64 = f.get(2)?.parse().ok()?;
                Some(Tally {
                    loss_sum: f.first()?.parse().ok()?,
                    samples: f.get(1)?.parse().ok()?,
                    correct: (correct >= 0).then_some(correct as usize),
                })
            };
            Some((
                [*a, *b, *c],
                parse().ok_or_else(|| bad("unreadable `partial` metadata".into()))?,
            ))
        }
        _ => None,
    };
    Ok(RunState { history, partial })
}

fn opt(x: Option<f64>) -> String {
    x.map_or("null".into(), |v| format!("{v:e}"))
}

/// The history as JSON: a list of objects, one per epoch.
pub fn history_json(history: &[EpochStats]) -> String {
    let rows: Vec<String> = history
        .iter()
        .map(|e| {
            format!(
                "{{\"epoch\": {}, \"lr\": {:e}, \"train_loss\": {:e}, \"train_accuracy\": {}, \"val_loss\": {}, \"val_accuracy\": {}, \"samples_per_sec\": {:e}}}",
                e.epoch,
                e.lr,
                e.train_loss,
                opt(e.train_accuracy),
                opt(e.val_loss),
                opt(e.val_accuracy),
                e.samples_per_sec
            )
        })
        .collect();
    format!("[{}]", rows.join(", "))
}

/// Parses [`history_json`]'s output (its own fixed format only).
fn parse_history(text: &str) -> Option<Vec<EpochStats>> {
    let body = text.trim().strip_prefix('[')?.strip_suffix(']')?.trim();
    if body.is_empty() {
        return Some(Vec::new());
    }
    body.split("}, {")
        .map(|row| {
            let row = row.trim_matches(|c| c == '{' || c == '}');
            let mut fields = BTreeMap::new();
            for kv in row.split(", ") {
                let (k, v) = kv.split_once(": ")?;
                fields.insert(k.trim_matches('"'), v);
            }
            let num = |k: &str| -> Option<f64> { fields.get(k)?.parse().ok() };
            let maybe = |k: &str| -> Option<Option<f64>> {
                match *fields.get(k)? {
                    "null" => Some(None),
                    v => v.parse().ok().map(Some),
                }
            };
            Some(EpochStats {
                epoch: num("epoch")? as u64,
                lr: num("lr")?,
                train_loss: num("train_loss")?,
                train_accuracy: maybe("train_accuracy")?,
                val_loss: maybe("val_loss")?,
                val_accuracy: maybe("val_accuracy")?,
                samples_per_sec: num("samples_per_sec")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_round_trips_through_its_json() {
        let h = vec![
            EpochStats {
                epoch: 1,
                lr: 1e-3,
                train_loss: 0.5,
                train_accuracy: Some(0.75),
                val_loss: None,
                val_accuracy: None,
                samples_per_sec: 1234.5,
            },
            EpochStats {
                epoch: 2,
                lr: 5e-4,
                train_loss: 0.25,
                train_accuracy: None,
                val_loss: Some(0.3),
                val_accuracy: Some(0.9),
                samples_per_sec: 99.0,
            },
        ];
        assert_eq!(parse_history(&history_json(&h)), Some(h));
        assert_eq!(parse_history("[]"), Some(vec![]));
        assert_eq!(parse_history("[{\"epoch\": x}]"), None);
    }
}
