//! [`QueryGrad`] then [`KeyGrad`] against the gradients of attention's
//! definition computed in f64, on the AVX-512 path (where the CPU has
//! it) and the portable one, with the rows of both steps split over two
//! calls at odd places (two threads' way, a key split inside a 16-key
//! block): the UNet's head widths 8, 16 and 32 (self-attention and its
//! cross-attention over 77 tokens), other widths (narrow, 40 and 80,
//! values narrower than keys), key counts below,
//! across and past the 16-key blocks, several batch items, and logits in
//! the tens.

use super::*;

fn values(n: usize, seed: f32, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f32 * 0.73 + seed).sin() + (i as f32 * 0.19).cos() * 0.5) * scale)
        .collect()
}

/// `[dq, dk, dv]` of `Σ dout·attention(q, k, v)` from the definition in
/// f64: `p = softmax(scale·q·k)`, `dv_j = Σ_i p_ij·dout_i`, `ds_ij =
/// p_ij·(dout_i·v_j − Σ_j' p_ij'·dout_i·v_j')`, `dq_i = scale·Σ_j
/// ds_ij·k_j`, `dk_j = scale·Σ_i ds_ij·q_i`.
fn definition(a: &Attention, batch: usize, [dout, q, k, v]: [&[f32]; 4]) -> [Vec<f64>; 3] {
    let (l, s, c, cv, heads) = (a.queries, a.keys, a.dim, a.value_dim, a.heads);
    let (dh, dv) = (c / heads, cv / heads);
    let x = |t: &[f32], i: usize| f64::from(t[i]);
    let mut g = [
        vec![0.0; batch * l * c],
        vec![0.0; batch * s * c],
        vec![0.0; batch * s * cv],
    ];
    for b in 0..batch {
        for h in 0..heads {
            for i in 0..l {
                let qi = |d: usize| x(q, (b * l + i) * c + h * dh + d);
                let oi = |d: usize| x(dout, (b * l + i) * cv + h * dv + d);
                let kj = |j: usize, d: usize| x(k, (b * s + j) * c + h * dh + d);
                let vj = |j: usize, d: usize| x(v, (b * s + j) * cv + h * dv + d);
                let logits: Vec<f64> = (0..s)
                    .map(|j| (0..dh).map(|d| qi(d) * kj(j, d)).sum::<f64>() * f64::from(a.scale))
                    .collect();
                let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = logits.iter().map(|z| (z - m).exp()).collect();
                let total: f64 = e.iter().sum();
                let p: Vec<f64> = e.iter().map(|z| z / total).collect();
                let dp: Vec<f64> = (0..s)
                    .map(|j| (0..dv).map(|d| oi(d) * vj(j, d)).sum())
                    .collect();
                let mean: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                for j in 0..s {
                    let ds = f64::from(a.scale) * p[j] * (dp[j] - mean);
                    for d in 0..dh {
                        g[0][(b * l + i) * c + h * dh + d] += ds * kj(j, d);
                        g[1][(b * s + j) * c + h * dh + d] += ds * qi(d);
                    }
                    for d in 0..dv {
                        g[2][(b * s + j) * cv + h * dv + d] += p[j] * oi(d);
                    }
                }
            }
        }
    }
    g
}

/// Runs `kernel` over `rows` rows of `width` in two calls split at `split`.
fn run_split(
    rows_on: impl Fn(usize, &mut [f32]) -> Result<(), String>,
    rows: usize,
    width: usize,
    split: usize,
) -> Vec<f32> {
    let mut out = vec![f32::NAN; rows * width];
    let (lo, hi) = out.split_at_mut(split * width);
    rows_on(0, lo).unwrap();
    rows_on(split, hi).unwrap();
    out
}

/// Both steps on `a` over `batch` items (queries and keys of magnitude
/// `mag`), split at `qsplit` query and `ksplit` key rows, against
/// [`definition`] within `tol` of each gradient's largest element.
fn check(a: &Attention, batch: usize, mag: f32, (qsplit, ksplit): (usize, usize), avx512: bool) {
    let (l, s, c, cv) = (a.queries, a.keys, a.dim, a.value_dim);
    let dout = values(batch * l * cv, 0.3, 1.0);
    let q = values(batch * l * c, 1.1, mag);
    let k = values(batch * s * c, 2.3, mag);
    let v = values(batch * s * cv, 3.7, 1.0);
    let want = definition(a, batch, [&dout, &q, &k, &v]);
    let qg = QueryGrad {
        attention: a.clone(),
    };
    let kg = KeyGrad {
        attention: a.clone(),
    };
    let (qw, kw) = (qg.width(), kg.width());
    let inputs = [&dout[..], &q, &k, &v];
    let qrows = run_split(
        |f, o| qg.rows_on(avx512, f, &inputs, o),
        batch * l,
        qw,
        qsplit,
    );
    let inputs = [&dout[..], &q, &k, &v, &qrows];
    let krows = run_split(
        |f, o| kg.rows_on(avx512, f, &inputs, o),
        batch * s,
        kw,
        ksplit,
    );
    let got = [
        qrows
            .chunks_exact(qw)
            .flat_map(|r| &r[..c])
            .copied()
            .collect::<Vec<_>>(),
        krows
            .chunks_exact(kw)
            .flat_map(|r| &r[..c])
            .copied()
            .collect(),
        krows
            .chunks_exact(kw)
            .flat_map(|r| &r[c..])
            .copied()
            .collect(),
    ];
    for (name, (g, w)) in ["dq", "dk", "dv"].iter().zip(got.iter().zip(&want)) {
        let scale = w.iter().fold(1e-30_f64, |m, x| m.max(x.abs()));
        for (i, (g, w)) in g.iter().zip(w).enumerate() {
            assert!(
                (f64::from(*g) - w).abs() <= 3e-5 * scale,
                "B {batch} L {l} S {s} C {c} Cv {cv} heads {} avx512 {avx512}: {name}[{i}] {g} vs {w} (largest {scale})",
                a.heads
            );
        }
    }
}

#[test]
fn attention_gradients_equal_the_definition() {
    // (batch, L, S, C, Cv, heads, scale, input scale)
    for (batch, l, s, c, cv, heads, scale, mag) in [
        // The UNet's: 8 heads of 8, 16 and 32 channels, self-attention
        // and cross-attention over 77 context tokens.
        (1, 70, 70, 64, 64, 8, 8f32.powf(-0.5), 1.0),
        (1, 37, 77, 64, 64, 8, 8f32.powf(-0.5), 1.0),
        (2, 21, 77, 128, 128, 8, 0.25, 1.0),
        (1, 64, 64, 256, 256, 8, 32f32.powf(-0.5), 1.0),
        (1, 13, 77, 256, 256, 8, 32f32.powf(-0.5), 1.0),
        // Other widths: narrow heads, values narrower than keys, heads
        // of 40 channels (accumulated in memory, not registers), one head.
        (2, 7, 20, 12, 6, 3, 0.3, 1.0),
        (1, 9, 33, 80, 80, 2, 0.15, 1.0),
        (2, 11, 19, 40, 40, 1, 0.15, 1.0),
        (1, 6, 40, 10, 14, 2, 0.4, 1.0),
        // One key, exactly one 16-key block, logits in the tens.
        (2, 5, 1, 8, 8, 1, 0.5, 1.0),
        (3, 6, 16, 16, 16, 2, 0.3, 1.0),
        (1, 9, 31, 32, 32, 1, 1.0, 4.0),
    ] {
        let a = Attention {
            queries: l,
            keys: s,
            dim: c,
            value_dim: cv,
            heads,
            scale,
        };
        let splits = [(batch * l / 2 + 1, batch * s / 2 + 3), (batch * l, 0)];
        for avx512 in [false, true] {
            for split in splits.map(|(q, k)| (q.min(batch * l), k.min(batch * s))) {
                check(&a, batch, mag, split, avx512);
            }
        }
    }
}

/// Short operands are errors naming the operand, not panics.
#[test]
fn short_operands_are_errors() {
    let a = Attention {
        queries: 2,
        keys: 3,
        dim: 4,
        value_dim: 4,
        heads: 2,
        scale: 1.0,
    };
    let x = vec![0.0; 64];
    let qg = QueryGrad {
        attention: a.clone(),
    };
    let mut y = vec![0.0; 2 * qg.width()];
    let err = qg.rows(0, &[&x, &x, &x[..5], &x], &mut y).unwrap_err();
    assert!(err.contains("`k` holds 5"), "{err}");
    let kg = KeyGrad {
        attention: a.clone(),
    };
    let mut y = vec![0.0; 3 * kg.width()];
    let err = kg.rows(0, &[&x, &x, &x, &x, &x[..7]], &mut y).unwrap_err();
    assert!(err.contains("`the dq rows` holds 7"), "{err}");
    let err = kg.rows(0, &[&x, &x], &mut y).unwrap_err();
    assert!(err.contains("expects dout, q, k, v"), "{err}");
    let kg = KeyGrad {
        attention: Attention { heads: 3, ..a },
    };
    let err = kg.rows(0, &[&x, &x, &x, &x, &x], &mut y).unwrap_err();
    assert!(err.contains("3 heads"), "{err}");
}
