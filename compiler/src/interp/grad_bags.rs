//! Reference semantics of the gradients of `amax` and `bag_conv1d`
//! (rules in `grad/rules/bags.rs`, list in `docs/training.md`):
//!
//! - `amax_grad(dy, x) {dims, keepdim}` -> `dx` (x's shape): each
//!   reduction's gradient goes to its first maximal element in row-major
//!   order over the reduced dims (the first NaN, if any); zero elsewhere.
//! - `bag_conv1d_grad_weight(dy, x) {k, pad}` -> `dw` (`[C, V, k]`):
//!   `dw[c, v, j] = Σ_seq Σ_t dy[seq, t, c] · x[seq, t + j - pad, v]` over
//!   the positions inside the sequence; `x` is the sparse bag input as its
//!   dense array. With `weight_rows`, `dw` is `[V, k, C]` (the same values
//!   with the channel dim last).

use super::array::{unravel, Array};
use super::dense::Attrs;

/// The result of one family op, or `None` if `name` is not in the family.
type Eval = Option<Result<Vec<Array>, String>>;

/// Evaluates `name` if it is one of this module's ops.
pub fn eval(name: &str, a: &Attrs, x: &[&Array], out: &[Vec<usize>]) -> Eval {
    let r = match name {
        "amax_grad" => amax_grad(x[0], x[1], a),
        "bag_conv1d_grad_weight" if a.bool("weight_rows", false) => {
            let mut file = out[0].clone();
            file.rotate_right(1);
            bag_conv1d_grad_weight(x[0], x[1], a, &file).map(|g| super::text::to_rows(&g))
        }
        "bag_conv1d_grad_weight" => bag_conv1d_grad_weight(x[0], x[1], a, &out[0]),
        _ => return None,
    };
    Some(r.map(|dx| vec![dx]))
}

fn amax_grad(dy: &Array, x: &Array, a: &Attrs) -> Result<Array, String> {
    let dims: Vec<usize> = a.ints("dims").iter().map(|&d| d as usize).collect();
    if let Some(d) = dims.iter().find(|&&d| d >= x.shape.len()) {
        return Err(format!("dim {d} is out of range for {:?}", x.shape));
    }
    let kept: Vec<usize> = (0..x.shape.len()).filter(|d| !dims.contains(d)).collect();
    let outputs: usize = kept.iter().map(|&d| x.shape[d]).product();
    if dy.data.len() != outputs {
        return Err(format!(
            "dy holds {} elements, the reduction of {:?} over {dims:?} gives {outputs}",
            dy.data.len(),
            x.shape
        ));
    }
    // Per output element: (position in x, value) of its first maximum.
    let mut best: Vec<Option<(usize, f64)>> = vec![None; outputs];
    for (i, &v) in x.data.iter().enumerate() {
        let idx = unravel(i, &x.shape);
        let o = kept.iter().fold(0, |o, &d| o * x.shape[d] + idx[d]);
        match best[o] {
            Some((_, b)) if b.is_nan() || !(v > b || v.is_nan()) => {}
            _ => best[o] = Some((i, v)),
        }
    }
    let mut dx = Array::zeros(&x.shape);
    for (o, b) in best.iter().enumerate() {
        if let Some((i, _)) = b {
            dx.data[*i] = dy.data[o];
        }
    }
    Ok(dx)
}

fn bag_conv1d_grad_weight(
    dy: &Array,
    x: &Array,
    a: &Attrs,
    out_shape: &[usize],
) -> Result<Array, String> {
    let (k, pad) = (a.int("k") as usize, a.int("pad") as usize);
    let (r, rd) = (x.shape.len(), dy.shape.len());
    if r < 2 || rd != r || out_shape.len() != 3 {
        return Err(format!(
            "dy {:?} and bags {:?} are not [..., T', C] and [..., T, V] with a [C, V, k] weight {out_shape:?}",
            dy.shape, x.shape
        ));
    }
    let (t_in, vocab) = (x.shape[r - 2], x.shape[r - 1]);
    let (t_out, c) = (dy.shape[r - 2], dy.shape[r - 1]);
    let seqs: usize = x.shape[..r - 2].iter().product();
    if out_shape != [c, vocab, k] {
        return Err(format!(
            "the weight gradient {out_shape:?} is not [{c}, {vocab}, {k}]"
        ));
    }
    let mut dw = Array::zeros(out_shape);
    for s in 0..seqs {
        for p in 0..t_in {
            let row = &x.data[(s * t_in + p) * vocab..(s * t_in + p + 1) * vocab];
            for (v, &val) in row.iter().enumerate().filter(|(_, v)| **v != 0.0) {
                for j in 0..k {
                    let Some(t) = (p + pad).checked_sub(j).filter(|t| *t < t_out) else {
                        continue;
                    };
                    for o in 0..c {
                        dw.data[(o * vocab + v) * k + j] += val * dy.data[(s * t_out + t) * c + o];
                    }
                }
            }
        }
    }
    Ok(dw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Attr;

    /// A tie goes to the first maximum, over two reduced dims.
    #[test]
    fn amax_grad_by_hand() {
        let x = Array::new(&[2, 2, 2], vec![1.0, 4.0, 4.0, 0.0, 2.0, 9.0, 3.0, 9.0]);
        let dy = Array::new(&[2], vec![10.0, 20.0]);
        let attrs = [("dims", Attr::Ints(vec![1, 2]))];
        let dx = amax_grad(&dy, &x, &Attrs(&attrs)).unwrap();
        assert_eq!(dx.data, [0.0, 10.0, 0.0, 0.0, 0.0, 20.0, 0.0, 0.0]);
        let attrs = [("dims", Attr::Ints(vec![1]))];
        let dy = Array::new(&[2, 2], vec![1.0, 2.0, 3.0, 4.0]);
        let dx = amax_grad(&dy, &x, &Attrs(&attrs)).unwrap();
        assert_eq!(dx.data, [0.0, 2.0, 1.0, 0.0, 0.0, 4.0, 3.0, 0.0]);
    }
}
