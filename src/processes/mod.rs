//! joblib's process backend: tasks in worker processes (cargo feature `processes`).
//!
//! A task that aborts, segfaults, overflows its stack or is killed takes only its worker process
//! with it: the call gets [`Error::WorkerCrashed`](crate::Error::WorkerCrashed) for that task
//! (naming its index and how the worker died), every other result, and a new worker in place of
//! the dead one. A task that runs past [`Parallel::timeout`](crate::Parallel::timeout) is killed.
//!
//! **Opt in.** Worker processes re-execute the program's own binary (with
//! [procspawn](https://docs.rs/procspawn)), so [`init`] must be the first call in `main`: in a
//! worker it never returns, it serves tasks instead. In an integration-test file, put
//! [`enable_test_support!()`](crate::processes::enable_test_support) at the top level instead.
//!
//! **Tasks.** `delayed(f)(x)` (or [`delayed!`](crate::delayed!)) where `f` is a plain `fn` or a
//! closure that captures nothing, and the arguments and the result implement serde's `Serialize`
//! and `Deserialize`; run them with [`Parallel::run_in_processes`](crate::Parallel::run_in_processes)
//! and its `try_`/`_iter`/`_unordered` counterparts under [`Backend::Processes`](crate::Backend::Processes)
//! or [`Backend::ProcessPool`](crate::Backend::ProcessPool).
//!
//! **The rule the compiler cannot check.** A worker process holds none of the parent's state
//! except what [`init`], the pool's [initializer](ProcessPoolBuilder::initializer) and the task
//! itself set up, and the task's function is re-created there from its type (it has no bytes to
//! send). A closure that captures only zero-sized values passes the compile-time check too, and
//! those values are re-created without the code that made them in the parent. Safe Rust lets a
//! library rely on "whoever holds this value went through my constructor" (a zero-sized token
//! that proves an initialisation ran, a private function handed out only after a set-up); in a
//! worker that guarantee does not hold, and a library whose soundness depends on it could then
//! misbehave, up to undefined behaviour. So pass plain functions and closures that capture
//! nothing, and do not send a function or closure that a library handed you as proof of
//! something done in the calling process. parjob cannot check this. procspawn's own `spawn`
//! takes only `fn` pointers, which cannot carry captured values (a function reached through one
//! still runs without the parent's set-up: the assumption any "run this function in a fresh
//! process" API makes, joblib's workers included); parjob also accepts zero-sized closures, so
//! that `delayed(f)(x)` keeps joblib's spelling, and that is what lets a captured token through.
//!
//! A task that cannot cross to another process is a compile error, not a runtime surprise. A
//! closure that captures a value (the error names the rule; it appears in `cargo build`, not in
//! `cargo check`, because it is checked when the call is compiled for that closure's type):
//!
//! ```compile_fail,E0080
//! use parjob::{delayed, Backend, Parallel};
//! let offset = 3u64;
//! let out = Parallel::new().backend(Backend::Processes)
//!     .run_in_processes((0..4u64).map(|x| delayed(move |x: u64| x + offset)(x)));
//! ```
//!
//! An argument that is not serializable:
//!
//! ```compile_fail,E0277
//! use parjob::{delayed, Backend, Parallel};
//! struct Handle(std::fs::File);
//! fn size(h: Handle) -> u64 { h.0.metadata().unwrap().len() }
//! let file = std::fs::File::open("Cargo.toml").unwrap();
//! let out = Parallel::new().backend(Backend::Processes)
//!     .run_in_processes([delayed(size)(Handle(file))]);
//! ```
//!
//! The same call with a function item and serde types compiles (and runs, in a program that
//! calls [`init`]):
//!
//! ```no_run
//! use parjob::{Backend, Parallel};
//! fn add(x: u64, offset: u64) -> u64 { x + offset }
//! let out = Parallel::new().backend(Backend::Processes)
//!     .run_in_processes((0..4u64).map(|x| parjob::delayed!(add(x, 3))));
//! ```
//!
//! ```text
//! mod.rs     init, enable_test_support!, the pool cache for Backend::Processes
//! pool.rs    ProcessPool(Builder): driver threads, worker start, death and restart
//! worker.rs  the worker process's life (hardening, initializer, batch loop)
//! wire.rs    batches and replies on the wire; how a task function crosses
//! shm.rs     the pool's shared-memory slabs: batch arguments and outcomes without copies
//! death.rs   WorkerDeath: exit status read with waitid(WNOWAIT)
//! call.rs    one call: batching, dispatch window, ordering, crash bisection
//! ```

pub(crate) mod call;
mod death;
mod pool;
mod shm;
mod wire;
mod worker;

pub use death::WorkerDeath;
pub use pool::{ProcessPool, ProcessPoolBuilder, ProcessPoolError, INNER_THREAD_VARS};

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// Makes this program able to run tasks in worker processes. Call it first thing in `main`.
///
/// In the parent it only records that it was called. In a worker process (started by parjob) it
/// does not return: it runs tasks until the parent goes away, then exits. Anything `main` does
/// before calling it is therefore done again in every worker.
///
/// ```no_run
/// fn the_program() { /* Parallel calls with Backend::Processes */ }
///
/// fn main() {
///     parjob::processes::init();
///     the_program();
/// }
/// ```
pub fn init() {
    procspawn::init();
}

/// For integration tests (`tests/*.rs`), where there is no `main` to call [`init`] from: expands
/// to a constructor that enables procspawn's test mode and a `#[test]` named
/// `procspawn_test_helper` through which workers re-enter the test binary. Use it once per test
/// file, at the top level.
///
/// ```ignore
/// parjob::processes::enable_test_support!();
/// ```
pub use procspawn::enable_test_support;

/// The process pool `Backend::Processes` uses for `workers` processes: built on first use, then
/// kept until the program exits (its workers die with the program).
pub(crate) fn cached_pool(workers: usize) -> Result<ProcessPool, ProcessPoolError> {
    static CACHE: OnceLock<Mutex<HashMap<usize, ProcessPool>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut pools = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(pool) = pools.get(&workers) {
        return Ok(pool.clone());
    }
    let pool = ProcessPoolBuilder::new().num_workers(workers).build()?;
    pools.insert(workers, pool.clone());
    Ok(pool)
}
