//! Single-precision GEMM for contractions (convolution, linear, matmul):
//! `C[m×n] = alpha·A[m×k]·B[k×n] + beta·C`, row-major C.
//!
//! [`sgemm`] calls the `gemm` crate (built with its `x86-v4` feature: it
//! checks for AVX-512 at run time and falls back to AVX2+FMA or scalar code
//! otherwise). `bench-limits.md` §4 measured it as the fastest SGEMM route on
//! this machine (~130 GFLOP/s on one core for a conv-shaped product).
//!
//! A and B are read through [`Strides`] (row and column stride in
//! elements), so a transposed operand is just swapped strides. C is row-major
//! with a leading dimension `ldc ≥ n`.
//!
//! [`cases`] and [`sgemm_naive`] are the shared test cases and reference
//! used by every GEMM path (this one and the Cranelift tile of the compiler),
//! so both are checked on exactly the same products.

use gemm::Parallelism;

/// Row and column strides of a matrix operand, in elements.
///
/// Element `(i, j)` is at `i * row + j * col`. Row-major with leading
/// dimension `ld` is `Strides { row: ld, col: 1 }`; the transpose of a
/// row-major `[cols × rows]` matrix is `Strides { row: 1, col: ld }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strides {
    /// Distance between consecutive rows.
    pub row: usize,
    /// Distance between consecutive columns.
    pub col: usize,
}

impl Strides {
    /// Row-major with leading dimension `ld`.
    pub fn row_major(ld: usize) -> Strides {
        Strides { row: ld, col: 1 }
    }

    /// The transpose of a row-major matrix with leading dimension `ld`
    /// (column-major view).
    pub fn transposed(ld: usize) -> Strides {
        Strides { row: 1, col: ld }
    }

    /// Minimum buffer length for a `rows × cols` matrix with these strides
    /// (0 for an empty matrix), or `None` on overflow.
    pub fn span(&self, rows: usize, cols: usize) -> Option<usize> {
        if rows == 0 || cols == 0 {
            return Some(0);
        }
        (rows - 1)
            .checked_mul(self.row)?
            .checked_add((cols - 1).checked_mul(self.col)?)?
            .checked_add(1)
    }
}

/// A GEMM call whose buffers or strides do not fit its sizes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GemmError {
    /// A buffer is shorter than its matrix needs.
    #[error("sgemm {m}×{n}×{k}: {operand} needs {need} elements but its buffer has {len}")]
    ShortBuffer {
        /// `"A"`, `"B"` or `"C"`.
        operand: &'static str,
        /// Rows of C.
        m: usize,
        /// Columns of C.
        n: usize,
        /// The contracted dimension.
        k: usize,
        /// Elements the operand spans.
        need: usize,
        /// Elements the buffer has.
        len: usize,
    },
    /// `ldc < n`, so rows of C would overlap.
    #[error("sgemm {m}×{n}×{k}: ldc = {ldc} is smaller than n = {n}; rows of C would overlap")]
    BadLdc {
        /// Rows of C.
        m: usize,
        /// Columns of C.
        n: usize,
        /// The contracted dimension.
        k: usize,
        /// The leading dimension given.
        ldc: usize,
    },
    /// A size or stride product overflows `usize`/`isize`.
    #[error("sgemm {m}×{n}×{k}: sizes or strides overflow the address space")]
    Overflow {
        /// Rows of C.
        m: usize,
        /// Columns of C.
        n: usize,
        /// The contracted dimension.
        k: usize,
    },
}

/// Checks that `a`, `b` and `c` are long enough for an `m×n×k` product with
/// these strides (shared by every GEMM path).
#[allow(clippy::too_many_arguments)]
pub fn check_operands(
    m: usize,
    n: usize,
    k: usize,
    a_len: usize,
    sa: Strides,
    b_len: usize,
    sb: Strides,
    c_len: usize,
    ldc: usize,
) -> Result<(), GemmError> {
    if n > 0 && ldc < n {
        return Err(GemmError::BadLdc { m, n, k, ldc });
    }
    let over = GemmError::Overflow { m, n, k };
    let sc = Strides::row_major(ldc);
    for (operand, len, s, r, c) in [
        ("A", a_len, sa, m, k),
        ("B", b_len, sb, k, n),
        ("C", c_len, sc, m, n),
    ] {
        let need = s.span(r, c).ok_or_else(|| over.clone())?;
        if need > isize::MAX as usize / 4 {
            return Err(over);
        }
        if need > len {
            return Err(GemmError::ShortBuffer {
                operand,
                m,
                n,
                k,
                need,
                len,
            });
        }
    }
    Ok(())
}

/// `C = alpha·A·B + beta·C` for f32, with `A` `m×k` and `B` `k×n` read
/// through strides and `C` row-major with leading dimension `ldc`.
///
/// `beta == 0` does not read C (NaNs already in C do not propagate), as in
/// BLAS. `k == 0` gives `C = beta·C`. `threads ≤ 1` runs on the calling
/// thread; `threads > 1` lets the `gemm` crate split the work into up to
/// `threads` tasks on the current rayon pool.
///
/// Returns an error (never panics) if a buffer is too short for its sizes
/// and strides, or if `ldc < n`.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    sa: Strides,
    b: &[f32],
    sb: Strides,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
    threads: usize,
) -> Result<(), GemmError> {
    check_operands(m, n, k, a.len(), sa, b.len(), sb, c.len(), ldc)?;
    // SAFETY: `check_operands` proved every element each operand's strides
    // reach lies inside its slice and that all offsets fit in `isize`; `c`
    // is a unique borrow, so it cannot alias `a` or `b`.
    unsafe {
        sgemm_unchecked(
            m,
            n,
            k,
            alpha,
            a.as_ptr(),
            sa,
            b.as_ptr(),
            sb,
            beta,
            c.as_mut_ptr(),
            ldc,
            threads,
        )
    };
    Ok(())
}

/// [`sgemm`] on raw pointers, for the plan executor (no checks).
///
/// # Safety
///
/// Every element of `a` (`m×k`, strides `sa`), `b` (`k×n`, strides `sb`) and
/// `c` (`m×n`, row stride `ldc ≥ n`) must be valid for reads (and `c` for
/// writes), offsets must fit in `isize`, and `c` must not overlap `a` or `b`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_unchecked(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: *const f32,
    sa: Strides,
    b: *const f32,
    sb: Strides,
    beta: f32,
    c: *mut f32,
    ldc: usize,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 || alpha == 0.0 {
        // Nothing to add: C = beta·C (beta = 0 writes zeros without reading).
        for i in 0..m {
            // SAFETY: row i of C spans `n` elements starting at i·ldc, inside
            // the region the caller guarantees.
            let row = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), n) };
            if beta == 0.0 {
                row.fill(0.0);
            } else if beta != 1.0 {
                row.iter_mut().for_each(|x| *x *= beta);
            }
        }
        return;
    }
    let par = if threads <= 1 {
        Parallelism::None
    } else {
        Parallelism::Rayon(threads)
    };
    // The crate computes dst := alpha_g·dst + beta_g·lhs·rhs and reads dst
    // only when `read_dst` is true; so our (alpha, beta) map to
    // (beta_g, alpha_g) = (alpha, beta) swapped.
    let read_dst = beta != 0.0;
    // SAFETY: the caller guarantees the operand regions (see `# Safety`);
    // strides fit in `isize` by the same guarantee; the element type is
    // f32, which the crate supports (it panics only for other types).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            ldc as isize,
            read_dst,
            a,
            sa.col as isize,
            sa.row as isize,
            b,
            sb.col as isize,
            sb.row as isize,
            beta,
            alpha,
            false,
            false,
            false,
            par,
        )
    };
}

/// Reference `C = alpha·A·B + beta·C` (a plain triple loop, f64
/// accumulation); the oracle every GEMM path is tested against.
/// Panics if a buffer is too short (it is for tests).
#[allow(clippy::too_many_arguments)]
pub fn sgemm_naive(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    sa: Strides,
    b: &[f32],
    sb: Strides,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) {
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f64;
            for p in 0..k {
                s += a[i * sa.row + p * sa.col] as f64 * b[p * sb.row + j * sb.col] as f64;
            }
            let old = if beta == 0.0 {
                0.0
            } else {
                beta as f64 * c[i * ldc + j] as f64
            };
            c[i * ldc + j] = (alpha as f64 * s + old) as f32;
        }
    }
}

/// One GEMM test case shared by every GEMM path.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GemmCase {
    /// Rows of C.
    pub m: usize,
    /// Columns of C.
    pub n: usize,
    /// The contracted dimension.
    pub k: usize,
    /// Extra elements per row of A, B and C beyond their width (strides
    /// larger than the width).
    pub pad: usize,
    /// B is stored transposed (`n×k` row-major) and read through strides.
    pub trans_b: bool,
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of the old C (0 = C is not read).
    pub beta: f32,
}

/// The shared GEMM test cases: odd sizes (1×1×1, 7×13×5, 64³,
/// 129×65×257, k = 0), each tight and with padded strides, beta 0 and 1,
/// plain and transposed B, and a non-unit alpha.
pub fn cases() -> Vec<GemmCase> {
    let sizes = [
        (1, 1, 1),
        (7, 13, 5),
        (64, 64, 64),
        (129, 65, 257),
        (5, 9, 0),
        (3, 17, 300),
    ];
    let mut v = Vec::new();
    for &(m, n, k) in &sizes {
        for pad in [0, 3] {
            for beta in [0.0, 1.0] {
                for trans_b in [false, true] {
                    v.push(GemmCase {
                        m,
                        n,
                        k,
                        pad,
                        trans_b,
                        alpha: 1.0,
                        beta,
                    });
                }
            }
        }
    }
    v.push(GemmCase {
        m: 33,
        n: 20,
        k: 17,
        pad: 1,
        trans_b: false,
        alpha: -0.5,
        beta: 0.25,
    });
    v
}

/// Operands of one [`GemmCase`], filled with deterministic values in
/// `[-1, 1)`; C starts as NaN in its padding and, when `beta == 0`, in the
/// product region too (so a path that reads C with beta 0 fails).
#[derive(Debug, Clone)]
pub struct CaseData {
    /// A, row-major with stride `lda`.
    pub a: Vec<f32>,
    /// Strides of A.
    pub sa: Strides,
    /// B (or Bᵀ when `trans_b`), read through `sb`.
    pub b: Vec<f32>,
    /// Strides of B as a `k×n` matrix.
    pub sb: Strides,
    /// C, row-major with stride `ldc`.
    pub c: Vec<f32>,
    /// Leading dimension of C.
    pub ldc: usize,
}

impl GemmCase {
    /// Deterministic operands for this case.
    pub fn data(&self) -> CaseData {
        let mut state =
            0x9E37_79B9_7F4A_7C15u64 ^ (self.m * 1_000_003 + self.n * 1009 + self.k) as u64;
        let mut next = move || {
            // splitmix64
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let lda = self.k + self.pad;
        let a: Vec<f32> = (0..self.m * lda).map(|_| next()).collect();
        let (b, sb) = if self.trans_b {
            let ld = self.k + self.pad;
            (
                (0..self.n * ld).map(|_| next()).collect(),
                Strides::transposed(ld),
            )
        } else {
            let ld = self.n + self.pad;
            (
                (0..self.k * ld).map(|_| next()).collect(),
                Strides::row_major(ld),
            )
        };
        let ldc = self.n + self.pad;
        let mut c: Vec<f32> = (0..self.m * ldc).map(|_| next()).collect();
        for i in 0..self.m {
            for j in 0..ldc {
                if j >= self.n || self.beta == 0.0 {
                    c[i * ldc + j] = f32::NAN;
                }
            }
        }
        CaseData {
            a,
            sa: Strides::row_major(lda),
            b,
            sb,
            c,
            ldc,
        }
    }

    /// Checks `got` (C after a GEMM path ran on [`GemmCase::data`]) against
    /// [`sgemm_naive`]: relative error ≤ 1e-5 of the row's magnitude scale
    /// `sqrt(k)`, padding untouched (still NaN). Returns a message on failure.
    pub fn check(&self, got: &[f32]) -> Result<(), String> {
        let d = self.data();
        let mut want = d.c.clone();
        sgemm_naive(
            self.m, self.n, self.k, self.alpha, &d.a, d.sa, &d.b, d.sb, self.beta, &mut want, d.ldc,
        );
        let tol = 1e-5 * (self.k as f32).sqrt().max(1.0) * 4.0;
        for i in 0..self.m {
            for j in 0..d.ldc {
                let (g, w) = (got[i * d.ldc + j], want[i * d.ldc + j]);
                if j >= self.n {
                    if !g.is_nan() {
                        return Err(format!("{self:?}: padding C[{i}][{j}] was written ({g})"));
                    }
                } else if (g - w).abs().is_nan() || (g - w).abs() > tol {
                    return Err(format!("{self:?}: C[{i}][{j}] = {g}, want {w} (tol {tol})"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgemm_matches_naive_on_shared_cases() {
        for case in cases() {
            for threads in [1, 2] {
                let mut d = case.data();
                sgemm(
                    case.m, case.n, case.k, case.alpha, &d.a, d.sa, &d.b, d.sb, case.beta,
                    &mut d.c, d.ldc, threads,
                )
                .unwrap();
                case.check(&d.c).unwrap();
            }
        }
    }

    #[test]
    fn short_buffers_and_bad_ldc_are_errors() {
        let a = vec![0.0; 6];
        let b = vec![0.0; 6];
        let mut c = vec![0.0; 4];
        let r = |m| Strides::row_major(m);
        assert!(sgemm(2, 2, 3, 1.0, &a, r(3), &b, r(2), 0.0, &mut c, 2, 1).is_ok());
        let e = sgemm(2, 2, 3, 1.0, &a[..5], r(3), &b, r(2), 0.0, &mut c, 2, 1).unwrap_err();
        assert!(
            matches!(
                e,
                GemmError::ShortBuffer {
                    operand: "A",
                    need: 6,
                    len: 5,
                    ..
                }
            ),
            "{e}"
        );
        let e = sgemm(2, 2, 3, 1.0, &a, r(3), &b, r(3), 0.0, &mut c, 2, 1).unwrap_err();
        assert!(
            matches!(e, GemmError::ShortBuffer { operand: "B", .. }),
            "{e}"
        );
        let e = sgemm(2, 2, 3, 1.0, &a, r(3), &b, r(2), 0.0, &mut c, 1, 1).unwrap_err();
        assert!(matches!(e, GemmError::BadLdc { .. }), "{e}");
        let e = sgemm(2, 2, 3, 1.0, &a, r(usize::MAX), &b, r(2), 0.0, &mut c, 2, 1).unwrap_err();
        assert!(matches!(e, GemmError::Overflow { .. }), "{e}");
    }
}
