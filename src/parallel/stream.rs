//! `run_iter` / `run_unordered`: results as they complete (joblib's `return_as="generator"` and
//! `"generator_unordered"`), with backpressure.
//!
//! The consumer's `next()` is the dispatcher: it pulls tasks from the input (which therefore need
//! not be `Send`), packs batches and queues them for *tokens* (`spawn_detached` jobs that run
//! batches until the queue is empty), exactly as `run` does. Unlike joblib's generators, dispatch
//! is driven by consumption: tasks pulled but not yet *read* never exceed the window
//! (`pre_dispatch × batch size`), so unread results never pile up beyond it. A consumer waiting
//! for a result waits through a [`Signal`] (as `run`'s dispatcher does): on a pool worker it keeps
//! running that pool's work, so a call on another pool whose tasks need the consumer's pool
//! cannot deadlock; the timeout is a timed wait on that signal.
//!
//! Tasks and results are `'static`, so nothing here borrows the consumer's stack and nothing has
//! to be waited for on drop: dropping the iterator closes the call's [`Tracker`] and drops the
//! batches not yet started; batches already running finish, post their results into the shared
//! state, and everything is freed with the last `Arc` (no thread, task or result leaks, even if
//! the iterator itself is `mem::forget`-ed: then only the shared state stays allocated).
//!
//! The last `Arc` may thus go with a token, on a pool worker, which must never unwind (a
//! `spawn_detached` job): the shared state's `Drop` drops the unread results, unstarted tasks and
//! panic payloads one by one and discards panics from their `Drop`, and each token runs under
//! `halt_unwinding` besides. Dropping the iterator treats the unread results it holds the same way.

use super::backend::Plan;
use super::batch::Batcher;
use super::cancel::Tracker;
use super::delayed::{Apply, Delayed};
use super::dispatch::discard;
use super::progress::Progress;
use crate::pool::signal::Signal;
use crate::pool::unwind::{self, Panic};
use crate::sync::{Arc, AtomicU64, AtomicUsize, Mutex, Ordering};
use crate::ThreadPool;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

struct Chunk<R> {
    start: usize,
    results: Vec<R>,
    /// The task at `start + results.len()` panicked with this payload.
    panic: Option<Panic>,
}

struct Queue<T> {
    batches: VecDeque<(usize, Vec<T>)>,
    tokens: usize,
}

struct Shared<T, R> {
    tracker: Tracker,
    queue: Mutex<Queue<T>>,
    done: Mutex<Vec<Chunk<R>>>,
    /// The consumer's wake-up, notified after every chunk posted (`None` before its first wait).
    /// A [`Signal`], so that a consumer on a pool worker keeps running that pool's work while it
    /// waits (blocking it could deadlock a call whose tasks need that pool); set by the consumer
    /// before it waits, replaced if it moves to another thread.
    waiter: Mutex<Option<Arc<Signal>>>,
    tasks_done: AtomicUsize,
    timing_tasks: AtomicU64,
    timing_ns: AtomicU64,
}

impl<T, R> Drop for Shared<T, R> {
    /// The last `Arc` may be dropped by a token, on a pool worker, after the iterator was dropped:
    /// the unread results, unstarted tasks and panic payloads left here are user values whose
    /// `Drop` may panic, so each is dropped on its own and such a panic is discarded (a worker must
    /// never unwind, and one panicking value must not leak the others).
    fn drop(&mut self) {
        let batches = std::mem::take(&mut lock(&self.queue).batches);
        for (_, tasks) in batches {
            tasks.into_iter().for_each(quietly);
        }
        for chunk in std::mem::take(&mut *lock(&self.done)) {
            chunk.results.into_iter().for_each(quietly);
            quietly(chunk.panic);
        }
    }
}

/// Drops `value`, discarding a panic from its `Drop`.
fn quietly<V>(value: V) {
    if let Err(payload) = unwind::halt_unwinding(move || drop(value)) {
        discard(payload);
    }
}

fn lock<T>(m: &Mutex<T>) -> impl std::ops::DerefMut<Target = T> + '_ {
    // Nothing panics while these locks are held (tasks run outside them).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<F, A, R> Shared<Delayed<F, A>, R>
where
    F: Apply<A, Output = R>,
{
    /// Runs a batch and posts its results. The caller must be active in the tracker.
    fn run_batch(&self, start: usize, tasks: Vec<Delayed<F, A>>) {
        let started = Instant::now();
        crate::pool::worker::trace_current(crate::EventKind::BatchStart, tasks.len() as u32);
        let mut results = Vec::with_capacity(tasks.len());
        let outcome = unwind::halt_unwinding(|| {
            for task in tasks {
                if self.tracker.is_closed() {
                    break;
                }
                results.push(task.call());
            }
        });
        let ran = results.len();
        crate::pool::worker::trace_current(crate::EventKind::BatchEnd, ran as u32);
        self.timing_tasks.fetch_add(ran as u64, Ordering::Relaxed);
        self.timing_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.tasks_done.fetch_add(ran, Ordering::Relaxed);
        lock(&self.done).push(Chunk {
            start,
            results,
            panic: outcome.err(),
        });
        // After the push (see `Signal`): a consumer that installed its signal after this read
        // finds the chunk when it checks `done`.
        let waiter = lock(&self.waiter).clone();
        if let Some(signal) = waiter {
            signal.notify();
        }
    }

    fn run_one(&self) -> bool {
        let batch = lock(&self.queue).batches.pop_front();
        match batch {
            Some((start, tasks)) => {
                self.run_batch(start, tasks);
                true
            }
            None => false,
        }
    }
}

/// A token's job. Never unwinds (a `spawn_detached` job must not): `token_loop` does not by
/// construction (`run_batch` catches every panic of a task), the last `Arc` it may drop frees the
/// shared state through `Shared`'s `Drop`, which catches the panics of dropping unread results
/// and payloads; anything else (a bug) is caught here and its payload discarded.
fn token<F, A, R>(shared: Arc<Shared<Delayed<F, A>, R>>)
where
    F: Apply<A, Output = R>,
{
    if let Err(payload) = unwind::halt_unwinding(move || token_loop(shared)) {
        discard(payload);
    }
}

fn token_loop<F, A, R>(shared: Arc<Shared<Delayed<F, A>, R>>)
where
    F: Apply<A, Output = R>,
{
    loop {
        let batch = {
            let mut queue = lock(&shared.queue);
            // Active only with a batch in hand (see `dispatch::token_loop`).
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
        let Some((start, tasks)) = batch else { return };
        shared.run_batch(start, tasks);
        shared.tracker.finish();
    }
}

enum Mode {
    /// Sequential: each `next()` runs the next task on the consumer's thread.
    Inline,
    Pool {
        pool: ThreadPool,
        runners: usize,
        helps: bool,
    },
}

/// The engine shared by [`RunIter`] and [`RunUnordered`].
struct Stream<'p, I, F, A, R> {
    tasks: I,
    exhausted: bool,
    mode: Mode,
    shared: Arc<Shared<Delayed<F, A>, R>>,
    batcher: Batcher,
    pre_dispatch: usize,
    timeout: Option<Duration>,
    progress: Progress<'p>,
    exact_len: Option<usize>,
    /// Tasks pulled from the input so far.
    pulled: usize,
    /// Results handed to the consumer so far.
    yielded: usize,
    /// Ordered mode: chunks that arrived, by start index; `cursor`: the chunk being read.
    waiting: BTreeMap<usize, Chunk<R>>,
    /// Unordered mode: results ready to hand out, and a panic to resume after them.
    ready: VecDeque<(usize, R)>,
    ready_panic: Option<Panic>,
    cursor: Option<(usize, std::vec::IntoIter<R>, Option<Panic>)>,
    finished: bool,
    /// The consumer's wake-up and the thread it belongs to (see `Shared::waiter`).
    signal: Option<(std::thread::ThreadId, Arc<Signal>)>,
}

impl<I, F, A, R> Stream<'_, I, F, A, R> {
    /// Stops dispatching: later tokens do nothing, unstarted batches are dropped.
    fn close(&mut self) {
        self.shared.tracker.close();
        let unstarted = std::mem::take(&mut lock(&self.shared.queue).batches);
        drop(unstarted);
    }
}

impl<I, F, A, R> Drop for Stream<'_, I, F, A, R> {
    /// Closes the call, then drops the unread results and payloads it holds one by one, discarding
    /// panics from their `Drop` (as `Shared`'s `Drop` does for what tokens posted after this).
    fn drop(&mut self) {
        self.close();
        for (_, chunk) in std::mem::take(&mut self.waiting) {
            chunk.results.into_iter().for_each(quietly);
            quietly(chunk.panic);
        }
        if let Some((_, results, panic)) = self.cursor.take() {
            results.for_each(quietly);
            quietly(panic);
        }
        std::mem::take(&mut self.ready)
            .into_iter()
            .for_each(quietly);
        quietly(self.ready_panic.take());
    }
}

impl<'p, I, F, A, R> Stream<'p, I, F, A, R>
where
    I: Iterator<Item = Delayed<F, A>>,
    F: Apply<A, Output = R> + Send + 'static,
    A: Send + 'static,
    R: Send + 'static,
{
    fn new(
        tasks: I,
        plan: Plan,
        batcher: Batcher,
        pre_dispatch: usize,
        timeout: Option<Duration>,
        progress: Progress<'p>,
    ) -> Self {
        let exact_len = match tasks.size_hint() {
            (low, Some(high)) if low == high => Some(low),
            _ => None,
        };
        let mode = match plan {
            Plan::Inline => Mode::Inline,
            Plan::Pool { pool, runners, .. } => {
                let helps = pool.is_current();
                Mode::Pool {
                    pool,
                    runners,
                    helps,
                }
            }
        };
        Stream {
            tasks,
            exhausted: false,
            mode,
            shared: Arc::new(Shared {
                tracker: Tracker::new(),
                queue: Mutex::new(Queue {
                    batches: VecDeque::new(),
                    tokens: 0,
                }),
                done: Mutex::new(Vec::new()),
                waiter: Mutex::new(None),
                tasks_done: AtomicUsize::new(0),
                timing_tasks: AtomicU64::new(0),
                timing_ns: AtomicU64::new(0),
            }),
            batcher,
            pre_dispatch,
            timeout,
            progress,
            exact_len,
            pulled: 0,
            yielded: 0,
            waiting: BTreeMap::new(),
            ready: VecDeque::new(),
            ready_panic: None,
            cursor: None,
            finished: false,
            signal: None,
        }
    }

    /// Pulls tasks into batches while the window has room, and wakes tokens for them.
    fn refill(&mut self) {
        let Mode::Pool {
            pool,
            runners,
            helps,
        } = &self.mode
        else {
            return;
        };
        let (runners, helps) = (*runners, *helps);
        self.batcher.observe(
            self.shared.timing_tasks.load(Ordering::Relaxed),
            self.shared.timing_ns.load(Ordering::Relaxed),
        );
        let mut pushed = Vec::new();
        while !self.exhausted && !self.shared.tracker.is_closed() {
            let unread = self.pulled - self.yielded;
            let size = self.batcher.next_size(
                self.exact_len.map(|n| n.saturating_sub(self.pulled)),
                runners,
            );
            let window = self.pre_dispatch.saturating_mul(size).max(1);
            if unread >= window {
                break;
            }
            let take = size.min(window - unread);
            let mut batch = Vec::with_capacity(take);
            batch.extend(self.tasks.by_ref().take(take));
            if batch.len() < take {
                self.exhausted = true;
                if batch.is_empty() {
                    break;
                }
            }
            pushed.push((self.pulled, std::mem::take(&mut batch)));
            self.pulled += pushed.last().map_or(0, |(_, b)| b.len());
        }
        let max_tokens = if helps { runners - 1 } else { runners };
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
            pool.spawn_detached(move || token(shared));
        }
    }

    /// Moves posted chunks into the consumer's buffers; `true` if any arrived.
    fn collect(&mut self, ordered: bool) -> bool {
        let chunks = std::mem::take(&mut *lock(&self.shared.done));
        let any = !chunks.is_empty();
        for chunk in chunks {
            if ordered {
                self.waiting.insert(chunk.start, chunk);
            } else {
                let start = chunk.start;
                self.ready.extend(
                    chunk
                        .results
                        .into_iter()
                        .enumerate()
                        .map(|(k, r)| (start + k, r)),
                );
                if chunk.panic.is_some() && self.ready_panic.is_none() {
                    self.ready_panic = chunk.panic;
                }
            }
        }
        self.progress
            .update(self.shared.tasks_done.load(Ordering::Relaxed));
        any
    }

    fn fail(&mut self, payload: Panic) -> ! {
        self.finished = true;
        self.close();
        unwind::resume_unwinding(payload)
    }

    /// The next result in input order (`ordered`), or in completion order with its index.
    fn next_result(&mut self, ordered: bool) -> Option<(usize, R)> {
        if self.finished {
            return None;
        }
        if let Mode::Inline = self.mode {
            let task = self.tasks.next();
            let Some(task) = task else {
                self.finished = true;
                self.progress.finish(self.yielded);
                return None;
            };
            // As on a pool: a task's panic ends the iterator, and so does a result that took
            // longer than the timeout to arrive (here: the task, run by `next()` itself, took
            // that long; its result is dropped, as a late result on a pool is).
            let started = Instant::now();
            let value = match unwind::halt_unwinding(|| task.call()) {
                Ok(value) => value,
                Err(payload) => {
                    self.finished = true;
                    unwind::resume_unwinding(payload)
                }
            };
            if let Some(timeout) = self.timeout.filter(|&t| started.elapsed() > t) {
                self.finished = true;
                drop(value);
                panic!(
                    "parjob: timed out after {timeout:?} waiting for the next result; unstarted tasks were cancelled"
                );
            }
            self.yielded += 1;
            self.progress.update(self.yielded);
            return Some((self.yielded - 1, value));
        }
        loop {
            // 1. Hand out what is ready.
            if ordered {
                if let Some((index, results, _)) = &mut self.cursor {
                    if let Some(value) = results.next() {
                        let i = *index;
                        *index += 1;
                        self.yielded += 1;
                        return Some((i, value));
                    }
                    let (_, _, panic) = self.cursor.take().expect("cursor is set");
                    if let Some(payload) = panic {
                        self.fail(payload);
                    }
                }
                if let Some(chunk) = self.waiting.remove(&self.yielded) {
                    self.cursor = Some((chunk.start, chunk.results.into_iter(), chunk.panic));
                    continue;
                }
            } else {
                if let Some(item) = self.ready.pop_front() {
                    self.yielded += 1;
                    return Some(item);
                }
                if let Some(payload) = self.ready_panic.take() {
                    self.fail(payload);
                }
            }
            // 2. Keep the window full, then see whether we are done.
            self.refill();
            if self.collect(ordered) {
                continue;
            }
            if self.exhausted && self.yielded == self.pulled {
                self.finished = true;
                self.progress.finish(self.yielded);
                return None;
            }
            // 3. Help with our own batches when nested on the pool (never idles a worker, cannot
            //    deadlock a one-thread pool), else wait for a chunk.
            if let Mode::Pool { helps: true, .. } = self.mode {
                if self.shared.tracker.begin() {
                    let ran = self.shared.run_one();
                    self.shared.tracker.finish();
                    if ran {
                        continue;
                    }
                }
            }
            let deadline = self.timeout.map(|t| Instant::now() + t);
            let signal = self.signal();
            let shared = &self.shared;
            Signal::wait_while_until(&signal, deadline, || lock(&shared.done).is_empty());
            if lock(&shared.done).is_empty() && deadline.is_some_and(|d| Instant::now() >= d) {
                self.finished = true;
                self.close();
                panic!(
                    "parjob: timed out after {:?} waiting for the next result; unstarted tasks were cancelled",
                    self.timeout.unwrap_or_default()
                );
            }
        }
    }

    /// The consumer's signal for the current thread, installed in the shared state.
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
}

/// Results in input order as they complete: [`Parallel::run_iter`](crate::Parallel::run_iter).
///
/// Dropping it early stops dispatching (tasks not yet started never run); tasks already running
/// finish in the background and their results are dropped.
///
/// # Panics
/// `next()` resumes a task's panic when it reaches that task's position, and panics when a
/// [`timeout`](crate::Parallel::timeout) expires while waiting. Either ends the iterator: later
/// calls return `None`. The same holds with an effective `n_jobs` of 1, where `next()` runs the
/// task itself: it panics if that task took longer than the timeout (the result is dropped).
pub struct RunIter<'p, I, F, A, R>(Stream<'p, I, F, A, R>);

/// `(index, result)` pairs in completion order: [`Parallel::run_unordered`](crate::Parallel::run_unordered).
///
/// Same drop, panic and timeout rules as [`RunIter`].
pub struct RunUnordered<'p, I, F, A, R>(Stream<'p, I, F, A, R>);

impl<I, F, A, R> Iterator for RunIter<'_, I, F, A, R>
where
    I: Iterator<Item = Delayed<F, A>>,
    F: Apply<A, Output = R> + Send + 'static,
    A: Send + 'static,
    R: Send + 'static,
{
    type Item = R;
    fn next(&mut self) -> Option<R> {
        self.0.next_result(true).map(|(_, r)| r)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.0.exact_len.map(|n| n.saturating_sub(self.0.yielded));
        (0, left)
    }
}

impl<I, F, A, R> Iterator for RunUnordered<'_, I, F, A, R>
where
    I: Iterator<Item = Delayed<F, A>>,
    F: Apply<A, Output = R> + Send + 'static,
    A: Send + 'static,
    R: Send + 'static,
{
    type Item = (usize, R);
    fn next(&mut self) -> Option<(usize, R)> {
        self.0.next_result(false)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.0.exact_len.map(|n| n.saturating_sub(self.0.yielded));
        (0, left)
    }
}

impl<I, F, A, R> std::fmt::Debug for RunIter<'_, I, F, A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunIter")
            .field("pulled", &self.0.pulled)
            .field("yielded", &self.0.yielded)
            .finish()
    }
}

impl<I, F, A, R> std::fmt::Debug for RunUnordered<'_, I, F, A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunUnordered")
            .field("pulled", &self.0.pulled)
            .field("yielded", &self.0.yielded)
            .finish()
    }
}

pub(crate) fn run_iter<'p, I, F, A, R>(
    tasks: I,
    plan: Plan,
    batcher: Batcher,
    pre_dispatch: usize,
    timeout: Option<Duration>,
    progress: Progress<'p>,
) -> RunIter<'p, I, F, A, R>
where
    I: Iterator<Item = Delayed<F, A>>,
    F: Apply<A, Output = R> + Send + 'static,
    A: Send + 'static,
    R: Send + 'static,
{
    RunIter(Stream::new(
        tasks,
        plan,
        batcher,
        pre_dispatch,
        timeout,
        progress,
    ))
}

pub(crate) fn run_unordered<'p, I, F, A, R>(
    tasks: I,
    plan: Plan,
    batcher: Batcher,
    pre_dispatch: usize,
    timeout: Option<Duration>,
    progress: Progress<'p>,
) -> RunUnordered<'p, I, F, A, R>
where
    I: Iterator<Item = Delayed<F, A>>,
    F: Apply<A, Output = R> + Send + 'static,
    A: Send + 'static,
    R: Send + 'static,
{
    RunUnordered(Stream::new(
        tasks,
        plan,
        batcher,
        pre_dispatch,
        timeout,
        progress,
    ))
}
