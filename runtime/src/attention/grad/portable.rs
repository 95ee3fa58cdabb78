//! The scalar loops of the attention backward's two steps (see the
//! parent module) on row-major keys and values: the path on CPUs without
//! AVX-512F, with the forward's portable exponential.

use super::super::{exp_nonpositive, Attention};
use super::STATS;

/// `Σ a_d·b_d`.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The logit of a query head `q` against a key head `k`: `Σ (q_d·scale)·k_d`.
fn logit(scale: f32, q: &[f32], k: &[f32]) -> f32 {
    q.iter().zip(k).map(|(x, y)| x * scale * y).sum()
}

/// [`super::QueryGrad`] rows into `out` for the query rows `q` (`[rows,
/// C]`) and their output gradients `dout` (`[rows, Cv]`), against one
/// batch item's keys and values `k` (`[S, C]`), `v` (`[S, Cv]`).
pub(super) fn query_rows(
    a: &Attention,
    q: &[f32],
    dout: &[f32],
    (k, v): (&[f32], &[f32]),
    out: &mut [f32],
) {
    let (s, c, cv, heads) = (a.keys, a.dim, a.value_dim, a.heads);
    let (dh, dv) = (c / heads, cv / heads);
    let (mut p, mut dp) = (vec![0f32; s], vec![0f32; s]);
    let rows = q.chunks_exact(c).zip(dout.chunks_exact(cv));
    for ((qi, oi), row) in rows.zip(out.chunks_exact_mut(c + STATS * heads)) {
        let (dq, stats) = row.split_at_mut(c);
        for h in 0..heads {
            let (qh, oh) = (&qi[h * dh..][..dh], &oi[h * dv..][..dv]);
            for (j, pj) in p.iter_mut().enumerate() {
                *pj = logit(a.scale, qh, &k[j * c + h * dh..][..dh]);
            }
            let max = p.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let mut total = 0.0;
            for pj in p.iter_mut() {
                *pj = exp_nonpositive(*pj - max);
                total += *pj;
            }
            let inv = 1.0 / total;
            let mut d = 0.0;
            for (j, (pj, dpj)) in p.iter().zip(dp.iter_mut()).enumerate() {
                *dpj = dot(oh, &v[j * cv + h * dv..][..dv]);
                d += pj * *dpj;
            }
            let d = d * inv;
            let dqh = &mut dq[h * dh..][..dh];
            dqh.fill(0.0);
            for (j, (pj, dpj)) in p.iter().zip(&dp).enumerate() {
                let g = a.scale * inv * pj * (dpj - d);
                for (x, kv) in dqh.iter_mut().zip(&k[j * c + h * dh..][..dh]) {
                    *x += g * kv;
                }
            }
            stats[STATS * h..][..STATS].copy_from_slice(&[max, inv, d]);
        }
    }
}

/// [`super::KeyGrad`] rows into `out` for the keys `k` (`[rows, C]`) and
/// values `v` (`[rows, Cv]`), against one batch item's queries: `q`
/// (`[L, C]`), `dout` (`[L, Cv]`) and their [`super::QueryGrad`] rows.
pub(super) fn key_rows(
    a: &Attention,
    (q, dout, qrows): (&[f32], &[f32], &[f32]),
    (k, v): (&[f32], &[f32]),
    out: &mut [f32],
) {
    let (c, cv, heads) = (a.dim, a.value_dim, a.heads);
    let (dh, dv) = (c / heads, cv / heads);
    let keys = k.chunks_exact(c).zip(v.chunks_exact(cv));
    for ((kj, vj), row) in keys.zip(out.chunks_exact_mut(c + cv)) {
        row.fill(0.0);
        let (dk, dvr) = row.split_at_mut(c);
        for h in 0..heads {
            let (kh, vh) = (&kj[h * dh..][..dh], &vj[h * dv..][..dv]);
            let (dkh, dvh) = (&mut dk[h * dh..][..dh], &mut dvr[h * dv..][..dv]);
            let queries = q.chunks_exact(c).zip(dout.chunks_exact(cv));
            for ((qi, oi), st) in queries.zip(qrows.chunks_exact(c + STATS * heads)) {
                let [max, inv, d] = [0, 1, 2].map(|x| st[c + STATS * h + x]);
                let (qh, oh) = (&qi[h * dh..][..dh], &oi[h * dv..][..dv]);
                let p = exp_nonpositive(logit(a.scale, qh, kh) - max) * inv;
                let g = a.scale * p * (dot(oh, vh) - d);
                for (x, o) in dvh.iter_mut().zip(oh) {
                    *x += p * o;
                }
                for (x, qv) in dkh.iter_mut().zip(qh) {
                    *x += g * qv;
                }
            }
        }
    }
}
