//! The sparse convs' gradient lowerings against the reference interpreter
//! (whose gradient ops are checked by finite differences): after every
//! conv of a small encoder (submanifold convs sharing a rule book, a
//! dilated one, a biased strided conv, a strided conv on a strided conv's
//! run-time sites), its input, weight and bias gradients for the upstream
//! gradient `y²` are graph outputs, and so are `sparse_global_avg_pool`
//! and its gradient on the input sites and on the last conv's run-time
//! sites; compiled on 1 and 2 threads they equal
//! the interpreter's, for no sites, one site and 60 sites over two
//! samples (relative L2 error at most 1e-5 per output: the upstream
//! gradient is computed in f32, so single elements of sums that cancel
//! differ by more). Rows past a run-time count are not compared (nor
//! computed).

use super::super::super::lower;
use super::super::super::oracle::params;
use super::super::super::train_oracle::rel_l2;
use crate::back::jit::Jit;
use crate::interp::{self, Array};
use crate::ir::{Attr, Dim, Graph, Op, TensorType, ValueId};
use crate::options::CompileOptions;
use crate::passes::rewrite::{new_node, set_nodes};
use crate::testing::program;
use netc_runtime::plan::Executor;
use netc_runtime::DType;
use std::collections::HashMap;

const MODEL: &str = "model m {
    input f: f32[M, 3]
    input c: i32[M, 4]
    s = sparse_tensor(f, c, shape = [5, 6, 7], batch = 2)
    s = s |> a: subm_conv3d(16, bias = true) |> sparse_relu
          |> b: subm_conv3d(16) |> sparse_relu
          |> g: subm_conv3d(8, dilation = 2)
          |> d: sparse_conv3d(5, stride = 2, bias = true) |> sparse_relu
          |> e: sparse_conv3d(32, k = 2, stride = 2, pad = 0)
    output y = s.features
}";

/// `g` with, for every sparse conv, the gradients of its operands for the
/// output gradient `y * y` as the graph's outputs.
fn with_gradients(mut g: Graph) -> Graph {
    let mut nodes = g.nodes.clone();
    let mut outputs = Vec::new();
    let convs: Vec<_> = g
        .nodes
        .iter()
        .filter(|n| matches!(n.op.name, "subm_conv3d" | "sparse_conv3d"))
        .cloned()
        .collect();
    for n in convs {
        let y = n.outputs[0];
        let ty = g.ty(y).clone();
        let dy = new_node(&mut g, Op::new("mul"), vec![y, y], ty, y_flops(), &n);
        let dyv = dy.outputs[0];
        nodes.push(dy);
        let op = |name: &'static str| {
            let mut op = Op::new(name);
            op.attrs = n.op.attrs.clone();
            op.with("subm", Attr::Bool(n.op.name == "subm_conv3d"))
        };
        let (feats, coords, w) = (n.inputs[0], n.inputs[1], n.inputs[2]);
        let mut add = |g: &mut Graph, name, inputs: Vec<ValueId>, like: ValueId| {
            let ty = g.ty(like).clone();
            let node = new_node(g, op(name), inputs, ty, y_flops(), &n);
            outputs.push((format!("{}.{name}", n.path), node.outputs[0]));
            nodes.push(node);
        };
        add(
            &mut g,
            "sparse_conv3d_grad_input",
            vec![dyv, coords, w],
            feats,
        );
        add(
            &mut g,
            "sparse_conv3d_grad_weight",
            vec![dyv, feats, coords],
            w,
        );
        if let Some(&b) = n.inputs.get(3) {
            add(&mut g, "sparse_conv3d_grad_bias", vec![dyv, coords], b);
        }
    }
    // The per-sample pool and its gradient on the input sites (a count
    // given with the inputs) and on the last conv's run-time sites.
    for path in ["a", "e"] {
        let n = g.nodes.iter().find(|n| n.path == path).unwrap().clone();
        let (y, coords) = (n.outputs[0], *n.outputs.get(1).unwrap_or(&n.inputs[1]));
        let width = g.ty(y).shape[1].clone();
        let pooled = TensorType::new(DType::F32, vec![Dim::known(2), width]);
        let op = |name| Op::new(name).with("batch", Attr::Int(2));
        let p = new_node(
            &mut g,
            op("sparse_global_avg_pool"),
            vec![y, coords],
            pooled,
            y_flops(),
            &n,
        );
        let ty = g.ty(y).clone();
        let pv = p.outputs[0];
        let pg = new_node(
            &mut g,
            op("sparse_global_avg_pool_grad"),
            vec![pv, coords],
            ty,
            y_flops(),
            &n,
        );
        outputs.push((format!("{path}.pool"), pv));
        outputs.push((format!("{path}.pool_grad"), pg.outputs[0]));
        nodes.extend([p, pg]);
    }
    set_nodes(&mut g, nodes);
    g.outputs = outputs;
    g
}

fn y_flops() -> crate::ir::Dim {
    crate::ir::Dim::known(0)
}

/// `m` distinct sites over two samples of the 5x6x7 grid, in a fixed
/// shuffled order.
fn sites(m: usize) -> Vec<f32> {
    (0..m)
        .map(|i| (i * 97 + 13) % 420)
        .flat_map(|c| [c / 210, c / 42 % 5, c / 7 % 6, c % 7].map(|v| v as f32))
        .collect()
}

#[test]
fn sparse_conv_gradients_equal_the_interpreter() {
    let g = with_gradients(program(MODEL).unwrap());
    let ps = params(&g);
    let f64s = |v: &[f32]| v.iter().map(|&a| f64::from(a)).collect::<Vec<_>>();
    let named: HashMap<String, Array> = ps
        .iter()
        .map(|(p, s, v)| (p.clone(), Array::new(s, f64s(v))))
        .collect();
    for m in [0, 1, 60] {
        let coords = sites(m);
        let feats: Vec<f32> = (0..m * 3).map(|i| (i as f32 * 0.37).cos()).collect();
        let want = interp::run(
            &g,
            &[
                ("f", Array::new(&[m, 3], f64s(&feats))),
                ("c", Array::new(&[m, 4], f64s(&coords))),
            ],
            &named,
        )
        .unwrap();
        for threads in [1, 2] {
            let options = CompileOptions {
                threads,
                ..Default::default()
            };
            let mut jit = Jit::new().unwrap();
            let opt = crate::passes::pipeline::optimize(g.clone(), &options, None).unwrap();
            let lowered = lower(&opt, &[("M".into(), m as i64)], options, &mut jit).unwrap();
            let pv: Vec<&[f32]> = ps.iter().map(|(_, _, v)| v.as_slice()).collect();
            let mut ex = Executor::new(lowered.plan.clone(), threads).unwrap();
            ex.prepare(&pv).unwrap();
            let mut outs: Vec<Vec<f32>> = lowered
                .outputs
                .iter()
                .map(|(_, n)| vec![f32::NAN; *n])
                .collect();
            let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
            ex.run(&[&feats, &coords], &pv, &mut refs).unwrap();
            assert_eq!(
                want.len(),
                16,
                "5 input, 5 weight and 2 bias gradients, 2 pools"
            );
            for ((name, w), got) in want.iter().zip(&outs) {
                let err = rel_l2(&got[..w.data.len()], &w.data);
                assert!(
                    err <= 1e-5,
                    "{name}, m = {m}, {threads} threads: rel L2 {err:e}"
                );
            }
        }
    }
}
