//! Model 4: `join` whose second half is stolen while the first half panics.
//!
//! The real pool (2 workers, eager sharing so B is always published) and the real `join`: worker X
//! runs `join(A, B)`; B's `StackJob` lives in X's frame and is pushed to X's deque; A panics. If
//! the other worker stole B, X must wait for B's latch before it resumes A's panic: otherwise the
//! panic unwinds X's frame (freeing B's stack job) while the thief still runs B. The property,
//! checked by the caller after `install` re-raised the panic: B finished, and its write is visible
//! (happens-before, through B's latch and the caller's latch).
#![cfg(loom)]

use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::Arc;
use parjob::SharePolicy;
use parjob_loom_tests::{model, pool, EXPECTED};
use std::panic::{catch_unwind, AssertUnwindSafe};

#[test]
fn panic_in_a_waits_for_stolen_b() {
    model("join", 1, || {
        let pool = pool(2, SharePolicy::Eager);
        let b_done = Arc::new(AtomicBool::new(false));
        let result = catch_unwind(AssertUnwindSafe(|| {
            pool.install(|| {
                parjob::join(
                    || {
                        // A voluntary switch (not a preemption): lets the woken worker steal B
                        // while A runs, so the twin is caught within a preemption bound of 1.
                        loom::thread::yield_now();
                        panic!("{EXPECTED}: A")
                    },
                    || b_done.store(true, Ordering::Relaxed),
                )
            })
        }));
        let payload = result.expect_err("A's panic must reach the caller");
        let message = payload.downcast_ref::<String>().map(String::as_str);
        assert_eq!(message, Some("expected panic: A"));
        assert!(
            b_done.load(Ordering::Relaxed),
            "join's panic reached the caller before its stolen B finished"
        );
        drop(pool);
    });
}
