//! Reference semantics of the contraction gradients: the adjoints of
//! `convNd` (over its input and its weight) and of `linear`, written as
//! the forward's loops with the multiply-add turned around, so each is
//! obviously the transpose of [`super::dense::conv`] / [`super::dense::linear`].
//! The result shapes (dx, dW) come from the node's type.

use super::array::{unravel, Array};
use super::dense::Attrs;

/// The result of one family op, or `None` if `name` is not in the family.
type Eval = Option<Result<Vec<Array>, String>>;

/// Evaluates `name` if it is one of this module's ops.
pub fn eval(name: &str, a: &Attrs, x: &[&Array], out: &[Vec<usize>]) -> Eval {
    let r = match name {
        "conv1d_grad_input" | "conv2d_grad_input" => conv_grad(x[0], x[1], a, &out[0], Wrt::Input),
        "conv1d_grad_weight" | "conv2d_grad_weight" => {
            conv_grad(x[0], x[1], a, &out[0], Wrt::Weight)
        }
        "linear_grad_input" => linear_grad_input(x[0], x[1]),
        "linear_grad_weight" => linear_grad_weight(x[0], x[1]),
        _ => return None,
    };
    Some(r.map(|r| vec![r]))
}

/// Which operand of the convolution the gradient is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wrt {
    /// `other` is the weight, the result is dx (`out_shape` = x's shape).
    Input,
    /// `other` is the input x, the result is dW (`out_shape` = W's shape).
    Weight,
}

/// For `y = conv(x, W)` (any spatial rank, PyTorch semantics): every
/// product `x[n, c, p] · W[o, ci, k]` the forward adds into
/// `y[n, o, q]` (with `p = q·stride + k·dilation − pad` inside the input)
/// sends `dy[n, o, q]` back to the other factor.
fn conv_grad(
    dy: &Array,
    other: &Array,
    a: &Attrs,
    out_shape: &[usize],
    wrt: Wrt,
) -> Result<Array, String> {
    let (x_shape, w_shape) = match wrt {
        Wrt::Input => (out_shape, &other.shape[..]),
        Wrt::Weight => (&other.shape[..], out_shape),
    };
    let nd = dy.shape.len().saturating_sub(2);
    let (stride, pad, dil) = (a.ints("stride"), a.ints("pad"), a.ints("dilation"));
    let groups = a.int("groups").max(1) as usize;
    if nd == 0
        || x_shape.len() != nd + 2
        || w_shape.len() != nd + 2
        || [&stride, &pad, &dil].iter().any(|v| v.len() != nd)
    {
        return Err(format!(
            "dy {:?}, input {x_shape:?}, weight {w_shape:?}, stride {stride:?}, pad {pad:?}, dilation {dil:?} do not fit one rank",
            dy.shape
        ));
    }
    let (cin, cout) = (x_shape[1], dy.shape[1]);
    if cin % groups != 0 || cout % groups != 0 || w_shape[1] * groups != cin || w_shape[0] != cout {
        return Err(format!(
            "input {x_shape:?}, weight {w_shape:?} and dy {:?} do not fit groups = {groups}",
            dy.shape
        ));
    }
    let (cin_g, cout_g) = (cin / groups, cout / groups);
    let ksize = &w_shape[2..];
    let kn: usize = ksize.iter().product();
    let in_sp = &x_shape[2..];
    let sp_in: usize = in_sp.iter().product();
    let out_sp = &dy.shape[2..];
    let sp_out: usize = out_sp.iter().product();
    let mut res = Array::zeros(out_shape);
    for n in 0..dy.shape[0] {
        for o in 0..cout {
            let g = o / cout_g;
            for q in 0..sp_out {
                let qpos = unravel(q, out_sp);
                let d = dy.data[(n * cout + o) * sp_out + q];
                for ci in 0..cin_g {
                    let c = g * cin_g + ci;
                    for k in 0..kn {
                        let kpos = unravel(k, ksize);
                        let mut p = 0usize;
                        let mut inside = true;
                        for ax in 0..nd {
                            let at =
                                qpos[ax] as i64 * stride[ax] + kpos[ax] as i64 * dil[ax] - pad[ax];
                            if at < 0 || at >= in_sp[ax] as i64 {
                                inside = false;
                                break;
                            }
                            p = p * in_sp[ax] + at as usize;
                        }
                        if !inside {
                            continue;
                        }
                        let xi = (n * cin + c) * sp_in + p;
                        let wi = (o * cin_g + ci) * kn + k;
                        match wrt {
                            Wrt::Input => res.data[xi] += d * other.data[wi],
                            Wrt::Weight => res.data[wi] += d * other.data[xi],
                        }
                    }
                }
            }
        }
    }
    Ok(res)
}

/// `dx[.., i] = Σ_o dy[.., o] · W[o, i]` for `y = x·Wᵀ`.
fn linear_grad_input(dy: &Array, w: &Array) -> Result<Array, String> {
    let out_f = dy.shape.last().copied().unwrap_or(0);
    if w.shape.len() != 2 || w.shape[0] != out_f {
        return Err(format!(
            "dy {:?} and weight {:?} do not fit [.., out] x [out, in]",
            dy.shape, w.shape
        ));
    }
    let in_f = w.shape[1];
    let rows = dy.data.len() / out_f.max(1);
    let mut shape = dy.shape.clone();
    if let Some(last) = shape.last_mut() {
        *last = in_f;
    }
    let mut data = vec![0.0; rows * in_f];
    for r in 0..rows {
        for o in 0..out_f {
            for i in 0..in_f {
                data[r * in_f + i] += dy.data[r * out_f + o] * w.data[o * in_f + i];
            }
        }
    }
    Ok(Array::new(&shape, data))
}

/// `dW[o, i] = Σ_rows dy[r, o] · x[r, i]` for `y = x·Wᵀ`.
fn linear_grad_weight(dy: &Array, x: &Array) -> Result<Array, String> {
    let out_f = dy.shape.last().copied().unwrap_or(0);
    let in_f = x.shape.last().copied().unwrap_or(0);
    if dy.shape.len() != x.shape.len()
        || dy.shape[..dy.shape.len().saturating_sub(1)]
            != x.shape[..x.shape.len().saturating_sub(1)]
    {
        return Err(format!(
            "dy {:?} and input {:?} do not have the same leading dims",
            dy.shape, x.shape
        ));
    }
    let rows = dy.data.len() / out_f.max(1);
    let mut data = vec![0.0; out_f * in_f];
    for r in 0..rows {
        for o in 0..out_f {
            for i in 0..in_f {
                data[o * in_f + i] += dy.data[r * out_f + o] * x.data[r * in_f + i];
            }
        }
    }
    Ok(Array::new(&[out_f, in_f], data))
}

#[cfg(test)]
mod tests;
