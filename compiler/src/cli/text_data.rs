//! Training data from a TSV of `query<TAB>positive[<TAB>negative ...]`
//! lines (`netc_runtime::text::tsv`) for a two-tower text model: the texts
//! are encoded as the model's inputs read them (`netc::text_inputs`), and
//! when the file gives no negatives each batch draws them from the other
//! samples' positives (`DataSet::with_in_batch_negatives`).

use super::Failure;
use netc::text_inputs::TextInputs;
use netc::train::trainer::Trainer;
use netc_runtime::counter::fnv1a64;
use netc_runtime::text::tsv::{batch_documents, read_tsv};
use netc_runtime::train::data::{ColumnSpec, DataSet};
use std::path::Path;

/// Whether `path` names a TSV file.
pub fn is_tsv(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "tsv")
}

/// The data set of `path` for `trainer`'s model; `vocab_beside` locates
/// vocabulary files (ids are hashed without them); with `build_vocab` the
/// vocabularies are built from this file's texts and saved there first;
/// `seed` seeds the negative draws.
pub fn load(
    trainer: &Trainer,
    path: &Path,
    vocab_beside: Option<&Path>,
    build_vocab: bool,
    seed: u64,
) -> Result<DataSet, Failure> {
    let examples = read_tsv(path).map_err(Failure::error)?;
    let mut inputs = TextInputs::of_model(trainer.graph(), vocab_beside).map_err(Failure::Error)?;
    if let (true, Some(beside)) = (build_vocab, vocab_beside) {
        let texts: Vec<&str> = examples
            .iter()
            .flat_map(|e| [&e.query, &e.positive].into_iter().chain(&e.negatives))
            .map(String::as_str)
            .collect();
        inputs
            .build_vocabularies(&texts, beside)
            .map_err(Failure::Error)?;
    }
    let n = examples.len();
    let k = inputs.docs.per_row - 1;
    let origin = path.display().to_string();
    let queries: Vec<&str> = examples.iter().map(|e| e.query.as_str()).collect();
    let mut tensors = inputs.query.tensors(n, &queries).map_err(Failure::Error)?;
    let columns = trainer.data_columns();
    let spec = |name: &str| {
        columns
            .iter()
            .find(|(c, _)| c == name)
            .map(|(_, s)| s.clone())
            .ok_or_else(|| {
                Failure::Error(format!(
                    "model `{}` reads no input `{name}`",
                    trainer.graph().name
                ))
            })
    };
    let (qname, dname) = (inputs.query.name.as_str(), inputs.docs.name.as_str());
    let (qspec, dspec) = (spec(qname)?, spec(dname)?);
    let given = examples.first().map_or(0, |e| e.negatives.len());
    if given > 0 {
        if given != k {
            return Err(Failure::Error(format!(
                "{origin}: lines give {given} negatives, model `{}` scores {k} per query",
                trainer.graph().name
            )));
        }
        let docs: Vec<&str> = examples
            .iter()
            .flat_map(|e| std::iter::once(&e.positive).chain(&e.negatives))
            .map(String::as_str)
            .collect();
        tensors.extend(inputs.docs.tensors(n, &docs).map_err(Failure::Error)?);
        let specs: [ColumnSpec; 2] = [(qname, qspec.as_deref()), (dname, dspec.as_deref())];
        return DataSet::from_columns(&origin, tensors, &specs).map_err(Failure::error);
    }
    let single = netc::text_inputs::TextInput {
        per_row: 1,
        ..inputs.docs.clone()
    };
    let positives: Vec<&str> = examples.iter().map(|e| e.positive.as_str()).collect();
    tensors.extend(single.tensors(n, &positives).map_err(Failure::Error)?);
    // The stored documents are one per sample: the sparse sample shape
    // without its leading `1 + k`.
    let stored = dspec.as_ref().map(|s| s[1..].to_vec());
    let specs: [ColumnSpec; 2] = [(qname, qspec.as_deref()), (dname, stored.as_deref())];
    let keys = positives.iter().map(|p| fnv1a64(p)).collect();
    DataSet::from_columns(&origin, tensors, &specs)
        .and_then(|d| d.with_in_batch_negatives(dname, k, keys, seed))
        .map_err(Failure::error)
}

/// The named input tensors and their logical shapes for scoring every
/// line of the TSV at `path` with model `g` in one batch (`netc run
/// --tsv`): the file's negatives, or `k` drawn from the other lines'
/// positives by the sampling rule of `netc_runtime::text::tsv` (the whole
/// file is the batch).
pub fn run_inputs(
    g: &netc::ir::Graph,
    path: &Path,
    vocab_beside: Option<&Path>,
    seed: u64,
) -> Result<(NamedTensors, NamedShapes), Failure> {
    let inputs = TextInputs::of_model(g, vocab_beside).map_err(Failure::Error)?;
    let examples = read_tsv(path).map_err(Failure::error)?;
    let n = examples.len();
    let k = inputs.docs.per_row - 1;
    let queries: Vec<&str> = examples.iter().map(|e| e.query.as_str()).collect();
    let docs = batch_documents(&examples, k, seed)
        .map_err(|e| Failure::Error(format!("{}: {e}", path.display())))?;
    let mut tensors = inputs.query.tensors(n, &queries).map_err(Failure::Error)?;
    tensors.extend(inputs.docs.tensors(n, &docs).map_err(Failure::Error)?);
    let shapes = g
        .inputs
        .iter()
        .map(|(name, v)| {
            let dims = g.ty(*v).shape.iter();
            let shape = dims
                .map(|d| d.as_known().map_or(n, |s| s as usize))
                .collect();
            (name.clone(), shape)
        })
        .collect();
    Ok((tensors, shapes))
}

/// Tensors with their names.
pub type NamedTensors = Vec<(String, netc_runtime::Tensor)>;

/// Input shapes with their names.
pub type NamedShapes = Vec<(String, Vec<usize>)>;
