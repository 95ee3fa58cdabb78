//! The AVX-512 tile of the weight gradient: `MR ≤ 8` rows (input
//! channels of one tap) by `16·NV ≤ 48` output channels, or `MR ≤ 6` by
//! 64 (four vectors: 24 accumulators, as the 8×48 tile), accumulators in
//! zmm registers over every run of a chunk, loaded from and stored to the
//! result once per chunk. The last column vector goes through a mask, so
//! an edge tile neither reads nor writes past its columns.

use super::{Block, ConvWeightGrad, Run};
use std::arch::x86_64::*;

/// Columns of the widest tile.
const NR: usize = 64;

/// One tile's arguments: where its rows start in `x` (channel offset) and
/// `dy` (column offset), the result rows and their stride, and the mask of
/// the last column vector.
#[derive(Clone, Copy)]
struct Tile {
    x: *const f32,
    dy: *const f32,
    c: *mut f32,
    ldc: usize,
    x_step: usize,
    dy_step: usize,
    mask: __mmask16,
}

/// Adds the runs' products into `block` of `out` (rows of one tap's
/// channels, `ldc` apart), tile by tile.
///
/// # Safety
/// AVX-512F is available; every run (`len` pixels, `x` advancing by
/// `stride·C`, `dy` by `OC`) lies inside `x` and `dy` together with the
/// block's channels; the block lies inside `out`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn block(
    k: &ConvWeightGrad,
    x: &[f32],
    dy: &[f32],
    runs: &[Run],
    out: &mut [f32],
    block: Block,
) {
    let x_step = k.geom.stride[1] * k.geom.c;
    for o0 in block.cols.clone().step_by(NR) {
        let cols = (block.cols.end - o0).min(NR);
        let nv = cols.div_ceil(16);
        let tail = cols - (nv - 1) * 16;
        debug_assert!(
            nv <= 3 || block.rows <= 6,
            "a 64-column tile has at most 6 rows"
        );
        let t = Tile {
            x: x.as_ptr().wrapping_add(block.c0),
            dy: dy.as_ptr().wrapping_add(o0),
            c: out.as_mut_ptr().wrapping_add(block.at + o0),
            ldc: block.ldc,
            x_step,
            dy_step: k.oc,
            mask: (((1u32 << tail) - 1) & 0xffff) as __mmask16,
        };
        // SAFETY: as this function's contract; the instance matches the
        // tile's rows and column vectors.
        unsafe { instance(block.rows, nv)(t, runs) };
    }
}

/// A tile instance: `(tile, runs)`.
type TileFn = unsafe fn(Tile, &[Run]);

/// The instance for `rows` (`1..=8`) rows and `nv` (`1..=3`) vectors,
/// or `rows ≤ 6` and 4 vectors.
fn instance(rows: usize, nv: usize) -> TileFn {
    macro_rules! by_rows {
        ($($m:literal),*) => {
            [$([tile::<$m, 1>, tile::<$m, 2>, tile::<$m, 3>, tile::<$m, 4>]),*]
        };
    }
    static TABLE: [[TileFn; 4]; 6] = by_rows!(1, 2, 3, 4, 5, 6);
    static TALL: [[TileFn; 3]; 2] = [
        [tile::<7, 1>, tile::<7, 2>, tile::<7, 3>],
        [tile::<8, 1>, tile::<8, 2>, tile::<8, 3>],
    ];
    match rows {
        7 | 8 => TALL[rows - 7][nv.clamp(1, 3) - 1],
        _ => TABLE[rows.clamp(1, 6) - 1][nv.clamp(1, 4) - 1],
    }
}

/// `C[MR × 16·NV] += Σ_runs Σ_p x[run.x + p·x_step + i] · dy[run.dy +
/// p·dy_step + j]`, the last vector masked.
///
/// # Safety
/// As [`block`], for this tile's rows and columns.
#[target_feature(enable = "avx512f")]
unsafe fn tile<const MR: usize, const NV: usize>(t: Tile, runs: &[Run]) {
    let mask = |v: usize| if v + 1 == NV { t.mask } else { 0xffff };
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    for (i, row) in acc.iter_mut().enumerate() {
        for (v, a) in row.iter_mut().enumerate() {
            // SAFETY: row i, vector v of the tile lies in the block.
            *a = unsafe { _mm512_maskz_loadu_ps(mask(v), t.c.add(i * t.ldc + 16 * v)) };
        }
    }
    for run in runs {
        // SAFETY: the run lies inside x and dy (contract).
        let (mut xp, mut dp) = unsafe { (t.x.add(run.x), t.dy.add(run.dy)) };
        for _ in 0..run.len {
            let mut d = [_mm512_setzero_ps(); NV];
            for (v, dv) in d.iter_mut().enumerate() {
                // SAFETY: as above; masked lanes are not read.
                *dv = unsafe { _mm512_maskz_loadu_ps(mask(v), dp.add(16 * v)) };
            }
            for (i, row) in acc.iter_mut().enumerate() {
                // SAFETY: channel c0 + i of this pixel lies in x.
                let b = _mm512_set1_ps(unsafe { *xp.add(i) });
                for (a, &dv) in row.iter_mut().zip(&d) {
                    *a = _mm512_fmadd_ps(b, dv, *a);
                }
            }
            // SAFETY: stays inside (or one step past) the run.
            unsafe {
                xp = xp.add(t.x_step);
                dp = dp.add(t.dy_step);
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (v, a) in row.iter().enumerate() {
            // SAFETY: as the load.
            unsafe { _mm512_mask_storeu_ps(t.c.add(i * t.ldc + 16 * v), mask(v), *a) };
        }
    }
}
