//! [`ProcessPool`]: worker processes kept for many calls, each owned by one driver thread.
//!
//! ```text
//! caller ──Job──▶ queue ──▶ driver thread i ──batch bytes──▶ worker process i
//!   ▲                            │        ◀──FromWorker────
//!   └────────── Reply ───────────┘
//! ```
//! Each worker slot has a driver thread in the parent. The driver starts its worker, takes jobs
//! from the pool's queue one at a time, sends the batch, waits for the outcomes (at most the
//! job's timeout), and replies to the call that queued the job. If the worker dies, the driver
//! reads how ([`wait_for_death`]), lets procspawn reap it, replies `Crashed`, and starts a
//! new worker. If a job times out, the driver kills its worker (`SIGKILL`: nothing keeps burning
//! CPU), replies `TimedOut`, and starts a new one.
//!
//! **Who may signal a worker.** A pid is only signalled while its process is still our unreaped
//! child, so the number cannot have been reused. The driver owns its worker's procspawn handle
//! (whose drop reaps it); before dropping it the driver clears the slot's pid under the slot's
//! lock. The only other thread that signals a worker, the pool's shutdown, reads the pid under
//! the same lock.

use super::death::{has_ended, kill, wait_for_death, WorkerDeath};
use super::shm::{Arena, Lease, WorkerSlabs};
use super::wire::{self, FromWorker};
use super::worker::{worker_main, WorkerArgs};
use ipc_channel::ipc::{self, IpcBytesSender, IpcReceiver, IpcSender};
use ipc_channel::TryRecvError;
use std::collections::VecDeque;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// The environment variables that cap the threads of libraries a task may call (joblib's
/// `inner_max_num_threads`), plus parjob's own.
pub const INNER_THREAD_VARS: [&str; 5] = [
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "RAYON_NUM_THREADS",
    "PARJOB_NUM_THREADS",
];

/// How long a new worker may take to say it is ready (re-executing the binary and running the
/// initializer) before it is given up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Batches a driver keeps sent to its worker at once, when they allow it ([`Job::prefetch`]):
/// the next request waits in the worker's socket, so the worker starts it as soon as it
/// replies, not after the driver (a thread that may wait for a core) has handled the reply.
/// Only short batches without a timeout are sent ahead: a long one would be committed to this
/// worker while another might fall idle, and a timeout must cover one batch alone. And only
/// batches whose arguments are in a slab: their request is a 40-byte header, for which the
/// worker's socket always has room, so the driver never blocks sending it while the worker
/// blocks sending a reply too large for the other socket (a batch whose arguments travel in the
/// message could fill the request socket: each side would wait for the other to read).
const PREFETCH: usize = 2;

/// How long a worker whose channel broke may take to exit before it is killed.
const EXIT_PATIENCE: Duration = Duration::from_secs(2);

/// One batch for a worker, queued by a call.
pub(crate) struct Job {
    pub(crate) call: Arc<CallState>,
    pub(crate) batch: u64,
    /// The request, as [`wire`] lays it out: a header, and the arguments unless they are in
    /// `slab`.
    pub(crate) bytes: Arc<Vec<u8>>,
    /// The slab holding the arguments (and, after the reply, the outcomes); kept for as long as
    /// the job, so the slab is not reused while a worker may still read it.
    pub(crate) slab: Option<Arc<Lease>>,
    /// Kill the worker if the batch runs longer than this.
    pub(crate) timeout: Option<Duration>,
    /// The batch may be sent to a worker that is still running another one (see [`PREFETCH`]):
    /// set for batches of enough tasks (16 or more) expected to be short (the call's measured
    /// time per task), in a slab, without a timeout. A driver sends one ahead only behind jobs
    /// that have this set too.
    pub(crate) prefetch: bool,
    pub(crate) reply: mpsc::Sender<Reply>,
    /// Set by [`Job::answer`]; a job dropped unanswered (its driver unwound, or the pool shut
    /// down with it queued) answers for itself, so no call waits forever for it.
    pub(crate) answered: bool,
}

impl Job {
    /// The job, unless its call was cancelled or its deadline has passed: then it is answered
    /// `Skipped` here (never sent to a worker) and `None` comes back.
    fn unless_cancelled(self) -> Option<Job> {
        let past_deadline = || {
            self.call
                .deadline
                .is_some_and(|at| std::time::Instant::now() >= at)
        };
        if self.call.cancelled.load(Ordering::Relaxed) || past_deadline() {
            let batch = self.batch;
            self.answer(Reply::Skipped { batch });
            return None;
        }
        Some(self)
    }

    /// Sends the job's one reply.
    pub(crate) fn answer(mut self, reply: Reply) {
        self.answered = true;
        // The slab goes back before the reply goes out. Its worker is done with it once there is
        // a reply, and the call keeps its own reference for as long as it decodes the outcomes.
        // Released after the send, it stayed taken for as long as this driver thread waited for
        // a core between the two, while the call, answered, could already have started its next
        // batches: under load those found no free slab.
        self.slab = None;
        // A call that stopped waiting (a dropped stream) no longer receives: nothing to do.
        let _ = self.reply.send(reply);
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if !self.answered {
            let message = if std::thread::panicking() {
                "the driver thread panicked while it held the batch"
            } else {
                "the batch was dropped before any worker answered it"
            };
            let _ = self.reply.send(Reply::Crashed {
                batch: self.batch,
                death: WorkerDeath::DriverFailed(message.to_string()),
            });
        }
    }
}

/// What one call shares with the drivers running its batches.
#[derive(Default)]
pub(crate) struct CallState {
    /// Set when the call stops early: its queued batches are skipped.
    pub(crate) cancelled: AtomicBool,
    /// `Parallel::deadline`'s end: a batch a driver takes after it is skipped, not started, as
    /// on threads no task starts after the deadline (the call notices the `Skipped` reply).
    pub(crate) deadline: Option<std::time::Instant>,
}

/// A driver's answer to one job.
pub(crate) enum Reply {
    Done {
        batch: u64,
        elapsed_ns: u64,
        outcomes: Outcomes,
    },
    Crashed {
        batch: u64,
        death: WorkerDeath,
    },
    TimedOut {
        batch: u64,
    },
    /// The call was cancelled before the batch started.
    Skipped {
        batch: u64,
    },
}

/// Where a finished batch's outcomes are.
pub(crate) enum Outcomes {
    /// In the reply.
    Inline(Vec<u8>),
    /// The first `len` bytes of the batch's slab's outcome area.
    InSlab(usize),
}

struct Queue {
    jobs: VecDeque<Job>,
    shutdown: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Per slot: the pid of its live worker (see "Who may signal a worker").
    pids: Vec<Mutex<Option<u32>>>,
    env: Vec<(String, String)>,
    initializer: Option<i64>,
    restarts: AtomicUsize,
    batches: AtomicUsize,
    /// Batches that came back with their outcomes in their slab (see `shared_memory_batches`).
    slab_batches: AtomicUsize,
    /// Batches sent in the message because every slab was taken (see `no_free_slab_batches`).
    no_free_slab: AtomicUsize,
    /// The shared-memory slabs, once a background thread has made them: on the first call
    /// that batches several tasks together (zeroing them takes milliseconds, so neither the
    /// pool's start nor a call waits for it: until then batches travel in the messages).
    arena: OnceLock<Arc<Arena>>,
    arena_started: AtomicBool,
}

struct Inner {
    shared: Arc<Shared>,
    drivers: Vec<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .shutdown = true;
        self.shared.wake.notify_all();
        for pid in &self.shared.pids {
            if let Some(pid) = *pid.lock().unwrap_or_else(|e| e.into_inner()) {
                kill(pid);
            }
        }
        for driver in self.drivers.drain(..) {
            let _ = driver.join();
        }
    }
}

/// A set of worker processes that run [`Parallel`](crate::Parallel) tasks, reused across calls.
/// Clones share the same workers; when the last clone is dropped every worker is killed and
/// reaped before `drop` returns.
///
/// Use it with [`Backend::ProcessPool`](crate::Backend::ProcessPool); [`Backend::Processes`](crate::Backend::Processes)
/// uses a pool of this kind per `n_jobs`, built on first use and kept
/// until the program exits (its workers are killed when it does).
///
/// ```no_run
/// use parjob::processes::ProcessPoolBuilder;
/// use parjob::{delayed_fn, Backend, Parallel};
/// fn square(x: u64) -> u64 { x * x }
/// fn main() {
///     parjob::processes::init();
///     let pool = ProcessPoolBuilder::new().num_workers(2).build().unwrap();
///     let out = Parallel::new()
///         .backend(Backend::ProcessPool(pool))
///         .run_in_processes((0..10u64).map(|x| delayed_fn(square)(x)));
///     assert_eq!(out[3], 9);
/// }
/// ```
#[derive(Clone)]
pub struct ProcessPool {
    inner: Arc<Inner>,
}

impl fmt::Debug for ProcessPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessPool")
            .field("num_workers", &self.num_workers())
            .field("worker_pids", &self.worker_pids())
            .finish()
    }
}

impl ProcessPool {
    /// How many worker processes the pool keeps.
    pub fn num_workers(&self) -> usize {
        self.inner.shared.pids.len()
    }

    /// The pids of the workers alive now (a slot whose worker is being replaced is missing).
    pub fn worker_pids(&self) -> Vec<u32> {
        self.inner
            .shared
            .pids
            .iter()
            .filter_map(|pid| *pid.lock().unwrap_or_else(|e| e.into_inner()))
            .collect()
    }

    /// How many workers have been replaced since the pool was built: those that died (a crash)
    /// or were killed (a timeout) while running a batch, and those found dead while idle (killed
    /// from outside, say) when a batch was about to be sent to them.
    pub fn restarts(&self) -> usize {
        self.inner.shared.restarts.load(Ordering::Relaxed)
    }

    /// How many batches (messages to a worker) the pool has run: with automatic batching, far
    /// fewer than the tasks when the tasks are short.
    pub fn batches(&self) -> usize {
        self.inner.shared.batches.load(Ordering::Relaxed)
    }

    /// How many of [`batches`](ProcessPool::batches) travelled through the pool's shared memory
    /// both ways: arguments written into a slab, outcomes read from it. The others travelled in
    /// the socket messages (before the shared memory existed, with no slab free, or with
    /// arguments or outcomes too large for a slab), or did not finish.
    pub fn shared_memory_batches(&self) -> usize {
        self.inner.shared.slab_batches.load(Ordering::Relaxed)
    }

    /// How many batches travelled in the socket message because, when their call encoded them,
    /// the pool's shared memory existed but every slab was in use (by batches queued or running,
    /// and by finished ones whose outcomes wait to be decoded: in an ordered call, those behind
    /// a batch that has not finished yet). Counted when the batch is sent, so a batch that was
    /// then cancelled counts here but not in [`batches`](ProcessPool::batches).
    ///
    /// Correct behaviour, not an error (the messages carry any batch), but a count that is a
    /// large share of `batches` means the slabs are too few for the calls' dispatch window.
    pub fn no_free_slab_batches(&self) -> usize {
        self.inner.shared.no_free_slab.load(Ordering::Relaxed)
    }

    /// Records one batch of [`no_free_slab_batches`](ProcessPool::no_free_slab_batches).
    pub(crate) fn note_no_free_slab(&self) {
        self.inner
            .shared
            .no_free_slab
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the pool's shared memory exists yet: batches' arguments and outcomes travel
    /// through it instead of the workers' sockets. It is made in the background on the first
    /// call that batches several tasks together (until then batches travel in the messages).
    pub fn has_shared_memory(&self) -> bool {
        self.inner.shared.arena.get().is_some()
    }

    /// The pool's shared-memory slabs; `None` while they are being made. A call that would use
    /// them (`wanted`) starts making them if nobody has.
    pub(crate) fn arena(&self, wanted: bool) -> Option<&Arc<Arena>> {
        let shared = &self.inner.shared;
        if let Some(arena) = shared.arena.get() {
            return Some(arena);
        }
        if wanted && !shared.arena_started.swap(true, Ordering::Relaxed) {
            let for_arena = Arc::clone(shared);
            let workers = shared.pids.len();
            let spawned = std::thread::Builder::new()
                .name("parjob-process-slabs".to_owned())
                .spawn(move || {
                    let _ = for_arena.arena.set(Arc::new(Arena::new(workers)));
                });
            // Without the thread (it cannot be spawned) the pool works without slabs.
            drop(spawned);
        }
        None
    }

    pub(crate) fn submit(&self, job: Job, urgent: bool) {
        let mut queue = self
            .inner
            .shared
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if urgent {
            queue.jobs.push_front(job);
        } else {
            queue.jobs.push_back(job);
        }
        drop(queue);
        self.inner.shared.wake.notify_one();
    }
}

/// Why a [`ProcessPool`] could not be built: its first worker could not start, it was asked for
/// zero workers, or its [initializer](ProcessPoolBuilder::initializer) is a function a worker
/// cannot be handed (one of a shared library).
///
/// ```
/// let err = parjob::processes::ProcessPoolBuilder::new().num_workers(0).build().unwrap_err();
/// assert!(err.to_string().contains("at least one worker"));
/// ```
#[derive(Debug, Clone)]
pub struct ProcessPoolError {
    reason: StartFailure,
}

#[derive(Debug, Clone)]
enum StartFailure {
    NoWorkers,
    /// More workers than `MAX_NUM_THREADS` (each has a driver thread here).
    TooManyWorkers(usize),
    /// The initializer's address is not in the object that holds parjob (the message says so).
    Unsendable(String),
    Died(WorkerDeath),
}

impl ProcessPoolError {
    /// How the first worker that failed to start ended (`None`: the pool was asked for zero
    /// workers or more than [`MAX_NUM_THREADS`](crate::MAX_NUM_THREADS), or no worker was started
    /// because the initializer cannot be sent to one).
    pub fn worker_death(&self) -> Option<&WorkerDeath> {
        match &self.reason {
            StartFailure::Died(death) => Some(death),
            StartFailure::NoWorkers
            | StartFailure::TooManyWorkers(_)
            | StartFailure::Unsendable(_) => None,
        }
    }
}

impl fmt::Display for ProcessPoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reason {
            StartFailure::NoWorkers => f.write_str("a process pool needs at least one worker"),
            StartFailure::TooManyWorkers(asked) => write!(
                f,
                "{asked} worker processes asked for; a pool has at most {}",
                crate::MAX_NUM_THREADS
            ),
            StartFailure::Unsendable(message) => write!(f, "the pool's initializer: {message}"),
            StartFailure::Died(death) => write!(f, "a worker process failed to start: {death}"),
        }
    }
}

impl std::error::Error for ProcessPoolError {}

/// Configures and builds a [`ProcessPool`].
///
/// ```no_run
/// fn setup() { /* open a file, seed an RNG, ... once per worker */ }
/// fn main() {
///     parjob::processes::init();
///     let pool = parjob::processes::ProcessPoolBuilder::new()
///         .num_workers(2)
///         .initializer(setup)
///         .inner_max_num_threads(1)
///         .build()
///         .unwrap();
///     assert_eq!(pool.num_workers(), 2);
/// }
/// ```
#[derive(Debug, Clone)]
pub struct ProcessPoolBuilder {
    num_workers: usize,
    initializer: Option<fn()>,
    inner_threads: Option<usize>,
    env: Vec<(String, String)>,
}

impl Default for ProcessPoolBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessPoolBuilder {
    /// One worker per usable core ([`cpu_count`](crate::cpu_count)), no initializer, inner
    /// threads capped at `max(cores / workers, 1)`.
    pub fn new() -> Self {
        ProcessPoolBuilder {
            num_workers: crate::cpu_count(),
            initializer: None,
            inner_threads: None,
            env: Vec::new(),
        }
    }

    /// How many worker processes (at least 1 and at most
    /// [`MAX_NUM_THREADS`](crate::MAX_NUM_THREADS), since each has a driver thread in this
    /// process; else `build` fails).
    pub fn num_workers(mut self, n: usize) -> Self {
        self.num_workers = n;
        self
    }

    /// A function each worker runs once, before its first task (joblib/loky's `initializer`);
    /// also in each worker started to replace a dead one. If it panics, the worker does not
    /// serve: `build` fails, or (for a replacement) the tasks sent to it fail with
    /// [`WorkerDeath::InitializerPanicked`].
    pub fn initializer(mut self, f: fn()) -> Self {
        self.initializer = Some(f);
        self
    }

    /// joblib's `inner_max_num_threads`: the value given to [`INNER_THREAD_VARS`] in each worker
    /// (default `max(cores / workers, 1)`). A variable already set in this process's environment
    /// is passed on unchanged.
    pub fn inner_max_num_threads(mut self, n: usize) -> Self {
        self.inner_threads = Some(n.max(1));
        self
    }

    /// An extra environment variable for the workers.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Starts the workers and waits until each is ready (initializer run).
    ///
    /// # Errors
    /// Zero workers, or a worker that could not start: `init()` not called, or the initializer
    /// panicked (see [`ProcessPoolError::worker_death`]). Workers already started are stopped.
    pub fn build(self) -> Result<ProcessPool, ProcessPoolError> {
        if self.num_workers == 0 {
            return Err(ProcessPoolError {
                reason: StartFailure::NoWorkers,
            });
        }
        if self.num_workers > crate::MAX_NUM_THREADS {
            return Err(ProcessPoolError {
                reason: StartFailure::TooManyWorkers(self.num_workers),
            });
        }
        let inner = self
            .inner_threads
            .unwrap_or((crate::cpu_count() / self.num_workers).max(1));
        // Checked like a task's function: a worker is handed it as an offset that only means the
        // same function there if it lies in the object that holds parjob.
        let initializer = match self
            .initializer
            .map(|f| wire::checked_offset(f as usize, "the function"))
        {
            None => None,
            Some(Ok(offset)) => Some(offset),
            Some(Err(message)) => {
                return Err(ProcessPoolError {
                    reason: StartFailure::Unsendable(message),
                })
            }
        };
        let mut env = self.env;
        for var in INNER_THREAD_VARS {
            if std::env::var_os(var).is_none() {
                env.push((var.to_owned(), inner.to_string()));
            }
        }
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                shutdown: false,
            }),
            wake: Condvar::new(),
            pids: (0..self.num_workers).map(|_| Mutex::new(None)).collect(),
            env,
            initializer,
            restarts: AtomicUsize::new(0),
            batches: AtomicUsize::new(0),
            slab_batches: AtomicUsize::new(0),
            no_free_slab: AtomicUsize::new(0),
            arena: OnceLock::new(),
            arena_started: AtomicBool::new(false),
        });
        let (started_tx, started_rx) = mpsc::channel();
        let mut drivers = Vec::with_capacity(self.num_workers);
        for slot in 0..self.num_workers {
            let for_driver = Arc::clone(&shared);
            let started = started_tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("parjob-process-driver-{slot}"))
                .spawn(move || drive(for_driver, slot, started));
            match spawned {
                Ok(handle) => drivers.push(handle),
                Err(error) => {
                    let pool = Inner { shared, drivers };
                    drop(pool);
                    return Err(ProcessPoolError {
                        reason: StartFailure::Died(WorkerDeath::StartFailed(format!(
                            "cannot spawn a driver thread: {error}"
                        ))),
                    });
                }
            }
        }
        drop(started_tx);
        let inner = Inner { shared, drivers };
        let mut failure = None;
        for result in started_rx.iter() {
            if let Err(death) = result {
                failure.get_or_insert(death);
            }
        }
        match failure {
            // Dropping `inner` stops every driver and kills the workers that did start.
            Some(death) => Err(ProcessPoolError {
                reason: StartFailure::Died(death),
            }),
            None => Ok(ProcessPool {
                inner: Arc::new(inner),
            }),
        }
    }
}

/// A live worker, owned by its driver.
struct Worker {
    /// procspawn's handle: dropping it kills (if still running) and reaps the process.
    handle: procspawn::JoinHandle<()>,
    pid: u32,
    requests: IpcBytesSender,
    replies: IpcReceiver<FromWorker>,
    /// Where the worker gets the pool's slabs, before the first request that names one.
    slabs: IpcSender<WorkerSlabs>,
    slabs_sent: std::cell::Cell<bool>,
}

/// Starts the worker of `slot` and waits for its `Ready`.
fn start(shared: &Shared, slot: usize) -> Result<Worker, WorkerDeath> {
    let channels =
        ipc::bytes_channel().and_then(|(tx, rx)| Ok((tx, rx, ipc::channel()?, ipc::channel()?)));
    let (requests, requests_rx, (replies_tx, replies), (slabs, slabs_rx)) =
        channels.map_err(|e| WorkerDeath::StartFailed(format!("cannot open a channel: {e}")))?;
    let args = WorkerArgs {
        requests: requests_rx,
        replies: replies_tx,
        layout: wire::offset_of(wire::layout_probe as fn() -> u64 as usize),
        parent: std::process::id(),
        initializer: shared.initializer,
        slabs: slabs_rx,
    };
    let spawned = catch_unwind(AssertUnwindSafe(|| {
        let mut builder = procspawn::Builder::new();
        for (key, value) in &shared.env {
            builder.env(key, value);
        }
        builder.spawn(args, worker_main)
    }));
    let handle = spawned.map_err(|payload| {
        WorkerDeath::StartFailed(format!(
            "{} (is `parjob::processes::init()` the first call in `main`, or \
             `parjob::processes::enable_test_support!()` in the test file?)",
            wire::panic_message(&*payload)
        ))
    })?;
    let Some(pid) = handle.pid() else {
        return Err(WorkerDeath::StartFailed(format!(
            "procspawn could not spawn the process: {handle:?}"
        )));
    };
    *shared.pids[slot].lock().unwrap_or_else(|e| e.into_inner()) = Some(pid);
    let worker = Worker {
        handle,
        pid,
        requests,
        replies,
        slabs,
        slabs_sent: std::cell::Cell::new(false),
    };
    match worker.replies.try_recv_timeout(START_TIMEOUT) {
        Ok(FromWorker::Ready) => Ok(worker),
        Ok(FromWorker::InitFailed(message)) => {
            retire(shared, slot, worker, false);
            Err(WorkerDeath::InitializerPanicked(message))
        }
        Ok(FromWorker::Batch { .. } | FromWorker::BatchInSlab { .. }) => {
            retire(shared, slot, worker, true);
            Err(WorkerDeath::StartFailed(
                "unexpected first message".to_owned(),
            ))
        }
        Err(TryRecvError::Empty) => {
            retire(shared, slot, worker, true);
            Err(WorkerDeath::StartFailed(format!(
                "not ready within {START_TIMEOUT:?}"
            )))
        }
        Err(TryRecvError::IpcError(_)) => Err(retire(shared, slot, worker, false)),
    }
}

/// Ends `worker` (killing it first if `kill_first`), reads how it died, and reaps it.
fn retire(shared: &Shared, slot: usize, worker: Worker, kill_first: bool) -> WorkerDeath {
    if kill_first {
        kill(worker.pid);
    }
    let death = wait_for_death(worker.pid, EXIT_PATIENCE);
    // Clear the pid before the handle reaps the process (see the module doc).
    *shared.pids[slot].lock().unwrap_or_else(|e| e.into_inner()) = None;
    drop(worker.requests);
    drop(worker.replies);
    drop(worker.handle);
    death
}

/// What happened to one job on a worker.
enum Ran {
    Done {
        elapsed_ns: u64,
        outcomes: Outcomes,
    },
    /// The reply channel closed: the worker died (its status says how).
    Died,
    /// The worker broke the protocol; it is killed.
    Confused,
    TimedOut,
}

fn send_job(shared: &Shared, worker: &Worker, job: &Job) {
    shared.batches.fetch_add(1, Ordering::Relaxed);
    if job.slab.is_some() && !worker.slabs_sent.get() {
        // A job holds a lease, so the arena exists.
        if let Some(arena) = shared.arena.get() {
            let _ = worker.slabs.send(arena.for_worker());
            worker.slabs_sent.set(true);
        }
    }
    if worker.requests.send(&job.bytes).is_err() {
        // The worker is gone; its reply channel says so when the reply is awaited.
    }
}

/// Waits for the reply to `job`, the oldest job sent to `worker`.
fn await_reply(worker: &Worker, job: &Job) -> Ran {
    let reply = match job.timeout {
        None => worker.replies.recv().map_err(|_| None),
        Some(timeout) => worker
            .replies
            .try_recv_timeout(timeout)
            .map_err(|e| match e {
                TryRecvError::Empty => Some(()),
                TryRecvError::IpcError(_) => None,
            }),
    };
    match reply {
        Ok(FromWorker::Batch {
            elapsed_ns,
            outcomes,
        }) => Ran::Done {
            elapsed_ns,
            outcomes: Outcomes::Inline(outcomes),
        },
        Ok(FromWorker::BatchInSlab { elapsed_ns, len }) if job.slab.is_some() => Ran::Done {
            elapsed_ns,
            outcomes: Outcomes::InSlab(len as usize),
        },
        Ok(_) => Ran::Confused,
        Err(Some(())) => Ran::TimedOut,
        Err(None) => Ran::Died,
    }
}

/// The next queued job if it may be sent behind others ([`Job::prefetch`]); never waits.
fn next_prefetchable(shared: &Shared) -> Option<Job> {
    let mut queue = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
    if queue.shutdown || !queue.jobs.front()?.prefetch {
        return None;
    }
    queue.jobs.pop_front()
}

/// Puts jobs sent to a worker that died before starting them back at the front of the queue,
/// in their order, for any driver to take.
fn requeue(shared: &Shared, jobs: &mut VecDeque<Job>) {
    if jobs.is_empty() {
        return;
    }
    let mut queue = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
    while let Some(job) = jobs.pop_back() {
        queue.jobs.push_front(job);
    }
    drop(queue);
    shared.wake.notify_all();
}

fn next_job(shared: &Shared) -> Option<Job> {
    let mut queue = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if queue.shutdown {
            return None;
        }
        if let Some(job) = queue.jobs.pop_front() {
            return Some(job);
        }
        queue = shared.wake.wait(queue).unwrap_or_else(|e| e.into_inner());
    }
}

/// The driver thread of `slot`.
fn drive(shared: Arc<Shared>, slot: usize, started: mpsc::Sender<Result<(), WorkerDeath>>) {
    // Jobs sent to the worker and not answered yet, oldest first (at most `PREFETCH`). Declared
    // before `worker` so that, were this thread ever to unwind, the worker is dropped (killed)
    // before these jobs give their slabs back.
    let mut sent: VecDeque<Job> = VecDeque::new();
    let first = start(&shared, slot);
    let mut failure = None;
    let mut worker = match first {
        Ok(worker) => {
            let _ = started.send(Ok(()));
            Some(worker)
        }
        Err(death) => {
            let _ = started.send(Err(death.clone()));
            failure = Some(death);
            None
        }
    };
    drop(started);
    loop {
        if sent.is_empty() {
            let Some(job) = next_job(&shared) else {
                break;
            };
            let Some(job) = job.unless_cancelled() else {
                continue;
            };
            if worker.as_ref().is_some_and(|idle| has_ended(idle.pid)) {
                // It died while idle (the OOM killer, a thread a task left running): replaced
                // before the job is sent, or the job's first task would be reported as the
                // crash of a worker it never ran on.
                shared.restarts.fetch_add(1, Ordering::Relaxed);
                if let Some(dead) = worker.take() {
                    retire(&shared, slot, dead, false);
                }
            }
            if worker.is_none() {
                match start(&shared, slot) {
                    Ok(w) => worker = Some(w),
                    Err(death) => failure = Some(death),
                }
            }
            let Some(live) = worker.as_ref() else {
                let death = failure.clone().unwrap_or(WorkerDeath::Exit(-1));
                let batch = job.batch;
                job.answer(Reply::Crashed { batch, death });
                continue;
            };
            // Queued in `sent` before it is sent: were sending to unwind, the job must be
            // dropped after the worker (see `sent`), not as a local before it.
            sent.push_back(job);
            send_job(&shared, live, sent.back().expect("just queued"));
        }
        // `sent` is not empty, so the worker is alive.
        let Some(live) = worker.as_ref() else {
            break;
        };
        while sent.len() < PREFETCH && sent.iter().all(|job| job.prefetch) {
            let Some(job) = next_prefetchable(&shared) else {
                break;
            };
            let Some(job) = job.unless_cancelled() else {
                continue;
            };
            sent.push_back(job);
            send_job(&shared, live, sent.back().expect("just queued"));
        }
        // Awaited in place, popped after its reply: were `await_reply` to unwind (ipc-channel
        // asserts on failed system calls), a popped job, a local of this loop, would be dropped
        // first and give its slab back while the worker, dropped after it, may still write
        // into that slab's outcome area. Left in `sent`, it is dropped after the worker.
        let Some(awaited) = sent.front() else {
            continue;
        };
        let ran = await_reply(live, awaited);
        let job = sent.pop_front().expect("the job just awaited");
        let reply = match ran {
            Ran::Done {
                elapsed_ns,
                outcomes,
            } => {
                if matches!(outcomes, Outcomes::InSlab(_)) {
                    shared.slab_batches.fetch_add(1, Ordering::Relaxed);
                }
                Reply::Done {
                    batch: job.batch,
                    elapsed_ns,
                    outcomes,
                }
            }
            Ran::TimedOut => {
                shared.restarts.fetch_add(1, Ordering::Relaxed);
                if let Some(dead) = worker.take() {
                    retire(&shared, slot, dead, true);
                }
                Reply::TimedOut { batch: job.batch }
            }
            Ran::Died | Ran::Confused => {
                shared.restarts.fetch_add(1, Ordering::Relaxed);
                // `live` was `Some`, so `worker` is.
                let dead = worker.take().expect("a live worker ran the job");
                // A confused worker is killed first; its death is then `SIGKILL` by us.
                let confused = matches!(ran, Ran::Confused);
                let death = retire(&shared, slot, dead, confused);
                Reply::Crashed {
                    batch: job.batch,
                    death,
                }
            }
        };
        job.answer(reply);
        if worker.is_none() {
            // The worker died running `job`: the jobs sent behind it never started.
            requeue(&shared, &mut sent);
            // Replace it now, so the next job does not wait for the start-up.
            let shutdown = shared
                .queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .shutdown;
            if !shutdown {
                match start(&shared, slot) {
                    Ok(w) => worker = Some(w),
                    Err(death) => failure = Some(death),
                }
            }
        }
    }
    if let Some(live) = worker.take() {
        retire(&shared, slot, live, true);
    }
}

#[cfg(test)]
mod job_tests {
    use super::{CallState, Job, Reply, WorkerDeath};
    use std::sync::{mpsc, Arc};

    fn job(reply: mpsc::Sender<Reply>) -> Job {
        Job {
            call: Arc::new(CallState::default()),
            batch: 7,
            bytes: Arc::new(Vec::new()),
            slab: None,
            timeout: None,
            prefetch: false,
            reply,
            answered: false,
        }
    }

    /// A driver that unwinds drops the jobs it holds: each must still answer its call, which
    /// would otherwise wait for it forever.
    #[test]
    fn a_job_dropped_unanswered_answers_as_a_failed_driver() {
        let (tx, rx) = mpsc::channel();
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _held = job(tx.clone());
            panic!("driver bug");
        }));
        assert!(unwound.is_err());
        match rx.try_recv() {
            Ok(Reply::Crashed {
                batch: 7,
                death: WorkerDeath::DriverFailed(message),
            }) => assert!(message.contains("panicked"), "{message}"),
            _ => panic!("expected a DriverFailed reply for batch 7"),
        }
        // An answered job replies once, with its answer only.
        job(tx).answer(Reply::Skipped { batch: 8 });
        assert!(matches!(rx.try_recv(), Ok(Reply::Skipped { batch: 8 })));
        assert!(rx.try_recv().is_err());
    }
}
