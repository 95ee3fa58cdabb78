//! The weight gradient of a convolution over NHWC tensors, contracted
//! over the whole batch in one pass with the input read in place:
//!
//! `dWᵀ[(c, ty, tx), o] = Σ_{img, oy, ox} x[img, oy·sh + ty·dh − ph,
//! ox·sw + tx·dw − pw, c] · dy[img, oy, ox, o]`
//!
//! (taps in the padding contribute nothing and are skipped). A row of the
//! result is one input channel and tap, `OC` wide: the weight as
//! `[C, KH, KW, OC]`, the transpose of its `[OC, C, KH, KW]`.
//!
//! The product's depth is every output pixel of the batch. Per tap, the
//! pixels whose tap falls inside the input form, per output row, one run
//! of consecutive output columns, and along such a run both operands
//! advance by a fixed stride (`x` by `sw·C`, `dy` by `OC`): the AVX-512
//! tile ([`avx512`]) broadcasts 8 channels of `x` and multiplies 48
//! channels of `dy` per pixel, its `8×48` accumulators in registers over a
//! whole run. No im2col panel, no packing.
//!
//! The output rows are split over the threads (each owns its rows: no
//! partial sums to add), and each call walks the batch in chunks of about
//! [`CHUNK_PIXELS`] output pixels, so that a chunk's `dy` and the `x` rows
//! it reads stay in L2 while the thread's tiles go over them.
//!
//! Why: as per-image GEMMs (an im2col panel per image) a small map gives a
//! short depth per product (81 for eeg_ccnn's 9×9 maps): the result goes
//! through memory and both operands are packed once per image.

#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(test)]
mod tests;

use super::conv::ConvGeom;
use crate::plan::RowKernel;
use std::ops::Range;

/// Output pixels of the batch per chunk (see the module docs).
pub const CHUNK_PIXELS: usize = 256;

thread_local! {
    /// A thread's runs of one chunk, a slot of [`ConvWeightGrad::chunk_rows`]
    /// per tap, and how many each slot holds (see
    /// [`ConvWeightGrad::accumulate`]).
    static RUNS: std::cell::RefCell<(Vec<Run>, Vec<usize>)> = const {
        std::cell::RefCell::new((Vec::new(), Vec::new()))
    };
}

/// The tile's rows and columns, which are also the channels a block
/// covers and the stripe of result columns a thread goes over a chunk
/// with: `6×64` (four vectors) when the output channels are a multiple of
/// 64, so that no stripe is a 16-column remainder paying a broadcast of
/// `x` per vector (eeg_ccnn's 64- and 256-channel layers); `8×48`
/// otherwise.
fn tiling(oc: usize) -> (usize, usize) {
    if oc.is_multiple_of(64) {
        (6, 64)
    } else {
        (8, 48)
    }
}

/// The weight gradient of a one-group convolution: [`RowKernel`] over the
/// rows `(c, ty, tx)` of `dWᵀ`, `oc` wide; input 0 is `x` as NHWC
/// (`[N, H, W, C]`), input 1 `dy` as NHWC (`[N, OH, OW, OC]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvWeightGrad {
    /// The convolution's window over `x` (`cg == c`: one group).
    pub geom: ConvGeom,
    /// Output channels.
    pub oc: usize,
}

/// A run of output pixels of one output row whose tap lies inside the
/// input: element offsets of its first `x` value (channel 0) and first
/// `dy` value (channel 0), and its length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Run {
    pub x: usize,
    pub dy: usize,
    pub len: usize,
}

impl ConvWeightGrad {
    /// Rows of the result: `KH·KW·C`.
    pub fn result_rows(&self) -> usize {
        self.geom.kh * self.geom.kw * self.geom.c
    }

    /// Elements of `x`.
    pub fn x_len(&self) -> usize {
        let g = &self.geom;
        g.n * g.h * g.w * g.c
    }

    /// Elements of `dy`.
    pub fn dy_len(&self) -> usize {
        let g = &self.geom;
        g.n * g.oh * g.ow * self.oc
    }

    /// Output rows `(n, oy)` per chunk.
    fn chunk_rows(&self) -> usize {
        (CHUNK_PIXELS / self.geom.ow.max(1)).max(1)
    }

    /// The output rows `(n, oy)` of one chunk: `[first, end)` of `N·OH`.
    fn chunks(&self) -> impl Iterator<Item = (usize, usize)> {
        let total = self.geom.n * self.geom.oh;
        let per = self.chunk_rows();
        (0..total)
            .step_by(per)
            .map(move |first| (first, (first + per).min(total)))
    }

    /// The runs of tap `(ty, tx)` over output rows `rows` (of `N·OH`),
    /// into the start of `runs` (at least as long as the rows); returns
    /// how many.
    fn runs(&self, ty: usize, tx: usize, rows: (usize, usize), runs: &mut [Run]) -> usize {
        let g = &self.geom;
        let (lo, hi) = valid(g.ow, g.w, g.stride[1], tx * g.dilation[1], g.pad[1]);
        if lo >= hi {
            return 0;
        }
        let ix0 = lo * g.stride[1] + tx * g.dilation[1] - g.pad[1];
        let mut count = 0;
        for q in rows.0..rows.1 {
            let (img, oy) = (q / g.oh, q % g.oh);
            let iy = (oy * g.stride[0] + ty * g.dilation[0]).checked_sub(g.pad[0]);
            let Some(iy) = iy.filter(|&iy| iy < g.h) else {
                continue;
            };
            runs[count] = Run {
                x: ((img * g.h + iy) * g.w + ix0) * g.c,
                dy: (q * g.ow + lo) * self.oc,
                len: hi - lo,
            };
            count += 1;
        }
        count
    }

    /// Rows `first..` of the result into `out` (whole rows), from `x` and
    /// `dy`: zeroes them, then adds every chunk's runs, through the
    /// AVX-512 tile when `vector` (the caller has checked the CPU). The
    /// runs go into the thread's [`RUNS`], which grows on a thread's first
    /// call and is reused after.
    fn accumulate(&self, first: usize, x: &[f32], dy: &[f32], out: &mut [f32], vector: bool) {
        out.fill(0.0);
        let g = &self.geom;
        let (taps, slot) = (g.kh * g.kw, self.chunk_rows());
        let end = first + out.len() / self.oc.max(1);
        RUNS.with_borrow_mut(|(runs, counts)| {
            runs.resize(taps * slot, Run::default());
            counts.resize(taps, 0);
            for chunk in self.chunks() {
                for (tap, count) in counts.iter_mut().enumerate() {
                    let slot = &mut runs[tap * slot..(tap + 1) * slot];
                    *count = self.runs(tap / g.kw, tap % g.kw, chunk, slot);
                }
                // A stripe of columns at a time, so that its part of the
                // chunk's `dy` stays in L1 across the row blocks.
                let (mr, stripe) = tiling(self.oc);
                for o0 in (0..self.oc).step_by(stripe) {
                    let cols = o0..(o0 + stripe).min(self.oc);
                    for (tap, &count) in counts.iter().enumerate() {
                        let tap_runs = &runs[tap * slot..tap * slot + count];
                        // The channels whose row `c·taps + tap` is in range.
                        let lo = first.saturating_sub(tap).div_ceil(taps);
                        let hi = end.saturating_sub(tap).div_ceil(taps).min(g.c);
                        for c0 in (lo..hi).step_by(mr) {
                            let block = Block {
                                c0,
                                rows: (hi - c0).min(mr),
                                at: (c0 * taps + tap - first) * self.oc,
                                ldc: taps * self.oc,
                                cols: cols.clone(),
                            };
                            self.block(x, dy, tap_runs, out, block, vector);
                        }
                    }
                }
            }
        });
    }

    /// Adds the runs' products into `block` of `out`, through the AVX-512
    /// tile when `vector`.
    fn block(
        &self,
        x: &[f32],
        dy: &[f32],
        runs: &[Run],
        out: &mut [f32],
        block: Block,
        vector: bool,
    ) {
        debug_assert!(block.at + (block.rows - 1) * block.ldc + block.cols.end <= out.len());
        #[cfg(target_arch = "x86_64")]
        if vector {
            // SAFETY: AVX-512F is present; every run lies inside `x` and
            // `dy` (checked by `rows`), the block inside `out`.
            unsafe { avx512::block(self, x, dy, runs, out, block) };
            return;
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = vector;
        self.block_portable(x, dy, runs, out, block);
    }

    /// [`Self::block`] without vector code.
    fn block_portable(&self, x: &[f32], dy: &[f32], runs: &[Run], out: &mut [f32], block: Block) {
        let (step, oc) = (self.geom.stride[1] * self.geom.c, self.oc);
        for i in 0..block.rows {
            let row = block.at + i * block.ldc;
            let row = &mut out[row + block.cols.start..row + block.cols.end];
            for run in runs {
                for p in 0..run.len {
                    let xv = x[run.x + p * step + block.c0 + i];
                    let at = run.dy + p * oc;
                    let d = &dy[at + block.cols.start..at + block.cols.end];
                    for (o, &dv) in row.iter_mut().zip(d) {
                        *o += xv * dv;
                    }
                }
            }
        }
    }
}

/// A block of the result one tile pass covers: `rows` (at most the tile's)
/// channels from `c0` of one tap, their columns `cols`; row `i` starts at
/// element `at + i·ldc` of the thread's output.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    pub c0: usize,
    pub rows: usize,
    pub at: usize,
    pub ldc: usize,
    pub cols: Range<usize>,
}

/// The output positions `[lo, hi)` along one axis whose tap (offset
/// `tap` = tap index · dilation) reads inside an input of `size`:
/// `0 ≤ o·stride + tap − pad < size`, clamped to `[0, out]`.
fn valid(out: usize, size: usize, stride: usize, tap: usize, pad: usize) -> (usize, usize) {
    let stride = stride.max(1);
    let lo = pad.saturating_sub(tap).div_ceil(stride).min(out);
    // o·stride < size + pad − tap.
    let hi = (size + pad)
        .checked_sub(tap)
        .map_or(0, |room| room.div_ceil(stride))
        .clamp(lo, out);
    (lo, hi)
}

impl RowKernel for ConvWeightGrad {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let g = &self.geom;
        if g.cg != g.c {
            return Err(format!(
                "weight gradient of {} channels in groups of {}: one group only",
                g.c, g.cg
            ));
        }
        let (x, dy) = match inputs {
            [x, dy, ..] => (*x, *dy),
            _ => return Err("weight gradient: needs x and dy".into()),
        };
        if x.len() < self.x_len() || dy.len() < self.dy_len() {
            return Err(format!(
                "weight gradient: x holds {} elements and dy {}, the convolution reads {} and {}",
                x.len(),
                dy.len(),
                self.x_len(),
                self.dy_len()
            ));
        }
        if self.oc == 0 || out.is_empty() {
            return Ok(());
        }
        if first + out.len() / self.oc > self.result_rows() {
            return Err(format!(
                "weight gradient: rows {first}.. past its {} rows",
                self.result_rows()
            ));
        }
        self.accumulate(first, x, dy, out, super::kernel_avx512::available());
        Ok(())
    }
}
