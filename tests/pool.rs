//! The pool itself: install, current_thread_index, metrics, builder errors, shutdown, cross-pool
//! calls, many outside callers.

mod common;
use common::*;
use parjob::ThreadPoolBuilder;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};

#[test]
fn install_runs_on_a_worker_and_returns_the_value() {
    let pool = ThreadPoolBuilder::new().num_threads(3).build().unwrap();
    let (value, index) = pool.install(|| (40 + 2, parjob::current_thread_index()));
    assert_eq!(value, 42);
    assert!(index.unwrap() < 3);
    assert_eq!(parjob::current_thread_index(), None);
}

#[test]
fn install_propagates_panics_and_the_pool_survives() {
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for _ in 0..iterations(10, 2) {
        let err = catch_unwind(AssertUnwindSafe(|| {
            pool.install(|| -> u8 { panic!("install boom") })
        }))
        .unwrap_err();
        assert_eq!(err.downcast_ref::<&str>(), Some(&"install boom"));
    }
    assert_eq!(pool.install(|| 7), 7);
}

#[test]
fn thread_names_and_default_thread_count() {
    let pool = ThreadPoolBuilder::new()
        .thread_name(|i| format!("custom-{i}"))
        .build()
        .unwrap();
    assert_eq!(pool.num_threads(), parjob::cpu_count());
    let name = pool
        .install(|| std::thread::current().name().map(str::to_owned))
        .unwrap();
    assert!(name.starts_with("custom-"), "{name}");
}

#[test]
fn pinning_either_works_or_reports_a_typed_error() {
    match ThreadPoolBuilder::new()
        .num_threads(2)
        .pin_threads(true)
        .build()
    {
        Ok(pool) => {
            pool.install(|| parjob::join(|| 1, || 2));
            let metrics = pool.metrics();
            // On Linux core_affinity can pin; each pinned worker reports its core.
            for w in metrics.workers() {
                assert!(w.core.is_some(), "pinned worker without a core: {metrics}");
            }
        }
        Err(e) => assert!(e.is_pinning_unsupported(), "{e}"),
    }
}

#[test]
fn spawn_failure_is_a_typed_error() {
    let err = ThreadPoolBuilder::new()
        .num_threads(2)
        .stack_size(usize::MAX)
        .build()
        .unwrap_err();
    assert!(err.is_spawn_failure());
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn metrics_count_what_happened() {
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let before = pool.metrics().totals();
    for _ in 0..iterations(20, 2) {
        pool.install(|| fib_join(12));
    }
    let delta = pool.metrics().totals().since(&before);
    // Each install is one job taken from the injector.
    assert!(delta.injector_pops >= iterations(20, 2) as u64, "{delta:?}");
    assert!(delta.tasks_executed >= delta.injector_pops, "{delta:?}");
    assert_eq!(pool.metrics().workers().len(), 2);
    let table = pool.metrics().to_string();
    assert!(
        table.contains("steals") && table.contains("total"),
        "{table}"
    );
}

#[test]
fn idle_workers_sleep() {
    let pool = ThreadPoolBuilder::new()
        .num_threads(2)
        .spin_rounds(0)
        .build()
        .unwrap();
    pool.install(|| fib_join(15));
    // Wait (without timing assumptions) until both workers have parked at least once.
    let mut spins = 0u64;
    while pool.metrics().totals().sleeps < 2 {
        std::thread::yield_now();
        spins += 1;
        assert!(
            spins < 50_000_000,
            "workers never slept: {}",
            pool.metrics()
        );
    }
}

#[test]
fn many_outside_threads_call_into_one_pool_at_once() {
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let callers = 8;
    let barrier = Barrier::new(callers);
    std::thread::scope(|s| {
        for t in 0..callers {
            let (pool, barrier) = (&pool, &barrier);
            s.spawn(move || {
                barrier.wait();
                for i in 0..iterations(200, 3) {
                    let n = (t + i) as u64 % 16;
                    assert_eq!(pool.install(|| fib_join(n)), fib_seq(n));
                    assert_eq!(pool.join(|| n, || n + 1), (n, n + 1));
                    let mut hits = [0u8; 4];
                    pool.scope(|sc| {
                        for h in hits.iter_mut() {
                            sc.spawn(move |_| *h += 1);
                        }
                    });
                    assert_eq!(hits, [1; 4]);
                }
            });
        }
    });
}

#[test]
fn pools_calling_into_each_other_do_not_deadlock() {
    // Single-threaded pools are the hardest case: the only worker of A waits on B while B calls
    // back into A.
    for threads in [1, 2] {
        let a = ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let b = ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let hit = AtomicUsize::new(0);
        let total = a.install(|| {
            let (x, y) = parjob::join(
                || b.install(|| a.install(|| fib_join(10)) + b.join(|| 1, || 2).1),
                || {
                    b.scope(|s| {
                        s.spawn(|_| {
                            a.install(|| hit.fetch_add(1, Ordering::SeqCst));
                        });
                        s.spawn(|_| {
                            hit.fetch_add(1, Ordering::SeqCst);
                        });
                        0
                    })
                },
            );
            x + y
        });
        assert_eq!(total, 55 + 2);
        assert_eq!(hit.load(Ordering::SeqCst), 2);
    }
}

#[test]
fn nested_join_inside_scope_inside_install() {
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let results = Mutex::new(Vec::new());
    pool.install(|| {
        parjob::scope(|s| {
            for n in 0..10u64 {
                let results = &results;
                s.spawn(move |_| {
                    let (a, b) = parjob::join(|| fib_join(n), || fib_seq(n));
                    assert_eq!(a, b);
                    results.lock().unwrap().push(n);
                });
            }
        })
    });
    let mut got = results.into_inner().unwrap();
    got.sort();
    assert_eq!(got, (0..10).collect::<Vec<_>>());
}

#[test]
fn dropping_a_pool_with_work_in_flight_finishes_the_work() {
    let done = Arc::new(AtomicUsize::new(0));
    {
        let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let pool2 = pool.clone();
        let done2 = Arc::clone(&done);
        // An outside thread is inside the pool while the other handle is dropped.
        let caller = std::thread::spawn(move || {
            pool2.install(|| {
                parjob::scope(|s| {
                    for _ in 0..16 {
                        let done = Arc::clone(&done2);
                        s.spawn(move |_| {
                            fib_join(12);
                            done.fetch_add(1, Ordering::SeqCst);
                        });
                    }
                })
            })
        });
        drop(pool);
        caller.join().unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), 16);
}

#[test]
fn last_handle_dropped_on_its_own_worker_does_not_deadlock() {
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let inner = pool.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let outer = pool.clone();
    drop(pool);
    // Move the last-but-one handle in and drop it from a worker; then drop ours.
    outer.install(move || {
        drop(inner);
        tx.send(()).unwrap();
    });
    rx.recv().unwrap();
    drop(outer);
}

#[test]
fn building_and_dropping_many_pools_leaks_no_threads() {
    let rounds = iterations(1000, 5);
    let before = process_thread_count();
    for i in 0..rounds {
        let pool = ThreadPoolBuilder::new()
            .num_threads(1 + i % 3)
            .build()
            .unwrap();
        if i % 10 == 0 {
            assert_eq!(pool.install(|| fib_join(8)), 21);
        }
    }
    // Other tests run in parallel in this process and start their own pools, so compare with
    // slack for them, but not for a thousand leaked pools' worth of threads.
    if let (Some(before), Some(after)) = (before, process_thread_count()) {
        assert!(
            after <= before + 64,
            "threads before {before}, after {after}"
        );
    }
}

/// A thread name with a NUL byte (which std's `spawn` refuses with a panic) is a typed build
/// error, found before any worker starts: before round 9 `build` panicked from the middle of its
/// spawn loop, and the workers already started ran on, unowned.
#[test]
fn a_thread_name_with_a_nul_byte_is_a_build_error_and_starts_nothing() {
    let started = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&started);
    let err = parjob::ThreadPoolBuilder::new()
        .num_threads(3)
        .thread_name(|i| {
            if i == 2 {
                "third\0worker".to_string()
            } else {
                format!("worker-{i}")
            }
        })
        .start_handler(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .expect_err("a NUL byte in a thread name is an error");
    assert!(err.is_invalid_thread_name());
    assert!(!err.is_spawn_failure());
    assert_eq!(
        err.to_string(),
        r#"the name of worker 2 contains a NUL byte: "third\0worker""#
    );
    assert_eq!(started.load(Ordering::SeqCst), 0, "no worker started");
}

/// `thread_name` is user code, asked for every name before any worker starts: if it panics,
/// `build` ends with that panic and nothing was started.
#[test]
fn a_panicking_thread_name_starts_no_worker() {
    let started = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&started);
    let caught = catch_unwind(AssertUnwindSafe(|| {
        parjob::ThreadPoolBuilder::new()
            .num_threads(3)
            .thread_name(|i| {
                assert!(i != 2, "no name for worker 2");
                format!("worker-{i}")
            })
            .start_handler(move |_| {
                counter.fetch_add(1, Ordering::SeqCst);
            })
            .build()
    }));
    let payload = caught.expect_err("the name callback's panic is build's");
    assert_eq!(panic_message(&*payload), "no name for worker 2");
    assert_eq!(started.load(Ordering::SeqCst), 0, "no worker started");
}
