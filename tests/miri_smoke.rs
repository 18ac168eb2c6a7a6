//! Small scheduler tests sized for Miri (`scripts/miri.sh`): each exercises unsafe code — stack
//! jobs and their latches, lifetime-erased scope tasks, panics crossing threads, shutdown with
//! queued work — with few enough iterations that Miri finishes in seconds. They also run in every
//! normal `cargo test`, with more iterations.

mod common;

use parjob::ThreadPoolBuilder;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};

const ROUNDS: usize = if cfg!(miri) { 2 } else { 50 };

fn pool(n: usize) -> parjob::ThreadPool {
    ThreadPoolBuilder::new().num_threads(n).build().unwrap()
}

fn fib(n: u32) -> u64 {
    if n < 2 {
        return n as u64;
    }
    let (a, b) = parjob::join(|| fib(n - 1), || fib(n - 2));
    a + b
}

#[test]
fn join_stack_jobs_borrow_the_callers_stack() {
    let pool = pool(2);
    for _ in 0..ROUNDS {
        let data = [1u64, 2, 3, 4];
        let (l, r) = pool.install(|| {
            parjob::join(
                || data[..2].iter().sum::<u64>(),
                || data[2..].iter().sum::<u64>(),
            )
        });
        assert_eq!(l + r, 10);
        assert_eq!(
            pool.install(|| fib(if cfg!(miri) { 6 } else { 16 })),
            if cfg!(miri) { 8 } else { 987 }
        );
    }
}

/// Each call offers B from its own frame and, B being short, almost always withdraws the offer
/// before a worker claims it. B writes into that frame, so a B run after the caller left, or run
/// twice, is caught here.
#[test]
fn join_from_outside_the_pool() {
    let pool = pool(2);
    for i in 0..ROUNDS {
        let mut written = None;
        let (a, ()) = pool.join(|| i, || written = Some(i + 1));
        assert_eq!((a, written), (i, Some(i + 1)));
    }
}

/// A waits until B has run, so the only worker must claim B's offer and run it in the caller's
/// frame: the worker reads the `JobRef` through the slot's pointer and writes B's result and the
/// caller's variable there, while the caller spins in A. The second round offers from the same
/// frame address as the first.
#[test]
fn a_worker_claims_an_outside_offer() {
    let pool = pool(1);
    for i in 0..2 {
        let b_done = AtomicUsize::new(0);
        let mut written = None;
        let (a, ()) = pool.join(
            || {
                while b_done.load(Ordering::Acquire) == 0 {
                    std::thread::yield_now();
                }
                i
            },
            || {
                written = Some(i + 1);
                b_done.store(1, Ordering::Release);
            },
        );
        assert_eq!((a, written), (i, Some(i + 1)));
    }
}

/// More outside callers offer at once than there are offer slots (4), while the only worker is
/// held busy: in the first round, the callers that find no free slot (at least one) queue their B
/// in the injector inside a ticket. Each B writes into its caller's frame. The second round
/// usually finds free slots again (a ticket's reuse by the same thread is not forced here).
#[test]
fn outside_joins_beyond_the_offer_slots() {
    const CALLERS: usize = 5;
    let pool = pool(1);
    let inside_a = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let (pool, inside_a) = (&pool, &inside_a);
        let release = common::hold_the_only_worker(s, pool);
        let callers: Vec<_> = (0..CALLERS)
            .map(|caller| {
                s.spawn(move || {
                    for round in 0..2 {
                        let mut written = None;
                        let (a, ()) = pool.join(
                            || {
                                // In the first round, every caller's B is on offer (or queued)
                                // once all of them are here.
                                inside_a.fetch_add(1, Ordering::SeqCst);
                                while round == 0 && inside_a.load(Ordering::SeqCst) < CALLERS {
                                    std::thread::yield_now();
                                }
                                caller
                            },
                            || written = Some(caller + 1),
                        );
                        assert_eq!((a, written), (caller, Some(caller + 1)));
                    }
                })
            })
            .collect();
        while inside_a.load(Ordering::SeqCst) < CALLERS {
            std::thread::yield_now();
        }
        release();
        for caller in callers {
            caller.join().unwrap();
        }
    });
}

#[test]
fn join_panic_waits_for_the_other_half() {
    let pool = pool(2);
    for _ in 0..ROUNDS {
        let other = AtomicUsize::new(0);
        let result = catch_unwind(AssertUnwindSafe(|| {
            pool.install(|| {
                parjob::join(
                    || panic!("miri smoke: A panics"),
                    || other.fetch_add(1, Ordering::Relaxed),
                )
            })
        }));
        assert!(result.is_err());
        assert_eq!(other.load(Ordering::Relaxed), 1);
    }
}

#[test]
fn scope_tasks_borrow_and_nest() {
    let pool = pool(2);
    for _ in 0..ROUNDS {
        let mut slots = [0u32; 4];
        pool.scope(|s| {
            for (i, slot) in slots.iter_mut().enumerate() {
                s.spawn(move |s| {
                    s.spawn(|_| {});
                    *slot = i as u32 + 1;
                });
            }
        });
        assert_eq!(slots, [1, 2, 3, 4]);
    }
}

#[test]
fn scope_panic_after_every_task() {
    let pool = pool(2);
    for _ in 0..ROUNDS {
        let done = AtomicUsize::new(0);
        let result = catch_unwind(AssertUnwindSafe(|| {
            pool.scope(|s| {
                s.spawn(|_| panic!("miri smoke: task panics"));
                s.spawn(|_| {
                    done.fetch_add(1, Ordering::Relaxed);
                });
            })
        }));
        assert!(result.is_err());
        assert_eq!(done.load(Ordering::Relaxed), 1);
    }
}

#[test]
fn shutdown_with_work_in_flight() {
    for _ in 0..ROUNDS {
        let counter = std::sync::Arc::new(AtomicUsize::new(0));
        let pool = pool(2);
        let c = counter.clone();
        pool.install(move || {
            parjob::scope(|s| {
                for _ in 0..4 {
                    let c = &c;
                    s.spawn(move |_| {
                        c.fetch_add(1, Ordering::Relaxed);
                    });
                }
            })
        });
        drop(pool);
        assert_eq!(counter.load(Ordering::Relaxed), 4);
    }
}

/// The last task to finish a scope sets its latch, after which the owner may free the scope at
/// once — while that task is still inside the scheduler's bookkeeping. The bookkeeping must hold
/// no reference to the scope across that point (a `&Scope` argument would be protected for the
/// whole call under Stacked/Tree Borrows: UB once the owner frees it). Here the owner's body
/// returns at once and its only task does a little work, so the task's decrement is the last one
/// and the owner frees the scope right after; Miri with preemption explores the window.
#[test]
fn scope_freed_right_after_last_task_decrements() {
    let pool = pool(2);
    for round in 0..ROUNDS * 2 {
        let mut slot = 0usize;
        pool.scope(|s| {
            s.spawn(|_| slot = (0..round + 3).sum());
        });
        assert_eq!(slot, (0..round + 3).sum::<usize>());
    }
}

/// A panic payload whose `Drop` panics, from several scope tasks: the losing payloads are dropped
/// inside the scheduler. The scope still returns only after every task, and the pool works after.
#[test]
fn scope_with_panicking_payload_drops() {
    #[derive(Debug)]
    struct Bomb;
    impl Drop for Bomb {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                panic!("Bomb dropped");
            }
        }
    }
    let pool = pool(2);
    let ran = AtomicUsize::new(0);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        pool.scope(|s| {
            for _ in 0..3 {
                s.spawn(|_| {
                    ran.fetch_add(1, Ordering::SeqCst);
                    std::panic::panic_any(Bomb)
                });
            }
        })
    }));
    assert_eq!(ran.load(Ordering::SeqCst), 3);
    if let Err(payload) = outcome {
        let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
    } else {
        panic!("the scope must resume a task's panic");
    }
    assert_eq!(pool.install(|| parjob::join(|| 1, || 2)), (1, 2));
}

/// One round of the `Parallel` tests under Miri (each round is several calls, about 3 s per seed).
const PARALLEL_ROUNDS: usize = if cfg!(miri) { 1 } else { 20 };

/// The `Parallel` engine's unsafe code: tasks and output slots that borrow the caller, lifetimes
/// erased for the tokens, results written in place; and the splittable form's ranges.
#[test]
fn parallel_calls_borrow_the_callers_data() {
    let p = pool(2);
    let data: Vec<u64> = (0..24).collect();
    let parallel = parjob::Parallel::new()
        .n_jobs(2)
        .backend(parjob::Backend::Pool(p.clone()));
    for _ in 0..PARALLEL_ROUNDS {
        let doubled = parallel.run(data.iter().map(|x| parjob::delayed(|x: &u64| x * 2)(x)));
        assert_eq!(doubled[23], 46);
        let strings = parallel.map(&data, |x| x.to_string());
        assert_eq!(strings[7], "7");
        let mut out = vec![String::new(); data.len()];
        parallel.map_into(&data, &mut out, |x| format!("{x}!"));
        assert_eq!(out[3], "3!");
        let first = parallel.scope_iter(
            data.iter()
                .map(|x| parjob::delayed(|x: &u64| x.to_string())(x)),
            |results| results.nth(2),
        );
        assert_eq!(first.as_deref(), Some("2"));
        // A 2-task call (one `join`) whose tasks nest a call into the pool: on the caller's
        // thread, through the thread-local pointer to the pool whose tasks it runs.
        let nested = parallel.run((0..2u64).map(|i| {
            parjob::Delayed::new(move || {
                parjob::Parallel::new()
                    .n_jobs(2)
                    .run((0..3u64).map(|j| parjob::delayed(|x: u64| x)(i * 3 + j)))
                    .iter()
                    .sum::<u64>()
            })
        }));
        assert_eq!(nested, [3, 12]);
    }
}

/// A panicking task in each form: written results (owning heap data) are dropped, the call waits
/// for the other runner, the panic comes back.
#[test]
fn parallel_panics_drop_written_results() {
    let p = pool(2);
    let parallel = parjob::Parallel::new()
        .n_jobs(2)
        .backend(parjob::Backend::Pool(p.clone()));
    let limited = parjob::Parallel::new()
        .n_jobs(2)
        .backend(parjob::Backend::Pool(p.clone()))
        .deadline(std::time::Duration::from_secs(3600));
    for _ in 0..PARALLEL_ROUNDS {
        let caught = catch_unwind(AssertUnwindSafe(|| {
            parallel.run((0..16).map(|i| {
                parjob::Delayed::new(move || {
                    assert!(i != 9, "task 9");
                    vec![i; 3]
                })
            }))
        }));
        assert!(caught.is_err());
        let caught = catch_unwind(AssertUnwindSafe(|| {
            parallel.run_indexed(16, |i| {
                assert!(i != 9, "index 9");
                vec![i; 3]
            })
        }));
        assert!(caught.is_err());
        // With a deadline (far off) each claimed range runs one index at a time, writing each
        // slot through its own call of the erased body.
        let caught = catch_unwind(AssertUnwindSafe(|| {
            limited.run_indexed(16, |i| {
                assert!(i != 9, "index 9");
                vec![i; 3]
            })
        }));
        assert!(caught.is_err());
        let strings = limited.map(&[5u64, 6, 7, 8], |x| x.to_string());
        assert_eq!(strings, ["5", "6", "7", "8"]);
    }
}

/// `scope_iter`'s tasks borrow the caller's data, and the stream ends early on every way out: the
/// consumer panics after one result, the input panics (in the first refill, when no stream exists
/// yet to settle, and in a later one), a task panics. Tasks are still queued or running each time
/// (they yield before reading their box), and the boxes are freed right after the call: a task run
/// after the call returned reads freed memory. (Checked to fail under Miri without the settle in
/// `scope_iter`'s guard, and when `Stream::new`'s panic path leaks its engine instead of settling.)
#[test]
fn scope_iter_settles_on_every_way_out() {
    let p = pool(2);
    let parallel = parjob::Parallel::new()
        .n_jobs(2)
        .backend(parjob::Backend::Pool(p.clone()));
    for way in 0..4 {
        let data: Vec<Box<usize>> = (0..8).map(Box::new).collect();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            parallel.scope_iter(
                data.iter().enumerate().map(|(i, x)| {
                    let input_panics = (way == 1 && i == 1) || (way == 2 && i == 6);
                    assert!(!input_panics, "input panics");
                    parjob::delayed(move |x: &usize| {
                        assert!(way != 3 || i != 2, "task panics");
                        std::thread::yield_now();
                        std::thread::yield_now();
                        *x
                    })(x)
                }),
                |results| {
                    let first = results.next();
                    assert!(way != 0, "consumer panics");
                    first.into_iter().chain(results).count()
                },
            )
        }));
        assert!(outcome.is_err(), "way {way} must panic");
        drop(data);
    }
}

/// The driver pulls tasks into a batch buffer through raw writes (`pull_into`); the input panics
/// part-way through a buffer. Every task it gave before must be dropped exactly once (run, or
/// dropped unrun when the call unwinds): each holds a `Box` (a double drop or a leak is Miri's to
/// catch) and counts its own drop.
#[test]
fn an_input_that_panics_mid_buffer_leaves_every_task_dropped_once() {
    struct Counted(#[allow(dead_code)] Box<usize>, &'static AtomicUsize);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.1.fetch_add(1, Ordering::Relaxed);
        }
    }
    static DROPPED: AtomicUsize = AtomicUsize::new(0);
    let p = pool(2);
    let parallel = parjob::Parallel::new()
        .n_jobs(2)
        .batch_size(parjob::BatchSize::Fixed(4))
        .backend(parjob::Backend::Pool(p.clone()));
    for given in [2usize, 6, 9] {
        DROPPED.store(0, Ordering::Relaxed);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            parallel.run((0..16).map(|i| {
                assert!(i != given, "input panics");
                parjob::delayed(|task: Counted| *task.0)(Counted(Box::new(i), &DROPPED))
            }))
        }));
        assert!(outcome.is_err(), "the input's panic is resumed");
        assert_eq!(
            DROPPED.load(Ordering::Relaxed),
            given,
            "each given task dropped once"
        );
    }
}
