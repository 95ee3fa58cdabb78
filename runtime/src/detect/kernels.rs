//! Row kernels of FCOS's training tail ([`crate::plan::Rows`] steps): the
//! box coder and its gradient, centerness, `boolean_mask` and its
//! gradient, and the per-item losses (focal, BCE with logits, IoU) with
//! theirs. The work is small (one value per location), so most run as one
//! call; the elementwise ones split their rows over the pool.
//!
//! **Run-time counts.** `boolean_mask` keeps the rows where its mask is
//! set: how many is known only when the step runs. Its results are
//! planned for the bound (every row set) and hold the kept rows first;
//! a kernel reading such a value also reads the mask (its last input)
//! and counts the set elements itself, so no count travels through the
//! arena. Rows past the count are written as zeros.

use super::{focal, iou_loss, IouKind};
use crate::plan::RowKernel;

/// How a loss reduces its per-item values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    /// One value per item.
    None,
    /// The sum over the items.
    Sum,
    /// The mean over the items.
    Mean,
}

impl Reduction {
    /// The reduction named `s`.
    pub fn parse(s: &str) -> Option<Reduction> {
        match s {
            "none" => Some(Reduction::None),
            "sum" => Some(Reduction::Sum),
            "mean" => Some(Reduction::Mean),
            _ => None,
        }
    }
}

/// The per-item loss of a [`PairLoss`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PairOp {
    /// `sigmoid_focal` of one logit (items of width 1).
    Focal {
        /// Class weighting (`< 0`: none).
        alpha: f64,
        /// Modulating exponent.
        gamma: f64,
    },
    /// `bce_with_logits` of one logit (items of width 1), no `pos_weight`.
    Bce,
    /// `iou_loss` of one box (items of width 4).
    Iou {
        /// Which IoU loss.
        kind: IouKind,
        /// The denominators' epsilon.
        eps: f64,
    },
}

impl PairOp {
    /// Elements per item.
    pub fn width(self) -> usize {
        match self {
            PairOp::Iou { .. } => 4,
            _ => 1,
        }
    }

    /// The item's loss and its gradient with respect to the prediction.
    fn eval(self, x: &[f32], t: &[f32]) -> (f64, [f64; 4]) {
        match self {
            PairOp::Focal { alpha, gamma } => {
                let (l, d) = focal(f64::from(x[0]), f64::from(t[0]), alpha, gamma);
                (l, [d, 0.0, 0.0, 0.0])
            }
            PairOp::Bce => {
                let (z, y) = (f64::from(x[0]), f64::from(t[0]));
                let l = (1.0 - y) * z + (-z.abs()).exp().ln_1p() + (-z).max(0.0);
                (l, [1.0 / (1.0 + (-z).exp()) - y, 0.0, 0.0, 0.0])
            }
            PairOp::Iou { kind, eps } => {
                let p: [f64; 4] = std::array::from_fn(|k| f64::from(x[k]));
                let q: [f64; 4] = std::array::from_fn(|k| f64::from(t[k]));
                iou_loss(&p, &q, kind, eps)
            }
        }
    }
}

/// A loss of prediction and target items, or (`grad`) its gradient with
/// respect to the prediction. Inputs: `x`, `target`, then `dloss` for a
/// gradient (`[]` reduced, one per item for `none`), then the mask when
/// `counted`. Output rows: one value per item (`none`), one row of one
/// value (`sum`, `mean`), or the gradient, a row of `width` per item.
#[derive(Clone, Debug)]
pub struct PairLoss {
    /// The per-item loss.
    pub op: PairOp,
    /// The reduction.
    pub reduction: Reduction,
    /// Whether the step computes the gradient.
    pub grad: bool,
    /// Items the buffers are planned for.
    pub items: usize,
    /// When the items are the rows a `boolean_mask` kept: items per set
    /// mask element (the mask is the last input).
    pub counted: Option<usize>,
}

/// The set elements of a mask (f32 0/1).
pub fn count_set(mask: &[f32]) -> usize {
    mask.iter().filter(|&&m| m != 0.0).count()
}

impl PairLoss {
    /// The step's `(rows, width)`.
    pub fn shape(&self) -> (usize, usize) {
        match (self.grad, self.reduction) {
            (true, _) => (self.items, self.op.width()),
            (false, Reduction::None) => (self.items, 1),
            (false, _) => (1, 1),
        }
    }

    /// The items present in this run.
    fn live(&self, inputs: &[&[f32]]) -> Result<usize, String> {
        let Some(per) = self.counted else {
            return Ok(self.items);
        };
        let mask = inputs.last().copied().unwrap_or(&[]);
        let n = count_set(mask) * per;
        if n > self.items {
            return Err(format!(
                "the mask keeps {n} items, the buffers hold {}",
                self.items
            ));
        }
        Ok(n)
    }
}

impl RowKernel for PairLoss {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let w = self.op.width();
        let live = self.live(inputs)?;
        let (x, t) = (inputs[0], inputs[1]);
        if x.len() < live * w || t.len() < live * w {
            return Err(format!(
                "{live} items of {w} need {} elements, the operands hold {} and {}",
                live * w,
                x.len(),
                t.len()
            ));
        }
        let item = |i: usize| self.op.eval(&x[i * w..][..w], &t[i * w..][..w]);
        let (_, width) = self.shape();
        if !self.grad && self.reduction != Reduction::None {
            let sum: f64 = (0..live).map(|i| item(i).0).sum();
            let v = if self.reduction == Reduction::Mean {
                sum / live as f64
            } else {
                sum
            };
            out[0] = v as f32;
            return Ok(());
        }
        let dloss = inputs.get(2).copied().unwrap_or(&[]);
        for (k, row) in out.chunks_exact_mut(width).enumerate() {
            let i = first + k;
            if i >= live {
                row.fill(0.0);
                continue;
            }
            let (l, d) = item(i);
            if !self.grad {
                row[0] = l as f32;
                continue;
            }
            let scale = match self.reduction {
                Reduction::None => dloss[i],
                Reduction::Sum => dloss[0],
                Reduction::Mean => dloss[0] / live as f32,
            };
            for (o, g) in row.iter_mut().zip(d) {
                *o = (f64::from(scale) * g) as f32;
            }
        }
        Ok(())
    }
}

/// What a [`BoxCoder`] step computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoderMode {
    /// `decode_boxes(reference, rel)`.
    Decode,
    /// `encode_boxes(reference, boxes)`.
    Encode,
    /// `decode_boxes_grad(reference, dy)`: the gradient with respect to `rel`.
    DecodeGrad,
}

/// torchvision's `BoxLinearCoder` over boxes (rows of 4): input 0 is the
/// reference (`[.., 4]` anchors or `[.., 2]` points), input 1 the other
/// operand; both broadcast over the output's leading dims by repeating
/// (their box counts divide the output's).
#[derive(Clone, Debug)]
pub struct BoxCoder {
    /// What to compute.
    pub mode: CoderMode,
    /// Elements per reference row (4 or 2).
    pub ref_width: usize,
    /// Whether distances are in units of the anchor's size.
    pub normalize: bool,
    /// Reference rows.
    pub ref_rows: usize,
    /// Rows of the other operand.
    pub other_rows: usize,
}

impl RowKernel for BoxCoder {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let (r, o) = (inputs[0], inputs[1]);
        for (k, row) in out.chunks_exact_mut(4).enumerate() {
            let b = first + k;
            let a = &r[(b % self.ref_rows) * self.ref_width..][..self.ref_width];
            let v = &o[(b % self.other_rows) * 4..][..4];
            let (cx, cy, w, h) = if self.ref_width == 4 {
                (
                    0.5 * (a[0] + a[2]),
                    0.5 * (a[1] + a[3]),
                    a[2] - a[0],
                    a[3] - a[1],
                )
            } else {
                (a[0], a[1], 1.0, 1.0)
            };
            let (w, h) = if self.normalize { (w, h) } else { (1.0, 1.0) };
            let res = match self.mode {
                CoderMode::Decode => [cx - v[0] * w, cy - v[1] * h, cx + v[2] * w, cy + v[3] * h],
                CoderMode::Encode => [
                    (cx - v[0]) / w,
                    (cy - v[1]) / h,
                    (v[2] - cx) / w,
                    (v[3] - cy) / h,
                ],
                CoderMode::DecodeGrad => [-v[0] * w, -v[1] * h, v[2] * w, v[3] * h],
            };
            row.copy_from_slice(&res);
        }
        Ok(())
    }
}

/// FCOS centerness of `(l, t, r, b)` rows: one value per row.
#[derive(Clone, Copy, Debug)]
pub struct Centerness;

impl RowKernel for Centerness {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        for (k, o) in out.iter_mut().enumerate() {
            let d = &inputs[0][(first + k) * 4..][..4];
            let lr = d[0].min(d[2]) / d[0].max(d[2]);
            let tb = d[1].min(d[3]) / d[1].max(d[3]);
            *o = (lr * tb).sqrt();
        }
        Ok(())
    }
}

/// `boolean_mask(x, mask)` for one operand (inputs `x`, `mask`): the rows
/// of `inner` elements where the mask is set, in order, then zeros up to
/// the bound. One call (a row of `bound · inner`).
#[derive(Clone, Copy, Debug)]
pub struct BooleanMask {
    /// Elements per mask element.
    pub inner: usize,
}

impl RowKernel for BooleanMask {
    fn rows(&self, _: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let (x, mask) = (inputs[0], inputs[1]);
        let mut kept = out.chunks_exact_mut(self.inner);
        for (i, _) in mask.iter().enumerate().filter(|(_, m)| **m != 0.0) {
            let dst = kept
                .next()
                .ok_or("the mask keeps more rows than the result holds")?;
            dst.copy_from_slice(&x[i * self.inner..][..self.inner]);
        }
        kept.for_each(|r| r.fill(0.0));
        Ok(())
    }
}

/// The gradient of [`BooleanMask`] (inputs `dy`, `mask`): row `i` of the
/// operand's gradient is the next row of `dy` where the mask is set, zero
/// elsewhere. One call (a row of `mask.len() · inner`).
#[derive(Clone, Copy, Debug)]
pub struct BooleanMaskGrad {
    /// Elements per mask element.
    pub inner: usize,
}

impl RowKernel for BooleanMaskGrad {
    fn rows(&self, _: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let (dy, mask) = (inputs[0], inputs[1]);
        let mut next = dy.chunks_exact(self.inner);
        for (row, &m) in out.chunks_exact_mut(self.inner).zip(mask) {
            if m == 0.0 {
                row.fill(0.0);
            } else {
                let src = next
                    .next()
                    .ok_or("the mask keeps more rows than the gradient holds")?;
                row.copy_from_slice(src);
            }
        }
        Ok(())
    }
}

/// A copy of input 0 (a cast whose source is already stored as exact f32
/// values in the arena: booleans, integer labels).
#[derive(Clone, Copy, Debug)]
pub struct CastCopy;

impl RowKernel for CastCopy {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let src = inputs[0]
            .get(first..first + out.len())
            .ok_or("the input is shorter than the result")?;
        out.copy_from_slice(src);
        Ok(())
    }
}
