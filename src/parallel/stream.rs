//! `run_iter` / `run_unordered`: results as they complete (joblib's `return_as="generator"` and
//! `"generator_unordered"`), with backpressure; and their scoped form.
//!
//! The [engine](super::engine) does the work; this module only orders what it delivers. Dispatch
//! starts when the iterator is made (as joblib's generators start on the call), and is then
//! driven by consumption: tasks pulled but not yet *read* never exceed the window
//! (`pre_dispatch × batch size`), so unread results never pile up beyond it (joblib's generators
//! have no such bound). A consumer waiting for a result waits through the engine's signal: on a
//! pool worker it keeps running that pool's work.
//!
//! With `'static` tasks and results (`Parallel::run_iter`) nothing borrows the consumer's stack and
//! nothing has to be waited for on drop: dropping the iterator closes the call and drops the
//! batches not yet started; running ones finish and post their results into the shared state,
//! which is freed with the last `Arc` (even if the iterator is `mem::forget`-ed, only that state
//! stays allocated). The scoped form (`Parallel::scope_iter`) lends the iterator to a closure and
//! settles the call after it returns, so its tasks may borrow.
//!
//! Every value this module drops (unread results, payloads) is user data whose `Drop` may panic:
//! each is dropped on its own and such a panic is discarded, so one cannot lose the others.

use super::delayed::{Apply, Delayed};
use super::engine::{Chunk, Engine, Limits, Setup, Task, Waited};
use super::progress::Progress;
use crate::pool::unwind::{self, drop_contained, Panic};
use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

enum Source<'p, I, T: Task> {
    /// Sequential: each `next()` runs the next task on the consumer's thread.
    Inline {
        /// `None` once the stream's drop has dropped it (see there).
        tasks: Option<I>,
        progress: Progress<'p>,
        limits: Limits,
    },
    Pool(Engine<'p, I, T>),
}

/// The ordering shared by [`RunIter`], [`RunUnordered`] and the scoped form.
pub(crate) struct Stream<'p, I, T: Task> {
    source: Source<'p, I, T>,
    ordered: bool,
    exact_len: Option<usize>,
    /// Results handed to the consumer so far.
    yielded: usize,
    /// Chunks that arrived from the engine so far.
    arrived: usize,
    /// Ordered: chunks that arrived, by start index; `cursor`: the chunk being read.
    waiting: BTreeMap<usize, Chunk<T::Output>>,
    cursor: Option<(usize, std::vec::IntoIter<T::Output>, Option<Panic>)>,
    /// Unordered: results ready to hand out, then the panics to resume after them. Inline (either
    /// order): the result whose progress report panicked, handed out by the next `next()`.
    ready: VecDeque<(usize, T::Output)>,
    panics: VecDeque<Panic>,
    finished: bool,
    /// When the consumer began waiting for its next result (the timeout counts from here).
    since: Instant,
    scratch: Vec<Chunk<T::Output>>,
}

impl<I, T: Task> Stream<'_, I, T> {
    /// Stops dispatching and drops the batches not yet started. Each task is dropped on its own,
    /// contained: its `Drop` is user code, and when the queue was dropped whole, a second task
    /// whose `Drop` panicked did so while the first one's panic unwound, which aborts.
    fn stop(&self) {
        if let Source::Pool(engine) = &self.source {
            super::engine::drop_unstarted(engine.close());
        }
    }
}

impl<I, T: Task> Drop for Stream<'_, I, T> {
    /// Closes the call, then drops the unstarted tasks and the unread results and payloads held
    /// here one by one, discarding panics from their `Drop`.
    fn drop(&mut self) {
        self.stop();
        for (_, chunk) in std::mem::take(&mut self.waiting) {
            super::engine::drop_chunk(chunk);
        }
        if let Some((_, results, panic)) = self.cursor.take() {
            results.for_each(drop_contained);
            if let Some(payload) = panic {
                drop_contained(payload);
            }
        }
        std::mem::take(&mut self.ready)
            .into_iter()
            .for_each(drop_contained);
        std::mem::take(&mut self.panics)
            .into_iter()
            .for_each(drop_contained);
        // Empty between calls of `next()`; a chunk left here is dropped as the others are.
        std::mem::take(&mut self.scratch)
            .into_iter()
            .for_each(super::engine::drop_chunk);
        // The input too (on a pool, the engine's drop does it): this drop may run while a panic
        // unwinds (a scoped stream's consumer that panicked), where a panic of its `Drop` aborts.
        if let Source::Inline { tasks, .. } = &mut self.source {
            if let Some(tasks) = tasks.take() {
                drop_contained(tasks);
            }
        }
    }
}

impl<'p, I, T> Stream<'p, I, T>
where
    I: Iterator<Item = T>,
    T: Task + Send,
    T::Output: Send,
{
    /// A stream over `tasks`; on a pool, dispatch starts now.
    ///
    /// # Safety
    /// As [`Engine::new`]: unless `T` and `T::Output` are `'static`, the caller must call
    /// [`settle`](Self::settle) before anything they borrow goes away, on every path.
    pub(crate) unsafe fn new(tasks: I, setup: Setup<'p>, ordered: bool) -> Self {
        let exact_len = setup.exact_len;
        let source = match setup.plan {
            super::backend::Plan::Inline => Source::Inline {
                tasks: Some(tasks),
                progress: setup.progress,
                limits: setup.limits,
            },
            super::backend::Plan::Pool {
                ref pool,
                runners,
                inside,
                ..
            } => {
                // The consumer runs batches only when it is a worker of the pool (never idle a
                // worker, never deadlock a 1-thread pool); from outside it only reads, so a
                // consumer waiting on a limit is never stuck inside a long task of its own.
                let pool = (pool.clone(), runners, inside);
                // SAFETY: forwarded to our caller (no slots: results go to the chunks).
                let mut engine = unsafe { Engine::new(tasks, setup, pool, None, None) };
                if let Err(payload) = unwind::halt_unwinding(|| engine.refill(Some(0))) {
                    // The input panicked. `refill` queued the tasks it had pulled and started
                    // tokens for them before resuming the panic, and no stream exists yet whose
                    // settling (`scope_iter`) would wait for those tokens: settle here, or tasks
                    // that borrow could run after their borrow ends.
                    let (unstarted, done) = engine.settle();
                    super::engine::drop_unstarted(unstarted);
                    done.into_iter().for_each(super::engine::drop_chunk);
                    unwind::resume_unwinding(payload);
                }
                Source::Pool(engine)
            }
        };
        Stream {
            source,
            ordered,
            exact_len,
            yielded: 0,
            arrived: 0,
            waiting: BTreeMap::new(),
            cursor: None,
            ready: VecDeque::new(),
            panics: VecDeque::new(),
            finished: false,
            since: Instant::now(),
            scratch: Vec::new(),
        }
    }

    fn end(&mut self) -> Option<(usize, T::Output)> {
        self.finished = true;
        match &mut self.source {
            Source::Inline { progress, .. } => progress.finish(self.yielded),
            Source::Pool(engine) => engine.progress.finish(self.yielded),
        }
        None
    }

    fn fail(&mut self, payload: Panic) -> ! {
        self.finished = true;
        self.stop();
        unwind::resume_unwinding(payload)
    }

    fn expire(&mut self, limit: std::time::Duration, whole_call: bool) -> ! {
        self.finished = true;
        self.stop();
        if whole_call {
            stream_passed_deadline(limit)
        }
        panic!(
            "parjob: timed out after {limit:?} waiting for the next result; unstarted tasks were cancelled"
        )
    }

    /// A result the consumer gets now: the timeout restarts.
    fn hand_out(&mut self, item: (usize, T::Output)) -> Option<(usize, T::Output)> {
        self.yielded += 1;
        self.since = Instant::now();
        Some(item)
    }

    /// The next result in input order (`ordered`), or in completion order with its index.
    pub(crate) fn next_result(&mut self) -> Option<(usize, T::Output)> {
        if self.finished {
            return None;
        }
        if let Source::Inline { .. } = self.source {
            return self.next_inline();
        }
        loop {
            // 1. Hand out what is ready.
            if self.ordered {
                if let Some((index, results, _)) = &mut self.cursor {
                    if let Some(value) = results.next() {
                        let i = *index;
                        *index += 1;
                        return self.hand_out((i, value));
                    }
                    let (_, _, panic) = self.cursor.take().expect("cursor is set");
                    if let Some(payload) = panic {
                        self.fail(payload);
                    }
                }
                if let Some(chunk) = self.waiting.remove(&self.yielded) {
                    let results = chunk.own.unwrap_or_default();
                    self.cursor = Some((chunk.start, results.into_iter(), chunk.panic));
                    continue;
                }
            } else {
                if let Some(item) = self.ready.pop_front() {
                    return self.hand_out(item);
                }
                if let Some(payload) = self.panics.pop_front() {
                    self.fail(payload);
                }
            }
            let Source::Pool(engine) = &mut self.source else {
                unreachable!("the inline source returned above")
            };
            // 2. Keep the window full, then see whether we are done.
            engine.refill(Some(self.yielded));
            if engine.take_done(&mut self.scratch) {
                let done = engine
                    .shared
                    .tasks_done
                    .load(std::sync::atomic::Ordering::Relaxed);
                // Into the ordering buffers before the callback (user code) runs: when it
                // panicked with the chunks still in `scratch`, a consumer that read on never saw
                // them (it waited forever for results that had arrived), and one that dropped the
                // stream dropped them while the panic unwound.
                self.collect();
                if let Source::Pool(engine) = &mut self.source {
                    engine.report(done);
                }
                continue;
            }
            if engine.exhausted && self.yielded == engine.pulled {
                return self.end();
            }
            // 3. A closed call posts nothing more once no runner is active: end it.
            if engine.shared.tracker.is_closed() && engine.shared.tracker.is_quiescent() {
                if engine.take_done(&mut self.scratch) {
                    self.collect();
                    continue;
                }
                let budget = engine
                    .limits
                    .budget
                    .map_or_else(Default::default, |(b, _)| b);
                self.expire(budget, true);
            }
            // 4. Help with our own batches (if a runner), else wait for a chunk.
            if engine.help() {
                continue;
            }
            if engine.past_deadline() {
                let budget = engine
                    .limits
                    .budget
                    .map_or_else(Default::default, |(b, _)| b);
                self.expire(budget, true);
            }
            if let Waited::Expired(limit, whole_call) = engine.wait(Some(self.since)) {
                self.expire(limit, whole_call);
            }
        }
    }

    /// Moves newly arrived chunks into the ordering buffers (moves only: no user value is
    /// dropped here, so nothing can unwind half-way and lose chunks).
    fn collect(&mut self) {
        for chunk in self.scratch.drain(..) {
            self.arrived += 1;
            if self.ordered {
                self.waiting.insert(chunk.start, chunk);
            } else {
                let start = chunk.start;
                if let Some(own) = chunk.own {
                    self.ready
                        .extend(own.into_iter().enumerate().map(|(k, r)| (start + k, r)));
                }
                if let Some(payload) = chunk.panic {
                    self.panics.push_back(payload);
                }
            }
        }
    }

    /// The sequential path: runs the next task here. As on a pool, a task's panic ends the
    /// iterator, and so does a result that took longer than the timeout (the task, run by `next()`
    /// itself, took that long; its result is dropped, as a late result on a pool is) or a passed
    /// deadline.
    fn next_inline(&mut self) -> Option<(usize, T::Output)> {
        if let Some(item) = self.ready.pop_front() {
            return self.hand_out(item);
        }
        let Source::Inline { tasks, limits, .. } = &mut self.source else {
            unreachable!("called for the inline source")
        };
        let limits = *limits;
        if let Some((budget, at)) = limits.budget {
            if Instant::now() >= at {
                self.expire(budget, true);
            }
        }
        let pulled = match tasks.as_mut() {
            Some(input) => unwind::halt_unwinding(|| input.next()),
            None => Ok(None),
        };
        let task = match pulled {
            Ok(Some(task)) => task,
            Ok(None) => return self.end(),
            Err(payload) => {
                // The input panicked (user code): it is dropped now, contained, and never pulled
                // again, so a consumer that reads on finds the stream ended, as on a pool.
                // (Pulled on, it handed its later tasks out under the indices of the ones before.)
                if let Some(input) = tasks.take() {
                    drop_contained(input);
                }
                self.fail(payload)
            }
        };
        let started = Instant::now();
        let value = match unwind::halt_unwinding(|| task.run()) {
            Ok(value) => value,
            Err(payload) => self.fail(payload),
        };
        if let Some(timeout) = limits.timeout.filter(|&t| started.elapsed() > t) {
            drop_contained(value);
            self.expire(timeout, false);
        }
        // Kept in the stream while the callback (user code) runs: if it panics, the next `next()`
        // hands the result out, or the stream's drop drops it contained. (Held here, it was
        // dropped while the panic unwound, and `run_unordered` gave the next result its index.)
        self.ready.push_back((self.yielded, value));
        if let Source::Inline { progress, .. } = &mut self.source {
            progress.update(self.yielded + 1);
        }
        let item = self.ready.pop_front().expect("pushed above");
        self.hand_out(item)
    }

    /// Ends a scoped stream: closes it and waits until no runner is active, then drops
    /// everything left of the call's types (contained). See `Parallel::scope_iter`.
    pub(crate) fn settle(&mut self) {
        if let Source::Pool(engine) = &mut self.source {
            let (unstarted, done) = engine.settle();
            super::engine::drop_unstarted(unstarted);
            done.into_iter().for_each(super::engine::drop_chunk);
        }
        self.finished = true;
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.exact_len.map(|n| n.saturating_sub(self.yielded));
        (0, left)
    }

    fn counts(&self) -> (usize, usize) {
        let pulled = match &self.source {
            Source::Inline { .. } => self.yielded,
            Source::Pool(engine) => engine.pulled,
        };
        (pulled, self.yielded)
    }
}

/// Results in input order as they complete: [`Parallel::run_iter`](crate::Parallel::run_iter).
///
/// Dropping it early stops dispatching (tasks not yet started never run); tasks already running
/// finish in the background and their results are dropped.
///
/// # Panics
/// `next()` resumes a task's panic when it reaches that task's position, and panics when the
/// [`timeout`](crate::Parallel::timeout) expires while waiting or the
/// [`deadline`](crate::Parallel::deadline) has passed. Either ends the iterator: later calls return
/// `None`. The same holds with an effective `n_jobs` of 1, where `next()` runs the task itself: it
/// panics if that task took longer than the timeout (the result is dropped).
pub struct RunIter<'p, I, F: Apply<A, Output = R>, A, R>(pub(crate) Stream<'p, I, Delayed<F, A>>);

/// `(index, result)` pairs in completion order: [`Parallel::run_unordered`](crate::Parallel::run_unordered).
///
/// Same drop, panic and timeout rules as [`RunIter`].
pub struct RunUnordered<'p, I, F: Apply<A, Output = R>, A, R>(
    pub(crate) Stream<'p, I, Delayed<F, A>>,
);

/// The stream lent to the closure of [`Parallel::scope_iter`](crate::Parallel::scope_iter):
/// results in input order; tasks may borrow. Same panic and timeout rules as [`RunIter`].
pub struct ScopedIter<'p, I, F: Apply<A, Output = R>, A, R>(
    pub(crate) Stream<'p, I, Delayed<F, A>>,
);

macro_rules! stream_iterator {
    ($name:ident, $item:ty, $map:expr) => {
        impl<I, F, A, R> Iterator for $name<'_, I, F, A, R>
        where
            I: Iterator<Item = Delayed<F, A>>,
            F: Apply<A, Output = R> + Send,
            A: Send,
            R: Send,
        {
            type Item = $item;
            fn next(&mut self) -> Option<$item> {
                self.0.next_result().map($map)
            }
            fn size_hint(&self) -> (usize, Option<usize>) {
                self.0.size_hint()
            }
        }

        impl<I, F, A, R> std::fmt::Debug for $name<'_, I, F, A, R>
        where
            I: Iterator<Item = Delayed<F, A>>,
            F: Apply<A, Output = R> + Send,
            A: Send,
            R: Send,
        {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let (pulled, yielded) = self.0.counts();
                f.debug_struct(stringify!($name))
                    .field("pulled", &pulled)
                    .field("yielded", &yielded)
                    .finish()
            }
        }
    };
}

stream_iterator!(RunIter, R, |(_, r)| r);
stream_iterator!(RunUnordered, (usize, R), |pair| pair);
stream_iterator!(ScopedIter, R, |(_, r)| r);

/// The panic of a stream (on threads or in worker processes) whose deadline passed before every
/// task had started.
pub(crate) fn stream_passed_deadline(limit: std::time::Duration) -> ! {
    panic!(
        "parjob: Parallel stream passed its deadline ({limit:?}); unstarted tasks were cancelled"
    )
}
