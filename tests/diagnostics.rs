//! The error-message corpus: every file in `tests/malformed/` (and the entry
//! file `main.net` of every directory there, for multi-file cases such as
//! import cycles) must produce at least one error, rendered with
//! `file:line:col`, the source line with a caret and label, and a `help:`
//! hint. The rendered text is snapshot-tested with insta, so any change to a
//! message is reviewed.

use netc::diag::{render_all, Diagnostic};
use netc::program::Program;
use std::path::{Path, PathBuf};

/// The repository's `tests/` directory.
fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests")
}

/// Entry files of the corpus, relative to `tests/`, sorted.
fn corpus() -> Vec<PathBuf> {
    let root = tests_dir().join("malformed");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&root).expect("tests/malformed exists") {
        let path = entry.expect("readable directory entry").path();
        let name = path.file_name().expect("entry has a name").to_owned();
        if path.is_dir() {
            let main = path.join("main.net");
            assert!(main.exists(), "{} has no main.net", path.display());
            out.push(Path::new("malformed").join(name).join("main.net"));
        } else if path.extension().is_some_and(|e| e == "net") {
            out.push(Path::new("malformed").join(name));
        }
    }
    out.sort();
    out
}

/// Loads `rel` (relative to `tests/`) and elaborates every model of it;
/// differentiates those with a `train` section; returns every diagnostic
/// and the program (for its sources).
fn check(rel: &Path) -> (Program, Vec<Diagnostic>) {
    // Load with the relative path so that rendered locations do not depend on
    // where the repository is checked out; imports resolve relative to it.
    let (program, mut diags) = Program::load(rel);
    for model in &program.models {
        match netc::elab::elaborate(&program, model, &[]) {
            Err(errs) => diags.extend(errs),
            // A model that elaborates is also differentiated when it has a
            // `train` section: those errors point at an op too.
            Ok(graph) if graph.train.is_some() => {
                if let Err(e) = netc::grad::training_graph(&graph) {
                    diags.push(e.diagnostic().unwrap_or_else(|| {
                        panic!("{}: gradient error without a position: {e}", rel.display())
                    }));
                }
            }
            Ok(_) => {}
        }
    }
    (program, diags)
}

/// The snapshot name of an entry file: `malformed/x.net` → `x`,
/// `malformed/cycle/main.net` → `cycle`.
fn snapshot_name(rel: &Path) -> String {
    let stem = if rel.file_name().is_some_and(|n| n == "main.net") {
        rel.parent().and_then(Path::file_name)
    } else {
        rel.file_stem()
    };
    stem.expect("corpus paths have a name")
        .to_string_lossy()
        .into_owned()
}

/// Does `text` contain `malformed/<path>.net:<line>:<col>`?
fn has_location(text: &str) -> bool {
    let mut rest = text;
    while let Some(i) = rest.find("malformed/") {
        let tail = &rest[i..];
        if let Some(j) = tail.find(".net:") {
            let path = &tail[..j];
            let nums = &tail[j + 5..];
            let path_ok = path
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '/');
            let mut parts = nums.splitn(3, ':');
            let line = parts.next().unwrap_or("");
            let col: String = parts
                .next()
                .unwrap_or("")
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if path_ok
                && !line.is_empty()
                && line.chars().all(|c| c.is_ascii_digit())
                && !col.is_empty()
            {
                return true;
            }
        }
        rest = &tail["malformed/".len()..];
    }
    false
}

#[test]
fn malformed_corpus() {
    // The only test of this binary that depends on the working directory.
    std::env::set_current_dir(tests_dir()).expect("tests/ exists");
    let files = corpus();
    assert!(
        files.len() >= 40,
        "the corpus has only {} files",
        files.len()
    );
    let mut failures = Vec::new();
    for rel in &files {
        let (program, diags) = check(rel);
        let rendered = render_all(&diags, &program.sources);
        let name = snapshot_name(rel);
        if diags.is_empty() {
            failures.push(format!("{}: no error reported", rel.display()));
            continue;
        }
        for d in &diags {
            let one = d.render(&program.sources);
            if !has_location(&one) {
                failures.push(format!("{}: no file:line:col in\n{one}", rel.display()));
            }
            if !one.contains('╰') && !one.contains('┬') {
                failures.push(format!("{}: no caret/label line in\n{one}", rel.display()));
            }
            if !one.contains("help:") {
                failures.push(format!("{}: no `help:` hint in\n{one}", rel.display()));
            }
        }
        insta::assert_snapshot!(name, rendered);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Both syntax errors of a file with mistakes in two different items are
/// reported, each at its own line.
#[test]
fn two_syntax_errors_are_both_reported() {
    let path = tests_dir().join("malformed/syntax_two_errors.net");
    let (_, diags) = Program::load(&path);
    assert_eq!(diags.len(), 2, "{diags:#?}");
}

/// An import cycle names every file of the cycle.
#[test]
fn import_cycle_names_the_cycle() {
    let path = tests_dir().join("malformed/cycle/main.net");
    let (program, diags) = Program::load(&path);
    let text = render_all(&diags, &program.sources);
    assert!(text.contains("import cycle"), "{text}");
    assert!(text.contains("a.net") && text.contains("b.net"), "{text}");
}

/// A shape error names both shapes and points at where each came from.
#[test]
fn shape_error_names_both_shapes() {
    let path = tests_dir().join("malformed/shape_linear_after_conv.net");
    let (program, diags) = check(&path);
    let d = diags.first().expect("an error");
    let text = d.render(&program.sources);
    assert!(
        text.contains("f32[N, 16, 16, 10]") && text.contains("i64[N]"),
        "{text}"
    );
    assert!(!d.related.is_empty(), "no secondary span in {text}");
}

/// Several independent elaboration errors of one model are all reported.
#[test]
fn independent_errors_are_all_reported() {
    let path = tests_dir().join("malformed/several_elaboration_errors.net");
    let (_, diags) = check(&path);
    assert!(diags.len() >= 3, "{diags:#?}");
}
