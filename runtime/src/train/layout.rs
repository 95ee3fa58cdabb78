//! Layout changes around the implicit-GEMM convolutions of training plans
//! (NCHW plans running [`crate::gemm::conv`], which reads NHWC inputs and
//! writes NHWC results), as row steps:
//!
//! - [`ChannelsLast`]: `[N, C, P] → [N, P, C]` (one output row per image),
//!   and back with `channels_last: false`: a blocked transpose per image.
//! - [`ConvWeightRows`]: a convolution weight `[OC, C, KH, KW]` as the
//!   implicit GEMM's B matrix, row-major, ready for
//!   [`crate::gemm::packed::PackPanels`]: for the forward convolution
//!   `B[(ty, tx, c), o] = W[o, c, ty, tx]`; for the input gradient at
//!   stride 1 (the convolution of `dy` with the flipped kernel)
//!   `B[(ty, tx, o), c] = W[o, c, KH−1−ty, KW−1−tx]`.

use crate::plan::RowKernel;

/// Side of the square tiles the transposes copy through (a tile of both
/// the source and the destination stays in L1).
const TILE: usize = 32;

/// A per-image transpose between `[C, P]` and `[P, C]` (see the module
/// docs); an output row is one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelsLast {
    /// Channels.
    pub c: usize,
    /// Pixels per channel (`H·W`).
    pub p: usize,
    /// `true`: `[C, P] → [P, C]`; `false`: `[P, C] → [C, P]`.
    pub channels_last: bool,
}

impl ChannelsLast {
    /// Elements of one image (the row width).
    pub fn width(&self) -> usize {
        self.c * self.p
    }
}

impl RowKernel for ChannelsLast {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let width = self.width();
        if width == 0 {
            return Ok(());
        }
        let src = inputs.first().copied().unwrap_or(&[]);
        let images = out.len() / width;
        if src.len() < (first + images) * width {
            return Err(format!(
                "layout change of {} images of {}×{}: the input holds {} elements, too few",
                first + images,
                self.c,
                self.p,
                src.len()
            ));
        }
        // Source rows × columns: [C, P] going channels-last, [P, C] back.
        let (rows, cols) = if self.channels_last {
            (self.c, self.p)
        } else {
            (self.p, self.c)
        };
        for (i, dst) in out.chunks_exact_mut(width).enumerate() {
            let s = &src[(first + i) * width..(first + i + 1) * width];
            transpose(s, dst, rows, cols);
        }
        Ok(())
    }
}

/// `dst[j·rows + i] = src[i·cols + j]`, through `TILE`-square tiles.
fn transpose(src: &[f32], dst: &mut [f32], rows: usize, cols: usize) {
    for i0 in (0..rows).step_by(TILE) {
        let i1 = (i0 + TILE).min(rows);
        for j0 in (0..cols).step_by(TILE) {
            let j1 = (j0 + TILE).min(cols);
            for j in j0..j1 {
                let d = &mut dst[j * rows + i0..j * rows + i1];
                for (k, v) in d.iter_mut().enumerate() {
                    *v = src[(i0 + k) * cols + j];
                }
            }
        }
    }
}

/// A convolution weight `[OC, C, KH, KW]` written as the B matrix of the
/// implicit GEMM, row-major (see the module docs); an output row is one
/// depth index (`(ty, tx, c)` forward, `(ty, tx, o)` flipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvWeightRows {
    /// Output channels of the convolution.
    pub oc: usize,
    /// Input channels.
    pub c: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// `false`: the forward convolution's B (`KH·KW·C × OC`); `true`: the
    /// flipped one of the input gradient (`KH·KW·OC × C`).
    pub flip: bool,
}

impl ConvWeightRows {
    /// Rows of B (the GEMM's depth).
    pub fn depth(&self) -> usize {
        self.kh * self.kw * if self.flip { self.oc } else { self.c }
    }

    /// Columns of B (the GEMM's output columns).
    pub fn width(&self) -> usize {
        if self.flip {
            self.c
        } else {
            self.oc
        }
    }
}

impl RowKernel for ConvWeightRows {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let (taps, width) = (self.kh * self.kw, self.width());
        let src = inputs.first().copied().unwrap_or(&[]);
        if src.len() < self.oc * self.c * taps {
            return Err(format!(
                "a [{}, {}, {}, {}] convolution weight: the input holds {} elements",
                self.oc,
                self.c,
                self.kh,
                self.kw,
                src.len()
            ));
        }
        if width == 0 {
            return Ok(());
        }
        // Depth index r = tap · inner + channel, inner = C (forward) or OC.
        let inner = if self.flip { self.oc } else { self.c };
        for (i, row) in out.chunks_exact_mut(width).enumerate() {
            let r = first + i;
            let (tap, ch) = (r / inner, r % inner);
            let tap = if self.flip { taps - 1 - tap } else { tap };
            for (col, v) in row.iter_mut().enumerate() {
                // Weight element (o, c, tap).
                let (o, c) = if self.flip { (ch, col) } else { (col, ch) };
                *v = src[(o * self.c + c) * taps + tap];
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
