//! Feeds arbitrary UTF-8 text to the front end: load (parse + imports),
//! elaborate every model, print the IR and render every diagnostic. Any
//! panic is a bug: errors in `.net` input must become diagnostics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A path in a directory that does not exist: imports fail cleanly
    // instead of reading whatever lies around.
    let path = Path::new("/nonexistent-netc-fuzz/input.net");
    let (program, mut diags) = netc::program::Program::from_text(path, text);
    for model in &program.models {
        match netc::elab::elaborate(&program, model, &[]) {
            Ok(graph) => {
                let _ = netc::ir::print_graph(&graph);
                let _ = netc::summary::param_list(&graph);
            }
            Err(errors) => diags.extend(errors),
        }
    }
    let _ = netc::diag::render_all(&diags, &program.sources);
});
