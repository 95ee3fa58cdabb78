//! The interface between the elaborator and built-in ops: a [`CallCtx`] holds
//! the evaluated arguments of one call, hands them to the op by position or
//! keyword (with defaults in the op's code), records which were used, and lets
//! the op add parameters, constants and nodes to the graph.

use super::value::Value;
use super::Elaborator;
use crate::diag::Diagnostic;
use crate::ir::{
    ConstTensor, Dim, Init, Node, Op, Param, SymId, SymKind, TensorType, ValueDef, ValueId,
};
use crate::source::Span;
use netc_runtime::DType;

/// The result of a built-in op.
pub type OpResult = Result<Value, Diagnostic>;

/// One evaluated argument.
#[derive(Clone, Debug)]
pub struct CallArg {
    /// The keyword, for keyword arguments.
    pub name: Option<String>,
    /// The value.
    pub value: Value,
    /// Where it was written.
    pub span: Span,
}

/// The largest size a dimension may have (2^40): keeps every product of
/// sizes far from overflow.
pub const MAX_DIM: i64 = 1 << 40;

/// A call of a built-in op in progress.
pub struct CallCtx<'e, 'a> {
    pub(super) el: &'e mut Elaborator<'a>,
    pub(super) op_name: &'static str,
    pub(super) args: Vec<CallArg>,
    pub(super) used: Vec<bool>,
    pub(super) known_names: Vec<&'static str>,
    pub(super) span: Span,
    pub(super) label: Option<String>,
}

impl<'e, 'a> CallCtx<'e, 'a> {
    /// The op's name as called.
    pub fn op_name(&self) -> &'static str {
        self.op_name
    }

    /// The span of the whole call.
    pub fn span(&self) -> Span {
        self.span
    }

    /// The full parameter path of this call (prefix + label), if labelled.
    pub fn path(&self) -> Option<&str> {
        self.label.as_deref()
    }

    /// Finds an argument by position (`pos`) or keyword (`name`), marking it used.
    fn find(&mut self, pos: Option<usize>, name: &'static str) -> Option<usize> {
        if !self.known_names.contains(&name) {
            self.known_names.push(name);
        }
        if let Some(i) = self
            .args
            .iter()
            .position(|a| a.name.as_deref() == Some(name))
        {
            self.used[i] = true;
            return Some(i);
        }
        let p = pos?;
        let i = self
            .args
            .iter()
            .enumerate()
            .filter(|(_, a)| a.name.is_none())
            .nth(p)
            .map(|(i, _)| i)?;
        self.used[i] = true;
        Some(i)
    }

    /// The raw value of an argument, if given.
    pub fn value(&mut self, pos: Option<usize>, name: &'static str) -> Option<Value> {
        self.find(pos, name).map(|i| self.args[i].value.clone())
    }

    /// The span of an argument if given, else of the call.
    pub fn arg_span(&mut self, pos: Option<usize>, name: &'static str) -> Span {
        match self.find(pos, name) {
            Some(i) => self.args[i].span,
            None => self.span,
        }
    }

    fn missing(&self, name: &str) -> Diagnostic {
        // A keyword the op does not know is often the missing argument under
        // another name (PyTorch's `kernel_size` for `k`): say so.
        let renamed = self.args.iter().find_map(|a| {
            let k = a.name.as_deref()?;
            (super::pytorch_alias(k) == Some(name)).then_some((k, a.span))
        });
        let d = Diagnostic::new(
            self.span,
            format!("`{}` needs the argument `{name}`", self.op_name),
        )
        .label(format!("`{name}` is missing"));
        match renamed {
            Some((k, span)) => d
                .related(span, format!("`{k}` is PyTorch's name for `{name}`"))
                .hint(format!("write `{name} = ...` instead of `{k} = ...`")),
            None => d.hint(format!(
                "pass it by position or as `{name} = ...`; see docs/language.md for `{}`",
                self.op_name
            )),
        }
    }

    fn wrong_kind(&self, i: usize, name: &str, want: &str) -> Diagnostic {
        let got = &self.args[i].value;
        Diagnostic::new(
            self.args[i].span,
            format!(
                "argument `{name}` of `{}` must be {want}, not {}",
                self.op_name,
                got.kind_name()
            ),
        )
        .label(format!("this is {}", describe(self, got)))
        .hint(match got {
            Value::Str(text) if text.trim().parse::<f64>().is_ok() => {
                format!("remove the quotes: `{name} = {}`", text.trim())
            }
            _ => format!(
                "`{name}` takes {want}; see docs/language.md for `{}`",
                self.op_name
            ),
        })
    }

    /// An optional argument converted by `get`; `none` counts as absent.
    fn opt_arg<T>(
        &mut self,
        pos: Option<usize>,
        name: &'static str,
        want: &str,
        get: fn(&Value) -> Option<T>,
    ) -> Result<Option<T>, Diagnostic> {
        match self.find(pos, name) {
            None => Ok(None),
            Some(i) => match &self.args[i].value {
                Value::None => Ok(None),
                v => get(v)
                    .map(Some)
                    .ok_or_else(|| self.wrong_kind(i, name, want)),
            },
        }
    }

    /// An argument converted by `get`, with a default when absent.
    fn arg<T>(
        &mut self,
        pos: Option<usize>,
        name: &'static str,
        default: Option<T>,
        want: &str,
        get: fn(&Value) -> Option<T>,
    ) -> Result<T, Diagnostic> {
        match self.opt_arg(pos, name, want, get)? {
            Some(v) => Ok(v),
            None => default.ok_or_else(|| self.missing(name)),
        }
    }

    /// A required tensor argument.
    pub fn tensor(
        &mut self,
        pos: Option<usize>,
        name: &'static str,
    ) -> Result<ValueId, Diagnostic> {
        self.arg(pos, name, None, "a tensor", as_tensor)
    }

    /// An optional tensor argument (`none` counts as absent).
    pub fn opt_tensor(
        &mut self,
        pos: Option<usize>,
        name: &'static str,
    ) -> Result<Option<ValueId>, Diagnostic> {
        self.opt_arg(pos, name, "a tensor", as_tensor)
    }

    /// A list of tensors.
    pub fn tensors(
        &mut self,
        pos: Option<usize>,
        name: &'static str,
    ) -> Result<Vec<ValueId>, Diagnostic> {
        let i = self.find(pos, name).ok_or_else(|| self.missing(name))?;
        match &self.args[i].value {
            Value::List(items) => items
                .iter()
                .map(|v| as_tensor(v).ok_or_else(|| self.wrong_kind(i, name, "a list of tensors")))
                .collect(),
            _ => Err(self.wrong_kind(i, name, "a list of tensors")),
        }
    }

    /// An integer argument, with a default when absent.
    pub fn int(
        &mut self,
        pos: Option<usize>,
        name: &'static str,
        default: Option<i64>,
    ) -> Result<i64, Diagnostic> {
        self.arg(pos, name, default, "an integer", as_int)
    }

    /// An optional integer (`none` counts as absent).
    pub fn opt_int(
        &mut self,
        pos: Option<usize>,
        name: &'static str,
    ) -> Result<Option<i64>, Diagnostic> {
        self.opt_arg(pos, name, "an integer", as_int)
    }

    /// A float argument (integers accepted), with a default when absent.
    pub fn float(
        &mut self,
        pos: Option<usize>,
        name: &'static str,
        default: Option<f64>,
    ) -> Result<f64, Diagnostic> {
        self.arg(pos, name, default, "a number", as_number)
    }

    /// A boolean argument, with a default when absent.
    pub fn bool(
        &mut self,
        pos: Option<usize>,
        name: &'static str,
        default: Option<bool>,
    ) -> Result<bool, Diagnostic> {
        self.arg(pos, name, default, "`true` or `false`", |v| match v {
            Value::Bool(b) => Some(*b),
            _ => None,
        })
    }

    /// A string argument, with a default when absent.
    pub fn str(
        &mut self,
        pos: Option<usize>,
        name: &'static str,
        default: Option<&str>,
    ) -> Result<String, Diagnostic> {
        self.arg(
            pos,
            name,
            default.map(str::to_string),
            "a string",
            |v| match v {
                Value::Str(s) => Some(s.to_string()),
                _ => None,
            },
        )
    }

    /// A string argument restricted to `choices`.
    pub fn choice(
        &mut self,
        pos: Option<usize>,
        name: &'static str,
        choices: &[&'static str],
        default: &'static str,
    ) -> Result<&'static str, Diagnostic> {
        let s = self.str(pos, name, Some(default))?;
        match choices.iter().find(|c| **c == s) {
            Some(c) => Ok(c),
            None => Err(self.arg_error(
                pos,
                name,
                format!("`{s}` is not a valid `{name}` for `{}`", self.op_name),
                format!("choose one of: {}", choices.join(", ")),
            )),
        }
    }

    /// `n` integers: a single integer is repeated `n` times (as PyTorch's
    /// `kernel_size=3` means `(3, 3)`).
    pub fn ints(
        &mut self,
        pos: Option<usize>,
        name: &'static str,
        n: usize,
        default: Option<i64>,
    ) -> Result<Vec<i64>, Diagnostic> {
        match self.find(pos, name) {
            None => default
                .map(|d| vec![d; n])
                .ok_or_else(|| self.missing(name)),
            Some(i) => match &self.args[i].value {
                Value::Int(v) => Ok(vec![*v; n]),
                Value::List(items) => {
                    let vals: Option<Vec<i64>> = items
                        .iter()
                        .map(|v| match v {
                            Value::Int(n) => Some(*n),
                            _ => None,
                        })
                        .collect();
                    match vals {
                        Some(v) if v.len() == n => Ok(v),
                        Some(v) => Err(Diagnostic::new(
                            self.args[i].span,
                            format!(
                                "`{name}` of `{}` needs {n} values, got {}",
                                self.op_name,
                                v.len()
                            ),
                        )
                        .label(format!("{} values", v.len()))
                        .hint(format!(
                            "give one integer for all {n} dims, or a list of {n}"
                        ))),
                        None => Err(self.wrong_kind(i, name, "an integer or a list of integers")),
                    }
                }
                _ => Err(self.wrong_kind(i, name, "an integer or a list of integers")),
            },
        }
    }

    /// A list of integers of any length.
    pub fn int_list(
        &mut self,
        pos: Option<usize>,
        name: &'static str,
        default: Option<Vec<i64>>,
    ) -> Result<Vec<i64>, Diagnostic> {
        match self.find(pos, name) {
            None => default.ok_or_else(|| self.missing(name)),
            Some(i) => match &self.args[i].value {
                Value::Int(v) => Ok(vec![*v]),
                Value::List(items) => items
                    .iter()
                    .map(|v| match v {
                        Value::Int(n) => Ok(*n),
                        _ => Err(self.wrong_kind(i, name, "a list of integers")),
                    })
                    .collect(),
                _ => Err(self.wrong_kind(i, name, "a list of integers")),
            },
        }
    }

    /// A list of floats of any length (integers accepted).
    pub fn float_list(
        &mut self,
        pos: Option<usize>,
        name: &'static str,
        default: Option<Vec<f64>>,
    ) -> Result<Vec<f64>, Diagnostic> {
        match self.find(pos, name) {
            None => default.ok_or_else(|| self.missing(name)),
            Some(i) => match &self.args[i].value {
                Value::Int(v) => Ok(vec![*v as f64]),
                Value::Float(v) => Ok(vec![*v]),
                Value::List(items) => items
                    .iter()
                    .map(|v| match v {
                        Value::Int(n) => Ok(*n as f64),
                        Value::Float(f) => Ok(*f),
                        _ => Err(self.wrong_kind(i, name, "a list of numbers")),
                    })
                    .collect(),
                _ => Err(self.wrong_kind(i, name, "a list of numbers")),
            },
        }
    }

    /// A list of sizes that may be symbolic (for `reshape`); `-1` is kept.
    pub fn dims(&mut self, pos: Option<usize>, name: &'static str) -> Result<Vec<Dim>, Diagnostic> {
        let i = self.find(pos, name).ok_or_else(|| self.missing(name))?;
        let items = match &self.args[i].value {
            Value::List(items) => items.clone(),
            _ => return Err(self.wrong_kind(i, name, "a list of sizes")),
        };
        items
            .iter()
            .map(|v| {
                v.as_dim()
                    .ok_or_else(|| self.wrong_kind(i, name, "a list of sizes"))
            })
            .collect()
    }

    /// Fails if `value` is outside `lo..=hi`, pointing at the argument.
    pub fn check_range(
        &mut self,
        pos: Option<usize>,
        name: &'static str,
        value: f64,
        lo: f64,
        hi: f64,
    ) -> Result<(), Diagnostic> {
        if value < lo || value > hi || value.is_nan() {
            // An open upper end (f64::MAX) reads as "at least lo".
            let (range, hint) = if hi >= f64::MAX {
                (
                    format!("must be at least {lo}"),
                    format!("use a value >= {lo}"),
                )
            } else {
                (
                    format!("outside {lo}..={hi}"),
                    format!("use a value between {lo} and {hi}"),
                )
            };
            return Err(self.arg_error(
                pos,
                name,
                format!("`{name}` of `{}` is {value}, {range}", self.op_name),
                hint,
            ));
        }
        Ok(())
    }

    /// An error pointing at an argument (or at the call when it was not given).
    pub fn arg_error(
        &mut self,
        pos: Option<usize>,
        name: &'static str,
        msg: impl Into<String>,
        hint: impl Into<String>,
    ) -> Diagnostic {
        let span = self.arg_span(pos, name);
        Diagnostic::new(span, msg)
            .label(format!("`{name}`"))
            .hint(hint)
    }

    /// An error at the call.
    pub fn error(&self, msg: impl Into<String>, hint: impl Into<String>) -> Diagnostic {
        Diagnostic::new(self.span, msg)
            .label(format!("in this `{}`", self.op_name))
            .hint(hint)
    }

    /// A shape error at the call that also shows, for each listed value, its
    /// type and the source that produced it.
    pub fn shape_error(
        &self,
        msg: impl Into<String>,
        values: &[(&str, ValueId)],
        hint: impl Into<String>,
    ) -> Diagnostic {
        let mut d = Diagnostic::new(self.span, msg)
            .label(format!("in this `{}`", self.op_name))
            .hint(hint);
        for (what, v) in values {
            let info = self.el.g.value(*v);
            let text = format!("{what} is {}, from here", self.el.g.type_text(&info.ty));
            d = d.related(info.span, text);
        }
        d
    }

    /// The type of a value.
    pub fn ty(&self, v: ValueId) -> TensorType {
        self.el.g.ty(v).clone()
    }

    /// A type as text (for messages).
    pub fn type_text(&self, t: &TensorType) -> String {
        self.el.g.type_text(t)
    }

    /// A size as text (for messages).
    pub fn dim_text(&self, d: &Dim) -> String {
        self.el.g.dim_text(d)
    }

    /// A size that must be known at compile time (spatial sizes, channels).
    pub fn known(&self, v: ValueId, axis: usize, what: &str) -> Result<i64, Diagnostic> {
        let ty = self.ty(v);
        match ty.shape.get(axis).and_then(Dim::as_known) {
            Some(n) => Ok(n),
            None => Err(self.shape_error(
                format!(
                    "`{}` needs the {what} (dim {axis}) of its input known at compile time",
                    self.op_name
                ),
                &[("the input", v)],
                "only the batch dimension may be symbolic here",
            )),
        }
    }

    /// Creates a trained parameter `<path>.<name>`.
    pub fn param(&mut self, name: &str, shape: &[i64], init: Init) -> Result<ValueId, Diagnostic> {
        self.declare(name, TensorType::known(DType::F32, shape), false, init)
    }

    /// Creates a buffer `<path>.<name>` (state that is not trained).
    pub fn buffer(
        &mut self,
        name: &str,
        ty: TensorType,
        init: Init,
    ) -> Result<ValueId, Diagnostic> {
        self.declare(name, ty, true, init)
    }

    fn declare(
        &mut self,
        name: &str,
        ty: TensorType,
        buffer: bool,
        init: Init,
    ) -> Result<ValueId, Diagnostic> {
        let Some(prefix) = self.label.clone() else {
            return Err(Diagnostic::new(
                self.span,
                format!("`{}` has parameters and needs a label", self.op_name),
            )
            .label("unlabelled layer")
            .hint(format!(
                "name the layer so its weights have a path, e.g. `conv1: {}(...)`",
                self.op_name
            )));
        };
        let path = if name.is_empty() {
            prefix
        } else {
            format!("{prefix}.{name}")
        };
        self.el.declare_param(path, ty, buffer, init, self.span)
    }

    /// Adds a compile-time constant tensor.
    pub fn constant(&mut self, desc: impl Into<String>, ty: TensorType, data: Vec<f64>) -> ValueId {
        let g = &mut self.el.g;
        let id = crate::ir::ConstId(g.consts.len() as u32);
        let v = g.add_value(ty, ValueDef::Const(id), self.span);
        g.consts.push(ConstTensor {
            desc: desc.into(),
            data,
            value: v,
        });
        v
    }

    /// Adds a data-dependent symbol (a size known only at run time) with an
    /// upper bound and optionally a second one (`cap`; planning takes the
    /// smaller).
    pub fn data_dependent(&mut self, hint: &str, bound: Dim, cap: Option<Dim>) -> SymId {
        let g = &mut self.el.g;
        let mut k = 1;
        let mut name = hint.to_string();
        while g.find_symbol(&name).is_some() {
            k += 1;
            name = format!("{hint}{k}");
        }
        let origin = format!(
            "{} at {}",
            self.op_name,
            self.el.program.sources.location(self.span)
        );
        g.add_symbol(name, SymKind::DataDependent { bound, cap, origin })
    }

    /// An upper bound of a size: every data-dependent symbol is replaced by
    /// its declared bound (repeatedly, as bounds may mention other
    /// data-dependent symbols); input symbols such as the batch `N` stay.
    /// Caps are left out (a linear form has no `min`), so the result may
    /// exceed [`crate::ir::SymKind::planned_bound`]; it is still a bound.
    /// `None` when a data-dependent symbol appears with a negative
    /// coefficient (no upper bound follows).
    pub fn upper_bound(&self, d: &Dim) -> Option<Dim> {
        let mut cur = d.clone();
        for _ in 0..64 {
            let mut next = Dim::known(cur.constant());
            let mut changed = false;
            for &(s, k) in cur.terms() {
                match &self.el.g.symbols.get(s.0 as usize)?.kind {
                    SymKind::DataDependent { bound, .. } => {
                        if k < 0 {
                            return None;
                        }
                        next = next.add(&bound.scale(k));
                        changed = true;
                    }
                    SymKind::Input => next = next.add(&Dim::sym(s).scale(k)),
                }
            }
            cur = next;
            if !changed {
                return Some(cur);
            }
        }
        None
    }

    /// Adds a node computing `op` of `inputs` with results of `outputs` types,
    /// costing `flops`; returns the result values.
    pub fn emit(
        &mut self,
        op: Op,
        inputs: &[ValueId],
        outputs: Vec<TensorType>,
        flops: Dim,
    ) -> Result<Vec<ValueId>, Diagnostic> {
        for t in &outputs {
            for d in &t.shape {
                if let Some(n) = d.as_known() {
                    if n <= 0 || n > MAX_DIM {
                        return Err(self.error(
                            format!(
                                "`{}` would produce a tensor of type {}, with a size of {n}",
                                self.op_name,
                                self.type_text(t)
                            ),
                            "every size must be between 1 and 2^40; check the kernel, stride and padding against the input size",
                        ));
                    }
                }
            }
        }
        let path = self.label.clone().unwrap_or_else(|| self.el.scope_path());
        let g = &mut self.el.g;
        let node_id = crate::ir::NodeId(g.nodes.len() as u32);
        let outs: Vec<ValueId> = outputs
            .into_iter()
            .enumerate()
            .map(|(i, t)| g.add_value(t, ValueDef::Node(node_id, i), self.span))
            .collect();
        g.nodes.push(Node {
            op,
            inputs: inputs.to_vec(),
            outputs: outs.clone(),
            path,
            span: self.span,
            flops,
            region: self.el.region,
            train_only: self.el.train_mode,
            fused_into: None,
        });
        Ok(outs)
    }

    /// [`CallCtx::emit`] for a single result, returned as a tensor value.
    pub fn emit1(
        &mut self,
        op: Op,
        inputs: &[ValueId],
        output: TensorType,
        flops: Dim,
    ) -> OpResult {
        Ok(Value::Tensor(
            self.emit(op, inputs, vec![output], flops)?[0],
        ))
    }

    /// Calls another built-in op with these arguments, at the same source
    /// position and label (for ops defined in terms of others).
    pub fn call(&mut self, op: &str, args: Vec<(Option<&str>, Value)>) -> OpResult {
        let args = args
            .into_iter()
            .map(|(name, value)| CallArg {
                name: name.map(str::to_string),
                value,
                span: self.span,
            })
            .collect();
        self.el
            .call_builtin(op, args, self.span, self.label.clone())
    }

    /// Calls another op with a sub-label appended to this call's path.
    pub fn call_labelled(
        &mut self,
        sub: &str,
        op: &str,
        args: Vec<(Option<&str>, Value)>,
    ) -> OpResult {
        let args = args
            .into_iter()
            .map(|(name, value)| CallArg {
                name: name.map(str::to_string),
                value,
                span: self.span,
            })
            .collect();
        let label = Some(match &self.label {
            Some(p) if !sub.is_empty() => format!("{p}.{sub}"),
            Some(p) => p.clone(),
            None => sub.to_string(),
        });
        self.el.call_builtin(op, args, self.span, label)
    }

    /// The parameter record of a parameter path (for `shared` checks etc.).
    pub fn graph_param(&self, path: &str) -> Option<&Param> {
        self.el
            .param_by_path
            .get(path)
            .map(|&i| &self.el.g.params[i])
    }
}

fn describe(ctx: &CallCtx, v: &Value) -> String {
    match v {
        Value::Tensor(t) => format!("a tensor {}", ctx.el.g.type_text(ctx.el.g.ty(*t))),
        other => format!("{} `{}`", other.kind_name(), other.display(&ctx.el.g)),
    }
}

fn as_tensor(v: &Value) -> Option<ValueId> {
    match v {
        Value::Tensor(t) => Some(*t),
        _ => None,
    }
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        _ => None,
    }
}

fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Int(n) => Some(*n as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}
