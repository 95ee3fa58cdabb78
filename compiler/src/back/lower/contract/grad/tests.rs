//! The lowered contraction gradients (f32, through the plan executor)
//! against the f64 reference interpreter (itself checked against finite
//! differences of the forward ops): convolutions with stride 1 and 2,
//! padding 0 and 1, dilation 2, groups 2, depthwise, odd sizes, the
//! 7x7/2/3 stem, 1x1, conv1d, batch 1 and 3 — the input gradient through
//! its flipped-convolution (stride 1), scatter (stride 2, or padding
//! beyond the kernel's reach) and direct (1x1) schemes; linear with rank-2 and rank-3 inputs; on
//! both GEMMs, lowered for and run on 1 and 2 threads. The forward and
//! input-gradient convolutions of a training plan (outputs in place) on
//! batches large enough for their implicit-GEMM path, and a training
//! plan's `linear` and input gradient as thin products. Plus an ignored
//! release-mode timing of two real layers.

use crate::back::jit::Jit;
use crate::back::lower::oracle::{data, params, reference, run_lowered};
use crate::back::lower::{lower, lower_with, OutputMode};
use crate::ir::{Attr, Dim, Graph, Op};
use crate::options::{CompileOptions, GemmChoice};
use crate::passes::rewrite::{new_node, set_nodes};
use crate::testing::program;
use netc_runtime::gemm::Gemm;
use netc_runtime::plan::{Buf, Executor, Work};

/// A convolution: (nd, batch, channels, spatial, out channels, kernel,
/// stride, pad, dilation, groups).
type Case = (
    usize,
    usize,
    usize,
    &'static [usize],
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
);

const CASES: &[Case] = &[
    (2, 1, 3, &[5, 6], 4, 3, 1, 1, 1, 1),
    (2, 3, 2, &[7, 5], 3, 3, 2, 0, 1, 1),
    (2, 3, 4, &[7, 7], 4, 3, 2, 1, 2, 2),
    (2, 3, 2, &[9, 8], 2, 2, 1, 0, 2, 1),
    (2, 1, 3, &[13, 11], 8, 7, 2, 3, 1, 1),
    (2, 3, 4, &[4, 5], 6, 1, 1, 0, 1, 2),
    (2, 1, 2, &[6, 6], 2, 1, 2, 0, 1, 1),
    (2, 3, 6, &[6, 5], 6, 3, 1, 1, 1, 6),
    (2, 3, 4, &[8, 7], 6, 3, 1, 2, 2, 2),
    (2, 1, 2, &[5, 4], 3, 3, 1, 3, 1, 1),
    (1, 3, 4, &[13], 2, 5, 2, 2, 2, 2),
    (1, 1, 3, &[9], 4, 3, 1, 1, 1, 1),
    (2, 2, 64, &[4, 5], 128, 3, 2, 1, 1, 1),
    (2, 2, 64, &[4, 5], 128, 1, 2, 0, 1, 1),
    (2, 2, 32, &[8, 10], 64, 3, 2, 1, 1, 1),
];

/// `[N, ...]` for a `.net` type.
fn dims(rest: &[usize]) -> String {
    let v: Vec<String> = rest.iter().map(|d| d.to_string()).collect();
    format!("[N, {}]", v.join(", "))
}

/// The graph `dx = convNd_grad_input(dy, W)`, `dW = convNd_grad_weight(dy, x)`
/// for the convolution of `case` (only the ops in `wanted`; `"forward"`
/// keeps the convolution itself, output `y`), as the autodiff rules emit
/// them; inputs `x`, `dy`, parameter `c.weight`.
fn conv_graph(case: Case, wanted: &[&str]) -> (Graph, Vec<usize>, Vec<usize>) {
    let (nd, n, c, sp, oc, k, s, p, d, g) = case;
    let out: Vec<usize> = sp
        .iter()
        .map(|&l| (l + 2 * p - d * (k - 1) - 1) / s + 1)
        .collect();
    let mut xs = vec![c];
    xs.extend_from_slice(sp);
    let mut ys = vec![oc];
    ys.extend_from_slice(&out);
    let src = format!(
        "model m() {{ input x: f32{}  input dy: f32{}
           output y = x |> c: conv{nd}d({oc}, k = {k}, stride = {s}, pad = {p}, dilation = {d},
                                       groups = {g}, bias = false) }}",
        dims(&xs),
        dims(&ys),
    );
    let mut graph = program(&src).unwrap_or_else(|e| panic!("{src}: {e}"));
    let conv = graph.nodes[0].clone();
    let (x, w) = (conv.inputs[0], conv.inputs[1]);
    let dy = graph.inputs[1].1;
    let (x_ty, w_ty) = (graph.ty(x).clone(), graph.ty(w).clone());
    let mut nodes = Vec::new();
    for which in wanted.iter().filter(|w| **w != "forward") {
        let mut attrs: Vec<(&'static str, Attr)> = conv
            .op
            .attrs
            .iter()
            .filter(|(name, _)| ["stride", "pad", "dilation", "groups"].contains(name))
            .cloned()
            .collect();
        let (name, other, ty) = match *which {
            "input" => {
                attrs.push(("input_shape", Attr::Dims(x_ty.shape.clone())));
                let name = if nd == 1 {
                    "conv1d_grad_input"
                } else {
                    "conv2d_grad_input"
                };
                (name, w, x_ty.clone())
            }
            _ => {
                attrs.push(("kernel", Attr::Ints(vec![k as i64; nd])));
                let name = if nd == 1 {
                    "conv1d_grad_weight"
                } else {
                    "conv2d_grad_weight"
                };
                (name, x, w_ty.clone())
            }
        };
        nodes.push(new_node(
            &mut graph,
            Op { name, attrs },
            vec![dy, other],
            ty,
            Dim::known(0),
            &conv,
        ));
    }
    graph.outputs = wanted
        .iter()
        .filter(|w| **w != "forward")
        .zip(&nodes)
        .map(|(which, node)| (format!("d{which}"), node.outputs[0]))
        .collect();
    if wanted.contains(&"forward") {
        graph.outputs.insert(0, ("y".into(), conv.outputs[0]));
        nodes.insert(0, conv);
    }
    set_nodes(&mut graph, nodes);
    let mut full_x = vec![n];
    full_x.extend(xs);
    let mut full_y = vec![n];
    full_y.extend(ys);
    (graph, full_x, full_y)
}

/// The graph `dx = linear_grad_input(dy, W)`, `dW = linear_grad_weight(dy, x)`
/// for `x: [N, rest..]` through `linear(out)`; with `forward` the
/// `linear` itself too (output `y`).
fn linear_graph(rest: &[usize], out: usize, forward: bool) -> Graph {
    let mut ys = rest.to_vec();
    *ys.last_mut().unwrap() = out;
    let src = format!(
        "model m() {{ input x: f32{}  input dy: f32{}
           output y = x |> l: linear({out}, bias = false) }}",
        dims(rest),
        dims(&ys)
    );
    let mut graph = program(&src).unwrap_or_else(|e| panic!("{src}: {e}"));
    let lin = graph.nodes[0].clone();
    let (x, w) = (lin.inputs[0], lin.inputs[1]);
    let dy = graph.inputs[1].1;
    let (x_ty, w_ty) = (graph.ty(x).clone(), graph.ty(w).clone());
    let gi = new_node(
        &mut graph,
        Op::new("linear_grad_input"),
        vec![dy, w],
        x_ty,
        Dim::known(0),
        &lin,
    );
    let gw = new_node(
        &mut graph,
        Op::new("linear_grad_weight"),
        vec![dy, x],
        w_ty,
        Dim::known(0),
        &lin,
    );
    graph.outputs = vec![("dx".into(), gi.outputs[0]), ("dw".into(), gw.outputs[0])];
    let mut nodes = vec![gi, gw];
    if forward {
        graph.outputs.push(("y".into(), lin.outputs[0]));
        nodes.insert(0, lin);
    }
    set_nodes(&mut graph, nodes);
    graph
}

/// Every output of `g` compiled with `options` and run on `threads`.
fn compiled(
    g: &Graph,
    n: usize,
    options: CompileOptions,
    threads: usize,
    inputs: &[&[f32]],
    params: &[&[f32]],
) -> Vec<Vec<f32>> {
    let mut jit = Jit::new().unwrap();
    let lowered = lower(g, &[("N".to_string(), n as i64)], options, &mut jit).unwrap();
    run_lowered(lowered, inputs, params, threads)
}

/// Asserts every output in `got` within 1e-5 relative L2 of `want`,
/// naming `what`, the output and the `how` of the run in a failure.
fn assert_outputs_close(
    outputs: &[(String, crate::ir::ValueId)],
    got: &[Vec<f32>],
    want: &[Vec<f64>],
    what: &str,
    how: &str,
) {
    for ((name, _), (a, e)) in outputs.iter().zip(got.iter().zip(want)) {
        let err = rel_l2(a, e);
        assert!(err <= 1e-5, "{what} {name}: {how}: rel L2 {err:e}");
    }
}

/// `‖got − want‖ / ‖want‖`.
fn rel_l2(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let diff: f64 = got
        .iter()
        .zip(want)
        .map(|(a, e)| (f64::from(*a) - e).powi(2))
        .sum();
    let norm: f64 = want.iter().map(|e| e * e).sum();
    (diff / norm.max(1e-300)).sqrt()
}

/// Compiles `g` with both GEMMs, lowered for and run on 1 and 2 threads,
/// and compares every output with the interpreter.
fn check(g: &Graph, n: usize, x_shape: Vec<usize>, y_shape: Vec<usize>, what: &str) {
    let x = data(x_shape.iter().product(), 0.4, 1.0);
    let dy = data(y_shape.iter().product(), 1.3, 1.0);
    let ps = params(g);
    let want = reference(
        g,
        &[("x", x_shape, x.clone()), ("dy", y_shape, dy.clone())],
        &ps,
    );
    let p: Vec<&[f32]> = ps.iter().map(|(_, _, v)| v.as_slice()).collect();
    for gemm in [
        GemmChoice::Native,
        GemmChoice::Cranelift,
        GemmChoice::Packed,
    ] {
        for lowered in [1, 2] {
            for threads in [1, 2] {
                let options = CompileOptions {
                    threads: lowered,
                    gemm,
                    ..CompileOptions::default()
                };
                let got = compiled(g, n, options, threads, &[&x, &dy], &p);
                assert_outputs_close(
                    &g.outputs,
                    &got,
                    &want,
                    what,
                    &format!("{gemm:?} lowered for {lowered}, run on {threads}"),
                );
            }
        }
    }
}

#[test]
fn conv_gradients_match_the_interpreter() {
    for &case in CASES {
        let (g, xs, ys) = conv_graph(case, &["input", "weight"]);
        check(&g, case.1, xs, ys, &format!("{case:?}"));
    }
}

#[test]
fn linear_gradients_match_the_interpreter() {
    for (n, rest, out) in [(5, &[7usize][..], 3), (3, &[4, 6], 5), (1, &[9], 4)] {
        let g = linear_graph(rest, out, false);
        let mut xs = vec![n];
        xs.extend_from_slice(rest);
        let mut ys = xs.clone();
        *ys.last_mut().unwrap() = out;
        check(&g, n, xs, ys, &format!("linear [{n}, {rest:?}] -> {out}"));
    }
}

/// `g` lowered as a training step (outputs left in the arena) with
/// `options` at batch `n` and run on `threads`: how many of its steps
/// `counted` picks, and every output.
fn training_plan(
    g: &Graph,
    n: usize,
    options: CompileOptions,
    threads: usize,
    inputs: &[&[f32]],
    params: &[&[f32]],
    counted: impl Fn(&Work) -> bool,
) -> (usize, Vec<Vec<f32>>) {
    let mut jit = Jit::new().unwrap();
    let symbols = [("N".to_string(), n as i64)];
    let l = lower_with(g, &symbols, options, &mut jit, OutputMode::InPlace).unwrap();
    let count = l.plan.steps.iter().filter(|s| counted(&s.work)).count();
    let bufs = l.output_bufs.clone();
    let mut ex = Executor::new(l.plan, threads).unwrap();
    ex.prepare(params).unwrap();
    ex.run(inputs, params, &mut []).unwrap();
    let outputs = g
        .outputs
        .iter()
        .zip(&bufs)
        .map(|((name, _), buf)| {
            let Buf::Arena { offset, len } = *buf else {
                panic!("{name} is not in the arena: {buf:?}");
            };
            ex.arena()[offset..offset + len].to_vec()
        })
        .collect();
    (count, outputs)
}

/// A training plan's lowering of `case`'s `ops` (outputs left in the
/// arena) on `gemm`, lowered for and run on 1 and 2 threads, against the
/// interpreter; `expected` of its steps must be ones `counted` picks.
fn check_training_steps(
    case: Case,
    ops: &[&str],
    gemm: GemmChoice,
    expected: usize,
    counted: impl Fn(&Work) -> bool + Copy,
) {
    let (g, xs, ys) = conv_graph(case, ops);
    let x = data(xs.iter().product(), 0.4, 1.0);
    let dy = data(ys.iter().product(), 1.3, 1.0);
    let ps = params(&g);
    let want = reference(&g, &[("x", xs, x.clone()), ("dy", ys, dy.clone())], &ps);
    let p: Vec<&[f32]> = ps.iter().map(|(_, _, v)| v.as_slice()).collect();
    for lowered in [1, 2] {
        for threads in [1, 2] {
            let options = CompileOptions {
                threads: lowered,
                gemm,
                ..CompileOptions::default()
            };
            let (steps, got) = training_plan(&g, case.1, options, threads, &[&x, &dy], &p, counted);
            assert_eq!(steps, expected, "{case:?}: steps of the kind asked for");
            let how = format!("lowered for {lowered}, run on {threads}");
            assert_outputs_close(&g.outputs, &got, &want, &format!("{case:?}"), &how);
        }
    }
}

/// [`check_training_steps`] of the forward, input-gradient and
/// weight-gradient convolutions on the packed GEMM, `implicit_steps` of
/// them as implicit GEMMs.
fn check_training_plan(case: Case, implicit_steps: usize) {
    check_training_steps(
        case,
        &["forward", "input", "weight"],
        GemmChoice::Packed,
        implicit_steps,
        |w| matches!(w, Work::Contraction(c) if matches!(c.gemm, Gemm::Implicit(_))),
    );
}

/// A training plan's `linear`, input gradient and weight gradient for `x:
/// [n, rest..]` through `linear(out)` (a weight of at least 2 MiB), with
/// and without the thin products, lowered for and run on 1 and 2 threads,
/// against the interpreter; with them (on AVX-512F) the forward and the
/// input gradient must run as thin products.
fn check_thin_training_plan(n: usize, rest: &[usize], out: usize) {
    let g = linear_graph(rest, out, true);
    let xs: Vec<usize> = [n].iter().chain(rest).copied().collect();
    let mut ys = xs.clone();
    *ys.last_mut().unwrap() = out;
    let x = data(xs.iter().product(), 0.4, 1.0);
    let dy = data(ys.iter().product(), 1.3, 1.0);
    let ps = params(&g);
    let want = reference(&g, &[("x", xs, x.clone()), ("dy", ys, dy.clone())], &ps);
    let p: Vec<&[f32]> = ps.iter().map(|(_, _, v)| v.as_slice()).collect();
    for thin in [true, false] {
        for lowered in [1, 2] {
            for threads in [1, 2] {
                let options = CompileOptions {
                    threads: lowered,
                    thin_linear: thin,
                    ..CompileOptions::default()
                };
                let (thin_steps, got) = training_plan(
                    &g,
                    n,
                    options,
                    threads,
                    &[&x, &dy],
                    &p,
                    |w| matches!(w, Work::Contraction(c) if matches!(c.gemm, Gemm::Thin)),
                );
                let expected = if thin && netc_runtime::gemm::kernel_avx512::available() {
                    2
                } else {
                    0
                };
                assert_eq!(
                    thin_steps, expected,
                    "[{n}, {rest:?}] -> {out}, thin {thin}"
                );
                assert_outputs_close(
                    &g.outputs,
                    &got,
                    &want,
                    &format!("[{n}, {rest:?}] -> {out}"),
                    &format!("thin {thin}, lowered for {lowered}, run on {threads}"),
                );
            }
        }
    }
}

#[test]
fn thin_training_linears_match_the_interpreter() {
    // vggish's embeddings at a smaller scale: 8 rows of 1024 into 512
    // outputs; a rank-3 input (32 rows of 256) into 2048 outputs.
    check_thin_training_plan(8, &[1024], 512);
    check_thin_training_plan(8, &[4, 256], 2048);
}

/// [`check_training_steps`] of the weight gradient on the default GEMM
/// choice: on AVX-512F it must run as one pass over the batch.
/// Checks the weight gradient of `case` against the interpreter and that
/// it runs in one pass exactly when `one_pass` (and AVX-512F is there).
fn check_one_pass_weight_gradient(case: Case, one_pass: bool) {
    check_training_steps(
        case,
        &["weight"],
        GemmChoice::Auto,
        usize::from(one_pass && netc_runtime::gemm::kernel_avx512::available()),
        |w| matches!(w, Work::Rows(r) if format!("{:?}", r.kernel).starts_with("ConvWeightGrad")),
    );
}

#[test]
fn one_pass_weight_gradients_match_the_interpreter() {
    // Small maps, 8–256 channels, at least 256 output pixels over the
    // batch: eeg_ccnn's 3x3 padding 1; stride 2 with more output
    // channels than a tile's 48; a dilated 1-D convolution.
    check_one_pass_weight_gradient((2, 8, 9, &[9, 9], 20, 3, 1, 1, 1, 1), true);
    check_one_pass_weight_gradient((2, 10, 12, &[11, 10], 50, 3, 2, 1, 1, 1), true);
    check_one_pass_weight_gradient((1, 16, 8, &[40], 16, 5, 1, 2, 2, 1), true);
    // Maps above 256 pixels: in one pass when at most 32 output channels
    // wide (densenet121's 3x3 convolutions), per image otherwise.
    check_one_pass_weight_gradient((2, 2, 10, &[30, 28], 32, 3, 1, 1, 1, 1), true);
    check_one_pass_weight_gradient((2, 2, 8, &[40, 36], 12, 3, 2, 1, 1, 1), true);
    check_one_pass_weight_gradient((2, 2, 8, &[30, 28], 40, 3, 1, 1, 1, 1), false);
}

#[test]
fn implicit_training_convolutions_match_the_interpreter() {
    // At least 3072 output pixels over the batch on maps of at most 256
    // pixels, forward and input gradient: 3x3 with padding 1 (eeg_ccnn's),
    // and 2x2 unpadded with dilation 2 and more output than input channels.
    check_training_plan((2, 40, 3, &[9, 9], 5, 3, 1, 1, 1, 1), 2);
    check_training_plan((2, 24, 4, &[13, 15], 6, 2, 1, 0, 2, 1), 2);
    // A narrow forward (at most 32 output channels) on maps above 256
    // pixels: the forward alone as an implicit GEMM (densenet121's 3x3
    // convolutions on 56x56 maps), stride 1 and stride 2.
    check_training_plan((2, 3, 8, &[40, 36], 16, 3, 1, 1, 1, 1), 1);
    check_training_plan((2, 3, 5, &[70, 60], 32, 3, 2, 1, 1, 1), 1);
    // Fewer rows than the other implicit convolutions need (800, and
    // 288 for a 12x12 map).
    check_training_plan((2, 2, 8, &[20, 20], 32, 3, 1, 1, 1, 1), 1);
    check_training_plan((2, 2, 8, &[12, 12], 32, 3, 1, 1, 1, 1), 1);
}

#[test]
fn winograd_training_convolutions_match_the_interpreter() {
    // 3x3 stride-1 convolutions: 128 → 128 channels (all three ops as
    // Winograd transforms) on eeg_ccnn's 9x9 maps (3x3 tiles) and on an
    // unpadded odd map (partial 4x4 tiles); 64 → 64 with padding 2 (the
    // input gradient unpadded), too narrow for the weight gradient's.
    let cases: [(Case, usize); 3] = [
        ((2, 2, 128, &[9, 9], 128, 3, 1, 1, 1, 1), 3),
        ((2, 1, 128, &[9, 8], 128, 3, 1, 0, 1, 1), 3),
        ((2, 1, 64, &[6, 7], 64, 3, 1, 2, 1, 1), 2),
    ];
    let on = netc_runtime::gemm::kernel_avx512::available();
    for (case, winograd) in cases {
        // One padded input map per op that runs as Winograd transforms.
        check_training_steps(
            case,
            &["forward", "input", "weight"],
            GemmChoice::Auto,
            if on { winograd } else { 0 },
            |w| matches!(w, Work::Rows(r) if format!("{:?}", r.kernel).starts_with("PadTiles")),
        );
    }
}
