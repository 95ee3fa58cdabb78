//! Row kernels ([`crate::plan::Rows`] steps) of the recurrent and lookup
//! layers: the LSTM recurrence forward ([`LstmForward`]) and backward
//! ([`LstmBackward`]), the embedding lookup ([`Gather`]) and its weight
//! gradient ([`ScatterAdd`]).
//!
//! **Ids.** Word ids enter a plan as f32 *values* (the host converts an
//! i64 id `k` to `k as f32`, exact below 2^24, and refuses larger ones),
//! the encoding class labels and data-set columns already use, so the
//! same buffers feed inference and training. A kernel reading an id checks
//! it is a whole number inside the table and returns an error naming the
//! layer otherwise; nothing reads out of bounds.
//!
//! **LSTM.** Cell equations, gate order (i, f, g, o) and peepholes are
//! those of `compiler/src/ops/rnn.rs`. The input projection `x · W_ihᵀ`
//! of every time step is one GEMM done by the plan before the recurrence
//! (input 0 here, `[positions, 4H]`); the recurrence adds both biases and,
//! per step, `h_{t-1} · W_hhᵀ` for a block of [`BLOCK`] sequences at once
//! (one GEMM per block and step, so `W_hh` is read once per block rather
//! than once per sequence). Rows of input-shaped tensors are positions
//! `(sequence, step)`: `s·T + t` batch-first, `t·S + s` time-first.
//!
//! The training state ([`LstmOutput::State`]) stores per position
//! `(i, f, g, o, c_t, c_{t-1}, h_{t-1})`, `7H` values: the backward reads
//! the gate activations instead of recomputing them, and `c_{t-1}` and
//! `h_{t-1}` sit on the position whose gradients they multiply (peephole
//! and `W_hh` gradients are then plain products over positions).
//!
//! Working memory (a block's gates, `h`, `c` and their gradients) lives
//! in a per-thread buffer that grows to the largest block it has served,
//! so runs after the first allocate nothing.

use crate::gemm::{sgemm, Strides};
use crate::plan::RowKernel;
use std::cell::RefCell;

/// Sequences whose recurrent products run as one GEMM.
pub const BLOCK: usize = 16;

/// Elements of the training state per position: `7H`.
pub const STATE_WIDTH: usize = 7;

thread_local! {
    static WORK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's working buffer of at least `len` elements.
fn with_work<T>(len: usize, f: impl FnOnce(&mut [f32]) -> T) -> T {
    WORK.with(|w| {
        let mut w = w.borrow_mut();
        if w.len() < len {
            w.resize(len, 0.0);
        }
        f(&mut w[..len])
    })
}

/// The id in the f32 word `v` if it is a whole number below `vocab`.
fn table_row(v: f32, vocab: usize) -> Option<usize> {
    (v >= 0.0 && v.fract() == 0.0 && (v as usize) < vocab).then_some(v as usize)
}

/// The error for a bad id `v` at position `at` of layer `name`.
fn bad_id(name: &str, v: f32, at: usize, vocab: usize) -> String {
    format!("`{name}`: id {v} at position {at} is not a row of the table of {vocab} rows")
}

/// `inputs[k]` holding at least `len` elements, or an error naming `what`.
fn operand<'a>(
    inputs: &[&'a [f32]],
    k: usize,
    len: usize,
    what: &str,
) -> Result<&'a [f32], String> {
    let b = inputs.get(k).copied().unwrap_or(&[]);
    b.get(..len)
        .ok_or_else(|| format!("{what} holds {} of {len} elements", b.len()))
}

/// The sequences of an LSTM step: sizes and how positions are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seqs {
    /// Hidden size `H`.
    pub hidden: usize,
    /// Time steps `T` (at least 1).
    pub steps: usize,
    /// Sequences `S` (all leading dims but time).
    pub seqs: usize,
    /// Positions `s·T + t` when true, `t·S + s` when false.
    pub batch_first: bool,
}

impl Seqs {
    /// The row of position `(s, t)`.
    pub fn row(&self, s: usize, t: usize) -> usize {
        if self.batch_first {
            s * self.steps + t
        } else {
            t * self.seqs + s
        }
    }

    /// Distance in rows between sequences `s` and `s + 1` at one step.
    fn seq_stride(&self) -> usize {
        if self.batch_first {
            self.steps
        } else {
            1
        }
    }

    /// `(rows, width)` of a row step writing `per` elements per position:
    /// one row per sequence batch-first; time-first positions of one
    /// sequence are not contiguous, so the step is one row (one thread).
    pub fn step_rows(&self, per: usize) -> (usize, usize) {
        if self.batch_first {
            (self.seqs, self.steps * per)
        } else {
            (1, self.seqs * self.steps * per)
        }
    }

    /// For a piece of a step laid out by [`Seqs::step_rows`] starting at
    /// step row `first` with `len` output elements: its sequences and the
    /// row of its first element.
    fn piece(&self, first: usize, len: usize, per: usize) -> (std::ops::Range<usize>, usize) {
        if self.batch_first {
            let n = len / (self.steps * per).max(1);
            (first..first + n, first * self.steps)
        } else {
            (0..self.seqs, 0)
        }
    }
}

/// What an [`LstmForward`] step writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LstmOutput {
    /// The last hidden state per sequence, `[S, H]` (one row each).
    Last,
    /// The hidden state at every position (rows by [`Seqs::step_rows`]).
    Sequence,
    /// The training state, [`STATE_WIDTH`]`·H` per position.
    State,
}

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

/// The LSTM recurrence from zero state. Inputs: the input projection
/// `[positions, 4H]` (without biases), `W_hh [4H, H]`, `b_ih [4H]`,
/// `b_hh [4H]`, then with `peephole` `w_ci`, `w_cf`, `w_co` (`[H]` each).
#[derive(Clone, Debug)]
pub struct LstmForward {
    /// Sizes and layout.
    pub seqs: Seqs,
    /// Whether inputs 4..7 are peephole weights.
    pub peephole: bool,
    /// What the step writes.
    pub output: LstmOutput,
}

impl RowKernel for LstmForward {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let q = self.seqs;
        let (h, g4) = (q.hidden, 4 * q.hidden);
        let positions = q.seqs * q.steps;
        let proj = operand(inputs, 0, positions * g4, "the input projection")?;
        let w_hh = operand(inputs, 1, g4 * h, "weight_hh")?;
        let b_ih = operand(inputs, 2, g4, "bias_ih")?;
        let b_hh = operand(inputs, 3, g4, "bias_hh")?;
        let peep = if self.peephole {
            Some((
                operand(inputs, 4, h, "weight_ci")?,
                operand(inputs, 5, h, "weight_cf")?,
                operand(inputs, 6, h, "weight_co")?,
            ))
        } else {
            None
        };
        let per = match self.output {
            LstmOutput::State => STATE_WIDTH * h,
            _ => h,
        };
        let (range, base) = match self.output {
            LstmOutput::Last => (first..first + out.len() / h.max(1), 0),
            _ => q.piece(first, out.len(), per),
        };
        with_work(BLOCK * (g4 + 2 * h) + g4 + 3 * h, |work| {
            let (gates, rest) = work.split_at_mut(BLOCK * g4);
            let (hs, rest) = rest.split_at_mut(BLOCK * h);
            let (cs, rest) = rest.split_at_mut(BLOCK * h);
            let (bias, zeros) = rest.split_at_mut(g4);
            for ((b, &x), &y) in bias.iter_mut().zip(b_ih).zip(b_hh) {
                *b = x + y;
            }
            zeros.fill(0.0);
            let (ci, cf, co) = match peep {
                Some(p) => p,
                None => (&zeros[..h], &zeros[h..2 * h], &zeros[2 * h..]),
            };
            let mut start = range.start;
            while start < range.end {
                let nb = BLOCK.min(range.end - start);
                hs.fill(0.0);
                cs.fill(0.0);
                for t in 0..q.steps {
                    if t == 0 {
                        gates.fill(0.0);
                    } else {
                        sgemm(
                            nb,
                            g4,
                            h,
                            1.0,
                            hs,
                            Strides::row_major(h),
                            w_hh,
                            Strides::transposed(h),
                            0.0,
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
                        for ((a, &x), &y) in
                            gr.iter_mut().zip(&proj[r * g4..(r + 1) * g4]).zip(&*bias)
                        {
                            *a += x + y;
                        }
                        let hb = &mut hs[b * h..(b + 1) * h];
                        let cb = &mut cs[b * h..(b + 1) * h];
                        let mut dst = match self.output {
                            LstmOutput::Last => None,
                            _ => {
                                let (at, len) = ((r - base) * per, out.len());
                                Some(out.get_mut(at..at + per).ok_or_else(|| {
                                    format!("position {r} is past the output of {len}")
                                })?)
                            }
                        };
                        if let (Some(d), LstmOutput::State) = (&mut dst, self.output) {
                            d[5 * h..6 * h].copy_from_slice(cb);
                            d[6 * h..].copy_from_slice(hb);
                        }
                        cell(gr, cb, hb, (ci, cf, co));
                        match (dst, self.output) {
                            (Some(d), LstmOutput::State) => {
                                d[..g4].copy_from_slice(gr);
                                d[g4..5 * h].copy_from_slice(cb);
                            }
                            (Some(d), _) => d.copy_from_slice(hb),
                            (None, _) => {}
                        }
                    }
                }
                if self.output == LstmOutput::Last {
                    let at = (start - first) * h;
                    out[at..at + nb * h].copy_from_slice(&hs[..nb * h]);
                }
                start += nb;
            }
            Ok(())
        })
    }
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

/// Backpropagation through time: from the training state
/// ([`LstmOutput::State`]) and the gradients of the hidden states, the
/// gradients of the gate pre-activations `[positions, 4H]` (gate order
/// i, f, g, o). Inputs: the state, `W_hh [4H, H]`, then the gradient of
/// the sequence output (`seq_grad`, input-shaped with `H` features), of
/// the last state (`last_grad`, `[S, H]`), and with `peephole` `w_ci`,
/// `w_cf`, `w_co`.
///
/// Per position, from `dh` (incoming plus `W_hhᵀ` of the next step's gate
/// gradients) and `dc` (from the next step):
/// `da_o = dh·tanh(c)·o(1−o)`, `dc' = dc + dh·o·(1−tanh²c) + da_o·w_co`,
/// `da_i = dc'·g·i(1−i)`, `da_g = dc'·i·(1−g²)`,
/// `da_f = dc'·c_{t−1}·f(1−f)`, and to the previous step
/// `dc ← dc'·f + da_i·w_ci + da_f·w_cf`, `dh ← da · W_hh`.
#[derive(Clone, Debug)]
pub struct LstmBackward {
    /// Sizes and layout.
    pub seqs: Seqs,
    /// Whether the peephole weights are given.
    pub peephole: bool,
    /// Whether the sequence output's gradient is given.
    pub seq_grad: bool,
    /// Whether the last state's gradient is given.
    pub last_grad: bool,
}

impl RowKernel for LstmBackward {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let q = self.seqs;
        let (h, g4) = (q.hidden, 4 * q.hidden);
        let positions = q.seqs * q.steps;
        let state = operand(inputs, 0, positions * STATE_WIDTH * h, "the LSTM state")?;
        let w_hh = operand(inputs, 1, g4 * h, "weight_hh")?;
        let mut k = 2;
        let mut next = |len: usize, what: &str| {
            k += 1;
            operand(inputs, k - 1, len, what)
        };
        let dseq = if self.seq_grad {
            Some(next(positions * h, "the sequence gradient")?)
        } else {
            None
        };
        let dlast = if self.last_grad {
            Some(next(q.seqs * h, "the last state's gradient")?)
        } else {
            None
        };
        let peep = if self.peephole {
            Some((
                next(h, "weight_ci")?,
                next(h, "weight_cf")?,
                next(h, "weight_co")?,
            ))
        } else {
            None
        };
        let (range, base) = q.piece(first, out.len(), g4);
        let a_rows = Strides::row_major(q.seq_stride() * g4);
        with_work(2 * BLOCK * h + 3 * h, |work| {
            let (dh, rest) = work.split_at_mut(BLOCK * h);
            let (dc, zeros) = rest.split_at_mut(BLOCK * h);
            zeros.fill(0.0);
            let (ci, cf, co) = match peep {
                Some(p) => p,
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
                        let st = &state[r * STATE_WIDTH * h..(r + 1) * STATE_WIDTH * h];
                        let dhb = &mut dh[b * h..(b + 1) * h];
                        let dcb = &mut dc[b * h..(b + 1) * h];
                        if let Some(d) = dseq {
                            dhb.iter_mut()
                                .zip(&d[r * h..(r + 1) * h])
                                .for_each(|(a, v)| *a += v);
                        }
                        if let (Some(d), true) = (dlast, t + 1 == q.steps) {
                            dhb.iter_mut()
                                .zip(&d[s * h..(s + 1) * h])
                                .for_each(|(a, v)| *a += v);
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
                            w_hh,
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
}

/// The last step of a sequence output (rows by [`Seqs::step_rows`] with
/// `H` per position) as `[S, H]`, one row per sequence. Input: the
/// sequence.
#[derive(Clone, Debug)]
pub struct LastStep {
    /// Sizes and layout.
    pub seqs: Seqs,
}

impl RowKernel for LastStep {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let q = self.seqs;
        let h = q.hidden;
        let seq = operand(inputs, 0, q.seqs * q.steps * h, "the sequence")?;
        for (k, row) in out.chunks_exact_mut(h.max(1)).enumerate() {
            let r = q.row(first + k, q.steps - 1);
            row.copy_from_slice(&seq[r * h..(r + 1) * h]);
        }
        Ok(())
    }
}

/// `out[r] = table[ids[r]]`: one output row per id. Inputs: the ids (f32
/// values, see the module docs) and the table `[vocab, width]`.
#[derive(Clone, Debug)]
pub struct Gather {
    /// The layer, for errors.
    pub name: String,
    /// Rows of the table.
    pub vocab: usize,
    /// Columns of the table.
    pub width: usize,
}

impl RowKernel for Gather {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let w = self.width;
        let n = out.len() / w.max(1);
        let ids = operand(inputs, 0, first + n, "the ids")?;
        let table = operand(inputs, 1, self.vocab * w, "the table")?;
        for (k, row) in out.chunks_exact_mut(w.max(1)).enumerate() {
            let at = first + k;
            let id = table_row(ids[at], self.vocab)
                .ok_or_else(|| bad_id(&self.name, ids[at], at, self.vocab))?;
            row.copy_from_slice(&table[id * w..(id + 1) * w]);
        }
        Ok(())
    }
}

/// The embedding's weight gradient: `out[v] = Σ_{r: ids[r] = v} dy[r]`
/// over `[vocab, width]`, rows at `padding` (if any) zero as in
/// `nn.Embedding`. Inputs: `dy [positions, width]` and the ids. A piece of
/// table rows scans every id and adds the positions that hit it, in
/// position order (the same sums on any thread count).
#[derive(Clone, Debug)]
pub struct ScatterAdd {
    /// The layer, for errors.
    pub name: String,
    /// Rows of the table.
    pub vocab: usize,
    /// Columns of the table.
    pub width: usize,
    /// How many ids there are.
    pub positions: usize,
    /// The padding row, which gets no gradient.
    pub padding: Option<usize>,
}

impl RowKernel for ScatterAdd {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let w = self.width;
        let dy = operand(inputs, 0, self.positions * w, "the gradient")?;
        let ids = operand(inputs, 1, self.positions, "the ids")?;
        let rows = first..first + out.len() / w.max(1);
        out.fill(0.0);
        for (at, &v) in ids.iter().enumerate() {
            let id =
                table_row(v, self.vocab).ok_or_else(|| bad_id(&self.name, v, at, self.vocab))?;
            if !rows.contains(&id) || Some(id) == self.padding {
                continue;
            }
            let dst = &mut out[(id - first) * w..(id - first + 1) * w];
            dst.iter_mut()
                .zip(&dy[at * w..(at + 1) * w])
                .for_each(|(o, g)| *o += g);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids must be whole numbers inside the table; the error names the
    /// layer, the id and its position.
    #[test]
    fn ids_outside_the_table_are_errors() {
        let g = Gather {
            name: "q_tower.emb".into(),
            vocab: 3,
            width: 2,
        };
        let table = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0];
        let mut out = [0.0; 4];
        g.rows(0, &[&[2.0, 0.0], &table], &mut out).unwrap();
        assert_eq!(out, [4.0, 5.0, 0.0, 1.0]);
        for bad in [3.0, -1.0, 0.5, f32::NAN] {
            let err = g.rows(0, &[&[0.0, bad], &table], &mut out).unwrap_err();
            assert!(
                err.contains("q_tower.emb") && err.contains("position 1") && err.contains("3 rows"),
                "{err}"
            );
        }
        let s = ScatterAdd {
            name: "emb".into(),
            vocab: 3,
            width: 1,
            positions: 3,
            padding: Some(0),
        };
        let mut dw = [9.0; 3];
        s.rows(0, &[&[1.0, 2.0, 4.0], &[1.0, 1.0, 0.0]], &mut dw)
            .unwrap();
        assert_eq!(dw, [0.0, 3.0, 0.0]);
        assert!(s
            .rows(0, &[&[1.0, 2.0, 4.0], &[1.0, 7.0, 0.0]], &mut dw)
            .is_err());
    }
}
