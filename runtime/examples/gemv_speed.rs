//! Effective weight bandwidth (GB/s of `W` read) of the batch-1 `linear`
//! product: the GEMV ([`gemv::gemv`], `W` read in place) against the
//! packed GEMM with `W` pre-packed (the path before it), on 1 and 2
//! threads, at the linear shapes of vggish, eeg_ccnn and eeg_mlp (and
//! vggish's first at batch 32, where the packed GEMM streams the weight
//! once and prefetches its next panel).
//!
//! `cargo run --release -p netc-runtime --example gemv_speed`
//! (a measurement, not a test).

use netc_runtime::gemm::packed::{self, PackPanels, Prepacked, Side};
use netc_runtime::gemm::{gemv, Strides, TileWork};
use netc_runtime::plan::RowKernel;
use std::time::Instant;

/// Median seconds of `reps` runs of `f` after two warm-up runs.
fn median_secs(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
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

fn main() -> Result<(), String> {
    // (name, m, n, k)
    let shapes = [
        ("vggish embeddings.0", 1, 4096, 12288),
        ("vggish embeddings.2", 1, 4096, 4096),
        ("vggish embeddings.0 m=4", 4, 4096, 12288),
        ("vggish embeddings.0 m=32", 32, 4096, 12288),
        ("eeg_ccnn fc", 1, 1024, 5184),
        ("eeg_mlp fc1", 1, 512, 324),
        ("eeg_mlp fc2", 1, 256, 512),
    ];
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| e.to_string())?;
        println!("{threads} thread(s), median");
        for (name, m, n, k) in shapes {
            let x: Vec<f32> = (0..m * k).map(|i| ((i % 17) as f32 - 8.0) * 0.01).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i % 13) as f32 - 6.0) * 0.01).collect();
            let mut y = vec![0.0f32; m * n];
            let bytes = (n * k * 4) as f64;
            let reps = (2_000_000_000 / (n * k * 4)).clamp(9, 2001);
            let t_gemv = pool.install(|| {
                median_secs(reps, || {
                    // SAFETY: operands sized above.
                    unsafe {
                        gemv::gemv(
                            m,
                            n,
                            k,
                            x.as_ptr(),
                            k,
                            w.as_ptr(),
                            k,
                            0.0,
                            y.as_mut_ptr(),
                            n,
                            threads,
                        )
                    }
                })
            });
            let p = PackPanels {
                side: Prepacked::B,
                dim: n,
                k,
                strides: Strides::transposed(k),
                group_stride: 0,
                groups: 1,
            };
            let mut wp = vec![0.0; p.group_len()];
            p.rows(0, &[&w], &mut wp)?;
            let mut work: Vec<TileWork> = (0..threads)
                .map(|_| TileWork::default().with_packed())
                .collect();
            let t_packed = pool.install(|| {
                median_secs(reps, || {
                    // SAFETY: operands sized above; a work buffer per thread.
                    unsafe {
                        packed::gemm(
                            m,
                            n,
                            k,
                            1.0,
                            Side::Raw(x.as_ptr(), Strides::row_major(k)),
                            Side::Packed(wp.as_ptr()),
                            0.0,
                            y.as_mut_ptr(),
                            n,
                            threads,
                            work.as_mut_ptr(),
                        )
                    }
                })
            });
            println!(
                "{name:26} {m}x{n:5}x{k:5}: gemv {:8.1} us {:6.1} GB/s | packed {:8.1} us {:6.1} GB/s",
                t_gemv * 1e6,
                bytes / t_gemv / 1e9,
                t_packed * 1e6,
                bytes / t_packed / 1e9
            );
        }
    }
    Ok(())
}
