//! Sparse bag inputs in a plan, and the row kernels that read them
//! ([`crate::plan::Rows`] steps): products of CSR bags with dense tables
//! (`sparse_linear`, `embedding_bag`), the convolution over sequences of
//! bags (`bag_conv1d`), the weight packing they use and their weight
//! gradients (dense in `nn.Linear`'s layout: `crate::text_grad`,
//! [`BagConvGradWeight`]; row-wise over touched ids: [`BagGradRows`]).
//!
//! **Plan encoding.** The executor's buffers are f32, so a sparse input
//! `q` ([`SparseBags`], `docs/text.md`) enters a plan as three buffers:
//! `q.indices` and `q.offsets` hold the ids as `u32` bit patterns
//! (`f32::from_bits`; nothing ever does arithmetic on them, exact for
//! every id below 2^32), `q.values` the f32 counts. Only `offsets` has a
//! static length (rows + 1); `indices` and `values` hold nnz entries, read
//! at run time from `offsets[rows]`. [`encode`] builds the three buffers
//! from validated bags; the kernels check the CSR invariants again as they
//! read (an offset past the data, a decreasing offset, an id outside the
//! table) and return an error instead of reading out of bounds.

use crate::plan::RowKernel;
use crate::text::bags::SparseBags;

mod conv_grad;
mod rows_grad;
pub use conv_grad::BagConvGradWeight;
pub use rows_grad::{BagGradRows, BLOCK};

/// The three plan buffers of one sparse input (see the module docs).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CsrBuffers {
    /// Column ids as `u32` bit patterns, nnz entries.
    pub indices: Vec<f32>,
    /// Bag boundaries as `u32` bit patterns, rows + 1 entries.
    pub offsets: Vec<f32>,
    /// Counts, nnz entries.
    pub values: Vec<f32>,
}

/// `x` as a `u32` bit pattern in an f32 word.
fn word(x: i64) -> Option<f32> {
    u32::try_from(x).ok().map(f32::from_bits)
}

/// The plan buffers of validated bags; fails (naming `name.indices` or
/// `name.offsets`) if an id or the entry count does not fit in 32 bits.
pub fn encode(name: &str, bags: &SparseBags) -> Result<CsrBuffers, String> {
    let words = |what: &str, v: &[i64]| -> Result<Vec<f32>, String> {
        v.iter()
            .map(|&x| {
                word(x).ok_or_else(|| {
                    format!("`{name}.{what}` holds {x}, the plan reads 32-bit ids and offsets")
                })
            })
            .collect()
    };
    Ok(CsrBuffers {
        indices: words("indices", bags.indices())?,
        offsets: words("offsets", bags.offsets())?,
        values: bags.values().to_vec(),
    })
}

/// The id in an f32 word written by [`encode`].
fn id(x: f32) -> usize {
    x.to_bits() as usize
}

/// For every bag, `out[r] = bias + Σ values[j] · table[indices[j]]` over
/// the bag's entries (rows of `table` are `width` wide); `mean` divides
/// the sum by the bag's number of non-zero entries (an empty bag gives
/// the bias, or zeros). Inputs: `indices`, `offsets`, `values`, `table`
/// (`[vocab, width]`), then `bias` (`[width]`) if `bias`.
///
/// `sparse_linear` runs it on its weight packed to `[V, out]`
/// ([`Transpose`]) or, in a training plan, stored that way;
/// `embedding_bag` on its table as it is. With `mean`,
/// bags are expected canonical (each id once, as [`SparseBags`] keeps
/// them), matching the dense semantics of counting non-zero columns.
#[derive(Clone, Debug)]
pub struct BagProduct {
    /// Rows of the table (ids must be below it).
    pub vocab: usize,
    /// Columns of the table and of the output.
    pub width: usize,
    /// Whether input 4 is a bias added to every row.
    pub bias: bool,
    /// Whether each sum is divided by the bag's non-zero count.
    pub mean: bool,
}

impl RowKernel for BagProduct {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let w = self.width;
        let (indices, offsets, values, table) = match inputs {
            [i, o, v, t, ..] => (*i, *o, *v, *t),
            _ => {
                return Err(format!(
                    "a bag product reads 4 or 5 buffers, got {}",
                    inputs.len()
                ))
            }
        };
        let bias = if self.bias {
            let b = inputs.get(4).copied().unwrap_or(&[]);
            Some(
                b.get(..w)
                    .ok_or_else(|| format!("the bias holds {} of {w} entries", b.len()))?,
            )
        } else {
            None
        };
        if table.len() < self.vocab * w {
            return Err(format!(
                "the table holds {} entries, [{}, {w}] needs {}",
                table.len(),
                self.vocab,
                self.vocab * w
            ));
        }
        let rows = out.len().checked_div(w).unwrap_or(0);
        for (k, row) in out.chunks_exact_mut(w.max(1)).take(rows).enumerate() {
            let r = first + k;
            let span = bag_range(r, indices, offsets, values)?;
            match bias {
                Some(b) => row.copy_from_slice(b),
                None => row.fill(0.0),
            }
            let mut count = 0usize;
            for (&i, &v) in indices[span.clone()].iter().zip(&values[span]) {
                let i = id(i);
                let src = table
                    .get(i * w..(i + 1) * w)
                    .filter(|_| i < self.vocab)
                    .ok_or_else(|| {
                        format!(
                            "bag {r} holds id {i}, outside the table's {} rows",
                            self.vocab
                        )
                    })?;
                if v != 0.0 {
                    count += 1;
                }
                for (o, &t) in row.iter_mut().zip(src) {
                    *o += v * t;
                }
            }
            if self.mean && count > 0 {
                let inv = 1.0 / count as f32;
                row.iter_mut().for_each(|o| *o *= inv);
            }
        }
        Ok(())
    }
}

/// The bag at `row`: its entry range, checked against the buffers.
fn bag_range(
    row: usize,
    indices: &[f32],
    offsets: &[f32],
    values: &[f32],
) -> Result<std::ops::Range<usize>, String> {
    let (s, e) = match (offsets.get(row), offsets.get(row + 1)) {
        (Some(&s), Some(&e)) => (id(s), id(e)),
        _ => {
            return Err(format!(
                "the offsets hold {} entries, bag {row} needs {}",
                offsets.len(),
                row + 2
            ))
        }
    };
    if s > e || e > indices.len() || e > values.len() {
        return Err(format!(
            "bag {row} spans entries {s}..{e}, but the offsets must not decrease and the indices hold {} and the values {} entries",
            indices.len(),
            values.len()
        ));
    }
    Ok(s..e)
}

/// `nn.Conv1d(V, C, k, padding = pad)` over sequences of `t_in` bags,
/// stride 1: output row `(seq, t)` (`t < t_out`, `C` wide) is
/// `bias + Σ_j Σ values · Wp[id, j]` over the entries of bag
/// `seq · t_in + t + j - pad` for every tap `j` that lands inside the
/// sequence. Inputs: `indices`, `offsets`, `values`, the weight packed to
/// `[V, k, C]` (the `[C, V·k]` weight transposed, [`Transpose`], or
/// stored that way in a training plan), then
/// `bias` (`[C]`) if `bias`.
#[derive(Clone, Debug)]
pub struct BagConv {
    /// Columns of the bags (rows of the packed weight).
    pub vocab: usize,
    /// Taps.
    pub k: usize,
    /// Zero bags on each side.
    pub pad: usize,
    /// Bags per sequence.
    pub t_in: usize,
    /// Output positions per sequence.
    pub t_out: usize,
    /// Output channels.
    pub width: usize,
    /// Whether input 4 is a bias.
    pub bias: bool,
}

impl RowKernel for BagConv {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let (c, k) = (self.width, self.k);
        let (indices, offsets, values, table) = match inputs {
            [i, o, v, t, ..] => (*i, *o, *v, *t),
            _ => {
                return Err(format!(
                    "a bag convolution reads 4 or 5 buffers, got {}",
                    inputs.len()
                ))
            }
        };
        let bias = match (self.bias, inputs.get(4)) {
            (false, _) => None,
            (true, Some(b)) if b.len() >= c => Some(&b[..c]),
            (true, b) => {
                return Err(format!(
                    "the bias holds {} of {c} entries",
                    b.map_or(0, |b| b.len())
                ))
            }
        };
        if table.len() < self.vocab * k * c {
            return Err(format!(
                "the weight holds {} entries, [{}, {k}, {c}] needs {}",
                table.len(),
                self.vocab,
                self.vocab * k * c
            ));
        }
        let rows = out.len().checked_div(c).unwrap_or(0);
        for (n, row) in out.chunks_exact_mut(c.max(1)).take(rows).enumerate() {
            let (seq, t) = (
                (first + n) / self.t_out.max(1),
                (first + n) % self.t_out.max(1),
            );
            match bias {
                Some(b) => row.copy_from_slice(b),
                None => row.fill(0.0),
            }
            for j in 0..k {
                let Some(p) = (t + j).checked_sub(self.pad).filter(|p| *p < self.t_in) else {
                    continue;
                };
                let bag = seq * self.t_in + p;
                for e in bag_range(bag, indices, offsets, values)? {
                    let i = id(indices[e]);
                    if i >= self.vocab {
                        return Err(format!(
                            "bag {bag} holds id {i}, outside the weight's {} columns",
                            self.vocab
                        ));
                    }
                    let src = &table[(i * k + j) * c..(i * k + j + 1) * c];
                    let v = values[e];
                    for (o, &w) in row.iter_mut().zip(src) {
                        *o += v * w;
                    }
                }
            }
        }
        Ok(())
    }
}

/// `out = inᵀ`: input 0 is `[rows, cols]` row-major, the output
/// `[cols, rows]`; output row `c` is column `c` of the input. Packs
/// `sparse_linear`'s `[out, V]` weight to `[V, out]` once per weight load,
/// so that a bag entry reads one contiguous row.
#[derive(Clone, Debug)]
pub struct Transpose {
    /// Rows of the input (the width of an output row).
    pub rows: usize,
    /// Columns of the input (the output rows).
    pub cols: usize,
}

/// Output rows transposed together: their part of every input row is one
/// contiguous run, and the block of output rows stays in cache.
const TRANSPOSE_BLOCK: usize = 64;

impl RowKernel for Transpose {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        let (r, c) = (self.rows, self.cols);
        let x = inputs.first().copied().unwrap_or(&[]);
        if x.len() < r * c {
            return Err(format!(
                "the input holds {} entries, [{r}, {c}] needs {}",
                x.len(),
                r * c
            ));
        }
        let n = out.len().checked_div(r).unwrap_or(0);
        if first + n > c {
            return Err(format!(
                "output rows {first}..{} past the {c} columns",
                first + n
            ));
        }
        for lo in (0..n).step_by(TRANSPOSE_BLOCK) {
            let hi = (lo + TRANSPOSE_BLOCK).min(n);
            for i in 0..r {
                let src = &x[i * c + first + lo..i * c + first + hi];
                for (k, &v) in src.iter().enumerate() {
                    out[(lo + k) * r + i] = v;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bags of (id, value) pairs as plan buffers (ids as bit patterns).
    fn csr(bags: &[&[(u32, f32)]]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut offsets = vec![f32::from_bits(0)];
        let (mut idx, mut val) = (Vec::new(), Vec::new());
        for b in bags {
            for &(i, v) in *b {
                idx.push(f32::from_bits(i));
                val.push(v);
            }
            offsets.push(f32::from_bits(idx.len() as u32));
        }
        (idx, offsets, val)
    }

    /// Sums and means of table rows against a hand computation, with an
    /// empty bag (bias only / zeros) and rows computed from an offset.
    #[test]
    fn bag_products_sum_weighted_rows() {
        let table: Vec<f32> = (0..8).map(|v| v as f32).collect(); // [4, 2]
        let (i, o, v) = csr(&[&[(1, 2.0), (3, 1.0)], &[], &[(0, 1.0), (2, 0.5)]]);
        let k = BagProduct {
            vocab: 4,
            width: 2,
            bias: true,
            mean: false,
        };
        let bias = [0.5f32, -0.5];
        let mut out = vec![f32::NAN; 6];
        k.rows(0, &[&i, &o, &v, &table, &bias], &mut out).unwrap();
        // bag 0: 2·[2, 3] + [6, 7] = [10, 13]; bag 1: bias; bag 2: [0, 1] + 0.5·[4, 5].
        assert_eq!(out, [10.5, 12.5, 0.5, -0.5, 2.5, 3.0]);
        let k = BagProduct {
            vocab: 4,
            width: 2,
            bias: false,
            mean: true,
        };
        let mut out = vec![f32::NAN; 4];
        k.rows(1, &[&i, &o, &v, &table], &mut out).unwrap();
        assert_eq!(out, [0.0, 0.0, 1.0, 1.75]);
    }

    /// Malformed CSR data is an error naming the bag, never a panic.
    #[test]
    fn bad_bags_are_errors() {
        let table = vec![0.0f32; 8];
        let k = BagProduct {
            vocab: 4,
            width: 2,
            bias: false,
            mean: false,
        };
        let mut out = vec![0.0f32; 2];
        let (i, o, v) = csr(&[&[(4, 1.0)]]);
        let e = k.rows(0, &[&i, &o, &v, &table], &mut out).unwrap_err();
        assert!(e.contains("bag 0 holds id 4"), "{e}");
        let (i, _, v) = csr(&[&[(1, 1.0)]]);
        let o = vec![f32::from_bits(0), f32::from_bits(5)];
        let e = k.rows(0, &[&i, &o, &v, &table], &mut out).unwrap_err();
        assert!(e.contains("bag 0 spans entries 0..5"), "{e}");
        let e = k.rows(3, &[&i, &o, &v, &table], &mut out).unwrap_err();
        assert!(e.contains("bag 3 needs 5"), "{e}");
        let e = k.rows(0, &[&i, &o, &v], &mut out).unwrap_err();
        assert!(e.contains("reads 4 or 5"), "{e}");
    }

    #[test]
    fn transpose_moves_every_element_in_pieces() {
        let (r, c) = (3, 150);
        let x: Vec<f32> = (0..r * c).map(|v| v as f32).collect();
        let k = Transpose { rows: r, cols: c };
        let mut out = vec![f32::NAN; r * c];
        let (a, b) = out.split_at_mut(70 * r);
        k.rows(0, &[&x], a).unwrap();
        k.rows(70, &[&x], b).unwrap();
        for ci in 0..c {
            for ri in 0..r {
                assert_eq!(out[ci * r + ri], x[ri * c + ci]);
            }
        }
        assert!(k.rows(100, &[&x], &mut [0.0f32; 180]).is_err());
    }

    #[test]
    fn encoding_keeps_ids_exact_and_refuses_wide_ones() {
        let mut bags = SparseBags::new(40_000_000);
        bags.push_bag([33_554_433, 7, 7]).unwrap();
        let b = encode("q", &bags).unwrap();
        let ids: Vec<u32> = b.indices.iter().map(|x| x.to_bits()).collect();
        assert_eq!(ids, [7, 33_554_433]);
        assert_eq!(b.values, [2.0, 1.0]);
        let offs: Vec<u32> = b.offsets.iter().map(|x| x.to_bits()).collect();
        assert_eq!(offs, [0, 2]);
        let mut wide = SparseBags::new(1 << 33);
        wide.push_bag([1usize << 32]).unwrap();
        let e = encode("q", &wide).unwrap_err();
        assert!(e.contains("`q.indices` holds 4294967296"), "{e}");
    }
}
