//! Speed of the pieces of a Winograd convolution
//! (`netc_runtime::winograd`) on eeg_ccnn's shapes at batch 256: each
//! transform as a row step over all its rows, and the `α²` GEMMs of the
//! forward (`M_ξ = V_ξ·U_ξ`) and of the weight gradient
//! (`∂U_ξ = Ŷ_ξᵀ·V_ξ`) through the packed GEMM, on one thread; the best
//! of 5 runs each, in ms and (for the GEMMs) GFLOP/s.
//!
//!     cargo run --release -p netc-runtime --example winograd_speed

use netc_runtime::gemm::packed::{self, Prepacked};
use netc_runtime::gemm::Strides;
use netc_runtime::plan::RowKernel;
use netc_runtime::winograd::{
    best_tile, GradOutputTransform, InputTransform, OutputTransform, PadTiles, TiledConv, Tiling,
    Transforms, WeightGradTransform, WeightTransform,
};
use std::time::Instant;

/// Best milliseconds of 5 runs of `f` after a warm-up.
fn best_ms(mut f: impl FnMut()) -> f64 {
    f();
    (0..5)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

/// Runs `kernel` over `rows` rows of `width` into a fresh buffer.
fn rows(kernel: &dyn RowKernel, rows: usize, width: usize, inputs: &[&[f32]]) -> (f64, Vec<f32>) {
    let mut out = vec![0.0; rows * width];
    let ms = best_ms(|| kernel.rows(0, inputs, &mut out).unwrap());
    (ms, out)
}

fn main() {
    let n = 256;
    for (name, c, oc) in [("conv2", 64, 128), ("conv3", 128, 256), ("conv4", 256, 64)] {
        let m = best_tile(9, 9);
        let tiling = Tiling {
            n,
            h: 9,
            w: 9,
            pad: [1, 1],
            m,
        };
        let t = Transforms::new(m).unwrap();
        let (tiles, p) = (tiling.tiles(), tiling.positions());
        let x = vec![0.5f32; n * 81 * c];
        let w = vec![0.25f32; oc * c * 9];
        let dy = vec![0.5f32; n * 81 * oc];
        let wt = WeightTransform {
            transforms: t.clone(),
            oc,
            c,
            flip: false,
            taps_first: false,
        };
        let (ms_w, u) = rows(&wt, c, wt.width(), &[&w]);
        let it = InputTransform {
            transforms: t.clone(),
            tiling,
            c,
        };
        let pt = PadTiles { tiling, c };
        let (ms_pad, xp) = rows(&pt, pt.rows(), pt.width(), &[&x]);
        let (ms_in, v) = rows(&it, it.rows(), c, &[&xp]);
        let mut mm = vec![0.0f32; tiles * p * oc];
        let ms_gemm = best_ms(|| {
            for xi in 0..p {
                packed::sgemm(
                    tiles,
                    oc,
                    c,
                    1.0,
                    &v[xi * tiles * c..],
                    Strides::row_major(c),
                    &u[xi * oc..],
                    Strides::row_major(p * oc),
                    0.0,
                    &mut mm[xi * tiles * oc..],
                    oc,
                    Prepacked::Neither,
                    1,
                )
                .unwrap();
            }
        });
        let conv = TiledConv {
            transforms: t.clone(),
            tiling,
            k: c,
            n: oc,
            bias: false,
        };
        let panels = conv.panels();
        let (_, packed_u) = rows(
            &panels,
            panels.groups * panels.blocks(),
            panels.row_len(),
            &[&u],
        );
        let (ms_fused, _) = rows(&conv, conv.rows(), conv.width(), &[&xp, &packed_u]);
        let ot = OutputTransform {
            transforms: t.clone(),
            tiling,
            oc,
            bias: false,
        };
        let (ms_out, _) = rows(&ot, ot.rows(), ot.width(), &[&mm]);
        let gt = GradOutputTransform {
            transforms: t.clone(),
            tiling,
            oc,
        };
        let (ms_gy, yh) = rows(&gt, gt.rows(), oc, &[&dy]);
        let mut du = vec![0.0f32; p * oc * c];
        let ms_wg = best_ms(|| {
            for xi in 0..p {
                packed::sgemm(
                    oc,
                    c,
                    tiles,
                    1.0,
                    &yh[xi * tiles * oc..],
                    Strides::transposed(oc),
                    &v[xi * tiles * c..],
                    Strides::row_major(c),
                    0.0,
                    &mut du[xi * oc * c..],
                    c,
                    Prepacked::Neither,
                    1,
                )
                .unwrap();
            }
        });
        let back = WeightGradTransform {
            transforms: t,
            oc,
            c,
        };
        let (ms_back, _) = rows(&back, oc, back.width(), &[&du]);
        let gf = |ms: f64| 2.0 * (p * tiles * c * oc) as f64 / ms / 1e6;
        println!(
            "{name} ({c}->{oc}, F({m}x{m})): weights {ms_w:.2} | pad {ms_pad:.2} | input {ms_in:.2} | GEMMs {ms_gemm:.2} ({:.0} GFLOP/s) | output {ms_out:.2} | grad tiles {ms_gy:.2} | wgrad GEMMs {ms_wg:.2} ({:.0} GFLOP/s) | dW {ms_back:.2} ms | fused forward {ms_fused:.2} ms",
            gf(ms_gemm), gf(ms_wg)
        );
    }
}
