//! User code that panics where the library drops or reports values: a result's, a task's or the
//! input's `Drop`, a progress callback. Each call must end with its first panic (or succeed), drop
//! every value it owns exactly once, never drop one while a panic unwinds (the process would
//! abort), and leave the pool working.

use parjob::{Backend, Delayed, Parallel, ThreadPool, ThreadPoolBuilder};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Runs `f` on its own thread; fails the test if it does not finish within 20 s (a hang).
fn within_20s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the call hung (or panicked outside catch_unwind)")
}

/// A value that counts its drops in its counter (one per test: tests run at once), then panics,
/// even while a panic unwinds (where that would abort the process).
#[derive(Debug)]
struct PanicsOnDrop(&'static AtomicUsize);
impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
        panic!("PanicsOnDrop::drop");
    }
}

/// The message of a caught panic.
fn message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("<not a message>")
}

fn pool_works(pool: &ThreadPool) {
    let p = pool.clone();
    assert_eq!(within_20s(move || p.install(|| 7)), 7);
}

/// A call of exactly two tasks runs them with `join`: task 0 returns a value whose `Drop` panics
/// and task 1 panics. That value was dropped while task 1's panic unwound (an abort); it must be
/// dropped contained, and task 1's panic resumed. The same for `join` itself.
#[test]
fn a_pair_call_drops_the_first_result_contained_when_the_second_task_panics() {
    static DROPPED: AtomicUsize = AtomicUsize::new(0);
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for round in 0..50 {
        DROPPED.store(0, Ordering::SeqCst);
        let p = pool.clone();
        let caught = catch_unwind(AssertUnwindSafe(|| {
            Parallel::new()
                .backend(Backend::Pool(p))
                .run((0..2).map(|i| {
                    Delayed::new(move || {
                        if i == 1 {
                            std::thread::sleep(Duration::from_micros(round % 3 * 100));
                            panic!("task 1");
                        }
                        PanicsOnDrop(&DROPPED)
                    })
                }))
        }));
        assert_eq!(message(&*caught.expect_err("task 1 panicked")), "task 1");
        assert_eq!(DROPPED.load(Ordering::SeqCst), 1, "round {round}");
    }
    // `join` from outside the pool and on a worker: A's value, B's panic; B runs inline after A
    // (A is quick) or on another thread (A is slow enough for B to be taken).
    for round in 0..50 {
        let a = || {
            std::thread::sleep(Duration::from_millis(round % 2 * 5));
            PanicsOnDrop(&DROPPED)
        };
        DROPPED.store(0, Ordering::SeqCst);
        let caught = catch_unwind(AssertUnwindSafe(|| pool.join(a, || panic!("B"))));
        assert_eq!(message(&*caught.expect_err("B panicked")), "B");
        assert_eq!(DROPPED.load(Ordering::SeqCst), 1, "round {round}");
        DROPPED.store(0, Ordering::SeqCst);
        let caught = catch_unwind(AssertUnwindSafe(|| {
            pool.install(|| parjob::join(a, || panic!("B")))
        }));
        assert_eq!(message(&*caught.expect_err("B panicked")), "B");
        assert_eq!(DROPPED.load(Ordering::SeqCst), 1, "round {round}");
    }
    pool_works(&pool);
}

/// A call of exactly two tasks whose progress callback panics: both results (whose `Drop`
/// panics) are dropped contained, and the callback's panic resumed.
#[test]
fn a_pair_call_whose_progress_callback_panics_drops_both_results() {
    static DROPPED: AtomicUsize = AtomicUsize::new(0);
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let caught = catch_unwind(AssertUnwindSafe(|| {
        Parallel::new()
            .backend(Backend::Pool(pool.clone()))
            .on_progress(|_, _| panic!("progress"))
            .run((0..2).map(|_| Delayed::new(|| PanicsOnDrop(&DROPPED))))
    }));
    assert_eq!(
        message(&*caught.expect_err("the callback panicked")),
        "progress"
    );
    assert_eq!(DROPPED.load(Ordering::SeqCst), 2);
    pool_works(&pool);
}
