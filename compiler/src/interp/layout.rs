//! Reference semantics of the NHWC forms the layout pass produces
//! (`layout = "nhwc"` on `conv2d`, `batch_norm`, `frozen_batch_norm`,
//! `max_pool2d`, `avg_pool2d`): the activation `[N, H, W, C]` (and a conv
//! weight `[OC, KH, KW, C/g]`) is permuted to NCHW, the NCHW semantics
//! run, and the result is permuted back to `[N, OH, OW, OC]`.
//!
//! The training layout pass's form, `act_layout = "nhwc"` on `conv2d`,
//! `conv2d_grad_input` and `conv2d_grad_weight`, has channels-last
//! activations (`x`, `y`, `dy`, `dx`) and the NCHW weight `[OC, C, KH,
//! KW]` (and weight gradient): the activations are permuted to NCHW, the
//! NCHW semantics run, and an activation result is permuted back.

use super::array::Array;
use super::dense::{permute, Attrs};

const TO_NCHW: [i64; 4] = [0, 3, 1, 2];
const TO_NHWC: [i64; 4] = [0, 2, 3, 1];

/// The NCHW semantics of one op (the interpreter's dispatcher).
type Nchw = fn(&str, &Attrs, &[&Array], &[Vec<usize>]) -> Result<Vec<Array>, String>;

/// Evaluates `name` if it carries `layout = "nhwc"` or `act_layout =
/// "nhwc"`, through `nchw`.
pub fn eval(
    name: &str,
    a: &Attrs,
    x: &[&Array],
    out: &[Vec<usize>],
    nchw: Nchw,
) -> Option<Result<Vec<Array>, String>> {
    if a.str("act_layout") == "nhwc" {
        return Some(activations(name, a, x, out, nchw));
    }
    if a.str("layout") != "nhwc" {
        return None;
    }
    let rank4 = |s: &[usize]| s.len() == 4;
    if !matches!(
        name,
        "conv2d" | "batch_norm" | "frozen_batch_norm" | "max_pool2d" | "avg_pool2d"
    ) || !x.first().is_some_and(|v| rank4(&v.shape))
        || !out.first().is_some_and(|s| rank4(s))
    {
        return Some(Err(format!(
            "layout \"nhwc\" is defined for 4-D conv2d, batch norms and 2-D pools, not this `{name}`"
        )));
    }
    let to = |s: &[usize], dims: &[i64; 4]| -> Vec<usize> {
        dims.iter().map(|&d| s[d as usize]).collect()
    };
    let mut args: Vec<Array> = x.iter().map(|v| (*v).clone()).collect();
    let permute_arg = |v: &Array| permute(v, &TO_NCHW, &to(&v.shape, &TO_NCHW));
    args[0] = permute_arg(x[0]);
    if name == "conv2d" {
        match x.get(1) {
            Some(w) if rank4(&w.shape) => args[1] = permute_arg(w),
            _ => return Some(Err("conv2d in NHWC needs a 4-D weight".into())),
        }
    }
    let attrs = without(a, "layout");
    let refs: Vec<&Array> = args.iter().collect();
    let shape = to(&out[0], &TO_NCHW);
    Some(nchw(name, &Attrs(&attrs), &refs, &[shape]).map(|rs| {
        rs.iter()
            .map(|r| permute(r, &TO_NHWC, &to(&r.shape, &TO_NHWC)))
            .collect()
    }))
}

/// `name` with `act_layout = "nhwc"`: which operands (and whether the
/// result) are channels-last activations, then as the module docs say.
fn activations(
    name: &str,
    a: &Attrs,
    x: &[&Array],
    out: &[Vec<usize>],
    nchw: Nchw,
) -> Result<Vec<Array>, String> {
    let (inputs, result): (&[usize], bool) = match name {
        "conv2d" | "conv2d_grad_input" => (&[0], true),
        "conv2d_grad_weight" => (&[0, 1], false),
        _ => {
            return Err(format!(
                "act_layout \"nhwc\" is defined for conv2d and its gradients, not `{name}`"
            ))
        }
    };
    let to = |s: &[usize], dims: &[i64; 4]| -> Vec<usize> {
        dims.iter().map(|&d| s[d as usize]).collect()
    };
    let rank4 = |s: &[usize]| s.len() == 4;
    if !inputs
        .iter()
        .all(|&k| x.get(k).is_some_and(|v| rank4(&v.shape)))
        || !out.first().is_some_and(|s| rank4(s))
    {
        return Err(format!("act_layout \"nhwc\" needs 4-D operands (`{name}`)"));
    }
    let mut args: Vec<Array> = x.iter().map(|v| (*v).clone()).collect();
    for &k in inputs {
        args[k] = permute(x[k], &TO_NCHW, &to(&x[k].shape, &TO_NCHW));
    }
    let attrs = without(a, "act_layout");
    let refs: Vec<&Array> = args.iter().collect();
    let shape = if result {
        to(&out[0], &TO_NCHW)
    } else {
        out[0].clone()
    };
    let rs = nchw(name, &Attrs(&attrs), &refs, &[shape])?;
    Ok(rs
        .iter()
        .map(|r| {
            if result {
                permute(r, &TO_NHWC, &to(&r.shape, &TO_NHWC))
            } else {
                r.clone()
            }
        })
        .collect())
}

/// The attributes of `a` other than `key`.
fn without(a: &Attrs, key: &str) -> Vec<(&'static str, crate::ir::Attr)> {
    a.0.iter().filter(|(k, _)| *k != key).cloned().collect()
}
