//! The products of a `linear` layer in a training step at a small batch
//! (at most [`MAX_THIN`] rows), with the weight read in place and streamed
//! from memory once:
//!
//! - [`Form::Dot`], the forward `y = x·Wᵀ`: A's rows and B's columns are
//!   contiguous along `k` (B is `W [n, k]` read transposed), `m` thin;
//! - [`Form::Axpy`], the input gradient `dx = dy·W`: A's rows along `k`,
//!   B's rows along `n` (B is `W [k, n]` itself), `m` thin.
//!
//! (The weight gradient `dW = dyᵀ·x` has a thin depth instead; written as
//! a third form of the same kernel it ran level with the `gemm` crate,
//! bound by writing `dW`, so it stays there.)
//!
//! A general GEMM packs the weight into its panel order on every call
//! (the weight changes every step, so nothing is packed ahead): at
//! vggish's batch 32 that is a 201 MB copy per product and per step, and
//! the `gemm` crate ran these products at 20–45 GFLOP/s where the FMA
//! rate allows several times that (`examples/packed_speed -- train`).
//! Here every part of a thread's share of the weight is loaded from
//! memory once and used for all the thin side's rows while in cache, by
//! one row-panel kernel, `C[r×16v] (+)= Σ_q A(i, q)·B[q][j..]` (a
//! broadcast of A per row and step, `r·v` accumulators: 8×3, 8×2, 6×4),
//! over depth blocks whose B block stays in L2:
//!
//! - Dot runs as `Cᵀ = W·xᵀ`: `x` (small) is transposed into the work
//!   buffer, the weight's rows are the kernel's A rows (split over the
//!   threads), each read once, and `Cᵀ` is transposed back into C.
//! - Axpy transposes `dy` (a step's broadcasts then come from one run)
//!   and splits C's columns over the threads; per block of weight rows
//!   (that fits L2 next to the thread's C) every 48-column stretch of the
//!   block serves all of C's rows, and prefetches the same stretch of the
//!   next block.
//!
//! `beta` is 0 (C is not read) or 1 (C accumulates). Without AVX-512F, or
//! for a product none of the forms fits, [`gemm`] runs the `gemm` crate.

use super::{sgemm_unchecked, Strides, TileWork};
use rayon::prelude::*;

/// The most rows of the thin side.
pub const MAX_THIN: usize = 64;

/// How a product's operands are laid out (the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `x·Wᵀ`: A rows and B columns contiguous along `k`, `m` thin.
    Dot,
    /// `dy·W`: A rows contiguous along `k`, B rows along `n`, `m` thin.
    Axpy,
}

impl Form {
    /// The form of `C[m×n] = A[m×k]·B[k×n]` with these strides, if any.
    pub fn of((m, _n, _k): (usize, usize, usize), sa: Strides, sb: Strides) -> Option<Form> {
        if m > MAX_THIN || sa.col != 1 {
            None
        } else if sb.row == 1 {
            Some(Form::Dot)
        } else if sb.col == 1 {
            Some(Form::Axpy)
        } else {
            None
        }
    }
}

/// Bytes of a depth block of B kept in L2.
const BLOCK_BYTES: usize = 256 << 10;
/// Bytes of the weight rows of one Axpy depth block kept in L2 next to
/// the thread's C.
const AXPY_BLOCK_BYTES: usize = 512 << 10;
/// Columns of the row-panel kernel's widest tile.
const PANEL_COLS: usize = 64;

/// `C = A·B + beta·C` (`beta` 0 or 1) on `threads` tasks of the current
/// rayon pool, by its [`Form`] (transposing through `work`, which
/// [`TileWork::with_thin`] sizes ahead; it grows here otherwise); the
/// `gemm` crate where no form fits, the CPU lacks AVX-512F or `beta` is
/// neither 0 nor 1.
///
/// # Safety
/// As [`sgemm_unchecked`]: A spans `m×k` and B `k×n` through their
/// strides, C `m` rows of `n` floats `ldc` apart, not overlapping A or B.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(
    (m, n, k): (usize, usize, usize),
    a: *const f32,
    sa: Strides,
    b: *const f32,
    sb: Strides,
    beta: f32,
    c: *mut f32,
    ldc: usize,
    threads: usize,
    work: &mut TileWork,
) {
    let form = Form::of((m, n, k), sa, sb).filter(|_| {
        (beta == 0.0 || beta == 1.0) && m > 0 && n > 0 && k > 0 && super::kernel_avx512::available()
    });
    let p = Product {
        a,
        sa,
        b,
        sb,
        c,
        ldc,
        add: beta != 0.0,
    };
    match form {
        // SAFETY: forwarded.
        None => unsafe { sgemm_unchecked(m, n, k, 1.0, a, sa, b, sb, beta, c, ldc, threads) },
        // SAFETY: forwarded.
        Some(Form::Dot) => unsafe { dot((m, n, k), p, threads, work) },
        // SAFETY: forwarded; Axpy splits C's columns (A transposed: a
        // step's broadcasts then come from one run, not from `m` rows
        // pages apart).
        Some(Form::Axpy) => unsafe {
            let at = transposed(p.a, p.sa.row, (m, k), &mut work.b);
            let p = Product {
                a: at,
                sa: Strides::transposed(m),
                ..p
            };
            split((m, n, k), p, threads, false)
        },
    }
}

/// A [`Form::Dot`] product as `Cᵀ = B'·A'` with `A' = Bᵀ` (the weight's
/// rows) and `B' = Aᵀ` (the thin operand, transposed into `work.b`),
/// into `work.c`, then transposed into C.
///
/// # Safety
/// As [`gemm`].
unsafe fn dot((m, n, k): (usize, usize, usize), p: Product, threads: usize, work: &mut TileWork) {
    // SAFETY: A is m rows of k (the caller's promise).
    let at = unsafe { transposed(p.a, p.sa.row, (m, k), &mut work.b) };
    grow(&mut work.c, n * m);
    let t = Product {
        a: p.b,
        sa: Strides::row_major(p.sb.col),
        b: at,
        sb: Strides::row_major(m),
        c: work.c.as_mut_ptr(),
        ldc: m,
        add: false,
    };
    // SAFETY: the weight's n rows of k, the transposed k×m and the n×m
    // result (sized above).
    unsafe { split((n, m, k), t, threads, true) };
    for (j, row) in work.c[..n * m].chunks_exact(m).enumerate() {
        for (r, &v) in row.iter().enumerate() {
            // SAFETY: C(r, j) exists and nothing else writes it.
            let out = unsafe { &mut *p.c.add(r * p.ldc + j) };
            *out = if p.add { *out + v } else { v };
        }
    }
}

impl TileWork {
    /// Grows the buffers to what [`gemm`] takes for `C[m×n] = A[m×k]·B`
    /// with these strides (a transposed A; for Dot the transposed C too),
    /// so that a run allocates nothing.
    pub fn with_thin(
        mut self,
        (m, n, k): (usize, usize, usize),
        sa: Strides,
        sb: Strides,
    ) -> TileWork {
        let (b, c) = match Form::of((m, n, k), sa, sb) {
            Some(Form::Dot) => (k * m, n * m),
            Some(Form::Axpy) => (k * m, 0),
            None => (0, 0),
        };
        grow(&mut self.b, b);
        grow(&mut self.c, c);
        self
    }
}

/// Grows `buf` to at least `len` floats (a no-op once the executor has
/// sized it by [`TileWork::with_thin`]).
fn grow(buf: &mut Vec<f32>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
}

/// `a` (`m` rows of `k`, rows `lda` apart) transposed into `buf`
/// (grown to `k·m`): row `q` of the result is column `q` of `a`.
///
/// # Safety
/// `a` holds the rows.
unsafe fn transposed(
    a: *const f32,
    lda: usize,
    (m, k): (usize, usize),
    buf: &mut Vec<f32>,
) -> *const f32 {
    grow(buf, k * m);
    for (q, row) in buf[..k * m].chunks_exact_mut(m).enumerate() {
        for (r, v) in row.iter_mut().enumerate() {
            // SAFETY: a(r, q) exists (the caller's promise).
            *v = unsafe { *a.add(r * lda + q) };
        }
    }
    buf.as_ptr()
}

/// `C[m×n] (+)= A·B` by the row-panel kernel on `threads` tasks, each
/// taking a band of C's rows (`by_rows`) or columns.
///
/// # Safety
/// As [`gemm`]; B's rows contiguous along `n`.
unsafe fn split((m, n, k): (usize, usize, usize), p: Product, threads: usize, by_rows: bool) {
    let (len, unit) = if by_rows { (m, 8) } else { (n, PANEL_COLS) };
    let units = len.div_ceil(unit);
    let parts = threads.clamp(1, units);
    let band = |t: usize| {
        ((units * t / parts) * unit).min(len)..((units * (t + 1) / parts) * unit).min(len)
    };
    let run = |t: usize| {
        let (rows, cols) = if by_rows {
            (band(t), 0..n)
        } else {
            (0..m, band(t))
        };
        // SAFETY: the caller's promise; parts write disjoint bands of C.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            avx512::panels(p, k, rows, cols, by_rows)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (rows, cols);
    };
    if parts == 1 {
        run(0);
    } else {
        (0..parts).into_par_iter().for_each(run);
    }
}

/// The operands of one row-panel product: A element `(i, q)` at
/// `a + i·sa.row + q·sa.col`, B row `q` at `b + q·sb.row` (contiguous),
/// C rows `ldc` apart; `add` accumulates into C.
#[derive(Clone, Copy)]
struct Product {
    a: *const f32,
    sa: Strides,
    b: *const f32,
    sb: Strides,
    c: *mut f32,
    ldc: usize,
    add: bool,
}

// SAFETY: threads write disjoint parts of C and only read A and B; the
// buffers outlive the call that shares them.
unsafe impl Send for Product {}
// SAFETY: as above.
unsafe impl Sync for Product {}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Product, AXPY_BLOCK_BYTES, BLOCK_BYTES};
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// The mask of the first `n` (at most 16) lanes.
    fn lanes(n: usize) -> __mmask16 {
        if n >= 16 {
            !0
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    }

    /// Rows `rows` and columns `cols` of C over depth `k`. The columns go
    /// in chunks whose C rows take at most [`BLOCK_BYTES`] (one chunk for
    /// a transposed Dot's few columns); per chunk, depth blocks whose B
    /// block stays in L2; per block, row tiles outer when `by_rows` (the
    /// transposed Dot: each weight row read once), else column stretches
    /// outer (a stretch of the B block serves every row).
    ///
    /// # Safety
    /// AVX-512F; as [`super::gemm`], the band this thread's alone.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn panels(
        p: Product,
        k: usize,
        rows: Range<usize>,
        cols: Range<usize>,
        by_rows: bool,
    ) {
        let (r_tile, c_tile) = tile_shape(cols.len());
        let chunk = (BLOCK_BYTES / (4 * rows.len().max(1)) / c_tile * c_tile).max(c_tile);
        for j0 in cols.clone().step_by(chunk) {
            let chunk = j0..(j0 + chunk).min(cols.end);
            let budget = if by_rows {
                BLOCK_BYTES
            } else {
                AXPY_BLOCK_BYTES
            };
            let block = (budget / (4 * chunk.len())).clamp(super::MAX_THIN, 4096);
            let mut k0 = 0;
            while k0 < k {
                let kl = block.min(k - k0);
                let add = k0 > 0 || p.add;
                let run = |i: usize, j: usize, pf: Option<(*const f32, usize)>| {
                    let (r, nc) = ((rows.end - i).min(r_tile), (chunk.end - j).min(c_tile));
                    // SAFETY: rows i..i+r and columns j..j+nc of the
                    // band, depth k0..k0+kl (the caller's promise).
                    unsafe { instance(r, nc)(p, (i, j), (k0, kl), nc, add, pf) };
                };
                if by_rows {
                    for i in rows.clone().step_by(r_tile) {
                        for j in chunk.clone().step_by(c_tile) {
                            run(i, j, None);
                        }
                    }
                } else {
                    // The next block's rows of each stretch are prefetched
                    // by the stretch's first tile, a block ahead: a
                    // block's stretches touch more rows than the hardware
                    // follows streams.
                    let ahead = (k - (k0 + kl)).min(kl);
                    for j in chunk.clone().step_by(c_tile) {
                        for i in rows.clone().step_by(r_tile) {
                            let pf = (i == rows.start && ahead > 0)
                                .then(|| (p.b.wrapping_add((k0 + kl) * p.sb.row + j), ahead));
                            run(i, j, pf);
                        }
                    }
                }
                k0 += kl;
            }
        }
    }

    /// Rows and columns of the tile for a band `width` columns wide: 8×48
    /// (24 accumulators) in general, 8×32 and 6×64 for bands of 32 and 64
    /// columns or fewer (a transposed Dot's batch).
    fn tile_shape(width: usize) -> (usize, usize) {
        match width {
            0..=32 => (8, 32),
            33..=48 => (8, 48),
            49..=64 => (6, 64),
            _ => (8, 48),
        }
    }

    /// A row-panel kernel: `(p, (i, j), (k0, kl), ncols, add, prefetch)`.
    type PanelFn = unsafe fn(
        Product,
        (usize, usize),
        (usize, usize),
        usize,
        bool,
        Option<(*const f32, usize)>,
    );

    /// The row-panel kernel for `r` rows and `ncols` columns.
    fn instance(r: usize, ncols: usize) -> PanelFn {
        macro_rules! by_vectors {
            ($r:literal) => {
                match ncols.div_ceil(16) {
                    1 => panel::<$r, 1>,
                    2 => panel::<$r, 2>,
                    3 => panel::<$r, 3>,
                    _ => panel::<$r, 4>,
                }
            };
        }
        match r {
            1 => by_vectors!(1),
            2 => by_vectors!(2),
            3 => by_vectors!(3),
            4 => by_vectors!(4),
            5 => by_vectors!(5),
            6 => by_vectors!(6),
            7 => by_vectors!(7),
            _ => by_vectors!(8),
        }
    }

    /// `C[i..i+R][j..j+ncols] (+)= Σ_{q<kl} A(i+r, k0+q)·B[k0+q][j..]` with
    /// `R` rows and `V` column vectors (the last masked to `ncols`);
    /// `add` loads C first. `prefetch` is `(B row, rows)` of rows to
    /// bring into L2, its row `q` (`q < rows`) at step `q`.
    ///
    /// # Safety
    /// AVX-512F; the rows, columns and depth exist, `ncols ≤ 16·V`.
    #[target_feature(enable = "avx512f")]
    unsafe fn panel<const R: usize, const V: usize>(
        p: Product,
        (i, j): (usize, usize),
        (k0, kl): (usize, usize),
        ncols: usize,
        add: bool,
        prefetch: Option<(*const f32, usize)>,
    ) {
        let masks: [__mmask16; V] = std::array::from_fn(|v| lanes(ncols.saturating_sub(16 * v)));
        // SAFETY: the tile's first elements (the caller's promise).
        let (a, b, c) = unsafe {
            (
                p.a.add(i * p.sa.row + k0 * p.sa.col),
                p.b.add(k0 * p.sb.row + j),
                p.c.add(i * p.ldc + j),
            )
        };
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        if add {
            for (r, row) in acc.iter_mut().enumerate() {
                for (v, x) in row.iter_mut().enumerate() {
                    // SAFETY: row r of the tile, its valid columns.
                    *x = unsafe { _mm512_maskz_loadu_ps(masks[v], c.add(r * p.ldc + 16 * v)) };
                }
            }
        }
        for q in 0..kl {
            // SAFETY: depth q < kl of B's row and A's column; masked
            // past ncols.
            unsafe {
                let bq = b.add(q * p.sb.row);
                let bv: [__m512; V] =
                    std::array::from_fn(|v| _mm512_maskz_loadu_ps(masks[v], bq.add(16 * v)));
                if let Some((next, rows)) = prefetch.filter(|&(_, rows)| q < rows) {
                    let _ = rows;
                    for v in 0..V {
                        let at = next.wrapping_add(q * p.sb.row + 16 * v);
                        _mm_prefetch::<_MM_HINT_T1>(at as *const i8);
                    }
                }
                let aq = a.add(q * p.sa.col);
                for (r, row) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*aq.add(r * p.sa.row));
                    for (x, bx) in row.iter_mut().zip(&bv) {
                        *x = _mm512_fmadd_ps(av, *bx, *x);
                    }
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                // SAFETY: as the loads above.
                unsafe { _mm512_mask_storeu_ps(c.add(r * p.ldc + 16 * v), masks[v], *x) };
            }
        }
    }
}

#[cfg(test)]
mod tests;
