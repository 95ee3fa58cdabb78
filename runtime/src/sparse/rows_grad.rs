//! Weight gradients of the bag layers in their row layout: one contiguous
//! row per input id (`[V, out]` for `sparse_linear`, `[V, k, C]` for
//! `bag_conv1d`), zeroing and writing only the rows a step's ids touch.
//!
//! A step's output rows are **blocks** of [`BLOCK`] ids, so a thread owns
//! whole blocks. The kernel remembers, per block, which of its rows hold
//! a non-zero gradient from the previous run (a 64-bit mask) and the
//! address the block was written at. A run zeroes a row when it first
//! adds to it (the row is then in cache), marks it, and at the end zeroes
//! the rows the previous run wrote and this one did not. A block seen at
//! a new address (the first run, or the plan run by another executor) has
//! all its untouched rows zeroed. So the output is always the full dense
//! gradient (zero in every untouched row), at the cost of the touched
//! rows only.
//!
//! The output buffer must be kept for this step alone between runs (the
//! lowering places it in the persistent region) and be padded to whole
//! blocks.

use super::{bag_range, id};
use crate::plan::RowKernel;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Ids per output row of the step (one mask word).
pub const BLOCK: usize = 64;

/// `dW[v, j, :] = Σ values · dy[seq, t, :]` over the entries of id `v` in
/// bag `seq · t_in + p`, for every tap `j` with `t = p + pad - j` inside
/// `0..t_out` (the forward of [`super::BagConv`] read backwards);
/// `sparse_linear` is the case `k = 1`, `pad = 0`, `t_in = t_out = 1`.
/// Inputs: `indices`, `offsets`, `values` of `bags` bags, then `dy`
/// (`[bags / t_in, t_out, width]`). Output rows are blocks of [`BLOCK`]
/// ids, each id `k · width` wide.
#[derive(Debug)]
pub struct BagGradRows {
    /// Columns of the bags (rows of the gradient).
    pub vocab: usize,
    /// Taps.
    pub k: usize,
    /// Zero bags on each side.
    pub pad: usize,
    /// Bags per sequence.
    pub t_in: usize,
    /// Output positions per sequence.
    pub t_out: usize,
    /// Output features (the width of `dy`).
    pub width: usize,
    /// Bags in all.
    pub bags: usize,
    /// Per block: the rows holding a non-zero gradient (bit `r` for id
    /// `block · BLOCK + r`).
    dirty: Vec<AtomicU64>,
    /// Per block, during a run: the rows the previous run wrote.
    stale: Vec<AtomicU64>,
    /// Per block: the address its rows were last written at.
    at: Vec<AtomicUsize>,
}

impl BagGradRows {
    /// The kernel for these sizes, with no row known written.
    pub fn new(
        vocab: usize,
        (k, pad): (usize, usize),
        (t_in, t_out): (usize, usize),
        width: usize,
        bags: usize,
    ) -> BagGradRows {
        let blocks = vocab.div_ceil(BLOCK);
        BagGradRows {
            vocab,
            k,
            pad,
            t_in,
            t_out,
            width,
            bags,
            dirty: (0..blocks).map(|_| AtomicU64::new(0)).collect(),
            stale: (0..blocks).map(|_| AtomicU64::new(0)).collect(),
            at: (0..blocks).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    /// Output rows of the step (blocks).
    pub fn blocks(&self) -> usize {
        self.dirty.len()
    }

    /// Elements of one output row of the step (a block of ids).
    pub fn block_len(&self) -> usize {
        BLOCK * self.k * self.width
    }

    /// Starts a run on block `b` (stored at `rows`): moves the rows the
    /// previous run wrote to `stale` (every row if the block moved).
    fn start(&self, b: usize, rows: &[f32]) {
        let addr = rows.as_ptr() as usize;
        let written = self.dirty[b].swap(0, Ordering::Relaxed);
        let moved = self.at[b].swap(addr, Ordering::Relaxed) != addr;
        let stale = if moved { u64::MAX } else { written };
        self.stale[b].store(stale, Ordering::Relaxed);
    }

    /// Ends a run on block `b`: zeroes the stale rows this run did not
    /// write.
    fn finish(&self, b: usize, rows: &mut [f32]) {
        let row = self.k * self.width;
        let stale = self.stale[b].load(Ordering::Relaxed);
        let mut mask = stale & !self.dirty[b].load(Ordering::Relaxed);
        while mask != 0 {
            let r = mask.trailing_zeros() as usize;
            if let Some(dst) = rows.get_mut(r * row..(r + 1) * row) {
                dst.fill(0.0);
            }
            mask &= mask - 1;
        }
    }
}

impl RowKernel for BagGradRows {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let (indices, offsets, values, dy) = match inputs {
            [i, o, v, d, ..] => (*i, *o, *v, *d),
            _ => {
                return Err(format!(
                    "a bag layer's weight gradient reads 4 buffers, got {}",
                    inputs.len()
                ))
            }
        };
        let (c, k, row) = (self.width, self.k, self.k * self.width);
        let seqs = self.bags.checked_div(self.t_in).unwrap_or(0);
        if dy.len() < seqs * self.t_out * c {
            return Err(format!(
                "dy holds {} elements, [{seqs}, {}, {c}] needs {}",
                dy.len(),
                self.t_out,
                seqs * self.t_out * c
            ));
        }
        let n = out.len().checked_div(self.block_len()).unwrap_or(0);
        if first + n > self.blocks() {
            return Err(format!(
                "blocks {first}..{} past the {} blocks of {} ids",
                first + n,
                self.blocks(),
                self.vocab
            ));
        }
        for (b, rows) in out.chunks_exact(self.block_len()).enumerate() {
            self.start(first + b, rows);
        }
        let (lo, hi) = (first * BLOCK, ((first + n) * BLOCK).min(self.vocab));
        let add = |out: &mut [f32]| -> Result<(), String> {
            for bag in 0..self.bags {
                let (seq, p) = (bag / self.t_in, bag % self.t_in);
                // Output positions t = p + pad - j, for the taps j that land.
                let taps = (p + self.pad + 1).saturating_sub(self.t_out)..(p + self.pad + 1).min(k);
                for e in bag_range(bag, indices, offsets, values)? {
                    let i = id(indices[e]);
                    if i >= self.vocab {
                        return Err(format!(
                            "bag {bag} holds id {i}, outside the weight's {} rows",
                            self.vocab
                        ));
                    }
                    if i < lo || i >= hi {
                        continue;
                    }
                    let v = values[e];
                    let dst = &mut out[(i - lo) * row..(i - lo + 1) * row];
                    let bit = 1u64 << (i % BLOCK);
                    if self.dirty[i / BLOCK].fetch_or(bit, Ordering::Relaxed) & bit == 0 {
                        dst.fill(0.0);
                    }
                    for j in taps.clone() {
                        let t = seq * self.t_out + p + self.pad - j;
                        let src = &dy[t * c..(t + 1) * c];
                        for (o, &g) in dst[j * c..(j + 1) * c].iter_mut().zip(src) {
                            *o += v * g;
                        }
                    }
                }
            }
            Ok(())
        };
        // Stale rows are zeroed even when the bags are malformed, so the
        // masks stay true to the buffer.
        let r = add(out);
        for (b, rows) in out.chunks_exact_mut(self.block_len()).enumerate() {
            self.finish(first + b, rows);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bags of (id, value) pairs as plan buffers (ids as bit patterns).
    fn csr(bags: &[&[(u32, f32)]]) -> [Vec<f32>; 3] {
        let mut offsets = vec![f32::from_bits(0)];
        let (mut idx, mut val) = (Vec::new(), Vec::new());
        for b in bags {
            for &(i, v) in *b {
                idx.push(f32::from_bits(i));
                val.push(v);
            }
            offsets.push(f32::from_bits(idx.len() as u32));
        }
        [idx, offsets, val]
    }

    /// The dense gradient by the definition, `[V, k, C]`.
    fn reference(g: &BagGradRows, bags: &[&[(u32, f32)]], dy: &[f32]) -> Vec<f32> {
        let (k, c) = (g.k, g.width);
        let mut w = vec![0.0f32; g.vocab * k * c];
        for (bag, entries) in bags.iter().enumerate() {
            let (seq, p) = (bag / g.t_in, bag % g.t_in);
            for t in 0..g.t_out {
                for j in 0..k {
                    if t + j != p + g.pad {
                        continue;
                    }
                    for &(i, v) in *entries {
                        for ch in 0..c {
                            w[(i as usize * k + j) * c + ch] +=
                                v * dy[(seq * g.t_out + t) * c + ch];
                        }
                    }
                }
            }
        }
        w
    }

    /// Runs `g` over all blocks in two pieces (split at block `split`).
    fn run(g: &BagGradRows, bufs: &[Vec<f32>; 3], dy: &[f32], out: &mut [f32], split: usize) {
        let ins = [&bufs[0][..], &bufs[1], &bufs[2], dy];
        let (a, b) = out.split_at_mut(split * g.block_len());
        g.rows(0, &ins, a).unwrap();
        g.rows(split, &ins, b).unwrap();
    }

    /// Two runs over different ids on one buffer: the second leaves no
    /// trace of the first (its rows are zeroed), and each equals the
    /// dense definition; convolution taps and padding included.
    #[test]
    fn touched_rows_only_and_stale_rows_cleared() {
        let g = BagGradRows::new(150, (3, 1), (2, 2), 2, 4);
        let dy: Vec<f32> = (0..8).map(|v| v as f32 * 0.5 - 1.0).collect();
        let mut out = vec![f32::NAN; g.blocks() * g.block_len()];
        let first: [&[(u32, f32)]; 4] = [&[(3, 1.0), (140, 2.0)], &[(3, 1.0)], &[], &[(70, 0.5)]];
        let second: [&[(u32, f32)]; 4] = [&[(5, 1.0)], &[], &[(149, 1.0), (64, 3.0)], &[]];
        for bags in [&first, &second, &first] {
            run(&g, &csr(bags), &dy, &mut out, 1);
            let want = reference(&g, bags, &dy);
            assert_eq!(&out[..want.len()], &want[..]);
        }
        // A malformed batch fails after writing row 7; the next run still
        // leaves no trace of it, nor of the run before.
        let bad = csr(&[&[(7, 1.0), (150, 1.0)], &[], &[], &[]]);
        let ins = [&bad[0][..], &bad[1], &bad[2], &dy];
        assert!(g.rows(0, &ins, &mut out).is_err());
        run(&g, &csr(&second), &dy, &mut out, 1);
        let want = reference(&g, &second, &dy);
        assert_eq!(&out[..want.len()], &want[..]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let g = BagGradRows::new(10, (1, 0), (1, 1), 2, 1);
        let bufs = csr(&[&[(10, 1.0)]]);
        let mut out = vec![0.0f32; g.block_len()];
        let e = g
            .rows(0, &[&bufs[0], &bufs[1], &bufs[2], &[0.0, 0.0]], &mut out)
            .unwrap_err();
        assert!(e.contains("bag 0 holds id 10"), "{e}");
        let e = g
            .rows(0, &[&bufs[0], &bufs[1], &bufs[2], &[0.0]], &mut out)
            .unwrap_err();
        assert!(e.contains("dy holds 1"), "{e}");
    }
}
