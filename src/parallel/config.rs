//! Scoped overrides of the defaults of `Parallel::new()`: [`parallel_config`] and
//! [`parallel_backend`] (joblib's context managers of the same names).
//!
//! Each thread has a stack of [`Config`]s. `parallel_config(c, f)` pushes `c` merged over the
//! enclosing entry (settings `c` leaves unset are inherited), runs `f`, and pops it again through a
//! drop guard, so the outer setting comes back even if `f` panics. `Parallel::new()` reads the top
//! of the stack once, when it is made; settings given to the `Parallel` itself win.
//!
//! The stack is per thread: tasks running on pool workers see the defaults, not the caller's
//! overrides (as in joblib, where the configuration is thread-local).

use super::backend::Backend;
use std::cell::RefCell;

/// Settings for [`parallel_config`]. Unset fields inherit from the enclosing override, or the
/// defaults (all usable cores, [`Backend::WorkStealing`], not verbose).
///
/// ```
/// use parjob::{parallel_config, Backend, Config, Parallel};
/// parallel_config(Config::new().n_jobs(3).verbose(0), || {
///     assert_eq!(Parallel::new().get_n_jobs(), 3);
/// });
/// ```
#[derive(Clone, Debug, Default)]
pub struct Config {
    pub(crate) n_jobs: Option<i32>,
    pub(crate) backend: Option<Backend>,
    pub(crate) verbose: Option<u32>,
}

impl Config {
    /// Nothing set: everything inherited.
    ///
    /// ```
    /// let c = parjob::Config::new();
    /// assert!(format!("{c:?}").contains("None"));
    /// ```
    pub fn new() -> Self {
        Config::default()
    }

    /// The default `n_jobs` (same rules as [`Parallel::n_jobs`](crate::Parallel::n_jobs)).
    ///
    /// ```
    /// let c = parjob::Config::new().n_jobs(-1);
    /// # let _ = c;
    /// ```
    pub fn n_jobs(mut self, n_jobs: i32) -> Self {
        self.n_jobs = Some(n_jobs);
        self
    }

    /// The default backend.
    ///
    /// ```
    /// let c = parjob::Config::new().backend(parjob::Backend::Sequential);
    /// # let _ = c;
    /// ```
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = Some(backend);
        self
    }

    /// The default verbosity (see [`Parallel::verbose`](crate::Parallel::verbose)).
    ///
    /// ```
    /// let c = parjob::Config::new().verbose(10);
    /// # let _ = c;
    /// ```
    pub fn verbose(mut self, level: u32) -> Self {
        self.verbose = Some(level);
        self
    }

    fn merged_over(self, outer: &Config) -> Config {
        Config {
            n_jobs: self.n_jobs.or(outer.n_jobs),
            backend: self.backend.or_else(|| outer.backend.clone()),
            verbose: self.verbose.or(outer.verbose),
        }
    }
}

thread_local! {
    static STACK: RefCell<Vec<Config>> = const { RefCell::new(Vec::new()) };
}

/// The innermost override on this thread (all unset outside any).
pub(crate) fn current() -> Config {
    STACK.with(|stack| stack.borrow().last().cloned().unwrap_or_default())
}

/// Pops the entry it pushed, on normal exit and on unwinding alike.
struct Restore {
    depth: usize,
}

impl Drop for Restore {
    fn drop(&mut self) {
        STACK.with(|stack| stack.borrow_mut().truncate(self.depth));
    }
}

/// Runs `f` with `config` as the default for every `Parallel::new()` made inside it on this
/// thread (joblib's `parallel_config`). Overrides nest; the outer one is restored on exit, even by
/// a panic.
///
/// ```
/// use parjob::{parallel_config, Backend, Config, Parallel};
/// let outer = Parallel::new().get_n_jobs();
/// parallel_config(Config::new().backend(Backend::Sequential).n_jobs(3), || {
///     assert_eq!(Parallel::new().get_n_jobs(), 3);
///     parallel_config(Config::new().n_jobs(2), || {
///         // n_jobs 2, backend still Sequential (inherited)
///         assert_eq!(Parallel::new().get_n_jobs(), 2);
///     });
///     assert_eq!(Parallel::new().get_n_jobs(), 3);
/// });
/// assert_eq!(Parallel::new().get_n_jobs(), outer);
/// ```
pub fn parallel_config<R>(config: Config, f: impl FnOnce() -> R) -> R {
    let depth = STACK.with(|stack| {
        let mut stack = stack.borrow_mut();
        let merged = config.merged_over(stack.last().unwrap_or(&Config::default()));
        stack.push(merged);
        stack.len() - 1
    });
    let _restore = Restore { depth };
    f()
}

/// Runs `f` with `backend` as the default backend for every `Parallel::new()` made inside it on
/// this thread (joblib's `parallel_backend`). Same nesting and restore rules as
/// [`parallel_config`].
///
/// ```
/// use parjob::{delayed, parallel_backend, Backend, Parallel};
/// let caller = std::thread::current().id();
/// let threads = parallel_backend(Backend::Sequential, || {
///     Parallel::new().run((0..4).map(|_| delayed(|_: i32| std::thread::current().id())(0)))
/// });
/// assert!(threads.iter().all(|&t| t == caller));
/// ```
pub fn parallel_backend<R>(backend: Backend, f: impl FnOnce() -> R) -> R {
    parallel_config(Config::new().backend(backend), f)
}
