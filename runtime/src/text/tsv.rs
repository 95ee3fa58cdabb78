//! Training files of `query<TAB>positive[<TAB>negative ...]` lines and
//! seeded in-batch negative sampling.
//!
//! **Format**: UTF-8; lines end with `\n` or `\r\n`; fields are separated by
//! single tabs (no quoting). Lines that are empty (after removing the `\r`)
//! are skipped. Every other line needs a query and a positive document; no
//! field may be empty or whitespace only; every line must give the same
//! number of negatives (0 or more). Errors name the file and the 1-based
//! line.
//!
//! **Sampling** (when the file gives no negatives): for example `i` of a
//! batch, the candidates are the positives of the other examples of the
//! batch whose text differs from example `i`'s positive (so the positive is
//! never its own negative, even when duplicated), in batch order. `k` of
//! them are drawn without replacement by a partial Fisher-Yates shuffle:
//! draw `s` (0-based) takes `u = splitmix64(splitmix64(seed ^ i) + s)` and
//! swaps candidate `s` with candidate `s + floor(u * (m - s) / 2^64)`
//! (`m` candidates); the first `k` after the shuffle are the negatives, in
//! that order. [`crate::counter::splitmix64`] and integer arithmetic make the
//! result the same for the same seed and batch on every platform. Callers
//! pass a different seed per batch (e.g. `seed + batch index`).

use super::TextError;
use crate::counter::splitmix64;
use std::path::Path;

/// One training example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    /// The query text.
    pub query: String,
    /// The clicked (relevant) document.
    pub positive: String,
    /// Given unclicked documents (empty: sample them).
    pub negatives: Vec<String>,
}

/// Reads a TSV training file (see the module doc for the rules).
pub fn read_tsv(path: &Path) -> Result<Vec<Example>, TextError> {
    let bytes = std::fs::read(path).map_err(|source| TextError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_tsv(&bytes, path)
}

/// Parses the bytes of a TSV training file; `path` only names it in errors.
pub fn parse_tsv(bytes: &[u8], path: &Path) -> Result<Vec<Example>, TextError> {
    let mut out: Vec<Example> = Vec::new();
    let mut first_line = 0;
    for (i, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let line = i + 1;
        let bad = |reason: String| TextError::Line {
            path: path.to_path_buf(),
            line,
            reason,
        };
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.is_empty() {
            continue;
        }
        let text = std::str::from_utf8(raw).map_err(|e| bad(format!("not UTF-8 ({e})")))?;
        let fields: Vec<&str> = text.split('\t').collect();
        if fields.len() < 2 {
            return Err(bad(
                "expected `query<TAB>positive[<TAB>negative ...]`, found no tab".into(),
            ));
        }
        if let Some(f) = fields.iter().position(|f| f.trim().is_empty()) {
            let what = match f {
                0 => "the query".to_string(),
                1 => "the positive document".to_string(),
                n => format!("negative {}", n - 1),
            };
            return Err(bad(format!("field {} ({what}) is empty", f + 1)));
        }
        let ex = Example {
            query: fields[0].to_string(),
            positive: fields[1].to_string(),
            negatives: fields[2..].iter().map(|s| s.to_string()).collect(),
        };
        if let Some(first) = out.first() {
            if first.negatives.len() != ex.negatives.len() {
                return Err(bad(format!(
                    "{} negatives, but line {first_line} gives {} (every line must give the same number)",
                    ex.negatives.len(),
                    first.negatives.len()
                )));
            }
        } else {
            first_line = line;
        }
        out.push(ex);
    }
    if out.is_empty() {
        return Err(TextError::File {
            path: path.to_path_buf(),
            reason: "no examples (every line is empty)".into(),
        });
    }
    Ok(out)
}

/// For every example of `batch`, the batch positions of `k` sampled
/// negatives (their positives are the negative documents); see the module
/// doc. Fails if some example has fewer than `k` candidates.
pub fn sample_negatives(
    batch: &[Example],
    k: usize,
    seed: u64,
) -> Result<Vec<Vec<usize>>, TextError> {
    let keys: Vec<&str> = batch.iter().map(|e| e.positive.as_str()).collect();
    let mut out = Vec::with_capacity(batch.len());
    for i in 0..batch.len() {
        let mut cand = Vec::new();
        let m = negative_positions(&keys, i, k, seed, &mut cand);
        if m < k {
            return Err(TextError::Invalid(format!(
                "example {i} of a batch of {} has {m} other distinct documents to sample {k} negatives from; use larger batches or fewer negatives",
                batch.len()
            )));
        }
        out.push(cand);
    }
    Ok(out)
}

/// The sampling rule of the module doc for position `i` of a batch whose
/// positives have the identities `keys` (equal keys = the same document):
/// fills `cand` with the drawn positions, at most `k`, and returns how many
/// candidates there were (fewer than `k` means all of them were drawn).
pub fn negative_positions<K: PartialEq>(
    keys: &[K],
    i: usize,
    k: usize,
    seed: u64,
    cand: &mut Vec<usize>,
) -> usize {
    cand.clear();
    cand.extend((0..keys.len()).filter(|&j| j != i && keys[j] != keys[i]));
    let m = cand.len();
    let state = splitmix64(seed ^ i as u64);
    for s in 0..k.min(m) {
        let u = splitmix64(state.wrapping_add(s as u64));
        let j = s + ((u128::from(u) * (m - s) as u128) >> 64) as usize;
        cand.swap(s, j);
    }
    cand.truncate(k);
    m
}

/// The documents of a batch as `N * (1 + k)` texts, row-major `[N, 1 + k]`
/// (positive first): the given negatives when the examples have them (there
/// must be exactly `k`), else `k` sampled ones ([`sample_negatives`]).
pub fn batch_documents(batch: &[Example], k: usize, seed: u64) -> Result<Vec<&str>, TextError> {
    let given = batch.first().map_or(0, |e| e.negatives.len());
    let mut docs = Vec::with_capacity(batch.len() * (1 + k));
    if given > 0 {
        if let Some((i, e)) = batch
            .iter()
            .enumerate()
            .find(|(_, e)| e.negatives.len() != k)
        {
            return Err(TextError::Invalid(format!(
                "example {i} gives {} negatives, the model takes {k}",
                e.negatives.len()
            )));
        }
        for e in batch {
            docs.push(e.positive.as_str());
            docs.extend(e.negatives.iter().map(String::as_str));
        }
    } else {
        let picks = sample_negatives(batch, k, seed)?;
        for (e, p) in batch.iter().zip(&picks) {
            docs.push(e.positive.as_str());
            docs.extend(p.iter().map(|&j| batch[j].positive.as_str()));
        }
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(q: &str, p: &str) -> Example {
        Example {
            query: q.into(),
            positive: p.into(),
            negatives: Vec::new(),
        }
    }

    #[test]
    fn parses_lines_with_crlf_and_blank_lines() {
        let text = b"cheap flights\tbook a flight\r\n\r\nred shoes\tshoe shop\n";
        let got = parse_tsv(text, Path::new("t.tsv")).expect("valid");
        assert_eq!(
            got,
            [
                ex("cheap flights", "book a flight"),
                ex("red shoes", "shoe shop")
            ]
        );
        let text = "q1\tp1\tn1\tn2\nq2\tp2\tn3\tn4";
        let got = parse_tsv(text.as_bytes(), Path::new("t.tsv")).expect("valid");
        assert_eq!(got[1].negatives, ["n3", "n4"]);
    }

    #[test]
    fn errors_name_file_and_line() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"q\tp\nno tab here\n",
                "t.tsv:2: expected `query<TAB>positive",
            ),
            (b"q\tp\n\tp\n", "t.tsv:2: field 1 (the query) is empty"),
            (
                b"q\t  \n",
                "t.tsv:1: field 2 (the positive document) is empty",
            ),
            (b"q\tp\tn\t\r\n", "t.tsv:1: field 4 (negative 2) is empty"),
            (
                b"\nq\tp\tn\nq\tp\n",
                "t.tsv:3: 0 negatives, but line 2 gives 1",
            ),
            (b"q\tp\nq\t\xff\n", "t.tsv:2: not UTF-8"),
            (b"\r\n\n", "t.tsv: no examples"),
        ];
        for (bytes, want) in cases {
            let e = parse_tsv(bytes, Path::new("t.tsv"))
                .expect_err(want)
                .to_string();
            assert!(e.starts_with(want), "{e} should start with {want}");
        }
        let e = read_tsv(Path::new("/nonexistent/x.tsv"))
            .expect_err("missing")
            .to_string();
        assert!(e.contains("/nonexistent/x.tsv"), "{e}");
    }

    #[test]
    fn sampling_excludes_the_positive_and_is_deterministic() {
        let batch: Vec<Example> = ["a", "b", "c", "a", "d", "e"]
            .iter()
            .enumerate()
            .map(|(i, p)| ex(&format!("q{i}"), p))
            .collect();
        let picks = sample_negatives(&batch, 3, 7).expect("enough");
        for (i, p) in picks.iter().enumerate() {
            assert_eq!(p.len(), 3);
            let mut uniq = p.clone();
            uniq.sort();
            uniq.dedup();
            assert_eq!(uniq.len(), 3, "without replacement: {p:?}");
            for &j in p {
                assert_ne!(j, i);
                assert_ne!(
                    batch[j].positive, batch[i].positive,
                    "example {i} got its positive"
                );
            }
        }
        assert_eq!(sample_negatives(&batch, 3, 7).expect("same"), picks);
        // Different seeds give different draws somewhere (a fixed-seed
        // check, not a statistical one).
        assert!((0..20).any(|s| sample_negatives(&batch, 3, s).expect("ok") != picks));
        // Example 0 ("a") has 4 candidates (b, c, d, e; the other "a" is
        // excluded); asking for 5 fails and names the batch.
        let e = sample_negatives(&batch, 5, 0)
            .expect_err("too few")
            .to_string();
        assert!(e.contains("batch of 6"), "{e}");
    }

    /// Pinned against a Python transcription of the module-doc algorithm
    /// (run once with `/work/venv/bin/python`): the draws are platform-free.
    #[test]
    fn sampling_matches_the_documented_algorithm() {
        let batch: Vec<Example> = (0..5).map(|i| ex("q", &format!("d{i}"))).collect();
        assert_eq!(sample_negatives(&batch, 2, 42).expect("ok"), SAMPLE_PINS);
    }

    const SAMPLE_PINS: [[usize; 2]; 5] = [[2, 4], [4, 3], [0, 4], [2, 1], [3, 2]];

    #[test]
    fn batch_documents_put_the_positive_first() {
        let batch = vec![ex("q0", "p0"), ex("q1", "p1"), ex("q2", "p2")];
        let docs = batch_documents(&batch, 2, 1).expect("ok");
        assert_eq!(docs.len(), 9);
        for (i, row) in docs.chunks(3).enumerate() {
            assert_eq!(row[0], batch[i].positive);
            assert!(!row[1..].contains(&row[0]));
        }
        let given = vec![Example {
            query: "q".into(),
            positive: "p".into(),
            negatives: vec!["n1".into(), "n2".into()],
        }];
        assert_eq!(
            batch_documents(&given, 2, 0).expect("given"),
            ["p", "n1", "n2"]
        );
        let e = batch_documents(&given, 3, 0)
            .expect_err("2 != 3")
            .to_string();
        assert!(e.contains("gives 2 negatives, the model takes 3"), "{e}");
    }
}
