//! The losses' derivatives against central differences of their own f64
//! definitions (h = 1e-6), and the mask kernels' run-time counts.

use super::kernels::{BooleanMask, BooleanMaskGrad, PairLoss, PairOp, Reduction};
use super::*;
use crate::plan::RowKernel;

fn central(f: impl Fn(f64) -> f64, x: f64) -> f64 {
    let h = 1e-6;
    (f(x + h) - f(x - h)) / (2.0 * h)
}

fn close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
        "{what}: {got} vs finite differences {want}"
    );
}

#[test]
fn focal_derivative_matches_finite_differences() {
    for &(alpha, gamma) in &[(0.25, 2.0), (-1.0, 2.0), (0.5, 0.0), (0.25, 1.5)] {
        for &y in &[0.0, 1.0, 0.3] {
            for &z in &[-6.0, -1.2, 0.0, 0.7, 4.5] {
                let (_, d) = focal(z, y, alpha, gamma);
                let fd = central(|v| focal(v, y, alpha, gamma).0, z);
                close(
                    d,
                    fd,
                    &format!("focal z {z} y {y} alpha {alpha} gamma {gamma}"),
                );
            }
        }
    }
}

/// Overlapping, nested, disjoint and touching-free box pairs, every kind.
#[test]
fn iou_loss_gradient_matches_finite_differences() {
    let pairs: [([f64; 4], [f64; 4]); 4] = [
        ([1.0, 2.0, 5.0, 7.0], [2.5, 1.0, 6.0, 5.5]),
        ([0.0, 0.0, 10.0, 8.0], [2.0, 3.0, 4.0, 5.0]),
        ([0.0, 0.0, 2.0, 2.0], [3.0, 4.0, 6.0, 9.0]),
        ([3.1, 2.2, 4.0, 6.3], [0.5, 0.4, 9.5, 3.3]),
    ];
    for kind in [IouKind::Iou, IouKind::LogIou, IouKind::Giou] {
        for (pi, (p, t)) in pairs.iter().enumerate() {
            if kind == IouKind::LogIou && pi == 2 {
                continue; // -ln 0
            }
            let (_, g) = iou_loss(p, t, kind, 1e-7);
            for k in 0..4 {
                let fd = central(
                    |v| {
                        let mut q = *p;
                        q[k] = v;
                        iou_loss(&q, t, kind, 1e-7).0
                    },
                    p[k],
                );
                close(g[k], fd, &format!("{kind:?} pair {pi} coordinate {k}"));
            }
        }
    }
}

/// Only the kept rows count: a `sum` over two live boxes of four planned,
/// zeros past the count, and the mask kernels' round trip.
#[test]
fn counted_items_follow_the_mask() {
    let mask = [0.0, 1.0, 0.0, 1.0];
    let boxes = [
        0.0f32, 0.0, 2.0, 2.0, 1.0, 1.0, 3.0, 4.0, 5.0, 5.0, 6.0, 6.0, 0.0, 1.0, 2.0, 2.0,
    ];
    let mut kept = [f32::NAN; 16];
    BooleanMask { inner: 4 }
        .rows(0, &[&boxes, &mask], &mut kept)
        .unwrap();
    assert_eq!(&kept[..8], &[1.0, 1.0, 3.0, 4.0, 0.0, 1.0, 2.0, 2.0]);
    assert!(kept[8..].iter().all(|&v| v == 0.0));
    let target = [
        0.5f32, 0.5, 3.0, 3.0, 0.0, 0.0, 2.0, 3.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0,
    ];
    let op = PairOp::Iou {
        kind: IouKind::Giou,
        eps: 1e-7,
    };
    let mut sum = [0.0f32];
    let loss = PairLoss {
        op,
        reduction: Reduction::Sum,
        grad: false,
        items: 4,
        counted: Some(1),
    };
    loss.rows(0, &[&kept, &target, &mask], &mut sum).unwrap();
    let want: f64 = (0..2)
        .map(|i| {
            let p: Vec<f64> = kept[i * 4..][..4].iter().map(|&v| f64::from(v)).collect();
            let t: Vec<f64> = target[i * 4..][..4].iter().map(|&v| f64::from(v)).collect();
            iou_loss(&p, &t, IouKind::Giou, 1e-7).0
        })
        .sum();
    assert!(
        (f64::from(sum[0]) - want).abs() < 1e-6,
        "{} vs {want}",
        sum[0]
    );
    let mut grad = [f32::NAN; 16];
    PairLoss { grad: true, ..loss }
        .rows(0, &[&kept, &target, &[2.0], &mask], &mut grad)
        .unwrap();
    assert!(grad[8..].iter().all(|&v| v == 0.0));
    let mut back = [f32::NAN; 16];
    BooleanMaskGrad { inner: 4 }
        .rows(0, &[&grad, &mask], &mut back)
        .unwrap();
    assert_eq!(&back[4..8], &grad[..4]);
    assert_eq!(&back[12..], &grad[4..8]);
    assert!(back[..4].iter().chain(&back[8..12]).all(|&v| v == 0.0));
}
