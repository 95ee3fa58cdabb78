//! 2-D pooling kernels: max and average over windows (PyTorch's `k`,
//! `stride`, `pad`, `dilation`, `ceil_mode`, `count_include_pad`) and
//! adaptive average/max pooling (bin `i` covers
//! `floor(i·in/out) .. ceil((i+1)·in/out)`). 1-D pooling is the case
//! `H = 1`.
//!
//! Layouts ([`PoolLayout`]):
//! - **NCHW**: input `[planes, H, W]`, output `[planes, OH, OW]`; a work
//!   unit is one output row `(plane, oh)`, computed output by output with a
//!   scalar accumulator in registers, except that W windows of two taps at
//!   stride 2 (the common `k = 2, stride = 2` pools) take four outputs at a
//!   time: eight inputs split into even and odd lanes by shuffles.
//! - **NHWC**: input `[N, H, W, C]`, output `[N, OH, OW, C]`; a work unit is
//!   one output row `(n, oh)` of `OW·C` values, vectorised over channels
//!   (four f32x4 accumulators per window pass, then single f32x4 groups,
//!   then a scalar tail for `C % 4`).
//!
//! Window bounds are computed in the kernel per output index: for a
//! strided window starting at `s = o·stride − pad`, the taps
//! `s + t·dilation` with `0 <= t < k` that fall inside `0..in`; padding is
//! never read. Max starts at `-inf` and uses `fmax` (NaN-propagating, as
//! PyTorch); average sums in window order and divides once by the
//! divisor PyTorch uses: the window clipped to the padded input
//! (`count_include_pad`) or the taps read (otherwise, and for adaptive
//! bins).
//!
//! Kernel ABI ([`super::jit::KernelSource`]): `[start, end)` are output
//! rows, `inputs[0]` the input base, `out` the output base.

use super::jit::{Jit, KernelId, KernelSource};
use super::loops::{counted, elem, flags, smax, smin};
use super::BackError;
use cranelift_codegen::ir::{
    types, Block, ConstantData, Endianness, Immediate, InstBuilder, MemFlagsData, Type, Value,
};
use cranelift_frontend::FunctionBuilder;

/// f32x4 channel groups a channels-last kernel pools per pass over a
/// window (16 channels: the window's addressing is paid once per 16, and
/// the accumulators and loads fit the 16 xmm registers Cranelift uses).
const WIDE: usize = 4;

/// What a pooling kernel computes over each window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolOp {
    /// The maximum (NaN-propagating).
    Max,
    /// The mean; `include_pad` counts padding taps in the divisor.
    Avg {
        /// PyTorch's `count_include_pad`.
        include_pad: bool,
    },
}

/// How the windows of one spatial axis are placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    /// Output `o` covers taps `o·stride − pad + t·dilation`, `0 <= t < k`.
    Strided {
        /// Window size.
        k: u64,
        /// Step between windows.
        stride: u64,
        /// Implicit padding on both sides.
        pad: u64,
        /// Step between taps.
        dilation: u64,
    },
    /// Output `o` covers `floor(o·in/out) .. ceil((o+1)·in/out)`.
    Adaptive,
}

/// One spatial axis: input size, output size and window placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Axis {
    /// Input size.
    pub input: u64,
    /// Output size.
    pub output: u64,
    /// Window placement.
    pub window: Window,
}

/// The memory layout of input and output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolLayout {
    /// `[planes, H, W]` (planes = N·C).
    Nchw,
    /// `[N, H, W, C]` with `channels = C`.
    Nhwc {
        /// Channels (innermost).
        channels: u64,
    },
}

/// A pooling kernel (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolKernel {
    /// Max or average.
    pub op: PoolOp,
    /// Memory layout.
    pub layout: PoolLayout,
    /// The H axis.
    pub h: Axis,
    /// The W axis.
    pub w: Axis,
}

/// Per-output window of one axis, as IR values: first input index, taps
/// read, tap step, and the padded window size (the `count_include_pad`
/// divisor factor).
pub(crate) struct Span {
    pub(crate) first: Value,
    pub(crate) count: Value,
    pub(crate) step: i64,
    pub(crate) padded: Value,
}

impl Axis {
    /// The window of output `o` (also used by the pooling gradients).
    pub(crate) fn span(&self, b: &mut FunctionBuilder, o: Value) -> Span {
        let i64t = types::I64;
        let input = self.input as i64;
        match self.window {
            Window::Strided {
                k,
                stride,
                pad,
                dilation,
            } => {
                let (k, stride, pad, d) = (k as i64, stride as i64, pad as i64, dilation as i64);
                let os = b.ins().imul_imm_s(o, stride);
                let s = b.ins().iadd_imm_s(os, -pad);
                let zero = b.ins().iconst(i64t, 0);
                // lo = ceil(max(-s, 0) / d): the first tap inside the input.
                let neg = b.ins().ineg(s);
                let neg = smax(b, neg, zero);
                let num = b.ins().iadd_imm_s(neg, d - 1);
                let lo = b.ins().sdiv_imm_s(num, d);
                // hi = min(k, ceil((in - s) / d)): one past the last tap inside.
                let top = b.ins().iconst(i64t, input + d - 1);
                let room = b.ins().isub(top, s);
                let room = b.ins().sdiv_imm_s(room, d);
                let kk = b.ins().iconst(i64t, k);
                let hi = smin(b, kk, room);
                let count = b.ins().isub(hi, lo);
                let count = smax(b, count, zero);
                let lod = b.ins().imul_imm_s(lo, d);
                let first = b.ins().iadd(s, lod);
                // The window clipped to the padded input: min(s + k, in + pad) - s.
                let sk = b.ins().iadd_imm_s(s, k);
                let cap = b.ins().iconst(i64t, input + pad);
                let e = smin(b, sk, cap);
                let padded = b.ins().isub(e, s);
                Span {
                    first,
                    count,
                    step: d,
                    padded,
                }
            }
            Window::Adaptive => {
                let out = self.output as i64;
                let oi = b.ins().imul_imm_s(o, input);
                let first = b.ins().sdiv_imm_s(oi, out);
                let next = b.ins().iadd_imm_s(oi, input + out - 1);
                let end = b.ins().sdiv_imm_s(next, out);
                let count = b.ins().isub(end, first);
                Span {
                    first,
                    count,
                    step: 1,
                    padded: count,
                }
            }
        }
    }
}

/// A shuffle immediate of two f32x4 vectors (as i8x16): lane `j` of the
/// result is lane `pick[j].1` of the second operand if `pick[j].0`, of
/// the first otherwise.
pub(crate) fn f32_lanes(b: &mut FunctionBuilder, pick: [(bool, u8); 4]) -> Immediate {
    let bytes: Vec<u8> = pick
        .iter()
        .flat_map(|&(second, lane)| (0..4u8).map(move |byte| 16 * second as u8 + 4 * lane + byte))
        .collect();
    b.func.dfg.immediates.push(ConstantData::from(bytes))
}

/// The lane order of vectors bitcast between f32x4 and i8x16.
pub(crate) fn lanes() -> MemFlagsData {
    MemFlagsData::new().with_endianness(Endianness::Little)
}

/// Loads the eight f32 at element `e` of `src` as two f32x4 of its even
/// and its odd elements (the first and second taps of four pair windows).
pub(crate) fn load_pairs(
    b: &mut FunctionBuilder,
    ptr: Type,
    src: Value,
    e: Value,
) -> (Value, Value) {
    let evens = f32_lanes(b, [(false, 0), (false, 2), (true, 0), (true, 2)]);
    let odds = f32_lanes(b, [(false, 1), (false, 3), (true, 1), (true, 3)]);
    let a = elem(b, src, e, ptr);
    let lo = b.ins().load(types::I8X16, flags(), a, 0);
    let hi = b.ins().load(types::I8X16, flags(), a, 16);
    let ev = b.ins().shuffle(lo, hi, evens);
    let od = b.ins().shuffle(lo, hi, odds);
    (
        b.ins().bitcast(types::F32X4, lanes(), ev),
        b.ins().bitcast(types::F32X4, lanes(), od),
    )
}

impl PoolKernel {
    /// Output rows: `planes·OH` (NCHW) or `N·OH` (NHWC) for `outer` planes
    /// or images.
    pub fn units(&self, outer: usize) -> usize {
        outer * self.h.output as usize
    }

    /// Input elements per plane (NCHW) or image (NHWC).
    pub fn in_block(&self) -> usize {
        (self.h.input * self.w.input * self.channels()) as usize
    }

    /// Output elements per output row.
    pub fn row_len(&self) -> usize {
        (self.w.output * self.channels()) as usize
    }

    fn channels(&self) -> u64 {
        match self.layout {
            PoolLayout::Nchw => 1,
            PoolLayout::Nhwc { channels } => channels,
        }
    }

    /// Checks sizes: every size >= 1, strided windows with `k, stride,
    /// dilation >= 1` and padding at most half the window, average pools
    /// without dilation.
    pub fn validate(&self) -> Result<(), BackError> {
        let bad = |m: &str| Err(BackError(format!("pool kernel `{}`: {m}", self.key())));
        for a in [self.h, self.w] {
            if a.input == 0 || a.output == 0 || a.input > (1 << 30) || a.output > (1 << 30) {
                return bad("sizes must be in 1..=2^30");
            }
            if let Window::Strided {
                k,
                stride,
                pad,
                dilation,
            } = a.window
            {
                if k == 0 || stride == 0 || dilation == 0 || 2 * pad > k {
                    return bad("windows need k, stride, dilation >= 1 and pad <= k / 2");
                }
                if dilation != 1 && self.op != PoolOp::Max {
                    return bad("average pooling has no dilation");
                }
            }
        }
        if self.channels() == 0 || self.in_block() as u64 > (1 << 40) {
            return bad("channels must be >= 1 and a plane below 2^40 elements");
        }
        Ok(())
    }

    /// Outputs at the start of each NCHW output row that [`Self::pairs`]
    /// computes: a multiple of 4 when W's windows are unpadded, undilated
    /// pairs at stride 2 (`k = 2, stride = 2`) and fully inside the row;
    /// 0 otherwise (every output then takes the general path).
    pub(crate) fn paired_outputs(&self) -> u64 {
        let pair = Window::Strided {
            k: 2,
            stride: 2,
            pad: 0,
            dilation: 1,
        };
        if self.layout != PoolLayout::Nchw || self.w.window != pair {
            return 0;
        }
        self.w.output.min(self.w.input / 2) & !3
    }

    /// The first `count` outputs of an NCHW output row whose W windows
    /// are pairs (see [`Self::paired_outputs`]), four at a time: for each
    /// input row of the H window, eight consecutive inputs are loaded as
    /// two f32x4, split into even and odd lanes by shuffles, and combined
    /// lane by lane.
    #[allow(clippy::too_many_arguments)]
    fn pairs(
        &self,
        b: &mut FunctionBuilder,
        ptr: Type,
        src: Value,
        out: Value,
        base: Value,
        orow: Value,
        hs: &Span,
        count: u64,
    ) {
        let i64t = types::I64;
        let (win, hstep) = (self.w.input as i64, hs.step);
        let is_max = self.op == PoolOp::Max;
        let init = b
            .ins()
            .f32const(if is_max { f32::NEG_INFINITY } else { 0.0 });
        let init = b.ins().splat(types::F32X4, init);
        let zero = b.ins().iconst(i64t, 0);
        let end = b.ins().iconst(i64t, count as i64);
        counted(b, zero, end, 4, &[], &[], |b, ow, _| {
            let col = b.ins().imul_imm_s(ow, 2);
            let acc = counted(
                b,
                zero,
                hs.count,
                1,
                &[init],
                &[types::F32X4],
                |b, i, acc| {
                    let ih = b.ins().imul_imm_s(i, hstep);
                    let ih = b.ins().iadd(ih, hs.first);
                    let e = b.ins().imul_imm_s(ih, win);
                    let e = b.ins().iadd(e, base);
                    let e = b.ins().iadd(e, col);
                    let (ev, od) = load_pairs(b, ptr, src, e);
                    vec![if is_max {
                        let m = b.ins().fmax(ev, od);
                        b.ins().fmax(acc[0], m)
                    } else {
                        let m = b.ins().fadd(ev, od);
                        b.ins().fadd(acc[0], m)
                    }]
                },
            )[0];
            let v = match self.op {
                PoolOp::Max => acc,
                PoolOp::Avg { include_pad } => {
                    // Every W window here is two taps inside the input.
                    let rows = if include_pad { hs.padded } else { hs.count };
                    let n = b.ins().imul_imm_s(rows, 2);
                    let n = b.ins().fcvt_from_sint(types::F32, n);
                    let n = b.ins().splat(types::F32X4, n);
                    b.ins().fdiv(acc, n)
                }
            };
            let oe = b.ins().iadd(orow, ow);
            let a = elem(b, out, oe, ptr);
            b.ins().store(flags(), v, a, 0);
            vec![]
        });
    }

    /// Compiles this kernel, or finds it in the cache.
    pub fn compile(&self, jit: &mut Jit) -> Result<KernelId, BackError> {
        self.validate()?;
        jit.kernel(self)
    }

    /// Folds the window `(hs, ws)` at input element offset `base` (the
    /// first channel of the row's image or the plane) and channel offset
    /// `c` into `width` accumulators of type `ty` (consecutive channel
    /// groups, one register each, so the window loop runs once for all of
    /// them), returning the pooled values.
    #[allow(clippy::too_many_arguments)]
    fn window(
        &self,
        b: &mut FunctionBuilder,
        ptr: Type,
        src: Value,
        base: Value,
        c: Value,
        hs: &Span,
        ws: &Span,
        ty: Type,
        width: usize,
    ) -> Vec<Value> {
        let i64t = types::I64;
        let (init, is_max) = match self.op {
            PoolOp::Max => (f32::NEG_INFINITY, true),
            PoolOp::Avg { .. } => (0.0, false),
        };
        let s = b.ins().f32const(init);
        let acc0 = if ty.is_vector() {
            b.ins().splat(ty, s)
        } else {
            s
        };
        let (win, ch) = (self.w.input as i64, self.channels() as i64);
        let zero = b.ins().iconst(i64t, 0);
        let (wstep, hstep) = (ws.step, hs.step);
        let (wfirst, wcount) = (ws.first, ws.count);
        let inits = vec![acc0; width];
        let tys = vec![ty; width];
        let group = ty.bytes() as i32;
        let accs = counted(b, zero, hs.count, 1, &inits, &tys, |b, i, acc| {
            let ih = b.ins().imul_imm_s(i, hstep);
            let ih = b.ins().iadd(ih, hs.first);
            let rowoff = b.ins().imul_imm_s(ih, win);
            counted(b, zero, wcount, 1, acc, &tys, |b, j, acc| {
                let iw = b.ins().imul_imm_s(j, wstep);
                let iw = b.ins().iadd(iw, wfirst);
                let pix = b.ins().iadd(rowoff, iw);
                let e = b.ins().imul_imm_s(pix, ch);
                let e = b.ins().iadd(e, base);
                let e = b.ins().iadd(e, c);
                let a = elem(b, src, e, ptr);
                let loads: Vec<Value> = (0..width as i32)
                    .map(|g| b.ins().load(ty, flags(), a, g * group))
                    .collect();
                acc.iter()
                    .zip(loads)
                    .map(|(&acc, x)| {
                        if is_max {
                            b.ins().fmax(acc, x)
                        } else {
                            b.ins().fadd(acc, x)
                        }
                    })
                    .collect()
            })
        });
        match self.op {
            PoolOp::Max => accs,
            PoolOp::Avg { include_pad } => {
                // Adaptive spans have `padded == count`.
                let n = if include_pad {
                    b.ins().imul(hs.padded, ws.padded)
                } else {
                    b.ins().imul(hs.count, ws.count)
                };
                let n = b.ins().fcvt_from_sint(types::F32, n);
                let n = if ty.is_vector() {
                    b.ins().splat(ty, n)
                } else {
                    n
                };
                accs.into_iter().map(|acc| b.ins().fdiv(acc, n)).collect()
            }
        }
    }
}

impl KernelSource for PoolKernel {
    fn key(&self) -> String {
        format!("pool.f32({:?})", self)
    }

    fn build(&self, b: &mut FunctionBuilder, entry: Block, ptr: Type) -> Result<(), BackError> {
        self.validate()?;
        let p = b.block_params(entry).to_vec();
        let (start, end, ins, out) = (p[0], p[1], p[2], p[3]);
        let src = b.ins().load(ptr, flags(), ins, 0);
        let i64t = types::I64;
        let oh_n = self.h.output as i64;
        let block = self.in_block() as i64;
        let row_len = self.row_len() as i64;
        let ch = self.channels() as i64;
        counted(b, start, end, 1, &[], &[], |b, u, _| {
            let outer = b.ins().udiv_imm_u(u, oh_n);
            let oh = b.ins().urem_imm_u(u, oh_n);
            let base = b.ins().imul_imm_s(outer, block);
            let orow = b.ins().imul_imm_s(u, row_len);
            let hs = self.h.span(b, oh);
            let paired = self.paired_outputs();
            if paired > 0 {
                self.pairs(b, ptr, src, out, base, orow, &hs, paired);
            }
            let zero = b.ins().iconst(i64t, 0);
            let first = b.ins().iconst(i64t, paired as i64);
            let ow_n = b.ins().iconst(i64t, self.w.output as i64);
            counted(b, first, ow_n, 1, &[], &[], |b, ow, _| {
                let ws = self.w.span(b, ow);
                let obase = b.ins().imul_imm_s(ow, ch);
                let obase = b.ins().iadd(obase, orow);
                let wide_hi = b.ins().iconst(i64t, ch & !(WIDE as i64 * 4 - 1));
                let vec_hi = b.ins().iconst(i64t, ch & !3);
                let hi = b.ins().iconst(i64t, ch);
                // Only the loops this channel count needs: WIDE f32x4
                // groups per window pass, then single groups, then scalars.
                let loops = [
                    (ch >= 4 * WIDE as i64, zero, wide_hi, WIDE, types::F32X4),
                    (
                        ch % (4 * WIDE as i64) >= 4,
                        wide_hi,
                        vec_hi,
                        1,
                        types::F32X4,
                    ),
                    (ch % 4 != 0, vec_hi, hi, 1, types::F32),
                ];
                for (_, lo, hi, width, ty) in loops.into_iter().filter(|l| l.0) {
                    let step = (width * ty.lane_count() as usize) as i64;
                    counted(b, lo, hi, step, &[], &[], |b, c, _| {
                        let vs = self.window(b, ptr, src, base, c, &hs, &ws, ty, width);
                        let oe = b.ins().iadd(obase, c);
                        let a = elem(b, out, oe, ptr);
                        for (g, v) in vs.into_iter().enumerate() {
                            b.ins().store(flags(), v, a, g as i32 * ty.bytes() as i32);
                        }
                        vec![]
                    });
                }
                vec![]
            });
            vec![]
        });
        b.ins().return_(&[]);
        Ok(())
    }
}
