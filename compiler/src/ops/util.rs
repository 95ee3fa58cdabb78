//! Helpers shared by op families: broadcasting, output-size arithmetic,
//! PyTorch's default initialisers, FLOP counts.

use crate::diag::Diagnostic;
use crate::elab::CallCtx;
use crate::ir::{Dim, Init, TensorType, ValueId};

/// NumPy broadcasting of two shapes; `None` if they are incompatible.
pub fn broadcast(a: &[Dim], b: &[Dim]) -> Option<Vec<Dim>> {
    let n = a.len().max(b.len());
    let one = Dim::known(1);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let x = if i + a.len() >= n {
            &a[i + a.len() - n]
        } else {
            &one
        };
        let y = if i + b.len() >= n {
            &b[i + b.len() - n]
        } else {
            &one
        };
        out.push(if x == y || *y == one {
            x.clone()
        } else if *x == one {
            y.clone()
        } else {
            return None;
        });
    }
    Some(out)
}

/// The element count of a type as a FLOP-count base (0 if not linear).
pub fn numel(t: &TensorType) -> Dim {
    t.numel().unwrap_or_default()
}

/// PyTorch's default initialisation of conv/linear weights and biases:
/// `kaiming_uniform_(a = sqrt(5))`, i.e. uniform in ±1/sqrt(fan_in).
pub fn fan_in_uniform(fan_in: i64) -> Init {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    Init::Uniform {
        low: -bound,
        high: bound,
    }
}

/// Output size of a sliding window (convolution, pooling), PyTorch's formula
/// `floor((in + 2*pad - dilation*(k-1) - 1) / stride) + 1` (or `ceil` with
/// `ceil_mode`). `None` if the window does not fit.
pub fn window_out(
    input: i64,
    k: i64,
    stride: i64,
    pad: i64,
    dilation: i64,
    ceil_mode: bool,
) -> Option<i64> {
    // Checked: kernel, dilation and padding are user values.
    let span = dilation.checked_mul(k.checked_sub(1)?)?.checked_add(1)?;
    let room = input.checked_add(pad.checked_mul(2)?)?.checked_sub(span)?;
    if room < 0 || stride <= 0 {
        return None;
    }
    let mut out = if ceil_mode {
        (room + stride - 1) / stride + 1
    } else {
        room / stride + 1
    };
    // PyTorch: the last window must start inside the input or left padding.
    if ceil_mode && (out - 1) * stride >= input + pad {
        out -= 1;
    }
    Some(out)
}

/// Requires a float dtype.
pub fn expect_float(ctx: &CallCtx, v: ValueId) -> Result<TensorType, Diagnostic> {
    let t = ctx.ty(v);
    if !t.dtype.is_float() || t.sparse {
        return Err(ctx.shape_error(
            format!(
                "`{}` expects a dense float tensor, got {}",
                ctx.op_name(),
                ctx.type_text(&t)
            ),
            &[("the input", v)],
            "convert integer tensors with `cast(x, \"f32\")`",
        ));
    }
    Ok(t)
}

/// Checks an integer argument is at least `min`.
pub fn at_least(
    ctx: &mut CallCtx,
    pos: Option<usize>,
    name: &'static str,
    values: &[i64],
    min: i64,
) -> Result<(), Diagnostic> {
    if let Some(bad) = values.iter().find(|v| **v < min) {
        return Err(ctx.arg_error(
            pos,
            name,
            format!(
                "`{name}` of `{}` must be at least {min}, got {bad}",
                ctx.op_name()
            ),
            format!("use a value >= {min}"),
        ));
    }
    Ok(())
}

/// Normalises a possibly negative axis against `rank`.
pub fn axis(
    ctx: &mut CallCtx,
    pos: Option<usize>,
    name: &'static str,
    value: i64,
    rank: usize,
) -> Result<usize, Diagnostic> {
    let r = rank as i64;
    let a = if value < 0 { value + r } else { value };
    if a < 0 || a >= r {
        return Err(ctx.arg_error(
            pos,
            name,
            format!("`{name}` = {value} is out of range for a rank-{rank} tensor"),
            format!("use -{rank}..{}", r - 1),
        ));
    }
    Ok(a as usize)
}

/// An optional initialiser argument (`weight_init = normal(0, 0.01)`,
/// `bias_init = 0.0`, `uniform(-b, b)`) overriding an op's PyTorch default;
/// `None` when not given.
pub fn init_arg(ctx: &mut CallCtx, name: &'static str) -> Result<Option<Init>, Diagnostic> {
    use crate::elab::Value;
    let Some(v) = ctx.value(None, name) else {
        return Ok(None);
    };
    let num = |v: Option<&Value>| match v {
        Some(Value::Float(f)) => Some(*f),
        Some(Value::Int(n)) => Some(*n as f64),
        _ => None,
    };
    let init = match &v {
        Value::None => return Ok(None),
        Value::Int(n) => Some(Init::Const(*n as f64)),
        Value::Float(f) => Some(Init::Const(*f)),
        Value::Record(_) => match v.field("init") {
            Some(Value::Str(s)) if &**s == "uniform" => num(v.field("low"))
                .zip(num(v.field("high")))
                .map(|(low, high)| Init::Uniform { low, high }),
            Some(Value::Str(s)) if &**s == "normal" => num(v.field("mean"))
                .zip(num(v.field("std")))
                .map(|(mean, std)| Init::Normal { mean, std }),
            _ => None,
        },
        _ => None,
    };
    match init {
        Some(i) => Ok(Some(i)),
        None => Err(ctx.arg_error(
            None,
            name,
            format!(
                "`{name}` of `{}` must be a number, `uniform(low, high)` or `normal(mean, std)`",
                ctx.op_name()
            ),
            format!("e.g. `{name} = normal(0.0, 0.01)`"),
        )),
    }
}
