//! The one place that names concurrency primitives.
//!
//! Every atomic, lock, cell, thread and park/unpark used by the scheduler comes from here. Under
//! `--cfg loom` the module switches to loom's instrumented types and to a loom-visible stand-in for
//! crossbeam's deques ([`deque`]), so the loom models in `loom-tests/` explore the code that ships
//! rather than a copy of it.
//!
//! Metrics counters deliberately do *not* go through this facade (see `pool::metrics`): they are
//! observations, not part of any protocol, and instrumenting them would only multiply the
//! interleavings loom has to explore.

#[cfg(not(loom))]
mod std_impl;
#[cfg(not(loom))]
pub(crate) use std_impl::*;

#[cfg(loom)]
mod loom_impl;
#[cfg(loom)]
pub(crate) use loom_impl::*;

pub(crate) mod deque;
pub(crate) mod mutant;
