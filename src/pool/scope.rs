//! `scope`: spawn any number of tasks that may borrow from the enclosing stack frame.

use super::job::{Job, JobRef};
use super::latch::CoreLatch;
use super::registry::Registry;
use super::unwind::{self, Panic};
use super::worker::WorkerThread;
use crate::sync::mutant::{self, Mutant};
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

/// A spawned task on the heap: the task and the scope it counts against.
///
/// A job type of its own rather than a `HeapJob` closure on purpose: a closure that captured the
/// task and then did the final decrement would hold the task's borrows as fields of its own
/// by-value `self` for its whole call, and those are protected (Stacked/Tree Borrows) until it
/// returns — after the decrement, when the owner may already have freed what they point to. Here
/// `execute` takes a raw pointer, moves the task out, and runs it in a call that returns before
/// the decrement.
struct ScopeJob<'scope, F> {
    scope: *const Scope<'scope>,
    task: F,
}

impl<'scope, F> Job for ScopeJob<'scope, F>
where
    F: FnOnce(&Scope<'scope>) + Send + 'scope,
{
    unsafe fn execute(this: *const Self) {
        // The task's panic is caught below and nothing else here runs user code that may unwind
        // (payload drops are contained); a panic escaping anyway is a scheduler bug that would
        // skip the decrement, so abort rather than unwind through the worker.
        let abort = unwind::AbortIfPanic;
        // SAFETY: `this` came from `Box::into_raw` in `spawn` and is executed exactly once (the
        // JobRef contract), so rebuilding the box takes back unique ownership.
        let job = unsafe { Box::from_raw(this as *mut Self) };
        let ScopeJob { scope, task } = *job;
        // Counts this task finished however it ends; its drop is the task's last access to the
        // scope.
        let finished = FinishOnDrop(scope);
        let result = {
            // SAFETY: the scope is alive: it cannot return while this task is pending, and
            // `finished` (declared before, so dropped after this borrow ends) is what decrements
            // `pending`.
            let scope_ref = unsafe { &*scope };
            unwind::halt_unwinding(move || task(scope_ref))
        };
        if mutant::active(Mutant::ScopeCountsBeforePanic) {
            // Broken twin (`--cfg parjob_mutants` loom builds only): count first, record after.
            drop(finished);
            if let Err(payload) = result {
                // SAFETY: none; this is the deliberately broken order the model must catch.
                unsafe { Scope::record_panic(scope, payload) };
            }
            std::mem::forget(abort);
            return;
        }
        if let Err(payload) = result {
            // SAFETY: this task's count is still in `pending` (`finished` has not been dropped),
            // so the owner is still waiting and the scope is live.
            unsafe { Scope::record_panic(scope, payload) };
        }
        drop(finished);
        std::mem::forget(abort);
    }
}

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
        let job = Box::new(ScopeJob { scope: self, task });
        // SAFETY: the job borrows data that lives for `'scope`; the scope outlives the job because
        // it waits for `pending`, which the job decrements only as its very last access to
        // anything borrowed (`ScopeJob::execute`). The box is reclaimed by that execution.
        let job_ref = unsafe { JobRef::new(Box::into_raw(job)) };
        self.registry.push_or_inject(job_ref);
    }

    /// Keeps the first task panic; drops any later one with its `Drop` contained.
    ///
    /// # Safety
    /// `this` points to a live scope: the caller is a task (or the body) still counted in
    /// `pending`.
    unsafe fn record_panic(this: *const Self, payload: Panic) {
        let boxed = Box::into_raw(Box::new(payload));
        // SAFETY: the caller guarantees `this` is live; `panic` is an atomic, shared access only.
        let slot = unsafe { &(*this).panic };
        // AcqRel pairs with the owner's `swap(Acquire)` after the latch: the winner's payload is
        // fully written before the owner takes it.
        if slot
            .compare_exchange(ptr::null_mut(), boxed, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // SAFETY: we just made `boxed` and lost the race, so nobody else has it.
            let losing = unsafe { Box::from_raw(boxed) };
            // A payload's `Drop` is user code and may panic: contained, never unwinding past the
            // decrement that follows.
            unwind::drop_contained(losing);
        }
    }

    /// Called once per task (and once for the scope body), by `FinishOnDrop`. The last one sets
    /// the latch, after which the owner may free the scope at once: from the decrement on, this
    /// function touches nothing of the scope but what it copied out before.
    ///
    /// A raw pointer rather than `&self` on purpose: a `&Scope` argument would be protected for the
    /// whole call (Stacked/Tree Borrows), and the owner may free the scope while the last task is
    /// still inside this function.
    ///
    /// # Safety
    /// `this` points to a live scope, and the caller's own count is still in `pending`.
    unsafe fn task_finished(this: *const Self) {
        // SAFETY: live until our decrement below (our count keeps the owner waiting).
        let (pending, latch, registry, owner) = unsafe {
            (
                &raw const (*this).pending,
                &raw const (*this).latch,
                Arc::as_ptr(&(*this).registry),
                (*this).owner,
            )
        };
        // AcqRel: the last decrement acquires every other task's writes (their panics, their side
        // effects: each decremented with Release) and releases them, through the latch's Release
        // set, to the owner's Acquire probe.
        // SAFETY: `pending` is live: our count is still in it until this very operation.
        if unsafe { (*pending).fetch_sub(1, Ordering::AcqRel) } == 1 {
            // SAFETY: we took the count to zero, so the owner waits for the latch and the scope is
            // live until the set below; `set` is our last access to it. The registry outlives the
            // scope's memory: the thread running this is a worker of that registry (scope tasks
            // are queued only on it) and holds its own `Arc` to it.
            let owner_sleeps = unsafe { CoreLatch::set(latch) };
            if owner_sleeps {
                // SAFETY: `registry` was copied out before the set; it points into the `Arc`'s heap
                // block, which the worker running this task (a worker of that registry) keeps
                // alive through its own `Arc`, whatever the owner does with the scope now.
                unsafe { (*registry).sleep.wake_specific(owner) };
            }
        }
    }
}

/// Counts a task (or the scope body) finished when dropped, whatever path it leaves by: the
/// decrement must be unconditional, or a scope could wait forever (or, worse, a bug in a
/// panic path could let it return early). Dropping it is the task's last access to the scope.
struct FinishOnDrop<'scope>(*const Scope<'scope>);

impl Drop for FinishOnDrop<'_> {
    fn drop(&mut self) {
        // SAFETY: a `FinishOnDrop` is made only by a task (or body) whose count is in `pending`,
        // and each is dropped exactly once, so the scope is live and the count ours to return.
        unsafe { Scope::task_finished(self.0) }
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
    // The body's own count; its panic is resumed below with priority, so it is not recorded.
    drop(FinishOnDrop(&scope));
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
    match (result, task_panic) {
        (Ok(value), None) => value,
        // Every task has finished; what is left to drop is user data whose `Drop` may panic.
        // Contained, so the panic that is resumed is the one the rules promise.
        (Ok(value), Some(payload)) => {
            unwind::drop_contained(value);
            unwind::resume_unwinding(payload)
        }
        (Err(payload), task_panic) => {
            unwind::drop_contained(task_panic);
            unwind::resume_unwinding(payload)
        }
    }
}
