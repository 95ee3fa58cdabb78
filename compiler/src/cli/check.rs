//! `netc check`: parse, elaborate and shape-check a file; print a
//! per-layer summary, the parameter list or the IR, and optionally check a
//! weight file against each model.

use super::options::{parse_sets, split_sets};
use super::Failure;
use clap::ValueEnum;
use netc::diag::render_all;
use netc::elab::{elaborate, Value};
use netc::ir::Graph;
use netc::program::Program;
use netc::summary::{param_list, summary, SymbolValues};
use netc_runtime::weights::{load_checked, TensorSpec};
use std::path::PathBuf;

/// What `netc check` prints per model.
#[derive(Clone, Copy, ValueEnum)]
pub enum Emit {
    /// The per-layer summary (default).
    Summary,
    /// The typed graph IR.
    Ir,
}

/// The arguments of `netc check`.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// The `.net` file.
    file: PathBuf,
    /// The model to check (default: every model in the file).
    #[arg(long)]
    model: Option<String>,
    /// Override a model parameter or give a symbolic size: `--set classes=10`, `--set N=8`.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    sets: Vec<String>,
    /// Print every parameter and buffer path with its shape instead of the summary.
    #[arg(long)]
    params: bool,
    /// What to print.
    #[arg(long, value_enum, default_value = "summary")]
    emit: Emit,
    /// Also check that this safetensors file holds exactly the model's
    /// parameters and buffers, with the right types and shapes.
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
}

/// Runs `netc check`.
pub fn check(args: &CheckArgs) -> Result<(), Failure> {
    let sets = parse_sets(&args.sets)?;
    let (program, diags) = Program::load(&args.file);
    if !diags.is_empty() {
        return Err(Failure::Diagnostics(render_all(&diags, &program.sources)));
    }
    let models: Vec<_> = match &args.model {
        Some(name) => vec![program.model(Some(name)).map_err(Failure::Error)?],
        None => program
            .models
            .iter()
            .filter(|m| program.sources.file(m.span.file).path == args.file)
            .collect(),
    };
    if models.is_empty() {
        // A library of blocks: parsing and loading succeeded; blocks are
        // checked when a model calls them.
        let mut blocks: Vec<&str> = program
            .blocks
            .iter()
            .filter(|(_, d)| program.sources.file(d.span.file).path == args.file)
            .map(|(n, _)| n.as_str())
            .collect();
        blocks.sort_unstable();
        println!(
            "{}: no models; blocks: {}",
            args.file.display(),
            if blocks.is_empty() {
                "(none)".to_string()
            } else {
                blocks.join(", ")
            }
        );
        return Ok(());
    }
    let mut failures = Vec::new();
    let mut first = true;
    for m in models {
        // Symbol sizes (`--set N=8`) only affect the summary's numbers.
        let (sizes, model_sets) = split_sets(&sets, |k| m.params.iter().any(|p| p.name.name == k));
        let g = match elaborate(&program, m, &model_sets) {
            Ok(g) => g,
            Err(diags) => {
                failures.push(Failure::Diagnostics(render_all(&diags, &program.sources)));
                continue;
            }
        };
        if let Some(w) = &args.weights {
            match load_checked(w, &weight_specs(&g)) {
                Ok(tensors) => eprintln!(
                    "{}: all {} tensors match {}",
                    w.display(),
                    tensors.len(),
                    g.name
                ),
                Err(e) => {
                    failures.push(Failure::error(e));
                    continue;
                }
            }
        }
        if !first {
            println!();
        }
        first = false;
        if args.params {
            print!("{}", param_list(&g));
            continue;
        }
        match args.emit {
            Emit::Ir => print!("{}", netc::ir::print_graph(&g)),
            Emit::Summary => {
                let values = sizes
                    .iter()
                    .filter_map(|(k, v)| match v {
                        Value::Int(n) => Some((k.clone(), *n)),
                        _ => None,
                    })
                    .collect();
                print!("{}", summary(&g, &SymbolValues::new(&g, values)));
            }
        }
    }
    // Every model's problems are printed; the last one gives the exit code.
    let last = failures.pop();
    for f in failures {
        f.report();
    }
    last.map_or(Ok(()), Err)
}

/// The tensors a weight file for `g` must hold.
fn weight_specs(g: &Graph) -> Vec<TensorSpec> {
    g.params
        .iter()
        .map(|p| TensorSpec {
            name: p.path.clone(),
            dtype: p.ty.dtype,
            shape: p
                .ty
                .known_shape()
                .unwrap_or_default()
                .into_iter()
                .map(|d| d as usize)
                .collect(),
        })
        .collect()
}
