//! Text as model inputs: how a two-tower text model (models/dssm.net) reads
//! its query and document inputs, and how texts become those tensors.
//!
//! The encoding follows from the input's type alone, so any model with the
//! same input conventions is served, not just the three DSSMs:
//!
//! | input type (per text)    | encoding                                         |
//! |--------------------------|--------------------------------------------------|
//! | `sparse f32[V]`          | one bag of letter-trigram ids per text (DSSM)    |
//! | `sparse f32[words, V]`   | one bag per word, `words` per text (CNN-DSSM)    |
//! | `i64[words]`             | word ids, front-padded (LSTM-DSSM)               |
//!
//! The query input holds one text per batch row (`[N, ...]`), the document
//! input `k` per row (`[N, k, ...]`). Ids come from a vocabulary file kept
//! beside the weights (`m.trigrams.txt` / `m.words.txt`, docs/text.md) when
//! one exists, otherwise from hashing into the model's dimension.

use crate::ir::{Dim, Graph, ValueId};
use netc_runtime::text::bags::{text_bags, word_bags, WordIdMatrix};
use netc_runtime::text::vocab::{
    trigram_vocab_path, word_vocab_path, BuildOptions, TrigramIds, WordIds,
};
use netc_runtime::{DType, Tensor};
use std::path::Path;

/// How texts become one input.
#[derive(Clone, Debug)]
pub enum TextEncoding {
    /// One trigram bag per text.
    Bags(TrigramIds),
    /// One trigram bag per word, `words` per text.
    WordBags(TrigramIds, usize),
    /// Word ids, `words` per text.
    WordIds(WordIds, usize),
}

/// One text input of a model: its name, its encoding and how many texts a
/// batch row holds (1 for queries, `k` for documents).
#[derive(Clone, Debug)]
pub struct TextInput {
    /// The model input's name.
    pub name: String,
    /// How its texts are encoded.
    pub encoding: TextEncoding,
    /// Texts per batch row.
    pub per_row: usize,
}

/// The query and document inputs of a two-tower text model.
#[derive(Clone, Debug)]
pub struct TextInputs {
    /// One text per row.
    pub query: TextInput,
    /// `per_row` texts per row.
    pub docs: TextInput,
}

impl TextInputs {
    /// Reads the encodings off `g`'s first two inputs (query, then
    /// documents). `weights` locates vocabulary files; without one beside
    /// it (or without weights) ids are hashed.
    pub fn of_model(g: &Graph, weights: Option<&Path>) -> Result<TextInputs, String> {
        let [(qname, q), (dname, d)] = g.inputs.get(..2).unwrap_or_default() else {
            return Err(format!(
                "model `{}` has {} input(s); text input needs a query and a document input",
                g.name,
                g.inputs.len()
            ));
        };
        let query = text_input(g, qname, *q, 1, weights)?;
        let qrank = g.ty(*q).rank();
        let dshape = &g.ty(*d).shape;
        if g.ty(*d).rank() != qrank + 1 {
            return Err(format!(
                "input `{dname}` should hold k texts per row ({}), like `{qname}` ({}) with one more dim",
                g.type_text(g.ty(*d)),
                g.type_text(g.ty(*q))
            ));
        }
        let per_row = known(&dshape[1], dname)?;
        let docs = text_input(g, dname, *d, per_row, weights)?;
        Ok(TextInputs { query, docs })
    }

    /// Both inputs' tensors for `queries` (one per row) and `docs`
    /// (`docs.per_row` per row, row-major); `rows` batch rows, missing
    /// texts are empty.
    pub fn tensors(
        &self,
        rows: usize,
        queries: &[&str],
        docs: &[&str],
    ) -> Result<Vec<(String, Tensor)>, String> {
        let mut out = self.query.tensors(rows, queries)?;
        out.extend(self.docs.tensors(rows, docs)?);
        Ok(out)
    }
}

impl TextInputs {
    /// Replaces hashed ids by vocabularies built from `texts` (as many
    /// tokens as the model has columns or table rows, most frequent first;
    /// docs/text.md) and saves them beside `weights` (`m.trigrams.txt`,
    /// `m.words.txt`), where [`TextInputs::of_model`] finds them later.
    pub fn build_vocabularies(&mut self, texts: &[&str], weights: &Path) -> Result<(), String> {
        let mut trigrams: Option<TrigramIds> = None;
        let mut words: Option<WordIds> = None;
        for input in [&mut self.query, &mut self.docs] {
            match &mut input.encoding {
                TextEncoding::Bags(ids) | TextEncoding::WordBags(ids, _) => {
                    let max_size = Some(ids.dim());
                    if trigrams.is_none() {
                        let opts = BuildOptions {
                            max_size,
                            min_count: 1,
                        };
                        let built = TrigramIds::build(texts.iter().copied(), opts)
                            .map_err(|e| e.to_string())?;
                        save(built.vocabulary(), &trigram_vocab_path(weights))?;
                        trigrams = Some(built);
                    }
                    *ids = trigrams.clone().unwrap_or_else(|| ids.clone());
                }
                TextEncoding::WordIds(ids, _) => {
                    let max_size = Some(ids.dim().saturating_sub(2).max(1));
                    if words.is_none() {
                        let opts = BuildOptions {
                            max_size,
                            min_count: 1,
                        };
                        let built = WordIds::build(texts.iter().copied(), opts)
                            .map_err(|e| e.to_string())?;
                        save(built.vocabulary(), &word_vocab_path(weights))?;
                        words = Some(built);
                    }
                    *ids = words.clone().unwrap_or_else(|| ids.clone());
                }
            }
        }
        Ok(())
    }
}

/// Saves a built vocabulary (atomically).
fn save(vocab: Option<&netc_runtime::text::vocab::Vocabulary>, path: &Path) -> Result<(), String> {
    vocab
        .ok_or_else(|| "a built vocabulary is missing".to_string())?
        .save(path)
        .map_err(|e| format!("{}: {e}", path.display()))
}

impl TextInput {
    /// The tensors of `rows` batch rows of this input from `texts`
    /// (`rows * per_row` of them; missing ones are empty texts).
    pub fn tensors(&self, rows: usize, texts: &[&str]) -> Result<Vec<(String, Tensor)>, String> {
        let want = rows * self.per_row;
        if texts.len() > want {
            return Err(format!(
                "input `{}`: {} texts for {rows} rows of {}",
                self.name,
                texts.len(),
                self.per_row
            ));
        }
        let mut all: Vec<&str> = texts.to_vec();
        all.resize(want, "");
        let leading: Vec<usize> = if self.per_row == 1 {
            vec![rows]
        } else {
            vec![rows, self.per_row]
        };
        let name = &self.name;
        match &self.encoding {
            TextEncoding::Bags(ids) => Ok(text_bags(&all, ids).bags.to_tensors(name)),
            TextEncoding::WordBags(ids, words) => {
                Ok(word_bags(&all, ids, *words).bags.to_tensors(name))
            }
            TextEncoding::WordIds(ids, words) => {
                let m = WordIdMatrix::build(&all, ids, *words);
                Ok(vec![m
                    .to_tensor(name, &leading)
                    .map_err(|e| e.to_string())?])
            }
        }
    }
}

/// The encoding of input `name` (value `v`), whose rows hold `per_row`
/// texts.
fn text_input(
    g: &Graph,
    name: &str,
    v: ValueId,
    per_row: usize,
    weights: Option<&Path>,
) -> Result<TextInput, String> {
    let ty = g.ty(v);
    let lead = if per_row == 1 { 1 } else { 2 };
    let sample: Vec<usize> = ty.shape[lead.min(ty.shape.len())..]
        .iter()
        .map(|d| known(d, name))
        .collect::<Result<_, _>>()?;
    let unsupported = || {
        format!(
            "input `{name}` is {}; text input needs sparse f32[..., V], sparse f32[..., words, V] or i64[..., words]",
            g.type_text(ty)
        )
    };
    let encoding = match (ty.sparse, ty.dtype, sample.as_slice()) {
        (true, DType::F32, [v]) => TextEncoding::Bags(trigram_ids(*v, weights)?),
        (true, DType::F32, [words, v]) => TextEncoding::WordBags(trigram_ids(*v, weights)?, *words),
        (false, DType::I64, [words]) => {
            TextEncoding::WordIds(word_ids(embedding_rows(g, v, name)?, weights)?, *words)
        }
        _ => return Err(unsupported()),
    };
    Ok(TextInput {
        name: name.to_string(),
        encoding,
        per_row,
    })
}

/// A dim's size, which must not depend on the batch.
fn known(d: &Dim, name: &str) -> Result<usize, String> {
    d.as_known()
        .map(|n| n as usize)
        .ok_or_else(|| format!("input `{name}`: a text dim ({d:?}) is not a fixed size"))
}

/// Trigram ids for a model of `dim` columns: the vocabulary beside the
/// weights, else hashing.
fn trigram_ids(dim: usize, weights: Option<&Path>) -> Result<TrigramIds, String> {
    if let Some(path) = weights.map(trigram_vocab_path).filter(|p| p.exists()) {
        let ids = TrigramIds::load(&path).map_err(|e| e.to_string())?;
        if ids.dim() > dim {
            return Err(format!(
                "{} holds {} trigrams, more than the model's {dim} columns",
                path.display(),
                ids.dim()
            ));
        }
        return Ok(ids);
    }
    TrigramIds::hashed(dim).map_err(|e| e.to_string())
}

/// Word ids for an embedding table of `rows` rows: the vocabulary beside
/// the weights, else hashing.
fn word_ids(rows: usize, weights: Option<&Path>) -> Result<WordIds, String> {
    if let Some(path) = weights.map(word_vocab_path).filter(|p| p.exists()) {
        let ids = WordIds::load(&path).map_err(|e| e.to_string())?;
        if ids.dim() > rows {
            return Err(format!(
                "{} needs {} embedding rows, the model has {rows}",
                path.display(),
                ids.dim()
            ));
        }
        return Ok(ids);
    }
    WordIds::hashed(rows).map_err(|e| e.to_string())
}

/// The number of rows of the embedding table that reads input `v`.
fn embedding_rows(g: &Graph, v: ValueId, name: &str) -> Result<usize, String> {
    g.nodes
        .iter()
        .find(|n| n.op.name == "embedding" && n.inputs.first() == Some(&v))
        .and_then(|n| n.inputs.get(1))
        .and_then(|w| g.ty(*w).shape.first())
        .and_then(|d| d.as_known())
        .map(|n| n as usize)
        .ok_or_else(|| format!("input `{name}` holds word ids but no `embedding` reads it"))
}
