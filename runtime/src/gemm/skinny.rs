//! The skinny-N product of a `linear` layer with few outputs
//! ([`MAX_OUTPUTS`] or fewer): `y[m×n] = x[m×k] · Wᵀ (+ b)` with `W`
//! in `nn.Linear`'s `[n, k]` layout, as a row kernel ([`SkinnyLinear`]).
//!
//! A general GEMM tiles C by 16 or more columns, so with 2 outputs it
//! computes mostly padding, and packs or re-lays-out `W` for nothing.
//! Here every output is a dot product of two contiguous rows: per tile of
//! up to 4 rows of `x` and 2 outputs, 8 zmm accumulators walk `k` 16 at a
//! time (a masked load for the tail), then each is summed across its
//! lanes and the bias added. `x` is read once per pair of outputs (from
//! L1 after the first) and `W` stays in L1. Without AVX-512F a portable
//! loop computes the same products.

use crate::plan::RowKernel;

/// The most outputs a layer may have to run on this kernel.
pub const MAX_OUTPUTS: usize = 8;

/// `y = x · Wᵀ (+ b)` for `n ≤` [`MAX_OUTPUTS`]. Inputs: `x [m, k]`,
/// `W [n, k]`, and with `bias` `b [n]`; output rows of `n`.
#[derive(Clone, Debug)]
pub struct SkinnyLinear {
    /// Outputs per row, `n`.
    pub n: usize,
    /// The contracted size, `k`.
    pub k: usize,
    /// Whether input 2 is a bias.
    pub bias: bool,
}

impl RowKernel for SkinnyLinear {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let (n, k) = (self.n, self.k);
        let rows = out.len() / n.max(1);
        let get = |i: usize, len: usize, what: &str| {
            let b = inputs.get(i).copied().unwrap_or(&[]);
            b.get(..len)
                .ok_or_else(|| format!("skinny linear: {what} holds {} of {len} elements", b.len()))
        };
        let x = get(0, (first + rows) * k, "the input")?;
        let x = &x[first * k..];
        let w = get(1, n * k, "the weight")?;
        let b = if self.bias {
            Some(get(2, n, "the bias")?)
        } else {
            None
        };
        let out = &mut out[..rows * n];
        #[cfg(target_arch = "x86_64")]
        if n <= MAX_OUTPUTS && std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F; `x` holds `rows·k`, `w` `n·k`,
            // `b` `n` and `out` `rows·n` elements.
            unsafe { avx512::product(rows, n, k, x, w, b, out) };
            return Ok(());
        }
        portable(n, k, x, w, b, out);
        Ok(())
    }
}

/// The product on any CPU: one dot product per output.
fn portable(n: usize, k: usize, x: &[f32], w: &[f32], b: Option<&[f32]>, out: &mut [f32]) {
    for (xr, yr) in x.chunks_exact(k.max(1)).zip(out.chunks_exact_mut(n.max(1))) {
        for (j, y) in yr.iter_mut().enumerate() {
            let wr = &w[j * k..(j + 1) * k];
            let s: f32 = xr.iter().zip(wr).map(|(a, b)| a * b).sum();
            *y = s + b.map_or(0.0, |b| b[j]);
        }
    }
    if k == 0 {
        for yr in out.chunks_exact_mut(n.max(1)) {
            for (j, y) in yr.iter_mut().enumerate() {
                *y = b.map_or(0.0, |b| b[j]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Rows of `x` per tile.
    const RT: usize = 4;
    /// Outputs per tile.
    const CT: usize = 2;

    /// The product of `rows` rows (see [`super::SkinnyLinear`]).
    ///
    /// # Safety
    /// The CPU has AVX-512F; `x` holds `rows·k`, `w` `n·k`, `b` `n` and
    /// `out` `rows·n` elements.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn product(
        rows: usize,
        n: usize,
        k: usize,
        x: &[f32],
        w: &[f32],
        b: Option<&[f32]>,
        out: &mut [f32],
    ) {
        let mut i = 0;
        while i < rows {
            let r = RT.min(rows - i);
            let mut j = 0;
            while j < n {
                let c = CT.min(n - j);
                let (xp, wp) = (x.as_ptr().add(i * k), w.as_ptr().add(j * k));
                let yp = out.as_mut_ptr().add(i * n + j);
                match (r, c) {
                    (4, 2) => tile::<4, 2>(k, n, xp, wp, yp),
                    (4, _) => tile::<4, 1>(k, n, xp, wp, yp),
                    (3, 2) => tile::<3, 2>(k, n, xp, wp, yp),
                    (3, _) => tile::<3, 1>(k, n, xp, wp, yp),
                    (2, 2) => tile::<2, 2>(k, n, xp, wp, yp),
                    (2, _) => tile::<2, 1>(k, n, xp, wp, yp),
                    (_, 2) => tile::<1, 2>(k, n, xp, wp, yp),
                    _ => tile::<1, 1>(k, n, xp, wp, yp),
                }
                j += c;
            }
            i += r;
        }
        if let Some(b) = b {
            for yr in out.chunks_exact_mut(n) {
                for (y, &v) in yr.iter_mut().zip(b) {
                    *y += v;
                }
            }
        }
    }

    /// `y[r][c] = x_r · w_c` for `R` rows of `x` (`k` apart) and `C` rows
    /// of `w` (`k` apart) into `y` (rows `n` apart).
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const R: usize, const C: usize>(
        k: usize,
        n: usize,
        x: *const f32,
        w: *const f32,
        y: *mut f32,
    ) {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let mut p = 0;
        while p + 16 <= k {
            let wv: [__m512; C] = std::array::from_fn(|c| _mm512_loadu_ps(w.add(c * k + p)));
            for (r, ar) in acc.iter_mut().enumerate() {
                let xv = _mm512_loadu_ps(x.add(r * k + p));
                for (a, wc) in ar.iter_mut().zip(&wv) {
                    *a = _mm512_fmadd_ps(xv, *wc, *a);
                }
            }
            p += 16;
        }
        if p < k {
            let mask = ((1u32 << (k - p)) - 1) as __mmask16;
            let wv: [__m512; C] =
                std::array::from_fn(|c| _mm512_maskz_loadu_ps(mask, w.add(c * k + p)));
            for (r, ar) in acc.iter_mut().enumerate() {
                let xv = _mm512_maskz_loadu_ps(mask, x.add(r * k + p));
                for (a, wc) in ar.iter_mut().zip(&wv) {
                    *a = _mm512_fmadd_ps(xv, *wc, *a);
                }
            }
        }
        for (r, ar) in acc.iter().enumerate() {
            for (c, a) in ar.iter().enumerate() {
                *y.add(r * n + c) = _mm512_reduce_add_ps(*a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gemm::{sgemm_naive, test_data as data, Strides};
    use crate::plan::{Buf, Executor, Plan, Rows, Step, Work};
    use std::sync::Arc;

    /// The kernel, in a plan of one row step split over 1 or 2 threads in
    /// pieces of 3 rows, equals `x·Wᵀ + b` by [`sgemm_naive`] on sizes
    /// around the tiles (rows 1–9, outputs 1–8, `k` 0, 1, 15–17 and 324),
    /// with and without a bias, on both kernels where the CPU has AVX-512.
    #[test]
    fn skinny_linear_equals_the_naive_product() {
        for (m, n, k) in [
            (1, 1, 1),
            (9, 2, 324),
            (7, 3, 17),
            (5, 8, 16),
            (4, 5, 15),
            (6, 2, 0),
            (2, 7, 33),
        ] {
            for bias in [false, true] {
                let (x, w, b) = (data(m * k, 1), data(n * k, 2), data(n, 3));
                let mut want = vec![0.0; m * n];
                sgemm_naive(
                    m,
                    n,
                    k,
                    1.0,
                    &x,
                    Strides::row_major(k),
                    &w,
                    Strides::transposed(k),
                    0.0,
                    &mut want,
                    n,
                );
                if bias {
                    for row in want.chunks_exact_mut(n) {
                        row.iter_mut().zip(&b).for_each(|(y, v)| *y += v);
                    }
                }
                for threads in [1, 2] {
                    let kernel = SkinnyLinear { n, k, bias };
                    let mut inputs = vec![Buf::Input(0), Buf::Param(0)];
                    let mut extents = vec![m * k, n * k];
                    if bias {
                        inputs.push(Buf::Param(1));
                        extents.push(n);
                    }
                    extents.push(m * n);
                    let plan = Plan {
                        arena_len: 0,
                        prepare: Vec::new(),
                        constants: Vec::new(),
                        steps: vec![Step {
                            work: Work::Rows(Rows {
                                kernel: Arc::new(kernel.clone()),
                                rows: m,
                                width: n,
                                grain: 3,
                            }),
                            inputs,
                            output: Buf::Output(0),
                            extents,
                        }],
                    };
                    let mut ex = Executor::new(plan, threads).unwrap();
                    ex.prepare(&[&w, &b]).unwrap();
                    let mut got = vec![f32::NAN; m * n];
                    ex.run(&[&x], &[&w, &b], &mut [&mut got]).unwrap();
                    let mut port = vec![f32::NAN; m * n];
                    portable(n, k, &x, &w, bias.then_some(&b[..]), &mut port);
                    for (what, y) in [("kernel", &got), ("portable", &port)] {
                        for (e, (g, v)) in y.iter().zip(&want).enumerate() {
                            assert!(
                                (g - v).abs() <= 1e-5 * (k as f32).sqrt().max(1.0),
                                "{what} m={m} n={n} k={k} bias={bias} threads={threads}: \
                                 y[{e}] = {g}, want {v}"
                            );
                        }
                    }
                }
            }
        }
    }
}
