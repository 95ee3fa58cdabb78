//! Shape manipulation: reshape, flatten, permute, transpose, (un)squeeze,
//! concat, split, slice, select, stack. No arithmetic: 0 FLOPs.

use super::util::axis;
use super::Builtin;
use crate::diag::Diagnostic;
use crate::elab::{CallCtx, OpResult, Value};
use crate::ir::{Attr, Dim, Op, TensorType, ValueId};

/// The family's built-ins.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "reshape",
        build: reshape,
    },
    Builtin {
        name: "flatten",
        build: flatten,
    },
    Builtin {
        name: "permute",
        build: permute,
    },
    Builtin {
        name: "transpose",
        build: transpose,
    },
    Builtin {
        name: "unsqueeze",
        build: unsqueeze,
    },
    Builtin {
        name: "squeeze",
        build: squeeze,
    },
    Builtin {
        name: "concat",
        build: concat,
    },
    Builtin {
        name: "stack",
        build: stack,
    },
    Builtin {
        name: "split",
        build: split,
    },
    Builtin {
        name: "chunk",
        build: chunk,
    },
    Builtin {
        name: "slice",
        build: slice,
    },
    Builtin {
        name: "select",
        build: select,
    },
];

/// `a / b` for sizes when the quotient is a known integer or `b` is known.
fn div_dims(a: &Dim, b: &Dim) -> Option<Dim> {
    if let Some(k) = b.as_known() {
        return a.div_exact(k);
    }
    // c1*S / c2*S with the same single symbol and no constants.
    match (a.terms(), b.terms()) {
        ([(s1, k1)], [(s2, k2)])
            if s1 == s2 && a.constant() == 0 && b.constant() == 0 && k1 % k2 == 0 =>
        {
            Some(Dim::known(k1 / k2))
        }
        _ => None,
    }
}

fn reshaped(c: &mut CallCtx, x: ValueId, t: &TensorType, dims: Vec<Dim>) -> OpResult {
    let minus_one = Dim::known(-1);
    let holes = dims.iter().filter(|d| **d == minus_one).count();
    let total = t.numel().ok_or_else(|| {
        c.error(
            "`reshape` of a tensor whose size is not linear in its symbols",
            "reshape before combining symbolic dims",
        )
    })?;
    let mut product = Dim::known(1);
    for d in dims.iter().filter(|d| **d != minus_one) {
        if d.as_known().is_some_and(|n| n <= 0) {
            return Err(c.error(
                format!("`reshape` size {} is not positive", c.dim_text(d)),
                "sizes are positive; use -1 once to infer one",
            ));
        }
        product = product.mul(d).ok_or_else(|| {
            c.error(
                "`reshape`: product of two symbolic sizes",
                "keep at most one symbolic size",
            )
        })?;
    }
    let shape = match holes {
        0 => dims,
        1 => {
            let Some(fill) =
                div_dims(&total, &product).filter(|d| d.as_known().is_none_or(|n| n > 0))
            else {
                return Err(c.shape_error(
                    format!(
                        "`reshape`: cannot infer -1: {} elements do not divide into {}",
                        c.dim_text(&total),
                        c.dim_text(&product)
                    ),
                    &[("the input", x)],
                    "the other sizes must divide the element count",
                ));
            };
            dims.into_iter()
                .map(|d| if d == minus_one { fill.clone() } else { d })
                .collect()
        }
        _ => return Err(c.error("`reshape` with more than one -1", "infer at most one size")),
    };
    let out = TensorType::new(t.dtype, shape);
    if out.numel() != Some(total.clone()) {
        return Err(c.shape_error(
            format!(
                "`reshape` from {} to {}: element counts differ",
                c.type_text(t),
                c.type_text(&out)
            ),
            &[("the input", x)],
            "the new shape must hold exactly as many elements",
        ));
    }
    let op = Op::new("reshape").with("shape", Attr::Dims(out.shape.clone()));
    c.emit1(op, &[x], out, Dim::known(0))
}

fn dense(c: &mut CallCtx, x: ValueId) -> Result<TensorType, Diagnostic> {
    let t = c.ty(x);
    if t.sparse {
        return Err(c.shape_error(
            format!("`{}` does not take sparse tensors", c.op_name()),
            &[("the input", x)],
            "consume sparse inputs with `embedding_bag`",
        ));
    }
    Ok(t)
}

/// `reshape(x, [sizes])`, one size may be -1.
fn reshape(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let dims = c.dims(Some(1), "shape")?;
    let t = dense(c, x)?;
    reshaped(c, x, &t, dims)
}

/// `flatten(x, start = 1, end = -1)`, as `torch.flatten` with `nn.Flatten`'s default start.
fn flatten(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let t = dense(c, x)?;
    let s = c.int(Some(1), "start", Some(1))?;
    let e = c.int(Some(2), "end", Some(-1))?;
    let rank = t.rank().max(1);
    let s = axis(c, Some(1), "start", s, rank)?;
    let e = axis(c, Some(2), "end", e, rank)?;
    if s > e {
        return Err(c.error("`flatten`: start is after end", "start <= end"));
    }
    let mut dims: Vec<Dim> = t.shape[..s].to_vec();
    let mut prod = Dim::known(1);
    for d in &t.shape[s..=e.min(t.rank().saturating_sub(1))] {
        prod = prod.mul(d).ok_or_else(|| {
            c.error(
                "`flatten` of two symbolic dims",
                "keep symbolic dims out of the flattened range",
            )
        })?;
    }
    dims.push(prod);
    dims.extend_from_slice(&t.shape[(e + 1).min(t.rank())..]);
    reshaped(c, x, &t, dims)
}

/// `permute(x, [dims])`.
fn permute(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let perm = c.int_list(Some(1), "dims", None)?;
    let t = dense(c, x)?;
    let mut seen = vec![false; t.rank()];
    let mut norm = Vec::new();
    for p in &perm {
        let a = axis(c, Some(1), "dims", *p, t.rank())?;
        if seen[a] {
            return Err(c.arg_error(
                Some(1),
                "dims",
                format!("`permute`: dim {p} repeated"),
                "list every dim exactly once",
            ));
        }
        seen[a] = true;
        norm.push(a);
    }
    if norm.len() != t.rank() {
        return Err(c.arg_error(
            Some(1),
            "dims",
            format!(
                "`permute` of a rank-{} tensor needs {} dims, got {}",
                t.rank(),
                t.rank(),
                norm.len()
            ),
            "list every dim exactly once",
        ));
    }
    let shape = norm.iter().map(|&a| t.shape[a].clone()).collect();
    let op = Op::new("permute").with("dims", Attr::Ints(norm.iter().map(|&a| a as i64).collect()));
    c.emit1(op, &[x], TensorType::new(t.dtype, shape), Dim::known(0))
}

/// `transpose(x, a, b)`: swaps two dims.
fn transpose(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let t = dense(c, x)?;
    let a = c.int(Some(1), "dim0", Some(-2))?;
    let b = c.int(Some(2), "dim1", Some(-1))?;
    let a = axis(c, Some(1), "dim0", a, t.rank())?;
    let b = axis(c, Some(2), "dim1", b, t.rank())?;
    let mut perm: Vec<i64> = (0..t.rank() as i64).collect();
    perm.swap(a, b);
    let mut shape = t.shape.clone();
    shape.swap(a, b);
    c.emit1(
        Op::new("permute").with("dims", Attr::Ints(perm)),
        &[x],
        TensorType::new(t.dtype, shape),
        Dim::known(0),
    )
}

/// `unsqueeze(x, dim)`: inserts a dim of size 1.
fn unsqueeze(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let t = dense(c, x)?;
    let d = c.int(Some(1), "dim", None)?;
    let a = axis(c, Some(1), "dim", d, t.rank() + 1)?;
    let mut shape = t.shape.clone();
    shape.insert(a, Dim::known(1));
    reshaped(c, x, &t, shape)
}

/// `squeeze(x, dim)`: removes a dim of size 1.
fn squeeze(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let t = dense(c, x)?;
    let d = c.int(Some(1), "dim", None)?;
    let a = axis(c, Some(1), "dim", d, t.rank())?;
    if t.shape[a] != Dim::known(1) {
        return Err(c.shape_error(
            format!("`squeeze`: dim {d} of {} is not 1", c.type_text(&t)),
            &[("the input", x)],
            "only size-1 dims can be squeezed",
        ));
    }
    let mut shape = t.shape.clone();
    shape.remove(a);
    reshaped(c, x, &t, shape)
}

/// `concat([a, b, ...], dim)`.
fn concat(c: &mut CallCtx) -> OpResult {
    let xs = c.tensors(Some(0), "xs")?;
    let d = c.int(Some(1), "dim", Some(0))?;
    join(c, xs, d, false)
}

/// `stack([a, b, ...], dim)`: a new dim.
fn stack(c: &mut CallCtx) -> OpResult {
    let xs = c.tensors(Some(0), "xs")?;
    let d = c.int(Some(1), "dim", Some(0))?;
    join(c, xs, d, true)
}

fn join(c: &mut CallCtx, xs: Vec<ValueId>, d: i64, new_dim: bool) -> OpResult {
    let Some(&first) = xs.first() else {
        return Err(c.error(
            format!("`{}` of an empty list", c.op_name()),
            "pass at least one tensor",
        ));
    };
    let t0 = dense(c, first)?;
    let rank = t0.rank() + usize::from(new_dim);
    let a = axis(c, Some(1), "dim", d, rank)?;
    let mut total = Dim::known(0);
    for (i, &x) in xs.iter().enumerate() {
        let t = dense(c, x)?;
        let same = t.dtype == t0.dtype
            && t.rank() == t0.rank()
            && t.shape
                .iter()
                .zip(&t0.shape)
                .enumerate()
                .all(|(j, (p, q))| (!new_dim && j == a) || p == q);
        if !same {
            return Err(c.shape_error(
                format!(
                    "`{}` along dim {a}: tensor {i} is {} but tensor 0 is {}",
                    c.op_name(),
                    c.type_text(&t),
                    c.type_text(&t0)
                ),
                &[("tensor 0", first), ("this tensor", x)],
                if new_dim {
                    "stacked tensors must have equal shapes"
                } else {
                    "all dims except the joined one must agree"
                },
            ));
        }
        if !new_dim {
            total = total.add(&t.shape[a]);
        }
    }
    let mut shape = t0.shape.clone();
    if new_dim {
        shape.insert(a, Dim::known(xs.len() as i64));
    } else {
        shape[a] = total;
    }
    let name = if new_dim { "stack" } else { "concat" };
    c.emit1(
        Op::new(name).with("dim", Attr::Int(a as i64)),
        &xs,
        TensorType::new(t0.dtype, shape),
        Dim::known(0),
    )
}

/// `split(x, sizes, dim)`: sizes is a list (or one size for equal parts);
/// returns a list of tensors.
fn split(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let t = dense(c, x)?;
    let sizes_v = c.value(Some(1), "sizes");
    let d = c.int(Some(2), "dim", Some(0))?;
    let a = axis(c, Some(2), "dim", d, t.rank())?;
    let len = c.known(x, a, "split dim size")?;
    let sizes: Vec<i64> = match sizes_v {
        Some(Value::Int(s)) if s > 0 => (0..len)
            .step_by(s as usize)
            .map(|o| s.min(len - o))
            .collect(),
        Some(Value::List(items)) => items
            .iter()
            .map(|v| match v {
                Value::Int(n) if *n > 0 => Ok(*n),
                _ => Err(()),
            })
            .collect::<Result<_, _>>()
            .map_err(|_| {
                c.arg_error(
                    Some(1),
                    "sizes",
                    "`split` sizes must be positive integers",
                    "e.g. `split(x, [64, 64], dim = 1)`",
                )
            })?,
        _ => {
            return Err(c.arg_error(
                Some(1),
                "sizes",
                "`split` needs a positive size or a list of sizes",
                "e.g. `split(x, [64, 64], dim = 1)`",
            ))
        }
    };
    if sizes.iter().sum::<i64>() != len {
        return Err(c.shape_error(
            format!("`split`: sizes {sizes:?} do not add up to {len}, the size of dim {a}"),
            &[("the input", x)],
            "the sizes must cover the dim exactly",
        ));
    }
    let outs = sizes
        .iter()
        .map(|&s| {
            let mut shape = t.shape.clone();
            shape[a] = Dim::known(s);
            TensorType::new(t.dtype, shape)
        })
        .collect();
    let op = Op::new("split")
        .with("dim", Attr::Int(a as i64))
        .with("sizes", Attr::Ints(sizes));
    let vals = c.emit(op, &[x], outs, Dim::known(0))?;
    Ok(Value::list(vals.into_iter().map(Value::Tensor).collect()))
}

/// `chunk(x, n, dim)`: `n` equal parts.
fn chunk(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let n = c.int(Some(1), "chunks", None)?;
    let d = c.int(Some(2), "dim", Some(0))?;
    let t = dense(c, x)?;
    let a = axis(c, Some(2), "dim", d, t.rank())?;
    let len = c.known(x, a, "chunked dim size")?;
    if n <= 0 || len % n != 0 {
        return Err(c.shape_error(
            format!("`chunk`: {n} does not divide the size {len} of dim {a}"),
            &[("the input", x)],
            "choose a divisor of the dim size",
        ));
    }
    c.call(
        "split",
        vec![
            (None, Value::Tensor(x)),
            (None, Value::Int(len / n)),
            (Some("dim"), Value::Int(a as i64)),
        ],
    )
}

/// `slice(x, dim, start, end, step = 1)`, end exclusive, negative from the end.
fn slice(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let t = dense(c, x)?;
    let d = c.int(Some(1), "dim", None)?;
    let a = axis(c, Some(1), "dim", d, t.rank())?;
    let len = c.known(x, a, "sliced dim size")?;
    let start = c.int(Some(2), "start", Some(0))?;
    let end = c.int(Some(3), "end", Some(len))?;
    let step = c.int(Some(4), "step", Some(1))?;
    let norm = |v: i64| if v < 0 { (v + len).max(0) } else { v.min(len) };
    let (s, e) = (norm(start), norm(end));
    if step <= 0 || s >= e {
        return Err(c.shape_error(
            format!("`slice` {start}..{end} (step {step}) of dim {a} (size {len}) is empty"),
            &[("the input", x)],
            "slices must select at least one element",
        ));
    }
    let mut shape = t.shape.clone();
    shape[a] = Dim::known((e - s + step - 1) / step);
    let op = Op::new("slice")
        .with("dim", Attr::Int(a as i64))
        .with("start", Attr::Int(s))
        .with("end", Attr::Int(e))
        .with("step", Attr::Int(step));
    c.emit1(op, &[x], TensorType::new(t.dtype, shape), Dim::known(0))
}

/// `select(x, index, dim = 0)` (also `x[i]`): removes the dim.
fn select(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let t = dense(c, x)?;
    let index = c.int(Some(1), "index", None)?;
    let d = c.int(Some(2), "dim", Some(0))?;
    if t.rank() == 0 {
        return Err(c.shape_error(
            "cannot index a scalar tensor",
            &[("the input", x)],
            "only tensors of rank >= 1 can be indexed",
        ));
    }
    let a = axis(c, Some(2), "dim", d, t.rank())?;
    let len = c.known(x, a, "indexed dim size")?;
    let i = if index < 0 { index + len } else { index };
    if i < 0 || i >= len {
        return Err(c.shape_error(
            format!("index {index} is out of range for dim {a} of size {len}"),
            &[("the input", x)],
            format!("use 0..{len}"),
        ));
    }
    let mut shape = t.shape.clone();
    shape.remove(a);
    let op = Op::new("select")
        .with("dim", Attr::Int(a as i64))
        .with("index", Attr::Int(i));
    c.emit1(op, &[x], TensorType::new(t.dtype, shape), Dim::known(0))
}
