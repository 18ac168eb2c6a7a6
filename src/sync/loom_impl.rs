//! `--cfg loom` builds: loom's instrumented primitives.

pub(crate) use loom::cell::UnsafeCell;
pub(crate) use loom::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
pub(crate) use loom::sync::{Arc, Condvar, Mutex};

/// Loom threads are not OS threads: pinning always fails.
pub(crate) fn pin_current_thread(_id: usize) -> bool {
    false
}

/// Loom threads are not OS threads: nothing to pin to.
pub(crate) fn pinnable_cores() -> Option<Vec<usize>> {
    None
}

/// Under loom a spin must yield, or the model never lets the other thread make progress.
#[inline]
pub(crate) fn spin_loop() {
    loom::hint::spin_loop()
}

/// Threads, with park/unpark rebuilt on a per-thread `loom::sync::Notify`.
///
/// loom's own `thread::park`/`Thread::unpark` are not faithful enough for the sleep protocol:
/// loom 0.7.3's unpark makes *any* blocked thread runnable (`rt/thread.rs`, `set_unparked`), so
/// unparking a worker that is blocked on a mutex makes loom panic with "expected to be able to
/// acquire lock", and unparking a thread that is yielding drops the token instead of saving it
/// for its next `park` (a false lost wake-up). std saves the token in every case. A `Notify`
/// has exactly std's semantics: a saved permit, consumed by the next wait, Release/Acquire
/// between `notify` and the wait it ends (std documents the same for unpark → park), and
/// spurious wake-ups explored, which std also allows for `park`.
pub(crate) mod thread {
    use loom::sync::Notify;
    pub(crate) use loom::thread::{Builder, JoinHandle};
    use std::sync::Arc as StdArc;

    loom::thread_local! {
        static PARKER: StdArc<Notify> = StdArc::new(Notify::new());
    }

    /// A handle to unpark a thread (`std::thread::Thread`'s role).
    #[derive(Clone, Debug)]
    pub(crate) struct Thread {
        parker: StdArc<Notify>,
    }

    impl Thread {
        /// Gives the thread a token: its current or next `park` returns.
        pub(crate) fn unpark(&self) {
            self.parker.notify();
        }
    }

    /// The current thread's handle.
    pub(crate) fn current() -> Thread {
        Thread {
            parker: PARKER.with(StdArc::clone),
        }
    }

    /// Blocks until a token is available (may also return spuriously, as std's may).
    pub(crate) fn park() {
        PARKER.with(|parker| parker.wait());
    }

    #[allow(unused_imports)]
    pub(crate) use loom::thread::{spawn, yield_now};
}
