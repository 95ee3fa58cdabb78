//! `netc run FILE --queries Q.txt --docs D.txt [--top K] [--output OUT.json]`:
//! ranks every document for every query with a two-tower text model
//! (`netc::retrieval`) and prints the top hits with their scores, or
//! writes them as JSON: `[{"query": 0, "hits": [[doc_line, score], ...]},
//! ...]`, lines counted from 0.

use super::Failure;
use netc::ir::Graph;
use netc::options::CompileOptions;
use netc::retrieval::{Hit, Ranker};
use netc_runtime::fsutil::write_atomic;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// What a ranking run needs besides the model.
pub struct RankRequest<'a> {
    /// One query per line.
    pub queries: &'a Path,
    /// One document per line.
    pub docs: &'a Path,
    /// Hits kept per query.
    pub top: usize,
    /// Queries encoded per run of the compiled encoder.
    pub batch: usize,
    /// Weights (and the vocabulary files beside them).
    pub weights: Option<&'a PathBuf>,
    /// Seed of the default initialisation, without weights.
    pub seed: u64,
    /// Where the JSON goes; printed hits without it.
    pub output: Option<&'a PathBuf>,
}

/// Characters of a document shown per printed hit.
const SHOWN: usize = 80;

/// Runs the ranking.
pub fn rank(g: &Graph, req: &RankRequest, options: CompileOptions) -> Result<(), Failure> {
    let queries = read_lines(req.queries)?;
    let docs = read_lines(req.docs)?;
    if queries.is_empty() || docs.is_empty() {
        return Err(Failure::Error(format!(
            "nothing to rank: {} queries in {}, {} documents in {}",
            queries.len(),
            req.queries.display(),
            docs.len(),
            req.docs.display()
        )));
    }
    let weights = req.weights.map(PathBuf::as_path);
    let mut ranker =
        Ranker::new(g, weights, req.seed, req.batch, options).map_err(Failure::error)?;
    let q: Vec<&str> = queries.iter().map(String::as_str).collect();
    let d: Vec<&str> = docs.iter().map(String::as_str).collect();
    let hits = ranker.rank(&q, &d, req.top).map_err(Failure::error)?;
    match req.output {
        Some(path) => {
            write_atomic(path, hits_json(&hits).as_bytes())
                .map_err(|e| Failure::Error(format!("{}: {e}", path.display())))?;
            eprintln!(
                "ranked {} documents for {} queries; top {} written to {}",
                d.len(),
                q.len(),
                req.top.min(d.len()),
                path.display()
            );
        }
        None => print!("{}", hits_text(&q, &d, &hits)),
    }
    Ok(())
}

/// The lines of a UTF-8 text file (a final newline ends the last line;
/// `\r\n` accepted).
fn read_lines(path: &Path) -> Result<Vec<String>, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::Error(format!("{}: {e}", path.display())))?;
    Ok(text
        .lines()
        .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
        .collect())
}

/// `[{"query": 0, "hits": [[doc, score], ...]}, ...]`, one query per line.
fn hits_json(hits: &[Vec<Hit>]) -> String {
    let mut s = String::from("[\n");
    for (q, hs) in hits.iter().enumerate() {
        let list: Vec<String> = hs
            .iter()
            .map(|h| format!("[{}, {}]", h.doc, json_number(h.score)))
            .collect();
        let sep = if q + 1 < hits.len() { "," } else { "" };
        let _ = writeln!(
            s,
            "{{\"query\": {q}, \"hits\": [{}]}}{sep}",
            list.join(", ")
        );
    }
    s.push_str("]\n");
    s
}

/// A score as a JSON number (a non-finite score, impossible for a clamped
/// cosine, would be written as null).
fn json_number(x: f32) -> String {
    if x.is_finite() {
        format!("{x}")
    } else {
        "null".into()
    }
}

/// The printed form: each query, then its hits as `score  line: text`.
fn hits_text(queries: &[&str], docs: &[&str], hits: &[Vec<Hit>]) -> String {
    let mut s = String::new();
    for (q, hs) in hits.iter().enumerate() {
        let _ = writeln!(s, "query {q}: {}", queries[q]);
        for h in hs {
            let text: String = docs[h.doc].chars().take(SHOWN).collect();
            let more = if docs[h.doc].chars().count() > SHOWN {
                "..."
            } else {
                ""
            };
            let _ = writeln!(s, "  {:>9.4}  {:>6}: {text}{more}", h.score, h.doc);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lists_every_query_with_its_hits_in_order() {
        let hits = vec![
            vec![
                Hit { doc: 2, score: 9.5 },
                Hit {
                    doc: 0,
                    score: -1.25,
                },
            ],
            vec![],
        ];
        assert_eq!(
            hits_json(&hits),
            "[\n{\"query\": 0, \"hits\": [[2, 9.5], [0, -1.25]]},\n{\"query\": 1, \"hits\": []}\n]\n"
        );
    }
}
