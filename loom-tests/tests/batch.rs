//! Model 10: a batch of injected jobs moved into a busy worker's own deque is announced.
//!
//! The real `Sleep`, the loom stand-in injector and deque, and the worker loop's real injector
//! step (`worker::take_injected`), without a pool around them. Two jobs sit in the injector. One
//! loom thread plays a *busy* worker (not counted as a searcher, so no searcher hand-off covers
//! it): it takes job 1 with `steal_batch_and_pop`, which also moves job 2 into its own deque, and
//! then waits for job 2 to be done. The other plays the only searcher: it looks in the injector
//! and the busy worker's deque, gives up, and sleeps (announce, `fence(SeqCst)`, re-check). The
//! property: job 2 gets done. The move is a publication, so `take_injected` runs the wake-up check
//! (`Sleep::new_work`). Without it, the searcher can re-check before the move becomes visible,
//! park, and sleep through it while the busy worker spins forever: loom stops at its branch limit.
#![cfg(loom)]

use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::Arc;
use loom::thread;
use parjob::__loom::SleepModel;
use parjob_loom_tests::model;

#[test]
fn batch_moved_from_injector_reaches_sleeping_peer() {
    model("batch", 2, || {
        let m = Arc::new(SleepModel::new(2, 1));
        m.inject(1);
        m.inject(2);
        let job2_done = Arc::new(AtomicBool::new(false));
        // The searcher is counted before the busy worker moves anything (it was woken for the
        // injected jobs), so `take_injected`'s check is what must wake it.
        assert!(m.start_searching());
        let searcher = {
            let (m, done) = (Arc::clone(&m), Arc::clone(&job2_done));
            thread::spawn(move || {
                m.register_current_thread(1);
                let mut searching = true;
                loop {
                    if done.load(Ordering::Acquire) {
                        if searching {
                            m.stop_searching_idle();
                        }
                        return;
                    }
                    if let Some(job) = m.take().or_else(|| m.steal_from_batch_owner()) {
                        if searching {
                            m.stop_searching_found_work();
                            searching = false;
                        }
                        if job == 2 {
                            done.store(true, Ordering::Release);
                        }
                        continue;
                    }
                    if searching {
                        m.stop_searching_idle();
                    }
                    let done = Arc::clone(&done);
                    searching = m.sleep(1, move || !done.load(Ordering::Acquire));
                }
            })
        };
        m.register_current_thread(0);
        match m.take_batch() {
            // Job 2 was moved into our deque (or the searcher took it): wait for it.
            Some(1) => {
                while !job2_done.load(Ordering::Acquire) {
                    // A blocked owner does not run its own deque here: that is the point.
                    thread::yield_now();
                }
            }
            // The searcher took job 1 first; job 2 is ours.
            Some(_) => job2_done.store(true, Ordering::Release),
            None => {}
        }
        // Shutdown of the model: the searcher leaves once job 2 is done (wake it if it sleeps).
        m.wake_all();
        searcher.join().unwrap();
        assert!(job2_done.load(Ordering::Acquire));
    });
}
