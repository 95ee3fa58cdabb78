//! The portable GEMM path: a Cranelift f32x4 register-tile micro-kernel and
//! a Rust driver that packs panels and tiles a whole product with it.
//!
//! The micro-kernel ([`TileKernel`]) computes `C[mr×nr] += A·B` with A packed
//! `[k][mr]` and B packed `[k][nr]`, signature
//! `extern "C" fn(k, a, b, c, ldc_bytes)` (all `i64`, see
//! [`super::jit::TileFn`]). It follows the recipe of `bench-limits.md` §3
//! ("Cranelift opt=none 5x8 u8", 83% of the 128-bit peak there):
//!
//! - `opt_level = "none"` (the [`Jit`] default) keeps the builder's order;
//! - header-tested loop: `head(a, b, k, acc…): brif k ≥ unroll, body, tail`,
//!   `body` ends in `jump head(…)`, accumulators flow through block
//!   parameters only, so loads can fold into their users;
//! - per FMA one `fma(splat(load a[i]), b_vec[j], acc[i][j])`, so the splat
//!   has one use and lowers to `vbroadcastss mem` tied to the FMA;
//! - the `nr / 4` B vectors of a step are loaded once and kept in registers;
//! - at most 10 accumulators and 16 live vectors (x64 Cranelift uses
//!   xmm0–15 only); unroll 8 closes the register rotation for 5x8 and 4x8.
//!
//! A K remainder (`k % unroll`) runs through a one-step tail loop.
//! Without the `has_fma` ISA flag a vector `fma` would become four `fmaf`
//! libcalls, so the kernel then uses `fmul` + `fadd` instead
//! ([`TileKernel::fma`]); results differ only in rounding.
//!
//! [`TileGemm`] is the driver: the same contract as the runtime's
//! [`netc_runtime::gemm::sgemm`] (strided A and B, row-major C, alpha,
//! beta), tested on the same cases ([`netc_runtime::gemm::cases`]).

use super::jit::{Abi, Jit, KernelId, KernelSource, TileFn};
use super::BackError;
use cranelift_codegen::ir::{
    condcodes::IntCC, types, Block, BlockArg, InstBuilder, MemFlagsData, Type, Value,
};
use cranelift_frontend::FunctionBuilder;
use netc_runtime::gemm::{check_operands, tile_sgemm_unchecked, Strides, Tile, TileWork};
use std::marker::PhantomData;

/// A GEMM micro-kernel shape: `mr` rows × `nr` columns of C, K unrolled by
/// `unroll`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TileKernel {
    /// Rows of the C tile (≥ 1).
    pub mr: usize,
    /// Columns of the C tile (a multiple of 4).
    pub nr: usize,
    /// K steps per loop iteration (1..=16).
    pub unroll: usize,
    /// Use the `fma` instruction (needs the host's `has_fma`); otherwise
    /// `fmul` + `fadd`.
    pub fma: bool,
}

/// Loads never trap (the driver guarantees the addresses) and need no
/// alignment (C rows may start anywhere).
fn flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

fn args(vals: &[Value]) -> Vec<BlockArg> {
    vals.iter().map(|&v| BlockArg::Value(v)).collect()
}

impl TileKernel {
    /// The recommended tile for `jit`'s host: 5x8, unroll 8, FMA if the
    /// host has it.
    pub fn best(jit: &Jit) -> TileKernel {
        TileKernel {
            mr: 5,
            nr: 8,
            unroll: 8,
            fma: jit.has_fma(),
        }
    }

    /// Checks the shape fits the register budget.
    pub fn validate(&self) -> Result<(), BackError> {
        let nv = self.nr / 4;
        let ok = self.mr >= 1
            && self.nr >= 4
            && self.nr & 3 == 0
            && self.mr * nv <= 10
            && self.mr * nv + nv < 16
            && (1..=16).contains(&self.unroll);
        if ok {
            Ok(())
        } else {
            Err(BackError(format!(
                "GEMM tile {}x{} unroll {}: needs nr a multiple of 4, at most 10 accumulators \
                 (mr·nr/4), fewer than 16 live vectors, unroll 1..=16",
                self.mr, self.nr, self.unroll
            )))
        }
    }

    /// Compiles this micro-kernel, or finds it in the cache.
    pub fn compile(&self, jit: &mut Jit) -> Result<KernelId, BackError> {
        self.validate()?;
        jit.kernel(self)
    }

    /// The driver for this tile (compiling the kernel if needed), borrowing
    /// the JIT that owns its code.
    pub fn gemm<'j>(&self, jit: &'j mut Jit) -> Result<TileGemm<'j>, BackError> {
        let id = self.compile(jit)?;
        Ok(TileGemm {
            tile: *self,
            code: jit.tile_code(id)?,
            _jit: PhantomData,
        })
    }

    /// One K step: loads the B vectors of step `s`, then one
    /// `fma(splat(load a), b_vec, acc)` per accumulator.
    fn step(&self, b: &mut FunctionBuilder, ap: Value, bp: Value, s: usize, acc: &mut [Value]) {
        let nv = self.nr / 4;
        let bv: Vec<Value> = (0..nv)
            .map(|j| {
                let off = ((s * self.nr + 4 * j) * 4) as i32;
                b.ins().load(types::F32X4, flags(), bp, off)
            })
            .collect();
        for i in 0..self.mr {
            for (j, &bvec) in bv.iter().enumerate() {
                let off = ((s * self.mr + i) * 4) as i32;
                let a = b.ins().load(types::F32, flags(), ap, off);
                let sp = b.ins().splat(types::F32X4, a);
                let k = i * nv + j;
                acc[k] = if self.fma {
                    b.ins().fma(sp, bvec, acc[k])
                } else {
                    let p = b.ins().fmul(sp, bvec);
                    b.ins().fadd(p, acc[k])
                };
            }
        }
    }

    /// Pointer to row `i` of C: `c + i·ldc`.
    fn row(b: &mut FunctionBuilder, c: Value, ldc: Value, i: usize) -> Value {
        if i == 0 {
            return c;
        }
        let off = b.ins().imul_imm_s(ldc, i as i64);
        b.ins().iadd(c, off)
    }
}

impl KernelSource for TileKernel {
    fn key(&self) -> String {
        format!(
            "gemm_tile.f32.{}x{}.u{}.{}",
            self.mr,
            self.nr,
            self.unroll,
            if self.fma { "fma" } else { "mul_add" }
        )
    }

    fn abi(&self) -> Abi {
        Abi::Tile
    }

    fn build(&self, b: &mut FunctionBuilder, entry: Block, _ptr: Type) -> Result<(), BackError> {
        self.validate()?;
        let p = b.block_params(entry).to_vec();
        let (k, a0, b0, c, ldc) = (p[0], p[1], p[2], p[3], p[4]);
        let nv = self.nr / 4;
        let nacc = self.mr * nv;

        // Loop blocks: (a, b, k_left, acc…) as parameters.
        let head = b.create_block();
        let body = b.create_block();
        let tail_head = b.create_block();
        let tail_body = b.create_block();
        let exit = b.create_block();
        for blk in [head, tail_head] {
            for _ in 0..3 {
                b.append_block_param(blk, types::I64);
            }
            for _ in 0..nacc {
                b.append_block_param(blk, types::F32X4);
            }
        }

        // entry: load the C tile.
        let mut acc = Vec::with_capacity(nacc);
        for i in 0..self.mr {
            let r = Self::row(b, c, ldc, i);
            for j in 0..nv {
                acc.push(b.ins().load(types::F32X4, flags(), r, (16 * j) as i32));
            }
        }
        let mut hargs = vec![a0, b0, k];
        hargs.extend(&acc);
        b.ins().jump(head, &args(&hargs));

        // head: while k_left ≥ unroll run the unrolled body.
        b.switch_to_block(head);
        let hp = b.block_params(head).to_vec();
        let cond = b
            .ins()
            .icmp_imm_s(IntCC::SignedGreaterThanOrEqual, hp[2], self.unroll as i64);
        b.ins().brif(cond, body, &[], tail_head, &args(&hp));

        b.switch_to_block(body);
        let mut acc = hp[3..].to_vec();
        for s in 0..self.unroll {
            self.step(b, hp[0], hp[1], s, &mut acc);
        }
        let an = b
            .ins()
            .iadd_imm_s(hp[0], (self.unroll * self.mr * 4) as i64);
        let bn = b
            .ins()
            .iadd_imm_s(hp[1], (self.unroll * self.nr * 4) as i64);
        let kn = b.ins().iadd_imm_s(hp[2], -(self.unroll as i64));
        let mut next = vec![an, bn, kn];
        next.extend(&acc);
        b.ins().jump(head, &args(&next));

        // tail: one K step at a time for the remainder.
        b.switch_to_block(tail_head);
        let tp = b.block_params(tail_head).to_vec();
        let cond = b.ins().icmp_imm_s(IntCC::SignedGreaterThan, tp[2], 0);
        b.ins().brif(cond, tail_body, &[], exit, &[]);

        b.switch_to_block(tail_body);
        let mut acc = tp[3..].to_vec();
        self.step(b, tp[0], tp[1], 0, &mut acc);
        let an = b.ins().iadd_imm_s(tp[0], (self.mr * 4) as i64);
        let bn = b.ins().iadd_imm_s(tp[1], (self.nr * 4) as i64);
        let kn = b.ins().iadd_imm_s(tp[2], -1);
        let mut next = vec![an, bn, kn];
        next.extend(&acc);
        b.ins().jump(tail_head, &args(&next));

        // exit: store the C tile.
        b.switch_to_block(exit);
        for i in 0..self.mr {
            let r = Self::row(b, c, ldc, i);
            for j in 0..nv {
                b.ins()
                    .store(flags(), tp[3 + i * nv + j], r, (16 * j) as i32);
            }
        }
        b.ins().return_(&[]);
        Ok(())
    }
}

/// A whole-matrix SGEMM built on a compiled [`TileKernel`]; borrows the
/// [`Jit`] that owns the kernel's code. The blocking driver itself is the
/// runtime's [`tile_sgemm_unchecked`], which the plan executor also runs
/// (see [`TileGemm::runtime_tile`]).
pub struct TileGemm<'j> {
    tile: TileKernel,
    code: TileFn,
    _jit: PhantomData<&'j Jit>,
}

impl TileGemm<'_> {
    /// The tile shape this driver runs.
    pub fn tile(&self) -> TileKernel {
        self.tile
    }

    /// The micro-kernel as the runtime's [`Tile`], for plan steps. The
    /// code pointer is valid while the [`Jit`] lives.
    pub fn runtime_tile(&self) -> Tile {
        Tile {
            code: self.code,
            mr: self.tile.mr,
            nr: self.tile.nr,
        }
    }

    /// `C = alpha·A·B + beta·C`, the contract of
    /// [`netc_runtime::gemm::sgemm`]: `A` `m×k` and `B` `k×n` through
    /// strides, `C` row-major with leading dimension `ldc`; `beta == 0`
    /// does not read C. Errors (never panics) when a buffer is too short.
    /// Single-threaded; allocates its packing buffers per call.
    #[allow(clippy::too_many_arguments)]
    pub fn sgemm(
        &self,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: &[f32],
        sa: Strides,
        b: &[f32],
        sb: Strides,
        beta: f32,
        c: &mut [f32],
        ldc: usize,
    ) -> Result<(), BackError> {
        check_operands(m, n, k, a.len(), sa, b.len(), sb, c.len(), ldc)
            .map_err(|e| BackError(format!("Cranelift GEMM tile: {e}")))?;
        let tile = self.runtime_tile();
        let mut work = TileWork::new(tile.mr, tile.nr);
        // SAFETY: `check_operands` proved every element the strides reach
        // lies inside its slice; `c` is a unique borrow (no overlap); the
        // code is this tile's micro-kernel, alive while the borrowed JIT is,
        // and `work` was made for its shape.
        unsafe {
            tile_sgemm_unchecked(
                &tile,
                m,
                n,
                k,
                alpha,
                a.as_ptr(),
                sa,
                b.as_ptr(),
                sb,
                beta,
                c.as_mut_ptr(),
                ldc,
                &mut work,
            )
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests;
