//! `amax` and `amax_grad` compiled (f32) against the reference
//! interpreter (f64): one dim, several adjacent dims, the leading and the
//! last dims, keepdim, rows split over 1 and 2 threads; ties (first
//! maximum, both sides); dims that are not adjacent are a named error.

use super::super::oracle::{check, data};
use super::super::train_oracle::{append, check_rel};
use crate::ir::Op;
use crate::testing::model;

/// `amax(x, dim = ...)` on `[N, 5, 7, 3]`-like shapes equals the
/// interpreter; `x` has no ties.
#[test]
fn maxima_equal_the_interpreter() {
    for (shape, call) in [
        ("[N, 6, 300]", "amax(x, dim = -2)"),
        ("[N, 5, 7, 3]", "amax(x, dim = [1, 2])"),
        ("[N, 5, 7, 3]", "amax(x, dim = 0, keepdim = true)"),
        ("[N, 5, 7, 3]", "amax(x, dim = -1)"),
        ("[N, 5, 7, 3]", "amax(x)"),
    ] {
        let g = model(&format!("input x: f32{shape}\noutput y = {call}")).unwrap();
        let dims: Vec<usize> = g
            .ty(g.inputs[0].1)
            .shape
            .iter()
            .map(|d| d.as_known().unwrap_or(64) as usize)
            .collect();
        let n = dims.iter().product();
        check(&g, &[("N", 64)], &[("x", dims, data(n, 0.3, 4.0))], 0.0);
    }
}

/// `amax_grad(dy, x)` for the same reductions equals the interpreter; in
/// the second case `x` is rounded to a few values, so most reductions
/// hold ties (the first maximum takes the gradient on both sides).
#[test]
fn maximum_gradients_equal_the_interpreter() {
    for (shape, call, ties) in [
        (&[16, 6, 300][..], "amax(x, dim = -2)", false),
        (&[16, 6, 300], "amax(x, dim = -2)", true),
        (&[3, 5, 7, 3], "amax(x, dim = [1, 2])", true),
        (&[3, 5, 7, 3], "amax(x, dim = [0], keepdim = true)", false),
        (&[3, 5, 7, 3], "amax(x, dim = -1)", true),
    ] {
        let dims = shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let f = model(&format!("input x: f32[{dims}]\noutput y = {call}")).unwrap();
        let fwd = f.nodes.last().unwrap().clone();
        let ys: Vec<usize> = f.ty(fwd.outputs[0]).known_dims().unwrap();
        let ydims = ys
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let mut g = model(&format!(
            "input x: f32[{dims}]\ninput dy: f32[{ydims}]\noutput y = {call}"
        ))
        .unwrap();
        let (x, dy) = (g.inputs[0].1, g.inputs[1].1);
        let mut op = Op::new("amax_grad");
        op.attrs = fwd.op.attrs.clone();
        append(&mut g, op, vec![dy, x], &[shape.to_vec()]);
        let n: usize = shape.iter().product();
        let mut xv = data(n, 0.7, 4.0);
        if ties {
            xv.iter_mut().for_each(|v| *v = v.round());
        }
        let dyv = data(ys.iter().product(), 1.1, 2.0);
        let what = format!("{call} on {shape:?}, ties {ties}");
        check_rel(
            &g,
            &[("x", shape.to_vec(), xv), ("dy", ys, dyv)],
            0.0,
            &what,
        );
    }
}

#[test]
fn dims_that_are_not_adjacent_are_refused() {
    let g = model("input x: f32[2, 3, 4]\noutput y = amax(x, dim = [0, 2])").unwrap();
    let mut jit = crate::back::jit::Jit::new().unwrap();
    let err = super::super::lower(&g, &[], Default::default(), &mut jit)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("`amax`") && err.contains("adjacent dims"),
        "{err}"
    );
}
