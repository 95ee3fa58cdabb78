//! Packing kernels for convolutions as GEMMs (im2col), generated as
//! Cranelift IR with the kernel ABI (see [`super::jit`]).
//!
//! A convolution's input is unfolded, one image at a time, into the panel
//! the GEMM multiplies by the weights:
//!
//! - [`Layout::Nchw`]: `col[(c, kh, kw)][(oh, ow)]` — one panel row per
//!   input channel and kernel tap (all groups; group `g`'s rows are
//!   contiguous), `OH·OW` columns. A work unit is one panel row.
//! - [`Layout::Nhwc`]: `col[(oh, ow)][(g, kh, kw, cg)]` — one panel row per
//!   output pixel, `KH·KW·C` columns, each group's columns contiguous. A
//!   work unit is one panel row.
//!
//! Work units are global over the batch (unit `i·units_per_image + r` is
//! row `r` of image `i`'s panel); the kernel reads image `i` of input 0 and
//! writes row `r` relative to `out`, the panel of the image (the runtime's
//! `Pack` convention). Positions in the zero padding are written as 0.
//! Contiguous runs (NCHW rows at stride 1, NHWC channel runs) are copied
//! with f32x4 loads and stores plus a scalar tail.

mod col2im;

pub use col2im::Col2im;

use super::jit::KernelSource;
use super::BackError;
use cranelift_codegen::ir::{
    condcodes::IntCC, types, Block, BlockArg, InstBuilder, MemFlagsData, Type, Value,
};
use cranelift_frontend::FunctionBuilder;
use netc_runtime::gemm::conv::ConvGeom;

/// The activation layout a packing kernel reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// `[N, C, H, W]`.
    Nchw,
    /// `[N, H, W, C]`.
    Nhwc,
}

/// One packing kernel: the sizes and window of a 2-D convolution (a 1-D
/// convolution is `h = kh = 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Im2col {
    /// The layout of the input.
    pub layout: Layout,
    /// Input channels (all groups).
    pub c: usize,
    /// Groups (only changes the NHWC column order).
    pub groups: usize,
    /// Input height and width.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Kernel height and width.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Strides (height, width).
    pub stride: [usize; 2],
    /// Zero padding on each side (height, width).
    pub pad: [usize; 2],
    /// Dilation (height, width).
    pub dilation: [usize; 2],
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
    /// Whether the taps are read in reverse (NCHW only): panel row
    /// `(c, i, j)` holds tap `(KH−1−i, KW−1−j)` — the packing of a
    /// stride-1 convolution's input gradient as a convolution of `dy`
    /// with the flipped kernel.
    pub flip: bool,
}

impl Im2col {
    /// The same window as the runtime's implicit-GEMM geometry over `n`
    /// images (one group's A: `c / groups` channels).
    pub fn conv_geom(&self, n: usize) -> ConvGeom {
        ConvGeom {
            n,
            h: self.h,
            w: self.w,
            c: self.c,
            cg: self.c / self.groups.max(1),
            kh: self.kh,
            kw: self.kw,
            stride: self.stride,
            pad: self.pad,
            dilation: self.dilation,
            oh: self.oh,
            ow: self.ow,
        }
    }

    /// Work units per image (panel rows).
    pub fn units(&self) -> usize {
        match self.layout {
            Layout::Nchw => self.c * self.kh * self.kw,
            Layout::Nhwc => self.oh * self.ow,
        }
    }

    /// Panel elements per image.
    pub fn panel_len(&self) -> usize {
        self.c * self.kh * self.kw * self.oh * self.ow
    }

    /// Elements of input 0 that images `[0, images)` span.
    pub fn input_len(&self, images: usize) -> usize {
        images * self.c * self.h * self.w
    }
}

fn flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

fn args(vals: &[Value]) -> Vec<BlockArg> {
    vals.iter().map(|&v| BlockArg::Value(v)).collect()
}

/// `for i in lo..hi { body(i) }` as a header-tested loop; continues in the
/// exit block.
fn for_range(
    b: &mut FunctionBuilder,
    lo: Value,
    hi: Value,
    step: i64,
    body: impl FnOnce(&mut FunctionBuilder, Value),
) {
    let (head, blk, exit) = (b.create_block(), b.create_block(), b.create_block());
    b.append_block_param(head, types::I64);
    b.ins().jump(head, &args(&[lo]));
    b.switch_to_block(head);
    let i = b.block_params(head)[0];
    let more = b.ins().icmp(IntCC::SignedLessThan, i, hi);
    b.ins().brif(more, blk, &[], exit, &[]);
    b.switch_to_block(blk);
    body(b, i);
    let next = b.ins().iadd_imm_s(i, step);
    b.ins().jump(head, &args(&[next]));
    b.switch_to_block(exit);
}

/// `dst[0..n] = src[0..n]` (`src = None`: zeros), byte addresses, `n` in
/// elements: f32x4 then a scalar tail.
fn run(b: &mut FunctionBuilder, dst: Value, src: Option<Value>, n: Value) {
    let zero = b.ins().iconst(types::I64, 0);
    let whole = b.ins().band_imm_s(n, !3);
    let (zs, zv) = match src {
        Some(_) => (None, None),
        None => {
            let s = b.ins().f32const(0.0);
            (Some(s), Some(b.ins().splat(types::F32X4, s)))
        }
    };
    for (lo, hi, step, ty, z) in [
        (zero, whole, 4, types::F32X4, zv),
        (whole, n, 1, types::F32, zs),
    ] {
        // The scalar loop starts where the vector loop stopped.
        for_range(b, lo, hi, step, |b, i| {
            let off = b.ins().ishl_imm_u(i, 2);
            let v = match (src, z) {
                (Some(s), _) => {
                    let a = b.ins().iadd(s, off);
                    b.ins().load(ty, flags(), a, 0)
                }
                (None, Some(z)) => z,
                (None, None) => unreachable!("zeros are made above"),
            };
            let a = b.ins().iadd(dst, off);
            b.ins().store(flags(), v, a, 0);
        });
    }
}

/// The valid output range `[lo, hi)` along one axis for kernel tap
/// `tap` (a value): positions `o` with `0 <= o·s + tap·d − p < size`,
/// clamped to `[0, out]` with `hi >= lo`.
#[allow(clippy::too_many_arguments)]
fn valid(
    b: &mut FunctionBuilder,
    tap: Value,
    size: usize,
    s: usize,
    p: usize,
    d: usize,
    out: usize,
) -> (Value, Value) {
    let i64t = types::I64;
    let zero = b.ins().iconst(i64t, 0);
    let td = b.ins().imul_imm_s(tap, d as i64);
    // lo = ceil(max(p − tap·d, 0) / s)
    let pv = b.ins().iconst(i64t, p as i64);
    let num = b.ins().isub(pv, td);
    let num = b.ins().smax(num, zero);
    let num = b.ins().iadd_imm_s(num, s as i64 - 1);
    let sv = b.ins().iconst(i64t, s as i64);
    let lo = b.ins().udiv(num, sv);
    let outv = b.ins().iconst(i64t, out as i64);
    let lo = b.ins().smin(lo, outv);
    // hi = floor(max(size − 1 + p − tap·d + s, 0) / s), clamped to [lo, out]
    let top = b.ins().iconst(i64t, (size + p + s) as i64 - 1);
    let num = b.ins().isub(top, td);
    let num = b.ins().smax(num, zero);
    let hi = b.ins().udiv(num, sv);
    let hi = b.ins().smin(hi, outv);
    let hi = b.ins().smax(hi, lo);
    (lo, hi)
}

impl KernelSource for Im2col {
    fn key(&self) -> String {
        format!(
            "im2col.f32.{:?}.c{}g{}.{}x{}.k{}x{}.s{:?}.p{:?}.d{:?}.o{}x{}{}",
            self.layout,
            self.c,
            self.groups,
            self.h,
            self.w,
            self.kh,
            self.kw,
            self.stride,
            self.pad,
            self.dilation,
            self.oh,
            self.ow,
            if self.flip { ".flip" } else { "" }
        )
    }

    fn build(&self, b: &mut FunctionBuilder, entry: Block, ptr: Type) -> Result<(), BackError> {
        if ptr != types::I64 {
            return Err(BackError(format!(
                "packing kernel `{}` needs 64-bit pointers",
                self.key()
            )));
        }
        let ok = self.c > 0
            && self.groups > 0
            && self.c.is_multiple_of(self.groups)
            && self.stride.iter().all(|&s| s > 0)
            && self.dilation.iter().all(|&d| d > 0)
            && !(self.flip && self.layout == Layout::Nhwc);
        if !ok {
            return Err(BackError(format!(
                "packing kernel `{}`: channels, groups, strides and dilations must be positive (and flipped taps are NCHW only)",
                self.key()
            )));
        }
        let p = b.block_params(entry).to_vec();
        let (start, end, ins, out) = (p[0], p[1], p[2], p[3]);
        let x = b.ins().load(ptr, flags(), ins, 0);
        for_range(b, start, end, 1, |b, u| match self.layout {
            Layout::Nchw => self.nchw_row(b, x, out, u),
            Layout::Nhwc => self.nhwc_row(b, x, out, u),
        });
        b.ins().return_(&[]);
        Ok(())
    }
}

impl Im2col {
    /// NCHW panel row `u % units` of image `u / units`.
    fn nchw_row(&self, b: &mut FunctionBuilder, x: Value, out: Value, u: Value) {
        let i64t = types::I64;
        let konst = |b: &mut FunctionBuilder, v: usize| b.ins().iconst(i64t, v as i64);
        let units = konst(b, self.units());
        let img = b.ins().udiv(u, units);
        let r = b.ins().urem(u, units);
        let taps = konst(b, self.kh * self.kw);
        let c = b.ins().udiv(r, taps);
        let t = b.ins().urem(r, taps);
        let kwv = konst(b, self.kw);
        let kh = b.ins().udiv(t, kwv);
        let kw = b.ins().urem(t, kwv);
        let (kh, kw) = if self.flip {
            let (top, right) = (konst(b, self.kh - 1), konst(b, self.kw - 1));
            (b.ins().isub(top, kh), b.ins().isub(right, kw))
        } else {
            (kh, kw)
        };
        // src = x + (img·C + c)·H·W floats; dst = out + r·OH·OW floats.
        let plane = b.ins().imul_imm_s(img, self.c as i64);
        let plane = b.ins().iadd(plane, c);
        let soff = b.ins().imul_imm_s(plane, (self.h * self.w * 4) as i64);
        let src = b.ins().iadd(x, soff);
        let doff = b.ins().imul_imm_s(r, (self.oh * self.ow * 4) as i64);
        let dst = b.ins().iadd(out, doff);
        let (ohlo, ohhi) = valid(
            b,
            kh,
            self.h,
            self.stride[0],
            self.pad[0],
            self.dilation[0],
            self.oh,
        );
        let (owlo, owhi) = valid(
            b,
            kw,
            self.w,
            self.stride[1],
            self.pad[1],
            self.dilation[1],
            self.ow,
        );
        // Rows above the image.
        let n = b.ins().imul_imm_s(ohlo, self.ow as i64);
        run(b, dst, None, n);
        // Rows inside: zeros left, the image row, zeros right.
        let ow_total = konst(b, self.ow);
        let right = b.ins().isub(ow_total, owhi);
        let mid = b.ins().isub(owhi, owlo);
        // Source column of output column `owlo`: owlo·sw + kw·dw − pw.
        let c0 = b.ins().imul_imm_s(owlo, self.stride[1] as i64);
        let kwd = b.ins().imul_imm_s(kw, self.dilation[1] as i64);
        let c0 = b.ins().iadd(c0, kwd);
        let c0 = b.ins().iadd_imm_s(c0, -(self.pad[1] as i64));
        let khd = b.ins().imul_imm_s(kh, self.dilation[0] as i64);
        for_range(b, ohlo, ohhi, 1, |b, oh| {
            let drow = b.ins().imul_imm_s(oh, (self.ow * 4) as i64);
            let drow = b.ins().iadd(dst, drow);
            run(b, drow, None, owlo);
            // ih = oh·sh + kh·dh − ph (inside the image by construction).
            let ih = b.ins().imul_imm_s(oh, self.stride[0] as i64);
            let ih = b.ins().iadd(ih, khd);
            let ih = b.ins().iadd_imm_s(ih, -(self.pad[0] as i64));
            let sel = b.ins().imul_imm_s(ih, self.w as i64);
            let sel = b.ins().iadd(sel, c0);
            let sb = b.ins().ishl_imm_u(sel, 2);
            let s0 = b.ins().iadd(src, sb);
            let lo_b = b.ins().ishl_imm_u(owlo, 2);
            let d0 = b.ins().iadd(drow, lo_b);
            if self.stride[1] == 1 {
                run(b, d0, Some(s0), mid);
            } else {
                let zero = b.ins().iconst(i64t, 0);
                for_range(b, zero, mid, 1, |b, j| {
                    let so = b.ins().imul_imm_s(j, (self.stride[1] * 4) as i64);
                    let sa = b.ins().iadd(s0, so);
                    let v = b.ins().load(types::F32, flags(), sa, 0);
                    let dof = b.ins().ishl_imm_u(j, 2);
                    let da = b.ins().iadd(d0, dof);
                    b.ins().store(flags(), v, da, 0);
                });
            }
            let hi_b = b.ins().ishl_imm_u(owhi, 2);
            let d1 = b.ins().iadd(drow, hi_b);
            run(b, d1, None, right);
        });
        // Rows below the image.
        let below = b.ins().imul_imm_s(ohhi, (self.ow * 4) as i64);
        let d2 = b.ins().iadd(dst, below);
        let oh_total = konst(b, self.oh);
        let rows = b.ins().isub(oh_total, ohhi);
        let n = b.ins().imul_imm_s(rows, self.ow as i64);
        run(b, d2, None, n);
    }

    /// NHWC panel row (output pixel) `u % units` of image `u / units`.
    fn nhwc_row(&self, b: &mut FunctionBuilder, x: Value, out: Value, u: Value) {
        let i64t = types::I64;
        let konst = |b: &mut FunctionBuilder, v: usize| b.ins().iconst(i64t, v as i64);
        let cg = self.c / self.groups;
        let units = konst(b, self.units());
        let img = b.ins().udiv(u, units);
        let pix = b.ins().urem(u, units);
        let owv = konst(b, self.ow);
        let oh = b.ins().udiv(pix, owv);
        let ow = b.ins().urem(pix, owv);
        let soff = b
            .ins()
            .imul_imm_s(img, (self.h * self.w * self.c * 4) as i64);
        let src = b.ins().iadd(x, soff);
        let row = self.kh * self.kw * self.c;
        let doff = b.ins().imul_imm_s(pix, (row * 4) as i64);
        let dst = b.ins().iadd(out, doff);
        // Top-left input position of the window.
        let ih0 = b.ins().imul_imm_s(oh, self.stride[0] as i64);
        let ih0 = b.ins().iadd_imm_s(ih0, -(self.pad[0] as i64));
        let iw0 = b.ins().imul_imm_s(ow, self.stride[1] as i64);
        let iw0 = b.ins().iadd_imm_s(iw0, -(self.pad[1] as i64));
        let zero = konst(b, 0);
        let (groups, kh, kw) = (konst(b, self.groups), konst(b, self.kh), konst(b, self.kw));
        let cgv = konst(b, cg);
        for_range(b, zero, groups, 1, |b, g| {
            for_range(b, zero, kh, 1, |b, i| {
                for_range(b, zero, kw, 1, |b, j| {
                    // Column (g, i, j, 0) of the row.
                    let col = b.ins().imul_imm_s(g, self.kh as i64);
                    let col = b.ins().iadd(col, i);
                    let col = b.ins().imul_imm_s(col, self.kw as i64);
                    let col = b.ins().iadd(col, j);
                    let col = b.ins().imul_imm_s(col, (cg * 4) as i64);
                    let d = b.ins().iadd(dst, col);
                    let ih = b.ins().imul_imm_s(i, self.dilation[0] as i64);
                    let ih = b.ins().iadd(ih0, ih);
                    let iw = b.ins().imul_imm_s(j, self.dilation[1] as i64);
                    let iw = b.ins().iadd(iw0, iw);
                    // Inside iff 0 <= ih < H and 0 <= iw < W (unsigned compare).
                    let in_h = b
                        .ins()
                        .icmp_imm_u(IntCC::UnsignedLessThan, ih, self.h as i64);
                    let in_w = b
                        .ins()
                        .icmp_imm_u(IntCC::UnsignedLessThan, iw, self.w as i64);
                    let inside = b.ins().band(in_h, in_w);
                    let (copy, zeros, join) =
                        (b.create_block(), b.create_block(), b.create_block());
                    b.ins().brif(inside, copy, &[], zeros, &[]);
                    b.switch_to_block(copy);
                    let pos = b.ins().imul_imm_s(ih, self.w as i64);
                    let pos = b.ins().iadd(pos, iw);
                    let pos = b.ins().imul_imm_s(pos, self.c as i64);
                    let gc = b.ins().imul_imm_s(g, cg as i64);
                    let pos = b.ins().iadd(pos, gc);
                    let pb = b.ins().ishl_imm_u(pos, 2);
                    let s = b.ins().iadd(src, pb);
                    run(b, d, Some(s), cgv);
                    b.ins().jump(join, &[]);
                    b.switch_to_block(zeros);
                    run(b, d, None, cgv);
                    b.ins().jump(join, &[]);
                    b.switch_to_block(join);
                });
            });
        });
    }
}

#[cfg(test)]
mod tests;
