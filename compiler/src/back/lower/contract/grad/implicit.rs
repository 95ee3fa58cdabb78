//! NCHW convolutions of training plans as **one implicit GEMM over the
//! whole batch** ([`netc_runtime::gemm::conv`], the inference plans'
//! NHWC routine), instead of one im2col GEMM per image:
//!
//! - the forward `conv2d` (`C[N·OH·OW, OC] = A(x) · B`,
//!   `B[(ty, tx, c), o] = W[o, c, ty, tx]`), and
//! - the stride-1 input gradient, the convolution of `dy` with the
//!   flipped kernel (`B[(ty, tx, o), c] = W[o, c, KH−1−ty, KW−1−tx]`,
//!   padding `dilation·(k−1) − pad`).
//!
//! Training plans stay NCHW, so one convolution is five steps, all in the
//! scratch region: the weight written as B ([`ConvWeightRows`]) and packed
//! into the packed GEMM's panels ([`PackPanels`]; the weights change every
//! step, so they are packed every step: `OC·C·KH·KW` floats, small next
//! to the product), the input transposed to NHWC ([`ChannelsLast`]), the
//! implicit GEMM into an NHWC result, and the transpose of that result
//! into the NCHW output.
//!
//! The bias and fused followers run in the GEMM's block hook on the NHWC
//! result (bias per column) when they read no other tensor; otherwise
//! (e.g. a fused `relu_grad`, which reads the NCHW activation) as one
//! elementwise step over the NCHW output after the transpose.
//!
//! Why: per image the products are small (eeg_ccnn's 9×9 maps give
//! 81-column GEMMs) and the weight is packed again for every image; one
//! product of `N·OH·OW` rows keeps the micro-kernel's tiles full and packs
//! the weight once.

use super::super::{epilogue_chain, prepack};
use super::Geometry;
use crate::back::elementwise::{Bcast, Domain};
use crate::back::lower::LowerCx;
use crate::back::BackError;
use crate::ir::{Node, ValueId};
use netc_runtime::gemm::conv::ConvGeom;
use netc_runtime::gemm::packed::{packed_b_len, PackPanels, Prepacked};
use netc_runtime::gemm::{Gemm, Strides};
use netc_runtime::plan::{Buf, Contraction, Epilogue, Operand, RowKernel, Rows, Step, Work};
use netc_runtime::train::layout::{ChannelsLast, ConvWeightRows};
use std::sync::Arc;

/// The largest per-image map (pixels) that runs as an implicit GEMM.
/// Above it the per-image GEMMs are long enough already, and the two
/// transposes cost more than they save: densenet121 at batch 8 (maps up to
/// 112×112) took 1.15–1.25× longer per step with every convolution
/// implicit, vggish at batch 32 (up to 96×64) was level; with maps up to
/// 1024 pixels (densenet's 28×28 included) densenet121 was still 2–11%
/// slower (loaded machine). eeg_ccnn's 9×9 maps gain 1.2–1.3×.
const MAX_PIXELS: usize = 256;

/// The fewest GEMM rows (`N·OH·OW`) that run as an implicit GEMM: the
/// driver hands out blocks of `MC` = 384 rows, so a shorter product
/// leaves a thread idle (densenet121's 14×14 and 7×7 maps at batch 8,
/// 1568 and 392 rows, ran 5% slower per step than per image).
const MIN_ROWS: usize = 8 * netc_runtime::gemm::packed::MC;

/// Whether a convolution of `g` in this plan runs as an implicit GEMM: a
/// training plan (inference plans have their own NHWC path), outside the
/// prepare steps, with the packed GEMM's micro-kernel enabled, one group,
/// a kernel of more than one tap (a 1×1 convolution reads its input as
/// the GEMM operand directly, no im2col to save), maps of at most
/// [`MAX_PIXELS`] and at least [`MIN_ROWS`] rows over the batch.
pub(super) fn applies(cx: &LowerCx, g: &Geometry) -> bool {
    packs_per_step(cx) && fits(g)
}

/// Whether this plan can pack a weight in a run step for an implicit
/// GEMM: a training plan outside the prepare steps, on the packed GEMM.
fn packs_per_step(cx: &LowerCx) -> bool {
    cx.training && !cx.in_prepare && prepack::enabled(cx)
}

/// The geometric conditions of [`applies`].
pub(super) fn fits(g: &Geometry) -> bool {
    g.groups == 1
        && g.kh * g.kw > 1
        && g.spatial().max(g.h * g.w) <= MAX_PIXELS
        && g.n * g.spatial().min(g.h * g.w) >= MIN_ROWS
}

/// The most output channels for which a forward convolution runs as an
/// implicit GEMM whatever its map size: products this narrow take the
/// GEMM's 14×32 tall tiles, where a per-image GEMM of `OC` rows leaves
/// most of the `gemm` crate's tile idle (densenet121's 32-channel 3×3
/// convolutions on 56×56 maps ran at 55 GFLOP/s per image).
const NARROW_OUTPUTS: usize = netc_runtime::gemm::kernel_avx512::NARROW;

/// The fewest GEMM rows of a narrow forward. The driver splits the rows
/// into near-equal blocks, one per thread when there are few: densenet121's
/// 7×7 maps at batch 8 (392 rows) ran 2.5× faster implicit than per image
/// (session 22).
const MIN_NARROW_ROWS: usize = 256;

/// Whether the forward convolution of `g` runs as an implicit GEMM:
/// [`applies`], or a narrow product ([`NARROW_OUTPUTS`]) of any map size
/// and at least [`MIN_NARROW_ROWS`] rows, with the other conditions of
/// [`applies`] (densenet121's 14×14 block at batch 8, 1568 rows: 2.1×
/// faster than per image).
pub(super) fn applies_forward(cx: &LowerCx, g: &Geometry) -> bool {
    packs_per_step(cx) && fits_forward(g)
}

/// The geometric conditions of [`applies_forward`].
pub(super) fn fits_forward(g: &Geometry) -> bool {
    fits(g)
        || (g.groups == 1
            && g.kh * g.kw > 1
            && g.oc <= NARROW_OUTPUTS
            && g.n * g.spatial() >= MIN_NARROW_ROWS)
}

/// Which convolution of `g` to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    /// The forward convolution: `x` → `y`, with an optional bias.
    Forward(Option<ValueId>),
    /// The input gradient at stride 1 with the flipped kernel's padding:
    /// `dy` → `dx`.
    GradInput([usize; 2]),
}

/// Emits `node` (reading `input` and weight `w`) as the steps of the
/// module docs; with `channels_last`, `input` and the result are NHWC
/// already (`act_layout = "nhwc"`): no transposes, the GEMM writes the
/// result and runs every follower in its hook.
pub(super) fn emit(
    cx: &mut LowerCx,
    node: &Node,
    g: &Geometry,
    (input, w): (ValueId, ValueId),
    role: Role,
    channels_last: bool,
) -> Result<(), BackError> {
    let (geom, weight, bias) = match role {
        Role::Forward(bias) => (
            g.forward_geom(),
            ConvWeightRows {
                oc: g.oc,
                c: g.c,
                kh: g.kh,
                kw: g.kw,
                flip: false,
            },
            bias,
        ),
        Role::GradInput(pad) => (
            ConvGeom {
                n: g.n,
                h: g.oh,
                w: g.ow,
                c: g.oc,
                cg: g.oc,
                kh: g.kh,
                kw: g.kw,
                stride: [1, 1],
                pad,
                dilation: g.dilation,
                oh: g.h,
                ow: g.w,
            },
            ConvWeightRows {
                oc: g.oc,
                c: g.c,
                kh: g.kh,
                kw: g.kw,
                flip: true,
            },
            None,
        ),
    };
    let (depth, cols) = (weight.depth(), weight.width());
    let (rows, in_c, in_p) = (geom.rows(), geom.c, geom.h * geom.w);
    let out_p = geom.oh * geom.ow;
    // Scratch: [x as NHWC | W as B | B packed | C as NHWC] (x and C are
    // the node's own buffers when channels last).
    let lens = [
        geom.n * in_p * in_c,
        depth * cols,
        packed_b_len(depth, cols),
        rows * cols,
    ];
    let [mut xs, wr, wp, mut cs] = scratch_regions(cx, node, lens)?;
    // The weight as B, then packed.
    let (wbuf, wlen) = (cx.buf(w)?, cx.numel(w)?);
    cx.push(rows_step(Arc::new(weight), depth, cols, (wbuf, wlen), wr));
    let panels = PackPanels {
        side: Prepacked::B,
        dim: cols,
        k: depth,
        strides: Strides::row_major(cols),
        group_stride: 0,
        groups: 1,
    };
    cx.push(rows_step(
        Arc::new(panels),
        panels.blocks(),
        panels.row_len(),
        (wr, lens[1]),
        wp,
    ));
    // The input as NHWC.
    if channels_last {
        xs = cx.buf(input)?;
    } else {
        to_nhwc(cx, input, (geom.n, in_c, in_p), xs)?;
    }
    // The epilogue: in the GEMM's hook on the NHWC rows when it reads no
    // other tensor (any when channels last: the others are NHWC too),
    // else after the transpose on the NCHW output.
    let followers = cx.followers(node);
    let last = followers.last().map_or(node.outputs[0], |f| f.outputs[0]);
    if channels_last {
        cs = cx.output(last)?;
    }
    let nhwc = epilogue_chain(
        cx.g,
        node,
        &followers,
        Domain::Rows {
            channels: 1,
            inner: cols as u64,
        },
        bias.map(|b| (b, Bcast::PerColumn)),
    );
    let (fused, after) = match nhwc {
        Ok(Some((chain, values)))
            if channels_last || values.len() == usize::from(bias.is_some()) =>
        {
            (Some((chain, values)), None)
        }
        Ok(None) => (None, None),
        Err(e) if channels_last => return Err(e),
        _ => {
            let nchw = epilogue_chain(
                cx.g,
                node,
                &followers,
                Domain::Rows {
                    channels: cols as u64,
                    inner: out_p as u64,
                },
                bias.map(|b| (b, Bcast::PerChannel)),
            )?;
            (None, nchw)
        }
    };
    let mut inputs = vec![xs, wp];
    let mut extents = vec![lens[0], lens[2]];
    let epilogue = match fused {
        Some((chain, values)) => {
            let id = chain.compile(cx.jit)?;
            let kernel = cx.jit.code(id)?;
            inputs.push(cs);
            extents.push(lens[3]);
            for v in values {
                inputs.push(cx.buf(v)?);
                extents.push(cx.numel(v)?);
            }
            Some(Epilogue {
                kernel,
                input: 2,
                units: rows,
            })
        }
        None => None,
    };
    extents.push(lens[3]);
    cx.push(Step {
        work: Work::Contraction(Box::new(Contraction {
            items: 1,
            groups: 1,
            m: rows,
            n: cols,
            k: depth,
            a: Operand {
                input: 0,
                packed: false,
                offset: 0,
                item_stride: 0,
                group_stride: 0,
                strides: Strides::row_major(in_c),
            },
            b: Operand {
                input: 1,
                packed: false,
                offset: 0,
                item_stride: 0,
                group_stride: 0,
                strides: Strides::row_major(cols),
            },
            c_item: 0,
            c_group: 0,
            ldc: cols,
            pack: None,
            epilogue,
            unpack: None,
            accumulate: false,
            gemm: Gemm::Implicit(geom),
            prologue: None,
        })),
        inputs,
        output: cs,
        extents,
    });
    if channels_last {
        return Ok(());
    }
    // The result back to NCHW.
    let out = cx.output(last)?;
    let to_nchw = ChannelsLast {
        c: cols,
        p: out_p,
        channels_last: false,
    };
    cx.push(rows_step(
        Arc::new(to_nchw),
        geom.n,
        to_nchw.width(),
        (cs, lens[3]),
        out,
    ));
    if let Some((chain, values)) = after {
        let mut bufs = vec![out];
        for v in values {
            bufs.push(cx.buf(v)?);
        }
        cx.kernel(&chain, bufs, out, geom.n * cols * out_p)?;
    }
    Ok(())
}

/// Consecutive regions of the scratch region of `lens` elements each,
/// every one starting on a 16-element boundary.
pub(super) fn scratch_regions<const K: usize>(
    cx: &mut LowerCx,
    node: &Node,
    lens: [usize; K],
) -> Result<[Buf; K], BackError> {
    let mut at = [0; K];
    let mut total = 0;
    for (a, len) in at.iter_mut().zip(lens) {
        *a = total;
        total += len.div_ceil(16) * 16;
    }
    let base = match cx.scratch(total) {
        Buf::Arena { offset, .. } => offset,
        other => {
            return Err(BackError(format!(
                "`{}` at {}: the scratch region is {other:?}, not in the arena",
                node.op.name, node.path
            )))
        }
    };
    Ok(std::array::from_fn(|i| Buf::Arena {
        offset: base + at[i],
        len: lens[i],
    }))
}

/// A row step of `rows` rows of `width` elements from one input (buffer
/// and extent) into `output`.
pub(super) fn rows_step(
    kernel: Arc<dyn RowKernel>,
    rows: usize,
    width: usize,
    (src, src_len): (Buf, usize),
    output: Buf,
) -> Step {
    Step {
        work: Work::Rows(Rows {
            kernel,
            rows,
            width,
            grain: 1,
        }),
        inputs: vec![src],
        output,
        extents: vec![src_len, rows * width],
    }
}

/// `value` (`[n, c, p]` NCHW) transposed into `dst` as NHWC.
pub(super) fn to_nhwc(
    cx: &mut LowerCx,
    value: ValueId,
    (n, c, p): (usize, usize, usize),
    dst: Buf,
) -> Result<(), BackError> {
    let kernel = ChannelsLast {
        c,
        p,
        channels_last: true,
    };
    let src = (cx.buf(value)?, cx.numel(value)?);
    cx.push(rows_step(Arc::new(kernel), n, kernel.width(), src, dst));
    Ok(())
}
