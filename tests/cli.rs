//! End-to-end tests of the `netc` binary: exit codes and what it prints.

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
fn compile_emits_clif_of_elementwise_kernels() {
    let (ok, out, err) = netc(&[
        "compile",
        "models/vggish.net",
        "--model",
        "vggish_postprocess",
        "--emit",
        "clif",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("; model vggish_postprocess: 2 elementwise kernels"),
        "{out}"
    );
    assert!(out.contains("; kernel ew.f32(Full;flat) clamp("), "{out}");
    assert!(out.contains("load.f32x4"), "{out}");
    assert!(
        out.contains("nodes not covered by the back end yet"),
        "{out}"
    );
    let (ok, _, err) = netc(&["compile", "models/vggish.net", "--emit", "clif"]);
    assert!(!ok && err.contains("choose one with --model"), "{err}");
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
