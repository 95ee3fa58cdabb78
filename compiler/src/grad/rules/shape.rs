//! Backward rules of data-movement ops: a view's gradient is the inverse
//! view of the result's gradient; `concat` hands each operand its slice;
//! `split` concatenates its results' gradients (zeros for a result the
//! loss does not read).

use super::{only, GradCx, GradError, Rule};
use crate::ir::{Attr, Dim, Node, Op, TensorType, ValueId};

/// The family's rules.
pub const RULES: &[(&str, Rule)] = &[
    ("reshape", reshape),
    ("permute", permute),
    ("concat", concat),
    ("split", split),
];

type Grads = Result<Vec<Option<ValueId>>, GradError>;

fn reshape(cx: &mut GradCx, n: &Node, d: &[Option<ValueId>], _: &[bool]) -> Grads {
    let dy = only(cx, d)?;
    let shape = cx.ty(n.inputs[0]).shape;
    Ok(vec![Some(cx.reshape(dy, shape))])
}

fn permute(cx: &mut GradCx, n: &Node, d: &[Option<ValueId>], _: &[bool]) -> Grads {
    let dy = only(cx, d)?;
    let Some(Attr::Ints(dims)) = n.op.attr("dims") else {
        return Err(cx.error("missing `dims`"));
    };
    let mut inverse = vec![0i64; dims.len()];
    for (i, &p) in dims.iter().enumerate() {
        inverse[p as usize] = i as i64;
    }
    let ty = cx.ty(n.inputs[0]);
    let op = Op::new("permute").with("dims", Attr::Ints(inverse));
    Ok(vec![Some(cx.emit1(op, vec![dy], ty, Dim::known(0)))])
}

fn axis(cx: &GradCx, n: &Node) -> Result<usize, GradError> {
    match n.op.attr("dim") {
        Some(Attr::Int(a)) => Ok(*a as usize),
        _ => Err(cx.error("missing `dim`")),
    }
}

fn concat(cx: &mut GradCx, n: &Node, d: &[Option<ValueId>], needs: &[bool]) -> Grads {
    let dy = only(cx, d)?;
    let a = axis(cx, n)?;
    let mut start = 0i64;
    let mut out = Vec::new();
    for (&v, &need) in n.inputs.iter().zip(needs) {
        let ty = cx.ty(v);
        let len = ty.shape[a]
            .as_known()
            .ok_or_else(|| cx.error("a symbolic size along the concatenated dim"))?;
        out.push(need.then(|| {
            let op = Op::new("slice")
                .with("dim", Attr::Int(a as i64))
                .with("start", Attr::Int(start))
                .with("end", Attr::Int(start + len))
                .with("step", Attr::Int(1));
            cx.emit1(op, vec![dy], ty, Dim::known(0))
        }));
        start += len;
    }
    Ok(out)
}

fn split(cx: &mut GradCx, n: &Node, d: &[Option<ValueId>], _: &[bool]) -> Grads {
    let a = axis(cx, n)?;
    let parts: Vec<ValueId> = n
        .outputs
        .iter()
        .zip(d)
        .map(|(&o, dy)| match dy {
            Some(g) => *g,
            None => {
                let zero = cx.scalar(0.0);
                cx.expand(zero, cx.ty(o).shape)
            }
        })
        .collect();
    let ty: TensorType = cx.ty(n.inputs[0]);
    let op = Op::new("concat").with("dim", Attr::Int(a as i64));
    Ok(vec![Some(cx.emit1(op, parts, ty, Dim::known(0)))])
}
