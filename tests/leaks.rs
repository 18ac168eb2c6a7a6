//! Leaks are safe: each test leaks (`mem::forget`, an `Rc` cycle, `Box::leak`), swaps or panics
//! around whatever the public API hands out while tasks are in flight, then frees what the tasks
//! borrowed. A task that touched it afterwards would be a use-after-free: Miri runs this file
//! (`scripts/miri.sh`), where that is an error, and normal runs check the results. Written by the
//! round 9 leak review; removing the settle from `scope_iter`'s guard makes
//! `scope_iter_nested_streams_swapped` fail under Miri ("Data race detected ... deallocation").

use parjob::{delayed, Backend, Parallel, ThreadPoolBuilder};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};

fn pool(n: usize) -> parjob::ThreadPool {
    ThreadPoolBuilder::new().num_threads(n).build().unwrap()
}

/// `run_iter` with a non-'static `on_progress` callback (the only `'p` borrow a stream may hold)
/// is forgotten after one result while its 'static tasks still run; the callback's data is then
/// freed, and the pool drained and joined. A token or a late report touching the callback after
/// the borrow ended would be a use-after-free.
#[test]
fn run_iter_forgotten_with_borrowing_progress_callback() {
    let p = pool(2);
    {
        let seen = Box::new(AtomicUsize::new(0));
        let seen_ref: &AtomicUsize = &seen;
        let parallel = Parallel::new()
            .n_jobs(2)
            .backend(Backend::Pool(p.clone()))
            .on_progress(move |done, _| {
                seen_ref.fetch_max(done, Ordering::SeqCst);
            });
        // The input iterator (not required to be 'static) borrows a box freed after the leak.
        let base = Box::new(0u64);
        let base_ref: &u64 = &base;
        let mut it = parallel.run_iter((0..6u64).map(move |x| {
            let x = x + *base_ref;
            delayed(|x: u64| {
                std::thread::yield_now();
                Box::new(x * 2)
            })(x)
        }));
        assert_eq!(it.next().map(|b| *b), Some(0));
        std::mem::forget(it);
        drop(parallel);
        drop(seen);
        drop(base);
    }
    // Every queued token runs now (drain on shutdown) with the callback's data freed.
    drop(p);
}

/// Same, but the stream is kept alive by an `Rc` cycle instead of `mem::forget`.
#[test]
fn run_unordered_leaked_in_rc_cycle() {
    use std::cell::RefCell;
    use std::rc::Rc;
    struct Node {
        _it: Box<dyn Iterator<Item = (usize, Box<u64>)>>,
        me: RefCell<Option<Rc<Node>>>,
    }
    let p = pool(2);
    let it = Parallel::new()
        .n_jobs(2)
        .backend(Backend::Pool(p.clone()))
        .run_unordered((0..6u64).map(|x| {
            delayed(|x: u64| {
                std::thread::yield_now();
                Box::new(x)
            })(x)
        }));
    let node = Rc::new(Node {
        _it: Box::new(it),
        me: RefCell::new(None),
    });
    *node.me.borrow_mut() = Some(Rc::clone(&node));
    drop(node);
    drop(p);
}

/// `scope_iter` lends `&mut ScopedIter`; two nested calls of the same types swap their streams,
/// so each call's guard settles the *other* call's stream. The inner call's tasks (which borrow
/// data that outlives the outer call, as the types force) then run on after the inner call
/// returned, until the outer guard settles them. Boxes freed right after the outer call.
#[test]
fn scope_iter_nested_streams_swapped() {
    type Task<'a> = parjob::Delayed<fn(&Box<usize>) -> usize, (&'a Box<usize>,)>;
    // The box is the point: its heap cell is what is freed after the call, where Miri sees a
    // late read.
    #[allow(clippy::borrowed_box)]
    fn read(x: &Box<usize>) -> usize {
        std::thread::yield_now();
        **x
    }
    let p = pool(2);
    let parallel = Parallel::new().n_jobs(2).backend(Backend::Pool(p.clone()));
    for _ in 0..2 {
        let outer_data: Vec<Box<usize>> = (0..4).map(Box::new).collect();
        let inner_data: Vec<Box<usize>> = (10..14).map(Box::new).collect();
        fn make(v: &[Box<usize>]) -> Vec<Task<'_>> {
            v.iter()
                .map(|x| parjob::Delayed::with_args(read as fn(&Box<usize>) -> usize, (x,)))
                .collect()
        }
        let outer_tasks = make(&outer_data);
        let inner_tasks = make(&inner_data);
        let got = parallel.scope_iter(outer_tasks, |outer| {
            let first = outer.next();
            parallel.scope_iter(inner_tasks, |inner| {
                std::mem::swap(outer, inner);
            });
            // `outer` now holds the inner call's stream, which is still live.
            (first, outer.next())
        });
        assert_eq!(got.0, Some(0));
        drop(outer_data);
        drop(inner_data);
    }
    drop(p);
}

/// `scope` spawns tasks that borrow, the body leaks everything it can get hold of (a clone of
/// the pool handle, a `Box::leak`ed reference to the scope, nothing else is handed out) and then
/// panics; every task must still have finished before `scope` unwinds to the owner of `data`.
#[test]
fn scope_body_leaks_and_panics() {
    let p = pool(2);
    let data: Vec<Box<usize>> = (0..4).map(Box::new).collect();
    let sum = AtomicUsize::new(0);
    let r = catch_unwind(AssertUnwindSafe(|| {
        p.scope(|s| {
            for x in &data {
                let sum = &sum;
                s.spawn(move |_| {
                    std::thread::yield_now();
                    sum.fetch_add(**x, Ordering::SeqCst);
                });
            }
            let leaked: &&parjob::Scope<'_> = Box::leak(Box::new(s));
            let _ = leaked;
            std::mem::forget(p.clone());
            panic!("body panics");
        })
    }));
    assert!(r.is_err());
    assert_eq!(sum.load(Ordering::SeqCst), 6);
    drop(data);
}

/// `map_into` over a buffer whose old values' `Drop` panics (user code running inside a
/// lifetime-erased runner), with `f` also panicking: the call must settle before unwinding to the
/// owner of `out` and `items`.
#[test]
fn map_into_with_panicking_old_value_drops() {
    struct Loud(#[allow(dead_code)] Box<u32>, bool);
    impl Drop for Loud {
        fn drop(&mut self) {
            if self.1 {
                self.1 = false;
                panic!("old value drop");
            }
        }
    }
    let p = pool(2);
    let items: Vec<Box<u32>> = (0..6).map(Box::new).collect();
    let mut out: Vec<Loud> = (0..6).map(|i| Loud(Box::new(i), i % 2 == 0)).collect();
    let r = catch_unwind(AssertUnwindSafe(|| {
        Parallel::new()
            .n_jobs(2)
            .backend(Backend::Pool(p.clone()))
            .map_into(&items, &mut out, |x| {
                std::thread::yield_now();
                assert!(**x != 5, "f panics");
                Loud(Box::new(**x + 100), false)
            })
    }));
    assert!(r.is_err());
    for v in &mut out {
        v.1 = false;
    }
    drop(out);
    drop(items);
    drop(p);
}
