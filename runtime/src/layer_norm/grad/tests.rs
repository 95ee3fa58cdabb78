//! The `layer_norm` backward steps against central finite differences of
//! the forward definition in f64, of `L = Σ r·y`: `dx`, `dweight` and
//! `dbias`, with and without the affine terms, and on rows far from zero.

use super::*;
use crate::test_support::{central, max_rel};

/// Deterministic values around `offset`.
fn values(n: usize, seed: f32, offset: f32) -> Vec<f32> {
    (0..n)
        .map(|i| offset + (i as f32 * 0.731 + seed).sin() * 1.3)
        .collect()
}

/// `layer_norm` over rows of `width` by the definition, in f64.
fn definition(x: &[f32], width: usize, eps: f64, affine: Option<(&[f32], &[f32])>) -> Vec<f64> {
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks(width) {
        let row: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
        let mean = row.iter().sum::<f64>() / width as f64;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / width as f64;
        for (j, v) in row.iter().enumerate() {
            let (w, b) = affine.map_or((1.0, 0.0), |(w, b)| (w[j].into(), b[j].into()));
            y.push((v - mean) / (var + eps).sqrt() * w + b);
        }
    }
    y
}

#[test]
fn layer_norm_backward_equals_finite_differences() {
    for (rows, width, affine, offset) in
        [(3, 8, true, 0.2), (4, 5, false, 0.0), (2, 16, true, 200.0)]
    {
        let n = rows * width;
        let (x, r) = (values(n, 0.3, offset), values(n, 1.9, 0.1));
        let (w, b) = (values(width, 1.1, 1.0), values(width, 0.5, 0.0));
        let eps = 1e-5;
        let loss = |x: &[f32], w: &[f32], b: &[f32]| {
            let y = definition(x, width, eps, affine.then_some((w, b)));
            y.iter()
                .zip(&r)
                .map(|(y, r)| y * f64::from(*r))
                .sum::<f64>()
        };
        let mut inputs: Vec<&[f32]> = vec![&r, &x];
        if affine {
            inputs.push(&w);
        }
        let mut dx = vec![f32::NAN; n];
        let step = GradInput {
            width,
            eps: eps as f32,
            affine,
        };
        step.rows(0, &inputs, &mut dx).unwrap();
        let what = format!("{rows}x{width} affine {affine} offset {offset}");
        let want = central(&x, |x| loss(x, &w, &b));
        assert!(
            max_rel(&dx, &want) < 2e-3,
            "dx {what}: {}",
            max_rel(&dx, &want)
        );
        for (param, want) in [
            (Param::Weight, central(&w, |w| loss(&x, w, &b))),
            (Param::Bias, central(&b, |b| loss(&x, &w, b))),
        ] {
            if !affine {
                continue;
            }
            let mut got = vec![f32::NAN; width];
            let step = GradParam {
                width,
                rows,
                eps: eps as f32,
                param,
            };
            step.rows(0, &[&r, &x], &mut got).unwrap();
            assert!(max_rel(&got, &want) < 1e-3, "{param:?} {what}");
        }
    }
}
