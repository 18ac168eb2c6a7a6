//! Model 11: the `Signal` wait/notify handshake that every `Parallel` call's driver waits on.
//!
//! The real `Signal` with an outside-thread waiter (a condition variable after a short spin). A
//! producer changes the state the waiter's condition reads (two steps, so the waiter re-arms
//! between them) and notifies after each; the waiter waits for the first step, then for the
//! second. The property: the waiter never sleeps through a notification (loom reports a
//! deadlock if it does), and it sees each step once it returns. The broken twin
//! (`signal_notify_skips_fence`) drops the producer's `fence(SeqCst)`: its read of the waiter's
//! `waiting` flag may then miss the waiter's announcement while the waiter's re-check misses the
//! new state, and the wake-up is lost.
#![cfg(loom)]

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use parjob::__loom::SignalModel;
use parjob_loom_tests::model;

#[test]
fn no_notification_is_lost_across_re_arms() {
    model("signal", 3, || {
        let step = Arc::new(AtomicUsize::new(0));
        let signal = SignalModel::for_current_thread();
        let producer = {
            let (step, signal) = (Arc::clone(&step), signal.clone());
            loom::thread::spawn(move || {
                for k in 1..=2 {
                    // Relaxed, as a `Parallel` chunk count or flag: the handshake's fences order it.
                    step.store(k, Ordering::Relaxed);
                    signal.notify();
                }
            })
        };
        signal.wait_while(|| step.load(Ordering::Relaxed) < 1);
        signal.wait_while(|| step.load(Ordering::Relaxed) < 2);
        assert_eq!(step.load(Ordering::Relaxed), 2);
        producer.join().unwrap();
    });
}
