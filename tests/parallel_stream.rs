//! `run_iter` / `run_unordered`: order, backpressure, early drop, panics, timeouts.

use parjob::{delayed, BatchSize, Delayed, Parallel};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;
use common::within_20s;

#[test]
fn run_iter_yields_in_input_order() {
    for n_jobs in [1, 2, 4] {
        let out: Vec<u64> = Parallel::new()
            .n_jobs(n_jobs)
            .run_iter((0..500u64).map(|x| {
                delayed(|x: u64| {
                    if x % 50 == 0 {
                        std::thread::sleep(Duration::from_micros(300));
                    }
                    x * 3
                })(x)
            }))
            .collect();
        assert_eq!(
            out,
            (0..500).map(|x| x * 3).collect::<Vec<_>>(),
            "n_jobs {n_jobs}"
        );
    }
}

#[test]
fn run_unordered_yields_every_index_once() {
    let mut pairs: Vec<(usize, u64)> = Parallel::new()
        .n_jobs(3)
        .run_unordered((0..300u64).map(|x| delayed(|x: u64| x + 1)(x)))
        .collect();
    pairs.sort_unstable();
    assert_eq!(
        pairs,
        (0..300).map(|i| (i, i as u64 + 1)).collect::<Vec<_>>()
    );
}

#[test]
fn run_unordered_returns_fast_results_first() {
    // Task 0 is slow; the others are instant, so some of them arrive before it. On a pool of its
    // own: on the global pool, another test's long task could hold the second worker, and then
    // one worker runs every task in order.
    let pool = parjob::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let order: Vec<usize> = Parallel::new()
        .n_jobs(2)
        .backend(parjob::Backend::Pool(pool))
        .batch_size(BatchSize::Fixed(1))
        .run_unordered((0..6u64).map(|i| {
            delayed(|i: u64| {
                if i == 0 {
                    std::thread::sleep(Duration::from_millis(100));
                }
                i
            })(i)
        }))
        .map(|(index, _)| index)
        .collect();
    assert_eq!(order.len(), 6);
    assert_ne!(order[0], 0, "order {order:?}");
}

#[test]
fn backpressure_bounds_unread_results() {
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&pulled);
    let mut results = Parallel::new()
        .n_jobs(2)
        .pre_dispatch(4)
        .run_iter((0..10_000u64).map(move |x| {
            counter.fetch_add(1, Ordering::SeqCst);
            delayed(|x: u64| {
                std::thread::sleep(Duration::from_micros(200));
                x
            })(x)
        }));
    assert_eq!(results.next(), Some(0));
    // The consumer pauses: workers finish what was dispatched, and nothing more is pulled.
    std::thread::sleep(Duration::from_millis(20));
    let while_paused = pulled.load(Ordering::SeqCst);
    assert!(
        while_paused <= 1 + 4,
        "{while_paused} tasks pulled with one result read"
    );
    std::thread::sleep(Duration::from_millis(10));
    assert_eq!(pulled.load(Ordering::SeqCst), while_paused);
    assert_eq!(results.next(), Some(1));
}

#[test]
fn dropping_run_iter_early_stops_dispatch_and_leaks_nothing() {
    let started = Arc::new(AtomicUsize::new(0));
    // Each result owns an Arc clone: if results (or tasks) leaked, the count would stay high.
    let token = Arc::new(());
    {
        let started = Arc::clone(&started);
        let token = Arc::clone(&token);
        let mut results = Parallel::new()
            .n_jobs(2)
            .run_iter((0..100_000u64).map(move |x| {
                let started = Arc::clone(&started);
                let token = Arc::clone(&token);
                Delayed::new(move || {
                    started.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_micros(100));
                    (x, token)
                })
            }));
        assert_eq!(results.next().map(|(x, _)| x), Some(0));
        assert_eq!(results.next().map(|(x, _)| x), Some(1));
    }
    let at_drop = started.load(Ordering::SeqCst);
    assert!(at_drop < 1000, "{at_drop} tasks started");
    // Running batches finish in the background and drop their results; then only ours is left.
    let mut waited = 0;
    while Arc::strong_count(&token) > 1 && waited < 2_000 {
        std::thread::sleep(Duration::from_millis(1));
        waited += 1;
    }
    assert_eq!(Arc::strong_count(&token), 1, "tasks or results leaked");
    assert!(started.load(Ordering::SeqCst) <= at_drop + 64);
}

#[test]
fn a_panic_is_resumed_at_its_position() {
    let mut results = Parallel::new()
        .n_jobs(2)
        .batch_size(BatchSize::Fixed(1))
        .run_iter((0..20u32).map(|x| {
            delayed(|x: u32| {
                if x == 5 {
                    panic!("five");
                }
                x
            })(x)
        }));
    for expected in 0..5 {
        assert_eq!(results.next(), Some(expected));
    }
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| results.next()));
    assert_eq!(
        caught.expect_err("task 5 panicked").downcast_ref::<&str>(),
        Some(&"five")
    );
    assert_eq!(results.next(), None, "the stream is over after a panic");
}

#[test]
fn timeout_limits_each_wait() {
    let caught = std::panic::catch_unwind(|| {
        Parallel::new()
            .n_jobs(2)
            .timeout(Duration::from_millis(20))
            .run_iter((0..4u32).map(|x| {
                delayed(|x: u32| {
                    std::thread::sleep(Duration::from_millis(if x == 1 { 300 } else { 1 }));
                    x
                })(x)
            }))
            .collect::<Vec<_>>()
    });
    let payload = caught.expect_err("the wait for result 1 times out");
    assert!(payload
        .downcast_ref::<String>()
        .unwrap()
        .contains("timed out"));
    // Each wait is short here, so a generous limit never fires.
    let out: Vec<u32> = Parallel::new()
        .n_jobs(2)
        .timeout(Duration::from_secs(10))
        .run_iter((0..50u32).map(|x| delayed(|x: u32| x)(x)))
        .collect();
    assert_eq!(out.len(), 50);
}

#[test]
fn sequential_run_iter_is_lazy() {
    let ran = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&ran);
    let mut results = Parallel::new().n_jobs(1).run_iter((0..10u32).map(move |x| {
        let counter = Arc::clone(&counter);
        Delayed::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            x
        })
    }));
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    assert_eq!(results.next(), Some(0));
    assert_eq!(results.next(), Some(1));
    assert_eq!(ran.load(Ordering::SeqCst), 2);
}

#[test]
fn nested_stream_on_a_one_thread_pool_does_not_deadlock() {
    let pool = parjob::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let total: u32 = pool.install(|| {
        Parallel::new()
            .backend(parjob::Backend::Pool(pool.clone()))
            .n_jobs(2)
            .run_iter((0..10u32).map(|x| delayed(|x: u32| x)(x)))
            .sum()
    });
    assert_eq!(total, 45);
}

#[test]
fn progress_is_reported_from_streams() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let out: Vec<u32> = Parallel::new()
        .n_jobs(2)
        .on_progress(move |done, total| sink.lock().unwrap().push((done, total)))
        .run_iter((0..40u32).map(|x| delayed(|x: u32| x)(x)))
        .collect();
    assert_eq!(out.len(), 40);
    let seen = seen.lock().unwrap();
    assert_eq!(*seen, (1..=40).map(|d| (d, Some(40))).collect::<Vec<_>>());
}

/// Regression (review finding 4): after the iterator is dropped, the token that runs last frees
/// the unread results on a pool worker; a result whose `Drop` panics unwound that worker and
/// killed the pool.
#[test]
fn unread_results_with_a_panicking_drop_do_not_kill_the_pool() {
    static FINISHED: AtomicUsize = AtomicUsize::new(0);
    static DROPS: AtomicUsize = AtomicUsize::new(0);
    struct PanicOnDrop(u32);
    impl Drop for PanicOnDrop {
        fn drop(&mut self) {
            if self.0 >= 1 {
                DROPS.fetch_add(1, Ordering::SeqCst);
                panic!("R::drop panics for {}", self.0);
            }
        }
    }
    let pool = parjob::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let mut it = Parallel::new()
        .n_jobs(2)
        .backend(parjob::Backend::Pool(pool.clone()))
        .batch_size(BatchSize::Fixed(1))
        .pre_dispatch(4)
        .run_iter((0..4u32).map(|i| {
            delayed(|i: u32| {
                let r = PanicOnDrop(i);
                if i >= 1 {
                    FINISHED.fetch_add(1, Ordering::SeqCst);
                }
                r
            })(i)
        }));
    assert_eq!(it.next().map(|r| r.0), Some(0));
    // Every task was dispatched by that `next()`; let them all run, then drop the three results
    // unread (the last `Arc`, and with it those results, may go with a token on the worker).
    for _ in 0..10_000 {
        if FINISHED.load(Ordering::SeqCst) == 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(it);
    for _ in 0..10_000 {
        if DROPS.load(Ordering::SeqCst) == 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        DROPS.load(Ordering::SeqCst),
        3,
        "every unread result is dropped"
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let p = pool.clone();
    std::thread::spawn(move || tx.send(p.install(|| 7)).unwrap());
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).ok(),
        Some(7),
        "the pool's only worker died"
    );
}

/// Regression (review finding 3): a consumer on a pool worker, with the call on another pool,
/// blocked its worker on a condition variable instead of helping its own pool; tasks that need the
/// consumer's pool then deadlocked (as `run` does not).
#[test]
fn a_consumer_on_a_worker_keeps_its_pool_running() {
    for unordered in [false, true] {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let a = parjob::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap();
            let b = parjob::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap();
            let a2 = a.clone();
            let sum: u64 = a.install(|| {
                let p = Parallel::new()
                    .n_jobs(2)
                    .backend(parjob::Backend::Pool(b.clone()));
                let tasks = (0..4u64).map(move |i| {
                    let a3 = a2.clone();
                    delayed(move |i: u64| a3.install(|| i * 10))(i)
                });
                if unordered {
                    p.run_unordered(tasks).map(|(_, r)| r).sum()
                } else {
                    p.run_iter(tasks).sum()
                }
            });
            tx.send(sum).unwrap();
        });
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)).ok(),
            Some(60),
            "unordered {unordered}: deadlocked"
        );
    }
}

/// The stream timeout still fires for a consumer on a pool worker (it now waits through a signal).
#[test]
fn stream_timeout_fires_for_a_consumer_on_a_worker() {
    // The tasks run on another pool (a consumer on the tasks' own pool would run a blocked task
    // itself: its deadline is checked between jobs).
    let pool = parjob::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let tasks_pool = parjob::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let gate = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let g = Arc::clone(&gate);
    // (`tasks_pool` outlives the call: dropping the last handle would wait for the blocked tasks.)
    let caught = pool.install(|| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Parallel::new()
                .n_jobs(2)
                .backend(parjob::Backend::Pool(tasks_pool.clone()))
                .timeout(Duration::from_millis(20))
                .run_iter((0..2u32).map(|i| {
                    let g = Arc::clone(&g);
                    delayed(move |i: u32| {
                        while !g.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        i
                    })(i)
                }))
                .count()
        }))
    });
    gate.store(true, Ordering::SeqCst);
    let payload = caught.expect_err("next() times out");
    assert!(payload
        .downcast_ref::<String>()
        .is_some_and(|m| m.contains("timed out")));
}

/// Regression (review finding 7): sequential streams ignored the timeout and went on after a task
/// panic, while pool streams end. Both now end the iterator the same way.
#[test]
fn sequential_streams_end_like_pool_streams() {
    for n_jobs in [1, 2] {
        let mut it = Parallel::new().n_jobs(n_jobs).run_iter((0..4u32).map(|i| {
            delayed(|i: u32| {
                if i == 1 {
                    panic!("boom")
                }
                i
            })(i)
        }));
        let mut seen = vec![];
        for _ in 0..4 {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| it.next())) {
                Ok(v) => seen.push(format!("{v:?}")),
                Err(_) => seen.push("PANIC".into()),
            }
        }
        assert_eq!(
            seen,
            ["Some(0)", "PANIC", "None", "None"],
            "n_jobs {n_jobs}"
        );
    }
    let mut it = Parallel::new()
        .n_jobs(1)
        .timeout(Duration::from_millis(5))
        .run_iter((0..3u32).map(|i| {
            delayed(|i: u32| {
                std::thread::sleep(Duration::from_millis(30));
                i
            })(i)
        }));
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| it.next()));
    let payload = caught.expect_err("the task took longer than the timeout");
    assert!(payload
        .downcast_ref::<String>()
        .is_some_and(|m| m.contains("timed out")));
    assert_eq!(it.next(), None);
}

/// The input iterator panics while `next()` refills the window, and the consumer goes on reading:
/// that `next()` resumes the input's panic, the input is not pulled again, and the stream hands out
/// the result of every task pulled before the panic, each under its own index, then ends.
#[test]
fn a_stream_whose_input_panics_hands_out_what_it_pulled_then_ends() {
    for (ordered, pre_dispatch, at) in [
        (true, 2, 30u64),
        (true, 8, 30),
        (true, 8, 31),
        (false, 2, 30),
        (false, 8, 31),
    ] {
        let got = within_20s(move || {
            let parallel = Parallel::new()
                .n_jobs(2)
                .batch_size(BatchSize::Fixed(4))
                .pre_dispatch(pre_dispatch);
            let tasks = (0..1_000u64).map(move |x| {
                if x == at {
                    std::panic::panic_any(x);
                }
                delayed(|x: u64| {
                    std::thread::sleep(Duration::from_micros(200));
                    x
                })(x)
            });
            let mut iter: Box<dyn Iterator<Item = (Option<usize>, u64)>> = if ordered {
                Box::new(parallel.run_iter(tasks).map(|x| (None, x)))
            } else {
                Box::new(parallel.run_unordered(tasks).map(|(i, x)| (Some(i), x)))
            };
            let (mut got, mut panics) = (Vec::new(), 0);
            for _ in 0..2_000 {
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| iter.next())) {
                    Ok(Some((index, value))) => {
                        let index = index.unwrap_or(got.len());
                        assert_eq!(value, index as u64, "task {index}'s result");
                        got.push(value);
                    }
                    Ok(None) => break,
                    Err(payload) => {
                        assert_eq!(payload.downcast_ref::<u64>(), Some(&at));
                        panics += 1;
                    }
                }
            }
            assert_eq!(panics, 1);
            got.sort_unstable();
            got
        });
        assert_eq!(
            got,
            (0..at).collect::<Vec<_>>(),
            "ordered {ordered}, pre_dispatch {pre_dispatch}, input panics at {at}"
        );
    }
}

/// Panics when dropped unless defused (a task's argument that must run to be dropped safely).
struct Armed<'a>(&'a AtomicUsize);
impl Drop for Armed<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
        panic!("an unrun task's argument dropped");
    }
}

/// The input panics while a scoped stream is made (its first refill), after it gave tasks that
/// borrow the caller and whose arguments panic when dropped unrun: the input's panic reaches the
/// caller, every task pulled before it ran or was dropped (contained: not while the panic
/// unwinds, which aborts), and none is touched after `scope_iter` returns.
#[test]
fn a_scoped_stream_whose_input_panics_at_once_settles_what_it_pulled() {
    for at in [2u64, 5, 6, 9] {
        let (ran, dropped) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let (ran_ref, dropped_ref) = (&ran, &dropped);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Parallel::new()
                .n_jobs(2)
                .batch_size(BatchSize::Fixed(4))
                .pre_dispatch(8)
                .scope_iter(
                    (0..100u64).map(|x| {
                        if x == at {
                            std::panic::panic_any(x);
                        }
                        delayed(move |armed: Armed<'_>| {
                            std::thread::sleep(Duration::from_millis(5));
                            std::mem::forget(armed);
                            ran_ref.fetch_add(1, Ordering::SeqCst);
                        })(Armed(dropped_ref))
                    }),
                    |results| results.count(),
                )
        }));
        let payload = caught.expect_err("the input's panic reaches the caller");
        assert_eq!(payload.downcast_ref::<u64>(), Some(&at));
        let settled = (ran.load(Ordering::SeqCst), dropped.load(Ordering::SeqCst));
        assert_eq!(settled.0 + settled.1, at as usize, "input panics at {at}");
        std::thread::sleep(Duration::from_millis(30));
        let later = (ran.load(Ordering::SeqCst), dropped.load(Ordering::SeqCst));
        assert_eq!(later, settled, "a task ran after scope_iter returned");
    }
}
