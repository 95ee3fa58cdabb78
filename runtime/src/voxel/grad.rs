//! The backward of the sparse convolutions, on the forward's rule books
//! (`super`), without float atomics: every output element is summed by one
//! thread in a fixed order, so results do not depend on the thread count.
//!
//! - [`InvertRuleBook`]: per input row and kernel offset, the output row
//!   that read it (each offset maps output rows to input rows one to one,
//!   so the inverse is again a table). Its layout is a rule book's without
//!   coordinates or grid: the input-site count in element 0, the table at
//!   [`COORDS_AT`](super::COORDS_AT).
//! - The input gradient is then an ordinary [`VoxelConv`](super::VoxelConv)
//!   over the inverse table with each offset's weight block transposed
//!   ([`BlockTranspose`], a prepare step).
//! - [`VoxelGradWeight`]: per kernel offset (the unit threads split), the
//!   sum over the output rows of `x[in]ᵀ · dy[out]`, as `[volume, cin,
//!   cout]`; the lowering transposes it to the weight's layout.
//! - [`SumRows`]: the bias gradient, the output gradient's rows summed up
//!   to the rule book's count.

use super::{on_pool, site_count, COORDS_AT};
use crate::plan::RowKernel;
use rayon::prelude::*;

/// Builds the inverse table of a rule book (see the module docs). Input:
/// the forward rule book, whose element 1 holds its input-site count.
#[derive(Clone, Debug)]
pub struct InvertRuleBook {
    /// Kernel offsets.
    pub volume: usize,
    /// Where the forward book's table starts.
    pub pairs_at: usize,
    /// The most input sites (the rows the inverse table has room for).
    pub in_bound: usize,
}

impl InvertRuleBook {
    /// Elements of the inverse book.
    pub fn elements(&self) -> usize {
        COORDS_AT + self.in_bound * self.volume
    }
}

impl RowKernel for InvertRuleBook {
    fn rows(&self, _: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let vol = self.volume;
        let book = inputs.first().copied().unwrap_or(&[]);
        let n_out = site_count(book)?;
        let n_in = book.get(1).map_or(0, |c| c.to_bits() as usize);
        if n_in > self.in_bound || out.len() < COORDS_AT + n_in * vol {
            return Err(format!(
                "{n_in} input sites, more than the {} the inverse rule book holds",
                self.in_bound
            ));
        }
        let pairs = book
            .get(self.pairs_at..self.pairs_at + n_out * vol)
            .ok_or_else(|| format!("the rule book does not hold {n_out} sites"))?;
        let (head, table) = out.split_at_mut(COORDS_AT);
        let table = &mut table[..n_in * vol];
        table.fill(0.0);
        for (o, row) in pairs.chunks_exact(vol.max(1)).enumerate() {
            for (k, p) in row.iter().enumerate() {
                let j = p.to_bits() as usize;
                if j == 0 {
                    continue;
                }
                let slot = table.get_mut((j - 1) * vol + k).ok_or_else(|| {
                    format!("the rule book reads input row {}, past {n_in}", j - 1)
                })?;
                *slot = f32::from_bits(o as u32 + 1);
            }
        }
        head[0] = f32::from_bits(n_in as u32);
        Ok(())
    }
}

/// `[blocks, rows, cols]` to `[blocks, cols, rows]`: the forward's packed
/// weight (`[volume, cin, cout]`) as the input gradient's (`[volume, cout,
/// cin]`).
#[derive(Clone, Debug)]
pub struct BlockTranspose {
    /// Blocks (kernel offsets).
    pub blocks: usize,
    /// Rows of an input block.
    pub rows: usize,
    /// Columns of an input block.
    pub cols: usize,
}

impl RowKernel for BlockTranspose {
    fn rows(&self, _: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let (r, c) = (self.rows, self.cols);
        let n = self.blocks * r * c;
        let x = inputs.first().copied().unwrap_or(&[]);
        let (Some(x), Some(out)) = (x.get(..n), out.get_mut(..n)) else {
            return Err(format!(
                "a block transpose of {n} elements past its buffers"
            ));
        };
        for (src, dst) in x.chunks_exact(r * c).zip(out.chunks_exact_mut(r * c)) {
            for i in 0..r {
                for j in 0..c {
                    dst[j * r + i] = src[i * c + j];
                }
            }
        }
        Ok(())
    }
}

/// The weight gradient `[volume, cin, cout]` of a sparse conv. Inputs:
/// the output gradient (`[bound, cout]`), the input features (`[M, cin]`)
/// and the rule book.
#[derive(Clone, Debug)]
pub struct VoxelGradWeight {
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel offsets.
    pub volume: usize,
    /// Where the rule book's table starts.
    pub pairs_at: usize,
    /// Threads the plan was compiled for ([`RowKernel::threads`]).
    pub threads: usize,
}

impl RowKernel for VoxelGradWeight {
    fn rows(&self, _: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let (cin, cout, vol) = (self.cin, self.cout, self.volume);
        let [dy, x, book, ..] = inputs else {
            return Err("a voxel weight gradient reads 3 buffers".into());
        };
        let n = site_count(book)?;
        let pairs = book
            .get(self.pairs_at..self.pairs_at + n * vol)
            .ok_or_else(|| format!("the rule book does not hold {n} sites"))?;
        let dy = dy
            .get(..n * cout)
            .ok_or_else(|| format!("the output gradient holds fewer than {n} rows"))?;
        let rows_in = x.len().checked_div(cin).unwrap_or(0);
        if pairs.iter().any(|p| p.to_bits() as usize > rows_in) {
            return Err(format!("the rule book reads past the {rows_in} input rows"));
        }
        let block = cin * cout;
        let out = out
            .get_mut(..vol * block)
            .ok_or_else(|| "the weight gradient is too small".to_string())?;
        let offset = |(k, acc): (usize, &mut [f32])| {
            acc.fill(0.0);
            for (o, g) in dy.chunks_exact(cout.max(1)).enumerate() {
                let j = pairs[o * vol + k].to_bits() as usize;
                if j == 0 {
                    continue;
                }
                let xr = &x[(j - 1) * cin..j * cin];
                for (&a, row) in xr.iter().zip(acc.chunks_exact_mut(cout)) {
                    for (r, &b) in row.iter_mut().zip(g) {
                        *r += a * b;
                    }
                }
            }
        };
        if block == 0 {
            return Ok(());
        }
        if on_pool() {
            out.par_chunks_mut(block).enumerate().for_each(offset);
        } else {
            out.chunks_mut(block).enumerate().for_each(offset);
        }
        Ok(())
    }

    fn threads(&self) -> usize {
        self.threads
    }
}

/// The first `count` rows of `width` elements of input 0 summed, `count`
/// being the site count of the rule book in input 1 (a sparse conv's bias
/// gradient).
#[derive(Clone, Debug)]
pub struct SumRows {
    /// Elements per row.
    pub width: usize,
}

impl RowKernel for SumRows {
    fn rows(&self, _: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let [src, book, ..] = inputs else {
            return Err("a row sum reads 2 buffers".into());
        };
        let n = site_count(book)?;
        let (Some(src), Some(out)) = (src.get(..n * self.width), out.get_mut(..self.width)) else {
            return Err(format!("{n} rows of {} are past the buffers", self.width));
        };
        out.fill(0.0);
        for row in src.chunks_exact(self.width.max(1)) {
            for (o, &v) in out.iter_mut().zip(row) {
                *o += v;
            }
        }
        Ok(())
    }
}
