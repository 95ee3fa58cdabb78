//! Strided copies: every data-movement op (`concat`, `stack`, `split`,
//! `permute`, `slice`, `select`, `frame`) is one or more copies from a
//! strided view of the input to a strided region of the output.
//!
//! A [`CopyKernel`] copies the elements of a box of `shape` from
//! `in[in_offset + Σ i_k·in_stride_k]` to `out[Σ i_k·out_stride_k]`.
//! [`CopyKernel::new`] drops size-1 dims and merges adjacent dims that are
//! contiguous in both views, then the innermost dim becomes the **row**
//! (at most [`ROW_MAX`] elements) and the others the **outer** dims.
//!
//! Kernel ABI ([`super::jit::KernelSource`]): a work unit is one row;
//! unit `u` is decomposed row-major over the outer sizes (one `udiv` /
//! `urem` per outer dim). A row whose input and output are both contiguous
//! is copied with f32x4 loads and stores plus a scalar tail; other rows
//! element by element. `inputs[0]` is the input's base, `out` the output's
//! base; offsets are absolute from those bases.

use super::jit::{Jit, KernelId, KernelSource};
use super::loops::{counted, elem, flags};
use super::BackError;
use cranelift_codegen::ir::{types, Block, InstBuilder, Type};
use cranelift_frontend::FunctionBuilder;
use std::fmt::Write as _;

/// The longest row a copy unit moves: longer contiguous runs are split so
/// that large copies still spread over threads.
pub const ROW_MAX: u64 = 16384;

/// One dim of a copy: its size and its strides (in elements) in the input
/// and the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CopyDim {
    /// Extent of the dim.
    pub size: u64,
    /// Input elements between consecutive indices.
    pub in_stride: u64,
    /// Output elements between consecutive indices.
    pub out_stride: u64,
}

/// A strided copy kernel (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CopyKernel {
    /// The outer dims, outermost first; a work unit is one index tuple.
    pub outer: Vec<CopyDim>,
    /// The row: the innermost dim.
    pub row: CopyDim,
    /// Input element of index 0.
    pub in_offset: u64,
}

impl CopyKernel {
    /// The copy of a box of `shape` from input strides `in_strides` (after
    /// `in_offset` elements) to output strides `out_strides`, with dims
    /// merged and the row chosen as the module docs describe.
    pub fn new(
        shape: &[usize],
        in_strides: &[usize],
        out_strides: &[usize],
        in_offset: usize,
    ) -> CopyKernel {
        let dims = shape
            .iter()
            .zip(in_strides.iter().zip(out_strides))
            .filter(|(s, _)| **s != 1)
            .map(|(&s, (&i, &o))| CopyDim {
                size: s as u64,
                in_stride: i as u64,
                out_stride: o as u64,
            });
        // Innermost first.
        let mut merged: Vec<CopyDim> = Vec::new();
        for d in dims.rev() {
            let is_row = merged.len() == 1;
            if let Some(last) = merged.last_mut() {
                let contiguous = last.in_stride * last.size == d.in_stride
                    && last.out_stride * last.size == d.out_stride;
                let row_full = is_row && last.size * d.size > ROW_MAX;
                if contiguous && !row_full {
                    last.size *= d.size;
                    continue;
                }
            }
            merged.push(d);
        }
        let mut row = merged.first().copied().unwrap_or(CopyDim {
            size: 1,
            in_stride: 1,
            out_stride: 1,
        });
        let mut outer: Vec<CopyDim> = merged.iter().skip(1).rev().copied().collect();
        if row.size > ROW_MAX {
            // Split a long row at the largest divisor that fits.
            if let Some(piece) = (ROW_MAX / 4..=ROW_MAX).rev().find(|p| row.size % p == 0) {
                outer.push(CopyDim {
                    size: row.size / piece,
                    in_stride: row.in_stride * piece,
                    out_stride: row.out_stride * piece,
                });
                row.size = piece;
            }
        }
        CopyKernel {
            outer,
            row,
            in_offset: in_offset as u64,
        }
    }

    /// Work units: the product of the outer sizes.
    pub fn units(&self) -> usize {
        self.outer.iter().map(|d| d.size as usize).product()
    }

    /// Input elements the copy can touch (from the input's base).
    pub fn in_extent(&self) -> usize {
        let last: u64 = self
            .outer
            .iter()
            .chain(std::iter::once(&self.row))
            .map(|d| (d.size - 1) * d.in_stride)
            .sum();
        (self.in_offset + last + 1) as usize
    }

    /// Output elements the copy can touch (from the output's base).
    pub fn out_extent(&self) -> usize {
        let last: u64 = self
            .outer
            .iter()
            .chain(std::iter::once(&self.row))
            .map(|d| (d.size - 1) * d.out_stride)
            .sum();
        (last + 1) as usize
    }

    /// Units worth giving one thread: about 16K elements.
    pub fn grain(&self) -> usize {
        (ROW_MAX / self.row.size.max(1)).max(1) as usize
    }

    /// Checks sizes (every size >= 1, every offset below 2^40).
    pub fn validate(&self) -> Result<(), BackError> {
        let dims = self.outer.iter().chain(std::iter::once(&self.row));
        if dims.clone().any(|d| d.size == 0) || self.in_extent() as u64 > (1 << 40) {
            return Err(BackError(format!(
                "copy kernel `{}`: sizes must be >= 1 and extents below 2^40",
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
}

impl KernelSource for CopyKernel {
    fn key(&self) -> String {
        let mut k = format!("copy.f32(off={};", self.in_offset);
        for d in &self.outer {
            let _ = write!(k, "{}:{}:{},", d.size, d.in_stride, d.out_stride);
        }
        let r = self.row;
        let _ = write!(k, "row={}:{}:{})", r.size, r.in_stride, r.out_stride);
        k
    }

    fn build(&self, b: &mut FunctionBuilder, entry: Block, ptr: Type) -> Result<(), BackError> {
        self.validate()?;
        let p = b.block_params(entry).to_vec();
        let (start, end, ins, out) = (p[0], p[1], p[2], p[3]);
        let src = b.ins().load(ptr, flags(), ins, 0);
        let i64t = types::I64;
        let row = self.row;
        counted(b, start, end, 1, &[], &[], |b, u, _| {
            let mut rem = u;
            let mut in_off = b.ins().iconst(i64t, self.in_offset as i64);
            let mut out_off = b.ins().iconst(i64t, 0);
            for (k, d) in self.outer.iter().enumerate().rev() {
                let idx = if k == 0 {
                    rem
                } else {
                    let size = b.ins().iconst(i64t, d.size as i64);
                    let idx = b.ins().urem(rem, size);
                    rem = b.ins().udiv(rem, size);
                    idx
                };
                let di = b.ins().imul_imm_s(idx, d.in_stride as i64);
                in_off = b.ins().iadd(in_off, di);
                let dout = b.ins().imul_imm_s(idx, d.out_stride as i64);
                out_off = b.ins().iadd(out_off, dout);
            }
            let s = elem(b, src, in_off, ptr);
            let o = elem(b, out, out_off, ptr);
            let zero = b.ins().iconst(i64t, 0);
            let len = b.ins().iconst(i64t, row.size as i64);
            if row.in_stride == 1 && row.out_stride == 1 {
                let vec_hi = b.ins().iconst(i64t, (row.size & !3) as i64);
                for (lo, hi, step, ty) in [
                    (zero, vec_hi, 4, types::F32X4),
                    (vec_hi, len, 1, types::F32),
                ] {
                    counted(b, lo, hi, step, &[], &[], |b, j, _| {
                        let a = elem(b, s, j, ptr);
                        let x = b.ins().load(ty, flags(), a, 0);
                        let a = elem(b, o, j, ptr);
                        b.ins().store(flags(), x, a, 0);
                        vec![]
                    });
                }
            } else {
                counted(b, zero, len, 1, &[], &[], |b, j, _| {
                    let ji = b.ins().imul_imm_s(j, row.in_stride as i64);
                    let a = elem(b, s, ji, ptr);
                    let x = b.ins().load(types::F32, flags(), a, 0);
                    let jo = b.ins().imul_imm_s(j, row.out_stride as i64);
                    let a = elem(b, o, jo, ptr);
                    b.ins().store(flags(), x, a, 0);
                    vec![]
                });
            }
            vec![]
        });
        b.ins().return_(&[]);
        Ok(())
    }
}
