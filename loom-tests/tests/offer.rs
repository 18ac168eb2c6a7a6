//! Model 12: an outside `join` offers B while the worker may claim it.
//!
//! The real pool (1 worker) and the real `ThreadPool::join` from a thread outside the pool: the
//! caller puts B's `JobRef` in an offer slot (`src/pool/offers.rs`), wakes the worker if it sleeps,
//! runs A, and withdraws the offer with one compare-exchange; the worker, searching, claims the
//! offer with a compare-exchange of its own. Exactly one of them must run B, and if the worker did,
//! the caller must wait for B's latch before it returns (B's write must be visible). Two calls in
//! a row offer from the same frame address, as a program's loop does. The broken twin withdraws
//! with a load and a store: a claim between the two runs B on both threads.
#![cfg(loom)]

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use parjob::SharePolicy;
use parjob_loom_tests::{model, pool};

#[test]
fn an_offered_b_runs_exactly_once() {
    model("offer", 2, || {
        let pool = pool(1, SharePolicy::Lazy);
        let b_runs = Arc::new(AtomicUsize::new(0));
        // Two calls from the same call site: the second offers from the same frame address as
        // the first, so a worker that saw the first offer may meet the second (the slot's ABA).
        for round in 0..2 {
            let (a, b) = pool.join(
                || {
                    // A voluntary switch (not a preemption): gives the woken worker the chance
                    // to claim B while A runs.
                    loom::thread::yield_now();
                    1
                },
                || b_runs.fetch_add(1, Ordering::Relaxed) + 2 - round,
            );
            assert_eq!((a, b), (1, 2), "B's result did not reach the caller");
            assert_eq!(
                b_runs.load(Ordering::Relaxed),
                round + 1,
                "B ran more than once (claimed and withdrawn)"
            );
        }
        drop(pool);
    });
}
