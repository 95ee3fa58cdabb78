//! Winograd minimal filtering for 3×3 stride-1 convolutions over
//! channels-last (NHWC) maps: `F(m×m, 3×3)` computes an `m×m` tile of
//! outputs from an `α×α` input tile (`α = m + 2`) with `α²` products per
//! channel pair instead of `9·m²`:
//!
//! `Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A`
//!
//! summed over the input channels. The sum over channels of the `α²`
//! element-wise products is `α²` independent GEMMs, one per transformed
//! position `ξ`: `M_ξ[T, N] = V_ξ[T, K] · U_ξ[K, N]` over the `T` tiles of
//! the batch. The kernels here are the transforms around those GEMMs, as
//! row steps (the GEMMs are ordinary contraction steps):
//!
//! - [`WeightTransform`]: `U = G g Gᵀ` of every weight, as `[K][α²][N]`;
//! - [`PadTiles`]: the input map copied into a zero-bordered one that
//!   holds every tile's window, so that the input transform reads them in
//!   place;
//! - [`InputTransform`]: `V = Bᵀ d B` of every input tile, `[α²][T][K]`;
//! - [`OutputTransform`]: `Y = Aᵀ M A` (plus the bias) into NHWC rows;
//! - [`TiledConv`]: the input transform, the GEMMs and the output
//!   transform fused per block of tiles (the forward convolution and the
//!   input gradient);
//! - [`GradOutputTransform`] and [`WeightGradTransform`]: the weight
//!   gradient. With `Ŷ_t = A dY_t Aᵀ` for each output tile,
//!   `∂L/∂U_ξ = Σ_t V_t,ξᵀ · Ŷ_t,ξ` (again `α²` GEMMs, over the tiles) and
//!   `∂L/∂g = Gᵀ (∂L/∂U) G`.
//!
//! The input gradient of a stride-1 convolution is the forward one of
//! `dy` with the flipped kernel and the channel dims swapped
//! ([`WeightTransform::flip`]), padding `2 − pad`.
//!
//! The transform matrices come from Toom–Cook interpolation at the points
//! `0, ±1, ±2, …` and infinity ([`Transforms::new`]), for `m` from 2 to 4
//! ([`best_tile`] picks the one with the least work for a map). Why:
//! eeg_ccnn's 9×9 maps tile exactly into 3×3 outputs, 25 products per 81
//! taps·pixel instead of 81, and its convolutions were most of a training
//! step already running at the machine's GEMM speed.

mod fused;
mod kernels;
#[cfg(test)]
mod tests;

pub use fused::TiledConv;
pub use kernels::{
    GradOutputTransform, InputTransform, OutputTransform, PadTiles, WeightGradTransform,
    WeightTransform,
};

/// Taps of the filter along each axis.
pub(crate) const R: usize = 3;

/// The output tile sides [`Transforms::new`] supports.
pub const TILES: [usize; 3] = [2, 3, 4];

/// The transform matrices of `F(m×m, 3×3)`, row-major, in `f32`.
#[derive(Debug, Clone, PartialEq)]
pub struct Transforms {
    /// Output tile side.
    pub m: usize,
    /// `Aᵀ`, `m × α`.
    pub(crate) at: Vec<f32>,
    /// `G`, `α × 3`.
    pub(crate) g: Vec<f32>,
    /// `Bᵀ`, `α × α`.
    pub(crate) bt: Vec<f32>,
}

impl Transforms {
    /// The transforms of `F(m×m, 3×3)` for `m` in [`TILES`].
    ///
    /// Correlation is the transpose of polynomial multiplication, so with
    /// `E_k` the `α × k` matrix evaluating a polynomial of `k`
    /// coefficients at the `α − 1` finite points and infinity (whose row
    /// picks the leading coefficient): `Aᵀ = E_mᵀ`, `G = E_3` and
    /// `Bᵀ = (E_α⁻¹)ᵀ`. Row `j` of `G` is divided by `Π_{l≠j}(p_j − p_l)`
    /// and row `j` of `Bᵀ` multiplied by it (the product is unchanged),
    /// which keeps both near unit size.
    pub fn new(m: usize) -> Result<Transforms, String> {
        let points: &[f64] = match m {
            2 => &[0.0, 1.0, -1.0],
            3 => &[0.0, 1.0, -1.0, 2.0],
            4 => &[0.0, 1.0, -1.0, 2.0, -2.0],
            _ => {
                return Err(format!(
                    "Winograd tiles of {m}×{m} outputs are not supported"
                ))
            }
        };
        let alpha = m + R - 1;
        // Row j of E_k: p_j^0..p_j^(k-1); the point at infinity (last row)
        // picks the leading coefficient.
        let eval = |k: usize| -> Vec<f64> {
            let mut e = vec![0.0; alpha * k];
            for (j, row) in e.chunks_mut(k).enumerate() {
                match points.get(j) {
                    Some(&p) => row.iter_mut().fold(1.0, |pow, v| {
                        *v = pow;
                        pow * p
                    }),
                    None => {
                        row[k - 1] = 1.0;
                        0.0
                    }
                };
            }
            e
        };
        let scale: Vec<f64> = (0..alpha)
            .map(|j| match points.get(j) {
                Some(&p) => points
                    .iter()
                    .enumerate()
                    .filter(|&(l, _)| l != j)
                    .map(|(_, &q)| p - q)
                    .product(),
                None => 1.0,
            })
            .collect();
        let em = eval(m);
        let at = (0..m * alpha)
            .map(|i| em[(i % alpha) * m + i / alpha] as f32)
            .collect();
        let g = eval(R)
            .iter()
            .enumerate()
            .map(|(i, &v)| (v / scale[i / R]) as f32)
            .collect();
        let inv = invert(eval(alpha), alpha)?;
        let bt = (0..alpha * alpha)
            .map(|i| (inv[(i % alpha) * alpha + i / alpha] * scale[i / alpha]) as f32)
            .collect();
        Ok(Transforms { m, at, g, bt })
    }

    /// Input tile side `α = m + 2`.
    pub fn alpha(&self) -> usize {
        self.m + R - 1
    }
}

/// The inverse of the `n × n` row-major matrix `a` (Gauss–Jordan with
/// partial pivoting).
fn invert(mut a: Vec<f64>, n: usize) -> Result<Vec<f64>, String> {
    let mut inv: Vec<f64> = (0..n * n)
        .map(|i| if i / n == i % n { 1.0 } else { 0.0 })
        .collect();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&r, &s| a[r * n + col].abs().total_cmp(&a[s * n + col].abs()))
            .filter(|&r| a[r * n + col].abs() > 1e-12)
            .ok_or("the Winograd evaluation matrix is singular")?;
        for k in 0..n {
            a.swap(col * n + k, pivot * n + k);
            inv.swap(col * n + k, pivot * n + k);
        }
        let d = a[col * n + col];
        for k in 0..n {
            a[col * n + k] /= d;
            inv[col * n + k] /= d;
        }
        for r in (0..n).filter(|&r| r != col) {
            let f = a[r * n + col];
            for k in 0..n {
                a[r * n + k] -= f * a[col * n + k];
                inv[r * n + k] -= f * inv[col * n + k];
            }
        }
    }
    Ok(inv)
}

/// The tile side in [`TILES`] with the fewest transformed elements
/// (`α²` per tile) over an `oh × ow` output map; the smaller side on a
/// tie (its transforms are the more accurate).
pub fn best_tile(oh: usize, ow: usize) -> usize {
    TILES
        .into_iter()
        .min_by_key(|&m| oh.div_ceil(m) * ow.div_ceil(m) * (m + R - 1).pow(2))
        .unwrap_or(2)
}

/// How a batch of NHWC maps is cut into tiles: a stride-1 3×3
/// convolution of `[n, h, w, ·]` with padding `pad` into `[n, oh, ow, ·]`,
/// in tiles of `m × m` outputs (the last row and column of tiles may be
/// partial), numbered image by image, row by row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tiling {
    /// Images.
    pub n: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Zero padding on each side (height, width).
    pub pad: [usize; 2],
    /// Output tile side.
    pub m: usize,
}

impl Tiling {
    /// Output height.
    pub fn oh(&self) -> usize {
        (self.h + 2 * self.pad[0]).saturating_sub(R - 1)
    }

    /// Output width.
    pub fn ow(&self) -> usize {
        (self.w + 2 * self.pad[1]).saturating_sub(R - 1)
    }

    /// Tile rows per image.
    pub fn tiles_y(&self) -> usize {
        self.oh().div_ceil(self.m)
    }

    /// Tile columns per image.
    pub fn tiles_x(&self) -> usize {
        self.ow().div_ceil(self.m)
    }

    /// Tiles of the batch (`T`).
    pub fn tiles(&self) -> usize {
        self.n * self.tiles_y() * self.tiles_x()
    }

    /// Height of the padded map the tiles read: every tile's window
    /// inside it (the padding, plus zeros under partial tiles).
    pub fn padded_h(&self) -> usize {
        self.tiles_y() * self.m + R - 1
    }

    /// Width of the padded map the tiles read.
    pub fn padded_w(&self) -> usize {
        self.tiles_x() * self.m + R - 1
    }

    /// Transformed positions per tile (`α²`).
    pub fn positions(&self) -> usize {
        (self.m + R - 1).pow(2)
    }
}
