//! The abstract syntax tree of a `.net` file. Every node carries the [`Span`]
//! of the text it was parsed from.

use crate::source::Span;
use netc_runtime::DType;

/// A parsed file: its top-level items in source order.
#[derive(Debug, Clone)]
pub struct File {
    /// Imports, blocks, models and train sections.
    pub items: Vec<Item>,
}

/// A top-level item.
#[derive(Debug, Clone)]
pub enum Item {
    /// `import "path.net"`.
    Import(Import),
    /// `block name(params) { ... }`: a reusable sub-network.
    Block(Def),
    /// `model name(params) { ... }`: an entry point.
    Model(Def),
    /// `train model { ... }`: how a model is trained.
    Train(Def),
}

/// `import "path"`.
#[derive(Debug, Clone)]
pub struct Import {
    /// The path as written, relative to the importing file.
    pub path: String,
    /// The whole import statement.
    pub span: Span,
}

/// A block, model or train section: a name, parameters and a body.
#[derive(Debug, Clone)]
pub struct Def {
    /// The name (for a train section: the model it trains).
    pub name: Ident,
    /// Compile-time parameters (empty for train sections).
    pub params: Vec<Param>,
    /// The statements.
    pub body: Vec<Stmt>,
    /// The whole definition.
    pub span: Span,
}

/// An identifier with its span.
#[derive(Debug, Clone)]
pub struct Ident {
    /// The text.
    pub name: String,
    /// Where it was written.
    pub span: Span,
}

/// A parameter of a block or model: `name: type = default`.
#[derive(Debug, Clone)]
pub struct Param {
    /// The parameter name.
    pub name: Ident,
    /// The declared type (`int`, `float`, `bool`, `str`, `list`, `tensor`), if any.
    pub ty: Option<Ident>,
    /// The default value, if any.
    pub default: Option<Expr>,
}

/// A statement with its span.
#[derive(Debug, Clone)]
pub struct Stmt {
    /// What the statement is.
    pub kind: StmtKind,
    /// The whole statement.
    pub span: Span,
}

/// The statement kinds.
#[derive(Debug, Clone)]
pub enum StmtKind {
    /// `input x: f32[N, 3]`.
    Input {
        /// The name.
        name: Ident,
        /// The declared type.
        ty: TensorTypeExpr,
    },
    /// `label y: i64[N]` (train sections).
    Label {
        /// The name.
        name: Ident,
        /// The declared type.
        ty: TensorTypeExpr,
    },
    /// `output name` or `output name = expr`.
    Output {
        /// The name.
        name: Ident,
        /// The value.
        value: Option<Expr>,
    },
    /// `return a, b`.
    Return(Vec<Expr>),
    /// `for var in iter { ... }`.
    For {
        /// The loop variable.
        var: Ident,
        /// What is iterated over.
        iter: Expr,
        /// The statements.
        body: Vec<Stmt>,
    },
    /// `if cond { ... } else { ... }`.
    If {
        /// The condition.
        cond: Expr,
        /// Statements when true.
        then: Vec<Stmt>,
        /// Statements when false (may be empty).
        otherwise: Vec<Stmt>,
    },
    /// `param path: f32[...] = init` or `buffer path: ... = init`.
    Decl {
        /// `buffer` rather than `param`.
        buffer: bool,
        /// The parameter path.
        label: Label,
        /// The declared type.
        ty: TensorTypeExpr,
        /// The initialiser, if given.
        init: Option<Expr>,
    },
    /// `a, b = expr`.
    Assign {
        /// The assigned names.
        targets: Vec<Ident>,
        /// The value.
        value: Expr,
    },
}

/// A tensor type as written: `sparse? dtype[dims]`.
#[derive(Debug, Clone)]
pub struct TensorTypeExpr {
    /// Written with the `sparse` keyword (CSR rows).
    pub sparse: bool,
    /// The element type.
    pub dtype: DType,
    /// The dimensions.
    pub dims: Vec<DimExpr>,
    /// The whole type.
    pub span: Span,
}

/// One dimension of a tensor type: an expression, and for data-dependent
/// sizes an upper bound (`K <= 1000`).
#[derive(Debug, Clone)]
pub struct DimExpr {
    /// The size (a number, a compile-time expression or a new symbol).
    pub size: Expr,
    /// The declared upper bound, if any.
    pub bound: Option<Expr>,
}

/// A parameter path as written: dotted segments, each a sequence of text and
/// `{expr}` interpolations.
#[derive(Debug, Clone)]
pub struct Label {
    /// The segments between dots.
    pub segments: Vec<Vec<LabelPart>>,
    /// The whole label.
    pub span: Span,
}

/// A piece of a label segment.
#[derive(Debug, Clone)]
pub enum LabelPart {
    /// Literal text.
    Text(String),
    /// `{expr}`, replaced by the value's text.
    Interp(Expr),
}

/// An expression with its span.
#[derive(Debug, Clone)]
pub struct Expr {
    /// What the expression is.
    pub kind: ExprKind,
    /// The whole expression.
    pub span: Span,
}

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `//`
    FloorDiv,
    /// `%`
    Rem,
    /// `**`
    Pow,
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `and`
    And,
    /// `or`
    Or,
}

impl BinOp {
    /// The operator as written in source.
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::FloorDiv => "//",
            BinOp::Rem => "%",
            BinOp::Pow => "**",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::And => "and",
            BinOp::Or => "or",
        }
    }
}

/// A call argument: positional or `name = value`.
#[derive(Debug, Clone)]
pub struct Arg {
    /// The keyword, for keyword arguments.
    pub name: Option<Ident>,
    /// The value.
    pub value: Expr,
}

/// A call of a block or built-in op, possibly labelled and shared.
#[derive(Debug, Clone)]
pub struct Call {
    /// The called name.
    pub callee: Ident,
    /// The arguments as written (without the piped-in value).
    pub args: Vec<Arg>,
    /// `label:` before the call: the parameter path of what it creates.
    pub label: Option<Label>,
    /// `shared label: ...`: later evaluations reuse the parameters.
    pub shared: bool,
    /// For `x |> f(...)`, the piped-in value, passed as first argument.
    pub piped: Option<Box<Expr>>,
}

/// The expression kinds.
#[derive(Debug, Clone)]
pub enum ExprKind {
    /// Integer literal.
    Int(i64),
    /// Float literal.
    Float(f64),
    /// String literal.
    Str(String),
    /// `true` / `false`.
    Bool(bool),
    /// `none`.
    None,
    /// A name.
    Name(String),
    /// `[a, b, c]`.
    List(Vec<Expr>),
    /// `[elem for var in iter]`.
    ListComp {
        /// The element expression.
        elem: Box<Expr>,
        /// The loop variable.
        var: Ident,
        /// What is iterated over.
        iter: Box<Expr>,
    },
    /// `-x` or `not x`.
    Unary {
        /// `-` (true) or `not` (false).
        negate: bool,
        /// The operand.
        operand: Box<Expr>,
    },
    /// `a op b`.
    Binary {
        /// The operator.
        op: BinOp,
        /// Left operand.
        lhs: Box<Expr>,
        /// Right operand.
        rhs: Box<Expr>,
    },
    /// `lo..hi` (hi exclusive).
    Range {
        /// First value.
        lo: Box<Expr>,
        /// End (exclusive).
        hi: Box<Expr>,
    },
    /// A call of a block or op.
    Call(Call),
    /// `base[index]`.
    Index {
        /// The indexed value.
        base: Box<Expr>,
        /// The index.
        index: Box<Expr>,
    },
    /// `base.name`.
    Field {
        /// The indexed value.
        base: Box<Expr>,
        /// The name.
        name: Ident,
    },
}
