//! `netc compile --emit clif`: the elementwise kernels a graph needs,
//! described as [`Chain`]s, deduplicated by kernel key and printed as CLIF.
//!
//! This first slice maps single f32 elementwise nodes only (no fusion yet):
//! `relu neg abs square sqrt clamp leaky_relu` and
//! `add sub mul div maximum minimum` whose second operand has the output's
//! shape, is a scalar (a compile-time number becomes a constant), or is a
//! per-channel (`[C, 1, .., 1]`) or trailing (`[.., W]`) broadcast. Other
//! nodes are counted as not yet covered.

use super::elementwise::{Bcast, Binary, Chain, Domain, Operand, Step, Unary};
use super::jit::Jit;
use super::reduce::{emit_clif_rows as node_rows_clif, node_row_kernel};
use super::BackError;
use crate::ir::{Attr, Dim, Graph, Node, ValueDef, ValueId};
use netc_runtime::DType;
use std::fmt::Write as _;

/// The kernel chain for one graph node, if this back end supports it.
pub fn node_chain(g: &Graph, node: &Node) -> Option<Chain> {
    node_kernel(g, node).map(|(chain, _)| chain)
}

/// The kernel chain for one graph node and the values its kernel inputs
/// read, in kernel-input order.
pub fn node_kernel(g: &Graph, node: &Node) -> Option<(Chain, Vec<ValueId>)> {
    if node.outputs.len() != 1 || g.ty(node.outputs[0]).dtype != DType::F32 {
        return None;
    }
    let unary = unary_of(node);
    if let Some(u) = unary {
        return (node.inputs.len() == 1).then(|| (Chain::unary(u), node.inputs.clone()));
    }
    let op = binary_of(node.op.name)?;
    let [x, y] = node.inputs[..] else {
        return None;
    };
    let out = &g.ty(node.outputs[0]).shape;
    // The running value must have the output's shape; if only the right
    // operand does, swap.
    let (x, y, swap) = if &g.ty(x).shape == out {
        (x, y, false)
    } else if &g.ty(y).shape == out {
        (y, x, true)
    } else {
        return None;
    };
    let (rhs, bcast, domain) = classify(g, y, out)?;
    let mut inputs = vec![Bcast::Full];
    let mut values = vec![x];
    let rhs = match rhs {
        Some(c) => Operand::Const(c),
        None => {
            inputs.push(bcast);
            values.push(y);
            Operand::Input(1)
        }
    };
    let chain = Chain {
        inputs,
        domain,
        steps: vec![Step::Binary { op, rhs, swap }],
    };
    Some((chain, values))
}

/// The unary kernel op of an elementwise node, if it is one.
pub(crate) fn unary_of(node: &Node) -> Option<Unary> {
    match node.op.name {
        "relu" => Some(Unary::Relu),
        "neg" => Some(Unary::Neg),
        "abs" => Some(Unary::Abs),
        "square" => Some(Unary::Square),
        "sqrt" => Some(Unary::Sqrt),
        "exp" => Some(Unary::Exp),
        "log" => Some(Unary::Log),
        "tanh" => Some(Unary::Tanh),
        "sigmoid" => Some(Unary::Sigmoid),
        "silu" => Some(Unary::Silu),
        "gelu" if matches!(node.op.attr("approximate"), Some(Attr::Str(a)) if a == "tanh") => {
            Some(Unary::GeluTanh)
        }
        "gelu" => Some(Unary::Gelu),
        "leaky_relu" => Some(Unary::LeakyRelu {
            slope: float_attr(node, "negative_slope").unwrap_or(0.01),
        }),
        "clamp" => Some(Unary::Clamp {
            lo: float_attr(node, "min").unwrap_or(f32::NEG_INFINITY),
            hi: float_attr(node, "max").unwrap_or(f32::INFINITY),
        }),
        _ => None,
    }
}

/// The binary kernel op of an elementwise op name, if it is one.
pub(crate) fn binary_of(name: &str) -> Option<Binary> {
    Some(match name {
        "add" => Binary::Add,
        "sub" => Binary::Sub,
        "mul" => Binary::Mul,
        "div" => Binary::Div,
        "maximum" => Binary::Maximum,
        "minimum" => Binary::Minimum,
        _ => return None,
    })
}

pub(crate) fn float_attr(node: &Node, key: &str) -> Option<f32> {
    match node.op.attr(key)? {
        Attr::Float(f) => Some(*f as f32),
        Attr::Int(i) => Some(*i as f32),
        _ => None,
    }
}

/// How operand `y` broadcasts against the output shape: a constant value
/// (scalar constants), its indexing, and the domain.
pub(crate) fn classify(g: &Graph, y: ValueId, out: &[Dim]) -> Option<(Option<f32>, Bcast, Domain)> {
    let ys = &g.ty(y).shape;
    let one = Dim::known(1);
    if ys == out {
        return Some((None, Bcast::Full, Domain::Flat));
    }
    if ys.iter().all(|d| *d == one) {
        let c = match g.value(y).def {
            ValueDef::Const(id) => g.consts.get(id.0 as usize).and_then(|c| match c.data[..] {
                [v] => Some(v as f32),
                _ => None,
            }),
            _ => None,
        };
        return Some((c, Bcast::Scalar, Domain::Flat));
    }
    if ys.len() > out.len() {
        return None;
    }
    // Right-align y against out; its non-1 dims must be one contiguous run
    // equal to out's dims there.
    let pad = out.len() - ys.len();
    let idx: Vec<usize> = (0..ys.len()).filter(|&i| ys[i] != one).collect();
    let (first, last) = (idx[0], idx[idx.len() - 1]);
    if (first..=last).any(|i| ys[i] != out[pad + i]) {
        return None;
    }
    let known = |ds: &[Dim]| {
        ds.iter().try_fold(1u64, |acc, d| {
            acc.checked_mul(u64::try_from(d.as_known()?).ok()?)
        })
    };
    let run = known(&out[pad + first..=pad + last])?;
    let inner = known(&out[pad + last + 1..])?;
    if inner == 1 {
        // Trailing run: `[.., W]` read per column.
        Some((
            None,
            Bcast::PerColumn,
            Domain::Rows {
                channels: 1,
                inner: run,
            },
        ))
    } else {
        Some((
            None,
            Bcast::PerChannel,
            Domain::Rows {
                channels: run,
                inner,
            },
        ))
    }
}

/// The `--emit clif` text for a graph: each distinct elementwise kernel
/// once, headed by the nodes that use it, then a count of the nodes this
/// back end does not cover yet.
pub fn emit_clif(g: &Graph) -> Result<String, BackError> {
    let mut jit = Jit::new()?;
    let mut kernels: Vec<(Chain, String, Vec<String>)> = Vec::new();
    let mut uncovered: Vec<&str> = Vec::new();
    for node in &g.nodes {
        let Some(chain) = node_chain(g, node) else {
            (node_row_kernel(g, node).is_none()).then(|| uncovered.push(node.op.name));
            continue;
        };
        let key = super::jit::KernelSource::key(&chain);
        let who = format!(
            "{} ({})",
            if node.path.is_empty() {
                "-"
            } else {
                &node.path
            },
            node.op.name
        );
        match kernels.iter_mut().find(|k| k.1 == key) {
            Some(k) => k.2.push(who),
            None => kernels.push((chain, key, vec![who])),
        }
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "; model {}: {} elementwise kernels",
        g.name,
        kernels.len()
    );
    for (chain, key, users) in &kernels {
        let _ = writeln!(s, "\n; kernel {key}");
        let _ = writeln!(s, "; used by {}", users.join(", "));
        s.push_str(&jit.clif(chain)?);
    }
    s.push_str(&node_rows_clif(g, &mut jit)?);
    uncovered.sort_unstable();
    uncovered.dedup();
    let n_uncovered = g
        .nodes
        .iter()
        .filter(|n| node_chain(g, n).is_none() && node_row_kernel(g, n).is_none())
        .count();
    let _ = writeln!(
        s,
        "\n; {n_uncovered} nodes not covered by the back end yet: {}",
        if uncovered.is_empty() {
            "(none)".to_string()
        } else {
            uncovered.join(" ")
        }
    );
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elab::elaborate;
    use crate::program::Program;
    use std::path::Path;

    fn graph(text: &str) -> Graph {
        let (p, d) = Program::from_text(Path::new("t.net"), text);
        assert!(d.is_empty(), "{d:?}");
        let m = p.model(None).unwrap();
        elaborate(&p, m, &[]).unwrap()
    }

    #[test]
    fn maps_elementwise_nodes_to_chains() {
        let g = graph(
            "model m {\n input x: f32[N, 4, 3, 3]\n input b: f32[4, 1, 1]\n input w: f32[3]\n\
             y = relu(x + b) * 0.5\n z = 2.0 - y\n output o = leaky_relu(maximum(z, w), negative_slope = 0.2)\n}\n",
        );
        let chains: Vec<Option<Chain>> = g.nodes.iter().map(|n| node_chain(&g, n)).collect();
        let c: Vec<&Chain> = chains.iter().flatten().collect();
        assert_eq!(
            c.len(),
            g.nodes.len(),
            "{:?}",
            g.nodes.iter().map(|n| n.op.name).collect::<Vec<_>>()
        );
        let add = c
            .iter()
            .find(|c| c.inputs.get(1) == Some(&Bcast::PerChannel))
            .unwrap();
        assert_eq!(
            add.domain,
            Domain::Rows {
                channels: 4,
                inner: 9
            }
        );
        let col = c
            .iter()
            .find(|c| c.inputs.get(1) == Some(&Bcast::PerColumn))
            .unwrap();
        assert_eq!(
            col.domain,
            Domain::Rows {
                channels: 1,
                inner: 3
            }
        );
        assert!(c.iter().any(|c| c.steps
            == [Step::Binary {
                op: Binary::Mul,
                rhs: Operand::Const(0.5),
                swap: false
            }]));
        assert!(c.iter().any(|c| c.steps
            == [Step::Binary {
                op: Binary::Sub,
                rhs: Operand::Const(2.0),
                swap: true
            }]));
        let text = emit_clif(&g).unwrap();
        assert!(text.contains("; model m: 6 elementwise kernels"), "{text}");
        assert!(text.contains("0 nodes not covered"), "{text}");
    }
}
