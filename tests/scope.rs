//! `scope`: borrowing, nesting, panics.

mod common;
use common::*;
use parjob::ThreadPoolBuilder;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};

#[test]
fn spawns_borrow_and_mutate_the_callers_data() {
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let mut chunks = vec![vec![1u32; 100]; 8];
    let factor = 3;
    pool.scope(|s| {
        for chunk in chunks.iter_mut() {
            s.spawn(move |_| chunk.iter_mut().for_each(|x| *x *= factor));
        }
    });
    assert!(chunks.iter().flatten().all(|&x| x == 3));
}

#[test]
fn nested_spawns_all_finish_before_scope_returns() {
    let counter = AtomicUsize::new(0);
    fn spawn_tree<'s>(s: &parjob::Scope<'s>, depth: u32, counter: &'s AtomicUsize) {
        counter.fetch_add(1, Ordering::SeqCst);
        if depth > 0 {
            s.spawn(move |s| spawn_tree(s, depth - 1, counter));
            s.spawn(move |s| spawn_tree(s, depth - 1, counter));
        }
    }
    let depth = if cfg!(miri) { 3 } else { 10 };
    parjob::scope(|s| spawn_tree(s, depth, &counter));
    assert_eq!(counter.load(Ordering::SeqCst), (1 << (depth + 1)) - 1);
}

#[test]
fn scope_returns_the_bodys_value() {
    let v = parjob::scope(|s| {
        s.spawn(|_| ());
        "value"
    });
    assert_eq!(v, "value");
}

#[test]
fn a_spawned_panic_waits_for_every_other_task_then_propagates() {
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for _ in 0..iterations(20, 2) {
        let finished = AtomicUsize::new(0);
        let result = catch_unwind(AssertUnwindSafe(|| {
            pool.scope(|s| {
                for i in 0..8 {
                    let finished = &finished;
                    s.spawn(move |_| {
                        if i == 3 {
                            panic!("task 3");
                        }
                        fib_join(10);
                        finished.fetch_add(1, Ordering::SeqCst);
                    });
                }
            })
        }));
        assert_eq!(result.unwrap_err().downcast_ref::<&str>(), Some(&"task 3"));
        assert_eq!(
            finished.load(Ordering::SeqCst),
            7,
            "every other task ran to completion"
        );
    }
    assert_eq!(pool.install(|| fib_join(10)), 55);
}

#[test]
fn body_panic_wins_over_task_panics_and_tasks_still_run() {
    let ran = AtomicUsize::new(0);
    let result = catch_unwind(AssertUnwindSafe(|| {
        parjob::scope(|s| {
            s.spawn(|_| panic!("task"));
            s.spawn(|_| {
                ran.fetch_add(1, Ordering::SeqCst);
            });
            panic!("body");
        })
    }));
    assert_eq!(result.unwrap_err().downcast_ref::<&str>(), Some(&"body"));
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}

#[test]
fn scope_on_one_thread_pool_from_outside_and_inside() {
    let pool = ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let mut out = [0u64; 4];
    pool.scope(|s| {
        for (i, o) in out.iter_mut().enumerate() {
            s.spawn(move |_| *o = fib_join(i as u64 + 10));
        }
    });
    assert_eq!(out, [55, 89, 144, 233]);
    let c = AtomicUsize::new(0);
    pool.install(|| {
        parjob::scope(|s| {
            s.spawn(|_| {
                parjob::scope(|inner| {
                    inner.spawn(|_| {
                        c.fetch_add(1, Ordering::SeqCst);
                    });
                });
            });
        })
    });
    assert_eq!(c.load(Ordering::SeqCst), 1);
}
