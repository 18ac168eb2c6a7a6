//! Runs the workloads: checks every contender's answer against the sequential one, then times it.
//! [`run_workload`] is the one place where a row is measured; the list of workloads is
//! `all_workloads` in `compare.rs`.

use crate::cli::Options;
use crate::workloads::fork_join::Fib;
use crate::workloads::{Contender, Pools, Workload};
use std::time::{Duration, Instant};

/// One measured cell of the table: a workload, a thread count and a contender.
#[derive(Debug, Clone)]
pub struct Row {
    pub workload: String,
    pub threads: usize,
    pub contender: String,
    /// Times are per call (`Workload::calls_per_run` > 1): a latency workload, for which a speedup
    /// over sequential means nothing (sequential makes no call at all).
    pub latency: bool,
    /// Every repetition's time, sorted, or why there is no timing.
    pub times: Result<Vec<Duration>, String>,
    /// Sequential median / this median; `None` for latency rows and untimed ones.
    pub speedup: Option<f64>,
    /// The run-to-run spread of that speedup: sequential median / this max ..= / this min.
    pub speedup_range: Option<(f64, f64)>,
    /// Rayon's median / this median, at the same thread count.
    pub vs_rayon: Option<f64>,
    pub steals: Option<u64>,
    pub sleeps: Option<u64>,
}

impl Row {
    fn timed(&self) -> Option<&[Duration]> {
        self.times.as_deref().ok().filter(|t| !t.is_empty())
    }
    pub fn median(&self) -> Option<Duration> {
        self.timed().map(|t| t[t.len() / 2])
    }
    pub fn min(&self) -> Option<Duration> {
        self.timed().map(|t| t[0])
    }
    pub fn max(&self) -> Option<Duration> {
        self.timed().map(|t| t[t.len() - 1])
    }
    pub fn reps(&self) -> usize {
        self.timed().map_or(0, <[Duration]>::len)
    }
    /// The key that identifies a row across runs (baselines).
    pub fn key(&self) -> (&str, usize, &str) {
        (&self.workload, self.threads, &self.contender)
    }
}

/// Pools per thread count, one set per `--policy`, labelled; built once and kept warm.
pub fn build_pools(options: &Options) -> Vec<Vec<(String, Pools)>> {
    options
        .thread_counts()
        .into_iter()
        .map(|t| {
            options
                .policies
                .iter()
                .map(|policy| {
                    let label = policy.label(&options.policies);
                    let mut pools = Pools::with_parjob(t, policy.builder(t));
                    // The default contender runs `Parallel` as users write it (default backend).
                    pools.default_parallel = label == "parjob";
                    (label, pools)
                })
                .collect()
        })
        .collect()
}

/// Times `reps` runs (per call, for latency workloads), sorted.
pub fn measure(
    workload: &mut dyn Workload,
    contender: Contender,
    pools: &Pools,
    reps: usize,
) -> Vec<Duration> {
    let calls = workload.calls_per_run().max(1) as u32;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        workload.setup();
        let start = Instant::now();
        std::hint::black_box(workload.run(contender, pools));
        times.push(start.elapsed() / calls);
    }
    times.sort();
    times
}

/// Repetitions: `--reps`, or as many as fit in a time budget, within bounds (at least 3, so a
/// baseline comparison always has a spread to look at).
pub fn reps_for(first: Duration, options: &Options) -> usize {
    if let Some(r) = options.reps {
        return r as usize;
    }
    let budget = if options.quick {
        Duration::from_millis(150)
    } else {
        Duration::from_millis(700)
    };
    let (min, max) = if options.quick { (3, 15) } else { (5, 41) };
    let fit = (budget.as_secs_f64() / first.as_secs_f64().max(1e-9)) as usize;
    fit.clamp(min, max)
}

/// Runs one workload: the sequential row, then every contender at every thread count. This is
/// where a row is measured.
pub fn run_workload(
    workload: &mut dyn Workload,
    thread_pools: &[Vec<(String, Pools)>],
    options: &Options,
) -> Vec<Row> {
    let name = workload.name();
    let latency = workload.calls_per_run() > 1;
    eprintln!("compare: {name} ...");
    workload.setup();
    let base_pools = &thread_pools[0][0].1;
    let expected = workload
        .run(Contender::Sequential, base_pools)
        .map(|returned| workload.checksum(returned));
    let first = measure(workload, Contender::Sequential, base_pools, 1)[0]
        * workload.calls_per_run() as u32;
    let reps = reps_for(first, options);
    let seq_times = measure(workload, Contender::Sequential, base_pools, reps);
    let seq_median = seq_times[seq_times.len() / 2];
    let speedup_of = |t: Duration| seq_median.as_secs_f64() / t.as_secs_f64();
    let mut rows = vec![Row {
        workload: name.clone(),
        threads: 1,
        contender: "sequential".into(),
        latency,
        speedup: (!latency).then_some(1.0),
        speedup_range: (!latency)
            .then(|| (speedup_of(seq_times[reps - 1]), speedup_of(seq_times[0]))),
        times: Ok(seq_times),
        vs_rayon: None,
        steals: None,
        sleeps: None,
    }];
    for pools_for_threads in thread_pools {
        let mut rayon_median = None;
        let mut cells: Vec<Row> = Vec::new();
        for (index, (label, pools)) in pools_for_threads.iter().enumerate() {
            // The other contenders run once per thread count, next to the first policy.
            let contenders: &[Contender] = if index == 0 {
                &[
                    Contender::Rayon,
                    Contender::Chili,
                    Contender::StaticSplit,
                    Contender::JoinShape,
                    Contender::Parjob,
                ]
            } else {
                &[Contender::Parjob]
            };
            for &contender in contenders {
                let label = if contender == Contender::Parjob {
                    label.clone()
                } else {
                    contender.name().to_string()
                };
                let mut row = Row {
                    workload: name.clone(),
                    threads: pools.threads,
                    contender: label,
                    latency,
                    times: Err(String::new()),
                    speedup: None,
                    speedup_range: None,
                    vs_rayon: None,
                    steals: None,
                    sleeps: None,
                };
                workload.setup();
                let Some(returned) = workload.run(contender, pools) else {
                    continue;
                };
                let got = workload.checksum(returned);
                if Some(got) != expected {
                    row.times = Err(format!(
                        "WRONG RESULT {got} (expected {expected:?}); not timed"
                    ));
                    cells.push(row);
                    continue;
                }
                let before = pools.parjob.metrics().totals();
                #[cfg(feature = "trace")]
                let tracing = contender == Contender::Parjob && options.trace_dir.is_some();
                #[cfg(feature = "trace")]
                if tracing {
                    pools.parjob.start_trace();
                }
                let times = measure(workload, contender, pools, reps);
                #[cfg(feature = "trace")]
                if tracing {
                    write_trace(
                        options.trace_dir.as_deref().expect("trace dir"),
                        &name,
                        &row.contender,
                        pools,
                    );
                }
                if contender == Contender::Parjob && workload.runs_on_contender_pool(pools) {
                    let delta = pools.parjob.metrics().totals().since(&before);
                    row.steals = Some(delta.steals);
                    row.sleeps = Some(delta.sleeps);
                }
                let median = times[times.len() / 2];
                if contender == Contender::Rayon {
                    rayon_median = Some(median);
                }
                if !latency {
                    row.speedup = Some(speedup_of(median));
                    row.speedup_range =
                        Some((speedup_of(times[times.len() - 1]), speedup_of(times[0])));
                }
                row.times = Ok(times);
                cells.push(row);
            }
        }
        for cell in cells.iter_mut() {
            if let (Some(median), Some(rayon)) = (cell.median(), rayon_median) {
                cell.vs_rayon = Some(rayon.as_secs_f64() / median.as_secs_f64());
            }
        }
        rows.extend(cells);
    }
    rows
}

/// Writes the trace of one workload's timed runs as Chrome JSON (`--trace DIR`).
#[cfg(feature = "trace")]
fn write_trace(dir: &std::path::Path, workload: &str, label: &str, pools: &Pools) {
    let trace = pools.parjob.stop_trace();
    let slug: String = format!("{workload}-{label}-{}t", pools.threads)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("compare: cannot create {}: {e}", dir.display());
        std::process::exit(1);
    }
    let path = dir.join(format!("{slug}.json"));
    if let Err(e) = trace.write_chrome_json(&path) {
        eprintln!("compare: cannot write {}: {e}", path.display());
        std::process::exit(1);
    }
    eprintln!(
        "compare: trace of {workload} ({label}, {} threads) -> {} ({} events dropped)",
        pools.threads,
        path.display(),
        trace.dropped()
    );
}

// ---------------------------------------------------------------- idle cost

/// CPU burnt by an idle pool (`--workload idle`).
#[derive(Debug, Clone)]
pub struct IdleRow {
    pub contender: String,
    pub threads: usize,
    pub situation: String,
    pub cpu_ms_per_s: f64,
}

fn process_cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct we pass; zeroed is a valid `rusage`.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU the whole process burns during `window` of wall time in which `wait` runs.
fn cpu_during(window: Duration, wait: impl FnOnce(Duration)) -> f64 {
    let before = process_cpu_time();
    let start = Instant::now();
    wait(window);
    let wall = start.elapsed();
    let cpu = process_cpu_time().saturating_sub(before);
    cpu.as_secs_f64() * 1e3 / wall.as_secs_f64()
}

pub fn idle_rows(options: &Options) -> Vec<IdleRow> {
    let threads = options.thread_counts().into_iter().max().unwrap_or(1);
    if !options.workloads.is_empty() && !options.selects("idle") {
        return Vec::new();
    }
    eprintln!("compare: idle cost ...");
    let window = if options.quick {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(1)
    };
    let pools = Pools::new(threads);
    let burst = |c: Contender| {
        let mut fib = Fib(24);
        fib.run(c, &pools);
    };
    let mut rows = Vec::new();
    for contender in [Contender::Parjob, Contender::Rayon, Contender::Chili] {
        burst(contender);
        let after_burst = cpu_during(window, std::thread::sleep);
        let blocked_inside = cpu_during(window, |w| match contender {
            Contender::Parjob => pools.parjob.install(|| std::thread::sleep(w)),
            Contender::Rayon => pools.rayon.install(|| std::thread::sleep(w)),
            _ => {
                pools
                    .chili
                    .borrow_mut()
                    .scope()
                    .join(|_| std::thread::sleep(w), |_| ());
            }
        });
        for (situation, cpu_ms_per_s) in [
            ("after a burst", after_burst),
            ("caller blocked inside", blocked_inside),
        ] {
            rows.push(IdleRow {
                contender: contender.name().to_string(),
                threads,
                situation: situation.to_string(),
                cpu_ms_per_s,
            });
        }
    }
    rows
}
