//! The activation-gradient steps of a [`super::Chain`]: `op(dy, v)` with
//! `dy` the incoming gradient and `v` the activation's output (`relu`,
//! `tanh`, `sigmoid`) or input (`leaky_relu`, `silu`, `gelu`), on f32x4 or
//! scalar f32 lanes. They are binary steps, so they fuse like `mul`
//! (after a contraction's epilogue, at the head of a chain).
//!
//! Formulas (each a few correctly rounded operations plus the
//! [`crate::back::math`] approximations, so their error bounds carry over):
//! - relu: `v > 0 ? dy : 0`; leaky relu: `v > 0 ? dy : slope·dy`;
//! - tanh: `dy·(1 − v·v)`; sigmoid: `dy·v·(1 − v)`;
//! - silu: `dy·s·(1 + v·(1 − s))`, `s = σ(v)`;
//! - gelu (erf): `dy·(Φ(v) + v·φ(v))`, `Φ` from `erfc` as the forward,
//!   `φ(v) = e^{−v²/2}/√(2π)`;
//! - gelu (tanh): `dy·s·(1 + 2v·(1 − s)·u')` with `s = σ(2u) = ½(1 + tanh u)`,
//!   `u = √(2/π)(v + 0.044715v³)`, `u' = √(2/π)(1 + 3·0.044715v²)`
//!   (`1 − tanh²u = 4s(1 − s)`), stable for negative `v`.

use crate::back::math::{self, Math};
use cranelift_codegen::ir::{condcodes::FloatCC, types, InstBuilder, MemFlagsData, Value};
use cranelift_frontend::FunctionBuilder;

/// An activation gradient `op(dy, v)` (formulas in the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Grad {
    /// `relu_grad(dy, y)`, `y` the relu output.
    Relu,
    /// `tanh_grad(dy, y)`, `y` the tanh output.
    Tanh,
    /// `sigmoid_grad(dy, y)`, `y` the sigmoid output.
    Sigmoid,
    /// `leaky_relu_grad(dy, x)`, `x` the input.
    LeakyRelu {
        /// The negative slope.
        slope: f32,
    },
    /// `silu_grad(dy, x)`, `x` the input.
    Silu,
    /// `gelu_grad(dy, x)`, erf form, `x` the input.
    Gelu,
    /// `gelu_grad(dy, x)`, tanh form (`approximate = "tanh"`).
    GeluTanh,
}

/// `v > 0 ? a : b` lane-wise.
fn select_positive(m: &mut Math, v: Value, a: Value, b: Value) -> Value {
    let zero = m.c(0.0);
    let gt = m.b.ins().fcmp(FloatCC::GreaterThan, v, zero);
    if m.ty.is_vector() {
        let mask = m.b.ins().bitcast(types::F32X4, MemFlagsData::new(), gt);
        m.b.ins().bitselect(mask, a, b)
    } else {
        m.b.ins().select(gt, a, b)
    }
}

/// Emits `op(dy, v)` on lanes of type `ty` (`F32X4` or `F32`).
pub(super) fn emit(
    b: &mut FunctionBuilder,
    ty: types::Type,
    op: Grad,
    dy: Value,
    v: Value,
) -> Value {
    let m = &mut Math { b, ty };
    let one = m.c(1.0);
    match op {
        Grad::Relu => {
            let zero = m.c(0.0);
            select_positive(m, v, dy, zero)
        }
        Grad::LeakyRelu { slope } => {
            let s = m.c(slope);
            let sdy = m.b.ins().fmul(s, dy);
            select_positive(m, v, dy, sdy)
        }
        Grad::Tanh => {
            let vv = m.b.ins().fmul(v, v);
            let d = m.b.ins().fsub(one, vv);
            m.b.ins().fmul(dy, d)
        }
        Grad::Sigmoid => {
            let a = m.b.ins().fmul(dy, v);
            let d = m.b.ins().fsub(one, v);
            m.b.ins().fmul(a, d)
        }
        Grad::Silu => {
            let s = math::sigmoid(m, v);
            let d = m.b.ins().fsub(one, s);
            let vd = m.b.ins().fmul(v, d);
            let k = m.b.ins().fadd(one, vd);
            let a = m.b.ins().fmul(dy, s);
            m.b.ins().fmul(a, k)
        }
        Grad::Gelu => {
            // Φ(v) as in `math::gelu_erf`: ½·erfc(|v|/√2), reflected for v ≥ 0.
            let k = m.c(std::f32::consts::FRAC_1_SQRT_2);
            let av = m.b.ins().fabs(v);
            let a = m.b.ins().fmul(av, k);
            let e = math::erfc_pos(m, a);
            let half = m.c(0.5);
            let lo = m.b.ins().fmul(e, half);
            let hi = m.b.ins().fsub(one, lo);
            let cdf = select_positive(m, v, hi, lo);
            // φ(v) = e^{−v²/2} / √(2π).
            let mhalf = m.c(-0.5);
            let vv = m.b.ins().fmul(v, v);
            let arg = m.b.ins().fmul(vv, mhalf);
            let ex = math::exp(m, arg);
            let inv = m.c((1.0 / (2.0 * std::f64::consts::PI).sqrt()) as f32);
            let pdf = m.b.ins().fmul(ex, inv);
            let vp = m.b.ins().fmul(v, pdf);
            let d = m.b.ins().fadd(cdf, vp);
            m.b.ins().fmul(dy, d)
        }
        Grad::GeluTanh => {
            let k = (2.0 / std::f64::consts::PI).sqrt();
            let c = 0.044715;
            // 2u = v·(2k + 2kc·v²); u' = k + 3kc·v².
            let vv = m.b.ins().fmul(v, v);
            let a2 = m.c((2.0 * k * c) as f32);
            let b2 = m.c((2.0 * k) as f32);
            let t = m.b.ins().fmul(vv, a2);
            let t = m.b.ins().fadd(t, b2);
            let u2 = m.b.ins().fmul(v, t);
            let s = math::sigmoid(m, u2);
            let a1 = m.c((3.0 * k * c) as f32);
            let b1 = m.c(k as f32);
            let du = m.b.ins().fmul(vv, a1);
            let du = m.b.ins().fadd(du, b1);
            let oms = m.b.ins().fsub(one, s);
            let two = m.c(2.0);
            let w = m.b.ins().fmul(two, v);
            let w = m.b.ins().fmul(w, oms);
            let w = m.b.ins().fmul(w, du);
            let w = m.b.ins().fadd(one, w);
            let d = m.b.ins().fmul(s, w);
            m.b.ins().fmul(dy, d)
        }
    }
}
