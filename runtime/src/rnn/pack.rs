//! The LSTM weights re-laid-out for the AVX-512 kernels ([`LstmPack`]),
//! once per weight load (a prepare step) rather than once per call.
//!
//! **Forward** (`W_ih [4H, D]`, `W_hh [4H, H]`, `b_ih`, `b_hh`): panels of 16 hidden units
//! `16c..16c+16`; in panel `c`, for input `k`, the 64 weights of gates
//! `(i, f, g, o)` for those units side by side:
//! `ih[((c·D + k)·4 + gate)·16 + l]`, then the same for `W_hh` over `H`
//! inputs, then `b_ih + b_hh` the same way (64 per panel, [`bias_at`]).
//! A panel of one matrix is `64·D` floats (32 KiB at 128): a tile streams
//! it contiguously and it stays in L1 across the tiles of a block.
//!
//! **Backward** (`W_hh` only): panels of 16 hidden units by the `4H` gate
//! rows, `bw[(c·4H + k)·16 + l] = W_hh[k, 16c + l]`, with the panel count
//! rounded up to a multiple of 4 (a backward tile covers 64 units).
//!
//! Units past `H` get zero weights everywhere.

use super::operand;
use crate::plan::RowKernel;

/// Floats in a zmm register (units per panel).
pub(super) const LANES: usize = 16;

/// Elements of the forward packing for hidden size `hidden` and input
/// size `input`.
pub fn forward_len(hidden: usize, input: usize) -> usize {
    hidden.div_ceil(LANES) * (input + hidden + 1) * 4 * LANES
}

/// Where gate row `u` of `b_ih + b_hh` sits in the forward packing.
pub(super) fn bias_at(hidden: usize, input: usize, u: usize) -> usize {
    let nc = hidden.div_ceil(LANES);
    let (gate, j) = (u / hidden.max(1), u % hidden.max(1));
    nc * (input + hidden) * 4 * LANES + ((j / LANES) * 4 + gate) * LANES + j % LANES
}

/// Elements of the backward packing for hidden size `hidden`.
pub fn backward_len(hidden: usize) -> usize {
    backward_units(hidden) * 4 * hidden
}

/// Hidden units of the backward packing: `H` rounded up to 64.
pub(super) fn backward_units(hidden: usize) -> usize {
    hidden.div_ceil(4 * LANES) * 4 * LANES
}

/// Which packing an [`LstmPack`] step writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackFor {
    /// Inputs `W_ih`, `W_hh`, `b_ih`, `b_hh`; [`forward_len`] elements.
    Forward,
    /// Input `W_hh`; [`backward_len`] elements.
    Backward,
}

/// Packs the LSTM weights (module docs) into one output row.
#[derive(Clone, Debug)]
pub struct LstmPack {
    /// Hidden size `H`.
    pub hidden: usize,
    /// Input size `D` (unused by the backward packing).
    pub input: usize,
    /// Which packing.
    pub dir: PackFor,
}

/// Writes `w [4H, d]` as forward panels into `dst` (`nc·d·64` elements).
fn panels(w: &[f32], h: usize, d: usize, dst: &mut [f32]) {
    dst.fill(0.0);
    for (u, row) in w.chunks_exact(d.max(1)).take(4 * h).enumerate() {
        let (gate, j) = (u / h, u % h);
        let (c, l) = (j / LANES, j % LANES);
        let at = c * d * 4 * LANES + gate * LANES + l;
        for (k, &v) in row.iter().enumerate() {
            dst[at + k * 4 * LANES] = v;
        }
    }
}

impl RowKernel for LstmPack {
    fn rows(&self, _first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let (h, d) = (self.hidden, self.input);
        match self.dir {
            PackFor::Forward => {
                let w_ih = operand(inputs, 0, 4 * h * d, "weight_ih")?;
                let w_hh = operand(inputs, 1, 4 * h * h, "weight_hh")?;
                let b_ih = operand(inputs, 2, 4 * h, "bias_ih")?;
                let b_hh = operand(inputs, 3, 4 * h, "bias_hh")?;
                let nc = h.div_ceil(LANES);
                let out = out
                    .get_mut(..forward_len(h, d))
                    .ok_or("the packed weights do not fit")?;
                let (ih, rest) = out.split_at_mut(nc * d * 4 * LANES);
                let (hh, bias) = rest.split_at_mut(nc * h * 4 * LANES);
                panels(w_ih, h, d, ih);
                panels(w_hh, h, h, hh);
                bias.fill(0.0);
                let b0 = bias_at(h, d, 0);
                for (u, (&x, &y)) in b_ih.iter().zip(b_hh).enumerate() {
                    bias[bias_at(h, d, u) - b0] = x + y;
                }
            }
            PackFor::Backward => {
                let w_hh = operand(inputs, 0, 4 * h * h, "weight_hh")?;
                let g4 = 4 * h;
                let out = out
                    .get_mut(..backward_len(h))
                    .ok_or("the packed weights do not fit")?;
                out.fill(0.0);
                for (k, row) in w_hh.chunks_exact(h.max(1)).take(g4).enumerate() {
                    for (j, &v) in row.iter().enumerate() {
                        out[((j / LANES) * g4 + k) * LANES + j % LANES] = v;
                    }
                }
            }
        }
        Ok(())
    }
}
