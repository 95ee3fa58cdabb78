//! The reference interpreter: runs a graph on f64 arrays with slow,
//! obviously-right semantics for each op (DESIGN.md: "every op has a
//! reference semantics"). It is the oracle that generated kernels are tested
//! against, and it checks the shape rules: every result's shape must equal
//! the type elaboration inferred.

mod array;
mod dense;
mod detect;
mod grad_bags;
mod grad_conv;
mod grad_detect;
mod grad_elementwise;
mod grad_loss;
mod grad_norm;
mod grad_pool;
mod grad_rnn;
mod grad_text;
mod layout;
mod nn;
mod signal;
mod sparse;
mod text;

pub use array::Array;

use crate::ir::{Dim, Graph, SymId, SymKind, ValueId};
use dense::Attrs;
use std::collections::HashMap;

/// Runs the forward pass of `g` (inference semantics: dropout is identity,
/// batch norm uses running statistics) and returns every output by name.
/// `params` maps parameter and buffer paths to values.
///
/// A sparse input (`sparse f32[..., V]`) is passed as a dense [`Array`] of
/// its logical shape (zeros where nothing is stored): the reference
/// semantics of the ops that consume it only read the non-zeros.
///
/// Data-dependent sizes (`K <= bound`) are bound from the first computed
/// result that has them, and checked against their bound.
pub fn run(
    g: &Graph,
    inputs: &[(&str, Array)],
    params: &HashMap<String, Array>,
) -> Result<Vec<(String, Array)>, String> {
    let mut env: Vec<Option<Array>> = vec![None; g.values.len()];
    let mut syms: HashMap<SymId, i64> = HashMap::new();
    for (name, v) in &g.inputs {
        let a = inputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a.clone())
            .ok_or_else(|| format!("input `{name}` not given"))?;
        g.bind_shape(*v, &a.shape, &mut syms)
            .map_err(|e| format!("input `{name}` {e}"))?;
        env[v.0 as usize] = Some(a);
    }
    for p in &g.params {
        let a = params
            .get(&p.path)
            .ok_or_else(|| format!("parameter `{}` not given", p.path))?;
        g.bind_shape(p.value, &a.shape, &mut syms)
            .map_err(|e| format!("parameter `{}` {e}", p.path))?;
        env[p.value.0 as usize] = Some(a.clone());
    }
    for c in &g.consts {
        let shape = concrete(g, c.value, &syms)?;
        env[c.value.0 as usize] = Some(Array::new(&shape, c.data.clone()));
    }
    for node in g.nodes.iter().filter(|n| !n.train_only) {
        let args: Vec<&Array> = node
            .inputs
            .iter()
            .map(|v| {
                env[v.0 as usize]
                    .as_ref()
                    .ok_or_else(|| format!("value %{} used before it is computed", v.0))
            })
            .collect::<Result<_, _>>()?;
        // Outputs with a not-yet-bound data-dependent size get an empty
        // placeholder shape: their ops compute the size themselves.
        let shapes: Vec<Vec<usize>> = node
            .outputs
            .iter()
            .map(|v| concrete(g, *v, &syms).unwrap_or_default())
            .collect();
        let results = eval(node.op.name, &Attrs(&node.op.attrs), &args, &shapes)
            .map_err(|e| format!("{} at {}: {e}", node.op.name, node.path))?;
        if results.len() != node.outputs.len() {
            return Err(format!(
                "{} at {}: computed {} results for {} outputs",
                node.op.name,
                node.path,
                results.len(),
                node.outputs.len()
            ));
        }
        for (v, r) in node.outputs.iter().zip(results) {
            bind_data_dependent(g, *v, &r, &mut syms)
                .map_err(|e| format!("{} at {}: {e}", node.op.name, node.path))?;
            let want = concrete(g, *v, &syms)?;
            if r.shape != want {
                return Err(format!(
                    "{} at {}: computed shape {:?}, shape rule says {:?}",
                    node.op.name, node.path, r.shape, want
                ));
            }
            env[v.0 as usize] = Some(r);
        }
    }
    g.outputs
        .iter()
        .map(|(name, v)| {
            env[v.0 as usize]
                .clone()
                .map(|a| (name.clone(), a))
                .ok_or_else(|| format!("output `{name}` not computed"))
        })
        .collect()
}

/// Binds the data-dependent symbols of `v`'s type that are still unbound
/// from the computed result `a`, and checks each against its bound.
fn bind_data_dependent(
    g: &Graph,
    v: ValueId,
    a: &Array,
    syms: &mut HashMap<SymId, i64>,
) -> Result<(), String> {
    let ty = g.ty(v);
    if ty.shape.len() != a.shape.len() {
        return Err(format!(
            "computed rank {}, shape rule says {}",
            a.shape.len(),
            g.type_text(ty)
        ));
    }
    for (d, &n) in ty.shape.iter().zip(&a.shape) {
        let [(s, 1)] = d.terms() else { continue };
        if d.constant() != 0 || syms.contains_key(s) {
            continue;
        }
        let kind = &g.symbols[s.0 as usize].kind;
        let SymKind::DataDependent { bound, .. } = kind else {
            continue;
        };
        let limit = kind.planned_bound(&|x| syms.get(&x).copied());
        match limit {
            Some(b) if n as i64 > b => {
                return Err(format!(
                    "run-time size {} = {n} exceeds its bound {b}",
                    g.sym_name(*s)
                ))
            }
            Some(_) => {}
            None => {
                return Err(format!(
                    "the bound {} of {} is not bound by the inputs",
                    g.dim_text(bound),
                    g.sym_name(*s)
                ))
            }
        }
        syms.insert(*s, n as i64);
    }
    Ok(())
}

fn concrete(g: &Graph, v: ValueId, syms: &HashMap<SymId, i64>) -> Result<Vec<usize>, String> {
    g.ty(v)
        .shape
        .iter()
        .map(|d: &Dim| {
            d.eval(&|s| syms.get(&s).copied())
                .as_known()
                .map(|n| n as usize)
                .ok_or_else(|| format!("size {} is not bound by the inputs", g.dim_text(d)))
        })
        .collect()
}

fn reduce_result(r: f64, reduction: &str, per: Array) -> Array {
    match reduction {
        "none" => per,
        "sum" => Array::new(&[], vec![per.data.iter().sum()]),
        _ => Array::new(&[], vec![r]),
    }
}

/// Evaluates one op.
fn eval(name: &str, a: &Attrs, x: &[&Array], out: &[Vec<usize>]) -> Result<Vec<Array>, String> {
    use dense::*;
    if let Some(r) = layout::eval(name, a, x, out, eval) {
        return r;
    }
    for family in [
        nn::eval,
        text::eval,
        signal::eval,
        detect::eval,
        sparse::eval,
        grad_conv::eval,
        grad_detect::eval,
        grad_norm::eval,
        grad_pool::eval,
        grad_elementwise::eval,
        grad_loss::eval,
        grad_rnn::eval,
        grad_text::eval,
        grad_bags::eval,
    ] {
        if let Some(r) = family(name, a, x, out) {
            return r;
        }
    }
    let o = &out[0];
    let one = |arr: Array| Ok(vec![arr]);
    let cmp =
        |f: fn(f64, f64) -> bool| binary(x[0], x[1], o, move |p, q| f64::from(u8::from(f(p, q))));
    match name {
        "add" => one(binary(x[0], x[1], o, |p, q| p + q)),
        "sub" => one(binary(x[0], x[1], o, |p, q| p - q)),
        "mul" => one(binary(x[0], x[1], o, |p, q| p * q)),
        "div" => one(binary(x[0], x[1], o, |p, q| p / q)),
        "pow" => one(binary(x[0], x[1], o, f64::powf)),
        "maximum" => one(binary(x[0], x[1], o, f64::max)),
        "minimum" => one(binary(x[0], x[1], o, f64::min)),
        "less" => one(binary(x[0], x[1], o, |p, q| f64::from(u8::from(p < q)))),
        "greater" => one(binary(x[0], x[1], o, |p, q| f64::from(u8::from(p > q)))),
        "less_equal" => one(cmp(|p, q| p <= q)),
        "greater_equal" => one(cmp(|p, q| p >= q)),
        "equal" => one(cmp(|p, q| p == q)),
        "not_equal" => one(cmp(|p, q| p != q)),
        "where" => one(where_(x[0], x[1], x[2], o)),
        "cast" => {
            let f: fn(f64) -> f64 = match a.str("dtype") {
                "f32" => |v| f64::from(v as f32),
                "i32" | "i64" => f64::trunc,
                "u8" => |v| v.trunc().rem_euclid(256.0),
                "bool" => |v| f64::from(u8::from(v != 0.0)),
                _ => |v| v,
            };
            one(unary(x[0], f))
        }
        "stack" => {
            let d = a.int("dim") as usize;
            let parts: Vec<Array> = x
                .iter()
                .map(|p| {
                    let mut s = p.shape.clone();
                    s.insert(d, 1);
                    Array::new(&s, p.data.clone())
                })
                .collect();
            one(concat(&parts.iter().collect::<Vec<_>>(), d, o))
        }
        "argmax" => {
            let d = a.int("dim") as usize;
            let lanes = along(x[0], d, |l| {
                let best = (0..l.len()).fold(0, |b, i| if l[i] > l[b] { i } else { b });
                vec![best as f64; l.len()]
            });
            let mut keep = x[0].shape.clone();
            keep[d] = 1;
            one(Array::new(o, slice(&lanes, d, 0, 1, &keep).data))
        }
        "bce_with_logits" => {
            let (z, t) = (x[0], x[1]);
            let pw = x.get(2).copied();
            let mut per = Array::zeros(&z.shape);
            for (i, v) in per.data.iter_mut().enumerate() {
                let (xv, tv) = (z.data[i], t.data[i]);
                let lw = pw.map_or(1.0, |p| {
                    let idx = array::unravel(i, &z.shape);
                    1.0 + (p.data[array::broadcast_index(&idx, &p.shape)] - 1.0) * tv
                });
                // (1 - t) x + lw log(1 + e^-x), written stably.
                *v = (1.0 - tv) * xv + lw * ((-xv.abs()).exp().ln_1p() + (-xv).max(0.0));
            }
            let mean = per.data.iter().sum::<f64>() / per.data.len().max(1) as f64;
            one(reduce_result(mean, a.str("reduction"), per))
        }
        "neg" => one(unary(x[0], |v| -v)),
        "relu" => one(unary(x[0], |v| v.max(0.0))),
        "tanh" => one(unary(x[0], f64::tanh)),
        "sigmoid" => one(unary(x[0], |v| 1.0 / (1.0 + (-v).exp()))),
        "silu" => one(unary(x[0], |v| v / (1.0 + (-v).exp()))),
        "exp" => one(unary(x[0], f64::exp)),
        "log" => one(unary(x[0], f64::ln)),
        "sqrt" => one(unary(x[0], f64::sqrt)),
        "abs" => one(unary(x[0], f64::abs)),
        "square" => one(unary(x[0], |v| v * v)),
        "gelu" if a.str("approximate") == "tanh" => one(unary(x[0], |v| {
            0.5 * v
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3))).tanh())
        })),
        "gelu" => one(unary(x[0], |v| {
            0.5 * v * (1.0 + erf(v / std::f64::consts::SQRT_2))
        })),
        "leaky_relu" => {
            let s = a.float("negative_slope", 0.01);
            one(unary(x[0], move |v| if v >= 0.0 { v } else { s * v }))
        }
        "clamp" => {
            let (lo, hi) = (
                a.float("min", f64::NEG_INFINITY),
                a.float("max", f64::INFINITY),
            );
            one(unary(x[0], move |v| v.clamp(lo, hi)))
        }
        "dropout" => one(x[0].clone()),
        "reshape" => one(Array::new(o, x[0].data.clone())),
        "permute" => one(permute(x[0], &a.ints("dims"), o)),
        "slice" => one(slice(
            x[0],
            a.int("dim") as usize,
            a.int("start") as usize,
            a.int("step") as usize,
            o,
        )),
        "select" => {
            let d = a.int("dim") as usize;
            let mut keep = x[0].shape.clone();
            keep[d] = 1;
            one(Array::new(
                o,
                slice(x[0], d, a.int("index") as usize, 1, &keep).data,
            ))
        }
        "concat" => one(concat(x, a.int("dim") as usize, o)),
        "split" => {
            let d = a.int("dim") as usize;
            let mut start = 0;
            Ok(out
                .iter()
                .map(|shape| {
                    let r = slice(x[0], d, start, 1, shape);
                    start += shape[d];
                    r
                })
                .collect())
        }
        "conv1d" | "conv2d" | "conv3d" => one(conv(x[0], x[1], x.get(2).copied(), a, o)),
        "linear" => one(linear(x[0], x[1], x.get(2).copied())),
        "matmul" => one(matmul(x[0], x[1], o)),
        "batch_norm" | "frozen_batch_norm" => {
            let eps = a.float("eps", 1e-5);
            let affine = name == "frozen_batch_norm" || a.bool("affine", true);
            let (w, b, mean, var) = if affine {
                (Some(x[1]), Some(x[2]), x[3], x[4])
            } else {
                (None, None, x[1], x[2])
            };
            let c = x[0].shape[1];
            let inner: usize = x[0].shape[2..].iter().product();
            let mut r = x[0].clone();
            for (i, v) in r.data.iter_mut().enumerate() {
                let ch = (i / inner) % c;
                let norm = (*v - mean.data[ch]) / (var.data[ch] + eps).sqrt();
                *v = norm * w.map_or(1.0, |w| w.data[ch]) + b.map_or(0.0, |b| b.data[ch]);
            }
            one(r)
        }
        "group_norm" | "layer_norm" => {
            let eps = a.float("eps", 1e-5);
            let (chunk, param) = grad_norm::norm_geometry(name, a, x[0]);
            let mut data = Vec::with_capacity(x[0].data.len());
            for part in x[0].data.chunks(chunk) {
                data.extend(normalize(part, eps));
            }
            if x.len() > 1 {
                let (w, b) = (x[1], x[2]);
                for (i, v) in data.iter_mut().enumerate() {
                    let k = param(i);
                    *v = *v * w.data[k] + b.data[k];
                }
            }
            one(Array::new(o, data))
        }
        "max_pool1d" | "max_pool2d" | "max_pool3d" => one(pool(x[0], a, o, true)),
        "avg_pool1d" | "avg_pool2d" | "avg_pool3d" => one(pool(x[0], a, o, false)),
        "adaptive_avg_pool2d" => one(adaptive_pool(x[0], o, false)),
        "adaptive_max_pool2d" => one(adaptive_pool(x[0], o, true)),
        "global_avg_pool" => {
            let inner: usize = x[0].shape[2..].iter().product();
            one(Array::new(
                o,
                x[0].data
                    .chunks(inner)
                    .map(|c| c.iter().sum::<f64>() / inner as f64)
                    .collect(),
            ))
        }
        "softmax" => one(along(x[0], a.int("dim") as usize, |l| {
            log_softmax(l).into_iter().map(f64::exp).collect()
        })),
        "log_softmax" => one(along(x[0], a.int("dim") as usize, log_softmax)),
        "sum" | "mean" | "amax" | "amin" => {
            let dims: Vec<usize> = a.ints("dims").iter().map(|&d| d as usize).collect();
            let (init, f): (f64, fn(f64, f64) -> f64) = match name {
                "amax" => (f64::NEG_INFINITY, f64::max),
                "amin" => (f64::INFINITY, f64::min),
                _ => (0.0, |p, q| p + q),
            };
            let mut r = reduce(x[0], &dims, o, init, f);
            if name == "mean" {
                let count: usize = dims.iter().map(|&d| x[0].shape[d]).product();
                r.data.iter_mut().for_each(|v| *v /= count as f64);
            }
            one(r)
        }
        "cross_entropy" => {
            let (logits, target) = (x[0], x[1]);
            let classes = logits.shape[1];
            let smoothing = a.float("label_smoothing", 0.0);
            let weight = x
                .get(2)
                .map(|w| w.data.clone())
                .unwrap_or_else(|| vec![1.0; classes]);
            let ls = along(logits, 1, log_softmax);
            let inner: usize = logits.shape[2..].iter().product();
            let mut per = Array::zeros(&target.shape);
            let mut weight_sum = 0.0;
            let ignore = a.int("ignore_index") as f64;
            for (i, &t) in target.data.iter().enumerate() {
                if t == ignore {
                    continue;
                }
                if t < 0.0 || t >= classes as f64 {
                    return Err(format!("target {t} is not a class index in 0..{classes}"));
                }
                let (n, s) = (i / inner, i % inner);
                let lp = |c: usize| ls.data[(n * classes + c) * inner + s];
                let t = t as usize;
                let nll = -weight[t] * lp(t);
                let smooth: f64 =
                    (0..classes).map(|c| -weight[c] * lp(c)).sum::<f64>() / classes as f64;
                per.data[i] = (1.0 - smoothing) * nll + smoothing * smooth;
                weight_sum += weight[t];
            }
            let mean = per.data.iter().sum::<f64>() / weight_sum;
            one(reduce_result(mean, a.str("reduction"), per))
        }
        "multi_margin" => {
            let (s, target) = (x[0], x[1]);
            let c = s.shape[1];
            let margin = a.float("margin", 1.0);
            let p = a.int("p");
            let mut per = Array::zeros(&target.shape);
            for (n, &t) in target.data.iter().enumerate() {
                if !(t >= 0.0 && t < c as f64) {
                    return Err(format!("target {t} is not a class index in 0..{c}"));
                }
                let t = t as usize;
                let w = x.get(2).map_or(1.0, |w| w.data[t]);
                let row = &s.data[n * c..(n + 1) * c];
                per.data[n] = w
                    * (0..c)
                        .filter(|&i| i != t)
                        .map(|i| (margin - row[t] + row[i]).max(0.0).powi(p as i32))
                        .sum::<f64>()
                    / c as f64;
            }
            let mean = per.data.iter().sum::<f64>() / per.data.len() as f64;
            one(reduce_result(mean, a.str("reduction"), per))
        }
        "mse" => {
            let per = binary(x[0], x[1], &x[0].shape, |p, q| (p - q) * (p - q));
            let mean = per.data.iter().sum::<f64>() / per.data.len() as f64;
            one(reduce_result(mean, a.str("reduction"), per))
        }
        other => Err(format!(
            "the reference interpreter has no semantics for `{other}` yet"
        )),
    }
}

#[cfg(test)]
mod grad_tests;
#[cfg(test)]
mod tests;
