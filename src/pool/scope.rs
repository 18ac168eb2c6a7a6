//! `scope`: spawn any number of tasks that may borrow from the enclosing stack frame.

use super::job::HeapJob;
use super::latch::CoreLatch;
use super::registry::Registry;
use super::unwind::{self, Panic};
use super::worker::WorkerThread;
use crate::sync::mutant;
use crate::sync::{Arc, AtomicPtr, AtomicUsize, Ordering};
use std::marker::PhantomData;
use std::ptr;

/// A scope in which tasks can be spawned that borrow data living at least as long as `'scope`.
///
/// Made by [`scope`](crate::scope) or [`ThreadPool::scope`](crate::ThreadPool::scope). The scope
/// returns only after every task spawned in it (directly or from other spawned tasks) has finished,
/// which is what makes the borrows sound. Nothing the API hands out can end the scope early:
/// leaking (`mem::forget`) a `&Scope` changes nothing, since the waiting is done by the function
/// that owns the scope, not by a guard.
///
/// `'scope` is invariant, as in `std::thread::scope`: a task cannot be spawned with a borrow that
/// is shorter than the scope.
///
/// ```compile_fail
/// parjob::scope(|s| {
///     let local = 5;
///     s.spawn(|_| println!("{local}")); // `local` dies before the scope ends
/// });
/// ```
pub struct Scope<'scope> {
    registry: Arc<Registry>,
    /// Worker that runs the scope body and waits on `latch`.
    owner: usize,
    /// Tasks not yet finished, plus one for the scope body itself.
    pending: AtomicUsize,
    latch: CoreLatch,
    /// First panic of a spawned task, owned as a leaked `Box<Panic>`; null if none.
    panic: AtomicPtr<Panic>,
    marker: PhantomData<InvariantScope<'scope>>,
}

impl std::fmt::Debug for Scope<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scope")
            .field("pending", &self.pending.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Makes `Scope<'scope>` invariant in `'scope` (a boxed closure taking `&Scope<'scope>` is both
/// covariant and contravariant in it), so a task cannot be spawned with a borrow shorter than the
/// scope, and a scope cannot be passed where a longer one is expected.
type InvariantScope<'scope> = Box<dyn FnOnce(&Scope<'scope>) + Send + Sync + 'scope>;

/// A `*const Scope` that can be moved into a task.
struct ScopePtr<'scope>(*const Scope<'scope>);
// SAFETY: `Scope` is `Sync` (all its fields are), and the pointee outlives every task holding the
// pointer because the scope waits for `pending` to reach zero before it returns.
unsafe impl Send for ScopePtr<'_> {}

impl<'scope> Scope<'scope> {
    /// Spawns a task into the scope. It may run on any worker of the scope's pool, in parallel with
    /// the rest of the scope body, and may itself spawn more tasks through the `&Scope` it gets.
    ///
    /// A panic in the task is caught; the scope finishes every other task and then resumes the
    /// first panic in the caller of `scope`.
    ///
    /// ```
    /// let mut words = vec!["a".to_string(), "b".to_string()];
    /// parjob::scope(|s| {
    ///     for w in words.iter_mut() {
    ///         s.spawn(move |_| w.push('!'));
    ///     }
    /// });
    /// assert_eq!(words, ["a!", "b!"]);
    /// ```
    pub fn spawn<F>(&self, task: F)
    where
        F: FnOnce(&Scope<'scope>) + Send + 'scope,
    {
        // Relaxed is enough: the increment happens-before the job is pushed, and the push
        // publishes it (as `Arc::clone` does with its count).
        self.pending.fetch_add(1, Ordering::Relaxed);
        let scope = ScopePtr(self);
        let job = HeapJob::new(move || {
            let scope = scope;
            // SAFETY: the scope is alive: it cannot return while this task is pending.
            let scope = unsafe { &*scope.0 };
            let result = unwind::halt_unwinding(|| task(scope));
            scope.task_finished(result.err());
        });
        // SAFETY: the job borrows data that lives for `'scope`; the scope outlives the job because
        // it waits for `pending`, which this job decrements only as its very last action.
        let job_ref = unsafe { job.into_job_ref() };
        match WorkerThread::current() {
            Some(worker) if Arc::ptr_eq(worker.registry(), &self.registry) => {
                worker.push_shared(job_ref)
            }
            _ => self.registry.inject(job_ref),
        }
    }

    fn record_panic(&self, payload: Panic) {
        let boxed = Box::into_raw(Box::new(payload));
        if self
            .panic
            .compare_exchange(ptr::null_mut(), boxed, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // SAFETY: we just made `boxed` and lost the race, so nobody else has it.
            drop(unsafe { Box::from_raw(boxed) });
        }
    }

    /// Called once per task (and once for the scope body). The last one sets the latch.
    fn task_finished(&self, panic: Option<Panic>) {
        if mutant::SCOPE_COUNTS_BEFORE_PANIC {
            if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.set_latch();
            }
            if let Some(payload) = panic {
                self.record_panic(payload);
            }
            return;
        }
        if let Some(payload) = panic {
            self.record_panic(payload);
        }
        // AcqRel: the last decrement acquires every other task's writes (their panics, their
        // side effects) and releases them, through the latch, to the owner.
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.set_latch();
        }
    }

    fn set_latch(&self) {
        // Read before setting: the owner may free the scope as soon as the latch is set. The
        // registry itself stays alive: the setter is a worker of it and holds its own `Arc`.
        let registry: *const Registry = &*self.registry;
        let owner = self.owner;
        // SAFETY: `self.latch` is live until set; nothing of `self` is touched afterwards.
        let owner_sleeps = unsafe { CoreLatch::set(&self.latch) };
        if owner_sleeps {
            // SAFETY: see above.
            unsafe { (*registry).sleep.wake_specific(owner) };
        }
    }
}

/// Runs a scope on the current worker: the body, then every spawned task (helping with them), then
/// resumes the first panic (the body's, else the first task's).
pub(crate) fn scope_in_worker<'scope, OP, R>(worker: &WorkerThread, op: OP) -> R
where
    OP: FnOnce(&Scope<'scope>) -> R,
{
    let scope = Scope {
        registry: Arc::clone(worker.registry()),
        owner: worker.index(),
        pending: AtomicUsize::new(1),
        latch: CoreLatch::new(),
        panic: AtomicPtr::new(ptr::null_mut()),
        marker: PhantomData,
    };
    let result = unwind::halt_unwinding(|| op(&scope));
    let body_panic = result.as_ref().err().is_some();
    // The body's own count; its panic is resumed below with priority, so don't record it.
    scope.task_finished(None);
    if !scope.latch.probe() {
        worker.wait_until(&scope.latch);
    }
    let task_panic = scope.panic.swap(ptr::null_mut(), Ordering::Acquire);
    let task_panic = if task_panic.is_null() {
        None
    } else {
        // SAFETY: a non-null pointer came from `Box::into_raw` in `record_panic`, and the swap
        // made us its only owner.
        Some(*unsafe { Box::from_raw(task_panic) })
    };
    match result {
        Ok(value) => match task_panic {
            None => value,
            Some(payload) => unwind::resume_unwinding(payload),
        },
        Err(payload) => {
            debug_assert!(body_panic);
            drop(task_panic);
            unwind::resume_unwinding(payload)
        }
    }
}
