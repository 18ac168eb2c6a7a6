//! Deliberately broken variants of the scheduler's protocols, for the loom models' broken twins.
//!
//! Each [`Mutant`] removes exactly one line of a protocol (a fence, a re-check, a wake-up);
//! `scripts/loom.sh` runs every model against its mutant and requires loom to fail it. A model whose
//! twin passed would prove nothing.
//!
//! **Which builds can be mutated.** Only a loom build with `--cfg parjob_mutants` compiles the
//! mutants' sites; in it, the environment variable `PARJOB_MUTANT` names the one mutant a process
//! runs (unset: none). In every other build, the plain `--cfg loom` build the models are checked
//! on included, [`active`] is the constant `false`, so the code loom proves is the code that
//! ships, with no mutant branch in it. One mutants build serves every twin: until round 11 each
//! mutant was its own `--cfg parjob_mutant="NAME"` build, and since `RUSTFLAGS` reach every crate,
//! each rebuilt loom and the crossbeam crates too (14 builds of 23–30 s in CI).

/// One protocol line removed. Chosen at run time in a `--cfg parjob_mutants` loom build (see the
/// module docs); each is tested at exactly one site in the scheduler.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[allow(dead_code)] // every variant is named at its site, but only mutants builds read them
pub(crate) enum Mutant {
    /// The sleeper announces itself but skips the `fence(SeqCst)` before re-checking the queues.
    SleepSkipsFence,
    /// The sleeper parks without re-checking the queues after announcing itself.
    SleepSkipsRecheck,
    /// A publisher skips the `fence(SeqCst)` between pushing work and reading the sleeper count.
    PublishSkipsFence,
    /// A latch owner parks without first marking its latch `SLEEPING` (`CoreLatch::fall_asleep`),
    /// so a setter does not know it must unpark the owner.
    LatchSkipsAnnounce,
    /// A stack job's result is published to the waiter with a `Relaxed` latch store.
    LatchSetRelaxed,
    /// `join` returns A's panic without waiting for a stolen B to finish.
    JoinSkipsWaitOnPanic,
    /// A scope task counts itself finished (and, if last, sets the scope's latch) before recording
    /// its panic, so the owner can return without it.
    ScopeCountsBeforePanic,
    /// Shutdown lets workers exit without draining the queues.
    ShutdownSkipsDrain,
    /// The last searcher to find work does not wake a sleeper (no hand-off).
    SearcherSkipsHandoff,
    /// A fork is published to thieves without the wake-up check that follows every publication.
    PublishSkipsNotify,
    /// A worker that moved a batch of injected jobs into its own deque skips the wake-up check.
    BatchSkipsNotify,
    /// A `Parallel` runner checks the cancel flag before registering as active
    /// (`parallel::cancel`).
    CancelCheckBeforeClaim,
    /// `Signal::notify` skips the `fence(SeqCst)` between the producer's state change and its read
    /// of the waiter's `waiting` flag (`src/pool/signal.rs`).
    SignalNotifySkipsFence,
    /// An outside `join` withdraws its offer with a load and a store instead of one
    /// compare-exchange (`src/pool/offers.rs`), so a worker's claim in between is missed.
    OfferWithdrawWithoutCas,
}

/// Every mutant under the name `PARJOB_MUTANT` and `scripts/loom.sh` use for it.
#[allow(dead_code)]
const NAMES: [(Mutant, &str); 14] = [
    (Mutant::SleepSkipsFence, "sleep_skips_fence"),
    (Mutant::SleepSkipsRecheck, "sleep_skips_recheck"),
    (Mutant::PublishSkipsFence, "publish_skips_fence"),
    (Mutant::LatchSkipsAnnounce, "latch_skips_announce"),
    (Mutant::LatchSetRelaxed, "latch_set_relaxed"),
    (Mutant::JoinSkipsWaitOnPanic, "join_skips_wait_on_panic"),
    (Mutant::ScopeCountsBeforePanic, "scope_counts_before_panic"),
    (Mutant::ShutdownSkipsDrain, "shutdown_skips_drain"),
    (Mutant::SearcherSkipsHandoff, "searcher_skips_handoff"),
    (Mutant::PublishSkipsNotify, "publish_skips_notify"),
    (Mutant::BatchSkipsNotify, "batch_skips_notify"),
    (Mutant::CancelCheckBeforeClaim, "cancel_check_before_claim"),
    (Mutant::SignalNotifySkipsFence, "signal_notify_skips_fence"),
    (
        Mutant::OfferWithdrawWithoutCas,
        "offer_withdraw_without_cas",
    ),
];

/// Whether this process runs `mutant`. The constant `false` outside `--cfg parjob_mutants` loom
/// builds, so the branch it guards folds away.
#[cfg(not(all(loom, parjob_mutants)))]
#[inline(always)]
pub(crate) const fn active(_mutant: Mutant) -> bool {
    false
}

/// Whether this process runs `mutant` (`PARJOB_MUTANT`, read once).
#[cfg(all(loom, parjob_mutants))]
pub(crate) fn active(mutant: Mutant) -> bool {
    selected().is_some_and(|(selected, _)| selected == mutant)
}

/// The mutant `PARJOB_MUTANT` names, with its name, read once per process. A name that is no
/// mutant panics: a misspelt twin must not run as the unmutated code and "pass".
#[cfg(all(loom, parjob_mutants))]
fn selected() -> Option<(Mutant, &'static str)> {
    // A std `OnceLock`, not the facade's: this is configuration, read before any model runs and
    // identical in every execution, not part of a protocol loom should explore.
    static SELECTED: std::sync::OnceLock<Option<(Mutant, &'static str)>> =
        std::sync::OnceLock::new();
    *SELECTED.get_or_init(|| {
        let name = std::env::var("PARJOB_MUTANT").ok()?;
        let found = NAMES.iter().find(|(_, known)| *known == name).copied();
        Some(found.unwrap_or_else(|| {
            let known: Vec<&str> = NAMES.iter().map(|(_, n)| *n).collect();
            panic!("PARJOB_MUTANT={name:?} names no mutant; known: {known:?}")
        }))
    })
}

/// The name of the mutant this process runs, if any (for the models' banners).
#[allow(dead_code)]
pub(crate) fn selected_name() -> Option<&'static str> {
    #[cfg(all(loom, parjob_mutants))]
    return selected().map(|(_, name)| name);
    #[cfg(not(all(loom, parjob_mutants)))]
    None
}

/// Whether this build compiles the mutants' sites (`--cfg parjob_mutants`).
#[allow(dead_code)]
pub(crate) const COMPILED: bool = cfg!(all(loom, parjob_mutants));
