//! Deliberately broken variants of the scheduler's protocols, for the loom models' broken twins.
//!
//! Each constant is `true` only in a loom build with `--cfg parjob_mutant="NAME"`, so no ordinary
//! build can ever be mutated. Each removes exactly one line of a protocol (a fence or a re-check);
//! `scripts/loom.sh` runs every model against its mutant and requires loom to fail it. A model whose
//! twin passed would prove nothing.

/// The sleeper announces itself but skips the `fence(SeqCst)` before re-checking the queues.
pub(crate) const SLEEP_SKIPS_FENCE: bool = cfg!(all(loom, parjob_mutant = "sleep_skips_fence"));
/// The sleeper parks without re-checking the queues after announcing itself.
pub(crate) const SLEEP_SKIPS_RECHECK: bool = cfg!(all(loom, parjob_mutant = "sleep_skips_recheck"));
/// A publisher skips the `fence(SeqCst)` between pushing work and reading the sleeper count.
pub(crate) const PUBLISH_SKIPS_FENCE: bool = cfg!(all(loom, parjob_mutant = "publish_skips_fence"));
/// A latch owner parks without first marking its latch `SLEEPING` (`CoreLatch::fall_asleep`), so
/// a setter does not know it must unpark the owner.
pub(crate) const LATCH_SKIPS_ANNOUNCE: bool =
    cfg!(all(loom, parjob_mutant = "latch_skips_announce"));
/// A stack job's result is published to the waiter with a `Relaxed` latch store.
pub(crate) const LATCH_SET_RELAXED: bool = cfg!(all(loom, parjob_mutant = "latch_set_relaxed"));
/// `join` returns A's panic without waiting for a stolen B to finish.
pub(crate) const JOIN_SKIPS_WAIT_ON_PANIC: bool =
    cfg!(all(loom, parjob_mutant = "join_skips_wait_on_panic"));
/// A scope task counts itself finished (and, if last, sets the scope's latch) before recording its
/// panic, so the owner can return without it.
pub(crate) const SCOPE_COUNTS_BEFORE_PANIC: bool =
    cfg!(all(loom, parjob_mutant = "scope_counts_before_panic"));
/// Shutdown lets workers exit without draining the queues.
pub(crate) const SHUTDOWN_SKIPS_DRAIN: bool =
    cfg!(all(loom, parjob_mutant = "shutdown_skips_drain"));
/// The last searcher to find work does not wake a sleeper (no hand-off).
pub(crate) const SEARCHER_SKIPS_HANDOFF: bool =
    cfg!(all(loom, parjob_mutant = "searcher_skips_handoff"));
/// A fork is published to thieves without the wake-up check that follows every publication.
pub(crate) const PUBLISH_SKIPS_NOTIFY: bool =
    cfg!(all(loom, parjob_mutant = "publish_skips_notify"));
/// A worker that moved a batch of injected jobs into its own deque skips the wake-up check.
pub(crate) const BATCH_SKIPS_NOTIFY: bool = cfg!(all(loom, parjob_mutant = "batch_skips_notify"));
/// A `Parallel` runner checks the cancel flag before registering as active (`parallel::cancel`).
pub(crate) const CANCEL_CHECK_BEFORE_CLAIM: bool =
    cfg!(all(loom, parjob_mutant = "cancel_check_before_claim"));

/// `Signal::notify` skips the `fence(SeqCst)` between the producer's state change and its read of
/// the waiter's `waiting` flag (`src/pool/signal.rs`).
pub(crate) const SIGNAL_NOTIFY_SKIPS_FENCE: bool =
    cfg!(all(loom, parjob_mutant = "signal_notify_skips_fence"));

/// An outside `join` withdraws its offer with a load and a store instead of one
/// compare-exchange (`src/pool/offers.rs`), so a worker's claim in between is missed.
pub(crate) const OFFER_WITHDRAW_WITHOUT_CAS: bool =
    cfg!(all(loom, parjob_mutant = "offer_withdraw_without_cas"));

/// The mutant this build was compiled with, if any (for the models' banners and `scripts/loom.sh`).
#[allow(dead_code)]
pub(crate) const ACTIVE: Option<&str> = {
    const ALL: [(bool, &str); 14] = [
        (SLEEP_SKIPS_FENCE, "sleep_skips_fence"),
        (SLEEP_SKIPS_RECHECK, "sleep_skips_recheck"),
        (PUBLISH_SKIPS_FENCE, "publish_skips_fence"),
        (LATCH_SKIPS_ANNOUNCE, "latch_skips_announce"),
        (LATCH_SET_RELAXED, "latch_set_relaxed"),
        (JOIN_SKIPS_WAIT_ON_PANIC, "join_skips_wait_on_panic"),
        (SCOPE_COUNTS_BEFORE_PANIC, "scope_counts_before_panic"),
        (SHUTDOWN_SKIPS_DRAIN, "shutdown_skips_drain"),
        (SEARCHER_SKIPS_HANDOFF, "searcher_skips_handoff"),
        (PUBLISH_SKIPS_NOTIFY, "publish_skips_notify"),
        (CANCEL_CHECK_BEFORE_CLAIM, "cancel_check_before_claim"),
        (BATCH_SKIPS_NOTIFY, "batch_skips_notify"),
        (SIGNAL_NOTIFY_SKIPS_FENCE, "signal_notify_skips_fence"),
        (OFFER_WITHDRAW_WITHOUT_CAS, "offer_withdraw_without_cas"),
    ];
    let mut i = 0;
    let mut found = None;
    while i < ALL.len() {
        if ALL[i].0 {
            found = Some(ALL[i].1);
        }
        i += 1;
    }
    found
};
