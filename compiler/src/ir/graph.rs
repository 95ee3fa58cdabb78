//! The typed graph IR: SSA values with static shapes (dims are linear forms
//! over symbols), nodes that apply an op to values, parameters and buffers
//! named by their paths, and an optional training specification.
//!
//! Ops are a name plus typed attributes (like an ONNX node): each op's shape
//! rule, FLOP count and documentation live in one module under `ops/`.

use super::dim::{Dim, SymId};
use crate::source::Span;
use netc_runtime::DType;
pub use netc_runtime::Init;
use std::collections::HashMap;

/// The type of a value: element type, shape, and whether it is a sparse
/// (CSR) matrix whose rows are the first dimension.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorType {
    /// Element type.
    pub dtype: DType,
    /// Dimensions, outermost first.
    pub shape: Vec<Dim>,
    /// CSR layout (`sparse f32[N, V]`): stored as `indices`, `offsets`, `values`.
    pub sparse: bool,
}

impl TensorType {
    /// A dense tensor type.
    pub fn new(dtype: DType, shape: Vec<Dim>) -> TensorType {
        TensorType {
            dtype,
            shape,
            sparse: false,
        }
    }

    /// A dense tensor type with known dims.
    pub fn known(dtype: DType, shape: &[i64]) -> TensorType {
        TensorType::new(dtype, shape.iter().map(|&d| Dim::known(d)).collect())
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// The known dims, or `None` if any is symbolic.
    pub fn known_shape(&self) -> Option<Vec<i64>> {
        self.shape.iter().map(Dim::as_known).collect()
    }

    /// The known dims as sizes, or `None` if any is symbolic (or negative).
    pub fn known_dims(&self) -> Option<Vec<usize>> {
        self.shape
            .iter()
            .map(|d| d.as_known().and_then(|v| usize::try_from(v).ok()))
            .collect()
    }

    /// The element count as a linear form, if it is one (at most one
    /// symbolic dim).
    pub fn numel(&self) -> Option<Dim> {
        self.shape
            .iter()
            .try_fold(Dim::known(1), |acc, d| acc.mul(d))
    }
}

/// Index of a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

/// Index of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

/// Index of a parameter or buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(pub u32);

/// Index of a constant tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConstId(pub u32);

/// Index of a block-call region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegionId(pub u32);

/// Where a value comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum ValueDef {
    /// A model input.
    Input(String),
    /// A training label (from the `train` section).
    Label(String),
    /// A parameter or buffer.
    Param(ParamId),
    /// A tensor computed at compile time.
    Const(ConstId),
    /// Output `index` of a node.
    Node(NodeId, usize),
}

/// A value: its type, its definition and the source that produced it.
#[derive(Clone, Debug)]
pub struct ValueInfo {
    /// The type.
    pub ty: TensorType,
    /// The definition.
    pub def: ValueDef,
    /// The source text that produced it (for "where did this shape come from").
    pub span: Span,
}

/// An attribute value of an op.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A string.
    Str(String),
    /// A list of integers.
    Ints(Vec<i64>),
    /// A list of floats.
    Floats(Vec<f64>),
    /// A list of sizes (may be symbolic).
    Dims(Vec<Dim>),
}

/// An operation: a name and its attributes.
#[derive(Clone, Debug, PartialEq)]
pub struct Op {
    /// The op name (see `docs/language.md`).
    pub name: &'static str,
    /// Attributes in a fixed order.
    pub attrs: Vec<(&'static str, Attr)>,
}

impl Op {
    /// An op without attributes.
    pub fn new(name: &'static str) -> Op {
        Op {
            name,
            attrs: Vec::new(),
        }
    }

    /// Adds an attribute.
    pub fn with(mut self, key: &'static str, value: Attr) -> Op {
        self.attrs.push((key, value));
        self
    }

    /// Looks up an attribute.
    pub fn attr(&self, key: &str) -> Option<&Attr> {
        self.attrs.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

/// One operation applied to values.
#[derive(Clone, Debug)]
pub struct Node {
    /// The op.
    pub op: Op,
    /// Operand values.
    pub inputs: Vec<ValueId>,
    /// Result values.
    pub outputs: Vec<ValueId>,
    /// The layer path (the label of the call that created it, or of the
    /// enclosing block call).
    pub path: String,
    /// The source of the call.
    pub span: Span,
    /// Floating-point operations (a multiply-add counts 2), linear in the batch.
    pub flops: Dim,
    /// The innermost block call this node belongs to.
    pub region: Option<RegionId>,
    /// Part of the loss computation (only run when training).
    pub train_only: bool,
    /// Set by the fusion pass: this node is computed inside the kernel of
    /// the node whose first output is this value (its epilogue, or the next
    /// link of an elementwise chain) and its own output is never stored.
    pub fused_into: Option<ValueId>,
}

/// A parameter (trained) or buffer (state that is not trained, e.g. running
/// statistics), named by its path.
#[derive(Clone, Debug)]
pub struct Param {
    /// The path, e.g. `features.denseblock1.denselayer1.norm1.weight`.
    pub path: String,
    /// The type (always known dims).
    pub ty: TensorType,
    /// A buffer rather than a trained parameter.
    pub buffer: bool,
    /// The default initialisation.
    pub init: Init,
    /// The value that reads it.
    pub value: ValueId,
    /// The source that declared it.
    pub span: Span,
}

/// A tensor computed at compile time (filter taps, mel matrices, ...).
#[derive(Clone, Debug)]
pub struct ConstTensor {
    /// What it is, e.g. `fir_bandpass(low=4, high=8, taps=129)`.
    pub desc: String,
    /// The elements, row-major, as f64 (converted to the value's dtype when
    /// materialised).
    pub data: Vec<f64>,
    /// The value that reads it.
    pub value: ValueId,
}

/// What a symbol stands for.
#[derive(Clone, Debug, PartialEq)]
pub enum SymKind {
    /// A size given with the inputs (the batch `N`, a sequence length).
    Input,
    /// A size known only when the model runs, never above `bound` nor
    /// above `cap`.
    DataDependent {
        /// The upper bound used for memory planning.
        bound: Dim,
        /// A second upper bound the linear `bound` cannot express with it
        /// (sizes are linear forms, without `min`): e.g. the cells of a
        /// sparse conv's output grid times the batch, while `bound` counts
        /// the sites its inputs can reach. Planning takes the smaller.
        cap: Option<Dim>,
        /// Which op produces it.
        origin: String,
    },
}

impl SymKind {
    /// The planning bound of a data-dependent size with its symbols valued
    /// by `value_of`: the smaller of `bound` and `cap` where they evaluate
    /// (saturating); `None` for an input size or when neither does.
    pub fn planned_bound(&self, value_of: &dyn Fn(SymId) -> Option<i64>) -> Option<i64> {
        let SymKind::DataDependent { bound, cap, .. } = self else {
            return None;
        };
        let cap = cap.as_ref().and_then(|c| c.eval_saturating(value_of));
        match (bound.eval_saturating(value_of), cap) {
            (Some(b), Some(c)) => Some(b.min(c)),
            (b, c) => b.or(c),
        }
    }
}

/// A symbolic size.
#[derive(Clone, Debug)]
pub struct Symbol {
    /// The name printed in shapes.
    pub name: String,
    /// What it stands for.
    pub kind: SymKind,
}

/// A block call instance (for recomputation and layer grouping).
#[derive(Clone, Debug)]
pub struct Region {
    /// The called block's name.
    pub block: String,
    /// The label path of the call.
    pub path: String,
    /// The enclosing region.
    pub parent: Option<RegionId>,
}

/// An optimizer or schedule specification: a kind and its hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Hyper {
    /// The kind, e.g. `adam`, `cosine`.
    pub kind: String,
    /// Every hyper-parameter with its value (defaults filled in).
    pub values: Vec<(String, Attr)>,
}

/// The `train` section, elaborated.
#[derive(Clone, Debug)]
pub struct TrainSpec {
    /// Label inputs.
    pub labels: Vec<(String, ValueId)>,
    /// The scalar loss.
    pub loss: ValueId,
    /// The optimizer.
    pub optimizer: Hyper,
    /// The learning-rate schedule, if any.
    pub schedule: Option<Hyper>,
    /// Names of blocks whose calls are recomputed in backward.
    pub recompute: Vec<String>,
}

/// One model, elaborated.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    /// The model name.
    pub name: String,
    /// The model's compile-time arguments as used.
    pub args: Vec<(String, String)>,
    /// Symbols used in shapes.
    pub symbols: Vec<Symbol>,
    /// Every value.
    pub values: Vec<ValueInfo>,
    /// Nodes in a valid execution order.
    pub nodes: Vec<Node>,
    /// Inputs in declaration order.
    pub inputs: Vec<(String, ValueId)>,
    /// Parameters and buffers in declaration order.
    pub params: Vec<Param>,
    /// Compile-time constant tensors.
    pub consts: Vec<ConstTensor>,
    /// Named outputs in declaration order.
    pub outputs: Vec<(String, ValueId)>,
    /// Block-call regions.
    pub regions: Vec<Region>,
    /// The training specification, when the file has a `train` section.
    pub train: Option<TrainSpec>,
}

impl Graph {
    /// Binds the still-unbound symbols of `v`'s type from an actual shape
    /// (a dim that is exactly one symbol takes the actual size), then checks
    /// the whole shape against the type. The error says what differs and is
    /// meant to follow the value's name (`input `x` has shape ...`).
    pub fn bind_shape(
        &self,
        v: ValueId,
        shape: &[usize],
        syms: &mut HashMap<SymId, i64>,
    ) -> Result<(), String> {
        let ty = self.ty(v);
        let mismatch = || format!("has shape {shape:?}, expected {}", self.type_text(ty));
        if ty.rank() != shape.len() {
            return Err(mismatch());
        }
        for (d, &n) in ty.shape.iter().zip(shape) {
            if let ([(s, 1)], 0) = (d.terms(), d.constant()) {
                let prev = *syms.entry(*s).or_insert(n as i64);
                if prev != n as i64 {
                    return Err(format!(
                        "has size {n} for {}, which is {prev} elsewhere",
                        self.sym_name(*s)
                    ));
                }
            }
        }
        let fits = ty
            .shape
            .iter()
            .zip(shape)
            .all(|(d, &n)| d.eval(&|s| syms.get(&s).copied()).as_known() == Some(n as i64));
        if fits {
            Ok(())
        } else {
            Err(mismatch())
        }
    }

    /// The type of a value.
    pub fn ty(&self, v: ValueId) -> &TensorType {
        &self.values[v.0 as usize].ty
    }

    /// The full record of a value.
    pub fn value(&self, v: ValueId) -> &ValueInfo {
        &self.values[v.0 as usize]
    }

    /// The name of a symbol.
    pub fn sym_name(&self, s: SymId) -> String {
        self.symbols[s.0 as usize].name.clone()
    }

    /// A dim as text, using symbol names.
    pub fn dim_text(&self, d: &Dim) -> String {
        d.display(&|s| self.sym_name(s)).to_string()
    }

    /// A type as text: `f32[N, 64, 9, 9]`, `sparse f32[N, 30000]`.
    pub fn type_text(&self, t: &TensorType) -> String {
        let dims: Vec<String> = t.shape.iter().map(|d| self.dim_text(d)).collect();
        format!(
            "{}{}[{}]",
            if t.sparse { "sparse " } else { "" },
            t.dtype,
            dims.join(", ")
        )
    }

    /// Adds a symbol and returns its id.
    pub fn add_symbol(&mut self, name: impl Into<String>, kind: SymKind) -> SymId {
        self.symbols.push(Symbol {
            name: name.into(),
            kind,
        });
        SymId(self.symbols.len() as u32 - 1)
    }

    /// Finds a symbol by name.
    pub fn find_symbol(&self, name: &str) -> Option<SymId> {
        self.symbols
            .iter()
            .position(|s| s.name == name)
            .map(|i| SymId(i as u32))
    }

    /// Adds a value and returns its id.
    pub fn add_value(&mut self, ty: TensorType, def: ValueDef, span: Span) -> ValueId {
        self.values.push(ValueInfo { ty, def, span });
        ValueId(self.values.len() as u32 - 1)
    }

    /// Total element count of trained parameters (buffers excluded).
    pub fn param_count(&self) -> i64 {
        self.params
            .iter()
            .filter(|p| !p.buffer)
            .map(|p| p.ty.known_shape().map_or(0, |s| s.iter().product::<i64>()))
            .sum()
    }
}
