//! The raw-A micro-kernels of the implicit GEMM for a tile whose depth
//! slice is several stretches of `x` ([`Seg`]: the kernel rows of a
//! stem's short runs, the taps of a slice across two runs): the
//! accumulators stay in registers from one stretch to the next, where a
//! call per stretch would load and store the C tile each time.
//!
//! The tiles are those of [`super::avx::raw_rows`]: `8×48`, or `14×32`
//! for products at most [`avx::NARROW`] columns wide; C is written as by
//! the packed GEMM's kernels ([`avx::store`]).

use super::avx::{self, MR, MR_TALL, NR, NV};
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// A stretch of a tile's depth slice that is contiguous in `x`: `len`
/// steps of A at `a + off` (row `i` at `+ i·lda`), multiplying the B
/// steps from `step` of the slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Seg {
    /// Offset of the stretch's first float from the tile's A pointer.
    pub off: isize,
    /// The slice's depth step the stretch starts at (its first B step).
    pub step: usize,
    /// Depth steps.
    pub len: usize,
}

/// A multi-stretch instance: `(segs, a, lda, b, c, ldc, ncols, load_c)`:
/// `C[mv×ncols] = (load_c ? C : 0) + Σ_seg Σ_p A(i, seg.step + p)·B[seg.step + p][j]`,
/// `A(i, seg.step + p) = a[seg.off + i·lda + p]`, B panel rows `NR`
/// apart from `b` (the slice's first step), C rows `ldc` apart.
pub(super) type SegKernelFn =
    unsafe fn(&[Seg], *const f32, usize, *const f32, *mut f32, usize, usize, bool);

/// The instance for a product `n` columns wide, a tile of `mv` rows and
/// `ncols` columns (a tall one when `n ≤ NARROW`).
#[cfg(target_arch = "x86_64")]
pub(super) fn instance(n: usize, mv: usize, ncols: usize) -> SegKernelFn {
    if n <= avx::NARROW {
        TALL[mv.clamp(1, MR_TALL) - 1][ncols.div_ceil(16).clamp(1, 2) - 1]
    } else {
        WIDE[mv.clamp(1, MR) - 1][ncols.div_ceil(16).clamp(1, NV) - 1]
    }
}

#[cfg(target_arch = "x86_64")]
macro_rules! tall {
    ($m:literal) => {
        [kernel::<$m, 1>, kernel::<$m, 2>]
    };
}

#[cfg(target_arch = "x86_64")]
macro_rules! wide {
    ($m:literal) => {
        [kernel::<$m, 1>, kernel::<$m, 2>, kernel::<$m, 3>]
    };
}

/// The tall instances, by `[rows − 1][column vectors − 1]`.
#[cfg(target_arch = "x86_64")]
static TALL: [[SegKernelFn; 2]; MR_TALL] = [
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

/// The `8×48` instances, by `[rows − 1][column vectors − 1]`.
#[cfg(target_arch = "x86_64")]
static WIDE: [[SegKernelFn; NV]; MR] = [
    wide!(1),
    wide!(2),
    wide!(3),
    wide!(4),
    wide!(5),
    wide!(6),
    wide!(7),
    wide!(8),
];

/// The micro-kernel with `M` rows and `V` column vectors over the
/// stretches `segs` (see [`SegKernelFn`]).
///
/// # Safety
/// The CPU has AVX-512F; for each stretch, rows `0..M` of A at
/// `a + off + i·lda` hold `len` floats and the B panel holds steps
/// `step..step + len` (`NR` floats each) from `b`; C rows `0..M` at
/// `c + i·ldc` hold `ncols ≤ 16·V` valid floats each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel<const M: usize, const V: usize>(
    segs: &[Seg],
    a: *const f32,
    lda: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    ncols: usize,
    load_c: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); V]; M];
    for seg in segs {
        // SAFETY: the stretch's first float and B step (caller's guarantee).
        let (a, mut b) = unsafe { (a.offset(seg.off), b.add(seg.step * NR)) };
        for p in 0..seg.len {
            let mut bv = [_mm512_setzero_ps(); V];
            for (v, x) in bv.iter_mut().enumerate() {
                // SAFETY: row p of the B panel holds NR ≥ 16·V floats.
                *x = unsafe { _mm512_loadu_ps(b.add(16 * v)) };
            }
            for (i, row) in acc.iter_mut().enumerate() {
                // SAFETY: row i < M of the stretch holds len floats.
                let av = _mm512_set1_ps(unsafe { *a.add(i * lda + p) });
                for (x, &bx) in row.iter_mut().zip(&bv) {
                    *x = _mm512_fmadd_ps(av, bx, *x);
                }
            }
            // SAFETY: one past the stretch's last step at most.
            b = unsafe { b.add(NR) };
        }
    }
    // SAFETY: forwarded.
    unsafe { avx::store::<M, V>(&acc, c, ldc, ncols, load_c) };
}
