//! Sparse 3D convolution over voxel sets, as spconv 2.x: a sparse tensor is
//! a record `{features [M, C], coords i32 [M, 4] (batch, z, y, x), shape
//! [D, H, W], batch}` built by `sparse_tensor`; `subm_conv3d` (submanifold:
//! the output sites are the input sites) and `sparse_conv3d` (regular, usually
//! strided: the output sites are every site a kernel window of an active
//! input reaches, a number known only at run time) transform it.
//!
//! The active-site count after `sparse_conv3d` is a new data-dependent symbol
//! whose declared upper bound is linear in the input count: every input site
//! reaches at most `prod_i ceil(k_i / (s_i / gcd(d_i, s_i)))` output sites
//! (`M * k^3` without stride, `8 * M` for k = 3, stride 2). FLOPs are upper
//! bounds on the same pair count: `2 * pairs * Cin * Cout`.
//!
//! Every conv node carries an attribute `rulebook`: a key equal for all
//! layers that share geometry (same input coordinates value, kernel, stride,
//! padding, dilation and kind), so later stages build the gather/scatter
//! rule book once per key, as spconv's `indice_key` does.

use super::embed::{flops_scale, sat_product, sizes};
use super::util::{expect_float, fan_in_uniform, window_out};
use super::Builtin;
use crate::diag::Diagnostic;
use crate::elab::{CallCtx, OpResult, Value};
use crate::ir::{Attr, Dim, Op, TensorType, ValueId};
use netc_runtime::DType;

/// The family's built-ins.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "sparse_tensor",
        build: sparse_tensor,
    },
    Builtin {
        name: "subm_conv3d",
        build: |c| conv3d(c, true),
    },
    Builtin {
        name: "sparse_conv3d",
        build: |c| conv3d(c, false),
    },
    Builtin {
        name: "sparse_relu",
        build: sparse_relu,
    },
    Builtin {
        name: "with_features",
        build: with_features,
    },
    Builtin {
        name: "sparse_global_avg_pool",
        build: global_avg_pool,
    },
];

/// A sparse tensor record, unpacked.
struct SparseRec {
    features: ValueId,
    coords: ValueId,
    shape: Vec<i64>,
    batch: Value,
}

fn record(s: &SparseRec, features: ValueId, coords: ValueId, shape: Vec<i64>) -> Value {
    Value::record(vec![
        ("features", Value::Tensor(features)),
        ("coords", Value::Tensor(coords)),
        (
            "shape",
            Value::list(shape.into_iter().map(Value::Int).collect()),
        ),
        ("batch", s.batch.clone()),
    ])
}

/// Reads argument 0 as a sparse tensor record.
fn sparse_arg(c: &mut CallCtx) -> Result<SparseRec, Diagnostic> {
    let v = c.value(Some(0), "s");
    let bad = |c: &mut CallCtx, what: String| {
        c.arg_error(
            Some(0),
            "s",
            format!("`{}` expects a sparse tensor, got {what}", c.op_name()),
            "build one with `sparse_tensor(features, coords, shape = [D, H, W])`; the result of a sparse conv is one too",
        )
    };
    let Some(v) = v else {
        return Err(c.error(
            format!("`{}` needs the argument `s` (a sparse tensor)", c.op_name()),
            "pass the result of `sparse_tensor(...)` or of a previous sparse conv",
        ));
    };
    let (
        Some(Value::Tensor(features)),
        Some(Value::Tensor(coords)),
        Some(Value::List(shape)),
        Some(batch),
    ) = (
        v.field("features"),
        v.field("coords"),
        v.field("shape"),
        v.field("batch"),
    )
    else {
        let what = match &v {
            Value::Tensor(t) => format!("the dense tensor {}", c.type_text(&c.ty(*t))),
            other => format!("{} `{}`", other.kind_name(), describe(other)),
        };
        return Err(bad(c, what));
    };
    let shape: Option<Vec<i64>> = shape
        .iter()
        .map(|d| match d {
            Value::Int(n) => Some(*n),
            _ => None,
        })
        .collect();
    let Some(shape) = shape else {
        return Err(bad(
            c,
            "a record whose `shape` is not a list of integers".into(),
        ));
    };
    Ok(SparseRec {
        features: *features,
        coords: *coords,
        shape,
        batch: batch.clone(),
    })
}

fn describe(v: &Value) -> String {
    match v {
        Value::Record(fields) => {
            let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
            format!("{{{}}}", names.join(", "))
        }
        Value::Int(n) => n.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Str(s) => format!("\"{s}\""),
        other => other.kind_name().to_string(),
    }
}

/// `sparse_tensor(features, coords, shape = [D, H, W], batch = 1)`: bundles
/// active-site features `[M, C]` and coordinates `i32 [M, 1 + len(shape)]`
/// (batch index first) into a sparse tensor record. Emits no node.
fn sparse_tensor(c: &mut CallCtx) -> OpResult {
    let features = c.tensor(Some(0), "features")?;
    let coords = c.tensor(Some(1), "coords")?;
    let shape = c.int_list(None, "shape", None)?;
    let batch = c.value(None, "batch").unwrap_or(Value::Int(1));
    if shape.is_empty() || shape.len() > 3 {
        return Err(c.arg_error(
            None,
            "shape",
            format!(
                "`shape` of `sparse_tensor` has {} dims; sparse tensors have 1 to 3 spatial dims",
                shape.len()
            ),
            "give the spatial grid, e.g. `shape = [40, 200, 200]` (z, y, x)",
        ));
    }
    sizes(c, None, "shape", &shape, 1)?;
    match &batch {
        Value::Int(n) if *n >= 1 => {}
        Value::Dim(_) => {}
        other => {
            let what = describe(other);
            return Err(c.arg_error(
                None,
                "batch",
                format!("`batch` of `sparse_tensor` must be a positive size, got {what}"),
                "give the number of samples (point clouds) the coordinates index",
            ));
        }
    }
    let tf = expect_float(c, features)?;
    let tc = c.ty(coords);
    if tf.rank() != 2 {
        return Err(c.shape_error(
            format!(
                "`sparse_tensor` expects features [M, C], got {}",
                c.type_text(&tf)
            ),
            &[("the features", features)],
            "one row of channels per active site",
        ));
    }
    c.known(features, 1, "channel count")?;
    let width = shape.len() as i64 + 1;
    if tc.sparse
        || tc.dtype != DType::I32
        || tc.rank() != 2
        || tc.shape[1].as_known() != Some(width)
        || tc.shape[0] != tf.shape[0]
    {
        return Err(c.shape_error(
            format!(
                "`sparse_tensor`: coords must be i32[{}, {width}] (batch then {} spatial indices, one row per feature row), got {} for features {}",
                c.dim_text(&tf.shape[0]),
                shape.len(),
                c.type_text(&tc),
                c.type_text(&tf)
            ),
            &[("the coords", coords), ("the features", features)],
            "declare `input coords: i32[M, 4]` with the same M as the features",
        ));
    }
    let rec = SparseRec {
        features,
        coords,
        shape: shape.clone(),
        batch,
    };
    Ok(record(&rec, features, coords, shape))
}

fn gcd(a: i64, b: i64) -> i64 {
    let (mut a, mut b) = (a.abs(), b.abs());
    // Euclid: at most ~90 steps for 64-bit values.
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

fn join(v: &[i64]) -> String {
    v.iter().map(i64::to_string).collect::<Vec<_>>().join("x")
}

/// `subm_conv3d(s, out_channels, k = 3, pad = dilation*(k-1)/2, dilation = 1,
/// bias = false)` and `sparse_conv3d(s, out_channels, k = 3, stride = 2, pad =
/// 1, dilation = 1, bias = false)`; weight `[out, k, k, k, in]` (spconv 2.x
/// KRSC), bias `[out]`.
fn conv3d(c: &mut CallCtx, subm: bool) -> OpResult {
    let s = sparse_arg(c)?;
    let out_ch = c.int(Some(1), "out_channels", None)?;
    let k = c.ints(Some(2), "k", 3, Some(3))?;
    let stride = if subm {
        vec![1; 3]
    } else {
        c.ints(None, "stride", 3, Some(2))?
    };
    let dilation = c.ints(None, "dilation", 3, Some(1))?;
    sizes(c, Some(1), "out_channels", &[out_ch], 1)?;
    sizes(c, Some(2), "k", &k, 1)?;
    sizes(c, None, "stride", &stride, 1)?;
    sizes(c, None, "dilation", &dilation, 1)?;
    let same: Vec<i64> = k
        .iter()
        .zip(&dilation)
        .map(|(k, d)| d.saturating_mul(k - 1) / 2)
        .collect();
    let pad = match c.value(None, "pad") {
        None if subm => same,
        None => vec![1; 3],
        Some(_) => c.ints(None, "pad", 3, None)?,
    };
    sizes(c, None, "pad", &pad, 0)?;
    let bias = c.bool(None, "bias", Some(false))?;
    let name = c.op_name();
    if s.shape.len() != 3 {
        return Err(c.shape_error(
            format!(
                "`{name}` needs a sparse tensor over a 3D grid, this one has the grid {:?}",
                s.shape
            ),
            &[("its features", s.features)],
            "build it with `sparse_tensor(features, coords, shape = [D, H, W])`",
        ));
    }
    if subm && k.iter().any(|k| k % 2 == 0) {
        return Err(c.arg_error(
            Some(2),
            "k",
            format!(
                "`subm_conv3d` needs an odd kernel (centred on each site), got {}",
                join(&k)
            ),
            "use k = 1, 3, 5, ...",
        ));
    }
    let tf = c.ty(s.features);
    let in_ch = c.known(s.features, 1, "channel count")?;
    let m_in = tf.shape[0].clone();
    let mut out_shape = Vec::with_capacity(3);
    if subm {
        out_shape.clone_from(&s.shape);
    } else {
        for i in 0..3 {
            // The window's extent, checked before `window_out` multiplies.
            let extent = dilation[i].saturating_mul(k[i] - 1).saturating_add(1);
            let fits = extent <= s.shape[i].saturating_add(pad[i].saturating_mul(2));
            let out = if fits {
                window_out(s.shape[i], k[i], stride[i], pad[i], dilation[i], false)
            } else {
                None
            };
            let Some(o) = out else {
                return Err(c.shape_error(
                    format!(
                        "`sparse_conv3d`: a kernel of {} (dilation {}) does not fit spatial dim {i} of the grid {} padded by {}",
                        k[i],
                        dilation[i],
                        join(&s.shape),
                        pad[i]
                    ),
                    &[("the input features", s.features)],
                    "use a smaller kernel, more padding, or a larger grid",
                ));
            };
            out_shape.push(o);
        }
    }
    // Output sites each input site can reach, per dim.
    let reach: Vec<i64> = (0..3)
        .map(|i| {
            let period = stride[i] / gcd(dilation[i], stride[i]);
            (k[i] + period - 1) / period
        })
        .collect();
    let volume = sat_product(&k);
    let pairs_per_site = if subm { volume } else { sat_product(&reach) };
    let pairs = flops_scale(&m_in, pairs_per_site);
    let (m_out, coords_out) = if subm {
        (m_in.clone(), None)
    } else {
        // The output grid's cells over the batch: a second bound, which the
        // linear one (the sites the inputs reach) exceeds after a strided
        // conv whose input count is itself a run-time bound.
        let grid = sat_product(&out_shape);
        let cells = match &s.batch {
            Value::Int(b) => Some(Dim::known(grid.saturating_mul(*b))),
            other => other.as_dim().map(|b| b.scale(grid)),
        };
        let (bound, cap) = match (m_in.as_known(), cells.as_ref().and_then(Dim::as_known)) {
            (Some(m), Some(cells)) => (
                Dim::known(m.saturating_mul(pairs_per_site).min(cells)),
                None,
            ),
            _ => (pairs.clone(), cells),
        };
        let sym = c.data_dependent("M", bound, cap);
        (Dim::sym(sym), Some(()))
    };
    let fan_in = in_ch.saturating_mul(volume);
    let w = c.param(
        "weight",
        &[out_ch, k[0], k[1], k[2], in_ch],
        fan_in_uniform(fan_in),
    )?;
    let mut inputs = vec![s.features, s.coords, w];
    if bias {
        inputs.push(c.param("bias", &[out_ch], fan_in_uniform(fan_in))?);
    }
    let mut flops = flops_scale(&pairs, sat_product(&[2, in_ch, out_ch]));
    if bias {
        flops = flops.add(&flops_scale(&m_out, out_ch));
    }
    let rulebook = format!(
        "{}:%{}:k{}:s{}:p{}:d{}",
        if subm { "subm" } else { "conv" },
        s.coords.0,
        join(&k),
        join(&stride),
        join(&pad),
        join(&dilation)
    );
    let batch_dim = s.batch.as_dim().unwrap_or_else(|| Dim::known(1));
    let op = Op::new(if subm { "subm_conv3d" } else { "sparse_conv3d" })
        .with("k", Attr::Ints(k))
        .with("stride", Attr::Ints(stride))
        .with("pad", Attr::Ints(pad))
        .with("dilation", Attr::Ints(dilation))
        .with("in_shape", Attr::Ints(s.shape.clone()))
        .with("out_shape", Attr::Ints(out_shape.clone()))
        .with("batch", Attr::Dims(vec![batch_dim]))
        .with("rulebook", Attr::Str(rulebook));
    let feat_ty = TensorType::new(tf.dtype, vec![m_out.clone(), Dim::known(out_ch)]);
    let mut outputs = vec![feat_ty];
    if coords_out.is_some() {
        outputs.push(TensorType::new(DType::I32, vec![m_out, Dim::known(4)]));
    }
    let outs = c.emit(op, &inputs, outputs, flops)?;
    let coords = outs.get(1).copied().unwrap_or(s.coords);
    Ok(record(&s, outs[0], coords, out_shape))
}

/// `sparse_relu(s)`: ReLU of the features of a sparse tensor (same sites).
fn sparse_relu(c: &mut CallCtx) -> OpResult {
    let s = sparse_arg(c)?;
    let f = match c.call("relu", vec![(None, Value::Tensor(s.features))])? {
        Value::Tensor(f) => f,
        _ => return Ok(Value::Poison),
    };
    let shape = s.shape.clone();
    Ok(record(&s, f, s.coords, shape))
}

/// `sparse_global_avg_pool(s)`: per sample (the coordinates' batch
/// index), the mean of the features of its active sites: `[batch, C]`, a
/// sample without sites giving zeros (`torch_scatter.scatter_mean(x.features,
/// x.indices[:, 0])` in spconv code; a classification or regression head
/// reads it). The batch must be known at compile time.
fn global_avg_pool(c: &mut CallCtx) -> OpResult {
    let s = sparse_arg(c)?;
    let Value::Int(batch) = s.batch else {
        return Err(c.arg_error(
            Some(0),
            "s",
            "`sparse_global_avg_pool` needs a sparse tensor whose `batch` is a known size",
            "give `batch = B` to `sparse_tensor` as an integer or a model parameter",
        ));
    };
    let tf = c.ty(s.features);
    let ch = c.known(s.features, 1, "channel count")?;
    let flops = flops_scale(&tf.shape[0], ch);
    let op = Op::new("sparse_global_avg_pool").with("batch", Attr::Int(batch));
    let out = TensorType::new(tf.dtype, vec![Dim::known(batch), Dim::known(ch)]);
    let outs = c.emit(op, &[s.features, s.coords], vec![out], flops)?;
    Ok(Value::Tensor(outs[0]))
}

/// `with_features(s, f)`: the sparse tensor `s` with its features replaced by
/// `f` (`[M, C']`, one row per active site of `s`).
fn with_features(c: &mut CallCtx) -> OpResult {
    let s = sparse_arg(c)?;
    let f = c.tensor(Some(1), "features")?;
    let tf = expect_float(c, f)?;
    let old = c.ty(s.features);
    if tf.rank() != 2 || tf.shape[0] != old.shape[0] {
        return Err(c.shape_error(
            format!(
                "`with_features`: new features must be [{}, C] (one row per active site), got {}",
                c.dim_text(&old.shape[0]),
                c.type_text(&tf)
            ),
            &[
                ("the new features", f),
                ("the sparse tensor's features", s.features),
            ],
            "compute the new features row-wise from `s.features`",
        ));
    }
    let shape = s.shape.clone();
    Ok(record(&s, f, s.coords, shape))
}

#[cfg(test)]
mod tests {
    use crate::ir::{Attr, Graph, SymId, SymKind};

    use crate::testing::{model as run, out_type};

    const INPUTS: &str = "input features: f32[M, 4]\ninput coords: i32[M, 4]\ns = sparse_tensor(features, coords, shape = [40, 200, 200])\n";

    #[test]
    fn submanifold_keeps_sites() {
        let g = run(&format!(
            "{INPUTS}s = s |> c0: subm_conv3d(16) |> sparse_relu |> c1: subm_conv3d(16)\noutput f = s.features\noutput c = s.coords"
        ))
        .unwrap();
        assert_eq!(out_type(&g, "f"), "f32[M, 16]");
        assert_eq!(out_type(&g, "c"), "i32[M, 4]");
        let w = &g.params[0];
        assert_eq!(
            (w.path.as_str(), g.type_text(&w.ty)),
            ("c0.weight", "f32[16, 3, 3, 3, 4]".to_string())
        );
        let keys: Vec<_> = g
            .nodes
            .iter()
            .filter_map(|n| n.op.attr("rulebook").cloned())
            .collect();
        assert_eq!(keys.len(), 2);
        assert_eq!(
            keys[0], keys[1],
            "same coords and geometry share a rule book"
        );
        // 2 * 27 M pairs * 4 * 16.
        assert_eq!(g.nodes[0].flops.terms()[0].1, 2 * 27 * 4 * 16);
    }

    #[test]
    fn strided_conv_makes_new_sites() {
        let g = run(&format!(
            "{INPUTS}s = s |> d1: sparse_conv3d(32) |> sparse_relu |> d2: subm_conv3d(32) |> d3: sparse_conv3d(64, k = 3, stride = 2)\noutput f = s.features\noutput c = s.coords\noutput shape_z = s.features * 1.0"
        ))
        .unwrap();
        assert_eq!(out_type(&g, "f"), "f32[M3, 64]");
        assert_eq!(out_type(&g, "c"), "i32[M3, 4]");
        let m2 = g.find_symbol("M2").expect("M2");
        match &g.symbols[m2.0 as usize].kind {
            SymKind::DataDependent { bound, .. } => assert_eq!(g.dim_text(bound), "8*M"),
            other => panic!("{other:?}"),
        }
        let conv = &g.nodes[0];
        assert_eq!(
            conv.op.attr("out_shape"),
            Some(&Attr::Ints(vec![20, 100, 100]))
        );
        let last = g
            .nodes
            .iter()
            .rfind(|n| n.op.name == "sparse_conv3d")
            .unwrap();
        assert_eq!(
            last.op.attr("out_shape"),
            Some(&Attr::Ints(vec![10, 50, 50]))
        );
        // Different coords: different rule books.
        let keys: Vec<_> = g
            .nodes
            .iter()
            .filter_map(|n| n.op.attr("rulebook").cloned())
            .collect();
        assert_eq!(keys.len(), 3);
        assert!(keys[0] != keys[1] && keys[1] != keys[2]);
    }

    /// The second stride-2 conv's site count: linear in the first one's
    /// (`8*M2`, itself `8*M`), so without the grid's cells as a cap it is
    /// planned for 64 M rows; at M = 20000 that is 1.28 M rows for a grid of
    /// 10 x 50 x 50 = 25000 cells.
    #[test]
    fn strided_after_strided_is_capped_by_the_grid() {
        let g = run(&format!(
            "{INPUTS}s = s |> d1: sparse_conv3d(8, k = 3, stride = 2, pad = 1) |> d2: sparse_conv3d(8, k = 3, stride = 2, pad = 1)\noutput f = s.features"
        ))
        .unwrap();
        /// A symbol's planned value with the input count `M` at `m`.
        fn planned(g: &Graph, s: SymId, m: i64) -> Option<i64> {
            if g.sym_name(s) == "M" {
                return Some(m);
            }
            g.symbols[s.0 as usize]
                .kind
                .planned_bound(&|t| planned(g, t, m))
        }
        let m3 = g.find_symbol("M3").expect("M3");
        let at = |m| planned(&g, m3, m);
        assert_eq!(at(20000), Some(10 * 50 * 50), "the second grid's cells");
        assert_eq!(at(100), Some(8 * 8 * 100), "the sites 100 inputs reach");
        // Between: the first level's cap (20 x 100 x 100) times 8 would be
        // 1.6 M; the second level's cells are fewer.
        assert_eq!(at(30000), Some(25000));
        match &g.symbols[m3.0 as usize].kind {
            SymKind::DataDependent { bound, cap, .. } => {
                assert_eq!(g.dim_text(bound), "8*M2");
                assert_eq!(cap.as_ref().map(|c| g.dim_text(c)), Some("25000".into()));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn known_counts_are_capped_by_the_grid() {
        let g = run("input f: f32[1000, 4]\ninput c: i32[1000, 4]\ns = sparse_tensor(f, c, shape = [4, 4, 4]) |> d: sparse_conv3d(8)\noutput y = s.features").unwrap();
        let m = g.find_symbol("M").expect("M");
        match &g.symbols[m.0 as usize].kind {
            SymKind::DataDependent { bound, .. } => assert_eq!(bound.as_known(), Some(8)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors() {
        let e = run("input features: f32[M, 4]\ninput coords: i64[M, 4]\ns = sparse_tensor(features, coords, shape = [4, 4, 4])").unwrap_err();
        assert!(e.contains("i32[M, 4]") && e.contains("i64[M, 4]"), "{e}");
        let e = run("input features: f32[M, 4]\ninput coords: i32[K, 4]\ns = sparse_tensor(features, coords, shape = [4, 4, 4])").unwrap_err();
        assert!(e.contains("f32[M, 4]") && e.contains("i32[K, 4]"), "{e}");
        let e = run("input x: f32[M, 4]\ny = x |> c: subm_conv3d(8)").unwrap_err();
        assert!(
            e.contains("expects a sparse tensor") && e.contains("f32[M, 4]"),
            "{e}"
        );
        let e = run(&format!("{INPUTS}y = s |> c: subm_conv3d(8, k = 2)")).unwrap_err();
        assert!(e.contains("odd"), "{e}");
        let e = run(&format!(
            "{INPUTS}y = s |> c: sparse_conv3d(8, k = 300, pad = 0)"
        ))
        .unwrap_err();
        assert!(e.contains("does not fit"), "{e}");
        let e = run(&format!(
            "{INPUTS}y = s |> c: sparse_conv3d(8, k = 1099511627777)"
        ))
        .unwrap_err();
        assert!(e.contains("2^40"), "{e}");
        let big = "k = 1099511627776, dilation = 1099511627776";
        let e = run(&format!("{INPUTS}y = s |> c: sparse_conv3d(8, {big})")).unwrap_err();
        assert!(e.contains("does not fit"), "{e}");
        let e = run(&format!(
            "{INPUTS}y = s |> c: sparse_conv3d(8, k = 1000000, dilation = 1000000)"
        ))
        .unwrap_err();
        assert!(e.contains("does not fit"), "{e}");
        let e = run(&format!("{INPUTS}y = s |> c: subm_conv3d(8, stride = 2)")).unwrap_err();
        assert!(e.contains("stride"), "{e}");
        let e = run(&format!("{INPUTS}y = s |> sparse_conv3d(8)")).unwrap_err();
        assert!(e.contains("needs a label"), "{e}");
        let e = run(&format!(
            "{INPUTS}y = with_features(s, s.features |> c: linear(8) |> slice(0, 0, 1))"
        ))
        .unwrap_err();
        assert!(
            e.contains("one row per active site") || e.contains("slice"),
            "{e}"
        );
        let e = run("input features: f32[M, 4]\ninput coords: i32[M, 3]\ns = sparse_tensor(features, coords, shape = [4, 4]) |> c: subm_conv3d(8)").unwrap_err();
        assert!(e.contains("3D grid"), "{e}");
    }

    #[test]
    fn with_features_rebuilds() {
        let g = run(&format!("{INPUTS}t = with_features(s, s.features |> tanh)\nt = t |> c: subm_conv3d(8)\noutput y = t.features")).unwrap();
        assert_eq!(out_type(&g, "y"), "f32[M, 8]");
    }
}

/// `models/spconv.net` against spconv 2.3.8's key list
/// (`tests/fixtures/dump_keys_sparse.py`).
#[cfg(test)]
mod model_tests {
    use crate::ops::embed::model_tests::{param_lines, reference};

    #[test]
    fn spconv_encoder_matches_spconv_keys() {
        let (ours, count) = param_lines("spconv.net", "spconv_encoder", &[]);
        let (theirs, their_count) = reference("spconv_encoder");
        assert_eq!(ours, theirs);
        assert_eq!(count, their_count);
    }
}
