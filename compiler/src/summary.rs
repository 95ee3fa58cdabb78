//! The per-layer summary printed by `netc check` (like torchinfo): one row
//! per op with its layer path, output shape, parameters first used there and
//! FLOPs (a multiply-add counts 2), then totals. Symbolic sizes are evaluated
//! with the values given (the batch defaults to 1).

use crate::ir::{Dim, Graph, SymId, SymKind};
use std::collections::{HashMap, HashSet};
use std::fmt::Write;

/// Evaluates dims with `values` for named symbols; others use 1 (input
/// symbols) or their upper bound (data-dependent symbols).
pub struct SymbolValues<'g> {
    graph: &'g Graph,
    values: Vec<(String, i64)>,
}

impl<'g> SymbolValues<'g> {
    /// Values for the symbols of `graph`, by name.
    pub fn new(graph: &'g Graph, values: Vec<(String, i64)>) -> SymbolValues<'g> {
        SymbolValues { graph, values }
    }

    fn value(&self, s: SymId, depth: usize) -> i64 {
        let sym = &self.graph.symbols[s.0 as usize];
        if let Some((_, v)) = self.values.iter().find(|(n, _)| *n == sym.name) {
            return *v;
        }
        match &sym.kind {
            SymKind::Input => 1,
            kind if depth < 8 => kind
                .planned_bound(&|t| Some(self.value(t, depth + 1)))
                .unwrap_or(0),
            SymKind::DataDependent { .. } => 0,
        }
    }

    fn eval_at(&self, d: &Dim, depth: usize) -> i64 {
        d.terms().iter().fold(d.constant(), |acc, &(s, k)| {
            acc.saturating_add(k.saturating_mul(self.value(s, depth)))
        })
    }

    /// The value of a dim.
    pub fn eval(&self, d: &Dim) -> i64 {
        self.eval_at(d, 0)
    }

    /// The symbol values given by name (`--set N=8`).
    pub fn given(&self) -> &[(String, i64)] {
        &self.values
    }

    /// The symbol assignments used, as text (`N=1`).
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .graph
            .symbols
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{}={}", s.name, self.value(SymId(i as u32), 0)))
            .collect();
        parts.join(", ")
    }
}

/// Renders the summary table.
pub fn summary(g: &Graph, syms: &SymbolValues) -> String {
    let mut rows: Vec<[String; 5]> = Vec::new();
    let mut seen = HashSet::new();
    let mut total_flops: i64 = 0;
    let param_of: HashMap<_, _> = g.params.iter().map(|p| (p.value, p)).collect();
    for n in g.nodes.iter().filter(|n| !n.train_only) {
        let params: i64 = n
            .inputs
            .iter()
            .filter_map(|v| param_of.get(v).copied())
            .filter(|p| !p.buffer && seen.insert(p.path.clone()))
            .map(|p| p.ty.known_shape().map_or(0, |s| s.iter().product::<i64>()))
            .sum();
        let flops = syms.eval(&n.flops);
        total_flops = total_flops.saturating_add(flops);
        let shapes: Vec<String> = n.outputs.iter().map(|v| g.type_text(g.ty(*v))).collect();
        rows.push([
            if n.path.is_empty() {
                "(model)".into()
            } else {
                n.path.clone()
            },
            n.op.name.to_string(),
            shapes.join(", "),
            if params == 0 {
                "-".into()
            } else {
                group(params)
            },
            group(flops),
        ]);
    }
    let header = ["layer", "op", "output", "params", "FLOPs"];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: [&str; 5]| {
        let _ = writeln!(
            out,
            "{:<w0$}  {:<w1$}  {:<w2$}  {:>w3$}  {:>w4$}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4]
        );
    };
    let args: Vec<String> = g.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(out, "model {}({})", g.name, args.join(", "));
    for (name, v) in &g.inputs {
        let _ = writeln!(out, "  input  {name}: {}", g.type_text(g.ty(*v)));
    }
    for (name, v) in &g.outputs {
        let _ = writeln!(out, "  output {name}: {}", g.type_text(g.ty(*v)));
    }
    let total_width: usize = widths.iter().sum::<usize>() + 8;
    let _ = writeln!(out, "{}", "-".repeat(total_width));
    line(&mut out, header);
    let _ = writeln!(out, "{}", "-".repeat(total_width));
    for r in &rows {
        line(&mut out, [&r[0], &r[1], &r[2], &r[3], &r[4]]);
    }
    let _ = writeln!(out, "{}", "-".repeat(total_width));
    let trainable = g.param_count();
    let buffers: i64 = g
        .params
        .iter()
        .filter(|p| p.buffer)
        .map(|p| p.ty.known_shape().map_or(0, |s| s.iter().product::<i64>()))
        .sum();
    let bytes: i64 = g
        .params
        .iter()
        .map(|p| {
            p.ty.known_shape().map_or(0, |s| s.iter().product::<i64>())
                * p.ty.dtype.size_bytes() as i64
        })
        .sum();
    let _ = writeln!(out, "parameters:      {}", group(trainable));
    let _ = writeln!(out, "buffer elements: {}", group(buffers));
    let _ = writeln!(out, "weights size:    {:.2} MB", bytes as f64 / 1e6);
    let plan = crate::passes::memplan::plan(g, syms.given());
    let _ = writeln!(
        out,
        "activations:     {:.2} MB planned arena ({:.2} MB without reuse)",
        plan.arena_bytes as f64 / 1e6,
        plan.naive_bytes as f64 / 1e6
    );
    let at = match syms.describe() {
        d if d.is_empty() => String::new(),
        d => format!(" at {d}"),
    };
    let _ = writeln!(
        out,
        "FLOPs:           {} ({:.3} GFLOPs){at}",
        group(total_flops),
        total_flops as f64 / 1e9
    );
    if let Some(t) = &g.train {
        let _ = writeln!(
            out,
            "train:           loss {} · optimizer {}{}",
            g.type_text(g.ty(t.loss)),
            t.optimizer.kind,
            t.schedule
                .as_ref()
                .map(|s| format!(" · schedule {}", s.kind))
                .unwrap_or_default()
        );
    }
    out
}

/// `1234567` → `1,234,567`.
pub fn group(n: i64) -> String {
    let s = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// `--params`: every parameter and buffer path with dtype, shape and kind,
/// one per line, in declaration order.
pub fn param_list(g: &Graph) -> String {
    let mut out = String::new();
    for p in &g.params {
        let dims: Vec<String> = p.ty.shape.iter().map(|d| g.dim_text(d)).collect();
        let _ = writeln!(
            out,
            "{} {} [{}] {}",
            p.path,
            p.ty.dtype,
            dims.join(", "),
            if p.buffer { "buffer" } else { "param" }
        );
    }
    out
}
