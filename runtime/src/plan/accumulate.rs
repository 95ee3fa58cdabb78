//! Accumulating contractions (a weight gradient summed over a batch)
//! split over the threads by items.
//!
//! Run one item at a time, every item's GEMM is split over the threads and
//! adds into the one C: for small maps (a 9×9 image gives a K of 81) each
//! GEMM is too small to split well and C goes through memory once per
//! item. Here task `t` of `T` instead sums its own contiguous range of
//! items with one-thread GEMMs into its own C: task 0 into the output,
//! task `t > 0` into partial `t − 1` (buffers the executor allocates once,
//! [`partial_len`] elements each), and the partials are then added into
//! the output, rows split over the threads. The sum is the same, only
//! grouped differently.

use super::{Contracting, Contraction, Operand};
use rayon::prelude::*;

/// The elements of one partial C of `c`: from the first element of group
/// 0 to the last of the last group (gaps between rows included), or 0 when
/// `c` does not run split ([`splits`]).
pub(super) fn partial_len(c: &Contraction) -> usize {
    if !splits(c) || c.m == 0 || c.n == 0 {
        return 0;
    }
    (c.groups.max(1) - 1) * c.c_group + (c.m - 1) * c.ldc + c.n
}

/// Whether `c` can run split by items: an accumulating contraction whose
/// items write one C directly (no per-item epilogue or unpacking).
pub(super) fn splits(c: &Contraction) -> bool {
    c.accumulate && c.c_item == 0 && c.epilogue.is_none() && c.unpack.is_none()
}

impl Contracting<'_> {
    /// Runs the items in `tasks` contiguous ranges, one per pool thread,
    /// then adds the partials into the output.
    ///
    /// # Safety
    /// As [`Contracting::run`]; besides, `splits(c)`, the packing scratch
    /// holds `tasks` panels, `work` has an entry per task (tile GEMMs) and
    /// `partials` holds `(tasks − 1)·partial_len(c)` elements.
    pub(super) unsafe fn run_split(self, pool: &rayon::ThreadPool, tasks: usize) {
        let c = self.c;
        let len = partial_len(c);
        pool.install(|| {
            (0..tasks).into_par_iter().for_each(|t| {
                let dst = if t == 0 {
                    self.out
                } else {
                    // SAFETY: partial t − 1 lies inside `partials`.
                    unsafe { self.partials.add((t - 1) * len) }
                };
                let items = c.items * t / tasks..c.items * (t + 1) / tasks;
                for (i, item) in items.enumerate() {
                    let beta = if i == 0 { 0.0 } else { 1.0 };
                    // SAFETY: task t owns scratch slice t, work[t] and `dst`.
                    unsafe { self.split_item(item, t, dst, beta) };
                }
            });
            self.reduce(tasks, len);
        });
    }

    /// One item on the calling thread: pack into scratch slice `slice`,
    /// then every group's GEMM `C = A·B + beta·C` into `dst`.
    unsafe fn split_item(self, item: usize, slice: usize, dst: *mut f32, beta: f32) {
        let c = self.c;
        // SAFETY: the scratch holds a panel per task.
        let panel = unsafe { self.pack(item, slice, None) };
        let at = |o: &Operand, g: usize| self.operand(o, item, panel, g);
        for g in 0..c.groups {
            // SAFETY: `dst` spans the C of every group; operands validated.
            unsafe {
                self.gemm(
                    at(&c.a, g),
                    at(&c.b, g),
                    beta,
                    dst.add(g * c.c_group),
                    slice,
                    None,
                    // Partials take no epilogue: nothing to run per block.
                    &|_| {},
                )
            };
        }
    }

    /// Adds partials `0..tasks − 1` (each `len` elements) into the output,
    /// every row of every group once, rows split over the pool's threads.
    fn reduce(self, tasks: usize, len: usize) {
        let c = self.c;
        let rows = c.groups * c.m;
        if tasks < 2 || rows == 0 {
            return;
        }
        let (out, partials) = (self.out as usize, self.partials as usize);
        let pieces = rayon::current_num_threads().min(rows);
        (0..pieces).into_par_iter().for_each(|p| {
            for row in rows * p / pieces..rows * (p + 1) / pieces {
                let at = (row / c.m) * c.c_group + (row % c.m) * c.ldc;
                // SAFETY: row `row` of the output and of every partial lies
                // inside them (`partial_len`); pieces cover disjoint rows.
                let dst = unsafe { std::slice::from_raw_parts_mut((out as *mut f32).add(at), c.n) };
                for t in 0..tasks - 1 {
                    // SAFETY: as above, read only.
                    let src = unsafe {
                        std::slice::from_raw_parts((partials as *const f32).add(t * len + at), c.n)
                    };
                    for (d, s) in dst.iter_mut().zip(src) {
                        *d += s;
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Buf, Executor, Pack, Plan, Step, Work};
    use super::*;
    use crate::gemm::packed::Prepacked;
    use crate::gemm::{sgemm_naive, Gemm, Strides};

    const K: usize = 7;
    const N: usize = 5;

    /// `items` × `groups` products `C_g += A_{i,g}·(2·B_{i,g})` (B through
    /// the packing kernel) summed into one C with gaps between its rows and
    /// groups, on `threads`, against the f64 reference summed over items.
    fn check(items: usize, threads: usize, gemm: Gemm) {
        let (m, groups, ldc) = (3, 2, N + 2);
        let c_group = m * ldc + 1;
        let a: Vec<f32> = (0..items * groups * m * K)
            .map(|v| ((v * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        // One panel per item holds both groups' B (group g at g·K·N).
        let b: Vec<f32> = (0..items * groups * K * N)
            .map(|v| ((v * 53 % 19) as f32 - 9.0) / 5.0)
            .collect();
        let panel = groups * K * N;
        let c_len = groups * c_group;
        let step = Step {
            work: Work::Contraction(Box::new(Contraction {
                items,
                groups,
                m,
                n: N,
                k: K,
                a: Operand {
                    input: 0,
                    packed: false,
                    offset: 0,
                    item_stride: groups * m * K,
                    group_stride: m * K,
                    strides: Strides::row_major(K),
                },
                b: Operand {
                    input: 2,
                    packed: true,
                    offset: 0,
                    item_stride: 0,
                    group_stride: K * N,
                    strides: Strides::row_major(N),
                },
                c_item: 0,
                c_group,
                ldc,
                pack: Some(Pack {
                    kernel: double_panel_groups,
                    input: 1,
                    scratch: 2,
                    units: panel,
                    len: panel,
                }),
                epilogue: None,
                unpack: None,
                accumulate: true,
                gemm,
                prologue: None,
            })),
            inputs: vec![
                Buf::Input(0),
                Buf::Input(1),
                Buf::Arena {
                    offset: 0,
                    len: threads * panel,
                },
            ],
            output: Buf::Output(0),
            extents: vec![a.len(), b.len(), threads * panel, c_len],
        };
        let plan = Plan {
            arena_len: threads * panel,
            prepare: Vec::new(),
            constants: Vec::new(),
            steps: vec![step],
        };
        // The gaps must survive: NaN there would also poison a sum.
        let mut y = vec![f32::NAN; c_len];
        let mut ex = Executor::new(plan, threads).unwrap();
        for _ in 0..2 {
            ex.run(&[&a, &b], &[], &mut [&mut y]).unwrap();
        }
        let b2: Vec<f32> = b.iter().map(|v| 2.0 * v).collect();
        for g in 0..groups {
            let mut want = vec![0.0f32; m * N];
            let mut sum = vec![0.0f64; m * N];
            for it in 0..items {
                let a0 = (it * groups + g) * m * K;
                let b0 = it * panel + g * K * N;
                sgemm_naive(
                    m,
                    N,
                    K,
                    1.0,
                    &a[a0..],
                    Strides::row_major(K),
                    &b2[b0..],
                    Strides::row_major(N),
                    0.0,
                    &mut want,
                    N,
                );
                for (s, w) in sum.iter_mut().zip(&want) {
                    *s += *w as f64;
                }
            }
            for i in 0..m {
                for j in 0..N {
                    let (got, want) = (y[g * c_group + i * ldc + j], sum[i * N + j]);
                    assert!(
                        (got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{gemm:?}, {items} items, {threads} threads: C_{g}[{i},{j}] = {got}, want {want}"
                    );
                }
                for j in N..ldc {
                    if g * c_group + i * ldc + j < c_len {
                        assert!(y[g * c_group + i * ldc + j].is_nan(), "gap written");
                    }
                }
            }
        }
    }

    /// The packing kernel for two groups: one item's panel holds both
    /// groups' B, `2·K·N` elements.
    unsafe extern "C" fn double_panel_groups(
        start: i64,
        end: i64,
        inputs: *const *const f32,
        out: *mut f32,
    ) {
        const LEN: usize = 2 * K * N;
        for u in start as usize..end as usize {
            // SAFETY: input 0 covers every item's panel; `out` one panel.
            unsafe { *out.add(u % LEN) = 2.0 * *(*inputs).add(u) };
        }
    }

    #[test]
    fn split_accumulation_matches_the_reference_summed_over_items() {
        for gemm in [Gemm::Native, Gemm::Packed(Prepacked::Neither)] {
            for threads in [1, 2, 3] {
                for items in [1, 2, 3, 5, 8] {
                    check(items, threads, gemm);
                }
            }
        }
    }
}
