//! `sum`, `mean` and `expand` compiled (f32) vs the reference interpreter
//! (f64): leading, per-channel, trailing, middle and all dims, keepdim or
//! not, batch 1 and more, 1 and 2 threads.

use super::super::oracle::data;
use super::super::train_oracle::{append, check_rel};
use super::ReduceKernel;
use crate::ir::{Attr, Dim, Op};
use crate::testing::model;

#[test]
fn sums_and_means_match_the_interpreter() {
    for (shape, dims) in [
        (vec![8, 3, 5, 7], "[0, 2, 3]"),
        (vec![1, 3, 5, 7], "[0, 2, 3]"),
        (vec![3, 16, 28, 28], "[0, 2, 3]"),
        (vec![6, 10], "0"),
        (vec![4, 3, 10], "[0, 1]"),
        (vec![5, 2049], "1"),
        (vec![2, 3, 4, 5], "[1, 3]"),
        (vec![2, 3, 4, 5], "2"),
        (vec![2, 3, 4, 5], "[0, 1, 2, 3]"),
        (vec![7, 1, 3], "[0, 1]"),
        (vec![37, 64], "0"),
        (vec![3000, 7], "0"),
        (vec![2, 5, 3, 8], "0"),
        (vec![5, 4, 6], "1"),
        (vec![5, 4, 3], "1"),
        (vec![5, 8, 9], "[0, 2]"),
        (vec![2, 4, 3, 3], "[0, 2, 3]"),
        // Channels-last bias gradients: blocks of 64 and of 50 rows.
        (vec![4, 8, 8, 20], "[0, 1, 2]"),
        (vec![2, 10, 25, 17], "[0, 1, 2]"),
    ] {
        let dimsz = shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        for op in ["sum", "mean"] {
            for keep in [false, true] {
                let g = model(&format!(
                    "input x: f32[{dimsz}]\noutput y = {op}(x, {dims}, keepdim = {keep})"
                ))
                .unwrap();
                let n: usize = shape.iter().product();
                let inputs = vec![("x", shape.clone(), data(n, 0.7, 3.0))];
                check_rel(&g, &inputs, 1e-5, &format!("{op} {shape:?} over {dims}"));
            }
        }
    }
}

#[test]
fn expand_matches_the_interpreter() {
    for (from, to) in [
        (vec![1, 3, 1, 1], vec![4, 3, 5, 7]),
        (vec![3, 1], vec![2, 3, 6]),
        (vec![7], vec![2, 3, 7]),
        (vec![2, 1, 5], vec![2, 4, 5]),
        (vec![1], vec![9]),
        (vec![2, 3], vec![2, 3]),
    ] {
        let dims = from
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let mut g = model(&format!("input x: f32[{dims}]\noutput y = relu(x)")).unwrap();
        let x = g.inputs[0].1;
        let shape = Attr::Dims(to.iter().map(|&d| Dim::known(d as i64)).collect());
        append(
            &mut g,
            Op::new("expand").with("shape", shape),
            vec![x],
            std::slice::from_ref(&to),
        );
        let n: usize = from.iter().product();
        check_rel(
            &g,
            &[("x", from.clone(), data(n, 0.2, 2.0))],
            1e-6,
            &format!("{from:?} -> {to:?}"),
        );
    }
}

#[test]
fn per_channel_sums_run_in_two_kernels() {
    let two = |shape: &[usize], dims: &[usize]| ReduceKernel::new(shape, dims, None).around_kept();
    assert_eq!(two(&[8, 16, 5, 7], &[0, 2, 3]), Some([8, 16, 35]));
    assert_eq!(two(&[5, 8, 9], &[0, 2]), Some([5, 8, 9]));
    // Too few channels for columns mode, one image, other dims.
    assert_eq!(two(&[8, 3, 5, 7], &[0, 2, 3]), None);
    assert_eq!(two(&[1, 16, 5, 7], &[0, 2, 3]), None);
    assert_eq!(two(&[2, 3, 4, 5], &[1, 3]), None);
    assert_eq!(two(&[6, 10], &[0]), None);
}

#[test]
fn long_leading_sums_run_over_blocks_of_rows() {
    let blocks =
        |shape: &[usize], dims: &[usize]| ReduceKernel::new(shape, dims, None).row_blocks();
    assert_eq!(blocks(&[4, 8, 8, 20], &[0, 1, 2]), Some([256, 20, 64]));
    assert_eq!(blocks(&[2, 10, 25, 17], &[0, 1, 2]), Some([500, 17, 50]));
    // Few rows, narrow rows, no divisor between 16 and 64 (509 is prime).
    assert_eq!(blocks(&[100, 20], &[0]), None);
    assert_eq!(blocks(&[512, 8], &[0]), None);
    assert_eq!(blocks(&[509, 32], &[0]), None);
}
