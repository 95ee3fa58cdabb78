//! Contractions other than convolution: `linear` (a layer with weight and
//! bias), `matmul` (batched, broadcasting like `torch.matmul`).

use super::util::{broadcast, expect_float, fan_in_uniform};
use super::Builtin;
use crate::elab::{CallCtx, OpResult};
use crate::ir::{Dim, Op, TensorType};

/// The family's built-ins.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "linear",
        build: linear,
    },
    Builtin {
        name: "matmul",
        build: matmul,
    },
];

/// `linear(x, out_features, bias = true)` over the last dim of `x`:
/// weight `[out, in]`, bias `[out]`.
fn linear(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let out_f = c.int(Some(1), "out_features", None)?;
    let bias = c.bool(None, "bias", Some(true))?;
    super::util::at_least(c, Some(1), "out_features", &[out_f], 1)?;
    let t = expect_float(c, x)?;
    if t.rank() == 0 {
        return Err(c.shape_error(
            "`linear` needs at least one dimension",
            &[("the input", x)],
            "reshape the scalar to [1]",
        ));
    }
    let in_f = c.known(x, t.rank() - 1, "feature count")?;
    let w = c.param("weight", &[out_f, in_f], fan_in_uniform(in_f))?;
    let mut inputs = vec![x, w];
    if bias {
        inputs.push(c.param("bias", &[out_f], fan_in_uniform(in_f))?);
    }
    let mut shape = t.shape.clone();
    *shape.last_mut().expect("rank >= 1") = Dim::known(out_f);
    let out = TensorType::new(t.dtype, shape);
    let flops = out
        .numel()
        .unwrap_or_default()
        .scale(2 * in_f + i64::from(bias));
    c.emit1(Op::new("linear"), &inputs, out, flops)
}

/// `matmul(a, b)`: `[..., m, k] x [..., k, n] -> [..., m, n]`, batch dims
/// broadcast; a rank-1 operand is treated as a row/column vector.
fn matmul(c: &mut CallCtx) -> OpResult {
    let a = c.tensor(Some(0), "a")?;
    let b = c.tensor(Some(1), "b")?;
    let (ta, tb) = (expect_float(c, a)?, expect_float(c, b)?);
    if ta.rank() < 2 || tb.rank() < 2 {
        return Err(c.shape_error(
            format!(
                "`matmul` needs operands of rank >= 2, got {} and {}",
                c.type_text(&ta),
                c.type_text(&tb)
            ),
            &[("the left operand", a), ("the right operand", b)],
            "add a dim with `unsqueeze`",
        ));
    }
    let (m, k1) = (&ta.shape[ta.rank() - 2], &ta.shape[ta.rank() - 1]);
    let (k2, n) = (&tb.shape[tb.rank() - 2], &tb.shape[tb.rank() - 1]);
    if k1 != k2 {
        return Err(c.shape_error(
            format!("`matmul`: inner dims differ ({} vs {}) for {} x {}", c.dim_text(k1), c.dim_text(k2), c.type_text(&ta), c.type_text(&tb)),
            &[("the left operand", a), ("the right operand", b)],
            "the last dim of the left operand must equal the second-to-last of the right; transpose one side?",
        ));
    }
    let Some(mut shape) = broadcast(&ta.shape[..ta.rank() - 2], &tb.shape[..tb.rank() - 2]) else {
        return Err(c.shape_error(
            "`matmul`: batch dims do not broadcast",
            &[("the left operand", a), ("the right operand", b)],
            "leading dims must be equal or 1",
        ));
    };
    shape.push(m.clone());
    shape.push(n.clone());
    let out = TensorType::new(ta.dtype, shape);
    let k = k1.as_known().unwrap_or(1);
    let flops = out.numel().unwrap_or_default().scale(2 * k);
    c.emit1(Op::new("matmul"), &[a, b], out, flops)
}
