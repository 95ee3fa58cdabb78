//! The back end: kernels generated as Cranelift IR and JIT-compiled.
//!
//! Division of labour (see `docs/backend.md` and DESIGN.md "Kernels"):
//! Cranelift generates the memory-bound kernels (elementwise chains and the
//! fused epilogues of contractions) on f32x4; contractions will call a tuned
//! GEMM in the runtime.
//!
//! - [`jit`]: the JIT module, the kernel cache keyed by signature, and the
//!   compile counters.
//! - [`elementwise`]: the f32 elementwise / fused-chain kernel generator.
//! - [`gemm_tile`]: the portable GEMM path: a Cranelift f32x4 register-tile
//!   micro-kernel and the driver that packs panels and tiles a product.
//! - [`im2col`]: packing kernels that unfold convolution inputs into
//!   GEMM panels (NCHW and NHWC).
//! - [`math`]: exp, log, tanh, sigmoid, silu, gelu as f32x4 IR with
//!   stated error bounds.
//! - [`reduce`]: row reductions (sum, max, mean) and softmax /
//!   log-softmax over the last dimension.
//! - [`clif`]: `netc compile --emit clif`: the elementwise kernels a graph
//!   needs, printed as CLIF.
//! - [`copy`], [`pool`], [`quantize`]: strided copies (data movement),
//!   pooling, and `quantize_u8`; [`loops`] holds their loop helpers.
//! - [`lower`]: a graph to a runtime plan (kernel calls over one arena).

pub mod clif;
pub mod copy;
pub mod elementwise;
pub mod gemm_tile;
pub mod im2col;
pub mod jit;
pub mod loops;
pub mod loss;
pub mod lower;
pub mod math;
pub mod pool;
pub mod quantize;
pub mod reduce;

use std::fmt;

/// An error from kernel generation or JIT compilation.
///
/// These are internal errors (an unsupported kernel description or a
/// Cranelift failure), never caused by a user's numbers alone; the message
/// names the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackError(pub String);

impl fmt::Display for BackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BackError {}
