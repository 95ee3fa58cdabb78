//! The weight gradient over the batch against the definition summed in
//! f64 per element (NCHW index formulas, zero padding).

use super::*;

/// `dW[o, c, ty, tx] = Σ dy[img, o, oy, ox] · x[img, c, iy, ix]` in f64.
fn reference(g: &ConvGeom, oc: usize, x: &[f32], dy: &[f32]) -> Vec<f64> {
    let mut dw = vec![0.0f64; oc * g.c * g.kh * g.kw];
    for o in 0..oc {
        for ch in 0..g.c {
            for ty in 0..g.kh {
                for tx in 0..g.kw {
                    let mut s = 0.0;
                    for img in 0..g.n {
                        for oy in 0..g.oh {
                            for ox in 0..g.ow {
                                let iy = (oy * g.stride[0] + ty * g.dilation[0]) as isize
                                    - g.pad[0] as isize;
                                let ix = (ox * g.stride[1] + tx * g.dilation[1]) as isize
                                    - g.pad[1] as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let xv =
                                    x[((img * g.c + ch) * g.h + iy as usize) * g.w + ix as usize];
                                let dv = dy[((img * oc + o) * g.oh + oy) * g.ow + ox];
                                s += f64::from(xv) * f64::from(dv);
                            }
                        }
                    }
                    dw[((o * g.c + ch) * g.kh + ty) * g.kw + tx] = s;
                }
            }
        }
    }
    dw
}

/// Runs both kernels on `g` with `oc` channels and `tasks` tasks, the
/// task rows in two calls (as two threads would), NHWC x and `[OC, N·P]`
/// dy built by the index formulas.
fn check(g: ConvGeom, oc: usize, tasks: usize) {
    let (p_in, p_out) = (g.h * g.w, g.oh * g.ow);
    let x: Vec<f32> = (0..g.n * g.c * p_in)
        .map(|i| ((i * 37 % 29) as f32 - 14.0) / 9.0)
        .collect();
    let dy: Vec<f32> = (0..g.n * oc * p_out)
        .map(|i| ((i * 53 % 31) as f32 - 15.0) / 11.0)
        .collect();
    let mut xs = vec![0.0; x.len()];
    for img in 0..g.n {
        for ch in 0..g.c {
            for q in 0..p_in {
                xs[(img * p_in + q) * g.c + ch] = x[(img * g.c + ch) * p_in + q];
            }
        }
    }
    let mut dyc = vec![0.0; dy.len()];
    for img in 0..g.n {
        for o in 0..oc {
            for q in 0..p_out {
                dyc[(o * g.n + img) * p_out + q] = dy[(img * oc + o) * p_out + q];
            }
        }
    }
    let k = ConvWeightGrad::new(g, oc, tasks);
    let split = k.split();
    let w = split.width();
    let mut parts = vec![f32::NAN; tasks * w];
    let cut = tasks / 2;
    let (lo, hi) = parts.split_at_mut(cut * w);
    k.rows(cut, &[&xs, &dyc], hi).unwrap();
    k.rows(0, &[&xs, &dyc], lo).unwrap();
    let gather = WeightFromParts { split, c: g.c };
    let mut dw = vec![f32::NAN; oc * gather.width()];
    gather.rows(0, &[&parts], &mut dw).unwrap();
    let want = reference(&g, oc, &x, &dy);
    for (i, (&got, &want)) in dw.iter().zip(&want).enumerate() {
        assert!(
            (f64::from(got) - want).abs() <= 1e-4 * (1.0 + want.abs()),
            "{g:?}, {tasks} tasks: dW[{i}] = {got}, want {want}"
        );
    }
    assert!(k.rows(0, &[&xs[..3], &dyc], &mut parts[..w]).is_err());
}

fn geom(
    n: usize,
    c: usize,
    hw: [usize; 2],
    k: [usize; 2],
    s: usize,
    p: usize,
    d: usize,
) -> ConvGeom {
    let out = |l: usize, k: usize| (l + 2 * p - d * (k - 1) - 1) / s + 1;
    ConvGeom {
        n,
        h: hw[0],
        w: hw[1],
        c,
        cg: c,
        kh: k[0],
        kw: k[1],
        stride: [s, s],
        pad: [p, p],
        dilation: [d, d],
        oh: out(hw[0], k[0]),
        ow: out(hw[1], k[1]),
    }
}

#[test]
fn weight_gradient_over_the_batch_matches_the_definition() {
    // More rows than one KC slice (several slices and a partial one),
    // odd sizes, padding, stride 2, dilation 2, more tasks than columns.
    let cases = [
        (geom(5, 3, [9, 9], [3, 3], 1, 1, 1), 5),
        (geom(3, 4, [7, 6], [3, 2], 2, 1, 1), 7),
        (geom(2, 2, [8, 7], [3, 3], 1, 2, 2), 3),
        (geom(4, 17, [5, 5], [1, 1], 1, 0, 1), 50),
        (geom(2, 1, [3, 3], [2, 2], 1, 0, 1), 2),
    ];
    for (g, oc) in cases {
        for tasks in [1, 2, 3, 5] {
            check(g, oc, tasks);
        }
    }
}
