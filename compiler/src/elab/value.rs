//! Compile-time values of the elaborator: numbers, strings, lists, symbolic
//! sizes, records, and references to IR tensors.

use crate::ir::{Dim, Graph, ValueId};
use std::rc::Rc;

/// A value during elaboration.
#[derive(Clone, Debug)]
pub enum Value {
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A string.
    Str(Rc<str>),
    /// `none`.
    None,
    /// A size that depends on a symbol (`N`, `2*N`).
    Dim(Dim),
    /// A list.
    List(Rc<Vec<Value>>),
    /// Named fields (optimizer specs, sparse tensors, several results).
    Record(Rc<Vec<(String, Value)>>),
    /// A tensor in the graph.
    Tensor(ValueId),
    /// A user-defined block, named where a block is expected (`recompute`).
    Block(Rc<str>),
    /// The result of an expression that already failed with a reported
    /// error; it silences follow-up errors.
    Poison,
}

impl Value {
    /// A short description of the kind, for error messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Bool(_) => "bool",
            Value::Str(_) => "str",
            Value::None => "none",
            Value::Dim(_) => "symbolic size",
            Value::List(_) => "list",
            Value::Record(_) => "record",
            Value::Tensor(_) => "tensor",
            Value::Block(_) => "block",
            Value::Poison => "error",
        }
    }

    /// A list value.
    pub fn list(items: Vec<Value>) -> Value {
        Value::List(Rc::new(items))
    }

    /// A record value.
    pub fn record(fields: Vec<(&str, Value)>) -> Value {
        Value::Record(Rc::new(
            fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        ))
    }

    /// A size as a value: `Int` when known, `Dim` otherwise.
    pub fn from_dim(d: Dim) -> Value {
        match d.as_known() {
            Some(n) => Value::Int(n),
            None => Value::Dim(d),
        }
    }

    /// The value as a size, if it is an integer or a symbolic size.
    pub fn as_dim(&self) -> Option<Dim> {
        match self {
            Value::Int(n) => Some(Dim::known(*n)),
            Value::Dim(d) => Some(d.clone()),
            _ => None,
        }
    }

    /// A field of a record.
    pub fn field(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Record(fields) => fields.iter().find(|(k, _)| k == name).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The value as source-like text (for labels and `--set` echoes).
    pub fn display(&self, g: &Graph) -> String {
        match self {
            Value::Int(n) => n.to_string(),
            Value::Float(f) => crate::ir::format_float(*f),
            Value::Bool(b) => b.to_string(),
            Value::Str(s) => s.to_string(),
            Value::None => "none".into(),
            Value::Dim(d) => g.dim_text(d),
            Value::List(items) => {
                let parts: Vec<String> = items.iter().map(|v| v.display(g)).collect();
                format!("[{}]", parts.join(", "))
            }
            Value::Record(fields) => {
                let parts: Vec<String> = fields
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.display(g)))
                    .collect();
                format!("{{{}}}", parts.join(", "))
            }
            Value::Tensor(v) => format!("%{}", v.0),
            Value::Block(b) => b.to_string(),
            Value::Poison => "<error>".into(),
        }
    }
}
