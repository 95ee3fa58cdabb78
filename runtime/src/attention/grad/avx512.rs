//! The AVX-512 path of the attention backward's two steps (see the
//! parent module), on keys and values channel-major in 16-key blocks
//! ([`super::super::channel_major`]), padding keys masked out.
//!
//! - Query rows, [`ROWS`] at a time per head: the forward's logits and
//!   weights passes, the same logits pass over the values for `dp`, a
//!   pass turning the weights into `e·(dp − D)`, and the forward's output
//!   pass over the keys for `dq`.
//! - Keys, 16 at a time per head: a loop over all query rows computing
//!   the 16 logits, `p` (the forward's [`exp`], bit for bit the first
//!   step's) and `dp`, accumulating `dv` and `dk` channel-major in
//!   registers, transposed into the rows at the end.
//!
//! Head widths 8, 16 and 32 (the UNet's) have their channel loops
//! unrolled.

use super::super::avx512::{exp, logits, outputs, tail_mask, weights, GROUP, LANES, ROWS};
use super::super::{Attention, Keys};
use super::STATS;
use std::arch::x86_64::*;

/// The buffers of one run of query blocks: `R` rows of the padded keys'
/// weights `p` and `dp`, and `R` scaled query heads `qs` and output
/// gradient heads `ys`.
struct Scratch {
    p: Vec<f32>,
    dp: Vec<f32>,
    qs: Vec<f32>,
    ys: Vec<f32>,
}

/// [`super::QueryGrad`] rows into `out` for the query rows `q` (`[rows,
/// C]`) and their output gradients `dout` (`[rows, Cv]`) against one
/// batch item's `keys`.
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn query_rows(
    a: &Attention,
    q: &[f32],
    dout: &[f32],
    keys: &Keys,
    out: &mut [f32],
) {
    // SAFETY: forwarded.
    unsafe {
        match (a.dim / a.heads, a.value_dim / a.heads) {
            (8, 8) => query_rows_of::<8, 8>(a, q, dout, keys, out),
            (16, 16) => query_rows_of::<16, 16>(a, q, dout, keys, out),
            (32, 32) => query_rows_of::<32, 32>(a, q, dout, keys, out),
            _ => query_rows_of::<0, 0>(a, q, dout, keys, out),
        }
    }
}

/// [`query_rows`] for heads `DH` channels wide and `DV` value channels
/// (`0`: any width).
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn query_rows_of<const DH: usize, const DV: usize>(
    a: &Attention,
    q: &[f32],
    dout: &[f32],
    keys: &Keys,
    out: &mut [f32],
) {
    let (c, cv) = (a.dim, a.value_dim);
    let chunks = a.keys.div_ceil(LANES);
    assert!(keys.block == LANES && a.keys > 0);
    assert!(keys.kt.len() >= chunks * c * LANES && keys.vt.len() >= chunks * cv * LANES);
    let (rows, w) = (q.len() / c, c + STATS * a.heads);
    assert!(dout.len() >= rows * cv && out.len() >= rows * w);
    let padded = ROWS * chunks * LANES;
    let mut sc = Scratch {
        p: vec![0f32; padded],
        dp: vec![0f32; padded],
        qs: vec![0f32; ROWS * (c / a.heads)],
        ys: vec![0f32; ROWS * (cv / a.heads)],
    };
    let mut r = 0;
    while r < rows {
        let n = if r + ROWS <= rows { ROWS } else { 1 };
        let (qb, db) = (&q[r * c..(r + n) * c], &dout[r * cv..(r + n) * cv]);
        let ob = &mut out[r * w..(r + n) * w];
        // SAFETY: AVX-512F (the caller's promise); the buffers were checked above.
        unsafe {
            if n == ROWS {
                query_block::<ROWS, DH, DV>(a, (qb, db), keys, &mut sc, ob);
            } else {
                query_block::<1, DH, DV>(a, (qb, db), keys, &mut sc, ob);
            }
        }
        r += n;
    }
}

/// `R` query rows `q` (`[R, C]`) with their `dout` (`[R, Cv]`) into `o`
/// (`R` [`super::QueryGrad`] rows), per head.
///
/// # Safety
/// AVX-512F; `keys` as [`query_rows_of`] checks, `sc` as it makes it, `q`,
/// `dout` and `o` exactly `R` rows.
#[target_feature(enable = "avx512f")]
unsafe fn query_block<const R: usize, const DH: usize, const DV: usize>(
    a: &Attention,
    (q, dout): (&[f32], &[f32]),
    keys: &Keys,
    sc: &mut Scratch,
    o: &mut [f32],
) {
    let (s, c, cv) = (a.keys, a.dim, a.value_dim);
    let dh = if DH > 0 { DH } else { c / a.heads };
    let dv = if DV > 0 { DV } else { cv / a.heads };
    let (chunks, w) = (s.div_ceil(LANES), c + STATS * a.heads);
    let tail_valid = tail_mask(s);
    for h in 0..a.heads {
        for r in 0..R {
            for d in 0..dh {
                sc.qs[r * dh + d] = q[r * c + h * dh + d] * a.scale;
            }
            sc.ys[r * dv..(r + 1) * dv].copy_from_slice(&dout[r * cv + h * dv..][..dv]);
        }
        let (kc, vc) = ((h * dh, dh, c), (h * dv, dv, cv));
        // SAFETY: as this function's promise.
        let (mx, inv, dd) = unsafe {
            let mx = logits::<R, DH>(
                keys.kt,
                kc,
                chunks,
                tail_valid,
                f32::NEG_INFINITY,
                &sc.qs,
                &mut sc.p,
            );
            let inv = weights::<R>(&mx, chunks, tail_valid, &mut sc.p);
            logits::<R, DV>(keys.vt, vc, chunks, tail_valid, 0.0, &sc.ys, &mut sc.dp);
            let dd = scores::<R>(&mut sc.p, &sc.dp, chunks, &inv);
            (mx, inv, dd)
        };
        let mut factor = inv;
        for f in factor.iter_mut() {
            *f *= a.scale;
        }
        // dq = scale/Σ · Σ_j e_j·(dp_j − D)·k_j, GROUP channels at a time.
        let mut e = h * dh;
        while e + GROUP <= (h + 1) * dh {
            // SAFETY: channels e..e + GROUP ≤ C of `kt`; `p` as in pass 1.
            unsafe { outputs::<R, GROUP>(&sc.p, (keys.kt, c), chunks, e, &factor, (o, w)) };
            e += GROUP;
        }
        for e in e..(h + 1) * dh {
            // SAFETY: as above.
            unsafe { outputs::<R, 1>(&sc.p, (keys.kt, c), chunks, e, &factor, (o, w)) };
        }
        for r in 0..R {
            let max = _mm512_reduce_max_ps(mx[r]);
            o[r * w + c + STATS * h..][..STATS].copy_from_slice(&[max, inv[r], dd[r]]);
        }
    }
}

/// The weights `e` in `p` replaced by `e·(dp − D)` for the `R` rows,
/// where `D = inv·Σ_j e_j·dp_j` (returned per row).
///
/// # Safety
/// AVX-512F; `p` and `dp` hold `R·chunks·16` floats.
#[inline(never)]
#[target_feature(enable = "avx512f")]
unsafe fn scores<const R: usize>(
    p: &mut [f32],
    dp: &[f32],
    chunks: usize,
    inv: &[f32; R],
) -> [f32; R] {
    let sp = chunks * LANES;
    assert!(p.len() >= R * sp && dp.len() >= R * sp);
    let (pp, dpp) = (p.as_mut_ptr(), dp.as_ptr());
    let mut dd = [0f32; R];
    for (r, d) in dd.iter_mut().enumerate() {
        let mut acc = _mm512_setzero_ps();
        for t in 0..chunks {
            let at = r * sp + t * LANES;
            // SAFETY: row r < R, vector t < chunks of both (asserted).
            let (e, y) = unsafe { (_mm512_loadu_ps(pp.add(at)), _mm512_loadu_ps(dpp.add(at))) };
            acc = _mm512_fmadd_ps(e, y, acc);
        }
        *d = _mm512_reduce_add_ps(acc) * inv[r];
        let dv = _mm512_set1_ps(*d);
        for t in 0..chunks {
            let at = r * sp + t * LANES;
            // SAFETY: as above.
            unsafe {
                let (e, y) = (_mm512_loadu_ps(pp.add(at)), _mm512_loadu_ps(dpp.add(at)));
                _mm512_storeu_ps(pp.add(at), _mm512_mul_ps(e, _mm512_sub_ps(y, dv)));
            }
        }
    }
    dd
}

/// [`super::KeyGrad`] rows into `out` for the call's `keys` (`out.len() /
/// (C + Cv)` of them) against one batch item's queries: `q` (`[L, C]`),
/// `dout` (`[L, Cv]`) and their [`super::QueryGrad`] rows.
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn key_rows(
    a: &Attention,
    queries: (&[f32], &[f32], &[f32]),
    keys: &Keys,
    out: &mut [f32],
) {
    // SAFETY: forwarded.
    unsafe {
        match (a.dim / a.heads, a.value_dim / a.heads) {
            (8, 8) => key_rows_of::<8, 8>(a, queries, keys, out),
            (16, 16) => key_rows_of::<16, 16>(a, queries, keys, out),
            (32, 32) => key_rows_of::<32, 32>(a, queries, keys, out),
            _ => key_rows_of::<0, 0>(a, queries, keys, out),
        }
    }
}

/// [`key_rows`] for heads `DH` channels wide and `DV` value channels
/// (`0`: any width).
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn key_rows_of<const DH: usize, const DV: usize>(
    a: &Attention,
    (q, dout, qrows): (&[f32], &[f32], &[f32]),
    keys: &Keys,
    out: &mut [f32],
) {
    let (l, c, cv) = (a.queries, a.dim, a.value_dim);
    let (dh, dv) = (c / a.heads, cv / a.heads);
    let n = out.len() / (c + cv);
    let chunks = n.div_ceil(LANES);
    assert!(keys.block == LANES);
    assert!(keys.kt.len() >= chunks * c * LANES && keys.vt.len() >= chunks * cv * LANES);
    assert!(q.len() >= l * c && dout.len() >= l * cv && qrows.len() >= l * (c + STATS * a.heads));
    // The queries scaled once, as the logits use them.
    let qs: Vec<f32> = q[..l * c].iter().map(|x| x * a.scale).collect();
    let mut sums = vec![0f32; (dh + dv) * LANES];
    // The accumulators of widths not unrolled, reused by every block.
    let generic = if DH > 0 && DV > 0 { 0 } else { dh + dv };
    let mut wide = vec![_mm512_setzero_ps(); generic];
    for t in 0..chunks {
        let valid = if t + 1 == chunks { tail_mask(n) } else { !0 };
        for h in 0..a.heads {
            // SAFETY: chunk t < chunks of `kt` and `vt`, head h's channels
            // (checked above); the queries checked above.
            unsafe {
                let kt = keys.kt.as_ptr().add((t * c + h * dh) * LANES);
                let vt = keys.vt.as_ptr().add((t * cv + h * dv) * LANES);
                let queries = (qs.as_slice(), dout, qrows);
                key_block::<DH, DV>(a, h, queries, (kt, vt), valid, (&mut sums, &mut wide));
            }
            for (d, lanes) in sums.chunks_exact(LANES).enumerate() {
                let col = if d < dh {
                    h * dh + d
                } else {
                    c + h * dv + d - dh
                };
                for (i, &g) in lanes.iter().enumerate().take(n - t * LANES) {
                    out[(t * LANES + i) * (c + cv) + col] = g;
                }
            }
        }
    }
}

/// `sums` (`dh + dv` vectors) = `[dk | dv]` of head `h`, channel-major,
/// for the 16 keys `kt`, `vt` (`valid` of them real): sums over the
/// item's query rows (`qs` scaled), accumulated in registers for the
/// unrolled widths, in `wide` (`dh + dv` vectors) for others.
///
/// # Safety
/// AVX-512F; `kt` and `vt` point at head `h`'s channels of one 16-key
/// block; the queries hold `L` rows; `sums` `(dh + dv)·16` floats.
#[target_feature(enable = "avx512f")]
unsafe fn key_block<const DH: usize, const DV: usize>(
    a: &Attention,
    h: usize,
    queries: (&[f32], &[f32], &[f32]),
    keys: (*const f32, *const f32),
    valid: __mmask16,
    (sums, wide): (&mut [f32], &mut [__m512]),
) {
    let store = |acc: &[__m512], sums: &mut [f32]| {
        assert!(sums.len() >= acc.len() * LANES);
        for (d, x) in acc.iter().enumerate() {
            // SAFETY: vector d of `sums` (asserted).
            unsafe { _mm512_storeu_ps(sums.as_mut_ptr().add(d * LANES), *x) };
        }
    };
    // SAFETY: forwarded.
    unsafe {
        if DH > 0 && DV > 0 {
            let (mut ak, mut av) = ([_mm512_setzero_ps(); DH], [_mm512_setzero_ps(); DV]);
            sweep(a, h, queries, keys, valid, (&mut ak, &mut av));
            store(&ak, sums);
            store(&av, &mut sums[DH * LANES..]);
        } else {
            let dh = a.dim / a.heads;
            wide.fill(_mm512_setzero_ps());
            let (ak, av) = wide.split_at_mut(dh);
            sweep(a, h, queries, keys, valid, (ak, av));
            store(ak, sums);
            store(av, &mut sums[dh * LANES..]);
        }
    }
}

/// Adds each query row's terms to `dk` (`dh` vectors) and `dv` (`dv`
/// vectors) of head `h`'s 16 keys: the logits `s` (the first step's, bit
/// for bit), `p = e^(s − m)/Σ`, `dp = dout·v`, `dv += p·dout` and `dk +=
/// p·(dp − D)·scale·q`.
///
/// # Safety
/// As [`key_block`]'s.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn sweep(
    a: &Attention,
    h: usize,
    (qs, dout, qrows): (&[f32], &[f32], &[f32]),
    (kt, vt): (*const f32, *const f32),
    valid: __mmask16,
    (dk, dv): (&mut [__m512], &mut [__m512]),
) {
    let (c, cv) = (a.dim, a.value_dim);
    let (wk, wv) = (dk.len(), dv.len());
    let w = c + STATS * a.heads;
    for i in 0..a.queries {
        let (qi, oi) = (&qs[i * c + h * wk..][..wk], &dout[i * cv + h * wv..][..wv]);
        let st = &qrows[i * w + c + STATS * h..][..STATS];
        let (mut s, mut dp) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        for (d, x) in qi.iter().enumerate() {
            // SAFETY: channel d < dh of the block.
            let kv = unsafe { _mm512_loadu_ps(kt.add(d * LANES)) };
            s = _mm512_fmadd_ps(_mm512_set1_ps(*x), kv, s);
        }
        for (d, y) in oi.iter().enumerate() {
            // SAFETY: channel d < dv of the block.
            let vv = unsafe { _mm512_loadu_ps(vt.add(d * LANES)) };
            dp = _mm512_fmadd_ps(_mm512_set1_ps(*y), vv, dp);
        }
        let e = _mm512_maskz_mov_ps(valid, exp(_mm512_sub_ps(s, _mm512_set1_ps(st[0]))));
        let p = _mm512_mul_ps(e, _mm512_set1_ps(st[1]));
        let g = _mm512_mul_ps(p, _mm512_sub_ps(dp, _mm512_set1_ps(st[2])));
        for (x, y) in dv.iter_mut().zip(oi) {
            *x = _mm512_fmadd_ps(p, _mm512_set1_ps(*y), *x);
        }
        for (x, y) in dk.iter_mut().zip(qi) {
            *x = _mm512_fmadd_ps(g, _mm512_set1_ps(*y), *x);
        }
    }
}
