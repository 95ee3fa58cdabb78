//! Reductions and normalised exponentials: `sum`, `mean`, `amax`, `amin`
//! over some dims (all by default), `argmax`, `softmax`, `log_softmax`; and
//! `dropout`, which is identity at inference.

use super::util::{axis, expect_float, numel};
use super::Builtin;
use crate::diag::Diagnostic;
use crate::elab::{CallCtx, OpResult, Value};
use crate::ir::{Attr, Dim, Op, TensorType};
use netc_runtime::DType;

/// The family's built-ins (`sum` lives in `funcs`, which dispatches tensor
/// arguments to [`reduce`]).
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "mean",
        build: |c| reduce(c, "mean"),
    },
    Builtin {
        name: "amax",
        build: |c| reduce(c, "amax"),
    },
    Builtin {
        name: "amin",
        build: |c| reduce(c, "amin"),
    },
    Builtin {
        name: "argmax",
        build: argmax,
    },
    Builtin {
        name: "softmax",
        build: |c| softmax(c, "softmax"),
    },
    Builtin {
        name: "log_softmax",
        build: |c| softmax(c, "log_softmax"),
    },
    Builtin {
        name: "dropout",
        build: dropout,
    },
];

/// The dims argument: one int, a list, or all dims when absent.
fn reduce_dims(c: &mut CallCtx, rank: usize) -> Result<Vec<usize>, Diagnostic> {
    let given = c.int_list(Some(1), "dim", Some((0..rank as i64).collect()))?;
    let mut dims = Vec::new();
    for d in given {
        let a = axis(c, Some(1), "dim", d, rank)?;
        if dims.contains(&a) {
            return Err(c.arg_error(
                Some(1),
                "dim",
                format!("dim {d} listed twice"),
                "list each dim once",
            ));
        }
        dims.push(a);
    }
    dims.sort_unstable();
    Ok(dims)
}

fn reduced_shape(t: &TensorType, dims: &[usize], keepdim: bool) -> Vec<Dim> {
    t.shape
        .iter()
        .enumerate()
        .filter_map(|(i, d)| match (dims.contains(&i), keepdim) {
            (false, _) => Some(d.clone()),
            (true, true) => Some(Dim::known(1)),
            (true, false) => None,
        })
        .collect()
}

/// `sum|mean|amax|amin(x, dim = all, keepdim = false)`.
pub fn reduce(c: &mut CallCtx, name: &'static str) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let t = c.ty(x);
    if t.sparse {
        return Err(c.shape_error(
            format!("`{name}` of a sparse tensor"),
            &[("the input", x)],
            "consume sparse inputs with `embedding_bag`",
        ));
    }
    if name == "mean" {
        expect_float(c, x)?;
    }
    let dims = reduce_dims(c, t.rank())?;
    let keepdim = c.bool(Some(2), "keepdim", Some(false))?;
    let out = TensorType::new(t.dtype, reduced_shape(&t, &dims, keepdim));
    let op = Op::new(name)
        .with("dims", Attr::Ints(dims.iter().map(|&d| d as i64).collect()))
        .with("keepdim", Attr::Bool(keepdim));
    let flops = numel(&t);
    c.emit1(op, &[x], out, flops)
}

/// `argmax(x, dim, keepdim = false)` -> i64 indices.
fn argmax(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let t = c.ty(x);
    let d = c.int(Some(1), "dim", None)?;
    let keepdim = c.bool(Some(2), "keepdim", Some(false))?;
    let a = axis(c, Some(1), "dim", d, t.rank())?;
    let out = TensorType::new(DType::I64, reduced_shape(&t, &[a], keepdim));
    let op = Op::new("argmax")
        .with("dim", Attr::Int(a as i64))
        .with("keepdim", Attr::Bool(keepdim));
    let flops = numel(&t);
    c.emit1(op, &[x], out, flops)
}

/// `softmax(x, dim = -1)` / `log_softmax(x, dim = -1)`.
fn softmax(c: &mut CallCtx, name: &'static str) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let t = expect_float(c, x)?;
    let d = c.int(Some(1), "dim", Some(-1))?;
    let a = axis(c, Some(1), "dim", d, t.rank().max(1))?;
    // max, subtract, exp, sum, divide (or log): about 5 per element.
    let flops = numel(&t).scale(5);
    c.emit1(
        Op::new(name).with("dim", Attr::Int(a as i64)),
        &[x],
        t,
        flops,
    )
}

/// `dropout(x, p = 0.5)`: zeroes elements with probability `p` in training
/// and scales the rest by 1/(1-p); identity at inference.
fn dropout(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let p = c.float(Some(1), "p", Some(0.5))?;
    c.check_range(Some(1), "p", p, 0.0, 1.0)?;
    let t = expect_float(c, x)?;
    c.emit1(
        Op::new("dropout").with("p", Attr::Float(p)),
        &[x],
        t,
        Dim::known(0),
    )
}

/// Whether `v` is a tensor value (used by `sum` to choose between the list
/// and the tensor form).
pub fn is_tensor(v: &Option<Value>) -> bool {
    matches!(v, Some(Value::Tensor(_)))
}
