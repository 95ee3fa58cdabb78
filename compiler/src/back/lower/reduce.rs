//! Lowering of `sum` and `mean` over any dims (keepdim or not) to one
//! [`ReduceKernel`] call.
//!
//! The input's dims are classified kept or reduced; size-1 dims are
//! dropped and neighbours of the same class merged (row-major, so a merged
//! group is one size and one stride). A work unit is one output element:
//! its kept index gives a base offset, then nested loops walk the reduced
//! groups. An innermost reduced group of stride 1 (the last dims, e.g.
//! H·W of a per-channel `[0, 2, 3]` sum) is summed with f32x4 lanes per
//! chunk ([`super::rows::fold_row`]); other groups element by element.
//! Everything is accumulated in f64 and rounded once; `mean` divides in
//! f64 by the reduced count (0/0 = NaN for an empty reduction, as PyTorch).

use super::data::call;
use super::rows::{fold_row, input, store_f64};
use super::LowerCx;
use crate::back::jit::KernelSource;
use crate::back::loops::{counted, elem, flags};
use crate::back::BackError;
use crate::ir::{Attr, Node};
use cranelift_codegen::ir::{types, Block, InstBuilder, Type, Value};
use cranelift_frontend::FunctionBuilder;

/// Lowers `sum` and `mean`; `None` for other ops.
pub fn try_lower(cx: &mut LowerCx, node: &Node) -> Option<Result<(), BackError>> {
    matches!(node.op.name, "sum" | "mean").then(|| reduce(cx, node))
}

/// A reduction kernel (see the module docs); groups are `(size, stride)`
/// outermost first.
#[derive(Debug, Clone, PartialEq)]
struct ReduceKernel {
    kept: Vec<(u64, u64)>,
    reduced: Vec<(u64, u64)>,
    /// The factor applied to each sum (`1/count` for `mean`).
    scale: Option<f64>,
}

impl ReduceKernel {
    /// Merged groups of `shape` with the dims in `dims` reduced.
    fn new(shape: &[usize], dims: &[usize], scale: Option<f64>) -> ReduceKernel {
        let mut stride = 1u64;
        // (reduced?, size, stride), innermost first.
        let mut groups: Vec<(bool, u64, u64)> = Vec::new();
        for (d, &size) in shape.iter().enumerate().rev() {
            let (size, red) = (size as u64, dims.contains(&d));
            if size != 1 {
                match groups.last_mut() {
                    Some(g) if g.0 == red => g.1 *= size,
                    _ => groups.push((red, size, stride)),
                }
            }
            stride *= size;
        }
        groups.reverse();
        let pick = |red: bool| -> Vec<(u64, u64)> {
            groups
                .iter()
                .filter(|g| g.0 == red)
                .map(|g| (g.1, g.2))
                .collect()
        };
        let mut reduced = pick(true);
        if reduced.is_empty() {
            reduced.push((1, 1));
        }
        ReduceKernel {
            kept: pick(false),
            reduced,
            scale,
        }
    }

    fn units(&self) -> usize {
        self.kept.iter().map(|g| g.0 as usize).product()
    }

    fn count(&self) -> u64 {
        self.reduced.iter().map(|g| g.0).product()
    }

    /// `acc` plus the sum over reduced groups `level..` from offset `off`.
    fn emit(
        &self,
        b: &mut FunctionBuilder,
        ptr: Type,
        x: Value,
        level: usize,
        off: Value,
        acc: Value,
    ) -> Value {
        let (size, stride) = self.reduced[level];
        let zero = b.ins().iconst(types::I64, 0);
        let n = b.ins().iconst(types::I64, size as i64);
        if level + 1 < self.reduced.len() {
            return counted(b, zero, n, 1, &[acc], &[types::F64], |b, j, acc| {
                let o = b.ins().imul_imm_s(j, stride as i64);
                let o = b.ins().iadd(off, o);
                vec![self.emit(b, ptr, x, level + 1, o, acc[0])]
            })[0];
        }
        if stride == 1 {
            let row = elem(b, x, off, ptr);
            return fold_row(b, ptr, &[row], n, &[acc], &|_, _, v| vec![v[0]])[0];
        }
        counted(b, zero, n, 1, &[acc], &[types::F64], |b, j, acc| {
            let o = b.ins().imul_imm_s(j, stride as i64);
            let o = b.ins().iadd(off, o);
            let a = elem(b, x, o, ptr);
            let v = b.ins().load(types::F32, flags(), a, 0);
            let v = b.ins().fpromote(types::F64, v);
            vec![b.ins().fadd(acc[0], v)]
        })[0]
    }
}

impl KernelSource for ReduceKernel {
    fn key(&self) -> String {
        format!("reduce.f32({:?})", self)
    }

    fn build(&self, b: &mut FunctionBuilder, entry: Block, ptr: Type) -> Result<(), BackError> {
        let p = b.block_params(entry).to_vec();
        let (start, end, ins, out) = (p[0], p[1], p[2], p[3]);
        let x = input(b, ins, 0, ptr);
        counted(b, start, end, 1, &[], &[], |b, u, _| {
            let mut rem = u;
            let mut off = b.ins().iconst(types::I64, 0);
            for (k, &(size, stride)) in self.kept.iter().enumerate().rev() {
                let idx = if k == 0 {
                    rem
                } else {
                    let idx = b.ins().urem_imm_u(rem, size as i64);
                    rem = b.ins().udiv_imm_u(rem, size as i64);
                    idx
                };
                let o = b.ins().imul_imm_s(idx, stride as i64);
                off = b.ins().iadd(off, o);
            }
            let z = b.ins().f64const(0.0);
            let mut s = self.emit(b, ptr, x, 0, off, z);
            if let Some(f) = self.scale {
                let f = b.ins().f64const(f);
                s = b.ins().fmul(s, f);
            }
            store_f64(b, s, out, u, ptr);
            vec![]
        });
        b.ins().return_(&[]);
        Ok(())
    }
}

fn reduce(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let x = node.inputs[0];
    let xs = cx.shape(x)?;
    let dims: Vec<usize> = match node.op.attr("dims") {
        Some(Attr::Ints(d)) => d.iter().map(|&d| d as usize).collect(),
        _ => (0..xs.len()).collect(),
    };
    if let Some(d) = dims.iter().find(|&&d| d >= xs.len()) {
        return Err(BackError(format!(
            "`{}` at {}: dim {d} is out of range for input {xs:?}",
            node.op.name, node.path
        )));
    }
    let count: usize = dims.iter().map(|&d| xs[d]).product();
    let scale = (node.op.name == "mean").then(|| 1.0 / count as f64);
    let k = ReduceKernel::new(&xs, &dims, scale);
    let input = cx.buf(x)?;
    let out = cx.output(node.outputs[0])?;
    let units = k.units();
    if units == 0 {
        return Ok(());
    }
    let id = cx.jit.kernel(&k)?;
    let grain = (16384 / k.count().max(1)).max(1) as usize;
    let numel = xs.iter().product::<usize>();
    call(cx, id, units, grain, vec![input], vec![numel, units], out)
}

#[cfg(test)]
mod tests;
