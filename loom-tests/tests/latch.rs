//! Model 3: a latch set racing its owner going to sleep — the owner wakes and sees the result.
//!
//! Two pools of one worker each. The caller runs `a.install(|| b.install(..))`: pool A's worker
//! injects the inner call into pool B (`in_worker_cross`) and waits on a `CrossLatch` by running
//! its own pool's loop, `run_until(latch)`; with nothing to do it marks the latch `SLEEPING`
//! (`CoreLatch::fall_asleep`) and parks. Pool B's worker runs the call, writes the result into the
//! `StackJob` (a loom `UnsafeCell`) and sets the latch (`swap(SET, AcqRel)`); the old state tells
//! it whether to unpark the owner. Loom checks that the owner never sleeps through the set
//! (deadlock otherwise) and that the result write happens-before the owner's read of it (causality).
#![cfg(loom)]

use parjob::SharePolicy;
use parjob_loom_tests::{model, pool};

#[test]
fn owner_wakes_and_sees_result() {
    model("latch", 2, || {
        let a = pool(1, SharePolicy::Lazy);
        let b = pool(1, SharePolicy::Lazy);
        let answer = a.install(|| b.install(|| String::from("from pool b")));
        assert_eq!(answer, "from pool b");
        drop(b);
        drop(a);
    });
}
