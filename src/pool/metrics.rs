//! Scheduler counters, per worker, and the public snapshot types.
//!
//! Each counter is written by exactly one thread (its worker; `wakeups_sent` by whoever wakes), with
//! a relaxed load and store rather than a read-modify-write: no `lock` prefix on the hot path, and
//! each worker's block is cache-padded so workers never share a line. A snapshot reads them with
//! relaxed loads, so it is a consistent view of each counter, not of the set: take it when the pool
//! is quiet if you need the columns to add up exactly.
//!
//! These atomics bypass the `sync` facade on purpose: they are observations, not part of a protocol,
//! and loom does not need to interleave them.

use crossbeam_utils::CachePadded;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Live counters of one worker. Single writer per field except `wakeups_sent` (an RMW).
#[derive(Default)]
pub(crate) struct WorkerCounters {
    tasks_executed: AtomicU64,
    local_pops: AtomicU64,
    steals: AtomicU64,
    injector_pops: AtomicU64,
    failed_steals: AtomicU64,
    sleeps: AtomicU64,
    wakeups: AtomicU64,
    wakeups_sent: AtomicU64,
    publishes: AtomicU64,
    /// Time spent looking for work without finding it, and parked (ns).
    searching_ns: AtomicU64,
    sleeping_ns: AtomicU64,
    /// When the worker started, in ns since the pool's epoch.
    started_ns: AtomicU64,
    /// Core this worker was pinned to, plus one (0 = not pinned).
    core_plus_one: AtomicUsize,
}

#[inline]
fn bump(counter: &AtomicU64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Relaxed,
    );
}

impl WorkerCounters {
    #[inline]
    pub(crate) fn bump_tasks_executed(&self) {
        bump(&self.tasks_executed)
    }
    #[inline]
    pub(crate) fn bump_local_pops(&self) {
        bump(&self.local_pops)
    }
    #[inline]
    pub(crate) fn bump_steals(&self) {
        bump(&self.steals)
    }
    #[inline]
    pub(crate) fn bump_injector_pops(&self) {
        bump(&self.injector_pops)
    }
    #[inline]
    pub(crate) fn bump_failed_steals(&self) {
        bump(&self.failed_steals)
    }
    #[inline]
    pub(crate) fn bump_sleeps(&self) {
        bump(&self.sleeps)
    }
    #[inline]
    pub(crate) fn bump_wakeups(&self) {
        bump(&self.wakeups)
    }
    #[inline]
    pub(crate) fn bump_publishes(&self) {
        bump(&self.publishes)
    }
    /// Several threads may wake others on behalf of one counter block, so this one is an RMW.
    #[inline]
    pub(crate) fn bump_wakeups_sent(&self) {
        self.wakeups_sent.fetch_add(1, Ordering::Relaxed);
    }
    #[inline]
    pub(crate) fn add_searching_ns(&self, ns: u64) {
        self.searching_ns.store(
            self.searching_ns.load(Ordering::Relaxed) + ns,
            Ordering::Relaxed,
        );
    }
    #[inline]
    pub(crate) fn add_sleeping_ns(&self, ns: u64) {
        self.sleeping_ns.store(
            self.sleeping_ns.load(Ordering::Relaxed) + ns,
            Ordering::Relaxed,
        );
    }
    pub(crate) fn set_started_ns(&self, ns: u64) {
        self.started_ns.store(ns, Ordering::Relaxed);
    }
    pub(crate) fn set_core(&self, core: usize) {
        self.core_plus_one.store(core + 1, Ordering::Relaxed);
    }

    fn snapshot(&self, now_ns: u64) -> WorkerMetrics {
        let core = self.core_plus_one.load(Ordering::Relaxed);
        let searching_ns = self.searching_ns.load(Ordering::Relaxed);
        let sleeping_ns = self.sleeping_ns.load(Ordering::Relaxed);
        let alive_ns = now_ns.saturating_sub(self.started_ns.load(Ordering::Relaxed));
        WorkerMetrics {
            tasks_executed: self.tasks_executed.load(Ordering::Relaxed),
            local_pops: self.local_pops.load(Ordering::Relaxed),
            steals: self.steals.load(Ordering::Relaxed),
            injector_pops: self.injector_pops.load(Ordering::Relaxed),
            failed_steals: self.failed_steals.load(Ordering::Relaxed),
            sleeps: self.sleeps.load(Ordering::Relaxed),
            wakeups: self.wakeups.load(Ordering::Relaxed),
            wakeups_sent: self.wakeups_sent.load(Ordering::Relaxed),
            publishes: self.publishes.load(Ordering::Relaxed),
            busy: Duration::from_nanos(alive_ns.saturating_sub(searching_ns + sleeping_ns)),
            searching: Duration::from_nanos(searching_ns),
            sleeping: Duration::from_nanos(sleeping_ns),
            core: core.checked_sub(1),
        }
    }
}

/// A lock-free histogram of latencies with power-of-two buckets (bucket `i` holds values below
/// `2^i` ns), plus the exact maximum.
pub(crate) struct LatencyHistogram {
    buckets: [AtomicU64; 64],
    max: AtomicU64,
}

impl LatencyHistogram {
    pub(crate) fn new() -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            max: AtomicU64::new(0),
        }
    }

    pub(crate) fn record(&self, ns: u64) {
        let bucket = (64 - ns.leading_zeros()) as usize;
        self.buckets[bucket.min(63)].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(ns, Ordering::Relaxed);
    }

    fn summary(&self) -> LatencySummary {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let count: u64 = counts.iter().sum();
        let max_ns = self.max.load(Ordering::Relaxed);
        let quantile = |q: f64| -> u64 {
            if count == 0 {
                return 0;
            }
            let rank = ((count as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    // Upper bound of bucket i, but never above the exact maximum.
                    let upper = if i >= 63 {
                        u64::MAX
                    } else {
                        (1u64 << i).saturating_sub(1)
                    };
                    return upper.min(max_ns);
                }
            }
            max_ns
        };
        LatencySummary {
            count,
            p50_ns: quantile(0.5),
            p99_ns: quantile(0.99),
            max_ns,
        }
    }
}

/// Percentiles of a latency distribution (see [`Metrics::wake_latency`]).
///
/// `p50_ns` and `p99_ns` are upper bounds: the top of the power-of-two bucket the percentile falls
/// in (so they may read up to 2× the true value), capped by the exact `max_ns`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Median (upper bound of its bucket), in nanoseconds.
    pub p50_ns: u64,
    /// 99th percentile (upper bound of its bucket), in nanoseconds.
    pub p99_ns: u64,
    /// Largest sample, in nanoseconds.
    pub max_ns: u64,
}

/// The counters of every worker of a pool, plus one block for threads outside the pool.
pub(crate) struct PoolCounters {
    workers: Box<[CachePadded<WorkerCounters>]>,
    outside: CachePadded<WorkerCounters>,
    /// Unpark requested → the woken worker running again.
    pub(crate) wake_latency: LatencyHistogram,
    /// Job injected from outside the pool → a worker starts it (feature `trace` only).
    pub(crate) inject_latency: LatencyHistogram,
    pub(crate) epoch: Instant,
}

impl PoolCounters {
    pub(crate) fn new(num_workers: usize) -> Self {
        PoolCounters {
            workers: (0..num_workers)
                .map(|_| CachePadded::new(WorkerCounters::default()))
                .collect(),
            outside: CachePadded::new(WorkerCounters::default()),
            wake_latency: LatencyHistogram::new(),
            inject_latency: LatencyHistogram::new(),
            epoch: Instant::now(),
        }
    }
    #[inline]
    pub(crate) fn worker(&self, index: usize) -> &WorkerCounters {
        &self.workers[index]
    }
    /// Counters charged to threads outside the pool (only `wakeups_sent` moves there).
    #[inline]
    pub(crate) fn outside(&self) -> &WorkerCounters {
        &self.outside
    }
    pub(crate) fn snapshot(&self) -> Metrics {
        let now = now_ns(self.epoch);
        Metrics {
            workers: self.workers.iter().map(|w| w.snapshot(now)).collect(),
            wake_latency: self.wake_latency.summary(),
            inject_latency: self.inject_latency.summary(),
        }
    }
}

/// Counters of one worker thread, as of a [`Metrics`] snapshot.
///
/// Every counter starts at 0 when the pool is built and only grows (it is never reset); take two
/// snapshots and subtract to measure one piece of work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerMetrics {
    /// Jobs this worker took from a queue (its own deque, the injector, a peer) and ran. The second
    /// half of a `join` that the forking worker runs inline never enters a queue and is not counted:
    /// counting it would cost a store per `join`.
    pub tasks_executed: u64,
    /// Jobs popped from this worker's own deque.
    pub local_pops: u64,
    /// Jobs stolen from a peer's deque.
    pub steals: u64,
    /// Jobs from outside the pool: taken from the pool's injector, or the second half of an
    /// outside `join` claimed from its offer slot.
    pub injector_pops: u64,
    /// Steal rounds over every peer that came back empty-handed.
    pub failed_steals: u64,
    /// Times this worker parked its thread.
    pub sleeps: u64,
    /// Times this worker came back from parking.
    pub wakeups: u64,
    /// Times this worker woke a sleeping peer because it published work or handed off searching.
    pub wakeups_sent: u64,
    /// Forks this worker made stealable (with the lazy share policy, only when a thief was hungry).
    pub publishes: u64,
    /// Time since the worker started that it was neither searching nor sleeping: running jobs,
    /// and the scheduler's own bookkeeping between them.
    pub busy: Duration,
    /// Time spent looking for work (and spinning) without finding any.
    pub searching: Duration,
    /// Time spent parked (from announcing sleep to running again).
    pub sleeping: Duration,
    /// The core this worker was pinned to, if the pool was built with `pin_threads(true)`.
    pub core: Option<usize>,
}

impl WorkerMetrics {
    fn add(&mut self, other: &WorkerMetrics) {
        self.tasks_executed += other.tasks_executed;
        self.local_pops += other.local_pops;
        self.steals += other.steals;
        self.injector_pops += other.injector_pops;
        self.failed_steals += other.failed_steals;
        self.sleeps += other.sleeps;
        self.wakeups += other.wakeups;
        self.wakeups_sent += other.wakeups_sent;
        self.publishes += other.publishes;
        self.busy += other.busy;
        self.searching += other.searching;
        self.sleeping += other.sleeping;
    }

    /// Counter-wise difference `self - earlier` (saturating), to measure one piece of work.
    ///
    /// ```
    /// let pool = parjob::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    /// let before = pool.metrics().totals();
    /// pool.install(|| parjob::join(|| 1, || 2));
    /// let delta = pool.metrics().totals().since(&before);
    /// assert!(delta.tasks_executed >= 1); // at least the `install` job itself
    /// ```
    pub fn since(&self, earlier: &WorkerMetrics) -> WorkerMetrics {
        WorkerMetrics {
            tasks_executed: self.tasks_executed.saturating_sub(earlier.tasks_executed),
            local_pops: self.local_pops.saturating_sub(earlier.local_pops),
            steals: self.steals.saturating_sub(earlier.steals),
            injector_pops: self.injector_pops.saturating_sub(earlier.injector_pops),
            failed_steals: self.failed_steals.saturating_sub(earlier.failed_steals),
            sleeps: self.sleeps.saturating_sub(earlier.sleeps),
            wakeups: self.wakeups.saturating_sub(earlier.wakeups),
            wakeups_sent: self.wakeups_sent.saturating_sub(earlier.wakeups_sent),
            publishes: self.publishes.saturating_sub(earlier.publishes),
            busy: self.busy.saturating_sub(earlier.busy),
            searching: self.searching.saturating_sub(earlier.searching),
            sleeping: self.sleeping.saturating_sub(earlier.sleeping),
            core: self.core,
        }
    }
}

/// A snapshot of a pool's scheduler counters ([`ThreadPool::metrics`](crate::ThreadPool::metrics)).
///
/// ```
/// let pool = parjob::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
/// pool.install(|| (0..100).map(|i| parjob::join(|| i, || i).0).sum::<i32>());
/// let metrics = pool.metrics();
/// assert_eq!(metrics.workers().len(), 2);
/// println!("{metrics}"); // a table, one row per worker
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metrics {
    workers: Vec<WorkerMetrics>,
    wake_latency: LatencySummary,
    inject_latency: LatencySummary,
}

impl Metrics {
    /// One entry per worker, indexed like [`current_thread_index`](crate::current_thread_index).
    pub fn workers(&self) -> &[WorkerMetrics] {
        &self.workers
    }

    /// Wake-up latency: from a waker's `unpark` request to the woken worker running again, over
    /// every wake-up since the pool was built. Always recorded (it costs a clock read per wake-up,
    /// and wake-ups are already expensive).
    pub fn wake_latency(&self) -> LatencySummary {
        self.wake_latency
    }

    /// Start latency of work injected from outside the pool (`install`, `Parallel` batches, an
    /// outside `join` whose offer slots were all taken): from the push into the injector to a
    /// worker starting it (an outside `join`'s half claimed from an offer slot is not timed: the
    /// caller may take it back at any moment, and usually does). Recorded only
    /// with the cargo feature `trace` (it costs two clock reads per injected job); all zeros
    /// without it.
    pub fn inject_latency(&self) -> LatencySummary {
        self.inject_latency
    }

    /// The sum over all workers (`core` is `None`).
    pub fn totals(&self) -> WorkerMetrics {
        let mut total = WorkerMetrics::default();
        for w in &self.workers {
            total.add(w);
        }
        total
    }
}

impl fmt::Display for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:>6} {:>12} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8} {:>9} {:>5}",
            "worker",
            "tasks",
            "local",
            "steals",
            "injector",
            "failed",
            "sleeps",
            "wakeups",
            "woke",
            "publishes",
            "core"
        )?;
        let row = |f: &mut fmt::Formatter<'_>, name: &str, w: &WorkerMetrics| {
            let core = w.core.map_or_else(|| "-".to_string(), |c| c.to_string());
            writeln!(
                f,
                "{:>6} {:>12} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8} {:>9} {:>5}",
                name,
                w.tasks_executed,
                w.local_pops,
                w.steals,
                w.injector_pops,
                w.failed_steals,
                w.sleeps,
                w.wakeups,
                w.wakeups_sent,
                w.publishes,
                core
            )
        };
        for (i, w) in self.workers.iter().enumerate() {
            row(f, &i.to_string(), w)?;
        }
        row(f, "total", &self.totals())?;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        writeln!(
            f,
            "{:>6} {:>12} {:>12} {:>12}",
            "worker", "busy ms", "searching ms", "sleeping ms"
        )?;
        for (i, w) in self.workers.iter().enumerate() {
            writeln!(
                f,
                "{:>6} {:>12.3} {:>12.3} {:>12.3}",
                i,
                ms(w.busy),
                ms(w.searching),
                ms(w.sleeping)
            )?;
        }
        let latency = |f: &mut fmt::Formatter<'_>, name: &str, l: &LatencySummary| {
            writeln!(
                f,
                "{name}: {} samples, p50 <= {} ns, p99 <= {} ns, max {} ns",
                l.count, l.p50_ns, l.p99_ns, l.max_ns
            )
        };
        latency(f, "wake-up latency", &self.wake_latency)?;
        latency(f, "inject-to-start latency", &self.inject_latency)
    }
}

/// Nanoseconds since `epoch` (a pool's creation, `PoolCounters::epoch`): the clock of every
/// metric and trace timestamp.
#[inline]
pub(crate) fn now_ns(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}
