//! Tests of the optimisation passes: golden snapshots of the printed IR
//! before and after each pass on small programs, the reference interpreter
//! giving the same outputs before and after every pass (random weights,
//! batch-norm statistics included), the pass switches, and what the passes
//! do to DenseNet-121 and VGGish.

use super::pipeline::{optimize, optimize_with_report, PASS_NAMES};
use crate::interp::{self, Array};
use crate::ir::{print_graph, Attr, Graph};
use crate::options::{CompileOptions, LayoutChoice};
use crate::testing::program;
use std::collections::HashMap;

/// Deterministic values in [-1, 1) (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    fn array(&mut self, shape: &[usize]) -> Array {
        let n = shape.iter().product();
        Array::new(shape, (0..n).map(|_| self.next()).collect())
    }
}

/// Random parameters for every path of `g` (variances in [0.5, 1.5)).
fn random_params(g: &Graph, seed: u64) -> HashMap<String, Array> {
    let mut rng = Rng(seed);
    g.params
        .iter()
        .map(|p| {
            let shape: Vec<usize> = p.ty.known_dims().unwrap();
            let mut a = rng.array(&shape);
            if p.path.ends_with("running_var") {
                a.data.iter_mut().for_each(|v| *v = 1.0 + *v / 2.0);
            }
            if p.path.ends_with("num_batches_tracked") {
                a.data.iter_mut().for_each(|v| *v = 0.0);
            }
            (p.path.clone(), a)
        })
        .collect()
}

/// Random inputs of `g` with every symbol (the batch) equal to 2.
fn random_inputs(g: &Graph, seed: u64) -> Vec<(String, Array)> {
    let mut rng = Rng(seed);
    g.inputs
        .iter()
        .map(|(name, v)| {
            let shape: Vec<usize> = g
                .ty(*v)
                .shape
                .iter()
                .map(|d| d.eval(&|_| Some(2)).as_known().unwrap() as usize)
                .collect();
            (name.clone(), rng.array(&shape))
        })
        .collect()
}

fn run(g: &Graph, inputs: &[(String, Array)], params: &HashMap<String, Array>) -> Vec<Array> {
    let named: Vec<(&str, Array)> = inputs
        .iter()
        .map(|(n, a)| (n.as_str(), a.clone()))
        .collect();
    interp::run(g, &named, params)
        .unwrap_or_else(|e| panic!("{e}\n{}", print_graph(g)))
        .into_iter()
        .map(|(_, a)| a)
        .collect()
}

fn assert_close(got: &[Array], want: &[Array], what: &str) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.shape, w.shape, "{what}");
        for (a, b) in g.data.iter().zip(&w.data) {
            assert!(
                (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                "{what}: {a} vs {b}"
            );
        }
    }
}

/// The printed IR before the passes, then after each one (without the
/// declarations of inputs and parameters, which passes do not change).
fn stages(g: &Graph) -> String {
    let mut text = format!("== before\n{}", print_graph(g));
    for pass in PASS_NAMES {
        let after = optimize(g.clone(), &CompileOptions::default(), Some(pass)).unwrap();
        text += &format!("== after {pass}\n");
        for line in print_graph(&after).lines() {
            let declaration = ["model ", "  symbol ", "  input ", "  param ", "  buffer "]
                .iter()
                .any(|p| line.starts_with(p));
            if !declaration {
                text += line;
                text.push('\n');
            }
        }
    }
    text
}

/// The interpreter gives the same outputs before the passes and after
/// each one, with random weights and statistics.
fn check_numerics(g: &Graph) {
    let params = random_params(g, 7);
    let inputs = random_inputs(g, 11);
    let want = run(g, &inputs, &params);
    for pass in PASS_NAMES {
        let after = optimize(g.clone(), &CompileOptions::default(), Some(pass)).unwrap();
        assert_close(&run(&after, &inputs, &params), &want, pass);
    }
}

const CONV_BN_RELU: &str = "model m() {
    input x: f32[N, 3, 8, 8]
    output y = x |> c1: conv2d(16, k = 3, pad = 1) |> bn1: batch_norm |> relu
                 |> c2: conv2d(16, k = 3, pad = 1, bias = false) |> bn2: batch_norm |> relu
}";

const DENSE_LAYER: &str = "model m() {
    input x: f32[N, 16, 6, 6]
    a = x |> norm1: batch_norm |> relu |> conv1: conv2d(32, k = 1, bias = false)
          |> norm2: batch_norm |> relu |> conv2: conv2d(8, k = 3, pad = 1, bias = false)
    h = concat([x, a], dim = 1)
    output y = h |> norm5: batch_norm |> relu |> adaptive_avg_pool2d(1) |> flatten
                 |> classifier: linear(10)
}";

const VGG_CHAIN: &str = "model m() {
    input e: f32[N, 12, 8]
    h = e |> unsqueeze(1) |> c0: conv2d(16, k = 3, pad = 1) |> relu |> max_pool2d(k = 2, stride = 2)
          |> c1: conv2d(32, k = 3, pad = 1) |> relu |> max_pool2d(k = 2, stride = 2)
    output y = h |> permute([0, 2, 3, 1]) |> flatten |> fc: linear(8) |> relu
}";

const ELEMENTWISE: &str = "model m() {
    input x: f32[N, 4, 5]
    input u: f32[N, 5]
    param b: f32[4, 1] = 0.0
    param s: f32[5] = 1.0
    h = (x * 2.0 + b) |> relu
    z = (h * s - 1.0) |> tanh
    output y = z + x
    output w = abs(-h)
    l = u |> fc: linear(5)
    output r = relu(l + u) * 0.5
}";

#[test]
fn conv_bn_relu_stages() {
    let g = program(CONV_BN_RELU).unwrap();
    insta::assert_snapshot!("conv_bn_relu", stages(&g));
    check_numerics(&g);
}

#[test]
fn dense_layer_stages() {
    let g = program(DENSE_LAYER).unwrap();
    insta::assert_snapshot!("dense_layer", stages(&g));
    check_numerics(&g);
}

#[test]
fn vgg_chain_stages() {
    let g = program(VGG_CHAIN).unwrap();
    insta::assert_snapshot!("vgg_chain", stages(&g));
    check_numerics(&g);
}

#[test]
fn elementwise_stages() {
    let g = program(ELEMENTWISE).unwrap();
    insta::assert_snapshot!("elementwise", stages(&g));
    check_numerics(&g);
}

/// Batch norms without affine terms and frozen ones fold too; a
/// convolution whose result is also read elsewhere, or is an output, does
/// not.
#[test]
fn fold_variants_and_refusals() {
    let g = program(
        "model m() {
            input x: f32[N, 4, 5, 5]
            a = x |> ca: conv2d(6, k = 3) |> na: batch_norm(affine = false, eps = 1e-3)
            b = x |> cb: conv2d(6, k = 3, bias = false) |> nb: frozen_batch_norm
            c = x |> cc: conv2d(6, k = 3)
            output y = a + b + (c |> nc: batch_norm) + c
            output p = x |> cd: conv2d(6, k = 3)
            output q = p |> nq: batch_norm
        }",
    )
    .unwrap();
    let options = CompileOptions {
        layout: LayoutChoice::Nchw,
        ..Default::default()
    };
    let (after, report) = optimize_with_report(g.clone(), &options, Some("fold_bn")).unwrap();
    assert_eq!(report.folded, 2, "{}", print_graph(&after));
    let norms = after
        .nodes
        .iter()
        .filter(|n| n.op.name.contains("batch_norm"))
        .count();
    assert_eq!(norms, 2);
    let params = random_params(&g, 3);
    let inputs = random_inputs(&g, 5);
    assert_close(
        &run(&after, &inputs, &params),
        &run(&g, &inputs, &params),
        "fold",
    );
}

#[test]
fn switches_and_stops() {
    let g = program(CONV_BN_RELU).unwrap();
    let off = CompileOptions {
        fuse: false,
        layout: LayoutChoice::Nchw,
        ..Default::default()
    };
    let same = optimize(g.clone(), &off, None).unwrap();
    assert_eq!(
        print_graph(&same),
        print_graph(&g),
        "every pass switched off"
    );
    let no_fuse = CompileOptions {
        fuse: false,
        ..Default::default()
    };
    let (laid, report) = optimize_with_report(g.clone(), &no_fuse, None).unwrap();
    assert_eq!(report.folded, 0);
    assert_eq!(report.fuse.fused, 0);
    assert!(laid.nodes.iter().all(|n| n.fused_into.is_none()));
    assert!(report.layout.nhwc_nodes > 0);
    let nchw = CompileOptions {
        layout: LayoutChoice::Nchw,
        ..Default::default()
    };
    let (fused, report) = optimize_with_report(g.clone(), &nchw, None).unwrap();
    assert_eq!(report.layout.nhwc_nodes, 0);
    assert!(fused.nodes.iter().all(|n| n.op.attr("layout").is_none()));
    assert_eq!((report.folded, report.fuse.fused), (2, 2));
    let no_fold = CompileOptions {
        fold_bn: false,
        ..nchw
    };
    let (kept, report) = optimize_with_report(g.clone(), &no_fold, None).unwrap();
    assert_eq!(report.folded, 0);
    assert!(report.fuse.fused > 0, "fusion still runs without folding");
    assert!(kept.nodes.iter().any(|n| n.op.name == "batch_norm"));
    let full = optimize(g.clone(), &CompileOptions::default(), Some("fuse")).unwrap();
    assert_eq!(
        print_graph(&full),
        print_graph(&optimize(g.clone(), &CompileOptions::default(), None).unwrap())
    );
    let err = optimize(g, &CompileOptions::default(), Some("inline"))
        .err()
        .unwrap();
    assert_eq!(
        err,
        "unknown pass `inline`; the passes are: fold_bn, pool_first, layout, fuse"
    );
}

/// Unpadded average pools (ceil mode included) move in front of the 1×1
/// convolutions they read, with or without a bias, and the outputs stay
/// the same; a padded pool, a 3×3 convolution, a max pool, a convolution
/// read twice, and the switch off leave the graph as it was.
#[test]
fn pools_move_in_front_of_pointwise_convolutions() {
    let g = program(
        "model m() {
            input x: f32[N, 6, 8, 8]
            t = x |> n: batch_norm |> relu |> tc: conv2d(4, k = 1) |> avg_pool2d(2, stride = 2)
            e = x |> ec: conv2d(4, k = 1, bias = false) |> avg_pool2d(3, stride = 2, ceil_mode = true)
            u = x |> uc: conv2d(4, k = 1) |> avg_pool2d(3, stride = 2, pad = 1)
            v = x |> vc: conv2d(4, k = 3, pad = 1) |> avg_pool2d(2, stride = 2)
            w = x |> wc: conv2d(4, k = 1) |> max_pool2d(2, stride = 2)
            c = x |> cc: conv2d(4, k = 1)
            output y = concat([t, e, u, v, w], dim = 1)
            output z = c |> avg_pool2d(2, stride = 2)
            output c = c
        }",
    )
    .unwrap();
    let nchw = CompileOptions {
        layout: LayoutChoice::Nchw,
        ..Default::default()
    };
    let (after, report) = optimize_with_report(g.clone(), &nchw, Some("pool_first")).unwrap();
    assert_eq!(report.pools_moved, 2, "{}", print_graph(&after));
    let reads_a_pool = |path: &str| {
        let conv = after.nodes.iter().find(|n| n.path == path).unwrap();
        after
            .nodes
            .iter()
            .any(|n| n.op.name == "avg_pool2d" && n.outputs[0] == conv.inputs[0])
    };
    assert!(reads_a_pool("tc") && reads_a_pool("ec"));
    assert!(!["uc", "vc", "wc", "cc"].iter().any(|p| reads_a_pool(p)));
    let params = random_params(&g, 3);
    let inputs = random_inputs(&g, 5);
    assert_close(
        &run(&after, &inputs, &params),
        &run(&g, &inputs, &params),
        "pool first",
    );
    let off = CompileOptions {
        pool_first: false,
        ..nchw
    };
    let (kept, report) = optimize_with_report(g.clone(), &off, Some("pool_first")).unwrap();
    assert_eq!(report.pools_moved, 0);
    assert_eq!(print_graph(&kept), print_graph(&g));
}

/// A follower whose other operand is computed after the head is not fused
/// into it (the group runs at the head's position); it joins the later
/// head instead.
#[test]
fn followers_never_read_values_computed_after_their_head() {
    let g = program(
        "model m() {
            input x: f32[N, 8]
            a = x |> fa: linear(8)
            b = x |> fb: linear(8)
            output y = relu(a + b)
        }",
    )
    .unwrap();
    let after = optimize(g, &CompileOptions::default(), None).unwrap();
    let fb = after.nodes.iter().find(|n| n.path == "fb").unwrap();
    let add = after.nodes.iter().find(|n| n.op.name == "add").unwrap();
    assert_eq!(add.fused_into, Some(fb.outputs[0]));
    let relu = after.nodes.iter().find(|n| n.op.name == "relu").unwrap();
    assert_eq!(relu.fused_into, Some(fb.outputs[0]));
}

fn model(file: &str, name: &str) -> Graph {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models")
        .join(file);
    let (prog, diags) = crate::program::Program::load(&path);
    assert!(diags.is_empty());
    crate::elab::elaborate(&prog, prog.model(Some(name)).unwrap(), &[]).unwrap()
}

/// Inference nodes, and those that run per call as steps of their own
/// (neither parameter-only nor fused into another node).
fn inference_nodes(g: &Graph) -> (usize, usize) {
    let derived = super::rewrite::param_derived(g);
    let nodes: Vec<_> = g.nodes.iter().filter(|n| !n.train_only).collect();
    let steps = nodes
        .iter()
        .filter(|n| n.fused_into.is_none() && !n.outputs.iter().all(|v| derived.contains(v)))
        .count();
    (nodes.len(), steps)
}

/// DenseNet-121: conv0→norm0 and every dense layer's conv1→norm2 fold
/// (1 + 58), the whole network runs NHWC from the first convolution to the
/// global pool, and every norm→relu and conv epilogue fuses.
#[test]
fn densenet121_passes() {
    let g = model("densenet.net", "densenet121");
    let (after, r) = optimize_with_report(g.clone(), &CompileOptions::default(), None).unwrap();
    assert_eq!(r.folded, 59);
    assert_eq!(r.layout.nhwc_chains, 1);
    let transforms = |op: &str| {
        after
            .nodes
            .iter()
            .filter(|n| n.op.name == op && n.path.contains("conv") && !n.train_only)
            .count()
    };
    // 120 conv weights: 59 with 3x3 or 7x7 kernels are permuted, for the
    // 61 1x1 ones a reshape does; plus the image in and the last map out.
    assert_eq!(transforms("permute"), 59 + 1, "{}", print_graph(&after));
    assert_eq!(transforms("reshape"), 61);
    let exit = after
        .nodes
        .iter()
        .filter(|n| n.op.name == "permute" && !n.path.contains("conv"));
    assert_eq!(exit.count(), 1);
    assert!(after
        .nodes
        .iter()
        .filter(|n| n.op.name == "conv2d")
        .all(|n| n.op.attr("layout") == Some(&Attr::Str("nhwc".into()))));
    // Every dense layer's bottleneck convolution (58) takes its concat →
    // norm → relu as a prologue; the transitions' (whose pool now comes
    // first) and the last block's concat → norm5 → relu, read by pools,
    // stay concat groups.
    let prologues = |g: &Graph| {
        let convs: std::collections::HashSet<_> = g
            .nodes
            .iter()
            .filter(|n| n.op.name == "conv2d")
            .map(|n| n.outputs[0])
            .collect();
        let concats = g.nodes.iter().filter(|n| n.op.name == "concat");
        concats
            .filter(|n| n.fused_into.is_some_and(|h| convs.contains(&h)))
            .count()
    };
    assert_eq!(prologues(&after), 58);
    let stored = CompileOptions {
        norm_prologue: false,
        ..CompileOptions::default()
    };
    assert_eq!(prologues(&optimize(g.clone(), &stored, None).unwrap()), 0);
    eprintln!(
        "densenet121: (nodes, run-time nodes) {:?} -> {:?}; {r:?}",
        inference_nodes(&g),
        inference_nodes(&after)
    );
}

/// A convolution's prologue (concat → norm → relu fused into the 1×1
/// convolution after them) is never stored, and the concatenated maps
/// stay live until the convolution runs, even where the concat was their
/// last reader; a 3×3 convolution takes no prologue.
#[test]
fn prologue_inputs_live_until_their_convolution() {
    let src = |k: usize| {
        format!(
            "model m() {{ input x: f32[N, 16, 6, 5]
                         a = x |> c0: conv2d(24, k = 3, pad = 1) |> relu
                         output y = concat([x, a], dim = 1) |> bn: batch_norm |> relu
                                    |> c1: conv2d(40, k = {k}, pad = {}, bias = false) }}",
            k / 2
        )
    };
    let after = optimize(program(&src(1)).unwrap(), &CompileOptions::default(), None).unwrap();
    let position =
        |pred: &dyn Fn(&crate::ir::Node) -> bool| after.nodes.iter().position(pred).unwrap();
    let concat = position(&|n| n.op.name == "concat");
    let conv = position(&|n| n.path == "c1" && n.op.name == "conv2d");
    assert_eq!(
        after.nodes[concat].fused_into,
        Some(after.nodes[conv].outputs[0])
    );
    let nodes: Vec<_> = after.nodes.iter().collect();
    let skip = crate::back::lower::pointwise::unstored_links(&nodes);
    let a = after.nodes[concat].inputs[1];
    let plan = super::memplan::plan_skipping(&after, &[("N".into(), 2)], &skip, true);
    let live = plan.placements.iter().find(|p| p.value == a).unwrap();
    assert!(
        live.last >= conv,
        "the concat input dies at {} before the conv at {conv}",
        live.last
    );
    let mut prologue_values = after.nodes[concat..conv]
        .iter()
        .filter(|n| n.fused_into.is_some())
        .flat_map(|n| n.outputs.iter());
    assert!(prologue_values.all(|v| plan.placements.iter().all(|p| p.value != *v)));
    let three = optimize(program(&src(3)).unwrap(), &CompileOptions::default(), None).unwrap();
    let concat = three.nodes.iter().find(|n| n.op.name == "concat").unwrap();
    let conv = three
        .nodes
        .iter()
        .find(|n| n.path == "c1" && n.op.name == "conv2d")
        .unwrap();
    assert_ne!(concat.fused_into, Some(conv.outputs[0]));
}

/// VGGish: the conv stack runs NHWC and its channels-last flatten permute
/// cancels against the chain's exit transform.
#[test]
fn vggish_passes() {
    let g = model("vggish.net", "vggish");
    let (after, r) = optimize_with_report(g.clone(), &CompileOptions::default(), None).unwrap();
    assert_eq!(r.folded, 0);
    assert_eq!(r.layout.nhwc_chains, 1);
    assert_eq!(r.layout.cancelled, 2);
    let activation_permutes = after
        .nodes
        .iter()
        .filter(|n| n.op.name == "permute" && !g.params.iter().any(|p| p.value == n.inputs[0]))
        .count();
    assert_eq!(activation_permutes, 0, "{}", print_graph(&after));
    eprintln!(
        "vggish: (nodes, run-time nodes) {:?} -> {:?}; {r:?}",
        inference_nodes(&g),
        inference_nodes(&after)
    );
}

/// eeg_ccnn: no batch norm to fold; its convolutions decide its layout by
/// the channel rule.
#[test]
fn eeg_ccnn_passes() {
    let g = model("eeg_ccnn.net", "eeg_ccnn");
    let (after, r) = optimize_with_report(g.clone(), &CompileOptions::default(), None).unwrap();
    assert_eq!(r.folded, 0);
    eprintln!(
        "eeg_ccnn: (nodes, run-time nodes) {:?} -> {:?}; {r:?}",
        inference_nodes(&g),
        inference_nodes(&after)
    );
    let params = random_params(&g, 7);
    let inputs = random_inputs(&g, 11);
    assert_close(
        &run(&after, &inputs, &params),
        &run(&g, &inputs, &params),
        "eeg_ccnn",
    );
}

/// Compiles `g` with `options`, loads `params` (f32) through a weight file
/// and runs it on `inputs`; also returns how many nodes the compiled graph
/// has fused into others.
fn compiled_outputs(
    g: &Graph,
    options: CompileOptions,
    inputs: &[(String, Array)],
    params: &HashMap<String, Array>,
    tag: &str,
) -> (Vec<Array>, usize) {
    use netc_runtime::{Storage, Tensor};
    let tensor = |p: &crate::ir::Param, a: &Array| match p.ty.dtype {
        netc_runtime::DType::I64 => Tensor::new(
            &a.shape,
            Storage::I64(a.data.iter().map(|&v| v as i64).collect()),
        )
        .unwrap(),
        _ => Tensor::from_f32(&a.shape, a.data.iter().map(|&v| v as f32).collect()).unwrap(),
    };
    let weights: Vec<(String, Tensor)> = g
        .params
        .iter()
        .map(|p| (p.path.clone(), tensor(p, &params[&p.path])))
        .collect();
    let refs: Vec<(&str, &Tensor)> = weights.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let file = std::env::temp_dir().join(format!(
        "netc-passes-{tag}-{}.safetensors",
        std::process::id()
    ));
    netc_runtime::weights::write_safetensors_atomic(&file, &refs, None).unwrap();
    let shapes: Vec<(String, Vec<usize>)> = inputs
        .iter()
        .map(|(n, a)| (n.clone(), a.shape.clone()))
        .collect();
    let shape_refs: Vec<(&str, &[usize])> = shapes
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_slice()))
        .collect();
    let mut m = crate::session::CompiledModel::new(g.clone(), &shape_refs, options).unwrap();
    m.load_weights(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    let xs: Vec<(String, Tensor)> = inputs
        .iter()
        .map(|(n, a)| {
            let data = a.data.iter().map(|&v| v as f32).collect();
            (n.clone(), Tensor::from_f32(&a.shape, data).unwrap())
        })
        .collect();
    let x_refs: Vec<(&str, &Tensor)> = xs.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let outputs = m
        .run(&x_refs)
        .unwrap()
        .into_iter()
        .map(|(_, t)| {
            let data = t.as_f32().unwrap().iter().map(|&v| f64::from(v)).collect();
            Array::new(t.shape(), data)
        })
        .collect();
    let fused = m
        .graph()
        .nodes
        .iter()
        .filter(|n| n.fused_into.is_some())
        .count();
    (outputs, fused)
}

/// f32 results against the f64 reference (relative L2 error per output).
fn assert_f32_close(got: &[Array], want: &[Array], what: &str) {
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.shape, w.shape, "{what}");
        let err: f64 = g
            .data
            .iter()
            .zip(&w.data)
            .map(|(a, b)| (a - b).powi(2))
            .sum();
        let norm: f64 = w.data.iter().map(|b| b * b).sum();
        assert!(
            err.sqrt() <= 1e-5 * norm.sqrt().max(1e-12),
            "{what}: relative L2 error {}",
            err.sqrt() / norm.sqrt()
        );
    }
}

/// Values exactly representable in f32, so that the compiled model and the
/// f64 reference see the same weights and inputs.
fn f32_exact(mut a: Array) -> Array {
    a.data.iter_mut().for_each(|v| *v = f64::from(*v as f32));
    a
}

/// The compiled model gives the reference results with fusion on and off:
/// convolution epilogues (bias, relu, residual add), an elementwise chain
/// and linear epilogues.
#[test]
fn compiled_model_runs_the_same_with_and_without_fusion() {
    let g = program(
        "model m() {
            input x: f32[N, 4, 6, 6]
            h = x |> c1: conv2d(8, k = 3, pad = 1) |> relu
            r = (h |> c2: conv2d(8, k = 3, pad = 1)) + h |> relu
            output y = (r * 0.5 - 0.25) |> tanh |> flatten |> fc: linear(5) |> relu
        }",
    )
    .unwrap();
    let params: HashMap<String, Array> = random_params(&g, 21)
        .into_iter()
        .map(|(k, a)| (k, f32_exact(a)))
        .collect();
    let inputs: Vec<(String, Array)> = random_inputs(&g, 23)
        .into_iter()
        .map(|(k, a)| (k, f32_exact(a)))
        .collect();
    let want = run(&g, &inputs, &params);
    for fuse in [true, false] {
        let options = CompileOptions {
            fuse,
            layout: LayoutChoice::Nchw,
            threads: 2,
            ..Default::default()
        };
        let (got, fused) = compiled_outputs(&g, options, &inputs, &params, "fusion");
        assert_f32_close(&got, &want, &format!("fuse = {fuse}"));
        // relu into c1; add, relu, mul, sub and tanh into c2's epilogue;
        // relu into fc.
        assert_eq!(fused, if fuse { 7 } else { 0 });
    }
}

/// conv → batch norm → relu compiled with batch norm folded into the
/// convolution (the folded weights computed by the prepare steps) gives
/// the reference results of the unfolded graph, random statistics included.
#[test]
fn compiled_model_with_folded_batch_norm_matches_the_reference() {
    let g = program(
        "model m() {
            input x: f32[N, 3, 7, 7]
            output y = x |> c1: conv2d(8, k = 3, pad = 1) |> bn1: batch_norm |> relu
                         |> c2: conv2d(8, k = 1, bias = false) |> bn2: batch_norm |> relu
        }",
    )
    .unwrap();
    let params: HashMap<String, Array> = random_params(&g, 31)
        .into_iter()
        .map(|(k, a)| (k, f32_exact(a)))
        .collect();
    let inputs: Vec<(String, Array)> = random_inputs(&g, 33)
        .into_iter()
        .map(|(k, a)| (k, f32_exact(a)))
        .collect();
    let want = run(&g, &inputs, &params);
    let options = CompileOptions {
        layout: LayoutChoice::Nchw,
        ..Default::default()
    };
    let (got, fused) = compiled_outputs(&g, options, &inputs, &params, "fold");
    assert_f32_close(&got, &want, "folded");
    assert_eq!(fused, 2, "each relu runs in its convolution's epilogue");
}

#[test]
fn training_chains_go_channels_last_and_keep_loss_and_gradients() {
    // tests/fixtures/conv_chain.net: conv1 NCHW, conv2 and conv3 channels
    // last at batch 40.
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/conv_chain.net");
    let (prog, diags) = crate::program::Program::load(&path);
    assert!(diags.is_empty());
    let g = crate::elab::elaborate(&prog, prog.model(Some("chain")).unwrap(), &[]).unwrap();
    let tg = crate::grad::training_graph(&g).unwrap();
    let mut after = tg.graph.clone();
    let bound: HashMap<_, _> = (0..after.symbols.len())
        .map(|s| (crate::ir::SymId(s as u32), 40))
        .collect();
    let stats = crate::train::step::training_layout(&mut after, &bound, &CompileOptions::default());
    super::rewrite::verify(&after).unwrap();
    if netc_runtime::gemm::kernel_avx512::available() {
        let last = |n: &crate::ir::Node| matches!(n.op.attr("act_layout"), Some(Attr::Str(s)) if s == "nhwc");
        for n in after
            .nodes
            .iter()
            .filter(|n| n.op.name.starts_with("conv2d"))
        {
            let want = n.path != "conv1";
            assert_eq!(last(n), want, "{} at {}", n.op.name, n.path);
        }
        for n in after
            .nodes
            .iter()
            .filter(|n| n.op.name == "sum" && n.path != "out")
        {
            let dims = n.op.attr("dims");
            assert_eq!(dims, Some(&Attr::Ints(vec![0, 1, 2])), "sum at {}", n.path);
        }
        // In: conv1's output and the flatten's gradient; out: the flatten's
        // input and conv1's gradient.
        let permutes = after.nodes.iter().filter(|n| n.op.name == "permute");
        assert_eq!(permutes.count(), 4, "{}", print_graph(&after));
        assert_eq!(stats.nhwc_chains, 1);
    }
    // The semantics do not depend on the batch the pass decided for.
    let mut rng = Rng(5);
    let inputs = vec![
        ("x".to_string(), rng.array(&[2, 4, 9, 9])),
        ("y".to_string(), Array::new(&[2], vec![1.0, 0.0])),
        (
            crate::grad::SEED_INPUT.to_string(),
            Array::new(&[2], vec![f64::from(f32::from_bits(7)), 0.0]),
        ),
    ];
    let params = random_params(&g, 6);
    assert_close(
        &run(&after, &inputs, &params),
        &run(&tg.graph, &inputs, &params),
        "training layout",
    );
}
