//! Sparse 3D convolution over voxel sets (`subm_conv3d`, `sparse_conv3d`,
//! spconv 2.x semantics: `compiler/src/ops/sparse.rs`) as two kinds of row
//! steps, each one call that splits its work over the pool itself:
//!
//! - [`BuildRuleBook`] turns the active sites' coordinates into a rule
//!   book, once per run for every conv sharing its `rulebook` key: the
//!   number of output sites, their coordinates (strided convs only, in
//!   lexicographic `(batch, z, y, x)` order) and, per output site and
//!   kernel offset, the input row it reads (or none). Sites are looked up
//!   in a dense index grid (one cell per voxel of every sample) that lives
//!   in the rule book's buffer, with one occupancy bit per cell that is
//!   tested first (the bits fit in cache). Grid and bits are all zero
//!   between steps: a step sets the cells of its sites and clears them
//!   again before it returns, so no step pays for clearing the whole grid.
//! - [`VoxelConv`] computes the output features row by row: per output
//!   row, the sum over kernel offsets of its neighbour's features times
//!   that offset's `[in, out]` weight block (AVX-512 for output widths
//!   that are multiples of 16). Rows are split between threads, each row
//!   written by one thread only, so results do not depend on the split.
//!
//! The backward steps ([`grad`]) reuse the forward's rule books.
//!
//! The number of output sites is known only when the rule book is built;
//! buffers are sized for its compile-time bound and the count sits in the
//! rule book's first element ([`site_count`]), where the convs, the next
//! rule book and the host read it. Everything past the count is left as
//! it was. All integers in a rule book are `u32` bit patterns in `f32`
//! slots; coordinates are `f32` values, as integer inputs reach a plan.

use crate::plan::RowKernel;
use rayon::prelude::*;

/// Where the output coordinates start in a rule book (element 0 is the
/// site count, element 1 the input-site count; the rest of the first 64
/// bytes is padding).
pub const COORDS_AT: usize = 16;

/// Output rows a thread computes at a time ([`VoxelConv`]), and the
/// fewest rows worth a thread.
const BLOCK: usize = 64;

/// The geometry of one sparse convolution (see the op's docs).
#[derive(Clone, Debug, PartialEq)]
pub struct Geometry {
    /// Kernel size per spatial dim (z, y, x).
    pub kernel: [usize; 3],
    /// Stride per dim (1 for a submanifold conv).
    pub stride: [i64; 3],
    /// Padding per dim.
    pub pad: [i64; 3],
    /// Dilation per dim.
    pub dilation: [i64; 3],
    /// The input grid (D, H, W).
    pub in_grid: [i64; 3],
    /// The output grid (the input grid for a submanifold conv).
    pub out_grid: [i64; 3],
    /// Samples the batch index ranges over.
    pub batch: i64,
    /// Submanifold: the output sites are the input sites, in their order.
    pub subm: bool,
}

impl Geometry {
    /// Kernel offsets (the product of the kernel sizes).
    pub fn volume(&self) -> usize {
        self.kernel.iter().product()
    }

    /// Cells of the index grid: the larger of the input and output grids,
    /// over every sample.
    pub fn grid_cells(&self) -> usize {
        let cells = |g: &[i64; 3]| g.iter().product::<i64>().max(0) as usize;
        let most = if self.subm {
            cells(&self.in_grid)
        } else {
            cells(&self.in_grid).max(cells(&self.out_grid))
        };
        most.saturating_mul(self.batch.max(0) as usize)
    }

    /// The cell of site `s` (batch first) in `grid`, if it is inside.
    fn cell(&self, s: &[i64; 4], grid: &[i64; 3]) -> Option<usize> {
        if !(0..self.batch).contains(&s[0]) || (0..3).any(|d| !(0..grid[d]).contains(&s[d + 1])) {
            return None;
        }
        Some((((s[0] * grid[0] + s[1]) * grid[1] + s[2]) * grid[2] + s[3]) as usize)
    }

    /// The output coordinates along dim `d` that input coordinate `p`
    /// reaches: the `o` inside the output grid with `o·stride + k·dilation
    /// = p + pad` for a tap `k` of the kernel.
    fn reach(&self, d: usize, p: i64) -> impl Iterator<Item = i64> {
        let (s, dil) = (self.stride[d], self.dilation[d]);
        let top = p + self.pad[d];
        let lo = (top - (self.kernel[d] as i64 - 1) * dil).max(0);
        let last = if top < 0 {
            -1
        } else {
            (top / s).min(self.out_grid[d] - 1)
        };
        ((lo + s - 1) / s..=last).filter(move |o| (top - o * s) % dil == 0)
    }
}

/// Where the parts of a rule book sit in its buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The most output sites (the data-dependent count's bound).
    pub bound: usize,
    /// Kernel offsets.
    pub volume: usize,
    /// Whether the book holds output coordinates (strided convs).
    pub coords: bool,
    /// Cells of the index grid.
    pub cells: usize,
}

/// `n` rounded up to 16 elements (64 bytes).
fn align16(n: usize) -> usize {
    n.div_ceil(16) * 16
}

impl Layout {
    /// The layout of `g`'s rule book for at most `bound` output sites.
    pub fn of(g: &Geometry, bound: usize) -> Layout {
        Layout {
            bound,
            volume: g.volume(),
            coords: !g.subm,
            cells: g.grid_cells(),
        }
    }

    /// Elements of the output coordinates (`[bound, 4]`, or none).
    pub fn coords_len(&self) -> usize {
        if self.coords {
            self.bound * 4
        } else {
            0
        }
    }

    /// Where the neighbour table (`[bound, volume]`: input row + 1, or 0)
    /// starts.
    pub fn pairs_at(&self) -> usize {
        COORDS_AT + align16(self.coords_len())
    }

    /// Where the index grid starts.
    pub fn grid_at(&self) -> usize {
        self.pairs_at() + align16(self.bound * self.volume)
    }

    /// Where the grid's occupancy bits start (one per cell, 32 per
    /// element): a lookup tests them first, and they fit in cache where
    /// the grid does not.
    pub fn bits_at(&self) -> usize {
        self.grid_at() + align16(self.cells)
    }

    /// Elements of the whole rule book.
    pub fn elements(&self) -> usize {
        self.bits_at() + self.cells.div_ceil(32)
    }
}

/// The output-site count a rule book holds.
pub fn site_count(book: &[f32]) -> Result<usize, String> {
    book.first()
        .map(|c| c.to_bits() as usize)
        .ok_or_else(|| "the rule book is empty".to_string())
}

/// Whether work should be split over the pool the caller runs on.
fn on_pool() -> bool {
    rayon::current_thread_index().is_some() && rayon::current_num_threads() > 1
}

/// Builds a rule book (see the module docs). Inputs: the input sites'
/// coordinates (`[M, 4]` values: batch, z, y, x) and, when `chained`,
/// the rule book that produced them (its count is `M`); otherwise `M` is
/// `in_count`. The output is the whole rule book ([`Layout::elements`]); its
/// grid must be zero when the step starts and is zero again after it.
#[derive(Clone, Debug)]
pub struct BuildRuleBook {
    /// The conv's geometry.
    pub geometry: Geometry,
    /// Where the parts go.
    pub layout: Layout,
    /// The input site count when it is not read from a rule book; the
    /// most input sites when it is.
    pub in_count: usize,
    /// Whether input 1 is the rule book of the input sites.
    pub chained: bool,
    /// Threads the plan was compiled for ([`RowKernel::threads`]).
    pub threads: usize,
}

impl BuildRuleBook {
    /// The input site count and coordinates.
    fn sites<'a>(&self, inputs: &[&'a [f32]]) -> Result<(usize, &'a [f32]), String> {
        let n = match (self.chained, inputs.get(1)) {
            (false, _) => self.in_count,
            (true, Some(book)) => site_count(book)?,
            (true, None) => return Err("a chained rule book reads 2 buffers".into()),
        };
        if n > self.in_count {
            return Err(format!(
                "{n} input sites, more than the {} the plan holds",
                self.in_count
            ));
        }
        let coords = inputs.first().copied().unwrap_or(&[]);
        let coords = coords
            .get(..n * 4)
            .ok_or_else(|| format!("the coordinates hold {} of {n} sites", coords.len() / 4))?;
        Ok((n, coords))
    }
}

/// Site `i` of `coords` (`[.., 4]` values), refusing a non-integer.
fn site(coords: &[f32], i: usize) -> Result<[i64; 4], String> {
    let c = &coords[i * 4..i * 4 + 4];
    if c.iter().any(|v| v.fract() != 0.0 || !v.is_finite()) {
        return Err(format!("site {i} has non-integer coordinates {c:?}"));
    }
    Ok([c[0] as i64, c[1] as i64, c[2] as i64, c[3] as i64])
}

impl RowKernel for BuildRuleBook {
    fn rows(&self, _: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let (g, l) = (&self.geometry, &self.layout);
        let (n_in, coords) = self.sites(inputs)?;
        if out.len() < l.elements() {
            return Err(format!(
                "the rule book holds {} of {} elements",
                out.len(),
                l.elements()
            ));
        }
        for i in 0..n_in {
            let s = site(coords, i)?;
            if !(0..g.batch).contains(&s[0]) {
                return Err(format!(
                    "site {s:?} has batch index {}, the tensor holds {} samples",
                    s[0], g.batch
                ));
            }
            if g.cell(&s, &g.in_grid).is_none() {
                return Err(format!("site {s:?} is outside the grid {:?}", g.in_grid));
            }
        }
        let (head, rest) = out.split_at_mut(COORDS_AT);
        let (out_coords, rest) = rest.split_at_mut(l.pairs_at() - COORDS_AT);
        let (pairs, rest) = rest.split_at_mut(l.grid_at() - l.pairs_at());
        let (grid, bits) = rest.split_at_mut(l.bits_at() - l.grid_at());
        let (grid, bits) = (&mut grid[..l.cells], &mut bits[..l.cells.div_ceil(32)]);
        let n_out = if g.subm {
            n_in
        } else {
            output_sites(g, l.bound, coords, n_in, grid, out_coords)?
        };
        fill(g, coords, n_in, grid, bits)?;
        let sites: &[f32] = if g.subm { coords } else { out_coords };
        neighbours(
            g,
            &sites[..n_out * 4],
            grid,
            bits,
            &mut pairs[..n_out * l.volume],
        );
        clear(g, coords, n_in, grid, bits);
        head[0] = f32::from_bits(n_out as u32);
        head[1] = f32::from_bits(n_in as u32);
        Ok(())
    }

    fn threads(&self) -> usize {
        self.threads
    }
}

/// Marks in `grid` (over the output grid) every output site an input site
/// reaches, then writes them in cell order (lexicographic) to `coords` and
/// clears their cells; returns how many there are.
fn output_sites(
    g: &Geometry,
    bound: usize,
    inputs: &[f32],
    n_in: usize,
    grid: &mut [f32],
    coords: &mut [f32],
) -> Result<usize, String> {
    let mark = f32::from_bits(1);
    for i in 0..n_in {
        let s = site(inputs, i)?;
        for z in g.reach(0, s[1]) {
            for y in g.reach(1, s[2]) {
                for x in g.reach(2, s[3]) {
                    let c = ((s[0] * g.out_grid[0] + z) * g.out_grid[1] + y) * g.out_grid[2] + x;
                    grid[c as usize] = mark;
                }
            }
        }
    }
    let plane = g.out_grid.iter().product::<i64>() as usize;
    let (mut n, mut over) = (0, false);
    for (c, cell) in grid[..plane * g.batch as usize].iter_mut().enumerate() {
        if cell.to_bits() == 0 {
            continue;
        }
        *cell = 0.0;
        if n == bound {
            // Unreachable with the shape rule's bound; clear and refuse.
            over = true;
            continue;
        }
        let [_, h, w] = g.out_grid;
        let c = c as i64;
        let site = [
            c / plane as i64,
            c / (h * w) % g.out_grid[0],
            c / w % h,
            c % w,
        ];
        for (dst, v) in coords[n * 4..n * 4 + 4].iter_mut().zip(site) {
            *dst = v as f32;
        }
        n += 1;
    }
    if over {
        return Err(format!("more than {bound} output sites"));
    }
    Ok(n)
}

/// Sets the grid cell of every input site to its row + 1, refusing a
/// site that appears twice (the grid is cleared again then).
fn fill(
    g: &Geometry,
    coords: &[f32],
    n: usize,
    grid: &mut [f32],
    bits: &mut [f32],
) -> Result<(), String> {
    for i in 0..n {
        let s = site(coords, i)?;
        let c = g.cell(&s, &g.in_grid).expect("checked before");
        if grid[c].to_bits() != 0 {
            clear(g, coords, i, grid, bits);
            return Err(format!("site {s:?} appears twice"));
        }
        grid[c] = f32::from_bits(i as u32 + 1);
        bits[c / 32] = f32::from_bits(bits[c / 32].to_bits() | 1 << (c % 32));
    }
    Ok(())
}

/// Clears the grid cells (and bits) of the first `n` input sites.
fn clear(g: &Geometry, coords: &[f32], n: usize, grid: &mut [f32], bits: &mut [f32]) {
    for i in 0..n {
        if let Some(c) = site(coords, i).ok().and_then(|s| g.cell(&s, &g.in_grid)) {
            grid[c] = 0.0;
            bits[c / 32] = 0.0;
        }
    }
}

/// The neighbour table of the output sites `sites` (`[n, 4]`): per site
/// and kernel offset (z, then y, then x), the grid's entry for the input
/// site it reads, looked up only where `bits` marks an active site.
fn neighbours(g: &Geometry, sites: &[f32], grid: &[f32], bits: &[f32], pairs: &mut [f32]) {
    let volume = g.volume();
    let [d, h, w] = g.in_grid;
    let tap = |dim: usize, o: f32, k: usize| -> Option<i64> {
        let p = o as i64 * g.stride[dim] - g.pad[dim] + k as i64 * g.dilation[dim];
        (0..g.in_grid[dim]).contains(&p).then_some(p)
    };
    let one = |o: &[f32], row: &mut [f32]| {
        let b = o[0] as i64;
        let mut slots = row.iter_mut();
        for kz in 0..g.kernel[0] {
            let z = tap(0, o[1], kz);
            for ky in 0..g.kernel[1] {
                let y = tap(1, o[2], ky);
                for kx in 0..g.kernel[2] {
                    let x = tap(2, o[3], kx);
                    let slot = slots.next().expect("one slot per offset");
                    *slot = match (z, y, x) {
                        (Some(z), Some(y), Some(x)) => {
                            let c = (((b * d + z) * h + y) * w + x) as usize;
                            if bits[c / 32].to_bits() >> (c % 32) & 1 == 1 {
                                grid[c]
                            } else {
                                0.0
                            }
                        }
                        _ => 0.0,
                    };
                }
            }
        }
    };
    if volume == 0 {
        return;
    }
    if on_pool() {
        pairs
            .par_chunks_mut(volume * BLOCK)
            .zip(sites.par_chunks(4 * BLOCK))
            .for_each(|(rows, os)| {
                for (row, o) in rows.chunks_exact_mut(volume).zip(os.chunks_exact(4)) {
                    one(o, row);
                }
            });
    } else {
        for (row, o) in pairs.chunks_exact_mut(volume).zip(sites.chunks_exact(4)) {
            one(o, row);
        }
    }
}

/// The features of a sparse convolution from a rule book. Inputs: the
/// input features (`[M, cin]`), the rule book, the weight packed to
/// `[volume, cin, cout]` and, with `bias`, the bias. Writes the first
/// `count` rows of the `[bound, cout]` output.
#[derive(Clone, Debug)]
pub struct VoxelConv {
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel offsets.
    pub volume: usize,
    /// Where the rule book's neighbour table starts ([`Layout::pairs_at`]).
    pub pairs_at: usize,
    /// Whether input 3 is a bias.
    pub bias: bool,
    /// Whether a ReLU follows (fused).
    pub relu: bool,
    /// Threads the plan was compiled for ([`RowKernel::threads`]).
    pub threads: usize,
}

impl RowKernel for VoxelConv {
    fn rows(&self, _: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let (cin, cout, vol) = (self.cin, self.cout, self.volume);
        let [feats, book, w, ..] = inputs else {
            return Err(format!(
                "a voxel conv reads 3 or 4 buffers, got {}",
                inputs.len()
            ));
        };
        let n = site_count(book)?;
        let pairs = book
            .get(self.pairs_at..self.pairs_at + n * vol)
            .ok_or_else(|| format!("the rule book does not hold {n} sites"))?;
        let w = w
            .get(..vol * cin * cout)
            .ok_or_else(|| format!("the weight holds {} elements", w.len()))?;
        let bias = match (self.bias, inputs.get(3)) {
            (false, _) => None,
            (true, Some(b)) if b.len() >= cout => Some(&b[..cout]),
            (true, _) => return Err("the bias is missing".into()),
        };
        let out = out
            .get_mut(..n * cout)
            .ok_or_else(|| format!("the output holds fewer than {n} rows"))?;
        let rows_in = feats.len().checked_div(cin).unwrap_or(0);
        if let Some(j) = pairs
            .iter()
            .map(|p| p.to_bits() as usize)
            .find(|&j| j > rows_in)
        {
            return Err(format!(
                "the rule book reads input row {}, the features hold {rows_in}",
                j - 1
            ));
        }
        let block = |(y, p): (&mut [f32], &[f32])| self.block(feats, w, bias, p, y);
        if on_pool() {
            out.par_chunks_mut(BLOCK * cout.max(1))
                .zip(pairs.par_chunks(BLOCK * vol.max(1)))
                .for_each(block);
        } else {
            out.chunks_mut(BLOCK * cout.max(1))
                .zip(pairs.chunks(BLOCK * vol.max(1)))
                .for_each(block);
        }
        Ok(())
    }

    fn threads(&self) -> usize {
        self.threads
    }
}

impl VoxelConv {
    /// Output rows `y` (`[r, cout]`) from their neighbour rows `pairs`
    /// (`[r, volume]`, every entry at most the feature rows): offset by
    /// offset, so that offset's weight block stays in cache.
    fn block(&self, x: &[f32], w: &[f32], bias: Option<&[f32]>, pairs: &[f32], y: &mut [f32]) {
        let (cin, cout, vol) = (self.cin, self.cout, self.volume);
        for row in y.chunks_exact_mut(cout.max(1)) {
            match bias {
                Some(b) => row.copy_from_slice(b),
                None => row.fill(0.0),
            }
        }
        for k in 0..vol {
            let wk = &w[k * cin * cout..(k + 1) * cin * cout];
            for (row, p) in y.chunks_exact_mut(cout.max(1)).zip(pairs.chunks_exact(vol)) {
                let j = p[k].to_bits() as usize;
                if j == 0 {
                    continue;
                }
                let xr = &x[(j - 1) * cin..j * cin];
                #[cfg(target_arch = "x86_64")]
                if cout % 16 == 0 && std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F; `xr` holds `cin`, `wk`
                    // `cin·cout` and `row` `cout` elements.
                    unsafe { avx512::axpy(xr, wk, row) };
                    continue;
                }
                for (&a, wr) in xr.iter().zip(wk.chunks_exact(cout)) {
                    for (o, &b) in row.iter_mut().zip(wr) {
                        *o += a * b;
                    }
                }
            }
        }
        if self.relu {
            for v in y.iter_mut() {
                *v = v.max(0.0);
            }
        }
    }
}

/// Copies the first `count` rows of `width` elements of input 0, `count`
/// being the site count of the rule book in input 1: a model output whose
/// row count is known only after the run. The rest of the output is not
/// touched (nor, for a fresh buffer, paged in).
#[derive(Clone, Debug)]
pub struct CopyRows {
    /// Elements per row.
    pub width: usize,
}

impl RowKernel for CopyRows {
    fn rows(&self, _: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let [src, book, ..] = inputs else {
            return Err("a row copy reads 2 buffers".into());
        };
        let len = site_count(book)? * self.width;
        let (Some(src), Some(dst)) = (src.get(..len), out.get_mut(..len)) else {
            return Err(format!("{len} elements are past the buffers"));
        };
        dst.copy_from_slice(src);
        Ok(())
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// `y += x · w` for `x` `[cin]`, `w` `[cin, cout]`, `y` `[cout]`,
    /// `cout` a multiple of 16.
    ///
    /// # Safety
    /// The CPU has AVX-512F; the slices hold those sizes.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn axpy(x: &[f32], w: &[f32], y: &mut [f32]) {
        let cout = y.len();
        let mut c = 0;
        while c + 64 <= cout {
            tile::<4, 2>(x, w, cout, &mut y[c..c + 64], c);
            c += 64;
        }
        while c + 32 <= cout {
            tile::<2, 4>(x, w, cout, &mut y[c..c + 32], c);
            c += 32;
        }
        while c + 16 <= cout {
            tile::<1, 4>(x, w, cout, &mut y[c..c + 16], c);
            c += 16;
        }
    }

    /// `V` vectors of `y` (columns `c..`), with `U` partial sums over the
    /// input channels so consecutive FMAs do not wait on each other.
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const V: usize, const U: usize>(
        x: &[f32],
        w: &[f32],
        cout: usize,
        y: &mut [f32],
        c: usize,
    ) {
        let wp = w.as_ptr().add(c);
        let mut acc = [[_mm512_setzero_ps(); V]; U];
        let cin = x.len();
        let mut i = 0;
        while i + U <= cin {
            for (u, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_ps(*x.get_unchecked(i + u));
                for (v, av) in a.iter_mut().enumerate() {
                    let wv = _mm512_loadu_ps(wp.add((i + u) * cout + v * 16));
                    *av = _mm512_fmadd_ps(xv, wv, *av);
                }
            }
            i += U;
        }
        while i < cin {
            let xv = _mm512_set1_ps(*x.get_unchecked(i));
            for (v, av) in acc[0].iter_mut().enumerate() {
                let wv = _mm512_loadu_ps(wp.add(i * cout + v * 16));
                *av = _mm512_fmadd_ps(xv, wv, *av);
            }
            i += 1;
        }
        for v in 0..V {
            let mut s = _mm512_loadu_ps(y.as_ptr().add(v * 16));
            for a in &acc {
                s = _mm512_add_ps(s, a[v]);
            }
            _mm512_storeu_ps(y.as_mut_ptr().add(v * 16), s);
        }
    }
}

pub mod grad;
pub mod pool;

#[cfg(test)]
mod tests;
