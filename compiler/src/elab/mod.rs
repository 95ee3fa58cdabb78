//! Elaboration: evaluates a model's compile-time program (arguments, loops,
//! conditionals, block calls, labels) and builds its typed graph, inferring
//! every shape. Errors do not stop elaboration: a failed expression becomes
//! [`Value::Poison`], which silences follow-up errors, so every independent
//! error of a file is reported in one run.

mod call;
mod expr;
mod train;
mod value;

pub use call::{CallArg, CallCtx, OpResult, MAX_DIM};
pub use value::Value;

use crate::diag::Diagnostic;
use crate::front::ast;
use crate::ir::{
    Dim, Graph, Init, Param, ParamId, Region, RegionId, SymKind, TensorType, ValueDef, ValueId,
};
use crate::program::Program;
use crate::source::Span;
use std::collections::HashMap;

/// Deepest allowed nesting of block calls (guards against runaway recursion).
const MAX_CALL_DEPTH: usize = 64;
/// Most loop iterations and list elements one elaboration may produce.
const MAX_STEPS: u64 = 2_000_000;
/// The error reported when a model spends its elaboration budget.
const BUDGET_SPENT: &str = "elaboration takes too many steps";

/// Elaborates model `model` of `program` with argument overrides `sets`
/// (name → value) into a graph, together with its train section when the
/// program has one. Returns every error found.
pub fn elaborate(
    program: &Program,
    model: &ast::Def,
    sets: &[(String, Value)],
) -> Result<Graph, Vec<Diagnostic>> {
    let mut el = Elaborator::new(program);
    el.g.name = model.name.name.clone();
    el.model(model, sets);
    if el.diags.is_empty() {
        if let Some(train) = program.train_for(&model.name.name) {
            el.train(train);
        }
    }
    // Once the budget is spent every enclosing statement fails the same way;
    // the first report (at the innermost point) is the useful one.
    let mut budget_reported = false;
    el.diags
        .retain(|d| d.message != BUDGET_SPENT || !std::mem::replace(&mut budget_reported, true));
    if el.diags.is_empty() {
        Ok(el.g)
    } else {
        Err(el.diags)
    }
}

/// How a statement list finished.
enum Flow {
    Normal,
    Return(Value, Span),
}

struct Frame {
    vars: HashMap<String, Value>,
    /// The label path prefix inside this block call.
    path: Vec<String>,
    in_model: bool,
}

/// Elaborator state for one model.
pub(crate) struct Elaborator<'a> {
    program: &'a Program,
    g: Graph,
    diags: Vec<Diagnostic>,
    frames: Vec<Frame>,
    region: Option<RegionId>,
    train_mode: bool,
    /// How many `shared` calls enclose the current point.
    shared_depth: usize,
    /// Paths created inside `shared` calls (reusable), with their params.
    shared_paths: HashMap<String, ParamId>,
    /// Index of `g.params` by path, so declaring a parameter is O(1).
    param_by_path: HashMap<String, usize>,
    steps: u64,
    /// Labels declared by the train section.
    train_labels: Vec<(String, ValueId)>,
}

impl<'a> Elaborator<'a> {
    fn new(program: &'a Program) -> Elaborator<'a> {
        Elaborator {
            program,
            g: Graph::default(),
            diags: Vec::new(),
            frames: Vec::new(),
            region: None,
            train_mode: false,
            shared_depth: 0,
            shared_paths: HashMap::new(),
            param_by_path: HashMap::new(),
            steps: 0,
            train_labels: Vec::new(),
        }
    }

    fn frame(&mut self) -> &mut Frame {
        self.frames
            .last_mut()
            .expect("elaboration always has a frame")
    }

    /// The label path of the current block call (`features.denseblock1`).
    pub(crate) fn scope_path(&self) -> String {
        self.frames
            .last()
            .map(|f| f.path.join("."))
            .unwrap_or_default()
    }

    fn lookup_var(&self, name: &str) -> Option<&Value> {
        self.frames.last().and_then(|f| f.vars.get(name))
    }

    fn set_var(&mut self, name: &str, v: Value) {
        self.frame().vars.insert(name.to_string(), v);
    }

    fn step(&mut self, span: Span) -> Result<(), Diagnostic> {
        self.charge(1, span)
    }

    /// Spends `items` units of the elaboration budget (list items built,
    /// loop iterations), so that no input can make elaboration run long.
    fn charge(&mut self, items: u64, span: Span) -> Result<(), Diagnostic> {
        self.steps = self.steps.saturating_add(items);
        if self.steps > MAX_STEPS {
            return Err(Diagnostic::new(span, BUDGET_SPENT)
                .label("while evaluating this")
                .hint(format!(
                    "loops and lists may produce at most {MAX_STEPS} items in one model"
                )));
        }
        Ok(())
    }

    fn model(&mut self, def: &ast::Def, sets: &[(String, Value)]) {
        self.frames.push(Frame {
            vars: HashMap::new(),
            path: Vec::new(),
            in_model: true,
        });
        for (name, _) in sets {
            if !def.params.iter().any(|p| &p.name.name == name) && !is_symbol_name(def, name) {
                let known: Vec<&str> = def.params.iter().map(|p| p.name.name.as_str()).collect();
                self.diags.push(
                    Diagnostic::new(
                        def.name.span,
                        format!(
                            "`--set {name}=...`: model `{}` has no parameter `{name}`",
                            def.name.name
                        ),
                    )
                    .label("this model")
                    .hint(format!(
                        "its parameters are: {}",
                        if known.is_empty() {
                            "(none)".into()
                        } else {
                            known.join(", ")
                        }
                    )),
                );
            }
        }
        for p in &def.params {
            let v = match sets.iter().find(|(n, _)| n == &p.name.name) {
                Some((_, v)) => v.clone(),
                None => match &p.default {
                    Some(e) => self.eval(e),
                    None => {
                        self.diags.push(
                            Diagnostic::new(
                                p.name.span,
                                format!("model parameter `{}` has no default", p.name.name),
                            )
                            .label("no value")
                            .hint(format!(
                                "give it a default (`{} = ...`) or pass `--set {}=...`",
                                p.name.name, p.name.name
                            )),
                        );
                        Value::Poison
                    }
                },
            };
            let v = self.check_param_type(p, v, None);
            self.g.args.push((p.name.name.clone(), v.display(&self.g)));
            self.set_var(&p.name.name, v);
        }
        // Symbol values given with --set (e.g. N=8) only matter for summaries;
        // they are handled by the caller.
        if let Flow::Return(_, span) = self.stmts(&def.body) {
            self.diags.push(
                Diagnostic::new(span, "`return` in a model")
                    .label("models name their results with `output`")
                    .hint("write `output name = expr`"),
            );
        }
        if self.g.outputs.is_empty() && self.diags.is_empty() {
            self.diags.push(
                Diagnostic::new(
                    def.name.span,
                    format!("model `{}` has no outputs", def.name.name),
                )
                .label("this model")
                .hint("declare its results with `output name = expr`"),
            );
        }
    }

    /// Checks `v` against the declared type of `p`; `at` is where the
    /// argument was written (for block calls).
    fn check_param_type(&mut self, p: &ast::Param, v: Value, at: Option<Span>) -> Value {
        let Some(ty) = &p.ty else { return v };
        let ok = match (ty.name.as_str(), &v) {
            (_, Value::Poison) => true,
            ("int", Value::Int(_)) => true,
            ("float", Value::Float(_)) => true,
            ("float", Value::Int(n)) => return Value::Float(*n as f64),
            ("bool", Value::Bool(_)) => true,
            ("str", Value::Str(_)) => true,
            ("list", Value::List(_)) => true,
            ("tensor", Value::Tensor(_)) => true,
            ("size", Value::Int(_) | Value::Dim(_)) => true,
            ("any", _) => true,
            ("int" | "float" | "bool" | "str" | "list" | "tensor" | "size", _) => false,
            (other, _) => {
                self.diags.push(
                    Diagnostic::new(ty.span, format!("unknown parameter type `{other}`"))
                        .label("not a type")
                        .hint(
                            "parameter types are int, float, bool, str, list, tensor, size and any",
                        ),
                );
                return Value::Poison;
            }
        };
        if ok {
            v
        } else {
            self.diags.push({
                let msg = format!(
                    "parameter `{}` is declared `{}` but got {} `{}`",
                    p.name.name,
                    ty.name,
                    v.kind_name(),
                    v.display(&self.g)
                );
                let hint = match (ty.name.as_str(), &v) {
                    ("int", Value::Float(f)) if f.fract() == 0.0 => {
                        format!(
                            "write `{}` without the decimal point, or convert with `int(...)`",
                            *f as i64
                        )
                    }
                    ("bool", _) => "pass `true` or `false`".to_string(),
                    _ => format!("pass a value of type `{}`", ty.name),
                };
                match at {
                    Some(at) => Diagnostic::new(at, msg)
                        .label(format!("this is {}", v.kind_name()))
                        .related(p.name.span, format!("declared `{}` here", ty.name))
                        .hint(hint),
                    None => Diagnostic::new(p.name.span, msg)
                        .label(format!("declared `{}`", ty.name))
                        .hint(hint),
                }
            });
            Value::Poison
        }
    }

    fn stmts(&mut self, stmts: &[ast::Stmt]) -> Flow {
        for s in stmts {
            if let Err(d) = self.step(s.span) {
                self.diags.push(d);
                return Flow::Normal;
            }
            if let Flow::Return(v, span) = self.stmt(s) {
                return Flow::Return(v, span);
            }
        }
        Flow::Normal
    }

    fn stmt(&mut self, s: &ast::Stmt) -> Flow {
        use ast::StmtKind as K;
        match &s.kind {
            K::Input { name, ty } => {
                if !self.frames.last().is_some_and(|f| f.in_model) || self.train_mode {
                    self.diags.push(
                        Diagnostic::new(s.span, "`input` outside a model")
                            .label("inputs belong to models")
                            .hint("blocks take tensors as parameters; train sections declare `label`s"),
                    );
                    self.set_var(&name.name, Value::Poison);
                    return Flow::Normal;
                }
                let v = match self.tensor_type(ty) {
                    Ok(t) => {
                        let id = self
                            .g
                            .add_value(t, ValueDef::Input(name.name.clone()), name.span);
                        if self.g.inputs.iter().any(|(n, _)| n == &name.name) {
                            self.diags.push(
                                Diagnostic::new(
                                    name.span,
                                    format!("input `{}` declared twice", name.name),
                                )
                                .label("second declaration"),
                            );
                        }
                        self.g.inputs.push((name.name.clone(), id));
                        Value::Tensor(id)
                    }
                    Err(d) => {
                        self.diags.push(d);
                        Value::Poison
                    }
                };
                self.set_var(&name.name, v);
            }
            K::Label { name, ty } => {
                if !self.train_mode {
                    self.diags.push(
                        Diagnostic::new(s.span, "`label` outside a train section")
                            .label("labels belong to `train` sections")
                            .hint("declare training targets inside `train <model> { ... }`"),
                    );
                    return Flow::Normal;
                }
                let v = match self.tensor_type(ty) {
                    Ok(t) => {
                        let id = self
                            .g
                            .add_value(t, ValueDef::Label(name.name.clone()), name.span);
                        self.train_labels.push((name.name.clone(), id));
                        Value::Tensor(id)
                    }
                    Err(d) => {
                        self.diags.push(d);
                        Value::Poison
                    }
                };
                self.set_var(&name.name, v);
            }
            K::Output { name, value } => {
                if !self.frames.last().is_some_and(|f| f.in_model) || self.train_mode {
                    self.diags.push(
                        Diagnostic::new(s.span, "`output` outside a model")
                            .label("only models have outputs")
                            .hint("blocks hand results back with `return`"),
                    );
                    return Flow::Normal;
                }
                let v = match value {
                    Some(e) => self.eval(e),
                    None => match self.lookup_var(&name.name) {
                        Some(v) => v.clone(),
                        None => {
                            self.diags.push(self.unknown_name(&name.name, name.span));
                            Value::Poison
                        }
                    },
                };
                match &v {
                    Value::Tensor(id) => {
                        if self.g.outputs.iter().any(|(n, _)| n == &name.name) {
                            self.diags.push(
                                Diagnostic::new(
                                    name.span,
                                    format!("output `{}` declared twice", name.name),
                                )
                                .label("second declaration"),
                            );
                        }
                        self.g.outputs.push((name.name.clone(), *id));
                    }
                    Value::Poison => {}
                    other => self.diags.push(
                        Diagnostic::new(
                            s.span,
                            format!(
                                "output `{}` must be a tensor, not {}",
                                name.name,
                                other.kind_name()
                            ),
                        )
                        .label(format!("this is `{}`", other.display(&self.g)))
                        .hint("outputs are tensors computed by the model"),
                    ),
                }
                self.set_var(&name.name, v);
            }
            K::Return(exprs) => {
                let mut vals: Vec<Value> = exprs.iter().map(|e| self.eval(e)).collect();
                let v = if vals.len() == 1 {
                    vals.remove(0)
                } else {
                    Value::list(vals)
                };
                return Flow::Return(v, s.span);
            }
            K::For { var, iter, body } => {
                let items = match self.eval(iter) {
                    Value::List(items) => items,
                    Value::Poison => return Flow::Normal,
                    other => {
                        self.diags.push(
                            Diagnostic::new(
                                iter.span,
                                format!("cannot loop over {}", other.kind_name()),
                            )
                            .label(format!("this is `{}`", other.display(&self.g)))
                            .hint("loop over a list or a range: `for i in 0..n`"),
                        );
                        return Flow::Normal;
                    }
                };
                for item in items.iter() {
                    self.set_var(&var.name, item.clone());
                    if let Flow::Return(v, sp) = self.stmts(body) {
                        return Flow::Return(v, sp);
                    }
                    if self.steps > MAX_STEPS {
                        break;
                    }
                }
            }
            K::If {
                cond,
                then,
                otherwise,
            } => match self.eval(cond) {
                Value::Bool(true) => return self.stmts(then),
                Value::Bool(false) => return self.stmts(otherwise),
                Value::Poison => {}
                other => self.diags.push(
                    Diagnostic::new(
                        cond.span,
                        format!(
                            "condition must be `true` or `false`, not {}",
                            other.kind_name()
                        ),
                    )
                    .label(format!("this is `{}`", other.display(&self.g)))
                    .hint("conditions are decided at compile time; compare with `==`, `<`, ..."),
                ),
            },
            K::Decl {
                buffer,
                label,
                ty,
                init,
            } => {
                let v = self
                    .decl(*buffer, label, ty, init.as_ref(), s.span)
                    .unwrap_or_else(|d| {
                        self.diags.push(d);
                        Value::Poison
                    });
                if let Some(name) = plain_last_segment(label) {
                    self.set_var(&name, v);
                }
            }
            K::Assign { targets, value } => {
                let v = self.eval(value);
                if targets.len() == 1 {
                    self.set_var(&targets[0].name, v);
                } else {
                    match &v {
                        Value::List(items) if items.len() == targets.len() => {
                            for (t, item) in targets.iter().zip(items.iter()) {
                                self.set_var(&t.name, item.clone());
                            }
                        }
                        Value::Poison => {
                            for t in targets {
                                self.set_var(&t.name, Value::Poison);
                            }
                        }
                        other => {
                            let n = match other {
                                Value::List(items) => format!("a list of {}", items.len()),
                                o => o.kind_name().to_string(),
                            };
                            self.diags.push(
                                Diagnostic::new(
                                    value.span,
                                    format!("cannot unpack {n} into {} names", targets.len()),
                                )
                                .label("this value")
                                .hint("the number of names must equal the number of values"),
                            );
                            for t in targets {
                                self.set_var(&t.name, Value::Poison);
                            }
                        }
                    }
                }
            }
        }
        Flow::Normal
    }

    /// `param path: f32[...] = init` / `buffer ...`.
    fn decl(
        &mut self,
        buffer: bool,
        label: &ast::Label,
        ty: &ast::TensorTypeExpr,
        init: Option<&ast::Expr>,
        span: Span,
    ) -> Result<Value, Diagnostic> {
        let t = self.tensor_type(ty)?;
        if t.known_shape().is_none() {
            return Err(Diagnostic::new(ty.span, "parameters need known sizes")
                .label(format!("type {}", self.g.type_text(&t)))
                .hint("parameter shapes may not depend on the batch or other symbols"));
        }
        let init = match init {
            None => Init::Const(0.0),
            Some(e) => match self.eval(e) {
                Value::Int(n) => Init::Const(n as f64),
                Value::Float(f) => Init::Const(f),
                Value::Record(r) if r.iter().any(|(k, _)| k == "init") => {
                    init_from_record(&Value::Record(r.clone()))
                        .ok_or_else(|| Diagnostic::new(e.span, "bad initialiser").label("here"))?
                }
                Value::Poison => return Ok(Value::Poison),
                other => {
                    return Err(Diagnostic::new(
                        e.span,
                        format!("cannot initialise a parameter with {}", other.kind_name()),
                    )
                    .label("this initialiser")
                    .hint("use a number, `uniform(low, high)` or `normal(mean, std)`"))
                }
            },
        };
        let rel = self.label_text(label)?;
        let path = self.join_path(&rel);
        let id = self.declare_param(path, t, buffer, init, span)?;
        Ok(Value::Tensor(id))
    }

    fn join_path(&self, rel: &str) -> String {
        let prefix = self.scope_path();
        if prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{prefix}.{rel}")
        }
    }

    /// Creates (or, inside `shared` calls, reuses) the parameter at `path`.
    pub(crate) fn declare_param(
        &mut self,
        path: String,
        ty: TensorType,
        buffer: bool,
        init: Init,
        span: Span,
    ) -> Result<ValueId, Diagnostic> {
        if let Some(existing) = self.param_by_path.get(&path).map(|&i| &self.g.params[i]) {
            let reusable = self.shared_depth > 0 && self.shared_paths.contains_key(&path);
            if !reusable {
                let d = Diagnostic::new(span, format!("parameter path `{path}` is defined twice"));
                return Err(if existing.span == span {
                    d.label("this layer runs more than once with the same label")
                        .hint("it is in a loop or in a block called more than once: put the loop variable into the label (`conv{i}: ...`) or label the block call; write `shared` before the label to reuse the same weights on purpose")
                } else {
                    d.label("defined again here")
                        .related(existing.span, "first defined here")
                        .hint("give each layer its own label, or write `shared` before the label to reuse the same weights on purpose")
                });
            }
            if existing.ty != ty {
                let (a, b) = (self.g.type_text(&existing.ty), self.g.type_text(&ty));
                return Err(Diagnostic::new(
                    span,
                    format!("shared parameter `{path}` is {b} here but {a} where it was created"),
                )
                .label(format!("needs {b}"))
                .related(existing.span, format!("created as {a}"))
                .hint("a shared layer must be called with inputs of the same channel count"));
            }
            return Ok(existing.value);
        }
        if ty
            .shape
            .iter()
            .any(|d| d.as_known().is_none_or(|n| n <= 0 || n > MAX_DIM))
        {
            return Err(Diagnostic::new(
                span,
                format!(
                    "parameter `{path}` has an invalid shape {}",
                    self.g.type_text(&ty)
                ),
            )
            .label("here")
            .hint("parameter sizes must be known and between 1 and 2^40"));
        }
        let id = ParamId(self.g.params.len() as u32);
        let v = self.g.add_value(ty.clone(), ValueDef::Param(id), span);
        if self.shared_depth > 0 {
            self.shared_paths.insert(path.clone(), id);
        }
        self.param_by_path.insert(path.clone(), self.g.params.len());
        self.g.params.push(Param {
            path,
            ty,
            buffer,
            init,
            value: v,
            span,
        });
        Ok(v)
    }

    /// Evaluates a tensor type; unbound names become symbols.
    fn tensor_type(&mut self, t: &ast::TensorTypeExpr) -> Result<TensorType, Diagnostic> {
        let mut shape = Vec::new();
        for d in &t.dims {
            let dim = match (&d.size.kind, &d.bound) {
                (ast::ExprKind::Name(n), bound) if self.lookup_var(n).is_none() => {
                    let sym = match self.g.find_symbol(n) {
                        Some(s) => s,
                        None => {
                            let kind = match bound {
                                None => SymKind::Input,
                                Some(b) => {
                                    let bv = self.eval(b);
                                    let bd = bv.as_dim().ok_or_else(|| {
                                        Diagnostic::new(
                                            b.span,
                                            "the bound of a data-dependent size must be a size",
                                        )
                                        .label(format!("this is {}", bv.kind_name()))
                                    })?;
                                    SymKind::DataDependent {
                                        bound: bd,
                                        cap: None,
                                        origin: "declared input size".into(),
                                    }
                                }
                            };
                            self.g.add_symbol(n.clone(), kind)
                        }
                    };
                    let dim = Dim::sym(sym);
                    self.set_var(n, Value::Dim(dim.clone()));
                    dim
                }
                _ => {
                    let v = self.eval(&d.size);
                    if let Value::Poison = v {
                        // Already reported; any size keeps the type well-formed.
                        shape.push(Dim::known(1));
                        continue;
                    }
                    match v.as_dim() {
                        Some(dim) => {
                            if let Some(n) = dim.as_known() {
                                if n <= 0 || n > MAX_DIM {
                                    return Err(Diagnostic::new(
                                        d.size.span,
                                        format!("size {n} is out of range"),
                                    )
                                    .label("this size")
                                    .hint("sizes must be between 1 and 2^40"));
                                }
                            }
                            dim
                        }
                        None => {
                            return Err(Diagnostic::new(
                                d.size.span,
                                format!("a dimension must be a size, not {}", v.kind_name()),
                            )
                            .label(format!("this is `{}`", v.display(&self.g)))
                            .hint("write a number, a parameter name, or a new symbol such as `N`"))
                        }
                    }
                }
            };
            shape.push(dim);
        }
        Ok(TensorType {
            dtype: t.dtype,
            shape,
            sparse: t.sparse,
        })
    }

    /// Renders a label with its interpolations.
    fn label_text(&mut self, label: &ast::Label) -> Result<String, Diagnostic> {
        let mut segs = Vec::new();
        for seg in &label.segments {
            let mut s = String::new();
            for part in seg {
                match part {
                    ast::LabelPart::Text(t) => s.push_str(t),
                    ast::LabelPart::Interp(e) => match self.eval(e) {
                        Value::Int(n) => s.push_str(&n.to_string()),
                        Value::Str(t) => s.push_str(&t),
                        Value::Poison => {
                            return Err(Diagnostic::new(e.span, "bad label").label("here"))
                        }
                        other => {
                            return Err(Diagnostic::new(
                                e.span,
                                format!(
                                    "a label can interpolate an int or a string, not {}",
                                    other.kind_name()
                                ),
                            )
                            .label("in this label")
                            .hint("write e.g. `denselayer{i + 1}`"))
                        }
                    },
                }
            }
            if s.is_empty() || s.contains(|c: char| !(c.is_alphanumeric() || c == '_')) {
                return Err(Diagnostic::new(
                    label.span,
                    format!("label segment `{s}` is not a valid path segment"),
                )
                .label("in this label")
                .hint("segments are letters, digits and `_`"));
            }
            segs.push(s);
        }
        Ok(segs.join("."))
    }

    fn unknown_name(&self, name: &str, span: Span) -> Diagnostic {
        let mut candidates: Vec<String> = self
            .frames
            .last()
            .map(|f| f.vars.keys().cloned().collect())
            .unwrap_or_default();
        candidates.sort();
        let hint = match closest(name, candidates.iter().map(String::as_str)) {
            Some(c) => format!("did you mean `{c}`?"),
            None => "names must be assigned before use (`x = ...`), or be a parameter of the enclosing block".into(),
        };
        Diagnostic::new(span, format!("unknown name `{name}`"))
            .label("not defined here")
            .hint(hint)
    }

    /// Calls block `def` with evaluated arguments.
    fn call_block(
        &mut self,
        def: &'a ast::Def,
        args: Vec<CallArg>,
        span: Span,
        label: Option<String>,
        shared: bool,
    ) -> Value {
        if self.frames.len() > MAX_CALL_DEPTH {
            self.diags.push(
                Diagnostic::new(
                    span,
                    format!("block calls nested more than {MAX_CALL_DEPTH} deep"),
                )
                .label(format!("calling `{}`", def.name.name))
                .hint("a block probably calls itself without a stopping condition"),
            );
            return Value::Poison;
        }
        let mut vars = HashMap::new();
        let mut positional = args.iter().filter(|a| a.name.is_none());
        let mut bound = vec![false; def.params.len()];
        let mut arg_spans = vec![None; def.params.len()];
        let mut ok = true;
        for (i, p) in def.params.iter().enumerate() {
            if let Some(a) = args
                .iter()
                .find(|a| a.name.as_deref() == Some(p.name.name.as_str()))
            {
                vars.insert(p.name.name.clone(), a.value.clone());
                bound[i] = true;
                arg_spans[i] = Some(a.span);
            } else if let Some(a) = positional.next() {
                vars.insert(p.name.name.clone(), a.value.clone());
                bound[i] = true;
                arg_spans[i] = Some(a.span);
            }
        }
        if let Some(extra) = positional.next() {
            self.diags.push(
                Diagnostic::new(
                    extra.span,
                    format!("too many arguments for block `{}`", def.name.name),
                )
                .label("extra argument")
                .related(
                    def.name.span,
                    format!("`{}` takes {} parameters", def.name.name, def.params.len()),
                )
                .hint({
                    let names: Vec<&str> = def.params.iter().map(|p| p.name.name.as_str()).collect();
                    format!(
                        "its parameters are: {}; a piped value (`x |> {}(...)`) fills the first one",
                        names.join(", "),
                        def.name.name
                    )
                }),
            );
            ok = false;
        }
        for a in &args {
            if let Some(n) = &a.name {
                if !def.params.iter().any(|p| &p.name.name == n) {
                    let names: Vec<&str> =
                        def.params.iter().map(|p| p.name.name.as_str()).collect();
                    self.diags.push(
                        Diagnostic::new(
                            a.span,
                            format!("block `{}` has no parameter `{n}`", def.name.name),
                        )
                        .label("unknown keyword")
                        .hint(format!("its parameters are: {}", names.join(", ")))
                        .related(def.name.span, "block defined here"),
                    );
                    ok = false;
                }
            }
        }
        let path_prefix = match &label {
            Some(l) => l.split('.').map(str::to_string).collect(),
            None => self
                .frames
                .last()
                .map(|f| f.path.clone())
                .unwrap_or_default(),
        };
        self.frames.push(Frame {
            vars,
            path: path_prefix,
            in_model: false,
        });
        // Defaults are evaluated inside the block, so they may use earlier
        // parameters (`bn_size * growth`).
        for (i, p) in def.params.iter().enumerate() {
            if !bound[i] {
                match &p.default {
                    Some(e) => {
                        let v = self.eval(e);
                        self.set_var(&p.name.name, v);
                    }
                    None => {
                        self.diags.push(
                            Diagnostic::new(
                                span,
                                format!(
                                    "block `{}` needs the argument `{}`",
                                    def.name.name, p.name.name
                                ),
                            )
                            .label("missing argument")
                            .related(p.name.span, "parameter declared here")
                            .hint(format!(
                                "pass it, e.g. `{}(..., {} = ...)`, or give the parameter a default",
                                def.name.name, p.name.name
                            )),
                        );
                        ok = false;
                    }
                }
            }
            let v = self
                .lookup_var(&p.name.name)
                .cloned()
                .unwrap_or(Value::Poison);
            let v = self.check_param_type(p, v, arg_spans[i]);
            self.set_var(&p.name.name, v);
        }
        if !ok {
            self.frames.pop();
            return Value::Poison;
        }
        let parent = self.region;
        self.g.regions.push(Region {
            block: def.name.name.clone(),
            path: label.clone().unwrap_or_default(),
            parent,
        });
        self.region = Some(RegionId(self.g.regions.len() as u32 - 1));
        if shared {
            self.shared_depth += 1;
        }
        let errors_before = self.diags.len();
        let result = match self.stmts(&def.body) {
            Flow::Return(v, _) => v,
            // A body that failed without `return` would cause follow-up
            // errors about `none`: silence them.
            Flow::Normal if self.diags.len() > errors_before => Value::Poison,
            Flow::Normal => Value::None,
        };
        if shared {
            self.shared_depth -= 1;
        }
        self.region = parent;
        self.frames.pop();
        result
    }

    /// Calls a built-in op. Poisoned arguments short-circuit silently.
    pub(crate) fn call_builtin(
        &mut self,
        name: &str,
        args: Vec<CallArg>,
        span: Span,
        label: Option<String>,
    ) -> Result<Value, Diagnostic> {
        let Some(b) = crate::ops::lookup(name) else {
            return Err(Diagnostic::new(span, format!("unknown op `{name}`")).label("not an op"));
        };
        if args.iter().any(|a| contains_poison(&a.value)) {
            return Ok(Value::Poison);
        }
        let n = args.len();
        let mut ctx = CallCtx {
            el: self,
            op_name: b.name,
            args,
            used: vec![false; n],
            known_names: Vec::new(),
            span,
            label,
        };
        let out = (b.build)(&mut ctx)?;
        if let Some(i) = ctx.used.iter().position(|u| !u) {
            let a = &ctx.args[i];
            let known = ctx.known_names.join(", ");
            return Err(match &a.name {
                Some(k) => Diagnostic::new(a.span, format!("`{}` has no argument `{k}`", b.name))
                    .label("unknown argument")
                    .hint(
                        match pytorch_alias(k)
                            .filter(|a| ctx.known_names.contains(a))
                            .or_else(|| closest(k, ctx.known_names.iter().copied()))
                        {
                            Some(c) => format!("did you mean `{c}`? its arguments are: {known}"),
                            None => format!("its arguments are: {known}"),
                        },
                    ),
                None => Diagnostic::new(
                    a.span,
                    format!("too many positional arguments for `{}`", b.name),
                )
                .label("extra argument")
                .hint(format!(
                    "its arguments are: {known}; pass optional ones by name"
                )),
            });
        }
        Ok(out)
    }
}

fn contains_poison(v: &Value) -> bool {
    match v {
        Value::Poison => true,
        Value::List(items) => items.iter().any(contains_poison),
        Value::Record(fields) => fields.iter().any(|(_, v)| contains_poison(v)),
        _ => false,
    }
}

fn is_symbol_name(def: &ast::Def, name: &str) -> bool {
    def.body.iter().any(|s| match &s.kind {
        ast::StmtKind::Input { ty, .. } => ty
            .dims
            .iter()
            .any(|d| matches!(&d.size.kind, ast::ExprKind::Name(n) if n == name)),
        _ => false,
    })
}

fn plain_last_segment(label: &ast::Label) -> Option<String> {
    match label.segments.last()?.as_slice() {
        [ast::LabelPart::Text(t)] => Some(t.clone()),
        _ => None,
    }
}

fn init_from_record(v: &Value) -> Option<Init> {
    let num = |k: &str| match v.field(k)? {
        Value::Float(f) => Some(*f),
        Value::Int(n) => Some(*n as f64),
        _ => None,
    };
    match v.field("init")? {
        Value::Str(s) if &**s == "uniform" => Some(Init::Uniform {
            low: num("low")?,
            high: num("high")?,
        }),
        Value::Str(s) if &**s == "normal" => Some(Init::Normal {
            mean: num("mean")?,
            std: num("std")?,
        }),
        _ => None,
    }
}

/// netc's name for a PyTorch argument name that netc spells differently
/// (`kernel_size` → `k`), to turn a wrong keyword into a precise hint.
pub(crate) fn pytorch_alias(name: &str) -> Option<&'static str> {
    Some(match name {
        "kernel_size" | "kernel" => "k",
        "padding" => "pad",
        "num_groups" => "groups",
        "normalized_shape" => "shape",
        "output_size" => "out",
        "axis" => "dim",
        _ => return None,
    })
}

/// The candidate closest to `name` by edit distance (a swap of two
/// neighbouring letters counts as one edit), if reasonably close; failing
/// that, a candidate that contains `name` or is contained in it
/// (`classes` → `num_classes`).
pub(crate) fn closest<'c>(
    name: &str,
    candidates: impl Iterator<Item = &'c str>,
) -> Option<&'c str> {
    let candidates: Vec<&str> = candidates.collect();
    let by_distance = candidates
        .iter()
        .map(|c| (edit_distance(name, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3) && *d < name.len().max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c);
    by_distance.or_else(|| {
        candidates
            .iter()
            .filter(|c| name.len() >= 4 && c.len() >= 4 && (c.contains(name) || name.contains(**c)))
            .min_by_key(|c| c.len().abs_diff(name.len()))
            .copied()
    })
}

/// Optimal-string-alignment distance: insertions, deletions, substitutions
/// and transpositions of neighbours each cost 1.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j - 1] + cost)
                .min(d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests;
