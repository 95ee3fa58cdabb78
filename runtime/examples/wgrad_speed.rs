//! Speed of the one-pass convolution weight gradient
//! (`netc_runtime::gemm::wgrad`) on the seed models' shapes: the best of 8
//! calls, GFLOP/s, its rows split over `THREADS` threads (first argument,
//! default 1) the way the executor splits a row step.
//!
//!     cargo run --release -p netc-runtime --example wgrad_speed -- 2

use netc_runtime::gemm::conv::ConvGeom;
use netc_runtime::gemm::wgrad::ConvWeightGrad;
use netc_runtime::plan::RowKernel;
use rayon::prelude::*;
use std::time::Instant;

/// (name, images, map side, input channels, output channels) of 3×3
/// convolutions with padding 1.
const SHAPES: &[(&str, usize, usize, usize, usize)] = &[
    ("eeg_ccnn conv2, batch 256", 256, 9, 64, 128),
    ("eeg_ccnn conv3, batch 256", 256, 9, 128, 256),
    ("eeg_ccnn conv4, batch 256", 256, 9, 256, 64),
    ("densenet121 block 3 conv2, batch 8", 8, 14, 128, 32),
    ("densenet121 block 4 conv2, batch 8", 8, 7, 128, 32),
];

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool");
    for &(name, n, side, c, oc) in SHAPES {
        let kernel = ConvWeightGrad {
            geom: ConvGeom {
                n,
                h: side,
                w: side,
                c,
                cg: c,
                kh: 3,
                kw: 3,
                stride: [1, 1],
                pad: [1, 1],
                dilation: [1, 1],
                oh: side,
                ow: side,
            },
            oc,
        };
        let x: Vec<f32> = (0..kernel.x_len()).map(|i| (i % 7) as f32 * 0.1).collect();
        let dy: Vec<f32> = (0..kernel.dy_len()).map(|i| (i % 5) as f32 * 0.1).collect();
        let rows = kernel.result_rows();
        let per = rows.div_ceil(threads);
        let mut out = vec![0.0f32; rows * oc];
        let flops = 2.0 * (n * side * side) as f64 * (rows * oc) as f64;
        let mut best = f64::MAX;
        for _ in 0..8 {
            let start = Instant::now();
            pool.install(|| {
                out.par_chunks_mut(per * oc)
                    .enumerate()
                    .for_each(|(i, part)| {
                        kernel
                            .rows(i * per, &[&x, &dy], part)
                            .expect("valid inputs")
                    })
            });
            best = best.min(start.elapsed().as_secs_f64());
        }
        println!(
            "{name}: {:.2} ms, {:.0} GFLOP/s on {threads} thread(s)",
            best * 1e3,
            flops / best / 1e9
        );
    }
}
