//! Row kernels against f64 references on odd row lengths and ragged row
//! ranges.

use super::*;

const LENS: &[u64] = &[1, 3, 4, 5, 17, 1000];
const OPS: &[RowOp] = &[
    RowOp::Sum,
    RowOp::Max,
    RowOp::Mean,
    RowOp::Softmax,
    RowOp::LogSoftmax,
];

/// Deterministic values in [-8, 8).
fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 16.0 - 8.0
        })
        .collect()
}

/// f64 reference of one row; returns the outputs.
fn reference(op: RowOp, row: &[f32]) -> Vec<f64> {
    let x: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
    let sum: f64 = x.iter().sum();
    let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let s: f64 = x.iter().map(|v| (v - m).exp()).sum();
    match op {
        RowOp::Sum => vec![sum],
        RowOp::Mean => vec![sum / x.len() as f64],
        RowOp::Max => vec![m],
        RowOp::Softmax => x.iter().map(|v| (v - m).exp() / s).collect(),
        RowOp::LogSoftmax => x.iter().map(|v| (v - m) - s.ln()).collect(),
    }
}

/// Max error of `op` over `rows` rows of `len`, split into ragged ranges:
/// sums/means relative to `Σ|x|`, softmax relative, log_softmax absolute.
fn max_error(jit: &mut Jit, op: RowOp, len: u64, rows: u64) -> f64 {
    let k = RowKernel { op, len };
    k.compile(jit).unwrap();
    let c = k.kernel(jit).unwrap();
    let x = data((rows * len) as usize, len * 31 + rows);
    let n = k.out_elements(rows) as usize;
    let mut out = vec![-777.0f32; n + 1];
    let mut s = 0;
    for step in [1u64, 2, 3, 5].iter().cycle() {
        if s >= rows {
            break;
        }
        let e = (s + step).min(rows);
        c.run(s, e, &x, &mut out).unwrap();
        s = e;
    }
    assert_eq!(out[n], -777.0, "{op:?} len {len}: wrote past the end");
    let mut worst = 0.0f64;
    for r in 0..rows as usize {
        let row = &x[r * len as usize..(r + 1) * len as usize];
        let want = reference(op, row);
        let got = if op.reduces() {
            &out[r..r + 1]
        } else {
            &out[r * len as usize..(r + 1) * len as usize]
        };
        let scale: f64 = match op {
            RowOp::Sum => row.iter().map(|v| f64::from(v.abs())).sum(),
            RowOp::Mean => row.iter().map(|v| f64::from(v.abs())).sum::<f64>() / len as f64,
            _ => 1.0,
        };
        for (g, w) in got.iter().zip(&want) {
            let e = match op {
                RowOp::Softmax => (f64::from(*g) - w).abs() / w.abs(),
                _ => (f64::from(*g) - w).abs() / scale.max(f64::MIN_POSITIVE),
            };
            worst = worst.max(e);
        }
    }
    worst
}

#[test]
fn row_kernels_match_f64_reference() {
    let mut jit = Jit::new().unwrap();
    for &op in OPS {
        let mut worst = 0.0f64;
        for &len in LENS {
            for rows in [1u64, 2, 7] {
                worst = worst.max(max_error(&mut jit, op, len, rows));
            }
        }
        eprintln!("{op:?}: max error {worst:.3e}");
        let bound = match op {
            RowOp::Max => 0.0,
            // Measured: sum 7.6e-8, mean 7.9e-8 (relative to Σ|x|),
            // softmax 3.8e-7 (relative), log_softmax 1.25e-6 (absolute).
            RowOp::Sum | RowOp::Mean => 2e-7,
            RowOp::Softmax => 6e-7,
            RowOp::LogSoftmax => 2e-6,
        };
        assert!(worst <= bound, "{op:?}: error {worst:e} > {bound:e}");
    }
    // One kernel per (op, len), whatever the rows.
    assert_eq!(jit.stats().compilations, OPS.len() * LENS.len());
}

#[test]
fn softmax_is_stable_and_propagates_nan() {
    let mut jit = Jit::new().unwrap();
    let inf = f32::INFINITY;
    // Huge logits (naive exp would overflow), a NaN row, a -inf element.
    let x = [
        1000.0,
        1001.0,
        999.0,
        1000.0,
        1000.5, //
        1.0,
        f32::NAN,
        2.0,
        3.0,
        4.0, //
        -inf,
        0.0,
        0.0,
        -inf,
        0.0,
    ];
    for op in [RowOp::Softmax, RowOp::LogSoftmax, RowOp::Max, RowOp::Sum] {
        let k = RowKernel { op, len: 5 };
        k.compile(&mut jit).unwrap();
        let c = k.kernel(&jit).unwrap();
        let mut out = vec![0.0f32; 15];
        c.run(0, 3, &x, &mut out).unwrap();
        let per = if op.reduces() { 1 } else { 5 };
        let row0 = &out[..per];
        let want0 = reference(op, &x[..5]);
        for (g, w) in row0.iter().zip(&want0) {
            assert!(
                (f64::from(*g) - w).abs() <= 2e-6 * w.abs().max(1.0),
                "{op:?}: {g} vs {w}"
            );
        }
        assert!(
            out[per..2 * per].iter().all(|v| v.is_nan()),
            "{op:?}: {out:?}"
        );
        let row2 = &out[2 * per..3 * per];
        match op {
            RowOp::Softmax => assert_eq!(row2, &[0.0, 1.0 / 3.0, 1.0 / 3.0, 0.0, 1.0 / 3.0]),
            RowOp::LogSoftmax => {
                assert!(row2[0] == -inf && row2[3] == -inf);
                assert!((row2[1] + 3f32.ln()).abs() <= 1e-6, "{row2:?}");
            }
            RowOp::Max => assert_eq!(row2, &[0.0]),
            _ => assert_eq!(row2, &[-inf]),
        }
    }
}

#[test]
fn bad_lengths_and_buffers_are_errors() {
    let mut jit = Jit::new().unwrap();
    assert!(RowKernel {
        op: RowOp::Sum,
        len: 0
    }
    .compile(&mut jit)
    .is_err());
    let k = RowKernel {
        op: RowOp::Softmax,
        len: 3,
    };
    k.compile(&mut jit).unwrap();
    let c = k.kernel(&jit).unwrap();
    let x = [0.0f32; 6];
    let mut out = [0.0f32; 5];
    let e = c.run(0, 2, &x, &mut out).unwrap_err();
    assert!(e.0.contains("output has 5 elements, 6 needed"), "{e}");
    let e = c.run(0, 3, &x, &mut [0.0; 9]).unwrap_err();
    assert!(e.0.contains("input has 6 elements, 9 needed"), "{e}");
    assert!(c.run(2, 1, &x, &mut out).is_err());
}

#[test]
fn clif_of_softmax_verifies() {
    let mut jit = Jit::new().unwrap();
    let t = jit
        .clif(&RowKernel {
            op: RowOp::Softmax,
            len: 17,
        })
        .unwrap();
    assert!(t.contains("f32x4"), "{t}");
}

#[test]
fn graph_nodes_map_to_row_kernels() {
    use crate::elab::elaborate;
    use crate::program::Program;
    use std::path::Path;
    let text =
        "model m {\n input x: f32[N, 3, 17]\n a = softmax(x)\n b = log_softmax(x, dim = 2)\n\
                c = sum(x, dim = [2]) + mean(x, dim = [-1])\n d = amax(x, dim = [2])\n\
                e = softmax(x, dim = 1)\n output o = exp(a) + gelu(b, approximate = \"tanh\")\n\
                output p = c + d\n output q = e\n}\n";
    let (p, d) = Program::from_text(Path::new("t.net"), text);
    assert!(d.is_empty(), "{d:?}");
    let g = elaborate(&p, p.model(None).unwrap(), &[]).unwrap();
    let ks: Vec<RowKernel> = g
        .nodes
        .iter()
        .filter_map(|n| node_row_kernel(&g, n))
        .collect();
    let ops: Vec<RowOp> = ks.iter().map(|k| k.op).collect();
    assert_eq!(
        ops,
        [
            RowOp::Softmax,
            RowOp::LogSoftmax,
            RowOp::Sum,
            RowOp::Mean,
            RowOp::Max
        ]
    );
    assert!(ks.iter().all(|k| k.len == 17));
}
