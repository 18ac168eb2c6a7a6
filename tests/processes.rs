//! The process backend (cargo feature `processes`): crash isolation, timeouts, reuse, set-up.
//!
//! Worker processes re-enter this test binary through `procspawn_test_helper` (the test that
//! `enable_test_support!` defines). Every test here holds `SERIAL`, so only one test's workers
//! exist at a time and the child-process checks see only their own.

#![cfg(feature = "processes")]

parjob::processes::enable_test_support!();

use parjob::processes::{ProcessPool, ProcessPoolBuilder, WorkerDeath, INNER_THREAD_VARS};
use parjob::{delayed, delayed_fn, parallel_backend, Backend, Error, Parallel};
use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;
use std::time::Duration;

mod common;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const BAD: u64 = 50;

fn work(x: u64) -> u64 {
    x * 3 + 1
}

fn aborts(x: u64) -> u64 {
    if x == BAD {
        std::process::abort();
    }
    work(x)
}

fn segfaults(x: u64) -> u64 {
    if x == BAD {
        // A write into the unmapped first page (address 8: non-null, so std's debug checks do
        // not turn it into an abort first). Deliberately invalid: it must kill the worker.
        let address = std::hint::black_box(8usize) as *mut u64;
        // SAFETY: not sound on purpose; this runs only in a worker process, which it kills.
        unsafe { address.write_volatile(1) };
    }
    work(x)
}

fn recurse(depth: u64) -> u64 {
    if depth == u64::MAX {
        return 0;
    }
    let frame = std::hint::black_box([depth; 64]);
    recurse(depth + 1).wrapping_add(frame[7])
}

fn overflows(x: u64) -> u64 {
    if x == BAD {
        return recurse(0);
    }
    work(x)
}

fn hangs(x: u64) -> u64 {
    if x == BAD {
        loop {
            std::hint::spin_loop();
        }
    }
    work(x)
}

fn panics(x: u64) -> u64 {
    if x == BAD {
        panic!("task {x} panicked on purpose");
    }
    work(x)
}

fn checked(x: u64) -> Result<u64, String> {
    match x {
        7 => Err("seven is not allowed".to_owned()),
        BAD => std::process::abort(),
        _ => Ok(work(x)),
    }
}

/// Pids of this process's children (from /proc), with whether each is a zombie.
fn children() -> Vec<(u32, bool)> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command (which is in parentheses and may hold spaces).
        let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(me) {
            found.push((pid, fields[0] == "Z"));
        }
    }
    found
}

fn two_workers() -> ProcessPool {
    ProcessPoolBuilder::new().num_workers(2).build().unwrap()
}

/// Drops `pool` and checks that none of `pids` (every worker it ever had) is still our child,
/// and that no child of ours is a zombie.
fn assert_gone(pool: ProcessPool, mut pids: HashSet<u32>) {
    pids.extend(pool.worker_pids());
    drop(pool);
    let left: Vec<_> = children()
        .into_iter()
        .filter(|(pid, zombie)| *zombie || pids.contains(pid))
        .collect();
    assert!(left.is_empty(), "worker processes left behind: {left:?}");
}

/// 100 tasks on 2 workers, task 50 kills its worker: the other 99 results, the typed error for
/// 50, a working next call, and no process left behind.
fn crash_in_the_middle(
    task: fn(u64) -> u64,
    timeout: Option<Duration>,
) -> Error<std::convert::Infallible> {
    let pool = two_workers();
    let mut pids: HashSet<u32> = pool.worker_pids().into_iter().collect();
    assert_eq!(pids.len(), 2);
    let mut parallel = Parallel::new()
        .n_jobs(2)
        .backend(Backend::ProcessPool(pool.clone()));
    if let Some(timeout) = timeout {
        parallel = parallel.timeout(timeout);
    }
    let outcomes: Vec<_> = parallel
        .run_iter_in_processes((0..100u64).map(|x| delayed_fn(task)(x)))
        .collect();
    assert_eq!(outcomes.len(), 100);
    let mut error = None;
    for (i, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok(value) => assert_eq!(value, work(i as u64), "task {i}"),
            Err(e) => {
                assert_eq!(i as u64, BAD, "only task {BAD} fails, not {i}: {e}");
                assert_eq!(e.task_index(), Some(BAD as usize));
                error = Some(e);
            }
        }
    }
    let error = error.expect("task 50 failed");
    assert!(pool.restarts() >= 1, "the dead worker was replaced");
    pids.extend(pool.worker_pids());
    // The same backend serves the next call.
    let next = parallel.run_in_processes((0..100u64).map(|x| delayed_fn(work)(x)));
    assert_eq!(next, (0..100).map(work).collect::<Vec<_>>());
    drop(parallel);
    assert_gone(pool, pids);
    error
}

#[test]
fn abort_in_the_middle_of_100_tasks() {
    let _serial = serial();
    let error = crash_in_the_middle(aborts, None);
    match &error {
        Error::WorkerCrashed { index, death } => {
            assert_eq!(*index, 50);
            assert_eq!(*death, WorkerDeath::Signal(libc::SIGABRT));
        }
        other => panic!("expected WorkerCrashed, got {other:?}"),
    }
    assert!(error.to_string().contains("SIGABRT"), "{error}");
}

#[test]
fn segfault_in_the_middle_of_100_tasks() {
    let _serial = serial();
    let error = crash_in_the_middle(segfaults, None);
    assert!(
        matches!(&error, Error::WorkerCrashed { index: 50, death: WorkerDeath::Signal(s) } if *s == libc::SIGSEGV),
        "{error:?}"
    );
}

#[test]
fn stack_overflow_in_the_middle_of_100_tasks() {
    let _serial = serial();
    let error = crash_in_the_middle(overflows, None);
    // Rust's overflow handler reports and aborts; without it the guard page's SIGSEGV kills.
    assert!(
        matches!(&error, Error::WorkerCrashed { index: 50, death: WorkerDeath::Signal(s) } if *s == libc::SIGABRT || *s == libc::SIGSEGV),
        "{error:?}"
    );
}

#[test]
fn infinite_loop_is_killed_at_the_timeout() {
    let _serial = serial();
    let error = crash_in_the_middle(hangs, Some(Duration::from_millis(300)));
    assert!(error.is_timeout(), "{error:?}");
    assert!(
        matches!(error, Error::TaskTimeout { index: 50, timeout } if timeout == Duration::from_millis(300)),
        "{error:?}"
    );
}

#[test]
fn a_panicking_task_comes_back_as_its_message() {
    let _serial = serial();
    let pool = two_workers();
    let parallel = Parallel::new()
        .n_jobs(2)
        .backend(Backend::ProcessPool(pool.clone()));
    let payload = catch_unwind(AssertUnwindSafe(|| {
        parallel.run_in_processes((0..100u64).map(|x| delayed_fn(panics)(x)))
    }))
    .unwrap_err();
    let message = payload.downcast_ref::<String>().expect("a String payload");
    assert_eq!(message, "task 50 panicked on purpose");
    // In the iterator: the results before it, then the panic at its position.
    let mut iter = parallel.run_iter_in_processes((0..100u64).map(|x| delayed_fn(panics)(x)));
    for i in 0..50 {
        assert_eq!(iter.next().unwrap().unwrap(), work(i));
    }
    let payload = catch_unwind(AssertUnwindSafe(|| iter.next())).unwrap_err();
    assert_eq!(
        payload.downcast_ref::<String>().map(String::as_str),
        Some("task 50 panicked on purpose")
    );
    drop(iter);
    // A panic does not kill the worker.
    assert_eq!(pool.restarts(), 0);
    drop(parallel);
    assert_gone(pool, HashSet::new());
}

/// `run_in_processes` over an input whose `next()` panics and whose own `Drop` panics too: the
/// input's panic is the call's, and the input is dropped before it unwinds, contained (the call
/// that owns it was dropped by the unwinding, and the input's `Drop` aborted the process).
#[test]
fn an_input_that_panics_and_panics_when_dropped_does_not_abort() {
    /// Counts up from 1 and panics at its second field.
    struct Breaks(u64, u64);
    impl Iterator for Breaks {
        type Item = u64;
        fn next(&mut self) -> Option<u64> {
            self.0 += 1;
            if self.0 == self.1 {
                panic!("input broke");
            }
            Some(self.0)
        }
    }
    impl Drop for Breaks {
        fn drop(&mut self) {
            panic!("input dropped");
        }
    }
    let _serial = serial();
    let pool = two_workers();
    let parallel = Parallel::new()
        .n_jobs(2)
        .backend(Backend::ProcessPool(pool.clone()));
    let payload = catch_unwind(AssertUnwindSafe(|| {
        parallel.run_in_processes(Breaks(0, 20).map(|x| delayed_fn(work)(x)))
    }))
    .unwrap_err();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"input broke"));
    // A stream over such an input, dropped while its consumer's panic unwinds: the consumer's
    // panic goes on (the input's `Drop`, run by that unwinding, aborted the process).
    let payload = catch_unwind(AssertUnwindSafe(|| {
        for result in
            parallel.run_iter_in_processes(Breaks(0, u64::MAX).map(|x| delayed_fn(work)(x)))
        {
            if result.expect("task ran") > 10 {
                panic!("consumer gave up");
            }
        }
    }))
    .unwrap_err();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"consumer gave up"));
    assert_eq!(pool.restarts(), 0);
    drop(parallel);
    assert_gone(pool, HashSet::new());
}

#[test]
fn run_panics_with_the_crash_after_the_other_tasks() {
    let _serial = serial();
    let pool = two_workers();
    let parallel = Parallel::new().backend(Backend::ProcessPool(pool.clone()));
    let payload = catch_unwind(AssertUnwindSafe(|| {
        parallel.run_in_processes((0..100u64).map(|x| delayed_fn(aborts)(x)))
    }))
    .unwrap_err();
    let message = payload.downcast_ref::<String>().expect("a String payload");
    assert!(
        message.contains("task 50") && message.contains("SIGABRT"),
        "{message}"
    );
    drop(parallel);
    assert_gone(pool, HashSet::new());
}

#[test]
fn try_run_returns_the_first_error_by_index() {
    let _serial = serial();
    let pool = two_workers();
    let parallel = Parallel::new().backend(Backend::ProcessPool(pool.clone()));
    match parallel.try_run_in_processes((0..100u64).map(|x| delayed_fn(checked)(x))) {
        Err(Error::Task { index: 7, error }) => assert_eq!(error, "seven is not allowed"),
        other => panic!("expected the task error of 7, got {other:?}"),
    }
    match parallel.try_run_in_processes((8..100u64).map(|x| delayed_fn(checked)(x))) {
        Err(Error::WorkerCrashed { index, death }) => {
            assert_eq!((index, death.signal()), (42, Some(libc::SIGABRT)));
        }
        other => panic!("expected the crash of task 42 (= input 50), got {other:?}"),
    }
    let ok = parallel.try_run_in_processes((51..60u64).map(|x| delayed_fn(checked)(x)));
    assert_eq!(ok.unwrap(), (51..60).map(work).collect::<Vec<_>>());
    drop(parallel);
    assert_gone(pool, HashSet::new());
}

#[test]
fn backend_processes_is_selected_like_threads_and_reused() {
    let _serial = serial();
    let before: HashSet<u32> = children().into_iter().map(|(pid, _)| pid).collect();
    let first = parallel_backend(Backend::Processes, || {
        assert_eq!(parjob::effective_n_jobs(2), Ok(2));
        Parallel::new()
            .n_jobs(2)
            .run_in_processes((0..1000u64).map(|x| delayed_fn(work)(x)))
    });
    assert_eq!(first, (0..1000).map(work).collect::<Vec<_>>());
    let workers: HashSet<u32> = children().into_iter().map(|(pid, _)| pid).collect();
    let started: Vec<_> = workers.difference(&before).collect();
    // The second call reuses the same two processes (cached, like the thread pools).
    let second = Parallel::new()
        .n_jobs(2)
        .backend(Backend::Processes)
        .run_unordered_in_processes((0..10u64).map(|x| delayed_fn(work)(x)))
        .map(|(i, r)| (i, r.unwrap()))
        .collect::<Vec<_>>();
    assert_eq!(second.len(), 10);
    assert!(second.iter().all(|&(i, r)| r == work(i as u64)));
    let after: HashSet<u32> = children().into_iter().map(|(pid, _)| pid).collect();
    assert!(started.len() <= 2 && started.iter().all(|pid| after.contains(pid)));
    // The thread methods under a process backend run on threads (tasks may borrow).
    let data = [1u64, 2, 3];
    let borrowed = parallel_backend(Backend::Processes, || {
        Parallel::new()
            .n_jobs(2)
            .run(data.iter().map(|x| delayed(|x: &u64| x * 10)(x)))
    });
    assert_eq!(borrowed, vec![10, 20, 30]);
}

#[test]
fn thread_backends_run_the_process_methods_on_threads() {
    let _serial = serial();
    let out = parallel_backend(Backend::Sequential, || {
        Parallel::new().run_in_processes((0..10u64).map(|x| delayed_fn(work)(x)))
    });
    assert_eq!(out, (0..10).map(work).collect::<Vec<_>>());
    let iter: Vec<_> = Parallel::new()
        .n_jobs(2)
        .run_iter_in_processes((0..10u64).map(|x| delayed_fn(work)(x)))
        .map(Result::unwrap)
        .collect();
    assert_eq!(iter, out);
}

fn double(x: u64) -> u64 {
    2 * x
}

fn square(x: u64) -> u64 {
    x * x
}

/// Which function task `x` of the mixed input calls: runs of 7 tasks each, in turn `double`,
/// `square` and a closure that captures nothing.
fn mixed_task(x: u64) -> parjob::Delayed<fn(u64) -> u64, (u64,)> {
    match (x / 7) % 3 {
        0 => delayed_fn(double)(x),
        1 => delayed_fn(square)(x),
        _ => delayed_fn(|x: u64| x + 1)(x),
    }
}

fn mixed_expected(x: u64) -> u64 {
    match (x / 7) % 3 {
        0 => 2 * x,
        1 => x * x,
        _ => x + 1,
    }
}

/// One call may mix functions of one signature: a batch ends where the next task calls another
/// function, so every task runs its own: in an automatic call (its first batches inline, before
/// the pool's shared memory exists), with batches of a fixed size that would otherwise span
/// several runs, in slabs and (many batches out at once, more than the slabs) inline, ordered
/// and unordered.
#[test]
fn one_call_may_mix_functions_and_each_task_runs_its_own() {
    let _serial = serial();
    let expected: Vec<u64> = (0..3_000).map(mixed_expected).collect();
    let pool = two_workers();
    let parallel = Parallel::new()
        .n_jobs(2)
        .backend(Backend::ProcessPool(pool.clone()));
    assert_eq!(
        parallel.run_in_processes((0..3_000).map(mixed_task)),
        expected
    );
    let fixed = batches_of(&pool, 100);
    assert_eq!(fixed.run_in_processes((0..3_000).map(mixed_task)), expected);
    let mut unordered: Vec<(usize, u64)> = fixed
        .run_unordered_in_processes((0..3_000).map(mixed_task))
        .map(|(i, r)| (i, r.unwrap()))
        .collect();
    unordered.sort_unstable();
    assert!(unordered
        .iter()
        .map(|&(_, r)| r)
        .eq(expected.iter().copied()));
    assert!(unordered.iter().enumerate().all(|(i, &(j, _))| i == j));
    // Slabs made, batches of 10 (cut short at each change of function), 200 out at once.
    let pool = two_workers_with_slabs();
    let (in_slabs, inline) = (pool.shared_memory_batches(), pool.no_free_slab_batches());
    let many_out = batches_of(&pool, 10).pre_dispatch(200);
    assert_eq!(
        many_out.run_in_processes((0..3_000).map(mixed_task)),
        expected
    );
    assert!(
        pool.shared_memory_batches() > in_slabs,
        "some batches in slabs"
    );
    assert!(pool.no_free_slab_batches() > inline, "some batches inline");
}

/// A worker dies in the middle of a batch of a mixed call: the batch's tasks are sent again one
/// by one, each with its own function, so only the task that kills its worker fails.
#[test]
fn a_crashed_batch_of_a_mixed_call_is_retried_with_each_tasks_function() {
    let _serial = serial();
    let pool = two_workers_with_slabs();
    let task = |x: u64| {
        if x == BAD || (x / 7) % 2 == 0 {
            delayed_fn(aborts)(x)
        } else {
            delayed_fn(square)(x)
        }
    };
    let outcomes: Vec<_> = batches_of(&pool, 100)
        .run_iter_in_processes((0..200u64).map(task))
        .collect();
    for (x, outcome) in outcomes.into_iter().enumerate() {
        let x = x as u64;
        match outcome {
            Ok(value) => {
                assert_ne!(x, BAD);
                let expected = if (x / 7) % 2 == 0 { work(x) } else { x * x };
                assert_eq!(value, expected, "task {x}");
            }
            Err(Error::WorkerCrashed { index, .. }) => assert_eq!(index as u64, BAD),
            Err(other) => panic!("task {x}: {other}"),
        }
    }
}

/// A `fn(u64) -> u64` at the address of a function of the C library (a shared library of its
/// own in this dynamically linked test binary). It is never called: the parent refuses to send
/// it, which is what the tests using it check (were it sent, the worker would jump to an address
/// with nothing of this signature at it and die; the test would then fail on the crash).
fn foreign_function() -> fn(u64) -> u64 {
    // SAFETY: see above: the value is only ever compared and refused, never called.
    unsafe { std::mem::transmute(libc::getpid as unsafe extern "C" fn() -> libc::pid_t) }
}

/// A function that lives in a shared library is loaded at another address in a worker process,
/// so it cannot be named there by its offset: its task fails in the parent with a message that
/// says so (the worker is never asked to call it), and every task around it runs.
#[test]
fn a_function_of_a_shared_library_is_refused_not_sent() {
    let _serial = serial();
    let pool = two_workers();
    let foreign = foreign_function();
    let tasks = (0..9u64).map(|x| {
        if x == 4 {
            delayed_fn(foreign)(x)
        } else {
            delayed_fn(work)(x)
        }
    });
    let parallel = Parallel::new()
        .n_jobs(2)
        .backend(Backend::ProcessPool(pool.clone()));
    let mut outcomes = parallel.run_iter_in_processes(tasks);
    for x in 0..9u64 {
        let next = catch_unwind(AssertUnwindSafe(|| outcomes.next()));
        if x == 4 {
            let payload = next.expect_err("the refused task fails as a task panic");
            let message = payload.downcast_ref::<String>().expect("a message");
            assert!(message.contains("not in the executable"), "{message}");
        } else {
            assert_eq!(next.unwrap().unwrap().unwrap(), work(x), "task {x}");
        }
    }
    assert!(outcomes.next().is_none());
    drop(outcomes);
    drop(parallel);
    // An endless input of such tasks: each `next()` reads at most a window's worth of them
    // (refused tasks count against the window like batches sent), not the input to its end
    // (which, before that rule, never came: the check runs on a thread of its own, so that such
    // a regression fails here instead of hanging the test binary).
    let (done, finished) = std::sync::mpsc::channel();
    let endless_pool = pool.clone();
    std::thread::spawn(move || {
        let mut pulled = 0usize;
        let endless = std::iter::repeat_with(|| {
            pulled += 1;
            delayed_fn(foreign)(0)
        });
        let mut outcomes = Parallel::new()
            .n_jobs(2)
            .backend(Backend::ProcessPool(endless_pool))
            .pre_dispatch(4)
            .run_iter_in_processes(endless);
        let refused = (0..3)
            .filter(|_| catch_unwind(AssertUnwindSafe(|| outcomes.next())).is_err())
            .count();
        drop(outcomes);
        let _ = done.send((refused, pulled));
    });
    let (refused, pulled) = finished
        .recv_timeout(Duration::from_secs(30))
        .expect("a process iterator over endless refused tasks hung in next()");
    assert_eq!(refused, 3);
    assert!(
        pulled <= 3 + 4,
        "{pulled} tasks read for 3 outcomes with a window of 4"
    );
    // The pool's initializer crosses the same way, and is refused the same way: before any
    // worker starts.
    let foreign_initializer: fn() =
        // SAFETY: as for `foreign_function`: refused by `build`, never called.
        unsafe { std::mem::transmute(libc::getpid as unsafe extern "C" fn() -> libc::pid_t) };
    let err = ProcessPoolBuilder::new()
        .num_workers(1)
        .initializer(foreign_initializer)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("not in the executable"), "{err}");
    assert!(err.worker_death().is_none());
    assert_gone(pool, HashSet::new());
}

static INITIALIZED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn set_up() {
    INITIALIZED.store(42, std::sync::atomic::Ordering::Relaxed);
}

fn read_set_up(_: ()) -> u64 {
    INITIALIZED.load(std::sync::atomic::Ordering::Relaxed)
}

fn failing_set_up() {
    panic!("no database");
}

#[test]
fn initializer_runs_in_every_worker() {
    let _serial = serial();
    let pool = ProcessPoolBuilder::new()
        .num_workers(2)
        .initializer(set_up)
        .build()
        .unwrap();
    let seen = Parallel::new()
        .backend(Backend::ProcessPool(pool.clone()))
        .run_in_processes((0..20).map(|_| delayed_fn(read_set_up)(())));
    assert!(seen.iter().all(|&v| v == 42), "{seen:?}");
    // Replaced workers run it too.
    let after_crash = Parallel::new()
        .backend(Backend::ProcessPool(pool.clone()))
        .run_iter_in_processes((0..100u64).map(|x| delayed_fn(aborts)(x)))
        .filter(Result::is_err)
        .count();
    assert_eq!(after_crash, 1);
    let seen = Parallel::new()
        .backend(Backend::ProcessPool(pool.clone()))
        .run_in_processes((0..20).map(|_| delayed_fn(read_set_up)(())));
    assert!(seen.iter().all(|&v| v == 42), "{seen:?}");
    assert_gone(pool, HashSet::new());

    let err = ProcessPoolBuilder::new()
        .num_workers(2)
        .initializer(failing_set_up)
        .build()
        .unwrap_err();
    assert_eq!(
        err.worker_death(),
        Some(&WorkerDeath::InitializerPanicked("no database".to_owned()))
    );
    assert!(children().iter().all(|(_, zombie)| !zombie));
}

fn inner_env(_: ()) -> Vec<Option<String>> {
    INNER_THREAD_VARS
        .iter()
        .map(|var| std::env::var(var).ok())
        .chain([Some(parjob::cpu_count().to_string())])
        .collect()
}

#[test]
fn workers_get_inner_max_num_threads() {
    let _serial = serial();
    let pool = ProcessPoolBuilder::new().num_workers(2).build().unwrap();
    let seen = Parallel::new()
        .backend(Backend::ProcessPool(pool.clone()))
        .run_in_processes([delayed_fn(inner_env)(())]);
    let default = (parjob::cpu_count() / 2).max(1).to_string();
    for (var, value) in INNER_THREAD_VARS.iter().zip(&seen[0]) {
        let expected = std::env::var(var).unwrap_or_else(|_| default.clone());
        assert_eq!(value.as_deref(), Some(expected.as_str()), "{var}");
    }
    // parjob's own cpu_count in the worker follows PARJOB_NUM_THREADS.
    let parjob_threads = std::env::var("PARJOB_NUM_THREADS").unwrap_or(default);
    assert_eq!(
        seen[0][INNER_THREAD_VARS.len()].as_deref(),
        Some(parjob_threads.as_str())
    );
    assert_gone(pool, HashSet::new());

    let pool = ProcessPoolBuilder::new()
        .num_workers(1)
        .inner_max_num_threads(3)
        .build()
        .unwrap();
    let seen = Parallel::new()
        .backend(Backend::ProcessPool(pool.clone()))
        .run_in_processes([delayed_fn(inner_env)(())]);
    let omp = std::env::var("OMP_NUM_THREADS").unwrap_or_else(|_| "3".to_owned());
    assert_eq!(seen[0][0].as_deref(), Some(omp.as_str()));
    assert_gone(pool, HashSet::new());
}

#[test]
fn auto_batching_sends_few_messages_for_many_tiny_tasks() {
    let _serial = serial();
    let pool = two_workers();
    let parallel = Parallel::new().backend(Backend::ProcessPool(pool.clone()));
    let n = 200_000u64;
    let sum: u64 = parallel
        .run_in_processes((0..n).map(|x| delayed_fn(work)(x)))
        .into_iter()
        .sum();
    assert_eq!(sum, (0..n).map(work).sum::<u64>());
    assert!(
        pool.batches() < 2_000,
        "{} batches for {n} tasks",
        pool.batches()
    );
    // That call started the shared memory; the same call again goes through it.
    with_shared_memory(&pool);
    let (batches, in_slabs, no_slab) = (
        pool.batches(),
        pool.shared_memory_batches(),
        pool.no_free_slab_batches(),
    );
    let again: u64 = parallel
        .run_in_processes((0..n).map(|x| delayed_fn(work)(x)))
        .into_iter()
        .sum();
    assert_eq!(again, sum);
    // Every batch went both ways through a slab, except those that found every slab taken
    // (finished batches waiting for an earlier one keep theirs: how many depends on the
    // machine's load, so only the sum is exact).
    let (batches, in_slabs, no_slab) = (
        pool.batches() - batches,
        pool.shared_memory_batches() - in_slabs,
        pool.no_free_slab_batches() - no_slab,
    );
    assert!(in_slabs > 0, "no batch of {batches} through shared memory");
    assert_eq!(
        batches,
        in_slabs + no_slab,
        "{in_slabs} batches through shared memory, {no_slab} without a free slab"
    );
    // The same results with fixed batches, including a last short one.
    let fixed = parallel
        .batch_size(parjob::BatchSize::Fixed(7))
        .run_in_processes((0..100u64).map(|x| delayed_fn(work)(x)));
    assert_eq!(fixed, (0..100).map(work).collect::<Vec<_>>());
    assert_gone(pool, HashSet::new());
}

#[test]
fn zero_jobs_is_a_config_error() {
    let _serial = serial();
    let result = Parallel::new()
        .n_jobs(0)
        .backend(Backend::Processes)
        .try_run_in_processes((0..3u64).map(|x| delayed_fn(checked)(x)));
    assert!(matches!(result, Err(Error::Config { .. })), "{result:?}");
    assert!(ProcessPoolBuilder::new().num_workers(0).build().is_err());
}

/// Counts no machine runs are refused before anything is started or allocated for them (each
/// worker has a driver thread here, so the thread maximum applies): `n_jobs` as a typed
/// configuration error, a pool's worker count as a build error naming it.
#[test]
fn too_many_workers_is_an_error_before_anything_starts() {
    let _serial = serial();
    // Pools that `Backend::Processes` cached for earlier tests stay; none may be added.
    let before = children().len();
    let result = Parallel::new()
        .n_jobs(i32::MAX)
        .backend(Backend::Processes)
        .try_run_in_processes((0..3u64).map(|x| delayed_fn(checked)(x)));
    assert!(
        matches!(
            result,
            Err(Error::Config {
                error: parjob::ConfigError::TooManyJobs { n_jobs: i32::MAX }
            })
        ),
        "{result:?}"
    );
    for asked in [parjob::MAX_NUM_THREADS + 1, usize::MAX] {
        let error = ProcessPoolBuilder::new()
            .num_workers(asked)
            .build()
            .unwrap_err();
        assert!(error.to_string().contains(&asked.to_string()), "{error}");
        assert!(error.worker_death().is_none());
    }
    assert!(children().len() <= before, "{:?}", children());
}

/// Marks task `index` as running with a file of its own in `dir` for `ms`, and returns how many
/// tasks were running (files present) when it started: the call's concurrency, seen from the
/// worker processes, whatever the timing.
fn occupies(dir: String, index: u64, ms: u64) -> usize {
    let me = std::path::Path::new(&dir).join(format!("task-{index}"));
    std::fs::write(&me, b"").unwrap();
    let running = std::fs::read_dir(&dir).unwrap().count();
    std::thread::sleep(Duration::from_millis(ms));
    std::fs::remove_file(&me).unwrap();
    running
}

/// `n_jobs` below a `ProcessPool`'s size caps the batches running at once, as documented (and
/// as joblib's `n_jobs` does on an executor it is given). Any idle driver of the pool takes a
/// queued batch, so the window of batches in flight is what keeps the cap: it used to be 3 ×
/// `n_jobs`, and all four workers ran a call of `n_jobs(2)`.
#[test]
fn n_jobs_caps_the_batches_running_at_once_on_a_larger_process_pool() {
    let _serial = serial();
    let pool = ProcessPoolBuilder::new().num_workers(4).build().unwrap();
    let dir = std::env::temp_dir().join(format!("parjob-cap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.to_str().unwrap().to_owned();
    for n_jobs in [1, 2] {
        let seen = batches_of(&pool, 1).n_jobs(n_jobs).run_in_processes(
            (0..8u64).map(|i| parjob::delayed_fn!(occupies(path.clone(), i, 100))),
        );
        assert_eq!(seen.len(), 8);
        let peak = seen.into_iter().max().unwrap();
        assert!(
            peak <= n_jobs as usize,
            "n_jobs({n_jobs}): {peak} tasks ran at once"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
    assert_gone(pool, HashSet::new());
}

/// `Duration::MAX`, the usual "no limit", as a process call's deadline or per-task timeout:
/// never reached (`Instant::now() + Duration::MAX` panicked with an overflow).
#[test]
fn a_process_limit_of_duration_max_never_expires() {
    let _serial = serial();
    let pool = two_workers();
    let expected: Vec<u64> = (0..50).map(work).collect();
    for parallel in [
        batches_of(&pool, 5).deadline(Duration::MAX),
        batches_of(&pool, 5).timeout(Duration::MAX),
        batches_of(&pool, 5)
            .timeout(Duration::from_secs(u64::MAX))
            .deadline(Duration::MAX),
    ] {
        let tasks = || (0..50u64).map(|x| delayed_fn(work)(x));
        assert_eq!(parallel.run_in_processes(tasks()), expected);
        // `checked` refuses 7 and aborts at 50.
        let tried = parallel.try_run_in_processes((8..50u64).map(|x| delayed_fn(checked)(x)));
        assert_eq!(tried.unwrap(), (8..50).map(work).collect::<Vec<_>>());
        let streamed: Vec<u64> = parallel
            .run_iter_in_processes(tasks())
            .map(Result::unwrap)
            .collect();
        assert_eq!(streamed, expected);
    }
    assert_gone(pool, HashSet::new());
}

fn checksum(data: Vec<u8>) -> (usize, u64) {
    (data.len(), data.iter().map(|&b| u64::from(b)).sum())
}

#[test]
fn large_arguments_cross_in_bounded_batches() {
    let _serial = serial();
    let pool = two_workers();
    let inputs: Vec<Vec<u8>> = (0..12u8).map(|i| vec![i; 1 << 20]).collect();
    let expected: Vec<(usize, u64)> = inputs.iter().cloned().map(checksum).collect();
    let out = Parallel::new()
        .backend(Backend::ProcessPool(pool.clone()))
        .batch_size(parjob::BatchSize::Fixed(12))
        .run_in_processes(inputs.into_iter().map(|v| delayed_fn(checksum)(v)));
    assert_eq!(out, expected);
    // 12 MiB of arguments asked for as one batch travel as several messages of at most ~4 MiB.
    assert!(pool.batches() >= 3, "{} batches", pool.batches());
    assert_gone(pool, HashSet::new());
}

/// Makes `pool` set up its shared memory (the first call that batches tasks starts it) and
/// waits until it exists, so the test after it exercises the slabs, not the messages.
fn with_shared_memory(pool: &ProcessPool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !pool.has_shared_memory() {
        assert!(std::time::Instant::now() < deadline, "no shared memory");
        let out = Parallel::new()
            .backend(Backend::ProcessPool(pool.clone()))
            .batch_size(parjob::BatchSize::Fixed(8))
            .run_in_processes((0..64u64).map(|x| delayed_fn(work)(x)));
        assert_eq!(out, (0..64).map(work).collect::<Vec<_>>());
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn big_result(x: u64) -> Vec<u64> {
    vec![x; 8 << 10]
}

#[test]
fn results_larger_than_a_slab_come_back_in_the_reply() {
    let _serial = serial();
    let pool = two_workers_with_slabs();
    let in_slabs = pool.shared_memory_batches();
    // 40 results of 64 KiB in batches of 20: 1.3 MB per batch, more than a slab's outcome area.
    let out = Parallel::new()
        .backend(Backend::ProcessPool(pool.clone()))
        .batch_size(parjob::BatchSize::Fixed(20))
        .run_in_processes((0..40u64).map(|x| delayed_fn(big_result)(x)));
    assert_eq!(out.len(), 40);
    // Both batches' outcomes came back in the reply, not in their slabs.
    assert_eq!(pool.shared_memory_batches(), in_slabs);
    for (i, v) in out.iter().enumerate() {
        assert_eq!(v.len(), 8 << 10);
        assert!(v.iter().all(|&y| y == i as u64), "result {i}");
    }
    assert_gone(pool, HashSet::new());
}

fn aborts_at_3000(x: u64) -> u64 {
    if x == 3_000 {
        std::process::abort();
    }
    work(x)
}

#[test]
fn a_crash_in_a_large_batch_names_its_task_and_keeps_the_others() {
    let _serial = serial();
    let pool = two_workers_with_slabs();
    let mut pids: HashSet<u32> = pool.worker_pids().into_iter().collect();
    // Batches of 1,000 tasks, several sent to each worker: the crash loses its batch (re-sent
    // one task at a time) and the batches queued behind it on the same worker (sent again).
    let parallel = Parallel::new()
        .n_jobs(2)
        .backend(Backend::ProcessPool(pool.clone()))
        .batch_size(parjob::BatchSize::Fixed(1_000));
    let outcomes: Vec<_> = parallel
        .run_iter_in_processes((0..8_000u64).map(|x| delayed_fn(aborts_at_3000)(x)))
        .collect();
    assert_eq!(outcomes.len(), 8_000);
    for (i, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok(value) => assert_eq!(value, work(i as u64), "task {i}"),
            Err(e) => {
                assert_eq!(i, 3_000, "only task 3000 fails, not {i}: {e}");
                assert!(
                    matches!(e, Error::WorkerCrashed { index: 3_000, .. }),
                    "{e}"
                );
            }
        }
    }
    assert!(pool.restarts() >= 1);
    pids.extend(pool.worker_pids());
    drop(parallel);
    assert_gone(pool, pids);
}

/// The next call on `parallel` returns `work(x)` for every `x` in `0..n`, in order.
fn assert_serves(parallel: &Parallel<'_>, n: u64) {
    let out = parallel.run_in_processes((0..n).map(|x| delayed_fn(work)(x)));
    assert_eq!(out, (0..n).map(work).collect::<Vec<_>>());
}

/// Two workers with their shared memory made.
fn two_workers_with_slabs() -> ProcessPool {
    let pool = two_workers();
    with_shared_memory(&pool);
    pool
}

/// A `Parallel` on `pool` that cuts calls into batches of exactly `size` tasks.
fn batches_of(pool: &ProcessPool, size: usize) -> Parallel<'static> {
    Parallel::new()
        .backend(Backend::ProcessPool(pool.clone()))
        .batch_size(parjob::BatchSize::Fixed(size))
}

/// Two workers with their shared memory made, and a `Parallel` on them that cuts 1,000 tasks into
/// two batches of 500 (so each batch holds several panicking tasks).
fn two_batches_of_500_in_slabs() -> (ProcessPool, Parallel<'static>) {
    let pool = two_workers_with_slabs();
    let parallel = batches_of(&pool, 500);
    (pool, parallel)
}

/// Reads 1,000 results in order: task `i` with `i % 97 == 5` must resume a panic whose message
/// is `message(i)`; every other result goes to `check`; then the stream must end.
fn expect_every_97th_to_panic<R: std::fmt::Debug, E: std::fmt::Debug>(
    results: &mut dyn Iterator<Item = Result<R, E>>,
    message: impl Fn(u64) -> String,
    check: impl Fn(u64, R),
) {
    for i in 0..1_000u64 {
        let item = catch_unwind(AssertUnwindSafe(|| results.next()));
        if i % 97 == 5 {
            let payload = item.expect_err("this task panicked");
            assert_eq!(
                payload.downcast_ref::<String>(),
                Some(&message(i)),
                "task {i}"
            );
        } else {
            check(i, item.unwrap().unwrap().unwrap());
        }
    }
    assert!(catch_unwind(AssertUnwindSafe(|| results.next()))
        .unwrap()
        .is_none());
}

fn panics_often(x: u64) -> u64 {
    if x % 97 == 5 {
        panic!("task {x} panicked");
    }
    work(x)
}

#[test]
fn several_panics_in_one_batch_each_come_back_at_their_place() {
    let _serial = serial();
    let (pool, parallel) = two_batches_of_500_in_slabs();
    let mut iter =
        parallel.run_iter_in_processes((0..1_000u64).map(|x| delayed_fn(panics_often)(x)));
    expect_every_97th_to_panic(
        &mut iter,
        |i| format!("task {i} panicked"),
        |i, value| assert_eq!(value, work(i), "task {i}"),
    );
    drop(iter);
    // Panics do not kill workers.
    assert_eq!(pool.restarts(), 0);
    drop(parallel);
    assert_gone(pool, HashSet::new());
}

/// A result whose `Drop` panics in the worker (after it was encoded).
#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct Fuse {
    value: u64,
    blows: bool,
}

impl Drop for Fuse {
    fn drop(&mut self) {
        if self.blows {
            panic!("fuse {} blew", self.value);
        }
    }
}

fn fused(x: u64) -> Fuse {
    Fuse {
        value: work(x),
        blows: x % 97 == 5,
    }
}

/// The worker drops each result after encoding it: a `Drop` that panics makes that task a panic,
/// counted once, so every later task of the batch still runs and lands at its place.
#[test]
fn a_result_whose_drop_panics_in_the_worker_is_that_tasks_panic_only() {
    let _serial = serial();
    let (pool, parallel) = two_batches_of_500_in_slabs();
    let mut iter = parallel.run_iter_in_processes((0..1_000u64).map(|x| delayed_fn(fused)(x)));
    expect_every_97th_to_panic(
        &mut iter,
        |i| format!("fuse {} blew", work(i)),
        |i, fuse| {
            assert_eq!(fuse.value, work(i), "task {i}");
            assert!(!fuse.blows);
        },
    );
    drop(iter);
    assert_eq!(pool.restarts(), 0);
    drop(parallel);
    assert_gone(pool, HashSet::new());
}

#[test]
fn more_batches_in_flight_than_slabs_still_all_arrive() {
    let _serial = serial();
    let pool = two_workers_with_slabs();
    // A window of 200 batches of 10: far more than the pool's shared-memory slabs, so most
    // batches travel in the messages themselves.
    let out = Parallel::new()
        .backend(Backend::ProcessPool(pool.clone()))
        .pre_dispatch(200)
        .batch_size(parjob::BatchSize::Fixed(10))
        .run_in_processes((0..20_000u64).map(|x| delayed_fn(work)(x)));
    assert_eq!(out, (0..20_000).map(work).collect::<Vec<_>>());
    assert_gone(pool, HashSet::new());
}

fn echo(data: Vec<u8>) -> Vec<u8> {
    data
}

#[test]
fn large_batches_in_the_messages_both_ways_do_not_deadlock() {
    let _serial = serial();
    let pool = two_workers_with_slabs();
    // Far more batches in flight than slabs, so most travel in the messages: 8 arguments of
    // 64 KiB per request and 8 results of 64 KiB per reply, each larger than a socket's buffer.
    // A driver must never send such a request to a worker that may be sending such a reply.
    let inputs: Vec<Vec<u8>> = (0..200u32).map(|i| vec![i as u8; 64 << 10]).collect();
    let out = Parallel::new()
        .backend(Backend::ProcessPool(pool.clone()))
        .pre_dispatch(100)
        .batch_size(parjob::BatchSize::Fixed(8))
        .run_in_processes(inputs.clone().into_iter().map(|v| delayed_fn(echo)(v)));
    assert_eq!(out, inputs);
    assert_gone(pool, HashSet::new());
}

/// `work`, taking about 100 µs: batches of 50 last about 5 ms, so a call that stops early
/// leaves batches running that answer after it is gone.
fn slow_work(x: u64) -> u64 {
    std::thread::sleep(Duration::from_micros(100));
    work(x)
}

/// Checks that every shared-memory slab of `pool` (12: 6 per worker) is free again. Batches of
/// abandoned calls may still be running (a slab is free once its reply has been dropped), so one
/// call waits behind them first. Then calls with one batch out at a time find a free slab for
/// every batch unless 11 or more leaked: they hold at most 2 (the batch out and the one being
/// decoded). With 2 out at a time, a batch whose driver thread waits for a core lets the other
/// worker's batches pile up, finished and undecoded, behind it in an ordered call (the window
/// bounds the batches out, not those waiting for their turn), and on a loaded machine that took
/// every slab without any leak.
fn assert_every_slab_comes_back(pool: &ProcessPool) {
    let call = |pre_dispatch: usize| {
        let before = (pool.shared_memory_batches(), pool.no_free_slab_batches());
        let out = Parallel::new()
            .backend(Backend::ProcessPool(pool.clone()))
            .batch_size(parjob::BatchSize::Fixed(500))
            .pre_dispatch(pre_dispatch)
            .run_in_processes((0..20_000u64).map(|x| delayed_fn(work)(x)));
        assert_eq!(out, (0..20_000).map(work).collect::<Vec<_>>());
        let after = (pool.shared_memory_batches(), pool.no_free_slab_batches());
        (after.0 - before.0, after.1 - before.1)
    };
    call(6);
    for _ in 0..3 {
        // (A batch of an abandoned call that answers late still counts in the pool's total.)
        let (in_slabs, no_free_slab) = call(1);
        assert!(
            in_slabs >= 40 && no_free_slab == 0,
            "slabs leaked by the abandoned calls: {in_slabs} batches in slabs, {no_free_slab} found none free"
        );
    }
}

/// A progress callback that panics in the middle of a call: its panic reaches the caller, the
/// batches still out are dropped when they answer (after the call is gone), and their
/// shared-memory slabs come back, so later calls on the same pool run in the slabs and return
/// every result.
#[test]
fn a_progress_callback_that_panics_mid_call_leaves_the_pool_whole() {
    let _serial = serial();
    let pool = two_workers_with_slabs();
    for round in 0..4 {
        let mut updates = 0;
        let parallel = Parallel::new()
            .backend(Backend::ProcessPool(pool.clone()))
            .batch_size(parjob::BatchSize::Fixed(50))
            .on_progress(move |_, _| {
                updates += 1;
                if updates == 3 {
                    std::panic::panic_any(round);
                }
            });
        let caught = catch_unwind(AssertUnwindSafe(|| {
            parallel.run_in_processes((0..2_000u64).map(|x| delayed_fn(slow_work)(x)))
        }));
        let payload = caught.expect_err("the callback's panic reaches the caller");
        assert_eq!(payload.downcast_ref::<i32>(), Some(&round));
    }
    assert_every_slab_comes_back(&pool);
    assert_eq!(pool.restarts(), 0);
    assert_gone(pool, HashSet::new());
}

/// The input iterator panics while batches are out: the caller gets that panic, the batches left
/// running answer into nothing, and the pool serves the next calls with every result, in its
/// slabs.
#[test]
fn an_input_that_panics_mid_call_leaves_the_pool_whole() {
    let _serial = serial();
    let pool = two_workers_with_slabs();
    let parallel = batches_of(&pool, 50);
    for at in [1u64, 49, 50, 400] {
        let caught = catch_unwind(AssertUnwindSafe(|| {
            parallel.run_in_processes((0..2_000u64).map(|x| {
                if x == at {
                    std::panic::panic_any(x);
                }
                delayed_fn(slow_work)(x)
            }))
        }));
        let payload = caught.expect_err("the input's panic reaches the caller");
        assert_eq!(payload.downcast_ref::<u64>(), Some(&at));
        assert_serves(&parallel, 300);
    }
    assert_every_slab_comes_back(&pool);
    assert_eq!(pool.restarts(), 0);
    drop(parallel);
    assert_gone(pool, HashSet::new());
}

/// A result that panics when dropped in the parent (it is armed when decoded there; the worker's
/// copy is not).
#[derive(serde::Serialize, serde::Deserialize, Debug)]
struct ArmedInParent {
    value: u64,
    #[serde(skip, default = "armed")]
    armed: bool,
}

fn armed() -> bool {
    true
}

impl Drop for ArmedInParent {
    fn drop(&mut self) {
        // Even while a panic unwinds: dropping one of these then aborts the process, so parjob
        // must drop them before it raises a failure.
        if self.armed {
            panic!("dropped armed result {}", self.value);
        }
    }
}

fn armed_ok_unless_bad(x: u64) -> Result<ArmedInParent, String> {
    Ok(armed_unless_bad(x))
}

fn armed_or_err(x: u64) -> Result<ArmedInParent, String> {
    if x == BAD {
        return Err(format!("task {x} refused"));
    }
    Ok(ArmedInParent {
        value: work(x),
        armed: false,
    })
}

fn armed_unless_bad(x: u64) -> ArmedInParent {
    if x == BAD {
        panic!("task {x} failed");
    }
    ArmedInParent {
        value: work(x),
        armed: false,
    }
}

/// `run_in_processes` where task `BAD` panics and every other result panics when the parent drops
/// it: the call resumes the task's panic (not a `Drop`'s), after dropping every decoded result
/// without letting their panics escape, and the pool keeps working.
#[test]
fn results_whose_drop_panics_in_the_parent_do_not_replace_the_tasks_panic() {
    let _serial = serial();
    let pool = two_workers();
    let parallel = batches_of(&pool, 16);
    let caught = catch_unwind(AssertUnwindSafe(|| {
        parallel.run_in_processes((0..100u64).map(|x| delayed_fn(armed_unless_bad)(x)))
    }));
    let payload = caught.expect_err("task BAD's panic reaches the caller");
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(message.contains("task 50 failed"), "resumed: {message:?}");
    // `try_run_in_processes`: a task's panic is resumed, a task's `Err` returned, after the
    // decoded results are dropped (contained).
    let caught = catch_unwind(AssertUnwindSafe(|| {
        parallel.try_run_in_processes((0..100u64).map(|x| delayed_fn(armed_ok_unless_bad)(x)))
    }));
    assert!(caught.is_err(), "task BAD's panic is resumed");
    match parallel.try_run_in_processes((0..100u64).map(|x| delayed_fn(armed_or_err)(x))) {
        Err(Error::Task { index, error }) => {
            assert_eq!((index, error), (50, "task 50 refused".to_string()))
        }
        other => panic!("expected task 50's error, got {:?}", other.map(|v| v.len())),
    }
    // Unordered, dropped after reading a few: the results still held are dropped quietly.
    let mut iter = parallel.run_unordered_in_processes((0..100u64).map(|x| delayed_fn(work)(x)));
    assert!(iter.by_ref().take(3).all(|(_, r)| r.is_ok()));
    drop(iter);
    assert_serves(&parallel, 100);
    drop(parallel);
    assert_gone(pool, HashSet::new());
}

fn armed_work(x: u64) -> ArmedInParent {
    ArmedInParent {
        value: work(x),
        armed: false,
    }
}

fn armed_work_ok(x: u64) -> Result<ArmedInParent, String> {
    Ok(armed_work(x))
}

/// The panic payload of `f` as text (a `String` or `&str` payload; else empty).
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// The input panics once results whose `Drop` panics have been decoded: `run_in_processes` and
/// `try_run_in_processes` resume the input's panic after dropping those results one by one,
/// contained (dropping them while the panic unwinds would abort the process), and the pool serves
/// the next call.
#[test]
fn an_input_panic_with_decoded_results_whose_drop_panics_reaches_the_caller() {
    let _serial = serial();
    let pool = two_workers_with_slabs();
    let parallel = batches_of(&pool, 50);
    let input = |x: u64| {
        if x == 400 {
            std::panic::panic_any(x);
        }
        x
    };
    let caught = catch_unwind(AssertUnwindSafe(|| {
        parallel.run_in_processes((0..2_000u64).map(|x| delayed_fn(armed_work)(input(x))))
    }));
    let payload = caught.expect_err("the input's panic reaches the caller");
    assert_eq!(payload.downcast_ref::<u64>(), Some(&400));
    let caught = catch_unwind(AssertUnwindSafe(|| {
        parallel.try_run_in_processes((0..2_000u64).map(|x| delayed_fn(armed_work_ok)(input(x))))
    }));
    let payload = caught.expect_err("the input's panic reaches the caller");
    assert_eq!(payload.downcast_ref::<u64>(), Some(&400));
    assert_serves(&parallel, 300);
    assert_every_slab_comes_back(&pool);
    drop(parallel);
    assert_gone(pool, HashSet::new());
}

/// Tasks 10 and 13 (one batch) fail with errors that panic when the parent drops them: the error with the
/// smallest index is returned, the other one is dropped without its panic escaping (as `try_run`
/// drops the errors it does not return).
fn fails_at_10_and_13(x: u64) -> Result<u64, ArmedInParent> {
    match x {
        10 | 13 => Err(ArmedInParent {
            value: x,
            armed: false,
        }),
        _ => Ok(work(x)),
    }
}

#[test]
fn try_run_in_processes_drops_the_errors_it_does_not_return_quietly() {
    let _serial = serial();
    let pool = two_workers();
    let parallel = batches_of(&pool, 8);
    for _ in 0..3 {
        let result = catch_unwind(AssertUnwindSafe(|| {
            parallel.try_run_in_processes((0..100u64).map(|x| delayed_fn(fails_at_10_and_13)(x)))
        }));
        match result {
            Ok(Err(Error::Task { index, mut error })) => {
                error.armed = false;
                assert_eq!((index, error.value), (10, 10));
            }
            Ok(other) => panic!("expected task 10's error, got {:?}", other.map(|v| v.len())),
            Err(payload) => panic!("an error's Drop escaped: {:?}", panic_text(&*payload)),
        }
    }
    assert_serves(&parallel, 100);
    drop(parallel);
    assert_gone(pool, HashSet::new());
}

/// Set in the parent: the next decoding of `work(BAD)` as a [`DecodesOnceBadly`] panics.
static DECODE_BOMB: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A result whose `Deserialize` panics once in the parent (for `work(BAD)`, while armed).
#[derive(serde::Serialize, Debug, PartialEq)]
struct DecodesOnceBadly(u64);

impl<'de> serde::Deserialize<'de> for DecodesOnceBadly {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = u64::deserialize(deserializer)?;
        if value == work(BAD) && DECODE_BOMB.swap(false, std::sync::atomic::Ordering::SeqCst) {
            panic!("cannot decode {value}");
        }
        Ok(DecodesOnceBadly(value))
    }
}

fn decodes_once_badly(x: u64) -> DecodesOnceBadly {
    DecodesOnceBadly(work(x))
}

/// A result's `Deserialize` panics in the parent while a process iterator decodes it: `next()`
/// resumes that panic and the iterator ends (later calls return `None`); it never hands out a
/// value under another task's index (where the next value starts is unknown after the panic).
#[test]
fn a_result_whose_deserialize_panics_ends_a_process_iterator() {
    let _serial = serial();
    let pool = two_workers();
    let parallel = batches_of(&pool, 16);
    for ordered in [true, false] {
        DECODE_BOMB.store(true, std::sync::atomic::Ordering::SeqCst);
        let tasks = (0..100u64).map(|x| delayed_fn(decodes_once_badly)(x));
        // `(index, value)`; the ordered iterator's index is its position (a panic included).
        let mut iter: Box<dyn Iterator<Item = (Option<usize>, DecodesOnceBadly)>> = if ordered {
            Box::new(
                parallel
                    .run_iter_in_processes(tasks)
                    .map(|r| (None, r.unwrap())),
            )
        } else {
            Box::new(
                parallel
                    .run_unordered_in_processes(tasks)
                    .map(|(i, r)| (Some(i), r.unwrap())),
            )
        };
        let mut panics = 0;
        for position in 0..200 {
            match catch_unwind(AssertUnwindSafe(|| iter.next())) {
                Ok(Some((index, value))) => {
                    let i = index.unwrap_or(position);
                    assert_eq!(value, DecodesOnceBadly(work(i as u64)), "task {i}");
                    assert_eq!(panics, 0, "after the panic: task {i} handed out");
                }
                Ok(None) => break,
                Err(payload) => {
                    assert_eq!(
                        panic_text(&*payload),
                        format!("cannot decode {}", work(BAD))
                    );
                    panics += 1;
                }
            }
        }
        assert_eq!(panics, 1, "ordered: {ordered}");
        drop(iter);
    }
    assert_serves(&parallel, 100);
    drop(parallel);
    assert_gone(pool, HashSet::new());
}

/// The progress callback panics as a process iterator hands out a result whose `Drop` panics: the
/// callback's panic reaches the consumer (the result is dropped contained, not while it unwinds,
/// which would abort the process), and the pool serves the next call.
#[test]
fn a_progress_panic_while_a_process_iterator_hands_out_a_result_reaches_the_consumer() {
    let _serial = serial();
    let pool = two_workers();
    for ordered in [true, false] {
        let mut updates = 0;
        let parallel = Parallel::new()
            .backend(Backend::ProcessPool(pool.clone()))
            .batch_size(parjob::BatchSize::Fixed(16))
            .on_progress(move |_, _| {
                updates += 1;
                if updates == 3 {
                    std::panic::panic_any(7u64);
                }
            });
        let tasks = (0..100u64).map(|x| delayed_fn(armed_work)(x));
        let caught = catch_unwind(AssertUnwindSafe(|| {
            let mut n = 0;
            if ordered {
                for r in parallel.run_iter_in_processes(tasks) {
                    r.unwrap().armed = false;
                    n += 1;
                }
            } else {
                for (_, r) in parallel.run_unordered_in_processes(tasks) {
                    r.unwrap().armed = false;
                    n += 1;
                }
            }
            n
        }));
        let payload = caught.expect_err("the callback's panic reaches the consumer");
        assert_eq!(
            payload.downcast_ref::<u64>(),
            Some(&7),
            "ordered: {ordered}"
        );
    }
    let out = Parallel::new()
        .backend(Backend::ProcessPool(pool.clone()))
        .run_in_processes((0..100u64).map(|x| delayed_fn(work)(x)));
    assert_eq!(out, (0..100).map(work).collect::<Vec<_>>());
    assert_gone(pool, HashSet::new());
}

/// A panic payload whose own `Drop` panics (it never crosses: it lives in the worker).
struct PayloadBomb(u64);

impl Drop for PayloadBomb {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("payload of task {} dropped", self.0);
        }
    }
}

fn panics_with_a_bomb_often(x: u64) -> u64 {
    if x % 97 == 5 {
        std::panic::panic_any(PayloadBomb(x));
    }
    work(x)
}

/// A task panics in a worker with a payload whose `Drop` panics: that task's panic comes back at
/// its place (the worker drops the payload contained), every other task's result at its own, and
/// the worker keeps serving. Before, the payload's panic escaped the batch: the worker exited, the
/// batch was re-run task by task and each such task came back as `WorkerCrashed`.
#[test]
fn a_panic_payload_whose_drop_panics_in_the_worker_is_that_tasks_panic_only() {
    let _serial = serial();
    let (pool, parallel) = two_batches_of_500_in_slabs();
    let mut iter = parallel
        .run_iter_in_processes((0..1_000u64).map(|x| delayed_fn(panics_with_a_bomb_often)(x)));
    expect_every_97th_to_panic(
        &mut iter,
        |_| "Box<dyn Any> (a panic payload that is not a string)".to_owned(),
        |i, value| assert_eq!(value, work(i), "task {i}"),
    );
    drop(iter);
    assert_eq!(pool.restarts(), 0);
    assert_every_slab_comes_back(&pool);
    drop(parallel);
    assert_gone(pool, HashSet::new());
}

/// Set in the parent: [`Picky`] arguments decode there; unset (in every worker), the value
/// [`BAD`] panics while it is decoded.
static PICKY_ONLY_IN_WORKERS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// An argument whose `Deserialize` panics for [`BAD`] (in the parent too, unless
/// [`PICKY_ONLY_IN_WORKERS`] is set there).
#[derive(serde::Serialize, Debug)]
struct Picky(u64);

impl<'de> serde::Deserialize<'de> for Picky {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = u64::deserialize(deserializer)?;
        if value == BAD && !PICKY_ONLY_IN_WORKERS.load(std::sync::atomic::Ordering::SeqCst) {
            panic!("cannot decode argument {value}");
        }
        Ok(Picky(value))
    }
}

fn picky(x: Picky) -> u64 {
    work(x.0)
}

/// Runs 300 `picky` tasks in batches of 100 and returns each task's outcome: its value, or the
/// message of the panic (or error) it came back as. The iterator must go on to the end.
fn run_picky(parallel: &Parallel<'static>) -> Vec<Result<u64, String>> {
    let mut iter = parallel.run_iter_in_processes((0..300u64).map(|x| delayed_fn(picky)(Picky(x))));
    let mut outcomes = Vec::new();
    for _ in 0..300 {
        match catch_unwind(AssertUnwindSafe(|| iter.next())) {
            Ok(Some(Ok(value))) => outcomes.push(Ok(value)),
            Ok(Some(Err(error))) => outcomes.push(Err(error.to_string())),
            Ok(None) => panic!("the iterator ended after {} tasks", outcomes.len()),
            Err(payload) => outcomes.push(Err(panic_text(&*payload))),
        }
    }
    assert!(catch_unwind(AssertUnwindSafe(|| iter.next()))
        .unwrap()
        .is_none());
    outcomes
}

/// An argument's `Deserialize` panics in the worker, in the middle of a batch: task BAD comes back
/// as that panic's message (not as a crash), every other task with its result, and the worker
/// stays (each task's arguments are a frame of their own, so the worker reads on at the next).
/// Until round 12 the worker could not locate the rest of the batch, exited, and the parent
/// decoded the arguments to re-send them one per batch.
#[test]
fn an_argument_whose_deserialize_panics_in_the_worker_fails_its_task_only() {
    let _serial = serial();
    let pool = two_workers_with_slabs();
    let parallel = batches_of(&pool, 100);
    PICKY_ONLY_IN_WORKERS.store(true, std::sync::atomic::Ordering::SeqCst);
    let outcomes = run_picky(&parallel);
    PICKY_ONLY_IN_WORKERS.store(false, std::sync::atomic::Ordering::SeqCst);
    for (i, outcome) in outcomes.into_iter().enumerate() {
        if i as u64 == BAD {
            let message = outcome.expect_err("task BAD failed");
            assert!(
                message.contains("panicked") && message.contains("cannot decode argument 50"),
                "{message}"
            );
        } else {
            assert_eq!(outcome, Ok(work(i as u64)), "task {i}");
        }
    }
    assert_eq!(pool.restarts(), 0, "no worker exited");
    let mut pids: HashSet<u32> = pool.worker_pids().into_iter().collect();
    assert_every_slab_comes_back(&pool);
    pids.extend(pool.worker_pids());
    drop(parallel);
    assert_gone(pool, pids);
}

/// Set in the parent if a [`Reencoded`] argument is ever decoded there (it never is: a crashed
/// batch is split by copying its tasks' frames); from then on the value 7 panics when encoded.
static DECODED_IN_PARENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// An argument whose `Serialize` panics for 7 the second time round, if there ever is one.
#[derive(Debug)]
struct Reencoded(u64);

impl serde::Serialize for Reencoded {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0 == 7 && DECODED_IN_PARENT.load(std::sync::atomic::Ordering::SeqCst) {
            panic!("cannot encode argument 7 again");
        }
        self.0.serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for Reencoded {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        DECODED_IN_PARENT.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(Reencoded(u64::deserialize(deserializer)?))
    }
}

fn aborts_at_3(x: Reencoded) -> u64 {
    if x.0 == 3 {
        std::process::abort();
    }
    work(x.0)
}

/// Task 3 kills its worker in a batch of 10, so the batch is split and each task re-sent alone.
/// The split copies each task's frame: no argument is decoded or encoded again in the parent
/// (until round 12 it was, and a `Serialize` or `Deserialize` that failed or panicked there
/// failed tasks that had done nothing wrong). Task 3 fails with its crash, the other nine return,
/// and the iterator goes on to its end.
#[test]
fn a_crashed_batch_is_split_without_running_argument_code_in_the_parent() {
    let _serial = serial();
    let pool = two_workers_with_slabs();
    let parallel = batches_of(&pool, 10);
    DECODED_IN_PARENT.store(false, std::sync::atomic::Ordering::SeqCst);
    let restarts = pool.restarts();
    let mut iter =
        parallel.run_iter_in_processes((0..10u64).map(|x| delayed_fn(aborts_at_3)(Reencoded(x))));
    for i in 0..10u64 {
        match catch_unwind(AssertUnwindSafe(|| iter.next())) {
            Ok(Some(Ok(value))) => assert!(i != 3 && value == work(i), "task {i}"),
            Ok(Some(Err(error))) => {
                assert_eq!(i, 3, "{error}");
                assert!(
                    matches!(error, Error::WorkerCrashed { index: 3, .. }),
                    "{error}"
                );
            }
            Ok(None) => panic!("the iterator ended at task {i}"),
            Err(payload) => panic!("task {i}: {}", panic_text(&*payload)),
        }
    }
    assert!(catch_unwind(AssertUnwindSafe(|| iter.next()))
        .unwrap()
        .is_none());
    drop(iter);
    assert!(pool.restarts() > restarts, "no worker crashed");
    assert!(
        !DECODED_IN_PARENT.load(std::sync::atomic::Ordering::SeqCst),
        "the parent decoded an argument"
    );
    let mut pids: HashSet<u32> = pool.worker_pids().into_iter().collect();
    assert_serves(&parallel, 100);
    pids.extend(pool.worker_pids());
    drop(parallel);
    assert_gone(pool, pids);
}

/// Arguments and results of a type whose `Deserialize` reads fewer bytes than its `Serialize`
/// writes (`#[serde(skip_deserializing)]`) come back as threads give them, on every path: in
/// slabs and inline, through `run_in_processes` and a process iterator. Until round 12 the values
/// went back to back with no lengths, so every value after the first in a batch was read from
/// another's bytes: 1983 of 2000 results came back wrong, as `Ok`.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
struct SkipsOnDecode {
    x: u64,
    #[serde(skip_deserializing)]
    label: u64,
}

fn uses_skips(p: SkipsOnDecode) -> SkipsOnDecode {
    SkipsOnDecode {
        x: p.x * 10 + p.label,
        label: 7,
    }
}

#[test]
fn values_whose_deserialize_reads_less_than_serialize_wrote_come_back_as_on_threads() {
    let _serial = serial();
    let tasks = || (0..2000u64).map(|x| delayed_fn(uses_skips)(SkipsOnDecode { x, label: 99 }));
    let on_threads = Parallel::new().n_jobs(2).run_in_processes(tasks());
    // On threads nothing is encoded: `label` arrives as 99. Through bytes it is skipped, so the
    // worker sees 0, and each result's `label` decodes as 0.
    let expected: Vec<SkipsOnDecode> = (0..2000)
        .map(|x| SkipsOnDecode {
            x: x * 10,
            label: 0,
        })
        .collect();
    assert_eq!(on_threads[1].x, 10 + 99, "threads pass the value itself");
    for pool in [two_workers_with_slabs(), two_workers()] {
        for batch in [None, Some(8), Some(500)] {
            let parallel = match batch {
                Some(size) => batches_of(&pool, size),
                None => Parallel::new()
                    .n_jobs(2)
                    .backend(Backend::ProcessPool(pool.clone())),
            };
            assert_eq!(parallel.run_in_processes(tasks()), expected, "{batch:?}");
            let streamed: Vec<SkipsOnDecode> = parallel
                .run_iter_in_processes(tasks())
                .map(|outcome| outcome.expect("no task fails"))
                .collect();
            assert_eq!(streamed, expected, "{batch:?}");
        }
        assert_eq!(pool.restarts(), 0);
    }
}

/// An argument whose `Deserialize` returns an error (for 11, in the parent and the workers) fails
/// its own task only, whatever the batch size (until round 12 every later task of its batch
/// failed with it).
#[derive(serde::Serialize, Debug)]
struct RefusesEleven(u64);

impl<'de> serde::Deserialize<'de> for RefusesEleven {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = u64::deserialize(deserializer)?;
        if value == 11 {
            return Err(serde::de::Error::custom("eleven refuses to decode"));
        }
        Ok(RefusesEleven(value))
    }
}

fn refuses_eleven(x: RefusesEleven) -> Result<u64, String> {
    if x.0 == 3 {
        std::process::abort();
    }
    Ok(work(x.0))
}

#[test]
fn an_argument_whose_deserialize_fails_fails_its_task_only() {
    let _serial = serial();
    let pool = two_workers_with_slabs();
    for batch in [None, Some(1), Some(20)] {
        let parallel = match batch {
            Some(size) => batches_of(&pool, size),
            None => Parallel::new()
                .n_jobs(2)
                .backend(Backend::ProcessPool(pool.clone())),
        };
        let tasks = (4..40u64).map(|x| delayed_fn(refuses_eleven)(RefusesEleven(x)));
        let mut iter = parallel.run_iter_in_processes(tasks);
        for i in 4..40u64 {
            // A task whose arguments do not decode fails like a task that panicked: `next()`
            // raises its message, and the iterator goes on.
            match catch_unwind(AssertUnwindSafe(|| iter.next())) {
                Err(payload) => {
                    let message = panic_text(&*payload);
                    assert_eq!(i, 11, "{message}");
                    assert!(
                        message.contains("cannot decode the task's arguments")
                            && message.contains("eleven refuses to decode"),
                        "{message}"
                    );
                }
                Ok(outcome) => {
                    assert_eq!(
                        outcome.unwrap().unwrap(),
                        Ok(work(i)),
                        "task {i} ({batch:?})"
                    )
                }
            }
        }
        assert!(iter.next().is_none());
    }
    assert_eq!(pool.restarts(), 0);
}

/// A worker dies in a batch that also holds an argument whose `Deserialize` returns an error:
/// the batch is split by its frames, task 3 is named as the crash, task 11 fails with its decode
/// error, the others return (until round 12 the parent could not split such a batch and every
/// task of it failed with "cannot split a crashed batch").
#[test]
fn a_crash_in_a_batch_with_an_argument_that_does_not_decode_is_located() {
    let _serial = serial();
    let pool = two_workers_with_slabs();
    let parallel = batches_of(&pool, 20);
    let inputs = [0u64, 1, 2, 3, 4, 11, 12];
    let tasks = || {
        inputs
            .iter()
            .map(|&x| delayed_fn(refuses_eleven)(RefusesEleven(x)))
    };
    match parallel.try_run_in_processes(tasks()) {
        Err(Error::WorkerCrashed { index: 3, .. }) => {}
        other => panic!("{other:?}"),
    }
    let mut iter = parallel.run_iter_in_processes(tasks());
    for &x in &inputs {
        match (x, catch_unwind(AssertUnwindSafe(|| iter.next()))) {
            (3, Ok(Some(Err(Error::WorkerCrashed { index: 3, .. })))) => {}
            (11, Err(payload)) => {
                let message = panic_text(&*payload);
                assert!(message.contains("eleven refuses to decode"), "{message}");
            }
            (x, Ok(Some(Ok(Ok(value))))) if x != 3 && x != 11 => assert_eq!(value, work(x)),
            (x, Ok(other)) => panic!("task {x}: {other:?}"),
            (x, Err(payload)) => panic!("task {x}: {}", panic_text(&*payload)),
        }
    }
    assert!(iter.next().is_none());
    drop(iter);
    let mut pids: HashSet<u32> = pool.worker_pids().into_iter().collect();
    assert_serves(&parallel, 100);
    pids.extend(pool.worker_pids());
    drop(parallel);
    assert_gone(pool, pids);
}

/// An input claiming an exact length far beyond memory (2^40) that yields three tasks: the
/// process call gives the three results (pre-allocating for the claim aborted the process).
#[test]
fn a_size_hint_claiming_more_than_memory_holds_does_not_abort() {
    use common::ClaimsTooMuch;
    let _serial = serial();
    let pool = two_workers();
    let parallel = Parallel::new()
        .n_jobs(2)
        .backend(Backend::ProcessPool(pool.clone()));
    let out = parallel.run_in_processes(ClaimsTooMuch(0..3).map(|x| delayed_fn(work)(x)));
    assert_eq!(out, vec![work(0), work(1), work(2)]);
}

/// A process call asked for with an invalid configuration panics before any worker starts, while
/// it still holds the input: the input (whose `Drop` panics) is dropped contained first, so the
/// call ends with the configuration's panic, on every entry point (dropped by that panic's
/// unwinding, the input aborted the process).
#[test]
fn an_invalid_configuration_with_an_input_whose_drop_panics_does_not_abort() {
    use common::BreaksOnDrop;
    let parallel = Parallel::new().n_jobs(0).backend(Backend::Processes);
    for entry in 0..3 {
        let caught = catch_unwind(AssertUnwindSafe(|| {
            let tasks = BreaksOnDrop(0..4).map(|x| delayed_fn(work)(x));
            match entry {
                0 => drop(parallel.run_in_processes(tasks)),
                1 => drop(parallel.run_iter_in_processes(tasks)),
                _ => drop(parallel.run_unordered_in_processes(tasks)),
            }
        }));
        let payload = caught.expect_err("an invalid configuration panics");
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .unwrap_or("<not a message>");
        assert!(
            message.contains("invalid Parallel configuration"),
            "entry {entry}: the configuration's panic, not the input's: {message}"
        );
    }
}

fn seven_refused(x: u64) -> Result<u64, String> {
    match x {
        7 => Err("seven is not allowed".to_owned()),
        _ => Ok(work(x)),
    }
}

/// The `done` counts reported for the call of `n` tasks (the only call of that length), checked
/// to arrive in increasing order.
fn reports_of_call(reports: &[(usize, Option<usize>)], n: usize) -> Vec<usize> {
    let of_call: Vec<usize> = reports
        .iter()
        .filter(|(_, total)| *total == Some(n))
        .map(|&(done, _)| done)
        .collect();
    assert!(
        of_call.windows(2).all(|pair| pair[0] < pair[1]),
        "reports of the call of {n} tasks out of order: {of_call:?}"
    );
    of_call
}

/// One `Parallel` on one process pool, driven from three threads at once (an ordered call, a
/// stream and a fallible call on each, several times): every call gets its own results (or its
/// own error, at its own index), the shared progress callback is never run twice at once, and
/// by the time the `Parallel` is dropped each call's reports have all arrived, in order, ending
/// with its total (each call has its own length, so each report names its call).
#[test]
fn calls_from_three_threads_on_one_process_pool_keep_their_results_and_reports_apart() {
    let _serial = serial();
    let pool = two_workers();
    let in_callback = std::sync::atomic::AtomicBool::new(false);
    let reports = Mutex::new(Vec::new());
    let parallel = Parallel::new()
        .backend(Backend::ProcessPool(pool.clone()))
        .on_progress(|done, total| {
            assert!(
                !in_callback.swap(true, std::sync::atomic::Ordering::SeqCst),
                "the progress callback ran twice at once"
            );
            reports.lock().unwrap().push((done, total));
            in_callback.store(false, std::sync::atomic::Ordering::SeqCst);
        });
    // Every call's length differs from every other's (thread t, round r: 40 + 3t + 10r, and
    // thread 2's second call one more).
    let length = |thread: u64, round: u64| 40 + 3 * thread + 10 * round;
    const ROUNDS: u64 = 20;
    std::thread::scope(|threads| {
        let parallel = &parallel;
        threads.spawn(move || {
            for round in 0..ROUNDS {
                let n = length(0, round);
                let got = parallel.run_in_processes((0..n).map(|x| delayed_fn(work)(x)));
                assert_eq!(got, (0..n).map(work).collect::<Vec<_>>());
            }
        });
        threads.spawn(move || {
            for round in 0..ROUNDS {
                let n = length(1, round);
                let got: Vec<u64> = parallel
                    .run_iter_in_processes((0..n).map(|x| delayed_fn(work)(x)))
                    .collect::<Result<_, _>>()
                    .expect("no task fails");
                assert_eq!(got, (0..n).map(work).collect::<Vec<_>>());
            }
        });
        threads.spawn(move || {
            for round in 0..ROUNDS {
                let n = length(2, round);
                match parallel.try_run_in_processes((0..n).map(|x| delayed_fn(seven_refused)(x))) {
                    Err(Error::Task { index: 7, error }) => {
                        assert_eq!(error, "seven is not allowed")
                    }
                    other => panic!("expected the task error of 7, got {other:?}"),
                }
                // One task more, so that its reports are told from the failing call's.
                let ok =
                    parallel.try_run_in_processes((8..9 + n).map(|x| delayed_fn(seven_refused)(x)));
                assert_eq!(ok.unwrap(), (8..9 + n).map(work).collect::<Vec<_>>());
            }
        });
    });
    drop(parallel);
    let reports = reports.into_inner().unwrap();
    // Thread 2's failing calls stop at their error, so only their order is checked; every other
    // call must end with its total.
    let failing: Vec<usize> = (0..ROUNDS).map(|round| length(2, round) as usize).collect();
    let complete: Vec<usize> = (0..2)
        .flat_map(|thread| (0..ROUNDS).map(move |round| length(thread, round) as usize))
        .chain(failing.iter().map(|n| n + 1))
        .collect();
    for &n in complete.iter().chain(&failing) {
        let of_call = reports_of_call(&reports, n);
        if complete.contains(&n) {
            assert_eq!(
                of_call.last(),
                Some(&n),
                "the call of {n} tasks did not report its end: {of_call:?}"
            );
        }
    }
    assert!(
        reports.iter().all(|&(done, total)| total.is_some_and(
            |total| done <= total && (complete.contains(&total) || failing.contains(&total))
        )),
        "a report names no call: {reports:?}"
    );
    assert_gone(pool, HashSet::new());
}

fn never_fails(x: u64) -> Result<u64, String> {
    Ok(work(x))
}

/// The payload of the progress callback's own panics in
/// `a_callback_that_panics_under_three_threads_leaves_every_call_whole`.
struct CallbackPanic;

/// One `Parallel` on one process pool, driven from three threads at once, whose shared progress
/// callback panics at the 5th report of every call of odd length. A report of one thread's call
/// may be delivered by another thread (the one running the callback), so a callback panic may end
/// any thread's call: each call must either return its own results or end with the callback's
/// panic (never another panic, a poisoned lock or a hang), the callback never runs twice at once
/// (panics included), reports of a
/// call stay in order, and afterwards the same `Parallel` serves a call with every result and
/// every report.
#[test]
fn a_callback_that_panics_under_three_threads_leaves_every_call_whole() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    let _serial = serial();
    let pool = two_workers();
    let in_callback = AtomicBool::new(false);
    // Recorded, not asserted in the callback: a second panic in one delivery is dropped by
    // design, so an assertion there could be swallowed.
    let overlapped = AtomicBool::new(false);
    let raised = AtomicUsize::new(0);
    let caught = AtomicUsize::new(0);
    let reports = Mutex::new(Vec::new());
    /// Clears the "callback running" flag however the callback ends.
    struct Leaving<'a>(&'a AtomicBool);
    impl Drop for Leaving<'_> {
        fn drop(&mut self) {
            self.0.store(false, SeqCst);
        }
    }
    let parallel = Parallel::new()
        .backend(Backend::ProcessPool(pool.clone()))
        .on_progress(|done, total| {
            if in_callback.swap(true, SeqCst) {
                overlapped.store(true, SeqCst);
            }
            let _leaving = Leaving(&in_callback);
            reports.lock().unwrap().push((done, total));
            if done == 5 && total.is_some_and(|n| n % 2 == 1) {
                raised.fetch_add(1, SeqCst);
                std::panic::panic_any(CallbackPanic);
            }
        });
    // Lengths differ across every call (thread t, round r: 30 + 2r + 64t, plus r % 2 to make
    // every other call odd).
    let length = |thread: u64, round: u64| 30 + 2 * round + 64 * thread + round % 2;
    const ROUNDS: u64 = 12;
    // A call's outcome: its results, or the callback's panic (counted). Any other panic fails.
    let outcome = |call: &dyn Fn() -> Vec<u64>, n: u64| match catch_unwind(AssertUnwindSafe(call)) {
        Ok(got) => assert_eq!(got, (0..n).map(work).collect::<Vec<_>>()),
        Err(payload) => {
            assert!(
                payload.is::<CallbackPanic>(),
                "a call of {n} tasks ended with a panic that is not the callback's: {:?}",
                payload
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| payload.downcast_ref::<&str>().copied())
            );
            caught.fetch_add(1, SeqCst);
        }
    };
    std::thread::scope(|threads| {
        let (parallel, outcome) = (&parallel, &outcome);
        threads.spawn(move || {
            for round in 0..ROUNDS {
                let n = length(0, round);
                outcome(
                    &|| parallel.run_in_processes((0..n).map(|x| delayed_fn(work)(x))),
                    n,
                );
            }
        });
        threads.spawn(move || {
            for round in 0..ROUNDS {
                let n = length(1, round);
                outcome(
                    &|| {
                        parallel
                            .run_iter_in_processes((0..n).map(|x| delayed_fn(work)(x)))
                            .collect::<Result<Vec<u64>, _>>()
                            .expect("no task fails")
                    },
                    n,
                );
            }
        });
        threads.spawn(move || {
            for round in 0..ROUNDS {
                let n = length(2, round);
                outcome(
                    &|| {
                        parallel
                            .try_run_in_processes((0..n).map(|x| delayed_fn(never_fails)(x)))
                            .expect("no task fails")
                    },
                    n,
                );
            }
        });
    });
    assert!(
        !overlapped.load(SeqCst),
        "the progress callback ran twice at once"
    );
    let (raised_now, caught_now) = (raised.load(SeqCst), caught.load(SeqCst));
    assert!(
        raised_now > 0 && caught_now > 0,
        "the callback panicked {raised_now} times and {caught_now} calls saw it: the path under \
         test was not reached"
    );
    // A sanity check of the counting (a payload cannot be resumed twice), not of the library.
    assert!(
        caught_now <= raised_now,
        "{caught_now} calls ended with the callback's panic, which panicked only {raised_now} times"
    );
    // The same `Parallel` afterwards: every result, and every report of the call (an even length,
    // so the callback lets it through), in order.
    let after = 200;
    assert_eq!(
        parallel.run_in_processes((0..after).map(|x| delayed_fn(work)(x))),
        (0..after).map(work).collect::<Vec<_>>()
    );
    drop(parallel);
    let reports = reports.into_inner().unwrap();
    let of_after = reports_of_call(&reports, after as usize);
    assert_eq!(
        of_after.last(),
        Some(&(after as usize)),
        "the call after the panics did not report its end: {of_after:?}"
    );
    for thread in 0..3 {
        for round in 0..ROUNDS {
            reports_of_call(&reports, length(thread, round) as usize);
        }
    }
    assert_gone(pool, HashSet::new());
}

/// Reads a process iterator until its `next()` panics (here: the deadline): the values it handed
/// out before, in order, each an `Ok`, and the panic's message. Ending first fails the test.
fn values_until_panic<R: std::fmt::Debug>(
    iter: &mut impl Iterator<Item = Result<R, Error<std::convert::Infallible>>>,
) -> (Vec<R>, String) {
    let mut handed = Vec::new();
    loop {
        match catch_unwind(AssertUnwindSafe(|| iter.next())) {
            Ok(Some(outcome)) => handed.push(outcome.expect("the tasks that ran succeed")),
            Ok(None) => panic!("the iterator ended without reporting the deadline"),
            Err(payload) => return (handed, panic_text(&*payload)),
        }
    }
}

fn sleeps_ms(ms: u64) -> Result<u64, String> {
    std::thread::sleep(Duration::from_millis(ms));
    Ok(ms)
}

/// `n_jobs(2)` on `pool` with `budget` as the deadline.
fn on_two_workers_within(pool: &ProcessPool, budget: Duration) -> Parallel<'static> {
    Parallel::new()
        .n_jobs(2)
        .backend(Backend::ProcessPool(pool.clone()))
        .deadline(budget)
}

/// `Parallel::deadline` under a process backend: once it has passed, no batch is sent (those
/// waiting in the pool are skipped), and the call fails as on threads: `try_run_in_processes`
/// with `Error::Timeout` (the budget, the tasks completed), `run_in_processes` and a process
/// iterator with a panic carrying that error's text, after the iterator handed out what ran.
/// Until round 12 the process methods ignored the deadline: the same call returned `Ok` after a
/// second. A call that skipped no task succeeds, as on threads.
#[test]
fn the_deadline_stops_a_process_call_as_on_threads() {
    let _serial = serial();
    let pool = two_workers();
    let budget = Duration::from_millis(100);
    let parallel = on_two_workers_within(&pool, budget);
    // 40 tasks of 50 ms on 2 workers need a second; at most a window of them are sent at once.
    let tasks = || (0..40u64).map(|x| delayed_fn(sleeps_ms)(50 + x % 2));
    match parallel.try_run_in_processes(tasks()) {
        Err(Error::Timeout { timeout, completed }) => {
            assert_eq!(timeout, budget);
            assert!(completed < 40, "{completed}");
        }
        other => panic!("{other:?}"),
    }
    let caught = catch_unwind(AssertUnwindSafe(|| parallel.run_in_processes(tasks())));
    let message = panic_text(&*caught.expect_err("run_in_processes panics"));
    assert!(message.contains("timed out"), "{message}");
    let mut iter = parallel.run_iter_in_processes(tasks());
    let (handed, ended) = values_until_panic(&mut iter);
    assert!(
        ended.contains("passed its deadline") && handed.len() < 40,
        "{ended}, {handed:?}"
    );
    assert!(iter.next().is_none());
    drop(iter);
    // Two tasks started at once, by two idle workers, and running past the deadline: nothing
    // was skipped, so the call succeeds.
    let roomy = on_two_workers_within(&pool, Duration::from_millis(500));
    let two = (0..2u64).map(|_| delayed_fn(sleeps_ms)(900));
    assert_eq!(roomy.try_run_in_processes(two).unwrap(), [900, 900]);
    drop((parallel, roomy));
    assert_gone(pool, HashSet::new());
}

/// Both workers are killed while idle (as the out-of-memory killer may pick one): the next call
/// replaces them before sending it anything, and every task returns. Until round 12 the driver
/// noticed the death only when it awaited the reply, so the call's first task was reported as
/// having crashed its worker ("task 0: its worker process killed by signal 9").
#[test]
fn a_worker_that_died_while_idle_is_replaced_not_blamed_on_the_next_task() {
    let _serial = serial();
    let pool = two_workers();
    let parallel = Parallel::new()
        .n_jobs(2)
        .backend(Backend::ProcessPool(pool.clone()));
    assert_serves(&parallel, 4);
    let killed: HashSet<u32> = pool.worker_pids().into_iter().collect();
    assert_eq!(killed.len(), 2);
    for &pid in &killed {
        // SAFETY: `kill` with a pid of our own child and a valid signal number has no memory
        // effects here; the worker it ends is the point of the test.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
    }
    // Dead, as the parent sees it, before the next call starts: `waitid` reports each as ended
    // (left unreaped: the pool reaps it when it notices). A zombie in /proc is not enough: a
    // process whose other threads are still exiting shows its leader as a zombie before
    // `waitid` can report it (seen under load: the job went to a worker not yet reported dead).
    let since = std::time::Instant::now();
    for &pid in &killed {
        loop {
            // SAFETY: `info` is a valid, writable `siginfo_t`; `WNOWAIT` leaves the child
            // unreaped, so the pool still owns it.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            let rc = unsafe {
                libc::waitid(
                    libc::P_PID,
                    pid as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
                )
            };
            // SAFETY: after a successful `waitid`, `si_pid` is set (0 when nothing ended).
            if rc == 0 && unsafe { info.si_pid() } != 0 {
                break;
            }
            assert!(
                since.elapsed() < Duration::from_secs(10),
                "the workers did not die"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let restarts = pool.restarts();
    let out = parallel.try_run_in_processes((0..100u64).map(|x| delayed_fn(checked)(x + 100)));
    assert_eq!(
        out.unwrap(),
        (100..200u64).map(work).collect::<Vec<_>>(),
        "a task was blamed for a death it did not cause"
    );
    // Each dead worker that was given a job was replaced first (under load one driver may
    // take every job, leaving the other dead worker for a later call).
    assert!(pool.restarts() > restarts);
    let mut pids = killed;
    pids.extend(pool.worker_pids());
    drop(parallel);
    assert_gone(pool, pids);
}

/// Batches already queued when the deadline passes are skipped, not started, even when the whole
/// input was sent at once: 4 tasks of 400 ms on 2 workers with a 100 ms budget run the first two
/// and skip the others, and the call fails (a review of round 12 found the first version checking
/// the deadline only while the input had tasks left: this call returned `Ok` after 800 ms).
#[test]
fn batches_queued_past_the_deadline_are_skipped() {
    let _serial = serial();
    let pool = two_workers();
    let parallel = on_two_workers_within(&pool, Duration::from_millis(100));
    let tasks = || (0..4u64).map(|_| delayed_fn(sleeps_ms)(400));
    match parallel.try_run_in_processes(tasks()) {
        Err(Error::Timeout { completed, .. }) => assert!(completed <= 2, "{completed}"),
        other => panic!("{other:?}"),
    }
    let mut iter = parallel.run_iter_in_processes(tasks());
    let (handed, ended) = values_until_panic(&mut iter);
    assert!(
        ended.contains("passed its deadline") && handed.len() <= 2,
        "{ended}, {handed:?}"
    );
    assert!(handed.iter().all(|value| *value == Ok(400)), "{handed:?}");
    assert!(iter.next().is_none());
    drop((iter, parallel));
    assert_gone(pool, HashSet::new());
}

/// An argument whose `Serialize` refuses 5: that task fails in the parent, before any worker.
#[derive(serde::Deserialize, Debug)]
struct RefusesToEncodeFive(u64);

impl serde::Serialize for RefusesToEncodeFive {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0 == 5 {
            return Err(serde::ser::Error::custom("five refuses to encode"));
        }
        self.0.serialize(serializer)
    }
}

fn slow_first_two(x: RefusesToEncodeFive) -> u64 {
    std::thread::sleep(Duration::from_millis(if x.0 < 2 { 400 } else { 10 }));
    x.0
}

/// After the deadline stopped an ordered process iterator, it ends at the first position that
/// never ran, as a thread stream does: an outcome from further on (here task 5's, which failed in
/// the parent while tasks 2–4 waited in the queue) is never handed out in a skipped task's place.
/// The review of round 12 saw task 5's failure come out as the third item.
#[test]
fn an_ordered_process_iterator_ends_at_the_first_task_the_deadline_skipped() {
    let _serial = serial();
    let pool = two_workers();
    let parallel = batches_of(&pool, 1).deadline(Duration::from_millis(150));
    let mut iter = parallel.run_iter_in_processes(
        (0..6u64).map(|x| delayed_fn(slow_first_two)(RefusesToEncodeFive(x))),
    );
    let (handed, ended) = values_until_panic(&mut iter);
    assert!(
        ended.contains("passed its deadline"),
        "item {}: {ended}",
        handed.len()
    );
    // Each value is its task's index: one out of place would not be.
    assert_eq!(handed, (0..handed.len() as u64).collect::<Vec<_>>());
    assert!(handed.len() <= 2, "{handed:?}");
    assert!(iter.next().is_none());
    drop((iter, parallel));
    assert_gone(pool, HashSet::new());
}

/// An argument whose `Drop` panics unless it was encoded: only a task dropped unrun panics.
#[derive(Debug)]
struct PanicsIfDroppedUnsent {
    x: u64,
    sent: std::cell::Cell<bool>,
}

impl serde::Serialize for PanicsIfDroppedUnsent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.sent.set(true);
        self.x.serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for PanicsIfDroppedUnsent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(PanicsIfDroppedUnsent {
            x: u64::deserialize(deserializer)?,
            sent: std::cell::Cell::new(true),
        })
    }
}

impl Drop for PanicsIfDroppedUnsent {
    fn drop(&mut self) {
        if !self.sent.get() && !std::thread::panicking() {
            panic!("task {} dropped unsent", self.x);
        }
    }
}

fn sleeps_for(x: PanicsIfDroppedUnsent) -> Result<u64, String> {
    std::thread::sleep(Duration::from_millis(50));
    Ok(x.x)
}

/// When the deadline stops a process call, the caller pulls one more task to learn whether any
/// was skipped and drops it unrun: a `Drop` of that task's arguments that panics (user code) is
/// contained, and the call fails with the deadline, not with that panic.
#[test]
fn a_task_dropped_unrun_at_the_deadline_may_panic_in_its_drop() {
    let _serial = serial();
    let pool = two_workers();
    let parallel = on_two_workers_within(&pool, Duration::from_millis(100));
    let tasks = (0..40u64).map(|x| {
        delayed_fn(sleeps_for)(PanicsIfDroppedUnsent {
            x,
            sent: std::cell::Cell::new(false),
        })
    });
    let outcome = catch_unwind(AssertUnwindSafe(|| parallel.try_run_in_processes(tasks)));
    match outcome {
        Ok(Err(Error::Timeout { completed, .. })) => assert!(completed < 40, "{completed}"),
        Ok(other) => panic!("{other:?}"),
        Err(payload) => panic!("the call panicked: {}", panic_text(&*payload)),
    }
    assert_serves(&parallel, 10);
    drop(parallel);
    assert_gone(pool, HashSet::new());
}
