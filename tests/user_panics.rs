//! User code that panics where the library drops or reports values: a result's, a task's or the
//! input's `Drop`, a progress callback. Each call must end with its first panic (or succeed), drop
//! every value it owns exactly once, never drop one while a panic unwinds (the process would
//! abort), and leave the pool working.

use parjob::{delayed, Backend, BatchSize, Delayed, Parallel, ThreadPool, ThreadPoolBuilder};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

mod common;
use common::{panic_message as message, within_20s, Bomb, PanicsOnDrop};

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
                .n_jobs(2)
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
            .n_jobs(2)
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

/// Panics when dropped unless the task ran (a task's argument that must run to be dropped).
struct Armed(&'static AtomicUsize);
impl Drop for Armed {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
        panic!("an unrun task's argument dropped");
    }
}

/// A task that runs its `Armed` argument safely (counting in `ran`) after `sleep_ms`.
fn defuse(ran: &'static AtomicUsize, sleep_ms: u64) -> impl Fn(Armed) -> usize + Send + Copy {
    move |armed: Armed| {
        std::thread::sleep(Duration::from_millis(sleep_ms));
        std::mem::forget(armed);
        ran.fetch_add(1, Ordering::SeqCst)
    }
}

/// Streams dropped early, or ended by a task's panic, while queued tasks whose arguments panic
/// when dropped unrun are still waiting: those tasks are dropped one by one, contained (they were
/// dropped plainly, and the second one's panic, while the first one's unwound, aborted).
#[test]
fn streams_drop_unstarted_tasks_contained() {
    static RAN: AtomicUsize = AtomicUsize::new(0);
    static UNRUN: AtomicUsize = AtomicUsize::new(0);
    // Arguments made (the input is lazy: only the tasks pulled exist), and of them the ones whose
    // task panicked and forgot it.
    static MADE: AtomicUsize = AtomicUsize::new(0);
    static FORGOTTEN: AtomicUsize = AtomicUsize::new(0);
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let parallel = || {
        Parallel::new()
            .backend(Backend::Pool(pool.clone()))
            .batch_size(BatchSize::Fixed(1))
            .pre_dispatch(16)
    };
    let tasks = |panics_at: Option<usize>| {
        (0..64).map(move |i| {
            MADE.fetch_add(1, Ordering::SeqCst);
            let run = defuse(&RAN, 20);
            delayed(move |armed: Armed| {
                if Some(i) == panics_at {
                    std::mem::forget(armed);
                    FORGOTTEN.fetch_add(1, Ordering::SeqCst);
                    panic!("task {i}");
                }
                run(armed)
            })(Armed(&UNRUN))
        })
    };
    // Dropped after one result.
    let mut ordered = parallel().run_iter(tasks(None));
    assert!(ordered.next().is_some());
    drop(ordered);
    let mut unordered = parallel().run_unordered(tasks(None));
    assert!(unordered.next().is_some());
    drop(unordered);
    // Ended by a task's panic: that panic is the one `next()` resumes.
    let mut ordered = parallel().run_iter(tasks(Some(0)));
    let caught = catch_unwind(AssertUnwindSafe(|| ordered.next()));
    assert_eq!(message(&*caught.expect_err("task 0 panicked")), "task 0");
    assert!(ordered.next().is_none());
    drop(ordered);
    let borrowed = AtomicUsize::new(0);
    let caught = catch_unwind(AssertUnwindSafe(|| {
        parallel().scope_iter(
            (0..64).map(|i| {
                MADE.fetch_add(1, Ordering::SeqCst);
                let borrowed = &borrowed;
                let run = defuse(&RAN, 20);
                delayed(move |armed: Armed| {
                    if i == 0 {
                        std::mem::forget(armed);
                        FORGOTTEN.fetch_add(1, Ordering::SeqCst);
                        panic!("task 0");
                    }
                    borrowed.fetch_add(1, Ordering::SeqCst);
                    run(armed)
                })(Armed(&UNRUN))
            }),
            |results| results.count(),
        )
    }));
    assert_eq!(message(&*caught.expect_err("task 0 panicked")), "task 0");
    let settled = borrowed.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(60));
    assert_eq!(
        borrowed.load(Ordering::SeqCst),
        settled,
        "a task ran after scope_iter"
    );
    // Every argument made was run, forgotten by its panicking task, or dropped unrun, none
    // leaked (the streams dropped on a pool let their running batches finish in the background:
    // wait for them), and the streams did drop queued tasks, the path under test.
    let accounted = || {
        RAN.load(Ordering::SeqCst) + UNRUN.load(Ordering::SeqCst) + FORGOTTEN.load(Ordering::SeqCst)
    };
    let made = MADE.load(Ordering::SeqCst);
    let waited_until = std::time::Instant::now() + Duration::from_secs(10);
    while accounted() < made && std::time::Instant::now() < waited_until {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(accounted(), made, "an argument leaked or ran twice");
    assert!(
        UNRUN.load(Ordering::SeqCst) > 0,
        "no queued task was dropped"
    );
    pool_works(&pool);
}

/// A progress callback that panics once while a stream reads on: no result is lost (the
/// chunks taken for that report were neither handed out nor kept: reading on waited forever),
/// and a scoped stream whose consumer does not catch it drops its unread results contained.
#[test]
fn a_stream_whose_progress_callback_panics_loses_no_result() {
    static DROPPED: AtomicUsize = AtomicUsize::new(0);
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for ordered in [true, false] {
        let p = pool.clone();
        let got = within_20s(move || {
            let parallel = Parallel::new()
                .backend(Backend::Pool(p))
                .batch_size(BatchSize::Fixed(1))
                .on_progress(|done, _| {
                    if done == 3 {
                        panic!("progress 3");
                    }
                });
            let tasks = (0..12usize).map(|i| delayed(|i: usize| i * 10)(i));
            let mut stream: Box<dyn Iterator<Item = (usize, usize)>> = if ordered {
                Box::new(parallel.run_iter(tasks).enumerate())
            } else {
                Box::new(parallel.run_unordered(tasks))
            };
            let mut got = Vec::new();
            let mut panics = 0;
            loop {
                match catch_unwind(AssertUnwindSafe(|| stream.next())) {
                    Ok(Some(item)) => got.push(item),
                    Ok(None) => break,
                    Err(payload) => {
                        assert_eq!(message(&*payload), "progress 3");
                        panics += 1;
                    }
                }
            }
            assert_eq!(panics, 1);
            got.sort();
            got
        });
        assert_eq!(got, (0..12).map(|i| (i, i * 10)).collect::<Vec<_>>());
    }
    // The consumer lets the callback's panic through: unread results dropped contained.
    let caught = catch_unwind(AssertUnwindSafe(|| {
        Parallel::new()
            .backend(Backend::Pool(pool.clone()))
            .batch_size(BatchSize::Fixed(1))
            .on_progress(|done, _| {
                if done >= 2 {
                    panic!("progress");
                }
            })
            .scope_iter(
                (0..8).map(|_| Delayed::new(|| PanicsOnDrop(&DROPPED))),
                |results| results.map(std::mem::forget).count(),
            )
    }));
    assert_eq!(
        message(&*caught.expect_err("the callback panicked")),
        "progress"
    );
    pool_works(&pool);
}

/// On the calling thread (`n_jobs(1)`) a stream runs each task in `next()`: a progress callback
/// that panics after the task ran must not lose its result (it was dropped, while the panic
/// unwound: an abort if its `Drop` panics; and `run_unordered` then gave the next result this
/// one's index).
#[test]
fn an_inline_stream_whose_progress_callback_panics_keeps_the_result() {
    static DROPPED: AtomicUsize = AtomicUsize::new(0);
    let parallel = Parallel::new().n_jobs(1).on_progress(|done, _| {
        if done == 2 {
            panic!("progress 2");
        }
    });
    let mut pairs = parallel.run_unordered((0..5usize).map(|i| delayed(|i: usize| i * 10)(i)));
    let mut got = Vec::new();
    loop {
        match catch_unwind(AssertUnwindSafe(|| pairs.next())) {
            Ok(Some(item)) => got.push(item),
            Ok(None) => break,
            Err(payload) => assert_eq!(message(&*payload), "progress 2"),
        }
    }
    assert_eq!(got, (0..5).map(|i| (i, i * 10)).collect::<Vec<_>>());
    let mut results = parallel.run_iter((0..5).map(|_| Delayed::new(|| PanicsOnDrop(&DROPPED))));
    assert!(catch_unwind(AssertUnwindSafe(|| results.next().map(std::mem::forget))).is_ok());
    let caught = catch_unwind(AssertUnwindSafe(|| results.next().map(std::mem::forget)));
    assert_eq!(
        message(&*caught.expect_err("the callback panicked")),
        "progress 2"
    );
    drop(results);
    assert_eq!(
        DROPPED.load(Ordering::SeqCst),
        1,
        "the kept result is dropped with the stream"
    );
}

/// `map` / `run_indexed` with a progress callback that panics: mid-call (the results written so
/// far leaked: the caller's ranges were never recorded) and at the last count, reported after
/// every index ran (the full result vector was dropped while the panic unwound: an abort).
#[test]
fn an_indexed_call_whose_progress_callback_panics_drops_every_result() {
    static DROPPED: AtomicUsize = AtomicUsize::new(0);
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let n = 200;
    for (backend, panics_at) in [
        (Backend::Pool(pool.clone()), 1),
        (Backend::Pool(pool.clone()), n),
        (Backend::WorkStealing, n),
        (Backend::Sequential, 1),
        (Backend::Sequential, n),
    ] {
        DROPPED.store(0, Ordering::SeqCst);
        let made = AtomicUsize::new(0);
        let items: Vec<usize> = (0..n).collect();
        let caught = catch_unwind(AssertUnwindSafe(|| {
            Parallel::new()
                .n_jobs(2)
                .backend(backend.clone())
                .on_progress(|done, _| {
                    if done == panics_at {
                        panic!("progress");
                    }
                })
                .map(&items, |_| {
                    made.fetch_add(1, Ordering::SeqCst);
                    PanicsOnDrop(&DROPPED)
                })
        }));
        assert_eq!(
            message(&*caught.expect_err("the callback panicked")),
            "progress"
        );
        assert_eq!(
            DROPPED.load(Ordering::SeqCst),
            made.load(Ordering::SeqCst),
            "{backend:?}, panics at {panics_at}"
        );
    }
    pool_works(&pool);
}

/// The deadline passes while the last pulled tasks run: `run` pulls the next task to see whether
/// anything was skipped, and drops it unrun; its argument's `Drop` panics. That panic unwound out
/// of the call while the results collected so far were dropped (an abort) or leaked: the unrun
/// task must be dropped contained, and the call fail with its timeout.
#[test]
fn a_deadline_whose_skipped_task_panics_when_dropped_still_times_out() {
    static RAN: AtomicUsize = AtomicUsize::new(0);
    static UNRUN: AtomicUsize = AtomicUsize::new(0);
    static DROPPED: AtomicUsize = AtomicUsize::new(0);
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for exact in [true, false] {
        let made = AtomicUsize::new(0);
        DROPPED.store(0, Ordering::SeqCst);
        let made_ref = &made;
        let tasks = (0..64).map(move |_| {
            let run = defuse(&RAN, 60);
            delayed(move |armed: Armed| {
                run(armed);
                made_ref.fetch_add(1, Ordering::SeqCst);
                PanicsOnDrop(&DROPPED)
            })(Armed(&UNRUN))
        });
        let caught = catch_unwind(AssertUnwindSafe(|| {
            let p = Parallel::new()
                .backend(Backend::Pool(pool.clone()))
                .batch_size(BatchSize::Fixed(1))
                .pre_dispatch(2)
                .deadline(Duration::from_millis(20));
            if exact {
                p.run(tasks)
            } else {
                p.run(tasks.filter(|_| true))
            }
        }));
        let payload = caught.expect_err("the deadline passed");
        assert!(
            message(&*payload).contains("timed out"),
            "{}",
            message(&*payload)
        );
        assert_eq!(
            DROPPED.load(Ordering::SeqCst),
            made.load(Ordering::SeqCst),
            "exact {exact}"
        );
    }
    pool_works(&pool);
}

/// A call whose deadline passes while its last tasks still run, none skipped, succeeds
/// (docs/joblib.md, "Timeouts"), and the counts of those tasks are reported at its very end, with
/// every result already in the output vector. A progress callback that panics there fails the call
/// and the results are dropped contained (left to the unwinding, a result whose `Drop` panicked
/// aborted the process).
#[test]
fn a_progress_panic_at_the_end_of_a_call_past_its_deadline_drops_every_result() {
    static DROPPED: AtomicUsize = AtomicUsize::new(0);
    let n = 4;
    // One worker per task, and with a deadline the calling thread does not run tasks itself: all
    // four start at once, and the driver leaves its loop at the deadline while they still run.
    let pool = ThreadPoolBuilder::new().num_threads(n).build().unwrap();
    let caught = catch_unwind(AssertUnwindSafe(|| {
        Parallel::new()
            .n_jobs(n as i32)
            .backend(Backend::Pool(pool.clone()))
            .batch_size(BatchSize::Fixed(1))
            .deadline(Duration::from_millis(30))
            .on_progress(|done, _| {
                if done == n {
                    panic!("progress at the end");
                }
            })
            .run((0..n).map(|_| {
                Delayed::new(|| {
                    std::thread::sleep(Duration::from_millis(150));
                    PanicsOnDrop(&DROPPED)
                })
            }))
    }));
    assert_eq!(
        message(&*caught.expect_err("the callback panicked")),
        "progress at the end"
    );
    assert_eq!(
        DROPPED.load(Ordering::SeqCst),
        n,
        "every result dropped once"
    );
    pool_works(&pool);
}

/// An input whose own `Drop` panics (unconditionally: also while a panic unwinds).
struct DropPanics<I>(I);
impl<I: Iterator> Iterator for DropPanics<I> {
    type Item = I::Item;
    fn next(&mut self) -> Option<I::Item> {
        self.0.next()
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}
impl<I> Drop for DropPanics<I> {
    fn drop(&mut self) {
        panic!("input dropped");
    }
}

/// The call drops its input, whose `Drop` panics, after a task panicked (with a payload whose
/// `Drop` panics too), or after the input's `next()` panicked: the first panic is the one resumed
/// (the input's replaced the task's, and dropped its payload while unwinding: an abort; after
/// the input's `next()` panicked the input was dropped while that panic unwound: an abort), on the
/// calling thread and on a pool, for `run` and for streams.
#[test]
fn an_input_whose_drop_panics_never_replaces_the_first_panic() {
    static DROPPED: AtomicUsize = AtomicUsize::new(0);
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    type Config = Box<dyn Fn() -> Parallel<'static>>;
    let configs: Vec<(&str, Config)> = vec![
        (
            "sequential",
            Box::new(|| Parallel::new().backend(Backend::Sequential)),
        ),
        ("pool", {
            let pool = pool.clone();
            Box::new(move || {
                Parallel::new()
                    .backend(Backend::Pool(pool.clone()))
                    .batch_size(BatchSize::Fixed(1))
            })
        }),
        ("pair", {
            let pool = pool.clone();
            // `n_jobs(2)` whatever the core count: two tasks on two runners take the pair path.
            Box::new(move || {
                Parallel::new()
                    .n_jobs(2)
                    .backend(Backend::Pool(pool.clone()))
            })
        }),
    ];
    for (name, config) in &configs {
        let n = if *name == "pair" { 2 } else { 8 };
        // A task panics with a payload whose `Drop` panics.
        DROPPED.store(0, Ordering::SeqCst);
        let caught = catch_unwind(AssertUnwindSafe(|| {
            config().run(DropPanics((0..n).map(|i| {
                Delayed::new(move || {
                    if i == n - 1 {
                        std::panic::panic_any(PanicsOnDrop(&DROPPED));
                    }
                    i
                })
            })))
        }));
        let payload = caught.expect_err("a task panicked");
        assert!(
            payload.is::<PanicsOnDrop>(),
            "{name}: {}",
            message(&*payload)
        );
        std::mem::forget(payload);
        assert_eq!(DROPPED.load(Ordering::SeqCst), 0, "{name}");
        // Every task succeeds: the input's panic is the call's, and the results are dropped.
        DROPPED.store(0, Ordering::SeqCst);
        let caught = catch_unwind(AssertUnwindSafe(|| {
            config().run(DropPanics(
                (0..n).map(|_| Delayed::new(|| PanicsOnDrop(&DROPPED))),
            ))
        }));
        assert_eq!(
            message(&*caught.expect_err("the input panicked")),
            "input dropped",
            "{name}"
        );
        assert_eq!(DROPPED.load(Ordering::SeqCst), n, "{name}");
        // The input's `next()` panics.
        let caught = catch_unwind(AssertUnwindSafe(|| {
            config().run(DropPanics((0..n).map(|i| {
                if i == n - 1 {
                    panic!("input next");
                }
                Delayed::new(move || i)
            })))
        }));
        assert_eq!(
            message(&*caught.expect_err("the input panicked")),
            "input next",
            "{name}"
        );
    }
    // Streams: the consumer lets a task's panic through, and the input's `next()` panics (on a
    // pool when the stream is made, on the calling thread in `next()`), with the stream dropped
    // while that panic unwinds.
    for config in [&configs[0].1, &configs[1].1] {
        let caught = catch_unwind(AssertUnwindSafe(|| {
            config().scope_iter(
                DropPanics((0..8).map(|i| {
                    Delayed::new(move || {
                        if i == 3 {
                            panic!("task 3");
                        }
                        i
                    })
                })),
                |results| results.count(),
            )
        }));
        assert_eq!(message(&*caught.expect_err("task 3 panicked")), "task 3");
        let caught = catch_unwind(AssertUnwindSafe(|| {
            config()
                .run_iter(DropPanics((0..8).map(|i| {
                    if i == 1 {
                        panic!("input next");
                    }
                    Delayed::new(move || i)
                })))
                .count()
        }));
        assert_eq!(
            message(&*caught.expect_err("the input panicked")),
            "input next"
        );
    }
    pool_works(&pool);
}

/// `map_into` assigns over the caller's values, whose `Drop` panics: the call fails with the first
/// such panic, and every old value is dropped exactly once (each slot holds its new value, or its
/// old one untouched), so dropping the buffer afterwards drops nothing twice.
#[test]
fn map_into_over_values_whose_drop_panics_drops_each_once() {
    static OLD: AtomicUsize = AtomicUsize::new(0);
    static NEW: AtomicUsize = AtomicUsize::new(0);
    struct Slot(bool);
    impl Drop for Slot {
        fn drop(&mut self) {
            if self.0 {
                OLD.fetch_add(1, Ordering::SeqCst);
                panic!("old value");
            }
            NEW.fetch_add(1, Ordering::SeqCst);
        }
    }
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let items: Vec<usize> = (0..100).collect();
    let mut out: Vec<Slot> = (0..100).map(|_| Slot(true)).collect();
    let caught = catch_unwind(AssertUnwindSafe(|| {
        Parallel::new()
            .backend(Backend::Pool(pool.clone()))
            .map_into(&items, &mut out, |_| Slot(false))
    }));
    assert_eq!(message(&*caught.expect_err("old")), "old value");
    let old = OLD.load(Ordering::SeqCst);
    let armed = out.iter().filter(|s| s.0).count();
    assert!(old >= 1);
    assert_eq!(old + armed, 100, "an old value dropped twice, or never");
    for s in &mut out {
        s.0 = false;
    }
    drop(out);
    assert_eq!(
        NEW.load(Ordering::SeqCst),
        100,
        "a slot dropped twice, or never"
    );
    pool_works(&pool);
}

/// `try_run` on a pool, failing fast on one of three errors, with `Ok` and `Err` values whose
/// `Drop` panics: the first error (by index) is returned, and every other value (results written
/// in place or in chunks, later errors) is dropped exactly once, contained.
#[test]
fn try_run_on_a_pool_drops_every_value_it_does_not_return() {
    static OK: AtomicUsize = AtomicUsize::new(0);
    static ERR: AtomicUsize = AtomicUsize::new(0);
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for round in 0..20 {
        OK.store(0, Ordering::SeqCst);
        ERR.store(0, Ordering::SeqCst);
        let (ok_made, err_made) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let out = Parallel::new()
            .backend(Backend::Pool(pool.clone()))
            .batch_size(BatchSize::Fixed(1 + round % 3))
            .try_run((0..40).map(|i| {
                let (ok_made, err_made) = (&ok_made, &err_made);
                Delayed::new(move || {
                    std::thread::sleep(Duration::from_micros(200));
                    if (10..13).contains(&i) {
                        err_made.fetch_add(1, Ordering::SeqCst);
                        Err(PanicsOnDrop(&ERR))
                    } else {
                        ok_made.fetch_add(1, Ordering::SeqCst);
                        Ok(PanicsOnDrop(&OK))
                    }
                })
            }));
        match out {
            Err(parjob::Error::Task { index, error }) => {
                assert!((10..13).contains(&index));
                std::mem::forget(error);
            }
            other => panic!("{:?}", other.map(|v| v.len()).map_err(|_| ())),
        }
        assert_eq!(OK.load(Ordering::SeqCst), ok_made.load(Ordering::SeqCst));
        assert_eq!(
            ERR.load(Ordering::SeqCst) + 1,
            err_made.load(Ordering::SeqCst)
        );
    }
    pool_works(&pool);
}

/// Tasks make inner calls (on the task's pool, as runners and drivers on its workers) whose tasks
/// panic with payloads whose `Drop` panics, on 1- and 2-thread pools: the outer call resumes one
/// such payload, neither call hangs, and the pool keeps working.
#[test]
fn nested_calls_whose_tasks_panic_with_bombs() {
    for threads in [1usize, 2] {
        let pool = ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let p = pool.clone();
        within_20s(move || {
            for round in 0..20 {
                let caught = catch_unwind(AssertUnwindSafe(|| {
                    Parallel::new()
                        .n_jobs(2)
                        .backend(Backend::Pool(p.clone()))
                        .batch_size(BatchSize::Fixed(1))
                        .run((0..6).map(|i| {
                            Delayed::new(move || {
                                let inner = Parallel::new().n_jobs(2);
                                let inner = if round % 2 == 0 {
                                    inner.on_progress(|_, _| {})
                                } else {
                                    inner
                                };
                                inner.run((0..5).map(|j| {
                                    Delayed::new(move || {
                                        if (i + j) % 3 == 0 {
                                            std::panic::panic_any(Bomb);
                                        }
                                        j
                                    })
                                }))
                            })
                        }))
                }));
                let payload = caught.expect_err("bombs");
                assert!(payload.is::<Bomb>());
                std::mem::forget(payload);
            }
        });
        pool_works(&pool);
    }
}

/// A `scope_iter` consumer panics while tasks that borrow its caller are in flight and unread
/// results (whose `Drop` panics) are queued: its panic is resumed after every task stopped (none
/// runs after). Then `run_iter` streams are forgotten mid-call: a leak, but later calls and the
/// pool are unaffected.
#[test]
fn a_panicking_consumer_settles_and_a_forgotten_stream_only_leaks() {
    static DROPPED: AtomicUsize = AtomicUsize::new(0);
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for round in 0..10 {
        let running = AtomicUsize::new(0);
        let ran = AtomicUsize::new(0);
        let caught = catch_unwind(AssertUnwindSafe(|| {
            Parallel::new()
                .backend(Backend::Pool(pool.clone()))
                .batch_size(BatchSize::Fixed(1 + round % 2))
                .scope_iter(
                    (0..50).map(|_| {
                        let (running, ran) = (&running, &ran);
                        Delayed::new(move || {
                            running.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(2));
                            ran.fetch_add(1, Ordering::SeqCst);
                            running.fetch_sub(1, Ordering::SeqCst);
                            PanicsOnDrop(&DROPPED)
                        })
                    }),
                    |results| {
                        for r in results.take(3) {
                            std::mem::forget(r);
                        }
                        panic!("consumer");
                    },
                )
        }));
        assert_eq!(message(&*caught.expect_err("consumer")), "consumer");
        assert_eq!(running.load(Ordering::SeqCst), 0);
        let settled = ran.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(10));
        assert_eq!(ran.load(Ordering::SeqCst), settled);
    }
    for _ in 0..5 {
        let mut stream = Parallel::new()
            .backend(Backend::Pool(pool.clone()))
            .batch_size(BatchSize::Fixed(1))
            .run_iter((0..50).map(|_| {
                Delayed::new(|| {
                    std::thread::sleep(Duration::from_millis(1));
                    PanicsOnDrop(&DROPPED)
                })
            }));
        std::mem::forget(stream.next());
        std::mem::forget(stream);
    }
    std::thread::sleep(Duration::from_millis(100));
    pool_works(&pool);
    let out = Parallel::new()
        .backend(Backend::Pool(pool.clone()))
        .run((0..100).map(|i| delayed(|i: i32| i)(i)));
    assert_eq!(out.len(), 100);
}

/// `try_run` on the calling thread (`n_jobs(1)`): a task fails with a value whose `Drop` panics,
/// then the progress callback, told of that task, panics. The callback's panic is the call's and
/// the failure is dropped once, contained (it was a local of the loop while that panic unwound,
/// and its `Drop` panicking there aborted the process).
#[test]
fn an_inline_failure_reported_to_a_panicking_callback_is_dropped_contained() {
    static DROPPED: AtomicUsize = AtomicUsize::new(0);
    let caught = catch_unwind(AssertUnwindSafe(|| {
        Parallel::new()
            .n_jobs(1)
            .on_progress(|_, _| panic!("progress"))
            .try_run(vec![Delayed::new(|| Err::<(), _>(PanicsOnDrop(&DROPPED)))])
    }));
    assert_eq!(
        message(&*caught.expect_err("the callback panicked")),
        "progress"
    );
    assert_eq!(
        DROPPED.load(Ordering::SeqCst),
        1,
        "the failure dropped once"
    );
}

/// A deadline on the calling thread (`n_jobs(1)`): the call pulls the next task to see whether
/// one is skipped, and that task's argument panics when dropped unrun. The call still fails with
/// its timeout (the task was left in a `Peekable`, dropped with the loop, and its panic replaced
/// the timeout), as the same call on a pool does.
#[test]
fn an_inline_deadline_whose_skipped_task_panics_when_dropped_still_times_out() {
    static RAN: AtomicUsize = AtomicUsize::new(0);
    static UNRUN: AtomicUsize = AtomicUsize::new(0);
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for n_jobs in [1, 2] {
        UNRUN.store(0, Ordering::SeqCst);
        let run = defuse(&RAN, 40);
        let tasks = (0..3)
            .map(move |_| delayed(move |armed: Armed| Ok::<_, ()>(run(armed)))(Armed(&UNRUN)));
        let result = Parallel::new()
            .n_jobs(n_jobs)
            .backend(Backend::Pool(pool.clone()))
            .deadline(Duration::from_millis(20))
            .try_run(tasks);
        assert!(
            matches!(result, Err(parjob::Error::Timeout { .. })),
            "n_jobs {n_jobs}: {result:?}"
        );
        assert!(
            UNRUN.load(Ordering::SeqCst) >= 1,
            "n_jobs {n_jobs}: a task was skipped"
        );
    }
    pool_works(&pool);
}

/// An input whose `size_hint` panics (the call asks it first, to size its output) and whose
/// `Drop` panics too: the `size_hint` panic is the call's and the input is dropped contained
/// (dropped by that unwinding, it aborted the process), for every entry point and plan.
#[test]
fn an_input_whose_size_hint_panics_is_dropped_contained() {
    static DROPS: AtomicUsize = AtomicUsize::new(0);
    struct BadHint(usize);
    impl Iterator for BadHint {
        type Item = Delayed<fn() -> u32>;
        fn next(&mut self) -> Option<Self::Item> {
            (self.0 > 0).then(|| {
                self.0 -= 1;
                Delayed::new((|| 1) as fn() -> u32)
            })
        }
        fn size_hint(&self) -> (usize, Option<usize>) {
            panic!("size_hint")
        }
    }
    impl Drop for BadHint {
        fn drop(&mut self) {
            DROPS.fetch_add(1, Ordering::SeqCst);
            panic!("input dropped");
        }
    }
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let mut calls = 0;
    for n_jobs in [1, 2] {
        let p = Parallel::new()
            .n_jobs(n_jobs)
            .backend(Backend::Pool(pool.clone()));
        let entries: [&dyn Fn(); 4] = [
            &|| drop(p.run(BadHint(4))),
            &|| drop(p.try_run(BadHint(4).map(|d| Delayed::new(move || Ok::<_, ()>(d.call()))))),
            &|| {
                let _ = p.run_iter(BadHint(4)).count();
            },
            &|| {
                let _ = p.run_unordered(BadHint(4)).count();
            },
        ];
        for (entry, call) in entries.iter().enumerate() {
            let caught = catch_unwind(AssertUnwindSafe(call));
            calls += 1;
            assert_eq!(
                message(&*caught.expect_err("size_hint panicked")),
                "size_hint",
                "n_jobs {n_jobs}, entry {entry}"
            );
            assert_eq!(
                DROPS.load(Ordering::SeqCst),
                calls,
                "the input dropped once"
            );
        }
    }
    pool_works(&pool);
}

/// A stream on the calling thread (`n_jobs(1)`) whose input panics: `next()` resumes that panic
/// and the stream ends, as on a pool. (The input was pulled again by the next `next()`, and
/// `run_unordered` handed its later tasks' results out under the indices of the ones before.)
#[test]
fn an_inline_stream_whose_input_panics_ends() {
    let at = 30u64;
    let tasks = (0..40u64).map(move |x| {
        if x == at {
            std::panic::panic_any(x);
        }
        delayed(|x: u64| x)(x)
    });
    for n_jobs in [2, 1] {
        for ordered in [true, false] {
            let p = Parallel::new()
                .n_jobs(n_jobs)
                .batch_size(BatchSize::Fixed(4))
                .pre_dispatch(2);
            let mut stream: Box<dyn Iterator<Item = (usize, u64)>> = if ordered {
                Box::new(p.run_iter(tasks.clone()).enumerate())
            } else {
                Box::new(p.run_unordered(tasks.clone()))
            };
            let (mut got, mut panics) = (Vec::new(), 0);
            for _ in 0..100 {
                match catch_unwind(AssertUnwindSafe(|| stream.next())) {
                    Ok(Some(pair)) => got.push(pair),
                    Ok(None) => break,
                    Err(payload) => {
                        assert_eq!(payload.downcast_ref::<u64>(), Some(&at));
                        panics += 1;
                    }
                }
            }
            got.sort_unstable();
            let expected: Vec<(usize, u64)> = (0..at).map(|x| (x as usize, x)).collect();
            assert_eq!(got, expected, "n_jobs {n_jobs}, ordered {ordered}");
            assert_eq!(panics, 1, "n_jobs {n_jobs}, ordered {ordered}");
        }
    }
}

/// The progress callback waits for a call of the same `Parallel` that another thread drives
/// (and that reports to the same callback). That call's reports are queued and delivered after
/// the callback returns, instead of its thread waiting for the callback forever (a hang); every
/// count of both calls is reported once.
#[test]
fn a_callback_that_waits_for_another_call_of_the_same_parallel_does_not_hang() {
    let seen = within_20s(|| {
        let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let shared: &'static std::sync::OnceLock<Parallel<'static>> =
            Box::leak(Box::new(std::sync::OnceLock::new()));
        let seen: &'static std::sync::Mutex<Vec<(usize, Option<usize>)>> =
            Box::leak(Box::new(std::sync::Mutex::new(Vec::new())));
        let nested = AtomicUsize::new(0);
        let parallel = Parallel::new().n_jobs(1).on_progress(move |done, total| {
            seen.lock().unwrap().push((done, total));
            if nested.fetch_add(1, Ordering::SeqCst) == 0 {
                // A call of the same Parallel on a pool worker, waited for here.
                let three = pool.install(|| {
                    shared
                        .get()
                        .expect("set")
                        .run((0..3).map(|x| delayed(|x: u32| x)(x)))
                });
                assert_eq!(three, vec![0, 1, 2]);
            }
        });
        assert!(shared.set(parallel).is_ok());
        let two = shared
            .get()
            .expect("set")
            .run((0..2).map(|x| delayed(|x: u32| x)(x)));
        assert_eq!(two, vec![0, 1]);
        seen.lock().unwrap().clone()
    });
    let of_two: Vec<_> = seen
        .iter()
        .filter(|r| r.1 == Some(2))
        .map(|r| r.0)
        .collect();
    let of_three: Vec<_> = seen
        .iter()
        .filter(|r| r.1 == Some(3))
        .map(|r| r.0)
        .collect();
    assert_eq!(of_two, vec![1, 2], "in order, each once: {seen:?}");
    assert_eq!(of_three, vec![1, 2, 3], "in order, each once: {seen:?}");
}

/// A two-task call's `finish` reports no new count but may still run the callback, for another
/// call's report queued meanwhile: here a stream of the same `Parallel`, read on another thread
/// while this call's callback runs. The callback panics on that report, inside the two-task
/// call's `finish`: both results (whose `Drop` panics) must be dropped contained and the
/// callback's panic be the call's. (Round 9 review: the process aborted, "panic in a destructor
/// during cleanup"; channels order the threads, no timing.)
#[test]
fn a_callback_panicking_on_a_queued_report_in_a_two_task_calls_finish_does_not_abort() {
    use std::sync::mpsc;
    static DROPPED: AtomicUsize = AtomicUsize::new(0);
    within_20s(|| {
        let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let (queued_tx, queued_rx) = mpsc::channel::<()>();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let mut first = true;
        let parallel = Parallel::new()
            .n_jobs(2)
            .backend(Backend::Pool(pool))
            .on_progress(move |done, total| {
                if total == Some(2) && done == 2 && first {
                    first = false;
                    // The stream reports while this thread holds the callback: its report is
                    // queued, and stays queued (the stream has not ended).
                    go_tx.send(()).unwrap();
                    queued_rx.recv().unwrap();
                }
                assert!(total != Some(3), "callback on the stream's queued report");
            });
        std::thread::scope(|s| {
            let parallel = &parallel;
            s.spawn(move || {
                go_rx.recv().unwrap();
                let mut stream = parallel.run_iter((0..3u64).map(|i| Delayed::new(move || i)));
                assert_eq!(stream.next(), Some(0));
                queued_tx.send(()).unwrap();
                let _ = release_rx.recv();
            });
            let caught = catch_unwind(AssertUnwindSafe(|| {
                parallel.run((0..2).map(|_| Delayed::new(|| PanicsOnDrop(&DROPPED))))
            }));
            release_tx.send(()).unwrap();
            let payload = caught.expect_err("the callback's panic is the call's");
            assert_eq!(message(&*payload), "callback on the stream's queued report");
            assert_eq!(
                DROPPED.load(Ordering::SeqCst),
                2,
                "both results dropped once"
            );
        });
    });
}

/// A stream asked for with an invalid configuration panics at once, while it still owns the
/// input: the input (whose `Drop` panics) is dropped contained first, so the call ends with the
/// configuration's panic (dropped by that panic's unwinding, the input aborted the process).
#[test]
fn an_invalid_stream_configuration_with_an_input_whose_drop_panics_does_not_abort() {
    use common::BreaksOnDrop;
    for ordered in [true, false] {
        let parallel = Parallel::new().n_jobs(2).pre_dispatch(0);
        let caught = catch_unwind(AssertUnwindSafe(|| {
            let tasks = BreaksOnDrop(0..4).map(|x| delayed(|x: u64| x + 1)(x));
            if ordered {
                drop(parallel.run_iter(tasks));
            } else {
                drop(parallel.run_unordered(tasks));
            }
        }));
        let payload = caught.expect_err("an invalid configuration panics");
        let message = message(&*payload);
        assert!(
            message.contains("invalid Parallel configuration"),
            "the configuration's panic, not the input's: {message}"
        );
    }
}

/// With a timeout every runner checks it before each task and the driver restarts its clock
/// after its own user code (round 13): the paths that run user code with a timeout set stay
/// contained. A progress callback that panics, an input that panics, a task that panics with a
/// `Bomb` payload, each among results whose `Drop` panics: the call ends with that first panic,
/// every result is dropped exactly once, and the pool keeps working.
#[test]
fn user_panics_with_a_timeout_set_are_contained() {
    static DROPPED: AtomicUsize = AtomicUsize::new(0);
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let made = AtomicUsize::new(0);
    let timed = || {
        Parallel::new()
            .n_jobs(2)
            .backend(Backend::Pool(pool.clone()))
            .timeout(Duration::from_secs(60))
    };
    let task = || {
        Delayed::new(|| {
            made.fetch_add(1, Ordering::SeqCst);
            PanicsOnDrop(&DROPPED)
        })
    };
    for case in ["callback", "input", "task"] {
        DROPPED.store(0, Ordering::SeqCst);
        made.store(0, Ordering::SeqCst);
        let caught = catch_unwind(AssertUnwindSafe(|| match case {
            "callback" => timed()
                .on_progress(|done, _| assert!(done < 10, "progress at 10"))
                .run((0..64).map(|_| task())),
            "input" => timed().run((0..64).map(|i| {
                assert!(i != 40, "input at 40");
                task()
            })),
            _ => timed().run((0..64).map(|i| {
                let made = &made;
                Delayed::new(move || {
                    if i == 40 {
                        std::panic::panic_any(Bomb);
                    }
                    made.fetch_add(1, Ordering::SeqCst);
                    PanicsOnDrop(&DROPPED)
                })
            })),
        }));
        let payload = caught.expect_err(case);
        match case {
            "callback" => assert_eq!(message(&*payload), "progress at 10"),
            "input" => assert_eq!(message(&*payload), "input at 40"),
            _ => assert!(payload.is::<Bomb>(), "{case}"),
        }
        // A `Bomb` panics when dropped: contained here.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
        assert_eq!(
            DROPPED.load(Ordering::SeqCst),
            made.load(Ordering::SeqCst),
            "{case}: every result made is dropped once"
        );
    }
    pool_works(&pool);
}
