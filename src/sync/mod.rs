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

/// Declares a thread-local `Cell`-like static: std's `thread_local!` with a `const` initialiser
/// (no lazy-init check on access) in normal builds, loom's under `--cfg loom` (whose values are
/// per loom thread and reset between executions). The one place a thread-local is declared, so no
/// file outside this module needs a `cfg(loom)` branch.
macro_rules! thread_local_const {
    ($(#[$attr:meta])* static $name:ident: $ty:ty = $init:expr;) => {
        #[cfg(not(loom))]
        std::thread_local! {
            $(#[$attr])* static $name: $ty = const { $init };
        }
        #[cfg(loom)]
        loom::thread_local! {
            $(#[$attr])* static $name: $ty = $init;
        }
    };
}
pub(crate) use thread_local_const;
