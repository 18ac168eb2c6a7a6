//! `join`: run two closures, potentially in parallel.

use super::job::{Job, JobRef, JobResult, StackJob};
use super::latch::{LockLatch, SpinLatch};
use super::registry::{Caller, Registry};
use super::unwind::{self, AbortIfPanic, Panic};
use super::worker::WorkerThread;
use crate::sync::mutant::{self, Mutant};
use crate::sync::{Arc, AtomicBool, Ordering};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::mem;

/// The worker side of `join`.
///
/// Most joins are not recorded at all (see `WorkerThread::may_skip_fork`): A runs, then B, as in
/// the sequential program, with nothing but one load of the request word added (and a store,
/// with a counted sampling period). Only the forks nearest the root of the running job, and the
/// next one after a thief's request, are recorded (`join_recorded`), which is all a thief ever
/// needs: it is given the oldest recorded fork.
///
/// Panics: B always runs (or is waited for) even if A panicked, so no task outlives the borrows
/// it holds; A's panic, if any, is resumed first, else B's.
#[inline(always)]
pub(crate) fn join_in_worker<A, B, RA, RB>(worker: &WorkerThread, a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA + Send,
    B: FnOnce() -> RB + Send,
    RA: Send,
    RB: Send,
{
    if worker.may_skip_fork() {
        return run_b_inline(unwind::halt_unwinding(a), b);
    }
    join_recorded(worker, a, b)
}

/// A `join` whose fork is recorded, so that a hungry thief can be given B.
///
/// Fast path (nobody asked for work): B's job is recorded in the worker's private fork list, A
/// runs, and B runs inline: no atomic read-modify-write, no fence, no allocation. If a thief was
/// hungry, B (or an older fork) was published to the deque; then we pop it back if it is still
/// there (and run it inline all the same), or help with other work until the thief that took it
/// sets B's latch.
///
/// Out of line so that the unrecorded path, which is almost every join, keeps the caller's frame
/// small and its registers free.
#[inline(never)]
pub(crate) fn join_recorded<A, B, RA, RB>(worker: &WorkerThread, a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA + Send,
    B: FnOnce() -> RB + Send,
    RA: Send,
    RB: Send,
{
    let job_b = StackJob::new(b, SpinLatch::new(worker.wake_target()));
    // SAFETY: `job_b` stays in this frame until either we reclaim it unexecuted (`pop_fork` says it
    // was never published, or `take_back` popped its only published JobRef back: either way no
    // JobRef to it is left anywhere) or its latch is set by the thief that took it.
    let job_b_ref = unsafe { job_b.as_job_ref() };
    let fork = worker.push_fork(job_b_ref);
    let result_a = unwind::halt_unwinding(a);
    // Still private, or published but popped back before any thief took it: run B inline.
    if worker.pop_fork(fork) || worker.take_back(job_b_ref) {
        return run_b_inline(result_a, job_b.take_func());
    }
    if mutant::active(Mutant::JoinSkipsWaitOnPanic) {
        if let Err(payload) = result_a {
            unwind::resume_unwinding(payload);
        }
    }
    // B was stolen: help until the thief sets its latch.
    worker.wait_until(job_b.latch.core());
    combine(result_a, job_b.into_result())
}

/// B was reclaimed unexecuted (by its owner, or an outside caller that won the ticket): run it
/// here. If A panicked, B still runs (it may hold borrows the caller expects it to finish with);
/// its result or panic payload is user data whose `Drop` may panic, so it is dropped contained
/// and A's panic is the one resumed. If only B panics, A's result is dropped the same way before
/// B's panic is resumed: left to the unwinding, a `Drop` that panics there aborts the process.
/// A result with no drop glue (fib's `u64`) has nothing that could panic while B's panic unwinds,
/// so the hot path of an un-stolen `join` keeps calling B directly, with no catch around it.
#[inline(always)]
pub(crate) fn run_b_inline<RA, RB>(
    result_a: Result<RA, Panic>,
    b: impl FnOnce() -> RB,
) -> (RA, RB) {
    match result_a {
        Ok(ra) if !std::mem::needs_drop::<RA>() => (ra, b()),
        Ok(ra) => match unwind::halt_unwinding(b) {
            Ok(rb) => (ra, rb),
            Err(payload) => {
                unwind::drop_contained(ra);
                unwind::resume_unwinding(payload)
            }
        },
        Err(payload) => {
            unwind::drop_contained(unwind::halt_unwinding(b));
            unwind::resume_unwinding(payload)
        }
    }
}

/// B ran elsewhere and its latch is set: A's panic first (B's leftovers dropped contained), else
/// B's panic (A's value dropped contained, as in `run_b_inline`), else both values.
fn combine<RA, RB>(result_a: Result<RA, Panic>, result_b: JobResult<RB>) -> (RA, RB) {
    match result_a {
        Ok(ra) => match result_b {
            JobResult::Panic(payload) => {
                unwind::drop_contained(ra);
                unwind::resume_unwinding(payload)
            }
            result_b => (ra, result_b.into_return_value()),
        },
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
    match registry.caller() {
        Caller::OwnWorker(worker) => join_in_worker(worker, a, b),
        // Not `in_worker`: from outside, the caller runs A and only offers B (`join_outside`),
        // so it runs both halves itself when no worker takes B, instead of always paying two
        // context switches.
        Caller::OtherPool(worker) => registry.in_worker_cross(worker, |w| join_in_worker(w, a, b)),
        Caller::Outside => join_outside(registry, a, b),
    }
}

/// `join` called from a thread outside any pool.
///
/// The caller runs A itself and offers B to the workers meanwhile: in one of the pool's offer
/// slots (`offers.rs`), or, when every slot is taken, in the injector wrapped in a ticket. After
/// A, the caller takes B back if no worker has claimed it (and runs it inline), else it waits
/// for the worker that did. Whoever claims B first runs it, so the stack job is never touched
/// after the caller took it back. The caller thus does its own work instead of paying two
/// context switches, and blocks only if a worker really took B.
#[cold]
#[inline(never)]
pub(crate) fn join_outside<A, B, RA, RB>(registry: &Registry, a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA + Send,
    B: FnOnce() -> RB + Send,
    RA: Send,
    RB: Send,
{
    let job_b = StackJob::new(b, LockLatch::new());
    // SAFETY: the JobRef is executed only by whoever wins the offer or the ticket; if that is a
    // worker, we wait for the latch below before leaving this frame.
    let job_b_ref = unsafe { job_b.as_job_ref() };
    // SAFETY: `job_b_ref` and `job_b` stay in this frame, unmoved and unchanged, until the offer is
    // withdrawn below or B's latch is set: nothing between here and `withdraw` can unwind past
    // this frame (A runs under `halt_unwinding`; the wake-up check is guarded by an abort).
    if let Some(offer) = unsafe { registry.offers.offer(&job_b_ref) } {
        {
            let abort = AbortIfPanic;
            registry.sleep.new_work(registry.counters.outside());
            mem::forget(abort);
        }
        let result_a = unwind::halt_unwinding(a);
        if registry.offers.withdraw(offer) {
            return run_b_inline(result_a, job_b.take_func());
        }
        job_b.latch.wait();
        return combine(result_a, job_b.into_result());
    }
    let ticket = Ticket::for_job(job_b_ref);
    // SAFETY: the JobRef owns one strong count of the ticket (`into_raw`), which its single
    // execution (`Ticket::execute`) takes back; the ticket itself borrows nothing.
    let ticket_ref = unsafe { JobRef::new(Arc::into_raw(Arc::clone(&ticket))) };
    {
        // Once queued, the ticket may hand a worker B's stack job: this frame must not unwind
        // until the claim below is settled.
        let abort = AbortIfPanic;
        registry.inject(ticket_ref);
        mem::forget(abort);
    }
    let result_a = unwind::halt_unwinding(a);
    // AcqRel pairs with a worker's claim swap in `Ticket::execute`: exactly one of the two wins.
    if !ticket.claimed.swap(true, Ordering::AcqRel) {
        Ticket::keep_spare(ticket);
        return run_b_inline(result_a, job_b.take_func());
    }
    // Kept only after the wait: nothing may stand between losing the claim and waiting for the
    // worker that runs B in this frame.
    job_b.latch.wait();
    Ticket::keep_spare(ticket);
    combine(result_a, job_b.into_result())
}

/// How many used tickets a thread keeps. A worker pops (and lets go of) an outside join's ticket
/// some hundreds of nanoseconds to a few microseconds after it was queued, which on a quiet
/// machine is after the same thread's next call: with one spare, 99% of calls still allocated.
const SPARE_TICKETS: usize = 8;

crate::sync::thread_local_const! {
    /// The tickets of this thread's last outside joins, oldest first: once the worker that popped
    /// one has dropped its reference (it pops each soon, claimed or not), the ticket is reused
    /// instead of allocating. A ticket a worker still holds is left to it.
    static SPARES: RefCell<VecDeque<Arc<Ticket>>> = RefCell::new(VecDeque::new());
}

impl Ticket {
    /// A fresh claim on `job`: this thread's oldest spare ticket if no one else holds it any
    /// more, else a new one.
    fn for_job(job: JobRef) -> Arc<Ticket> {
        // `try_with`: from a thread-local destructor at thread exit the slot may be gone; then
        // allocate, as without spares.
        let reusable = SPARES.try_with(|spares| {
            let mut spares = spares.try_borrow_mut().ok()?;
            let mut oldest = spares.pop_front()?;
            // `get_mut` succeeds only if ours is the last reference; it synchronises with the
            // worker's release of its reference (the `Arc`'s own Release/Acquire pair), so all of
            // that worker's accesses to the ticket happened before we reset it below.
            if Arc::get_mut(&mut oldest).is_some() {
                Some(oldest)
            } else {
                spares.push_front(oldest);
                None
            }
        });
        if let Some(mut spare) = reusable.ok().flatten() {
            let unshared =
                Arc::get_mut(&mut spare).expect("checked unshared above, on this thread");
            unshared.claimed = AtomicBool::new(false);
            unshared.job = job;
            return spare;
        }
        Arc::new(Ticket {
            claimed: AtomicBool::new(false),
            job,
        })
    }

    /// Keeps `ticket` among this thread's spares (letting go of the oldest beyond
    /// `SPARE_TICKETS`; if the slot is already destroyed, at thread exit, the ticket is simply
    /// dropped). Never panics.
    fn keep_spare(ticket: Arc<Ticket>) {
        let mut ticket = Some(ticket);
        let evicted = SPARES.try_with(|spares| {
            let mut spares = spares.try_borrow_mut().ok()?;
            spares.push_back(ticket.take()?);
            if spares.len() > SPARE_TICKETS {
                spares.pop_front()
            } else {
                None
            }
        });
        drop((evicted, ticket));
    }
}

impl Job for Ticket {
    unsafe fn execute(this: *const Self) {
        // SAFETY: `this` came from `Arc::into_raw` in `join_outside`, carrying one strong count
        // that this single execution (the JobRef contract) takes back.
        let ticket = unsafe { Arc::from_raw(this) };
        // AcqRel pairs with the caller's claim swap: exactly one of the two wins.
        if !ticket.claimed.swap(true, Ordering::AcqRel) {
            // SAFETY: we won the ticket, so the caller is blocked on B's latch and the stack job
            // stays live until B's execution sets it; it is executed exactly once, here.
            unsafe { ticket.job.execute() }
        }
    }
}

/// The claim on an outside `join`'s second half: whoever swaps `claimed` first (a worker that
/// pops the injected heap job, or the caller after running A) runs B.
struct Ticket {
    claimed: AtomicBool,
    job: JobRef,
}
