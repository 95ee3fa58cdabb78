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
    /// Compile and run a model on inputs from files.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// The `.net` file.
    file: PathBuf,
    /// The model to run (default: the only model in the file).
    #[arg(long)]
    model: Option<String>,
    /// Override a model parameter: `--set classes=10`.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    sets: Vec<String>,
    /// Weights (safetensors, names = parameter paths). Without it,
    /// parameters get PyTorch's default initialisation from `--seed`.
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
    /// Seed of the default initialisation (without `--weights`).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// An input: `NAME=PATH` with a `.safetensors` (the tensor called NAME,
    /// or the only one) or `.npy` file. Repeat for each input.
    #[arg(long = "input", value_name = "NAME=PATH", required = true)]
    inputs: Vec<String>,
    /// Write every output, under its name, to this safetensors file
    /// (atomically). Without it, print each output's shape and first values.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Worker threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
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
        Command::Run(args) => run(args),
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

/// Loads `file`, picks the model and elaborates it; errors are printed.
fn load_graph(
    file: &std::path::Path,
    model: Option<&str>,
    sets: &[String],
) -> Result<netc::ir::Graph, ExitCode> {
    let sets = parse_sets(sets).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })?;
    let (program, diags) = Program::load(file);
    if !diags.is_empty() {
        eprint!("{}", render_all(&diags, &program.sources));
        return Err(ExitCode::FAILURE);
    }
    let m = program.model(model).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    })?;
    elaborate(&program, m, &sets).map_err(|diags| {
        eprint!("{}", render_all(&diags, &program.sources));
        ExitCode::FAILURE
    })
}

fn compile(args: CompileArgs) -> ExitCode {
    let g = match load_graph(&args.file, args.model.as_deref(), &args.sets) {
        Ok(g) => g,
        Err(code) => return code,
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

/// Reads input `name` from a `.npy` or `.safetensors` file.
fn read_input(name: &str, path: &std::path::Path) -> Result<netc_runtime::Tensor, String> {
    if path.extension().is_some_and(|e| e == "npy") {
        return netc_runtime::npy::read_npy(path).map_err(|e| e.to_string());
    }
    let tensors = netc_runtime::weights::read_safetensors(path).map_err(|e| e.to_string())?;
    let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    let pick = match tensors.iter().position(|(n, _)| n == name) {
        Some(i) => i,
        None if tensors.len() == 1 => 0,
        None => {
            return Err(format!(
                "{} has no tensor `{name}` (it holds: {})",
                path.display(),
                names.join(", ")
            ))
        }
    };
    Ok(tensors
        .into_iter()
        .nth(pick)
        .map(|(_, t)| t)
        .expect("index in range"))
}

fn run(args: RunArgs) -> ExitCode {
    let g = match load_graph(&args.file, args.model.as_deref(), &args.sets) {
        Ok(g) => g,
        Err(code) => return code,
    };
    let mut inputs = Vec::new();
    for spec in &args.inputs {
        let Some((name, path)) = spec.split_once('=') else {
            eprintln!("error: `--input {spec}`: expected NAME=PATH");
            return ExitCode::from(2);
        };
        if !g.inputs.iter().any(|(n, _)| n == name) {
            let known: Vec<&str> = g.inputs.iter().map(|(n, _)| n.as_str()).collect();
            eprintln!(
                "error: model `{}` has no input `{name}`; its inputs: {}",
                g.name,
                known.join(", ")
            );
            return ExitCode::from(2);
        }
        match read_input(name, std::path::Path::new(path)) {
            Ok(t) => inputs.push((name.to_string(), t)),
            Err(e) => {
                eprintln!("error: input `{name}`: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let shapes: Vec<(&str, &[usize])> = inputs
        .iter()
        .map(|(n, t)| (n.as_str(), t.shape()))
        .collect();
    let options = netc::options::CompileOptions {
        threads,
        ..Default::default()
    };
    let mut model = match netc::session::CompiledModel::new(g, &shapes, options) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let loaded = match &args.weights {
        Some(w) => model.load_weights(w),
        None => model.init_weights(args.seed),
    };
    if let Err(e) = loaded {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let refs: Vec<(&str, &netc_runtime::Tensor)> =
        inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let outputs = match model.run(&refs) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match &args.output {
        Some(path) => {
            let named: Vec<(&str, &netc_runtime::Tensor)> =
                outputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
            if let Err(e) = netc_runtime::weights::write_safetensors_atomic(path, &named, None) {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
        None => {
            for (name, t) in &outputs {
                let head: Vec<String> = t
                    .as_f32()
                    .unwrap_or(&[])
                    .iter()
                    .take(8)
                    .map(|v| format!("{v:.6}"))
                    .collect();
                println!(
                    "{name}: f32{:?} [{}{}]",
                    t.shape(),
                    head.join(", "),
                    if t.numel() > 8 { ", ..." } else { "" }
                );
            }
        }
    }
    ExitCode::SUCCESS
}
