//! Batching: how many tasks go to a runner at once ([`BatchSize`]), and the adaptive rule behind
//! `BatchSize::Auto`.
//!
//! joblib's auto-batching (`AutoBatchingMixin`) starts at one task per batch, measures how long
//! batches take, and grows or shrinks the batch so each lasts between 0.2 s and 2 s (a process
//! pool pays milliseconds per dispatch). parjob dispatches to threads, which costs about a
//! microsecond, so it aims much lower: [`TARGET_BATCH_NS`]. Like joblib it starts at one task
//! (so slow tasks are spread one per worker from the first dispatch), then sizes each new batch
//! from the measured mean task duration; unlike joblib it measures run time only (not time spent
//! queued), jumps straight to the estimated size instead of doubling, and near the end of an input
//! of known length shrinks batches so the last ones finish together.

/// How many tasks each dispatch to a worker carries.
///
/// ```
/// use parjob::{delayed, BatchSize, Parallel};
/// let auto = Parallel::new().run((0..1000).map(|x| delayed(|x: u64| x * x)(x)));
/// let fixed = Parallel::new()
///     .batch_size(BatchSize::Fixed(16))
///     .run((0..1000).map(|x| delayed(|x: u64| x * x)(x)));
/// assert_eq!(auto, fixed);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BatchSize {
    /// Adapt to the measured task duration (joblib's `batch_size="auto"`), the default.
    #[default]
    Auto,
    /// Exactly `n` tasks per batch (the last one may be shorter); `n` must be at least 1.
    Fixed(usize),
}

/// What an automatically sized batch aims to last, in nanoseconds: long enough that the cost of a
/// dispatch (a lock, a queue push, a wake-up: about a microsecond) is under 1 %, short enough that
/// the last batches balance across workers and a cancel is noticed quickly.
pub(crate) const TARGET_BATCH_NS: f64 = 200_000.0;

/// Never more tasks than this in one automatic batch (bounds the batch buffer).
const MAX_AUTO_BATCH: usize = 1 << 20;

/// The dispatcher's batch-size state for one call.
pub(crate) struct Batcher {
    fixed: Option<usize>,
    /// Smoothed mean duration of one task, once measured.
    task_ns: Option<f64>,
    /// Timing totals already folded into `task_ns`.
    seen_tasks: u64,
    seen_ns: u64,
    current: usize,
}

impl Batcher {
    pub(crate) fn new(size: BatchSize) -> Self {
        let fixed = match size {
            BatchSize::Auto => None,
            BatchSize::Fixed(n) => Some(n.max(1)),
        };
        Batcher {
            fixed,
            task_ns: None,
            seen_tasks: 0,
            seen_ns: 0,
            current: fixed.unwrap_or(1),
        }
    }

    /// Folds in the runners' timing totals (tasks run, nanoseconds spent), read from shared counters.
    pub(crate) fn observe(&mut self, total_tasks: u64, total_ns: u64) {
        let tasks = total_tasks.saturating_sub(self.seen_tasks);
        if tasks == 0 {
            return;
        }
        let ns = total_ns.saturating_sub(self.seen_ns);
        self.seen_tasks = total_tasks;
        self.seen_ns = total_ns;
        let sample = ns as f64 / tasks as f64;
        // An exponentially weighted mean, as joblib's (0.8 old + 0.2 new), but quicker to react:
        // our samples are whole batches already.
        self.task_ns = Some(match self.task_ns {
            None => sample,
            Some(old) => 0.5 * old + 0.5 * sample,
        });
    }

    /// Expected duration of a batch of the current size, once measured.
    pub(crate) fn expected_batch_ns(&self) -> Option<f64> {
        self.task_ns.map(|t| t * self.current as f64)
    }

    /// The size of the next batch. `remaining`: tasks left in the input, if known; `runners`:
    /// threads that may run this call's batches.
    pub(crate) fn next_size(&mut self, remaining: Option<usize>, runners: usize) -> usize {
        if let Some(n) = self.fixed {
            return n;
        }
        if let Some(task_ns) = self.task_ns {
            let ideal = (TARGET_BATCH_NS / task_ns.max(0.1)) as usize;
            self.current = ideal.clamp(1, MAX_AUTO_BATCH);
        }
        let mut size = self.current;
        if let Some(left) = remaining {
            // The tail: smaller batches so the last ones end at about the same time.
            size = size.min((left / (2 * runners.max(1))).max(1));
        }
        size
    }
}

#[cfg(test)]
mod tests {
    use super::{BatchSize, Batcher, MAX_AUTO_BATCH, TARGET_BATCH_NS};

    #[test]
    fn auto_starts_at_one_task_then_aims_at_the_target_duration() {
        let mut b = Batcher::new(BatchSize::Auto);
        assert_eq!(b.next_size(None, 2), 1);
        assert_eq!(b.expected_batch_ns(), None);
        // 10 tasks of 1 µs each: the next batch should last about TARGET_BATCH_NS.
        b.observe(10, 10_000);
        let size = b.next_size(None, 2);
        assert_eq!(size, (TARGET_BATCH_NS / 1_000.0) as usize);
        assert_eq!(b.expected_batch_ns(), Some(size as f64 * 1_000.0));
        // The same totals again add nothing new.
        b.observe(10, 10_000);
        assert_eq!(b.next_size(None, 2), size);
    }

    #[test]
    fn auto_smooths_samples_and_is_bounded() {
        let mut b = Batcher::new(BatchSize::Auto);
        b.observe(1, 1_000);
        b.observe(2, 4_000); // a 3 µs sample: the mean moves halfway, to 2 µs
        assert_eq!(b.next_size(None, 1), (TARGET_BATCH_NS / 2_000.0) as usize);
        // Free tasks: capped.
        let mut fast = Batcher::new(BatchSize::Auto);
        fast.observe(1_000_000, 0);
        assert_eq!(fast.next_size(None, 1), MAX_AUTO_BATCH);
    }

    #[test]
    fn the_tail_shrinks_so_runners_finish_together() {
        let mut b = Batcher::new(BatchSize::Auto);
        b.observe(100, 100); // 1 ns per task: huge batches wanted
        assert_eq!(b.next_size(Some(1_000), 2), 250);
        assert_eq!(b.next_size(Some(3), 2), 1);
        assert_eq!(b.next_size(Some(0), 2), 1);
    }

    #[test]
    fn fixed_is_fixed() {
        let mut b = Batcher::new(BatchSize::Fixed(7));
        b.observe(10, 1_000_000_000);
        assert_eq!(b.next_size(Some(3), 4), 7);
        assert_eq!(b.expected_batch_ns(), Some(7.0 * 100_000_000.0));
    }
}
