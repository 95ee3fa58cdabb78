//! Cranelift building blocks for the training kernels ([`super::norm_train`],
//! [`super::reduce`]): sums over a contiguous row with f32x4 lanes and f64
//! accumulation, elementwise row maps, and kernel-ABI plumbing.
//!
//! [`fold_row`] sums in f32x4 lanes over chunks of at most [`CHUNK`]
//! elements, then adds each chunk's total to f64 accumulators, so the
//! error stays that of a 256-term f32 sum per chunk however long the row.

use crate::back::loops::{counted, elem, flags, smin};
use cranelift_codegen::ir::{types, InstBuilder, Type, Value};
use cranelift_frontend::FunctionBuilder;

/// Elements summed in f32 before a partial sum is added in f64.
pub const CHUNK: i64 = 1024;

/// The base pointer of input `k` of the kernel ABI's input array `ins`.
pub fn input(b: &mut FunctionBuilder, ins: Value, k: usize, ptr: Type) -> Value {
    b.ins()
        .load(ptr, flags(), ins, (k * ptr.bytes() as usize) as i32)
}

/// `s` splatted to `ty` if `ty` is a vector type.
pub fn splat(b: &mut FunctionBuilder, ty: Type, s: Value) -> Value {
    if ty.is_vector() {
        b.ins().splat(ty, s)
    } else {
        s
    }
}

/// The f32 at element `i` of `base`.
pub fn load_at(b: &mut FunctionBuilder, base: Value, i: Value, ptr: Type) -> Value {
    let a = elem(b, base, i, ptr);
    b.ins().load(types::F32, flags(), a, 0)
}

/// Stores the f64 `v` rounded to f32 at element `i` of `base`.
pub fn store_f64(b: &mut FunctionBuilder, v: Value, base: Value, i: Value, ptr: Type) {
    let v = b.ins().fdemote(types::F32, v);
    let a = elem(b, base, i, ptr);
    b.ins().store(flags(), v, a, 0);
}

/// The terms a fold sums: given the lane type and the values loaded from
/// each row at one position, the values to add (one per accumulator).
pub type Terms<'a> = &'a dyn Fn(&mut FunctionBuilder, Type, &[Value]) -> Vec<Value>;

/// Adds `Σ_{j < len} terms(rows[..][j])` to the f64 accumulators `acc`
/// (one per term) and returns them; `rows` are row base addresses.
pub fn fold_row(
    b: &mut FunctionBuilder,
    ptr: Type,
    rows: &[Value],
    len: Value,
    acc: &[Value],
    terms: Terms,
) -> Vec<Value> {
    let k = acc.len();
    let zero = b.ins().iconst(types::I64, 0);
    let f64s = vec![types::F64; k];
    counted(b, zero, len, CHUNK, acc, &f64s, |b, cs, acc| {
        let ce = b.ins().iadd_imm_s(cs, CHUNK);
        let ce = smin(b, ce, len);
        let span = b.ins().isub(ce, cs);
        let span = b.ins().band_imm_s(span, !3);
        let vhi = b.ins().iadd(cs, span);
        let z = b.ins().f32const(0.0);
        let zv = b.ins().splat(types::F32X4, z);
        let lanes = |b: &mut FunctionBuilder, ty: Type, j: Value, s: &[Value]| {
            let loaded: Vec<Value> = rows
                .iter()
                .map(|&r| {
                    let a = elem(b, r, j, ptr);
                    b.ins().load(ty, flags(), a, 0)
                })
                .collect();
            let t = terms(b, ty, &loaded);
            s.iter().zip(t).map(|(&s, t)| b.ins().fadd(s, t)).collect()
        };
        let vs = counted(
            b,
            cs,
            vhi,
            4,
            &vec![zv; k],
            &vec![types::F32X4; k],
            |b, j, s| lanes(b, types::F32X4, j, s),
        );
        let hs: Vec<Value> = vs
            .iter()
            .map(|&v| {
                let l: Vec<Value> = (0..4).map(|i| b.ins().extractlane(v, i)).collect();
                let p = b.ins().fadd(l[0], l[1]);
                let q = b.ins().fadd(l[2], l[3]);
                b.ins().fadd(p, q)
            })
            .collect();
        let ts = counted(b, vhi, ce, 1, &hs, &vec![types::F32; k], |b, j, s| {
            lanes(b, types::F32, j, s)
        });
        acc.iter()
            .zip(ts)
            .map(|(&a, t)| {
                let t = b.ins().fpromote(types::F64, t);
                b.ins().fadd(a, t)
            })
            .collect()
    })
}

/// `out[j] = f(rows[..][j])` for `j < len` (f32x4 body, scalar tail);
/// `rows` and `out` are row base addresses.
pub fn map_row(
    b: &mut FunctionBuilder,
    ptr: Type,
    rows: &[Value],
    out: Value,
    len: i64,
    f: &dyn Fn(&mut FunctionBuilder, Type, &[Value]) -> Value,
) {
    let lo = b.ins().iconst(types::I64, 0);
    let vec_hi = b.ins().iconst(types::I64, len & !3);
    let hi = b.ins().iconst(types::I64, len);
    for (lo, hi, step, ty) in [(lo, vec_hi, 4, types::F32X4), (vec_hi, hi, 1, types::F32)] {
        counted(b, lo, hi, step, &[], &[], |b, j, _| {
            let loaded: Vec<Value> = rows
                .iter()
                .map(|&r| {
                    let a = elem(b, r, j, ptr);
                    b.ins().load(ty, flags(), a, 0)
                })
                .collect();
            let y = f(b, ty, &loaded);
            let a = elem(b, out, j, ptr);
            b.ins().store(flags(), y, a, 0);
            vec![]
        });
    }
}
