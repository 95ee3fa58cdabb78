//! The optimisation pipeline: the passes that run between elaboration and
//! lowering, in order, each switchable through [`CompileOptions`] so that
//! its effect can be measured, and each inspectable with
//! `netc compile --emit ir-after=PASS`.

use crate::ir::Graph;
use crate::options::CompileOptions;

/// The names of the passes, in the order they run.
pub const PASS_NAMES: &[&str] = &[];

/// Runs every enabled pass on `g`, stopping after the pass named `stop`
/// when given (an unknown name is an error listing the known ones).
pub fn optimize(g: Graph, options: &CompileOptions, stop: Option<&str>) -> Result<Graph, String> {
    if let Some(name) = stop {
        if !PASS_NAMES.contains(&name) {
            return Err(format!(
                "unknown pass `{name}`; the passes are: {}",
                PASS_NAMES.join(", ")
            ));
        }
    }
    let _ = options;
    Ok(g)
}
