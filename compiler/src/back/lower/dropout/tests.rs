//! `dropout_train` compiled (f32) vs the reference interpreter (f64) and
//! the counter generator: the mask matches exactly (no mismatched
//! element), kept values within f32 rounding, 1 and 2 threads.

use super::super::oracle::compiled;
use super::super::train_oracle::{append, rel_l2};
use crate::interp::{self, Array};
use crate::ir::{Attr, Op};
use crate::testing::model;
use netc_runtime::counter;
use std::collections::HashMap;

#[test]
fn dropout_mask_matches_the_counter_generator_exactly() {
    // Seeds whose halves are ordinary floats, zeros, subnormals and
    // negative or infinite patterns: the kernel reads bits, not values.
    let seeds: [u64; 4] = [
        0x0123_4567_3fab_cdef,
        0x0000_0001_0000_0000,
        0xff80_0000_8000_0001,
        0x4049_0fdb_c2f6_e979,
    ];
    for (shape, p, key) in [
        (vec![4, 3, 17, 5], 0.5, "dropout0"),
        (vec![1, 1000], 0.1, "dropout7"),
        (vec![3, 333], 0.9, "dropout12"),
        (vec![2, 50], 0.0, "dropout1"),
        (vec![2, 50], 1.0, "dropout1"),
    ] {
        let dims = shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let mut g = model(&format!(
            "input x: f32[{dims}]\ninput seed: f32[2]\noutput y = relu(x)"
        ))
        .unwrap();
        let (x, s) = (g.inputs[0].1, g.inputs[1].1);
        let op = Op::new("dropout_train")
            .with("p", Attr::Float(p))
            .with("key", Attr::Str(key.into()));
        append(&mut g, op, vec![x, s], std::slice::from_ref(&shape));
        let n: usize = shape.iter().product();
        let xv: Vec<f32> = (0..n).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect();
        for seed in seeds {
            let sv = [
                f32::from_bits(seed as u32),
                f32::from_bits((seed >> 32) as u32),
            ];
            for threads in [1, 2] {
                let got = &compiled(&g, &[], &[&xv, &sv], &[], threads)[0];
                let mismatches = (0..n)
                    .filter(|&i| (got[i] != 0.0) != (counter::unit(seed, key, i as u64) >= p))
                    .count();
                assert_eq!(
                    mismatches, 0,
                    "{shape:?} p {p} seed {seed:x}, {threads} threads"
                );
                let want: Vec<f64> = (0..n)
                    .map(|i| {
                        let keep = counter::unit(seed, key, i as u64) >= p;
                        if keep {
                            f64::from(xv[i]) / (1.0 - p)
                        } else {
                            0.0
                        }
                    })
                    .collect();
                assert!(rel_l2(got, &want) <= 1e-6, "values {shape:?} p {p}");
            }
            // The interpreter agrees (seeds whose halves are not
            // signalling NaNs survive its f64 carrier).
            let ins = [
                (
                    "x",
                    Array::new(&shape, xv.iter().map(|&v| f64::from(v)).collect()),
                ),
                (
                    "seed",
                    Array::new(&[2], sv.iter().map(|&v| f64::from(v)).collect()),
                ),
            ];
            let want = &interp::run(&g, &ins, &HashMap::new()).unwrap()[0].1;
            let got = &compiled(&g, &[], &[&xv, &sv], &[], 2)[0];
            assert!(
                rel_l2(got, &want.data) <= 1e-6,
                "interpreter {shape:?} p {p}"
            );
        }
    }
}
