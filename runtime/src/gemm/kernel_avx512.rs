//! The AVX-512 SGEMM micro-kernel of the packed GEMM ([`super::packed`]):
//! `C[mv×(16·nv)] (+)= A·B` for one micro-panel pair, with the accumulator
//! tile in zmm registers.
//!
//! A panels are packed `[k][MR]` (one broadcast per row and k step), B
//! panels `[k][NR]` with `NR = 16·NV` (one zmm load per 16 columns and k
//! step). The full tile is `MR×NR`; edge tiles run an instance with fewer
//! rows (`mv < MR`) and fewer column vectors (`nv < NV`), and the last
//! column vector is stored (and loaded) through a mask, so an edge never
//! writes past the valid part of C and never goes through a scratch tile.
//!
//! Every instance is `#[target_feature(enable = "avx512f")]`; callers
//! check [`available`] first.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Rows of the full accumulator tile (the A panel width).
pub const MR: usize = 8;
/// Column vectors (16 floats each) of the full tile.
pub const NV: usize = 3;
/// Columns of the full tile (the B panel width).
pub const NR: usize = 16 * NV;

/// A micro-kernel instance: `(kc, a, lda, b, c, ldc, ncols, load_c)`:
/// `C[mv×ncols] = (load_c ? C : 0) + Σ_p A(i, p)·B[p][j]` over `kc` steps,
/// B panel rows `NR` apart, C rows `ldc` apart; `ncols` is at most `16·nv`
/// of the instance. A is a packed panel (`A(i, p) = a[p·MR + i]`, `lda`
/// unused) or, for a raw instance, row-major (`A(i, p) = a[i·lda + p]`,
/// read in place: no packing pass).
pub type KernelFn = unsafe fn(usize, *const f32, usize, *const f32, *mut f32, usize, usize, bool);

/// Whether the CPU runs the AVX-512 kernels.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The instance for `mv` rows (`1..=MR`) and `ncols` columns
/// (`1..=NR`): `mv` accumulator rows and `ceil(ncols/16)` column vectors;
/// `raw` reads A row-major in place instead of from a packed panel.
#[cfg(target_arch = "x86_64")]
pub fn instance(mv: usize, ncols: usize, raw: bool) -> KernelFn {
    let (i, j) = (mv.clamp(1, MR) - 1, ncols.div_ceil(16).clamp(1, NV) - 1);
    if raw {
        TABLE_RAW[i][j]
    } else {
        TABLE[i][j]
    }
}

/// Rows of the tallest raw-A tile, for products at most [`NARROW`]
/// columns wide: `14×2` accumulators, two B vectors and the broadcast
/// fill the 32 zmm registers.
pub const MR_TALL: usize = 14;
/// The widest product (columns) the tall tiles serve.
pub const NARROW: usize = 32;

/// The raw-A instance for `mv` rows (`1..=MR_TALL`) and `ncols ≤ NARROW`
/// columns (a tall tile: A read row-major in place).
#[cfg(target_arch = "x86_64")]
pub fn tall_instance(mv: usize, ncols: usize) -> KernelFn {
    TABLE_TALL[mv.clamp(1, MR_TALL) - 1][ncols.div_ceil(16).clamp(1, 2) - 1]
}

/// The rows of a raw-A tile for a product `n` columns wide: [`MR_TALL`]
/// when the tall tiles cover it, else [`MR`].
pub fn raw_rows(n: usize) -> usize {
    if n <= NARROW {
        MR_TALL
    } else {
        MR
    }
}

#[cfg(target_arch = "x86_64")]
macro_rules! tall {
    ($m:literal) => {
        [kernel::<$m, 1, true>, kernel::<$m, 2, true>]
    };
}

/// The tall raw-A instances, by `[rows − 1][column vectors − 1]`.
#[cfg(target_arch = "x86_64")]
static TABLE_TALL: [[KernelFn; 2]; MR_TALL] = [
    tall!(1),
    tall!(2),
    tall!(3),
    tall!(4),
    tall!(5),
    tall!(6),
    tall!(7),
    tall!(8),
    tall!(9),
    tall!(10),
    tall!(11),
    tall!(12),
    tall!(13),
    tall!(14),
];

#[cfg(target_arch = "x86_64")]
macro_rules! row {
    ($m:literal, $raw:literal) => {
        [
            kernel::<$m, 1, $raw>,
            kernel::<$m, 2, $raw>,
            kernel::<$m, 3, $raw>,
        ]
    };
}

/// Every packed-A instance, by `[rows − 1][column vectors − 1]`.
#[cfg(target_arch = "x86_64")]
static TABLE: [[KernelFn; NV]; MR] = [
    row!(1, false),
    row!(2, false),
    row!(3, false),
    row!(4, false),
    row!(5, false),
    row!(6, false),
    row!(7, false),
    row!(8, false),
];

/// Every raw-A instance, by `[rows − 1][column vectors − 1]`.
#[cfg(target_arch = "x86_64")]
static TABLE_RAW: [[KernelFn; NV]; MR] = [
    row!(1, true),
    row!(2, true),
    row!(3, true),
    row!(4, true),
    row!(5, true),
    row!(6, true),
    row!(7, true),
    row!(8, true),
];

/// The micro-kernel with `M` rows and `V` column vectors, A packed or
/// (`RAW`) row-major (see [`KernelFn`]).
///
/// # Safety
/// The CPU has AVX-512F; `a` holds `kc·MR` floats (raw: rows `0..M`,
/// `lda` apart, hold `kc` floats), `b` `kc·NR`; C rows `0..M` at
/// `c + i·ldc` hold `ncols ≤ 16·V` valid floats each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel<const M: usize, const V: usize, const RAW: bool>(
    kc: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    ncols: usize,
    load_c: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); V]; M];
    if RAW {
        let mut b = b;
        for p in 0..kc {
            let mut bv = [_mm512_setzero_ps(); V];
            for (v, x) in bv.iter_mut().enumerate() {
                // SAFETY: row p of the B panel holds NR ≥ 16·V floats.
                *x = unsafe { _mm512_loadu_ps(b.add(16 * v)) };
            }
            for (i, row) in acc.iter_mut().enumerate() {
                // SAFETY: row i < M of A holds kc floats.
                let av = _mm512_set1_ps(unsafe { *a.add(i * lda + p) });
                for (x, &bx) in row.iter_mut().zip(&bv) {
                    *x = _mm512_fmadd_ps(av, bx, *x);
                }
            }
            // The next B panel follows this one in memory (a pre-packed
            // weight's next panel of the K block, or a narrow product's
            // next K block): fetch it into L2 while this one computes. A
            // linear layer with few rows (vggish's embeddings at batch 32)
            // streams its weight from DRAM once, and the hardware
            // prefetcher stops at every 4 KiB page.
            for v in 0..V {
                _mm_prefetch::<_MM_HINT_T1>(b.wrapping_add(NR * kc + 16 * v) as *const i8);
            }
            // SAFETY: one past the last step at most.
            b = unsafe { b.add(NR) };
        }
        // SAFETY: forwarded.
        unsafe { store::<M, V>(&acc, c, ldc, ncols, load_c) };
        return;
    }
    let (mut a, mut b) = (a, b);
    for _ in 0..kc {
        let mut bv = [_mm512_setzero_ps(); V];
        for (v, x) in bv.iter_mut().enumerate() {
            // SAFETY: row p of the B panel holds NR ≥ 16·V floats.
            *x = unsafe { _mm512_loadu_ps(b.add(16 * v)) };
        }
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: row p of the A panel holds MR ≥ M floats.
            let av = _mm512_set1_ps(unsafe { *a.add(i) });
            for (x, &bx) in row.iter_mut().zip(&bv) {
                *x = _mm512_fmadd_ps(av, bx, *x);
            }
        }
        // The next A panels follow this one in memory (the driver walks
        // them in order): fetch 1 KiB ahead, past what the hardware
        // prefetcher keeps up with on a cold pre-packed weight.
        _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(256) as *const i8);
        // SAFETY: stays inside the panels for kc steps (last step one past).
        unsafe {
            a = a.add(MR);
            b = b.add(NR);
        }
    }
    // SAFETY: forwarded.
    unsafe { store::<M, V>(&acc, c, ldc, ncols, load_c) };
}

/// Writes (or adds, with `load_c`) the accumulator tile to C, masking the
/// columns past `ncols`.
///
/// # Safety
/// As [`kernel`] for C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) unsafe fn store<const M: usize, const V: usize>(
    acc: &[[__m512; V]; M],
    c: *mut f32,
    ldc: usize,
    ncols: usize,
    load_c: bool,
) {
    for (i, row) in acc.iter().enumerate() {
        for (v, &x) in row.iter().enumerate() {
            let valid = ncols.saturating_sub(16 * v).min(16);
            let mask: __mmask16 = if valid == 16 {
                0xFFFF
            } else {
                ((1u32 << valid) - 1) as __mmask16
            };
            // SAFETY: the masked lanes are the valid columns of row i.
            unsafe {
                let at = c.add(i * ldc + 16 * v);
                let y = if load_c {
                    _mm512_add_ps(_mm512_maskz_loadu_ps(mask, at), x)
                } else {
                    x
                };
                _mm512_mask_storeu_ps(at, mask, y);
            }
        }
    }
}

/// The 8×8 transpose of eight rows of eight floats held in registers:
/// element `j` of output `i` is element `i` of row `j`.
///
/// # Safety
/// The CPU has AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
pub unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

/// Packs one full A panel from a row-major source: `dst[p·8 + i] =
/// alpha·src[i·ld + p]` for `i < 8`, `p < kb`, eight k steps at a time
/// through an 8×8 register transpose.
///
/// # Safety
/// The CPU has AVX; rows `0..8` of `src` (`ld` apart) hold `kb` floats;
/// `dst` holds `8·kb`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
pub unsafe fn pack_a8_rows(src: *const f32, ld: usize, kb: usize, alpha: f32, dst: *mut f32) {
    const _: () = assert!(MR == 8, "pack_a8_rows packs 8-row panels");
    let scale = _mm256_set1_ps(alpha);
    let full = kb / 8 * 8;
    for p0 in (0..full).step_by(8) {
        // SAFETY: rows 0..8, columns p0..p0+8 < kb (caller's guarantee).
        let r: [__m256; 8] =
            std::array::from_fn(|i| unsafe { _mm256_loadu_ps(src.add(i * ld + p0)) });
        // SAFETY: AVX, as this function's.
        let cols = unsafe { transpose8(r) };
        for (j, &col) in cols.iter().enumerate() {
            // SAFETY: k step p0+j < kb of the panel.
            unsafe { _mm256_storeu_ps(dst.add((p0 + j) * 8), _mm256_mul_ps(col, scale)) };
        }
    }
    for p in full..kb {
        for i in 0..8 {
            // SAFETY: as above, the k tail.
            unsafe { *dst.add(p * 8 + i) = alpha * *src.add(i * ld + p) };
        }
    }
}
