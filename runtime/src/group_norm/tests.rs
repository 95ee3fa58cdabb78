//! [`GroupNorm`] against the definition computed directly in f64 (two
//! passes over each group's elements, NCHW indexing): both channel axes,
//! with and without the affine parameters and the fused relu, on one and
//! two threads, and on data whose mean is far from zero.

use super::*;
use crate::test_support::max_rel;

/// Deterministic values around `offset`.
pub(super) fn values(n: usize, seed: f32, offset: f32) -> Vec<f32> {
    (0..n)
        .map(|i| offset + ((i as f32 * 0.913 + seed).sin() * 1.7 + (i as f32 * 0.37).cos()))
        .collect()
}

/// `group_norm` of NCHW `x` (`[n, c, inner]`) by the definition.
pub(super) fn definition(
    x: &[f32],
    (n, c, inner): (usize, usize, usize),
    groups: usize,
    eps: f32,
    affine: Option<(&[f32], &[f32])>,
) -> Vec<f64> {
    let per = c / groups;
    let mut y = vec![0.0; x.len()];
    for s in 0..n {
        for g in 0..groups {
            let at = |k: usize| s * c * inner + g * per * inner + k;
            let count = per * inner;
            let mean = (0..count).map(|k| f64::from(x[at(k)])).sum::<f64>() / count as f64;
            let var = (0..count)
                .map(|k| (f64::from(x[at(k)]) - mean).powi(2))
                .sum::<f64>()
                / count as f64;
            for k in 0..count {
                let ch = g * per + k / inner;
                let (w, b) = affine.map_or((1.0, 0.0), |(w, b)| (w[ch].into(), b[ch].into()));
                y[at(k)] = (f64::from(x[at(k)]) - mean) / (var + f64::from(eps)).sqrt() * w + b;
            }
        }
    }
    y
}

/// `[n, c, inner]` as `[n, inner, c]`.
fn to_last(x: &[f32], (n, c, inner): (usize, usize, usize)) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for s in 0..n {
        for ch in 0..c {
            for p in 0..inner {
                out[(s * inner + p) * c + ch] = x[(s * c + ch) * inner + p];
            }
        }
    }
    out
}

/// Runs `kernel` over all `n` samples of `x` on a pool of `threads`.
fn run(kernel: &GroupNorm, n: usize, x: &[f32], params: &[&[f32]]) -> Vec<f32> {
    let mut y = vec![f32::NAN; n * kernel.width()];
    let mut inputs = vec![x];
    inputs.extend_from_slice(params);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(kernel.threads)
        .build()
        .unwrap();
    pool.install(|| kernel.rows(0, &inputs, &mut y)).unwrap();
    y
}

#[test]
fn group_norm_equals_the_definition() {
    // (n, c, inner), groups: FCOS-like (8 channels a group) and
    // single-channel groups, a group spanning all channels, odd sizes.
    for (dims, groups) in [
        ((2, 32, 37), 4),
        ((1, 16, 300), 16),
        ((3, 6, 5), 1),
        ((2, 64, 1029), 32),
    ] {
        let (n, c, inner) = dims;
        let x = values(n * c * inner, 0.4, 0.3);
        let w = values(c, 1.1, 0.5);
        let b = values(c, 2.3, -0.2);
        for affine in [false, true] {
            for relu in [false, true] {
                let mut want = definition(&x, dims, groups, 1e-5, affine.then_some((&w, &b)));
                if relu {
                    want.iter_mut().for_each(|v| *v = v.max(0.0));
                }
                for axis in [ChannelAxis::First, ChannelAxis::Last] {
                    for threads in [1, 2] {
                        let kernel = GroupNorm {
                            channels: c,
                            groups,
                            inner,
                            axis,
                            eps: 1e-5,
                            affine,
                            relu,
                            threads,
                        };
                        let params: Vec<&[f32]> = if affine { vec![&w, &b] } else { vec![] };
                        let (input, expected) = match axis {
                            ChannelAxis::First => (x.clone(), want.clone()),
                            ChannelAxis::Last => {
                                let w32: Vec<f32> = want.iter().map(|&v| v as f32).collect();
                                let back = to_last(&w32, dims);
                                (
                                    to_last(&x, dims),
                                    back.iter().map(|&v| f64::from(v)).collect(),
                                )
                            }
                        };
                        let got = run(&kernel, n, &input, &params);
                        let err = max_rel(&got, &expected);
                        assert!(
                            err < 2e-6,
                            "{dims:?} groups {groups} affine {affine} relu {relu} {axis:?} \
                             threads {threads}: error {err}"
                        );
                    }
                }
            }
        }
    }
}

/// A mean 1e4 times the spread: naive f32 `E[x²] − E[x]²` would lose
/// every digit of the variance.
#[test]
fn a_large_mean_keeps_the_variance() {
    let dims = (2, 8, 513);
    let x = values(2 * 8 * 513, 0.9, 1.0e4);
    let want = definition(&x, dims, 2, 1e-5, None);
    for axis in [ChannelAxis::First, ChannelAxis::Last] {
        let kernel = GroupNorm {
            channels: 8,
            groups: 2,
            inner: 513,
            axis,
            eps: 1e-5,
            affine: false,
            relu: false,
            threads: 2,
        };
        let input = match axis {
            ChannelAxis::First => x.clone(),
            ChannelAxis::Last => to_last(&x, dims),
        };
        let got = run(&kernel, 2, &input, &[]);
        let expected: Vec<f64> = match axis {
            ChannelAxis::First => want.clone(),
            ChannelAxis::Last => {
                let w32: Vec<f32> = want.iter().map(|&v| v as f32).collect();
                to_last(&w32, dims).iter().map(|&v| v.into()).collect()
            }
        };
        // `x · a + b` in f32 (PyTorch's CPU kernel computes the same
        // form) rounds at about 6e-8 of |x| = 1e4, some 3e-4 of the
        // result's magnitude; a lost variance would be off by far more.
        let err = max_rel(&got, &expected);
        assert!(err < 1e-3, "{axis:?}: error {err}");
    }
}

#[test]
fn malformed_inputs_are_errors() {
    let kernel = GroupNorm {
        channels: 6,
        groups: 4,
        inner: 3,
        axis: ChannelAxis::First,
        eps: 1e-5,
        affine: true,
        relu: false,
        threads: 1,
    };
    let x = vec![0.0; 18];
    let mut y = vec![0.0; 18];
    let err = kernel.rows(0, &[&x, &x, &x], &mut y).unwrap_err();
    assert!(err.contains("4 groups do not divide 6"), "{err}");
    let kernel = GroupNorm {
        groups: 3,
        ..kernel
    };
    let err = kernel.rows(0, &[&x[..17], &x, &x], &mut y).unwrap_err();
    assert!(err.contains("holds 17"), "{err}");
    let err = kernel.rows(0, &[&x, &x[..2], &x], &mut y).unwrap_err();
    assert!(err.contains("weight and bias"), "{err}");
}
