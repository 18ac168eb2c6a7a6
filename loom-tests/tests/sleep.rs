//! Model 1: a push racing the last worker going to sleep — no lost wake-up.
//!
//! The real `Sleep` (`src/pool/sleep.rs`) and the loom stand-in injector, without a pool around
//! them: one loom thread plays the last awake worker (take work or search, stop searching,
//! `Sleep::sleep` with the worker loop's re-check "is any queue non-empty?"), the main thread is
//! the publisher (`push`, then `Sleep::new_work`: `fence(SeqCst)`, read the counters, wake one).
//! The property: the worker always gets the job, i.e. loom never finds every thread blocked.
//! Remove either fence or the sleeper's re-check and the store-buffering outcome (the publisher
//! reads "nobody sleeps", the sleeper reads "queue empty") parks the worker forever: deadlock.
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use parjob::__loom::SleepModel;
use parjob_loom_tests::model;

#[test]
fn push_racing_last_sleeper_is_not_lost() {
    model("sleep", 3, || {
        let m = Arc::new(SleepModel::new(1, 1));
        let worker = {
            let m = Arc::clone(&m);
            thread::spawn(move || {
                m.register_current_thread(0);
                let mut searching = false;
                loop {
                    if let Some(job) = m.take() {
                        if searching {
                            m.stop_searching_found_work();
                        }
                        return job;
                    }
                    if !searching {
                        searching = m.start_searching();
                    }
                    if searching {
                        m.stop_searching_idle();
                    }
                    // The pool's loop keeps sleeping until claimed or until there is work.
                    searching = m.sleep(0, || true);
                }
            })
        };
        m.inject(7);
        assert_eq!(worker.join().unwrap(), 7);
    });
}
