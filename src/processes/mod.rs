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
//! **Tasks.** [`delayed_fn(f)(x)`](crate::delayed_fn()) (or [`delayed_fn!(f(a, b))`](crate::delayed_fn!))
//! where `f` is a plain `fn` or a closure that captures nothing, and the arguments and the result
//! implement serde's `Serialize` and `Deserialize`; run them with
//! [`Parallel::run_in_processes`](crate::Parallel::run_in_processes) and its
//! `try_`/`_iter`/`_unordered` counterparts under [`Backend::Processes`](crate::Backend::Processes)
//! or [`Backend::ProcessPool`](crate::Backend::ProcessPool). `delayed_fn` turns `f` into a
//! function pointer ([`ProcessFn`]), the one kind of function value a worker can be handed
//! faithfully: it runs the same executable, so it gets the function's offset in it and rebuilds
//! exactly the pointer the parent held. One call may mix functions of one signature.
//!
//! **Why a pointer, not the closure's type.** A worker holds none of the parent's state except
//! what [`init`], the pool's [initializer](ProcessPoolBuilder::initializer) and the task itself
//! set up. A zero-sized closure could be re-created there from its type alone, but a closure that
//! captures only zero-sized values is zero-sized too, and its captures would be re-created
//! without the code that made them in the parent. Safe Rust lets a library rely on "whoever holds
//! this value went through my constructor" (a zero-sized token that proves an initialisation
//! ran), so re-creating one elsewhere could break that library's soundness. A closure with any
//! capture does not coerce to a function pointer, so the compiler refuses it.
//!
//! **The rule the compiler cannot check.** What is left is the assumption every process pool
//! makes (procspawn's `spawn`, joblib's workers): a plain function may run in a fresh process in
//! which only `init()`, the initializer and the task ran. A library could hand out a function
//! pointer only after a set-up, and rely on that set-up inside the function; in a worker the
//! set-up never ran. Do not send a function that a library handed you as proof that something
//! was done in this process; parjob cannot tell. A function that
//! lives in a shared library (loaded at another address in the worker) is refused at run time:
//! its tasks fail with a message saying so, and a pool whose initializer is one fails to build.
//!
//! **Cost of mixing functions.** A batch holds tasks of one function: it ends where the next task
//! calls another. Tasks grouped by function batch as well as a call of one function; tasks that
//! alternate function at every step go one per batch, each a round trip to a worker (tens of
//! microseconds). To alternate finely, send one function that dispatches on an argument (an
//! enum) instead.
//!
//! A task that cannot cross to another process is a compile error, not a runtime surprise. A
//! closure that captures a value:
//!
//! ```compile_fail,E0308
//! use parjob::{delayed_fn, Backend, Parallel};
//! let offset = 3u64;
//! let out = Parallel::new().backend(Backend::Processes)
//!     .run_in_processes((0..4u64).map(|x| delayed_fn(move |x: u64| x + offset)(x)));
//! ```
//!
//! A closure that captures only a zero-sized value (it has no bytes to send, and is refused all
//! the same):
//!
//! ```compile_fail,E0308
//! use parjob::{delayed_fn, Backend, Parallel};
//! #[derive(Clone, Copy)]
//! struct Token;
//! let token = Token;
//! let out = Parallel::new().backend(Backend::Processes)
//!     .run_in_processes((0..4u64).map(|x| delayed_fn(move |x: u64| { let _t = token; x })(x)));
//! ```
//!
//! A task spelled with [`delayed`](crate::delayed()) (a function's own zero-sized type, not a
//! pointer); the error's note says to use `delayed_fn`:
//!
//! ```compile_fail,E0277
//! use parjob::{delayed, Backend, Parallel};
//! fn square(x: u64) -> u64 { x * x }
//! let out = Parallel::new().backend(Backend::Processes)
//!     .run_in_processes((0..4u64).map(|x| delayed(square)(x)));
//! ```
//!
//! An argument that is not serializable:
//!
//! ```compile_fail,E0277
//! use parjob::{delayed_fn, Backend, Parallel};
//! struct Handle(std::fs::File);
//! fn size(h: Handle) -> u64 { h.0.metadata().unwrap().len() }
//! let file = std::fs::File::open("Cargo.toml").unwrap();
//! let out = Parallel::new().backend(Backend::Processes)
//!     .run_in_processes([delayed_fn(size)(Handle(file))]);
//! ```
//!
//! Calls of plain functions over serde types compile (and run, in a program that calls
//! [`init`]), several functions in one call included (grouped, so they batch well):
//!
//! ```no_run
//! use parjob::{delayed_fn, Backend, Parallel};
//! fn add(x: u64, offset: u64) -> u64 { x + offset }
//! fn sub(x: u64, offset: u64) -> u64 { x - offset }
//! let out = Parallel::new().backend(Backend::Processes)
//!     .run_in_processes((3..7u64).map(|x| parjob::delayed_fn!(add(x, 3))));
//! let mixed = Parallel::new().backend(Backend::Processes).run_in_processes(
//!     (3..1003u64).map(|x| if x < 503 { delayed_fn!(add(x, 3)) } else { delayed_fn!(sub(x, 3)) }),
//! );
//! let squares = Parallel::new().backend(Backend::Processes)
//!     .run_in_processes((0..4u64).map(|x| delayed_fn(|x: u64| x * x)(x)));
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
mod function;
mod pool;
mod shm;
mod wire;
mod worker;

pub use death::WorkerDeath;
pub use function::ProcessFn;
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
