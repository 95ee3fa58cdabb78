//! Reference semantics of the gradient ops of the text-matching ops
//! (grad/rules/text.rs, `docs/gradops.md` "Text"). A sparse bag operand
//! arrives as its dense array (see [`super::run`]); a bag's non-zero
//! columns are its entries.
//!
//! - `sparse_linear_grad_weight(dy [..., out], x [..., V]) -> [out, V]`:
//!   `Σ_rows dy[r, o] · x[r, v]` (`[V, out]` with `weight_rows`).
//! - `embedding_bag_grad_weight(dy [..., dim], x [..., V]) -> [V, dim]`:
//!   `Σ_rows x[r, v] · dy[r, :]`, divided by the bag's non-zero count in
//!   `mean` mode (an empty bag contributes nothing).
//! - `cosine_similarity_grad(a, b, dy)`: the gradient of
//!   `Σ dy · cos(a, b)` with respect to `a`, in the broadcast shape;
//!   PyTorch's eps semantics (the norms' clamp passes no gradient).
//! - `dssm_loss_grad(s [N, K], dloss []) -> [N, K]`:
//!   `dloss / N · (softmax(s_i) - e_0)`.

use super::array::{broadcast_index, unravel, Array};
use super::dense::{log_softmax, Attrs};

/// The result of one family op, or `None` if `name` is not in the family.
type Eval = Option<Result<Vec<Array>, String>>;

/// Evaluates `name` if it is one of this module's ops.
pub fn eval(name: &str, a: &Attrs, x: &[&Array], out: &[Vec<usize>]) -> Eval {
    let r = match (name, x) {
        ("sparse_linear_grad_weight", [dy, bags]) => {
            let g = sparse_linear_grad_weight(dy, bags);
            Ok(match a.bool("weight_rows", false) {
                true => super::text::to_rows(&g),
                false => g,
            })
        }
        ("embedding_bag_grad_weight", [dy, bags]) => {
            Ok(embedding_bag_grad_weight(dy, bags, a.str("mode") == "mean"))
        }
        ("cosine_similarity_grad", [p, q, dy]) => Ok(cosine_similarity_grad(p, q, dy, a, &out[0])),
        ("dssm_loss_grad", [s, dloss]) => dssm_loss_grad(s, dloss),
        (
            "sparse_linear_grad_weight"
            | "embedding_bag_grad_weight"
            | "cosine_similarity_grad"
            | "dssm_loss_grad",
            _,
        ) => Err(format!("`{name}` got {} operands", x.len())),
        _ => return None,
    };
    Some(r.map(|g| vec![g]))
}

fn sparse_linear_grad_weight(dy: &Array, bags: &Array) -> Array {
    let out = *dy.shape.last().expect("rank >= 2");
    let vocab = *bags.shape.last().expect("rank >= 2");
    let rows = bags.data.len() / vocab.max(1);
    let mut g = Array::zeros(&[out, vocab]);
    for r in 0..rows {
        for v in 0..vocab {
            let x = bags.data[r * vocab + v];
            if x == 0.0 {
                continue;
            }
            for o in 0..out {
                g.data[o * vocab + v] += dy.data[r * out + o] * x;
            }
        }
    }
    g
}

fn embedding_bag_grad_weight(dy: &Array, bags: &Array, mean: bool) -> Array {
    let dim = *dy.shape.last().expect("rank >= 2");
    let vocab = *bags.shape.last().expect("rank >= 2");
    let rows = bags.data.len() / vocab.max(1);
    let mut g = Array::zeros(&[vocab, dim]);
    for r in 0..rows {
        let bag = &bags.data[r * vocab..(r + 1) * vocab];
        let count = bag.iter().filter(|v| **v != 0.0).count();
        let scale = if mean && count > 0 {
            1.0 / count as f64
        } else {
            1.0
        };
        for (v, &x) in bag.iter().enumerate().filter(|(_, x)| **x != 0.0) {
            for d in 0..dim {
                g.data[v * dim + d] += x * scale * dy.data[r * dim + d];
            }
        }
    }
    g
}

/// For every result element: `dot`, `|p|`, `|q|` along `dim`, then
/// `dp_j = dy · (q_j / (P Q) - cos · p_j / (P |p|))` with `P = max(|p|,
/// eps)` (the second term is 0 when `|p| = 0`).
fn cosine_similarity_grad(p: &Array, q: &Array, dy: &Array, at: &Attrs, full: &[usize]) -> Array {
    let d = at.int("dim") as usize;
    let eps = at.float("eps", 1e-8);
    let len = full[d];
    let mut g = Array::zeros(full);
    for (i, &dyi) in dy.data.iter().enumerate() {
        let mut idx = unravel(i, &dy.shape);
        idx.insert(d, 0);
        let read = |idx: &mut Vec<usize>, j: usize| {
            idx[d] = j;
            (
                p.data[broadcast_index(idx, &p.shape)],
                q.data[broadcast_index(idx, &q.shape)],
            )
        };
        let (mut dot, mut np, mut nq) = (0.0, 0.0, 0.0);
        for j in 0..len {
            let (x, y) = read(&mut idx, j);
            dot += x * y;
            np += x * x;
            nq += y * y;
        }
        let (np, nq) = (np.sqrt(), nq.sqrt());
        let (pp, qq) = (np.max(eps), nq.max(eps));
        let cos = dot / (pp * qq);
        let self_term = if np > 0.0 { cos / (pp * np) } else { 0.0 };
        for j in 0..len {
            let (x, y) = read(&mut idx, j);
            let flat = idx.iter().zip(full).fold(0, |acc, (&k, &s)| acc * s + k);
            g.data[flat] = dyi * (y / (pp * qq) - self_term * x);
        }
    }
    g
}

fn dssm_loss_grad(s: &Array, dloss: &Array) -> Result<Array, String> {
    if s.shape.len() != 2 || dloss.data.len() != 1 {
        return Err(format!(
            "`dssm_loss_grad` takes scores [N, K] and a scalar dloss, got {:?} and {:?}",
            s.shape, dloss.shape
        ));
    }
    let (n, k) = (s.shape[0], s.shape[1]);
    let scale = dloss.data[0] / n as f64;
    let mut g = Array::zeros(&s.shape);
    for i in 0..n {
        let ls = log_softmax(&s.data[i * k..(i + 1) * k]);
        for (j, l) in ls.iter().enumerate() {
            let target = if j == 0 { 1.0 } else { 0.0 };
            g.data[i * k + j] = scale * (l.exp() - target);
        }
    }
    Ok(g)
}
