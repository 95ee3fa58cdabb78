//! The A operand of a 1×1 convolution whose input is a **normalised
//! channel concatenation** (DenseNet's `concat → batch norm → relu →
//! conv 1×1`): row `r`, depth `k` of A is
//! `max(x_p[r, k − at_p]·scale[k] + shift[k], 0)` (the `max` only with
//! `relu`), where part `p` of the concatenation holds channels
//! `at_p..at_p + C_p` as its own `[rows, C_p]` NHWC tensor. The
//! concatenation and the normalised map are never stored: the implicit
//! GEMM ([`super::gemm`] with [`super::Source::Normed`]) gathers each tile of A through this map
//! into its thread's A buffer, where the micro-kernel reads it while it
//! is in L1.

use std::ops::Range;

/// A normalised concatenation of NHWC tensors read as the A operand of a
/// 1×1, stride-1, unpadded convolution (see the module doc).
#[derive(Debug, Clone, Copy)]
pub struct Normed<'a> {
    /// Each concatenated tensor's first element, in channel order (every
    /// tensor has the same rows).
    pub parts: &'a [*const f32],
    /// Each tensor's channels (as many as `parts`).
    pub channels: &'a [usize],
    /// Per-channel scale (one per channel of the concatenation).
    pub scale: *const f32,
    /// Per-channel shift.
    pub shift: *const f32,
    /// Whether negative results are set to zero.
    pub relu: bool,
}

// SAFETY: `Normed` only reads through its pointers (tensors that outlive
// the GEMM call that shares it over threads).
unsafe impl Send for Normed<'_> {}
// SAFETY: as above; nothing is written through them.
unsafe impl Sync for Normed<'_> {}

impl Normed<'_> {
    /// Channels of the concatenation (the depth of A).
    pub fn depth(&self) -> usize {
        self.channels.iter().sum()
    }

    /// Writes rows `rows` × depth `ks` of A row-major at `dst` (row
    /// stride `ks.len()`), each part's channels in the slice read from
    /// its tensor and mapped; with `wide`, on AVX-512F.
    ///
    /// # Safety
    /// Every part holds `rows.end` rows of its channels; `scale` and
    /// `shift` hold [`Normed::depth`] floats; `ks` ⊆ `0..depth()`;
    /// `dst` holds `rows.len()·ks.len()` floats; `wide` only if the CPU
    /// has AVX-512F.
    pub unsafe fn pack_rows(
        &self,
        wide: bool,
        rows: Range<usize>,
        ks: Range<usize>,
        dst: *mut f32,
    ) {
        #[cfg(target_arch = "x86_64")]
        if wide {
            // SAFETY: forwarded; the CPU has AVX-512F.
            unsafe { self.pack_rows_avx512(rows, ks, dst) };
            return;
        }
        let _ = wide;
        // SAFETY: forwarded.
        unsafe { self.pack_rows_body(rows, ks, dst) };
    }

    /// [`Normed::pack_rows_body`] compiled for AVX-512F (its loops
    /// vectorised 16 floats wide; an explicit chunk-by-chunk version with
    /// the scale and shift in registers ran 0.91–0.99× as fast on
    /// densenet121's bottlenecks, writing the rows out of order).
    ///
    /// # Safety
    /// As [`Normed::pack_rows`]; the CPU has AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn pack_rows_avx512(&self, rows: Range<usize>, ks: Range<usize>, dst: *mut f32) {
        // SAFETY: forwarded.
        unsafe { self.pack_rows_body(rows, ks, dst) };
    }

    /// The loops of [`Normed::pack_rows`]: per part, row by row.
    ///
    /// # Safety
    /// As [`Normed::pack_rows`].
    #[inline(always)]
    unsafe fn pack_rows_body(&self, rows: Range<usize>, ks: Range<usize>, dst: *mut f32) {
        let kb = ks.len();
        let mut at = 0;
        for (&x, &width) in self.parts.iter().zip(self.channels) {
            let (lo, hi) = (at.max(ks.start), (at + width).min(ks.end));
            at += width;
            if lo >= hi {
                continue;
            }
            let len = hi - lo;
            // SAFETY: channels lo..hi of the concatenation (caller's
            // guarantee on scale and shift).
            let (scale, shift) = unsafe {
                (
                    std::slice::from_raw_parts(self.scale.add(lo), len),
                    std::slice::from_raw_parts(self.shift.add(lo), len),
                )
            };
            let first = lo - (at - width);
            for (i, r) in rows.clone().enumerate() {
                // SAFETY: row r of this part and row i of the destination,
                // the slice's columns (caller's guarantee).
                let (src, out) = unsafe {
                    (
                        std::slice::from_raw_parts(x.add(r * width + first), len),
                        std::slice::from_raw_parts_mut(dst.add(i * kb + lo - ks.start), len),
                    )
                };
                if self.relu {
                    for (((d, &v), &s), &t) in out.iter_mut().zip(src).zip(scale).zip(shift) {
                        *d = (v * s + t).max(0.0);
                    }
                } else {
                    for (((d, &v), &s), &t) in out.iter_mut().zip(src).zip(scale).zip(shift) {
                        *d = v * s + t;
                    }
                }
            }
        }
    }
}
