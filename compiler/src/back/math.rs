//! Transcendental functions as Cranelift IR, on `f32x4` or scalar `f32`.
//!
//! Every function takes the running value and returns the result in the
//! same type; the same code serves the f32x4 loop body and the scalar tail
//! (so a kernel's result does not depend on where a work range splits).
//! The approximations use FMA (`vfmadd` on hosts with FMA, which
//! `cranelift_native` enables) and integer vector ops on the float bits.
//!
//! | function | method | measured max error (vs f64) |
//! |---|---|---|
//! | [`exp`] | `2^n · p(r)`, `n = round(x·log2 e)`, Cody-Waite `r`, degree-7 Taylor `p`, `2^n` as two exponent-field scalings (denormal results) | rel 7.8e-8 |
//! | [`log`] | `x = m·2^e`, `m ∈ [√½, √2)` from the bits (denormals rescaled), Cephes `logf` polynomial | rel 8.0e-8 |
//! | [`tanh`] | `|x| < 0.625`: Cephes odd polynomial; else `1 − 2/(e^{2|x|}+1)` with the sign restored | rel 1.4e-7 |
//! | [`sigmoid`] | `1/(1+e^{−x})` | rel 1.5e-7 |
//! | [`silu`] | `x/(1+e^{−x})` | rel 1.8e-7 |
//! | [`gelu_erf`] | `x·Φ(x)`, `Φ = ½·erfc(−x/√2)` with [`erfc_pos`] (Numerical Recipes Chebyshev fit, relative error < 1.2e-7) on `|x|/√2`, reflected for x ≥ 0 | abs 1.4e-7 |
//! | [`gelu_tanh`] | `x/(1+e^{−2u})`, `u = √(2/π)(x+0.044715x³)` (= `½x(1+tanh u)`) | abs 1.3e-7 |
//!
//! "rel" is over results in the normal f32 range; "abs" (the gelus) is
//! absolute for `|result| <= 1` and relative above. Results below the
//! normal range: `exp` gives denormals (within 2 denormal steps); the
//! sigmoid family gives 0 where `e^{−x}` overflows, as PyTorch does.
//! The exact figures and sweeps are in `back/elementwise/tests.rs`
//! (`transcendental_errors_are_bounded`) and `docs/backend.md`.

use cranelift_codegen::ir::{condcodes::FloatCC, types, InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::FunctionBuilder;
use netc_runtime::pointwise;

/// Emits math on one lane shape: `ty` is `F32X4` or `F32`.
pub struct Math<'a, 'f> {
    /// The builder, positioned where the code goes.
    pub b: &'a mut FunctionBuilder<'f>,
    /// `F32X4` or `F32`.
    pub ty: Type,
}

impl Math<'_, '_> {
    fn vector(&self) -> bool {
        self.ty.is_vector()
    }

    fn ity(&self) -> Type {
        if self.vector() {
            types::I32X4
        } else {
            types::I32
        }
    }

    /// A float constant of the lane type.
    pub fn c(&mut self, v: f32) -> Value {
        let s = self.b.ins().f32const(v);
        if self.vector() {
            self.b.ins().splat(types::F32X4, s)
        } else {
            s
        }
    }

    fn ci(&mut self, v: i32) -> Value {
        let s = self.b.ins().iconst(types::I32, i64::from(v));
        if self.vector() {
            self.b.ins().splat(types::I32X4, s)
        } else {
            s
        }
    }

    fn fma(&mut self, a: Value, b: Value, c: Value) -> Value {
        self.b.ins().fma(a, b, c)
    }

    /// Horner evaluation, coefficients from the highest degree down.
    fn poly(&mut self, x: Value, coeffs: &[f32]) -> Value {
        let mut acc = self.c(coeffs[0]);
        for &k in &coeffs[1..] {
            let kv = self.c(k);
            acc = self.fma(acc, x, kv);
        }
        acc
    }

    /// `cond ? a : b` lane-wise, `cond` from an `fcmp` on this lane type.
    fn sel(&mut self, cond: Value, a: Value, b: Value) -> Value {
        if self.vector() {
            let m = self
                .b
                .ins()
                .bitcast(types::F32X4, MemFlagsData::new(), cond);
            self.b.ins().bitselect(m, a, b)
        } else {
            self.b.ins().select(cond, a, b)
        }
    }

    fn cmp(&mut self, cc: FloatCC, a: Value, b: Value) -> Value {
        self.b.ins().fcmp(cc, a, b)
    }

    fn bits_of(&mut self, x: Value) -> Value {
        let t = self.ity();
        self.b.ins().bitcast(t, MemFlagsData::new(), x)
    }

    fn float_of(&mut self, x: Value) -> Value {
        let t = self.ty;
        self.b.ins().bitcast(t, MemFlagsData::new(), x)
    }

    /// `2^n` for integer lanes `n` in `[-126, 127]`.
    fn pow2i(&mut self, n: Value) -> Value {
        let bias = self.ci(127);
        let e = self.b.ins().iadd(n, bias);
        let e = self.b.ins().ishl_imm_u(e, 23);
        self.float_of(e)
    }
}

/// `e^x`. Overflows to `+inf` above ~88.72, gives denormals down to ~-103.9
/// and `0` below, `exp(±0) = 1`, NaN propagates.
pub fn exp(m: &mut Math, x: Value) -> Value {
    // Clamp so that n stays in [-217, 145] (NaN passes through fmin/fmax).
    let lo = m.c(-150.0);
    let hi = m.c(100.0);
    let x = m.b.ins().fmax(x, lo);
    let x = m.b.ins().fmin(x, hi);
    let log2e = m.c(std::f32::consts::LOG2_E);
    let t = m.b.ins().fmul(x, log2e);
    let nf = m.b.ins().nearest(t);
    // r = x - n·ln2 in two parts (Cody-Waite); ln2_hi has 9 significant bits.
    let nln2_hi = m.c(-0.693_359_4);
    let nln2_lo = m.c(2.121_944_4e-4);
    let r = m.fma(nf, nln2_hi, x);
    let r = m.fma(nf, nln2_lo, r);
    // e^r, |r| <= 0.347: Taylor to degree 7 (truncation < 5e-9 relative).
    let p = m.poly(r, &pointwise::EXP_TAYLOR);
    // 2^n = 2^n1 · 2^n2 with both halves in the normal exponent range, so
    // results that are denormal or overflow round once, in the last multiply.
    let ity = m.ity();
    let n = m.b.ins().fcvt_to_sint_sat(ity, nf);
    let n1 = m.b.ins().sshr_imm_u(n, 1);
    let n2 = m.b.ins().isub(n, n1);
    let s1 = m.pow2i(n1);
    let s2 = m.pow2i(n2);
    let y = m.b.ins().fmul(p, s1);
    m.b.ins().fmul(y, s2)
}

/// Natural log. `log(±0) = -inf`, `log(+inf) = +inf`, negative and NaN
/// inputs give NaN; denormal inputs are exact-rescaled first.
pub fn log(m: &mut Math, x0: Value) -> Value {
    // Denormals: scale by 2^23 and remember to subtract 23 from the exponent.
    let min_normal = m.c(f32::MIN_POSITIVE);
    let small = m.cmp(FloatCC::LessThan, x0, min_normal);
    let two23 = m.c(8_388_608.0);
    let scaled = m.b.ins().fmul(x0, two23);
    let x = m.sel(small, scaled, x0);
    let m23 = m.c(-23.0);
    let zero = m.c(0.0);
    let eadj = m.sel(small, m23, zero);
    // x = mant · 2^e with mant in [0.5, 1).
    let bits = m.bits_of(x);
    let eb = m.b.ins().ushr_imm_u(bits, 23);
    let ff = m.ci(0xff);
    let eb = m.b.ins().band(eb, ff);
    let bias = m.ci(126);
    let e = m.b.ins().isub(eb, bias);
    let mmask = m.ci(0x007f_ffff);
    let half = m.ci(0x3f00_0000);
    let mb = m.b.ins().band(bits, mmask);
    let mb = m.b.ins().bor(mb, half);
    let mant = m.float_of(mb);
    let ty = m.ty;
    let ef = m.b.ins().fcvt_from_sint(ty, e);
    let ef = m.b.ins().fadd(ef, eadj);
    // Cephes logf: mant < √½ → e -= 1, f = 2·mant - 1; else f = mant - 1.
    let sqrth = m.c(std::f32::consts::FRAC_1_SQRT_2);
    let lt = m.cmp(FloatCC::LessThan, mant, sqrth);
    let one = m.c(1.0);
    let ef1 = m.b.ins().fsub(ef, one);
    let ef = m.sel(lt, ef1, ef);
    let m2 = m.b.ins().fadd(mant, mant);
    let mm = m.sel(lt, m2, mant);
    let f = m.b.ins().fsub(mm, one);
    let z = m.b.ins().fmul(f, f);
    let p = m.poly(
        f,
        &[
            7.037_683_6e-2,
            -1.151_461e-1,
            1.167_699_9e-1,
            -1.242_014_1e-1,
            1.424_932_3e-1,
            -1.666_805_8e-1,
            2.000_071_5e-1,
            -2.499_999_4e-1,
            3.333_333e-1,
        ],
    );
    let fz = m.b.ins().fmul(f, z);
    let y = m.b.ins().fmul(fz, p);
    let c_lo = m.c(-2.121_944_4e-4);
    let y = m.fma(ef, c_lo, y);
    let mhalf = m.c(-0.5);
    let y = m.fma(z, mhalf, y);
    let r = m.b.ins().fadd(f, y);
    let c_hi = m.c(0.693_359_4);
    let r = m.fma(ef, c_hi, r);
    // Special values.
    let inf = m.c(f32::INFINITY);
    let is_inf = m.cmp(FloatCC::Equal, x0, inf);
    let r = m.sel(is_inf, inf, r);
    let ninf = m.c(f32::NEG_INFINITY);
    let is_zero = m.cmp(FloatCC::Equal, x0, zero);
    let r = m.sel(is_zero, ninf, r);
    let nan = m.c(f32::NAN);
    let bad = m.cmp(FloatCC::UnorderedOrLessThan, x0, zero);
    m.sel(bad, nan, r)
}

/// `tanh(x)`; `±inf → ±1`, `-0 → -0`, NaN propagates.
pub fn tanh(m: &mut Math, x: Value) -> Value {
    let ax = m.b.ins().fabs(x);
    // Small |x|: x·(1 + z·P(z)), z = x² (Cephes tanhf).
    let z = m.b.ins().fmul(x, x);
    let p = m.poly(
        z,
        &[
            -5.704_988_7e-3,
            2.063_909e-2,
            -5.373_971_6e-2,
            1.333_144_2e-1,
            -3.333_328e-1,
        ],
    );
    // As x·(1 + z·P(z)), so that tanh(-0) = -0.
    let one = m.c(1.0);
    let t = m.fma(z, p, one);
    let small_v = m.b.ins().fmul(x, t);
    // Large |x|: 1 - 2/(e^{2|x|} + 1), then the sign of x.
    let two_ax = m.b.ins().fadd(ax, ax);
    let e = exp(m, two_ax);
    let two = m.c(2.0);
    let d = m.b.ins().fadd(e, one);
    let q = m.b.ins().fdiv(two, d);
    let t = m.b.ins().fsub(one, q);
    let nt = m.b.ins().fneg(t);
    let zero = m.c(0.0);
    let neg = m.cmp(FloatCC::LessThan, x, zero);
    let large_v = m.sel(neg, nt, t);
    let lim = m.c(0.625);
    let small = m.cmp(FloatCC::LessThan, ax, lim);
    m.sel(small, small_v, large_v)
}

/// `num / (1 + e^{-t})` (sigmoid, silu and gelu-tanh share it).
fn over_one_plus_exp_neg(m: &mut Math, num: Value, t: Value) -> Value {
    let nt = m.b.ins().fneg(t);
    let e = exp(m, nt);
    let one = m.c(1.0);
    let d = m.b.ins().fadd(one, e);
    m.b.ins().fdiv(num, d)
}

/// `1 / (1 + e^{-x})`, as PyTorch computes it (so `x < -88.7` gives 0).
pub fn sigmoid(m: &mut Math, x: Value) -> Value {
    let one = m.c(1.0);
    over_one_plus_exp_neg(m, one, x)
}

/// `x / (1 + e^{-x})` (PyTorch's form: `silu(-inf)` is NaN, as in PyTorch).
pub fn silu(m: &mut Math, x: Value) -> Value {
    over_one_plus_exp_neg(m, x, x)
}

/// GELU, tanh form: `½x(1 + tanh u)` with `u = √(2/π)(x + 0.044715x³)`,
/// computed as `x / (1 + e^{-2u})` (equal, and accurate for negative x).
pub fn gelu_tanh(m: &mut Math, x: Value) -> Value {
    // 2u = x · (c1 + c2·x²)
    let c1 = 2.0 * (2.0 / std::f64::consts::PI).sqrt();
    let c2 = c1 * 0.044715;
    let z = m.b.ins().fmul(x, x);
    let c1v = m.c(c1 as f32);
    let c2v = m.c(c2 as f32);
    let k = m.fma(z, c2v, c1v);
    let u2 = m.b.ins().fmul(x, k);
    over_one_plus_exp_neg(m, x, u2)
}

/// `erfc(a)` for `a >= 0` (or NaN): the Chebyshev fit of Numerical
/// Recipes (`erfcc`, fractional error < 1.2e-7 for all `a >= 0`):
/// `t·exp(−a² − 1.26551223 + t·P(t))`, `t = 1/(1 + a/2)`. Relative
/// accuracy in the tail is what makes `gelu` accurate for negative x.
pub fn erfc_pos(m: &mut Math, a: Value) -> Value {
    let one = m.c(1.0);
    let half = m.c(0.5);
    let d = m.fma(a, half, one);
    let t = m.b.ins().fdiv(one, d);
    let p = m.poly(t, &pointwise::ERFCC);
    let na = m.b.ins().fneg(a);
    let arg = m.fma(na, a, p);
    let e = exp(m, arg);
    m.b.ins().fmul(t, e)
}

/// GELU, erf form: `x · ½(1 + erf(x/√2))`. `gelu(+inf) = +inf` (PyTorch
/// gives NaN there), `gelu(-inf)` is NaN as in PyTorch.
pub fn gelu_erf(m: &mut Math, x: Value) -> Value {
    // Φ(x) = ½·erfc(−x/√2): x < 0: ½·erfc(|z|); else 1 − ½·erfc(|z|).
    let k = m.c(std::f32::consts::FRAC_1_SQRT_2);
    let ax = m.b.ins().fabs(x);
    let a = m.b.ins().fmul(ax, k);
    let e = erfc_pos(m, a);
    let half = m.c(0.5);
    let lo = m.b.ins().fmul(e, half);
    let one = m.c(1.0);
    let hi = m.b.ins().fsub(one, lo);
    let zero = m.c(0.0);
    let neg = m.cmp(FloatCC::LessThan, x, zero);
    let phi = m.sel(neg, lo, hi);
    m.b.ins().fmul(x, phi)
}
