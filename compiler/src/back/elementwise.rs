//! f32 elementwise kernels: one op, or a fused chain of ops applied in
//! registers in one pass over memory (what fusion emits, e.g. the bias-add +
//! ReLU epilogue of a convolution).
//!
//! A kernel is a [`Chain`]: the running value `x` starts as input 0 and each
//! [`Step`] transforms it, reading at most one more operand (another input
//! or a constant). The generated code is an f32x4 loop with a scalar tail,
//! both header-tested (`bench-limits.md` §3), over one of two
//! [`Domain`]s:
//!
//! - [`Domain::Flat`]: work units are elements; `[start, end)` is an element
//!   range. Operands are [`Bcast::Full`] (same shape as `x`) or
//!   [`Bcast::Scalar`] (one element).
//! - [`Domain::Rows`]: `x` is viewed as rows of `inner` contiguous elements;
//!   row `r` belongs to channel `r % channels`. Work units are rows. The
//!   output rows may be further apart than `inner` ([`OutStrided`]: row `r`
//!   stored at `r·out_stride`, e.g. one piece of a concatenation written
//!   straight into its columns of the result). This
//!   adds [`Bcast::PerChannel`] (a `[channels]` vector, e.g. a conv bias over
//!   `[N, C, H*W]`: `channels = C`, `inner = H*W`) and [`Bcast::PerColumn`]
//!   (an `[inner]` vector, e.g. a linear bias over `[N, C]`: `channels = 1`,
//!   `inner = C`).
//!
//! Every arithmetic op is a single correctly rounded IEEE operation (no FMA
//! contraction), so results equal a scalar Rust evaluation bit for bit. The
//! transcendental steps (`Exp Log Tanh Sigmoid Silu Gelu GeluTanh`) are
//! polynomial/rational approximations from [`super::math`] with the error
//! bounds stated there; the vector body and the scalar tail run the same
//! code, so results do not depend on how a range is split.
//! `maximum`, `minimum`,
//! `relu` and `clamp` propagate NaN, as PyTorch does.

mod grad;

pub use grad::Grad;

use super::jit::{Jit, KernelFn, KernelId, KernelSource};
use super::math::{self, Math};
use super::BackError;
use cranelift_codegen::ir::{
    condcodes::{FloatCC, IntCC},
    types, Block, BlockArg, InstBuilder, MemFlagsData, Type, Value,
};
use cranelift_frontend::FunctionBuilder;
use std::fmt::Write as _;
use std::marker::PhantomData;

/// A unary elementwise op on the running value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Unary {
    /// `max(x, 0)`.
    Relu,
    /// `-x`.
    Neg,
    /// `|x|`.
    Abs,
    /// `x * x`.
    Square,
    /// `sqrt(x)` (NaN for negative `x`).
    Sqrt,
    /// `min(max(x, lo), hi)`.
    Clamp {
        /// Lower bound.
        lo: f32,
        /// Upper bound.
        hi: f32,
    },
    /// `x` if `x > 0`, else `slope * x`.
    LeakyRelu {
        /// The negative slope (PyTorch default 0.01).
        slope: f32,
    },
    /// `e^x` (approximation, see [`super::math`] for the error bound).
    Exp,
    /// Natural log (approximation, see [`super::math`]).
    Log,
    /// `tanh(x)` (approximation, see [`super::math`]).
    Tanh,
    /// `1 / (1 + e^{-x})` (approximation, see [`super::math`]).
    Sigmoid,
    /// `x · sigmoid(x)` (approximation, see [`super::math`]).
    Silu,
    /// GELU, erf form `x·Φ(x)` (approximation, see [`super::math`]).
    Gelu,
    /// GELU, tanh form (`approximate = "tanh"`; see [`super::math`]).
    GeluTanh,
}

/// A binary elementwise op between the running value and an operand.
///
/// [`Binary::Grad`] ops are activation gradients `op(dy, v)`: the left
/// operand is the incoming gradient, the right the activation's output or
/// input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Binary {
    /// `x + y`.
    Add,
    /// `x - y`.
    Sub,
    /// `x * y`.
    Mul,
    /// `x / y`.
    Div,
    /// `max(x, y)`, NaN-propagating.
    Maximum,
    /// `min(x, y)`, NaN-propagating.
    Minimum,
    /// An activation gradient `op(dy, v)` (see [`Grad`]).
    Grad(Grad),
}

/// How an input is indexed relative to the running value's element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bcast {
    /// Same shape as `x`: element `i` reads `in[i]`.
    Full,
    /// One element broadcast everywhere: reads `in[0]`.
    Scalar,
    /// Rows domain only: row `r` reads `in[r % channels]`.
    PerChannel,
    /// Rows domain only: column `j` of every row reads `in[j]`.
    PerColumn,
}

/// The second operand of a binary step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Operand {
    /// Input number `k` of the kernel (indexing per [`Chain::inputs`]).
    Input(usize),
    /// A compile-time constant.
    Const(f32),
}

/// One step of a chain.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// `x = op(x)`.
    Unary(Unary),
    /// `x = op(x, y)`, or `op(y, x)` when `swap` is true.
    Binary {
        /// The op.
        op: Binary,
        /// The operand `y`.
        rhs: Operand,
        /// Apply as `op(y, x)` (for `2 - x`, `c / x`).
        swap: bool,
    },
}

/// The iteration space of a kernel (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// Work units are elements.
    Flat,
    /// Work units are rows of `inner` elements; row `r` has channel
    /// `r % channels`.
    Rows {
        /// Channel period of rows (>= 1).
        channels: u64,
        /// Elements per row (>= 1).
        inner: u64,
    },
}

/// An f32 elementwise kernel: input 0 is loaded into `x`, `steps` are
/// applied in registers, `x` is stored to `out`.
///
/// `out` may alias input 0 (in-place): every element is loaded before it is
/// stored, at the same index.
#[derive(Debug, Clone, PartialEq)]
pub struct Chain {
    /// How each input is indexed; `inputs[0]` must be [`Bcast::Full`].
    pub inputs: Vec<Bcast>,
    /// The iteration space.
    pub domain: Domain,
    /// The ops, applied in order.
    pub steps: Vec<Step>,
}

impl Chain {
    /// `out = op(in0)` over a flat range.
    pub fn unary(op: Unary) -> Chain {
        Chain {
            inputs: vec![Bcast::Full],
            domain: Domain::Flat,
            steps: vec![Step::Unary(op)],
        }
    }

    /// `out = op(in0, in1)` with `in1` indexed by `bcast` over `domain`.
    pub fn binary(op: Binary, bcast: Bcast, domain: Domain) -> Chain {
        Chain {
            inputs: vec![Bcast::Full, bcast],
            domain,
            steps: vec![Step::Binary {
                op,
                rhs: Operand::Input(1),
                swap: false,
            }],
        }
    }

    /// Checks that the chain can be generated: input 0 is full, every input
    /// a step names exists, per-channel/per-column inputs only in the rows
    /// domain, and row sizes are at least 1.
    pub fn validate(&self) -> Result<(), BackError> {
        let bad = |m: String| {
            Err(BackError(format!(
                "elementwise kernel `{}`: {m}",
                self.key()
            )))
        };
        if self.inputs.first() != Some(&Bcast::Full) {
            return bad("input 0 (the running value) must be indexed in full".into());
        }
        if let Domain::Rows { channels, inner } = self.domain {
            if channels == 0 || inner == 0 || inner > (1 << 40) || channels > (1 << 40) {
                return bad(format!(
                    "rows need 1 <= channels, inner <= 2^40 (got {channels}, {inner})"
                ));
            }
        } else if let Some(b) = self
            .inputs
            .iter()
            .find(|b| matches!(b, Bcast::PerChannel | Bcast::PerColumn))
        {
            return bad(format!("{b:?} inputs need the rows domain"));
        }
        for s in &self.steps {
            if let Step::Binary {
                rhs: Operand::Input(k),
                ..
            } = s
            {
                if *k >= self.inputs.len() {
                    return bad(format!(
                        "a step reads input {k}, but there are {}",
                        self.inputs.len()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Elements covered by the work units `[0, units)`.
    pub fn elements(&self, units: u64) -> u64 {
        match self.domain {
            Domain::Flat => units,
            Domain::Rows { inner, .. } => units.saturating_mul(inner),
        }
    }

    /// Minimum length of input `k` for work units `[0, end)`.
    pub fn input_len(&self, k: usize, end: u64) -> u64 {
        match (self.inputs[k], self.domain) {
            (Bcast::Full, _) => self.elements(end),
            (Bcast::Scalar, _) => 1,
            (Bcast::PerChannel, Domain::Rows { channels, .. }) => channels,
            (Bcast::PerColumn, Domain::Rows { inner, .. }) => inner,
            // Rejected by `validate`.
            (Bcast::PerChannel | Bcast::PerColumn, Domain::Flat) => u64::MAX,
        }
    }

    /// Compiles this chain's kernel, or finds it in the cache.
    pub fn compile(&self, jit: &mut Jit) -> Result<KernelId, BackError> {
        self.validate()?;
        jit.kernel(self)
    }

    /// The compiled kernel of this chain (after [`Chain::compile`]),
    /// borrowing the JIT that owns its code.
    pub fn kernel<'j>(&self, jit: &'j Jit) -> Result<ElementwiseKernel<'j>, BackError> {
        let key = self.key();
        let id = jit
            .lookup(&key)
            .ok_or_else(|| BackError(format!("elementwise kernel `{key}` was not compiled")))?;
        Ok(ElementwiseKernel {
            chain: self.clone(),
            id,
            code: jit.code(id)?,
            _jit: PhantomData,
        })
    }
}

/// Lane shape inside the loops: f32x4 body or scalar tail.
#[derive(Clone, Copy)]
struct Lane {
    ty: Type,
    bytes: i64,
}

const VEC: Lane = Lane {
    ty: types::F32X4,
    bytes: 16,
};
const SCALAR: Lane = Lane {
    ty: types::F32,
    bytes: 4,
};

/// Loop-invariant values of one input or constant, made in the entry block.
#[derive(Clone, Copy)]
enum Inv {
    /// Base pointer of a full, per-channel or per-column input.
    Ptr(Value),
    /// A broadcast value: scalar and its splat.
    Splat(Value, Value),
}

fn flags() -> MemFlagsData {
    // Not `aligned`: a work range may start at any element, and x64 may fold
    // an aligned-flagged load into a legacy-SSE op that faults when unaligned.
    MemFlagsData::new().with_notrap()
}

fn fbits(f: f32) -> String {
    format!("{:08x}", f.to_bits())
}

impl KernelSource for Chain {
    fn key(&self) -> String {
        let mut k = String::from("ew.f32(");
        for (i, b) in self.inputs.iter().enumerate() {
            let _ = write!(k, "{}{b:?}", if i > 0 { "," } else { "" });
        }
        match self.domain {
            Domain::Flat => k.push_str(";flat)"),
            Domain::Rows { channels, inner } => {
                let _ = write!(k, ";rows c={channels} inner={inner})");
            }
        }
        for s in &self.steps {
            match *s {
                Step::Unary(Unary::Clamp { lo, hi }) => {
                    let _ = write!(k, " clamp({},{})", fbits(lo), fbits(hi));
                }
                Step::Unary(Unary::LeakyRelu { slope }) => {
                    let _ = write!(k, " leaky_relu({})", fbits(slope));
                }
                Step::Unary(u) => {
                    let _ = write!(k, " {u:?}");
                }
                Step::Binary {
                    op: Binary::Grad(Grad::LeakyRelu { slope }),
                    rhs,
                    swap,
                } => {
                    let _ = write!(k, " leaky_relu_grad({}:{rhs:?},{swap})", fbits(slope));
                }
                Step::Binary { op, rhs, swap } => {
                    let r = match rhs {
                        Operand::Input(i) => format!("in{i}"),
                        Operand::Const(c) => format!("#{}", fbits(c)),
                    };
                    let _ = write!(k, " {op:?}({r}{})", if swap { ",swap" } else { "" });
                }
            }
        }
        k
    }

    fn build(&self, b: &mut FunctionBuilder, entry: Block, ptr: Type) -> Result<(), BackError> {
        build(self, None, b, entry, ptr)
    }
}

/// A rows-domain [`Chain`] whose output row `r` starts at element
/// `r·out_stride` instead of `r·inner` (inputs are indexed as usual): the
/// rows land in `inner` columns of a wider output, whose other columns are
/// left untouched.
#[derive(Debug, Clone, Copy)]
pub struct OutStrided<'c> {
    /// The chain (rows domain).
    pub chain: &'c Chain,
    /// Elements between the starts of consecutive output rows (`>= inner`).
    pub out_stride: u64,
}

impl OutStrided<'_> {
    /// Compiles the kernel, or finds it in the cache; rejects a chain that
    /// is not in the rows domain or a stride shorter than a row.
    pub fn compile(&self, jit: &mut Jit) -> Result<KernelId, BackError> {
        self.chain.validate()?;
        match self.chain.domain {
            Domain::Rows { inner, .. } if self.out_stride >= inner && self.out_stride <= 1 << 40 => {
                jit.kernel(self)
            }
            _ => Err(BackError(format!(
                "elementwise kernel `{}`: an output row stride of {} needs the rows domain and rows of at most that length",
                self.chain.key(),
                self.out_stride
            ))),
        }
    }

    /// Output elements the work units `[0, units)` span.
    pub fn out_len(&self, units: u64) -> u64 {
        let inner = match self.chain.domain {
            Domain::Rows { inner, .. } => inner,
            Domain::Flat => 1,
        };
        units
            .checked_sub(1)
            .map_or(0, |last| last * self.out_stride + inner)
    }
}

impl KernelSource for OutStrided<'_> {
    fn key(&self) -> String {
        format!("{} out_stride={}", self.chain.key(), self.out_stride)
    }

    fn build(&self, b: &mut FunctionBuilder, entry: Block, ptr: Type) -> Result<(), BackError> {
        build(self.chain, Some(self.out_stride), b, entry, ptr)
    }
}

/// Emits `chain`'s kernel, with output rows `out_stride` apart when given.
fn build(
    chain: &Chain,
    out_stride: Option<u64>,
    b: &mut FunctionBuilder,
    entry: Block,
    ptr: Type,
) -> Result<(), BackError> {
    chain.validate()?;
    let p = b.block_params(entry).to_vec();
    let (start, end, ins, out) = (p[0], p[1], p[2], p[3]);
    let gen = Gen::new(chain, b, ins, ptr);
    match chain.domain {
        Domain::Flat => gen.flat(b, start, end, out),
        Domain::Rows { channels, inner } => gen.rows(
            b,
            start,
            end,
            out,
            channels,
            inner,
            out_stride.unwrap_or(inner),
        ),
    }
    Ok(())
}

/// Per-function generator state: the chain and its loop invariants.
struct Gen<'c> {
    chain: &'c Chain,
    ptr: Type,
    /// One per input.
    inputs: Vec<Inv>,
    /// One per step: the constant operand's splat, if any.
    consts: Vec<Option<Inv>>,
    /// Per-step constants of unary ops (zero, lo/hi, slope), scalar + splat.
    zero: Inv,
}

fn splat_const(b: &mut FunctionBuilder, c: f32) -> Inv {
    let s = b.ins().f32const(c);
    let v = b.ins().splat(types::F32X4, s);
    Inv::Splat(s, v)
}

fn pick(inv: Inv, lane: Lane) -> Value {
    match inv {
        Inv::Splat(s, v) => {
            if lane.bytes == 16 {
                v
            } else {
                s
            }
        }
        Inv::Ptr(p) => p,
    }
}

fn args(vals: &[Value]) -> Vec<BlockArg> {
    vals.iter().map(|&v| BlockArg::Value(v)).collect()
}

impl<'c> Gen<'c> {
    fn new(chain: &'c Chain, b: &mut FunctionBuilder, ins: Value, ptr: Type) -> Gen<'c> {
        let psize = ptr.bytes() as i32;
        let inputs = chain
            .inputs
            .iter()
            .enumerate()
            .map(|(k, bc)| {
                let base = b.ins().load(ptr, flags(), ins, psize * k as i32);
                match bc {
                    Bcast::Scalar => {
                        let s = b.ins().load(types::F32, flags(), base, 0);
                        let v = b.ins().splat(types::F32X4, s);
                        Inv::Splat(s, v)
                    }
                    _ => Inv::Ptr(base),
                }
            })
            .collect();
        let consts = chain
            .steps
            .iter()
            .map(|s| match *s {
                Step::Binary {
                    rhs: Operand::Const(c),
                    ..
                } => Some(splat_const(b, c)),
                _ => None,
            })
            .collect();
        let zero = splat_const(b, 0.0);
        Gen {
            chain,
            ptr,
            inputs,
            consts,
            zero,
        }
    }

    /// The chain applied to one lane group at element offset `ebytes` (and
    /// column offset `cbytes` in the rows domain), stored at byte offset
    /// `obytes` of `out`; `row` holds the current row's per-channel values.
    #[allow(clippy::too_many_arguments)]
    fn body(
        &self,
        b: &mut FunctionBuilder,
        lane: Lane,
        ebytes: Value,
        cbytes: Option<Value>,
        obytes: Value,
        row: &[Option<Inv>],
        out: Value,
    ) {
        let load = |b: &mut FunctionBuilder, base: Value, off: Value| {
            let a = b.ins().iadd(base, off);
            b.ins().load(lane.ty, flags(), a, 0)
        };
        let mut x = load(b, pick(self.inputs[0], lane), ebytes);
        for (si, step) in self.chain.steps.iter().enumerate() {
            x = match *step {
                Step::Unary(u) => self.unary(b, lane, u, x),
                Step::Binary { op, rhs, swap } => {
                    let y = match rhs {
                        Operand::Const(_) => pick(self.consts[si].unwrap_or(self.zero), lane),
                        Operand::Input(k) => match (self.chain.inputs[k], self.inputs[k]) {
                            (Bcast::Full, Inv::Ptr(p)) => load(b, p, ebytes),
                            (Bcast::PerColumn, Inv::Ptr(p)) => load(b, p, cbytes.unwrap_or(ebytes)),
                            (Bcast::PerChannel, _) => pick(row[k].unwrap_or(self.zero), lane),
                            (_, inv) => pick(inv, lane),
                        },
                    };
                    let (l, r) = if swap { (y, x) } else { (x, y) };
                    let ins = b.ins();
                    match op {
                        Binary::Add => ins.fadd(l, r),
                        Binary::Sub => ins.fsub(l, r),
                        Binary::Mul => ins.fmul(l, r),
                        Binary::Div => ins.fdiv(l, r),
                        Binary::Maximum => ins.fmax(l, r),
                        Binary::Minimum => ins.fmin(l, r),
                        Binary::Grad(g) => grad::emit(b, lane.ty, g, l, r),
                    }
                }
            };
        }
        let a = b.ins().iadd(out, obytes);
        b.ins().store(flags(), x, a, 0);
    }

    fn unary(&self, b: &mut FunctionBuilder, lane: Lane, u: Unary, x: Value) -> Value {
        let c = |b: &mut FunctionBuilder, v: f32| {
            let s = b.ins().f32const(v);
            if lane.bytes == 16 {
                b.ins().splat(types::F32X4, s)
            } else {
                s
            }
        };
        match u {
            Unary::Relu => {
                let z = pick(self.zero, lane);
                b.ins().fmax(x, z)
            }
            Unary::Neg => b.ins().fneg(x),
            Unary::Abs => b.ins().fabs(x),
            Unary::Square => b.ins().fmul(x, x),
            Unary::Sqrt => b.ins().sqrt(x),
            Unary::Clamp { lo, hi } => {
                let lo = c(b, lo);
                let hi = c(b, hi);
                let t = b.ins().fmax(x, lo);
                b.ins().fmin(t, hi)
            }
            Unary::LeakyRelu { slope } => {
                // x > 0 ? x : slope * x, as a select on a lane mask.
                let s = c(b, slope);
                let sx = b.ins().fmul(x, s);
                let z = pick(self.zero, lane);
                let gt = b.ins().fcmp(FloatCC::GreaterThan, x, z);
                if lane.bytes == 16 {
                    let m = b.ins().bitcast(types::F32X4, MemFlagsData::new(), gt);
                    b.ins().bitselect(m, x, sx)
                } else {
                    b.ins().select(gt, x, sx)
                }
            }
            Unary::Exp
            | Unary::Log
            | Unary::Tanh
            | Unary::Sigmoid
            | Unary::Silu
            | Unary::Gelu
            | Unary::GeluTanh => {
                let mut m = Math { b, ty: lane.ty };
                match u {
                    Unary::Exp => math::exp(&mut m, x),
                    Unary::Log => math::log(&mut m, x),
                    Unary::Tanh => math::tanh(&mut m, x),
                    Unary::Sigmoid => math::sigmoid(&mut m, x),
                    Unary::Silu => math::silu(&mut m, x),
                    Unary::Gelu => math::gelu_erf(&mut m, x),
                    _ => math::gelu_tanh(&mut m, x),
                }
            }
        }
    }

    /// Emits a header-tested f32x4 loop over `[lo, vec_hi)` then a scalar
    /// loop over `[.., hi)`, continuing to `next` (with `next_args`).
    /// In the rows domain `row_base` is the row's first element and
    /// `out_base` its first output element, and the column index is the
    /// loop index; otherwise the loop index is the element index.
    #[allow(clippy::too_many_arguments)]
    fn loops(
        &self,
        b: &mut FunctionBuilder,
        lo: Value,
        vec_hi: Value,
        hi: Value,
        row_base: Option<(Value, Value)>,
        row: &[Option<Inv>],
        out: Value,
        next: Block,
        next_args: &[Value],
    ) {
        let i64t = types::I64;
        let (vhead, vbody, thead, tbody) = (
            b.create_block(),
            b.create_block(),
            b.create_block(),
            b.create_block(),
        );
        b.append_block_param(vhead, i64t);
        b.append_block_param(thead, i64t);
        b.ins().jump(vhead, &args(&[lo]));
        for (head, body, lane, step) in [(vhead, vbody, VEC, 4), (thead, tbody, SCALAR, 1)] {
            b.switch_to_block(head);
            let j = b.block_params(head)[0];
            let bound = if step == 4 { vec_hi } else { hi };
            let more = b.ins().icmp(IntCC::SignedLessThan, j, bound);
            if step == 4 {
                b.ins().brif(more, body, &[], thead, &args(&[j]));
            } else {
                b.ins().brif(more, body, &[], next, &args(next_args));
            }
            b.switch_to_block(body);
            let (e, o) = match row_base {
                Some((rb, ob)) => {
                    let e = b.ins().iadd(rb, j);
                    (e, if ob == rb { e } else { b.ins().iadd(ob, j) })
                }
                None => (j, j),
            };
            let ebytes = b.ins().ishl_imm_u(e, 2);
            let obytes = if o == e {
                ebytes
            } else {
                b.ins().ishl_imm_u(o, 2)
            };
            let cbytes = row_base.map(|_| b.ins().ishl_imm_u(j, 2));
            let ebytes = self.to_ptr(b, ebytes);
            let obytes = self.to_ptr(b, obytes);
            let cbytes = cbytes.map(|c| self.to_ptr(b, c));
            self.body(b, lane, ebytes, cbytes, obytes, row, out);
            let j2 = b.ins().iadd_imm_s(j, step);
            b.ins().jump(head, &args(&[j2]));
        }
    }

    /// Converts an i64 byte offset to the pointer type (no-op on 64-bit).
    fn to_ptr(&self, b: &mut FunctionBuilder, v: Value) -> Value {
        if self.ptr == types::I64 {
            v
        } else {
            b.ins().ireduce(self.ptr, v)
        }
    }

    fn flat(&self, b: &mut FunctionBuilder, start: Value, end: Value, out: Value) {
        let exit = b.create_block();
        // vec_hi = start + ((end - start) & !3): the f32x4 loop covers whole
        // groups of 4 from `start`; an empty or reversed range runs nothing.
        let len = b.ins().isub(end, start);
        let whole = b.ins().band_imm_s(len, !3);
        let vec_hi = b.ins().iadd(start, whole);
        self.loops(b, start, vec_hi, end, None, &[], out, exit, &[]);
        b.switch_to_block(exit);
        b.ins().return_(&[]);
    }

    #[allow(clippy::too_many_arguments)]
    fn rows(
        &self,
        b: &mut FunctionBuilder,
        start: Value,
        end: Value,
        out: Value,
        channels: u64,
        inner: u64,
        out_stride: u64,
    ) {
        let i64t = types::I64;
        let (rhead, rbody, rnext, exit) = (
            b.create_block(),
            b.create_block(),
            b.create_block(),
            b.create_block(),
        );
        b.append_block_param(rhead, i64t);
        b.append_block_param(rhead, i64t);
        // The channel of `start` once (division), then a counter that wraps.
        let ch = b.ins().iconst(i64t, channels as i64);
        let c0 = if channels == 1 {
            b.ins().iconst(i64t, 0)
        } else {
            b.ins().urem(start, ch)
        };
        b.ins().jump(rhead, &args(&[start, c0]));

        b.switch_to_block(rhead);
        let (r, c) = (b.block_params(rhead)[0], b.block_params(rhead)[1]);
        let more = b.ins().icmp(IntCC::SignedLessThan, r, end);
        b.ins().brif(more, rbody, &[], exit, &[]);

        b.switch_to_block(rbody);
        let row_base = b.ins().imul_imm_s(r, inner as i64);
        let out_base = if out_stride == inner {
            row_base
        } else {
            b.ins().imul_imm_s(r, out_stride as i64)
        };
        let cb = b.ins().ishl_imm_u(c, 2);
        let cb = self.to_ptr(b, cb);
        let row: Vec<Option<Inv>> = self
            .chain
            .inputs
            .iter()
            .zip(&self.inputs)
            .map(|(bc, inv)| match (bc, inv) {
                (Bcast::PerChannel, Inv::Ptr(p)) => {
                    let a = b.ins().iadd(*p, cb);
                    let s = b.ins().load(types::F32, flags(), a, 0);
                    let v = b.ins().splat(types::F32X4, s);
                    Some(Inv::Splat(s, v))
                }
                _ => None,
            })
            .collect();
        let zero = b.ins().iconst(i64t, 0);
        let vec_hi = b.ins().iconst(i64t, (inner & !3) as i64);
        let hi = b.ins().iconst(i64t, inner as i64);
        self.loops(
            b,
            zero,
            vec_hi,
            hi,
            Some((row_base, out_base)),
            &row,
            out,
            rnext,
            &[],
        );

        b.switch_to_block(rnext);
        let r1 = b.ins().iadd_imm_s(r, 1);
        let c1 = b.ins().iadd_imm_s(c, 1);
        let wrap = b.ins().icmp_imm_s(IntCC::Equal, c1, channels as i64);
        let c2 = b.ins().select(wrap, zero, c1);
        b.ins().jump(rhead, &args(&[r1, c2]));

        b.switch_to_block(exit);
        b.ins().return_(&[]);
    }
}

/// A compiled elementwise kernel, valid while its [`Jit`] is alive.
#[derive(Debug, Clone)]
pub struct ElementwiseKernel<'j> {
    chain: Chain,
    id: KernelId,
    code: KernelFn,
    _jit: PhantomData<&'j ()>,
}

impl ElementwiseKernel<'_> {
    /// The chain this kernel computes.
    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    /// The kernel's id in its [`Jit`].
    pub fn id(&self) -> KernelId {
        self.id
    }

    /// Runs work units `[start, end)` with bounds checks: every buffer must
    /// be long enough for the units given (see [`Chain::elements`]); `out`
    /// and the inputs are indexed from their starts, so a caller splitting
    /// the work passes the same full buffers with different ranges.
    pub fn run(
        &self,
        start: u64,
        end: u64,
        ins: &[&[f32]],
        out: &mut [f32],
    ) -> Result<(), BackError> {
        let c = &self.chain;
        let err = |m: String| Err(BackError(format!("elementwise kernel `{}`: {m}", c.key())));
        if start > end {
            return err(format!("work range {start}..{end} is reversed"));
        }
        if end > (1 << 40) {
            return err(format!("work range end {end} exceeds 2^40"));
        }
        if ins.len() != c.inputs.len() {
            return err(format!(
                "{} inputs given, {} expected",
                ins.len(),
                c.inputs.len()
            ));
        }
        for (k, buf) in ins.iter().enumerate() {
            if (buf.len() as u64) < c.input_len(k, end) {
                return err(format!(
                    "input {k} has {} elements, {} needed for units ..{end}",
                    buf.len(),
                    c.input_len(k, end)
                ));
            }
        }
        if (out.len() as u64) < c.elements(end) {
            return err(format!(
                "output has {} elements, {} needed for units ..{end}",
                out.len(),
                c.elements(end)
            ));
        }
        let ptrs: Vec<*const f32> = ins.iter().map(|s| s.as_ptr()).collect();
        // SAFETY: the checks above guarantee every element the kernel reads
        // or writes for units [start, end) lies inside the given slices
        // (kernel indexing is documented on `Chain`/`Domain`/`Bcast`), and
        // `out` is exclusively borrowed, so it aliases no input.
        unsafe { self.call_raw(start as i64, end as i64, ptrs.as_ptr(), out.as_mut_ptr()) };
        Ok(())
    }

    /// Calls the machine code directly (for the runtime's thread split and
    /// in-place execution).
    ///
    /// # Safety
    /// `inputs` must point to `chain().inputs.len()` base pointers, and
    /// every element that units `[start, end)` read or write (see
    /// [`Chain`]) must be valid; `out` may equal input 0 but must not
    /// otherwise overlap an input; concurrent calls must write disjoint
    /// ranges.
    pub unsafe fn call_raw(&self, start: i64, end: i64, inputs: *const *const f32, out: *mut f32) {
        // SAFETY: the caller upholds the contract above; the code is alive
        // for 'j because the kernel borrows its `Jit` lifetime.
        unsafe { (self.code)(start, end, inputs, out) }
    }
}

#[cfg(test)]
mod tests;
