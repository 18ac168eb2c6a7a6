//! The one engine behind every `Parallel` entry point: panics whose payload's `Drop` panics, a
//! progress callback that drives another call, timeouts vs deadlines, streams that start at the
//! call, the scoped stream, and the splittable `map` / `run_indexed` form.

use parjob::{delayed, Backend, BatchSize, Delayed, Error, Parallel, ThreadPoolBuilder};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{within, within_20s, Bomb, PanicsOnDrop};

/// Regression (issue 9 via issue 10): tasks that `panic_any(Bomb)`. The call must return (by
/// panicking with one Bomb) only after every started task finished, no task may run after it
/// returned, and the pool must still work.
#[test]
fn a_payload_whose_drop_panics_never_lets_the_call_outlive_its_tasks() {
    for threads in [1usize, 2] {
        let pool = ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let p = pool.clone();
        let ok = within_20s(move || {
            let started = Arc::new(AtomicUsize::new(0));
            let finished = Arc::new(AtomicUsize::new(0));
            let returned = Arc::new(AtomicBool::new(false));
            let late = Arc::new(AtomicBool::new(false));
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Parallel::new()
                    .n_jobs(threads as i32)
                    .backend(Backend::Pool(p.clone()))
                    .batch_size(BatchSize::Fixed(1))
                    .run((0..32).map(|_| {
                        let (started, finished, returned, late) = (
                            Arc::clone(&started),
                            Arc::clone(&finished),
                            Arc::clone(&returned),
                            Arc::clone(&late),
                        );
                        Delayed::new(move || {
                            started.fetch_add(1, Ordering::SeqCst);
                            if returned.load(Ordering::SeqCst) {
                                late.store(true, Ordering::SeqCst);
                            }
                            std::thread::sleep(Duration::from_millis(2));
                            finished.fetch_add(1, Ordering::SeqCst);
                            std::panic::panic_any(Bomb)
                        })
                    }))
            }));
            let all_finished = started.load(Ordering::SeqCst) == finished.load(Ordering::SeqCst);
            returned.store(true, Ordering::SeqCst);
            let payload = caught.expect_err("a task panicked");
            let is_bomb = payload.is::<Bomb>();
            std::mem::forget(payload);
            std::thread::sleep(Duration::from_millis(50));
            let works = p.install(|| 7) == 7;
            (all_finished, is_bomb, late.load(Ordering::SeqCst), works)
        });
        assert_eq!(ok, (true, true, false, true), "threads {threads}");
    }
}

/// Review edge case: the `on_progress` callback used to run while its mutex was held, so a
/// callback that drives another call of the same `Parallel` deadlocked (or panicked).
#[test]
fn a_progress_callback_may_drive_another_call_of_the_same_parallel() {
    static SAME: std::sync::OnceLock<Parallel<'static>> = std::sync::OnceLock::new();
    static NESTED_SUM: AtomicUsize = AtomicUsize::new(0);
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let out = within_20s(|| {
        let p = SAME.get_or_init(|| {
            Parallel::new().n_jobs(2).on_progress(|_, _| {
                CALLS.fetch_add(1, Ordering::SeqCst);
                let nested = SAME
                    .get()
                    .unwrap()
                    .run((0..4usize).map(|x| delayed(|x: usize| x)(x)));
                NESTED_SUM.fetch_add(nested.iter().sum::<usize>(), Ordering::SeqCst);
            })
        });
        p.run((0..5usize).map(|x| delayed(|x: usize| x * 2)(x)))
    });
    assert_eq!(out, vec![0, 2, 4, 6, 8]);
    // The outer call reported its 5 tasks; each report ran a nested call of 4 tasks (whose own
    // reports are skipped while the callback is running).
    assert_eq!(CALLS.load(Ordering::SeqCst), 5);
    assert_eq!(NESTED_SUM.load(Ordering::SeqCst), 5 * 6);
}

/// Review edge case: in the stream's collection path a value whose `Drop` panics could lose the
/// chunks collected after it, and `next()` then waited forever. Payloads and unread results with a
/// panicking `Drop` are now contained: every other result still arrives, and dropping the stream
/// with such results unread neither panics nor hangs.
#[test]
fn values_whose_drop_panics_lose_no_chunks_in_a_stream() {
    struct Loud(#[allow(dead_code)] u32);
    impl Drop for Loud {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                panic!("Loud::drop");
            }
        }
    }
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let p = pool.clone();
    let (fine, panics) = within_20s(move || {
        let mut results = Parallel::new()
            .n_jobs(2)
            .backend(Backend::Pool(p.clone()))
            .batch_size(BatchSize::Fixed(1))
            .run_unordered((0..40u32).map(|i| {
                delayed(move |i: u32| {
                    if i % 10 == 3 {
                        std::panic::panic_any(Bomb)
                    }
                    i
                })(i)
            }));
        let mut fine = 0;
        let mut panics = 0;
        loop {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| results.next())) {
                Ok(Some(_)) => fine += 1,
                Ok(None) => break,
                Err(payload) => {
                    assert!(payload.is::<Bomb>());
                    std::mem::forget(payload);
                    panics += 1;
                }
            }
        }
        // Unread results whose Drop panics, dropped with the stream.
        let stream = Parallel::new()
            .n_jobs(2)
            .backend(Backend::Pool(p.clone()))
            .run_iter((0..100u32).map(|i| delayed(Loud)(i)));
        let mut stream = stream;
        std::mem::forget(stream.next());
        drop(stream);
        assert_eq!(p.install(|| 7), 7);
        (fine, panics)
    });
    // The first panic ends the stream; every result that arrived before it was handed out.
    assert_eq!(panics, 1);
    assert!(fine >= 3, "{fine} results before the panic");
}

/// `timeout` bounds each wait for the next result, `deadline` the whole call.
#[test]
fn timeout_bounds_each_wait_and_deadline_the_whole_call() {
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let steady = || {
        (0..40).map(|_| {
            delayed(|_: ()| -> Result<(), ()> {
                std::thread::sleep(Duration::from_millis(3));
                Ok(())
            })(())
        })
    };
    // Results arrive every few ms: a 200 ms timeout never fires, a 20 ms deadline does.
    let by_timeout = Parallel::new()
        .backend(Backend::Pool(pool.clone()))
        .timeout(Duration::from_millis(200))
        .try_run(steady());
    assert!(by_timeout.is_ok());
    let by_deadline = Parallel::new()
        .backend(Backend::Pool(pool.clone()))
        .deadline(Duration::from_millis(20))
        .try_run(steady());
    assert!(matches!(
        by_deadline,
        Err(Error::Timeout { timeout, .. }) if timeout == Duration::from_millis(20)
    ));
    // One result takes far longer than the timeout: the wait for it expires.
    let stuck = Parallel::new()
        .backend(Backend::Pool(pool.clone()))
        .batch_size(BatchSize::Fixed(1))
        .timeout(Duration::from_millis(30))
        .try_run((0..20u64).map(|i| {
            delayed(|i: u64| -> Result<u64, ()> {
                std::thread::sleep(Duration::from_millis(if i == 2 { 400 } else { 1 }));
                Ok(i)
            })(i)
        }));
    assert!(
        matches!(stuck, Err(Error::Timeout { timeout, .. }) if timeout == Duration::from_millis(30))
    );
}

/// For `run_unordered` the timeout waits for *any* result; for `run_iter`, for the next in order.
#[test]
fn unordered_timeout_waits_for_any_result() {
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let tasks = || {
        (0..12u64).map(|i| {
            delayed(|i: u64| {
                std::thread::sleep(Duration::from_millis(if i == 0 { 1500 } else { 5 }));
                i
            })(i)
        })
    };
    let parallel = || {
        Parallel::new()
            .backend(Backend::Pool(pool.clone()))
            .batch_size(BatchSize::Fixed(1))
            .timeout(Duration::from_millis(150))
    };
    let mut got = 0;
    let unordered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for _ in parallel().run_unordered(tasks()) {
            got += 1;
        }
    }));
    assert!(
        unordered.is_err(),
        "the slow task's result is never read in time"
    );
    assert_eq!(got, 11, "every fast result arrived within the timeout");
    let ordered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        parallel().run_iter(tasks()).next()
    }));
    let payload = ordered.expect_err("result 0 takes longer than the timeout");
    assert!(payload
        .downcast_ref::<String>()
        .unwrap()
        .contains("timed out"));
}

/// Streams start dispatching when made (joblib's generators start on the call), bounded by the
/// window.
#[test]
fn streams_dispatch_before_the_first_next() {
    let ran = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&ran);
    let results = Parallel::new()
        .n_jobs(2)
        .pre_dispatch(4)
        .batch_size(BatchSize::Fixed(1))
        .run_iter((0..100u32).map(move |i| {
            let ran = Arc::clone(&counter);
            delayed(move |i: u32| {
                ran.fetch_add(1, Ordering::SeqCst);
                i
            })(i)
        }));
    let start = Instant::now();
    while ran.load(Ordering::SeqCst) < 4 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        ran.load(Ordering::SeqCst),
        4,
        "the window's tasks ran, no more"
    );
    assert_eq!(results.take(3).collect::<Vec<_>>(), vec![0, 1, 2]);
}

/// The scoped stream borrows the caller's data and ends the call when its closure returns: no
/// task runs afterwards.
#[test]
fn scope_iter_borrows_and_ends_the_call_before_returning() {
    let words: Vec<String> = (0..200).map(|i| "x".repeat(i % 7)).collect();
    let running = AtomicUsize::new(0);
    let total_after = AtomicUsize::new(0);
    let first_long = Parallel::new()
        .n_jobs(2)
        .batch_size(BatchSize::Fixed(1))
        .scope_iter(
            words.iter().map(|w| {
                let running = &running;
                delayed(move |w: &String| {
                    running.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_micros(200));
                    let n = w.len();
                    running.fetch_sub(1, Ordering::SeqCst);
                    n
                })(w)
            }),
            |lengths| lengths.position(|n| n == 6),
        );
    total_after.store(running.load(Ordering::SeqCst), Ordering::SeqCst);
    assert_eq!(first_long, Some(6));
    assert_eq!(
        total_after.load(Ordering::SeqCst),
        0,
        "a task ran after scope_iter returned"
    );
}

#[test]
fn map_and_run_indexed_match_the_sequential_loop() {
    let numbers: Vec<f64> = (0..100_003).map(|i| i as f64).collect();
    let expected: Vec<f64> = numbers.iter().map(|x| x.sqrt()).collect();
    for threads in [1usize, 2, 3] {
        let pool = ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let p = Parallel::new().backend(Backend::Pool(pool.clone()));
        assert_eq!(p.map(&numbers, |x| x.sqrt()), expected);
        let mut out = vec![0.0; numbers.len()];
        p.map_into(&numbers, &mut out, |x| x.sqrt());
        assert_eq!(out, expected);
        let zipped = p.run_indexed(numbers.len(), |i| numbers[i] + expected[i]);
        assert_eq!(zipped[9], 12.0);
        assert!(p.run_indexed(0, |i| i).is_empty());
        // Nested, from inside the pool.
        let nested = pool.install(|| Parallel::new().run_indexed(1000, |i| i * 2));
        assert_eq!(nested, (0..1000).map(|i| i * 2).collect::<Vec<_>>());
    }
    assert_eq!(
        Parallel::new().n_jobs(1).map(&numbers, |x| x.sqrt()),
        expected
    );
}

/// A panic in `run_indexed` is resumed after every runner stopped, and every result already
/// written in place is dropped exactly once.
#[test]
fn a_panic_in_run_indexed_drops_written_results_and_waits() {
    #[derive(Debug)]
    struct Counted<'a>(&'a AtomicUsize);
    impl Drop for Counted<'_> {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let made = AtomicUsize::new(0);
    let dropped = AtomicUsize::new(0);
    let running = AtomicUsize::new(0);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Parallel::new()
            .backend(Backend::Pool(pool.clone()))
            .run_indexed(10_000, |i| {
                running.fetch_add(1, Ordering::SeqCst);
                if i == 5_000 {
                    running.fetch_sub(1, Ordering::SeqCst);
                    panic!("task 5000");
                }
                made.fetch_add(1, Ordering::SeqCst);
                let value = Counted(&dropped);
                running.fetch_sub(1, Ordering::SeqCst);
                value
            })
    }));
    assert_eq!(
        running.load(Ordering::SeqCst),
        0,
        "returned while a task ran"
    );
    let payload = caught.expect_err("task 5000 panicked");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"task 5000"));
    assert_eq!(made.load(Ordering::SeqCst), dropped.load(Ordering::SeqCst));
    assert_eq!(pool.install(|| 7), 7);
}

/// A call of exactly two tasks runs like `ThreadPool::join`: both tasks run at once (they may wait
/// for each other), errors and panics come back as for any call.
#[test]
fn two_task_calls_run_both_at_once_and_report_like_any_call() {
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for backend in [Backend::Pool(pool.clone()), Backend::WorkStealing] {
        let p = Parallel::new().n_jobs(2).backend(backend);
        let both = std::sync::Barrier::new(2);
        let out = p.run((0..2).map(|i| {
            let both = &both;
            Delayed::new(move || {
                both.wait();
                i * 10
            })
        }));
        assert_eq!(out, vec![0, 10]);
        let failed = p.try_run((0..2).map(|i| {
            delayed(|i: u32| {
                if i == 1 {
                    Err(format!("task {i}"))
                } else {
                    Ok(i)
                }
            })(i)
        }));
        assert!(matches!(failed, Err(Error::Task { index: 1, .. })));
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            p.run((0..2).map(|i| delayed(|i: u32| if i == 0 { panic!("first") } else { i })(i)))
        }));
        assert_eq!(
            panicked
                .expect_err("task 0 panicked")
                .downcast_ref::<&str>(),
            Some(&"first")
        );
    }
}

/// A task panics while later tasks of its batch, whose `Drop` panics unconditionally, are still
/// unrun: they are dropped after the panic is caught (one by one, contained), not while
/// unwinding (which would abort the process).
#[test]
fn unrun_tasks_of_a_panicking_batch_are_dropped_after_the_catch() {
    struct Grenade;
    impl Drop for Grenade {
        fn drop(&mut self) {
            panic!("Grenade::drop");
        }
    }
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Parallel::new()
            .backend(Backend::Pool(pool.clone()))
            .batch_size(BatchSize::Fixed(8))
            .run((0..8).map(|i| {
                let grenade = (i > 0).then(|| Grenade);
                Delayed::new(move || {
                    if i == 0 {
                        panic!("task 0");
                    }
                    std::mem::forget(grenade);
                })
            }))
    }));
    let payload = caught.expect_err("task 0 panicked");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"task 0"));
    assert_eq!(pool.install(|| 7), 7);
}

/// A task panics after others wrote results in place whose `Drop` panics: the call drops every
/// written result (each on its own, its panic discarded) and resumes the task's panic.
#[test]
fn written_results_whose_drop_panics_are_all_dropped_after_a_task_panic() {
    static DROPPED: AtomicUsize = AtomicUsize::new(0);
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let made = AtomicUsize::new(0);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Parallel::new()
            .backend(Backend::Pool(pool.clone()))
            .batch_size(BatchSize::Fixed(1))
            .pre_dispatch(2)
            .run((0..12).map(|i| {
                let made = &made;
                Delayed::new(move || {
                    if i == 6 {
                        panic!("task 6");
                    }
                    made.fetch_add(1, Ordering::SeqCst);
                    PanicsOnDrop(&DROPPED)
                })
            }))
    }));
    let payload = caught.expect_err("task 6 panicked");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"task 6"));
    assert_eq!(DROPPED.load(Ordering::SeqCst), made.load(Ordering::SeqCst));
    assert_eq!(pool.install(|| 7), 7);
}

/// `run`'s driver runs tasks straight from the input when it helps (no batch buffer), beside the
/// batches it queues: whatever the split, every task runs exactly once and its result lands at its
/// index, with results in place (exact length) or in vectors of their own (no exact length), with
/// plain results and with results that need dropping, on the default backend and on a pool.
#[test]
fn tasks_run_from_the_input_and_from_batches_land_in_order() {
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for n in [0usize, 1, 3, 5, 64, 1_000, 100_000] {
        for backend in [None, Some(Backend::Pool(pool.clone()))] {
            let parallel = match &backend {
                None => Parallel::new().n_jobs(2),
                Some(b) => Parallel::new().n_jobs(2).backend(b.clone()),
            };
            let runs = AtomicUsize::new(0);
            let runs = &runs;
            let plain: Vec<u64> = parallel.run((0..n as u64).map(|i| {
                Delayed::new(move || {
                    runs.fetch_add(1, Ordering::Relaxed);
                    i * 3
                })
            }));
            assert_eq!(plain, (0..n as u64).map(|i| i * 3).collect::<Vec<_>>());
            assert_eq!(runs.load(Ordering::Relaxed), n);
            // No exact length (`filter`): batches collect vectors of their own.
            let strings: Vec<String> = parallel.run(
                (0..n)
                    .filter(|_| true)
                    .map(|i| Delayed::new(move || i.to_string())),
            );
            assert_eq!(strings, (0..n).map(|i| i.to_string()).collect::<Vec<_>>());
        }
    }
}

/// A value that counts how many of its kind are alive.
#[derive(Debug)]
struct Counted<'a>(&'a AtomicUsize);
impl<'a> Counted<'a> {
    fn new(alive: &'a AtomicUsize) -> Self {
        alive.fetch_add(1, Ordering::SeqCst);
        Counted(alive)
    }
}
impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The input iterator panics part-way, while the driver may be running tasks straight from it:
/// the call resumes that panic, and every result already written (in place) and every task
/// already pulled is dropped before `run` unwinds.
#[test]
fn an_input_that_panics_while_the_driver_runs_from_it_loses_nothing() {
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for (backend, at) in [(false, 3usize), (false, 20_000), (true, 5), (true, 50_000)] {
        let alive = AtomicUsize::new(0);
        let alive_ref = &alive;
        let parallel = if backend {
            Parallel::new()
                .n_jobs(2)
                .backend(Backend::Pool(pool.clone()))
        } else {
            Parallel::new().n_jobs(2)
        };
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            parallel.run((0..100_000usize).map(|i| {
                if i == at {
                    std::panic::panic_any(at);
                }
                let task = Counted::new(alive_ref);
                Delayed::new(move || {
                    let _task = task;
                    Counted::new(alive_ref)
                })
            }))
        }));
        let payload = caught.expect_err("the input's panic is resumed");
        assert_eq!(payload.downcast_ref::<usize>(), Some(&at));
        assert_eq!(alive.load(Ordering::SeqCst), 0, "a task or result leaked");
    }
}

/// A 1-thread pool called from outside with `n_jobs(2)`: the calling thread runs short tasks
/// itself, straight from the input into their slots. A task that panics there, or a progress
/// callback that panics while those slots hold results, must resume its panic after every task
/// and result is dropped exactly once, and leave the caller and the pool usable.
#[test]
fn panics_while_the_caller_runs_tasks_from_the_input_drop_everything_once() {
    let pool = ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    for (task_panics_at, callback_panics_at) in [
        (Some(7usize), None),
        (Some(30_000), None),
        (None, Some(3usize)),
    ] {
        let alive = AtomicUsize::new(0);
        let alive_ref = &alive;
        let mut updates = 0usize;
        let parallel = Parallel::new()
            .n_jobs(2)
            .backend(Backend::Pool(pool.clone()))
            .on_progress(move |_, _| {
                updates += 1;
                if Some(updates) == callback_panics_at {
                    std::panic::panic_any("callback");
                }
            });
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            parallel.run((0..50_000usize).map(|i| {
                let task = Counted::new(alive_ref);
                Delayed::new(move || {
                    let _task = task;
                    if Some(i) == task_panics_at {
                        std::panic::panic_any(i);
                    }
                    Counted::new(alive_ref)
                })
            }))
        }));
        let payload = caught.expect_err("the panic is resumed");
        match task_panics_at {
            Some(at) => assert_eq!(payload.downcast_ref::<usize>(), Some(&at)),
            None => assert_eq!(payload.downcast_ref::<&str>(), Some(&"callback")),
        }
        assert_eq!(
            alive.load(Ordering::SeqCst),
            0,
            "a task or result leaked or was not dropped"
        );
        // The caller and the pool still work, on the pool and on the default backend.
        let squares = |p: Parallel| p.run((0..100u64).map(|x| delayed(|x: u64| x * x)(x)));
        let expected: Vec<u64> = (0..100).map(|x| x * x).collect();
        assert_eq!(
            squares(
                Parallel::new()
                    .n_jobs(2)
                    .backend(Backend::Pool(pool.clone()))
            ),
            expected
        );
        assert_eq!(squares(Parallel::new().n_jobs(2)), expected);
    }
}

/// [`within`] 60 s.
fn within_60s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    within(Duration::from_secs(60), f)
}

/// Slow tasks first, then cheap ones, with more jobs than the pool has threads.
fn slow_then_fast(parallel: Parallel) -> Vec<usize> {
    parallel.run((0..2000usize).map(|i| {
        Delayed::new(move || {
            if i < 6 {
                std::thread::sleep(Duration::from_millis(3));
            }
            i
        })
    }))
}

/// Regression: a 1-thread pool, `n_jobs(2)` from outside it. While the first tasks look slow the
/// driver stops helping and spawns a token; once cheap tasks bring the estimate down it helps
/// again. The token that then finished the last queued batch lingered (still counted as a
/// runner, so the driver ran nothing) and left without waking the driver, which waited forever.
/// A token leaving must never strand the driver; the watchdog bounds liveness, not speed.
#[test]
fn a_token_leaving_never_strands_the_driver_on_a_one_thread_pool() {
    let pool = ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    within_60s(move || {
        for round in 0..30 {
            let out = slow_then_fast(
                Parallel::new()
                    .n_jobs(2)
                    .backend(Backend::Pool(pool.clone())),
            );
            assert_eq!(out, (0..2000).collect::<Vec<_>>(), "round {round}");
        }
    });
}

/// The same class of strand under the default backend and other `pre_dispatch` settings, with
/// and without a limit (a driver that only dispatches).
#[test]
fn slow_then_fast_tasks_finish_under_every_dispatch_setting() {
    let pool = ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    within_60s(move || {
        for round in 0..5 {
            for pre in [1usize, 2, 4, usize::MAX] {
                let expected: Vec<usize> = (0..2000).collect();
                let on_pool = || Parallel::new().n_jobs(2).pre_dispatch(pre);
                let out = slow_then_fast(on_pool().backend(Backend::Pool(pool.clone())));
                assert_eq!(out, expected, "round {round}, pre_dispatch {pre}");
                let out = slow_then_fast(on_pool());
                assert_eq!(out, expected, "default backend, pre_dispatch {pre}");
                let limited = on_pool()
                    .backend(Backend::Pool(pool.clone()))
                    .timeout(Duration::from_secs(50));
                let out = limited.run((0..2000usize).map(|i| {
                    Delayed::new(move || {
                        if i < 6 {
                            std::thread::sleep(Duration::from_millis(3));
                        }
                        i
                    })
                }));
                assert_eq!(out, expected, "with a timeout, pre_dispatch {pre}");
            }
        }
    });
}

/// On the calling thread (`Backend::Sequential`, or `n_jobs(1)`), a task panics after others
/// returned results whose `Drop` panics (even while a panic unwinds): the call drops them each
/// contained and resumes the task's panic, as on a pool. Before, they were dropped while the
/// task's panic unwound, and the first one aborted the process. The same for an input that
/// panics, a progress callback that panics, and the results `try_run` does not return.
#[test]
fn on_the_calling_thread_results_whose_drop_panics_are_dropped_contained() {
    static DROPPED: AtomicUsize = AtomicUsize::new(0);
    let configs: [fn() -> Parallel<'static>; 3] = [
        || Parallel::new().backend(Backend::Sequential),
        || Parallel::new().n_jobs(1),
        // Not the plain loop: progress is reported after every task.
        || Parallel::new().n_jobs(1).on_progress(|_, _| {}),
    ];
    // `call` must resume a panic whose payload is `message`, after dropping `dropped` results.
    let expect_panic = |k: usize, message: &str, dropped: usize, call: &dyn Fn()| {
        DROPPED.store(0, Ordering::SeqCst);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(call));
        let payload = caught.expect_err(message);
        assert_eq!(payload.downcast_ref::<&str>(), Some(&message), "config {k}");
        assert_eq!(DROPPED.load(Ordering::SeqCst), dropped, "config {k}");
    };
    for (k, config) in configs.iter().enumerate() {
        // A task panics.
        expect_panic(k, "task 6", 6, &|| {
            config().run((0..12).map(|i| {
                Delayed::new(move || {
                    if i == 6 {
                        panic!("task 6");
                    }
                    PanicsOnDrop(&DROPPED)
                })
            }));
        });
        // The same through `run_indexed` (its own path; already contained).
        expect_panic(k, "task 6", 6, &|| {
            config().run_indexed(12, |i| {
                if i == 6 {
                    panic!("task 6");
                }
                PanicsOnDrop(&DROPPED)
            });
        });
        // The input panics.
        expect_panic(k, "input 4", 4, &|| {
            config().run((0..12).map(|i| {
                if i == 4 {
                    panic!("input 4");
                }
                Delayed::new(|| PanicsOnDrop(&DROPPED))
            }));
        });
        // `try_run` stops at task 5's error: the results before it are not returned.
        DROPPED.store(0, Ordering::SeqCst);
        let outcome = config().try_run((0..12).map(|i| {
            Delayed::new(move || {
                if i == 5 {
                    Err(i)
                } else {
                    Ok(PanicsOnDrop(&DROPPED))
                }
            })
        }));
        assert!(
            matches!(outcome, Err(parjob::Error::Task { index: 5, error: 5 })),
            "config {k}: {outcome:?}"
        );
        assert_eq!(DROPPED.load(Ordering::SeqCst), 5, "config {k}");
    }
    // A progress callback that panics after task 3.
    DROPPED.store(0, Ordering::SeqCst);
    let caught = std::panic::catch_unwind(|| {
        Parallel::new()
            .n_jobs(1)
            .on_progress(|done, _| {
                if done == 3 {
                    panic!("progress 3");
                }
            })
            .run((0..12).map(|_| Delayed::new(|| PanicsOnDrop(&DROPPED))))
    });
    let payload = caught.expect_err("the callback panicked");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"progress 3"));
    assert_eq!(DROPPED.load(Ordering::SeqCst), 3);
}
