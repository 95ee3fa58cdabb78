//! Lowering of contractions — `linear`, `matmul`, `conv1d`, `conv2d` — to
//! one runtime [`Work::Contraction`] step each: per item (an image, a batch
//! entry), an optional packing kernel (im2col into per-thread scratch),
//! one GEMM per group, and the epilogue (bias and the nodes fused into the
//! contraction) as one in-place row kernel over the item's rows of the
//! result, right after its GEMMs.
//!
//! The GEMM is the runtime's native one or the Cranelift register tile
//! ([`gemm_choice`]). A `linear` with at most
//! `netc_runtime::gemm::skinny::MAX_OUTPUTS` outputs and no fused
//! followers is a row step of the skinny-N kernel instead (under
//! `--gemm auto`); one with at most `netc_runtime::gemm::gemv::MAX_ROWS`
//! rows of input (batch 1) and a large weight runs the GEMV over its unpacked weight
//! ([`gemv_linear`]), and one of a training step (or its input gradient)
//! with at most `netc_runtime::gemm::thin::MAX_THIN` rows and a large
//! weight the thin product ([`thin_linear`]). The epilogue's iteration space is
//! [`epilogue_domain`], which the fusion pass also asks before fusing a
//! follower.

mod conv;
mod grad;
pub(crate) use grad::runs_channels_last;
mod prepack;

pub use prepack::persistent_len;

use super::{pointwise, LowerCx};
use crate::back::elementwise::{
    Bcast, Binary, Chain, Domain, Operand as ChainOperand, Step as ChainStep,
};
use crate::back::gemm_tile::TileKernel;
use crate::back::im2col::{Col2im, Im2col};
use crate::back::BackError;
use crate::ir::{Attr, Graph, Node, ValueId};
use crate::options::GemmChoice;
use netc_runtime::gemm::conv::ConvGeom;
use netc_runtime::gemm::packed::Prepacked;
use netc_runtime::gemm::skinny::{self, SkinnyLinear};
use netc_runtime::gemm::{gemv, thin};
use netc_runtime::gemm::{Gemm, Strides};
use netc_runtime::plan::{
    Buf, Contraction, Epilogue, Operand, Pack, Prologue, Rows, Step, Unpack, Work,
};
use std::sync::Arc;

/// Lowers `linear`, `matmul`, `conv1d` and `conv2d`; `None` for other ops.
pub fn try_lower(cx: &mut LowerCx, node: &Node) -> Option<Result<(), BackError>> {
    match node.op.name {
        "linear" => Some(linear(cx, node)),
        "matmul" => Some(matmul(cx, node)),
        "conv1d" | "conv2d" => Some(conv::lower(cx, node)),
        _ => grad::try_lower(cx, node),
    }
}

/// The iteration space of the epilogue of contraction `node` (`None` if
/// `node` is not a contraction this module lowers or its sizes are not
/// known): rows of the output's channel-minor matrix —
/// `Rows { channels: OC, inner: spatial }` for an NCHW convolution,
/// `Rows { channels: 1, inner: last dim }` for NHWC convolutions, `linear`
/// and `matmul`. A follower can join the epilogue iff
/// `pointwise::can_follow(g, f, running, epilogue_domain(g, node))`.
pub fn epilogue_domain(g: &Graph, node: &Node) -> Option<Domain> {
    let shape = &g.ty(*node.outputs.first()?).shape;
    let known = |ds: &[crate::ir::Dim]| {
        ds.iter().try_fold(1u64, |acc, d| {
            acc.checked_mul(u64::try_from(d.as_known()?).ok()?)
        })
    };
    let last = |shape: &[crate::ir::Dim]| {
        Some(Domain::Rows {
            channels: 1,
            inner: known(shape.get(shape.len().checked_sub(1)?..)?)?,
        })
    };
    match node.op.name {
        "linear" | "matmul" => last(shape),
        "conv1d" | "conv2d" if conv::is_nhwc(node) => last(shape),
        "conv1d" | "conv2d" => Some(Domain::Rows {
            channels: known(shape.get(1..2)?)?,
            inner: known(shape.get(2..)?)?,
        }),
        _ => None,
    }
}

/// The GEMM of a contraction whose weight is not pre-packed:
/// [`GemmChoice::Auto`] is the native GEMM when the CPU has AVX2 or
/// AVX-512 (checked now, at plan time), else the Cranelift tile, which is
/// compiled into the JIT (its code lives as long as the JIT, like every
/// kernel of the plan); [`GemmChoice::Packed`] is the packed GEMM with
/// both operands packed per call.
pub fn gemm_choice(cx: &mut LowerCx) -> Result<Gemm, BackError> {
    let native = match cx.options.gemm {
        GemmChoice::Native => true,
        GemmChoice::Cranelift => false,
        GemmChoice::Packed => return Ok(Gemm::Packed(Prepacked::Neither)),
        GemmChoice::Auto => host_has_wide_simd(),
    };
    if native {
        return Ok(Gemm::Native);
    }
    let tile = TileKernel::best(cx.jit);
    Ok(Gemm::Tile(tile.gemm(cx.jit)?.runtime_tile()))
}

/// Whether the host has AVX2 or AVX-512F (the native GEMM's fast paths).
fn host_has_wide_simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
            || std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Where a GEMM operand comes from.
#[derive(Clone, Copy, Debug)]
pub(super) enum Src {
    /// A lowered value.
    Value(ValueId),
    /// The panel the packing kernel writes.
    Packed,
    /// A buffer that is not a graph value (a re-laid-out weight), with
    /// its length.
    Buf(Buf, usize),
    /// The implicit A of an NHWC convolution over a value (the input),
    /// read through the window geometry (runs as [`Gemm::Implicit`]).
    Implicit(ValueId, ConvGeom),
}

/// One GEMM operand: its source, first element, per-item and per-group
/// distances, and matrix strides.
#[derive(Clone, Copy, Debug)]
pub(super) struct Side {
    pub src: Src,
    pub offset: usize,
    pub item: usize,
    pub group: usize,
    pub strides: Strides,
}

impl Side {
    /// A value read from its start with the given strides.
    fn value(v: ValueId, item: usize, group: usize, strides: Strides) -> Side {
        Side {
            src: Src::Value(v),
            offset: 0,
            item,
            group,
            strides,
        }
    }
}

/// A contraction ready to emit: `items` × `groups` GEMMs
/// `C[m×n] = A[m×k]·B[k×n]`, an optional packing kernel over input `x`,
/// an optional col2im unpacking of C (then C is a per-item scratch panel),
/// whether the items accumulate into one C, and the epilogue (over
/// `domain`, with an optional bias).
pub(super) struct Spec {
    pub items: usize,
    pub groups: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: Side,
    pub b: Side,
    pub c_item: usize,
    pub c_group: usize,
    pub ldc: usize,
    pub pack: Option<(Im2col, ValueId)>,
    pub unpack: Option<Col2im>,
    pub accumulate: bool,
    pub domain: Domain,
    pub bias: Option<(ValueId, Bcast)>,
}

/// The scratch elements the packing kernel `im2col` of a contraction of
/// `items` items takes: one panel per thread the items can use. They
/// start the scratch region; the contraction's other scratch follows.
pub(super) fn pack_scratch_len(cx: &LowerCx, items: usize, im2col: &Im2col) -> usize {
    im2col.panel_len() * cx.options.threads.clamp(1, items.max(1))
}

/// Emits `spec` as one contraction step of `node`, with the node's fused
/// followers in the epilogue.
/// A parameter-derived weight is read from its packed panels
/// ([`prepack`]) with the packed GEMM.
pub(super) fn emit(cx: &mut LowerCx, node: &Node, mut spec: Spec) -> Result<(), BackError> {
    let followers = cx.followers(node);
    let last = followers.last().map_or(node.outputs[0], |f| f.outputs[0]);
    let out = cx.output(last)?;
    let out_len = cx.numel(last)?;
    let gemm = match (prepack::apply(cx, node, &mut spec)?, spec.a.src) {
        (Prepacked::B, Src::Implicit(_, geom)) => Gemm::Implicit(geom),
        (_, Src::Implicit(..)) => {
            return Err(BackError(format!(
                "`{}` at {}: an implicit convolution without its weight packed as B",
                node.op.name, node.path
            )))
        }
        (Prepacked::Neither, _) if gemv_linear(cx, node) => Gemm::Gemv,
        (Prepacked::Neither, _) if thin_linear(cx, node, &spec) => Gemm::Thin,
        (Prepacked::Neither, _) => gemm_choice(cx)?,
        (side, _) => Gemm::Packed(side),
    };
    // A prologue (a normalised concatenation, see the fusion pass) is
    // gathered through the norm by an implicit GEMM; any other GEMM reads
    // it stored in the scratch region first.
    let prologue_nodes = cx.prologue(node);
    let normed = match gemm {
        _ if prologue_nodes.is_empty() => None,
        Gemm::Implicit(_) => Some(super::norm::prologue(cx, &prologue_nodes)?),
        _ => {
            super::norm::concat_norm_scratch(cx, &prologue_nodes)?;
            None
        }
    };
    let mut inputs: Vec<Buf> = Vec::new();
    let mut extents: Vec<usize> = Vec::new();
    let mut add = |buf: Buf, len: usize| {
        inputs.push(buf);
        extents.push(len);
        inputs.len() - 1
    };
    let mut pack_scratch = 0;
    let pack = match spec.pack {
        Some((im2col, x)) => {
            let id = cx.jit.kernel(&im2col)?;
            let kernel = cx.jit.code(id)?;
            let input = add(cx.buf(x)?, cx.numel(x)?);
            pack_scratch = pack_scratch_len(cx, spec.items, &im2col);
            let len = im2col.panel_len();
            let scratch = add(cx.scratch(pack_scratch), pack_scratch);
            Some(Pack {
                kernel,
                input,
                scratch,
                units: im2col.units(),
                len,
            })
        }
        None => None,
    };
    let prologue = match normed {
        Some(p) => {
            let (mut first, mut channels) = (None, Vec::new());
            for &v in &p.parts {
                let at = add(cx.buf(v)?, cx.numel(v)?);
                first.get_or_insert(at);
                channels.push(cx.shape(v)?.last().copied().unwrap_or(0));
            }
            Some(Prologue {
                first: first.unwrap_or(0),
                channels,
                scale: add(p.scale, p.channels),
                shift: add(p.shift, p.channels),
                relu: p.relu,
            })
        }
        None => None,
    };
    let mut side = |s: &Side| -> Result<Operand, BackError> {
        let (input, packed) = match (s.src, pack) {
            (Src::Packed, Some(p)) => (p.scratch, true),
            (Src::Packed, None) => {
                return Err(BackError(format!(
                    "`{}` at {}: a packed operand without a packing kernel",
                    node.op.name, node.path
                )))
            }
            (Src::Value(v) | Src::Implicit(v, _), _) => (add(cx.buf(v)?, cx.numel(v)?), false),
            (Src::Buf(buf, len), _) => (add(buf, len), false),
        };
        Ok(Operand {
            input,
            packed,
            offset: s.offset,
            item_stride: s.item,
            group_stride: s.group,
            strides: s.strides,
        })
    };
    let a = match &prologue {
        // The implicit A is read through the prologue, never from its
        // operand (the first part stands in for it).
        Some(p) => Operand {
            input: p.first,
            packed: false,
            offset: 0,
            item_stride: 0,
            group_stride: 0,
            strides: spec.a.strides,
        },
        None => side(&spec.a)?,
    };
    let b = side(&spec.b)?;
    let unpack = match spec.unpack {
        Some(col2im) => {
            let id = cx.jit.kernel(&col2im)?;
            let kernel = cx.jit.code(id)?;
            let slices = cx.options.threads.clamp(1, spec.items.max(1));
            let len = col2im.panel_len();
            // The C panels follow the packed panels in the scratch region.
            let scratch = match cx.scratch(pack_scratch + len * slices) {
                Buf::Arena { offset, .. } => Buf::Arena {
                    offset: offset + pack_scratch,
                    len: len * slices,
                },
                other => other,
            };
            let scratch = add(scratch, len * slices);
            Some(Unpack {
                kernel,
                scratch,
                units: col2im.units(),
                len,
            })
        }
        None => None,
    };
    let epilogue = epilogue_chain(cx.g, node, &followers, spec.domain, spec.bias)?;
    let epilogue = match epilogue {
        Some((chain, values)) => {
            let id = chain.compile(cx.jit)?;
            let kernel = cx.jit.code(id)?;
            let input = add(out, out_len);
            for v in values {
                add(cx.buf(v)?, cx.numel(v)?);
            }
            let rows = chain.elements(1);
            Some(Epilogue {
                kernel,
                input,
                units: out_len / rows as usize / spec.items.max(1),
            })
        }
        None => None,
    };
    extents.push(out_len);
    cx.push(Step {
        work: Work::Contraction(Box::new(Contraction {
            items: spec.items,
            groups: spec.groups,
            m: spec.m,
            n: spec.n,
            k: spec.k,
            a,
            b,
            c_item: spec.c_item,
            c_group: spec.c_group,
            ldc: spec.ldc,
            pack,
            epilogue,
            unpack,
            accumulate: spec.accumulate,
            gemm,
            prologue,
        })),
        inputs,
        output: out,
        extents,
    });
    Ok(())
}

/// The epilogue kernel: the bias (if any) then the followers, over
/// `domain`; `None` when there is nothing to apply. Also returns the
/// values its inputs 1.. read.
fn epilogue_chain(
    g: &Graph,
    node: &Node,
    followers: &[&Node],
    domain: Domain,
    bias: Option<(ValueId, Bcast)>,
) -> Result<Option<(Chain, Vec<ValueId>)>, BackError> {
    let mut chain = Chain {
        inputs: vec![Bcast::Full],
        domain,
        steps: Vec::new(),
    };
    let mut values = Vec::new();
    if let Some((b, bcast)) = bias {
        chain.inputs.push(bcast);
        values.push(b);
        chain.steps.push(ChainStep::Binary {
            op: Binary::Add,
            rhs: ChainOperand::Input(1),
            swap: false,
        });
    }
    pointwise::extend(g, node, followers, Some(domain), &mut chain, &mut values)?;
    Ok((!chain.steps.is_empty()).then_some((chain, values)))
}

/// `y = x·Wᵀ (+ b)` over the last dim of x: one GEMM reading W transposed
/// through its strides, then the bias (per column) and the followers.
fn linear(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let w_shape = cx.shape(node.inputs[1])?;
    let (n, k) = (w_shape[0], w_shape[1]);
    let m = cx.numel(node.inputs[0])? / k.max(1);
    if skinny_takes(cx, node, n) {
        return skinny_linear(cx, node, (m, n, k));
    }
    emit(
        cx,
        node,
        Spec {
            items: 1,
            groups: 1,
            m,
            n,
            k,
            a: Side::value(node.inputs[0], 0, 0, Strides::row_major(k)),
            b: Side::value(node.inputs[1], 0, 0, Strides::transposed(k)),
            c_item: 0,
            c_group: 0,
            ldc: n,
            pack: None,
            unpack: None,
            accumulate: false,
            domain: Domain::Rows {
                channels: 1,
                inner: n as u64,
            },
            bias: node.inputs.get(2).map(|&b| (b, Bcast::PerColumn)),
        },
    )
}

/// Whether `node` is a `linear` that runs as a GEMV
/// ([`netc_runtime::gemm::gemv`], under `--gemm auto`): at most
/// `gemv::MAX_ROWS` rows of input and a weight larger than one core's L2
/// ([`GEMV_MIN_WEIGHTS`]), so each weight is used at most that many times
/// and the product is as fast as the weight streams from memory; its
/// weight is then read in place, not packed. (A few outputs and nothing
/// fused after it take the skinny kernel instead.)
pub(super) fn gemv_linear(cx: &LowerCx, node: &Node) -> bool {
    let shape = |i: usize| node.inputs.get(i).and_then(|&v| cx.shape(v).ok());
    let (Some(w), Some(x)) = (shape(1), shape(0)) else {
        return false;
    };
    let [n, k] = w[..] else {
        return false;
    };
    let m = x.iter().product::<usize>() / k.max(1);
    node.op.name == "linear"
        && cx.options.gemm == GemmChoice::Auto
        && (1..=gemv::MAX_ROWS).contains(&m)
        && n * k >= GEMV_MIN_WEIGHTS
        && !skinny_takes(cx, node, n)
}

/// Whether the contraction `spec` of `node` runs as a thin product
/// ([`netc_runtime::gemm::thin`], under `--gemm auto` with
/// `thin_linear` on a CPU with AVX-512F): a `linear` or its input gradient, one product of at most
/// `thin::MAX_THIN` rows whose strides fit a thin form, over a weight of
/// at least [`GEMV_MIN_WEIGHTS`] read in place. A general GEMM packs such
/// a weight into panels on every call (training plans pack nothing
/// ahead, the weight changes every step).
fn thin_linear(cx: &LowerCx, node: &Node, spec: &Spec) -> bool {
    matches!(node.op.name, "linear" | "linear_grad_input")
        && cx.options.thin_linear
        && cx.options.gemm == GemmChoice::Auto
        && netc_runtime::gemm::kernel_avx512::available()
        && spec.items == 1
        && spec.groups == 1
        && spec.pack.is_none()
        && spec.unpack.is_none()
        && spec.n * spec.k >= GEMV_MIN_WEIGHTS
        && thin::Form::of((spec.m, spec.n, spec.k), spec.a.strides, spec.b.strides).is_some()
}

/// The fewest weights (2 MiB of f32, one core's L2) for which a batch-1
/// `linear` runs the GEMV. A smaller weight is read from L2 on every call,
/// where the packed GEMM's contiguous panels went faster
/// (`examples/gemv_speed`: eeg_mlp fc2, 256×512, 6 µs packed against
/// 10 µs; vggish 4096×12288 and eeg_ccnn's 1024×5184, read from memory,
/// went faster as a GEMV).
const GEMV_MIN_WEIGHTS: usize = 1 << 19;

/// Whether a `linear` of `n` outputs runs on the skinny-N kernel.
fn skinny_takes(cx: &LowerCx, node: &Node, n: usize) -> bool {
    n <= skinny::MAX_OUTPUTS && cx.options.gemm == GemmChoice::Auto && cx.followers(node).is_empty()
}

/// A `linear` with few outputs and nothing fused after it, as a row step
/// of the skinny-N kernel (`netc_runtime::gemm::skinny`): one dot
/// product per output, in pieces of rows worth a thread.
fn skinny_linear(
    cx: &mut LowerCx,
    node: &Node,
    (m, n, k): (usize, usize, usize),
) -> Result<(), BackError> {
    let bias = node.inputs.get(2).copied();
    let mut inputs = vec![cx.buf(node.inputs[0])?, cx.buf(node.inputs[1])?];
    let mut extents = vec![m * k, n * k];
    if let Some(b) = bias {
        inputs.push(cx.buf(b)?);
        extents.push(n);
    }
    extents.push(m * n);
    let output = cx.output(node.outputs[0])?;
    let kernel = SkinnyLinear {
        n,
        k,
        bias: bias.is_some(),
    };
    cx.push(Step {
        work: Work::Rows(Rows {
            kernel: Arc::new(kernel),
            rows: m,
            width: n,
            grain: (SKINNY_PIECE_MACS / (n * k).max(1)).max(1),
        }),
        inputs,
        output,
        extents,
    });
    Ok(())
}

/// Multiply-adds worth a thread in a skinny `linear` (waking a second
/// thread costs several microseconds; this is about one of work).
const SKINNY_PIECE_MACS: usize = 1 << 17;

/// `matmul(a, b)`: `[..., m, k] x [..., k, n]` with broadcast batch dims.
/// The batch dims collapse to at most two levels (items and groups) of
/// constant strides; a batch of `a` over a shared `b` folds into the rows
/// of one GEMM.
fn matmul(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let (sa, sb) = (cx.shape(node.inputs[0])?, cx.shape(node.inputs[1])?);
    let so = cx.shape(node.outputs[0])?;
    let (m, k, n) = (sa[sa.len() - 2], sa[sa.len() - 1], sb[sb.len() - 1]);
    let batch = &so[..so.len() - 2];
    // Per output batch dim: (size, stride in a, stride in b, stride in c).
    let strides_of = |shape: &[usize], mat: usize| -> Vec<usize> {
        let own = &shape[..shape.len() - 2];
        let mut st = vec![0; batch.len()];
        let mut acc = mat;
        for (i, &d) in own.iter().enumerate().rev() {
            let at = batch.len() - own.len() + i;
            st[at] = if d == 1 { 0 } else { acc };
            acc *= d;
        }
        st
    };
    let (st_a, st_b) = (strides_of(&sa, m * k), strides_of(&sb, k * n));
    let mut st_c = vec![0; batch.len()];
    let mut acc = m * n;
    for i in (0..batch.len()).rev() {
        st_c[i] = acc;
        acc *= batch[i];
    }
    // Collapse: drop size-1 dims, merge neighbours whose strides chain.
    let mut dims: Vec<[usize; 4]> = Vec::new();
    for i in 0..batch.len() {
        if batch[i] == 1 {
            continue;
        }
        let d = [batch[i], st_a[i], st_b[i], st_c[i]];
        match dims.last_mut() {
            Some(p) if (1..4).all(|j| p[j] == d[j] * d[0]) => {
                p[0] *= d[0];
                p[1..].copy_from_slice(&d[1..]);
            }
            _ => dims.push(d),
        }
    }
    let strides = |(a, b): (usize, usize)| (Strides::row_major(a), Strides::row_major(b));
    let (ra, rb) = strides((k, n));
    let (a, b) = (node.inputs[0], node.inputs[1]);
    let domain = Domain::Rows {
        channels: 1,
        inner: n as u64,
    };
    let spec = |items, groups, m, ia: usize, ib, ic, ga, gb, gc| Spec {
        items,
        groups,
        m,
        n,
        k,
        a: Side::value(a, ia, ga, ra),
        b: Side::value(b, ib, gb, rb),
        c_item: ic,
        c_group: gc,
        ldc: n,
        pack: None,
        unpack: None,
        accumulate: false,
        domain,
        bias: None,
    };
    let spec = match dims[..] {
        [] => spec(1, 1, m, 0, 0, 0, 0, 0, 0),
        // A contiguous batch of `a` times one `b`: one tall GEMM.
        [[size, sa, 0, sc]] if sa == m * k && sc == m * n => spec(1, 1, size * m, 0, 0, 0, 0, 0, 0),
        [[size, sa, sb, sc]] => spec(size, 1, m, sa, sb, sc, 0, 0, 0),
        [[items, ia, ib, ic], [groups, ga, gb, gc]] => {
            spec(items, groups, m, ia, ib, ic, ga, gb, gc)
        }
        _ => {
            return Err(BackError(format!(
                "`matmul` at {}: batch dims {:?} x {:?} broadcast in more than two strided levels; \
                 this back end runs at most two",
                node.path, sa, sb
            )))
        }
    };
    emit(cx, node, spec)
}

/// An integer-list attribute of `node` (`what` names it in errors).
pub(super) fn ints(node: &Node, what: &str) -> Result<Vec<i64>, BackError> {
    match node.op.attr(what) {
        Some(Attr::Ints(v)) => Ok(v.clone()),
        other => Err(BackError(format!(
            "`{}` at {}: attribute `{what}` is {other:?}, expected a list of integers",
            node.op.name, node.path
        ))),
    }
}

#[cfg(test)]
mod tests;
