//! `Parallel`'s process methods: `run_in_processes`, `try_run_in_processes`,
//! `run_iter_in_processes`, `run_unordered_in_processes` (cargo feature `processes`).
//!
//! They take `delayed_fn(f)(x)` tasks (a `Delayed` whose function is a `fn` pointer,
//! [`ProcessFn`]) with the bounds a process needs: arguments and result serde types. Under a process
//! backend ([`Backend::Processes`], [`Backend::ProcessPool`]) they run the tasks in worker
//! processes ([`crate::processes::call`]); under any other backend they run on threads exactly
//! like their thread twins, so one call site serves both (`parallel_backend` picks).

use super::backend::Backend;
use super::delayed::{Apply, Delayed};
use super::error::Error;
use super::stream::{stream_passed_deadline, RunIter, RunUnordered};
use super::Parallel;
use crate::pool::unwind::{drop_contained, halt_unwinding, holding, resume_unwinding};
use crate::processes::call::{Call, Failure, Settings};
use crate::processes::{ProcessFn, ProcessPool};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::convert::Infallible;

/// Where a process method's call runs.
enum Target {
    Threads,
    Processes(Settings),
}

impl<'p> Parallel<'p> {
    fn process_target(&self) -> Target {
        let pool: Option<(ProcessPool, usize)> = match &self.backend {
            Backend::Processes | Backend::ProcessPool(_) => {
                let (n, pre_dispatch) = self.validate().unwrap_or_else(|error| {
                    panic!("parjob: invalid Parallel configuration: {error}")
                });
                let (pool, workers) = match &self.backend {
                    Backend::ProcessPool(pool) => (pool.clone(), n.min(pool.num_workers())),
                    _ => {
                        let pool = crate::processes::cached_pool(n).unwrap_or_else(|error| {
                            panic!("parjob: cannot start {n} worker processes: {error}")
                        });
                        (pool, n)
                    }
                };
                let mut window = self.pre_dispatch.map_or(3 * workers, |_| pre_dispatch);
                if workers < pool.num_workers() {
                    // `n_jobs` below the pool's size caps the batches *running* at once, and any
                    // idle driver of the pool takes a queued batch: only a window of `workers`
                    // batches in flight keeps the cap (until round 13 the window was 3 × that,
                    // and every worker of the pool ran the call). Each worker then waits for the
                    // caller between its batches. (A crashed batch is split by sending each of
                    // its tasks again at once, past the window: that moment can exceed it.)
                    window = window.min(workers);
                }
                // From the call's start, as on threads (`Duration::MAX` is no limit).
                let limits = self.limits();
                return Target::Processes(Settings {
                    pool,
                    workers,
                    batch: self.batch_size,
                    window,
                    timeout: limits.timeout,
                    deadline: limits.budget,
                });
            }
            _ => None,
        };
        debug_assert!(pool.is_none());
        Target::Threads
    }

    /// [`process_target`](Self::process_target) with the caller's input in hand (`holding`): its
    /// panics (an invalid configuration, worker processes that cannot start) drop the input
    /// contained first.
    fn process_target_holding<T>(&self, tasks: T) -> (T, Target) {
        holding(tasks, |_| self.process_target())
    }

    fn process_call<I, F, A, R>(
        &self,
        tasks: I,
        settings: Settings,
        ordered: bool,
    ) -> Call<'p, I::IntoIter, F, A, R>
    where
        I: IntoIterator<Item = Delayed<F, A>>,
        F: ProcessFn<A, Output = R>,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let (tasks, len) = holding(tasks.into_iter(), super::exact_len);
        let progress = self.progress_for(len);
        Call::new(tasks, len, settings, progress, ordered)
    }

    /// [`run`](Parallel::run) for tasks that may run in worker processes: in input order, every
    /// task runs (a failure does not cancel the others).
    ///
    /// Under [`Backend::Processes`] or [`Backend::ProcessPool`] the tasks run in worker processes
    /// (see [`processes`](crate::processes)); under any other backend this is `run`. Each task
    /// calls a function pointer ([`delayed_fn(f)(x)`](crate::delayed_fn()) or
    /// [`delayed_fn!(f(a, b))`](crate::delayed_fn!), with `f` a function or a closure that
    /// captures nothing; a capturing closure is a compile error), and the arguments and the
    /// result are serde types.
    ///
    /// [`timeout`](Parallel::timeout) is a limit on each task in a worker process: a task that
    /// runs longer is killed with its worker.
    ///
    /// # Panics
    /// After every task has finished, if one failed: with the first failure in input order. A
    /// task that panicked: its panic message, as the panic payload (as a thread task's panic
    /// would be resumed); a worker that died: "parjob: task 7: its worker process killed by signal
    /// 6 (SIGABRT)"; a timeout likewise. Also on an invalid configuration, and when the worker
    /// processes cannot start (`init()` not called).
    ///
    /// ```no_run
    /// use parjob::{delayed_fn, Backend, Parallel};
    /// fn square(x: u64) -> u64 { x * x }
    /// fn main() {
    ///     parjob::processes::init();
    ///     let squares = Parallel::new().n_jobs(2).backend(Backend::Processes)
    ///         .run_in_processes((0..100u64).map(|x| delayed_fn(square)(x)));
    ///     assert_eq!(squares[9], 81);
    /// }
    /// ```
    pub fn run_in_processes<I, F, A, R>(&self, tasks: I) -> Vec<R>
    where
        I: IntoIterator<Item = Delayed<F, A>>,
        F: ProcessFn<A, Output = R>,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let (tasks, target) = self.process_target_holding(tasks);
        let settings = match target {
            Target::Threads => return self.run(tasks),
            Target::Processes(settings) => settings,
        };
        let timeout = settings.timeout;
        let mut ordered = self.process_call(tasks, settings, true);
        let mut results = Vec::new();
        super::reserve_for_hint(&mut results, ordered.total());
        let mut first_failure = None;
        let drained = halt_unwinding(|| {
            ordered.drain(&mut results, |index, failure| {
                first_failure.get_or_insert((index, failure));
            })
        });
        if let Err(payload) = drained {
            // User code in this thread panicked (the input, an argument's `Serialize`, a result's
            // `Deserialize`, the progress callback): the results decoded so far are dropped on
            // their own, contained, before that panic unwinds on (as below).
            results.into_iter().for_each(drop_contained);
            // So is the call, which owns the input and the tasks not yet sent (dropped by the
            // unwinding, an input whose `Drop` panics too aborted the process).
            drop_contained(ordered);
            resume_unwinding(payload)
        }
        let missed = ordered.take_deadline_miss();
        match (first_failure, missed) {
            (None, None) => results,
            (Some((index, failure)), _) => {
                // The results are user values whose `Drop` may panic: each is dropped on its own,
                // contained, before the failure unwinds (a panic while unwinding aborts).
                results.into_iter().for_each(drop_contained);
                raise(index, failure, timeout)
            }
            (None, Some(missed)) => {
                results.into_iter().for_each(drop_contained);
                super::call_timed_out(missed.0, missed.1)
            }
        }
    }

    /// [`try_run`](Parallel::try_run) for tasks that may run in worker processes: `Ok` with every
    /// value in input order, or the first failure, which stops dispatching (tasks already sent
    /// finish): a task's `Err` ([`Error::Task`]), a dead worker ([`Error::WorkerCrashed`]) or a
    /// task past the timeout ([`Error::TaskTimeout`]), the one with the smallest index among
    /// those seen. Same backends and bounds as [`run_in_processes`](Parallel::run_in_processes);
    /// under a thread backend this is `try_run`.
    ///
    /// # Panics
    /// A task's panic is resumed here with its message (as `try_run` does); also when the worker
    /// processes cannot start (`init()` not called). An invalid configuration is an `Err`.
    ///
    /// ```no_run
    /// use parjob::{delayed_fn, Backend, Error, Parallel};
    /// fn check(x: u32) -> Result<u32, String> {
    ///     if x == 3 { std::process::abort() } else { Ok(x) }
    /// }
    /// fn main() {
    ///     parjob::processes::init();
    ///     let result = Parallel::new().n_jobs(2).backend(Backend::Processes)
    ///         .try_run_in_processes((0..10u32).map(|x| delayed_fn(check)(x)));
    ///     assert!(matches!(result, Err(Error::WorkerCrashed { index: 3, .. })));
    /// }
    /// ```
    pub fn try_run_in_processes<I, F, A, T, E>(&self, tasks: I) -> Result<Vec<T>, Error<E>>
    where
        I: IntoIterator<Item = Delayed<F, A>>,
        F: ProcessFn<A, Output = Result<T, E>>,
        A: Serialize + DeserializeOwned + Send + 'static,
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Serialize + DeserializeOwned + Send + 'static,
    {
        let (settings, tasks) = match &self.backend {
            Backend::Processes | Backend::ProcessPool(_) => {
                if let Err(error) = self.validate() {
                    return Err(Error::Config { error });
                }
                match self.process_target_holding(tasks) {
                    (tasks, Target::Processes(settings)) => (settings, tasks),
                    (tasks, Target::Threads) => return self.try_run(tasks),
                }
            }
            _ => return self.try_run(tasks),
        };
        let timeout = settings.timeout;
        let mut call = self.process_call(tasks, settings, false);
        let mut values: Vec<Option<T>> = Vec::new();
        // The failure with the smallest index: `Ok(e)` a task's error, `Err(f)` a failure.
        let mut first: Option<(usize, Result<E, Failure>)> = None;
        let collected = halt_unwinding(|| {
            while let Some((index, outcome)) = call.next_completed() {
                let failure = match outcome {
                    Ok(Ok(value)) => {
                        if values.len() <= index {
                            values.resize_with(index + 1, || None);
                        }
                        values[index] = Some(value);
                        continue;
                    }
                    Ok(Err(error)) => Ok(error),
                    Err(failure) => Err(failure),
                };
                call.stop();
                // The failure not kept is dropped contained: an `E` whose `Drop` panics must not
                // replace the one returned (as `try_run` drops the errors it does not return).
                if first.as_ref().is_none_or(|(i, _)| index < *i) {
                    if let Some(superseded) = first.replace((index, failure)) {
                        drop_contained(superseded);
                    }
                } else {
                    drop_contained(failure);
                }
            }
        });
        if let Err(payload) = collected {
            // As in `run_in_processes`: user code in this thread panicked; the values and the
            // error held are dropped contained before that panic unwinds on.
            values.into_iter().flatten().for_each(drop_contained);
            if let Some(kept) = first {
                drop_contained(kept);
            }
            drop_contained(call);
            resume_unwinding(payload)
        }
        let missed = call.take_deadline_miss();
        let Some((index, failure)) = first else {
            if let Some((timeout, completed)) = missed {
                values.into_iter().flatten().for_each(drop_contained);
                return Err(Error::Timeout { timeout, completed });
            }
            return Ok(values
                .into_iter()
                .map(|v| v.expect("every task ran"))
                .collect());
        };
        // As in `run_in_processes`: results whose `Drop` panics must neither replace the failure
        // nor abort the process while a task's panic unwinds.
        values.into_iter().flatten().for_each(drop_contained);
        match failure {
            Ok(error) => Err(Error::Task { index, error }),
            Err(Failure::Panic(message)) => std::panic::resume_unwind(Box::new(message)),
            Err(failure) => Err(failure_error(index, failure, timeout)),
        }
    }

    /// [`run_iter`](Parallel::run_iter) for tasks that may run in worker processes: each task's
    /// outcome in input order, `Ok(result)` or the [`Error`] that ended it
    /// ([`Error::WorkerCrashed`], [`Error::TaskTimeout`]); one failure does not stop the others.
    /// Same backends and bounds as [`run_in_processes`](Parallel::run_in_processes); under a
    /// thread backend this is `run_iter` with every item `Ok`.
    ///
    /// # Panics
    /// `next()` resumes a task's panic (its message) at its position, as `run_iter` does, but
    /// then goes on with the next task (a task's panic here is contained in its worker, like a
    /// crash, which comes back as an `Err` item; `run_iter` ends at the first panic); also when
    /// the worker processes cannot start, here, and on an invalid configuration. A panic
    /// from user code in the calling process during `next()` (the input iterator, an argument's
    /// `Serialize`, a result's `Deserialize`, the progress callback) is resumed there and ends
    /// the iterator: dispatching stops and later calls return `None`.
    ///
    /// ```no_run
    /// use parjob::{delayed_fn, Backend, Parallel};
    /// fn check(x: u32) -> u32 { if x == 3 { std::process::abort() } else { x } }
    /// fn main() {
    ///     parjob::processes::init();
    ///     let outcomes: Vec<_> = Parallel::new().n_jobs(2).backend(Backend::Processes)
    ///         .run_iter_in_processes((0..10u32).map(|x| delayed_fn(check)(x)))
    ///         .collect();
    ///     assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 9);
    ///     assert_eq!(outcomes[3].as_ref().unwrap_err().task_index(), Some(3));
    /// }
    /// ```
    pub fn run_iter_in_processes<I, F, A, R>(
        &self,
        tasks: I,
    ) -> RunIterInProcesses<'p, I::IntoIter, F, A, R>
    where
        I: IntoIterator<Item = Delayed<F, A>>,
        F: ProcessFn<A, Output = R>,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let (tasks, target) = self.process_target_holding(tasks);
        RunIterInProcesses(match target {
            Target::Threads => Runner::Threads(self.run_iter(tasks)),
            Target::Processes(settings) => {
                let timeout = settings.timeout;
                Runner::Processes(self.process_call(tasks, settings, true), timeout)
            }
        })
    }

    /// [`run_unordered`](Parallel::run_unordered) for tasks that may run in worker processes:
    /// `(index, outcome)` pairs in completion order, with the outcomes of
    /// [`run_iter_in_processes`](Parallel::run_iter_in_processes) and its rules.
    ///
    /// ```no_run
    /// use parjob::{delayed_fn, Backend, Parallel};
    /// fn double(x: u32) -> u32 { 2 * x }
    /// fn main() {
    ///     parjob::processes::init();
    ///     let mut pairs: Vec<(usize, u32)> = Parallel::new().backend(Backend::Processes)
    ///         .run_unordered_in_processes((0..10u32).map(|x| delayed_fn(double)(x)))
    ///         .map(|(i, r)| (i, r.unwrap()))
    ///         .collect();
    ///     pairs.sort();
    ///     assert_eq!(pairs[4], (4, 8));
    /// }
    /// ```
    pub fn run_unordered_in_processes<I, F, A, R>(
        &self,
        tasks: I,
    ) -> RunUnorderedInProcesses<'p, I::IntoIter, F, A, R>
    where
        I: IntoIterator<Item = Delayed<F, A>>,
        F: ProcessFn<A, Output = R>,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let (tasks, target) = self.process_target_holding(tasks);
        RunUnorderedInProcesses(match target {
            Target::Threads => UnorderedRunner::Threads(self.run_unordered(tasks)),
            Target::Processes(settings) => {
                let timeout = settings.timeout;
                UnorderedRunner::Processes(self.process_call(tasks, settings, false), timeout)
            }
        })
    }
}

/// The typed error for a failure that is not a panic.
fn failure_error<E>(
    index: usize,
    failure: Failure,
    timeout: Option<std::time::Duration>,
) -> Error<E> {
    match failure {
        Failure::Crashed(death) => Error::WorkerCrashed { index, death },
        Failure::TimedOut => Error::TaskTimeout {
            index,
            timeout: timeout.unwrap_or_default(),
        },
        Failure::Panic(message) => std::panic::resume_unwind(Box::new(message)),
    }
}

/// Panics with a failure: a task's panic with its own message, a crash or timeout with the
/// typed error's text.
fn raise(index: usize, failure: Failure, timeout: Option<std::time::Duration>) -> ! {
    let error: Error<Infallible> = failure_error(index, failure, timeout);
    panic!("parjob: {error}")
}

fn outcome<R>(
    index: usize,
    outcome: Result<R, Failure>,
    timeout: Option<std::time::Duration>,
) -> Result<R, Error<Infallible>> {
    outcome.map_err(|failure| failure_error(index, failure, timeout))
}

enum Runner<'p, I, F: Apply<A, Output = R>, A, R> {
    Threads(RunIter<'p, I, F, A, R>),
    Processes(Call<'p, I, F, A, R>, Option<std::time::Duration>),
}

/// Outcomes in input order: [`Parallel::run_iter_in_processes`]. Dropping it early stops
/// dispatching; batches already sent finish in their workers and their results are dropped.
pub struct RunIterInProcesses<'p, I, F: Apply<A, Output = R>, A, R>(Runner<'p, I, F, A, R>);

enum UnorderedRunner<'p, I, F: Apply<A, Output = R>, A, R> {
    Threads(RunUnordered<'p, I, F, A, R>),
    Processes(Call<'p, I, F, A, R>, Option<std::time::Duration>),
}

/// `(index, outcome)` in completion order: [`Parallel::run_unordered_in_processes`]. Same drop
/// rules as [`RunIterInProcesses`].
pub struct RunUnorderedInProcesses<'p, I, F: Apply<A, Output = R>, A, R>(
    UnorderedRunner<'p, I, F, A, R>,
);

impl<I, F, A, R> Iterator for RunIterInProcesses<'_, I, F, A, R>
where
    I: Iterator<Item = Delayed<F, A>>,
    F: ProcessFn<A, Output = R>,
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    type Item = Result<R, Error<Infallible>>;
    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            Runner::Threads(iter) => iter.next().map(Ok),
            Runner::Processes(call, timeout) => match call.next_completed() {
                Some((index, result)) => Some(outcome(index, result, *timeout)),
                // Once, after every outcome of the tasks that ran; then `None`.
                None => call
                    .take_deadline_miss()
                    .map(|(limit, _)| stream_passed_deadline(limit)),
            },
        }
    }
}

impl<I, F, A, R> Iterator for RunUnorderedInProcesses<'_, I, F, A, R>
where
    I: Iterator<Item = Delayed<F, A>>,
    F: ProcessFn<A, Output = R>,
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    type Item = (usize, Result<R, Error<Infallible>>);
    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            UnorderedRunner::Threads(iter) => iter.next().map(|(i, r)| (i, Ok(r))),
            UnorderedRunner::Processes(call, timeout) => match call.next_completed() {
                Some((index, result)) => Some((index, outcome(index, result, *timeout))),
                None => call
                    .take_deadline_miss()
                    .map(|(limit, _)| stream_passed_deadline(limit)),
            },
        }
    }
}

impl<I, F: Apply<A, Output = R>, A, R> std::fmt::Debug for RunIterInProcesses<'_, I, F, A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let on = match self.0 {
            Runner::Threads(_) => "threads",
            Runner::Processes(..) => "processes",
        };
        f.debug_struct("RunIterInProcesses")
            .field("on", &on)
            .finish_non_exhaustive()
    }
}

impl<I, F: Apply<A, Output = R>, A, R> std::fmt::Debug for RunUnorderedInProcesses<'_, I, F, A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let on = match self.0 {
            UnorderedRunner::Threads(_) => "threads",
            UnorderedRunner::Processes(..) => "processes",
        };
        f.debug_struct("RunUnorderedInProcesses")
            .field("on", &on)
            .finish_non_exhaustive()
    }
}
