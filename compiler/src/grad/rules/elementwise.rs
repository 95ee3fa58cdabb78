//! Backward rules of elementwise ops. Binary ops broadcast, so an
//! operand's gradient is summed over the dims broadcasting stretched
//! ([`GradCx::unbroadcast`]). Activations whose derivative is cheapest
//! from the result (`relu`, `tanh`, `sigmoid`) read the result.

use super::{only, GradCx, GradError, Rule};
use crate::ir::{Node, Op, ValueId};

/// The family's rules.
pub const RULES: &[(&str, Rule)] = &[
    ("add", add),
    ("sub", sub),
    ("mul", mul),
    ("div", div),
    ("neg", neg),
    ("relu", |cx, n, d, _| from_result(cx, n, d, "relu_grad")),
    ("tanh", |cx, n, d, _| from_result(cx, n, d, "tanh_grad")),
    ("sigmoid", |cx, n, d, _| {
        from_result(cx, n, d, "sigmoid_grad")
    }),
    ("leaky_relu", |cx, n, d, _| {
        from_input(cx, n, d, "leaky_relu_grad")
    }),
    ("silu", |cx, n, d, _| from_input(cx, n, d, "silu_grad")),
    ("gelu", |cx, n, d, _| from_input(cx, n, d, "gelu_grad")),
    ("exp", exp),
    ("log", log),
    ("sqrt", sqrt),
    ("square", square),
];

type Grads = Result<Vec<Option<ValueId>>, GradError>;

fn add(cx: &mut GradCx, n: &Node, d: &[Option<ValueId>], needs: &[bool]) -> Grads {
    let dy = only(cx, d)?;
    let a = needs[0]
        .then(|| cx.unbroadcast(dy, n.inputs[0]))
        .transpose()?;
    let b = needs[1]
        .then(|| cx.unbroadcast(dy, n.inputs[1]))
        .transpose()?;
    Ok(vec![a, b])
}

fn sub(cx: &mut GradCx, n: &Node, d: &[Option<ValueId>], needs: &[bool]) -> Grads {
    let dy = only(cx, d)?;
    let a = needs[0]
        .then(|| cx.unbroadcast(dy, n.inputs[0]))
        .transpose()?;
    let b = if needs[1] {
        let neg = cx.pointwise(Op::new("neg"), vec![dy], dy);
        Some(cx.unbroadcast(neg, n.inputs[1])?)
    } else {
        None
    };
    Ok(vec![a, b])
}

fn mul(cx: &mut GradCx, n: &Node, d: &[Option<ValueId>], needs: &[bool]) -> Grads {
    let dy = only(cx, d)?;
    let (a, b) = (n.inputs[0], n.inputs[1]);
    let mut out = vec![None, None];
    for (k, other) in [(0, b), (1, a)] {
        if needs[k] {
            let prod = cx.binary("mul", dy, other);
            out[k] = Some(cx.unbroadcast(prod, n.inputs[k])?);
        }
    }
    Ok(out)
}

/// `y = a / b`: `da = dy / b`, `db = -dy * y / b`.
fn div(cx: &mut GradCx, n: &Node, d: &[Option<ValueId>], needs: &[bool]) -> Grads {
    let dy = only(cx, d)?;
    let (a, b, y) = (n.inputs[0], n.inputs[1], n.outputs[0]);
    let da = if needs[0] {
        let q = cx.binary("div", dy, b);
        Some(cx.unbroadcast(q, a)?)
    } else {
        None
    };
    let db = if needs[1] {
        let p = cx.binary("mul", dy, y);
        let q = cx.binary("div", p, b);
        let neg = cx.pointwise(Op::new("neg"), vec![q], q);
        Some(cx.unbroadcast(neg, b)?)
    } else {
        None
    };
    Ok(vec![da, db])
}

fn neg(cx: &mut GradCx, _: &Node, d: &[Option<ValueId>], _: &[bool]) -> Grads {
    let dy = only(cx, d)?;
    Ok(vec![Some(cx.pointwise(Op::new("neg"), vec![dy], dy))])
}

/// An activation whose gradient op reads `(dy, y)`.
fn from_result(cx: &mut GradCx, n: &Node, d: &[Option<ValueId>], op: &'static str) -> Grads {
    let dy = only(cx, d)?;
    Ok(vec![Some(cx.pointwise(
        Op::new(op),
        vec![dy, n.outputs[0]],
        dy,
    ))])
}

/// An activation whose gradient op reads `(dy, x)` and the forward's attributes.
fn from_input(cx: &mut GradCx, n: &Node, d: &[Option<ValueId>], op: &'static str) -> Grads {
    let dy = only(cx, d)?;
    let mut grad_op = Op::new(op);
    grad_op.attrs = n.op.attrs.clone();
    Ok(vec![Some(cx.pointwise(grad_op, vec![dy, n.inputs[0]], dy))])
}

fn exp(cx: &mut GradCx, n: &Node, d: &[Option<ValueId>], _: &[bool]) -> Grads {
    let dy = only(cx, d)?;
    Ok(vec![Some(cx.binary("mul", dy, n.outputs[0]))])
}

fn log(cx: &mut GradCx, n: &Node, d: &[Option<ValueId>], _: &[bool]) -> Grads {
    let dy = only(cx, d)?;
    Ok(vec![Some(cx.binary("div", dy, n.inputs[0]))])
}

/// `d sqrt(x) = dy / (2 sqrt(x))`.
fn sqrt(cx: &mut GradCx, n: &Node, d: &[Option<ValueId>], _: &[bool]) -> Grads {
    let dy = only(cx, d)?;
    let half = cx.scale(dy, 0.5);
    Ok(vec![Some(cx.binary("div", half, n.outputs[0]))])
}

fn square(cx: &mut GradCx, n: &Node, d: &[Option<ValueId>], _: &[bool]) -> Grads {
    let dy = only(cx, d)?;
    let p = cx.binary("mul", dy, n.inputs[0]);
    Ok(vec![Some(cx.scale(p, 2.0))])
}
