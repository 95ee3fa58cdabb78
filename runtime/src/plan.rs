//! The plan executor: runs an ordered list of kernel calls over one memory
//! arena. The arena is allocated when the executor is built and reused by
//! every run; a run allocates nothing. Each step's work range `[0, units)`
//! is split over a rayon pool of the requested size; kernels write disjoint
//! parts of their output for disjoint ranges, so the pieces run in parallel.
//!
//! Every kernel has the kernel ABI
//! `extern "C" fn(start: i64, end: i64, inputs: *const *const f32, out: *mut f32)`:
//! `inputs` points to the base pointers of its input buffers, indices are
//! absolute, and `[start, end)` is the range of work units to compute.
//!
//! Contractions (convolutions, linear, matmul) are [`Work::Contraction`]
//! steps: per item, a packing kernel, GEMMs (the native one or a
//! JIT-compiled tile) and an epilogue kernel, with the parallelism chosen
//! here from the item count and the pool size.
//!
//! Work whose extent depends on the data (sparse bags) runs as
//! [`Work::Rows`] steps: runtime code over whole buffers (see [`Rows`]).

mod accumulate;
mod rows;
mod team;

pub use rows::{RowKernel, Rows, MAX_ROW_INPUTS};
use team::Team;

use crate::gemm::packed::{self, Prepacked};
use crate::gemm::{conv, gemv, thin};
use crate::gemm::{sgemm_unchecked, split_product, tile_sgemm_unchecked, Gemm, Strides, TileWork};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The machine signature of every kernel (see the module docs).
pub type KernelFn = unsafe extern "C" fn(i64, i64, *const *const f32, *mut f32);

/// A buffer a step reads or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Buf {
    /// `len` elements of the arena starting at element `offset`.
    Arena {
        /// First element.
        offset: usize,
        /// Element count.
        len: usize,
    },
    /// Model input `i`.
    Input(usize),
    /// Parameter `i`.
    Param(usize),
    /// Model output `i` (written by the plan).
    Output(usize),
    /// Compile-time constant `i` of the plan ([`Plan::constants`]).
    Const(usize),
}

/// What a step computes.
#[derive(Clone, Debug)]
pub enum Work {
    /// A generated kernel over the work range `[0, units)`, split over
    /// threads in pieces of at least `grain` units.
    Kernel {
        /// The kernel.
        kernel: KernelFn,
        /// Work units (`end` of the full range).
        units: usize,
        /// The fewest units worth giving one thread.
        grain: usize,
    },
    /// A batch of GEMMs with an optional packing kernel before and an
    /// optional epilogue kernel after each item (see [`Contraction`]).
    Contraction(Box<Contraction>),
    /// Rows of the output computed by runtime code that reads whole
    /// input buffers (see [`Rows`]).
    Rows(Rows),
}

/// The largest contraction (in multiply-adds) that [`Work::is_small`]
/// counts as small: about 0.5 MFLOP, a few microseconds on one core, the
/// order of what waking a second thread costs.
const SMALL_CONTRACTION_MACS: usize = 1 << 18;

/// The fewest multiply-adds of one GEMM that a [`Team`] splits
/// ([`Contraction::team_splits`]): about 3 µs on one core, against well
/// under a microsecond to hand half of it to a spinning helper.
const TEAM_MIN_MACS: usize = 1 << 15;

impl Work {
    /// Whether the work is too small to gain from running on more than one
    /// thread: a kernel or row step whose range is less than two grains, a
    /// contraction of at most [`SMALL_CONTRACTION_MACS`] multiply-adds.
    pub fn is_small(&self) -> bool {
        match self {
            Work::Kernel { units, grain, .. } => *units / (*grain).max(1) < 2,
            Work::Rows(r) => r.rows / r.grain.max(1) < 2 && r.kernel.threads() < 2,
            Work::Contraction(c) => c.items * c.groups * c.m * c.n * c.k <= SMALL_CONTRACTION_MACS,
        }
    }
}

/// Where one GEMM operand of a [`Contraction`] lives: element
/// `offset + item·item_stride + group·group_stride` of a buffer, read
/// through `strides`.
#[derive(Clone, Copy, Debug)]
pub struct Operand {
    /// The buffer: an index into the step's inputs. For a packed operand
    /// it is the scratch buffer and the item's panel is the thread's slice.
    pub input: usize,
    /// Whether it is the panel the packing kernel writes (then
    /// `item_stride` is unused: every item's panel starts at its slice).
    pub packed: bool,
    /// First element.
    pub offset: usize,
    /// Distance between items.
    pub item_stride: usize,
    /// Distance between groups.
    pub group_stride: usize,
    /// Row and column strides of the matrix.
    pub strides: Strides,
}

/// The packing kernel of a [`Contraction`] (im2col): writes one item's
/// panel into the thread's slice of the scratch buffer.
///
/// Its work units are global: item `i` is units `[i·units, (i+1)·units)`.
/// It reads its inputs through the step's input pointers starting at
/// `input`, and writes relative to the slice it is given as `out` (unit
/// `i·units + r` writes the panel's part `r`).
#[derive(Clone, Copy, Debug)]
pub struct Pack {
    /// The kernel.
    pub kernel: KernelFn,
    /// Its first input pointer: an index into the step's inputs.
    pub input: usize,
    /// The scratch buffer: an index into the step's inputs.
    pub scratch: usize,
    /// Work units per item.
    pub units: usize,
    /// Panel elements per item (the size of one thread's slice).
    pub len: usize,
}

/// The epilogue of a [`Contraction`]: a kernel over the output, run in
/// place after each item's GEMMs. Its work units are global (item `i` is
/// `[i·units, (i+1)·units)`); its input pointers start at `input`.
#[derive(Clone, Copy, Debug)]
pub struct Epilogue {
    /// The kernel (its input 0 is the output).
    pub kernel: KernelFn,
    /// Its first input pointer: an index into the step's inputs.
    pub input: usize,
    /// Work units per item.
    pub units: usize,
}

/// The unpacking kernel of a [`Contraction`] (col2im): when present, the
/// GEMMs write each item's C into the thread's slice of a scratch buffer
/// (group `g` at `g·c_group`, leading dimension `ldc`) and this kernel then
/// moves that panel into the step's output.
///
/// Its work units are global (item `i` is `[i·units, (i+1)·units)`); its
/// only input pointer (input 0) is the item's panel, read relative to the
/// slice, and it writes the output at absolute positions. Different units
/// must write disjoint parts of the output.
#[derive(Clone, Copy, Debug)]
pub struct Unpack {
    /// The kernel.
    pub kernel: KernelFn,
    /// The scratch buffer C is written to: an index into the step's inputs.
    pub scratch: usize,
    /// Work units per item.
    pub units: usize,
    /// Panel elements per item (the size of one thread's slice).
    pub len: usize,
}

/// `items` items (images, batch entries), each:
/// pack (optional) → `groups` GEMMs `C_g[m×n] = A_g[m×k]·B_g[k×n]` →
/// unpack (optional) → epilogue (optional). C is the step's output, item
/// `i` group `g` at `i·c_item + g·c_group` with leading dimension `ldc`
/// (or the item's scratch panel when there is an [`Unpack`]).
///
/// The executor picks the parallelism: with at least as many items as
/// threads (and a scratch slice per thread), items run in parallel, each
/// with a one-thread GEMM and its own slice; otherwise items run one at a
/// time with a multi-threaded GEMM and pack/epilogue split over threads.
/// An accumulating contraction (`accumulate`) adds all items into the
/// same C: its items are split over the threads, each summing into its own
/// partial C that are then added up (see `plan/accumulate.rs`), or, with
/// a per-item epilogue or unpacking, run one at a time.
#[derive(Clone, Debug)]
pub struct Contraction {
    /// Items.
    pub items: usize,
    /// GEMMs per item.
    pub groups: usize,
    /// Rows of A and C.
    pub m: usize,
    /// Columns of B and C.
    pub n: usize,
    /// The contracted size.
    pub k: usize,
    /// The left operand.
    pub a: Operand,
    /// The right operand.
    pub b: Operand,
    /// Distance between items in C.
    pub c_item: usize,
    /// Distance between groups in C.
    pub c_group: usize,
    /// Leading dimension of C.
    pub ldc: usize,
    /// The packing kernel, if an operand is packed.
    pub pack: Option<Pack>,
    /// The epilogue kernel, if any.
    pub epilogue: Option<Epilogue>,
    /// The unpacking kernel, if C goes through a scratch panel.
    pub unpack: Option<Unpack>,
    /// Whether every item adds its product into C (`beta = 1` from the
    /// second item on; the first overwrites C): a sum over the items, as
    /// a weight gradient over a batch. `c_item` is then normally 0.
    pub accumulate: bool,
    /// The GEMM.
    pub gemm: Gemm,
    /// A normalised concatenation read as A (with [`Gemm::Implicit`]
    /// over a 1×1 geometry only), in place of the A operand's buffer.
    pub prologue: Option<Prologue>,
}

/// The A of an implicit 1×1 convolution read through a per-channel
/// normalisation from a channel concatenation (`netc_runtime::gemm::conv::Normed`):
/// step inputs `first..first + channels.len()` are the concatenated
/// tensors, input `first + i` holding `m` rows of `channels[i]`.
#[derive(Clone, Debug)]
pub struct Prologue {
    /// The first concatenated tensor: an index into the step's inputs.
    pub first: usize,
    /// The channels of each concatenated tensor (consecutive step inputs).
    pub channels: Vec<usize>,
    /// The per-channel scale: an index into the step's inputs.
    pub scale: usize,
    /// The per-channel shift: an index into the step's inputs.
    pub shift: usize,
    /// Whether negative results are set to zero.
    pub relu: bool,
}

/// One step of a plan.
#[derive(Clone, Debug)]
pub struct Step {
    /// What it computes.
    pub work: Work,
    /// Its input buffers, in the order the work expects.
    pub inputs: Vec<Buf>,
    /// Its output buffer.
    pub output: Buf,
    /// Elements the step reads from each input and writes to the output
    /// (checked against the buffers before running).
    pub extents: Vec<usize>,
}

/// A compiled model's schedule: the arena size and the steps in order.
///
/// `prepare` steps compute what depends on the parameters only (folded
/// batch norms, re-laid-out weights); they run once per weight change
/// ([`Executor::prepare`]) and write a region of the arena that `steps`
/// read but never overwrite.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Arena size in f32 elements.
    pub arena_len: usize,
    /// The steps that depend on parameters only, in execution order.
    pub prepare: Vec<Step>,
    /// The steps of one run, in execution order.
    pub steps: Vec<Step>,
    /// Compile-time constant tensors, read through [`Buf::Const`].
    pub constants: Vec<Vec<f32>>,
}

/// Why a plan cannot run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// A buffer is smaller than a step needs.
    #[error("step {step}: {what} has {have} elements, the kernel needs {need}")]
    TooSmall {
        /// The step index.
        step: usize,
        /// Which buffer.
        what: String,
        /// Its length.
        have: usize,
        /// What the kernel touches.
        need: usize,
    },
    /// A step names a buffer that was not given.
    #[error("step {step}: {what} is not given")]
    Missing {
        /// The step index.
        step: usize,
        /// Which buffer.
        what: String,
    },
    /// A step's extents do not list one per buffer.
    #[error("step {step}: {extents} extents for {buffers} buffers")]
    Malformed {
        /// The step index.
        step: usize,
        /// Extents given.
        extents: usize,
        /// Buffers (inputs + output).
        buffers: usize,
    },
    /// The thread pool could not be built.
    #[error("cannot start {0} threads")]
    Threads(usize),
    /// A contraction's operands reach past the extents its step declares.
    #[error(
        "step {step}: contraction operand {what} needs {need} elements, the step declares {have}"
    )]
    Contraction {
        /// The step index.
        step: usize,
        /// Which operand.
        what: &'static str,
        /// Elements it reaches.
        need: usize,
        /// The declared extent.
        have: usize,
    },
    /// `run` was called before `prepare` (the parameter-derived tensors
    /// would be stale or missing).
    #[error("the plan's parameter-derived tensors are not prepared (call prepare after loading weights)")]
    NotPrepared,
    /// A row step is malformed, or its kernel refused the data it read
    /// (a sparse input that is not valid CSR).
    #[error("step {step}: {reason}")]
    Rows {
        /// The step index.
        step: usize,
        /// What is wrong.
        reason: String,
    },
    /// [`Executor::run_profiled`] got fewer time slots than the plan has steps.
    #[error("{have} time slots for {need} steps")]
    Times {
        /// Slots given.
        have: usize,
        /// Steps in the plan.
        need: usize,
    },
}

/// Raw pointers handed to kernels on several threads.
#[derive(Clone, Copy)]
struct Shared(*const *const f32, *mut f32);

// SAFETY: the pointers are only dereferenced by kernels, which write the
// disjoint output ranges they are given and only read inputs; the buffers
// outlive the `run` call that shares them.
unsafe impl Send for Shared {}
// SAFETY: as above; concurrent kernel calls never write the same element.
unsafe impl Sync for Shared {}

impl Contraction {
    /// Checks that every operand stays inside the extent the step declares
    /// for its buffer (`extents[i]` for input `i`, the last for the output).
    fn validate(&self, step: usize, extents: &[usize]) -> Result<(), PlanError> {
        let bad = |what: &'static str, need: usize, have: usize| PlanError::Contraction {
            step,
            what,
            need,
            have,
        };
        let over = |what| bad(what, usize::MAX, 0);
        let last = |count: usize, stride: usize| count.saturating_sub(1).checked_mul(stride);
        let reach = |o: &Operand, rows, cols, what| -> Result<(usize, usize), PlanError> {
            let items = if o.packed { 1 } else { self.items };
            // A pre-packed operand spans its panels, not its strides.
            let span = match (self.gemm, what) {
                (Gemm::Packed(Prepacked::A), "A") => Some(packed::packed_a_len(rows, cols)),
                (Gemm::Packed(Prepacked::B) | Gemm::Implicit(_), "B") => {
                    Some(packed::packed_b_len(rows, cols))
                }
                // An implicit A spans the convolution's input.
                (Gemm::Implicit(geom), "A") => geom.span(),
                _ => o.strides.span(rows, cols),
            };
            let need = span
                .and_then(|s| s.checked_add(o.offset))
                .and_then(|s| s.checked_add(last(items, o.item_stride)?))
                .and_then(|s| s.checked_add(last(self.groups, o.group_stride)?))
                .ok_or_else(|| over(what))?;
            let have = match (o.packed, self.pack) {
                (true, Some(p)) => p.len,
                (true, None) => return Err(bad(what, need, 0)),
                (false, _) => *extents.get(o.input).ok_or_else(|| over(what))?,
            };
            Ok((need, have))
        };
        if let Gemm::Implicit(geom) = self.gemm {
            // One product over the whole batch, read from the input.
            let shaped = self.items == 1
                && !self.a.packed
                && self.pack.is_none()
                && self.m == geom.rows()
                && self.k == geom.depth()
                && geom.cg <= geom.c;
            if !shaped {
                return Err(bad("implicit A", self.m, geom.rows()));
            }
        }
        let gemv_shaped = self.a.strides.col == 1 && self.b.strides.row == 1 && !self.a.packed;
        if matches!(self.gemm, Gemm::Gemv) && !gemv_shaped {
            return Err(bad("GEMV A and B", self.m, 0));
        }
        let thin_shaped = thin::Form::of((self.m, self.n, self.k), self.a.strides, self.b.strides)
            .is_some()
            && !self.a.packed
            && !self.b.packed;
        if matches!(self.gemm, Gemm::Thin) && !thin_shaped {
            return Err(bad("thin A and B", self.m, 0));
        }
        let c = Operand {
            input: 0,
            packed: false,
            offset: 0,
            item_stride: if self.unpack.is_some() {
                0
            } else {
                self.c_item
            },
            group_stride: self.c_group,
            strides: Strides::row_major(self.ldc),
        };
        let c_have = match self.unpack {
            Some(u) => u.len,
            None => *extents.last().unwrap_or(&0),
        };
        let a_check = match &self.prologue {
            Some(p) => (
                0,
                self.prologue_extents(p, extents)
                    .ok_or_else(|| over("prologue"))?,
            ),
            None => reach(&self.a, self.m, self.k, "A")?,
        };
        let checks = [
            ("A", a_check),
            ("B", reach(&self.b, self.k, self.n, "B")?),
            ("C", (reach(&c, self.m, self.n, "C")?.0, c_have)),
        ];
        for (what, (need, have)) in checks {
            if need > have || (self.ldc < self.n && self.m > 1) {
                return Err(bad(what, need, have));
            }
        }
        if let Some(p) = self.pack {
            let have = *extents.get(p.scratch).ok_or_else(|| over("scratch"))?;
            if p.len > have {
                return Err(bad("scratch", p.len, have));
            }
        }
        if let Some(u) = self.unpack {
            let have = *extents.get(u.scratch).ok_or_else(|| over("C scratch"))?;
            if u.len > have {
                return Err(bad("C scratch", u.len, have));
            }
        }
        Ok(())
    }
}

/// One contraction step being run: its pointers and the tile GEMM's
/// per-thread buffers.
#[derive(Clone, Copy)]
struct Contracting<'c> {
    c: &'c Contraction,
    slots: *const *const f32,
    out: *mut f32,
    work: *mut TileWork,
    /// Partial Cs of a split accumulating contraction: `threads − 1` of
    /// `accumulate::partial_len` elements each.
    partials: *mut f32,
    /// The executor's team, when the plan runs on the calling thread with
    /// helpers ([`Executor::with_team`]); `work` then has an entry per part.
    team: Option<&'c Team>,
}

// SAFETY: items write disjoint parts of C and of the scratch (one slice per
// task) and task `t` alone uses `work[t]`; inputs are only read.
unsafe impl Send for Contracting<'_> {}
// SAFETY: as above.
unsafe impl Sync for Contracting<'_> {}

impl Contraction {
    /// Checks a prologue against the step's extents: an implicit 1×1,
    /// stride-1, unpadded geometry over the concatenation's channels,
    /// every part `m` rows of its channels, scale and shift one per
    /// channel. Returns the A operand's extent on success (it is not read).
    fn prologue_extents(&self, p: &Prologue, extents: &[usize]) -> Option<usize> {
        let Gemm::Implicit(geom) = self.gemm else {
            return None;
        };
        let one_by_one = geom.kh == 1
            && geom.kw == 1
            && geom.stride == [1, 1]
            && geom.pad == [0, 0]
            && geom.c == geom.cg
            && geom.depth() == self.k;
        let parts = extents.get(p.first..p.first.checked_add(p.channels.len())?)?;
        let fits = parts
            .iter()
            .zip(&p.channels)
            .all(|(&e, &c)| c.checked_mul(self.m).is_some_and(|need| e >= need));
        let per_channel = |i: usize| extents.get(i).is_some_and(|&e| e >= self.k);
        (one_by_one
            && fits
            && p.channels.iter().sum::<usize>() == self.k
            && per_channel(p.scale)
            && per_channel(p.shift))
        .then(|| extents.get(self.a.input).copied())
        .flatten()
    }

    /// Whether a [`Team`] splits this contraction's GEMMs: packed GEMMs
    /// of at least [`TEAM_MIN_MACS`] multiply-adds.
    fn team_splits(&self) -> bool {
        matches!(self.gemm, Gemm::Packed(_)) && self.m * self.n * self.k >= TEAM_MIN_MACS
    }
}

impl Contracting<'_> {
    /// Runs all items on up to `threads` of the pool's threads (1: on the
    /// calling thread); `extents` are the step's declared extents.
    ///
    /// # Safety
    /// The buffers cover the step's extents, the contraction was validated
    /// against them, and `work` has an entry per pool thread if the GEMM is
    /// a tile GEMM.
    unsafe fn run(self, pool: &rayon::ThreadPool, threads: usize, extents: &[usize]) {
        let c = self.c;
        let slices = |scratch: usize, len: usize| extents[scratch] / len.max(1);
        let slices = c
            .pack
            .map_or(usize::MAX, |p| slices(p.scratch, p.len))
            .min(c.unpack.map_or(usize::MAX, |u| slices(u.scratch, u.len)));
        let tasks = threads.min(c.items).min(slices);
        if threads > 1 && tasks > 1 && accumulate::splits(c) {
            // SAFETY: forwarded; the executor sized `partials` for its
            // threads, and the scratch holds `tasks` panels.
            unsafe { self.run_split(pool, tasks) };
        } else if threads > 1 && c.items >= threads && tasks == threads && !c.accumulate {
            pool.install(|| {
                (0..tasks).into_par_iter().for_each(|t| {
                    for item in c.items * t / tasks..c.items * (t + 1) / tasks {
                        // SAFETY: task t owns slice t and work[t].
                        unsafe { self.item(item, t, None) };
                    }
                })
            });
        } else if threads > 1 {
            pool.install(|| {
                for item in 0..c.items {
                    // SAFETY: one item at a time, slice 0.
                    unsafe { self.item(item, 0, Some(pool)) };
                }
            });
        } else {
            for item in 0..c.items {
                // SAFETY: one thread, slice 0.
                unsafe { self.item(item, 0, None) };
            }
        }
    }

    /// Runs the packing kernel (if any) for `item` into scratch slice
    /// `slice`, split over `pool` if given; returns the panel (null
    /// without a packing kernel).
    ///
    /// # Safety
    /// The scratch extent holds at least `slice + 1` panels.
    unsafe fn pack(
        self,
        item: usize,
        slice: usize,
        pool: Option<&rayon::ThreadPool>,
    ) -> *const f32 {
        let Some(p) = self.c.pack else {
            return std::ptr::null();
        };
        // SAFETY: `slots` has an entry per step input (indices validated);
        // the caller guarantees slice `slice` exists.
        let base = unsafe { (*self.slots.add(p.scratch) as *mut f32).add(slice * p.len) };
        // SAFETY: the pack kernel writes its item's panel into `base`.
        unsafe {
            ranges(
                p.kernel,
                item * p.units,
                (item + 1) * p.units,
                self.slots.add(p.input),
                base,
                pool,
            )
        };
        base
    }

    /// Where group `g` of operand `o` starts for `item`: in the item's
    /// packed `panel`, or in the operand's buffer.
    fn operand(self, o: &Operand, item: usize, panel: *const f32, g: usize) -> *const f32 {
        let (base, item_off) = if o.packed {
            (panel, 0)
        } else {
            // SAFETY: `slots` has an entry per step input (indices validated).
            (unsafe { *self.slots.add(o.input) }, item * o.item_stride)
        };
        // SAFETY: validated to stay inside the operand's buffer (or panel).
        unsafe { base.add(o.offset + item_off + g * o.group_stride) }
    }

    /// One item: pack, GEMMs, epilogue; split over `pool` if given, else
    /// on the calling thread with scratch slice and tile buffers `slice`.
    unsafe fn item(self, item: usize, slice: usize, pool: Option<&rayon::ThreadPool>) {
        let c = self.c;
        // SAFETY: forwarded (the scratch holds a panel per slice).
        let panel = unsafe { self.pack(item, slice, pool) };
        let at = |o: &Operand, g: usize| self.operand(o, item, panel, g);
        // Where this item's C starts: its scratch panel or its place in
        // the output.
        let c_base = match c.unpack {
            // SAFETY: the scratch extent holds at least `slice + 1` panels.
            Some(u) => unsafe { (*self.slots.add(u.scratch) as *mut f32).add(slice * u.len) },
            // SAFETY: validated to stay inside the output.
            None => unsafe { self.out.add(item * c.c_item) },
        };
        let beta = if c.accumulate && item > 0 { 1.0 } else { 0.0 };
        // An implicit convolution with one group runs the epilogue on
        // each block of rows as soon as the GEMM finishes it (still in
        // cache), when the epilogue's units are the rows of C; so does a
        // packed GEMM whose parts each compute whole rows.
        let rows_of_c = c.groups == 1 && c.unpack.is_none();
        let fused = match (c.gemm, c.epilogue) {
            (Gemm::Implicit(_), Some(e)) => rows_of_c && e.units == c.m,
            (Gemm::Packed(pre), Some(e)) => {
                let parts = match (pool, self.team.filter(|_| c.team_splits())) {
                    (Some(p), _) => p.current_num_threads(),
                    (None, Some(team)) => team.parts(),
                    (None, None) => 1,
                };
                let b_packed = pre == Prepacked::B;
                rows_of_c && e.units == c.m && packed::whole_rows((c.m, c.n, c.k), b_packed, parts)
            }
            _ => false,
        };
        let rows_done = |r: Range<usize>| {
            if let (true, Some(e)) = (fused, c.epilogue) {
                // SAFETY: the GEMM has finished rows r of the item's C;
                // blocks are disjoint.
                unsafe { self.epilogue_rows(e, item * e.units + r.start..item * e.units + r.end) };
            }
        };
        for g in 0..c.groups {
            let (a, b) = (at(&c.a, g), at(&c.b, g));
            // SAFETY: validated to stay inside the output or the panel.
            let out = unsafe { c_base.add(g * c.c_group) };
            // SAFETY: operands validated; C never overlaps A or B.
            unsafe { self.gemm(a, b, beta, out, slice, pool, &rows_done) };
        }
        if let Some(u) = c.unpack {
            let panel = [c_base as *const f32];
            // SAFETY: the unpack kernel reads the item's panel and writes
            // disjoint parts of the output for disjoint units.
            unsafe {
                ranges(
                    u.kernel,
                    item * u.units,
                    (item + 1) * u.units,
                    panel.as_ptr(),
                    self.out,
                    pool,
                )
            };
        }
        if let (false, Some(e)) = (fused, c.epilogue) {
            // SAFETY: the epilogue kernel rewrites the item's rows of C in place.
            unsafe {
                ranges(
                    e.kernel,
                    item * e.units,
                    (item + 1) * e.units,
                    self.slots.add(e.input),
                    self.out,
                    pool,
                )
            };
        }
    }

    /// Runs the epilogue on its (global) units `units` on the calling
    /// thread.
    ///
    /// # Safety
    /// The units' rows of C are final and no one else writes them.
    unsafe fn epilogue_rows(self, e: Epilogue, units: Range<usize>) {
        // SAFETY: the epilogue kernel rewrites its units' rows in place
        // (the kernel ABI; inputs validated at plan time).
        unsafe {
            (e.kernel)(
                units.start as i64,
                units.end as i64,
                self.slots.add(e.input),
                self.out,
            )
        };
    }

    /// One GEMM `C = A·B + beta·C`, on the calling thread (tile buffers
    /// `slice`) or split over `pool`; an implicit convolution, and a
    /// packed GEMM whose parts compute whole rows, call `rows_done` on
    /// each block of rows of C they have finished.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm(
        self,
        a: *const f32,
        b: *const f32,
        beta: f32,
        out: *mut f32,
        slice: usize,
        pool: Option<&rayon::ThreadPool>,
        rows_done: &(dyn Fn(Range<usize>) + Sync),
    ) {
        let c = self.c;
        let (sa, sb) = (c.a.strides, c.b.strides);
        let threads = pool.map_or(1, |p| p.current_num_threads());
        match c.gemm {
            // SAFETY: forwarded; inside `pool.install` the crate splits
            // over the executor's pool.
            Gemm::Native => unsafe {
                sgemm_unchecked(c.m, c.n, c.k, 1.0, a, sa, b, sb, beta, out, c.ldc, threads)
            },
            // SAFETY: forwarded; a pre-packed operand was validated to
            // span its panels; `work` has an entry per pool thread.
            Gemm::Packed(pre) => unsafe {
                let side = |p: *const f32, s: Strides, is_packed: bool| {
                    if is_packed {
                        packed::Side::Packed(p)
                    } else {
                        packed::Side::Raw(p, s)
                    }
                };
                let (pa, pb) = (
                    side(a, sa, pre == Prepacked::A),
                    side(b, sb, pre == Prepacked::B),
                );
                if let (None, Some(team)) = (pool, self.team.filter(|_| c.team_splits())) {
                    // Addresses cross to the helpers as integers.
                    let (a, b, out) = (a as usize, b as usize, out as usize);
                    let (works, parts) = (self.work as usize, team.parts());
                    team.run(&|t| {
                        let (pa, pb) = (
                            side(a as *const f32, sa, pre == Prepacked::A),
                            side(b as *const f32, sb, pre == Prepacked::B),
                        );
                        // Part t of the product: disjoint rows or columns
                        // of C, and `work[t]` is part t's alone.
                        packed::gemm_share(
                            c.m,
                            c.n,
                            c.k,
                            pa,
                            pb,
                            beta,
                            out as *mut f32,
                            c.ldc,
                            (t, parts),
                            &mut *(works as *mut TileWork).add(t),
                            rows_done,
                        )
                    });
                    return;
                }
                let works = if threads <= 1 {
                    self.work.add(slice)
                } else {
                    self.work
                };
                packed::gemm_then(
                    c.m, c.n, c.k, 1.0, pa, pb, beta, out, c.ldc, threads, works, rows_done,
                )
            },
            // SAFETY: forwarded; A was validated to span the input, B its
            // panels; `work` has an entry per pool thread.
            Gemm::Implicit(geom) => unsafe {
                let works = if threads <= 1 {
                    self.work.add(slice)
                } else {
                    self.work
                };
                // A prologue's parts (consecutive step inputs), scale and
                // shift, validated against the step's extents, stand in
                // for A.
                let source = match &c.prologue {
                    Some(p) => conv::Source::Normed(conv::Normed {
                        parts: std::slice::from_raw_parts(
                            self.slots.add(p.first),
                            p.channels.len(),
                        ),
                        channels: &p.channels,
                        scale: *self.slots.add(p.scale),
                        shift: *self.slots.add(p.shift),
                        relu: p.relu,
                    }),
                    None => conv::Source::Input(a),
                };
                conv::gemm(
                    &geom, source, b, c.n, beta, out, c.ldc, threads, works, rows_done,
                )
            },
            // SAFETY: forwarded; `validate` checked that A has unit
            // column stride and B unit row stride.
            Gemm::Gemv => unsafe {
                gemv::gemv(
                    c.m, c.n, c.k, a, sa.row, b, sb.col, beta, out, c.ldc, threads,
                )
            },
            // SAFETY: forwarded; `validate` checked that a thin form fits
            // the strides; `work[slice]` (or the first, outside the pool's
            // tasks) is this call's alone.
            Gemm::Thin => unsafe {
                let work = if threads <= 1 {
                    self.work.add(slice)
                } else {
                    self.work
                };
                thin::gemm(
                    (c.m, c.n, c.k),
                    a,
                    sa,
                    b,
                    sb,
                    beta,
                    out,
                    c.ldc,
                    threads,
                    &mut *work,
                )
            },
            Gemm::Tile(tile) if threads <= 1 => {
                // SAFETY: `work[slice]` belongs to this task alone.
                let w = unsafe { &mut *self.work.add(slice) };
                // SAFETY: forwarded.
                unsafe {
                    tile_sgemm_unchecked(
                        &tile, c.m, c.n, c.k, 1.0, a, sa, b, sb, beta, out, c.ldc, w,
                    )
                }
            }
            Gemm::Tile(tile) => {
                // Addresses cross to the pool's threads as integers.
                let (a, b, out, work) = (a as usize, b as usize, out as usize, self.work as usize);
                (0..threads).into_par_iter().for_each(move |t| {
                    let (rows, cols) = split_product(c.m, c.n, tile.mr, tile.nr, threads, t);
                    if rows.is_empty() || cols.is_empty() {
                        return;
                    }
                    // SAFETY: part t of the product: disjoint rows/columns
                    // of C, and `work[t]` is this task's alone.
                    unsafe {
                        let w = &mut *(work as *mut TileWork).add(t);
                        tile_sgemm_unchecked(
                            &tile,
                            rows.len(),
                            cols.len(),
                            c.k,
                            1.0,
                            (a as *const f32).add(rows.start * sa.row),
                            sa,
                            (b as *const f32).add(cols.start * sb.col),
                            sb,
                            beta,
                            (out as *mut f32).add(rows.start * c.ldc + cols.start),
                            c.ldc,
                            w,
                        )
                    }
                });
            }
        }
    }
}

/// Runs `kernel` over units `[lo, hi)`: on the calling thread, or split
/// over `pool` (when given) in one piece per thread.
///
/// # Safety
/// The kernel ABI: `inputs` and `out` cover the range; pieces write
/// disjoint parts of `out`.
unsafe fn ranges(
    kernel: KernelFn,
    lo: usize,
    hi: usize,
    inputs: *const *const f32,
    out: *mut f32,
    pool: Option<&rayon::ThreadPool>,
) {
    let tasks = pool
        .map_or(1, |p| p.current_num_threads())
        .min(hi - lo)
        .max(1);
    if tasks == 1 {
        // SAFETY: forwarded.
        unsafe { kernel(lo as i64, hi as i64, inputs, out) };
        return;
    }
    let shared = Shared(inputs, out);
    (0..tasks).into_par_iter().for_each(move |t| {
        let s = shared;
        let (start, end) = (lo + (hi - lo) * t / tasks, lo + (hi - lo) * (t + 1) / tasks);
        // SAFETY: forwarded; the pieces are disjoint.
        unsafe { kernel(start as i64, end as i64, s.0, s.1) }
    });
}

/// Checks a row step against its buffers: few enough inputs, an output
/// extent holding every row, and no input sharing storage with the output
/// (the kernel gets the output as a mutable slice).
fn validate_rows(step: usize, r: &Rows, s: &Step) -> Result<(), PlanError> {
    let bad = |reason: String| PlanError::Rows { step, reason };
    if s.inputs.len() > MAX_ROW_INPUTS {
        return Err(bad(format!(
            "a row step reads at most {MAX_ROW_INPUTS} buffers, this one {}",
            s.inputs.len()
        )));
    }
    let need = r
        .rows
        .checked_mul(r.width)
        .ok_or_else(|| bad("rows · width overflows".into()))?;
    let have = s.extents.last().copied().unwrap_or(0);
    if have < need {
        return Err(bad(format!(
            "the output extent is {have}, the rows need {need}"
        )));
    }
    let range = |b: &Buf| match *b {
        Buf::Arena { offset, len } => Some(offset..offset.saturating_add(len)),
        _ => None,
    };
    for b in &s.inputs {
        let overlaps = match (range(b), range(&s.output)) {
            (Some(i), Some(o)) => i.start < o.end && o.start < i.end && !i.is_empty(),
            _ => *b == s.output,
        };
        if overlaps {
            return Err(bad(format!(
                "input {b:?} shares storage with the output {:?}",
                s.output
            )));
        }
    }
    Ok(())
}

/// Runs a [`Plan`] repeatedly over one arena.
pub struct Executor {
    plan: Plan,
    arena: Vec<f32>,
    pool: Arc<rayon::ThreadPool>,
    /// Per prepare step, the input base pointers (refilled each call).
    prepare_pointers: Vec<Vec<*const f32>>,
    /// Per run step, the input base pointers (refilled each run, never reallocated).
    pointers: Vec<Vec<*const f32>>,
    /// Whether the prepare steps ran since the executor was built.
    prepared: bool,
    /// Per thread, the packing buffers of the tile GEMM (empty when no
    /// step uses it).
    tile_work: Vec<TileWork>,
    /// The partial Cs of split accumulating contractions
    /// (`plan/accumulate.rs`): `threads − 1` times the largest a step needs.
    partials: Vec<f32>,
    /// Whether the plan runs on the calling thread: with one thread, or
    /// when [`Executor::inline_when_small`] found every run step too small
    /// to gain from a split ([`Work::is_small`]). Handing a call to the pool costs a thread
    /// wake-up, several microseconds, on every call (`bench/empty.net`:
    /// 9 µs per call through the pool, 0.4 µs without).
    serial: bool,
    /// Spinning helpers that split the larger GEMMs of a plan run on the
    /// calling thread ([`Executor::with_team`]).
    team: Option<Team>,
}

/// Which of a plan's step lists to run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Prepare,
    Run,
}

impl Executor {
    /// An executor for `plan` with `threads` worker threads (at least 1).
    pub fn new(plan: Plan, threads: usize) -> Result<Executor, PlanError> {
        let threads = threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|_| PlanError::Threads(threads))?;
        for (i, s) in plan.prepare.iter().chain(&plan.steps).enumerate() {
            if s.extents.len() != s.inputs.len() + 1 {
                return Err(PlanError::Malformed {
                    step: i,
                    extents: s.extents.len(),
                    buffers: s.inputs.len() + 1,
                });
            }
        }
        let (mut tile, mut packed, mut thin, mut partial) = ((0, 0), false, Vec::new(), 0);
        for (i, s) in plan.prepare.iter().chain(&plan.steps).enumerate() {
            if let Work::Contraction(c) = &s.work {
                c.validate(i, &s.extents)?;
                partial = partial.max(accumulate::partial_len(c));
                if let Gemm::Tile(t) = c.gemm {
                    tile = (tile.0.max(t.mr), tile.1.max(t.nr));
                }
                packed |= matches!(c.gemm, Gemm::Packed(_) | Gemm::Implicit(_));
                if matches!(c.gemm, Gemm::Thin) {
                    thin.push(((c.m, c.n, c.k), c.a.strides, c.b.strides));
                }
            }
            if let Work::Rows(r) = &s.work {
                validate_rows(i, r, s)?;
            }
        }
        let tile_work = if tile.0 > 0 || packed || !thin.is_empty() {
            (0..threads)
                .map(|_| {
                    let work = match (packed, tile.0 > 0) {
                        (true, _) => TileWork::new(tile.0.max(1), tile.1.max(1)).with_packed(),
                        (false, true) => TileWork::new(tile.0, tile.1),
                        (false, false) => TileWork::default(),
                    };
                    thin.iter()
                        .fold(work, |w, &(dims, sa, sb)| w.with_thin(dims, sa, sb))
                })
                .collect()
        } else {
            Vec::new()
        };
        let slots = |steps: &[Step]| -> Vec<Vec<*const f32>> {
            steps
                .iter()
                .map(|s| vec![std::ptr::null(); s.inputs.len()])
                .collect()
        };
        let serial = threads == 1;
        Ok(Executor {
            arena: vec![0.0; plan.arena_len],
            prepare_pointers: slots(&plan.prepare),
            pointers: slots(&plan.steps),
            prepared: plan.prepare.is_empty(),
            tile_work,
            partials: vec![0.0; partial * (threads - 1)],
            serial,
            team: None,
            plan,
            pool: Arc::new(pool),
        })
    }

    /// Runs the plan on the calling thread, never splitting a step, when
    /// every run step is too small to gain from more threads
    /// ([`Work::is_small`]): a small model then pays no thread hand-off per
    /// call. Without it a plan with several threads always runs on the pool
    /// (what the lowering tests rely on to exercise the split paths with
    /// small shapes).
    pub fn inline_when_small(mut self) -> Executor {
        self.serial |= self.plan.steps.iter().all(|s| s.work.is_small());
        self
    }

    /// Gives a plan that runs on the calling thread
    /// ([`Executor::inline_when_small`]) but was asked for several threads
    /// a team of spinning helpers ([`Team`], `plan/team.rs`) that split
    /// its larger GEMMs ([`Contraction::team_splits`]), each part of a
    /// product on the same thread every call. Without such a GEMM (or on
    /// the pool) nothing changes.
    pub fn with_team(mut self) -> Executor {
        let threads = self.pool.current_num_threads();
        let splits = self.plan.steps.iter().any(|s| match &s.work {
            Work::Contraction(c) => c.team_splits(),
            _ => false,
        });
        if self.serial && threads > 1 && splits && self.tile_work.len() >= threads {
            self.team = Team::new(threads);
        }
        self
    }

    /// The parts a team splits a GEMM into (1: no team).
    pub fn team_parts(&self) -> usize {
        self.team.as_ref().map_or(1, Team::parts)
    }

    /// The arena's base address (stable across runs: the arena never moves).
    pub fn arena_ptr(&self) -> *const f32 {
        self.arena.as_ptr()
    }

    /// The arena (outputs a plan leaves in place are read from it).
    pub fn arena(&self) -> &[f32] {
        &self.arena
    }

    /// Compile-time constant `k` of the plan.
    pub fn constant(&self, k: usize) -> &[f32] {
        &self.plan.constants[k]
    }

    /// The worker threads in the pool.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Runs the prepare steps: recomputes every parameter-derived tensor.
    /// Call it after the parameters change and before [`Executor::run`].
    pub fn prepare(&mut self, params: &[&[f32]]) -> Result<(), PlanError> {
        self.check(Phase::Prepare, &[], params, &[])?;
        self.on_pool(|ex| ex.execute(Phase::Prepare, &[], params, &mut [], &mut []))?;
        self.prepared = true;
        Ok(())
    }

    /// Runs every step. Buffers are checked against each step's extents
    /// before anything runs, so a short buffer is an error, not a stray write.
    pub fn run(
        &mut self,
        inputs: &[&[f32]],
        params: &[&[f32]],
        outputs: &mut [&mut [f32]],
    ) -> Result<(), PlanError> {
        if !self.prepared {
            return Err(PlanError::NotPrepared);
        }
        self.check(Phase::Run, inputs, params, outputs)?;
        if self.serial {
            return self.execute(Phase::Run, inputs, params, outputs, &mut []);
        }
        self.on_pool(|ex| ex.execute(Phase::Run, inputs, params, outputs, &mut []))
    }

    /// Runs every step like [`Executor::run`] and stores each step's wall
    /// time in `times` (one entry per step of [`Plan::steps`]; a shorter
    /// slice is an error). Timing adds two clock reads per step.
    pub fn run_profiled(
        &mut self,
        inputs: &[&[f32]],
        params: &[&[f32]],
        outputs: &mut [&mut [f32]],
        times: &mut [Duration],
    ) -> Result<(), PlanError> {
        if !self.prepared {
            return Err(PlanError::NotPrepared);
        }
        if times.len() < self.plan.steps.len() {
            return Err(PlanError::Times {
                have: times.len(),
                need: self.plan.steps.len(),
            });
        }
        self.check(Phase::Run, inputs, params, outputs)?;
        self.on_pool(|ex| ex.execute(Phase::Run, inputs, params, outputs, times))
    }

    /// Runs `f` on one of the pool's threads, so every parallel step inside
    /// it enters the pool directly instead of injecting a job from outside
    /// (which wakes the pool and, every 63 jobs, allocates a queue block):
    /// one injection per call instead of one per parallel step.
    fn on_pool<R: Send>(&mut self, f: impl FnOnce(&mut Executor) -> R + Send) -> R {
        struct Exclusive<'a>(&'a mut Executor);
        // SAFETY: the calling thread blocks inside `install` until `f` has
        // returned, so the executor is used by one thread at a time; its
        // raw pointers only point into buffers the caller keeps borrowed.
        unsafe impl Send for Exclusive<'_> {}
        let pool = Arc::clone(&self.pool);
        let ex = Exclusive(self);
        pool.install(move || {
            let ex = ex;
            f(ex.0)
        })
    }

    /// Runs one phase's steps on checked buffers, timing step `i` into
    /// `times[i]` when `times` is not empty. Stops at the first row step
    /// whose kernel refuses its data.
    fn execute(
        &mut self,
        phase: Phase,
        inputs: &[&[f32]],
        params: &[&[f32]],
        outputs: &mut [&mut [f32]],
        times: &mut [Duration],
    ) -> Result<(), PlanError> {
        let arena_len = self.arena.len();
        let arena = self.arena.as_mut_ptr();
        let (steps, pointers) = match phase {
            Phase::Prepare => (&self.plan.prepare, &mut self.prepare_pointers),
            Phase::Run => (&self.plan.steps, &mut self.pointers),
        };
        let constants = &self.plan.constants;
        let pool = &self.pool;
        let threads = if self.serial {
            1
        } else {
            pool.current_num_threads()
        };
        let work = self.tile_work.as_mut_ptr();
        let partials = self.partials.as_mut_ptr();
        let team = if self.serial { &self.team } else { &None };
        for (i, (step, slots)) in steps.iter().zip(pointers.iter_mut()).enumerate() {
            let started = (!times.is_empty()).then(Instant::now);
            let read = |b: &Buf| -> *const f32 {
                match *b {
                    // SAFETY: `check` verified offset + extent <= arena length.
                    Buf::Arena { offset, .. } => unsafe { arena.add(offset) as *const f32 },
                    Buf::Input(k) => inputs[k].as_ptr(),
                    Buf::Param(k) => params[k].as_ptr(),
                    Buf::Output(k) => outputs[k].as_ptr(),
                    Buf::Const(k) => constants[k].as_ptr(),
                }
            };
            for (slot, b) in slots.iter_mut().zip(&step.inputs) {
                *slot = read(b);
            }
            let out = match step.output {
                // SAFETY: checked like every arena buffer.
                Buf::Arena { offset, .. } => unsafe { arena.add(offset) },
                Buf::Output(k) => outputs[k].as_mut_ptr(),
                // `check` rejects read-only buffers as outputs.
                Buf::Input(_) | Buf::Param(_) | Buf::Const(_) => {
                    unreachable!("checked: outputs are arena or model outputs")
                }
            };
            let (kernel, units, grain) = match step.work {
                Work::Kernel {
                    kernel,
                    units,
                    grain,
                } => (kernel, units, grain),
                Work::Contraction(ref c) => {
                    let at = Contracting {
                        c,
                        slots: slots.as_ptr(),
                        out,
                        work,
                        partials,
                        team: team.as_ref(),
                    };
                    // SAFETY: `check` verified every buffer covers its
                    // declared extent and `Executor::new` that the
                    // contraction stays inside those extents; `work` has
                    // one entry per pool thread when a tile GEMM is used.
                    unsafe { at.run(pool, threads, &step.extents) };
                    if let Some(t) = started {
                        times[i] = t.elapsed();
                    }
                    continue;
                }
                Work::Rows(ref r) => {
                    let empty: &[f32] = &[];
                    let mut ins = [empty; MAX_ROW_INPUTS];
                    for ((slot, b), &ptr) in ins.iter_mut().zip(&step.inputs).zip(slots.iter()) {
                        let len = match *b {
                            Buf::Arena { offset, len } => len.min(arena_len.saturating_sub(offset)),
                            Buf::Input(k) => inputs[k].len(),
                            Buf::Param(k) => params[k].len(),
                            Buf::Output(k) => outputs[k].len(),
                            Buf::Const(k) => constants[k].len(),
                        };
                        // SAFETY: `ptr` is the start of buffer `b`, which
                        // `check` verified holds `len` elements; none
                        // overlaps the output (`validate_rows`: arena ranges
                        // are disjoint from it, and an output buffer is never
                        // also an input of the step).
                        *slot = unsafe { std::slice::from_raw_parts(ptr, len) };
                    }
                    let n = r.rows * r.width;
                    // SAFETY: `check` verified the output covers its extent,
                    // which `validate_rows` verified is at least `n`, and no
                    // input overlaps it.
                    let out = unsafe { std::slice::from_raw_parts_mut(out, n) };
                    r.run(threads, &ins[..step.inputs.len()], out)
                        .map_err(|reason| PlanError::Rows { step: i, reason })?;
                    if let Some(t) = started {
                        times[i] = t.elapsed();
                    }
                    continue;
                }
            };
            let shared = Shared(slots.as_ptr(), out);
            let tasks = (units / grain.max(1)).clamp(1, threads);
            let run_range = move |t: usize| {
                let s = shared;
                let (start, end) = (units * t / tasks, units * (t + 1) / tasks);
                // SAFETY: the kernel ABI; buffers were checked to cover the
                // full range and ranges of different tasks are disjoint.
                unsafe { kernel(start as i64, end as i64, s.0, s.1) }
            };
            if tasks == 1 {
                run_range(0);
            } else {
                self.pool
                    .install(|| (0..tasks).into_par_iter().for_each(run_range));
            }
            if let Some(t) = started {
                times[i] = t.elapsed();
            }
        }
        Ok(())
    }

    fn check(
        &self,
        phase: Phase,
        inputs: &[&[f32]],
        params: &[&[f32]],
        outputs: &[&mut [f32]],
    ) -> Result<(), PlanError> {
        let steps = match phase {
            Phase::Prepare => &self.plan.prepare,
            Phase::Run => &self.plan.steps,
        };
        for (i, step) in steps.iter().enumerate() {
            let buffers = step.inputs.iter().chain(std::iter::once(&step.output));
            for (n, (b, &need)) in buffers.zip(&step.extents).enumerate() {
                let is_output = n == step.inputs.len();
                let missing = |what: String| PlanError::Missing { step: i, what };
                let have = match *b {
                    Buf::Arena { offset, len } => {
                        let end = offset.saturating_add(len);
                        if end <= self.arena.len() {
                            len
                        } else {
                            self.arena.len().saturating_sub(offset)
                        }
                    }
                    Buf::Input(k) if !is_output => inputs
                        .get(k)
                        .map(|s| s.len())
                        .ok_or_else(|| missing(format!("input {k}")))?,
                    Buf::Param(k) if !is_output => params
                        .get(k)
                        .map(|s| s.len())
                        .ok_or_else(|| missing(format!("parameter {k}")))?,
                    Buf::Const(k) if !is_output => self
                        .plan
                        .constants
                        .get(k)
                        .map(|s| s.len())
                        .ok_or_else(|| missing(format!("constant {k}")))?,
                    Buf::Output(k) => outputs
                        .get(k)
                        .map(|s| s.len())
                        .ok_or_else(|| missing(format!("output {k}")))?,
                    Buf::Input(k) | Buf::Param(k) | Buf::Const(k) => {
                        return Err(missing(format!(
                            "a writable output (got read-only buffer {k})"
                        )))
                    }
                };
                if have < need {
                    // Described only on error: checking allocates nothing.
                    let what = match *b {
                        Buf::Arena { offset, len } => {
                            format!("arena[{offset}..{}]", offset.saturating_add(len))
                        }
                        Buf::Input(k) => format!("input {k}"),
                        Buf::Param(k) => format!("parameter {k}"),
                        Buf::Const(k) => format!("constant {k}"),
                        Buf::Output(k) => format!("output {k}"),
                    };
                    return Err(PlanError::TooSmall {
                        step: i,
                        what,
                        have,
                        need,
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// out[i] = in0[i] + in1[i]
    unsafe extern "C" fn add(start: i64, end: i64, inputs: *const *const f32, out: *mut f32) {
        for i in start as usize..end as usize {
            // SAFETY: the executor checked both inputs and the output cover the range.
            unsafe {
                let (a, b) = (*inputs, *inputs.add(1));
                *out.add(i) = *a.add(i) + *b.add(i);
            }
        }
    }

    /// out[i] = 2 * in0[i]
    unsafe extern "C" fn double(start: i64, end: i64, inputs: *const *const f32, out: *mut f32) {
        for i in start as usize..end as usize {
            // SAFETY: as in `add`.
            unsafe { *out.add(i) = 2.0 * *(*inputs).add(i) }
        }
    }

    fn plan(n: usize) -> Plan {
        // t = x + w (arena[0..n]); u = 2t (arena[n..2n]); y = t + u (output 0).
        let t = Buf::Arena { offset: 0, len: n };
        let u = Buf::Arena { offset: n, len: n };
        Plan {
            arena_len: 2 * n,
            prepare: Vec::new(),
            constants: Vec::new(),
            steps: vec![
                Step {
                    work: Work::Kernel {
                        kernel: add,
                        units: n,
                        grain: 16,
                    },
                    inputs: vec![Buf::Input(0), Buf::Param(0)],
                    output: t,
                    extents: vec![n; 3],
                },
                Step {
                    work: Work::Kernel {
                        kernel: double,
                        units: n,
                        grain: 16,
                    },
                    inputs: vec![t],
                    output: u,
                    extents: vec![n; 2],
                },
                Step {
                    work: Work::Kernel {
                        kernel: add,
                        units: n,
                        grain: 16,
                    },
                    inputs: vec![t, u],
                    output: Buf::Output(0),
                    extents: vec![n; 3],
                },
            ],
        }
    }

    #[test]
    fn runs_steps_in_order_on_one_and_two_threads_without_moving_the_arena() {
        for threads in [1, 2] {
            let n = 1001;
            let mut ex = Executor::new(plan(n), threads).unwrap();
            let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
            let w = vec![0.5f32; n];
            let mut y = vec![0.0f32; n];
            let base = ex.arena_ptr();
            for _ in 0..3 {
                ex.run(&[&x], &[&w], &mut [&mut y]).unwrap();
                assert_eq!(ex.arena_ptr(), base);
            }
            for (i, v) in y.iter().enumerate() {
                assert_eq!(*v, 3.0 * (i as f32 + 0.5), "threads {threads}, element {i}");
            }
        }
    }

    /// A profiled run fills one time per step and computes exactly what
    /// `run` computes; too few time slots are refused before anything runs.
    #[test]
    fn profiled_runs_time_every_step_and_equal_plain_runs() {
        for threads in [1, 2] {
            let n = 1001;
            let mut ex = Executor::new(plan(n), threads).unwrap();
            let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.3).sin()).collect();
            let w = vec![0.25f32; n];
            let (mut y, mut z) = (vec![0.0f32; n], vec![0.0f32; n]);
            ex.run(&[&x], &[&w], &mut [&mut y]).unwrap();
            let mut times = vec![Duration::MAX; 3];
            ex.run_profiled(&[&x], &[&w], &mut [&mut z], &mut times)
                .unwrap();
            assert_eq!(y, z, "threads {threads}");
            assert!(times.iter().all(|t| *t != Duration::MAX), "{times:?}");
            let err = ex
                .run_profiled(&[&x], &[&w], &mut [&mut z], &mut times[..2])
                .unwrap_err();
            assert_eq!(err, PlanError::Times { have: 2, need: 3 });
        }
    }

    /// A batch of two 2x3x4 products through a contraction step (A shared,
    /// B per item), on the native GEMM; and a step whose B would reach past
    /// its declared extent is rejected when the executor is built.
    #[test]
    fn contraction_steps_run_items_and_are_validated() {
        let (m, n, k, items) = (2, 3, 4, 2);
        let op = |input, item_stride, strides| Operand {
            input,
            packed: false,
            offset: 0,
            item_stride,
            group_stride: 0,
            strides,
        };
        let step = |b_extent| Step {
            work: Work::Contraction(Box::new(Contraction {
                items,
                groups: 1,
                m,
                n,
                k,
                a: op(0, 0, Strides::row_major(k)),
                b: op(1, k * n, Strides::row_major(n)),
                c_item: m * n,
                c_group: 0,
                ldc: n,
                pack: None,
                epilogue: None,
                unpack: None,
                accumulate: false,
                gemm: Gemm::Native,
                prologue: None,
            })),
            inputs: vec![Buf::Param(0), Buf::Input(0)],
            output: Buf::Output(0),
            extents: vec![m * k, b_extent, items * m * n],
        };
        let plan = |b_extent| Plan {
            arena_len: 0,
            prepare: Vec::new(),
            constants: Vec::new(),
            steps: vec![step(b_extent)],
        };
        let a: Vec<f32> = (0..m * k).map(|v| v as f32 - 3.0).collect();
        let b: Vec<f32> = (0..items * k * n).map(|v| (v % 7) as f32).collect();
        for threads in [1, 2] {
            let mut y = vec![0.0f32; items * m * n];
            Executor::new(plan(items * k * n), threads)
                .unwrap()
                .run(&[&b], &[&a], &mut [&mut y])
                .unwrap();
            for it in 0..items {
                for i in 0..m {
                    for j in 0..n {
                        let want: f32 = (0..k)
                            .map(|p| a[i * k + p] * b[it * k * n + p * n + j])
                            .sum();
                        assert_eq!(y[it * m * n + i * n + j], want);
                    }
                }
            }
        }
        assert!(matches!(
            Executor::new(plan(items * k * n - 1), 1),
            Err(PlanError::Contraction { what: "B", .. })
        ));
    }

    /// Unpack: out[i·units + r] = 2·panel[r] (the panel read relative to
    /// the item, the output written at absolute positions).
    unsafe extern "C" fn twice_out(start: i64, end: i64, inputs: *const *const f32, out: *mut f32) {
        const UNITS: usize = 6;
        for u in start as usize..end as usize {
            // SAFETY: the executor hands over the item's panel as input 0
            // and an output covering every item.
            unsafe { *out.add(u) = 2.0 * *(*inputs).add(u % UNITS) }
        }
    }

    /// An accumulating contraction sums its items' products into one C
    /// (on both thread counts, so parallel items never race); one with an
    /// unpacking kernel writes each item's product into a scratch panel
    /// that the kernel moves into the output.
    #[test]
    fn contractions_accumulate_over_items_and_unpack_through_scratch() {
        let (m, n, k, items) = (2, 3, 4, 5);
        let op = |input, item_stride| Operand {
            input,
            packed: false,
            offset: 0,
            item_stride,
            group_stride: 0,
            strides: Strides::row_major(if input == 0 { k } else { n }),
        };
        let a: Vec<f32> = (0..items * m * k).map(|v| (v % 5) as f32 - 2.0).collect();
        let b: Vec<f32> = (0..items * k * n).map(|v| (v % 7) as f32 - 3.0).collect();
        let product = |it: usize, i: usize, j: usize| -> f32 {
            (0..k)
                .map(|p| a[it * m * k + i * k + p] * b[it * k * n + p * n + j])
                .sum()
        };
        let step = |accumulate: bool, unpack: Option<Unpack>| Step {
            work: Work::Contraction(Box::new(Contraction {
                items,
                groups: 1,
                m,
                n,
                k,
                a: op(0, m * k),
                b: op(1, k * n),
                c_item: if accumulate { 0 } else { m * n },
                c_group: 0,
                ldc: n,
                pack: None,
                epilogue: None,
                unpack,
                accumulate,
                gemm: Gemm::Native,
                prologue: None,
            })),
            inputs: vec![
                Buf::Input(0),
                Buf::Input(1),
                Buf::Arena {
                    offset: 0,
                    len: 2 * m * n,
                },
            ],
            output: Buf::Output(0),
            extents: vec![items * m * k, items * k * n, 2 * m * n, items * m * n],
        };
        let run = |s: Step, threads: usize| {
            let plan = Plan {
                arena_len: 2 * m * n,
                prepare: Vec::new(),
                constants: Vec::new(),
                steps: vec![s],
            };
            let mut y = vec![f32::NAN; items * m * n];
            Executor::new(plan, threads)
                .unwrap()
                .run(&[&a, &b], &[], &mut [&mut y])
                .unwrap();
            y
        };
        let unpack = Unpack {
            kernel: twice_out,
            scratch: 2,
            units: m * n,
            len: m * n,
        };
        for threads in [1, 2] {
            let y = run(step(true, None), threads);
            for i in 0..m {
                for j in 0..n {
                    let want: f32 = (0..items).map(|it| product(it, i, j)).sum();
                    assert_eq!(y[i * n + j], want, "accumulated, {threads} threads");
                }
            }
            let y = run(step(false, Some(unpack)), threads);
            for it in 0..items {
                for i in 0..m {
                    for j in 0..n {
                        let want = 2.0 * product(it, i, j);
                        assert_eq!(
                            y[it * m * n + i * n + j],
                            want,
                            "unpacked, {threads} threads"
                        );
                    }
                }
            }
        }
        let short = Unpack {
            len: m * n - 1,
            ..unpack
        };
        let plan = Plan {
            arena_len: 2 * m * n,
            prepare: Vec::new(),
            constants: Vec::new(),
            steps: vec![step(false, Some(short))],
        };
        assert!(matches!(
            Executor::new(plan, 1),
            Err(PlanError::Contraction { what: "C", .. })
        ));
    }

    #[test]
    fn short_or_missing_buffers_are_errors_before_anything_runs() {
        let mut ex = Executor::new(plan(8), 2).unwrap();
        let mut y = vec![0.0f32; 8];
        let err = ex
            .run(&[&[0.0; 7]], &[&[0.0; 8]], &mut [&mut y])
            .unwrap_err();
        assert_eq!(
            err,
            PlanError::TooSmall {
                step: 0,
                what: "input 0".into(),
                have: 7,
                need: 8
            }
        );
        assert!(y.iter().all(|v| *v == 0.0), "nothing ran");
        let err = ex.run(&[&[0.0; 8]], &[], &mut [&mut y]).unwrap_err();
        assert_eq!(
            err,
            PlanError::Missing {
                step: 0,
                what: "parameter 0".into()
            }
        );
        let mut bad = plan(8);
        bad.steps[1].extents.pop();
        assert!(matches!(
            Executor::new(bad, 1),
            Err(PlanError::Malformed { step: 1, .. })
        ));
    }
}
