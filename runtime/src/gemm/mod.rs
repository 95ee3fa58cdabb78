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
//! [`packed`] is the project's own GEMM: an AVX-512 micro-kernel
//! ([`kernel_avx512`]) over panels, with the weight operand packed once by
//! a plan's prepare step. [`conv`] drives the same micro-kernel as an
//! implicit-GEMM convolution: A read straight from an NHWC input.
//!
//! [`cases`] and [`sgemm_naive`] are the shared test cases and reference
//! used by every GEMM path (this one, the packed one and the Cranelift
//! tile of the compiler), so all are checked on exactly the same products.

pub mod conv;
pub mod gemv;
pub mod kernel_avx512;
pub mod packed;
pub mod skinny;
pub mod thin;
pub mod wgrad;

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

/// The machine signature of a GEMM micro-kernel, `fn(k, a, b, c, ldc_bytes)`
/// (all `i64`): `C[mr×nr] += A·B` with A packed `[k][mr]`, B packed
/// `[k][nr]` and C rows `ldc_bytes` apart. The compiler JIT-compiles it
/// (Cranelift f32x4 register tile); [`tile_sgemm_unchecked`] drives it.
pub type TileFn = unsafe extern "C" fn(i64, i64, i64, i64, i64);

/// A compiled GEMM micro-kernel and its tile shape.
#[derive(Debug, Clone, Copy)]
pub struct Tile {
    /// The micro-kernel.
    pub code: TileFn,
    /// Rows of its C tile.
    pub mr: usize,
    /// Columns of its C tile.
    pub nr: usize,
}

/// Which GEMM a contraction runs.
#[derive(Debug, Clone, Copy)]
pub enum Gemm {
    /// [`sgemm_unchecked`] (the `gemm` crate).
    Native,
    /// [`tile_sgemm_unchecked`] over a JIT-compiled micro-kernel.
    Tile(Tile),
    /// [`packed::gemm`] (the AVX-512 micro-kernel), with the operand the
    /// value names already in its panel format.
    Packed(packed::Prepacked),
    /// [`conv::gemm`]: A is the implicit matrix of an NHWC convolution
    /// window over the A operand's buffer (the whole batch, `m =
    /// N·OH·OW`), B pre-packed.
    Implicit(conv::ConvGeom),
    /// [`gemv::gemv`]: a `linear` with at most [`gemv::MAX_ROWS`] rows,
    /// A row-major and B the weight `[n, k]` read in place (transposed
    /// strides), streamed once over the threads.
    Gemv,
    /// [`thin::gemm`]: a `linear` product of a training step with at most
    /// [`thin::MAX_THIN`] rows, the weight read in place (a [`thin::Form`]
    /// fits its strides).
    Thin,
}

/// K block of the tile driver: a packed B micro-panel (`KC·nr` floats)
/// stays in L1.
const KC: usize = 256;
/// M block (rows of A packed at once), rounded down to a multiple of `mr`.
const MC: usize = 120;
/// N block (columns of B packed at once), rounded down to a multiple of `nr`.
const NC: usize = 256;

/// The packing buffers of the tile driver (and of the packed driver) for
/// one thread, allocated once and reused by every call.
#[derive(Debug, Clone, Default)]
pub struct TileWork {
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
}

impl TileWork {
    /// Grows the buffers to what [`packed::gemm_part`] needs as well.
    pub fn with_packed(mut self) -> TileWork {
        let (a, b) = packed::work_lens();
        if self.a.len() < a {
            self.a.resize(a, 0.0);
        }
        if self.b.len() < b {
            self.b.resize(b, 0.0);
        }
        self
    }

    /// The A and B packing buffers for [`packed::gemm_part`] (at least
    /// [`packed::work_lens`] floats once [`TileWork::with_packed`] ran).
    fn packed_bufs(&mut self) -> (*mut f32, *mut f32) {
        (self.a.as_mut_ptr(), self.b.as_mut_ptr())
    }

    /// Buffers for tiles up to `mr×nr`.
    pub fn new(mr: usize, nr: usize) -> TileWork {
        TileWork {
            a: vec![0.0; KC * MC.max(mr)],
            b: vec![0.0; KC * NC.max(nr)],
            c: vec![0.0; mr * nr],
        }
    }

    /// Whether these buffers fit `tile`.
    pub fn fits(&self, tile: &Tile) -> bool {
        let (mc, nc) = (
            (MC / tile.mr).max(1) * tile.mr,
            (NC / tile.nr).max(1) * tile.nr,
        );
        self.a.len() >= KC * mc && self.b.len() >= KC * nc && self.c.len() >= tile.mr * tile.nr
    }
}

/// `C = alpha·A·B + beta·C` (the contract of [`sgemm_unchecked`]) on one
/// thread, driving the micro-kernel of `tile`.
///
/// Blocking: for each `NC`-column block and `KC`-deep slice, B is packed
/// into `[panel][k][nr]` (zero-padded to a multiple of `nr`); for each
/// `MC`-row block A is packed, scaled by `alpha`, into `[panel][k][mr]`
/// (zero-padded). Full tiles accumulate straight into C; partial tiles at
/// the right and bottom edges go through a zeroed `mr×nr` scratch tile, and
/// only the valid part is copied back.
///
/// # Safety
/// As [`sgemm_unchecked`]; in addition `tile.code` must be a micro-kernel of
/// shape `tile.mr×tile.nr` and `work` must fit it ([`TileWork::fits`]).
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile_sgemm_unchecked(
    tile: &Tile,
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
    work: &mut TileWork,
) {
    if m == 0 || n == 0 {
        return;
    }
    // C = beta·C first; the kernel then only accumulates.
    for i in 0..m {
        // SAFETY: row i of C spans `n` elements at i·ldc (caller's guarantee).
        let row = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), n) };
        if beta == 0.0 {
            row.fill(0.0);
        } else if beta != 1.0 {
            row.iter_mut().for_each(|x| *x *= beta);
        }
    }
    if k == 0 || alpha == 0.0 {
        return;
    }
    let (mr, nr) = (tile.mr, tile.nr);
    let mc = (MC / mr).max(1) * mr;
    let nc = (NC / nr).max(1) * nr;
    let TileWork {
        a: ap,
        b: bp,
        c: scratch,
    } = work;
    // SAFETY (reads below): every (i, p) with i < m, p < k is inside A and
    // every (p, j) with p < k, j < n inside B (caller's guarantee).
    let at = |i: usize, p: usize| unsafe { *a.add(i * sa.row + p * sa.col) };
    let bt = |p: usize, j: usize| unsafe { *b.add(p * sb.row + j * sb.col) };
    for jc in (0..n).step_by(nc) {
        let nb = nc.min(n - jc);
        let npan = nb.div_ceil(nr);
        for pc in (0..k).step_by(KC) {
            let kb = KC.min(k - pc);
            for jp in 0..npan {
                let panel = &mut bp[jp * kb * nr..(jp + 1) * kb * nr];
                let j0 = jc + jp * nr;
                if sb.col == 1 && jp * nr + nr <= nb {
                    // A full panel of contiguous rows: copy nr at a time.
                    for (p, dst) in panel.chunks_exact_mut(nr).enumerate() {
                        // SAFETY: row pc+p, columns j0..j0+nr ≤ n of B.
                        let src = unsafe {
                            std::slice::from_raw_parts(b.add((pc + p) * sb.row + j0), nr)
                        };
                        // (An element loop: LLVM vectorizes it; a short
                        // `copy_from_slice` becomes a memmove call.)
                        for (d, &v) in dst.iter_mut().zip(src) {
                            *d = v;
                        }
                    }
                    continue;
                }
                for p in 0..kb {
                    for jj in 0..nr {
                        let j = jp * nr + jj;
                        panel[p * nr + jj] = if j < nb { bt(pc + p, jc + j) } else { 0.0 };
                    }
                }
            }
            for ic in (0..m).step_by(mc) {
                let mb = mc.min(m - ic);
                let mpan = mb.div_ceil(mr);
                for ip in 0..mpan {
                    let panel = &mut ap[ip * kb * mr..(ip + 1) * kb * mr];
                    if sa.col == 1 && ip * mr + mr <= mb {
                        // A full panel of contiguous rows: read along k.
                        for ii in 0..mr {
                            let i = ic + ip * mr + ii;
                            // SAFETY: row i < m, columns pc..pc+kb ≤ k of A.
                            let src =
                                unsafe { std::slice::from_raw_parts(a.add(i * sa.row + pc), kb) };
                            for (p, &v) in src.iter().enumerate() {
                                panel[p * mr + ii] = alpha * v;
                            }
                        }
                        continue;
                    }
                    for p in 0..kb {
                        for ii in 0..mr {
                            let i = ip * mr + ii;
                            panel[p * mr + ii] = if i < mb {
                                alpha * at(ic + i, pc + p)
                            } else {
                                0.0
                            };
                        }
                    }
                }
                for jp in 0..npan {
                    let bpan = bp[jp * kb * nr..].as_ptr();
                    let j0 = jc + jp * nr;
                    let nv = nr.min(n - j0);
                    for ip in 0..mpan {
                        let apan = ap[ip * kb * mr..].as_ptr();
                        let i0 = ic + ip * mr;
                        let mv = mr.min(m - i0);
                        if mv == mr && nv == nr {
                            // SAFETY: the kernel reads kb·mr floats of the A
                            // panel and kb·nr of the B panel (inside the
                            // packed buffers) and mr rows of nr floats of C
                            // at rows i0.. < m, columns j0..j0+nr ≤ n.
                            unsafe {
                                (tile.code)(
                                    kb as i64,
                                    apan as i64,
                                    bpan as i64,
                                    c.add(i0 * ldc + j0) as i64,
                                    (ldc * 4) as i64,
                                )
                            };
                        } else {
                            scratch[..mr * nr].fill(0.0);
                            for i in 0..mv {
                                // SAFETY: row i0+i < m, columns j0..j0+nv ≤ n.
                                let row = unsafe {
                                    std::slice::from_raw_parts(c.add((i0 + i) * ldc + j0), nv)
                                };
                                scratch[i * nr..i * nr + nv].copy_from_slice(row);
                            }
                            // SAFETY: as above for the panels; the C tile is
                            // `scratch`, mr·nr floats with row stride nr.
                            unsafe {
                                (tile.code)(
                                    kb as i64,
                                    apan as i64,
                                    bpan as i64,
                                    scratch.as_mut_ptr() as i64,
                                    (nr * 4) as i64,
                                )
                            };
                            for i in 0..mv {
                                // SAFETY: as for the copy in.
                                let row = unsafe {
                                    std::slice::from_raw_parts_mut(c.add((i0 + i) * ldc + j0), nv)
                                };
                                row.copy_from_slice(&scratch[i * nr..i * nr + nv]);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// How a product is split over `parts` threads: along its longer side, by
/// blocks of rows (a multiple of `mr`) or of columns (a multiple of `nr`),
/// so each part packs only its share of the larger operand. Returns the
/// `(rows, cols)` ranges of part `t`.
pub fn split_product(
    m: usize,
    n: usize,
    mr: usize,
    nr: usize,
    parts: usize,
    t: usize,
) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
    let cut = |len: usize, unit: usize| {
        let units = len.div_ceil(unit);
        let (lo, hi) = (units * t / parts, units * (t + 1) / parts);
        (lo * unit).min(len)..(hi * unit).min(len)
    };
    if m >= n {
        (cut(m, mr), 0..n)
    } else {
        (0..m, cut(n, nr))
    }
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
/// Deterministic values in `[-1, 1)` (an xorshift stream per seed), the
/// operands of the GEMM tests.
pub(crate) fn test_data(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
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
