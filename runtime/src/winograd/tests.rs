//! The Winograd transforms against the convolution and its gradients
//! written out tap by tap in `f64`: the 1-D identity for every tile size,
//! then the forward, the input gradient (flipped weights) and the weight
//! gradient through the row kernels with a plain GEMM between them, over
//! paddings 0–2, partial edge tiles and rows split anywhere.

use super::*;
use crate::plan::RowKernel;

/// Deterministic values in [-1, 1).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Runs `kernel` over `rows` rows of `width`, in two pieces split at
/// `split` (as two threads would).
fn run(
    kernel: &dyn RowKernel,
    rows: usize,
    width: usize,
    split: usize,
    inputs: &[&[f32]],
) -> Vec<f32> {
    let mut out = vec![f32::NAN; rows * width];
    let (lo, hi) = out.split_at_mut(split.min(rows) * width);
    kernel.rows(0, inputs, lo).unwrap();
    kernel.rows(split.min(rows), inputs, hi).unwrap();
    out
}

/// The largest error relative to the largest magnitude of `want`.
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1e-30f64, |s, v| s.max(v.abs()));
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs() / scale)
        .fold(0.0, f64::max)
}

#[test]
fn transforms_compute_a_three_tap_correlation() {
    for m in TILES {
        let t = Transforms::new(m).unwrap();
        let a = t.alpha();
        let (d, g) = (values(a, m as u64), values(R, 7 + m as u64));
        let gg: Vec<f64> = (0..a)
            .map(|j| (0..R).map(|k| (t.g[j * R + k] * g[k]) as f64).sum())
            .collect();
        let bd: Vec<f64> = (0..a)
            .map(|j| (0..a).map(|l| (t.bt[j * a + l] * d[l]) as f64).sum())
            .collect();
        for i in 0..m {
            let got: f64 = (0..a).map(|j| t.at[i * a + j] as f64 * gg[j] * bd[j]).sum();
            let want: f64 = (0..R).map(|k| (d[i + k] * g[k]) as f64).sum();
            assert!(
                (got - want).abs() < 1e-5,
                "m {m} output {i}: {got} vs {want}"
            );
        }
    }
    assert!(Transforms::new(5).is_err());
}

#[test]
fn best_tile_minimises_the_transformed_elements() {
    assert_eq!(best_tile(9, 9), 3);
    assert_eq!(best_tile(56, 56), 4);
    assert_eq!(best_tile(7, 7), 4);
    assert_eq!(best_tile(2, 2), 2);
}

/// `C[α²][T][N] = A[α²][T][K] · B[K][α²][N]` per position.
fn gemm_tiles(v: &[f32], u: &[f32], (t, p, k, n): (usize, usize, usize, usize)) -> Vec<f32> {
    let mut out = vec![0.0; p * t * n];
    for xi in 0..p {
        for ti in 0..t {
            for ki in 0..k {
                let a = v[(xi * t + ti) * k + ki];
                for ni in 0..n {
                    out[(xi * t + ti) * n + ni] += a * u[(ki * p + xi) * n + ni];
                }
            }
        }
    }
    out
}

/// A stride-1 3×3 convolution of NHWC `x [n,h,w,c]` with `w [oc,c,3,3]`
/// and padding `pad`, into NHWC, in f64.
fn direct(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    (n, h, wd, c, oc): (usize, usize, usize, usize, usize),
    pad: usize,
) -> Vec<f64> {
    let (oh, ow) = (h + 2 * pad - 2, wd + 2 * pad - 2);
    let mut y = vec![0.0; n * oh * ow * oc];
    for img in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                for o in 0..oc {
                    let mut s = bias.get(o).map_or(0.0, |&b| b as f64);
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (y_, x_) = (
                                (oy + ky) as isize - pad as isize,
                                (ox + kx) as isize - pad as isize,
                            );
                            if y_ < 0 || x_ < 0 || y_ >= h as isize || x_ >= wd as isize {
                                continue;
                            }
                            for ci in 0..c {
                                s += x[((img * h + y_ as usize) * wd + x_ as usize) * c + ci]
                                    as f64
                                    * w[((o * c + ci) * 3 + ky) * 3 + kx] as f64;
                            }
                        }
                    }
                    y[((img * oh + oy) * ow + ox) * oc + o] = s;
                }
            }
        }
    }
    y
}

/// The Winograd convolution of NHWC `x` (channels `K`) through the row
/// kernels, with `weights` already transformed (`[K][α²][N]`).
fn winograd(
    x: &[f32],
    weights: &[f32],
    bias: Option<&[f32]>,
    tiling: Tiling,
    (k, n): (usize, usize),
) -> Vec<f32> {
    let t = Transforms::new(tiling.m).unwrap();
    let input = InputTransform {
        transforms: t.clone(),
        tiling,
        c: k,
    };
    let padded = padded(x, tiling, k);
    let v = run(&input, input.rows(), k, input.rows() / 2 + 1, &[&padded]);
    let mm = gemm_tiles(&v, weights, (tiling.tiles(), tiling.positions(), k, n));
    let output = OutputTransform {
        transforms: t,
        tiling,
        oc: n,
        bias: bias.is_some(),
    };
    let mut inputs: Vec<&[f32]> = vec![&mm];
    inputs.extend(bias);
    run(&output, output.rows(), output.width(), 3, &inputs)
}

/// NHWC `x` with `c` channels padded for `tiling` ([`PadTiles`]).
fn padded(x: &[f32], tiling: Tiling, c: usize) -> Vec<f32> {
    let kernel = PadTiles { tiling, c };
    run(
        &kernel,
        kernel.rows(),
        kernel.width(),
        kernel.rows() / 3,
        &[x],
    )
}

/// The transform of the weight `wt` (`[oc, c, 3, 3]`) for tiles of side
/// `m` ([`WeightTransform`]), its rows split in two.
fn transformed(wt: &[f32], m: usize, (oc, c): (usize, usize), flip: bool) -> Vec<f32> {
    let kernel = WeightTransform {
        transforms: Transforms::new(m).unwrap(),
        oc,
        c,
        flip,
        taps_first: false,
    };
    let rows = kernel.k();
    run(&kernel, rows, kernel.width(), rows / 2, &[wt])
}

/// (images, h, w, c, oc, pad)
const CASES: [(usize, usize, usize, usize, usize, usize); 5] = [
    (2, 9, 9, 5, 7, 1),
    (1, 7, 6, 3, 17, 1),
    (3, 5, 8, 16, 4, 0),
    (1, 4, 4, 2, 3, 2),
    (2, 11, 3, 9, 8, 1),
];

#[test]
fn forward_matches_the_direct_convolution() {
    for (case, &(n, h, w, c, oc, pad)) in CASES.iter().enumerate() {
        let seed = 10 * case as u64;
        let (x, wt, bias) = (
            values(n * h * w * c, seed),
            values(oc * c * 9, seed + 1),
            values(oc, seed + 2),
        );
        let want = direct(&x, &wt, &bias, (n, h, w, c, oc), pad);
        for m in TILES {
            let tiling = Tiling {
                n,
                h,
                w,
                pad: [pad, pad],
                m,
            };
            let u = transformed(&wt, m, (oc, c), false);
            let got = winograd(&x, &u, Some(&bias), tiling, (c, oc));
            let err = rel_err(&got, &want);
            assert!(err < 1e-5, "case {case} tile {m}: error {err}");
        }
    }
}

#[test]
fn flipped_weights_give_the_input_gradient() {
    for (case, &(n, h, w, c, oc, pad)) in CASES.iter().enumerate() {
        let seed = 100 + 10 * case as u64;
        let (oh, ow) = (h + 2 * pad - 2, w + 2 * pad - 2);
        let (dy, wt) = (values(n * oh * ow * oc, seed), values(oc * c * 9, seed + 1));
        // dx[y][x][ci] = Σ dy[oy][ox][o]·w[o][ci][y−oy+pad][x−ox+pad]
        let mut want = vec![0.0f64; n * h * w * c];
        for img in 0..n {
            for oy in 0..oh {
                for ox in 0..ow {
                    for o in 0..oc {
                        let g = dy[((img * oh + oy) * ow + ox) * oc + o] as f64;
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (y, x) = (
                                    (oy + ky) as isize - pad as isize,
                                    (ox + kx) as isize - pad as isize,
                                );
                                if y < 0 || x < 0 || y >= h as isize || x >= w as isize {
                                    continue;
                                }
                                for ci in 0..c {
                                    want[((img * h + y as usize) * w + x as usize) * c + ci] +=
                                        g * wt[((o * c + ci) * 3 + ky) * 3 + kx] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        for m in TILES {
            let tiling = Tiling {
                n,
                h: oh,
                w: ow,
                pad: [2 - pad, 2 - pad],
                m,
            };
            assert_eq!((tiling.oh(), tiling.ow()), (h, w));
            let u = transformed(&wt, m, (oc, c), true);
            let got = winograd(&dy, &u, None, tiling, (oc, c));
            let err = rel_err(&got, &want);
            assert!(err < 1e-5, "case {case} tile {m}: error {err}");
        }
    }
}

#[test]
fn weight_gradient_matches_the_direct_sum() {
    for (case, &(n, h, w, c, oc, pad)) in CASES.iter().enumerate() {
        let seed = 200 + 10 * case as u64;
        let (oh, ow) = (h + 2 * pad - 2, w + 2 * pad - 2);
        let (x, dy) = (
            values(n * h * w * c, seed),
            values(n * oh * ow * oc, seed + 1),
        );
        // dW[o][ci][ky][kx] = Σ dy[oy][ox][o]·x[oy+ky−pad][ox+kx−pad][ci]
        let mut want = vec![0.0f64; oc * c * 9];
        for img in 0..n {
            for oy in 0..oh {
                for ox in 0..ow {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (y, xx) = (
                                (oy + ky) as isize - pad as isize,
                                (ox + kx) as isize - pad as isize,
                            );
                            if y < 0 || xx < 0 || y >= h as isize || xx >= w as isize {
                                continue;
                            }
                            for o in 0..oc {
                                let g = dy[((img * oh + oy) * ow + ox) * oc + o] as f64;
                                for ci in 0..c {
                                    want[((o * c + ci) * 3 + ky) * 3 + kx] += g * x
                                        [((img * h + y as usize) * w + xx as usize) * c + ci]
                                        as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        for m in TILES {
            let t = Transforms::new(m).unwrap();
            let tiling = Tiling {
                n,
                h,
                w,
                pad: [pad, pad],
                m,
            };
            let (tiles, p) = (tiling.tiles(), tiling.positions());
            let input = InputTransform {
                transforms: t.clone(),
                tiling,
                c,
            };
            let padded = padded(&x, tiling, c);
            let v = run(&input, input.rows(), c, 1, &[&padded]);
            let grad = GradOutputTransform {
                transforms: t.clone(),
                tiling,
                oc,
            };
            let yh = run(&grad, grad.rows(), oc, grad.rows() - tiles - 1, &[&dy]);
            // dU[ξ][o][ci] = Σ_t Ŷ[ξ][t][o]·V[ξ][t][ci]
            let mut du = vec![0.0f32; p * oc * c];
            for ti in 0..tiles {
                for xi in 0..p {
                    for o in 0..oc {
                        let a = yh[(xi * tiles + ti) * oc + o];
                        for ci in 0..c {
                            du[(xi * oc + o) * c + ci] += a * v[(xi * tiles + ti) * c + ci];
                        }
                    }
                }
            }
            let back = WeightGradTransform {
                transforms: t,
                oc,
                c,
            };
            let got = run(&back, oc, back.width(), oc / 2, &[&du]);
            let err = rel_err(&got, &want);
            assert!(err < 2e-5, "case {case} tile {m}: error {err}");
        }
    }
}

#[test]
fn short_inputs_are_errors_not_panics() {
    let t = Transforms::new(2).unwrap();
    let tiling = Tiling {
        n: 1,
        h: 4,
        w: 4,
        pad: [1, 1],
        m: 2,
    };
    let input = InputTransform {
        transforms: t.clone(),
        tiling,
        c: 2,
    };
    let mut out = vec![0.0; 2];
    let err = RowKernel::rows(&input, 0, &[&[0.0; 5]], &mut out).unwrap_err();
    assert!(
        err.contains("the padded input map holds 5 elements"),
        "{err}"
    );
    let padding = PadTiles { tiling, c: 2 };
    let mut out = vec![0.0; padding.width()];
    let err = RowKernel::rows(&padding, 0, &[&[0.0; 5]], &mut out).unwrap_err();
    assert!(err.contains("the input map holds 5 elements"), "{err}");
    let w = WeightTransform {
        transforms: t,
        oc: 2,
        c: 2,
        flip: false,
        taps_first: false,
    };
    let mut out = vec![0.0; w.width()];
    assert!(w.rows(0, &[], &mut out).unwrap_err().contains("missing"));
}

#[test]
fn fused_forward_matches_the_direct_convolution() {
    // The cases above, plus 108 tiles of 64 → 64 channels: two blocks.
    let mut cases = CASES.to_vec();
    cases.push((12, 9, 9, 64, 64, 1));
    for (case, &(n, h, w, c, oc, pad)) in cases.iter().enumerate() {
        let seed = 300 + 10 * case as u64;
        let (x, wt, bias) = (
            values(n * h * w * c, seed),
            values(oc * c * 9, seed + 1),
            values(oc, seed + 2),
        );
        let want = direct(&x, &wt, &bias, (n, h, w, c, oc), pad);
        for m in TILES {
            let transforms = Transforms::new(m).unwrap();
            let tiling = Tiling {
                n,
                h,
                w,
                pad: [pad, pad],
                m,
            };
            let weights = WeightTransform {
                transforms: transforms.clone(),
                oc,
                c,
                flip: false,
                taps_first: false,
            };
            let u = run(&weights, c, weights.width(), 1, &[&wt]);
            // The same weight laid out [OC, 3, 3, C] (an NHWC plan's)
            // transforms to the same U.
            let mut hwc = vec![0.0; wt.len()];
            for o in 0..oc {
                for ci in 0..c {
                    for t in 0..9 {
                        hwc[(o * 9 + t) * c + ci] = wt[(o * c + ci) * 9 + t];
                    }
                }
            }
            let taps_first = WeightTransform {
                taps_first: true,
                ..weights.clone()
            };
            assert_eq!(run(&taps_first, c, taps_first.width(), 1, &[&hwc]), u);
            let conv = TiledConv {
                transforms,
                tiling,
                k: c,
                n: oc,
                bias: true,
            };
            let panels = conv.panels();
            let packed = run(
                &panels,
                panels.groups * panels.blocks(),
                panels.row_len(),
                1,
                &[&u],
            );
            let xp = padded(&x, tiling, c);
            // Splits inside a tile row (computed twice) and at the ends.
            for split in [1, conv.rows() / 2, conv.rows() - 1] {
                let got = run(
                    &conv,
                    conv.rows(),
                    conv.width(),
                    split,
                    &[&xp, &packed, &bias],
                );
                let err = rel_err(&got, &want);
                assert!(
                    err < 1e-5,
                    "case {case} tile {m} split {split}: error {err}"
                );
            }
        }
    }
}
