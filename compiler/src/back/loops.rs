//! Small Cranelift building blocks shared by the row-reduction, data-movement and pooling
//! kernel generators ([`super::reduce`], [`super::copy`], [`super::pool`],
//! [`super::quantize`]): header-tested counted loops, element addressing,
//! and the memory flags every kernel uses.

use cranelift_codegen::ir::{
    condcodes::IntCC, types, BlockArg, InstBuilder, MemFlagsData, Type, Value,
};
use cranelift_frontend::FunctionBuilder;

/// Unaligned, non-trapping accesses: work ranges start at any element.
pub fn flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

fn args(vals: &[Value]) -> Vec<BlockArg> {
    vals.iter().map(|&v| BlockArg::Value(v)).collect()
}

/// A header-tested counted loop `for j in (lo..hi).step_by(step)` (signed
/// compare, so an empty or reversed range runs nothing) carrying `init`
/// (of types `tys`) through block parameters; `body(b, j, carried)`
/// returns the next carried values. Leaves the builder in the exit block
/// and returns the carried values there.
pub fn counted(
    b: &mut FunctionBuilder,
    lo: Value,
    hi: Value,
    step: i64,
    init: &[Value],
    tys: &[Type],
    mut body: impl FnMut(&mut FunctionBuilder, Value, &[Value]) -> Vec<Value>,
) -> Vec<Value> {
    let (head, blk, exit) = (b.create_block(), b.create_block(), b.create_block());
    b.append_block_param(head, types::I64);
    for &t in tys {
        b.append_block_param(head, t);
        b.append_block_param(exit, t);
    }
    let mut a = vec![lo];
    a.extend_from_slice(init);
    b.ins().jump(head, &args(&a));
    b.switch_to_block(head);
    let ps = b.block_params(head).to_vec();
    let (j, carried) = (ps[0], ps[1..].to_vec());
    let more = b.ins().icmp(IntCC::SignedLessThan, j, hi);
    b.ins().brif(more, blk, &[], exit, &args(&carried));
    b.switch_to_block(blk);
    let next = body(b, j, &carried);
    let j2 = b.ins().iadd_imm_s(j, step);
    let mut a = vec![j2];
    a.extend(next);
    b.ins().jump(head, &args(&a));
    b.switch_to_block(exit);
    b.block_params(exit).to_vec()
}

/// The address of f32 element `i` (an i64 index) of the array at `base`.
pub fn elem(b: &mut FunctionBuilder, base: Value, i: Value, ptr: Type) -> Value {
    let off = b.ins().ishl_imm_u(i, 2);
    let off = if ptr == types::I64 {
        off
    } else {
        b.ins().ireduce(ptr, off)
    };
    b.ins().iadd(base, off)
}

/// Signed minimum of two i64 values.
pub fn smin(b: &mut FunctionBuilder, x: Value, y: Value) -> Value {
    let lt = b.ins().icmp(IntCC::SignedLessThan, x, y);
    b.ins().select(lt, x, y)
}

/// Signed maximum of two i64 values.
pub fn smax(b: &mut FunctionBuilder, x: Value, y: Value) -> Value {
    let gt = b.ins().icmp(IntCC::SignedGreaterThan, x, y);
    b.ins().select(gt, x, y)
}
