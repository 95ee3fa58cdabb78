//! Recurrent layers: `lstm`, a single-layer unidirectional LSTM with
//! `nn.LSTM`'s parameters (names, shapes, gate order i, f, g, o and
//! initialisation), optionally with peephole connections.
//!
//! Cell equations (PyTorch's, plus the peephole terms of Gers & Schmidhuber
//! 2000 when `peephole = true`; `*` is elementwise):
//!
//! ```text
//! i_t = sigmoid(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi + w_ci * c_{t-1})
//! f_t = sigmoid(W_if x_t + b_if + W_hf h_{t-1} + b_hf + w_cf * c_{t-1})
//! g_t = tanh   (W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)
//! c_t = f_t * c_{t-1} + i_t * g_t
//! o_t = sigmoid(W_io x_t + b_io + W_ho h_{t-1} + b_ho + w_co * c_t)
//! h_t = o_t * tanh(c_t)
//! ```
//!
//! with `h_0 = c_0 = 0`.

use super::embed::{flops_scale, sat_product, sizes};
use super::util::{expect_float, fan_in_uniform};
use super::Builtin;
use crate::elab::{CallCtx, OpResult, Value};
use crate::ir::{Attr, Dim, Op, TensorType};

/// The family's built-ins.
pub const BUILTINS: &[Builtin] = &[Builtin {
    name: "lstm",
    build: lstm,
}];

/// `lstm(x, hidden, peephole = false, batch_first = true, returns = "last")`:
/// `x` is `[N, T, I]` (`batch_first`, extra leading batch dims allowed) or
/// `[T, N, I]`. Returns the last hidden state `[N, H]`, the sequence of hidden
/// states `[N, T, H]` (`[T, N, H]` when not batch-first), or with
/// `returns = "both"` a record `{sequence, last}`.
fn lstm(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let hidden = c.int(Some(1), "hidden", None)?;
    let peephole = c.bool(None, "peephole", Some(false))?;
    let batch_first = c.bool(None, "batch_first", Some(true))?;
    let ret = c.choice(None, "returns", &["last", "sequence", "both"], "last")?;
    sizes(c, Some(1), "hidden", &[hidden], 1)?;
    let t = expect_float(c, x)?;
    let r = t.rank();
    let rank_ok = if batch_first { r >= 3 } else { r == 3 };
    if !rank_ok {
        let want = if batch_first {
            "[N, T, I] (batch, time, features)"
        } else {
            "[T, N, I] (time, batch, features)"
        };
        return Err(c.shape_error(
            format!("`lstm` expects a sequence {want}, got {}", c.type_text(&t)),
            &[("the input", x)],
            "embed token ids first (`embedding`), or add the time dim with `unsqueeze`",
        ));
    }
    let input = c.known(x, r - 1, "feature count")?;
    let time_axis = if batch_first { r - 2 } else { 0 };
    if t.shape[time_axis].as_known().is_some_and(|n| n < 1) {
        return Err(c.shape_error(
            "`lstm` needs at least one time step",
            &[("the input", x)],
            "check the sequence length",
        ));
    }
    let h4 = hidden.saturating_mul(4);
    let init = fan_in_uniform(hidden);
    let w_ih = c.param("weight_ih_l0", &[h4, input], init.clone())?;
    let w_hh = c.param("weight_hh_l0", &[h4, hidden], init.clone())?;
    let b_ih = c.param("bias_ih_l0", &[h4], init.clone())?;
    let b_hh = c.param("bias_hh_l0", &[h4], init.clone())?;
    let mut inputs = vec![x, w_ih, w_hh, b_ih, b_hh];
    if peephole {
        for name in ["weight_ci", "weight_cf", "weight_co"] {
            inputs.push(c.param(name, &[hidden], init.clone())?);
        }
    }
    // Sequence of hidden states: the input with features replaced by H.
    let mut seq_shape = t.shape.clone();
    seq_shape[r - 1] = Dim::known(hidden);
    let seq = TensorType::new(t.dtype, seq_shape.clone());
    let mut last_shape = seq_shape;
    last_shape.remove(time_axis);
    let last = TensorType::new(t.dtype, last_shape);
    // Per (sequence, step): the two gate matmuls, two bias adds and their
    // sum, 4 gate activations, the cell update (3), tanh(c) and o * tanh(c);
    // peepholes add a multiply and an add for each of 3 gates.
    let per_step = sat_product(&[8, hidden, input.saturating_add(hidden)])
        .saturating_add(hidden.saturating_mul(if peephole { 27 } else { 21 }));
    let steps = TensorType::new(t.dtype, t.shape[..r - 1].to_vec())
        .numel()
        .unwrap_or_default();
    let flops = flops_scale(&steps, per_step);
    let outputs = match ret {
        "last" => vec![last],
        "sequence" => vec![seq],
        _ => vec![seq, last],
    };
    let op = Op::new("lstm")
        .with("hidden", Attr::Int(hidden))
        .with("peephole", Attr::Bool(peephole))
        .with("batch_first", Attr::Bool(batch_first))
        .with("returns", Attr::Str(ret.into()));
    let outs = c.emit(op, &inputs, outputs, flops)?;
    Ok(match outs.as_slice() {
        [one] => Value::Tensor(*one),
        [s, l] => Value::record(vec![
            ("sequence", Value::Tensor(*s)),
            ("last", Value::Tensor(*l)),
        ]),
        _ => Value::Poison,
    })
}

#[cfg(test)]
mod tests {

    use crate::testing::{model as run, out_type};

    #[test]
    fn lstm_params_match_torch() {
        let g = run("input x: f32[N, 20, 128]\noutput h = x |> lstm: lstm(64)").unwrap();
        assert_eq!(out_type(&g, "h"), "f32[N, 64]");
        let keys: Vec<String> = g
            .params
            .iter()
            .map(|p| format!("{} {}", p.path, g.type_text(&p.ty)))
            .collect();
        assert_eq!(
            keys,
            [
                "lstm.weight_ih_l0 f32[256, 128]",
                "lstm.weight_hh_l0 f32[256, 64]",
                "lstm.bias_ih_l0 f32[256]",
                "lstm.bias_hh_l0 f32[256]",
            ]
        );
        // nn.LSTM(128, 64): 4*64*(128+64) + 2*4*64 parameters.
        assert_eq!(g.param_count(), 4 * 64 * (128 + 64) + 8 * 64);
        // FLOPs per sequence: T * (8H(I+H) + 21H).
        assert_eq!(g.nodes[0].flops.terms()[0].1, 20 * (8 * 64 * 192 + 21 * 64));
    }

    #[test]
    fn lstm_peephole_and_modes() {
        let g = run("input x: f32[N, 5, T, 8]\nr = x |> l: lstm(4, peephole = true, returns = \"both\")\noutput s = r.sequence\noutput h = r.last").unwrap();
        assert_eq!(out_type(&g, "s"), "f32[N, 5, T, 4]");
        assert_eq!(out_type(&g, "h"), "f32[N, 5, 4]");
        assert!(g.params.iter().any(|p| p.path == "l.weight_co"));
        assert_eq!(g.param_count(), 4 * 4 * 12 + 8 * 4 + 3 * 4);
        let g = run("input x: f32[T, N, 8]\noutput s = x |> l: lstm(4, batch_first = false, returns = \"sequence\")").unwrap();
        assert_eq!(out_type(&g, "s"), "f32[T, N, 4]");
    }

    #[test]
    fn lstm_errors() {
        let e = run("input x: f32[N, 8]\noutput h = x |> l: lstm(4)").unwrap_err();
        assert!(e.contains("[N, T, I]") && e.contains("f32[N, 8]"), "{e}");
        let e = run("input x: i64[N, 3, 8]\noutput h = x |> l: lstm(4)").unwrap_err();
        assert!(e.contains("dense float"), "{e}");
        let e = run("input x: f32[N, 3, 8]\noutput h = x |> l: lstm(4, returns = \"all\")")
            .unwrap_err();
        assert!(e.contains("all"), "{e}");
        let e = run("input x: f32[N, 3, 8]\noutput h = x |> l: lstm(0)").unwrap_err();
        assert!(e.contains("at least 1"), "{e}");
        let e = run("input x: f32[N, 3, D]\noutput h = x |> l: lstm(4)").unwrap_err();
        assert!(e.contains("compile time"), "{e}");
    }
}
