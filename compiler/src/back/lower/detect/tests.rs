//! FCOS's training tail compiled against the reference interpreter: a
//! training step with the focal loss, the box coder and its gradient,
//! centerness, `boolean_mask` over four operands with a run-time count
//! (about half the locations set, none set in one sample), every IoU
//! loss kind and reduction, and a counted BCE, on 1 and 2 threads.

use super::super::oracle::{assert_close, params};
use crate::grad::training_graph;
use crate::interp::{self, Array};
use crate::options::CompileOptions;
use crate::testing::program;
use crate::train::step::TrainStep;
use netc_runtime::counter::unit;
use std::collections::HashMap;

/// The model: 30 locations on two levels (5 x 4 at stride 8, 5 x 2 at
/// stride 16), and the loss with `box_loss` over the kept boxes.
fn source(box_loss: &str, focal: &str) -> String {
    format!(
        "model m {{
            input x: f32[N, 30, 6]
            output cls = x |> lc: linear(5)
            output reg = x |> lr: linear(4) |> exp
            output ctr = x |> lz: linear(1)
        }}
        train m {{
            label cls_t: f32[N, 30, 5]
            label box_t: f32[N, 30, 4]
            label fg: bool[N, 30]
            anchors = fcos_anchors([[5, 4], [5, 2]], strides = [8, 16])
            tb = decode_boxes(anchors, exp(box_t))
            ctr_t = centerness(encode_boxes(anchors, tb))
            p, b, z, zt = boolean_mask([decode_boxes(anchors, reg), tb, squeeze(ctr, 2), ctr_t], fg)
            loss = {focal} + {box_loss} + bce_with_logits(z, zt, reduction = \"sum\")
            optimizer = sgd(lr = 0.1)
        }}"
    )
}

#[test]
fn detection_training_tail_equals_the_interpreter() {
    let cases = [
        (
            "iou_loss(p, b, kind = \"giou\")",
            "sigmoid_focal(cls, cls_t)",
        ),
        (
            "iou_loss(p, b, kind = \"iou\", reduction = \"mean\")",
            "sigmoid_focal(cls, cls_t, alpha = -1.0, reduction = \"mean\")",
        ),
        (
            "sum(iou_loss(p, b, kind = \"log_iou\", reduction = \"none\"))",
            "sum(sigmoid_focal(cls, cls_t, gamma = 1.0, reduction = \"none\"))",
        ),
    ];
    let n = 3;
    let values = |key: &str, len: usize, lo: f64, hi: f64| -> Vec<f32> {
        (0..len)
            .map(|i| (lo + (hi - lo) * unit(5, key, i as u64)) as f32)
            .collect()
    };
    let x = values("x", n * 180, -1.0, 1.0);
    let cls_t: Vec<f32> = values("cls", n * 150, 0.0, 1.0)
        .iter()
        .map(|&v| f32::from(u8::from(v < 0.2)))
        .collect();
    let box_t = values("box", n * 120, -0.5, 0.5);
    // Sample 1 keeps no location.
    let fg: Vec<f32> = values("fg", n * 30, 0.0, 1.0)
        .iter()
        .enumerate()
        .map(|(i, &v)| f32::from(u8::from(v < 0.5 && i / 30 != 1)))
        .collect();
    let inputs: [(&str, Vec<usize>, &[f32]); 4] = [
        ("x", vec![n, 30, 6], &x),
        ("cls_t", vec![n, 30, 5], &cls_t),
        ("box_t", vec![n, 30, 4], &box_t),
        ("fg", vec![n, 30], &fg),
    ];
    for (box_loss, focal) in cases {
        let t = training_graph(&program(&source(box_loss, focal)).unwrap()).unwrap();
        let ps = params(&t.graph);
        let f64s = |v: &[f32]| v.iter().map(|&a| f64::from(a)).collect::<Vec<_>>();
        let named: HashMap<String, Array> = ps
            .iter()
            .map(|(p, s, v)| (p.clone(), Array::new(s, f64s(v))))
            .collect();
        let arrays: Vec<(&str, Array)> = inputs
            .iter()
            .map(|(name, s, v)| (*name, Array::new(s, f64s(v))))
            .collect();
        let want: HashMap<String, Array> = interp::run(&t.graph, &arrays, &named)
            .unwrap()
            .into_iter()
            .collect();
        let shapes: Vec<(&str, &[usize])> = inputs
            .iter()
            .map(|(name, s, _)| (*name, s.as_slice()))
            .collect();
        for threads in [1, 2] {
            let options = CompileOptions {
                threads,
                ..Default::default()
            };
            let mut step = TrainStep::compile(&t, &shapes, options).unwrap();
            let by_name: HashMap<&str, &[f32]> =
                inputs.iter().map(|(name, _, v)| (*name, *v)).collect();
            let ins: Vec<&[f32]> = step
                .input_names()
                .iter()
                .map(|n| by_name[n.as_str()])
                .collect();
            let pv: Vec<&[f32]> = ps.iter().map(|(_, _, v)| v.as_slice()).collect();
            step.run(&ins, &pv).unwrap();
            for (k, (name, _)) in t.graph.outputs.iter().enumerate() {
                let what = format!("{box_loss}: {name}, {threads} threads");
                assert_close(step.output(k), &want[name].data, 1e-5, &what);
            }
        }
    }
}
