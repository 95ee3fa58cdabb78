//! Work in ordered phases shared by the threads of the pool a kernel runs
//! on: phase `p + 1` starts only when every part of phase `p` is done.
//! A recurrence split by hidden units uses it with one phase per time step
//! (each step reads the whole `h` of the previous one).
//!
//! Parts are claimed in order from one counter and a claimer waits only
//! for the parts of earlier phases, which were all claimed before its own
//! by threads that are running them; so a run finishes however many of
//! the pool's threads join, also when none but the caller does.

use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Spins before a waiting thread starts yielding its CPU.
const SPINS: u32 = 1 << 12;

/// The threads a kernel called on the current thread can split over: the
/// size of the rayon pool it runs on, 1 outside any pool (a plan running
/// on the calling thread).
pub(super) fn pool_threads() -> usize {
    if rayon::current_thread_index().is_some() {
        rayon::current_num_threads()
    } else {
        1
    }
}

/// Runs `f(phase, part)` for every `phase < phases` and `part < parts`,
/// on up to `parts` threads of the current pool (on the calling thread
/// alone when `parts` is 1); every part of a phase sees everything the
/// parts of earlier phases wrote.
pub(super) fn run(phases: usize, parts: usize, f: impl Fn(usize, usize) + Sync) {
    let parts = parts.max(1);
    if parts == 1 {
        for p in 0..phases {
            f(p, 0);
        }
        return;
    }
    let units = phases * parts;
    let (next, done) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let worker = || loop {
        let u = next.fetch_add(1, Ordering::Relaxed);
        if u >= units {
            return;
        }
        let need = u / parts * parts;
        let mut spins = 0u32;
        while done.load(Ordering::Acquire) < need {
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        f(u / parts, u % parts);
        done.fetch_add(1, Ordering::Release);
    };
    (0..parts).into_par_iter().for_each(|_| worker());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Every (phase, part) runs once, and no part of a phase starts before
    /// all parts of the phase before it ended, on 1 to 3 threads, inside a
    /// pool and outside any.
    #[test]
    fn phases_run_every_part_once_in_order() {
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for parts in [1, 2, 3, 5] {
                let log = Mutex::new(Vec::new());
                let f = |phase: usize, part: usize| {
                    log.lock().unwrap().push((phase, part, 'b'));
                    std::thread::yield_now();
                    log.lock().unwrap().push((phase, part, 'e'));
                };
                pool.install(|| run(7, parts, f));
                let log = log.into_inner().unwrap();
                assert_eq!(log.len(), 7 * parts * 2);
                for (at, &(phase, part, what)) in log.iter().enumerate() {
                    if what == 'b' {
                        let ended = log[..at]
                            .iter()
                            .filter(|&&(p, _, w)| p + 1 == phase && w == 'e')
                            .count();
                        assert!(
                            phase == 0 || ended == parts,
                            "threads {threads} parts {parts}: ({phase}, {part}) began early"
                        );
                    }
                }
                let mut seen: Vec<_> = log.iter().filter(|e| e.2 == 'e').collect();
                seen.sort();
                seen.dedup();
                assert_eq!(seen.len(), 7 * parts);
            }
        }
        let count = AtomicUsize::new(0);
        run(4, 2, |_, _| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 8);
    }
}
