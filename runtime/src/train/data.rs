//! Training data from a safetensors file, and seeded batching.
//!
//! A [`DataSet`] holds tensors named like the model's inputs and the `train`
//! section's labels, all sharing their first dimension, the sample count.
//! Everything is kept as f32, the element type of the plan's buffers: f32
//! tensors as they are, i64 tensors (class indices) converted when loading —
//! exact because every integer of magnitude up to 2^24 is an f32, and larger
//! values are refused. Other element types are errors.
//!
//! A [`Sampler`] gives the sample indices of each batch of an epoch: in
//! order, or shuffled. The shuffled order of epoch `e` is a function of the
//! seed and `e` only — a SplitMix64 generator (Steele, Lea & Flood 2014;
//! 64-bit integer arithmetic, so the same on every machine) keyed by both,
//! driving a Fisher–Yates shuffle of `0..n` with Lemire's unbiased bounded
//! integers. The whole sampler state is therefore three u64s
//! ([`Sampler::state`]): seed, epoch, position, and a resumed run sees the
//! same batches as an uninterrupted one. [`DataSet::gather`] copies the rows
//! of a batch into caller-owned buffers and allocates nothing.
//!
//! **Sparse columns.** A model input `q: sparse f32[N, ..., V]` is a column
//! of CSR bags (`docs/text.md`): in the file (or the in-memory tensors,
//! e.g. [`crate::text::bags::SparseBags::to_tensors`]) the three 1-D
//! tensors `q.indices` (i64), `q.offsets` (i64, bags + 1) and optional
//! `q.values` (f32; absent: all ones), sample `i` owning the
//! `bags_per_sample` consecutive bags `i·b .. (i+1)·b` (`b` = the product of
//! the sample shape's leading dims: `1 + negatives` for DSSM documents).
//! Such a column is asked for with its sample shape ([`ColumnSpec`]); it is
//! validated and canonicalised once ([`SparseBags::from_tensors`]) and kept
//! in the plan encoding ([`crate::sparse::encode`]); [`DataSet::gather_bags`]
//! copies a batch's bags into a reusable [`CsrBuffers`] (no allocation once
//! its vectors have grown to the largest batch).
//!
//! **Point clouds.** A voxel model's per-site inputs (coordinates and
//! features, one row per active site) are loaded with [`DataSet::load_points`]
//! from the format of [`super::points`]; [`DataSet::gather_sites`] builds a
//! batch's site list.

use super::points::{self, PointSpec, Sites};
use crate::sparse::{encode, CsrBuffers};
use crate::text::bags::SparseBags;
use crate::weights::{read_safetensors_meta, WeightError};
use crate::{DType, Storage, Tensor};
use std::path::Path;

/// Largest integer magnitude below which every integer is an f32.
const F32_EXACT: i64 = 1 << 24;

/// What can go wrong loading or batching a data set.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read or is not safetensors.
    #[error(transparent)]
    File(#[from] WeightError),
    /// The data do not fit the request.
    #[error("data {origin}: {message}")]
    Invalid {
        /// The file (or `<memory>`).
        origin: String,
        /// What is wrong, naming the tensors, counts and shapes.
        message: String,
    },
}

/// One tensor of the data set, as f32 rows, or a column of sparse bags.
#[derive(Clone, Debug)]
struct Column {
    name: String,
    stored: DType,
    sample_shape: Vec<usize>,
    row: usize,
    /// Samples held.
    count: usize,
    data: Vec<f32>,
    bags: Option<BagColumn>,
    /// A point cloud's per-site column: rows per sample.
    sites: Option<Sites>,
    /// Set by [`DataSet::with_in_batch_negatives`].
    in_batch: Option<InBatch>,
}

/// A column whose stored samples are single documents and whose batches
/// hold, per sample, its document and `negatives` documents of other
/// samples of the batch (see [`DataSet::with_in_batch_negatives`]).
#[derive(Clone, Debug)]
struct InBatch {
    negatives: usize,
    /// The identity of each sample's document (equal: the same text).
    keys: Vec<u64>,
    seed: u64,
    /// Elements of one stored document.
    stored_row: usize,
}

thread_local! {
    /// The sample list of a batch with its sampled negatives, reused.
    static EXPANDED: std::cell::RefCell<(Vec<usize>, Vec<usize>, Vec<u64>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// A sparse column: all bags in the plan encoding, `per_sample` per sample.
#[derive(Clone, Debug)]
struct BagColumn {
    per_sample: usize,
    csr: CsrBuffers,
}

/// A column to load: its name and, for a sparse model input, the shape of
/// one sample (`[..., V]`, e.g. `[1 + negatives, trigrams]`); `None` for a
/// dense tensor.
pub type ColumnSpec<'a> = (&'a str, Option<&'a [usize]>);

/// Named tensors sharing a sample count, held as f32.
#[derive(Clone, Debug)]
pub struct DataSet {
    origin: String,
    samples: usize,
    columns: Vec<Column>,
}

impl DataSet {
    /// Loads the tensors `names` (model inputs and labels) from a
    /// safetensors file; other tensors in the file are ignored.
    pub fn load(path: &Path, names: &[&str]) -> Result<DataSet, DataError> {
        let (tensors, _) = read_safetensors_meta(path)?;
        DataSet::from_tensors(&path.display().to_string(), tensors, names)
    }

    /// Loads dense and sparse columns (see the module docs) from a
    /// safetensors file; other tensors in the file are ignored.
    pub fn load_columns(path: &Path, columns: &[ColumnSpec]) -> Result<DataSet, DataError> {
        let (tensors, _) = read_safetensors_meta(path)?;
        DataSet::from_columns(&path.display().to_string(), tensors, columns)
    }

    /// Builds a data set from tensors already in memory (`origin` names
    /// them in errors), keeping `names` in that order.
    pub fn from_tensors(
        origin: &str,
        tensors: Vec<(String, Tensor)>,
        names: &[&str],
    ) -> Result<DataSet, DataError> {
        let specs: Vec<ColumnSpec> = names.iter().map(|n| (*n, None)).collect();
        DataSet::from_columns(origin, tensors, &specs)
    }

    /// Builds a data set of dense and sparse columns from tensors in
    /// memory (`origin` names them in errors), keeping `columns` in that
    /// order. A sparse column `q` is read from `q.indices`, `q.offsets`
    /// and optional `q.values` (see the module docs).
    pub fn from_columns(
        origin: &str,
        tensors: Vec<(String, Tensor)>,
        columns: &[ColumnSpec],
    ) -> Result<DataSet, DataError> {
        let err = |message: String| DataError::Invalid {
            origin: origin.to_string(),
            message,
        };
        let mut tensors = tensors;
        let mut out: Vec<Column> = Vec::with_capacity(columns.len());
        for &(name, sparse) in columns {
            out.push(match sparse {
                Some(shape) => bag_column(name, shape, &tensors).map_err(&err)?,
                None => dense_column(name, &mut tensors).map_err(&err)?,
            });
        }
        DataSet::assemble(origin, out)
    }

    /// Loads a point-cloud data set (the format of [`super::points`]):
    /// `names` are the model's data tensors in step order; those `spec`
    /// names are per-site columns, the others per-sample labels.
    pub fn load_points(
        path: &Path,
        spec: &PointSpec,
        names: &[&str],
    ) -> Result<DataSet, DataError> {
        let (tensors, _) = read_safetensors_meta(path)?;
        DataSet::from_points(&path.display().to_string(), tensors, spec, names)
    }

    /// [`DataSet::load_points`] from tensors in memory (`origin` names them
    /// in errors).
    pub fn from_points(
        origin: &str,
        tensors: Vec<(String, Tensor)>,
        spec: &PointSpec,
        names: &[&str],
    ) -> Result<DataSet, DataError> {
        let err = |message: String| DataError::Invalid {
            origin: origin.to_string(),
            message,
        };
        let mut tensors = tensors;
        let coords = &tensors[position(&spec.coords, &tensors).map_err(&err)?].1;
        let total = coords.shape().first().copied().unwrap_or(0);
        let at = position(&spec.offsets_name(), &tensors).map_err(&err)?;
        let sites = points::offsets(spec, &tensors[at].1, total).map_err(&err)?;
        let coords = points::coords(spec, coords, &sites).map_err(&err)?;
        let mut out: Vec<Column> = Vec::with_capacity(names.len());
        for &name in names {
            let width = spec.features.iter().find(|(n, _)| n == name).map(|f| f.1);
            let (row, data, is_coords) = match width {
                _ if name == spec.coords => (3, coords.clone(), true),
                Some(w) => {
                    let t = &tensors[position(name, &tensors).map_err(&err)?].1;
                    (w, points::features(name, w, t, total).map_err(&err)?, false)
                }
                None => {
                    out.push(dense_column(name, &mut tensors).map_err(&err)?);
                    continue;
                }
            };
            out.push(Column {
                name: name.to_string(),
                stored: if is_coords { DType::I32 } else { DType::F32 },
                sample_shape: vec![row],
                row,
                count: sites.samples(),
                data,
                bags: None,
                sites: Some(Sites {
                    coords: is_coords,
                    ..sites.clone()
                }),
                in_batch: None,
            });
        }
        DataSet::assemble(origin, out)
    }

    /// A data set of `columns`, which must hold the same sample count.
    fn assemble(origin: &str, columns: Vec<Column>) -> Result<DataSet, DataError> {
        let samples = columns.first().map_or(0, |c| c.count);
        if let Some(c) = columns.iter().find(|c| c.count != samples) {
            return Err(DataError::Invalid {
                origin: origin.to_string(),
                message: format!(
                    "tensor `{}` has {} samples but `{}` has {samples}",
                    c.name, c.count, columns[0].name
                ),
            });
        }
        Ok(DataSet {
            origin: origin.to_string(),
            samples,
            columns,
        })
    }
}

/// Where tensor `name` is in `tensors`, or an error listing what there is.
fn position(name: &str, tensors: &[(String, Tensor)]) -> Result<usize, String> {
    tensors.iter().position(|(n, _)| n == name).ok_or_else(|| {
        let have: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
        format!("no tensor `{name}` (the file has: {})", have.join(", "))
    })
}

/// Reads sparse column `name` with sample shape `shape` (`[..., V]`).
fn bag_column(name: &str, shape: &[usize], tensors: &[(String, Tensor)]) -> Result<Column, String> {
    let Some((&vocab, lead)) = shape.split_last() else {
        return Err(format!(
            "sparse column `{name}` needs a sample shape [..., V]"
        ));
    };
    let bags = SparseBags::from_tensors(name, vocab, tensors).map_err(|e| e.to_string())?;
    let per_sample: usize = lead.iter().product();
    if per_sample == 0 || bags.rows() % per_sample != 0 {
        return Err(format!(
            "tensor `{name}.offsets` holds {} bags, not a multiple of the {per_sample} bags of one sample of shape {shape:?}",
            bags.rows()
        ));
    }
    Ok(Column {
        name: name.to_string(),
        stored: DType::F32,
        sample_shape: shape.to_vec(),
        row: shape.iter().product(),
        count: bags.rows() / per_sample,
        data: Vec::new(),
        in_batch: None,
        sites: None,
        bags: Some(BagColumn {
            per_sample,
            csr: encode(name, &bags)?,
        }),
    })
}

/// Takes dense column `name` out of `tensors`.
fn dense_column(name: &str, tensors: &mut Vec<(String, Tensor)>) -> Result<Column, String> {
    let (_, t) = tensors.swap_remove(position(name, tensors)?);
    let Some((&count, sample_shape)) = t.shape().split_first() else {
        return Err(format!(
            "tensor `{name}` is a scalar; its first dimension must be the sample count"
        ));
    };
    let data = match t.storage() {
        Storage::F32(v) => v.clone(),
        Storage::I64(v) => {
            if let Some(bad) = v.iter().find(|x| x.abs() > F32_EXACT) {
                return Err(format!(
                    "tensor `{name}` (i64) holds {bad}, beyond ±2^24 where f32 is exact"
                ));
            }
            v.iter().map(|&x| x as f32).collect()
        }
        Storage::Bool(v) => v.iter().map(|&b| f32::from(b)).collect(),
        _ => {
            return Err(format!(
                "tensor `{name}` is {}; data tensors must be f32, i64 or bool",
                t.dtype()
            ))
        }
    };
    Ok(Column {
        name: name.to_string(),
        stored: t.dtype(),
        sample_shape: sample_shape.to_vec(),
        row: sample_shape.iter().product(),
        count,
        data,
        bags: None,
        sites: None,
        in_batch: None,
    })
}

impl DataSet {
    /// The sample count.
    pub fn len(&self) -> usize {
        self.samples
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.samples == 0
    }

    /// The tensor names, in the order given when loading (the index `k` of
    /// the other methods).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.columns.iter().map(|c| c.name.as_str())
    }

    /// The shape of one sample of tensor `k` (its shape without the first dimension).
    pub fn sample_shape(&self, k: usize) -> &[usize] {
        &self.columns[k].sample_shape
    }

    /// Elements per sample of tensor `k`.
    pub fn row_len(&self, k: usize) -> usize {
        self.columns[k].row
    }

    /// The element type tensor `k` had in the file (f32 or i64; f32 for
    /// a sparse column).
    pub fn stored_dtype(&self, k: usize) -> DType {
        self.columns[k].stored
    }

    /// Whether column `k` holds sparse bags (read it with
    /// [`DataSet::gather_bags`]).
    pub fn is_sparse(&self, k: usize) -> bool {
        self.columns.get(k).is_some_and(|c| c.bags.is_some())
    }

    /// Whether column `k` is a point cloud's per-site column (read it with
    /// [`DataSet::gather_sites`]).
    pub fn is_sites(&self, k: usize) -> bool {
        self.columns.get(k).is_some_and(|c| c.sites.is_some())
    }

    /// Copies the site rows of samples `indices` of per-site column `k`, in
    /// that order, into `out` (cleared first; coordinate rows gain the
    /// sample's position in the batch as their batch index) and returns the
    /// batch's site count. Allocates nothing once `out` has grown to the
    /// largest batch.
    pub fn gather_sites(
        &self,
        k: usize,
        indices: &[usize],
        out: &mut Vec<f32>,
    ) -> Result<usize, DataError> {
        let c = self.column(k)?;
        let Some(sites) = &c.sites else {
            return Err(self.invalid(format!("tensor `{}` is not a per-site column", c.name)));
        };
        self.check_indices(c, indices)?;
        Ok(sites.gather(&c.data, c.row, indices, out))
    }

    /// Refuses sample indices past the data set's end.
    fn check_indices(&self, c: &Column, indices: &[usize]) -> Result<(), DataError> {
        match indices.iter().find(|&&i| i >= self.samples) {
            Some(bad) => Err(self.invalid(format!(
                "sample {bad} of `{}` requested, the data set has {}",
                c.name, self.samples
            ))),
            None => Ok(()),
        }
    }

    /// The error for column `k`, or the column.
    fn column(&self, k: usize) -> Result<&Column, DataError> {
        self.columns.get(k).ok_or_else(|| {
            self.invalid(format!(
                "no tensor number {k} (the data set has {})",
                self.columns.len()
            ))
        })
    }

    /// Makes column `name`, which holds one document per sample, yield
    /// `1 + negatives` documents per sample: its own, then `negatives`
    /// positives of other samples of the same batch, drawn by the rule of
    /// [`crate::text::tsv`] (documents with equal `keys` never serve as each
    /// other's negatives) with a seed mixed from `seed` and the batch's
    /// sample indices, so every batch (and every epoch's reshuffled batch)
    /// draws afresh and a resumed run draws the same. When a batch has too
    /// few other documents (a small last batch), the rest are the next
    /// samples after the sample, in index order, skipping equal keys.
    /// The column's sample shape becomes `[1 + negatives, ...]`.
    pub fn with_in_batch_negatives(
        mut self,
        name: &str,
        negatives: usize,
        keys: Vec<u64>,
        seed: u64,
    ) -> Result<DataSet, DataError> {
        let Some(k) = self.columns.iter().position(|c| c.name == name) else {
            return Err(self.invalid(format!("no tensor `{name}` to draw negatives for")));
        };
        if keys.len() != self.samples {
            return Err(self.invalid(format!(
                "{} document keys for {} samples",
                keys.len(),
                self.samples
            )));
        }
        let distinct: std::collections::HashSet<u64> = keys.iter().copied().collect();
        if distinct.len() <= negatives {
            return Err(self.invalid(format!(
                "`{name}` holds {} distinct documents; {negatives} negatives per sample need at least {}",
                distinct.len(),
                negatives + 1
            )));
        }
        let c = &mut self.columns[k];
        c.in_batch = Some(InBatch {
            negatives,
            keys,
            seed,
            stored_row: c.row,
        });
        c.sample_shape.insert(0, 1 + negatives);
        c.row *= 1 + negatives;
        Ok(self)
    }

    /// Runs `f` on the samples a batch of column `c` reads: `indices`, or
    /// with in-batch negatives each index followed by its negatives'.
    fn with_batch_rows<R>(
        &self,
        c: &Column,
        indices: &[usize],
        f: impl FnOnce(&[usize]) -> R,
    ) -> R {
        let Some(ib) = &c.in_batch else {
            return f(indices);
        };
        EXPANDED.with_borrow_mut(|(rows, cand, batch_keys)| {
            rows.clear();
            batch_keys.clear();
            batch_keys.extend(indices.iter().map(|&i| ib.keys[i]));
            let batch_seed = indices
                .iter()
                .fold(ib.seed, |h, &i| crate::counter::splitmix64(h ^ i as u64));
            let per = 1 + ib.negatives;
            for (p, &i) in indices.iter().enumerate() {
                rows.push(i);
                crate::text::tsv::negative_positions(batch_keys, p, ib.negatives, batch_seed, cand);
                rows.extend(cand.iter().map(|&q| indices[q]));
                let mut next = i;
                while rows.len() < (p + 1) * per {
                    next = (next + 1) % self.samples;
                    if ib.keys[next] != ib.keys[i] && !rows[p * per..].contains(&next) {
                        rows.push(next);
                    }
                }
            }
            f(rows)
        })
    }

    fn invalid(&self, message: String) -> DataError {
        DataError::Invalid {
            origin: self.origin.clone(),
            message,
        }
    }

    /// Copies the bags of samples `indices` of sparse column `k`, in that
    /// order, into `out` (plan encoding, offsets from 0): `out`'s vectors
    /// are cleared and refilled, so once they have grown to the largest
    /// batch this allocates nothing.
    pub fn gather_bags(
        &self,
        k: usize,
        indices: &[usize],
        out: &mut CsrBuffers,
    ) -> Result<(), DataError> {
        let c = self.column(k)?;
        let Some(b) = &c.bags else {
            return Err(self.invalid(format!("tensor `{}` is dense, not sparse bags", c.name)));
        };
        self.check_indices(c, indices)?;
        let at = |w: f32| w.to_bits() as usize;
        out.indices.clear();
        out.values.clear();
        out.offsets.clear();
        out.offsets.push(f32::from_bits(0));
        self.with_batch_rows(c, indices, |rows| {
            for &i in rows {
                for r in i * b.per_sample..(i + 1) * b.per_sample {
                    let span = at(b.csr.offsets[r])..at(b.csr.offsets[r + 1]);
                    out.indices.extend_from_slice(&b.csr.indices[span.clone()]);
                    out.values.extend_from_slice(&b.csr.values[span]);
                    let end = u32::try_from(out.indices.len()).map_err(|_| {
                        self.invalid(format!(
                            "a batch of `{}` holds more than 2^32 entries",
                            c.name
                        ))
                    })?;
                    out.offsets.push(f32::from_bits(end));
                }
            }
            Ok(())
        })
    }

    /// Copies the samples `indices` of tensor `k`, in that order, into
    /// `out`, which must have exactly `indices.len() * row_len(k)` elements
    /// (for a partial batch pass the front of the full buffer). Allocates nothing.
    pub fn gather(&self, k: usize, indices: &[usize], out: &mut [f32]) -> Result<(), DataError> {
        let err = |message: String| self.invalid(message);
        let c = self.column(k)?;
        if c.bags.is_some() || c.sites.is_some() {
            let (what, with) = if c.bags.is_some() {
                ("sparse bags", "gather_bags")
            } else {
                ("point-cloud sites", "gather_sites")
            };
            return Err(err(format!(
                "tensor `{}` holds {what}: gather it with `{with}`",
                c.name
            )));
        }
        if out.len() != indices.len() * c.row {
            return Err(err(format!(
                "buffer for `{}` has {} elements, {} samples of {:?} need {}",
                c.name,
                out.len(),
                indices.len(),
                c.sample_shape,
                indices.len() * c.row
            )));
        }
        self.check_indices(c, indices)?;
        if c.row == 0 {
            return Ok(());
        }
        let row = c.in_batch.as_ref().map_or(c.row, |ib| ib.stored_row);
        self.with_batch_rows(c, indices, |rows| {
            for (dst, &i) in out.chunks_exact_mut(row).zip(rows) {
                dst.copy_from_slice(&c.data[i * row..(i + 1) * row]);
            }
        });
        Ok(())
    }

    /// [`DataSet::gather`] for every tensor: `outs[k]` receives tensor `k`.
    pub fn gather_all(&self, indices: &[usize], outs: &mut [&mut [f32]]) -> Result<(), DataError> {
        if outs.len() != self.columns.len() {
            return Err(DataError::Invalid {
                origin: self.origin.clone(),
                message: format!(
                    "{} buffers given for {} tensors",
                    outs.len(),
                    self.columns.len()
                ),
            });
        }
        for (k, out) in outs.iter_mut().enumerate() {
            self.gather(k, indices, out)?;
        }
        Ok(())
    }
}

/// SplitMix64's output function.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The SplitMix64 generator.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// A uniform integer in `[0, n)`, `n > 0` (Lemire 2019, with rejection: unbiased).
    fn below(&mut self, n: u64) -> u64 {
        let mut m = u128::from(self.next()) * u128::from(n);
        if (m as u64) < n {
            let threshold = n.wrapping_neg() % n;
            while (m as u64) < threshold {
                m = u128::from(self.next()) * u128::from(n);
            }
        }
        (m >> 64) as u64
    }
}

/// The batches of each epoch, in order or seeded-shuffled (see the module docs).
#[derive(Clone, Debug)]
pub struct Sampler {
    seed: Option<u64>,
    batch: usize,
    order: Vec<usize>,
    epoch: u64,
    pos: usize,
}

impl Sampler {
    /// Batches of `batch` samples (the last one partial) over `samples`
    /// samples, shuffled anew each epoch from `seed`. Positioned at the
    /// start of epoch 0. A batch of 0 counts as 1.
    pub fn shuffled(samples: usize, batch: usize, seed: u64) -> Sampler {
        Sampler::build(samples, batch, Some(seed))
    }

    /// Batches in file order (for validation).
    pub fn sequential(samples: usize, batch: usize) -> Sampler {
        Sampler::build(samples, batch, None)
    }

    fn build(samples: usize, batch: usize, seed: Option<u64>) -> Sampler {
        let mut s = Sampler {
            seed,
            batch: batch.max(1),
            order: (0..samples).collect(),
            epoch: 0,
            pos: 0,
        };
        s.start_epoch(0);
        s
    }

    /// Positions the sampler at the start of epoch `epoch` (from 0),
    /// computing that epoch's order. Allocates nothing.
    pub fn start_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.pos = 0;
        for (i, o) in self.order.iter_mut().enumerate() {
            *o = i;
        }
        let Some(seed) = self.seed else { return };
        let mut rng = SplitMix64(mix64(seed) ^ mix64(epoch.wrapping_add(0x632B_E59B_D9B4_E019)));
        for i in (1..self.order.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            self.order.swap(i, j);
        }
    }

    /// The sample indices of the next batch of the current epoch, or `None`
    /// once the epoch is over.
    pub fn next_batch(&mut self) -> Option<&[usize]> {
        if self.pos >= self.order.len() {
            return None;
        }
        let end = (self.pos + self.batch).min(self.order.len());
        let b = &self.order[self.pos..end];
        self.pos = end;
        Some(b)
    }

    /// Batches per epoch (the last one may be partial).
    pub fn batches_per_epoch(&self) -> usize {
        self.order.len().div_ceil(self.batch)
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The whole state, for checkpoints: `[seed, epoch, samples consumed in
    /// this epoch]` (a sequential sampler reports seed 0).
    pub fn state(&self) -> [u64; 3] {
        [self.seed.unwrap_or(0), self.epoch, self.pos as u64]
    }

    /// Restores a state from [`Sampler::state`]: the seed (ignored by a
    /// sequential sampler), the epoch whose order is recomputed, and the
    /// position in it. A position past the epoch's end is an error.
    pub fn restore(&mut self, state: [u64; 3]) -> Result<(), DataError> {
        let [seed, epoch, pos] = state;
        if pos > self.order.len() as u64 {
            return Err(DataError::Invalid {
                origin: "sampler".into(),
                message: format!(
                    "saved position {pos} is past the {} samples of an epoch",
                    self.order.len()
                ),
            });
        }
        if self.seed.is_some() {
            self.seed = Some(seed);
        }
        self.start_epoch(epoch);
        self.pos = pos as usize;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::fixture::Fixture;

    fn toy() -> Vec<(String, Tensor)> {
        let x = Tensor::from_f32(&[5, 2, 2], (0..20).map(|v| v as f32).collect()).unwrap();
        let y = Tensor::new(&[5], Storage::I64(vec![3, 1, 4, 1, 5])).unwrap();
        let extra = Tensor::new(&[2], Storage::F64(vec![0.0; 2])).unwrap();
        vec![("x".into(), x), ("y".into(), y), ("notes".into(), extra)]
    }

    fn epoch_batches(s: &mut Sampler) -> Vec<Vec<usize>> {
        let mut out = Vec::new();
        while let Some(b) = s.next_batch() {
            out.push(b.to_vec());
        }
        out
    }

    #[test]
    fn shuffles_are_seeded_permutations_pinned_across_machines() {
        let fx = Fixture::load();
        for (seed, n, epoch) in [
            (7u64, 10, 0u64),
            (7, 10, 1),
            (12345, 37, 3),
            (u64::MAX, 5, 0),
        ] {
            let want: Vec<usize> = fx
                .meta(&format!("shuffle.seed{seed}.n{n}.epoch{epoch}"))
                .split(',')
                .map(|v| v.parse().unwrap())
                .collect();
            let mut s = Sampler::shuffled(n, n, seed);
            s.start_epoch(epoch);
            let got = s.next_batch().unwrap().to_vec();
            assert_eq!(got, want, "seed {seed} n {n} epoch {epoch}");
        }
        // A permutation, different per epoch and per seed, equal for equal seeds.
        let mut a = Sampler::shuffled(1000, 1000, 1);
        let e0 = a.next_batch().unwrap().to_vec();
        let mut sorted = e0.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        a.start_epoch(1);
        assert_ne!(a.next_batch().unwrap(), e0.as_slice());
        assert_ne!(
            Sampler::shuffled(1000, 1000, 2).next_batch().unwrap(),
            e0.as_slice()
        );
        assert_eq!(
            Sampler::shuffled(1000, 1000, 1).next_batch().unwrap(),
            e0.as_slice()
        );
    }

    #[test]
    fn batches_end_with_a_partial_one_and_state_restores_mid_epoch() {
        let mut s = Sampler::shuffled(10, 4, 99);
        s.start_epoch(2);
        let full = epoch_batches(&mut s);
        assert_eq!(full.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 2]);
        assert_eq!(s.batches_per_epoch(), 3);
        s.start_epoch(2);
        s.next_batch();
        let saved = s.state();
        assert_eq!(saved, [99, 2, 4]);
        let mut resumed = Sampler::shuffled(10, 4, 0);
        resumed.restore(saved).unwrap();
        assert_eq!(epoch_batches(&mut resumed), full[1..]);
        assert!(resumed.restore([99, 2, 11]).is_err());
        let mut seq = Sampler::sequential(5, 2);
        assert_eq!(epoch_batches(&mut seq), [vec![0, 1], vec![2, 3], vec![4]]);
    }

    #[test]
    fn gathers_rows_and_delivers_i64_labels_as_f32() {
        let d = DataSet::from_tensors("toy", toy(), &["y", "x"]).unwrap();
        assert_eq!(d.len(), 5);
        assert_eq!(d.names().collect::<Vec<_>>(), ["y", "x"]);
        assert_eq!((d.sample_shape(1), d.row_len(1)), (&[2, 2][..], 4));
        assert_eq!(d.stored_dtype(0), DType::I64);
        let mut y = [0.0f32; 4];
        let mut x = [0.0f32; 16];
        let idx = [4, 0, 2];
        d.gather_all(&idx, &mut [&mut y[..3], &mut x[..12]])
            .unwrap();
        assert_eq!(y[..3], [5.0, 3.0, 4.0]);
        assert_eq!(
            x[..12],
            [16.0, 17.0, 18.0, 19.0, 0.0, 1.0, 2.0, 3.0, 8.0, 9.0, 10.0, 11.0]
        );
        let e = d.gather(1, &idx, &mut x).unwrap_err().to_string();
        assert!(
            e.contains("buffer for `x` has 16 elements, 3 samples of [2, 2] need 12"),
            "{e}"
        );
        let e = d.gather(0, &[5], &mut y[..1]).unwrap_err().to_string();
        assert!(
            e.contains("sample 5 of `y` requested, the data set has 5"),
            "{e}"
        );
    }

    #[test]
    fn bad_data_is_named() {
        let e = DataSet::from_tensors("toy", toy(), &["notes"])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "data toy: tensor `notes` is f64; data tensors must be f32, i64 or bool"
        );
        let e = DataSet::from_tensors("toy", toy(), &["x", "label"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no tensor `label` (the file has: "), "{e}");
        let mut t = toy();
        t[1].1 = Tensor::new(&[4], Storage::I64(vec![0; 4])).unwrap();
        let e = DataSet::from_tensors("toy", t, &["x", "y"])
            .unwrap_err()
            .to_string();
        assert_eq!(e, "data toy: tensor `y` has 4 samples but `x` has 5");
        let mut t = toy();
        t[1].1 = Tensor::new(&[5], Storage::I64(vec![0, 0, 1 << 25, 0, 0])).unwrap();
        let e = DataSet::from_tensors("toy", t, &["y"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds 33554432, beyond ±2^24"), "{e}");
    }

    /// Bags of `rows` rows, bag `r` holding ids `r % 5` and `(3r) % 5`.
    fn bags(rows: usize) -> SparseBags {
        let mut b = SparseBags::new(5);
        for r in 0..rows {
            b.push_bag([r % 5, (3 * r) % 5]).unwrap();
        }
        b
    }

    fn decoded(c: &CsrBuffers) -> (Vec<u32>, Vec<u32>, Vec<f32>) {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect();
        (bits(&c.indices), bits(&c.offsets), c.values.clone())
    }

    /// A sparse column whose samples own 2 consecutive bags, beside a
    /// one-bag column and a dense one: a batch gathers each sample's bags
    /// in batch order, offsets from 0, and the buffers keep their capacity.
    #[test]
    fn sparse_columns_gather_whole_samples() {
        let mut t = bags(3).to_tensors("q");
        t.extend(bags(6).to_tensors("docs"));
        t.retain(|(n, _)| n != "docs.values");
        t.push((
            "y".into(),
            Tensor::new(&[3], Storage::I64(vec![7, 8, 9])).unwrap(),
        ));
        let shape = [2usize, 5];
        let specs: [ColumnSpec; 3] = [("docs", Some(&shape)), ("q", Some(&[5])), ("y", None)];
        let d = DataSet::from_columns("mem", t.clone(), &specs).unwrap();
        assert_eq!(d.len(), 3);
        assert!(d.is_sparse(0) && d.is_sparse(1) && !d.is_sparse(2));
        assert_eq!(d.sample_shape(0), &[2, 5]);
        let mut out = CsrBuffers {
            indices: Vec::new(),
            offsets: Vec::new(),
            values: Vec::new(),
        };
        d.gather_bags(0, &[2, 0], &mut out).unwrap();
        // Bags 4, 5 then 0, 1 (stored merged: bag 0 is id 0 once); no
        // `docs.values`, so every entry counts 1.
        assert_eq!(
            decoded(&out),
            (vec![2, 4, 0, 0, 1, 3], vec![0, 2, 3, 4, 6], vec![1.0; 6])
        );
        d.gather_bags(1, &[0], &mut out).unwrap();
        assert_eq!(decoded(&out).2, [2.0]);
        let cap = out.indices.capacity();
        d.gather_bags(1, &[1], &mut out).unwrap();
        assert_eq!(decoded(&out).0, [1, 3]);
        assert_eq!(out.indices.capacity(), cap);
        let e = d.gather(0, &[0], &mut [0.0; 10]).unwrap_err().to_string();
        assert!(e.contains("`docs` holds sparse bags"), "{e}");
        let e = d.gather_bags(2, &[0], &mut out).unwrap_err().to_string();
        assert!(e.contains("`y` is dense"), "{e}");
        let e = d.gather_bags(0, &[3], &mut out).unwrap_err().to_string();
        assert!(e.contains("sample 3 of `docs`"), "{e}");
        let four = [4usize, 5];
        let e = DataSet::from_columns("mem", t.clone(), &[("docs", Some(&four))])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("holds 6 bags, not a multiple of the 4 bags"),
            "{e}"
        );
        let e = DataSet::from_columns(
            "mem",
            t.clone(),
            &[("docs", Some(&shape)), ("q", Some(&[3]))],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("q.indices") && e.contains("outside the columns 0..3"),
            "{e}"
        );
        let e = DataSet::from_columns("mem", t, &[("q", Some(&[5])), ("docs", Some(&[5]))])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`docs` has 6 samples but `q` has 3"), "{e}");
    }

    #[test]
    fn loads_from_a_safetensors_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.safetensors");
        let t = toy();
        let refs: Vec<(&str, &Tensor)> = t.iter().map(|(n, t)| (n.as_str(), t)).collect();
        crate::weights::write_safetensors_atomic(&path, &refs, None).unwrap();
        let d = DataSet::load(&path, &["x", "y"]).unwrap();
        let mut y = [0.0f32; 5];
        d.gather(1, &[0, 1, 2, 3, 4], &mut y).unwrap();
        assert_eq!(y, [3.0, 1.0, 4.0, 1.0, 5.0]);
        let e = DataSet::load(&dir.path().join("none.safetensors"), &["x"]).unwrap_err();
        assert!(e.to_string().contains("none.safetensors"), "{e}");
    }

    /// In-batch negatives: each sample's documents are its own, then
    /// others of the batch with a different key, all distinct; a batch too
    /// small for that is completed from the following samples; the draw
    /// depends on the batch, and sparse and dense columns expand alike.
    #[test]
    fn in_batch_negatives_come_from_the_batch_and_skip_equal_documents() {
        // Dense ids: sample i's document is [10 i, 10 i + 1]; samples 1 and
        // 3 hold the same document text (key 1).
        let docs = Tensor::from_f32(
            &[6, 2],
            (0..6)
                .flat_map(|i| [10.0 * i as f32, 10.0 * i as f32 + 1.0])
                .collect(),
        )
        .unwrap();
        let mut t = bags(6).to_tensors("bags");
        t.push(("ids".into(), docs));
        let keys = vec![0, 1, 2, 1, 4, 5];
        let data = DataSet::from_columns("mem", t, &[("ids", None), ("bags", Some(&[5]))])
            .unwrap()
            .with_in_batch_negatives("ids", 2, keys.clone(), 7)
            .unwrap()
            .with_in_batch_negatives("bags", 2, keys.clone(), 7)
            .unwrap();
        assert_eq!(data.sample_shape(0), [3, 2]);
        assert_eq!(data.sample_shape(1), [3, 5]);
        let sample_of = |v: f32| (v / 10.0) as usize;
        let mut draws = Vec::new();
        for batch in [vec![3, 1, 4, 0], vec![0, 1, 4, 3], vec![5]] {
            let mut out = vec![0.0; batch.len() * 6];
            data.gather(0, &batch, &mut out).unwrap();
            let mut csr = CsrBuffers::default();
            data.gather_bags(1, &batch, &mut csr).unwrap();
            let mut want_bags = Vec::new();
            for (p, &i) in batch.iter().enumerate() {
                let row: Vec<usize> = out[p * 6..(p + 1) * 6]
                    .chunks(2)
                    .map(|d| sample_of(d[0]))
                    .collect();
                assert_eq!(row[0], i, "batch {batch:?}");
                for &n in &row[1..] {
                    assert_ne!(keys[n], keys[i], "batch {batch:?}: {row:?}");
                    if batch.len() > 3 {
                        assert!(batch.contains(&n), "batch {batch:?}: {row:?}");
                    }
                }
                assert_ne!(row[1], row[2], "batch {batch:?}: {row:?}");
                want_bags.extend(row.iter().copied());
                draws.push(row);
            }
            let mut want = CsrBuffers::default();
            DataSet::from_columns("mem", bags(6).to_tensors("bags"), &[("bags", Some(&[5]))])
                .unwrap()
                .gather_bags(0, &want_bags, &mut want)
                .unwrap();
            assert_eq!(decoded(&csr), decoded(&want), "batch {batch:?}");
        }
        // Sample 3 with 1 (same key) in its batch never draws it; the
        // single-sample batch is completed from samples 0 and 1.
        assert_eq!(draws[8][1..], [0, 1]);
        let (mut a, mut b) = (vec![0.0; 24], vec![0.0; 24]);
        data.gather(0, &[3, 1, 4, 0], &mut a).unwrap();
        data.gather(0, &[3, 1, 4, 0], &mut b).unwrap();
        assert_eq!(a, b, "a batch draws the same negatives every time");
        let few = DataSet::from_columns("mem", bags(2).to_tensors("b"), &[("b", Some(&[5]))])
            .unwrap()
            .with_in_batch_negatives("b", 2, vec![0, 1], 0)
            .unwrap_err();
        assert!(few.to_string().contains("2 distinct documents"), "{few}");
    }
}
