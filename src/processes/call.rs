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
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// What an automatically sized batch aims to last in the worker: 2 ms, so the cost of one
/// message each way (tens of microseconds, see `docs/benchmarks.md`) stays near 1 %.
const TARGET_BATCH_NS: f64 = 2_000_000.0;

/// At most this many tasks in one automatic batch (bounds the message size).
const MAX_AUTO_BATCH: usize = 100_000;

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
            if let Some(item) = self.done.pop_front() {
                self.completed += 1;
                self.progress.update(self.completed);
                return Some(item);
            }
            self.fill();
            if self.in_flight.is_empty() {
                if self.done.is_empty() {
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
            while indices.len() < size {
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
                let mut input = &outcomes[..];
                for index in flight.indices {
                    let outcome = wire::read_outcome::<R>(&mut input).map_err(Failure::Panic);
                    self.done.push_back((index, outcome));
                }
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
    pending: BTreeMap<usize, Result<R, Failure>>,
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
            pending: BTreeMap::new(),
            next: 0,
        }
    }

    /// The next outcome in input order (positions skipped by a stopped call are passed over).
    pub(crate) fn next_in_order(&mut self) -> Option<(usize, Result<R, Failure>)> {
        loop {
            if let Some(outcome) = self.pending.remove(&self.next) {
                self.next += 1;
                return Some((self.next - 1, outcome));
            }
            match self.call.next_completed() {
                Some((index, outcome)) => {
                    self.pending.insert(index, outcome);
                }
                None => {
                    let (index, outcome) = self.pending.pop_first()?;
                    self.next = index + 1;
                    return Some((index, outcome));
                }
            }
        }
    }
}
