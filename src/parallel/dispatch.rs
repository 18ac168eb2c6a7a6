//! The engine behind `run` / `try_run`: a dispatcher on the caller's thread, batches on a pool.
//!
//! # Shape of a call
//! The calling thread is the only one that touches the input iterator (so it need not be `Send`).
//! It pulls tasks lazily, packs them into batches ([`Batcher`]) and pushes the batches onto this
//! call's ready queue. *Tokens*, small `spawn_unchecked` jobs on the pool, pop batches from that
//! queue and run them until it is empty; at most `runners` threads run this call's batches at
//! once (tokens, plus the caller when it helps). The caller helps while batches are short: once
//! the window is full it pops a batch and runs it itself instead of blocking, then refills. With
//! long tasks it only dispatches and waits, so the window is refilled the moment a batch ends.
//!
//! # The window
//! Tasks pulled but not yet finished never exceed `pre_dispatch × batch size` (with batches of one
//! task, as at the start of every `Auto` call: `pre_dispatch` tasks).
//!
//! # Results
//! With an input of exact known length (`size_hint`), results are written straight into the
//! output vector: each batch owns the disjoint slot range `[start, start + len)` (see
//! `Dest::Slots`). Batches past that capacity (a lying `size_hint`, or an unknown length) return
//! their own vector, appended in order at the end.
//!
//! # Soundness with borrowed tasks
//! Tasks, results and the output buffer may borrow the caller's stack, and tokens are queued with
//! `spawn_unchecked`. [`CallGuard`], owned by the calling frame, ends every call: `settle` on the
//! normal path, its `Drop` on unwinding (a panicking task is resumed only after it, a panicking
//! `next()` or progress callback unwinds through it). It closes the [`Tracker`], takes every batch
//! still queued, waits (helping the pool, via [`Signal`]) until the tracker is quiescent, and
//! only then moves every value of the call's types out of the shared state: the taken batches, the
//! reports (with their collected vectors), the `fail_fast` failure and the panic payload. Those
//! are dropped on the caller's thread, after the wait: on the normal path by `run_on_pool`, on the
//! unwinding path by the guard itself, together with the results written in place (the output
//! vector's length is still 0), each part under `halt_unwinding` so that a panicking `Drop` (user
//! code) skips neither the wait nor the other parts.
//!
//! A token touches tasks, results or the output only between a successful `Tracker::begin` and
//! its `finish` (which always runs: `run_batch` never unwinds), so after the wait no borrowed data
//! is reachable from any token, and no runner can put a value back into the shared state. A token
//! that runs later finds the tracker closed and only drops its `Arc`; the shared state it may free
//! then holds no values of the call's types. Nothing the API hands out can be leaked to skip the
//! guard: it is a local of `run_on_pool`, never returned.

use super::backend::Plan;
use super::batch::Batcher;
use super::cancel::Tracker;
use super::delayed::{Apply, Delayed};
use super::progress::Progress;
use crate::pool::signal::Signal;
use crate::pool::unwind::{self, Panic};
use crate::sync::{Arc, AtomicBool, AtomicU64, AtomicUsize, Mutex, Ordering};
use crate::ThreadPool;
use std::collections::VecDeque;
use std::time::Instant;

/// How a call stopped early.
pub(crate) enum Stop<R> {
    /// A task panicked (the first panic caught).
    Panic(Panic),
    /// `fail_fast` flagged this task's result (the failure with the smallest index).
    Failed { index: usize, value: R },
    /// The deadline passed before every task had finished.
    Timeout { completed: usize },
}

/// What the engine needs besides the tasks.
pub(crate) struct Options<'a, 'p, R> {
    pub(crate) plan: Plan,
    pub(crate) batcher: Batcher,
    pub(crate) pre_dispatch: usize,
    pub(crate) deadline: Option<Instant>,
    /// Results for which this returns `true` cancel the rest (`try_run`'s `Err`).
    pub(crate) fail_fast: Option<fn(&R) -> bool>,
    pub(crate) progress: &'a mut Progress<'p>,
}

/// Runs every task; results in input order.
pub(crate) fn run<I, F, A, R>(tasks: I, opts: Options<'_, '_, R>) -> Result<Vec<R>, Stop<R>>
where
    I: Iterator<Item = Delayed<F, A>>,
    F: Apply<A, Output = R> + Send,
    A: Send,
    R: Send,
{
    match opts.plan {
        Plan::Inline => run_inline(tasks, opts),
        Plan::Pool {
            ref pool,
            runners,
            caller_runs,
        } => {
            let pool = pool.clone();
            run_on_pool(tasks, &pool, runners, caller_runs, opts)
        }
    }
}

/// The sequential path: every task on this thread, in order (panics propagate as they are).
fn run_inline<I, F, A, R>(tasks: I, opts: Options<'_, '_, R>) -> Result<Vec<R>, Stop<R>>
where
    I: Iterator<Item = Delayed<F, A>>,
    F: Apply<A, Output = R>,
{
    let mut out = Vec::with_capacity(tasks.size_hint().0);
    for (index, task) in tasks.enumerate() {
        if opts.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Stop::Timeout { completed: index });
        }
        let value = task.call();
        if opts.fail_fast.is_some_and(|failed| failed(&value)) {
            opts.progress.update(index + 1);
            return Err(Stop::Failed { index, value });
        }
        out.push(value);
        opts.progress.update(index + 1);
    }
    opts.progress.finish(out.len());
    Ok(out)
}

/// A pointer into the output vector, sent to the runner that owns that slot range.
struct SlotPtr<R>(*mut R);
// SAFETY: a `SlotPtr` is only dereferenced by the single runner that owns the batch it belongs to
// (slot ranges of batches are disjoint), and `R: Send` lets that runner produce the value there.
unsafe impl<R: Send> Send for SlotPtr<R> {}

enum Dest<R> {
    /// Write result `k` of the batch to `ptr.add(k)`.
    Slots(SlotPtr<R>),
    /// Collect the results into a vector of the batch's own.
    Own,
}

struct Batch<T, R> {
    start: usize,
    tasks: Vec<T>,
    dest: Dest<R>,
}

/// A finished (or stopped) batch: `written` results starting at input index `start`.
struct Report<R> {
    start: usize,
    written: usize,
    own: Option<Vec<R>>,
}

struct Queue<T, R> {
    batches: VecDeque<Batch<T, R>>,
    /// Tokens queued or running (each counts as a potential runner).
    tokens: usize,
}

struct Shared<T, R> {
    tracker: Tracker,
    /// Woken after every batch (and on cancel); the caller is its waiter. In its own `Arc`: the
    /// deadline timer holds a `Weak` to it.
    signal: Arc<Signal>,
    queue: Mutex<Queue<T, R>>,
    reports: Mutex<Vec<Report<R>>>,
    /// Batches finished (Release after their report is in; the caller reads with Acquire).
    batches_done: AtomicUsize,
    /// Tasks that ran to completion (progress and the window).
    tasks_done: AtomicUsize,
    timing_tasks: AtomicU64,
    timing_ns: AtomicU64,
    panic: Mutex<Option<Panic>>,
    failure: Mutex<Option<(usize, R)>>,
    timed_out: AtomicBool,
    deadline: Option<Instant>,
    fail_fast: Option<fn(&R) -> bool>,
}

fn lock<T>(m: &Mutex<T>) -> impl std::ops::DerefMut<Target = T> + '_ {
    // Nothing panics while holding these locks; poisoning could only come from an allocation
    // failure, and the data stays consistent then.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<F, A, R> Shared<Delayed<F, A>, R>
where
    F: Apply<A, Output = R>,
{
    fn stop(&self) {
        self.tracker.close();
        self.signal.notify();
    }

    /// Runs one batch; the caller must be active in the tracker. Never unwinds.
    fn run_batch(&self, batch: Batch<Delayed<F, A>, R>) {
        let Batch {
            start,
            mut tasks,
            dest,
        } = batch;
        let started = Instant::now();
        crate::pool::worker::trace_current(crate::EventKind::BatchStart, tasks.len() as u32);
        let mut written = 0usize;
        let mut ran = 0usize;
        let mut own = match dest {
            Dest::Own => Some(Vec::with_capacity(tasks.len())),
            Dest::Slots(_) => None,
        };
        let outcome = unwind::halt_unwinding(|| {
            for task in tasks.drain(..) {
                if self.tracker.is_closed() {
                    break;
                }
                if self.deadline.is_some_and(|d| Instant::now() >= d) {
                    self.timed_out.store(true, Ordering::Relaxed);
                    self.stop();
                    break;
                }
                let value = task.call();
                ran += 1;
                if self.fail_fast.is_some_and(|failed| failed(&value)) {
                    let index = start + written;
                    let mut failure = lock(&self.failure);
                    if failure.as_ref().map_or(true, |(first, _)| index < *first) {
                        *failure = Some((index, value));
                    }
                    drop(failure);
                    self.stop();
                    break;
                }
                match (&dest, &mut own) {
                    (Dest::Slots(ptr), _) => {
                        // SAFETY: this batch owns slots `start .. start + tasks.len()` of the output
                        // buffer (disjoint from every other batch's, within its capacity, see
                        // `dispatch_batch`); `written < tasks.len()`; the buffer outlives every
                        // active runner (`CallGuard`). Each slot is written once, and only read
                        // after the tracker is quiescent.
                        unsafe { ptr.0.add(written).write(value) }
                    }
                    (Dest::Own, Some(v)) => v.push(value),
                    (Dest::Own, None) => unreachable!("an Own batch has its vector"),
                }
                written += 1;
            }
        });
        if let Err(payload) = outcome {
            let mut first = lock(&self.panic);
            let later = match *first {
                None => {
                    *first = Some(payload);
                    None
                }
                Some(_) => Some(payload),
            };
            drop(first);
            // A second panic is not resumed. Its payload is user data whose `Drop` may panic too:
            // `discard` catches that, so `finish` (after this) always runs.
            if let Some(payload) = later {
                discard(payload);
            }
            self.stop();
        }
        crate::pool::worker::trace_current(crate::EventKind::BatchEnd, ran as u32);
        let ns = started.elapsed().as_nanos() as u64;
        self.timing_tasks.fetch_add(ran as u64, Ordering::Relaxed);
        self.timing_ns.fetch_add(ns, Ordering::Relaxed);
        lock(&self.reports).push(Report {
            start,
            written,
            own,
        });
        self.tasks_done.fetch_add(ran, Ordering::Release);
        self.batches_done.fetch_add(1, Ordering::Release);
    }

    /// Pops and runs one batch if there is one. The caller must be active in the tracker.
    fn run_one(&self) -> bool {
        let batch = lock(&self.queue).batches.pop_front();
        match batch {
            Some(batch) => {
                self.run_batch(batch);
                true
            }
            None => false,
        }
    }
}

/// A token's job. Never unwinds (a `spawn_unchecked` job must not): `token_loop` does not by
/// construction (`run_batch` catches every panic of a task), and anything else that could (a bug)
/// is caught and its payload discarded.
fn token<F, A, R>(shared: Arc<Shared<Delayed<F, A>, R>>)
where
    F: Apply<A, Output = R>,
{
    if let Err(payload) = unwind::halt_unwinding(move || token_loop(shared)) {
        discard(payload);
    }
}

/// A token: runs batches of the call until the queue is empty or the call is closed.
fn token_loop<F, A, R>(shared: Arc<Shared<Delayed<F, A>, R>>)
where
    F: Apply<A, Output = R>,
{
    loop {
        let batch = {
            let mut queue = lock(&shared.queue);
            // Become active only with a batch in hand: an idle token (the caller or another token
            // took the work) must not make the caller wait for it. `begin` under the queue lock is
            // still ordered against the guard's `close` by the tracker's fences; the guard drains
            // the queue under this lock after closing, so we either pop a batch the guard will
            // then wait for, or find the tracker closed (or the queue empty).
            let batch = if queue.batches.is_empty() || !shared.tracker.begin() {
                None
            } else {
                queue.batches.pop_front()
            };
            if batch.is_none() {
                queue.tokens -= 1;
            }
            batch
        };
        let Some(batch) = batch else { return };
        shared.run_batch(batch);
        shared.tracker.finish();
        shared.signal.notify();
    }
}

/// See the module docs, "Soundness with borrowed tasks".
struct CallGuard<'s, T, R> {
    shared: &'s Shared<T, R>,
    /// The output buffer (a local of the calling frame declared before the guard, so it outlives
    /// it): on the unwinding path the results written there in place are dropped through it.
    base: *mut R,
    /// `settle` ran: everything was moved out, the drop has nothing left to do.
    settled: bool,
}

/// Every value of the call's (possibly borrowing) types that was left in the shared state.
struct Leftovers<T, R> {
    unstarted: VecDeque<Batch<T, R>>,
    reports: Vec<Report<R>>,
    failure: Option<(usize, R)>,
    panic: Option<Panic>,
}

impl<T, R> CallGuard<'_, T, R> {
    /// Closes the call, waits until no runner is active, and moves everything of the call's types
    /// out of the shared state (no runner can put anything back: none will ever be active again).
    /// Never unwinds, and drops no value of the call's types.
    fn settle(&mut self) -> Leftovers<T, R> {
        self.settled = true;
        let shared = self.shared;
        shared.tracker.close();
        // Taken out (so no token can start them) but dropped only by our caller, after the wait:
        // a task's `Drop` is user code and may panic, and nothing may unwind out of here before
        // the wait is over.
        let unstarted = std::mem::take(&mut lock(&shared.queue).batches);
        shared.signal.wait_while(|| !shared.tracker.is_quiescent());
        Leftovers {
            unstarted,
            reports: std::mem::take(&mut *lock(&shared.reports)),
            failure: lock(&shared.failure).take(),
            panic: lock(&shared.panic).take(),
        }
    }
}

impl<T, R> Drop for CallGuard<'_, T, R> {
    /// The unwinding path (the normal path calls `settle` itself): settle, then drop everything on
    /// this thread, each part on its own so that a panicking `Drop` skips nothing else; the first
    /// such panic is resumed at the end (discarded if the thread is already unwinding).
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let Leftovers {
            unstarted,
            reports,
            failure,
            panic,
        } = self.settle();
        let base = self.base;
        let mut first: Option<Panic> = None;
        let mut keep = |outcome: Result<(), Panic>| {
            if let Err(payload) = outcome {
                if first.is_none() {
                    first = Some(payload);
                } else {
                    discard(payload);
                }
            }
        };
        keep(unwind::halt_unwinding(move || drop(unstarted)));
        // The output vector's length is still 0: results written in place would leak otherwise.
        keep(unwind::halt_unwinding(|| drop_written(base, &reports)));
        keep(unwind::halt_unwinding(move || drop(reports)));
        keep(unwind::halt_unwinding(move || drop(failure)));
        keep(unwind::halt_unwinding(move || drop(panic)));
        if let Some(payload) = first {
            if std::thread::panicking() {
                discard(payload);
            } else {
                unwind::resume_unwinding(payload);
            }
        }
    }
}

/// Drops a panic payload that will not be resumed, without unwinding: a payload whose own `Drop`
/// panics is leaked, together with that second payload.
pub(super) fn discard(payload: Panic) {
    if let Err(again) = unwind::halt_unwinding(move || drop(payload)) {
        std::mem::forget(again);
    }
}

/// Results written in place by batches that stopped early: drop them (the output vector's length
/// stays 0, so it would otherwise leak them).
fn drop_written<R>(base: *mut R, reports: &[Report<R>]) {
    for report in reports.iter().filter(|r| r.own.is_none()) {
        // SAFETY: slots `start .. start + written` were initialised by the report's batch, which
        // has finished (the tracker is quiescent), and nothing else owns or reads them.
        unsafe {
            std::ptr::slice_from_raw_parts_mut(base.add(report.start), report.written)
                .drop_in_place();
        }
    }
}

/// Above this expected batch duration the caller stops running batches itself (it would delay
/// refilling the window by that long) and only dispatches.
const CALLER_HELPS_BELOW_NS: f64 = 4.0 * super::batch::TARGET_BATCH_NS;

fn run_on_pool<I, F, A, R>(
    tasks: I,
    pool: &ThreadPool,
    runners: usize,
    caller_runs: bool,
    mut opts: Options<'_, '_, R>,
) -> Result<Vec<R>, Stop<R>>
where
    I: Iterator<Item = Delayed<F, A>>,
    F: Apply<A, Output = R> + Send,
    A: Send,
    R: Send,
{
    let mut tasks = tasks;
    let exact_len = match tasks.size_hint() {
        (low, Some(high)) if low == high => Some(low),
        _ => None,
    };
    let mut out: Vec<R> = Vec::with_capacity(exact_len.unwrap_or(0));
    let capacity = out.capacity();
    let base = out.as_mut_ptr();
    let shared = Arc::new(Shared {
        tracker: Tracker::new(),
        signal: Arc::new(Signal::for_current_thread()),
        queue: Mutex::new(Queue {
            batches: VecDeque::new(),
            tokens: 0,
        }),
        reports: Mutex::new(Vec::new()),
        batches_done: AtomicUsize::new(0),
        tasks_done: AtomicUsize::new(0),
        timing_tasks: AtomicU64::new(0),
        timing_ns: AtomicU64::new(0),
        panic: Mutex::new(None),
        failure: Mutex::new(None),
        timed_out: AtomicBool::new(false),
        deadline: opts.deadline,
        fail_fast: opts.fail_fast,
    });
    let mut guard = CallGuard {
        shared: &shared,
        base,
        settled: false,
    };

    let mut next_index = 0usize;
    let mut dispatched = 0usize;
    let mut exhausted = false;
    loop {
        // Snapshot first: a batch finishing after it makes the wait below return at once; one
        // finishing before it is already in `tasks_done` (incremented before `batches_done`),
        // so the fill below accounts for it.
        let seen = shared.batches_done.load(Ordering::Acquire);
        let tasks_done = shared.tasks_done.load(Ordering::Acquire);
        opts.progress.update(tasks_done);
        opts.batcher.observe(
            shared.timing_tasks.load(Ordering::Relaxed),
            shared.timing_ns.load(Ordering::Relaxed),
        );
        if shared.deadline.is_some_and(|d| Instant::now() >= d)
            && !(exhausted && tasks_done == next_index)
        {
            shared.timed_out.store(true, Ordering::Relaxed);
            shared.tracker.close();
        }
        if shared.tracker.is_closed() {
            break;
        }
        let helps = caller_runs
            && opts
                .batcher
                .expected_batch_ns()
                .map_or(true, |ns| ns < CALLER_HELPS_BELOW_NS);
        let max_tokens = if helps { runners - 1 } else { runners };

        // Fill the window.
        let mut pushed = Vec::new();
        while !exhausted {
            let in_flight = next_index - shared.tasks_done.load(Ordering::Acquire);
            let size = opts
                .batcher
                .next_size(exact_len.map(|n| n.saturating_sub(next_index)), runners);
            let window = opts.pre_dispatch.saturating_mul(size).max(1);
            if in_flight >= window {
                break;
            }
            let take = size.min(window - in_flight);
            let mut batch = Vec::with_capacity(take);
            batch.extend(tasks.by_ref().take(take));
            if batch.len() < take {
                exhausted = true;
                if batch.is_empty() {
                    break;
                }
            }
            let len = batch.len();
            let dest = if next_index + len <= capacity {
                // SAFETY: `next_index + len <= capacity`, so the range is inside the allocation.
                Dest::Slots(SlotPtr(unsafe { base.add(next_index) }))
            } else {
                Dest::Own
            };
            pushed.push(Batch {
                start: next_index,
                tasks: batch,
                dest,
            });
            next_index += len;
            dispatched += 1;
        }
        let spawn = {
            let mut queue = lock(&shared.queue);
            queue.batches.extend(pushed);
            let wanted = queue
                .batches
                .len()
                .min(max_tokens)
                .saturating_sub(queue.tokens);
            queue.tokens += wanted;
            wanted
        };
        for _ in 0..spawn {
            let for_token = Arc::clone(&shared);
            // SAFETY: the token touches tasks, results and the output buffer (all of which may
            // borrow this frame) only while active in `shared.tracker`, and `guard` (dropped
            // before any of them, on return and on unwinding) waits until the tracker is closed
            // and quiescent. `token` never unwinds (see there).
            unsafe { pool.spawn_unchecked(move || token(for_token)) };
        }

        if exhausted && shared.batches_done.load(Ordering::Acquire) == dispatched {
            break;
        }
        // Help, or wait for a batch to finish.
        let may_help = helps && lock(&shared.queue).tokens < runners;
        if may_help && shared.tracker.begin() {
            let ran = shared.run_one();
            shared.tracker.finish();
            if ran {
                continue;
            }
        }
        // Returns at the deadline too (on a pool worker: at the first check after it, see
        // `Signal::wait_while_until`), so a busy pool cannot delay the timeout until a batch ends.
        Signal::wait_while_until(&shared.signal, shared.deadline, || {
            shared.batches_done.load(Ordering::Acquire) == seen && !shared.tracker.is_closed()
        });
    }
    let Leftovers {
        unstarted,
        reports,
        failure,
        panic,
    } = guard.settle();
    drop(guard);
    // From here on the shared state holds nothing of the call's types (queued tokens only drop
    // their `Arc` later), and everything below runs on this thread.
    drop(unstarted);

    let completed = shared.tasks_done.load(Ordering::Acquire);
    // A deadline that passed while the last tasks ran skipped nothing: that call succeeded (as
    // on the sequential path; see docs/joblib.md, "Timeouts"). Nothing was skipped when every task
    // pulled completed and the input has no more (pulling one more item to find out, if needed).
    let timed_out = shared.timed_out.load(Ordering::Relaxed)
        && !(panic.is_none()
            && failure.is_none()
            && completed == next_index
            && (exhausted || tasks.next().is_none()));
    if panic.is_some() || failure.is_some() || timed_out {
        drop_written(base, &reports);
        drop(reports);
        if let Some(payload) = panic {
            return Err(Stop::Panic(payload));
        }
        if let Some((index, value)) = failure {
            return Err(Stop::Failed { index, value });
        }
        return Err(Stop::Timeout { completed });
    }
    // Every batch finished in full: slots `0 .. in_place` are initialised, the rest are in `own`.
    let in_place = in_place_prefix(&reports, next_index);
    // SAFETY: every batch with `Dest::Slots` covered a range below `capacity`, batches were cut in
    // input order, and all of them finished writing: every task pulled ran (either the loop ended
    // with `batches_done == dispatched`, or `completed == next_index` above), and the tracker is
    // quiescent (Acquire), so exactly the slots `0 .. in_place` are initialised.
    unsafe { out.set_len(in_place) };
    let mut own: Vec<Report<R>> = reports.into_iter().filter(|r| r.own.is_some()).collect();
    own.sort_unstable_by_key(|r| r.start);
    for report in own {
        out.extend(report.own.into_iter().flatten());
    }
    opts.progress.finish(out.len());
    Ok(out)
}

/// Where the in-place batches stop: the start of the first batch that collected its own results
/// (the first that did not fit below the capacity; all later ones did not either), else the end.
fn in_place_prefix<R>(reports: &[Report<R>], fallback: usize) -> usize {
    reports
        .iter()
        .filter(|r| r.own.is_some())
        .map(|r| r.start)
        .min()
        .unwrap_or(fallback)
}
