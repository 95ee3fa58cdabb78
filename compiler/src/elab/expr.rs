//! Expression evaluation: compile-time arithmetic on numbers, sizes, lists
//! and strings; tensor arithmetic becomes graph nodes; calls go to blocks or
//! built-in ops.

use super::call::CallArg;
use super::value::Value;
use super::{closest, Elaborator};
use crate::diag::Diagnostic;
use crate::front::ast::{self, BinOp, ExprKind};
use crate::source::Span;
use std::rc::Rc;

impl<'a> Elaborator<'a> {
    /// Evaluates an expression; errors are recorded and yield `Poison`.
    pub(super) fn eval(&mut self, e: &ast::Expr) -> Value {
        match self.try_eval(e) {
            Ok(v) => v,
            Err(d) => {
                self.diags.push(d);
                Value::Poison
            }
        }
    }

    fn try_eval(&mut self, e: &ast::Expr) -> Result<Value, Diagnostic> {
        Ok(match &e.kind {
            ExprKind::Int(n) => Value::Int(*n),
            ExprKind::Float(f) => {
                if !f.is_finite() {
                    return Err(Diagnostic::new(e.span, "number out of range")
                        .label("too large")
                        .hint("integers must fit in 64 bits (at most 9223372036854775807) and floats in f64"));
                }
                Value::Float(*f)
            }
            ExprKind::Str(s) => Value::Str(Rc::from(s.as_str())),
            ExprKind::Bool(b) => Value::Bool(*b),
            ExprKind::None => Value::None,
            ExprKind::Name(n) => match self.lookup_var(n) {
                Some(v) => v.clone(),
                None if self.program.blocks.contains_key(n) => Value::Block(Rc::from(n.as_str())),
                None if crate::ops::lookup(n).is_some() => {
                    // A bare op name used as a value: call it with no arguments
                    // would be surprising; explain instead.
                    return Err(Diagnostic::new(
                        e.span,
                        format!("`{n}` is an op; call it with arguments"),
                    )
                    .label("used as a value")
                    .hint(format!("write `x |> {n}` or `{n}(x, ...)`")));
                }
                None => return Err(self.unknown_name(n, e.span)),
            },
            ExprKind::List(items) => {
                let mut out = Vec::with_capacity(items.len());
                for it in items {
                    out.push(self.eval(it));
                }
                Value::list(out)
            }
            ExprKind::ListComp { elem, var, iter } => {
                let items = match self.eval(iter) {
                    Value::List(items) => items,
                    Value::Poison => return Ok(Value::Poison),
                    other => {
                        return Err(Diagnostic::new(
                            iter.span,
                            format!("cannot iterate over {}", other.kind_name()),
                        )
                        .label("not a list")
                        .hint("iterate over a list or a range `0..n`"))
                    }
                };
                let saved = self.lookup_var(&var.name).cloned();
                let mut out = Vec::with_capacity(items.len());
                for it in items.iter() {
                    self.step(e.span)?;
                    self.set_var(&var.name, it.clone());
                    out.push(self.eval(elem));
                }
                match saved {
                    Some(v) => self.set_var(&var.name, v),
                    None => {
                        self.frame().vars.remove(&var.name);
                    }
                }
                Value::list(out)
            }
            ExprKind::Unary { negate, operand } => {
                let v = self.eval(operand);
                match (negate, v) {
                    (_, Value::Poison) => Value::Poison,
                    (true, Value::Int(n)) => {
                        Value::Int(n.checked_neg().ok_or_else(|| overflow(e.span))?)
                    }
                    (true, Value::Float(f)) => Value::Float(-f),
                    (true, Value::Dim(d)) => Value::Dim(d.scale(-1)),
                    (true, Value::Tensor(t)) => self.call_builtin(
                        "neg",
                        vec![arg(Value::Tensor(t), operand.span)],
                        e.span,
                        None,
                    )?,
                    (false, Value::Bool(b)) => Value::Bool(!b),
                    (negate, other) => {
                        return Err(Diagnostic::new(
                            e.span,
                            format!(
                                "cannot apply `{}` to {}",
                                if *negate { "-" } else { "not" },
                                other.kind_name()
                            ),
                        )
                        .label(format!("operand is `{}`", other.display(&self.g))))
                    }
                }
            }
            ExprKind::Binary { op, lhs, rhs } => {
                if matches!(op, BinOp::And | BinOp::Or) {
                    return self.logic(*op, lhs, rhs);
                }
                let l = self.eval(lhs);
                let r = self.eval(rhs);
                self.binary(*op, l, r, lhs.span, rhs.span, e.span)?
            }
            ExprKind::Range { lo, hi } => {
                let (l, h) = (self.eval(lo), self.eval(hi));
                match (l, h) {
                    (Value::Int(a), Value::Int(b)) => {
                        let n = (b - a).max(0) as u64;
                        if n > super::MAX_STEPS {
                            return Err(Diagnostic::new(
                                e.span,
                                format!("range of {n} elements is too long"),
                            )
                            .label("this range"));
                        }
                        Value::list((a..b).map(Value::Int).collect())
                    }
                    (Value::Poison, _) | (_, Value::Poison) => Value::Poison,
                    (a, b) => {
                        return Err(Diagnostic::new(
                            e.span,
                            format!(
                                "a range needs two integers, not {} and {}",
                                a.kind_name(),
                                b.kind_name()
                            ),
                        )
                        .label("this range")
                        .hint("ranges are compile-time: `0..n` with known `n`"))
                    }
                }
            }
            ExprKind::Call(call) => self.call(call, e.span)?,
            ExprKind::Index { base, index } => {
                let b = self.eval(base);
                let i = self.eval(index);
                self.index(b, i, base.span, index.span, e.span)?
            }
            ExprKind::Field { base, name } => {
                let b = self.eval(base);
                self.field(b, name)?
            }
        })
    }

    fn logic(&mut self, op: BinOp, lhs: &ast::Expr, rhs: &ast::Expr) -> Result<Value, Diagnostic> {
        let as_bool = |el: &Elaborator, v: Value, span: Span| match v {
            Value::Bool(b) => Ok(Some(b)),
            Value::Poison => Ok(None),
            other => Err(Diagnostic::new(
                span,
                format!(
                    "`{}` needs `true` or `false`, not {}",
                    op.symbol(),
                    other.kind_name()
                ),
            )
            .label(format!("this is `{}`", other.display(&el.g)))),
        };
        let l = self.eval(lhs);
        let Some(l) = as_bool(self, l, lhs.span)? else {
            return Ok(Value::Poison);
        };
        // Short-circuit like Python.
        if (op == BinOp::And && !l) || (op == BinOp::Or && l) {
            return Ok(Value::Bool(l));
        }
        let r = self.eval(rhs);
        Ok(as_bool(self, r, rhs.span)?.map_or(Value::Poison, Value::Bool))
    }

    fn binary(
        &mut self,
        op: BinOp,
        l: Value,
        r: Value,
        ls: Span,
        rs: Span,
        span: Span,
    ) -> Result<Value, Diagnostic> {
        use Value as V;
        Ok(match (&l, &r) {
            (V::Poison, _) | (_, V::Poison) => V::Poison,
            (V::Tensor(_), _) | (_, V::Tensor(_)) => {
                let name = match op {
                    BinOp::Add => "add",
                    BinOp::Sub => "sub",
                    BinOp::Mul => "mul",
                    BinOp::Div => "div",
                    BinOp::Pow => "pow",
                    BinOp::Lt => "less",
                    BinOp::Le => "less_equal",
                    BinOp::Gt => "greater",
                    BinOp::Ge => "greater_equal",
                    BinOp::Eq => "equal",
                    BinOp::Ne => "not_equal",
                    _ => {
                        return Err(Diagnostic::new(
                            span,
                            format!("`{}` is not defined on tensors", op.symbol()),
                        )
                        .label("tensor operand")
                        .hint("tensor arithmetic supports + - * / ** and comparisons"))
                    }
                };
                self.call_builtin(name, vec![arg(l, ls), arg(r, rs)], span, None)?
            }
            (V::Int(a), V::Int(b)) => int_op(op, *a, *b, span)?,
            (V::Int(_) | V::Float(_), V::Int(_) | V::Float(_)) => {
                float_op(op, to_f(&l), to_f(&r), span)?
            }
            (V::Int(_) | V::Dim(_), V::Int(_) | V::Dim(_)) => {
                let (a, b) = (l.as_dim().expect("size"), r.as_dim().expect("size"));
                let res = match op {
                    BinOp::Add => Some(a.add(&b)),
                    BinOp::Sub => Some(a.sub(&b)),
                    BinOp::Mul => a.mul(&b),
                    BinOp::FloorDiv | BinOp::Div => b.as_known().and_then(|k| a.div_exact(k)),
                    BinOp::Eq => return Ok(V::Bool(a == b)),
                    BinOp::Ne => return Ok(V::Bool(a != b)),
                    _ => None,
                };
                match res {
                    Some(d) => V::from_dim(d),
                    None => {
                        return Err(Diagnostic::new(span, format!("`{}` of `{}` and `{}` is not a linear size", op.symbol(), l.display(&self.g), r.display(&self.g)))
                            .label("symbolic size arithmetic")
                            .hint("symbolic sizes support +, -, multiplication by a constant and exact division by a constant; in `reshape`, write -1 for the one size to infer"))
                    }
                }
            }
            (V::Str(a), V::Str(b)) => match op {
                BinOp::Add => V::Str(Rc::from(format!("{a}{b}"))),
                BinOp::Eq => V::Bool(a == b),
                BinOp::Ne => V::Bool(a != b),
                _ => return Err(type_error(op, &l, &r, span)),
            },
            (V::Bool(a), V::Bool(b)) => match op {
                BinOp::Eq => V::Bool(a == b),
                BinOp::Ne => V::Bool(a != b),
                _ => return Err(type_error(op, &l, &r, span)),
            },
            (V::List(a), V::List(b)) => match op {
                BinOp::Add => {
                    self.charge((a.len() + b.len()) as u64, span)?;
                    V::list(a.iter().chain(b.iter()).cloned().collect())
                }
                _ => return Err(type_error(op, &l, &r, span)),
            },
            (V::List(a), V::Int(n)) | (V::Int(n), V::List(a)) if op == BinOp::Mul => {
                let total = a.len() as i64 * (*n).max(0);
                if total as u64 > super::MAX_STEPS {
                    return Err(Diagnostic::new(span, "list too long").label("this repetition"));
                }
                self.charge(total as u64, span)?;
                V::list((0..(*n).max(0)).flat_map(|_| a.iter().cloned()).collect())
            }
            (V::None, V::None) if matches!(op, BinOp::Eq | BinOp::Ne) => V::Bool(op == BinOp::Eq),
            (V::None, _) | (_, V::None) if matches!(op, BinOp::Eq | BinOp::Ne) => {
                V::Bool(op == BinOp::Ne)
            }
            _ => return Err(type_error(op, &l, &r, span)),
        })
    }

    fn index(
        &mut self,
        b: Value,
        i: Value,
        bs: Span,
        is: Span,
        span: Span,
    ) -> Result<Value, Diagnostic> {
        match (&b, &i) {
            (Value::Poison, _) | (_, Value::Poison) => Ok(Value::Poison),
            (Value::List(items), Value::Int(k)) => {
                let n = items.len() as i64;
                let idx = if *k < 0 { k + n } else { *k };
                if idx < 0 || idx >= n {
                    return Err(Diagnostic::new(
                        is,
                        format!("index {k} is out of range for a list of {n}"),
                    )
                    .label("this index")
                    .hint(format!(
                        "valid indices are 0..{n} (or -{n}..-1 from the end)"
                    )));
                }
                Ok(items[idx as usize].clone())
            }
            (Value::Tensor(_), Value::Int(_)) => self.call_builtin(
                "select",
                vec![
                    arg(b, bs),
                    CallArg {
                        name: Some("index".into()),
                        value: i,
                        span: is,
                    },
                ],
                span,
                None,
            ),
            (Value::Record(_), Value::Str(k)) => b.field(k).cloned().ok_or_else(|| {
                Diagnostic::new(is, format!("no field `{k}`")).label("unknown field")
            }),
            _ => Err(Diagnostic::new(
                span,
                format!("cannot index {} with {}", b.kind_name(), i.kind_name()),
            )
            .label("this index")
            .hint("lists and tensors are indexed with integers")),
        }
    }

    fn field(&mut self, b: Value, name: &ast::Ident) -> Result<Value, Diagnostic> {
        let n = name.name.as_str();
        match &b {
            Value::Poison => Ok(Value::Poison),
            Value::Tensor(t) => {
                let ty = self.g.ty(*t).clone();
                match n {
                    "shape" => Ok(Value::list(
                        ty.shape.into_iter().map(Value::from_dim).collect(),
                    )),
                    "rank" => Ok(Value::Int(ty.rank() as i64)),
                    "dtype" => Ok(Value::Str(Rc::from(ty.dtype.name()))),
                    _ => Err(
                        Diagnostic::new(name.span, format!("tensors have no field `{n}`"))
                            .label("unknown field")
                            .hint("tensor fields are `shape`, `rank` and `dtype`"),
                    ),
                }
            }
            Value::Record(fields) => b.field(n).cloned().ok_or_else(|| {
                let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
                Diagnostic::new(name.span, format!("no field `{n}`"))
                    .label("unknown field")
                    .hint(format!("the fields are: {}", names.join(", ")))
            }),
            Value::List(items) if n == "len" => Ok(Value::Int(items.len() as i64)),
            other => Err(Diagnostic::new(
                name.span,
                format!("{} has no field `{n}`", other.kind_name()),
            )
            .label("unknown field")),
        }
    }

    fn call(&mut self, call: &ast::Call, span: Span) -> Result<Value, Diagnostic> {
        // A piped call's expression spans the whole chain before it; errors
        // and value origins point at this stage only (`conv1: conv2d(...)`).
        let span = if call.piped.is_some() {
            let start = call.label.as_ref().map_or(call.callee.span.start, |l| {
                l.span.start.min(call.callee.span.start)
            });
            Span {
                start: start.max(span.start),
                ..span
            }
        } else {
            span
        };
        let mut args = Vec::new();
        if let Some(p) = &call.piped {
            args.push(arg(self.eval(p), p.span));
        }
        for a in &call.args {
            let v = self.eval(&a.value);
            args.push(CallArg {
                name: a.name.as_ref().map(|n| n.name.clone()),
                value: v,
                span: a.value.span,
            });
        }
        let label = match &call.label {
            Some(l) => {
                let rel = self.label_text(l)?;
                Some(self.join_path(&rel))
            }
            None => None,
        };
        if call.shared && label.is_none() {
            return Err(Diagnostic::new(span, "`shared` needs a label")
                .label("shared what?")
                .hint("write `shared head: block(...)`"));
        }
        let name = call.callee.name.as_str();
        if name.is_empty() {
            return Err(
                Diagnostic::new(call.callee.span, "only blocks and ops can be called")
                    .label("not a name")
                    .hint("call a block or op by its name: `conv2d(...)`"),
            );
        }
        if let Some(def) = self.program.blocks.get(name) {
            if args.iter().any(|a| matches!(a.value, Value::Poison)) {
                return Ok(Value::Poison);
            }
            return Ok(self.call_block(def, args, span, label, call.shared));
        }
        if crate::ops::lookup(name).is_some() {
            if call.shared {
                self.shared_depth += 1;
            }
            let r = self.call_builtin(name, args, span, label);
            if call.shared {
                self.shared_depth -= 1;
            }
            return r;
        }
        let mut candidates: Vec<String> = self.program.blocks.keys().cloned().collect();
        candidates.extend(crate::ops::names().map(str::to_string));
        candidates.sort();
        let hint = match closest(name, candidates.iter().map(String::as_str)) {
            Some(c) => format!("did you mean `{c}`?"),
            None => "see docs/language.md for the ops; blocks must be defined in this file or an imported one".into(),
        };
        Err(
            Diagnostic::new(call.callee.span, format!("unknown op or block `{name}`"))
                .label("not defined")
                .hint(hint),
        )
    }
}

fn arg(value: Value, span: Span) -> CallArg {
    CallArg {
        name: None,
        value,
        span,
    }
}

fn to_f(v: &Value) -> f64 {
    match v {
        Value::Int(n) => *n as f64,
        Value::Float(f) => *f,
        _ => f64::NAN,
    }
}

fn overflow(span: Span) -> Diagnostic {
    Diagnostic::new(span, "integer overflow")
        .label("this computation")
        .hint("compile-time integers are 64-bit")
}

fn int_op(op: BinOp, a: i64, b: i64, span: Span) -> Result<Value, Diagnostic> {
    let div0 = || {
        Diagnostic::new(span, "division by zero")
            .label("the divisor is 0")
            .hint("check the value of the divisor (a model argument or a `--set`)")
    };
    Ok(match op {
        BinOp::Add => Value::Int(a.checked_add(b).ok_or_else(|| overflow(span))?),
        BinOp::Sub => Value::Int(a.checked_sub(b).ok_or_else(|| overflow(span))?),
        BinOp::Mul => Value::Int(a.checked_mul(b).ok_or_else(|| overflow(span))?),
        BinOp::Div => {
            if b == 0 {
                return Err(div0());
            }
            Value::Float(a as f64 / b as f64)
        }
        BinOp::FloorDiv => {
            if b == 0 {
                return Err(div0());
            }
            Value::Int(a.checked_div_euclid(b).ok_or_else(|| overflow(span))?)
        }
        BinOp::Rem => {
            if b == 0 {
                return Err(div0());
            }
            Value::Int(a.checked_rem_euclid(b).ok_or_else(|| overflow(span))?)
        }
        BinOp::Pow => {
            if b < 0 {
                Value::Float((a as f64).powf(b as f64))
            } else {
                let e = u32::try_from(b).map_err(|_| overflow(span))?;
                Value::Int(a.checked_pow(e).ok_or_else(|| overflow(span))?)
            }
        }
        BinOp::Eq => Value::Bool(a == b),
        BinOp::Ne => Value::Bool(a != b),
        BinOp::Lt => Value::Bool(a < b),
        BinOp::Le => Value::Bool(a <= b),
        BinOp::Gt => Value::Bool(a > b),
        BinOp::Ge => Value::Bool(a >= b),
        BinOp::And | BinOp::Or => unreachable!("logic is handled before"),
    })
}

fn float_op(op: BinOp, a: f64, b: f64, span: Span) -> Result<Value, Diagnostic> {
    Ok(match op {
        BinOp::Add => Value::Float(a + b),
        BinOp::Sub => Value::Float(a - b),
        BinOp::Mul => Value::Float(a * b),
        BinOp::Div => {
            if b == 0.0 {
                return Err(float_div0(span));
            }
            Value::Float(a / b)
        }
        BinOp::FloorDiv => {
            if b == 0.0 {
                return Err(float_div0(span));
            }
            Value::Float((a / b).floor())
        }
        BinOp::Rem => Value::Float(a.rem_euclid(b)),
        BinOp::Pow => Value::Float(a.powf(b)),
        BinOp::Eq => Value::Bool(a == b),
        BinOp::Ne => Value::Bool(a != b),
        BinOp::Lt => Value::Bool(a < b),
        BinOp::Le => Value::Bool(a <= b),
        BinOp::Gt => Value::Bool(a > b),
        BinOp::Ge => Value::Bool(a >= b),
        BinOp::And | BinOp::Or => unreachable!("logic is handled before"),
    })
}

fn float_div0(span: Span) -> Diagnostic {
    Diagnostic::new(span, "division by zero")
        .label("the divisor is 0")
        .hint("check the value of the divisor (a model argument or a `--set`)")
}

fn type_error(op: BinOp, l: &Value, r: &Value, span: Span) -> Diagnostic {
    Diagnostic::new(
        span,
        format!(
            "`{}` is not defined for {} and {}",
            op.symbol(),
            l.kind_name(),
            r.kind_name()
        ),
    )
    .label("in this expression")
    .hint("compile-time arithmetic works on numbers, sizes, strings (+) and lists (+, *)")
}
