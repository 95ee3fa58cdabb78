//! Detection pre/post-processing with torchvision's semantics: FCOS
//! locations and anchors (`AnchorGenerator` with one square anchor of side
//! = stride per location), the FCOS box coder (`BoxLinearCoder`, decode and
//! encode), centerness targets, box clipping, and the selection ops whose
//! result size is known only at run time: `nonzero`, `boolean_mask`, `topk`
//! over a run-time count, `nms`, `batched_nms`. Their output sizes are
//! data-dependent dims (printed as `K`, `K2`, ... with a bound), so memory
//! can be planned from the bound and every later op sees the size.

use super::util::{at_least, axis, broadcast, expect_float, numel};
use super::Builtin;
use crate::diag::Diagnostic;
use crate::elab::{CallCtx, OpResult, Value};
use crate::ir::{Attr, Dim, Op, TensorType, ValueId};
use netc_runtime::DType;

/// The family's built-ins.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "fcos_locations",
        build: fcos_locations,
    },
    Builtin {
        name: "fcos_anchors",
        build: fcos_anchors,
    },
    Builtin {
        name: "decode_boxes",
        build: |c| coder(c, true),
    },
    Builtin {
        name: "encode_boxes",
        build: |c| coder(c, false),
    },
    Builtin {
        name: "centerness",
        build: centerness,
    },
    Builtin {
        name: "clip_boxes",
        build: clip_boxes,
    },
    Builtin {
        name: "topk",
        build: topk,
    },
    Builtin {
        name: "nonzero",
        build: nonzero,
    },
    Builtin {
        name: "boolean_mask",
        build: boolean_mask,
    },
    Builtin {
        name: "index_select",
        build: index_select,
    },
    Builtin {
        name: "unravel_index",
        build: unravel_index,
    },
    Builtin {
        name: "nms",
        build: |c| nms(c, false),
    },
    Builtin {
        name: "batched_nms",
        build: |c| nms(c, true),
    },
];

/// The `(height, width)` of one pyramid level.
type Level = (i64, i64);

/// Default FCOS strides (P3..P7).
const FCOS_STRIDES: [i64; 5] = [8, 16, 32, 64, 128];

/// The `[h, w]` of every level: from feature maps (their last two dims) or
/// from `[h, w]` lists.
fn level_sizes(c: &mut CallCtx) -> Result<Vec<Level>, Diagnostic> {
    let bad = |c: &mut CallCtx| {
        c.arg_error(
            Some(0),
            "levels",
            format!(
                "`{}` needs the levels as a list of feature maps [N, C, H, W] or of [h, w] sizes",
                c.op_name()
            ),
            "e.g. `fcos_locations([p3, p4, p5, p6, p7])` or `fcos_locations([[64, 64], [32, 32]])`",
        )
    };
    let Some(Value::List(items)) = c.value(Some(0), "levels") else {
        return Err(bad(c));
    };
    if items.is_empty() {
        return Err(bad(c));
    }
    let mut out = Vec::new();
    for it in items.iter() {
        match it {
            Value::Tensor(t) => {
                let r = c.ty(*t).rank();
                if r < 2 {
                    return Err(bad(c));
                }
                out.push((c.known(*t, r - 2, "height")?, c.known(*t, r - 1, "width")?));
            }
            Value::List(hw) => match hw.as_slice() {
                [Value::Int(h), Value::Int(w)] if *h > 0 && *w > 0 => out.push((*h, *w)),
                _ => return Err(bad(c)),
            },
            _ => return Err(bad(c)),
        }
    }
    Ok(out)
}

/// The levels and their strides (one per level, checked).
fn levels_and_strides(c: &mut CallCtx) -> Result<(Vec<Level>, Vec<i64>), Diagnostic> {
    let levels = level_sizes(c)?;
    let strides = c.int_list(Some(1), "strides", Some(FCOS_STRIDES.to_vec()))?;
    at_least(c, Some(1), "strides", &strides, 1)?;
    if strides.len() != levels.len() {
        return Err(c.arg_error(
            Some(1),
            "strides",
            format!(
                "`{}` got {} levels but {} strides",
                c.op_name(),
                levels.len(),
                strides.len()
            ),
            "give one stride per level (FCOS: [8, 16, 32, 64, 128] for P3..P7)",
        ));
    }
    let total: i64 = levels.iter().map(|(h, w)| h * w).sum();
    if total > 1 << 24 {
        return Err(c.error(
            format!("`{}` would build {total} locations", c.op_name()),
            "location tables are compile-time constants; keep them below 2^24 entries",
        ));
    }
    Ok((levels, strides))
}

/// `fcos_locations(levels, strides = [8, 16, 32, 64, 128], offset = 0.0)`:
/// the image position `(x, y)` of every location, levels concatenated, row
/// major inside a level: `(offset * s + j * s, offset * s + i * s)`.
/// `offset = 0.0` matches torchvision (its anchor centres); the FCOS paper
/// and mmdetection use `offset = 0.5` (`s/2 + x*s`).
fn fcos_locations(c: &mut CallCtx) -> OpResult {
    let (levels, strides) = levels_and_strides(c)?;
    let offset = c.float(None, "offset", Some(0.0))?;
    c.check_range(None, "offset", offset, 0.0, 1.0)?;
    let mut data = Vec::new();
    for (&(h, w), &s) in levels.iter().zip(&strides) {
        let s = s as f64;
        for i in 0..h {
            for j in 0..w {
                data.push(offset * s + j as f64 * s);
                data.push(offset * s + i as f64 * s);
            }
        }
    }
    let n = (data.len() / 2) as i64;
    Ok(Value::Tensor(c.constant(
        format!("fcos_locations(levels={levels:?}, strides={strides:?}, offset={offset})"),
        TensorType::known(DType::F32, &[n, 2]),
        data,
    )))
}

/// `fcos_anchors(levels, strides = [8, 16, 32, 64, 128])`: torchvision's
/// FCOS anchors, one square box of side `s` centred on `(j * s, i * s)`
/// per location: `[x - s/2, y - s/2, x + s/2, y + s/2]` (half-sides rounded
/// half-to-even as torchvision's `round()`).
fn fcos_anchors(c: &mut CallCtx) -> OpResult {
    let (levels, strides) = levels_and_strides(c)?;
    let mut data = Vec::new();
    for (&(h, w), &s) in levels.iter().zip(&strides) {
        let half = (s as f64 / 2.0).round_ties_even();
        let s = s as f64;
        for i in 0..h {
            for j in 0..w {
                let (x, y) = (j as f64 * s, i as f64 * s);
                data.extend([x - half, y - half, x + half, y + half]);
            }
        }
    }
    let n = (data.len() / 4) as i64;
    Ok(Value::Tensor(c.constant(
        format!("fcos_anchors(levels={levels:?}, strides={strides:?})"),
        TensorType::known(DType::F32, &[n, 4]),
        data,
    )))
}

/// Requires a float tensor whose last dim is `n` (boxes: 4).
fn last_dim(c: &CallCtx, v: ValueId, n: i64, what: &str) -> Result<TensorType, Diagnostic> {
    let t = expect_float(c, v)?;
    if t.shape.last().and_then(Dim::as_known) != Some(n) {
        return Err(c.shape_error(
            format!(
                "`{}` expects {what} with a last dim of {n}, got {}",
                c.op_name(),
                c.type_text(&t)
            ),
            &[(what, v)],
            if n == 4 {
                "boxes are [..., 4]: (x1, y1, x2, y2), or (l, t, r, b) distances"
            } else {
                "points are [..., 2]: (x, y)"
            },
        ));
    }
    Ok(t)
}

/// `decode_boxes(reference, codes, normalize_by_size = true)` and
/// `encode_boxes(reference, boxes, normalize_by_size = true)`: torchvision's
/// `BoxLinearCoder`. `reference` is `[..., 4]` anchors (from `fcos_anchors`)
/// or `[..., 2]` points (then `normalize_by_size` must be false); leading
/// dims broadcast (`[L, 4]` anchors with `[N, L, 4]` codes give `[N, L, 4]`).
fn coder(c: &mut CallCtx, decode: bool) -> OpResult {
    let reference = c.tensor(Some(0), "reference")?;
    let other_name = if decode { "codes" } else { "boxes" };
    let other = c.tensor(Some(1), other_name)?;
    let normalize = c.bool(None, "normalize_by_size", Some(true))?;
    let rt = expect_float(c, reference)?;
    let ref_width = rt.shape.last().and_then(Dim::as_known);
    if ref_width == Some(2) {
        if normalize {
            return Err(c.shape_error(
                format!(
                    "`{}`: reference points {} have no size to normalise by",
                    c.op_name(),
                    c.type_text(&rt)
                ),
                &[("the reference", reference)],
                "pass anchor boxes from `fcos_anchors`, or `normalize_by_size = false` for distances in pixels",
            ));
        }
    } else {
        last_dim(c, reference, 4, "the reference boxes")?;
    }
    let ot = last_dim(c, other, 4, if decode { "the codes" } else { "the boxes" })?;
    if ot.dtype != rt.dtype {
        return Err(c.shape_error(
            format!(
                "`{}`: reference {} and {other_name} {} have different element types",
                c.op_name(),
                c.type_text(&rt),
                c.type_text(&ot)
            ),
            &[("the reference", reference), (other_name, other)],
            "cast one of them",
        ));
    }
    let lead = |t: &TensorType| t.shape[..t.rank() - 1].to_vec();
    let Some(mut shape) = broadcast(&lead(&rt), &lead(&ot)) else {
        return Err(c.shape_error(
            format!(
                "`{}`: the leading dims of reference {} and {other_name} {} do not broadcast",
                c.op_name(),
                c.type_text(&rt),
                c.type_text(&ot)
            ),
            &[("the reference", reference), (other_name, other)],
            "one location per box: e.g. anchors [L, 4] with codes [N, L, 4]",
        ));
    };
    shape.push(Dim::known(4));
    let out = TensorType::new(ot.dtype, shape);
    // Centres (4), sizes (2), scaling (4), four sides (4) per box.
    let flops = numel(&out).div_exact(4).unwrap_or_default().scale(14);
    let name = if decode {
        "decode_boxes"
    } else {
        "encode_boxes"
    };
    let op = Op::new(name).with("normalize_by_size", Attr::Bool(normalize));
    c.emit1(op, &[reference, other], out, flops)
}

/// `centerness(ltrb)`: `sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`
/// of `[..., 4]` distances, as FCOS's centerness target; drops the last dim.
fn centerness(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "ltrb")?;
    let t = last_dim(c, x, 4, "the distances")?;
    let out = TensorType::new(t.dtype, t.shape[..t.rank() - 1].to_vec());
    let flops = numel(&out).scale(8);
    c.emit1(Op::new("centerness"), &[x], out, flops)
}

/// `clip_boxes(boxes, size = [h, w])`: clamps x to `0..=w`, y to `0..=h`
/// (torchvision `clip_boxes_to_image`).
fn clip_boxes(c: &mut CallCtx) -> OpResult {
    let b = c.tensor(Some(0), "boxes")?;
    let size = c.ints(Some(1), "size", 2, None)?;
    at_least(c, Some(1), "size", &size, 1)?;
    let t = last_dim(c, b, 4, "the boxes")?;
    let flops = numel(&t).scale(2);
    c.emit1(
        Op::new("clip_boxes").with("size", Attr::Ints(size)),
        &[b],
        t,
        flops,
    )
}

/// A new data-dependent size "at most `bound`", named after `hint`.
fn run_time_size(c: &mut CallCtx, hint: &str, bound: Dim) -> Dim {
    Dim::sym(c.data_dependent(hint, bound, None))
}

/// `min(n, k)` as a size: `k` when `n` is known (callers check `n >= k`),
/// `n` itself when its bound is at most `k`, else a new data-dependent size
/// bounded by `k` (and by `n`'s bound).
fn at_most(c: &mut CallCtx, n: &Dim, k: i64) -> Dim {
    if n.as_known().is_some() {
        return Dim::known(k);
    }
    let ub = c.upper_bound(n).and_then(|b| b.as_known());
    match ub {
        Some(b) if b <= k => n.clone(),
        Some(b) => run_time_size(c, "K", Dim::known(b.min(k))),
        None => run_time_size(c, "K", Dim::known(k)),
    }
}

/// `topk(x, k, dim = -1, largest = true, sorted = true)`: the `k` largest
/// (or smallest) values along `dim` and their `i64` indices, as a list
/// `[values, indices]`. On a known size `k` may not exceed it (as
/// `torch.topk`); on a run-time size the result keeps `min(size, k)`
/// elements (torchvision's `_topk_min`), a data-dependent size.
fn topk(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let k = c.int(Some(1), "k", None)?;
    let d = c.int(Some(2), "dim", Some(-1))?;
    let largest = c.bool(None, "largest", Some(true))?;
    let sorted = c.bool(None, "sorted", Some(true))?;
    at_least(c, Some(1), "k", &[k], 1)?;
    let t = c.ty(x);
    if t.sparse || t.rank() == 0 || t.dtype == DType::Bool {
        return Err(c.shape_error(
            format!(
                "`topk` expects a dense numeric tensor of rank >= 1, got {}",
                c.type_text(&t)
            ),
            &[("the input", x)],
            "flatten scores to [M] or [N, M] first",
        ));
    }
    let a = axis(c, Some(2), "dim", d, t.rank())?;
    let n = t.shape[a].clone();
    if let Some(len) = n.as_known() {
        if k > len {
            return Err(c.shape_error(
                format!(
                    "`topk`: k = {k} is larger than dim {a} of {}",
                    c.type_text(&t)
                ),
                &[("the input", x)],
                format!("use k <= {len}"),
            ));
        }
    }
    let kept = at_most(c, &n, k);
    let mut shape = t.shape.clone();
    shape[a] = kept;
    let values = TensorType::new(t.dtype, shape.clone());
    let indices = TensorType::new(DType::I64, shape);
    let op = Op::new("topk")
        .with("k", Attr::Int(k))
        .with("dim", Attr::Int(a as i64))
        .with("largest", Attr::Bool(largest))
        .with("sorted", Attr::Bool(sorted));
    // Selection compares, it does not compute: no FLOPs.
    let outs = c.emit(op, &[x], vec![values, indices], Dim::known(0))?;
    Ok(Value::list(outs.into_iter().map(Value::Tensor).collect()))
}

/// Requires a dense bool tensor.
fn expect_mask(c: &CallCtx, m: ValueId) -> Result<TensorType, Diagnostic> {
    let t = c.ty(m);
    if t.dtype != DType::Bool || t.sparse || t.rank() == 0 {
        return Err(c.shape_error(
            format!(
                "`{}` expects a bool mask of rank >= 1, got {}",
                c.op_name(),
                c.type_text(&t)
            ),
            &[("the mask", m)],
            "compare to get a mask, e.g. `scores > 0.2`",
        ));
    }
    Ok(t)
}

/// The element count of a mask as a size (for bounds).
fn mask_count(c: &CallCtx, m: ValueId, t: &TensorType) -> Result<Dim, Diagnostic> {
    t.numel().ok_or_else(|| {
        c.shape_error(
            format!(
                "`{}`: the mask {} has more than one symbolic dim, so its size has no linear bound",
                c.op_name(),
                c.type_text(t)
            ),
            &[("the mask", m)],
            "reshape or select so at most one dim is symbolic",
        )
    })
}

/// `nonzero(mask)`: the positions of the true elements, `i64[K]` for a 1-D
/// mask (`torch.where(mask)[0]`), `i64[K, rank]` otherwise; `K` is
/// data-dependent, at most the mask's element count.
fn nonzero(c: &mut CallCtx) -> OpResult {
    let m = c.tensor(Some(0), "mask")?;
    let t = expect_mask(c, m)?;
    let bound = mask_count(c, m, &t)?;
    let k = run_time_size(c, "K", bound);
    let mut shape = vec![k];
    if t.rank() > 1 {
        shape.push(Dim::known(t.rank() as i64));
    }
    c.emit1(
        Op::new("nonzero"),
        &[m],
        TensorType::new(DType::I64, shape),
        Dim::known(0),
    )
}

/// `boolean_mask(x, mask)` (`x[mask]`): the mask covers the leading dims of
/// `x`; result `[K, rest...]` with `K` data-dependent. `x` may be a list of
/// tensors masked alike: they share one `K`, and a list is returned.
fn boolean_mask(c: &mut CallCtx) -> OpResult {
    let (xs, is_list) = match c.value(Some(0), "x") {
        Some(Value::List(_)) => (c.tensors(Some(0), "x")?, true),
        _ => (vec![c.tensor(Some(0), "x")?], false),
    };
    let m = c.tensor(Some(1), "mask")?;
    let mt = expect_mask(c, m)?;
    let bound = mask_count(c, m, &mt)?;
    let mut outs = Vec::new();
    for &x in &xs {
        let t = c.ty(x);
        if t.sparse || t.rank() < mt.rank() || t.shape[..mt.rank()] != mt.shape[..] {
            return Err(c.shape_error(
                format!(
                    "`boolean_mask`: the mask {} must equal the leading dims of {}",
                    c.type_text(&mt),
                    c.type_text(&t)
                ),
                &[("the tensor", x), ("the mask", m)],
                "mask [N, L] selects from [N, L, ...]",
            ));
        }
        outs.push(t);
    }
    let k = run_time_size(c, "K", bound);
    let types: Vec<TensorType> = outs
        .into_iter()
        .map(|t| {
            let mut shape = vec![k.clone()];
            shape.extend(t.shape[mt.rank()..].iter().cloned());
            TensorType::new(t.dtype, shape)
        })
        .collect();
    let mut inputs = xs.clone();
    inputs.push(m);
    let vals = c.emit(Op::new("boolean_mask"), &inputs, types, Dim::known(0))?;
    if is_list {
        Ok(Value::list(vals.into_iter().map(Value::Tensor).collect()))
    } else {
        Ok(Value::Tensor(vals[0]))
    }
}

/// Requires a 1-D integer index tensor.
fn expect_index(c: &CallCtx, i: ValueId) -> Result<TensorType, Diagnostic> {
    let t = c.ty(i);
    if !t.dtype.is_int() || t.sparse || t.rank() != 1 {
        return Err(c.shape_error(
            format!(
                "`{}` expects 1-D integer indices, got {}",
                c.op_name(),
                c.type_text(&t)
            ),
            &[("the indices", i)],
            "indices come from `nonzero`, `topk` or `nms`",
        ));
    }
    Ok(t)
}

/// `index_select(x, indices, dim = 0)`: the slices of `x` at `indices`
/// along `dim` (`torch.index_select`); that dim takes the indices' length.
fn index_select(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let idx = c.tensor(Some(1), "indices")?;
    let d = c.int(Some(2), "dim", Some(0))?;
    let t = c.ty(x);
    if t.sparse || t.rank() == 0 {
        return Err(c.shape_error(
            format!(
                "`index_select` expects a dense tensor of rank >= 1, got {}",
                c.type_text(&t)
            ),
            &[("the input", x)],
            "index a [M, ...] tensor",
        ));
    }
    let it = expect_index(c, idx)?;
    let a = axis(c, Some(2), "dim", d, t.rank())?;
    let mut shape = t.shape.clone();
    shape[a] = it.shape[0].clone();
    c.emit1(
        Op::new("index_select").with("dim", Attr::Int(a as i64)),
        &[x, idx],
        TensorType::new(t.dtype, shape),
        Dim::known(0),
    )
}

/// `unravel_index(indices, shape)`: flat indices into a tensor of `shape` to
/// one index tensor per dim (`torch.unravel_index`), as a list; e.g. flat
/// `[L * C]` positions to (location, class).
fn unravel_index(c: &mut CallCtx) -> OpResult {
    let idx = c.tensor(Some(0), "indices")?;
    let shape = c.int_list(Some(1), "shape", None)?;
    at_least(c, Some(1), "shape", &shape, 1)?;
    if shape.is_empty() {
        return Err(c.arg_error(
            Some(1),
            "shape",
            "`unravel_index` needs a non-empty shape",
            "e.g. `unravel_index(i, [L, C])`",
        ));
    }
    let it = expect_index(c, idx)?;
    let out = TensorType::new(DType::I64, it.shape.clone());
    let flops = numel(&it).scale(2 * shape.len() as i64);
    let n = shape.len();
    let outs = c.emit(
        Op::new("unravel_index").with("shape", Attr::Ints(shape)),
        &[idx],
        vec![out; n],
        flops,
    )?;
    Ok(Value::list(outs.into_iter().map(Value::Tensor).collect()))
}

/// `nms(boxes, scores, iou_threshold, max_out = none)` and
/// `batched_nms(boxes, scores, labels, iou_threshold, max_out = none)`:
/// torchvision's (batched: per class) non-maximum suppression over
/// `[M, 4]` boxes and `[M]` scores; returns the kept indices `i64[K]` by
/// decreasing score, `K` data-dependent, at most M (and `max_out`, which
/// keeps the first `max_out` as `keep[:max_out]`).
fn nms(c: &mut CallCtx, batched: bool) -> OpResult {
    let boxes = c.tensor(Some(0), "boxes")?;
    let scores = c.tensor(Some(1), "scores")?;
    let labels = if batched {
        Some(c.tensor(Some(2), "labels")?)
    } else {
        None
    };
    let tpos = if batched { 3 } else { 2 };
    let iou = c.float(Some(tpos), "iou_threshold", None)?;
    c.check_range(Some(tpos), "iou_threshold", iou, 0.0, 1.0)?;
    let max_out = c.opt_int(None, "max_out")?;
    if let Some(m) = max_out {
        at_least(c, None, "max_out", &[m], 1)?;
    }
    let bt = last_dim(c, boxes, 4, "the boxes")?;
    let st = expect_float(c, scores)?;
    if bt.rank() != 2 || st.rank() != 1 || st.shape[0] != bt.shape[0] {
        return Err(c.shape_error(
            format!(
                "`{}` expects boxes [M, 4] and scores [M], got {} and {}",
                c.op_name(),
                c.type_text(&bt),
                c.type_text(&st)
            ),
            &[("the boxes", boxes), ("the scores", scores)],
            "run NMS per image on flat candidate lists",
        ));
    }
    let mut inputs = vec![boxes, scores];
    if let Some(l) = labels {
        let lt = c.ty(l);
        if !lt.dtype.is_int() || lt.shape != st.shape {
            return Err(c.shape_error(
                format!(
                    "`batched_nms` expects integer labels {} like the scores, got {}",
                    c.type_text(&TensorType::new(DType::I64, st.shape.clone())),
                    c.type_text(&lt)
                ),
                &[("the labels", l), ("the scores", scores)],
                "one class index per box",
            ));
        }
        inputs.push(l);
    }
    let m = bt.shape[0].clone();
    let ub = c.upper_bound(&m).and_then(|b| b.as_known());
    let cap = match (ub, max_out) {
        (Some(b), Some(k)) => Some(b.min(k)),
        (Some(b), None) => Some(b),
        (None, k) => k,
    };
    let bound = match (cap, m.as_known()) {
        (Some(cap), _) => Dim::known(cap),
        (None, _) => m.clone(),
    };
    let k = run_time_size(c, "K", bound);
    // IoU of every pair of candidates, worst case (bound^2 / 2 pairs, 12
    // FLOPs each), when the bound is known.
    let flops = match ub {
        Some(b) => Dim::known(b.saturating_mul(b.saturating_sub(1)) / 2 * 12),
        None => Dim::known(0),
    };
    let mut op = Op::new(if batched { "batched_nms" } else { "nms" })
        .with("iou_threshold", Attr::Float(iou));
    if let Some(mo) = max_out {
        op = op.with("max_out", Attr::Int(mo));
    }
    c.emit1(op, &inputs, TensorType::new(DType::I64, vec![k]), flops)
}

#[cfg(test)]
mod tests {
    use crate::elab::elaborate;
    use crate::ir::SymKind;
    use crate::program::Program;
    use std::path::Path;

    /// Elaborates model `m` of `text`; returns the output types and the
    /// data-dependent symbols with their bounds, or the error messages.
    fn run(text: &str) -> Result<(Vec<String>, Vec<String>), String> {
        let (p, diags) = Program::from_text(Path::new("t.net"), text);
        if !diags.is_empty() {
            return Err(format!("{diags:?}"));
        }
        let def = p.model(Some("m")).map_err(|e| e.to_string())?;
        let g = elaborate(&p, def, &[]).map_err(|ds| {
            ds.iter()
                .map(|d| d.message.clone())
                .collect::<Vec<_>>()
                .join("\n")
        })?;
        let outs = g
            .outputs
            .iter()
            .map(|(_, v)| g.type_text(g.ty(*v)))
            .collect();
        let syms = g
            .symbols
            .iter()
            .filter_map(|s| match &s.kind {
                SymKind::DataDependent { bound, .. } => {
                    Some(format!("{} <= {}", s.name, g.dim_text(bound)))
                }
                SymKind::Input => None,
            })
            .collect();
        Ok((outs, syms))
    }

    fn outs(text: &str) -> Vec<String> {
        run(text).unwrap().0
    }

    fn err(text: &str) -> String {
        run(text).unwrap_err()
    }

    #[test]
    fn locations_and_anchors() {
        let o = outs(
            "model m { input x: f32[N, 8, 64, 64]\n input y: f32[N, 8, 32, 32]\n\
             output l = fcos_locations([x, y], strides = [8, 16])\n\
             output a = fcos_anchors([[4, 4], [2, 2]], strides = [8, 16]) }",
        );
        assert_eq!(o, vec!["f32[5120, 2]", "f32[20, 4]"]);
    }

    #[test]
    fn anchor_values_match_torchvision() {
        let (p, _) = Program::from_text(
            Path::new("t.net"),
            "model m { output a = fcos_anchors([[2, 2]], strides = [8]) \n output l = fcos_locations([[1, 2]], strides = [8], offset = 0.5) }",
        );
        let g = elaborate(&p, p.model(Some("m")).unwrap(), &[]).unwrap();
        assert_eq!(
            g.consts[0].data,
            vec![
                -4.0, -4.0, 4.0, 4.0, 4.0, -4.0, 12.0, 4.0, -4.0, 4.0, 4.0, 12.0, 4.0, 4.0, 12.0,
                12.0
            ]
        );
        assert_eq!(g.consts[1].data, vec![4.0, 4.0, 12.0, 4.0]);
    }

    #[test]
    fn decode_broadcasts_over_batch() {
        let o = outs(
            "model m { input r: f32[N, 20, 4]\n a = fcos_anchors([[4, 4], [2, 2]], strides = [8, 16])\n\
             output b = decode_boxes(a, r) |> clip_boxes([32, 32])\n output t = centerness(encode_boxes(a, b)) }",
        );
        assert_eq!(o, vec!["f32[N, 20, 4]", "f32[N, 20]"]);
    }

    #[test]
    fn decode_errors() {
        let e = err("model m { input r: f32[N, 20, 3]\n a = fcos_anchors([[4, 4], [2, 2]], strides = [8, 16])\n output b = decode_boxes(a, r) }");
        assert!(e.contains("last dim of 4, got f32[N, 20, 3]"), "{e}");
        let e = err("model m { input r: f32[N, 20, 4]\n a = fcos_locations([[4, 4], [2, 2]], strides = [8, 16])\n output b = decode_boxes(a, r) }");
        assert!(e.contains("no size to normalise by"), "{e}");
        let e = err("model m { input r: f32[N, 21, 4]\n a = fcos_anchors([[4, 4], [2, 2]], strides = [8, 16])\n output b = decode_boxes(a, r) }");
        assert!(e.contains("do not broadcast"), "{e}");
        let e = err("model m { output a = fcos_anchors([[4, 4], [2, 2]]) }");
        assert!(e.contains("2 levels but 5 strides"), "{e}");
    }

    #[test]
    fn selection_gives_data_dependent_sizes() {
        let (o, syms) = run("model m { input s: f32[5456, 91]\n input b: f32[5456, 4]\n\
             f = flatten(s, start = 0)\n keep = nonzero(f > 0.2)\n\
             v, i = topk(index_select(f, keep), 1000)\n\
             loc, cls = unravel_index(index_select(keep, i), [5456, 91])\n\
             boxes = index_select(b, loc)\n\
             k = batched_nms(boxes, v, cls, 0.6, max_out = 100)\n\
             output boxes_out = index_select(boxes, k)\n output scores = index_select(v, k)\n\
             output labels = index_select(cls, k) }")
        .unwrap();
        assert_eq!(o, vec!["f32[K3, 4]", "f32[K3]", "i64[K3]"]);
        assert_eq!(syms, vec!["K <= 496496", "K2 <= 1000", "K3 <= 100"]);
    }

    #[test]
    fn topk_rules() {
        let (o, _) = run(
            "model m { input s: f32[4, 50]\n v, i = topk(s, 5)\n output v2 = v\n output i2 = i }",
        )
        .unwrap();
        assert_eq!(o, vec!["f32[4, 5]", "i64[4, 5]"]);
        // A run-time size below k stays as it is.
        let (o, syms) = run(
            "model m { input s: f32[50]\n v, i = topk(index_select(s, nonzero(s > 0.5)), 100)\n output v2 = v }",
        )
        .unwrap();
        assert_eq!(o, vec!["f32[K]"]);
        assert_eq!(syms, vec!["K <= 50"]);
        let e = err("model m { input s: f32[4, 50]\n v, i = topk(s, 51)\n output v2 = v }");
        assert!(
            e.contains("k = 51 is larger than dim 1 of f32[4, 50]"),
            "{e}"
        );
    }

    #[test]
    fn boolean_mask_shares_the_count() {
        let (o, syms) = run(
            "model m { input p: f32[N, 20, 4]\n input t: f32[N, 20, 4]\n input fg: bool[N, 20]\n\
             a, b = boolean_mask([p, t], fg)\n output x = a\n output y = b }",
        )
        .unwrap();
        assert_eq!(o, vec!["f32[K, 4]", "f32[K, 4]"]);
        assert_eq!(syms, vec!["K <= 20*N"]);
        let e = err("model m { input p: f32[N, 20, 4]\n input fg: bool[N, 21]\n output x = boolean_mask(p, fg) }");
        assert!(e.contains("must equal the leading dims"), "{e}");
    }

    #[test]
    fn nms_errors() {
        let e =
            err("model m { input b: f32[10, 4]\n input s: f32[11]\n output k = nms(b, s, 0.5) }");
        assert!(
            e.contains("boxes [M, 4] and scores [M], got f32[10, 4] and f32[11]"),
            "{e}"
        );
        let e =
            err("model m { input b: f32[10, 4]\n input s: f32[10]\n output k = nms(b, s, 1.5) }");
        assert!(e.contains("outside 0..=1"), "{e}");
        let e = err("model m { input b: f32[10, 4]\n input s: f32[10]\n input l: f32[10]\n output k = batched_nms(b, s, l, 0.5) }");
        assert!(e.contains("integer labels"), "{e}");
        let e = err("model m { input s: f32[10]\n output k = nonzero(s) }");
        assert!(e.contains("bool mask"), "{e}");
    }

    #[test]
    fn fcos_model_matches_torchvision_keys() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let (p, diags) = Program::load(&root.join("models/fcos.net"));
        assert!(diags.is_empty(), "{diags:?}");
        let g = elaborate(&p, p.model(Some("fcos_resnet50_fpn")).unwrap(), &[]).unwrap();
        assert_eq!(g.param_count(), 32_269_600);
        let listed = crate::summary::param_list(&g);
        let want = std::fs::read_to_string(
            root.join("tests/fixtures/keys/fcos_resnet50_fpn_frozenbn.txt"),
        )
        .unwrap();
        assert_eq!(listed.trim_end(), want.trim_end());
        let outs: Vec<String> = g
            .outputs
            .iter()
            .map(|(n, v)| format!("{n}: {}", g.type_text(g.ty(*v))))
            .collect();
        assert_eq!(
            outs,
            vec![
                "cls_logits: f32[N, 5456, 91]",
                "bbox_regression: f32[N, 5456, 4]",
                "bbox_ctrness: f32[N, 5456, 1]"
            ]
        );
        let post = elaborate(&p, p.model(Some("fcos_postprocess")).unwrap(), &[]).unwrap();
        let outs: Vec<String> = post
            .outputs
            .iter()
            .map(|(_, v)| post.type_text(post.ty(*v)))
            .collect();
        assert_eq!(outs, vec!["f32[K11, 4]", "f32[K11]", "i64[K11]"]);
    }
}
