//! The seed models run end to end against PyTorch and NumPy: every case
//! elaborates a model of `models/`, gives it the weights of the
//! counter-based generator (`netc_runtime::counter`, the numbers
//! `tests/fixtures/make_model_reference.py` loaded into PyTorch), compiles
//! it with the host API under several option sets, runs it on the inputs of
//! `tests/fixtures/models/<model>.safetensors` and compares every output
//! with the stored float64 reference (relative L2 error <= 1e-4). The f64
//! reference interpreter is checked against the same files, which validates
//! them independently of the back end. docs/testing.md describes the setup.

use netc::elab::Value;
use netc::interp::{self, Array};
use netc::ir::Graph;
use netc::options::{CompileOptions, GemmChoice, LayoutChoice};
use netc::program::Program;
use netc::session::CompiledModel;
use netc_runtime::weights::read_safetensors;
use netc_runtime::{counter, Storage, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// The generator seed of every model (`SEED` in the fixture script).
const SEED: u64 = 0;

/// Largest relative L2 error of an f32 run against the f64 reference.
const F32_TOLERANCE: f64 = 1e-4;

/// Largest relative L2 error of the f64 interpreter against the f64
/// reference (only the summation order differs).
const F64_TOLERANCE: f64 = 1e-10;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One model of `models/` with the `--set` overrides its fixture was made
/// for, and the fixture's name.
struct Case {
    file: &'static str,
    model: &'static str,
    sets: &'static [(&'static str, Set)],
    fixture: &'static str,
}

/// A `--set` value.
#[derive(Clone, Copy)]
enum Set {
    Int(i64),
    Str(&'static str),
}

const EEG_CCNN: Case = Case {
    file: "eeg_ccnn.net",
    model: "eeg_ccnn",
    sets: &[],
    fixture: "eeg_ccnn",
};
const EEG_MLP: Case = Case {
    file: "eeg_mlp.net",
    model: "eeg_mlp",
    sets: &[],
    fixture: "eeg_mlp",
};
const EEG_SVM: Case = Case {
    file: "eeg_svm.net",
    model: "eeg_svm",
    sets: &[],
    fixture: "eeg_svm",
};
const DENSENET121: Case = Case {
    file: "densenet.net",
    model: "densenet121",
    sets: &[("height", Set::Int(64)), ("width", Set::Int(64))],
    fixture: "densenet121",
};
const DENSENET169: Case = Case {
    file: "densenet.net",
    model: "densenet169",
    sets: &[("height", Set::Int(80)), ("width", Set::Int(96))],
    fixture: "densenet169",
};
const VGGISH: Case = Case {
    file: "vggish.net",
    model: "vggish",
    sets: &[],
    fixture: "vggish",
};
const VGGISH_FRONTEND: Case = Case {
    file: "vggish.net",
    model: "vggish_frontend",
    sets: &[("samples", Set::Int(32000))],
    fixture: "vggish_frontend",
};
const VGGISH_POSTPROCESS: Case = Case {
    file: "vggish.net",
    model: "vggish_postprocess",
    sets: &[],
    fixture: "vggish_postprocess",
};
/// FCOS's backbone and head on a 64 x 80 image (the FPN resizes 2 x 3 to
/// 4 x 5), against torchvision's FCOS with frozen batch norms.
const FCOS: Case = Case {
    file: "fcos.net",
    model: "fcos_resnet50_fpn",
    sets: &[("height", Set::Int(64)), ("width", Set::Int(80))],
    fixture: "fcos_resnet50_fpn",
};
/// The Stable Diffusion UNet's small configuration on 12 x 12 latents (6 x 6
/// and 3 x 3 further down), a 7-token context and two timesteps, against
/// the peers' diffusers UNet2DConditionModel.
const SD_UNET_SMALL: Case = Case {
    file: "sd_unet.net",
    model: "sd_unet_small",
    sets: &[("size", Set::Int(12)), ("context_len", Set::Int(7))],
    fixture: "sd_unet_small",
};
/// The EEG differential-entropy features on 2 trials of 1024 samples (5
/// trial segments after the 3 s baseline); the NumPy/SciPy reference of
/// `tests/fixtures/signal/make_de_reference.py`.
const EEG_DE_FEATURES: Case = Case {
    file: "eeg_de_features.net",
    model: "eeg_de_features",
    sets: &[("samples", Set::Int(1024))],
    fixture: "eeg_de_features",
};
/// The TF release's rounding (astype(uint8) truncates); the fixture stores
/// it as `expected.truncated`.
const VGGISH_POSTPROCESS_TRUNCATE: Case = Case {
    file: "vggish.net",
    model: "vggish_postprocess",
    sets: &[("rounding", Set::Str("truncate"))],
    fixture: "vggish_postprocess",
};

impl Case {
    /// The elaborated graph; panics with the rendered diagnostics.
    fn graph(&self) -> Graph {
        let path = repo().join("models").join(self.file);
        let (program, diags) = Program::load(&path);
        assert!(
            diags.is_empty(),
            "{}: {}",
            self.file,
            netc::diag::render_all(&diags, &program.sources)
        );
        let def = program
            .model(Some(self.model))
            .unwrap_or_else(|e| panic!("{}: {e}", self.file));
        let sets: Vec<(String, Value)> = self
            .sets
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Set::Int(i) => Value::Int(*i),
                    Set::Str(s) => Value::Str(Rc::from(*s)),
                };
                (k.to_string(), v)
            })
            .collect();
        netc::elab::elaborate(&program, def, &sets).unwrap_or_else(|d| {
            panic!(
                "{} does not elaborate:\n{}",
                self.model,
                netc::diag::render_all(&d, &program.sources)
            )
        })
    }

    /// Every tensor of the fixture file by name.
    fn fixture(&self) -> HashMap<String, Tensor> {
        let path = repo()
            .join("tests/fixtures/models")
            .join(format!("{}.safetensors", self.fixture));
        read_safetensors(&path)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .collect()
    }

    /// The reference of output `name` (the truncating post-processor reads
    /// `expected.truncated`).
    fn expected<'a>(&self, fixture: &'a HashMap<String, Tensor>, name: &str) -> &'a Tensor {
        let rounding = self.sets.iter().find(|(k, _)| *k == "rounding");
        let key = match rounding {
            Some((_, Set::Str("truncate"))) => "expected.truncated".to_string(),
            _ => format!("expected.{name}"),
        };
        fixture
            .get(&key)
            .unwrap_or_else(|| panic!("{}: no `{key}` in the fixture", self.model))
    }
}

fn to_f64(t: &Tensor) -> Vec<f64> {
    match t.storage() {
        Storage::F64(v) => v.clone(),
        Storage::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
        Storage::I64(v) => v.iter().map(|&x| x as f64).collect(),
        Storage::I32(v) => v.iter().map(|&x| f64::from(x)).collect(),
        Storage::U8(v) | Storage::Bool(v) => v.iter().map(|&x| f64::from(x)).collect(),
    }
}

fn rel_l2(got: &[f64], want: &[f64]) -> f64 {
    let diff: f64 = got.iter().zip(want).map(|(a, b)| (a - b).powi(2)).sum();
    let norm: f64 = want.iter().map(|b| b * b).sum();
    (diff / norm.max(f64::MIN_POSITIVE)).sqrt()
}

/// Compares one output with its reference: same shape, and a relative L2
/// error within `tolerance`; a u8 output must be exact except where the
/// exact scaled value lies within 1e-3 of a rounding boundary, where ±1 is
/// allowed (see [`check_quantized`]).
fn check_output(
    case: &Case,
    fixture: &HashMap<String, Tensor>,
    (what, name): (&str, &str),
    got: &[f64],
    shape: &[usize],
    tol: f64,
) {
    let want = case.expected(fixture, name);
    assert_eq!(
        shape,
        want.shape(),
        "{} ({what}): output `{name}` shape",
        case.model
    );
    if want.dtype() == netc_runtime::DType::U8 {
        check_quantized(case, what, got, &to_f64(want), fixture);
        return;
    }
    let err = rel_l2(got, &to_f64(want));
    assert!(
        err <= tol,
        "{} ({what}): output `{name}` relative L2 error {err:.3e} > {tol:.0e}",
        case.model
    );
    eprintln!(
        "{} ({what}): `{name}` relative L2 error {err:.2e}",
        case.model
    );
}

/// The u8 post-processor: `q = rounding((clip(pca, -2, 2) + 2) * 255 / 4)`.
/// The f32 PCA differs from the f64 reference by ~1e-6, i.e. ~1e-4 after
/// scaling by 63.75, so an element may round the other way only when its
/// exact scaled value (`expected.scaled`) is within 1e-3 of the rounding
/// boundary (k + 0.5 when rounding, k when truncating). Every other element
/// must be exact, and the near ones within ±1.
fn check_quantized(
    case: &Case,
    what: &str,
    got: &[f64],
    want: &[f64],
    fixture: &HashMap<String, Tensor>,
) {
    let truncate = case
        .sets
        .iter()
        .any(|(k, v)| *k == "rounding" && matches!(v, Set::Str("truncate")));
    let scaled = to_f64(&fixture["expected.scaled"]);
    let mut near = 0;
    for (i, ((g, w), s)) in got.iter().zip(want).zip(&scaled).enumerate() {
        let boundary = if truncate { s.round() } else { s.floor() + 0.5 };
        let is_near = (s - boundary).abs() < 1e-3;
        near += usize::from(is_near && g != w);
        let allowed = if is_near { 1.0 } else { 0.0 };
        assert!(
            (g - w).abs() <= allowed,
            "{} ({what}): element {i} is {g}, expected {w} (exact scaled value {s})",
            case.model
        );
    }
    eprintln!(
        "{} ({what}): {} u8 values, {near} off by one at a rounding boundary",
        case.model,
        got.len()
    );
}

/// Runs `case` compiled with `options` and checks every output.
fn check_compiled(case: &Case, options: CompileOptions) {
    let what = format!("{options:?}");
    let fixture = case.fixture();
    let graph = case.graph();
    let inputs: Vec<(String, Tensor)> = graph
        .inputs
        .iter()
        .map(|(name, _)| {
            let t = fixture
                .get(&format!("input.{name}"))
                .unwrap_or_else(|| panic!("{}: no `input.{name}` in the fixture", case.model));
            (name.clone(), t.clone())
        })
        .collect();
    let shapes: Vec<(&str, &[usize])> = inputs
        .iter()
        .map(|(n, t)| (n.as_str(), t.shape()))
        .collect();
    let mut model = CompiledModel::new(graph, &shapes, options)
        .unwrap_or_else(|e| panic!("{} ({what}): {e}", case.model));
    let weights = model
        .weight_specs()
        .iter()
        .map(|s| counter::tensor(SEED, &s.name, s.dtype, &s.shape))
        .collect();
    model
        .set_weights(weights)
        .unwrap_or_else(|e| panic!("{}: {e}", case.model));
    let refs: Vec<(&str, &Tensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let outputs = model
        .run(&refs)
        .unwrap_or_else(|e| panic!("{} ({what}): {e}", case.model));
    for (name, t) in &outputs {
        check_output(
            case,
            &fixture,
            (&what, name),
            &to_f64(t),
            t.shape(),
            F32_TOLERANCE,
        );
    }
}

/// The first `rows` entries of `t` along its first axis.
fn leading(t: &Tensor, rows: usize) -> Tensor {
    let mut shape = t.shape().to_vec();
    let row = t.numel() / shape[0].max(1);
    shape[0] = rows.min(shape[0]);
    let bytes = t.to_le_bytes();
    let size = bytes.len() / t.numel().max(1);
    Tensor::from_le_bytes(t.dtype(), &shape, &bytes[..shape[0] * row * size])
        .expect("a prefix of whole rows")
}

/// The generator's weights of every parameter of `graph`, as the
/// interpreter's f64 arrays.
fn generated_params(graph: &Graph) -> HashMap<String, Array> {
    graph
        .params
        .iter()
        .map(|p| {
            let shape: Vec<usize> = p.ty.known_dims().unwrap_or_default();
            let t = counter::tensor(SEED, &p.path, p.ty.dtype, &shape);
            (p.path.clone(), Array::new(t.shape(), to_f64(&t)))
        })
        .collect()
}

/// Runs `case` on the f64 reference interpreter and checks every output.
/// With `rows`, only the first `rows` examples of every input and output
/// (the interpreter is slow; the examples of these models are independent).
fn check_interpreter(case: &Case, rows: Option<usize>) {
    check_interpreter_within(case, rows, F64_TOLERANCE);
}

/// [`check_interpreter`] with relative L2 tolerance `tol`.
fn check_interpreter_within(case: &Case, rows: Option<usize>, tol: f64) {
    let mut fixture = case.fixture();
    if let Some(rows) = rows {
        for t in fixture.values_mut().filter(|t| !t.shape().is_empty()) {
            *t = leading(t, rows);
        }
    }
    let graph = case.graph();
    let array = |t: &Tensor| Array::new(t.shape(), to_f64(t));
    let inputs: Vec<(&str, Array)> = graph
        .inputs
        .iter()
        .map(|(name, _)| (name.as_str(), array(&fixture[&format!("input.{name}")])))
        .collect();
    let outputs = interp::run(&graph, &inputs, &generated_params(&graph))
        .unwrap_or_else(|e| panic!("{} (interpreter): {e}", case.model));
    for (name, a) in &outputs {
        check_output(
            case,
            &fixture,
            ("interpreter", name),
            &a.data,
            &a.shape,
            tol,
        );
    }
}

/// Every combination of fusion, GEMM path and layout, and the default
/// with batch-norm folding and arena reuse off.
fn all_options() -> Vec<CompileOptions> {
    let mut out = Vec::new();
    for fuse in [true, false] {
        for gemm in [GemmChoice::Native, GemmChoice::Cranelift] {
            for layout in [LayoutChoice::Auto, LayoutChoice::Nchw] {
                out.push(CompileOptions {
                    threads: 2,
                    gemm,
                    fuse,
                    layout,
                    ..CompileOptions::default()
                });
            }
        }
    }
    out.push(CompileOptions {
        threads: 2,
        fold_bn: false,
        reuse_arena: false,
        ..CompileOptions::default()
    });
    out
}

fn default_options() -> CompileOptions {
    CompileOptions {
        threads: 2,
        ..CompileOptions::default()
    }
}

fn unfused_options() -> CompileOptions {
    CompileOptions {
        fuse: false,
        ..default_options()
    }
}

/// `case` with the default options, then channels first and unfused.
fn check_fused_and_plain(case: &Case) {
    check_compiled(case, default_options());
    check_compiled(
        case,
        CompileOptions {
            layout: LayoutChoice::Nchw,
            ..unfused_options()
        },
    );
}

/// The Rust generator gives the values the fixture script printed
/// (`tests/fixtures/models/counter_values.txt`: `seed path [shape] index
/// value`, 17 significant digits, so equality is exact).
#[test]
fn counter_generator_matches_the_python_one() {
    let path = repo().join("tests/fixtures/models/counter_values.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
    let mut checked = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(parts.len(), 5, "bad line `{line}`");
        let seed: u64 = parts[0].parse().expect("seed");
        let shape: Vec<usize> = parts[2]
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .map(|d| d.parse().expect("dim"))
            .collect();
        let index: u64 = parts[3].parse().expect("index");
        let want: f64 = parts[4].parse().expect("value");
        let got = counter::value(seed, parts[1], &shape, index);
        assert_eq!(got, want, "{line}");
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} values");
}

#[test]
fn eeg_svm_matches_pytorch_with_every_option() {
    for options in all_options() {
        check_compiled(&EEG_SVM, options);
    }
}

#[test]
fn eeg_mlp_matches_pytorch_with_every_option() {
    for options in all_options() {
        check_compiled(&EEG_MLP, options);
    }
}

#[test]
fn eeg_ccnn_matches_pytorch_with_every_option() {
    for options in all_options() {
        check_compiled(&EEG_CCNN, options);
    }
}

#[test]
fn densenet121_matches_pytorch() {
    check_compiled(&DENSENET121, default_options());
}

/// The normalised concatenations that DenseNet's 1×1 convolutions read,
/// on their other paths: stored in the scratch region for a GEMM that
/// cannot gather through the norm (the native one), and stored as their
/// own tensors (`norm_prologue` off). The default path gathers them in
/// the implicit GEMM (`densenet121_matches_pytorch`).
#[test]
fn densenet121_stored_prologues_match_pytorch() {
    for (gemm, norm_prologue) in [(GemmChoice::Native, true), (GemmChoice::Auto, false)] {
        check_compiled(
            &DENSENET121,
            CompileOptions {
                gemm,
                norm_prologue,
                ..default_options()
            },
        );
    }
}

#[test]
fn densenet121_unfused_matches_pytorch() {
    check_compiled(&DENSENET121, unfused_options());
}

#[test]
fn densenet169_matches_pytorch() {
    check_compiled(&DENSENET169, default_options());
}

#[test]
fn densenet169_unfused_matches_pytorch() {
    check_compiled(&DENSENET169, unfused_options());
}

/// Default options (group norms and resizes channels last in the NHWC
/// chain, relus fused into the norms) and channels first, unfused.
#[test]
fn fcos_matches_pytorch() {
    check_fused_and_plain(&FCOS);
}

/// Default options (native GEMMs, the fused attention) and channels first,
/// unfused: the UNet's 144-, 36- and 9-token attentions, group and layer
/// norms, GEGLU, nearest upsampling and skip concatenations against the
/// peers' diffusers UNet2DConditionModel.
#[test]
fn sd_unet_small_matches_pytorch() {
    check_fused_and_plain(&SD_UNET_SMALL);
}

#[test]
fn vggish_matches_pytorch() {
    check_compiled(&VGGISH, default_options());
}

#[test]
fn vggish_unfused_matches_pytorch() {
    check_compiled(&VGGISH, unfused_options());
}

#[test]
fn vggish_frontend_matches_numpy() {
    check_compiled(&VGGISH_FRONTEND, default_options());
    check_compiled(&VGGISH_FRONTEND, unfused_options());
}

#[test]
fn vggish_postprocess_matches_numpy() {
    check_compiled(&VGGISH_POSTPROCESS, default_options());
    check_compiled(&VGGISH_POSTPROCESS, unfused_options());
    check_compiled(&VGGISH_POSTPROCESS_TRUNCATE, default_options());
}

#[test]
fn eeg_de_features_match_numpy() {
    check_compiled(&EEG_DE_FEATURES, default_options());
    check_compiled(&EEG_DE_FEATURES, unfused_options());
    check_interpreter(&EEG_DE_FEATURES, None);
}

/// The EEG models on one example each (eeg_ccnn takes ~3 s in the
/// interpreter per example).
#[test]
fn interpreter_matches_the_eeg_fixtures() {
    check_interpreter(&EEG_SVM, None);
    check_interpreter(&EEG_MLP, None);
    check_interpreter(&EEG_CCNN, Some(1));
}

#[test]
fn interpreter_matches_the_vggish_signal_fixtures() {
    check_interpreter(&VGGISH_FRONTEND, None);
    check_interpreter(&VGGISH_POSTPROCESS, None);
    check_interpreter(&VGGISH_POSTPROCESS_TRUNCATE, None);
}

/// diffusers computes the UNet's sinusoidal time embedding in f32 even in
/// an f64 model (`get_timestep_embedding`), which moves the fixture's
/// output by 1.7e-6 relative to an all-f64 run; the interpreter is f64
/// throughout.
#[test]
fn interpreter_matches_the_sd_unet_small_fixture() {
    check_interpreter_within(&SD_UNET_SMALL, None, 1e-5);
}

// The large models take 30 s to minutes in the f64 interpreter (dev
// profile), too slow for every CI run: `cargo test --test model_runs --
// --ignored` checks that their fixtures agree with the interpreter.

#[test]
#[ignore = "slow: ~30 s in the f64 interpreter"]
fn interpreter_matches_the_densenet121_fixture() {
    check_interpreter(&DENSENET121, Some(1));
}

#[test]
#[ignore = "slow: ~30 s in the f64 interpreter"]
fn interpreter_matches_the_densenet169_fixture() {
    check_interpreter(&DENSENET169, None);
}

#[test]
#[ignore = "slow: minutes in the f64 interpreter"]
fn interpreter_matches_the_vggish_fixture() {
    check_interpreter(&VGGISH, Some(1));
}

/// `spconv_encoder` (two submanifold and two strided sparse convs, each
/// followed by a fused ReLU, with shared rule books) compiled to native
/// code against the f64 interpreter, whose sparse convs are checked
/// against dense `conv3d` by `compiler/src/interp/tests.rs`: the output
/// sites exactly (count, coordinates and order, known only after the
/// run) and the features within 1e-5, on 1 and 2 threads, twice in a row
/// (the rule books' index grids must be clear again for the second run).
/// Random distinct voxels over two samples of a small grid.
#[test]
fn spconv_encoder_matches_the_interpreter() {
    let case = Case {
        file: "spconv.net",
        model: "spconv_encoder",
        sets: &[
            ("depth", Set::Int(9)),
            ("height", Set::Int(14)),
            ("width", Set::Int(12)),
            ("batch", Set::Int(2)),
        ],
        fixture: "",
    };
    let graph = case.graph();
    let (m, cells) = (700u64, 2 * 9 * 14 * 12);
    let mut taken = std::collections::HashSet::new();
    let mut coords = Vec::new();
    let mut k = 7u64;
    while (taken.len() as u64) < m {
        k += 1;
        let c = counter::splitmix64(k) % cells;
        if taken.insert(c) {
            let c = c as i32;
            coords.extend([c / (9 * 14 * 12), c / (14 * 12) % 9, c / 12 % 14, c % 12]);
        }
    }
    let m = m as usize;
    let feats: Vec<f32> = (0..m * 4).map(|i| (i as f32 * 0.37).sin() * 1.5).collect();
    let features = Tensor::from_f32(&[m, 4], feats).unwrap();
    let coords = Tensor::new(&[m, 4], Storage::I32(coords)).unwrap();
    let inputs = [("features", &features), ("coords", &coords)];
    let array = |t: &Tensor| Array::new(t.shape(), to_f64(t));
    let ins: Vec<(&str, Array)> = inputs.iter().map(|(n, t)| (*n, array(t))).collect();
    let want = interp::run(&graph, &ins, &generated_params(&graph)).unwrap();
    let shapes: Vec<(&str, &[usize])> = inputs.iter().map(|(n, t)| (*n, t.shape())).collect();
    for threads in [1, 2] {
        let options = CompileOptions {
            threads,
            ..default_options()
        };
        let mut model = CompiledModel::new(graph.clone(), &shapes, options).unwrap();
        let weights: Vec<Tensor> = model
            .weight_specs()
            .iter()
            .map(|s| counter::tensor(SEED, &s.name, s.dtype, &s.shape))
            .collect();
        model.set_weights(weights).unwrap();
        for _ in 0..2 {
            let got = model.run(&inputs).unwrap();
            let (f, c) = (&got[0].1, &got[1].1);
            assert_eq!(c.shape(), &want[1].1.shape[..], "coords shape");
            assert_eq!(to_f64(c), want[1].1.data, "output sites and their order");
            assert!(matches!(c.storage(), Storage::I32(_)));
            assert_eq!(f.shape(), &want[0].1.shape[..], "features shape");
            assert!(f.shape()[0] > 20, "enough output sites to test");
            for (a, e) in to_f64(f).iter().zip(&want[0].1.data) {
                assert!((a - e).abs() <= 1e-5 * e.abs().max(1.0), "{a} vs {e}");
            }
        }
    }
}
