//! Elementwise graph nodes as kernel [`Chain`]s, and `netc compile --emit
//! clif|asm`: the kernels a lowered plan needs, each printed once.
//!
//! [`node_kernel`] maps single f32 elementwise nodes:
//! `relu neg abs square sqrt clamp leaky_relu exp log tanh sigmoid silu gelu`
//! and `add sub mul div maximum minimum` and the activation gradients
//! `relu_grad tanh_grad sigmoid_grad leaky_relu_grad silu_grad gelu_grad`
//! whose second operand has the
//! output's shape, is a scalar (a compile-time number becomes a constant),
//! or is a per-channel (`[C, 1, .., 1]`) or trailing (`[.., W]`) broadcast.
//!
//! [`emit_kernels`] lowers the whole graph with a logging [`Jit`] and prints
//! what it compiled, so the listing is exactly the plan's kernels (fused
//! groups, epilogues, GEMM tiles, output copies), not a per-node guess.

use super::elementwise::{Bcast, Binary, Chain, Domain, Grad, Operand, Step, Unary};
use super::jit::Jit;
use super::lower::lower;
use super::BackError;
use crate::ir::{Attr, Dim, Graph, Node, ValueDef, ValueId};
use crate::options::CompileOptions;
use netc_runtime::plan::{Step as PlanStep, Work};
use netc_runtime::DType;
use std::fmt::Write as _;

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
    let op = binary_node(node)?;
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

/// The binary kernel op of an elementwise node, if it is one: the
/// arithmetic ops of [`binary_of`] and the activation gradients
/// (`relu_grad(dy, y)`, ..., whose attributes pick the variant).
pub(crate) fn binary_node(node: &Node) -> Option<Binary> {
    binary_of(node.op.name).or_else(|| {
        Some(Binary::Grad(match node.op.name {
            "relu_grad" => Grad::Relu,
            "tanh_grad" => Grad::Tanh,
            "sigmoid_grad" => Grad::Sigmoid,
            "leaky_relu_grad" => Grad::LeakyRelu {
                slope: float_attr(node, "negative_slope").unwrap_or(0.01),
            },
            "silu_grad" => Grad::Silu,
            "gelu_grad"
                if matches!(node.op.attr("approximate"), Some(Attr::Str(a)) if a == "tanh") =>
            {
                Grad::GeluTanh
            }
            "gelu_grad" => Grad::Gelu,
            _ => return None,
        }))
    })
}

/// The binary kernel op of an arithmetic elementwise op name, if it is one.
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

/// What `netc compile --emit` prints of each kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listing {
    /// The Cranelift IR as built.
    Clif,
    /// The machine code (Cranelift's x64 vcode text, AT&T syntax).
    Asm,
}

/// The `--emit clif|asm` text for a graph: lowers `g` for the symbol values
/// `symbols` with `options` (as a run would, after the pass pipeline) and
/// prints every distinct kernel the plan needs once, headed by its key,
/// its code size and the layers that use it.
pub fn emit_kernels(
    g: &Graph,
    symbols: &[(String, i64)],
    options: CompileOptions,
    listing: Listing,
) -> Result<String, BackError> {
    let mut jit = Jit::new()?;
    jit.enable_log();
    let lowered = lower(g, symbols, options, &mut jit)?;
    let plan = &lowered.plan;
    let calls = |steps: &[PlanStep]| {
        steps
            .iter()
            .filter(|s| matches!(s.work, Work::Kernel { .. }))
            .count()
    };
    let sizes: Vec<String> = symbols.iter().map(|(n, v)| format!("{n}={v}")).collect();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "; model {}{}: {} distinct kernels",
        g.name,
        if sizes.is_empty() {
            String::new()
        } else {
            format!(" ({})", sizes.join(", "))
        },
        jit.log().len()
    );
    let _ = writeln!(
        s,
        "; plan: {} steps ({} kernel calls), {} prepare steps ({} kernel calls)",
        plan.steps.len(),
        calls(&plan.steps),
        plan.prepare.len(),
        calls(&plan.prepare)
    );
    for r in jit.log() {
        let _ = writeln!(s, "\n; kernel {}", r.key);
        let _ = writeln!(s, "; {} bytes of machine code", r.code_size);
        let _ = writeln!(s, "; used by {}", r.users.join(", "));
        match listing {
            Listing::Clif => s.push_str(&r.clif),
            Listing::Asm => s.push_str(&r.asm),
        }
    }
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
        let chains: Vec<Option<Chain>> = g
            .nodes
            .iter()
            .map(|n| node_kernel(&g, n).map(|(chain, _)| chain))
            .collect();
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
    }

    /// The listing is what lowering compiled: one entry per distinct
    /// kernel, with every layer that uses it, and the output copy.
    #[test]
    fn lists_each_compiled_kernel_once_with_its_users() {
        let g = graph(
            "model m {\n input x: f32[N, 8]\n a = x |> r1: relu\n\
             b = (a * 2.0) |> r2: relu\n output y = b + a\n}\n",
        );
        let symbols = [("N".to_string(), 3)];
        let text = emit_kernels(&g, &symbols, CompileOptions::default(), Listing::Clif).unwrap();
        // relu, mul by 2, add, and the identity copy to the output.
        assert!(
            text.starts_with("; model m (N=3): 4 distinct kernels"),
            "{text}"
        );
        assert!(text.contains("; plan: 5 steps (5 kernel calls)"), "{text}");
        assert_eq!(
            text.matches("; kernel ew.f32(Full;flat) Relu").count(),
            1,
            "{text}"
        );
        assert!(text.contains("; used by r1 (relu), r2 (relu)\n"), "{text}");
        assert!(text.contains("; used by y (output)\n"), "{text}");
        assert!(text.contains("load.f32x4"), "{text}");
        let asm = emit_kernels(&g, &symbols, CompileOptions::default(), Listing::Asm).unwrap();
        assert_eq!(asm.matches("; kernel ").count(), 4, "{asm}");
        assert!(asm.contains("ret"), "{asm}");
        assert!(!asm.contains("load.f32x4"), "{asm}");
    }
}
