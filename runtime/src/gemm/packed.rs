//! The packed GEMM: `C = alpha·A·B + beta·C` over micro-panels, where the
//! constant operand (a weight) may come **pre-packed** — laid out once, by
//! a plan's prepare step ([`PackPanels`]), in the exact panel format the
//! micro-kernel reads — so a contraction packs only its other operand per
//! call.
//!
//! Pre-packed formats, K-block-major so the driver reads them front to
//! back (zero-padded to whole panels; the last K block padded to `KC`):
//! - A (`m×k`): `[⌈k/KC⌉][⌈m/MR⌉][KC][MR]` ([`packed_a_len`]): K block
//!   `b`, panel `ip` holds rows `ip·MR..`, depth `b·KC..`, as `[kb][MR]`.
//! - B (`k×n`): `[⌈k/KC⌉][⌈n/NR⌉][KC][NR]` ([`packed_b_len`]).
//!
//! Any split of the rows (columns) at panel boundaries reads the same
//! buffer. Operands packed per call use `[panel][kb][MR]` (`[kb][NR]`)
//! blocks in the thread's work buffers.
//!
//! Blocking ([`gemm_part`]): `NC` columns × `KC` depth of B are packed
//! (or addressed, when pre-packed) as one block that stays in L2; for each
//! `MC`-row block A is packed (or addressed); then every B micro-panel
//! (`KC·NR` floats, in L1) runs against every A micro-panel of the block
//! (streamed from L2).
//! The micro-kernel is the AVX-512 one ([`super::kernel_avx512`]) when the
//! CPU has AVX-512F, else a portable one with the same contract.

use super::kernel_avx512::{self as avx, MR, NR};
use super::{split_product, Strides, TileWork};
use crate::plan::RowKernel;
use rayon::prelude::*;
use std::ops::Range;

/// K block: a B micro-panel (`KC·NR` floats, 24 KiB) stays in L1.
pub const KC: usize = 128;
/// M block (rows of A packed per call at once), a multiple of `MR`.
pub const MC: usize = (384 / MR) * MR;
/// N block: a packed `KC×NC` B block (480 KiB) stays in L2.
pub const NC: usize = (512 / NR) * NR;

/// The largest pre-packed B (bytes) that the split over threads gives
/// whole to every part ([`share_of`]): half a core's L2, so the weight
/// stays there from call to call next to the part's rows of A and C.
pub const B_SHARED: usize = 1 << 20;

/// The rows and columns of C that part `t` of `parts` computes when a
/// product is split over threads. A pre-packed B of at most
/// [`B_SHARED`] bytes is read whole by every part and the rows of C are
/// split (each part then owns whole rows: the caller can finish them, an
/// epilogue while they are in cache, and the parts are as even as the
/// `MR`-row panels allow); otherwise C is cut along its longer side at
/// panel boundaries ([`split_product`]).
pub fn share_of(
    (m, n, k): (usize, usize, usize),
    b_packed: bool,
    (t, parts): (usize, usize),
) -> (Range<usize>, Range<usize>) {
    if whole_rows((m, n, k), b_packed, parts) {
        let panels = m.div_ceil(MR);
        let cut = |t: usize| (panels * t / parts * MR).min(m);
        return (cut(t)..cut(t + 1), 0..n);
    }
    split_product(m, n, MR, NR, parts, t)
}

/// Whether every part of a product split over `parts` threads
/// ([`share_of`]) computes whole rows of C (all `n` columns): one part, or
/// a pre-packed B that fits [`B_SHARED`] with at least a panel of rows per
/// part.
pub fn whole_rows((m, n, k): (usize, usize, usize), b_packed: bool, parts: usize) -> bool {
    parts <= 1 || b_packed && m >= parts * MR && packed_b_len(k, n) * 4 <= B_SHARED
}

/// Which operand of a packed-GEMM contraction comes pre-packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prepacked {
    /// Neither: both are packed per call.
    Neither,
    /// A, in the `[⌈m/MR⌉][k][MR]` format.
    A,
    /// B, in the `[⌈n/NR⌉][k][NR]` format.
    B,
}

/// Floats of a pre-packed `m×k` A.
pub fn packed_a_len(m: usize, k: usize) -> usize {
    k.div_ceil(KC) * m.div_ceil(MR) * MR * KC
}

/// Floats of a pre-packed `k×n` B.
pub fn packed_b_len(k: usize, n: usize) -> usize {
    k.div_ceil(KC) * n.div_ceil(NR) * NR * KC
}

/// One GEMM operand as the driver reads it.
#[derive(Debug, Clone, Copy)]
pub enum Side {
    /// A plain matrix read through strides; packed per call.
    Raw(*const f32, Strides),
    /// The whole operand already in its panel format.
    Packed(*const f32),
}

/// Buffer sizes the driver needs per thread: (A block, B block) floats.
pub fn work_lens() -> (usize, usize) {
    (MC * KC, KC * NC)
}

/// Packs rows `rows` × depth `ks` of `a` (an `m×k` matrix) into
/// consecutive `[kb][MR]` panels at `dst`, scaled by `alpha`, zero-padding
/// the last panel's missing rows.
///
/// # Safety
/// Every `(i, p)` for `i` in `rows`, `p` in `ks` is readable through
/// `a`/`sa`; `dst` holds `⌈rows/MR⌉·MR·kb` floats.
unsafe fn pack_a(
    a: *const f32,
    sa: Strides,
    rows: Range<usize>,
    ks: Range<usize>,
    alpha: f32,
    dst: *mut f32,
) {
    let kb = ks.len();
    for (ip, i0) in rows.clone().step_by(MR).enumerate() {
        // SAFETY: panel ip of the destination (caller's size).
        let panel = unsafe { std::slice::from_raw_parts_mut(dst.add(ip * MR * kb), MR * kb) };
        let mv = MR.min(rows.end - i0);
        #[cfg(target_arch = "x86_64")]
        if mv == MR && sa.col == 1 && avx::available() {
            // SAFETY: the CPU has AVX (implied by AVX-512F); rows i0..i0+8
            // and columns ks of A, and the panel (MR·kb floats).
            unsafe {
                avx::pack_a8_rows(
                    a.add(i0 * sa.row + ks.start),
                    sa.row,
                    kb,
                    alpha,
                    panel.as_mut_ptr(),
                )
            };
            continue;
        }
        if mv == MR && sa.row == 1 {
            // A read transposed: each depth's MR rows are contiguous.
            for (p, dst) in panel.chunks_exact_mut(MR).enumerate() {
                // SAFETY: rows i0..i0+MR of column ks.start+p are inside A.
                let src =
                    unsafe { std::slice::from_raw_parts(a.add(i0 + (ks.start + p) * sa.col), MR) };
                for (d, &v) in dst.iter_mut().zip(src) {
                    *d = alpha * v;
                }
            }
            continue;
        }
        if mv < MR {
            panel.fill(0.0);
        }
        for ii in 0..mv {
            // SAFETY: row i0+ii and columns ks are inside A.
            let row = unsafe { a.add((i0 + ii) * sa.row + ks.start * sa.col) };
            for p in 0..kb {
                // SAFETY: as above.
                panel[p * MR + ii] = alpha * unsafe { *row.add(p * sa.col) };
            }
        }
    }
}

/// Packs depth `ks` × columns `cols` of `b` (a `k×n` matrix) into
/// consecutive `[kb][NR]` panels at `dst`, scaled by `alpha`,
/// zero-padding the last panel's missing columns.
///
/// # Safety
/// Every `(p, j)` for `p` in `ks`, `j` in `cols` is readable through
/// `b`/`sb`; `dst` holds `⌈cols/NR⌉·NR·kb` floats.
unsafe fn pack_b(
    b: *const f32,
    sb: Strides,
    ks: Range<usize>,
    cols: Range<usize>,
    alpha: f32,
    dst: *mut f32,
) {
    let kb = ks.len();
    for (jp, j0) in cols.clone().step_by(NR).enumerate() {
        // SAFETY: panel jp of the destination (caller's size).
        let panel = unsafe { std::slice::from_raw_parts_mut(dst.add(jp * NR * kb), NR * kb) };
        let nv = NR.min(cols.end - j0);
        if sb.col == 1 {
            for (p, out) in panel.chunks_exact_mut(NR).enumerate() {
                // SAFETY: row ks.start+p, columns j0..j0+nv of B.
                let src =
                    unsafe { std::slice::from_raw_parts(b.add((ks.start + p) * sb.row + j0), nv) };
                for (d, &v) in out.iter_mut().zip(src) {
                    *d = alpha * v;
                }
                out[nv..].fill(0.0);
            }
        } else {
            if nv < NR {
                panel.fill(0.0);
            }
            for jj in 0..nv {
                // SAFETY: column j0+jj and rows ks of B.
                let col = unsafe { b.add((j0 + jj) * sb.col + ks.start * sb.row) };
                for p in 0..kb {
                    // SAFETY: as above.
                    panel[p * NR + jj] = alpha * unsafe { *col.add(p * sb.row) };
                }
            }
        }
    }
}

/// The portable micro-kernel, for CPUs without AVX-512F: the contract
/// of an [`avx::KernelFn`] for `mv` rows, with A read through strides,
/// `A(i, p) = a[i·a_row + p·a_step]` (a packed panel: `a_row = 1`,
/// `a_step = MR`; row-major: `a_row = lda`, `a_step = 1`).
///
/// # Safety
/// As [`avx::KernelFn`], A's `mv×kc` elements readable through the
/// strides.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn portable_kernel(
    mv: usize,
    kc: usize,
    a: *const f32,
    a_row: usize,
    a_step: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    ncols: usize,
    load_c: bool,
) {
    for i in 0..mv {
        let mut acc = [0.0f32; NR];
        for p in 0..kc {
            // SAFETY: A(i, p) is readable (caller's guarantee); row p of
            // the B panel holds NR floats.
            let (x, br) = unsafe {
                (
                    *a.add(i * a_row + p * a_step),
                    std::slice::from_raw_parts(b.add(p * NR), NR),
                )
            };
            for (s, &y) in acc.iter_mut().zip(br) {
                *s += x * y;
            }
        }
        // SAFETY: row i < mv of the C tile holds ncols valid floats.
        let dst = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), ncols) };
        for (d, &s) in dst.iter_mut().zip(&acc) {
            *d = if load_c { *d + s } else { s };
        }
    }
}

/// Runs the micro-kernel for an `mv×ncols` tile; `lda > 0` reads A
/// row-major in place (AVX-512 only), `lda == 0` from a packed panel.
///
/// # Safety
/// As [`avx::KernelFn`].
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn tile(
    wide: bool,
    mv: usize,
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    ncols: usize,
    load_c: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if wide {
        // SAFETY: `wide` means the CPU has AVX-512F; the rest is forwarded.
        unsafe { avx::instance(mv, ncols, lda > 0)(kc, a, lda, b, c, ldc, ncols, load_c) };
        return;
    }
    let _ = (wide, lda);
    // SAFETY: forwarded (without AVX-512F, A is always a packed panel).
    unsafe { portable_kernel(mv, kc, a, 1, MR, b, c, ldc, ncols, load_c) }
}

/// Rows `rows` × columns `cols` of `C = alpha·A·B + beta·C` on the calling
/// thread, for the full product `m×n×k` (alpha scales a [`Side::Raw`]
/// operand as it is packed; with both sides pre-packed it must be 1).
///
/// # Safety
/// A (`m×k`) and B (`k×n`) are readable as their [`Side`] says (a
/// pre-packed A is [`packed_a_len`] floats, B [`packed_b_len`]); a
/// pre-packed A needs `rows.start` a multiple of `MR`, a pre-packed B
/// `cols.start` a multiple of `NR`; C rows `rows` are `ldc` apart with
/// columns `cols` writable and not overlapping A or B; `work` has at least
/// [`work_lens`] floats in its A and B buffers.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_part(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: Side,
    b: Side,
    beta: f32,
    c: *mut f32,
    ldc: usize,
    rows: Range<usize>,
    cols: Range<usize>,
    work: &mut TileWork,
) {
    // SAFETY: forwarded; `wide` only where the CPU has AVX-512F.
    unsafe {
        part(
            avx::available(),
            m,
            n,
            k,
            alpha,
            a,
            b,
            beta,
            c,
            ldc,
            rows,
            cols,
            work,
        )
    }
}

/// [`gemm_part`] on the AVX-512 micro-kernels (`wide`, the CPU has
/// AVX-512F) or the portable one.
///
/// # Safety
/// As [`gemm_part`]; `wide` only if [`avx::available`].
#[allow(clippy::too_many_arguments)]
unsafe fn part(
    wide: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: Side,
    b: Side,
    beta: f32,
    c: *mut f32,
    ldc: usize,
    rows: Range<usize>,
    cols: Range<usize>,
    work: &mut TileWork,
) {
    if rows.is_empty() || cols.is_empty() {
        return;
    }
    if k == 0 || alpha == 0.0 || beta != 0.0 && beta != 1.0 {
        for i in rows.clone() {
            // SAFETY: row i, columns `cols` of C (caller's guarantee).
            let row =
                unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc + cols.start), cols.len()) };
            if beta == 0.0 {
                row.fill(0.0);
            } else {
                row.iter_mut().for_each(|x| *x *= beta);
            }
        }
        if k == 0 || alpha == 0.0 {
            return;
        }
    }
    // From here C either starts at zero (beta = 0) or is added to.
    let keep_c = beta != 0.0;
    let (abuf, bbuf) = work.packed_bufs();
    for jc in cols.clone().step_by(NC) {
        let nb = NC.min(cols.end - jc);
        for pc in (0..k).step_by(KC) {
            let kb = KC.min(k - pc);
            let load_c = keep_c || pc > 0;
            let bpanels: *const f32 = match b {
                Side::Raw(p, sb) => {
                    // SAFETY: the block is inside B; the buffer holds KC·NC.
                    unsafe { pack_b(p, sb, pc..pc + kb, jc..jc + nb, alpha, bbuf) };
                    bbuf
                }
                // SAFETY: K block pc/KC, panel jc/NR, inside the packed B.
                Side::Packed(p) => unsafe { p.add(pc * n.div_ceil(NR) * NR + (jc / NR) * NR * KC) },
            };
            let bstride = match b {
                Side::Raw(..) => NR * kb,
                Side::Packed(_) => NR * KC,
            };
            let a_alpha = if matches!(b, Side::Raw(..)) {
                1.0
            } else {
                alpha
            };
            for ic in rows.clone().step_by(MC) {
                let mb = MC.min(rows.end - ic);
                // A row-major A is read in place by the AVX-512 kernel
                // (lda > 0) when it needs no scaling.
                let direct = match a {
                    Side::Raw(_, sa) => wide && sa.col == 1 && a_alpha == 1.0 && sa.row > 0,
                    Side::Packed(_) => false,
                };
                let lda = match a {
                    Side::Raw(_, sa) if direct => sa.row,
                    _ => 0,
                };
                let (apanels, astride): (*const f32, usize) = match a {
                    // SAFETY: row ic, column pc of A.
                    Side::Raw(p, sa) if direct => (unsafe { p.add(ic * sa.row + pc) }, MR * sa.row),
                    Side::Raw(p, sa) => {
                        // SAFETY: the block is inside A; the buffer holds MC·KC.
                        unsafe { pack_a(p, sa, ic..ic + mb, pc..pc + kb, a_alpha, abuf) };
                        (abuf, MR * kb)
                    }
                    // SAFETY: K block pc/KC, panel ic/MR, inside the packed A.
                    Side::Packed(p) => (
                        unsafe { p.add(pc * m.div_ceil(MR) * MR + (ic / MR) * MR * KC) },
                        MR * KC,
                    ),
                };
                // Each B micro-panel (KC·NR floats) stays in L1 while
                // the A micro-panels of the block stream from L2.
                for (jp, j0) in (jc..jc + nb).step_by(NR).enumerate() {
                    let ncols = NR.min(jc + nb - j0);
                    // SAFETY: panel jp of the B block.
                    let bp = unsafe { bpanels.add(jp * bstride) };
                    for (ip, i0) in (ic..ic + mb).step_by(MR).enumerate() {
                        let mv = MR.min(ic + mb - i0);
                        // SAFETY: the panels hold kb steps; the C tile is
                        // rows i0..i0+mv, columns j0..j0+ncols of the part.
                        unsafe {
                            tile(
                                wide,
                                mv,
                                kb,
                                apanels.add(ip * astride),
                                lda,
                                bp,
                                c.add(i0 * ldc + j0),
                                ldc,
                                ncols,
                                load_c,
                            )
                        };
                    }
                }
            }
        }
    }
}

/// The whole `m×n` product of [`gemm_part`], split over `threads` tasks
/// of the current rayon pool ([`share_of`]) when `threads > 1`; task `t`
/// uses `works[t]`.
///
/// # Safety
/// As [`gemm_part`] for the full ranges; `works` has `threads.max(1)`
/// entries, each used by no one else during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: Side,
    b: Side,
    beta: f32,
    c: *mut f32,
    ldc: usize,
    threads: usize,
    works: *mut TileWork,
) {
    // SAFETY: forwarded.
    unsafe { gemm_then(m, n, k, alpha, a, b, beta, c, ldc, threads, works, &|_| {}) }
}

/// [`gemm`], and every task that computed whole rows of C (all `n`
/// columns: every task when [`whole_rows`] holds) then calls `done` with
/// them on its own thread, while they are still in its cache.
///
/// # Safety
/// As [`gemm`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_then(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: Side,
    b: Side,
    beta: f32,
    c: *mut f32,
    ldc: usize,
    threads: usize,
    works: *mut TileWork,
    done: &(dyn Fn(Range<usize>) + Sync),
) {
    // SAFETY: forwarded; `wide` only where the CPU has AVX-512F.
    unsafe {
        gemm_with(
            avx::available(),
            (m, n, k),
            alpha,
            (a, b),
            beta,
            (c, ldc),
            threads,
            works,
            done,
        )
    }
}

/// [`gemm_then`] on the AVX-512 micro-kernels (`wide`) or the portable
/// one.
///
/// # Safety
/// As [`gemm`]; `wide` only if [`avx::available`].
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_with(
    wide: bool,
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    (a, b): (Side, Side),
    beta: f32,
    (c, ldc): (*mut f32, usize),
    threads: usize,
    works: *mut TileWork,
    done: &(dyn Fn(Range<usize>) + Sync),
) {
    if threads <= 1 {
        // SAFETY: forwarded; works[0] is ours.
        unsafe {
            share(
                wide,
                (m, n, k),
                alpha,
                a,
                b,
                beta,
                (c, ldc),
                (0, 1),
                &mut *works,
                done,
            )
        };
        return;
    }
    // Pointers cross to the pool's threads as integers.
    let addr = |s: Side| match s {
        Side::Raw(p, st) => (p as usize, Some(st)),
        Side::Packed(p) => (p as usize, None),
    };
    let back = |(p, st): (usize, Option<Strides>)| match st {
        Some(st) => Side::Raw(p as *const f32, st),
        None => Side::Packed(p as *const f32),
    };
    let (a, b, c, works) = (addr(a), addr(b), c as usize, works as usize);
    (0..threads).into_par_iter().for_each(move |t| {
        // SAFETY: part t covers disjoint rows/columns of C at panel
        // boundaries, and works[t] is this task's alone.
        unsafe {
            share(
                wide,
                (m, n, k),
                alpha,
                back(a),
                back(b),
                beta,
                (c as *mut f32, ldc),
                (t, threads),
                &mut *(works as *mut TileWork).add(t),
                done,
            )
        }
    });
}

/// Part `t` of `parts` of the product that [`gemm_then`] splits over
/// `parts` threads ([`share_of`]), on the calling thread, calling `done`
/// as [`gemm_then`] does: for a caller with its own threads
/// (`plan/team.rs`). The same `t` always gets the same rows or columns.
///
/// # Safety
/// As [`gemm_part`] for the full ranges; `work` is used by no one else
/// during the call, and the parts run concurrently write disjoint parts
/// of C.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_share(
    m: usize,
    n: usize,
    k: usize,
    a: Side,
    b: Side,
    beta: f32,
    c: *mut f32,
    ldc: usize,
    (t, parts): (usize, usize),
    work: &mut TileWork,
    done: &(dyn Fn(Range<usize>) + Sync),
) {
    // SAFETY: forwarded; `wide` only where the CPU has AVX-512F.
    unsafe {
        share(
            avx::available(),
            (m, n, k),
            1.0,
            a,
            b,
            beta,
            (c, ldc),
            (t, parts),
            work,
            done,
        )
    }
}

/// Part `t` of `parts` of `C = alpha·A·B + beta·C` ([`gemm_share`]).
///
/// # Safety
/// As [`gemm_share`]; `wide` only if [`avx::available`].
#[allow(clippy::too_many_arguments)]
unsafe fn share(
    wide: bool,
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    a: Side,
    b: Side,
    beta: f32,
    (c, ldc): (*mut f32, usize),
    (t, parts): (usize, usize),
    work: &mut TileWork,
    done: &(dyn Fn(Range<usize>) + Sync),
) {
    let b_packed = matches!(b, Side::Packed(_));
    let (rows, cols) = share_of((m, n, k), b_packed, (t, parts));
    // SAFETY: forwarded; the split is at panel boundaries.
    unsafe {
        part(
            wide,
            m,
            n,
            k,
            alpha,
            a,
            b,
            beta,
            c,
            ldc,
            rows.clone(),
            cols.clone(),
            work,
        )
    };
    if cols == (0..n) && !rows.is_empty() {
        done(rows);
    }
}

/// `C = alpha·A·B + beta·C` through the packed driver, checked like
/// [`super::sgemm`]: `prepack` says which operand is first laid out in its
/// panel format (as a prepare step would; this allocates it), and the
/// product runs on `threads` tasks of the current rayon pool. For tests
/// and measurements; plans call [`gemm`] on buffers they own.
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
    prepack: Prepacked,
    threads: usize,
) -> Result<(), super::GemmError> {
    sgemm_with(
        avx::available(),
        m,
        n,
        k,
        alpha,
        (a, sa),
        (b, sb),
        beta,
        c,
        ldc,
        prepack,
        threads,
    )
}

/// [`sgemm`] on the AVX-512 micro-kernels (`wide`, only where the CPU has
/// AVX-512F) or the portable one.
#[allow(clippy::too_many_arguments)]
fn sgemm_with(
    wide: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    (a, sa): (&[f32], Strides),
    (b, sb): (&[f32], Strides),
    beta: f32,
    c: &mut [f32],
    ldc: usize,
    prepack: Prepacked,
    threads: usize,
) -> Result<(), super::GemmError> {
    let wide = wide && avx::available();
    super::check_operands(m, n, k, a.len(), sa, b.len(), sb, c.len(), ldc)?;
    let threads = threads.max(1);
    let mut works: Vec<TileWork> = (0..threads)
        .map(|_| TileWork::default().with_packed())
        .collect();
    let pack = |side, dim, strides, src: &[f32]| -> Result<Vec<f32>, super::GemmError> {
        let p = PackPanels {
            side,
            dim,
            k,
            strides,
            group_stride: 0,
            groups: 1,
        };
        let mut out = vec![0.0; p.group_len()];
        if p.row_len() > 0 {
            p.rows(0, &[src], &mut out)
                .map_err(|_| super::GemmError::Overflow { m, n, k })?;
        }
        Ok(out)
    };
    // Alpha goes to the operand packed per call; with A pre-packed and
    // alpha ≠ 1, B (packed per call) takes it.
    let (pa, pb);
    let (sa_, sb_) = match prepack {
        Prepacked::Neither => (Side::Raw(a.as_ptr(), sa), Side::Raw(b.as_ptr(), sb)),
        Prepacked::A => {
            pa = pack(Prepacked::A, m, sa, a)?;
            (Side::Packed(pa.as_ptr()), Side::Raw(b.as_ptr(), sb))
        }
        Prepacked::B => {
            pb = pack(Prepacked::B, n, sb, b)?;
            (Side::Raw(a.as_ptr(), sa), Side::Packed(pb.as_ptr()))
        }
    };
    // SAFETY: `check_operands` proved A, B and C cover their strides; the
    // packed copies are `packed_*_len` floats; C is a unique borrow; one
    // work buffer per task. `gemm` splits at panel boundaries.
    unsafe {
        gemm_with(
            wide,
            (m, n, k),
            alpha,
            (sa_, sb_),
            beta,
            (c.as_mut_ptr(), ldc),
            threads,
            works.as_mut_ptr(),
            &|_| {},
        )
    };
    Ok(())
}

/// A prepare-step kernel writing a weight in its pre-packed format: output
/// row `r` is K block `r % blocks` of group `r / blocks` (every panel of
/// that block, `KC` deep), where a group's source matrix starts
/// `group_stride` elements after the previous one.
#[derive(Debug, Clone, Copy)]
pub struct PackPanels {
    /// The operand's role: [`Prepacked::A`] packs `dim×k` A panels,
    /// [`Prepacked::B`] `k×dim` B panels.
    pub side: Prepacked,
    /// Rows of A (columns of B) per group.
    pub dim: usize,
    /// The contracted size.
    pub k: usize,
    /// Strides of the source matrix (as A `dim×k` or as B `k×dim`).
    pub strides: Strides,
    /// Distance between groups in the source.
    pub group_stride: usize,
    /// Groups.
    pub groups: usize,
}

impl PackPanels {
    /// K blocks per group (output rows per group).
    pub fn blocks(&self) -> usize {
        self.k.div_ceil(KC)
    }

    /// Floats of one K block of every panel (an output row).
    pub fn row_len(&self) -> usize {
        self.dim.div_ceil(self.width()) * self.width() * KC
    }

    /// Floats of one group's packed matrix.
    pub fn group_len(&self) -> usize {
        self.blocks() * self.row_len()
    }

    fn width(&self) -> usize {
        if self.side == Prepacked::B {
            NR
        } else {
            MR
        }
    }
}

impl RowKernel for PackPanels {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let src = inputs.first().copied().unwrap_or(&[]);
        let (rows, cols) = match self.side {
            Prepacked::B => (self.k, self.dim),
            _ => (self.dim, self.k),
        };
        let need = self
            .strides
            .span(rows, cols)
            .and_then(|s| s.checked_add(self.groups.saturating_sub(1) * self.group_stride));
        match need {
            Some(need) if need <= src.len() => {}
            _ => {
                return Err(format!(
                    "packing a {rows}×{cols} GEMM weight ({} groups): the weight holds {} elements, too few",
                    self.groups,
                    src.len()
                ))
            }
        }
        let (w, blocks, row_len) = (self.width(), self.blocks(), self.row_len());
        for (r, dst) in out.chunks_exact_mut(row_len).enumerate() {
            let (g, blk) = ((first + r) / blocks, (first + r) % blocks);
            let base = src[g * self.group_stride..].as_ptr();
            let ks = blk * KC..(blk * KC + KC).min(self.k);
            // The tail of a short last block stays zero (never read).
            dst.fill(0.0);
            for (panel, lo) in (0..self.dim).step_by(w).enumerate() {
                let span = lo..(lo + w).min(self.dim);
                let at = dst[panel * w * KC..].as_mut_ptr();
                // SAFETY: `need` above proved every element of every
                // group's matrix lies in `src`; `at` has w·KC floats.
                unsafe {
                    match self.side {
                        Prepacked::B => pack_b(base, self.strides, ks.clone(), span, 1.0, at),
                        _ => pack_a(base, self.strides, span, ks.clone(), 1.0, at),
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
