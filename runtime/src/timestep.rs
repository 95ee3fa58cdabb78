//! diffusers' `get_timestep_embedding` (`timestep_embedding(t, dim)`, the
//! UNet's first step) as a row step ([`crate::plan::Rows`]): row `n` is
//! the embedding of timestep `t[n]`, `half = dim / 2` frequencies
//! `exp(−ln(max_period) · j / (half − shift))`, the cosines and sines of
//! `scale · t · freq` in the order `flip_sin_to_cos` asks (a zero pads an
//! odd `dim`). Computed in f64 and rounded once.

use crate::plan::RowKernel;

/// The sinusoidal embedding of one timestep per row.
#[derive(Clone, Debug)]
pub struct TimestepEmbedding {
    /// Elements per row.
    pub dim: usize,
    /// Cosines first (`true`) or sines first.
    pub flip_sin_to_cos: bool,
    /// Subtracted from `half` in the frequency's denominator.
    pub shift: f64,
    /// The longest period.
    pub max_period: f64,
    /// Multiplies the argument.
    pub scale: f64,
}

impl RowKernel for TimestepEmbedding {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let dim = self.dim;
        if dim == 0 {
            return Ok(());
        }
        let t = inputs.first().copied().unwrap_or(&[]);
        let rows = out.len() / dim;
        if t.len() < first + rows {
            return Err(format!(
                "{} timesteps given, rows {first}..{} need them",
                t.len(),
                first + rows
            ));
        }
        let half = dim / 2;
        for (i, y) in out.chunks_exact_mut(dim).enumerate() {
            let tv = f64::from(t[first + i]);
            for j in 0..half {
                let freq = (-self.max_period.ln() * j as f64 / (half as f64 - self.shift)).exp();
                let (sin, cos) = (self.scale * tv * freq).sin_cos();
                let (a, b) = if self.flip_sin_to_cos {
                    (cos, sin)
                } else {
                    (sin, cos)
                };
                y[j] = a as f32;
                y[half + j] = b as f32;
            }
            y[2 * half..].fill(0.0);
        }
        Ok(())
    }
}
