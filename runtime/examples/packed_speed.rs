//! GFLOP/s of the packed GEMM (weight pre-packed, the other operand packed
//! per call) against the `gemm` crate on one thread, at conv- and
//! linear-shaped products of densenet121 and vggish.
//!
//! `cargo run --release -p netc-runtime --example packed_speed` (a
//! measurement, not a test).

use netc_runtime::gemm::packed::{self, PackPanels, Prepacked, Side};
use netc_runtime::gemm::{sgemm, Strides, TileWork};
use netc_runtime::plan::RowKernel;
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

fn main() -> Result<(), String> {
    // (m, n, k, which operand is the weight): NCHW convs put it in A,
    // linear layers in B.
    let shapes = [
        (64, 96, 128, Prepacked::A),
        (384, 480, 128, Prepacked::A),
        (3136, 32, 1152, Prepacked::B),
        (12544, 64, 147, Prepacked::B),
        (128, 3136, 576, Prepacked::A),
        (32, 3136, 1152, Prepacked::A),
        (128, 784, 512, Prepacked::A),
        (512, 49, 4608, Prepacked::A),
        (32, 49, 1152, Prepacked::A),
        (256, 1536, 2304, Prepacked::A),
        (32, 4096, 12288, Prepacked::B),
        (1, 4096, 12288, Prepacked::B),
    ];
    println!("1 thread, median of 7");
    let mut work = vec![TileWork::default().with_packed()];
    for (m, n, k, pre) in shapes {
        let a: Vec<f32> = (0..m * k).map(|i| ((i % 17) as f32 - 8.0) * 0.01).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i % 13) as f32 - 6.0) * 0.01).collect();
        let mut c = vec![0.0f32; m * n];
        let flop = 2.0 * (m * n * k) as f64;
        // Linear layers read W [n×k] transposed.
        let (sa, sb) = match pre {
            Prepacked::B => (Strides::row_major(k), Strides::transposed(k)),
            _ => (Strides::row_major(k), Strides::row_major(n)),
        };
        let t_native = median_secs(7, || {
            sgemm(m, n, k, 1.0, &a, sa, &b, sb, 0.0, &mut c, n, 1).expect("sgemm");
        });
        let (dim, strides, src) = match pre {
            Prepacked::B => (n, sb, &b),
            _ => (m, sa, &a),
        };
        let p = PackPanels {
            side: pre,
            dim,
            k,
            strides,
            group_stride: 0,
            groups: 1,
        };
        let mut w = vec![0.0; p.group_len()];
        p.rows(0, &[src], &mut w)?;
        let (pa, pb) = match pre {
            Prepacked::B => (Side::Raw(a.as_ptr(), sa), Side::Packed(w.as_ptr())),
            _ => (Side::Packed(w.as_ptr()), Side::Raw(b.as_ptr(), sb)),
        };
        let t_packed = median_secs(7, || {
            // SAFETY: operands sized above; one work buffer, one thread.
            unsafe {
                packed::gemm(
                    m,
                    n,
                    k,
                    1.0,
                    pa,
                    pb,
                    0.0,
                    c.as_mut_ptr(),
                    n,
                    1,
                    work.as_mut_ptr(),
                )
            }
        });
        println!(
            "{m:4}x{n:5}x{k:5} ({pre:?} packed): gemm crate {:6.1} GFLOP/s | packed {:6.1} GFLOP/s",
            flop / t_native / 1e9,
            flop / t_packed / 1e9
        );
    }
    Ok(())
}
