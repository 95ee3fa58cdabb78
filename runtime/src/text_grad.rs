//! Row kernels ([`crate::plan::Rows`] steps) of the backward pass of the
//! text-matching ops: the weight gradients of the products over sparse
//! bags (`sparse_linear`, `embedding_bag`; bags in the plan encoding of
//! [`crate::sparse`]), the cosine similarity's gradient and the DSSM
//! loss's. Every kernel writes whole output rows (it zeroes before it
//! accumulates) and allocates nothing; the cosine and loss gradients
//! accumulate in f64 as their forwards do.

use crate::plan::RowKernel;

/// The id in an f32 word of the plan's CSR encoding.
fn id(x: f32) -> usize {
    x.to_bits() as usize
}

/// The CSR buffers and `dy` of a bag gradient (inputs `indices`,
/// `offsets`, `values`, `dy`), with `dy` checked to hold `bags · width`.
fn bag_operands<'a>(
    inputs: &[&'a [f32]],
    bags: usize,
    width: usize,
) -> Result<[&'a [f32]; 4], String> {
    let [indices, offsets, values, dy, ..] = inputs else {
        return Err(format!(
            "a bag gradient reads 4 buffers, got {}",
            inputs.len()
        ));
    };
    if offsets.len() < bags + 1 {
        return Err(format!(
            "the offsets hold {} entries, {bags} bags need {}",
            offsets.len(),
            bags + 1
        ));
    }
    if dy.len() < bags * width {
        return Err(format!(
            "the incoming gradient holds {} of {} entries",
            dy.len(),
            bags * width
        ));
    }
    Ok([indices, offsets, values, dy])
}

/// The entry range of bag `r`, checked.
fn span(r: usize, offsets: &[f32], entries: usize) -> Result<std::ops::Range<usize>, String> {
    let (s, e) = (id(offsets[r]), id(offsets[r + 1]));
    if s > e || e > entries {
        return Err(format!(
            "bag {r} spans entries {s}..{e}, but the offsets must not decrease and the bags hold {entries} entries"
        ));
    }
    Ok(s..e)
}

/// `sparse_linear`'s weight gradient in the weight's layout `[out, V]`:
/// `g[o, v] = Σ_bags Σ_entries(id = v) value · dy[bag, o]`. Output rows
/// are the `out` features (each `vocab` wide); every piece reads all
/// bags. Inputs: `indices`, `offsets`, `values`, `dy` (`[bags, out]`).
#[derive(Clone, Debug)]
pub struct BagLinearGradWeight {
    /// Bags in the batch.
    pub bags: usize,
    /// Output features (rows of the gradient).
    pub out: usize,
    /// Columns of the bags (width of a gradient row).
    pub vocab: usize,
}

impl RowKernel for BagLinearGradWeight {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let [indices, offsets, values, dy] = bag_operands(inputs, self.bags, self.out)?;
        let entries = indices.len().min(values.len());
        for (k, row) in out.chunks_exact_mut(self.vocab.max(1)).enumerate() {
            let o = first + k;
            row.fill(0.0);
            for r in 0..self.bags {
                let g = dy[r * self.out + o];
                for e in span(r, offsets, entries)? {
                    let slot = row.get_mut(id(indices[e])).ok_or_else(|| {
                        format!(
                            "bag {r} holds id {}, outside the weight's {} columns",
                            id(indices[e]),
                            self.vocab
                        )
                    })?;
                    *slot += values[e] * g;
                }
            }
        }
        Ok(())
    }
}

/// `embedding_bag`'s weight gradient `[V, dim]`: every entry adds
/// `value · dy[bag]` (divided by the bag's non-zero count in `mean` mode)
/// to row `id`. Output rows are table rows; a piece keeps the entries
/// whose id falls in its rows. Inputs: `indices`, `offsets`, `values`,
/// `dy` (`[bags, dim]`).
#[derive(Clone, Debug)]
pub struct BagEmbeddingGradWeight {
    /// Bags in the batch.
    pub bags: usize,
    /// Rows of the table.
    pub vocab: usize,
    /// Width of a table row.
    pub dim: usize,
    /// Whether the forward divided by the non-zero count.
    pub mean: bool,
}

impl RowKernel for BagEmbeddingGradWeight {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let d = self.dim;
        let [indices, offsets, values, dy] = bag_operands(inputs, self.bags, d)?;
        let entries = indices.len().min(values.len());
        out.fill(0.0);
        let end = first + out.len() / d.max(1);
        for r in 0..self.bags {
            let range = span(r, offsets, entries)?;
            let scale = if self.mean {
                let count = values[range.clone()].iter().filter(|v| **v != 0.0).count();
                1.0 / count.max(1) as f32
            } else {
                1.0
            };
            let g = &dy[r * d..(r + 1) * d];
            for e in range {
                let i = id(indices[e]);
                if i >= self.vocab {
                    return Err(format!(
                        "bag {r} holds id {i}, outside the table's {} rows",
                        self.vocab
                    ));
                }
                if i < first || i >= end {
                    continue;
                }
                let v = values[e] * scale;
                let row = &mut out[(i - first) * d..(i - first + 1) * d];
                for (o, &gv) in row.iter_mut().zip(g) {
                    *o += v * gv;
                }
            }
        }
        Ok(())
    }
}

/// The gradient of `Σ dy · cos(p, q)` with respect to `p`, in the
/// broadcast shape `full` (cosine along dim `dim`): per vector
/// `dp = dy · (q / (P Q) - cos · p / (P |p|))`, `P = max(|p|, eps)`, the
/// second term 0 for `p = 0` (PyTorch: no gradient through the clamp).
/// Output row `i` is the block of `full` at outer index `i` (the dims
/// before `dim`): `len · inner` elements holding `inner` vectors.
/// Inputs: `p`, `q`, `dy` (the forward's result shape, contiguous).
#[derive(Clone, Debug)]
pub struct CosineGrad {
    /// The broadcast shape.
    pub full: Vec<usize>,
    /// Strides of `p` along `full` (0 where it broadcasts).
    pub p_strides: Vec<usize>,
    /// Strides of `q` along `full` (0 where it broadcasts).
    pub q_strides: Vec<usize>,
    /// The reduced dim.
    pub dim: usize,
    /// The smallest norm.
    pub eps: f64,
}

impl CosineGrad {
    /// Offsets in `p` and `q` of full-shape element `flat`.
    fn offsets(&self, mut flat: usize) -> (usize, usize) {
        let (mut a, mut b) = (0, 0);
        for ((&n, &sp), &sq) in self
            .full
            .iter()
            .zip(&self.p_strides)
            .zip(&self.q_strides)
            .rev()
        {
            let n = n.max(1);
            a += (flat % n) * sp;
            b += (flat % n) * sq;
            flat /= n;
        }
        (a, b)
    }
}

impl RowKernel for CosineGrad {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let [p, q, dy, ..] = inputs else {
            return Err(format!(
                "the cosine gradient reads 3 buffers, got {}",
                inputs.len()
            ));
        };
        let len = self.full[self.dim];
        let inner: usize = self.full[self.dim + 1..].iter().product();
        let (sp, sq) = (self.p_strides[self.dim], self.q_strides[self.dim]);
        let width = len * inner;
        let past = || "the cosine gradient reads past its operands".to_string();
        for (k, block) in out.chunks_exact_mut(width.max(1)).enumerate() {
            let outer = first + k;
            for s in 0..inner {
                let (bp, bq) = self.offsets(outer * width + s);
                let g = f64::from(*dy.get(outer * inner + s).ok_or_else(past)?);
                let (mut dot, mut np, mut nq) = (0.0f64, 0.0f64, 0.0f64);
                for j in 0..len {
                    let x = f64::from(*p.get(bp + j * sp).ok_or_else(past)?);
                    let y = f64::from(*q.get(bq + j * sq).ok_or_else(past)?);
                    dot += x * y;
                    np += x * x;
                    nq += y * y;
                }
                let (np, nq) = (np.sqrt(), nq.sqrt());
                let (pp, qq) = (np.max(self.eps), nq.max(self.eps));
                let cos = dot / (pp * qq);
                let self_term = if np > 0.0 { cos / (pp * np) } else { 0.0 };
                for j in 0..len {
                    let x = f64::from(p[bp + j * sp]);
                    let y = f64::from(q[bq + j * sq]);
                    block[j * inner + s] = (g * (y / (pp * qq) - self_term * x)) as f32;
                }
            }
        }
        Ok(())
    }
}

/// The DSSM loss's gradient with respect to the `[batch, docs]` scores:
/// row `i` is `dloss / batch · (softmax(s_i) - e_0)`. Inputs: `scores`,
/// `dloss` (one element).
#[derive(Clone, Debug)]
pub struct DssmLossGrad {
    /// Queries.
    pub batch: usize,
    /// Documents per query.
    pub docs: usize,
}

impl RowKernel for DssmLossGrad {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let [s, dloss, ..] = inputs else {
            return Err(format!(
                "the loss gradient reads 2 buffers, got {}",
                inputs.len()
            ));
        };
        let k = self.docs.max(1);
        let scale = f64::from(*dloss.first().ok_or("no dloss")?) / self.batch.max(1) as f64;
        for (n, row) in out.chunks_exact_mut(k).enumerate() {
            let i = first + n;
            let scores = s
                .get(i * k..(i + 1) * k)
                .ok_or_else(|| format!("the loss gradient reads scores row {i}, past the input"))?;
            let m = scores
                .iter()
                .fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
            let sum: f64 = scores.iter().map(|&x| (f64::from(x) - m).exp()).sum();
            for (j, (o, &x)) in row.iter_mut().zip(scores).enumerate() {
                let target = if j == 0 { 1.0 } else { 0.0 };
                *o = (scale * ((f64::from(x) - m).exp() / sum - target)) as f32;
            }
        }
        Ok(())
    }
}
