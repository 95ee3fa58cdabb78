//! Attention and the diffusion-model helpers around it: multi-head scaled
//! dot-product attention over token sequences (`attention`) and the
//! sinusoidal timestep embedding of diffusers' `get_timestep_embedding`
//! (`timestep_embedding`). Neither op has parameters: the projections are
//! ordinary `linear` layers written in `.net` code.

use super::util::expect_float;
use super::Builtin;
use crate::elab::{CallCtx, OpResult};
use crate::ir::{Attr, Dim, Op, TensorType};
use netc_runtime::DType;

/// The family's built-ins.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "attention",
        build: attention,
    },
    Builtin {
        name: "timestep_embedding",
        build: timestep_embedding,
    },
];

/// `d * k` with the constant and coefficients saturating (FLOP counts only).
fn sat_scale(d: &Dim, k: i64) -> Dim {
    let mut out = Dim::known(d.constant().saturating_mul(k));
    for &(s, c) in d.terms() {
        out = out.add(&Dim::sym(s).scale(c.saturating_mul(k)));
    }
    out
}

/// The product of sizes, saturating; `None` if two factors are symbolic.
fn product(dims: &[&Dim]) -> Option<Dim> {
    let mut known: i64 = 1;
    let mut symbolic: Option<Dim> = None;
    for d in dims {
        match d.as_known() {
            Some(n) => known = known.saturating_mul(n),
            None if symbolic.is_none() => symbolic = Some((*d).clone()),
            None => return None,
        }
    }
    Some(match symbolic {
        Some(s) => sat_scale(&s, known),
        None => Dim::known(known),
    })
}

/// `attention(q, k, v, heads, scale = 1/sqrt(head dim))`: multi-head
/// scaled-dot-product attention. `q: [N, L, C]`, `k: [N, S, C]`,
/// `v: [N, S, Cv]` → `[N, L, Cv]`. The channels are split into `heads`
/// heads, each computes `softmax(q kᵀ · scale) v`, and the heads are merged
/// back. FLOPs `2·N·L·S·C + 2·N·L·S·Cv` (= `4·N·L·S·C` when `Cv = C`).
fn attention(c: &mut CallCtx) -> OpResult {
    let q = c.tensor(Some(0), "q")?;
    let k = c.tensor(Some(1), "k")?;
    let v = c.tensor(Some(2), "v")?;
    let heads = c.int(Some(3), "heads", Some(1))?;
    let scale = c.value(None, "scale");
    super::util::at_least(c, Some(3), "heads", &[heads], 1)?;
    let (tq, tk, tv) = (
        expect_float(c, q)?,
        expect_float(c, k)?,
        expect_float(c, v)?,
    );
    let operands = [("the queries", q), ("the keys", k), ("the values", v)];
    for (what, t) in [("queries", &tq), ("keys", &tk), ("values", &tv)] {
        if t.rank() != 3 {
            return Err(c.shape_error(
                format!(
                    "`attention` expects [batch, tokens, channels] {what}, got {}",
                    c.type_text(t)
                ),
                &operands,
                "reshape an N, C, H, W map to tokens with `permute([0, 2, 3, 1])` and `reshape([-1, H * W, C])`",
            ));
        }
    }
    if tq.dtype != tk.dtype || tq.dtype != tv.dtype {
        return Err(c.shape_error(
            format!(
                "`attention`: queries {}, keys {} and values {} must have one dtype",
                c.type_text(&tq),
                c.type_text(&tk),
                c.type_text(&tv)
            ),
            &operands,
            "cast the operands to one float dtype",
        ));
    }
    if tq.shape[0] != tk.shape[0] || tk.shape[0] != tv.shape[0] {
        return Err(c.shape_error(
            format!(
                "`attention`: batch sizes differ: queries {}, keys {}, values {}",
                c.type_text(&tq),
                c.type_text(&tk),
                c.type_text(&tv)
            ),
            &operands,
            "queries, keys and values need the same batch dim 0",
        ));
    }
    if tk.shape[1] != tv.shape[1] {
        return Err(c.shape_error(
            format!(
                "`attention`: keys {} and values {} have different sequence lengths",
                c.type_text(&tk),
                c.type_text(&tv)
            ),
            &[("the keys", k), ("the values", v)],
            "every key needs one value: dim 1 of keys and values must match",
        ));
    }
    let cq = c.known(q, 2, "channel count")?;
    let ck = c.known(k, 2, "channel count")?;
    let cv = c.known(v, 2, "channel count")?;
    if cq != ck {
        return Err(c.shape_error(
            format!(
                "`attention`: queries {} and keys {} have different channel counts ({cq} vs {ck})",
                c.type_text(&tq),
                c.type_text(&tk)
            ),
            &[("the queries", q), ("the keys", k)],
            "project queries and keys to the same width (e.g. `to_k: linear(C, bias = false)`)",
        ));
    }
    if cq % heads != 0 || cv % heads != 0 {
        return Err(c.shape_error(
            format!(
                "`attention`: {heads} heads do not divide the channels of queries {} and values {}",
                c.type_text(&tq),
                c.type_text(&tv)
            ),
            &[("the queries", q), ("the values", v)],
            "choose a head count dividing both channel counts",
        ));
    }
    let head_dim = cq / heads;
    let scale = match scale {
        None | Some(crate::elab::Value::None) => 1.0 / (head_dim as f64).sqrt(),
        Some(_) => c.float(None, "scale", None)?,
    };
    let out = TensorType::new(
        tq.dtype,
        vec![tq.shape[0].clone(), tq.shape[1].clone(), Dim::known(cv)],
    );
    let flops = product(&[&tq.shape[0], &tq.shape[1], &tk.shape[1]])
        .map(|nls| sat_scale(&nls, 2i64.saturating_mul(cq.saturating_add(cv))))
        .unwrap_or_default();
    let op = Op::new("attention")
        .with("heads", Attr::Int(heads))
        .with("scale", Attr::Float(scale));
    c.emit1(op, &[q, k, v], out, flops)
}

/// `timestep_embedding(t, dim, flip_sin_to_cos = true, shift = 0,
/// max_period = 10000, scale = 1)`: diffusers' `get_timestep_embedding`.
/// `t: [N]` (integer or float) → `f32[N, dim]`: with `half = dim // 2` and
/// `freq_j = exp(-ln(max_period) · j / (half - shift))`, the output is
/// `[sin(scale·t·freq), cos(scale·t·freq)]` (cos first when
/// `flip_sin_to_cos`), zero-padded by one column for odd `dim`.
/// FLOPs `2·N·dim` (the product and the sine or cosine per element).
fn timestep_embedding(c: &mut CallCtx) -> OpResult {
    let t = c.tensor(Some(0), "t")?;
    let dim = c.int(Some(1), "dim", None)?;
    let flip = c.bool(None, "flip_sin_to_cos", Some(true))?;
    let shift = c.float(None, "shift", Some(0.0))?;
    let max_period = c.float(None, "max_period", Some(10000.0))?;
    let scale = c.float(None, "scale", Some(1.0))?;
    super::util::at_least(c, Some(1), "dim", &[dim], 2)?;
    if !(max_period > 0.0 && max_period.is_finite()) {
        return Err(c.arg_error(
            None,
            "max_period",
            format!("`max_period` of `timestep_embedding` must be positive, got {max_period}"),
            "the default is 10000",
        ));
    }
    let half = dim / 2;
    if !shift.is_finite() || (half as f64 - shift) <= 0.0 {
        return Err(c.arg_error(
            None,
            "shift",
            format!(
                "`shift` = {shift} of `timestep_embedding` must be below half the dim ({half})"
            ),
            "diffusers uses 0 (Stable Diffusion) or 1",
        ));
    }
    let tt = c.ty(t);
    if tt.sparse || tt.dtype == DType::Bool || tt.rank() != 1 {
        return Err(c.shape_error(
            format!(
                "`timestep_embedding` expects one timestep per sample, a dense [N] tensor of numbers, got {}",
                c.type_text(&tt)
            ),
            &[("the timesteps", t)],
            "declare the input as `timestep: i64[N]` (or f32[N]); expand a scalar step to the batch first",
        ));
    }
    let out = TensorType::new(DType::F32, vec![tt.shape[0].clone(), Dim::known(dim)]);
    let flops = sat_scale(&tt.shape[0], 2 * dim);
    let op = Op::new("timestep_embedding")
        .with("dim", Attr::Int(dim))
        .with("flip_sin_to_cos", Attr::Bool(flip))
        .with("shift", Attr::Float(shift))
        .with("max_period", Attr::Float(max_period))
        .with("scale", Attr::Float(scale));
    c.emit1(op, &[t], out, flops)
}

#[cfg(test)]
mod tests {
    use crate::elab::elaborate;
    use crate::program::Program;
    use std::path::Path;

    /// Elaborates `text`; returns the output types (as text) or the messages.
    fn run(text: &str) -> Result<Vec<String>, Vec<String>> {
        let (p, diags) = Program::from_text(Path::new("t.net"), text);
        assert!(diags.is_empty(), "{diags:?}");
        let m = p.model(None).expect("one model");
        match elaborate(&p, m, &[]) {
            Ok(g) => Ok(g
                .outputs
                .iter()
                .map(|(_, v)| g.type_text(g.ty(*v)))
                .collect()),
            Err(ds) => Err(ds
                .into_iter()
                .map(|d| format!("{} | {}", d.message, d.hint.unwrap_or_default()))
                .collect()),
        }
    }

    fn err(text: &str) -> String {
        run(text).expect_err("should fail").join("\n")
    }

    #[test]
    fn self_and_cross_attention_shapes() {
        let out = run(
            "model m { input x: f32[N, 16, 64]  input ctx: f32[N, 77, 64]  input v: f32[N, 77, 32]
              output a = attention(x, x, x, 8)
              output b = attention(x, ctx, ctx, heads = 4)
              output c = attention(x, ctx, v, 8, scale = 0.5) }",
        )
        .unwrap();
        assert_eq!(out, ["f32[N, 16, 64]", "f32[N, 16, 64]", "f32[N, 16, 32]"]);
    }

    #[test]
    fn attention_flops() {
        let (p, _) = Program::from_text(
            Path::new("t.net"),
            "model m { input q: f32[2, 10, 64]  input k: f32[2, 7, 64]  output o = attention(q, k, k, 8) }",
        );
        let g = elaborate(&p, p.model(None).unwrap(), &[]).unwrap();
        let node = g.nodes.iter().find(|n| n.op.name == "attention").unwrap();
        assert_eq!(node.flops.as_known(), Some(4 * 2 * 10 * 7 * 64));
    }

    #[test]
    fn attention_errors() {
        let e = err("model m { input x: f32[N, 16, 64]  output a = attention(x, x, x, 6) }");
        assert!(e.contains("6 heads do not divide"), "{e}");
        let e = err("model m { input x: f32[N, 16, 64]  input c: f32[N, 77, 32]  output a = attention(x, c, c, 8) }");
        assert!(e.contains("different channel counts (64 vs 32)"), "{e}");
        let e = err("model m { input x: f32[N, 16, 64]  input k: f32[N, 77, 64]  input v: f32[N, 70, 64]  output a = attention(x, k, v, 8) }");
        assert!(e.contains("different sequence lengths"), "{e}");
        let e = err("model m { input x: f32[N, 4, 16, 64]  output a = attention(x, x, x, 8) }");
        assert!(e.contains("expects [batch, tokens, channels]"), "{e}");
        let e = err("model m { input x: f32[N, 16, 64]  input y: f32[M, 16, 64]  output a = attention(x, y, y, 8) }");
        assert!(e.contains("batch sizes differ"), "{e}");
        let e = err("model m { input x: f32[N, 16, 64]  output a = attention(x, x, x, 0) }");
        assert!(e.contains("at least 1"), "{e}");
    }

    #[test]
    fn timestep_embedding_shapes_and_errors() {
        let out = run("model m { input t: i64[N]  input s: f32[N]
              output a = timestep_embedding(t, 320)
              output b = timestep_embedding(s, 33, flip_sin_to_cos = false, shift = 1) }")
        .unwrap();
        assert_eq!(out, ["f32[N, 320]", "f32[N, 33]"]);
        let e = err("model m { input t: i64[N, 1]  output a = timestep_embedding(t, 320) }");
        assert!(e.contains("one timestep per sample"), "{e}");
        let e = err("model m { input t: i64[N]  output a = timestep_embedding(t, 4, shift = 2) }");
        assert!(e.contains("must be below half the dim"), "{e}");
        let e = err("model m { input t: i64[N]  output a = timestep_embedding(t, 1) }");
        assert!(e.contains("at least 2"), "{e}");
    }
}
