//! What several subcommands share: choosing and elaborating a model
//! (`FILE [--model NAME] [--set k=v ...]`) and the compile flags
//! (`--threads --gemm --no-fuse --no-fold-bn --no-arena-reuse --layout`)
//! mapped to [`CompileOptions`].

use super::Failure;
use clap::ValueEnum;
use netc::diag::render_all;
use netc::elab::{elaborate, Value};
use netc::ir::{Graph, SymKind};
use netc::options::{CompileOptions, GemmChoice, LayoutChoice};
use netc::program::Program;
use netc::source::SourceMap;
use std::path::PathBuf;
use std::rc::Rc;

/// The model a subcommand works on.
#[derive(clap::Args)]
pub struct ModelArgs {
    /// The `.net` file.
    pub file: PathBuf,
    /// The model (default: the only model in the file).
    #[arg(long)]
    pub model: Option<String>,
    /// Override a model parameter or give a symbolic size:
    /// `--set classes=10`, `--set N=8`.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub sets: Vec<String>,
}

/// The flags that choose how a model is compiled.
#[derive(clap::Args)]
pub struct CompileFlags {
    /// Worker threads (default: every core).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// The GEMM of contractions: chosen from the CPU's features, the tuned
    /// runtime GEMM, the Cranelift-generated f32x4 tile, or the packed
    /// AVX-512 GEMM (weights packed once).
    #[arg(long, value_enum, default_value = "auto")]
    pub gemm: GemmArg,
    /// Switch the fusion passes off (epilogues, elementwise chains,
    /// batch-norm folding).
    #[arg(long)]
    pub no_fuse: bool,
    /// Keep inference batch norms as their own kernels instead of folding
    /// them into the convolutions before them.
    #[arg(long)]
    pub no_fold_bn: bool,
    /// Keep average pools after the 1×1 convolutions they read instead of
    /// pooling first.
    #[arg(long)]
    pub no_pool_first: bool,
    /// Give every intermediate tensor its own arena bytes (no reuse between
    /// tensors whose lifetimes do not overlap).
    #[arg(long)]
    pub no_arena_reuse: bool,
    /// The layout of convolution activations: picked by the layout pass,
    /// or NCHW everywhere (the layout pass off).
    #[arg(long, value_enum, default_value = "auto")]
    pub layout: LayoutArg,
    /// Run a model too small for the thread pool on the calling thread
    /// alone, without spinning helpers splitting its larger products.
    #[arg(long)]
    pub no_team: bool,
    /// Run elementwise chains with GELU, SiLU, sigmoid or exp in the JIT's
    /// 4-lane kernels instead of the runtime's AVX-512 one.
    #[arg(long)]
    pub no_wide_pointwise: bool,
    /// Run a training step's small-batch `linear` products on the general
    /// GEMM (the weight packed per call) instead of the thin products.
    #[arg(long)]
    pub no_thin_linear: bool,
    /// Run a training step's 3×3 stride-1 convolutions on their other
    /// paths instead of as Winograd transforms around batched GEMMs.
    #[arg(long)]
    pub no_winograd: bool,
    /// Store each normalised concatenation that a 1×1 convolution reads
    /// (DenseNet) instead of normalising it inside the convolution.
    #[arg(long)]
    pub no_norm_prologue: bool,
}

/// `--gemm` values.
#[derive(Clone, Copy, ValueEnum)]
pub enum GemmArg {
    /// From the CPU's features.
    Auto,
    /// The tuned runtime GEMM.
    Native,
    /// The Cranelift f32x4 register tile.
    Cranelift,
    /// The packed AVX-512 GEMM everywhere, weights packed once.
    Packed,
}

/// `--layout` values.
#[derive(Clone, Copy, ValueEnum)]
pub enum LayoutArg {
    /// The layout pass picks per convolution chain.
    Auto,
    /// Everything stays NCHW.
    Nchw,
}

impl CompileFlags {
    /// The compile options these flags ask for.
    pub fn options(&self) -> Result<CompileOptions, Failure> {
        let threads = match self.threads {
            Some(0) => return Err(Failure::Usage("`--threads 0`: at least 1 thread".into())),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        Ok(CompileOptions {
            threads,
            gemm: match self.gemm {
                GemmArg::Auto => GemmChoice::Auto,
                GemmArg::Native => GemmChoice::Native,
                GemmArg::Cranelift => GemmChoice::Cranelift,
                GemmArg::Packed => GemmChoice::Packed,
            },
            fuse: !self.no_fuse,
            fold_bn: !self.no_fold_bn,
            pool_first: !self.no_pool_first,
            reuse_arena: !self.no_arena_reuse,
            layout: match self.layout {
                LayoutArg::Auto => LayoutChoice::Auto,
                LayoutArg::Nchw => LayoutChoice::Nchw,
            },
            team: !self.no_team,
            wide_pointwise: !self.no_wide_pointwise,
            thin_linear: !self.no_thin_linear,
            winograd: !self.no_winograd,
            norm_prologue: !self.no_norm_prologue,
        })
    }
}

/// A model elaborated from [`ModelArgs`], with the symbolic sizes that
/// `--set` gave (names that start upper-case and are not parameters of
/// the model, like `N`).
pub struct Loaded {
    /// The elaborated model.
    pub graph: Graph,
    /// `--set` sizes, in command-line order.
    pub sizes: Vec<(String, i64)>,
    /// The model's source files, for errors found after elaboration.
    pub sources: SourceMap,
}

/// Loads the file, picks the model and elaborates it with the model
/// parameters among `--set`.
pub fn load(args: &ModelArgs) -> Result<Loaded, Failure> {
    let sets = parse_sets(&args.sets)?;
    let (program, diags) = Program::load(&args.file);
    if !diags.is_empty() {
        return Err(Failure::Diagnostics(render_all(&diags, &program.sources)));
    }
    let m = program
        .model(args.model.as_deref())
        .map_err(Failure::Error)?;
    let (sizes, model_sets) = split_sets(&sets, |k| m.params.iter().any(|p| p.name.name == k));
    let graph = elaborate(&program, m, &model_sets)
        .map_err(|d| Failure::Diagnostics(render_all(&d, &program.sources)))?;
    let sizes = sizes
        .into_iter()
        .map(|(k, v)| match v {
            Value::Int(n) if n > 0 => Ok((k, n)),
            _ => Err(Failure::Usage(format!(
                "`--set {k}=...`: a size must be a positive integer"
            ))),
        })
        .collect::<Result<_, _>>()?;
    Ok(Loaded {
        graph,
        sizes,
        sources: program.sources,
    })
}

/// `--set` pairs: a name and its value.
pub type Sets = Vec<(String, Value)>;

/// Splits `--set` pairs into symbolic sizes (upper-case names that are not
/// model parameters) and model parameters.
pub fn split_sets(sets: &[(String, Value)], is_param: impl Fn(&str) -> bool) -> (Sets, Sets) {
    sets.iter()
        .cloned()
        .partition(|(k, _)| !is_param(k) && k.chars().next().is_some_and(char::is_uppercase))
}

/// The value of every input size symbol of `g` for a compile without
/// inputs: from `--set`, else 1. A size the model does not have is an
/// error naming the ones it has.
pub fn input_sizes(g: &Graph, sizes: &[(String, i64)]) -> Result<Vec<(String, i64)>, Failure> {
    let known: Vec<&str> = g
        .symbols
        .iter()
        .filter(|s| s.kind == SymKind::Input)
        .map(|s| s.name.as_str())
        .collect();
    if let Some((k, _)) = sizes.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        return Err(Failure::Usage(format!(
            "`--set {k}`: model `{}` has no parameter or size `{k}`; its sizes: {}",
            g.name,
            if known.is_empty() {
                "(none)".to_string()
            } else {
                known.join(", ")
            }
        )));
    }
    Ok(known
        .iter()
        .map(|name| {
            let v = sizes
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map_or(1, |(_, v)| *v);
            (name.to_string(), v)
        })
        .collect())
}

/// Parses `--set NAME=VALUE` arguments.
pub fn parse_sets(sets: &[String]) -> Result<Sets, Failure> {
    sets.iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), parse_value(v))),
            _ => Err(Failure::Usage(format!(
                "`--set {s}`: expected NAME=VALUE, e.g. `--set classes=10`"
            ))),
        })
        .collect()
}

/// Splits `a, [b, c], d` at the commas outside brackets.
fn top_level_items(text: &str) -> Vec<&str> {
    let (mut items, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&text[start..]);
    items
}

/// Parses a `--set` value: an integer, float, boolean, a (nested) list of
/// those, or a string.
fn parse_value(text: &str) -> Value {
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
            top_level_items(inner)
                .into_iter()
                .map(parse_value)
                .collect()
        };
        return Value::list(items);
    }
    Value::Str(Rc::from(t.trim_matches('"')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(v: &Value) -> Vec<i64> {
        match v {
            Value::List(items) => items
                .iter()
                .map(|x| match x {
                    Value::Int(n) => *n,
                    other => panic!("not an int: {other:?}"),
                })
                .collect(),
            other => panic!("not a list: {other:?}"),
        }
    }

    #[test]
    fn nested_lists_split_at_top_level_commas() {
        let v = parse_value("[[1,4], [4, 8],[8,14]]");
        let Value::List(bands) = &v else {
            panic!("not a list: {v:?}")
        };
        let bands: Vec<Vec<i64>> = bands.iter().map(ints).collect();
        assert_eq!(bands, [[1, 4], [4, 8], [8, 14]]);
        assert_eq!(ints(&parse_value("[3, 5]")), [3, 5]);
        assert!(matches!(parse_value("[]"), Value::List(l) if l.is_empty()));
    }
}
