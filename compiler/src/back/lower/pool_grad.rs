//! Lowering of the 2-D pooling gradients (NCHW): `max_pool2d_grad(dy, x)`,
//! `avg_pool2d_grad(dy)` and `adaptive_avg_pool2d_grad(dy)` to one
//! `PoolGradKernel` call each, except max pooling's over windows the
//! forward runs in the runtime ([`super::pool::max_pool`]: all but VGG's
//! 2×2 at stride 2), which runs as its [`MaxPool2dGrad`] row step (a row
//! per plane, the taps picked by vector selects; see its module).
//!
//! A work unit is one `(n, c)` plane, so threads write disjoint planes:
//! the kernel zeroes the plane of `dx`, then visits the output windows in
//! order (the window bounds of [`crate::back::pool`], padding never read)
//! and adds each window's gradient to its taps: for max pooling to the
//! first maximal tap in row-major window order (NaN counting as maximal,
//! PyTorch's CPU rule), for average pooling `dy / divisor` to every tap
//! (the divisor of the forward kernel: the padded window with
//! `count_include_pad`, else the taps read; adaptive bins their size).
//! A strided window of at most 16 taps that lies wholly inside the input
//! (all but the border windows) takes a branch with its taps unrolled at
//! constant offsets from its first element: the same taps in the same
//! order, without the per-tap loops. 2×2 windows at stride 2 (VGG's and
//! DenseNet's transitions' pools) take four windows per pass: the taps
//! as f32x4 of the even and odd elements of the two input rows (the
//! forward kernel's pair loads), the max tap picked lane by lane with the
//! same rule, and the gradients interleaved back and stored, since such
//! windows never overlap.

use super::data::call;
use super::rows::input;
use super::LowerCx;
use crate::back::jit::KernelSource;
use crate::back::loops::{counted, elem, flags};
use crate::back::pool::{
    f32_lanes, lanes, load_pairs, Axis, PoolKernel, PoolLayout, PoolOp, Window,
};
use crate::back::BackError;
use crate::ir::{Attr, Node};
use cranelift_codegen::ir::{
    condcodes::{FloatCC, IntCC},
    types, Block, InstBuilder, MemFlagsData, Type, Value,
};
use cranelift_frontend::FunctionBuilder;
use netc_runtime::maxpool::MaxPool2dGrad;
use netc_runtime::plan::{Rows, Step, Work};
use std::sync::Arc;

/// Lowers the 2-D pooling gradients; `None` for other ops.
pub fn try_lower(cx: &mut LowerCx, node: &Node) -> Option<Result<(), BackError>> {
    let op = match node.op.name {
        "max_pool2d_grad" => PoolOp::Max,
        "avg_pool2d_grad" => PoolOp::Avg {
            include_pad: !matches!(node.op.attr("count_include_pad"), Some(Attr::Bool(false))),
        },
        "adaptive_avg_pool2d_grad" => PoolOp::Avg { include_pad: false },
        _ => return None,
    };
    Some(pool_grad(cx, node, op))
}

/// A pooling-gradient kernel over `[planes, H, W]` (see the module docs).
#[derive(Debug, Clone, Copy)]
struct PoolGradKernel {
    op: PoolOp,
    h: Axis,
    w: Axis,
}

/// Taps of output `o`'s window along `a` (the count
/// [`Axis::span`] computes), for the bounds check before compiling.
fn taps(a: &Axis, o: u64) -> i64 {
    match a.window {
        Window::Strided {
            k,
            stride,
            pad,
            dilation,
        } => {
            let (k, d, input) = (k as i64, dilation as i64, a.input as i64);
            let s = (o * stride) as i64 - pad as i64;
            let lo = ((-s).max(0) + d - 1) / d;
            let hi = k.min((input - s + d - 1) / d);
            (hi - lo).max(0)
        }
        Window::Adaptive => {
            let (i, out) = (a.input, a.output);
            ((o + 1) * i).div_ceil(out) as i64 - (o * i / out) as i64
        }
    }
}

/// The most taps a window may have to be unrolled.
const MAX_UNROLLED: u64 = 16;

/// The taps of a strided window along both axes: `(k, dilation)` each.
struct Taps {
    h: (u64, u64),
    w: (u64, u64),
}

impl Taps {
    /// Offsets of the taps from the window's first input element, in
    /// row-major window order, for an input `w_in` wide.
    fn offsets(&self, w_in: i64) -> Vec<i64> {
        let ((kh, dh), (kw, dw)) = (self.h, self.w);
        (0..kh as i64)
            .flat_map(|i| (0..kw as i64).map(move |j| i * dh as i64 * w_in + j * dw as i64))
            .collect()
    }
}

impl PoolGradKernel {
    /// The taps to unroll for windows inside the input: strided windows
    /// of at most [`MAX_UNROLLED`] taps.
    fn unrolled(&self) -> Option<Taps> {
        match (self.h.window, self.w.window) {
            (
                Window::Strided {
                    k: kh,
                    dilation: dh,
                    ..
                },
                Window::Strided {
                    k: kw,
                    dilation: dw,
                    ..
                },
            ) if kh * kw <= MAX_UNROLLED => Some(Taps {
                h: (kh, dh),
                w: (kw, dw),
            }),
            _ => None,
        }
    }
}

impl PoolGradKernel {
    /// Outputs at the start of each output row that [`Self::pairs`]
    /// computes: those of the forward kernel's pair path when the H
    /// windows are the same unpadded pairs at stride 2 as the W windows
    /// (the 2×2 pools), so the windows of those outputs tile their inputs
    /// without overlap; 0 otherwise.
    fn paired_outputs(&self) -> u64 {
        let forward = PoolKernel {
            op: self.op,
            layout: PoolLayout::Nchw,
            h: self.h,
            w: self.w,
        };
        if self.h.window == self.w.window {
            forward.paired_outputs()
        } else {
            0
        }
    }

    /// The gradient of the first `count` (a multiple of 4) outputs of
    /// output row `row` (element index into `dy`) whose 2×2 windows start
    /// at input row `first` of the plane at `dx`: four windows per pass,
    /// their four taps as f32x4 of even and odd elements of the two input
    /// rows. A max window's gradient goes to the tap the scalar path
    /// picks (scanned in the same order with the same rule), an average
    /// window's to every tap; each pair of taps is interleaved back and
    /// stored, as the windows do not overlap.
    #[allow(clippy::too_many_arguments)]
    fn pairs(
        &self,
        b: &mut FunctionBuilder,
        ptr: Type,
        dy: Value,
        x: Option<Value>,
        dx: Value,
        row: Value,
        first: Value,
        count: Value,
    ) {
        let i64t = types::I64;
        let w_in = self.w.input as i64;
        let low = f32_lanes(b, [(false, 0), (true, 0), (false, 1), (true, 1)]);
        let high = f32_lanes(b, [(false, 2), (true, 2), (false, 3), (true, 3)]);
        let bytes = |b: &mut FunctionBuilder, v: Value| b.ins().bitcast(types::I8X16, lanes(), v);
        let store = |b: &mut FunctionBuilder, e: Value, ev: Value, od: Value| {
            let a = elem(b, dx, e, ptr);
            let lo = b.ins().shuffle(ev, od, low);
            let hi = b.ins().shuffle(ev, od, high);
            b.ins().store(flags(), lo, a, 0);
            b.ins().store(flags(), hi, a, 16);
        };
        let zero = b.ins().iconst(i64t, 0);
        counted(b, zero, count, 4, &[], &[], |b, ow, _| {
            let o = b.ins().iadd(row, ow);
            let a = elem(b, dy, o, ptr);
            let g = b.ins().load(types::F32X4, flags(), a, 0);
            let e0 = b.ins().imul_imm_s(first, w_in);
            let col = b.ins().imul_imm_s(ow, 2);
            let e0 = b.ins().iadd(e0, col);
            let e1 = b.ins().iadd_imm_s(e0, w_in);
            let taps: Vec<Value> = match (self.op, x) {
                (PoolOp::Max, Some(x)) => {
                    let (t0, t1) = load_pairs(b, ptr, x, e0);
                    let (t2, t3) = load_pairs(b, ptr, x, e1);
                    let tap_id = |b: &mut FunctionBuilder, t: i64| {
                        let t = b.ins().iconst(types::I32, t);
                        b.ins().splat(types::I32X4, t)
                    };
                    let (mut best, mut pick) = (t0, tap_id(b, 0));
                    for (t, v) in [t1, t2, t3].into_iter().enumerate() {
                        let gt = b.ins().fcmp(FloatCC::GreaterThan, v, best);
                        let nan = b.ins().fcmp(FloatCC::Unordered, v, v);
                        let take = b.ins().bor(gt, nan);
                        let take_f = b.ins().bitcast(types::F32X4, MemFlagsData::new(), take);
                        best = b.ins().bitselect(take_f, v, best);
                        let id = tap_id(b, t as i64 + 1);
                        pick = b.ins().bitselect(take, id, pick);
                    }
                    let gi = b.ins().bitcast(types::I32X4, MemFlagsData::new(), g);
                    (0..4)
                        .map(|t| {
                            let id = tap_id(b, t);
                            let hit = b.ins().icmp(IntCC::Equal, pick, id);
                            let v = b.ins().band(hit, gi);
                            bytes(b, v)
                        })
                        .collect()
                }
                _ => {
                    // The window is its four taps, inside the input.
                    let n = b.ins().f32const(4.0);
                    let n = b.ins().splat(types::F32X4, n);
                    let gd = b.ins().fdiv(g, n);
                    vec![bytes(b, gd); 4]
                }
            };
            store(b, e0, taps[0], taps[1]);
            store(b, e1, taps[2], taps[3]);
            vec![]
        });
    }
}

impl KernelSource for PoolGradKernel {
    fn key(&self) -> String {
        format!("pool_grad.f32({:?})", self)
    }

    fn build(&self, b: &mut FunctionBuilder, entry: Block, ptr: Type) -> Result<(), BackError> {
        let p = b.block_params(entry).to_vec();
        let (start, end, ins, out) = (p[0], p[1], p[2], p[3]);
        let dy = input(b, ins, 0, ptr);
        let x = (self.op == PoolOp::Max).then(|| input(b, ins, 1, ptr));
        let i64t = types::I64;
        let (w_in, plane) = (self.w.input as i64, (self.h.input * self.w.input) as i64);
        let (oh_n, ow_n) = (self.h.output as i64, self.w.output as i64);
        counted(b, start, end, 1, &[], &[], |b, pl, _| {
            let base = b.ins().imul_imm_s(pl, plane);
            let dxp = elem(b, out, base, ptr);
            let zero = b.ins().iconst(i64t, 0);
            let vec_hi = b.ins().iconst(i64t, plane & !3);
            let hi = b.ins().iconst(i64t, plane);
            let z = b.ins().f32const(0.0);
            let zv = b.ins().splat(types::F32X4, z);
            for (lo, hi, step, v) in [(zero, vec_hi, 4, zv), (vec_hi, hi, 1, z)] {
                counted(b, lo, hi, step, &[], &[], |b, j, _| {
                    let a = elem(b, dxp, j, ptr);
                    b.ins().store(flags(), v, a, 0);
                    vec![]
                });
            }
            let xp = x.map(|x| elem(b, x, base, ptr));
            let ob = b.ins().imul_imm_s(pl, oh_n * ow_n);
            let oh_hi = b.ins().iconst(i64t, oh_n);
            let paired = self.paired_outputs();
            counted(b, zero, oh_hi, 1, &[], &[], |b, oh, _| {
                let hs = self.h.span(b, oh);
                let ow_first = if paired > 0 {
                    // Rows whose H window is two rows inside the input
                    // start with the paired outputs.
                    let full = b.ins().icmp_imm_s(IntCC::Equal, hs.count, 2);
                    let p = b.ins().iconst(i64t, paired as i64);
                    let first = b.ins().select(full, p, zero);
                    let row = b.ins().imul_imm_s(oh, ow_n);
                    let row = b.ins().iadd(row, ob);
                    self.pairs(b, ptr, dy, xp, dxp, row, hs.first, first);
                    first
                } else {
                    zero
                };
                let ow_hi = b.ins().iconst(i64t, ow_n);
                counted(b, ow_first, ow_hi, 1, &[], &[], |b, ow, _| {
                    let ws = self.w.span(b, ow);
                    let o = b.ins().imul_imm_s(oh, ow_n);
                    let o = b.ins().iadd(o, ow);
                    let o = b.ins().iadd(o, ob);
                    let a = elem(b, dy, o, ptr);
                    let g = b.ins().load(types::F32, flags(), a, 0);
                    // Input index (within the plane) of tap (i, j).
                    let tap = |b: &mut FunctionBuilder, i: Value, j: Value| {
                        let ih = b.ins().imul_imm_s(i, hs.step);
                        let ih = b.ins().iadd(ih, hs.first);
                        let iw = b.ins().imul_imm_s(j, ws.step);
                        let iw = b.ins().iadd(iw, ws.first);
                        let r = b.ins().imul_imm_s(ih, w_in);
                        b.ins().iadd(r, iw)
                    };
                    let add = |b: &mut FunctionBuilder, idx: Value, v: Value| {
                        let a = elem(b, dxp, idx, ptr);
                        let old = b.ins().load(types::F32, flags(), a, 0);
                        let new = b.ins().fadd(old, v);
                        b.ins().store(flags(), new, a, 0);
                    };
                    let general = |b: &mut FunctionBuilder| match (self.op, xp) {
                        (PoolOp::Max, Some(xp)) => {
                            let first = tap(b, zero, zero);
                            let ninf = b.ins().f32const(f32::NEG_INFINITY);
                            let tys = [types::F32, i64t];
                            let best =
                                counted(b, zero, hs.count, 1, &[ninf, first], &tys, |b, i, c| {
                                    counted(b, zero, ws.count, 1, c, &tys, |b, j, c| {
                                        let idx = tap(b, i, j);
                                        let a = elem(b, xp, idx, ptr);
                                        let v = b.ins().load(types::F32, flags(), a, 0);
                                        let gt = b.ins().fcmp(FloatCC::GreaterThan, v, c[0]);
                                        let nan = b.ins().fcmp(FloatCC::Unordered, v, v);
                                        let take = b.ins().bor(gt, nan);
                                        vec![
                                            b.ins().select(take, v, c[0]),
                                            b.ins().select(take, idx, c[1]),
                                        ]
                                    })
                                });
                            add(b, best[1], g);
                        }
                        (op, _) => {
                            let n = if op == (PoolOp::Avg { include_pad: true }) {
                                b.ins().imul(hs.padded, ws.padded)
                            } else {
                                b.ins().imul(hs.count, ws.count)
                            };
                            let n = b.ins().fcvt_from_sint(types::F32, n);
                            let gd = b.ins().fdiv(g, n);
                            counted(b, zero, hs.count, 1, &[], &[], |b, i, _| {
                                counted(b, zero, ws.count, 1, &[], &[], |b, j, _| {
                                    let idx = tap(b, i, j);
                                    add(b, idx, gd);
                                    vec![]
                                });
                                vec![]
                            });
                        }
                    };
                    match self.unrolled() {
                        Some(taps) => {
                            // Windows wholly inside the input (all but the
                            // borders) take the unrolled taps.
                            let (kh, kw) = (taps.h.0 as i64, taps.w.0 as i64);
                            let full_h = b.ins().icmp_imm_s(IntCC::Equal, hs.count, kh);
                            let full_w = b.ins().icmp_imm_s(IntCC::Equal, ws.count, kw);
                            let full = b.ins().band(full_h, full_w);
                            let (fast, slow, join) =
                                (b.create_block(), b.create_block(), b.create_block());
                            b.ins().brif(full, fast, &[], slow, &[]);
                            b.switch_to_block(fast);
                            let r = b.ins().imul_imm_s(hs.first, w_in);
                            let corner = b.ins().iadd(r, ws.first);
                            let offsets = taps.offsets(w_in);
                            let at =
                                |b: &mut FunctionBuilder, off: i64| b.ins().iadd_imm_s(corner, off);
                            match (self.op, xp) {
                                (PoolOp::Max, Some(xp)) => {
                                    let mut best = b.ins().f32const(f32::NEG_INFINITY);
                                    let mut idx = corner;
                                    for &off in &offsets {
                                        let t = at(b, off);
                                        let a = elem(b, xp, t, ptr);
                                        let v = b.ins().load(types::F32, flags(), a, 0);
                                        let gt = b.ins().fcmp(FloatCC::GreaterThan, v, best);
                                        let nan = b.ins().fcmp(FloatCC::Unordered, v, v);
                                        let take = b.ins().bor(gt, nan);
                                        best = b.ins().select(take, v, best);
                                        idx = b.ins().select(take, t, idx);
                                    }
                                    add(b, idx, g);
                                }
                                _ => {
                                    // Inside the input the padded window
                                    // is the window: kh·kw taps either way.
                                    let n = b.ins().f32const((kh * kw) as f32);
                                    let gd = b.ins().fdiv(g, n);
                                    for &off in &offsets {
                                        let t = at(b, off);
                                        add(b, t, gd);
                                    }
                                }
                            }
                            b.ins().jump(join, &[]);
                            b.switch_to_block(slow);
                            general(b);
                            b.ins().jump(join, &[]);
                            b.switch_to_block(join);
                        }
                        None => general(b),
                    }
                    vec![]
                });
                vec![]
            });
            vec![]
        });
        b.ins().return_(&[]);
        Ok(())
    }
}

fn pair(node: &Node, key: &str, default: u64) -> Vec<u64> {
    match node.op.attr(key) {
        Some(Attr::Ints(v)) if v.len() == 2 => v.iter().map(|&x| x.max(0) as u64).collect(),
        _ => vec![default; 2],
    }
}

fn pool_grad(cx: &mut LowerCx, node: &Node, op: PoolOp) -> Result<(), BackError> {
    let dy = node.inputs[0];
    let (ys, xs) = (cx.shape(dy)?, cx.shape(node.outputs[0])?);
    let bad = |why: &str| {
        BackError(format!(
            "`{}` at {}: {why} (gradient {ys:?}, input {xs:?})",
            node.op.name, node.path
        ))
    };
    let (&[n, c, h, w], &[yn, yc, oh, ow]) = (&xs[..], &ys[..]) else {
        return Err(bad("only NCHW [N, C, H, W] pooling is lowered"));
    };
    if (n, c) != (yn, yc) {
        return Err(bad("batch or channels differ"));
    }
    let adaptive = node.op.name.starts_with("adaptive");
    let (k, stride, pad, dil) = (
        pair(node, "k", 1),
        pair(node, "stride", 1),
        pair(node, "pad", 0),
        pair(node, "dilation", 1),
    );
    let axis = |i: usize, input: usize, output: usize| Axis {
        input: input as u64,
        output: output as u64,
        window: if adaptive {
            Window::Adaptive
        } else {
            Window::Strided {
                k: k[i],
                stride: stride[i],
                pad: pad[i],
                dilation: dil[i],
            }
        },
    };
    let kernel = PoolGradKernel {
        op,
        h: axis(0, h, oh),
        w: axis(1, w, ow),
    };
    let forward = PoolKernel {
        op,
        layout: PoolLayout::Nchw,
        h: kernel.h,
        w: kernel.w,
    };
    let mut inputs = vec![cx.buf(dy)?];
    let mut extents = vec![n * c * oh * ow];
    if op == PoolOp::Max {
        let x = *node.inputs.get(1).ok_or_else(|| bad("needs the input x"))?;
        if cx.shape(x)? != xs {
            return Err(bad("x does not have the gradient's result shape"));
        }
        inputs.push(cx.buf(x)?);
        extents.push(n * c * h * w);
    }
    extents.push(n * c * h * w);
    let out = cx.output(node.outputs[0])?;
    if n * c * h * w == 0 {
        return Ok(());
    }
    forward.validate().map_err(|e| bad(&e.0))?;
    for a in [kernel.h, kernel.w] {
        if (0..a.output).any(|o| taps(&a, o) == 0) {
            return Err(bad("a window lies entirely in the padding"));
        }
    }
    let grain = (4096 / (h * w)).max(1);
    if let (PoolOp::Max, Some(pool)) = (op, super::pool::max_pool(kernel.h, kernel.w)) {
        cx.push(Step {
            work: Work::Rows(Rows {
                kernel: Arc::new(MaxPool2dGrad { pool }),
                rows: n * c,
                width: h * w,
                grain,
            }),
            inputs,
            output: out,
            extents,
        });
        return Ok(());
    }
    let id = cx.jit.kernel(&kernel)?;
    call(cx, id, n * c, grain, inputs, extents, out)
}

#[cfg(test)]
mod tests;
