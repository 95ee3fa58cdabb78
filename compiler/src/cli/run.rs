//! `netc run`: compile a model for the shapes of its inputs (read from
//! `.safetensors` or `.npy` files; a sparse input `q` as the tensors
//! `q.indices`, `q.offsets`, `q.values` of a safetensors file), load or
//! initialise its weights, run it once, and write every output to a
//! safetensors file or print a preview. With `--queries` and `--docs` a
//! two-tower text model ranks documents instead ([`super::rank`]).

use super::options::{load, CompileFlags, ModelArgs};
use super::rank::{rank, RankRequest};
use super::text_data;
use super::Failure;
use netc::ir::{Graph, ValueId};
use netc::session::CompiledModel;
use netc_runtime::npy::read_npy;
use netc_runtime::weights::{read_safetensors, write_safetensors_atomic};
use netc_runtime::Storage;
use netc_runtime::Tensor;
use std::path::{Path, PathBuf};

/// The arguments of `netc run`.
#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Weights (safetensors, names = parameter paths). Without it,
    /// parameters get PyTorch's default initialisation from `--seed`.
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
    /// Seed of the default initialisation (without `--weights`).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// An input: `NAME=PATH` with a `.safetensors` (the tensor called NAME,
    /// or the only one; a sparse input's NAME.indices, NAME.offsets and
    /// optional NAME.values) or `.npy` file. Repeat for each input.
    #[arg(
        long = "input",
        value_name = "NAME=PATH",
        required_unless_present_any = ["queries", "tsv"]
    )]
    inputs: Vec<String>,
    /// Score the lines of a TSV of `query<TAB>positive[<TAB>negative ...]`
    /// with a two-tower text model, all lines in one batch (without
    /// negatives, each line draws them from the other lines' positives):
    /// the output `scores` has one row per line, the positive first.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["inputs", "queries"])]
    tsv: Option<PathBuf>,
    /// Rank documents instead: one query per line (a two-tower text model
    /// such as `models/dssm.net`'s; needs `--docs`).
    #[arg(
        long,
        value_name = "FILE",
        requires = "docs",
        conflicts_with = "inputs"
    )]
    queries: Option<PathBuf>,
    /// The documents to rank, one per line.
    #[arg(long, value_name = "FILE", requires = "queries")]
    docs: Option<PathBuf>,
    /// Hits kept per query when ranking.
    #[arg(long, default_value_t = 10, value_name = "K")]
    top: usize,
    /// Queries encoded per run when ranking (documents: this times the
    /// model's documents per row).
    #[arg(long, default_value_t = 64, value_name = "B")]
    batch: usize,
    /// Write every output, under its name, to this safetensors file
    /// (atomically); when ranking, the hits as JSON. Without it, print each
    /// output's shape and first values, or the hits.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    #[command(flatten)]
    flags: CompileFlags,
}

/// How many values of each output are printed without `--output`.
const PREVIEW: usize = 8;

/// Runs `netc run`.
pub fn run(args: &RunArgs) -> Result<(), Failure> {
    let options = args.flags.options()?;
    let loaded = load(&args.model)?;
    if let Some((k, _)) = loaded.sizes.first() {
        return Err(Failure::Usage(format!(
            "`--set {k}=...`: `netc run` takes sizes from the input shapes"
        )));
    }
    let g = loaded.graph;
    if let (Some(queries), Some(docs)) = (&args.queries, &args.docs) {
        let request = RankRequest {
            queries,
            docs,
            top: args.top,
            batch: args.batch,
            weights: args.weights.as_ref(),
            seed: args.seed,
            output: args.output.as_ref(),
        };
        return rank(&g, &request, options);
    }
    let (mut inputs, mut shapes) = match &args.tsv {
        Some(path) => text_data::run_inputs(&g, path, args.weights.as_deref(), args.seed)?,
        None => (Vec::new(), Vec::new()),
    };
    for spec in &args.inputs {
        let Some((name, path)) = spec.split_once('=') else {
            return Err(Failure::Usage(format!(
                "`--input {spec}`: expected NAME=PATH"
            )));
        };
        if !g.inputs.iter().any(|(n, _)| n == name) {
            let known: Vec<&str> = g.inputs.iter().map(|(n, _)| n.as_str()).collect();
            return Err(Failure::Usage(format!(
                "model `{}` has no input `{name}`; its inputs: {}",
                g.name,
                known.join(", ")
            )));
        }
        let sparse = g
            .inputs
            .iter()
            .find(|(n, _)| n == name)
            .filter(|(_, v)| g.ty(*v).sparse);
        match sparse {
            Some((_, v)) => {
                let (parts, shape) = read_sparse(&g, name, *v, Path::new(path))
                    .map_err(|e| Failure::Error(format!("input `{name}`: {e}")))?;
                inputs.extend(parts);
                shapes.push((name.to_string(), shape));
            }
            None => {
                let t = read_input(name, Path::new(path))
                    .map_err(|e| Failure::Error(format!("input `{name}`: {e}")))?;
                shapes.push((name.to_string(), t.shape().to_vec()));
                inputs.push((name.to_string(), t));
            }
        }
    }
    let shapes: Vec<(&str, &[usize])> = shapes
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_slice()))
        .collect();
    let mut model = CompiledModel::new(g, &shapes, options).map_err(Failure::error)?;
    match &args.weights {
        Some(w) => model.load_weights(w),
        None => model.init_weights(args.seed),
    }
    .map_err(Failure::error)?;
    let refs: Vec<(&str, &Tensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let outputs = model.run(&refs).map_err(Failure::error)?;
    match &args.output {
        Some(path) => {
            let named: Vec<(&str, &Tensor)> =
                outputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
            write_safetensors_atomic(path, &named, None).map_err(Failure::error)?;
        }
        None => {
            for (name, t) in &outputs {
                println!("{name}: {}", preview(t));
            }
        }
    }
    Ok(())
}

/// Reads input `name` from a `.npy` or `.safetensors` file.
fn read_input(name: &str, path: &Path) -> Result<Tensor, String> {
    if path.extension().is_some_and(|e| e == "npy") {
        return read_npy(path).map_err(|e| e.to_string());
    }
    let mut tensors = read_safetensors(path).map_err(|e| e.to_string())?;
    let pick = match tensors.iter().position(|(n, _)| n == name) {
        Some(i) => i,
        None if tensors.len() == 1 => 0,
        None => {
            let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
            return Err(format!(
                "{} has no tensor `{name}` and more than one tensor (it holds: {})",
                path.display(),
                names.join(", ")
            ));
        }
    };
    Ok(tensors.swap_remove(pick).1)
}

/// A sparse input's CSR tensors `NAME.indices`, `NAME.offsets` and
/// optional `NAME.values` from a safetensors file, with the logical shape
/// they give: the batch is the row count over the rows per sample.
fn read_sparse(
    g: &Graph,
    name: &str,
    v: ValueId,
    path: &Path,
) -> Result<(text_data::NamedTensors, Vec<usize>), String> {
    let tensors = read_safetensors(path).map_err(|e| e.to_string())?;
    let parts: Vec<(String, Tensor)> = tensors
        .into_iter()
        .filter(|(n, _)| {
            n.strip_prefix(name)
                .is_some_and(|rest| matches!(rest, ".indices" | ".offsets" | ".values"))
        })
        .collect();
    let offsets = parts
        .iter()
        .find(|(n, _)| n.ends_with(".offsets"))
        .ok_or_else(|| format!("{} has no tensor `{name}.offsets`", path.display()))?;
    let rows = offsets.1.numel().saturating_sub(1);
    let ty = g.ty(v);
    let fixed: Vec<usize> = ty.shape[1..]
        .iter()
        .map(|d| d.as_known().map(|n| n as usize))
        .collect::<Option<_>>()
        .ok_or_else(|| format!("only the first dim of {} may be symbolic", g.type_text(ty)))?;
    let per_sample: usize = fixed[..fixed.len() - 1].iter().product();
    if per_sample == 0 || rows % per_sample != 0 {
        return Err(format!(
            "`{name}.offsets` gives {rows} rows, not a whole number of samples of {per_sample} rows ({})",
            g.type_text(ty)
        ));
    }
    let mut shape = vec![rows / per_sample];
    shape.extend(fixed);
    Ok((parts, shape))
}

/// `f32[2, 3] [v0, v1, ...]`: the type and the first [`PREVIEW`] values.
fn preview(t: &Tensor) -> String {
    fn head<T: std::fmt::Display>(v: &[T], fmt: fn(&T) -> String) -> Vec<String> {
        v.iter().take(PREVIEW).map(fmt).collect()
    }
    let values = match t.storage() {
        Storage::F32(v) => head(v, |x| format!("{x:.6}")),
        Storage::F64(v) => head(v, |x| format!("{x:.6}")),
        Storage::I32(v) => head(v, ToString::to_string),
        Storage::I64(v) => head(v, ToString::to_string),
        Storage::U8(v) | Storage::Bool(v) => head(v, ToString::to_string),
    };
    let dims: Vec<String> = t.shape().iter().map(ToString::to_string).collect();
    format!(
        "{}[{}] [{}{}]",
        t.dtype(),
        dims.join(", "),
        values.join(", "),
        if t.numel() > PREVIEW { ", ..." } else { "" }
    )
}
