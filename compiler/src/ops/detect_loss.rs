//! Detection losses with torchvision's semantics: `sigmoid_focal`
//! (`torchvision.ops.sigmoid_focal_loss`) for the classification branch and
//! `iou_loss` (IoU, -log IoU, or `generalized_box_iou_loss`) for boxes.
//! Both default to `reduction = "sum"`, as FCOS uses them (it then divides by
//! the number of positive locations); torchvision's own default is "none".

use super::util::{expect_float, numel};
use super::Builtin;
use crate::diag::Diagnostic;
use crate::elab::{CallCtx, OpResult};
use crate::ir::{Attr, Op, TensorType, ValueId};

/// The family's built-ins.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "sigmoid_focal",
        build: sigmoid_focal,
    },
    Builtin {
        name: "iou_loss",
        build: iou_loss,
    },
];

/// Reads `reduction` (default "sum") and returns it with the output type.
fn reduction(c: &mut CallCtx, per: &TensorType) -> Result<(&'static str, TensorType), Diagnostic> {
    let r = c.choice(None, "reduction", &["sum", "mean", "none"], "sum")?;
    let out = if r == "none" {
        per.clone()
    } else {
        TensorType::new(per.dtype, vec![])
    };
    Ok((r, out))
}

fn same_type(c: &CallCtx, x: ValueId, t: ValueId, what: &str) -> Result<TensorType, Diagnostic> {
    let xt = expect_float(c, x)?;
    let tt = c.ty(t);
    if xt.shape != tt.shape || xt.dtype != tt.dtype || tt.sparse {
        return Err(c.shape_error(
            format!(
                "`{}`: {what} {} and target {} must have the same shape and type",
                c.op_name(),
                c.type_text(&xt),
                c.type_text(&tt)
            ),
            &[(what, x), ("the target", t)],
            "select both with the same mask or indices so they line up",
        ));
    }
    Ok(xt)
}

/// `sigmoid_focal(x, target, alpha = 0.25, gamma = 2.0, reduction = "sum")`:
/// `-alpha_t * (1 - p_t)^gamma * log(p_t)` per element with `p = sigmoid(x)`
/// and float targets in 0..1 of the same shape; `alpha < 0` disables the
/// class weighting (as torchvision).
fn sigmoid_focal(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let target = c.tensor(Some(1), "target")?;
    let alpha = c.float(None, "alpha", Some(0.25))?;
    let gamma = c.float(None, "gamma", Some(2.0))?;
    c.check_range(None, "alpha", alpha, -1.0, 1.0)?;
    c.check_range(None, "gamma", gamma, 0.0, 100.0)?;
    let xt = same_type(c, x, target, "the logits")?;
    let (r, out) = reduction(c, &xt)?;
    let op = Op::new("sigmoid_focal")
        .with("alpha", Attr::Float(alpha))
        .with("gamma", Attr::Float(gamma))
        .with("reduction", Attr::Str(r.into()));
    // sigmoid, BCE, p_t, modulating power, alpha weighting.
    let flops = numel(&xt).scale(12);
    c.emit1(op, &[x, target], out, flops)
}

/// `iou_loss(pred, target, kind = "iou", eps = 1e-7, reduction = "sum")` of
/// `[..., 4]` boxes `(x1, y1, x2, y2)`: `kind = "iou"` gives `1 - IoU`,
/// `"log_iou"` gives `-log(IoU)` (the FCOS paper / UnitBox), `"giou"` gives
/// `1 - GIoU` (torchvision `generalized_box_iou_loss`); per box `[...]`.
fn iou_loss(c: &mut CallCtx) -> OpResult {
    let pred = c.tensor(Some(0), "pred")?;
    let target = c.tensor(Some(1), "target")?;
    let kind = c.choice(None, "kind", &["iou", "log_iou", "giou"], "iou")?;
    let eps = c.float(None, "eps", Some(1e-7))?;
    c.check_range(None, "eps", eps, 0.0, 1.0)?;
    let pt = same_type(c, pred, target, "the predicted boxes")?;
    if pt.shape.last().and_then(|d| d.as_known()) != Some(4) {
        return Err(c.shape_error(
            format!(
                "`iou_loss` expects boxes [..., 4], got {}",
                c.type_text(&pt)
            ),
            &[("the predicted boxes", pred)],
            "boxes are (x1, y1, x2, y2) in the last dim; decode (l, t, r, b) with `decode_boxes`",
        ));
    }
    let per = TensorType::new(pt.dtype, pt.shape[..pt.rank() - 1].to_vec());
    let (r, out) = reduction(c, &per)?;
    let op = Op::new("iou_loss")
        .with("kind", Attr::Str(kind.into()))
        .with("eps", Attr::Float(eps))
        .with("reduction", Attr::Str(r.into()));
    let per_box = if kind == "giou" { 25 } else { 16 };
    let flops = numel(&per).scale(per_box);
    c.emit1(op, &[pred, target], out, flops)
}

#[cfg(test)]
mod tests {

    fn run(text: &str) -> Result<Vec<String>, String> {
        crate::testing::program(text).map(|g| crate::testing::output_types(&g))
    }

    #[test]
    fn shapes() {
        let o = run(
            "model m { input x: f32[N, 20, 91]\n input t: f32[N, 20, 91]\n input b: f32[N, 20, 4]\n\
             input g: f32[N, 20, 4]\n output a = sigmoid_focal(x, t)\n\
             output c = sigmoid_focal(x, t, reduction = \"none\")\n\
             output d = iou_loss(b, g, kind = \"giou\", reduction = \"none\")\n output e = iou_loss(b, g) }",
        )
        .unwrap();
        assert_eq!(o, vec!["f32[]", "f32[N, 20, 91]", "f32[N, 20]", "f32[]"]);
    }

    #[test]
    fn errors() {
        let e = run("model m { input x: f32[N, 20, 91]\n input t: f32[N, 20, 90]\n output a = sigmoid_focal(x, t) }").unwrap_err();
        assert!(
            e.contains("f32[N, 20, 91] and target f32[N, 20, 90]"),
            "{e}"
        );
        let e = run("model m { input b: f32[N, 3]\n output a = iou_loss(b, b) }").unwrap_err();
        assert!(e.contains("expects boxes [..., 4], got f32[N, 3]"), "{e}");
        let e = run("model m { input b: f32[N, 4]\n output a = iou_loss(b, b, kind = \"diou\") }")
            .unwrap_err();
        assert!(e.contains("not a valid `kind`"), "{e}");
    }
}
