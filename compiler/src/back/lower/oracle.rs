//! Test support for the lowering modules: run a graph compiled (through
//! [`super::lower`] and the executor) and through the reference
//! interpreter on the same data, and compare.

use super::lower;
use crate::back::jit::Jit;
use crate::interp::{self, Array};
use crate::ir::{Attr, Dim, Graph, ValueId};
use crate::options::CompileOptions;
use netc_runtime::plan::Executor;
use std::collections::HashMap;

/// Deterministic test data: `n` values in about `[-scale, scale]`.
pub fn data(n: usize, seed: f32, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f32 * 0.7311 + seed).sin() * 1.37 + (i as f32 * 0.173).cos()) * scale / 2.4)
        .collect()
}

/// Parameter values for every parameter of `g` (known shapes): variances
/// (paths ending in `running_var`) are positive.
pub fn params(g: &Graph) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    g.params
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let shape: Vec<usize> = p.ty.known_dims().unwrap_or_default();
            let n = shape.iter().product();
            let mut v = data(n, k as f32 * 1.9 + 0.3, 1.5);
            if p.path.ends_with("running_var") {
                v.iter_mut().for_each(|x| *x = x.abs() + 0.3);
            }
            (p.path.clone(), shape, v)
        })
        .collect()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&a| f64::from(a)).collect()
}

/// The reference interpreter's outputs for `inputs` (name, shape, data).
pub fn reference(
    g: &Graph,
    inputs: &[(&str, Vec<usize>, Vec<f32>)],
    params: &[(String, Vec<usize>, Vec<f32>)],
) -> Vec<Vec<f64>> {
    let named: HashMap<String, Array> = params
        .iter()
        .map(|(p, s, v)| (p.clone(), Array::new(s, f64s(v))))
        .collect();
    let ins: Vec<(&str, Array)> = inputs
        .iter()
        .map(|(n, s, v)| (*n, Array::new(s, f64s(v))))
        .collect();
    interp::run(g, &ins, &named)
        .unwrap()
        .into_iter()
        .map(|(_, a)| a.data)
        .collect()
}

/// The compiled outputs of `g` for `symbols` on `threads` threads; inputs
/// in the graph's input order.
pub fn compiled(
    g: &Graph,
    symbols: &[(&str, i64)],
    inputs: &[&[f32]],
    params: &[(String, Vec<usize>, Vec<f32>)],
    threads: usize,
) -> Vec<Vec<f32>> {
    let symbols: Vec<(String, i64)> = symbols.iter().map(|(n, v)| (n.to_string(), *v)).collect();
    let mut jit = Jit::new().unwrap();
    let lowered = lower(g, &symbols, CompileOptions::default(), &mut jit).unwrap();
    let ps: Vec<&[f32]> = params.iter().map(|(_, _, v)| v.as_slice()).collect();
    run_lowered(lowered, inputs, &ps, threads)
}

/// Runs a lowered plan on `threads` threads (parameters prepared first)
/// and returns its outputs.
pub fn run_lowered(
    lowered: super::Lowered,
    inputs: &[&[f32]],
    params: &[&[f32]],
    threads: usize,
) -> Vec<Vec<f32>> {
    let mut ex = Executor::new(lowered.plan, threads).unwrap();
    ex.prepare(params).unwrap();
    let mut outs: Vec<Vec<f32>> = lowered
        .outputs
        .iter()
        .map(|(_, n)| vec![f32::NAN; *n])
        .collect();
    let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
    ex.run(inputs, params, &mut refs).unwrap();
    outs
}

/// Asserts `got` equals `want` elementwise within `tol · max(1, |want|)`.
pub fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (a, e)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(*a) - e).abs() <= tol * e.abs().max(1.0),
            "{what}: element {i}: {a} vs {e}"
        );
    }
}

/// Compiles and runs `g` on 1 and 2 threads and compares every output
/// with the interpreter; `inputs` are (name, shape, data) in input order.
pub fn check(
    g: &Graph,
    symbols: &[(&str, i64)],
    inputs: &[(&str, Vec<usize>, Vec<f32>)],
    tol: f64,
) {
    let ps = params(g);
    let want = reference(g, inputs, &ps);
    let ins: Vec<&[f32]> = inputs.iter().map(|(_, _, v)| v.as_slice()).collect();
    for threads in [1, 2] {
        let got = compiled(g, symbols, &ins, &ps, threads);
        for (k, (a, e)) in got.iter().zip(&want).enumerate() {
            assert_close(a, e, tol, &format!("output {k}, {threads} threads"));
        }
    }
}

/// `x` (row-major `[N, C, H, W]`) in `[N, H, W, C]` order.
pub fn to_nhwc<T: Copy + Default>(x: &[T], n: usize, c: usize, h: usize, w: usize) -> Vec<T> {
    let mut y = vec![T::default(); x.len()];
    for ni in 0..n {
        for ci in 0..c {
            for p in 0..h * w {
                y[(ni * h * w + p) * c + ci] = x[(ni * c + ci) * h * w + p];
            }
        }
    }
    y
}

/// Turns the single node named `op` of `g` into its channels-last form:
/// `layout = "nhwc"` and its 4-D input and output types permuted from
/// `[N, C, H, W]` to `[N, H, W, C]`; the graph's input and output are
/// those values.
pub fn make_nhwc(g: &mut Graph, op: &str) {
    let k = g.nodes.iter().position(|n| n.op.name == op).unwrap();
    g.nodes[k]
        .op
        .attrs
        .push(("layout", Attr::Str("nhwc".into())));
    let vs: Vec<ValueId> = vec![g.nodes[k].inputs[0], g.nodes[k].outputs[0]];
    for v in vs {
        let s: Vec<Dim> = g.values[v.0 as usize].ty.shape.clone();
        g.values[v.0 as usize].ty.shape =
            vec![s[0].clone(), s[2].clone(), s[3].clone(), s[1].clone()];
    }
}
