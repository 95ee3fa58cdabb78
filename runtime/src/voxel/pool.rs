//! The per-sample mean of a sparse tensor's features
//! (`sparse_global_avg_pool`) and its gradient, over the sites a run
//! computed: the count is given, or read from the rule book that made the
//! sites. A site's sample is its coordinates' batch index.

use super::site_count;
use crate::plan::RowKernel;

/// Inputs: values (features `[bound, width]`, or for the gradient `dy`
/// `[batch, width]`), the sites' coordinates (`[bound, 4]`) and, when
/// `counted`, the rule book holding the site count.
#[derive(Clone, Debug)]
pub struct SitePool {
    /// Channels.
    pub width: usize,
    /// Samples.
    pub batch: usize,
    /// The site count when not `counted`.
    pub sites: usize,
    /// Whether input 2 is the rule book holding the site count.
    pub counted: bool,
    /// The gradient: each site's row is its sample's row of `dy` over the
    /// sample's site count.
    pub grad: bool,
}

impl SitePool {
    /// The site count and each site's sample, with the sites per sample
    /// in `count`.
    fn samples(&self, inputs: &[&[f32]], count: &mut [u32]) -> Result<usize, String> {
        let n = match (self.counted, inputs.get(2)) {
            (false, _) => self.sites,
            (true, Some(book)) => site_count(book)?,
            (true, None) => return Err("a counted pool reads 3 buffers".into()),
        };
        let coords = inputs.get(1).copied().unwrap_or(&[]);
        if coords.len() < n * 4 {
            return Err(format!("the coordinates hold fewer than {n} sites"));
        }
        count.fill(0);
        for i in 0..n {
            let b = coords[i * 4];
            if !(0.0..self.batch as f32).contains(&b) {
                return Err(format!(
                    "site {i} has batch index {b}, the tensor holds {} samples",
                    self.batch
                ));
            }
            count[b as usize] += 1;
        }
        Ok(n)
    }
}

impl RowKernel for SitePool {
    fn rows(&self, _: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let w = self.width;
        // One small vector per call: the batch is a handful of samples.
        let mut count = vec![0u32; self.batch];
        let n = self.samples(inputs, &mut count)?;
        let (v, coords) = (inputs[0], inputs[1]);
        let sample = |i: usize| coords[i * 4] as usize;
        if self.grad {
            let (Some(v), Some(out)) = (v.get(..self.batch * w), out.get_mut(..n * w)) else {
                return Err("the pool gradient's buffers are too small".into());
            };
            for (i, row) in out.chunks_exact_mut(w.max(1)).enumerate() {
                let b = sample(i);
                let scale = 1.0 / count[b] as f32;
                for (o, &g) in row.iter_mut().zip(&v[b * w..(b + 1) * w]) {
                    *o = g * scale;
                }
            }
            return Ok(());
        }
        let (Some(v), Some(out)) = (v.get(..n * w), out.get_mut(..self.batch * w)) else {
            return Err("the pool's buffers are too small".into());
        };
        out.fill(0.0);
        for (i, row) in v.chunks_exact(w.max(1)).enumerate() {
            let b = sample(i);
            for (o, &x) in out[b * w..(b + 1) * w].iter_mut().zip(row) {
                *o += x;
            }
        }
        for (b, row) in out.chunks_exact_mut(w.max(1)).enumerate() {
            let scale = 1.0 / count[b].max(1) as f32;
            row.iter_mut().for_each(|o| *o *= scale);
        }
        Ok(())
    }
}
