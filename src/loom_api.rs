//! Internals exposed to the loom models in `loom-tests/`, under `--cfg loom` only.
//!
//! **Not part of the public API and outside semver**: this module exists only in builds with
//! `RUSTFLAGS="--cfg loom"`, and may change or disappear in any release. Everything here is a thin
//! handle on the code that ships (the same `Sleep`, latches, registry and worker loop), so the
//! models explore the real protocols rather than copies of them. See `docs/verification.md`.

use crate::pool::loom_access::{
    take_injected, LatencyHistogram, Sleep, Woken, WorkerCounters, WorkerThread,
};
use crate::sync::deque::{Injector, Steal, Worker};
use crate::sync::Ordering;
use crate::ThreadPool;
use std::time::Instant;

/// The broken variant this process runs (`PARJOB_MUTANT`, in a `--cfg parjob_mutants` build), if
/// any.
pub fn mutant() -> Option<&'static str> {
    crate::sync::mutant::selected_name()
}

/// Whether this build compiles the mutants' sites (`--cfg parjob_mutants`); without it,
/// `PARJOB_MUTANT` has no effect.
pub fn mutants_compiled() -> bool {
    crate::sync::mutant::COMPILED
}

/// A pool's sleep state and injector, without worker threads: the model's own threads play the
/// workers and the publisher, calling the real [`Sleep`] methods in the order the worker loop does.
pub struct SleepModel {
    sleep: Sleep,
    injector: Injector<u32>,
    /// The own deque of the worker that takes injected batches (`take_batch`).
    batch_owner: Worker<u32>,
    counters: WorkerCounters,
    wake_latency: LatencyHistogram,
}

impl SleepModel {
    /// Sleep state for `num_workers` workers, at most `max_searchers` searching at once.
    pub fn new(num_workers: usize, max_searchers: usize) -> Self {
        SleepModel {
            sleep: Sleep::new(num_workers, max_searchers, Instant::now()),
            injector: Injector::new(),
            batch_owner: Worker::new_lifo(),
            counters: WorkerCounters::default(),
            wake_latency: LatencyHistogram::new(),
        }
    }

    /// Worker `index` registers its thread for unparking (as `main_loop` does at start).
    pub fn register_current_thread(&self, index: usize) {
        self.sleep.register_current_thread(index);
    }

    /// A publisher: push `job`, then the wake-up check (`Registry::inject`).
    pub fn inject(&self, job: u32) {
        self.injector.push(job);
        self.sleep.new_work(&self.counters);
    }

    /// A worker's `find_work` on the injector.
    pub fn take(&self) -> Option<u32> {
        loop {
            match self.injector.steal() {
                Steal::Success(job) => return Some(job),
                Steal::Empty => return None,
                Steal::Retry => continue,
            }
        }
    }

    /// A busy worker's `find_work` on the injector (`worker::take_injected`): one job back, a
    /// batch moved into its own deque, and the move announced.
    pub fn take_batch(&self) -> Option<u32> {
        take_injected(
            &self.injector,
            &self.batch_owner,
            &self.sleep,
            &self.counters,
        )
    }

    /// A thief's steal from the deque that `take_batch` fills.
    pub fn steal_from_batch_owner(&self) -> Option<u32> {
        self.batch_owner.stealer().steal().success()
    }

    /// `Sleep::start_searching`.
    pub fn start_searching(&self) -> bool {
        self.sleep.start_searching()
    }

    /// `Sleep::stop_searching_found_work` (the hand-off).
    pub fn stop_searching_found_work(&self) {
        self.sleep.stop_searching_found_work(&self.counters)
    }

    /// `Sleep::stop_searching_idle`.
    pub fn stop_searching_idle(&self) {
        self.sleep.stop_searching_idle()
    }

    /// `Sleep::sleep` for worker `index`, with the worker loop's re-check (is any queue non-empty?)
    /// and wake condition `keep_sleeping`. Returns `true` if a waker claimed the worker as a
    /// searcher (it must then `stop_searching_*` eventually).
    pub fn sleep(&self, index: usize, keep_sleeping: impl Fn() -> bool) -> bool {
        let woken = self.sleep.sleep(
            index,
            &self.counters,
            &self.wake_latency,
            || !self.injector.is_empty() || !self.batch_owner.is_empty(),
            keep_sleeping,
        );
        woken == Woken::AsSearcher
    }

    /// `Sleep::wake_all` (shutdown).
    pub fn wake_all(&self) {
        self.sleep.wake_all()
    }
}

/// `ThreadPool::spawn_detached`: queue a `'static` job without waiting (from a worker of the pool,
/// onto its deque; from anywhere else, into the injector). The job must not panic.
pub fn spawn_detached<F: FnOnce() + Send + 'static>(pool: &ThreadPool, job: F) {
    pool.spawn_detached(job)
}

/// The pool the current thread works for, as a handle that does not shut it down when dropped.
pub fn current_pool() -> Option<ThreadPool> {
    ThreadPool::current()
}

/// Is worker `index`'s hunger flag set (a thief asked it to publish a private fork)?
pub fn is_hungry(pool: &ThreadPool, index: usize) -> bool {
    pool.registry().fork_requests[index]
        .hungry
        .load(Ordering::Relaxed)
}

/// Index of the current worker, if the current thread is one.
pub fn current_worker() -> Option<usize> {
    WorkerThread::current().map(|w| w.index())
}

/// The `Parallel` cancellation tracker (`src/parallel/cancel.rs`): runners `begin` before touching
/// a call's tasks and `finish` after; the dispatcher `close`s it and waits until it is quiescent.
pub struct CancelTracker(crate::parallel::cancel::Tracker);

impl CancelTracker {
    /// A fresh, open tracker.
    pub fn new() -> Self {
        CancelTracker(crate::parallel::cancel::Tracker::new())
    }
    /// A runner asks to start a task; `false` once the tracker is closed.
    pub fn begin(&self) -> bool {
        self.0.begin()
    }
    /// The runner is done with the call's data.
    pub fn finish(&self) {
        self.0.finish()
    }
    /// Cancel: no `begin` succeeds after this is observed.
    pub fn close(&self) {
        self.0.close()
    }
    /// Closed, and no runner active.
    pub fn is_quiescent(&self) -> bool {
        self.0.is_quiescent()
    }
}

impl Default for CancelTracker {
    fn default() -> Self {
        Self::new()
    }
}

/// The re-armable wake-up `Signal` (`src/pool/signal.rs`) with an outside-thread waiter: the
/// waiter calls `wait_while(condition)`; producers change the state the condition reads, then
/// `notify`.
#[derive(Clone)]
pub struct SignalModel(crate::sync::Arc<crate::pool::Signal>);

impl SignalModel {
    /// A signal whose waiter is the current thread.
    pub fn for_current_thread() -> Self {
        SignalModel(crate::sync::Arc::new(
            crate::pool::Signal::for_current_thread(),
        ))
    }
    /// Wakes the waiter if it waits (call after changing the state).
    pub fn notify(&self) {
        self.0.notify()
    }
    /// Blocks while `condition()` is true (only on the thread that made the signal).
    pub fn wait_while(&self, condition: impl Fn() -> bool) {
        self.0.wait_while(condition)
    }
}
