//! Text-matching ops: lookup tables (`embedding`, `embedding_bag`), layers
//! that consume sparse bag-of-letter-trigram inputs without ever forming the
//! dense vector (`sparse_linear`, `bag_conv1d`), `cosine_similarity` with
//! broadcasting, and the DSSM loss `dssm_loss`.
//!
//! A sparse input `sparse f32[..., V]` is a CSR matrix: every position of the
//! leading dims is one row (one bag), the last dim `V` is the vocabulary.
//! `sparse f32[N, 5, 30000]` therefore holds `5*N` bags. The number of stored
//! non-zeros is only known at run time, so FLOP counts use the keyword `nnz`
//! (non-zeros per row) when given, and the dense upper bound `V` otherwise.

use super::util::{at_least, axis, broadcast, expect_float, fan_in_uniform, numel, window_out};
use super::Builtin;
use crate::diag::Diagnostic;
use crate::elab::{CallCtx, OpResult, MAX_DIM};
use crate::ir::{Attr, Dim, Init, Op, TensorType, ValueId};
use netc_runtime::DType;

/// The family's built-ins.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "embedding",
        build: embedding,
    },
    Builtin {
        name: "embedding_bag",
        build: embedding_bag,
    },
    Builtin {
        name: "sparse_linear",
        build: sparse_linear,
    },
    Builtin {
        name: "bag_conv1d",
        build: bag_conv1d,
    },
    Builtin {
        name: "cosine_similarity",
        build: cosine_similarity,
    },
    Builtin {
        name: "dssm_loss",
        build: dssm_loss,
    },
];

/// `d * k` for FLOP counts, saturating instead of overflowing.
pub(crate) fn flops_scale(d: &Dim, k: i64) -> Dim {
    let mut out = Dim::known(d.constant().saturating_mul(k));
    for &(s, coef) in d.terms() {
        out = out.add(&Dim::sym(s).scale(coef.saturating_mul(k)));
    }
    out
}

/// Checks integer size arguments are between `min` and 2^40 (so products
/// of two never overflow).
pub(crate) fn sizes(
    c: &mut CallCtx,
    pos: Option<usize>,
    name: &'static str,
    values: &[i64],
    min: i64,
) -> Result<(), Diagnostic> {
    at_least(c, pos, name, values, min)?;
    if let Some(bad) = values.iter().find(|v| **v > MAX_DIM) {
        return Err(c.arg_error(
            pos,
            name,
            format!(
                "`{name}` of `{}` is {bad}, larger than the largest size 2^40",
                c.op_name()
            ),
            "use a realistic size",
        ));
    }
    Ok(())
}

/// Saturating product of FLOP factors.
pub(crate) fn sat_product(factors: &[i64]) -> i64 {
    factors.iter().fold(1i64, |acc, &f| acc.saturating_mul(f))
}

/// A checked sparse bag input: its type, the number of rows (bags) as a
/// linear form (zero if not linear), and the vocabulary size.
struct Bags {
    ty: TensorType,
    rows: Dim,
    vocab: i64,
}

/// Requires `v` to be a sparse float tensor of rank >= `min_rank` whose last
/// dim (the vocabulary) is known.
fn sparse_bags(
    c: &CallCtx,
    v: ValueId,
    min_rank: usize,
    layout: &str,
    dense_alt: &str,
) -> Result<Bags, Diagnostic> {
    let ty = c.ty(v);
    if !ty.sparse {
        return Err(c.shape_error(
            format!(
                "`{}` expects a sparse input `sparse f32[{layout}]`, got the dense {}",
                c.op_name(),
                c.type_text(&ty)
            ),
            &[("the input", v)],
            format!("declare the input as `input q: sparse f32[{layout}]`, or use `{dense_alt}` for dense tensors"),
        ));
    }
    if !ty.dtype.is_float() {
        return Err(c.shape_error(
            format!(
                "`{}` expects float bag weights, got {}",
                c.op_name(),
                c.type_text(&ty)
            ),
            &[("the input", v)],
            "declare the sparse input as `sparse f32[...]`",
        ));
    }
    if ty.rank() < min_rank {
        return Err(c.shape_error(
            format!(
                "`{}` expects a rank-{min_rank} or higher sparse input [{layout}], got {}",
                c.op_name(),
                c.type_text(&ty)
            ),
            &[("the input", v)],
            format!("the input must be [{layout}]"),
        ));
    }
    let vocab = c.known(v, ty.rank() - 1, "vocabulary size")?;
    let rows = TensorType::new(ty.dtype, ty.shape[..ty.rank() - 1].to_vec())
        .numel()
        .unwrap_or_default();
    Ok(Bags { ty, rows, vocab })
}

/// The `nnz` keyword: non-zeros per row for the FLOP count (default `vocab`,
/// the dense upper bound).
fn nnz(c: &mut CallCtx, vocab: i64) -> Result<i64, Diagnostic> {
    let n = c.opt_int(None, "nnz")?.unwrap_or(vocab);
    if n < 1 || n > vocab {
        return Err(c.arg_error(
            None,
            "nnz",
            format!("`nnz` of `{}` is {n}, but a row of a vocabulary of {vocab} has 1..={vocab} non-zeros", c.op_name()),
            "give the expected number of non-zeros per bag (it only affects the FLOP count)",
        ));
    }
    Ok(n)
}

/// `embedding(ids, num, dim, padding_idx = none)`: integer ids of any shape
/// -> `[..., dim]`; weight `[num, dim]` initialised normal(0, 1).
fn embedding(c: &mut CallCtx) -> OpResult {
    let ids = c.tensor(Some(0), "ids")?;
    let num = c.int(Some(1), "num", None)?;
    let dim = c.int(Some(2), "dim", None)?;
    let padding_idx = c.opt_int(None, "padding_idx")?;
    sizes(c, Some(1), "num", &[num], 1)?;
    sizes(c, Some(2), "dim", &[dim], 1)?;
    let t = c.ty(ids);
    if t.sparse || !matches!(t.dtype, DType::I64 | DType::I32) {
        return Err(c.shape_error(
            format!("`embedding` expects integer ids (i64 or i32), got {}", c.type_text(&t)),
            &[("the ids", ids)],
            "declare the ids as `input q: i64[N, T]`; for sparse bags use `embedding_bag` or `sparse_linear`",
        ));
    }
    let mut op = Op::new("embedding");
    if let Some(p) = padding_idx {
        let p_norm = if p < 0 { p + num } else { p };
        if p_norm < 0 || p_norm >= num {
            return Err(c.arg_error(
                None,
                "padding_idx",
                format!("`padding_idx` = {p} is outside the table of {num} rows"),
                format!("use an index in -{num}..{}", num - 1),
            ));
        }
        op = op.with("padding_idx", Attr::Int(p_norm));
    }
    let w = c.param(
        "weight",
        &[num, dim],
        Init::Normal {
            mean: 0.0,
            std: 1.0,
        },
    )?;
    let mut shape = t.shape.clone();
    shape.push(Dim::known(dim));
    c.emit1(
        op,
        &[ids, w],
        TensorType::new(DType::F32, shape),
        Dim::known(0),
    )
}

/// `embedding_bag(bags, dim, mode = "sum", nnz = V)`: sparse `[..., V]` ->
/// `[..., dim]`, each row the (weighted) sum or mean of the embeddings of its
/// non-zero columns; weight `[V, dim]` initialised normal(0, 1).
fn embedding_bag(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "bags")?;
    let dim = c.int(Some(1), "dim", None)?;
    let mode = c.choice(None, "mode", &["sum", "mean"], "sum")?;
    sizes(c, Some(1), "dim", &[dim], 1)?;
    let b = sparse_bags(c, x, 2, "N, V", "linear")?;
    let nnz = nnz(c, b.vocab)?;
    let w = c.param(
        "weight",
        &[b.vocab, dim],
        Init::Normal {
            mean: 0.0,
            std: 1.0,
        },
    )?;
    let mut shape = b.ty.shape.clone();
    *shape.last_mut().expect("rank >= 2") = Dim::known(dim);
    let out = TensorType::new(b.ty.dtype, shape);
    // A multiply-add per stored non-zero and output feature; mean adds a
    // division per output.
    let per_row = sat_product(&[2, nnz, dim]).saturating_add(if mode == "mean" { dim } else { 0 });
    let flops = flops_scale(&b.rows, per_row);
    let op = Op::new("embedding_bag")
        .with("mode", Attr::Str(mode.into()))
        .with("nnz", Attr::Int(nnz));
    c.emit1(op, &[x, w], out, flops)
}

/// `sparse_linear(bags, out_features, bias = true, nnz = V)`: sparse
/// `[..., V]` x dense weight -> `[..., out]`, with `nn.Linear`'s parameters
/// (weight `[out, V]`, bias `[out]`) and initialisation.
fn sparse_linear(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "bags")?;
    let out_f = c.int(Some(1), "out_features", None)?;
    let bias = c.bool(None, "bias", Some(true))?;
    sizes(c, Some(1), "out_features", &[out_f], 1)?;
    let b = sparse_bags(c, x, 2, "N, V", "linear")?;
    let nnz = nnz(c, b.vocab)?;
    let w = c.param("weight", &[out_f, b.vocab], fan_in_uniform(b.vocab))?;
    let mut inputs = vec![x, w];
    if bias {
        inputs.push(c.param("bias", &[out_f], fan_in_uniform(b.vocab))?);
    }
    let mut shape = b.ty.shape.clone();
    *shape.last_mut().expect("rank >= 2") = Dim::known(out_f);
    let out = TensorType::new(b.ty.dtype, shape);
    let per_row = sat_product(&[2, nnz, out_f]).saturating_add(if bias { out_f } else { 0 });
    let flops = flops_scale(&b.rows, per_row);
    c.emit1(
        Op::new("sparse_linear").with("nnz", Attr::Int(nnz)),
        &inputs,
        out,
        flops,
    )
}

/// `bag_conv1d(bags, out_channels, k, pad = 0, bias = true, nnz = V)`: a
/// `nn.Conv1d(V, out, k, padding = pad)` over a sequence of sparse bags
/// `[..., T, V]` -> dense `[..., T', out]` (positions, then channels);
/// weight `[out, V, k]`, bias `[out]`, as `nn.Conv1d`.
fn bag_conv1d(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "bags")?;
    let out_ch = c.int(Some(1), "out_channels", None)?;
    let k = c.int(Some(2), "k", None)?;
    let pad = c.int(None, "pad", Some(0))?;
    let bias = c.bool(None, "bias", Some(true))?;
    sizes(c, Some(1), "out_channels", &[out_ch], 1)?;
    sizes(c, Some(2), "k", &[k], 1)?;
    sizes(c, None, "pad", &[pad], 0)?;
    let b = sparse_bags(c, x, 3, "N, T, V", "conv1d")?;
    let nnz = nnz(c, b.vocab)?;
    let r = b.ty.rank();
    let len = b.ty.shape[r - 2].clone();
    // Stride 1: T' = T + 2*pad - k + 1, linear even when T is symbolic.
    let out_len = len.add(&Dim::known(2 * pad - k + 1));
    let fits = match len.as_known() {
        Some(t) => window_out(t, k, 1, pad, 1, false).is_some(),
        None => true,
    };
    if !fits {
        return Err(c.shape_error(
            format!(
                "`bag_conv1d`: a window of {k} words does not fit a sequence of {} padded by {pad} on each side",
                c.dim_text(&len)
            ),
            &[("the input", x)],
            "use a smaller window `k`, more padding, or longer sequences",
        ));
    }
    let w = c.param(
        "weight",
        &[out_ch, b.vocab, k],
        fan_in_uniform(b.vocab.saturating_mul(k)),
    )?;
    let mut inputs = vec![x, w];
    if bias {
        inputs.push(c.param("bias", &[out_ch], fan_in_uniform(b.vocab.saturating_mul(k)))?);
    }
    let mut shape = b.ty.shape[..r - 2].to_vec();
    shape.push(out_len);
    shape.push(Dim::known(out_ch));
    let out = TensorType::new(b.ty.dtype, shape);
    // Every stored non-zero meets every tap (<= k outputs) and channel; bias
    // adds one per output element.
    let mut flops = flops_scale(&b.rows, sat_product(&[2, nnz, out_ch, k]));
    if bias {
        flops = flops.add(&numel(&out));
    }
    let op = Op::new("bag_conv1d")
        .with("k", Attr::Int(k))
        .with("pad", Attr::Int(pad))
        .with("nnz", Attr::Int(nnz));
    c.emit1(op, &inputs, out, flops)
}

/// `cosine_similarity(a, b, dim = -1, eps = 1e-8)`: `a` and `b` broadcast,
/// then `sum(a*b) / (max(|a|, eps) * max(|b|, eps))` over `dim`.
fn cosine_similarity(c: &mut CallCtx) -> OpResult {
    let a = c.tensor(Some(0), "a")?;
    let b = c.tensor(Some(1), "b")?;
    let dim = c.int(None, "dim", Some(-1))?;
    let eps = c.float(None, "eps", Some(1e-8))?;
    c.check_range(None, "eps", eps, 0.0, 1.0)?;
    let (ta, tb) = (expect_float(c, a)?, expect_float(c, b)?);
    let Some(shape) = broadcast(&ta.shape, &tb.shape) else {
        return Err(c.shape_error(
            format!(
                "`cosine_similarity`: {} and {} do not broadcast",
                c.type_text(&ta),
                c.type_text(&tb)
            ),
            &[("the first operand", a), ("the second operand", b)],
            "dims must be equal or 1; e.g. compare a query [N, 1, E] with documents [N, K, E]",
        ));
    };
    if shape.is_empty() {
        return Err(c.shape_error(
            "`cosine_similarity` needs vectors, got two scalars",
            &[("the first operand", a), ("the second operand", b)],
            "pass tensors whose `dim` holds the vectors",
        ));
    }
    let d = axis(c, None, "dim", dim, shape.len())?;
    let len = shape[d].as_known().unwrap_or(1);
    let mut out_shape = shape.clone();
    out_shape.remove(d);
    let out = TensorType::new(ta.dtype, out_shape);
    // Dot product and two squared norms (2 each per element), then two
    // square roots, two clamps, a product and a division per result.
    let flops = flops_scale(&numel(&out), sat_product(&[6, len]).saturating_add(6));
    c.emit1(
        Op::new("cosine_similarity")
            .with("dim", Attr::Int(d as i64))
            .with("eps", Attr::Float(eps)),
        &[a, b],
        out,
        flops,
    )
}

/// `dssm_loss(scores)`: `-log softmax(scores, dim = 1)[:, 0]`, averaged over
/// the batch (the positive document is at index 0).
fn dssm_loss(c: &mut CallCtx) -> OpResult {
    let s = c.tensor(Some(0), "scores")?;
    let t = expect_float(c, s)?;
    if t.rank() != 2 {
        return Err(c.shape_error(
            format!(
                "`dssm_loss` expects scores [N, 1 + negatives], got {}",
                c.type_text(&t)
            ),
            &[("the scores", s)],
            "pass the [batch, documents] matrix of gamma * cosine, positive document first",
        ));
    }
    if t.shape[1].as_known().is_some_and(|k| k < 2) {
        return Err(c.shape_error(
            format!(
                "`dssm_loss` needs at least one negative document, got scores {}",
                c.type_text(&t)
            ),
            &[("the scores", s)],
            "score the positive document and at least one negative per query",
        ));
    }
    // exp, sum, log-sum-exp and subtraction per element, plus the mean.
    let flops = flops_scale(&numel(&t), 3).add(&t.shape[0]);
    c.emit1(
        Op::new("dssm_loss"),
        &[s],
        TensorType::new(t.dtype, vec![]),
        flops,
    )
}

#[cfg(test)]
mod tests {
    use crate::ir::Graph;

    use crate::testing::{model as run, out_type};

    fn param(g: &Graph, path: &str) -> String {
        let p = g
            .params
            .iter()
            .find(|p| p.path == path)
            .unwrap_or_else(|| panic!("no param {path}"));
        g.type_text(&p.ty)
    }

    #[test]
    fn embedding_shapes_and_params() {
        let g = run("input ids: i64[N, T]\noutput y = ids |> emb: embedding(1000, 64)").unwrap();
        assert_eq!(out_type(&g, "y"), "f32[N, T, 64]");
        assert_eq!(param(&g, "emb.weight"), "f32[1000, 64]");
        let g =
            run("input ids: i32[N, 3, 7]\noutput y = emb: embedding(ids, 10, 4, padding_idx = -1)")
                .unwrap();
        assert_eq!(out_type(&g, "y"), "f32[N, 3, 7, 4]");
        let e = run("input x: f32[N, T]\noutput y = emb: embedding(x, 10, 4)").unwrap_err();
        assert!(e.contains("integer ids") && e.contains("f32[N, T]"), "{e}");
        let e = run("input ids: i64[N]\noutput y = emb: embedding(ids, 10, 4, padding_idx = 10)")
            .unwrap_err();
        assert!(e.contains("padding_idx"), "{e}");
        let e = run("input ids: i64[N]\noutput y = embedding(ids, 10, 4)").unwrap_err();
        assert!(e.contains("needs a label"), "{e}");
    }

    #[test]
    fn embedding_bag_and_sparse_linear() {
        let g = run("input q: sparse f32[N, 5, 300]\noutput y = q |> bag: embedding_bag(16, mode = \"mean\")").unwrap();
        assert_eq!(out_type(&g, "y"), "f32[N, 5, 16]");
        assert_eq!(param(&g, "bag.weight"), "f32[300, 16]");
        let g =
            run("input q: sparse f32[N, 30000]\noutput y = q |> fc: sparse_linear(300, nnz = 20)")
                .unwrap();
        assert_eq!(out_type(&g, "y"), "f32[N, 300]");
        assert_eq!(param(&g, "fc.weight"), "f32[300, 30000]");
        assert_eq!(param(&g, "fc.bias"), "f32[300]");
        assert_eq!(g.param_count(), 300 * 30000 + 300);
        // 2 * nnz * out + out per row.
        assert_eq!(g.nodes[0].flops.constant(), 0);
        assert_eq!(g.nodes[0].flops.terms()[0].1, 2 * 20 * 300 + 300);
        let e = run("input q: f32[N, 30000]\noutput y = q |> fc: sparse_linear(300)").unwrap_err();
        assert!(
            e.contains("sparse input") && e.contains("f32[N, 30000]"),
            "{e}"
        );
        let e = run("input q: sparse f32[N]\noutput y = q |> fc: sparse_linear(300)").unwrap_err();
        assert!(e.contains("rank-2"), "{e}");
        let e = run("input q: sparse f32[N, 30]\noutput y = q |> fc: sparse_linear(3, nnz = 31)")
            .unwrap_err();
        assert!(e.contains("nnz"), "{e}");
        let e =
            run("input q: sparse f32[N, 30]\noutput y = q |> b: embedding_bag(3, mode = \"max\")")
                .unwrap_err();
        assert!(e.contains("max"), "{e}");
    }

    #[test]
    fn bag_conv1d_shapes() {
        let g = run(
            "input q: sparse f32[N, 20, 300]\noutput y = q |> conv: bag_conv1d(30, 3, pad = 1)",
        )
        .unwrap();
        assert_eq!(out_type(&g, "y"), "f32[N, 20, 30]");
        assert_eq!(param(&g, "conv.weight"), "f32[30, 300, 3]");
        let g = run("input q: sparse f32[N, 5, T, 300]\noutput y = q |> conv: bag_conv1d(30, 3)")
            .unwrap();
        assert_eq!(out_type(&g, "y"), "f32[N, 5, T - 2, 30]");
        let e = run("input q: sparse f32[N, 2, 300]\noutput y = q |> conv: bag_conv1d(30, 5)")
            .unwrap_err();
        assert!(e.contains("does not fit"), "{e}");
        let e = run("input q: sparse f32[N, 300]\noutput y = q |> conv: bag_conv1d(30, 3)")
            .unwrap_err();
        assert!(e.contains("rank-3"), "{e}");
    }

    #[test]
    fn cosine_and_loss() {
        let g = run(
            "input q: f32[N, 1, 128]\ninput d: f32[N, 5, 128]\noutput s = cosine_similarity(q, d) * 10.0\noutput l = dssm_loss(s)",
        )
        .unwrap();
        assert_eq!(out_type(&g, "s"), "f32[N, 5]");
        assert_eq!(out_type(&g, "l"), "f32[]");
        let g = run("input q: f32[N, 128]\ninput d: f32[N, 128]\noutput s = cosine_similarity(q, d, dim = 0)").unwrap();
        assert_eq!(out_type(&g, "s"), "f32[128]");
        let e = run(
            "input q: f32[N, 2, 128]\ninput d: f32[N, 5, 128]\noutput s = cosine_similarity(q, d)",
        )
        .unwrap_err();
        assert!(
            e.contains("f32[N, 2, 128]") && e.contains("f32[N, 5, 128]"),
            "{e}"
        );
        let e = run("input q: f32[N, 128]\ninput d: f32[N, 128]\noutput s = cosine_similarity(q, d, dim = 2)").unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        let e = run("input s: f32[N, 5, 2]\noutput l = dssm_loss(s)").unwrap_err();
        assert!(e.contains("[N, 1 + negatives]"), "{e}");
        let e = run("input s: f32[N, 1]\noutput l = dssm_loss(s)").unwrap_err();
        assert!(e.contains("negative"), "{e}");
    }
}

/// `models/dssm.net` against the reference key lists dumped by
/// `tests/fixtures/dump_keys_sparse.py`.
#[cfg(test)]
pub(crate) mod model_tests {
    use crate::elab::{elaborate, Value};
    use crate::program::Program;
    use std::path::PathBuf;

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// `--params`-style lines of a model of a file.
    pub(crate) fn param_lines(
        file: &str,
        model: &str,
        sets: &[(String, Value)],
    ) -> (Vec<String>, i64) {
        let (p, diags) = Program::load(&root().join("models").join(file));
        assert!(diags.is_empty(), "{diags:?}");
        let m = p.model(Some(model)).expect("model");
        let g = elaborate(&p, m, sets)
            .unwrap_or_else(|d| panic!("{}", crate::diag::render_all(&d, &p.sources)));
        let lines = g
            .params
            .iter()
            .map(|p| {
                let dims: Vec<String> = p.ty.shape.iter().map(|d| g.dim_text(d)).collect();
                let kind = if p.buffer { "buffer" } else { "param" };
                format!("{} {} [{}] {kind}", p.path, p.ty.dtype, dims.join(", "))
            })
            .collect();
        (lines, g.param_count())
    }

    pub(crate) fn reference(model: &str) -> (Vec<String>, i64) {
        let dir = root().join("tests/fixtures/keys");
        let keys = std::fs::read_to_string(dir.join(format!("{model}.txt"))).expect("key list");
        let counts = std::fs::read_to_string(dir.join("param_counts_sparse.txt")).expect("counts");
        let count = counts
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!("{model} "))
                    .and_then(|n| n.trim().parse().ok())
            })
            .expect("count");
        (keys.lines().map(str::to_string).collect(), count)
    }

    #[test]
    fn dssm_family_matches_pytorch_keys() {
        for model in ["dssm", "cnn_dssm", "lstm_dssm"] {
            // PyTorch's nn.LSTM has no peepholes.
            let sets = if model == "lstm_dssm" {
                vec![("peephole".to_string(), Value::Bool(false))]
            } else {
                vec![]
            };
            let (ours, count) = param_lines("dssm.net", model, &sets);
            let (theirs, their_count) = reference(model);
            assert_eq!(ours, theirs, "{model}");
            assert_eq!(count, their_count, "{model}");
        }
        // With peepholes: three [128] vectors per tower more.
        let (_, count) = param_lines("dssm.net", "lstm_dssm", &[]);
        assert_eq!(count, 7_944_192 + 2 * 3 * 128);
        // Shared towers: one set of weights.
        let (lines, count) = param_lines(
            "dssm.net",
            "dssm",
            &[("shared_towers".to_string(), Value::Bool(true))],
        );
        assert_eq!(count, 18_258_256 / 2);
        assert!(
            lines[0].starts_with("tower.net.0.weight f32 [300, 30000]"),
            "{lines:?}"
        );
    }
}
