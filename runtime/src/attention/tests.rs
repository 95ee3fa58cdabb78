//! [`Attention`] against the definition computed in f64 (softmax of the
//! scaled per-head dot products, then the weighted values): self- and
//! cross-attention shapes, one and several heads, key counts below, across
//! and past the 16-key chunks, rows split at odd places; large logits stay
//! finite (the maximum is subtracted). Both the AVX-512 path and the
//! portable one.

use super::*;

fn values(n: usize, seed: f32, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f32 * 0.61 + seed).sin() + (i as f32 * 0.23).cos() * 0.5) * scale)
        .collect()
}

fn definition(q: &[f32], k: &[f32], v: &[f32], a: &Attention, batch: usize) -> Vec<f64> {
    let (l, s, c, cv, heads) = (a.queries, a.keys, a.dim, a.value_dim, a.heads);
    let (dh, dv) = (c / heads, cv / heads);
    let mut out = vec![0.0; batch * l * cv];
    for b in 0..batch {
        for h in 0..heads {
            for i in 0..l {
                let logits: Vec<f64> = (0..s)
                    .map(|j| {
                        (0..dh)
                            .map(|d| {
                                f64::from(q[(b * l + i) * c + h * dh + d])
                                    * f64::from(k[(b * s + j) * c + h * dh + d])
                            })
                            .sum::<f64>()
                            * f64::from(a.scale)
                    })
                    .collect();
                let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = logits.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..dv {
                    out[(b * l + i) * cv + h * dv + d] = (0..s)
                        .map(|j| e[j] / z * f64::from(v[(b * s + j) * cv + h * dv + d]))
                        .sum();
                }
            }
        }
    }
    out
}

/// `a` over `batch` items on the AVX-512 path (where the CPU has it) or
/// the portable one, in two calls split at `split` rows (two threads' way),
/// against the definition; queries and keys of magnitude `mag` around
/// `−shift` and `shift`.
fn check(a: &Attention, batch: usize, mag: f32, shift: f32, split: usize, avx512: bool) {
    let (l, s, c, cv) = (a.queries, a.keys, a.dim, a.value_dim);
    let q: Vec<f32> = values(batch * l * c, 0.1, mag)
        .iter()
        .map(|x| x - shift)
        .collect();
    let k: Vec<f32> = values(batch * s * c, 1.3, mag)
        .iter()
        .map(|x| x + shift)
        .collect();
    let v = values(batch * s * cv, 2.9, 1.0);
    let want = definition(&q, &k, &v, a, batch);
    let mut got = vec![f32::NAN; batch * l * cv];
    let (lo, hi) = got.split_at_mut(split * cv);
    a.rows_on(avx512, 0, &[&q, &k, &v], lo).unwrap();
    a.rows_on(avx512, split, &[&q, &k, &v], hi).unwrap();
    let scale_out = want.iter().fold(1e-30_f64, |m, x| m.max(x.abs()));
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (f64::from(*g) - w).abs() <= 2e-5 * scale_out,
            "L {l} S {s} C {c} heads {} mag {mag} avx512 {avx512}: element {i}: {g} vs {w}",
            a.heads
        );
    }
}

#[test]
fn attention_equals_the_definition() {
    // (batch, L, S, C, Cv, heads, scale, input scale)
    for (batch, l, s, c, cv, heads, scale, mag) in [
        (2, 6, 6, 8, 8, 2, 0.5, 1.0),
        (1, 7, 4, 12, 6, 3, 0.3, 1.0),
        (3, 5, 9, 16, 16, 1, 0.25, 1.0),
        (1, 4, 5, 8, 4, 2, 1.0, 30.0),
        // One key; keys exactly one and several 16-key vectors.
        (2, 5, 1, 8, 8, 1, 0.5, 1.0),
        (1, 9, 16, 16, 24, 2, 0.3, 1.0),
        (1, 6, 48, 24, 24, 3, 0.3, 1.0),
        // Past the 16-key chunks and the 64-lane dot products, with tails.
        (2, 3, 37, 16, 16, 2, 0.35, 1.0),
        (1, 5, 150, 64, 32, 8, 0.35, 3.0),
        // The UNet's head widths 8, 16 and 32 (cross-attention's 77 keys),
        // odd widths 5 and 7 (value groups of four and a remainder), and
        // logits in the hundreds.
        (1, 13, 77, 64, 64, 8, 0.35, 1.0),
        (2, 10, 77, 64, 64, 4, 0.25, 1.0),
        (1, 11, 33, 64, 64, 2, 0.18, 1.0),
        (1, 7, 70, 10, 14, 2, 0.4, 1.0),
        (1, 9, 31, 32, 32, 1, 1.0, 8.0),
    ] {
        let a = Attention {
            queries: l,
            keys: s,
            dim: c,
            value_dim: cv,
            heads,
            scale,
        };
        for avx512 in [false, true] {
            for split in [0, batch * l / 2, batch * l] {
                check(&a, batch, mag, 0.0, split, avx512);
            }
        }
    }
}

/// Every logit near −280, far below the padding keys' zeros: the maximum
/// must be that of the real keys (or every weight underflows alike).
#[test]
fn all_negative_logits_keep_their_softmax() {
    let a = Attention {
        queries: 6,
        keys: 20,
        dim: 16,
        value_dim: 16,
        heads: 2,
        scale: 0.35,
    };
    for avx512 in [false, true] {
        check(&a, 1, 5.0, 10.0, 3, avx512);
    }
}

/// The 1024-token self-attention of sd_unet_small's first block (8 heads of
/// 8 channels), in rows split as two threads do.
#[test]
fn the_unet_self_attention_equals_the_definition() {
    let a = Attention {
        queries: 1024,
        keys: 1024,
        dim: 64,
        value_dim: 64,
        heads: 8,
        scale: 8f32.powf(-0.5),
    };
    check(&a, 1, 2.0, 0.0, 512, true);
}

#[test]
fn malformed_inputs_are_errors() {
    let a = Attention {
        queries: 2,
        keys: 3,
        dim: 4,
        value_dim: 4,
        heads: 3,
        scale: 1.0,
    };
    let x = vec![0.0; 24];
    let mut y = vec![0.0; 8];
    let err = a.rows(0, &[&x, &x, &x], &mut y).unwrap_err();
    assert!(err.contains("3 heads"), "{err}");
    let a = Attention { heads: 2, ..a };
    let err = a.rows(0, &[&x, &x[..5], &x], &mut y).unwrap_err();
    assert!(err.contains("`k` holds 5"), "{err}");
}

/// The polynomial exponential against f64 `exp` over its whole range.
#[test]
fn the_exponential_is_accurate_to_a_few_ulps() {
    let mut worst = 0.0f64;
    for i in 0..=200_000 {
        let x = -87.0 * i as f32 / 200_000.0;
        let want = f64::from(x).exp();
        let rel = (f64::from(exp_nonpositive(x)) - want).abs() / want;
        worst = worst.max(rel);
    }
    assert!(worst < 1e-6, "worst relative error {worst:e}");
    assert_eq!(exp_nonpositive(0.0), 1.0);
    assert!(exp_nonpositive(-1e4) < 2e-38);
}

/// The AVX-512 exponential against f64 `exp` over its whole range.
#[cfg(target_arch = "x86_64")]
#[test]
fn the_vector_exponential_is_accurate_to_a_few_ulps() {
    use std::arch::x86_64::*;
    if !crate::gemm::kernel_avx512::available() {
        return;
    }
    let mut worst = 0.0f64;
    let mut got = [0f32; 16];
    for i in (0..=200_000).step_by(16) {
        let x: [f32; 16] = std::array::from_fn(|j| -87.0 * (i + j).min(200_000) as f32 / 200_000.0);
        // SAFETY: the CPU has AVX-512F; 16 floats each.
        unsafe { _mm512_storeu_ps(got.as_mut_ptr(), avx512::exp(_mm512_loadu_ps(x.as_ptr()))) };
        for (g, x) in got.iter().zip(x) {
            let want = f64::from(x).exp();
            worst = worst.max((f64::from(*g) - want).abs() / want);
        }
    }
    assert!(worst < 1e-6, "worst relative error {worst:e}");
    let edge = [0.0, -1e4, f32::NEG_INFINITY].map(|x| {
        // SAFETY: as above.
        unsafe { _mm_cvtss_f32(_mm512_castps512_ps128(avx512::exp(_mm512_set1_ps(x)))) }
    });
    assert_eq!(edge[0], 1.0);
    assert!(edge[1] < 2e-38 && edge[2] < 2e-38, "{edge:?}");
}
