//! Lowering of `dropout_train(x, seed) {p, key}`: element `i` is kept iff
//! the counter generator's `unit(S, key, i) >= p`
//! ([`netc_runtime::counter::unit`]), kept elements are scaled by
//! `1/(1 − p)`, the others are 0.
//!
//! The kernel recomputes the generator bit for bit with i64 arithmetic:
//! `S` is assembled from the seed input's two f32 **bit patterns** (low
//! and high halves, loaded as i32, never converted), `fnv1a64(key)` is a
//! constant, and `unit >= p` is the exact integer test
//! `splitmix64((S ^ fnv1a64(key)) + i) >> 40 >= ceil(p · 2^24)` (the unit
//! is that 24-bit integer over 2^24, and `p · 2^24` is exact in f64).

use super::data::call;
use super::rows::input;
use super::LowerCx;
use crate::back::jit::KernelSource;
use crate::back::loops::{counted, elem, flags};
use crate::back::BackError;
use crate::ir::{Attr, Node};
use cranelift_codegen::ir::{condcodes::IntCC, types, Block, InstBuilder, Type, Value};
use cranelift_frontend::FunctionBuilder;
use netc_runtime::counter::fnv1a64;

/// Lowers `dropout_train`; `None` for other ops.
pub fn try_lower(cx: &mut LowerCx, node: &Node) -> Option<Result<(), BackError>> {
    (node.op.name == "dropout_train").then(|| dropout(cx, node))
}

/// The dropout kernel: a work unit is one element.
#[derive(Debug, Clone, Copy)]
struct DropoutKernel {
    /// `fnv1a64(key)`.
    key: u64,
    /// Kept iff the 24-bit unit numerator is at least this.
    threshold: u64,
    /// `1/(1 − p)` rounded to f32.
    scale: f32,
}

/// `z ^ (z >> s)`.
fn xorshift(b: &mut FunctionBuilder, z: Value, s: i64) -> Value {
    let t = b.ins().ushr_imm_u(z, s);
    b.ins().bxor(z, t)
}

impl KernelSource for DropoutKernel {
    fn key(&self) -> String {
        format!(
            "dropout_train.f32(key={:016x};t={};s={:08x})",
            self.key,
            self.threshold,
            self.scale.to_bits()
        )
    }

    fn build(&self, b: &mut FunctionBuilder, entry: Block, ptr: Type) -> Result<(), BackError> {
        let p = b.block_params(entry).to_vec();
        let (start, end, ins, out) = (p[0], p[1], p[2], p[3]);
        let x = input(b, ins, 0, ptr);
        let seed = input(b, ins, 1, ptr);
        let lo = b.ins().load(types::I32, flags(), seed, 0);
        let hi = b.ins().load(types::I32, flags(), seed, 4);
        let lo = b.ins().uextend(types::I64, lo);
        let hi = b.ins().uextend(types::I64, hi);
        let hi = b.ins().ishl_imm_u(hi, 32);
        let s = b.ins().bor(hi, lo);
        let k = b.ins().bxor_imm_s(s, self.key as i64);
        let threshold = b.ins().iconst(types::I64, self.threshold as i64);
        let scale = b.ins().f32const(self.scale);
        let zero = b.ins().f32const(0.0);
        counted(b, start, end, 1, &[], &[], |b, i, _| {
            // splitmix64(k + i), all mod 2^64.
            let z = b.ins().iadd(k, i);
            let z = b.ins().iadd_imm_s(z, 0x9e37_79b9_7f4a_7c15_u64 as i64);
            let z = xorshift(b, z, 30);
            let z = b.ins().imul_imm_s(z, 0xbf58_476d_1ce4_e5b9_u64 as i64);
            let z = xorshift(b, z, 27);
            let z = b.ins().imul_imm_s(z, 0x94d0_49bb_1331_11eb_u64 as i64);
            let z = xorshift(b, z, 31);
            let u = b.ins().ushr_imm_u(z, 40);
            let keep = b
                .ins()
                .icmp(IntCC::UnsignedGreaterThanOrEqual, u, threshold);
            let a = elem(b, x, i, ptr);
            let v = b.ins().load(types::F32, flags(), a, 0);
            let v = b.ins().fmul(v, scale);
            let y = b.ins().select(keep, v, zero);
            let a = elem(b, out, i, ptr);
            b.ins().store(flags(), y, a, 0);
            vec![]
        });
        b.ins().return_(&[]);
        Ok(())
    }
}

fn dropout(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let bad = |why: String| BackError(format!("`dropout_train` at {}: {why}", node.path));
    let [x, seed] = node.inputs[..] else {
        return Err(bad(format!(
            "takes 2 operands, given {}",
            node.inputs.len()
        )));
    };
    let p = match node.op.attr("p") {
        Some(Attr::Float(p)) => *p,
        _ => return Err(bad("no float `p`".into())),
    };
    let key = match node.op.attr("key") {
        Some(Attr::Str(k)) => k.as_str(),
        _ => return Err(bad("no string `key`".into())),
    };
    if cx.numel(seed)? != 2 {
        return Err(bad(format!("seed {:?} is not f32[2]", cx.shape(seed)?)));
    }
    let kernel = DropoutKernel {
        key: fnv1a64(key),
        // Saturating: p <= 0 keeps everything, p >= 1 nothing.
        threshold: (p * f64::from(1u32 << 24)).ceil() as u64,
        scale: (1.0 / (1.0 - p)) as f32,
    };
    let n = cx.numel(x)?;
    let (input, seed) = (cx.buf(x)?, cx.buf(seed)?);
    let out = cx.output(node.outputs[0])?;
    if n == 0 {
        return Ok(());
    }
    let id = cx.jit.kernel(&kernel)?;
    call(cx, id, n, 4096, vec![input, seed], vec![n, 2, n], out)
}

#[cfg(test)]
mod tests;
