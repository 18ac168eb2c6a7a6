//! One `Parallel` call on a [`ProcessPool`]: batching, the dispatch window, crash bisection.
//!
//! The calling thread encodes tasks into batches (at most `window` batches queued or running at
//! once; the input is read lazily), and decodes outcomes as drivers reply. Batch sizes follow
//! joblib's auto-batching idea with a process-sized target: start at one task, measure the time
//! a batch takes *in the worker*, then size batches to last about [`TARGET_BATCH_NS`], shrinking
//! near the end of an input of known length so the workers finish together. With a timeout, every
//! batch holds one task, so the timeout applies to each task exactly.
//!
//! **Order.** A batch holds consecutive tasks. Finished batches wait, undecoded, in `ready`
//! (keyed by their first task); the ordered iterator decodes the one that comes next in input
//! order, the unordered one whichever finished first. Outcomes are decoded one at a time as they
//! are asked for, so a large batch is never held twice.
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
use std::collections::{BTreeMap, HashMap};
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

/// A batch sent to a worker: tasks `first .. first + count`.
struct InFlight {
    first: usize,
    count: usize,
    bytes: Arc<Vec<u8>>,
}

/// What a finished batch, or a task that failed on its own, left for the caller.
enum Ready<R> {
    /// A batch's encoded outcomes, decoded one at a time.
    Batch(Decoding),
    /// One task's outcome (a crash, a timeout, arguments that could not be encoded).
    Task(Result<R, Failure>),
}

/// A finished batch being decoded: tasks `first + next .. first + count` are still to come.
struct Decoding {
    first: usize,
    count: usize,
    next: usize,
    outcomes: Vec<u8>,
    /// Where the next outcome starts in `outcomes`.
    offset: usize,
}

/// The state of one call; yields `(index, outcome)` in input order (`ordered`) or in completion
/// order.
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
    /// Finished work not yet handed out, keyed by its first task's index.
    ready: BTreeMap<usize, Ready<R>>,
    /// The batch being handed out.
    current: Option<Decoding>,
    ordered: bool,
    /// In ordered mode: the index of the next outcome to hand out.
    next_out: usize,
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
    pub(crate) fn new(tasks: I, settings: Settings, progress: Progress<'p>, ordered: bool) -> Self {
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
            ready: BTreeMap::new(),
            current: None,
            ordered,
            next_out: 0,
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

    /// The next finished task (in input order if `ordered`); `None` once every dispatched task
    /// is done and the input is exhausted (or the call was stopped: in ordered mode the
    /// positions it never ran are skipped).
    pub(crate) fn next_completed(&mut self) -> Option<(usize, Result<R, Failure>)> {
        loop {
            if let Some(item) = self.decode_next() {
                return Some(self.hand_out(item));
            }
            let key = match self.ready.first_key_value() {
                Some((&key, _)) if !self.ordered || key == self.next_out => Some(key),
                _ => None,
            };
            if let Some(key) = key {
                if let Some(item) = self.take_ready(key) {
                    return Some(self.hand_out(item));
                }
                continue;
            }
            self.fill();
            if self.in_flight.is_empty() {
                match self.ready.first_key_value() {
                    // Ordered, after a stop: skip the positions that never ran.
                    Some((&key, _)) => {
                        self.next_out = key;
                        continue;
                    }
                    None => {
                        if !self.finished {
                            self.finished = true;
                            self.progress.finish(self.completed);
                        }
                        return None;
                    }
                }
            }
            // Cannot fail: `self.tx` keeps the channel open, and every driver replies to every
            // job it takes.
            let Ok(reply) = self.rx.recv() else {
                return None;
            };
            self.absorb(reply);
        }
    }

    fn hand_out(&mut self, item: (usize, Result<R, Failure>)) -> (usize, Result<R, Failure>) {
        self.next_out = item.0 + 1;
        self.completed += 1;
        self.progress.update(self.completed);
        item
    }

    /// Moves `ready[key]` out: a single task's outcome is returned, a batch becomes `current`.
    fn take_ready(&mut self, key: usize) -> Option<(usize, Result<R, Failure>)> {
        match self.ready.remove(&key)? {
            Ready::Task(outcome) => Some((key, outcome)),
            Ready::Batch(decoding) => {
                self.current = Some(decoding);
                None
            }
        }
    }

    fn decode_next(&mut self) -> Option<(usize, Result<R, Failure>)> {
        let decoding = self.current.as_mut()?;
        if decoding.next == decoding.count {
            self.current = None;
            return None;
        }
        let index = decoding.first + decoding.next;
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
            let first = self.next_index;
            let mut count = 0;
            while count < size && bytes.len() < MAX_BATCH_BYTES {
                let Some(task) = self.tasks.next() else {
                    self.exhausted = true;
                    break;
                };
                let (_f, args) = task.into_parts();
                let start = bytes.len();
                if let Err(error) = bincode::serialize_into(&mut bytes, &args) {
                    // This task fails on its own; the batch (consecutive tasks) ends before it.
                    bytes.truncate(start);
                    let message = format!("parjob: cannot encode the task's arguments: {error}");
                    self.ready
                        .insert(first + count, Ready::Task(Err(Failure::Panic(message))));
                    self.next_index = first + count + 1;
                    break;
                }
                count += 1;
            }
            if count == 0 {
                continue;
            }
            if self.next_index == first {
                self.next_index = first + count;
            }
            bytes[..16].copy_from_slice(&wire::batch_header(self.runner, count as u64));
            self.send(first, count, Arc::new(bytes), false);
        }
    }

    fn send(&mut self, first: usize, count: usize, bytes: Arc<Vec<u8>>, urgent: bool) {
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
                first,
                count,
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
                let per_task = elapsed_ns as f64 / flight.count as f64;
                self.task_ns = Some(match self.task_ns {
                    None => per_task,
                    Some(old) => 0.5 * old + 0.5 * per_task,
                });
                let decoding = Decoding {
                    first: flight.first,
                    count: flight.count,
                    next: 0,
                    outcomes,
                    offset: 0,
                };
                self.ready.insert(flight.first, Ready::Batch(decoding));
            }
            Reply::Crashed { batch, death } => {
                let Some(flight) = self.in_flight.remove(&batch) else {
                    return;
                };
                if flight.count == 1 {
                    let failure = Ready::Task(Err(Failure::Crashed(death)));
                    self.ready.insert(flight.first, failure);
                    return;
                }
                self.bisect(flight);
            }
            Reply::TimedOut { batch } => {
                if let Some(flight) = self.in_flight.remove(&batch) {
                    for index in flight.first..flight.first + flight.count {
                        self.ready
                            .insert(index, Ready::Task(Err(Failure::TimedOut)));
                    }
                }
            }
            Reply::Skipped { batch } => {
                self.in_flight.remove(&batch);
            }
        }
    }

    /// Sends each task of a batch whose worker died again on its own, first task first in the
    /// queue. The arguments' boundaries are found by decoding them here.
    fn bisect(&mut self, flight: InFlight) {
        let all = &flight.bytes[16..];
        let mut rest = all;
        let mut bounds = vec![0];
        for _ in 0..flight.count {
            if bincode::deserialize_from::<_, A>(&mut rest).is_err() {
                break;
            }
            bounds.push(all.len() - rest.len());
        }
        if bounds.len() != flight.count + 1 {
            // Cannot happen (these bytes were encoded from `A` here); fail the whole batch
            // rather than guess.
            let message = "parjob: cannot split a crashed batch".to_owned();
            for index in flight.first..flight.first + flight.count {
                self.ready
                    .insert(index, Ready::Task(Err(Failure::Panic(message.clone()))));
            }
            return;
        }
        for i in (0..flight.count).rev() {
            let args = &all[bounds[i]..bounds[i + 1]];
            let mut bytes = Vec::with_capacity(16 + args.len());
            bytes.extend_from_slice(&wire::batch_header(self.runner, 1));
            bytes.extend_from_slice(args);
            self.send(flight.first + i, 1, Arc::new(bytes), true);
        }
    }
}

impl<I, F, A, R> Drop for Call<'_, I, F, A, R> {
    fn drop(&mut self) {
        // Batches still queued are skipped; running ones finish and their replies are dropped.
        self.state.cancelled.store(true, Ordering::Relaxed);
    }
}
