//! The unpacking kernel of a convolution's input gradient (col2im), the
//! adjoint of the NCHW [`super::Im2col`] packing: the GEMM `Wᵀ·dy` gives,
//! per image, a panel `col[(c, kh, kw)][(oh, ow)]` (the same row order as
//! im2col's), and every panel element is added to the input position its
//! window tap reads — `dx[c][oh·s + kh·d − p][ow·s + kw·d − p]`; taps in
//! the zero padding are dropped.
//!
//! A work unit is one input channel plane of one image (unit
//! `i·C + c`): it zeroes the plane, then adds the `KH·KW` panel rows of
//! channel `c` into it, so different units write disjoint planes. The
//! kernel reads the image's panel through input 0 (relative to the item,
//! the runtime's `Unpack` convention) and writes the output at absolute
//! positions. Runs along the width at stride 1 are added with f32x4 loads
//! and stores plus a scalar tail.

use super::{flags, for_range, run, valid};
use crate::back::jit::KernelSource;
use crate::back::BackError;
use cranelift_codegen::ir::{types, Block, InstBuilder, Type, Value};
use cranelift_frontend::FunctionBuilder;

/// One col2im kernel: the sizes and window of a 2-D NCHW convolution (a
/// 1-D convolution is `h = kh = 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Col2im {
    /// Input channels (all groups).
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Kernel height.
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
}

impl Col2im {
    /// Work units per image (input channel planes).
    pub fn units(&self) -> usize {
        self.c
    }

    /// Panel elements per image.
    pub fn panel_len(&self) -> usize {
        self.c * self.kh * self.kw * self.oh * self.ow
    }
}

/// `dst[0..n] += src[0..n]` (byte addresses, `n` in elements): f32x4 then
/// a scalar tail.
fn add_run(b: &mut FunctionBuilder, dst: Value, src: Value, n: Value) {
    let zero = b.ins().iconst(types::I64, 0);
    let whole = b.ins().band_imm_s(n, !3);
    for (lo, hi, step, ty) in [(zero, whole, 4, types::F32X4), (whole, n, 1, types::F32)] {
        for_range(b, lo, hi, step, |b, i| {
            let off = b.ins().ishl_imm_u(i, 2);
            let s = b.ins().iadd(src, off);
            let d = b.ins().iadd(dst, off);
            let x = b.ins().load(ty, flags(), s, 0);
            let y = b.ins().load(ty, flags(), d, 0);
            let sum = b.ins().fadd(x, y);
            b.ins().store(flags(), sum, d, 0);
        });
    }
}

impl KernelSource for Col2im {
    fn key(&self) -> String {
        format!(
            "col2im.f32.c{}.{}x{}.k{}x{}.s{:?}.p{:?}.d{:?}.o{}x{}",
            self.c,
            self.h,
            self.w,
            self.kh,
            self.kw,
            self.stride,
            self.pad,
            self.dilation,
            self.oh,
            self.ow
        )
    }

    fn build(&self, b: &mut FunctionBuilder, entry: Block, ptr: Type) -> Result<(), BackError> {
        if ptr != types::I64 {
            return Err(BackError(format!(
                "unpacking kernel `{}` needs 64-bit pointers",
                self.key()
            )));
        }
        if self.c == 0
            || self.stride.contains(&0)
            || self.dilation.contains(&0)
            || self.kh == 0
            || self.kw == 0
        {
            return Err(BackError(format!(
                "unpacking kernel `{}`: channels, kernel sizes, strides and dilations must be positive",
                self.key()
            )));
        }
        let p = b.block_params(entry).to_vec();
        let (start, end, ins, out) = (p[0], p[1], p[2], p[3]);
        let panel = b.ins().load(ptr, flags(), ins, 0);
        for_range(b, start, end, 1, |b, u| self.plane(b, panel, out, u));
        b.ins().return_(&[]);
        Ok(())
    }
}

impl Col2im {
    /// Input plane `u % C` of image `u / C`: zeroed, then every tap's
    /// panel row added in.
    fn plane(&self, b: &mut FunctionBuilder, panel: Value, out: Value, u: Value) {
        let i64t = types::I64;
        let konst = |b: &mut FunctionBuilder, v: usize| b.ins().iconst(i64t, v as i64);
        let cv = konst(b, self.c);
        let ch = b.ins().urem(u, cv);
        let doff = b.ins().imul_imm_s(u, (self.h * self.w * 4) as i64);
        let dst = b.ins().iadd(out, doff);
        let hw = konst(b, self.h * self.w);
        run(b, dst, None, hw);
        let taps = self.kh * self.kw;
        let (zero, khv, kwv) = (konst(b, 0), konst(b, self.kh), konst(b, self.kw));
        for_range(b, zero, khv, 1, |b, i| {
            for_range(b, zero, kwv, 1, |b, j| {
                // Panel row (ch, i, j).
                let r = b.ins().imul_imm_s(ch, taps as i64);
                let t = b.ins().imul_imm_s(i, self.kw as i64);
                let r = b.ins().iadd(r, t);
                let r = b.ins().iadd(r, j);
                let soff = b.ins().imul_imm_s(r, (self.oh * self.ow * 4) as i64);
                let src = b.ins().iadd(panel, soff);
                self.tap(b, src, dst, i, j);
            });
        });
    }

    /// Adds one tap's panel row `src` (`OH·OW`) into the plane `dst`.
    fn tap(&self, b: &mut FunctionBuilder, src: Value, dst: Value, i: Value, j: Value) {
        let i64t = types::I64;
        let (ohlo, ohhi) = valid(
            b,
            i,
            self.h,
            self.stride[0],
            self.pad[0],
            self.dilation[0],
            self.oh,
        );
        let (owlo, owhi) = valid(
            b,
            j,
            self.w,
            self.stride[1],
            self.pad[1],
            self.dilation[1],
            self.ow,
        );
        let mid = b.ins().isub(owhi, owlo);
        // Input column of output column `owlo`: owlo·sw + j·dw − pw.
        let c0 = b.ins().imul_imm_s(owlo, self.stride[1] as i64);
        let jd = b.ins().imul_imm_s(j, self.dilation[1] as i64);
        let c0 = b.ins().iadd(c0, jd);
        let c0 = b.ins().iadd_imm_s(c0, -(self.pad[1] as i64));
        let id = b.ins().imul_imm_s(i, self.dilation[0] as i64);
        for_range(b, ohlo, ohhi, 1, |b, oh| {
            // ih = oh·sh + i·dh − ph (inside the plane by construction).
            let ih = b.ins().imul_imm_s(oh, self.stride[0] as i64);
            let ih = b.ins().iadd(ih, id);
            let ih = b.ins().iadd_imm_s(ih, -(self.pad[0] as i64));
            let at = b.ins().imul_imm_s(ih, self.w as i64);
            let at = b.ins().iadd(at, c0);
            let at = b.ins().ishl_imm_u(at, 2);
            let d0 = b.ins().iadd(dst, at);
            let from = b.ins().imul_imm_s(oh, self.ow as i64);
            let from = b.ins().iadd(from, owlo);
            let from = b.ins().ishl_imm_u(from, 2);
            let s0 = b.ins().iadd(src, from);
            if self.stride[1] == 1 {
                add_run(b, d0, s0, mid);
            } else {
                let zero = b.ins().iconst(i64t, 0);
                for_range(b, zero, mid, 1, |b, k| {
                    let so = b.ins().ishl_imm_u(k, 2);
                    let sa = b.ins().iadd(s0, so);
                    let x = b.ins().load(types::F32, flags(), sa, 0);
                    let dof = b.ins().imul_imm_s(k, (self.stride[1] * 4) as i64);
                    let da = b.ins().iadd(d0, dof);
                    let y = b.ins().load(types::F32, flags(), da, 0);
                    let sum = b.ins().fadd(x, y);
                    b.ins().store(flags(), sum, da, 0);
                });
            }
        });
    }
}
