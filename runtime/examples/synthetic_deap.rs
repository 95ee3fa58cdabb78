//! Writes synthetic DEAP subjects (`sXX.dat`, the release's exact pickle
//! form) for testing an emotion-recognition pipeline without the licensed
//! data; see `netc_runtime::deap::generate_subject` for the signal model.
//!
//! ```text
//! cargo run --release -p netc-runtime --example synthetic_deap -- \
//!     --out DIR [--subjects 1,2,3 | --count 2] [--seed 7] [--effect 0.5]
//! ```

use netc_runtime::deap::{generate_subject, write_subject, SyntheticSpec};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

const USAGE: &str = "usage: synthetic_deap --out DIR [--subjects 1,2,3 | --count N] \
                     [--seed S] [--effect E]\n\
  --out DIR        directory to write sXX.dat into (created if missing)\n\
  --subjects LIST  subject numbers, comma-separated (default 1)\n\
  --count N        subjects 1..=N (instead of --subjects)\n\
  --seed S         generator seed (default 0)\n\
  --effect E       class effect in log band power (default 0.5)";

/// The parsed command line.
struct Args {
    out: PathBuf,
    subjects: Vec<u32>,
    spec: SyntheticSpec,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut out = None;
    let mut subjects = None;
    let mut spec = SyntheticSpec::default();
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |what: &str| format!("{flag} {value:?}: not {what}");
        match flag.as_str() {
            "--out" => out = Some(PathBuf::from(&value)),
            "--subjects" => {
                let list = value
                    .split(',')
                    .map(|n| {
                        n.trim()
                            .parse::<u32>()
                            .map_err(|_| bad("a list of numbers"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                subjects = Some(list);
            }
            "--count" => {
                let n: u32 = value.parse().map_err(|_| bad("a number"))?;
                subjects = Some((1..=n).collect());
            }
            "--seed" => spec.seed = value.parse().map_err(|_| bad("a number"))?,
            "--effect" => {
                spec.effect = value
                    .parse()
                    .ok()
                    .filter(|e: &f32| e.is_finite())
                    .ok_or_else(|| bad("a number"))?
            }
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    let out = out.ok_or("--out DIR is required")?;
    let subjects = subjects.unwrap_or_else(|| vec![1]);
    if subjects.is_empty() {
        return Err("no subjects to write".into());
    }
    Ok(Args {
        out,
        subjects,
        spec,
    })
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}");
            }
            eprintln!("{USAGE}");
            return if e.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        eprintln!("error: cannot create {}: {e}", args.out.display());
        return ExitCode::FAILURE;
    }
    for &n in &args.subjects {
        let start = Instant::now();
        let subject = generate_subject(&args.spec, n);
        let generated = start.elapsed();
        let path = args.out.join(format!("s{n:02}.dat"));
        if let Err(e) = write_subject(&path, &subject) {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        let high = |k: usize| {
            (0..subject.trials)
                .filter(|t| subject.labels[4 * t + k] > 5.0)
                .count()
        };
        println!(
            "{}: {} trials x {} channels x {} samples, {} high valence, {} high arousal \
             (seed {}, effect {}; generated in {:.2?}, written in {:.2?})",
            path.display(),
            subject.trials,
            subject.channels,
            subject.samples,
            high(0),
            high(1),
            args.spec.seed,
            args.spec.effect,
            generated,
            start.elapsed() - generated,
        );
    }
    ExitCode::SUCCESS
}
