//! Model 9: cancellation (the first error cancels the rest) racing task starts.
//!
//! The real `Parallel` cancellation tracker. A runner thread tries to start a task (`begin`) while
//! the dispatcher cancels (`close`) and waits until the tracker is quiescent, after which the
//! call's borrowed data counts as freed. The property: no task starts after the dispatcher observed
//! quiescence (a started task would touch freed data), and every started task is accounted for
//! (the dispatcher cannot observe quiescence while one is active).
#![cfg(loom)]

use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::Arc;
use parjob::__loom::CancelTracker;
use parjob_loom_tests::model;

#[test]
fn no_task_starts_after_the_cancel_is_observed() {
    model("cancel", 3, || {
        let tracker = Arc::new(CancelTracker::new());
        let freed = Arc::new(AtomicBool::new(false));
        let runner = {
            let (tracker, freed) = (Arc::clone(&tracker), Arc::clone(&freed));
            loom::thread::spawn(move || {
                if tracker.begin() {
                    assert!(
                        !freed.load(Ordering::Relaxed),
                        "a task started after the cancel was observed"
                    );
                    tracker.finish();
                }
            })
        };
        tracker.close();
        while !tracker.is_quiescent() {
            loom::thread::yield_now();
        }
        freed.store(true, Ordering::Relaxed);
        runner.join().unwrap();
    });
}
