//! Reference semantics of the sparse 3D convolutions (ops/sparse.rs): the
//! rule book is built from the coordinates by brute force. `sparse_tensor`,
//! `sparse_relu` and `with_features` emit no nodes of their own (records
//! and a `relu` of the features).
//!
//! Both convs are cross-correlations with spconv 2.x's weight layout
//! `[out, kz, ky, kx, in]`: output site `o` sums, over kernel offsets `k`,
//! `w[:, k, :] · f(p)` for every active input site `p = o * stride - pad +
//! k * dilation` of the same batch. `subm_conv3d` computes at the input
//! sites (same order); `sparse_conv3d` at every output site such a `p`
//! exists for, in lexicographic `(batch, z, y, x)` order, and also returns
//! those coordinates. A site outside the grid or the batch, or one given
//! twice, is an error.
//!
//! Their gradients (`grad/rules/voxel.rs`) rebuild the same rule book:
//! `sparse_conv3d_grad_input` runs it backwards (each pair adds the
//! transposed weight block times the output row's gradient to its input
//! row), `sparse_conv3d_grad_weight` sums the outer products of the pairs'
//! output gradients and input rows, `sparse_conv3d_grad_bias` sums the
//! output gradient's rows.

use super::array::{unravel, Array};
use super::dense::Attrs;
use crate::ir::Attr;
use std::collections::{BTreeSet, HashMap};

/// The result of one family op, or `None` if `name` is not in the family.
type Eval = Option<Result<Vec<Array>, String>>;

/// Evaluates `name` if it is one of this module's ops.
pub fn eval(name: &str, a: &Attrs, x: &[&Array], _out: &[Vec<usize>]) -> Eval {
    let subm = a.bool("subm", false);
    match name {
        "subm_conv3d" | "sparse_conv3d" => Some(conv(x, a, name == "subm_conv3d")),
        "sparse_conv3d_grad_input" => Some(grad_input(x, a, subm)),
        "sparse_conv3d_grad_weight" => Some(grad_weight(x, a, subm)),
        "sparse_conv3d_grad_bias" => Some(Ok(vec![grad_bias(x[0])])),
        "sparse_global_avg_pool" => Some(pool(x, a.int("batch"), None)),
        "sparse_global_avg_pool_grad" => Some(pool(x, a.int("batch"), Some(()))),
        _ => None,
    }
}

/// A site: batch, then z, y, x.
type Site = [i64; 4];

/// The rule book of a conv: its output sites and every `(output row,
/// kernel offset, input row)` where the offset's tap lands on an active
/// input site, in output-row then offset order.
struct RuleBook {
    outputs: Vec<Site>,
    pairs: Vec<(usize, usize, usize)>,
}

fn rule_book(coords: &Array, a: &Attrs, subm: bool) -> Result<RuleBook, String> {
    let (k, stride, pad, dil) = (
        a.ints("k"),
        a.ints("stride"),
        a.ints("pad"),
        a.ints("dilation"),
    );
    let (in_shape, out_grid) = (a.ints("in_shape"), a.ints("out_shape"));
    let sites: Vec<Site> = coords
        .data
        .chunks(4)
        .map(|c| [c[0] as i64, c[1] as i64, c[2] as i64, c[3] as i64])
        .collect();
    let batch = a.0.iter().find_map(|(n, v)| match v {
        Attr::Dims(d) if *n == "batch" => d.first().and_then(|d| d.as_known()),
        _ => None,
    });
    let mut index: HashMap<Site, usize> = HashMap::new();
    for (i, s) in sites.iter().enumerate() {
        if let Some(b) = batch.filter(|b| !(0..*b).contains(&s[0])) {
            return Err(format!(
                "site {s:?} has batch index {}, the tensor holds {b} samples",
                s[0]
            ));
        }
        if (0..3).any(|d| s[d + 1] < 0 || s[d + 1] >= in_shape[d]) {
            return Err(format!("site {s:?} is outside the grid {in_shape:?}"));
        }
        if index.insert(*s, i).is_some() {
            return Err(format!("site {s:?} appears twice"));
        }
    }
    let kshape: Vec<usize> = k.iter().map(|&v| v as usize).collect();
    let kn: usize = kshape.iter().product();
    // Input site of output `o` under kernel offset `kk`, if the offset lands
    // on the stride grid.
    let input_of = |o: &Site, kk: &[usize]| -> Site {
        let mut p = [o[0], 0, 0, 0];
        for d in 0..3 {
            p[d + 1] = o[d + 1] * stride[d] - pad[d] + kk[d] as i64 * dil[d];
        }
        p
    };
    let outputs: Vec<Site> = if subm {
        sites.clone()
    } else {
        // Every output site reached by an active input: o = (p + pad -
        // k * dil) / stride when that divides exactly and is inside the grid.
        let mut set = BTreeSet::new();
        for s in &sites {
            for kf in 0..kn {
                let kk = unravel(kf, &kshape);
                let mut o = [s[0], 0, 0, 0];
                let mut ok = true;
                for d in 0..3 {
                    let num = s[d + 1] + pad[d] - kk[d] as i64 * dil[d];
                    if num < 0 || num % stride[d] != 0 || num / stride[d] >= out_grid[d] {
                        ok = false;
                        break;
                    }
                    o[d + 1] = num / stride[d];
                }
                if ok {
                    set.insert(o);
                }
            }
        }
        set.into_iter().collect()
    };
    let mut pairs = Vec::new();
    for (r, o) in outputs.iter().enumerate() {
        for kf in 0..kn {
            if let Some(&src) = index.get(&input_of(o, &unravel(kf, &kshape))) {
                pairs.push((r, kf, src));
            }
        }
    }
    Ok(RuleBook { outputs, pairs })
}

/// Output channels, kernel offsets and input channels of weight `w`
/// (`[out, kz, ky, kx, in]`).
fn weight_dims(w: &[usize]) -> (usize, usize, usize) {
    let cout = w.first().copied().unwrap_or(0);
    let cin = w.last().copied().unwrap_or(0);
    let kn = w[1..w.len().saturating_sub(1)].iter().product();
    (cout, kn, cin)
}

fn conv(x: &[&Array], a: &Attrs, subm: bool) -> Result<Vec<Array>, String> {
    let (feats, coords, w) = (x[0], x[1], x[2]);
    let bias = x.get(3).copied();
    let book = rule_book(coords, a, subm)?;
    let (cout, kn, cin) = weight_dims(&w.shape);
    let mut out = Array::zeros(&[book.outputs.len(), cout]);
    for r in 0..book.outputs.len() {
        for co in 0..cout {
            out.data[r * cout + co] = bias.map_or(0.0, |b| b.data[co]);
        }
    }
    for &(r, kf, src) in &book.pairs {
        for co in 0..cout {
            let wrow = (co * kn + kf) * cin;
            out.data[r * cout + co] += (0..cin)
                .map(|ci| w.data[wrow + ci] * feats.data[src * cin + ci])
                .sum::<f64>();
        }
    }
    if subm {
        return Ok(vec![out]);
    }
    let coords_out = book
        .outputs
        .iter()
        .flat_map(|s| s.iter().map(|&v| v as f64))
        .collect();
    Ok(vec![out, Array::new(&[book.outputs.len(), 4], coords_out)])
}

/// `sparse_conv3d_grad_input(dy, coords, weight)` with the forward's
/// attributes (and `subm`): the rule book transposed, each pair adding
/// `w[:, k, :]ᵀ · dy[out]` to its input row.
fn grad_input(x: &[&Array], a: &Attrs, subm: bool) -> Result<Vec<Array>, String> {
    let (dy, coords, w) = (x[0], x[1], x[2]);
    let book = rule_book(coords, a, subm)?;
    let (cout, kn, cin) = weight_dims(&w.shape);
    check_rows(dy, book.outputs.len())?;
    let mut dx = Array::zeros(&[coords.shape[0], cin]);
    for &(r, kf, src) in &book.pairs {
        for ci in 0..cin {
            dx.data[src * cin + ci] += (0..cout)
                .map(|co| w.data[(co * kn + kf) * cin + ci] * dy.data[r * cout + co])
                .sum::<f64>();
        }
    }
    Ok(vec![dx])
}

/// `sparse_conv3d_grad_weight(dy, features, coords)` with the forward's
/// attributes (and `subm`): per pair, the outer product of `dy[out]` and
/// the input row, added to the weight's offset block.
fn grad_weight(x: &[&Array], a: &Attrs, subm: bool) -> Result<Vec<Array>, String> {
    let (dy, feats, coords) = (x[0], x[1], x[2]);
    let book = rule_book(coords, a, subm)?;
    check_rows(dy, book.outputs.len())?;
    let (cout, cin) = (dy.shape[1], feats.shape[1]);
    let kernel: Vec<usize> = a.ints("k").iter().map(|&k| k as usize).collect();
    let kn: usize = kernel.iter().product();
    let mut shape = vec![cout];
    shape.extend(kernel);
    shape.push(cin);
    let mut dw = Array::zeros(&shape);
    for &(r, kf, src) in &book.pairs {
        for co in 0..cout {
            let g = dy.data[r * cout + co];
            for ci in 0..cin {
                dw.data[(co * kn + kf) * cin + ci] += g * feats.data[src * cin + ci];
            }
        }
    }
    Ok(vec![dw])
}

/// `sparse_conv3d_grad_bias(dy, coords)`: `dy` summed over the output
/// sites.
fn grad_bias(dy: &Array) -> Array {
    let cout = dy.shape[1];
    let mut db = Array::zeros(&[cout]);
    for row in dy.data.chunks(cout.max(1)) {
        for (d, g) in db.data.iter_mut().zip(row) {
            *d += g;
        }
    }
    db
}

/// `sparse_global_avg_pool(features, coords)`: per batch index, the mean
/// of its sites' rows; with `grad`, `sparse_global_avg_pool_grad(dy,
/// coords)`: each site's row is its sample's `dy` row over the sample's
/// site count.
fn pool(x: &[&Array], batch: i64, grad: Option<()>) -> Result<Vec<Array>, String> {
    let (v, coords) = (x[0], x[1]);
    let width = v.shape[1];
    let n = coords.shape[0];
    let mut count = vec![0usize; batch.max(0) as usize];
    let samples: Vec<usize> = (0..n)
        .map(|i| {
            let b = coords.data[i * 4];
            if b < 0.0 || b >= batch as f64 {
                return Err(format!(
                    "site {i} has batch index {b}, the tensor holds {batch} samples"
                ));
            }
            count[b as usize] += 1;
            Ok(b as usize)
        })
        .collect::<Result<_, _>>()?;
    if grad.is_some() {
        let mut dx = Array::zeros(&[n, width]);
        for (i, &b) in samples.iter().enumerate() {
            for c in 0..width {
                dx.data[i * width + c] = v.data[b * width + c] / count[b] as f64;
            }
        }
        return Ok(vec![dx]);
    }
    let mut y = Array::zeros(&[count.len(), width]);
    for (i, &b) in samples.iter().enumerate() {
        for c in 0..width {
            y.data[b * width + c] += v.data[i * width + c] / count[b] as f64;
        }
    }
    Ok(vec![y])
}

/// Refuses an output gradient whose rows are not the rule book's sites.
fn check_rows(dy: &Array, sites: usize) -> Result<(), String> {
    if dy.shape.first() != Some(&sites) {
        return Err(format!(
            "the output gradient has shape {:?}, the rule book {sites} sites",
            dy.shape
        ));
    }
    Ok(())
}
