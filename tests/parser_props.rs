//! Property tests: no input makes the front end panic or hang, and the core
//! shape rules agree with direct formulas.
//!
//! * random token sequences over the language's token set,
//! * random expression programs inside a model (ops called with random
//!   arguments),
//! * random mutations (delete / duplicate / swap / replace tokens, truncate)
//!   of the real model files in `models/`,
//! * conv2d output size, broadcasting and `reshape` with -1 against simple
//!   references.

use netc::program::Program;
use proptest::prelude::*;
use std::path::{Path, PathBuf};

/// Parses `text` as if it were `path`, elaborates every model, prints each
/// graph and renders every diagnostic. Panics propagate. Termination needs
/// no clock: the elaborator's step budget bounds its work on any input (the
/// elaboration tests check that a runaway list hits it).
fn run_front_end(path: &Path, text: &str) {
    let (program, mut diags) = Program::from_text(path, text);
    for model in &program.models {
        match netc::elab::elaborate(&program, model, &[]) {
            Ok(g) => {
                let _ = netc::ir::print_graph(&g);
                let _ = netc::summary::param_list(&g);
            }
            Err(errs) => diags.extend(errs),
        }
    }
    let _ = netc::diag::render_all(&diags, &program.sources);
}

fn fake_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/generated.net")
}

// ---- random token sequences ----------------------------------------------

const TOKENS: &[&str] = &[
    "block",
    "model",
    "train",
    "import",
    "input",
    "output",
    "label",
    "return",
    "for",
    "in",
    "if",
    "else",
    "param",
    "buffer",
    "shared",
    "and",
    "or",
    "not",
    "true",
    "false",
    "none",
    "sparse",
    "x",
    "y",
    "h",
    "N",
    "m",
    "b",
    "conv2d",
    "linear",
    "relu",
    "concat",
    "reshape",
    "flatten",
    "batch_norm",
    "max_pool2d",
    "cross_entropy",
    "adam",
    "len",
    "range",
    "channels",
    "0",
    "1",
    "3",
    "64",
    "-1",
    "0.5",
    "1e-3",
    "99999999999999999999",
    "1e999",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    ".",
    "..",
    "=",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "+",
    "-",
    "*",
    "/",
    "//",
    "%",
    "**",
    "|>",
    "conv1:",
    "features.0:",
    "layer{i}:",
    "\"a.net\"",
    "\"\"",
    "\"x",
    "\n",
    "\n",
    "#c\n",
    "f32",
    "i64",
    "f32[N, 3, 8, 8]",
    "f32[]",
    "k",
    "=",
    "stride",
    "pad",
    "dim",
    "é",
    "\t",
    "\\",
    ";",
    "@",
];

fn token_soup() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TOKENS), 0..80).prop_map(|t| t.join(" "))
}

// ---- random expression programs ------------------------------------------

fn arg_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("x".to_string()),
        Just("h".to_string()),
        (-3i64..70).prop_map(|n| n.to_string()),
        Just("0.5".to_string()),
        Just("true".to_string()),
        Just("none".to_string()),
        Just("\"mean\"".to_string()),
        Just("[x, h]".to_string()),
        Just("[2, 3]".to_string()),
        Just("[-1, 4]".to_string()),
        Just("[]".to_string()),
        Just("x.shape[1]".to_string()),
        Just("N".to_string()),
    ]
}

fn call_expr() -> impl Strategy<Value = String> {
    let names: Vec<&'static str> = netc::ops::names().collect();
    let keywords = [
        "k",
        "stride",
        "pad",
        "dim",
        "groups",
        "bias",
        "eps",
        "p",
        "out",
        "shape",
        "reduction",
    ];
    (
        prop::sample::select(names),
        prop::collection::vec(
            (
                prop::option::of(prop::sample::select(keywords.to_vec())),
                arg_value(),
            ),
            0..4,
        ),
        any::<bool>(),
        0u8..100,
    )
        .prop_map(|(op, args, piped, label)| {
            let args: Vec<String> = args
                .into_iter()
                .map(|(k, v)| match k {
                    Some(k) => format!("{k} = {v}"),
                    None => v,
                })
                .collect();
            let call = format!("l{label}: {op}({})", args.join(", "));
            if piped {
                format!("x |> {call}")
            } else {
                call
            }
        })
}

fn expression_program() -> impl Strategy<Value = String> {
    prop::collection::vec(call_expr(), 1..6).prop_map(|calls| {
        let mut text = String::from("model m(c = 4) {\n    input x: f32[N, 4, 8, 8]\n    h = x\n");
        for (i, c) in calls.iter().enumerate() {
            text.push_str(&format!("    h{i} = {c}\n"));
        }
        text.push_str("    output y = h\n}\n");
        text
    })
}

// ---- mutations of the real models ------------------------------------------

fn model_sources() -> Vec<(PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("models/ exists")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "net"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("readable model file");
            (p, text)
        })
        .collect()
}

/// Splits text into tokens (words, numbers, single punctuation characters,
/// whitespace runs) so that mutations act on meaningful units.
fn tokens(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    let kind = |c: char| {
        if c.is_alphanumeric() || c == '_' || c == '.' {
            0
        } else if c.is_whitespace() {
            1
        } else {
            2
        }
    };
    for c in text.chars() {
        let k = kind(c);
        if let Some(last) = cur.chars().last() {
            if k == 2 || kind(last) != k {
                out.push(std::mem::take(&mut cur));
            }
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[derive(Debug, Clone)]
enum Mutation {
    Delete(usize),
    Duplicate(usize),
    Swap(usize, usize),
    Replace(usize, &'static str),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let idx = any::<prop::sample::Index>();
    prop_oneof![
        idx.clone()
            .prop_map(|i| Mutation::Delete(i.index(usize::MAX))),
        idx.clone()
            .prop_map(|i| Mutation::Duplicate(i.index(usize::MAX))),
        (idx.clone(), idx.clone())
            .prop_map(|(a, b)| Mutation::Swap(a.index(usize::MAX), b.index(usize::MAX))),
        (idx.clone(), prop::sample::select(TOKENS))
            .prop_map(|(i, t)| Mutation::Replace(i.index(usize::MAX), t)),
        idx.prop_map(|i| Mutation::Truncate(i.index(usize::MAX))),
    ]
}

fn apply(toks: &mut Vec<String>, m: &Mutation) {
    if toks.is_empty() {
        return;
    }
    let n = toks.len();
    match *m {
        Mutation::Delete(i) => {
            toks.remove(i % n);
        }
        Mutation::Duplicate(i) => {
            let t = toks[i % n].clone();
            toks.insert(i % n, t);
        }
        Mutation::Swap(a, b) => toks.swap(a % n, b % n),
        Mutation::Replace(i, t) => toks[i % n] = t.to_string(),
        Mutation::Truncate(i) => toks.truncate(i % n),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn token_sequences_never_panic(text in token_soup()) {
        run_front_end(&fake_path(), &text);
    }

    #[test]
    fn random_op_calls_never_panic(text in expression_program()) {
        run_front_end(&fake_path(), &text);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_models_never_panic(
        file in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let sources = model_sources();
        let (path, text) = &sources[file.index(sources.len())];
        let mut toks = tokens(text);
        for m in &mutations {
            apply(&mut toks, m);
        }
        run_front_end(path, &toks.concat());
    }
}

// ---- shape rules -----------------------------------------------------------

/// Elaborates a one-model text and returns the shape of output `y`.
fn output_shape(text: &str) -> Result<Vec<i64>, String> {
    let (program, diags) = Program::from_text(&fake_path(), text);
    if !diags.is_empty() {
        return Err(netc::diag::render_all(&diags, &program.sources));
    }
    let model = program.model(None)?;
    match netc::elab::elaborate(&program, model, &[]) {
        Ok(g) => {
            let (_, v) = g
                .outputs
                .iter()
                .find(|(n, _)| n == "y")
                .ok_or("no output y")?;
            g.ty(*v)
                .known_shape()
                .ok_or_else(|| "symbolic output".to_string())
        }
        Err(d) => Err(netc::diag::render_all(&d, &program.sources)),
    }
}

fn shape_text(s: &[i64]) -> String {
    let dims: Vec<String> = s.iter().map(i64::to_string).collect();
    format!("f32[{}]", dims.join(", "))
}

/// NumPy broadcasting, written directly.
fn broadcast_ref(a: &[i64], b: &[i64]) -> Option<Vec<i64>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i < n - a.len() {
            1
        } else {
            a[i - (n - a.len())]
        };
        let db = if i < n - b.len() {
            1
        } else {
            b[i - (n - b.len())]
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn conv2d_output_size_matches_formula(
        size in 1i64..64, k in 1i64..8, stride in 1i64..5, pad in 0i64..4, dilation in 1i64..4,
    ) {
        let effective = dilation * (k - 1) + 1;
        prop_assume!(effective <= size + 2 * pad);
        let text = format!(
            "model m() {{\n  input x: f32[2, 3, {size}, {size}]\n  output y = x |> c: conv2d(5, k = {k}, stride = {stride}, pad = {pad}, dilation = {dilation})\n}}\n"
        );
        let expect = (size + 2 * pad - effective) / stride + 1;
        prop_assert_eq!(output_shape(&text), Ok(vec![2, 5, expect, expect]));
    }

    #[test]
    fn broadcasting_matches_numpy(
        a in prop::collection::vec(1i64..4, 0..5),
        b in prop::collection::vec(1i64..4, 0..5),
    ) {
        let text = format!(
            "model m() {{\n  input a: {}\n  input b: {}\n  output y = a + b\n}}\n",
            shape_text(&a),
            shape_text(&b)
        );
        match broadcast_ref(&a, &b) {
            Some(want) => prop_assert_eq!(output_shape(&text), Ok(want)),
            None => {
                let err = output_shape(&text).expect_err("incompatible shapes must be rejected");
                prop_assert!(err.contains("do not broadcast"), "{}", err);
            }
        }
    }

    #[test]
    fn reshape_infers_minus_one(
        shape in prop::collection::vec(1i64..7, 1..5),
        pick in any::<prop::sample::Index>(),
        first in any::<bool>(),
    ) {
        let total: i64 = shape.iter().product();
        let divisors: Vec<i64> = (1..=total).filter(|d| total % d == 0).collect();
        let t = divisors[pick.index(divisors.len())];
        let (target, want) = if first {
            (format!("[-1, {t}]"), vec![total / t, t])
        } else {
            (format!("[{t}, -1]"), vec![t, total / t])
        };
        let text = format!(
            "model m() {{\n  input x: {}\n  output y = reshape(x, {target})\n}}\n",
            shape_text(&shape)
        );
        prop_assert_eq!(output_shape(&text), Ok(want));
    }
}
