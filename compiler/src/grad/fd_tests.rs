//! Finite-difference checks of every backward rule, in f64 on the
//! reference interpreter: for small models covering each op with a rule,
//! the parameter gradients the training graph computes equal central
//! differences of its own loss output. The loss is evaluated by the same
//! training graph (so training semantics — batch statistics, the dropout
//! mask — are the same on both sides), but the differences never use a
//! backward rule.

use super::training_graph;
use crate::interp::{self, Array};
use crate::ir::{Graph, ValueId};
use netc_runtime::counter::unit;
use netc_runtime::DType;
use std::collections::HashMap;

/// Every input symbol (the batch `N`) is bound to this.
const BATCH: usize = 3;

fn shape_of(g: &Graph, v: ValueId) -> Vec<usize> {
    g.ty(v)
        .shape
        .iter()
        .map(|d| d.eval(&|_| Some(BATCH as i64)).as_known().unwrap() as usize)
        .collect()
}

fn random(seed: u64, key: &str, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n)
        .map(|i| lo + (hi - lo) * unit(seed, key, i as u64))
        .collect()
}

/// Deterministic inputs: f32 in [-1, 1), i64 class indices below `classes`,
/// masks set with probability ½, and the step seed.
fn inputs(g: &Graph, classes: usize) -> Vec<(String, Array)> {
    g.inputs
        .iter()
        .map(|(name, v)| {
            let shape = shape_of(g, *v);
            let n: usize = shape.iter().product();
            let data = if name == super::SEED_INPUT {
                vec![f64::from(f32::from_bits(7)), 0.0]
            } else if g.ty(*v).dtype == DType::Bool {
                (0..n)
                    .map(|i| f64::from(u8::from(unit(13, name, i as u64) < 0.5)))
                    .collect()
            } else if g.ty(*v).dtype == DType::I64 {
                (0..n).map(|i| ((i * 7 + 1) % classes) as f64).collect()
            } else {
                random(11, name, n, -1.0, 1.0)
            };
            (name.clone(), Array::new(&shape, data))
        })
        .collect()
}

fn params(g: &Graph) -> HashMap<String, Array> {
    g.params
        .iter()
        .map(|p| {
            let shape: Vec<usize> = p.ty.known_dims().unwrap();
            let n = shape.iter().product();
            let (lo, hi) = if p.path.ends_with("running_var") {
                (0.5, 1.5)
            } else {
                (-1.0, 1.0)
            };
            (
                p.path.clone(),
                Array::new(&shape, random(3, &p.path, n, lo, hi)),
            )
        })
        .collect()
}

fn run(
    g: &Graph,
    inputs: &[(String, Array)],
    params: &HashMap<String, Array>,
) -> HashMap<String, Array> {
    let named: Vec<(&str, Array)> = inputs
        .iter()
        .map(|(n, a)| (n.as_str(), a.clone()))
        .collect();
    interp::run(g, &named, params)
        .unwrap_or_else(|e| panic!("interpreter: {e}"))
        .into_iter()
        .collect()
}

/// Checks the gradients of `src` (a program with model `m` and its `train`
/// section) against central differences at a few elements of every
/// trained parameter.
fn check(name: &str, src: &str, classes: usize) {
    check_with(name, src, |g| inputs(g, classes));
}

/// [`check`] with the inputs (and labels) `make` gives for the training
/// graph.
fn check_with(name: &str, src: &str, make: impl Fn(&Graph) -> Vec<(String, Array)>) {
    let g = crate::testing::program(src).unwrap_or_else(|e| panic!("{name}: {e}"));
    let t = training_graph(&g).unwrap_or_else(|e| panic!("{name}: {e}"));
    let inputs = make(&t.graph);
    let mut params = params(&t.graph);
    let outs = run(&t.graph, &inputs, &params);
    let h = 1e-5;
    let mut checked = 0;
    for &(pi, oi) in &t.grads {
        let path = t.graph.params[pi].path.clone();
        let grad = &outs[&t.graph.outputs[oi].0];
        let n = grad.data.len();
        for k in 0..n.min(5) {
            let i = (k * 7919) % n;
            let orig = params[&path].data[i];
            let mut loss_at = |x: f64| {
                params.get_mut(&path).unwrap().data[i] = x;
                run(&t.graph, &inputs, &params)["loss"].data[0]
            };
            let fd = (loss_at(orig + h) - loss_at(orig - h)) / (2.0 * h);
            params.get_mut(&path).unwrap().data[i] = orig;
            let got = grad.data[i];
            assert!(
                (got - fd).abs() <= 1e-6 * (1.0 + fd.abs()),
                "{name}: d loss / d {path}[{i}] = {got}, finite differences give {fd}"
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "{name}: no parameter was checked");
}

fn program(body: &str, loss: &str, labels: &str) -> String {
    format!(
        "model m {{\n{body}\n}}\ntrain m {{\n{labels}\nloss = {loss}\noptimizer = sgd(lr = 0.1)\n}}\n"
    )
}

/// `loss = sum(y * r)` with a random label `r`: a non-uniform upstream gradient.
fn weighted_sum(body: &str, y_shape: &str) -> String {
    program(body, "sum(y * r)", &format!("label r: f32{y_shape}"))
}

#[test]
fn linear_and_activations() {
    let acts = [
        "relu",
        "tanh",
        "sigmoid",
        "leaky_relu(0.1)",
        "silu",
        "gelu",
        "gelu(approximate = \"tanh\")",
        "square",
        "exp",
    ];
    for act in acts {
        let body =
            format!("input x: f32[N, 5]\n output y = x |> l1: linear(4) |> {act} |> l2: linear(3)");
        check(act, &weighted_sum(&body, "[N, 3]"), 3);
    }
    let body = "input x: f32[N, 2, 5]\n output y = x |> l1: linear(4) |> relu |> l2: linear(3, bias = false)";
    check("rank-3 linear", &weighted_sum(body, "[N, 2, 3]"), 3);
}

#[test]
fn arithmetic_with_broadcasting() {
    let body = "input x: f32[N, 4]\n param s: f32[4] = 0.5\n param b: f32[1] = 0.2\n\
                h = x |> l1: linear(4)\n\
                output y = (h * s - b) / (exp(h) + 2.0) + sqrt(square(h) + 1.0) + log(sigmoid(h)) - neg(h)";
    check("arithmetic", &weighted_sum(body, "[N, 4]"), 3);
}

#[test]
fn convolutions() {
    let cases = [
        ("conv2d s1 p1", "conv2d(4, k = 3, pad = 1)"),
        ("conv2d s2 p1", "conv2d(4, k = 3, stride = 2, pad = 1)"),
        (
            "conv2d dilated",
            "conv2d(4, k = 3, dilation = 2, pad = 2, bias = false)",
        ),
        ("conv2d grouped", "conv2d(4, k = 3, groups = 2)"),
        ("conv2d stem", "conv2d(4, k = 7, stride = 2, pad = 3)"),
    ];
    for (name, conv) in cases {
        let body = format!(
            "input x: f32[N, 2, 9, 7]\n output y = x |> c0: conv2d(4, k = 1) |> relu |> c1: {conv} |> relu |> global_avg_pool"
        );
        check(name, &weighted_sum(&body, "[N, 4]"), 3);
    }
    let body = "input x: f32[N, 3, 11]\n output y = x |> c0: conv1d(4, k = 3, pad = 1) |> tanh |> c1: conv1d(2, k = 3, stride = 2) |> flatten";
    check("conv1d", &weighted_sum(body, "[N, 10]"), 3);
}

/// The frozen batch norm of FCOS's pretrained-backbone setting (fixed
/// statistics and affine terms: the conv before it is what trains).
#[test]
fn frozen_batch_norm() {
    let body = "input x: f32[N, 2, 5, 4]\n output y = x |> c: conv2d(3, k = 3, pad = 1) |> f: frozen_batch_norm |> relu |> c2: conv2d(2, k = 1) |> flatten";
    check("frozen_batch_norm", &weighted_sum(body, "[N, 40]"), 3);
}

/// FCOS's training tail on 6 locations (a 2 x 3 level): focal loss over
/// the logits, decoded boxes and centerness masked by the foreground
/// label (a run-time count), an IoU loss of every kind and reduction and
/// a BCE over the kept centerness logits. The targets are boxes around
/// the anchors (`exp` of a label), so they are well formed, and soft
/// classes in (0, 1).
#[test]
fn detection_losses() {
    let body = "input x: f32[N, 6, 5]\n output cls = x |> lc: linear(3)\n \
                output reg = x |> lr: linear(4) |> exp\n output ctr = x |> lz: linear(1)";
    let cases = [
        ("giou sum", "iou_loss(p, b, kind = \"giou\")", "sum"),
        (
            "iou mean",
            "iou_loss(p, b, kind = \"iou\", reduction = \"mean\")",
            "mean",
        ),
        (
            "log_iou none",
            "sum(iou_loss(p, b, kind = \"log_iou\", reduction = \"none\") * 0.7)",
            "none",
        ),
    ];
    for (name, box_loss, focal_reduction) in cases {
        let focal = match focal_reduction {
            "none" => "sum(sigmoid_focal(cls, ct, reduction = \"none\"))".to_string(),
            r => format!("sigmoid_focal(cls, ct, gamma = 1.5, reduction = \"{r}\")"),
        };
        let src = format!(
            "model m {{\n{body}\n}}\ntrain m {{\n label cls_t: f32[N, 6, 3]\n label box_t: f32[N, 6, 4]\n \
             label fg: bool[N, 6]\n anchors = fcos_anchors([[2, 3]], strides = [8])\n \
             tb = decode_boxes(anchors, exp(box_t))\n ct = sigmoid(cls_t * 4.0)\n ctr_t = centerness(encode_boxes(anchors, tb))\n \
             p, b, z, zt = boolean_mask([decode_boxes(anchors, reg), tb, squeeze(ctr, 2), ctr_t], fg)\n \
             loss = {focal} + {box_loss} + bce_with_logits(z, zt, reduction = \"sum\")\n \
             optimizer = sgd(lr = 0.1)\n}}\n"
        );
        check(name, &src, 3);
    }
}

#[test]
fn batch_norm_in_training_mode() {
    let body = "input x: f32[N, 2, 5, 4]\n output y = x |> c: conv2d(3, k = 3, pad = 1) |> bn: batch_norm |> relu |> c2: conv2d(2, k = 1) |> flatten";
    check("batch_norm", &weighted_sum(body, "[N, 40]"), 3);
}

/// The per-sample norms of FCOS's heads and the UNet, with and without
/// their affine terms; a layer before each so its gradient flows through
/// the norm's `dx`.
#[test]
fn group_and_layer_norms() {
    let cases = [
        ("group_norm", "group_norm(2)", "[N, 40]"),
        ("group_norm one group", "group_norm(1)", "[N, 40]"),
        (
            "group_norm no affine",
            "group_norm(4, affine = false)",
            "[N, 40]",
        ),
    ];
    for (name, norm, y_shape) in cases {
        let body = format!(
            "input x: f32[N, 2, 5, 4]\n output y = x |> c: conv2d(4, k = 3, pad = 1) |> n: {norm} |> silu |> c2: conv2d(2, k = 1) |> flatten"
        );
        check(name, &weighted_sum(&body, y_shape), 3);
    }
    let cases = [
        ("layer_norm", "layer_norm"),
        ("layer_norm two dims", "layer_norm(shape = [3, 4])"),
        ("layer_norm no affine", "layer_norm(affine = false)"),
    ];
    for (name, norm) in cases {
        let body = format!(
            "input x: f32[N, 3, 5]\n output y = x |> l: linear(4) |> n: {norm} |> l2: linear(2)"
        );
        check(name, &weighted_sum(&body, "[N, 3, 2]"), 3);
    }
}

/// The sparse convs of the spconv encoder: submanifold and strided, with
/// and without bias, a dilated kernel and a strided conv reading a strided
/// conv's sites; 14 sites over two samples of a 3x4x5 grid (some lone, so
/// some kernel offsets find nothing). `tanh` between the layers keeps the
/// loss smooth; the features' gradient reaches `a` through three
/// transposed rule books. Then the same encoder under the per-sample
/// mean head with an MSE loss.
#[test]
fn sparse_convs() {
    let body = "input f: f32[M, 3]\n input c: i32[M, 4]\n \
                s = sparse_tensor(f, c, shape = [3, 4, 5], batch = 2)\n \
                s = s |> a: subm_conv3d(4, bias = true) |> sparse_relu\n \
                s = with_features(s, s.features |> tanh) |> b: subm_conv3d(3, dilation = 2)\n \
                s = with_features(s, s.features |> tanh) |> d: sparse_conv3d(4, stride = 2, bias = true)\n \
                s = with_features(s, s.features |> tanh) |> e: sparse_conv3d(2, k = 2, stride = 1, pad = 0)\n \
                output y = s.features";
    let pooled = body.replace(
        "output y = s.features",
        "output y = sparse_global_avg_pool(s)",
    );
    for (name, src) in [
        (
            "sparse convs",
            program(body, "sum(square(y) * r)", "label r: f32[2]"),
        ),
        (
            "pooled head",
            program(&pooled, "mse(y, t)", "label t: f32[2, 2]"),
        ),
    ] {
        check_with(name, &src, sparse_inputs);
    }
}

/// 14 sites over two samples of a 3x4x5 grid, their features, and the
/// labels of [`sparse_convs`].
fn sparse_inputs(g: &Graph) -> Vec<(String, Array)> {
    let cells: Vec<i64> = (0..14).map(|i| (i * 37 + 5) % 120).collect();
    let coords = cells
        .iter()
        .flat_map(|c| [c / 60, c / 20 % 3, c / 5 % 4, c % 5])
        .map(|v| v as f64)
        .collect();
    vec![
        (
            "f".into(),
            Array::new(&[14, 3], random(11, "f", 42, -1.0, 1.0)),
        ),
        ("c".into(), Array::new(&[14, 4], coords)),
        ("r".into(), Array::new(&[2], vec![0.7, -1.3])),
        ("t".into(), Array::new(&[2, 2], vec![0.7, -1.3, 0.2, 0.4])),
    ]
    .into_iter()
    .filter(|(n, _)| g.inputs.iter().any(|(m, _)| m == n))
    .collect()
}

/// Multi-head attention as the UNet's transformer blocks use it: self-
/// attention with 2 heads, and cross-attention to a context of another
/// length.
#[test]
fn attention() {
    let body = "input x: f32[N, 5, 8]\n input ctx: f32[N, 3, 6]\n \
                q = x |> wq: linear(8)\n k = x |> wk: linear(8)\n v = x |> wv: linear(8)\n \
                h = attention(q, k, v, heads = 2) |> o: linear(8)\n \
                k2 = ctx |> ck: linear(8)\n v2 = ctx |> cv: linear(4)\n \
                output y = attention(h |> cq: linear(8), k2, v2, heads = 2)";
    check("attention", &weighted_sum(body, "[N, 5, 4]"), 3);
}

/// The FPN's and the UNet's nearest upsampling, by a factor and to a
/// size that is not a multiple of the input's.
#[test]
fn nearest_resizing() {
    for (name, resize) in [
        ("upsample_nearest", "upsample_nearest(scale = 2)"),
        ("resize_nearest", "resize_nearest(size = [7, 5])"),
    ] {
        let body = format!(
            "input x: f32[N, 2, 3, 4]\n output y = x |> c: conv2d(3, k = 3, pad = 1) |> {resize} |> c2: conv2d(2, k = 3) |> global_avg_pool"
        );
        check(name, &weighted_sum(&body, "[N, 2]"), 3);
    }
}

#[test]
fn pools() {
    let cases = [
        (
            "max_pool2d k3 s2 p1",
            "max_pool2d(3, stride = 2, pad = 1)",
            "[N, 3, 5, 4]",
        ),
        (
            "max_pool2d ceil",
            "max_pool2d(2, stride = 2, ceil_mode = true)",
            "[N, 3, 5, 4]",
        ),
        ("avg_pool2d", "avg_pool2d(2, stride = 2)", "[N, 3, 4, 3]"),
        (
            "avg_pool2d padded",
            "avg_pool2d(3, stride = 2, pad = 1, count_include_pad = false, ceil_mode = true)",
            "[N, 3, 5, 4]",
        ),
        (
            "adaptive_avg_pool2d",
            "adaptive_avg_pool2d([3, 2])",
            "[N, 3, 3, 2]",
        ),
    ];
    for (name, pool, shape) in cases {
        let body =
            format!("input x: f32[N, 2, 9, 7]\n output y = x |> c: conv2d(3, k = 1) |> {pool}");
        check(name, &weighted_sum(&body, shape), 3);
    }
}

#[test]
fn data_movement() {
    let body = "input x: f32[N, 2, 3, 3]\n a = x |> c1: conv2d(2, k = 1)\n b = x |> c2: conv2d(3, k = 1)\n\
                u, v = split(concat([a, b, a], dim = 1), [4, 3], dim = 1)\n\
                output y = concat([u |> permute([0, 2, 3, 1]) |> flatten, v |> flatten], dim = 1)";
    check("concat/split/permute", &weighted_sum(body, "[N, 63]"), 3);
}

#[test]
fn dropout_is_differentiated_with_its_mask() {
    let body =
        "input x: f32[N, 6]\n output y = x |> l1: linear(8) |> dropout(0.4) |> l2: linear(3)";
    check("dropout", &weighted_sum(body, "[N, 3]"), 3);
}

#[test]
fn losses() {
    let mlp = "input x: f32[N, 5]\n output y = x |> l1: linear(4) |> tanh |> l2: linear(3)";
    let cases = [
        (
            "cross_entropy",
            "cross_entropy(y, t, label_smoothing = 0.1)",
            "label t: i64[N]",
        ),
        (
            "cross_entropy sum",
            "cross_entropy(y, t, reduction = \"sum\")",
            "label t: i64[N]",
        ),
        (
            "multi_margin",
            "multi_margin(y, t, margin = 1.0)",
            "label t: i64[N]",
        ),
        (
            "multi_margin p2",
            "multi_margin(y, t, p = 2, margin = 0.5)",
            "label t: i64[N]",
        ),
        (
            "bce_with_logits",
            "bce_with_logits(y, t)",
            "label t: f32[N, 3]",
        ),
        ("mse", "mse(y, t)", "label t: f32[N, 3]"),
        (
            "weighted sum of losses",
            "0.7 * mse(y, t) + 0.3 * cross_entropy(y, c)",
            "label t: f32[N, 3]\nlabel c: i64[N]",
        ),
    ];
    for (name, loss, labels) in cases {
        check(name, &program(mlp, loss, labels), 3);
    }
}

#[test]
fn recomputed_blocks_give_the_same_gradients() {
    let src = |recompute: &str| {
        format!(
            "block bottleneck(x) {{\n return x |> n: batch_norm |> relu |> c: conv2d(3, k = 1) }}\n\
             model m {{\n input x: f32[N, 2, 4, 4]\n h = bottleneck(x)\n output y = concat([x, h], dim = 1) |> b2: bottleneck |> flatten\n}}\n\
             train m {{\n label r: f32[N, 48]\n loss = sum(y * r)\n optimizer = sgd(lr = 0.1)\n {recompute}\n}}\n"
        )
    };
    check("recompute", &src("recompute = [bottleneck]"), 3);
    let plain = training_graph(&crate::testing::program(&src("")).unwrap()).unwrap();
    let re = training_graph(&crate::testing::program(&src("recompute = [bottleneck]")).unwrap())
        .unwrap();
    assert!(
        re.graph.nodes.len() > plain.graph.nodes.len(),
        "the blocks are replayed"
    );
    let (a, b) = (
        run(
            &plain.graph,
            &inputs(&plain.graph, 3),
            &params(&plain.graph),
        ),
        run(&re.graph, &inputs(&re.graph, 3), &params(&re.graph)),
    );
    for (pi, oi) in &plain.grads {
        let name = &plain.graph.outputs[*oi].0;
        assert_eq!(
            a[name].data, b[name].data,
            "{} differs",
            plain.graph.params[*pi].path
        );
    }
}
