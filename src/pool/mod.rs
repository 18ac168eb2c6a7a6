//! The work-stealing scheduler. Layers, bottom up:
//!
//! ```text
//! job.rs      JobRef / StackJob / HeapJob   what the queues carry (executed exactly once)
//! latch.rs    CoreLatch / SpinLatch / CrossLatch / LockLatch  "done" signals a waiter can sleep on
//! sleep.rs    searching / sleeping counters, park and targeted unpark
//! registry.rs the shared pool state: injector, stealers, hunger flags, threads, inject/terminate
//! offers.rs   outside offers: an outside `join`'s B, on the table until claimed or withdrawn
//! worker.rs   a worker: deque + private forks, find work, wait by helping, main loop
//! join.rs, scope.rs                          the fork-join primitives
//! builder.rs, thread_pool.rs, metrics.rs     the public surface
//! ```
//!
//! Life of a `join` fork: recorded privately → (a thief is hungry) published to the deque → popped
//! back by its owner or stolen → executed → latch set → owner (woken if asleep) reads the result.
//! `docs/architecture.md` tells the whole story.

mod builder;
mod job;
mod join;
mod latch;
mod metrics;
mod offers;
mod registry;
mod scope;
mod signal;
mod sleep;
mod thread_pool;
mod trace;
pub(crate) mod unwind;
mod worker;

// The public API (re-exported by the crate root).
pub use builder::{
    BuildError, SharePolicy, ThreadPoolBuilder, VictimPolicy, DEFAULT_FORK_SAMPLE_PERIOD,
    DEFAULT_SPIN_ROUNDS, MAX_NUM_THREADS, MIN_STACK_SIZE,
};
pub use metrics::{LatencySummary, Metrics, WorkerMetrics};
pub use scope::Scope;
pub use thread_pool::{cpu_count, current_thread_index, join, scope, ThreadPool};
pub use trace::{EventKind, Trace, TraceEvent, TraceSummary, WorkerTime, TRACE_CAPACITY};

// Exactly what the layers above (`src/parallel/`) may use of the scheduler: the pool handle
// (`ThreadPool::current`/`global`, `is_current`, `spawn_unchecked`), the re-armable wake-up they
// wait on, the unwind helpers (`unwind`) and a hook that puts their batches into traces. Nothing
// else of the scheduler is reachable from outside `src/pool/`.
pub(crate) use signal::Signal;
pub(crate) use worker::trace_current;

/// The scheduler internals that the loom models drive directly (`src/loom_api.rs`, loom builds
/// only).
#[cfg(loom)]
pub(crate) mod loom_access {
    pub(crate) use super::metrics::{LatencyHistogram, WorkerCounters};
    pub(crate) use super::sleep::{Sleep, Woken};
    pub(crate) use super::worker::{take_injected, WorkerThread};
}
