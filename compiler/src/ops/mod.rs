//! Built-in ops: each module holds one family, with the shape rule, the
//! parameters it creates (with PyTorch's default initialisation) and the FLOP
//! count of every op in it. `docs/language.md` documents them all.

mod attention;
mod conv;
mod detect;
mod detect_loss;
mod elementwise;
mod embed;
mod funcs;
mod linear;
mod loss;
mod norm;
mod pool;
mod reduce;
mod resize;
mod rnn;
mod shape;
mod signal;
mod sparse;
mod train;
pub(crate) mod util;

use crate::elab::{CallCtx, OpResult};

/// A built-in op or compile-time function.
pub struct Builtin {
    /// The name it is called by.
    pub name: &'static str,
    /// Builds the op for one call: reads arguments, checks shapes, emits nodes.
    pub build: fn(&mut CallCtx) -> OpResult,
}

const FAMILIES: &[&[Builtin]] = &[
    elementwise::BUILTINS,
    funcs::BUILTINS,
    linear::BUILTINS,
    conv::BUILTINS,
    shape::BUILTINS,
    signal::BUILTINS,
    train::BUILTINS,
    norm::BUILTINS,
    pool::BUILTINS,
    reduce::BUILTINS,
    loss::BUILTINS,
    attention::BUILTINS,
    resize::BUILTINS,
    embed::BUILTINS,
    rnn::BUILTINS,
    sparse::BUILTINS,
    detect::BUILTINS,
    detect_loss::BUILTINS,
];

/// The built-in called `name`.
pub fn lookup(name: &str) -> Option<&'static Builtin> {
    FAMILIES
        .iter()
        .flat_map(|f| f.iter())
        .find(|b| b.name == name)
}

/// Every built-in name.
pub fn names() -> impl Iterator<Item = &'static str> {
    FAMILIES.iter().flat_map(|f| f.iter()).map(|b| b.name)
}
