//! Loom models of parjob's scheduler protocols. The models are in `tests/`, one file per protocol;
//! this library holds what they share. Everything is `cfg(loom)`: without
//! `RUSTFLAGS="--cfg loom"` the crate and its tests compile to nothing, so `cargo test --workspace`
//! is unaffected. Run them with `scripts/loom.sh` (which also runs every broken twin).

#![cfg(loom)]

use parjob::__loom;
use std::sync::Once;

/// Runs `f` under loom with the preemption bound `bound`, unless `LOOM_MAX_PREEMPTIONS` is set,
/// and with `LOOM_MAX_BRANCHES` (default here: 10 000) for the models whose threads spin.
pub fn model<F: Fn() + Sync + Send + 'static>(name: &str, bound: usize, f: F) {
    quiet_expected_panics();
    // A twin run on a build without the mutants' sites would check the unmutated code and pass.
    assert!(
        std::env::var_os("PARJOB_MUTANT").is_none() || __loom::mutants_compiled(),
        "PARJOB_MUTANT is set, but this build has no mutant sites: build the twins with \
         RUSTFLAGS=\"--cfg loom --cfg parjob_mutants\""
    );
    let mut builder = loom::model::Builder::new();
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        builder.preemption_bound = Some(bound);
    }
    if std::env::var_os("LOOM_MAX_BRANCHES").is_none() {
        builder.max_branches = 10_000;
    }
    eprintln!(
        "model {name}: preemption bound {:?}, mutant {}",
        builder.preemption_bound,
        __loom::mutant().unwrap_or("none")
    );
    let started = std::time::Instant::now();
    let iterations = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = iterations.clone();
    builder.check(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f()
    });
    eprintln!(
        "model {name}: passed, {} iterations in {:.2?}",
        iterations.load(std::sync::atomic::Ordering::Relaxed),
        started.elapsed()
    );
}

/// Panics the models provoke on purpose carry this prefix; the hook keeps them out of the output.
pub const EXPECTED: &str = "expected panic";

fn quiet_expected_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let msg = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(|s| s.as_str()));
            if msg.is_some_and(|m| m.starts_with(EXPECTED)) {
                return;
            }
            default(info)
        }));
    });
}

/// A pool of `n` workers that parks as soon as a search fails (the loom default).
pub fn pool(n: usize, share: parjob::SharePolicy) -> parjob::ThreadPool {
    parjob::ThreadPoolBuilder::new()
        .num_threads(n)
        .share_policy(share)
        .spin_rounds(0)
        .build()
        .expect("loom pool")
}

/// [`pool`], with loom's exploration switched off while the workers start (`Registry::new` waits
/// until each has registered): the start-up handshake is then one fixed interleaving, and the
/// model explores only what happens after `build` returns, wherever the workers are by then.
/// Used by the 3-thread models, whose start-up interleavings would otherwise dominate.
pub fn started_pool(n: usize, share: parjob::SharePolicy) -> parjob::ThreadPool {
    loom::stop_exploring();
    let pool = pool(n, share);
    loom::explore();
    pool
}
