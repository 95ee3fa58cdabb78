//! Nearest-neighbour resizing (`F.interpolate(mode = "nearest")`: the FPN's
//! top-down path, the UNet's upsampler) as a row step
//! ([`crate::plan::Rows`]) over 1 to 3 spatial dims.
//!
//! Output element `o` along a dim reads input element
//! `min(floor(o · float32(in / out)), in − 1)`, as PyTorch's CPU kernel
//! (the scale is rounded to f32 first). The per-position source offsets
//! are computed once, when the step is built ([`ResizeNearest::new`]):
//!
//! - channels first (`[N, C, *spatial]`): a row is one `(n, c)` plane of
//!   the output, each element read from the table;
//! - channels last (`[N, *spatial, C]`): a row is one output position, a
//!   copy of the `C` channels of its source position.
//!
//! [`ResizeNearestGrad`] is the backward (channels first, as training
//! plans are): each input element sums the output gradients read from it.

use crate::group_norm::ChannelAxis;
use crate::plan::RowKernel;

/// Nearest-neighbour resizing of `channels` channels from `in_sizes` to
/// the output sizes the table was built for. Input 0 is `x`.
#[derive(Clone, Debug)]
pub struct ResizeNearest {
    /// The source position (row-major over the input's spatial dims) of
    /// every output position.
    source: Vec<usize>,
    /// Spatial positions of one input plane.
    in_positions: usize,
    /// Channels per sample.
    channels: usize,
    /// Where the channels are.
    axis: ChannelAxis,
}

/// The source index along one dim of output index `o`.
fn source_index(o: usize, input: usize, output: usize) -> usize {
    let scale = input as f32 / output as f32;
    ((o as f32 * scale).floor() as usize).min(input.saturating_sub(1))
}

impl ResizeNearest {
    /// The step's kernel for `in_sizes` → `out_sizes` (same length, the
    /// spatial dims) over `channels` channels.
    pub fn new(
        in_sizes: &[usize],
        out_sizes: &[usize],
        channels: usize,
        axis: ChannelAxis,
    ) -> Self {
        let mut source = vec![0usize];
        for (&input, &output) in in_sizes.iter().zip(out_sizes) {
            let along: Vec<usize> = (0..output)
                .map(|o| source_index(o, input, output))
                .collect();
            source = source
                .iter()
                .flat_map(|&outer| along.iter().map(move |&s| outer * input + s))
                .collect();
        }
        ResizeNearest {
            source,
            in_positions: in_sizes.iter().product(),
            channels,
            axis,
        }
    }

    /// Spatial positions of one output plane.
    pub fn out_positions(&self) -> usize {
        self.source.len()
    }

    /// The step's `(rows, width)`: planes of the output channels first,
    /// positions of `channels` channels last, for `samples` samples.
    pub fn shape(&self, samples: usize) -> (usize, usize) {
        match self.axis {
            ChannelAxis::First => (samples * self.channels, self.out_positions()),
            ChannelAxis::Last => (samples * self.out_positions(), self.channels),
        }
    }
}

impl RowKernel for ResizeNearest {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let x = inputs.first().copied().unwrap_or(&[]);
        let (_, width) = self.shape(0);
        let rows = out.len().checked_div(width).unwrap_or(0);
        let (plane, need) = match self.axis {
            ChannelAxis::First => (self.in_positions, (first + rows) * self.in_positions),
            ChannelAxis::Last => {
                let outs = self.out_positions().max(1);
                let samples = (first + rows).div_ceil(outs);
                (self.channels, samples * self.in_positions * self.channels)
            }
        };
        if x.len() < need {
            return Err(format!(
                "the input holds {} elements, rows {first}..{} need {need}",
                x.len(),
                first + rows
            ));
        }
        for (k, row) in out.chunks_exact_mut(width).enumerate() {
            let r = first + k;
            match self.axis {
                ChannelAxis::First => {
                    let src = &x[r * plane..(r + 1) * plane];
                    for (o, &s) in row.iter_mut().zip(&self.source) {
                        *o = src[s];
                    }
                }
                ChannelAxis::Last => {
                    let outs = self.out_positions();
                    let (n, p) = (r / outs, r % outs);
                    let at = (n * self.in_positions + self.source[p]) * plane;
                    row.copy_from_slice(&x[at..at + plane]);
                }
            }
        }
        Ok(())
    }
}

/// The gradient of a channels-first [`ResizeNearest`]: a row is one
/// `(n, c)` plane of the input, each element the sum of the output
/// gradients read from it, in output order (deterministic). Input 0 is
/// `dy`.
#[derive(Clone, Debug)]
pub struct ResizeNearestGrad {
    /// Per input position `p`, its readers are `readers[starts[p]..starts[p + 1]]`.
    starts: Vec<usize>,
    /// Output positions, grouped by the input position they read.
    readers: Vec<usize>,
}

impl ResizeNearestGrad {
    /// The gradient's kernel for a resize of `in_sizes` → `out_sizes`
    /// (the spatial dims).
    pub fn new(in_sizes: &[usize], out_sizes: &[usize]) -> Self {
        let forward = ResizeNearest::new(in_sizes, out_sizes, 1, ChannelAxis::First);
        let mut starts = vec![0usize; forward.in_positions + 1];
        for &s in &forward.source {
            starts[s + 1] += 1;
        }
        for p in 0..forward.in_positions {
            starts[p + 1] += starts[p];
        }
        let mut next = starts.clone();
        let mut readers = vec![0usize; forward.source.len()];
        for (o, &s) in forward.source.iter().enumerate() {
            readers[next[s]] = o;
            next[s] += 1;
        }
        ResizeNearestGrad { starts, readers }
    }

    /// Spatial positions of one input plane (the row width).
    pub fn in_positions(&self) -> usize {
        self.starts.len() - 1
    }
}

impl RowKernel for ResizeNearestGrad {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let dy = inputs.first().copied().unwrap_or(&[]);
        let (width, plane) = (self.in_positions(), self.readers.len());
        let rows = out.len().checked_div(width).unwrap_or(0);
        if dy.len() < (first + rows) * plane {
            return Err(format!(
                "dy holds {} elements, planes {first}..{} need {}",
                dy.len(),
                first + rows,
                (first + rows) * plane
            ));
        }
        for (k, row) in out.chunks_exact_mut(width).enumerate() {
            let src = &dy[(first + k) * plane..(first + k + 1) * plane];
            for (p, o) in row.iter_mut().enumerate() {
                *o = self.readers[self.starts[p]..self.starts[p + 1]]
                    .iter()
                    .map(|&r| src[r])
                    .sum();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `x[n, c, i, j]` of a `[2, 3, 4, 5]` input, as a distinct number.
    fn label(n: usize, c: usize, i: usize, j: usize) -> f32 {
        (n * 1000 + c * 100 + i * 10 + j) as f32
    }

    /// Every output element holds the input element PyTorch's rule names,
    /// both channel axes, upsampling and downsampling, rows split at odd
    /// places.
    #[test]
    fn resizing_reads_the_pytorch_source_elements() {
        // PyTorch: F.interpolate(x, size = (7, 3), mode = "nearest") of a
        // 4 x 5 plane reads rows [0, 0, 1, 1, 2, 2, 3] and columns [0, 1, 3].
        let rows = [0, 0, 1, 1, 2, 2, 3];
        let cols = [0, 1, 3];
        let (n, c) = (2, 3);
        let first: Vec<f32> = (0..n * c * 20)
            .map(|k| label(k / 60, k / 20 % 3, k / 5 % 4, k % 5))
            .collect();
        let last: Vec<f32> = (0..n * 20 * c)
            .map(|k| label(k / 60, k % 3, k / 15 % 4, k / 3 % 5))
            .collect();
        for (axis, x) in [(ChannelAxis::First, &first), (ChannelAxis::Last, &last)] {
            let kernel = ResizeNearest::new(&[4, 5], &[7, 3], c, axis);
            let (rs, width) = kernel.shape(n);
            let mut y = vec![f32::NAN; rs * width];
            let split = 5 * width;
            let (a, b) = y.split_at_mut(split);
            kernel.rows(0, &[x], a).unwrap();
            kernel.rows(5, &[x], b).unwrap();
            for s in 0..n {
                for ch in 0..c {
                    for (i, &si) in rows.iter().enumerate() {
                        for (j, &sj) in cols.iter().enumerate() {
                            let at = match axis {
                                ChannelAxis::First => ((s * c + ch) * 7 + i) * 3 + j,
                                ChannelAxis::Last => ((s * 7 + i) * 3 + j) * c + ch,
                            };
                            assert_eq!(y[at], label(s, ch, si, sj), "{axis:?} {s} {ch} {i} {j}");
                        }
                    }
                }
            }
        }
    }

    /// The f32 scale: 3 → 7 reads [0, 0, 0, 1, 1, 2, 2] (exact `o · 3 / 7`
    /// would give the same here), and 10 → 3 reads [0, 3, 6].
    #[test]
    fn source_indices_floor_the_scaled_index() {
        let up: Vec<usize> = (0..7).map(|o| source_index(o, 3, 7)).collect();
        assert_eq!(up, [0, 0, 0, 1, 1, 2, 2]);
        let down: Vec<usize> = (0..3).map(|o| source_index(o, 10, 3)).collect();
        assert_eq!(down, [0, 3, 6]);
    }

    #[test]
    fn a_short_input_is_an_error() {
        let kernel = ResizeNearest::new(&[2, 2], &[4, 4], 3, ChannelAxis::Last);
        let mut y = vec![0.0; 16 * 3];
        let err = kernel.rows(0, &[&[0.0; 11]], &mut y).unwrap_err();
        assert!(err.contains("holds 11"), "{err}");
    }

    /// The gradient is the resize's adjoint: `⟨resize(x), dy⟩ = ⟨x,
    /// grad(dy)⟩` for any `x` and `dy`, upsampling by 2, to sizes that are
    /// not multiples, and downsampling (some inputs read by nobody).
    #[test]
    fn the_gradient_is_the_adjoint_of_the_resize() {
        for (ins, outs) in [
            (vec![3, 4], vec![6, 8]),
            (vec![4, 5], vec![7, 3]),
            (vec![5], vec![11]),
            (vec![2, 3, 2], vec![4, 5, 3]),
        ] {
            let planes = 3;
            let (pin, pout): (usize, usize) = (ins.iter().product(), outs.iter().product());
            let x: Vec<f32> = (0..planes * pin).map(|i| (i as f32 * 0.37).sin()).collect();
            let dy: Vec<f32> = (0..planes * pout)
                .map(|i| (i as f32 * 0.91).cos())
                .collect();
            let forward = ResizeNearest::new(&ins, &outs, planes, ChannelAxis::First);
            let mut y = vec![0.0; planes * pout];
            forward.rows(0, &[&x], &mut y).unwrap();
            let mut dx = vec![f32::NAN; planes * pin];
            ResizeNearestGrad::new(&ins, &outs)
                .rows(0, &[&dy], &mut dx)
                .unwrap();
            let dot = |a: &[f32], b: &[f32]| -> f64 {
                a.iter()
                    .zip(b)
                    .map(|(p, q)| f64::from(*p) * f64::from(*q))
                    .sum()
            };
            let (lhs, rhs) = (dot(&y, &dy), dot(&x, &dx));
            assert!(
                (lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0),
                "{ins:?} -> {outs:?}: {lhs} vs {rhs}"
            );
        }
    }
}
