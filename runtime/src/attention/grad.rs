//! The backward of [`Attention`] (training plans) as row steps
//! ([`crate::plan::Rows`]):
//!
//! - [`AttentionGrad`]: a row per batch item holding `[dq (L·C) | dk
//!   (S·C) | dv (S·Cv)]` of that item. Per head and query row the
//!   probabilities `p` are recomputed (maximum subtracted); then
//!   `dp_j = dout·v_j`, `ds_j = scale·p_j·(dp_j − Σ p·dp)`, `dq += Σ
//!   ds_j·k_j`, `dk_j += ds_j·q` and `dv_j += p_j·dout`. Scalar loops, not
//!   tuned: no plan needs it fast yet.
//! - [`Unpack`]: copies one block of those rows to its own tensor.

use super::Attention;
use crate::plan::RowKernel;

/// The three gradients of one attention call, a row per batch item.
/// Inputs: `dout`, `q`, `k`, `v`.
#[derive(Clone, Debug)]
pub struct AttentionGrad {
    /// The forward call (sizes, heads, scale).
    pub attention: Attention,
}

impl AttentionGrad {
    /// Floats of one batch item's row: `L·C + S·C + S·Cv`.
    pub fn row_len(&self) -> usize {
        let a = &self.attention;
        a.queries * a.dim + a.keys * a.dim + a.keys * a.value_dim
    }
}

impl RowKernel for AttentionGrad {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let a = &self.attention;
        let (l, s, c, cv) = (a.queries, a.keys, a.dim, a.value_dim);
        let row = self.row_len();
        if row == 0 {
            return Ok(());
        }
        let items = out.len() / row;
        let end = first + items;
        let [dout, q, k, v] = inputs[..] else {
            return Err("expects dout, q, k and v".into());
        };
        if dout.len() < end * l * cv
            || q.len() < end * l * c
            || k.len() < end * s * c
            || v.len() < end * s * cv
        {
            return Err(format!(
                "the operands do not hold batch items {first}..{end}"
            ));
        }
        let heads = a.heads.max(1);
        let (dh, dvh) = (c / heads, cv / heads);
        let (mut p, mut dp) = (vec![0f32; s], vec![0f32; s]);
        for (t, grads) in out.chunks_exact_mut(row).enumerate() {
            let n = first + t;
            let (q, k, v) = (
                &q[n * l * c..][..l * c],
                &k[n * s * c..][..s * c],
                &v[n * s * cv..][..s * cv],
            );
            let dout = &dout[n * l * cv..][..l * cv];
            grads.fill(0.0);
            let (dq, rest) = grads.split_at_mut(l * c);
            let (dk, dv) = rest.split_at_mut(s * c);
            for h in 0..heads {
                let (qh, vh) = (h * dh, h * dvh);
                for i in 0..l {
                    let qi = &q[i * c + qh..][..dh];
                    let oi = &dout[i * cv + vh..][..dvh];
                    let mut max = f32::NEG_INFINITY;
                    for (j, pj) in p.iter_mut().enumerate() {
                        let kj = &k[j * c + qh..][..dh];
                        *pj = a.scale * qi.iter().zip(kj).map(|(x, y)| x * y).sum::<f32>();
                        max = max.max(*pj);
                    }
                    let mut total = 0f64;
                    for pj in p.iter_mut() {
                        *pj = (*pj - max).exp();
                        total += f64::from(*pj);
                    }
                    let inv = (1.0 / total) as f32;
                    let mut mean = 0f64;
                    for (j, (pj, dpj)) in p.iter_mut().zip(dp.iter_mut()).enumerate() {
                        *pj *= inv;
                        let vj = &v[j * cv + vh..][..dvh];
                        *dpj = oi.iter().zip(vj).map(|(x, y)| x * y).sum::<f32>();
                        mean += f64::from(*pj) * f64::from(*dpj);
                    }
                    let mean = mean as f32;
                    for j in 0..s {
                        let ds = a.scale * p[j] * (dp[j] - mean);
                        for (g, &o) in dv[j * cv + vh..][..dvh].iter_mut().zip(oi) {
                            *g += p[j] * o;
                        }
                        let kj = &k[j * c + qh..][..dh];
                        for (g, &kv) in dq[i * c + qh..][..dh].iter_mut().zip(kj) {
                            *g += ds * kv;
                        }
                        for (g, &qv) in dk[j * c + qh..][..dh].iter_mut().zip(qi) {
                            *g += ds * qv;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Copies `width` floats at `offset` of each `stride`-long input row
/// into its output rows. Input: the rows.
#[derive(Clone, Debug)]
pub struct Unpack {
    /// Floats per input row.
    pub stride: usize,
    /// The first float copied of each row.
    pub offset: usize,
    /// Floats copied per row.
    pub width: usize,
}

impl RowKernel for Unpack {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        if self.width == 0 {
            return Ok(());
        }
        let src = inputs.first().copied().unwrap_or(&[]);
        let rows = out.len() / self.width;
        if self.offset + self.width > self.stride || src.len() < (first + rows) * self.stride {
            return Err(format!(
                "cannot copy {} floats at {} of rows {first}..{} of {}",
                self.width,
                self.offset,
                first + rows,
                self.stride
            ));
        }
        for (r, o) in out.chunks_exact_mut(self.width).enumerate() {
            let at = (first + r) * self.stride + self.offset;
            o.copy_from_slice(&src[at..at + self.width]);
        }
        Ok(())
    }
}
