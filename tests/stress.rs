//! Randomised stress: random nested fork-join trees (join, scope, install, cross-pool), sums
//! checked, seeded so a failure names its seed.

mod common;
use common::*;
use parjob::{SharePolicy, ThreadPool, ThreadPoolBuilder};
use std::sync::atomic::{AtomicU64, Ordering};

/// Builds a random tree of fork-join calls; returns the number of leaves it visited.
fn random_tree(rng_seed: u64, depth: u32, pools: &[ThreadPool], sink: &AtomicU64) -> u64 {
    let mut rng = Rng(rng_seed);
    if depth == 0 {
        sink.fetch_add(1, Ordering::Relaxed);
        return 1;
    }
    let (s1, s2) = (rng.next_u64(), rng.next_u64());
    match rng.below(6) {
        0..=2 => {
            let (a, b) = parjob::join(
                || random_tree(s1, depth - 1, pools, sink),
                || random_tree(s2, depth - 1, pools, sink),
            );
            a + b
        }
        3 => {
            let total = AtomicU64::new(0);
            parjob::scope(|s| {
                for seed in [s1, s2, s1 ^ s2] {
                    let total = &total;
                    s.spawn(move |_| {
                        total.fetch_add(
                            random_tree(seed, depth - 1, pools, sink),
                            Ordering::Relaxed,
                        );
                    });
                }
            });
            total.into_inner()
        }
        4 => {
            let pool = &pools[rng.below(pools.len() as u64) as usize];
            pool.install(|| random_tree(s1, depth - 1, pools, sink))
        }
        _ => random_tree(s1, depth - 1, pools, sink),
    }
}

fn expected_leaves(rng_seed: u64, depth: u32, pools: usize) -> u64 {
    let mut rng = Rng(rng_seed);
    if depth == 0 {
        return 1;
    }
    let (s1, s2) = (rng.next_u64(), rng.next_u64());
    match rng.below(6) {
        0..=2 => expected_leaves(s1, depth - 1, pools) + expected_leaves(s2, depth - 1, pools),
        3 => [s1, s2, s1 ^ s2]
            .iter()
            .map(|&s| expected_leaves(s, depth - 1, pools))
            .sum(),
        4 => {
            rng.below(pools as u64);
            expected_leaves(s1, depth - 1, pools)
        }
        _ => expected_leaves(s1, depth - 1, pools),
    }
}

#[test]
fn random_nested_fork_join_trees() {
    let pools = vec![
        ThreadPoolBuilder::new().num_threads(2).build().unwrap(),
        ThreadPoolBuilder::new().num_threads(1).build().unwrap(),
        ThreadPoolBuilder::new()
            .num_threads(3)
            .share_policy(SharePolicy::Eager)
            .spin_rounds(0)
            .build()
            .unwrap(),
    ];
    let iterations = iterations(3000, 4);
    let depth = if cfg!(miri) { 3 } else { 7 };
    for seed in 0..iterations as u64 {
        let sink = AtomicU64::new(0);
        let pool = &pools[(seed % 3) as usize];
        let got = pool.install(|| random_tree(seed, depth, &pools, &sink));
        let want = expected_leaves(seed, depth, pools.len());
        assert_eq!(got, want, "seed {seed}");
        assert_eq!(sink.load(Ordering::Relaxed), want, "seed {seed}");
    }
}

#[test]
fn outside_joins_race_with_busy_workers() {
    let pool = ThreadPoolBuilder::new()
        .num_threads(2)
        .spin_rounds(0)
        .build()
        .unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let pool = &pool;
            s.spawn(move || {
                for i in 0..iterations(5000, 10) as u64 {
                    let (a, b) = pool.join(|| i * t, || fib_seq(i % 8));
                    assert_eq!((a, b), (i * t, fib_seq(i % 8)));
                }
            });
        }
    });
}

#[test]
fn random_trees_under_every_policy() {
    for (name, build) in policies() {
        let pools = vec![build(2), build(1), build(3)];
        let depth = if cfg!(miri) { 3 } else { 6 };
        for seed in 0..iterations(150, 2) as u64 {
            let sink = AtomicU64::new(0);
            let got = pools[0].install(|| random_tree(seed, depth, &pools, &sink));
            let want = expected_leaves(seed, depth, pools.len());
            assert_eq!(got, want, "seed {seed} under {name}");
            assert_eq!(sink.load(Ordering::Relaxed), want);
        }
    }
}
