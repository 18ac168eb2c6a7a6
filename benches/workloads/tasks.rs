//! joblib-shaped workloads: many independent tasks through `Parallel` (parjob), `par_iter`
//! (rayon) and a static 2-way split. chili has no task API, so it sits these out.

use super::{iterations_for_ns, spin_work, static_split, Contender, Pools, Workload};
use parjob::{delayed, Backend, BatchSize, Delayed, Parallel};
use rayon::prelude::*;

/// `Parallel` with `threads` jobs and automatic batching: on the default backend as a user would
/// write it, or on the contender pool when comparing policies (see `Pools::default_parallel`).
fn parallel(pools: &Pools) -> Parallel<'static> {
    let parallel = Parallel::new()
        .n_jobs(pools.threads as i32)
        .batch_size(BatchSize::Auto);
    if pools.default_parallel {
        parallel
    } else {
        parallel.backend(Backend::Pool(pools.parjob.clone()))
    }
}

/// `Parallel` as a user writes it from the main thread on a pool they built:
/// `Parallel::new().n_jobs(threads).backend(Backend::Pool(pool.clone()))`.
fn user_parallel(pools: &Pools) -> Parallel<'static> {
    Parallel::new()
        .n_jobs(pools.threads as i32)
        .backend(Backend::Pool(pools.parjob.clone()))
}

/// Implements `Workload::runs_on_contender_pool` for the `Parallel` workloads.
macro_rules! on_contender_pool {
    () => {
        fn runs_on_contender_pool(&self, pools: &Pools) -> bool {
            !pools.default_parallel
        }
    };
}

fn f64_checksum(v: &[f64]) -> u64 {
    v.iter().fold(0u64, |h, x| h.rotate_left(5) ^ x.to_bits())
}

/// Static split: `out[i] = sqrt(numbers[i])`, each half on its own thread.
fn sqrt_split(out: &mut [f64], numbers: &[f64]) {
    let (lo_out, hi_out) = out.split_at_mut(numbers.len() / 2);
    let (lo_in, hi_in) = numbers.split_at(numbers.len() / 2);
    let fill = |o: &mut [f64], i: &[f64]| o.iter_mut().zip(i).for_each(|(o, n)| *o = n.sqrt());
    static_split(|| fill(lo_out, lo_in), || fill(hi_out, hi_in));
}

/// Static split: `(0..len).map(item)` with each half on its own thread, concatenated in order.
fn map_split(len: u64, item: impl Fn(u64) -> u64 + Sync) -> Vec<u64> {
    let half = len / 2;
    let (mut lo, hi) = static_split(
        || (0..half).map(&item).collect::<Vec<_>>(),
        || (half..len).map(&item).collect::<Vec<_>>(),
    );
    lo.extend(hi);
    lo
}

// ---------------------------------------------------------------- sqrt (the joblib example)

fn input(len: usize) -> Vec<f64> {
    (0..len).map(|i| i as f64 * 0.5 + 1.0).collect()
}

/// The first joblib example, `Parallel(n_jobs)(delayed(sqrt)(n) for n in numbers)`, with the output
/// in *fresh* memory: every contender returns a newly allocated vector (page faults included, as
/// for all of them). parjob, on the user's pool: the joblib spelling, one `Delayed` per element,
/// or (`split`) the splittable form `Parallel::map(&numbers, f)`.
pub struct SqrtFresh {
    numbers: Vec<f64>,
    /// The last run's output, kept so that neither its checksum nor its free is timed.
    out: Vec<f64>,
    split: bool,
}

/// The name suffix of the splittable variant of a workload.
fn split_suffix(split: bool, form: &str) -> String {
    if split {
        format!(", {form} (splittable)")
    } else {
        String::new()
    }
}

impl Workload for SqrtFresh {
    fn name(&self) -> String {
        format!(
            "sqrt {} fresh output{}",
            super::fork_join::human(self.numbers.len()),
            split_suffix(self.split, "map")
        )
    }
    fn run(&mut self, contender: Contender, pools: &Pools) -> Option<u64> {
        let numbers = &self.numbers;
        let out: Vec<f64> = match contender {
            Contender::Sequential => numbers.iter().map(|&n| n.sqrt()).collect(),
            Contender::Parjob if self.split => user_parallel(pools).map(numbers, |n| n.sqrt()),
            Contender::Parjob => {
                user_parallel(pools).run(numbers.iter().map(|&n| delayed(f64::sqrt)(n)))
            }
            Contender::Rayon => pools
                .rayon
                .install(|| numbers.par_iter().map(|&n| n.sqrt()).collect()),
            Contender::StaticSplit if pools.threads == 2 => {
                let mut out = vec![0.0; numbers.len()];
                sqrt_split(&mut out, numbers);
                out
            }
            Contender::StaticSplit | Contender::Chili | Contender::JoinShape => return None,
        };
        self.out = out;
        Some(0)
    }
    fn setup(&mut self) {
        // Frees the previous output before the clock starts: every contender allocates (and
        // faults in) a fresh vector, and none is charged for giving it back.
        self.out = Vec::new();
    }
    fn checksum(&mut self, _returned: u64) -> u64 {
        f64_checksum(&self.out)
    }
}

/// The same computation into a *recycled* output buffer (already faulted in). parjob, on the
/// user's pool: the joblib spelling, one `Delayed` per element (each borrowing its input and
/// output element), or (`split`) `Parallel::map_into(&numbers, &mut out, f)`.
pub struct SqrtRecycled {
    numbers: Vec<f64>,
    out: Vec<f64>,
    split: bool,
}

impl Workload for SqrtRecycled {
    fn name(&self) -> String {
        format!(
            "sqrt {} recycled output{}",
            super::fork_join::human(self.numbers.len()),
            split_suffix(self.split, "map_into")
        )
    }
    fn run(&mut self, contender: Contender, pools: &Pools) -> Option<u64> {
        let numbers = &self.numbers;
        let out = &mut self.out[..];
        match contender {
            Contender::Sequential => out.iter_mut().zip(numbers).for_each(|(o, n)| *o = n.sqrt()),
            Contender::Parjob if self.split => {
                user_parallel(pools).map_into(numbers, out, |n| n.sqrt())
            }
            Contender::Parjob => {
                user_parallel(pools).run(
                    out.iter_mut()
                        .zip(numbers)
                        .map(|(o, &n)| Delayed::new(move || *o = n.sqrt())),
                );
            }
            Contender::Rayon => pools.rayon.install(|| {
                out.par_iter_mut()
                    .zip(numbers.par_iter())
                    .for_each(|(o, n)| *o = n.sqrt())
            }),
            Contender::StaticSplit if pools.threads == 2 => {
                sqrt_split(out, numbers);
            }
            Contender::StaticSplit | Contender::Chili | Contender::JoinShape => return None,
        }
        Some(0)
    }
    fn setup(&mut self) {
        // Cleared before the clock starts, so a contender that skipped elements cannot pass.
        self.out.iter_mut().for_each(|o| *o = 0.0);
    }
    fn checksum(&mut self, _returned: u64) -> u64 {
        f64_checksum(&self.out)
    }
}

// ---------------------------------------------------------------- many tiny tasks

fn tiny(i: u64, iterations: u64) -> u64 {
    spin_work(i, iterations)
}

/// A million tasks of about 50 ns each, results in order. parjob: the joblib spelling (one
/// `Delayed` per task, as the comparison's default contender), or (`split`)
/// `Parallel::run_indexed(count, f)` on the user's pool.
pub struct TinyTasks {
    count: u64,
    iterations: u64,
    split: bool,
    /// The last run's results, checksummed and freed outside the timed region.
    out: Vec<u64>,
}

impl Workload for TinyTasks {
    fn runs_on_contender_pool(&self, pools: &Pools) -> bool {
        self.split || !pools.default_parallel
    }
    fn name(&self) -> String {
        format!(
            "{} tiny tasks (~50 ns){}",
            super::fork_join::human(self.count as usize),
            split_suffix(self.split, "run_indexed")
        )
    }
    fn run(&mut self, contender: Contender, pools: &Pools) -> Option<u64> {
        let (count, iterations) = (self.count, self.iterations);
        let out: Vec<u64> = match contender {
            Contender::Sequential => (0..count).map(|i| tiny(i, iterations)).collect(),
            Contender::Parjob if self.split => {
                user_parallel(pools).run_indexed(count as usize, |i| tiny(i as u64, iterations))
            }
            Contender::Parjob => {
                parallel(pools).run((0..count).map(|i| Delayed::new(move || tiny(i, iterations))))
            }
            Contender::Rayon => pools.rayon.install(|| {
                (0..count)
                    .into_par_iter()
                    .map(|i| tiny(i, iterations))
                    .collect()
            }),
            Contender::StaticSplit if pools.threads == 2 => {
                map_split(count, |i| tiny(i, iterations))
            }
            Contender::StaticSplit | Contender::Chili | Contender::JoinShape => return None,
        };
        self.out = out;
        Some(0)
    }
    fn setup(&mut self) {
        self.out = Vec::new();
    }
    fn checksum(&mut self, _returned: u64) -> u64 {
        self.out.iter().fold(0u64, |h, &x| h.rotate_left(3) ^ x)
    }
}

// ---------------------------------------------------------------- uneven tasks (grid search)

/// 64 tasks of 0.5–10 ms (a fixed pseudo-random draw), results in input order: the shape of a
/// hyperparameter grid search.
pub struct UnevenTasks {
    iterations: Vec<u64>,
}

impl UnevenTasks {
    pub fn new(tasks: usize, min_ms: f64, max_ms: f64) -> Self {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let iterations = (0..tasks)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let unit = (x >> 11) as f64 / (1u64 << 53) as f64;
                iterations_for_ns((min_ms + unit * (max_ms - min_ms)) * 1e6)
            })
            .collect();
        UnevenTasks { iterations }
    }
}

impl Workload for UnevenTasks {
    on_contender_pool!();
    fn name(&self) -> String {
        format!("{} uneven tasks (grid-search shape)", self.iterations.len())
    }
    fn run(&mut self, contender: Contender, pools: &Pools) -> Option<u64> {
        let iterations = &self.iterations;
        let out: Vec<u64> = match contender {
            Contender::Sequential => iterations
                .iter()
                .enumerate()
                .map(|(i, &n)| spin_work(i as u64, n))
                .collect(),
            Contender::Parjob => parallel(pools).run(
                iterations
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| delayed!(spin_work(i as u64, n))),
            ),
            Contender::Rayon => pools.rayon.install(|| {
                iterations
                    .par_iter()
                    .enumerate()
                    .with_max_len(1)
                    .map(|(i, &n)| spin_work(i as u64, n))
                    .collect()
            }),
            Contender::StaticSplit if pools.threads == 2 => {
                map_split(iterations.len() as u64, |i| {
                    spin_work(i, iterations[i as usize])
                })
            }
            Contender::StaticSplit | Contender::Chili | Contender::JoinShape => return None,
        };
        Some(out.iter().fold(0u64, |h, &x| h.rotate_left(7) ^ x))
    }
}

// ---------------------------------------------------------------- nested

/// 16 outer tasks, each running 16 inner tasks of ~100 µs through a nested call.
pub struct Nested {
    iterations: u64,
}

impl Workload for Nested {
    on_contender_pool!();
    fn name(&self) -> String {
        "nested 16 x 16 tasks (~100 µs)".to_string()
    }
    fn run(&mut self, contender: Contender, pools: &Pools) -> Option<u64> {
        let n = self.iterations;
        let threads = pools.threads as i32;
        let inner_seq = |o: u64| {
            (0..16u64)
                .map(|i| spin_work(o * 16 + i, n))
                .fold(0, |a, b| a ^ b)
        };
        let out: Vec<u64> = match contender {
            Contender::Sequential => (0..16).map(inner_seq).collect(),
            Contender::Parjob => parallel(pools).run((0..16u64).map(|o| {
                Delayed::new(move || {
                    // Nested: runs on the same pool (no new threads), helping while it waits.
                    Parallel::new()
                        .n_jobs(threads)
                        .run((0..16u64).map(|i| Delayed::new(move || spin_work(o * 16 + i, n))))
                        .into_iter()
                        .fold(0, |a, b| a ^ b)
                })
            })),
            Contender::Rayon => pools.rayon.install(|| {
                (0..16u64)
                    .into_par_iter()
                    .map(|o| {
                        (0..16u64)
                            .into_par_iter()
                            .map(|i| spin_work(o * 16 + i, n))
                            .reduce(|| 0, |a, b| a ^ b)
                    })
                    .collect()
            }),
            Contender::StaticSplit if pools.threads == 2 => map_split(16, inner_seq),
            Contender::StaticSplit | Contender::Chili | Contender::JoinShape => return None,
        };
        Some(out.iter().fold(0u64, |h, &x| h.rotate_left(11) ^ x))
    }
}

// ---------------------------------------------------------------- call latency

/// A `Parallel` call with 2 trivial tasks from outside the pool, `calls` times per run (rayon: a
/// 2-element `par_iter` collected inside `install`). `pool_backend`: on the user's pool
/// (`Backend::Pool`), else as the comparison's default contender (`Pools::default_parallel`).
pub struct ParallelLatency {
    calls: u64,
    pool_backend: bool,
}

impl Workload for ParallelLatency {
    fn runs_on_contender_pool(&self, pools: &Pools) -> bool {
        self.pool_backend || !pools.default_parallel
    }
    fn name(&self) -> String {
        if self.pool_backend {
            "Parallel latency, 2 trivial tasks, outside caller, Backend::Pool (per call)"
                .to_string()
        } else {
            "Parallel latency, 2 trivial tasks, outside caller (per call)".to_string()
        }
    }
    fn calls_per_run(&self) -> u64 {
        self.calls
    }
    fn run(&mut self, contender: Contender, pools: &Pools) -> Option<u64> {
        let mut total = 0u64;
        let p = if self.pool_backend {
            user_parallel(pools)
        } else {
            parallel(pools)
        };
        for i in 0..self.calls {
            let i = std::hint::black_box(i);
            let out: Vec<u64> = match contender {
                Contender::Sequential => vec![i, i + 1],
                Contender::Parjob => p.run((0..2).map(|k| Delayed::new(move || i + k))),
                Contender::Rayon => pools
                    .rayon
                    .install(|| [i, i + 1].par_iter().copied().collect()),
                Contender::StaticSplit | Contender::Chili | Contender::JoinShape => return None,
            };
            total = total.wrapping_add(out[0] * 3 + out[1]);
        }
        Some(total)
    }
}

/// The task workloads at full or quick size.
pub fn all(quick: bool) -> Vec<Box<dyn Workload>> {
    let (sqrt_len, tiny, uneven, nested_us) = if quick {
        (1_000_000, 100_000, UnevenTasks::new(16, 0.2, 2.0), 20.0)
    } else {
        (
            10_000_000,
            1_000_000,
            UnevenTasks::new(64, 0.5, 10.0),
            100.0,
        )
    };
    let mut list: Vec<Box<dyn Workload>> = Vec::new();
    for split in [false, true] {
        list.push(Box::new(SqrtFresh {
            numbers: input(sqrt_len),
            out: Vec::new(),
            split,
        }));
        list.push(Box::new(SqrtRecycled {
            numbers: input(sqrt_len),
            out: vec![0.0; sqrt_len],
            split,
        }));
    }
    for split in [false, true] {
        list.push(Box::new(TinyTasks {
            count: tiny,
            iterations: iterations_for_ns(50.0),
            split,
            out: Vec::new(),
        }));
    }
    list.push(Box::new(uneven));
    list.push(Box::new(Nested {
        iterations: iterations_for_ns(nested_us * 1e3),
    }));
    list
}

/// The latency workloads.
pub fn latency(quick: bool) -> Vec<Box<dyn Workload>> {
    let calls = if quick { 2_000 } else { 20_000 };
    vec![
        Box::new(ParallelLatency {
            calls,
            pool_backend: false,
        }),
        Box::new(ParallelLatency {
            calls,
            pool_backend: true,
        }),
    ]
}
