//! GFLOP/s of the packed GEMM (weight pre-packed, the other operand packed
//! per call) against the `gemm` crate on one thread, at conv- and
//! linear-shaped products of densenet121 and vggish; then NHWC
//! convolutions of vggish, densenet121 and eeg_ccnn as an implicit GEMM
//! ([`conv::gemm`]) against an explicit im2col per image followed by the
//! packed GEMM (the path before it).
//!
//! `cargo run --release -p netc-runtime --example packed_speed [-- conv
//! [THREADS [FILTER [new]]]]` (a measurement, not a test): `conv` runs
//! only the convolutions, on THREADS threads, those whose name contains
//! FILTER, and with `new` only the implicit GEMM. `-- train [THREADS]`
//! runs only the products of eeg_ccnn's training step that the `gemm`
//! crate computes (fc and its gradients, the per-image convolution weight
//! gradients) and vggish's batch-32 `linear` products, against the packed
//! GEMM with both operands packed per call and the thin products
//! ([`thin::gemm`], or the crate where no thin form fits).
//! `PACKED_SPEED_CPU=1` times one thread by its CPU time (steadier on a
//! loaded machine).

use netc_runtime::gemm::conv::{self, ConvGeom};
use netc_runtime::gemm::packed::{self, PackPanels, Prepacked, Side};
use netc_runtime::gemm::{sgemm, thin, Strides, TileWork};
use netc_runtime::plan::RowKernel;
use std::time::Instant;

/// Nanoseconds the calling thread has run on a CPU
/// (`CLOCK_THREAD_CPUTIME_ID`; 0 off Linux).
fn thread_cpu_ns() -> u64 {
    #[cfg(target_os = "linux")]
    {
        #[repr(C)]
        struct Timespec {
            sec: i64,
            nsec: i64,
        }
        extern "C" {
            fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
        }
        const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
        let mut ts = Timespec { sec: 0, nsec: 0 };
        // SAFETY: a valid clock id and a writable timespec.
        if unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0 {
            return ts.sec as u64 * 1_000_000_000 + ts.nsec as u64;
        }
    }
    0
}

/// Median seconds of `reps` runs of `f` after one warm-up run. With
/// `PACKED_SPEED_CPU=1`, the calling thread's CPU seconds instead: on a
/// loaded machine a one-thread figure that leaves out the time the
/// thread waited for a CPU.
fn median_secs(reps: usize, mut f: impl FnMut()) -> f64 {
    let cpu = std::env::var("PACKED_SPEED_CPU").is_ok_and(|v| v == "1");
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let (t0, c0) = (Instant::now(), thread_cpu_ns());
            f();
            if cpu {
                (thread_cpu_ns() - c0) as f64 * 1e-9
            } else {
                t0.elapsed().as_secs_f64()
            }
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
    // `-- conv [threads]`: the convolutions only, on `threads` threads.
    let threads: usize = std::env::args()
        .nth(2)
        .and_then(|t| t.parse().ok())
        .unwrap_or(1)
        .max(1);
    let mut work: Vec<TileWork> = (0..threads)
        .map(|_| TileWork::default().with_packed())
        .collect();
    if std::env::args().nth(1).as_deref() == Some("conv") {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| e.to_string())?;
        return pool.install(|| convs(&mut work, threads));
    }
    if std::env::args().nth(1).as_deref() == Some("train") {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| e.to_string())?;
        pool.install(|| train(&mut work, threads));
        return Ok(());
    }
    println!("1 thread, median of 7");
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
    convs(&mut work, 1)
}

/// The explicit im2col panel of image `img` (`[OH·OW][KH·KW·C]`).
fn im2col(g: &ConvGeom, x: &[f32], img: usize, col: &mut [f32]) {
    let mut at = 0;
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            for ty in 0..g.kh {
                for tx in 0..g.kw {
                    let iy = (oy * g.stride[0] + ty * g.dilation[0]) as isize - g.pad[0] as isize;
                    let ix = (ox * g.stride[1] + tx * g.dilation[1]) as isize - g.pad[1] as isize;
                    let inside = (0..g.h as isize).contains(&iy) && (0..g.w as isize).contains(&ix);
                    let dst = &mut col[at..at + g.c];
                    if inside {
                        let p = ((img * g.h + iy as usize) * g.w + ix as usize) * g.c;
                        dst.copy_from_slice(&x[p..p + g.c]);
                    } else {
                        dst.fill(0.0);
                    }
                    at += g.c;
                }
            }
        }
    }
}

/// NHWC convolutions on `threads` threads of the current pool: implicit
/// GEMM against im2col + packed.
fn convs(work: &mut [TileWork], threads: usize) -> Result<(), String> {
    // (name, images, h, w, c, oc, k, stride, pad)
    let shapes = [
        ("vggish features.0", 4, 96, 64, 1, 64, 3, 1, 1),
        ("vggish features.3", 4, 48, 32, 64, 128, 3, 1, 1),
        ("vggish features.8", 4, 24, 16, 256, 256, 3, 1, 1),
        ("vggish features.13", 4, 12, 8, 512, 512, 3, 1, 1),
        ("densenet conv2 56x56", 2, 56, 56, 128, 32, 3, 1, 1),
        ("densenet conv2 28x28", 8, 28, 28, 128, 32, 3, 1, 1),
        ("densenet conv2 14x14", 8, 14, 14, 128, 32, 3, 1, 1),
        ("densenet conv2 7x7", 8, 7, 7, 128, 32, 3, 1, 1),
        ("densenet conv1 1x1", 2, 56, 56, 256, 128, 1, 1, 0),
        ("densenet stem 7x7", 1, 224, 224, 3, 64, 7, 2, 3),
        ("eeg_ccnn conv2", 64, 9, 9, 64, 128, 3, 1, 1),
    ];
    // `-- conv THREADS FILTER`: only the shapes whose name contains FILTER.
    let filter = std::env::args().nth(3).unwrap_or_default();
    // `-- conv THREADS FILTER new`: the implicit GEMM only.
    let skip_old = std::env::args().nth(4).as_deref() == Some("new");
    println!("NHWC convolutions, {threads} thread(s), median of 7");
    for (name, n, h, w, c, oc, k, s, p) in shapes {
        if !name.contains(&filter) {
            continue;
        }
        let out = |d: usize| (d + 2 * p - k) / s + 1;
        let g = ConvGeom {
            n,
            h,
            w,
            c,
            cg: c,
            kh: k,
            kw: k,
            stride: [s, s],
            pad: [p, p],
            dilation: [1, 1],
            oh: out(h),
            ow: out(w),
        };
        let (m, depth) = (g.rows(), g.depth());
        let x: Vec<f32> = (0..n * h * w * c)
            .map(|i| ((i % 19) as f32 - 9.0) * 0.01)
            .collect();
        let wt: Vec<f32> = (0..oc * depth)
            .map(|i| ((i % 13) as f32 - 6.0) * 0.01)
            .collect();
        let pack = PackPanels {
            side: Prepacked::B,
            dim: oc,
            k: depth,
            strides: Strides::transposed(depth),
            group_stride: 0,
            groups: 1,
        };
        let mut wp = vec![0.0; pack.group_len()];
        pack.rows(0, &[&wt], &mut wp)?;
        let mut y = vec![0.0f32; m * oc];
        let flop = 2.0 * (m * oc * depth) as f64;
        let per_image = g.oh * g.ow;
        let mut col = vec![0.0f32; per_image * depth];
        let t_old = if skip_old {
            f64::NAN
        } else {
            median_secs(7, || {
                for img in 0..n {
                    im2col(&g, &x, img, &mut col);
                    // SAFETY: the panel, packed weight and image's rows of y
                    // are sized above; one work buffer, one thread.
                    unsafe {
                        packed::gemm(
                            per_image,
                            oc,
                            depth,
                            1.0,
                            Side::Raw(col.as_ptr(), Strides::row_major(depth)),
                            Side::Packed(wp.as_ptr()),
                            0.0,
                            y.as_mut_ptr().add(img * per_image * oc),
                            oc,
                            threads,
                            work.as_mut_ptr(),
                        )
                    }
                }
            })
        };
        let t_new = median_secs(7, || {
            // SAFETY: x spans the geometry; the packed weight and y are
            // sized above; one work buffer, one thread.
            unsafe {
                conv::gemm(
                    &g,
                    conv::Source::Input(x.as_ptr()),
                    wp.as_ptr(),
                    oc,
                    0.0,
                    y.as_mut_ptr(),
                    oc,
                    threads,
                    work.as_mut_ptr(),
                    &|_| {},
                )
            }
        });
        println!(
            "{name:22} {m:6}x{oc:4}x{depth:5}: im2col + packed {:6.1} GFLOP/s | implicit {:6.1} GFLOP/s",
            flop / t_old / 1e9,
            flop / t_new / 1e9
        );
    }
    Ok(())
}

/// The products of eeg_ccnn's training step at batch 256 that run on the
/// `gemm` crate (`compiler/src/back/lower/contract/grad.rs`) and vggish's
/// `linear` products at batch 32, with the strides the plan reads them
/// through, against [`packed::gemm`] with both operands [`Side::Raw`] and
/// [`thin::gemm`], on `threads` threads of the current pool.
fn train(work: &mut [TileWork], threads: usize) {
    // (name, [m, n, k], whether A and B are read transposed, calls per
    // timed run): the per-image weight gradients accumulate (beta 1).
    let shapes = [
        ("fc forward x·Wᵀ", [256, 1024, 5184], [false, true], 1),
        ("fc dW = dyᵀ·x", [1024, 5184, 256], [true, false], 1),
        ("fc dx = dy·W", [256, 5184, 1024], [false, false], 1),
        ("conv2 dWᵀ/image", [576, 128, 81], [false, true], 32),
        ("conv3 dWᵀ/image", [1152, 256, 81], [false, true], 32),
        ("conv4 dWᵀ/image", [2304, 64, 81], [false, true], 32),
        ("vggish e0 x·Wᵀ", [32, 4096, 12288], [false, true], 1),
        ("vggish e0 dx", [32, 12288, 4096], [false, false], 1),
        ("vggish e2 x·Wᵀ", [32, 4096, 4096], [false, true], 1),
    ];
    println!("{threads} thread(s), median of 7");
    for (name, [m, n, k], [a_t, b_t], calls) in shapes {
        let a: Vec<f32> = (0..m * k).map(|i| ((i % 17) as f32 - 8.0) * 0.01).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i % 13) as f32 - 6.0) * 0.01).collect();
        let mut c = vec![0.0f32; m * n];
        // A is m×k, B k×n, each packed densely in its own order.
        let sa = if a_t {
            Strides::transposed(m)
        } else {
            Strides::row_major(k)
        };
        let sb = if b_t {
            Strides::transposed(k)
        } else {
            Strides::row_major(n)
        };
        let beta = if calls > 1 { 1.0 } else { 0.0 };
        let flop = 2.0 * (m * n * k * calls) as f64;
        let t_crate = median_secs(7, || {
            for _ in 0..calls {
                sgemm(m, n, k, 1.0, &a, sa, &b, sb, beta, &mut c, n, threads).expect("sgemm");
            }
        });
        let t_packed = median_secs(7, || {
            for _ in 0..calls {
                // SAFETY: operands sized above; one work buffer per thread.
                unsafe {
                    packed::gemm(
                        m,
                        n,
                        k,
                        1.0,
                        Side::Raw(a.as_ptr(), sa),
                        Side::Raw(b.as_ptr(), sb),
                        beta,
                        c.as_mut_ptr(),
                        n,
                        threads,
                        work.as_mut_ptr(),
                    )
                }
            }
        });
        let thin = thin::Form::of((m, n, k), sa, sb).is_some();
        let t_thin = median_secs(7, || {
            for _ in 0..calls {
                // SAFETY: operands sized above.
                unsafe {
                    thin::gemm(
                        (m, n, k),
                        a.as_ptr(),
                        sa,
                        b.as_ptr(),
                        sb,
                        beta,
                        c.as_mut_ptr(),
                        n,
                        threads,
                        &mut work[0],
                    )
                }
            }
        });
        println!(
            "{name:16} {m:4}x{n:4}x{k:5}: gemm crate {:6.1} GFLOP/s | packed (raw) {:6.1} GFLOP/s | thin{} {:6.1} GFLOP/s",
            flop / t_crate / 1e9,
            flop / t_packed / 1e9,
            if thin { "" } else { " (crate)" },
            flop / t_thin / 1e9
        );
    }
}
