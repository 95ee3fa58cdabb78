//! Elaboration tests: labels and paths, sharing, symbolic sizes, train
//! sections, and that errors name what the user needs.

use crate::diag::render_all;
use crate::elab::elaborate;
use crate::ir::Graph;
use crate::program::Program;
use crate::testing::out_type;
use std::path::Path;

fn build(src: &str) -> Result<Graph, String> {
    let (program, diags) = Program::from_text(Path::new("t.net"), src);
    if !diags.is_empty() {
        return Err(render_all(&diags, &program.sources));
    }
    let model = program.model(None).map_err(|e| e.to_string())?;
    elaborate(&program, model, &[]).map_err(|d| render_all(&d, &program.sources))
}

#[test]
fn labelled_block_calls_prefix_parameter_paths() {
    let g = build(
        "block mlp(x, width: int) { return x |> fc1: linear(width) |> relu |> fc2: linear(width) }
         model m() { input x: f32[N, 3]
                     output y = x |> enc.layer{1 + 1}: mlp(4) }",
    )
    .unwrap();
    let paths: Vec<&str> = g.params.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "enc.layer2.fc1.weight",
            "enc.layer2.fc1.bias",
            "enc.layer2.fc2.weight",
            "enc.layer2.fc2.bias"
        ]
    );
    assert_eq!(out_type(&g, "y"), "f32[N, 4]");
}

#[test]
fn shared_labels_reuse_parameters_and_repeats_without_shared_fail() {
    let g = build(
        "model m() { input a: f32[N, 8]  input b: f32[N, 8]
                     qa = a |> shared tower: linear(4)
                     qb = b |> shared tower: linear(4)
                     output s = qa + qb }",
    )
    .unwrap();
    assert_eq!(g.params.len(), 2, "one weight and one bias, used twice");
    let linear_nodes: Vec<_> = g.nodes.iter().filter(|n| n.op.name == "linear").collect();
    assert_eq!(linear_nodes.len(), 2);
    assert_eq!(linear_nodes[0].inputs[1], linear_nodes[1].inputs[1]);

    let err = build(
        "model m() { input a: f32[N, 8]
                     qa = a |> tower: linear(4)
                     output s = qa |> tower: linear(4) }",
    )
    .unwrap_err();
    assert!(
        err.contains("parameter path `tower.weight` is defined twice"),
        "{err}"
    );
    assert!(err.contains("shared"), "the hint mentions `shared`: {err}");
}

#[test]
fn symbolic_sizes_stay_linear() {
    let g = build(
        "model m(segments = 60) { input x: f32[N, segments, 4, 9, 9]
                                  output y = reshape(x, [-1, 4, 9, 9])
                                  output z = x |> flatten }",
    )
    .unwrap();
    assert_eq!(out_type(&g, "y"), "f32[60*N, 4, 9, 9]");
    assert_eq!(out_type(&g, "z"), "f32[N, 19440]");
}

#[test]
fn shape_errors_show_both_shapes_and_their_origins() {
    let err = build(
        "model m() { input x: f32[N, 3, 8, 8]
                     h = x |> c: conv2d(4, k = 3)
                     output y = h |> fc: linear(10) |> matmul(x) }",
    )
    .unwrap_err();
    assert!(
        err.contains("f32[N, 4, 6, 10]") && err.contains("f32[N, 3, 8, 8]"),
        "{err}"
    );
    assert!(err.contains("t.net:3:"), "{err}");
}

#[test]
fn independent_errors_are_all_reported() {
    let err = build(
        "model m() { input x: f32[N, 3]
                     a = x |> nope
                     b = x |> linear(3)
                     c = a + b
                     output y = x |> f: linear(2, bais = false) }",
    )
    .unwrap_err();
    assert!(err.contains("unknown op or block `nope`"), "{err}");
    assert!(err.contains("needs a label"), "{err}");
    assert!(err.contains("did you mean `bias`"), "{err}");
    assert!(
        err.contains("3 errors found"),
        "poisoned `c` adds nothing: {err}"
    );
}

#[test]
fn train_section_builds_loss_and_optimizer() {
    let g = build(
        "model m() { input x: f32[N, 3]  output logits = x |> fc: linear(2) }
         train m { label y: i64[N]
                   loss = 0.5 * cross_entropy(logits, y) + 0.5 * cross_entropy(logits, y, label_smoothing = 0.1)
                   optimizer = sgd(lr = 0.1, momentum = 0.9, nesterov = true)
                   schedule = cosine(10, warmup = 2) }",
    )
    .unwrap();
    let t = g.train.as_ref().expect("train spec");
    assert_eq!(g.type_text(g.ty(t.loss)), "f32[]");
    assert_eq!(t.optimizer.kind, "sgd");
    assert_eq!(t.schedule.as_ref().map(|s| s.kind.as_str()), Some("cosine"));
    assert!(g.nodes.iter().filter(|n| n.train_only).count() >= 3);
}

#[test]
fn data_dependent_input_sizes_keep_their_bound() {
    let g = build("model m() { input boxes: f32[K <= 1000, 4]  output b = boxes * 2.0 }").unwrap();
    let text = crate::ir::print_graph(&g);
    assert!(text.contains("symbol K <= 1000"), "{text}");
    assert_eq!(out_type(&g, "b"), "f32[K, 4]");
}

/// A DenseNet-style block whose list grows by one item per iteration, so
/// `n` iterations copy about n²/2 items.
fn growing_list(n: usize) -> String {
    format!(
        "block grow(x, n: int) {{
             features = [x]
             for i in 0..n {{ features = features + [x] }}
             return concat(features, dim = 1)
         }}
         model m() {{ input x: f32[N, 2]  output y = grow(x, {n}) }}"
    )
}

#[test]
fn quadratic_list_growth_spends_the_budget_with_one_error() {
    // 3000 iterations copy 4.5 million items, over the budget.
    let err = build(&growing_list(3000)).unwrap_err();
    assert_eq!(
        err.matches("elaboration takes too many steps").count(),
        1,
        "{err}"
    );
    assert!(
        err.contains("features + [x]"),
        "points at the growing list:\n{err}"
    );
    // The same block well inside the budget elaborates.
    let g = build(&growing_list(300)).unwrap();
    assert_eq!(out_type(&g, "y"), "f32[N, 602]");
}

#[test]
fn a_hundred_thousand_labelled_layers_elaborate() {
    // Declaring a parameter looks its path up in an index, not a scan, so
    // deep stacks elaborate in linear time.
    let g = build(
        "block tower(x, n: int) { for i in 0..n { x = l{i}: linear(x, 2) }  return x }
         model m() { input x: f32[N, 2]  output y = tower(x, 100000) }",
    )
    .unwrap();
    assert_eq!(g.params.len(), 200_000);
    assert_eq!(g.params[199_999].path, "l99999.bias");
}
