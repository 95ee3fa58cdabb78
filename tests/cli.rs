//! End-to-end tests of the `netc` binary: exit codes and what it prints.
//! Numbers are checked against PyTorch fixtures or the f64 reference
//! interpreter (`netc::interp`), itself checked against PyTorch.

use netc::interp::{self, Array};
use netc_runtime::{Initializer, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn netc(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_netc"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("netc runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A fresh temporary directory for one test.
fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("netc-cli-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A repository path.
fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// Writes a little-endian f32 `.npy` file (format 1.0), as NumPy does.
fn write_npy(path: &Path, shape: &[usize], data: &[f32]) {
    let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Magic, version, header length, header padded with spaces and a
    // newline so that the data starts at a multiple of 64 bytes.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

/// The outputs of `model` in `file` by the reference interpreter, with the
/// parameters `netc run --seed SEED` initialises.
fn reference(file: &str, x: &Array, seed: u64) -> Vec<(String, Array)> {
    let (program, diags) = netc::program::Program::load(&repo(file));
    assert!(diags.is_empty());
    let g = netc::elab::elaborate(&program, program.model(None).unwrap(), &[]).unwrap();
    let mut init = Initializer::new(seed);
    let params: HashMap<String, Array> = g
        .params
        .iter()
        .map(|p| {
            let shape: Vec<usize> = p.ty.known_dims().unwrap();
            let t = init.tensor(p.ty.dtype, &shape, &p.init);
            let data = t.as_f32().unwrap().iter().map(|&v| f64::from(v)).collect();
            (p.path.clone(), Array::new(&shape, data))
        })
        .collect();
    interp::run(&g, &[("x", x.clone())], &params).unwrap()
}

/// Asserts `got` equals the f64 reference `want` to a relative L2 error of 1e-5.
fn assert_close(got: &Tensor, want: &Array) {
    assert_eq!(got.shape(), want.shape.as_slice());
    let got = got.as_f32().unwrap();
    let (mut err, mut norm) = (0.0f64, 0.0f64);
    for (&a, &e) in got.iter().zip(&want.data) {
        err += (f64::from(a) - e).powi(2);
        norm += e * e;
    }
    let rel = (err / norm.max(1e-30)).sqrt();
    assert!(rel <= 1e-5, "relative L2 error {rel:e}");
}

/// A deterministic EEG batch `[n, 4, 9, 9]`.
fn eeg_batch(n: usize) -> Vec<f32> {
    (0..n * 324)
        .map(|i| ((i as f32) * 0.137).sin() * 2.0)
        .collect()
}

#[test]
fn check_prints_summary_with_totals() {
    let (ok, out, err) = netc(&["check", "models/eeg_ccnn.net", "--set", "N=8"]);
    assert!(ok, "{err}");
    assert!(out.contains("conv1    conv2d   f32[N, 64, 9, 9]"), "{out}");
    assert!(out.contains("parameters:      5,830,402"), "{out}");
    // 8 samples: conv1 alone is 8 * 64*81 * (2*36 + 1) FLOPs.
    assert!(out.contains("3,027,456"), "{out}");
}

#[test]
fn set_overrides_model_parameters() {
    let (ok, out, err) = netc(&[
        "check",
        "models/eeg_ccnn.net",
        "--set",
        "classes=3",
        "--set",
        "bands=5",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("input  x: f32[N, 5, 9, 9]") && out.contains("output logits: f32[N, 3]"),
        "{out}"
    );
    let (ok, _, err) = netc(&["check", "models/eeg_ccnn.net", "--set", "clases=3"]);
    assert!(!ok);
    assert!(err.contains("has no parameter `clases`"), "{err}");
}

#[test]
fn weights_from_pytorch_match_and_wrong_files_name_every_problem() {
    let (ok, _, err) = netc(&[
        "check",
        "models/eeg_svm.net",
        "--weights",
        "tests/fixtures/weights/eeg_svm.safetensors",
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("all 2 tensors match eeg_svm"), "{err}");
    let (ok, _, err) = netc(&[
        "check",
        "models/eeg_svm.net",
        "--weights",
        "tests/fixtures/weights/eeg_svm_bad.safetensors",
    ]);
    assert!(!ok);
    assert!(err.contains("missing:    linear.bias f32[2]"), "{err}");
    assert!(err.contains("unexpected: linear.scale f32[1]"), "{err}");
    assert!(
        err.contains("mis-shaped: linear.weight f32[2, 324] expected, file has f32[3, 324]"),
        "{err}"
    );
}

#[test]
fn syntax_errors_exit_nonzero_with_location() {
    let dir = std::env::temp_dir().join(format!("netc-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("bad.net");
    std::fs::write(
        &f,
        "model m() {\n    input x: f32[N, 3]\n    output y = x |> \n}\n",
    )
    .unwrap();
    let (ok, _, err) = netc(&["check", f.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("bad.net:3:18"), "{err}");
    assert!(err.contains("after `|>` comes a call"), "{err}");
}

#[test]
fn run_reproduces_pytorch_on_the_svm() {
    let out = std::env::temp_dir().join(format!("netc-run-{}.safetensors", std::process::id()));
    let (ok, _, err) = netc(&[
        "run",
        "models/eeg_svm.net",
        "--weights",
        "tests/fixtures/weights/eeg_svm.safetensors",
        "--input",
        "x=tests/fixtures/weights/eeg_svm_input.safetensors",
        "--output",
        out.to_str().unwrap(),
        "--threads",
        "2",
    ]);
    assert!(ok, "{err}");
    let got = netc_runtime::weights::read_safetensors(&out).unwrap();
    let root = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/weights/eeg_svm_expected.safetensors"
    );
    let want = netc_runtime::weights::read_safetensors(std::path::Path::new(root)).unwrap();
    std::fs::remove_file(&out).unwrap();
    assert_eq!(got[0].0, "scores");
    assert_eq!(got[0].1.shape(), want[0].1.shape());
    for (a, b) in got[0]
        .1
        .as_f32()
        .unwrap()
        .iter()
        .zip(want[0].1.as_f32().unwrap())
    {
        assert!(
            (a - b).abs() <= 1e-5 * b.abs().max(1.0),
            "{a} vs PyTorch {b}"
        );
    }
}

#[test]
fn run_names_unknown_inputs_and_unsupported_ops() {
    let (ok, _, err) = netc(&[
        "run",
        "models/eeg_svm.net",
        "--input",
        "z=tests/fixtures/weights/eeg_svm_input.safetensors",
    ]);
    assert!(!ok);
    assert!(
        err.contains("model `eeg_svm` has no input `z`; its inputs: x"),
        "{err}"
    );
    let (ok, _, err) = netc(&[
        "run",
        "models/eeg_ccnn.net",
        "--input",
        "x=tests/fixtures/weights/eeg_svm_input.safetensors",
    ]);
    // Convolutions are lowered now: the CNN runs on the same input shape.
    assert!(ok, "{err}");
}

#[test]
fn run_reads_npy_writes_every_output_and_matches_the_interpreter() {
    let dir = temp_dir("npy");
    let x = eeg_batch(3);
    let input = dir.join("x.npy");
    write_npy(&input, &[3, 4, 9, 9], &x);
    let want = reference(
        "models/eeg_mlp.net",
        &Array::new(&[3, 4, 9, 9], x.iter().map(|&v| f64::from(v)).collect()),
        7,
    );
    for gemm in ["native", "cranelift"] {
        for extra in [&[][..], &["--no-fuse", "--layout", "nchw"][..]] {
            let out = dir.join(format!("out-{gemm}-{}.safetensors", extra.len()));
            let input_arg = format!("x={}", input.display());
            let mut args = vec![
                "run",
                "models/eeg_mlp.net",
                "--seed",
                "7",
                "--input",
                &input_arg,
                "--output",
                out.to_str().unwrap(),
                "--threads",
                "2",
                "--gemm",
                gemm,
            ];
            args.extend_from_slice(extra);
            let (ok, stdout, err) = netc(&args);
            assert!(ok, "{args:?}: {err}");
            assert!(stdout.is_empty(), "{stdout}");
            let got = netc_runtime::weights::read_safetensors(&out).unwrap();
            assert_eq!(got.len(), want.len());
            for ((name, t), (wname, w)) in got.iter().zip(&want) {
                assert_eq!(name, wname);
                assert_close(t, w);
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn run_without_output_prints_shape_and_first_values() {
    let dir = temp_dir("print");
    let x = eeg_batch(2);
    let input = dir.join("batch.safetensors");
    let t = Tensor::from_f32(&[2, 4, 9, 9], x.clone()).unwrap();
    // The only tensor of a file is taken whatever its name.
    netc_runtime::weights::write_safetensors_atomic(&input, &[("eeg", &t)], None).unwrap();
    let (ok, out, err) = netc(&[
        "run",
        "models/eeg_svm.net",
        "--input",
        &format!("x={}", input.display()),
    ]);
    assert!(ok, "{err}");
    let want = reference(
        "models/eeg_svm.net",
        &Array::new(&[2, 4, 9, 9], x.iter().map(|&v| f64::from(v)).collect()),
        0,
    );
    let line = out.trim();
    let values = line
        .strip_prefix("scores: f32[2, 2] [")
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or_else(|| panic!("{out}"));
    let values: Vec<f64> = values.split(", ").map(|v| v.parse().unwrap()).collect();
    assert_eq!(values.len(), 4, "{out}");
    for (a, e) in values.iter().zip(&want[0].1.data) {
        // Printed with 6 decimals.
        assert!((a - e).abs() <= 1e-5 * e.abs().max(1.0), "{a} vs {e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn run_names_the_input_and_both_shapes_when_they_differ() {
    let dir = temp_dir("shape");
    let input = dir.join("x.npy");
    write_npy(&input, &[2, 4, 9, 8], &vec![0.5; 2 * 4 * 72]);
    let (ok, _, err) = netc(&[
        "run",
        "models/eeg_mlp.net",
        "--input",
        &format!("x={}", input.display()),
    ]);
    assert!(!ok);
    assert!(
        err.contains("input `x` has shape [2, 4, 9, 8], expected f32[N, 4, 9, 9]"),
        "{err}"
    );
    // A file of several tensors, none called like the input.
    let two = dir.join("two.safetensors");
    let t = Tensor::from_f32(&[1, 4, 9, 9], vec![0.0; 324]).unwrap();
    netc_runtime::weights::write_safetensors_atomic(&two, &[("a", &t), ("b", &t)], None).unwrap();
    let (ok, _, err) = netc(&[
        "run",
        "models/eeg_mlp.net",
        "--input",
        &format!("x={}", two.display()),
    ]);
    assert!(!ok);
    assert!(
        err.contains("input `x`: ") && err.contains("has no tensor `x`"),
        "{err}"
    );
    assert!(err.contains("(it holds: a, b)"), "{err}");
    // Sizes come from the inputs; zero threads is refused.
    let input_arg = format!("x={}", input.display());
    let (ok, _, err) = netc(&[
        "run",
        "models/eeg_mlp.net",
        "--input",
        &input_arg,
        "--set",
        "N=3",
    ]);
    assert!(
        !ok && err.contains("takes sizes from the input shapes"),
        "{err}"
    );
    let (ok, _, err) = netc(&[
        "run",
        "models/eeg_mlp.net",
        "--input",
        &input_arg,
        "--threads",
        "0",
    ]);
    assert!(!ok && err.contains("at least 1 thread"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn compile_emits_the_clif_of_each_distinct_kernel_of_the_plan() {
    let (ok, out, err) = netc(&[
        "compile",
        "models/eeg_mlp.net",
        "--set",
        "N=4",
        "--emit",
        "clif",
    ]);
    assert!(ok, "{err}");
    assert!(out.starts_with("; model eeg_mlp (N=4): "), "{out}");
    assert!(out.contains("distinct kernels\n; plan: "), "{out}");
    // The bias of fc1 is an epilogue kernel over rows of 512 columns.
    assert!(
        out.contains("; kernel ew.f32(Full,PerColumn;rows c=1 inner=512) Add(in1)"),
        "{out}"
    );
    assert!(out.contains("; used by fc1 (linear)"), "{out}");
    assert!(out.contains("; used by logits (output)"), "{out}");
    assert!(out.contains("function u0:0(i64, i64, i64, i64)"), "{out}");
    assert!(out.contains("load.f32x4"), "{out}");
    // Each key once.
    let keys: Vec<&str> = out.lines().filter(|l| l.starts_with("; kernel ")).collect();
    let mut unique = keys.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(keys.len(), unique.len(), "{out}");
    let (ok, _, err) = netc(&["compile", "models/vggish.net", "--emit", "clif"]);
    assert!(!ok && err.contains("choose one with --model"), "{err}");
    let (ok, _, err) = netc(&[
        "compile",
        "models/eeg_mlp.net",
        "--set",
        "M=2",
        "--emit",
        "clif",
    ]);
    assert!(!ok);
    assert!(
        err.contains("has no parameter or size `M`; its sizes: N"),
        "{err}"
    );
}

#[test]
fn compile_emits_the_machine_code_of_the_same_kernels() {
    let args = |emit| {
        [
            "compile",
            "models/eeg_mlp.net",
            "--emit",
            emit,
            "--gemm",
            "native",
        ]
    };
    let (ok, asm, err) = netc(&args("asm"));
    assert!(ok, "{err}");
    let (ok, clif, err) = netc(&args("clif"));
    assert!(ok, "{err}");
    let headers = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(';'))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(headers(&asm), headers(&clif), "{asm}");
    // The fusion pass puts each ReLU into its linear layer's bias epilogue.
    assert!(
        asm.contains("; kernel ew.f32(Full,PerColumn;rows c=1 inner=512) Add(in1) Relu\n"),
        "{asm}"
    );
    // x64 instructions, no CLIF.
    assert!(asm.contains("retq") && asm.contains("vmovups"), "{asm}");
    assert!(!asm.contains("load.f32x4"), "{asm}");
}

#[test]
fn compile_emits_ir_and_names_the_known_passes_for_an_unknown_one() {
    let (ok, out, err) = netc(&["compile", "models/eeg_svm.net", "--emit", "ir"]);
    assert!(ok, "{err}");
    assert!(out.contains("linear"), "{out}");
    let (ok, _, err) = netc(&["compile", "models/eeg_svm.net", "--emit", "ir-after=bogus"]);
    assert!(!ok);
    assert!(
        err.contains("unknown pass `bogus`; the passes are:"),
        "{err}"
    );
    let (ok, _, err) = netc(&["compile", "models/eeg_svm.net", "--emit", "llvm"]);
    assert!(
        !ok && err.contains("expected ir, ir-after=PASS, clif or asm"),
        "{err}"
    );
}

/// `netc bench` smoke test (one warm-up, one timed call per batch): one
/// JSON object per batch with ordered statistics and the FLOPs the model
/// has at that batch; bad batch sizes are refused.
#[test]
fn bench_reports_one_json_object_per_batch() {
    let (ok, out, err) = netc(&[
        "bench",
        "models/eeg_mlp.net",
        "--batch",
        "1,4",
        "--warmup",
        "1",
        "--reps",
        "1",
        "--min-time",
        "0",
        "--threads",
        "1",
        "--json",
    ]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    for (line, batch) in lines.iter().zip([1, 4]) {
        assert!(
            line.starts_with(&format!(
                "{{\"model\": \"eeg_mlp\", \"batch\": {batch}, \"threads\": 1, \"train\": false, "
            )),
            "{line}"
        );
        let field = |k: &str| json_number(line, k);
        assert!(
            field("min_ms") <= field("median_ms") && field("median_ms") <= field("max_ms"),
            "{line}"
        );
        assert!(
            field("samples_per_s") > 0.0 && field("gflops") > 0.0 && field("flops") > 0.0,
            "{line}"
        );
    }
    let (ok, _, err) = netc(&["bench", "models/eeg_mlp.net", "--batch", "0"]);
    assert!(!ok);
    assert!(err.contains("`--batch 0`"), "{err}");
}

/// The number after `"key": ` in a one-line JSON object.
fn json_number(line: &str, key: &str) -> f64 {
    let at = line
        .find(&format!("\"{key}\": "))
        .unwrap_or_else(|| panic!("{key} in {line}"))
        + key.len()
        + 4;
    line[at..]
        .split([',', '}'])
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// `--no-arena-reuse` reaches the compiled model (eeg_ccnn's arena grows
/// without reuse), and the reported FLOP count grows with the batch.
#[test]
fn bench_switches_reach_the_compiled_model() {
    let bench = |extra: &[&str]| -> String {
        let mut args = vec![
            "bench",
            "models/eeg_ccnn.net",
            "--batch",
            "4",
            "--warmup",
            "0",
            "--reps",
            "1",
            "--min-time",
            "0",
            "--threads",
            "1",
            "--json",
        ];
        args.extend_from_slice(extra);
        let (ok, out, err) = netc(&args);
        assert!(ok, "{err}");
        out
    };
    let plain = bench(&[]);
    let no_reuse = bench(&["--no-arena-reuse"]);
    assert!(
        json_number(&no_reuse, "arena_mb") > json_number(&plain, "arena_mb"),
        "{plain}\n{no_reuse}"
    );
    let (ok, one, err) = netc(&[
        "bench",
        "models/eeg_ccnn.net",
        "--batch",
        "1",
        "--warmup",
        "0",
        "--reps",
        "1",
        "--min-time",
        "0",
        "--threads",
        "1",
        "--json",
    ]);
    assert!(ok, "{err}");
    let ratio = json_number(&plain, "flops") / json_number(&one, "flops");
    assert!((ratio - 4.0).abs() < 1e-9, "{one}\n{plain}");
}

/// `netc time` smoke test (one profiled run): a header, one row per layer
/// sorted by time, shares that add up to 100 %, and the total line;
/// `--top` limits the rows but not the total.
#[test]
fn time_lists_layers_by_cost_with_shares_and_a_total() {
    let args = [
        "time",
        "models/eeg_mlp.net",
        "--batch",
        "2",
        "--reps",
        "1",
        "--threads",
        "1",
    ];
    let (ok, out, err) = netc(&args);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("eeg_mlp: batch 2, 1 threads"), "{out}");
    assert!(lines[1]
        .split_whitespace()
        .eq(["rank", "layer", "op", "ms", "share", "GFLOP/s"]));
    let rows: Vec<Vec<&str>> = lines[2..lines.len() - 1]
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    // fc1, fc2, out (the linears, relus fused) and the output copy.
    assert_eq!(rows.len(), 4, "{out}");
    let ms: Vec<f64> = rows.iter().map(|r| r[3].parse().unwrap()).collect();
    assert!(ms.windows(2).all(|w| w[0] >= w[1]), "{out}");
    let shares: f64 = rows
        .iter()
        .map(|r| r[4].trim_end_matches('%').parse::<f64>().unwrap())
        .sum();
    assert!((shares - 100.0).abs() < 0.3, "{shares} in {out}");
    let mut layers: Vec<&str> = rows.iter().map(|r| r[1]).collect();
    layers.sort_unstable();
    assert_eq!(layers, ["fc1", "fc2", "logits", "out"]);
    let total = lines[lines.len() - 1];
    assert!(total.trim_start().starts_with("total (4 layers)"), "{out}");
    assert!(total.contains("100.0%"), "{out}");
    let (ok, out, err) = netc(&[&args[..], &["--top", "2"]].concat());
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 5, "{out}");
    assert!(out.contains("total (4 layers)"), "{out}");
}

#[test]
fn train_writes_checkpoint_and_curve_resumes_and_run_accepts_the_checkpoint() {
    let dir = temp_dir("train");
    let ckpt = dir.join("svm.safetensors");
    let common = [
        "train",
        "models/eeg_svm.net",
        "--set",
        "bands=1",
        "--set",
        "grid=8",
        "--set",
        "classes=10",
        "--data",
        "tests/fixtures/digits/train.safetensors",
        "--val",
        "tests/fixtures/digits/test.safetensors",
        "--batch",
        "64",
        "--threads",
        "1",
        "--quiet",
        "--out",
    ];
    let mut args: Vec<&str> = common.to_vec();
    let ckpt_s = ckpt.to_str().unwrap();
    args.extend([ckpt_s, "--epochs", "2"]);
    let (ok, out, err) = netc(&args);
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("epoch ")).count(),
        2,
        "{out}"
    );
    assert!(out.contains("val loss") && out.contains("acc"), "{out}");
    let svg = std::fs::read_to_string(ckpt.with_extension("svg")).unwrap();
    assert!(svg.contains("eeg_svm: accuracy"));
    // Resume for a third epoch: only epoch 3 runs.
    let mut args: Vec<&str> = common.to_vec();
    args.extend([ckpt_s, "--epochs", "3", "--resume", ckpt_s]);
    let (ok, out, err) = netc(&args);
    assert!(ok, "{err}");
    assert!(out.starts_with("epoch 3/3"), "{out}");
    // The checkpoint is a weights file for `netc run`.
    let x = dir.join("x.npy");
    write_npy(&x, &[2, 1, 8, 8], &[0.5; 128]);
    let (ok, out, err) = netc(&[
        "run",
        "models/eeg_svm.net",
        "--set",
        "bands=1",
        "--set",
        "grid=8",
        "--set",
        "classes=10",
        "--weights",
        ckpt_s,
        "--input",
        &format!("x={}", x.display()),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("scores"), "{out}");
}

/// `netc train` feeds point clouds to a sparse-conv model: `models/spconv.net`
/// on the tiny generated set (`tests/fixtures/make_point_clouds.py`: 8 clouds
/// of 10 to 29 voxels in an 8x10x12 grid) in shuffled batches of 2; the
/// train loss falls to under half in eight epochs (Adam at the section's
/// 1e-3: 0.071 -> 0.023) and the checkpoint is written. A file
/// whose features are too wide is refused, naming the tensor.
#[test]
fn train_feeds_point_clouds_to_a_sparse_conv_model() {
    let dir = temp_dir("train_points");
    let ckpt = dir.join("spconv.safetensors");
    let data = "tests/fixtures/points/spconv_tiny.safetensors";
    let model = [
        "train",
        "models/spconv.net",
        "--set",
        "depth=8",
        "--set",
        "height=10",
        "--set",
        "width=12",
        "--set",
        "batch=2",
        "--batch",
        "2",
        "--threads",
        "1",
        "--quiet",
    ];
    let ckpt_s = ckpt.to_str().unwrap();
    let args = [
        &model[..],
        &["--data", data, "--epochs", "8", "--out", ckpt_s],
    ]
    .concat();
    let (ok, out, err) = netc(&args);
    assert!(ok, "{err}");
    let losses: Vec<f64> = out
        .lines()
        .filter(|l| l.starts_with("epoch "))
        .map(|l| {
            let at = l.find("train loss ").unwrap() + "train loss ".len();
            l[at..].split_whitespace().next().unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(losses.len(), 8, "{out}");
    assert!(losses.iter().all(|l| l.is_finite()), "{out}");
    assert!(losses[7] < 0.5 * losses[0], "the loss does not fall: {out}");
    let (tensors, _) = netc_runtime::weights::read_safetensors_meta(&ckpt).unwrap();
    assert!(
        tensors.iter().any(|(n, _)| n == "net.8.weight"),
        "no weights in the checkpoint"
    );
    // The model's batch must match `--batch`.
    let mut wrong = args.clone();
    wrong[9] = "batch=1";
    let (ok, _, err) = netc(&wrong);
    assert!(
        !ok && err.contains("holds 1 point clouds per batch but the step takes 2"),
        "{err}"
    );
    // Batches of 3 over 8 clouds: the partial third batch is left out
    // (the step holds exactly the model's batch).
    let mut threes = args.clone();
    threes[9] = "batch=3";
    threes[11] = "3";
    let (ok, _, err) = netc(&threes);
    assert!(ok, "{err}");
    // Features of the wrong width name the tensor.
    let bad = dir.join("bad.safetensors");
    let (mut t, _) = netc_runtime::weights::read_safetensors_meta(&repo(data)).unwrap();
    let f = t.iter_mut().find(|(n, _)| n == "features").unwrap();
    let sites = f.1.shape()[0];
    f.1 = Tensor::from_f32(&[sites, 5], vec![0.0; sites * 5]).unwrap();
    let refs: Vec<(&str, &Tensor)> = t.iter().map(|(n, t)| (n.as_str(), t)).collect();
    netc_runtime::weights::write_safetensors_atomic(&bad, &refs, None).unwrap();
    let args = [
        &model[..],
        &["--data", bad.to_str().unwrap(), "--epochs", "1"],
    ]
    .concat();
    let (ok, _, err) = netc(&args);
    assert!(
        !ok && err.contains("tensor `features` is [142, 5]; the model takes [sites, 4]"),
        "{err}"
    );
}

#[test]
fn train_names_a_missing_data_tensor() {
    let dir = temp_dir("train_bad");
    let data = dir.join("d.safetensors");
    let x = Tensor::from_f32(&[4, 4, 9, 9], vec![0.0; 4 * 324]).unwrap();
    netc_runtime::weights::write_safetensors_atomic(&data, &[("x", &x)], None).unwrap();
    let (ok, _, err) = netc(&[
        "train",
        "models/eeg_mlp.net",
        "--data",
        data.to_str().unwrap(),
        "--epochs",
        "1",
        "--batch",
        "2",
    ]);
    assert!(!ok);
    assert!(err.contains("`y`"), "{err}");
}

#[test]
fn ctrl_c_stops_training_with_a_checkpoint_that_resumes() {
    use std::io::{BufRead, BufReader};
    let dir = temp_dir("train_sigint");
    let ckpt = dir.join("ccnn.safetensors");
    let ckpt_s = ckpt.to_str().unwrap().to_string();
    let args = |epochs: &str, resume: bool| {
        let mut a: Vec<String> = [
            "train",
            "models/eeg_ccnn.net",
            "--set",
            "bands=1",
            "--set",
            "grid=8",
            "--set",
            "classes=10",
            "--data",
            "tests/fixtures/digits/train.safetensors",
            "--batch",
            "16",
            "--threads",
            "1",
            "--quiet",
            "--verbose",
            "--epochs",
            epochs,
            "--out",
            &ckpt_s,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if resume {
            a.extend(["--resume".to_string(), ckpt_s.clone()]);
        }
        a
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_netc"))
        .args(args("50", false))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // The handler is installed before the first step compiles.
    for line in lines.by_ref() {
        if line.unwrap().contains("compiled the training step") {
            break;
        }
    }
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    assert!(!status.success(), "an interrupted run reports failure");
    assert!(
        status.code().is_some(),
        "it exits, it is not killed by the signal"
    );
    assert!(rest.iter().any(|l| l.contains("interrupted")), "{rest:?}");
    // The checkpoint holds the interrupted state; resuming finishes epoch 1.
    let a = args("1", true);
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    let (ok, out, err) = netc(&refs);
    assert!(ok, "{err}");
    assert!(out.contains("epoch 1/1"), "{out}");
}

#[test]
fn time_train_lists_forward_and_backward_ops_per_layer() {
    let (ok, out, err) = netc(&[
        "time",
        "models/eeg_mlp.net",
        "--train",
        "--batch",
        "4",
        "--reps",
        "2",
        "--threads",
        "1",
    ]);
    assert!(ok, "{err}");
    assert!(out.starts_with("eeg_mlp: training step, batch 4"), "{out}");
    for op in [
        "linear",
        "linear_grad_weight",
        "relu_grad",
        "cross_entropy_grad",
    ] {
        assert!(
            out.lines().any(|l| l.split_whitespace().nth(2) == Some(op)),
            "no `{op}` row in\n{out}"
        );
    }
}

/// `netc run --queries --docs` ranks every document for every query: the
/// JSON lists each query's hits best first, and their scores equal the
/// model's own `scores` output when the same texts are given as CSR
/// inputs (`--input q=... --input docs=...`, each query against the three
/// documents); a model that is not a two-tower scorer is refused by name.
#[test]
fn run_ranks_documents_with_the_scores_of_the_model() {
    use netc_runtime::text::bags::text_bags;
    use netc_runtime::text::vocab::TrigramIds;
    let dir = temp_dir("rank");
    let queries = ["terminal text editor", "web browser"];
    let docs = ["a text editor", "", "browser for the web"];
    std::fs::write(dir.join("q.txt"), queries.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("d.txt"), docs.join("\n") + "\n").unwrap();
    let (q, d, o) = (dir.join("q.txt"), dir.join("d.txt"), dir.join("o.json"));
    let (ok, _, err) = netc(&[
        "run",
        "models/dssm.net",
        "--model",
        "dssm",
        "--set",
        "trigrams=512",
        "--seed",
        "5",
        "--queries",
        q.to_str().unwrap(),
        "--docs",
        d.to_str().unwrap(),
        "--top",
        "3",
        "--output",
        o.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let json = std::fs::read_to_string(&o).unwrap();
    let lines: Vec<&str> = json.lines().filter(|l| l.contains("\"query\"")).collect();
    assert_eq!(lines.len(), 2, "{json}");

    let ids = TrigramIds::hashed(512).unwrap();
    let mut tensors = text_bags(&queries, &ids).bags.to_tensors("q");
    let repeated: Vec<&str> = queries.iter().flat_map(|_| docs).collect();
    tensors.extend(text_bags(&repeated, &ids).bags.to_tensors("docs"));
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let inputs = dir.join("in.safetensors");
    netc_runtime::weights::write_safetensors_atomic(&inputs, &named, None).unwrap();
    let (scores_path, given) = (dir.join("s.safetensors"), inputs.to_str().unwrap());
    let (ok, _, err) = netc(&[
        "run",
        "models/dssm.net",
        "--model",
        "dssm",
        "--set",
        "trigrams=512",
        "--set",
        "negatives=2",
        "--seed",
        "5",
        "--input",
        &format!("q={given}"),
        "--input",
        &format!("docs={given}"),
        "--output",
        scores_path.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let scores = netc_runtime::weights::read_safetensors(&scores_path).unwrap();
    let scores = scores[0].1.as_f32().unwrap();
    for (query, line) in lines.iter().enumerate() {
        let hits = line.split("\"hits\": [").nth(1).unwrap();
        let pairs: Vec<(usize, f32)> = hits
            .split('[')
            .filter_map(|p| p.split(']').next())
            .filter(|p| p.contains(','))
            .map(|p| {
                let (doc, score) = p.split_once(',').unwrap();
                (doc.trim().parse().unwrap(), score.trim().parse().unwrap())
            })
            .collect();
        assert_eq!(pairs.len(), 3, "{line}");
        let mut seen: Vec<usize> = pairs.iter().map(|p| p.0).collect();
        seen.sort_unstable();
        assert_eq!(seen, [0, 1, 2], "{line}");
        for w in pairs.windows(2) {
            assert!(w[0].1 >= w[1].1, "{line}");
        }
        for (doc, score) in pairs {
            let want = scores[query * 3 + doc];
            assert!(
                (score - want).abs() < 1e-4,
                "query {query} doc {doc}: {score} vs {want}"
            );
        }
    }

    let (ok, _, err) = netc(&[
        "run",
        "models/eeg_mlp.net",
        "--queries",
        q.to_str().unwrap(),
        "--docs",
        d.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("text input needs a query and a document input"),
        "{err}"
    );
}

/// `netc train --data X.tsv` trains a text model on real text (400
/// Debian package synopsis → description pairs): negatives drawn per
/// batch, the training loss falls over the epochs, the checkpoint's
/// directory is created; a TSV whose negatives do not match the model's
/// count is refused with both numbers.
#[test]
fn train_reads_text_pairs_from_tsv() {
    let dir = temp_dir("train-tsv");
    let out = dir.join("sub/dssm.safetensors");
    let (ok, stdout, err) = netc(&[
        "train",
        "models/dssm.net",
        "--model",
        "dssm",
        "--set",
        "trigrams=2000",
        "--data",
        "tests/fixtures/text/debian_sample.tsv",
        "--epochs",
        "3",
        "--batch",
        "32",
        "--quiet",
        "--threads",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let losses: Vec<f64> = stdout
        .lines()
        .chain(err.lines())
        .filter_map(|l| {
            l.split("train loss ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(losses.len(), 3, "{stdout}{err}");
    assert!(losses[2] < losses[0], "losses {losses:?}");
    assert!(out.exists());
    // `netc run --tsv` scores every line (4 negatives drawn from the other
    // lines): the trained model puts most positives first (chance: 1/5).
    let scores_path = dir.join("scores.safetensors");
    let (ok, _, err) = netc(&[
        "run",
        "models/dssm.net",
        "--model",
        "dssm",
        "--set",
        "trigrams=2000",
        "--weights",
        out.to_str().unwrap(),
        "--tsv",
        "tests/fixtures/text/debian_sample.tsv",
        "--output",
        scores_path.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let scores = netc_runtime::weights::read_safetensors(&scores_path).unwrap();
    assert_eq!(scores[0].1.shape(), [400, 5]);
    let rows: Vec<&[f32]> = scores[0].1.as_f32().unwrap().chunks(5).collect();
    let first = rows
        .iter()
        .filter(|r| r[1..].iter().all(|&s| s < r[0]))
        .count();
    assert!(first > 200, "positive first in {first} of 400 lines");

    // `--vocab`: the 2000 most frequent trigrams of the training texts,
    // saved beside the checkpoint in frequency order.
    let with_vocab = dir.join("vocab/dssm.safetensors");
    let (ok, _, err) = netc(&[
        "train",
        "models/dssm.net",
        "--model",
        "dssm",
        "--set",
        "trigrams=2000",
        "--data",
        "tests/fixtures/text/debian_sample.tsv",
        "--epochs",
        "1",
        "--batch",
        "32",
        "--quiet",
        "--vocab",
        "--out",
        with_vocab.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let vocab = std::fs::read_to_string(dir.join("vocab/dssm.trigrams.txt")).unwrap();
    let lines: Vec<&str> = vocab.lines().collect();
    assert_eq!(lines.len(), 2000);
    assert!(
        lines.iter().all(|t| t.chars().count() == 3),
        "{:?}",
        &lines[..5]
    );
    assert!(lines[..20].contains(&"#th"), "{:?}", &lines[..20]);

    let tsv = dir.join("two.tsv");
    std::fs::write(&tsv, "a query\ta document\tneg one\tneg two\n").unwrap();
    let (ok, _, err) = netc(&[
        "train",
        "models/dssm.net",
        "--model",
        "dssm",
        "--set",
        "trigrams=64",
        "--data",
        tsv.to_str().unwrap(),
        "--epochs",
        "1",
        "--batch",
        "1",
    ]);
    assert!(!ok);
    assert!(
        err.contains("lines give 2 negatives, model `dssm` scores 4 per query"),
        "{err}"
    );
}

/// A model whose loss cannot be differentiated is refused by `netc bench
/// --train` and `netc time --train` at the op, with the source line and
/// a hint, as a malformed file is.
#[test]
fn an_op_without_a_backward_rule_is_reported_at_its_source_line() {
    let file = "tests/malformed/train_op_without_backward_rule.net";
    for command in ["bench", "time"] {
        let (ok, _, err) = netc(&[command, file, "--batch", "2", "--train"]);
        assert!(!ok, "{command}: {err}");
        assert!(
            err.contains("train_op_without_backward_rule.net:5:42"),
            "{command}: no file:line:col in\n{err}"
        );
        assert!(err.contains("`clip_boxes` has no backward rule"), "{err}");
        assert!(err.contains("help: ops with backward rules"), "{err}");
    }
}
