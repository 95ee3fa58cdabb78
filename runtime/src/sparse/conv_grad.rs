//! The weight gradient of the convolution over sequences of bags
//! ([`super::BagConv`]), dense and in `nn.Conv1d`'s `[C, V, k]` layout.
//!
//! A row of the step is one output channel (`V · k` wide), so threads own
//! disjoint channels and need no scratch or reduction; every thread walks
//! all bag entries and adds, for its channels, `value · dy` of each output
//! position the entry feeds. The `k` taps of an entry are adjacent in a
//! channel's row, so an entry touches one cache line per channel; the
//! channels go in blocks of a few, one pass over the entries per block,
//! so the rows being scattered into stay in cache.

use super::{bag_range, id};
use crate::plan::RowKernel;

/// `dW[c, v, j] = Σ_seq Σ_t dy[seq, t, c] · Σ values` over the entries of
/// id `v` in bag `seq · t_in + t + j - pad` (the forward of
/// [`super::BagConv`] read backwards). Inputs: `indices`, `offsets`,
/// `values` of `bags = seqs · t_in` bags, then `dy` (`[seqs, t_out, C]`).
/// Output rows are channels, `vocab · k` wide.
#[derive(Clone, Debug)]
pub struct BagConvGradWeight {
    /// Columns of the bags.
    pub vocab: usize,
    /// Taps.
    pub k: usize,
    /// Zero bags on each side.
    pub pad: usize,
    /// Bags per sequence.
    pub t_in: usize,
    /// Output positions per sequence.
    pub t_out: usize,
    /// Output channels (rows of `dy`).
    pub channels: usize,
    /// Bags in all (sequences · `t_in`).
    pub bags: usize,
}

/// Channels accumulated in one pass over the bag entries: their rows
/// (`V · k` each) are the pass's working set, small enough to stay in
/// cache while the entries scatter into them.
const CHANNEL_BLOCK: usize = 8;

impl BagConvGradWeight {
    /// Adds every entry's terms to `block`, the rows of the channels from
    /// `first` on; `bufs` are `indices`, `offsets`, `values` and `dy`.
    fn add_block(&self, first: usize, block: &mut [f32], bufs: [&[f32]; 4]) -> Result<(), String> {
        let [indices, offsets, values, dy] = bufs;
        let (vk, c, k) = (self.vocab * self.k, self.channels, self.k);
        for bag in 0..self.bags {
            let (seq, p) = (bag / self.t_in, bag % self.t_in);
            // Output positions t = p + pad - j, for the taps j that land.
            let taps = (p + self.pad + 1).saturating_sub(self.t_out)..(p + self.pad + 1).min(k);
            for e in bag_range(bag, indices, offsets, values)? {
                let i = id(indices[e]);
                if i >= self.vocab {
                    return Err(format!(
                        "bag {bag} holds id {i}, outside the weight's {} columns",
                        self.vocab
                    ));
                }
                let v = values[e];
                // dy of channel `first` at output position t = p + pad - j.
                let at = |j: usize| (seq * self.t_out + p + self.pad - j) * c + first;
                for (ch, row) in block.chunks_exact_mut(vk).enumerate() {
                    let dst = &mut row[i * k..(i + 1) * k];
                    for j in taps.clone() {
                        dst[j] += v * dy[at(j) + ch];
                    }
                }
            }
        }
        Ok(())
    }
}

impl RowKernel for BagConvGradWeight {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let (vk, c) = (self.vocab * self.k, self.channels);
        let (indices, offsets, values, dy) = match inputs {
            [i, o, v, d, ..] => (*i, *o, *v, *d),
            _ => {
                return Err(format!(
                    "a bag convolution's weight gradient reads 4 buffers, got {}",
                    inputs.len()
                ))
            }
        };
        let seqs = self.bags.checked_div(self.t_in).unwrap_or(0);
        if dy.len() < seqs * self.t_out * c {
            return Err(format!(
                "dy holds {} elements, [{seqs}, {}, {c}] needs {}",
                dy.len(),
                self.t_out,
                seqs * self.t_out * c
            ));
        }
        let rows = out.len().checked_div(vk).unwrap_or(0);
        if rows == 0 {
            return Ok(());
        }
        if first + rows > c {
            return Err(format!(
                "channels {first}..{} past the {c} channels",
                first + rows
            ));
        }
        let out = &mut out[..rows * vk];
        out.fill(0.0);
        for (b, block) in out.chunks_mut(CHANNEL_BLOCK * vk).enumerate() {
            self.add_block(
                first + b * CHANNEL_BLOCK,
                block,
                [indices, offsets, values, dy],
            )?;
        }
        Ok(())
    }
}
