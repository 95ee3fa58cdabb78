//! The rule book and the conv against a dense 3D convolution over the
//! whole grid (inactive voxels zero), computed output position by output
//! position: an output site is active iff one of its taps lands on an
//! active input, and its features are the dense result there.

use super::*;
use crate::counter::splitmix64;

/// What one run of a rule book and a conv gives: the site count, the
/// output coordinates, the features and the rule book.
type Ran = (usize, Vec<f32>, Vec<f32>, Vec<f32>);

/// A conv of `cin -> cout` channels over `batch` samples of `grid`.
struct Case {
    g: Geometry,
    cin: usize,
    cout: usize,
}

impl Case {
    fn new(subm: bool, grid: [i64; 3], batch: i64, cin: usize, cout: usize) -> Case {
        let (stride, out_grid) = if subm {
            ([1; 3], grid)
        } else {
            ([2; 3], grid.map(|n| (n + 2 - 3) / 2 + 1))
        };
        Case {
            g: Geometry {
                kernel: [3; 3],
                stride,
                pad: [1; 3],
                dilation: [1; 3],
                in_grid: grid,
                out_grid,
                batch,
                subm,
            },
            cin,
            cout,
        }
    }

    /// Runs the rule book and the conv (with ReLU) on `coords`/`feats`
    /// and weight `w` (`[cout, volume, cin]`), inside a pool of
    /// `threads`; returns (count, coords, features, the rule book).
    fn run(&self, coords: &[f32], feats: &[f32], w: &[f32], threads: usize) -> Result<Ran, String> {
        let (vol, m) = (self.g.volume(), coords.len() / 4);
        let bound = if self.g.subm {
            m
        } else {
            (m * 8).min(self.g.out_grid.iter().product::<i64>() as usize * self.g.batch as usize)
        };
        let layout = Layout::of(&self.g, bound);
        let build = BuildRuleBook {
            geometry: self.g.clone(),
            layout,
            in_count: m,
            chained: false,
            threads,
        };
        let mut packed = vec![0.0f32; w.len()];
        for co in 0..self.cout {
            for k in 0..vol {
                for ci in 0..self.cin {
                    packed[(k * self.cin + ci) * self.cout + co] =
                        w[(co * vol + k) * self.cin + ci];
                }
            }
        }
        let conv = VoxelConv {
            cin: self.cin,
            cout: self.cout,
            volume: vol,
            pairs_at: layout.pairs_at(),
            bias: false,
            relu: true,
            threads,
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut book = vec![0.0f32; layout.elements()];
            build.rows(0, &[coords], &mut book)?;
            let n = site_count(&book)?;
            let mut y = vec![f32::NAN; bound * self.cout];
            conv.rows(0, &[feats, &book, &packed], &mut y)?;
            let out_coords = if self.g.subm {
                coords.to_vec()
            } else {
                book[COORDS_AT..COORDS_AT + n * 4].to_vec()
            };
            y.truncate(n * self.cout);
            Ok((n, out_coords, y, book))
        })
    }

    /// The dense reference: every active output site in lexicographic
    /// order (a submanifold conv: the input sites in their order) and its
    /// ReLU'd features.
    fn dense(&self, coords: &[f32], feats: &[f32], w: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let g = &self.g;
        let at = |s: [i64; 4]| {
            coords
                .chunks_exact(4)
                .position(|c| c.iter().zip(s).all(|(a, b)| *a as i64 == b))
        };
        let sites: Vec<[i64; 4]> = if g.subm {
            coords
                .chunks_exact(4)
                .map(|c| [c[0] as i64, c[1] as i64, c[2] as i64, c[3] as i64])
                .collect()
        } else {
            let mut all = Vec::new();
            for b in 0..g.batch {
                for z in 0..g.out_grid[0] {
                    for y in 0..g.out_grid[1] {
                        for x in 0..g.out_grid[2] {
                            all.push([b, z, y, x]);
                        }
                    }
                }
            }
            all
        };
        let (mut out_coords, mut out) = (Vec::new(), Vec::new());
        for o in sites {
            let mut acc = vec![0.0f64; self.cout];
            let mut active = g.subm;
            for kz in 0..3 {
                for ky in 0..3 {
                    for kx in 0..3 {
                        let k = (kz * 3 + ky) * 3 + kx;
                        let p = [
                            o[0],
                            o[1] * g.stride[0] - 1 + kz as i64,
                            o[2] * g.stride[1] - 1 + ky as i64,
                            o[3] * g.stride[2] - 1 + kx as i64,
                        ];
                        let Some(i) = at(p) else { continue };
                        active = true;
                        for (co, a) in acc.iter_mut().enumerate() {
                            for ci in 0..self.cin {
                                *a += f64::from(w[(co * 27 + k) * self.cin + ci])
                                    * f64::from(feats[i * self.cin + ci]);
                            }
                        }
                    }
                }
            }
            if active {
                out_coords.extend(o.map(|v| v as f32));
                out.extend(acc.iter().map(|&v| v.max(0.0) as f32));
            }
        }
        (out_coords, out)
    }
}

/// `m` distinct random sites of `c`'s input grid over its samples.
fn sites(c: &Case, m: usize, seed: u64) -> Vec<f32> {
    let g = &c.g;
    let plane = g.in_grid.iter().product::<i64>() as u64;
    let mut taken = std::collections::HashSet::new();
    let mut out = Vec::new();
    let mut k = seed;
    while taken.len() < m {
        k += 1;
        let cell = splitmix64(k) % (plane * g.batch as u64);
        if taken.insert(cell) {
            let cell = cell as i64;
            let [_, h, w] = g.in_grid;
            let p = plane as i64;
            out.extend(
                [
                    cell / p,
                    cell / (h * w) % g.in_grid[0],
                    cell / w % h,
                    cell % w,
                ]
                .map(|v| v as f32),
            );
        }
    }
    out
}

fn values(n: usize, seed: u64) -> Vec<f32> {
    (0..n)
        .map(|i| (splitmix64(seed * 1_000_003 + i as u64) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

fn check(c: &Case, m: usize, seed: u64) {
    let coords = sites(c, m, seed);
    let feats = values(m * c.cin, seed + 1);
    let w = values(c.cout * 27 * c.cin, seed + 2);
    let (want_coords, want) = c.dense(&coords, &feats, &w);
    for threads in [1, 2] {
        let (n, got_coords, got, book) = c.run(&coords, &feats, &w, threads).unwrap();
        assert_eq!(n * 4, want_coords.len(), "site count");
        assert_eq!(got_coords, want_coords, "sites and their order");
        for (i, (a, e)) in got.iter().zip(&want).enumerate() {
            assert!((a - e).abs() <= 1e-5 * e.abs().max(1.0), "{i}: {a} vs {e}");
        }
        let l = Layout::of(&c.g, 0);
        let grid = &book[book.len() - (l.elements() - l.grid_at())..];
        assert!(
            grid.iter().all(|v| v.to_bits() == 0),
            "the grid is clear again"
        );
    }
}

#[test]
fn submanifold_conv_matches_a_dense_conv_at_the_sites() {
    // Wide outputs take the AVX-512 path, 3 the portable one; 150 sites
    // are three blocks of rows.
    check(&Case::new(true, [5, 6, 7], 2, 4, 32), 150, 1);
    check(&Case::new(true, [5, 6, 7], 2, 3, 3), 150, 2);
    check(&Case::new(true, [4, 4, 4], 1, 16, 64), 40, 3);
}

#[test]
fn strided_conv_finds_every_reached_site_in_order() {
    check(&Case::new(false, [7, 6, 9], 2, 4, 16), 150, 4);
    check(&Case::new(false, [7, 6, 9], 2, 5, 7), 60, 5);
}

/// No input sites: no output sites; a lone site reads only itself
/// (submanifold) or reaches its windows with one tap each.
#[test]
fn empty_inputs_and_lone_sites() {
    for subm in [true, false] {
        let c = Case::new(subm, [4, 4, 4], 1, 2, 16);
        let (n, _, y, _) = c.run(&[], &[], &vec![1.0; 16 * 27 * 2], 2).unwrap();
        assert_eq!((n, y.len()), (0, 0));
    }
    let c = Case::new(true, [4, 4, 4], 1, 2, 16);
    let w: Vec<f32> = (0..16 * 27 * 2).map(|i| i as f32).collect();
    let (n, _, y, _) = c.run(&[0.0, 2.0, 1.0, 3.0], &[1.0, -1.0], &w, 1).unwrap();
    assert_eq!(n, 1);
    // Only the centre tap (13): w[co][13][0] - w[co][13][1] = -1 -> relu 0.
    assert!(y.iter().all(|&v| v == 0.0), "{y:?}");
    let (_, _, y, _) = c.run(&[0.0, 2.0, 1.0, 3.0], &[0.0, 1.0], &w, 1).unwrap();
    let want: Vec<f32> = (0..16).map(|co| ((co * 27 + 13) * 2 + 1) as f32).collect();
    assert_eq!(y, want);
    check(&Case::new(false, [4, 4, 4], 1, 2, 16), 1, 6);
}

/// Bad sites are errors naming the site, and leave the grid clear.
#[test]
fn bad_sites_are_errors() {
    let c = Case::new(true, [4, 4, 4], 2, 1, 16);
    let w = vec![1.0f32; 16 * 27];
    let err = |coords: &[f32]| {
        let feats = vec![1.0; coords.len() / 4];
        c.run(coords, &feats, &w, 1).unwrap_err()
    };
    let e = err(&[0.0, 1.0, 1.0, 1.0, 1.0, 3.0, 0.0, 2.0, 0.0, 1.0, 1.0, 1.0]);
    assert!(e.contains("site [0, 1, 1, 1] appears twice"), "{e}");
    let e = err(&[0.0, 1.0, 4.0, 1.0]);
    assert!(e.contains("outside the grid [4, 4, 4]"), "{e}");
    let e = err(&[2.0, 1.0, 1.0, 1.0]);
    assert!(e.contains("batch index 2"), "{e}");
    let e = err(&[0.0, 1.5, 1.0, 1.0]);
    assert!(e.contains("non-integer"), "{e}");
    // The grid is clear after the duplicate: a valid run on the same
    // book finds the right neighbours.
    let layout = Layout::of(&c.g, 3);
    let build = BuildRuleBook {
        geometry: c.g.clone(),
        layout,
        in_count: 3,
        chained: false,
        threads: 1,
    };
    let mut book = vec![0.0f32; layout.elements()];
    let dup = [0.0, 1.0, 1.0, 1.0, 1.0, 3.0, 0.0, 2.0, 0.0, 1.0, 1.0, 1.0];
    assert!(build.rows(0, &[&dup], &mut book).is_err());
    assert!(book[layout.grid_at()..].iter().all(|v| v.to_bits() == 0));
}
