//! Crash isolation with the process backend: ten tasks on two worker processes, of which task 3
//! aborts the process it runs in and task 6 never returns. The other eight results come back;
//! the two failures come back as typed errors naming the task and what happened; the pool is
//! repaired and serves the next call.
//!
//! Run: `cargo run --release --features processes --example crash_isolation`.

use parjob::{delayed_fn, Backend, Error, Parallel};
use std::time::Duration;

fn risky(i: u64) -> u64 {
    match i {
        // A C library calling abort(), a failed assertion under panic = "abort", ...
        3 => std::process::abort(),
        // A hang: only killing the worker stops it.
        6 => loop {
            std::hint::spin_loop();
        },
        _ => i * i,
    }
}

fn main() {
    // First in `main`: in a worker process this call serves tasks and never returns.
    parjob::processes::init();

    let parallel = Parallel::new()
        .n_jobs(2)
        .backend(Backend::Processes)
        .timeout(Duration::from_millis(500));
    for (i, outcome) in parallel
        .run_iter_in_processes((0..10u64).map(|i| delayed_fn(risky)(i)))
        .enumerate()
    {
        match outcome {
            Ok(square) => println!("task {i}: {square}"),
            Err(error @ Error::WorkerCrashed { .. }) => println!("task {i}: crashed: {error}"),
            Err(error) if error.is_timeout() => println!("task {i}: timed out: {error}"),
            Err(error) => println!("task {i}: failed: {error}"),
        }
    }

    // try_run stops at the first failure and says which task it was.
    let first = parallel.try_run_in_processes(
        (0..10u64).map(|i| delayed_fn(|i: u64| -> Result<u64, String> { Ok(risky(i)) })(i)),
    );
    println!("try_run: {}", first.unwrap_err());

    // The dead and the killed worker were replaced: the same backend keeps working.
    let again = parallel.run_in_processes((0..5u64).map(|i| delayed_fn(|i: u64| i + 100)(i)));
    println!("next call: {again:?}");
    assert_eq!(again, vec![100, 101, 102, 103, 104]);
}
