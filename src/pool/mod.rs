//! The work-stealing scheduler. Layers, bottom up:
//!
//! ```text
//! job.rs      JobRef / StackJob / HeapJob   what the queues carry (executed exactly once)
//! latch.rs    CoreLatch / SpinLatch / CrossLatch / LockLatch  "done" signals a waiter can sleep on
//! sleep.rs    searching / sleeping counters, park and targeted unpark
//! registry.rs the shared pool state: injector, stealers, hunger flags, threads, inject/terminate
//! worker.rs   a worker: deque + private forks, find work, wait by helping, main loop
//! join.rs, scope.rs                          the fork-join primitives
//! builder.rs, thread_pool.rs, metrics.rs     the public surface
//! ```
//!
//! Life of a `join` fork: recorded privately → (a thief is hungry) published to the deque → popped
//! back by its owner or stolen → executed → latch set → owner (woken if asleep) reads the result.
//! `docs/architecture.md` tells the whole story.

pub(crate) mod builder;
pub(crate) mod job;
pub(crate) mod join;
pub(crate) mod latch;
pub(crate) mod metrics;
pub(crate) mod registry;
pub(crate) mod scope;
pub(crate) mod signal;
pub(crate) mod sleep;
pub(crate) mod thread_pool;
pub(crate) mod trace;
pub(crate) mod unwind;
pub(crate) mod worker;
