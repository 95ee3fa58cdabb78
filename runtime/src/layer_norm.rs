//! Layer normalisation (`nn.LayerNorm`, the UNet's transformer blocks) as
//! a row step ([`crate::plan::Rows`]): a row is the `width` trailing
//! elements normalised together, with an elementwise affine of the same
//! shape. Mean and variance (biased, as PyTorch's) are two passes in f64
//! over the row, which at transformer widths (a few hundred) sits in L1.
//! The backward is in [`grad`].

use crate::plan::RowKernel;

/// `layer_norm` over rows of `width` elements. Inputs: `x`, then with
/// `affine` the `weight` and `bias` of `width` elements.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    /// Elements normalised together.
    pub width: usize,
    /// Added to the variance.
    pub eps: f32,
    /// Whether inputs 1 and 2 are the elementwise scale and shift.
    pub affine: bool,
}

/// A row's mean and `1 / sqrt(var + eps)` (two passes in f64, the
/// variance biased), rounded to f32.
fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len().max(1) as f64;
    let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = row
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean as f32, (1.0 / (var + f64::from(eps)).sqrt()) as f32)
}

/// Checks that `x` holds rows `first..first + rows` of `width` elements.
fn check_rows(x: &[f32], first: usize, rows: usize, width: usize) -> Result<(), String> {
    if x.len() < (first + rows) * width {
        return Err(format!(
            "the input holds {} elements, rows {first}..{} need {}",
            x.len(),
            first + rows,
            (first + rows) * width
        ));
    }
    Ok(())
}

impl RowKernel for LayerNorm {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let width = self.width;
        if width == 0 {
            return Ok(());
        }
        let x = inputs.first().copied().unwrap_or(&[]);
        check_rows(x, first, out.len() / width, width)?;
        let affine = if self.affine {
            match inputs.get(1..3) {
                Some([w, b]) if w.len() >= width && b.len() >= width => Some((*w, *b)),
                _ => return Err(format!("weight and bias of {width} elements")),
            }
        } else {
            None
        };
        for (i, y) in out.chunks_exact_mut(width).enumerate() {
            let row = &x[(first + i) * width..(first + i + 1) * width];
            let (mean, rstd) = row_stats(row, self.eps);
            match affine {
                Some((w, b)) => {
                    for (((o, &v), &wi), &bi) in y.iter_mut().zip(row).zip(w).zip(b) {
                        *o = (v - mean) * rstd * wi + bi;
                    }
                }
                None => {
                    for (o, &v) in y.iter_mut().zip(row) {
                        *o = (v - mean) * rstd;
                    }
                }
            }
        }
        Ok(())
    }
}

pub mod grad;
