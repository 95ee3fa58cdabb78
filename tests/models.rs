//! The seed models: snapshot tests of the printed IR of every model in
//! `models/`, and the comparison of every model's parameter and buffer list
//! with the reference `state_dict` key list in `tests/fixtures/keys/`
//! (dumped from torchvision / diffusers / torchvggish by
//! `tests/fixtures/dump_keys.py`), plus the reference parameter counts.

use netc::ir::Graph;
use netc::program::Program;
use netc::source::FileId;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Elaborates every model defined in `file` (not those of its imports) with
/// default arguments. Panics with the rendered diagnostics on errors.
fn elaborate_file(file: &Path) -> Vec<(String, Graph)> {
    let (program, diags) = Program::load(file);
    assert!(
        diags.is_empty(),
        "{} does not load:\n{}",
        file.display(),
        netc::diag::render_all(&diags, &program.sources)
    );
    let mut out = Vec::new();
    for model in program.models.iter().filter(|m| m.span.file == FileId(0)) {
        match netc::elab::elaborate(&program, model, &[]) {
            Ok(g) => out.push((model.name.name.clone(), g)),
            Err(diags) => panic!(
                "model `{}` of {} does not elaborate:\n{}",
                model.name.name,
                file.display(),
                netc::diag::render_all(&diags, &program.sources)
            ),
        }
    }
    out
}

/// Every `.net` file in `models/`, sorted.
fn model_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("models"))
        .expect("models/ exists")
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "net"))
        .collect();
    files.sort();
    files
}

/// Snapshot of the printed IR of every model in every file of `models/`
/// (`models__<file>__<model>.snap`). Block libraries without models are
/// only checked to load.
#[test]
fn ir_snapshots() {
    for file in model_files() {
        let stem = file
            .file_stem()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        for (model, graph) in elaborate_file(&file) {
            let name = format!("{stem}__{model}");
            // Source locations in the IR (origins of data-dependent sizes)
            // are printed relative to the repository, whatever its path.
            let root = format!("{}/", repo().display());
            let text = netc::ir::print_graph(&graph).replace(&root, "");
            insta::assert_snapshot!(name, text);
        }
    }
}

/// One reference comparison: model `model` of `models/<file>` against
/// `tests/fixtures/keys/<fixture>.txt` and the `<fixture>` line of
/// `param_counts.txt`.
struct KeyCase {
    file: &'static str,
    model: &'static str,
    fixture: &'static str,
}

const KEY_CASES: &[KeyCase] = &[
    KeyCase {
        file: "densenet.net",
        model: "densenet121",
        fixture: "densenet121",
    },
    KeyCase {
        file: "densenet.net",
        model: "densenet169",
        fixture: "densenet169",
    },
    KeyCase {
        file: "densenet.net",
        model: "densenet201",
        fixture: "densenet201",
    },
    KeyCase {
        file: "densenet.net",
        model: "densenet161",
        fixture: "densenet161",
    },
    KeyCase {
        file: "vggish.net",
        model: "vggish",
        fixture: "vggish",
    },
    KeyCase {
        file: "eeg_ccnn.net",
        model: "eeg_ccnn",
        fixture: "eeg_ccnn",
    },
    KeyCase {
        file: "eeg_mlp.net",
        model: "eeg_mlp",
        fixture: "eeg_mlp",
    },
    KeyCase {
        file: "eeg_svm.net",
        model: "eeg_svm",
        fixture: "eeg_svm",
    },
    KeyCase {
        file: "sd_unet.net",
        model: "sd_unet",
        fixture: "sd_unet",
    },
    KeyCase {
        file: "sd_unet.net",
        model: "sd_unet_small",
        fixture: "sd_unet_small",
    },
    // The DSSM family and spconv: keys from tests/fixtures/dump_keys_sparse.py
    // (PyTorch modules of shared/peers/models.py and spconv 2.3.8).
    KeyCase {
        file: "dssm.net",
        model: "dssm",
        fixture: "dssm",
    },
    KeyCase {
        file: "dssm.net",
        model: "cnn_dssm",
        fixture: "cnn_dssm",
    },
    KeyCase {
        file: "spconv.net",
        model: "spconv_encoder",
        fixture: "spconv_encoder",
    },
    // torchvision's pretrained FCOS layout: FrozenBatchNorm2d in the backbone,
    // whose statistics and affine terms are buffers.
    KeyCase {
        file: "fcos.net",
        model: "fcos_resnet50_fpn",
        fixture: "fcos_resnet50_fpn_frozenbn",
    },
];

fn fixture_lines(name: &str) -> Vec<String> {
    let path = repo()
        .join("tests/fixtures/keys")
        .join(format!("{name}.txt"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The reference parameter count of `name`, from `param_counts.txt` or
/// `param_counts_sparse.txt`.
fn reference_count(name: &str) -> i64 {
    ["param_counts.txt", "param_counts_sparse.txt"]
        .iter()
        .map(|f| repo().join("tests/fixtures/keys").join(f))
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|text| text.lines().map(str::to_string).collect::<Vec<_>>())
        .find_map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next() == Some(name)).then(|| parts.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no `{name}` line in tests/fixtures/keys/param_counts*.txt"))
}

/// Compares two key lists as sets; describes every difference (first ones
/// first) or returns `None` when they are equal.
fn compare_keys(netc: &[String], reference: &[String]) -> Option<String> {
    let ours: BTreeSet<&str> = netc.iter().map(String::as_str).collect();
    let theirs: BTreeSet<&str> = reference.iter().map(String::as_str).collect();
    if ours == theirs && netc.len() == reference.len() {
        return None;
    }
    let missing: Vec<&str> = theirs.difference(&ours).copied().collect();
    let extra: Vec<&str> = ours.difference(&theirs).copied().collect();
    let mut msg = format!(
        "{} netc entries vs {} reference entries; {} missing from netc, {} extra in netc\n",
        netc.len(),
        reference.len(),
        missing.len(),
        extra.len()
    );
    // The first difference in reference order is usually the most telling.
    if let Some(first) = reference.iter().find(|l| !ours.contains(l.as_str())) {
        msg.push_str(&format!("first reference entry netc lacks: {first}\n"));
        let path = first.split_whitespace().next().unwrap_or("");
        if let Some(near) = netc
            .iter()
            .find(|l| l.split_whitespace().next() == Some(path))
        {
            msg.push_str(&format!("  netc has the same path as:      {near}\n"));
        }
    }
    for (what, list) in [("missing", &missing), ("extra", &extra)] {
        for line in list.iter().take(15) {
            msg.push_str(&format!("  {what}: {line}\n"));
        }
        if list.len() > 15 {
            msg.push_str(&format!("  ... and {} more {what}\n", list.len() - 15));
        }
    }
    let dup = netc.len() - ours.len();
    if dup > 0 {
        msg.push_str(&format!("  netc lists {dup} entries more than once\n"));
    }
    Some(msg)
}

#[test]
fn parameter_keys_and_counts_match_the_references() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in KEY_CASES {
        let file = repo().join("models").join(case.file);
        if !file.exists() {
            failures.push(format!(
                "{}: models/{} does not exist",
                case.model, case.file
            ));
            continue;
        }
        let graphs = elaborate_file(&file);
        let Some((_, graph)) = graphs.iter().find(|(name, _)| name == case.model) else {
            failures.push(format!(
                "{}: models/{} defines no model `{}`",
                case.model, case.file, case.model
            ));
            continue;
        };
        checked += 1;
        let ours: Vec<String> = netc::summary::param_list(graph)
            .lines()
            .map(str::to_string)
            .collect();
        if let Some(diff) = compare_keys(&ours, &fixture_lines(case.fixture)) {
            failures.push(format!(
                "{} vs tests/fixtures/keys/{}.txt:\n{diff}",
                case.model, case.fixture
            ));
        }
        let (count, want) = (graph.param_count(), reference_count(case.fixture));
        if count != want {
            failures.push(format!(
                "{}: {count} trainable parameters, the reference has {want} (difference {})",
                case.model,
                count - want
            ));
        }
    }
    assert!(checked > 0, "no model was checked");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn key_comparison_reports_differences() {
    let a = vec![
        "x.weight f32 [2, 3] param".to_string(),
        "x.bias f32 [2] param".to_string(),
    ];
    let b = vec![
        "x.weight f32 [2, 4] param".to_string(),
        "x.bias f32 [2] param".to_string(),
    ];
    assert!(compare_keys(&a, &a).is_none());
    let msg = compare_keys(&a, &b).expect("a difference");
    assert!(
        msg.contains("first reference entry netc lacks: x.weight f32 [2, 4] param"),
        "{msg}"
    );
    assert!(
        msg.contains("netc has the same path as:      x.weight f32 [2, 3] param"),
        "{msg}"
    );
}
