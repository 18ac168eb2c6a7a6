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
//! Deadlines: [`Signal::wait_while_until`] also returns once a deadline has passed. An outside waiter
//! blocks with `Condvar::wait_timeout`. A worker waiter is woken at the deadline by a timer thread
//! (one per process, started on first use) that calls `notify`, the same wake-up a producer uses,
//! so the sleep protocol is unchanged; the deadline is then seen when the worker next checks its
//! signal, which it does between the jobs it runs while it waits (a long job of the pool delays
//! it). Under loom there is no timer: a worker notices the deadline only when notified.
//!
//! Lifetime: unlike a latch, a signal is notified many times, and the waiter may see its condition
//! turn false before the producer's `notify` has finished. So a `Signal` must be shared by `Arc`
//! (each producer holding a clone while it notifies), never borrowed from the waiter's frame.

use super::latch::CoreLatch;
use super::registry::Registry;
use super::worker::WorkerThread;
use crate::sync::mutant::{self, Mutant};
use crate::sync::{Arc, AtomicBool, Condvar, Mutex, Ordering};
use std::time::Instant;

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
                // Pairs with the `fence(SeqCst)` that follows the waiter's (Relaxed) store of
                // `waiting` in `wait_while` (a Dekker pair of fences: we changed the state, fenced,
                // then read `waiting`; it set `waiting`, fenced, then re-reads the state).
                // The loom model `loom-tests/tests/signal.rs` checks it, and its broken twin
                // (`mutant::active(Mutant::SignalNotifySkipsFence)`) loses the wake-up.
                if !mutant::active(Mutant::SignalNotifySkipsFence) {
                    crate::sync::fence(Ordering::SeqCst);
                }
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
        self.wait(None, condition)
    }

    /// Like [`wait_while`](Self::wait_while), but also returns once `deadline` has passed (see the
    /// module docs, "Deadlines"). The caller re-checks whatever it needs afterwards.
    pub(crate) fn wait_while_until(
        this: &Arc<Signal>,
        deadline: Option<Instant>,
        condition: impl Fn() -> bool,
    ) {
        #[cfg(not(loom))]
        if let (Some(deadline), Waiter::Worker { .. }) = (deadline, &this.waiter) {
            timer::notify_at(deadline, Arc::downgrade(this));
        }
        this.wait(deadline, condition)
    }

    fn wait(&self, deadline: Option<Instant>, condition: impl Fn() -> bool) {
        let expired = || deadline.is_some_and(|d| Instant::now() >= d);
        let condition = || condition() && !expired();
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
                        notified = match deadline {
                            None => cond.wait(notified).unwrap(),
                            Some(deadline) => {
                                let now = Instant::now();
                                if now >= deadline {
                                    break; // re-checked (and returned) at the top of the loop
                                }
                                cond.wait_timeout(notified, deadline - now).unwrap().0
                            }
                        };
                    }
                }
            }
        }
    }
}

/// The deadline timer for worker waiters (see the module docs, "Deadlines").
#[cfg(not(loom))]
mod timer {
    use super::Signal;
    use std::sync::{Condvar, Mutex, OnceLock, Weak};
    use std::time::Instant;

    struct Timer {
        /// At most one entry per signal (its waiter waits with one deadline at a time); a `Weak`,
        /// so a pending deadline keeps nothing alive.
        entries: Mutex<Vec<(Instant, Weak<Signal>)>>,
        changed: Condvar,
    }

    /// Notifies `signal` (if it still exists) once `deadline` has passed. Replaces the signal's
    /// previous deadline, if any: only its waiter's current wait matters, and a notify is harmless
    /// at any time (the waiter re-checks its condition).
    pub(super) fn notify_at(deadline: Instant, signal: Weak<Signal>) {
        static TIMER: OnceLock<&'static Timer> = OnceLock::new();
        let timer = *TIMER.get_or_init(|| {
            let timer: &'static Timer = Box::leak(Box::new(Timer {
                entries: Mutex::new(Vec::new()),
                changed: Condvar::new(),
            }));
            std::thread::Builder::new()
                .name("parjob-timer".into())
                .spawn(move || run(timer))
                .expect("parjob: cannot start the timer thread");
            timer
        });
        let mut entries = timer.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.iter_mut().find(|(_, s)| s.ptr_eq(&signal)) {
            Some(entry) if entry.0 == deadline => return,
            Some(entry) => entry.0 = deadline,
            None => entries.push((deadline, signal)),
        }
        drop(entries);
        timer.changed.notify_one();
    }

    fn run(timer: &'static Timer) {
        let mut entries = timer.entries.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = Instant::now();
            let mut due = Vec::new();
            entries.retain(|(deadline, signal)| {
                if *deadline <= now {
                    due.push(signal.clone());
                    false
                } else {
                    signal.strong_count() > 0
                }
            });
            let next = entries.iter().map(|(deadline, _)| *deadline).min();
            if !due.is_empty() {
                drop(entries);
                for signal in due.iter().filter_map(Weak::upgrade) {
                    signal.notify();
                }
                drop(due);
                entries = timer.entries.lock().unwrap_or_else(|e| e.into_inner());
                continue;
            }
            entries = match next {
                None => timer
                    .changed
                    .wait(entries)
                    .unwrap_or_else(|e| e.into_inner()),
                Some(next) => {
                    timer
                        .changed
                        .wait_timeout(entries, next.saturating_duration_since(now))
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }
}
