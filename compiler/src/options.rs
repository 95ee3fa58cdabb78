//! Compile options shared by the CLI, the host API and the back end: how
//! many threads, which GEMM, and which passes run. Every option exists so
//! that the effect of one technique can be measured by switching it off.

/// Which GEMM computes contractions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum GemmChoice {
    /// Chosen at plan time from the CPU's features: on AVX-512, the packed
    /// GEMM with pre-packed panels for contractions with a constant weight
    /// and the native GEMM for the rest; the native GEMM where AVX2 is
    /// present; else the Cranelift tile.
    #[default]
    Auto,
    /// The tuned runtime GEMM (the `gemm` crate).
    Native,
    /// The Cranelift-generated f32x4 register tile.
    Cranelift,
    /// The packed GEMM (AVX-512 micro-kernel) everywhere, with weights
    /// packed once per weight load. `Auto` packs weights the same way on
    /// an AVX-512 CPU and runs the native GEMM for the other contractions.
    Packed,
}

/// The memory layout of convolution activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LayoutChoice {
    /// The layout pass picks per convolution chain.
    #[default]
    Auto,
    /// Everything stays NCHW (the layout pass does nothing).
    Nchw,
}

/// Options for compiling one model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompileOptions {
    /// Worker threads of the executor (at least 1).
    pub threads: usize,
    /// The GEMM for contractions.
    pub gemm: GemmChoice,
    /// Run the fusion passes (epilogues, elementwise chains, batch-norm folding).
    pub fuse: bool,
    /// Fold inference batch norms into the convolutions before them (with
    /// `fuse`; off, they run as their own per-channel kernels).
    pub fold_bn: bool,
    /// Move unpadded average pools in front of the 1×1 convolutions they
    /// read (the convolution then runs on the pooled map).
    pub pool_first: bool,
    /// Let intermediates whose lifetimes do not overlap share arena bytes
    /// (off: every intermediate gets its own bytes).
    pub reuse_arena: bool,
    /// The layout of convolution activations.
    pub layout: LayoutChoice,
    /// Split the larger GEMMs of a plan too small for the thread pool
    /// between the calling thread and spinning helpers
    /// (`Executor::with_team`); off, such a plan runs on one thread.
    pub team: bool,
    /// Run flat elementwise chains with transcendental steps (GELU, SiLU,
    /// sigmoid, `exp`) on the runtime's AVX-512 kernel
    /// (`netc_runtime::pointwise`) instead of the JIT's 4-lane one, on
    /// CPUs that have AVX-512F.
    pub wide_pointwise: bool,
    /// Run a training step's `linear` products with few rows and a large
    /// weight (and their input gradients) on the runtime's thin products
    /// (`netc_runtime::gemm::thin`, the weight read in place) instead of
    /// a general GEMM that packs the weight on every call.
    pub thin_linear: bool,
    /// Run 3×3 stride-1 convolutions of training steps (forward, input
    /// and weight gradients) as Winograd `F(m×m, 3×3)` transforms around
    /// batched GEMMs (`netc_runtime::winograd`) where they fit, on CPUs
    /// with AVX-512F.
    pub winograd: bool,
    /// Fuse a channels-last `concat → batch norm → relu` read only by a
    /// 1×1 convolution into that convolution (with `fuse`): its implicit
    /// GEMM gathers A through the normalisation from the concatenated
    /// tensors, and the normalised concatenation is never stored
    /// (DenseNet's bottlenecks and transitions, inference plans).
    pub norm_prologue: bool,
}

impl Default for CompileOptions {
    fn default() -> CompileOptions {
        CompileOptions {
            threads: 1,
            gemm: GemmChoice::Auto,
            fuse: true,
            fold_bn: true,
            pool_first: true,
            reuse_arena: true,
            layout: LayoutChoice::Auto,
            team: true,
            wide_pointwise: true,
            thin_linear: true,
            winograd: true,
            norm_prologue: true,
        }
    }
}
