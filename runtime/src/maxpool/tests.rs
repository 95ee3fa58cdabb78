//! Max pooling and its gradient against their definitions written out
//! tap by tap (PyTorch's rule: row-major taps, a tap taken when greater
//! or NaN), over padding, strides, dilation, `ceil_mode` sizes,
//! one-axis windows, many ties (ReLU-like zeros), NaNs, and rows split
//! at arbitrary places the way the executor splits them over threads.

use super::*;

/// (planes, [h, w], [kh, kw], [sh, sw], [ph, pw], [dh, dw], ceil_mode)
type Case = (
    usize,
    [usize; 2],
    [usize; 2],
    [usize; 2],
    [usize; 2],
    [usize; 2],
    bool,
);

/// PyTorch's output size of one axis.
fn out_size(input: usize, k: usize, s: usize, p: usize, d: usize, ceil: bool) -> usize {
    let span = input + 2 * p - d * (k - 1) - 1;
    let mut o = if ceil { span.div_ceil(s) } else { span / s } + 1;
    // The last window must start inside the input or the left padding.
    if ceil && (o - 1) * s >= input + p {
        o -= 1;
    }
    o
}

fn kernel((_, [h, w], [kh, kw], [sh, sw], [ph, pw], [dh, dw], ceil): Case) -> MaxPool2d {
    let axis = |input, k, stride, pad, dilation| PoolAxis {
        input,
        output: out_size(input, k, stride, pad, dilation, ceil),
        k,
        stride,
        pad,
        dilation,
    };
    MaxPool2d {
        h: axis(h, kh, sh, ph, dh),
        w: axis(w, kw, sw, pw, dw),
    }
}

/// The input positions of output `o`'s taps along `a`, in order.
fn positions(a: &PoolAxis, o: usize) -> Vec<usize> {
    (0..a.k as isize)
        .map(|t| (o * a.stride) as isize - a.pad as isize + t * a.dilation as isize)
        .filter(|&i| i >= 0 && i < a.input as isize)
        .map(|i| i as usize)
        .collect()
}

/// Per output of every plane, the index in the plane of the tap
/// PyTorch picks, and its value.
fn reference(k: &MaxPool2d, planes: usize, x: &[f32]) -> Vec<(usize, f32)> {
    let mut picks = Vec::new();
    for pl in 0..planes {
        for oy in 0..k.h.output {
            for ox in 0..k.w.output {
                let mut best: Option<(usize, f32)> = None;
                for &iy in &positions(&k.h, oy) {
                    for &ix in &positions(&k.w, ox) {
                        let at = iy * k.w.input + ix;
                        let v = x[pl * k.plane() + at];
                        if best.is_none_or(|(_, b)| v > b || v.is_nan()) {
                            best = Some((at, v));
                        }
                    }
                }
                picks.push(best.expect("every window has a tap"));
            }
        }
    }
    picks
}

/// Inputs with many ties (a third zeros, the rest a few levels) and,
/// when `nans`, a NaN every 37 elements.
fn input(len: usize, nans: bool) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let r = (i * 7919 + 13) % 101;
            if nans && i % 37 == 5 {
                f32::NAN
            } else if r % 3 == 0 {
                0.0
            } else {
                (r % 9) as f32 - 3.5
            }
        })
        .collect()
}

/// Runs `kernel` over `rows` rows of `width` in pieces starting at each
/// of `cuts` (as the executor's threads would).
fn run_split(
    kernel: &dyn RowKernel,
    rows: usize,
    width: usize,
    inputs: &[&[f32]],
    cuts: &[usize],
) -> Vec<f32> {
    let mut out = vec![f32::MAX; rows * width];
    let mut bounds: Vec<usize> = cuts.iter().copied().filter(|&c| c < rows).collect();
    bounds.push(0);
    bounds.push(rows);
    bounds.sort_unstable();
    bounds.dedup();
    for pair in bounds.windows(2) {
        let part = &mut out[pair[0] * width..pair[1] * width];
        kernel
            .rows(pair[0], inputs, part)
            .expect("well-formed inputs");
    }
    out
}

const CASES: &[Case] = &[
    // densenet121's stem pool, small: 3x3 stride 2 padding 1, odd sizes.
    (3, [13, 11], [3, 3], [2, 2], [1, 1], [1, 1], false),
    // VGG's 2x2 stride 2, an odd width (the last column read by none).
    (2, [8, 9], [2, 2], [2, 2], [0, 0], [1, 1], false),
    // ceil_mode: the last windows hang past the input.
    (2, [8, 7], [3, 3], [2, 2], [0, 0], [1, 1], true),
    // Dilation and padding, stride 1.
    (2, [7, 10], [3, 3], [1, 1], [1, 1], [2, 2], false),
    // A window along W only (max_pool1d's shape), stride 1, padding.
    (4, [1, 17], [1, 4], [1, 1], [0, 2], [1, 1], false),
    // Asymmetric windows and strides.
    (2, [9, 12], [2, 3], [1, 3], [1, 1], [1, 1], true),
    // Rows wide enough for whole 16-lane vectors: the stem pool, and
    // stride 3 (three phases) with padding wider than a tap.
    (2, [5, 75], [3, 3], [2, 2], [1, 1], [1, 1], false),
    (2, [6, 110], [3, 4], [2, 3], [1, 2], [1, 1], true),
];

#[test]
fn max_pool_matches_the_definition() {
    for &case in CASES {
        for nans in [false, true] {
            let k = kernel(case);
            let planes = case.0;
            let x = input(planes * k.plane(), nans);
            let want = reference(&k, planes, &x);
            let rows = planes * k.h.output;
            for cuts in [
                &[][..],
                &[1, 2, 5][..],
                &[k.h.output + 1, 2 * k.h.output - 1][..],
            ] {
                let got = run_split(&k, rows, k.w.output, &[&x], cuts);
                for (i, (&g, &(_, v))) in got.iter().zip(&want).enumerate() {
                    assert!(
                        g == v || (g.is_nan() && v.is_nan()),
                        "{case:?} nans {nans} cuts {cuts:?}: output {i} is {g}, the definition {v}"
                    );
                }
            }
        }
    }
}

#[test]
fn max_pool_gradient_matches_the_definition() {
    for &case in CASES {
        for nans in [false, true] {
            let pool = kernel(case);
            let planes = case.0;
            let x = input(planes * pool.plane(), nans);
            let outputs = pool.h.output * pool.w.output;
            let dy: Vec<f32> = (0..planes * outputs)
                .map(|i| ((i * 31 + 7) % 23) as f32 * 0.25 - 2.0)
                .collect();
            let mut want = vec![0.0f32; planes * pool.plane()];
            for (i, &(at, _)) in reference(&pool, planes, &x).iter().enumerate() {
                want[(i / outputs) * pool.plane() + at] += dy[i];
            }
            let grad = MaxPool2dGrad { pool };
            for cuts in [&[][..], &[1][..], &[1, 2][..]] {
                let got = run_split(&grad, planes, pool.plane(), &[&dy, &x], cuts);
                assert_eq!(got, want, "{case:?} nans {nans} cuts {cuts:?}");
            }
        }
    }
}

#[test]
fn malformed_pools_are_refused() {
    let pool = kernel(CASES[0]);
    let x = vec![0.0; pool.plane()];
    let mut out = vec![0.0; 2 * pool.h.output * pool.w.output];
    // Two planes of output, one of input.
    let err = pool.rows(0, &[&x], &mut out).unwrap_err();
    assert!(err.contains("x holds"), "{err}");
    let grad = MaxPool2dGrad { pool };
    let mut dx = vec![0.0; pool.plane()];
    let err = grad.rows(0, &[&x], &mut dx).unwrap_err();
    assert!(err.contains("needs dy and x"), "{err}");
    let wide = MaxPool2d {
        w: PoolAxis { pad: 2, ..pool.w },
        ..pool
    };
    let err = wide.rows(0, &[&x], &mut out).unwrap_err();
    assert!(err.contains("padding at most half"), "{err}");
}
