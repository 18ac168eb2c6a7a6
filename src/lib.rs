//! # parjob
//!
//! joblib-style parallelism for Rust on a work-stealing scheduler written from scratch.
//!
//! The scheduler: one thread per core, each with a Chase–Lev deque (`crossbeam-deque`), plus a
//! global injector for work from outside the pool. Idle workers steal, then sleep without burning
//! CPU, and are woken (one at a time) when work appears. On top of it: the fork-join primitives
//! [`join`] and [`scope`], which may borrow from the caller's stack and nest freely.
//!
//! ```
//! // Fork-join: split, recurse, combine. Nested calls run on the same pool.
//! fn sum(xs: &[u64]) -> u64 {
//!     if xs.len() <= 1024 {
//!         return xs.iter().sum();
//!     }
//!     let (left, right) = xs.split_at(xs.len() / 2);
//!     let (a, b) = parjob::join(|| sum(left), || sum(right));
//!     a + b
//! }
//! let data: Vec<u64> = (1..=100_000).collect();
//! assert_eq!(sum(&data), 5_000_050_000);
//! ```
//!
//! A pool of your own, with metrics:
//!
//! ```
//! let pool = parjob::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
//! let total: u64 = pool.install(|| (0..1000u64).map(|i| parjob::join(|| i, || 1).0).sum());
//! assert_eq!(total, 499_500);
//! println!("{}", pool.metrics());
//! ```
//!
//! joblib's `Parallel` and `delayed`: the first joblib example, almost word for word.
//!
//! ```
//! use parjob::{delayed, Parallel};
//! fn calcular_raiz_cuadrada(n: f64) -> f64 { n.sqrt() }
//! let numeros = vec![1.0, 4.0, 9.0];
//! let resultado: Vec<f64> = Parallel::new().n_jobs(2)
//!     .run(numeros.iter().map(|&n| delayed(calcular_raiz_cuadrada)(n)));
//! assert_eq!(resultado, vec![1.0, 2.0, 3.0]);
//! ```
//!
//! `docs/joblib.md` maps every joblib parameter to parjob.
//!
//! See `docs/architecture.md` for the design and `docs/verification.md` for how it is checked.

#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![cfg_attr(loom, allow(dead_code, unused_imports))]

mod parallel;
mod pool;
#[cfg(feature = "processes")]
pub mod processes;
mod sync;

/// Internals for the loom models in `loom-tests/` (`--cfg loom` builds only; outside semver).
#[cfg(loom)]
#[doc(hidden)]
#[path = "loom_api.rs"]
pub mod __loom;

pub use parallel::backend::Backend;
pub use parallel::batch::BatchSize;
pub use parallel::config::{parallel_backend, parallel_config, Config};
pub use parallel::delayed::{delayed, delayed_fn, Apply, Delayed};
pub use parallel::error::{ConfigError, Error};
#[cfg(feature = "processes")]
pub use parallel::processes::{RunIterInProcesses, RunUnorderedInProcesses};
pub use parallel::stream::{RunIter, RunUnordered, ScopedIter};
pub use parallel::{effective_n_jobs, Parallel};
pub use pool::{
    cpu_count, current_thread_index, join, scope, BuildError, EventKind, LatencySummary, Metrics,
    Scope, SharePolicy, ThreadPool, ThreadPoolBuilder, Trace, TraceEvent, TraceSummary,
    VictimPolicy, WorkerMetrics, WorkerTime, DEFAULT_FORK_SAMPLE_PERIOD, DEFAULT_SPIN_ROUNDS,
    MAX_NUM_THREADS, MIN_STACK_SIZE, TRACE_CAPACITY,
};

/// The README's Rust examples are compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
