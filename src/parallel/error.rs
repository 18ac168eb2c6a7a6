//! Errors of a `Parallel` call: [`Error`] (what `try_run` returns) and [`ConfigError`].

use std::fmt;
use std::time::Duration;

/// An invalid `Parallel` configuration, found when the call starts.
///
/// ```
/// let err = parjob::effective_n_jobs(0).unwrap_err();
/// assert_eq!(err, parjob::ConfigError::ZeroNJobs);
/// assert!(err.to_string().contains("n_jobs"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// `n_jobs(0)`: joblib's "n_jobs == 0 in Parallel has no meaning".
    ZeroNJobs,
    /// `BatchSize::Fixed(0)`.
    ZeroBatchSize,
    /// `pre_dispatch(0)`: no task could ever be dispatched.
    ZeroPreDispatch,
    /// `n_jobs(k)` with `k` above [`MAX_NUM_THREADS`](crate::MAX_NUM_THREADS): every job is a
    /// thread of this process (a worker thread, or a worker process's driver thread).
    TooManyJobs {
        /// The `n_jobs` asked for.
        n_jobs: i32,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::ZeroNJobs => {
                f.write_str("n_jobs == 0 has no meaning (use -1 for all cores, or k > 0)")
            }
            ConfigError::ZeroBatchSize => {
                f.write_str("batch size must be BatchSize::Auto or Fixed(n) with n > 0")
            }
            ConfigError::ZeroPreDispatch => {
                f.write_str("pre_dispatch must be at least 1 (usize::MAX means all)")
            }
            ConfigError::TooManyJobs { n_jobs } => write!(
                f,
                "n_jobs == {n_jobs} is more than the {} threads parjob runs at most",
                crate::MAX_NUM_THREADS
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Why [`Parallel::try_run`](crate::Parallel::try_run) failed.
///
/// ```
/// use parjob::{delayed, Error, Parallel};
/// fn check(x: i32) -> Result<i32, String> {
///     if x == 3 { Err(format!("bad {x}")) } else { Ok(x) }
/// }
/// let result = Parallel::new().n_jobs(2).try_run((0..10).map(|x| delayed(check)(x)));
/// match result {
///     Err(Error::Task { index, error }) => assert_eq!((index, error.as_str()), (3, "bad 3")),
///     other => panic!("unexpected {other:?}"),
/// }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error<E> {
    /// A task returned `Err(error)`; `index` is its position in the input. Tasks not yet started
    /// were cancelled; among the failures of the tasks that did run, this is the one with the
    /// smallest index.
    Task {
        /// Position of the failed task in the input iterator.
        index: usize,
        /// The error the task returned.
        error: E,
    },
    /// A wait for the next result took longer than [`Parallel::timeout`](crate::Parallel::timeout),
    /// or the whole call's budget, [`Parallel::deadline`](crate::Parallel::deadline), passed with
    /// tasks not yet started. Tasks not yet started were cancelled; running ones finished.
    Timeout {
        /// The limit that was hit: the timeout, or the deadline's budget.
        timeout: Duration,
        /// How many tasks had completed when the call ended (running tasks included: they
        /// finish before the call returns).
        completed: usize,
    },
    /// The configuration was invalid; no task ran.
    Config {
        /// What was wrong.
        error: ConfigError,
    },
    /// The worker process running task `index` died (process backend; cargo feature
    /// `processes`). The worker was replaced; the other tasks' results are unaffected.
    #[cfg(feature = "processes")]
    WorkerCrashed {
        /// Position of the task in the input iterator.
        index: usize,
        /// How the worker died: the signal or exit code.
        death: crate::processes::WorkerDeath,
    },
    /// Task `index` ran longer than [`Parallel::timeout`](crate::Parallel::timeout) in a worker
    /// process and was killed with its worker (process backend; cargo feature `processes`).
    #[cfg(feature = "processes")]
    TaskTimeout {
        /// Position of the task in the input iterator.
        index: usize,
        /// The per-task limit that was exceeded.
        timeout: Duration,
    },
}

impl<E> Error<E> {
    /// The index of the failed task, for [`Error::Task`] (and, with processes,
    /// `WorkerCrashed` and `TaskTimeout`).
    ///
    /// ```
    /// let err: parjob::Error<&str> = parjob::Error::Task { index: 4, error: "boom" };
    /// assert_eq!(err.task_index(), Some(4));
    /// ```
    pub fn task_index(&self) -> Option<usize> {
        match self {
            Error::Task { index, .. } => Some(*index),
            #[cfg(feature = "processes")]
            Error::WorkerCrashed { index, .. } | Error::TaskTimeout { index, .. } => Some(*index),
            _ => None,
        }
    }

    /// Is this a timeout (the call's [`Error::Timeout`], or a process task's `TaskTimeout`)?
    ///
    /// ```
    /// let err: parjob::Error<()> =
    ///     parjob::Error::Timeout { timeout: std::time::Duration::from_millis(5), completed: 0 };
    /// assert!(err.is_timeout());
    /// ```
    pub fn is_timeout(&self) -> bool {
        #[cfg(feature = "processes")]
        if matches!(self, Error::TaskTimeout { .. }) {
            return true;
        }
        matches!(self, Error::Timeout { .. })
    }
}

impl<E> From<ConfigError> for Error<E> {
    fn from(error: ConfigError) -> Self {
        Error::Config { error }
    }
}

impl<E: fmt::Display> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Task { index, error } => write!(f, "task {index} failed: {error}"),
            Error::Timeout { timeout, completed } => {
                write!(
                    f,
                    "Parallel call timed out after {timeout:?} ({completed} tasks completed)"
                )
            }
            Error::Config { error } => write!(f, "invalid Parallel configuration: {error}"),
            #[cfg(feature = "processes")]
            Error::WorkerCrashed { index, death } => {
                write!(f, "task {index}: its worker process {death}")
            }
            #[cfg(feature = "processes")]
            Error::TaskTimeout { index, timeout } => write!(
                f,
                "task {index} ran past the {timeout:?} timeout; its worker process was killed"
            ),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for Error<E> {}
