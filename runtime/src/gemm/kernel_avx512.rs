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

/// A micro-kernel instance: `(kc, a, b, c, ldc, ncols, load_c)`:
/// `C[mv×ncols] = (load_c ? C : 0) + Σ_p A[p][i]·B[p][j]` over `kc` steps,
/// A panel rows `MR` apart, B panel rows `NR` apart, C rows `ldc` apart;
/// `ncols` is at most `16·nv` of the instance.
pub type KernelFn = unsafe fn(usize, *const f32, *const f32, *mut f32, usize, usize, bool);

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
/// (`1..=NR`): `mv` accumulator rows and `ceil(ncols/16)` column vectors.
#[cfg(target_arch = "x86_64")]
pub fn instance(mv: usize, ncols: usize) -> KernelFn {
    TABLE[mv.clamp(1, MR) - 1][ncols.div_ceil(16).clamp(1, NV) - 1]
}

#[cfg(target_arch = "x86_64")]
macro_rules! row {
    ($m:literal) => {
        [kernel::<$m, 1>, kernel::<$m, 2>, kernel::<$m, 3>]
    };
}

/// Every instance, by `[rows − 1][column vectors − 1]`.
#[cfg(target_arch = "x86_64")]
static TABLE: [[KernelFn; NV]; MR] = [
    row!(1),
    row!(2),
    row!(3),
    row!(4),
    row!(5),
    row!(6),
    row!(7),
    row!(8),
];

/// The micro-kernel with `M` rows and `V` column vectors (see [`KernelFn`]).
///
/// # Safety
/// The CPU has AVX-512F; `a` holds `kc·MR` floats, `b` `kc·NR`; C rows
/// `0..M` at `c + i·ldc` hold `ncols ≤ 16·V` valid floats each, and
/// `ncols > 16·(V−1)`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel<const M: usize, const V: usize>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    ncols: usize,
    load_c: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); V]; M];
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
        // SAFETY: stays inside the panels for kc steps (last step one past).
        unsafe {
            a = a.add(MR);
            b = b.add(NR);
        }
    }
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
