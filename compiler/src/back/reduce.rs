//! Row reductions over `[rows, len]` contiguous f32: `sum`, `max`, `mean`
//! (one output per row) and `softmax`, `log_softmax` along the last
//! dimension (one output row per row).
//!
//! Same kernel ABI as the elementwise kernels
//! ([`super::jit::KernelSource`]): `[start, end)` is a range of **rows**,
//! `inputs[0]` is the `[rows, len]` buffer's base, `out` is `[rows]` for the
//! reductions and `[rows, len]` for the softmaxes (indices absolute). `len`
//! is baked into the kernel and its key; the number of rows is not.
//!
//! Each row is processed with an f32x4 loop and a scalar tail:
//!
//! - `sum`: four f32x4 lane sums, then `(l0 + l1) + (l2 + l3)`, then the
//!   tail (pairwise-ish, like PyTorch's vectorised sum; error ≈ `√len·ε`).
//! - `max`: NaN-propagating, as `torch.amax`.
//! - `mean`: `sum / len`.
//! - `softmax`: `m = max`, `e = exp(x − m)` stored and summed, then `e / s`.
//! - `log_softmax`: `m = max`, `s = Σ exp(x − m)`, then `(x − m) − log s`.
//!
//! `exp`/`log` are [`super::math`]'s. A row of all `-inf` gives NaN, as in
//! PyTorch.

use super::jit::{Jit, KernelFn, KernelId, KernelSource};
use super::loops::{counted, flags};
use super::math::{self, Math};
use super::BackError;
use crate::ir::{Attr, Graph, Node};
use cranelift_codegen::ir::{types, Block, InstBuilder, Type, Value};
use cranelift_frontend::FunctionBuilder;
use netc_runtime::DType;
use std::marker::PhantomData;

/// What a row kernel computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowOp {
    /// `out[r] = Σ_j x[r, j]`.
    Sum,
    /// `out[r] = max_j x[r, j]` (NaN if any element is NaN).
    Max,
    /// `out[r] = Σ_j x[r, j] / len`.
    Mean,
    /// `out[r, j] = exp(x[r, j] − m) / Σ_k exp(x[r, k] − m)`, `m` the row max.
    Softmax,
    /// `out[r, j] = (x[r, j] − m) − log Σ_k exp(x[r, k] − m)`.
    LogSoftmax,
}

impl RowOp {
    /// True when the output has one element per row (not per element).
    pub fn reduces(self) -> bool {
        matches!(self, RowOp::Sum | RowOp::Max | RowOp::Mean)
    }
}

/// A row kernel over `[rows, len]` (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RowKernel {
    /// The op.
    pub op: RowOp,
    /// Elements per row, `1..=2^40`.
    pub len: u64,
}

/// Per-function state for one row.
struct Row {
    /// Row base address of the input.
    x: Value,
    /// Row base address of the output (`[rows, len]` ops) or the output
    /// element (`[rows]` ops).
    o: Value,
    vec_hi: Value,
    hi: Value,
    zero: Value,
}

impl Row {
    fn addr(b: &mut FunctionBuilder, base: Value, j: Value, ptr: Type) -> Value {
        let off = b.ins().ishl_imm_u(j, 2);
        let off = if ptr == types::I64 {
            off
        } else {
            b.ins().ireduce(ptr, off)
        };
        b.ins().iadd(base, off)
    }

    /// Folds `f` over the row: vector accumulator from `vinit`, reduced to a
    /// scalar with `f` lane by lane, then the tail. `map` transforms each
    /// loaded value first (same code for vector and scalar lanes).
    fn fold(
        &self,
        b: &mut FunctionBuilder,
        ptr: Type,
        init: f32,
        f: fn(&mut FunctionBuilder, Value, Value) -> Value,
        map: &dyn Fn(&mut FunctionBuilder, Type, Value, Value) -> Value,
    ) -> Value {
        let s = b.ins().f32const(init);
        let v = b.ins().splat(types::F32X4, s);
        let xb = self.x;
        let acc = counted(
            b,
            self.zero,
            self.vec_hi,
            4,
            &[v],
            &[types::F32X4],
            |b, j, c| {
                let a = Row::addr(b, xb, j, ptr);
                let x = b.ins().load(types::F32X4, flags(), a, 0);
                let y = map(b, types::F32X4, x, a);
                vec![f(b, c[0], y)]
            },
        );
        let l: Vec<Value> = (0..4).map(|i| b.ins().extractlane(acc[0], i)).collect();
        let p = f(b, l[0], l[1]);
        let q = f(b, l[2], l[3]);
        let s = f(b, p, q);
        let r = counted(
            b,
            self.vec_hi,
            self.hi,
            1,
            &[s],
            &[types::F32],
            |b, j, c| {
                let a = Row::addr(b, xb, j, ptr);
                let x = b.ins().load(types::F32, flags(), a, 0);
                let y = map(b, types::F32, x, a);
                vec![f(b, c[0], y)]
            },
        );
        r[0]
    }

    /// `out[j] = g(x[j], out[j])` over the row (vector body + tail), with
    /// `g` given the lane type.
    fn each(
        &self,
        b: &mut FunctionBuilder,
        ptr: Type,
        g: &dyn Fn(&mut FunctionBuilder, Type, Value, Value) -> Value,
        read_out: bool,
    ) {
        let (xb, ob) = (self.x, self.o);
        for (lo, hi, step, ty) in [
            (self.zero, self.vec_hi, 4, types::F32X4),
            (self.vec_hi, self.hi, 1, types::F32),
        ] {
            counted(b, lo, hi, step, &[], &[], |b, j, _| {
                let src = if read_out { ob } else { xb };
                let a = Row::addr(b, src, j, ptr);
                let x = b.ins().load(ty, flags(), a, 0);
                let ao = Row::addr(b, ob, j, ptr);
                let y = g(b, ty, x, ao);
                b.ins().store(flags(), y, ao, 0);
                vec![]
            });
        }
    }
}

fn fadd(b: &mut FunctionBuilder, x: Value, y: Value) -> Value {
    b.ins().fadd(x, y)
}

fn fmax(b: &mut FunctionBuilder, x: Value, y: Value) -> Value {
    b.ins().fmax(x, y)
}

fn splat_to(b: &mut FunctionBuilder, ty: Type, s: Value) -> Value {
    if ty.is_vector() {
        b.ins().splat(ty, s)
    } else {
        s
    }
}

impl RowKernel {
    /// Checks `len` (1..=2^40).
    pub fn validate(&self) -> Result<(), BackError> {
        if self.len == 0 || self.len > (1 << 40) {
            return Err(BackError(format!(
                "row kernel `{}`: row length {} must be in 1..=2^40",
                self.key(),
                self.len
            )));
        }
        Ok(())
    }

    /// Output elements for rows `[0, rows)`.
    pub fn out_elements(&self, rows: u64) -> u64 {
        if self.op.reduces() {
            rows
        } else {
            rows.saturating_mul(self.len)
        }
    }

    /// Compiles this kernel, or finds it in the cache.
    pub fn compile(&self, jit: &mut Jit) -> Result<KernelId, BackError> {
        self.validate()?;
        jit.kernel(self)
    }

    /// The compiled kernel (after [`RowKernel::compile`]), borrowing the JIT
    /// that owns its code.
    pub fn kernel<'j>(&self, jit: &'j Jit) -> Result<CompiledRowKernel<'j>, BackError> {
        let key = self.key();
        let id = jit
            .lookup(&key)
            .ok_or_else(|| BackError(format!("row kernel `{key}` was not compiled")))?;
        Ok(CompiledRowKernel {
            kernel: *self,
            id,
            code: jit.code(id)?,
            _jit: PhantomData,
        })
    }
}

impl KernelSource for RowKernel {
    fn key(&self) -> String {
        format!("row.f32({:?};len={})", self.op, self.len)
    }

    fn build(&self, b: &mut FunctionBuilder, entry: Block, ptr: Type) -> Result<(), BackError> {
        self.validate()?;
        let p = b.block_params(entry).to_vec();
        let (start, end, ins, out) = (p[0], p[1], p[2], p[3]);
        let xbase = b.ins().load(ptr, flags(), ins, 0);
        let len = self.len as i64;
        let zero = b.ins().iconst(types::I64, 0);
        let vec_hi = b.ins().iconst(types::I64, len & !3);
        let hi = b.ins().iconst(types::I64, len);
        let op = self.op;
        counted(b, start, end, 1, &[], &[], |b, r, _| {
            let e0 = b.ins().imul_imm_s(r, len);
            let x = Row::addr(b, xbase, e0, ptr);
            let o = if op.reduces() {
                Row::addr(b, out, r, ptr)
            } else {
                Row::addr(b, out, e0, ptr)
            };
            let row = Row {
                x,
                o,
                vec_hi,
                hi,
                zero,
            };
            let id = |_: &mut FunctionBuilder, _: Type, v: Value, _: Value| v;
            match op {
                RowOp::Sum | RowOp::Mean => {
                    let mut s = row.fold(b, ptr, 0.0, fadd, &id);
                    if op == RowOp::Mean {
                        let n = b.ins().f32const(len as f32);
                        s = b.ins().fdiv(s, n);
                    }
                    b.ins().store(flags(), s, o, 0);
                }
                RowOp::Max => {
                    let m = row.fold(b, ptr, f32::NEG_INFINITY, fmax, &id);
                    b.ins().store(flags(), m, o, 0);
                }
                RowOp::Softmax | RowOp::LogSoftmax => {
                    let m = row.fold(b, ptr, f32::NEG_INFINITY, fmax, &id);
                    let store = op == RowOp::Softmax;
                    let shifted_exp = |b: &mut FunctionBuilder, ty: Type, v: Value, a: Value| {
                        let mv = splat_to(b, ty, m);
                        let d = b.ins().fsub(v, mv);
                        let e = math::exp(&mut Math { b, ty }, d);
                        if store {
                            // `a` is the input address; the output index is
                            // the same element of the output row.
                            let off = b.ins().isub(a, x);
                            let ao = b.ins().iadd(o, off);
                            b.ins().store(flags(), e, ao, 0);
                        }
                        e
                    };
                    let s = row.fold(b, ptr, 0.0, fadd, &shifted_exp);
                    if store {
                        row.each(
                            b,
                            ptr,
                            &|b, ty, e, _| {
                                let sv = splat_to(b, ty, s);
                                b.ins().fdiv(e, sv)
                            },
                            true,
                        );
                    } else {
                        let ls = math::log(&mut Math { b, ty: types::F32 }, s);
                        row.each(
                            b,
                            ptr,
                            &|b, ty, v, _| {
                                let mv = splat_to(b, ty, m);
                                let lv = splat_to(b, ty, ls);
                                let d = b.ins().fsub(v, mv);
                                b.ins().fsub(d, lv)
                            },
                            false,
                        );
                    }
                }
            }
            vec![]
        });
        b.ins().return_(&[]);
        Ok(())
    }
}

/// The row kernel for a graph node, if this back end supports it:
/// f32 `softmax` / `log_softmax` over the last dim, and `sum` / `mean` /
/// `amax` over exactly the last dim, with a known last-dim size.
pub fn node_row_kernel(g: &Graph, node: &Node) -> Option<RowKernel> {
    let [x] = node.inputs[..] else {
        return None;
    };
    let t = g.ty(x);
    if t.dtype != DType::F32 || t.sparse || node.outputs.len() != 1 {
        return None;
    }
    let last = t.rank().checked_sub(1)? as i64;
    let op = match (node.op.name, node.op.attr("dim"), node.op.attr("dims")) {
        ("softmax", Some(Attr::Int(d)), _) if *d == last => RowOp::Softmax,
        ("log_softmax", Some(Attr::Int(d)), _) if *d == last => RowOp::LogSoftmax,
        ("sum", _, Some(Attr::Ints(d))) if d[..] == [last] => RowOp::Sum,
        ("mean", _, Some(Attr::Ints(d))) if d[..] == [last] => RowOp::Mean,
        ("amax", _, Some(Attr::Ints(d))) if d[..] == [last] => RowOp::Max,
        _ => return None,
    };
    let len = u64::try_from(t.shape.last()?.as_known()?).ok()?;
    let k = RowKernel { op, len };
    k.validate().ok().map(|_| k)
}

/// A compiled [`RowKernel`], valid while its [`Jit`] is alive.
#[derive(Debug, Clone)]
pub struct CompiledRowKernel<'j> {
    kernel: RowKernel,
    id: KernelId,
    code: KernelFn,
    _jit: PhantomData<&'j ()>,
}

impl CompiledRowKernel<'_> {
    /// The kernel description.
    pub fn kernel(&self) -> RowKernel {
        self.kernel
    }

    /// The kernel's id in its [`Jit`].
    pub fn id(&self) -> KernelId {
        self.id
    }

    /// Runs rows `[start, end)` with bounds checks: `x` needs `end · len`
    /// elements, `out` [`RowKernel::out_elements`]`(end)`. Buffers are
    /// indexed from their starts, so a caller splitting the rows passes the
    /// same full buffers with different ranges.
    pub fn run(&self, start: u64, end: u64, x: &[f32], out: &mut [f32]) -> Result<(), BackError> {
        let k = &self.kernel;
        let err = |m: String| Err(BackError(format!("row kernel `{}`: {m}", k.key())));
        if start > end {
            return err(format!("row range {start}..{end} is reversed"));
        }
        if end > (1 << 40) {
            return err(format!("row range end {end} exceeds 2^40"));
        }
        let need = end.saturating_mul(k.len);
        if (x.len() as u64) < need {
            return err(format!(
                "input has {} elements, {need} needed for rows ..{end}",
                x.len()
            ));
        }
        if (out.len() as u64) < k.out_elements(end) {
            return err(format!(
                "output has {} elements, {} needed for rows ..{end}",
                out.len(),
                k.out_elements(end)
            ));
        }
        let ptrs = [x.as_ptr()];
        // SAFETY: the checks above guarantee that every element rows
        // [start, end) read (`x[r·len .. (r+1)·len]`) or write (`out[r]` or
        // `out[r·len ..]`) lies inside the slices; `out` is exclusively
        // borrowed, so it does not alias `x`.
        unsafe { self.call_raw(start as i64, end as i64, ptrs.as_ptr(), out.as_mut_ptr()) };
        Ok(())
    }

    /// Calls the machine code directly (for the runtime's thread split).
    ///
    /// # Safety
    /// `inputs` must point to one base pointer to at least `end · len`
    /// valid f32s; `out` must be valid for the output elements of rows
    /// `[start, end)`; for the softmaxes `out` may equal the input (each
    /// element is read before it is written, at the same index), otherwise
    /// it must not overlap it; concurrent calls must use disjoint row
    /// ranges.
    pub unsafe fn call_raw(&self, start: i64, end: i64, inputs: *const *const f32, out: *mut f32) {
        // SAFETY: the caller upholds the contract above; the code is alive
        // for 'j because the kernel borrows its `Jit` lifetime.
        unsafe { (self.code)(start, end, inputs, out) }
    }
}

#[cfg(test)]
mod tests;
