//! Ids for letter trigrams and words: a vocabulary built from a corpus and
//! kept in a small text file, or a stable hash into a fixed dimension.
//!
//! **Vocabulary building**: count every token of the corpus; keep those seen
//! at least `min_count` times; order by count (most frequent first), ties
//! by the tokens' UTF-8 bytes (lexicographic, = code point order); keep the
//! first `max_size`. A token's id is its rank (trigrams) or 2 + its rank
//! (words: id 0 is padding, 1 is unknown).
//!
//! **Vocabulary file**: UTF-8, one token per line in id order, each line
//! ended by `\n` (a `\r` before it is accepted when loading). Lines must be
//! non-empty, hold no whitespace or control characters, and not repeat;
//! trigram files hold exactly three characters per line. Saving is atomic
//! ([`crate::fsutil::write_atomic`]: temporary file, fsync, rename, fsync
//! of the directory). Loading errors name the file and the 1-based line.
//!
//! **Hashing**: `fnv1a64(token) mod dim` for trigrams and `2 + fnv1a64(word)
//! mod (dim - 2)` for words, with [`crate::counter::fnv1a64`] (FNV-1a 64
//! over the UTF-8 bytes: offset 0xcbf29ce484222325, prime 0x100000001b3).
//! Integer arithmetic only, so ids are the same on every platform and run.

use super::trigrams::{for_each_trigram, words};
use super::TextError;
use crate::counter::fnv1a64;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The default dimension of hashed trigram ids (Huang et al. 2013).
pub const DEFAULT_HASH_DIM: usize = 30_000;

/// The word id of padding positions.
pub const PAD_ID: i64 = 0;

/// The word id of words outside the vocabulary.
pub const UNKNOWN_ID: i64 = 1;

/// The trigram vocabulary file kept beside a weight file: the weight file's
/// last extension replaced by `trigrams.txt` (`m.safetensors` ->
/// `m.trigrams.txt`).
pub fn trigram_vocab_path(weights: &Path) -> PathBuf {
    weights.with_extension("trigrams.txt")
}

/// The word vocabulary file kept beside a weight file: `m.safetensors` ->
/// `m.words.txt`.
pub fn word_vocab_path(weights: &Path) -> PathBuf {
    weights.with_extension("words.txt")
}

/// Limits applied when building a vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuildOptions {
    /// Keep at most this many tokens (`None`: all).
    pub max_size: Option<usize>,
    /// Drop tokens seen fewer times than this (1 keeps all).
    pub min_count: u64,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            max_size: None,
            min_count: 1,
        }
    }
}

/// An ordered list of distinct tokens; a token's position is its rank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vocabulary {
    tokens: Vec<String>,
    rank: HashMap<String, usize>,
}

impl Vocabulary {
    /// Builds a vocabulary from token occurrences (see the module doc for
    /// the order and the limits).
    pub fn build<I, S>(tokens: I, opts: BuildOptions) -> Vocabulary
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut counts: HashMap<String, u64> = HashMap::new();
        for t in tokens {
            count(&mut counts, t.as_ref());
        }
        Vocabulary::from_counts(counts, opts)
    }

    /// The vocabulary of counted tokens (see [`Vocabulary::build`]).
    fn from_counts(counts: HashMap<String, u64>, opts: BuildOptions) -> Vocabulary {
        let mut kept: Vec<(String, u64)> = counts
            .into_iter()
            .filter(|(_, c)| *c >= opts.min_count)
            .collect();
        kept.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        if let Some(m) = opts.max_size {
            kept.truncate(m);
        }
        Vocabulary::from_tokens(kept.into_iter().map(|(t, _)| t).collect())
    }

    /// The vocabulary of `tokens` in this order (distinct).
    fn from_tokens(tokens: Vec<String>) -> Vocabulary {
        let rank = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i))
            .collect();
        Vocabulary { tokens, rank }
    }

    /// The tokens in rank order.
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }

    /// The number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the vocabulary holds no token.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The rank of `token`, if it is in the vocabulary.
    pub fn rank(&self, token: &str) -> Option<usize> {
        self.rank.get(token).copied()
    }

    /// Writes the vocabulary file atomically (one token per line).
    pub fn save(&self, path: &Path) -> Result<(), TextError> {
        let mut text = String::new();
        for t in &self.tokens {
            text.push_str(t);
            text.push('\n');
        }
        crate::fsutil::write_atomic(path, text.as_bytes()).map_err(|source| TextError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads a vocabulary file; `chars` requires every token to have exactly
    /// that many characters (3 for trigram files).
    pub fn load(path: &Path, chars: Option<usize>) -> Result<Vocabulary, TextError> {
        let bytes = std::fs::read(path).map_err(|source| TextError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut tokens = Vec::new();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let body = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        if body.is_empty() {
            return Err(TextError::File {
                path: path.to_path_buf(),
                reason: "the vocabulary is empty".into(),
            });
        }
        for (i, raw) in body.split(|b| *b == b'\n').enumerate() {
            let line = i + 1;
            let bad = |reason: String| TextError::Line {
                path: path.to_path_buf(),
                line,
                reason,
            };
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            let token = std::str::from_utf8(raw).map_err(|e| bad(format!("not UTF-8 ({e})")))?;
            if token.is_empty() {
                return Err(bad("empty line (one token per line expected)".into()));
            }
            if let Some(c) = token.chars().find(|c| c.is_whitespace() || c.is_control()) {
                return Err(bad(format!(
                    "`{token}` holds the whitespace or control character U+{:04X}",
                    u32::from(c)
                )));
            }
            if let Some(n) = chars {
                let got = token.chars().count();
                if got != n {
                    return Err(bad(format!(
                        "`{token}` has {got} characters, a letter trigram has {n}"
                    )));
                }
            }
            if let Some(first) = seen.insert(token, line) {
                return Err(bad(format!("`{token}` repeats line {first}")));
            }
            tokens.push(token.to_string());
        }
        Ok(Vocabulary::from_tokens(tokens))
    }
}

/// Adds one occurrence of `token`, allocating only for a new token.
fn count(counts: &mut HashMap<String, u64>, token: &str) {
    match counts.get_mut(token) {
        Some(c) => *c += 1,
        None => {
            counts.insert(token.to_string(), 1);
        }
    }
}

/// Where ids come from: a vocabulary's ranks or a hash into a dimension
/// (kept private so that a dimension is always checked).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Source {
    Vocabulary(Vocabulary),
    Hashed(usize),
}

impl Source {
    /// The vocabulary, unless ids are hashed.
    fn vocabulary(&self) -> Option<&Vocabulary> {
        match self {
            Source::Vocabulary(v) => Some(v),
            Source::Hashed(_) => None,
        }
    }
}

/// How letter trigrams become column ids of the sparse input: a
/// vocabulary (id = rank; trigrams outside it are dropped and counted by
/// the bag builders) or `fnv1a64(trigram) mod dim` (every trigram gets an
/// id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrigramIds(Source);

impl TrigramIds {
    /// Hashing into [`DEFAULT_HASH_DIM`] columns.
    pub fn hashed_default() -> TrigramIds {
        TrigramIds(Source::Hashed(DEFAULT_HASH_DIM))
    }

    /// Hashing into `dim` columns (at least 1).
    pub fn hashed(dim: usize) -> Result<TrigramIds, TextError> {
        if dim == 0 {
            return Err(TextError::Invalid(
                "hashed trigram ids need a dimension of at least 1".into(),
            ));
        }
        Ok(TrigramIds(Source::Hashed(dim)))
    }

    /// A vocabulary of the trigrams of `texts` (see [`Vocabulary::build`]).
    pub fn build<'a>(
        texts: impl IntoIterator<Item = &'a str>,
        opts: BuildOptions,
    ) -> Result<TrigramIds, TextError> {
        let mut counts = HashMap::new();
        for text in texts {
            for w in words(text) {
                for_each_trigram(&w, |t| count(&mut counts, t));
            }
        }
        let v = Vocabulary::from_counts(counts, opts);
        if v.is_empty() {
            return Err(TextError::Invalid(
                "the corpus yields no letter trigram within the limits".into(),
            ));
        }
        Ok(TrigramIds(Source::Vocabulary(v)))
    }

    /// Loads a trigram vocabulary file (three characters per line).
    pub fn load(path: &Path) -> Result<TrigramIds, TextError> {
        Vocabulary::load(path, Some(3)).map(|v| TrigramIds(Source::Vocabulary(v)))
    }

    /// The vocabulary, unless ids are hashed (save it with
    /// [`Vocabulary::save`]).
    pub fn vocabulary(&self) -> Option<&Vocabulary> {
        self.0.vocabulary()
    }

    /// The number of columns: the vocabulary size or the hash dimension.
    pub fn dim(&self) -> usize {
        match &self.0 {
            Source::Vocabulary(v) => v.len(),
            Source::Hashed(dim) => *dim,
        }
    }

    /// The column of `trigram`, `None` if it is outside the vocabulary.
    pub fn id(&self, trigram: &str) -> Option<usize> {
        match &self.0 {
            Source::Vocabulary(v) => v.rank(trigram),
            Source::Hashed(dim) => Some(hash_mod(trigram, *dim)),
        }
    }
}

/// How words become ids for LSTM-DSSM: 0 is padding, 1 unknown, real words
/// from 2: a vocabulary (id = 2 + rank, other words [`UNKNOWN_ID`]) or
/// `2 + fnv1a64(word) mod (dim - 2)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WordIds(Source);

impl WordIds {
    /// Hashing words into a table of `dim` rows (at least 3).
    pub fn hashed(dim: usize) -> Result<WordIds, TextError> {
        if dim < 3 {
            return Err(TextError::Invalid(format!(
                "hashed word ids need a table of at least 3 rows (padding, unknown, words), got {dim}"
            )));
        }
        Ok(WordIds(Source::Hashed(dim)))
    }

    /// A vocabulary of the words of `texts`; `max_size` counts real words
    /// only (the table has two more rows).
    pub fn build<'a>(
        texts: impl IntoIterator<Item = &'a str>,
        opts: BuildOptions,
    ) -> Result<WordIds, TextError> {
        let v = Vocabulary::build(texts.into_iter().flat_map(words), opts);
        if v.is_empty() {
            return Err(TextError::Invalid(
                "the corpus yields no word within the limits".into(),
            ));
        }
        Ok(WordIds(Source::Vocabulary(v)))
    }

    /// Loads a word vocabulary file (its first line gets id 2).
    pub fn load(path: &Path) -> Result<WordIds, TextError> {
        Vocabulary::load(path, None).map(|v| WordIds(Source::Vocabulary(v)))
    }

    /// The vocabulary, unless ids are hashed.
    pub fn vocabulary(&self) -> Option<&Vocabulary> {
        self.0.vocabulary()
    }

    /// The embedding table size: 2 + the vocabulary size, or the hash
    /// dimension.
    pub fn dim(&self) -> usize {
        match &self.0 {
            Source::Vocabulary(v) => v.len() + 2,
            Source::Hashed(dim) => *dim,
        }
    }

    /// The id of a normalised word: never [`PAD_ID`]; [`UNKNOWN_ID`] for
    /// words outside the vocabulary.
    pub fn id(&self, word: &str) -> i64 {
        let id = match &self.0 {
            Source::Vocabulary(v) => v.rank(word).map(|r| r + 2),
            Source::Hashed(dim) => Some(2 + hash_mod(word, dim - 2)),
        };
        id.map_or(UNKNOWN_ID, |i| i as i64)
    }
}

/// `fnv1a64(token) mod dim` (`dim` > 0).
fn hash_mod(token: &str, dim: usize) -> usize {
    (fnv1a64(token) % dim as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_files_sit_beside_the_weights() {
        let w = Path::new("runs/dssm.v2.safetensors");
        assert_eq!(
            trigram_vocab_path(w),
            Path::new("runs/dssm.v2.trigrams.txt")
        );
        assert_eq!(word_vocab_path(w), Path::new("runs/dssm.v2.words.txt"));
        assert_eq!(
            trigram_vocab_path(Path::new("m")),
            Path::new("m.trigrams.txt")
        );
    }

    #[test]
    fn build_orders_by_count_then_bytes_and_applies_limits() {
        let toks = ["b", "a", "c", "b", "a", "d", "b", "é", "é"];
        let v = Vocabulary::build(toks, BuildOptions::default());
        assert_eq!(v.tokens(), ["b", "a", "é", "c", "d"]);
        let v = Vocabulary::build(
            toks,
            BuildOptions {
                max_size: Some(2),
                min_count: 1,
            },
        );
        assert_eq!(v.tokens(), ["b", "a"]);
        let v = Vocabulary::build(
            toks,
            BuildOptions {
                max_size: None,
                min_count: 2,
            },
        );
        assert_eq!(v.tokens(), ["b", "a", "é"]);
        assert_eq!(v.rank("é"), Some(2));
        assert_eq!(v.rank("c"), None);
    }

    #[test]
    fn trigram_vocabulary_round_trips_through_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("trigrams.txt");
        let ids = TrigramIds::build(["good food", "Über GOOD", "a"], BuildOptions::default())
            .expect("build");
        let v = ids.vocabulary().expect("a vocabulary");
        // od# and #go occur 3 and 2 times... check the head by hand:
        // od#: good, food, good = 3; ood: 3; #go: 2; goo: 2; then count 1.
        assert_eq!(&v.tokens()[..4], ["od#", "ood", "#go", "goo"]);
        v.save(&path).expect("save");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("od#\nood\n#go\ngoo\n"), "{text}");
        assert_eq!(TrigramIds::load(&path).expect("load"), ids);
        assert_eq!(ids.dim(), v.len());
        assert_eq!(ids.id("ood"), Some(1));
        assert_eq!(ids.id("xyz"), None);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);
    }

    #[test]
    fn word_vocabulary_reserves_padding_and_unknown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("words.txt");
        let ids = WordIds::build(["the cat", "the dog"], BuildOptions::default()).expect("build");
        assert_eq!(ids.id("the"), 2);
        assert_eq!(ids.id("cat"), 3);
        assert_eq!(ids.id("dog"), 4);
        assert_eq!(ids.id("emu"), UNKNOWN_ID);
        assert_eq!(ids.dim(), 5);
        let v = ids.vocabulary().expect("a vocabulary");
        v.save(&path).expect("save");
        assert_eq!(WordIds::load(&path).expect("load"), ids);
    }

    #[test]
    fn loading_errors_name_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases: &[(&[u8], &str)] = &[
            (b"#go\ngoo\n\nood\n", ":3: empty line"),
            (b"#go\r\ngoo\r\n#go\r\n", ":3: `#go` repeats line 1"),
            (b"#go\ngo\n", ":2: `go` has 2 characters"),
            (b"#go\ng o\n", ":2: `g o` holds the whitespace"),
            (b"#go\n\xff\xfeo\n", ":2: not UTF-8"),
            (b"", "the vocabulary is empty"),
        ];
        for (i, (bytes, want)) in cases.iter().enumerate() {
            let path = dir.path().join(format!("v{i}.txt"));
            std::fs::write(&path, bytes).expect("write");
            let err = TrigramIds::load(&path).expect_err("malformed").to_string();
            assert!(err.contains(&*path.to_string_lossy()), "{err}");
            assert!(err.contains(want), "{err} lacks {want}");
        }
        let missing = dir.path().join("missing.txt");
        let err = TrigramIds::load(&missing).expect_err("missing").to_string();
        assert!(err.contains("missing.txt"), "{err}");
        // Word files allow any length but still reject repeats.
        let path = dir.path().join("w.txt");
        std::fs::write(&path, "the\ncat\nthe\n").expect("write");
        let err = WordIds::load(&path).expect_err("repeat").to_string();
        assert!(err.contains("w.txt:3:"), "{err}");
    }

    /// Pinned ids from an independent implementation, computed once with
    /// `/work/venv/bin/python` (FNV-1a 64 written out in Python over
    /// `s.encode("utf-8")`, then `% 30000`; words `2 + h % (dim - 2)`).
    #[test]
    fn hashed_ids_match_an_independent_reference() {
        let ids = TrigramIds::hashed_default();
        assert_eq!(ids.dim(), 30_000);
        for (tri, want) in HASH_PINS {
            assert_eq!(ids.id(tri), Some(*want), "{tri}");
        }
        let words = WordIds::hashed(1000).expect("dim");
        for (w, want) in WORD_PINS {
            assert_eq!(words.id(w), *want, "{w}");
        }
        assert!(ids.vocabulary().is_none());
        assert!(TrigramIds::hashed(0).is_err());
        assert!(WordIds::hashed(2).is_err());
    }

    const HASH_PINS: &[(&str, usize)] = &[
        ("#go", 624),
        ("goo", 10092),
        ("ood", 13173),
        ("od#", 25719),
        ("#a#", 24318),
        ("#üb", 8541),
        ("日本#", 6534),
        ("i\u{307}#", 8602),
    ];
    const WORD_PINS: &[(&str, i64)] =
        &[("good", 978), ("über", 969), ("日本語", 793), ("x86", 931)];
}
