//! [`Attention`] against the definition computed in f64 (softmax of the
//! scaled per-head dot products, then the weighted values): self- and
//! cross-attention shapes, one and several heads, key counts below, across
//! and past the 16-key chunks, rows split at odd places; large logits stay
//! finite (the maximum is subtracted).

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

#[test]
fn attention_equals_the_definition() {
    // (batch, L, S, C, Cv, heads, scale, input scale)
    for (batch, l, s, c, cv, heads, scale, mag) in [
        (2, 6, 6, 8, 8, 2, 0.5, 1.0),
        (1, 7, 4, 12, 6, 3, 0.3, 1.0),
        (3, 5, 9, 16, 16, 1, 0.25, 1.0),
        (1, 4, 5, 8, 4, 2, 1.0, 30.0),
        // Past the 16-key chunks and the 64-lane dot products, with tails.
        (2, 3, 37, 16, 16, 2, 0.35, 1.0),
        (1, 5, 150, 64, 32, 8, 0.35, 3.0),
    ] {
        let a = Attention {
            queries: l,
            keys: s,
            dim: c,
            value_dim: cv,
            heads,
            scale,
        };
        let q = values(batch * l * c, 0.1, mag);
        let k = values(batch * s * c, 1.3, mag);
        let v = values(batch * s * cv, 2.9, 1.0);
        let want = definition(&q, &k, &v, &a, batch);
        let mut got = vec![f32::NAN; batch * l * cv];
        let split = (batch * l / 2) * cv;
        let (lo, hi) = got.split_at_mut(split);
        a.rows(0, &[&q, &k, &v], lo).unwrap();
        a.rows(batch * l / 2, &[&q, &k, &v], hi).unwrap();
        let scale_out = want.iter().fold(1e-30_f64, |m, x| m.max(x.abs()));
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (f64::from(*g) - w).abs() <= 2e-5 * scale_out,
                "L {l} S {s} heads {heads} mag {mag}: element {i}: {g} vs {w}"
            );
        }
    }
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
