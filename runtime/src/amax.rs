//! Row kernels of `amax` over one run of adjacent dims and of its
//! gradient ([`crate::plan::Rows`] steps). The input is viewed as
//! `[outer, len, inner]` (the reduced dims merged into `len`); a row of
//! the step is one `outer` index, so rows are independent and split over
//! threads without scratch space.
//!
//! The maximum propagates NaN, as `torch.amax`. The gradient goes to one
//! element per reduction: the first maximal one along `len` (the first
//! NaN, if any). PyTorch's `amax` backward instead splits the gradient
//! evenly among all elements equal to the maximum; the two differ only
//! at exact ties (`docs/training.md`).

use crate::plan::RowKernel;

/// `out[o, i] = max_p x[o, p, i]`: input 0 is `x` (`[outer, len, inner]`),
/// output row `o` is `inner` wide. `len` must be at least 1.
#[derive(Clone, Debug)]
pub struct AmaxRows {
    /// Elements reduced per output element.
    pub len: usize,
    /// Elements per output row (the dims after the reduced ones).
    pub inner: usize,
}

impl RowKernel for AmaxRows {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let (len, inner) = (self.len, self.inner);
        let x = inputs.first().copied().unwrap_or(&[]);
        let rows = out.len().checked_div(inner).unwrap_or(0);
        check_len(x, (first + rows) * len * inner, "x")?;
        if len == 0 {
            return Err("a maximum over no elements".into());
        }
        for (r, row) in out.chunks_exact_mut(inner.max(1)).take(rows).enumerate() {
            let base = (first + r) * len * inner;
            row.copy_from_slice(&x[base..base + inner]);
            for p in 1..len {
                let src = &x[base + p * inner..base + (p + 1) * inner];
                for (o, &v) in row.iter_mut().zip(src) {
                    if v > *o || v.is_nan() && !o.is_nan() {
                        *o = v;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The gradient of [`AmaxRows`]: inputs `dy` (`[outer, inner]`) and `x`
/// (`[outer, len, inner]`); output row `o` is `dx[o]` (`len · inner`
/// wide): `dy[o, i]` at the first maximal `p` of `x[o, :, i]` (the first
/// NaN, if any), zero elsewhere.
#[derive(Clone, Debug)]
pub struct AmaxGrad {
    /// Elements reduced per output element of the forward.
    pub len: usize,
    /// Elements per row of `dy`.
    pub inner: usize,
}

/// The position [`AmaxGrad`] hands the gradient: the first maximal
/// element of `len` elements `at(p)`, the first NaN if any.
pub fn first_max(len: usize, at: impl Fn(usize) -> f32) -> usize {
    let (mut best, mut bv) = (0, at(0));
    for p in 1..len {
        if bv.is_nan() {
            break;
        }
        let v = at(p);
        if v > bv || v.is_nan() {
            (best, bv) = (p, v);
        }
    }
    best
}

impl RowKernel for AmaxGrad {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let (len, inner) = (self.len, self.inner);
        let (dy, x) = match inputs {
            [dy, x, ..] => (*dy, *x),
            _ => return Err(format!("`amax_grad` reads 2 buffers, got {}", inputs.len())),
        };
        let width = len * inner;
        let rows = out.len().checked_div(width).unwrap_or(0);
        check_len(dy, (first + rows) * inner, "dy")?;
        check_len(x, (first + rows) * width, "x")?;
        if len == 0 {
            return Ok(());
        }
        for (r, row) in out.chunks_exact_mut(width.max(1)).take(rows).enumerate() {
            let (o, xs) = (first + r, &x[(first + r) * width..(first + r + 1) * width]);
            row.fill(0.0);
            for i in 0..inner {
                let p = first_max(len, |p| xs[p * inner + i]);
                row[p * inner + i] = dy[o * inner + i];
            }
        }
        Ok(())
    }
}

/// Refuses an input `what` shorter than `need`.
fn check_len(x: &[f32], need: usize, what: &str) -> Result<(), String> {
    if x.len() < need {
        return Err(format!(
            "`{what}` holds {} elements, the rows need {need}",
            x.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[2, 3, 2]`: maxima per column, a tie (first wins), a NaN (it
    /// propagates and takes the gradient), rows computed from an offset.
    #[test]
    fn maxima_and_their_gradients_by_hand() {
        let x = [
            1.0,
            5.0,
            3.0,
            5.0,
            2.0,
            -1.0, // o = 0: columns [1, 3, 2], [5, 5, -1]
            0.0,
            f32::NAN,
            -2.0,
            7.0,
            -3.0,
            1.0, // o = 1: [0, -2, -3], [NaN, 7, 1]
        ];
        let k = AmaxRows { len: 3, inner: 2 };
        let mut y = [0.0f32; 4];
        k.rows(0, &[&x], &mut y).unwrap();
        assert_eq!(y[..3], [3.0, 5.0, 0.0]);
        assert!(y[3].is_nan());
        let mut y1 = [0.0f32; 2];
        k.rows(1, &[&x], &mut y1).unwrap();
        assert_eq!(y1[0], 0.0);
        let g = AmaxGrad { len: 3, inner: 2 };
        let dy = [10.0, 20.0, 30.0, 40.0];
        let mut dx = [f32::NAN; 12];
        g.rows(0, &[&dy, &x], &mut dx).unwrap();
        assert_eq!(
            dx,
            [0.0, 20.0, 10.0, 0.0, 0.0, 0.0, 30.0, 40.0, 0.0, 0.0, 0.0, 0.0]
        );
        let e = g.rows(0, &[&dy, &x[..10]], &mut dx).unwrap_err();
        assert!(e.contains("`x` holds 10 elements"), "{e}");
    }
}
