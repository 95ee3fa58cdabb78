//! The row layout of the bag layers' weights inside the trainer.
//!
//! `sparse_linear`'s weight is `[out, V]` and `bag_conv1d`'s `[C, V, k]`
//! in a model file and a checkpoint (`nn.Linear`'s and `nn.Conv1d`'s
//! layouts). A training step reads a few of the V rows of the transpose
//! (`[V, out]`, `[V, k, C]`: one contiguous row per input id), and only
//! those rows get a non-zero gradient. So the trainer stores these
//! weights transposed ([`rows_layout`] rewrites its training and
//! evaluation graphs to read them so, with the attribute `weight_rows`
//! on the forward ops and their weight gradients), transposes once when
//! weights come in or go out ([`RowParam::to_rows`],
//! [`RowParam::to_file`]), and declares the rows to the optimizer, whose
//! `lazy` option then updates only the rows a step touched.
//!
//! A weight qualifies when every use is the weight operand of one of
//! these ops and its gradient is the output of one weight-gradient op;
//! a weight shared by two layers (shared towers) keeps the file layout and
//! the dense gradient.

use crate::grad::TrainingGraph;
use crate::ir::{Attr, Dim, Graph, ValueId};
use netc_runtime::Tensor;

/// A parameter the trainer stores in the row layout.
#[derive(Clone, Debug, PartialEq)]
pub struct RowParam {
    /// The parameter index in the graph.
    pub param: usize,
    /// The file layout viewed as a matrix `[rows, cols]` (`[out, V]`,
    /// `[C, V·k]`); the stored layout is its transpose.
    pub rows: usize,
    /// See `rows`.
    pub cols: usize,
    /// Elements per input id in the stored layout (`out`, `k · C`).
    pub row_len: usize,
    /// The stored tensor's shape (`[V, out]`, `[V, k, C]`).
    pub stored: Vec<usize>,
}

impl RowParam {
    /// The stored (row-layout) copy of `t`, given in the file layout.
    pub fn to_rows(&self, t: &Tensor) -> Option<Tensor> {
        let data = transpose(t.as_f32()?, self.rows, self.cols);
        Tensor::from_f32(&self.stored, data)
    }

    /// The file-layout copy of `t`, stored in the row layout, with the
    /// file shape `shape`.
    pub fn to_file(&self, t: &Tensor, shape: &[usize]) -> Option<Tensor> {
        let data = transpose(t.as_f32()?, self.cols, self.rows);
        Tensor::from_f32(shape, data)
    }
}

/// `x` (`[rows, cols]`, row-major) transposed to `[cols, rows]`.
pub fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    // Blocks of columns keep the written rows in cache.
    const BLOCK: usize = 64;
    for c0 in (0..cols).step_by(BLOCK) {
        let c1 = (c0 + BLOCK).min(cols);
        for r in 0..rows {
            for c in c0..c1 {
                out[c * rows + r] = x[r * cols + c];
            }
        }
    }
    out
}

/// The forward ops whose weight (operand 1) can be stored in rows, with
/// their weight gradient op.
const LAYERS: [(&str, &str); 2] = [
    ("sparse_linear", "sparse_linear_grad_weight"),
    ("bag_conv1d", "bag_conv1d_grad_weight"),
];

/// Rewrites `train` and `eval` (built from the same model) to read the
/// qualifying bag-layer weights in the row layout, and returns them.
pub fn rows_layout(train: &mut TrainingGraph, eval: &mut TrainingGraph) -> Vec<RowParam> {
    let mut out = Vec::new();
    for pi in 0..train.graph.params.len() {
        let Some(rp) = candidate(&train.graph, pi) else {
            continue;
        };
        if candidate(&eval.graph, pi).as_ref() != Some(&rp) {
            continue;
        }
        let grad = train
            .grads
            .iter()
            .find(|(p, _)| *p == pi)
            .map(|(_, oi)| train.graph.outputs[*oi].1);
        let grad_node = match grad {
            Some(g) => match gradient_node(&train.graph, g) {
                Some(n) => Some(n),
                None => continue,
            },
            None => None,
        };
        let stored: Vec<Dim> = rp.stored.iter().map(|&d| Dim::known(d as i64)).collect();
        for g in [&mut train.graph, &mut eval.graph] {
            set_rows(g, pi, &stored);
        }
        if let (Some(n), Some(g)) = (grad_node, grad) {
            let node = &mut train.graph.nodes[n];
            node.op.attrs.push(("weight_rows", Attr::Bool(true)));
            train.graph.values[g.0 as usize].ty.shape = stored.clone();
        }
        out.push(rp);
    }
    out
}

/// Parameter `pi` of `g` in the row layout, if every use of it is the
/// weight of a bag layer (and there is at least one).
fn candidate(g: &Graph, pi: usize) -> Option<RowParam> {
    let p = &g.params[pi];
    if p.buffer || p.ty.sparse || p.ty.dtype != netc_runtime::DType::F32 {
        return None;
    }
    let shape: Vec<usize> =
        p.ty.known_shape()?
            .iter()
            .map(|&d| usize::try_from(d).ok())
            .collect::<Option<_>>()?;
    let mut kind = None;
    for n in &g.nodes {
        for (k, v) in n.inputs.iter().enumerate() {
            if *v != p.value {
                continue;
            }
            let ok = k == 1 && LAYERS.iter().any(|(f, _)| *f == n.op.name);
            if !ok || kind.is_some_and(|o| o != n.op.name) {
                return None;
            }
            kind = Some(n.op.name);
        }
    }
    match (kind?, &shape[..]) {
        ("sparse_linear", &[out, v]) => Some(RowParam {
            param: pi,
            rows: out,
            cols: v,
            row_len: out,
            stored: vec![v, out],
        }),
        ("bag_conv1d", &[c, v, k]) => Some(RowParam {
            param: pi,
            rows: c,
            cols: v * k,
            row_len: k * c,
            stored: vec![v, k, c],
        }),
        _ => None,
    }
}

/// The node that computes gradient `g`, if it is a bag layer's weight
/// gradient used by nothing but the graph's outputs.
fn gradient_node(g: &Graph, grad: ValueId) -> Option<usize> {
    let n = g.nodes.iter().position(|n| n.outputs.contains(&grad))?;
    let used = g.nodes.iter().any(|m| m.inputs.contains(&grad));
    let is_grad = LAYERS.iter().any(|(_, b)| *b == g.nodes[n].op.name);
    (is_grad && !used).then_some(n)
}

/// Gives parameter `pi` of `g` the stored shape and marks its layers.
fn set_rows(g: &mut Graph, pi: usize, stored: &[Dim]) {
    let v = g.params[pi].value;
    g.params[pi].ty.shape = stored.to_vec();
    g.values[v.0 as usize].ty.shape = stored.to_vec();
    for n in g.nodes.iter_mut().filter(|n| n.inputs.get(1) == Some(&v)) {
        n.op.attrs.push(("weight_rows", Attr::Bool(true)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposes_round_trip() {
        let x: Vec<f32> = (0..3 * 130).map(|v| v as f32).collect();
        let t = transpose(&x, 3, 130);
        assert_eq!(t[5 * 3 + 2], x[2 * 130 + 5]);
        assert_eq!(transpose(&t, 130, 3), x);
    }
}
