//! Lowering of inference batch norms (`batch_norm` with running
//! statistics, `frozen_batch_norm`).
//!
//! The per-channel `scale = γ / sqrt(var + eps)` and
//! `shift = β − mean · scale` depend on parameters only, so two small
//! elementwise kernels compute them into the persistent region as
//! **prepare steps** (run once per weight change; [`persistent_len`] sizes
//! that region before lowering). The run step is one rows-domain kernel
//! `y = x · scale[c] + shift[c]` followed by the nodes fused into the norm
//! (the ReLU after each DenseNet norm), computed in registers:
//!
//! - channels first `[N, C, ...]`: rows of the spatial size, `PerChannel`
//!   operands;
//! - channels last (`layout = "nhwc"`, `[N, H, W, C]`) and `[N, C]`: rows
//!   of `C`, `PerColumn` operands.
//!
//! A channels-last norm whose input is a `concat` on the channel axis is
//! lowered with it when the fusion pass made the concat its group's head
//! ([`concat_norm`]): one kernel per concat input, over rows of that
//! input's channels, with the matching slice of `scale` and `shift`,
//! storing each row into its columns of the result. The concatenation is
//! never stored: DenseNet saves a write and a read of every block's
//! growing feature map per layer. Such a group fused into the 1×1
//! convolution that reads it (a prologue, see the fusion pass) is folded
//! here ([`prologue`]) and gathered by the convolution's GEMM, or stored
//! in the scratch region for a GEMM that cannot gather
//! ([`concat_norm_scratch`]).

use super::{align, pointwise, LowerCx};
use crate::back::elementwise::{Bcast, Binary, Chain, Domain, Operand, OutStrided, Step, Unary};
use crate::back::BackError;
use crate::ir::{Attr, Node, ValueId};
use netc_runtime::plan::{Buf, Step as PlanStep, Work};

/// Lowers `batch_norm` and `frozen_batch_norm`; `None` for other ops.
pub fn try_lower(cx: &mut LowerCx, node: &Node) -> Option<Result<(), BackError>> {
    is_norm(node).then(|| batch_norm(cx, node))
}

fn is_norm(node: &Node) -> bool {
    matches!(node.op.name, "batch_norm" | "frozen_batch_norm")
}

/// The operands of a batch norm.
struct Operands {
    x: ValueId,
    weight: Option<ValueId>,
    bias: Option<ValueId>,
    mean: ValueId,
    var: ValueId,
}

fn operands(node: &Node) -> Result<Operands, BackError> {
    let affine = node.op.name == "frozen_batch_norm"
        || !matches!(node.op.attr("affine"), Some(Attr::Bool(false)));
    let bad = || {
        BackError(format!(
            "`{}` at {} has {} operands",
            node.op.name,
            node.path,
            node.inputs.len()
        ))
    };
    let at = |i: usize| node.inputs.get(i).copied().ok_or_else(bad);
    Ok(if affine {
        Operands {
            x: at(0)?,
            weight: Some(at(1)?),
            bias: Some(at(2)?),
            mean: at(3)?,
            var: at(4)?,
        }
    } else {
        Operands {
            x: at(0)?,
            weight: None,
            bias: None,
            mean: at(1)?,
            var: at(2)?,
        }
    })
}

/// Whether a node's data is channels-last (`layout = "nhwc"`).
pub fn channels_last(node: &Node) -> bool {
    matches!(node.op.attr("layout"), Some(Attr::Str(l)) if l == "nhwc")
}

/// Elements of the persistent region `node` needs beyond its graph values:
/// a batch norm's folded scale and shift.
pub fn persistent_len(cx: &LowerCx, node: &Node) -> Result<usize, BackError> {
    if !is_norm(node) {
        return Ok(0);
    }
    let c = cx.numel(operands(node)?.mean)?;
    Ok(2 * align(c))
}

/// A norm's folded `scale` and `shift` (computed by prepare steps) and its
/// channel count, after checking its input has those channels.
struct Folded {
    x: ValueId,
    shape: Vec<usize>,
    channels: usize,
    last: bool,
    scale: Buf,
    shift: Buf,
}

fn folded(cx: &mut LowerCx, node: &Node) -> Result<Folded, BackError> {
    let ops = operands(node)?;
    let shape = cx.shape(ops.x)?;
    let c = cx.numel(ops.mean)?;
    let last = channels_last(node) || shape.len() == 2;
    let channel_dim = if last { shape.len() - 1 } else { 1 };
    if shape.get(channel_dim) != Some(&c) {
        return Err(BackError(format!(
            "`{}` at {}: input {shape:?} does not have {c} channels in dim {channel_dim}",
            node.op.name, node.path
        )));
    }
    let eps = match node.op.attr("eps") {
        Some(Attr::Float(e)) => *e as f32,
        _ => 1e-5,
    };
    let (scale, shift) = (cx.persistent(c), cx.persistent(c));
    cx.preparing(|cx| fold(cx, &ops, eps, scale, shift, c))?;
    Ok(Folded {
        x: ops.x,
        shape,
        channels: c,
        last,
        scale,
        shift,
    })
}

/// `y = x · scale + shift` over the running value, `scale` and `shift`
/// read per column (channels last) or per channel.
fn affine(domain: Domain, per: Bcast) -> Chain {
    Chain {
        inputs: vec![Bcast::Full, per, per],
        domain,
        steps: vec![
            Step::Binary {
                op: Binary::Mul,
                rhs: Operand::Input(1),
                swap: false,
            },
            Step::Binary {
                op: Binary::Add,
                rhs: Operand::Input(2),
                swap: false,
            },
        ],
    }
}

fn batch_norm(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let Folded {
        x,
        shape,
        channels: c,
        last,
        scale,
        shift,
    } = folded(cx, node)?;
    let numel: usize = shape.iter().product();
    if numel == 0 {
        return Ok(());
    }
    let (domain, per) = if last {
        (
            Domain::Rows {
                channels: 1,
                inner: c as u64,
            },
            Bcast::PerColumn,
        )
    } else {
        (
            Domain::Rows {
                channels: c as u64,
                inner: (numel / shape[0] / c) as u64,
            },
            Bcast::PerChannel,
        )
    };
    let mut chain = affine(domain, per);
    let followers = cx.followers(node);
    let mut values = Vec::new();
    let d = pointwise::extend(
        cx.g,
        node,
        &followers,
        Some(domain),
        &mut chain,
        &mut values,
    )?;
    chain.domain = d.unwrap_or(domain);
    let result = followers.last().map_or(node.outputs[0], |f| f.outputs[0]);
    let out = cx.output(result)?;
    let mut inputs = vec![cx.buf(x)?, scale, shift];
    for v in values {
        inputs.push(cx.buf(v)?);
    }
    cx.kernel(&chain, inputs, out, numel)
}

/// Lowers a channels-last `concat` with its `followers` (a batch norm,
/// then unary ops; see the fusion pass): per concat input of `C_i`
/// channels at column `at`, one rows kernel over its `[rows, C_i]` with
/// `scale` and `shift` from `at` on, storing row `r` at `at + r·C` of the
/// result.
pub fn concat_norm(cx: &mut LowerCx, concat: &Node, followers: &[&Node]) -> Result<(), BackError> {
    let result = followers.last().map_or(concat.outputs[0], |n| n.outputs[0]);
    let out = cx.output(result)?;
    concat_norm_into(cx, concat, followers, out)
}

/// The prologue of a 1×1 convolution (`nodes`: a channels-last concat,
/// its batch norm and at most a `relu`; see the fusion pass) stored into
/// the scratch region, where the convolution (on a GEMM that cannot
/// gather through the norm) then reads it as its input.
pub fn concat_norm_scratch(cx: &mut LowerCx, nodes: &[&Node]) -> Result<(), BackError> {
    let (concat, followers) = split_prologue(nodes)?;
    let result = followers.last().map_or(concat.outputs[0], |n| n.outputs[0]);
    let out = cx.scratch(cx.numel(result)?);
    concat_norm_into(cx, concat, followers, out)?;
    cx.place(result, out);
    Ok(())
}

/// What a 1×1 convolution's implicit GEMM reads through its prologue
/// (`netc_runtime::gemm::conv::Normed`): the concatenated values in
/// channel order, the norm's folded scale and shift (prepare steps), the
/// channel count and whether a `relu` follows the norm.
pub struct Prologue {
    /// The concatenated values.
    pub parts: Vec<ValueId>,
    /// The folded per-channel scale.
    pub scale: Buf,
    /// The folded per-channel shift.
    pub shift: Buf,
    /// Channels of the concatenation.
    pub channels: usize,
    /// Whether a `relu` follows the norm.
    pub relu: bool,
}

/// The operands of a convolution's prologue `nodes` (a channels-last
/// concat, its batch norm, at most a `relu`), folding the norm.
pub fn prologue(cx: &mut LowerCx, nodes: &[&Node]) -> Result<Prologue, BackError> {
    let (concat, followers) = split_prologue(nodes)?;
    let f = folded(cx, followers[0])?;
    if !f.last || f.x != concat.outputs[0] || f.shape.len() != 4 {
        return Err(BackError(format!(
            "`concat` at {}: its norm does not read its [N, H, W, C] result",
            concat.path
        )));
    }
    Ok(Prologue {
        parts: concat.inputs.clone(),
        scale: f.scale,
        shift: f.shift,
        channels: f.channels,
        relu: followers.len() == 2,
    })
}

/// A prologue's concat and its followers (the norm, then at most a
/// `relu`), checked.
fn split_prologue<'n>(nodes: &'n [&'n Node]) -> Result<(&'n Node, &'n [&'n Node]), BackError> {
    match nodes {
        [concat, rest @ ..]
            if concat.op.name == "concat"
                && matches!(rest.first(), Some(n) if is_norm(n))
                && (rest.len() == 1 || rest.len() == 2 && rest[1].op.name == "relu") =>
        {
            Ok((concat, rest))
        }
        _ => Err(BackError(format!(
            "a convolution's prologue is not concat → batch norm [→ relu]: {:?}",
            nodes.iter().map(|n| n.op.name).collect::<Vec<_>>()
        ))),
    }
}

/// [`concat_norm`] into `out` (the group's result).
fn concat_norm_into(
    cx: &mut LowerCx,
    concat: &Node,
    followers: &[&Node],
    out: Buf,
) -> Result<(), BackError> {
    let bad = |why: String| {
        BackError(format!(
            "`concat` at {} fused with its batch norm: {why}",
            concat.path
        ))
    };
    let norm = followers[0];
    let f = folded(cx, norm)?;
    if !f.last || f.x != concat.outputs[0] || f.shape.len() != 4 {
        return Err(bad(format!(
            "the norm does not read the concat's [N, H, W, C] result ({:?})",
            f.shape
        )));
    }
    let c = f.channels;
    let Buf::Arena { offset, len } = out else {
        return Err(bad("its result is not an arena value".into()));
    };
    let slice = |b: Buf, at: usize| match b {
        Buf::Arena { offset, len } => Ok(Buf::Arena {
            offset: offset + at,
            len: len - at,
        }),
        other => Err(bad(format!("{other:?} cannot be sliced"))),
    };
    let mut at = 0;
    for &x in &concat.inputs {
        let xs = cx.shape(x)?;
        let width = xs.last().copied().unwrap_or(0);
        let rows: usize = xs[..xs.len().saturating_sub(1)].iter().product();
        if xs.len() != 4 || xs[..3] != f.shape[..3] || at + width > c {
            return Err(bad(format!(
                "input {xs:?} does not fit the result {:?} at channel {at}",
                f.shape
            )));
        }
        if width == 0 || rows == 0 {
            continue;
        }
        let domain = Domain::Rows {
            channels: 1,
            inner: width as u64,
        };
        let mut chain = affine(domain, Bcast::PerColumn);
        let mut values = Vec::new();
        pointwise::extend(
            cx.g,
            norm,
            &followers[1..],
            Some(domain),
            &mut chain,
            &mut values,
        )?;
        if !values.is_empty() {
            return Err(bad("a follower reads another tensor".into()));
        }
        let strided = OutStrided {
            chain: &chain,
            out_stride: c as u64,
        };
        let id = strided.compile(cx.jit)?;
        let kernel = cx.jit.code(id)?;
        let out_len = strided.out_len(rows as u64) as usize;
        cx.push(PlanStep {
            work: Work::Kernel {
                kernel,
                units: rows,
                grain: (4096 / width).max(1),
            },
            inputs: vec![cx.buf(x)?, slice(f.scale, at)?, slice(f.shift, at)?],
            output: Buf::Arena {
                offset: offset + at,
                len: len - at,
            },
            extents: vec![rows * width, width, width, out_len],
        });
        at += width;
    }
    if at != c {
        return Err(bad(format!("the inputs cover {at} of {c} channels")));
    }
    Ok(())
}

/// The prepare kernels: `scale = γ / sqrt(var + eps)` (or `1 / ...`
/// without affine terms), then `shift = β − mean · scale` (or
/// `−mean · scale`).
fn fold(
    cx: &mut LowerCx,
    ops: &Operands,
    eps: f32,
    scale: Buf,
    shift: Buf,
    c: usize,
) -> Result<(), BackError> {
    let bin = |op, rhs, swap| Step::Binary { op, rhs, swap };
    let mut chain = Chain {
        inputs: vec![Bcast::Full],
        domain: Domain::Flat,
        steps: vec![
            bin(Binary::Add, Operand::Const(eps), false),
            Step::Unary(Unary::Sqrt),
        ],
    };
    let mut inputs = vec![cx.buf(ops.var)?];
    match ops.weight {
        Some(w) => {
            chain.inputs.push(Bcast::Full);
            chain.steps.push(bin(Binary::Div, Operand::Input(1), true));
            inputs.push(cx.buf(w)?);
        }
        None => chain
            .steps
            .push(bin(Binary::Div, Operand::Const(1.0), true)),
    }
    cx.kernel(&chain, inputs, scale, c)?;
    let mut chain = Chain {
        inputs: vec![Bcast::Full, Bcast::Full],
        domain: Domain::Flat,
        steps: vec![bin(Binary::Mul, Operand::Input(1), false)],
    };
    let mut inputs = vec![cx.buf(ops.mean)?, scale];
    match ops.bias {
        Some(b) => {
            chain.inputs.push(Bcast::Full);
            chain.steps.push(bin(Binary::Sub, Operand::Input(2), true));
            inputs.push(cx.buf(b)?);
        }
        None => chain.steps.push(Step::Unary(Unary::Neg)),
    }
    cx.kernel(&chain, inputs, shift, c)
}

#[cfg(test)]
mod tests;
