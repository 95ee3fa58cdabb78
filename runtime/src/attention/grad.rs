//! The backward of [`Attention`] (training plans) in two row steps, the
//! way flash-attention 2 splits it, and copies out of their rows:
//!
//! - [`QueryGrad`]: a row per query token `i`, `[dq_i (C) | (m, 1/Σ, D)
//!   per head]`. Per head the probabilities `p_ij = e^(s_ij − m_i) / Σ`
//!   are recomputed (`s` the scaled logits, `m` their maximum), `dp_ij =
//!   dout_i·v_j`, `D_i = Σ_j p_ij·dp_ij`, `ds_ij = scale·p_ij·(dp_ij −
//!   D_i)` and `dq_i = Σ_j ds_ij·k_j`; the row keeps `m_i`, `1/Σ` and
//!   `D_i` for the second step.
//! - [`KeyGrad`]: a row per key token `j`, `[dk_j (C) | dv_j (Cv)]`: with
//!   the first step's statistics `p_ij` and `ds_ij` are recomputed per key
//!   and `dv_j = Σ_i p_ij·dout_i`, `dk_j = Σ_i ds_ij·q_i`.
//! - [`Unpack`]: copies one block of those rows to its own tensor.
//!
//! Each call owns its rows, so both steps split over threads by tokens
//! (at batch 1 too) without atomics, and a row's arithmetic does not
//! depend on where the rows were split: the results are deterministic.
//! Where the CPU has AVX-512F both steps run as intrinsics over 16-key
//! blocks (`avx512`: the forward's passes and exponential, so the second
//! step recomputes the first's `p` bit for bit); elsewhere as the scalar
//! loops of `portable`.

use super::{blocked, by_item, check_lengths, wants_avx512, Attention};
use crate::plan::RowKernel;

#[cfg(target_arch = "x86_64")]
mod avx512;
mod portable;
#[cfg(test)]
mod tests;

/// Statistics per head in a [`QueryGrad`] row: the logits' maximum, the
/// reciprocal of the weights' sum and `D = Σ_j p_j·dp_j`.
const STATS: usize = 3;

/// The first step: `dq` and the softmax statistics, a row per query
/// token. Inputs: `dout`, `q`, `k`, `v`.
#[derive(Clone, Debug)]
pub struct QueryGrad {
    /// The forward call (sizes, heads, scale).
    pub attention: Attention,
}

impl QueryGrad {
    /// Floats per row: `C` of `dq`, then [`STATS`] per head.
    pub fn width(&self) -> usize {
        self.attention.dim + STATS * self.attention.heads
    }

    /// [`RowKernel::rows`] on the AVX-512 path where `avx512` asks for it
    /// and the CPU has it, else on the portable one.
    fn rows_on(
        &self,
        avx512: bool,
        first: usize,
        inputs: &[&[f32]],
        out: &mut [f32],
    ) -> Result<(), String> {
        let a = &self.attention;
        let (l, s, c, cv) = (a.queries, a.keys, a.dim, a.value_dim);
        a.head_widths()?;
        let w = self.width();
        if l == 0 {
            return Ok(());
        }
        let rows = out.len() / w;
        let items = (first + rows).div_ceil(l);
        let need = [
            (first + rows) * cv,
            (first + rows) * c,
            items * s * c,
            items * s * cv,
        ];
        check_lengths(&["dout", "q", "k", "v"], inputs, &need)?;
        let (dout, q, k, v) = (inputs[0], inputs[1], inputs[2], inputs[3]);
        let avx512 = wants_avx512(avx512, s);
        by_item(first, l, w, &mut out[..rows * w], |b, r, o| {
            let (lo, hi) = (b * l + r.start, b * l + r.end);
            let (q, dout) = (&q[lo * c..hi * c], &dout[lo * cv..hi * cv]);
            let (k, v) = (
                &k[b * s * c..(b + 1) * s * c],
                &v[b * s * cv..(b + 1) * s * cv],
            );
            #[cfg(target_arch = "x86_64")]
            if avx512 {
                // SAFETY: the CPU has AVX-512F.
                blocked(k, v, (c, cv), 16, |keys| unsafe {
                    avx512::query_rows(a, q, dout, keys, o)
                });
                return;
            }
            portable::query_rows(a, q, dout, (k, v), o);
        });
        Ok(())
    }
}

impl RowKernel for QueryGrad {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        self.rows_on(true, first, inputs, out)
    }
}

/// The second step: `dk` and `dv`, a row per key token. Inputs: `dout`,
/// `q`, `k`, `v` and the [`QueryGrad`] rows.
#[derive(Clone, Debug)]
pub struct KeyGrad {
    /// The forward call (sizes, heads, scale).
    pub attention: Attention,
}

impl KeyGrad {
    /// Floats per row: `C` of `dk`, then `Cv` of `dv`.
    pub fn width(&self) -> usize {
        self.attention.dim + self.attention.value_dim
    }

    /// [`RowKernel::rows`] on the AVX-512 path where `avx512` asks for it
    /// and the CPU has it, else on the portable one.
    fn rows_on(
        &self,
        avx512: bool,
        first: usize,
        inputs: &[&[f32]],
        out: &mut [f32],
    ) -> Result<(), String> {
        let a = &self.attention;
        let (l, s, c, cv) = (a.queries, a.keys, a.dim, a.value_dim);
        a.head_widths()?;
        let (w, qw) = (
            self.width(),
            QueryGrad {
                attention: a.clone(),
            }
            .width(),
        );
        if s == 0 || w == 0 {
            return Ok(());
        }
        let rows = out.len() / w;
        let items = (first + rows).div_ceil(s);
        let need = [
            items * l * cv,
            items * l * c,
            (first + rows) * c,
            (first + rows) * cv,
            items * l * qw,
        ];
        check_lengths(&["dout", "q", "k", "v", "the dq rows"], inputs, &need)?;
        let (dout, q, k, v, stats) = (inputs[0], inputs[1], inputs[2], inputs[3], inputs[4]);
        let avx512 = wants_avx512(avx512, s);
        by_item(first, s, w, &mut out[..rows * w], |b, r, o| {
            let (lo, hi) = (b * s + r.start, b * s + r.end);
            let (k, v) = (&k[lo * c..hi * c], &v[lo * cv..hi * cv]);
            let queries = (
                &q[b * l * c..(b + 1) * l * c],
                &dout[b * l * cv..(b + 1) * l * cv],
                &stats[b * l * qw..(b + 1) * l * qw],
            );
            #[cfg(target_arch = "x86_64")]
            if avx512 {
                // SAFETY: the CPU has AVX-512F.
                blocked(k, v, (c, cv), 16, |keys| unsafe {
                    avx512::key_rows(a, queries, keys, o)
                });
                return;
            }
            portable::key_rows(a, queries, (k, v), o);
        });
        Ok(())
    }
}

impl RowKernel for KeyGrad {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        self.rows_on(true, first, inputs, out)
    }
}

/// Copies `width` floats at `offset` of each `stride`-long input row
/// into its output rows. Input: the rows.
#[derive(Clone, Debug)]
pub struct Unpack {
    /// Floats per input row.
    pub stride: usize,
    /// The first float copied of each row.
    pub offset: usize,
    /// Floats copied per row.
    pub width: usize,
}

impl RowKernel for Unpack {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        if self.width == 0 {
            return Ok(());
        }
        let src = inputs.first().copied().unwrap_or(&[]);
        let rows = out.len() / self.width;
        if self.offset + self.width > self.stride || src.len() < (first + rows) * self.stride {
            return Err(format!(
                "cannot copy {} floats at {} of rows {first}..{} of {}",
                self.width,
                self.offset,
                first + rows,
                self.stride
            ));
        }
        for (r, o) in out.chunks_exact_mut(self.width).enumerate() {
            let at = (first + r) * self.stride + self.offset;
            o.copy_from_slice(&src[at..at + self.width]);
        }
        Ok(())
    }
}
