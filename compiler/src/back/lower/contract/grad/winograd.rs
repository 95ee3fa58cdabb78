//! The 3×3 stride-1 convolutions of training plans as Winograd
//! transforms around `α²` batched GEMMs ([`netc_runtime::winograd`]):
//!
//! - forward `conv2d` and the input gradient (the forward convolution of
//!   `dy` with the flipped kernel, padding `2 − pad`): the weight
//!   transformed (`U`, every step: the weights change), the input
//!   transposed to NHWC unless it is channels last already, its tiles
//!   transformed (`V`, one matrix per position), one contraction step of
//!   `α²` GEMMs
//!   `M_ξ[T, N] = V_ξ[T, K]·U_ξ[K, N]`, and the output transform (plus the
//!   bias) into NHWC rows, transposed back to NCHW unless channels last;
//!   fused followers then run as one elementwise step over the result;
//! - `conv2d_grad_weight`: `x` and `dy` transposed to NHWC unless channels
//!   last, their tiles transformed (`V` of `x`, `Ŷ = A dY Aᵀ` of `dy`), the
//!   `α²` GEMMs `∂U_ξ[OC, C] = Ŷ_ξᵀ·V_ξ` over the tiles, and `Gᵀ ∂U G`
//!   into dW.
//!
//! - an inference plan's NHWC `conv2d` with a parameter-derived weight:
//!   its transform packed once by prepare steps into the persistent region
//!   ([`persistent_len`]), then per run the padding and the fused
//!   convolution straight into the output, fused followers as one
//!   elementwise step over it.
//!
//! All intermediates live in the scratch region. The tile side is the one
//! with the least transformed work for the map
//! ([`netc_runtime::winograd::best_tile`]).
//!
//! Why: `F(3×3, 3×3)` on eeg_ccnn's 9×9 maps multiplies 25 times per 81
//! taps·pixels where the implicit GEMM multiplies 81 times, and those
//! convolutions were most of its training step, already at the machine's
//! GEMM speed.

use super::super::{epilogue_chain, ints, prepack};
use super::implicit::{rows_step, scratch_regions, to_nhwc, Role};
use super::Geometry;
use crate::back::elementwise::Domain;
use crate::back::lower::LowerCx;
use crate::back::BackError;
use crate::ir::{Node, ValueId};
use netc_runtime::gemm::kernel_avx512;
use netc_runtime::gemm::{Gemm, Strides};
use netc_runtime::plan::{Buf, Contraction, Operand, Rows, Step, Work};
use netc_runtime::train::layout::ChannelsLast;
use netc_runtime::winograd::{
    best_tile, GradOutputTransform, InputTransform, PadTiles, TiledConv, Tiling, Transforms,
    WeightGradTransform, WeightTransform,
};
use std::sync::Arc;

/// The smallest `C·OC/(C + OC)` (half the harmonic mean of the channel
/// counts) of a forward convolution or input gradient: per tile and
/// position the GEMMs cost `C·OC` multiply-adds, the transforms about
/// `C + OC` times a constant. eeg_ccnn's 64 → 128 (43) ran level with
/// the implicit GEMM, 128 → 256 (85) 1.26–1.45× faster, 256 → 64 (51)
/// 1.08–1.14× (session 23).
const MIN_CHANNEL_RATIO: usize = 32;

/// The same bound for a weight gradient, whose other path (the one-pass
/// kernel) is the faster one below it: eeg_ccnn's 64 → 128 and 256 → 64
/// ran 0.81–0.91× as fast as Winograd transforms, 128 → 256 1.31–1.41×.
const MIN_WEIGHT_GRAD_RATIO: usize = 64;

/// Whether the convolution, input gradient or weight gradient of `g`
/// runs as Winograd transforms in this plan: a training plan with
/// `winograd` on, outside the prepare steps, and [`fits`]; a weight
/// gradient only without followers fused into dW (the transform writes
/// dW last).
pub(super) fn applies(cx: &LowerCx, node: &Node, g: &Geometry) -> bool {
    cx.training
        && !cx.in_prepare
        && cx.options.winograd
        && fits(node.op.name, g)
        && (node.op.name != "conv2d_grad_weight" || cx.followers(node).is_empty())
}

/// The geometric conditions of [`applies`] for the op named `op`: a CPU
/// with AVX-512F, one group, a 3×3 kernel at stride 1 and dilation 1,
/// padding at most 2, and channels enough ([`MIN_CHANNEL_RATIO`],
/// [`MIN_WEIGHT_GRAD_RATIO`]).
pub(super) fn fits(op: &str, g: &Geometry) -> bool {
    let bound = if op == "conv2d_grad_weight" {
        MIN_WEIGHT_GRAD_RATIO
    } else {
        MIN_CHANNEL_RATIO
    };
    kernel_avx512::available()
        && g.groups == 1
        && (g.kh, g.kw) == (3, 3)
        && g.stride == [1, 1]
        && g.dilation == [1, 1]
        && g.pad.iter().all(|&p| p <= 2)
        && g.c * g.oc >= bound * (g.c + g.oc)
}

/// The tiling of a convolution of `[n, h, w]` maps with `pad`, with the
/// best tile for its output map.
fn tiling(
    n: usize,
    (h, w): (usize, usize),
    pad: [usize; 2],
) -> Result<(Tiling, Transforms), BackError> {
    let mut t = Tiling { n, h, w, pad, m: 2 };
    t.m = best_tile(t.oh(), t.ow());
    let transforms = Transforms::new(t.m).map_err(BackError)?;
    Ok((t, transforms))
}

/// A row step of `kernel` (`rows` rows of `width`) reading `inputs`
/// (buffer and extent each) into `output`.
fn rows(
    kernel: Arc<dyn netc_runtime::plan::RowKernel>,
    (rows, width): (usize, usize),
    inputs: &[(Buf, usize)],
    output: Buf,
) -> Step {
    let mut extents: Vec<usize> = inputs.iter().map(|&(_, len)| len).collect();
    extents.push(rows * width);
    Step {
        work: Work::Rows(Rows {
            kernel,
            rows,
            width,
            grain: 1,
        }),
        inputs: inputs.iter().map(|&(b, _)| b).collect(),
        output,
        extents,
    }
}

/// The contraction step of `groups` GEMMs `C_g[m×n] = A_g·B_g` on the
/// `gemm` crate: A (input 0) and B (the step's input 1) read through their
/// strides from group offsets `a.0`, `b.0` apart, C written with leading
/// dimension `ldc`, groups `c_group` apart. (The weight gradient's
/// products over the tiles ran 1.13–1.22× faster there than on the packed
/// GEMM with both operands packed per call: vggish's, batch 32.)
fn batched(
    (groups, m, n, k): (usize, usize, usize, usize),
    a: (usize, Strides, Buf, usize),
    b: (usize, Strides, Buf, usize),
    (c_group, ldc): (usize, usize),
    (out, out_len): (Buf, usize),
) -> Step {
    let operand = |input, group_stride, strides| Operand {
        input,
        packed: false,
        offset: 0,
        item_stride: 0,
        group_stride,
        strides,
    };
    Step {
        work: Work::Contraction(Box::new(Contraction {
            items: 1,
            groups,
            m,
            n,
            k,
            a: operand(0, a.0, a.1),
            b: operand(1, b.0, b.1),
            c_item: 0,
            c_group,
            ldc,
            pack: None,
            epilogue: None,
            unpack: None,
            accumulate: false,
            gemm: Gemm::Native,
            prologue: None,
        })),
        inputs: vec![a.2, b.2],
        output: out,
        extents: vec![a.3, b.3, out_len],
    }
}

/// The NHWC map `src` (`k` channels) padded into `padded` and its tiles
/// transformed into `v`.
fn pad_and_transform(
    cx: &mut LowerCx,
    (tiling, transforms, k): (Tiling, &Transforms, usize),
    src: (Buf, usize),
    (padded, padded_len): (Buf, usize),
    v: Buf,
) {
    let pad = PadTiles { tiling, c: k };
    cx.push(rows(
        Arc::new(pad),
        (pad.rows(), pad.width()),
        &[src],
        padded,
    ));
    let input_transform = InputTransform {
        transforms: transforms.clone(),
        tiling,
        c: k,
    };
    let shape = (input_transform.rows(), k);
    cx.push(rows(
        Arc::new(input_transform),
        shape,
        &[(padded, padded_len)],
        v,
    ));
}

/// Emits the forward convolution or input gradient `node` of `g`
/// (reading `input` and the weight `w`) as the module docs describe; with
/// `channels_last`, `input` and the result are NHWC already.
pub(super) fn emit(
    cx: &mut LowerCx,
    node: &Node,
    g: &Geometry,
    (input, w): (ValueId, ValueId),
    role: Role,
    channels_last: bool,
) -> Result<(), BackError> {
    let (map, pad, flip, bias) = match role {
        Role::Forward(bias) => ((g.h, g.w), g.pad, false, bias),
        Role::GradInput(pad) => ((g.oh, g.ow), pad, true, None),
    };
    let (tiling, transforms) = tiling(g.n, map, pad)?;
    let weights = WeightTransform {
        transforms: transforms.clone(),
        oc: g.oc,
        c: g.c,
        flip,
        taps_first: false,
    };
    let (k, n) = (weights.k(), weights.n());
    let (oh, ow) = (tiling.oh(), tiling.ow());
    let out_len = g.n * oh * ow * n;
    let conv = TiledConv {
        transforms,
        tiling,
        k,
        n,
        bias: bias.is_some(),
    };
    let panels = conv.panels();
    // Scratch: [input as NHWC | padded | U | U packed | result as NHWC].
    let lens = [
        g.n * map.0 * map.1 * k,
        g.n * tiling.padded_h() * tiling.padded_w() * k,
        k * weights.width(),
        panels.groups * panels.group_len(),
        out_len,
    ];
    let [mut xs, xp, u, up, mut ys] = scratch_regions(cx, node, lens)?;
    let (wbuf, wlen) = (cx.buf(w)?, cx.numel(w)?);
    let shape = (k, weights.width());
    cx.push(rows(Arc::new(weights), shape, &[(wbuf, wlen)], u));
    let shape = (panels.groups * panels.blocks(), panels.row_len());
    cx.push(rows(Arc::new(panels), shape, &[(u, lens[2])], up));
    if channels_last {
        xs = cx.buf(input)?;
    } else {
        to_nhwc(cx, input, (g.n, k, map.0 * map.1), xs)?;
    }
    let pad = PadTiles { tiling, c: k };
    cx.push(rows(
        Arc::new(pad),
        (pad.rows(), pad.width()),
        &[(xs, lens[0])],
        xp,
    ));
    let followers = cx.followers(node);
    let last = followers.last().map_or(node.outputs[0], |f| f.outputs[0]);
    let out = cx.output(last)?;
    if channels_last {
        ys = out;
    }
    let mut inputs = vec![(xp, lens[1]), (up, lens[3])];
    if let Some(b) = bias {
        inputs.push((cx.buf(b)?, cx.numel(b)?));
    }
    let shape = (conv.rows(), conv.width());
    cx.push(rows(Arc::new(conv), shape, &inputs, ys));
    let domain = if channels_last {
        Domain::Rows {
            channels: 1,
            inner: n as u64,
        }
    } else {
        let back = ChannelsLast {
            c: n,
            p: oh * ow,
            channels_last: false,
        };
        cx.push(rows_step(
            Arc::new(back),
            g.n,
            back.width(),
            (ys, out_len),
            out,
        ));
        Domain::Rows {
            channels: n as u64,
            inner: (oh * ow) as u64,
        }
    };
    if let Some((chain, values)) = epilogue_chain(cx.g, node, &followers, domain, None)? {
        let mut bufs = vec![out];
        for v in values {
            bufs.push(cx.buf(v)?);
        }
        cx.kernel(&chain, bufs, out, out_len)?;
    }
    Ok(())
}

/// Emits the weight gradient `node` of `g` as the module docs describe;
/// with `channels_last`, `x` and `dy` are NHWC already.
pub(super) fn emit_weight_grad(
    cx: &mut LowerCx,
    node: &Node,
    g: &Geometry,
    channels_last: bool,
) -> Result<(), BackError> {
    let (dy, x) = (node.inputs[0], node.inputs[1]);
    let (tiling, transforms) = tiling(g.n, (g.h, g.w), g.pad)?;
    let (tiles, p) = (tiling.tiles(), tiling.positions());
    // Scratch: [x as NHWC | dy as NHWC | x padded | V | Ŷ | ∂U].
    let lens = [
        g.n * g.h * g.w * g.c,
        g.n * g.oh * g.ow * g.oc,
        g.n * tiling.padded_h() * tiling.padded_w() * g.c,
        tiles * p * g.c,
        tiles * p * g.oc,
        p * g.oc * g.c,
    ];
    let [mut xs, mut dys, xp, v, yh, du] = scratch_regions(cx, node, lens)?;
    if channels_last {
        (xs, dys) = (cx.buf(x)?, cx.buf(dy)?);
    } else {
        to_nhwc(cx, x, (g.n, g.c, g.h * g.w), xs)?;
        to_nhwc(cx, dy, (g.n, g.oc, g.oh * g.ow), dys)?;
    }
    pad_and_transform(
        cx,
        (tiling, &transforms, g.c),
        (xs, lens[0]),
        (xp, lens[2]),
        v,
    );
    let grad_transform = GradOutputTransform {
        transforms: transforms.clone(),
        tiling,
        oc: g.oc,
    };
    let shape = (grad_transform.rows(), g.oc);
    cx.push(rows(Arc::new(grad_transform), shape, &[(dys, lens[1])], yh));
    // ∂U_ξ[OC, C] = Ŷ_ξᵀ · V_ξ over the tiles.
    cx.push(batched(
        (p, g.oc, g.c, tiles),
        (tiles * g.oc, Strides::transposed(g.oc), yh, lens[4]),
        (tiles * g.c, Strides::row_major(g.c), v, lens[3]),
        (g.oc * g.c, g.c),
        (du, lens[5]),
    ));
    let back = WeightGradTransform {
        transforms,
        oc: g.oc,
        c: g.c,
    };
    let dw = cx.output(node.outputs[0])?;
    let width = back.width();
    cx.push(rows(Arc::new(back), (g.oc, width), &[(du, lens[5])], dw));
    Ok(())
}

/// The fewest tiles of an inference convolution: vggish's 512-channel
/// convolutions at batch 1 (6 tiles of 4×4 on 12×8 maps) ran 0.71–0.75×
/// as fast as Winograd transforms, its 256-channel ones (24 tiles)
/// 1.67–1.76× faster, eeg_ccnn's at batch 1 (9 tiles of 3×3) level to
/// 1.07× (session 23, 3 rounds each).
const MIN_INFERENCE_TILES: usize = 8;

/// An inference convolution that runs as Winograd transforms: its fused
/// kernel and how its weight is transformed.
struct Inference {
    conv: TiledConv,
    weights: WeightTransform,
}

/// The Winograd form of an inference plan's `conv2d` `node`, if it takes
/// one: NHWC (`layout = "nhwc"`, weight `[OC, 3, 3, C]`), a
/// parameter-derived weight packed once (the packed GEMM, AVX-512F),
/// `winograd` on, the geometry of [`fits`] and at least
/// [`MIN_INFERENCE_TILES`] tiles.
fn inference(cx: &LowerCx, node: &Node) -> Option<Inference> {
    let nhwc = matches!(node.op.attr("layout"), Some(crate::ir::Attr::Str(s)) if s == "nhwc");
    if node.op.name != "conv2d" || cx.training || !nhwc || !cx.options.winograd {
        return None;
    }
    if !prepack::enabled(cx) || !cx.is_derived(*node.inputs.get(1)?) {
        return None;
    }
    let (x, w) = (
        cx.shape(node.inputs[0]).ok()?,
        cx.shape(node.inputs[1]).ok()?,
    );
    let (&[n, h, wd, c], &[oc, kh, kw, wc]) = (&x[..], &w[..]) else {
        return None;
    };
    let pair = |what: &str| -> Option<[usize; 2]> {
        match ints(node, what).ok()?[..] {
            [a, b] => Some([usize::try_from(a).ok()?, usize::try_from(b).ok()?]),
            _ => None,
        }
    };
    let groups = match node.op.attr("groups") {
        None => 1,
        Some(crate::ir::Attr::Int(g)) => *g,
        Some(_) => return None,
    };
    let g = Geometry {
        n,
        c,
        h,
        w: wd,
        oc,
        kh,
        kw,
        oh: 0,
        ow: 0,
        groups: usize::try_from(groups).ok()?,
        stride: pair("stride")?,
        pad: pair("pad")?,
        dilation: pair("dilation")?,
    };
    if wc != c || !fits(node.op.name, &g) {
        return None;
    }
    let (tiling, transforms) = tiling(n, (h, wd), g.pad).ok()?;
    if tiling.tiles() < MIN_INFERENCE_TILES {
        return None;
    }
    let weights = WeightTransform {
        transforms: transforms.clone(),
        oc,
        c,
        flip: false,
        taps_first: true,
    };
    let conv = TiledConv {
        transforms,
        tiling,
        k: c,
        n: oc,
        bias: node.inputs.len() > 2,
    };
    Some(Inference { conv, weights })
}

/// Whether an inference plan runs `node` as Winograd transforms (its
/// weight then needs no GEMM panels of its own).
pub(super) fn runs_inference(cx: &LowerCx, node: &Node) -> bool {
    inference(cx, node).is_some()
}

/// Persistent elements the packed weight transforms of `nodes` take (one
/// per convolution).
pub(super) fn persistent_len(cx: &LowerCx, nodes: &[&Node]) -> usize {
    nodes
        .iter()
        .filter_map(|n| inference(cx, n))
        .map(|i| {
            let p = i.conv.panels();
            (p.groups * p.group_len()).div_ceil(16) * 16
        })
        .sum()
}

/// Emits an inference plan's `conv2d` `node` as Winograd transforms (see
/// the module docs); `None` when it does not take them.
pub(super) fn emit_inference(cx: &mut LowerCx, node: &Node) -> Option<Result<(), BackError>> {
    let Inference { conv, weights } = inference(cx, node)?;
    Some(emit_inference_steps(cx, node, conv, weights))
}

fn emit_inference_steps(
    cx: &mut LowerCx,
    node: &Node,
    conv: TiledConv,
    weights: WeightTransform,
) -> Result<(), BackError> {
    let (x, w) = (node.inputs[0], node.inputs[1]);
    let panels = conv.panels();
    let packed_len = panels.groups * panels.group_len();
    let packed = cx.persistent(packed_len);
    let (wbuf, wlen) = (cx.buf(w)?, cx.numel(w)?);
    let u_len = weights.k() * weights.width();
    let [u] = scratch_regions(cx, node, [u_len])?;
    cx.preparing(|cx| {
        let shape = (weights.k(), weights.width());
        cx.push(rows(Arc::new(weights), shape, &[(wbuf, wlen)], u));
        let shape = (panels.groups * panels.blocks(), panels.row_len());
        cx.push(rows(Arc::new(panels), shape, &[(u, u_len)], packed));
    });
    let tiling = conv.tiling;
    let pad = PadTiles { tiling, c: conv.k };
    let padded_len = pad.rows() * pad.width();
    let [xp] = scratch_regions(cx, node, [padded_len])?;
    let src = (cx.buf(x)?, cx.numel(x)?);
    cx.push(rows(Arc::new(pad), (pad.rows(), pad.width()), &[src], xp));
    let followers = cx.followers(node);
    let last = followers.last().map_or(node.outputs[0], |f| f.outputs[0]);
    let out = cx.output(last)?;
    let mut inputs = vec![(xp, padded_len), (packed, packed_len)];
    if let Some(&b) = node.inputs.get(2) {
        inputs.push((cx.buf(b)?, cx.numel(b)?));
    }
    let (out_rows, width, n) = (conv.rows(), conv.width(), conv.n);
    cx.push(rows(Arc::new(conv), (out_rows, width), &inputs, out));
    let domain = Domain::Rows {
        channels: 1,
        inner: n as u64,
    };
    if let Some((chain, values)) = epilogue_chain(cx.g, node, &followers, domain, None)? {
        let mut bufs = vec![out];
        for v in values {
            bufs.push(cx.buf(v)?);
        }
        cx.kernel(&chain, bufs, out, out_rows * width)?;
    }
    Ok(())
}
