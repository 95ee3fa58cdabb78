//! The reference semantics of the training ops against independent
//! references: central finite differences (f64) of the interpreter's
//! forward ops, hand-computed running statistics, and the counter
//! generator itself for the dropout mask.

use super::dense::Attrs;
use super::{eval, Array};
use crate::ir::{Attr, Dim};
use crate::testing::model;
use netc_runtime::counter;

/// Distinct, well separated test values (no ties for max pooling): a
/// permutation of `0..n` scaled, plus a smooth wobble.
fn distinct(n: usize, seed: usize) -> Vec<f64> {
    let step = [37, 41, 43, 47]
        .into_iter()
        .find(|s| !n.is_multiple_of(*s))
        .unwrap_or(1);
    (0..n)
        .map(|i| {
            ((i * step + seed) % n) as f64 * 0.1 - n as f64 * 0.05 + (i as f64 * 0.3).sin() * 0.01
        })
        .collect()
}

/// `∂(Σ r·f(x))/∂x` by central differences with `h = 1e-6`.
fn fd(f: &dyn Fn(&[f64]) -> Vec<f64>, x: &[f64], r: &[f64]) -> Vec<f64> {
    let h = 1e-6;
    let dot = |y: Vec<f64>| y.iter().zip(r).map(|(a, b)| a * b).sum::<f64>();
    (0..x.len())
        .map(|i| {
            let mut p = x.to_vec();
            p[i] += h;
            let up = dot(f(&p));
            p[i] -= 2.0 * h;
            (up - dot(f(&p))) / (2.0 * h)
        })
        .collect()
}

/// `got` equals `want` within `1e-6 · max(1, max |want|)`.
fn assert_grad(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    for (i, (a, e)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - e).abs() <= 1e-6 * scale,
            "{what}: element {i}: {a} vs {e}"
        );
    }
}

fn run(name: &str, attrs: &[(&'static str, Attr)], x: &[&Array], out: &[Vec<usize>]) -> Vec<Array> {
    eval(name, &Attrs(attrs), x, out).unwrap()
}

fn bn_attrs() -> Vec<(&'static str, Attr)> {
    vec![("eps", Attr::Float(1e-5)), ("momentum", Attr::Float(0.1))]
}

/// `batch_norm_grad` is the gradient of `batch_norm_train`'s `y` with
/// respect to x, weight and bias, for ranks 2, 3 and 4.
#[test]
fn batch_norm_grad_matches_finite_differences_of_batch_norm_train() {
    for shape in [
        vec![5, 3],
        vec![4, 3, 5],
        vec![3, 2, 3, 2],
        vec![1, 2, 3, 3],
    ] {
        let (n, c) = (shape.iter().product::<usize>(), shape[1]);
        let x = Array::new(
            &shape,
            distinct(n, 3).iter().map(|v| v * 0.7 + 0.4).collect(),
        );
        let w = Array::new(&[c], (0..c).map(|k| 0.8 + 0.3 * k as f64).collect());
        let b = Array::new(&[c], (0..c).map(|k| 0.1 - 0.2 * k as f64).collect());
        let rm = Array::new(&[c], vec![0.1; c]);
        let rv = Array::new(&[c], vec![1.2; c]);
        let r: Vec<f64> = (0..n).map(|i| (i as f64 * 0.77).cos()).collect();
        let outs: Vec<Vec<usize>> = vec![shape.clone(), vec![c], vec![c], vec![c], vec![c]];
        let fwd = |x: &Array, w: &Array, b: &Array| {
            run("batch_norm_train", &bn_attrs(), &[x, w, b, &rm, &rv], &outs)
        };
        let f = fwd(&x, &w, &b);
        let dy = Array::new(&shape, r.clone());
        let g = run(
            "batch_norm_grad",
            &[],
            &[&dy, &x, &f[1], &f[2], &w],
            &[shape.clone(), vec![c], vec![c]],
        );
        let what = format!("{shape:?}");
        let fx = |v: &[f64]| fwd(&Array::new(&shape, v.to_vec()), &w, &b)[0].data.clone();
        assert_grad(&g[0].data, &fd(&fx, &x.data, &r), &format!("dx {what}"));
        let fw = |v: &[f64]| fwd(&x, &Array::new(&[c], v.to_vec()), &b)[0].data.clone();
        assert_grad(
            &g[1].data,
            &fd(&fw, &w.data, &r),
            &format!("dweight {what}"),
        );
        let fb = |v: &[f64]| fwd(&x, &w, &Array::new(&[c], v.to_vec()))[0].data.clone();
        assert_grad(&g[2].data, &fd(&fb, &b.data, &r), &format!("dbias {what}"));
    }
}

/// Batch statistics and running-stat updates of a tiny case by hand:
/// channel 0 holds {1, 3} (mean 2, biased var 1, unbiased 2), channel 1
/// {2, 6} (mean 4, var 4, unbiased 8).
#[test]
fn batch_norm_train_statistics_match_a_hand_computation() {
    let x = Array::new(&[2, 2, 1], vec![1.0, 2.0, 3.0, 6.0]);
    let w = Array::new(&[2], vec![2.0, 1.0]);
    let b = Array::new(&[2], vec![0.5, 0.0]);
    let rm = Array::new(&[2], vec![0.5, -1.0]);
    let rv = Array::new(&[2], vec![1.0, 2.0]);
    let outs = vec![vec![2, 2, 1], vec![2], vec![2], vec![2], vec![2]];
    let f = run(
        "batch_norm_train",
        &bn_attrs(),
        &[&x, &w, &b, &rm, &rv],
        &outs,
    );
    let (i0, i1) = (1.0 / (1.0f64 + 1e-5).sqrt(), 1.0 / (4.0f64 + 1e-5).sqrt());
    let want: [&[f64]; 5] = [
        &[-i0 * 2.0 + 0.5, -2.0 * i1, i0 * 2.0 + 0.5, 2.0 * i1],
        &[2.0, 4.0],
        &[i0, i1],
        &[0.9 * 0.5 + 0.1 * 2.0, -0.9 + 0.1 * 4.0],
        &[0.9 * 1.0 + 0.1 * 2.0, 0.9 * 2.0 + 0.1 * 8.0],
    ];
    for (k, (got, want)) in f.iter().zip(want).enumerate() {
        for (a, e) in got.data.iter().zip(want) {
            assert!((a - e).abs() < 1e-12, "result {k}: {a} vs {e}");
        }
    }
}

/// The forward node of `body` (an elaborated one-op model) and its
/// output shape.
fn forward(body: &str) -> (Vec<(&'static str, Attr)>, &'static str, Vec<usize>) {
    let g = model(body).unwrap();
    let node = g.nodes.last().unwrap();
    let shape = g.ty(node.outputs[0]).known_dims().unwrap();
    (node.op.attrs.clone(), node.op.name, shape)
}

/// Max, average and adaptive pooling gradients equal finite differences
/// of the forward pools (distinct values, so max windows have no ties).
#[test]
fn pool_grads_match_finite_differences_of_the_forward_pools() {
    let pools = [
        "max_pool2d(3, stride = 2, pad = 1)",
        "max_pool2d(3, stride = 2, pad = 1, ceil_mode = true)",
        "max_pool2d(2, stride = 2)",
        "max_pool2d(2, stride = 2, ceil_mode = true)",
        "max_pool2d([3, 2], stride = [1, 2], pad = [1, 0], dilation = [2, 1])",
        "avg_pool2d(3, stride = 2, pad = 1)",
        "avg_pool2d(3, stride = 2, pad = 1, count_include_pad = false)",
        "avg_pool2d(3, stride = 2, pad = 1, ceil_mode = true)",
        "avg_pool2d(3, stride = 2, pad = 1, ceil_mode = true, count_include_pad = false)",
        "avg_pool2d(2, stride = 2, ceil_mode = true)",
        "avg_pool2d([2, 3], stride = [3, 1], pad = [1, 1])",
        "adaptive_avg_pool2d([3, 2])",
        "adaptive_avg_pool2d([4, 3])",
        "adaptive_avg_pool2d(1)",
    ];
    for (shape, pool) in pools
        .iter()
        .flat_map(|p| [([2, 2, 7, 5], p), ([1, 1, 6, 8], p)])
    {
        let ty = format!(
            "f32[{}, {}, {}, {}]",
            shape[0], shape[1], shape[2], shape[3]
        );
        let (attrs, name, yshape) = forward(&format!("input x: {ty}\noutput y = x |> {pool}"));
        let n: usize = shape.iter().product();
        let x = Array::new(&shape, distinct(n, 5));
        let r: Vec<f64> = (0..yshape.iter().product())
            .map(|i| (i as f64 * 0.61).sin() + 0.3)
            .collect();
        let dy = Array::new(&yshape, r.clone());
        let mut gattrs = attrs.clone();
        gattrs.push((
            "input_shape",
            Attr::Dims(shape.iter().map(|&d| Dim::known(d as i64)).collect()),
        ));
        let (grad, args): (&str, Vec<&Array>) = match name {
            "max_pool2d" => ("max_pool2d_grad", vec![&dy, &x]),
            "avg_pool2d" => ("avg_pool2d_grad", vec![&dy]),
            _ => ("adaptive_avg_pool2d_grad", vec![&dy]),
        };
        let got = run(grad, &gattrs, &args, &[shape.to_vec()]);
        let f = |v: &[f64]| {
            run(
                name,
                &attrs,
                &[&Array::new(&shape, v.to_vec())],
                std::slice::from_ref(&yshape),
            )[0]
            .data
            .clone()
        };
        assert_grad(
            &got[0].data,
            &fd(&f, &x.data, &r),
            &format!("{pool} on {shape:?}"),
        );
    }
}

/// Max pooling's tie rule: a window's gradient goes to its first maximal
/// element in row-major order (PyTorch's CPU kernel), overlaps add.
#[test]
fn max_pool_grad_sends_ties_to_the_first_maximum() {
    let (attrs, _, _) =
        forward("input x: f32[1, 1, 3, 3]\noutput y = x |> max_pool2d(2, stride = 1)");
    let x = Array::new(
        &[1, 1, 3, 3],
        vec![1.0, 5.0, 5.0, 5.0, 5.0, 0.0, 2.0, 2.0, 2.0],
    );
    let dy = Array::new(&[1, 1, 2, 2], vec![1.0, 10.0, 100.0, 1000.0]);
    let got = run("max_pool2d_grad", &attrs, &[&dy, &x], &[vec![1, 1, 3, 3]]);
    // Windows: (0,0) and (0,1) -> x[0][1]; (1,0) -> x[1][0]; (1,1) -> x[1][1]
    // (PyTorch 2 CPU gives the same).
    assert_eq!(
        got[0].data,
        vec![0.0, 11.0, 0.0, 100.0, 1000.0, 0.0, 0.0, 0.0, 0.0]
    );
}

/// `sum` and `mean` (keepdim) have `expand` as their adjoint and vice
/// versa: finite differences of each equal the other applied to `r`.
#[test]
fn sum_mean_and_expand_are_adjoint_by_finite_differences() {
    let shape = [2usize, 3, 4, 5];
    let n: usize = shape.iter().product();
    let x: Vec<f64> = distinct(n, 1);
    for dims in [
        vec![0i64, 2, 3],
        vec![0],
        vec![3],
        vec![1, 3],
        vec![0, 1, 2, 3],
    ] {
        let kept: Vec<usize> = (0..4)
            .map(|d| {
                if dims.contains(&(d as i64)) {
                    1
                } else {
                    shape[d]
                }
            })
            .collect();
        let count = (n / kept.iter().product::<usize>()) as f64;
        let m: usize = kept.iter().product();
        let r: Vec<f64> = (0..m).map(|i| (i as f64 * 0.9).cos()).collect();
        let rx: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
        let to_shape = |s: &[usize]| Attr::Dims(s.iter().map(|&d| Dim::known(d as i64)).collect());
        let expanded = run(
            "expand",
            &[("shape", to_shape(&shape))],
            &[&Array::new(&kept, r.clone())],
            &[shape.to_vec()],
        );
        for op in ["sum", "mean"] {
            let attrs = [
                ("dims", Attr::Ints(dims.clone())),
                ("keepdim", Attr::Bool(true)),
            ];
            let f = |v: &[f64]| {
                run(
                    op,
                    &attrs,
                    &[&Array::new(&shape, v.to_vec())],
                    std::slice::from_ref(&kept),
                )[0]
                .data
                .clone()
            };
            let scale = if op == "mean" { 1.0 / count } else { 1.0 };
            let want: Vec<f64> = expanded[0].data.iter().map(|v| v * scale).collect();
            assert_grad(&want, &fd(&f, &x, &r), &format!("{op} over {dims:?}"));
        }
        // d(Σ rx · expand(v))/dv = sum(rx) over the broadcast dims.
        let f = |v: &[f64]| {
            run(
                "expand",
                &[("shape", to_shape(&shape))],
                &[&Array::new(&kept, v.to_vec())],
                &[shape.to_vec()],
            )[0]
            .data
            .clone()
        };
        let attrs = [
            ("dims", Attr::Ints(dims.clone())),
            ("keepdim", Attr::Bool(true)),
        ];
        let summed = run(
            "sum",
            &attrs,
            &[&Array::new(&shape, rx.clone())],
            std::slice::from_ref(&kept),
        );
        assert_grad(
            &summed[0].data,
            &fd(&f, &r, &rx),
            &format!("expand over {dims:?}"),
        );
    }
    // Lower rank broadcasts from the right: [5] -> [2, 3, 5].
    let v = Array::new(&[5], vec![1.0, 2.0, 3.0, 4.0, 5.0]);
    let y = run(
        "expand",
        &[(
            "shape",
            Attr::Dims(vec![Dim::known(2), Dim::known(3), Dim::known(5)]),
        )],
        &[&v],
        &[vec![2, 3, 5]],
    );
    assert!(y[0].data.chunks(5).all(|c| c == [1.0, 2.0, 3.0, 4.0, 5.0]));
}

/// The f32[2] carrier of a u64 seed.
fn seed_array(s: u64) -> Array {
    let half = |b: u64| f64::from(f32::from_bits(b as u32));
    Array::new(&[2], vec![half(s & 0xffff_ffff), half(s >> 32)])
}

/// The dropout mask is the counter generator's `unit(S, key, i) >= p`,
/// kept values are scaled by `1/(1-p)`, and `p = 0` is the identity.
#[test]
fn dropout_train_mask_is_the_counter_generator() {
    let n = 4000;
    let x = Array::new(
        &[4, 1000],
        (0..n).map(|i| 1.0 + (i as f64 * 0.1).sin().abs()).collect(),
    );
    let s: u64 = 0x0123_4567_3fab_cdef;
    for (p, key) in [(0.5, "dropout0"), (0.2, "dropout3")] {
        let attrs = [("p", Attr::Float(p)), ("key", Attr::Str(key.into()))];
        let y = run(
            "dropout_train",
            &attrs,
            &[&x, &seed_array(s)],
            &[vec![4, 1000]],
        );
        let mut kept = 0;
        for i in 0..n {
            let keep = counter::unit(s, key, i as u64) >= p;
            let want = if keep { x.data[i] / (1.0 - p) } else { 0.0 };
            assert_eq!(y[0].data[i], want, "element {i}");
            kept += usize::from(keep);
        }
        let frac = kept as f64 / n as f64;
        assert!((frac - (1.0 - p)).abs() < 0.03, "kept {frac} at p = {p}");
    }
    // Another key or seed gives another mask.
    let attrs = |key: &str| [("p", Attr::Float(0.5)), ("key", Attr::Str(key.into()))];
    let a = run(
        "dropout_train",
        &attrs("dropout0"),
        &[&x, &seed_array(s)],
        &[vec![4, 1000]],
    );
    let b = run(
        "dropout_train",
        &attrs("dropout1"),
        &[&x, &seed_array(s)],
        &[vec![4, 1000]],
    );
    let c = run(
        "dropout_train",
        &attrs("dropout0"),
        &[&x, &seed_array(s ^ (1 << 40))],
        &[vec![4, 1000]],
    );
    assert_ne!(a[0].data, b[0].data);
    assert_ne!(a[0].data, c[0].data);
    let y = run(
        "dropout_train",
        &[
            ("p", Attr::Float(0.0)),
            ("key", Attr::Str("dropout0".into())),
        ],
        &[&x, &seed_array(s)],
        &[vec![4, 1000]],
    );
    assert_eq!(y[0].data, x.data);
}
