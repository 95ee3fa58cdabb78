//! `differential_entropy`, `grid_map` and the whole EEG feature model
//! compiled (f32) vs the reference interpreter (f64): last-dim and
//! middle-dim segments, odd sizes, signals with a large mean, 1 and 2
//! threads.

use super::super::oracle::{compiled, data, reference};
use super::super::train_oracle::{check_rel, rel_l2};
use crate::testing::model;

/// `data` shifted by `offset` and scaled per segment so that variances
/// differ from segment to segment.
fn signal(n: usize, seed: f32, offset: f32) -> Vec<f32> {
    data(n, seed, 1.0)
        .iter()
        .enumerate()
        .map(|(i, v)| offset + v * (1.0 + (i / 7 % 5) as f32))
        .collect()
}

#[test]
fn differential_entropy_matches_the_interpreter() {
    for (shape, segment, dim, offset) in [
        (vec![3, 5, 63], 9, -1, 0.0),
        (vec![2, 4, 32, 256], 128, -1, 0.0),
        (vec![3, 2, 4100], 1025, 2, 5.0),
        (vec![1, 7], 7, 1, -3.0),
        (vec![3, 12, 5], 4, 1, 0.5),
        (vec![20, 3, 2], 5, 0, 1.0),
    ] {
        let dims = shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let g = model(&format!(
            "input x: f32[{dims}]\noutput y = differential_entropy(x, {segment}, dim = {dim})"
        ))
        .unwrap();
        let n: usize = shape.iter().product();
        let inputs = vec![("x", shape.clone(), signal(n, 0.3, offset))];
        check_rel(
            &g,
            &inputs,
            1e-5,
            &format!("DE {shape:?} / {segment} on {dim}"),
        );
    }
}

#[test]
fn grid_map_matches_the_interpreter() {
    for (shape, cells, grid) in [
        (vec![3, 2, 3], "[[0, 0], [1, 1], [2, 2]]", 3),
        (vec![7, 5], "[[0, 3], [1, 0], [3, 3], [2, 1], [0, 0]]", 4),
        (vec![1, 1], "[[0, 0]]", 1),
        (vec![300, 2], "[[1, 0], [0, 1]]", 2),
    ] {
        let dims = shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let g = model(&format!(
            "input x: f32[{dims}]\noutput y = grid_map(x, {cells}, grid = {grid})"
        ))
        .unwrap();
        let n: usize = shape.iter().product();
        let inputs = vec![("x", shape.clone(), data(n, 0.9, 2.0))];
        // Exact: every cell is a copied input or an exact zero.
        check_rel(&g, &inputs, 0.0, &format!("grid_map {shape:?}"));
    }
}

/// Binary ops whose operands broadcast with a symbolic batch (the
/// baseline subtraction `[N, B, C, S] - [N, B, C, 1]`), either side
/// broadcast or both, go through the broadcast fallback.
#[test]
fn symbolic_batch_broadcasts_match_the_interpreter() {
    for (a, b, expr) in [
        ("[N, 3, 5]", "[N, 3, 1]", "a - b"),
        ("[N, 3, 5]", "[N, 3, 1]", "b / (a * a + 1.0)"),
        ("[N, 1, 5]", "[3, 1]", "maximum(a, b)"),
    ] {
        let g = model(&format!(
            "input a: f32{a}\ninput b: f32{b}\noutput y = {expr}"
        ))
        .unwrap();
        let n = 3;
        let size = |s: &str| -> (Vec<usize>, usize) {
            let dims: Vec<usize> = s
                .trim_matches(['[', ']'])
                .split(", ")
                .map(|d| d.parse().unwrap_or(n))
                .collect();
            let len = dims.iter().product();
            (dims, len)
        };
        let ((sa, na), (sb, nb)) = (size(a), size(b));
        let (xa, xb) = (data(na, 0.2, 2.0), data(nb, 1.3, 3.0));
        let inputs = vec![("a", sa, xa.clone()), ("b", sb, xb.clone())];
        let want = reference(&g, &inputs, &[]);
        for threads in [1, 2] {
            let got = compiled(&g, &[("N", n as i64)], &[&xa, &xb], &[], threads);
            let err = rel_l2(&got[0], &want[0]);
            assert!(err <= 1e-6, "{expr} on {a}, {b}: rel L2 {err:e}");
        }
    }
}

/// The EEG feature model (FIR filter bank as conv1d, DE, baseline mean,
/// slices, permute, grid_map) at small odd-ish sizes, lowered for N = 3.
#[test]
fn eeg_feature_model_matches_the_interpreter() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/eeg_de_features.net");
    let (prog, diags) = crate::program::Program::load(&path);
    assert!(diags.is_empty());
    let int = |k: &str, v: i64| (k.to_string(), crate::elab::Value::Int(v));
    let sets = [
        int("samples", 448),
        int("segment", 64),
        int("taps", 33),
        int("baseline", 2),
    ];
    let g = crate::elab::elaborate(&prog, prog.model(None).unwrap(), &sets).unwrap();
    let n = 3;
    let x: Vec<f32> = signal(n * 32 * 448, 0.1, 0.2);
    let inputs = vec![("eeg", vec![n, 32, 448], x.clone())];
    let want = reference(&g, &inputs, &[]);
    assert_eq!(want[0].len(), n * 5 * 4 * 81);
    for threads in [1, 2] {
        let got = compiled(&g, &[("N", n as i64)], &[&x], &[], threads);
        let err = rel_l2(&got[0], &want[0]);
        assert!(err <= 1e-5, "{threads} threads: rel L2 {err:e}");
    }
}
