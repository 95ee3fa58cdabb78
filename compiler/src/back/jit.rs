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
use cranelift_module::{default_libcall_names, FuncId, Module};
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
    /// The machine signature; the kernel ABI unless overridden.
    fn abi(&self) -> Abi {
        Abi::Range
    }
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

/// The GEMM micro-kernel signature `fn(k, a, b, c, ldc_bytes)`, all `i64`
/// (see [`super::gemm_tile`]).
pub type TileFn = unsafe extern "C" fn(i64, i64, i64, i64, i64);

/// The machine signature of a compiled function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Abi {
    /// The kernel ABI ([`KernelFn`]): a work range, input pointers, output.
    Range,
    /// The GEMM micro-kernel ABI ([`TileFn`]): five `i64` parameters.
    Tile,
}

/// Index of a compiled kernel inside a [`Jit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KernelId(usize);

struct Compiled {
    code: *const u8,
    abi: Abi,
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

/// One compiled function as `netc compile --emit clif|asm` shows it;
/// recorded only when the JIT's log is on ([`Jit::enable_log`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRecord {
    /// The cache key.
    pub key: String,
    /// The CLIF text as built, before Cranelift lowers it.
    pub clif: String,
    /// The machine code as Cranelift's vcode text (x64 instructions in
    /// AT&T syntax, before emission).
    pub asm: String,
    /// The size of the machine code in bytes.
    pub code_size: u32,
    /// The labels ([`Jit::set_requester`]) that asked for this kernel, in
    /// first-request order, each once.
    pub users: Vec<String>,
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
    /// Every compiled function with its users, when logging.
    log: Option<Vec<KernelRecord>>,
    /// Who requests kernels now (a layer path and op), when logging.
    requester: String,
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
            log: None,
            requester: String::new(),
        })
    }

    /// Starts recording every function compiled from now on, with its CLIF
    /// text, machine code text and requesters ([`Jit::log`]). Costs a
    /// disassembly per compile; meant for `--emit clif|asm`.
    pub fn enable_log(&mut self) {
        self.log.get_or_insert_with(Vec::new);
    }

    /// Names who requests the next kernels (a layer path and its op), for
    /// the log's `users`; does nothing unless logging.
    pub fn set_requester(&mut self, path: &str, op: &str) {
        if self.log.is_some() {
            let path = if path.is_empty() { "-" } else { path };
            self.requester = format!("{path} ({op})");
        }
    }

    /// The functions compiled since [`Jit::enable_log`], in compile order
    /// (empty when not logging).
    pub fn log(&self) -> &[KernelRecord] {
        self.log.as_deref().unwrap_or(&[])
    }

    /// Adds the current requester to the users of the logged kernel `key`.
    fn note_use(&mut self, key: &str) {
        let who = &self.requester;
        if let Some(r) = self
            .log
            .as_mut()
            .and_then(|log| log.iter_mut().find(|r| r.key == key))
        {
            if !who.is_empty() && !r.users.contains(who) {
                r.users.push(who.clone());
            }
        }
    }

    /// Returns the kernel for `src`, compiling it only if no kernel with the
    /// same key was compiled before.
    pub fn kernel(&mut self, src: &dyn KernelSource) -> Result<KernelId, BackError> {
        let key = src.key();
        if let Some(&id) = self.by_key.get(&key) {
            self.stats.cache_hits += 1;
            self.note_use(&key);
            return Ok(id);
        }
        let t0 = Instant::now();
        let mut ctx = self.module.make_context();
        self.fill(&mut ctx, src)?;
        let clif = self.log.is_some().then(|| {
            ctx.set_disasm(true);
            ctx.func.display().to_string()
        });
        let id = self.compile_filled(&mut ctx, src)?;
        let code_size = ctx
            .compiled_code()
            .map(|c| c.code_info().total_size)
            .unwrap_or(0);
        if let (Some(log), Some(clif)) = (self.log.as_mut(), clif) {
            let asm = ctx
                .compiled_code()
                .and_then(|c| c.vcode.clone())
                .unwrap_or_default();
            log.push(KernelRecord {
                key: key.clone(),
                clif,
                asm,
                code_size,
                users: Vec::new(),
            });
            self.note_use(&key);
        }
        self.module.clear_context(&mut ctx);
        self.module
            .finalize_definitions()
            .map_err(|e| BackError(format!("compiling kernel `{key}`: {e}")))?;
        let code = self.module.get_finalized_function(id);
        let kid = KernelId(self.kernels.len());
        self.kernels.push(Compiled {
            code,
            abi: src.abi(),
            code_size,
        });
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

    /// The x64 vcode (machine instructions before emission, AT&T syntax;
    /// spill slots show as `…(%rsp)`) of `src`'s function. Compiles a
    /// separate copy that is not cached.
    pub fn vcode(&mut self, src: &dyn KernelSource) -> Result<String, BackError> {
        let mut ctx = self.module.make_context();
        ctx.set_disasm(true);
        self.define(&mut ctx, src)?;
        let text = ctx
            .compiled_code()
            .and_then(|c| c.vcode.clone())
            .unwrap_or_default();
        self.module.clear_context(&mut ctx);
        Ok(text)
    }

    /// Builds `src`'s function into `ctx` and compiles it into the module
    /// (not finalized yet).
    fn define(&mut self, ctx: &mut Context, src: &dyn KernelSource) -> Result<FuncId, BackError> {
        self.fill(ctx, src)?;
        self.compile_filled(ctx, src)
    }

    /// Compiles the function already built in `ctx` into the module (not
    /// finalized yet).
    fn compile_filled(
        &mut self,
        ctx: &mut Context,
        src: &dyn KernelSource,
    ) -> Result<FuncId, BackError> {
        let fail =
            |e: &dyn std::fmt::Display| BackError(format!("compiling kernel `{}`: {e}", src.key()));
        let id = self
            .module
            .declare_anonymous_function(&ctx.func.signature)
            .map_err(|e| fail(&e))?;
        self.module.define_function(id, ctx).map_err(|e| fail(&e))?;
        Ok(id)
    }

    /// Builds `src`'s function with its [`Abi`] signature into `ctx`.
    fn fill(&mut self, ctx: &mut Context, src: &dyn KernelSource) -> Result<(), BackError> {
        let ptr = self.module.target_config().pointer_type();
        let sig: &mut Signature = &mut ctx.func.signature;
        match src.abi() {
            Abi::Range => sig.params.extend([
                AbiParam::new(types::I64),
                AbiParam::new(types::I64),
                AbiParam::new(ptr),
                AbiParam::new(ptr),
            ]),
            Abi::Tile => sig.params.extend([AbiParam::new(types::I64); 5]),
        }
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
    ///
    /// Errors if the kernel was compiled with another [`Abi`].
    pub fn code(&self, id: KernelId) -> Result<KernelFn, BackError> {
        let k = self.compiled(id, Abi::Range)?;
        // SAFETY: `k.code` is the finalized code of a function that `fill`
        // declared with the kernel ABI signature (i64, i64, ptr, ptr) -> ()
        // in the module's default (SysV/C) calling convention, which is what
        // `KernelFn` denotes (checked above). The code stays mapped while
        // `self.module` lives; callers tie uses to that lifetime.
        Ok(unsafe { std::mem::transmute::<*const u8, KernelFn>(k.code) })
    }

    /// The machine code of a compiled GEMM micro-kernel ([`Abi::Tile`]);
    /// valid while `self` is alive, like [`Jit::code`].
    ///
    /// Errors if the kernel was compiled with another [`Abi`].
    pub fn tile_code(&self, id: KernelId) -> Result<TileFn, BackError> {
        let k = self.compiled(id, Abi::Tile)?;
        // SAFETY: `k.code` is the finalized code of a function that `fill`
        // declared with five i64 parameters and no result in the default
        // (SysV/C) calling convention, which is what `TileFn` denotes
        // (checked above). The code stays mapped while `self.module` lives.
        Ok(unsafe { std::mem::transmute::<*const u8, TileFn>(k.code) })
    }

    /// The compiled kernel `id`, if it has the ABI `abi`.
    fn compiled(&self, id: KernelId, abi: Abi) -> Result<&Compiled, BackError> {
        let k = &self.kernels[id.0];
        if k.abi != abi {
            return Err(BackError(format!(
                "kernel {id:?} has ABI {:?}, not {abi:?}",
                k.abi
            )));
        }
        Ok(k)
    }

    /// Whether the host ISA flags enable FMA instructions (`has_fma`).
    /// Without it, a vector `fma` becomes libcalls, so kernels use mul + add.
    pub fn has_fma(&self) -> bool {
        self.module
            .isa()
            .isa_flags()
            .iter()
            .any(|f| f.name == "has_fma" && f.as_bool() == Some(true))
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
