//! The reference interpreter against PyTorch (float64 fixtures written by
//! tests/fixtures/make_reference.py).

use super::{run, Array};
use crate::elab::elaborate;
use crate::program::Program;
use netc_runtime::weights::read_safetensors;
use netc_runtime::{Storage, Tensor};
use std::collections::HashMap;
use std::path::Path;

fn to_array(t: &Tensor) -> Array {
    let data: Vec<f64> = match t.storage() {
        Storage::F64(v) => v.clone(),
        Storage::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
        Storage::I64(v) => v.iter().map(|&x| x as f64).collect(),
        Storage::I32(v) => v.iter().map(|&x| f64::from(x)).collect(),
        Storage::U8(v) | Storage::Bool(v) => v.iter().map(|&x| f64::from(x)).collect(),
    };
    Array::new(t.shape(), data)
}

/// Runs `tests/fixtures/reference/<stem>.net` on the inputs stored in
/// `<stem>.safetensors` (`input.<name>`, parameters under their paths) and
/// compares every output with `expected.<name>`: equal shapes and a max
/// error below 1e-10 relative to the largest expected magnitude (exact for
/// integer results, which are small whole numbers).
fn check_fixture(stem: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/reference");
    let (program, diags) = Program::load(&root.join(format!("{stem}.net")));
    assert!(diags.is_empty(), "{diags:?}");
    let g = elaborate(&program, program.model(None).unwrap(), &[]).unwrap();
    let tensors: HashMap<String, Array> =
        read_safetensors(&root.join(format!("{stem}.safetensors")))
            .unwrap()
            .into_iter()
            .map(|(k, t)| (k, to_array(&t)))
            .collect();
    let inputs: Vec<(&str, Array)> = g
        .inputs
        .iter()
        .map(|(name, _)| (name.as_str(), tensors[&format!("input.{name}")].clone()))
        .collect();
    let outputs = run(&g, &inputs, &tensors).unwrap_or_else(|e| panic!("{stem}: {e}"));
    assert_eq!(outputs.len(), g.outputs.len());
    for (name, got) in outputs {
        let want = &tensors[&format!("expected.{name}")];
        assert_eq!(got.shape, want.shape, "{stem}.{name}");
        let err = got
            .data
            .iter()
            .zip(&want.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        let scale = want.data.iter().map(|v| v.abs()).fold(1e-12, f64::max);
        assert!(
            err / scale < 1e-10,
            "{stem}.{name}: max error {err} (scale {scale})\n got {:?}\nwant {:?}",
            got.data,
            want.data
        );
    }
}

/// Strided, dilated and grouped conv, batch/group/layer norm, max pool with
/// `ceil_mode`, average pool without padding counts, adaptive pool, GELU,
/// softmax, cross-entropy with label smoothing, multi-margin.
#[test]
fn mixed_dense_model_matches_pytorch_in_float64() {
    check_fixture("mixed");
}

#[test]
fn comparisons_casts_stack_argmax_and_losses_match_pytorch() {
    check_fixture("misc");
}

#[test]
fn attention_timestep_embedding_and_resizing_match_pytorch() {
    check_fixture("attention");
}

#[test]
fn embeddings_sparse_bags_cosine_dssm_and_lstms_match_pytorch() {
    check_fixture("text");
}

#[test]
fn signal_ops_match_scipy_and_pytorch() {
    check_fixture("signal");
}

#[test]
fn detection_ops_and_losses_match_torchvision() {
    check_fixture("detect");
}

#[test]
fn sparse_convs_match_dense_conv3d_on_the_active_sites() {
    check_fixture("sparse");
}

#[test]
fn missing_parameters_and_unknown_ops_are_errors_not_panics() {
    let (program, _) = Program::from_text(
        Path::new("t.net"),
        "model m() { input x: f32[N, 2]  output y = x |> fc: linear(3) }",
    );
    let g = elaborate(&program, program.model(None).unwrap(), &[]).unwrap();
    let err = run(&g, &[("x", Array::zeros(&[4, 2]))], &HashMap::new()).unwrap_err();
    assert!(err.contains("parameter `fc.weight` not given"), "{err}");
    let err = run(&g, &[("x", Array::zeros(&[4, 3]))], &HashMap::new()).unwrap_err();
    assert!(err.contains("expected f32[N, 2]"), "{err}");
}
