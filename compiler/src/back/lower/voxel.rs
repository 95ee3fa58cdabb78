//! Lowering of the sparse 3D convolutions (`subm_conv3d`, `sparse_conv3d`)
//! to row steps (kernels in `netc_runtime::voxel`).
//!
//! Every distinct `rulebook` attribute gets one [`BuildRuleBook`] step,
//! placed before the first conv that uses it (labelled op `rulebook`);
//! every conv with that key reads its rule book. A rule book lives in the
//! persistent region, which no other value reuses, so it stays valid for
//! the rest of the run and its index grid stays zero between runs. A
//! strided conv's output coordinates are part of its rule book: the
//! coordinates value is placed there instead of in the memory plan.
//!
//! The active-site count after a strided conv is a data-dependent symbol:
//! buffers are planned for its bound ([`LowerCx`] evaluates such a symbol
//! as its bound), and the rule book's element 0 holds the count at run
//! time. The convs and the next rule book read it there; [`counts`] lists
//! where, so the host can size the outputs after a run.
//!
//! A conv's weight (`[out, kz, ky, kx, in]`) is packed to `[kz·ky·kx·in,
//! out]` in a prepare step, so each input channel of a neighbour adds one
//! contiguous weight row. A `relu` the fusion pass attached to the conv
//! (`sparse_relu`) is applied by the conv kernel.
//!
//! The convs' gradients ([`grad`]) run on the same rule books; the
//! per-sample pool of a head ([`pool`]) reads their site counts.

use super::sparse::{fail, packed_weight, push_rows};
use super::{align, LowerCx, StepLabel};
use crate::back::BackError;
use crate::ir::{Attr, Node, SymId, ValueId};
use netc_runtime::plan::Buf;
use netc_runtime::voxel::{BuildRuleBook, CopyRows, Geometry, Layout, VoxelConv, COORDS_AT};
use std::collections::HashSet;

/// A rule book in the arena.
#[derive(Clone, Copy, Debug)]
pub struct Book {
    /// Its buffer (`layout.elements()` elements of the persistent region).
    pub buf: Buf,
    /// Where its parts are.
    pub layout: Layout,
}

/// Whether `node` is one of the sparse convs.
fn is_conv(node: &Node) -> bool {
    matches!(node.op.name, "subm_conv3d" | "sparse_conv3d")
}

/// Lowers the sparse convs and their gradients ([`grad`]); `None` for
/// other ops.
pub fn try_lower(cx: &mut LowerCx, node: &Node) -> Option<Result<(), BackError>> {
    if is_conv(node) {
        return Some(conv(cx, node));
    }
    grad::try_lower(cx, node).or_else(|| pool::try_lower(cx, node))
}

/// The values the rule books hold rather than the memory plan: the output
/// coordinates of strided convs.
pub fn book_values(nodes: &[&Node]) -> HashSet<ValueId> {
    nodes
        .iter()
        .filter(|n| n.op.name == "sparse_conv3d")
        .filter_map(|n| n.outputs.get(1).copied())
        .collect()
}

/// Persistent elements the rule books (one per key), the packed
/// weights (one per distinct weight) and the gradients' tables need.
pub fn persistent_len(cx: &LowerCx, nodes: &[&Node]) -> Result<usize, BackError> {
    let (mut keys, mut weights) = (HashSet::new(), HashSet::new());
    let mut len = 0;
    for n in nodes.iter().filter(|n| is_conv(n)) {
        if keys.insert(key(n)?) {
            let (g, _, bound) = geometry(cx, n)?;
            len += align(Layout::of(&g, bound).elements());
        }
        if let Some(&w) = n.inputs.get(2).filter(|w| weights.insert(**w)) {
            len += align(cx.numel(w)?);
        }
    }
    Ok(len + grad::persistent_len(cx, nodes)?)
}

/// Where each data-dependent count lives after a run: the count symbol
/// of every strided conv's output and the arena element of its rule book
/// that holds it (a `u32` bit pattern).
pub fn counts(cx: &LowerCx, nodes: &[&Node]) -> Result<Vec<(SymId, usize)>, BackError> {
    let mut out = Vec::new();
    for n in nodes.iter().filter(|n| n.op.name == "sparse_conv3d") {
        let rows = &cx.g.ty(n.outputs[0]).shape[0];
        let (&[(s, 1)], 0) = (rows.terms(), rows.constant()) else {
            continue;
        };
        let book = cx
            .rule_books
            .get(&key(n)?)
            .ok_or_else(|| fail(n, "its rule book was not built".into()))?;
        if let Buf::Arena { offset, .. } = book.buf {
            out.push((s, offset));
        }
    }
    Ok(out)
}

/// Pushes the copy of output `v` (in `src`, `n` elements) to `out` when
/// its row count is one of `counts`: only the rows the run computed are
/// copied. Returns whether it did.
pub fn copy_output(
    cx: &mut LowerCx,
    counts: &[(SymId, usize)],
    v: ValueId,
    src: Buf,
    out: Buf,
    n: usize,
) -> bool {
    let shape = &cx.g.ty(v).shape;
    let Some((&[(s, 1)], 0)) = shape.first().map(|d| (d.terms(), d.constant())) else {
        return false;
    };
    let Some(&(_, at)) = counts.iter().find(|(c, _)| *c == s) else {
        return false;
    };
    let width = n / cx
        .sizes(v)
        .and_then(|s| s.first().copied())
        .unwrap_or(1)
        .max(1);
    let count = Buf::Arena { offset: at, len: 1 };
    push_rows(
        cx,
        CopyRows { width },
        vec![src, count],
        vec![n, 1],
        out,
        (1, n, 1),
    );
    true
}

/// The node's `rulebook` key.
pub(super) fn key(node: &Node) -> Result<String, BackError> {
    match node.op.attr("rulebook") {
        Some(Attr::Str(k)) => Ok(k.clone()),
        _ => Err(fail(node, "has no `rulebook` attribute".into())),
    }
}

/// Three integers of attribute `name`.
pub(super) fn three(node: &Node, name: &str) -> Result<[i64; 3], BackError> {
    match node.op.attr(name) {
        Some(Attr::Ints(v)) if v.len() == 3 => Ok([v[0], v[1], v[2]]),
        other => Err(fail(node, format!("bad `{name}` {other:?}"))),
    }
}

/// The conv's geometry, its input site count and its output site bound.
fn geometry(cx: &LowerCx, node: &Node) -> Result<(Geometry, usize, usize), BackError> {
    let batch = match node.op.attr("batch") {
        Some(Attr::Dims(d)) if d.len() == 1 => cx.eval(&d[0]),
        _ => None,
    }
    .ok_or_else(|| fail(node, "its batch size is not known".into()))?;
    let kernel = three(node, "k")?;
    if kernel.iter().any(|k| *k < 1) {
        return Err(fail(node, format!("bad kernel {kernel:?}")));
    }
    let g = Geometry {
        kernel: kernel.map(|k| k as usize),
        stride: three(node, "stride")?,
        pad: three(node, "pad")?,
        dilation: three(node, "dilation")?,
        in_grid: three(node, "in_shape")?,
        out_grid: three(node, "out_shape")?,
        batch,
        subm: node.op.name == "subm_conv3d",
    };
    // The index grid is dense: refuse one that would not fit in memory
    // (2^28 cells, 1 GiB) rather than allocate it.
    if g.grid_cells() > 1 << 28 {
        return Err(fail(
            node,
            format!(
                "its index grid of {} x {:?} voxels is too large for this back end (at most 2^28)",
                g.batch, g.in_grid
            ),
        ));
    }
    let sites = |v: ValueId| -> Result<usize, BackError> {
        cx.sizes(v)
            .and_then(|s| s.first().copied())
            .ok_or_else(|| fail(node, format!("the site count of %{} is not known", v.0)))
    };
    Ok((g, sites(node.inputs[1])?, sites(node.outputs[0])?))
}

/// `subm_conv3d` / `sparse_conv3d(features, coords, weight, bias?)`.
fn conv(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let (feats, coords, w) = match node.inputs[..] {
        [f, c, w, ..] => (f, c, w),
        _ => return Err(fail(node, "expects features, coords and a weight".into())),
    };
    let (g, in_sites, bound) = geometry(cx, node)?;
    let key = key(node)?;
    let book = match cx.rule_books.get(&key) {
        Some(b) => *b,
        None => build(cx, node, &g, coords, in_sites, bound, &key)?,
    };
    if let (Some(&c), Buf::Arena { offset, .. }) = (node.outputs.get(1), book.buf) {
        let len = bound * 4;
        cx.place(
            c,
            Buf::Arena {
                offset: offset + COORDS_AT,
                len,
            },
        );
        cx.books_of.insert(c, book);
    }
    let fs = cx.shape(feats)?;
    let ws = cx.shape(w)?;
    let (cin, cout) = match (&fs[..], &ws[..]) {
        (&[_, cin], &[cout, .., win]) if win == cin => (cin, cout),
        _ => {
            return Err(fail(
                node,
                format!("features {fs:?} do not fit the weight {ws:?}"),
            ))
        }
    };
    let volume = g.volume();
    let packed = packed_weight(cx, node, w, cout, volume * cin)?;
    let relu = match cx.followers(node)[..] {
        [] => false,
        [f] if f.op.name == "relu" => true,
        ref other => {
            return Err(fail(
                node,
                format!(
                    "cannot run fused followers {:?}",
                    other.iter().map(|f| f.op.name).collect::<Vec<_>>()
                ),
            ))
        }
    };
    let output = match cx.followers(node)[..] {
        [f] => cx.output(f.outputs[0])?,
        _ => cx.output(node.outputs[0])?,
    };
    let mut inputs = vec![cx.buf(feats)?, book.buf, packed];
    let mut extents = vec![in_sites * cin, book.layout.grid_at(), volume * cin * cout];
    if let Some(&b) = node.inputs.get(3) {
        inputs.push(cx.buf(b)?);
        extents.push(cout);
    }
    let kernel = VoxelConv {
        cin,
        cout,
        volume,
        pairs_at: book.layout.pairs_at(),
        bias: node.inputs.len() > 3,
        relu,
        threads: cx.options.threads,
    };
    // One call: the kernel splits the actual rows over the pool.
    push_rows(cx, kernel, inputs, extents, output, (1, bound * cout, 1));
    Ok(())
}

/// Pushes the rule-book step of `key` (labelled as its own layer) and
/// records the book.
fn build(
    cx: &mut LowerCx,
    node: &Node,
    g: &Geometry,
    coords: ValueId,
    in_sites: usize,
    bound: usize,
    key: &str,
) -> Result<Book, BackError> {
    let layout = Layout::of(g, bound);
    let buf = cx.persistent(layout.elements());
    let mut inputs = vec![cx.buf(coords)?];
    let mut extents = vec![in_sites * 4];
    let previous = cx.books_of.get(&coords).copied();
    if let Some(p) = previous {
        inputs.push(p.buf);
        extents.push(1);
    }
    let kernel = BuildRuleBook {
        geometry: g.clone(),
        layout,
        in_count: in_sites,
        chained: previous.is_some(),
        threads: cx.options.threads,
    };
    let conv = std::mem::replace(
        &mut cx.current,
        StepLabel {
            layer: node.path.clone(),
            op: "rulebook".into(),
            group: 0,
            flops: 0.0,
        },
    );
    cx.current.group = conv.group;
    push_rows(cx, kernel, inputs, extents, buf, (1, layout.elements(), 1));
    cx.current = StepLabel {
        group: conv.group + 1,
        ..conv
    };
    let book = Book { buf, layout };
    cx.rule_books.insert(key.to_string(), book);
    Ok(book)
}

pub mod grad;
pub mod pool;
#[cfg(test)]
mod tests;
