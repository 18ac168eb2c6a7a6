//! The work queues, behind the facade.
//!
//! Normal builds use `crossbeam-deque` (Chase–Lev `Worker`/`Stealer` and the `Injector`). crossbeam's
//! atomics are plain `core` atomics that loom cannot see, so under `--cfg loom` this module provides a
//! stand-in with the same API subset, built from loom types: a mutex-guarded `VecDeque` plus an
//! atomic length. The stand-in is made *as weak as the real deque where the protocols depend on it*:
//! `is_empty` reads the length with `Acquire` outside the lock, as crossbeam's lock-free emptiness
//! probe does, so it can miss a push that has not been made visible to this thread by a fence. A
//! stand-in whose probe took the lock would be stronger than the real deque and hide lost wake-ups.
//! What the stand-in leaves unverified is listed in `docs/verification.md`.

//!
//! `--cfg parjob_stand_in_deque` selects the same stand-in in a normal (std) build: `scripts/miri.sh`
//! uses it for a Miri lane with preemption on, which the real deque's deliberate buffer race
//! forbids.

#[cfg(not(any(loom, parjob_stand_in_deque)))]
pub(crate) use crossbeam_deque::{Injector, Steal, Stealer, Worker};

#[cfg(any(loom, parjob_stand_in_deque))]
pub(crate) use stand_in::{Injector, Steal, Stealer, Worker};

#[cfg(any(loom, parjob_stand_in_deque))]
#[allow(dead_code)]
mod stand_in {
    use crate::sync::{Arc, AtomicUsize, Mutex, Ordering};
    use std::collections::VecDeque;

    /// Result of a steal attempt (the stand-in never needs `Retry`).
    pub(crate) enum Steal<T> {
        Empty,
        Success(T),
        #[allow(dead_code)]
        Retry,
    }

    impl<T> Steal<T> {
        pub(crate) fn success(self) -> Option<T> {
            match self {
                Steal::Success(t) => Some(t),
                _ => None,
            }
        }
        pub(crate) fn is_retry(&self) -> bool {
            matches!(self, Steal::Retry)
        }
    }

    struct Inner<T> {
        queue: Mutex<VecDeque<T>>,
        len: AtomicUsize,
    }

    impl<T> Inner<T> {
        fn new() -> Self {
            Inner {
                queue: Mutex::new(VecDeque::new()),
                len: AtomicUsize::new(0),
            }
        }
        fn push_back(&self, t: T) {
            let mut q = self.queue.lock().unwrap();
            q.push_back(t);
            self.len.store(q.len(), Ordering::Release);
        }
        fn pop_back(&self) -> Option<T> {
            let mut q = self.queue.lock().unwrap();
            let t = q.pop_back();
            self.len.store(q.len(), Ordering::Release);
            t
        }
        fn pop_front(&self) -> Option<T> {
            let mut q = self.queue.lock().unwrap();
            let t = q.pop_front();
            self.len.store(q.len(), Ordering::Release);
            t
        }
        /// Deliberately weak: no lock, so no happens-before with a concurrent push.
        fn is_empty(&self) -> bool {
            self.len.load(Ordering::Acquire) == 0
        }
    }

    /// Owner end of a LIFO deque.
    pub(crate) struct Worker<T> {
        inner: Arc<Inner<T>>,
    }
    /// Thief end of a `Worker`.
    pub(crate) struct Stealer<T> {
        inner: Arc<Inner<T>>,
    }
    impl<T> Clone for Stealer<T> {
        fn clone(&self) -> Self {
            Stealer {
                inner: self.inner.clone(),
            }
        }
    }

    impl<T> Worker<T> {
        pub(crate) fn new_lifo() -> Self {
            Worker {
                inner: Arc::new(Inner::new()),
            }
        }
        pub(crate) fn push(&self, t: T) {
            self.inner.push_back(t)
        }
        pub(crate) fn pop(&self) -> Option<T> {
            self.inner.pop_back()
        }
        pub(crate) fn stealer(&self) -> Stealer<T> {
            Stealer {
                inner: self.inner.clone(),
            }
        }
        pub(crate) fn is_empty(&self) -> bool {
            self.inner.is_empty()
        }
    }

    impl<T> Stealer<T> {
        pub(crate) fn steal(&self) -> Steal<T> {
            match self.inner.pop_front() {
                Some(t) => Steal::Success(t),
                None => Steal::Empty,
            }
        }
        pub(crate) fn is_empty(&self) -> bool {
            self.inner.is_empty()
        }
    }

    /// Global FIFO queue for work that arrives from outside the pool.
    pub(crate) struct Injector<T> {
        inner: Inner<T>,
    }

    impl<T> Injector<T> {
        pub(crate) fn new() -> Self {
            Injector {
                inner: Inner::new(),
            }
        }
        pub(crate) fn push(&self, t: T) {
            self.inner.push_back(t)
        }
        /// Like crossbeam, moves a batch: one job to return and about half of the rest (at most
        /// one more here, to keep loom's state space small) into `dest`. The moved jobs become
        /// visible in `dest` only as any push does, so a model sees a sleeper miss them unless
        /// the worker announces the move (`Sleep::new_work`).
        pub(crate) fn steal_batch_and_pop(&self, dest: &Worker<T>) -> Steal<T> {
            let mut q = self.inner.queue.lock().unwrap();
            let Some(first) = q.pop_front() else {
                return Steal::Empty;
            };
            let extra = q.pop_front();
            self.inner.len.store(q.len(), Ordering::Release);
            drop(q);
            if let Some(job) = extra {
                dest.push(job);
            }
            Steal::Success(first)
        }
        /// One job from the front (used by the loom models' own worker loops).
        pub(crate) fn steal(&self) -> Steal<T> {
            match self.inner.pop_front() {
                Some(t) => Steal::Success(t),
                None => Steal::Empty,
            }
        }
        pub(crate) fn is_empty(&self) -> bool {
            self.inner.is_empty()
        }
    }
}
