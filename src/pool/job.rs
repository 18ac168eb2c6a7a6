//! Jobs: type-erased units of work that the queues carry.
//!
//! A [`JobRef`] is a data pointer plus the function that knows its real type. The contract, which
//! every queue and worker keeps: **a `JobRef` is executed exactly once**, and the memory it points
//! to stays valid until that execution has finished its last access (for a [`StackJob`], until its
//! latch is set; the owner frees it only after observing the latch).

use super::latch::Latch;
use super::unwind::{self, Panic};
use crate::sync::UnsafeCell;
use std::mem;

/// A type that a [`JobRef`] can point to.
pub(crate) trait Job {
    /// # Safety
    /// `this` must point to a live `Self` that no other thread executes; called at most once.
    unsafe fn execute(this: *const Self);
}

/// A type-erased pointer to a job. Copyable so it can sit in a deque; executed exactly once.
#[derive(Copy, Clone, Debug)]
pub(crate) struct JobRef {
    pointer: *const (),
    execute_fn: unsafe fn(*const ()),
}

/// Two `JobRef`s are the same job when they point to the same data (a job's data pointer is unique
/// while it is pending; function pointers are not guaranteed unique, so they are not compared).
impl PartialEq for JobRef {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        self.pointer == other.pointer
    }
}
impl Eq for JobRef {}

// SAFETY: a JobRef points to a job whose closure and result are `Send`: every `Job` type requires
// it of what it runs (`StackJob`s are made only from `Send` closures with `Send` results by `join`
// and `in_worker*`; `HeapJob<F: Send>`; `ScopeJob<F: Send>`, whose scope pointer is to a `Sync`
// `Scope`; the outside join's `Ticket`, which holds only another such `JobRef`). Sending the pointer
// to the thread that executes it is the whole point, and exactly one thread executes it.
unsafe impl Send for JobRef {}
// SAFETY: shared references to a JobRef only allow copying the two pointers out.
unsafe impl Sync for JobRef {}

impl JobRef {
    /// # Safety
    /// `data` must stay valid until the returned `JobRef` has been executed (see module docs).
    #[inline]
    pub(crate) unsafe fn new<T: Job>(data: *const T) -> JobRef {
        // SAFETY: `T::execute` takes `*const T`; erasing it to `*const ()` is a plain pointer cast
        // with the same ABI, and we only ever call it with the `data` pointer it was paired with.
        let execute_fn: unsafe fn(*const ()) =
            unsafe { mem::transmute(T::execute as unsafe fn(*const T)) };
        JobRef {
            pointer: data.cast(),
            execute_fn,
        }
    }

    /// # Safety
    /// Must be called at most once per job, while the job is still valid.
    #[inline]
    pub(crate) unsafe fn execute(self) {
        // SAFETY: the pairing of pointer and function was fixed in `new`; the caller upholds the
        // exactly-once and liveness rules.
        unsafe { (self.execute_fn)(self.pointer) }
    }
}

/// What a job produced.
pub(crate) enum JobResult<T> {
    None,
    Ok(T),
    Panic(Panic),
}

impl<T> JobResult<T> {
    /// Returns the value, or resumes the job's panic in this thread.
    pub(crate) fn into_return_value(self) -> T {
        match self {
            JobResult::Ok(v) => v,
            JobResult::Panic(p) => unwind::resume_unwinding(p),
            JobResult::None => unreachable!("parjob: job result read before the job ran"),
        }
    }
}

/// A job that lives in its owner's stack frame (the second half of a `join`, the body of an
/// `install`). The owner must not leave the frame before the latch is set, which `join` and
/// `install` guarantee by waiting on it (and by running the job inline when nobody took it).
pub(crate) struct StackJob<L: Latch, F, R> {
    pub(crate) latch: L,
    func: UnsafeCell<Option<F>>,
    result: UnsafeCell<JobResult<R>>,
}

impl<L: Latch, F: FnOnce() -> R, R> StackJob<L, F, R> {
    #[inline]
    pub(crate) fn new(func: F, latch: L) -> Self {
        StackJob {
            latch,
            func: UnsafeCell::new(Some(func)),
            result: UnsafeCell::new(JobResult::None),
        }
    }

    /// # Safety
    /// The returned reference must be executed before `self` moves or is dropped.
    #[inline]
    pub(crate) unsafe fn as_job_ref(&self) -> JobRef {
        // SAFETY: `JobRef::new` needs `self` valid until the JobRef is executed; this function's
        // own contract requires exactly that of its caller (executed before `self` moves or drops).
        unsafe { JobRef::new(self) }
    }

    /// Takes the closure back to run it on the owner's thread. Only valid when no `JobRef` to this
    /// job can still be executed (it was never published, or was reclaimed).
    #[inline]
    pub(crate) fn take_func(&self) -> F {
        // SAFETY: the caller owns the job exclusively at this point (it was never published or
        // was reclaimed, so no JobRef to it can run), so no other
        // thread accesses `func`.
        self.func
            .with_mut(|f| unsafe { (*f).take() })
            .expect("parjob: stack job ran twice")
    }

    /// Reads the result after the latch was observed set (or the job ran on this thread).
    #[inline]
    pub(crate) fn into_result(self) -> JobResult<R> {
        self.result.with_mut(|r| {
            // SAFETY: the executing thread's last write to `result` happened before its latch
            // `set` (Release); we observed the latch with Acquire, or ran the job ourselves, so the
            // write is visible and no one else touches the cell any more.
            unsafe { mem::replace(&mut *r, JobResult::None) }
        })
    }
}

impl<L: Latch, F: FnOnce() -> R, R> Job for StackJob<L, F, R> {
    unsafe fn execute(this: *const Self) {
        // SAFETY: the JobRef contract: `this` is live until we set the latch, and only we run it.
        let this = unsafe { &*this };
        let abort = unwind::AbortIfPanic;
        let func = this.take_func();
        let result = match unwind::halt_unwinding(func) {
            Ok(v) => JobResult::Ok(v),
            Err(p) => JobResult::Panic(p),
        };
        // SAFETY: we are the only thread touching `result` until the latch is set below.
        this.result.with_mut(|r| unsafe { *r = result });
        // SAFETY: `this.latch` is live; `set` is the last access and makes the owner free to go.
        unsafe { Latch::set(&this.latch) };
        mem::forget(abort);
    }
}

/// A job on the heap, for work queued without a frame that waits for it by a latch: the jobs of
/// `ThreadPool::spawn_unchecked` (the `Parallel` tokens) and, with the `trace` feature, the
/// wrapper that times an injected job. Freed by its own execution. (Scope spawns are `ScopeJob`s
/// and the outside join's ticket is an `Arc<Ticket>`: see why in `scope.rs`.)
pub(crate) struct HeapJob<F> {
    func: F,
}

impl<F: FnOnce() + Send> HeapJob<F> {
    pub(crate) fn new(func: F) -> Box<Self> {
        Box::new(HeapJob { func })
    }

    /// Leaks the box into a `JobRef`; executing it frees the box.
    ///
    /// # Safety
    /// Anything `F` borrows must outlive the job's execution, or at least every access the job
    /// makes to it; see `ThreadPool::spawn_unchecked`, the only way borrowed data gets here.
    pub(crate) unsafe fn into_job_ref(self: Box<Self>) -> JobRef {
        // SAFETY: `JobRef::new` needs the pointee valid until the JobRef is executed: the box is
        // leaked here and reclaimed only by that execution (`execute`), so it is. What `F` borrows
        // is this function's own contract, passed on to our caller.
        unsafe { JobRef::new(Box::into_raw(self)) }
    }
}

impl<F: FnOnce() + Send> Job for HeapJob<F> {
    unsafe fn execute(this: *const Self) {
        // SAFETY: `this` came from `Box::into_raw` in `into_job_ref` and is executed exactly once,
        // so rebuilding the box here takes back unique ownership.
        let this = unsafe { Box::from_raw(this as *mut Self) };
        // Every heap job catches its own task's panics (scope spawns, `Parallel` runners, the
        // outside-join ticket). A panic that still escapes is a bug that would unwind through the
        // worker loop and skip whatever count or latch the job owes its waiter — letting a scope
        // or a call return while its tasks still run. Abort instead, as `StackJob` does.
        let abort = unwind::AbortIfPanic;
        (this.func)();
        mem::forget(abort);
    }
}
