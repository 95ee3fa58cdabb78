//! Flat elementwise chains whose cost is transcendental math (GELU, SiLU,
//! sigmoid, `exp`, and the GELU and SiLU gradients), run on AVX-512 in 16
//! lanes.
//!
//! The JIT's elementwise kernels are Cranelift code, which on x86-64 is
//! limited to 128-bit vectors: fine for chains bound by memory traffic
//! (adds, scales, relus), four times too narrow for chains bound by
//! arithmetic, such as the SD UNet's GEGLU (`a * gelu(b)`, an `erfc` and
//! an `exp` per element). A [`PointwiseChain`] is the same chain — input 0
//! is the running value, each step applies a unary op or a binary op with
//! another input or a constant — computed here block by block: a block of
//! [`BLOCK`] elements is loaded into the output, every step runs over it
//! while it sits in L1, and the next block follows.
//!
//! The math is that of the JIT (`compiler/src/back/math.rs`): the same
//! reductions, polynomials and special cases (`exp`: Cody-Waite reduction,
//! degree-7 Taylor polynomial, `2^n` applied by `vscalefps`, which rounds
//! denormal results once; the GELU's `erfc` from the Numerical Recipes
//! Chebyshev fit), so a chain gives the same results, to the last bits or
//! so, whichever path runs it.

use crate::plan::RowKernel;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Elements per block: four KiB of the output, in L1 across the steps.
pub const BLOCK: usize = 1024;

/// `e^r` for `|r| ≤ 0.347` (after the Cody-Waite reduction): the Taylor
/// polynomial to degree 7, highest coefficient first (Horner order);
/// shared with the JIT's `math::exp`.
pub const EXP_TAYLOR: [f32; 8] = [
    1.0 / 5040.0,
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
    1.0,
    1.0,
];

/// `P(t)` of Numerical Recipes' `erfcc` (`erfc(a) = t·e^{−a² + P(t)}`, `t
/// = 1/(1 + a/2)`, fractional error < 1.2e-7), highest coefficient first;
/// shared with the JIT's `math::erfc_pos`.
pub const ERFCC: [f32; 10] = [
    0.170_872_77,
    -0.822_152_23,
    1.488_515_9,
    -1.135_204,
    0.278_868_07,
    -0.186_288_06,
    0.096_784_18,
    0.374_091_96,
    1.000_023_7,
    -1.265_512_2,
];

/// A unary step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unary {
    /// `-x`.
    Neg,
    /// `e^x`.
    Exp,
    /// `1 / (1 + e^{-x})`.
    Sigmoid,
    /// `x / (1 + e^{-x})`.
    Silu,
    /// GELU, erf form: `x·Φ(x)`.
    Gelu,
}

impl Unary {
    /// Whether the step costs transcendental math (what makes a chain
    /// worth running here rather than in the JIT's 4-lane kernels).
    pub fn is_transcendental(self) -> bool {
        !matches!(self, Unary::Neg)
    }
}

/// A binary step's op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    /// `x + y`.
    Add,
    /// `x - y`.
    Sub,
    /// `x * y`.
    Mul,
    /// `x / y`.
    Div,
    /// `silu_grad(dy, v) = dy·s·(1 + v·(1 − s))`, `s = σ(v)`, `v` the
    /// SiLU's input (`compiler/src/back/elementwise/grad.rs`).
    SiluGrad,
    /// `gelu_grad(dy, v) = dy·(Φ(v) + v·φ(v))`, erf form, `v` the GELU's
    /// input.
    GeluGrad,
}

/// The other operand of a binary step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Operand {
    /// Input `k` of the step, element by element ([`PointwiseChain::scalar`]
    /// says whether it is one value broadcast instead).
    Input(usize),
    /// A constant.
    Const(f32),
}

/// One step of a chain.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// `x = op(x)`.
    Unary(Unary),
    /// `x = op(x, y)`, or `op(y, x)` with `swap`.
    Binary {
        /// The op.
        op: Binary,
        /// `y`.
        rhs: Operand,
        /// Apply as `op(y, x)`.
        swap: bool,
    },
}

/// A flat elementwise chain as a row kernel (one row per element): input
/// 0 is the running value, as long as the output; every other input is
/// either as long too or a single broadcast value.
#[derive(Debug, Clone, PartialEq)]
pub struct PointwiseChain {
    /// Per input, whether it is one value broadcast to every element
    /// (input 0 never is).
    pub scalar: Vec<bool>,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

/// Whether this CPU runs [`PointwiseChain`]s (AVX-512F); a compiler
/// lowers a chain to one only then.
pub fn available() -> bool {
    crate::gemm::kernel_avx512::available()
}

impl RowKernel for PointwiseChain {
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
        if inputs.len() != self.scalar.len() || self.scalar.first() != Some(&false) {
            return Err(format!(
                "pointwise chain: {} inputs for {} declared (input 0 full)",
                inputs.len(),
                self.scalar.len()
            ));
        }
        let end = first + out.len();
        for (k, (input, &scalar)) in inputs.iter().zip(&self.scalar).enumerate() {
            let need = if scalar { 1 } else { end };
            if input.len() < need {
                return Err(format!(
                    "pointwise chain: input {k} has {} elements, {need} needed",
                    input.len()
                ));
            }
        }
        for step in &self.steps {
            if let Step::Binary {
                rhs: Operand::Input(k),
                ..
            } = step
            {
                if *k >= inputs.len() {
                    return Err(format!("pointwise chain: a step reads input {k}"));
                }
            }
        }
        if !available() {
            return Err("pointwise chain: the CPU has no AVX-512F".into());
        }
        for (b, block) in out.chunks_mut(BLOCK).enumerate() {
            let at = first + b * BLOCK;
            block.copy_from_slice(&inputs[0][at..at + block.len()]);
            for step in &self.steps {
                // SAFETY: the CPU has AVX-512F (checked above).
                unsafe { self.apply(*step, at, inputs, block) };
            }
        }
        Ok(())
    }
}

impl PointwiseChain {
    /// Applies one step to `block` (elements `at..` of the output).
    ///
    /// # Safety
    /// The CPU has AVX-512F; the inputs were checked by [`RowKernel::rows`].
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn apply(&self, step: Step, at: usize, inputs: &[&[f32]], block: &mut [f32]) {
        match step {
            Step::Unary(op) => {
                for_vectors(block, |x| match op {
                    Unary::Neg => _mm512_sub_ps(_mm512_setzero_ps(), x),
                    Unary::Exp => exp(x),
                    Unary::Sigmoid => over_one_plus_exp_neg(_mm512_set1_ps(1.0), x),
                    Unary::Silu => over_one_plus_exp_neg(x, x),
                    Unary::Gelu => gelu(x),
                });
            }
            Step::Binary { op, rhs, swap } => {
                let f = |x: __m512, y: __m512| {
                    let (l, r) = if swap { (y, x) } else { (x, y) };
                    match op {
                        Binary::Add => _mm512_add_ps(l, r),
                        Binary::Sub => _mm512_sub_ps(l, r),
                        Binary::Mul => _mm512_mul_ps(l, r),
                        Binary::Div => _mm512_div_ps(l, r),
                        Binary::SiluGrad => silu_grad(l, r),
                        Binary::GeluGrad => gelu_grad(l, r),
                    }
                };
                match rhs {
                    Operand::Const(c) => {
                        let y = _mm512_set1_ps(c);
                        for_vectors(block, |x| f(x, y));
                    }
                    Operand::Input(k) if self.scalar[k] => {
                        let y = _mm512_set1_ps(inputs[k][0]);
                        for_vectors(block, |x| f(x, y));
                    }
                    Operand::Input(k) => {
                        let other = &inputs[k][at..at + block.len()];
                        for (i, chunk) in block.chunks_mut(16).enumerate() {
                            let mask = lanes(chunk.len());
                            // SAFETY: the masked lanes are inside `chunk`
                            // and the matching part of `other`.
                            unsafe {
                                let x = _mm512_maskz_loadu_ps(mask, chunk.as_ptr());
                                let y = _mm512_maskz_loadu_ps(mask, other.as_ptr().add(16 * i));
                                _mm512_mask_storeu_ps(chunk.as_mut_ptr(), mask, f(x, y));
                            }
                        }
                    }
                }
            }
        }
    }

    /// Without AVX-512 there is nothing to run ([`RowKernel::rows`]
    /// refuses first).
    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn apply(&self, _: Step, _: usize, _: &[&[f32]], _: &mut [f32]) {}
}

/// The mask of the first `n` (at most 16) lanes.
#[cfg(target_arch = "x86_64")]
fn lanes(n: usize) -> __mmask16 {
    if n >= 16 {
        0xFFFF
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

/// `block[i] = f(block[i])`, 16 lanes at a time, the tail masked.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn for_vectors(block: &mut [f32], f: impl Fn(__m512) -> __m512) {
    for chunk in block.chunks_mut(16) {
        let mask = lanes(chunk.len());
        // SAFETY: the masked lanes are inside `chunk`.
        unsafe {
            let x = _mm512_maskz_loadu_ps(mask, chunk.as_ptr());
            _mm512_mask_storeu_ps(chunk.as_mut_ptr(), mask, f(x));
        }
    }
}

/// `e^x`: the JIT's reduction and polynomial (`math::exp`), `2^n` by
/// `vscalefps`. Inputs are clamped to `[-150, 100]` (NaN passes), so
/// large ones overflow to `inf` and small ones round to denormals or 0.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
fn exp(x: __m512) -> __m512 {
    // max/min return their second operand when one is NaN: NaN passes.
    let x = _mm512_max_ps(_mm512_set1_ps(-150.0), x);
    let x = _mm512_min_ps(_mm512_set1_ps(100.0), x);
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-0.693_359_4), x);
    let r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(EXP_TAYLOR[0]);
    for &c in &EXP_TAYLOR[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(p, n)
}

/// `num / (1 + e^{-x})` (sigmoid with `num = 1`, SiLU with `num = x`).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
fn over_one_plus_exp_neg(num: __m512, x: __m512) -> __m512 {
    let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), x));
    _mm512_div_ps(num, _mm512_add_ps(_mm512_set1_ps(1.0), e))
}

/// GELU, erf form, as `math::gelu_erf`: `x·Φ(x)`, `Φ(x)` the lower half
/// of [`normal_cdf`] for `x < 0`, the upper half otherwise.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
fn gelu(x: __m512) -> __m512 {
    let (lo, hi) = normal_cdf(x);
    let negative = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_setzero_ps());
    _mm512_mul_ps(x, _mm512_mask_blend_ps(negative, hi, lo))
}

/// `gelu_grad(dy, v)` as the JIT's: `dy·(Φ(v) + v·e^{−v²/2}/√(2π))`, `Φ`
/// the upper half of [`normal_cdf`] for `v > 0`, the lower otherwise.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
fn gelu_grad(dy: __m512, v: __m512) -> __m512 {
    let (lo, hi) = normal_cdf(v);
    let positive = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, _mm512_setzero_ps());
    let cdf = _mm512_mask_blend_ps(positive, lo, hi);
    let arg = _mm512_mul_ps(_mm512_mul_ps(v, v), _mm512_set1_ps(-0.5));
    let pdf = _mm512_mul_ps(
        exp(arg),
        _mm512_set1_ps((1.0 / (2.0 * std::f64::consts::PI).sqrt()) as f32),
    );
    _mm512_mul_ps(dy, _mm512_add_ps(cdf, _mm512_mul_ps(v, pdf)))
}

/// `silu_grad(dy, v)` as the JIT's: `dy·s·(1 + v·(1 − s))`, `s = σ(v)`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
fn silu_grad(dy: __m512, v: __m512) -> __m512 {
    let one = _mm512_set1_ps(1.0);
    let s = over_one_plus_exp_neg(one, v);
    let k = _mm512_add_ps(one, _mm512_mul_ps(v, _mm512_sub_ps(one, s)));
    _mm512_mul_ps(_mm512_mul_ps(dy, s), k)
}

/// The two halves of the standard normal CDF at `x`: `(½·erfc(a),
/// 1 − ½·erfc(a))` with `a = |x|/√2`, `erfc(a) = t·e^{−a² + P(t)}`, `t =
/// 1/(1 + a/2)` (Numerical Recipes' `erfcc`, as `math::erfc_pos`): `Φ(x)`
/// is the first for negative `x`, the second for positive.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
fn normal_cdf(x: __m512) -> (__m512, __m512) {
    let one = _mm512_set1_ps(1.0);
    let half = _mm512_set1_ps(0.5);
    let a = _mm512_mul_ps(
        _mm512_abs_ps(x),
        _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2),
    );
    let t = _mm512_div_ps(one, _mm512_fmadd_ps(a, half, one));
    let mut p = _mm512_set1_ps(ERFCC[0]);
    for &c in &ERFCC[1..] {
        p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(c));
    }
    let erfc = _mm512_mul_ps(t, exp(_mm512_fnmadd_ps(a, a, p)));
    let lo = _mm512_mul_ps(erfc, half);
    (lo, _mm512_sub_ps(one, lo))
}

#[cfg(test)]
mod tests;
