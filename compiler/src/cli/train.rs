//! `netc train`: trains a model's `train` section on a data file, with a
//! progress bar per epoch (loss, samples/s), per-epoch validation, an
//! atomic checkpoint after every epoch, the loss/accuracy curve as an SVG
//! beside it, `--resume`, and a clean stop on Ctrl-C (the checkpoint of
//! the current state is written, then netc exits).

use super::options::{CompileFlags, ModelArgs};
use super::text_data;
use super::Failure;
use indicatif::{ProgressBar, ProgressStyle};
use netc::train::curve;
use netc::train::fit::{self, FitOptions, Outcome, Progress, RunState};
use netc::train::trainer::{TrainConfig, Trainer};
use netc_runtime::train::data::{ColumnSpec, DataSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The arguments of `netc train`.
#[derive(clap::Args)]
pub struct TrainArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Training data: a safetensors file with one tensor per model input
    /// and label (first dim = samples; class labels i64; a sparse input as
    /// NAME.indices/.offsets/.values), or for a two-tower text model a
    /// `.tsv` of `query<TAB>positive[<TAB>negative ...]` lines (without
    /// negatives, each batch draws them from its other positives).
    #[arg(long)]
    data: PathBuf,
    /// With TSV data: build letter-trigram and word vocabularies from the
    /// training texts (most frequent first, as many as the model has
    /// columns or table rows) instead of hashing, and save them beside
    /// `--out` (`m.trigrams.txt`, `m.words.txt`), where `netc run --weights`
    /// finds them.
    #[arg(long)]
    vocab: bool,
    /// Validation data (same tensors), evaluated after every epoch.
    #[arg(long)]
    val: Option<PathBuf>,
    /// Epochs to train (in total, counting resumed ones).
    #[arg(long)]
    epochs: u64,
    /// Samples per step.
    #[arg(long)]
    batch: usize,
    /// Learning rate (default: the `train` section's optimizer's).
    #[arg(long)]
    lr: Option<f64>,
    /// Seeds the initial weights, the shuffling and the dropout masks.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Start from these weights (a weights file or a checkpoint's weights)
    /// instead of the default initialisation.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// The checkpoint written after every epoch; the curve is written
    /// beside it (`.svg`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the initial weights (after `--weights`) to this file before
    /// training, e.g. to start a PyTorch twin from the same point.
    #[arg(long)]
    save_init: Option<PathBuf>,
    /// Continue from a checkpoint exactly where it stopped.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Print what is compiled and when.
    #[arg(long)]
    verbose: bool,
    /// No progress bars (one line per epoch).
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    flags: CompileFlags,
}

/// Runs `netc train`.
pub fn train(args: &TrainArgs) -> Result<(), Failure> {
    if args.batch == 0 {
        return Err(Failure::Usage("`--batch 0`: batches are at least 1".into()));
    }
    let options = args.flags.options()?;
    // The checkpoint's directory is made before training, so a missing
    // one fails now rather than after the first epoch.
    if let Some(dir) = args.out.as_deref().and_then(|o| o.parent()) {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Failure::Error(format!("{}: {e}", dir.display())))?;
        }
    }
    let loaded = super::options::load(&args.model)?;
    let config = TrainConfig {
        options,
        batch: args.batch,
        seed: args.seed,
        lr: args.lr,
    };
    let mut trainer =
        Trainer::new(loaded.graph, config).map_err(|e| Failure::run(e, &loaded.sources))?;
    let columns = trainer.data_columns();
    let specs: Vec<ColumnSpec> = columns
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_deref()))
        .collect();
    if args.vocab && args.out.is_none() {
        return Err(Failure::Usage(
            "`--vocab` saves the vocabularies beside the checkpoint: give `--out`".into(),
        ));
    }
    let vocab_beside = if args.vocab { &args.out } else { &args.weights };
    let names = trainer.data_names();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let load = |path: &std::path::Path, build: bool| {
        if let Some(spec) = trainer.point_spec() {
            DataSet::load_points(path, spec, &names).map_err(Failure::error)
        } else if text_data::is_tsv(path) {
            text_data::load(&trainer, path, vocab_beside.as_deref(), build, args.seed)
        } else {
            DataSet::load_columns(path, &specs).map_err(Failure::error)
        }
    };
    let data = load(&args.data, args.vocab)?;
    let val = args.val.as_deref().map(|p| load(p, false)).transpose()?;
    if let Some(w) = &args.weights {
        let specs: Vec<_> = trainer
            .graph()
            .params
            .iter()
            .zip(trainer.params().iter())
            .map(|(p, t)| netc_runtime::weights::TensorSpec {
                name: p.path.clone(),
                dtype: p.ty.dtype,
                shape: t.shape().to_vec(),
            })
            .collect();
        let tensors = netc_runtime::weights::load_checked(w, &specs).map_err(Failure::error)?;
        trainer.set_weights(tensors).map_err(Failure::error)?;
    }
    if let Some(path) = &args.save_init {
        let params = trainer.params();
        let tensors: Vec<(&str, &netc_runtime::Tensor)> = trainer
            .graph()
            .params
            .iter()
            .zip(params.iter())
            .map(|(p, t)| (p.path.as_str(), t))
            .collect();
        netc_runtime::weights::write_safetensors_atomic(path, &tensors, None)
            .map_err(Failure::error)?;
    }
    let mut state = match &args.resume {
        Some(p) => fit::resume(&mut trainer, p).map_err(Failure::error)?,
        None => RunState::default(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // A second Ctrl-C while the checkpoint is written is ignored: the
        // write finishes first.
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .map_err(|e| Failure::Error(format!("cannot handle Ctrl-C: {e}")))?;
    }
    let fit_options = FitOptions {
        epochs: args.epochs,
        checkpoint: args.out.clone(),
        stop: Some(&stop),
    };
    let title = trainer.graph().name.clone();
    let mut bar: Option<ProgressBar> = None;
    let mut running = (0.0f64, 0usize);
    let style =
        ProgressStyle::with_template("epoch {prefix:>3} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
            .map_err(Failure::error)?
            .progress_chars("=> ");
    let (quiet, verbose, epochs) = (args.quiet, args.verbose, args.epochs);
    let curve_path = args.out.as_ref().map(|p| p.with_extension("svg"));
    let mut history_snapshot = state.history.clone();
    let outcome = fit::fit(
        &mut trainer,
        &mut state,
        &data,
        val.as_ref(),
        &fit_options,
        &mut |p| match p {
            Progress::Compiled(what, secs) => {
                if verbose {
                    let line = format!("{what} in {:.0} ms", secs * 1e3);
                    match &bar {
                        Some(b) => b.println(line),
                        None => eprintln!("{line}"),
                    }
                }
            }
            Progress::EpochStart {
                epoch,
                batches,
                done,
            } => {
                running = (0.0, 0);
                if !quiet {
                    let b = ProgressBar::new(batches as u64).with_style(style.clone());
                    b.set_prefix(format!("{epoch}/{epochs}"));
                    b.set_position(done as u64);
                    bar = Some(b);
                }
            }
            Progress::Step(t) => {
                running.0 += t.loss_sum;
                running.1 += t.samples;
                if let Some(b) = &bar {
                    b.inc(1);
                    let rate = b.per_sec() * t.samples as f64;
                    b.set_message(format!(
                        "loss {:.4}  {:.0} samples/s",
                        running.0 / running.1.max(1) as f64,
                        rate
                    ));
                }
            }
            Progress::EpochEnd(e) => {
                if let Some(b) = bar.take() {
                    b.finish_and_clear();
                }
                let mut line = format!(
                    "epoch {}/{epochs}: lr {:.3e}  train loss {:.4}",
                    e.epoch, e.lr, e.train_loss
                );
                if let Some(a) = e.train_accuracy {
                    line += &format!(" acc {:.2}%", a * 100.0);
                }
                if let Some(l) = e.val_loss {
                    line += &format!("  val loss {l:.4}");
                }
                if let Some(a) = e.val_accuracy {
                    line += &format!(" acc {:.2}%", a * 100.0);
                }
                line += &format!("  {:.0} samples/s", e.samples_per_sec);
                println!("{line}");
                history_snapshot.push(e.clone());
            }
            Progress::Saved(path) => {
                if let Some(c) = &curve_path {
                    if let Err(e) = curve::write_svg(c, &title, &history_snapshot) {
                        eprintln!("warning: {e}");
                    }
                }
                if verbose {
                    eprintln!("saved {}", path.display());
                }
            }
        },
    );
    if let Some(b) = bar.take() {
        b.abandon();
    }
    match outcome.map_err(Failure::error)? {
        Outcome::Completed => Ok(()),
        Outcome::Stopped => {
            match &args.out {
                Some(p) => eprintln!(
                    "interrupted: the state is in {} (continue with --resume)",
                    p.display()
                ),
                None => eprintln!("interrupted (no --out: nothing saved)"),
            }
            Err(Failure::Error("training interrupted".into()))
        }
    }
}
