//! Reference semantics of the gradient ops of the recurrent and lookup
//! layers (emitted by `grad/rules/rnn.rs`):
//!
//! - `lstm_state(x, w_ih, w_hh, b_ih, b_hh[, w_ci, w_cf, w_co])`: the
//!   LSTM of ops/rnn.rs run again from zero state, keeping per position
//!   `(i, f, g, o, c_t, c_{t-1}, h_{t-1})` — `x`'s shape with `7H`
//!   features.
//! - `lstm_grad_gates(state, w_hh[, dseq][, dlast][, w_ci, w_cf, w_co])`:
//!   backpropagation through time to the gate pre-activations (`x`'s
//!   shape with `4H` features, gate order i, f, g, o); `seq_grad` and
//!   `last_grad` say which incoming gradients are given.
//! - `embedding_grad(dy, ids)`: `dW[v] = Σ_{ids[r] = v} dy[r]`, the row
//!   `padding_idx` (if any) zero.

use super::array::Array;
use super::dense::Attrs;
use crate::ir::Attr;

/// The result of one family op, or `None` if `name` is not in the family.
type Eval = Option<Result<Vec<Array>, String>>;

/// Evaluates `name` if it is one of this module's ops.
pub fn eval(name: &str, a: &Attrs, x: &[&Array], out: &[Vec<usize>]) -> Eval {
    let r = match name {
        "lstm_state" => Ok(lstm_state(x, a)),
        "lstm_grad_gates" => Ok(lstm_grad_gates(x, a)),
        "embedding_grad" => embedding_grad(x[0], x[1], a, &out[0]),
        _ => return None,
    };
    Some(r.map(|r| vec![r]))
}

/// Sizes of a sequence tensor with `feat` features per position:
/// (sequences, steps), and the row of position `(s, t)`.
struct Layout {
    seqs: usize,
    steps: usize,
    batch_first: bool,
}

impl Layout {
    fn of(shape: &[usize], batch_first: bool) -> Layout {
        let r = shape.len();
        let positions: usize = shape[..r - 1].iter().product();
        let steps = if batch_first { shape[r - 2] } else { shape[0] };
        Layout {
            seqs: positions / steps.max(1),
            steps,
            batch_first,
        }
    }

    fn row(&self, s: usize, t: usize) -> usize {
        if self.batch_first {
            s * self.steps + t
        } else {
            t * self.seqs + s
        }
    }
}

fn sigmoid(v: f64) -> f64 {
    1.0 / (1.0 + (-v).exp())
}

/// The peephole weight `k` (0: i, 1: f, 2: o) at `j`, or 0.
fn peep(p: Option<&[&Array]>, k: usize, j: usize) -> f64 {
    p.map_or(0.0, |p| p[k].data[j])
}

fn lstm_state(x: &[&Array], a: &Attrs) -> Array {
    let (input, w_ih, w_hh, b_ih, b_hh) = (x[0], x[1], x[2], x[3], x[4]);
    let p = a.bool("peephole", false).then(|| &x[5..8]);
    let h = a.int("hidden") as usize;
    let lay = Layout::of(&input.shape, a.bool("batch_first", true));
    let feat = *input.shape.last().expect("rank >= 3");
    let mut shape = input.shape.clone();
    *shape.last_mut().expect("rank >= 3") = 7 * h;
    let mut out = Array::zeros(&shape);
    for s in 0..lay.seqs {
        let (mut hs, mut cs) = (vec![0.0; h], vec![0.0; h]);
        for t in 0..lay.steps {
            let r = lay.row(s, t);
            let xt = &input.data[r * feat..(r + 1) * feat];
            let pre = |k: usize, j: usize| {
                let row = k * h + j;
                b_ih.data[row]
                    + b_hh.data[row]
                    + (0..feat)
                        .map(|i| w_ih.data[row * feat + i] * xt[i])
                        .sum::<f64>()
                    + (0..h).map(|i| w_hh.data[row * h + i] * hs[i]).sum::<f64>()
            };
            let mut next = vec![0.0; h];
            let st = &mut out.data[r * 7 * h..(r + 1) * 7 * h];
            for j in 0..h {
                let cp = cs[j];
                let i = sigmoid(pre(0, j) + peep(p, 0, j) * cp);
                let f = sigmoid(pre(1, j) + peep(p, 1, j) * cp);
                let g = pre(2, j).tanh();
                let c = f * cp + i * g;
                let o = sigmoid(pre(3, j) + peep(p, 2, j) * c);
                for (k, v) in [i, f, g, o, c, cp, hs[j]].into_iter().enumerate() {
                    st[k * h + j] = v;
                }
                cs[j] = c;
                next[j] = o * c.tanh();
            }
            hs = next;
        }
    }
    out
}

fn lstm_grad_gates(x: &[&Array], a: &Attrs) -> Array {
    let (state, w_hh) = (x[0], x[1]);
    let h = a.int("hidden") as usize;
    let mut k = 2;
    let mut take = |given: bool, n: usize| {
        given.then(|| {
            k += n;
            &x[k - n..k]
        })
    };
    let dseq = take(a.bool("seq_grad", false), 1).map(|v| v[0]);
    let dlast = take(a.bool("last_grad", false), 1).map(|v| v[0]);
    let p = take(a.bool("peephole", false), 3);
    let lay = Layout::of(&state.shape, a.bool("batch_first", true));
    let mut shape = state.shape.clone();
    *shape.last_mut().expect("rank >= 3") = 4 * h;
    let mut out = Array::zeros(&shape);
    for s in 0..lay.seqs {
        let (mut dh, mut dc) = (vec![0.0; h], vec![0.0; h]);
        for t in (0..lay.steps).rev() {
            let r = lay.row(s, t);
            for (j, d) in dh.iter_mut().enumerate() {
                *d += dseq.map_or(0.0, |g| g.data[r * h + j]);
                if t + 1 == lay.steps {
                    *d += dlast.map_or(0.0, |g| g.data[s * h + j]);
                }
            }
            let st = &state.data[r * 7 * h..(r + 1) * 7 * h];
            let da = &mut out.data[r * 4 * h..(r + 1) * 4 * h];
            for j in 0..h {
                let v = |k: usize| st[k * h + j];
                let (i, f, g, o, c, cp) = (v(0), v(1), v(2), v(3), v(4), v(5));
                let tc = c.tanh();
                let dao = dh[j] * tc * o * (1.0 - o);
                let dct = dc[j] + dh[j] * o * (1.0 - tc * tc) + dao * peep(p, 2, j);
                let dai = dct * g * i * (1.0 - i);
                let dag = dct * i * (1.0 - g * g);
                let daf = dct * cp * f * (1.0 - f);
                dc[j] = dct * f + dai * peep(p, 0, j) + daf * peep(p, 1, j);
                da[j] = dai;
                da[h + j] = daf;
                da[2 * h + j] = dag;
                da[3 * h + j] = dao;
            }
            // dh_{t-1} = W_hhᵀ da.
            for (j, d) in dh.iter_mut().enumerate() {
                *d = (0..4 * h).map(|q| w_hh.data[q * h + j] * da[q]).sum();
            }
        }
    }
    out
}

fn embedding_grad(dy: &Array, ids: &Array, a: &Attrs, shape: &[usize]) -> Result<Array, String> {
    let (num, dim) = (shape[0], shape[1]);
    let pad = a.0.iter().find_map(|(n, v)| match (*n, v) {
        ("padding_idx", Attr::Int(p)) => Some(*p),
        _ => None,
    });
    let mut out = Array::zeros(shape);
    for (r, &id) in ids.data.iter().enumerate() {
        if id < 0.0 || id >= num as f64 || id.fract() != 0.0 {
            return Err(format!("id {id} is outside the table of {num} rows"));
        }
        if Some(id as i64) == pad {
            continue;
        }
        let row = id as usize;
        for d in 0..dim {
            out.data[row * dim + d] += dy.data[r * dim + d];
        }
    }
    Ok(out)
}
