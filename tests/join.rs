//! `join`: results, borrowing, panics, nesting, policies.

mod common;
use common::*;
use parjob::{ThreadPool, ThreadPoolBuilder};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};

/// One pool of `threads` workers under every scheduling policy (see `common::policies`).
fn pools(threads: usize) -> Vec<(String, ThreadPool)> {
    policies()
        .into_iter()
        .map(|(name, build)| (format!("{name}/threads={threads}"), build(threads)))
        .collect()
}

#[test]
fn fib_matches_sequential_under_every_policy() {
    let n = if cfg!(miri) { 8 } else { 22 };
    for threads in [1, 2, 4] {
        for (name, pool) in pools(threads) {
            assert_eq!(pool.install(|| fib_join(n)), fib_seq(n), "{name}");
        }
    }
}

#[test]
fn quicksort_sorts_random_data_under_every_policy() {
    let len = iterations(50_000, 200);
    for (name, pool) in pools(2) {
        let mut rng = Rng(len as u64);
        let mut data: Vec<u64> = (0..len).map(|_| rng.next_u64() % 1000).collect();
        let mut expected = data.clone();
        expected.sort();
        pool.install(|| quicksort(&mut data));
        assert_eq!(data, expected, "{name}");
    }
}

#[test]
fn join_from_outside_any_pool_uses_the_global_pool() {
    assert_eq!(parjob::current_thread_index(), None);
    let (a, b) = parjob::join(|| 1 + 1, || "two");
    assert_eq!((a, b), (2, "two"));
    assert_eq!(fib_join(15), fib_seq(15));
}

#[test]
fn join_borrows_from_the_stack_and_mutates_disjoint_halves() {
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let mut data = vec![1u64; 1000];
    let (left, right) = data.split_at_mut(500);
    pool.join(
        || left.iter_mut().for_each(|x| *x += 1),
        || right.iter_mut().for_each(|x| *x *= 3),
    );
    assert!(data[..500].iter().all(|&x| x == 2));
    assert!(data[500..].iter().all(|&x| x == 3));
}

#[test]
fn panic_in_first_half_propagates_after_second_half_ran() {
    for (name, pool) in pools(2) {
        let ran_b = AtomicUsize::new(0);
        let result = catch_unwind(AssertUnwindSafe(|| {
            pool.install(|| {
                parjob::join(
                    || panic!("boom in A"),
                    || {
                        ran_b.fetch_add(1, Ordering::SeqCst);
                    },
                )
            })
        }));
        let payload = result.expect_err("panic must propagate");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom in A"), "{name}");
        assert_eq!(
            ran_b.load(Ordering::SeqCst),
            1,
            "{name}: B must run even though A panicked"
        );
        // The pool survives.
        assert_eq!(pool.install(|| fib_join(10)), 55, "{name}");
    }
}

#[test]
fn panic_in_second_half_propagates_with_payload() {
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let ran_a = AtomicUsize::new(0);
    let result = catch_unwind(AssertUnwindSafe(|| {
        pool.join(
            || {
                ran_a.fetch_add(1, Ordering::SeqCst);
            },
            || -> () { std::panic::panic_any(42u32) },
        )
    }));
    assert_eq!(result.unwrap_err().downcast_ref::<u32>(), Some(&42));
    assert_eq!(ran_a.load(Ordering::SeqCst), 1);
    assert_eq!(pool.join(|| 1, || 2), (1, 2));
}

#[test]
fn when_both_halves_panic_the_first_halfs_panic_wins() {
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for _ in 0..iterations(50, 3) {
        let result = catch_unwind(AssertUnwindSafe(|| {
            pool.install(|| parjob::join(|| -> () { panic!("A") }, || -> () { panic!("B") }))
        }));
        assert_eq!(result.unwrap_err().downcast_ref::<&str>(), Some(&"A"));
    }
}

#[test]
fn panics_deep_in_nested_joins_reach_the_caller_and_the_pool_stays_usable() {
    fn tree(depth: u32, bomb: u32) -> u32 {
        if depth == 0 {
            if bomb == 0 {
                panic!("leaf bomb");
            }
            return 1;
        }
        let (a, b) = parjob::join(
            || tree(depth - 1, bomb.wrapping_sub(1)),
            || tree(depth - 1, bomb.wrapping_sub(2)),
        );
        a + b
    }
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let depth = if cfg!(miri) { 3 } else { 10 };
    for bomb in 0..iterations(20, 2) as u32 {
        let result = catch_unwind(AssertUnwindSafe(|| pool.install(|| tree(depth, bomb))));
        if let Err(payload) = result {
            assert_eq!(payload.downcast_ref::<&str>(), Some(&"leaf bomb"));
        }
    }
    assert_eq!(pool.install(|| tree(depth, u32::MAX)), 1 << depth);
}

#[test]
fn one_thread_pool_runs_everything_on_its_worker() {
    let pool = ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let (a, b) =
        pool.install(|| parjob::join(parjob::current_thread_index, parjob::current_thread_index));
    assert_eq!((a, b), (Some(0), Some(0)));
    assert_eq!(pool.install(|| fib_join(18)), fib_seq(18));
}

#[test]
fn more_threads_than_cores() {
    let threads = parjob::cpu_count() * 4 + 1;
    let pool = ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    assert_eq!(pool.num_threads(), threads);
    assert_eq!(pool.install(|| fib_join(20)), fib_seq(20));
}

/// Waits (politely) until `done()` holds, for at most `limit`; says whether it did.
fn wait_for(limit: std::time::Duration, done: impl Fn() -> bool) -> bool {
    let start = std::time::Instant::now();
    while !done() {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    true
}

#[test]
fn an_idle_worker_joins_fork_join_work_under_every_policy() {
    // Inside a 2-worker pool, A keeps forking small joins until B has run. No thread but a second
    // worker can run B before A returns (with nobody hungry, A's own forks run inline and B waits
    // behind A), so A sees B only if the idle worker wakes up, becomes a thief, gets a fork
    // published (under the lazy policies, only because it asked) and steals it, and a sleeping
    // thief is woken by that publication. This is the property a change to the wake-ups broke
    // in round 4 without failing any test (fork-join ran on one worker, 0 steals). Checked to
    // fail (A waits out the limit) when `publish_oldest` skips its `new_work` wake-up check, and
    // when a thief that found a deque empty does not mark its victim hungry.
    let limit = std::time::Duration::from_secs(if cfg!(miri) { 60 } else { 20 });
    for (name, pool) in pools(2) {
        for _ in 0..iterations(20, 2) {
            let b_done = std::sync::atomic::AtomicBool::new(false);
            let (a_saw_b, ()) = pool.install(|| {
                parjob::join(
                    || {
                        let start = std::time::Instant::now();
                        while !b_done.load(Ordering::Acquire) {
                            if start.elapsed() > limit {
                                return false;
                            }
                            // Fork points: where a lazy worker hands a hungry thief a fork.
                            let (x, y) = parjob::join(
                                || std::hint::black_box(1u32),
                                || std::hint::black_box(2u32),
                            );
                            assert_eq!(x + y, 3);
                        }
                        true
                    },
                    || b_done.store(true, Ordering::Release),
                )
            });
            assert!(
                a_saw_b,
                "{name}: no idle worker took part: B waited behind A"
            );
        }
    }
}

#[test]
fn an_outside_join_offers_b_to_a_worker_while_a_runs() {
    // A waits until B has run. That ends only if B is handed to a worker while A runs: the
    // caller runs B itself only after A. (The long limit only turns a broken offer into a
    // failure instead of a hang; on a working pool A waits microseconds.)
    let limit = std::time::Duration::from_secs(if cfg!(miri) { 60 } else { 20 });
    for threads in [1, 2] {
        let pool = ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        for _ in 0..iterations(20, 2) {
            let b_ran_on = std::sync::Mutex::new(None);
            let b_done = AtomicUsize::new(0);
            let (a_saw_b, ()) = pool.join(
                || wait_for(limit, || b_done.load(Ordering::Acquire) == 1),
                || {
                    *b_ran_on.lock().unwrap() = Some(parjob::current_thread_index());
                    b_done.fetch_add(1, Ordering::Release);
                },
            );
            assert!(a_saw_b, "B was not run by a worker while A waited for it");
            let on = b_ran_on.into_inner().unwrap().expect("B ran");
            assert!(on.is_some_and(|i| i < threads), "B ran on {on:?}");
            assert_eq!(b_done.load(Ordering::Relaxed), 1, "B ran more than once");
        }
    }
}

#[test]
fn outside_joins_beyond_the_offer_slots_go_through_the_injector() {
    // The only worker is held busy, so no offer is claimed while the callers meet inside A:
    // then more Bs are on offer at once than the pool has offer slots (4), and the ones that
    // found no free slot were queued in the injector. Every caller gets both results, whoever
    // runs its B once the worker is released.
    const CALLERS: usize = 9;
    let pool = ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let inside_a = AtomicUsize::new(0);
    let b_runs = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let pool = &pool;
        let release = hold_the_only_worker(s, pool);
        let callers: Vec<_> = (0..CALLERS)
            .map(|caller| {
                let (inside_a, b_runs) = (&inside_a, &b_runs);
                s.spawn(move || {
                    pool.join(
                        || {
                            inside_a.fetch_add(1, Ordering::SeqCst);
                            // Every caller's B is on offer (or queued) once all are in A.
                            assert!(
                                wait_for(std::time::Duration::from_secs(60), || {
                                    inside_a.load(Ordering::SeqCst) == CALLERS
                                }),
                                "the callers never met inside A"
                            );
                            caller * 10
                        },
                        || {
                            b_runs.fetch_add(1, Ordering::SeqCst);
                            caller * 10 + 1
                        },
                    )
                })
            })
            .collect();
        assert!(wait_for(std::time::Duration::from_secs(60), || {
            inside_a.load(Ordering::SeqCst) == CALLERS
        }));
        release();
        for (caller, handle) in callers.into_iter().enumerate() {
            assert_eq!(handle.join().unwrap(), (caller * 10, caller * 10 + 1));
        }
    });
    assert_eq!(
        b_runs.load(Ordering::SeqCst),
        CALLERS,
        "each B runs exactly once"
    );
    // The pool still serves outside joins afterwards.
    assert_eq!(pool.join(|| 1, || 2), (1, 2));
}
