//! Lowering a graph to a runtime [`Plan`]: every node becomes a kernel call
//! (or nothing, for views), every intermediate value gets the arena offset
//! the memory planner chose, and model outputs are copied out of the arena
//! by an identity kernel at the end.
//!
//! This slice lowers graphs whose nodes are f32 elementwise ops the kernel
//! generator supports ([`super::clif::node_kernel`]) and `reshape` views;
//! any other node is reported by name. Contractions, pooling and
//! normalisation join as their kernels land.

use super::clif::node_kernel;
use super::elementwise::{Bcast, Binary, Chain, Domain};
use super::jit::Jit;
use super::BackError;
use crate::ir::{Graph, SymId, ValueId};
use crate::passes::memplan;
use netc_runtime::gemm::Strides;
use netc_runtime::plan::{Buf, Plan, Step, Work};
use netc_runtime::DType;
use std::collections::HashMap;

/// A graph lowered for fixed symbol values: the plan, and the order in
/// which the executor expects inputs, parameters and outputs.
pub struct Lowered {
    /// The schedule over one arena.
    pub plan: Plan,
    /// Input names, in the executor's input order.
    pub inputs: Vec<String>,
    /// Parameter and buffer paths, in the executor's parameter order.
    pub params: Vec<String>,
    /// Output names with their element counts, in the executor's output order.
    pub outputs: Vec<(String, usize)>,
}

/// Lowers the forward pass of `g` with the symbol values `symbols` (every
/// input symbol must be given), compiling kernels into `jit`.
pub fn lower(g: &Graph, symbols: &[(String, i64)], jit: &mut Jit) -> Result<Lowered, BackError> {
    let value_of = |s: SymId| {
        symbols
            .iter()
            .find(|(n, _)| *n == g.sym_name(s))
            .map(|(_, v)| *v)
    };
    let numel = |v: ValueId| -> Result<usize, BackError> {
        let ty = g.ty(v);
        if ty.dtype != DType::F32 || ty.sparse {
            return Err(BackError(format!(
                "value %{} is {}; this back end runs dense f32 only",
                v.0,
                g.type_text(ty)
            )));
        }
        ty.shape.iter().try_fold(1usize, |acc, d| {
            let n = d.eval(&value_of).as_known().ok_or_else(|| {
                BackError(format!(
                    "size {} of %{} is not given (pass it with the inputs)",
                    g.dim_text(d),
                    v.0
                ))
            })?;
            Ok(acc
                * usize::try_from(n)
                    .map_err(|_| BackError(format!("negative size of %{}", v.0)))?)
        })
    };
    let mem = memplan::plan(g, symbols);
    let offsets: HashMap<ValueId, &memplan::Placement> =
        mem.placements.iter().map(|p| (p.value, p)).collect();
    let mut bufs: HashMap<ValueId, Buf> = HashMap::new();
    for (i, (_, v)) in g.inputs.iter().enumerate() {
        bufs.insert(*v, Buf::Input(i));
    }
    for (i, p) in g.params.iter().enumerate() {
        bufs.insert(p.value, Buf::Param(i));
    }
    let mut steps = Vec::new();
    for node in g.nodes.iter().filter(|n| !n.train_only) {
        // Views: `reshape` reinterprets, and `dropout` is the identity at
        // inference; both share their input's buffer.
        if matches!(node.op.name, "reshape" | "dropout") {
            let src = *bufs
                .get(&node.inputs[0])
                .ok_or_else(|| missing(node.inputs[0]))?;
            bufs.insert(node.outputs[0], src);
            continue;
        }
        if node.op.name == "linear" {
            let out = node.outputs[0];
            let place = offsets.get(&out).ok_or_else(|| missing(out))?;
            let out_buf = Buf::Arena {
                offset: (place.offset / 4) as usize,
                len: numel(out)?,
            };
            bufs.insert(out, out_buf);
            let reads = node
                .inputs
                .iter()
                .map(|v| bufs.get(v).copied().ok_or_else(|| missing(*v)))
                .collect::<Result<Vec<_>, _>>()?;
            steps.extend(linear_steps(
                g,
                node,
                &reads,
                out_buf,
                numel(node.inputs[0])?,
                jit,
            )?);
            continue;
        }
        let Some((chain, reads)) = node_kernel(g, node) else {
            return Err(BackError(format!(
                "`{}` at {} is not lowered by this back end yet",
                node.op.name,
                if node.path.is_empty() {
                    "the model"
                } else {
                    &node.path
                }
            )));
        };
        let out = node.outputs[0];
        let place = offsets.get(&out).ok_or_else(|| missing(out))?;
        let elems = numel(out)?;
        let out_buf = Buf::Arena {
            offset: (place.offset / 4) as usize,
            len: elems,
        };
        bufs.insert(out, out_buf);
        let inputs = reads
            .iter()
            .map(|v| bufs.get(v).copied().ok_or_else(|| missing(*v)))
            .collect::<Result<Vec<_>, _>>()?;
        steps.push(step(&chain, jit, inputs, out_buf, elems)?);
    }
    let identity = Chain {
        inputs: vec![Bcast::Full],
        domain: Domain::Flat,
        steps: Vec::new(),
    };
    let mut outputs = Vec::new();
    for (k, (name, v)) in g.outputs.iter().enumerate() {
        let src = *bufs.get(v).ok_or_else(|| missing(*v))?;
        let n = numel(*v)?;
        steps.push(step(&identity, jit, vec![src], Buf::Output(k), n)?);
        outputs.push((name.clone(), n));
    }
    Ok(Lowered {
        plan: Plan {
            arena_len: (mem.arena_bytes / 4) as usize,
            steps,
        },
        inputs: g.inputs.iter().map(|(n, _)| n.clone()).collect(),
        params: g.params.iter().map(|p| p.path.clone()).collect(),
        outputs,
    })
}

/// `y = x·Wᵀ (+ b)`: one GEMM reading W transposed through its strides,
/// then the bias as an in-place per-column elementwise kernel.
fn linear_steps(
    g: &Graph,
    node: &crate::ir::Node,
    reads: &[Buf],
    out: Buf,
    x_len: usize,
    jit: &mut Jit,
) -> Result<Vec<Step>, BackError> {
    let w_shape = g
        .ty(node.inputs[1])
        .known_shape()
        .ok_or_else(|| BackError("linear weight with unknown shape".into()))?;
    let (n, k) = (w_shape[0] as usize, w_shape[1] as usize);
    let m = x_len / k.max(1);
    let mut steps = vec![Step {
        work: Work::Gemm {
            m,
            n,
            k,
            sa: Strides::row_major(k),
            sb: Strides::transposed(k),
            ldc: n,
        },
        inputs: vec![reads[0], reads[1]],
        output: out,
        extents: vec![m * k, n * k, m * n],
    }];
    if let Some(&bias) = reads.get(2) {
        let chain = Chain::binary(
            Binary::Add,
            Bcast::PerColumn,
            Domain::Rows {
                channels: 1,
                inner: n as u64,
            },
        );
        steps.push(step(&chain, jit, vec![out, bias], out, m * n)?);
    }
    Ok(steps)
}

fn missing(v: ValueId) -> BackError {
    BackError(format!(
        "value %{} has no buffer (its producer was not lowered)",
        v.0
    ))
}

/// One kernel call of `chain` over `elems` output elements.
fn step(
    chain: &Chain,
    jit: &mut Jit,
    inputs: Vec<Buf>,
    output: Buf,
    elems: usize,
) -> Result<Step, BackError> {
    let id = chain.compile(jit)?;
    let units = match chain.domain {
        Domain::Flat => elems as u64,
        Domain::Rows { inner, .. } => elems as u64 / inner,
    };
    let mut extents: Vec<usize> = (0..chain.inputs.len())
        .map(|k| chain.input_len(k, units) as usize)
        .collect();
    extents.push(chain.elements(units) as usize);
    Ok(Step {
        work: Work::Kernel {
            kernel: jit.code(id)?,
            units: units as usize,
            grain: 4096,
        },
        inputs,
        output,
        extents,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interp::{self, Array};
    use crate::testing::program;
    use netc_runtime::plan::Executor;

    /// The JIT-compiled plan of an elementwise graph equals the reference
    /// interpreter (itself checked against PyTorch) on 1 and 2 threads.
    #[test]
    fn elementwise_graph_runs_through_jit_kernels_and_the_executor() {
        let g = program(
            "model m() { input x: f32[N, 3, 5]  input r: f32[N, 3, 5]
                         param b: f32[3, 1] = 0.0
                         h = (x * 2.0 + b) |> relu
                         z = maximum(h - r, 0.25) |> leaky_relu(0.1)
                         output y = reshape(z, [-1, 15])
                         output w = abs(-h) }",
        )
        .unwrap();
        let n = 4;
        let x: Vec<f32> = (0..n * 15).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let r: Vec<f32> = (0..n * 15).map(|i| (i as f32 * 0.11).cos()).collect();
        let b = vec![0.5f32, -1.0, 0.25];
        let mut jit = Jit::new().unwrap();
        let lowered = lower(&g, &[("N".into(), n as i64)], &mut jit).unwrap();
        let compiled = jit.stats().compilations;
        let f64s = |v: &[f32]| v.iter().map(|&a| f64::from(a)).collect::<Vec<_>>();
        let params = HashMap::from([("b".to_string(), Array::new(&[3, 1], f64s(&b)))]);
        let want = interp::run(
            &g,
            &[
                ("x", Array::new(&[n, 3, 5], f64s(&x))),
                ("r", Array::new(&[n, 3, 5], f64s(&r))),
            ],
            &params,
        )
        .unwrap();
        for threads in [1, 2] {
            let mut ex = Executor::new(lowered.plan.clone(), threads).unwrap();
            let mut outs: Vec<Vec<f32>> = lowered
                .outputs
                .iter()
                .map(|(_, len)| vec![0.0; *len])
                .collect();
            let mut out_refs: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
            ex.run(&[&x, &r], &[&b], &mut out_refs).unwrap();
            for ((name, got), (wname, w)) in lowered.outputs.iter().zip(&outs).zip(&want) {
                assert_eq!(&name.0, wname);
                for (a, e) in got.iter().zip(&w.data) {
                    assert!(
                        (f64::from(*a) - e).abs() <= 1e-6 * e.abs().max(1.0),
                        "{wname}: {a} vs {e}"
                    );
                }
            }
        }
        // The second lowering of the same graph compiles nothing new.
        lower(&g, &[("N".into(), n as i64)], &mut jit).unwrap();
        assert_eq!(jit.stats().compilations, compiled);
    }

    /// The EEG MLP (flatten, linear through the GEMM plus a bias kernel,
    /// ReLU) equals the reference interpreter.
    #[test]
    fn mlp_runs_through_gemm_and_bias_kernels() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/eeg_mlp.net");
        let (prog, diags) = crate::program::Program::load(&root);
        assert!(diags.is_empty());
        let g = crate::elab::elaborate(&prog, prog.model(None).unwrap(), &[]).unwrap();
        let n = 5;
        let mut init = netc_runtime::Initializer::new(3);
        let params: Vec<netc_runtime::Tensor> = g
            .params
            .iter()
            .map(|p| {
                let shape: Vec<usize> =
                    p.ty.known_shape()
                        .unwrap()
                        .iter()
                        .map(|&d| d as usize)
                        .collect();
                init.tensor(p.ty.dtype, &shape, &p.init)
            })
            .collect();
        let x: Vec<f32> = (0..n * 324).map(|i| (i as f32 * 0.013).sin()).collect();
        let mut jit = Jit::new().unwrap();
        let lowered = lower(&g, &[("N".into(), n as i64)], &mut jit).unwrap();
        let mut y = vec![0.0f32; n * 2];
        let slices: Vec<&[f32]> = params.iter().map(|t| t.as_f32().unwrap()).collect();
        Executor::new(lowered.plan, 2)
            .unwrap()
            .run(&[&x], &slices, &mut [&mut y])
            .unwrap();
        let to64 = |v: &[f32]| v.iter().map(|&a| f64::from(a)).collect::<Vec<_>>();
        let named: HashMap<String, Array> = g
            .params
            .iter()
            .zip(&params)
            .map(|(p, t)| {
                (
                    p.path.clone(),
                    Array::new(t.shape(), to64(t.as_f32().unwrap())),
                )
            })
            .collect();
        let want = interp::run(&g, &[("x", Array::new(&[n, 4, 9, 9], to64(&x)))], &named).unwrap();
        for (a, e) in y.iter().zip(&want[0].1.data) {
            assert!(
                (f64::from(*a) - e).abs() <= 1e-5 * e.abs().max(1.0),
                "{a} vs {e}"
            );
        }
    }

    #[test]
    fn unsupported_nodes_and_missing_sizes_are_named() {
        let g =
            program("model m() { input x: f32[N, 4, 4]  output y = x |> max_pool1d(2) }").unwrap();
        let mut jit = Jit::new().unwrap();
        let err = lower(&g, &[("N".into(), 2)], &mut jit).err().unwrap();
        assert!(
            err.0.contains("`max_pool1d` at the model is not lowered"),
            "{err}"
        );
        let g = program("model m() { input x: f32[N, 4]  output y = relu(x) }").unwrap();
        let err = lower(&g, &[], &mut jit).err().unwrap();
        assert!(err.0.contains("size N of"), "{err}");
    }
}
