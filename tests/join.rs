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
