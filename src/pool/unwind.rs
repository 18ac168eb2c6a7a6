//! Catching and resuming panics across the scheduler.

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};

/// A caught panic payload.
pub(crate) type Panic = Box<dyn Any + Send + 'static>;

/// Runs `f`, catching a panic so the scheduler can finish its bookkeeping before resuming it.
///
/// `AssertUnwindSafe` is sound here in the sense `UnwindSafe` cares about: every payload we catch
/// is resumed in the caller (or, for a second panic, dropped) after the tasks that could observe a
/// half-updated value have finished, which is exactly what would happen without the catch.
#[inline]
pub(crate) fn halt_unwinding<F: FnOnce() -> R, R>(f: F) -> Result<R, Panic> {
    panic::catch_unwind(AssertUnwindSafe(f))
}

/// Resumes a caught panic with its original payload.
#[inline]
pub(crate) fn resume_unwinding(payload: Panic) -> ! {
    panic::resume_unwind(payload)
}

/// Drops a value whose `Drop` is user code (a panic payload, a task's result or closure) without
/// letting a panic from that `Drop` unwind into the scheduler.
///
/// A payload whose own `Drop` panics is legal in safe Rust (`std::panic::panic_any`); if its panic
/// escaped here it would unwind through the scheduler's bookkeeping (a scope's pending count, a
/// latch) and let a caller return while its tasks still run. The payload of that second panic is
/// user data too (usually a plain message, dropped quietly), whose `Drop` may panic in turn: each
/// is dropped the same way, up to a bound, and a chain longer than that is leaked — a leak is
/// safe, an unbounded chain of drops is not.
#[cold]
#[inline(never)]
pub(crate) fn drop_contained<T>(value: T) {
    const MAX_CHAINED_DROP_PANICS: usize = 8;
    let Err(mut again) = halt_unwinding(move || drop(value)) else {
        return;
    };
    for _ in 0..MAX_CHAINED_DROP_PANICS {
        match halt_unwinding(move || drop(again)) {
            Ok(()) => return,
            Err(next) => again = next,
        }
    }
    std::mem::forget(again);
}

/// `f(&input)`, with `input` handed back. If `f` panics, `input` (a user value, such as a call's
/// input iterator, whose `Drop` may panic) is dropped first, on its own and contained, and then
/// `f`'s panic goes on: dropped by that unwinding, a `Drop` that panicked too would abort.
pub(crate) fn holding<T, R>(input: T, f: impl FnOnce(&T) -> R) -> (T, R) {
    match halt_unwinding(|| f(&input)) {
        Ok(value) => (input, value),
        Err(payload) => {
            drop_contained(input);
            resume_unwinding(payload)
        }
    }
}

/// Keeps `payload` in `first` if it holds none yet (the first panic is the one a call resumes),
/// else drops it contained: a later panic's payload is user data whose `Drop` may panic.
pub(crate) fn keep_first(first: &mut Option<Panic>, payload: Panic) {
    match first {
        None => *first = Some(payload),
        Some(_) => drop_contained(payload),
    }
}

/// Aborts the process if dropped during unwinding.
///
/// Guards code that must not unwind: a worker's bookkeeping after a job (a panic there would leave a
/// latch unset and its waiter blocked forever).
pub(crate) struct AbortIfPanic;

impl Drop for AbortIfPanic {
    fn drop(&mut self) {
        eprintln!("parjob: unexpected panic inside the scheduler; aborting");
        std::process::abort();
    }
}
