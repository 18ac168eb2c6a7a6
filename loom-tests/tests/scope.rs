//! Model 5: a scope's counter with a nested spawn and a panic racing completion.
//!
//! The real pool (2 workers) and the real `scope`: the body spawns a task that panics and a task
//! that spawns another. Tasks finish on either worker, in any order; each records its panic (first
//! wins) and then decrements `pending`; the decrement to zero sets the scope's latch. The
//! property: the scope returns exactly once, after every task finished (their writes visible),
//! and re-raises the task's panic. Decrementing before recording the panic lets the owner see zero,
//! return without the panic (and free the scope the late task still writes to).
#![cfg(loom)]

use loom::sync::atomic::{AtomicUsize, Ordering};
use parjob::SharePolicy;
use parjob_loom_tests::{model, pool, EXPECTED};
use std::panic::{catch_unwind, AssertUnwindSafe};

#[test]
fn scope_ends_once_after_every_task() {
    model("scope", 1, || {
        let pool = pool(2, SharePolicy::Lazy);
        let done = AtomicUsize::new(0);
        let result = catch_unwind(AssertUnwindSafe(|| {
            pool.scope(|s| {
                s.spawn(|_| {
                    // Voluntary switches (not preemptions) let the other tasks finish first, so
                    // this task can be the last one: the case where its panic can go missing.
                    loom::thread::yield_now();
                    loom::thread::yield_now();
                    panic!("{EXPECTED}: task")
                });
                // Lets the other worker steal the task above without costing a preemption.
                loom::thread::yield_now();
                s.spawn(|s| {
                    s.spawn(|_| {
                        done.fetch_add(1, Ordering::Relaxed);
                    });
                    done.fetch_add(1, Ordering::Relaxed);
                });
            })
        }));
        let payload = result.expect_err("the task's panic was lost: the scope returned normally");
        let message = payload.downcast_ref::<String>().map(String::as_str);
        assert_eq!(message, Some("expected panic: task"));
        assert_eq!(
            done.load(Ordering::Relaxed),
            2,
            "the scope ended before every task finished"
        );
        drop(pool);
    });
}
