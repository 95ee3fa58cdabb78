//! The backward of `layer_norm` as row steps ([`crate::plan::Rows`]):
//!
//! - [`GradInput`]: a row of `dx` needs only its own row: with `x̂ = (x −
//!   mean)·rstd` and `g = dy·γ`, `dx = rstd·(g − mean(g) − x̂·mean(g·x̂))`.
//! - [`GradParam`]: `dweight = Σ dy·x̂` or `dbias = Σ dy` over every row,
//!   one step each (a single row of `width` results), the rows added in
//!   order in f64 (deterministic).
//!
//! The statistics are recomputed from `x` as the forward computes them.

use super::{check_rows, row_stats};
use crate::plan::RowKernel;

/// `dx` of `layer_norm` over rows of `width` elements. Inputs: `dy`, `x`,
/// then with `affine` the `weight`.
#[derive(Clone, Debug)]
pub struct GradInput {
    /// Elements normalised together.
    pub width: usize,
    /// Added to the variance.
    pub eps: f32,
    /// Whether input 2 is the elementwise scale.
    pub affine: bool,
}

/// Which parameter gradient a [`GradParam`] step computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    /// `Σ dy·x̂`.
    Weight,
    /// `Σ dy`.
    Bias,
}

/// One parameter gradient of `layer_norm`, summed over `rows` rows of
/// `width` elements. Inputs: `dy`, `x`.
#[derive(Clone, Debug)]
pub struct GradParam {
    /// Elements normalised together.
    pub width: usize,
    /// Rows summed.
    pub rows: usize,
    /// Added to the variance.
    pub eps: f32,
    /// The gradient computed.
    pub param: Param,
}

/// `dy` and `x` from `inputs`, each checked to hold rows `first..first +
/// rows`.
fn dy_and_x<'a>(
    inputs: &[&'a [f32]],
    first: usize,
    rows: usize,
    width: usize,
) -> Result<(&'a [f32], &'a [f32]), String> {
    let [dy, x, ..] = inputs else {
        return Err("expects dy and x".into());
    };
    check_rows(dy, first, rows, width)?;
    check_rows(x, first, rows, width)?;
    Ok((dy, x))
}

impl RowKernel for GradInput {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let width = self.width;
        if width == 0 {
            return Ok(());
        }
        let (dy, x) = dy_and_x(inputs, first, out.len() / width, width)?;
        let weight = match (self.affine, inputs.get(2)) {
            (false, _) => None,
            (true, Some(w)) if w.len() >= width => Some(*w),
            (true, _) => return Err(format!("a weight of {width} elements")),
        };
        let gamma = |j: usize| weight.map_or(1.0, |w| w[j]);
        let n = width as f64;
        for (i, dx) in out.chunks_exact_mut(width).enumerate() {
            let at = (first + i) * width..(first + i + 1) * width;
            let (xr, dr) = (&x[at.clone()], &dy[at]);
            let (mean, rstd) = row_stats(xr, self.eps);
            let (mut sum_g, mut sum_gx) = (0f64, 0f64);
            for (j, (&v, &d)) in xr.iter().zip(dr).enumerate() {
                let g = f64::from(d * gamma(j));
                sum_g += g;
                sum_gx += g * f64::from((v - mean) * rstd);
            }
            let (mean_g, mean_gx) = ((sum_g / n) as f32, (sum_gx / n) as f32);
            for (j, ((o, &v), &d)) in dx.iter_mut().zip(xr).zip(dr).enumerate() {
                let xhat = (v - mean) * rstd;
                *o = rstd * (d * gamma(j) - mean_g - xhat * mean_gx);
            }
        }
        Ok(())
    }
}

impl RowKernel for GradParam {
    fn rows(&self, _first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let width = self.width;
        if width == 0 || out.len() < width {
            return Ok(());
        }
        let (dy, x) = dy_and_x(inputs, 0, self.rows, width)?;
        let mut total = vec![0f64; width];
        for r in 0..self.rows {
            let at = r * width..(r + 1) * width;
            let (xr, dr) = (&x[at.clone()], &dy[at]);
            match self.param {
                Param::Bias => {
                    for (t, &d) in total.iter_mut().zip(dr) {
                        *t += f64::from(d);
                    }
                }
                Param::Weight => {
                    let (mean, rstd) = row_stats(xr, self.eps);
                    for ((t, &d), &v) in total.iter_mut().zip(dr).zip(xr) {
                        *t += f64::from(d * ((v - mean) * rstd));
                    }
                }
            }
        }
        for (o, t) in out.iter_mut().zip(total) {
            *o = t as f32;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
