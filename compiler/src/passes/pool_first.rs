//! Pooling before a pointwise convolution: an unpadded average pool of a
//! 1×1 convolution's result equals the 1×1 convolution of the pooled
//! input. Both are linear, the convolution mixes channels per pixel and
//! the pool averages pixels per channel, so they commute; the bias
//! commutes too, because every window of an unpadded pool averages only
//! real pixels. Pooling first runs the convolution on the pooled map:
//! DenseNet's transitions (`conv 1×1 → avg_pool 2×2`) do a quarter of
//! their multiply-adds, and the pool reads the thinner input.
//!
//! A pair is rewritten when the `conv2d` is an inference node with a
//! `[OC, C/g, 1, 1]` weight, stride 1, no padding and dilation 1, whose
//! result is read only by an `avg_pool2d` with no padding (and no
//! `divisor_override`), and is not a model output. The pool moves in front
//! of the convolution, keeping its attributes, and the convolution takes
//! over the pool's result value, so the readers are unchanged. Results
//! differ from the original order only by float rounding.

use super::rewrite::{self, new_node};
use crate::ir::{Attr, Dim, Graph, Node, TensorType};
use std::collections::HashMap;

/// Moves every eligible average pool in front of its 1×1 convolution;
/// returns how many were moved.
pub fn run(g: &mut Graph) -> usize {
    let readers = rewrite::readers(g);
    // conv position -> pool position
    let mut pairs: HashMap<usize, usize> = HashMap::new();
    for (i, conv) in g.nodes.iter().enumerate() {
        if !is_pointwise_conv(g, conv) {
            continue;
        }
        let c = conv.outputs[0];
        let Some([r]) = readers.get(&c).map(Vec::as_slice) else {
            continue;
        };
        let pool = &g.nodes[*r];
        let movable = pool.op.name == "avg_pool2d"
            && !pool.train_only
            && pool.inputs[..] == [c]
            && pool.outputs.len() == 1
            && !rewrite::is_output(g, c)
            && ints(pool, "pad").is_some_and(|p| p.iter().all(|&x| x == 0))
            && pool.op.attr("divisor_override").is_none()
            && pool.op.attr("layout").is_none();
        if movable {
            pairs.insert(i, *r);
        }
    }
    if pairs.is_empty() {
        return 0;
    }
    let old = std::mem::take(&mut g.nodes);
    let moved: std::collections::HashSet<usize> = pairs.values().copied().collect();
    let mut nodes = Vec::with_capacity(old.len());
    for (i, node) in old.iter().enumerate() {
        if moved.contains(&i) {
            continue;
        }
        match pairs.get(&i) {
            Some(&p) => pool_then_conv(g, node, &old[p], &mut nodes),
            None => nodes.push(node.clone()),
        }
    }
    rewrite::set_nodes(g, nodes);
    pairs.len()
}

/// Whether `conv` is an inference `conv2d` with a 1×1 kernel, stride 1,
/// no padding and dilation 1, in the default (NCHW) layout.
fn is_pointwise_conv(g: &Graph, conv: &Node) -> bool {
    let ones = |key: &str, want: i64| ints(conv, key).is_some_and(|v| v.iter().all(|&x| x == want));
    let kernel_1x1 = conv.inputs.get(1).is_some_and(|w| {
        let s = &g.ty(*w).shape;
        s.len() == 4 && s[2].as_known() == Some(1) && s[3].as_known() == Some(1)
    });
    conv.op.name == "conv2d"
        && !conv.train_only
        && conv.outputs.len() == 1
        && conv.op.attr("layout").is_none()
        && kernel_1x1
        && ones("stride", 1)
        && ones("pad", 0)
        && ones("dilation", 1)
}

fn ints<'n>(node: &'n Node, key: &str) -> Option<&'n [i64]> {
    match node.op.attr(key) {
        Some(Attr::Ints(v)) => Some(v),
        _ => None,
    }
}

/// Appends the pool of the convolution's input and the convolution of
/// that, which writes the pool's old result.
fn pool_then_conv(g: &mut Graph, conv: &Node, pool: &Node, nodes: &mut Vec<Node>) {
    let x = conv.inputs[0];
    let (x_ty, out_ty) = (g.ty(x).clone(), g.ty(pool.outputs[0]).clone());
    // [N, C_in, OH, OW]: the input's batch and channels, the pool's
    // output size.
    let shape: Vec<Dim> = vec![
        x_ty.shape[0].clone(),
        x_ty.shape[1].clone(),
        out_ty.shape[2].clone(),
        out_ty.shape[3].clone(),
    ];
    let pooled_ty = TensorType::new(x_ty.dtype, shape);
    // FLOPs scale with what each node now sees: the pool the input's
    // channels instead of the convolution's, the convolution the pooled
    // pixels instead of all of them.
    let conv_out = g.ty(conv.outputs[0]).shape.clone();
    let pool_flops = rescale(&pool.flops, &x_ty.shape[1], &conv_out[1]);
    let mut pooled = new_node(g, pool.op.clone(), vec![x], pooled_ty, pool_flops, pool);
    pooled.path = pool.path.clone();
    let v = pooled.outputs[0];
    nodes.push(pooled);
    let mut moved = conv.clone();
    moved.inputs[0] = v;
    moved.outputs = vec![pool.outputs[0]];
    let pixels = |s: &[Dim]| s[2].mul(&s[3]).unwrap_or_else(|| Dim::known(0));
    moved.flops = rescale(&conv.flops, &pixels(&out_ty.shape), &pixels(&conv_out));
    nodes.push(moved);
}

/// `flops · num / den` when `num` and `den` are known and the division is
/// exact, else `flops` unchanged (the count only labels `netc time`).
fn rescale(flops: &Dim, num: &Dim, den: &Dim) -> Dim {
    match (num.as_known(), den.as_known()) {
        (Some(a), Some(b)) if b > 0 => flops.scale(a).div_exact(b).unwrap_or_else(|| flops.clone()),
        _ => flops.clone(),
    }
}
