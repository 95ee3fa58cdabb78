//! The loss gradients against central finite differences of the forward
//! losses (f64), and the forward losses and four gradients against
//! PyTorch (`tests/fixtures/losses/make_losses.py`).

use super::super::dense::Attrs;
use super::super::{eval, Array};
use crate::ir::Attr;
use std::collections::HashMap;

/// The PyTorch fixture: one tensor per line, `name rank dims... values...`.
fn fixture() -> HashMap<String, Array> {
    include_str!("../../../../tests/fixtures/losses/losses.txt")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut it = l.split_whitespace();
            let name = it.next().unwrap().to_string();
            let rank: usize = it.next().unwrap().parse().unwrap();
            let dims: Vec<usize> = (0..rank)
                .map(|_| it.next().unwrap().parse().unwrap())
                .collect();
            let data: Vec<f64> = it.map(|v| v.parse().unwrap()).collect();
            (name, Array::new(&dims, data))
        })
        .collect()
}

type Attrs0 = Vec<(&'static str, Attr)>;

fn run(name: &str, attrs: &Attrs0, x: &[&Array], shape: &[usize]) -> Result<Array, String> {
    eval(name, &Attrs(attrs), x, &[shape.to_vec()]).map(|mut r| r.remove(0))
}

fn ce_attrs(smoothing: f64, ignore: i64, red: &str) -> Attrs0 {
    vec![
        ("label_smoothing", Attr::Float(smoothing)),
        ("ignore_index", Attr::Int(ignore)),
        ("reduction", Attr::Str(red.into())),
    ]
}

fn mm_attrs(p: i64, margin: f64, red: &str) -> Attrs0 {
    vec![
        ("p", Attr::Int(p)),
        ("margin", Attr::Float(margin)),
        ("reduction", Attr::Str(red.into())),
    ]
}

fn red_attrs(red: &str) -> Attrs0 {
    vec![("reduction", Attr::Str(red.into()))]
}

/// A loss case: the forward op with `x`, `target` and an optional extra
/// operand (weight / pos_weight); `per` is the per-element loss shape.
struct Case<'a> {
    loss: &'a str,
    attrs: Attrs0,
    x: &'a Array,
    target: &'a Array,
    extra: Option<&'a Array>,
    per: Vec<usize>,
}

impl Case<'_> {
    fn reduction(&self) -> String {
        match self.attrs.iter().find(|(k, _)| *k == "reduction") {
            Some((_, Attr::Str(s))) => s.clone(),
            _ => "mean".into(),
        }
    }

    fn forward(&self, x: &Array) -> Array {
        let mut ins = vec![x, self.target];
        ins.extend(self.extra);
        let shape = if self.reduction() == "none" {
            self.per.clone()
        } else {
            Vec::new()
        };
        run(self.loss, &self.attrs, &ins, &shape).unwrap()
    }

    fn dloss(&self) -> Array {
        if self.reduction() == "none" {
            let n: usize = self.per.iter().product();
            Array::new(
                &self.per,
                (0..n).map(|i| 0.3 + (i as f64 * 1.7).cos()).collect(),
            )
        } else {
            Array::new(&[], vec![0.7])
        }
    }

    fn grad(&self) -> Array {
        let d = self.dloss();
        let mut ins = vec![self.x, self.target, &d];
        ins.extend(self.extra);
        run(
            &format!("{}_grad", self.loss),
            &self.attrs,
            &ins,
            &self.x.shape,
        )
        .unwrap()
    }

    /// The gradient op equals central differences of `Σ dloss·loss`.
    fn check_fd(&self) {
        let d = self.dloss();
        let f = |x: &Array| -> f64 {
            let l = self.forward(x);
            l.data.iter().zip(&d.data).map(|(a, b)| a * b).sum()
        };
        let g = self.grad();
        let h = 1e-6;
        for j in 0..self.x.data.len() {
            let (mut p, mut m) = (self.x.clone(), self.x.clone());
            p.data[j] += h;
            m.data[j] -= h;
            let fd = (f(&p) - f(&m)) / (2.0 * h);
            assert!(
                (g.data[j] - fd).abs() <= 1e-6 * fd.abs().max(1.0),
                "{} {:?} element {j}: grad {} vs finite difference {fd}",
                self.loss,
                self.attrs,
                g.data[j]
            );
        }
    }
}

fn close(got: &Array, want: &Array, what: &str) {
    assert_eq!(got.shape, want.shape, "{what}");
    for (a, e) in got.data.iter().zip(&want.data) {
        assert!(
            (a - e).abs() <= 1e-10 * e.abs().max(1.0),
            "{what}: {a} vs {e}"
        );
    }
}

#[test]
fn cross_entropy_grad_matches_finite_differences() {
    let fx = fixture();
    let (x, t, w) = (&fx["ce_logits"], &fx["ce_target"], &fx["ce_weight"]);
    for red in ["mean", "sum", "none"] {
        // Smoothing with class weights and an ignored target (class 2).
        Case {
            loss: "cross_entropy",
            attrs: ce_attrs(0.1, 2, red),
            x,
            target: t,
            extra: Some(w),
            per: vec![4],
        }
        .check_fd();
        Case {
            loss: "cross_entropy",
            attrs: ce_attrs(0.0, -100, red),
            x,
            target: t,
            extra: None,
            per: vec![4],
        }
        .check_fd();
    }
    // Spatial [N, C, H, W] with an ignored position (-100).
    let (x, t, w) = (&fx["sce_logits"], &fx["sce_target"], &fx["sce_weight"]);
    for red in ["mean", "none"] {
        Case {
            loss: "cross_entropy",
            attrs: ce_attrs(0.2, -100, red),
            x,
            target: t,
            extra: Some(w),
            per: vec![2, 2, 2],
        }
        .check_fd();
    }
}

#[test]
fn ignored_targets_get_zero_gradient_and_bad_targets_are_errors() {
    let fx = fixture();
    let c = Case {
        loss: "cross_entropy",
        attrs: ce_attrs(0.1, 2, "mean"),
        x: &fx["ce_logits"],
        target: &fx["ce_target"],
        extra: Some(&fx["ce_weight"]),
        per: vec![4],
    };
    // Row 1 has the ignored target 2.
    assert!(c.grad().data[5..10].iter().all(|&v| v == 0.0));
    let bad = Array::new(&[4], vec![1.0, 5.0, 0.0, 0.0]);
    let d = Array::new(&[], vec![1.0]);
    let err = run("cross_entropy_grad", &c.attrs, &[c.x, &bad, &d], &c.x.shape).unwrap_err();
    assert!(err.contains("not a class index in 0..5"), "{err}");
    let err = run("multi_margin", &mm_attrs(1, 1.0, "mean"), &[c.x, &bad], &[]).unwrap_err();
    assert!(err.contains("not a class index"), "{err}");
    // dloss must have the reduced loss's shape.
    let err = run(
        "cross_entropy_grad",
        &c.attrs,
        &[c.x, c.target, &bad],
        &c.x.shape,
    )
    .unwrap_err();
    assert!(err.contains("dloss has shape [4]"), "{err}");
}

#[test]
fn multi_margin_grad_matches_finite_differences() {
    let fx = fixture();
    let (x, t, w) = (&fx["mm_scores"], &fx["mm_target"], &fx["mm_weight"]);
    for red in ["mean", "sum", "none"] {
        for (p, margin, weight) in [(1, 1.0, None), (2, 0.5, Some(w)), (1, 0.75, Some(w))] {
            Case {
                loss: "multi_margin",
                attrs: mm_attrs(p, margin, red),
                x,
                target: t,
                extra: weight,
                per: vec![4],
            }
            .check_fd();
        }
    }
}

#[test]
fn bce_and_mse_grads_match_finite_differences() {
    let fx = fixture();
    let (x, t, pw) = (&fx["bce_x"], &fx["bce_t"], &fx["bce_pw"]);
    // A scalar pos_weight broadcasts too.
    let pw1 = Array::new(&[1], vec![1.5]);
    for red in ["mean", "sum", "none"] {
        for extra in [None, Some(pw), Some(&pw1)] {
            Case {
                loss: "bce_with_logits",
                attrs: red_attrs(red),
                x,
                target: t,
                extra,
                per: vec![2, 3],
            }
            .check_fd();
        }
        Case {
            loss: "mse",
            attrs: red_attrs(red),
            x,
            target: t,
            extra: None,
            per: vec![2, 3],
        }
        .check_fd();
    }
}

/// The interpreter's forward losses (and, through the gradient ops, the
/// mean losses' gradients at `dloss = 1`) equal PyTorch's on the fixture.
#[test]
fn forward_losses_and_grads_match_pytorch() {
    let fx = fixture();
    let ce = |s: f64, ig: i64, red: &str, x: &str, t: &str, w: Option<&str>, per: Vec<usize>| {
        let attrs = ce_attrs(s, ig, red);
        let mut ins = vec![&fx[x], &fx[t]];
        ins.extend(w.map(|w| &fx[w]));
        let shape = if red == "none" { per } else { vec![] };
        run("cross_entropy", &attrs, &ins, &shape).unwrap()
    };
    for red in ["mean", "sum", "none"] {
        let got = ce(
            0.1,
            2,
            red,
            "ce_logits",
            "ce_target",
            Some("ce_weight"),
            vec![4],
        );
        close(&got, &fx[&format!("ce_{red}")], red);
    }
    let got = ce(0.0, -100, "mean", "ce_logits", "ce_target", None, vec![]);
    close(&got, &fx["ce_plain_mean"], "ce plain");
    let got = ce(
        0.2,
        -100,
        "mean",
        "sce_logits",
        "sce_target",
        Some("sce_weight"),
        vec![],
    );
    close(&got, &fx["sce_mean"], "spatial ce");
    let got = ce(
        0.0,
        -100,
        "none",
        "sce_logits",
        "sce_target",
        None,
        vec![2, 2, 2],
    );
    close(&got, &fx["sce_none"], "spatial ce none");

    let (s, t, w) = (&fx["mm_scores"], &fx["mm_target"], &fx["mm_weight"]);
    let got = run("multi_margin", &mm_attrs(1, 1.0, "mean"), &[s, t], &[]).unwrap();
    close(&got, &fx["mm_p1_mean"], "mm p1");
    let got = run("multi_margin", &mm_attrs(2, 0.5, "sum"), &[s, t, w], &[]).unwrap();
    close(&got, &fx["mm_p2_sum"], "mm p2 sum");
    let got = run("multi_margin", &mm_attrs(2, 0.5, "none"), &[s, t, w], &[4]).unwrap();
    close(&got, &fx["mm_p2_none"], "mm p2 none");

    let (x, bt, pw) = (&fx["bce_x"], &fx["bce_t"], &fx["bce_pw"]);
    let got = run("bce_with_logits", &red_attrs("mean"), &[x, bt, pw], &[]).unwrap();
    close(&got, &fx["bce_pw_mean"], "bce pw mean");
    let got = run("bce_with_logits", &red_attrs("none"), &[x, bt, pw], &[2, 3]).unwrap();
    close(&got, &fx["bce_pw_none"], "bce pw none");
    let got = run("bce_with_logits", &red_attrs("sum"), &[x, bt], &[]).unwrap();
    close(&got, &fx["bce_sum"], "bce sum");
    let got = run("mse", &red_attrs("mean"), &[x, bt], &[]).unwrap();
    close(&got, &fx["mse_mean"], "mse mean");
    let got = run("mse", &red_attrs("none"), &[x, bt], &[2, 3]).unwrap();
    close(&got, &fx["mse_none"], "mse none");

    let one = Array::new(&[], vec![1.0]);
    let grad = |name: &str, attrs: Attrs0, x: &Array, t: &Array, w: &Array| {
        run(name, &attrs, &[x, t, &one, w], &x.shape).unwrap()
    };
    let g = grad(
        "cross_entropy_grad",
        ce_attrs(0.1, 2, "mean"),
        &fx["ce_logits"],
        &fx["ce_target"],
        &fx["ce_weight"],
    );
    close(&g, &fx["ce_grad"], "ce grad");
    let g = grad(
        "cross_entropy_grad",
        ce_attrs(0.2, -100, "mean"),
        &fx["sce_logits"],
        &fx["sce_target"],
        &fx["sce_weight"],
    );
    close(&g, &fx["sce_grad"], "spatial ce grad");
    let g = grad("multi_margin_grad", mm_attrs(2, 0.5, "mean"), s, t, w);
    close(&g, &fx["mm_grad"], "mm grad");
    let g = grad("bce_with_logits_grad", red_attrs("mean"), x, bt, pw);
    close(&g, &fx["bce_grad"], "bce grad");
}
