//! Reference semantics of the detection ops (ops/detect.rs,
//! ops/detect_loss.rs) with torchvision's definitions: the FCOS box coder,
//! centerness, clipping, the selection ops with data-dependent result sizes
//! (`topk` over a run-time count, `nonzero`, `boolean_mask`, `nms`,
//! `batched_nms`), indexing, and the focal and IoU losses.
//!
//! Selection ops compute their own result size; [`super::run`] binds the
//! data-dependent symbol from it.

use super::array::{broadcast_index, unravel, Array};
use super::dense::Attrs;
use netc_runtime::detect::{focal, iou_loss as box_loss, IouKind};

/// The result of one family op, or `None` if `name` is not in the family.
type Eval = Option<Result<Vec<Array>, String>>;

/// Evaluates `name` if it is one of this module's ops.
pub fn eval(name: &str, a: &Attrs, x: &[&Array], out: &[Vec<usize>]) -> Eval {
    let one = |r: Array| Some(Ok(vec![r]));
    match name {
        "decode_boxes" | "encode_boxes" => one(coder(
            x[0],
            x[1],
            name == "decode_boxes",
            a.bool("normalize_by_size", true),
            &out[0],
        )),
        "centerness" => one(centerness(x[0])),
        "clip_boxes" => one(clip_boxes(x[0], &a.ints("size"))),
        "topk" => Some(Ok(topk(x[0], a))),
        "nonzero" => one(nonzero(x[0])),
        "boolean_mask" => Some(Ok(boolean_mask(x))),
        "index_select" => Some(index_select(x[0], x[1], a.int("dim") as usize).map(|r| vec![r])),
        "unravel_index" => Some(Ok(unravel_index(x[0], &a.ints("shape")))),
        "nms" | "batched_nms" => one(nms(x[0], x[1], x.get(2).copied(), a)),
        "sigmoid_focal" => one(sigmoid_focal(x[0], x[1], a)),
        "iou_loss" => Some(iou_loss(x[0], x[1], a).map(|r| vec![r])),
        _ => None,
    }
}

/// Applies `reduction` ("none", "sum" or "mean") to per-element losses.
fn reduce(per: Array, reduction: &str) -> Array {
    let sum: f64 = per.data.iter().sum();
    match reduction {
        "none" => per,
        "mean" => Array::new(&[], vec![sum / per.data.len() as f64]),
        _ => Array::new(&[], vec![sum]),
    }
}

/// torchvision's `BoxLinearCoder`: the reference (`[.., 4]` anchors or
/// `[.., 2]` points) gives a centre `(cx, cy)` and, when normalising, a size
/// `(w, h)`. Decode: `(cx - l*w, cy - t*h, cx + r*w, cy + b*h)`; encode:
/// `((cx - x1)/w, (cy - y1)/h, (x2 - cx)/w, (y2 - cy)/h)`. Leading dims
/// broadcast.
fn coder(reference: &Array, other: &Array, decode: bool, norm: bool, out_shape: &[usize]) -> Array {
    let rw = *reference.shape.last().expect("rank >= 1");
    let lead = &out_shape[..out_shape.len() - 1];
    let boxes: usize = lead.iter().product();
    let mut out = Array::zeros(out_shape);
    let ref_lead = &reference.shape[..reference.shape.len() - 1];
    let oth_lead = &other.shape[..other.shape.len() - 1];
    for bi in 0..boxes {
        let idx = unravel(bi, lead);
        let r = &reference.data[broadcast_index(&idx, ref_lead) * rw..][..rw];
        let o = &other.data[broadcast_index(&idx, oth_lead) * 4..][..4];
        let (cx, cy, w, h) = if rw == 4 {
            (
                0.5 * (r[0] + r[2]),
                0.5 * (r[1] + r[3]),
                r[2] - r[0],
                r[3] - r[1],
            )
        } else {
            (r[0], r[1], 1.0, 1.0)
        };
        let (w, h) = if norm { (w, h) } else { (1.0, 1.0) };
        let res = if decode {
            [cx - o[0] * w, cy - o[1] * h, cx + o[2] * w, cy + o[3] * h]
        } else {
            [
                (cx - o[0]) / w,
                (cy - o[1]) / h,
                (o[2] - cx) / w,
                (o[3] - cy) / h,
            ]
        };
        out.data[bi * 4..bi * 4 + 4].copy_from_slice(&res);
    }
    out
}

/// FCOS centerness of `(l, t, r, b)` distances.
fn centerness(x: &Array) -> Array {
    let data = x
        .data
        .chunks(4)
        .map(|d| {
            let lr = d[0].min(d[2]) / d[0].max(d[2]);
            let tb = d[1].min(d[3]) / d[1].max(d[3]);
            (lr * tb).sqrt()
        })
        .collect();
    Array::new(&x.shape[..x.shape.len() - 1], data)
}

/// `clip_boxes_to_image` with `size = [h, w]`.
fn clip_boxes(b: &Array, size: &[i64]) -> Array {
    let (h, w) = (size[0] as f64, size[1] as f64);
    let mut out = b.clone();
    for (i, v) in out.data.iter_mut().enumerate() {
        *v = v.clamp(0.0, if i % 2 == 0 { w } else { h });
    }
    out
}

/// `torch.topk` along `dim`, keeping `min(size, k)` elements, sorted (ties
/// keep the lower index first).
fn topk(x: &Array, a: &Attrs) -> Vec<Array> {
    let d = a.int("dim") as usize;
    let largest = a.bool("largest", true);
    let n = x.shape[d];
    let k = (a.int("k") as usize).min(n);
    let mut shape = x.shape.clone();
    shape[d] = k;
    let xs = x.strides();
    let outer: usize = x.shape[..d].iter().product();
    let inner: usize = x.shape[d + 1..].iter().product();
    let mut vals = Array::zeros(&shape);
    let mut idxs = Array::zeros(&shape);
    for o in 0..outer {
        for i in 0..inner {
            let base = o * n * inner + i;
            let mut order: Vec<usize> = (0..n).collect();
            let v = |j: usize| x.data[base + j * xs[d]];
            order.sort_by(|&p, &q| {
                let c = v(p).total_cmp(&v(q));
                if largest {
                    c.reverse()
                } else {
                    c
                }
            });
            for (j, &src) in order.iter().take(k).enumerate() {
                let dst = o * k * inner + j * inner + i;
                vals.data[dst] = v(src);
                idxs.data[dst] = src as f64;
            }
        }
    }
    vec![vals, idxs]
}

/// Positions of the non-zero elements in row-major order: `[K]` for a 1-D
/// mask, `[K, rank]` otherwise.
fn nonzero(m: &Array) -> Array {
    let hits: Vec<usize> = (0..m.data.len()).filter(|&i| m.data[i] != 0.0).collect();
    if m.shape.len() == 1 {
        return Array::new(&[hits.len()], hits.iter().map(|&i| i as f64).collect());
    }
    let data = hits
        .iter()
        .flat_map(|&i| unravel(i, &m.shape).into_iter().map(|p| p as f64))
        .collect();
    Array::new(&[hits.len(), m.shape.len()], data)
}

/// `x[mask]` for every tensor before the mask (the last input).
fn boolean_mask(x: &[&Array]) -> Vec<Array> {
    let (m, xs) = x.split_last().expect("at least a mask");
    let hits: Vec<usize> = (0..m.data.len()).filter(|&i| m.data[i] != 0.0).collect();
    xs.iter()
        .map(|t| {
            let inner: usize = t.shape[m.shape.len()..].iter().product();
            let mut shape = vec![hits.len()];
            shape.extend_from_slice(&t.shape[m.shape.len()..]);
            let data = hits
                .iter()
                .flat_map(|&i| t.data[i * inner..(i + 1) * inner].iter().copied())
                .collect();
            Array::new(&shape, data)
        })
        .collect()
}

/// `torch.index_select(x, dim, indices)`.
fn index_select(x: &Array, idx: &Array, d: usize) -> Result<Array, String> {
    let n = x.shape[d];
    let mut shape = x.shape.clone();
    shape[d] = idx.data.len();
    let xs = x.strides();
    let mut out = Array::zeros(&shape);
    for (i, v) in out.data.iter_mut().enumerate() {
        let mut p = unravel(i, &shape);
        let j = idx.data[p[d]];
        if j < 0.0 || j >= n as f64 {
            return Err(format!("index {j} is outside dim {d} of size {n}"));
        }
        p[d] = j as usize;
        *v = x.data[p.iter().zip(&xs).map(|(a, b)| a * b).sum::<usize>()];
    }
    Ok(out)
}

/// `torch.unravel_index(indices, shape)`: one index tensor per dim.
fn unravel_index(idx: &Array, shape: &[i64]) -> Vec<Array> {
    let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let per: Vec<Vec<usize>> = idx
        .data
        .iter()
        .map(|&i| unravel(i as usize, &dims))
        .collect();
    (0..dims.len())
        .map(|d| Array::new(&idx.shape, per.iter().map(|p| p[d] as f64).collect()))
        .collect()
}

/// Intersection over union of two `(x1, y1, x2, y2)` boxes.
fn iou(a: &[f64], b: &[f64]) -> f64 {
    let area = |r: &[f64]| (r[2] - r[0]) * (r[3] - r[1]);
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    inter / (area(a) + area(b) - inter)
}

/// torchvision `nms` (and `batched_nms`: boxes of different labels never
/// suppress each other): visit boxes by decreasing score, keep one unless a
/// kept box overlaps it with IoU above the threshold; the kept indices by
/// decreasing score, the first `max_out` of them.
fn nms(boxes: &Array, scores: &Array, labels: Option<&Array>, a: &Attrs) -> Array {
    let thr = a.float("iou_threshold", 0.5);
    let n = scores.data.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&p, &q| scores.data[q].total_cmp(&scores.data[p]));
    let b = |i: usize| &boxes.data[i * 4..i * 4 + 4];
    let mut keep: Vec<usize> = Vec::new();
    for &i in &order {
        let suppressed = keep
            .iter()
            .any(|&j| labels.is_none_or(|l| l.data[i] == l.data[j]) && iou(b(i), b(j)) > thr);
        if !suppressed {
            keep.push(i);
        }
    }
    let max_out = match a.int("max_out") {
        0 => usize::MAX,
        m => m as usize,
    };
    keep.truncate(max_out);
    Array::new(&[keep.len()], keep.iter().map(|&i| i as f64).collect())
}

/// `torchvision.ops.sigmoid_focal_loss` (the per-element definition of
/// `netc_runtime::detect::focal`).
fn sigmoid_focal(x: &Array, t: &Array, a: &Attrs) -> Array {
    let (alpha, gamma) = (a.float("alpha", 0.25), a.float("gamma", 2.0));
    let data = x
        .data
        .iter()
        .zip(&t.data)
        .map(|(&z, &y)| focal(z, y, alpha, gamma).0)
        .collect();
    reduce(Array::new(&x.shape, data), a.str("reduction"))
}

/// IoU losses of `[.., 4]` box pairs: `1 - IoU`, `-ln IoU` or `1 - GIoU`
/// with `IoU = inter / (union + eps)` and, for GIoU, the enclosing box term
/// `(C - union) / (C + eps)` (torchvision `generalized_box_iou_loss`; the
/// per-box definition of `netc_runtime::detect::iou_loss`).
fn iou_loss(p: &Array, t: &Array, a: &Attrs) -> Result<Array, String> {
    let eps = a.float("eps", 1e-7);
    let kind = IouKind::parse(a.str("kind"))
        .ok_or_else(|| format!("unknown IoU loss kind `{}`", a.str("kind")))?;
    let data = p
        .data
        .chunks(4)
        .zip(t.data.chunks(4))
        .map(|(b1, b2)| box_loss(b1, b2, kind, eps).0)
        .collect();
    Ok(reduce(
        Array::new(&p.shape[..p.shape.len() - 1], data),
        a.str("reduction"),
    ))
}
