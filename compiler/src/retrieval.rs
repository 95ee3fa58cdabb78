//! Ranking documents for queries with a two-tower text model.
//!
//! A DSSM-style model scores a query against `k` documents per batch row:
//! its output is `gamma * cosine_similarity(query vector, document
//! vectors)`. Ranking a whole collection through that output would encode
//! every document once per query. Instead the model is cut at the cosine:
//! the **encoder graph** has the same inputs and parameters and outputs the
//! two operands of the cosine (the query vectors `[N, 1, E]` and the
//! document vectors `[N, k, E]`). Each run of the compiled encoder embeds
//! `rows` queries and `rows * k` documents (empty texts pad the last run),
//! every text exactly once; the scores are then `gamma * cos(q, d)` for
//! every pair, with the cosine's own eps rule, and each query keeps its
//! `top` best documents (ties: lower document line first).

use crate::ir::{Attr, Graph, NodeId, ValueDef, ValueId};
use crate::options::CompileOptions;
use crate::passes::rewrite::set_nodes;
use crate::session::{CompiledModel, RunError};
use crate::text_inputs::TextInputs;
use rayon::prelude::*;
use std::collections::HashSet;
use std::path::Path;

/// A compiled query/document encoder and the scoring rule of its model.
pub struct Ranker {
    model: CompiledModel,
    inputs: TextInputs,
    gamma: f64,
    eps: f64,
    rows: usize,
}

/// One ranked document: its index (line) and score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    /// The document's index in the collection.
    pub doc: usize,
    /// `gamma * cosine` between the query and the document.
    pub score: f32,
}

impl Ranker {
    /// Compiles the encoder of `g` for `rows` queries per run, loading
    /// `weights` (or initialising from `seed` without them). Text ids use
    /// the vocabulary files beside `weights`, else hashing.
    pub fn new(
        g: &Graph,
        weights: Option<&Path>,
        seed: u64,
        rows: usize,
        options: CompileOptions,
    ) -> Result<Ranker, RunError> {
        let inputs = TextInputs::of_model(g, weights).map_err(RunError::Inputs)?;
        let (encoder, gamma, eps) = encoder_graph(g).map_err(RunError::Inputs)?;
        let shapes = input_shapes(&encoder, rows);
        let shape_refs: Vec<(&str, &[usize])> = shapes
            .iter()
            .map(|(n, s)| (n.as_str(), s.as_slice()))
            .collect();
        let mut model = CompiledModel::new(encoder, &shape_refs, options)?;
        match weights {
            Some(path) => model.load_weights(path)?,
            None => model.init_weights(seed)?,
        }
        Ok(Ranker {
            model,
            inputs,
            gamma,
            eps,
            rows: rows.max(1),
        })
    }

    /// The unit vectors' raw form: every query's and every document's
    /// vector (`[queries, E]` and `[docs, E]`, row-major) and `E`.
    pub fn encode(
        &mut self,
        queries: &[&str],
        docs: &[&str],
    ) -> Result<(Vec<f32>, Vec<f32>, usize), RunError> {
        let per_row = self.inputs.docs.per_row;
        let runs = queries
            .len()
            .div_ceil(self.rows)
            .max(docs.len().div_ceil(self.rows * per_row));
        let (mut qv, mut dv, mut width) = (Vec::new(), Vec::new(), 0);
        for r in 0..runs {
            let qs = chunk(queries, r * self.rows, self.rows);
            let ds = chunk(docs, r * self.rows * per_row, self.rows * per_row);
            let tensors = self
                .inputs
                .tensors(self.rows, qs, ds)
                .map_err(RunError::Inputs)?;
            let named: Vec<(&str, &netc_runtime::Tensor)> =
                tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
            let outs = self.model.run(&named)?;
            let q = outs[0].1.as_f32().unwrap_or_default();
            let d = outs[1].1.as_f32().unwrap_or_default();
            width = q.len() / self.rows;
            qv.extend_from_slice(&q[..qs.len() * width]);
            dv.extend_from_slice(&d[..ds.len() * width]);
        }
        Ok((qv, dv, width))
    }

    /// The `top` best documents for each query, best first.
    pub fn rank(
        &mut self,
        queries: &[&str],
        docs: &[&str],
        top: usize,
    ) -> Result<Vec<Vec<Hit>>, RunError> {
        let (qv, dv, e) = self.encode(queries, docs)?;
        if e == 0 {
            return Ok(vec![Vec::new(); queries.len()]);
        }
        let norm = |v: &[f32]| {
            v.iter()
                .map(|x| x * x)
                .sum::<f32>()
                .sqrt()
                .max(self.eps as f32)
        };
        let dnorm: Vec<f32> = dv.chunks(e).map(norm).collect();
        let gamma = self.gamma as f32;
        Ok(qv
            .par_chunks(e)
            .map(|q| {
                let qn = norm(q);
                let mut hits: Vec<Hit> = dv
                    .chunks(e)
                    .zip(&dnorm)
                    .enumerate()
                    .map(|(doc, (d, dn))| {
                        let dot: f32 = q.iter().zip(d).map(|(a, b)| a * b).sum();
                        Hit {
                            doc,
                            score: gamma * dot / (qn * dn),
                        }
                    })
                    .collect();
                let keep = top.min(hits.len());
                let order = |a: &Hit, b: &Hit| b.score.total_cmp(&a.score).then(a.doc.cmp(&b.doc));
                if keep < hits.len() && keep > 0 {
                    hits.select_nth_unstable_by(keep - 1, order);
                }
                hits.truncate(keep);
                hits.sort_by(order);
                hits
            })
            .collect())
    }
}

/// `texts[start..start + len]`, clipped to the slice.
fn chunk<'a, 'b>(texts: &'a [&'b str], start: usize, len: usize) -> &'a [&'b str] {
    let s = start.min(texts.len());
    &texts[s..(start + len).min(texts.len())]
}

/// The logical input shapes of the encoder for `rows` batch rows.
fn input_shapes(g: &Graph, rows: usize) -> Vec<(String, Vec<usize>)> {
    g.inputs
        .iter()
        .map(|(name, v)| {
            let shape = g
                .ty(*v)
                .shape
                .iter()
                .map(|d| d.as_known().map_or(rows, |n| n as usize))
                .collect();
            (name.clone(), shape)
        })
        .collect()
}

/// Cuts `g` at the cosine of its first output (`gamma * cos(a, b)` or
/// `cos(a, b)`): the graph computing `a` and `b` as outputs `queries` and
/// `documents`, with `gamma` and the cosine's eps.
pub fn encoder_graph(g: &Graph) -> Result<(Graph, f64, f64), String> {
    let not_two_tower = || {
        format!(
            "model `{}` is not a two-tower scorer: its first output is not `gamma * cosine_similarity(query, documents)`",
            g.name
        )
    };
    let producer = |v: ValueId| match g.values[v.0 as usize].def {
        ValueDef::Node(NodeId(i), _) => Some(&g.nodes[i as usize]),
        _ => None,
    };
    let (_, out) = g.outputs.first().ok_or_else(not_two_tower)?;
    let mut node = producer(*out).ok_or_else(not_two_tower)?;
    let mut gamma = 1.0;
    if node.op.name == "mul" {
        let scalar = node.inputs.iter().find_map(|v| {
            g.consts
                .iter()
                .find(|c| c.value == *v && c.data.len() == 1)
                .map(|c| (c.data[0], *v))
        });
        let (value, cv) = scalar.ok_or_else(not_two_tower)?;
        gamma = value;
        let other = node
            .inputs
            .iter()
            .find(|v| **v != cv)
            .ok_or_else(not_two_tower)?;
        node = producer(*other).ok_or_else(not_two_tower)?;
    }
    if node.op.name != "cosine_similarity" || node.inputs.len() != 2 {
        return Err(not_two_tower());
    }
    let eps = match node.op.attr("eps") {
        Some(Attr::Float(e)) => *e,
        _ => 1e-8,
    };
    let (a, b) = (node.inputs[0], node.inputs[1]);
    let mut enc = g.clone();
    enc.outputs = vec![("queries".into(), a), ("documents".into(), b)];
    enc.train = None;
    prune(&mut enc);
    Ok((enc, gamma, eps))
}

/// Drops the nodes no output depends on.
fn prune(g: &mut Graph) {
    let mut needed: HashSet<ValueId> = g.outputs.iter().map(|(_, v)| *v).collect();
    let mut keep = vec![false; g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate().rev() {
        if n.outputs.iter().any(|v| needed.contains(v)) {
            keep[i] = true;
            needed.extend(n.inputs.iter().copied());
        }
    }
    let nodes = g
        .nodes
        .iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|(n, _)| n.clone())
        .collect();
    set_nodes(g, nodes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elab::Value;
    use crate::interp::{self, Array};
    use crate::session::load_model;
    use netc_runtime::text::bags::text_bags;
    use netc_runtime::text::vocab::TrigramIds;
    use netc_runtime::Initializer;
    use std::collections::HashMap;

    const QUERIES: &[&str] = &["text editor", "web browser for the desktop", "image viewer"];
    const DOCS: &[&str] = &[
        "A small terminal text editor",
        "Fast graphical web browser",
        "",
        "View images and photos",
        "Compression library for images",
        "editor of images",
        "browser",
    ];

    fn dssm(negatives: i64) -> Graph {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/dssm.net");
        let args = [
            ("trigrams".to_string(), Value::Int(256)),
            ("negatives".to_string(), Value::Int(negatives)),
        ];
        load_model(&path, Some("dssm"), &args).unwrap()
    }

    /// Dense `[texts, 256]` bags.
    fn dense(texts: &[&str]) -> Vec<f64> {
        let bags = text_bags(texts, &TrigramIds::hashed(256).unwrap()).bags;
        let mut out = vec![0.0; texts.len() * 256];
        for r in 0..texts.len() {
            let (ids, values) = bags.bag(r).unwrap();
            for (i, v) in ids.iter().zip(values) {
                out[r * 256 + *i as usize] += f64::from(*v);
            }
        }
        out
    }

    /// The ranker's scores equal the whole model's `scores` output in the
    /// f64 interpreter (each query against every document as its `k`
    /// documents), and hits come best first, with the encoder run on
    /// padded batches (2 queries and 4 documents per run).
    #[test]
    fn ranking_equals_the_models_own_scores() {
        let mut ranker = Ranker::new(&dssm(1), None, 3, 2, CompileOptions::default()).unwrap();
        let hits = ranker.rank(QUERIES, DOCS, DOCS.len()).unwrap();

        let full = dssm(DOCS.len() as i64 - 1);
        let mut init = Initializer::new(3);
        let params: HashMap<String, Array> = full
            .params
            .iter()
            .map(|p| {
                let shape = p.ty.known_dims().unwrap();
                let t = init.tensor(p.ty.dtype, &shape, &p.init);
                let data = t.as_f32().unwrap().iter().map(|&x| f64::from(x)).collect();
                (p.path.clone(), Array::new(&shape, data))
            })
            .collect();
        let docs = Array::new(&[1, DOCS.len(), 256], dense(DOCS));
        for (q, text) in QUERIES.iter().enumerate() {
            let inputs = [
                ("q", Array::new(&[1, 256], dense(&[text]))),
                ("docs", docs.clone()),
            ];
            let want = &interp::run(&full, &inputs, &params).unwrap()[0].1.data;
            assert_eq!(hits[q].len(), DOCS.len());
            for pair in hits[q].windows(2) {
                assert!(pair[0].score >= pair[1].score, "query {q}: {pair:?}");
            }
            for h in &hits[q] {
                let w = want[h.doc];
                assert!(
                    (f64::from(h.score) - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "query {q} doc {}: {} vs {w}",
                    h.doc,
                    h.score
                );
            }
        }
        let top2 = ranker.rank(QUERIES, DOCS, 2).unwrap();
        for q in 0..QUERIES.len() {
            assert_eq!(top2[q], hits[q][..2].to_vec());
        }
    }

    #[test]
    fn a_model_without_a_cosine_output_is_refused() {
        let g = crate::testing::program("model m() { input x: f32[N, 3]  output y = relu(x) }")
            .unwrap();
        let e = encoder_graph(&g).unwrap_err();
        assert!(e.contains("not a two-tower scorer"), "{e}");
    }
}
