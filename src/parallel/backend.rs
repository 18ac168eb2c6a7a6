//! [`Backend`]: where a `Parallel` call runs its tasks, and the cache of pools per `n_jobs`.

use crate::{ThreadPool, ThreadPoolBuilder};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// Where a [`Parallel`](crate::Parallel) call runs its tasks.
///
/// ```
/// use parjob::{delayed, Backend, Parallel, ThreadPoolBuilder};
/// let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
/// let doubled = Parallel::new()
///     .backend(Backend::Pool(pool))
///     .run((0..5).map(|x| delayed(|x: i32| x * 2)(x)));
/// assert_eq!(doubled, vec![0, 2, 4, 6, 8]);
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum Backend {
    /// parjob's work-stealing pools (the default): the global pool when `n_jobs` is the number of
    /// cores, a cached pool of exactly `n_jobs` threads otherwise, and the current pool when
    /// called from inside a task. The calling thread takes part while the tasks are short.
    #[default]
    WorkStealing,
    /// Every task on the calling thread, in input order (joblib's `SequentialBackend`).
    Sequential,
    /// A pool you built. At most `min(n_jobs, its threads)` threads run this call's tasks: its
    /// workers and, in `run`/`try_run` as on the default backend, the calling thread while
    /// batches are short (it runs tasks instead of sleeping while it refills; once tasks prove
    /// long it only dispatches; a stream's consumer outside the pool only reads). `Parallel`
    /// calls made by a task that `run`/`try_run` runs on the calling thread nest into this pool,
    /// as they do on its workers (unless the caller is a worker of another pool: then they nest
    /// into that one); there, as for any code outside the pool,
    /// [`current_thread_index`](crate::current_thread_index) is `None` and the free
    /// [`join`](crate::join) / [`scope`](crate::scope) use the global pool. Such a task runs on
    /// the caller's stack, not with the pool's [`stack_size`](crate::ThreadPoolBuilder::stack_size)
    /// or its start handler: a task that needs either must not run under a caller outside the
    /// pool (use [`ThreadPool::install`] around the call). With a
    /// [`timeout`](crate::Parallel::timeout) or [`deadline`](crate::Parallel::deadline), a caller
    /// outside the pool only dispatches (every task then runs on the pool's threads; such a call
    /// made while all of them are busy, say by a task this thread runs for another call on the
    /// same pool, waits for one, and its timeout counts that wait), except in the splittable form
    /// ([`Parallel::map`](crate::Parallel::map), [`run_indexed`](crate::Parallel::run_indexed)),
    /// where the caller is always one of the runners. (A call of exactly two tasks runs as
    /// [`ThreadPool::join`], the caller running the first, only without limits.)
    Pool(ThreadPool),
    /// Worker processes (joblib's `loky`/`multiprocessing`; cargo feature `processes`): a pool of
    /// exactly `n_jobs` processes per distinct count, started on first use and kept until the
    /// program exits. Tasks run there through
    /// [`Parallel::run_in_processes`](crate::Parallel::run_in_processes) and its
    /// `try_`/`_iter`/`_unordered` counterparts; see [`processes`](crate::processes).
    ///
    /// The thread methods (`run`, `try_run`, `run_iter`, `run_unordered`) take tasks that may
    /// borrow the caller's data and so cannot leave the process: under this backend they run on
    /// the [`WorkStealing`](Backend::WorkStealing) thread pools instead (joblib's
    /// `require="sharedmem"` rule), announced by `verbose` as "WorkStealing (threads: tasks
    /// borrow memory)".
    #[cfg(feature = "processes")]
    Processes,
    /// A [`ProcessPool`](crate::processes::ProcessPool) you built (to set its initializer or
    /// size); at most `min(n_jobs, its workers)` batches run at once. Same rules as
    /// [`Processes`](Backend::Processes).
    #[cfg(feature = "processes")]
    ProcessPool(crate::processes::ProcessPool),
}

/// How one call will execute, resolved from the backend and the effective `n_jobs`.
pub(crate) enum Plan {
    /// On the calling thread, in order.
    Inline,
    /// On `pool`, with at most `runners` threads running tasks at once; `caller_runs`: the
    /// calling thread may be one of them.
    Pool {
        pool: ThreadPool,
        runners: usize,
        caller_runs: bool,
        /// The calling thread is one of `pool`'s workers.
        inside: bool,
    },
}

impl Plan {
    /// `limited`: the call has a timeout or a deadline.
    pub(crate) fn new(backend: &Backend, n_jobs: usize, limited: bool) -> Plan {
        match backend {
            Backend::Sequential => Plan::Inline,
            // Thread methods under a process backend: threads (see `Backend::Processes`).
            #[cfg(feature = "processes")]
            Backend::Processes | Backend::ProcessPool(_) => {
                Plan::new(&Backend::WorkStealing, n_jobs, limited)
            }
            _ if n_jobs <= 1 => Plan::Inline,
            Backend::Pool(pool) => {
                let inside = pool.is_current();
                let runners = n_jobs.min(pool.num_threads());
                if runners <= 1 && inside {
                    return Plan::Inline;
                }
                Plan::Pool {
                    pool: pool.clone(),
                    runners: runners.max(1),
                    caller_runs: inside || !limited,
                    inside,
                }
            }
            // The calling thread is a runner, with or without limits: every runner checks the
            // deadline and (`run`/`try_run`) the timeout before each task, so a caller inside a
            // task of its own misses neither (`engine::shared::Quiet`). Not helping under a limit,
            // as `Backend::Pool` does outside the pool, would stall a call nested in a task that
            // this thread runs for an outer call while every worker is busy with that call.
            Backend::WorkStealing => match current_pool() {
                // Nested: no new threads; the calling thread is one of the runners.
                Some((pool, inside)) => {
                    let runners = n_jobs.min(pool.num_threads());
                    if runners <= 1 {
                        Plan::Inline
                    } else {
                        Plan::Pool {
                            pool,
                            runners,
                            caller_runs: true,
                            inside,
                        }
                    }
                }
                None => Plan::Pool {
                    pool: cached_pool(n_jobs),
                    runners: n_jobs,
                    caller_runs: true,
                    inside: false,
                },
            },
        }
    }
}

thread_local! {
    /// The pool of the call whose tasks this thread (not one of that pool's workers) is running
    /// as one of the call's runners: see [`running_tasks_of`]. A pointer, not a `ThreadPool`:
    /// a clone per call touched the pool's reference count from the caller while a worker did the
    /// same, and the 2-task call's latency doubled (165 → 342 ns).
    static RUNNING_TASKS_OF: std::cell::Cell<*const ThreadPool> =
        const { std::cell::Cell::new(std::ptr::null()) };
}

/// The pool a `Parallel` call on the default backend nests into, and whether this thread is one of
/// its workers: the pool of the worker we are on, else the pool whose call's tasks this thread is
/// running (a caller that helps).
pub(crate) fn current_pool() -> Option<(ThreadPool, bool)> {
    match ThreadPool::current() {
        Some(pool) => Some((pool, true)),
        // `try_with`: from a thread-local destructor at thread exit the slot may be gone; then
        // this thread runs no call's tasks.
        None => {
            let running = RUNNING_TASKS_OF.try_with(std::cell::Cell::get).ok()?;
            // SAFETY: the slot is non-null only inside `running_tasks_of(pool, f)` on this thread,
            // while `f` runs, and then points to that `pool`, which `running_tasks_of` borrows for
            // the whole call (so it outlives `f`); its guard puts the previous value back when
            // `f` returns or unwinds, before the borrow ends. We are inside such an `f` (this
            // thread runs nothing else meanwhile), so the pool is alive; only `&self` is taken,
            // and cloned before the borrow ends.
            let pool = unsafe { running.as_ref() }?;
            Some((pool.clone(), false))
        }
    }
}

/// Runs `f` (tasks of a call on `pool`, run by the calling thread as one of its runners) so that
/// `Parallel` calls those tasks make nest into `pool`, as they would on its workers.
pub(crate) fn running_tasks_of<R>(pool: &ThreadPool, f: impl FnOnce() -> R) -> R {
    struct Restore(*const ThreadPool);
    impl Drop for Restore {
        fn drop(&mut self) {
            // Never panics, even at thread exit (it may run while unwinding).
            let _ = RUNNING_TASKS_OF.try_with(|p| p.set(self.0));
        }
    }
    // At thread exit the slot may be destroyed: then the tasks run without it (nested calls
    // then use the default pool, as from any thread outside a pool).
    let Ok(previous) = RUNNING_TASKS_OF.try_with(|p| p.replace(pool)) else {
        return f();
    };
    let _restore = Restore(previous);
    f()
}

/// The pool used for `n_jobs` outside any pool: the global one for `cpu_count()`, else a pool of
/// exactly `n_jobs` threads, built once and kept (so repeated calls spawn no threads).
pub(crate) fn cached_pool(n_jobs: usize) -> ThreadPool {
    if n_jobs == super::cores() {
        return ThreadPool::global().clone();
    }
    // A plain std Mutex: this cache is not part of any concurrent protocol loom checks.
    static CACHE: OnceLock<Mutex<HashMap<usize, ThreadPool>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut pools = cache.lock().unwrap_or_else(|e| e.into_inner());
    pools
        .entry(n_jobs)
        .or_insert_with(|| {
            ThreadPoolBuilder::new()
                .num_threads(n_jobs)
                .thread_name(move |i| format!("parjob-n{n_jobs}-{i}"))
                .build()
                .unwrap_or_else(|e| panic!("parjob: cannot start a pool of {n_jobs} threads: {e}"))
        })
        .clone()
}
