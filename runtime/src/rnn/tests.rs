//! The row kernels against independent references: the LSTM kernels
//! (the AVX-512 ones with their packed weights where the CPU has them,
//! and the portable ones)
//! against an f64 recurrence written out here, their backward against
//! central differences of that recurrence, on hidden sizes that are not
//! multiples of 16 and tiles that are not full; lookups on bad ids.

use super::*;

/// Deterministic values in `[-scale, scale)`.
fn data(n: usize, seed: u64, scale: f64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32 * scale as f32
        })
        .collect()
}

/// An LSTM case: sizes, layout and the forward's operands.
struct Case {
    q: Seqs,
    input: usize,
    peephole: bool,
    x: Vec<f32>,
    w_ih: Vec<f32>,
    w_hh: Vec<f32>,
    b_ih: Vec<f32>,
    b_hh: Vec<f32>,
    packed: Vec<f32>,
    /// `w_ci`, `w_cf`, `w_co` (zeros without peepholes).
    peep: [Vec<f32>; 3],
}

impl Case {
    fn new(hidden: usize, steps: usize, seqs: usize, batch_first: bool, peephole: bool) -> Case {
        let q = Seqs {
            hidden,
            steps,
            seqs,
            batch_first,
        };
        let (h, g4, d) = (hidden, 4 * hidden, hidden + 3);
        let (w_ih, w_hh) = (
            data(g4 * d, 10, 2.0 / (d as f64).sqrt()),
            data(g4 * h, 2, 2.0 / (h as f64).sqrt()),
        );
        let (b_ih, b_hh) = (data(g4, 3, 0.5), data(g4, 4, 0.5));
        let mut packed = vec![f32::NAN; forward_len(h, d)];
        let pack = LstmPack {
            hidden: h,
            input: d,
            dir: PackFor::Forward,
        };
        pack.rows(0, &[&w_ih, &w_hh, &b_ih, &b_hh], &mut packed)
            .unwrap();
        let peep = if peephole {
            [data(h, 5, 0.8), data(h, 6, 0.8), data(h, 7, 0.8)]
        } else {
            [vec![0.0; h], vec![0.0; h], vec![0.0; h]]
        };
        Case {
            q,
            input: d,
            peephole,
            x: data(seqs * steps * d, 1, 1.0),
            w_ih,
            w_hh,
            b_ih,
            b_hh,
            packed,
            peep,
        }
    }

    /// The forward step's inputs.
    fn refs(&self) -> Vec<&[f32]> {
        let mut v: Vec<&[f32]> = vec![&self.x, &self.w_ih, &self.w_hh, &self.packed];
        if self.peephole {
            v.extend(self.peep.iter().map(Vec::as_slice));
        }
        v
    }

    /// `x · W_ihᵀ` in f64, `[positions, 4H]`.
    fn projection(&self) -> Vec<f64> {
        let (g4, d) = (4 * self.q.hidden, self.input);
        let (x, w) = (&self.x, &self.w_ih);
        let positions = self.q.seqs * self.q.steps;
        (0..positions * g4)
            .map(|e| {
                let (r, u) = (e / g4, e % g4);
                (0..d)
                    .map(|k| x[r * d + k] as f64 * w[u * d + k] as f64)
                    .sum()
            })
            .collect()
    }

    /// The f64 recurrence with `proj` as the input projection: per
    /// position `(i, f, g, o, c_t, c_{t-1}, h_{t-1}, h_t)`, `8H` values.
    fn reference(&self, proj: &[f64]) -> Vec<f64> {
        let q = self.q;
        let (h, g4) = (q.hidden, 4 * q.hidden);
        let w = |v: &[f32], k: usize| v[k] as f64;
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let peep = |k: usize, j: usize| w(&self.peep[k], j);
        let mut out = vec![0.0; q.seqs * q.steps * 8 * h];
        for s in 0..q.seqs {
            let (mut hs, mut cs) = (vec![0.0; h], vec![0.0; h]);
            for t in 0..q.steps {
                let r = q.row(s, t);
                let a: Vec<f64> = (0..g4)
                    .map(|u| {
                        let rec: f64 = (0..h).map(|k| w(&self.w_hh, u * h + k) * hs[k]).sum();
                        proj[r * g4 + u] + w(&self.b_ih, u) + w(&self.b_hh, u) + rec
                    })
                    .collect();
                let o = &mut out[r * 8 * h..(r + 1) * 8 * h];
                for j in 0..h {
                    let cp = cs[j];
                    let i = sig(a[j] + peep(0, j) * cp);
                    let f = sig(a[h + j] + peep(1, j) * cp);
                    let g = a[2 * h + j].tanh();
                    let c = f * cp + i * g;
                    let og = sig(a[3 * h + j] + peep(2, j) * c);
                    let hn = og * c.tanh();
                    for (k, v) in [i, f, g, og, c, cp, hs[j], hn].into_iter().enumerate() {
                        o[k * h + j] = v;
                    }
                    cs[j] = c;
                }
                for j in 0..h {
                    hs[j] = o[7 * h + j];
                }
            }
        }
        out
    }
}

/// The kernels this CPU runs: the portable ones and, with AVX-512F, the
/// AVX-512 ones.
fn paths() -> Vec<&'static str> {
    let mut p = vec!["portable"];
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        p.push("avx512");
    }
    p
}

fn forward(k: &LstmForward, path: &str, inputs: &[&[f32]], out: &mut [f32]) {
    let args = k.args(inputs).unwrap();
    let piece = k.piece(0, out.len()).unwrap();
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `paths` lists the AVX-512 kernels only where the CPU has them.
        "avx512" => unsafe { avx512::forward(k, &args, &piece, out) },
        _ => portable::forward(k, &args, &piece, out).unwrap(),
    }
}

fn backward(k: &LstmBackward, path: &str, inputs: &[&[f32]], out: &mut [f32]) {
    let args = k.args(inputs).unwrap();
    let piece = k.piece(0, out.len()).unwrap();
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `forward`.
        "avx512" => unsafe { avx512::backward(k, &args, &piece, out) },
        _ => portable::backward(k, &args, &piece, out).unwrap(),
    }
}

/// Largest `|x − y| / (1 + |y|)`.
fn max_err(x: &[f32], y: &[f64]) -> f64 {
    assert_eq!(x.len(), y.len());
    x.iter()
        .zip(y)
        .map(|(&a, &b)| (a as f64 - b).abs() / (1.0 + b.abs()))
        .fold(0.0, f64::max)
}

/// Every output mode of the forward equals the f64 recurrence, on hidden
/// sizes off the 16-lane grid, more sequences than a block of the
/// AVX-512 kernel holds (53), tiles of every height (1, 2, 5, 6), both
/// layouts, sequences longer than a window of projections (45 steps of
/// 53 sequences, 40 of 5 at hidden 200), on its own thread and split by
/// hidden units over a pool of 2.
#[test]
fn lstm_forward_equals_the_f64_recurrence() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let cases = [
        (19, 53, 4),
        (33, 8, 4),
        (16, 5, 4),
        (21, 1, 4),
        (19, 53, 45),
        (200, 5, 40),
    ];
    for (hidden, seqs, steps) in cases {
        for batch_first in [true, false] {
            for peephole in [false, true] {
                let case = Case::new(hidden, steps, seqs, batch_first, peephole);
                let q = case.q;
                let h = hidden;
                let want = case.reference(&case.projection());
                let positions = q.seqs * q.steps;
                for output in [LstmOutput::Last, LstmOutput::Sequence, LstmOutput::State] {
                    let mut k = LstmForward {
                        seqs: q,
                        input: case.input,
                        peephole,
                        output,
                        threads: 1,
                    };
                    let (wanted, len): (Vec<f64>, usize) = match output {
                        LstmOutput::Last => (
                            (0..seqs)
                                .flat_map(|s| {
                                    let r = q.row(s, q.steps - 1);
                                    want[(r * 8 + 7) * h..(r * 8 + 8) * h].to_vec()
                                })
                                .collect(),
                            seqs * h,
                        ),
                        LstmOutput::Sequence => (
                            (0..positions)
                                .flat_map(|r| want[(r * 8 + 7) * h..(r * 8 + 8) * h].to_vec())
                                .collect(),
                            positions * h,
                        ),
                        LstmOutput::State => (
                            (0..positions)
                                .flat_map(|r| want[r * 8 * h..(r * 8 + 7) * h].to_vec())
                                .collect(),
                            positions * STATE_WIDTH * h,
                        ),
                    };
                    for (path, threads) in paths().into_iter().flat_map(|p| [(p, 1), (p, 2)]) {
                        k.threads = threads;
                        let mut out = vec![f32::NAN; len];
                        pool.install(|| forward(&k, path, &case.refs(), &mut out));
                        let err = max_err(&out, &wanted);
                        assert!(
                            err < 2e-6,
                            "{path} {threads} threads {output:?} h={h} S={seqs} T={steps} \
                             bf={batch_first} peephole={peephole}: {err}"
                        );
                    }
                }
            }
        }
    }
}

/// The backward's gate gradients equal central differences of the f64
/// recurrence: with `L = Σ dseq·h_t + Σ dlast·h_T`, the gradient of a
/// gate pre-activation is `∂L/∂proj` at its position (the projection
/// enters each pre-activation with weight 1).
#[test]
fn lstm_backward_equals_differences_of_the_f64_recurrence() {
    for (hidden, seqs) in [(19, 7), (33, 2)] {
        for batch_first in [true, false] {
            for peephole in [false, true] {
                let case = Case::new(hidden, 3, seqs, batch_first, peephole);
                let q = case.q;
                let (h, g4) = (hidden, 4 * hidden);
                let positions = q.seqs * q.steps;
                let dseq = data(positions * h, 8, 1.0);
                let dlast = data(seqs * h, 9, 1.0);
                let loss = |proj: &[f64]| -> f64 {
                    let st = case.reference(proj);
                    let mut l = 0.0;
                    for r in 0..positions {
                        for j in 0..h {
                            l += dseq[r * h + j] as f64 * st[(r * 8 + 7) * h + j];
                        }
                    }
                    for s in 0..seqs {
                        let r = q.row(s, q.steps - 1);
                        for j in 0..h {
                            l += dlast[s * h + j] as f64 * st[(r * 8 + 7) * h + j];
                        }
                    }
                    l
                };
                let mut proj = case.projection();
                let mut want = vec![0.0; positions * g4];
                let eps = 1e-5;
                for (u, w) in want.iter_mut().enumerate() {
                    let x = proj[u];
                    proj[u] = x + eps;
                    let up = loss(&proj);
                    proj[u] = x - eps;
                    let down = loss(&proj);
                    proj[u] = x;
                    *w = (up - down) / (2.0 * eps);
                }
                let st = case.reference(&proj);
                let state: Vec<f32> = (0..positions)
                    .flat_map(|r| st[r * 8 * h..(r * 8 + 7) * h].to_vec())
                    .map(|v| v as f32)
                    .collect();
                let w_hh = &case.w_hh;
                let mut packed = vec![f32::NAN; backward_len(h)];
                let pack = LstmPack {
                    hidden: h,
                    input: 0,
                    dir: PackFor::Backward,
                };
                pack.rows(0, &[w_hh], &mut packed).unwrap();
                let mut inputs: Vec<&[f32]> = vec![&state, w_hh, &packed, &dseq, &dlast];
                if peephole {
                    inputs.extend(case.peep.iter().map(Vec::as_slice));
                }
                let k = LstmBackward {
                    seqs: q,
                    peephole,
                    seq_grad: true,
                    last_grad: true,
                };
                for path in paths() {
                    let mut out = vec![f32::NAN; positions * g4];
                    backward(&k, path, &inputs, &mut out);
                    let err = max_err(&out, &want);
                    assert!(
                        err < 1e-5,
                        "{path} h={h} S={seqs} bf={batch_first} peephole={peephole}: {err}"
                    );
                }
            }
        }
    }
}

/// Ids must be whole numbers inside the table; the error names the
/// layer, the id and its position.
#[test]
fn ids_outside_the_table_are_errors() {
    let g = Gather {
        name: "q_tower.emb".into(),
        vocab: 3,
        width: 2,
    };
    let table = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0];
    let mut out = [0.0; 4];
    g.rows(0, &[&[2.0, 0.0], &table], &mut out).unwrap();
    assert_eq!(out, [4.0, 5.0, 0.0, 1.0]);
    for bad in [3.0, -1.0, 0.5, f32::NAN] {
        let err = g.rows(0, &[&[0.0, bad], &table], &mut out).unwrap_err();
        assert!(
            err.contains("q_tower.emb") && err.contains("position 1") && err.contains("3 rows"),
            "{err}"
        );
    }
    let s = ScatterAdd {
        name: "emb".into(),
        vocab: 3,
        width: 1,
        positions: 3,
        padding: Some(0),
    };
    let mut dw = [9.0; 3];
    s.rows(0, &[&[1.0, 2.0, 4.0], &[1.0, 1.0, 0.0]], &mut dw)
        .unwrap();
    assert_eq!(dw, [0.0, 3.0, 0.0]);
    assert!(s
        .rows(0, &[&[1.0, 2.0, 4.0], &[1.0, 7.0, 0.0]], &mut dw)
        .is_err());
}
