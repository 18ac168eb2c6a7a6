//! One `Parallel` call on a [`ProcessPool`]: batching, the dispatch window, crash bisection.
//!
//! The calling thread encodes tasks into batches (at most `window` batches queued or running at
//! once; the input is read lazily), straight into a shared-memory slab of the pool when one is
//! free ([`shm`](super::shm)), else into the request message, and decodes outcomes as drivers
//! reply. Batch sizes follow joblib's auto-batching idea with a process-sized target: start at
//! one task, measure the time a batch takes *in the worker*, then size batches to last about
//! [`TARGET_BATCH_NS`], shrinking near the end of an input of known length so the workers finish
//! together (but not below [`MIN_TAIL_BATCH_NS`]). With a timeout, every batch holds one task, so
//! the timeout applies to each task exactly.
//!
//! **Order.** A batch holds consecutive tasks. Finished batches wait, undecoded, in `ready`
//! (keyed by their first task); the ordered iterator decodes the one that comes next in input
//! order, the unordered one whichever finished first. The iterators decode outcomes one at a time
//! as they are asked for, so a large batch is never held twice; `run_in_processes` ([`Call::drain`])
//! decodes a batch in one loop per run of results between failures, straight into the output
//! vector. Both check the outcomes' footer and failure records first (malformed ones fail every
//! task of the batch). A result whose frame is whole but does not decode fails its own task with
//! the error; at a frame that is not whole they stop reading, and the rest of the batch fails
//! with "corrupt" (where their values start is unknown): typed failures, never a guess. Result
//! frames that do not end exactly at the end of the results area fail too: in `drain` the whole
//! batch, in the iterators the last result and the tasks after it (the results before it are
//! handed out already).
//!
//! **Which task crashed.** When a worker dies in the middle of a batch of several tasks, the
//! outcomes it had not sent are lost, and so is the knowledge of which task killed it. The batch's
//! tasks are sent again one per batch, at the front of the queue: the culprit crashes again (and
//! is reported with its index), the others return their results. A task of such a batch may thus
//! run twice (tasks are expected to be pure functions of their arguments, as in joblib).

use super::death::WorkerDeath;
use super::pool::{CallState, Job, Outcomes, ProcessPool, Reply};
use super::shm::Lease;
use super::wire::{self, Functions, SliceWriter};
use super::ProcessFn;
use crate::parallel::batch::BatchSize;
use crate::parallel::delayed::Delayed;
use crate::parallel::progress::Progress;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// What an automatically sized batch aims to last in the worker: 1 ms. A message each way costs
/// tens of microseconds of latency (hidden: several batches are in flight) and a few microseconds
/// of CPU, so this keeps the overhead near 1 % while a batch's arguments and outcomes still fit
/// in the caches of the caller, which encodes and decodes them.
const TARGET_BATCH_NS: f64 = 1_000_000.0;

/// At most this many tasks in one automatic batch (bounds the message and buffer sizes).
const MAX_AUTO_BATCH: usize = 32_768;

/// Near the end of an input of known length, batches shrink so the workers finish together, but
/// not below this much work: a batch's round trip costs tens of microseconds of latency, so a
/// tail of one-task batches would cost more than the imbalance it avoids.
const MIN_TAIL_BATCH_NS: f64 = 100_000.0;

/// A batch may be sent to a worker that is still running another ([`Job::prefetch`]) only if it is
/// expected to take at most this long (its tasks times the measured time per task): a batch sent
/// ahead is committed to that worker, so a long one could keep tasks waiting behind a busy worker
/// while another falls idle. Twice [`TARGET_BATCH_NS`], so automatic batches of short tasks are
/// sent ahead despite the noise in the estimate; batches of slow tasks, or of tasks not measured
/// yet, are not.
const MAX_PREFETCH_NS: f64 = 2.0 * TARGET_BATCH_NS;

/// A batch is sent ahead to a busy worker only if it holds at least this many tasks. The time
/// per task is a mean (the worker reports a batch's time, not its tasks'): over a few tasks of
/// uneven length one long task can make the batch far longer than the estimate, and a batch
/// sent ahead is committed to a worker that may be busy for that long while another idles.
/// Over 16 tasks or more the spread mostly averages out; automatic batches of short tasks hold
/// hundreds or thousands.
const MIN_PREFETCH_TASKS: usize = 16;

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
    /// `Parallel::deadline`: the whole call's budget, and when it ends.
    pub(crate) deadline: Option<(Duration, Instant)>,
}

/// A batch sent to a worker: tasks `first .. first + count`, all calling one function.
struct InFlight {
    first: usize,
    count: usize,
    functions: Functions,
    args: Args,
}

/// Where a batch's encoded arguments are (kept to re-send a crashed batch's tasks).
enum Args {
    /// In the request: its bytes after the header.
    Inline(Arc<Vec<u8>>),
    /// The first `len` bytes of a slab's argument area.
    Slab(Arc<Lease>, usize),
}

impl Args {
    fn bytes(&self) -> &[u8] {
        match self {
            Args::Inline(request) => &request[wire::HEADER..],
            Args::Slab(lease, len) => lease.args(*len),
        }
    }
}

/// Where a finished batch's encoded outcomes are.
enum Source {
    Inline(Vec<u8>),
    /// The first `len` bytes of the slab's outcome area (the lease keeps the slab ours).
    Slab(Arc<Lease>, usize),
}

impl Source {
    fn bytes(&self) -> &[u8] {
        match self {
            Source::Inline(bytes) => bytes,
            Source::Slab(lease, len) => lease.outcomes(*len),
        }
    }
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
    outcomes: Source,
    /// Where the next value starts in `outcomes`.
    offset: usize,
    /// The values are `outcomes`' first `values_len` bytes ([`wire::split_outcomes`]).
    values_len: usize,
    /// The failed tasks' `(position in the batch, message)`, in order.
    failures: Vec<(usize, String)>,
    /// `failures[next_failure..]` are still to come.
    next_failure: usize,
    /// Set once bytes did not decode: every task still to come fails with this message (where
    /// their values start is unknown).
    broken: Option<String>,
}

impl Decoding {
    /// A finished batch of tasks `first .. first + count`, its outcomes checked.
    fn new(first: usize, count: usize, outcomes: Source) -> Decoding {
        let (values_len, failures, broken) = match wire::split_outcomes(outcomes.bytes(), count) {
            Ok((values_len, failures)) => (values_len, failures, None),
            Err(message) => (0, Vec::new(), Some(message)),
        };
        Decoding {
            first,
            count,
            next: 0,
            outcomes,
            offset: 0,
            values_len,
            failures,
            next_failure: 0,
            broken,
        }
    }

    /// The next task's outcome, `None` once the batch is done.
    fn next<R: DeserializeOwned>(&mut self) -> Option<(usize, Result<R, Failure>)> {
        if self.next == self.count {
            return None;
        }
        let position = self.next;
        self.next += 1;
        let index = self.first + position;
        if let Some(message) = &self.broken {
            return Some((index, Err(Failure::Panic(message.clone()))));
        }
        if let Some((at, message)) = self.failures.get_mut(self.next_failure) {
            if *at == position {
                self.next_failure += 1;
                return Some((index, Err(Failure::Panic(std::mem::take(message)))));
            }
        }
        let values = &self.outcomes.bytes()[..self.values_len];
        let mut input = &values[self.offset..];
        let outcome = match wire::read_value::<R>(&mut input) {
            Ok(value) => Ok(value),
            // Its frame was read: the next result is where it was written.
            Err(wire::Unread::Value(message)) => Err(Failure::Panic(message)),
            Err(wire::Unread::Frame) => {
                // The next frame's start is unknown: the rest of the batch cannot be read.
                self.broken = Some(wire::CORRUPT.to_owned());
                return Some((index, Err(Failure::Panic(wire::CORRUPT.to_owned()))));
            }
        };
        self.offset = values.len() - input.len();
        // The batch's last result frame (every task after it failed) must end the results
        // area. If it does not, some frame's length was wrong: the results handed out cannot be
        // taken back, but this one and the rest fail.
        let last = self.count - self.next == self.failures.len() - self.next_failure;
        if last && self.offset != self.values_len {
            self.broken = Some(wire::CORRUPT.to_owned());
            return Some((index, Err(Failure::Panic(wire::UNREAD.to_owned()))));
        }
        Some((index, outcome))
    }

    /// Every outcome still to come, in one pass: the results appended to `values`, the failures
    /// handed to `failed` with their task index. Runs of returned tasks are decoded in one tight
    /// loop each ([`wire::read_values`]). Results that decode but leave bytes of the results
    /// area unread are not handed out: every task of the batch fails ([`wire::UNREAD`]).
    fn drain<R: DeserializeOwned>(
        mut self,
        values: &mut Vec<R>,
        mut handed: impl FnMut(usize, Failure),
    ) {
        let start = values.len();
        let first_task = self.first + self.next;
        // Handed out once the results are known to be whole (no allocation without failures).
        let mut failures = Vec::new();
        let mut failed = |index, failure| failures.push((index, failure));
        while self.next < self.count && self.broken.is_none() {
            let end = self
                .failures
                .get(self.next_failure)
                .map_or(self.count, |&(at, _)| at);
            if end > self.next {
                let values_bytes = &self.outcomes.bytes()[..self.values_len];
                let mut input = &values_bytes[self.offset..];
                let before = values.len();
                let read = wire::read_values(&mut input, end - self.next, values);
                self.offset = values_bytes.len() - input.len();
                self.next += values.len() - before;
                match read {
                    Ok(()) => {}
                    Err(wire::Unread::Value(message)) => {
                        // This task fails alone; its frame was read, so the loop goes on at
                        // the next task (a value, or the failure at `end`).
                        failed(self.first + self.next, Failure::Panic(message));
                        self.next += 1;
                        continue;
                    }
                    Err(wire::Unread::Frame) => {
                        failed(
                            self.first + self.next,
                            Failure::Panic(wire::CORRUPT.to_owned()),
                        );
                        self.next += 1;
                        self.broken = Some(wire::CORRUPT.to_owned());
                        break;
                    }
                }
            }
            // The failure at `end` (none once `end` is the batch's end).
            match self.next::<R>() {
                Some((_, Ok(value))) => values.push(value),
                Some((index, Err(failure))) => failed(index, failure),
                None => {}
            }
        }
        while let Some((index, outcome)) = self.next::<R>() {
            match outcome {
                Ok(value) => values.push(value),
                Err(failure) => failed(index, failure),
            }
        }
        if self.broken.is_none() && self.offset != self.values_len {
            values.truncate(start);
            for index in first_task..self.first + self.count {
                handed(index, Failure::Panic(wire::UNREAD.to_owned()));
            }
            return;
        }
        for (index, failure) in failures {
            handed(index, failure);
        }
    }
}

/// The state of one call; yields `(index, outcome)` in input order (`ordered`) or in completion
/// order.
pub(crate) struct Call<'p, I, F, A, R> {
    /// The input: `None` only once the call is being dropped.
    tasks: Option<I>,
    /// Task `next_index`, taken from `tasks` but not yet in a batch (its arguments did not fit
    /// the slab being filled, or it calls another function than the batch's tasks).
    pending: Option<(F, A)>,
    exhausted: bool,
    next_index: usize,
    total: Option<usize>,
    /// The checked offset of this call's runner ([`wire::runner_offset`]), or why it cannot be
    /// sent (then every task fails with that message).
    runner: Result<i64, String>,
    /// The last function checked ([`wire::checked_offset`]): its address and the outcome, so a
    /// call of one function checks it once.
    checked: Option<(usize, Result<i64, String>)>,
    settings: Settings,
    state: Arc<CallState>,
    tx: mpsc::Sender<Reply>,
    rx: mpsc::Receiver<Reply>,
    in_flight: HashMap<u64, InFlight>,
    next_batch: u64,
    /// The measured time per task (see `absorb`); `None` until a batch has finished.
    task_ns: Option<f64>,
    /// Recent batches' time in the worker and their tasks, each sum halved at every reply.
    timed: (f64, f64),
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
    /// A panic from user code in this thread (the input, an argument's `Serialize`, a result's
    /// `Deserialize`, the progress callback) went through [`Call::next_completed`]: the call is
    /// over (see there).
    ended: bool,
    /// The deadline passed with tasks not yet sent: the budget, until the caller has taken it
    /// ([`Call::take_deadline_miss`]).
    deadline_miss: Option<Duration>,
    _types: PhantomData<fn(F)>,
}

impl<'p, I, F, A, R> Call<'p, I, F, A, R>
where
    I: Iterator<Item = Delayed<F, A>>,
    F: ProcessFn<A, Output = R>,
    A: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    /// `total`: the input's length when its `size_hint` is exact, asked by the caller (once,
    /// under a catch: `size_hint` is user code).
    pub(crate) fn new(
        tasks: I,
        total: Option<usize>,
        settings: Settings,
        progress: Progress<'p>,
        ordered: bool,
    ) -> Self {
        progress.announce("Processes", settings.workers);
        let (tx, rx) = mpsc::channel();
        let state = Arc::new(CallState {
            deadline: settings.deadline.map(|(_, at)| at),
            ..CallState::default()
        });
        Call {
            tasks: Some(tasks),
            pending: None,
            exhausted: false,
            next_index: 0,
            total,
            runner: wire::runner_offset::<F, A, R>(),
            checked: None,
            settings,
            state,
            tx,
            rx,
            in_flight: HashMap::new(),
            next_batch: 0,
            task_ns: None,
            timed: (0.0, 0.0),
            ready: BTreeMap::new(),
            current: None,
            ordered,
            next_out: 0,
            stopped: false,
            progress,
            completed: 0,
            finished: false,
            ended: false,
            deadline_miss: None,
            _types: PhantomData,
        }
    }

    /// The input's length, when its `size_hint` was exact.
    pub(crate) fn total(&self) -> Option<usize> {
        self.total
    }

    /// The call's deadline passed before every task had started: `Some((budget, tasks
    /// completed))`, once (the call stopped then; what it handed out before `None` ran before).
    /// `None` after a panic from user code ended the call: it reported that instead.
    pub(crate) fn take_deadline_miss(&mut self) -> Option<(Duration, usize)> {
        if self.ended {
            return None;
        }
        self.deadline_miss
            .take()
            .map(|budget| (budget, self.completed))
    }

    /// Stops dispatching: tasks not yet sent never run; batches already sent finish.
    pub(crate) fn stop(&mut self) {
        self.stopped = true;
        self.state.cancelled.store(true, Ordering::Relaxed);
    }

    /// The next finished task (in input order if `ordered`); `None` once every dispatched task
    /// is done and the input is exhausted (or the call was stopped: in ordered mode the
    /// positions it never ran are skipped).
    ///
    /// A panic from user code on the way (the input, an argument's `Serialize`, a result's
    /// `Deserialize`, the progress callback) is resumed here and ends the call: it stops, and
    /// later calls return `None`. Its state cannot be trusted after such a panic: a result whose
    /// `Deserialize` panicked leaves the read position at its start (the next task would be
    /// handed that task's value), a panic while a batch is encoded loses the tasks already taken
    /// from the input for it (the next batch would start at a stale index).
    pub(crate) fn next_completed(&mut self) -> Option<(usize, Result<R, Failure>)> {
        if self.ended {
            return None;
        }
        match crate::pool::unwind::halt_unwinding(|| self.next_outcome()) {
            Ok(item) => item,
            Err(payload) => {
                self.ended = true;
                self.stop();
                crate::pool::unwind::resume_unwinding(payload)
            }
        }
    }

    fn next_outcome(&mut self) -> Option<(usize, Result<R, Failure>)> {
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
            if !self.advance() {
                return None;
            }
        }
    }

    /// Every outcome of an ordered call, in input order: the results appended to `values`, the
    /// failures handed to `failed` with their task index. Whole batches are decoded in one pass,
    /// straight from where the worker left them, and the progress is updated once per batch.
    pub(crate) fn drain(&mut self, values: &mut Vec<R>, mut failed: impl FnMut(usize, Failure)) {
        debug_assert!(self.ordered);
        loop {
            if let Some(item) = self.decode_next() {
                match self.hand_out(item) {
                    (_, Ok(value)) => values.push(value),
                    (index, Err(failure)) => failed(index, failure),
                }
                continue;
            }
            let key = match self.ready.first_key_value() {
                Some((&key, _)) if key == self.next_out => Some(key),
                _ => None,
            };
            match key.and_then(|key| self.ready.remove(&key).map(|ready| (key, ready))) {
                Some((key, Ready::Task(outcome))) => match self.hand_out((key, outcome)) {
                    (_, Ok(value)) => values.push(value),
                    (index, Err(failure)) => failed(index, failure),
                },
                Some((_, Ready::Batch(decoding))) => {
                    // Keep the workers fed before spending time on decoding.
                    self.fill();
                    let done = decoding.count - decoding.next;
                    self.next_out = decoding.first + decoding.count;
                    decoding.drain(values, &mut failed);
                    self.completed += done;
                    self.progress.update(self.completed);
                }
                None => {
                    if !self.advance() {
                        return;
                    }
                }
            }
        }
    }

    /// Dispatches what the window allows and absorbs one reply; `false` once every dispatched
    /// task is done and the input is exhausted (or the call stopped).
    fn advance(&mut self) -> bool {
        self.fill();
        if self.in_flight.is_empty() {
            match self.ready.first_key_value() {
                // Ordered, after the deadline stopped the call: it ends at the first position that
                // never ran, as a thread stream does (its next `next()` reports the deadline). The
                // outcomes after that position are not handed out: dropped here, contained.
                Some(_) if self.ordered && self.deadline_miss.is_some() => {
                    std::mem::take(&mut self.ready)
                        .into_values()
                        .for_each(crate::pool::unwind::drop_contained);
                    return false;
                }
                // Ordered, after a stop: skip the positions that never ran.
                Some((&key, _)) => {
                    self.next_out = key;
                    return true;
                }
                None => {
                    if !self.finished {
                        self.finished = true;
                        self.progress.finish(self.completed);
                    }
                    return false;
                }
            }
        }
        // Cannot fail: `self.tx` keeps the channel open, and every job answers exactly once
        // (a job dropped unanswered, by a driver that unwound, answers for itself).
        let Ok(reply) = self.rx.recv() else {
            return false;
        };
        self.absorb(reply);
        true
    }

    fn hand_out(&mut self, item: (usize, Result<R, Failure>)) -> (usize, Result<R, Failure>) {
        self.next_out = item.0 + 1;
        self.completed += 1;
        let (progress, completed) = (&mut self.progress, self.completed);
        if let Err(payload) = crate::pool::unwind::halt_unwinding(|| progress.update(completed)) {
            // The callback panicked: `item` is a user value whose `Drop` may panic too, which
            // would abort the process if it ran while the callback's panic unwinds.
            crate::pool::unwind::drop_contained(item);
            crate::pool::unwind::resume_unwinding(payload);
        }
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
        let item = self.current.as_mut()?.next::<R>();
        if item.is_none() {
            self.current = None;
        }
        item
    }

    fn batch_size(&self) -> usize {
        if self.settings.timeout.is_some() {
            return 1;
        }
        let (size, floor) = match (self.settings.batch, self.task_ns) {
            (BatchSize::Fixed(n), _) => return n.max(1),
            (BatchSize::Auto, None) => return 1,
            (BatchSize::Auto, Some(ns)) => {
                let ns = ns.max(1.0);
                let size = ((TARGET_BATCH_NS / ns) as usize).clamp(1, MAX_AUTO_BATCH);
                (size, ((MIN_TAIL_BATCH_NS / ns) as usize).clamp(1, size))
            }
        };
        match self.total {
            Some(total) => {
                let left = total.saturating_sub(self.next_index);
                // Half of what is left per worker: the sizes fall geometrically to the floor,
                // where the workers' finishing times differ by at most a floor-sized batch; a
                // finer cut (a quarter) took a dozen more batches per million tiny tasks, each a
                // round trip of wake-ups, for no better balance.
                size.min((left / (2 * self.settings.workers.max(1))).max(floor))
            }
            None => size,
        }
    }

    /// The next task: the pending one, else the input's next.
    fn next_task(&mut self) -> Option<(F, A)> {
        if let Some(task) = self.pending.take() {
            return Some(task);
        }
        match self.tasks.as_mut().and_then(Iterator::next) {
            Some(task) => Some(task.into_parts()),
            None => {
                self.exhausted = true;
                None
            }
        }
    }

    /// What a batch of tasks calling `function` names in its header, or why such tasks cannot
    /// be sent to a worker (the function, or parjob's runner, lies outside the object a worker
    /// can locate: see [`wire::checked_offset`]).
    fn functions_of(&mut self, function: F) -> Result<Functions, String> {
        let runner = self.runner.clone()?;
        let address = function.address();
        let function = match &self.checked {
            Some((checked, outcome)) if *checked == address => outcome.clone(),
            _ => {
                let outcome = wire::checked_offset(address, "the task's function");
                self.checked = Some((address, outcome.clone()));
                outcome
            }
        }?;
        Ok(Functions { runner, function })
    }

    /// The deadline passed while tasks may be left to send: if there are (one more is pulled to
    /// know, and dropped unrun, contained), no task starts any more (batches queued in drivers
    /// are skipped, running ones finish) and the call will report the miss. If the input turns
    /// out to be exhausted, nothing was skipped and the call goes on to its end.
    #[cold]
    #[inline(never)]
    fn deadline_passed(&mut self, budget: Duration) {
        let more = self.pending.is_some()
            || match self.tasks.as_mut().and_then(Iterator::next) {
                Some(task) => {
                    crate::pool::unwind::drop_contained(task);
                    true
                }
                None => {
                    self.exhausted = true;
                    false
                }
            };
        if more {
            self.deadline_miss = Some(budget);
            self.stop();
        }
    }

    /// Records that task `index`'s arguments cannot be encoded: it fails on its own.
    fn unencodable(&mut self, index: usize, error: bincode::Error) {
        let message = format!("parjob: cannot encode the task's arguments: {error}");
        self.ready
            .insert(index, Ready::Task(Err(Failure::Panic(message))));
    }

    fn fill(&mut self) {
        // Tasks refused here (their function cannot be sent) count against the window like
        // batches sent: a long run of them must not make one `fill` read the whole input (an
        // endless one, for a process iterator) before anything is handed out.
        let mut refused = 0;
        while !self.stopped
            && !self.exhausted
            && self.in_flight.len() + refused < self.settings.window
        {
            if let Some((budget, at)) = self.settings.deadline {
                if Instant::now() >= at {
                    self.deadline_passed(budget);
                    break;
                }
            }
            let Some((function, args)) = self.next_task() else {
                break;
            };
            let functions = match self.functions_of(function) {
                Ok(functions) => functions,
                Err(message) => {
                    self.ready
                        .insert(self.next_index, Ready::Task(Err(Failure::Panic(message))));
                    self.next_index += 1;
                    refused += 1;
                    drop(args);
                    continue;
                }
            };
            let task = (function, args);
            let size = self.batch_size();
            let arena = self.settings.pool.arena(size > 1);
            match arena.map(|arena| arena.lease()) {
                Some(Some(lease)) => self.fill_slab(size, lease, functions, task),
                // The slabs exist but every one is in use.
                Some(None) => {
                    if self.fill_inline(size, functions, task) {
                        self.settings.pool.note_no_free_slab();
                    }
                }
                None => {
                    self.fill_inline(size, functions, task);
                }
            }
        }
    }

    /// Encodes up to `size` tasks, `task` first, into `lease`'s slab and sends them as one batch
    /// naming `functions` (`task`'s). A task that does not fit, or that calls another function,
    /// is kept for the next batch (sent inline if it does not fit an empty slab).
    fn fill_slab(&mut self, size: usize, mut lease: Lease, functions: Functions, task: (F, A)) {
        let first = self.next_index;
        let tasks = self
            .tasks
            .as_mut()
            .expect("the input lives until the call is dropped");
        let (count, len, stop) = encode_batch(tasks, task, lease.args_mut(), size);
        self.next_index = first + count;
        let mut unencodable = None;
        match stop {
            Stop::Size => {}
            Stop::Exhausted => self.exhausted = true,
            Stop::Deferred(task) => self.pending = Some(task),
            Stop::Unencodable(error) => unencodable = Some(error),
        }
        if let Some(error) = unencodable {
            // This task fails on its own; the batch (consecutive tasks) ends before it.
            self.unencodable(first + count, error);
            self.next_index += 1;
        }
        if count == 0 {
            drop(lease);
            if let Some(task) = self.pending.take() {
                // The batch's first task, larger than a slab: on its own, in the request.
                self.fill_inline(1, functions, task);
            }
            return;
        }
        let request = wire::header(functions, count as u64, lease.index() as u64, len as u64);
        let lease = Arc::new(lease);
        let job_slab = Some(Arc::clone(&lease));
        self.send(
            first,
            count,
            functions,
            Arc::new(request.to_vec()),
            Args::Slab(lease, len),
            job_slab,
            false,
        );
    }

    /// Encodes up to `size` tasks, `task` first, into a request of their own (no slab free, or a
    /// task larger than a slab) and sends them as one batch naming `functions` (`task`'s); a task
    /// that calls another function is kept for the next batch. `false` if no task was sent.
    fn fill_inline(&mut self, size: usize, functions: Functions, task: (F, A)) -> bool {
        let mut bytes = Vec::with_capacity(wire::HEADER + 16 * size.min(MAX_AUTO_BATCH));
        bytes.extend_from_slice(&[0; wire::HEADER]);
        let first = self.next_index;
        let function = task.0.address();
        let mut next = Some(task);
        let mut count = 0;
        while count < size && bytes.len() < MAX_BATCH_BYTES {
            let Some((f, args)) = next.take().or_else(|| self.next_task()) else {
                break;
            };
            if f.address() != function {
                self.pending = Some((f, args));
                break;
            }
            let start = bytes.len();
            if let Err(error) = wire::encode_frame(&mut bytes, &args) {
                // This task fails on its own; the batch (consecutive tasks) ends before it.
                bytes.truncate(start);
                self.unencodable(first + count, error);
                self.next_index = first + count + 1;
                break;
            }
            count += 1;
        }
        if self.next_index == first {
            self.next_index = first + count;
        }
        if count == 0 {
            return false;
        }
        let len = (bytes.len() - wire::HEADER) as u64;
        bytes[..wire::HEADER].copy_from_slice(&wire::header(
            functions,
            count as u64,
            wire::INLINE,
            len,
        ));
        let request = Arc::new(bytes);
        let args = Args::Inline(Arc::clone(&request));
        self.send(first, count, functions, request, args, None, false);
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        first: usize,
        count: usize,
        functions: Functions,
        request: Arc<Vec<u8>>,
        args: Args,
        slab: Option<Arc<Lease>>,
        urgent: bool,
    ) {
        let batch = self.next_batch;
        self.next_batch += 1;
        let prefetch = may_send_ahead(
            self.task_ns,
            count,
            self.settings.timeout.is_some(),
            slab.is_some(),
        );
        let job = Job {
            call: Arc::clone(&self.state),
            batch,
            bytes: request,
            slab,
            timeout: self.settings.timeout,
            prefetch,
            reply: self.tx.clone(),
            answered: false,
        };
        self.in_flight.insert(
            batch,
            InFlight {
                first,
                count,
                functions,
                args,
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
                // The recent batches' time over their tasks: each batch weighs as much as it
                // has tasks. An average of per-batch figures let the first one-task batches,
                // whose fixed cost of a few hundred nanoseconds reads as the time per task, hold
                // the estimate far too high for a dozen replies (a million 25 ns tasks started
                // with ~14 undersized batches, every one a round trip).
                self.timed = (
                    0.5 * self.timed.0 + elapsed_ns as f64,
                    0.5 * self.timed.1 + flight.count as f64,
                );
                self.task_ns = Some(self.timed.0 / self.timed.1);
                let outcomes = match (outcomes, flight.args) {
                    (Outcomes::Inline(bytes), _) => Source::Inline(bytes),
                    (Outcomes::InSlab(len), Args::Slab(lease, _)) => Source::Slab(lease, len),
                    // Cannot happen: a driver accepts outcomes in a slab only for a batch that
                    // came in one.
                    (Outcomes::InSlab(_), Args::Inline(_)) => Source::Inline(Vec::new()),
                };
                let decoding = Decoding::new(flight.first, flight.count, outcomes);
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
                if !self.stopped {
                    // Not stopped by the call: a driver skipped the batch because the deadline
                    // passed while it was queued. Its tasks never ran: the call stops, and fails.
                    if let Some((budget, _)) = self.settings.deadline {
                        self.deadline_miss = Some(budget);
                    }
                    self.stop();
                }
            }
        }
    }

    /// Sends each task of a batch whose worker died again on its own, first task first in the
    /// queue: each task's arguments frame is copied into a request of its own. No user code runs
    /// here (until round 12 the parent decoded the batch's arguments to find where each started,
    /// and encoded them again: `A`'s `Deserialize` and `Serialize` could panic or fail in the
    /// parent, and a task's frame now says where it ends). The frames come from a slab a task
    /// may have written into, so they are checked: from a frame that is not whole on, the
    /// batch's tasks fail with [`wire::CORRUPT_ARGUMENTS`] instead of being re-sent.
    fn bisect(&mut self, flight: InFlight) {
        let mut rest = flight.args.bytes();
        let mut requests = Vec::with_capacity(flight.count);
        for _ in 0..flight.count {
            let Some(frame) = wire::next_frame(&mut rest) else {
                break;
            };
            let len = wire::FRAME + frame.len();
            let mut bytes = Vec::with_capacity(wire::HEADER + len);
            bytes.extend_from_slice(&wire::header(flight.functions, 1, wire::INLINE, len as u64));
            // `frame` came out of a frame: its length fits the length's width.
            wire::Framing::write_frame(&mut bytes, frame).expect("a Vec takes every byte");
            requests.push(Arc::new(bytes));
        }
        for index in flight.first + requests.len()..flight.first + flight.count {
            let failure = Failure::Panic(wire::CORRUPT_ARGUMENTS.to_owned());
            self.ready.insert(index, Ready::Task(Err(failure)));
        }
        for (i, request) in requests.into_iter().enumerate().rev() {
            let args = Args::Inline(Arc::clone(&request));
            self.send(
                flight.first + i,
                1,
                flight.functions,
                request,
                args,
                None,
                true,
            );
        }
    }
}

/// Whether a batch of `count` tasks may be sent to a worker still running another
/// ([`Job::prefetch`]): only if it holds enough tasks for the time per task to be a fair guess
/// ([`MIN_PREFETCH_TASKS`]; automatic batching makes small batches of slow tasks, whose times
/// vary the most: each stays free for whichever worker falls idle first), is expected to be
/// short ([`MAX_PREFETCH_NS`], by the measured time per task `task_ns`, taken as at least 1 ns
/// as `batch_size` does, so a reported time of 0 does not make every batch look free; not
/// before one is measured), has no timeout (a timeout covers one batch alone), and its
/// arguments are in a slab (its request is then the 40-byte header, see `PREFETCH` in
/// [`pool`](super::pool)). A driver also sends a batch ahead only behind one that was itself
/// eligible.
fn may_send_ahead(task_ns: Option<f64>, count: usize, timeout: bool, in_slab: bool) -> bool {
    let short = task_ns.is_some_and(|ns| ns.max(1.0) * count as f64 <= MAX_PREFETCH_NS);
    count >= MIN_PREFETCH_TASKS && short && !timeout && in_slab
}

/// Why [`encode_batch`] stopped.
enum Stop<A> {
    /// The batch has the size asked for.
    Size,
    /// The input has no more tasks.
    Exhausted,
    /// This task (the one after the batch) does not fit in what is left of the slab, or calls
    /// another function than the batch's tasks.
    Deferred(A),
    /// The task after the batch cannot be encoded (it fails on its own).
    Unencodable(bincode::Error),
}

/// Encodes up to `size` tasks' arguments (`task` first, then `tasks`, as long as they call
/// `task`'s function) into `buf`, one frame each, back to back: `(tasks encoded, bytes used, why
/// it stopped)`.
/// A loop of its own over locals, so the input's state and the write position stay in
/// registers.
#[inline]
fn encode_batch<I, F, A>(
    tasks: &mut I,
    task: (F, A),
    buf: &mut [u8],
    size: usize,
) -> (usize, usize, Stop<(F, A)>)
where
    I: Iterator<Item = Delayed<F, A>>,
    F: ProcessFn<A>,
    A: Serialize,
{
    let function = task.0.address();
    let mut next = Some(task);
    let mut writer = SliceWriter {
        buf,
        len: 0,
        full: false,
    };
    let mut count = 0;
    while count < size {
        let (f, args) = match next.take() {
            Some(task) => task,
            None => match tasks.next() {
                Some(task) => task.into_parts(),
                None => return (count, writer.len, Stop::Exhausted),
            },
        };
        if f.address() != function {
            return (count, writer.len, Stop::Deferred((f, args)));
        }
        let start = writer.len;
        let encoded = match wire::encode_frame(&mut writer, &args) {
            // A `Serialize` that swallowed the error of a write that did not fit: the frame is
            // incomplete, as if the write had failed.
            Ok(()) if writer.full => {
                Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into())
            }
            encoded => encoded,
        };
        if let Err(error) = encoded {
            writer.len = start;
            let stop = if writer.full {
                Stop::Deferred((f, args))
            } else {
                Stop::Unencodable(error)
            };
            return (count, start, stop);
        }
        count += 1;
    }
    (count, writer.len, Stop::Size)
}

impl<I, F, A, R> Drop for Call<'_, I, F, A, R> {
    fn drop(&mut self) {
        // Batches still queued are skipped; running ones finish and their replies are dropped.
        self.state.cancelled.store(true, Ordering::Relaxed);
        // The input and a task pulled but not sent are user values whose `Drop` may panic: each
        // is dropped on its own, contained (a stream dropped while a panic unwinds, e.g. its
        // consumer's, dropped them by that unwinding, and a `Drop` that panicked aborted).
        if let Some(tasks) = self.tasks.take() {
            crate::pool::unwind::drop_contained(tasks);
        }
        if let Some(task) = self.pending.take() {
            crate::pool::unwind::drop_contained(task);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{may_send_ahead, wire, Decoding, Failure, Source};

    #[test]
    fn only_short_measured_batches_in_a_slab_without_timeout_are_sent_ahead() {
        // 30,000 tasks of 25 ns: 0.75 ms; 16 tasks of 100 us: 1.6 ms.
        assert!(may_send_ahead(Some(25.0), 30_000, false, true));
        assert!(may_send_ahead(Some(100e3), 16, false, true));
        // Not measured yet, two tasks of 5 ms (10 ms committed to a busy worker), or one task
        // however short.
        assert!(!may_send_ahead(None, 30_000, false, true));
        assert!(!may_send_ahead(Some(5e6), 2, false, true));
        assert!(!may_send_ahead(Some(25.0), 1, false, true));
        // Too few tasks for their mean to say much: 4 tasks measured at 0.3 ms on average
        // (one of them may take the whole 1.2 ms, or far more), or 15 tiny ones.
        assert!(!may_send_ahead(Some(300e3), 4, false, true));
        assert!(!may_send_ahead(Some(25.0), 15, false, true));
        // A measured time of 0 counts as 1 ns per task: not every batch is "free".
        assert!(may_send_ahead(Some(0.0), 30_000, false, true));
        assert!(!may_send_ahead(Some(0.0), 3_000_000, false, true));
        // A timeout, or arguments in the request.
        assert!(!may_send_ahead(Some(25.0), 30_000, true, true));
        assert!(!may_send_ahead(Some(25.0), 30_000, false, false));
    }

    /// Outcomes as a worker lays them out: `values` (frames of `u64`s), then `failures`.
    fn outcomes(values: &[u8], failures: &[(u64, &str)]) -> Vec<u8> {
        let mut bytes = values.to_vec();
        for (position, message) in failures {
            bytes.extend_from_slice(&position.to_le_bytes());
            bincode::serialize_into(&mut bytes, message).unwrap();
        }
        bytes.extend_from_slice(&(values.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&(failures.len() as u64).to_le_bytes());
        bytes
    }

    fn encoded(values: &[u64]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for value in values {
            wire::encode_frame(&mut bytes, value).unwrap();
        }
        bytes
    }

    fn one_by_one(decoding: &mut Decoding) -> Vec<(usize, Result<u64, String>)> {
        std::iter::from_fn(|| decoding.next::<u64>())
            .map(|(index, outcome)| {
                let outcome = outcome.map_err(|failure| match failure {
                    Failure::Panic(message) => message,
                    other => panic!("unexpected {other:?}"),
                });
                (index, outcome)
            })
            .collect()
    }

    fn drained(decoding: Decoding) -> (Vec<u64>, Vec<(usize, String)>) {
        let (mut values, mut failed) = (Vec::new(), Vec::new());
        decoding.drain::<u64>(&mut values, |index, failure| match failure {
            Failure::Panic(message) => failed.push((index, message)),
            other => panic!("unexpected {other:?}"),
        });
        (values, failed)
    }

    #[test]
    fn both_decoders_interleave_failures_at_their_places() {
        let bytes = outcomes(&encoded(&[10, 11, 12]), &[(0, "first"), (2, "third")]);
        let mut one = Decoding::new(100, 5, Source::Inline(bytes.clone()));
        assert_eq!(
            one_by_one(&mut one),
            [
                (100, Err("first".to_owned())),
                (101, Ok(10)),
                (102, Err("third".to_owned())),
                (103, Ok(11)),
                (104, Ok(12)),
            ]
        );
        let all = drained(Decoding::new(100, 5, Source::Inline(bytes)));
        assert_eq!(all.0, [10, 11, 12]);
        assert_eq!(
            all.1,
            [(100, "first".to_owned()), (102, "third".to_owned())]
        );
    }

    /// A value whose frame is whole but does not decode fails its own task only: both decoders
    /// read on at the next frame.
    #[test]
    fn a_value_that_does_not_decode_fails_its_task_only() {
        // Task 0 returned 10, task 1's frame holds 3 bytes (no `u64`), task 2 failed, task 3
        // returned 13.
        let mut values = encoded(&[10]);
        values.extend_from_slice(&3u32.to_le_bytes());
        values.extend_from_slice(&[1, 2, 3]);
        values.extend_from_slice(&encoded(&[13]));
        let bytes = outcomes(&values, &[(2, "third")]);
        let mut one = Decoding::new(0, 4, Source::Inline(bytes.clone()));
        let got = one_by_one(&mut one);
        assert_eq!(got[0], (0, Ok(10)));
        assert!(matches!(&got[1], (1, Err(m)) if m.contains("cannot decode the task's result")));
        assert_eq!(got[2], (2, Err("third".to_owned())));
        assert_eq!(got[3], (3, Ok(13)));

        let (values, failed) = drained(Decoding::new(0, 4, Source::Inline(bytes)));
        assert_eq!(values, [10, 13]);
        assert_eq!(failed.len(), 2);
        assert!(failed[0].0 == 1 && failed[0].1.contains("cannot decode the task's result"));
        assert_eq!(failed[1], (2, "third".to_owned()));
    }

    /// After a frame that is not whole, neither decoder reads on (where the next value starts
    /// is unknown): the rest of the batch fails with the corrupt-batch message, and its failure
    /// records are not handed out as if they were in place.
    #[test]
    fn after_a_broken_frame_the_rest_of_the_batch_fails() {
        // Task 0 returned 10, task 1's frame claims 8 bytes and holds 3, task 2 failed, task 3
        // returned.
        let mut values = encoded(&[10]);
        values.extend_from_slice(&8u32.to_le_bytes());
        values.extend_from_slice(&[1, 2, 3]);
        let bytes = outcomes(&values, &[(2, "third")]);
        let mut one = Decoding::new(0, 4, Source::Inline(bytes.clone()));
        let got = one_by_one(&mut one);
        assert_eq!(got[0], (0, Ok(10)));
        assert_eq!(got[1], (1, Err(wire::CORRUPT.to_owned())));
        assert_eq!(got[2], (2, Err(wire::CORRUPT.to_owned())));
        assert_eq!(got[3], (3, Err(wire::CORRUPT.to_owned())));

        let (values, failed) = drained(Decoding::new(0, 4, Source::Inline(bytes)));
        assert_eq!(values, [10]);
        assert_eq!(failed.len(), 3);
        assert_eq!(failed[0], (1, wire::CORRUPT.to_owned()));
        assert_eq!(failed[1], (2, wire::CORRUPT.to_owned()));
        assert_eq!(failed[2], (3, wire::CORRUPT.to_owned()));
    }

    /// Result frames that do not end at the end of the results area (a frame's length was
    /// wrong somewhere): the iterator fails the last result and what follows it (those before it
    /// are handed out already), `drain` the whole batch.
    #[test]
    fn results_that_leave_bytes_unread_fail() {
        // Tasks 0 and 1 returned 10 and 11, task 2 failed; 3 bytes more in the results area.
        let mut values = encoded(&[10, 11]);
        values.extend_from_slice(&[1, 2, 3]);
        let bytes = outcomes(&values, &[(2, "third")]);
        let mut one = Decoding::new(0, 3, Source::Inline(bytes.clone()));
        assert_eq!(
            one_by_one(&mut one),
            [
                (0, Ok(10)),
                (1, Err(wire::UNREAD.to_owned())),
                (2, Err(wire::CORRUPT.to_owned())),
            ]
        );
        let (values, failed) = drained(Decoding::new(0, 3, Source::Inline(bytes)));
        assert!(values.is_empty(), "{values:?}");
        assert_eq!(
            failed,
            (0..3)
                .map(|i| (i, wire::UNREAD.to_owned()))
                .collect::<Vec<_>>()
        );
        // The same results without the extra bytes come back whole.
        let bytes = outcomes(&encoded(&[10, 11]), &[(2, "third")]);
        let (values, failed) = drained(Decoding::new(0, 3, Source::Inline(bytes)));
        assert_eq!(values, [10, 11]);
        assert_eq!(failed, [(2, "third".to_owned())]);
    }

    /// Arbitrary damage to outcome bytes never makes a decoder panic or lose a task: each
    /// hands out exactly one outcome per task, at its index; undamaged bytes decode exactly.
    #[test]
    fn damaged_outcomes_still_give_one_outcome_per_task() {
        let mut state = 0x1234_5678_9abc_def1u64;
        let mut random = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n.max(1)
        };
        for _ in 0..20_000 {
            let count = 1 + random(9) as usize;
            let (mut values, mut failures) = (Vec::new(), Vec::new());
            let mut expected = Vec::new();
            for p in 0..count {
                if random(3) == 0 {
                    failures.push((p as u64, format!("f{p}")));
                    expected.push((p, Err(format!("f{p}"))));
                } else {
                    values.push(1000 + p as u64);
                    expected.push((p, Ok(1000 + p as u64)));
                }
            }
            let failures: Vec<(u64, &str)> = failures.iter().map(|(p, m)| (*p, &**m)).collect();
            let mut bytes = outcomes(&encoded(&values), &failures);
            let damaged = random(2) == 0;
            if damaged {
                let at = random(bytes.len() as u64) as usize;
                match random(4) {
                    0 => bytes[at] = random(256) as u8,
                    1 => bytes.truncate(at),
                    2 => bytes.insert(at, random(256) as u8),
                    _ => drop(bytes.remove(at)),
                }
            }
            let got = one_by_one(&mut Decoding::new(0, count, Source::Inline(bytes.clone())));
            let indices: Vec<usize> = got.iter().map(|(i, _)| *i).collect();
            assert_eq!(indices, (0..count).collect::<Vec<_>>());
            let (values, failed) = drained(Decoding::new(0, count, Source::Inline(bytes)));
            assert_eq!(values.len() + failed.len(), count);
            assert!(failed.windows(2).all(|w| w[0].0 < w[1].0));
            if !damaged {
                assert_eq!(got, expected);
            }
        }
    }

    #[test]
    fn a_malformed_footer_fails_every_task_of_the_batch() {
        let mut one = Decoding::new(7, 2, Source::Inline(vec![0; 5]));
        let got = one_by_one(&mut one);
        assert_eq!(got.len(), 2);
        assert!(got
            .iter()
            .all(|(_, outcome)| matches!(outcome, Err(m) if m.contains("corrupt"))));
        let (values, failed) = drained(Decoding::new(7, 2, Source::Inline(vec![0; 5])));
        assert!(values.is_empty());
        assert_eq!(failed.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [7, 8]);
    }
}
