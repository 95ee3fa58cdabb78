//! Point-cloud data for models over voxel sets (sparse 3D convs): each
//! sample is a variable-length list of active sites, so its tensors cannot
//! share a first dimension with the per-sample labels.
//!
//! **File format** (safetensors; [`PointSpec`] names the tensors): for the
//! model's coordinate input `coords` (`i32 [M, 4]`: batch, z, y, x),
//! - `coords.offsets` (i64 or i32, `[samples + 1]`): sample `i` owns site
//!   rows `offsets[i] .. offsets[i + 1]`; starts at 0, never decreases,
//!   ends at the site count;
//! - `coords` (i32 or i64, `[sites, 3]`): each site's `(z, y, x)` inside the
//!   model's grid, no batch column, no site twice in a sample;
//! - one tensor per other site input (`features`, f32 `[sites, C]`), with
//!   the model's width `C`;
//! - the labels as usual, first dim = samples (`target` f32 `[samples, 64]`).
//!
//! **Collate** ([`Sites::gather`]): a batch of samples `indices` becomes one
//! site list, the samples' rows concatenated in batch order; the coordinate
//! rows gain the sample's position in the batch as their batch index.

use crate::{Storage, Tensor};

/// The site tensors of a point-cloud data set, as the model declares them.
#[derive(Clone, Debug, PartialEq)]
pub struct PointSpec {
    /// The coordinate input (`i32 [M, 4]` in the model, `[sites, 3]` in the
    /// file); its offsets are `<coords>.offsets`.
    pub coords: String,
    /// The grid `[D, H, W]` coordinates must lie in.
    pub grid: [i64; 3],
    /// The other per-site inputs and their widths (`features`, 4).
    pub features: Vec<(String, usize)>,
}

impl PointSpec {
    /// The name of the offsets tensor.
    pub fn offsets_name(&self) -> String {
        format!("{}.offsets", self.coords)
    }
}

/// A per-site column: all rows of all samples, and where each sample's
/// rows start.
#[derive(Clone, Debug)]
pub(super) struct Sites {
    /// `samples + 1` row offsets.
    pub offsets: Vec<usize>,
    /// Whether the column is the coordinates (rows of 3 in the file, 4
    /// with the batch index in a batch).
    pub coords: bool,
}

impl Sites {
    /// The sample count.
    pub fn samples(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Appends the rows (`row` values each) of samples `indices`, in that
    /// order, from `data` to `out` (cleared first), a coordinate row
    /// prefixed by the sample's position in the batch; returns the site
    /// count. Allocates nothing once `out` has grown to the largest batch.
    pub fn gather(&self, data: &[f32], row: usize, indices: &[usize], out: &mut Vec<f32>) -> usize {
        out.clear();
        let mut sites = 0;
        for (p, &i) in indices.iter().enumerate() {
            let span = self.offsets[i]..self.offsets[i + 1];
            sites += span.len();
            let rows = &data[span.start * row..span.end * row];
            if self.coords {
                for r in rows.chunks_exact(row) {
                    out.push(p as f32);
                    out.extend_from_slice(r);
                }
            } else {
                out.extend_from_slice(rows);
            }
        }
        sites
    }
}

/// `t`'s integers (i32 or i64), or an error naming tensor `name`.
fn integers(name: &str, t: &Tensor) -> Result<Vec<i64>, String> {
    match t.storage() {
        Storage::I64(v) => Ok(v.clone()),
        Storage::I32(v) => Ok(v.iter().map(|&x| i64::from(x)).collect()),
        _ => Err(format!(
            "tensor `{name}` is {}; it must be i32 or i64",
            t.dtype()
        )),
    }
}

/// Reads and checks `<coords>.offsets`: the per-sample row offsets over
/// `sites` rows.
pub(super) fn offsets(spec: &PointSpec, t: &Tensor, sites: usize) -> Result<Sites, String> {
    let name = spec.offsets_name();
    if t.shape().len() != 1 || t.shape()[0] == 0 {
        return Err(format!(
            "tensor `{name}` is {:?}; it must be [samples + 1] row offsets",
            t.shape()
        ));
    }
    let v = integers(&name, t)?;
    if v[0] != 0 {
        return Err(format!("tensor `{name}` starts at {}, not 0", v[0]));
    }
    if let Some(i) = (1..v.len()).find(|&i| v[i] < v[i - 1]) {
        return Err(format!(
            "tensor `{name}` decreases at sample {}: {} after {}",
            i - 1,
            v[i],
            v[i - 1]
        ));
    }
    let last = v[v.len() - 1];
    if last != sites as i64 {
        return Err(format!(
            "tensor `{name}` ends at {last}, but `{}` holds {sites} sites",
            spec.coords
        ));
    }
    Ok(Sites {
        offsets: v.iter().map(|&o| o as usize).collect(),
        coords: false,
    })
}

/// Reads and checks the coordinates (`[sites, 3]`, in the grid, no site
/// twice in a sample) as f32 values.
pub(super) fn coords(spec: &PointSpec, t: &Tensor, sites: &Sites) -> Result<Vec<f32>, String> {
    let name = &spec.coords;
    if t.shape().len() != 2 || t.shape()[1] != 3 {
        return Err(format!(
            "tensor `{name}` is {:?}; it must be [sites, 3] (z, y, x; the batch index is added per batch)",
            t.shape()
        ));
    }
    let v = integers(name, t)?;
    let g = spec.grid;
    let mut seen = std::collections::HashMap::new();
    for i in 0..sites.samples() {
        seen.clear();
        for r in sites.offsets[i]..sites.offsets[i + 1] {
            let c = [v[r * 3], v[r * 3 + 1], v[r * 3 + 2]];
            if (0..3).any(|d| !(0..g[d]).contains(&c[d])) {
                return Err(format!(
                    "tensor `{name}` row {r} (sample {i}) is {c:?}, outside the model's grid {g:?}"
                ));
            }
            if let Some(first) = seen.insert(c, r) {
                return Err(format!(
                    "tensor `{name}` holds site {c:?} twice in sample {i} (rows {first} and {r})"
                ));
            }
        }
    }
    Ok(v.iter().map(|&x| x as f32).collect())
}

/// Reads and checks a per-site f32 input (`[sites, width]`).
pub(super) fn features(
    name: &str,
    width: usize,
    t: &Tensor,
    sites: usize,
) -> Result<Vec<f32>, String> {
    if t.shape() != [sites, width] {
        return Err(format!(
            "tensor `{name}` is {:?}; the model takes [sites, {width}] and the coordinates hold {sites} sites",
            t.shape()
        ));
    }
    match t.storage() {
        Storage::F32(v) => Ok(v.clone()),
        _ => Err(format!("tensor `{name}` is {}; it must be f32", t.dtype())),
    }
}

#[cfg(test)]
mod tests;
