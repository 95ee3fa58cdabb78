//! The gradients of the contractions as contraction steps (NCHW):
//!
//! - `conv{1,2}d_grad_weight(dy, x)`: per image and group,
//!   `dWᵀ_g[C/g·KH·KW, OC/g] += col_g[C/g·KH·KW, OH·OW] · dy_g[OC/g, OH·OW]ᵀ`
//!   with `col` the forward's im2col panel of `x` (1x1 stride-1 unpadded
//!   convolutions read `x` itself) and `dy` read transposed through the
//!   GEMM's strides, into scratch; one copy step then transposes it into
//!   dW. (When the panel has fewer rows than `OC/g`, or a follower is fused
//!   into dW, `dW_g += dy_g · col_gᵀ` straight into dW instead.) The images accumulate into the one result (`beta = 1` from the
//!   second image on); the executor splits them over the threads, each
//!   summing into its own partial result (`runtime/src/plan/accumulate.rs`).
//! - `conv{1,2}d_grad_input(dy, w)`, stride 1 (padding at most
//!   `dilation·(k−1)`): a convolution of `dy` with the flipped kernel,
//!   `dx_g[C/g, H·W] = W'_g[C/g, OC/g·KH·KW] · col'_g` where `col'` is the
//!   im2col panel of `dy` with taps reversed and padding
//!   `dilation·(k−1) − pad`, and `W'` the weight with its two channel dims
//!   swapped per group (one copy step into the scratch region, after the
//!   contraction's packed panels, read by the next step only).
//! - other strides: per image and group,
//!   `col_g[C/g·KH·KW, OH·OW] = W_gᵀ · dy_g` (W read transposed through its
//!   strides) into a per-thread scratch panel, then the col2im kernel adds
//!   every panel element into the input position its tap reads.
//! - In both, images are independent and run in parallel; a 1x1 stride-1
//!   unpadded convolution writes `Wᵀ·dy` straight into dx.
//! - `linear_grad_input(dy, w) = dy · W` and `linear_grad_weight(dy, x) =
//!   dyᵀ · x` (all leading dims folded into rows): one GEMM each, the
//!   transpose through the strides.
//!
//! Why two input-gradient schemes: at stride 1 the flipped convolution
//! contracts over `OC/g·KH·KW` (the scatter only over `OC/g`, a thin GEMM
//! whose `C/g·KH·KW × OH·OW` panel then goes through memory twice), and
//! needs no col2im. At stride s > 1 it would multiply the `s² − 1` zeros
//! per pixel that dilating `dy` inserts; the scatter does no wasted work
//! for any stride.
//!
//! A 1-D convolution is the 2-D one with a height of 1.

use super::{emit, ints, pack_scratch_len, Side, Spec, Src};
use crate::back::copy::CopyKernel;
use crate::back::elementwise::Domain;
use crate::back::im2col::{Col2im, Im2col, Layout};
use crate::back::lower::data;
use crate::back::lower::LowerCx;
use crate::back::BackError;
use crate::ir::{Attr, Node};
use netc_runtime::gemm::conv::ConvGeom;
use netc_runtime::gemm::Strides;
use netc_runtime::plan::Buf;

/// Lowers the contraction gradients; `None` for other ops.
pub(super) fn try_lower(cx: &mut LowerCx, node: &Node) -> Option<Result<(), BackError>> {
    match node.op.name {
        "conv1d_grad_input" | "conv2d_grad_input" => Some(conv_grad_input(cx, node)),
        "conv1d_grad_weight" | "conv2d_grad_weight" => Some(conv_grad_weight(cx, node)),
        "linear_grad_input" => Some(linear_grad_input(cx, node)),
        "linear_grad_weight" => Some(linear_grad_weight(cx, node)),
        _ => None,
    }
}

/// The sizes and window of the forward convolution, as 2-D NCHW.
#[derive(Debug)]
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    oc: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    groups: usize,
    stride: [usize; 2],
    pad: [usize; 2],
    dilation: [usize; 2],
}

impl Geometry {
    /// Input channels per group.
    fn cg(&self) -> usize {
        self.c / self.groups
    }

    /// Output channels per group.
    fn og(&self) -> usize {
        self.oc / self.groups
    }

    /// Rows of a group's panel: `C/g·KH·KW`.
    fn kg(&self) -> usize {
        self.cg() * self.kh * self.kw
    }

    /// Output pixels per image.
    fn spatial(&self) -> usize {
        self.oh * self.ow
    }

    /// The window of the forward convolution over an NHWC `x` (one
    /// group: `cg = c`).
    fn forward_geom(&self) -> ConvGeom {
        ConvGeom {
            cg: self.c,
            ..self.im2col().conv_geom(self.n)
        }
    }

    /// Whether the panel is `x` itself (1x1, stride 1, no padding).
    fn pointwise(&self) -> bool {
        self.kh * self.kw == 1 && self.stride == [1, 1] && self.pad == [0, 0]
    }

    fn im2col(&self) -> Im2col {
        Im2col {
            layout: Layout::Nchw,
            c: self.c,
            groups: self.groups,
            h: self.h,
            w: self.w,
            kh: self.kh,
            kw: self.kw,
            stride: self.stride,
            pad: self.pad,
            dilation: self.dilation,
            oh: self.oh,
            ow: self.ow,
            flip: false,
        }
    }

    /// The padding of the flipped convolution of `dy` that gives dx, if
    /// this is a stride-1 convolution with padding at most `d·(k−1)`.
    fn flipped_pad(&self) -> Option<[usize; 2]> {
        let back = |a: usize, k: usize| (self.dilation[a] * (k - 1)).checked_sub(self.pad[a]);
        (self.stride == [1, 1]).then_some(())?;
        Some([back(0, self.kh)?, back(1, self.kw)?])
    }

    fn col2im(&self) -> Col2im {
        Col2im {
            c: self.c,
            h: self.h,
            w: self.w,
            kh: self.kh,
            kw: self.kw,
            stride: self.stride,
            pad: self.pad,
            dilation: self.dilation,
            oh: self.oh,
            ow: self.ow,
        }
    }
}

/// An error naming `node`'s op and layer.
fn bad(node: &Node, what: String) -> BackError {
    BackError(format!(
        "`{}` at {}: {what}",
        node.op.name,
        if node.path.is_empty() {
            "the model"
        } else {
            &node.path
        }
    ))
}

/// The convolution of a forward or gradient node from the shapes of its
/// result (`dy_shape`), input and weight.
fn geometry(
    node: &Node,
    dy_shape: &[usize],
    x_shape: &[usize],
    w_shape: &[usize],
) -> Result<Geometry, BackError> {
    let nd = if node.op.name.starts_with("conv1d") {
        1
    } else {
        2
    };
    if let Some(layout) = node.op.attr("layout") {
        if !matches!(layout, Attr::Str(s) if s == "nchw") {
            return Err(bad(
                node,
                format!("layout {layout:?} is not supported (this back end runs \"nchw\")"),
            ));
        }
    }
    let window = |what: &str| -> Result<[usize; 2], BackError> {
        let v = ints(node, what)?;
        let pos =
            |x: i64| usize::try_from(x).map_err(|_| bad(node, format!("negative {what} {x}")));
        match v[..] {
            [l] if nd == 1 => Ok([if what == "pad" { 0 } else { 1 }, pos(l)?]),
            [h, w] if nd == 2 => Ok([pos(h)?, pos(w)?]),
            _ => Err(bad(node, format!("{what} {v:?} has not {nd} entries"))),
        }
    };
    let (stride, pad, dilation) = (window("stride")?, window("pad")?, window("dilation")?);
    let groups = match node.op.attr("groups") {
        Some(Attr::Int(g)) if *g >= 1 => *g as usize,
        None => 1,
        other => {
            return Err(bad(
                node,
                format!("groups {other:?} must be a positive integer"),
            ))
        }
    };
    if stride.contains(&0) || dilation.contains(&0) {
        return Err(bad(node, "strides and dilations must be at least 1".into()));
    }
    let two_d = |s: &[usize]| -> Option<[usize; 4]> {
        match (nd, s) {
            (1, &[a, b, c]) => Some([a, b, 1, c]),
            (2, &[a, b, c, d]) => Some([a, b, c, d]),
            _ => None,
        }
    };
    // Channels-last activations `[N, H, W, C]`, read as NCHW sizes.
    let last = channels_last(node) && nd == 2;
    let act = |s: &[usize]| match (last, two_d(s)) {
        (true, Some([n, h, w, c])) => Some([n, c, h, w]),
        (_, d) => d,
    };
    let shapes = || format!("dy {dy_shape:?}, input {x_shape:?}, weight {w_shape:?}");
    let (Some(dy), Some(x), Some(w)) = (act(dy_shape), act(x_shape), two_d(w_shape)) else {
        return Err(bad(
            node,
            format!("{} are not all rank {}", shapes(), nd + 2),
        ));
    };
    let g = Geometry {
        n: x[0],
        c: x[1],
        h: x[2],
        w: x[3],
        oc: w[0],
        kh: w[2],
        kw: w[3],
        oh: dy[2],
        ow: dy[3],
        groups,
        stride,
        pad,
        dilation,
    };
    let out = |size: usize, k: usize, a: usize| {
        (size + 2 * pad[a])
            .checked_sub(dilation[a] * (k.max(1) - 1) + 1)
            .map(|v| v / stride[a] + 1)
    };
    let fits = dy[0] == g.n
        && dy[1] == g.oc
        && g.c == w[1] * groups
        && g.oc.is_multiple_of(groups)
        && out(g.h, g.kh, 0) == Some(g.oh)
        && out(g.w, g.kw, 1) == Some(g.ow)
        && g.kh > 0
        && g.kw > 0;
    if !fits {
        return Err(bad(
            node,
            format!(
                "{} do not fit a convolution with stride {stride:?}, pad {pad:?}, dilation {dilation:?}, groups {groups}",
                shapes()
            ),
        ));
    }
    Ok(g)
}

/// Whether `node` (a convolution or its gradient in a training graph)
/// has channels-last activations and an NCHW weight: `act_layout =
/// "nhwc"`, set by the training layout pass (`passes::layout`).
pub(crate) fn channels_last(node: &Node) -> bool {
    matches!(node.op.attr("act_layout"), Some(Attr::Str(s)) if s == "nhwc")
}

/// Whether a training graph's `conv2d`, `conv2d_grad_input` or
/// `conv2d_grad_weight` `node`, of result shape `out` and first two
/// input shapes `in0`, `in1` (all NCHW), would run on a path that reads
/// and writes channels-last activations directly under `options`: the
/// Winograd transforms, the implicit GEMM (forward; input gradient at
/// stride 1) or the one-pass weight gradient. The training layout pass keeps every other
/// convolution, and the activations around it, NCHW.
pub(crate) fn runs_channels_last(
    node: &Node,
    (out, in0, in1): (&[usize], &[usize], &[usize]),
    options: &crate::options::CompileOptions,
) -> bool {
    let packed = super::prepack::enabled_for(options);
    let winograd = |g: &Geometry| options.winograd && winograd::fits(node.op.name, g);
    node.op.attr("layout").is_none()
        && match node.op.name {
            // (dy, x, w) of each.
            "conv2d" => geometry(node, out, in0, in1)
                .is_ok_and(|g| winograd(&g) || packed && implicit::fits_forward(&g)),
            "conv2d_grad_input" => geometry(node, in0, out, in1).is_ok_and(|g| {
                g.flipped_pad().is_some() && (winograd(&g) || packed && implicit::fits(&g))
            }),
            "conv2d_grad_weight" => {
                geometry(node, in0, in1, out).is_ok_and(|g| winograd(&g) || wgrad::fits(&g))
            }
            _ => false,
        }
}

/// The forward `conv2d` of a training plan as one implicit GEMM over
/// the batch ([`implicit`]); `None` when that does not apply (an
/// inference plan, NHWC, groups, a 1-D convolution), and the caller
/// lowers it per image. Channels-last activations always take it (or
/// fail).
pub(super) fn implicit_forward(cx: &mut LowerCx, node: &Node) -> Option<Result<(), BackError>> {
    let nchw = match node.op.attr("layout") {
        None => true,
        Some(Attr::Str(s)) => s == "nchw",
        Some(_) => false,
    };
    if node.op.name != "conv2d" || !nchw || !cx.training {
        return None;
    }
    let last = channels_last(node);
    let shape = |v| cx.shape(v).ok();
    let (x, w, y) = (
        shape(node.inputs[0])?,
        shape(*node.inputs.get(1)?)?,
        shape(node.outputs[0])?,
    );
    let g = match geometry(node, &y, &x, &w) {
        Ok(g) => g,
        Err(e) if last => return Some(Err(e)),
        Err(_) => return None,
    };
    let role = implicit::Role::Forward(node.inputs.get(2).copied());
    let operands = (node.inputs[0], node.inputs[1]);
    if winograd::applies(cx, node, &g) {
        return Some(winograd::emit(cx, node, &g, operands, role, last));
    }
    if !implicit::applies_forward(cx, &g) {
        return last.then(|| Err(not_channels_last(node)));
    }
    Some(implicit::emit(cx, node, &g, operands, role, last))
}

/// An inference plan's NHWC `conv2d` as Winograd transforms
/// ([`winograd`]); `None` when it does not take them.
pub(super) fn winograd_inference(cx: &mut LowerCx, node: &Node) -> Option<Result<(), BackError>> {
    winograd::emit_inference(cx, node)
}

/// Whether an inference plan runs `node` as Winograd transforms.
pub(super) fn runs_winograd_inference(cx: &LowerCx, node: &Node) -> bool {
    winograd::runs_inference(cx, node)
}

/// Persistent elements the Winograd weight transforms of `nodes` take.
pub(super) fn winograd_persistent_len(cx: &LowerCx, nodes: &[&Node]) -> usize {
    winograd::persistent_len(cx, nodes)
}

/// The error of a channels-last convolution that no channels-last path
/// takes (the training layout pass and the lowering disagree).
fn not_channels_last(node: &Node) -> BackError {
    bad(
        node,
        "has channels-last activations (act_layout \"nhwc\") but no channels-last path takes it"
            .into(),
    )
}

/// `dx = col2im(Wᵀ·dy)` per image and group.
fn conv_grad_input(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let (x_shape, w_shape) = (cx.shape(node.outputs[0])?, cx.shape(node.inputs[1])?);
    if let Some(Attr::Dims(dims)) = node.op.attr("input_shape") {
        // The attribute is NCHW.
        let nchw = match (channels_last(node), &x_shape[..]) {
            (true, &[n, h, w, c]) => vec![n, c, h, w],
            _ => x_shape.clone(),
        };
        let same = dims.len() == nchw.len()
            && dims
                .iter()
                .zip(&nchw)
                .all(|(d, &s)| d.as_known().is_none_or(|v| v == s as i64));
        if !same {
            return Err(bad(
                node,
                format!("attribute input_shape {dims:?} disagrees with the result {x_shape:?}"),
            ));
        }
    }
    let dy_shape = cx.shape(node.inputs[0])?;
    let g = geometry(node, &dy_shape, &x_shape, &w_shape)?;
    let (dy, wt) = (node.inputs[0], node.inputs[1]);
    let (og, kg, spatial) = (g.og(), g.kg(), g.spatial());
    let direct = g.pointwise();
    if let (Some(pad), true) = (g.flipped_pad(), winograd::applies(cx, node, &g)) {
        let role = implicit::Role::GradInput(pad);
        return winograd::emit(cx, node, &g, (dy, wt), role, channels_last(node));
    }
    if let (Some(pad), true) = (g.flipped_pad(), implicit::applies(cx, &g)) {
        let role = implicit::Role::GradInput(pad);
        return implicit::emit(cx, node, &g, (dy, wt), role, channels_last(node));
    }
    if channels_last(node) {
        return Err(not_channels_last(node));
    }
    if let (Some(pad), false) = (g.flipped_pad(), direct) {
        return conv_grad_input_flipped(cx, node, &g, pad);
    }
    emit(
        cx,
        node,
        Spec {
            items: g.n,
            groups: g.groups,
            m: kg,
            n: spatial,
            k: og,
            a: Side::value(wt, 0, og * kg, Strides::transposed(kg)),
            b: Side::value(
                dy,
                g.oc * spatial,
                og * spatial,
                Strides::row_major(spatial),
            ),
            c_item: if direct { g.c * spatial } else { 0 },
            c_group: kg * spatial,
            ldc: spatial,
            pack: None,
            unpack: (!direct).then(|| g.col2im()),
            accumulate: false,
            domain: Domain::Rows {
                channels: g.c as u64,
                inner: (g.h * g.w) as u64,
            },
            bias: None,
        },
    )
}

/// `dx = W' · im2col_flipped(dy)` per image and group (stride 1).
fn conv_grad_input_flipped(
    cx: &mut LowerCx,
    node: &Node,
    g: &Geometry,
    pad: [usize; 2],
) -> Result<(), BackError> {
    let (dy, wt) = (node.inputs[0], node.inputs[1]);
    let (og, cg, taps) = (g.og(), g.cg(), g.kh * g.kw);
    let hw = g.h * g.w;
    let im2col = Im2col {
        layout: Layout::Nchw,
        c: g.oc,
        groups: g.groups,
        h: g.oh,
        w: g.ow,
        kh: g.kh,
        kw: g.kw,
        stride: [1, 1],
        pad,
        dilation: g.dilation,
        oh: g.h,
        ow: g.w,
        flip: true,
    };
    // W [G, OC/g, C/g, taps] -> W' [G, C/g, OC/g, taps], into the scratch
    // after the contraction's packed panels.
    let copy = CopyKernel::new(
        &[g.groups, og, cg, taps],
        &[og * cg * taps, cg * taps, taps, 1],
        &[cg * og * taps, taps, og * taps, 1],
        0,
    );
    let w_len = g.oc * cg * taps;
    let after = pack_scratch_len(cx, g.n, &im2col);
    let w2 = match cx.scratch(after + w_len) {
        Buf::Arena { offset, .. } => Buf::Arena {
            offset: offset + after,
            len: w_len,
        },
        other => {
            return Err(bad(
                node,
                format!("the scratch region is {other:?}, not in the arena"),
            ))
        }
    };
    let id = copy.compile(cx.jit)?;
    let src = cx.buf(wt)?;
    data::call(
        cx,
        id,
        copy.units(),
        copy.grain(),
        vec![src],
        vec![copy.in_extent(), copy.out_extent()],
        w2,
    )?;
    let kg = og * taps;
    emit(
        cx,
        node,
        Spec {
            items: g.n,
            groups: g.groups,
            m: cg,
            n: hw,
            k: kg,
            a: Side {
                src: Src::Buf(w2, w_len),
                offset: 0,
                item: 0,
                group: cg * kg,
                strides: Strides::row_major(kg),
            },
            b: Side {
                src: Src::Packed,
                offset: 0,
                item: 0,
                group: kg * hw,
                strides: Strides::row_major(hw),
            },
            c_item: g.c * hw,
            c_group: cg * hw,
            ldc: hw,
            pack: Some((im2col, dy)),
            unpack: None,
            accumulate: false,
            domain: Domain::Rows {
                channels: g.c as u64,
                inner: hw as u64,
            },
            bias: None,
        },
    )
}

/// `dW += dy · colᵀ` per image and group, summed over the images.
fn conv_grad_weight(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let (x_shape, w_shape) = (cx.shape(node.inputs[1])?, cx.shape(node.outputs[0])?);
    let dy_shape = cx.shape(node.inputs[0])?;
    let g = geometry(node, &dy_shape, &x_shape, &w_shape)?;
    if let Ok(k) = ints(node, "kernel") {
        let want: Vec<i64> = if k.len() == 1 {
            vec![g.kw as i64]
        } else {
            vec![g.kh as i64, g.kw as i64]
        };
        if k != want {
            return Err(bad(
                node,
                format!("attribute kernel {k:?} disagrees with the result {w_shape:?}"),
            ));
        }
    }
    if winograd::applies(cx, node, &g) {
        return winograd::emit_weight_grad(cx, node, &g, channels_last(node));
    }
    if wgrad::applies(cx, node, &g) {
        return wgrad::emit(cx, node, &g, channels_last(node));
    }
    if channels_last(node) {
        return Err(not_channels_last(node));
    }
    let (dy, x) = (node.inputs[0], node.inputs[1]);
    let (og, kg, spatial) = (g.og(), g.kg(), g.spatial());
    // The panel `col_g[C/g·KH·KW, OH·OW]` (or x itself for 1x1 stride-1
    // unpadded), read row by row: the long operand of the product.
    let (col, pack) = if g.pointwise() {
        let hw = g.h * g.w;
        (
            Side::value(x, g.c * hw, g.cg() * hw, Strides::row_major(hw)),
            None,
        )
    } else {
        let side = Side {
            src: Src::Packed,
            offset: 0,
            item: 0,
            group: kg * spatial,
            strides: Strides::row_major(spatial),
        };
        (side, Some((g.im2col(), x)))
    };
    let dy_side = |strides| Side::value(dy, g.oc * spatial, og * spatial, strides);
    let domain = Domain::Rows {
        channels: 1,
        inner: kg as u64,
    };
    let spec = |m, n, a, b, ldc| Spec {
        items: g.n,
        groups: g.groups,
        m,
        n,
        k: spatial,
        a,
        b,
        c_item: 0,
        c_group: og * kg,
        ldc,
        pack,
        unpack: None,
        accumulate: true,
        domain,
        bias: None,
    };
    if !cx.followers(node).is_empty() || cx.in_prepare || kg < og {
        // A fused follower runs on dW in place (and a prepare step is not
        // the last run step), and a panel shorter than dy is not worth the
        // transposed form: keep dW the GEMM's C.
        let col_t = Side {
            strides: Strides::transposed(spatial),
            ..col
        };
        let spec = spec(og, kg, dy_side(Strides::row_major(spatial)), col_t, kg);
        return emit(cx, node, spec);
    }
    transposed_weight_grad(
        cx,
        node,
        &g,
        spec(kg, og, col, dy_side(Strides::transposed(spatial)), og),
    )
}

/// Emits the weight gradient as `dWᵀ_g[C/g·KH·KW, OC/g] += col_g · dy_gᵀ`
/// into the scratch region (after the packed panels), then one copy step
/// transposing it into dW.
///
/// Why transposed: the GEMM packs the operand it reads through rows
/// cheaply and the one it reads through columns slowly; when `col` is the
/// long one (`C/g·KH·KW` rows, at least `OC/g`), reading it row-major and
/// `dy` through its transpose is the faster way round (1.2–2.5× in the
/// `gemm` crate on the seed models' shapes, one thread). vggish's first
/// convolution (9 panel rows against 64 channels) was slower this way.
fn transposed_weight_grad(
    cx: &mut LowerCx,
    node: &Node,
    g: &Geometry,
    spec: Spec,
) -> Result<(), BackError> {
    let (og, kg) = (g.og(), g.kg());
    let len = g.groups * og * kg;
    let after = spec
        .pack
        .as_ref()
        .map_or(0, |(im2col, _)| pack_scratch_len(cx, spec.items, im2col));
    let dwt = match cx.scratch(after + len) {
        Buf::Arena { offset, .. } => Buf::Arena {
            offset: offset + after,
            len,
        },
        other => {
            return Err(bad(
                node,
                format!("the scratch region is {other:?}, not in the arena"),
            ))
        }
    };
    let dw = cx.output(node.outputs[0])?;
    emit(cx, node, spec)?;
    // `emit` wrote into dW; point the step at the scratch instead.
    let step = cx
        .steps
        .last_mut()
        .ok_or_else(|| bad(node, "no contraction step was emitted".into()))?;
    step.output = dwt;
    if let Some(e) = step.extents.last_mut() {
        *e = len;
    }
    let copy = CopyKernel::new(&[g.groups, og, kg], &[kg * og, 1, og], &[og * kg, kg, 1], 0);
    let id = copy.compile(cx.jit)?;
    data::call(
        cx,
        id,
        copy.units(),
        copy.grain(),
        vec![dwt],
        vec![copy.in_extent(), copy.out_extent()],
        dw,
    )
}

/// The sizes of a linear gradient: (rows, out features, in features),
/// with `wide` the operand holding the in features (w or x).
fn linear_sizes(
    cx: &LowerCx,
    node: &Node,
    wide: &[usize],
) -> Result<(usize, usize, usize), BackError> {
    let dy = cx.shape(node.inputs[0])?;
    let out = *dy
        .last()
        .ok_or_else(|| bad(node, "dy is a scalar".into()))?;
    let inn = *wide
        .last()
        .ok_or_else(|| bad(node, "the second operand is a scalar".into()))?;
    Ok((dy.iter().product::<usize>() / out.max(1), out, inn))
}

/// `dx[rows, in] = dy[rows, out] · W[out, in]`.
fn linear_grad_input(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let w = cx.shape(node.inputs[1])?;
    let (rows, out, inn) = linear_sizes(cx, node, &w)?;
    if w.len() != 2 || w[0] != out {
        let dy = cx.shape(node.inputs[0])?;
        return Err(bad(
            node,
            format!("dy {dy:?} and weight {w:?} do not fit [.., out] x [out, in]"),
        ));
    }
    linear_gemm(cx, node, rows, inn, out, Strides::row_major(out))
}

/// `dW[out, in] = dy[rows, out]ᵀ · x[rows, in]`.
fn linear_grad_weight(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let x = cx.shape(node.inputs[1])?;
    let (rows, out, inn) = linear_sizes(cx, node, &x)?;
    if x.iter().product::<usize>() != rows * inn {
        let dy = cx.shape(node.inputs[0])?;
        return Err(bad(
            node,
            format!("dy {dy:?} and input {x:?} do not have the same leading dims"),
        ));
    }
    linear_gemm(cx, node, out, inn, rows, Strides::transposed(out))
}

/// One GEMM `C[m×n] = dy·B` with dy read through `a` and input 1
/// row-major with `n` columns.
fn linear_gemm(
    cx: &mut LowerCx,
    node: &Node,
    m: usize,
    n: usize,
    k: usize,
    a: Strides,
) -> Result<(), BackError> {
    emit(
        cx,
        node,
        Spec {
            items: 1,
            groups: 1,
            m,
            n,
            k,
            a: Side::value(node.inputs[0], 0, 0, a),
            b: Side::value(node.inputs[1], 0, 0, Strides::row_major(n)),
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
            bias: None,
        },
    )
}

mod implicit;
#[cfg(test)]
mod tests;
mod wgrad;
mod winograd;
