//! The portable LSTM kernels, for CPUs without AVX-512: per block of
//! [`BLOCK`] sequences and time step, runtime GEMMs for the products
//! (`x_t · W_ihᵀ + h_{t-1} · W_hhᵀ` forward, `da · W_hh` backward) and the cell
//! loops written so they vectorise at the baseline target (polynomial
//! `exp`, no library calls).

use super::pack::bias_at;
use super::{with_work, BwdArgs, FwdArgs, LstmBackward, LstmForward, LstmOutput, Piece};
use super::{BLOCK, STATE_WIDTH};
use crate::gemm::{sgemm, Strides};

/// `e^x` without a library call, so the cell loops vectorise: `2^n ·
/// e^r` with `n = round(x·log2 e)`, `r = x − n·ln 2` (Cody-Waite split of
/// ln 2), `e^r` by its degree-6 Taylor polynomial (`|r| ≤ 0.35`: relative
/// error below 2e-7). `x` is clamped to `[-87, 88]`, where `2^n` is a
/// normal f32.
#[inline(always)]
fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E;
    let n = (t + 0.5f32.copysign(t)) as i32;
    let nf = n as f32;
    let r = x - nf * 0.693_359_4 + nf * 2.121_944_4e-4;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    f32::from_bits(((n + 127) as u32) << 23) * p
}

#[inline(always)]
fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + exp(-v))
}

/// `tanh v = 1 − 2 / (e^{2v} + 1)` (absolute error about 1e-7).
#[inline(always)]
fn tanh(v: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * v) + 1.0)
}

/// The forward recurrence of `piece` into `out`.
pub(super) fn forward(
    k: &LstmForward,
    a: &FwdArgs,
    piece: &Piece,
    out: &mut [f32],
) -> Result<(), String> {
    let q = k.seqs;
    let (h, g4, d) = (q.hidden, 4 * q.hidden, k.input);
    let per = k.per();
    let (range, base) = (piece.seqs.clone(), piece.base);
    let first = range.start;
    with_work(BLOCK * (g4 + 2 * h) + g4 + 3 * h, |work| {
        let (gates, rest) = work.split_at_mut(BLOCK * g4);
        let (hs, rest) = rest.split_at_mut(BLOCK * h);
        let (cs, rest) = rest.split_at_mut(BLOCK * h);
        let (bias, zeros) = rest.split_at_mut(g4);
        for (u, b) in bias.iter_mut().enumerate() {
            *b = a.packed[bias_at(h, d, u)];
        }
        zeros.fill(0.0);
        let (ci, cf, co) = match a.peep {
            Some([ci, cf, co]) => (ci, cf, co),
            None => (&zeros[..h], &zeros[h..2 * h], &zeros[2 * h..]),
        };
        let mut start = range.start;
        while start < range.end {
            let nb = BLOCK.min(range.end - start);
            hs.fill(0.0);
            cs.fill(0.0);
            for t in 0..q.steps {
                sgemm(
                    nb,
                    g4,
                    d,
                    1.0,
                    &a.x[q.row(start, t) * d..],
                    Strides::row_major(q.seq_stride() * d),
                    a.w_ih,
                    Strides::transposed(d),
                    0.0,
                    gates,
                    g4,
                    1,
                )
                .map_err(|e| e.to_string())?;
                if t > 0 {
                    sgemm(
                        nb,
                        g4,
                        h,
                        1.0,
                        hs,
                        Strides::row_major(h),
                        a.w_hh,
                        Strides::transposed(h),
                        1.0,
                        gates,
                        g4,
                        1,
                    )
                    .map_err(|e| e.to_string())?;
                }
                for b in 0..nb {
                    let s = start + b;
                    let r = q.row(s, t);
                    let gr = &mut gates[b * g4..(b + 1) * g4];
                    for (v, &y) in gr.iter_mut().zip(&*bias) {
                        *v += y;
                    }
                    let hb = &mut hs[b * h..(b + 1) * h];
                    let cb = &mut cs[b * h..(b + 1) * h];
                    let mut dst = match k.output {
                        LstmOutput::Last => None,
                        _ => {
                            let (at, len) = ((r - base) * per, out.len());
                            Some(out.get_mut(at..at + per).ok_or_else(|| {
                                format!("position {r} is past the output of {len}")
                            })?)
                        }
                    };
                    if let (Some(d), LstmOutput::State) = (&mut dst, k.output) {
                        d[5 * h..6 * h].copy_from_slice(cb);
                        d[6 * h..].copy_from_slice(hb);
                    }
                    cell(gr, cb, hb, (ci, cf, co));
                    match (dst, k.output) {
                        (Some(d), LstmOutput::State) => {
                            d[..g4].copy_from_slice(gr);
                            d[g4..5 * h].copy_from_slice(cb);
                        }
                        (Some(d), _) => d.copy_from_slice(hb),
                        (None, _) => {}
                    }
                }
            }
            if k.output == LstmOutput::Last {
                let at = (start - first) * h;
                out[at..at + nb * h].copy_from_slice(&hs[..nb * h]);
            }
            start += nb;
        }
        Ok(())
    })
}

/// One cell update of one sequence: `gates` holds the four
/// pre-activations (without peephole terms) and becomes the activations
/// `(i, f, g, o)`; `c` and `h` go from step `t − 1` to `t`. Every slice is
/// cut to `H` first, so the loop has no bounds checks and vectorises.
#[inline(always)]
fn cell(gates: &mut [f32], c: &mut [f32], h: &mut [f32], (ci, cf, co): (&[f32], &[f32], &[f32])) {
    let n = h.len();
    let (ai, rest) = gates.split_at_mut(n);
    let (af, rest) = rest.split_at_mut(n);
    let (ag, ao) = rest.split_at_mut(n);
    let (ao, c, ci, cf, co) = (&mut ao[..n], &mut c[..n], &ci[..n], &cf[..n], &co[..n]);
    for j in 0..n {
        let cp = c[j];
        let i = sigmoid(ai[j] + ci[j] * cp);
        let f = sigmoid(af[j] + cf[j] * cp);
        let g = tanh(ag[j]);
        let cn = f * cp + i * g;
        let o = sigmoid(ao[j] + co[j] * cn);
        ai[j] = i;
        af[j] = f;
        ag[j] = g;
        ao[j] = o;
        c[j] = cn;
        h[j] = o * tanh(cn);
    }
}

/// Backpropagation through time of `piece` into `out` (see
/// [`LstmBackward`] for the equations).
pub(super) fn backward(
    k: &LstmBackward,
    a: &BwdArgs,
    piece: &Piece,
    out: &mut [f32],
) -> Result<(), String> {
    let q = k.seqs;
    let (h, g4) = (q.hidden, 4 * q.hidden);
    let (range, base) = (piece.seqs.clone(), piece.base);
    let a_rows = Strides::row_major(q.seq_stride() * g4);
    with_work(2 * BLOCK * h + 3 * h, |work| {
        let (dh, rest) = work.split_at_mut(BLOCK * h);
        let (dc, zeros) = rest.split_at_mut(BLOCK * h);
        zeros.fill(0.0);
        let (ci, cf, co) = match a.peep {
            Some([ci, cf, co]) => (ci, cf, co),
            None => (&zeros[..h], &zeros[h..2 * h], &zeros[2 * h..]),
        };
        let mut start = range.start;
        while start < range.end {
            let nb = BLOCK.min(range.end - start);
            dh.fill(0.0);
            dc.fill(0.0);
            for t in (0..q.steps).rev() {
                for b in 0..nb {
                    let s = start + b;
                    let r = q.row(s, t);
                    let st = &a.state[r * STATE_WIDTH * h..(r + 1) * STATE_WIDTH * h];
                    let dhb = &mut dh[b * h..(b + 1) * h];
                    let dcb = &mut dc[b * h..(b + 1) * h];
                    if let Some(d) = a.dseq {
                        dhb.iter_mut()
                            .zip(&d[r * h..(r + 1) * h])
                            .for_each(|(v, x)| *v += x);
                    }
                    if let (Some(d), true) = (a.dlast, t + 1 == q.steps) {
                        dhb.iter_mut()
                            .zip(&d[s * h..(s + 1) * h])
                            .for_each(|(v, x)| *v += x);
                    }
                    let (at, len) = ((r - base) * g4, out.len());
                    let ga = out
                        .get_mut(at..at + g4)
                        .ok_or_else(|| format!("position {r} is past the output of {len}"))?;
                    let sl = |k: usize| &st[k * h..(k + 1) * h];
                    let (si, sf, sg, so, sc, scp) = (sl(0), sl(1), sl(2), sl(3), sl(4), sl(5));
                    let (gi, rest) = ga.split_at_mut(h);
                    let (gf, rest) = rest.split_at_mut(h);
                    let (gg, go) = rest.split_at_mut(h);
                    let go = &mut go[..h];
                    let (ci, cf, co) = (&ci[..h], &cf[..h], &co[..h]);
                    for j in 0..h {
                        let (i, f, g, o, c, cp) = (si[j], sf[j], sg[j], so[j], sc[j], scp[j]);
                        let tc = tanh(c);
                        let dhj = dhb[j];
                        let dao = dhj * tc * o * (1.0 - o);
                        let dct = dcb[j] + dhj * o * (1.0 - tc * tc) + dao * co[j];
                        let dai = dct * g * i * (1.0 - i);
                        let dag = dct * i * (1.0 - g * g);
                        let daf = dct * cp * f * (1.0 - f);
                        dcb[j] = dct * f + dai * ci[j] + daf * cf[j];
                        gi[j] = dai;
                        gf[j] = daf;
                        gg[j] = dag;
                        go[j] = dao;
                    }
                }
                if t > 0 {
                    let at = (q.row(start, t) - base) * g4;
                    sgemm(
                        nb,
                        h,
                        g4,
                        1.0,
                        &out[at..],
                        a_rows,
                        a.w_hh,
                        Strides::row_major(h),
                        0.0,
                        dh,
                        h,
                        1,
                    )
                    .map_err(|e| e.to_string())?;
                }
            }
            start += nb;
        }
        Ok(())
    })
}
