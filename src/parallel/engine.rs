//! The one engine behind `run`, `try_run`, `run_iter` and `run_unordered`: a driver on the calling
//! thread, batches on a pool.
//!
//! # Shape of a call
//! The driver ([`Engine`], owned by the calling frame or by the stream iterator) is the only one that
//! touches the input iterator (so it need not be `Send`). It pulls tasks in bulk into batch
//! buffers ([`Batcher`] sizes them), pushes the batches onto the call's ready queue, and makes sure
//! enough *tokens* (small jobs on the pool) exist to run them: a token pops batches until the queue
//! is empty. At most `runners` threads run this call's batches at once (tokens, plus the driver
//! when it helps). Every finished batch posts a [`Chunk`] (where its results are, whether a task
//! panicked or failed) to the shared `done` list and notifies the driver's [`Signal`].
//!
//! What differs between the entry points is only where results go and how chunks are consumed:
//! `run` / `try_run` give every batch a disjoint slot range of the output vector ([`Dest::Slots`],
//! written in place) and assemble the vector at the end (`dispatch.rs`); the streams let each batch
//! collect its own vector ([`Dest::Own`]) and hand chunks out in input or completion order
//! (`stream.rs`).
//!
//! # The window, and the one help-or-wait rule
//! Tasks pulled but not yet *retired* never exceed `pre_dispatch × batch size` (with batches of
//! one task, as at the start of every `Auto` call: `pre_dispatch` tasks). `run` retires a task when
//! it has run; a stream when the consumer has read its result (backpressure). When the driver has
//! nothing to pull, it helps (runs a queued batch itself) if it is one of the runners and batches
//! are short, and otherwise waits on its signal until a chunk arrives, the call is closed, or a
//! limit ([`Limits`]) passes. On a pool worker that wait keeps running the pool's work.
//!
//! # Limits
//! `timeout` bounds each wait for the next result, `deadline` the whole call. Both are
//! cooperative: batches check the deadline before each task, the driver checks both after each
//! wait; running tasks are never interrupted. A call in which no task was skipped succeeds even if
//! it ran past a limit.
//!
//! # Soundness with borrowed tasks
//! Tokens are queued with `spawn_unchecked`, so tasks, results and the output slots may borrow the
//! caller's stack. A token touches them only between a successful [`Tracker::begin`] and its
//! `finish` (`run_batch` never unwinds). [`Engine::new`] is therefore `unsafe`: its caller must
//! [`settle`](Engine::settle) the call (close the tracker, wait until it is quiescent) before any
//! borrowed data dies, on every path including unwinding — or use only `'static` types. After
//! `settle` no token can reach the call's values again: a token that runs later finds the tracker
//! closed and only drops its `Arc`, and the shared state it may then free holds none of the call's
//! values (settle moved them all out).

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
use std::time::{Duration, Instant};

/// A unit of work the engine runs (a [`Delayed`]).
pub(crate) trait Task {
    /// What the task returns.
    type Output;
    /// Runs the task.
    fn run(self) -> Self::Output;
}

impl<F: Apply<A>, A> Task for Delayed<F, A> {
    type Output = F::Output;
    #[inline]
    fn run(self) -> F::Output {
        self.call()
    }
}

/// A call's time limits (see the module docs, "Limits").
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Limits {
    /// The longest wait for the next result.
    pub(crate) timeout: Option<Duration>,
    /// The whole call's budget, and when it ends.
    pub(crate) budget: Option<(Duration, Instant)>,
}

impl Limits {
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.budget.map(|(_, at)| at)
    }
}

/// Everything a call needs from its `Parallel`, resolved once per call.
pub(crate) struct Setup<'p> {
    pub(crate) plan: Plan,
    pub(crate) batcher: Batcher,
    pub(crate) pre_dispatch: usize,
    pub(crate) limits: Limits,
    pub(crate) progress: Progress<'p>,
}

/// How a call stopped early.
pub(crate) enum Stop<R> {
    /// A task panicked (the first panic caught).
    Panic(Panic),
    /// `fail_fast` flagged this task's result (the failure with the smallest index).
    Failed { index: usize, value: R },
    /// A limit passed before every task had run; `limit` is the timeout or the budget that did.
    Timeout { completed: usize, limit: Duration },
}

/// A pointer into the output vector, sent to the runner that owns that slot range.
pub(crate) struct SlotPtr<R>(pub(crate) *mut R);
// SAFETY: a `SlotPtr` is only dereferenced by the single runner that owns the batch it belongs to
// (slot ranges of batches are disjoint), and `R: Send` lets that runner produce the value there.
unsafe impl<R: Send> Send for SlotPtr<R> {}

/// Where a batch puts its results.
pub(crate) enum Dest<R> {
    /// Write result `k` of the batch to `ptr.add(k)`.
    Slots(SlotPtr<R>),
    /// Collect the results into a vector of the batch's own.
    Own,
}

pub(crate) struct Batch<T: Task> {
    start: usize,
    tasks: Vec<T>,
    dest: Dest<T::Output>,
}

/// A finished (or stopped) batch: `written` results from input index `start` on, in place or in
/// `own`; the task after them panicked (`panic`) or failed fast (`failure`), or was skipped.
pub(crate) struct Chunk<R> {
    pub(crate) start: usize,
    pub(crate) written: usize,
    pub(crate) own: Option<Vec<R>>,
    pub(crate) panic: Option<Panic>,
    pub(crate) failure: Option<R>,
}

struct Queue<T: Task> {
    batches: VecDeque<Batch<T>>,
    /// Tokens queued or running (each counts as a potential runner).
    tokens: usize,
}

/// The state a call's driver and its tokens share.
pub(crate) struct Shared<T: Task> {
    pub(crate) tracker: Tracker,
    queue: Mutex<Queue<T>>,
    done: Mutex<Vec<Chunk<T::Output>>>,
    /// Emptied batch buffers (no values in them), reused by the driver.
    spare: Mutex<Vec<Vec<T>>>,
    /// The driver's wake-up, notified after every chunk posted and every batch finished. Set by the
    /// driver before it first waits, replaced if it moves to another thread (a stream).
    waiter: Mutex<Option<Arc<Signal>>>,
    /// Tasks that ran to completion (progress, and `run`'s window).
    pub(crate) tasks_done: AtomicUsize,
    timing_tasks: AtomicU64,
    timing_ns: AtomicU64,
    deadline: Option<Instant>,
    /// A batch found the deadline passed and closed the call.
    pub(crate) deadline_hit: AtomicBool,
    /// Results for which this returns `true` close the call (`try_run`'s `Err`).
    fail_fast: Option<fn(&T::Output) -> bool>,
    /// A panic closes the call (`run`), or only ends the stream at its position (streams).
    close_on_panic: bool,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> impl std::ops::DerefMut<Target = T> + '_ {
    // No user code runs while these locks are held; poisoning could only come from an allocation
    // failure, and the data stays consistent then.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Drops a panic payload that will not be resumed, without unwinding: a payload whose own `Drop`
/// panics is leaked, together with that second payload.
pub(crate) fn discard(payload: Panic) {
    if let Err(again) = unwind::halt_unwinding(move || drop(payload)) {
        std::mem::forget(again);
    }
}

/// Drops `value`, discarding a panic from its `Drop` (user code).
pub(crate) fn quietly<V>(value: V) {
    if let Err(payload) = unwind::halt_unwinding(move || drop(value)) {
        discard(payload);
    }
}

impl<T: Task> Shared<T> {
    fn notify(&self) {
        let waiter = lock(&self.waiter).clone();
        if let Some(signal) = waiter {
            signal.notify();
        }
    }

    /// Runs one batch and posts its chunk. The caller must be active in the tracker. Never
    /// unwinds: a task's panic is caught and posted.
    fn run_batch(&self, batch: Batch<T>) {
        let Batch {
            start,
            mut tasks,
            dest,
        } = batch;
        let started = Instant::now();
        crate::pool::worker::trace_current(crate::EventKind::BatchStart, tasks.len() as u32);
        let mut written = 0usize;
        let mut failure = None;
        let mut own = match dest {
            Dest::Own => Some(Vec::with_capacity(tasks.len())),
            Dest::Slots(_) => None,
        };
        // Results that need no drop, in place, with nothing to check per task: runs of
        // `CHECK_EVERY` tasks in a plain loop (a panic mid-run leaves nothing that must be
        // dropped, and fails the call anyway), the cancel flag checked between runs.
        let plain = !std::mem::needs_drop::<T::Output>()
            && self.fail_fast.is_none()
            && self.deadline.is_none();
        // Outside the closure: if a task panics, the tasks not yet run are not dropped while
        // unwinding (a panicking `Drop` there would abort), but below, one by one.
        let mut left = tasks.drain(..);
        let outcome = unwind::halt_unwinding(|| match &dest {
            Dest::Slots(ptr) if plain => {
                while !self.tracker.is_closed() {
                    let run = left.len().min(CHECK_EVERY);
                    if run == 0 {
                        break;
                    }
                    // SAFETY: this batch owns slots `start .. start + tasks.len()` of the output
                    // buffer (disjoint from other batches', inside its capacity:
                    // `Engine::refill`); `written` tasks were taken so far and `run` more are
                    // left, so `written .. written + run` is inside the batch's range. The buffer
                    // outlives every active runner (`Engine::new`'s contract); each slot is
                    // written once. Viewed as `MaybeUninit`, the slots may hold anything.
                    let slots = unsafe {
                        std::slice::from_raw_parts_mut(
                            ptr.0
                                .add(written)
                                .cast::<std::mem::MaybeUninit<T::Output>>(),
                            run,
                        )
                    };
                    run_plain(&mut left, slots);
                    written += run;
                }
            }
            _ => {
                for task in left.by_ref() {
                    if self.tracker.is_closed() {
                        break;
                    }
                    if self.deadline.is_some_and(|d| Instant::now() >= d) {
                        self.deadline_hit.store(true, Ordering::Relaxed);
                        self.tracker.close();
                        break;
                    }
                    let value = task.run();
                    if self.fail_fast.is_some_and(|failed| failed(&value)) {
                        failure = Some(value);
                        self.tracker.close();
                        break;
                    }
                    match (&dest, &mut own) {
                        (Dest::Slots(ptr), _) => {
                            // SAFETY: this batch owns slots `start .. start + tasks.len()` of the
                            // output buffer (disjoint from every other batch's, inside its
                            // capacity: `Engine::refill`), and `written < tasks.len()`; the buffer
                            // outlives every active runner (`Engine::new`'s contract). Each slot
                            // is written once, and read only after the tracker is quiescent.
                            unsafe { ptr.0.add(written).write(value) }
                        }
                        (Dest::Own, Some(v)) => v.push(value),
                        (Dest::Own, None) => unreachable!("an Own batch has its vector"),
                    }
                    written += 1;
                }
            }
        });
        // The tasks not run (skipped after a close, or after a panic): a task's `Drop` is user
        // code, so each is dropped on its own, contained. The emptied buffer goes back to the
        // driver for a later batch (fresh multi-megabyte buffers cost a page fault per page).
        left.for_each(quietly);
        self.recycle(tasks);
        let panic = outcome.err();
        if panic.is_some() && self.close_on_panic {
            self.tracker.close();
        }
        crate::pool::worker::trace_current(crate::EventKind::BatchEnd, written as u32);
        self.timing_tasks
            .fetch_add(written as u64, Ordering::Relaxed);
        self.timing_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.tasks_done.fetch_add(written, Ordering::Release);
        lock(&self.done).push(Chunk {
            start,
            written,
            own,
            panic,
            failure,
        });
        // After the push: a driver that installed its signal after our read of `waiter` finds the
        // chunk when it checks `done` (both under locks, see `Engine::wait`).
        self.notify();
    }

    /// Keeps an emptied batch buffer for the driver's next batch (a few at most).
    fn recycle(&self, buffer: Vec<T>) {
        debug_assert!(buffer.is_empty());
        let mut spare = lock(&self.spare);
        if spare.len() < MAX_SPARE_BUFFERS {
            spare.push(buffer);
        }
    }

    fn pop(&self) -> Option<Batch<T>> {
        lock(&self.queue).batches.pop_front()
    }
}

impl<T: Task> Drop for Shared<T> {
    /// Only a stream's shared state can still hold values here (a settled call holds none): the
    /// last `Arc` may go with a token, on a pool worker, which must never unwind, so each value is
    /// dropped on its own and a panic from its `Drop` is discarded.
    fn drop(&mut self) {
        let batches = std::mem::take(&mut lock(&self.queue).batches);
        batches
            .into_iter()
            .for_each(|b| b.tasks.into_iter().for_each(quietly));
        for chunk in std::mem::take(&mut *lock(&self.done)) {
            drop_chunk(chunk);
        }
    }
}

/// Drops a chunk's own results, payload and failure one by one, containing panics. (In-place
/// results are not the chunk's: see `dispatch::drop_written`.)
pub(crate) fn drop_chunk<R>(chunk: Chunk<R>) {
    if let Some(own) = chunk.own {
        own.into_iter().for_each(quietly);
    }
    if let Some(payload) = chunk.panic {
        discard(payload);
    }
    quietly(chunk.failure);
}

/// A token's job. Never unwinds (a `spawn_unchecked` job must not): `run_batch` catches every
/// panic of a task, and anything else (a bug) is caught here and its payload discarded.
fn token<T: Task>(shared: Arc<Shared<T>>) {
    if let Err(payload) = unwind::halt_unwinding(move || token_loop(shared)) {
        discard(payload);
    }
}

/// A token: runs batches of the call until the queue is empty or the call is closed.
fn token_loop<T: Task>(shared: Arc<Shared<T>>) {
    loop {
        let batch = {
            let mut queue = lock(&shared.queue);
            // Become active only with a batch in hand: an idle token (the driver or another token
            // took the work) must not make a settling driver wait for it. `begin` under the queue
            // lock is still ordered against `close` by the tracker's fences; `settle` drains the
            // queue under this lock after closing, so we either pop a batch it will then wait
            // for, or find the tracker closed (or the queue empty).
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
        // A settling driver waits for `finish`: wake it (`run_batch`'s notify came before).
        shared.notify();
    }
}

/// A batch buffer holds at most this many bytes of tasks, so that the runner reads the tasks
/// while they are still in a cache near the driver that wrote them (a 200 µs batch of 1 ns tasks
/// would be megabytes).
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Emptied batch buffers kept for reuse, per call.
const MAX_SPARE_BUFFERS: usize = 8;

/// Before the first batch has been timed, at most this many batches per runner are in flight.
const PROBE_BATCHES: usize = 2;

/// In the plain loop of `run_batch`, the cancel flag is checked once per this many tasks.
const CHECK_EVERY: usize = 64;

/// `slots[k] = next task's result`, for every slot. A function of its own so that `slots` is a
/// `&mut` argument: the compiler may assume the writes change nothing else it reads (the tasks),
/// and can keep the loop tight or vectorise it. The caller gives no more slots than tasks left.
#[inline]
fn run_plain<T: Task>(
    tasks: &mut std::vec::Drain<'_, T>,
    slots: &mut [std::mem::MaybeUninit<T::Output>],
) {
    for (slot, task) in slots.iter_mut().zip(tasks) {
        slot.write(task.run());
    }
}

/// What a wait ended with.
pub(crate) enum Waited {
    /// Something may have changed: a chunk arrived, the call was closed, or a spurious wake.
    Changed,
    /// A limit passed with no new chunk: the timeout or budget that did.
    Expired(Duration),
}

/// The pool side of a call's plan.
struct OnPool {
    pool: ThreadPool,
    runners: usize,
    /// The driver may run batches itself (it is one of the runners).
    caller_runs: bool,
}

/// Above this expected batch duration the driver stops running batches itself (it would delay
/// refilling the window by that long) and only dispatches.
const CALLER_HELPS_BELOW_NS: f64 = 4.0 * super::batch::TARGET_BATCH_NS;

/// The driver of one call on a pool (see the module docs).
pub(crate) struct Engine<'p, I, T: Task> {
    pub(crate) shared: Arc<Shared<T>>,
    tasks: I,
    /// The input has no more tasks.
    pub(crate) exhausted: bool,
    on_pool: OnPool,
    batcher: Batcher,
    pre_dispatch: usize,
    pub(crate) limits: Limits,
    pub(crate) progress: Progress<'p>,
    pub(crate) exact_len: Option<usize>,
    /// Tasks pulled from the input so far (the next task's index).
    pub(crate) pulled: usize,
    /// Batches pushed so far (each posts exactly one chunk, unless a settle drops it unstarted).
    pub(crate) batches: usize,
    /// `run`'s output buffer and its capacity: batches inside it write in place.
    slots: Option<(*mut T::Output, usize)>,
    /// The driver's wake-up and the thread it belongs to (see `Shared::waiter`).
    signal: Option<(std::thread::ThreadId, Arc<Signal>)>,
}

impl<'p, I, T> Engine<'p, I, T>
where
    I: Iterator<Item = T>,
    T: Task + Send,
    T::Output: Send,
{
    /// A driver for `tasks` on `pool`. Dispatches nothing yet.
    ///
    /// # Safety
    /// Unless `T` and `T::Output` are `'static` (and `slots` is `None`), the caller must call
    /// [`settle`](Self::settle) before anything the tasks or results borrow, and the `slots`
    /// buffer, goes away, on every path including unwinding, and must not free the buffer before.
    /// `slots` must point to an allocation with room for `capacity` values of `T::Output`.
    pub(crate) unsafe fn new(
        tasks: I,
        setup: Setup<'p>,
        pool: (ThreadPool, usize, bool),
        fail_fast: Option<fn(&T::Output) -> bool>,
        slots: Option<(*mut T::Output, usize)>,
    ) -> Self {
        let exact_len = super::exact_len(&tasks);
        let close_on_panic = slots.is_some();
        let (pool, runners, caller_runs) = pool;
        Engine {
            shared: Arc::new(Shared {
                tracker: Tracker::new(),
                queue: Mutex::new(Queue {
                    batches: VecDeque::new(),
                    tokens: 0,
                }),
                done: Mutex::new(Vec::new()),
                spare: Mutex::new(Vec::new()),
                waiter: Mutex::new(None),
                tasks_done: AtomicUsize::new(0),
                timing_tasks: AtomicU64::new(0),
                timing_ns: AtomicU64::new(0),
                deadline: setup.limits.deadline(),
                deadline_hit: AtomicBool::new(false),
                fail_fast,
                close_on_panic,
            }),
            tasks,
            exhausted: false,
            on_pool: OnPool {
                pool,
                runners: runners.max(1),
                caller_runs,
            },
            batcher: setup.batcher,
            pre_dispatch: setup.pre_dispatch,
            limits: setup.limits,
            progress: setup.progress,
            exact_len,
            pulled: 0,
            batches: 0,
            slots,
            signal: None,
        }
    }

    /// Does the driver run batches itself now? (It is a runner, and batches are short.)
    fn helps(&self) -> bool {
        self.on_pool.caller_runs
            && self
                .batcher
                .expected_batch_ns()
                .map_or(true, |ns| ns < CALLER_HELPS_BELOW_NS)
    }

    /// Pulls tasks into batches while the window has room, queues them and wakes tokens for them.
    /// `read`: results the consumer has read (a stream's window); `None`: the window counts tasks
    /// that have not run yet (`run`'s).
    pub(crate) fn refill(&mut self, read: Option<usize>) {
        if self.shared.tracker.is_closed() {
            return;
        }
        let runners = self.on_pool.runners;
        self.batcher.observe(
            self.shared.timing_tasks.load(Ordering::Relaxed),
            self.shared.timing_ns.load(Ordering::Relaxed),
        );
        let mut pushed: Vec<Batch<T>> = Vec::new();
        while !self.exhausted {
            let retired = read.unwrap_or_else(|| self.shared.tasks_done.load(Ordering::Acquire));
            let in_flight = self.pulled - retired.min(self.pulled);
            let natural = self.batcher.next_size(
                self.exact_len.map(|n| n.saturating_sub(self.pulled)),
                runners,
            );
            let size = natural
                .min(MAX_BATCH_BYTES / std::mem::size_of::<T>().max(1))
                .max(1);
            // The window counts batches of the size the batcher asked for (a duration), even when
            // buffers are cut smaller: cutting must not shrink the work queued ahead, or runners
            // run dry (and sleep) while the driver refills.
            let mut window = self.pre_dispatch.saturating_mul(natural).max(1);
            if self.batcher.expected_batch_ns().is_none() {
                // Nothing measured yet (batches of one task, as joblib starts): probe with a few
                // batches per runner before a large window fills with tiny batches.
                window = window.min(PROBE_BATCHES * runners * size);
            }
            if in_flight >= window {
                break;
            }
            let take = size.min(window - in_flight);
            // Bulk: one buffer per batch (a recycled one when there is one), filled by `extend`
            // (no per-task lock, atomic or allocation).
            let mut tasks = lock(&self.shared.spare).pop().unwrap_or_default();
            tasks.reserve(take);
            tasks.extend(self.tasks.by_ref().take(take));
            if tasks.len() < take {
                self.exhausted = true;
                if tasks.is_empty() {
                    break;
                }
            }
            let len = tasks.len();
            let dest = match self.slots {
                Some((base, capacity)) if self.pulled + len <= capacity => {
                    // SAFETY: `pulled + len <= capacity`, so the range is inside the allocation
                    // (`new`'s contract), and no earlier batch was given any slot of it.
                    Dest::Slots(SlotPtr(unsafe { base.add(self.pulled) }))
                }
                _ => Dest::Own,
            };
            pushed.push(Batch {
                start: self.pulled,
                tasks,
                dest,
            });
            self.pulled += len;
            self.batches += 1;
        }
        if pushed.is_empty() {
            return;
        }
        let max_tokens = if self.helps() { runners - 1 } else { runners };
        let spawn = {
            let mut queue = lock(&self.shared.queue);
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
            let shared = Arc::clone(&self.shared);
            // SAFETY: the token touches tasks, results and slots (which may borrow the caller)
            // only while active in `shared.tracker`, and `new`'s caller settles the call (closes
            // the tracker and waits until it is quiescent) before any of them goes away, or they
            // are all `'static`. `token` never unwinds.
            unsafe { self.on_pool.pool.spawn_unchecked(move || token(shared)) };
        }
    }

    /// Runs one queued batch on the driver's thread if the driver is a runner and batches are
    /// short. `true` if it ran one.
    pub(crate) fn help(&mut self) -> bool {
        if !self.helps() || lock(&self.shared.queue).tokens >= self.on_pool.runners {
            return false;
        }
        if !self.shared.tracker.begin() {
            return false;
        }
        let batch = self.shared.pop();
        let ran = batch.is_some();
        if let Some(batch) = batch {
            self.shared.run_batch(batch);
        }
        self.shared.tracker.finish();
        ran
    }

    /// Moves the posted chunks out (into `into`); `true` if any arrived.
    pub(crate) fn take_done(&mut self, into: &mut Vec<Chunk<T::Output>>) -> bool {
        let mut done = lock(&self.shared.done);
        if done.is_empty() {
            return false;
        }
        into.append(&mut done);
        true
    }

    /// Reports progress to the callback, verbose lines and bar (user code: called with no lock
    /// held).
    pub(crate) fn report(&mut self, done: usize) {
        self.progress.update(done);
    }

    /// Waits until a chunk arrives, the call is closed, or a limit passes: the timeout counted
    /// from `since` (when the driver began waiting for the next result), or the budget.
    pub(crate) fn wait(&mut self, since: Instant) -> Waited {
        let by_timeout = self.limits.timeout.map(|t| (t, since + t));
        let by_budget = self.limits.budget;
        let until = match (by_timeout, by_budget) {
            (Some(a), Some(b)) => Some(if a.1 <= b.1 { a } else { b }),
            (a, b) => a.or(b),
        };
        let signal = self.signal();
        let shared = &self.shared;
        Signal::wait_while_until(&signal, until.map(|(_, at)| at), || {
            lock(&shared.done).is_empty() && !shared.tracker.is_closed()
        });
        match until {
            Some((limit, at))
                if Instant::now() >= at
                    && lock(&shared.done).is_empty()
                    && !shared.tracker.is_closed() =>
            {
                Waited::Expired(limit)
            }
            _ => Waited::Changed,
        }
    }

    /// The deadline has passed (checked by the driver between waits).
    pub(crate) fn past_deadline(&self) -> bool {
        self.limits.deadline().is_some_and(|d| Instant::now() >= d)
    }

    /// Pulls one more task to see whether the input is exhausted (dropping it if not).
    pub(crate) fn input_has_more(&mut self) -> bool {
        if self.exhausted {
            return false;
        }
        match self.tasks.next() {
            Some(task) => {
                drop(task);
                true
            }
            None => {
                self.exhausted = true;
                false
            }
        }
    }
}

impl<I, T: Task> Engine<'_, I, T> {
    /// The driver's signal for the current thread, installed in the shared state.
    fn signal(&mut self) -> Arc<Signal> {
        let me = std::thread::current().id();
        match &self.signal {
            Some((thread, signal)) if *thread == me => Arc::clone(signal),
            _ => {
                let signal = Arc::new(Signal::for_current_thread());
                *lock(&self.shared.waiter) = Some(Arc::clone(&signal));
                self.signal = Some((me, Arc::clone(&signal)));
                signal
            }
        }
    }

    /// Stops dispatching: no batch starts after this. Returns the batches not yet started (their
    /// tasks may borrow the caller: the caller drops them when that is allowed).
    pub(crate) fn close(&self) -> VecDeque<Batch<T>> {
        self.shared.tracker.close();
        std::mem::take(&mut lock(&self.shared.queue).batches)
    }

    /// Closes the call, waits until no runner is active, and moves every value of the call's types
    /// out of the shared state (unstarted tasks, posted chunks) into the returned parts. After it,
    /// no runner touches anything of the call again. Never unwinds and drops no user value.
    pub(crate) fn settle(&mut self) -> (VecDeque<Batch<T>>, Vec<Chunk<T::Output>>) {
        let unstarted = self.close();
        let signal = self.signal();
        let shared = &self.shared;
        signal.wait_while(|| !shared.tracker.is_quiescent());
        let done = std::mem::take(&mut *lock(&shared.done));
        (unstarted, done)
    }
}

/// Drops unstarted batches' tasks one by one, containing panics from their `Drop`.
pub(crate) fn drop_unstarted<T: Task>(batches: VecDeque<Batch<T>>) {
    batches
        .into_iter()
        .for_each(|b| b.tasks.into_iter().for_each(quietly));
}

impl<I, T: Task> Drop for Engine<'_, I, T> {
    /// Closes the call (a settled one is closed already): queued batches never start. Values of a
    /// stream's `'static` types still running are dropped with the shared state.
    fn drop(&mut self) {
        drop_unstarted(self.close());
    }
}
