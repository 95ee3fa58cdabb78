//! The backward of `group_norm` over channels-first samples (training
//! plans are NCHW) as three row steps ([`crate::plan::Rows`]) that pass
//! their partial results through one scratch row per sample:
//!
//! 1. [`GradSums`] (a row per sample) computes the group statistics
//!    again, as the forward does, then per channel `Σ dy·x̂` and `Σ dy`
//!    (`x̂ = (x − mean_g)·rstd_g`); its row is `[Σ dy·x̂ (C), Σ dy (C),
//!    mean_g (G), rstd_g (G)]` ([`sums_width`]).
//! 2. [`SampleSums`] adds one block of those columns over the samples, in
//!    sample order (deterministic): `dweight` and `dbias`.
//! 3. [`GradInput`] (a row per sample): with `g = dy·γ`, `dx = rstd·(g −
//!    mean(g) − x̂·mean(g·x̂))` over each group, which for one channel is
//!    `p·dy + q·(x − mean_g) + r` with `p = rstd·γ`, `q = −rstd²·A`,
//!    `r = −rstd·B`, `A = mean(g·x̂)` and `B = mean(g)` read off the sums.
//!
//! Sums run in f32 over blocks of 64 values and in f64 across blocks, the
//! deviations taken from the group mean (rounded to f32, the same in
//! steps 1 and 3) so a large mean costs no precision beyond the input's. Each sample's channels split over the pool as the forward's
//! do.

use super::{ChannelAxis, GroupNorm, F32_BLOCK};
use crate::plan::RowKernel;
use rayon::prelude::*;

/// Floats of one sample's scratch row: `2·channels + 2·groups`.
pub fn sums_width(norm: &GroupNorm) -> usize {
    2 * norm.channels + 2 * norm.groups
}

/// Step 1: per sample, the channel sums and group statistics (see the
/// module docs). Inputs: `dy`, `x`.
#[derive(Clone, Debug)]
pub struct GradSums {
    /// The forward norm (geometry, `eps`, threads); channels first.
    pub norm: GroupNorm,
}

/// Step 2: `out[j] = Σ_n sums[n·stride + offset + j]` for `j < out.len()`,
/// over `samples` rows of the scratch. Input: the scratch.
#[derive(Clone, Debug)]
pub struct SampleSums {
    /// Rows of the scratch.
    pub samples: usize,
    /// Floats per scratch row.
    pub stride: usize,
    /// The first column summed.
    pub offset: usize,
}

/// Step 3: `dx` per sample. Inputs: `dy`, `x`, the scratch, then with an
/// affine norm its `weight`.
#[derive(Clone, Debug)]
pub struct GradInput {
    /// The forward norm (geometry, `affine`, threads); channels first.
    pub norm: GroupNorm,
}

/// `(Σ dy, Σ dy·(x − shift))` over one channel's values.
fn dy_sums(dy: &[f32], x: &[f32], shift: f32) -> (f64, f64) {
    let (mut sum, mut dot) = (0f64, 0f64);
    for (db, xb) in dy.chunks(F32_BLOCK).zip(x.chunks(F32_BLOCK)) {
        let (mut s, mut d) = (0f32, 0f32);
        for (&g, &v) in db.iter().zip(xb) {
            s += g;
            d += g * (v - shift);
        }
        sum += f64::from(s);
        dot += f64::from(d);
    }
    (sum, dot)
}

/// Checks the channels-first layout, the group count and that `inputs`
/// hold `dy` and `x` for samples `first..first + samples`; returns them.
fn dy_and_x<'a>(
    norm: &GroupNorm,
    first: usize,
    samples: usize,
    inputs: &[&'a [f32]],
) -> Result<(&'a [f32], &'a [f32]), String> {
    if norm.axis != ChannelAxis::First {
        return Err("the group-norm backward runs channels first only".into());
    }
    if norm.groups == 0 || !norm.channels.is_multiple_of(norm.groups) {
        return Err(format!(
            "{} groups do not divide {} channels",
            norm.groups, norm.channels
        ));
    }
    let need = (first + samples) * norm.width();
    match inputs {
        [dy, x, ..] if dy.len() >= need && x.len() >= need => Ok((dy, x)),
        _ => Err(format!(
            "dy and x must hold {need} elements for samples {first}..{}",
            first + samples
        )),
    }
}

impl RowKernel for GradSums {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let norm = &self.norm;
        let (width, row_len) = (norm.width(), sums_width(norm));
        if width == 0 {
            return Ok(());
        }
        let samples = out.len() / row_len;
        let (dy, x) = dy_and_x(norm, first, samples, inputs)?;
        let (c, per, inner) = (norm.channels, norm.per_group(), norm.inner);
        for (s, row) in out.chunks_exact_mut(row_len).enumerate() {
            let at = (first + s) * width..(first + s + 1) * width;
            let (xs, dys) = (&x[at.clone()], &dy[at]);
            let stats = norm.group_stats(&norm.channel_moments(xs));
            let sums: Vec<(f64, f64)> = xs
                .par_chunks(inner)
                .zip(dys.par_chunks(inner))
                .enumerate()
                .with_min_len(norm.min_len(inner))
                .map(|(k, (xc, dc))| {
                    // x̂ taken from the mean rounded to f32, as step 3
                    // reads it from the scratch row.
                    let (mean, rstd) = stats[k / per];
                    let (sum, dot) = dy_sums(dc, xc, mean as f32);
                    (dot * rstd, sum)
                })
                .collect();
            let (dxhat, rest) = row.split_at_mut(c);
            let (ddy, rest) = rest.split_at_mut(c);
            let (means, rstds) = rest.split_at_mut(norm.groups);
            for (k, &(a, b)) in sums.iter().enumerate() {
                dxhat[k] = a as f32;
                ddy[k] = b as f32;
            }
            for (g, &(mean, rstd)) in stats.iter().enumerate() {
                means[g] = mean as f32;
                rstds[g] = rstd as f32;
            }
        }
        Ok(())
    }

    fn threads(&self) -> usize {
        self.norm.threads
    }
}

impl RowKernel for SampleSums {
    fn rows(&self, _first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let need = self.samples * self.stride;
        let sums = match inputs.first() {
            Some(s) if s.len() >= need && self.offset + out.len() <= self.stride => *s,
            _ => return Err(format!("the scratch must hold {need} sums")),
        };
        for (j, o) in out.iter_mut().enumerate() {
            let total: f64 = (0..self.samples)
                .map(|n| f64::from(sums[n * self.stride + self.offset + j]))
                .sum();
            *o = total as f32;
        }
        Ok(())
    }

    fn threads(&self) -> usize {
        1
    }
}

impl RowKernel for GradInput {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let norm = &self.norm;
        let (width, row_len) = (norm.width(), sums_width(norm));
        if width == 0 {
            return Ok(());
        }
        let samples = out.len() / width;
        let (dy, x) = dy_and_x(norm, first, samples, inputs)?;
        let (c, per, inner) = (norm.channels, norm.per_group(), norm.inner);
        let sums = match inputs.get(2) {
            Some(s) if s.len() >= (first + samples) * row_len => *s,
            _ => return Err("the scratch does not hold every sample's sums".into()),
        };
        let weight = match (norm.affine, inputs.get(3)) {
            (false, _) => None,
            (true, Some(w)) if w.len() >= c => Some(*w),
            (true, _) => return Err(format!("a weight of {c} channels")),
        };
        let gamma = |k: usize| weight.map_or(1.0, |w| f64::from(w[k]));
        let count = (per * inner) as f64;
        for (s, dx) in out.chunks_exact_mut(width).enumerate() {
            let at = (first + s) * width..(first + s + 1) * width;
            let (xs, dys) = (&x[at.clone()], &dy[at]);
            let row = &sums[(first + s) * row_len..(first + s + 1) * row_len];
            let (dxhat, rest) = row.split_at(c);
            let (ddy, rest) = rest.split_at(c);
            let (means, rstds) = rest.split_at(norm.groups);
            // Per channel (p, q, r, mean) of dx = p·dy + q·(x − mean) + r.
            let coef: Vec<(f32, f32, f32, f32)> = (0..c)
                .map(|k| {
                    let g = k / per;
                    let group = g * per..(g + 1) * per;
                    let a = group
                        .clone()
                        .map(|j| gamma(j) * f64::from(dxhat[j]))
                        .sum::<f64>()
                        / count;
                    let b = group.map(|j| gamma(j) * f64::from(ddy[j])).sum::<f64>() / count;
                    let rstd = f64::from(rstds[g]);
                    let p = rstd * gamma(k);
                    (
                        p as f32,
                        (-rstd * rstd * a) as f32,
                        (-rstd * b) as f32,
                        means[g],
                    )
                })
                .collect();
            dx.par_chunks_mut(inner)
                .zip(xs.par_chunks(inner).zip(dys.par_chunks(inner)))
                .zip(coef.par_iter())
                .with_min_len(norm.min_len(inner))
                .for_each(|((o, (xc, dc)), &(p, q, r, mean))| {
                    for ((o, &v), &g) in o.iter_mut().zip(xc).zip(dc) {
                        *o = p * g + q * (v - mean) + r;
                    }
                });
        }
        Ok(())
    }

    fn threads(&self) -> usize {
        self.norm.threads
    }
}

#[cfg(test)]
mod tests;
