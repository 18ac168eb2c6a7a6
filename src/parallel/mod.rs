//! joblib's `Parallel` and `delayed`, on parjob's pools.
//!
//! ```text
//! delayed.rs   Delayed, delayed(), delayed!, Apply      a call captured now, run later
//! mod.rs       Parallel: the builder, n_jobs rules, run / try_run / run_iter / run_unordered
//! config.rs    parallel_config / parallel_backend       thread-local scoped defaults
//! backend.rs   Backend, Plan, the pool cache            where a call runs
//! batch.rs     BatchSize, Batcher                       joblib-style adaptive batching
//! cancel.rs    Tracker                                  the cancellation protocol (loom-checked)
//! engine/      Engine, Setup, Limits; shared.rs: Shared  the one engine: window, tokens, help-or-wait
//! dispatch.rs  run / try_run                            results in place, assembled in order
//! stream.rs    run_iter / run_unordered / scope_iter    ordering of streamed results
//! indexed.rs   map / run_indexed                        splittable input: runners claim ranges
//! progress.rs  on_progress, verbose lines, progress bar
//! error.rs     Error, ConfigError
//! ```
//! `docs/joblib.md` maps every joblib parameter to this module.

pub(crate) mod backend;
pub(crate) mod batch;
pub(crate) mod cancel;
pub(crate) mod config;
pub(crate) mod delayed;
mod dispatch;
mod engine;
pub(crate) mod error;
mod indexed;
#[cfg(feature = "processes")]
pub(crate) mod processes;
pub(crate) mod progress;
pub(crate) mod stream;

use crate::pool::unwind::{drop_contained, holding, resume_unwinding};
use backend::{Backend, Plan};
use batch::{BatchSize, Batcher};
use delayed::{Apply, Delayed};
use engine::{Limits, Setup, Stop};
use error::{ConfigError, Error};
use progress::{Callback, Progress};
use std::time::{Duration, Instant};

/// joblib's `effective_n_jobs`: how many workers a `Parallel::new().n_jobs(n_jobs)` call made
/// here would run tasks on, under the backend in force on this thread (the innermost
/// [`parallel_backend`](crate::parallel_backend)/[`parallel_config`](crate::parallel_config),
/// else [`Backend::WorkStealing`]).
///
/// `n_jobs` resolves as `-1` = all usable cores ([`cpu_count`](crate::cpu_count)), `-k` =
/// cores + 1 - k (at least 1), `k > 0` = `k` (more than the cores is allowed, up to
/// [`MAX_NUM_THREADS`](crate::MAX_NUM_THREADS)), `0` and larger `k` = an error.
/// Then the backend caps it: [`Backend::Sequential`] runs everything on the caller (1),
/// [`Backend::Pool`] at most its threads; a [`ProcessPool`](crate::processes::ProcessPool)
/// backend at most its workers (for the `*_in_processes` methods: the thread methods run on the
/// default backend's threads); the default backend and `Backend::Processes` start exactly that
/// many threads or processes, except that a call on the default backend nested in a pool (made
/// on one of its workers, or by a task that a call on it runs on the calling thread) runs on that
/// pool, at most its threads.
///
/// ```
/// use parjob::{effective_n_jobs, parallel_backend, Backend, ThreadPoolBuilder};
/// let cores = parjob::cpu_count();
/// assert_eq!(effective_n_jobs(-1), Ok(cores));
/// assert_eq!(effective_n_jobs(-2), Ok((cores - 1).max(1)));
/// assert_eq!(effective_n_jobs(-1000), Ok(1));
/// assert_eq!(effective_n_jobs(64), Ok(64));
/// assert!(effective_n_jobs(0).is_err());
/// assert_eq!(parallel_backend(Backend::Sequential, || effective_n_jobs(-1)), Ok(1));
/// let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
/// assert_eq!(parallel_backend(Backend::Pool(pool), || effective_n_jobs(8)), Ok(2));
/// ```
pub fn effective_n_jobs(n_jobs: i32) -> Result<usize, ConfigError> {
    let n = resolve_n_jobs(n_jobs)?;
    Ok(match config::current().backend.unwrap_or_default() {
        Backend::Sequential => 1,
        Backend::Pool(pool) => n.min(pool.num_threads()),
        #[cfg(feature = "processes")]
        Backend::ProcessPool(pool) => n.min(pool.num_workers()),
        #[cfg(feature = "processes")]
        Backend::Processes => n,
        // Nested calls run on the pool they are made in (`Plan::new`).
        Backend::WorkStealing => {
            backend::current_pool().map_or(n, |(pool, _)| n.min(pool.num_threads()))
        }
    })
}

/// joblib's rules for `n_jobs` alone, whatever the backend (see [`effective_n_jobs`]).
pub(crate) fn resolve_n_jobs(n_jobs: i32) -> Result<usize, ConfigError> {
    match n_jobs {
        0 => Err(ConfigError::ZeroNJobs),
        // Refused here, not when a pool of that many threads fails to allocate its state (an
        // abort, which neither `try_run`'s `Err` nor `catch_unwind` could report).
        n if n > 0 && n as usize > crate::MAX_NUM_THREADS => {
            Err(ConfigError::TooManyJobs { n_jobs: n })
        }
        n if n > 0 => Ok(n as usize),
        n => {
            let cores = cores() as i64;
            Ok((cores + 1 + i64::from(n)).max(1) as usize)
        }
    }
}

/// [`cpu_count`](crate::cpu_count), read once: std's `available_parallelism` reads cgroup files on
/// every call (tens of microseconds), far more than a small `Parallel` call should cost.
pub(crate) fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(crate::cpu_count)
}

/// joblib's `Parallel`: runs [`Delayed`] tasks on several threads.
///
/// Build it with [`Parallel::new`] and the builder methods, then call [`run`](Parallel::run)
/// (results in input order), [`try_run`](Parallel::try_run) (tasks returning `Result`, first error
/// cancels the rest), [`run_iter`](Parallel::run_iter) or [`run_unordered`](Parallel::run_unordered)
/// (results as they complete). One `Parallel` may be used for many calls.
///
/// ```
/// use parjob::{delayed, Parallel};
/// fn calcular_raiz_cuadrada(n: f64) -> f64 { n.sqrt() }
/// let numeros: Vec<f64> = (0..10).map(|i| (i * i) as f64).collect();
/// let resultado: Vec<f64> = Parallel::new().n_jobs(2)
///     .run(numeros.iter().map(|&n| delayed(calcular_raiz_cuadrada)(n)));
/// assert_eq!(resultado, (0..10).map(|i| i as f64).collect::<Vec<_>>());
/// ```
pub struct Parallel<'p> {
    n_jobs: i32,
    backend: Backend,
    batch_size: BatchSize,
    pre_dispatch: Option<usize>,
    timeout: Option<Duration>,
    deadline: Option<Duration>,
    verbose: u32,
    progress_bar: bool,
    on_progress: Option<Callback<'p>>,
}

impl std::fmt::Debug for Parallel<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parallel")
            .field("n_jobs", &self.n_jobs)
            .field("backend", &self.backend)
            .field("batch_size", &self.batch_size)
            .field("pre_dispatch", &self.pre_dispatch)
            .field("timeout", &self.timeout)
            .field("deadline", &self.deadline)
            .field("verbose", &self.verbose)
            .finish_non_exhaustive()
    }
}

impl Default for Parallel<'_> {
    fn default() -> Self {
        Parallel::new()
    }
}

impl<'p> Parallel<'p> {
    /// A `Parallel` with the current defaults: those of the innermost
    /// [`parallel_config`](crate::parallel_config) on this thread, else all usable cores
    /// (`n_jobs = -1`; joblib's default is 1), [`Backend::WorkStealing`], [`BatchSize::Auto`],
    /// `pre_dispatch = 2 × n_jobs`, no timeout, silent.
    ///
    /// ```
    /// let p = parjob::Parallel::new();
    /// assert_eq!(p.get_n_jobs(), -1);
    /// ```
    pub fn new() -> Self {
        let config = config::current();
        Parallel {
            n_jobs: config.n_jobs.unwrap_or(-1),
            backend: config.backend.unwrap_or_default(),
            batch_size: BatchSize::Auto,
            pre_dispatch: None,
            timeout: None,
            deadline: None,
            verbose: config.verbose.unwrap_or(0),
            progress_bar: false,
            on_progress: None,
        }
    }

    /// How many workers run this call's tasks at once, with joblib's rules (see
    /// [`effective_n_jobs`]): `-1` all usable cores, `-k` cores + 1 - k, `k > 0` exactly `k`
    /// threads (even above the core count), `0` an error when the call starts. An effective count
    /// of 1 runs every task on the calling thread.
    ///
    /// Outside any pool, with the default backend, each distinct effective count other than the
    /// core count gets a pool of exactly that many threads, built on first use and kept for the
    /// life of the process (so repeated calls spawn no threads). Those threads are never released:
    /// `n_jobs(10_000)` leaves 10,000 idle threads behind, and every distinct count adds its own
    /// pool. For many different or very large counts, build a pool and use
    /// [`Backend::Pool`].
    ///
    /// ```
    /// use parjob::{delayed, Parallel};
    /// let caller = std::thread::current().id();
    /// let ids = Parallel::new().n_jobs(1).run((0..3).map(|_| delayed(|_: ()| std::thread::current().id())(())));
    /// assert!(ids.iter().all(|&id| id == caller));
    /// ```
    pub fn n_jobs(mut self, n_jobs: i32) -> Self {
        self.n_jobs = n_jobs;
        self
    }

    /// The `n_jobs` setting as given (not resolved; see [`effective_n_jobs`]).
    ///
    /// ```
    /// assert_eq!(parjob::Parallel::new().n_jobs(-2).get_n_jobs(), -2);
    /// ```
    pub fn get_n_jobs(&self) -> i32 {
        self.n_jobs
    }

    /// Where the tasks run (see [`Backend`]).
    ///
    /// ```
    /// use parjob::{delayed, Backend, Parallel};
    /// let out = Parallel::new().backend(Backend::Sequential).run((0..3).map(|x| delayed(|x: i32| -x)(x)));
    /// assert_eq!(out, vec![0, -1, -2]);
    /// ```
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Tasks per dispatch (see [`BatchSize`]); `Fixed(0)` is a configuration error.
    ///
    /// ```
    /// use parjob::{delayed, BatchSize, Parallel};
    /// let out = Parallel::new().batch_size(BatchSize::Fixed(4)).run((0..10).map(|x| delayed(|x: i32| x + 1)(x)));
    /// assert_eq!(out, (1..=10).collect::<Vec<_>>());
    /// ```
    pub fn batch_size(mut self, batch_size: BatchSize) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// How many tasks may be taken from the input ahead of the results: joblib's `pre_dispatch`,
    /// default `2 × n_jobs` (but `'all'` for a call made from inside a pool whose input has an
    /// exact length: the calling worker runs other jobs while it waits, and must not hold its own
    /// call back meanwhile; "all" is the length the input's `size_hint` states, so an input that
    /// lies about it is still pulled no further ahead); `usize::MAX` is joblib's `'all'`.
    /// Counted in tasks while batches hold one task (always the case at the start of a call, and
    /// with slow tasks); once `Auto` batching packs several tasks per batch, the window is
    /// `pre_dispatch` batches. The input is consumed lazily, so a huge lazy input never sits in
    /// memory at once. `0` is an error.
    ///
    /// ```
    /// use parjob::{delayed, Parallel};
    /// let out = Parallel::new().pre_dispatch(4).run((0..100).map(|x| delayed(|x: u32| x % 7)(x)));
    /// assert_eq!(out.len(), 100);
    /// ```
    pub fn pre_dispatch(mut self, tasks: usize) -> Self {
        self.pre_dispatch = Some(tasks);
        self
    }

    /// joblib's `timeout`: the longest the call waits for its next result (for `run`/`try_run`:
    /// for any task to finish; for `run_iter`: for the next result in order; for
    /// `run_unordered`: for any result). Cooperative: when it expires, tasks already running
    /// finish and tasks not yet started are cancelled; `run` panics, `try_run` returns
    /// [`Error::Timeout`], a stream's `next()` panics. Unlike an expired
    /// [`deadline`](Parallel::deadline) (a budget on the whole call), an expired timeout fails
    /// the call even if no task was left to cancel, as joblib raises: a wait was longer than
    /// allowed. For `run`/`try_run` every thread running the call's tasks (the caller, when it
    /// helps, included) checks the timeout before each task, and each finished batch checks the
    /// wait it ended, so no task starts after it expired even while every runner is inside a
    /// task. Time the caller spends in its own user code (pulling the input, the progress
    /// callback) is not a wait for a result: the clock restarts when it leaves that code. With an
    /// effective `n_jobs` of 1 the caller runs every task, and a task longer than the timeout
    /// fails the call. In worker processes (the
    /// `*_in_processes` methods under a process backend, feature `processes`) it is a limit on
    /// each task, and a task past it is killed with its worker. A timeout too long to be
    /// represented as an [`Instant`] (such as `Duration::MAX`) never expires.
    ///
    /// ```
    /// use parjob::{delayed, Error, Parallel};
    /// use std::time::Duration;
    /// let slow = |_: u32| -> Result<(), ()> { std::thread::sleep(Duration::from_millis(50)); Ok(()) };
    /// let result = Parallel::new().n_jobs(2).timeout(Duration::from_millis(1))
    ///     .try_run((0..50).map(|i| delayed(slow)(i)));
    /// assert!(matches!(result, Err(Error::Timeout { .. })));
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// A wall-clock budget for the whole call, counted from its start. Cooperative, like
    /// [`timeout`](Parallel::timeout): once it has passed, no task starts (runners check it
    /// before each task), running tasks finish, and the call fails the same way (`run` panics,
    /// `try_run` returns [`Error::Timeout`] with this budget, a stream's `next()` panics), unless
    /// no task was skipped. In worker processes (feature `processes`) it is checked before each
    /// batch is sent: batches already running in a worker finish. A budget too long to be
    /// represented as an [`Instant`] (such as `Duration::MAX`) never runs out.
    ///
    /// ```
    /// use parjob::{delayed, Error, Parallel};
    /// use std::time::Duration;
    /// let step = |_: u32| -> Result<(), ()> { std::thread::sleep(Duration::from_millis(5)); Ok(()) };
    /// let result = Parallel::new().n_jobs(2).deadline(Duration::from_millis(20))
    ///     .try_run((0..200).map(|i| delayed(step)(i)));
    /// assert!(matches!(result, Err(Error::Timeout { .. })));
    /// ```
    pub fn deadline(mut self, budget: Duration) -> Self {
        self.deadline = Some(budget);
        self
    }

    /// Calls `callback(done, total)` after each completed task (`done` counts 1, 2, …; `total`
    /// is the input's length when its `size_hint` is exact, else `None`, and `None` too from the
    /// first count past a length the hint claimed but the input exceeded). It runs on the thread
    /// that drives the call (the caller of `run`, or of the iterator's `next`), in order, and
    /// never twice at once. No call waits for it: a report that another thread's call of the same
    /// `Parallel` makes while the callback runs is queued. The thread running the callback
    /// delivers it before it returns if that call has ended by then (finished, failed, or
    /// dropped), else the next report of any call does, at the latest the drop of the `Parallel`
    /// and of the iterators it made; so a report may arrive on another thread than its call's,
    /// after that call returned, and a callback may wait for such a call. Reports made on the
    /// thread running the callback while it runs (a call the callback drives, or pool work that
    /// thread runs while the callback waits inside the pool) are not delivered. A panic from the
    /// callback fails the call whose thread ran it, which for a queued report is not the call
    /// that made it, after the reports that thread owed were delivered.
    ///
    /// ```
    /// use parjob::{delayed, Parallel};
    /// use std::sync::Mutex;
    /// let seen = Mutex::new(Vec::new());
    /// Parallel::new().n_jobs(2)
    ///     .on_progress(|done, total| seen.lock().unwrap().push((done, total)))
    ///     .run((0..5).map(|x| delayed(|x: i32| x)(x)));
    /// let seen = seen.into_inner().unwrap();
    /// assert_eq!(seen.last(), Some(&(5, Some(5))));
    /// assert_eq!(seen.len(), 5);
    /// ```
    pub fn on_progress<G>(mut self, callback: G) -> Self
    where
        G: FnMut(usize, Option<usize>) + Send + 'p,
    {
        self.on_progress = Some(progress::shared_callback(Box::new(callback)));
        self
    }

    /// joblib-style progress lines on stderr: `0` silent, higher levels print more often
    /// (`> 10`: after every update). Format: `[Parallel(n_jobs=2)]: Done  10 tasks | elapsed: 0.1s`.
    ///
    /// ```
    /// use parjob::{delayed, Parallel};
    /// Parallel::new().n_jobs(2).verbose(5).run((0..3).map(|x| delayed(|x: i32| x)(x)));
    /// ```
    pub fn verbose(mut self, level: u32) -> Self {
        self.verbose = level;
        self
    }

    /// A terminal progress bar (`indicatif`). Needs the cargo feature `progress`; without it
    /// this setting is ignored.
    ///
    /// ```
    /// use parjob::{delayed, Parallel};
    /// let out = Parallel::new().progress(true).run((0..3).map(|x| delayed(|x: i32| x)(x)));
    /// assert_eq!(out, vec![0, 1, 2]);
    /// ```
    pub fn progress(mut self, show: bool) -> Self {
        self.progress_bar = show;
        self
    }

    fn validate(&self) -> Result<(usize, usize), ConfigError> {
        let n = resolve_n_jobs(self.n_jobs)?;
        if self.batch_size == BatchSize::Fixed(0) {
            return Err(ConfigError::ZeroBatchSize);
        }
        let pre_dispatch = self.pre_dispatch.unwrap_or(2 * n);
        if pre_dispatch == 0 {
            return Err(ConfigError::ZeroPreDispatch);
        }
        Ok((n, pre_dispatch))
    }

    pub(crate) fn progress_for(&self, total: Option<usize>) -> Progress<'p> {
        Progress::new(
            self.on_progress.clone(),
            self.verbose,
            self.n_jobs,
            total,
            self.progress_bar,
        )
    }

    /// The call's limits, starting now (thread and process calls alike). A limit too large for an
    /// `Instant` (`Duration::MAX`, the usual "no limit") is no limit at all: not the overflow
    /// panic of `Instant + Duration`, and not a limited call either (which is scheduled
    /// differently, see `Plan::new`; a process call with a timeout sends one task per batch).
    /// The clock is read only for a call with a limit (tens of nanoseconds, on calls that
    /// otherwise cost about a hundred).
    pub(crate) fn limits(&self) -> Limits {
        let now = (self.deadline.is_some() || self.timeout.is_some()).then(Instant::now);
        Limits {
            timeout: self
                .timeout
                .zip(now)
                .and_then(|(t, now)| now.checked_add(t).map(|_| t)),
            budget: self
                .deadline
                .zip(now)
                .and_then(|(d, now)| now.checked_add(d).map(|at| (d, at))),
        }
    }

    /// Resolves this `Parallel` for one call: validates, picks the plan, sizes the window, starts
    /// the clocks. The one place where the settings become a call's configuration.
    fn setup(&self, total: Option<usize>) -> Result<Setup<'p>, ConfigError> {
        let (n_jobs, mut pre_dispatch) = self.validate()?;
        let limits = self.limits();
        let plan = Plan::new(
            &self.backend,
            n_jobs,
            limits.timeout.is_some() || limits.budget.is_some(),
        );
        if let Plan::Pool { inside: true, .. } = &plan {
            // Nested call of known length, window not set: the whole input. A driver that is a
            // worker runs other jobs of the pool while it waits, and a window it cannot refill
            // meanwhile would hold its own call back (see docs/joblib.md, `pre_dispatch`). "The
            // whole input" is the length it claims, not unbounded: the claim comes from its
            // `size_hint`, and an endless input that lied about its length was pulled forever.
            // One more than the length: the batch a helping driver keeps for itself
            // (`Engine::reserve`) then still leaves room for every task.
            if let (None, Some(len)) = (self.pre_dispatch, total) {
                pre_dispatch = len.saturating_add(1);
            }
        }
        let progress = self.progress_for(total);
        if let Plan::Pool { runners, .. } = &plan {
            progress.announce(backend_name(&self.backend), *runners);
        }
        Ok(Setup {
            plan,
            batcher: Batcher::new(self.batch_size),
            pre_dispatch,
            limits,
            progress,
            exact_len: total,
        })
    }

    /// Sets up a call over `tasks` with the input in hand: its length is asked here, once, and a
    /// panic from `size_hint` or from setting up (the default backend's pool cannot start) drops
    /// the input contained before it goes on (`holding`).
    fn setup_holding<I: Iterator>(&self, tasks: I) -> (I, Result<Setup<'p>, ConfigError>) {
        holding(tasks, |tasks| self.setup(exact_len(tasks)))
    }

    fn call<I, F, A, R>(
        &self,
        tasks: I,
        fail_fast: Option<fn(&R) -> bool>,
    ) -> Result<Result<Vec<R>, Stop<R>>, ConfigError>
    where
        I: IntoIterator<Item = Delayed<F, A>>,
        F: Apply<A, Output = R> + Send,
        A: Send,
        R: Send,
    {
        let (tasks, setup) = self.setup_holding(tasks.into_iter());
        Ok(dispatch::run(tasks, setup?, fail_fast))
    }

    /// Runs every task and returns the results in input order (joblib's `return_as="list"`).
    ///
    /// Tasks may borrow the caller's data. A task that returns `Result` does not stop the others:
    /// every result and error comes back (joblib users' "keep going" mode). To stop at the first
    /// error, use [`try_run`](Parallel::try_run).
    ///
    /// # Panics
    /// If a task panics: the tasks not yet started are cancelled, running ones finish, then the
    /// first panic is resumed here with its payload. Also on an invalid configuration
    /// (`n_jobs(0)`, `BatchSize::Fixed(0)`, `pre_dispatch(0)`) and when the
    /// [`timeout`](Parallel::timeout) expires, with a message saying so.
    ///
    /// ```
    /// use parjob::{delayed, Parallel};
    /// let words = vec!["a", "bb", "ccc"];
    /// let lengths = Parallel::new().run(words.iter().map(|w| delayed(|w: &&str| w.len())(w)));
    /// assert_eq!(lengths, vec![1, 2, 3]);
    ///
    /// // Keep going: errors are just results.
    /// let parsed: Vec<Result<i32, std::num::ParseIntError>> =
    ///     Parallel::new().run(["1", "x", "3"].iter().map(|s| delayed(|s: &&str| s.parse::<i32>())(s)));
    /// assert!(parsed[0].is_ok() && parsed[1].is_err() && parsed[2].is_ok());
    /// ```
    pub fn run<I, F, A, R>(&self, tasks: I) -> Vec<R>
    where
        I: IntoIterator<Item = Delayed<F, A>>,
        F: Apply<A, Output = R> + Send,
        A: Send,
        R: Send,
    {
        match self.call(tasks, None) {
            Err(error) => panic!("parjob: invalid Parallel configuration: {error}"),
            Ok(Ok(results)) => results,
            Ok(Err(Stop::Panic(payload))) => resume_unwinding(payload),
            Ok(Err(Stop::Timeout { completed, limit })) => call_timed_out(limit, completed),
            Ok(Err(Stop::Failed { .. })) => unreachable!("run does not fail fast"),
        }
    }

    /// Runs tasks that return `Result<T, E>`: `Ok` with every value in input order, or the first
    /// error (which cancels the tasks not yet started) with its task index. An invalid
    /// configuration or an expired timeout is an `Err` too, never a panic.
    ///
    /// # Panics
    /// A task's panic is resumed here, as in [`run`](Parallel::run).
    ///
    /// ```
    /// use parjob::{delayed, Parallel};
    /// let ok: Result<Vec<u32>, parjob::Error<String>> =
    ///     Parallel::new().try_run((1..=3).map(|x| delayed(|x: u32| Ok::<u32, String>(x * 10))(x)));
    /// assert_eq!(ok.unwrap(), vec![10, 20, 30]);
    /// let bad = Parallel::new().n_jobs(0).try_run((1..=3).map(|x| delayed(|x: u32| Ok::<u32, String>(x))(x)));
    /// assert!(matches!(bad, Err(parjob::Error::Config { .. })));
    /// ```
    pub fn try_run<I, F, A, T, E>(&self, tasks: I) -> Result<Vec<T>, Error<E>>
    where
        I: IntoIterator<Item = Delayed<F, A>>,
        F: Apply<A, Output = Result<T, E>> + Send,
        A: Send,
        T: Send,
        E: Send,
    {
        match self.call(tasks, Some(Result::is_err)) {
            Err(error) => Err(Error::Config { error }),
            Ok(Ok(results)) => Ok(results
                .into_iter()
                .map(|r| r.unwrap_or_else(|_| unreachable!()))
                .collect()),
            Ok(Err(Stop::Panic(payload))) => resume_unwinding(payload),
            Ok(Err(Stop::Timeout { completed, limit })) => Err(Error::Timeout {
                timeout: limit,
                completed,
            }),
            Ok(Err(Stop::Failed { index, value })) => match value {
                Err(error) => Err(Error::Task { index, error }),
                Ok(_) => unreachable!("only errors fail fast"),
            },
        }
    }

    fn stream<I, F, A, R>(
        &self,
        tasks: I,
        ordered: bool,
    ) -> stream::Stream<'p, I::IntoIter, Delayed<F, A>>
    where
        I: IntoIterator<Item = Delayed<F, A>>,
        F: Apply<A, Output = R> + Send,
        A: Send,
        R: Send,
    {
        let (tasks, setup) = self.setup_holding(tasks.into_iter());
        let setup = match setup {
            Ok(setup) => setup,
            Err(error) => {
                // The input is user code: dropped by this panic's unwinding, an input whose
                // `Drop` panics too aborted the process.
                drop_contained(tasks);
                panic!("parjob: invalid Parallel configuration: {error}")
            }
        };
        // SAFETY: our callers either require `'static` tasks and results (`run_iter`,
        // `run_unordered`) or settle the stream before returning, on every path (`scope_iter`).
        unsafe { stream::Stream::new(tasks, setup, ordered) }
    }

    /// Results in input order, as they complete (joblib's `return_as="generator"`).
    ///
    /// Tasks must be `'static` (the iterator may outlive this statement, or be leaked). Work is
    /// dispatched as the iterator is consumed: no more than the pre-dispatch window of tasks is
    /// pulled ahead of the results read (joblib's generators have no such backpressure).
    /// Dropping the iterator early stops dispatching; nothing leaks. With an effective `n_jobs`
    /// of 1 each `next()` runs one task on the calling thread.
    ///
    /// # Panics
    /// On an invalid configuration, here; later, `next()` resumes a task's panic at its position
    /// (the stream then ends: later calls return `None`) and panics when the
    /// [`timeout`](Parallel::timeout) (a limit on each wait) expires.
    ///
    /// ```
    /// use parjob::{delayed, Parallel};
    /// let mut results = Parallel::new().n_jobs(2).run_iter((0..1_000_000u64).map(|x| delayed(|x: u64| x * 2)(x)));
    /// assert_eq!(results.next(), Some(0));
    /// assert_eq!(results.next(), Some(2));
    /// drop(results); // the other tasks are never run
    /// ```
    pub fn run_iter<I, F, A, R>(&self, tasks: I) -> stream::RunIter<'p, I::IntoIter, F, A, R>
    where
        I: IntoIterator<Item = Delayed<F, A>>,
        F: Apply<A, Output = R> + Send + 'static,
        A: Send + 'static,
        R: Send + 'static,
    {
        stream::RunIter(self.stream(tasks, true))
    }

    /// `(index, result)` pairs in completion order (joblib's `return_as="generator_unordered"`).
    /// Same rules as [`run_iter`](Parallel::run_iter).
    ///
    /// ```
    /// use parjob::{delayed, Parallel};
    /// let mut pairs: Vec<(usize, u32)> =
    ///     Parallel::new().n_jobs(2).run_unordered((0..10u32).map(|x| delayed(|x: u32| x + 100)(x))).collect();
    /// pairs.sort();
    /// assert_eq!(pairs, (0..10).map(|i| (i, i as u32 + 100)).collect::<Vec<_>>());
    /// ```
    pub fn run_unordered<I, F, A, R>(
        &self,
        tasks: I,
    ) -> stream::RunUnordered<'p, I::IntoIter, F, A, R>
    where
        I: IntoIterator<Item = Delayed<F, A>>,
        F: Apply<A, Output = R> + Send + 'static,
        A: Send + 'static,
        R: Send + 'static,
    {
        stream::RunUnordered(self.stream(tasks, false))
    }

    /// Runs `f(i)` for every `i` in `0..n` and returns the results in order: the splittable form
    /// of [`run`](Parallel::run). No thread pulls tasks one by one: every runner (the calling
    /// thread, which always takes part, and up to `n_jobs - 1` workers of the backend's pool)
    /// claims the next range of indices itself, with shrinking range sizes (large first, single
    /// indices at the end), and writes results in place. `n_jobs`, the backend, `on_progress`,
    /// `verbose` and [`deadline`](Parallel::deadline) apply; `batch_size` and `pre_dispatch` do
    /// not (there is no input to pull; a `Parallel` holding an invalid value of either is still
    /// refused, as for every call), and neither does `timeout` (the caller is itself a runner
    /// until the last range is claimed).
    ///
    /// Several inputs are zipped by indexing them in `f`.
    ///
    /// # Panics
    /// If `f` panics: ranges not yet claimed are cancelled, running ones finish, then the first
    /// panic is resumed here. Also on an invalid configuration and when the deadline passes
    /// before every index ran.
    ///
    /// ```
    /// use parjob::Parallel;
    /// let (a, b) = (vec![1.0f64, 2.0, 3.0], vec![4.0f64, 5.0, 6.0]);
    /// let dot: Vec<f64> = Parallel::new().n_jobs(2).run_indexed(a.len(), |i| a[i] * b[i]);
    /// assert_eq!(dot, vec![4.0, 10.0, 18.0]);
    /// ```
    pub fn run_indexed<F, R>(&self, n: usize, f: F) -> Vec<R>
    where
        F: Fn(usize) -> R + Sync,
        R: Send,
    {
        self.indexed(n, &f, indexed::Write::Fresh, None)
    }

    /// `f(&item)` for every item of `items`, results in order: joblib's
    /// `Parallel()(delayed(f)(x) for x in items)` over a slice, with the splittable engine of
    /// [`run_indexed`](Parallel::run_indexed) (same rules).
    ///
    /// ```
    /// use parjob::Parallel;
    /// let numbers: Vec<f64> = (0..10).map(|i| (i * i) as f64).collect();
    /// let roots = Parallel::new().n_jobs(2).map(&numbers, |x| x.sqrt());
    /// assert_eq!(roots, (0..10).map(|i| i as f64).collect::<Vec<_>>());
    /// ```
    pub fn map<T, F, R>(&self, items: &[T], f: F) -> Vec<R>
    where
        T: Sync,
        F: Fn(&T) -> R + Sync,
        R: Send,
    {
        let n = items.len();
        self.run_indexed(n, |i| {
            // SAFETY: `run_indexed` calls this only with `i < n == items.len()`.
            f(unsafe { items.get_unchecked(i) })
        })
    }

    /// Like [`map`](Parallel::map), but writes `out[i] = f(&items[i])` into a buffer you
    /// already have (the old values are dropped), so a recycled buffer is reused.
    ///
    /// # Panics
    /// If `out.len() != items.len()`, and as [`run_indexed`](Parallel::run_indexed) (after a
    /// panic some elements of `out` hold new values and the rest old ones).
    ///
    /// ```
    /// use parjob::Parallel;
    /// let numbers = [1.0f64, 4.0, 9.0];
    /// let mut roots = [0.0f64; 3];
    /// Parallel::new().n_jobs(2).map_into(&numbers, &mut roots, |x| x.sqrt());
    /// assert_eq!(roots, [1.0, 2.0, 3.0]);
    /// ```
    pub fn map_into<T, F, R>(&self, items: &[T], out: &mut [R], f: F)
    where
        T: Sync,
        F: Fn(&T) -> R + Sync,
        R: Send,
    {
        assert_eq!(
            items.len(),
            out.len(),
            "parjob: map_into needs an output as long as the input"
        );
        let n = items.len();
        let f = |i: usize| {
            // SAFETY: `run_indexed` calls this only with `i < n == items.len()`.
            f(unsafe { items.get_unchecked(i) })
        };
        self.indexed(n, &f, indexed::Write::Assign, Some(out));
    }

    fn indexed<F, R>(&self, n: usize, f: &F, mode: indexed::Write, into: Option<&mut [R]>) -> Vec<R>
    where
        F: Fn(usize) -> R + Sync,
        R: Send,
    {
        let setup = self
            .setup(Some(n))
            .unwrap_or_else(|error| panic!("parjob: invalid Parallel configuration: {error}"));
        match indexed::run_indexed(setup, n, f, mode, into) {
            Ok(results) => results,
            Err(Stop::Panic(payload)) => resume_unwinding(payload),
            Err(Stop::Timeout { completed, limit }) => call_timed_out(limit, completed),
            Err(Stop::Failed { .. }) => unreachable!("run_indexed does not fail fast"),
        }
    }

    /// A stream whose tasks may borrow: `consume` gets the results in input order (as from
    /// [`run_iter`](Parallel::run_iter)), and the call ends when it returns: tasks not yet started
    /// are cancelled, running ones are waited for, unread results are dropped. Dispatch starts
    /// before `consume` is called and is bounded by the window, as for `run_iter`.
    ///
    /// # Panics
    /// Whatever `consume` panics with (the call is still ended first), including a task's panic
    /// or an expired limit surfacing from `next()`; and on an invalid configuration.
    ///
    /// ```
    /// use parjob::{delayed, Parallel};
    /// let words = vec!["alpha".to_string(), "be".to_string(), "gamma".to_string()];
    /// let first_long = Parallel::new().n_jobs(2).scope_iter(
    ///     words.iter().map(|w| delayed(|w: &String| w.len())(w)),
    ///     |mut lengths| lengths.find(|&n| n > 4),
    /// );
    /// assert_eq!(first_long, Some(5));
    /// ```
    pub fn scope_iter<I, F, A, R, C, O>(&self, tasks: I, consume: C) -> O
    where
        I: IntoIterator<Item = Delayed<F, A>>,
        F: Apply<A, Output = R> + Send,
        A: Send,
        R: Send,
        C: for<'s> FnOnce(&'s mut stream::ScopedIter<'p, I::IntoIter, F, A, R>) -> O,
    {
        /// Settles the stream on every path out of `scope_iter`.
        struct Settle<
            'a,
            'p,
            I: Iterator<Item = Delayed<F, A>>,
            F: Apply<A, Output = R> + Send,
            A: Send,
            R: Send,
        >(&'a mut stream::ScopedIter<'p, I, F, A, R>);
        impl<
                I: Iterator<Item = Delayed<F, A>>,
                F: Apply<A, Output = R> + Send,
                A: Send,
                R: Send,
            > Drop for Settle<'_, '_, I, F, A, R>
        {
            fn drop(&mut self) {
                self.0 .0.settle();
            }
        }
        let mut results = stream::ScopedIter(self.stream(tasks, true));
        let guard = Settle(&mut results);
        consume(guard.0)
    }
}

/// The input's length, when its `size_hint` states an exact one.
///
/// `size_hint` is user code. It is asked once per call, at the call's entry, inside
/// [`holding`] (a panic from it drops the input contained first),
/// and everything after reads the answer (`Setup::exact_len`, the process call's total) instead
/// of asking again outside a catch.
pub(crate) fn exact_len<I: Iterator>(tasks: &I) -> Option<usize> {
    match tasks.size_hint() {
        (low, Some(high)) if low == high => Some(low),
        _ => None,
    }
}

/// Room for `len` results in `out` when the memory is there, and none otherwise. `len` comes
/// from the input's `size_hint`, which may lie: an input claiming far more items than memory
/// holds must not abort the process at an allocation (`Vec::with_capacity` and `reserve` do). Room
/// is only an optimisation here: results past `out`'s capacity still find a place (a batch's own
/// vector on a pool, a growing vector elsewhere).
/// The panic of a `run`-like call (on threads or in worker processes) that a limit stopped
/// before every task had started.
pub(crate) fn call_timed_out(limit: Duration, completed: usize) -> ! {
    panic!(
        "parjob: Parallel call timed out after {limit:?} ({completed} tasks completed; tasks not yet started were cancelled)"
    )
}

pub(crate) fn reserve_for_hint<R>(out: &mut Vec<R>, len: Option<usize>) {
    // Failing is the point of `try_reserve` here: the results just go without pre-allocated room.
    let _ = out.try_reserve(len.unwrap_or(0));
}

fn backend_name(backend: &Backend) -> &'static str {
    match backend {
        Backend::WorkStealing => "WorkStealing",
        Backend::Sequential => "Sequential",
        Backend::Pool(_) => "Pool",
        #[cfg(feature = "processes")]
        Backend::Processes | Backend::ProcessPool(_) => {
            "WorkStealing (threads: tasks borrow memory)"
        }
    }
}
