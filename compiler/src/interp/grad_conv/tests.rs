//! The contraction gradients against central finite differences of the
//! interpreter's forward `conv1d` / `conv2d` / `linear`: for
//! `L = Σ dy · f(x, W)`, every element of dx and dW must be
//! `(L(· + h) − L(· − h)) / 2h`.

use super::super::dense::{conv, linear};
use super::*;
use crate::ir::Attr;

/// Deterministic values in about [-1, 1].
fn data(len: usize, seed: f64) -> Vec<f64> {
    (0..len)
        .map(|i| ((i as f64 + seed) * 0.7311).sin() + 0.3 * ((i as f64) * 0.173 + seed).cos())
        .collect()
}

/// `Σ a·b`.
fn dot(a: &Array, b: &[f64]) -> f64 {
    a.data.iter().zip(b).map(|(p, q)| p * q).sum()
}

/// Central differences of `loss` at every element of `at`, compared with
/// `grad` (relative tolerance 1e-6 of max(1, |grad|)).
fn check_fd(at: &Array, grad: &Array, what: &str, loss: impl Fn(&Array) -> f64) {
    assert_eq!(at.shape, grad.shape, "{what}: gradient shape");
    let h = 1e-6;
    for i in 0..at.data.len() {
        let (mut up, mut down) = (at.clone(), at.clone());
        up.data[i] += h;
        down.data[i] -= h;
        let fd = (loss(&up) - loss(&down)) / (2.0 * h);
        let g = grad.data[i];
        assert!(
            (fd - g).abs() <= 1e-6 * g.abs().max(1.0),
            "{what}: element {i}: analytic {g} vs finite difference {fd}"
        );
    }
}

/// A convolution case: (nd, batch, channels, spatial, out channels,
/// kernel, stride, pad, dilation, groups).
type Case = (
    usize,
    usize,
    usize,
    &'static [usize],
    usize,
    usize,
    i64,
    i64,
    i64,
    i64,
);

const CASES: &[Case] = &[
    (2, 1, 3, &[5, 6], 4, 3, 1, 1, 1, 1),
    (2, 3, 2, &[7, 5], 3, 3, 2, 0, 1, 1),
    (2, 1, 4, &[7, 7], 4, 3, 2, 1, 2, 2),
    (2, 3, 2, &[9, 8], 2, 2, 1, 0, 2, 1),
    (2, 1, 2, &[11, 11], 3, 7, 2, 3, 1, 1),
    (2, 3, 4, &[4, 5], 6, 1, 1, 0, 1, 2),
    (2, 1, 2, &[6, 6], 2, 1, 2, 0, 1, 1),
    (1, 3, 4, &[13], 2, 5, 2, 2, 2, 2),
    (1, 1, 3, &[9], 4, 3, 1, 1, 1, 1),
];

#[test]
fn conv_gradients_match_finite_differences_of_the_forward() {
    for &(nd, n, c, sp, oc, k, s, p, d, g) in CASES {
        let what = format!("conv{nd}d n={n} c={c} {sp:?} oc={oc} k={k} s={s} p={p} d={d} g={g}");
        let attrs = vec![
            ("stride", Attr::Ints(vec![s; nd])),
            ("pad", Attr::Ints(vec![p; nd])),
            ("dilation", Attr::Ints(vec![d; nd])),
            ("groups", Attr::Int(g)),
        ];
        let a = Attrs(&attrs);
        let mut xs = vec![n, c];
        xs.extend_from_slice(sp);
        let mut ws = vec![oc, c / g as usize];
        ws.extend(std::iter::repeat_n(k, nd));
        let mut ys = vec![n, oc];
        ys.extend(
            sp.iter()
                .map(|&l| (l as i64 + 2 * p - d * (k as i64 - 1) - 1) as usize / s as usize + 1),
        );
        let x = Array::new(&xs, data(xs.iter().product(), 0.3));
        let w = Array::new(&ws, data(ws.iter().product(), 1.7));
        let dy = Array::new(&ys, data(ys.iter().product(), 2.9));
        let op = |which: &str| format!("conv{nd}d_grad_{which}");
        let dx = eval(&op("input"), &a, &[&dy, &w], &[xs.clone()])
            .unwrap()
            .unwrap();
        let dw = eval(&op("weight"), &a, &[&dy, &x], &[ws.clone()])
            .unwrap()
            .unwrap();
        check_fd(&x, &dx[0], &format!("{what}: dx"), |x| {
            dot(&conv(x, &w, None, &a, &ys), &dy.data)
        });
        check_fd(&w, &dw[0], &format!("{what}: dW"), |w| {
            dot(&conv(&x, w, None, &a, &ys), &dy.data)
        });
    }
}

#[test]
fn linear_gradients_match_finite_differences_of_the_forward() {
    for shape in [&[5usize, 4][..], &[2, 3, 4], &[1, 4]] {
        let (inn, out) = (shape[shape.len() - 1], 3);
        let mut ys = shape.to_vec();
        *ys.last_mut().unwrap() = out;
        let x = Array::new(shape, data(shape.iter().product(), 0.1));
        let w = Array::new(&[out, inn], data(out * inn, 1.1));
        let dy = Array::new(&ys, data(ys.iter().product(), 2.1));
        let none = Attrs(&[]);
        let dx = eval("linear_grad_input", &none, &[&dy, &w], &[shape.to_vec()])
            .unwrap()
            .unwrap();
        let dw = eval("linear_grad_weight", &none, &[&dy, &x], &[vec![out, inn]])
            .unwrap()
            .unwrap();
        let what = format!("linear {shape:?} -> {out}");
        check_fd(&x, &dx[0], &format!("{what}: dx"), |x| {
            dot(&linear(x, &w, None), &dy.data)
        });
        check_fd(&w, &dw[0], &format!("{what}: dW"), |w| {
            dot(&linear(&x, w, None), &dy.data)
        });
    }
}

#[test]
fn mismatched_shapes_are_errors_not_panics() {
    let attrs = vec![
        ("stride", Attr::Ints(vec![1, 1])),
        ("pad", Attr::Ints(vec![0, 0])),
        ("dilation", Attr::Ints(vec![1, 1])),
        ("groups", Attr::Int(2)),
    ];
    let dy = Array::zeros(&[1, 3, 2, 2]);
    let w = Array::zeros(&[3, 1, 3, 3]);
    let r = eval(
        "conv2d_grad_input",
        &Attrs(&attrs),
        &[&dy, &w],
        &[vec![1, 2, 4, 4]],
    )
    .unwrap();
    assert!(r.unwrap_err().contains("groups = 2"));
    let r = eval(
        "linear_grad_input",
        &Attrs(&[]),
        &[&Array::zeros(&[2, 3]), &Array::zeros(&[4, 5])],
        &[vec![2, 5]],
    )
    .unwrap();
    assert!(r.is_err());
}
