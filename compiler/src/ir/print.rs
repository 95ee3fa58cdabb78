//! The stable text form of the IR (`netc check --emit ir`). Every value is
//! printed with its type; the text depends only on the graph, never on
//! addresses or hash order, so it is snapshot-tested.

use super::graph::*;
use std::fmt::Write;

/// Prints a graph.
pub fn print_graph(g: &Graph) -> String {
    let mut out = String::new();
    let args: Vec<String> = g.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(out, "model {}({})", g.name, args.join(", "));
    for s in &g.symbols {
        match &s.kind {
            SymKind::Input => {
                let _ = writeln!(out, "  symbol {}", s.name);
            }
            SymKind::DataDependent { bound, cap, origin } => {
                let bound = match cap {
                    Some(cap) => format!("min({}, {})", g.dim_text(bound), g.dim_text(cap)),
                    None => g.dim_text(bound),
                };
                let _ = writeln!(
                    out,
                    "  symbol {} <= {bound}  (data-dependent: {origin})",
                    s.name
                );
            }
        }
    }
    for (name, v) in &g.inputs {
        let _ = writeln!(out, "  input %{} {name}: {}", v.0, g.type_text(g.ty(*v)));
    }
    for p in &g.params {
        let _ = writeln!(
            out,
            "  {} %{} {}: {} = {}",
            if p.buffer { "buffer" } else { "param" },
            p.value.0,
            p.path,
            g.type_text(&p.ty),
            init_text(&p.init)
        );
    }
    for c in &g.consts {
        let _ = writeln!(
            out,
            "  const %{}: {} = {}",
            c.value.0,
            g.type_text(g.ty(c.value)),
            c.desc
        );
    }
    for n in g.nodes.iter().filter(|n| !n.train_only) {
        print_node(&mut out, g, n);
    }
    for (name, v) in &g.outputs {
        let _ = writeln!(out, "  output {name} = %{}", v.0);
    }
    if let Some(t) = &g.train {
        let _ = writeln!(out, "  train {{");
        for (name, v) in &t.labels {
            let _ = writeln!(out, "    label %{} {name}: {}", v.0, g.type_text(g.ty(*v)));
        }
        for n in g.nodes.iter().filter(|n| n.train_only) {
            out.push_str("  ");
            print_node(&mut out, g, n);
        }
        let _ = writeln!(out, "    loss = %{}", t.loss.0);
        let _ = writeln!(out, "    optimizer = {}", hyper_text(&t.optimizer));
        if let Some(s) = &t.schedule {
            let _ = writeln!(out, "    schedule = {}", hyper_text(s));
        }
        if !t.recompute.is_empty() {
            let _ = writeln!(out, "    recompute = [{}]", t.recompute.join(", "));
        }
        let _ = writeln!(out, "  }}");
    }
    out
}

fn print_node(out: &mut String, g: &Graph, n: &Node) {
    let results: Vec<String> = n
        .outputs
        .iter()
        .map(|v| format!("%{}: {}", v.0, g.type_text(g.ty(*v))))
        .collect();
    let operands: Vec<String> = n.inputs.iter().map(|v| format!("%{}", v.0)).collect();
    let _ = write!(
        out,
        "  {} = {}({})",
        results.join(", "),
        n.op.name,
        operands.join(", ")
    );
    if !n.op.attrs.is_empty() {
        let attrs: Vec<String> =
            n.op.attrs
                .iter()
                .map(|(k, a)| format!("{k}={}", attr_text(g, a)))
                .collect();
        let _ = write!(out, " {{{}}}", attrs.join(", "));
    }
    if !n.path.is_empty() {
        let _ = write!(out, "  @{}", n.path);
    }
    if let Some(head) = n.fused_into {
        let _ = write!(out, "  [fused into %{}]", head.0);
    }
    out.push('\n');
}

/// An attribute as printed in the IR.
pub fn attr_text(g: &Graph, a: &Attr) -> String {
    fn list<T: ToString>(xs: &[T]) -> String {
        let items: Vec<String> = xs.iter().map(|x| x.to_string()).collect();
        format!("[{}]", items.join(", "))
    }
    match a {
        Attr::Int(i) => i.to_string(),
        Attr::Float(f) => format_float(*f),
        Attr::Bool(b) => b.to_string(),
        Attr::Str(s) => format!("{s:?}"),
        Attr::Ints(v) => list(v),
        Attr::Floats(v) => {
            let items: Vec<String> = v.iter().map(|f| format_float(*f)).collect();
            format!("[{}]", items.join(", "))
        }
        Attr::Dims(v) => {
            let items: Vec<String> = v.iter().map(|d| g.dim_text(d)).collect();
            format!("[{}]", items.join(", "))
        }
    }
}

/// A float printed so that it reads back to the same value and always shows
/// it is a float (`1.0`, `0.0001`, `1e-8`).
pub fn format_float(f: f64) -> String {
    format!("{f:?}")
}

fn init_text(i: &Init) -> String {
    match i {
        Init::Const(c) => format!("const({})", format_float(*c)),
        Init::Uniform { low, high } => {
            format!("uniform({}, {})", format_float(*low), format_float(*high))
        }
        Init::Normal { mean, std } => {
            format!("normal({}, {})", format_float(*mean), format_float(*std))
        }
    }
}

fn hyper_text(h: &Hyper) -> String {
    let g = Graph::default();
    let vals: Vec<String> = h
        .values
        .iter()
        .map(|(k, v)| format!("{k}={}", attr_text(&g, v)))
        .collect();
    format!("{}({})", h.kind, vals.join(", "))
}
