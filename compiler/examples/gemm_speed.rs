//! GFLOP/s of the two GEMM paths on one thread: the runtime's `gemm`-crate
//! SGEMM (x86-v4) and the Cranelift f32x4 tile driver, at 512³ and at the
//! conv-shaped 3136×128×576 (a 3×3 conv, 64→128 channels, 56×56 output).
//!
//! `cargo run --release --example gemm_speed` (a measurement, not a test).

use netc::back::gemm_tile::TileKernel;
use netc::back::jit::Jit;
use netc_runtime::gemm::{sgemm, Strides};
use std::time::Instant;

/// Median seconds of `reps` runs of `f` after one warm-up run.
fn median_secs(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    t[t.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut jit = Jit::new()?;
    let tile = TileKernel::best(&jit);
    let g = tile.gemm(&mut jit)?;
    println!(
        "tile {}x{} unroll {} ({}), 1 thread, median of 7",
        tile.mr,
        tile.nr,
        tile.unroll,
        if tile.fma { "fma" } else { "mul+add" }
    );
    for (m, n, k) in [(512, 512, 512), (3136, 128, 576)] {
        let a: Vec<f32> = (0..m * k).map(|i| ((i % 17) as f32 - 8.0) * 0.01).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i % 13) as f32 - 6.0) * 0.01).collect();
        let mut c = vec![0.0f32; m * n];
        let flop = 2.0 * (m * n * k) as f64;
        let (sa, sb) = (Strides::row_major(k), Strides::row_major(n));
        let t_native = median_secs(7, || {
            sgemm(m, n, k, 1.0, &a, sa, &b, sb, 0.0, &mut c, n, 1).expect("sgemm");
        });
        let t_tile = median_secs(7, || {
            g.sgemm(m, n, k, 1.0, &a, sa, &b, sb, 0.0, &mut c, n)
                .expect("tile sgemm");
        });
        println!(
            "{m}x{n}x{k}: gemm crate (x86-v4) {:6.1} GFLOP/s | Cranelift tile {:6.1} GFLOP/s",
            flop / t_native / 1e9,
            flop / t_tile / 1e9
        );
    }
    Ok(())
}
