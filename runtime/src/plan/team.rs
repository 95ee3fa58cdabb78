//! A team of spinning helper threads for the small steps of a plan that
//! otherwise runs on the calling thread ([`super::Executor::with_team`]).
//!
//! Handing a step to the rayon pool wakes a sleeping worker, several
//! microseconds on every call (`bench/empty.net`), which is more than a
//! batch-1 `linear` of a small model takes. A team's helpers instead spin
//! on a flag for [`SPIN_FOR`] after their last job, so a job posted while
//! they spin starts within a cache-line transfer; only after that idle
//! time do they park (and the next job pays one wake-up). The calling
//! thread always runs part 0 and helper `t` part `t`, so a product split
//! the same way on every call keeps each part's weights in the L2 cache
//! of the core that reads them. A part whose helper has not started it
//! when the calling thread is done with its own (the helper is parked or
//! descheduled on a busy machine) is taken back and run by the calling
//! thread, so a call never waits for a helper to be scheduled.

use std::cell::{Cell, UnsafeCell};
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a helper spins for a job after its last one before it parks.
pub const SPIN_FOR: Duration = Duration::from_micros(200);

/// Spins between two looks at the clock (helper) or before the calling
/// thread starts yielding its core while it waits for a helper.
const SPINS: u32 = 1 << 10;

/// A job: part `t` of the work, for `t` in `0..parts`.
type Job = *const (dyn Fn(usize) + Sync);

/// No job is posted (the helper spins or sleeps).
const IDLE: u8 = 0;
/// A job is posted and nobody has started it.
const POSTED: u8 = 1;
/// The helper runs the posted job.
const RUNNING: u8 = 2;
/// The helper has finished the posted job.
const DONE: u8 = 3;
/// The helper is to exit.
const QUIT: u8 = 4;

/// One helper's mailbox.
struct Slot {
    state: AtomicU8,
    /// Set while the helper is parked or about to park.
    sleeping: AtomicBool,
    /// Set when the helper's part of a job panicked.
    panicked: AtomicBool,
    /// The posted job (written by the calling thread before `POSTED`,
    /// read by the helper after it sees `POSTED`).
    job: UnsafeCell<Option<Job>>,
}

// SAFETY: `job` is written only while the slot is IDLE or DONE (the
// helper does not read it then) and read only while POSTED (the caller
// does not write it then); the state's release/acquire orders the two.
unsafe impl Sync for Slot {}
// SAFETY: as above; the job pointer is only dereferenced while the
// caller keeps the closure alive (`Team::run` waits for DONE).
unsafe impl Send for Slot {}

/// The helper threads of one executor (see the module docs).
pub struct Team {
    helpers: Vec<(Arc<Slot>, JoinHandle<()>)>,
    /// `run` must not be entered from two threads at once.
    _not_sync: PhantomData<Cell<()>>,
}

impl Team {
    /// A team of `parts` parts: the calling thread and `parts − 1`
    /// spinning helpers. `None` if a thread cannot be started.
    pub fn new(parts: usize) -> Option<Team> {
        let mut helpers = Vec::new();
        for t in 1..parts.max(1) {
            let slot = Arc::new(Slot {
                state: AtomicU8::new(IDLE),
                sleeping: AtomicBool::new(false),
                panicked: AtomicBool::new(false),
                job: UnsafeCell::new(None),
            });
            let mine = Arc::clone(&slot);
            let handle = std::thread::Builder::new()
                .name(format!("netc-team-{t}"))
                .spawn(move || helper(&mine, t))
                .ok()?;
            helpers.push((slot, handle));
        }
        Some(Team {
            helpers,
            _not_sync: PhantomData,
        })
    }

    /// Parts a job is split into (helpers + the calling thread).
    pub fn parts(&self) -> usize {
        self.helpers.len() + 1
    }

    /// Runs `f(t)` for every part `t`: part 0 on the calling thread, part
    /// `t` on helper `t` (or on the calling thread, after part 0, if the
    /// helper has not started it by then); returns when all have
    /// returned. A panic in any part is raised here after every part has
    /// finished.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        // SAFETY: only the lifetime is erased; every helper is done with
        // the pointer before `run` returns or unwinds (`Wait`).
        let job: Job = unsafe {
            std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), Job>(
                f as *const (dyn Fn(usize) + Sync),
            )
        };
        for (slot, handle) in &self.helpers {
            // SAFETY: the slot is IDLE (the previous run waited for DONE
            // and reset it), so the helper does not read `job`.
            unsafe { *slot.job.get() = Some(job) };
            slot.state.store(POSTED, Ordering::SeqCst);
            if slot.sleeping.load(Ordering::SeqCst) {
                handle.thread().unpark();
            }
        }
        let wait = Wait(self);
        f(0);
        for (t, (slot, _)) in self.helpers.iter().enumerate() {
            let unstarted =
                slot.state
                    .compare_exchange(POSTED, IDLE, Ordering::AcqRel, Ordering::Acquire);
            if unstarted.is_ok() {
                f(t + 1);
            }
        }
        drop(wait);
        if self
            .helpers
            .iter()
            .any(|(s, _)| s.panicked.swap(false, Ordering::Relaxed))
        {
            panic!("a team helper's part of a step panicked");
        }
    }
}

/// When dropped (also while a part on the calling thread unwinds),
/// withdraws every part no helper has started and waits for those that
/// have, so no helper outlives the job it reads; every slot is then IDLE.
struct Wait<'a>(&'a Team);

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        for (slot, _) in &self.0.helpers {
            let mut spins = 0u32;
            loop {
                match slot.state.load(Ordering::Acquire) {
                    IDLE => break,
                    POSTED => {
                        let withdrawn = slot.state.compare_exchange(
                            POSTED,
                            IDLE,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        );
                        if withdrawn.is_ok() {
                            break;
                        }
                    }
                    DONE => {
                        slot.state.store(IDLE, Ordering::Relaxed);
                        break;
                    }
                    _ if spins < SPINS => {
                        spins += 1;
                        std::hint::spin_loop();
                    }
                    // The helper runs but was descheduled: give it the core.
                    _ => std::thread::yield_now(),
                }
            }
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        for (slot, handle) in &self.helpers {
            slot.state.store(QUIT, Ordering::SeqCst);
            handle.thread().unpark();
        }
        for (_, handle) in self.helpers.drain(..) {
            let _ = handle.join();
        }
    }
}

/// A helper's loop: spin for a job, park after [`SPIN_FOR`] without one,
/// run part `t` of each job posted.
fn helper(slot: &Slot, t: usize) {
    loop {
        let mut idle_since = Instant::now();
        let mut spins = 0u32;
        let state = loop {
            let s = slot.state.load(Ordering::Acquire);
            if s == QUIT {
                break s;
            }
            if s == POSTED {
                // The calling thread may have taken the part back.
                let claimed = slot.state.compare_exchange(
                    POSTED,
                    RUNNING,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                if claimed.is_ok() {
                    break RUNNING;
                }
                continue;
            }
            spins += 1;
            if spins < SPINS {
                std::hint::spin_loop();
                continue;
            }
            spins = 0;
            if idle_since.elapsed() < SPIN_FOR {
                continue;
            }
            slot.sleeping.store(true, Ordering::SeqCst);
            let s = slot.state.load(Ordering::SeqCst);
            if s != POSTED && s != QUIT {
                // A post after the store above sees `sleeping` and
                // unparks (an unpark before the park is not lost).
                std::thread::park();
            }
            slot.sleeping.store(false, Ordering::SeqCst);
            idle_since = Instant::now();
        };
        if state == QUIT {
            return;
        }
        // SAFETY: claimed: the caller wrote the job before posting and
        // keeps the closure alive until this slot says DONE.
        let job = unsafe { *slot.job.get() };
        if let Some(job) = job {
            // SAFETY: as above.
            let r = catch_unwind(AssertUnwindSafe(|| unsafe { (*job)(t) }));
            if r.is_err() {
                slot.panicked.store(true, Ordering::Relaxed);
            }
        }
        slot.state.store(DONE, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Every part runs exactly once per job (part 0 on the caller, the
    /// others on their helper or taken back by the caller), across many
    /// jobs back to back and after the helpers have parked; results
    /// written by helpers are visible after `run`, and helpers do run
    /// parts.
    #[test]
    fn every_part_runs_once_per_job() {
        for parts in [1, 2, 3] {
            let team = Team::new(parts).unwrap();
            assert_eq!(team.parts(), parts);
            let me = std::thread::current().id();
            let on_helpers = AtomicUsize::new(0);
            for round in 0..2000 {
                if round % 500 == 499 {
                    std::thread::sleep(SPIN_FOR * 5);
                }
                let hits: Vec<AtomicUsize> = (0..parts).map(|_| AtomicUsize::new(0)).collect();
                let mut plain = vec![0usize; parts];
                let cells = plain.as_mut_ptr() as usize;
                team.run(&|t| {
                    hits[t].fetch_add(1, Ordering::Relaxed);
                    if t == 0 {
                        // Give the helpers up to 200 µs to start theirs
                        // (else the caller takes them back at once).
                        let t0 = Instant::now();
                        while hits[1..].iter().any(|h| h.load(Ordering::Relaxed) == 0)
                            && t0.elapsed() < Duration::from_micros(200)
                        {
                            std::hint::spin_loop();
                        }
                    }
                    let here = std::thread::current().id() == me;
                    assert!(here || t > 0, "part 0 off the calling thread");
                    if !here {
                        on_helpers.fetch_add(1, Ordering::Relaxed);
                    }
                    // SAFETY: each part writes its own element.
                    unsafe { *(cells as *mut usize).add(t) = round + t };
                });
                for (t, h) in hits.iter().enumerate() {
                    assert_eq!(h.load(Ordering::Relaxed), 1, "part {t} of {parts}");
                    assert_eq!(plain[t], round + t, "part {t} of {parts}");
                }
            }
            assert_eq!(on_helpers.load(Ordering::Relaxed) > 0, parts > 1);
        }
    }

    /// A panic in a part (on a helper or taken back) reaches the caller,
    /// and the team still runs the next job whole.
    #[test]
    fn a_panic_in_a_part_is_raised_by_run() {
        let team = Team::new(2).unwrap();
        for _ in 0..50 {
            let r = catch_unwind(AssertUnwindSafe(|| {
                team.run(&|t| assert!(t == 0, "part {t} fails"))
            }));
            assert!(r.is_err());
            let n = AtomicUsize::new(0);
            team.run(&|_| {
                n.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(n.load(Ordering::Relaxed), 2);
        }
    }
}
