//! The `quantize_u8` kernel: `q = round((clamp(x, lo, hi) − lo) · (255 /
//! (hi − lo)))`, rounded half to even (`nearest`) or truncated, as
//! torchvggish's `torch.round` and the TF original's `astype(uint8)`.
//!
//! The scale `255 / (hi − lo)` is computed in f64 and rounded to f32 once
//! (63.75 exactly for the usual `[-2, 2]`), as the reference code
//! multiplies by the precomputed factor. Results are the integers 0..=255
//! held as f32 (the arena is f32); the host API hands them out as `u8`.
//!
//! Kernel ABI ([`super::jit::KernelSource`]): work units are elements; an
//! f32x4 loop and a scalar tail.

use super::jit::{Jit, KernelId, KernelSource};
use super::loops::{counted, elem, flags};
use super::BackError;
use cranelift_codegen::ir::{types, Block, InstBuilder, Type};
use cranelift_frontend::FunctionBuilder;

/// A `quantize_u8` kernel (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantizeKernel {
    /// The value mapped to 0.
    pub lo: f32,
    /// The value mapped to 255.
    pub hi: f32,
    /// Truncate instead of rounding half to even.
    pub truncate: bool,
}

impl QuantizeKernel {
    /// Checks `lo < hi`, both finite.
    pub fn validate(&self) -> Result<(), BackError> {
        if !(self.lo < self.hi && self.lo.is_finite() && self.hi.is_finite()) {
            return Err(BackError(format!(
                "quantize kernel `{}`: needs finite min < max",
                self.key()
            )));
        }
        Ok(())
    }

    /// Compiles this kernel, or finds it in the cache.
    pub fn compile(&self, jit: &mut Jit) -> Result<KernelId, BackError> {
        self.validate()?;
        jit.kernel(self)
    }

    fn scale(&self) -> f32 {
        (255.0 / (f64::from(self.hi) - f64::from(self.lo))) as f32
    }
}

impl KernelSource for QuantizeKernel {
    fn key(&self) -> String {
        format!(
            "quantize_u8.f32({:08x},{:08x},{})",
            self.lo.to_bits(),
            self.hi.to_bits(),
            if self.truncate { "truncate" } else { "round" }
        )
    }

    fn build(&self, b: &mut FunctionBuilder, entry: Block, ptr: Type) -> Result<(), BackError> {
        self.validate()?;
        let p = b.block_params(entry).to_vec();
        let (start, end, ins, out) = (p[0], p[1], p[2], p[3]);
        let src = b.ins().load(ptr, flags(), ins, 0);
        let len = b.ins().isub(end, start);
        let whole = b.ins().band_imm_s(len, !3);
        let vec_hi = b.ins().iadd(start, whole);
        for (lo, hi, step, ty) in [
            (start, vec_hi, 4, types::F32X4),
            (vec_hi, end, 1, types::F32),
        ] {
            let consts: Vec<_> = [self.lo, self.hi, self.scale()]
                .iter()
                .map(|&c| {
                    let s = b.ins().f32const(c);
                    if ty.is_vector() {
                        b.ins().splat(ty, s)
                    } else {
                        s
                    }
                })
                .collect();
            let truncate = self.truncate;
            counted(b, lo, hi, step, &[], &[], |b, i, _| {
                let a = elem(b, src, i, ptr);
                let x = b.ins().load(ty, flags(), a, 0);
                let x = b.ins().fmax(x, consts[0]);
                let x = b.ins().fmin(x, consts[1]);
                let x = b.ins().fsub(x, consts[0]);
                let x = b.ins().fmul(x, consts[2]);
                let q = if truncate {
                    b.ins().trunc(x)
                } else {
                    b.ins().nearest(x)
                };
                let a = elem(b, out, i, ptr);
                b.ins().store(flags(), q, a, 0);
                vec![]
            });
        }
        b.ins().return_(&[]);
        Ok(())
    }
}
