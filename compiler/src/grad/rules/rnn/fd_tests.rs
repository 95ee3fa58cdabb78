//! Finite-difference checks of the `lstm` and `embedding` rules, in f64 on
//! the reference interpreter (as `grad/fd_tests.rs`): every trained
//! parameter's gradient — the LSTM's weights, biases and peepholes, a
//! linear layer or embedding table before it (which sees the LSTM's input
//! gradient) — equals central differences of the training graph's own
//! loss, which are computed by forward ops only.

use crate::grad::training_graph;
use crate::interp::{self, Array};
use crate::ir::Graph;
use netc_runtime::counter::unit;
use netc_runtime::DType;
use std::collections::HashMap;

/// The batch `N`.
const BATCH: usize = 2;

/// Ids below this in every i64 input.
const VOCAB: usize = 7;

fn shape(g: &Graph, v: crate::ir::ValueId) -> Vec<usize> {
    g.ty(v)
        .shape
        .iter()
        .map(|d| d.eval(&|_| Some(BATCH as i64)).as_known().unwrap() as usize)
        .collect()
}

fn random(key: &str, n: usize) -> Vec<f64> {
    (0..n).map(|i| 2.0 * unit(5, key, i as u64) - 1.0).collect()
}

fn run(
    g: &Graph,
    inputs: &[(&str, Array)],
    params: &HashMap<String, Array>,
) -> HashMap<String, Array> {
    interp::run(g, inputs, params)
        .unwrap_or_else(|e| panic!("interpreter: {e}"))
        .into_iter()
        .collect()
}

/// Checks every element (up to 40 per parameter) of every parameter
/// gradient of model `m` with `loss = sum(y * r)`.
fn check(name: &str, body: &str, y_shape: &str) {
    let src = format!(
        "model m {{\n{body}\n}}\ntrain m {{\nlabel r: f32{y_shape}\nloss = sum(y * r)\noptimizer = sgd(lr = 0.1)\n}}\n"
    );
    let g = crate::testing::program(&src).unwrap_or_else(|e| panic!("{name}: {e}"));
    let t = training_graph(&g).unwrap_or_else(|e| panic!("{name}: {e}"));
    let g = &t.graph;
    let inputs: Vec<(&str, Array)> = g
        .inputs
        .iter()
        .map(|(n, v)| {
            let s = shape(g, *v);
            let len = s.iter().product();
            let data = if g.ty(*v).dtype == DType::I64 {
                (0..len).map(|i| ((i * 5 + 3) % VOCAB) as f64).collect()
            } else {
                random(n, len)
            };
            (n.as_str(), Array::new(&s, data))
        })
        .collect();
    let mut params: HashMap<String, Array> = g
        .params
        .iter()
        .map(|p| {
            let s: Vec<usize> = p.ty.known_dims().unwrap();
            let len = s.iter().product();
            (p.path.clone(), Array::new(&s, random(&p.path, len)))
        })
        .collect();
    let outs = run(g, &inputs, &params);
    let h = 1e-5;
    let mut checked = HashMap::new();
    for &(pi, oi) in &t.grads {
        let path = g.params[pi].path.clone();
        let grad = outs[&g.outputs[oi].0].data.clone();
        let n = grad.len();
        for k in 0..n.min(40) {
            let i = (k * 7919) % n;
            let orig = params[&path].data[i];
            let mut loss_at = |x: f64| {
                params.get_mut(&path).unwrap().data[i] = x;
                run(g, &inputs, &params)["loss"].data[0]
            };
            let fd = (loss_at(orig + h) - loss_at(orig - h)) / (2.0 * h);
            params.get_mut(&path).unwrap().data[i] = orig;
            assert!(
                (grad[i] - fd).abs() <= 1e-6 * (1.0 + fd.abs()),
                "{name}: d loss / d {path}[{i}] = {}, finite differences give {fd}",
                grad[i]
            );
            *checked.entry(path.clone()).or_insert(0) += 1;
        }
    }
    assert!(checked.len() >= 4, "{name}: checked only {checked:?}");
}

#[test]
fn lstm_with_and_without_peepholes() {
    for peephole in [false, true] {
        let body = format!(
            "input x: f32[N, 4, 3]\n output y = x |> l0: linear(5) |> l: lstm(3, peephole = {peephole}) |> tanh"
        );
        check(&format!("lstm peephole {peephole}"), &body, "[N, 3]");
    }
}

#[test]
fn lstm_sequence_outputs_and_time_first() {
    let body = "input x: f32[N, 3, 4, 2]\n output y = x |> l0: linear(3) |> l: lstm(2, peephole = true, returns = \"sequence\")";
    check("sequence", body, "[N, 3, 4, 2]");
    let body = "input x: f32[N, 4, 2]\n r = x |> l0: linear(3) |> l: lstm(3, returns = \"both\")\n output y = r.sequence + unsqueeze(r.last, 1)";
    check("both", body, "[N, 4, 3]");
    let body = "input x: f32[4, N, 2]\n output y = x |> l0: linear(3) |> l: lstm(3, peephole = true, batch_first = false, returns = \"sequence\")";
    check("time first", body, "[4, N, 3]");
}

#[test]
fn embedding_into_lstm() {
    for peephole in [false, true] {
        let body = format!(
            "input ids: i64[N, 2, 5]\n output y = ids |> emb: embedding({VOCAB}, 4) |> l: lstm(3, peephole = {peephole})"
        );
        check(
            &format!("embedding peephole {peephole}"),
            &body,
            "[N, 2, 3]",
        );
    }
}

/// `padding_idx`: as in `nn.Embedding`, the padding row gets no gradient
/// (finite differences would see the row, which the forward reads).
#[test]
fn the_padding_row_gets_no_gradient() {
    let src = format!(
        "model m {{\ninput ids: i64[N, 5]\noutput y = ids |> emb: embedding({VOCAB}, 3, padding_idx = 3) |> l: lstm(2)\n}}\ntrain m {{\nloss = sum(y)\noptimizer = sgd(lr = 0.1)\n}}\n"
    );
    let t = training_graph(&crate::testing::program(&src).unwrap()).unwrap();
    let g = &t.graph;
    // Ids 3, 1, 3, 0, 3, ...: row 3 is read, rows 0 and 1 too.
    let ids: Vec<f64> = (0..BATCH * 5)
        .map(|i| [3.0, 1.0, 3.0, 0.0][i % 4])
        .collect();
    let params = g
        .params
        .iter()
        .map(|p| {
            let s: Vec<usize> = p.ty.known_dims().unwrap();
            let len = s.iter().product();
            (p.path.clone(), Array::new(&s, random(&p.path, len)))
        })
        .collect();
    let outs = run(g, &[("ids", Array::new(&[BATCH, 5], ids))], &params);
    let (_, oi) = t
        .grads
        .iter()
        .find(|(pi, _)| g.params[*pi].path == "emb.weight")
        .unwrap();
    let dw = &outs[&g.outputs[*oi].0].data;
    assert_eq!(&dw[9..12], &[0.0; 3], "row 3");
    assert!(dw[..6].iter().all(|v| *v != 0.0), "rows 0 and 1: {dw:?}");
}
