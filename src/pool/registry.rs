//! The state a pool's workers share: queues, sleep state, counters, policy, threads.

use super::builder::{BuildError, Policy, PoolConfig, SharePolicy};
use super::job::{JobRef, StackJob};
use super::latch::{CrossLatch, LockLatch};
use super::metrics::PoolCounters;
use super::offers::OutsideOffers;
use super::sleep::Sleep;
use super::worker::{self, WorkerThread};
use crate::sync::deque::{Injector, Stealer, Worker};
use crate::sync::mutant::{self, Mutant};
use crate::sync::{thread, Arc, AtomicBool, AtomicU32, Condvar, Mutex, Ordering};
use crossbeam_utils::CachePadded;

/// Where a thread stands relative to a pool ([`Registry::caller`]).
pub(crate) enum Caller<'w> {
    /// A worker of this pool.
    OwnWorker(&'w WorkerThread),
    /// A worker of another pool.
    OtherPool(&'w WorkerThread),
    /// Any other thread.
    Outside,
}

/// `ForkRequests::unrecorded_left` when no sampling period is counted (the default): every join
/// may go unrecorded, and the owner's join only reads the word, never writes it, until a thief
/// zeroes it or one of the first recorded forks returns.
pub(crate) const UNCOUNTED: u32 = u32::MAX;

/// How thieves ask a worker for work, and how the worker decides which forks to record.
///
/// Two cache lines: the owner reads the count (and, with a counted sampling period, writes it)
/// at almost every `join`, while searching thieves read the flag at every empty steal; on one
/// line, every search would cost the owner a coherence miss per join. Thieves write the count
/// only when they raise the flag.
pub(crate) struct ForkRequests {
    /// A thief found this worker's deque empty and would like it to publish a private fork (lazy
    /// share policy); the owner clears it when it publishes. Under the eager policy it is set from
    /// the start and never cleared, so the fork path has one check for both policies.
    pub(crate) hungry: CachePadded<AtomicBool>,
    /// How many more joins the owner may run without recording their forks
    /// (`WorkerThread::may_skip_fork`), or [`UNCOUNTED`]: any number, not counted. A counted
    /// value is counted down by the owner; a thief that raises `hungry` also zeroes it, so the
    /// owner's next join is recorded and sees the flag. Only a hint: with a counted period the
    /// owner's count-down store can overwrite the thief's zero (a window of one load and one
    /// store), which delays the answer by at most one sampling period of joins (the flag stays set
    /// and every recorded join reads it); `UNCOUNTED` is never written by a join, so it has no
    /// such window. The owner narrows the other window itself: it re-reads the flag after each
    /// store of a non-zero value (`refresh_fork_sampling`).
    pub(crate) unrecorded_left: CachePadded<AtomicU32>,
}

pub(crate) struct Registry {
    /// Work that arrives from outside the pool (FIFO). Workers look here after their own deque.
    pub(crate) injector: Injector<JobRef>,
    /// The second halves of outside `join`s, offered until a worker claims or the caller
    /// withdraws them (see `offers.rs`). Workers look here after the injector.
    pub(crate) offers: OutsideOffers,
    /// Thief ends of every worker's deque, indexed by worker.
    pub(crate) stealers: Box<[Stealer<JobRef>]>,
    /// Per worker: how thieves ask it for work (see [`ForkRequests`]).
    pub(crate) fork_requests: Box<[ForkRequests]>,
    pub(crate) sleep: Sleep,
    pub(crate) counters: PoolCounters,
    #[cfg(feature = "trace")]
    pub(crate) trace: super::trace::PoolTrace,
    pub(crate) policy: Policy,
    terminating: AtomicBool,
    threads: Mutex<Vec<thread::JoinHandle<()>>>,
    /// Workers that have finished starting (pinned, registered for unpark); `build` returns only
    /// once all have, so the pool is fully formed (and its metrics complete) when the user gets it.
    started: Mutex<usize>,
    all_started: Condvar,
}

impl Registry {
    pub(crate) fn new(config: PoolConfig) -> Result<Arc<Registry>, BuildError> {
        let PoolConfig {
            num_threads,
            policy,
            pin_threads,
            thread_names,
            stack_size,
            start_handler,
            exit_handler,
        } = config;
        // Checked before any thread starts: std's `spawn` panics on a NUL in a name, and from the
        // middle of this loop that panic left the workers started before it running, unowned.
        if let Some(worker) = thread_names.iter().position(|name| name.contains('\0')) {
            return Err(BuildError::invalid_thread_name(
                worker,
                thread_names[worker].clone(),
            ));
        }
        let cores = if pin_threads {
            pinning_cores()?
        } else {
            Vec::new()
        };
        let deques: Vec<Worker<JobRef>> = (0..num_threads).map(|_| Worker::new_lifo()).collect();
        let counters = PoolCounters::new(num_threads);
        let registry = Arc::new(Registry {
            injector: Injector::new(),
            offers: OutsideOffers::new(),
            stealers: deques.iter().map(|d| d.stealer()).collect(),
            fork_requests: (0..num_threads)
                .map(|_| ForkRequests {
                    hungry: CachePadded::new(AtomicBool::new(policy.share == SharePolicy::Eager)),
                    unrecorded_left: CachePadded::new(AtomicU32::new(0)),
                })
                .collect(),
            sleep: Sleep::new(num_threads, policy.max_searchers, counters.epoch),
            counters,
            #[cfg(feature = "trace")]
            trace: super::trace::PoolTrace::new(num_threads),
            policy,
            terminating: AtomicBool::new(false),
            threads: Mutex::new(Vec::with_capacity(num_threads)),
            started: Mutex::new(0),
            all_started: Condvar::new(),
        });
        for ((index, deque), name) in deques.into_iter().enumerate().zip(thread_names) {
            let core = if cores.is_empty() {
                None
            } else {
                Some(cores[index % cores.len()])
            };
            let mut thread_builder = thread::Builder::new().name(name);
            if let Some(size) = stack_size {
                thread_builder = thread_builder.stack_size(size);
            }
            let for_thread = Arc::clone(&registry);
            let (on_start, on_exit) = (start_handler.clone(), exit_handler.clone());
            let spawned = thread_builder.spawn(move || {
                worker::run_handler(on_start.as_deref(), index, "start");
                worker::main_loop(for_thread, index, deque, core);
                worker::run_handler(on_exit.as_deref(), index, "exit");
            });
            match spawned {
                Ok(handle) => registry.threads.lock().unwrap().push(handle),
                Err(error) => {
                    registry.terminate_and_join();
                    return Err(BuildError::spawn(error));
                }
            }
        }
        let mut started = registry.started.lock().unwrap();
        while *started < num_threads {
            started = registry.all_started.wait(started).unwrap();
        }
        drop(started);
        Ok(registry)
    }

    /// Called by each worker once it is ready to run and to be woken.
    pub(crate) fn worker_started(&self) {
        *self.started.lock().unwrap() += 1;
        self.all_started.notify_all();
    }

    #[inline]
    pub(crate) fn num_threads(&self) -> usize {
        self.stealers.len()
    }

    #[inline]
    pub(crate) fn eager(&self) -> bool {
        self.policy.share == SharePolicy::Eager
    }

    #[inline]
    pub(crate) fn is_terminating(&self) -> bool {
        // Acquire pairs with the Release store in `terminate`: a worker that sees the flag sees
        // every job pushed before it (those pushes happen-before `terminate` in the dropping thread).
        self.terminating.load(Ordering::Acquire)
    }

    /// Is there visible work anywhere? A sleeper's re-check after its fence.
    pub(crate) fn has_visible_work(&self) -> bool {
        !self.injector.is_empty()
            || self.offers.any()
            || self.stealers.iter().any(|s| !s.is_empty())
    }

    /// Pushes a job from outside the pool (or from another pool) and wakes a worker if needed.
    pub(crate) fn inject(&self, job: JobRef) {
        #[cfg(feature = "trace")]
        let job = self.timed(job);
        self.injector.push(job);
        self.sleep.new_work(self.counters.outside());
    }

    /// Wraps an injected job so that starting it records its inject-to-start latency.
    #[cfg(feature = "trace")]
    fn timed(&self, job: JobRef) -> JobRef {
        struct RegistryPtr(*const Registry);
        // SAFETY: `Registry` is `Sync`; the pointer is only dereferenced by a worker of this
        // registry, which keeps it alive through its own `Arc`.
        unsafe impl Send for RegistryPtr {}
        let submitted = super::metrics::now_ns(self.counters.epoch);
        let registry = RegistryPtr(self);
        let timed = super::job::HeapJob::new(move || {
            let registry = registry;
            // SAFETY: a worker of this registry runs the job, so the registry is alive.
            let registry = unsafe { &*registry.0 };
            let waited = super::metrics::now_ns(registry.counters.epoch).saturating_sub(submitted);
            registry.counters.inject_latency.record(waited);
            // SAFETY: the wrapped job is executed exactly once, here, while still live (the
            // wrapper inherits its liveness contract).
            unsafe { job.execute() }
        });
        // SAFETY: the wrapper owns only a JobRef (whose own contract is unchanged) and a pointer
        // to the registry, which outlives every job queued on it.
        unsafe { timed.into_job_ref() }
    }

    /// Marks worker `victim` as wanted: at its next fork it publishes its oldest private fork.
    #[inline]
    pub(crate) fn mark_hungry(&self, victim: usize) {
        let requests = &self.fork_requests[victim];
        // Read first: writing an already-set flag would bounce the victim's cache line for nothing.
        // Thieves write the count-down only here, when they raise the flag: it is the line the
        // owner writes at every join (see `ForkRequests`).
        if !requests.hungry.load(Ordering::Relaxed) {
            requests.hungry.store(true, Ordering::Relaxed);
            requests.unrecorded_left.store(0, Ordering::Relaxed);
        }
    }

    /// Where the calling thread stands relative to this pool: the one question every entry point
    /// (`install`, `join`, `scope`, spawns, `Parallel`) asks before it touches the pool.
    #[inline]
    pub(crate) fn caller(&self) -> Caller<'static> {
        match WorkerThread::current() {
            Some(worker) if std::ptr::eq(&**worker.registry(), self) => Caller::OwnWorker(worker),
            Some(worker) => Caller::OtherPool(worker),
            None => Caller::Outside,
        }
    }

    /// The one door into the pool: runs `op` on a worker of this pool and returns its result.
    /// On one of its own workers, `op` runs right there; a worker of another pool injects it and
    /// keeps working for its own pool until the result is in (pools calling into each other
    /// cannot deadlock); any other thread injects it and blocks.
    #[inline]
    pub(crate) fn in_worker<OP, R>(&self, op: OP) -> R
    where
        OP: FnOnce(&WorkerThread) -> R + Send,
        R: Send,
    {
        match self.caller() {
            Caller::OwnWorker(worker) => op(worker),
            Caller::OtherPool(worker) => self.in_worker_cross(worker, op),
            Caller::Outside => self.in_worker_cold(op),
        }
    }

    /// Queues a job that is stealable at once: on the current worker's own deque if it is one of
    /// ours, otherwise through the injector.
    #[inline]
    pub(crate) fn push_or_inject(&self, job: JobRef) {
        match self.caller() {
            Caller::OwnWorker(worker) => worker.push_shared(job),
            _ => self.inject(job),
        }
    }

    /// Runs `op` on a worker of this pool and blocks the calling (non-worker) thread until done.
    #[cold]
    pub(crate) fn in_worker_cold<OP, R>(&self, op: OP) -> R
    where
        OP: FnOnce(&WorkerThread) -> R + Send,
        R: Send,
    {
        let job = StackJob::new(
            || {
                let worker =
                    WorkerThread::current().expect("parjob: injected job ran outside a worker");
                op(worker)
            },
            LockLatch::new(),
        );
        // SAFETY: `job` lives in this frame, which we leave only after `wait` saw its latch set,
        // i.e. after the job finished its last access.
        self.inject(unsafe { job.as_job_ref() });
        job.latch.wait();
        job.into_result().into_return_value()
    }

    /// Runs `op` on a worker of this pool while `current`, a worker of another pool, keeps working
    /// for its own pool until the result is in (so pools calling into each other cannot deadlock).
    #[cold]
    pub(crate) fn in_worker_cross<OP, R>(&self, current: &WorkerThread, op: OP) -> R
    where
        OP: FnOnce(&WorkerThread) -> R + Send,
        R: Send,
    {
        let job = StackJob::new(
            || {
                let worker =
                    WorkerThread::current().expect("parjob: injected job ran outside a worker");
                op(worker)
            },
            CrossLatch::new(current.registry(), current.index()),
        );
        // SAFETY: `job` lives in this frame, and `current.wait_until` returns only once the latch
        // is set, which is the job's last access to itself; so the job outlives its execution.
        self.inject(unsafe { job.as_job_ref() });
        current.wait_until(job.latch.core());
        job.into_result().into_return_value()
    }

    /// Tells workers to exit once the queues are drained, and wakes them all.
    pub(crate) fn terminate(&self) {
        // Release pairs with the Acquire load in `is_terminating`; the wake-ups that follow go
        // through `unpark`, which orders them after this store.
        self.terminating.store(true, Ordering::Release);
        self.sleep.wake_all();
    }

    /// `terminate`, then joins the worker threads, unless called from one of them (a task that held
    /// the last handle): a thread cannot join itself, so then the workers exit on their own.
    pub(crate) fn terminate_and_join(&self) {
        self.terminate();
        if matches!(self.caller(), Caller::OwnWorker(_)) {
            return;
        }
        let handles = std::mem::take(&mut *self.threads.lock().unwrap());
        for handle in handles {
            // Task panics never unwind a worker, so an Err here would be a scheduler bug; the
            // thread is gone either way, which is all shutdown needs.
            let _ = handle.join();
        }
    }

    /// Under the `Mutant::ShutdownSkipsDrain` twin, workers leave as soon as they see the flag.
    #[inline]
    pub(crate) fn exits_without_draining(&self) -> bool {
        mutant::active(Mutant::ShutdownSkipsDrain) && self.is_terminating()
    }
}

fn pinning_cores() -> Result<Vec<usize>, BuildError> {
    crate::sync::pinnable_cores().ok_or_else(BuildError::pinning_unsupported)
}
