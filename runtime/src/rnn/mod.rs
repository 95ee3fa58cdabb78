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
//! those of `compiler/src/ops/rnn.rs`. Rows of input-shaped tensors are
//! positions `(sequence, step)`: `s·T + t` batch-first, `t·S + s`
//! time-first. Steps are parallel over sequences. Where the CPU has
//! AVX-512F the kernels of `avx512` run: the input projection, the
//! recurrent product and the cell fused in one register tile per few
//! sequences and 16 hidden units, reading the weights as [`LstmPack`]
//! laid them out once per weight load. Elsewhere the `portable` kernels
//! run one runtime GEMM per block of [`BLOCK`] sequences and step for
//! each product and vectorised cell loops.
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

use crate::plan::RowKernel;
use std::cell::RefCell;

#[cfg(target_arch = "x86_64")]
mod avx512;
mod pack;
mod phases;
mod portable;

#[cfg(test)]
mod tests;

pub use pack::{backward_len, forward_len, LstmPack, PackFor};

/// Sequences whose recurrent products run as one GEMM (portable
/// kernels).
const BLOCK: usize = 16;

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

    /// Elements a piece of sequences `seqs` whose output starts at
    /// position `base` spans, at `per` elements per position row.
    fn span(&self, seqs: &std::ops::Range<usize>, base: usize, per: usize) -> usize {
        if seqs.is_empty() {
            0
        } else {
            (self.row(seqs.end - 1, self.steps - 1) + 1 - base) * per
        }
    }

    /// The piece, or an error when its sequences or the `need` elements
    /// they write do not fit the `len` elements of output given.
    fn fitted(
        &self,
        seqs: std::ops::Range<usize>,
        base: usize,
        need: usize,
        len: usize,
    ) -> Result<Piece, String> {
        if seqs.end > self.seqs || need > len {
            return Err(format!(
                "sequences {seqs:?} of {} do not fit an output of {len}",
                self.seqs
            ));
        }
        Ok(Piece { seqs, base })
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

/// The LSTM recurrence from zero state. Inputs: the sequence `x
/// [positions, D]`, `W_ih [4H, D]`, `W_hh [4H, H]`, the weights and
/// biases packed by [`LstmPack`] ([`PackFor::Forward`]), then with
/// `peephole` `w_ci`, `w_cf`, `w_co` (`[H]` each).
#[derive(Clone, Debug)]
pub struct LstmForward {
    /// Sizes and layout.
    pub seqs: Seqs,
    /// Features per position of the input, `D`.
    pub input: usize,
    /// Whether inputs 4..7 are peephole weights.
    pub peephole: bool,
    /// What the step writes.
    pub output: LstmOutput,
    /// Threads of the pool one call splits its work over by hidden units
    /// (AVX-512 kernels; 1: the call runs on its own thread). The row
    /// step then is one row piece ([`forward_threads`]).
    pub threads: usize,
}

/// Threads an [`LstmForward`] call over `q` should split over by hidden
/// units on a pool of `threads`: all of them when splitting by sequences
/// would leave a thread without a full register tile of sequences, or
/// cannot split (time-first sequences), else 1.
pub fn forward_threads(q: &Seqs, threads: usize) -> usize {
    let units = q.hidden.div_ceil(pack::LANES);
    if threads > 1 && (!q.batch_first || q.seqs < threads * FULL_TILE) {
        threads.min(units).max(1)
    } else {
        1
    }
}

/// Sequences of a full forward register tile of the AVX-512 kernel.
const FULL_TILE: usize = 6;

/// The checked operands of an [`LstmForward`] step.
struct FwdArgs<'a> {
    /// The sequence, `[positions, D]`.
    x: &'a [f32],
    /// `W_ih [4H, D]`.
    w_ih: &'a [f32],
    /// `W_hh [4H, H]`.
    w_hh: &'a [f32],
    /// `W_ih`, `W_hh` and `b_ih + b_hh` packed.
    packed: &'a [f32],
    /// `(w_ci, w_cf, w_co)`, `[H]` each, with peepholes.
    peep: Option<[&'a [f32]; 3]>,
}

/// The sequences a piece of a step computes and the position whose row
/// starts its output.
struct Piece {
    /// The sequences.
    seqs: std::ops::Range<usize>,
    /// The position of the piece's first output row (0 for [`LstmOutput::Last`]).
    base: usize,
}

impl LstmForward {
    /// Elements written per output row unit: `H` per sequence or position,
    /// `7H` per position for the state.
    fn per(&self) -> usize {
        match self.output {
            LstmOutput::State => STATE_WIDTH * self.seqs.hidden,
            _ => self.seqs.hidden,
        }
    }

    /// The operands, or why they are malformed.
    fn args<'a>(&self, inputs: &[&'a [f32]]) -> Result<FwdArgs<'a>, String> {
        let q = self.seqs;
        let (h, g4) = (q.hidden, 4 * q.hidden);
        let (positions, d) = (q.seqs * q.steps, self.input);
        let peep = if self.peephole {
            Some([
                operand(inputs, 4, h, "weight_ci")?,
                operand(inputs, 5, h, "weight_cf")?,
                operand(inputs, 6, h, "weight_co")?,
            ])
        } else {
            None
        };
        Ok(FwdArgs {
            x: operand(inputs, 0, positions * d, "the input")?,
            w_ih: operand(inputs, 1, g4 * d, "weight_ih")?,
            w_hh: operand(inputs, 2, g4 * h, "weight_hh")?,
            packed: operand(inputs, 3, forward_len(h, d), "the packed weights")?,
            peep,
        })
    }

    /// The piece starting at step row `first` writing `len` elements,
    /// checked to hold whole sequences of this step and fit in `len`.
    fn piece(&self, first: usize, len: usize) -> Result<Piece, String> {
        let q = self.seqs;
        let h = q.hidden;
        let (seqs, base) = match self.output {
            LstmOutput::Last => (first..first + len / h.max(1), 0),
            _ => q.piece(first, len, self.per()),
        };
        let need = match self.output {
            LstmOutput::Last => seqs.len() * h,
            _ => q.span(&seqs, base, self.per()),
        };
        q.fitted(seqs, base, need, len)
    }
}

impl RowKernel for LstmForward {
    fn threads(&self) -> usize {
        self.threads
    }

    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        if self.seqs.steps == 0 {
            out.fill(0.0);
            return Ok(());
        }
        let args = self.args(inputs)?;
        let piece = self.piece(first, out.len())?;
        if piece.seqs.is_empty() {
            return Ok(());
        }
        #[cfg(target_arch = "x86_64")]
        if avx512::available() {
            // SAFETY: the CPU has AVX-512F; `args` and `piece` are checked.
            unsafe { avx512::forward(self, &args, &piece, out) };
            return Ok(());
        }
        portable::forward(self, &args, &piece, out)
    }
}

/// Backpropagation through time: from the training state
/// ([`LstmOutput::State`]) and the gradients of the hidden states, the
/// gradients of the gate pre-activations `[positions, 4H]` (gate order
/// i, f, g, o). Inputs: the state, `W_hh [4H, H]`, `W_hh` packed by
/// [`LstmPack`] ([`PackFor::Backward`]), then the gradient of
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

/// The checked operands of an [`LstmBackward`] step.
struct BwdArgs<'a> {
    /// The training state, `[positions, 7H]`.
    state: &'a [f32],
    /// `W_hh [4H, H]`.
    w_hh: &'a [f32],
    /// `W_hh` packed for the AVX-512 kernel.
    packed: &'a [f32],
    /// The sequence output's gradient, `[positions, H]`.
    dseq: Option<&'a [f32]>,
    /// The last state's gradient, `[S, H]`.
    dlast: Option<&'a [f32]>,
    /// `(w_ci, w_cf, w_co)`, `[H]` each, with peepholes.
    peep: Option<[&'a [f32]; 3]>,
}

impl LstmBackward {
    /// The operands, or why they are malformed.
    fn args<'a>(&self, inputs: &[&'a [f32]]) -> Result<BwdArgs<'a>, String> {
        let q = self.seqs;
        let (h, g4) = (q.hidden, 4 * q.hidden);
        let positions = q.seqs * q.steps;
        let state = operand(inputs, 0, positions * STATE_WIDTH * h, "the LSTM state")?;
        let w_hh = operand(inputs, 1, g4 * h, "weight_hh")?;
        let packed = operand(inputs, 2, backward_len(h), "the packed weights")?;
        let mut k = 3;
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
            Some([
                next(h, "weight_ci")?,
                next(h, "weight_cf")?,
                next(h, "weight_co")?,
            ])
        } else {
            None
        };
        Ok(BwdArgs {
            state,
            w_hh,
            packed,
            dseq,
            dlast,
            peep,
        })
    }

    /// The piece starting at step row `first` writing `len` elements,
    /// checked to hold whole sequences of this step and fit in `len`.
    fn piece(&self, first: usize, len: usize) -> Result<Piece, String> {
        let q = self.seqs;
        let g4 = 4 * q.hidden;
        let (seqs, base) = q.piece(first, len, g4);
        let need = q.span(&seqs, base, g4);
        q.fitted(seqs, base, need, len)
    }
}

impl RowKernel for LstmBackward {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        if self.seqs.steps == 0 {
            out.fill(0.0);
            return Ok(());
        }
        let args = self.args(inputs)?;
        let piece = self.piece(first, out.len())?;
        if piece.seqs.is_empty() {
            return Ok(());
        }
        #[cfg(target_arch = "x86_64")]
        if avx512::available() {
            // SAFETY: the CPU has AVX-512F; `args` and `piece` are checked.
            unsafe { avx512::backward(self, &args, &piece, out) };
            return Ok(());
        }
        portable::backward(self, &args, &piece, out)
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
