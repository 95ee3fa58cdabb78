//! The point-cloud format: loading, collating a batch, and the errors of
//! bad files, each naming its tensor.

use super::PointSpec;
use crate::train::data::DataSet;
use crate::{Storage, Tensor};

fn spec() -> PointSpec {
    PointSpec {
        coords: "coords".into(),
        grid: [2, 3, 4],
        features: vec![("features".into(), 2)],
    }
}

/// Three clouds of 2, 0 and 1 sites; the features count the rows up.
fn tensors() -> Vec<(String, Tensor)> {
    let offsets = i64s(&[4], vec![0, 2, 2, 3]);
    let coords = i32s(&[3, 3], vec![0, 0, 0, 1, 2, 3, 1, 1, 1]);
    let features = Tensor::from_f32(&[3, 2], (0..6).map(|v| v as f32).collect()).unwrap();
    let target = Tensor::from_f32(&[3, 1], vec![10.0, 11.0, 12.0]).unwrap();
    vec![
        ("coords.offsets".into(), offsets),
        ("coords".into(), coords),
        ("features".into(), features),
        ("target".into(), target),
    ]
}

fn i32s(shape: &[usize], v: Vec<i32>) -> Tensor {
    Tensor::new(shape, Storage::I32(v)).unwrap()
}

fn i64s(shape: &[usize], v: Vec<i64>) -> Tensor {
    Tensor::new(shape, Storage::I64(v)).unwrap()
}

const NAMES: [&str; 3] = ["features", "coords", "target"];

fn load(t: Vec<(String, Tensor)>) -> Result<DataSet, String> {
    DataSet::from_points("<memory>", t, &spec(), &NAMES).map_err(|e| e.to_string())
}

/// `tensors()` with tensor `name` replaced.
fn with(name: &str, t: Tensor) -> Vec<(String, Tensor)> {
    let mut all = tensors();
    all.iter_mut().find(|(n, _)| n == name).unwrap().1 = t;
    all
}

#[test]
fn a_batch_concatenates_its_clouds_and_renumbers_the_batch_index() {
    let d = load(tensors()).unwrap();
    assert_eq!(d.len(), 3);
    assert!(d.is_sites(0) && d.is_sites(1) && !d.is_sites(2));
    let mut rows = Vec::new();
    // Sample 2 first (batch index 0), then the empty one, then sample 0.
    assert_eq!(d.gather_sites(1, &[2, 1, 0], &mut rows).unwrap(), 3);
    assert_eq!(rows, [0., 1., 1., 1., 2., 0., 0., 0., 2., 1., 2., 3.]);
    assert_eq!(d.gather_sites(0, &[2, 1, 0], &mut rows).unwrap(), 3);
    assert_eq!(rows, [4., 5., 0., 1., 2., 3.]);
    let mut target = [0.0; 3];
    d.gather(2, &[2, 1, 0], &mut target).unwrap();
    assert_eq!(target, [12.0, 11.0, 10.0]);
    // A per-site column is not gathered as rows per sample.
    let e = d.gather(0, &[0], &mut [0.0; 2]).unwrap_err().to_string();
    assert!(e.contains("gather_sites"), "{e}");
}

#[test]
fn bad_files_name_the_tensor() {
    let cases: Vec<(Vec<(String, Tensor)>, &str)> = vec![
        (
            tensors()
                .into_iter()
                .filter(|(n, _)| n != "coords.offsets")
                .collect(),
            "no tensor `coords.offsets`",
        ),
        (
            tensors()
                .into_iter()
                .filter(|(n, _)| n != "features")
                .collect(),
            "no tensor `features`",
        ),
        (
            with("coords.offsets", i64s(&[4], vec![0, 2, 1, 3])),
            "`coords.offsets` decreases at sample 1: 1 after 2",
        ),
        (
            with("coords.offsets", i64s(&[4], vec![1, 2, 2, 3])),
            "`coords.offsets` starts at 1",
        ),
        (
            with("coords.offsets", i64s(&[3], vec![0, 2, 2])),
            "`coords.offsets` ends at 2, but `coords` holds 3 sites",
        ),
        (
            with(
                "coords.offsets",
                Tensor::from_f32(&[4], vec![0.0, 2.0, 2.0, 3.0]).unwrap(),
            ),
            "`coords.offsets` is f32; it must be i32 or i64",
        ),
        (
            with("coords", i32s(&[3, 3], vec![0, 0, 0, 1, 3, 3, 1, 1, 1])),
            "`coords` row 1 (sample 0) is [1, 3, 3], outside the model's grid [2, 3, 4]",
        ),
        (
            with("coords", i32s(&[3, 3], vec![0, 0, -1, 1, 2, 3, 1, 1, 1])),
            "`coords` row 0 (sample 0) is [0, 0, -1], outside",
        ),
        (
            with("coords", i32s(&[3, 3], vec![1, 1, 1, 1, 1, 1, 1, 1, 1])),
            "`coords` holds site [1, 1, 1] twice in sample 0 (rows 0 and 1)",
        ),
        (
            with("coords", i32s(&[3, 4], vec![0; 12])),
            "`coords` is [3, 4]; it must be [sites, 3]",
        ),
        (
            with("features", Tensor::from_f32(&[3, 3], vec![0.0; 9]).unwrap()),
            "`features` is [3, 3]; the model takes [sites, 2]",
        ),
        (
            with("features", Tensor::from_f32(&[2, 2], vec![0.0; 4]).unwrap()),
            "`features` is [2, 2]; the model takes [sites, 2] and the coordinates hold 3 sites",
        ),
        (
            with("target", Tensor::from_f32(&[2, 1], vec![0.0; 2]).unwrap()),
            "tensor `target` has 2 samples but `features` has 3",
        ),
    ];
    for (t, want) in cases {
        let e = load(t).unwrap_err();
        assert!(e.contains(want), "wanted {want:?} in {e:?}");
    }
}
