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

use super::array::{unravel, Array};
use super::dense::Attrs;
use crate::ir::Attr;
use std::collections::{BTreeSet, HashMap};

/// The result of one family op, or `None` if `name` is not in the family.
type Eval = Option<Result<Vec<Array>, String>>;

/// Evaluates `name` if it is one of this module's ops.
pub fn eval(name: &str, a: &Attrs, x: &[&Array], _out: &[Vec<usize>]) -> Eval {
    match name {
        "subm_conv3d" | "sparse_conv3d" => Some(conv(x, a, name == "subm_conv3d")),
        _ => None,
    }
}

/// A site: batch, then z, y, x.
type Site = [i64; 4];

fn conv(x: &[&Array], a: &Attrs, subm: bool) -> Result<Vec<Array>, String> {
    let (feats, coords, w) = (x[0], x[1], x[2]);
    let bias = x.get(3).copied();
    let (k, stride, pad, dil) = (
        a.ints("k"),
        a.ints("stride"),
        a.ints("pad"),
        a.ints("dilation"),
    );
    let (in_shape, out_grid) = (a.ints("in_shape"), a.ints("out_shape"));
    let cin = feats.shape[1];
    let cout = w.shape[0];
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
    let mut out = Array::zeros(&[outputs.len(), cout]);
    for (r, o) in outputs.iter().enumerate() {
        for co in 0..cout {
            out.data[r * cout + co] = bias.map_or(0.0, |b| b.data[co]);
        }
        for kf in 0..kn {
            let kk = unravel(kf, &kshape);
            let Some(&src) = index.get(&input_of(o, &kk)) else {
                continue;
            };
            for co in 0..cout {
                let wrow = (co * kn + kf) * cin;
                out.data[r * cout + co] += (0..cin)
                    .map(|ci| w.data[wrow + ci] * feats.data[src * cin + ci])
                    .sum::<f64>();
            }
        }
    }
    if subm {
        return Ok(vec![out]);
    }
    let coords_out = outputs
        .iter()
        .flat_map(|s| s.iter().map(|&v| v as f64))
        .collect();
    Ok(vec![out, Array::new(&[outputs.len(), 4], coords_out)])
}
