//! Reference semantics of the text-matching ops (ops/embed.rs): embedding
//! lookups, the layers over sparse bags, cosine similarity and the DSSM loss.
//!
//! A sparse bag input `sparse f32[..., V]` arrives as a dense [`Array`] of
//! its logical shape (see [`super::run`]); a bag's non-zero columns are its
//! stored entries. With the attribute `weight_rows` (the trainer's row
//! layout, `compiler/src/train/rows.rs`), `sparse_linear`'s weight is
//! `[V, out]` and `bag_conv1d`'s `[V, k, C]`: they are transposed back to
//! `[out, V]` and `[C, V, k]` ([`from_rows`]) and computed as without it.

use super::array::{broadcast_index, unravel, Array};
use super::dense::{linear, log_softmax, Attrs};

/// The result of one family op, or `None` if `name` is not in the family.
type Eval = Option<Result<Vec<Array>, String>>;

/// Evaluates `name` if it is one of this module's ops.
pub fn eval(name: &str, a: &Attrs, x: &[&Array], out: &[Vec<usize>]) -> Eval {
    let r = match name {
        "embedding" => embedding(x[0], x[1]),
        "embedding_bag" => embedding_bag(x[0], x[1], a.str("mode") == "mean"),
        "sparse_linear" | "bag_conv1d" if a.bool("weight_rows", false) => {
            let w = from_rows(x[1]);
            let mut x = x.to_vec();
            x[1] = &w;
            let rest: Vec<_> =
                a.0.iter()
                    .filter(|(k, _)| *k != "weight_rows")
                    .cloned()
                    .collect();
            return eval(name, &Attrs(&rest), &x, out);
        }
        "sparse_linear" => Ok(linear(x[0], x[1], x.get(2).copied())),
        "bag_conv1d" => Ok(bag_conv1d(x[0], x[1], x.get(2).copied(), a, &out[0])),
        "cosine_similarity" => Ok(cosine_similarity(x[0], x[1], a, &out[0])),
        "dssm_loss" => Ok(dssm_loss(x[0])),
        _ => return None,
    };
    Some(r.map(|r| vec![r]))
}

/// A weight in the row layout (`[V, out]`, `[V, k, C]`) in the file layout
/// (`[out, V]`, `[C, V, k]`): the last dim moves to the front.
pub(super) fn from_rows(w: &Array) -> Array {
    let (lead, rest) = w.shape.split_last().map_or((1, &[][..]), |(l, r)| (*l, r));
    let n: usize = rest.iter().product();
    let mut shape = vec![lead];
    shape.extend_from_slice(rest);
    let mut data = vec![0.0; w.data.len()];
    for i in 0..n {
        for o in 0..lead {
            data[o * n + i] = w.data[i * lead + o];
        }
    }
    Array::new(&shape, data)
}

/// A weight (or gradient) in the file layout (`[out, V]`, `[C, V, k]`) in
/// the row layout (`[V, out]`, `[V, k, C]`): the first dim moves to the back.
pub(super) fn to_rows(w: &Array) -> Array {
    let (lead, rest) = w.shape.split_first().map_or((1, &[][..]), |(l, r)| (*l, r));
    let n: usize = rest.iter().product();
    let mut shape = rest.to_vec();
    shape.push(lead);
    let mut data = vec![0.0; w.data.len()];
    for o in 0..lead {
        for i in 0..n {
            data[i * lead + o] = w.data[o * n + i];
        }
    }
    Array::new(&shape, data)
}

/// `weight[ids]`: ids of any shape -> `[..., dim]`.
fn embedding(ids: &Array, w: &Array) -> Result<Array, String> {
    let (num, dim) = (w.shape[0], w.shape[1]);
    let mut shape = ids.shape.clone();
    shape.push(dim);
    let mut data = Vec::with_capacity(ids.data.len() * dim);
    for &id in &ids.data {
        if id < 0.0 || id >= num as f64 {
            return Err(format!("id {id} is outside the table of {num} rows"));
        }
        let row = id as usize;
        data.extend_from_slice(&w.data[row * dim..(row + 1) * dim]);
    }
    Ok(Array::new(&shape, data))
}

/// Each bag (row of `[..., V]`) -> the sum of `value * weight[column]` over
/// its non-zero columns; `mean` divides by the number of non-zeros (an
/// empty bag gives zeros, as `nn.EmbeddingBag`).
fn embedding_bag(bags: &Array, w: &Array, mean: bool) -> Result<Array, String> {
    let (vocab, dim) = (w.shape[0], w.shape[1]);
    let rows = bags.data.len() / vocab;
    let mut shape = bags.shape.clone();
    *shape.last_mut().expect("rank >= 2") = dim;
    let mut out = Array::zeros(&shape);
    for r in 0..rows {
        let bag = &bags.data[r * vocab..(r + 1) * vocab];
        let mut count = 0usize;
        for (col, &val) in bag.iter().enumerate().filter(|(_, v)| **v != 0.0) {
            count += 1;
            for d in 0..dim {
                out.data[r * dim + d] += val * w.data[col * dim + d];
            }
        }
        if mean && count > 0 {
            for d in 0..dim {
                out.data[r * dim + d] /= count as f64;
            }
        }
    }
    Ok(out)
}

/// `nn.Conv1d(V, out, k, padding = pad)` over sequences of bags
/// `[..., T, V]` -> `[..., T', out]` (positions before channels); weight
/// `[out, V, k]`.
fn bag_conv1d(x: &Array, w: &Array, bias: Option<&Array>, a: &Attrs, out_shape: &[usize]) -> Array {
    let (k, pad) = (a.int("k"), a.int("pad"));
    let r = x.shape.len();
    let (t_in, vocab) = (x.shape[r - 2], x.shape[r - 1]);
    let (t_out, cout) = (out_shape[r - 2], out_shape[r - 1]);
    let seqs: usize = x.shape[..r - 2].iter().product();
    let mut out = Array::zeros(out_shape);
    for s in 0..seqs {
        for t in 0..t_out {
            for o in 0..cout {
                let mut acc = bias.map_or(0.0, |b| b.data[o]);
                for j in 0..k {
                    let p = t as i64 + j - pad;
                    if p < 0 || p >= t_in as i64 {
                        continue;
                    }
                    let row = (s * t_in + p as usize) * vocab;
                    for v in 0..vocab {
                        let val = x.data[row + v];
                        if val != 0.0 {
                            acc += val * w.data[(o * vocab + v) * k as usize + j as usize];
                        }
                    }
                }
                out.data[(s * t_out + t) * cout + o] = acc;
            }
        }
    }
    out
}

/// `F.cosine_similarity`: `a` and `b` broadcast, then over `dim`
/// `sum(a / max(|a|, eps) * b / max(|b|, eps))`.
fn cosine_similarity(a: &Array, b: &Array, at: &Attrs, out_shape: &[usize]) -> Array {
    let d = at.int("dim") as usize;
    let eps = at.float("eps", 1e-8);
    let rank = a.shape.len().max(b.shape.len());
    // The broadcast shape: the output with the reduced dim re-inserted.
    let pad = |s: &[usize]| {
        let mut v = vec![1; rank - s.len()];
        v.extend_from_slice(s);
        v
    };
    let (pa, pb) = (pad(&a.shape), pad(&b.shape));
    let len = pa[d].max(pb[d]);
    let mut out = Array::zeros(out_shape);
    for (i, v) in out.data.iter_mut().enumerate() {
        let mut idx = unravel(i, out_shape);
        idx.insert(d, 0);
        let (mut dot, mut na, mut nb) = (0.0, 0.0, 0.0);
        for j in 0..len {
            idx[d] = j;
            let p = a.data[broadcast_index(&idx, &a.shape)];
            let q = b.data[broadcast_index(&idx, &b.shape)];
            dot += p * q;
            na += p * p;
            nb += q * q;
        }
        *v = dot / (na.sqrt().max(eps) * nb.sqrt().max(eps));
    }
    out
}

/// `-log softmax(scores, dim = 1)[:, 0]`, averaged over the batch.
fn dssm_loss(s: &Array) -> Array {
    let (n, k) = (s.shape[0], s.shape[1]);
    let total: f64 = (0..n)
        .map(|i| -log_softmax(&s.data[i * k..(i + 1) * k])[0])
        .sum();
    Array::new(&[], vec![total / n as f64])
}
