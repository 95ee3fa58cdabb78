//! Batches of texts as model inputs: CSR bags of letter-trigram ids (DSSM:
//! one bag per text; CNN-DSSM: one bag per word) and word-id matrices
//! (LSTM-DSSM), with their safetensors names.
//!
//! A sparse input `q: sparse f32[..., V]` is a CSR matrix with one row (bag)
//! per position of the leading dims, in row-major order, stored as three
//! 1-D tensors: `q.indices` (i64, nnz column ids), `q.offsets` (i64, rows +
//! 1: bag `r` is `indices[offsets[r]..offsets[r+1]]`) and `q.values` (f32,
//! nnz counts; when absent every stored entry counts 1). Bags built here
//! hold their ids sorted ascending with duplicates merged (the count goes
//! to `values`).
//!
//! Padding and truncation:
//! - CNN-DSSM: a text keeps its first `words` words; shorter texts are
//!   padded *at the end* with empty bags (an empty bag is an all-zero input
//!   row, exactly what `nn.Conv1d`'s zero padding feeds at the edges).
//! - LSTM-DSSM: a text keeps its first `len` words and is padded *at the
//!   front* with [`PAD_ID`] (right-aligned). The model reads only the LSTM's
//!   last hidden state and takes no length tensor, so the real words must
//!   come last: with end padding the state would be the one after reading
//!   padding tokens. Front padding leaves only the (learned) drift of the
//!   state over the padding before the first real word.

use super::trigrams::{for_each_trigram, words};
use super::vocab::{TrigramIds, WordIds, PAD_ID, UNKNOWN_ID};
use super::TextError;
use crate::{Storage, Tensor};

/// Rows of bags of column ids in CSR form (see the module doc).
#[derive(Clone, Debug, PartialEq)]
pub struct SparseBags {
    dim: usize,
    indices: Vec<i64>,
    offsets: Vec<i64>,
    values: Vec<f32>,
}

impl SparseBags {
    /// No rows yet, columns `0..dim`.
    pub fn new(dim: usize) -> SparseBags {
        SparseBags {
            dim,
            indices: Vec::new(),
            offsets: vec![0],
            values: Vec::new(),
        }
    }

    /// Appends one bag holding `ids` (any order, repeats counted); fails
    /// if an id is not below `dim`.
    pub fn push_bag(&mut self, ids: impl IntoIterator<Item = usize>) -> Result<(), TextError> {
        let mut pairs: Vec<(usize, f32)> = ids.into_iter().map(|i| (i, 1.0)).collect();
        if let Some((bad, _)) = pairs.iter().find(|(i, _)| *i >= self.dim) {
            return Err(TextError::Invalid(format!(
                "column id {bad} of bag {} is outside 0..{}",
                self.rows(),
                self.dim
            )));
        }
        self.push_pairs(&mut pairs);
        Ok(())
    }

    /// Appends a bag of in-range `(column, value)` pairs: sorted by column,
    /// equal columns merged by summing their values.
    fn push_pairs(&mut self, pairs: &mut [(usize, f32)]) {
        pairs.sort_by_key(|p| p.0);
        for &(col, val) in pairs.iter() {
            let start = self.offsets[self.offsets.len() - 1] as usize;
            match self.indices[start..].last() {
                Some(&last) if last == col as i64 => {
                    *self.values.last_mut().expect("values match indices") += val;
                }
                _ => {
                    self.indices.push(col as i64);
                    self.values.push(val);
                }
            }
        }
        self.offsets.push(self.indices.len() as i64);
    }

    /// The number of rows (bags).
    pub fn rows(&self) -> usize {
        self.offsets.len() - 1
    }

    /// The number of columns (the vocabulary or hash dimension).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The number of stored entries.
    pub fn nnz(&self) -> usize {
        self.indices.len()
    }

    /// Column ids of every stored entry, bag after bag.
    pub fn indices(&self) -> &[i64] {
        &self.indices
    }

    /// Bag boundaries: `rows + 1` entries from 0 to `nnz`.
    pub fn offsets(&self) -> &[i64] {
        &self.offsets
    }

    /// The count (weight) of every stored entry.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// Column ids and values of bag `row` (`None` past the last row).
    pub fn bag(&self, row: usize) -> Option<(&[i64], &[f32])> {
        let (s, e) = (*self.offsets.get(row)?, *self.offsets.get(row + 1)?);
        let r = s as usize..e as usize;
        Some((&self.indices[r.clone()], &self.values[r]))
    }

    /// The three tensors of sparse input `name`: `name.indices` (i64),
    /// `name.offsets` (i64) and `name.values` (f32), all 1-D.
    pub fn to_tensors(&self, name: &str) -> Vec<(String, Tensor)> {
        let vec = |s: Storage, n: usize| Tensor::new(&[n], s).expect("1-D length matches");
        vec![
            (
                format!("{name}.indices"),
                vec(Storage::I64(self.indices.clone()), self.nnz()),
            ),
            (
                format!("{name}.offsets"),
                vec(Storage::I64(self.offsets.clone()), self.offsets.len()),
            ),
            (
                format!("{name}.values"),
                vec(Storage::F32(self.values.clone()), self.nnz()),
            ),
        ]
    }

    /// Reads sparse input `name` from named tensors (e.g. a safetensors
    /// file's), checking: `name.indices` and `name.offsets` are present,
    /// 1-D and i64; offsets start at 0, never decrease and end at nnz;
    /// indices lie in `0..dim`; `name.values`, when present, is 1-D f32 of
    /// nnz finite entries (absent: all 1). Bags are brought to the
    /// canonical form (sorted, repeats merged by summing values).
    pub fn from_tensors(
        name: &str,
        dim: usize,
        tensors: &[(String, Tensor)],
    ) -> Result<SparseBags, TextError> {
        let find = |suffix: &str| {
            let full = format!("{name}.{suffix}");
            let t = tensors.iter().find(|(n, _)| *n == full).map(|(_, t)| t);
            (full, t)
        };
        let err = |n: &str, reason: String| TextError::Tensor {
            name: n.to_string(),
            reason,
        };
        let int_vec = |suffix: &str| -> Result<(String, Vec<i64>), TextError> {
            let (full, t) = find(suffix);
            let t = t.ok_or_else(|| err(&full, "missing".into()))?;
            match (t.shape(), t.storage()) {
                ([_], Storage::I64(v)) => Ok((full, v.clone())),
                _ => Err(err(
                    &full,
                    format!(
                        "expected a 1-D i64 tensor, got {}{:?}",
                        t.dtype(),
                        t.shape()
                    ),
                )),
            }
        };
        let (iname, indices) = int_vec("indices")?;
        let (oname, offsets) = int_vec("offsets")?;
        let nnz = indices.len();
        if offsets.first() != Some(&0) {
            return Err(err(
                &oname,
                "must start with 0 (it holds rows + 1 entries)".into(),
            ));
        }
        if let Some(w) = offsets.windows(2).position(|w| w[1] < w[0]) {
            return Err(err(
                &oname,
                format!(
                    "decreases at entry {}: {} then {}",
                    w + 1,
                    offsets[w],
                    offsets[w + 1]
                ),
            ));
        }
        if offsets[offsets.len() - 1] != nnz as i64 {
            return Err(err(
                &oname,
                format!(
                    "ends at {}, but `{iname}` holds {nnz} entries",
                    offsets[offsets.len() - 1]
                ),
            ));
        }
        if let Some(p) = indices
            .iter()
            .position(|&i| i < 0 || i as u64 >= dim as u64)
        {
            return Err(err(
                &iname,
                format!("entry {p} is {}, outside the columns 0..{dim}", indices[p]),
            ));
        }
        let values = match find("values") {
            (_, None) => vec![1.0; nnz],
            (vname, Some(t)) => match (t.shape(), t.storage()) {
                ([n], Storage::F32(v)) if *n == nnz => {
                    if let Some(p) = v.iter().position(|x| !x.is_finite()) {
                        return Err(err(&vname, format!("entry {p} is {}", v[p])));
                    }
                    v.clone()
                }
                _ => {
                    return Err(err(
                        &vname,
                        format!(
                            "expected a 1-D f32 tensor of {nnz} entries (as `{iname}`), got {}{:?}",
                            t.dtype(),
                            t.shape()
                        ),
                    ))
                }
            },
        };
        let mut bags = SparseBags::new(dim);
        for w in offsets.windows(2) {
            let r = w[0] as usize..w[1] as usize;
            let mut pairs: Vec<(usize, f32)> = indices[r.clone()]
                .iter()
                .zip(&values[r])
                .map(|(&i, &v)| (i as usize, v))
                .collect();
            bags.push_pairs(&mut pairs);
        }
        Ok(bags)
    }
}

/// Bags built from texts, with the number of trigram occurrences dropped
/// because the vocabulary does not hold them.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoded {
    /// The bags.
    pub bags: SparseBags,
    /// Trigram occurrences outside the vocabulary (always 0 when hashing).
    pub unknown: usize,
}

/// Appends to `cols` the ids of the trigrams of `word` that `ids` knows,
/// counting the others in `unknown`.
fn push_ids(ids: &TrigramIds, word: &str, cols: &mut Vec<usize>, unknown: &mut usize) {
    for_each_trigram(word, |t| match ids.id(t) {
        Some(id) => cols.push(id),
        None => *unknown += 1,
    });
}

/// DSSM: one bag of letter-trigram ids per text (`[N, V]`, rows = N).
pub fn text_bags(texts: &[&str], ids: &TrigramIds) -> Encoded {
    let mut bags = SparseBags::new(ids.dim());
    let mut unknown = 0;
    let mut cols = Vec::new();
    for text in texts {
        cols.clear();
        for w in words(text) {
            push_ids(ids, &w, &mut cols, &mut unknown);
        }
        bags.push_bag(cols.iter().copied())
            .expect("TrigramIds ids are below its dim");
    }
    Encoded { bags, unknown }
}

/// CNN-DSSM: one bag per word, `words` per text (`[N, words, V]`, rows =
/// N * words): the first `words` words, then empty bags.
pub fn word_bags(texts: &[&str], ids: &TrigramIds, words_per_text: usize) -> Encoded {
    let mut bags = SparseBags::new(ids.dim());
    let mut unknown = 0;
    let mut cols = Vec::new();
    for text in texts {
        let ws = words(text);
        for w in ws.iter().take(words_per_text) {
            cols.clear();
            push_ids(ids, w, &mut cols, &mut unknown);
            bags.push_bag(cols.iter().copied())
                .expect("TrigramIds ids are below its dim");
        }
        for _ in ws.len()..words_per_text {
            bags.push_bag([]).expect("an empty bag is valid");
        }
    }
    Encoded { bags, unknown }
}

/// LSTM-DSSM word ids: `rows` texts of `len` ids each, row-major, padded at
/// the front with [`PAD_ID`] (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WordIdMatrix {
    /// The number of texts.
    pub rows: usize,
    /// Ids per text (the model's `words`).
    pub len: usize,
    /// `rows * len` ids.
    pub ids: Vec<i64>,
    /// Words mapped to [`UNKNOWN_ID`] (always 0 when hashing).
    pub unknown: usize,
}

impl WordIdMatrix {
    /// Builds the matrix: each text's first `len` words, right-aligned.
    pub fn build(texts: &[&str], ids: &WordIds, len: usize) -> WordIdMatrix {
        let mut out = Vec::with_capacity(texts.len() * len);
        let mut unknown = 0;
        for text in texts {
            let ws = words(text);
            let kept = ws.len().min(len);
            out.extend(std::iter::repeat_n(PAD_ID, len - kept));
            for w in &ws[..kept] {
                let id = ids.id(w);
                unknown += usize::from(id == UNKNOWN_ID);
                out.push(id);
            }
        }
        WordIdMatrix {
            rows: texts.len(),
            len,
            ids: out,
            unknown,
        }
    }

    /// The i64 tensor `name` of shape `leading ++ [len]`, where the product
    /// of `leading` must be `rows` (`[N]` for queries, `[N, 1 + k]` for
    /// documents).
    pub fn to_tensor(&self, name: &str, leading: &[usize]) -> Result<(String, Tensor), TextError> {
        let n: usize = leading.iter().product();
        if n != self.rows {
            return Err(TextError::Tensor {
                name: name.to_string(),
                reason: format!(
                    "leading dims {leading:?} hold {n} texts, the matrix has {}",
                    self.rows
                ),
            });
        }
        let mut shape = leading.to_vec();
        shape.push(self.len);
        let t = Tensor::new(&shape, Storage::I64(self.ids.clone())).expect("rows * len ids");
        Ok((name.to_string(), t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The dense `[rows, dim]` matrix of `bags`, the independent reference
    /// being a plain count of the input ids.
    fn dense(b: &SparseBags) -> Vec<Vec<f32>> {
        (0..b.rows())
            .map(|r| {
                let mut row = vec![0.0; b.dim()];
                let (i, v) = b.bag(r).expect("row");
                for (&c, &x) in i.iter().zip(v) {
                    row[c as usize] += x;
                }
                row
            })
            .collect()
    }

    fn counts(dim: usize, bags: &[Vec<usize>]) -> Vec<Vec<f32>> {
        bags.iter()
            .map(|b| {
                let mut row = vec![0.0; dim];
                for &c in b {
                    row[c] += 1.0;
                }
                row
            })
            .collect()
    }

    fn csr_invariants(b: &SparseBags) {
        let o = b.offsets();
        assert_eq!(o.len(), b.rows() + 1);
        assert_eq!(o[0], 0);
        assert_eq!(o[o.len() - 1] as usize, b.nnz());
        assert_eq!(b.values().len(), b.nnz());
        for r in 0..b.rows() {
            assert!(o[r] <= o[r + 1]);
            let (i, v) = b.bag(r).expect("row");
            assert!(i.windows(2).all(|w| w[0] < w[1]), "sorted, distinct: {i:?}");
            assert!(i.iter().all(|&c| c >= 0 && (c as usize) < b.dim()));
            assert!(v.iter().all(|&x| x >= 1.0));
        }
    }

    fn bags_strategy() -> impl Strategy<Value = (usize, Vec<Vec<usize>>)> {
        (1usize..40).prop_flat_map(|dim| {
            (
                Just(dim),
                prop::collection::vec(prop::collection::vec(0..dim, 0..12), 0..10),
            )
        })
    }

    proptest! {
        #[test]
        fn built_bags_are_canonical_csr((dim, input) in bags_strategy()) {
            let mut b = SparseBags::new(dim);
            for bag in &input {
                b.push_bag(bag.iter().copied()).expect("in range");
            }
            csr_invariants(&b);
            prop_assert_eq!(dense(&b), counts(dim, &input));
            let back = SparseBags::from_tensors("q", dim, &b.to_tensors("q")).expect("valid");
            prop_assert_eq!(&back, &b);
        }

        #[test]
        fn from_tensors_canonicalises_unsorted_repeated_entries(
            (dim, input) in bags_strategy(), seed in any::<u64>()
        ) {
            // Raw CSR with entries in a scrambled order and no merging,
            // values absent (every entry counts 1).
            let mut indices = Vec::new();
            let mut offsets = vec![0i64];
            for (r, bag) in input.iter().enumerate() {
                let mut bag = bag.clone();
                let k = bag.len().max(1);
                bag.rotate_left((seed as usize + r) % k);
                indices.extend(bag.iter().map(|&c| c as i64));
                offsets.push(indices.len() as i64);
            }
            let n = indices.len();
            let tensors = vec![
                ("d.indices".to_string(), Tensor::new(&[n], Storage::I64(indices)).expect("1-D")),
                ("d.offsets".to_string(), Tensor::new(&[input.len() + 1], Storage::I64(offsets)).expect("1-D")),
            ];
            let b = SparseBags::from_tensors("d", dim, &tensors).expect("valid");
            csr_invariants(&b);
            prop_assert_eq!(dense(&b), counts(dim, &input));
        }
    }

    /// Named tensors, as a safetensors file holds them.
    type Named = Vec<(String, Tensor)>;

    fn raw(name: &str, indices: Vec<i64>, offsets: Vec<i64>, values: Option<Tensor>) -> Named {
        let mut v = vec![
            (
                format!("{name}.indices"),
                Tensor::new(&[indices.len()], Storage::I64(indices)).expect("1-D"),
            ),
            (
                format!("{name}.offsets"),
                Tensor::new(&[offsets.len()], Storage::I64(offsets)).expect("1-D"),
            ),
        ];
        if let Some(t) = values {
            v.push((format!("{name}.values"), t));
        }
        v
    }

    #[test]
    fn invalid_tensors_are_named() {
        let f32s = |v: Vec<f32>| Tensor::from_f32(&[v.len()], v).expect("1-D");
        let cases: Vec<(Named, &str, &str)> = vec![
            (
                raw("q", vec![1, 2], vec![1, 2], None),
                "q.offsets",
                "start with 0",
            ),
            (
                raw("q", vec![1, 2], vec![0, 2, 1, 2], None),
                "q.offsets",
                "decreases at entry 2",
            ),
            (
                raw("q", vec![1, 2], vec![0, 1], None),
                "q.offsets",
                "ends at 1",
            ),
            (
                raw("q", vec![1, 5], vec![0, 2], None),
                "q.indices",
                "entry 1 is 5, outside",
            ),
            (
                raw("q", vec![-1], vec![0, 1], None),
                "q.indices",
                "entry 0 is -1",
            ),
            (
                raw("q", vec![1, 2], vec![0, 2], Some(f32s(vec![1.0]))),
                "q.values",
                "2 entries",
            ),
            (
                raw("q", vec![1], vec![0, 1], Some(f32s(vec![f32::NAN]))),
                "q.values",
                "NaN",
            ),
            (raw("q", vec![1], vec![], None), "q.offsets", "start with 0"),
            (
                vec![("q.indices".into(), Tensor::zeros(crate::DType::I64, &[1]))],
                "q.offsets",
                "missing",
            ),
            (
                vec![
                    ("q.indices".into(), Tensor::zeros(crate::DType::I32, &[1])),
                    ("q.offsets".into(), Tensor::zeros(crate::DType::I64, &[2])),
                ],
                "q.indices",
                "1-D i64",
            ),
        ];
        for (tensors, name, want) in cases {
            let e = SparseBags::from_tensors("q", 5, &tensors)
                .expect_err(want)
                .to_string();
            assert!(
                e.contains(&format!("`{name}`")) && e.contains(want),
                "{e}: want {name} {want}"
            );
        }
        // Values present and matching: kept; empty CSR (zero rows) is valid.
        let ok = SparseBags::from_tensors(
            "q",
            5,
            &raw("q", vec![3, 3], vec![0, 2], Some(f32s(vec![0.5, 2.0]))),
        )
        .expect("valid");
        assert_eq!(ok.indices(), [3]);
        assert_eq!(ok.values(), [2.5]);
        assert_eq!(
            SparseBags::from_tensors("q", 5, &raw("q", vec![], vec![0], None))
                .expect("empty")
                .rows(),
            0
        );
        let mut b = SparseBags::new(4);
        assert!(b.push_bag([1, 4]).is_err());
    }

    #[test]
    fn text_bags_count_repeated_trigrams() {
        let ids = TrigramIds::build(["good food"], Default::default()).expect("vocab");
        let e = text_bags(&["Good good", "mood", ""], &ids);
        assert_eq!(e.bags.rows(), 3);
        // "mood": #mo and moo unknown, ood and od# known.
        assert_eq!(e.unknown, 2);
        let id = |t: &str| ids.id(t).expect("known") as i64;
        let (i, v) = e.bags.bag(0).expect("row 0");
        let mut want: Vec<(i64, f32)> = ["#go", "goo", "ood", "od#"]
            .iter()
            .map(|t| (id(t), 2.0))
            .collect();
        want.sort_by_key(|p| p.0);
        let got: Vec<(i64, f32)> = i.iter().copied().zip(v.iter().copied()).collect();
        assert_eq!(got, want);
        assert_eq!(e.bags.bag(2).expect("row 2").0.len(), 0);
    }

    #[test]
    fn word_bags_truncate_and_pad_at_the_end() {
        let ids = TrigramIds::hashed_default();
        let e = word_bags(&["a b c d", "Good"], &ids, 3);
        assert_eq!(e.bags.rows(), 6);
        let h = |t: &str| ids.id(t).expect("hashed") as i64;
        // Pinned independently: "#a#" hashes to 24318 (see vocab tests).
        assert_eq!(e.bags.bag(0).expect("a").0, [24318]);
        assert_eq!(e.bags.bag(1).expect("b").0, [h("#b#")]);
        assert_eq!(e.bags.bag(2).expect("c").0, [h("#c#")]);
        let mut good = vec![624, 10092, 13173, 25719];
        good.sort();
        assert_eq!(e.bags.bag(3).expect("good").0, good);
        assert_eq!(e.bags.bag(4).expect("pad").0.len(), 0);
        assert_eq!(e.bags.bag(5).expect("pad").0.len(), 0);
        assert_eq!(e.unknown, 0);
    }

    #[test]
    fn word_ids_keep_the_first_words_right_aligned() {
        let ids = WordIds::build(["the cat sat"], Default::default()).expect("vocab");
        // Every word counts 1, so ties are broken by bytes: cat < sat < the.
        let (c, s, t) = (ids.id("cat"), ids.id("sat"), ids.id("the"));
        assert_eq!((c, s, t), (2, 3, 4));
        let m = WordIdMatrix::build(&["The dog", "the cat sat the cat", ""], &ids, 4);
        assert_eq!(m.ids, [0, 0, 4, UNKNOWN_ID, 4, 2, 3, 4, 0, 0, 0, 0]);
        assert_eq!(m.unknown, 1);
        let (name, t) = m.to_tensor("q", &[3]).expect("shape");
        assert_eq!((name.as_str(), t.shape()), ("q", &[3usize, 4][..]));
        let (_, t) = m.to_tensor("docs", &[1, 3]).expect("shape");
        assert_eq!(t.shape(), [1, 3, 4]);
        let e = m
            .to_tensor("docs", &[2, 3])
            .expect_err("6 != 3")
            .to_string();
        assert!(e.contains("`docs`"), "{e}");
    }
}
