//! Whether handing tasks to other runners pays, measured by the driver on its own thread.
//!
//! The driver is the only thread that touches the input. Per task it either runs the task
//! straight from the input (`S` ns, in [`Engine::run_from_input`](super::Engine::run_from_input))
//! or pulls it into a batch buffer for another runner (`D` ns, in `refill`: the pull, the buffer,
//! the queue and the tokens). Say a fraction `x` of `N` tasks runs on the driver and `k` other
//! runners share the rest at `W` ns per task. When both sides finish together,
//! `x·S + (1−x)·D = (1−x)·W/k`, so the call takes `N·(W/k)·S / (S + W/k − D)`; the driver alone
//! would take `N·S`. Handing off is faster exactly when `D < S`, whatever `W` and `k` are (and if
//! the others outpace the driver, `W/k < D`, the call takes `N·D`: again faster only if `D < S`).
//!
//! `D ≥ S` happens when tasks cost about as little as moving them: `sqrt` over a recycled output
//! through the joblib spelling measured `D` ≈ 2 ns and `S` ≈ 1.5 ns (the buffer's cache lines
//! travel between cores twice per task), and the call took 0.75–0.8× the plain loop's time on 2
//! threads. Then the driver stops pulling for others and runs the input itself; it hands off
//! again when `S` grows past the last `D` measured, or when a refill made now and then to measure
//! `D` again finds pulling cheaper than running.

/// Samples of fewer tasks are ignored: their per-batch costs (a lock, a timer read, a token)
/// would swamp the per-task cost, and the first batches of every `Auto` call hold one task. Tasks
/// slow enough to come in smaller batches (about 1 µs or more at the batcher's 200 µs target) are
/// never run alone on this rule's account.
const MIN_SAMPLE_TASKS: usize = 256;

/// While the driver runs the input alone, one refill in this many hands off one batch anyway, so
/// that the cost of pulling is measured again (it may have been measured while the caches were cold or
/// another program held a core) and the call goes back to handing off if it pays now.
const REMEASURE_EVERY: u32 = 64;

/// What a refill may pull for other runners ([`HandOffCost::allowance`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pull {
    AsTheWindowAllows,
    OneBatch,
    Nothing,
}

/// The driver's per-task costs, each a running mean over samples of at least
/// [`MIN_SAMPLE_TASKS`] tasks.
#[derive(Debug, Default)]
pub(super) struct HandOffCost {
    pull_ns: Option<f64>,
    run_ns: Option<f64>,
    /// Refills skipped since handing off last stopped paying (or was last measured).
    skipped: u32,
}

impl HandOffCost {
    /// The driver pulled `tasks` tasks for other runners in `ns` nanoseconds. A sample in which
    /// a batch buffer was freshly allocated is not counted: its first writes fault its pages in,
    /// a cost paid once per buffer, not per task (buffers are recycled).
    pub(super) fn pulled(&mut self, tasks: usize, ns: u64, fresh_buffer: bool) {
        if !fresh_buffer {
            Self::fold(&mut self.pull_ns, tasks, ns);
        }
    }

    /// How much may this refill pull for other runners? As much as the window allows while that
    /// pays; when it does not, nothing, except one batch every [`REMEASURE_EVERY`] refills.
    pub(super) fn allowance(&mut self) -> Pull {
        if self.pays() {
            self.skipped = 0;
            return Pull::AsTheWindowAllows;
        }
        self.skipped += 1;
        if self.skipped >= REMEASURE_EVERY {
            self.skipped = 0;
            return Pull::OneBatch;
        }
        Pull::Nothing
    }

    /// The driver ran `tasks` tasks straight from the input in `ns` nanoseconds.
    pub(super) fn ran(&mut self, tasks: usize, ns: u64) {
        Self::fold(&mut self.run_ns, tasks, ns);
    }

    fn fold(mean: &mut Option<f64>, tasks: usize, ns: u64) {
        if tasks < MIN_SAMPLE_TASKS {
            return;
        }
        let sample = ns as f64 / tasks as f64;
        *mean = Some(mean.map_or(sample, |old| 0.5 * old + 0.5 * sample));
    }

    /// Is pulling a task for another runner cheaper than running it here? `true` until both
    /// costs are measured.
    pub(super) fn pays(&self) -> bool {
        match (self.pull_ns, self.run_ns) {
            (Some(pull), Some(run)) => pull < run,
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{HandOffCost, Pull, MIN_SAMPLE_TASKS, REMEASURE_EVERY};

    #[test]
    fn pays_until_both_costs_are_measured() {
        let mut cost = HandOffCost::default();
        assert!(cost.pays());
        cost.pulled(10_000, 30_000, false); // 3 ns per task pulled
        assert!(cost.pays(), "nothing run on the driver yet");
        cost.ran(10_000, 40_000); // 4 ns per task run: pulling is cheaper
        assert!(cost.pays());
    }

    #[test]
    fn stops_when_pulling_costs_more_than_running_and_resumes_when_tasks_grow() {
        let mut cost = HandOffCost::default();
        cost.pulled(16_384, 32_768, false); // 2 ns
        cost.ran(16_384, 24_576); // 1.5 ns
        assert!(!cost.pays());
        // Tasks get slower: the mean moves halfway per sample, past 2 ns after one 3 ns sample.
        cost.ran(16_384, 49_152);
        assert!(cost.pays());
    }

    #[test]
    fn small_samples_are_ignored() {
        let mut cost = HandOffCost::default();
        // One-task probe batches: per-batch costs make pulling look expensive.
        cost.pulled(1, 5_000, false);
        cost.ran(MIN_SAMPLE_TASKS - 1, 100);
        // A fresh buffer's page faults are not a per-task cost.
        cost.pulled(16_384, 16_384 * 20, true);
        assert!(cost.pays());
        assert_eq!((cost.pull_ns, cost.run_ns), (None, None));
    }

    #[test]
    fn while_it_does_not_pay_one_refill_in_so_many_measures_again() {
        let mut cost = HandOffCost::default();
        assert_eq!(cost.allowance(), Pull::AsTheWindowAllows);
        cost.pulled(16_384, 16_384 * 3, false); // 3 ns
        cost.ran(16_384, 16_384); // 1 ns
        let pulls: Vec<Pull> = (0..2 * REMEASURE_EVERY).map(|_| cost.allowance()).collect();
        let expected: Vec<Pull> = (1..=2 * REMEASURE_EVERY)
            .map(|k| match k % REMEASURE_EVERY {
                0 => Pull::OneBatch,
                _ => Pull::Nothing,
            })
            .collect();
        assert_eq!(pulls, expected);
        // The new measurement says pulling got cheap (the mean moves halfway: 3 -> 1.5 -> 0.75 ns).
        cost.pulled(16_384, 0, false);
        cost.pulled(16_384, 0, false);
        assert_eq!(cost.allowance(), Pull::AsTheWindowAllows);
    }
}
