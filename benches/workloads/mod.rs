//! Workloads shared by the criterion benches and the comparison run (`examples/compare/`), so both
//! time exactly the same code. Each workload has one implementation per contender: sequential,
//! parjob, rayon, chili and a hand-written static split over `std::thread::scope` (an anchor: what
//! perfect 2-way load balance with zero scheduling costs gives on the workloads that split evenly).
//! The fork-join workloads also have a one-thread anchor, `join-shape`: their recursion with a
//! `join` that only calls A then B, which separates what the shape of the user's recursion costs
//! from what a scheduler costs.
#![allow(dead_code)]

pub mod fork_join;
pub mod tasks;

use std::cell::RefCell;

/// Who runs a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contender {
    Sequential,
    Parjob,
    Rayon,
    Chili,
    StaticSplit,
    /// An anchor for the fork-join workloads, on one thread only: the same recursion as the
    /// fork-join contenders with every `join` replaced by [`fork_join::join_shape`] (A, then B,
    /// inlined, no scheduler). Its row is what the shape of a join at every level costs by
    /// itself, so parjob's one-thread row minus this one is what the scheduler adds.
    JoinShape,
}

impl Contender {
    pub const ALL: [Contender; 6] = [
        Contender::Sequential,
        Contender::Parjob,
        Contender::Rayon,
        Contender::Chili,
        Contender::StaticSplit,
        Contender::JoinShape,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Contender::Sequential => "sequential",
            Contender::Parjob => "parjob",
            Contender::Rayon => "rayon",
            Contender::Chili => "chili",
            Contender::StaticSplit => "static-split",
            Contender::JoinShape => "join-shape",
        }
    }
}

/// Pools of every contender, built once per thread count and reused (warm) across repetitions.
pub struct Pools {
    pub threads: usize,
    /// `Parallel` workloads use the default backend (`n_jobs(threads)`: parjob's cached pool, the
    /// calling thread helping), as a user would write them; if false, they run on `parjob` below
    /// (`Backend::Pool`), which is how policy comparisons select a configured pool.
    pub default_parallel: bool,
    pub parjob: parjob::ThreadPool,
    pub rayon: rayon::ThreadPool,
    pub chili: RefCell<chili::ThreadPool>,
}

impl Pools {
    pub fn new(threads: usize) -> Self {
        Self::with_parjob(
            threads,
            parjob::ThreadPoolBuilder::new().num_threads(threads),
        )
    }

    /// Pools with a specific parjob configuration (policy comparisons).
    pub fn with_parjob(threads: usize, builder: parjob::ThreadPoolBuilder) -> Self {
        Pools {
            threads,
            default_parallel: false,
            parjob: builder.build().expect("parjob pool"),
            rayon: rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("rayon pool"),
            chili: RefCell::new(chili::ThreadPool::with_config(chili::Config {
                thread_count: std::num::NonZeroUsize::new(threads),
                ..Default::default()
            })),
        }
    }
}

/// One benchmark workload. `setup` prepares the input outside the timed region (and is called
/// before every repetition, so in-place workloads start from the same state); `run` is timed and
/// returns a value that `checksum` turns, outside the timed region, into the checksum that must
/// equal the sequential one; `None` means the contender has no implementation for this workload
/// (e.g. the static split at one thread).
pub trait Workload {
    fn name(&self) -> String;
    fn setup(&mut self) {}
    fn run(&mut self, contender: Contender, pools: &Pools) -> Option<u64>;
    /// The checksum of the last `run`, given what it returned. Workloads whose output is large
    /// compute it here rather than in `run`: a checksum is a serial pass over the output, and
    /// timing it would cap every contender's speedup by Amdahl's law.
    fn checksum(&mut self, returned: u64) -> u64 {
        returned
    }
    /// How many calls one `run` makes; times are reported per call (latency workloads).
    fn calls_per_run(&self) -> u64 {
        1
    }
    /// Does the parjob contender run on `pools.parjob` (so its metrics describe the run)?
    fn runs_on_contender_pool(&self, _pools: &Pools) -> bool {
        true
    }
}

/// A deterministic compute kernel whose cost grows linearly with `iterations` (no memory traffic,
/// nothing for the optimiser to remove).
#[inline]
pub fn spin_work(seed: u64, iterations: u64) -> u64 {
    let mut x = seed | 1;
    for _ in 0..iterations {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    std::hint::black_box(x)
}

/// Iterations of `spin_work` per nanosecond on this machine (measured once, ~20 ms).
pub fn spin_iterations_per_ns() -> f64 {
    use std::sync::OnceLock;
    static RATE: OnceLock<f64> = OnceLock::new();
    *RATE.get_or_init(|| {
        let iterations = 2_000_000;
        let mut best = f64::MAX;
        for _ in 0..5 {
            let start = std::time::Instant::now();
            spin_work(7, iterations);
            best = best.min(start.elapsed().as_nanos() as f64);
        }
        iterations as f64 / best
    })
}

/// Iterations of `spin_work` that take about `ns` nanoseconds.
pub fn iterations_for_ns(ns: f64) -> u64 {
    (ns * spin_iterations_per_ns()).round().max(1.0) as u64
}

/// Runs `left` on a new scoped thread and `right` on this one: the static 2-way split anchor.
pub fn static_split<A, B, RA, RB>(left: A, right: B) -> (RA, RB)
where
    A: FnOnce() -> RA + Send,
    B: FnOnce() -> RB,
    RA: Send,
{
    std::thread::scope(|s| {
        let handle = s.spawn(left);
        let rb = right();
        (handle.join().expect("static split thread panicked"), rb)
    })
}
