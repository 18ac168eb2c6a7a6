//! Latches: one-shot "this is done" signals that a waiter can sleep on.
//!
//! Every latch owes two guarantees:
//! 1. a `set` *synchronizes-with* the `probe` that observes it (Release/Acquire), so whatever the
//!    setter wrote before setting (a job's result) is visible to the waiter;
//! 2. the waiter may free the latch the moment it observes it set, so `set` takes `*const Self`
//!    and must read everything it needs (registry, owner index) **before** the store that sets it.

use super::registry::Registry;
use crate::sync::mutant::{self, Mutant};
use crate::sync::{Arc, AtomicUsize, Condvar, Mutex, Ordering};

/// Something that can be set once.
pub(crate) trait Latch {
    /// # Safety
    /// `this` must be valid on entry; it may be freed by its waiter as soon as it is set, so the
    /// implementation must not touch `*this` after the setting store.
    unsafe fn set(this: *const Self);
}

const UNSET: usize = 0;
const SLEEPING: usize = 1;
const SET: usize = 2;

/// The latch state machine that a *worker* waits on: `UNSET → SLEEPING → UNSET` while its owner
/// naps, and `→ SET` exactly once, by the setter.
///
/// The owner marks `SLEEPING` (CAS) before parking; the setter's `swap(SET)` returns the old state,
/// so a setter that sees `SLEEPING` knows it must unpark the owner, and a setter that sees `UNSET`
/// knows the owner's CAS will fail and it will not park. Both are RMWs on one location, so exactly
/// one of those two stories happens: the wake-up cannot be lost.
#[derive(Debug)]
pub(crate) struct CoreLatch {
    state: AtomicUsize,
}

impl CoreLatch {
    #[inline]
    pub(crate) fn new() -> Self {
        CoreLatch {
            state: AtomicUsize::new(UNSET),
        }
    }

    /// Has the latch been set? Acquire: pairs with the Release in `set`, making the job's result
    /// visible.
    #[inline]
    pub(crate) fn probe(&self) -> bool {
        self.state.load(Ordering::Acquire) == SET
    }

    /// Owner only: re-arm a latch that is used as a repeatable signal (see `signal.rs`). Acquire:
    /// whatever a setter wrote before its `set` is visible after the reset.
    #[inline]
    pub(crate) fn reset(&self) {
        self.state.swap(UNSET, Ordering::AcqRel);
    }

    /// Owner only: announce that it is about to park. Returns `false` if the latch is already set
    /// (then the owner must not park).
    #[inline]
    pub(crate) fn fall_asleep(&self) -> bool {
        self.state
            .compare_exchange(UNSET, SLEEPING, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Owner only: back from parking (or from deciding not to park).
    #[inline]
    pub(crate) fn wake_up(&self) {
        let _ = self
            .state
            .compare_exchange(SLEEPING, UNSET, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Sets the latch; returns `true` if the owner was (about to be) asleep and must be unparked.
    ///
    /// # Safety
    /// See [`Latch::set`]: `this` may be freed once this returns.
    #[inline]
    pub(crate) unsafe fn set(this: *const Self) -> bool {
        let order = if mutant::active(Mutant::LatchSetRelaxed) {
            Ordering::Relaxed
        } else {
            Ordering::AcqRel
        };
        // AcqRel: the Release half pairs with the owner's Acquire `probe` (the job's result, written
        // before, becomes visible to it); the Acquire half pairs with nothing the setter needs and
        // is kept because a swap's read of SLEEPING decides whether we must unpark.
        // SAFETY: `this` is valid on entry (caller contract); the swap is our last access.
        let old = unsafe { (*this).state.swap(SET, order) };
        old == SLEEPING
    }
}

/// The latch a worker waits on for work of its own pool (a `join`'s stolen half).
///
/// Two words: the state and the owner. The setter is always a worker of the owner's pool, so the
/// registry outlives the set (the setter's own `Arc` keeps it), and the owner cannot exit while it
/// waits on this latch, so reading its fields before the set is sound.
pub(crate) struct SpinLatch<'w> {
    core: CoreLatch,
    /// Who to wake: one word on the hot path of every `join` (the target lives in the worker).
    owner: &'w WakeTarget,
}

/// A worker as a latch setter sees it: the pool whose sleep state parks it, and its index there.
/// Each worker owns one for its whole life, so a latch can point to it instead of copying it.
pub(crate) struct WakeTarget {
    pub(crate) registry: *const Registry,
    pub(crate) index: usize,
}

impl<'w> SpinLatch<'w> {
    /// A latch that the worker described by `owner` waits on.
    #[inline]
    pub(crate) fn new(owner: &'w WakeTarget) -> Self {
        SpinLatch {
            core: CoreLatch::new(),
            owner,
        }
    }

    #[inline]
    pub(crate) fn core(&self) -> &CoreLatch {
        &self.core
    }
}

impl Latch for SpinLatch<'_> {
    #[inline]
    unsafe fn set(this: *const Self) {
        // Read everything before setting: the owner may return and pop its frame right after.
        // SAFETY: `this` is valid until the `CoreLatch::set` below, because the owner is blocked
        // on that latch and cannot leave its frame before it is set. The target lives in the
        // owner's `WorkerThread` (alive for the owner's whole life, longer than this wait).
        let (registry, index): (*const Registry, usize) =
            unsafe { ((*this).owner.registry, (*this).owner.index) };
        // SAFETY: `this` is valid on entry: the owner is blocked on this very latch; the core
        // latch is a field of it, passed as a raw pointer so no reference to the frame outlives
        // the set.
        if unsafe { CoreLatch::set(&raw const (*this).core) } {
            // SAFETY: the registry lives in its Arc's heap block, kept alive by the setter (a
            // worker of the same pool), not in the owner's frame.
            unsafe { (*registry).sleep.wake_specific(index) };
        }
    }
}

/// The latch a worker of one pool waits on while its call runs on *another* pool: the setter is a
/// worker of that other pool, so it takes its own reference to the owner's registry before setting.
pub(crate) struct CrossLatch {
    core: CoreLatch,
    registry: Arc<Registry>,
    owner: usize,
}

impl CrossLatch {
    /// A latch that worker `owner` of `registry` waits on while its call runs on another pool.
    pub(crate) fn new(registry: &Arc<Registry>, owner: usize) -> Self {
        CrossLatch {
            core: CoreLatch::new(),
            registry: Arc::clone(registry),
            owner,
        }
    }

    #[inline]
    pub(crate) fn core(&self) -> &CoreLatch {
        &self.core
    }
}

impl Latch for CrossLatch {
    unsafe fn set(this: *const Self) {
        // SAFETY: `this` is valid until the set; we copy out what the wake-up needs first, and the
        // cloned Arc keeps the owner's registry alive even if the owner's pool shuts down.
        let (registry, owner) = unsafe { (Arc::clone(&(*this).registry), (*this).owner) };
        // SAFETY: `this` is still valid here: its owner waits for exactly this set before it may
        // free the latch, and nothing of `*this` is read after it.
        if unsafe { CoreLatch::set(&raw const (*this).core) } {
            registry.sleep.wake_specific(owner);
        }
    }
}

/// A latch for threads outside any pool: spin briefly, then block on a condition variable.
///
/// Once the waiter has announced `SLEEPING` it leaves only after the setter has flipped `notified`
/// under the lock, so the setter never touches a latch whose waiter already returned.
pub(crate) struct LockLatch {
    state: AtomicUsize,
    notified: Mutex<bool>,
    cond: Condvar,
}

impl LockLatch {
    pub(crate) fn new() -> Self {
        LockLatch {
            state: AtomicUsize::new(UNSET),
            notified: Mutex::new(false),
            cond: Condvar::new(),
        }
    }

    #[inline]
    pub(crate) fn probe(&self) -> bool {
        self.state.load(Ordering::Acquire) == SET
    }

    /// Blocks until set. Spins a little first: the jobs an outside caller waits for are often short.
    pub(crate) fn wait(&self) {
        for _ in 0..OUTSIDE_SPINS {
            if self.probe() {
                return;
            }
            crate::sync::spin_loop();
        }
        let mut notified = self.notified.lock().unwrap();
        // The CAS fails only if the latch is already SET, and then the setter saw UNSET and will
        // not come for the lock: we may leave at once.
        if self
            .state
            // Acquire on both outcomes pairs with the setter's `swap(SET)` (Release): on failure we
            // leave at once and must see what the setter wrote before setting.
            .compare_exchange(UNSET, SLEEPING, Ordering::Acquire, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        while !*notified {
            notified = self.cond.wait(notified).unwrap();
        }
    }
}

/// Spins an outside waiter makes before blocking (each spin is a `pause`, tens of ns).
const OUTSIDE_SPINS: u32 = if cfg!(loom) { 1 } else { 200 };

impl Latch for LockLatch {
    unsafe fn set(this: *const Self) {
        // SAFETY: `this` is valid on entry. If the old state is SLEEPING the waiter cannot leave
        // before it sees `notified == true` under the lock, which we write while holding the lock,
        // so the mutex and condvar stay valid until our guard is released (our last access).
        unsafe {
            // Release pairs with the waiter's Acquire `probe` / failed CAS; Acquire pairs with the
            // waiter's SLEEPING CAS, so seeing SLEEPING means the waiter will wait for `notified`.
            let old = (*this).state.swap(SET, Ordering::AcqRel);
            if old == SLEEPING {
                let mut notified = (*this).notified.lock().unwrap();
                *notified = true;
                (*this).cond.notify_all();
            }
        }
    }
}
