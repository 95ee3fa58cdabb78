//! The forward Winograd convolution fused into one row step
//! ([`TiledConv`]): per block of tiles, the input transform, the `α²`
//! GEMMs against the packed transformed weight and the output transform,
//! all in a thread's work space that stays in L2.
//!
//! Why: in three steps, the transformed input (`α²/m²` = 2.8 times the
//! input for `F(3×3, 3×3)`) and the GEMM results (as much times the
//! output) each went through memory twice; eeg_ccnn's conv3 at batch 256
//! moves 180 MB that way per call.

use super::kernels::{fast, input, need, Body, InputTransform, OutputTransform};
use super::{Tiling, Transforms};
use crate::gemm::packed::{self, PackPanels, Prepacked, Side};
use crate::gemm::{Strides, TileWork};
use crate::plan::RowKernel;
use std::cell::RefCell;

/// The most bytes of a block's transformed input and GEMM results.
const BLOCK_BYTES: usize = 1 << 20;

/// A stride-1 3×3 convolution of a padded NHWC map (input 0, from
/// [`super::PadTiles`]) with the transformed weight packed as the packed
/// GEMM's B panels (input 1: [`TiledConv::panels`] of
/// [`super::WeightTransform`]'s `[K][α²][N]`), plus an optional bias
/// (input 2), into the NHWC output `[n, oh, ow, N]`. A row is one output
/// row of one image (`ow·N` wide); a call computes every tile row its rows
/// touch (a tile row split between two calls is computed by both).
#[derive(Debug, Clone, PartialEq)]
pub struct TiledConv {
    /// The transforms.
    pub transforms: Transforms,
    /// The tiles.
    pub tiling: Tiling,
    /// Input channels `K`.
    pub k: usize,
    /// Output channels `N`.
    pub n: usize,
    /// Whether input 2 is a bias.
    pub bias: bool,
}

/// A thread's work space: the block's transformed input and GEMM results,
/// the transforms' rows, and the GEMM's packing buffers.
#[derive(Default)]
struct Work {
    v: Vec<f32>,
    m: Vec<f32>,
    half: Vec<f32>,
    s: Vec<f32>,
    gemm: TileWork,
}

thread_local! {
    static WORK: RefCell<Work> = RefCell::new(Work::default());
}

impl TiledConv {
    /// How the weight's transform `[K][α²][N]` is packed for input 1: one
    /// group of B panels per position.
    pub fn panels(&self) -> PackPanels {
        let p = self.tiling.positions();
        PackPanels {
            side: Prepacked::B,
            dim: self.n,
            k: self.k,
            strides: Strides::row_major(p * self.n),
            group_stride: self.n,
            groups: p,
        }
    }

    /// Rows: output rows over the batch.
    pub fn rows(&self) -> usize {
        self.tiling.n * self.tiling.oh()
    }

    /// Elements of a row.
    pub fn width(&self) -> usize {
        self.tiling.ow() * self.n
    }

    /// Tiles per block: as many as fit [`BLOCK_BYTES`], at least 8.
    fn block(&self) -> usize {
        let per_tile = self.tiling.positions() * (self.k + self.n) * 4;
        (BLOCK_BYTES / per_tile).max(8)
    }

    fn input(&self) -> InputTransform {
        InputTransform {
            transforms: self.transforms.clone(),
            tiling: self.tiling,
            c: self.k,
        }
    }

    fn output(&self) -> OutputTransform {
        OutputTransform {
            transforms: self.transforms.clone(),
            tiling: self.tiling,
            oc: self.n,
            bias: self.bias,
        }
    }
}

impl Body for TiledConv {
    #[inline(always)]
    fn body(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) {
        let (x, u, bias) = (inputs[0], inputs[1], inputs.get(2).copied());
        let (p, a, m) = (
            self.tiling.positions(),
            self.transforms.alpha(),
            self.tiling.m,
        );
        let (oh, tiles_y, tiles_x) = (
            self.tiling.oh(),
            self.tiling.tiles_y(),
            self.tiling.tiles_x(),
        );
        let width = self.width();
        let rows = out.len() / width;
        // The tile rows (image-major) the rows first..first+rows touch.
        let tile_row = |r: usize| r / oh * tiles_y + r % oh / m;
        let (t0, t1) = (
            tile_row(first) * tiles_x,
            (tile_row(first + rows - 1) + 1) * tiles_x,
        );
        let (input, output) = (self.input(), self.output());
        let group_len = self.panels().group_len();
        let block = self.block();
        // The work space leaves the thread-local for the call, so that this
        // code stays in the body compiled for AVX-512F (not in a closure).
        let mut w = WORK.with(RefCell::take);
        w.v.resize(p * block * self.k, 0.0);
        w.m.resize(p * block * self.n, 0.0);
        w.half.resize(p * self.k, 0.0);
        w.s.resize(a * self.n, 0.0);
        // Sized once per thread (the buffers only grow).
        w.gemm = std::mem::take(&mut w.gemm).with_packed();
        for start in (t0..t1).step_by(block) {
            let len = block.min(t1 - start);
            for tile in start..start + len {
                input.tile(
                    x,
                    (tile, 0..p),
                    &mut w.half,
                    (&mut w.v, len, tile - start, 0),
                );
            }
            for xi in 0..p {
                // SAFETY: V_ξ is `len×K` at `xi·len·K` of `v`, U_ξ group
                // `xi` of the validated panels, M_ξ `len×N` of `m`; one
                // thread, with this thread's packing buffers.
                unsafe {
                    packed::gemm(
                        len,
                        self.n,
                        self.k,
                        1.0,
                        Side::Raw(
                            w.v.as_ptr().add(xi * len * self.k),
                            Strides::row_major(self.k),
                        ),
                        Side::Packed(u.as_ptr().add(xi * group_len)),
                        0.0,
                        w.m.as_mut_ptr().add(xi * len * self.n),
                        self.n,
                        1,
                        &mut w.gemm as *mut TileWork,
                    )
                };
            }
            for tile in start..start + len {
                let (img, ty, tx) = (
                    tile / (tiles_y * tiles_x),
                    tile / tiles_x % tiles_y,
                    tile % tiles_x,
                );
                for r in 0..m {
                    let Some(row) = (img * oh + ty * m + r).checked_sub(first) else {
                        continue;
                    };
                    if ty * m + r >= oh || row >= rows {
                        continue;
                    }
                    let dst = &mut out[row * width..][..width];
                    output.tile_row((&w.m, len, tile - start), (r, tx), bias, &mut w.s, dst);
                }
            }
        }
        WORK.with(|cell| cell.replace(w));
    }
}

impl RowKernel for TiledConv {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        if out.is_empty() {
            return Ok(());
        }
        let t = self.tiling;
        let x = input(inputs, 0, "the padded input map")?;
        need(
            "the padded input map",
            x,
            t.n * t.padded_h() * t.padded_w() * self.k,
        )?;
        let u = input(inputs, 1, "the packed weight transform")?;
        need(
            "the packed weight transform",
            u,
            t.positions() * self.panels().group_len(),
        )?;
        let mut checked = vec![x, u];
        if self.bias {
            let b = input(inputs, 2, "the bias")?;
            need("the bias", b, self.n)?;
            checked.push(b);
        }
        fast(self, first, &checked, out);
        Ok(())
    }
}
