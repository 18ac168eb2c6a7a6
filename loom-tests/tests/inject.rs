//! Model 2: work injected from outside while every worker parks — it runs.
//!
//! The real pool (1 worker) and the real `install` path: the caller pushes a `StackJob` into the
//! injector (`Registry::inject`: push, `fence(SeqCst)`, read the sleep counters) while the worker,
//! just started, finds nothing and goes to sleep (announce, `fence(SeqCst)`, re-check the queues).
//! Either the caller sees the sleeper and wakes it, or the sleeper sees the job. A lost wake-up
//! leaves the worker parked and the caller blocked on its latch: loom reports a deadlock.
#![cfg(loom)]

use parjob::SharePolicy;
use parjob_loom_tests::{model, pool};

#[test]
fn injected_job_runs_while_worker_parks() {
    model("inject", 3, || {
        let pool = pool(1, SharePolicy::Lazy);
        let answer = pool.install(|| 6 * 7);
        assert_eq!(answer, 42);
        drop(pool);
    });
}
