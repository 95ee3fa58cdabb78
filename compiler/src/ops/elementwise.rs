//! Elementwise ops: broadcasting arithmetic and comparisons, unary math and
//! activations. One FLOP per output element (a few for transcendental
//! activations is not counted separately).

use super::util::{broadcast, expect_float, numel};
use super::Builtin;
use crate::elab::{CallCtx, OpResult, Value};
use crate::ir::{Attr, Dim, Op, TensorType, ValueId};
use netc_runtime::DType;

/// The family's built-ins.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "add",
        build: |c| binary(c, "add", false),
    },
    Builtin {
        name: "sub",
        build: |c| binary(c, "sub", false),
    },
    Builtin {
        name: "mul",
        build: |c| binary(c, "mul", false),
    },
    Builtin {
        name: "div",
        build: |c| binary(c, "div", false),
    },
    Builtin {
        name: "pow",
        build: |c| binary(c, "pow", false),
    },
    Builtin {
        name: "maximum",
        build: |c| binary(c, "maximum", false),
    },
    Builtin {
        name: "minimum",
        build: |c| binary(c, "minimum", false),
    },
    Builtin {
        name: "less",
        build: |c| binary(c, "less", true),
    },
    Builtin {
        name: "less_equal",
        build: |c| binary(c, "less_equal", true),
    },
    Builtin {
        name: "greater",
        build: |c| binary(c, "greater", true),
    },
    Builtin {
        name: "greater_equal",
        build: |c| binary(c, "greater_equal", true),
    },
    Builtin {
        name: "equal",
        build: |c| binary(c, "equal", true),
    },
    Builtin {
        name: "not_equal",
        build: |c| binary(c, "not_equal", true),
    },
    Builtin {
        name: "where",
        build: where_op,
    },
    Builtin {
        name: "neg",
        build: |c| unary(c, "neg"),
    },
    Builtin {
        name: "relu",
        build: |c| unary(c, "relu"),
    },
    Builtin {
        name: "tanh",
        build: |c| unary(c, "tanh"),
    },
    Builtin {
        name: "sigmoid",
        build: |c| unary(c, "sigmoid"),
    },
    Builtin {
        name: "silu",
        build: |c| unary(c, "silu"),
    },
    Builtin {
        name: "exp",
        build: |c| unary(c, "exp"),
    },
    Builtin {
        name: "log",
        build: |c| unary(c, "log"),
    },
    Builtin {
        name: "sqrt",
        build: |c| unary(c, "sqrt"),
    },
    Builtin {
        name: "abs",
        build: |c| unary(c, "abs"),
    },
    Builtin {
        name: "square",
        build: |c| unary(c, "square"),
    },
    Builtin {
        name: "gelu",
        build: gelu,
    },
    Builtin {
        name: "leaky_relu",
        build: leaky_relu,
    },
    Builtin {
        name: "clamp",
        build: clamp,
    },
    Builtin {
        name: "cast",
        build: cast,
    },
];

/// A tensor operand, or a number turned into a scalar constant.
fn operand(
    c: &mut CallCtx,
    pos: usize,
    name: &'static str,
    dtype: DType,
) -> Result<ValueId, crate::diag::Diagnostic> {
    match c.value(Some(pos), name) {
        Some(Value::Tensor(t)) => Ok(t),
        Some(Value::Int(n)) => Ok(c.constant(
            format!("scalar({n})"),
            TensorType::new(dtype, vec![]),
            vec![n as f64],
        )),
        Some(Value::Float(f)) => Ok(c.constant(
            format!("scalar({f:?})"),
            TensorType::new(dtype, vec![]),
            vec![f],
        )),
        Some(other) => Err(c.arg_error(
            Some(pos),
            name,
            format!(
                "`{}` needs a tensor or a number, not {}",
                c.op_name(),
                other.kind_name()
            ),
            "compile-time values must be numbers to combine with tensors",
        )),
        None => c.tensor(Some(pos), name),
    }
}

fn binary(c: &mut CallCtx, name: &'static str, compare: bool) -> OpResult {
    // The dtype of a scalar operand follows the tensor operand.
    let dtype = [c.value(Some(0), "x"), c.value(Some(1), "y")]
        .into_iter()
        .find_map(|v| match v {
            Some(Value::Tensor(t)) => Some(c.ty(t).dtype),
            _ => None,
        })
        .unwrap_or(DType::F32);
    let x = operand(c, 0, "x", dtype)?;
    let y = operand(c, 1, "y", dtype)?;
    let (tx, ty) = (c.ty(x), c.ty(y));
    if tx.sparse || ty.sparse {
        return Err(c.error(
            format!("`{name}` does not take sparse tensors"),
            "use `embedding_bag` to consume a sparse input",
        ));
    }
    if tx.dtype != ty.dtype {
        return Err(c.shape_error(
            format!(
                "`{name}` of {} and {}: element types differ",
                c.type_text(&tx),
                c.type_text(&ty)
            ),
            &[("the left operand", x), ("the right operand", y)],
            "convert one side with `cast(x, \"f32\")`",
        ));
    }
    let Some(shape) = broadcast(&tx.shape, &ty.shape) else {
        return Err(c.shape_error(
            format!("`{name}`: shapes {} and {} do not broadcast", c.type_text(&tx), c.type_text(&ty)),
            &[("the left operand", x), ("the right operand", y)],
            "trailing dims must be equal or 1 (NumPy broadcasting); use `reshape` or `unsqueeze` to align them",
        ));
    };
    let out = TensorType::new(if compare { DType::Bool } else { tx.dtype }, shape);
    let flops = numel(&out);
    c.emit1(Op::new(name), &[x, y], out, flops)
}

fn where_op(c: &mut CallCtx) -> OpResult {
    let cond = c.tensor(Some(0), "cond")?;
    let x = c.tensor(Some(1), "x")?;
    let dtype = c.ty(x).dtype;
    let y = operand(c, 2, "y", dtype)?;
    let (tc, tx, ty) = (c.ty(cond), c.ty(x), c.ty(y));
    if tc.dtype != DType::Bool {
        return Err(c.shape_error(
            "`where` needs a bool condition",
            &[("the condition", cond)],
            "compare tensors to get a bool tensor",
        ));
    }
    let shape = broadcast(&tc.shape, &tx.shape)
        .and_then(|s| broadcast(&s, &ty.shape))
        .ok_or_else(|| {
            c.shape_error(
                "`where`: shapes do not broadcast",
                &[("the condition", cond), ("x", x), ("y", y)],
                "align the shapes",
            )
        })?;
    let out = TensorType::new(tx.dtype, shape);
    let flops = numel(&out);
    c.emit1(Op::new("where"), &[cond, x, y], out, flops)
}

fn unary(c: &mut CallCtx, name: &'static str) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let t = if name == "neg" || name == "abs" {
        c.ty(x)
    } else {
        expect_float(c, x)?
    };
    let flops = numel(&t);
    c.emit1(Op::new(name), &[x], t, flops)
}

fn gelu(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let approximate = c.choice(None, "approximate", &["none", "tanh"], "none")?;
    let t = expect_float(c, x)?;
    let flops = numel(&t);
    c.emit1(
        Op::new("gelu").with("approximate", Attr::Str(approximate.into())),
        &[x],
        t,
        flops,
    )
}

fn leaky_relu(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let slope = c.float(Some(1), "negative_slope", Some(0.01))?;
    let t = expect_float(c, x)?;
    let flops = numel(&t);
    c.emit1(
        Op::new("leaky_relu").with("negative_slope", Attr::Float(slope)),
        &[x],
        t,
        flops,
    )
}

fn clamp(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let lo = c.value(Some(1), "min");
    let hi = c.value(Some(2), "max");
    let num = |v: &Option<Value>| match v {
        Some(Value::Int(n)) => Some(*n as f64),
        Some(Value::Float(f)) => Some(*f),
        _ => None,
    };
    let (lo, hi) = (num(&lo), num(&hi));
    if lo.is_none() && hi.is_none() {
        return Err(c.error(
            "`clamp` needs `min`, `max` or both",
            "write `clamp(x, min = 0.0)`",
        ));
    }
    if let (Some(a), Some(b)) = (lo, hi) {
        if a > b {
            return Err(c.error(format!("`clamp` with min {a} > max {b}"), "swap the bounds"));
        }
    }
    let t = c.ty(x);
    let mut op = Op::new("clamp");
    if let Some(a) = lo {
        op = op.with("min", Attr::Float(a));
    }
    if let Some(b) = hi {
        op = op.with("max", Attr::Float(b));
    }
    let flops = numel(&t);
    c.emit1(op, &[x], t, flops)
}

fn cast(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let name = c.str(Some(1), "dtype", None)?;
    let Some(dtype) = DType::from_name(&name) else {
        return Err(c.arg_error(
            Some(1),
            "dtype",
            format!("unknown element type `{name}`"),
            "use f32, f64, i32, i64, u8 or bool",
        ));
    };
    let mut t = c.ty(x);
    t.dtype = dtype;
    c.emit1(
        Op::new("cast").with("dtype", Attr::Str(name)),
        &[x],
        t,
        Dim::known(0),
    )
}
