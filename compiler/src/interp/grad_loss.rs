//! Reference semantics of the loss gradient ops the backward rules emit
//! (`docs/gradops.md`, "Losses"): each gives the gradient of the loss with
//! respect to its first operand (logits, scores or prediction), scaled by
//! `dloss`, the incoming gradient of the loss value (`f32[]` for the
//! `mean` and `sum` reductions, the per-element loss's shape for `none`).
//! PyTorch's semantics: a weighted cross-entropy mean divides by the sum
//! of the target classes' weights, ignored targets get a zero gradient,
//! `multi_margin` and the element losses divide by the element count.

use super::array::{broadcast_index, unravel, Array};
use super::dense::{along, log_softmax, Attrs};

/// The result of one family op, or `None` if `name` is not in the family.
type Eval = Option<Result<Vec<Array>, String>>;

/// Evaluates `name` if it is one of this module's ops.
pub fn eval(name: &str, a: &Attrs, x: &[&Array], _out: &[Vec<usize>]) -> Eval {
    let r = match name {
        "cross_entropy_grad" => cross_entropy_grad(a, x),
        "multi_margin_grad" => multi_margin_grad(a, x),
        "bce_with_logits_grad" => bce_with_logits_grad(a, x),
        "mse_grad" => mse_grad(a, x),
        _ => return None,
    };
    Some(r.map(|g| vec![g]))
}

/// The reduction, checked.
fn reduction<'a>(a: &'a Attrs) -> Result<&'a str, String> {
    match a.str("reduction") {
        r @ ("mean" | "sum" | "none") => Ok(r),
        other => Err(format!("unknown reduction `{other}`")),
    }
}

/// The operands `(x, target, dloss, extra)` of a loss gradient, with
/// `dloss` checked against the reduction (`per` is the per-element loss
/// shape).
fn operands<'x>(
    x: &[&'x Array],
    per: impl Fn(&Array) -> Vec<usize>,
    red: &str,
) -> Result<(&'x Array, &'x Array, &'x Array, Option<&'x Array>), String> {
    let (Some(&v), Some(&t), Some(&d)) = (x.first(), x.get(1), x.get(2)) else {
        return Err(format!(
            "takes (input, target, dloss[, weight]), got {} operands",
            x.len()
        ));
    };
    let want = if red == "none" { per(v) } else { Vec::new() };
    if d.shape != want {
        return Err(format!(
            "dloss has shape {:?}, the `{red}` loss has shape {want:?}",
            d.shape
        ));
    }
    Ok((v, t, d, x.get(3).copied()))
}

/// The class of `t` if it is a valid class index in `0..classes`.
fn class_of(t: f64, classes: usize) -> Result<usize, String> {
    if t >= 0.0 && t < classes as f64 && t.fract() == 0.0 {
        Ok(t as usize)
    } else {
        Err(format!("target {t} is not a class index in 0..{classes}"))
    }
}

/// The logits' shape without the class dim 1.
fn without_classes(v: &Array) -> Vec<usize> {
    let mut s = v.shape.clone();
    if s.len() > 1 {
        s.remove(1);
    }
    s
}

/// `d/dlogits` of `F.cross_entropy(logits, target, weight, ignore_index,
/// label_smoothing, reduction)`, logits `[N, C, d...]`.
fn cross_entropy_grad(a: &Attrs, x: &[&Array]) -> Result<Array, String> {
    let red = reduction(a)?;
    let (logits, target, dloss, weight) = operands(x, without_classes, red)?;
    if logits.shape.len() < 2 || target.shape != without_classes(logits) {
        return Err(format!(
            "logits {:?} and targets {:?} do not match",
            logits.shape, target.shape
        ));
    }
    let classes = logits.shape[1];
    let w: Vec<f64> = weight.map_or_else(|| vec![1.0; classes], |w| w.data.clone());
    if w.len() != classes {
        return Err(format!("{} class weights for {classes} classes", w.len()));
    }
    let eps = a.float("label_smoothing", 0.0);
    let ignore = a.int("ignore_index") as f64;
    let inner: usize = logits.shape[2..].iter().product();
    let mut classes_of = Vec::with_capacity(target.data.len());
    for &t in &target.data {
        classes_of.push(if t == ignore {
            None
        } else {
            Some(class_of(t, classes)?)
        });
    }
    let total: f64 = classes_of.iter().flatten().map(|&t| w[t]).sum();
    let w_sum: f64 = w.iter().sum();
    let p = along(logits, 1, |l| {
        log_softmax(l).into_iter().map(f64::exp).collect()
    });
    let mut grad = Array::zeros(&logits.shape);
    for (i, t) in classes_of.iter().enumerate() {
        let Some(t) = *t else { continue };
        let g = match red {
            "none" => dloss.data[i],
            "sum" => dloss.data[0],
            _ => dloss.data[0] / total,
        };
        let (n, s) = (i / inner, i % inner);
        for c in 0..classes {
            let at = (n * classes + c) * inner + s;
            let hot = if c == t { 1.0 } else { 0.0 };
            let nll = (1.0 - eps) * w[t] * (p.data[at] - hot);
            let smooth = eps / classes as f64 * (w_sum * p.data[at] - w[c]);
            grad.data[at] = g * (nll + smooth);
        }
    }
    Ok(grad)
}

/// `d/dscores` of `nn.MultiMarginLoss(p, margin, weight, reduction)`,
/// scores `[N, C]`: each margin violation `z = margin - x[y] + x[i] > 0`
/// (`i != y`) adds `w[y]·p·z^{p-1}/C` to `x[i]` and subtracts it from
/// `x[y]`.
fn multi_margin_grad(a: &Attrs, x: &[&Array]) -> Result<Array, String> {
    let red = reduction(a)?;
    let (s, target, dloss, weight) = operands(x, |v| v.shape[..1].to_vec(), red)?;
    if s.shape.len() != 2 || target.shape != s.shape[..1] {
        return Err(format!(
            "scores {:?} and targets {:?} do not match",
            s.shape, target.shape
        ));
    }
    let (n, c) = (s.shape[0], s.shape[1]);
    let margin = a.float("margin", 1.0);
    let p = a.int("p");
    if p != 1 && p != 2 {
        return Err(format!("p = {p}, expected 1 or 2"));
    }
    let mut grad = Array::zeros(&s.shape);
    for row in 0..n {
        let t = class_of(target.data[row], c)?;
        let g = match red {
            "none" => dloss.data[row],
            "sum" => dloss.data[0],
            _ => dloss.data[0] / n as f64,
        } * weight.map_or(1.0, |w| w.data[t])
            / c as f64;
        let xs = &s.data[row * c..(row + 1) * c];
        for i in (0..c).filter(|&i| i != t) {
            let z = margin - xs[t] + xs[i];
            if z > 0.0 {
                let d = g * if p == 1 { 1.0 } else { 2.0 * z };
                grad.data[row * c + i] += d;
                grad.data[row * c + t] -= d;
            }
        }
    }
    Ok(grad)
}

/// The scale of element `i`'s gradient: `dloss[i]`, `dloss`, or
/// `dloss / count`.
fn element_scale(red: &str, dloss: &Array, i: usize, count: usize) -> f64 {
    match red {
        "none" => dloss.data[i],
        "sum" => dloss.data[0],
        _ => dloss.data[0] / count as f64,
    }
}

/// `d/dx` of `F.binary_cross_entropy_with_logits(x, t, pos_weight)`:
/// `(1 - t)·σ(x) - pos_weight·t·σ(-x)` per element.
fn bce_with_logits_grad(a: &Attrs, x: &[&Array]) -> Result<Array, String> {
    let red = reduction(a)?;
    let (z, t, dloss, pw) = operands(x, |v| v.shape.clone(), red)?;
    if t.shape != z.shape {
        return Err(format!(
            "input {:?} and target {:?} differ",
            z.shape, t.shape
        ));
    }
    let sigmoid = |v: f64| 1.0 / (1.0 + (-v).exp());
    let mut grad = Array::zeros(&z.shape);
    let count = z.data.len();
    for (i, g) in grad.data.iter_mut().enumerate() {
        let (xv, tv) = (z.data[i], t.data[i]);
        let pwv = pw.map_or(1.0, |p| {
            p.data[broadcast_index(&unravel(i, &z.shape), &p.shape)]
        });
        let d = (1.0 - tv) * sigmoid(xv) - pwv * tv * sigmoid(-xv);
        *g = element_scale(red, dloss, i, count) * d;
    }
    Ok(grad)
}

/// `d/dpred` of `F.mse_loss(pred, target)`: `2·(pred - target)` per element.
fn mse_grad(a: &Attrs, x: &[&Array]) -> Result<Array, String> {
    let red = reduction(a)?;
    let (v, t, dloss, _) = operands(x, |v| v.shape.clone(), red)?;
    if t.shape != v.shape {
        return Err(format!(
            "input {:?} and target {:?} differ",
            v.shape, t.shape
        ));
    }
    let count = v.data.len();
    let data = (0..count)
        .map(|i| element_scale(red, dloss, i, count) * 2.0 * (v.data[i] - t.data[i]))
        .collect();
    Ok(Array::new(&v.shape, data))
}

#[cfg(test)]
mod tests;
