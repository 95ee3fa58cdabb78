//! The lowered sparse convs against the f64 interpreter (itself checked
//! against dense `conv3d`): rule books shared per key, a strided conv's
//! sites feeding a chained rule book, a bias, the site count read back
//! from the arena, an empty input and bad sites; and against the PyTorch
//! fixture of the interpreter's own test (dense `conv3d` masked to the
//! active sites) through the host API.

use super::super::{lower, Lowered};
use crate::back::jit::Jit;
use crate::interp::{self, Array};
use crate::ir::Graph;
use crate::options::CompileOptions;
use crate::testing::program;
use netc_runtime::plan::Executor;
use std::collections::HashMap;

const MODEL: &str = "model m() {
    input f: f32[M, 3]
    input c: i32[M, 4]
    s = sparse_tensor(f, c, shape = [5, 6, 7], batch = 2)
    s = s |> a: subm_conv3d(16, bias = true) |> sparse_relu
          |> b: subm_conv3d(16) |> d: sparse_conv3d(5, stride = 2) |> sparse_relu
          |> e: subm_conv3d(32, k = 1)
    output y = s.features
    output z = s.coords
}";

/// Weights of every parameter, by path (deterministic values).
fn params(g: &Graph) -> Vec<(String, Vec<f32>)> {
    g.params
        .iter()
        .map(|p| {
            let n: i64 = p.ty.known_shape().unwrap().iter().product();
            let v = (0..n)
                .map(|i| (i as f32 * 0.61 + p.path.len() as f32).sin() * 0.4)
                .collect();
            (p.path.clone(), v)
        })
        .collect()
}

/// Lowers `g` for `m` sites and runs it on `threads`; the outputs cut to
/// the site count the run left in the arena, or the run's error.
/// The values of [`params`] as the interpreter's f64 arrays, by path.
fn named_params(g: &Graph) -> HashMap<String, Array> {
    params(g)
        .into_iter()
        .zip(&g.params)
        .map(|((path, v), p)| {
            let shape: Vec<usize> = p.ty.known_dims().unwrap();
            (path, Array::new(&shape, f64s(&v)))
        })
        .collect()
}

/// `v` widened to f64.
fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

fn run(
    g: &Graph,
    coords: &[f32],
    feats: &[f32],
    threads: usize,
) -> (Lowered, Result<Vec<Vec<f32>>, String>) {
    let m = coords.len() / 4;
    let mut jit = Jit::new().unwrap();
    let options = CompileOptions {
        threads,
        ..Default::default()
    };
    let g = crate::passes::pipeline::optimize(g.clone(), &options, None).unwrap();
    let lowered = lower(&g, &[("M".into(), m as i64)], options, &mut jit).unwrap();
    let ps = params(&g);
    let slices: Vec<&[f32]> = ps.iter().map(|(_, v)| v.as_slice()).collect();
    let mut ex = Executor::new(lowered.plan.clone(), threads).unwrap();
    ex.prepare(&slices).unwrap();
    let mut outs: Vec<Vec<f32>> = lowered
        .outputs
        .iter()
        .map(|(_, n)| vec![f32::NAN; *n])
        .collect();
    let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
    let r = ex.run(&[feats, coords], &slices, &mut refs);
    let r = r.map_err(|e| e.to_string()).map(|()| {
        let [(_, at)] = lowered.counts[..] else {
            panic!("one count: {:?}", lowered.counts)
        };
        let n = ex.arena()[at].to_bits() as usize;
        outs[0].truncate(n * 32);
        outs[1].truncate(n * 4);
        outs
    });
    (lowered, r)
}

fn sites(m: usize) -> Vec<f32> {
    let mut cells: Vec<usize> = (0..2 * 5 * 6 * 7).collect();
    // A fixed shuffle (multiplication by a unit mod 420).
    cells.iter_mut().for_each(|c| *c = (*c * 97 + 13) % 420);
    cells[..m]
        .iter()
        .flat_map(|&c| [c / 210, c / 42 % 5, c / 7 % 6, c % 7].map(|v| v as f32))
        .collect()
}

#[test]
fn lowered_convs_match_the_interpreter() {
    let g = program(MODEL).unwrap();
    for m in [0, 1, 60] {
        let coords = sites(m);
        let feats: Vec<f32> = (0..m * 3).map(|i| (i as f32 * 0.37).cos()).collect();
        let named = named_params(&g);
        let want = interp::run(
            &g,
            &[
                ("f", Array::new(&[m, 3], f64s(&feats))),
                ("c", Array::new(&[m, 4], f64s(&coords))),
            ],
            &named,
        )
        .unwrap();
        for threads in [1, 2] {
            let (lowered, got) = run(&g, &coords, &feats, threads);
            let got = got.unwrap();
            // a and b share one rule book; d and e (on d's sites) one each.
            let books = lowered.labels.iter().filter(|l| l.op == "rulebook").count();
            assert_eq!(books, 3);
            assert_eq!(
                got[1],
                want[1].1.data.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                "sites, m = {m}"
            );
            assert_eq!(got[0].len(), want[0].1.data.len());
            for (a, e) in got[0].iter().zip(&want[0].1.data) {
                assert!(
                    (f64::from(*a) - e).abs() <= 1e-5 * e.abs().max(1.0),
                    "m = {m}: {a} vs {e}"
                );
            }
        }
    }
}

/// Duplicate sites, sites outside the grid and batch indices past the
/// batch stop the run with the error the interpreter gives.
#[test]
fn bad_sites_stop_the_run_with_the_interpreters_message() {
    let g = program(MODEL).unwrap();
    let interp_error = |coords: &[f32]| {
        let named = named_params(&g);
        let ins = [
            ("f", Array::new(&[4, 3], vec![0.5; 12])),
            ("c", Array::new(&[4, 4], f64s(coords))),
        ];
        interp::run(&g, &ins, &named).unwrap_err()
    };
    let mut dup = sites(4);
    dup.copy_within(0..4, 12);
    let mut outside = sites(4);
    outside[6] = 6.0;
    let mut batch = sites(4);
    batch[4] = 2.0;
    for (coords, want) in [
        (dup, "appears twice"),
        (outside, "outside the grid [5, 6, 7]"),
        (batch, "batch index 2, the tensor holds 2 samples"),
    ] {
        for threads in [1, 2] {
            let e = run(&g, &coords, &[0.5; 12], threads).1.unwrap_err();
            assert!(e.contains(want), "{e}");
        }
        let e = interp_error(&coords);
        assert!(e.contains(want), "{e}");
    }
}

/// `tests/fixtures/reference/sparse.net` (dilation 2, a `[3, 1, 3]`
/// kernel, a stride-1 `sparse_conv3d`, biases, two data-dependent counts)
/// compiled and run through `CompiledModel` against PyTorch's float64
/// results: coordinates exact, features within 1e-5 of the largest.
#[test]
fn lowered_convs_match_the_pytorch_fixture() {
    use crate::session::{load_model, CompiledModel};
    use netc_runtime::weights::read_safetensors;
    use netc_runtime::{Storage, Tensor};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/reference");
    let g = load_model(&root.join("sparse.net"), None, &[]).unwrap();
    let t: HashMap<String, Tensor> = read_safetensors(&root.join("sparse.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let values = |t: &Tensor| -> Vec<f64> {
        match t.storage() {
            Storage::F64(v) => v.clone(),
            Storage::I32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            Storage::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            other => panic!("{other:?}"),
        }
    };
    let f32s = |t: &Tensor| {
        Tensor::from_f32(t.shape(), values(t).iter().map(|&x| x as f32).collect()).unwrap()
    };
    let feats = f32s(&t["input.feats"]);
    let coords = t["input.coords"].clone();
    let shapes = [("feats", feats.shape()), ("coords", coords.shape())];
    for threads in [1, 2] {
        let options = CompileOptions {
            threads,
            ..Default::default()
        };
        let mut model = CompiledModel::new(g.clone(), &shapes, options).unwrap();
        let weights = model
            .weight_specs()
            .iter()
            .map(|s| f32s(&t[&s.name]))
            .collect();
        model.set_weights(weights).unwrap();
        let got = model
            .run(&[("feats", &feats), ("coords", &coords)])
            .unwrap();
        assert_eq!(got.len(), 6);
        for (name, y) in &got {
            let want = &t[&format!("expected.{name}")];
            assert_eq!(y.shape(), want.shape(), "{name}");
            let (y, want) = (values(y), values(want));
            let scale = want.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
            for (a, e) in y.iter().zip(&want) {
                assert!((a - e).abs() <= 1e-5 * scale, "{name}: {a} vs {e}");
            }
        }
    }
}
