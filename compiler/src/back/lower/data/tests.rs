//! Data movement and `quantize_u8` compiled vs the reference interpreter.

use super::super::oracle::{check, data, params, reference};
use crate::options::CompileOptions;
use crate::session::CompiledModel;
use crate::testing::program;
use netc_runtime::{Storage, Tensor};

fn run(src: &str, inputs: &[(&str, &[usize])]) {
    let g = program(src).unwrap();
    for n in [1, 3] {
        let ins: Vec<(&str, Vec<usize>, Vec<f32>)> = inputs
            .iter()
            .enumerate()
            .map(|(k, (name, rest))| {
                let mut shape = vec![n];
                shape.extend_from_slice(rest);
                let len = shape.iter().product();
                (*name, shape, data(len, k as f32 + 0.1, 5.0))
            })
            .collect();
        check(&g, &[("N", n as i64)], &ins, 0.0);
    }
}

#[test]
fn concat_and_stack_along_every_axis_match_the_interpreter() {
    let ins: &[(&str, &[usize])] = &[("a", &[2, 3, 5]), ("b", &[4, 3, 5]), ("c", &[1, 3, 5])];
    run(
        "model m() { input a: f32[N, 2, 3, 5]  input b: f32[N, 4, 3, 5]  input c: f32[N, 1, 3, 5]
                     output y = concat([a, b, c], dim = 1)  output z = concat([a], dim = 1) }",
        ins,
    );
    let ins: &[(&str, &[usize])] = &[("a", &[3, 2]), ("b", &[3, 5])];
    run(
        "model m() { input a: f32[N, 3, 2]  input b: f32[N, 3, 5]
                     output y = concat([a, b, a], dim = 2) }",
        ins,
    );
    let ins: &[(&str, &[usize])] = &[("a", &[3, 7]), ("b", &[3, 7])];
    run(
        "model m() { input a: f32[N, 3, 7]  input b: f32[N, 3, 7]
                     output y = concat([a, b], dim = 0)  output s = stack([a, b, a], dim = 1)
                     output t = stack([a, b], dim = 3) }",
        ins,
    );
}

#[test]
fn permute_transpose_slice_select_split_frame_match_the_interpreter() {
    let ins: &[(&str, &[usize])] = &[("x", &[5, 3, 4])];
    run(
        "model m() { input x: f32[N, 5, 3, 4]
                     output p = permute(x, [0, 2, 3, 1])
                     output q = permute(x, [3, 1, 0, 2])
                     output t = transpose(x, 1, 2)
                     output f = x |> permute([0, 2, 3, 1]) |> flatten
                     output s = slice(x, 1, 1, 5, 2)
                     output r = select(x, 2, dim = 3)
                     parts = split(x, [2, 3], 1)
                     output u = parts[1]  output v = parts[0]
                     output w = frame(x, 2, 1, dim = 2)
                     output z = x |> unsqueeze(1) |> squeeze(1) |> relu }",
        ins,
    );
    let g = program(
        "model m() { input s: f32[1000]  output f = frame(s, 400, 160)
                     output g = frame(s, 7, 3) }",
    )
    .unwrap();
    check(&g, &[], &[("s", vec![1000], data(1000, 0.3, 1.0))], 0.0);
}

/// A long contiguous concat (batch 1, many channels) is split into rows
/// that spread over threads, and still equals the interpreter.
#[test]
fn large_copies_split_their_rows() {
    let ins: &[(&str, &[usize])] = &[("a", &[40, 30, 30]), ("b", &[24, 30, 30])];
    run(
        "model m() { input a: f32[N, 40, 30, 30]  input b: f32[N, 24, 30, 30]
                     output y = concat([a, b], dim = 1) }",
        ins,
    );
}

/// Quantised values equal the reference exactly, except where the f64
/// value before rounding lies within 1e-3 of a rounding boundary (f32
/// arithmetic may round the other way there).
fn assert_quantized(got: &[f32], x: &[f32], lo: f64, hi: f64, truncate: bool, want: &[f64]) {
    for ((g, w), xv) in got.iter().zip(want).zip(x) {
        let q = (f64::from(*xv).clamp(lo, hi) - lo) * 255.0 / (hi - lo);
        let frac = q - q.floor();
        let boundary = if truncate {
            frac.min(1.0 - frac)
        } else {
            (frac - 0.5).abs()
        };
        let slack = if boundary < 1e-3 { 1.0 } else { 0.0 };
        assert!((f64::from(*g) - w).abs() <= slack, "{xv}: {g} vs {w}");
    }
}

#[test]
fn quantize_u8_rounds_or_truncates_like_the_interpreter() {
    for (args, lo, hi, truncate) in [
        ("", -2.0, 2.0, false),
        (
            "min = -1.5, max = 3.0, rounding = \"truncate\"",
            -1.5,
            3.0,
            true,
        ),
    ] {
        let g = program(&format!(
            "model m() {{ input e: f32[N, 37]  output q = quantize_u8(e{}{args}) }}",
            if args.is_empty() { "" } else { ", " }
        ))
        .unwrap();
        let x = data(3 * 37, 0.9, 6.0);
        let want = reference(&g, &[("e", vec![3, 37], x.clone())], &[]);
        for threads in [1, 2] {
            let got = super::super::oracle::compiled(&g, &[("N", 3)], &[&x], &params(&g), threads);
            assert_quantized(&got[0], &x, lo, hi, truncate, &want[0]);
        }
    }
}

/// The host API hands a `quantize_u8` output out as a u8 tensor.
#[test]
fn compiled_models_return_u8_outputs_as_u8_tensors() {
    let g =
        program("model m() { input e: f32[N, 5]  output q = quantize_u8(clamp(e, -2.0, 2.0)) }")
            .unwrap();
    let x = Tensor::from_f32(
        &[2, 5],
        vec![-3.0, -2.0, -1.0, 0.0, 0.5, 1.0, 1.5, 1.99, 2.0, 9.0],
    )
    .unwrap();
    let mut m = CompiledModel::new(g, &[("e", x.shape())], CompileOptions::default()).unwrap();
    let out = m.run(&[("e", &x)]).unwrap();
    assert_eq!(out[0].1.shape(), &[2, 5]);
    // (x + 2) * 63.75, rounded half to even (0.0 gives the tie 127.5).
    let want = vec![0u8, 0, 64, 128, 159, 191, 223, 254, 255, 255];
    assert_eq!(out[0].1.storage(), &Storage::U8(want));
}

/// A DenseNet-style stage without convolutions (concat, batch norm with a
/// fused ReLU, average pool, max pool, adaptive pool, flatten, linear)
/// equals the interpreter end to end.
#[test]
fn a_densenet_style_stage_runs_end_to_end() {
    let mut g = program(
        "model m() { input x: f32[N, 3, 11, 9]
                     h = x |> max_pool2d(3, stride = 2, pad = 1)
                     c = concat([h, relu(h), h * 2.0], dim = 1)
                     y = c |> norm: batch_norm |> relu |> avg_pool2d(2, stride = 2)
                     output logits = y |> norm5: batch_norm |> relu
                         |> adaptive_avg_pool2d(1) |> flatten |> fc: linear(4) }",
    )
    .unwrap();
    // Fuse each ReLU that follows a norm into it, as the fusion pass does.
    for k in 0..g.nodes.len() {
        if g.nodes[k].op.name == "relu" {
            let src = g.nodes[k].inputs[0];
            if let Some(p) = g.nodes.iter().position(|n| n.outputs[0] == src) {
                if g.nodes[p].op.name == "batch_norm" {
                    g.nodes[k].fused_into = Some(src);
                }
            }
        }
    }
    for n in [1, 3] {
        let x = data(n * 3 * 99, 0.2, 3.0);
        check(&g, &[("N", n as i64)], &[("x", vec![n, 3, 11, 9], x)], 1e-4);
    }
}

/// vggish_frontend (frame, Hann window, |rfft| and mel filterbank as
/// matmuls, log, framing into examples) compiled equals the interpreter
/// on a 1.2 s synthetic waveform.
#[test]
fn vggish_frontend_runs_compiled_and_matches_the_interpreter() {
    use crate::elab::{elaborate, Value};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/vggish.net");
    let (prog, diags) = crate::program::Program::load(&root);
    assert!(diags.is_empty());
    let samples = 19_200;
    let g = elaborate(
        &prog,
        prog.model(Some("vggish_frontend")).unwrap(),
        &[("samples".to_string(), Value::Int(samples))],
    )
    .unwrap();
    let wave: Vec<f32> = (0..samples as usize)
        .map(|i| {
            let t = i as f32 / 16000.0;
            0.5 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()
                + 0.2 * (2.0 * std::f32::consts::PI * 3100.0 * t).sin()
                + 0.05 * ((i * 7919 % 1000) as f32 / 500.0 - 1.0)
        })
        .collect();
    let want = reference(
        &g,
        &[("waveform", vec![samples as usize], wave.clone())],
        &[],
    );
    let x = Tensor::from_f32(&[samples as usize], wave).unwrap();
    for threads in [1, 2] {
        let options = CompileOptions {
            threads,
            ..Default::default()
        };
        let mut m = CompiledModel::new(g.clone(), &[("waveform", x.shape())], options).unwrap();
        let out = m.run(&[("waveform", &x)]).unwrap();
        assert_eq!(out[0].1.shape(), &[1, 96, 64]);
        // Log-mel values: f32 DFTs as matmuls against the f64 reference.
        super::super::oracle::assert_close(out[0].1.as_f32().unwrap(), &want[0], 2e-3, "examples");
    }
}
