//! `--cfg loom` builds: loom's instrumented primitives.

pub(crate) use loom::cell::UnsafeCell;
pub(crate) use loom::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
pub(crate) use loom::sync::{Arc, Condvar, Mutex};
pub(crate) use loom::thread;

/// Under loom a spin must yield, or the model never lets the other thread make progress.
#[inline]
pub(crate) fn spin_loop() {
    loom::hint::spin_loop()
}
