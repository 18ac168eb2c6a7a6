//! `Signal`: a re-armable wake-up for code that waits on a changing condition (the `Parallel`
//! dispatcher waiting for "a batch finished"), from any thread.
//!
//! The waiter calls [`Signal::wait_while`] with its condition; producers change the state the
//! condition reads and then call [`Signal::notify`]. On a worker thread the waiter keeps running its
//! own pool's work while it waits (so a `Parallel` call nested in a task, or one that targets
//! another pool, never idles a worker or deadlocks a 1-thread pool); on any other thread it blocks
//! on a condition variable after a short spin.
//!
//! No lost notification: the waiter re-arms (`reset`) *before* evaluating the condition, and a
//! producer changes the state *before* it sets the signal. Either the set comes after the re-arm,
//! and the waiter will not sleep through it, or it came before, and the re-arm's Acquire makes the
//! new state visible to the condition.
//!
//! Lifetime: unlike a latch, a signal is notified many times, and the waiter may see its condition
//! turn false before the producer's `notify` has finished. So a `Signal` must be shared by `Arc`
//! (each producer holding a clone while it notifies), never borrowed from the waiter's frame.

use super::latch::CoreLatch;
use super::registry::Registry;
use super::worker::WorkerThread;
use crate::sync::{Arc, AtomicBool, Condvar, Mutex, Ordering};

/// See the module docs.
pub(crate) struct Signal {
    waiter: Waiter,
}

enum Waiter {
    /// The waiter is worker `index` of `registry`; it helps with that pool's work while it waits.
    Worker {
        registry: Arc<Registry>,
        index: usize,
        latch: CoreLatch,
    },
    /// The waiter is a thread outside any pool.
    Thread {
        lock: Mutex<bool>,
        cond: Condvar,
        waiting: AtomicBool,
    },
}

/// Spins an outside waiter makes before blocking.
const OUTSIDE_SPINS: u32 = if cfg!(loom) { 1 } else { 100 };

impl Signal {
    /// A signal whose waiter is the current thread (only that thread may call `wait_while`).
    pub(crate) fn for_current_thread() -> Self {
        let waiter = match WorkerThread::current() {
            Some(worker) => Waiter::Worker {
                registry: Arc::clone(worker.registry()),
                index: worker.index(),
                latch: CoreLatch::new(),
            },
            None => Waiter::Thread {
                lock: Mutex::new(false),
                cond: Condvar::new(),
                waiting: AtomicBool::new(false),
            },
        };
        Signal { waiter }
    }

    /// Wakes the waiter if it waits. Call after changing what its condition reads.
    pub(crate) fn notify(&self) {
        match &self.waiter {
            Waiter::Worker {
                registry,
                index,
                latch,
            } => {
                // SAFETY: `latch` lives as long as `self`, which the caller keeps alive (an Arc).
                if unsafe { CoreLatch::set(latch) } {
                    registry.sleep.wake_specific(*index);
                }
            }
            Waiter::Thread {
                lock,
                cond,
                waiting,
            } => {
                // Skip the lock while the waiter is spinning or working: it will re-check anyway.
                // Pairs with the SeqCst store of `waiting` in `wait_while` (a Dekker pair: we
                // changed the state, then read `waiting`; it set `waiting`, then reads the state).
                crate::sync::fence(Ordering::SeqCst);
                if waiting.load(Ordering::Relaxed) {
                    let mut notified = lock.lock().unwrap();
                    *notified = true;
                    cond.notify_one();
                }
            }
        }
    }

    /// Blocks (or helps, on a worker) while `condition()` is true.
    pub(crate) fn wait_while(&self, condition: impl Fn() -> bool) {
        match &self.waiter {
            Waiter::Worker { latch, .. } => {
                let worker =
                    WorkerThread::current().expect("parjob: Signal waited on from another thread");
                loop {
                    latch.reset();
                    if !condition() {
                        return;
                    }
                    worker.wait_until(latch);
                }
            }
            Waiter::Thread {
                lock,
                cond,
                waiting,
            } => {
                for _ in 0..OUTSIDE_SPINS {
                    if !condition() {
                        return;
                    }
                    crate::sync::spin_loop();
                }
                let mut notified = lock.lock().unwrap();
                loop {
                    *notified = false;
                    waiting.store(true, Ordering::Relaxed);
                    crate::sync::fence(Ordering::SeqCst);
                    if !condition() {
                        waiting.store(false, Ordering::Relaxed);
                        return;
                    }
                    while !*notified {
                        notified = cond.wait(notified).unwrap();
                    }
                }
            }
        }
    }
}
