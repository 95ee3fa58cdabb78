//! The train-mode rewrite: ops whose training semantics differ from
//! inference are replaced, and the loss nodes become ordinary nodes.
//!
//! - `batch_norm(x, w, b, running_mean, running_var[, num_batches_tracked])`
//!   becomes `batch_norm_train(x, w, b, running_mean, running_var)` with
//!   results `y, mean, invstd, new_running_mean, new_running_var`; the new
//!   running statistics become state outputs. Without an affine transform,
//!   `w` and `b` are constant ones and zeros.
//! - `dropout(x) {p}` becomes `dropout_train(x, seed) {p, key}`, whose
//!   mask is a counter-based hash of the step seed, the key `dropout{k}`
//!   (the k-th dropout of the model) and the element index; with `p = 0`
//!   (the SD UNet's) it keeps every element, so it becomes the identity
//!   (a reshape to its own shape) and costs nothing in either direction.

use super::{GradError, Moded, SEED_INPUT};
use crate::ir::{Attr, ConstId, ConstTensor, Dim, Graph, Node, Op, TensorType, ValueDef, ValueId};
use crate::passes::rewrite::set_nodes;
use netc_runtime::DType;

/// Rewrites `g` in place into training semantics.
pub(crate) fn rewrite(g: &mut Graph) -> Result<Moded, GradError> {
    let span = g.values[0].span;
    let seed = g.add_value(
        TensorType::known(DType::F32, &[2]),
        ValueDef::Input(SEED_INPUT.to_string()),
        span,
    );
    let mut moded = Moded {
        state: Vec::new(),
        seed,
        uses_seed: false,
    };
    let mut dropouts = 0;
    let nodes = std::mem::take(&mut g.nodes);
    let mut out = Vec::with_capacity(nodes.len());
    for mut node in nodes {
        node.train_only = false;
        node.fused_into = None;
        match node.op.name {
            "batch_norm" => out.push(batch_norm(g, node, &mut moded)?),
            "dropout" => {
                let p = match node.op.attr("p") {
                    Some(Attr::Float(p)) => *p,
                    _ => 0.5,
                };
                dropouts += 1;
                if p == 0.0 {
                    // Keeps every element unscaled: the identity, as a
                    // reshape to its own shape (an alias, no kernel in
                    // either direction).
                    let shape = g.ty(node.outputs[0]).shape.clone();
                    node.op = Op::new("reshape").with("shape", Attr::Dims(shape));
                    out.push(node);
                    continue;
                }
                node.op = Op::new("dropout_train")
                    .with("p", Attr::Float(p))
                    .with("key", Attr::Str(format!("dropout{}", dropouts - 1)));
                node.inputs.push(seed);
                moded.uses_seed = true;
                out.push(node);
            }
            _ => out.push(node),
        }
    }
    set_nodes(g, out);
    Ok(moded)
}

fn batch_norm(g: &mut Graph, mut node: Node, moded: &mut Moded) -> Result<Node, GradError> {
    let bad = || {
        GradError::new(format!(
            "`batch_norm` at {} has {} operands, expected x, weight, bias, running_mean, running_var",
            node.path,
            node.inputs.len()
        ))
    };
    let affine = !matches!(node.op.attr("affine"), Some(Attr::Bool(false)));
    let (x, w, b, rm, rv) = match (affine, &node.inputs[..]) {
        (true, [x, w, b, rm, rv, ..]) => (*x, *w, *b, *rm, *rv),
        (false, [x, rm, rv, ..]) => {
            let c = g.ty(*rm).shape[0].as_known().ok_or_else(|| {
                GradError::new(format!(
                    "`batch_norm` at {}: unknown channel count",
                    node.path
                ))
            })?;
            let ones = constant(g, "ones", c, 1.0);
            let zeros = constant(g, "zeros", c, 0.0);
            (*x, ones, zeros, *rm, *rv)
        }
        _ => return Err(bad()),
    };
    let eps = node.op.attr("eps").cloned().unwrap_or(Attr::Float(1e-5));
    let momentum = node
        .op
        .attr("momentum")
        .cloned()
        .unwrap_or(Attr::Float(0.1));
    let channel = g.ty(rm).clone();
    let span = node.span;
    let fresh = |g: &mut Graph| {
        g.add_value(
            channel.clone(),
            ValueDef::Node(crate::ir::NodeId(u32::MAX), 0),
            span,
        )
    };
    let mean = fresh(g);
    let invstd = fresh(g);
    let new_rm = fresh(g);
    let new_rv = fresh(g);
    for (buffer, new) in [(rm, new_rm), (rv, new_rv)] {
        let pi = g
            .params
            .iter()
            .position(|p| p.value == buffer)
            .ok_or_else(|| {
                GradError::new(format!(
                    "`batch_norm` at {}: the running statistics must be buffers",
                    node.path
                ))
            })?;
        moded.state.push((pi, new));
    }
    node.op = Op::new("batch_norm_train")
        .with("eps", eps)
        .with("momentum", momentum);
    node.inputs = vec![x, w, b, rm, rv];
    node.outputs = vec![node.outputs[0], mean, invstd, new_rm, new_rv];
    // Statistics (2 flops per element) and normalisation (2 more).
    let y = g.ty(node.outputs[0]);
    node.flops = y.numel().unwrap_or_else(|| Dim::known(0)).scale(4);
    Ok(node)
}

fn constant(g: &mut Graph, what: &str, c: i64, value: f64) -> ValueId {
    let id = ConstId(g.consts.len() as u32);
    let span = g.values[0].span;
    let v = g.add_value(
        TensorType::known(DType::F32, &[c]),
        ValueDef::Const(id),
        span,
    );
    g.consts.push(ConstTensor {
        desc: format!("{what}({c})"),
        data: vec![value; c as usize],
        value: v,
    });
    v
}
