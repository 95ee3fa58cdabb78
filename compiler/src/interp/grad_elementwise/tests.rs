//! Each activation gradient equals `dy` times a central finite difference
//! of the forward activation (f64).

use super::super::dense::Attrs;
use super::super::{eval, Array};
use crate::ir::Attr;

type AttrList = [(&'static str, Attr)];

fn run(name: &str, attrs: &AttrList, x: &[&Array]) -> Array {
    let shape = x[0].shape.clone();
    eval(name, &Attrs(attrs), x, &[shape]).unwrap().remove(0)
}

#[test]
fn activation_grads_match_finite_differences() {
    // Points away from the kinks at 0, over the saturating ranges too.
    let xs: Vec<f64> = (0..41).map(|i| -6.05 + 0.3 * i as f64).collect();
    let n = xs.len();
    let x = Array::new(&[n], xs.clone());
    let dy = Array::new(&[n], (0..n).map(|i| 0.5 + (i as f64).sin()).collect());
    let slope = vec![("negative_slope", Attr::Float(0.2))];
    let erf = vec![("approximate", Attr::Str("none".into()))];
    let tanh = vec![("approximate", Attr::Str("tanh".into()))];
    // (forward, its attrs, grad op, whether the grad reads the output)
    let cases: [(&str, &AttrList, &str, bool); 7] = [
        ("relu", &[], "relu_grad", true),
        ("tanh", &[], "tanh_grad", true),
        ("sigmoid", &[], "sigmoid_grad", true),
        ("leaky_relu", &slope, "leaky_relu_grad", false),
        ("silu", &[], "silu_grad", false),
        ("gelu", &erf, "gelu_grad", false),
        ("gelu", &tanh, "gelu_grad", false),
    ];
    let h = 1e-6;
    for (fwd, attrs, grad, reads_output) in cases {
        let y = run(fwd, attrs, &[&x]);
        let v = if reads_output { &y } else { &x };
        let g = run(grad, attrs, &[&dy, v]);
        for (i, &xi) in xs.iter().enumerate() {
            let at = |d: f64| run(fwd, attrs, &[&Array::new(&[1], vec![xi + d])]).data[0];
            let fd = dy.data[i] * (at(h) - at(-h)) / (2.0 * h);
            assert!(
                (g.data[i] - fd).abs() <= 1e-7 * fd.abs().max(1.0),
                "{grad} {attrs:?} at {}: {} vs {fd}",
                xi,
                g.data[i]
            );
        }
    }
}
