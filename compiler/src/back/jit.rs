//! The JIT: one Cranelift `JITModule` plus a cache of compiled kernels keyed
//! by signature, so each distinct kernel is compiled exactly once.
//!
//! Settings follow `bench-limits.md` §3: `opt_level = "none"` (keeps the
//! builder's instruction order, compiles faster and gave the best hand-ordered
//! kernels), non-PIC code, ISA flags from `cranelift_native` (SSE/AVX/FMA as
//! the host has them; vectors are 128-bit on x64 regardless).

use super::BackError;
use cranelift_codegen::ir::{types, AbiParam, Signature, Type};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Module};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A kernel description the JIT can compile.
///
/// Every kernel has the same machine signature, the **kernel ABI**:
/// `extern "C" fn(start: i64, end: i64, inputs: *const *const f32, out: *mut f32)`,
/// where `[start, end)` is a range of work units (what a unit is depends on
/// the kernel; see [`super::elementwise`]) so the runtime can split the work
/// over threads, and `inputs` points to an array of input base pointers.
pub trait KernelSource {
    /// The cache key: equal keys must describe identical machine code
    /// (op, dtype, sizes and attributes).
    fn key(&self) -> String;
    /// Emits the function body. The entry block is created by the caller
    /// with the ABI parameters appended; `ptr` is the pointer type.
    fn build(
        &self,
        b: &mut FunctionBuilder,
        entry: cranelift_codegen::ir::Block,
        ptr: Type,
    ) -> Result<(), BackError>;
}

/// The machine function type of every kernel (see [`KernelSource`]); the
/// runtime's plan executor calls kernels through it.
pub use netc_runtime::plan::KernelFn;

/// Index of a compiled kernel inside a [`Jit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KernelId(usize);

struct Compiled {
    code: KernelFn,
    code_size: u32,
}

/// Compile statistics, for tests and `--emit` reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitStats {
    /// How many functions were compiled (cache misses).
    pub compilations: usize,
    /// How many requests were served from the cache.
    pub cache_hits: usize,
    /// Total wall time spent building IR, compiling and finalizing.
    pub compile_time: Duration,
}

/// The JIT compiler and its kernel cache.
///
/// Compiled code lives as long as the `Jit`; the function pointers handed
/// out by [`Jit::code`] are only valid while it is alive.
pub struct Jit {
    module: JITModule,
    fctx: FunctionBuilderContext,
    by_key: HashMap<String, KernelId>,
    kernels: Vec<Compiled>,
    stats: JitStats,
}

impl Jit {
    /// A JIT for the host CPU with `opt_level = "none"`.
    pub fn new() -> Result<Jit, BackError> {
        Jit::with_opt_level("none")
    }

    /// A JIT for the host CPU with the given Cranelift `opt_level`
    /// (`"none"`, `"speed"` or `"speed_and_size"`).
    pub fn with_opt_level(opt_level: &str) -> Result<Jit, BackError> {
        let err =
            |what: &str, e: &dyn std::fmt::Display| BackError(format!("JIT setup: {what}: {e}"));
        let mut fb = settings::builder();
        fb.set("opt_level", opt_level)
            .map_err(|e| err("opt_level", &e))?;
        fb.set("is_pic", "false").map_err(|e| err("is_pic", &e))?;
        fb.set("use_colocated_libcalls", "false")
            .map_err(|e| err("use_colocated_libcalls", &e))?;
        let isa = cranelift_native::builder()
            .map_err(|e| err("host ISA", &e))?
            .finish(settings::Flags::new(fb))
            .map_err(|e| err("ISA flags", &e))?;
        let module = JITModule::new(JITBuilder::with_isa(isa, default_libcall_names()));
        Ok(Jit {
            module,
            fctx: FunctionBuilderContext::new(),
            by_key: HashMap::new(),
            kernels: Vec::new(),
            stats: JitStats::default(),
        })
    }

    /// Returns the kernel for `src`, compiling it only if no kernel with the
    /// same key was compiled before.
    pub fn kernel(&mut self, src: &dyn KernelSource) -> Result<KernelId, BackError> {
        let key = src.key();
        if let Some(&id) = self.by_key.get(&key) {
            self.stats.cache_hits += 1;
            return Ok(id);
        }
        let t0 = Instant::now();
        let mut ctx = self.module.make_context();
        self.fill(&mut ctx, src)?;
        let fail = |e: &dyn std::fmt::Display| BackError(format!("compiling kernel `{key}`: {e}"));
        let id = self
            .module
            .declare_anonymous_function(&ctx.func.signature)
            .map_err(|e| fail(&e))?;
        self.module
            .define_function(id, &mut ctx)
            .map_err(|e| fail(&e))?;
        let code_size = ctx
            .compiled_code()
            .map(|c| c.code_info().total_size)
            .unwrap_or(0);
        self.module.clear_context(&mut ctx);
        self.module.finalize_definitions().map_err(|e| fail(&e))?;
        let ptr = self.module.get_finalized_function(id);
        // SAFETY: `ptr` is the finalized code of a function declared with the
        // kernel ABI signature built by `fill` (i64, i64, ptr, ptr) -> ()
        // in the module's default (SysV/C) calling convention, which is what
        // `KernelFn` denotes. The code stays mapped while `self.module` lives,
        // and `Jit::code` ties uses to that lifetime.
        let code = unsafe { std::mem::transmute::<*const u8, KernelFn>(ptr) };
        let kid = KernelId(self.kernels.len());
        self.kernels.push(Compiled { code, code_size });
        self.by_key.insert(key, kid);
        self.stats.compilations += 1;
        self.stats.compile_time += t0.elapsed();
        Ok(kid)
    }

    /// The CLIF text of `src`'s function (built and verified, not compiled,
    /// not cached).
    pub fn clif(&mut self, src: &dyn KernelSource) -> Result<String, BackError> {
        let mut ctx = self.module.make_context();
        self.fill(&mut ctx, src)?;
        cranelift_codegen::verify_function(&ctx.func, self.module.isa())
            .map_err(|e| BackError(format!("kernel `{}` fails verification: {e}", src.key())))?;
        Ok(ctx.func.display().to_string())
    }

    /// Builds `src`'s function with the kernel ABI into `ctx`.
    fn fill(&mut self, ctx: &mut Context, src: &dyn KernelSource) -> Result<(), BackError> {
        let ptr = self.module.target_config().pointer_type();
        let sig: &mut Signature = &mut ctx.func.signature;
        sig.params.extend([
            AbiParam::new(types::I64),
            AbiParam::new(types::I64),
            AbiParam::new(ptr),
            AbiParam::new(ptr),
        ]);
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut self.fctx);
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        src.build(&mut b, entry, ptr)?;
        b.seal_all_blocks();
        b.finalize(self.module.target_config());
        Ok(())
    }

    /// The kernel compiled under `key`, if any.
    pub fn lookup(&self, key: &str) -> Option<KernelId> {
        self.by_key.get(key).copied()
    }

    /// The machine code of a compiled kernel.
    ///
    /// The pointer is valid while `self` is alive; the borrow checker does
    /// not track that for a bare function pointer, so typed wrappers (for
    /// example [`super::elementwise::ElementwiseKernel`]) carry the lifetime.
    pub fn code(&self, id: KernelId) -> KernelFn {
        self.kernels[id.0].code
    }

    /// The size in bytes of a compiled kernel's machine code.
    pub fn code_size(&self, id: KernelId) -> u32 {
        self.kernels[id.0].code_size
    }

    /// Compile counters so far.
    pub fn stats(&self) -> JitStats {
        self.stats
    }
}
