//! The weight gradient against its definition summed in f64, over
//! strides, padding, dilation, channel counts around the tile's 8 rows
//! and 48 columns, chunks that split images, and output rows split at
//! arbitrary places (the way the executor splits them over threads).

use super::*;

/// (images, [h, w], c, oc, [kh, kw], stride, pad, dilation)
type Case = (
    usize,
    [usize; 2],
    usize,
    usize,
    [usize; 2],
    usize,
    usize,
    usize,
);

fn kernel((n, [h, w], c, oc, [kh, kw], s, pad, d): Case) -> ConvWeightGrad {
    let out = |size: usize, k: usize| (size + 2 * pad - d * (k - 1) - 1) / s + 1;
    ConvWeightGrad {
        geom: ConvGeom {
            n,
            h,
            w,
            c,
            cg: c,
            kh,
            kw,
            stride: [s, s],
            pad: [pad, pad],
            dilation: [d, d],
            oh: out(h, kh),
            ow: out(w, kw),
        },
        oc,
    }
}

/// `dWᵀ[(c, ty, tx), o]` by the definition in the module docs.
fn reference(k: &ConvWeightGrad, x: &[f32], dy: &[f32]) -> Vec<f64> {
    let g = &k.geom;
    let mut dw = vec![0.0f64; k.result_rows() * k.oc];
    for ty in 0..g.kh {
        for tx in 0..g.kw {
            for c in 0..g.c {
                let row = (c * g.kh + ty) * g.kw + tx;
                for img in 0..g.n {
                    for oy in 0..g.oh {
                        for ox in 0..g.ow {
                            let iy =
                                (oy * g.stride[0] + ty * g.dilation[0]) as i64 - g.pad[0] as i64;
                            let ix =
                                (ox * g.stride[1] + tx * g.dilation[1]) as i64 - g.pad[1] as i64;
                            if iy < 0 || ix < 0 || iy >= g.h as i64 || ix >= g.w as i64 {
                                continue;
                            }
                            let xv = x[((img * g.h + iy as usize) * g.w + ix as usize) * g.c + c];
                            let at = ((img * g.oh + oy) * g.ow + ox) * k.oc;
                            for o in 0..k.oc {
                                dw[row * k.oc + o] += xv as f64 * dy[at + o] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    dw
}

fn data(len: usize, seed: f32) -> Vec<f32> {
    (0..len)
        .map(|i| (i as f32 * 0.61 + seed).sin() * 1.7)
        .collect()
}

/// Every split of the rows into `[0, cut)` and `[cut, rows)`, computed
/// with and without the vector tile, against the reference.
fn check(case: Case) {
    let k = kernel(case);
    let (x, dy) = (data(k.x_len(), 0.3), data(k.dy_len(), 1.1));
    let want = reference(&k, &x, &dy);
    let rows = k.result_rows();
    let mut paths = vec![false];
    if crate::gemm::kernel_avx512::available() {
        paths.push(true);
    }
    for vector in paths {
        for cut in [rows, rows / 3, 5.min(rows)] {
            let mut got = vec![f32::NAN; rows * k.oc];
            let (lo, hi) = got.split_at_mut(cut * k.oc);
            k.accumulate(0, &x, &dy, lo, vector);
            k.accumulate(cut, &x, &dy, hi, vector);
            for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "{case:?} vector {vector} cut {cut}: dWᵀ[{}, {}] = {g}, want {w}",
                    i / k.oc,
                    i % k.oc
                );
            }
        }
    }
}

#[test]
fn weight_gradients_match_the_definition() {
    for case in [
        // eeg_ccnn-like: 3×3, pad 1, a map smaller than a chunk.
        (3, [9, 9], 16, 64, [3, 3], 1, 1, 1),
        // 8×48 tile edges: 1..8 rows and 1..3 vectors with masked tails.
        (2, [5, 6], 13, 50, [3, 3], 1, 1, 1),
        (2, [5, 6], 7, 17, [3, 3], 1, 1, 1),
        (1, [4, 4], 3, 1, [2, 2], 1, 0, 1),
        // Strides, dilation, asymmetric kernels, wide padding.
        (2, [11, 10], 9, 33, [3, 2], 2, 1, 1),
        (2, [12, 12], 8, 48, [3, 3], 1, 2, 2),
        (1, [7, 7], 5, 96, [7, 7], 2, 3, 1),
        // Multiples of 64 output channels: 6×64 tiles, 1..6 rows.
        (2, [5, 6], 13, 192, [3, 3], 1, 1, 1),
        (1, [7, 7], 5, 64, [7, 7], 2, 3, 1),
        // A 1×1 convolution, and maps wider than a chunk.
        (2, [6, 6], 24, 40, [1, 1], 1, 0, 1),
        (2, [3, 300], 4, 20, [1, 3], 1, 1, 1),
    ] {
        check(case);
    }
}

#[test]
fn malformed_inputs_are_refused() {
    let k = kernel((1, [4, 4], 3, 5, [3, 3], 1, 1, 1));
    let (x, dy) = (data(k.x_len(), 0.0), data(k.dy_len(), 0.0));
    let mut out = vec![0.0; k.result_rows() * k.oc];
    let short = RowKernel::rows(&k, 0, &[&x[1..], &dy], &mut out).unwrap_err();
    assert!(short.contains("x holds 47"), "{short}");
    let past = RowKernel::rows(&k, 3, &[&x, &dy], &mut out).unwrap_err();
    assert!(past.contains("past its 27 rows"), "{past}");
    let grouped = ConvWeightGrad {
        geom: ConvGeom { cg: 1, ..k.geom },
        ..k
    };
    let err = RowKernel::rows(&grouped, 0, &[&x, &dy], &mut out).unwrap_err();
    assert!(err.contains("one group only"), "{err}");
}
