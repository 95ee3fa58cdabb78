//! Contractions through the plan executor against the f64 reference
//! interpreter (itself checked against PyTorch): a table of convolutions
//! (stride, padding, dilation, groups, depthwise, 1x1, the 7x7/2 stem,
//! batch 1 and 3, bias or not, fused ReLU and residual followers) on both
//! GEMMs (native, Cranelift tile, packed with pre-packed weights), one and
//! two threads, NCHW and NHWC; linear and matmul (2-D, batched, broadcast)
//! likewise; and which side of the GEMM a packed weight lands on.

use super::*;
use crate::back::jit::Jit;
use crate::back::lower::lower;
use crate::interp::{self, Array};
use crate::ir::{Dim, Graph, Param};
use crate::options::CompileOptions;
use crate::testing::program;
use netc_runtime::plan::Executor;
use std::collections::HashMap;

/// Deterministic values in about [-1, 1].
fn data(len: usize, seed: f32) -> Vec<f32> {
    (0..len)
        .map(|i| ((i as f32 + seed) * 0.731).sin() * (1.0 + (i % 3) as f32 * 0.1))
        .collect()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&a| f64::from(a)).collect()
}

/// Permutes a row-major tensor of `shape` by `dims` (output dim i is input
/// dim `dims[i]`).
fn permute(x: &[f32], shape: &[usize], dims: &[usize]) -> Vec<f32> {
    let out_shape: Vec<usize> = dims.iter().map(|&d| shape[d]).collect();
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    let mut out = Vec::with_capacity(x.len());
    let mut idx = vec![0; shape.len()];
    for _ in 0..x.len() {
        let src: usize = idx.iter().zip(dims).map(|(&p, &d)| p * strides[d]).sum();
        out.push(x[src]);
        for a in (0..idx.len()).rev() {
            idx[a] += 1;
            if idx[a] < out_shape[a] {
                break;
            }
            idx[a] = 0;
        }
    }
    out
}

/// Marks every node after the first node named `head` as fused into it.
fn fuse_after(g: &mut Graph, head: &str) {
    let at = g.nodes.iter().position(|n| n.op.name == head).unwrap();
    let key = g.nodes[at].outputs[0];
    for n in &mut g.nodes[at + 1..] {
        n.fused_into = Some(key);
    }
}

/// Runs `g` through the back end with the given options and executor
/// threads; inputs and parameters in the graph's order.
fn run_plan(
    g: &Graph,
    symbols: &[(String, i64)],
    options: CompileOptions,
    threads: usize,
    inputs: &[&[f32]],
    params: &[&[f32]],
) -> Vec<f32> {
    let mut jit = Jit::new().unwrap();
    let lowered = lower(g, symbols, options, &mut jit).unwrap();
    let mut ex = Executor::new(lowered.plan, threads).unwrap();
    ex.prepare(params).unwrap();
    let mut y = vec![f32::NAN; lowered.outputs[0].1];
    ex.run(inputs, params, &mut [&mut y]).unwrap();
    y
}

fn assert_close(got: &[f32], want: &[f64], what: &str) {
    assert_within(got, want, 2e-5, what);
}

/// [`assert_close`] with the bound `tol` instead of 2e-5.
fn assert_within(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (a, e)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(*a) - e).abs() <= tol * e.abs().max(1.0),
            "{what}: element {i}: {a} vs {e}"
        );
    }
}

/// Every GEMM × lowering threads × executor threads combination.
fn configs() -> Vec<(GemmChoice, usize, usize)> {
    let mut v = Vec::new();
    for gemm in [
        GemmChoice::Native,
        GemmChoice::Cranelift,
        GemmChoice::Packed,
    ] {
        for lowered in [1, 2] {
            for threads in [1, 2] {
                v.push((gemm, lowered, threads));
            }
        }
    }
    v
}

#[derive(Clone, Copy, Debug)]
enum Follow {
    None,
    Relu,
    Residual,
    ResidualRelu,
}

#[derive(Clone, Copy, Debug)]
struct ConvCase {
    nd: usize,
    n: usize,
    c: usize,
    hw: [usize; 2],
    oc: usize,
    k: usize,
    stride: usize,
    pad: usize,
    dilation: usize,
    groups: usize,
    bias: bool,
    follow: Follow,
}

fn conv_cases() -> Vec<ConvCase> {
    let base = ConvCase {
        nd: 2,
        n: 1,
        c: 4,
        hw: [8, 7],
        oc: 6,
        k: 3,
        stride: 1,
        pad: 1,
        dilation: 1,
        groups: 1,
        bias: true,
        follow: Follow::Relu,
    };
    vec![
        base,
        // 3x3 stride-1 convolutions of 64 channels and at least 64 tiles:
        // Winograd transforms in NHWC inference plans on the packed GEMM
        // (whole 4x4 output tiles; partial ones, unpadded, no bias).
        ConvCase {
            n: 4,
            c: 64,
            hw: [14, 14],
            oc: 64,
            follow: Follow::ResidualRelu,
            ..base
        },
        ConvCase {
            n: 6,
            c: 64,
            hw: [15, 13],
            oc: 64,
            pad: 0,
            bias: false,
            ..base
        },
        ConvCase {
            n: 3,
            stride: 2,
            pad: 0,
            bias: false,
            follow: Follow::None,
            ..base
        },
        ConvCase {
            pad: 3,
            dilation: 2,
            groups: 2,
            follow: Follow::Residual,
            ..base
        },
        ConvCase {
            n: 3,
            c: 5,
            oc: 5,
            groups: 5,
            stride: 2,
            ..base
        },
        ConvCase {
            n: 3,
            c: 8,
            k: 1,
            pad: 0,
            follow: Follow::ResidualRelu,
            ..base
        },
        ConvCase {
            k: 1,
            pad: 0,
            groups: 2,
            bias: false,
            ..base
        },
        ConvCase {
            n: 3,
            c: 3,
            hw: [20, 19],
            oc: 8,
            k: 7,
            stride: 2,
            pad: 3,
            bias: false,
            ..base
        },
        ConvCase {
            nd: 1,
            n: 3,
            hw: [1, 17],
            oc: 5,
            ..base
        },
        ConvCase {
            nd: 1,
            hw: [1, 23],
            k: 5,
            stride: 2,
            pad: 2,
            dilation: 2,
            groups: 2,
            follow: Follow::Residual,
            ..base
        },
        ConvCase {
            nd: 1,
            n: 3,
            hw: [1, 9],
            k: 1,
            pad: 0,
            follow: Follow::None,
            ..base
        },
    ]
}

impl ConvCase {
    fn out(&self, a: usize) -> usize {
        (self.hw[a] + 2 * self.pad - self.dilation * (self.k - 1) - 1) / self.stride + 1
    }

    fn x_shape(&self) -> Vec<usize> {
        if self.nd == 1 {
            vec![self.n, self.c, self.hw[1]]
        } else {
            vec![self.n, self.c, self.hw[0], self.hw[1]]
        }
    }

    fn y_shape(&self) -> Vec<usize> {
        if self.nd == 1 {
            vec![self.n, self.oc, self.out(1)]
        } else {
            vec![self.n, self.oc, self.out(0), self.out(1)]
        }
    }

    fn dims(s: &[usize]) -> String {
        let v: Vec<String> = s[1..].iter().map(|d| d.to_string()).collect();
        format!("[N, {}]", v.join(", "))
    }

    /// The NCHW graph, with the followers fused into the conv.
    fn graph(&self) -> Graph {
        let residual = matches!(self.follow, Follow::Residual | Follow::ResidualRelu);
        let r = if residual {
            format!("input r: f32{}", Self::dims(&self.y_shape()))
        } else {
            String::new()
        };
        let tail = match self.follow {
            Follow::None => "",
            Follow::Relu => " |> relu",
            Follow::Residual => " |> add(r)",
            Follow::ResidualRelu => " |> add(r) |> relu",
        };
        let src = format!(
            "model m() {{ input x: f32{}  {r}
               output y = x |> c: conv{}d({}, k = {}, stride = {}, pad = {}, dilation = {},
                                          groups = {}, bias = {}){tail} }}",
            Self::dims(&self.x_shape()),
            self.nd,
            self.oc,
            self.k,
            self.stride,
            self.pad,
            self.dilation,
            self.groups,
            self.bias
        );
        let mut g = program(&src).unwrap_or_else(|e| panic!("{src}: {e}"));
        fuse_after(&mut g, if self.nd == 1 { "conv1d" } else { "conv2d" });
        g
    }
}

/// The NHWC version of a conv2d graph, as the layout pass produces it:
/// x, the result and every follower `[N, H, W, C]`, the conv marked
/// `layout = "nhwc"`, its weight `[OC, KH, KW, C/g]`.
fn to_nhwc(g: &Graph) -> Graph {
    let mut g = g.clone();
    let nhwc = |shape: &mut Vec<Dim>| {
        if shape.len() == 4 {
            *shape = vec![
                shape[0].clone(),
                shape[2].clone(),
                shape[3].clone(),
                shape[1].clone(),
            ];
        }
    };
    let conv = g.nodes.iter().position(|n| n.op.name == "conv2d").unwrap();
    g.nodes[conv]
        .op
        .attrs
        .push(("layout", Attr::Str("nhwc".into())));
    let mut vals: Vec<ValueId> = g.inputs.iter().map(|(_, v)| *v).collect();
    vals.extend(g.nodes[conv..].iter().map(|n| n.outputs[0]));
    vals.push(g.nodes[conv].inputs[1]);
    for v in vals {
        nhwc(&mut g.values[v.0 as usize].ty.shape);
    }
    let w = g.nodes[conv].inputs[1];
    for p in &mut g.params {
        if p.value == w {
            nhwc(&mut p.ty.shape);
        }
    }
    g
}

/// Deterministic data for every parameter of `g` (parameter `i` from
/// seed `seed + i`), and the same values by path for the interpreter.
fn param_data(g: &Graph, seed: f32) -> (Vec<Vec<f32>>, HashMap<String, Array>) {
    let shape = |p: &Param| -> Vec<usize> { p.ty.known_dims().unwrap() };
    let params: Vec<Vec<f32>> = g
        .params
        .iter()
        .enumerate()
        .map(|(i, p)| data(shape(p).iter().product(), seed + i as f32))
        .collect();
    let named = g
        .params
        .iter()
        .zip(&params)
        .map(|(p, d)| (p.path.clone(), Array::new(&shape(p), f64s(d))))
        .collect();
    (params, named)
}

#[test]
fn convolutions_match_the_interpreter() {
    for case in conv_cases() {
        let g = case.graph();
        let xs = case.x_shape();
        let ys = case.y_shape();
        let x = data(xs.iter().product(), 0.5);
        let r = data(ys.iter().product(), 2.5);
        let residual = matches!(case.follow, Follow::Residual | Follow::ResidualRelu);
        let (params, named) = param_data(&g, 7.0);
        let mut ins = vec![("x", Array::new(&xs, f64s(&x)))];
        if residual {
            ins.push(("r", Array::new(&ys, f64s(&r))));
        }
        let want = interp::run(&g, &ins, &named).unwrap().remove(0).1;
        let symbols = [("N".to_string(), case.n as i64)];
        let param_refs: Vec<&[f32]> = params.iter().map(Vec::as_slice).collect();
        let mut inputs: Vec<&[f32]> = vec![&x];
        if residual {
            inputs.push(&r);
        }
        for (gemm, lowered, threads) in configs() {
            let options = CompileOptions {
                threads: lowered,
                gemm,
                ..CompileOptions::default()
            };
            let what = format!("{case:?} {gemm:?} lowered for {lowered}, run on {threads}");
            let got = run_plan(&g, &symbols, options, threads, &inputs, &param_refs);
            assert_close(&got, &want.data, &format!("NCHW {what}"));
            if case.nd != 2 {
                continue;
            }
            // NHWC: permuted data and weight, result permuted back.
            let gh = to_nhwc(&g);
            let to_nhwc_data = |v: &[f32], s: &[usize]| permute(v, s, &[0, 2, 3, 1]);
            let xh = to_nhwc_data(&x, &xs);
            let rh = to_nhwc_data(&r, &ys);
            let ws: Vec<usize> = g.params[0].ty.known_dims().unwrap();
            let wh = to_nhwc_data(&params[0], &ws);
            let mut hparams = param_refs.clone();
            hparams[0] = &wh;
            let mut hinputs: Vec<&[f32]> = vec![&xh];
            if residual {
                hinputs.push(&rh);
            }
            let got = run_plan(&gh, &symbols, options, threads, &hinputs, &hparams);
            let hs = [ys[0], ys[2], ys[3], ys[1]];
            let back = permute(&got, &hs, &[0, 3, 1, 2]);
            // Winograd transforms of 4x4 output tiles round to about 1e-6
            // of the largest output per term; over 576 taps a few outputs
            // land 2-3e-5 off.
            let tol = if case.c >= 64 { 1e-4 } else { 2e-5 };
            assert_within(&back, &want.data, tol, &format!("NHWC {what}"));
        }
    }
}

/// The EEG-style head: flatten, linear + bias with a fused ReLU and a
/// residual add (5 rows, and 40: two threads then split the rows of the
/// packed GEMM and run the epilogue on their own), and matmuls (2-D,
/// batched, broadcast over a shared right operand, two-level broadcast)
/// — each on both GEMMs and thread counts.
#[test]
fn linear_and_matmul_match_the_interpreter() {
    let head = "model m() { input x: f32[N, 3, 4]  input r: f32[N, 7]
                 output y = reshape(x, [-1, 12]) |> l: linear(7) |> relu |> add(r) }";
    let sources = [
        (head, "linear", vec![vec![5, 3, 4], vec![5, 7]]),
        (head, "linear", vec![vec![40, 3, 4], vec![40, 7]]),
        (
            "model m() { input a: f32[N, 9]  input b: f32[9, 11]
                 output y = matmul(a, b) |> relu }",
            "matmul",
            vec![vec![6, 9], vec![9, 11]],
        ),
        (
            "model m() { input a: f32[N, 4, 9]  input b: f32[N, 9, 5]
                 output y = matmul(a, b) }",
            "matmul",
            vec![vec![3, 4, 9], vec![3, 9, 5]],
        ),
        (
            "model m() { input a: f32[N, 4, 9]  input b: f32[9, 5]
                 output y = matmul(a, b) }",
            "matmul",
            vec![vec![3, 4, 9], vec![9, 5]],
        ),
        (
            "model m() { input a: f32[N, 1, 4, 9]  input b: f32[3, 9, 5]
                 output y = matmul(a, b) |> relu }",
            "matmul",
            vec![vec![2, 1, 4, 9], vec![3, 9, 5]],
        ),
    ];
    for (src, head, shapes) in sources {
        let mut g = program(src).unwrap();
        fuse_after(&mut g, head);
        let n = shapes[0][0];
        let datas: Vec<Vec<f32>> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| data(s.iter().product(), i as f32 * 3.0))
            .collect();
        let (params, named) = param_data(&g, 9.0);
        let ins: Vec<(&str, Array)> = g
            .inputs
            .iter()
            .zip(&shapes)
            .zip(&datas)
            .map(|(((name, _), s), d)| (name.as_str(), Array::new(s, f64s(d))))
            .collect();
        let want = interp::run(&g, &ins, &named).unwrap().remove(0).1;
        let inputs: Vec<&[f32]> = datas.iter().map(Vec::as_slice).collect();
        let param_refs: Vec<&[f32]> = params.iter().map(Vec::as_slice).collect();
        for (gemm, lowered, threads) in configs() {
            let options = CompileOptions {
                threads: lowered,
                gemm,
                ..CompileOptions::default()
            };
            let got = run_plan(
                &g,
                &[("N".into(), n as i64)],
                options,
                threads,
                &inputs,
                &param_refs,
            );
            assert_close(
                &got,
                &want.data,
                &format!("{src} {gemm:?} {lowered}/{threads}"),
            );
        }
    }
}

#[test]
fn unsupported_convolutions_and_matmuls_name_the_layer() {
    let mut g =
        program("model m() { input x: f32[N, 4, 6, 6]  output y = x |> c: conv2d(4, k = 3) }")
            .unwrap();
    g.nodes[0]
        .op
        .attrs
        .push(("layout", Attr::Str("nchwc".into())));
    let mut jit = Jit::new().unwrap();
    let err = lower(&g, &[("N".into(), 1)], CompileOptions::default(), &mut jit)
        .err()
        .unwrap();
    assert!(err.0.contains("`conv2d` at c: layout"), "{err}");
    let g = program(
        "model m() { input a: f32[2, 1, 3, 4, 5]  input b: f32[1, 3, 1, 5, 2]
                     output y = mm: matmul(a, b) }",
    )
    .unwrap();
    let err = lower(&g, &[], CompileOptions::default(), &mut jit)
        .err()
        .unwrap();
    assert!(err.0.contains("`matmul` at mm"), "{err}");
}

#[test]
fn epilogue_domains_follow_the_layout() {
    let g = program(
        "model m() { input x: f32[N, 4, 6, 6]
                     h = x |> c: conv2d(8, k = 3, pad = 1)
                     output y = reshape(h, [-1, 288]) |> l: linear(5) }",
    )
    .unwrap();
    let conv = &g.nodes[0];
    assert_eq!(
        epilogue_domain(&g, conv),
        Some(Domain::Rows {
            channels: 8,
            inner: 36
        })
    );
    let lin = g.nodes.iter().find(|n| n.op.name == "linear").unwrap();
    assert_eq!(
        epilogue_domain(&g, lin),
        Some(Domain::Rows {
            channels: 1,
            inner: 5
        })
    );
    let gh = to_nhwc(&g);
    assert_eq!(
        epilogue_domain(&gh, &gh.nodes[0]),
        Some(Domain::Rows {
            channels: 1,
            inner: 8
        })
    );
}

/// The GEMM each contraction step of `g` runs, in step order.
fn step_gemms(g: &Graph, gemm: GemmChoice) -> (Vec<Gemm>, usize) {
    let mut jit = Jit::new().unwrap();
    let options = CompileOptions {
        gemm,
        ..CompileOptions::default()
    };
    let lowered = lower(g, &[("N".into(), 2)], options, &mut jit).unwrap();
    let gemms = lowered
        .plan
        .steps
        .iter()
        .filter_map(|s| match &s.work {
            Work::Contraction(c) => Some(c.gemm),
            _ => None,
        })
        .collect();
    let packs = lowered
        .plan
        .prepare
        .iter()
        .filter(|s| matches!(s.work, Work::Rows(_)))
        .count();
    (gemms, packs)
}

/// With the packed GEMM, a parameter weight is packed once by a prepare
/// step and read as the GEMM side its layout puts it on: A for an NCHW
/// convolution, B for `linear` and NHWC convolutions (an implicit GEMM
/// over the whole batch); a matmul of two
/// inputs packs nothing; the native GEMM packs nothing either.
#[test]
fn parameter_weights_are_packed_once_on_their_gemm_side() {
    let g = program(
        "model m() { input x: f32[N, 4, 6, 6]  input b: f32[5, 3]
                     h = x |> c: conv2d(8, k = 3, pad = 1)
                     z = reshape(h, [-1, 288]) |> l: linear(5)
                     output y = matmul(z, b) }",
    )
    .unwrap();
    let (gemms, packs) = step_gemms(&g, GemmChoice::Packed);
    assert_eq!(packs, 2, "one pack step per weight");
    assert!(
        matches!(
            gemms[..],
            [
                Gemm::Packed(Prepacked::A),
                Gemm::Packed(Prepacked::B),
                Gemm::Packed(Prepacked::Neither)
            ]
        ),
        "{gemms:?}"
    );
    let gh = to_nhwc(&g);
    let (gemms, _) = step_gemms(&gh, GemmChoice::Packed);
    assert!(
        matches!(gemms[0], Gemm::Implicit(g) if g.rows() == 2 * 6 * 6 && g.depth() == 9 * 4),
        "NHWC conv is one implicit GEMM over the batch, its weight packed as B: {gemms:?}"
    );
    let (gemms, packs) = step_gemms(&g, GemmChoice::Native);
    assert_eq!(packs, 0);
    assert!(gemms.iter().all(|g| matches!(g, Gemm::Native)), "{gemms:?}");
}

/// Under `--gemm auto`, a `linear` with 1–4 rows of input and a weight
/// past one core's L2 runs the GEMV over its unpacked weight (no prepare
/// step packs it), with the bias and the fused ReLU and residual add in
/// the epilogue, and equals the interpreter: `k` and `n` off the vector
/// width (37 × 14173, 131 × 4003), with and without a bias and
/// followers, one and two threads. At 5 rows, or with a small weight
/// (21 × 37), the packed GEMM takes it back.
/// The model `y = x |> linear(n_out, bias)`, with `|> relu |> add(r)`
/// fused after it when `follow`: its source and its fused graph.
fn linear_model(k: usize, n_out: usize, bias: bool, follow: bool) -> (String, Graph) {
    let tail = if follow { " |> relu |> add(r)" } else { "" };
    let src = format!(
        "model m() {{ input x: f32[N, {k}]  input r: f32[N, {n_out}]
             output y = x |> l: linear({n_out}, bias = {bias}){tail} }}"
    );
    let mut g = program(&src).unwrap();
    fuse_after(&mut g, "linear");
    (src, g)
}

/// Inputs `x: [batch, k]`, `r: [batch, n_out]` and parameters for a
/// [`linear_model`], and the interpreter's output on them.
fn linear_data(
    g: &Graph,
    batch: usize,
    k: usize,
    n_out: usize,
) -> (Vec<f32>, Vec<f32>, Vec<Vec<f32>>, Array) {
    let xs = data(batch * k, 1.0);
    let rs = data(batch * n_out, 2.0);
    let (params, named) = param_data(g, 5.0);
    let ins = [
        ("x", Array::new(&[batch, k], f64s(&xs))),
        ("r", Array::new(&[batch, n_out], f64s(&rs))),
    ];
    let want = interp::run(g, &ins, &named).unwrap().remove(0).1;
    (xs, rs, params, want)
}

#[test]
fn batch_one_linears_run_the_gemv_and_match_the_interpreter() {
    for (k, n_out, bias, follow) in [
        (37, 14173, true, true),
        (131, 4003, false, false),
        (37, 21, true, true),
    ] {
        let big = k * n_out >= 1 << 19;
        let (src, g) = linear_model(k, n_out, bias, follow);
        for batch in [1, 3, 4, 5] {
            let (xs, rs, params, want) = linear_data(&g, batch, k, n_out);
            let symbols = [("N".to_string(), batch as i64)];
            let mut jit = Jit::new().unwrap();
            let lowered = lower(&g, &symbols, CompileOptions::default(), &mut jit).unwrap();
            let gemv =
                lowered.plan.steps.iter().any(
                    |s| matches!(&s.work, Work::Contraction(c) if matches!(c.gemm, Gemm::Gemv)),
                );
            assert_eq!(gemv, batch <= 4 && big, "{src} batch {batch}");
            if gemv {
                assert!(lowered.plan.prepare.is_empty(), "{src}: weight packed");
            }
            let inputs: Vec<&[f32]> = vec![&xs, &rs];
            let param_refs: Vec<&[f32]> = params.iter().map(Vec::as_slice).collect();
            for threads in [1, 2] {
                let got = run_plan(
                    &g,
                    &symbols,
                    CompileOptions {
                        threads,
                        ..CompileOptions::default()
                    },
                    threads,
                    &inputs,
                    &param_refs,
                );
                assert_close(&got, &want.data, &format!("{src} batch {batch}/{threads}"));
            }
        }
    }
}

/// A model too small for the pool (every contraction at most 2¹⁸
/// multiply-adds) with a packed `linear` of at least 2¹⁵ runs on the
/// calling thread with a team of two parts that split that GEMM's
/// columns (or, from 16 rows on, its rows, each part then running the
/// epilogue on its own rows), and equals the interpreter: eeg_mlp's fc1
/// shape (324 → 512) and sizes off the panel width, 1 and 3 rows (and 20
/// for 64 → 96), with and without a bias and fused followers. A
/// smaller product, or a plan with a larger one (it runs on the pool),
/// gets no team.
#[test]
fn small_linears_split_over_a_team_match_the_interpreter() {
    for (k, n_out, bias, follow, batches) in [
        (324, 512, true, true, &[1, 3][..]),
        (131, 291, false, false, &[1, 3]),
        (300, 150, true, false, &[1, 3]),
        (37, 21, true, true, &[1, 3]),
        (64, 96, true, true, &[1, 3, 20]),
    ] {
        let (src, g) = linear_model(k, n_out, bias, follow);
        for &batch in batches {
            let (xs, rs, params, want) = linear_data(&g, batch, k, n_out);
            let symbols = [("N".to_string(), batch as i64)];
            let options = CompileOptions {
                threads: 2,
                ..CompileOptions::default()
            };
            let mut jit = Jit::new().unwrap();
            let lowered = lower(&g, &symbols, options, &mut jit).unwrap();
            let mut ex = Executor::new(lowered.plan, 2)
                .unwrap()
                .inline_when_small()
                .with_team();
            let macs = batch * k * n_out;
            let what = format!("{src} batch {batch}");
            let team = (1 << 15..=1 << 18).contains(&macs);
            assert_eq!(ex.team_parts(), if team { 2 } else { 1 }, "{what}");
            let inputs: Vec<&[f32]> = vec![&xs, &rs];
            let param_refs: Vec<&[f32]> = params.iter().map(Vec::as_slice).collect();
            ex.prepare(&param_refs).unwrap();
            for round in 0..3 {
                let mut y = vec![f32::NAN; lowered.outputs[0].1];
                ex.run(&inputs, &param_refs, &mut [&mut y]).unwrap();
                assert_close(&y, &want.data, &format!("{what} round {round}"));
            }
        }
    }
}

/// An NHWC inference convolution that fits Winograd transforms runs as
/// the fused kernel (its numbers are checked in
/// [`convolutions_match_the_interpreter`]), with its weight's transform
/// packed by a prepare step; `--no-winograd` keeps the implicit GEMM.
#[test]
fn fitting_nhwc_convolutions_run_as_winograd_transforms() {
    let case = conv_cases()[1];
    let gh = to_nhwc(&case.graph());
    for winograd in [true, false] {
        let mut jit = Jit::new().unwrap();
        let options = CompileOptions {
            gemm: GemmChoice::Packed,
            winograd,
            ..CompileOptions::default()
        };
        let lowered = lower(&gh, &[("N".into(), 4)], options, &mut jit).unwrap();
        let fused = lowered
            .plan
            .steps
            .iter()
            .filter(|s| matches!(&s.work, Work::Rows(r) if format!("{:?}", r.kernel).starts_with("TiledConv")))
            .count();
        let on = winograd && netc_runtime::gemm::kernel_avx512::available();
        assert_eq!(fused, usize::from(on), "winograd {winograd}");
    }
}

/// DenseNet's bottleneck: a concat of three maps → batch norm → relu read
/// by a 1×1 convolution, after the passes (the layout pass makes it
/// channels last; the fusion pass makes the concat, norm and relu the
/// convolution's prologue). The compiled model matches the interpreter
/// with the prologue gathered by the implicit GEMM (packed weights),
/// stored in the scratch region for the native GEMM, and stored as its
/// own tensor with `norm_prologue` off, on one and two threads; the
/// first runs one contraction with a prologue, the others none.
#[test]
fn normalised_concatenations_read_by_1x1_convolutions_match_the_interpreter() {
    let g = program(
        "model m() { input x: f32[N, 16, 6, 5]
                     a = x |> c0: conv2d(24, k = 3, pad = 1) |> relu
                     b = a |> c1: conv2d(32, k = 3, pad = 1) |> relu
                     output y = concat([x, a, b], dim = 1) |> bn: batch_norm |> relu
                                |> c2: conv2d(40, k = 1, bias = false) |> relu }",
    )
    .unwrap();
    let params = super::super::oracle::params(&g);
    let n = 3;
    let x = data(n * 16 * 6 * 5, 0.4);
    let want = super::super::oracle::reference(&g, &[("x", vec![n, 16, 6, 5], x.clone())], &params);
    assert!(want[0].contains(&0.0) && want[0].iter().any(|v| *v > 0.0));
    let ps: Vec<&[f32]> = params.iter().map(|(_, _, v)| v.as_slice()).collect();
    for (gemm, norm_prologue) in [
        (GemmChoice::Packed, true),
        (GemmChoice::Native, true),
        (GemmChoice::Packed, false),
    ] {
        let options = CompileOptions {
            gemm,
            norm_prologue,
            ..CompileOptions::default()
        };
        let opt = crate::passes::pipeline::optimize(g.clone(), &options, None).unwrap();
        let fused = opt.nodes.iter().filter(|n| n.fused_into.is_some()).count();
        for threads in [1, 2] {
            let mut jit = Jit::new().unwrap();
            let lowered = lower(&opt, &[("N".into(), n as i64)], options, &mut jit).unwrap();
            let prologues = lowered
                .plan
                .steps
                .iter()
                .filter(|s| matches!(&s.work, Work::Contraction(c) if c.prologue.is_some()))
                .count();
            let gathered = gemm == GemmChoice::Packed && norm_prologue;
            assert_eq!(
                prologues,
                usize::from(gathered),
                "{options:?} ({fused} fused)"
            );
            let got = super::super::oracle::run_lowered(lowered, &[&x], &ps, threads);
            super::super::oracle::assert_close(
                &got[0],
                &want[0],
                5e-5,
                &format!("{gemm:?}, prologue {norm_prologue}, {threads} threads"),
            );
        }
    }
}
