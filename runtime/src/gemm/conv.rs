//! Implicit-GEMM convolution over an NHWC input: `C[N·OH·OW × n] =
//! A·B`, where row `(img, oy, ox)` of A is the receptive field of output
//! pixel `(oy, ox)` of image `img`, depth `(ty, tx, ch)` (tap row, tap
//! column, channel of the group), read straight from the input `x` — no
//! im2col panel — and B is a weight pre-packed in the packed GEMM's
//! format ([`super::packed::packed_b_len`]).
//!
//! The whole batch is one product. The driver ([`gemm`]) hands blocks of
//! about [`MC`] rows (whole output rows where tiles follow them) to the
//! threads as they come free. Per block and depth slice (a `KC` block of
//! the packed B), each tile of A rows that is one run of output pixels
//! is read **in place** from `x`, its rows whose taps all fall in the
//! padding skipped: a slice inside one contiguous run of `x` by the
//! raw-A micro-kernel ([`super::kernel_avx512`]), a slice across several
//! (the rows of taps of a stem's 21-float runs, a slice across two kernel
//! rows) by [`kernel`]'s, which keeps the accumulators from one stretch
//! to the next. The other tiles (a row partly in the padding, single
//! taps of a few channels, outputs narrower than half a tile) are
//! gathered row-major into the thread's A buffer first
//! ([`ConvGeom::pack_rows`]: contiguous channel runs copied, the padding
//! written as zeros). A block's C rows (at most `MC × n`) stay in L2
//! across the slices, and a caller's hook runs on them (the epilogue) as
//! soon as they are final.
//!
//! A 1×1 convolution may instead read a **normalised concatenation**
//! ([`Normed`], [`Source::Normed`]: DenseNet's `concat → norm → relu`): then
//! every tile is gathered, through the per-channel map, from the
//! concatenated tensors.
//!
//! Tiles are `8×48`, or `14×32` for products at most 32 columns wide
//! ([`super::kernel_avx512::raw_rows`]). Without AVX-512F the portable
//! kernel ([`super::packed`]'s, A through strides) runs.

use super::kernel_avx512::{self as avx, NR};
use super::packed::{self, KC, MC, NC};
use super::TileWork;
use kernel::Seg;
use rayon::prelude::*;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The window geometry of an NHWC convolution read as the A operand of
/// an implicit GEMM (a group's A: its `cg` channels, starting at the
/// pointer the driver is given).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvGeom {
    /// Images.
    pub n: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Channels per input pixel (all groups): the pixel stride of `x`.
    pub c: usize,
    /// Channels of one group, read by one GEMM.
    pub cg: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Strides (height, width).
    pub stride: [usize; 2],
    /// Zero padding before the first row and column.
    pub pad: [usize; 2],
    /// Dilation (height, width).
    pub dilation: [usize; 2],
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
}

impl ConvGeom {
    /// Rows of A (and C): `N·OH·OW`.
    pub fn rows(&self) -> usize {
        self.n * self.oh * self.ow
    }

    /// Depth of A: `KH·KW·cg`.
    pub fn depth(&self) -> usize {
        self.kh * self.kw * self.cg
    }

    /// Elements of `x` a group's A reaches from its first channel
    /// (`None` on overflow): every pixel's `cg` channels.
    pub fn span(&self) -> Option<usize> {
        let pixels = self.n.checked_mul(self.h)?.checked_mul(self.w)?;
        if pixels == 0 || self.cg == 0 {
            return Some(0);
        }
        (pixels - 1).checked_mul(self.c)?.checked_add(self.cg)
    }

    /// Writes rows `rows` × depth `ks` of A row-major at `dst` (row
    /// stride `ks.len()`): each row's contiguous channel runs copied from
    /// `x`, taps in the padding written as zeros.
    ///
    /// # Safety
    /// `x` holds [`ConvGeom::span`] floats; `rows` ⊆ `0..rows()`, `ks` ⊆
    /// `0..depth()`; `dst` holds `rows.len()·ks.len()` floats.
    pub unsafe fn pack_rows(
        &self,
        x: *const f32,
        rows: Range<usize>,
        ks: Range<usize>,
        dst: *mut f32,
    ) {
        let (kb, cg, kw) = (ks.len(), self.cg, self.kw);
        if kb == 0 || rows.is_empty() {
            return;
        }
        // Taps of one kernel row are one contiguous run of x when the
        // channels of a pixel are all the group's and columns are adjacent.
        let merge = self.c == cg && self.dilation[1] == 1;
        // Every row starts its depth at the same tap and channel; the walk
        // below advances them run by run (no division per run: with a few
        // channels, as in a stem, the runs are a handful of floats).
        let (tap0, ch0) = (ks.start / cg, ks.start % cg);
        let (ty0, tx0) = (tap0 / kw, tap0 % kw);
        let (mut img, p) = (
            rows.start / (self.oh * self.ow),
            rows.start % (self.oh * self.ow),
        );
        let (mut oy, mut ox) = (p / self.ow, p % self.ow);
        for r in 0..rows.len() {
            // SAFETY: row r of the destination (caller's size).
            let out = unsafe { std::slice::from_raw_parts_mut(dst.add(r * kb), kb) };
            let iy0 = (oy * self.stride[0]) as isize - self.pad[0] as isize;
            let ix0 = (ox * self.stride[1]) as isize - self.pad[1] as isize;
            let (mut ty, mut tx, mut ch) = (ty0, tx0, ch0);
            let mut o = 0;
            while o < kb {
                let iy = iy0 + (ty * self.dilation[0]) as isize;
                let ix = ix0 + (tx * self.dilation[1]) as isize;
                // Taps this run covers past the first (merged columns).
                let mut more = 0;
                if iy < 0 || iy >= self.h as isize {
                    // The whole rest of this kernel row is padding.
                    let len = ((kw - tx) * cg - ch).min(kb - o);
                    out[o..o + len].fill(0.0);
                    o += len;
                    (ty, tx, ch) = (ty + 1, 0, 0);
                    continue;
                }
                if ix < 0 || ix >= self.w as isize {
                    let len = (cg - ch).min(kb - o);
                    out[o..o + len].fill(0.0);
                    o += len;
                } else {
                    if merge {
                        more = (kw - tx - 1).min(self.w - 1 - ix as usize);
                    }
                    let len = (cg - ch + more * cg).min(kb - o);
                    let at = ((img * self.h + iy as usize) * self.w + ix as usize) * self.c + ch;
                    // SAFETY: pixel (img, iy, ix) is inside the input and
                    // the run stays in its row of taps (or its channels).
                    let src = unsafe { std::slice::from_raw_parts(x.add(at), len) };
                    // (An element loop: LLVM vectorizes it; a short
                    // `copy_from_slice` becomes a memmove call.)
                    for (d, &v) in out[o..o + len].iter_mut().zip(src) {
                        *d = v;
                    }
                    o += len;
                }
                // The next run starts at the tap after this one's last
                // (a run cut short by the slice's end ends the walk).
                (tx, ch) = (tx + 1 + more, 0);
                if tx == kw {
                    (ty, tx) = (ty + 1, 0);
                }
            }
            // The next output pixel.
            ox += 1;
            if ox == self.ow {
                (ox, oy) = (0, oy + 1);
                if oy == self.oh {
                    (oy, img) = (0, img + 1);
                }
            }
        }
    }
}

/// Tiles follow the output rows (and may be read in place) when the
/// depth runs of `x` are at least this long, or whole kernel rows
/// ([`ConvGeom::merged`]); shorter runs of single taps (few channels per
/// group, as in a depthwise convolution) would make many stretches per
/// depth slice ([`Seg`]), each a handful of steps.
const MIN_RUN: usize = 32;

impl ConvGeom {
    /// Whether the taps of one kernel row are one contiguous run of `x`:
    /// the group has all of a pixel's channels and columns are adjacent.
    fn merged(&self) -> bool {
        self.c == self.cg && self.dilation[1] == 1
    }

    /// Depth of A that is one contiguous run of `x` for a pixel whose
    /// taps are all inside the input: a whole kernel row when
    /// [`ConvGeom::merged`], else one tap.
    fn run(&self) -> usize {
        if self.merged() {
            self.kw * self.cg
        } else {
            self.cg
        }
    }

    /// The depth slices of one pass over A: the `KC` blocks of the
    /// packed B, each with the runs of `x` it crosses ([`Stretch`]; the
    /// in-place kernels walk them one after the other).
    fn slices(&self) -> Vec<Slice> {
        let (k, cg, kw, run) = (self.depth(), self.cg, self.kw, self.run());
        (0..k)
            .step_by(KC)
            .map(|q0| {
                let ks = q0..(q0 + KC).min(k);
                let mut stretches = Vec::new();
                let mut q = ks.start;
                while q < ks.end {
                    let len = (run - q % run).min(ks.end - q);
                    let (tap, ch) = (q / cg, q % cg);
                    stretches.push(Stretch {
                        ty: tap / kw,
                        tx: tap % kw,
                        tx_hi: tap % kw + (ch + len - 1) / cg,
                        ch,
                        step: q - ks.start,
                        len,
                    });
                    q += len;
                }
                Slice { ks, stretches }
            })
            .collect()
    }

    /// Whether the geometry is 1×1, stride 1, unpadded and undilated: row
    /// `r` of A is channels `0..cg` of pixel `r`, so any run of rows is
    /// read in place and tiles of `mr` rows may cross the map's rows (a
    /// 7×7 map no longer runs 7-row tiles on the 8-row kernel).
    fn pointwise(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.stride == [1, 1]
            && self.pad == [0, 0]
            && self.dilation == [1, 1]
    }

    /// Whether tiles follow the output rows (each a run of output pixels
    /// that can be read in place) rather than run `mr` rows across them
    /// (always gathered): when the runs are whole kernel rows or long
    /// ([`MIN_RUN`]) and splitting a row into tiles of at most `mr` fills
    /// them at least half.
    fn row_tiles(&self, mr: usize) -> bool {
        let per_row = self.ow.div_ceil(mr);
        (self.merged() || self.run() >= MIN_RUN) && self.ow > 0 && 2 * self.ow >= per_row * mr
    }

    /// Rows of a block of C: a whole number of output rows of at most
    /// `MC` rows when tiles follow the rows and one fits, else `MC`
    /// rounded down to `mr`.
    fn block_rows(&self, mr: usize) -> usize {
        let mc = (MC / mr) * mr;
        if self.row_tiles(mr) && self.ow <= mc && !self.pointwise() {
            (mc / self.ow) * self.ow
        } else {
            mc
        }
    }

    /// Splits `rows` of C into tiles of at most `mr` rows: along each
    /// output row in near-equal parts ([`ConvGeom::row_tiles`]), else in
    /// `mr`-row tiles across rows. Pushes `(first row, rows)` to `out`.
    fn tiles(&self, rows: Range<usize>, mr: usize, out: &mut Vec<(usize, usize)>) {
        out.clear();
        let ow = self.ow.max(1);
        let per_row = ow.div_ceil(mr);
        let along = self.row_tiles(mr) && !self.pointwise();
        let mut r = rows.start;
        while r < rows.end {
            let end = if along {
                let ox = r % ow;
                let row0 = r - ox;
                // The part j of this output row holding ox; part j spans
                // [j·ow/per_row, (j+1)·ow/per_row).
                let mut j = ox * per_row / ow;
                while j > 0 && j * ow / per_row > ox {
                    j -= 1;
                }
                while (j + 1) * ow / per_row <= ox {
                    j += 1;
                }
                row0 + (j + 1) * ow / per_row
            } else {
                r + mr
            };
            let end = end.min(rows.end).min(r + mr);
            out.push((r, end - r));
            r = end;
        }
    }

    /// How the `mv` rows from `row` of A, depth slice `slice`, can be
    /// read in place: `Some(Direct { rows, at, lda, segs })` when the tile
    /// is one run of output pixels whose rows `rows` (relative to `row`)
    /// have every tap of the slice inside the input and read the
    /// stretches pushed to `segs` (those of kernel rows in the padding
    /// left out) from `x + at + i·lda`, while every other row has all
    /// its taps of the slice in the padding (zero: it adds
    /// nothing); `None` (and `segs` unchanged) when the tile must be
    /// gathered. Nothing is read in place unless tiles of `mr` rows
    /// follow the output rows, or the geometry is pointwise (then every
    /// tile is: its rows are consecutive pixels).
    fn in_place(
        &self,
        row: usize,
        mv: usize,
        slice: &Slice,
        mr: usize,
        segs: &mut Vec<Seg>,
    ) -> Option<Direct> {
        if slice.ks.is_empty() {
            return None;
        }
        if self.pointwise() {
            segs.push(Seg {
                off: 0,
                step: 0,
                len: slice.ks.len(),
            });
            return Some(Direct {
                rows: 0..mv,
                at: row * self.c + slice.ks.start,
                lda: self.c,
                segs: segs.len() - 1..segs.len(),
            });
        }
        if !self.row_tiles(mr) {
            return None;
        }
        let plane = self.oh * self.ow;
        let (img, p) = (row / plane, row % plane);
        let (oy, ox0) = (p / self.ow, p % self.ow);
        if ox0 + mv > self.ow {
            return None;
        }
        let first = segs.len();
        let (s, d, pad, w) = (
            self.stride[1] as isize,
            self.dilation[1] as isize,
            self.pad[1] as isize,
            self.w as isize,
        );
        // Input column of output column ox at tap tx.
        let ix = |ox: usize, tx: usize| ox as isize * s + tx as isize * d - pad;
        // Per tile row: whether every tap so far is inside, and whether
        // none is (a row with some inside and some not is gathered).
        let (mut all, mut none) = ([true; avx::MR_TALL], [true; avx::MR_TALL]);
        // Whether a stretch has every row's taps inside, and whether one
        // has not (then the rows are checked one by one).
        let (mut inside_all, mut border) = (false, false);
        // The stretches in the input's rows, pushed with their offset in
        // x for output column ox0 (made relative below).
        for &Stretch {
            ty,
            tx,
            tx_hi,
            ch,
            step,
            len,
        } in &slice.stretches
        {
            let iy = (oy * self.stride[0] + ty * self.dilation[0]) as isize - self.pad[0] as isize;
            if (0..self.h as isize).contains(&iy) {
                // Every row has all these taps inside when the first and
                // last have (the common case, checked first).
                if ix(ox0, tx) >= 0 && ix(ox0 + mv - 1, tx_hi) < w {
                    inside_all = true;
                } else {
                    border = true;
                    for i in 0..mv {
                        let (lo, hi) = (ix(ox0 + i, tx), ix(ox0 + i, tx_hi));
                        all[i] &= lo >= 0 && hi < w;
                        none[i] &= hi < 0 || lo >= w;
                    }
                }
                let pixel = ((img * self.h + iy as usize) * self.w) as isize + ix(ox0, tx);
                segs.push(Seg {
                    off: pixel * self.c as isize + ch as isize,
                    step,
                    len,
                });
            }
        }
        let skip = Direct {
            rows: 0..0,
            at: 0,
            lda: 0,
            segs: first..first,
        };
        let rows = if !border {
            if !inside_all {
                // Every row of taps of the slice is in the padding.
                return Some(skip);
            }
            0..mv
        } else {
            if inside_all {
                none = [false; avx::MR_TALL];
            }
            // Each row has all its taps inside or none; the former are
            // contiguous (ix grows with ox).
            let mut full: Option<Range<usize>> = None;
            for i in 0..mv {
                let contiguous = match &mut full {
                    _ if none[i] => true,
                    _ if !all[i] => false,
                    Some(r) if r.end == i => {
                        r.end += 1;
                        true
                    }
                    Some(_) => false,
                    None => {
                        full = Some(i..i + 1);
                        true
                    }
                };
                if !contiguous {
                    segs.truncate(first);
                    return None;
                }
            }
            match full {
                Some(rows) => rows,
                None => {
                    segs.truncate(first);
                    return Some(skip);
                }
            }
        };
        // Row lo of the first stretch is the tile's A; the stretches'
        // offsets become relative to it.
        let lda = self.stride[1] * self.c;
        let base = segs[first].off;
        for seg in &mut segs[first..] {
            seg.off -= base;
        }
        Some(Direct {
            at: (base + (rows.start * lda) as isize) as usize,
            rows,
            lda,
            segs: first..segs.len(),
        })
    }
}

/// A depth slice of A ([`ConvGeom::slices`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Slice {
    /// Its depth.
    ks: Range<usize>,
    /// The runs of `x` it crosses, in depth order.
    stretches: Vec<Stretch>,
}

/// The part of a depth slice that lies in one run of `x` (for a pixel
/// with all its taps inside): taps `tx..=tx_hi` of kernel row `ty`, from
/// channel `ch` of the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stretch {
    /// Kernel row.
    ty: usize,
    /// First tap (kernel column).
    tx: usize,
    /// Last tap.
    tx_hi: usize,
    /// Channel of the first tap it starts at.
    ch: usize,
    /// Its first step in the slice.
    step: usize,
    /// Depth steps.
    len: usize,
}

/// A tile of A read in place ([`ConvGeom::in_place`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Direct {
    /// The tile's rows with taps inside the input (the rest add nothing).
    rows: Range<usize>,
    /// Offset in `x` of the first of them.
    at: usize,
    /// Distance in `x` between consecutive rows.
    lda: usize,
    /// Its stretches, in the caller's list.
    segs: Range<usize>,
}

/// Rows `rows` (all `n` columns) of `C = A·B + beta·C` on the calling
/// thread, `A` the implicit matrix of `geom` over `x`, `B` pre-packed;
/// calls `done(r)` once the rows `r` of C are final, block by block.
///
/// Per block of rows and depth slice ([`ConvGeom::slices`]), a tile of
/// A rows that is one run of output pixels with all its taps inside the
/// input is read in place from `x`; the others (borders, padding, thin
/// runs) are gathered into the thread's A buffer first.
///
/// # Safety
/// `x` holds [`ConvGeom::span`] floats, `b` [`super::packed::packed_b_len`]`(depth, n)`;
/// C rows `rows` are `ldc ≥ n` apart, writable, not overlapping x or b;
/// `work` has its packed buffers ([`TileWork::with_packed`]); `beta` is 0
/// or 1.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_part(
    geom: &ConvGeom,
    x: *const f32,
    b: *const f32,
    n: usize,
    beta: f32,
    c: *mut f32,
    ldc: usize,
    rows: Range<usize>,
    work: &mut TileWork,
    done: &(dyn Fn(Range<usize>) + Sync),
) {
    // SAFETY: forwarded; `wide` only where the CPU has AVX-512F.
    unsafe {
        part(
            avx::available(),
            geom,
            Source::Input(x),
            b,
            n,
            beta,
            c,
            ldc,
            rows,
            work,
            done,
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
    geom: &ConvGeom,
    source: Source,
    b: *const f32,
    n: usize,
    beta: f32,
    c: *mut f32,
    ldc: usize,
    rows: Range<usize>,
    work: &mut TileWork,
    done: &(dyn Fn(Range<usize>) + Sync),
) {
    let mr = if wide { avx::raw_rows(n) } else { avx::MR };
    let mc = geom.block_rows(mr);
    let (abuf, _) = work.packed_bufs();
    let panels = n.div_ceil(NR) * NR;
    let slices = geom.slices();
    // Per tile of a block: its first row, rows, and where its A is read
    // for the current slice (pointer, row stride, the rows that add, its
    // stretches in `segs`, whether they add to C), and whether C holds
    // the tile's sum so far.
    let (mut tiles, mut a_at, mut started, mut segs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ic in rows.clone().step_by(mc) {
        let mb = mc.min(rows.end - ic);
        geom.tiles(ic..ic + mb, mr, &mut tiles);
        started.clear();
        started.resize(tiles.len(), beta != 0.0);
        for slice in &slices {
            let (ks, kb) = (&slice.ks, slice.ks.len());
            // Each tile's A: in place, or gathered into its rows of the
            // buffer (row stride kb, one stretch).
            a_at.clear();
            segs.clear();
            for (&(r0, mv), started) in tiles.iter().zip(&mut started) {
                let direct = match source {
                    Source::Input(x) => geom.in_place(r0, mv, slice, mr, &mut segs).map(|d| (x, d)),
                    Source::Normed(_) => None,
                };
                let (a, lda, part, seg) = match direct {
                    // SAFETY: the rows lie inside x (checked against the
                    // input's bounds).
                    Some((x, d)) => (unsafe { x.add(d.at) }, d.lda, d.rows, d.segs),
                    None => {
                        // SAFETY: the tile is inside A and the block; the
                        // buffer holds MC·KC ≥ mb·kb floats.
                        let dst = unsafe { abuf.add((r0 - ic) * kb) };
                        match source {
                            // SAFETY: rows and depth inside A (above).
                            Source::Input(x) => unsafe {
                                geom.pack_rows(x, r0..r0 + mv, ks.clone(), dst)
                            },
                            // SAFETY: as above; the parts hold A's rows.
                            Source::Normed(normed) => unsafe {
                                normed.pack_rows(wide, r0..r0 + mv, ks.clone(), dst)
                            },
                        }
                        segs.push(Seg {
                            off: 0,
                            step: 0,
                            len: kb,
                        });
                        (dst as *const f32, kb, 0..mv, segs.len() - 1..segs.len())
                    }
                };
                // A tile's first adding slice stores its rows (rows whose
                // taps so far are all padding get zeros); later ones add.
                let load = *started;
                if !load && !part.is_empty() {
                    // SAFETY: rows of the tile (caller's guarantee).
                    unsafe { zero_rows(c, ldc, n, r0, (0..part.start).chain(part.end..mv)) };
                    *started = true;
                }
                a_at.push((a, lda, part, seg, load));
            }
            // K block of the packed B and the slice's first step in it.
            let (blk, off) = (ks.start / KC, ks.start % KC);
            for jc in (0..n).step_by(NC) {
                let nb = NC.min(n - jc);
                for j0 in (jc..jc + nb).step_by(NR) {
                    let ncols = NR.min(jc + nb - j0);
                    // SAFETY: K block blk, panel j0/NR, step off of the
                    // packed B.
                    let bp = unsafe { b.add(blk * KC * panels + (j0 / NR) * NR * KC + off * NR) };
                    for (&(r0, _), (a, lda, part, seg, load_c)) in tiles.iter().zip(&a_at) {
                        let (lda, mv, load_c) = (*lda, part.len(), *load_c);
                        if mv == 0 || seg.is_empty() {
                            continue;
                        }
                        // SAFETY: the tile's adding A rows hold each
                        // stretch, lda apart; the B panel the slice's kb
                        // steps; the C tile is rows r0 + part, columns
                        // j0..j0+ncols.
                        unsafe {
                            let ct = c.add((r0 + part.start) * ldc + j0);
                            tile(
                                wide,
                                n,
                                mv,
                                ncols,
                                &segs[seg.clone()],
                                *a,
                                lda,
                                bp,
                                ct,
                                ldc,
                                load_c,
                            );
                        }
                    }
                }
            }
        }
        // Tiles no slice added to (every tap in the padding) are zero.
        for (&(r0, mv), &started) in tiles.iter().zip(&started) {
            if !started {
                // SAFETY: rows of the tile (caller's guarantee).
                unsafe { zero_rows(c, ldc, n, r0, 0..mv) };
            }
        }
        done(ic..ic + mb);
    }
}

/// `C[mv×ncols] (+)= A·B` for one tile over the stretches `segs` of a
/// depth slice (A row `i` of stretch `s` at `a + s.off + i·lda`, B from
/// the slice's first step `bp`): one stretch on the shared raw-A
/// kernels, several on [`kernel`]'s (accumulators kept across them), or
/// the portable kernel a stretch at a time.
///
/// # Safety
/// As [`kernel::SegKernelFn`]'s instances; `wide` only if
/// [`avx::available`].
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    wide: bool,
    n: usize,
    mv: usize,
    ncols: usize,
    segs: &[Seg],
    a: *const f32,
    lda: usize,
    bp: *const f32,
    c: *mut f32,
    ldc: usize,
    load_c: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if wide {
        if let [seg] = segs {
            let kernel = if n <= avx::NARROW {
                avx::tall_instance(mv, ncols)
            } else {
                avx::instance(mv, ncols, true)
            };
            // SAFETY: the stretch's rows and B steps (caller's guarantee).
            unsafe {
                kernel(
                    seg.len,
                    a.offset(seg.off),
                    lda,
                    bp.add(seg.step * NR),
                    c,
                    ldc,
                    ncols,
                    load_c,
                )
            };
        } else {
            // SAFETY: forwarded.
            unsafe { kernel::instance(n, mv, ncols)(segs, a, lda, bp, c, ldc, ncols, load_c) };
        }
        return;
    }
    let _ = wide;
    for (i, seg) in segs.iter().enumerate() {
        // SAFETY: as above, a stretch at a time (the later ones add).
        unsafe {
            packed::portable_kernel(
                mv,
                seg.len,
                a.offset(seg.off),
                lda,
                1,
                bp.add(seg.step * NR),
                c,
                ldc,
                ncols,
                load_c || i > 0,
            )
        };
    }
}

/// Zeroes columns `0..n` of C rows `r0 + i` for `i` in `rows`.
///
/// # Safety
/// Those rows of C (`ldc` apart) are writable for `n` floats.
unsafe fn zero_rows(
    c: *mut f32,
    ldc: usize,
    n: usize,
    r0: usize,
    rows: impl Iterator<Item = usize>,
) {
    for i in rows {
        // SAFETY: row r0 + i of C (caller's guarantee).
        unsafe { std::slice::from_raw_parts_mut(c.add((r0 + i) * ldc), n) }.fill(0.0);
    }
}

/// The whole product of [`gemm_part`] on `threads` tasks of the current
/// rayon pool: blocks of rows go to the tasks as they come free (task `t`
/// uses `works[t]`), so a slower core takes fewer. `done` may run on any
/// task, once per block.
///
/// # Safety
/// As [`gemm_part`] for rows `0..geom.rows()`, with `source`'s input
/// (or a normalised concatenation's parts, scale and shift) in place of
/// `x`; `works` has `threads.max(1)` entries, each used by no one else
/// during the call.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(
    geom: &ConvGeom,
    source: Source,
    b: *const f32,
    n: usize,
    beta: f32,
    c: *mut f32,
    ldc: usize,
    threads: usize,
    works: *mut TileWork,
    done: &(dyn Fn(Range<usize>) + Sync),
) {
    if let Source::Normed(normed) = source {
        debug_assert!(geom.depth() == normed.depth() && geom.c == geom.cg);
    }
    // SAFETY: forwarded; `wide` only where the CPU has AVX-512F.
    unsafe {
        gemm_with(
            avx::available(),
            geom,
            source,
            b,
            n,
            beta,
            c,
            ldc,
            threads,
            works,
            done,
        )
    }
}

/// Where the rows of an implicit A are read from.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    /// The window of the geometry over the convolution's input `x`.
    Input(*const f32),
    /// A normalised concatenation, for a 1×1, stride-1, unpadded
    /// geometry whose channels are its own (`geom.c == geom.cg ==
    /// Normed::depth`): every tile of A is gathered through the
    /// normalisation ([`Normed::pack_rows`]) into the thread's A buffer.
    Normed(Normed<'a>),
}

// SAFETY: the GEMM only reads through the input pointer (which outlives
// the call that shares it over the pool's threads).
unsafe impl Send for Source<'_> {}
// SAFETY: as above.
unsafe impl Sync for Source<'_> {}

/// [`gemm`] on the AVX-512 micro-kernels (`wide`) or the portable one.
///
/// # Safety
/// As [`gemm`]; `wide` only if [`avx::available`].
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_with(
    wide: bool,
    geom: &ConvGeom,
    source: Source,
    b: *const f32,
    n: usize,
    beta: f32,
    c: *mut f32,
    ldc: usize,
    threads: usize,
    works: *mut TileWork,
    done: &(dyn Fn(Range<usize>) + Sync),
) {
    let m = geom.rows();
    let mr = if wide { avx::raw_rows(n) } else { avx::MR };
    let threads = threads.max(1);
    // Near-equal blocks of at most about MC rows, a whole number per task
    // (three blocks of a 32×32 map on two tasks left one task a third of
    // the time idle), each a whole number of output rows when tiles follow
    // them.
    let most = geom.block_rows(mr);
    let unit = if most.is_multiple_of(geom.ow.max(1)) && geom.row_tiles(mr) && !geom.pointwise() {
        geom.ow
    } else {
        mr
    };
    let count = m.div_ceil(most).next_multiple_of(threads);
    let block = m.div_ceil(count).next_multiple_of(unit).max(mr);
    let blocks = m.div_ceil(block);
    if threads == 1 || blocks == 1 {
        // SAFETY: forwarded; works[0] is ours.
        unsafe {
            part(
                wide,
                geom,
                source,
                b,
                n,
                beta,
                c,
                ldc,
                0..m,
                &mut *works,
                done,
            )
        };
        return;
    }
    let next = AtomicUsize::new(0);
    // Pointers cross to the pool's threads as integers.
    let (b, c, works) = (b as usize, c as usize, works as usize);
    (0..threads.min(blocks)).into_par_iter().for_each(|t| loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= blocks {
            break;
        }
        let rows = i * block..((i + 1) * block).min(m);
        // SAFETY: each block of rows is taken by one task; works[t] is
        // this task's alone.
        unsafe {
            part(
                wide,
                geom,
                source,
                b as *const f32,
                n,
                beta,
                c as *mut f32,
                ldc,
                rows,
                &mut *(works as *mut TileWork).add(t),
                done,
            )
        }
    });
}

mod kernel;
mod normed;
#[cfg(test)]
mod tests;

pub use normed::Normed;
