//! The `netc` command line.

use clap::{Parser, Subcommand, ValueEnum};
use netc::diag::render_all;
use netc::elab::{elaborate, Value};
use netc::program::Program;
use netc::summary::{param_list, summary, SymbolValues};
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;

/// netc: compile neural-network model files (`.net`).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse, elaborate and shape-check a file; print a per-layer summary.
    Check(CheckArgs),
    /// Compile a model and print what a stage produced (`--emit`).
    Compile(CompileArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum CompileEmit {
    /// The typed graph IR.
    Ir,
    /// The Cranelift IR of the elementwise kernels the model needs (each
    /// distinct kernel once).
    Clif,
}

#[derive(clap::Args)]
struct CompileArgs {
    /// The `.net` file.
    file: PathBuf,
    /// The model to compile (default: the only model in the file).
    #[arg(long)]
    model: Option<String>,
    /// Override a model parameter: `--set classes=10`.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    sets: Vec<String>,
    /// What to print.
    #[arg(long, value_enum)]
    emit: CompileEmit,
}

#[derive(Clone, Copy, ValueEnum)]
enum Emit {
    /// The per-layer summary (default).
    Summary,
    /// The typed graph IR.
    Ir,
}

#[derive(clap::Args)]
struct CheckArgs {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check(args) => check(args),
        Command::Compile(args) => compile(args),
    }
}

/// Parses `--set NAME=VALUE` arguments.
fn parse_sets(sets: &[String]) -> Result<Vec<(String, Value)>, String> {
    sets.iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), parse_set_value(v))),
            _ => Err(format!(
                "`--set {s}`: expected NAME=VALUE, e.g. `--set classes=10`"
            )),
        })
        .collect()
}

fn compile(args: CompileArgs) -> ExitCode {
    let sets = match parse_sets(&args.sets) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let (program, diags) = Program::load(&args.file);
    if !diags.is_empty() {
        eprint!("{}", render_all(&diags, &program.sources));
        return ExitCode::FAILURE;
    }
    let m = match program.model(args.model.as_deref()) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let g = match elaborate(&program, m, &sets) {
        Ok(g) => g,
        Err(diags) => {
            eprint!("{}", render_all(&diags, &program.sources));
            return ExitCode::FAILURE;
        }
    };
    match args.emit {
        CompileEmit::Ir => print!("{}", netc::ir::print_graph(&g)),
        CompileEmit::Clif => match netc::back::clif::emit_clif(&g) {
            Ok(text) => print!("{text}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
    }
    ExitCode::SUCCESS
}

/// Parses `--set` values: integers, floats, booleans, lists of those, or strings.
fn parse_set_value(text: &str) -> Value {
    let t = text.trim();
    if let Ok(n) = t.parse::<i64>() {
        return Value::Int(n);
    }
    if let Ok(f) = t.parse::<f64>() {
        return Value::Float(f);
    }
    match t {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    if let Some(inner) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        let items = if inner.trim().is_empty() {
            Vec::new()
        } else {
            inner.split(',').map(parse_set_value).collect()
        };
        return Value::list(items);
    }
    Value::Str(Rc::from(t.trim_matches('"')))
}

/// The tensors a weight file for `g` must hold.
fn weight_specs(g: &netc::ir::Graph) -> Vec<netc_runtime::weights::TensorSpec> {
    g.params
        .iter()
        .map(|p| netc_runtime::weights::TensorSpec {
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

fn check(args: CheckArgs) -> ExitCode {
    let mut sets = Vec::new();
    for s in &args.sets {
        match s.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                sets.push((k.trim().to_string(), parse_set_value(v)))
            }
            _ => {
                eprintln!("error: `--set {s}`: expected NAME=VALUE, e.g. `--set classes=10`");
                return ExitCode::from(2);
            }
        }
    }
    let (program, diags) = Program::load(&args.file);
    if !diags.is_empty() {
        eprint!("{}", render_all(&diags, &program.sources));
        return ExitCode::FAILURE;
    }
    let models: Vec<_> = match &args.model {
        Some(name) => match program.model(Some(name)) {
            Ok(m) => vec![m],
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
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
        return ExitCode::SUCCESS;
    }
    let mut failed = false;
    let mut first = true;
    for m in models {
        // Symbol sizes (`--set N=8`) only affect the summary's numbers.
        let (sym_sets, model_sets): (Vec<_>, Vec<_>) = sets.iter().cloned().partition(|(k, _)| {
            !m.params.iter().any(|p| &p.name.name == k)
                && k.chars().next().is_some_and(char::is_uppercase)
        });
        match elaborate(&program, m, &model_sets) {
            Ok(g) => {
                if let Some(w) = &args.weights {
                    match netc_runtime::weights::load_checked(w, &weight_specs(&g)) {
                        Ok(tensors) => eprintln!(
                            "{}: all {} tensors match {}",
                            w.display(),
                            tensors.len(),
                            g.name
                        ),
                        Err(e) => {
                            eprintln!("error: {e}");
                            failed = true;
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
                } else {
                    match args.emit {
                        Emit::Ir => print!("{}", netc::ir::print_graph(&g)),
                        Emit::Summary => {
                            let values = sym_sets
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
            }
            Err(diags) => {
                eprint!("{}", render_all(&diags, &program.sources));
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
