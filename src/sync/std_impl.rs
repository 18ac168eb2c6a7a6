//! Normal builds: std's primitives, plus an `UnsafeCell` with loom's closure API so call sites are
//! the same in both builds.

pub(crate) use std::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
pub(crate) use std::sync::{Arc, Condvar, Mutex};
pub(crate) use std::thread;

/// Pins the calling thread to core `id`; `false` if the OS refused.
pub(crate) fn pin_current_thread(id: usize) -> bool {
    core_affinity::set_for_current(core_affinity::CoreId { id })
}

/// The cores this process may be pinned to; `None` if the platform cannot tell.
pub(crate) fn pinnable_cores() -> Option<Vec<usize>> {
    core_affinity::get_core_ids()
        .filter(|ids| !ids.is_empty())
        .map(|ids| ids.into_iter().map(|c| c.id).collect())
}

/// Hint to the CPU that we are in a spin loop.
#[inline]
pub(crate) fn spin_loop() {
    std::hint::spin_loop()
}

/// `std::cell::UnsafeCell` with loom's `with`/`with_mut` API.
#[derive(Debug)]
#[repr(transparent)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

impl<T> UnsafeCell<T> {
    #[inline]
    pub(crate) const fn new(value: T) -> Self {
        UnsafeCell(std::cell::UnsafeCell::new(value))
    }

    /// Gives `f` a shared raw pointer to the contents.
    #[inline]
    #[allow(dead_code)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Gives `f` a mutable raw pointer to the contents.
    #[inline]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}
