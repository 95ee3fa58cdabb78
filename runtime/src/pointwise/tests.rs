//! The AVX-512 chain against f64 definitions: `exp`, sigmoid and SiLU over
//! sweeps (the GELU against the interpreter's f64 `erf` is in the
//! compiler's lowering tests), binary steps with full, broadcast and
//! constant operands, tails and offsets that are not whole vectors or
//! blocks, and malformed inputs.

use super::*;

fn chain(scalar: &[bool], steps: &[Step]) -> PointwiseChain {
    PointwiseChain {
        scalar: scalar.to_vec(),
        steps: steps.to_vec(),
    }
}

fn run(c: &PointwiseChain, first: usize, inputs: &[&[f32]], len: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; len];
    c.rows(first, inputs, &mut out).unwrap();
    out
}

/// Values from -110 to 100 in steps that hit many mantissas.
fn sweep() -> Vec<f32> {
    (0..42_000).map(|i| -110.0 + i as f32 * 0.005_003).collect()
}

fn rel(got: f32, want: f64) -> f64 {
    ((f64::from(got) - want) / want.abs().max(f64::from(f32::MIN_POSITIVE))).abs()
}

#[test]
fn exp_sigmoid_and_silu_match_f64() {
    if !available() {
        return;
    }
    let x = sweep();
    type Definition = fn(f64) -> f64;
    let cases: [(Unary, Definition, f64); 3] = [
        (Unary::Exp, f64::exp, 2e-7),
        (Unary::Sigmoid, |v| 1.0 / (1.0 + (-v).exp()), 3e-7),
        (Unary::Silu, |v| v / (1.0 + (-v).exp()), 3e-7),
    ];
    for (op, f, bound) in cases {
        let got = run(&chain(&[false], &[Step::Unary(op)]), 0, &[&x], x.len());
        let mut worst = 0.0f64;
        for (&v, &g) in x.iter().zip(&got) {
            let want = f(f64::from(v));
            // Where e^{-x} overflows f32 the sigmoid family gives 0, as
            // the JIT and PyTorch do.
            let overflows = op != Unary::Exp && (-f64::from(v)).exp() > f64::from(f32::MAX);
            let normal = (f64::from(f32::MIN_POSITIVE)..=f64::from(f32::MAX)).contains(&want.abs());
            if normal && !overflows {
                worst = worst.max(rel(g, want));
            }
        }
        assert!(worst <= bound, "{op:?}: worst relative error {worst:.2e}");
    }
}

#[test]
fn special_values_follow_pytorch() {
    if !available() {
        return;
    }
    let x = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        89.0,
        -104.0,
        0.0,
    ];
    let exp = run(&chain(&[false], &[Step::Unary(Unary::Exp)]), 0, &[&x], 6);
    assert!(exp[0].is_nan());
    assert_eq!(exp[1..5], [f32::INFINITY, 0.0, f32::INFINITY, 0.0]);
    assert_eq!(exp[5], 1.0);
    let sig = run(
        &chain(&[false], &[Step::Unary(Unary::Sigmoid)]),
        0,
        &[&x],
        6,
    );
    assert!(sig[0].is_nan());
    assert_eq!(sig[1..3], [1.0, 0.0]);
    let silu = run(&chain(&[false], &[Step::Unary(Unary::Silu)]), 0, &[&x], 6);
    assert!(
        silu[0].is_nan() && silu[2].is_nan(),
        "silu(-inf) is NaN in PyTorch"
    );
    assert_eq!(silu[1], f32::INFINITY);
}

#[test]
fn binary_steps_read_full_broadcast_and_constant_operands_at_any_offset() {
    if !available() {
        return;
    }
    let n = 3 * BLOCK + 37;
    let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
    let b: Vec<f32> = (0..n).map(|i| 1.5 + (i as f32 * 0.11).cos()).collect();
    let s = [0.75f32];
    let c = chain(
        &[false, false, true],
        &[
            Step::Unary(Unary::Silu),
            Step::Binary {
                op: Binary::Mul,
                rhs: Operand::Input(1),
                swap: false,
            },
            Step::Binary {
                op: Binary::Sub,
                rhs: Operand::Input(2),
                swap: true,
            },
            Step::Binary {
                op: Binary::Div,
                rhs: Operand::Const(4.0),
                swap: false,
            },
            Step::Unary(Unary::Neg),
            Step::Binary {
                op: Binary::Add,
                rhs: Operand::Const(1.0),
                swap: false,
            },
        ],
    );
    let want = |i: usize| {
        let x = f64::from(a[i]);
        let silu = x / (1.0 + (-x).exp());
        1.0 - (0.75 - silu * f64::from(b[i])) / 4.0
    };
    for (first, len) in [(0, n), (5, 1), (16, 17), (BLOCK - 3, BLOCK + 9), (100, 15)] {
        let got = run(&c, first, &[&a, &b, &s], len);
        for (j, &g) in got.iter().enumerate() {
            let w = want(first + j);
            assert!(
                (f64::from(g) - w).abs() <= 1e-6 * w.abs().max(1.0),
                "element {}: {g} vs {w}",
                first + j
            );
        }
    }
}

#[test]
fn short_or_missing_inputs_are_errors() {
    let c = chain(
        &[false, false],
        &[Step::Binary {
            op: Binary::Add,
            rhs: Operand::Input(1),
            swap: false,
        }],
    );
    let a = [1.0f32; 40];
    let mut out = [0.0f32; 8];
    let e = c.rows(30, &[&a, &a[..20]], &mut out).unwrap_err();
    assert!(e.contains("input 1 has 20 elements, 38 needed"), "{e}");
    let e = c.rows(0, &[&a], &mut out).unwrap_err();
    assert!(e.contains("1 inputs for 2 declared"), "{e}");
}
