//! Tests of the training-graph builder: every dense seed model gets a
//! complete backward pass, and the printed training graph of a small
//! model is pinned by a snapshot.

use super::*;
use crate::elab::Value;
use std::path::Path;

fn model_graph(file: &str, model: &str, set: &[(&str, i64)]) -> Graph {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models")
        .join(file);
    let args: Vec<(String, Value)> = set
        .iter()
        .map(|(k, v)| (k.to_string(), Value::Int(*v)))
        .collect();
    crate::session::load_model(&path, Some(model), &args).unwrap()
}

#[test]
fn every_dense_seed_model_gets_a_gradient_for_every_parameter() {
    let cases = [
        ("eeg_ccnn.net", "eeg_ccnn", vec![]),
        ("eeg_mlp.net", "eeg_mlp", vec![]),
        ("eeg_svm.net", "eeg_svm", vec![]),
        (
            "densenet.net",
            "densenet121",
            vec![("height", 32), ("width", 32)],
        ),
        ("vggish.net", "vggish", vec![]),
    ];
    for (file, model, set) in cases {
        let g = model_graph(file, model, &set);
        let t = training_graph(&g).unwrap_or_else(|e| panic!("{model}: {e}"));
        let trained = g.params.iter().filter(|p| !p.buffer).count();
        assert_eq!(
            t.grads.len(),
            trained,
            "{model}: one gradient per trained parameter"
        );
        for &(pi, oi) in &t.grads {
            assert_eq!(t.graph.outputs[oi].0, format!("grad:{}", g.params[pi].path));
            assert_eq!(
                t.graph.ty(t.graph.outputs[oi].1).shape,
                g.params[pi].ty.shape
            );
        }
        assert_eq!(t.graph.outputs[0].0, "loss");
    }
}

#[test]
fn batch_norm_state_and_dropout_seed_are_wired() {
    let g = model_graph(
        "densenet.net",
        "densenet121",
        &[("height", 32), ("width", 32)],
    );
    let t = training_graph(&g).unwrap();
    let norms = g.nodes.iter().filter(|n| n.op.name == "batch_norm").count();
    assert_eq!(
        t.state.len(),
        2 * norms,
        "running mean and var of every batch norm"
    );
    assert!(!t.uses_seed);
    let g = model_graph("eeg_ccnn.net", "eeg_ccnn", &[]);
    let t = training_graph(&g).unwrap();
    assert!(t.uses_seed);
    assert!(t.graph.inputs.iter().any(|(n, _)| n == SEED_INPUT));
    let keys = dropout_keys(&t.graph);
    assert_eq!(keys.len(), 2, "the forward dropout and its backward");
    assert!(keys
        .iter()
        .all(|k| *k == Some(crate::ir::Attr::Str("dropout0".into()))));
}

/// A `dropout(0.0)` keeps every element: the training graph has no
/// dropout kernel for it (the SD UNet has 13 such calls) and needs no
/// seed, while a later dropout keeps the key its position gives it.
#[test]
fn a_dropout_of_zero_is_the_identity_in_training() {
    let g = crate::testing::program(
        "model m { input x: f32[N, 3]\n output y = x |> a: linear(4) |> dropout(0.0) \
         |> b: linear(2) }\n\
         train m { label t: f32[N, 2]\n loss = mse(y, t)\n optimizer = sgd(lr = 0.1) }",
    )
    .unwrap();
    let t = training_graph(&g).unwrap();
    assert!(!t.uses_seed);
    assert!(t.graph.nodes.iter().all(|n| n.op.name != "dropout_train"));
    assert_eq!(t.grads.len(), 4, "both layers' weights and biases");
    let g = crate::testing::program(
        "model m { input x: f32[N, 3]\n output y = x |> a: linear(4) |> dropout(0.0) \
         |> b: linear(2) |> dropout(0.5) }\n\
         train m { label t: f32[N, 2]\n loss = mse(y, t)\n optimizer = sgd(lr = 0.1) }",
    )
    .unwrap();
    let t = training_graph(&g).unwrap();
    assert_eq!(
        dropout_keys(&t.graph),
        vec![Some(crate::ir::Attr::Str("dropout1".into())); 2]
    );
}

/// The mask keys of `g`'s `dropout_train` nodes, in node order.
fn dropout_keys(g: &Graph) -> Vec<Option<crate::ir::Attr>> {
    g.nodes
        .iter()
        .filter(|n| n.op.name == "dropout_train")
        .map(|n| n.op.attr("key").cloned())
        .collect()
}

#[test]
fn a_model_without_train_section_is_an_error() {
    let g = crate::testing::model("input x: f32[N, 3]\noutput y = x |> l: linear(2)").unwrap();
    let e = training_graph(&g).unwrap_err();
    assert!(e.message.contains("no `train` section"), "{e}");
    assert!(e.diagnostic().is_none(), "no op to point at");
}

#[test]
fn an_op_without_rule_is_named() {
    let g = crate::testing::program(
        "model m { input x: f32[N, 3]\n output y = x |> l: linear(2) |> abs }\n\
         train m { label t: f32[N, 2]\n loss = mse(y, t)\n optimizer = sgd(lr = 0.1) }",
    )
    .unwrap();
    let e = training_graph(&g).unwrap_err();
    assert!(e.message.contains("`abs` has no backward rule"), "{e}");
    assert!(
        e.hint.is_some_and(|h| h.contains("linear")),
        "the hint lists the rules"
    );
    assert!(e.span.is_some(), "the error points at the op");
}

#[test]
fn mlp_training_graph_snapshot() {
    let g = model_graph("eeg_mlp.net", "eeg_mlp", &[]);
    let t = training_graph(&g).unwrap();
    insta::assert_snapshot!(crate::ir::print_graph(&t.graph));
}

/// A label masked by the same `boolean_mask` as a prediction needs no
/// gradient: the masked prediction does, the masked label does not.
#[test]
fn a_label_masked_beside_a_prediction_needs_no_gradient() {
    let g = crate::testing::program(
        "model m {\n    input x: f32[N, 3]\n    output y = x |> l: linear(2)\n}\n\
         train m {\n    label t: f32[N, 2]\n    label keep: bool[N]\n    \
         p, q = boolean_mask([y, t], keep)\n    loss = mse(p, q)\n    \
         optimizer = sgd(lr = 0.1)\n}\n",
    )
    .unwrap();
    let active = reverse::requires_grad(&g, &g.nodes);
    let mask = g
        .nodes
        .iter()
        .find(|n| n.op.name == "boolean_mask")
        .expect("the model masks");
    assert!(active.contains(&mask.outputs[0]), "the masked prediction");
    assert!(!active.contains(&mask.outputs[1]), "the masked label");
}
