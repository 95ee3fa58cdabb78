//! Backward rules of the layers: linear and convolutions (gradient
//! contractions), training-mode batch norm, group and layer norm, dropout,
//! pools, attention, nearest resizing and reductions.

use super::{only, GradCx, GradError, Rule};
use crate::ir::{Attr, Dim, Node, Op, TensorType, ValueId};
use crate::passes::rewrite::per_element;

/// The family's rules.
pub const RULES: &[(&str, Rule)] = &[
    ("linear", linear),
    ("conv1d", |cx, n, d, needs| conv(cx, n, d, needs, "conv1d")),
    ("conv2d", |cx, n, d, needs| conv(cx, n, d, needs, "conv2d")),
    ("batch_norm_train", batch_norm_train),
    ("group_norm", |cx, n, d, _| {
        sample_norm(cx, n, d, "group_norm_grad")
    }),
    ("layer_norm", |cx, n, d, _| {
        sample_norm(cx, n, d, "layer_norm_grad")
    }),
    ("dropout_train", dropout_train),
    ("max_pool2d", max_pool2d),
    ("avg_pool2d", |cx, n, d, _| {
        pool_with_shape(cx, n, d, "avg_pool2d_grad", true)
    }),
    ("adaptive_avg_pool2d", |cx, n, d, _| {
        pool_with_shape(cx, n, d, "adaptive_avg_pool2d_grad", false)
    }),
    ("global_avg_pool", global_avg_pool),
    ("attention", attention),
    ("resize_nearest", resize_nearest),
    ("upsample_nearest", resize_nearest),
    ("sum", |cx, n, d, _| reduce(cx, n, d, false)),
    ("mean", |cx, n, d, _| reduce(cx, n, d, true)),
];

type Grads = Result<Vec<Option<ValueId>>, GradError>;

/// `y = x wᵀ + b`: `dx = dy w`, `dw = dyᵀ x` (summed over every leading
/// position), `db = Σ dy`.
fn linear(cx: &mut GradCx, n: &Node, d: &[Option<ValueId>], needs: &[bool]) -> Grads {
    let dy = only(cx, d)?;
    let (x, w) = (n.inputs[0], n.inputs[1]);
    let mut out = vec![None; n.inputs.len()];
    if needs[0] {
        out[0] = Some(cx.emit1(
            Op::new("linear_grad_input"),
            vec![dy, w],
            cx.ty(x),
            n.flops.clone(),
        ));
    }
    if needs[1] {
        out[1] = Some(cx.emit1(
            Op::new("linear_grad_weight"),
            vec![dy, x],
            cx.ty(w),
            n.flops.clone(),
        ));
    }
    if n.inputs.len() > 2 && needs[2] {
        let rank = cx.ty(dy).rank();
        out[2] = Some(cx.sum(dy, &(0..rank - 1).collect::<Vec<_>>(), false));
    }
    Ok(out)
}

/// Convolutions: `<op>_grad_input(dy, w)` and `<op>_grad_weight(dy, x)`
/// with the forward's attributes, plus the input shape or the kernel size;
/// the bias gradient sums `dy` over every dim but the channels.
fn conv(cx: &mut GradCx, n: &Node, d: &[Option<ValueId>], needs: &[bool], op: &str) -> Grads {
    let dy = only(cx, d)?;
    let (x, w) = (n.inputs[0], n.inputs[1]);
    let (tx, tw) = (cx.ty(x), cx.ty(w));
    let mut out = vec![None; n.inputs.len()];
    if needs[0] {
        let (name, _) = grad_names(op);
        let mut g = Op::new(name);
        g.attrs = n.op.attrs.clone();
        g = g.with("input_shape", Attr::Dims(tx.shape.clone()));
        out[0] = Some(cx.emit1(g, vec![dy, w], tx, n.flops.clone()));
    }
    if needs[1] {
        let (_, name) = grad_names(op);
        let kernel = tw.shape[2..]
            .iter()
            .map(|k| {
                k.as_known()
                    .ok_or_else(|| cx.error("a symbolic kernel size"))
            })
            .collect::<Result<Vec<i64>, _>>()?;
        let mut g = Op::new(name);
        g.attrs = n.op.attrs.clone();
        g = g.with("kernel", Attr::Ints(kernel));
        out[1] = Some(cx.emit1(g, vec![dy, x], tw, n.flops.clone()));
    }
    if n.inputs.len() > 2 && needs[2] {
        let rank = cx.ty(dy).rank();
        let dims: Vec<usize> = (0..rank).filter(|&i| i != 1).collect();
        out[2] = Some(cx.sum(dy, &dims, false));
    }
    Ok(out)
}

fn grad_names(op: &str) -> (&'static str, &'static str) {
    match op {
        "conv1d" => ("conv1d_grad_input", "conv1d_grad_weight"),
        _ => ("conv2d_grad_input", "conv2d_grad_weight"),
    }
}

/// `batch_norm_grad(dy, x, mean, invstd, weight) -> dx, dweight, dbias`.
fn batch_norm_train(cx: &mut GradCx, n: &Node, d: &[Option<ValueId>], _: &[bool]) -> Grads {
    let dy = only(cx, d)?;
    let (x, w) = (n.inputs[0], n.inputs[1]);
    let (mean, invstd) = (n.outputs[1], n.outputs[2]);
    let types = vec![cx.ty(x), cx.ty(w), cx.ty(n.inputs[2])];
    let flops = per_element(&cx.ty(x)).scale(6);
    let r = cx.emit(
        Op::new("batch_norm_grad"),
        vec![dy, x, mean, invstd, w],
        types,
        flops,
    );
    Ok(vec![Some(r[0]), Some(r[1]), Some(r[2]), None, None])
}

/// `group_norm` and `layer_norm`, whose statistics are each sample's own
/// (no running state): `*_norm_grad(dy, x[, weight]) -> dx[, dweight,
/// dbias]` with the forward's attributes; the statistics are recomputed
/// from `x`.
fn sample_norm(cx: &mut GradCx, n: &Node, d: &[Option<ValueId>], name: &'static str) -> Grads {
    let dy = only(cx, d)?;
    let mut inputs = vec![dy, n.inputs[0]];
    let mut types = vec![cx.ty(n.inputs[0])];
    if let [_, w, b] = n.inputs[..] {
        inputs.push(w);
        types.extend([cx.ty(w), cx.ty(b)]);
    }
    let mut op = Op::new(name);
    op.attrs = n.op.attrs.clone();
    let flops = per_element(&cx.ty(n.inputs[0])).scale(8);
    Ok(cx
        .emit(op, inputs, types, flops)
        .into_iter()
        .map(Some)
        .collect())
}

/// Dropout is linear with a fixed mask: its backward is the same op.
fn dropout_train(cx: &mut GradCx, n: &Node, d: &[Option<ValueId>], _: &[bool]) -> Grads {
    let dy = only(cx, d)?;
    let dx = cx.pointwise(n.op.clone(), vec![dy, n.inputs[1]], dy);
    Ok(vec![Some(dx), None])
}

fn max_pool2d(cx: &mut GradCx, n: &Node, d: &[Option<ValueId>], _: &[bool]) -> Grads {
    let dy = only(cx, d)?;
    let x = n.inputs[0];
    let mut op = Op::new("max_pool2d_grad");
    op.attrs = n.op.attrs.clone();
    let flops = per_element(&cx.ty(x));
    Ok(vec![Some(cx.emit1(op, vec![dy, x], cx.ty(x), flops))])
}

/// Pools whose gradient needs only `dy` and the input shape (plus the
/// forward's attributes when `keep_attrs`).
fn pool_with_shape(
    cx: &mut GradCx,
    n: &Node,
    d: &[Option<ValueId>],
    name: &'static str,
    keep_attrs: bool,
) -> Grads {
    let dy = only(cx, d)?;
    let tx = cx.ty(n.inputs[0]);
    let mut op = Op::new(name);
    if keep_attrs {
        op.attrs = n.op.attrs.clone();
    }
    let op = op.with("input_shape", Attr::Dims(tx.shape.clone()));
    let flops = per_element(&tx);
    Ok(vec![Some(cx.emit1(op, vec![dy], tx, flops))])
}

/// Attention: `attention_grad(dout, q, k, v) -> dq, dk, dv` with the
/// forward's `heads` and `scale` (the probabilities recomputed).
fn attention(cx: &mut GradCx, n: &Node, d: &[Option<ValueId>], _: &[bool]) -> Grads {
    let dy = only(cx, d)?;
    let [q, k, v] = n.inputs[..] else {
        return Err(cx.error("expects q, k and v"));
    };
    let mut op = Op::new("attention_grad");
    op.attrs = n.op.attrs.clone();
    let types = vec![cx.ty(q), cx.ty(k), cx.ty(v)];
    let flops = n.flops.scale(2);
    let r = cx.emit(op, vec![dy, q, k, v], types, flops);
    Ok(r.into_iter().map(Some).collect())
}

/// A nearest resize (or upsampling): `resize_nearest_grad(dy)` adds each
/// element of `dy` into the input element it was read from (the input's
/// shape is the result's).
fn resize_nearest(cx: &mut GradCx, n: &Node, d: &[Option<ValueId>], _: &[bool]) -> Grads {
    let dy = only(cx, d)?;
    let flops = per_element(&cx.ty(dy));
    let tx = cx.ty(n.inputs[0]);
    Ok(vec![Some(cx.emit1(
        Op::new("resize_nearest_grad"),
        vec![dy],
        tx,
        flops,
    ))])
}

/// `[N, C, spatial...] -> [N, C]`: every position gets `dy / positions`.
fn global_avg_pool(cx: &mut GradCx, n: &Node, d: &[Option<ValueId>], _: &[bool]) -> Grads {
    let dy = only(cx, d)?;
    let tx = cx.ty(n.inputs[0]);
    let positions = spatial_count(cx, &tx, 2..tx.rank())?;
    let mut kept = tx.shape[..2].to_vec();
    kept.resize(tx.rank(), Dim::known(1));
    let r = cx.reshape(dy, kept);
    let e = cx.expand(r, tx.shape.clone());
    Ok(vec![Some(cx.scale(e, 1.0 / positions as f64))])
}

/// `sum`/`mean` over `dims`: the gradient is broadcast back over them.
fn reduce(cx: &mut GradCx, n: &Node, d: &[Option<ValueId>], mean: bool) -> Grads {
    let dy = only(cx, d)?;
    let tx: TensorType = cx.ty(n.inputs[0]);
    let dims: Vec<usize> = match n.op.attr("dims") {
        Some(Attr::Ints(v)) => v.iter().map(|&a| a as usize).collect(),
        _ => (0..tx.rank()).collect(),
    };
    let kept: Vec<Dim> = tx
        .shape
        .iter()
        .enumerate()
        .map(|(i, s)| {
            if dims.contains(&i) {
                Dim::known(1)
            } else {
                s.clone()
            }
        })
        .collect();
    let r = cx.reshape(dy, kept);
    let e = cx.expand(r, tx.shape.clone());
    if !mean {
        return Ok(vec![Some(e)]);
    }
    let count = spatial_count(cx, &tx, dims.into_iter())?;
    Ok(vec![Some(cx.scale(e, 1.0 / count as f64))])
}

/// The product of the (known) sizes of `dims`.
fn spatial_count(
    cx: &GradCx,
    t: &TensorType,
    dims: impl Iterator<Item = usize>,
) -> Result<i64, GradError> {
    dims.map(|i| {
        t.shape[i].as_known().ok_or_else(|| {
            cx.error("averaging over a symbolic size (the batch) is not differentiable yet")
        })
    })
    .product()
}
