//! The Winograd transforms of [`super`] as row kernels. Each works on
//! runs of channels (contiguous in every layout here), so its inner loops
//! are `y += a·x` over a channel run, compiled for AVX-512F where the CPU
//! has it ([`fast`]).
//!
//! The tile transforms write `[α²][T][·]`: one contiguous matrix per
//! position, which the GEMMs read with unit strides (interleaved
//! `[T][α²][·]` rows, `α²` times further apart, ran the GEMMs at half
//! speed in `examples/winograd_speed`). A row of such a step is one
//! position of one tile, so a thread's share of the rows is a range of
//! positions of every tile ([`positions_of`]).

use super::{Tiling, Transforms, R};
use crate::plan::RowKernel;

/// `y += a·x`, element by element.
#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// `out = Σ a·x` over `terms`, skipping zero coefficients (the first
/// term written, not added).
#[inline(always)]
fn combine<'a>(out: &mut [f32], terms: impl Iterator<Item = (f32, &'a [f32])>) {
    let mut first = true;
    for (a, x) in terms {
        if a == 0.0 {
            continue;
        }
        if first {
            for (y, &x) in out.iter_mut().zip(x) {
                *y = a * x;
            }
            first = false;
        } else {
            axpy(out, a, x);
        }
    }
    if first {
        out.fill(0.0);
    }
}

/// A kernel's loops, compiled for AVX-512F where the CPU has it
/// ([`fast`]).
pub(super) trait Body {
    /// The rows `first..` of the step into `out`, the inputs checked.
    fn body(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]);
}

/// Runs `kernel`'s body compiled for AVX-512F when the CPU has it (its
/// loops, inlined into [`with_avx512`], are then vectorised 16 wide),
/// else as is.
pub(super) fn fast<K: Body>(kernel: &K, first: usize, inputs: &[&[f32]], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::gemm::kernel_avx512::available() {
        // SAFETY: the CPU has AVX-512F.
        return unsafe { with_avx512(kernel, first, inputs, out) };
    }
    kernel.body(first, inputs, out)
}

/// [`fast`]'s AVX-512F instance.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn with_avx512<K: Body>(kernel: &K, first: usize, inputs: &[&[f32]], out: &mut [f32]) {
    kernel.body(first, inputs, out)
}

/// The positions `ξ` whose row of tile `t` lies in the rows
/// `first..first + rows` of a `[α²][T][·]` result.
fn positions_of(t: usize, tiles: usize, (first, rows): (usize, usize)) -> std::ops::Range<usize> {
    let end = first + rows;
    let lo = first.saturating_sub(t).div_ceil(tiles);
    let hi = if end > t {
        (end - t).div_ceil(tiles)
    } else {
        0
    };
    lo..hi.max(lo)
}

/// An error unless `buf` (input `what`) holds at least `need` elements.
pub(super) fn need(what: &str, buf: &[f32], need: usize) -> Result<(), String> {
    if buf.len() < need {
        return Err(format!(
            "Winograd transform: {what} holds {} elements, fewer than the {need} it needs",
            buf.len()
        ));
    }
    Ok(())
}

/// The input `i` of a row step, or an error naming it.
pub(super) fn input<'a>(inputs: &[&'a [f32]], i: usize, what: &str) -> Result<&'a [f32], String> {
    inputs
        .get(i)
        .copied()
        .ok_or_else(|| format!("Winograd transform: input {i} ({what}) is missing"))
}

/// `U = G g Gᵀ` of every 3×3 filter of a weight `[OC, C, 3, 3]` (or
/// `[OC, 3, 3, C]`, [`WeightTransform::taps_first`]), as the
/// `α²` GEMM operands `U_ξ[K, N]` laid out `[K][α²][N]`. A row is one
/// contracted channel `k` (`α²·N` wide).
///
/// Without `flip`, `K = C` and `N = OC` (the forward convolution); with
/// it, `K = OC`, `N = C` and the filter is rotated by 180° (the
/// convolution of `dy` that gives the input gradient).
#[derive(Debug, Clone, PartialEq)]
pub struct WeightTransform {
    /// The transforms.
    pub transforms: Transforms,
    /// Output channels of the weight.
    pub oc: usize,
    /// Input channels of the weight.
    pub c: usize,
    /// Whether to swap the channel dims and rotate the filter.
    pub flip: bool,
    /// Whether the weight is `[OC, 3, 3, C]` (an NHWC plan's) instead.
    pub taps_first: bool,
}

impl WeightTransform {
    /// The contracted size `K` (rows).
    pub fn k(&self) -> usize {
        if self.flip {
            self.oc
        } else {
            self.c
        }
    }

    /// The GEMM columns `N`.
    pub fn n(&self) -> usize {
        if self.flip {
            self.c
        } else {
            self.oc
        }
    }

    /// Elements of a row.
    pub fn width(&self) -> usize {
        self.transforms.alpha().pow(2) * self.n()
    }
}

impl Body for WeightTransform {
    #[inline(always)]
    fn body(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) {
        let w = inputs[0];
        let (a, n, taps) = (self.transforms.alpha(), self.n(), R * R);
        let g = &self.transforms.g;
        let mut filters = vec![0.0; taps * n];
        let mut half = vec![0.0; a * R * n];
        for (i, row) in out.chunks_mut(self.width()).enumerate() {
            let k = first + i;
            for col in 0..n {
                let (o, ci) = if self.flip { (k, col) } else { (col, k) };
                for t in 0..taps {
                    let tap = if self.flip { taps - 1 - t } else { t };
                    let at = if self.taps_first {
                        (o * taps + tap) * self.c + ci
                    } else {
                        (o * self.c + ci) * taps + tap
                    };
                    filters[t * n + col] = w[at];
                }
            }
            // half[i][b] = Σ_r G[i][r]·g[r][b]
            for (ib, dst) in half.chunks_mut(n).enumerate() {
                let (gi, b) = (ib / R, ib % R);
                combine(
                    dst,
                    (0..R).map(|r| (g[gi * R + r], &filters[(r * R + b) * n..][..n])),
                );
            }
            // U[i][j] = Σ_b half[i][b]·G[j][b]
            for (ij, dst) in row.chunks_mut(n).enumerate() {
                let (gi, gj) = (ij / a, ij % a);
                combine(
                    dst,
                    (0..R).map(|b| (g[gj * R + b], &half[(gi * R + b) * n..][..n])),
                );
            }
        }
    }
}

impl RowKernel for WeightTransform {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let w = input(inputs, 0, "the weight")?;
        need("the weight", w, self.oc * self.c * R * R)?;
        fast(self, first, &[w], out);
        Ok(())
    }
}

/// An NHWC map `[n, h, w, K]` copied into the zero-bordered
/// `[n, padded_h, padded_w, K]` that [`InputTransform`] reads: `pad`
/// zeros before each row and column, zeros after up to the padded size.
/// A row is one padded image row (`padded_w·K` wide).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PadTiles {
    /// The tiles.
    pub tiling: Tiling,
    /// Channels `K`.
    pub c: usize,
}

impl PadTiles {
    /// Rows: padded image rows over the batch.
    pub fn rows(&self) -> usize {
        self.tiling.n * self.tiling.padded_h()
    }

    /// Elements of a row.
    pub fn width(&self) -> usize {
        self.tiling.padded_w() * self.c
    }
}

impl RowKernel for PadTiles {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let x = input(inputs, 0, "the input map")?;
        let Tiling { n, h, w, pad, .. } = self.tiling;
        let c = self.c;
        need("the input map", x, n * h * w * c)?;
        let ph = self.tiling.padded_h();
        for (i, row) in out.chunks_mut(self.width()).enumerate() {
            let (img, py) = ((first + i) / ph, (first + i) % ph);
            let inside = py.checked_sub(pad[0]).filter(|&y| y < h);
            let Some(y) = inside else {
                row.fill(0.0);
                continue;
            };
            let (before, rest) = row.split_at_mut(pad[1] * c);
            let (body, after) = rest.split_at_mut(w * c);
            before.fill(0.0);
            body.copy_from_slice(&x[(img * h + y) * w * c..][..w * c]);
            after.fill(0.0);
        }
        Ok(())
    }
}

/// `V = Bᵀ d B` of every `α×α` input tile of a padded NHWC map `[n,
/// padded_h, padded_w, K]` ([`PadTiles`]), laid out `[α²][T][K]`: a row is
/// one position of one tile (`K` wide).
#[derive(Debug, Clone, PartialEq)]
pub struct InputTransform {
    /// The transforms.
    pub transforms: Transforms,
    /// The tiles.
    pub tiling: Tiling,
    /// Channels `K`.
    pub c: usize,
}

impl InputTransform {
    /// Rows: `α²·T`.
    pub fn rows(&self) -> usize {
        self.tiling.positions() * self.tiling.tiles()
    }
}

impl InputTransform {
    /// Positions `wanted` of tile `tile` of the padded map `x`, position
    /// `ξ` into `out[(ξ·stride + offset − origin)·K..]` (`half` is `α²·K`
    /// floats of work space).
    #[inline(always)]
    pub(super) fn tile(
        &self,
        x: &[f32],
        (tile, wanted): (usize, std::ops::Range<usize>),
        half: &mut [f32],
        (out, stride, offset, origin): (&mut [f32], usize, usize, usize),
    ) {
        let (a, c, m) = (self.transforms.alpha(), self.c, self.transforms.m);
        let (ph, pw) = (self.tiling.padded_h(), self.tiling.padded_w());
        let (tiles_y, tiles_x) = (self.tiling.tiles_y(), self.tiling.tiles_x());
        let bt = &self.transforms.bt;
        let (img, ty, tx) = (
            tile / (tiles_y * tiles_x),
            tile / tiles_x % tiles_y,
            tile % tiles_x,
        );
        // Element (r, b) of the tile's window, a run of `c` channels.
        let at = |r: usize, b: usize| &x[((img * ph + ty * m + r) * pw + tx * m + b) * c..][..c];
        // half[i][b] = Σ_r Bᵀ[i][r]·d[r][b], for the rows i wanted.
        for bi in wanted.start / a..(wanted.end - 1) / a + 1 {
            for b in 0..a {
                combine(
                    &mut half[(bi * a + b) * c..][..c],
                    (0..a).map(|r| (bt[bi * a + r], at(r, b))),
                );
            }
        }
        // V[i][j] = Σ_b half[i][b]·Bᵀ[j][b]
        for xi in wanted {
            let (bi, bj) = (xi / a, xi % a);
            combine(
                &mut out[(xi * stride + offset - origin) * c..][..c],
                (0..a).map(|b| (bt[bj * a + b], &half[(bi * a + b) * c..][..c])),
            );
        }
    }
}

impl Body for InputTransform {
    #[inline(always)]
    fn body(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) {
        let (a, c, tiles) = (self.transforms.alpha(), self.c, self.tiling.tiles());
        let mut half = vec![0.0; a * a * c];
        for tile in 0..tiles {
            let wanted = positions_of(tile, tiles, (first, out.len() / c));
            if !wanted.is_empty() {
                self.tile(
                    inputs[0],
                    (tile, wanted),
                    &mut half,
                    (out, tiles, tile, first),
                );
            }
        }
    }
}

impl RowKernel for InputTransform {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let x = input(inputs, 0, "the padded input map")?;
        let t = self.tiling;
        need(
            "the padded input map",
            x,
            t.n * t.padded_h() * t.padded_w() * self.c,
        )?;
        fast(self, first, &[x], out);
        Ok(())
    }
}

/// `Y = Aᵀ M A` of every tile's GEMM results `M [α²][T][N]`, plus an
/// optional bias (input 1, `[N]`), into the NHWC output `[n, oh, ow, N]`:
/// a row is one output row of one image (`ow·N` wide), computed from row
/// `oy mod m` of `Aᵀ` alone (as cheap per output as whole tiles).
#[derive(Debug, Clone, PartialEq)]
pub struct OutputTransform {
    /// The transforms.
    pub transforms: Transforms,
    /// The tiles.
    pub tiling: Tiling,
    /// Output channels `N`.
    pub oc: usize,
    /// Whether input 1 is a bias.
    pub bias: bool,
}

impl OutputTransform {
    /// Rows: output rows over the batch.
    pub fn rows(&self) -> usize {
        self.tiling.n * self.tiling.oh()
    }

    /// Elements of a row.
    pub fn width(&self) -> usize {
        self.tiling.ow() * self.oc
    }
}

impl OutputTransform {
    /// Output row `r` of tile column `tx` from the tile's GEMM results at
    /// `mm[(ξ·stride + index)·N..]`, plus the bias, into the output row
    /// `row` (`ow·N`; `s` is `α·N` floats of work space).
    #[inline(always)]
    pub(super) fn tile_row(
        &self,
        (mm, stride, index): (&[f32], usize, usize),
        (r, tx): (usize, usize),
        bias: Option<&[f32]>,
        s: &mut [f32],
        row: &mut [f32],
    ) {
        let (a, n, m) = (self.transforms.alpha(), self.oc, self.transforms.m);
        let at = &self.transforms.at;
        // s[j] = Σ_i Aᵀ[r][i]·M[i][j]
        for (j, dst) in s.chunks_mut(n).enumerate() {
            combine(
                dst,
                (0..a).map(|i| {
                    (
                        at[r * a + i],
                        &mm[((i * a + j) * stride + index) * n..][..n],
                    )
                }),
            );
        }
        for q in 0..m.min(self.tiling.ow() - tx * m) {
            let dst = &mut row[(tx * m + q) * n..][..n];
            match bias {
                Some(b) => dst.copy_from_slice(&b[..n]),
                None => dst.fill(0.0),
            }
            for j in 0..a {
                let coeff = at[q * a + j];
                if coeff != 0.0 {
                    axpy(dst, coeff, &s[j * n..][..n]);
                }
            }
        }
    }
}

impl Body for OutputTransform {
    #[inline(always)]
    fn body(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) {
        let (mm, bias) = (inputs[0], inputs.get(1).copied());
        let (a, m, oh) = (self.transforms.alpha(), self.transforms.m, self.tiling.oh());
        let (tiles_y, tiles_x, tiles) = (
            self.tiling.tiles_y(),
            self.tiling.tiles_x(),
            self.tiling.tiles(),
        );
        let mut s = vec![0.0; a * self.oc];
        for (i, row) in out.chunks_mut(self.width()).enumerate() {
            let (img, oy) = ((first + i) / oh, (first + i) % oh);
            for tx in 0..tiles_x {
                let tile = (img * tiles_y + oy / m) * tiles_x + tx;
                self.tile_row((mm, tiles, tile), (oy % m, tx), bias, &mut s, row);
            }
        }
    }
}

impl RowKernel for OutputTransform {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let mm = input(inputs, 0, "the GEMM results")?;
        need(
            "the GEMM results",
            mm,
            self.tiling.tiles() * self.tiling.positions() * self.oc,
        )?;
        if self.bias {
            let b = input(inputs, 1, "the bias")?;
            need("the bias", b, self.oc)?;
            fast(self, first, &[mm, b], out);
        } else {
            fast(self, first, &[mm], out);
        }
        Ok(())
    }
}

/// `Ŷ = A dY Aᵀ` of every `m×m` output-gradient tile of an NHWC `dy`
/// `[n, oh, ow, N]` (zeros outside the map), laid out `[α²][T][N]`: a row
/// is one position of one tile (`N` wide).
#[derive(Debug, Clone, PartialEq)]
pub struct GradOutputTransform {
    /// The transforms.
    pub transforms: Transforms,
    /// The tiles (of the forward convolution).
    pub tiling: Tiling,
    /// Output channels `N`.
    pub oc: usize,
}

impl GradOutputTransform {
    /// Rows: `α²·T`.
    pub fn rows(&self) -> usize {
        self.tiling.positions() * self.tiling.tiles()
    }
}

impl Body for GradOutputTransform {
    #[inline(always)]
    fn body(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) {
        let dy = inputs[0];
        let (a, n, m) = (self.transforms.alpha(), self.oc, self.transforms.m);
        let (oh, ow) = (self.tiling.oh(), self.tiling.ow());
        let (tiles_y, tiles_x, tiles) = (
            self.tiling.tiles_y(),
            self.tiling.tiles_x(),
            self.tiling.tiles(),
        );
        let at = &self.transforms.at;
        let mut d = vec![0.0; m * m * n];
        let mut half = vec![0.0; a * m * n];
        for tile in 0..tiles {
            let wanted = positions_of(tile, tiles, (first, out.len() / n));
            if wanted.is_empty() {
                continue;
            }
            let (img, ty, tx) = (
                tile / (tiles_y * tiles_x),
                tile / tiles_x % tiles_y,
                tile % tiles_x,
            );
            let (rows, cols) = (m.min(oh - ty * m), m.min(ow - tx * m));
            let corner = ((img * oh + ty * m) * ow + tx * m) * n;
            // A full tile is read in place (row p at `corner + p·ow·n`); a
            // partial one through a zero-filled copy.
            let (src, row_len): (&[f32], usize) = if (rows, cols) == (m, m) {
                (&dy[corner..], ow * n)
            } else {
                d.fill(0.0);
                for p in 0..rows {
                    let from = corner + p * ow * n;
                    d[p * m * n..][..cols * n].copy_from_slice(&dy[from..from + cols * n]);
                }
                (&d, m * n)
            };
            // half[i][q] = Σ_p Aᵀ[p][i]·dY[p][q], for the rows i wanted.
            for ai in wanted.start / a..(wanted.end - 1) / a + 1 {
                for q in 0..m {
                    combine(
                        &mut half[(ai * m + q) * n..][..n],
                        (0..m).map(|p| (at[p * a + ai], &src[p * row_len + q * n..][..n])),
                    );
                }
            }
            // Ŷ[i][j] = Σ_q half[i][q]·Aᵀ[q][j]
            for xi in wanted {
                let (ai, aj) = (xi / a, xi % a);
                combine(
                    &mut out[(xi * tiles + tile - first) * n..][..n],
                    (0..m).map(|q| (at[q * a + aj], &half[(ai * m + q) * n..][..n])),
                );
            }
        }
    }
}

impl RowKernel for GradOutputTransform {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let dy = input(inputs, 0, "the output gradient")?;
        let t = self.tiling;
        need("the output gradient", dy, t.n * t.oh() * t.ow() * self.oc)?;
        fast(self, first, &[dy], out);
        Ok(())
    }
}

/// `dW = Gᵀ (∂L/∂U) G` from the per-position gradients `[α²][OC][C]`
/// into the weight gradient `[OC, C, 3, 3]`: a row is one output channel
/// (`C·9` wide).
#[derive(Debug, Clone, PartialEq)]
pub struct WeightGradTransform {
    /// The transforms.
    pub transforms: Transforms,
    /// Output channels.
    pub oc: usize,
    /// Input channels.
    pub c: usize,
}

impl WeightGradTransform {
    /// Elements of a row.
    pub fn width(&self) -> usize {
        self.c * R * R
    }
}

impl Body for WeightGradTransform {
    #[inline(always)]
    fn body(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) {
        let du = inputs[0];
        let (a, c, oc) = (self.transforms.alpha(), self.c, self.oc);
        let g = &self.transforms.g;
        let mut half = vec![0.0; R * a * c];
        let mut taps = vec![0.0; R * R * c];
        for (i, row) in out.chunks_mut(self.width()).enumerate() {
            let o = first + i;
            // half[r][j] = Σ_i G[i][r]·dU[i][j][o]
            for (rj, dst) in half.chunks_mut(c).enumerate() {
                let (r, j) = (rj / a, rj % a);
                combine(
                    dst,
                    (0..a).map(|gi| (g[gi * R + r], &du[((gi * a + j) * oc + o) * c..][..c])),
                );
            }
            // dW[r][b] = Σ_j half[r][j]·G[j][b]
            for (rb, dst) in taps.chunks_mut(c).enumerate() {
                let (r, b) = (rb / R, rb % R);
                combine(
                    dst,
                    (0..a).map(|j| (g[j * R + b], &half[(r * a + j) * c..][..c])),
                );
            }
            for (ci, filter) in row.chunks_mut(R * R).enumerate() {
                for (t, v) in filter.iter_mut().enumerate() {
                    *v = taps[t * c + ci];
                }
            }
        }
    }
}

impl RowKernel for WeightGradTransform {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let du = input(inputs, 0, "the transformed gradients")?;
        need(
            "the transformed gradients",
            du,
            self.transforms.alpha().pow(2) * self.oc * self.c,
        )?;
        fast(self, first, &[du], out);
        Ok(())
    }
}
