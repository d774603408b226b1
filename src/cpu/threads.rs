//! Where an op's parallel loops run: split across the backend's pool, or, for
//! an op too small to repay waking the pool, *inline*: on the calling thread,
//! every loop left whole.
//!
//! Handing an op to a sleeping pool and waiting for it costs a futex round
//! trip to each worker and back (20–40 µs on a 2-core VM), longer than a
//! single core takes for a few hundred thousand multiply-adds. Results do not
//! change: every output element is computed by one task in a fixed order
//! either way.

use std::cell::Cell;

use rayon::iter::{IndexedParallelIterator, MinLen};

/// Ops with fewer multiply-adds than this run inline by default. Measured with
/// `ferroconv bench --batch-mult` on the article's two layers, 2 threads: the
/// pool wins from about 0.5–1 M multiply-adds on.
pub(crate) const INLINE_MACS: u64 = 1 << 19;

thread_local! {
    static INLINE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` on this thread with every [`Tasks::tasks`] loop in it unsplit.
pub(crate) fn inline<R>(f: impl FnOnce() -> R) -> R {
    /// Restores the previous state, also when `f` unwinds.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            INLINE.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(INLINE.with(|c| c.replace(true)));
    f()
}

/// The parallel loops of the CPU kernels: split across the pool as usual, or
/// run whole on the calling thread inside [`inline`] (an unsplit rayon loop
/// never leaves the thread that starts it).
pub(crate) trait Tasks: IndexedParallelIterator {
    fn tasks(self) -> MinLen<Self> {
        self.with_min_len(if INLINE.with(Cell::get) { usize::MAX } else { 1 })
    }
}

impl<I: IndexedParallelIterator> Tasks for I {}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;
    use std::sync::Mutex;

    /// The threads that ran some item of a 64-item loop started on a pool of 4.
    fn threads_of_loop(run_inline: bool) -> (std::thread::ThreadId, Vec<std::thread::ThreadId>) {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap();
        pool.install(|| {
            let seen = Mutex::new(Vec::new());
            let body = || {
                (0..64).into_par_iter().tasks().for_each(|_| {
                    // Long enough per item that an idle worker would steal some.
                    std::thread::sleep(std::time::Duration::from_micros(200));
                    seen.lock().unwrap().push(std::thread::current().id());
                })
            };
            if run_inline {
                inline(body)
            } else {
                body()
            }
            (std::thread::current().id(), seen.into_inner().unwrap())
        })
    }

    #[test]
    fn inline_loops_stay_on_the_calling_thread() {
        let (caller, seen) = threads_of_loop(true);
        assert_eq!(seen.len(), 64);
        assert!(seen.iter().all(|&t| t == caller));
        assert!(!INLINE.with(Cell::get), "inline resets its flag");
    }

    #[test]
    fn other_loops_spread_over_the_pool() {
        let (caller, seen) = threads_of_loop(false);
        assert_eq!(seen.len(), 64);
        assert!(seen.iter().any(|&t| t != caller));
    }
}
