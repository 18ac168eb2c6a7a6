//! One `Parallel` call on a [`ProcessPool`]: batching, the dispatch window, crash bisection.
//!
//! The calling thread encodes tasks into batches (at most `window` batches queued or running at
//! once; the input is read lazily), and decodes outcomes as drivers reply. Batch sizes follow
//! joblib's auto-batching idea with a process-sized target: start at one task, measure the time
//! a batch takes *in the worker*, then size batches to last about [`TARGET_BATCH_NS`], shrinking
//! near the end of an input of known length so the workers finish together. With a timeout, every
//! batch holds one task, so the timeout applies to each task exactly.
//!
//! **Which task crashed.** When a worker dies in the middle of a batch of several tasks, the
//! outcomes it had not sent are lost, and so is the knowledge of which task killed it. The batch's
//! tasks are sent again one per batch, at the front of the queue: the culprit crashes again (and
//! is reported with its index), the others return their results. A task of such a batch may thus
//! run twice (tasks are expected to be pure functions of their arguments, as in joblib).

use super::death::WorkerDeath;
use super::pool::{CallState, Job, ProcessPool, Reply};
use super::wire;
use crate::parallel::batch::BatchSize;
use crate::parallel::delayed::{Apply, Delayed};
use crate::parallel::progress::Progress;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// What an automatically sized batch aims to last in the worker: 1 ms. A message each way costs
/// tens of microseconds of latency (hidden: several batches are in flight) and a few microseconds
/// of CPU, so this keeps the overhead near 1 % while a batch's arguments and outcomes still fit
/// in the caches of the caller, which encodes and decodes them.
const TARGET_BATCH_NS: f64 = 1_000_000.0;

/// At most this many tasks in one automatic batch (bounds the message and buffer sizes).
const MAX_AUTO_BATCH: usize = 16_384;

/// A batch is closed once its encoded arguments pass this size (it always holds at least one
/// task), so tasks with large arguments do not build huge messages.
const MAX_BATCH_BYTES: usize = 4 << 20;

/// Why one task produced no result.
#[derive(Debug)]
pub(crate) enum Failure {
    /// It panicked; the panic message.
    Panic(String),
    /// Its worker died while running it.
    Crashed(WorkerDeath),
    /// It ran past the timeout; its worker was killed.
    TimedOut,
}

/// Settings of one call.
pub(crate) struct Settings {
    pub(crate) pool: ProcessPool,
    pub(crate) workers: usize,
    pub(crate) batch: BatchSize,
    /// Batches queued or running at once.
    pub(crate) window: usize,
    pub(crate) timeout: Option<Duration>,
}

struct InFlight {
    /// The input position of each task of the batch.
    indices: Vec<usize>,
    /// Where each task's arguments start in `bytes` (plus the end).
    bounds: Vec<usize>,
    bytes: Arc<Vec<u8>>,
}

/// A finished batch being decoded.
struct Decoding {
    indices: Vec<usize>,
    /// The position in `indices` of the next outcome.
    next: usize,
    outcomes: Vec<u8>,
    /// Where the next outcome starts in `outcomes`.
    offset: usize,
}

/// The state of one call; yields `(index, outcome)` in completion order.
pub(crate) struct Call<'p, I, F, A, R> {
    tasks: I,
    exhausted: bool,
    next_index: usize,
    total: Option<usize>,
    runner: i64,
    settings: Settings,
    state: Arc<CallState>,
    tx: mpsc::Sender<Reply>,
    rx: mpsc::Receiver<Reply>,
    in_flight: HashMap<u64, InFlight>,
    next_batch: u64,
    task_ns: Option<f64>,
    /// A finished batch whose outcomes are decoded one at a time, as they are asked for (so a
    /// large batch is never materialised twice).
    decoding: Option<Decoding>,
    /// Outcomes known without decoding (crashes, timeouts, unencodable arguments).
    done: VecDeque<(usize, Result<R, Failure>)>,
    stopped: bool,
    progress: Progress<'p>,
    completed: usize,
    finished: bool,
    _types: PhantomData<fn(F, A)>,
}

impl<'p, I, F, A, R> Call<'p, I, F, A, R>
where
    I: Iterator<Item = Delayed<F, A>>,
    F: Apply<A, Output = R> + Copy + 'static,
    A: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    pub(crate) fn new(tasks: I, settings: Settings, progress: Progress<'p>) -> Self {
        let total = match tasks.size_hint() {
            (low, Some(high)) if low == high => Some(low),
            _ => None,
        };
        progress.announce("Processes", settings.workers);
        let (tx, rx) = mpsc::channel();
        Call {
            tasks,
            exhausted: false,
            next_index: 0,
            total,
            runner: wire::runner_offset::<F, A, R>(),
            settings,
            state: Arc::new(CallState::default()),
            tx,
            rx,
            in_flight: HashMap::new(),
            next_batch: 0,
            task_ns: None,
            decoding: None,
            done: VecDeque::new(),
            stopped: false,
            progress,
            completed: 0,
            finished: false,
            _types: PhantomData,
        }
    }

    /// Stops dispatching: tasks not yet sent never run; batches already sent finish.
    pub(crate) fn stop(&mut self) {
        self.stopped = true;
        self.state.cancelled.store(true, Ordering::Relaxed);
    }

    /// The next finished task, in completion order; `None` once every dispatched task is done
    /// and the input is exhausted (or the call was stopped).
    pub(crate) fn next_completed(&mut self) -> Option<(usize, Result<R, Failure>)> {
        loop {
            if let Some(item) = self.decode_next().or_else(|| self.done.pop_front()) {
                self.completed += 1;
                self.progress.update(self.completed);
                return Some(item);
            }
            self.fill();
            if self.in_flight.is_empty() {
                if self.done.is_empty() && self.decoding.is_none() {
                    if !self.finished {
                        self.finished = true;
                        self.progress.finish(self.completed);
                    }
                    return None;
                }
                continue;
            }
            // Cannot fail: `self.tx` keeps the channel open, and every driver replies to every
            // job it takes.
            let Ok(reply) = self.rx.recv() else {
                return None;
            };
            self.absorb(reply);
        }
    }

    fn decode_next(&mut self) -> Option<(usize, Result<R, Failure>)> {
        let decoding = self.decoding.as_mut()?;
        let Some(&index) = decoding.indices.get(decoding.next) else {
            self.decoding = None;
            return None;
        };
        decoding.next += 1;
        let mut input = &decoding.outcomes[decoding.offset..];
        let outcome = wire::read_outcome::<R>(&mut input).map_err(Failure::Panic);
        decoding.offset = decoding.outcomes.len() - input.len();
        Some((index, outcome))
    }

    fn batch_size(&self) -> usize {
        if self.settings.timeout.is_some() {
            return 1;
        }
        let size = match (self.settings.batch, self.task_ns) {
            (BatchSize::Fixed(n), _) => return n.max(1),
            (BatchSize::Auto, None) => 1,
            (BatchSize::Auto, Some(ns)) => {
                ((TARGET_BATCH_NS / ns.max(1.0)) as usize).clamp(1, MAX_AUTO_BATCH)
            }
        };
        match self.total {
            Some(total) => {
                let left = total.saturating_sub(self.next_index);
                size.min((left / (4 * self.settings.workers.max(1))).max(1))
            }
            None => size,
        }
    }

    fn fill(&mut self) {
        while !self.stopped && !self.exhausted && self.in_flight.len() < self.settings.window {
            let size = self.batch_size();
            let mut bytes = Vec::with_capacity(16 + 16 * size);
            bytes.extend_from_slice(&[0; 16]);
            let mut indices = Vec::with_capacity(size);
            let mut bounds = vec![16];
            while indices.len() < size && bytes.len() < MAX_BATCH_BYTES {
                let Some(task) = self.tasks.next() else {
                    self.exhausted = true;
                    break;
                };
                let index = self.next_index;
                self.next_index += 1;
                let (_f, args) = task.into_parts();
                let start = bytes.len();
                match bincode::serialize_into(&mut bytes, &args) {
                    Ok(()) => {
                        indices.push(index);
                        bounds.push(bytes.len());
                    }
                    Err(error) => {
                        bytes.truncate(start);
                        let message =
                            format!("parjob: cannot encode the task's arguments: {error}");
                        self.done.push_back((index, Err(Failure::Panic(message))));
                    }
                }
            }
            if indices.is_empty() {
                continue;
            }
            bytes[..16].copy_from_slice(&wire::batch_header(self.runner, indices.len() as u64));
            self.send(indices, bounds, Arc::new(bytes), false);
        }
    }

    fn send(&mut self, indices: Vec<usize>, bounds: Vec<usize>, bytes: Arc<Vec<u8>>, urgent: bool) {
        let batch = self.next_batch;
        self.next_batch += 1;
        let job = Job {
            call: Arc::clone(&self.state),
            batch,
            bytes: Arc::clone(&bytes),
            timeout: self.settings.timeout,
            reply: self.tx.clone(),
        };
        self.in_flight.insert(
            batch,
            InFlight {
                indices,
                bounds,
                bytes,
            },
        );
        self.settings.pool.submit(job, urgent);
    }

    fn absorb(&mut self, reply: Reply) {
        match reply {
            Reply::Done {
                batch,
                elapsed_ns,
                outcomes,
            } => {
                let Some(flight) = self.in_flight.remove(&batch) else {
                    return;
                };
                let per_task = elapsed_ns as f64 / flight.indices.len() as f64;
                self.task_ns = Some(match self.task_ns {
                    None => per_task,
                    Some(old) => 0.5 * old + 0.5 * per_task,
                });
                // Only absorbed once the previous batch is fully decoded (`next_completed`
                // decodes before it waits for a reply).
                debug_assert!(self.decoding.is_none());
                self.decoding = Some(Decoding {
                    indices: flight.indices,
                    next: 0,
                    outcomes,
                    offset: 0,
                });
            }
            Reply::Crashed { batch, death } => {
                let Some(flight) = self.in_flight.remove(&batch) else {
                    return;
                };
                if flight.indices.len() == 1 {
                    self.done
                        .push_back((flight.indices[0], Err(Failure::Crashed(death))));
                    return;
                }
                // Bisect: each task again on its own, first task first in the queue.
                for (i, &index) in flight.indices.iter().enumerate().rev() {
                    let args = &flight.bytes[flight.bounds[i]..flight.bounds[i + 1]];
                    let mut bytes = Vec::with_capacity(16 + args.len());
                    bytes.extend_from_slice(&wire::batch_header(self.runner, 1));
                    bytes.extend_from_slice(args);
                    let end = bytes.len();
                    self.send(vec![index], vec![16, end], Arc::new(bytes), true);
                }
            }
            Reply::TimedOut { batch } => {
                if let Some(flight) = self.in_flight.remove(&batch) {
                    for index in flight.indices {
                        self.done.push_back((index, Err(Failure::TimedOut)));
                    }
                }
            }
            Reply::Skipped { batch } => {
                self.in_flight.remove(&batch);
            }
        }
    }
}

impl<I, F, A, R> Drop for Call<'_, I, F, A, R> {
    fn drop(&mut self) {
        // Batches still queued are skipped; running ones finish and their replies are dropped.
        self.state.cancelled.store(true, Ordering::Relaxed);
    }
}

/// Re-orders a call's completions into input order.
pub(crate) struct Ordered<'p, I, F, A, R> {
    pub(crate) call: Call<'p, I, F, A, R>,
    /// Slot `k` holds the outcome of task `next + k` once it has arrived. Indices are assigned in
    /// input order and at most the dispatch window is outstanding, so this stays small.
    pending: VecDeque<Option<Result<R, Failure>>>,
    next: usize,
}

impl<'p, I, F, A, R> Ordered<'p, I, F, A, R>
where
    I: Iterator<Item = Delayed<F, A>>,
    F: Apply<A, Output = R> + Copy + 'static,
    A: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    pub(crate) fn new(call: Call<'p, I, F, A, R>) -> Self {
        Ordered {
            call,
            pending: VecDeque::new(),
            next: 0,
        }
    }

    /// The next outcome in input order (positions skipped by a stopped call are passed over).
    pub(crate) fn next_in_order(&mut self) -> Option<(usize, Result<R, Failure>)> {
        loop {
            if let Some(Some(_)) = self.pending.front() {
                let outcome = self.pending.pop_front().flatten()?;
                self.next += 1;
                return Some((self.next - 1, outcome));
            }
            match self.call.next_completed() {
                Some((index, outcome)) if index == self.next && self.pending.is_empty() => {
                    self.next += 1;
                    return Some((index, outcome));
                }
                Some((index, outcome)) => {
                    let slot = index - self.next;
                    if self.pending.len() <= slot {
                        self.pending.resize_with(slot + 1, || None);
                    }
                    self.pending[slot] = Some(outcome);
                }
                None => {
                    // Only positions a stopped call never ran are missing: skip them.
                    while let Some(front) = self.pending.pop_front() {
                        self.next += 1;
                        if let Some(outcome) = front {
                            return Some((self.next - 1, outcome));
                        }
                    }
                    return None;
                }
            }
        }
    }
}
