//! Lowering of the signal ops that stay nodes after elaboration:
//! `differential_entropy` and `grid_map` (the FIR filter banks elaborate
//! to `conv1d` with constant taps and run through [`super::contract`]).
//!
//! - `differential_entropy` is one `DeKernel` call; a work unit is one
//!   output element (one segment of one row). The input is viewed as
//!   `[outer, count · segment, inner]`: the segment's samples are
//!   `inner` apart. Two passes over the segment, both accumulated in f64:
//!   the mean, then the sum of squared deviations (population variance,
//!   as the interpreter); `0.5 · ln(2πe · var)` with the JIT's f32 `log`
//!   ([`crate::back::math::log`]). Contiguous segments (`inner = 1`, the
//!   usual last-dim case) are summed with f32x4 lanes per chunk
//!   (`super::rows::fold_row`).
//! - `grid_map` is one `GridKernel` call; a work unit is one row of
//!   `C` channels: the `grid²` cells are zeroed, then each channel is
//!   stored at its compile-time cell (unrolled, immediate offsets).

use super::data::call;
use super::rows::{fold_row, input, splat};
use super::LowerCx;
use crate::back::jit::KernelSource;
use crate::back::loops::{counted, elem, flags};
use crate::back::math::{self, Math};
use crate::back::BackError;
use crate::ir::{Attr, Node};
use cranelift_codegen::ir::{types, Block, InstBuilder, Type, Value};
use cranelift_frontend::FunctionBuilder;

/// Lowers `differential_entropy` and `grid_map`; `None` for other ops.
pub fn try_lower(cx: &mut LowerCx, node: &Node) -> Option<Result<(), BackError>> {
    let r = match node.op.name {
        "differential_entropy" => differential_entropy(cx, node),
        "grid_map" => grid_map(cx, node),
        _ => return None,
    };
    Some(r)
}

/// `0.5 ln(2πe var)` of every `segment`-sample segment (see the module
/// docs); the input is `[outer, count · segment, inner]`.
#[derive(Debug, Clone, PartialEq)]
struct DeKernel {
    /// Samples per segment.
    segment: u64,
    /// The product of the dims after the segmented one (the sample stride).
    inner: u64,
}

impl DeKernel {
    /// `acc` plus `Σ_j term(x[off + j · inner])` over the segment, in f64.
    fn fold(
        &self,
        b: &mut FunctionBuilder,
        ptr: Type,
        x: Value,
        off: Value,
        mean: Option<Value>,
    ) -> Value {
        let zero = b.ins().iconst(types::I64, 0);
        let n = b.ins().iconst(types::I64, self.segment as i64);
        let acc = b.ins().f64const(0.0);
        if self.inner == 1 {
            let row = elem(b, x, off, ptr);
            // The deviations are taken in f32 from the f64 mean rounded
            // to f32 (lanes of four); each chunk's sum is added in f64.
            let m32 = mean.map(|m| b.ins().fdemote(types::F32, m));
            let terms = move |b: &mut FunctionBuilder, ty: Type, v: &[Value]| match m32 {
                Some(m) => {
                    let m = splat(b, ty, m);
                    let d = b.ins().fsub(v[0], m);
                    vec![b.ins().fmul(d, d)]
                }
                None => vec![v[0]],
            };
            return fold_row(b, ptr, &[row], n, &[acc], &terms)[0];
        }
        counted(b, zero, n, 1, &[acc], &[types::F64], |b, j, acc| {
            let o = b.ins().imul_imm_s(j, self.inner as i64);
            let o = b.ins().iadd(off, o);
            let a = elem(b, x, o, ptr);
            let v = b.ins().load(types::F32, flags(), a, 0);
            let v = b.ins().fpromote(types::F64, v);
            let t = match mean {
                Some(m) => {
                    let d = b.ins().fsub(v, m);
                    b.ins().fmul(d, d)
                }
                None => v,
            };
            vec![b.ins().fadd(acc[0], t)]
        })[0]
    }
}

impl KernelSource for DeKernel {
    fn key(&self) -> String {
        format!("differential_entropy.f32({self:?})")
    }

    fn build(&self, b: &mut FunctionBuilder, entry: Block, ptr: Type) -> Result<(), BackError> {
        let p = b.block_params(entry).to_vec();
        let (start, end, ins, out) = (p[0], p[1], p[2], p[3]);
        let x = input(b, ins, 0, ptr);
        let (inner, seg) = (self.inner as i64, self.segment as i64);
        counted(b, start, end, 1, &[], &[], |b, u, _| {
            // Unit u = (o · count + s) · inner + i starts at input element
            // (o · count + s) · seg · inner + i = (u - i) · seg + i.
            let i = b.ins().urem_imm_u(u, inner);
            let os = b.ins().isub(u, i);
            let off = b.ins().imul_imm_s(os, seg);
            let off = b.ins().iadd(off, i);
            let inv = b.ins().f64const(1.0 / self.segment as f64);
            let s = self.fold(b, ptr, x, off, None);
            let mean = b.ins().fmul(s, inv);
            let q = self.fold(b, ptr, x, off, Some(mean));
            let var = b.ins().fmul(q, inv);
            let k = b
                .ins()
                .f64const(2.0 * std::f64::consts::PI * std::f64::consts::E);
            let v = b.ins().fmul(var, k);
            let v = b.ins().fdemote(types::F32, v);
            let l = math::log(&mut Math { b, ty: types::F32 }, v);
            let half = b.ins().f32const(0.5);
            let y = b.ins().fmul(l, half);
            let a = elem(b, out, u, ptr);
            b.ins().store(flags(), y, a, 0);
            vec![]
        });
        b.ins().return_(&[]);
        Ok(())
    }
}

/// Places each row's `cells.len()` channels at their cells of a
/// `cells_per_row` map, zeros elsewhere.
#[derive(Debug, Clone, PartialEq)]
struct GridKernel {
    /// The flat cell (`row · grid + col`) of each channel.
    cells: Vec<i64>,
    /// `grid²`.
    cells_per_row: i64,
}

impl KernelSource for GridKernel {
    fn key(&self) -> String {
        format!("grid_map.f32({self:?})")
    }

    fn build(&self, b: &mut FunctionBuilder, entry: Block, ptr: Type) -> Result<(), BackError> {
        let p = b.block_params(entry).to_vec();
        let (start, end, ins, out) = (p[0], p[1], p[2], p[3]);
        let x = input(b, ins, 0, ptr);
        let ch = self.cells.len() as i64;
        counted(b, start, end, 1, &[], &[], |b, r, _| {
            let xo = b.ins().imul_imm_s(r, ch);
            let xrow = elem(b, x, xo, ptr);
            let yo = b.ins().imul_imm_s(r, self.cells_per_row);
            let yrow = elem(b, out, yo, ptr);
            let zero = b.ins().iconst(types::I64, 0);
            let n = b.ins().iconst(types::I64, self.cells_per_row);
            let zf = b.ins().f32const(0.0);
            counted(b, zero, n, 1, &[], &[], |b, j, _| {
                let a = elem(b, yrow, j, ptr);
                b.ins().store(flags(), zf, a, 0);
                vec![]
            });
            for (c, &cell) in self.cells.iter().enumerate() {
                let v = b.ins().load(types::F32, flags(), xrow, (c * 4) as i32);
                b.ins().store(flags(), v, yrow, (cell * 4) as i32);
            }
            vec![]
        });
        b.ins().return_(&[]);
        Ok(())
    }
}

/// An integer attribute of `node`, or an error naming the op and layer.
fn int(node: &Node, key: &str) -> Result<i64, BackError> {
    match node.op.attr(key) {
        Some(Attr::Int(v)) => Ok(*v),
        _ => Err(BackError(format!(
            "`{}` at {} has no integer `{key}`",
            node.op.name, node.path
        ))),
    }
}

fn differential_entropy(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let x = node.inputs[0];
    let xs = cx.shape(x)?;
    let (d, segment) = (int(node, "dim")?, int(node, "segment")?);
    let bad = || {
        BackError(format!(
            "`differential_entropy` at {}: dim {d} and segment {segment} do not fit input {xs:?}",
            node.path
        ))
    };
    let d = usize::try_from(d).map_err(|_| bad())?;
    let segment = usize::try_from(segment).map_err(|_| bad())?;
    if d >= xs.len() || segment == 0 || !xs[d].is_multiple_of(segment) {
        return Err(bad());
    }
    let k = DeKernel {
        segment: segment as u64,
        inner: xs[d + 1..].iter().product::<usize>() as u64,
    };
    let input = cx.buf(x)?;
    let out = cx.output(node.outputs[0])?;
    let numel: usize = xs.iter().product();
    let units = numel / segment;
    if units == 0 {
        return Ok(());
    }
    let id = cx.jit.kernel(&k)?;
    let grain = (16384 / segment).max(1);
    call(cx, id, units, grain, vec![input], vec![numel, units], out)
}

fn grid_map(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let x = node.inputs[0];
    let xs = cx.shape(x)?;
    let grid = int(node, "grid")?;
    let cells = match node.op.attr("cells") {
        Some(Attr::Ints(c)) => c.clone(),
        _ => {
            return Err(BackError(format!(
                "`grid_map` at {} has no `cells`",
                node.path
            )))
        }
    };
    let per_row = grid * grid;
    let channels = xs.last().copied().unwrap_or(0);
    if channels == 0 || channels != cells.len() || cells.iter().any(|&c| !(0..per_row).contains(&c))
    {
        return Err(BackError(format!(
            "`grid_map` at {}: {} cells on a {grid} x {grid} grid do not fit input {xs:?}",
            node.path,
            cells.len()
        )));
    }
    let numel: usize = xs.iter().product();
    let rows = numel / channels;
    let input = cx.buf(x)?;
    let out = cx.output(node.outputs[0])?;
    if rows == 0 {
        return Ok(());
    }
    let k = GridKernel {
        cells,
        cells_per_row: per_row,
    };
    let id = cx.jit.kernel(&k)?;
    let grain = (4096 / per_row.max(1) as usize).max(1);
    call(
        cx,
        id,
        rows,
        grain,
        vec![input],
        vec![numel, rows * per_row as usize],
        out,
    )
}

#[cfg(test)]
mod tests;
