//! The memory-bound product of a `linear` layer with few rows of input
//! ([`MAX_ROWS`] or fewer, batch 1 at inference): `y[m×n] = x[m×k] · Wᵀ
//! (+ beta·y)` with `W` in `nn.Linear`'s `[n, k]` layout, read in place.
//!
//! With one row of `x` every weight is used once, so the product runs at
//! the speed the weight streams from memory, not at the FMA rate. A
//! general GEMM reads `W` in its panel order and splits or blocks for
//! reuse that is not there; here every output is a dot product of `x`
//! with one contiguous row of `W`, and threads take disjoint contiguous
//! blocks of rows of `W` (columns of `y`), so each core streams one
//! sequential region once. Per tile of `m` rows of `x` and up to 8 rows
//! of `W`, zmm accumulators walk `k` 16 at a time (a masked load for the
//! tail), with a software prefetch a little ahead on every weight row;
//! `x` (at most `4·k` floats) stays in L1/L2. Without AVX-512F a portable
//! loop computes the same products.
//!
//! Each thread of the pool takes the same block of `W` on every call
//! (`rayon::broadcast` by thread index), so a weight that fits the
//! threads' L2 caches stays split between them across calls.

use std::ops::Range;

/// The most rows of `x` the kernel takes in one tile (a `linear` with at
/// most this many input rows runs here).
pub const MAX_ROWS: usize = 4;

/// Output columns per thread part are a multiple of this (the widest tile).
const COLS: usize = 8;

/// `y = x·Wᵀ + beta·y` for `m` rows of `x` (rows `ldx` apart), `W` `n×k`
/// row-major (rows `ldw` apart), `y` rows `ldy` apart; `beta` is 0 (y is
/// not read) or 1. With `threads > 1` the columns of `y` are split over
/// the threads of the current rayon pool, each taking the block its index
/// names.
///
/// # Safety
/// `x` holds `m` rows of `k` floats `ldx` apart, `w` `n` rows of `k`
/// floats `ldw` apart, `y` `m` rows of `n` floats `ldy` apart (writable,
/// not overlapping `x` or `w`).
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemv(
    m: usize,
    n: usize,
    k: usize,
    x: *const f32,
    ldx: usize,
    w: *const f32,
    ldw: usize,
    beta: f32,
    y: *mut f32,
    ldy: usize,
    threads: usize,
) {
    let parts = threads.clamp(1, n.div_ceil(COLS).max(1));
    let part = |t: usize, of: usize| {
        let units = n.div_ceil(COLS);
        ((units * t / of) * COLS).min(n)..((units * (t + 1) / of) * COLS).min(n)
    };
    let g = Gemv {
        m,
        k,
        x,
        ldx,
        w,
        ldw,
        beta,
        y,
        ldy,
    };
    if parts <= 1 {
        // SAFETY: forwarded.
        unsafe { g.cols(0..n) };
        return;
    }
    if rayon::current_num_threads() == parts {
        rayon::broadcast(|ctx| {
            // SAFETY: forwarded; thread parts are disjoint columns of y.
            unsafe { g.cols(part(ctx.index(), ctx.num_threads())) }
        });
    } else {
        use rayon::prelude::*;
        (0..parts).into_par_iter().for_each(|t| {
            // SAFETY: as above.
            unsafe { g.cols(part(t, parts)) }
        });
    }
}

/// The operands of one [`gemv`] call.
#[derive(Clone, Copy)]
struct Gemv {
    m: usize,
    k: usize,
    x: *const f32,
    ldx: usize,
    w: *const f32,
    ldw: usize,
    beta: f32,
    y: *mut f32,
    ldy: usize,
}

// SAFETY: threads write disjoint columns of y and only read x and w; the
// buffers outlive the call that shares them.
unsafe impl Send for Gemv {}
// SAFETY: as above.
unsafe impl Sync for Gemv {}

impl Gemv {
    /// Columns `cols` of `y`, on the calling thread.
    ///
    /// # Safety
    /// As [`gemv`]; `cols` inside `0..n`, written by no one else.
    unsafe fn cols(self, cols: Range<usize>) {
        if cols.is_empty() {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            let mut i = 0;
            while i < self.m {
                let r = MAX_ROWS.min(self.m - i);
                // SAFETY: the CPU has AVX-512F; rows i..i+r of x and y.
                unsafe { avx512::rows(self, i, r, cols.clone()) };
                i += r;
            }
            return;
        }
        // SAFETY: forwarded.
        unsafe { self.portable(cols) };
    }

    /// The product on any CPU: one dot product per output, in 8 lanes.
    ///
    /// # Safety
    /// As [`Gemv::cols`].
    unsafe fn portable(self, cols: Range<usize>) {
        for i in 0..self.m {
            // SAFETY: row i of x holds k floats (caller's guarantee).
            let xr = unsafe { std::slice::from_raw_parts(self.x.add(i * self.ldx), self.k) };
            for j in cols.clone() {
                // SAFETY: row j of W holds k floats.
                let wr = unsafe { std::slice::from_raw_parts(self.w.add(j * self.ldw), self.k) };
                let mut lanes = [0.0f32; 8];
                let (xc, wc) = (xr.chunks_exact(8), wr.chunks_exact(8));
                let (xt, wt) = (xc.remainder(), wc.remainder());
                for (a, b) in xc.zip(wc) {
                    for l in 0..8 {
                        lanes[l] += a[l] * b[l];
                    }
                }
                let tail: f32 = xt.iter().zip(wt).map(|(a, b)| a * b).sum();
                let s = lanes.iter().sum::<f32>() + tail;
                // SAFETY: y[i][j] is this thread's (caller's guarantee).
                let yv = unsafe { &mut *self.y.add(i * self.ldy + j) };
                *yv = if self.beta == 0.0 { s } else { *yv + s };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::Gemv;
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// How far ahead (in floats) each weight row is prefetched.
    const AHEAD: usize = 512;

    /// Rows `i..i+r` (`r ≤ 4`) of `y`, columns `cols`.
    ///
    /// # Safety
    /// The CPU has AVX-512F; as [`Gemv::cols`], rows `i..i+r` inside `0..m`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn rows(g: Gemv, i: usize, r: usize, cols: Range<usize>) {
        let mut j = cols.start;
        while j < cols.end {
            let left = cols.end - j;
            let c = match r {
                1 => 8,
                _ => 4,
            }
            .min(left);
            // SAFETY: rows i..i+r of x and y, rows j..j+c of W.
            unsafe {
                match (r, c) {
                    (1, 8) => tile::<1, 8>(g, i, j),
                    (1, 4..) => tile::<1, 4>(g, i, j),
                    (2, 4) => tile::<2, 4>(g, i, j),
                    (3, 4) => tile::<3, 4>(g, i, j),
                    (4, 4) => tile::<4, 4>(g, i, j),
                    (1, _) => tile::<1, 1>(g, i, j),
                    (2, _) => tile::<2, 1>(g, i, j),
                    (3, _) => tile::<3, 1>(g, i, j),
                    _ => tile::<4, 1>(g, i, j),
                }
            }
            j += match (r, c) {
                (1, 8) => 8,
                (_, 4..) => 4,
                _ => 1,
            };
        }
    }

    /// `y[i+r][j+c] (+)= x_{i+r} · W_{j+c}` for `R` rows and `C` columns.
    ///
    /// # Safety
    /// The CPU has AVX-512F; rows `i..i+R` of x and y and `j..j+C` of W
    /// exist.
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const R: usize, const C: usize>(g: Gemv, i: usize, j: usize) {
        let k = g.k;
        let (x, w) = (g.x.add(i * g.ldx), g.w.add(j * g.ldw));
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let mut p = 0;
        while p + 16 <= k {
            let wv: [__m512; C] = std::array::from_fn(|c| {
                let row = w.add(c * g.ldw + p);
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(AHEAD) as *const i8);
                _mm512_loadu_ps(row)
            });
            for (r, ar) in acc.iter_mut().enumerate() {
                let xv = _mm512_loadu_ps(x.add(r * g.ldx + p));
                for (a, wc) in ar.iter_mut().zip(&wv) {
                    *a = _mm512_fmadd_ps(xv, *wc, *a);
                }
            }
            p += 16;
        }
        if p < k {
            let mask = ((1u32 << (k - p)) - 1) as __mmask16;
            let wv: [__m512; C] =
                std::array::from_fn(|c| _mm512_maskz_loadu_ps(mask, w.add(c * g.ldw + p)));
            for (r, ar) in acc.iter_mut().enumerate() {
                let xv = _mm512_maskz_loadu_ps(mask, x.add(r * g.ldx + p));
                for (a, wc) in ar.iter_mut().zip(&wv) {
                    *a = _mm512_fmadd_ps(xv, *wc, *a);
                }
            }
        }
        for (r, ar) in acc.iter().enumerate() {
            for (c, a) in ar.iter().enumerate() {
                let yp = g.y.add((i + r) * g.ldy + j + c);
                let s = _mm512_reduce_add_ps(*a);
                *yp = if g.beta == 0.0 { s } else { *yp + s };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gemm::{sgemm_naive, test_data as data, Strides};

    /// The GEMV equals `x·Wᵀ (+ y)` by [`sgemm_naive`] (f64 sums) on
    /// sizes around its tiles and vectors: rows 1–5 (5 takes two row
    /// tiles), outputs 1–21 (fewer than the thread split, tails of 8, 4
    /// and 1), `k` 0, 1, 15–17 and 300; padded leading dimensions whose
    /// padding must stay untouched; beta 0 (y, NaN, not read) and 1; on
    /// 1 and 2 threads of a pool, and the portable loop alike.
    #[test]
    fn gemv_equals_the_naive_product() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let mut checked = 0;
        for m in [1, 2, 3, 4, 5] {
            for n in [1, 3, 8, 13, 21] {
                for k in [0, 1, 15, 16, 17, 300] {
                    for beta in [0.0f32, 1.0] {
                        let pad = (m + n + k) % 3;
                        let (ldx, ldw, ldy) = (k + pad, k + 2 * pad, n + pad);
                        let x = data(m * ldx, 1);
                        let w = data(n * ldw, 2);
                        let mut y0 = data(m * ldy, 3);
                        for (e, v) in y0.iter_mut().enumerate() {
                            if e % ldy >= n || beta == 0.0 {
                                *v = f32::NAN;
                            }
                        }
                        let mut want = y0.clone();
                        sgemm_naive(
                            m,
                            n,
                            k,
                            1.0,
                            &x,
                            Strides::row_major(ldx),
                            &w,
                            Strides::transposed(ldw),
                            beta,
                            &mut want,
                            ldy,
                        );
                        for threads in [1, 2] {
                            for portable in [false, true] {
                                let mut y = y0.clone();
                                let g = Gemv {
                                    m,
                                    k,
                                    x: x.as_ptr(),
                                    ldx,
                                    w: w.as_ptr(),
                                    ldw,
                                    beta,
                                    y: y.as_mut_ptr(),
                                    ldy,
                                };
                                // SAFETY: the buffers hold the sizes above.
                                pool.install(|| unsafe {
                                    if portable {
                                        g.portable(0..n)
                                    } else {
                                        gemv(
                                            m,
                                            n,
                                            k,
                                            x.as_ptr(),
                                            ldx,
                                            w.as_ptr(),
                                            ldw,
                                            beta,
                                            y.as_mut_ptr(),
                                            ldy,
                                            threads,
                                        )
                                    }
                                });
                                let tol = 1e-5 * (k as f32).sqrt().max(1.0) * 4.0;
                                for (e, (g, v)) in y.iter().zip(&want).enumerate() {
                                    let what = format!(
                                        "m={m} n={n} k={k} beta={beta} threads={threads} \
                                         portable={portable}: y[{e}] = {g}, want {v}"
                                    );
                                    if e % ldy >= n {
                                        assert!(g.is_nan(), "padding written: {what}");
                                    } else {
                                        assert!((g - v).abs() <= tol, "{what}");
                                    }
                                }
                                checked += 1;
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(checked, 5 * 5 * 6 * 2 * 2 * 2);
    }

    /// Outside any pool and with more threads than column blocks, the
    /// product is still whole (parts are clamped to the blocks there are).
    #[test]
    fn gemv_with_more_threads_than_columns() {
        let (m, n, k) = (2, 20, 40);
        let (x, w) = (data(m * k, 4), data(n * k, 5));
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
        let mut y = vec![f32::NAN; m * n];
        // SAFETY: the buffers hold the sizes above.
        unsafe {
            gemv(
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
                4,
            )
        };
        for (g, v) in y.iter().zip(&want) {
            assert!((g - v).abs() <= 1e-5, "{g} vs {v}");
        }
    }
}
