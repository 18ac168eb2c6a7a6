//! Model 6: shutdown racing submissions and queued work.
//!
//! The real pool (1 worker). The caller queues two jobs and drops the last handle at once
//! (`terminate`: set the flag, wake everyone, join the threads); the first job, running on the
//! worker while shutdown proceeds, submits another through a non-owning handle. The property:
//! when the drop returns, every job accepted before or during shutdown ran exactly once, every
//! worker thread exited (no deadlock), and nothing leaked (loom checks its `Arc`s after every
//! execution: a job that never ran would leak the `Arc` it owns).
#![cfg(loom)]

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use parjob::{__loom, SharePolicy};
use parjob_loom_tests::{model, pool};

#[test]
fn shutdown_drains_queued_and_racing_jobs() {
    model("shutdown", 3, || {
        let pool = pool(1, SharePolicy::Lazy);
        let ran = Arc::new(AtomicUsize::new(0));
        let first = Arc::clone(&ran);
        __loom::spawn_detached(&pool, move || {
            first.fetch_add(1, Ordering::Relaxed);
            let here = __loom::current_pool().expect("runs on a worker");
            let nested = Arc::clone(&first);
            __loom::spawn_detached(&here, move || {
                nested.fetch_add(1, Ordering::Relaxed);
            });
        });
        let second = Arc::clone(&ran);
        __loom::spawn_detached(&pool, move || {
            second.fetch_add(1, Ordering::Relaxed);
        });
        drop(pool);
        assert_eq!(
            ran.load(Ordering::Relaxed),
            3,
            "a job accepted before or during shutdown was lost"
        );
    });
}
