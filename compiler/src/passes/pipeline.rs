//! The optimisation pipeline: the passes that run between elaboration and
//! lowering, in order, each switchable through [`CompileOptions`] so that
//! its effect can be measured, and each inspectable with
//! `netc compile --emit ir-after=PASS`:
//!
//! 1. `fold_bn` (with `fuse` and `fold_bn`): batch norms folded into the convolutions
//!    before them (`fold_bn`);
//! 2. `pool_first` (with `pool_first`): unpadded average pools moved in
//!    front of the 1×1 convolutions they read (`pool_first`);
//! 3. `layout` (with `layout = auto`): convolution chains in NHWC
//!    (`layout`);
//! 4. `fuse` (with `fuse`): elementwise followers marked `fused_into` their
//!    head (`fuse`).
//!
//! The result is an inference graph: training nodes are left as they are.

use super::{fold_bn, fuse, layout, pool_first, rewrite};
use crate::ir::Graph;
use crate::options::{CompileOptions, LayoutChoice};

/// The names of the passes, in the order they run.
pub const PASS_NAMES: &[&str] = &["fold_bn", "pool_first", "layout", "fuse"];

/// What the passes did to one graph.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Batch norms folded into convolutions.
    pub folded: usize,
    /// Average pools moved in front of their 1×1 convolutions.
    pub pools_moved: usize,
    /// What the layout pass did.
    pub layout: layout::LayoutStats,
    /// What the fusion pass did.
    pub fuse: fuse::FuseStats,
}

/// Runs every enabled pass on `g`, stopping after the pass named `stop`
/// when given (an unknown name is an error listing the known ones).
pub fn optimize(g: Graph, options: &CompileOptions, stop: Option<&str>) -> Result<Graph, String> {
    optimize_with_report(g, options, stop).map(|(g, _)| g)
}

/// [`optimize`], also returning what each pass did.
pub fn optimize_with_report(
    mut g: Graph,
    options: &CompileOptions,
    stop: Option<&str>,
) -> Result<(Graph, Report), String> {
    if let Some(name) = stop {
        if !PASS_NAMES.contains(&name) {
            return Err(format!(
                "unknown pass `{name}`; the passes are: {}",
                PASS_NAMES.join(", ")
            ));
        }
    }
    let mut report = Report::default();
    for &pass in PASS_NAMES {
        match pass {
            "fold_bn" if options.fuse && options.fold_bn => report.folded = fold_bn::run(&mut g),
            "pool_first" if options.pool_first => report.pools_moved = pool_first::run(&mut g),
            "layout" if options.layout == LayoutChoice::Auto => report.layout = layout::run(&mut g),
            "fuse" if options.fuse => report.fuse = fuse::run(&mut g, options.norm_prologue),
            _ => {}
        }
        rewrite::verify(&g).map_err(|e| format!("after pass `{pass}`: {e}"))?;
        if stop == Some(pass) {
            break;
        }
    }
    Ok((g, report))
}
