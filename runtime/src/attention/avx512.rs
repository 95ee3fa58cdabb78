//! The AVX-512 path of [`Attention`]: the same three passes per head and
//! block of query rows as the portable one, written with intrinsics so
//! that every loop runs in fused multiply-adds on registers.
//!
//! Keys and values arrive channel-major with their rows padded to a
//! multiple of 16 keys ([`super::channel_major`]), so every pass walks
//! whole 16-key vectors; the padding keys are masked out of the logits
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
const ROWS: usize = 4;

/// Value channels per sweep of the output pass.
const GROUP: usize = 4;

/// Keys per vector.
const LANES: usize = 16;

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

/// The query rows `q` (`[rows, C]`) of one batch item into `out`
/// (`[rows, Cv]`), [`ROWS`] at a time and the last few one at a time.
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn item_rows(a: &Attention, q: &[f32], keys: &Keys, out: &mut [f32]) {
    let (c, cv, sp) = (a.dim, a.value_dim, keys.stride);
    assert!(sp.is_multiple_of(LANES) && sp >= a.keys && a.keys > 0);
    assert!(keys.kt.len() >= c * sp && keys.vt.len() >= cv * sp);
    let rows = q.len() / c;
    assert!(out.len() >= rows * cv);
    let mut p = vec![0f32; ROWS * sp];
    let mut qs = vec![0f32; ROWS * (c / a.heads)];
    let mut r = 0;
    while r + ROWS <= rows {
        let (qb, ob) = (&q[r * c..(r + ROWS) * c], &mut out[r * cv..(r + ROWS) * cv]);
        // SAFETY: AVX-512F (the caller's promise); the buffers were checked above.
        unsafe { block::<ROWS>(a, qb, keys, &mut p, &mut qs, ob) };
        r += ROWS;
    }
    for r in r..rows {
        let (qb, ob) = (&q[r * c..(r + 1) * c], &mut out[r * cv..(r + 1) * cv]);
        // SAFETY: as above.
        unsafe { block::<1>(a, qb, keys, &mut p, &mut qs, ob) };
    }
}

/// `R` query rows `q` (`[R, C]`) into `o` (`[R, Cv]`): the three passes
/// per head; `p` holds `R` rows of `stride` logits, `qs` `R` scaled query
/// heads.
///
/// # Safety
/// AVX-512F; `keys` as [`item_rows`] checks, `p` and `qs` at least that
/// long, `q` and `o` exactly `R` rows.
#[target_feature(enable = "avx512f")]
unsafe fn block<const R: usize>(
    a: &Attention,
    q: &[f32],
    keys: &Keys,
    p: &mut [f32],
    qs: &mut [f32],
    o: &mut [f32],
) {
    let (s, c, cv, sp) = (a.keys, a.dim, a.value_dim, keys.stride);
    let (dh, dv) = (c / a.heads, cv / a.heads);
    let chunks = sp / LANES;
    // Keys valid in each chunk: all but the padding of the last one.
    let tail_valid: __mmask16 = if s.is_multiple_of(LANES) {
        !0
    } else {
        (1u16 << (s % LANES)) - 1
    };
    let valid = |t: usize| if t + 1 == chunks { tail_valid } else { !0 };
    let pp = p.as_mut_ptr();
    for h in 0..a.heads {
        for r in 0..R {
            for d in 0..dh {
                qs[r * dh + d] = q[r * c + h * dh + d] * a.scale;
            }
        }
        // 1. Logits and their lane-wise maxima.
        let kh = keys.kt[h * dh * sp..].as_ptr();
        let mut mx = [_mm512_set1_ps(f32::NEG_INFINITY); R];
        for t in 0..chunks {
            let mut acc = [_mm512_setzero_ps(); R];
            for d in 0..dh {
                // SAFETY: channel h·dh + d < C of `kt`, key vector t < stride / 16.
                let kv = unsafe { _mm512_loadu_ps(kh.add(d * sp + t * LANES)) };
                for (r, x) in acc.iter_mut().enumerate() {
                    *x = _mm512_fmadd_ps(_mm512_set1_ps(qs[r * dh + d]), kv, *x);
                }
            }
            for (r, x) in acc.iter().enumerate() {
                let x = _mm512_mask_mov_ps(_mm512_set1_ps(f32::NEG_INFINITY), valid(t), *x);
                mx[r] = _mm512_max_ps(mx[r], x);
                // SAFETY: row r < R of `p` holds `stride` floats.
                unsafe { _mm512_storeu_ps(pp.add(r * sp + t * LANES), x) };
            }
        }
        // 2. Weights and their sums.
        let mut inv = [0f32; R];
        for (r, w) in inv.iter_mut().enumerate() {
            let m = _mm512_set1_ps(_mm512_reduce_max_ps(mx[r]));
            let mut sum = _mm512_setzero_ps();
            for t in 0..chunks {
                // SAFETY: as in pass 1.
                let at = unsafe { pp.add(r * sp + t * LANES) };
                // SAFETY: as in pass 1.
                let x = unsafe { _mm512_loadu_ps(at) };
                let e = _mm512_maskz_mov_ps(valid(t), exp(_mm512_sub_ps(x, m)));
                sum = _mm512_add_ps(sum, e);
                // SAFETY: as in pass 1.
                unsafe { _mm512_storeu_ps(at, e) };
            }
            *w = 1.0 / _mm512_reduce_add_ps(sum);
        }
        // 3. Outputs, GROUP value channels at a time, then one at a time.
        let mut e = h * dv;
        while e + GROUP <= (h + 1) * dv {
            // SAFETY: channels e..e + GROUP ≤ Cv of `vt`; `p` as in pass 1.
            unsafe { outputs::<R, GROUP>(p, keys, e, &inv, o, cv) };
            e += GROUP;
        }
        for e in e..(h + 1) * dv {
            // SAFETY: as above.
            unsafe { outputs::<R, 1>(p, keys, e, &inv, o, cv) };
        }
    }
}

/// `o[r·cv + e + g] = inv[r] · Σ_j p[r][j] · vt[e + g][j]` for the `R`
/// rows and `G` value channels from `e`.
///
/// # Safety
/// AVX-512F; `p` holds `R` rows and `keys.vt` channels `e..e + G` of
/// `keys.stride` floats; `o` holds `R` rows of `cv > e + G − 1`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn outputs<const R: usize, const G: usize>(
    p: &[f32],
    keys: &Keys,
    e: usize,
    inv: &[f32; R],
    o: &mut [f32],
    cv: usize,
) {
    let sp = keys.stride;
    let (pp, vp) = (p.as_ptr(), keys.vt[e * sp..].as_ptr());
    let mut acc = [[_mm512_setzero_ps(); G]; R];
    for at in (0..sp).step_by(LANES) {
        let mut v = [_mm512_setzero_ps(); G];
        for (g, x) in v.iter_mut().enumerate() {
            // SAFETY: channel e + g of `vt` (the caller's promise).
            *x = unsafe { _mm512_loadu_ps(vp.add(g * sp + at)) };
        }
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: row r < R of `p`.
            let w = unsafe { _mm512_loadu_ps(pp.add(r * sp + at)) };
            for (x, &vx) in row.iter_mut().zip(&v) {
                *x = _mm512_fmadd_ps(w, vx, *x);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (g, x) in row.iter().enumerate() {
            o[r * cv + e + g] = _mm512_reduce_add_ps(*x) * inv[r];
        }
    }
}
