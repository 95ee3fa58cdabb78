//! The AVX-512 path of [`Attention`]: the same three passes per head and
//! block of query rows as the portable one, written with intrinsics so
//! that every loop runs in fused multiply-adds on registers.
//!
//! Keys and values arrive channel-major in blocks of 16 keys, the last
//! zero-padded ([`super::channel_major`]), so every pass walks whole
//! 16-key vectors with a head's channels at fixed offsets; the padding keys are masked out of the logits
//! (−∞) and of the weights (0). Per head and block of [`ROWS`] queries:
//!
//! 1. logits 16 keys at a time, `Σ_d q[r][d]·kt[d][j..j+16]` with the
//!    scaled query channel broadcast, stored, and a running lane-wise
//!    maximum per row;
//! 2. weights `e^(logit − max)` by [`exp`] (`vscalefps` for the `2^n`),
//!    stored over the logits, and their sum per row;
//! 3. outputs as `S`-long dot products of the weights with [`GROUP`]
//!    value channels at a time (`ROWS · GROUP` accumulators), reduced
//!    across lanes once per output.

use super::{Attention, Keys};
use std::arch::x86_64::*;

/// Query rows per block: each loaded key or value vector serves this many
/// rows.
pub(super) const ROWS: usize = 4;

/// Value channels per sweep of the output pass.
pub(super) const GROUP: usize = 4;

/// Keys per vector.
pub(super) const LANES: usize = 16;

/// `e^x` for `x <= 0` in 16 lanes, as [`super::exp_nonpositive`] computes
/// it (the same reduction and polynomial) but with `2^n` applied by
/// `vscalefps`; inputs below −87 give `e^−87`.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn exp(x: __m512) -> __m512 {
    let x = _mm512_max_ps(x, _mm512_set1_ps(-87.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
    let mut p = _mm512_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(p, n)
}

/// The keys valid in the last 16-key vector of `s` keys: all but its
/// padding.
pub(super) fn tail_mask(s: usize) -> __mmask16 {
    if s.is_multiple_of(LANES) {
        !0
    } else {
        (1u16 << (s % LANES)) - 1
    }
}

/// The query rows `q` (`[rows, C]`) of one batch item into `out`
/// (`[rows, Cv]`), [`ROWS`] at a time and the last few one at a time;
/// head widths 8, 16 and 32 (the UNet's) with their channel loops
/// unrolled.
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn item_rows(a: &Attention, q: &[f32], keys: &Keys, out: &mut [f32]) {
    // SAFETY: forwarded.
    unsafe {
        match a.dim / a.heads {
            8 => rows_of::<8>(a, q, keys, out),
            16 => rows_of::<16>(a, q, keys, out),
            32 => rows_of::<32>(a, q, keys, out),
            _ => rows_of::<0>(a, q, keys, out),
        }
    }
}

/// [`item_rows`] for heads `DH` channels wide (`0`: any width).
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn rows_of<const DH: usize>(a: &Attention, q: &[f32], keys: &Keys, out: &mut [f32]) {
    let (c, cv) = (a.dim, a.value_dim);
    let chunks = a.keys.div_ceil(LANES);
    assert!(keys.block == LANES && a.keys > 0);
    assert!(keys.kt.len() >= chunks * c * LANES && keys.vt.len() >= chunks * cv * LANES);
    let rows = q.len() / c;
    assert!(out.len() >= rows * cv);
    let mut p = vec![0f32; ROWS * chunks * LANES];
    let mut qs = vec![0f32; ROWS * (c / a.heads)];
    let mut r = 0;
    while r + ROWS <= rows {
        let (qb, ob) = (&q[r * c..(r + ROWS) * c], &mut out[r * cv..(r + ROWS) * cv]);
        // SAFETY: AVX-512F (the caller's promise); the buffers were checked above.
        unsafe { block::<ROWS, DH>(a, qb, keys, &mut p, &mut qs, ob) };
        r += ROWS;
    }
    for r in r..rows {
        let (qb, ob) = (&q[r * c..(r + 1) * c], &mut out[r * cv..(r + 1) * cv]);
        // SAFETY: as above.
        unsafe { block::<1, DH>(a, qb, keys, &mut p, &mut qs, ob) };
    }
}

/// `R` query rows `q` (`[R, C]`) into `o` (`[R, Cv]`): the three passes
/// per head; `p` holds `R` rows of the padded key count in logits, `qs`
/// `R` scaled query heads.
///
/// # Safety
/// AVX-512F; `keys` as [`rows_of`] checks, `p` and `qs` at least that
/// long, `q` and `o` exactly `R` rows.
#[target_feature(enable = "avx512f")]
unsafe fn block<const R: usize, const DH: usize>(
    a: &Attention,
    q: &[f32],
    keys: &Keys,
    p: &mut [f32],
    qs: &mut [f32],
    o: &mut [f32],
) {
    let (s, c, cv) = (a.keys, a.dim, a.value_dim);
    let dh = if DH > 0 { DH } else { c / a.heads };
    let dv = cv / a.heads;
    let chunks = s.div_ceil(LANES);
    let tail_valid = tail_mask(s);
    for h in 0..a.heads {
        for r in 0..R {
            for d in 0..dh {
                qs[r * dh + d] = q[r * c + h * dh + d] * a.scale;
            }
        }
        let ch = (h * dh, dh, c);
        // SAFETY: as this function's promise.
        let inv = unsafe {
            let mx = logits::<R, DH>(keys.kt, ch, chunks, tail_valid, f32::NEG_INFINITY, qs, p);
            weights::<R>(&mx, chunks, tail_valid, p)
        };
        // Pass 3: outputs, GROUP value channels at a time, then one at a time.
        let mut e = h * dv;
        while e + GROUP <= (h + 1) * dv {
            // SAFETY: channels e..e + GROUP ≤ Cv of `vt`; `p` as in pass 1.
            unsafe { outputs::<R, GROUP>(p, (keys.vt, cv), chunks, e, &inv, (o, cv)) };
            e += GROUP;
        }
        for e in e..(h + 1) * dv {
            // SAFETY: as above.
            unsafe { outputs::<R, 1>(p, (keys.vt, cv), chunks, e, &inv, (o, cv)) };
        }
    }
}

/// Pass 1: the logits of the `R` rows' scaled query heads `qs` (`[R, dh]`)
/// against channels `ch..ch + dh` of the channel-major blocks `kt` (`c`
/// channels each; `(ch, dh, c)` = `chans`) into `p` (`R` rows of `chunks`
/// key vectors; padding keys `padding`); returns their lane-wise maxima.
/// The backward runs it on the values too (`dout·v`, padding 0). Not
/// inlined (nor are the other passes), so that each gets all vector
/// registers to itself.
///
/// # Safety
/// AVX-512F; `kt` holds `chunks` blocks of `c ≥ ch + dh` channels, `qs`
/// `R·dh` floats, `p` `R·chunks·16`.
#[inline(never)]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn logits<const R: usize, const DH: usize>(
    kt: &[f32],
    (ch, dh, c): (usize, usize, usize),
    chunks: usize,
    tail_valid: __mmask16,
    padding: f32,
    qs: &[f32],
    p: &mut [f32],
) -> [__m512; R] {
    let dh = if DH > 0 { DH } else { dh };
    let sp = chunks * LANES;
    let (pp, qp) = (p.as_mut_ptr(), qs.as_ptr());
    let mut mx = [_mm512_set1_ps(f32::NEG_INFINITY); R];
    for t in 0..chunks {
        // SAFETY: chunk t < chunks of `kt`, channels ch.. of it.
        let kh = unsafe { kt.as_ptr().add((t * c + ch) * LANES) };
        let mut acc = [_mm512_setzero_ps(); R];
        for d in 0..dh {
            // SAFETY: channel ch + d < c of the chunk.
            let kv = unsafe { _mm512_loadu_ps(kh.add(d * LANES)) };
            for (r, x) in acc.iter_mut().enumerate() {
                // SAFETY: R rows of dh scaled channels.
                let qv = _mm512_set1_ps(unsafe { *qp.add(r * dh + d) });
                *x = _mm512_fmadd_ps(qv, kv, *x);
            }
        }
        let valid = if t + 1 == chunks { tail_valid } else { !0 };
        for (r, x) in acc.iter().enumerate() {
            let x = _mm512_mask_mov_ps(_mm512_set1_ps(padding), valid, *x);
            mx[r] = _mm512_max_ps(mx[r], x);
            // SAFETY: row r < R of `p` holds `sp` floats.
            unsafe { _mm512_storeu_ps(pp.add(r * sp + t * LANES), x) };
        }
    }
    mx
}

/// Pass 2: the logits in `p` replaced by `e^(logit − max)` (padding keys
/// 0); returns the reciprocals of their sums per row.
///
/// # Safety
/// AVX-512F; `p` holds `R·chunks·16` floats.
#[inline(never)]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn weights<const R: usize>(
    mx: &[__m512; R],
    chunks: usize,
    tail_valid: __mmask16,
    p: &mut [f32],
) -> [f32; R] {
    let sp = chunks * LANES;
    let pp = p.as_mut_ptr();
    let mut inv = [0f32; R];
    for (r, w) in inv.iter_mut().enumerate() {
        let m = _mm512_set1_ps(_mm512_reduce_max_ps(mx[r]));
        let mut sum = _mm512_setzero_ps();
        for t in 0..chunks {
            // SAFETY: row r < R of `p`, key vector t < chunks.
            let at = unsafe { pp.add(r * sp + t * LANES) };
            // SAFETY: as above.
            let x = unsafe { _mm512_loadu_ps(at) };
            let valid = if t + 1 == chunks { tail_valid } else { !0 };
            let e = _mm512_maskz_mov_ps(valid, exp(_mm512_sub_ps(x, m)));
            sum = _mm512_add_ps(sum, e);
            // SAFETY: as above.
            unsafe { _mm512_storeu_ps(at, e) };
        }
        *w = 1.0 / _mm512_reduce_add_ps(sum);
    }
    inv
}

/// `o[r·stride + e + g] = inv[r] · Σ_j p[r][j] · v[j][e + g]` for the
/// `R` rows and `G` channels from `e` of the channel-major blocks `vt`
/// (`cv` channels each; `(vt, cv)` = `values`, `(o, stride)` = `out`). The
/// backward runs it on the keys too (`dq = Σ_j ds_j·k_j`).
///
/// # Safety
/// AVX-512F; `p` holds `R` rows of `chunks` key vectors, `vt` `chunks`
/// blocks of `cv ≥ e + G` channels; `o` holds `R` rows of `stride ≥ e + G`.
#[inline(never)]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn outputs<const R: usize, const G: usize>(
    p: &[f32],
    (vt, cv): (&[f32], usize),
    chunks: usize,
    e: usize,
    inv: &[f32; R],
    (o, stride): (&mut [f32], usize),
) {
    let sp = chunks * LANES;
    let pp = p.as_ptr();
    let mut acc = [[_mm512_setzero_ps(); G]; R];
    for t in 0..chunks {
        // SAFETY: chunk t of `vt`, channels e.. of it.
        let vp = unsafe { vt.as_ptr().add((t * cv + e) * LANES) };
        let mut v = [_mm512_setzero_ps(); G];
        for (g, x) in v.iter_mut().enumerate() {
            // SAFETY: channel e + g < cv (the caller's promise).
            *x = unsafe { _mm512_loadu_ps(vp.add(g * LANES)) };
        }
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: row r < R of `p`.
            let w = unsafe { _mm512_loadu_ps(pp.add(r * sp + t * LANES)) };
            for (x, &vx) in row.iter_mut().zip(&v) {
                *x = _mm512_fmadd_ps(w, vx, *x);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (g, x) in row.iter().enumerate() {
            o[r * stride + e + g] = _mm512_reduce_add_ps(*x) * inv[r];
        }
    }
}
