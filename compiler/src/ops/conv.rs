//! Dense convolutions over 1, 2 or 3 spatial dims (NC[D]HW layout, PyTorch
//! semantics: stride, zero padding, dilation, groups, optional bias).

use super::util::{at_least, expect_float, fan_in_uniform, init_arg, window_out};
use super::Builtin;
use crate::elab::{CallCtx, OpResult};
use crate::ir::{Attr, Dim, Op, TensorType};

/// The family's built-ins.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "conv1d",
        build: |c| conv(c, 1),
    },
    Builtin {
        name: "conv2d",
        build: |c| conv(c, 2),
    },
    Builtin {
        name: "conv3d",
        build: |c| conv(c, 3),
    },
];

/// `convNd(x, out_channels, k, stride = 1, pad = 0, dilation = 1, groups = 1,
/// bias = true, weight_init = none, bias_init = none)`: weight
/// `[out, in/groups, k...]`, bias `[out]`, both PyTorch's default uniform
/// ±1/sqrt(fan_in) unless `weight_init` / `bias_init` (a number,
/// `uniform(low, high)` or `normal(mean, std)`) override it, as a model's own
/// `nn.init` calls do (e.g. torchvision's detection heads).
fn conv(c: &mut CallCtx, nd: usize) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let out_ch = c.int(Some(1), "out_channels", None)?;
    let k = c.ints(Some(2), "k", nd, None)?;
    let stride = c.ints(None, "stride", nd, Some(1))?;
    let pad = c.ints(None, "pad", nd, Some(0))?;
    let dilation = c.ints(None, "dilation", nd, Some(1))?;
    let groups = c.int(None, "groups", Some(1))?;
    let bias = c.bool(None, "bias", Some(true))?;
    let weight_init = init_arg(c, "weight_init")?;
    let bias_init = init_arg(c, "bias_init")?;
    if !bias && bias_init.is_some() {
        return Err(c.arg_error(
            None,
            "bias_init",
            format!("`conv{nd}d` has `bias = false` but a `bias_init`"),
            "drop `bias_init` or set `bias = true`",
        ));
    }
    at_least(c, Some(1), "out_channels", &[out_ch], 1)?;
    at_least(c, Some(2), "k", &k, 1)?;
    at_least(c, None, "stride", &stride, 1)?;
    at_least(c, None, "pad", &pad, 0)?;
    at_least(c, None, "dilation", &dilation, 1)?;
    at_least(c, None, "groups", &[groups], 1)?;
    let t = expect_float(c, x)?;
    if t.rank() != nd + 2 {
        let layout = ["NCL", "NCHW", "NCDHW"][nd - 1];
        return Err(c.shape_error(
            format!(
                "`conv{nd}d` expects a rank-{} input ({layout}), got {}",
                nd + 2,
                c.type_text(&t)
            ),
            &[("the input", x)],
            format!(
                "the input must be [batch, channels, {}]",
                ["length", "height, width", "depth, height, width"][nd - 1]
            ),
        ));
    }
    let in_ch = c.known(x, 1, "channel count")?;
    if in_ch % groups != 0 || out_ch % groups != 0 {
        return Err(c.shape_error(
            format!("`conv{nd}d`: groups = {groups} must divide both the input channels ({in_ch}) and out_channels ({out_ch})"),
            &[("the input", x)],
            "choose groups dividing both channel counts",
        ));
    }
    let mut out_shape = vec![t.shape[0].clone(), Dim::known(out_ch)];
    let mut window = 1;
    for i in 0..nd {
        let size = c.known(x, i + 2, "spatial size")?;
        let Some(o) = window_out(size, k[i], stride[i], pad[i], dilation[i], false) else {
            return Err(c.shape_error(
                format!(
                    "`conv{nd}d`: a kernel of {} (dilation {}) does not fit spatial dim {} of size {size} padded by {} on each side",
                    k[i], dilation[i], i, pad[i]
                ),
                &[("the input", x)],
                "use a smaller kernel, more padding, or a larger input",
            ));
        };
        out_shape.push(Dim::known(o));
        window *= k[i];
    }
    let fan_in = in_ch / groups * window;
    let mut w_shape = vec![out_ch, in_ch / groups];
    w_shape.extend(&k);
    let w = c.param(
        "weight",
        &w_shape,
        weight_init.unwrap_or_else(|| fan_in_uniform(fan_in)),
    )?;
    let mut inputs = vec![x, w];
    if bias {
        let init = bias_init.unwrap_or_else(|| fan_in_uniform(fan_in));
        inputs.push(c.param("bias", &[out_ch], init)?);
    }
    let out = TensorType::new(t.dtype, out_shape);
    let outputs = out.numel().unwrap_or_default();
    let flops = outputs.scale(2 * fan_in + i64::from(bias));
    let op = Op::new(["conv1d", "conv2d", "conv3d"][nd - 1])
        .with("stride", Attr::Ints(stride))
        .with("pad", Attr::Ints(pad))
        .with("dilation", Attr::Ints(dilation))
        .with("groups", Attr::Int(groups));
    c.emit1(op, &inputs, out, flops)
}
