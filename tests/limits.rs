//! Configuration at the edges: limits too long for an `Instant`, thread counts no machine runs,
//! stacks smaller than a worker needs, and a deadline that passes inside one of the splittable
//! form's large claims. Each must give its documented outcome (no limit at all, a typed error or
//! a clear panic, a raised stack size, no index started late), never an abort, a crash or an
//! arithmetic-overflow panic. (Found by a review in round 13: every one of these either panicked
//! with "overflow when adding duration to instant", aborted the process on an allocation of
//! terabytes, crashed an idle pool when it was dropped, or ran tasks long after the deadline.)

use parjob::{delayed, Backend, ConfigError, Error, Parallel, ThreadPoolBuilder, MAX_NUM_THREADS};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

mod common;
use common::panic_message;

/// Makers of the same call configured three ways: inline (`n_jobs(1)`), on the default backend,
/// and on a pool of the user's.
type Maker = Box<dyn Fn() -> Parallel<'static>>;

fn parallels() -> Vec<(&'static str, Maker)> {
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    vec![
        ("n_jobs(1)", Box::new(|| Parallel::new().n_jobs(1))),
        ("n_jobs(2)", Box::new(|| Parallel::new().n_jobs(2))),
        (
            "Backend::Pool",
            Box::new(move || {
                Parallel::new()
                    .n_jobs(2)
                    .backend(Backend::Pool(pool.clone()))
            }),
        ),
    ]
}

/// A task slow enough that the caller waits for results (the timeout is turned into an instant
/// when a wait starts).
fn slow_double(x: u64) -> u64 {
    std::thread::sleep(Duration::from_micros(200));
    x * 2
}

/// `Duration::MAX` is how a caller says "no limit"; `Instant::now() + Duration::MAX` overflows.
/// As a timeout or a deadline it must simply never expire, on every entry point.
#[test]
fn a_limit_of_duration_max_never_expires() {
    let data: Vec<u64> = (0..40).collect();
    let expected: Vec<u64> = data.iter().map(|x| x * 2).collect();
    for (name, base) in parallels() {
        for (limit, parallel) in [
            ("timeout", base().timeout(Duration::MAX)),
            ("deadline", base().deadline(Duration::MAX)),
            (
                "both",
                base()
                    .timeout(Duration::MAX)
                    .deadline(Duration::from_secs(u64::MAX)),
            ),
        ] {
            let case = format!("{name}, {limit}");
            let tasks = || data.iter().map(|&x| delayed(slow_double)(x));
            let tried: Result<Vec<u64>, Error<()>> = parallel.try_run(
                data.iter()
                    .map(|&x| delayed(|x: u64| Ok(slow_double(x)))(x)),
            );
            assert_eq!(tried.expect(&case), expected, "{case}");
            assert_eq!(parallel.run(tasks()), expected, "{case}");
            assert_eq!(
                parallel.run_iter(tasks()).collect::<Vec<_>>(),
                expected,
                "{case}"
            );
            let mut unordered: Vec<(usize, u64)> = parallel.run_unordered(tasks()).collect();
            unordered.sort_unstable();
            let unordered: Vec<u64> = unordered.into_iter().map(|(_, v)| v).collect();
            assert_eq!(unordered, expected, "{case}");
            let scoped: Vec<u64> = parallel.scope_iter(tasks(), |results| results.collect());
            assert_eq!(scoped, expected, "{case}");
            assert_eq!(parallel.map(&data, |&x| slow_double(x)), expected, "{case}");
            assert_eq!(
                parallel.run_indexed(data.len(), |i| slow_double(data[i])),
                expected,
                "{case}"
            );
        }
    }
}

/// A pool allocates its per-worker state before it starts a thread: a count no machine runs
/// aborted the process (an allocation of terabytes), which neither `Err` nor `catch_unwind` could
/// report. Refused up front with a typed error.
#[test]
fn thread_counts_above_the_maximum_are_typed_errors_not_aborts() {
    for asked in [MAX_NUM_THREADS + 1, usize::MAX] {
        let error = ThreadPoolBuilder::new()
            .num_threads(asked)
            .build()
            .unwrap_err();
        assert!(error.is_too_many_threads(), "{error}");
        assert!(!error.is_spawn_failure());
        assert!(error.to_string().contains(&asked.to_string()), "{error}");
    }
    let too_many = ConfigError::TooManyJobs { n_jobs: i32::MAX };
    assert_eq!(parjob::effective_n_jobs(i32::MAX), Err(too_many));
    assert_eq!(
        parjob::effective_n_jobs(MAX_NUM_THREADS as i32),
        Ok(MAX_NUM_THREADS),
        "the maximum itself is allowed"
    );
    assert_eq!(
        parjob::effective_n_jobs(MAX_NUM_THREADS as i32 + 1),
        Err(ConfigError::TooManyJobs {
            n_jobs: MAX_NUM_THREADS as i32 + 1
        })
    );
    // Negative values count down from the cores and are never too many.
    assert_eq!(parjob::effective_n_jobs(i32::MIN), Ok(1));
    let parallel = Parallel::new().n_jobs(i32::MAX);
    let tried: Result<Vec<u32>, Error<()>> =
        parallel.try_run((0..4u32).map(|x| delayed(|x: u32| Ok(x))(x)));
    assert!(
        matches!(tried, Err(Error::Config { error }) if error == too_many),
        "{tried:?}"
    );
    let payload = catch_unwind(AssertUnwindSafe(|| {
        parallel.run((0..4u32).map(|x| delayed(|x: u32| x)(x)))
    }))
    .unwrap_err();
    assert!(
        panic_message(&*payload).contains("n_jobs == 2147483647"),
        "{}",
        panic_message(&*payload)
    );
    let payload = catch_unwind(AssertUnwindSafe(|| parallel.run_indexed(4, |i| i))).unwrap_err();
    assert!(panic_message(&*payload).contains("invalid Parallel configuration"));
}

/// std rounds a tiny stack up to its own minimum (16 KiB), too small for a worker's start-up and
/// exit: a pool built with `stack_size(0)` crashed (SIGSEGV) when dropped, even idle, and one
/// that ran tasks overflowed its stack. Sizes below `MIN_STACK_SIZE` are raised to it.
#[test]
fn a_stack_size_below_the_minimum_is_raised_not_a_crash() {
    for bytes in [0, 1, 16 * 1024] {
        let idle = ThreadPoolBuilder::new()
            .num_threads(2)
            .stack_size(bytes)
            .build()
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        drop(idle);
        let pool = ThreadPoolBuilder::new()
            .num_threads(2)
            .stack_size(bytes)
            .build()
            .unwrap();
        assert_eq!(pool.install(|| parjob::join(|| 1, || 2)), (1, 2));
        let mut data = vec![1u64; 256];
        pool.scope(|s| {
            for chunk in data.chunks_mut(16) {
                s.spawn(move |_| chunk.iter_mut().for_each(|x| *x += 1));
            }
        });
        assert!(data.iter().all(|&x| x == 2));
        let doubled = Parallel::new()
            .n_jobs(2)
            .backend(Backend::Pool(pool.clone()))
            .run((0..64u64).map(|x| delayed(|x: u64| x * 2)(x)));
        assert_eq!(doubled, (0..64).map(|x| x * 2).collect::<Vec<_>>());
        drop(pool);
    }
}

/// `deadline`: once it has passed, no task starts. The splittable form claims large index ranges
/// first (a quarter of a runner's share) and checked the deadline only between claims, so a claim
/// went on for tens of tasks after it. Index 0 outlasts the deadline, and every other index waits
/// until index 0 is done: after that, any index that starts has started after the deadline. So
/// at most index 0 and one index per other runner (already waiting when the deadline passed) may
/// have started, whatever the timing (index 0 never waits, so nothing can hang).
#[test]
fn no_index_of_a_claim_starts_after_the_deadline() {
    for n_jobs in [1usize, 2] {
        for splittable in ["run_indexed", "map"] {
            let started = AtomicUsize::new(0);
            let index_0_done = AtomicBool::new(false);
            let task = |i: usize| {
                started.fetch_add(1, Ordering::SeqCst);
                if i == 0 {
                    std::thread::sleep(Duration::from_millis(60));
                    index_0_done.store(true, Ordering::SeqCst);
                } else {
                    while !index_0_done.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                i
            };
            let parallel = Parallel::new()
                .n_jobs(n_jobs as i32)
                .deadline(Duration::from_millis(20));
            let items: Vec<usize> = (0..64).collect();
            let outcome = catch_unwind(AssertUnwindSafe(|| match splittable {
                "map" => parallel.map(&items, |&i| task(i)),
                _ => parallel.run_indexed(64, task),
            }));
            let payload = outcome.expect_err("the deadline skipped indices");
            assert!(
                panic_message(&*payload).contains("timed out"),
                "{}",
                panic_message(&*payload)
            );
            // (None at all if the deadline passed before the first claim: a machine that
            // stalled this thread for 20 ms.)
            let started = started.load(Ordering::SeqCst);
            assert!(
                started <= n_jobs,
                "n_jobs {n_jobs}, {splittable}: {started} indices started"
            );
        }
    }
}

/// joblib's `timeout`: once a wait for the next result exceeds it, tasks not yet started are
/// cancelled and the call fails. Every runner is inside a task of 1 s, so no result can come
/// within the 100 ms timeout: it expires while they run, and the other tasks must never start.
/// Until round 13 only the driver's wait checked it: on the default backend the calling thread
/// runs tasks too, and inside one it noticed nothing while the workers started every remaining
/// task (the call failed after all of them had run); with more runners than tasks it never
/// waited and the call succeeded; on a pool worker (`install`) the timeout was never seen at all.
#[test]
fn an_expired_timeout_cancels_the_tasks_not_started() {
    let limit = Duration::from_millis(100);
    let started = AtomicUsize::new(0);
    let task = |_: u32| -> Result<(), ()> {
        started.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_secs(1));
        Ok(())
    };
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let expect_timeout = |tried: Result<Vec<()>, Error<()>>, case: &str| {
        assert!(
            matches!(tried, Err(Error::Timeout { timeout, .. }) if timeout == limit),
            "{case}: {tried:?}"
        );
    };
    // Two runners (the caller and a worker), six tasks: at most the first two start.
    let tried = Parallel::new()
        .n_jobs(2)
        .timeout(limit)
        .try_run((0..6).map(|i| delayed(task)(i)));
    expect_timeout(tried, "default backend");
    let ran = started.swap(0, Ordering::SeqCst);
    assert!(ran <= 2, "default backend: {ran} tasks started");
    // The same call made on a worker of `pool`.
    let tried = pool.install(|| {
        Parallel::new()
            .n_jobs(2)
            .timeout(limit)
            .try_run((0..6).map(|i| delayed(task)(i)))
    });
    expect_timeout(tried, "on a worker");
    let ran = started.swap(0, Ordering::SeqCst);
    assert!(ran <= 2, "on a worker: {ran} tasks started");
    // More runners than tasks: nothing is left to cancel, but the first result still comes
    // later than the timeout, so the call fails (as joblib raises).
    let tried = Parallel::new()
        .n_jobs(4)
        .timeout(limit)
        .try_run((0..3).map(|i| delayed(task)(i)));
    expect_timeout(tried, "more runners than tasks");
}

/// A call with a limit, nested in a task that the calling thread runs for an outer call while
/// every worker of the pool is busy: the calling thread runs the nested call's tasks itself. (A
/// first fix of the timeout above made a limited call's caller only dispatch and wait: this one
/// then waited for a worker until its own timeout failed it.)
#[test]
fn a_limited_call_nested_in_a_task_of_the_caller_does_not_wait_for_a_worker() {
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let release = AtomicBool::new(false);
    let b_started = AtomicBool::new(false);
    let (release, b_started) = (&release, &b_started);
    let hold = move || {
        while !release.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let pool = &pool;
    std::thread::scope(|s| {
        // Worker 1: busy until released.
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        s.spawn(move || {
            pool.install(move || {
                held_tx.send(()).unwrap();
                hold();
            })
        });
        held_rx.recv().unwrap();
        // A 2-task call: task 0 on this thread, task 1 taken by worker 2, which it keeps busy.
        let outcomes = Parallel::new()
            .n_jobs(2)
            .backend(Backend::Pool(pool.clone()))
            .run((0..2).map(|i| {
                parjob::Delayed::new(move || {
                    if i == 1 {
                        b_started.store(true, Ordering::SeqCst);
                        hold();
                        return Ok(Vec::new());
                    }
                    while !b_started.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    // Both workers busy: this thread runs these tasks itself.
                    let inner = Parallel::new()
                        .n_jobs(2)
                        .timeout(Duration::from_secs(2))
                        .deadline(Duration::from_secs(2))
                        .try_run((0..4u32).map(|x| delayed(|x: u32| Ok::<u32, ()>(x + 1))(x)));
                    release.store(true, Ordering::SeqCst);
                    inner
                })
            }));
        release.store(true, Ordering::SeqCst);
        assert_eq!(outcomes[0].as_ref().unwrap(), &vec![1, 2, 3, 4]);
    });
}

/// Run by `parjob_num_threads_above_the_maximum_is_ignored` in a child process with
/// `PARJOB_NUM_THREADS` set (the value is read once per process).
#[test]
#[ignore = "a child process of parjob_num_threads_above_the_maximum_is_ignored"]
fn child_reports_its_cpu_count() {
    let all = parjob::effective_n_jobs(-1).expect("-1 resolves");
    println!("cpu_count={} n_jobs(-1)={all}", parjob::cpu_count());
}

/// `PARJOB_NUM_THREADS` above `MAX_NUM_THREADS` is ignored like any invalid value: taken, it made
/// `n_jobs(-1)` resolve past the maximum and the global pool fail to start (a panic from `run`).
#[test]
fn parjob_num_threads_above_the_maximum_is_ignored() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (value, expected) in [("100000", cores), ("3", 3), ("0", cores)] {
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "child_reports_its_cpu_count",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env("PARJOB_NUM_THREADS", value)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&child.stdout);
        assert!(child.status.success(), "{value}: {stdout}");
        assert!(
            stdout.contains(&format!("cpu_count={expected} n_jobs(-1)={expected}")),
            "PARJOB_NUM_THREADS={value}: {stdout}"
        );
    }
}

/// A timeout that a runner found expired fails the call even when the driver woke for the
/// deadline first and nothing was left to skip (the deadline's "skipped nothing, succeeded" rule
/// let such a call return `Ok`).
#[test]
fn a_timeout_found_by_a_runner_fails_the_call_whatever_the_deadline_saw() {
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let limit = Duration::from_millis(300);
    let budget = Duration::from_millis(150);
    // Two tasks of 1 s on the pool's two workers (the caller only dispatches under limits on
    // `Backend::Pool`): the driver wakes at the 150 ms deadline with every task started, and both
    // results come a second after the call began, past the timeout. The call must fail with the
    // timeout (it returned `Ok`); with the deadline only on a machine so loaded that a worker had
    // not started its task 150 ms into the call (then a task was skipped).
    let tried: Result<Vec<u32>, Error<()>> = Parallel::new()
        .n_jobs(2)
        .backend(Backend::Pool(pool))
        .timeout(limit)
        .deadline(budget)
        .try_run((0..2u32).map(|i| {
            delayed(|i: u32| {
                std::thread::sleep(Duration::from_secs(1));
                Ok(i)
            })(i)
        }));
    assert!(
        matches!(tried, Err(Error::Timeout { timeout, .. }) if timeout == limit || timeout == budget),
        "{tried:?}"
    );
}

/// The timeout is the longest wait for a result. Time the caller spends in its own user code, a
/// slow progress callback or a slow input iterator, is not such a wait (joblib's clock runs only
/// while its caller polls for a result): tasks that are all quick succeed, however long those
/// take. (Once every runner kept the timeout, a slow callback failed such calls.)
#[test]
fn a_slow_callback_or_input_is_not_a_wait_for_a_result() {
    let limit = Duration::from_millis(300);
    let slow = Duration::from_millis(400);
    for n_jobs in [1, 2] {
        let sum: Result<Vec<u32>, Error<()>> = Parallel::new()
            .n_jobs(n_jobs)
            .timeout(limit)
            .on_progress(move |done, _| {
                if done <= 2 {
                    std::thread::sleep(slow);
                }
            })
            .try_run((0..20u32).map(|i| delayed(|i: u32| Ok(i * 2))(i)));
        assert_eq!(sum.expect("slow callback").len(), 20, "n_jobs {n_jobs}");
        let slow_input = (0..20u32).inspect(|&i| {
            if i < 2 {
                std::thread::sleep(slow);
            }
        });
        let sum: Result<Vec<u32>, Error<()>> = Parallel::new()
            .n_jobs(n_jobs)
            .timeout(limit)
            .try_run(slow_input.map(|i| delayed(|i: u32| Ok(i * 2))(i)));
        assert_eq!(sum.expect("slow input").len(), 20, "n_jobs {n_jobs}");
    }
}
