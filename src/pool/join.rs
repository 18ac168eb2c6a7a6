//! `join`: run two closures, potentially in parallel.

use super::job::StackJob;
use super::latch::SpinLatch;
use super::registry::Registry;
use super::unwind;
use super::worker::WorkerThread;
use crate::sync::mutant;
use crate::sync::Arc;

/// The worker side of `join`.
///
/// Fast path (nobody asked for work): B's job is recorded in the worker's private fork list, A
/// runs, and B runs inline: no atomic read-modify-write, no fence, no allocation. If a thief was
/// hungry, B (or an older fork) was published to the deque; then we pop it back if it is still
/// there (and run it inline all the same), or help with other work until the thief that took it
/// sets B's latch.
///
/// Panics: B always runs (or is waited for) even if A panicked, so no task outlives the borrows
/// it holds; A's panic, if any, is resumed first, else B's.
pub(crate) fn join_in_worker<A, B, RA, RB>(worker: &WorkerThread, a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA + Send,
    B: FnOnce() -> RB + Send,
    RA: Send,
    RB: Send,
{
    let job_b = StackJob::new(b, SpinLatch::new(worker));
    // SAFETY: `job_b` stays in this frame until either we reclaim it unexecuted (`pop_fork` says it
    // was never published, or `take_back` popped its only published JobRef back: either way no
    // JobRef to it is left anywhere) or its latch is set by the thief that took it.
    let job_b_ref = unsafe { job_b.as_job_ref() };
    let fork = worker.push_fork(job_b_ref);
    let result_a = unwind::halt_unwinding(a);
    // Still private, or published but popped back before any thief took it: run B inline.
    if worker.pop_fork(fork) || worker.take_back(job_b_ref) {
        let b = job_b.take_func();
        return match result_a {
            Ok(ra) => (ra, b()),
            Err(payload) => {
                // B's result or panic payload is user data whose `Drop` may panic: contained,
                // so A's panic is the one resumed.
                unwind::drop_contained(unwind::halt_unwinding(b));
                unwind::resume_unwinding(payload)
            }
        };
    }
    if mutant::JOIN_SKIPS_WAIT_ON_PANIC {
        if let Err(payload) = result_a {
            unwind::resume_unwinding(payload);
        }
    }
    // B was stolen: help until the thief sets its latch.
    worker.wait_until(job_b.latch.core());
    let result_b = job_b.into_result();
    match result_a {
        Ok(ra) => (ra, result_b.into_return_value()),
        Err(payload) => {
            unwind::drop_contained(result_b);
            unwind::resume_unwinding(payload)
        }
    }
}

/// `join` on `registry`, from whatever thread we are on.
#[inline]
pub(crate) fn join_on<A, B, RA, RB>(registry: &Arc<Registry>, a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA + Send,
    B: FnOnce() -> RB + Send,
    RA: Send,
    RB: Send,
{
    match WorkerThread::current() {
        Some(worker) if Arc::ptr_eq(worker.registry(), registry) => join_in_worker(worker, a, b),
        Some(worker) => registry.in_worker_cross(worker, |w| join_in_worker(w, a, b)),
        None => registry.join_outside(a, b),
    }
}
