//! Reference semantics of the elementwise gradient ops the backward rules
//! emit (`docs/gradops.md`, "Elementwise"): `op_grad(dy, v)` is the
//! incoming gradient `dy` times the activation's derivative, where `v` is
//! the activation's output (`relu_grad`, `tanh_grad`, `sigmoid_grad`) or
//! its input (`leaky_relu_grad`, `silu_grad`, `gelu_grad`). Operands
//! broadcast like every binary op (the rules give equal shapes).

use super::array::Array;
use super::dense::{binary, erf, Attrs};
use std::f64::consts::{FRAC_2_SQRT_PI, PI, SQRT_2};

/// The result of one family op, or `None` if `name` is not in the family.
type Eval = Option<Result<Vec<Array>, String>>;

/// Evaluates `name` if it is one of this module's ops.
pub fn eval(name: &str, a: &Attrs, x: &[&Array], out: &[Vec<usize>]) -> Eval {
    let f: Box<dyn Fn(f64, f64) -> f64> = match name {
        "relu_grad" => Box::new(|dy, y| if y > 0.0 { dy } else { 0.0 }),
        "tanh_grad" => Box::new(|dy, y| dy * (1.0 - y * y)),
        "sigmoid_grad" => Box::new(|dy, y| dy * y * (1.0 - y)),
        "leaky_relu_grad" => {
            let s = a.float("negative_slope", 0.01);
            Box::new(move |dy, v| if v > 0.0 { dy } else { s * dy })
        }
        "silu_grad" => Box::new(|dy, v| {
            let s = 1.0 / (1.0 + (-v).exp());
            dy * s * (1.0 + v * (1.0 - s))
        }),
        "gelu_grad" if a.str("approximate") == "tanh" => Box::new(|dy, v| dy * gelu_tanh_slope(v)),
        "gelu_grad" => Box::new(|dy, v| dy * gelu_erf_slope(v)),
        _ => return None,
    };
    if x.len() != 2 {
        return Some(Err(format!(
            "`{name}` takes (dy, v), got {} operands",
            x.len()
        )));
    }
    Some(Ok(vec![binary(x[0], x[1], &out[0], f)]))
}

/// `d/dx [x·Φ(x)] = Φ(x) + x·φ(x)` (erf form).
fn gelu_erf_slope(x: f64) -> f64 {
    let cdf = 0.5 * (1.0 + erf(x / SQRT_2));
    let pdf = (-0.5 * x * x).exp() / (2.0 * PI).sqrt();
    cdf + x * pdf
}

/// `d/dx [½x(1 + tanh u)]`, `u = √(2/π)(x + 0.044715x³)`.
fn gelu_tanh_slope(x: f64) -> f64 {
    // √(2/π) = 2/√π · 1/√2.
    let k = FRAC_2_SQRT_PI / SQRT_2;
    let u = k * (x + 0.044715 * x.powi(3));
    let t = u.tanh();
    let du = k * (1.0 + 3.0 * 0.044715 * x * x);
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du
}

#[cfg(test)]
mod tests;
