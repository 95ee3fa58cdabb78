//! Classification and regression losses with PyTorch's semantics:
//! `cross_entropy` (class indices, class weights, label smoothing),
//! `multi_margin` (`nn.MultiMarginLoss`, the SVM's hinge), `bce_with_logits`,
//! `mse`. Every loss takes `reduction = "mean" | "sum" | "none"`.

use super::util::{expect_float, numel};
use super::Builtin;
use crate::diag::Diagnostic;
use crate::elab::{CallCtx, OpResult};
use crate::ir::{Attr, Op, TensorType, ValueId};
use netc_runtime::DType;

/// The family's built-ins.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "cross_entropy",
        build: cross_entropy,
    },
    Builtin {
        name: "multi_margin",
        build: multi_margin,
    },
    Builtin {
        name: "bce_with_logits",
        build: bce_with_logits,
    },
    Builtin {
        name: "mse",
        build: mse,
    },
];

/// Reads `reduction` and returns it with the loss's output type.
pub fn reduction(
    c: &mut CallCtx,
    per_element: &TensorType,
) -> Result<(&'static str, TensorType), Diagnostic> {
    let r = c.choice(None, "reduction", &["mean", "sum", "none"], "mean")?;
    let out = if r == "none" {
        per_element.clone()
    } else {
        TensorType::new(per_element.dtype, vec![])
    };
    Ok((r, out))
}

/// Class-index targets: `i64` with the logits' shape minus the class dim 1.
fn class_targets(
    c: &CallCtx,
    logits: ValueId,
    target: ValueId,
) -> Result<(TensorType, i64), Diagnostic> {
    let lt = expect_float(c, logits)?;
    if lt.rank() < 2 {
        return Err(c.shape_error(
            format!(
                "`{}` expects logits [N, C, ...], got {}",
                c.op_name(),
                c.type_text(&lt)
            ),
            &[("the logits", logits)],
            "the class scores are dim 1",
        ));
    }
    let classes = c.known(logits, 1, "class count")?;
    let tt = c.ty(target);
    let mut want = lt.shape.clone();
    want.remove(1);
    if !tt.dtype.is_int() || tt.shape != want {
        return Err(c.shape_error(
            format!(
                "`{}`: targets must be integer class indices of shape {}, got {}",
                c.op_name(),
                c.type_text(&TensorType::new(DType::I64, want.clone())),
                c.type_text(&tt)
            ),
            &[("the logits", logits), ("the targets", target)],
            if lt.rank() > 2 && tt.rank() == 1 {
                format!(
                    "the logits still have {} spatial dim(s): flatten (or pool) the features before the classifier, e.g. `|> flatten |> fc: linear(classes)`",
                    lt.rank() - 2
                )
            } else {
                format!(
                    "declare the label as `label y: {}` (class indices)",
                    c.type_text(&TensorType::new(DType::I64, want.clone()))
                )
            },
        ));
    }
    Ok((TensorType::new(lt.dtype, want), classes))
}

/// `cross_entropy(logits, target, weight = none, label_smoothing = 0.0,
/// ignore_index = -100, reduction = "mean")`: log-softmax over dim 1 and
/// negative log-likelihood of integer targets, as `F.cross_entropy`.
fn cross_entropy(c: &mut CallCtx) -> OpResult {
    let logits = c.tensor(Some(0), "logits")?;
    let target = c.tensor(Some(1), "target")?;
    let weight = c.float_list(None, "weight", Some(Vec::new()))?;
    let smoothing = c.float(None, "label_smoothing", Some(0.0))?;
    let ignore = c.int(None, "ignore_index", Some(-100))?;
    c.check_range(None, "label_smoothing", smoothing, 0.0, 1.0)?;
    let (per, classes) = class_targets(c, logits, target)?;
    let mut inputs = vec![logits, target];
    if !weight.is_empty() {
        if weight.len() as i64 != classes {
            return Err(c.arg_error(
                None,
                "weight",
                format!(
                    "`cross_entropy` has {classes} classes but {} class weights",
                    weight.len()
                ),
                "give one weight per class",
            ));
        }
        let w = c.constant(
            "class weights",
            TensorType::known(DType::F32, &[classes]),
            weight,
        );
        inputs.push(w);
    }
    let (r, out) = reduction(c, &per)?;
    let op = Op::new("cross_entropy")
        .with("label_smoothing", Attr::Float(smoothing))
        .with("ignore_index", Attr::Int(ignore))
        .with("reduction", Attr::Str(r.into()));
    let flops = numel(&c.ty(logits)).scale(6);
    c.emit1(op, &inputs, out, flops)
}

/// `multi_margin(scores, target, p = 1, margin = 1.0, reduction = "mean")`:
/// `sum_{i != y} max(0, margin - x[y] + x[i])^p / C`, as `nn.MultiMarginLoss`.
fn multi_margin(c: &mut CallCtx) -> OpResult {
    let scores = c.tensor(Some(0), "scores")?;
    let target = c.tensor(Some(1), "target")?;
    let p = c.int(None, "p", Some(1))?;
    let margin = c.float(None, "margin", Some(1.0))?;
    if p != 1 && p != 2 {
        return Err(c.arg_error(
            None,
            "p",
            format!("`multi_margin` supports p = 1 or 2, got {p}"),
            "as torch.nn.MultiMarginLoss",
        ));
    }
    let st = c.ty(scores);
    if st.rank() != 2 {
        return Err(c.shape_error(
            format!(
                "`multi_margin` expects scores [N, C], got {}",
                c.type_text(&st)
            ),
            &[("the scores", scores)],
            "flatten the scores to [N, C]",
        ));
    }
    let (per, _) = class_targets(c, scores, target)?;
    let (r, out) = reduction(c, &per)?;
    let op = Op::new("multi_margin")
        .with("p", Attr::Int(p))
        .with("margin", Attr::Float(margin))
        .with("reduction", Attr::Str(r.into()));
    let flops = numel(&st).scale(4);
    c.emit1(op, &[scores, target], out, flops)
}

fn same_shape_targets(c: &CallCtx, x: ValueId, target: ValueId) -> Result<TensorType, Diagnostic> {
    let xt = expect_float(c, x)?;
    let tt = c.ty(target);
    if tt.shape != xt.shape || tt.dtype != xt.dtype {
        return Err(c.shape_error(
            format!(
                "`{}`: input {} and target {} must have the same shape and type",
                c.op_name(),
                c.type_text(&xt),
                c.type_text(&tt)
            ),
            &[("the input", x), ("the target", target)],
            "reshape the target or the prediction so they match",
        ));
    }
    Ok(xt)
}

/// `bce_with_logits(x, target, pos_weight = none, reduction = "mean")`.
fn bce_with_logits(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let target = c.tensor(Some(1), "target")?;
    let pos_weight = c.opt_tensor(None, "pos_weight")?;
    let xt = same_shape_targets(c, x, target)?;
    let mut inputs = vec![x, target];
    if let Some(pw) = pos_weight {
        inputs.push(pw);
    }
    let (r, out) = reduction(c, &xt)?;
    let flops = numel(&xt).scale(6);
    c.emit1(
        Op::new("bce_with_logits").with("reduction", Attr::Str(r.into())),
        &inputs,
        out,
        flops,
    )
}

/// `mse(x, target, reduction = "mean")`.
fn mse(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let target = c.tensor(Some(1), "target")?;
    let xt = same_shape_targets(c, x, target)?;
    let (r, out) = reduction(c, &xt)?;
    let flops = numel(&xt).scale(3);
    c.emit1(
        Op::new("mse").with("reduction", Attr::Str(r.into())),
        &[x, target],
        out,
        flops,
    )
}
