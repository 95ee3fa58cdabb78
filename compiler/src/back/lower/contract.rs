//! Lowering of contractions: one GEMM step, then the epilogue (bias and
//! the nodes fused into the contraction) as one in-place row kernel over
//! the GEMM's result.

use super::{pointwise, LowerCx};
use crate::back::elementwise::{Bcast, Binary, Chain, Domain, Operand, Step as ChainStep};
use crate::back::BackError;
use crate::ir::Node;
use netc_runtime::gemm::Strides;
use netc_runtime::plan::{Step, Work};

/// Lowers `linear`; `None` for other ops.
pub fn try_lower(cx: &mut LowerCx, node: &Node) -> Option<Result<(), BackError>> {
    (node.op.name == "linear").then(|| linear(cx, node))
}

/// `y = x·Wᵀ (+ b)`: one GEMM reading W transposed through its strides,
/// then the bias and any fused followers as one per-row kernel.
fn linear(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let w_shape = cx.shape(node.inputs[1])?;
    let (n, k) = (w_shape[0], w_shape[1]);
    let m = cx.numel(node.inputs[0])? / k.max(1);
    let followers = pointwise::followers(cx.g, node);
    let last = followers.last().map_or(node.outputs[0], |f| f.outputs[0]);
    let out = cx.output(last)?;
    let (x, w) = (cx.buf(node.inputs[0])?, cx.buf(node.inputs[1])?);
    cx.push(Step {
        work: Work::Gemm {
            m,
            n,
            k,
            sa: Strides::row_major(k),
            sb: Strides::transposed(k),
            ldc: n,
        },
        inputs: vec![x, w],
        output: out,
        extents: vec![m * k, n * k, m * n],
    });
    let domain = Domain::Rows {
        channels: 1,
        inner: n as u64,
    };
    let mut chain = Chain {
        inputs: vec![Bcast::Full],
        domain,
        steps: Vec::new(),
    };
    let mut values = Vec::new();
    if let Some(&b) = node.inputs.get(2) {
        chain.inputs.push(Bcast::PerColumn);
        values.push(b);
        chain.steps.push(ChainStep::Binary {
            op: Binary::Add,
            rhs: Operand::Input(1),
            swap: false,
        });
    }
    pointwise::extend(
        cx.g,
        node,
        &followers,
        Some(domain),
        &mut chain,
        &mut values,
    )?;
    if chain.steps.is_empty() {
        return Ok(());
    }
    let mut inputs = vec![out];
    for v in values {
        inputs.push(cx.buf(v)?);
    }
    cx.kernel(&chain, inputs, out, m * n)
}
