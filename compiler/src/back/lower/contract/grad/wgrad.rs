//! The weight gradient of a training plan's one-group convolution as one
//! pass over the whole batch ([`netc_runtime::gemm::wgrad`]), instead of
//! one im2col GEMM per image:
//!
//! 1. `x` and `dy` transposed to NHWC ([`ChannelsLast`]) into the scratch
//!    region;
//! 2. `dWᵀ[(c, ty, tx), o]` by the weight-gradient kernel, its output rows
//!    split over the threads, into the scratch region after them;
//! 3. its transpose into dW (`[OC, C·KH·KW]`).
//!
//! Why: a per-image product contracts over one image's pixels only (81
//! for eeg_ccnn's 9×9 maps), so each image sends dW through memory and
//! packs both operands again; the kernel keeps its tiles in registers over
//! the runs of a chunk of images and reads `x` and `dy` in place.

use super::implicit::{rows_step, scratch_regions, to_nhwc};
use super::Geometry;
use crate::back::lower::LowerCx;
use crate::back::BackError;
use crate::ir::Node;
use netc_runtime::gemm::kernel_avx512;
use netc_runtime::gemm::wgrad::ConvWeightGrad;
use netc_runtime::plan::{Rows, Step, Work};
use netc_runtime::train::layout::ChannelsLast;
use std::sync::Arc;

/// The largest output map (pixels per image) whose weight gradient runs
/// as one pass unless it is narrow ([`NARROW_OUTPUTS`]). Larger maps give
/// the per-image GEMMs depth enough: vggish at batch 32 (maps of 96×64
/// down to 24×16) took 1.12–1.19× longer per convolution in one pass, its
/// 128 → 256 convolutions on 24×16 maps 1.4× longer (session 22).
const MAX_PIXELS: usize = 256;

/// The most output channels whose weight gradient runs as one pass
/// whatever the map size: the per-image product `dW[OC, C·KH·KW]` has
/// only `OC` rows, and its im2col panel (14 MB per image for a 128-channel
/// 3×3 on 56×56) is written and read once per image. densenet121's
/// 32-channel 3×3 convolutions at batch 8 ran 1.26–1.34× faster in one
/// pass on 56×56 maps and 1.29–1.45× on 28×28 (session 22).
const NARROW_OUTPUTS: usize = kernel_avx512::NARROW;

/// The most input or output channels a pass serves. Wider convolutions
/// ran slower in one pass than per image: vggish's 256 → 512 on 12×8 maps
/// 1.15× longer, densenet121's 1×1 convolutions of up to 1024 channels on
/// 14×14 maps 2.3× longer (a pixel's channels are KiBs apart there, and the
/// tile's reads of `x` stride across pages; with many output channels the
/// per-image GEMMs run well).
const MAX_CHANNELS: usize = 256;

/// The fewest input channels: one tile's 8 rows.
const MIN_CHANNELS: usize = 8;

/// The fewest output pixels over the batch: below, the three extra steps
/// (two transposes in, one out) cost more than the pass saves (the SD
/// UNet's 8×8 maps at batch 2, 128 pixels: 1.1× longer).
const MIN_BATCH_PIXELS: usize = 256;

/// Whether the weight gradient of `g` runs as one pass: a training plan
/// on a CPU with AVX-512F (the kernel's tile), outside the prepare steps,
/// one group, a kernel of more than one tap (a 1×1 convolution's
/// per-image GEMMs read `x` itself: no im2col to save; 1.3–2× faster than
/// a pass on the SD UNet's), no follower fused into dW (the transpose
/// writes dW last), and maps and channels in the ranges measured faster
/// ([`MAX_PIXELS`] or [`NARROW_OUTPUTS`], [`MIN_BATCH_PIXELS`], [`MIN_CHANNELS`],
/// [`MAX_CHANNELS`]).
pub(super) fn applies(cx: &LowerCx, node: &Node, g: &Geometry) -> bool {
    cx.training && !cx.in_prepare && fits(g) && cx.followers(node).is_empty()
}

/// The conditions of [`applies`] on the CPU and the geometry.
pub(super) fn fits(g: &Geometry) -> bool {
    kernel_avx512::available()
        && g.groups == 1
        && g.kh * g.kw > 1
        && (g.spatial() <= MAX_PIXELS || g.oc <= NARROW_OUTPUTS)
        && g.n * g.spatial() >= MIN_BATCH_PIXELS
        && (MIN_CHANNELS..=MAX_CHANNELS).contains(&g.c)
        && g.oc <= MAX_CHANNELS
}

/// Emits the weight gradient `node` of `g` as the module docs describe;
/// with `channels_last`, `x` and `dy` are NHWC already (`act_layout =
/// "nhwc"`) and step 1 is left out.
pub(super) fn emit(
    cx: &mut LowerCx,
    node: &Node,
    g: &Geometry,
    channels_last: bool,
) -> Result<(), BackError> {
    let (dy, x) = (node.inputs[0], node.inputs[1]);
    let kernel = ConvWeightGrad {
        geom: g.forward_geom(),
        oc: g.oc,
    };
    let rows = kernel.result_rows();
    // Scratch: [x as NHWC | dy as NHWC | dWᵀ].
    let lens = [kernel.x_len(), kernel.dy_len(), rows * g.oc];
    let [mut xs, mut dys, dwt] = scratch_regions(cx, node, lens)?;
    if channels_last {
        (xs, dys) = (cx.buf(x)?, cx.buf(dy)?);
    } else {
        to_nhwc(cx, x, (g.n, g.c, g.h * g.w), xs)?;
        to_nhwc(cx, dy, (g.n, g.oc, g.oh * g.ow), dys)?;
    }
    cx.push(Step {
        work: Work::Rows(Rows {
            kernel: Arc::new(kernel),
            rows,
            width: g.oc,
            grain: 8,
        }),
        inputs: vec![xs, dys],
        output: dwt,
        extents: vec![lens[0], lens[1], lens[2]],
    });
    // [C·taps, OC] -> [OC, C·taps]: dW.
    let to_dw = ChannelsLast {
        c: rows,
        p: g.oc,
        channels_last: true,
    };
    let dw = cx.output(node.outputs[0])?;
    cx.push(rows_step(
        Arc::new(to_dw),
        1,
        to_dw.width(),
        (dwt, lens[2]),
        dw,
    ));
    Ok(())
}
