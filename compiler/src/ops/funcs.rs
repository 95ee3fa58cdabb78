//! Compile-time functions: they compute numbers, lists and strings while
//! the model is elaborated and never appear in the graph.

use super::Builtin;
use crate::elab::{CallCtx, OpResult, Value};
use std::rc::Rc;

/// The family's built-ins.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "range",
        build: range,
    },
    Builtin {
        name: "len",
        build: len,
    },
    Builtin {
        name: "min",
        build: |c| extremum(c, false),
    },
    Builtin {
        name: "max",
        build: |c| extremum(c, true),
    },
    Builtin {
        name: "sum",
        build: sum,
    },
    Builtin {
        name: "int",
        build: to_int,
    },
    Builtin {
        name: "float",
        build: to_float,
    },
    Builtin {
        name: "str",
        build: to_str,
    },
    Builtin {
        name: "floor",
        build: |c| rounding(c, f64::floor),
    },
    Builtin {
        name: "ceil",
        build: |c| rounding(c, f64::ceil),
    },
    Builtin {
        name: "round",
        build: |c| rounding(c, f64::round),
    },
    Builtin {
        name: "channels",
        build: channels,
    },
    Builtin {
        name: "rank",
        build: rank,
    },
    Builtin {
        name: "zip",
        build: zip,
    },
    Builtin {
        name: "enumerate",
        build: enumerate,
    },
    Builtin {
        name: "reversed",
        build: reversed,
    },
    Builtin {
        name: "uniform",
        build: uniform,
    },
    Builtin {
        name: "normal",
        build: normal,
    },
];

/// `range(end)`, `range(start, end)`, `range(start, end, step)`.
fn range(c: &mut CallCtx) -> OpResult {
    let a = c.int(Some(0), "a", None)?;
    let b = c.opt_int(Some(1), "b")?;
    let step = c.int(Some(2), "step", Some(1))?;
    let (start, end) = match b {
        Some(b) => (a, b),
        None => (0, a),
    };
    if step == 0 {
        return Err(c.arg_error(Some(2), "step", "`range` step is 0", "use a non-zero step"));
    }
    let n = if step > 0 {
        (end - start + step - 1) / step
    } else {
        (start - end - step - 1) / -step
    };
    if n > 1_000_000 {
        return Err(c.error(
            format!("`range` of {n} elements is too long"),
            "compile-time ranges are for loops over layers",
        ));
    }
    Ok(Value::list(
        (0..n.max(0))
            .map(|i| Value::Int(start + i * step))
            .collect(),
    ))
}

fn list_arg(
    c: &mut CallCtx,
    name: &'static str,
) -> Result<Rc<Vec<Value>>, crate::diag::Diagnostic> {
    match c.value(Some(0), name) {
        Some(Value::List(items)) => Ok(items),
        Some(other) => Err(c.arg_error(
            Some(0),
            name,
            format!("`{}` needs a list, not {}", c.op_name(), other.kind_name()),
            "pass a list",
        )),
        None => Err(c.error(format!("`{}` needs a list", c.op_name()), "pass a list")),
    }
}

/// `len(list)` or `len(tensor)` (the first dim).
fn len(c: &mut CallCtx) -> OpResult {
    match c.value(Some(0), "x") {
        Some(Value::List(items)) => Ok(Value::Int(items.len() as i64)),
        Some(Value::Str(s)) => Ok(Value::Int(s.chars().count() as i64)),
        Some(Value::Tensor(t)) => {
            let ty = c.ty(t);
            match ty.shape.first() {
                Some(d) => Ok(Value::from_dim(d.clone())),
                None => Err(c.error("`len` of a scalar tensor", "scalars have no length")),
            }
        }
        _ => Err(c.error(
            "`len` needs a list, a string or a tensor",
            "e.g. `len(blocks)`",
        )),
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Int(n) => Some(*n as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

/// `min(a, b, ...)` / `max(a, b, ...)` or of one list.
fn extremum(c: &mut CallCtx, want_max: bool) -> OpResult {
    let first = c.value(Some(0), "a");
    let items: Vec<Value> = match first {
        Some(Value::List(items)) => items.to_vec(),
        Some(v) => {
            let mut all = vec![v];
            let mut i = 1;
            while let Some(v) = c.value(Some(i), "more") {
                all.push(v);
                i += 1;
            }
            all
        }
        None => {
            return Err(c.error(
                format!("`{}` needs values", c.op_name()),
                "e.g. `max(a, b)`",
            ))
        }
    };
    let mut best: Option<Value> = None;
    for v in items {
        let x = number(&v).ok_or_else(|| {
            c.error(
                format!("`{}` compares numbers, got {}", c.op_name(), v.kind_name()),
                "pass numbers",
            )
        })?;
        let better = match &best {
            None => true,
            Some(b) => {
                let y = number(b).unwrap_or(f64::NAN);
                if want_max {
                    x > y
                } else {
                    x < y
                }
            }
        };
        if better {
            best = Some(v);
        }
    }
    best.ok_or_else(|| {
        c.error(
            format!("`{}` of an empty list", c.op_name()),
            "pass at least one value",
        )
    })
}

/// `sum(list)` of numbers, or `sum(x, dim, keepdim)` of a tensor.
fn sum(c: &mut CallCtx) -> OpResult {
    if super::reduce::is_tensor(&c.value(Some(0), "x")) {
        return super::reduce::reduce(c, "sum");
    }
    let items = list_arg(c, "xs")?;
    let mut int_total: i64 = 0;
    let mut float_total = 0.0;
    let mut is_float = false;
    for v in items.iter() {
        match v {
            Value::Int(n) => {
                int_total = int_total
                    .checked_add(*n)
                    .ok_or_else(|| c.error("integer overflow in `sum`", "use floats"))?
            }
            Value::Float(f) => {
                is_float = true;
                float_total += f;
            }
            other => {
                return Err(c.error(
                    format!("`sum` adds numbers, got {}", other.kind_name()),
                    "for tensors use `add` or `reduce_sum`",
                ))
            }
        }
    }
    Ok(if is_float {
        Value::Float(float_total + int_total as f64)
    } else {
        Value::Int(int_total)
    })
}

/// `int(x)`: truncates floats, parses strings.
fn to_int(c: &mut CallCtx) -> OpResult {
    match c.value(Some(0), "x") {
        Some(Value::Int(n)) => Ok(Value::Int(n)),
        Some(Value::Float(f)) if f.is_finite() && f.abs() < 9.0e18 => Ok(Value::Int(f as i64)),
        Some(Value::Bool(b)) => Ok(Value::Int(i64::from(b))),
        Some(Value::Str(s)) => s
            .trim()
            .parse()
            .map(Value::Int)
            .map_err(|_| c.error(format!("`int(\"{s}\")`: not an integer"), "pass digits")),
        _ => Err(c.error(
            "`int` needs a number, a bool or a string",
            "e.g. `int(x / 2)`",
        )),
    }
}

/// `float(x)`.
fn to_float(c: &mut CallCtx) -> OpResult {
    match c.value(Some(0), "x") {
        Some(Value::Int(n)) => Ok(Value::Float(n as f64)),
        Some(Value::Float(f)) => Ok(Value::Float(f)),
        Some(Value::Str(s)) => s
            .trim()
            .parse()
            .map(Value::Float)
            .map_err(|_| c.error(format!("`float(\"{s}\")`: not a number"), "pass a number")),
        _ => Err(c.error("`float` needs a number or a string", "e.g. `float(n)`")),
    }
}

/// `str(x)`.
fn to_str(c: &mut CallCtx) -> OpResult {
    let v = c
        .value(Some(0), "x")
        .ok_or_else(|| c.error("`str` needs a value", "e.g. `str(i)`"))?;
    let text = match &v {
        Value::Int(n) => n.to_string(),
        Value::Float(f) => crate::ir::format_float(*f),
        Value::Bool(b) => b.to_string(),
        Value::Str(s) => s.to_string(),
        other => {
            return Err(c.error(
                format!("`str` of {}", other.kind_name()),
                "pass a number, bool or string",
            ))
        }
    };
    Ok(Value::Str(Rc::from(text)))
}

fn rounding(c: &mut CallCtx, f: fn(f64) -> f64) -> OpResult {
    match c.value(Some(0), "x") {
        Some(Value::Int(n)) => Ok(Value::Int(n)),
        Some(Value::Float(x)) if x.is_finite() && x.abs() < 9.0e18 => Ok(Value::Int(f(x) as i64)),
        _ => Err(c.error(
            format!("`{}` needs a finite number", c.op_name()),
            "e.g. `floor(x / 2)`",
        )),
    }
}

/// `channels(x)`: `x.shape[1]`.
fn channels(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let t = c.ty(x);
    match t.shape.get(1) {
        Some(d) => Ok(Value::from_dim(d.clone())),
        None => Err(c.shape_error(
            format!("`channels` of {} (rank < 2)", c.type_text(&t)),
            &[("the input", x)],
            "channels are dim 1 of an N, C, ... tensor",
        )),
    }
}

/// `rank(x)`.
fn rank(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    Ok(Value::Int(c.ty(x).rank() as i64))
}

/// `zip(a, b)`: a list of `[a_i, b_i]` pairs.
fn zip(c: &mut CallCtx) -> OpResult {
    let a = list_arg(c, "a")?;
    let b = match c.value(Some(1), "b") {
        Some(Value::List(items)) => items,
        _ => return Err(c.error("`zip` needs two lists", "e.g. `zip(channels, strides)`")),
    };
    Ok(Value::list(
        a.iter()
            .zip(b.iter())
            .map(|(x, y)| Value::list(vec![x.clone(), y.clone()]))
            .collect(),
    ))
}

/// `enumerate(list)`: `[i, item]` pairs.
fn enumerate(c: &mut CallCtx) -> OpResult {
    let a = list_arg(c, "xs")?;
    Ok(Value::list(
        a.iter()
            .enumerate()
            .map(|(i, x)| Value::list(vec![Value::Int(i as i64), x.clone()]))
            .collect(),
    ))
}

/// `reversed(list)`.
fn reversed(c: &mut CallCtx) -> OpResult {
    let a = list_arg(c, "xs")?;
    Ok(Value::list(a.iter().rev().cloned().collect()))
}

/// `uniform(low, high)`: an initialiser for `param` declarations.
fn uniform(c: &mut CallCtx) -> OpResult {
    let low = c.float(Some(0), "low", None)?;
    let high = c.float(Some(1), "high", None)?;
    if low > high {
        return Err(c.error("`uniform` with low > high", "swap the bounds"));
    }
    Ok(Value::record(vec![
        ("init", Value::Str(Rc::from("uniform"))),
        ("low", Value::Float(low)),
        ("high", Value::Float(high)),
    ]))
}

/// `normal(mean, std)`: an initialiser for `param` declarations.
fn normal(c: &mut CallCtx) -> OpResult {
    let mean = c.float(Some(0), "mean", Some(0.0))?;
    let std = c.float(Some(1), "std", Some(1.0))?;
    if std < 0.0 {
        return Err(c.error("`normal` with a negative std", "std >= 0"));
    }
    Ok(Value::record(vec![
        ("init", Value::Str(Rc::from("normal"))),
        ("mean", Value::Float(mean)),
        ("std", Value::Float(std)),
    ]))
}
