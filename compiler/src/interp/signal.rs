//! Reference semantics of the signal ops that stay nodes after elaboration
//! (ops/signal.rs): `differential_entropy`, `grid_map`, `frame` and
//! `quantize_u8`. The FIR filters, the DFT magnitude and the mel filterbank
//! are lowered to `conv1d`, `matmul` and elementwise ops with constant
//! matrices, so they need no semantics of their own.

use super::array::{unravel, Array};
use super::dense::Attrs;

/// The result of one family op, or `None` if `name` is not in the family.
type Eval = Option<Result<Vec<Array>, String>>;

/// Evaluates `name` if it is one of this module's ops.
pub fn eval(name: &str, a: &Attrs, x: &[&Array], out: &[Vec<usize>]) -> Eval {
    let r = match name {
        "differential_entropy" => differential_entropy(x[0], a, &out[0]),
        "grid_map" => grid_map(x[0], a, &out[0]),
        "frame" => frame(x[0], a, &out[0]),
        "quantize_u8" => quantize_u8(x[0], a),
        _ => return None,
    };
    Some(Ok(vec![r]))
}

/// `0.5 ln(2 pi e var)` (population variance) of each non-overlapping
/// segment of `segment` samples along `dim`.
fn differential_entropy(x: &Array, a: &Attrs, out_shape: &[usize]) -> Array {
    let d = a.int("dim") as usize;
    let seg = a.int("segment") as usize;
    let xs = x.strides();
    let mut out = Array::zeros(out_shape);
    for (i, v) in out.data.iter_mut().enumerate() {
        let idx = unravel(i, out_shape);
        let base: usize = idx.iter().zip(&xs).map(|(p, s)| p * s).sum::<usize>() - idx[d] * xs[d]
            + idx[d] * seg * xs[d];
        let vals: Vec<f64> = (0..seg).map(|j| x.data[base + j * xs[d]]).collect();
        let mean = vals.iter().sum::<f64>() / seg as f64;
        let var = vals.iter().map(|p| (p - mean).powi(2)).sum::<f64>() / seg as f64;
        *v = 0.5 * (2.0 * std::f64::consts::PI * std::f64::consts::E * var).ln();
    }
    out
}

/// Places channel `c` of the last dim at cell `cells[c]` (row-major in a
/// `grid x grid` map); other cells are zero.
fn grid_map(x: &Array, a: &Attrs, out_shape: &[usize]) -> Array {
    let cells = a.ints("cells");
    let g = a.int("grid") as usize;
    let ch = cells.len();
    let mut out = Array::zeros(out_shape);
    for r in 0..x.data.len() / ch.max(1) {
        for (c, &cell) in cells.iter().enumerate() {
            out.data[r * g * g + cell as usize] = x.data[r * ch + c];
        }
    }
    out
}

/// `mel_features.frame` along `dim`: frame `f` holds samples
/// `f*hop .. f*hop + length`, inserted as a new dim after `dim`.
fn frame(x: &Array, a: &Attrs, out_shape: &[usize]) -> Array {
    let d = a.int("dim") as usize;
    let hop = a.int("hop") as usize;
    let xs = x.strides();
    let mut out = Array::zeros(out_shape);
    for (i, v) in out.data.iter_mut().enumerate() {
        let mut idx = unravel(i, out_shape);
        let pos = idx[d] * hop + idx[d + 1];
        idx.remove(d + 1);
        idx[d] = pos;
        *v = x.data[idx.iter().zip(&xs).map(|(p, s)| p * s).sum::<usize>()];
    }
    out
}

/// `(clamp(x, min, max) - min) * 255 / (max - min)`, rounded half to even
/// (`rounding = "round"`) or truncated.
fn quantize_u8(x: &Array, a: &Attrs) -> Array {
    let (lo, hi) = (a.float("min", -2.0), a.float("max", 2.0));
    let truncate = a.str("rounding") == "truncate";
    let data = x
        .data
        .iter()
        .map(|&v| {
            let q = (v.clamp(lo, hi) - lo) * 255.0 / (hi - lo);
            if truncate {
                q.trunc()
            } else {
                q.round_ties_even()
            }
        })
        .collect();
    Array::new(&x.shape, data)
}
