//! Reference semantics of the gradient ops of FCOS's training tail
//! (`grad/rules/detect.rs`): `sigmoid_focal_grad` and `iou_loss_grad`
//! (the per-item derivatives of `netc_runtime::detect`, scaled by
//! `dloss`), `decode_boxes_grad` (the decoder is linear in the
//! regression) and `boolean_mask_grad` (rows scattered back to the set
//! positions of the mask).

use super::array::{broadcast_index, unravel, Array};
use super::dense::Attrs;
use netc_runtime::detect::{focal, iou_loss, IouKind};

/// The result of one family op, or `None` if `name` is not in the family.
type Eval = Option<Result<Vec<Array>, String>>;

/// Evaluates `name` if it is one of this module's ops.
pub fn eval(name: &str, a: &Attrs, x: &[&Array], out: &[Vec<usize>]) -> Eval {
    let r = match name {
        "sigmoid_focal_grad" => {
            let (alpha, gamma) = (a.float("alpha", 0.25), a.float("gamma", 2.0));
            pair_grad(a, x, 1, |p, t| {
                [focal(p[0], t[0], alpha, gamma).1, 0.0, 0.0, 0.0]
            })
        }
        "iou_loss_grad" => match IouKind::parse(a.str("kind")) {
            Some(kind) => {
                let eps = a.float("eps", 1e-7);
                pair_grad(a, x, 4, |p, t| iou_loss(p, t, kind, eps).1)
            }
            None => Err(format!("unknown IoU loss kind `{}`", a.str("kind"))),
        },
        "decode_boxes_grad" => Ok(decode_grad(x[0], x[1], a.bool("normalize_by_size", true))),
        "boolean_mask_grad" => boolean_mask_grad(x[0], x[1], &out[0]),
        _ => return None,
    };
    Some(r.map(|g| vec![g]))
}

/// The gradient of a per-item loss over items of `w` elements (the last
/// dim for boxes, single elements otherwise) with respect to the
/// prediction, `d(p, t)` one item's derivative, scaled by `dloss` per
/// the reduction.
fn pair_grad(
    a: &Attrs,
    x: &[&Array],
    w: usize,
    d: impl Fn(&[f64], &[f64]) -> [f64; 4],
) -> Result<Array, String> {
    let [p, t, dloss] = x[..] else {
        return Err(format!(
            "takes (input, target, dloss), got {} operands",
            x.len()
        ));
    };
    if p.shape != t.shape {
        return Err(format!(
            "input {:?} and target {:?} differ",
            p.shape, t.shape
        ));
    }
    let items = p.data.len() / w;
    let red = a.str("reduction");
    let per: &[usize] = if w == 1 {
        &p.shape
    } else {
        &p.shape[..p.shape.len() - 1]
    };
    let want: &[usize] = if red == "none" { per } else { &[] };
    if dloss.shape != want {
        return Err(format!(
            "dloss has shape {:?}, the `{red}` loss has shape {want:?}",
            dloss.shape
        ));
    }
    let mut g = Array::zeros(&p.shape);
    for i in 0..items {
        let scale = match red {
            "none" => dloss.data[i],
            "mean" => dloss.data[0] / items as f64,
            _ => dloss.data[0],
        };
        let di = d(&p.data[i * w..][..w], &t.data[i * w..][..w]);
        for (out, v) in g.data[i * w..][..w].iter_mut().zip(&di) {
            *out = scale * v;
        }
    }
    Ok(g)
}

/// `d decode_boxes(reference, rel) / d rel` applied to `dy` (the result's
/// shape): `(−dy₀·w, −dy₁·h, dy₂·w, dy₃·h)` with the reference's size.
fn decode_grad(reference: &Array, dy: &Array, norm: bool) -> Array {
    let rw = *reference.shape.last().expect("rank >= 1");
    let lead = &dy.shape[..dy.shape.len() - 1];
    let ref_lead = &reference.shape[..reference.shape.len() - 1];
    let mut out = Array::zeros(&dy.shape);
    for bi in 0..dy.data.len() / 4 {
        let r = &reference.data[broadcast_index(&unravel(bi, lead), ref_lead) * rw..][..rw];
        let (w, h) = if norm && rw == 4 {
            (r[2] - r[0], r[3] - r[1])
        } else {
            (1.0, 1.0)
        };
        let d = &dy.data[bi * 4..][..4];
        out.data[bi * 4..bi * 4 + 4].copy_from_slice(&[-d[0] * w, -d[1] * h, d[2] * w, d[3] * h]);
    }
    out
}

/// Scatters the rows of `dy` (`[P, inner...]`) to the set positions of
/// `mask` in a zero tensor of shape `out`.
fn boolean_mask_grad(dy: &Array, mask: &Array, out: &[usize]) -> Result<Array, String> {
    let inner: usize = out[mask.shape.len()..].iter().product();
    let set: Vec<usize> = (0..mask.data.len())
        .filter(|&i| mask.data[i] != 0.0)
        .collect();
    if dy.data.len() != set.len() * inner {
        return Err(format!(
            "the gradient has shape {:?}, the mask keeps {} rows of {inner}",
            dy.shape,
            set.len()
        ));
    }
    let mut g = Array::zeros(out);
    for (k, &i) in set.iter().enumerate() {
        g.data[i * inner..(i + 1) * inner].copy_from_slice(&dy.data[k * inner..(k + 1) * inner]);
    }
    Ok(g)
}
