//! Lowering of `sum` and `mean` over any dims (keepdim or not) to one
//! `ReduceKernel` call.
//!
//! The input's dims are classified kept or reduced; size-1 dims are
//! dropped and neighbours of the same class merged (row-major, so a merged
//! group is one size and one stride). A work unit is one output element:
//! its kept index gives a base offset, then nested loops walk the reduced
//! groups. An innermost reduced group of stride 1 (the last dims, e.g.
//! H·W of a per-channel `[0, 2, 3]` sum) is summed with f32x4 lanes per
//! chunk (`super::rows::fold_row`); other groups element by element.
//! A leading-dims sum (one reduced group outside a contiguous kept group
//! at least 4 wide, e.g. a bias gradient `sum(dy, 0)` of `[N, F]`) runs
//! in columns mode instead: a work unit is four adjacent outputs, read
//! with f32x4 loads row after row, in f32 per chunk of rows and in f64
//! across chunks; a last block narrower than 4 goes element by element.
//! A sum over the dims around one contiguous kept group (a per-channel
//! `[0, 2, 3]` sum of NCHW) runs as two kernels through an `[N, C]`
//! scratch: over each image's pixels, then columns mode over the images.
//! A leading-dims sum over many rows of a few hundred columns (the bias
//! gradient of a channels-last convolution, `[N, H, W, C]` over
//! `[0, 1, 2]`) also runs as two kernels: columns mode over blocks of
//! [`ROW_BLOCK`] rows into a scratch row per block, then over the blocks.
//! Everything is accumulated in f64 and rounded once per kernel; `mean`
//! divides in f64 by the reduced count (0/0 = NaN for an empty
//! reduction, as PyTorch).

use super::data::call;
use super::rows::{fold_row, input, store_f64, CHUNK};
use super::LowerCx;
use crate::back::jit::KernelSource;
use crate::back::loops::{counted, elem, flags, smin};
use crate::back::BackError;
use crate::ir::{Attr, Node};
use cranelift_codegen::ir::{condcodes::IntCC, types, Block, InstBuilder, Type, Value};
use cranelift_frontend::FunctionBuilder;
use netc_runtime::plan::Buf;

/// Rows per block of a two-kernel leading-dims sum
/// ([`ReduceKernel::row_blocks`]): 64 rows of 256 columns are 64 KB.
const ROW_BLOCK: usize = 64;

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

    /// The innermost kept group's size when output columns are reduced
    /// four at a time: it is contiguous (stride 1), at least 4 wide, and
    /// one reduced group lies outside it (a leading-dims sum).
    fn columns(&self) -> Option<u64> {
        match (self.kept.last(), &self.reduced[..]) {
            (Some(&(len, 1)), [(_, stride)]) if len >= 4 && *stride > 1 => Some(len),
            _ => None,
        }
    }

    /// `[N, C, P]` when this reduces the dims around one contiguous kept
    /// group (`C` channels of `P` elements, a per-channel sum of NCHW
    /// `[N, C, H, W]` over `[0, 2, 3]`), with `N > 1` and `C >= 4`. As
    /// one kernel each output would gather `N` runs of `P` elements
    /// `C·P` apart (1.3 GFLOP/s on eeg_ccnn's bias gradients); as two
    /// (over `P`, then over `N` in columns mode) both read memory in
    /// order.
    fn around_kept(&self) -> Option<[usize; 3]> {
        match (&self.kept[..], &self.reduced[..]) {
            ([(c, kept_stride)], [(n, outer), (p, 1)])
                if *kept_stride == *p && *outer == c * p && *n > 1 && *c >= 4 =>
            {
                Some([*n as usize, *c as usize, *p as usize])
            }
            _ => None,
        }
    }

    /// `[rows, columns]` when this sums `rows` rows of one contiguous
    /// kept group of `columns` (a leading-dims sum) and the rows split
    /// into blocks of `block` rows, `block` the largest divisor of `rows`
    /// up to [`ROW_BLOCK`] and at least a quarter of it. As one columns
    /// kernel, each unit walks all rows for four columns, so every cache
    /// line is fetched once per unit of its columns (eeg_ccnn's
    /// channels-last bias gradients, 20736 rows of 256: 3.3 GB/s); over
    /// blocks of rows a block stays in cache for all its units.
    fn row_blocks(&self) -> Option<[usize; 3]> {
        match (&self.kept[..], &self.reduced[..]) {
            ([(columns, 1)], [(rows, stride)])
                if stride == columns && *columns >= 16 && *rows >= 4 * ROW_BLOCK as u64 =>
            {
                let rows = *rows as usize;
                let block = (ROW_BLOCK / 4..=ROW_BLOCK)
                    .rev()
                    .find(|b| rows.is_multiple_of(*b))?;
                Some([rows, *columns as usize, block])
            }
            _ => None,
        }
    }

    /// Output elements.
    fn outputs(&self) -> usize {
        self.kept.iter().map(|g| g.0 as usize).product()
    }

    /// Work units: output elements, or blocks of four columns.
    fn units(&self) -> usize {
        match self.columns() {
            Some(len) => self.outputs() / len as usize * len.div_ceil(4) as usize,
            None => self.outputs(),
        }
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
        if let Some(len) = self.columns() {
            self.build_columns(b, ptr, [start, end, x, out], len);
            return Ok(());
        }
        counted(b, start, end, 1, &[], &[], |b, u, _| {
            let off = self.offset(b, u, &self.kept);
            let z = b.ins().f64const(0.0);
            let s = self.emit(b, ptr, x, 0, off, z);
            self.finish(b, ptr, s, out, u);
            vec![]
        });
        b.ins().return_(&[]);
        Ok(())
    }
}

impl ReduceKernel {
    /// The input offset of kept index `u` (row-major over `kept`).
    fn offset(&self, b: &mut FunctionBuilder, u: Value, kept: &[(u64, u64)]) -> Value {
        let mut rem = u;
        let mut off = b.ins().iconst(types::I64, 0);
        for (k, &(size, stride)) in kept.iter().enumerate().rev() {
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
        off
    }

    /// Scales the f64 sum `s` and stores it at output `o`.
    fn finish(&self, b: &mut FunctionBuilder, ptr: Type, s: Value, out: Value, o: Value) {
        let s = match self.scale {
            Some(f) => {
                let f = b.ins().f64const(f);
                b.ins().fmul(s, f)
            }
            None => s,
        };
        store_f64(b, s, out, o, ptr);
    }

    /// Columns mode: unit `u` is block `u % blocks` of four columns of
    /// kept row `u / blocks`, summed over the reduced group with f32x4
    /// loads in chunks of [`CHUNK`] rows, each chunk added in f64; the last
    /// block of a width not a multiple of 4 goes column by column.
    fn build_columns(&self, b: &mut FunctionBuilder, ptr: Type, p: [Value; 4], len: u64) {
        let [start, end, x, out] = p;
        let blocks = len.div_ceil(4) as i64;
        let (rows, stride) = self.reduced[0];
        let outer = &self.kept[..self.kept.len() - 1];
        counted(b, start, end, 1, &[], &[], |b, u, _| {
            let row = b.ins().udiv_imm_u(u, blocks);
            let blk = b.ins().urem_imm_u(u, blocks);
            let col = b.ins().imul_imm_s(blk, 4);
            let off = self.offset(b, row, outer);
            let off = b.ins().iadd(off, col);
            let o = b.ins().imul_imm_s(row, len as i64);
            let o = b.ins().iadd(o, col);
            let (vector, tail, join) = (b.create_block(), b.create_block(), b.create_block());
            if len.is_multiple_of(4) {
                b.ins().jump(vector, &[]);
            } else {
                let last = b.ins().icmp_imm_s(IntCC::Equal, blk, blocks - 1);
                b.ins().brif(last, tail, &[], vector, &[]);
            }
            b.switch_to_block(vector);
            let zero = b.ins().iconst(types::I64, 0);
            let n = b.ins().iconst(types::I64, rows as i64);
            let z = b.ins().f64const(0.0);
            let acc = counted(
                b,
                zero,
                n,
                CHUNK,
                &[z; 4],
                &[types::F64; 4],
                |b, r0, acc| {
                    let r1 = b.ins().iadd_imm_s(r0, CHUNK);
                    let r1 = smin(b, r1, n);
                    let zf = b.ins().f32const(0.0);
                    let zv = b.ins().splat(types::F32X4, zf);
                    let v = counted(b, r0, r1, 1, &[zv], &[types::F32X4], |b, r, v| {
                        let e = b.ins().imul_imm_s(r, stride as i64);
                        let e = b.ins().iadd(e, off);
                        let a = elem(b, x, e, ptr);
                        let l = b.ins().load(types::F32X4, flags(), a, 0);
                        vec![b.ins().fadd(v[0], l)]
                    })[0];
                    (0..4)
                        .map(|t| {
                            let l = b.ins().extractlane(v, t as u8);
                            let l = b.ins().fpromote(types::F64, l);
                            b.ins().fadd(acc[t], l)
                        })
                        .collect()
                },
            );
            for (t, s) in acc.into_iter().enumerate() {
                let ot = b.ins().iadd_imm_s(o, t as i64);
                self.finish(b, ptr, s, out, ot);
            }
            b.ins().jump(join, &[]);
            b.switch_to_block(tail);
            for t in 0..(len % 4) as i64 {
                let ot = b.ins().iadd_imm_s(off, t);
                let z = b.ins().f64const(0.0);
                let s = self.emit(b, ptr, x, 0, ot, z);
                let ot = b.ins().iadd_imm_s(o, t);
                self.finish(b, ptr, s, out, ot);
            }
            b.ins().jump(join, &[]);
            b.switch_to_block(join);
            vec![]
        });
        b.ins().return_(&[]);
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
    if let Some([n, c, p]) = k.around_kept() {
        // Pixels first, image by image in memory order, into `[N, C]`
        // scratch; then the images, four channels at a time.
        let partial = cx.scratch(n * c);
        let inner = ReduceKernel::new(&[n, c, p], &[2], None);
        emit_kernel(cx, &inner, input, n * c * p, partial)?;
        let outer = ReduceKernel::new(&[n, c], &[0], scale);
        return emit_kernel(cx, &outer, partial, n * c, out);
    }
    if let Some([rows, columns, block]) = k.row_blocks() {
        // Blocks of rows into `[rows / block, columns]` scratch, then the
        // blocks.
        let blocks = rows / block;
        let partial = cx.scratch(blocks * columns);
        let inner = ReduceKernel::new(&[blocks, block, columns], &[1], None);
        emit_kernel(cx, &inner, input, rows * columns, partial)?;
        let outer = ReduceKernel::new(&[blocks, columns], &[0], scale);
        return emit_kernel(cx, &outer, partial, blocks * columns, out);
    }
    emit_kernel(cx, &k, input, xs.iter().product(), out)
}

/// One call of `k` over `numel` elements of `input` into `out`.
fn emit_kernel(
    cx: &mut LowerCx,
    k: &ReduceKernel,
    input: Buf,
    numel: usize,
    out: Buf,
) -> Result<(), BackError> {
    let units = k.units();
    if units == 0 {
        return Ok(());
    }
    let outputs = k.outputs();
    let id = cx.jit.kernel(k)?;
    let per_unit = k.count() * if k.columns().is_some() { 4 } else { 1 };
    let grain = (16384 / per_unit.max(1)).max(1) as usize;
    call(cx, id, units, grain, vec![input], vec![numel, outputs], out)
}

#[cfg(test)]
mod tests;
