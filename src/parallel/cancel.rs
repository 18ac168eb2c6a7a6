//! The cancellation protocol: "the first failure cancels the rest".
//!
//! A [`Tracker`] counts the runners that are *active*: between a successful [`Tracker::begin`] and
//! the matching [`Tracker::finish`], and only there, a runner may touch the call's tasks (which may
//! borrow the caller's stack). The canceller (the dispatcher, on a failure, a timeout, the end of
//! the call, or a dropped iterator) calls [`Tracker::close`] and then waits until
//! [`Tracker::is_quiescent`]. The guarantee:
//!
//! 1. **No task starts after the cancel is observed**: once `close()` has returned and
//!    `is_quiescent()` has returned `true`, every later `begin()` returns `false`.
//! 2. **Every started task is accounted for**: each `begin()` that returned `true` is counted until
//!    its `finish()`, and everything the runner did before `finish()` happens-before the
//!    `is_quiescent()` that returned `true` (Release decrement, Acquire load).
//!
//! Why 1 holds (a Dekker pair of `SeqCst` fences): `begin` increments `active`, executes
//! `fence(SeqCst)`, then reads `closed`; `close` stores `closed`, executes `fence(SeqCst)`, and the
//! canceller reads `active` after it. The two fences are totally ordered. If `begin`'s comes first,
//! the canceller's read of `active` sees the increment, so it is not quiescent until `finish`. If
//! `close`'s comes first, `begin` reads `closed == true` and backs out (its transient increment only
//! delays quiescence). Checking `closed` *before* incrementing (the broken variant
//! `Mutant::CancelCheckBeforeClaim`) lets a runner read `closed == false`, the canceller
//! close and see `active == 0`, and the runner then start a task after the cancel was observed.
//!
//! Within an active runner, tasks check [`Tracker::is_closed`] (a plain load) before each task, so
//! a batch stops at the next task boundary; that check needs no ordering, the counter does the
//! accounting.

use crate::sync::mutant::{self, Mutant};
use crate::sync::{fence, AtomicBool, AtomicUsize, Ordering};

/// See the module docs.
pub(crate) struct Tracker {
    /// Set once by `close`; never cleared.
    closed: AtomicBool,
    /// Runners between a successful `begin` and their `finish` (plus transient backed-out ones).
    active: AtomicUsize,
}

impl Tracker {
    pub(crate) fn new() -> Self {
        Tracker {
            closed: AtomicBool::new(false),
            active: AtomicUsize::new(0),
        }
    }

    /// Claims the right to run tasks. `true`: the caller is active and must call `finish` exactly
    /// once; `false`: the tracker is closed, touch nothing.
    #[inline]
    pub(crate) fn begin(&self) -> bool {
        if mutant::active(Mutant::CancelCheckBeforeClaim) {
            if self.closed.load(Ordering::Relaxed) {
                return false;
            }
            self.active.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        self.active.fetch_add(1, Ordering::Relaxed);
        // Pairs with the fence in `close` (see the module docs).
        fence(Ordering::SeqCst);
        if self.closed.load(Ordering::Relaxed) {
            self.finish();
            return false;
        }
        true
    }

    /// Ends an active period begun by a successful `begin`.
    #[inline]
    pub(crate) fn finish(&self) {
        // Release: the runner's accesses happen-before the canceller's Acquire in `is_quiescent`.
        self.active.fetch_sub(1, Ordering::Release);
    }

    /// Cancels: no `begin` that starts after this returns and sees the fence order can succeed.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        // Pairs with the fence in `begin`.
        fence(Ordering::SeqCst);
    }

    /// Has `close` been called? (A hint for stopping between tasks; no ordering implied.)
    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// The check a runner makes before each task: stop if the call was cancelled, or if its
    /// `deadline` has passed — then record that (`deadline_hit`, so the call can report a
    /// timeout) and cancel the rest. Returns `true` when the runner must stop.
    #[inline]
    pub(crate) fn stop_before_next_task(
        &self,
        deadline: Option<std::time::Instant>,
        deadline_hit: &AtomicBool,
    ) -> bool {
        if self.is_closed() {
            return true;
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            deadline_hit.store(true, Ordering::Relaxed);
            self.close();
            return true;
        }
        false
    }

    /// No runner is active. After `close`, once this returns `true`, it stays `true` and no task
    /// will ever start again.
    #[inline]
    pub(crate) fn is_quiescent(&self) -> bool {
        self.active.load(Ordering::Acquire) == 0
    }
}

// The loom model of this protocol (model 9) and its broken twin are in `loom-tests/tests/cancel.rs`.

#[cfg(all(test, not(loom)))]
mod tests {
    use super::Tracker;

    #[test]
    fn begin_counts_until_finish_and_fails_after_close() {
        let t = Tracker::new();
        assert!(t.is_quiescent() && !t.is_closed());
        assert!(t.begin());
        assert!(t.begin());
        assert!(!t.is_quiescent());
        t.close();
        assert!(t.is_closed());
        assert!(!t.begin(), "no begin succeeds after close");
        assert!(!t.is_quiescent(), "the two active runners still count");
        t.finish();
        t.finish();
        assert!(t.is_quiescent());
        assert!(!t.begin());
        assert!(
            t.is_quiescent(),
            "a backed-out begin leaves no count behind"
        );
    }

    /// Threads that begin while another closes: after the closer sees quiescence, no begin ever
    /// succeeds again, and every successful begin was counted until its finish.
    #[test]
    fn no_runner_starts_after_the_close_is_observed() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        for _ in 0..200 {
            let t = Tracker::new();
            let observed = AtomicBool::new(false);
            let late = AtomicUsize::new(0);
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        for _ in 0..100 {
                            if t.begin() {
                                if observed.load(Ordering::SeqCst) {
                                    late.fetch_add(1, Ordering::SeqCst);
                                }
                                t.finish();
                            }
                        }
                    });
                }
                t.close();
                while !t.is_quiescent() {
                    std::hint::spin_loop();
                }
                observed.store(true, Ordering::SeqCst);
            });
            assert_eq!(late.load(Ordering::SeqCst), 0);
        }
    }
}
