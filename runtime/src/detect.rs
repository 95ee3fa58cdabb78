//! The detection losses' per-element definitions with their derivatives,
//! in f64 (torchvision's semantics): the sigmoid focal loss of one logit
//! and the IoU losses of one box pair. The compiler's interpreter and the
//! native row kernels ([`kernels`]) both evaluate them through these
//! functions, so a loss and its gradient have one definition.

pub mod kernels;

/// Which IoU loss: `1 − IoU`, `−ln IoU` or `1 − GIoU`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IouKind {
    /// `1 − IoU`.
    Iou,
    /// `−ln IoU` (UnitBox, the FCOS paper).
    LogIou,
    /// `1 − GIoU` (torchvision `generalized_box_iou_loss`).
    Giou,
}

impl IouKind {
    /// The kind named `s` (`"iou"`, `"log_iou"`, `"giou"`).
    pub fn parse(s: &str) -> Option<IouKind> {
        match s {
            "iou" => Some(IouKind::Iou),
            "log_iou" => Some(IouKind::LogIou),
            "giou" => Some(IouKind::Giou),
            _ => None,
        }
    }
}

/// `torchvision.ops.sigmoid_focal_loss` of logit `z` and target `y`, and
/// its derivative with respect to `z`: with `p = σ(z)`, `ce` the binary
/// cross-entropy, `p_t = p·y + (1 − p)(1 − y)` and `α_t` the class weight
/// (none when `alpha < 0`), `loss = α_t·ce·(1 − p_t)^γ`.
pub fn focal(z: f64, y: f64, alpha: f64, gamma: f64) -> (f64, f64) {
    let p = 1.0 / (1.0 + (-z).exp());
    let ce = (1.0 - y) * z + (-z.abs()).exp().ln_1p() + (-z).max(0.0);
    let q = 1.0 - (p * y + (1.0 - p) * (1.0 - y));
    let modulated = q.powf(gamma);
    // d(1 − p_t)/dz = −p(1 − p)(2y − 1); the power's derivative is 0 for γ = 0.
    let dq = -p * (1.0 - p) * (2.0 * y - 1.0);
    let dmod = if gamma == 0.0 {
        0.0
    } else {
        gamma * q.powf(gamma - 1.0) * dq
    };
    let weight = if alpha >= 0.0 {
        alpha * y + (1.0 - alpha) * (1.0 - y)
    } else {
        1.0
    };
    (
        weight * ce * modulated,
        weight * ((p - y) * modulated + ce * dmod),
    )
}

/// `d max(a, b) / da` as PyTorch's `maximum` backward: 1, 0, or ½ at a tie.
fn picks(a: f64, b: f64, larger: bool) -> f64 {
    if a == b {
        0.5
    } else if (a > b) == larger {
        1.0
    } else {
        0.0
    }
}

/// The IoU loss of box `p` against box `t` (both `(x1, y1, x2, y2)`) with
/// `IoU = inter / (union + eps)` and, for GIoU, the enclosing box term
/// `(C − union) / (C + eps)`; and its gradient with respect to `p`.
pub fn iou_loss(p: &[f64], t: &[f64], kind: IouKind, eps: f64) -> (f64, [f64; 4]) {
    let area = |r: &[f64]| (r[2] - r[0]) * (r[3] - r[1]);
    let darea = [-(p[3] - p[1]), -(p[2] - p[0]), p[3] - p[1], p[2] - p[0]];
    let (xi1, yi1) = (p[0].max(t[0]), p[1].max(t[1]));
    let (xi2, yi2) = (p[2].min(t[2]), p[3].min(t[3]));
    let (inter, dinter) = if xi2 > xi1 && yi2 > yi1 {
        let (w, h) = (xi2 - xi1, yi2 - yi1);
        (
            w * h,
            [
                -h * picks(p[0], t[0], true),
                -w * picks(p[1], t[1], true),
                h * picks(p[2], t[2], false),
                w * picks(p[3], t[3], false),
            ],
        )
    } else {
        (0.0, [0.0; 4])
    };
    let union = area(p) + area(t) - inter;
    let du: [f64; 4] = std::array::from_fn(|k| darea[k] - dinter[k]);
    let iou = inter / (union + eps);
    let diou: [f64; 4] = std::array::from_fn(|k| (dinter[k] - iou * du[k]) / (union + eps));
    match kind {
        IouKind::Iou => (1.0 - iou, diou.map(|d| -d)),
        IouKind::LogIou => (-iou.ln(), diou.map(|d| -d / iou)),
        IouKind::Giou => {
            let (cw, ch) = (
                p[2].max(t[2]) - p[0].min(t[0]),
                p[3].max(t[3]) - p[1].min(t[1]),
            );
            let c = cw * ch;
            let dc = [
                -ch * picks(p[0], t[0], false),
                -cw * picks(p[1], t[1], false),
                ch * picks(p[2], t[2], true),
                cw * picks(p[3], t[3], true),
            ];
            let term = (c - union) / (c + eps);
            let grad = std::array::from_fn(|k| {
                let dterm =
                    (dc[k] - du[k]) / (c + eps) - (c - union) * dc[k] / ((c + eps) * (c + eps));
                -diou[k] + dterm
            });
            (1.0 - iou + term, grad)
        }
    }
}

#[cfg(test)]
mod tests;
