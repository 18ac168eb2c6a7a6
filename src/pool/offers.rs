//! Outside offers: how a `join` called from outside the pool hands its second half to the workers
//! without going through the injector.
//!
//! The caller of an outside `join` runs A itself and only *offers* B: it stores a pointer to B's
//! `JobRef` (which lives in its own frame) into one of a few slots. A searching worker that sees a
//! non-empty slot claims it with a compare-exchange to null and runs B; the caller, once A is
//! done, withdraws its offer with the same compare-exchange. The slot's modification order picks
//! exactly one winner, so B runs exactly once, and the caller leaves its frame only after it won
//! (B was never touched) or after B's latch was set by the worker that won.
//!
//! Why not the injector: a queued job cannot be taken back, so every reclaimed B used to stay in
//! the injector as a dead ticket that a worker had to pop, reference-count and drop, and each such
//! pop counted as "found work" for the sleep protocol (ending the worker's search and handing it
//! on). A withdrawn offer leaves nothing behind: an outside `join` of two short closures touches
//! one slot twice and the sleep counters once, and a worker sees only offers still on the table.
//! The injector (with its ticket) remains the fallback when every slot is taken.

use super::job::JobRef;
use crate::sync::mutant::{self, Mutant};
use crate::sync::{AtomicPtr, Ordering};
use crossbeam_utils::CachePadded;
use std::ptr;

/// Offers that can be on the table at once; the callers beyond these use the injector. Each slot
/// is a cache-padded word that idle workers poll, so the count is small. Under loom, one: every slot
/// runs the same protocol, and each extra atomic load a worker's search makes multiplies the
/// interleavings of every model that drives a pool.
const OFFER_SLOTS: usize = if cfg!(loom) { 1 } else { 4 };

/// The offer slots of one pool (see the module docs).
pub(crate) struct OutsideOffers {
    /// Null, or a pointer to an offered job's `JobRef` in its caller's frame.
    slots: [CachePadded<AtomicPtr<JobRef>>; OFFER_SLOTS],
}

/// Where an offer was placed, to withdraw it.
pub(crate) struct Offer {
    slot: usize,
    job: *mut JobRef,
}

impl OutsideOffers {
    pub(crate) fn new() -> Self {
        OutsideOffers {
            slots: std::array::from_fn(|_| CachePadded::new(AtomicPtr::new(ptr::null_mut()))),
        }
    }

    /// Puts `job` on the table, or returns `None` if every slot is taken.
    ///
    /// # Safety
    /// Until the offer is withdrawn ([`withdraw`](Self::withdraw) returned `true`) or the job has
    /// finished (its latch is set), `job` must stay at this address, unchanged, and the job it
    /// refers to must stay valid: a worker may claim it and execute it at any moment.
    #[inline]
    pub(crate) unsafe fn offer(&self, job: &JobRef) -> Option<Offer> {
        // Only ever read through (by the worker that claims it); `AtomicPtr` wants `*mut`.
        let job = (job as *const JobRef).cast_mut();
        // Concurrent outside callers start at different slots (their frames are on different
        // stacks, about 2 MiB apart): the top bits of a multiplicative hash of the frame address
        // depend on all of its bits, so neighbouring stacks spread over the slots.
        // (`checked_shr`: with one slot, under loom, the shift would be 64 bits.)
        let start = (job as usize as u64)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .checked_shr(64 - OFFER_SLOTS.trailing_zeros())
            .unwrap_or(0) as usize;
        for step in 0..OFFER_SLOTS {
            let slot = &self.slots[(start + step) % OFFER_SLOTS];
            // A read first: a taken slot costs a shared read, not a read-for-ownership.
            if !slot.load(Ordering::Relaxed).is_null() {
                continue;
            }
            // Release pairs with a claiming worker's Acquire compare-exchange: the worker that
            // takes the pointer sees the `JobRef` behind it and the job it refers to.
            if slot
                .compare_exchange(ptr::null_mut(), job, Ordering::Release, Ordering::Relaxed)
                .is_ok()
            {
                return Some(Offer {
                    slot: (start + step) % OFFER_SLOTS,
                    job,
                });
            }
        }
        None
    }

    /// Takes `offer` back. `true`: no worker claimed it, and none ever will (the job is the
    /// caller's again). `false`: a worker claimed it; the caller must wait for the job's latch.
    #[inline]
    pub(crate) fn withdraw(&self, offer: Offer) -> bool {
        let slot = &self.slots[offer.slot];
        if mutant::active(Mutant::OfferWithdrawWithoutCas) {
            // Broken twin: read, then clear. A worker's claim between the two is missed, and the
            // job runs twice.
            let still_ours = slot.load(Ordering::Acquire) == offer.job;
            if still_ours {
                crate::sync::thread::yield_now();
                slot.store(ptr::null_mut(), Ordering::Relaxed);
            }
            return still_ours;
        }
        // One compare-exchange against the workers' claims on the same slot: the modification
        // order makes exactly one of them succeed. Relaxed suffices for that decision; what the
        // worker did with the job reaches the caller through the job's latch (Release/Acquire).
        slot.compare_exchange(
            offer.job,
            ptr::null_mut(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        )
        .is_ok()
    }

    /// A worker takes one offer off the table, if there is any, looking from slot `start`
    /// (its own index: searching workers spread over the slots instead of all contending for the
    /// first one).
    #[inline]
    pub(crate) fn claim(&self, start: usize) -> Option<JobRef> {
        for step in 0..OFFER_SLOTS {
            let slot = &self.slots[(start + step) % OFFER_SLOTS];
            let seen = slot.load(Ordering::Relaxed);
            if seen.is_null() {
                continue;
            }
            // Acquire pairs with the offering caller's Release compare-exchange in `offer`.
            if let Ok(job) =
                slot.compare_exchange(seen, ptr::null_mut(), Ordering::Acquire, Ordering::Relaxed)
            {
                // SAFETY: `job` is the pointer our compare-exchange removed from the slot (the
                // value the slot held, with the provenance its offering caller stored, not the
                // one our earlier load returned: if that caller withdrew its offer and offered
                // again from the same address, or a new thread's frame reuses a dead one's
                // address, the earlier load's pointer belongs to a frame that is gone). It was on
                // offer when we removed it, so its caller has not withdrawn it and never will (its
                // own compare-exchange will fail), and by `offer`'s contract the `JobRef` stays at
                // this address, unchanged, until the job's latch is set, which only the execution
                // we are about to start does.
                return Some(unsafe { *job });
            }
        }
        None
    }

    /// Is anything on offer? (For the sleepers' re-check: an offer is work a worker may take.)
    #[inline]
    pub(crate) fn any(&self) -> bool {
        self.slots
            .iter()
            .any(|slot| !slot.load(Ordering::Relaxed).is_null())
    }
}
