//! Model 8: lazy publication of a private fork racing a thief.
//!
//! The real pool (2 workers, the default lazy sharing) and the real `join`. Worker X runs
//! `join(A, B)`: B stays in X's private fork list. A keeps forking (tiny `join`s) until B has
//! started, which only the other worker, the thief, can make happen. The thief finds X's deque
//! empty, sets X's hunger flag (`mark_hungry`) and goes to sleep (announce, fence, re-check).
//! X's next fork sees the flag, publishes its oldest fork (B) to the deque and runs the wake-up
//! check (`Sleep::new_work`: fence, read the counters, wake a sleeper). The property: B gets
//! stolen and run. If the publication skips the wake-up check, or its fence, the thief can sleep
//! through it while A spins forever: loom stops the execution at its branch limit.
#![cfg(loom)]

use loom::sync::atomic::{AtomicBool, Ordering};
use parjob::SharePolicy;
use parjob_loom_tests::{model, pool};

#[test]
fn published_fork_reaches_sleeping_thief() {
    model("publish", 1, || {
        let pool = pool(2, SharePolicy::Lazy);
        let b_started = AtomicBool::new(false);
        pool.install(|| {
            parjob::join(
                || {
                    while !b_started.load(Ordering::Acquire) {
                        parjob::join(|| (), || ());
                        loom::thread::yield_now();
                    }
                },
                || b_started.store(true, Ordering::Release),
            )
        });
        drop(pool);
    });
}
