//! Max pooling over channels-first planes (`[planes, H, W]`, planes =
//! `N·C`) and its gradient, as row steps, with PyTorch's windows (`k`,
//! `stride`, `pad`, `dilation`; `ceil_mode` is already in the output
//! size) and its rule for picking a window's maximum: the taps in
//! row-major order from `-inf` and the first tap's index, a tap taken
//! when it is greater than the best so far or NaN (so a window with a NaN
//! pools to NaN).
//!
//! Both kernels work on one output row at a time and split it into the
//! *interior* outputs, whose taps all lie inside the input, and the
//! border ones. Along the interior, tap `t` of consecutive outputs is a
//! run of the input row `stride` apart; the row is first split into its
//! `stride` phases (every `stride`-th element), so that the tap becomes a
//! contiguous slice of one phase, and each tap is one select over the
//! whole interior that the compiler vectorises (AVX-512 when the CPU has
//! it). Border outputs take their clipped taps one by one.
//!
//! - [`MaxPool2d`]: a row of the result is one output row `(plane, oy)`.
//!   The window's input rows are first reduced column by column into one
//!   row (the maximum is separable; only the sign of a zero maximum can
//!   depend on the order), then the taps along W are taken as above.
//! - [`MaxPool2dGrad`]: a row is one plane of `dx`, so threads write
//!   disjoint planes although windows overlap. The plane is zeroed; per
//!   output row the taps are visited in row-major order, the selects
//!   carrying each window's best value and its index, and each window's
//!   `dy` is then added to its tap (one at a time: neighbouring windows
//!   may pick the same input).
//!
//! Why not the generated pooling kernels: their NCHW path visits a
//! window's taps one scalar at a time through two loops of window
//! bounds; densenet121's stem pool (3×3, stride 2 over 112×112 maps)
//! took 24 ms forward and 35 ms backward at batch 8, 5% of its training
//! step.

use crate::plan::RowKernel;
use std::ops::Range;

/// One axis of a pooling window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolAxis {
    /// Input size.
    pub input: usize,
    /// Output size.
    pub output: usize,
    /// Window size.
    pub k: usize,
    /// Step between windows.
    pub stride: usize,
    /// Implicit padding before the first input.
    pub pad: usize,
    /// Step between taps.
    pub dilation: usize,
}

impl PoolAxis {
    /// The taps of output `o` inside the input: `(first input index,
    /// count)`, taps `dilation` apart.
    fn taps(&self, o: usize) -> (usize, usize) {
        let start = (o * self.stride) as isize - self.pad as isize;
        let room = self.input as isize - start;
        if room <= 0 {
            return (0, 0);
        }
        let d = self.dilation;
        // First tap t with start + t·d ≥ 0, and one past the last inside.
        let lo = ((-start).max(0) as usize).div_ceil(d);
        let hi = (room as usize).div_ceil(d).min(self.k);
        if lo >= hi {
            return (0, 0);
        }
        ((start + (lo * d) as isize) as usize, hi - lo)
    }

    /// The outputs whose `k` taps all lie inside the input:
    /// `o·stride ≥ pad` and `o·stride − pad + (k−1)·dilation < input`.
    fn interior(&self) -> Range<usize> {
        let lo = self.pad.div_ceil(self.stride).min(self.output);
        let reach = (self.k - 1) * self.dilation;
        let hi = match (self.input + self.pad).checked_sub(reach + 1) {
            Some(last) => (last / self.stride + 1).min(self.output),
            None => 0,
        };
        lo..hi.max(lo)
    }

    /// Offset of tap `t` from `o·stride` (may be negative).
    fn offset(&self, t: usize) -> isize {
        (t * self.dilation) as isize - self.pad as isize
    }

    /// Checks the window: sizes of at least 1 and padding of at most half
    /// the window (PyTorch's bound, which keeps every window non-empty).
    fn validate(&self, name: &str) -> Result<(), String> {
        if self.input == 0 || self.output == 0 || self.k == 0 || self.stride == 0 {
            return Err(format!(
                "{name}: sizes, window and stride must be at least 1 ({self:?})"
            ));
        }
        if self.dilation == 0 || 2 * self.pad > self.k {
            return Err(format!(
                "{name}: dilation must be at least 1 and padding at most half the window ({self:?})"
            ));
        }
        Ok(())
    }
}

/// Whether tap value `v` replaces the best `best` so far (PyTorch's
/// rule: greater, or NaN).
#[inline(always)]
fn takes(v: f32, best: f32) -> bool {
    v > best || v.is_nan()
}

/// One input row split into its `stride` phases: phase `r` holds the
/// elements `j·stride + r`, so that the inputs `o·stride + off` of
/// consecutive outputs `o` are one contiguous slice.
struct Phased<'a> {
    data: &'a [f32],
    stride: usize,
    len: usize,
}

impl<'a> Phased<'a> {
    /// Splits `row` (nothing to copy at stride 1) into `buf`.
    fn new(row: &'a [f32], stride: usize, buf: &'a mut Vec<f32>, selects: Selects) -> Self {
        if stride == 1 {
            return Phased {
                data: row,
                stride,
                len: row.len(),
            };
        }
        let len = row.len().div_ceil(stride);
        buf.resize(stride * len, 0.0);
        selects.split(row, stride, &mut buf[..]);
        Phased {
            data: buf,
            stride,
            len,
        }
    }

    /// The inputs `o·stride + off` for `o` in `outputs` (all inside the
    /// row).
    fn tap(&self, off: isize, outputs: &Range<usize>) -> &[f32] {
        let s = self.stride as isize;
        let (q, r) = (off.div_euclid(s), off.rem_euclid(s) as usize);
        let first = (outputs.start as isize + q) as usize;
        &self.data[r * self.len + first..][..outputs.len()]
    }
}

/// Writes phase `r` of `row` (elements `j·stride + r`) to the `r`-th of
/// `stride` equal parts of `buf`; stride 2 as pairs, which the compiler
/// turns into vector shuffles.
#[inline(always)]
fn split_body(row: &[f32], stride: usize, buf: &mut [f32]) {
    let len = buf.len() / stride;
    if stride == 2 {
        let (even, odd) = buf.split_at_mut(len);
        let pairs = row.chunks_exact(2);
        if let [last] = pairs.remainder() {
            even[len - 1] = *last;
        }
        for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(pairs) {
            (*e, *o) = (pair[0], pair[1]);
        }
        return;
    }
    for (r, phase) in buf.chunks_exact_mut(len).enumerate() {
        for (d, &v) in phase.iter_mut().zip(row.iter().skip(r).step_by(stride)) {
            *d = v;
        }
    }
}

/// `best[i] = v[i]` where [`takes`]`(v[i], best[i])`.
#[inline(always)]
fn max_into_body(best: &mut [f32], v: &[f32]) {
    for (b, &v) in best.iter_mut().zip(v) {
        *b = if takes(v, *b) { v } else { *b };
    }
}

/// [`max_into_body`], also setting `at[i] = first + i·step` where the tap
/// is taken.
#[inline(always)]
fn argmax_into_body(best: &mut [f32], at: &mut [u32], v: &[f32], first: u32, step: u32) {
    for (i, ((b, a), &v)) in best.iter_mut().zip(at.iter_mut()).zip(v).enumerate() {
        let take = takes(v, *b);
        *b = if take { v } else { *b };
        *a = if take { first + i as u32 * step } else { *a };
    }
}

/// The select loops, compiled for the widest vectors the CPU has.
#[derive(Clone, Copy)]
struct Selects {
    avx512: bool,
}

impl Selects {
    fn new() -> Self {
        Selects {
            avx512: crate::gemm::kernel_avx512::available(),
        }
    }

    /// [`split_body`].
    fn split(self, row: &[f32], stride: usize, buf: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if self.avx512 {
            // SAFETY: `new` found AVX-512F.
            return unsafe { split_avx512(row, stride, buf) };
        }
        split_body(row, stride, buf)
    }

    /// [`max_into_body`].
    fn max_into(self, best: &mut [f32], v: &[f32]) {
        #[cfg(target_arch = "x86_64")]
        if self.avx512 {
            // SAFETY: `new` found AVX-512F.
            return unsafe { max_into_avx512(best, v) };
        }
        max_into_body(best, v)
    }

    /// [`argmax_into_body`].
    fn argmax_into(self, best: &mut [f32], at: &mut [u32], v: &[f32], first: u32, step: u32) {
        #[cfg(target_arch = "x86_64")]
        if self.avx512 {
            // SAFETY: `new` found AVX-512F.
            return unsafe { argmax_into_avx512(best, at, v, first, step) };
        }
        argmax_into_body(best, at, v, first, step)
    }
}

/// [`split_body`] for AVX-512F.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn split_avx512(row: &[f32], stride: usize, buf: &mut [f32]) {
    split_body(row, stride, buf)
}

/// [`max_into_body`] for AVX-512F.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn max_into_avx512(best: &mut [f32], v: &[f32]) {
    max_into_body(best, v)
}

/// [`argmax_into_body`] for AVX-512F.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn argmax_into_avx512(best: &mut [f32], at: &mut [u32], v: &[f32], first: u32, step: u32) {
    argmax_into_body(best, at, v, first, step)
}

/// Max pooling of `[planes, H, W]` into `[planes, OH, OW]`: a
/// [`RowKernel`] over output rows, `OW` wide; input 0 is `x`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MaxPool2d {
    /// The H axis.
    pub h: PoolAxis,
    /// The W axis.
    pub w: PoolAxis,
}

impl MaxPool2d {
    /// Elements of one input plane.
    pub fn plane(&self) -> usize {
        self.h.input * self.w.input
    }

    /// Checks both axes.
    pub fn validate(&self) -> Result<(), String> {
        self.h.validate("max_pool2d")?;
        self.w.validate("max_pool2d")
    }

    /// Output row `oy` of one plane `x` into `out`: the window rows
    /// reduced into `cols`, then the W taps (`phases` holds the split).
    fn row(
        &self,
        x: &[f32],
        oy: usize,
        out: &mut [f32],
        (cols, phases): (&mut Vec<f32>, &mut Vec<f32>),
        selects: Selects,
    ) {
        let w = self.w.input;
        let (iy, count) = self.h.taps(oy);
        if count == 0 {
            // A window wholly in the padding (no taps): an empty maximum.
            out.fill(f32::NEG_INFINITY);
            return;
        }
        let row = |t: usize| &x[(iy + t * self.h.dilation) * w..][..w];
        cols.clear();
        cols.extend_from_slice(row(0));
        for t in 1..count {
            selects.max_into(cols, row(t));
        }
        let inner = self.w.interior();
        let border = (0..inner.start).chain(inner.end..self.w.output);
        for ox in border {
            let (ix, taps) = self.w.taps(ox);
            let mut best = f32::NEG_INFINITY;
            for t in 0..taps {
                let v = cols[ix + t * self.w.dilation];
                best = if takes(v, best) { v } else { best };
            }
            out[ox] = best;
        }
        if inner.is_empty() {
            return;
        }
        let phased = Phased::new(cols, self.w.stride, phases, selects);
        let out = &mut out[inner.clone()];
        out.fill(f32::NEG_INFINITY);
        for t in 0..self.w.k {
            selects.max_into(out, phased.tap(self.w.offset(t), &inner));
        }
    }
}

/// A thread's buffers: the column maxima or argmax state of one output
/// row, and a row split into phases.
#[derive(Default)]
struct Scratch {
    cols: Vec<f32>,
    phases: Vec<f32>,
    at: Vec<u32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

impl RowKernel for MaxPool2d {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        self.validate()?;
        let (oh, ow) = (self.h.output, self.w.output);
        let x = inputs.first().ok_or("max_pool2d: needs x")?;
        let planes = (first + out.len() / ow).div_ceil(oh);
        if x.len() < planes * self.plane() {
            return Err(format!(
                "max_pool2d: x holds {} elements, {planes} planes of {} are read",
                x.len(),
                self.plane()
            ));
        }
        let selects = Selects::new();
        SCRATCH.with_borrow_mut(|s| {
            for (r, out_row) in out.chunks_exact_mut(ow).enumerate() {
                let (plane, oy) = ((first + r) / oh, (first + r) % oh);
                let x = &x[plane * self.plane()..][..self.plane()];
                self.row(x, oy, out_row, (&mut s.cols, &mut s.phases), selects);
            }
        });
        Ok(())
    }
}

/// The gradient of [`MaxPool2d`]: a [`RowKernel`] over the planes of
/// `dx` (`H·W` wide); input 0 is `dy` (`[planes, OH, OW]`), input 1 the
/// forward's `x`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MaxPool2dGrad {
    /// The forward pooling.
    pub pool: MaxPool2d,
}

impl MaxPool2dGrad {
    /// Adds output row `oy`'s gradients `dy` into the plane `dx`, each to
    /// its window's tap in the plane `x`.
    fn row(
        &self,
        (x, dy): (&[f32], &[f32]),
        oy: usize,
        dx: &mut [f32],
        s: &mut Scratch,
        selects: Selects,
    ) {
        let p = &self.pool;
        let w = p.w.input;
        let (iy, hc) = p.h.taps(oy);
        if hc == 0 {
            return;
        }
        let rows = || (0..hc).map(|t| iy + t * p.h.dilation);
        let inner = p.w.interior();
        let border = (0..inner.start).chain(inner.end..p.w.output);
        for ox in border {
            let (ix, wc) = p.w.taps(ox);
            if wc == 0 {
                continue;
            }
            let (mut at, mut best) = (iy * w + ix, f32::NEG_INFINITY);
            for y in rows() {
                for t in 0..wc {
                    let i = y * w + ix + t * p.w.dilation;
                    if takes(x[i], best) {
                        (at, best) = (i, x[i]);
                    }
                }
            }
            dx[at] += dy[ox];
        }
        if inner.is_empty() {
            return;
        }
        let n = inner.len();
        s.cols.clear();
        s.cols.resize(n, f32::NEG_INFINITY);
        s.at.clear();
        let (stride, first_ix) = (p.w.stride, inner.start * p.w.stride - p.w.pad);
        // Every window starts at its first tap (PyTorch's initial index).
        s.at.extend((0..n).map(|i| (iy * w + first_ix + i * stride) as u32));
        for y in rows() {
            let phased = Phased::new(&x[y * w..][..w], stride, &mut s.phases, selects);
            for t in 0..p.w.k {
                let off = p.w.offset(t);
                let first = (y * w) as isize + (inner.start * stride) as isize + off;
                let taps = phased.tap(off, &inner);
                selects.argmax_into(&mut s.cols, &mut s.at, taps, first as u32, stride as u32);
            }
        }
        for (&at, &g) in s.at.iter().zip(&dy[inner]) {
            dx[at as usize] += g;
        }
    }
}

impl RowKernel for MaxPool2dGrad {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let p = &self.pool;
        p.validate()?;
        let plane = p.plane();
        let (oh, ow) = (p.h.output, p.w.output);
        let (dy, x) = match inputs {
            [dy, x, ..] => (*dy, *x),
            _ => return Err("max_pool2d_grad: needs dy and x".into()),
        };
        let planes = first + out.len() / plane;
        if dy.len() < planes * oh * ow || x.len() < planes * plane {
            return Err(format!(
                "max_pool2d_grad: dy holds {} and x {} elements, {planes} planes of {oh}x{ow} and {plane} are read",
                dy.len(),
                x.len(),
            ));
        }
        if plane > u32::MAX as usize {
            return Err(format!(
                "max_pool2d_grad: planes of {plane} elements are too large"
            ));
        }
        let selects = Selects::new();
        SCRATCH.with_borrow_mut(|s| {
            for (r, dx) in out.chunks_exact_mut(plane).enumerate() {
                dx.fill(0.0);
                let pl = first + r;
                let x = &x[pl * plane..][..plane];
                for oy in 0..oh {
                    let dy = &dy[(pl * oh + oy) * ow..][..ow];
                    self.row((x, dy), oy, dx, s, selects);
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests;
