//! Fork sampling: most joins are not recorded, yet thieves are still answered, and every
//! `join`'s contract (both halves run, panics propagate after both) holds on the unrecorded path.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Three nested recorded forks (the most a worker keeps recording unconditionally), then a loop
/// of joins that sampling would not record for 16 million joins: the outermost fork's half, which
/// sets the flag the loop waits for, must still reach the idle worker. (The idle worker may ask
/// before the loop starts, while joins are still recorded; the unit test next to
/// `WorkerThread::may_skip_fork` pins down the request during the loop.)
#[test]
fn a_hungry_thief_is_answered_even_when_sampling_would_skip_every_join() {
    let pool = parjob::ThreadPoolBuilder::new()
        .num_threads(2)
        .fork_sample_period(1 << 24)
        .build()
        .unwrap();
    let released = AtomicBool::new(false);
    let deadline = Instant::now() + Duration::from_secs(60);
    pool.install(|| {
        parjob::join(
            || {
                parjob::join(
                    || {
                        parjob::join(
                            || {
                                while !released.load(Ordering::Acquire) {
                                    assert!(
                                        Instant::now() < deadline,
                                        "the idle worker's request was never answered"
                                    );
                                    parjob::join(|| (), || ());
                                }
                            },
                            || (),
                        )
                    },
                    || (),
                )
            },
            || released.store(true, Ordering::Release),
        )
    });
    assert!(released.load(Ordering::Acquire));
}

fn count_nodes(depth: u32, visited: &AtomicUsize) -> u64 {
    visited.fetch_add(1, Ordering::Relaxed);
    if depth == 0 {
        return 1;
    }
    let (a, b) = parjob::join(
        || count_nodes(depth - 1, visited),
        || count_nodes(depth - 1, visited),
    );
    a + b
}

/// Every sampling period gives the same answer, on one thread and on two, and visits every node.
#[test]
fn every_sampling_period_runs_every_half() {
    for threads in [1, 2] {
        for period in [0, 1, 2, 64, u32::MAX] {
            let pool = parjob::ThreadPoolBuilder::new()
                .num_threads(threads)
                .fork_sample_period(period)
                .build()
                .unwrap();
            let visited = AtomicUsize::new(0);
            assert_eq!(pool.install(|| count_nodes(14, &visited)), 1 << 14);
            assert_eq!(
                visited.load(Ordering::Relaxed),
                (1 << 15) - 1,
                "period {period}"
            );
        }
    }
}

/// Deep in a recursion, past the recorded forks, a panicking first half still lets the second
/// half run before the panic reaches the caller, as on the recorded path.
#[test]
fn an_unrecorded_join_runs_b_when_a_panics() {
    let pool = parjob::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let b_ran = AtomicUsize::new(0);
    fn nest(depth: u32, b_ran: &AtomicUsize) {
        if depth == 0 {
            panic!("deep panic");
        }
        parjob::join(
            || nest(depth - 1, b_ran),
            || {
                b_ran.fetch_add(1, Ordering::Relaxed);
            },
        );
    }
    let caught = catch_unwind(AssertUnwindSafe(|| pool.install(|| nest(12, &b_ran))));
    let payload = caught.expect_err("the panic reaches the caller");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"deep panic"));
    assert_eq!(
        b_ran.load(Ordering::Relaxed),
        12,
        "every level's second half ran"
    );
    assert_eq!(pool.install(|| parjob::join(|| 1, || 2)), (1, 2));
}
