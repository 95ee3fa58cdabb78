//! Backward rules, one module per op family. A rule receives the forward
//! node, the gradient of each of its results (`None`: the loss does not
//! depend on it) and which operands need a gradient, and returns one
//! gradient per operand (`None` where none is needed or defined). Rules
//! emit ordinary IR nodes through [`GradCx`].

mod bags;
mod detect;
mod elementwise;
mod loss;
mod nn;
mod rnn;
mod shape;
mod text;
mod voxel;

use super::{GradCx, GradError};
use crate::ir::{Node, ValueId};

/// A backward rule (see the module docs).
pub type Rule =
    fn(&mut GradCx, &Node, &[Option<ValueId>], &[bool]) -> Result<Vec<Option<ValueId>>, GradError>;

const FAMILIES: &[&[(&str, Rule)]] = &[
    elementwise::RULES,
    shape::RULES,
    nn::RULES,
    loss::RULES,
    rnn::RULES,
    text::RULES,
    bags::RULES,
    voxel::RULES,
    detect::RULES,
];

/// The rule of op `name`.
pub fn lookup(name: &str) -> Option<Rule> {
    FAMILIES
        .iter()
        .flat_map(|f| f.iter())
        .find(|(n, _)| *n == name)
        .map(|(_, r)| *r)
}

/// Every op that has a backward rule.
pub fn names() -> impl Iterator<Item = &'static str> {
    FAMILIES.iter().flat_map(|f| f.iter()).map(|(n, _)| *n)
}

/// The gradient of the single result, which must be present (a rule is
/// only called when some result has one).
fn only(cx: &GradCx, dys: &[Option<ValueId>]) -> Result<ValueId, GradError> {
    dys.first()
        .copied()
        .flatten()
        .ok_or_else(|| cx.error("the gradient of the result is missing"))
}
