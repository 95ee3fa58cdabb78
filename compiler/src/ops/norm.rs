//! Normalisation layers: batch norm (training statistics and running
//! buffers, as `nn.BatchNorm*d`), frozen batch norm (torchvision's
//! `FrozenBatchNorm2d`: every tensor a buffer), group norm and layer norm.

use super::util::{expect_float, numel};
use super::Builtin;
use crate::elab::{CallCtx, OpResult};
use crate::ir::{Attr, Dim, Init, Op, TensorType};
use netc_runtime::DType;

/// The family's built-ins.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "batch_norm",
        build: batch_norm,
    },
    Builtin {
        name: "frozen_batch_norm",
        build: frozen_batch_norm,
    },
    Builtin {
        name: "group_norm",
        build: group_norm,
    },
    Builtin {
        name: "layer_norm",
        build: layer_norm,
    },
];

fn channel_count(
    c: &mut CallCtx,
    x: crate::ir::ValueId,
) -> Result<(TensorType, i64), crate::diag::Diagnostic> {
    let t = expect_float(c, x)?;
    if t.rank() < 2 {
        return Err(c.shape_error(
            format!(
                "`{}` expects [N, C, ...], got {}",
                c.op_name(),
                c.type_text(&t)
            ),
            &[("the input", x)],
            "normalisation is over the channel dim 1",
        ));
    }
    let ch = c.known(x, 1, "channel count")?;
    Ok((t, ch))
}

/// `batch_norm(x, eps = 1e-5, momentum = 0.1, affine = true)` over dim 1 of
/// `[N, C, ...]`: params `weight` (1) and `bias` (0), buffers `running_mean`
/// (0), `running_var` (1), `num_batches_tracked` (i64 scalar).
fn batch_norm(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let eps = c.float(None, "eps", Some(1e-5))?;
    let momentum = c.float(None, "momentum", Some(0.1))?;
    let affine = c.bool(None, "affine", Some(true))?;
    c.check_range(None, "eps", eps, 0.0, 1.0)?;
    c.check_range(None, "momentum", momentum, 0.0, 1.0)?;
    let (t, ch) = channel_count(c, x)?;
    let mut inputs = vec![x];
    if affine {
        inputs.push(c.param("weight", &[ch], Init::Const(1.0))?);
        inputs.push(c.param("bias", &[ch], Init::Const(0.0))?);
    }
    inputs.push(c.buffer(
        "running_mean",
        TensorType::known(DType::F32, &[ch]),
        Init::Const(0.0),
    )?);
    inputs.push(c.buffer(
        "running_var",
        TensorType::known(DType::F32, &[ch]),
        Init::Const(1.0),
    )?);
    inputs.push(c.buffer(
        "num_batches_tracked",
        TensorType::known(DType::I64, &[]),
        Init::Const(0.0),
    )?);
    let op = Op::new("batch_norm")
        .with("eps", Attr::Float(eps))
        .with("momentum", Attr::Float(momentum))
        .with("affine", Attr::Bool(affine));
    // Inference: one multiply-add per element (scale and shift folded).
    let flops = numel(&t).scale(2);
    c.emit1(op, &inputs, t, flops)
}

/// `frozen_batch_norm(x, eps = 1e-5)`: fixed statistics and affine terms, all
/// buffers (`weight`, `bias`, `running_mean`, `running_var`).
fn frozen_batch_norm(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let eps = c.float(None, "eps", Some(1e-5))?;
    c.check_range(None, "eps", eps, 0.0, 1.0)?;
    let (t, ch) = channel_count(c, x)?;
    let vec = TensorType::known(DType::F32, &[ch]);
    let inputs = vec![
        x,
        c.buffer("weight", vec.clone(), Init::Const(1.0))?,
        c.buffer("bias", vec.clone(), Init::Const(0.0))?,
        c.buffer("running_mean", vec.clone(), Init::Const(0.0))?,
        c.buffer("running_var", vec, Init::Const(1.0))?,
    ];
    let flops = numel(&t).scale(2);
    c.emit1(
        Op::new("frozen_batch_norm").with("eps", Attr::Float(eps)),
        &inputs,
        t,
        flops,
    )
}

/// `group_norm(x, groups, eps = 1e-5, affine = true)`: params `weight` (1),
/// `bias` (0) of `[C]`.
fn group_norm(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let groups = c.int(Some(1), "groups", None)?;
    let eps = c.float(None, "eps", Some(1e-5))?;
    let affine = c.bool(None, "affine", Some(true))?;
    super::util::at_least(c, Some(1), "groups", &[groups], 1)?;
    c.check_range(None, "eps", eps, 0.0, 1.0)?;
    let (t, ch) = channel_count(c, x)?;
    if ch % groups != 0 {
        return Err(c.shape_error(
            format!("`group_norm`: {groups} groups do not divide {ch} channels"),
            &[("the input", x)],
            "choose a group count that divides the channels",
        ));
    }
    let mut inputs = vec![x];
    if affine {
        inputs.push(c.param("weight", &[ch], Init::Const(1.0))?);
        inputs.push(c.param("bias", &[ch], Init::Const(0.0))?);
    }
    let op = Op::new("group_norm")
        .with("groups", Attr::Int(groups))
        .with("eps", Attr::Float(eps))
        .with("affine", Attr::Bool(affine));
    // Mean, variance, normalise, scale-shift: about 5 per element.
    let flops = numel(&t).scale(5);
    c.emit1(op, &inputs, t, flops)
}

/// `layer_norm(x, shape = [last dim], eps = 1e-5, affine = true)`: normalises
/// over the trailing dims `shape`; params `weight` (1), `bias` (0) of `shape`.
fn layer_norm(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let t = expect_float(c, x)?;
    if t.rank() == 0 {
        return Err(c.shape_error(
            "`layer_norm` of a scalar",
            &[("the input", x)],
            "normalise over at least one dim",
        ));
    }
    let last = c.known(x, t.rank() - 1, "normalised size")?;
    let shape = c.int_list(Some(1), "shape", Some(vec![last]))?;
    let eps = c.float(None, "eps", Some(1e-5))?;
    let affine = c.bool(None, "affine", Some(true))?;
    c.check_range(None, "eps", eps, 0.0, 1.0)?;
    let trailing: Vec<Dim> = shape.iter().map(|&d| Dim::known(d)).collect();
    if shape.is_empty()
        || shape.len() > t.rank()
        || t.shape[t.rank() - shape.len()..] != trailing[..]
    {
        return Err(c.shape_error(
            format!(
                "`layer_norm` over {shape:?} does not match the trailing dims of {}",
                c.type_text(&t)
            ),
            &[("the input", x)],
            "`shape` must equal the input's last dims",
        ));
    }
    let mut inputs = vec![x];
    if affine {
        inputs.push(c.param("weight", &shape, Init::Const(1.0))?);
        inputs.push(c.param("bias", &shape, Init::Const(0.0))?);
    }
    let op = Op::new("layer_norm")
        .with("shape", Attr::Ints(shape))
        .with("eps", Attr::Float(eps))
        .with("affine", Attr::Bool(affine));
    let flops = numel(&t).scale(5);
    c.emit1(op, &inputs, t, flops)
}
