//! Reference semantics of the sequence and image-model ops without a dense
//! core counterpart: multi-head attention and its gradient, diffusers'
//! timestep embedding,
//! nearest-neighbour resizing and the (peephole) LSTM.

use super::array::{unravel, Array};
use super::dense::{log_softmax, Attrs};

/// The result of one family op, or `None` if `name` is not in the family.
type Eval = Option<Result<Vec<Array>, String>>;

/// Evaluates `name` if it is one of this module's ops.
pub fn eval(name: &str, a: &Attrs, x: &[&Array], out: &[Vec<usize>]) -> Eval {
    let r = match name {
        "attention" => attention(
            x[0],
            x[1],
            x[2],
            a.int("heads") as usize,
            a.float("scale", 1.0),
        ),
        "timestep_embedding" => timestep_embedding(x[0], a),
        "upsample_nearest" | "resize_nearest" => resize_nearest(x[0], &out[0]),
        "resize_nearest_grad" => resize_nearest_grad(x[0], &out[0]),
        "attention_grad" => {
            return Some(Ok(attention_grad(
                x[0],
                x[1],
                x[2],
                x[3],
                a.int("heads") as usize,
                a.float("scale", 1.0),
            )))
        }
        "lstm" => return Some(lstm(x, a)),
        _ => return None,
    };
    Some(Ok(vec![r]))
}

/// Multi-head scaled dot-product attention: `q [.., L, C]`, `k [.., S, C]`,
/// `v [.., S, Cv]` (equal leading dims) -> `[.., L, Cv]`; head `h` uses
/// channels `h*C/heads ..` of `q`, `k` and `h*Cv/heads ..` of `v`, as
/// `F.scaled_dot_product_attention` on the split heads.
fn attention(q: &Array, k: &Array, v: &Array, heads: usize, scale: f64) -> Array {
    let g = AttentionShape::of(q, k, v, heads);
    let mut shape = q.shape.clone();
    shape[q.shape.len() - 1] = g.cv;
    let mut out = Array::zeros(&shape);
    for (n, h, i) in g.rows() {
        let p = g.probabilities(q, k, scale, n, h, i);
        for e in 0..g.dv {
            out.data[g.v_at(n, i, h, e, g.l)] = (0..g.s)
                .map(|j| p[j] * v.data[g.v_at(n, j, h, e, g.s)])
                .sum();
        }
    }
    out
}

/// The gradients of [`attention`] with respect to `q`, `k` and `v` for the
/// output gradient `dout`: per query row with probabilities `p`,
/// `dv_j += p_j·dout`, `dp_j = dout·v_j`, `ds_j = p_j·(dp_j − Σ p·dp)`,
/// `dq = scale·Σ ds_j·k_j` and `dk_j += scale·ds_j·q`.
fn attention_grad(
    dout: &Array,
    q: &Array,
    k: &Array,
    v: &Array,
    heads: usize,
    scale: f64,
) -> Vec<Array> {
    let g = AttentionShape::of(q, k, v, heads);
    let (mut dq, mut dk, mut dv) = (
        Array::zeros(&q.shape),
        Array::zeros(&k.shape),
        Array::zeros(&v.shape),
    );
    for (n, h, i) in g.rows() {
        let p = g.probabilities(q, k, scale, n, h, i);
        let dp: Vec<f64> = (0..g.s)
            .map(|j| {
                (0..g.dv)
                    .map(|e| dout.data[g.v_at(n, i, h, e, g.l)] * v.data[g.v_at(n, j, h, e, g.s)])
                    .sum()
            })
            .collect();
        let mean: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
        for j in 0..g.s {
            for e in 0..g.dv {
                dv.data[g.v_at(n, j, h, e, g.s)] += p[j] * dout.data[g.v_at(n, i, h, e, g.l)];
            }
            let ds = p[j] * (dp[j] - mean) * scale;
            for d in 0..g.dh {
                dq.data[g.qk_at(n, i, h, d, g.l)] += ds * k.data[g.qk_at(n, j, h, d, g.s)];
                dk.data[g.qk_at(n, j, h, d, g.s)] += ds * q.data[g.qk_at(n, i, h, d, g.l)];
            }
        }
    }
    vec![dq, dk, dv]
}

/// The sizes of one attention call.
struct AttentionShape {
    batch: usize,
    l: usize,
    s: usize,
    c: usize,
    cv: usize,
    heads: usize,
    dh: usize,
    dv: usize,
}

impl AttentionShape {
    fn of(q: &Array, k: &Array, v: &Array, heads: usize) -> Self {
        let r = q.shape.len();
        let (l, c) = (q.shape[r - 2], q.shape[r - 1]);
        let (s, cv) = (k.shape[r - 2], v.shape[r - 1]);
        let heads = heads.max(1);
        AttentionShape {
            batch: q.shape[..r - 2].iter().product(),
            l,
            s,
            c,
            cv,
            heads,
            dh: c / heads,
            dv: cv / heads,
        }
    }

    /// Every (batch item, head, query row).
    fn rows(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        (0..self.batch).flat_map(move |n| {
            (0..self.heads).flat_map(move |h| (0..self.l).map(move |i| (n, h, i)))
        })
    }

    /// Flat index of channel `d` of head `h` in row `i` of a q or k
    /// tensor of `len` rows per item.
    fn qk_at(&self, n: usize, i: usize, h: usize, d: usize, len: usize) -> usize {
        (n * len + i) * self.c + h * self.dh + d
    }

    /// The same for a v or output tensor.
    fn v_at(&self, n: usize, i: usize, h: usize, e: usize, len: usize) -> usize {
        (n * len + i) * self.cv + h * self.dv + e
    }

    /// The softmax over the keys of query row `i` of head `h`.
    fn probabilities(
        &self,
        q: &Array,
        k: &Array,
        scale: f64,
        n: usize,
        h: usize,
        i: usize,
    ) -> Vec<f64> {
        let logits: Vec<f64> = (0..self.s)
            .map(|j| {
                (0..self.dh)
                    .map(|d| {
                        q.data[self.qk_at(n, i, h, d, self.l)]
                            * k.data[self.qk_at(n, j, h, d, self.s)]
                    })
                    .sum::<f64>()
                    * scale
            })
            .collect();
        log_softmax(&logits).into_iter().map(f64::exp).collect()
    }
}

/// diffusers' `get_timestep_embedding`: `t [N]` -> `[N, dim]`.
fn timestep_embedding(t: &Array, a: &Attrs) -> Array {
    let dim = a.int("dim") as usize;
    let half = dim / 2;
    let shift = a.float("shift", 0.0);
    let max_period = a.float("max_period", 10000.0);
    let scale = a.float("scale", 1.0);
    let flip = a.bool("flip_sin_to_cos", true);
    let n = t.data.len();
    let mut out = Array::zeros(&[n, dim]);
    for (row, &tv) in t.data.iter().enumerate() {
        for j in 0..half {
            let freq = (-max_period.ln() * j as f64 / (half as f64 - shift)).exp();
            let arg = scale * tv * freq;
            let (first, second) = if flip {
                (arg.cos(), arg.sin())
            } else {
                (arg.sin(), arg.cos())
            };
            out.data[row * dim + j] = first;
            out.data[row * dim + half + j] = second;
        }
    }
    out
}

/// `F.interpolate(mode = "nearest")` to the spatial sizes of `out_shape`:
/// output index `o` reads `min(floor(o * scale), in - 1)` with `scale =
/// in / out` computed in f32, exactly as PyTorch's CPU kernel.
fn resize_nearest(x: &Array, out_shape: &[usize]) -> Array {
    let mut out = Array::zeros(out_shape);
    for (i, v) in out.data.iter_mut().enumerate() {
        *v = x.data[resize_source(&x.shape, out_shape, i)];
    }
    out
}

/// The gradient of a nearest resize to `dy`'s shape from `x_shape`: each
/// element of `dy` added to the input element it was read from.
fn resize_nearest_grad(dy: &Array, x_shape: &[usize]) -> Array {
    let mut dx = Array::zeros(x_shape);
    for (i, v) in dy.data.iter().enumerate() {
        dx.data[resize_source(x_shape, &dy.shape, i)] += v;
    }
    dx
}

/// The flat input index (of `in_shape`) nearest-resized output element `i`
/// (of `out_shape`) reads: PyTorch's `min(floor(o · f32(in / out)), in −
/// 1)` along every spatial dim.
fn resize_source(in_shape: &[usize], out_shape: &[usize], i: usize) -> usize {
    let idx = unravel(i, out_shape);
    let mut off = 0;
    for d in 0..in_shape.len() {
        let k = if d < 2 {
            idx[d]
        } else {
            let (inn, outn) = (in_shape[d], out_shape[d]);
            let scale = inn as f32 / outn as f32;
            ((idx[d] as f32 * scale).floor() as usize).min(inn - 1)
        };
        off = off * in_shape[d] + k;
    }
    off
}

fn sigmoid(v: f64) -> f64 {
    1.0 / (1.0 + (-v).exp())
}

/// The LSTM of ops/rnn.rs (gate order i, f, g, o; optional peepholes),
/// from zero state. Returns the sequence and/or last hidden state as the
/// `returns` attribute asks.
fn lstm(x: &[&Array], a: &Attrs) -> Result<Vec<Array>, String> {
    let (input, w_ih, w_hh, b_ih, b_hh) = (x[0], x[1], x[2], x[3], x[4]);
    let peep = if a.bool("peephole", false) {
        Some((x[5], x[6], x[7]))
    } else {
        None
    };
    let h = a.int("hidden") as usize;
    let batch_first = a.bool("batch_first", true);
    let r = input.shape.len();
    let feat = input.shape[r - 1];
    // Sequences as (offset of step 0, stride between steps).
    let (steps, seqs, step_stride, seq_stride) = if batch_first {
        let t = input.shape[r - 2];
        (t, input.data.len() / feat / t.max(1), feat, t * feat)
    } else {
        (input.shape[0], input.shape[1], input.shape[1] * feat, feat)
    };
    let mut seq_shape = input.shape.clone();
    seq_shape[r - 1] = h;
    let mut seq = Array::zeros(&seq_shape);
    let mut last = Vec::with_capacity(seqs * h);
    // Output offsets mirror the input layout with H features.
    let (out_step, out_seq) = if batch_first {
        (h, steps * h)
    } else {
        (seqs * h, h)
    };
    for sq in 0..seqs {
        let mut hs = vec![0.0; h];
        let mut cs = vec![0.0; h];
        for t in 0..steps {
            let xo = sq * seq_stride + t * step_stride;
            let xt = &input.data[xo..xo + feat];
            let gate = |g: usize, j: usize, hs: &[f64]| -> f64 {
                let row = g * h + j;
                let mut acc = b_ih.data[row] + b_hh.data[row];
                acc += (0..feat)
                    .map(|i| w_ih.data[row * feat + i] * xt[i])
                    .sum::<f64>();
                acc += (0..h).map(|i| w_hh.data[row * h + i] * hs[i]).sum::<f64>();
                acc
            };
            let mut new_c = vec![0.0; h];
            let mut new_h = vec![0.0; h];
            for j in 0..h {
                let (ci, cf, co) = peep.map_or((0.0, 0.0, 0.0), |(wi, wf, wo)| {
                    (wi.data[j], wf.data[j], wo.data[j])
                });
                let i_g = sigmoid(gate(0, j, &hs) + ci * cs[j]);
                let f_g = sigmoid(gate(1, j, &hs) + cf * cs[j]);
                let g_g = gate(2, j, &hs).tanh();
                new_c[j] = f_g * cs[j] + i_g * g_g;
                let o_g = sigmoid(gate(3, j, &hs) + co * new_c[j]);
                new_h[j] = o_g * new_c[j].tanh();
            }
            hs = new_h;
            cs = new_c;
            let oo = sq * out_seq + t * out_step;
            seq.data[oo..oo + h].copy_from_slice(&hs);
        }
        last.extend(hs);
    }
    let mut last_shape = seq_shape.clone();
    last_shape.remove(if batch_first { r - 2 } else { 0 });
    let last = Array::new(&last_shape, last);
    Ok(match a.str("returns") {
        "sequence" => vec![seq],
        "both" => vec![seq, last],
        _ => vec![last],
    })
}
