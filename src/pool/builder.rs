//! `ThreadPoolBuilder`, scheduling policies and `BuildError`.

use super::registry::{Registry, UNCOUNTED};
use super::thread_pool::ThreadPool;
use std::fmt;

/// How a worker makes its forks (the second halves of `join`) available to thieves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SharePolicy {
    /// Forks stay in a private list, with no atomic read-modify-write, until a thief that found
    /// this worker's deque empty flags it as hungry; at its next fork the worker then publishes
    /// its oldest private fork (the biggest piece of work). Most forks are not even recorded (see
    /// [`ThreadPoolBuilder::fork_sample_period`]): the default, where a `join` nobody wants costs
    /// one load. Trade-off: a worker deep inside a long leaf computation does not
    /// publish until its next fork (or until it waits for something).
    #[default]
    Lazy,
    /// Every fork is pushed to the stealable deque at once, and each push checks for sleepers
    /// (a `fence(SeqCst)`), as rayon does. Costs more per `join`; shares work sooner.
    Eager,
}

/// In which order a thief visits its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum VictimPolicy {
    /// Start at a random peer each round (xorshift, per worker). The default.
    #[default]
    Random,
    /// Start at the peer after the one visited first last time.
    RoundRobin,
    /// Start at the peer of the last successful steal.
    LastSuccessful,
}

/// Resolved scheduling knobs, shared by every worker of a pool.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    pub(crate) share: SharePolicy,
    pub(crate) victims: VictimPolicy,
    pub(crate) spin_rounds: u32,
    pub(crate) max_searchers: usize,
    /// Joins that go unrecorded after each recorded one (`fork_sample_period - 1`), or
    /// [`UNCOUNTED`] when no period is counted (`fork_sample_period(u32::MAX)`, the default).
    pub(crate) unrecorded_per_record: u32,
}

/// A pool's configuration with every default resolved: what [`Registry::new`] builds from.
pub(crate) struct PoolConfig {
    pub(crate) num_threads: usize,
    pub(crate) policy: Policy,
    pub(crate) pin_threads: bool,
    /// One name per worker, in index order.
    pub(crate) thread_names: Vec<String>,
    pub(crate) stack_size: Option<usize>,
    pub(crate) start_handler: Option<Handler>,
    pub(crate) exit_handler: Option<Handler>,
}

/// The most worker threads a pool may have ([`ThreadPoolBuilder::num_threads`]; also the most
/// `n_jobs` a [`Parallel`](crate::Parallel) call and the most workers a process pool may ask for,
/// since each of those is a thread of this process). A pool allocates its per-worker state
/// before it starts any thread, so an absurd count (`usize::MAX`, `i32::MAX` jobs) must be
/// refused up front: allocating for it aborted the process instead of returning the error.
/// Far above what any machine runs threads for (Linux's default `threads-max` is tens of
/// thousands per host).
pub const MAX_NUM_THREADS: usize = 1 << 16;

/// The smallest stack a worker thread gets: [`ThreadPoolBuilder::stack_size`] raises smaller
/// requests to this. parjob's own worker loop, start-up and exit need more than std's minimum
/// (16 KiB, what `stack_size(0)` gave): a pool built with it crashed, even idle, when dropped.
pub const MIN_STACK_SIZE: usize = 64 * 1024;

/// Default spin rounds before an idle worker parks. Round `r` spins `2^min(r, 6)` pause
/// instructions, so 32 rounds are about 1,800 pauses: tens of microseconds, long enough to catch
/// the next fork of a running computation, short enough that an idle pool costs nothing measurable.
/// The same in every build: the loom models ask for `spin_rounds(0)` explicitly.
pub const DEFAULT_SPIN_ROUNDS: u32 = 32;

/// Default [`ThreadPoolBuilder::fork_sample_period`]: `u32::MAX`, no periodic sampling. A worker
/// records the first forks of each job and answers thieves' requests, and otherwise lets joins
/// go unrecorded without counting them, so a `join` nobody asks for costs one load of a word the
/// owner does not write, instead of a load and a store of a count-down (which chained each join
/// to the previous one through memory: 5–9 % of fib's and the trees' time on one thread).
pub const DEFAULT_FORK_SAMPLE_PERIOD: u32 = u32::MAX;

/// Configures and builds a [`ThreadPool`].
///
/// ```
/// let pool = parjob::ThreadPoolBuilder::new()
///     .num_threads(2)
///     .thread_name(|i| format!("worker-{i}"))
///     .build()
///     .expect("spawning threads");
/// assert_eq!(pool.num_threads(), 2);
/// assert_eq!(pool.install(|| std::thread::current().name().map(str::to_owned)).as_deref().map(|n| n.starts_with("worker-")), Some(true));
/// ```
pub struct ThreadPoolBuilder {
    num_threads: usize,
    pub(crate) pin_threads: bool,
    thread_name: Option<Box<dyn FnMut(usize) -> String>>,
    pub(crate) stack_size: Option<usize>,
    share: SharePolicy,
    victims: VictimPolicy,
    spin_rounds: u32,
    max_searchers: Option<usize>,
    fork_sample_period: u32,
    pub(crate) start_handler: Option<Handler>,
    pub(crate) exit_handler: Option<Handler>,
}

/// A start or exit handler, called with the worker's index.
pub(crate) type Handler = std::sync::Arc<dyn Fn(usize) + Send + Sync>;

impl Default for ThreadPoolBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ThreadPoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadPoolBuilder")
            .field("num_threads", &self.num_threads)
            .field("pin_threads", &self.pin_threads)
            .field("stack_size", &self.stack_size)
            .field("share", &self.share)
            .field("victims", &self.victims)
            .field("spin_rounds", &self.spin_rounds)
            .field("max_searchers", &self.max_searchers)
            .field("fork_sample_period", &self.fork_sample_period)
            .finish_non_exhaustive()
    }
}

impl ThreadPoolBuilder {
    /// A builder with the defaults: one thread per available core, no pinning, threads named
    /// `parjob-worker-{i}`, lazy sharing, random victims.
    pub fn new() -> Self {
        ThreadPoolBuilder {
            num_threads: 0,
            pin_threads: false,
            thread_name: None,
            stack_size: None,
            share: SharePolicy::default(),
            victims: VictimPolicy::default(),
            spin_rounds: DEFAULT_SPIN_ROUNDS,
            max_searchers: None,
            fork_sample_period: DEFAULT_FORK_SAMPLE_PERIOD,
            start_handler: None,
            exit_handler: None,
        }
    }

    /// Number of worker threads. `0` (the default) means [`cpu_count`](crate::cpu_count): the
    /// cores this process may use (cgroup quota and affinity mask taken into account). More threads
    /// than cores is allowed, up to [`MAX_NUM_THREADS`]; `build` refuses more
    /// ([`BuildError::is_too_many_threads`]).
    ///
    /// ```
    /// let err = parjob::ThreadPoolBuilder::new().num_threads(usize::MAX).build().unwrap_err();
    /// assert!(err.is_too_many_threads());
    /// ```
    pub fn num_threads(mut self, num_threads: usize) -> Self {
        self.num_threads = num_threads;
        self
    }

    /// Pin worker `i` to core `i mod cores` (with `core_affinity`). `build` fails with an error for
    /// which [`BuildError::is_pinning_unsupported`] is true where the platform cannot report its
    /// cores. The core each worker got is in [`WorkerMetrics::core`](crate::WorkerMetrics::core).
    pub fn pin_threads(mut self, pin: bool) -> Self {
        self.pin_threads = pin;
        self
    }

    /// Names worker threads (the default is `parjob-worker-{i}`).
    pub fn thread_name<F: FnMut(usize) -> String + 'static>(mut self, name: F) -> Self {
        self.thread_name = Some(Box::new(name));
        self
    }

    /// Stack size of each worker thread, in bytes (the default is std's). Sizes below
    /// [`MIN_STACK_SIZE`] are raised to it (the operating system may round any size up further,
    /// to whole pages).
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.stack_size = Some(bytes.max(MIN_STACK_SIZE));
        self
    }

    /// How forks are shared with thieves (see [`SharePolicy`]).
    pub fn share_policy(mut self, policy: SharePolicy) -> Self {
        self.share = policy;
        self
    }

    /// In which order thieves visit their peers (see [`VictimPolicy`]).
    pub fn victim_policy(mut self, policy: VictimPolicy) -> Self {
        self.victims = policy;
        self
    }

    /// Spin rounds an idle worker makes before it parks (`0`: park as soon as a search fails).
    /// The default is [`DEFAULT_SPIN_ROUNDS`]. Whatever the count, one fruitless search spins for
    /// at most 100 µs of wall-clock time before the worker parks, so an idle pool stays idle.
    pub fn spin_rounds(mut self, rounds: u32) -> Self {
        self.spin_rounds = rounds;
        self
    }

    /// How many workers may search for work at once (at least 1: `0` counts as 1). The default is
    /// half the workers, rounded up: more searchers only contend on the same empty deques.
    pub fn max_searchers(mut self, max: usize) -> Self {
        self.max_searchers = Some(max);
        self
    }

    /// Under the lazy share policy, how many joins share one recorded fork beyond those always
    /// recorded.
    ///
    /// Only a recorded fork can be given to a thief; an unrecorded `join` runs `a` then `b` inline.
    /// A worker always records every join while fewer than 3 of its forks are private (so the
    /// first forks of each job, the biggest, always are: when one of them returns, the next join
    /// takes its place) and the next join after a thief has asked it for work. `u32::MAX` (the
    /// default, [`DEFAULT_FORK_SAMPLE_PERIOD`]) records no other join, and an unrecorded join then
    /// costs one load. Any other `period` also records one join in `period`, counted down at
    /// every join (a load and a store more per join): recorded forks further down a recursion,
    /// which a wide machine's many thieves may want once the first ones are taken. `1` (or `0`)
    /// records every join, the behaviour of a scheduler without sampling. Ignored under
    /// [`SharePolicy::Eager`], which records and publishes every fork.
    ///
    /// The second half of an unrecorded join is never given to another worker (not even while
    /// its worker waits for something). With a counted period, in a rare race a thief's request
    /// is answered up to one period of joins late (the owner's count-down store can overwrite the
    /// thief's request); without one, at the owner's next join.
    ///
    /// ```
    /// let pool = parjob::ThreadPoolBuilder::new().num_threads(2).fork_sample_period(1).build().unwrap();
    /// assert_eq!(pool.join(|| 1, || 2), (1, 2));
    /// ```
    pub fn fork_sample_period(mut self, period: u32) -> Self {
        self.fork_sample_period = period;
        self
    }

    /// Runs `handler(index)` on each worker thread when it starts, before it takes any work
    /// (joblib/loky's `initializer`): `build` returns after every worker's handler has returned.
    ///
    /// # Panics
    /// A panic in the handler aborts the process (a worker that could not set up must not run
    /// tasks, and `build` would wait for it forever), after printing the panic message.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// static STARTED: AtomicUsize = AtomicUsize::new(0);
    /// let pool = parjob::ThreadPoolBuilder::new()
    ///     .num_threads(2)
    ///     .start_handler(|_index| { STARTED.fetch_add(1, Ordering::SeqCst); })
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(STARTED.load(Ordering::SeqCst), 2);
    /// # drop(pool);
    /// ```
    pub fn start_handler<H: Fn(usize) + Send + Sync + 'static>(mut self, handler: H) -> Self {
        self.start_handler = Some(std::sync::Arc::new(handler));
        self
    }

    /// Runs `handler(index)` on each worker thread as it exits, after its last task (when the
    /// pool is dropped; the global and cached pools never exit).
    ///
    /// # Panics
    /// A panic in the handler aborts the process, like one in a
    /// [`start_handler`](Self::start_handler).
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// static EXITED: AtomicUsize = AtomicUsize::new(0);
    /// let pool = parjob::ThreadPoolBuilder::new()
    ///     .num_threads(2)
    ///     .exit_handler(|_index| { EXITED.fetch_add(1, Ordering::SeqCst); })
    ///     .build()
    ///     .unwrap();
    /// drop(pool); // joins the workers
    /// assert_eq!(EXITED.load(Ordering::SeqCst), 2);
    /// ```
    pub fn exit_handler<H: Fn(usize) + Send + Sync + 'static>(mut self, handler: H) -> Self {
        self.exit_handler = Some(std::sync::Arc::new(handler));
        self
    }

    pub(crate) fn resolved_num_threads(&self) -> usize {
        if self.num_threads == 0 {
            crate::cpu_count()
        } else {
            self.num_threads
        }
    }

    pub(crate) fn policy(&self, num_threads: usize) -> Policy {
        Policy {
            share: self.share,
            victims: self.victims,
            spin_rounds: self.spin_rounds,
            max_searchers: self.max_searchers.unwrap_or(num_threads.div_ceil(2)).max(1),
            unrecorded_per_record: match self.fork_sample_period {
                u32::MAX => UNCOUNTED,
                period => period.saturating_sub(1),
            },
        }
    }

    pub(crate) fn name_for(&mut self, index: usize) -> String {
        match &mut self.thread_name {
            Some(name) => name(index),
            None => format!("parjob-worker-{index}"),
        }
    }

    /// Spawns the workers.
    ///
    /// # Errors
    /// [`BuildError`] if a thread cannot be spawned (the threads already started are stopped and
    /// joined), pinning was asked for where it is unsupported, or more than [`MAX_NUM_THREADS`]
    /// threads were asked for (nothing is started).
    pub fn build(self) -> Result<ThreadPool, BuildError> {
        Registry::new(self.resolve()?).map(ThreadPool::from_registry)
    }

    /// Resolves every default (thread count, policy, names) into what a registry is built from;
    /// refuses a thread count above [`MAX_NUM_THREADS`] before anything is allocated for it.
    pub(crate) fn resolve(mut self) -> Result<PoolConfig, BuildError> {
        let num_threads = self.resolved_num_threads();
        if num_threads > MAX_NUM_THREADS {
            return Err(BuildError {
                kind: ErrorKind::TooManyThreads(num_threads),
            });
        }
        Ok(PoolConfig {
            num_threads,
            policy: self.policy(num_threads),
            pin_threads: self.pin_threads,
            thread_names: (0..num_threads).map(|i| self.name_for(i)).collect(),
            stack_size: self.stack_size,
            start_handler: self.start_handler.take(),
            exit_handler: self.exit_handler.take(),
        })
    }
}

/// Why a pool could not be built.
///
/// ```
/// let err = parjob::ThreadPoolBuilder::new().stack_size(usize::MAX).build().unwrap_err();
/// assert!(err.is_spawn_failure());
/// println!("{err}");
/// ```
#[derive(Debug)]
pub struct BuildError {
    kind: ErrorKind,
}

#[derive(Debug)]
enum ErrorKind {
    Spawn(std::io::Error),
    PinningUnsupported,
    InvalidThreadName {
        worker: usize,
        name: String,
    },
    /// More than `MAX_NUM_THREADS` asked for.
    TooManyThreads(usize),
}

impl BuildError {
    pub(crate) fn spawn(error: std::io::Error) -> Self {
        BuildError {
            kind: ErrorKind::Spawn(error),
        }
    }
    pub(crate) fn pinning_unsupported() -> Self {
        BuildError {
            kind: ErrorKind::PinningUnsupported,
        }
    }
    pub(crate) fn invalid_thread_name(worker: usize, name: String) -> Self {
        BuildError {
            kind: ErrorKind::InvalidThreadName { worker, name },
        }
    }
    /// The operating system refused to spawn a worker thread (see `source()` for its error).
    pub fn is_spawn_failure(&self) -> bool {
        matches!(self.kind, ErrorKind::Spawn(_))
    }
    /// `pin_threads(true)` was asked for, but this platform cannot list or pin cores.
    pub fn is_pinning_unsupported(&self) -> bool {
        matches!(self.kind, ErrorKind::PinningUnsupported)
    }
    /// A name given by [`thread_name`](ThreadPoolBuilder::thread_name) contains a NUL byte, which
    /// no thread name may hold. Nothing was started.
    ///
    /// ```
    /// let err = parjob::ThreadPoolBuilder::new()
    ///     .num_threads(2)
    ///     .thread_name(|_| "bad\0name".to_string())
    ///     .build()
    ///     .unwrap_err();
    /// assert!(err.is_invalid_thread_name());
    /// assert_eq!(err.to_string(), r#"the name of worker 0 contains a NUL byte: "bad\0name""#);
    /// ```
    pub fn is_invalid_thread_name(&self) -> bool {
        matches!(self.kind, ErrorKind::InvalidThreadName { .. })
    }
    /// More than [`MAX_NUM_THREADS`] worker threads were asked for. Nothing was started.
    pub fn is_too_many_threads(&self) -> bool {
        matches!(self.kind, ErrorKind::TooManyThreads(_))
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            // The io::Error is the `source()`; not repeated here so error reports don't print it twice.
            ErrorKind::Spawn(_) => f.write_str("could not spawn a worker thread"),
            ErrorKind::PinningUnsupported => f.write_str(
                "thread pinning was requested but this platform cannot list or pin cores",
            ),
            ErrorKind::InvalidThreadName { worker, name } => {
                write!(
                    f,
                    "the name of worker {worker} contains a NUL byte: {name:?}"
                )
            }
            ErrorKind::TooManyThreads(asked) => write!(
                f,
                "{asked} worker threads asked for; a pool has at most {MAX_NUM_THREADS}"
            ),
        }
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ErrorKind::Spawn(e) => Some(e),
            ErrorKind::PinningUnsupported
            | ErrorKind::InvalidThreadName { .. }
            | ErrorKind::TooManyThreads(_) => None,
        }
    }
}
