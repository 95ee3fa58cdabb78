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

/// Rows of the source a scalar edge pass copies per sweep of columns.
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

/// `dst[j·rows + i] = src[i·cols + j]`: 8×8 blocks in AVX registers
/// where the CPU has AVX (two blocks down at a time, so each destination
/// row receives 16 floats, a cache line), scalar at the edges and
/// elsewhere.
fn transpose(src: &[f32], dst: &mut [f32], rows: usize, cols: usize) {
    assert!(src.len() >= rows * cols && dst.len() >= rows * cols);
    let (mut done_r, mut done_c) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        (done_r, done_c) = (rows / 8 * 8, cols / 8 * 8);
        // SAFETY: AVX is present; every block lies inside both matrices
        // (checked lengths above, blocks below the rounded-down sizes).
        unsafe { blocks_avx(src.as_ptr(), dst.as_mut_ptr(), rows, cols, done_r, done_c) };
    }
    // The edges: rows below `done_r` (all columns) and, above it, the
    // columns from `done_c` on.
    let scalar = |dst: &mut [f32], r: std::ops::Range<usize>, c: std::ops::Range<usize>| {
        for i0 in r.clone().step_by(TILE) {
            let i1 = (i0 + TILE).min(r.end);
            for j in c.clone() {
                for i in i0..i1 {
                    dst[j * rows + i] = src[i * cols + j];
                }
            }
        }
    };
    scalar(dst, done_r..rows, 0..cols);
    scalar(dst, 0..done_r, done_c..cols);
}

/// The `rows8 × cols8` top-left part of the transpose (multiples of 8),
/// in 8×8 blocks.
///
/// # Safety
/// AVX is available; `src` holds `rows·cols` floats, `dst` `cols·rows`;
/// `rows8 ≤ rows`, `cols8 ≤ cols`, both multiples of 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn blocks_avx(
    src: *const f32,
    dst: *mut f32,
    rows: usize,
    cols: usize,
    rows8: usize,
    cols8: usize,
) {
    for i0 in (0..rows8).step_by(16) {
        for j0 in (0..cols8).step_by(8) {
            for i in (i0..(i0 + 16).min(rows8)).step_by(8) {
                // SAFETY: the block (i..i+8, j0..j0+8) is inside both.
                unsafe { block8(src.add(i * cols + j0), cols, dst.add(j0 * rows + i), rows) };
            }
        }
    }
}

/// One 8×8 block: `dst[c·ldd + r] = src[r·lds + c]`.
///
/// # Safety
/// AVX is available; 8 rows of 8 floats at `src` (`lds` apart) are
/// readable and at `dst` (`ldd` apart) writable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn block8(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's rows.
    let r: [__m256; 8] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(src.add(i * lds)) });
    // SAFETY: AVX, as this function's.
    let out = unsafe { crate::gemm::kernel_avx512::transpose8(r) };
    for (c, v) in out.into_iter().enumerate() {
        // SAFETY: the caller's rows.
        unsafe { _mm256_storeu_ps(dst.add(c * ldd), v) };
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
