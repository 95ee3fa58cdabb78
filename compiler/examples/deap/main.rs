//! EEG emotion recognition on DEAP, the protocol of Yang et al. (ICONIP
//! 2018), driven from Rust with netc's host API: DEAP files → compiled
//! differential-entropy features → k-fold cross-validation of eeg_ccnn,
//! eeg_mlp and eeg_svm on the binary valence and arousal tasks.
//!
//! ```text
//! cargo run --release --example deap -- --data DIR [--subjects 1,2,...] [--folds 10]
//!     [--epochs 10] [--batch 64] [--split segments|trials] [--out results.json]
//! ```
//!
//! `DIR` holds DEAP's "preprocessed python" files `s01.dat` … `s32.dat`
//! (or synthetic ones: `cargo run --release -p netc-runtime --example
//! synthetic_deap -- --out DIR`). See docs/eeg.md.

mod protocol;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use protocol::{Event, Protocol, Split, MODELS, TASKS};
use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

/// Command-line arguments.
#[derive(Parser)]
#[command(about = "DEAP emotion recognition: DE features, then k-fold CV of CCNN, MLP and SVM")]
struct Args {
    /// Directory with DEAP's sXX.dat files.
    #[arg(long)]
    data: PathBuf,
    /// Subjects to use, by number (default: every sXX.dat in the directory).
    #[arg(long, value_delimiter = ',')]
    subjects: Option<Vec<usize>>,
    /// Folds of the cross-validation.
    #[arg(long, default_value_t = 10)]
    folds: usize,
    /// Training epochs per fold.
    #[arg(long, default_value_t = 10)]
    epochs: u64,
    /// Samples per training step.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// How folds are drawn: `segments` (the paper) or `trials`.
    #[arg(long, default_value = "segments", value_parser = ["segments", "trials"])]
    split: String,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Seeds folds, weights, shuffling and dropout.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Directory of the .net files.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../models"))]
    models: PathBuf,
    /// Also write the results as JSON here (atomically).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    if args.folds < 2 {
        return Err("--folds must be at least 2".into());
    }
    let started = Instant::now();
    let subjects = netc_runtime::deap::read_dir(&args.data, args.subjects.as_deref())?;
    if subjects.is_empty() {
        return Err(format!("no sXX.dat files in {}", args.data.display()).into());
    }
    let subjects: Vec<(String, _)> = subjects
        .into_iter()
        .map(|(n, s)| (format!("s{n:02}"), s))
        .collect();
    eprintln!(
        "read {} subject(s) in {:.1} s",
        subjects.len(),
        started.elapsed().as_secs_f64()
    );
    let protocol = Protocol {
        models: args.models,
        folds: args.folds,
        epochs: args.epochs,
        batch: args.batch,
        threads: args.threads,
        seed: args.seed,
        split: if args.split == "trials" {
            Split::Trials
        } else {
            Split::Segments
        },
    };
    let epochs_total =
        subjects.len() as u64 * (TASKS.len() * MODELS.len() * args.folds) as u64 * args.epochs;
    let bar = ProgressBar::new(epochs_total).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} epochs {elapsed}<{eta} {msg}")
            .map_err(|e| e.to_string())?,
    );
    let mut last = None;
    let results = protocol.run(&subjects, &mut |e| match e {
        Event::Features(name, secs) => bar.println(format!("{name}: features in {secs:.2} s")),
        Event::Fold(subject, task, model, fold) => {
            bar.set_message(format!("{subject} {task} {model} fold {fold}"));
        }
        Event::Epoch => bar.inc(1),
        Event::Accuracy(a) => last = Some(a),
    })?;
    bar.finish_and_clear();
    if let Some(a) = last {
        eprintln!("last fold's accuracy {:.2}%", 100.0 * a);
    }
    println!("{}", protocol::results_table(&results));
    println!(
        "features {:.1} s, cross-validation {:.1} s, total {:.1} s",
        results.feature_secs,
        results.cv_secs,
        started.elapsed().as_secs_f64()
    );
    if let Some(out) = &args.out {
        netc_runtime::fsutil::write_atomic(out, protocol::results_json(&results).as_bytes())?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}
