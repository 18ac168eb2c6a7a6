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
//! nothing to pull, it helps if it is one of the runners and batches are short, and otherwise
//! waits on its signal until a chunk arrives, the call is closed, or a limit ([`Limits`]) passes.
//! On a pool worker that wait keeps running the pool's work. `run`'s driver helps by running the
//! next batch's worth of tasks straight from the input ([`Engine::run_from_input`]: no batch
//! buffer, so the tasks it keeps are never moved, and it pays for pulling only the tasks it hands
//! to others; `refill` keeps one batch of the window free for this), and, once the input is
//! exhausted, by running queued batches ([`Engine::help`]), which is how a stream's consumer helps.
//! A helping driver refills after every chunk, so its window counts the buffers it cuts (queued
//! tasks stay in a cache until a runner reads them); one that only dispatches counts batches of
//! the size the batcher asked for.
//!
//! # Limits
//! `timeout` bounds each wait for the next result, `deadline` the whole call. Both are
//! cooperative: batches check the deadline before each task, and in `run`'s calls the timeout
//! too (the time since the latest result, [`Quiet`]; each finished batch also checks the wait it
//! ended), since the driver that helps, and the workers, may all be inside tasks when it expires;
//! the driver checks both after each wait (a stream's timeout counts only the consumer's wait,
//! which only it sees); running tasks are never interrupted. An expired timeout fails the call; a
//! call in which no task was skipped succeeds even if it ran past its deadline.
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

mod shared;

pub(crate) use shared::{drop_chunk, lock, Batch, Chunk, Dest, Shared, SpareBuffers};
use shared::{token, Queue, Quiet, SlotPtr};

use super::backend::Plan;
use super::batch::Batcher;
use super::cancel::Tracker;
use super::delayed::{Apply, Delayed};
use super::progress::Progress;
use crate::pool::unwind::{drop_contained, Panic};
use crate::pool::Signal;
use crate::sync::{Arc, AtomicBool, AtomicU64, AtomicUsize, Mutex, Ordering};
use crate::ThreadPool;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Moves up to `take` tasks from `input` to the end of `tasks` (fewer when the input ends): what
/// `tasks.extend(input.by_ref().take(take))` does, written out because the written-out loop keeps
/// the input's state in registers. Through `extend`, the compiler stored the iterator's state back
/// to memory after every task, a third store per task beside the task's own two. The driver's
/// stores into a buffer whose lines are still cached by the runner that emptied it wait for those
/// lines; probably the extra store took store-buffer entries from them, so fewer waits overlapped.
/// Measured, one `Delayed` per tiny task (1M tasks of 24-48 ns, 2 threads, both loops alternating
/// in one process): 2-11 % faster calls; docs/benchmarks-history.md, round 9.
///
/// If `input` panics, `tasks` holds every task it gave before (the length grows with each write).
#[inline]
fn pull_into<T>(tasks: &mut Vec<T>, input: &mut impl Iterator<Item = T>, take: usize) {
    tasks.reserve(take);
    let start = tasks.len();
    let base = tasks.as_mut_ptr();
    for len in start..start + take {
        let Some(task) = input.next() else { break };
        // SAFETY: `reserve(take)` made room for `start + take` elements, so slot `len` is inside
        // the allocation, and it is past the initialised prefix (`tasks.len() == len` here: the
        // loop starts at `start` and each round sets it one higher). Nothing reallocates between
        // the `as_mut_ptr` above and this write (`set_len` neither moves nor reborrows the
        // elements), so `base` still points at the buffer. Setting the length right after the
        // write keeps "the first `len` elements are initialised" true at every point where
        // `input.next()` may unwind, so a panic neither drops a slot twice nor loses a task.
        unsafe {
            base.add(len).write(task);
            tasks.set_len(len + 1);
        }
    }
}

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
    /// The input's length, when its `size_hint` is exact (asked once, see `parallel::exact_len`).
    pub(crate) exact_len: Option<usize>,
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

/// A batch buffer holds at most this many bytes of tasks, so that the runner reads the tasks
/// while they are still in a cache near the driver that wrote them (a 200 µs batch of 1 ns tasks
/// would be megabytes).
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Before the first batch has been timed, at most this many batches per runner are in flight.
const PROBE_BATCHES: usize = 2;

/// What a wait ended with.
pub(crate) enum Waited {
    /// Something may have changed: a chunk arrived, the call was closed, or a spurious wake.
    Changed,
    /// A limit passed with no new chunk: the timeout or budget that did, and whether it was the
    /// budget (the whole call's deadline).
    Expired(Duration, bool),
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
    /// The input; `None` once dropped ([`drop_input`](Self::drop_input), or the engine's drop).
    tasks: Option<I>,
    /// The input has no more tasks (or is dropped, or panicked): it is not pulled again.
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
    /// The driver runs tasks straight from the input when it helps (`run`'s driver; a stream's
    /// consumer only runs queued batches).
    from_input: bool,
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
        let exact_len = setup.exact_len;
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
                spare: SpareBuffers::new(),
                waiter: Mutex::new(None),
                tasks_done: AtomicUsize::new(0),
                timing_tasks: AtomicU64::new(0),
                timing_ns: AtomicU64::new(0),
                deadline: setup.limits.deadline(),
                deadline_hit: AtomicBool::new(false),
                quiet: setup
                    .limits
                    .timeout
                    .filter(|_| close_on_panic)
                    .map(Quiet::new),
                timeout_hit: AtomicBool::new(false),
                fail_fast,
                close_on_panic,
            }),
            tasks: Some(tasks),
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
            from_input: false,
        }
    }

    /// Lets the driver run tasks straight from the input when it helps ([`run_from_input`]).
    ///
    /// [`run_from_input`]: Self::run_from_input
    pub(crate) fn runs_from_input(&mut self) {
        self.from_input = true;
    }

    /// Does the driver run batches itself now? (It is a runner, and batches are short.)
    fn helps(&self) -> bool {
        self.on_pool.caller_runs
            && self
                .batcher
                .expected_batch_ns()
                .is_none_or(|ns| ns < CALLER_HELPS_BELOW_NS)
    }

    /// Pulls tasks into batches while the window has room, queues them and wakes tokens for them.
    /// `read`: results the consumer has read (a stream's window); `None`: the window counts tasks
    /// that have not run yet (`run`'s).
    pub(crate) fn refill(&mut self, read: Option<usize>) {
        if self.shared.tracker.is_closed() {
            return;
        }
        self.batcher.observe(
            self.shared.timing_tasks.load(Ordering::Relaxed),
            self.shared.timing_ns.load(Ordering::Relaxed),
        );
        let mut pushed: Vec<Batch<T>> = Vec::new();
        let mut input_panic = None;
        while !self.exhausted {
            let retired = read.unwrap_or_else(|| self.shared.tasks_done.load(Ordering::Acquire));
            let in_flight = self.pulled - retired.min(self.pulled);
            let (window, size) = self.window();
            // A driver that runs tasks straight from the input keeps one batch of the window for
            // that (see `run_from_input`), if the window holds two or more.
            let window = window - self.reserve(window, size);
            if in_flight >= window {
                break;
            }
            let take = size.min(window - in_flight);
            let Some(input) = self.tasks.as_mut() else {
                self.exhausted = true;
                break;
            };
            // Bulk: one buffer per batch (a recycled one when there is one), filled by `extend`
            // (no per-task lock, atomic or allocation).
            let mut tasks = self.shared.spare.take();
            tasks.reserve(take);
            let pulled = crate::pool::unwind::halt_unwinding(|| pull_into(&mut tasks, input, take));
            if let Err(payload) = pulled {
                // The input panicked (user code). The tasks it gave before are queued like any
                // batch and counted in `pulled`, so a stream read on after the panic hands out
                // each result under its own index and ends; the input is not pulled again.
                // Unwinding from here instead lost this buffer's tasks and the batches in
                // `pushed` (already counted: a stream read on waited for them forever, or gave
                // the input's next tasks their indices) and dropped their tasks while unwinding
                // (a `Drop` that panicked too aborted the process).
                input_panic = Some(payload);
                self.exhausted = true;
            } else if tasks.len() < take {
                self.exhausted = true;
            }
            if self.exhausted && tasks.is_empty() {
                break;
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
        // Tokens are topped up even when nothing new was pulled: batches queued while the driver
        // helped (and so spawned fewer tokens) need tokens of their own once it stops helping,
        // or nobody runs them (a 1-thread pool with `n_jobs(2)` hung there, the driver waiting
        // for chunks that no token would make).
        // Pulling was the caller's user code, not a wait for a result: with a timeout, the runners
        // count from here. Before the batches are queued: a runner that took one while the clock
        // still counted from before a slow pull found the timeout expired.
        self.driver_was_busy();
        let runners = self.on_pool.runners;
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
        if let Some(payload) = input_panic {
            crate::pool::unwind::resume_unwinding(payload);
        }
    }

    /// The window (most tasks pulled and not retired) and the size of the next batch: the size
    /// the batcher asks for, cut so that a batch buffer holds at most `MAX_BATCH_BYTES` of tasks.
    fn window(&mut self) -> (usize, usize) {
        let runners = self.on_pool.runners;
        let natural = self.batcher.next_size(
            self.exact_len.map(|n| n.saturating_sub(self.pulled)),
            runners,
        );
        let size = natural
            .min(MAX_BATCH_BYTES / std::mem::size_of::<T>().max(1))
            .max(1);
        // A driver that helps comes back to refill after every chunk it runs (about a batch), so
        // its window counts the buffers it cuts: the queued tasks stay few enough to be in a
        // cache when a runner reads them. One that only dispatches refills when a chunk arrives:
        // its window counts batches of the size the batcher asked for (a duration), even when
        // buffers are cut smaller, or runners run dry (and sleep) meanwhile.
        let unit = if self.helps() { size } else { natural };
        let mut window = self.pre_dispatch.saturating_mul(unit).max(1);
        if self.batcher.expected_batch_ns().is_none() {
            // Nothing measured yet (batches of one task, as joblib starts): probe with a few
            // batches per runner before a large window fills with tiny batches.
            window = window.min(PROBE_BATCHES * runners * size);
        }
        (window, size)
    }

    /// The part of the window the driver keeps for the tasks it runs straight from the input:
    /// one batch, when it does that (`run`'s driver, helping) and the window holds at least two.
    fn reserve(&self, window: usize, size: usize) -> usize {
        if self.from_input && self.helps() && window >= 2 * size {
            size
        } else {
            0
        }
    }

    /// Runs the next tasks of the input on the driver's thread, straight from the iterator, if the
    /// driver is a runner, batches are short and the input has more: a batch's worth, pulled and
    /// run one by one with no batch buffer in between (a task is never moved, and the driver
    /// pays for pulling only the tasks it hands to others). Results go to their slots (past the
    /// slots' capacity: a vector of the chunk's own). The chunk is returned, not posted; it
    /// counts as one of the call's batches. `None`: nothing was pulled (not a runner now, the
    /// call is closed, or the input is exhausted).
    ///
    /// No `Tracker::begin` is needed: the tracker keeps *tokens* away from the call's values after
    /// a settle, and the driver settles the call itself, after this returns. Tokens may close the
    /// call meanwhile (a panic, a failure): the loop stops at the next check.
    pub(crate) fn run_from_input(&mut self) -> Option<Chunk<T::Output>> {
        if !self.from_input
            || self.exhausted
            || !self.helps()
            || self.shared.tracker.is_closed()
            || lock(&self.shared.queue).tokens >= self.on_pool.runners
        {
            return None;
        }
        // Within the window: at most the tasks it has room for (the part `refill` kept free).
        let retired = self.shared.tasks_done.load(Ordering::Acquire);
        let in_flight = self.pulled - retired.min(self.pulled);
        let (window, size) = self.window();
        let size = size.min(window.saturating_sub(in_flight));
        if size == 0 {
            return None;
        }
        let start = self.pulled;
        let slots = match self.slots {
            Some((base, capacity)) if start + size <= capacity => {
                // SAFETY: `start + size <= capacity`: inside the allocation (`new`'s contract);
                // no batch was given any slot from `start` on (slots go out in input order).
                Some(unsafe { base.add(start) })
            }
            _ => None,
        };
        let shared = &*self.shared;
        let tasks = self.tasks.as_mut()?;
        let started = Instant::now();
        crate::pool::trace_current(crate::EventKind::BatchStart, size as u32);
        let mut taken = 0usize;
        let mut written = 0usize;
        let mut ended = false;
        let mut failure = None;
        let mut own = slots.is_none().then(Vec::new);
        let plain = slots.is_some()
            && !std::mem::needs_drop::<T::Output>()
            && shared.fail_fast.is_none()
            && shared.deadline.is_none()
            && shared.quiet.is_none();
        let pool = &self.on_pool.pool;
        let outcome = crate::pool::unwind::halt_unwinding(|| {
            super::backend::running_tasks_of(pool, || match slots {
                Some(first) if plain => {
                    // As `run_batch`'s plain loop: runs of `CHECK_EVERY` tasks, the cancel flag
                    // checked between them; a panic mid-run leaves nothing that must be dropped (and
                    // fails the call).
                    while taken < size && !shared.tracker.is_closed() {
                        let run = (size - taken).min(shared::CHECK_EVERY);
                        // SAFETY: `first` points at slot `start` of the output buffer, which
                        // outlives the call (`Engine::new`'s contract); slots `start .. start +
                        // size` were given to no batch and are this chunk's alone (above), so no
                        // other reference to them exists, and `taken + run <= size`. Viewed as
                        // `MaybeUninit`, they may hold anything; each is written at most once, and
                        // read only after the call is settled.
                        let run_slots = unsafe {
                            std::slice::from_raw_parts_mut(
                                first.add(taken).cast::<std::mem::MaybeUninit<T::Output>>(),
                                run,
                            )
                        };
                        let n = shared::fill_from(tasks, run_slots);
                        taken += n;
                        written += n;
                        if n < run {
                            ended = true;
                            break;
                        }
                    }
                }
                _ => {
                    while taken < size {
                        if shared.stop_before_next_task() {
                            break;
                        }
                        let Some(task) = tasks.next() else {
                            ended = true;
                            break;
                        };
                        if let Some(quiet) = &shared.quiet {
                            // Pulling was the caller's user code, not a wait for a result.
                            quiet.busy_until_now();
                        }
                        taken += 1;
                        let value = task.run();
                        if shared.fail_fast.is_some_and(|failed| failed(&value)) {
                            failure = Some(value);
                            shared.tracker.close();
                            break;
                        }
                        match (slots, &mut own) {
                            // SAFETY: slot `start + written` is this chunk's (`written < taken <=
                            // size`); written once, read only after the call is settled.
                            (Some(first), _) => unsafe { first.add(written).write(value) },
                            (None, Some(v)) => v.push(value),
                            (None, None) => unreachable!("a chunk without slots has its vector"),
                        }
                        written += 1;
                    }
                }
            })
        });
        let panic = outcome.err();
        if panic.is_some() {
            // The task, or the input iterator itself, panicked: the call ends (`run` closes on a
            // panic), and the input is not pulled again.
            shared.tracker.close();
            ended = true;
        }
        crate::pool::trace_current(crate::EventKind::BatchEnd, written as u32);
        shared
            .timing_tasks
            .fetch_add(written as u64, Ordering::Relaxed);
        shared
            .timing_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        shared.tasks_done.fetch_add(written, Ordering::Release);
        shared.result_arrived(written);
        self.exhausted |= ended;
        self.pulled += taken;
        if taken == 0 && panic.is_none() {
            return None;
        }
        self.batches += 1;
        Some(Chunk {
            start,
            written,
            own,
            panic,
            failure,
        })
    }

    /// Runs one queued batch on the driver's thread if the driver is a runner and batches are
    /// short, or if batches are queued and no token is left to run them (whatever their length:
    /// the driver is then the only thread that will). `true` if it ran one.
    pub(crate) fn help(&mut self) -> bool {
        let (tokens, stranded) = {
            let queue = lock(&self.shared.queue);
            (queue.tokens, queue.tokens == 0 && !queue.batches.is_empty())
        };
        if !stranded && (!self.helps() || tokens >= self.on_pool.runners) {
            return false;
        }
        if !self.shared.tracker.begin() {
            return false;
        }
        let batch = self.shared.pop();
        let ran = batch.is_some();
        if let Some(batch) = batch {
            let shared = &self.shared;
            super::backend::running_tasks_of(&self.on_pool.pool, || shared.run_batch(batch));
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

    /// The driver was busy with user code until now (the progress callback, the input's
    /// `next()`): with a timeout, that time is not a wait for a result (joblib's clock runs only
    /// while its caller polls for one), so the runners count from here if no result came later.
    pub(crate) fn driver_was_busy(&self) {
        if let Some(quiet) = &self.shared.quiet {
            quiet.busy_until_now();
        }
    }

    /// Waits until a chunk arrives, the call is closed, or a limit passes: the timeout counted
    /// from `since` (when the driver began waiting for the next result; `None`: the call has no
    /// timeout), or the budget.
    pub(crate) fn wait(&mut self, since: Option<Instant>) -> Waited {
        // A timeout past what an `Instant` can hold (`Duration::MAX`) never expires.
        let by_timeout = self
            .limits
            .timeout
            .zip(since)
            .and_then(|(t, since)| since.checked_add(t).map(|at| (t, at, false)));
        let by_budget = self.limits.budget.map(|(b, at)| (b, at, true));
        let until = match (by_timeout, by_budget) {
            (Some(a), Some(b)) => Some(if a.1 <= b.1 { a } else { b }),
            (a, b) => a.or(b),
        };
        let signal = self.signal();
        let shared = &self.shared;
        Signal::wait_while_until(&signal, until.map(|(_, at, _)| at), || {
            lock(&shared.done).is_empty() && !shared.tracker.is_closed()
        });
        match until {
            Some((limit, at, whole_call))
                if Instant::now() >= at
                    && lock(&shared.done).is_empty()
                    && !shared.tracker.is_closed() =>
            {
                Waited::Expired(limit, whole_call)
            }
            _ => Waited::Changed,
        }
    }

    /// The deadline has passed (checked by the driver between waits).
    pub(crate) fn past_deadline(&self) -> bool {
        self.limits.deadline().is_some_and(|d| Instant::now() >= d)
    }

    /// Pulls one more task to see whether the input is exhausted. The task is dropped unrun, on
    /// its own and contained, as every unstarted task is: a panic from its `Drop` unwound out of
    /// the call's end with the results still in its locals (leaked, or dropped while unwinding:
    /// an abort). `Err`: the input itself panicked (then it is not pulled again).
    pub(crate) fn input_has_more(&mut self) -> Result<bool, Panic> {
        let Some(tasks) = self.tasks.as_mut().filter(|_| !self.exhausted) else {
            return Ok(false);
        };
        match crate::pool::unwind::halt_unwinding(|| tasks.next()) {
            Ok(Some(task)) => {
                drop_contained(task);
                Ok(true)
            }
            Ok(None) => {
                self.exhausted = true;
                Ok(false)
            }
            Err(payload) => {
                self.exhausted = true;
                Err(payload)
            }
        }
    }
}

impl<I, T: Task> Engine<'_, I, T> {
    /// Drops the input now, on this thread (the driver's: no runner ever touches it). Its `Drop`
    /// is user code: `Err` is its panic, which the caller resumes as the call's panic, or drops
    /// contained when the call already has one (dropped by the engine's own drop instead, it
    /// unwound past the call's end, replacing that panic and dropping its payload and the
    /// results while unwinding: an abort when one of those `Drop`s panics too).
    pub(crate) fn drop_input(&mut self) -> Result<(), Panic> {
        self.exhausted = true;
        match self.tasks.take() {
            Some(tasks) => crate::pool::unwind::halt_unwinding(move || drop(tasks)),
            None => Ok(()),
        }
    }

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
        .for_each(|b| b.tasks.into_iter().for_each(drop_contained));
}

impl<I, T: Task> Drop for Engine<'_, I, T> {
    /// Closes the call (a settled one is closed already): queued batches never start. Values of a
    /// stream's `'static` types still running are dropped with the shared state. The input, if
    /// still here, is dropped contained as the tasks are: this drop may run while a panic
    /// unwinds (a stream's consumer, a call that unwinds), where a panic of its `Drop` aborts.
    fn drop(&mut self) {
        drop_unstarted(self.close());
        if let Some(tasks) = self.tasks.take() {
            drop_contained(tasks);
        }
    }
}
