//! Row kernels ([`crate::plan::Rows`] steps) for the scoring end of the
//! DSSM family: `cosine_similarity` with broadcasting and the DSSM loss
//! `-log softmax(scores)[:, 0]` averaged over the batch. Both accumulate in
//! f64, as the reference interpreter does.

use crate::plan::RowKernel;

/// `cos(a, b)` along one dim of the broadcast shape, one output element
/// per row (width 1): `Σ a·b / (max(|a|, eps) · max(|b|, eps))`.
///
/// Output element `i` (row-major over `out_dims`) reads `a` at
/// `Σ idx_k · a_strides[k] + j · a_step` for `j < len`, likewise `b`; a
/// stride is 0 along a dim the operand broadcasts.
#[derive(Clone, Debug)]
pub struct Cosine {
    /// The output shape (the broadcast shape without the reduced dim).
    pub out_dims: Vec<usize>,
    /// Strides of `a` along the output dims (0 where it broadcasts).
    pub a_strides: Vec<usize>,
    /// Strides of `b` along the output dims (0 where it broadcasts).
    pub b_strides: Vec<usize>,
    /// Stride of `a` along the reduced dim (0 if it broadcasts).
    pub a_step: usize,
    /// Stride of `b` along the reduced dim (0 if it broadcasts).
    pub b_step: usize,
    /// Length of the reduced dim.
    pub len: usize,
    /// The smallest norm.
    pub eps: f64,
}

impl Cosine {
    /// The start of output element `i`'s vectors in `a` and `b`.
    fn starts(&self, mut i: usize) -> (usize, usize) {
        let (mut pa, mut pb) = (0, 0);
        let dims = self
            .out_dims
            .iter()
            .zip(&self.a_strides)
            .zip(&self.b_strides);
        for ((&d, &sa), &sb) in dims.rev() {
            let d = d.max(1);
            let at = i % d;
            i /= d;
            pa += at * sa;
            pb += at * sb;
        }
        (pa, pb)
    }
}

impl RowKernel for Cosine {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let (a, b) = match inputs {
            [a, b, ..] => (*a, *b),
            _ => return Err(format!("cosine reads 2 buffers, got {}", inputs.len())),
        };
        for (k, o) in out.iter_mut().enumerate() {
            let (pa, pb) = self.starts(first + k);
            let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
            for j in 0..self.len {
                let (x, y) = match (a.get(pa + j * self.a_step), b.get(pb + j * self.b_step)) {
                    (Some(&x), Some(&y)) => (f64::from(x), f64::from(y)),
                    _ => {
                        return Err(format!(
                            "cosine element {} reads past its operands",
                            first + k
                        ))
                    }
                };
                dot += x * y;
                na += x * x;
                nb += y * y;
            }
            *o = (dot / (na.sqrt().max(self.eps) * nb.sqrt().max(self.eps))) as f32;
        }
        Ok(())
    }
}

/// The DSSM loss of `[batch, docs]` scores (positive document first):
/// `mean_i (logsumexp(s_i) - s_i0)`, one output element.
#[derive(Clone, Debug)]
pub struct DssmLoss {
    /// Queries.
    pub batch: usize,
    /// Documents per query (1 + negatives).
    pub docs: usize,
}

impl RowKernel for DssmLoss {
    fn rows(&self, _first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let n = self.batch * self.docs;
        let s = inputs
            .first()
            .and_then(|s| s.get(..n))
            .ok_or_else(|| format!("the loss reads {n} scores"))?;
        let total: f64 = s
            .chunks_exact(self.docs.max(1))
            .map(|row| {
                let m = row
                    .iter()
                    .fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
                let sum: f64 = row.iter().map(|&x| (f64::from(x) - m).exp()).sum();
                m + sum.ln() - f64::from(row[0])
            })
            .sum();
        if let Some(o) = out.first_mut() {
            *o = (total / self.batch.max(1) as f64) as f32;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query `[2, 1, 3]` against documents `[2, 2, 3]` by hand.
    #[test]
    fn cosine_broadcasts_the_query() {
        let q = [1.0f32, 0.0, 0.0, 0.0, 3.0, 4.0];
        let d = [
            2.0f32, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 5.0, 1.0, 1.0, 1.0,
        ];
        let k = Cosine {
            out_dims: vec![2, 2],
            a_strides: vec![3, 0],
            b_strides: vec![6, 3],
            a_step: 1,
            b_step: 1,
            len: 3,
            eps: 1e-8,
        };
        let mut out = [f32::NAN; 4];
        k.rows(0, &[&q, &d], &mut out).unwrap();
        let want = [1.0, 0.0, 0.8, 7.0 / (5.0 * 3f32.sqrt())];
        for (a, e) in out.iter().zip(want) {
            assert!((a - e).abs() < 1e-6, "{out:?}");
        }
        let e = k.rows(0, &[&q, &d[..5]], &mut out).unwrap_err();
        assert!(e.contains("past its operands"), "{e}");
    }

    #[test]
    fn dssm_loss_is_the_mean_negative_log_probability_of_the_first() {
        let s = [0.0f32, 0.0, 2.0, 0.0];
        let mut out = [0.0f32];
        DssmLoss { batch: 2, docs: 2 }
            .rows(0, &[&s], &mut out)
            .unwrap();
        let want = (2f64.ln() + (1.0 + (-2f64).exp()).ln()) / 2.0;
        assert!((f64::from(out[0]) - want).abs() < 1e-6, "{out:?}");
    }
}
