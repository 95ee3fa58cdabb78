//! Group normalisation (`nn.GroupNorm`, FCOS's head towers) as one row
//! step ([`crate::plan::Rows`]): a row is one sample, `channels · inner`
//! elements, channels first (`[C, inner]`) or last (`[inner, C]`).
//!
//! Per sample the kernel makes two parallel passes over the data:
//!
//! 1. **Statistics per channel**, summed around a per-channel shift (the
//!    channel's first element), so that a mean far from zero costs no
//!    precision, in f32 over blocks of 64 values and in f64 across
//!    blocks; the channels of a group are then combined with the
//!    parallel-variance rule (`M2 = Σ M2_c + n_c · Σ (mean_c − mean)²`).
//!    Channels first, each channel is a contiguous run; channels last,
//!    positions are split into chunks that each sum every channel.
//! 2. **Apply** `y = x · a_c + b_c` with `a_c = γ_c / sqrt(var_g + eps)`
//!    and `b_c = β_c − mean_g · a_c`, and the fused `relu` if any.
//!
//! The variance is the biased one, as PyTorch's. The passes split over
//! the pool the step runs on when it has more than one thread; off a
//! pool (a plan run inline on the caller) they run on the calling thread.

use crate::plan::RowKernel;
use rayon::prelude::*;

/// Where a sample's channels are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelAxis {
    /// `[C, inner]` (NCHW).
    First,
    /// `[inner, C]` (NHWC).
    Last,
}

/// `group_norm(x, groups)` over samples of `channels · inner` elements.
/// Inputs: `x`, then with `affine` the per-channel `weight` and `bias`.
#[derive(Clone, Debug)]
pub struct GroupNorm {
    /// Channels per sample.
    pub channels: usize,
    /// Groups per sample; divides `channels`.
    pub groups: usize,
    /// Positions per channel (the product of the spatial dims).
    pub inner: usize,
    /// Where the channels are.
    pub axis: ChannelAxis,
    /// Added to the variance.
    pub eps: f32,
    /// Whether inputs 1 and 2 are the per-channel scale and shift.
    pub affine: bool,
    /// Whether a `relu` is fused into the result.
    pub relu: bool,
    /// Threads the plan was compiled for ([`RowKernel::threads`]: with 2
    /// or more the step is never run inline, off the pool).
    pub threads: usize,
}

/// Elements worth one parallel task.
const TASK_ELEMS: usize = 1 << 14;

/// One channel's statistics: its mean and sum of squared deviations.
#[derive(Clone, Copy, Debug, Default)]
struct Moments {
    mean: f64,
    m2: f64,
}

/// Shifted sums of one channel's values `v − shift`.
#[derive(Clone, Copy, Debug, Default)]
struct Sums {
    sum: f64,
    squares: f64,
}

impl Sums {
    fn add(&mut self, d: f64) {
        self.sum += d;
        self.squares += d * d;
    }

    fn merge(mut self, other: &Sums) -> Sums {
        self.sum += other.sum;
        self.squares += other.squares;
        self
    }

    /// The moments of `count` values whose shifted sums these are.
    fn moments(&self, shift: f32, count: usize) -> Moments {
        let n = count.max(1) as f64;
        let d = self.sum / n;
        Moments {
            mean: f64::from(shift) + d,
            m2: (self.squares - self.sum * d).max(0.0),
        }
    }
}

/// Values summed in f32 (shifted, so of the data's spread, not its mean)
/// before their partial sums are added in f64: f32 lanes are twice as
/// wide as f64 ones and need no conversion per element.
const F32_BLOCK: usize = 64;

/// Shifted sums of a contiguous run, in eight independent f32 lanes per
/// block of `8 · F32_BLOCK` values so the additions pipeline.
fn run_sums(run: &[f32], shift: f32) -> Sums {
    let mut total = Sums::default();
    for block in run.chunks(8 * F32_BLOCK) {
        let (mut sum, mut squares) = ([0f32; 8], [0f32; 8]);
        let mut chunks = block.chunks_exact(8);
        for chunk in &mut chunks {
            for ((s, q), &v) in sum.iter_mut().zip(&mut squares).zip(chunk) {
                let d = v - shift;
                *s += d;
                *q += d * d;
            }
        }
        for &v in chunks.remainder() {
            total.add(f64::from(v - shift));
        }
        total.sum += sum.iter().map(|&s| f64::from(s)).sum::<f64>();
        total.squares += squares.iter().map(|&q| f64::from(q)).sum::<f64>();
    }
    total
}

/// Shifted sums of every channel over the positions of `part`
/// (`[positions, C]`), `shift` holding one value per channel.
fn position_sums(part: &[f32], shift: &[f32]) -> Vec<Sums> {
    let c = shift.len();
    let mut total = vec![Sums::default(); c];
    let (mut sum, mut squares) = (vec![0f32; c], vec![0f32; c]);
    for block in part.chunks(F32_BLOCK * c) {
        sum.fill(0.0);
        squares.fill(0.0);
        for row in block.chunks_exact(c) {
            for (((s, q), &v), &k) in sum.iter_mut().zip(&mut squares).zip(row).zip(shift) {
                let d = v - k;
                *s += d;
                *q += d * d;
            }
        }
        for ((t, &s), &q) in total.iter_mut().zip(&sum).zip(&squares) {
            t.sum += f64::from(s);
            t.squares += f64::from(q);
        }
    }
    total
}

impl GroupNorm {
    fn width(&self) -> usize {
        self.channels * self.inner
    }

    /// The fewest items of `elems_each` elements worth a parallel task;
    /// everything in one task off a pool or on a pool of one thread.
    fn min_len(&self, elems_each: usize) -> usize {
        if rayon::current_thread_index().is_some() && rayon::current_num_threads() > 1 {
            (TASK_ELEMS / elems_each.max(1)).max(1)
        } else {
            usize::MAX
        }
    }

    /// Per-channel moments of one sample.
    fn channel_moments(&self, x: &[f32]) -> Vec<Moments> {
        let (c, inner) = (self.channels, self.inner);
        match self.axis {
            ChannelAxis::First => x
                .par_chunks(inner)
                .with_min_len(self.min_len(inner))
                .map(|run| run_sums(run, run[0]).moments(run[0], inner))
                .collect(),
            ChannelAxis::Last => {
                let shift = &x[..c];
                let positions = self.min_len(c).min(inner).max(1);
                let sums = x
                    .par_chunks(positions * c)
                    .map(|part| position_sums(part, shift))
                    .reduce_with(|a, b| a.iter().zip(&b).map(|(p, q)| p.merge(q)).collect())
                    .unwrap_or_else(|| vec![Sums::default(); c]);
                sums.iter()
                    .zip(shift)
                    .map(|(s, &k)| s.moments(k, inner))
                    .collect()
            }
        }
    }

    /// Channels per group.
    fn per_group(&self) -> usize {
        (self.channels / self.groups.max(1)).max(1)
    }

    /// Each group's `(mean, 1 / sqrt(var + eps))` from its channels'
    /// moments (the parallel-variance rule).
    fn group_stats(&self, moments: &[Moments]) -> Vec<(f64, f64)> {
        moments
            .chunks(self.per_group())
            .map(|group| {
                let mean = group.iter().map(|m| m.mean).sum::<f64>() / group.len() as f64;
                let m2: f64 = group
                    .iter()
                    .map(|m| m.m2 + self.inner as f64 * (m.mean - mean).powi(2))
                    .sum();
                let var = m2 / (group.len() * self.inner).max(1) as f64;
                (mean, 1.0 / (var + f64::from(self.eps)).sqrt())
            })
            .collect()
    }

    /// The per-channel `(a, b)` of `y = x · a + b` from the channel
    /// moments and the affine parameters.
    fn coefficients(&self, moments: &[Moments], weight: &[f32], bias: &[f32]) -> Vec<(f32, f32)> {
        let per = self.per_group();
        let mut out = Vec::with_capacity(self.channels);
        for (g, (mean, rstd)) in self.group_stats(moments).into_iter().enumerate() {
            for k in g * per..(g + 1) * per {
                let (w, b) = if self.affine {
                    (f64::from(weight[k]), f64::from(bias[k]))
                } else {
                    (1.0, 0.0)
                };
                let a = rstd * w;
                out.push((a as f32, (b - mean * a) as f32));
            }
        }
        out
    }

    /// `y = x · a_c + b_c` (then `relu`) over one sample.
    fn apply(&self, x: &[f32], coef: &[(f32, f32)], y: &mut [f32]) {
        let relu = self.relu;
        let put = move |o: &mut f32, v: f32, (a, b): (f32, f32)| {
            let r = v * a + b;
            *o = if relu { r.max(0.0) } else { r };
        };
        let inner = self.inner;
        match self.axis {
            ChannelAxis::First => {
                y.par_chunks_mut(inner)
                    .zip(x.par_chunks(inner))
                    .zip(coef.par_iter())
                    .with_min_len(self.min_len(inner))
                    .for_each(|((yc, xc), &ab)| {
                        for (o, &v) in yc.iter_mut().zip(xc) {
                            put(o, v, ab);
                        }
                    });
            }
            ChannelAxis::Last => {
                let c = self.channels;
                y.par_chunks_mut(c)
                    .zip(x.par_chunks(c))
                    .with_min_len(self.min_len(c))
                    .for_each(|(yr, xr)| {
                        for ((o, &v), &ab) in yr.iter_mut().zip(xr).zip(coef) {
                            put(o, v, ab);
                        }
                    });
            }
        }
    }
}

impl RowKernel for GroupNorm {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let width = self.width();
        if width == 0 {
            return Ok(());
        }
        if self.groups == 0 || !self.channels.is_multiple_of(self.groups) {
            return Err(format!(
                "{} groups do not divide {} channels",
                self.groups, self.channels
            ));
        }
        let x = inputs.first().copied().unwrap_or(&[]);
        let samples = out.len() / width;
        if x.len() < (first + samples) * width {
            return Err(format!(
                "the input holds {} elements, samples {}..{} need {}",
                x.len(),
                first,
                first + samples,
                (first + samples) * width
            ));
        }
        let (weight, bias) = if self.affine {
            match inputs.get(1..3) {
                Some([w, b]) if w.len() >= self.channels && b.len() >= self.channels => (*w, *b),
                _ => return Err(format!("weight and bias of {} channels", self.channels)),
            }
        } else {
            (&[][..], &[][..])
        };
        for (s, y) in out.chunks_exact_mut(width).enumerate() {
            let xs = &x[(first + s) * width..(first + s + 1) * width];
            let moments = self.channel_moments(xs);
            let coef = self.coefficients(&moments, weight, bias);
            self.apply(xs, &coef, y);
        }
        Ok(())
    }

    fn threads(&self) -> usize {
        self.threads
    }
}

pub mod grad;

#[cfg(test)]
mod tests;
