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
