//! Reference semantics of the 2-D pooling gradients (docs:
//! `/work/notes/gradops.md`): `max_pool2d_grad`, `avg_pool2d_grad` and
//! `adaptive_avg_pool2d_grad`, NCHW. Each output window scatters its
//! gradient back to the input taps it read; overlapping windows add.

use super::array::Array;
use super::dense::Attrs;

/// The result of one family op, or `None` if `name` is not in the family.
type Eval = Option<Result<Vec<Array>, String>>;

/// Evaluates `name` if it is one of this module's ops.
pub fn eval(name: &str, a: &Attrs, x: &[&Array], out: &[Vec<usize>]) -> Eval {
    let r = match name {
        "max_pool2d_grad" => strided(x[0], x.get(1).copied(), a, &out[0]),
        "avg_pool2d_grad" => strided(x[0], None, a, &out[0]),
        "adaptive_avg_pool2d_grad" => adaptive(x[0], &out[0]),
        _ => return None,
    };
    Some(r.map(|dx| vec![dx]))
}

/// `[planes, H, W]` sizes of an NCHW shape.
fn planes(shape: &[usize]) -> Result<(usize, usize, usize), String> {
    match shape[..] {
        [n, c, h, w] => Ok((n * c, h, w)),
        _ => Err(format!("{shape:?} is not [N, C, H, W]")),
    }
}

/// The taps of one strided window along one axis: `(first position,
/// taps, step, padded window size)`; positions outside `0..size` are
/// not taps.
fn taps(o: usize, k: i64, stride: i64, pad: i64, dil: i64, size: usize) -> Vec<usize> {
    let start = o as i64 * stride - pad;
    (0..k)
        .map(|t| start + t * dil)
        .filter(|&p| p >= 0 && p < size as i64)
        .map(|p| p as usize)
        .collect()
}

/// Max pooling's gradient when `x` is given (each window's `dy` goes to
/// its first maximal tap in row-major order, NaN counting as maximal as in
/// PyTorch's CPU kernel), else average pooling's.
fn strided(dy: &Array, x: Option<&Array>, a: &Attrs, xshape: &[usize]) -> Result<Array, String> {
    let (p, h, w) = planes(xshape)?;
    let (_, oh, ow) = planes(&dy.shape)?;
    let (k, s, pad) = (a.ints("k"), a.ints("stride"), a.ints("pad"));
    let dil = match a.ints("dilation") {
        d if d.len() == 2 => d,
        _ => vec![1, 1],
    };
    if k.len() != 2 || s.len() != 2 || pad.len() != 2 {
        return Err("k, stride and pad need two values each".into());
    }
    let include_pad = a.bool("count_include_pad", true);
    let mut dx = Array::zeros(xshape);
    for plane in 0..p {
        let base = plane * h * w;
        for i in 0..oh {
            let th = taps(i, k[0], s[0], pad[0], dil[0], h);
            for j in 0..ow {
                let tw = taps(j, k[1], s[1], pad[1], dil[1], w);
                let g = dy.data[(plane * oh + i) * ow + j];
                let window = th
                    .iter()
                    .flat_map(|&r| tw.iter().map(move |&c| base + r * w + c));
                if let Some(x) = x {
                    let mut best: Option<(usize, f64)> = None;
                    for at in window {
                        let v = x.data[at];
                        if best.is_none_or(|(_, b)| v > b || v.is_nan()) {
                            best = Some((at, v));
                        }
                    }
                    if let Some((at, _)) = best {
                        dx.data[at] += g;
                    }
                } else {
                    let span = |o: usize, d: usize, size: usize| {
                        let start = o as i64 * s[d] - pad[d];
                        (start + k[d]).min(size as i64 + pad[d]) - start
                    };
                    let div = if include_pad {
                        (span(i, 0, h) * span(j, 1, w)) as f64
                    } else {
                        (th.len() * tw.len()) as f64
                    };
                    for at in window {
                        dx.data[at] += g / div;
                    }
                }
            }
        }
    }
    Ok(dx)
}

/// Adaptive average pooling's gradient: bin `i` covers
/// `floor(i·in/out) .. ceil((i+1)·in/out)` and spreads `dy / bin size`.
fn adaptive(dy: &Array, xshape: &[usize]) -> Result<Array, String> {
    let (p, h, w) = planes(xshape)?;
    let (_, oh, ow) = planes(&dy.shape)?;
    let mut dx = Array::zeros(xshape);
    for plane in 0..p {
        for i in 0..oh {
            let (h0, h1) = (i * h / oh, ((i + 1) * h).div_ceil(oh));
            for j in 0..ow {
                let (w0, w1) = (j * w / ow, ((j + 1) * w).div_ceil(ow));
                let g = dy.data[(plane * oh + i) * ow + j] / ((h1 - h0) * (w1 - w0)) as f64;
                for r in h0..h1 {
                    for c in w0..w1 {
                        dx.data[plane * h * w + r * w + c] += g;
                    }
                }
            }
        }
    }
    Ok(dx)
}
