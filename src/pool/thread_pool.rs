//! The public `ThreadPool` handle, and the global pool.

use super::builder::ThreadPoolBuilder;
use super::join as fork_join;
use super::metrics::Metrics;
use super::registry::{Caller, Registry};
use super::scope::{self, Scope};
use super::unwind;
use super::worker::WorkerThread;
use crate::sync::Arc;
use std::fmt;

/// A handle to a work-stealing thread pool. Cheap to clone (`Arc`), `Send + Sync`.
///
/// Dropping the last handle stops the workers once the work already queued is done, and joins them
/// (unless the last handle is dropped on one of the pool's own workers, which cannot join itself;
/// those threads then exit on their own).
///
/// ```
/// let pool = parjob::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
/// let data = vec![1, 2, 3, 4];
/// let (left, right) = pool.join(|| data[..2].iter().sum::<i32>(), || data[2..].iter().sum::<i32>());
/// assert_eq!(left + right, 10);
/// ```
#[derive(Clone)]
pub struct ThreadPool {
    inner: Arc<PoolHandle>,
}

/// Owns the registry on behalf of every user handle; its drop is the shutdown.
struct PoolHandle {
    registry: Arc<Registry>,
    /// The global pool is never shut down.
    shut_down_on_drop: bool,
}

impl Drop for PoolHandle {
    fn drop(&mut self) {
        if self.shut_down_on_drop {
            self.registry.terminate_and_join();
        }
    }
}

impl fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadPool")
            .field("num_threads", &self.num_threads())
            .finish()
    }
}

impl ThreadPool {
    pub(crate) fn from_registry(registry: Arc<Registry>) -> Self {
        ThreadPool {
            inner: Arc::new(PoolHandle {
                registry,
                shut_down_on_drop: true,
            }),
        }
    }

    #[inline]
    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.inner.registry
    }

    /// Number of worker threads.
    pub fn num_threads(&self) -> usize {
        self.registry().num_threads()
    }

    /// Runs `op` on a worker of this pool and returns its result; `join`, `scope` and `Parallel`
    /// calls inside it use this pool. If called from a worker of this pool, runs `op` directly.
    /// From another pool's worker, that worker keeps running its own pool's work while it waits.
    ///
    /// # Panics
    /// Resumes `op`'s panic, with its original payload, in the caller.
    ///
    /// ```
    /// let pool = parjob::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    /// let index = pool.install(parjob::current_thread_index);
    /// assert!(index.unwrap() < 2);
    /// ```
    pub fn install<OP, R>(&self, op: OP) -> R
    where
        OP: FnOnce() -> R + Send,
        R: Send,
    {
        self.registry().in_worker(|_| op())
    }

    /// Runs `a` and `b`, potentially in parallel, on this pool, and returns both results.
    ///
    /// Called from outside the pool, the calling thread runs `a` itself and offers `b` to the
    /// workers, taking it back if none has started it by then.
    ///
    /// # Panics
    /// Both closures always run to completion (or panic), even if the other panicked. Then `a`'s
    /// panic is resumed if it had one, else `b`'s.
    pub fn join<A, B, RA, RB>(&self, a: A, b: B) -> (RA, RB)
    where
        A: FnOnce() -> RA + Send,
        B: FnOnce() -> RB + Send,
        RA: Send,
        RB: Send,
    {
        fork_join::join_on(self.registry(), a, b)
    }

    /// Creates a [`Scope`] on this pool, runs `op` in it and waits for every task spawned in it.
    ///
    /// # Panics
    /// After every task has finished: resumes `op`'s panic if it had one, else the first task panic.
    ///
    /// ```
    /// let pool = parjob::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    /// let mut halves = [0u64; 2];
    /// let (low, high) = halves.split_at_mut(1);
    /// pool.scope(|s| {
    ///     s.spawn(|_| low[0] = (0..500).sum());
    ///     s.spawn(|_| high[0] = (500..1000).sum());
    /// });
    /// assert_eq!(halves[0] + halves[1], 499_500);
    /// ```
    pub fn scope<'scope, OP, R>(&self, op: OP) -> R
    where
        OP: FnOnce(&Scope<'scope>) -> R + Send,
        R: Send,
    {
        self.registry()
            .in_worker(|worker| scope::scope_in_worker(worker, op))
    }

    /// A snapshot of the scheduler counters, one entry per worker.
    pub fn metrics(&self) -> Metrics {
        self.registry().counters.snapshot()
    }

    /// Starts recording a scheduler trace (cargo feature `trace`): every worker appends
    /// timestamped events (task start/end, steal with its victim, injector pop, publication,
    /// sleep, wake) to its own bounded buffer, without locks. Starting again discards the previous
    /// recording.
    ///
    /// Memory: the first start allocates [`TRACE_CAPACITY`](crate::TRACE_CAPACITY) events
    /// (1 MiB) per worker, and [`Trace::summary`](crate::Trace::summary) counts steals in a
    /// workers × workers matrix: meant for pools of up to a few hundred threads, not for ones
    /// near [`MAX_NUM_THREADS`](crate::MAX_NUM_THREADS), whose allocations would fail (and
    /// abort).
    ///
    /// ```
    /// # #[cfg(feature = "trace")] {
    /// let pool = parjob::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    /// pool.start_trace();
    /// pool.scope(|s| for _ in 0..4 { s.spawn(|_| { std::hint::black_box(1 + 1); }); });
    /// let trace = pool.stop_trace();
    /// let tasks: usize = (0..2).map(|w| trace.events(w).iter()
    ///     .filter(|e| e.kind == parjob::EventKind::TaskStart).count()).sum();
    /// assert_eq!(tasks, 5); // the scope body (an injected job) and its 4 spawns
    /// println!("{}", trace.summary());
    /// # }
    /// ```
    #[cfg(feature = "trace")]
    pub fn start_trace(&self) {
        self.registry().trace.start();
    }

    /// Stops recording and returns what was recorded since [`start_trace`](Self::start_trace)
    /// (feature `trace`).
    #[cfg(feature = "trace")]
    pub fn stop_trace(&self) -> super::trace::Trace {
        self.registry().trace.stop()
    }

    /// Queues a `'static` job on this pool without waiting for it (used by the loom models). The
    /// job should catch its own panics: one that escapes aborts the process
    /// (`HeapJob::execute`), since it could skip whatever the job owed its waiter.
    #[cfg_attr(not(loom), allow(dead_code))]
    pub(crate) fn spawn_detached<F: FnOnce() + Send + 'static>(&self, job: F) {
        // SAFETY: the job is 'static and owns everything it uses.
        unsafe { self.spawn_unchecked(job) }
    }

    /// Queues a job that may borrow non-`'static` data, without waiting for it.
    ///
    /// # Safety
    /// Everything `job` reaches through a non-`'static` borrow must stay alive until the job's
    /// last access to it, on every path, even if the caller panics or a user leaks whatever the
    /// API handed out: the caller waits for a signal the job gives after that access, in code it
    /// owns and never hands out (the `Parallel` callers: a settle guard that closes the call's
    /// `Tracker` and waits until it is quiescent). If the job may still run after that signal,
    /// its closure must not capture such borrows itself, only owning handles (an `Arc`) to state
    /// that reaches them: a by-value closure's captured references stay protected (Stacked/Tree
    /// Borrows) until it returns. `job` should not panic (one that does aborts the process).
    pub(crate) unsafe fn spawn_unchecked<F: FnOnce() + Send>(&self, job: F) {
        let job = super::job::HeapJob::new(job);
        // SAFETY: `into_job_ref` needs what `job` borrows to outlive every access the job makes
        // to it; this function's contract puts exactly that on the caller. The job cannot unwind
        // into the worker: `HeapJob::execute` aborts if it tries.
        let job_ref = unsafe { job.into_job_ref() };
        self.registry().push_or_inject(job_ref);
    }

    /// Is the current thread one of this pool's workers?
    pub(crate) fn is_current(&self) -> bool {
        matches!(self.registry().caller(), Caller::OwnWorker(_))
    }
}

impl ThreadPool {
    /// A non-owning handle to the pool the current thread works for (dropping it shuts nothing
    /// down); `None` outside any pool.
    pub(crate) fn current() -> Option<ThreadPool> {
        WorkerThread::current().map(|worker| ThreadPool {
            inner: Arc::new(PoolHandle {
                registry: Arc::clone(worker.registry()),
                shut_down_on_drop: false,
            }),
        })
    }

    /// The pool that `join`, `scope` and `Parallel` use outside any pool. Built on first use with
    /// [`cpu_count`] threads (which honours `PARJOB_NUM_THREADS`, so the two
    /// always agree); never shut down.
    pub(crate) fn global() -> &'static ThreadPool {
        use std::sync::OnceLock;
        static GLOBAL: OnceLock<ThreadPool> = OnceLock::new();
        GLOBAL.get_or_init(|| {
            let registry = ThreadPoolBuilder::new()
                .num_threads(crate::cpu_count())
                .resolve()
                .and_then(Registry::new)
                .unwrap_or_else(|e| panic!("parjob: cannot start the global thread pool: {e}"));
            ThreadPool {
                inner: Arc::new(PoolHandle {
                    registry,
                    shut_down_on_drop: false,
                }),
            }
        })
    }
}

/// Runs `a` and `b`, potentially in parallel, and returns both results.
///
/// On a worker thread this uses that worker's pool; elsewhere, the global pool (the calling thread
/// runs `a` itself and takes `b` back if no worker started it). Closures may borrow from the
/// caller's stack.
///
/// "Potentially in parallel" means exactly that: `b` may run on the same thread after `a` — always
/// on a 1-thread pool, and with the default [`SharePolicy::Lazy`](crate::SharePolicy::Lazy)
/// whenever no idle worker asks for work while `a` runs, or the join is one of those whose
/// second half is not even recorded (see
/// [`ThreadPoolBuilder::fork_sample_period`](crate::ThreadPoolBuilder::fork_sample_period)), on
/// any number of threads. So `a` must never wait for something that `b` does (a channel message,
/// a flag): that deadlocks (as it can with rayon on one thread).
///
/// # Panics
/// Both closures always run (or panic); then `a`'s panic is resumed if it had one, else `b`'s.
///
/// ```
/// fn fib(n: u64) -> u64 {
///     if n < 2 { return n; }
///     let (a, b) = parjob::join(|| fib(n - 1), || fib(n - 2));
///     a + b
/// }
/// assert_eq!(fib(20), 6765);
/// ```
// Never inlined: in a recursive caller like `fib` above, this makes `join` the function that
// recurses, with the caller's small body (its leaf test) inlined into it, so a leaf costs no call.
// Inlined the other way round, every leaf would pay a call, which on fine-grained recursions
// costs more than the scheduler's own work per join.
#[inline(never)]
pub fn join<A, B, RA, RB>(a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA + Send,
    B: FnOnce() -> RB + Send,
    RA: Send,
    RB: Send,
{
    // The path almost every join on a worker takes, decided from one thread-local: A then B,
    // inline, as the sequential program would (see `WorkerThread::may_skip_fork`).
    if WorkerThread::may_skip_fork_here() {
        return fork_join::run_b_inline(unwind::halt_unwinding(a), b);
    }
    match WorkerThread::current() {
        Some(worker) => fork_join::join_recorded(worker, a, b),
        None => fork_join::join_outside(ThreadPool::global().registry(), a, b),
    }
}

/// Creates a [`Scope`] on the current pool (or the global pool), runs `op` in it and returns once
/// every task spawned in the scope has finished.
///
/// # Panics
/// After every task has finished: resumes `op`'s panic if it had one, else the first task panic.
///
/// ```
/// let data = [1, 2, 3, 4, 5, 6];
/// let mut sums = [0; 2];
/// let (a, b) = sums.split_at_mut(1);
/// parjob::scope(|s| {
///     s.spawn(|_| a[0] = data[..3].iter().sum());
///     s.spawn(|s| {
///         s.spawn(|_| println!("tasks may spawn more tasks"));
///         b[0] = data[3..].iter().sum();
///     });
/// });
/// assert_eq!(sums, [6, 15]);
/// ```
pub fn scope<'scope, OP, R>(op: OP) -> R
where
    OP: FnOnce(&Scope<'scope>) -> R + Send,
    R: Send,
{
    match WorkerThread::current() {
        Some(worker) => scope::scope_in_worker(worker, op),
        None => ThreadPool::global().scope(op),
    }
}

/// The index of the current thread within the pool it works for, or `None` outside any pool.
///
/// ```
/// assert_eq!(parjob::current_thread_index(), None);
/// let pool = parjob::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
/// assert!(pool.install(|| parjob::current_thread_index()).is_some());
/// ```
pub fn current_thread_index() -> Option<usize> {
    WorkerThread::current().map(|w| w.index())
}

/// The number of cores parjob uses: `PARJOB_NUM_THREADS` if it is set to a positive number no
/// larger than [`MAX_NUM_THREADS`](crate::MAX_NUM_THREADS) (as the global pool does, and as process workers get it, see `docs/joblib.md`), else the cores
/// this process may use: std's `available_parallelism`, which on Linux takes the cgroup CPU quota
/// and the affinity mask into account. At least 1. It is the global pool's size and what
/// `n_jobs = -1` means.
///
/// Read once per process and cached: the lookup reads cgroup files (tens of microseconds), and
/// every `Parallel` call needs the value.
///
/// ```
/// assert!(parjob::cpu_count() >= 1);
/// ```
pub fn cpu_count() -> usize {
    use std::sync::OnceLock;
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| {
        let configured = std::env::var("PARJOB_NUM_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            // A count no pool may have is ignored like any other invalid value: taken, it made
            // the global pool fail to start and `n_jobs = -1` exceed the maximum.
            .filter(|&n| n > 0 && n <= super::builder::MAX_NUM_THREADS);
        configured.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    })
}
