//! Helpers for unit tests of ops and elaboration: elaborate a snippet of
//! `.net` text and look at the result.

use crate::elab::elaborate;
use crate::ir::Graph;
use crate::program::Program;
use std::path::Path;

/// Elaborates the model `m` of `text` (or its only model). On failure,
/// returns every error message joined by newlines.
pub fn program(text: &str) -> Result<Graph, String> {
    let (p, diags) = Program::from_text(Path::new("t.net"), text);
    if !diags.is_empty() {
        return Err(diags
            .iter()
            .map(|d| d.message.clone())
            .collect::<Vec<_>>()
            .join("\n"));
    }
    let def = p.model(Some("m")).or_else(|_| p.model(None))?;
    elaborate(&p, def, &[]).map_err(|ds| {
        ds.iter()
            .map(|d| d.message.clone())
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// Elaborates `body` as the body of a model `m`; on failure returns the
/// first error message.
pub fn model(body: &str) -> Result<Graph, String> {
    program(&format!("model m {{\n{body}\n}}\n"))
        .map_err(|e| e.lines().next().unwrap_or_default().to_string())
}

/// The printed type of output `name`.
pub fn out_type(g: &Graph, name: &str) -> String {
    let v = g
        .outputs
        .iter()
        .find(|(n, _)| n == name)
        .expect("output exists")
        .1;
    g.type_text(g.ty(v))
}

/// The printed types of every output, in order.
pub fn output_types(g: &Graph) -> Vec<String> {
    g.outputs
        .iter()
        .map(|(_, v)| g.type_text(g.ty(*v)))
        .collect()
}
