//! The implicit-GEMM convolution against an explicit reference: a plain
//! im2col written here from the definition, multiplied by the weight
//! with `sgemm_naive`, on awkward shapes (padding, stride 2, dilation,
//! groups, sizes off the tile and block sizes, batch 1 and 3, narrow and
//! wide products) on 1 and 2 threads.

use super::*;
use crate::gemm::packed::{PackPanels, Prepacked};
use crate::gemm::{sgemm_naive, test_data as data, Strides};
use crate::plan::RowKernel;

/// One case: geometry of the whole input (`c = groups·cg`), output
/// channels per group `og`.
#[derive(Debug, Clone, Copy)]
struct Case {
    n: usize,
    hw: [usize; 2],
    cg: usize,
    groups: usize,
    og: usize,
    k: [usize; 2],
    stride: usize,
    pad: usize,
    dilation: usize,
}

impl Case {
    fn geom(&self) -> ConvGeom {
        let out = |a: usize| {
            (self.hw[a] + 2 * self.pad - self.dilation * (self.k[a] - 1) - 1) / self.stride + 1
        };
        ConvGeom {
            n: self.n,
            h: self.hw[0],
            w: self.hw[1],
            c: self.cg * self.groups,
            cg: self.cg,
            kh: self.k[0],
            kw: self.k[1],
            stride: [self.stride; 2],
            pad: [self.pad; 2],
            dilation: [self.dilation; 2],
            oh: out(0),
            ow: out(1),
        }
    }
}

/// The explicit A of group `grp`: `[rows][kh·kw·cg]`, from the definition.
fn im2col(g: &ConvGeom, x: &[f32], grp: usize) -> Vec<f32> {
    let mut col = Vec::with_capacity(g.rows() * g.depth());
    for img in 0..g.n {
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                for ty in 0..g.kh {
                    for tx in 0..g.kw {
                        let iy =
                            (oy * g.stride[0] + ty * g.dilation[0]) as isize - g.pad[0] as isize;
                        let ix =
                            (ox * g.stride[1] + tx * g.dilation[1]) as isize - g.pad[1] as isize;
                        for ch in 0..g.cg {
                            let inside =
                                (0..g.h as isize).contains(&iy) && (0..g.w as isize).contains(&ix);
                            col.push(if inside {
                                x[((img * g.h + iy as usize) * g.w + ix as usize) * g.c
                                    + grp * g.cg
                                    + ch]
                            } else {
                                0.0
                            });
                        }
                    }
                }
            }
        }
    }
    col
}

/// The weight `wt` (`[groups·og][k]`) packed as B for `groups` products
/// of `og` columns each, and one group's packed length.
fn pack_weight(wt: &[f32], og: usize, k: usize, groups: usize) -> (Vec<f32>, usize) {
    let pack = PackPanels {
        side: Prepacked::B,
        dim: og,
        k,
        strides: Strides::transposed(k),
        group_stride: og * k,
        groups,
    };
    let mut packed = vec![0.0; groups * pack.group_len()];
    pack.rows(0, &[wt], &mut packed).unwrap();
    (packed, pack.group_len())
}

/// Runs the implicit GEMM of every group (output `[rows][groups·og]`,
/// beta 0 then, when `beta_one`, once more adding) and compares with the
/// reference; checks `done` covered every row exactly once per call.
fn check(case: Case, threads: usize, beta_one: bool, wide: bool) -> Result<(), String> {
    let g = case.geom();
    let (m, k, og) = (g.rows(), g.depth(), case.og);
    let oc = og * case.groups;
    let x = data(g.n * g.h * g.w * g.c, 1 + m as u64);
    // Weight [oc][k], group grp's rows grp·og.., read as B = Wᵀ.
    let wt = data(oc * k, 7 + k as u64);
    let (packed, group_len) = pack_weight(&wt, og, k, case.groups);
    let ldc = oc + 3;
    let mut want = data(m * ldc, 3);
    let mut got = want.clone();
    for grp in 0..case.groups {
        let col = im2col(&g, &x, grp);
        let beta = if beta_one { 1.0 } else { 0.0 };
        for _ in 0..1 + beta_one as usize {
            sgemm_naive(
                m,
                og,
                k,
                1.0,
                &col,
                Strides::row_major(k),
                &wt[grp * og * k..],
                Strides::transposed(k),
                beta,
                &mut want[grp * og..],
                ldc,
            );
        }
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| e.to_string())?;
    let mut works: Vec<TileWork> = (0..threads)
        .map(|_| TileWork::default().with_packed())
        .collect();
    for grp in 0..case.groups {
        for round in 0..1 + beta_one as usize {
            let seen: Vec<AtomicUsize> = (0..m).map(|_| AtomicUsize::new(0)).collect();
            let done = |r: Range<usize>| {
                for i in r {
                    seen[i].fetch_add(1, Ordering::Relaxed);
                }
            };
            let beta = if beta_one { 1.0 } else { 0.0 };
            let _ = round;
            // SAFETY: x spans the geometry from channel grp·cg; the packed
            // weight is group grp's; C has m rows of ldc ≥ oc floats.
            pool.install(|| unsafe {
                gemm_with(
                    wide,
                    &g,
                    Source::Input(x.as_ptr().add(grp * g.cg)),
                    packed.as_ptr().add(grp * group_len),
                    og,
                    beta,
                    got.as_mut_ptr().add(grp * og),
                    ldc,
                    threads,
                    works.as_mut_ptr(),
                    &done,
                )
            });
            if let Some(i) = seen.iter().position(|s| s.load(Ordering::Relaxed) != 1) {
                return Err(format!("{case:?}: done saw row {i} {:?} times", seen[i]));
            }
        }
    }
    let tol = 1e-5 * (k as f32).sqrt().max(1.0) * 4.0 * if beta_one { 2.0 } else { 1.0 };
    for i in 0..m {
        for j in 0..ldc {
            let (a, b) = (got[i * ldc + j], want[i * ldc + j]);
            if (a - b).abs() > tol || a.is_nan() {
                return Err(format!(
                    "{case:?} {threads} threads beta {} wide {wide}: C[{i}][{j}] = {a}, want {b}",
                    beta_one as u8
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn implicit_conv_matches_im2col_and_naive_gemm() {
    let base = Case {
        n: 1,
        hw: [9, 7],
        cg: 5,
        groups: 1,
        og: 13,
        k: [3, 3],
        stride: 1,
        pad: 1,
        dilation: 1,
    };
    let cases = [
        base,
        Case {
            n: 3,
            stride: 2,
            pad: 0,
            ..base
        },
        Case {
            n: 3,
            pad: 3,
            dilation: 2,
            groups: 2,
            og: 33,
            ..base
        },
        // Depthwise-like: one channel per group.
        Case {
            cg: 1,
            groups: 4,
            og: 2,
            stride: 2,
            ..base
        },
        // The stem's shape, small: 3 channels, 7×7, stride 2, pad 3.
        Case {
            n: 3,
            hw: [20, 19],
            cg: 3,
            og: 64,
            k: [7, 7],
            stride: 2,
            pad: 3,
            ..base
        },
        // Narrow products (the tall tile) and K over two blocks.
        Case {
            n: 3,
            hw: [11, 10],
            cg: 40,
            og: 32,
            ..base
        },
        Case {
            n: 1,
            hw: [5, 6],
            cg: 30,
            og: 31,
            k: [3, 2],
            pad: 2,
            ..base
        },
        // Wider than one N block, rows over several M blocks.
        Case {
            n: 2,
            hw: [20, 21],
            cg: 4,
            og: 500,
            k: [1, 1],
            pad: 0,
            ..base
        },
        // Pad larger than the window reach: whole rows of padding.
        Case {
            hw: [3, 3],
            cg: 2,
            og: 48,
            k: [2, 2],
            pad: 3,
            stride: 1,
            ..base
        },
    ];
    for case in cases.into_iter().chain(in_place_cases(base)) {
        for threads in [1, 2] {
            for beta_one in [false, true] {
                // The AVX-512 kernels where the CPU has them, and always
                // the portable one.
                for wide in [false, avx::available()] {
                    check(case, threads, beta_one, wide).unwrap();
                }
            }
        }
    }
}

/// Shapes whose depth runs are long enough to be read in place
/// ([`MIN_RUN`]): runs split at and across `KC` blocks, a run per tap
/// (groups, dilation), stride 2 (every other pixel), outputs wider than
/// a tile and narrower than half of one, tiles along rows of 5–9 pixels
/// (the tile-height remainders), and every 16-column remainder of the
/// 48- and 32-wide tiles.
fn in_place_cases(base: Case) -> Vec<Case> {
    let mut cases = vec![
        // densenet's conv2: a 384-deep kernel row split at 128.
        Case {
            n: 2,
            hw: [6, 29],
            cg: 128,
            og: 32,
            ..base
        },
        // A 192-deep kernel row: slices of 128 across two rows of taps.
        Case {
            n: 3,
            hw: [5, 9],
            cg: 64,
            og: 64,
            ..base
        },
        // One run per tap: groups (the group's channels only) and
        // dilation; then stride 2.
        Case {
            n: 2,
            hw: [7, 12],
            cg: 40,
            groups: 2,
            og: 20,
            ..base
        },
        Case {
            n: 2,
            hw: [9, 11],
            cg: 48,
            og: 17,
            dilation: 2,
            pad: 2,
            ..base
        },
        Case {
            n: 3,
            hw: [9, 17],
            cg: 33,
            og: 80,
            stride: 2,
            ..base
        },
        // Pointwise over a wide row (every tile in place) and a 2×2
        // output narrower than half a tile (tiles across rows).
        Case {
            n: 2,
            hw: [3, 37],
            cg: 96,
            og: 100,
            k: [1, 1],
            pad: 0,
            ..base
        },
        Case {
            n: 3,
            hw: [2, 2],
            cg: 64,
            og: 24,
            ..base
        },
        // A kernel row wider than the input: no output column has all
        // its taps inside, every one some.
        Case {
            n: 2,
            hw: [5, 6],
            cg: 8,
            og: 64,
            k: [1, 7],
            pad: 3,
            ..base
        },
        // Short runs of whole kernel rows, read in place a slice of
        // several rows of taps at a time: the stem's (3 channels, 7×7,
        // stride 2; K = 147 cut at 128 inside a row) with interior tiles,
        // one channel 3×3 (vggish's first), and a narrow product (the
        // tall tile) whose slice spans three rows of taps.
        Case {
            n: 2,
            hw: [13, 40],
            cg: 3,
            og: 64,
            k: [7, 7],
            stride: 2,
            pad: 3,
            ..base
        },
        Case {
            n: 2,
            hw: [6, 20],
            cg: 1,
            og: 64,
            ..base
        },
        Case {
            n: 2,
            hw: [5, 30],
            cg: 8,
            og: 32,
            ..base
        },
    ];
    // Output widths 5..=9 (tile heights) and every remainder of 16-wide
    // column vectors.
    for (i, og) in [1, 16, 17, 31, 33, 47, 48, 49, 64, 95, 112, 128]
        .into_iter()
        .enumerate()
    {
        cases.push(Case {
            n: 1 + i % 3,
            hw: [4, 5 + i % 5],
            cg: 32,
            og,
            ..base
        });
    }
    cases
}

/// The stem's interior tiles are read in place as several stretches (one
/// per row of taps; the slice after the first `KC` block starts inside
/// a row), and a tile with a column in the padding is gathered.
#[test]
fn stem_tiles_read_in_place_by_stretches() {
    let g = Case {
        n: 1,
        hw: [13, 40],
        cg: 3,
        groups: 1,
        og: 64,
        k: [7, 7],
        stride: 2,
        pad: 3,
        dilation: 1,
    }
    .geom();
    let mr = avx::MR;
    let (run, ow) = (7 * 3, g.ow);
    let slices = g.slices();
    assert_eq!(slices.len(), 2);
    let mut segs = Vec::new();
    // Output row 3 (every row of taps inside), columns 6..13.
    let row = 3 * ow + 6;
    let d = g.in_place(row, 7, &slices[0], mr, &mut segs).unwrap();
    assert_eq!(d.rows, 0..7);
    let want: Vec<_> = (0..7)
        .map(|ty| Seg {
            off: (ty * g.w * g.c) as isize,
            step: ty * run,
            len: run.min(KC - ty * run),
        })
        .collect();
    assert_eq!(segs[d.segs.clone()], want[..]);
    segs.clear();
    let d = g.in_place(row, 7, &slices[1], mr, &mut segs).unwrap();
    assert_eq!(
        segs[d.segs],
        [Seg {
            off: 0,
            step: 0,
            len: g.depth() - KC
        }]
    );
    // Output column 0 reads the padding on its left: gathered.
    segs.clear();
    assert_eq!(g.in_place(3 * ow, 6, &slices[0], mr, &mut segs), None);
    assert!(segs.is_empty());
}

/// A 1×1 convolution over a normalised concatenation ([`Normed`]: parts
/// of 5, 16 and 37 channels, 3 images of 9×7, on 1 and 2 threads, the
/// AVX-512 and the portable kernels, with and without the ReLU) against
/// the definition evaluated in f64: concatenate, scale and shift per
/// channel, clamp, multiply by the weight.
#[test]
fn normalised_concatenations_match_the_definition() {
    let widths = [5usize, 16, 37];
    let (n, h, w, og) = (3usize, 9usize, 7usize, 50usize);
    let (rows, c) = (n * h * w, widths.iter().sum::<usize>());
    let parts: Vec<Vec<f32>> = widths
        .iter()
        .enumerate()
        .map(|(i, &cw)| data(rows * cw, 11 + i as u64))
        .collect();
    let scale = data(c, 21);
    let shift = data(c, 22);
    let wt = data(og * c, 23);
    let geom = Case {
        n,
        hw: [h, w],
        cg: c,
        groups: 1,
        og,
        k: [1, 1],
        stride: 1,
        pad: 0,
        dilation: 1,
    }
    .geom();
    let (packed, _) = pack_weight(&wt, og, c, 1);
    for relu in [true, false] {
        let mut want = vec![0.0f64; rows * og];
        for r in 0..rows {
            let mut a = Vec::with_capacity(c);
            for (p, &cw) in parts.iter().zip(&widths) {
                a.extend(p[r * cw..(r + 1) * cw].iter().map(|&v| f64::from(v)));
            }
            for (k, v) in a.iter_mut().enumerate() {
                *v = *v * f64::from(scale[k]) + f64::from(shift[k]);
                if relu {
                    *v = v.max(0.0);
                }
            }
            for j in 0..og {
                want[r * og + j] = (0..c).map(|k| a[k] * f64::from(wt[j * c + k])).sum();
            }
        }
        let pointers: Vec<*const f32> = parts.iter().map(|p| p.as_ptr()).collect();
        let normed = Normed {
            parts: &pointers,
            channels: &widths,
            scale: scale.as_ptr(),
            shift: shift.as_ptr(),
            relu,
        };
        for threads in [1, 2] {
            for wide in [avx::available(), false] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut works: Vec<TileWork> = (0..threads)
                    .map(|_| TileWork::default().with_packed())
                    .collect();
                let mut got = vec![f32::NAN; rows * og];
                // SAFETY: the parts hold `rows` rows of their channels, the
                // packed weight spans c × og, C has rows × og floats.
                pool.install(|| unsafe {
                    gemm_with(
                        wide,
                        &geom,
                        Source::Normed(normed),
                        packed.as_ptr(),
                        og,
                        0.0,
                        got.as_mut_ptr(),
                        og,
                        threads,
                        works.as_mut_ptr(),
                        &|_| {},
                    )
                });
                for (i, (&g, &e)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (f64::from(g) - e).abs() <= 1e-5 * e.abs().max(1.0),
                        "relu {relu}, {threads} threads, wide {wide}: C[{}][{}] = {g}, want {e}",
                        i / og,
                        i % og
                    );
                }
            }
        }
    }
}

/// A 1×1 convolution on maps narrower than a tile (7×7, and 5×3 with 40
/// output columns): its tiles are whole `mr`-row tiles across the map's
/// rows (read in place), and the product matches the reference on 1 and
/// 2 threads, with both kernels.
#[test]
fn pointwise_tiles_cross_the_map_rows() {
    for (hw, og) in [([7, 7], 36), ([5, 3], 40), ([7, 7], 24)] {
        let case = Case {
            n: 3,
            hw,
            cg: 40,
            groups: 1,
            og,
            k: [1, 1],
            stride: 1,
            pad: 0,
            dilation: 1,
        };
        let g = case.geom();
        let mr = avx::raw_rows(og);
        let mut tiles = Vec::new();
        g.tiles(0..g.rows(), mr, &mut tiles);
        let full = tiles.iter().filter(|t| t.1 == mr).count();
        assert_eq!(full, g.rows() / mr, "{case:?}: {tiles:?}");
        for threads in [1, 2] {
            for wide in [avx::available(), false] {
                check(case, threads, false, wide).unwrap();
            }
        }
    }
}
