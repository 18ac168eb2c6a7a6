//! A program that forgot `parjob::processes::init()` (this test binary has neither `init()` nor
//! `enable_test_support!`): starting worker processes fails with a message that says what to do,
//! and nothing is left running.

#![cfg(feature = "processes")]

use parjob::processes::{ProcessPoolBuilder, WorkerDeath};

#[test]
fn building_a_process_pool_without_init_is_an_error_that_says_why() {
    let err = ProcessPoolBuilder::new()
        .num_workers(2)
        .build()
        .unwrap_err();
    match err.worker_death() {
        Some(WorkerDeath::StartFailed(message)) => {
            assert!(message.contains("parjob::processes::init()"), "{message}");
        }
        other => panic!("expected StartFailed, got {other:?}"),
    }
    assert!(err.to_string().contains("failed to start"), "{err}");
}

#[test]
fn backend_processes_without_init_panics_with_the_reason() {
    let payload = std::panic::catch_unwind(|| {
        parjob::Parallel::new()
            .n_jobs(2)
            .backend(parjob::Backend::Processes)
            .run_in_processes((0..4u64).map(|x| parjob::delayed_fn(u64::count_ones)(x)))
    })
    .unwrap_err();
    let message = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .unwrap_or("");
    assert!(
        message.contains("cannot start 2 worker processes") && message.contains("init()"),
        "{message}"
    );
}
