//! Lowering of training batch norm over `[N, C, ...]` (any rank >= 2):
//! `batch_norm_train` (5 results) and `batch_norm_grad` (3 results).
//!
//! Each is a statistics kernel, small per-channel kernels and an apply
//! kernel (`BnKernel`):
//!
//! - **statistics** (a work unit is a channel): one pass over the
//!   channel's `M = N·inner` values, summing in f32x4 lanes per chunk and
//!   in f64 across chunks (`super::rows::fold_row`). Forward: sums of
//!   `x − K` and `(x − K)²` with `K` the channel's first value (a shift
//!   that keeps `E[x²] − E[x]²` free of cancellation), giving the mean and
//!   the biased variance. Backward: `Σ dy` (dbias) and
//!   `invstd·Σ dy·(x − mean)` (dweight). A step has one output buffer, so
//!   the two per-channel results are staged in the first `2C` elements of
//!   the big result (`y` or `dx`, at least `2C` long since `M >= 2`), then
//!   copied out by elementwise kernels (with `1/sqrt(var + eps)` and the
//!   running-stat updates folded into them) before the apply kernel
//!   overwrites the staging area;
//! - **apply** (a work unit is one `(n, c)` row): forward
//!   `y = (x − mean)·(invstd·w) + b`, or `max(y, 0)` straight into the
//!   result of a `relu` fused into the norm (`passes::fuse`); backward
//!   `dx = (dy − dbias/M − (x − mean)·invstd·dweight/M)·invstd·w`
//!   (PyTorch's formula).

use super::data::call;
use super::rows::{fold_row, input, load_at, map_row, splat, store_f64};
use super::LowerCx;
use crate::back::elementwise::{Bcast, Binary, Chain, Domain, Operand, Step, Unary};
use crate::back::jit::KernelSource;
use crate::back::loops::{counted, elem};
use crate::back::BackError;
use crate::ir::{Attr, Node};
use cranelift_codegen::ir::{types, Block, InstBuilder, Type, Value};
use cranelift_frontend::FunctionBuilder;
use netc_runtime::plan::Buf;

/// Lowers `batch_norm_train` and `batch_norm_grad`; `None` for other ops.
pub fn try_lower(cx: &mut LowerCx, node: &Node) -> Option<Result<(), BackError>> {
    match node.op.name {
        "batch_norm_train" => Some(forward(cx, node)),
        "batch_norm_grad" => Some(backward(cx, node)),
        _ => None,
    }
}

/// What a [`BnKernel`] computes (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Inputs `[x]`; `out[c] = mean`, `out[C + c] = biased var`.
    StatsForward,
    /// Inputs `[dy, x, mean, invstd]`; `out[c] = dweight`, `out[C + c] = dbias`.
    StatsBackward,
    /// Inputs `[x, mean, invstd, w, b]`; `out = y`.
    ApplyForward,
    /// Inputs `[dy, x, mean, invstd, w, dweight, dbias]`; `out = dx`.
    ApplyBackward,
}

/// A batch-norm kernel over `[n, c, inner]`.
#[derive(Debug, Clone, Copy)]
struct BnKernel {
    mode: Mode,
    /// Forward apply only: write `max(y, 0)` (a `relu` fused into the norm).
    relu: bool,
    n: u64,
    c: u64,
    inner: u64,
}

impl BnKernel {
    fn stats(&self) -> bool {
        matches!(self.mode, Mode::StatsForward | Mode::StatsBackward)
    }

    /// Work units: channels for statistics, rows for apply.
    fn units(&self) -> usize {
        (if self.stats() {
            self.c
        } else {
            self.n * self.c
        }) as usize
    }

    /// Units worth a thread: about 32K elements.
    fn grain(&self) -> usize {
        let per = if self.stats() {
            self.n * self.inner
        } else {
            self.inner
        };
        (32768 / per.max(1)).max(1) as usize
    }

    /// Statistics of channel `ch`: the f64 accumulators of `terms` over
    /// the channel's rows of the inputs `bases`.
    fn channel_sums(
        &self,
        b: &mut FunctionBuilder,
        ptr: Type,
        bases: &[Value],
        ch: Value,
        terms: super::rows::Terms,
    ) -> Vec<Value> {
        let zero = b.ins().iconst(types::I64, 0);
        let n = b.ins().iconst(types::I64, self.n as i64);
        let len = b.ins().iconst(types::I64, self.inner as i64);
        let z = b.ins().f64const(0.0);
        let (c, inner) = (self.c as i64, self.inner as i64);
        counted(b, zero, n, 1, &[z, z], &[types::F64; 2], |b, i, acc| {
            let row = b.ins().imul_imm_s(i, c);
            let row = b.ins().iadd(row, ch);
            let e = b.ins().imul_imm_s(row, inner);
            let rows: Vec<Value> = bases.iter().map(|&p| elem(b, p, e, ptr)).collect();
            fold_row(b, ptr, &rows, len, acc, terms)
        })
    }
}

impl KernelSource for BnKernel {
    fn key(&self) -> String {
        format!(
            "bn_train.f32({:?}{};{}x{}x{})",
            self.mode,
            if self.relu { "+relu" } else { "" },
            self.n,
            self.c,
            self.inner
        )
    }

    fn build(&self, b: &mut FunctionBuilder, entry: Block, ptr: Type) -> Result<(), BackError> {
        let p = b.block_params(entry).to_vec();
        let (start, end, ins, out) = (p[0], p[1], p[2], p[3]);
        let count = match self.mode {
            Mode::StatsForward => 1,
            Mode::StatsBackward => 4,
            Mode::ApplyForward => 5,
            Mode::ApplyBackward => 7,
        };
        let bases: Vec<Value> = (0..count).map(|k| input(b, ins, k, ptr)).collect();
        let (c, inner) = (self.c as i64, self.inner as i64);
        let inv_m = 1.0 / (self.n * self.inner) as f64;
        counted(b, start, end, 1, &[], &[], |b, u, _| {
            let ch = if self.stats() {
                u
            } else {
                b.ins().urem_imm_u(u, c)
            };
            let second = b.ins().iadd_imm_s(ch, c);
            match self.mode {
                Mode::StatsForward => {
                    let first = b.ins().imul_imm_s(ch, inner);
                    let k = load_at(b, bases[0], first, ptr);
                    let terms = |b: &mut FunctionBuilder, ty: Type, v: &[Value]| {
                        let kv = splat(b, ty, k);
                        let d = b.ins().fsub(v[0], kv);
                        let d2 = b.ins().fmul(d, d);
                        vec![d, d2]
                    };
                    let s = self.channel_sums(b, ptr, &bases, ch, &terms);
                    let im = b.ins().f64const(inv_m);
                    let shift = b.ins().fmul(s[0], im);
                    let k64 = b.ins().fpromote(types::F64, k);
                    let mean = b.ins().fadd(k64, shift);
                    let sq = b.ins().fmul(s[1], im);
                    let sh2 = b.ins().fmul(shift, shift);
                    let var = b.ins().fsub(sq, sh2);
                    let z = b.ins().f64const(0.0);
                    let var = b.ins().fmax(var, z);
                    store_f64(b, mean, out, ch, ptr);
                    store_f64(b, var, out, second, ptr);
                }
                Mode::StatsBackward => {
                    let mean = load_at(b, bases[2], ch, ptr);
                    let invstd = load_at(b, bases[3], ch, ptr);
                    let terms = |b: &mut FunctionBuilder, ty: Type, v: &[Value]| {
                        let mv = splat(b, ty, mean);
                        let d = b.ins().fsub(v[1], mv);
                        let gd = b.ins().fmul(v[0], d);
                        vec![v[0], gd]
                    };
                    let s = self.channel_sums(b, ptr, &bases[..2], ch, &terms);
                    let i64v = b.ins().fpromote(types::F64, invstd);
                    let dw = b.ins().fmul(s[1], i64v);
                    store_f64(b, dw, out, ch, ptr);
                    store_f64(b, s[0], out, second, ptr);
                }
                Mode::ApplyForward | Mode::ApplyBackward => {
                    let at = |b: &mut FunctionBuilder, k: usize| load_at(b, bases[k], ch, ptr);
                    let e = b.ins().imul_imm_s(u, inner);
                    let o = elem(b, out, e, ptr);
                    let row = |b: &mut FunctionBuilder, k: usize| elem(b, bases[k], e, ptr);
                    if self.mode == Mode::ApplyForward {
                        let (mean, invstd, w, bias) = (at(b, 1), at(b, 2), at(b, 3), at(b, 4));
                        let a = b.ins().fmul(invstd, w);
                        let x = row(b, 0);
                        map_row(b, ptr, &[x], o, inner, &|b, ty, v| {
                            let (mv, av, bv) =
                                (splat(b, ty, mean), splat(b, ty, a), splat(b, ty, bias));
                            let d = b.ins().fsub(v[0], mv);
                            let d = b.ins().fmul(d, av);
                            let y = b.ins().fadd(d, bv);
                            if self.relu {
                                let z = b.ins().f32const(0.0);
                                let z = splat(b, ty, z);
                                b.ins().fmax(y, z)
                            } else {
                                y
                            }
                        });
                    } else {
                        let (mean, invstd, w) = (at(b, 2), at(b, 3), at(b, 4));
                        let (dw, db) = (at(b, 5), at(b, 6));
                        let im = b.ins().f32const(inv_m as f32);
                        let k1 = b.ins().fmul(db, im);
                        let k2 = b.ins().fmul(invstd, dw);
                        let k2 = b.ins().fmul(k2, im);
                        let g = b.ins().fmul(invstd, w);
                        let (dy, x) = (row(b, 0), row(b, 1));
                        map_row(b, ptr, &[dy, x], o, inner, &|b, ty, v| {
                            let (mv, k1v) = (splat(b, ty, mean), splat(b, ty, k1));
                            let (k2v, gv) = (splat(b, ty, k2), splat(b, ty, g));
                            let d = b.ins().fsub(v[1], mv);
                            let d = b.ins().fmul(d, k2v);
                            let r = b.ins().fsub(v[0], k1v);
                            let r = b.ins().fsub(r, d);
                            b.ins().fmul(r, gv)
                        });
                    }
                }
            }
            vec![]
        });
        b.ins().return_(&[]);
        Ok(())
    }
}

/// `(N, C, inner)` of a `[N, C, ...]` input, with at least two values
/// per channel.
fn geometry(cx: &LowerCx, node: &Node) -> Result<(usize, usize, usize), BackError> {
    let xs = match node.inputs.first() {
        Some(x) => cx.shape(*x)?,
        None => Vec::new(),
    };
    let bad = |why: &str| {
        BackError(format!(
            "`{}` at {}: {why} (input {xs:?})",
            node.op.name, node.path
        ))
    };
    if node.inputs.len() != 5 {
        return Err(bad(&format!(
            "takes 5 operands, given {}",
            node.inputs.len()
        )));
    }
    if xs.len() < 2 {
        return Err(bad("needs rank >= 2 ([N, C, ...])"));
    }
    let (n, c, inner) = (xs[0], xs[1], xs[2..].iter().product::<usize>());
    if n * inner < 2 {
        return Err(bad("training needs at least 2 values per channel"));
    }
    Ok((n, c, inner))
}

fn float(node: &Node, key: &str, default: f64) -> f64 {
    match node.op.attr(key) {
        Some(Attr::Float(v)) => *v,
        _ => default,
    }
}

/// Compiles `k` and appends its call over its units.
fn run(
    cx: &mut LowerCx,
    k: BnKernel,
    inputs: Vec<Buf>,
    extents: Vec<usize>,
    out: Buf,
) -> Result<(), BackError> {
    let id = cx.jit.kernel(&k)?;
    call(cx, id, k.units(), k.grain(), inputs, extents, out)
}

/// Elements `[at, at + len)` of an arena buffer.
fn part(buf: Buf, at: usize, len: usize) -> Result<Buf, BackError> {
    match buf {
        Buf::Arena { offset, .. } => Ok(Buf::Arena {
            offset: offset + at,
            len,
        }),
        other => Err(BackError(format!(
            "batch-norm staging needs an arena buffer, not {other:?}"
        ))),
    }
}

/// A flat elementwise chain over `[c]` vectors: `inputs[0]` through `steps`.
fn small(
    cx: &mut LowerCx,
    steps: Vec<Step>,
    inputs: Vec<Buf>,
    out: Buf,
    c: usize,
) -> Result<(), BackError> {
    let chain = Chain {
        inputs: vec![Bcast::Full; inputs.len()],
        domain: Domain::Flat,
        steps,
    };
    cx.kernel(&chain, inputs, out, c)
}

fn bin(op: Binary, rhs: Operand) -> Step {
    Step::Binary {
        op,
        rhs,
        swap: false,
    }
}

fn forward(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let (n, c, inner) = geometry(cx, node)?;
    let eps = float(node, "eps", 1e-5) as f32;
    let m = float(node, "momentum", 0.1) as f32;
    let outs = node
        .outputs
        .get(1..)
        .unwrap_or_default()
        .iter()
        .map(|v| cx.output(*v))
        .collect::<Result<Vec<_>, _>>()?;
    let [mean, invstd, new_rm, new_rv] = outs[..] else {
        return Err(BackError(format!(
            "`batch_norm_train` at {} has {} results, not 5",
            node.path,
            outs.len() + 1
        )));
    };
    // A fused relu (passes::fuse) takes the normalised result's place.
    let relu = match cx.followers(node)[..] {
        [] => false,
        [f] if f.op.name == "relu" => true,
        ref other => {
            return Err(BackError(format!(
                "`batch_norm_train` at {} cannot run fused followers {:?}",
                node.path,
                other.iter().map(|f| f.op.name).collect::<Vec<_>>()
            )))
        }
    };
    let y = match cx.followers(node)[..] {
        [f] => cx.output(f.outputs[0])?,
        _ => cx.output(node.outputs[0])?,
    };
    let ins = cx.buf_list(&node.inputs)?;
    let numel = n * c * inner;
    let k = |mode| BnKernel {
        mode,
        relu: relu && mode == Mode::ApplyForward,
        n: n as u64,
        c: c as u64,
        inner: inner as u64,
    };
    run(
        cx,
        k(Mode::StatsForward),
        vec![ins[0]],
        vec![numel, 2 * c],
        y,
    )?;
    let (s_mean, s_var) = (part(y, 0, c)?, part(y, c, c)?);
    small(cx, Vec::new(), vec![s_mean], mean, c)?;
    let one_over = Step::Binary {
        op: Binary::Div,
        rhs: Operand::Const(1.0),
        swap: true,
    };
    let steps = vec![
        bin(Binary::Add, Operand::Const(eps)),
        Step::Unary(Unary::Sqrt),
        one_over,
    ];
    small(cx, steps, vec![s_var], invstd, c)?;
    // rm + m·(mean − rm), rv + m·(var·M/(M−1) − rv).
    let blend = |pre: Vec<Step>| {
        let mut s = pre;
        s.extend([
            bin(Binary::Sub, Operand::Input(1)),
            bin(Binary::Mul, Operand::Const(m)),
            bin(Binary::Add, Operand::Input(1)),
        ]);
        s
    };
    small(cx, blend(Vec::new()), vec![s_mean, ins[3]], new_rm, c)?;
    let count = (n * inner) as f64;
    let unbias = bin(Binary::Mul, Operand::Const((count / (count - 1.0)) as f32));
    small(cx, blend(vec![unbias]), vec![s_var, ins[4]], new_rv, c)?;
    run(
        cx,
        k(Mode::ApplyForward),
        vec![ins[0], mean, invstd, ins[1], ins[2]],
        vec![numel, c, c, c, c, numel],
        y,
    )
}

fn backward(cx: &mut LowerCx, node: &Node) -> Result<(), BackError> {
    let (n, c, inner) = geometry(cx, node)?;
    let outs = cx.output_list(&node.outputs)?;
    let [dx, dw, db] = outs[..] else {
        return Err(BackError(format!(
            "`batch_norm_grad` at {} has {} results, not 3",
            node.path,
            outs.len()
        )));
    };
    let ins = cx.buf_list(&node.inputs)?;
    let numel = n * c * inner;
    let k = |mode| BnKernel {
        mode,
        relu: false,
        n: n as u64,
        c: c as u64,
        inner: inner as u64,
    };
    run(
        cx,
        k(Mode::StatsBackward),
        ins[..4].to_vec(),
        vec![numel, numel, c, c, 2 * c],
        dx,
    )?;
    small(cx, Vec::new(), vec![part(dx, 0, c)?], dw, c)?;
    small(cx, Vec::new(), vec![part(dx, c, c)?], db, c)?;
    let mut inputs = ins.clone();
    inputs.extend([dw, db]);
    run(
        cx,
        k(Mode::ApplyBackward),
        inputs,
        vec![numel, numel, c, c, c, c, c, numel],
        dx,
    )
}

#[cfg(test)]
mod tests;
