//! The AVX-512 LSTM kernels: the weight products and the cell fused in
//! one register tile, reading the weights as `pack` laid them out.
//!
//! **Forward.** Per block of up to [`SEQ_BLOCK`] sequences and window
//! of time steps, first the input projections `b + x_t · W_ihᵀ` of every
//! position of the window (tiles of up to [`MR`] positions by 16 hidden
//! units, the four gates in 4·[`MR`] zmm registers; a units' panel of
//! `W_ih` stays in L1 across the tiles, so each is read once per window,
//! not once per step), then step by step a tile of up to [`MR`] sequences
//! and 16 units adds `h_{t−1} · W_hhᵀ` to its projections and applies the
//! cell in registers. `h` is double buffered (a step reads `h_{t−1}` of
//! every unit while writing `h_t`). A window's projections take at most
//! [`PRE_BUDGET`] floats.
//!
//! With few sequences (`LstmForward::threads` > 1) the threads of the
//! pool split every phase (a window's projections, a step) by hidden
//! units (`phases`): each streams its share of the weights, and a step
//! starts when every unit of the previous one is done.
//!
//! **Backward.** A tile of up to [`MR`] sequences and 64 units
//! accumulates `dh = da_{t+1} · W_hh` (reading the next step's gate
//! gradients where this kernel wrote them) and applies the backward cell
//! to it in registers, writing `da_t`.
//!
//! Hidden units past `H` in the last panel have zero weights and masked
//! loads and stores, so any `H` works. `exp` is `2^n · e^r` with a degree-6
//! polynomial for `e^r` (relative error below 2e-7) and `vscalefps` for
//! `2^n`; `1/x` is `vrcp14ps` refined by one Newton step (relative error
//! below 1e-8), so `sigmoid` and `tanh` match the portable kernels to
//! about 1e-7.

use super::pack::{backward_units, LANES as L};
use super::STATE_WIDTH;
use super::{
    phases, with_work, BwdArgs, FwdArgs, LstmBackward, LstmForward, LstmOutput, Piece, Seqs,
};
use std::arch::x86_64::*;

/// Sequences in a register tile.
const MR: usize = super::FULL_TILE;

/// Sequences whose working state (`h` twice and `c`) a block keeps.
const SEQ_BLOCK: usize = 48;

/// Floats of input projections a block keeps (512 KiB, a quarter of L2).
const PRE_BUDGET: usize = 1 << 17;

/// Whether this CPU runs the kernels of this module.
pub(super) fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

/// Runs `$f::<M>($args)` for the tile height `$m` (1 to [`MR`]).
macro_rules! by_rows {
    ($m:expr, $f:ident($($arg:expr),*)) => {
        match $m {
            1 => $f::<1>($($arg),*),
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            _ => $f::<6>($($arg),*),
        }
    };
}

#[target_feature(enable = "avx512f")]
#[inline]
fn splat(v: f32) -> __m512 {
    _mm512_set1_ps(v)
}

/// `e^x`, `x` clamped to `[-87, 88]`.
#[target_feature(enable = "avx512f")]
#[inline]
fn exp(x: __m512) -> __m512 {
    let x = _mm512_min_ps(_mm512_max_ps(x, splat(-87.0)), splat(88.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, splat(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, splat(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, splat(-2.121_944_4e-4), r);
    let mut p = splat(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm512_fmadd_ps(p, r, splat(c));
    }
    _mm512_scalef_ps(p, n)
}

/// `1 / d` for `d ≥ 1`: `vrcp14ps` and one Newton step.
#[target_feature(enable = "avx512f")]
#[inline]
fn recip(d: __m512) -> __m512 {
    let y = _mm512_rcp14_ps(d);
    let e = _mm512_fnmadd_ps(d, y, splat(1.0));
    _mm512_fmadd_ps(y, e, y)
}

#[target_feature(enable = "avx512f")]
#[inline]
fn sigmoid(x: __m512) -> __m512 {
    recip(_mm512_add_ps(
        splat(1.0),
        exp(_mm512_sub_ps(_mm512_setzero_ps(), x)),
    ))
}

/// `tanh x = 1 − 2 / (e^{2x} + 1)`.
#[target_feature(enable = "avx512f")]
#[inline]
fn tanh(x: __m512) -> __m512 {
    let d = _mm512_add_ps(exp(_mm512_add_ps(x, x)), splat(1.0));
    _mm512_fnmadd_ps(splat(2.0), recip(d), splat(1.0))
}

/// The lanes of units `j..j + 16` below `h`.
fn lanes(j: usize, h: usize) -> __mmask16 {
    let n = h.saturating_sub(j).min(L);
    ((1u32 << n) - 1) as __mmask16
}

/// What the forward phases of a block read and write: pointers into the
/// operands, the output and the block's shared working memory (`h` twice,
/// `c` and the pre-computed input projections), which the parts of a
/// phase write at disjoint hidden units.
#[derive(Clone, Copy)]
struct FwdStep {
    seqs: Seqs,
    output: LstmOutput,
    /// Output elements per position.
    per: usize,
    /// The position of the output's first row.
    base: usize,
    /// Padded hidden size (a multiple of 16).
    hp: usize,
    /// Input features `D`.
    d: usize,
    /// The block's first sequence and its sequence count.
    seq0: usize,
    nb: usize,
    /// Steps whose input projections one window holds.
    tw: usize,
    /// The packed `W_ih` and `W_hh` panels.
    ih: *const f32,
    hh: *const f32,
    /// `b_ih + b_hh` as panels (64 per 16 units).
    bias: *const f32,
    /// `w_ci`, `w_cf`, `w_co`, `hp` apart (zeros without peepholes).
    peep: *const f32,
    x: *const f32,
    out: *mut f32,
    /// `h` twice (`SEQ_BLOCK·hp` each), `c` and the projections of the
    /// window (`nb·tw` rows of `4·hp`: sequence-major, then step).
    hbuf: *mut f32,
    cbuf: *mut f32,
    pre: *mut f32,
}

// SAFETY: the parts of a phase write disjoint hidden units of `h`, `c`,
// the projections and the output (`forward_in`), and a phase reads what
// earlier phases wrote only after they ended (`phases::run`).
unsafe impl Send for FwdStep {}
// SAFETY: as above.
unsafe impl Sync for FwdStep {}

/// The forward recurrence of `piece` into `out`, split by hidden units
/// over up to `k.threads` threads of the pool it runs on.
///
/// # Safety
/// The CPU has AVX-512F ([`available`]); `a` holds the step's checked
/// operands and `piece` fits `out` (`LstmForward::piece`).
pub(super) unsafe fn forward(k: &LstmForward, a: &FwdArgs, piece: &Piece, out: &mut [f32]) {
    let h = k.seqs.hidden;
    let hp = h.div_ceil(L) * L;
    let nb = SEQ_BLOCK.min(piece.seqs.len()).max(1);
    let tw = window(nb, hp, k.seqs.steps);
    let len = 3 * hp + 3 * SEQ_BLOCK * hp + nb * tw * 4 * hp;
    with_work(len, |work| unsafe {
        forward_in(k, a, piece, out, work, tw)
    });
}

/// Steps of a window: as many as keep the projections of `nb` sequences
/// within [`PRE_BUDGET`] floats (at least 1, at most `steps`).
fn window(nb: usize, hp: usize, steps: usize) -> usize {
    (PRE_BUDGET / (nb * 4 * hp).max(1)).clamp(1, steps.max(1))
}

#[target_feature(enable = "avx512f")]
unsafe fn forward_in(
    k: &LstmForward,
    a: &FwdArgs,
    piece: &Piece,
    out: &mut [f32],
    work: &mut [f32],
    tw: usize,
) {
    let q = k.seqs;
    let h = q.hidden;
    let nc = h.div_ceil(L);
    let hp = nc * L;
    let (peep, rest) = work.split_at_mut(3 * hp);
    let (hbuf, rest) = rest.split_at_mut(2 * SEQ_BLOCK * hp);
    let (cbuf, pre) = rest.split_at_mut(SEQ_BLOCK * hp);
    peep.fill(0.0);
    if let Some(p) = a.peep {
        for (m, w) in p.iter().enumerate() {
            peep[m * hp..m * hp + h].copy_from_slice(&w[..h]);
        }
    }
    let parts = k.threads.min(phases::pool_threads()).min(nc).max(1);
    let mut s = FwdStep {
        seqs: q,
        output: k.output,
        per: k.per(),
        base: piece.base,
        hp,
        d: k.input,
        seq0: 0,
        nb: 0,
        tw,
        ih: a.packed.as_ptr(),
        hh: a.packed.as_ptr().add(nc * k.input * 4 * L),
        bias: a.packed.as_ptr().add(nc * (k.input + h) * 4 * L),
        peep: peep.as_ptr(),
        x: a.x.as_ptr(),
        out: out.as_mut_ptr(),
        hbuf: hbuf.as_mut_ptr(),
        cbuf: cbuf.as_mut_ptr(),
        pre: pre.as_mut_ptr(),
    };
    let (first, end) = (piece.seqs.start, piece.seqs.end);
    let windows = q.steps.div_ceil(tw);
    let mut start = first;
    while start < end {
        s.nb = SEQ_BLOCK.min(end - start);
        s.seq0 = start;
        hbuf.fill(0.0);
        cbuf.fill(0.0);
        // Per window: its projections, then its steps.
        let s = s;
        phases::run(q.steps + windows, parts, |phase, part| {
            let (w, r) = (phase / (tw + 1), phase % (tw + 1));
            let units = nc * part / parts..nc * (part + 1) / parts;
            // SAFETY: the CPU has AVX-512F; part `part` writes units
            // `units` only, and phases run in order (see `FwdStep`).
            unsafe {
                if r == 0 {
                    project(&s, w * tw, units);
                } else {
                    step(&s, w * tw, w * tw + r - 1, units);
                }
            }
        });
        if k.output == LstmOutput::Last {
            let last = &hbuf[(q.steps % 2) * SEQ_BLOCK * hp..];
            for b in 0..s.nb {
                let at = (start + b - first) * h;
                out[at..at + h].copy_from_slice(&last[b * hp..b * hp + h]);
            }
        }
        start += s.nb;
    }
}

/// The input projections `b + x_t · W_ihᵀ` of the block's sequences at
/// the steps of the window starting at `t0`, for the panels `units`, in
/// tiles of up to [`MR`] positions (each panel stays in L1 across them).
#[target_feature(enable = "avx512f")]
unsafe fn project(s: &FwdStep, t0: usize, units: std::ops::Range<usize>) {
    let q = s.seqs;
    let steps = s.tw.min(q.steps - t0);
    let total = s.nb * steps;
    for c in units {
        let mut i = 0;
        while i < total {
            let m = MR.min(total - i);
            by_rows!(m, project_tile(s, c, t0, steps, i));
            i += m;
        }
    }
}

/// Positions `i..i + M` of the window (sequence-major over `steps`
/// steps from `t0`), panel `c`, into the projections.
#[target_feature(enable = "avx512f")]
unsafe fn project_tile<const M: usize>(s: &FwdStep, c: usize, t0: usize, steps: usize, i: usize) {
    let at = |m: usize| ((i + m) / steps, (i + m) % steps);
    let xs: [*const f32; M] = std::array::from_fn(|m| {
        let (b, tt) = at(m);
        s.x.add(s.seqs.row(s.seq0 + b, t0 + tt) * s.d)
    });
    let bias: [__m512; 4] = std::array::from_fn(|g| _mm512_loadu_ps(s.bias.add((c * 4 + g) * L)));
    let mut acc = [bias; M];
    accumulate(&mut acc, s.ih.add(c * s.d * 4 * L), xs, s.d);
    for (m, am) in acc.iter().enumerate() {
        let (b, tt) = at(m);
        let dst = s.pre.add((b * s.tw + tt) * 4 * s.hp + c * 4 * L);
        for (g, v) in am.iter().enumerate() {
            _mm512_storeu_ps(dst.add(g * L), *v);
        }
    }
}

/// Step `t` (in the window starting at `t0`) of the block's sequences
/// for the panels `units`: tiles of up to [`MR`] sequences per panel.
#[target_feature(enable = "avx512f")]
unsafe fn step(s: &FwdStep, t0: usize, t: usize, units: std::ops::Range<usize>) {
    let hp = s.hp;
    let half = SEQ_BLOCK * hp;
    let (hprev, hnext) = if t.is_multiple_of(2) {
        (s.hbuf.cast_const(), s.hbuf.add(half))
    } else {
        (s.hbuf.add(half).cast_const(), s.hbuf)
    };
    for c in units {
        let mut b = 0;
        while b < s.nb {
            let m = MR.min(s.nb - b);
            let rows = (hprev.add(b * hp), hnext.add(b * hp), s.cbuf.add(b * hp));
            by_rows!(m, fwd_tile(s, c, b, t0, t, rows));
            b += m;
        }
    }
}

/// `acc[m][gate] += Σ_k xs[m][k] · w[k][gate]` over `n` inputs of a
/// forward panel `w` (64 floats per input). Tiles of one or two rows
/// would wait on the FMA latency with 4 or 8 accumulators, so they keep
/// a second set for the odd inputs.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn accumulate<const M: usize>(
    acc: &mut [[__m512; 4]; M],
    w: *const f32,
    xs: [*const f32; M],
    n: usize,
) {
    let step = |acc: &mut [[__m512; 4]; M], kk: usize| {
        let wk = w.add(kk * 4 * L);
        let wv: [__m512; 4] = std::array::from_fn(|g| _mm512_loadu_ps(wk.add(g * L)));
        for (m, am) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_ps(*xs[m].add(kk));
            for (v, w) in am.iter_mut().zip(&wv) {
                *v = _mm512_fmadd_ps(x, *w, *v);
            }
        }
    };
    let mut kk = 0;
    if M <= 2 {
        let mut odd = [[_mm512_setzero_ps(); 4]; M];
        while kk + 1 < n {
            step(acc, kk);
            step(&mut odd, kk + 1);
            kk += 2;
        }
        for (am, om) in acc.iter_mut().zip(&odd) {
            for (v, o) in am.iter_mut().zip(om) {
                *v = _mm512_add_ps(*v, *o);
            }
        }
    }
    while kk < n {
        step(acc, kk);
        kk += 1;
    }
}

/// One forward tile: block sequences `b0..b0 + M`, units `16c..16c + 16`
/// at step `t` of the window starting at `t0`. `rows` are `h_{t−1}`,
/// `h_t` and `c` at the tile's first row (rows `s.hp` apart).
#[target_feature(enable = "avx512f")]
unsafe fn fwd_tile<const M: usize>(
    s: &FwdStep,
    c: usize,
    b0: usize,
    t0: usize,
    t: usize,
    (hprev, hnext, cs): (*const f32, *mut f32, *mut f32),
) {
    let q = s.seqs;
    let (h, hp) = (q.hidden, s.hp);
    let j0 = c * L;
    let mask = lanes(j0, h);
    let rows: [usize; M] = std::array::from_fn(|m| q.row(s.seq0 + b0 + m, t));
    let mut acc: [[__m512; 4]; M] = std::array::from_fn(|m| {
        let g = s.pre.add(((b0 + m) * s.tw + t - t0) * 4 * hp + c * 4 * L);
        std::array::from_fn(|k| _mm512_loadu_ps(g.add(k * L)))
    });
    if t > 0 {
        let hs: [*const f32; M] = std::array::from_fn(|m| hprev.add(m * hp));
        accumulate(&mut acc, s.hh.add(c * h * 4 * L), hs, h);
    }
    let ci = _mm512_loadu_ps(s.peep.add(j0));
    let cf = _mm512_loadu_ps(s.peep.add(hp + j0));
    let co = _mm512_loadu_ps(s.peep.add(2 * hp + j0));
    for (m, am) in acc.iter().enumerate() {
        let cp_at = cs.add(m * hp + j0);
        let cp = _mm512_loadu_ps(cp_at);
        let i = sigmoid(_mm512_fmadd_ps(ci, cp, am[0]));
        let f = sigmoid(_mm512_fmadd_ps(cf, cp, am[1]));
        let g = tanh(am[2]);
        let cn = _mm512_fmadd_ps(f, cp, _mm512_mul_ps(i, g));
        let o = sigmoid(_mm512_fmadd_ps(co, cn, am[3]));
        let hn = _mm512_mul_ps(o, tanh(cn));
        _mm512_storeu_ps(cp_at, cn);
        _mm512_storeu_ps(hnext.add(m * hp + j0), hn);
        let d = s.out.add((rows[m] - s.base) * s.per + j0);
        match s.output {
            LstmOutput::Last => {}
            LstmOutput::Sequence => _mm512_mask_storeu_ps(d, mask, hn),
            LstmOutput::State => {
                let hv = _mm512_loadu_ps(hprev.add(m * hp + j0));
                for (k, v) in [i, f, g, o, cn, cp, hv].into_iter().enumerate() {
                    _mm512_mask_storeu_ps(d.add(k * h), mask, v);
                }
            }
        }
    }
}

/// What a backward tile reads and writes, besides its own rows of `dc`.
struct BwdStep {
    seqs: Seqs,
    /// The position of the output's first row.
    base: usize,
    /// Hidden size padded to a multiple of 64.
    hp: usize,
    /// The time step.
    t: usize,
    packed: *const f32,
    /// `w_ci`, `w_cf`, `w_co`, `hp` apart (zeros without peepholes).
    peep: *const f32,
    state: *const f32,
    dseq: Option<*const f32>,
    dlast: Option<*const f32>,
    out: *mut f32,
}

/// Backpropagation through time of `piece` into `out`.
///
/// # Safety
/// The CPU has AVX-512F ([`available`]); `a` holds the step's checked
/// operands and `piece` fits `out` (`LstmBackward::piece`).
pub(super) unsafe fn backward(k: &LstmBackward, a: &BwdArgs, piece: &Piece, out: &mut [f32]) {
    let h = k.seqs.hidden;
    let hp = backward_units(h);
    let len = 3 * hp + SEQ_BLOCK * hp;
    with_work(len, |work| unsafe { backward_in(k, a, piece, out, work) });
}

#[target_feature(enable = "avx512f")]
unsafe fn backward_in(
    k: &LstmBackward,
    a: &BwdArgs,
    piece: &Piece,
    out: &mut [f32],
    work: &mut [f32],
) {
    let q = k.seqs;
    let h = q.hidden;
    let hp = backward_units(h);
    let (peep, dc) = work.split_at_mut(3 * hp);
    peep.fill(0.0);
    if let Some(p) = a.peep {
        for (m, w) in p.iter().enumerate() {
            peep[m * hp..m * hp + h].copy_from_slice(&w[..h]);
        }
    }
    let mut s = BwdStep {
        seqs: q,
        base: piece.base,
        hp,
        t: 0,
        packed: a.packed.as_ptr(),
        peep: peep.as_ptr(),
        state: a.state.as_ptr(),
        dseq: a.dseq.map(<[f32]>::as_ptr),
        dlast: a.dlast.map(<[f32]>::as_ptr),
        out: out.as_mut_ptr(),
    };
    let end = piece.seqs.end;
    let mut start = piece.seqs.start;
    while start < end {
        let nb = SEQ_BLOCK.min(end - start);
        dc.fill(0.0);
        for t in (0..q.steps).rev() {
            s.t = t;
            for cg in 0..hp / (4 * L) {
                let mut b = 0;
                while b < nb {
                    let m = MR.min(nb - b);
                    let dcs = dc.as_mut_ptr().add(b * hp);
                    by_rows!(m, bwd_tile(&s, cg, start + b, dcs));
                    b += m;
                }
            }
        }
        start += nb;
    }
}

/// One backward tile: sequences `seq0..seq0 + M`, units `64cg..64cg + 64`
/// at step `s.t`. `dcs` points at the tile's first row of `dc` (rows
/// `s.hp` apart).
#[target_feature(enable = "avx512f")]
unsafe fn bwd_tile<const M: usize>(s: &BwdStep, cg: usize, seq0: usize, dcs: *mut f32) {
    let q = s.seqs;
    let (h, g4, hp) = (q.hidden, 4 * q.hidden, s.hp);
    let rows: [usize; M] = std::array::from_fn(|m| q.row(seq0 + m, s.t));
    let mut acc = [[_mm512_setzero_ps(); 4]; M];
    if s.t + 1 < q.steps {
        let next: [*const f32; M] = std::array::from_fn(|m| {
            s.out
                .add((q.row(seq0 + m, s.t + 1) - s.base) * g4)
                .cast_const()
        });
        let w = s.packed.add(cg * 4 * g4 * L);
        for kk in 0..g4 {
            let wv: [__m512; 4] =
                std::array::from_fn(|v| _mm512_loadu_ps(w.add((v * g4 + kk) * L)));
            for (m, am) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*next[m].add(kk));
                for (v, w) in am.iter_mut().zip(&wv) {
                    *v = _mm512_fmadd_ps(x, *w, *v);
                }
            }
        }
    }
    let one = splat(1.0);
    for (m, am) in acc.iter().enumerate() {
        let r = rows[m];
        let st = s.state.add(r * STATE_WIDTH * h);
        let d = s.out.add((r - s.base) * g4);
        for (v, &dh_acc) in am.iter().enumerate() {
            let j = (cg * 4 + v) * L;
            let mask = lanes(j, h);
            if mask == 0 {
                continue;
            }
            let mut dh = dh_acc;
            if let Some(p) = s.dseq {
                dh = _mm512_add_ps(dh, _mm512_maskz_loadu_ps(mask, p.add(r * h + j)));
            }
            if let (Some(p), true) = (s.dlast, s.t + 1 == q.steps) {
                dh = _mm512_add_ps(dh, _mm512_maskz_loadu_ps(mask, p.add((seq0 + m) * h + j)));
            }
            let ld = |k: usize| _mm512_maskz_loadu_ps(mask, st.add(k * h + j));
            let (i, f, g, o, c, cp) = (ld(0), ld(1), ld(2), ld(3), ld(4), ld(5));
            let ci = _mm512_loadu_ps(s.peep.add(j));
            let cf = _mm512_loadu_ps(s.peep.add(hp + j));
            let co = _mm512_loadu_ps(s.peep.add(2 * hp + j));
            let dc_at = dcs.add(m * hp + j);
            let tc = tanh(c);
            let dho = _mm512_mul_ps(dh, o);
            let dao = _mm512_mul_ps(_mm512_mul_ps(dho, tc), _mm512_sub_ps(one, o));
            let dct = _mm512_fmadd_ps(dho, _mm512_fnmadd_ps(tc, tc, one), _mm512_loadu_ps(dc_at));
            let dct = _mm512_fmadd_ps(dao, co, dct);
            let dai = _mm512_mul_ps(
                _mm512_mul_ps(dct, g),
                _mm512_mul_ps(i, _mm512_sub_ps(one, i)),
            );
            let dag = _mm512_mul_ps(_mm512_mul_ps(dct, i), _mm512_fnmadd_ps(g, g, one));
            let daf = _mm512_mul_ps(
                _mm512_mul_ps(dct, cp),
                _mm512_mul_ps(f, _mm512_sub_ps(one, f)),
            );
            let dcn = _mm512_fmadd_ps(dai, ci, _mm512_mul_ps(dct, f));
            _mm512_storeu_ps(dc_at, _mm512_fmadd_ps(daf, cf, dcn));
            for (k, v) in [dai, daf, dag, dao].into_iter().enumerate() {
                _mm512_mask_storeu_ps(d.add(k * h + j), mask, v);
            }
        }
    }
}
