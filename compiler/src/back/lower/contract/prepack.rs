//! Weights packed once: when a contraction's weight (`linear`, `conv1d`,
//! `conv2d` input 1) is a parameter or a parameter-derived value, a
//! prepare step lays it out in the panel format of the runtime's packed
//! GEMM ([`netc_runtime::gemm::packed`]) in the persistent region, and the
//! contraction reads those panels instead of repacking the weight on
//! every call.
//!
//! The weight's role follows the GEMM the node lowers to: an NCHW
//! convolution is `W[OC/g, k]·col`, so W is A; `linear` (`x·Wᵀ`) and NHWC
//! convolutions (`col·Wᵀ`) read W as B through transposed strides.
//! An NHWC convolution with its weight packed runs as an implicit GEMM
//! ([`conv`]).
//! [`persistent_len`] sizes the region before lowering from the same
//! description ([`weight_panels`]) that [`apply`] uses.

use super::{conv, Side, Spec, Src};
use crate::back::lower::LowerCx;
use crate::back::BackError;
use crate::ir::{Attr, Node, ValueId};
use crate::options::{CompileOptions, GemmChoice};
use netc_runtime::gemm::kernel_avx512;
use netc_runtime::gemm::packed::{PackPanels, Prepacked};
use netc_runtime::gemm::Strides;
use netc_runtime::plan::{Rows, Step, Work};
use std::collections::HashSet;
use std::sync::Arc;

/// Whether contractions with a constant weight pack it once: the
/// `packed` GEMM, or `auto` on a CPU with AVX-512F (the micro-kernel's).
pub fn enabled(cx: &LowerCx) -> bool {
    enabled_for(&cx.options)
}

/// [`enabled`] for plans built with `options`.
pub fn enabled_for(options: &CompileOptions) -> bool {
    match options.gemm {
        GemmChoice::Packed => true,
        GemmChoice::Auto => kernel_avx512::available(),
        GemmChoice::Native | GemmChoice::Cranelift => false,
    }
}

/// The weight of `node` and how it is packed, when the node is a
/// `linear` or convolution of an inference graph whose weight is
/// parameter-derived and packing is enabled (under `auto`, not for a B-side weight narrower than two
/// panels); `None` otherwise (the contraction reads the weight as is).
pub fn weight_panels(cx: &LowerCx, node: &Node) -> Option<(ValueId, PackPanels)> {
    if !enabled(cx) {
        return None;
    }
    let &w = node.inputs.get(1)?;
    // A GEMV reads its weight once per call, in place.
    if super::gemv_linear(cx, node) {
        return None;
    }
    // Training plans keep their weights unpacked: with packing, the
    // eeg_ccnn gradients in tests/training.rs drifted from PyTorch's
    // (conv1.bias by 4e-3, loss exact); not yet explained. Inference plans
    // pack, also for models whose file has a `train` section.
    if !cx.is_derived(w) || cx.training {
        return None;
    }
    // A Winograd convolution packs its weight's transform instead.
    if super::grad::runs_winograd_inference(cx, node) {
        return None;
    }
    let ws = cx.shape(w).ok()?;
    let (oc, k) = (*ws.first()?, ws.get(1..)?.iter().product::<usize>());
    let panels = match node.op.name {
        "linear" if ws.len() == 2 => PackPanels {
            side: Prepacked::B,
            dim: oc,
            k,
            strides: Strides::transposed(k),
            group_stride: 0,
            groups: 1,
        },
        "conv1d" | "conv2d" => {
            let groups = match node.op.attr("groups") {
                Some(Attr::Int(g)) if *g >= 1 => *g as usize,
                None => 1,
                _ => return None,
            };
            let og = oc.checked_div(groups)?;
            let (side, strides) = if conv::is_nhwc(node) {
                (Prepacked::B, Strides::transposed(k))
            } else {
                (Prepacked::A, Strides::row_major(k))
            };
            PackPanels {
                side,
                dim: og,
                k,
                strides,
                group_stride: og * k,
                groups,
            }
        }
        _ => return None,
    };
    // `auto` leaves a `linear` weight whose B side is narrower than two
    // panels to the native GEMM: with a tall per-call A the accumulator
    // tile is then at most half used, and `examples/packed_speed` measured
    // the `gemm` crate ahead there (3136×32×1152, 12544×64×147). NHWC
    // convolutions run the implicit GEMM, whose tall tiles cover narrow
    // products.
    let narrow =
        panels.side == Prepacked::B && panels.dim < 2 * kernel_avx512::NR && !conv::is_nhwc(node);
    if narrow && cx.options.gemm == GemmChoice::Auto {
        return None;
    }
    (panels.dim > 0 && panels.k > 0).then_some((w, panels))
}

/// Persistent elements the packed weights of `nodes` take (one copy per
/// distinct weight), and their Winograd weight transforms (one per
/// convolution).
pub fn persistent_len(cx: &LowerCx, nodes: &[&Node]) -> usize {
    let mut seen = HashSet::new();
    super::grad::winograd_persistent_len(cx, nodes)
        + nodes
            .iter()
            .filter_map(|n| weight_panels(cx, n))
            .filter(|(w, _)| seen.insert(*w))
            .map(|(_, p)| align(p.groups * p.group_len()))
            .sum::<usize>()
}

/// Rounds up to the arena alignment (16 floats), as the persistent
/// region does.
fn align(elems: usize) -> usize {
    elems.div_ceil(16) * 16
}

/// Points the weight side of `spec` at the packed panels of `node`'s
/// weight (emitting the prepare step that packs them, once per weight)
/// and says which side that is; [`Prepacked::Neither`] when the weight is
/// not packed or the spec does not read it the way the panels assume.
pub fn apply(cx: &mut LowerCx, node: &Node, spec: &mut Spec) -> Result<Prepacked, BackError> {
    let Some((w, p)) = weight_panels(cx, node) else {
        return Ok(Prepacked::Neither);
    };
    let side = match p.side {
        Prepacked::A => &mut spec.a,
        _ => &mut spec.b,
    };
    let reads_weight = matches!(side.src, Src::Value(v) if v == w)
        && side.offset == 0
        && side.item == 0
        && side.strides == p.strides
        && (p.groups == 1 || side.group == p.group_stride)
        && spec.groups == p.groups
        && (if p.side == Prepacked::A {
            spec.m
        } else {
            spec.n
        }) == p.dim
        && spec.k == p.k;
    if !reads_weight {
        return Ok(Prepacked::Neither);
    }
    let total = p.groups * p.group_len();
    let buf = match cx.gemm_packed(w) {
        Some(b) => b,
        None => {
            let src = cx.buf(w)?;
            let src_len = cx.numel(w)?;
            let dst = cx.persistent(total);
            cx.preparing(|cx| {
                cx.push(Step {
                    work: Work::Rows(Rows {
                        kernel: Arc::new(p),
                        rows: p.groups * p.blocks(),
                        width: p.row_len(),
                        grain: 1,
                    }),
                    inputs: vec![src],
                    output: dst,
                    extents: vec![src_len, total],
                })
            });
            cx.set_gemm_packed(w, dst);
            dst
        }
    };
    *side = Side {
        src: Src::Buf(buf, total),
        offset: 0,
        item: 0,
        group: p.group_len(),
        strides: p.strides,
    };
    Ok(p.side)
}
