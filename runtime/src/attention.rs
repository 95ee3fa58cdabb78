//! Multi-head scaled dot-product attention (`attention(q, k, v, heads)`,
//! the UNet's transformer blocks) as a row step ([`crate::plan::Rows`]):
//! a row is one query token, `q [B, L, C]`, `k [B, S, C]`, `v [B, S, Cv]`,
//! the output `[B, L, Cv]`. Per head `h` (channels `h·C/heads ..`), the
//! row's logits against the `S` keys are scaled, turned into
//! probabilities by a softmax with the maximum subtracted, and the values
//! summed with those weights. Rows are independent, so they split over
//! threads without scratch space in the arena.
//!
//! The UNet's heads are 8 channels wide, too short a loop to vectorise;
//! so each call transposes its batch items' `k` and `v` to channel-major
//! rows of `S` and runs every loop over the keys instead, four query rows
//! at a time so that each key and value chunk loaded serves four rows
//! (logits 16 keys at a time over the head's channels, outputs as
//! `S`-long dot products), with an exponential that
//! vectorises ([`exp_nonpositive`]). Where the CPU has AVX-512 the same
//! passes run as intrinsics over 16-key blocks (`avx512`: this code
//! compiled for AVX-512 ran without FMA and spilled); this portable code
//! is the path elsewhere.

use crate::plan::RowKernel;

/// Attention of `queries` tokens over `keys` tokens per batch item.
#[derive(Clone, Debug)]
pub struct Attention {
    /// Query tokens per batch item (`L`).
    pub queries: usize,
    /// Key and value tokens per batch item (`S`).
    pub keys: usize,
    /// Channels of a query or key token (`C`), all heads.
    pub dim: usize,
    /// Channels of a value token (`Cv`), all heads.
    pub value_dim: usize,
    /// Heads; divides `dim` and `value_dim`.
    pub heads: usize,
    /// The logits' factor (`1 / sqrt(C / heads)` by default).
    pub scale: f32,
}

/// `x` (`[S, c]` row-major, `S = x.len() / c`) channel-major within
/// blocks of `block` keys, the last one zero-padded:
/// `out[(t·c + ch)·block + i] = x[t·block + i, ch]`. With one block of
/// `S` keys a query's logits and outputs are `S`-long contiguous loops;
/// with 16-key blocks (the AVX-512 path) a key vector's channels are
/// 64 bytes apart.
fn channel_major(x: &[f32], c: usize, block: usize) -> Vec<f32> {
    let blocks = (x.len() / c).div_ceil(block);
    let mut out = vec![0f32; blocks * c * block];
    for (t, rows) in x.chunks(block * c).enumerate() {
        for ch in 0..c {
            let dst = &mut out[(t * c + ch) * block..];
            for (o, row) in dst.iter_mut().zip(rows.chunks_exact(c)) {
                *o = row[ch];
            }
        }
    }
    out
}

/// `f` on the keys `k` (`[n, c]`) and values `v` (`[n, cv]`) laid out by
/// [`channel_major`] in blocks of `block` keys.
fn blocked<T>(
    k: &[f32],
    v: &[f32],
    (c, cv): (usize, usize),
    block: usize,
    f: impl FnOnce(&Keys) -> T,
) -> T {
    f(&Keys {
        kt: &channel_major(k, c, block),
        vt: &channel_major(v, cv, block),
        block,
    })
}

/// One batch item's keys and values laid out by [`channel_major`] in
/// blocks of `block` keys.
struct Keys<'a> {
    /// The keys, `[blocks, C, block]`.
    kt: &'a [f32],
    /// The values, `[blocks, Cv, block]`.
    vt: &'a [f32],
    /// Keys per block: `S` (one block) on the portable path, 16 on the
    /// AVX-512 one.
    block: usize,
}

/// Lanes of the reductions: independent accumulators the compiler keeps
/// in vector registers.
const LANES: usize = 16;

/// Query rows computed together: each load of a transposed key or value
/// chunk serves this many rows, and their sums are independent chains.
const BLOCK_ROWS: usize = 4;

/// `Σ_j p[r·s + j] · v[j]` for the [`BLOCK_ROWS`] rows `r` of `p`, in
/// [`LANES`] lanes per row.
#[inline(always)]
fn dot_rows(p: &[f32], s: usize, v: &[f32]) -> [f32; BLOCK_ROWS] {
    let full = s - s % LANES;
    let mut acc = [[0f32; LANES]; BLOCK_ROWS];
    for at in (0..full).step_by(LANES) {
        let vv = &v[at..][..LANES];
        for (r, a) in acc.iter_mut().enumerate() {
            let pr = &p[r * s + at..][..LANES];
            for i in 0..LANES {
                a[i] += pr[i] * vv[i];
            }
        }
    }
    let mut out = [0f32; BLOCK_ROWS];
    for (r, o) in out.iter_mut().enumerate() {
        let tail: f32 = (full..s).map(|j| p[r * s + j] * v[j]).sum();
        *o = acc[r].iter().sum::<f32>() + tail;
    }
    out
}

/// The largest element (NaN-free input) in [`LANES`] lanes.
#[inline(always)]
fn max_of(a: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut ca = a.chunks_exact(LANES);
    for x in &mut ca {
        for i in 0..LANES {
            acc[i] = if x[i] > acc[i] { x[i] } else { acc[i] };
        }
    }
    ca.remainder()
        .iter()
        .chain(&acc)
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

/// `e^x` for `x <= 0` (a logit minus the row's maximum) without a libm
/// call, so that a loop of it vectorises: `x = n·ln 2 + r` with `n`
/// rounded to nearest by the 1.5·2²³ trick and `|r| <= ln 2 / 2`, the
/// degree-6 Taylor polynomial of `e^r` (relative error below 2e-7), and
/// `2^n` from its exponent bits. Inputs below −87 give `e^−87` (a weight
/// under 1e-37 of the maximum's).
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0;
    let x = x.max(-87.0);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r / 720.0)))));
    let bits = (t.to_bits() as i32 - ROUND.to_bits() as i32 + 127) << 23;
    p * f32::from_bits(bits as u32)
}

/// Replaces the logits `p` by `e^(p − max p)` and returns their sum (in
/// [`LANES`] lanes: a single running sum would be a chain of dependent
/// additions).
#[inline(always)]
fn softmax_weights(p: &mut [f32]) -> f32 {
    let max = max_of(p);
    let mut acc = [0f32; LANES];
    let mut chunks = p.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            let e = exp_nonpositive(c[i] - max);
            c[i] = e;
            acc[i] += e;
        }
    }
    let mut total = acc.iter().sum::<f32>();
    for x in chunks.into_remainder() {
        *x = exp_nonpositive(*x - max);
        total += *x;
    }
    total
}

impl Attention {
    /// [`BLOCK_ROWS`] query rows `q` (`[BLOCK_ROWS, C]`) into `o`
    /// (`[BLOCK_ROWS, Cv]`); `p` holds their `S` logits each. The logits
    /// go [`LANES`] keys at a time, summed over the head's channels in
    /// registers and stored once.
    #[inline(always)]
    fn block(&self, q: &[f32], kt: &[f32], vt: &[f32], p: &mut [f32], o: &mut [f32]) {
        let (s, c, cv) = (self.keys, self.dim, self.value_dim);
        let (dh, dv) = (c / self.heads, cv / self.heads);
        let full = s - s % LANES;
        for h in 0..self.heads {
            let channels = h * dh..(h + 1) * dh;
            for at in (0..full).step_by(LANES) {
                let mut acc = [[0f32; LANES]; BLOCK_ROWS];
                for d in channels.clone() {
                    let keys = &kt[d * s + at..][..LANES];
                    for (r, a) in acc.iter_mut().enumerate() {
                        let x = q[r * c + d] * self.scale;
                        for i in 0..LANES {
                            a[i] += x * keys[i];
                        }
                    }
                }
                for (r, a) in acc.iter().enumerate() {
                    p[r * s + at..][..LANES].copy_from_slice(a);
                }
            }
            let mut inv = [0f32; BLOCK_ROWS];
            for (r, w) in inv.iter_mut().enumerate() {
                let pr = &mut p[r * s..(r + 1) * s];
                for (j, pj) in pr.iter_mut().enumerate().skip(full) {
                    *pj = channels
                        .clone()
                        .map(|d| q[r * c + d] * self.scale * kt[d * s + j])
                        .sum();
                }
                *w = 1.0 / softmax_weights(pr);
            }
            for e in h * dv..(h + 1) * dv {
                let sums = dot_rows(p, s, &vt[e * s..(e + 1) * s]);
                for r in 0..BLOCK_ROWS {
                    o[r * cv + e] = sums[r] * inv[r];
                }
            }
        }
    }

    /// The query rows `q` of one batch item into `out`, [`BLOCK_ROWS`] at a
    /// time (a last, shorter block padded with zero queries).
    #[inline(always)]
    fn item_rows(&self, q: &[f32], keys: &Keys, out: &mut [f32]) {
        let (kt, vt) = (keys.kt, keys.vt);
        let (c, cv) = (self.dim, self.value_dim);
        let mut p = vec![0f32; BLOCK_ROWS * self.keys];
        let (mut qb, mut ob) = (vec![0f32; BLOCK_ROWS * c], vec![0f32; BLOCK_ROWS * cv]);
        for (qs, os) in q
            .chunks(BLOCK_ROWS * c)
            .zip(out.chunks_mut(BLOCK_ROWS * cv))
        {
            if qs.len() == qb.len() {
                self.block(qs, kt, vt, &mut p, os);
            } else {
                qb[..qs.len()].copy_from_slice(qs);
                qb[qs.len()..].fill(0.0);
                self.block(&qb, kt, vt, &mut p, &mut ob);
                os.copy_from_slice(&ob[..os.len()]);
            }
        }
    }
}

impl RowKernel for Attention {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        self.rows_on(true, first, inputs, out)
    }
}

impl Attention {
    /// The channels of one head of the queries and keys, and of the
    /// values; an error unless the heads divide both widths.
    fn head_widths(&self) -> Result<(usize, usize), String> {
        let (c, cv, heads) = (self.dim, self.value_dim, self.heads);
        if heads == 0 || !c.is_multiple_of(heads) || !cv.is_multiple_of(heads) {
            return Err(format!("{heads} heads do not divide {c} and {cv} channels"));
        }
        Ok((c / heads, cv / heads))
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
        let (l, s, c, cv) = (self.queries, self.keys, self.dim, self.value_dim);
        self.head_widths()?;
        if cv == 0 || l == 0 {
            return Ok(());
        }
        let rows = out.len() / cv;
        let batches = (first + rows).div_ceil(l);
        let need = [(first + rows) * c, batches * s * c, batches * s * cv];
        check_lengths(&["q", "k", "v"], inputs, &need)?;
        let (q, k, v) = (inputs[0], inputs[1], inputs[2]);
        let avx512 = wants_avx512(avx512, s);
        // The AVX-512 path walks whole 16-key vectors.
        let block = if avx512 { 16 } else { s.max(1) };
        by_item(first, l, cv, &mut out[..rows * cv], |b, r, o| {
            let (k, v) = (
                &k[b * s * c..(b + 1) * s * c],
                &v[b * s * cv..(b + 1) * s * cv],
            );
            let qb = &q[(b * l + r.start) * c..(b * l + r.end) * c];
            blocked(k, v, (c, cv), block, |keys| {
                #[cfg(target_arch = "x86_64")]
                if avx512 {
                    // SAFETY: the CPU has AVX-512F.
                    unsafe { avx512::item_rows(self, qb, keys, o) };
                    return;
                }
                self.item_rows(qb, keys, o);
            });
        });
        Ok(())
    }
}

/// Whether a call over `keys` keys runs on the AVX-512 path: asked for
/// (`avx512`), some keys, and the CPU has it.
fn wants_avx512(avx512: bool, keys: usize) -> bool {
    cfg!(target_arch = "x86_64") && avx512 && keys > 0 && crate::gemm::kernel_avx512::available()
}

/// An error naming the first of the `inputs` shorter than its `need`
/// (or missing).
fn check_lengths(names: &[&str], inputs: &[&[f32]], need: &[usize]) -> Result<(), String> {
    for (i, (name, n)) in names.iter().zip(need).enumerate() {
        match inputs.get(i) {
            None => return Err(format!("expects {}", names.join(", "))),
            Some(x) if x.len() < *n => {
                return Err(format!("`{name}` holds {} elements, {n} needed", x.len()))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Splits the rows `first..` of `out` (`width` floats each; batch items
/// of `per_item` rows) at the items' boundaries and calls `f(item, its
/// rows in the item, their part of out)` on each piece in order.
fn by_item(
    first: usize,
    per_item: usize,
    width: usize,
    out: &mut [f32],
    mut f: impl FnMut(usize, std::ops::Range<usize>, &mut [f32]),
) {
    if per_item == 0 || width == 0 {
        return;
    }
    let mut r = first;
    let mut rest = out;
    while rest.len() >= width {
        let b = r / per_item;
        let end = ((b + 1) * per_item).min(r + rest.len() / width);
        let (o, tail) = rest.split_at_mut((end - r) * width);
        f(b, r - b * per_item..end - b * per_item, o);
        rest = tail;
        r = end;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod grad;

#[cfg(test)]
mod tests;
