//! Reference semantics of the training ops of the norms, broadcast and
//! dropout: `batch_norm_train` (batch statistics and running-stat
//! updates), `batch_norm_grad` (PyTorch's training-mode backward),
//! `group_norm_grad` and `layer_norm_grad` (the backward of the norms over
//! each sample's groups or trailing dims), `expand` (numpy broadcast) and
//! `dropout_train` (the counter generator's mask).

use super::array::{broadcast_index, unravel, Array};
use super::dense::Attrs;
use netc_runtime::counter;

/// The result of one family op, or `None` if `name` is not in the family.
type Eval = Option<Result<Vec<Array>, String>>;

/// Evaluates `name` if it is one of this module's ops.
pub fn eval(name: &str, a: &Attrs, x: &[&Array], out: &[Vec<usize>]) -> Eval {
    let r = match name {
        "batch_norm_train" => batch_norm_train(x, a.float("eps", 1e-5), a.float("momentum", 0.1)),
        "batch_norm_grad" => batch_norm_grad(x),
        "group_norm_grad" | "layer_norm_grad" => {
            let forward = name.trim_end_matches("_grad");
            let (chunk, param) = norm_geometry(forward, a, x[1]);
            chunk_norm_grad(x, a.float("eps", 1e-5), chunk, param)
        }
        "expand" => Ok(vec![expand(x[0], &out[0])]),
        "dropout_train" => dropout_train(x, a.float("p", 0.5), a.str("key")).map(|y| vec![y]),
        _ => return None,
    };
    Some(r)
}

/// How `group_norm` or `layer_norm` (`name`) splits `x`: the length of
/// the consecutive chunks normalised together (a sample's group, or the
/// trailing `shape` dims) and the affine parameter index of each flat
/// element (its channel, or its position in the trailing dims).
pub fn norm_geometry(name: &str, a: &Attrs, x: &Array) -> (usize, Box<dyn Fn(usize) -> usize>) {
    if name == "group_norm" {
        let (c, groups) = (x.shape[1], a.int("groups") as usize);
        let inner: usize = x.shape[2..].iter().product();
        (c / groups * inner, Box::new(move |i| (i / inner) % c))
    } else {
        let n = a.ints("shape").iter().product::<i64>() as usize;
        (n, Box::new(move |i| i % n))
    }
}

/// `(dy, x[, weight]) -> dx[, dweight, dbias]` of a norm over consecutive
/// chunks of `chunk` elements with biased statistics, the affine
/// parameter of flat element `i` being `param(i)`: per chunk, with
/// `x̂ = (x − μ)·invstd` and `g = dy·w`, `dx = invstd·(g − mean(g) −
/// x̂·mean(g·x̂))`; `dweight = Σ dy·x̂` and `dbias = Σ dy` per parameter.
fn chunk_norm_grad(
    x: &[&Array],
    eps: f64,
    chunk: usize,
    param: Box<dyn Fn(usize) -> usize>,
) -> Result<Vec<Array>, String> {
    let (dy, xs, w) = match x {
        [dy, xs] => (*dy, *xs, None),
        [dy, xs, w] => (*dy, *xs, Some(*w)),
        _ => return Err(format!("takes 2 or 3 operands, given {}", x.len())),
    };
    if dy.data.len() != xs.data.len() || chunk == 0 || xs.data.len() % chunk != 0 {
        return Err(format!(
            "dy {:?} and x {:?} do not split into chunks of {chunk}",
            dy.shape, xs.shape
        ));
    }
    let params = w.map_or(0, |w| w.data.len());
    let (mut dx, mut dw, mut db) = (
        vec![0.0; xs.data.len()],
        vec![0.0; params],
        vec![0.0; params],
    );
    for start in (0..xs.data.len()).step_by(chunk) {
        let part = &xs.data[start..start + chunk];
        let mean = part.iter().sum::<f64>() / chunk as f64;
        let var = part.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / chunk as f64;
        let invstd = 1.0 / (var + eps).sqrt();
        let xhat = |j: usize| (part[j] - mean) * invstd;
        let g = |j: usize| dy.data[start + j] * w.map_or(1.0, |w| w.data[param(start + j)]);
        let mean_g = (0..chunk).map(g).sum::<f64>() / chunk as f64;
        let mean_gx = (0..chunk).map(|j| g(j) * xhat(j)).sum::<f64>() / chunk as f64;
        for j in 0..chunk {
            dx[start + j] = invstd * (g(j) - mean_g - xhat(j) * mean_gx);
            if params > 0 {
                let k = param(start + j);
                dw[k] += dy.data[start + j] * xhat(j);
                db[k] += dy.data[start + j];
            }
        }
    }
    let mut out = vec![Array::new(&xs.shape, dx)];
    if let Some(w) = w {
        out.push(Array::new(&w.shape, dw));
        out.push(Array::new(&w.shape, db));
    }
    Ok(out)
}

/// Channels, elements per (sample, channel) and elements per channel of a
/// `[N, C, ...]` array.
fn channel_geometry(x: &Array) -> Result<(usize, usize, usize), String> {
    if x.shape.len() < 2 {
        return Err(format!("input {:?} needs rank >= 2 ([N, C, ...])", x.shape));
    }
    let c = x.shape[1];
    let inner: usize = x.shape[2..].iter().product();
    Ok((c, inner, x.shape[0] * inner))
}

/// The channel of flat element `i`.
fn channel(i: usize, c: usize, inner: usize) -> usize {
    (i / inner) % c
}

/// Inputs `(x, weight, bias, running_mean, running_var)` -> `(y, mean,
/// invstd, new_running_mean, new_running_var)`; two-pass statistics.
fn batch_norm_train(x: &[&Array], eps: f64, m: f64) -> Result<Vec<Array>, String> {
    let [x, w, b, rm, rv] = x[..] else {
        return Err(format!("takes 5 operands, given {}", x.len()));
    };
    let (c, inner, count) = channel_geometry(x)?;
    if count < 2 {
        return Err(format!(
            "input {:?} has {count} value per channel; training needs at least 2",
            x.shape
        ));
    }
    let mut mean = vec![0.0; c];
    for (i, v) in x.data.iter().enumerate() {
        mean[channel(i, c, inner)] += v;
    }
    mean.iter_mut().for_each(|s| *s /= count as f64);
    let mut var = vec![0.0; c];
    for (i, v) in x.data.iter().enumerate() {
        let k = channel(i, c, inner);
        var[k] += (v - mean[k]) * (v - mean[k]);
    }
    var.iter_mut().for_each(|s| *s /= count as f64);
    let invstd: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let mut y = x.clone();
    for (i, v) in y.data.iter_mut().enumerate() {
        let k = channel(i, c, inner);
        *v = (*v - mean[k]) * invstd[k] * w.data[k] + b.data[k];
    }
    let unbias = count as f64 / (count - 1) as f64;
    let new_rm = (0..c)
        .map(|k| (1.0 - m) * rm.data[k] + m * mean[k])
        .collect();
    let new_rv = (0..c)
        .map(|k| (1.0 - m) * rv.data[k] + m * var[k] * unbias)
        .collect();
    Ok(vec![
        y,
        Array::new(&[c], mean),
        Array::new(&[c], invstd),
        Array::new(&[c], new_rm),
        Array::new(&[c], new_rv),
    ])
}

/// Inputs `(dy, x, mean, invstd, weight)` -> `(dx, dweight, dbias)`:
/// `x̂ = (x − mean)·invstd`, `dbias = Σ dy`, `dweight = Σ dy·x̂`,
/// `dx = weight·invstd·(dy − dbias/M − x̂·dweight/M)` (M values per channel).
fn batch_norm_grad(x: &[&Array]) -> Result<Vec<Array>, String> {
    let [dy, x, mean, invstd, w] = x[..] else {
        return Err(format!("takes 5 operands, given {}", x.len()));
    };
    let (c, inner, count) = channel_geometry(x)?;
    let xhat = |i: usize| {
        let k = channel(i, c, inner);
        (x.data[i] - mean.data[k]) * invstd.data[k]
    };
    let (mut dw, mut db) = (vec![0.0; c], vec![0.0; c]);
    for (i, g) in dy.data.iter().enumerate() {
        let k = channel(i, c, inner);
        db[k] += g;
        dw[k] += g * xhat(i);
    }
    let m = count as f64;
    let mut dx = dy.clone();
    for (i, g) in dx.data.iter_mut().enumerate() {
        let k = channel(i, c, inner);
        *g = w.data[k] * invstd.data[k] * (*g - db[k] / m - xhat(i) * dw[k] / m);
    }
    Ok(vec![dx, Array::new(&[c], dw), Array::new(&[c], db)])
}

/// `x` broadcast to `shape` (numpy rules: trailing dims aligned, size 1
/// repeated).
fn expand(x: &Array, shape: &[usize]) -> Array {
    let n: usize = shape.iter().product();
    let data = (0..n)
        .map(|i| x.data[broadcast_index(&unravel(i, shape), &x.shape)])
        .collect();
    Array::new(shape, data)
}

/// The u64 step seed from its f32[2] carrier (bit patterns of the low and
/// high halves). Signalling-NaN patterns do not survive the f64 carrier
/// of this interpreter (they come back quieted).
fn seed_of(seed: &Array) -> Result<u64, String> {
    let [lo, hi] = seed.data[..] else {
        return Err(format!("seed {:?} must be f32[2]", seed.shape));
    };
    let bits = |v: f64| u64::from((v as f32).to_bits());
    Ok(bits(lo) | (bits(hi) << 32))
}

/// Element `i` kept iff `counter::unit(S, key, i) >= p`, scaled by
/// `1/(1 − p)`; dropped elements are 0.
fn dropout_train(x: &[&Array], p: f64, key: &str) -> Result<Array, String> {
    let [x, seed] = x[..] else {
        return Err(format!("takes 2 operands, given {}", x.len()));
    };
    let s = seed_of(seed)?;
    let mut y = x.clone();
    for (i, v) in y.data.iter_mut().enumerate() {
        *v = if counter::unit(s, key, i as u64) >= p {
            *v / (1.0 - p)
        } else {
            0.0
        };
    }
    Ok(y)
}
