//! The `train` section: labels, the loss (built into the graph as
//! train-only nodes), the optimizer, the schedule and the blocks to recompute.

use super::value::Value;
use super::Elaborator;
use crate::diag::Diagnostic;
use crate::front::ast;
use crate::ir::{Attr, Hyper, TrainSpec};

impl<'a> Elaborator<'a> {
    /// Elaborates `def` (a train section) against the model just built.
    pub(super) fn train(&mut self, def: &'a ast::Def) {
        self.train_mode = true;
        // The train section sees the model's variables (inputs, outputs).
        let _ = self.stmts(&def.body);
        let vars = self
            .frames
            .last()
            .map(|f| f.vars.clone())
            .unwrap_or_default();
        let labels = std::mem::take(&mut self.train_labels);
        let loss = match vars.get("loss") {
            Some(Value::Tensor(t)) => {
                let ty = self.g.ty(*t);
                if !ty.shape.is_empty() || !ty.dtype.is_float() {
                    self.diags.push(
                        Diagnostic::new(def.name.span, format!("the loss must be a float scalar, but it is {}", self.g.type_text(ty)))
                            .label("in this train section")
                            .related(self.g.value(*t).span, "the loss is computed here")
                            .hint("reduce it with `mean(...)` or `sum(...)`, or use a loss op with reduction = \"mean\""),
                    );
                }
                Some(*t)
            }
            Some(Value::Poison) => None,
            Some(other) => {
                self.diags.push(
                    Diagnostic::new(
                        def.name.span,
                        format!("`loss` must be a tensor, not {}", other.kind_name()),
                    )
                    .label("in this train section")
                    .hint("write `loss = cross_entropy(logits, y)`"),
                );
                None
            }
            None => {
                self.diags.push(
                    Diagnostic::new(def.name.span, "the train section sets no `loss`")
                        .label("in this train section")
                        .hint("write `loss = cross_entropy(logits, y)`"),
                );
                None
            }
        };
        let optimizer = match vars.get("optimizer") {
            Some(v) => self.hyper(v, "optimizer", def),
            None => {
                self.diags.push(
                    Diagnostic::new(def.name.span, "the train section sets no `optimizer`")
                        .label("in this train section")
                        .hint("write e.g. `optimizer = adam(lr = 1e-3)` or `optimizer = sgd(lr = 0.1, momentum = 0.9)`"),
                );
                None
            }
        };
        let schedule = vars
            .get("schedule")
            .and_then(|v| self.hyper(v, "schedule", def));
        let recompute = match vars.get("recompute") {
            None => Vec::new(),
            Some(Value::List(items)) => items
                .iter()
                .filter_map(|v| match v {
                    Value::Block(b) => Some(b.to_string()),
                    Value::Str(s) if self.program.blocks.contains_key(&**s) => Some(s.to_string()),
                    other => {
                        self.diags.push(
                            Diagnostic::new(
                                assigned_at(def, "recompute"),
                                format!(
                                    "`recompute` lists blocks; `{}` is not a block",
                                    other.display(&self.g)
                                ),
                            )
                            .label("in this list")
                            .hint("write `recompute = [dense_bottleneck]` with block names"),
                        );
                        None
                    }
                })
                .collect(),
            Some(other) => {
                self.diags.push(
                    Diagnostic::new(
                        def.name.span,
                        format!(
                            "`recompute` must be a list of blocks, not {}",
                            other.kind_name()
                        ),
                    )
                    .label("in this train section"),
                );
                Vec::new()
            }
        };
        self.train_mode = false;
        if let (Some(loss), Some(optimizer)) = (loss, optimizer) {
            self.g.train = Some(TrainSpec {
                labels,
                loss,
                optimizer,
                schedule,
                recompute,
            });
        }
    }

    fn hyper(&mut self, v: &Value, what: &str, def: &ast::Def) -> Option<Hyper> {
        let kind_key = format!("{what}_kind");
        match v {
            Value::Record(fields) if fields.iter().any(|(k, _)| *k == kind_key) => {
                let mut kind = String::new();
                let mut values = Vec::new();
                for (k, val) in fields.iter() {
                    if *k == kind_key {
                        kind = val.display(&self.g);
                        continue;
                    }
                    let attr = match val {
                        Value::Int(n) => Attr::Int(*n),
                        Value::Float(f) => Attr::Float(*f),
                        Value::Bool(b) => Attr::Bool(*b),
                        Value::Str(s) => Attr::Str(s.to_string()),
                        Value::List(items) if items.iter().all(|v| matches!(v, Value::Int(_))) => {
                            Attr::Ints(
                                items
                                    .iter()
                                    .filter_map(|v| match v {
                                        Value::Int(n) => Some(*n),
                                        _ => None,
                                    })
                                    .collect(),
                            )
                        }
                        other => Attr::Str(other.display(&self.g)),
                    };
                    values.push((k.clone(), attr));
                }
                Some(Hyper { kind, values })
            }
            Value::Poison => None,
            other => {
                self.diags.push(
                    Diagnostic::new(
                        def.name.span,
                        format!(
                            "`{what}` must be made by a {what} constructor, not {} `{}`",
                            other.kind_name(),
                            other.display(&self.g)
                        ),
                    )
                    .label("in this train section")
                    .hint(if what == "optimizer" {
                        "use sgd(...), adam(...) or adamw(...)"
                    } else {
                        "use step_lr(...), multi_step_lr(...), cosine(...) or warmup(...)"
                    }),
                );
                None
            }
        }
    }
}

/// The span of the value assigned to `name` in a train section (the section's
/// name when there is no such assignment at its top level).
fn assigned_at(def: &ast::Def, name: &str) -> crate::source::Span {
    def.body
        .iter()
        .find_map(|s| match &s.kind {
            ast::StmtKind::Assign { targets, value }
                if targets.len() == 1 && targets[0].name == name =>
            {
                Some(value.span)
            }
            _ => None,
        })
        .unwrap_or(def.name.span)
}
