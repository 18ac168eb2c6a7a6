//! User code may panic anywhere — in a task, in the `Drop` of a panic payload, in the `Drop` of a
//! result — and the scheduler must stay sound: `scope` and `join` return only after every task
//! they started has finished, every task still runs, and the pool keeps working afterwards.
//!
//! The payloads here are `Bomb`s: a panic payload whose own `Drop` panics (legal in safe Rust, via
//! `std::panic::panic_any`). Before the fix, a losing payload dropped inside the scheduler unwound
//! out of a worker and let `scope` return while its tasks were still queued (a use-after-free).

use parjob::ThreadPoolBuilder;
use std::panic::{catch_unwind, panic_any, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// A panic payload (or a result) whose `Drop` panics.
#[derive(Debug)]
struct Bomb;

impl Drop for Bomb {
    fn drop(&mut self) {
        // Never panic while already unwinding: that aborts, and what we test is the scheduler's
        // handling of a *first* panic out of a user `Drop`.
        if !std::thread::panicking() {
            panic!("Bomb dropped");
        }
    }
}

const TASKS: usize = if cfg!(miri) { 6 } else { 64 };

/// Every spawned task panics with a `Bomb`. The scope must not return before all of them ran, no
/// task may run after it returned, and the pool must still work.
fn scope_with_bombs(threads: usize) {
    let pool = ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    for _ in 0..if cfg!(miri) { 1 } else { 20 } {
        let ran = AtomicUsize::new(0);
        let returned = AtomicBool::new(false);
        let late = AtomicUsize::new(0);
        let mut data = vec![0u8; TASKS];
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            pool.scope(|s| {
                for x in data.iter_mut() {
                    let (ran, returned, late) = (&ran, &returned, &late);
                    s.spawn(move |_| {
                        if returned.load(Ordering::SeqCst) {
                            late.fetch_add(1, Ordering::SeqCst);
                        }
                        *x = 1;
                        ran.fetch_add(1, Ordering::SeqCst);
                        panic_any(Bomb)
                    });
                }
            })
        }));
        returned.store(true, Ordering::SeqCst);
        assert!(
            outcome.is_err(),
            "a task panicked: the scope must resume a panic"
        );
        // The resumed payload may itself be a Bomb: dropping it here must not abort the test.
        if let Err(payload) = outcome {
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
        }
        assert_eq!(
            ran.load(Ordering::SeqCst),
            TASKS,
            "every task runs before scope returns"
        );
        assert!(data.iter().all(|&x| x == 1));
        drop(data);
        assert_eq!(
            late.load(Ordering::SeqCst),
            0,
            "no task ran after scope returned"
        );
        // The pool survived: its workers still take work.
        let sum: usize = pool.install(|| {
            let (a, b) = parjob::join(|| 1, || 2);
            a + b
        });
        assert_eq!(sum, 3);
        let mut counted = 0usize;
        pool.scope(|s| s.spawn(|_| counted += 1));
        assert_eq!(counted, 1);
    }
}

#[test]
fn scope_with_panicking_payload_drops_one_thread() {
    scope_with_bombs(1);
}

#[test]
fn scope_with_panicking_payload_drops_two_threads() {
    scope_with_bombs(2);
}

/// Both halves of a `join` panic with `Bomb`s: the losing payload (B's) is dropped inside the
/// scheduler. `join` must still wait for B, resume A's panic, and leave the pool working.
fn join_with_bombs(threads: usize) {
    let pool = ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    for _ in 0..if cfg!(miri) { 2 } else { 200 } {
        let b_done = AtomicBool::new(false);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            pool.install(|| {
                parjob::join(
                    || panic_any(Bomb),
                    || {
                        std::hint::black_box(0u64..1000).sum::<u64>();
                        b_done.store(true, Ordering::SeqCst);
                        panic_any(Bomb)
                    },
                )
            })
        }));
        assert!(
            b_done.load(Ordering::SeqCst),
            "B finished before join returned"
        );
        let payload = outcome.expect_err("A panicked");
        assert!(payload.is::<Bomb>(), "A's payload is the one resumed");
        let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
        assert_eq!(pool.install(|| parjob::join(|| 2, || 3)), (2, 3));
    }
}

#[test]
fn join_with_panicking_payload_drops_one_thread() {
    join_with_bombs(1);
}

#[test]
fn join_with_panicking_payload_drops_two_threads() {
    join_with_bombs(2);
}

/// `join` from outside the pool, both halves throwing Bombs (B is offered and almost always taken
/// back by the caller, so it runs inline after A).
#[test]
fn outside_join_with_panicking_payload_drops() {
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for _ in 0..if cfg!(miri) { 2 } else { 200 } {
        let b_done = AtomicBool::new(false);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            pool.join(
                || panic_any(Bomb),
                || {
                    b_done.store(true, Ordering::SeqCst);
                    panic_any(Bomb)
                },
            )
        }));
        assert!(b_done.load(Ordering::SeqCst));
        let payload = outcome.expect_err("A panicked");
        assert!(payload.is::<Bomb>());
        let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
        assert_eq!(pool.join(|| 1, || 2), (1, 2));
    }
}

/// `join` from outside the pool where a worker claims the offered B: A waits until B has run on
/// the worker, then panics with a Bomb; B panicked with a Bomb (or returned one, whose `Drop`
/// panics) on the worker. The caller must wait for B's latch, drop B's payload or result contained
/// and resume A's Bomb; the pool keeps working.
#[test]
fn outside_join_whose_claimed_b_panics_while_a_panics() {
    let pool = ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    for round in 0..if cfg!(miri) { 2 } else { 50 } {
        let b_ran_on_worker = AtomicBool::new(false);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            pool.join(
                || {
                    // Bounded only so that a broken offer fails instead of hanging.
                    let start = std::time::Instant::now();
                    while !b_ran_on_worker.load(Ordering::SeqCst) {
                        assert!(start.elapsed().as_secs() < 60, "B never reached the worker");
                        std::thread::yield_now();
                    }
                    panic_any(Bomb)
                },
                || {
                    let on_worker = parjob::current_thread_index().is_some();
                    b_ran_on_worker.store(on_worker, Ordering::SeqCst);
                    if round % 2 == 0 {
                        panic_any(Bomb)
                    }
                    Bomb
                },
            )
        }));
        let payload = outcome.expect_err("A panicked");
        assert!(payload.is::<Bomb>(), "A's payload is the one resumed");
        let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
        assert_eq!(pool.join(|| 1, || 2), (1, 2));
    }
}

/// A `join` whose B returns a value whose `Drop` panics while A panics: B's result is dropped
/// inside the scheduler. Before, this happened during unwinding (an abort); now it is contained.
#[test]
fn join_result_with_panicking_drop_while_a_panics() {
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for _ in 0..if cfg!(miri) { 2 } else { 200 } {
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            pool.install(|| parjob::join(|| panic!("A"), || Bomb))
        }));
        let payload = outcome.expect_err("A panicked");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"A"));
    }
}

/// The scope body panics *and* tasks panic with Bombs: the body's panic wins, the tasks' payloads
/// are dropped inside the scheduler, and every task still finishes first.
#[test]
fn scope_body_panic_with_bomb_tasks() {
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for _ in 0..if cfg!(miri) { 1 } else { 20 } {
        let ran = AtomicUsize::new(0);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            pool.scope(|s| {
                for _ in 0..TASKS {
                    s.spawn(|_| {
                        ran.fetch_add(1, Ordering::SeqCst);
                        panic_any(Bomb)
                    });
                }
                panic!("body");
            })
        }));
        assert_eq!(ran.load(Ordering::SeqCst), TASKS);
        let payload = outcome.expect_err("body panicked");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"body"));
        assert_eq!(pool.install(|| 7), 7);
    }
}

/// The body returns a value whose `Drop` panics while a task panicked: the value is dropped
/// inside the scheduler (contained), and the task's panic is the one resumed.
#[test]
fn scope_body_value_with_panicking_drop_while_a_task_panics() {
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for _ in 0..if cfg!(miri) { 1 } else { 20 } {
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            pool.scope(|s| {
                s.spawn(|_| panic!("task"));
                Bomb
            })
        }));
        let payload = outcome.expect_err("the task panicked");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"task"));
        assert_eq!(pool.install(|| 5), 5);
    }
}

/// `install`'s closure panics with a `Bomb`, called from outside the pool, from a worker of
/// another pool (which keeps working while it waits) and from the pool's own worker: the payload
/// itself reaches the caller (not dropped inside the scheduler, where its `Drop` would panic), and
/// the pools keep working. The same for `Parallel::run` on the calling thread.
#[test]
fn install_and_sequential_run_hand_a_bomb_payload_to_the_caller() {
    use parjob::{delayed, Backend, Parallel};
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let other = ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let is_bomb = |payload: Box<dyn std::any::Any + Send>| {
        let bomb = payload.downcast::<Bomb>().expect("the Bomb itself");
        // Its `Drop` panics: forget it (what the caller does with it is the caller's business).
        std::mem::forget(bomb);
    };
    for _ in 0..if cfg!(miri) { 1 } else { 20 } {
        is_bomb(catch_unwind(AssertUnwindSafe(|| pool.install(|| panic_any(Bomb)))).unwrap_err());
        let cross = other.install(|| {
            catch_unwind(AssertUnwindSafe(|| pool.install(|| panic_any(Bomb)))).map_err(|p| {
                let bomb = p.downcast::<Bomb>().is_ok_and(|b| {
                    std::mem::forget(b);
                    true
                });
                assert!(bomb, "the Bomb itself");
            })
        });
        assert!(cross.is_err());
        pool.install(|| {
            is_bomb(
                catch_unwind(AssertUnwindSafe(|| pool.install(|| panic_any(Bomb)))).unwrap_err(),
            )
        });
        for parallel in [
            Parallel::new().backend(Backend::Sequential),
            Parallel::new().n_jobs(1),
        ] {
            is_bomb(
                catch_unwind(AssertUnwindSafe(|| {
                    parallel.run((0..4).map(|i| {
                        delayed(|i: i32| {
                            if i == 2 {
                                panic_any(Bomb);
                            }
                            i
                        })(i)
                    }))
                }))
                .unwrap_err(),
            );
        }
        assert_eq!(pool.install(|| 7), 7);
        assert_eq!(other.install(|| 8), 8);
    }
}
