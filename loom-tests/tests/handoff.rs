//! Model 7: the searcher hand-off — no worker sleeps while work waits.
//!
//! The real pool (2 workers, at most 1 searcher). The caller injects two jobs; the first blocks
//! until the second has run (a user-level dependency, so the only way to finish is for both
//! workers to run at once). A publisher that sees a searcher does not wake anyone: it leaves the
//! waking to the searcher, which, when it finds work and was the last searcher, wakes one more
//! sleeper (`stop_searching_found_work`). Without that hand-off the second job waits in the
//! injector while the other worker sleeps: loom reports a deadlock.
#![cfg(loom)]

use loom::sync::{Arc, Condvar, Mutex};
use parjob::{__loom, SharePolicy};
use parjob_loom_tests::{model, pool};

struct Gate {
    open: Mutex<bool>,
    cond: Condvar,
}

impl Gate {
    fn new() -> Arc<Gate> {
        Arc::new(Gate {
            open: Mutex::new(false),
            cond: Condvar::new(),
        })
    }
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.cond.notify_all();
    }
    fn wait(&self) {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.cond.wait(open).unwrap();
        }
    }
}

#[test]
fn second_job_runs_while_first_blocks() {
    model("handoff", 1, || {
        let pool = pool(2, SharePolicy::Lazy);
        let second_ran = Gate::new();
        let first_done = Gate::new();
        {
            let (second_ran, first_done) = (Arc::clone(&second_ran), Arc::clone(&first_done));
            __loom::spawn_detached(&pool, move || {
                second_ran.wait();
                first_done.open();
            });
        }
        {
            let second_ran = Arc::clone(&second_ran);
            __loom::spawn_detached(&pool, move || second_ran.open());
        }
        first_done.wait();
        drop(pool);
    });
}
