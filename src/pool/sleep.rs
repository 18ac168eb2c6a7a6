//! Idle workers: searching, sleeping, and being woken (the protocol is written out in
//! `docs/architecture.md`, "Sleep and wake").
//!
//! States of a worker, as this module sees them: *busy* (running a job), *searching* (looking for
//! work, counted in `searching`), *sleeping* (announced in `sleeping` and its own `state`, parked).
//!
//! The invariant that rules out lost wake-ups: **after publishing work, a publisher executes
//! `fence(SeqCst)` and then reads the counters; after announcing sleep, a sleeper executes
//! `fence(SeqCst)` and then re-checks every queue.** Of two SeqCst fences one comes first, so either
//! the publisher sees the sleeper's announcement (and wakes someone) or the sleeper sees the work
//! (and does not park). A publisher that sees a searcher leaves the waking to it: a searcher either
//! finds work (and, if it was the last searcher, wakes one more: the hand-off) or goes to sleep
//! through the same fence-and-re-check, and so finds this work.

use super::metrics::now_ns;
use super::metrics::{LatencyHistogram, WorkerCounters};
use crate::sync::mutant::{self, Mutant};
use crate::sync::{fence, thread, AtomicU64, AtomicU8, Mutex, Ordering};
use crossbeam_utils::CachePadded;
use std::time::Instant;

const AWAKE: u8 = 0;
const SLEEPING: u8 = 1;
/// A waker has claimed this sleeper and is moving it from `sleeping` to `searching` in the
/// counters; it stores `AWAKE` once the counts are moved. The sleeper must not act as a searcher
/// before that (it would decrement `searching` before the waker incremented it: the count would
/// wrap and publishers reading it would skip a wake-up they owe; found by the loom handoff model).
const CLAIMED: u8 = 2;

/// `counters` packs two counts in one word so a waker can move a worker from sleeping to searching
/// in one atomic step: bits 0..32 count searching workers, bits 32..64 sleeping ones.
const SEARCHING_ONE: u64 = 1;
const SLEEPING_ONE: u64 = 1 << 32;

#[inline]
fn searching(counters: u64) -> u64 {
    counters & 0xFFFF_FFFF
}
#[inline]
fn sleeping(counters: u64) -> u64 {
    counters >> 32
}

struct WorkerSleepState {
    /// `AWAKE`, `SLEEPING` or `CLAIMED`. Only the worker itself stores `SLEEPING`; whoever moves it
    /// out of `SLEEPING` (a waker, via `CLAIMED`, or the worker itself) owns the accounting.
    state: AtomicU8,
    /// Filled in by the worker before it can ever be `SLEEPING`; read only to unpark.
    thread: Mutex<Option<thread::Thread>>,
    /// When someone last asked to wake this worker (ns since `epoch`; 0 = no request pending), for
    /// the wake-up latency histogram. An observation, not protocol: std atomics, not the facade.
    wake_requested_ns: std::sync::atomic::AtomicU64,
}

/// The sleep state of one pool.
pub(crate) struct Sleep {
    counters: CachePadded<AtomicU64>,
    workers: Box<[CachePadded<WorkerSleepState>]>,
    /// Cap on concurrently searching workers (at least 1).
    max_searchers: u64,
    epoch: Instant,
}

/// How a worker came back from [`Sleep::sleep`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woken {
    /// It did not park, or it woke by itself (its latch was set, or shutdown): not counted as a searcher.
    Idle,
    /// A waker claimed it and counted it as a searcher: it must `stop_searching` eventually.
    AsSearcher,
}

impl Sleep {
    pub(crate) fn new(num_workers: usize, max_searchers: usize, epoch: Instant) -> Self {
        let workers = (0..num_workers)
            .map(|_| {
                CachePadded::new(WorkerSleepState {
                    state: AtomicU8::new(AWAKE),
                    thread: Mutex::new(None),
                    wake_requested_ns: std::sync::atomic::AtomicU64::new(0),
                })
            })
            .collect();
        Sleep {
            counters: CachePadded::new(AtomicU64::new(0)),
            workers,
            max_searchers: max_searchers.max(1) as u64,
            epoch,
        }
    }

    /// Called by each worker on its own thread before it first looks for work.
    pub(crate) fn register_current_thread(&self, index: usize) {
        *self.workers[index].thread.lock().unwrap() = Some(thread::current());
    }

    /// Tries to become a searcher; refused while `max_searchers` others search (they will find
    /// whatever there is, and a refused worker goes to sleep through the usual re-check).
    #[inline]
    pub(crate) fn start_searching(&self) -> bool {
        let mut current = self.counters.load(Ordering::Relaxed);
        loop {
            if searching(current) >= self.max_searchers {
                return false;
            }
            match self.counters.compare_exchange_weak(
                current,
                current + SEARCHING_ONE,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// A searcher found work. If it was the last searcher and someone sleeps, wake one more: the
    /// work it found may have been the first of several, and the publishers of the others may have
    /// skipped waking because they saw this searcher.
    #[inline]
    pub(crate) fn stop_searching_found_work(&self, counters: &WorkerCounters) {
        // AcqRel: the Release half pairs with the Acquire read of the counters by publishers in
        // `new_work` and by sleepers' `fetch_add` (they see this worker gone from `searching` only
        // together with what it did before); the Acquire half pairs with sleepers' `fetch_add`
        // (Release), so a sleeper counted in `before` is one `wake_any` can find as SLEEPING.
        let before = self.counters.fetch_sub(SEARCHING_ONE, Ordering::AcqRel);
        if searching(before) == 1
            && sleeping(before) > 0
            && !mutant::active(Mutant::SearcherSkipsHandoff)
        {
            self.wake_any(counters);
        }
    }

    /// A searcher gives up (it is about to sleep and will re-check the queues then).
    #[inline]
    pub(crate) fn stop_searching_idle(&self) {
        // AcqRel: pairs with the publishers' Acquire load in `new_work` (and the other RMWs on
        // `counters`), so a publisher that sees `searching == 0` also sees everything this worker
        // did while searching; what prevents a lost wake-up is the sleeper's fence that follows.
        self.counters.fetch_sub(SEARCHING_ONE, Ordering::AcqRel);
    }

    /// Called after publishing work where another worker may take it.
    #[inline]
    pub(crate) fn new_work(&self, counters: &WorkerCounters) {
        if mutant::active(Mutant::PublishSkipsNotify) {
            return;
        }
        if !mutant::active(Mutant::PublishSkipsFence) {
            // Pairs with the sleeper's fence in `sleep`: see the module docs.
            fence(Ordering::SeqCst);
        }
        // Acquire pairs with the sleepers' `fetch_add(SLEEPING_ONE)` (Release): a sleeper seen
        // here is one whose `SLEEPING` state `wake_any` can see.
        let c = self.counters.load(Ordering::Acquire);
        if sleeping(c) > 0 && searching(c) == 0 {
            self.wake_any(counters);
        }
    }

    /// Wakes one sleeping worker, counting it as a searcher. Returns whether one was found.
    #[cold]
    pub(crate) fn wake_any(&self, counters: &WorkerCounters) -> bool {
        for (index, worker) in self.workers.iter().enumerate() {
            if worker.state.load(Ordering::Relaxed) == SLEEPING
                && worker
                    .state
                    // AcqRel: Acquire pairs with the sleeper's `SLEEPING` store (made visible by
                    // its Release `fetch_add`); Release orders the claim before our count move.
                    .compare_exchange(SLEEPING, CLAIMED, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                // One step: one fewer sleeper, one more searcher, so other publishers leave this
                // wake-up alone instead of waking a herd.
                // AcqRel: Release pairs with the Acquire reads of `counters` by publishers and by
                // the claimed worker (through the `AWAKE` store below); Acquire keeps the
                // modification order with the other RMWs' Release.
                self.counters
                    .fetch_add(SEARCHING_ONE.wrapping_sub(SLEEPING_ONE), Ordering::AcqRel);
                // Release: the sleeper that sees `AWAKE` (Acquire) sees the counts moved.
                worker.state.store(AWAKE, Ordering::Release);
                counters.bump_wakeups_sent();
                self.unpark(index);
                return true;
            }
        }
        false
    }

    /// Unparks worker `index` whatever its state: used when its latch is set. The worker decides
    /// for itself whether it was woken for good (it re-checks its latch).
    #[inline]
    pub(crate) fn wake_specific(&self, index: usize) {
        self.unpark(index);
    }

    /// Wakes everybody (shutdown). Parking keeps an early unpark, so no one misses it.
    pub(crate) fn wake_all(&self) {
        for index in 0..self.workers.len() {
            self.unpark(index);
        }
    }

    fn unpark(&self, index: usize) {
        // `max(1)`: 0 means "no request pending".
        let now = now_ns(self.epoch).max(1);
        let _ = self.workers[index].wake_requested_ns.compare_exchange(
            0,
            now,
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        );
        if let Some(thread) = self.workers[index].thread.lock().unwrap().as_ref() {
            thread.unpark();
        }
    }

    /// Puts worker `index` to sleep unless `has_work` (checked after the announce-and-fence step)
    /// says there is a reason to stay up. The caller must not be counted as a searcher.
    ///
    /// `keep_sleeping` is re-evaluated after every return from `park` (which may be spurious or a
    /// latch wake): while it is true and nobody claimed us, we park again.
    pub(crate) fn sleep(
        &self,
        index: usize,
        counters: &WorkerCounters,
        wake_latency: &LatencyHistogram,
        has_work: impl Fn() -> bool,
        keep_sleeping: impl Fn() -> bool,
    ) -> Woken {
        let me = &self.workers[index];
        me.state.store(SLEEPING, Ordering::Relaxed);
        // Release: a waker that sees this count (Acquire) also sees our `SLEEPING` state.
        self.counters.fetch_add(SLEEPING_ONE, Ordering::AcqRel);
        if !mutant::active(Mutant::SleepSkipsFence) {
            // Pairs with the publisher's fence in `new_work`.
            fence(Ordering::SeqCst);
        }
        if (!mutant::active(Mutant::SleepSkipsRecheck) && has_work()) || !keep_sleeping() {
            return self.cancel_sleep(index);
        }
        counters.bump_sleeps();
        // A request left over from before this sleep (its wake-up found us awake) is not ours.
        me.wake_requested_ns
            .store(0, std::sync::atomic::Ordering::Relaxed);
        loop {
            thread::park();
            let requested = me
                .wake_requested_ns
                .swap(0, std::sync::atomic::Ordering::Relaxed);
            if requested != 0 {
                wake_latency.record(now_ns(self.epoch).saturating_sub(requested));
            }
            if me.state.load(Ordering::Acquire) == AWAKE {
                // A waker claimed us and did the accounting.
                counters.bump_wakeups();
                return Woken::AsSearcher;
            }
            if !keep_sleeping() {
                counters.bump_wakeups();
                return self.cancel_sleep(index);
            }
        }
    }

    /// Takes back our own announcement, unless a waker claimed us in the meantime.
    fn cancel_sleep(&self, index: usize) -> Woken {
        let me = &self.workers[index];
        if me
            .state
            // AcqRel/Acquire: pairs with a waker's CLAIMED CAS (AcqRel) on the same byte: exactly
            // one of us moves the state out of SLEEPING and owns the accounting.
            .compare_exchange(SLEEPING, AWAKE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            // AcqRel, like every RMW on `counters`: Release pairs with publishers' Acquire load
            // (they stop counting us as a sleeper to wake), Acquire with the other RMWs.
            self.counters.fetch_sub(SLEEPING_ONE, Ordering::AcqRel);
            Woken::Idle
        } else {
            // A waker claimed us: wait (a few instructions) until it has moved the counts.
            while me.state.load(Ordering::Acquire) != AWAKE {
                crate::sync::spin_loop();
            }
            Woken::AsSearcher
        }
    }

    /// Number of workers currently counted as sleeping (for tests and metrics).
    #[allow(dead_code)]
    pub(crate) fn num_sleeping(&self) -> usize {
        sleeping(self.counters.load(Ordering::Relaxed)) as usize
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn counters_pack_and_unpack() {
        let c = 3 * SLEEPING_ONE + 2 * SEARCHING_ONE;
        assert_eq!(searching(c), 2);
        assert_eq!(sleeping(c), 3);
        let moved = c.wrapping_add(SEARCHING_ONE.wrapping_sub(SLEEPING_ONE));
        assert_eq!((searching(moved), sleeping(moved)), (3, 2));
    }

    #[test]
    fn searcher_cap_is_enforced() {
        let sleep = Sleep::new(4, 2, Instant::now());
        assert!(sleep.start_searching());
        assert!(sleep.start_searching());
        assert!(!sleep.start_searching());
        sleep.stop_searching_idle();
        assert!(sleep.start_searching());
    }
}
