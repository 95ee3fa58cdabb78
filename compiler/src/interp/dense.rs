//! Reference semantics of the dense ops: written for clarity, not speed
//! (plain loops over multi-indices), following PyTorch's definitions.

use super::array::{broadcast_index, strides, unravel, Array};
use crate::ir::Attr;

/// Attribute access for the kernels.
pub struct Attrs<'a>(pub &'a [(&'static str, Attr)]);

impl Attrs<'_> {
    fn get(&self, k: &str) -> Option<&Attr> {
        self.0.iter().find(|(n, _)| *n == k).map(|(_, v)| v)
    }
    /// An integer attribute.
    pub fn int(&self, k: &str) -> i64 {
        match self.get(k) {
            Some(Attr::Int(v)) => *v,
            _ => 0,
        }
    }
    /// A float attribute (absent: `default`).
    pub fn float(&self, k: &str, default: f64) -> f64 {
        match self.get(k) {
            Some(Attr::Float(v)) => *v,
            _ => default,
        }
    }
    /// A list-of-ints attribute.
    pub fn ints(&self, k: &str) -> Vec<i64> {
        match self.get(k) {
            Some(Attr::Ints(v)) => v.clone(),
            _ => Vec::new(),
        }
    }
    /// A bool attribute (absent: `default`).
    pub fn bool(&self, k: &str, default: bool) -> bool {
        match self.get(k) {
            Some(Attr::Bool(v)) => *v,
            _ => default,
        }
    }
    /// A string attribute.
    pub fn str(&self, k: &str) -> &str {
        match self.get(k) {
            Some(Attr::Str(v)) => v,
            _ => "",
        }
    }
}

/// Elementwise binary op with broadcasting to `out_shape`.
pub fn binary(a: &Array, b: &Array, out_shape: &[usize], f: impl Fn(f64, f64) -> f64) -> Array {
    let n: usize = out_shape.iter().product();
    let data = (0..n)
        .map(|i| {
            let idx = unravel(i, out_shape);
            f(
                a.data[broadcast_index(&idx, &a.shape)],
                b.data[broadcast_index(&idx, &b.shape)],
            )
        })
        .collect();
    Array::new(out_shape, data)
}

/// `where(cond, x, y)` with broadcasting of all three to `out_shape`.
pub fn where_(cond: &Array, x: &Array, y: &Array, out_shape: &[usize]) -> Array {
    let n: usize = out_shape.iter().product();
    let data = (0..n)
        .map(|i| {
            let idx = unravel(i, out_shape);
            if cond.data[broadcast_index(&idx, &cond.shape)] != 0.0 {
                x.data[broadcast_index(&idx, &x.shape)]
            } else {
                y.data[broadcast_index(&idx, &y.shape)]
            }
        })
        .collect();
    Array::new(out_shape, data)
}

/// Elementwise unary op.
pub fn unary(a: &Array, f: impl Fn(f64) -> f64) -> Array {
    Array::new(&a.shape, a.data.iter().map(|&x| f(x)).collect())
}

/// The error function (Abramowitz-Stegun 7.1.26 refined by a series for small
/// arguments is not needed: we use a high-precision rational approximation).
pub fn erf(x: f64) -> f64 {
    // W. J. Cody's rational approximation via erfc for |x| > 0.5 would be
    // longer; this Taylor/continued-fraction split is accurate to ~1e-15.
    if x.abs() < 2.0 {
        let mut sum = x;
        let mut term = x;
        let x2 = x * x;
        for n in 1..60 {
            term *= -x2 / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        2.0 / std::f64::consts::PI.sqrt() * sum
    } else {
        // Continued fraction for erfc.
        let ax = x.abs();
        let mut f = 0.0;
        for n in (1..80).rev() {
            f = n as f64 / 2.0 / (ax + f);
        }
        let erfc = (-ax * ax).exp() / std::f64::consts::PI.sqrt() / (ax + f);
        (1.0 - erfc) * x.signum()
    }
}

/// Convolution over `nd` spatial dims: x [N, C, S...], w [O, C/g, K...].
pub fn conv(x: &Array, w: &Array, bias: Option<&Array>, a: &Attrs, out_shape: &[usize]) -> Array {
    let nd = x.shape.len() - 2;
    let (stride, pad, dil) = (a.ints("stride"), a.ints("pad"), a.ints("dilation"));
    let groups = a.int("groups").max(1) as usize;
    let (cin, cout) = (x.shape[1], out_shape[1]);
    let (cin_g, cout_g) = (cin / groups, cout / groups);
    let ksize = &w.shape[2..];
    let kn: usize = ksize.iter().product();
    let xs = x.strides();
    let mut out = Array::zeros(out_shape);
    let spatial_out = &out_shape[2..];
    let sp_n: usize = spatial_out.iter().product();
    for n in 0..out_shape[0] {
        for o in 0..cout {
            let g = o / cout_g;
            for sp in 0..sp_n {
                let opos = unravel(sp, spatial_out);
                let mut acc = bias.map_or(0.0, |b| b.data[o]);
                for ci in 0..cin_g {
                    let c = g * cin_g + ci;
                    for k in 0..kn {
                        let kpos = unravel(k, ksize);
                        let mut off = n * xs[0] + c * xs[1];
                        let mut inside = true;
                        for d in 0..nd {
                            let p = opos[d] as i64 * stride[d] + kpos[d] as i64 * dil[d] - pad[d];
                            if p < 0 || p >= x.shape[2 + d] as i64 {
                                inside = false;
                                break;
                            }
                            off += p as usize * xs[2 + d];
                        }
                        if inside {
                            acc += x.data[off] * w.data[(o * cin_g + ci) * kn + k];
                        }
                    }
                }
                out.data[(n * cout + o) * sp_n + sp] = acc;
            }
        }
    }
    out
}

/// `[..., in] x [out, in]^T + bias`.
pub fn linear(x: &Array, w: &Array, bias: Option<&Array>) -> Array {
    let (out_f, in_f) = (w.shape[0], w.shape[1]);
    let rows = x.data.len() / in_f;
    let mut shape = x.shape.clone();
    *shape.last_mut().expect("rank >= 1") = out_f;
    let mut data = vec![0.0; rows * out_f];
    for r in 0..rows {
        for o in 0..out_f {
            let mut acc = bias.map_or(0.0, |b| b.data[o]);
            for i in 0..in_f {
                acc += x.data[r * in_f + i] * w.data[o * in_f + i];
            }
            data[r * out_f + o] = acc;
        }
    }
    Array::new(&shape, data)
}

/// Batched matrix product with broadcast batch dims.
pub fn matmul(a: &Array, b: &Array, out_shape: &[usize]) -> Array {
    let (ra, rb) = (a.shape.len(), b.shape.len());
    let (m, k, n) = (a.shape[ra - 2], a.shape[ra - 1], b.shape[rb - 1]);
    let batch_shape = &out_shape[..out_shape.len() - 2];
    let batches: usize = batch_shape.iter().product();
    let mut out = Array::zeros(out_shape);
    for bi in 0..batches {
        let idx = unravel(bi, batch_shape);
        let a_off = broadcast_index(&idx, &a.shape[..ra - 2]) * m * k;
        let b_off = broadcast_index(&idx, &b.shape[..rb - 2]) * k * n;
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0;
                for p in 0..k {
                    acc += a.data[a_off + i * k + p] * b.data[b_off + p * n + j];
                }
                out.data[bi * m * n + i * n + j] = acc;
            }
        }
    }
    out
}

/// `permute` with `dims`.
pub fn permute(x: &Array, dims: &[i64], out_shape: &[usize]) -> Array {
    let xs = x.strides();
    let n = x.data.len();
    let data = (0..n)
        .map(|i| {
            let idx = unravel(i, out_shape);
            idx.iter()
                .zip(dims)
                .map(|(&p, &d)| p * xs[d as usize])
                .sum::<usize>()
        })
        .map(|src| x.data[src])
        .collect();
    Array::new(out_shape, data)
}

/// Copies `out_shape`-sized region starting at `start` with `step` along `dim`.
pub fn slice(x: &Array, dim: usize, start: usize, step: usize, out_shape: &[usize]) -> Array {
    let xs = x.strides();
    let n: usize = out_shape.iter().product();
    let data = (0..n)
        .map(|i| {
            let mut idx = unravel(i, out_shape);
            idx[dim] = start + idx[dim] * step;
            x.data[idx.iter().zip(&xs).map(|(a, b)| a * b).sum::<usize>()]
        })
        .collect();
    Array::new(out_shape, data)
}

/// Concatenation along `dim`.
pub fn concat(xs: &[&Array], dim: usize, out_shape: &[usize]) -> Array {
    let outer: usize = out_shape[..dim].iter().product();
    let mut data = Vec::with_capacity(out_shape.iter().product());
    for o in 0..outer {
        for x in xs {
            let chunk: usize = x.shape[dim..].iter().product();
            data.extend_from_slice(&x.data[o * chunk..(o + 1) * chunk]);
        }
    }
    Array::new(out_shape, data)
}

/// Normalises `x` over groups of `inner` consecutive elements per (n, group),
/// then applies per-channel scale/shift: shared by group and layer norm.
pub fn normalize(x: &[f64], eps: f64) -> Vec<f64> {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    x.iter().map(|v| (v - mean) / (var + eps).sqrt()).collect()
}

/// Pooling over `nd` spatial dims (`max`, or average with PyTorch's divisor rules).
pub fn pool(x: &Array, a: &Attrs, out_shape: &[usize], is_max: bool) -> Array {
    let nd = x.shape.len() - 2;
    let (k, stride, pad) = (a.ints("k"), a.ints("stride"), a.ints("pad"));
    let dil = if is_max {
        a.ints("dilation")
    } else {
        vec![1; nd]
    };
    let include_pad = a.bool("count_include_pad", true);
    let spatial_out = &out_shape[2..];
    let sp_n: usize = spatial_out.iter().product();
    let kshape: Vec<usize> = k.iter().map(|&v| v as usize).collect();
    let kn: usize = kshape.iter().product();
    let xs = x.strides();
    let mut out = Array::zeros(out_shape);
    for nc in 0..out_shape[0] * out_shape[1] {
        for sp in 0..sp_n {
            let opos = unravel(sp, spatial_out);
            let mut best = f64::NEG_INFINITY;
            let mut sum = 0.0;
            let mut count = 0usize;
            let mut padded_count = 1i64;
            for d in 0..nd {
                let start = opos[d] as i64 * stride[d] - pad[d];
                let end = (start + k[d]).min(x.shape[2 + d] as i64 + pad[d]);
                padded_count *= end - start;
            }
            for kk in 0..kn {
                let kpos = unravel(kk, &kshape);
                let mut off = nc * xs[1];
                let mut inside = true;
                for d in 0..nd {
                    let p = opos[d] as i64 * stride[d] - pad[d] + kpos[d] as i64 * dil[d];
                    if p < 0 || p >= x.shape[2 + d] as i64 {
                        inside = false;
                        break;
                    }
                    off += p as usize * xs[2 + d];
                }
                if inside {
                    best = best.max(x.data[off]);
                    sum += x.data[off];
                    count += 1;
                }
            }
            out.data[nc * sp_n + sp] = if is_max {
                best
            } else if include_pad {
                sum / padded_count as f64
            } else {
                sum / count.max(1) as f64
            };
        }
    }
    out
}

/// PyTorch's adaptive pooling over H, W: bin `i` covers
/// `floor(i*in/out) .. ceil((i+1)*in/out)`.
pub fn adaptive_pool(x: &Array, out_shape: &[usize], is_max: bool) -> Array {
    let (h, w) = (x.shape[2], x.shape[3]);
    let (oh, ow) = (out_shape[2], out_shape[3]);
    let mut out = Array::zeros(out_shape);
    for nc in 0..out_shape[0] * out_shape[1] {
        for i in 0..oh {
            let (h0, h1) = (i * h / oh, ((i + 1) * h).div_ceil(oh));
            for j in 0..ow {
                let (w0, w1) = (j * w / ow, ((j + 1) * w).div_ceil(ow));
                let vals = (h0..h1).flat_map(|y| (w0..w1).map(move |xx| (y, xx)));
                let items: Vec<f64> = vals
                    .map(|(y, xx)| x.data[nc * h * w + y * w + xx])
                    .collect();
                out.data[nc * oh * ow + i * ow + j] = if is_max {
                    items.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
                } else {
                    items.iter().sum::<f64>() / items.len() as f64
                };
            }
        }
    }
    out
}

/// Applies `f` to each 1-D lane along `dim`, writing a lane of the same length.
pub fn along(x: &Array, dim: usize, f: impl Fn(&[f64]) -> Vec<f64>) -> Array {
    let st = strides(&x.shape);
    let len = x.shape[dim];
    let mut out = x.clone();
    let outer: usize = x.shape[..dim].iter().product();
    let inner: usize = x.shape[dim + 1..].iter().product();
    for o in 0..outer {
        for i in 0..inner {
            let base = o * len * inner + i;
            let lane: Vec<f64> = (0..len).map(|k| x.data[base + k * st[dim]]).collect();
            for (k, v) in f(&lane).into_iter().enumerate() {
                out.data[base + k * st[dim]] = v;
            }
        }
    }
    out
}

/// Log-softmax of one lane.
pub fn log_softmax(lane: &[f64]) -> Vec<f64> {
    let m = lane.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + lane.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    lane.iter().map(|v| v - lse).collect()
}

/// Reduction over `dims` (sorted), producing `out_shape` (keepdim or not).
pub fn reduce(
    x: &Array,
    dims: &[usize],
    out_shape: &[usize],
    init: f64,
    f: impl Fn(f64, f64) -> f64,
) -> Array {
    let kept: Vec<usize> = x
        .shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if dims.contains(&i) { 1 } else { d })
        .collect();
    let mut acc = vec![init; kept.iter().product()];
    for (i, &v) in x.data.iter().enumerate() {
        let idx = unravel(i, &x.shape);
        let j = broadcast_index(&idx, &kept);
        acc[j] = f(acc[j], v);
    }
    Array::new(out_shape, acc)
}
