//! The packed GEMM against the naive reference: the shared cases with each
//! operand pre-packed or not, on 1 and 2 threads, plus edge shapes around
//! the tile and block sizes.

use super::*;
use crate::gemm::{cases, GemmCase};

const PREPACKS: [Prepacked; 3] = [Prepacked::Neither, Prepacked::A, Prepacked::B];

/// Runs `case` on the AVX-512 kernels (where the CPU has them) and on the
/// portable one.
fn run(case: &GemmCase, prepack: Prepacked, threads: usize) -> Result<(), String> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| e.to_string())?;
    for wide in [false, avx::available()] {
        let mut d = case.data();
        pool.install(|| {
            sgemm_with(
                wide,
                case.m,
                case.n,
                case.k,
                case.alpha,
                (&d.a, d.sa),
                (&d.b, d.sb),
                case.beta,
                &mut d.c,
                d.ldc,
                prepack,
                threads,
            )
        })
        .map_err(|e| e.to_string())?;
        case.check(&d.c)
            .map_err(|e| format!("{e} (prepack {prepack:?}, {threads} threads, wide {wide})"))?;
    }
    Ok(())
}

#[test]
fn packed_gemm_matches_naive_on_shared_cases() {
    for case in cases() {
        for prepack in PREPACKS {
            for threads in [1, 2] {
                run(&case, prepack, threads).unwrap();
            }
        }
    }
}

/// Sizes around the tile (MR, NR), the blocks (KC, MC, NC), k = 1, a
/// single row or column, ldc > n, transposed B, beta 0 / 1 / other.
#[test]
fn packed_gemm_matches_naive_on_edge_sizes() {
    let sizes = [
        (1, 1, 1),
        (MR - 1, NR + 1, 1),
        (MR + 1, NR - 1, 2),
        (MR, NR, KC),
        (MC + 3, 17, KC + 1),
        (2 * MR + 3, NC + 5, 7),
        (1, 1000, 300),
        (300, 1, 300),
        (33, 49, 2 * KC + 3),
        (MC + MR, 2 * NR + 16, 31),
    ];
    for (m, n, k) in sizes {
        for (pad, trans_b, beta, alpha) in [
            (0, false, 0.0, 1.0),
            (5, true, 1.0, 1.0),
            (2, false, 0.5, -0.75),
            (0, true, 0.0, 2.0),
        ] {
            let case = GemmCase {
                m,
                n,
                k,
                pad,
                trans_b,
                alpha,
                beta,
            };
            for prepack in PREPACKS {
                for threads in [1, 2] {
                    run(&case, prepack, threads).unwrap();
                }
            }
        }
    }
}

/// The prepare kernel packs every group of a grouped weight, and refuses
/// a weight shorter than its groups need.
#[test]
fn pack_panels_packs_groups_and_refuses_short_weights() {
    let (dim, k, groups) = (MR + 3, KC + 5, 3);
    let w: Vec<f32> = (0..groups * dim * k).map(|v| v as f32).collect();
    let p = PackPanels {
        side: Prepacked::A,
        dim,
        k,
        strides: Strides::row_major(k),
        group_stride: dim * k,
        groups,
    };
    let mut out = vec![f32::NAN; groups * p.group_len()];
    p.rows(0, &[&w], &mut out).unwrap();
    let m_pad = dim.div_ceil(MR) * MR;
    for g in 0..groups {
        for i in 0..m_pad {
            for q in 0..k {
                let at = g * p.group_len()
                    + (q / KC) * p.row_len()
                    + (i / MR) * MR * KC
                    + (q % KC) * MR
                    + i % MR;
                let want = if i < dim {
                    w[g * dim * k + i * k + q]
                } else {
                    0.0
                };
                assert_eq!(out[at], want, "group {g} row {i} k {q}");
            }
        }
    }
    let err = p.rows(0, &[&w[..w.len() - 1]], &mut out).unwrap_err();
    assert!(err.contains("too few"), "{err}");
}

/// [`gemm_share`]: the parts of a product, run one after another in
/// reverse order on the calling thread, make the whole product (no part
/// left out, none writing another's rows or columns, a pre-packed
/// operand addressed at its panel boundaries): 1–3 parts, each operand
/// pre-packed or not, a single row (batch-1 `linear`), a single column,
/// sizes off the tiles and blocks, beta 0 and 1.
#[test]
fn shares_of_a_product_make_the_whole() {
    let sizes = [
        (1, 512, 324),
        (1, 2 * NR + 3, KC + 1),
        (3, NR - 1, 5),
        (2 * MR + 3, 7, 2 * KC + 3),
        (MC + 5, NC + 9, 9),
    ];
    for (m, n, k) in sizes {
        for (pad, trans_b, beta) in [(0, true, 0.0), (3, false, 1.0)] {
            let case = GemmCase {
                m,
                n,
                k,
                pad,
                trans_b,
                alpha: 1.0,
                beta,
            };
            for prepack in PREPACKS {
                for parts in 1..=3 {
                    let mut d = case.data();
                    let pack = |side, dim, strides, src: &[f32]| {
                        let p = PackPanels {
                            side,
                            dim,
                            k,
                            strides,
                            group_stride: 0,
                            groups: 1,
                        };
                        let mut out = vec![f32::NAN; p.group_len()];
                        p.rows(0, &[src], &mut out).unwrap();
                        out
                    };
                    let pa = pack(Prepacked::A, m, d.sa, &d.a);
                    let pb = pack(Prepacked::B, n, d.sb, &d.b);
                    let a = match prepack {
                        Prepacked::A => Side::Packed(pa.as_ptr()),
                        _ => Side::Raw(d.a.as_ptr(), d.sa),
                    };
                    let b = match prepack {
                        Prepacked::B => Side::Packed(pb.as_ptr()),
                        _ => Side::Raw(d.b.as_ptr(), d.sb),
                    };
                    let mut work = TileWork::default().with_packed();
                    for t in (0..parts).rev() {
                        // SAFETY: the case's buffers cover its strides;
                        // the packed copies are whole.
                        unsafe {
                            gemm_share(
                                m,
                                n,
                                k,
                                a,
                                b,
                                beta,
                                d.c.as_mut_ptr(),
                                d.ldc,
                                (t, parts),
                                &mut work,
                                &|_| {},
                            )
                        };
                    }
                    case.check(&d.c)
                        .unwrap_or_else(|e| panic!("{e} (prepack {prepack:?}, {parts} parts)"));
                }
            }
        }
    }
}

/// [`gemm_then`] on a 2-thread pool and [`gemm_share`] part by part call
/// `done` only with rows that are final (checked against the naive
/// product at the moment of the call), never twice for a row, and, where
/// [`whole_rows`] holds (a pre-packed B within [`B_SHARED`], or one
/// part), for every row: batch-256 `linear` shapes of eeg_mlp, one whose
/// packed weight exceeds [`B_SHARED`], edge sizes, 1–3 parts.
#[test]
fn done_sees_final_whole_rows() {
    let big_k = B_SHARED / 4 / NR + 1;
    let sizes = [
        (256, 512, 324),
        (256, 256, 512),
        (2 * MR + 3, NR + 5, KC + 1),
        (MR, 7, 3),
        (64, NR, big_k),
        (5, 300, 9),
    ];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for (m, n, k) in sizes {
        let case = GemmCase {
            m,
            n,
            k,
            pad: 1,
            trans_b: true,
            alpha: 1.0,
            beta: 0.0,
        };
        let d0 = case.data();
        let mut want = d0.c.clone();
        crate::gemm::sgemm_naive(
            m, n, k, 1.0, &d0.a, d0.sa, &d0.b, d0.sb, 0.0, &mut want, d0.ldc,
        );
        let p = PackPanels {
            side: Prepacked::B,
            dim: n,
            k,
            strides: d0.sb,
            group_stride: 0,
            groups: 1,
        };
        let mut pb = vec![f32::NAN; p.group_len()];
        p.rows(0, &[&d0.b], &mut pb).unwrap();
        for b_packed in [true, false] {
            for (parts, pooled) in [(1, false), (2, false), (3, false), (2, true)] {
                let mut d = case.data();
                // Addresses cross to the pool as integers.
                let (pa_, pb_, raw_b, sb) = (
                    d.a.as_ptr() as usize,
                    pb.as_ptr() as usize,
                    d.b.as_ptr() as usize,
                    d.sb,
                );
                let (sa, packed) = (d.sa, b_packed);
                let sides = move || {
                    let b = match packed {
                        true => Side::Packed(pb_ as *const f32),
                        false => Side::Raw(raw_b as *const f32, sb),
                    };
                    (Side::Raw(pa_ as *const f32, sa), b)
                };
                let (c, ldc) = (d.c.as_mut_ptr() as usize, d.ldc);
                let seen = std::sync::Mutex::new(vec![0u8; m]);
                let tol = 1e-5 * (k as f32).sqrt() * 4.0;
                let done = |rows: Range<usize>| {
                    for i in rows.clone() {
                        for j in 0..n {
                            // SAFETY: row i is final and written by no one now.
                            let got = unsafe { *(c as *const f32).add(i * ldc + j) };
                            let w = want[i * ldc + j];
                            assert!(
                                (got - w).abs() <= tol * w.abs().max(1.0),
                                "{m}x{n}x{k}: C[{i}][{j}] = {got}, want {w} when done"
                            );
                        }
                    }
                    let mut seen = seen.lock().unwrap();
                    for i in rows {
                        seen[i] += 1;
                    }
                };
                let mut works: Vec<TileWork> = (0..parts)
                    .map(|_| TileWork::default().with_packed())
                    .collect();
                if pooled {
                    let w = works.as_mut_ptr() as usize;
                    // SAFETY: the case's buffers cover its strides; the
                    // packed B is whole; one work buffer per task.
                    pool.install(|| unsafe {
                        let (a, b) = sides();
                        gemm_then(
                            m,
                            n,
                            k,
                            1.0,
                            a,
                            b,
                            0.0,
                            c as *mut f32,
                            ldc,
                            parts,
                            w as *mut TileWork,
                            &done,
                        )
                    });
                } else {
                    let (a, b) = sides();
                    for (t, work) in works.iter_mut().enumerate() {
                        // SAFETY: as above, parts one after another.
                        unsafe {
                            gemm_share(
                                m,
                                n,
                                k,
                                a,
                                b,
                                0.0,
                                c as *mut f32,
                                ldc,
                                (t, parts),
                                work,
                                &done,
                            )
                        };
                    }
                }
                case.check(&d.c).unwrap();
                let seen = seen.into_inner().unwrap();
                let whole = whole_rows((m, n, k), b_packed, parts);
                let label = format!("{m}x{n}x{k}, B packed {b_packed}, {parts} parts");
                assert!(seen.iter().all(|&s| s <= 1), "{label}: a row done twice");
                if whole {
                    assert!(seen.iter().all(|&s| s == 1), "{label}: a row never done");
                }
            }
        }
    }
}

/// The split policy: eeg_mlp's batch-256 weights are read whole by both
/// threads and their rows split evenly; a weight past [`B_SHARED`], or
/// one not pre-packed, keeps the cut along the longer side.
#[test]
fn whole_rows_split_is_even_and_bounded() {
    assert!(whole_rows((256, 512, 324), true, 2));
    assert_eq!(share_of((256, 512, 324), true, (0, 2)), (0..128, 0..512));
    assert_eq!(share_of((256, 512, 324), true, (1, 2)), (128..256, 0..512));
    assert!(!whole_rows((256, 512, 324), false, 2));
    assert!(!whole_rows((256, 1024, 5184), true, 2));
    assert!(!whole_rows((MR, 512, 324), true, 2));
    assert!(whole_rows((1, 512, 324), true, 1));
    assert_eq!(share_of((256, 1024, 5184), true, (1, 2)).1, 528..1024);
}

/// A read transposed (stored `k×m`, the weight-gradient form `dyᵀ·x`):
/// whole `MR`-row panels take the contiguous-column packing, the tail rows
/// the general one; against a plain triple loop.
#[test]
fn transposed_a_is_packed_column_by_column() {
    for (m, n, k, alpha) in [(2 * MR, 19, KC + 5, 1.0), (3 * MR + 5, NR + 3, 9, -0.5)] {
        let ld = m + 3;
        let a: Vec<f32> = (0..k * ld)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) / 5.0)
            .collect();
        for threads in [1, 2] {
            let mut c = vec![f32::NAN; m * n];
            sgemm(
                m,
                n,
                k,
                alpha,
                &a,
                Strides::transposed(ld),
                &b,
                Strides::row_major(n),
                0.0,
                &mut c,
                n,
                Prepacked::Neither,
                threads,
            )
            .unwrap();
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|p| f64::from(a[p * ld + i]) * f64::from(b[p * n + j]))
                        .sum::<f64>()
                        * alpha as f64;
                    let got = f64::from(c[i * n + j]);
                    assert!(
                        (got - want).abs() < 1e-4 * want.abs().max(1.0),
                        "{m}x{n}x{k} ({i}, {j}): {got} vs {want}"
                    );
                }
            }
        }
    }
}
