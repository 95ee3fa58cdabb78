//! The weight gradient of a training plan's convolution as one long-K
//! product over the whole batch, instead of one `K = OH·OW` GEMM per
//! image:
//!
//! `dW[o, (ty, tx, c)] = Σ_r dy[o, r] · A(x)[r, (ty, tx, c)]`, `r` over
//! the `N·OH·OW` output pixels of the batch, with `A(x)` the implicit
//! im2col matrix of the NHWC input ([`ConvGeom`]) and `dy` laid out
//! `[OC, N·OH·OW]` ([`super::layout::BatchInner`]).
//!
//! Two row steps:
//! - [`ConvWeightGrad`]: one row per task; task `t` owns a range of the
//!   depth columns ([`DepthSplit`]) and runs over the whole batch in `KC`
//!   slices of `r`: the slice's rows of `A(x)` for its columns gathered
//!   row-major ([`ConvGeom::pack_rows`], contiguous channel runs), then
//!   one packed GEMM `C_t += dy[:, slice] · A_slice` into its part of dW.
//!   The tasks write disjoint columns: no partial sums to add up, and each
//!   task gathers only its own columns.
//! - [`WeightFromParts`]: the parts into dW's `[OC, C, KH, KW]` order.
//!
//! Why: per image, the products of small maps are short (eeg_ccnn's 9×9
//! maps: `K = 81`) and C goes through memory once per image.

use crate::gemm::conv::ConvGeom;
use crate::gemm::packed::{self, Side, KC};
use crate::gemm::{Strides, TileWork};
use crate::plan::RowKernel;
use std::ops::Range;
use std::sync::Mutex;

/// How the depth columns (`KH·KW·C`) of dW are split over tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepthSplit {
    /// Output channels (rows of dW).
    pub oc: usize,
    /// Depth of the convolution, `KH·KW·C` (columns of dW).
    pub depth: usize,
    /// Tasks (at least 1).
    pub tasks: usize,
}

impl DepthSplit {
    /// The columns task `t` computes.
    pub fn range(&self, t: usize) -> Range<usize> {
        let tasks = self.tasks.max(1);
        self.depth * t / tasks..self.depth * (t + 1) / tasks
    }

    /// The most columns a task computes.
    pub fn part(&self) -> usize {
        self.depth.div_ceil(self.tasks.max(1))
    }

    /// Elements of one task's row: its part of dW (`OC × part`, row
    /// stride the task's column count), then its gathered slice of A
    /// (`KC × part`).
    pub fn width(&self) -> usize {
        (self.oc + KC) * self.part()
    }
}

/// The per-task products of the module docs: inputs `x` NHWC
/// ([`ConvGeom::span`] floats) and `dy` as `[OC, N·OH·OW]`; output row
/// `t` is task `t`'s part ([`DepthSplit::width`]).
#[derive(Debug)]
pub struct ConvWeightGrad {
    geom: ConvGeom,
    split: DepthSplit,
    /// The packed GEMM's buffers, one per task, allocated here once (a
    /// step allocates nothing).
    works: Box<[Mutex<TileWork>]>,
}

impl ConvWeightGrad {
    /// The kernel for the convolution `geom` (one group: `cg == c`) with
    /// `oc` output channels, split over `tasks` tasks.
    pub fn new(geom: ConvGeom, oc: usize, tasks: usize) -> ConvWeightGrad {
        let split = DepthSplit {
            oc,
            depth: geom.depth(),
            tasks: tasks.max(1),
        };
        let works = (0..split.tasks)
            .map(|_| Mutex::new(TileWork::default().with_packed()))
            .collect();
        ConvWeightGrad { geom, split, works }
    }

    /// The split of dW's columns.
    pub fn split(&self) -> DepthSplit {
        self.split
    }
}

impl RowKernel for ConvWeightGrad {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let (geom, split) = (&self.geom, self.split);
        let (rows, oc, part) = (geom.rows(), split.oc, split.part());
        let (x, dy) = match inputs {
            [x, dy, ..] => (*x, *dy),
            _ => return Err("a weight gradient reads x and dy".into()),
        };
        let span = geom
            .span()
            .ok_or("the convolution's input size overflows")?;
        if geom.cg != geom.c || x.len() < span || dy.len() < oc * rows {
            return Err(format!(
                "weight gradient of {geom:?}, {oc} channels: x holds {} elements (need {span}), dy {} (need {})",
                x.len(),
                dy.len(),
                oc * rows
            ));
        }
        for (i, row) in out.chunks_exact_mut(split.width()).enumerate() {
            let t = first + i;
            let cols = split.range(t);
            let n = cols.len();
            let (c, a) = row.split_at_mut(oc * part);
            if n == 0 {
                continue;
            }
            if rows == 0 {
                c[..oc * n].fill(0.0);
                continue;
            }
            let mut work = self.works[t % self.works.len()]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for r0 in (0..rows).step_by(KC) {
                let kb = KC.min(rows - r0);
                // SAFETY: x holds the span (checked); rows r0..r0+kb and
                // columns `cols` are inside A; `a` holds KC·part ≥ kb·n.
                unsafe { geom.pack_rows(x.as_ptr(), r0..r0 + kb, cols.clone(), a.as_mut_ptr()) };
                let beta = if r0 == 0 { 0.0 } else { 1.0 };
                // SAFETY: A = dy[:, r0..r0+kb] (OC rows `rows` apart, inside
                // dy: checked), B = the gathered slice (kb × n row-major),
                // C = OC × n at row stride n inside `c`; `work` has the
                // packed GEMM's buffers and is this task's alone.
                unsafe {
                    packed::gemm_part(
                        oc,
                        n,
                        kb,
                        1.0,
                        Side::Raw(dy.as_ptr().add(r0), Strides::row_major(rows)),
                        Side::Raw(a.as_ptr(), Strides::row_major(n)),
                        beta,
                        c.as_mut_ptr(),
                        n,
                        0..oc,
                        0..n,
                        &mut work,
                    )
                };
            }
        }
        Ok(())
    }
}

/// [`ConvWeightGrad`]'s parts (its output, the only input) into dW
/// `[OC, C, KH·KW]`; an output row is one output channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightFromParts {
    /// The split the parts were computed with.
    pub split: DepthSplit,
    /// Input channels (the depth is `taps · c`, channel fastest).
    pub c: usize,
}

impl WeightFromParts {
    /// Elements of one output channel of dW.
    pub fn width(&self) -> usize {
        self.split.depth
    }
}

impl RowKernel for WeightFromParts {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let split = self.split;
        let (depth, c) = (split.depth, self.c);
        if depth == 0 {
            return Ok(());
        }
        let parts = inputs.first().copied().unwrap_or(&[]);
        if c == 0 || depth % c != 0 || parts.len() < split.tasks * split.width() {
            return Err(format!(
                "dW from {} parts of {split:?}, {c} channels: the input holds {} elements",
                split.tasks,
                parts.len()
            ));
        }
        let taps = depth / c;
        for (i, row) in out.chunks_exact_mut(depth).enumerate() {
            let o = first + i;
            for t in 0..split.tasks {
                let cols = split.range(t);
                let src = &parts[t * split.width() + o * cols.len()..][..cols.len()];
                for (d, &v) in cols.zip(src) {
                    // Depth index d = tap·C + channel; dW wants channel·taps + tap.
                    row[(d % c) * taps + d / c] = v;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
