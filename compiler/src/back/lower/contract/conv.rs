//! `conv1d` and `conv2d` as GEMMs, per image:
//!
//! - NCHW (the default): `out[OC, OH·OW] = W[OC, C/g·KH·KW] · col[C/g·KH·KW,
//!   OH·OW]` per group; `col` is packed by an im2col kernel, except for
//!   1x1 stride-1 unpadded convolutions, which read `x` directly. The
//!   epilogue runs over `Rows { channels: OC, inner: OH·OW }` with the bias
//!   per channel.
//! - NHWC (`layout = "nhwc"`, set by the layout pass, conv2d only): x is
//!   `[N, H, W, C]`, the weight already `[OC, KH, KW, C/g]`, the result
//!   `[N, OH, OW, OC]`: `out[OH·OW, OC] = col[OH·OW, KH·KW·C/g] · Wᵀ` per
//!   group, W read transposed through its strides; 1x1 stride-1 unpadded
//!   convolutions multiply x itself as one `N·H·W`-row GEMM. The epilogue
//!   runs over `Rows { channels: 1, inner: OC }` with the bias per column.
//!   When the weight is packed ([`prepack`]; inference plans on the packed
//!   GEMM), an NHWC convolution is instead **one implicit GEMM over the
//!   whole batch** (per group): `out[N·OH·OW, OC/g] = A · Wᵀ` with A read
//!   straight from x through the window geometry
//!   ([`netc_runtime::gemm::conv`]), no im2col panel and no scratch.
//!
//! A 1-D convolution is the 2-D one with a height of 1.

use super::{emit, ints, prepack, Side, Spec, Src};
use crate::back::elementwise::{Bcast, Domain};
use crate::back::im2col::{Im2col, Layout};
use crate::back::lower::LowerCx;
use crate::back::BackError;
use crate::ir::{Attr, Node};
use netc_runtime::gemm::packed::Prepacked;
use netc_runtime::gemm::Strides;

/// Whether `node` is a convolution in the NHWC layout (`layout = "nhwc"`).
pub(super) fn is_nhwc(node: &Node) -> bool {
    matches!(node.op.attr("layout"), Some(Attr::Str(s)) if s == "nhwc")
}

/// Lowers a `conv1d` or `conv2d` node.
pub(super) fn lower(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    if let Some(done) = super::grad::implicit_forward(cx, node) {
        return done;
    }
    if let Some(done) = super::grad::winograd_inference(cx, node) {
        return done;
    }
    let nd = if node.op.name == "conv1d" { 1 } else { 2 };
    let bad = |what: String| {
        BackError(format!(
            "`{}` at {}: {what}",
            node.op.name,
            if node.path.is_empty() {
                "the model"
            } else {
                &node.path
            }
        ))
    };
    let layout = match node.op.attr("layout") {
        None => Layout::Nchw,
        Some(Attr::Str(s)) if s == "nchw" => Layout::Nchw,
        Some(Attr::Str(s)) if s == "nhwc" && nd == 2 => Layout::Nhwc,
        Some(other) => {
            return Err(bad(format!(
                "layout {other:?} is not supported (this back end runs \"nchw\", and \"nhwc\" for conv2d)"
            )))
        }
    };
    let window = |what: &str| -> Result<[usize; 2], BackError> {
        let v = ints(node, what)?;
        let pos = |x: i64| usize::try_from(x).map_err(|_| bad(format!("negative {what} {x}")));
        match v[..] {
            [l] if nd == 1 => Ok([if what == "pad" { 0 } else { 1 }, pos(l)?]),
            [h, w] if nd == 2 => Ok([pos(h)?, pos(w)?]),
            _ => Err(bad(format!("{what} {v:?} has not {nd} entries"))),
        }
    };
    let (stride, pad, dilation) = (window("stride")?, window("pad")?, window("dilation")?);
    let groups = match node.op.attr("groups") {
        Some(Attr::Int(g)) if *g >= 1 => *g as usize,
        None => 1,
        other => return Err(bad(format!("groups {other:?} must be a positive integer"))),
    };
    if stride.contains(&0) || dilation.contains(&0) {
        return Err(bad("strides and dilations must be at least 1".into()));
    }
    let (xs, ws, os) = (
        cx.shape(node.inputs[0])?,
        cx.shape(node.inputs[1])?,
        cx.shape(node.outputs[0])?,
    );
    // Everything as 2-D: [N, C, H, W] sizes whatever the layout.
    let two_d = |s: &[usize]| -> Vec<usize> {
        if nd == 1 {
            vec![s[0], s[1], 1, s[2]]
        } else {
            s.to_vec()
        }
    };
    let (xs, ws, os) = (two_d(&xs), two_d(&ws), two_d(&os));
    let (n, c, h, w, oc, kh, kw, cg, oh, ow) = match layout {
        Layout::Nchw => (
            xs[0], xs[1], xs[2], xs[3], ws[0], ws[2], ws[3], ws[1], os[2], os[3],
        ),
        Layout::Nhwc => (
            xs[0], xs[3], xs[1], xs[2], ws[0], ws[1], ws[2], ws[3], os[1], os[2],
        ),
    };
    if c != cg * groups
        || !oc.is_multiple_of(groups)
        || os[if layout == Layout::Nchw { 1 } else { 3 }] != oc
    {
        return Err(bad(format!(
            "input {xs:?}, weight {ws:?}, output {os:?} do not fit groups = {groups} in the {layout:?} layout"
        )));
    }
    let (og, taps, spatial) = (oc / groups, kh * kw, oh * ow);
    let pointwise = taps == 1 && stride == [1, 1] && pad == [0, 0];
    let unfold = Im2col {
        layout,
        c,
        groups,
        h,
        w,
        kh,
        kw,
        stride,
        pad,
        dilation,
        oh,
        ow,
        flip: false,
    };
    let pack = (!pointwise).then_some((unfold, node.inputs[0]));
    let (x, wt) = (node.inputs[0], node.inputs[1]);
    let kg = cg * taps;
    let spec = match layout {
        Layout::Nchw => Spec {
            items: n,
            groups,
            m: og,
            n: spatial,
            k: kg,
            a: Side::value(wt, 0, og * kg, Strides::row_major(kg)),
            b: match pack {
                Some(_) => Side {
                    src: Src::Packed,
                    offset: 0,
                    item: 0,
                    group: kg * spatial,
                    strides: Strides::row_major(spatial),
                },
                None => Side::value(x, c * h * w, cg * h * w, Strides::row_major(h * w)),
            },
            c_item: oc * spatial,
            c_group: og * spatial,
            ldc: spatial,
            pack,
            unpack: None,
            accumulate: false,
            domain: Domain::Rows {
                channels: oc as u64,
                inner: spatial as u64,
            },
            bias: node.inputs.get(2).map(|&b| (b, Bcast::PerChannel)),
        },
        Layout::Nhwc => {
            let implicit =
                prepack::weight_panels(cx, node).is_some_and(|(_, p)| p.side == Prepacked::B);
            let geom = unfold.conv_geom(n);
            let (items, m, a, pack) = match pack {
                _ if implicit => (
                    1,
                    n * spatial,
                    Side {
                        src: Src::Implicit(x, geom),
                        offset: 0,
                        item: 0,
                        group: cg,
                        strides: Strides::row_major(c),
                    },
                    None,
                ),
                Some(_) => (
                    n,
                    spatial,
                    Side {
                        src: Src::Packed,
                        offset: 0,
                        item: 0,
                        group: kg,
                        strides: Strides::row_major(taps * c),
                    },
                    pack,
                ),
                None => (
                    1,
                    n * spatial,
                    Side::value(x, 0, cg, Strides::row_major(c)),
                    None,
                ),
            };
            Spec {
                items,
                groups,
                m,
                n: og,
                k: kg,
                a,
                b: Side::value(wt, 0, og * kg, Strides::transposed(kg)),
                c_item: spatial * oc,
                c_group: og,
                ldc: oc,
                pack,
                unpack: None,
                accumulate: false,
                domain: Domain::Rows {
                    channels: 1,
                    inner: oc as u64,
                },
                bias: node.inputs.get(2).map(|&b| (b, Bcast::PerColumn)),
            }
        }
    };
    emit(cx, node, spec)
}
