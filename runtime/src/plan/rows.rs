//! Row steps: plan steps computed by runtime (Rust) code over whole
//! buffers, for work whose extent depends on the data. A sparse bag input
//! holds as many entries as its texts have trigrams, known only when the
//! step runs, so its kernel must see each input's actual length (a
//! generated kernel sees base pointers only) and can refuse malformed data
//! with an error instead of reading out of bounds.
//!
//! A [`RowKernel`] computes rows of the step's output, each `width`
//! elements; the executor splits `[0, rows)` into one contiguous piece per
//! thread (pieces of at least `grain` rows) and hands every piece its own
//! part of the output, so kernels are safe code over slices.

use rayon::prelude::*;
use std::fmt::Debug;
use std::sync::Arc;

/// The most input buffers a row step may read (the executor passes them
/// in a fixed array, so a run allocates nothing).
pub const MAX_ROW_INPUTS: usize = 8;

/// Runtime code computing rows of a step's output from its input buffers.
pub trait RowKernel: Send + Sync + Debug {
    /// Computes output rows `first..first + out.len() / width` into `out`
    /// (`width` is the step's [`Rows::width`]). `inputs` are the step's
    /// input buffers whole: at least their declared extents, possibly
    /// longer (a data-dependent input is as long as the caller's buffer).
    /// Returns why the inputs are malformed, if they are.
    fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String>;

    /// Threads one call keeps busy by itself (it splits its work over the
    /// pool it runs on); a step with such a kernel is never too small for
    /// the pool ([`super::Work::is_small`]).
    fn threads(&self) -> usize {
        1
    }
}

/// A step computed by a [`RowKernel`]: `rows` output rows of `width`
/// elements, split over threads in pieces of at least `grain` rows.
#[derive(Clone, Debug)]
pub struct Rows {
    /// The kernel.
    pub kernel: Arc<dyn RowKernel>,
    /// Output rows.
    pub rows: usize,
    /// Elements per output row.
    pub width: usize,
    /// The fewest rows worth giving one thread.
    pub grain: usize,
}

impl Rows {
    /// Runs the kernel over all rows into `out` (at least `rows · width`
    /// elements), splitting them over the pool the caller runs on.
    pub(super) fn run(
        &self,
        threads: usize,
        inputs: &[&[f32]],
        out: &mut [f32],
    ) -> Result<(), String> {
        let total = self.rows * self.width;
        let out = &mut out[..total];
        let tasks = (self.rows / self.grain.max(1)).clamp(1, threads.max(1));
        let per = self.rows.div_ceil(tasks);
        if tasks == 1 || per * self.width == 0 {
            return self.kernel.rows(0, inputs, out);
        }
        out.par_chunks_mut(per * self.width)
            .enumerate()
            .try_for_each(|(t, part)| self.kernel.rows(t * per, inputs, part))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Buf, Executor, Plan, PlanError, Step, Work};
    use super::*;

    /// Row `r` of the output = `r ·` row `r` of input 0; refuses an input
    /// shorter than the rows it is asked for.
    #[derive(Debug)]
    struct ScaleByRow {
        width: usize,
    }

    impl RowKernel for ScaleByRow {
        fn rows(&self, first: usize, inputs: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
            let x = inputs[0];
            for (k, row) in out.chunks_exact_mut(self.width).enumerate() {
                let r = first + k;
                let src = x
                    .get(r * self.width..(r + 1) * self.width)
                    .ok_or_else(|| format!("row {r} is past the input"))?;
                for (o, &v) in row.iter_mut().zip(src) {
                    *o = r as f32 * v;
                }
            }
            Ok(())
        }
    }

    fn plan(rows: usize, width: usize, input: Buf, output: Buf, extent: usize) -> Plan {
        Plan {
            arena_len: 2 * rows * width,
            prepare: Vec::new(),
            constants: Vec::new(),
            steps: vec![Step {
                work: Work::Rows(Rows {
                    kernel: Arc::new(ScaleByRow { width }),
                    rows,
                    width,
                    grain: 3,
                }),
                inputs: vec![input],
                output,
                extents: vec![extent, rows * width],
            }],
        }
    }

    /// Rows split over 2 threads land at their own positions; an input
    /// longer than its extent is passed whole (the kernel reads what it
    /// needs); a kernel's refusal is an error naming the step.
    #[test]
    fn row_steps_split_rows_and_report_kernel_errors() {
        let (rows, width) = (11, 3);
        let x: Vec<f32> = (0..rows * width + 5).map(|v| v as f32).collect();
        for threads in [1, 2] {
            let p = plan(rows, width, Buf::Input(0), Buf::Output(0), 0);
            let mut ex = Executor::new(p, threads).unwrap();
            let mut y = vec![f32::NAN; rows * width];
            ex.run(&[&x], &[], &mut [&mut y]).unwrap();
            for (i, v) in y.iter().enumerate() {
                assert_eq!(*v, (i / width) as f32 * x[i], "threads {threads}");
            }
            let err = ex.run(&[&x[..20]], &[], &mut [&mut y]).unwrap_err();
            assert!(
                matches!(&err, PlanError::Rows { step: 0, reason } if reason.contains("past the input")),
                "{err}"
            );
        }
    }

    /// Writes, for each of its rows, whether it ran on a pool thread (1) or
    /// on a thread outside any pool (0).
    #[derive(Debug)]
    struct WhereRun;

    impl RowKernel for WhereRun {
        fn rows(&self, _: usize, _: &[&[f32]], out: &mut [f32]) -> Result<(), String> {
            let on_pool = rayon::current_thread_index().is_some();
            out.fill(if on_pool { 1.0 } else { 0.0 });
            Ok(())
        }
    }

    /// `inline_when_small` runs a plan of small steps on the calling thread
    /// (a test thread, outside any pool) and leaves a plan with a step
    /// worth splitting, and a plain executor, on the pool.
    #[test]
    fn small_plans_run_on_the_calling_thread_when_asked() {
        let step = |rows: usize| Plan {
            arena_len: 0,
            prepare: Vec::new(),
            constants: Vec::new(),
            steps: vec![Step {
                work: Work::Rows(Rows {
                    kernel: Arc::new(WhereRun),
                    rows,
                    width: 1,
                    grain: 4,
                }),
                inputs: Vec::new(),
                output: Buf::Output(0),
                extents: vec![rows],
            }],
        };
        let on_pool = |ex: &mut Executor, rows: usize| {
            let mut y = vec![f32::NAN; rows];
            ex.run(&[], &[], &mut [&mut y]).unwrap();
            assert!(y.iter().all(|&v| v == y[0]), "{y:?}");
            y[0] == 1.0
        };
        let mut small = Executor::new(step(7), 2).unwrap().inline_when_small();
        assert!(!on_pool(&mut small, 7));
        let mut plain = Executor::new(step(7), 2).unwrap();
        assert!(on_pool(&mut plain, 7));
        let mut big = Executor::new(step(8), 2).unwrap().inline_when_small();
        assert!(on_pool(&mut big, 8));
    }

    /// A row step whose arena input overlaps its output, or whose output
    /// extent cannot hold its rows, is refused when the executor is built.
    #[test]
    fn malformed_row_steps_are_refused() {
        let arena = |offset, len| Buf::Arena { offset, len };
        let p = plan(4, 2, arena(0, 8), arena(6, 8), 8);
        let err = Executor::new(p, 1).err().unwrap().to_string();
        assert!(err.contains("shares storage with the output"), "{err}");
        let mut p = plan(4, 2, arena(0, 8), arena(8, 8), 8);
        p.steps[0].extents[1] = 7;
        let err = Executor::new(p, 1).err().unwrap().to_string();
        assert!(
            err.contains("the output extent is 7, the rows need 8"),
            "{err}"
        );
        assert!(Executor::new(plan(4, 2, arena(0, 8), arena(8, 8), 8), 1).is_ok());
    }
}
