//! `Parallel::run` / `try_run`: joblib semantics (issue 3, "Tests").

use parjob::{
    delayed, effective_n_jobs, BatchSize, ConfigError, Delayed, Error, Parallel, ThreadPoolBuilder,
};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::Duration;

mod common;

fn square(x: u64) -> u64 {
    x * x
}

#[test]
fn n_jobs_arithmetic_follows_joblib() {
    let cores = parjob::cpu_count();
    assert!(cores >= 1);
    assert_eq!(effective_n_jobs(-1), Ok(cores));
    assert_eq!(effective_n_jobs(-2), Ok((cores - 1).max(1)));
    assert_eq!(effective_n_jobs(-(cores as i32)), Ok(1));
    assert_eq!(effective_n_jobs(-(cores as i32) - 5), Ok(1));
    assert_eq!(effective_n_jobs(i32::MIN), Ok(1));
    assert_eq!(effective_n_jobs(1), Ok(1));
    assert_eq!(effective_n_jobs(3 * cores as i32), Ok(3 * cores));
    assert_eq!(effective_n_jobs(0), Err(ConfigError::ZeroNJobs));
}

#[test]
fn sqrt_example_reads_like_joblib() {
    fn calcular_raiz_cuadrada(n: f64) -> f64 {
        n.sqrt()
    }
    let numeros: Vec<f64> = (0..1000).map(|i| (i * i) as f64).collect();
    let resultado: Vec<f64> = Parallel::new()
        .n_jobs(2)
        .run(numeros.iter().map(|&n| delayed(calcular_raiz_cuadrada)(n)));
    assert_eq!(resultado, (0..1000).map(|i| i as f64).collect::<Vec<_>>());
}

#[test]
fn empty_input_gives_empty_output() {
    let out: Vec<u64> = Parallel::new()
        .n_jobs(2)
        .run(std::iter::empty::<Delayed<fn(u64) -> u64, (u64,)>>());
    assert!(out.is_empty());
}

#[test]
fn order_is_preserved_under_random_task_durations() {
    // A cheap deterministic generator: durations 0..200 µs in pseudo-random order.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let delays: Vec<u64> = (0..200)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % 200
        })
        .collect();
    for n_jobs in [2, 3, -1] {
        let out = Parallel::new()
            .n_jobs(n_jobs)
            .run(delays.iter().enumerate().map(|(i, &d)| {
                delayed!((|i: usize, d: u64| {
                    std::thread::sleep(Duration::from_micros(d));
                    i
                })(i, d))
            }));
        assert_eq!(out, (0..200).collect::<Vec<_>>());
    }
}

#[test]
fn sequential_backend_runs_on_the_callers_thread_in_order() {
    let caller = std::thread::current().id();
    let order = Mutex::new(Vec::new());
    let out = Parallel::new()
        .backend(parjob::Backend::Sequential)
        .n_jobs(4)
        .run((0..20).map(|i| {
            let order = &order;
            Delayed::new(move || {
                order.lock().unwrap().push(i);
                std::thread::current().id()
            })
        }));
    assert!(out.iter().all(|&id| id == caller));
    assert_eq!(order.into_inner().unwrap(), (0..20).collect::<Vec<_>>());
}

#[test]
fn n_jobs_one_runs_on_the_callers_thread() {
    let caller = std::thread::current().id();
    let out = Parallel::new()
        .n_jobs(1)
        .run((0..10).map(|_| Delayed::new(|| std::thread::current().id())));
    assert!(out.iter().all(|&id| id == caller));
    let out = Parallel::new()
        .n_jobs(-10_000)
        .run((0..10).map(|_| Delayed::new(|| std::thread::current().id())));
    assert!(out.iter().all(|&id| id == caller));
}

#[test]
fn n_jobs_above_the_core_count_really_runs_that_many_at_once() {
    // All k tasks must be running at the same time to pass the barrier.
    let k = parjob::cpu_count() + 2;
    let barrier = Barrier::new(k);
    let out = Parallel::new().n_jobs(k as i32).run((0..k).map(|i| {
        let barrier = &barrier;
        Delayed::new(move || {
            barrier.wait();
            i
        })
    }));
    assert_eq!(out, (0..k).collect::<Vec<_>>());
}

#[test]
fn n_jobs_bounds_concurrency() {
    let running = AtomicUsize::new(0);
    let peak = AtomicUsize::new(0);
    Parallel::new().n_jobs(2).run((0..40).map(|_| {
        let (running, peak) = (&running, &peak);
        Delayed::new(move || {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(1));
            running.fetch_sub(1, Ordering::SeqCst);
        })
    }));
    assert!(
        peak.load(Ordering::SeqCst) <= 2,
        "peak {}",
        peak.load(Ordering::SeqCst)
    );
}

#[test]
fn tasks_borrow_the_callers_data() {
    let data: Vec<u64> = (0..10_000).collect();
    let chunks: Vec<&[u64]> = data.chunks(100).collect();
    let sums = Parallel::new().n_jobs(2).run(
        chunks
            .iter()
            .map(|c| delayed(|c: &&[u64]| c.iter().sum::<u64>())(c)),
    );
    assert_eq!(sums.iter().sum::<u64>(), data.iter().sum::<u64>());
    // delayed! with a mix of owned and borrowed arguments.
    fn dot(a: &[u64], b: &[u64], scale: u64) -> u64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum::<u64>() * scale
    }
    let out = Parallel::new().run((1..=3).map(|s| delayed!(dot(&data[..3], &data[1..4], s))));
    assert_eq!(out, vec![8, 16, 24]);
}

#[test]
fn auto_and_fixed_batches_give_identical_results() {
    let input: Vec<u64> = (0..50_000).collect();
    let auto = Parallel::new()
        .n_jobs(2)
        .run(input.iter().map(|&x| delayed(square)(x)));
    for size in [1, 7, 1000, 100_000] {
        let fixed = Parallel::new()
            .n_jobs(2)
            .batch_size(BatchSize::Fixed(size))
            .run(input.iter().map(|&x| delayed(square)(x)));
        assert_eq!(auto, fixed, "batch size {size}");
    }
    // Unknown length (filter): results are collected per batch instead of in place.
    let filtered = Parallel::new().n_jobs(2).run(
        input
            .iter()
            .filter(|&&x| x % 3 == 0)
            .map(|&x| delayed(square)(x)),
    );
    assert_eq!(
        filtered,
        input
            .iter()
            .filter(|&&x| x % 3 == 0)
            .map(|&x| x * x)
            .collect::<Vec<_>>()
    );
}

/// An iterator whose `size_hint` lies (claims fewer items than it yields).
struct Liar(std::ops::Range<u64>);
impl Iterator for Liar {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        self.0.next()
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (10, Some(10))
    }
}

/// The progress total comes from the size hint: once more tasks completed than it claimed, the
/// callback gets no total, never a count above its total (the review of round 9 saw `(3, Some(2))`).
#[test]
fn progress_past_a_lying_total_reports_no_total() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = std::sync::Arc::clone(&seen);
    let out = Parallel::new()
        .n_jobs(1)
        .on_progress(move |done, total| log.lock().unwrap().push((done, total)))
        .run(Liar(0..12).map(|x| delayed(square)(x)));
    assert_eq!(out, (0..12).map(square).collect::<Vec<_>>());
    let seen = seen.lock().unwrap();
    let counts: Vec<usize> = seen.iter().map(|&(done, _)| done).collect();
    assert_eq!(
        counts,
        (1..=12).collect::<Vec<_>>(),
        "every count once, in order"
    );
    for &(done, total) in seen.iter() {
        let expected = if done <= 10 { Some(10) } else { None };
        assert_eq!(total, expected, "count {done}");
    }
}

#[test]
fn a_lying_size_hint_is_harmless() {
    let out = Parallel::new()
        .n_jobs(2)
        .batch_size(BatchSize::Fixed(3))
        .run(Liar(0..100).map(|x| delayed(square)(x)));
    assert_eq!(out, (0..100).map(square).collect::<Vec<_>>());
    let out = Parallel::new()
        .n_jobs(2)
        .run(Liar(0..5).map(|x| delayed(square)(x)));
    assert_eq!(out, (0..5).map(square).collect::<Vec<_>>());
}

/// An input that claims an exact length far beyond memory (2^40 results of 8 bytes) and yields
/// three: the results are right, on a pool, inline (with a progress callback, so not the plain
/// loop) and in a stream. Pre-allocating for the claim aborted the process ("memory allocation of
/// 8796093022208 bytes failed"; round 9 review).
#[test]
fn a_size_hint_claiming_more_than_memory_holds_does_not_abort() {
    use common::ClaimsTooMuch;
    let pool = parjob::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let tasks = || ClaimsTooMuch(0..3).map(|x| delayed(square)(x));
    let on_pool = Parallel::new()
        .n_jobs(2)
        .backend(parjob::Backend::Pool(pool));
    assert_eq!(on_pool.run(tasks()), vec![0, 1, 4]);
    assert_eq!(on_pool.run_iter(tasks()).collect::<Vec<_>>(), vec![0, 1, 4]);
    let inline = Parallel::new().n_jobs(1).on_progress(|_, _| {});
    assert_eq!(inline.run(tasks()), vec![0, 1, 4]);
    // With nothing to check between tasks the inline loop is a plain one, which reserved room
    // for the claim through `Vec::extend` (round 12 review).
    let plain = Parallel::new().n_jobs(1);
    assert_eq!(plain.run(tasks()), vec![0, 1, 4]);
    let sequential = Parallel::new().backend(parjob::Backend::Sequential);
    assert_eq!(sequential.run(tasks()), vec![0, 1, 4]);
}

/// A call nested in its pool's worker, with an input of exact length, pulls the whole input (its
/// window is not bounded by `pre_dispatch`). An endless input that claims three items must not be
/// pulled forever: the whole input is the length it claims. (Round 9 review: the stream's first
/// refill never returned.)
#[test]
fn a_nested_stream_over_an_endless_input_that_claims_a_length_is_bounded() {
    static PULLED: AtomicUsize = AtomicUsize::new(0);
    struct EndlessClaimsThree(u64);
    impl Iterator for EndlessClaimsThree {
        type Item = u64;
        fn next(&mut self) -> Option<u64> {
            PULLED.fetch_add(1, Ordering::Relaxed);
            self.0 += 1;
            Some(self.0 - 1)
        }
        fn size_hint(&self) -> (usize, Option<usize>) {
            (3, Some(3))
        }
    }
    let first = common::within_20s(|| {
        let pool = parjob::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let parallel = Parallel::new()
            .n_jobs(2)
            .backend(parjob::Backend::Pool(pool.clone()));
        pool.install(|| {
            parallel
                .run_iter(EndlessClaimsThree(0).map(|x| delayed(square)(x)))
                .take(5)
                .collect::<Vec<_>>()
        })
    });
    assert_eq!(first, vec![0, 1, 4, 9, 16]);
    let pulled = PULLED.load(Ordering::Relaxed);
    assert!(pulled < 1000, "pulled {pulled} tasks for 5 results");
}

/// An input whose `size_hint` says exactly two tasks takes the two-task path (`join`), which
/// trusted it: a third task was never run (its result was missing), and a missing second one
/// panicked with "unreachable". Every task runs whatever the hint says, and an input that is
/// not fused is not pulled past its first `None` (as on the general path): the fallback asked it
/// again and ran what it yielded after its end.
#[test]
fn a_size_hint_that_lies_about_two_tasks_is_harmless() {
    /// Yields `items` in order, where `None` ends the input once (a later `next()` goes on: not
    /// fused), and always claims exactly two items.
    struct SaysTwo(std::vec::IntoIter<Option<u64>>);
    impl Iterator for SaysTwo {
        type Item = u64;
        fn next(&mut self) -> Option<u64> {
            self.0.next().flatten()
        }
        fn size_hint(&self) -> (usize, Option<usize>) {
            (2, Some(2))
        }
    }
    let pool = parjob::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let fused = |n: u64| (0..n).map(Some).collect::<Vec<_>>();
    let cases = [
        (fused(0), vec![]),
        (fused(1), vec![0]),
        (fused(2), vec![0, 1]),
        (fused(3), vec![0, 1, 2]),
        (fused(20), (0..20).collect()),
        (vec![Some(0), None, Some(1), Some(2)], vec![0]),
        (vec![None, Some(1), Some(2)], vec![]),
    ];
    for backend in [parjob::Backend::Pool(pool), parjob::Backend::WorkStealing] {
        for (items, ran) in &cases {
            let out = Parallel::new()
                .n_jobs(2)
                .backend(backend.clone())
                .run(SaysTwo(items.clone().into_iter()).map(|x| delayed(square)(x)));
            let expected: Vec<u64> = ran.iter().copied().map(square).collect();
            assert_eq!(out, expected, "input {items:?}");
        }
    }
}

/// A call past its deadline pulls the next task to see whether one is skipped. An input that is
/// not fused and says `None` there has ended: the call succeeds with what ran and does not ask
/// again (on the calling thread it did, and ran a task the input yielded after its end).
#[test]
fn a_deadline_check_does_not_pull_past_the_inputs_end() {
    let pool = parjob::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for n_jobs in [1, 2] {
        let mut items = vec![Some(30u64), None, Some(1)].into_iter();
        // Not fused: after its `None` it yields `Some(1)`.
        let tasks = std::iter::from_fn(move || items.next().flatten()).map(|ms| {
            delayed(|ms: u64| {
                std::thread::sleep(Duration::from_millis(ms));
                ms
            })(ms)
        });
        let out = Parallel::new()
            .n_jobs(n_jobs)
            .backend(parjob::Backend::Pool(pool.clone()))
            .deadline(Duration::from_millis(10))
            .run(tasks);
        assert_eq!(out, vec![30], "n_jobs {n_jobs}");
    }
}

#[test]
fn input_is_consumed_lazily_within_pre_dispatch() {
    // Each task blocks until the input has been pulled as far as it will go: tasks see how far
    // ahead the dispatcher got. With slow tasks batches hold one task, so the window is
    // `pre_dispatch` tasks.
    for (n_jobs, pre_dispatch) in [(2, 3), (2, 4), (3, 5)] {
        let pulled = AtomicUsize::new(0);
        let max_ahead = AtomicUsize::new(0);
        let done = AtomicUsize::new(0);
        Parallel::new()
            .n_jobs(n_jobs)
            .pre_dispatch(pre_dispatch)
            .run((0..30).map(|_| {
                pulled.fetch_add(1, Ordering::SeqCst);
                let (pulled, max_ahead, done) = (&pulled, &max_ahead, &done);
                Delayed::new(move || {
                    std::thread::sleep(Duration::from_millis(2));
                    let ahead = pulled.load(Ordering::SeqCst) - done.load(Ordering::SeqCst);
                    max_ahead.fetch_max(ahead, Ordering::SeqCst);
                    done.fetch_add(1, Ordering::SeqCst);
                })
            }));
        let ahead = max_ahead.load(Ordering::SeqCst);
        assert!(
            ahead <= pre_dispatch,
            "n_jobs {n_jobs}, pre_dispatch {pre_dispatch}: {ahead} tasks pulled ahead"
        );
    }
}

#[test]
fn items_pulled_before_the_first_result_are_bounded() {
    let pulled = AtomicUsize::new(0);
    let at_first_result = Mutex::new(None);
    Parallel::new()
        .n_jobs(2)
        .pre_dispatch(4)
        .on_progress(|done, _| {
            if done == 1 {
                *at_first_result.lock().unwrap() = Some(pulled.load(Ordering::SeqCst));
            }
        })
        .run((0..1_000).map(|_| {
            pulled.fetch_add(1, Ordering::SeqCst);
            Delayed::new(|| std::thread::sleep(Duration::from_micros(300)))
        }));
    let first = at_first_result
        .into_inner()
        .unwrap()
        .expect("progress was reported");
    assert!(first <= 4, "{first} items pulled before the first result");
}

#[test]
fn first_error_cancels_later_tasks() {
    let ran = AtomicUsize::new(0);
    let result: Result<Vec<usize>, Error<String>> =
        Parallel::new().n_jobs(2).try_run((0..1000).map(|i| {
            let ran = &ran;
            Delayed::new(move || {
                ran.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_micros(200));
                if i == 5 {
                    Err(format!("task {i} failed"))
                } else {
                    Ok(i)
                }
            })
        }));
    match result {
        Err(Error::Task { index, error }) => {
            assert_eq!(index, 5);
            assert_eq!(error, "task 5 failed");
        }
        other => panic!("expected a task error, got {other:?}"),
    }
    let ran = ran.load(Ordering::SeqCst);
    assert!(ran < 1000, "all {ran} tasks ran despite the failure");
}

#[test]
fn sequential_first_error_stops_immediately() {
    let ran = AtomicUsize::new(0);
    let result = Parallel::new().n_jobs(1).try_run((0..100).map(|i| {
        let ran = &ran;
        Delayed::new(move || {
            ran.fetch_add(1, Ordering::SeqCst);
            if i == 3 {
                Err(i)
            } else {
                Ok(i)
            }
        })
    }));
    assert!(matches!(result, Err(Error::Task { index: 3, error: 3 })));
    assert_eq!(ran.load(Ordering::SeqCst), 4);
}

#[test]
fn errors_display_and_are_std_errors() {
    let err: Error<String> = Error::Task {
        index: 2,
        error: "boom".into(),
    };
    assert_eq!(err.to_string(), "task 2 failed: boom");
    let boxed: Box<dyn std::error::Error> = Box::new(err);
    assert!(boxed.to_string().contains("boom"));
    let config: Error<String> = Error::Config {
        error: ConfigError::ZeroBatchSize,
    };
    assert!(config.to_string().contains("batch size"));
}

#[test]
fn keep_going_collects_every_error() {
    let out: Vec<Result<u32, String>> = Parallel::new().n_jobs(2).run((0..10u32).map(|i| {
        delayed(|i: u32| {
            if i % 3 == 0 {
                Err(format!("bad {i}"))
            } else {
                Ok(i)
            }
        })(i)
    }));
    assert_eq!(out.iter().filter(|r| r.is_err()).count(), 4);
    assert_eq!(out[4], Ok(4));
}

#[test]
fn a_task_panic_cancels_the_rest_and_is_resumed() {
    let ran = AtomicUsize::new(0);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Parallel::new().n_jobs(2).run((0..1000).map(|i| {
            let ran = &ran;
            Delayed::new(move || {
                ran.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_micros(200));
                if i == 3 {
                    panic!("task three");
                }
                i
            })
        }))
    }));
    let payload = caught.expect_err("the panic propagates");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"task three"));
    assert!(ran.load(Ordering::SeqCst) < 1000);
}

#[test]
fn a_panicking_input_iterator_waits_for_running_tasks() {
    let finished = AtomicUsize::new(0);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Parallel::new().n_jobs(2).run((0..100).map(|i| {
            if i == 6 {
                panic!("input broke");
            }
            let finished = &finished;
            Delayed::new(move || {
                std::thread::sleep(Duration::from_millis(1));
                finished.fetch_add(1, Ordering::SeqCst);
            })
        }))
    }));
    assert!(caught.is_err());
    // Every task that was dispatched finished before `run` unwound (it borrows `finished`).
    let after = finished.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(finished.load(Ordering::SeqCst), after);
    assert!(after <= 6);
}

#[test]
fn invalid_configuration() {
    let tasks = || (0..3).map(|x| delayed(|x: i32| Ok::<i32, ()>(x))(x));
    assert!(matches!(
        Parallel::new().n_jobs(0).try_run(tasks()),
        Err(Error::Config {
            error: ConfigError::ZeroNJobs
        })
    ));
    assert!(matches!(
        Parallel::new()
            .batch_size(BatchSize::Fixed(0))
            .try_run(tasks()),
        Err(Error::Config {
            error: ConfigError::ZeroBatchSize
        })
    ));
    assert!(matches!(
        Parallel::new().pre_dispatch(0).try_run(tasks()),
        Err(Error::Config {
            error: ConfigError::ZeroPreDispatch
        })
    ));
    let panicked = std::panic::catch_unwind(|| Parallel::new().n_jobs(0).run(tasks()));
    let payload = panicked.expect_err("run panics on n_jobs 0");
    assert!(payload.downcast_ref::<String>().unwrap().contains("n_jobs"));
}

#[test]
fn deadline_cancels_unstarted_tasks() {
    let ran = AtomicUsize::new(0);
    let result = Parallel::new()
        .n_jobs(2)
        .deadline(Duration::from_millis(20))
        .try_run((0..200).map(|_| {
            let ran = &ran;
            Delayed::new(move || {
                ran.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
                Ok::<(), ()>(())
            })
        }));
    match result {
        Err(Error::Timeout { timeout, completed }) => {
            assert_eq!(timeout, Duration::from_millis(20));
            assert!(completed < 200);
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(ran.load(Ordering::SeqCst) < 200);
    let panicked = std::panic::catch_unwind(|| {
        Parallel::new()
            .n_jobs(2)
            .deadline(Duration::from_millis(5))
            .run((0..100).map(|_| Delayed::new(|| std::thread::sleep(Duration::from_millis(2)))))
    });
    let payload = panicked.expect_err("run panics on timeout");
    assert!(payload
        .downcast_ref::<String>()
        .unwrap()
        .contains("timed out"));
    // Sequential calls honour the timeout too.
    let sequential = Parallel::new()
        .n_jobs(1)
        .deadline(Duration::from_millis(5))
        .try_run((0..100).map(|_| {
            Delayed::new(|| {
                std::thread::sleep(Duration::from_millis(1));
                Ok::<(), ()>(())
            })
        }));
    assert!(matches!(sequential, Err(Error::Timeout { .. })));
}

/// Where a task runs under `Backend::Pool(pool)` called from outside: on one of `pool`'s workers
/// (named `prefix-i`) or on the calling thread, which is one of the call's runners while batches
/// are short; never on another pool's threads.
fn on_pool_or_caller(prefix: &str, caller: std::thread::ThreadId) -> (bool, bool) {
    let me = std::thread::current();
    let on_pool = me.name().is_some_and(|n| n.starts_with(prefix));
    (on_pool, me.id() == caller)
}

#[test]
fn nested_parallel_runs_on_the_current_pool() {
    let pool = ThreadPoolBuilder::new()
        .num_threads(2)
        .thread_name(|i| format!("nested-test-{i}"))
        .build()
        .unwrap();
    let caller = std::thread::current().id();
    let outer = Parallel::new()
        .backend(parjob::Backend::Pool(pool.clone()))
        .n_jobs(2)
        .run((0..8u64).map(|i| {
            Delayed::new(move || {
                let outer_place = on_pool_or_caller("nested-test-", caller);
                // Inside a task (on a worker, or on the caller helping): the inner call uses this
                // pool (no new threads, no deadlock).
                let inner = Parallel::new().n_jobs(2).run((0..100u64).map(|j| {
                    Delayed::new(move || (on_pool_or_caller("nested-test-", caller), i * 100 + j))
                }));
                assert!(
                    inner
                        .iter()
                        .all(|((on_pool, on_caller), _)| *on_pool || *on_caller),
                    "an inner task ran outside the pool"
                );
                (outer_place, inner.iter().map(|(_, v)| v).sum::<u64>())
            })
        }));
    assert!(outer
        .iter()
        .all(|((on_pool, on_caller), _)| *on_pool || *on_caller));
    let sums: Vec<u64> = outer.iter().map(|(_, v)| *v).collect();
    let expected: Vec<u64> = (0..8u64)
        .map(|i| (0..100).map(|j| i * 100 + j).sum())
        .collect();
    assert_eq!(sums, expected);
}

/// The calling thread helps under `Backend::Pool` (it runs the first task itself before any
/// timing exists), and a `Parallel` call made by a task it runs nests into that pool, not into
/// the global one: with 4 tasks (the general path) and with 2 (a call of two tasks is one
/// `join`, whose tasks on the caller went to the global pool until round 12).
#[test]
fn pool_backend_caller_helps_and_its_tasks_nest_into_the_pool() {
    for count in [2u64, 4] {
        caller_helps_and_nests(count);
    }
}

fn caller_helps_and_nests(count: u64) {
    let pool = ThreadPoolBuilder::new()
        .num_threads(2)
        .thread_name(|i| format!("helping-test-{i}"))
        .build()
        .unwrap();
    let caller = std::thread::current().id();
    let outer = Parallel::new()
        .backend(parjob::Backend::Pool(pool.clone()))
        .n_jobs(2)
        .run((0..count).map(|_| {
            Delayed::new(move || {
                let place = on_pool_or_caller("helping-test-", caller);
                // Tasks long enough (100 µs) that a pool the nested call went to would take some.
                let inner = Parallel::new().n_jobs(2).run((0..64u64).map(|_| {
                    Delayed::new(move || {
                        std::thread::sleep(std::time::Duration::from_micros(100));
                        on_pool_or_caller("helping-test-", caller)
                    })
                }));
                (place, inner)
            })
        }));
    assert!(
        outer.iter().any(|((_, on_caller), _)| *on_caller),
        "the caller ran no task"
    );
    for ((_, on_caller), inner) in &outer {
        if *on_caller {
            // The nested call of a task on the caller: its tasks run on the pool's workers or
            // on the caller (helping that call in turn), never on the global pool.
            assert!(
                inner
                    .iter()
                    .all(|(on_pool, on_caller)| *on_pool || *on_caller),
                "{count} tasks: a nested call left the pool"
            );
        }
    }
}

#[test]
fn nested_parallel_on_a_one_thread_pool_does_not_deadlock() {
    let pool = ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let out = pool.install(|| {
        Parallel::new().n_jobs(4).run((0..4u32).map(|i| {
            Delayed::new(move || {
                Parallel::new()
                    .n_jobs(4)
                    .run((0..4u32).map(|j| delayed(|x: u32| x)(i * 4 + j)))
            })
        }))
    });
    assert_eq!(out.concat(), (0..16).collect::<Vec<_>>());
}

#[test]
fn pool_backend_runs_on_the_given_pool() {
    let pool = ThreadPoolBuilder::new()
        .num_threads(2)
        .thread_name(|i| format!("given-pool-{i}"))
        .build()
        .unwrap();
    let caller = std::thread::current().id();
    let places = Parallel::new()
        .backend(parjob::Backend::Pool(pool))
        .run((0..50).map(|_| Delayed::new(move || on_pool_or_caller("given-pool-", caller))));
    // On the pool's workers, or on the caller as one of the call's runners; on no other thread.
    assert!(places
        .iter()
        .all(|&(on_pool, on_caller)| on_pool || on_caller));
}

/// With a timeout, a caller outside the pool only dispatches: every task runs on the pool.
#[test]
fn pool_backend_with_a_timeout_runs_every_task_on_the_pool() {
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let on_pool = Parallel::new()
        .backend(parjob::Backend::Pool(pool))
        .timeout(Duration::from_secs(60))
        .run((0..50).map(|_| Delayed::new(|| parjob::current_thread_index().is_some())));
    assert!(on_pool.iter().all(|&b| b));
}

#[test]
fn repeated_calls_reuse_threads() {
    let threads = Mutex::new(HashSet::new());
    for _ in 0..20 {
        Parallel::new().n_jobs(3).run((0..30).map(|_| {
            let threads = &threads;
            Delayed::new(move || {
                threads.lock().unwrap().insert(std::thread::current().id());
                std::thread::sleep(Duration::from_micros(100));
            })
        }));
    }
    // At most the 3 cached workers plus the calling thread, across 20 calls.
    let distinct = threads.into_inner().unwrap().len();
    assert!(distinct <= 4, "{distinct} distinct threads");
}

#[test]
fn many_tiny_tasks_are_batched() {
    // With Auto, a million trivial tasks finish (and quickly enough for a test).
    let out = Parallel::new().run((0..1_000_000u64).map(|x| delayed(|x: u64| x ^ 1)(x)));
    assert_eq!(out.len(), 1_000_000);
    assert_eq!(out[10], 11);
}

#[test]
fn on_progress_counts_every_task() {
    let seen = Mutex::new(Vec::new());
    Parallel::new()
        .n_jobs(2)
        .on_progress(|done, total| seen.lock().unwrap().push((done, total)))
        .run((0..100).map(|x| delayed(square)(x)));
    let seen = seen.into_inner().unwrap();
    assert_eq!(seen, (1..=100).map(|d| (d, Some(100))).collect::<Vec<_>>());
    // Unknown length: total is None.
    let totals = Mutex::new(Vec::new());
    Parallel::new()
        .n_jobs(2)
        .on_progress(|_, total| totals.lock().unwrap().push(total))
        .run((0..10).filter(|x| x % 2 == 0).map(|x| delayed(square)(x)));
    let totals = totals.into_inner().unwrap();
    assert_eq!(totals.len(), 5);
    assert!(totals.iter().all(Option::is_none));
}

/// Polls `done` for up to 10 s (lets a task that wrongly outlived its call finish and be seen).
fn settle(done: &std::sync::atomic::AtomicBool) {
    for _ in 0..10_000 {
        if done.load(Ordering::SeqCst) {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Regression (review finding 1): the call guard dropped unstarted tasks before waiting for the
/// running ones, so a task whose `Drop` panics unwound out of the call while other tasks still ran
/// (and used the caller's borrowed data after it was gone).
#[test]
fn a_panicking_drop_of_an_unstarted_task_still_waits_for_running_tasks() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    struct Bomb(bool);
    impl Drop for Bomb {
        fn drop(&mut self) {
            if self.0 && !std::thread::panicking() {
                panic!("bomb: unstarted task dropped");
            }
        }
    }
    for _round in 0..5 {
        let returned = Arc::new(AtomicBool::new(false));
        let touched_after_return = Arc::new(AtomicBool::new(false));
        let slow_done = Arc::new(AtomicBool::new(false));
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Parallel::new()
                .n_jobs(2)
                .pre_dispatch(4)
                .batch_size(BatchSize::Fixed(1))
                .try_run((0..8usize).map(|i| {
                    let bomb = Bomb(i >= 2);
                    let (returned, touched, slow_done) = (
                        Arc::clone(&returned),
                        Arc::clone(&touched_after_return),
                        Arc::clone(&slow_done),
                    );
                    Delayed::new(move || -> Result<usize, String> {
                        let mut bomb = bomb;
                        bomb.0 = false;
                        if i == 0 {
                            std::thread::sleep(Duration::from_millis(30));
                            return Err("fail".into());
                        }
                        std::thread::sleep(Duration::from_millis(150));
                        if returned.load(Ordering::SeqCst) {
                            touched.store(true, Ordering::SeqCst);
                        }
                        if i == 1 {
                            slow_done.store(true, Ordering::SeqCst);
                        }
                        Ok(i)
                    })
                }))
        }));
        returned.store(true, Ordering::SeqCst);
        if let Err(payload) = &caught {
            assert_eq!(
                payload.downcast_ref::<&str>(),
                Some(&"bomb: unstarted task dropped")
            );
        }
        settle(&slow_done);
        assert!(
            !touched_after_return.load(Ordering::SeqCst),
            "a task ran after try_run returned"
        );
    }
}

/// Regression (review finding 2): when `run` unwinds (here: the input iterator panics), results
/// already produced stayed in the call's shared state; a token still queued on the pool dropped
/// them later, on a worker, after the caller's frame was gone (and results written in place into
/// the output buffer leaked). They must all be dropped before `run` unwinds.
#[test]
fn results_of_an_unwound_call_are_dropped_before_it_returns() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    #[derive(Default)]
    struct State {
        frame_gone: AtomicBool,
        made: AtomicUsize,
        dropped: AtomicUsize,
        dropped_late: AtomicUsize,
    }
    struct Noisy(Arc<State>);
    impl Drop for Noisy {
        fn drop(&mut self) {
            self.0.dropped.fetch_add(1, Ordering::SeqCst);
            if self.0.frame_gone.load(Ordering::SeqCst) {
                self.0.dropped_late.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    // Keep one worker busy so that the other one (the caller below) keeps the tokens it queued.
    let gate = Arc::new(AtomicBool::new(false));
    let blocked = Arc::new(AtomicBool::new(false));
    let blocker = {
        let (pool, gate, blocked) = (pool.clone(), Arc::clone(&gate), Arc::clone(&blocked));
        std::thread::spawn(move || {
            pool.install(|| {
                blocked.store(true, Ordering::SeqCst);
                while !gate.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        })
    };
    while !blocked.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
    for exact_length in [false, true] {
        let state = Arc::new(State::default());
        pool.install(|| {
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let make = |i: usize| {
                    if i == 5 {
                        panic!("input iterator panics");
                    }
                    let state = Arc::clone(&state);
                    Delayed::new(move || {
                        state.made.fetch_add(1, Ordering::SeqCst);
                        Noisy(state)
                    })
                };
                let p = Parallel::new().n_jobs(2).pre_dispatch(1);
                if exact_length {
                    // Results are written in place into the output buffer.
                    p.run((0..100usize).map(make)).len()
                } else {
                    // Unknown length: each batch collects its own vector.
                    p.run((0..100usize).filter(|_| true).map(make)).len()
                }
            }));
            assert!(caught.is_err());
            state.frame_gone.store(true, Ordering::SeqCst);
        });
        // Let anything queued on the pool run (before the fix: the last token, dropping results).
        for _ in 0..2_000 {
            if state.dropped.load(Ordering::SeqCst) >= state.made.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        pool.install(|| ());
        assert!(
            state.made.load(Ordering::SeqCst) > 0,
            "exact {exact_length}"
        );
        assert_eq!(
            state.dropped.load(Ordering::SeqCst),
            state.made.load(Ordering::SeqCst),
            "exact {exact_length}: every result is dropped"
        );
        assert_eq!(
            state.dropped_late.load(Ordering::SeqCst),
            0,
            "exact {exact_length}: results dropped after the call unwound"
        );
    }
    gate.store(true, Ordering::SeqCst);
    blocker.join().unwrap();
}

/// Regression (review finding 4): a second task panic's payload is dropped inside the batch; a
/// payload whose `Drop` panics skipped the runner's `finish`, and the call waited forever.
#[test]
fn a_second_panic_payload_with_a_panicking_drop_is_contained() {
    struct BadPayload;
    impl Drop for BadPayload {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                panic!("payload drop panics");
            }
        }
    }
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let p = pool.clone();
    std::thread::spawn(move || {
        let both = Barrier::new(2);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Parallel::new()
                .n_jobs(2)
                .backend(parjob::Backend::Pool(p))
                .batch_size(BatchSize::Fixed(1))
                .run((0..2).map(|_| {
                    let both = &both;
                    Delayed::new(move || {
                        both.wait();
                        std::panic::panic_any(BadPayload)
                    })
                }))
        }));
        let payload = caught.expect_err("a task panicked");
        let is_bad = payload.is::<BadPayload>();
        std::mem::forget(payload);
        tx.send(is_bad).unwrap();
    });
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).ok(),
        Some(true),
        "the call never returned"
    );
    assert_eq!(pool.install(|| 7), 7);
}

/// Regression (review finding 5): the dispatcher waited for a batch to end with no timer, so with
/// the target pool busy the timeout fired only once the pool got to the call's tasks. Here the pool
/// is blocked until the call has returned: the call must time out on its own, whether the caller
/// is an outside thread or a worker of another pool.
#[test]
fn timeout_fires_while_the_target_pool_is_busy() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let busy = ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let caller_pool = ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    for on_worker in [false, true] {
        let gate = Arc::new(AtomicBool::new(false));
        let blocked = Arc::new(AtomicBool::new(false));
        let blocker = {
            let (busy, gate, blocked) = (busy.clone(), Arc::clone(&gate), Arc::clone(&blocked));
            std::thread::spawn(move || {
                busy.install(|| {
                    blocked.store(true, Ordering::SeqCst);
                    while !gate.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
            })
        };
        while !blocked.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let (b, caller) = (busy.clone(), caller_pool.clone());
        std::thread::spawn(move || {
            let call = || {
                Parallel::new()
                    .n_jobs(2)
                    .backend(parjob::Backend::Pool(b))
                    .timeout(Duration::from_millis(20))
                    .try_run((0..4u32).map(|i| delayed(|i: u32| Ok::<u32, ()>(i))(i)))
            };
            let result = if on_worker {
                caller.install(call)
            } else {
                call()
            };
            tx.send(matches!(result, Err(Error::Timeout { completed: 0, .. })))
                .unwrap();
        });
        let timed_out = rx.recv_timeout(Duration::from_secs(10)).ok();
        gate.store(true, Ordering::SeqCst);
        blocker.join().unwrap();
        assert_eq!(timed_out, Some(true), "on_worker {on_worker}");
    }
}

/// Regression (review finding 6): a call in which every task ran (some past the deadline) was
/// reported as a timeout on a pool, but succeeded with `n_jobs(1)`. Now both succeed: a timeout
/// reports skipped work.
#[test]
fn a_call_that_skipped_nothing_succeeds_despite_the_deadline() {
    let timeout = Duration::from_millis(200);
    for n_jobs in [1usize, 2] {
        let started = std::time::Instant::now();
        let both_running = AtomicUsize::new(0);
        let result = Parallel::new()
            .n_jobs(n_jobs as i32)
            .batch_size(BatchSize::Fixed(1))
            .deadline(timeout)
            .try_run((0..n_jobs as u32).map(|i| {
                let both_running = &both_running;
                Delayed::new(move || {
                    both_running.fetch_add(1, Ordering::SeqCst);
                    // Run past the deadline, together (so neither is started late).
                    while both_running.load(Ordering::SeqCst) < n_jobs
                        || started.elapsed() < timeout + Duration::from_millis(50)
                    {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Ok::<u32, ()>(i)
                })
            }));
        match result {
            Ok(v) => assert_eq!(v, (0..n_jobs as u32).collect::<Vec<_>>()),
            // Only if a task really was skipped (a very slow machine started one too late).
            Err(Error::Timeout { completed, .. }) => assert!(completed < n_jobs, "n_jobs {n_jobs}"),
            Err(e) => panic!("{e:?}"),
        }
    }
}
