//! Loss kernels: the forward losses `cross_entropy`, `multi_margin`,
//! `bce_with_logits`, `mse` and their gradients with respect to the first
//! operand, as scalar f32 code (losses are small: `N × C`).
//!
//! A kernel works on **rows**: a cross-entropy row is one `(n, d...)`
//! position (its `C` logits are `inner` apart), a multi-margin row is one
//! sample, an element loss row is one element.
//!
//! - forward, `reduction = "none"`: work units are rows; unit `r` writes
//!   the loss of row `r` to `out[r]`;
//! - forward, `mean` / `sum`: one work unit loops over every row,
//!   accumulating in f64 in row order (results do not depend on the thread
//!   count), and writes `out[0]`;
//! - gradient: work units are rows; unit `r` writes the gradient of row
//!   `r`'s inputs. The scale is `dloss[r]` (`none`), `dloss[0]` (`sum`) or
//!   `dloss[0] / D` (`mean`), with `D` the row count, the element count,
//!   or for cross entropy the f64 sum of the target classes' weights over
//!   the rows not ignored (each call recomputes it in row order, so at most
//!   one pass over the targets per thread).
//!
//! Inputs (pointer order): `x, target, [dloss,] [extra]`, `dloss` for
//! gradients only, `extra` the class weights (`weighted`) or the
//! `pos_weight` vector. Class-index targets arrive as f32 holding the
//! integer. A target that is not a class in `0..C` (or equals
//! `ignore_index`) reads class 0 (never out of bounds) and its row
//! contributes nothing: loss 0, weight 0, gradient 0. (PyTorch raises an
//! error for such targets; the reference interpreter does too.)
//!
//! Numerics: cross entropy uses the max-subtracted log-sum-exp; BCE is
//! `(1 − t)·softplus(x) + pw·t·softplus(−x)` with `softplus(±x) =
//! max(±x, 0) + log1p(e^{−|x|})` and an accurate `log1p`; its gradient is
//! `(1 − t)·σ(x) − pw·t·σ(−x)` (no cancellation for hard targets).

use super::jit::{Jit, KernelId, KernelSource};
use super::loops::{counted, elem, flags};
use super::math::{self, Math};
use super::BackError;
use cranelift_codegen::ir::{
    condcodes::{FloatCC, IntCC},
    types, Block, InstBuilder, Type, Value,
};
use cranelift_frontend::FunctionBuilder;

/// Which loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LossKind {
    /// `cross_entropy` over logits `[N, C, d...]`.
    CrossEntropy {
        /// `C`.
        classes: u64,
        /// The product of the trailing dims `d...` (1 for `[N, C]`).
        inner: u64,
        /// Label smoothing in `[0, 1]`.
        smoothing: f32,
        /// The ignored target value.
        ignore: f32,
        /// Whether a `[C]` class-weight input is given.
        weighted: bool,
    },
    /// `multi_margin` over scores `[N, C]`.
    MultiMargin {
        /// `C`.
        classes: u64,
        /// The exponent, 1 or 2.
        p: u8,
        /// The margin.
        margin: f32,
        /// Whether a `[C]` class-weight input is given.
        weighted: bool,
    },
    /// `bce_with_logits`; with a `pos_weight` input read at element
    /// `(i / div) % period` when given.
    Bce {
        /// `(div, period)` of the `pos_weight` broadcast, if any.
        pos_weight: Option<(u64, u64)>,
    },
    /// `mse`.
    Mse,
}

/// How the per-row losses are reduced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduction {
    /// The mean (weighted, for cross entropy with class weights).
    Mean,
    /// The sum.
    Sum,
    /// Per-row losses.
    None,
}

impl Reduction {
    /// The reduction named `s` (`mean`, `sum`, `none`).
    pub fn parse(s: &str) -> Option<Reduction> {
        Some(match s {
            "mean" => Reduction::Mean,
            "sum" => Reduction::Sum,
            "none" => Reduction::None,
            _ => return None,
        })
    }
}

/// A loss or loss-gradient kernel (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossKernel {
    /// The loss.
    pub kind: LossKind,
    /// The reduction.
    pub reduction: Reduction,
    /// The gradient with respect to input 0 instead of the loss.
    pub grad: bool,
    /// The number of rows.
    pub rows: u64,
}

/// Input pointer slots.
const X: i32 = 0;
const TARGET: i32 = 1;

impl LossKernel {
    /// Checks the sizes: `1 <= C, inner`, `p` 1 or 2, everything below 2^40.
    pub fn validate(&self) -> Result<(), BackError> {
        let big = 1u64 << 40;
        let ok = match self.kind {
            LossKind::CrossEntropy { classes, inner, .. } => {
                (1..big).contains(&classes) && (1..big).contains(&inner)
            }
            LossKind::MultiMargin { classes, p, .. } => {
                (1..big).contains(&classes) && (p == 1 || p == 2)
            }
            LossKind::Bce {
                pos_weight: Some((div, period)),
            } => (1..big).contains(&div) && (1..big).contains(&period),
            LossKind::Bce { .. } | LossKind::Mse => true,
        };
        if !ok || self.rows >= big {
            return Err(BackError(format!(
                "loss kernel `{}`: sizes out of range",
                self.key()
            )));
        }
        Ok(())
    }

    /// Compiles this kernel, or finds it in the cache.
    pub fn compile(&self, jit: &mut Jit) -> Result<KernelId, BackError> {
        self.validate()?;
        jit.kernel(self)
    }

    /// The number of work units of one call.
    pub fn units(&self) -> u64 {
        if self.grad || self.reduction == Reduction::None {
            self.rows
        } else {
            1
        }
    }

    /// Elements per row of input 0 (and of a gradient's output).
    pub fn row_len(&self) -> u64 {
        match self.kind {
            LossKind::CrossEntropy { classes, .. } | LossKind::MultiMargin { classes, .. } => {
                classes
            }
            LossKind::Bce { .. } | LossKind::Mse => 1,
        }
    }

    /// The slot of the `extra` input (class weights or `pos_weight`).
    fn extra_slot(&self) -> i32 {
        if self.grad {
            3
        } else {
            2
        }
    }

    fn has_extra(&self) -> bool {
        match self.kind {
            LossKind::CrossEntropy { weighted, .. } | LossKind::MultiMargin { weighted, .. } => {
                weighted
            }
            LossKind::Bce { pos_weight } => pos_weight.is_some(),
            LossKind::Mse => false,
        }
    }

    /// The number of input pointers the kernel reads.
    pub fn inputs(&self) -> usize {
        2 + usize::from(self.grad) + usize::from(self.has_extra())
    }
}

fn fb(f: f32) -> String {
    format!("{:08x}", f.to_bits())
}

impl KernelSource for LossKernel {
    fn key(&self) -> String {
        let kind = match self.kind {
            LossKind::CrossEntropy {
                classes,
                inner,
                smoothing,
                ignore,
                weighted,
            } => format!(
                "cross_entropy(c={classes},inner={inner},ls={},ignore={},w={weighted})",
                fb(smoothing),
                fb(ignore)
            ),
            LossKind::MultiMargin {
                classes,
                p,
                margin,
                weighted,
            } => format!(
                "multi_margin(c={classes},p={p},margin={},w={weighted})",
                fb(margin)
            ),
            LossKind::Bce { pos_weight } => format!("bce_with_logits(pw={pos_weight:?})"),
            LossKind::Mse => "mse".into(),
        };
        format!(
            "loss.f32.{kind}{}.{:?}(rows={})",
            if self.grad { ".grad" } else { "" },
            self.reduction,
            self.rows
        )
    }

    fn build(&self, b: &mut FunctionBuilder, entry: Block, ptr: Type) -> Result<(), BackError> {
        self.validate()?;
        let p = b.block_params(entry).to_vec();
        let (start, end, ins, out) = (p[0], p[1], p[2], p[3]);
        let psize = ptr.bytes() as i32;
        let slot = |b: &mut FunctionBuilder, k: i32| b.ins().load(ptr, flags(), ins, psize * k);
        let io = Io {
            ptr,
            x: slot(b, X),
            target: slot(b, TARGET),
            dloss: if self.grad { Some(slot(b, 2)) } else { None },
            extra: if self.has_extra() {
                Some(slot(b, self.extra_slot()))
            } else {
                None
            },
            out,
        };
        if let Some(dloss) = io.dloss {
            // `none`: per-row scales; `sum` / `mean`: one, computed first.
            let scale = match self.reduction {
                Reduction::None => None,
                _ => Some(self.scale(b, &io, dloss)),
            };
            counted(b, start, end, 1, &[], &[], |b, r, _| {
                let g = match scale {
                    Some(g) => g,
                    None => load(b, &io, dloss, r),
                };
                self.grad_row(b, &io, r, g);
                vec![]
            });
        } else if self.reduction == Reduction::None {
            counted(b, start, end, 1, &[], &[], |b, r, _| {
                let (loss, _) = self.loss_row(b, &io, r);
                store(b, &io, io.out, r, loss);
                vec![]
            });
        } else {
            counted(b, start, end, 1, &[], &[], |b, _, _| {
                self.reduce(b, &io);
                vec![]
            });
        }
        b.ins().return_(&[]);
        Ok(())
    }
}

/// The kernel's buffers.
struct Io {
    ptr: Type,
    x: Value,
    target: Value,
    dloss: Option<Value>,
    extra: Option<Value>,
    out: Value,
}

fn load(b: &mut FunctionBuilder, io: &Io, base: Value, i: Value) -> Value {
    let a = elem(b, base, i, io.ptr);
    b.ins().load(types::F32, flags(), a, 0)
}

fn store(b: &mut FunctionBuilder, io: &Io, base: Value, i: Value, v: Value) {
    let a = elem(b, base, i, io.ptr);
    b.ins().store(flags(), v, a, 0);
}

fn fc(b: &mut FunctionBuilder, v: f32) -> Value {
    b.ins().f32const(v)
}

fn ic(b: &mut FunctionBuilder, v: u64) -> Value {
    b.ins().iconst(types::I64, v as i64)
}

/// A class-index target: whether it is valid (in `0..classes` and not
/// `ignore`) and its class, 0 when it is not.
fn class(b: &mut FunctionBuilder, t: Value, classes: u64, ignore: Option<f32>) -> (Value, Value) {
    let zero = fc(b, 0.0);
    let top = fc(b, classes as f32);
    let ge = b.ins().fcmp(FloatCC::GreaterThanOrEqual, t, zero);
    let lt = b.ins().fcmp(FloatCC::LessThan, t, top);
    let mut valid = b.ins().band(ge, lt);
    if let Some(ig) = ignore {
        let igv = fc(b, ig);
        let ne = b.ins().fcmp(FloatCC::NotEqual, t, igv);
        valid = b.ins().band(valid, ne);
    }
    let ti = b.ins().fcvt_to_sint_sat(types::I64, t);
    // `classes as f32` may round up: clamp the index as well.
    let last = ic(b, classes - 1);
    let over = b.ins().icmp(IntCC::SignedGreaterThan, ti, last);
    let ti = b.ins().select(over, last, ti);
    let z = ic(b, 0);
    let ti = b.ins().select(valid, ti, z);
    (valid, ti)
}

/// `log(1 + e)` for `e` in `[0, 1]`, accurate also for tiny `e`:
/// `log(u)·e/(u − 1)` with `u = 1 + e` (Goldberg), `e` when `u == 1`.
fn log1p_small(m: &mut Math, e: Value) -> Value {
    let one = m.c(1.0);
    let u = m.b.ins().fadd(one, e);
    let d = m.b.ins().fsub(u, one);
    let l = math::log(m, u);
    let le = m.b.ins().fmul(l, e);
    let q = m.b.ins().fdiv(le, d);
    let zero = m.c(0.0);
    let exact = m.b.ins().fcmp(FloatCC::Equal, d, zero);
    m.b.ins().select(exact, e, q)
}

impl LossKernel {
    /// The sum of all rows' losses (and weights), reduced, into `out[0]`.
    fn reduce(&self, b: &mut FunctionBuilder, io: &Io) {
        let z64 = b.ins().f64const(0.0);
        let zero = ic(b, 0);
        let rows = ic(b, self.rows);
        let acc = counted(
            b,
            zero,
            rows,
            1,
            &[z64, z64],
            &[types::F64, types::F64],
            |b, r, c| {
                let (loss, w) = self.loss_row(b, io, r);
                let l64 = b.ins().fpromote(types::F64, loss);
                let w64 = b.ins().fpromote(types::F64, w);
                vec![b.ins().fadd(c[0], l64), b.ins().fadd(c[1], w64)]
            },
        );
        let total = match self.reduction {
            Reduction::Mean => {
                let d = match self.kind {
                    LossKind::CrossEntropy { .. } => acc[1],
                    _ => b.ins().f64const(self.rows as f64),
                };
                b.ins().fdiv(acc[0], d)
            }
            _ => acc[0],
        };
        let v = b.ins().fdemote(types::F32, total);
        store(b, io, io.out, zero, v);
    }

    /// The gradient scale of the `sum` and `mean` reductions:
    /// `dloss[0]` or `dloss[0] / D`.
    fn scale(&self, b: &mut FunctionBuilder, io: &Io, dloss: Value) -> Value {
        let zero = ic(b, 0);
        let d0 = load(b, io, dloss, zero);
        if self.reduction == Reduction::Sum {
            return d0;
        }
        let denom = match self.kind {
            LossKind::CrossEntropy {
                classes, ignore, ..
            } => {
                let z64 = b.ins().f64const(0.0);
                let rows = ic(b, self.rows);
                counted(b, zero, rows, 1, &[z64], &[types::F64], |b, r, c| {
                    let t = load(b, io, io.target, r);
                    let (valid, ti) = class(b, t, classes, Some(ignore));
                    let w = self.class_weight(b, io, ti);
                    let z = fc(b, 0.0);
                    let w = b.ins().select(valid, w, z);
                    let w64 = b.ins().fpromote(types::F64, w);
                    vec![b.ins().fadd(c[0], w64)]
                })[0]
            }
            _ => b.ins().f64const(self.rows as f64),
        };
        let d64 = b.ins().fpromote(types::F64, d0);
        let g = b.ins().fdiv(d64, denom);
        b.ins().fdemote(types::F32, g)
    }

    /// The weight of class `ti` (1 without class weights).
    fn class_weight(&self, b: &mut FunctionBuilder, io: &Io, ti: Value) -> Value {
        match io.extra {
            Some(w) => load(b, io, w, ti),
            None => fc(b, 1.0),
        }
    }

    /// The loss of row `r` and its weight in a weighted mean.
    fn loss_row(&self, b: &mut FunctionBuilder, io: &Io, r: Value) -> (Value, Value) {
        match self.kind {
            LossKind::CrossEntropy {
                classes,
                inner,
                smoothing,
                ignore,
                ..
            } => {
                let ce = self.ce_row(b, io, r, classes, inner, ignore);
                let wt = self.class_weight(b, io, ce.ti);
                let lt = load(b, io, io.x, ce.at_t);
                let d = b.ins().fsub(ce.lse, lt);
                let mut loss = b.ins().fmul(wt, d);
                if smoothing > 0.0 {
                    let zero = ic(b, 0);
                    let c = ic(b, classes);
                    let z = fc(b, 0.0);
                    let sm = counted(b, zero, c, 1, &[z], &[types::F32], |b, k, acc| {
                        let a = ce.at(b, k);
                        let l = load(b, io, io.x, a);
                        let d = b.ins().fsub(ce.lse, l);
                        let w = self.class_weight(b, io, k);
                        let wd = b.ins().fmul(w, d);
                        vec![b.ins().fadd(acc[0], wd)]
                    })[0];
                    let a = fc(b, 1.0 - smoothing);
                    let s = fc(b, smoothing / classes as f32);
                    let nll = b.ins().fmul(a, loss);
                    let sm = b.ins().fmul(s, sm);
                    loss = b.ins().fadd(nll, sm);
                }
                let z = fc(b, 0.0);
                (
                    b.ins().select(ce.valid, loss, z),
                    b.ins().select(ce.valid, wt, z),
                )
            }
            LossKind::MultiMargin {
                classes, p, margin, ..
            } => {
                let mm = MarginRow::new(b, io, r, classes, margin);
                let zero = ic(b, 0);
                let c = ic(b, classes);
                let z = fc(b, 0.0);
                let sum = counted(b, zero, c, 1, &[z], &[types::F32], |b, i, acc| {
                    let zi = mm.z(b, io, i);
                    let zf = fc(b, 0.0);
                    let h = b.ins().fmax(zi, zf);
                    let h = if p == 2 { b.ins().fmul(h, h) } else { h };
                    let is_t = b.ins().icmp(IntCC::Equal, i, mm.ti);
                    let h = b.ins().select(is_t, zf, h);
                    vec![b.ins().fadd(acc[0], h)]
                })[0];
                let wt = self.class_weight(b, io, mm.ti);
                let cf = fc(b, classes as f32);
                let l = b.ins().fmul(wt, sum);
                let l = b.ins().fdiv(l, cf);
                let one = fc(b, 1.0);
                (b.ins().select(mm.valid, l, z), one)
            }
            LossKind::Bce { pos_weight } => {
                let x = load(b, io, io.x, r);
                let t = load(b, io, io.target, r);
                let pw = self.pos_weight(b, io, r, pos_weight);
                let m = &mut Math { b, ty: types::F32 };
                let ax = m.b.ins().fabs(x);
                let nax = m.b.ins().fneg(ax);
                let e = math::exp(m, nax);
                let l1p = log1p_small(m, e);
                let zero = m.c(0.0);
                let px = m.b.ins().fmax(x, zero);
                let nx = m.b.ins().fneg(x);
                let pnx = m.b.ins().fmax(nx, zero);
                let sp_x = m.b.ins().fadd(px, l1p);
                let sp_nx = m.b.ins().fadd(pnx, l1p);
                let one = m.c(1.0);
                let omt = m.b.ins().fsub(one, t);
                let a = m.b.ins().fmul(omt, sp_x);
                let pt = m.b.ins().fmul(pw, t);
                let c = m.b.ins().fmul(pt, sp_nx);
                (m.b.ins().fadd(a, c), one)
            }
            LossKind::Mse => {
                let x = load(b, io, io.x, r);
                let t = load(b, io, io.target, r);
                let d = b.ins().fsub(x, t);
                let one = fc(b, 1.0);
                (b.ins().fmul(d, d), one)
            }
        }
    }

    /// The `pos_weight` of element `r` (1 without one).
    fn pos_weight(
        &self,
        b: &mut FunctionBuilder,
        io: &Io,
        r: Value,
        pw: Option<(u64, u64)>,
    ) -> Value {
        match (pw, io.extra) {
            (Some((div, period)), Some(base)) => {
                let q = b.ins().udiv_imm_u(r, div as i64);
                let k = b.ins().urem_imm_u(q, period as i64);
                load(b, io, base, k)
            }
            _ => fc(b, 1.0),
        }
    }

    /// Writes the gradient of row `r` scaled by `g`.
    fn grad_row(&self, b: &mut FunctionBuilder, io: &Io, r: Value, g: Value) {
        match self.kind {
            LossKind::CrossEntropy {
                classes,
                inner,
                smoothing,
                ignore,
                ..
            } => {
                let ce = self.ce_row(b, io, r, classes, inner, ignore);
                let wt = self.class_weight(b, io, ce.ti);
                let eps = smoothing;
                let zero = ic(b, 0);
                let c = ic(b, classes);
                // A = (1 − ε)·w_t + ε/C·Σw; B_j = (1 − ε)·w_t·[j = t] + ε/C·w_j.
                let w_sum = match io.extra {
                    Some(_) if eps > 0.0 => {
                        let z = fc(b, 0.0);
                        counted(b, zero, c, 1, &[z], &[types::F32], |b, k, acc| {
                            let w = self.class_weight(b, io, k);
                            vec![b.ins().fadd(acc[0], w)]
                        })[0]
                    }
                    _ => fc(b, classes as f32),
                };
                let one_m = fc(b, 1.0 - eps);
                let s = fc(b, eps / classes as f32);
                let hot = b.ins().fmul(one_m, wt);
                let sw = b.ins().fmul(s, w_sum);
                let a = b.ins().fadd(hot, sw);
                counted(b, zero, c, 1, &[], &[], |b, k, _| {
                    let at = ce.at(b, k);
                    let l = load(b, io, io.x, at);
                    let d = b.ins().fsub(l, ce.lse);
                    let p = math::exp(&mut Math { b, ty: types::F32 }, d);
                    let w = self.class_weight(b, io, k);
                    let bj = b.ins().fmul(s, w);
                    let is_t = b.ins().icmp(IntCC::Equal, k, ce.ti);
                    let z = fc(b, 0.0);
                    let h = b.ins().select(is_t, hot, z);
                    let bj = b.ins().fadd(bj, h);
                    let pa = b.ins().fmul(p, a);
                    let v = b.ins().fsub(pa, bj);
                    let v = b.ins().fmul(g, v);
                    let v = b.ins().select(ce.valid, v, z);
                    store(b, io, io.out, at, v);
                    vec![]
                });
            }
            LossKind::MultiMargin {
                classes, p, margin, ..
            } => {
                let mm = MarginRow::new(b, io, r, classes, margin);
                let wt = self.class_weight(b, io, mm.ti);
                let cf = fc(b, classes as f32);
                let coef = b.ins().fmul(g, wt);
                let coef = b.ins().fdiv(coef, cf);
                let zero = ic(b, 0);
                let c = ic(b, classes);
                let z = fc(b, 0.0);
                let acc = counted(b, zero, c, 1, &[z], &[types::F32], |b, i, acc| {
                    let zi = mm.z(b, io, i);
                    let zf = fc(b, 0.0);
                    let d = if p == 2 {
                        let two = fc(b, 2.0);
                        let t = b.ins().fmul(two, zi);
                        b.ins().fmul(t, coef)
                    } else {
                        coef
                    };
                    let pos = b.ins().fcmp(FloatCC::GreaterThan, zi, zf);
                    let not_t = b.ins().icmp(IntCC::NotEqual, i, mm.ti);
                    let on = b.ins().band(pos, not_t);
                    let on = b.ins().band(on, mm.valid);
                    let d = b.ins().select(on, d, zf);
                    let at = b.ins().iadd(mm.base, i);
                    store(b, io, io.out, at, d);
                    vec![b.ins().fadd(acc[0], d)]
                })[0];
                let neg = b.ins().fneg(acc);
                let at = b.ins().iadd(mm.base, mm.ti);
                store(b, io, io.out, at, neg);
            }
            LossKind::Bce { pos_weight } => {
                let x = load(b, io, io.x, r);
                let t = load(b, io, io.target, r);
                let pw = self.pos_weight(b, io, r, pos_weight);
                let m = &mut Math { b, ty: types::F32 };
                let sx = math::sigmoid(m, x);
                let nx = m.b.ins().fneg(x);
                let snx = math::sigmoid(m, nx);
                let one = m.c(1.0);
                let omt = m.b.ins().fsub(one, t);
                let a = m.b.ins().fmul(omt, sx);
                let pt = m.b.ins().fmul(pw, t);
                let c = m.b.ins().fmul(pt, snx);
                let d = m.b.ins().fsub(a, c);
                let v = m.b.ins().fmul(g, d);
                store(b, io, io.out, r, v);
            }
            LossKind::Mse => {
                let x = load(b, io, io.x, r);
                let t = load(b, io, io.target, r);
                let d = b.ins().fsub(x, t);
                let two = fc(b, 2.0);
                let d = b.ins().fmul(two, d);
                let v = b.ins().fmul(g, d);
                store(b, io, io.out, r, v);
            }
        }
    }

    /// A cross-entropy row: its target and log-sum-exp.
    fn ce_row(
        &self,
        b: &mut FunctionBuilder,
        io: &Io,
        r: Value,
        classes: u64,
        inner: u64,
        ignore: f32,
    ) -> CeRow {
        let (base, step) = if inner == 1 {
            (b.ins().imul_imm_s(r, classes as i64), 1)
        } else {
            let n = b.ins().udiv_imm_u(r, inner as i64);
            let s = b.ins().urem_imm_u(r, inner as i64);
            let nb = b.ins().imul_imm_s(n, (classes * inner) as i64);
            (b.ins().iadd(nb, s), inner)
        };
        let t = load(b, io, io.target, r);
        let (valid, ti) = class(b, t, classes, Some(ignore));
        let zero = ic(b, 0);
        let c = ic(b, classes);
        let ninf = fc(b, f32::NEG_INFINITY);
        let m = counted(b, zero, c, 1, &[ninf], &[types::F32], |b, k, acc| {
            let a = at(b, base, step, k);
            let l = load(b, io, io.x, a);
            vec![b.ins().fmax(acc[0], l)]
        })[0];
        let z = fc(b, 0.0);
        let se = counted(b, zero, c, 1, &[z], &[types::F32], |b, k, acc| {
            let a = at(b, base, step, k);
            let l = load(b, io, io.x, a);
            let d = b.ins().fsub(l, m);
            let e = math::exp(&mut Math { b, ty: types::F32 }, d);
            vec![b.ins().fadd(acc[0], e)]
        })[0];
        let ls = math::log(&mut Math { b, ty: types::F32 }, se);
        let lse = b.ins().fadd(m, ls);
        let at_t = at(b, base, step, ti);
        CeRow {
            base,
            step,
            valid,
            ti,
            lse,
            at_t,
        }
    }
}

/// One cross-entropy row: element `k` of it is at `base + k·step`.
struct CeRow {
    base: Value,
    step: u64,
    valid: Value,
    ti: Value,
    lse: Value,
    /// The element of the target class.
    at_t: Value,
}

impl CeRow {
    fn at(&self, b: &mut FunctionBuilder, k: Value) -> Value {
        at(b, self.base, self.step, k)
    }
}

/// Element `base + k·step`.
fn at(b: &mut FunctionBuilder, base: Value, step: u64, k: Value) -> Value {
    let off = if step == 1 {
        k
    } else {
        b.ins().imul_imm_s(k, step as i64)
    };
    b.ins().iadd(base, off)
}

/// One multi-margin row: its base element, target and `margin − x[y]`.
struct MarginRow {
    base: Value,
    valid: Value,
    ti: Value,
    m_minus_xt: Value,
}

impl MarginRow {
    fn new(b: &mut FunctionBuilder, io: &Io, r: Value, classes: u64, margin: f32) -> MarginRow {
        let base = b.ins().imul_imm_s(r, classes as i64);
        let t = load(b, io, io.target, r);
        let (valid, ti) = class(b, t, classes, None);
        let at = b.ins().iadd(base, ti);
        let xt = load(b, io, io.x, at);
        let mg = fc(b, margin);
        MarginRow {
            base,
            valid,
            ti,
            m_minus_xt: b.ins().fsub(mg, xt),
        }
    }

    /// `z_i = margin − x[y] + x[i]`.
    fn z(&self, b: &mut FunctionBuilder, io: &Io, i: Value) -> Value {
        let at = b.ins().iadd(self.base, i);
        let xi = load(b, io, io.x, at);
        b.ins().fadd(self.m_minus_xt, xi)
    }
}
