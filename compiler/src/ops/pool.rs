//! Pooling: max and average over 1-3 spatial dims (PyTorch's stride,
//! padding, dilation, `ceil_mode`, `count_include_pad`), adaptive pooling to
//! a fixed output size, and global average pooling.

use super::util::{at_least, expect_float, numel, window_out};
use super::Builtin;
use crate::elab::{CallCtx, OpResult};
use crate::ir::{Attr, Dim, Op, TensorType};

/// The family's built-ins.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "max_pool1d",
        build: |c| pool(c, 1, true),
    },
    Builtin {
        name: "max_pool2d",
        build: |c| pool(c, 2, true),
    },
    Builtin {
        name: "max_pool3d",
        build: |c| pool(c, 3, true),
    },
    Builtin {
        name: "avg_pool1d",
        build: |c| pool(c, 1, false),
    },
    Builtin {
        name: "avg_pool2d",
        build: |c| pool(c, 2, false),
    },
    Builtin {
        name: "avg_pool3d",
        build: |c| pool(c, 3, false),
    },
    Builtin {
        name: "adaptive_avg_pool2d",
        build: |c| adaptive(c, false),
    },
    Builtin {
        name: "adaptive_max_pool2d",
        build: |c| adaptive(c, true),
    },
    Builtin {
        name: "global_avg_pool",
        build: global_avg_pool,
    },
];

fn spatial_input(
    c: &mut CallCtx,
    x: crate::ir::ValueId,
    nd: usize,
) -> Result<TensorType, crate::diag::Diagnostic> {
    let t = expect_float(c, x)?;
    if t.rank() != nd + 2 {
        return Err(c.shape_error(
            format!(
                "`{}` expects a rank-{} input [N, C, {}], got {}",
                c.op_name(),
                nd + 2,
                ["L", "H, W", "D, H, W"][nd - 1],
                c.type_text(&t)
            ),
            &[("the input", x)],
            "pooling works on batched channel-first maps",
        ));
    }
    Ok(t)
}

/// `max_poolNd(x, k, stride = k, pad = 0, dilation = 1, ceil_mode = false)`,
/// `avg_poolNd(x, k, stride = k, pad = 0, ceil_mode = false, count_include_pad = true)`.
fn pool(c: &mut CallCtx, nd: usize, is_max: bool) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let k = c.ints(Some(1), "k", nd, None)?;
    let stride = match c.value(None, "stride") {
        Some(_) => c.ints(None, "stride", nd, None)?,
        None => k.clone(),
    };
    let pad = c.ints(None, "pad", nd, Some(0))?;
    let dilation = if is_max {
        c.ints(None, "dilation", nd, Some(1))?
    } else {
        vec![1; nd]
    };
    let ceil_mode = c.bool(None, "ceil_mode", Some(false))?;
    let include_pad = if is_max {
        false
    } else {
        c.bool(None, "count_include_pad", Some(true))?
    };
    at_least(c, Some(1), "k", &k, 1)?;
    at_least(c, None, "stride", &stride, 1)?;
    at_least(c, None, "pad", &pad, 0)?;
    at_least(c, None, "dilation", &dilation, 1)?;
    for i in 0..nd {
        if pad[i] * 2 > k[i] {
            return Err(c.arg_error(
                None,
                "pad",
                format!(
                    "`{}`: pad {} is more than half the kernel {}",
                    c.op_name(),
                    pad[i],
                    k[i]
                ),
                "PyTorch requires pad <= k / 2",
            ));
        }
    }
    let t = spatial_input(c, x, nd)?;
    let mut shape = t.shape[..2].to_vec();
    for i in 0..nd {
        let size = c.known(x, i + 2, "spatial size")?;
        let Some(o) = window_out(size, k[i], stride[i], pad[i], dilation[i], ceil_mode) else {
            return Err(c.shape_error(
                format!(
                    "`{}`: a window of {} does not fit spatial dim {i} of size {size} (pad {})",
                    c.op_name(),
                    k[i],
                    pad[i]
                ),
                &[("the input", x)],
                "use a smaller window or a larger input",
            ));
        };
        shape.push(Dim::known(o));
    }
    let out = TensorType::new(t.dtype, shape);
    let window: i64 = k.iter().product();
    let flops = numel(&out).scale(window);
    let mut op = Op::new(c.op_name())
        .with("k", Attr::Ints(k))
        .with("stride", Attr::Ints(stride))
        .with("pad", Attr::Ints(pad));
    if is_max {
        op = op.with("dilation", Attr::Ints(dilation));
    }
    op = op.with("ceil_mode", Attr::Bool(ceil_mode));
    if !is_max {
        op = op.with("count_include_pad", Attr::Bool(include_pad));
    }
    c.emit1(op, &[x], out, flops)
}

/// `adaptive_avg_pool2d(x, out)` / `adaptive_max_pool2d(x, out)`: PyTorch's
/// adaptive bins, output `[N, C, out_h, out_w]`.
fn adaptive(c: &mut CallCtx, is_max: bool) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let out_hw = c.ints(Some(1), "out", 2, None)?;
    at_least(c, Some(1), "out", &out_hw, 1)?;
    let t = spatial_input(c, x, 2)?;
    let (h, w) = (c.known(x, 2, "height")?, c.known(x, 3, "width")?);
    let mut shape = t.shape[..2].to_vec();
    shape.extend(out_hw.iter().map(|&d| Dim::known(d)));
    let out = TensorType::new(t.dtype, shape);
    // Each output reads about (h / oh) * (w / ow) inputs.
    let per = ((h + out_hw[0] - 1) / out_hw[0]) * ((w + out_hw[1] - 1) / out_hw[1]);
    let flops = numel(&out).scale(per.max(1));
    let name = if is_max {
        "adaptive_max_pool2d"
    } else {
        "adaptive_avg_pool2d"
    };
    c.emit1(
        Op::new(name).with("out", Attr::Ints(out_hw)),
        &[x],
        out,
        flops,
    )
}

/// `global_avg_pool(x)`: mean over every spatial dim, `[N, C, ...] -> [N, C]`.
fn global_avg_pool(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let t = expect_float(c, x)?;
    if t.rank() < 3 {
        return Err(c.shape_error(
            format!(
                "`global_avg_pool` expects [N, C, spatial...], got {}",
                c.type_text(&t)
            ),
            &[("the input", x)],
            "the input needs at least one spatial dim",
        ));
    }
    let out = TensorType::new(t.dtype, t.shape[..2].to_vec());
    let flops = numel(&t);
    c.emit1(Op::new("global_avg_pool"), &[x], out, flops)
}
