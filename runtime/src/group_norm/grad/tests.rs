//! The three backward steps, run as the lowering runs them, against
//! central finite differences of the forward definition in f64
//! (`group_norm::tests::definition`) of `L = Σ r·y`: `dx`, `dweight` and
//! `dbias`; with and without the affine terms, one and all-channel
//! groups, one position per channel, a mean far from zero, and a sample
//! large enough to split over a pool of two threads.

use super::super::tests::{definition, values};
use super::*;
use crate::test_support::{central, max_rel};

/// `(dx, dweight, dbias)` from the three steps on a pool of `threads`.
fn backward(
    norm: &GroupNorm,
    n: usize,
    dy: &[f32],
    x: &[f32],
    weight: Option<&[f32]>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(norm.threads)
        .build()
        .unwrap();
    let row = sums_width(norm);
    let c = norm.channels;
    pool.install(|| {
        let mut sums = vec![f32::NAN; n * row];
        let sum_step = GradSums { norm: norm.clone() };
        sum_step.rows(0, &[dy, x], &mut sums).unwrap();
        let column = |offset| {
            let mut out = vec![f32::NAN; c];
            let step = SampleSums {
                samples: n,
                stride: row,
                offset,
            };
            step.rows(0, &[&sums], &mut out).unwrap();
            out
        };
        let (dw, db) = (column(0), column(c));
        let mut inputs = vec![dy, x, &sums[..]];
        inputs.extend(weight);
        let mut dx = vec![f32::NAN; n * norm.width()];
        GradInput { norm: norm.clone() }
            .rows(0, &inputs, &mut dx)
            .unwrap();
        (dx, dw, db)
    })
}

#[test]
fn group_norm_backward_equals_central() {
    // (n, c, inner), groups, affine, offset of the data.
    for (dims, groups, affine, offset) in [
        ((2, 8, 5), 2, true, 0.3),
        ((3, 6, 4), 1, true, 0.0),
        ((2, 4, 6), 4, false, 0.5),
        ((4, 6, 1), 2, true, 0.1),
        ((2, 4, 9), 2, true, 300.0),
    ] {
        let (n, c, inner) = dims;
        let x = values(n * c * inner, 0.4, offset);
        let r = values(n * c * inner, 2.1, 0.2);
        let (w, b) = (values(c, 1.3, 1.0), values(c, 0.7, 0.0));
        let eps = 1e-5;
        let loss = |x: &[f32], w: &[f32], b: &[f32]| {
            let affine = affine.then_some((w, b));
            let y = definition(x, dims, groups, eps, affine);
            y.iter()
                .zip(&r)
                .map(|(y, r)| y * f64::from(*r))
                .sum::<f64>()
        };
        let norm = GroupNorm {
            channels: c,
            groups,
            inner,
            axis: ChannelAxis::First,
            eps,
            affine,
            relu: false,
            threads: 1,
        };
        let (dx, dw, db) = backward(&norm, n, &r, &x, affine.then_some(&w[..]));
        let what = format!("{dims:?} groups {groups} affine {affine} offset {offset}");
        let want_dx = central(&x, |x| loss(x, &w, &b));
        assert!(
            max_rel(&dx, &want_dx) < 2e-3,
            "dx {what}: {}",
            max_rel(&dx, &want_dx)
        );
        if affine {
            let want_dw = central(&w, |w| loss(&x, w, &b));
            let want_db = central(&b, |b| loss(&x, &w, b));
            assert!(max_rel(&dw, &want_dw) < 1e-3, "dweight {what}");
            assert!(max_rel(&db, &want_db) < 1e-3, "dbias {what}");
        }
    }
}

/// A sample split over two threads gives the one-thread results.
#[test]
fn group_norm_backward_splits_over_the_pool() {
    let (n, c, inner, groups) = (2, 16, 2048, 4);
    let x = values(n * c * inner, 0.9, 0.2);
    let dy = values(n * c * inner, 1.7, -0.1);
    let w = values(c, 1.3, 1.0);
    let mut norm = GroupNorm {
        channels: c,
        groups,
        inner,
        axis: ChannelAxis::First,
        eps: 1e-5,
        affine: true,
        relu: false,
        threads: 1,
    };
    let one = backward(&norm, n, &dy, &x, Some(&w));
    norm.threads = 2;
    let two = backward(&norm, n, &dy, &x, Some(&w));
    assert_eq!(one, two, "the split changes no sum");
}
