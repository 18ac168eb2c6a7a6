//! The comparison run: every workload, every contender (sequential, parjob, rayon, chili, a static
//! 2-way split), on 1 thread and on all cores, in one process, so the ratios are measured under the
//! same conditions. Each result is checked against the sequential answer; a wrong contender is
//! reported, never timed.
//!
//! ```text
//! cargo run --release --example compare                       # the full run (< 3 min on 2 cores)
//! cargo run --release --example compare -- --quick            # smaller inputs, fewer repetitions
//! cargo run --release --example compare -- --threads 1,2 --workload fib --format csv
//! cargo run --release --example compare -- --policy lazy,eager --out results/
//! ```
//!
//! Options: `--threads LIST` (default `1,<cores>`), `--workload NAME` (substring match, repeatable),
//! `--quick`, `--reps N` (repetitions per measurement; default adaptive), `--format
//! markdown|csv|json`, `--out DIR` (writes `results.md`/`.csv`/`.json` and `speedup.svg`), `--policy
//! LIST` (run parjob under several policies side by side: `lazy` (the default), `eager`,
//! `round-robin`, `last-victim`, `no-spin`), `--trace DIR` (with `--features trace`: one Chrome
//! trace per workload and thread count, of parjob's timed runs).

#[path = "../benches/workloads/mod.rs"]
mod workloads;
// The process backend's rows: a self-contained section (`--features processes`).
#[cfg(feature = "processes")]
#[path = "../benches/workloads/processes.rs"]
mod process_rows;

use std::fmt::Write as _;
use std::time::{Duration, Instant};
use workloads::fork_join::{Fib, JoinLatency, Quicksort, TreeSum};
use workloads::tasks;
use workloads::{Contender, Pools, Workload};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Markdown,
    Csv,
    Json,
}

struct Options {
    threads: Vec<usize>,
    workloads: Vec<String>,
    quick: bool,
    reps: Option<usize>,
    format: Format,
    out: Option<std::path::PathBuf>,
    policies: Vec<(String, Policy)>,
    trace_dir: Option<std::path::PathBuf>,
}

/// A parjob scheduling policy to run side by side with the others (`--policy`).
#[derive(Debug, Clone, Copy)]
enum Policy {
    Lazy,
    Eager,
    RoundRobin,
    LastVictim,
    NoSpin,
}

impl Policy {
    fn parse(name: &str) -> Option<Policy> {
        Some(match name {
            "lazy" | "default" => Policy::Lazy,
            "eager" => Policy::Eager,
            "round-robin" => Policy::RoundRobin,
            "last-victim" => Policy::LastVictim,
            "no-spin" => Policy::NoSpin,
            _ => return None,
        })
    }

    fn builder(self, threads: usize) -> parjob::ThreadPoolBuilder {
        let builder = parjob::ThreadPoolBuilder::new().num_threads(threads);
        match self {
            Policy::Lazy => builder,
            Policy::Eager => builder.share_policy(parjob::SharePolicy::Eager),
            Policy::RoundRobin => builder.victim_policy(parjob::VictimPolicy::RoundRobin),
            Policy::LastVictim => builder.victim_policy(parjob::VictimPolicy::LastSuccessful),
            Policy::NoSpin => builder.spin_rounds(0),
        }
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: compare [--quick] [--threads 1,2] [--workload NAME]... [--reps N] \
         [--format markdown|csv|json] [--out DIR] [--policy lazy,eager,round-robin,last-victim,no-spin] \
         [--trace DIR]"
    );
    std::process::exit(2)
}

fn parse_options() -> Options {
    let cores = parjob::cpu_count();
    let mut options = Options {
        threads: if cores > 1 { vec![1, cores] } else { vec![1] },
        workloads: Vec::new(),
        quick: false,
        reps: None,
        format: Format::Markdown,
        out: None,
        policies: vec![("parjob".to_string(), Policy::Lazy)],
        trace_dir: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next().unwrap_or_else(|| {
                eprintln!("compare: {name} needs a value");
                usage()
            })
        };
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--threads" => {
                options.threads = value("--threads")
                    .split(',')
                    .map(|t| match t.trim().parse::<usize>() {
                        Ok(n) if n > 0 => n,
                        _ => {
                            eprintln!("compare: --threads takes positive integers, got {t:?}");
                            usage()
                        }
                    })
                    .collect()
            }
            "--workload" => options.workloads.push(value("--workload").to_lowercase()),
            "--reps" => {
                options.reps = match value("--reps").parse() {
                    Ok(n) if n > 0 => Some(n),
                    _ => {
                        eprintln!("compare: --reps takes a positive integer");
                        usage()
                    }
                }
            }
            "--format" => {
                options.format = match value("--format").as_str() {
                    "markdown" | "md" => Format::Markdown,
                    "csv" => Format::Csv,
                    "json" => Format::Json,
                    other => {
                        eprintln!("compare: unknown format {other:?}");
                        usage()
                    }
                }
            }
            "--out" => options.out = Some(value("--out").into()),
            "--policy" => {
                options.policies = value("--policy")
                    .split(',')
                    .map(|p| match Policy::parse(p.trim()) {
                        Some(policy) => (format!("parjob[{}]", p.trim()), policy),
                        None => {
                            eprintln!(
                                "compare: unknown policy {p:?} (lazy, eager, round-robin, last-victim, no-spin)"
                            );
                            usage()
                        }
                    })
                    .collect()
            }
            "--trace" => {
                if cfg!(not(feature = "trace")) {
                    eprintln!(
                        "compare: --trace needs the trace feature: cargo run --release --features trace --example compare -- --trace DIR"
                    );
                    std::process::exit(2);
                }
                options.trace_dir = Some(value("--trace").into());
            }
            "--help" | "-h" => usage(),
            other => {
                eprintln!("compare: unknown option {other:?}");
                usage()
            }
        }
    }
    options
}

fn all_workloads(quick: bool) -> Vec<Box<dyn Workload>> {
    let mut list: Vec<Box<dyn Workload>> = Vec::new();
    if quick {
        list.push(Box::new(Fib(30)));
        list.push(Box::new(TreeSum::new(20, false)));
        list.push(Box::new(TreeSum::new(20, true)));
        list.push(Box::new(Quicksort::new(200_000)));
    } else {
        list.push(Box::new(Fib(30)));
        list.push(Box::new(Fib(35)));
        list.push(Box::new(TreeSum::new(23, false)));
        list.push(Box::new(TreeSum::new(23, true)));
        list.push(Box::new(Quicksort::new(1_000_000)));
    }
    list.extend(tasks::all(quick));
    list.push(Box::new(JoinLatency {
        calls: if quick { 2_000 } else { 20_000 },
    }));
    list.extend(tasks::latency(quick));
    list
}

/// One measured cell of the table.
struct Row {
    workload: String,
    threads: usize,
    contender: String,
    /// Median and min over the repetitions, or why there is no timing.
    timing: Result<(Duration, Duration), String>,
    reps: usize,
    speedup: Option<f64>,
    vs_rayon: Option<f64>,
    steals: Option<u64>,
    sleeps: Option<u64>,
}

/// Times `reps` runs (per call, for latency workloads), sorted.
fn measure(
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

fn reps_for(first: Duration, options: &Options) -> usize {
    if let Some(r) = options.reps {
        return r;
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

fn main() {
    // First in `main`: in a worker process this serves tasks and never returns.
    #[cfg(feature = "processes")]
    parjob::processes::init();
    let options = parse_options();
    #[cfg(feature = "processes")]
    if options.workloads == ["processes"] {
        // `--workload processes`: only the process backend's rows.
        println!("{}", process_rows::rows(options.quick));
        return;
    }
    let started = Instant::now();
    eprintln!(
        "compare: {} core(s), threads {:?}, {} mode; spin_work calibrated at {:.2} iterations/ns",
        parjob::cpu_count(),
        options.threads,
        if options.quick { "quick" } else { "full" },
        workloads::spin_iterations_per_ns()
    );
    let mut rows: Vec<Row> = Vec::new();
    let mut workloads = all_workloads(options.quick);
    workloads.retain(|w| {
        options.workloads.is_empty()
            || options
                .workloads
                .iter()
                .any(|f| w.name().to_lowercase().contains(f))
    });
    if workloads.is_empty() {
        eprintln!("compare: no workload matches {:?}", options.workloads);
        std::process::exit(2);
    }
    let thread_pools: Vec<Vec<(String, Pools)>> = options
        .threads
        .iter()
        .map(|&t| {
            options
                .policies
                .iter()
                .map(|(label, policy)| {
                    let mut pools = Pools::with_parjob(t, policy.builder(t));
                    // The default contender runs `Parallel` as users write it (default backend).
                    pools.default_parallel = label == "parjob";
                    (label.clone(), pools)
                })
                .collect()
        })
        .collect();

    for workload in workloads.iter_mut() {
        let name = workload.name();
        eprintln!("compare: {name} ...");
        workload.setup();
        let base_pools = &thread_pools[0][0].1;
        let expected = workload.run(Contender::Sequential, base_pools);
        let first = measure(workload.as_mut(), Contender::Sequential, base_pools, 1)[0]
            * workload.calls_per_run() as u32;
        let reps = reps_for(first, &options);
        let seq_times = measure(workload.as_mut(), Contender::Sequential, base_pools, reps);
        let seq_median = seq_times[seq_times.len() / 2];
        rows.push(Row {
            workload: name.clone(),
            threads: 1,
            contender: "sequential".into(),
            timing: Ok((seq_median, seq_times[0])),
            reps,
            speedup: Some(1.0),
            vs_rayon: None,
            steals: None,
            sleeps: None,
        });
        for pools_for_threads in &thread_pools {
            let mut rayon_median = None;
            let mut cells: Vec<Row> = Vec::new();
            for (index, (label, pools)) in pools_for_threads.iter().enumerate() {
                let contenders: &[Contender] = if index == 0 {
                    &[
                        Contender::Rayon,
                        Contender::Chili,
                        Contender::StaticSplit,
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
                    workload.setup();
                    let got = workload.run(contender, pools);
                    let Some(got) = got else { continue };
                    if Some(got) != expected {
                        cells.push(Row {
                            workload: name.clone(),
                            threads: pools.threads,
                            contender: label,
                            timing: Err(format!(
                                "WRONG RESULT {got} (expected {expected:?}); not timed"
                            )),
                            reps: 0,
                            speedup: None,
                            vs_rayon: None,
                            steals: None,
                            sleeps: None,
                        });
                        continue;
                    }
                    let before = pools.parjob.metrics().totals();
                    #[cfg(feature = "trace")]
                    let tracing = contender == Contender::Parjob && options.trace_dir.is_some();
                    #[cfg(feature = "trace")]
                    if tracing {
                        pools.parjob.start_trace();
                    }
                    let times = measure(workload.as_mut(), contender, pools, reps);
                    #[cfg(feature = "trace")]
                    if tracing {
                        write_trace(
                            options.trace_dir.as_deref().expect("trace dir"),
                            &name,
                            &label,
                            pools,
                        );
                    }
                    let median = times[times.len() / 2];
                    let (steals, sleeps) = if contender == Contender::Parjob
                        && workload.runs_on_contender_pool(pools)
                    {
                        let delta = pools.parjob.metrics().totals().since(&before);
                        (Some(delta.steals), Some(delta.sleeps))
                    } else {
                        (None, None)
                    };
                    if contender == Contender::Rayon {
                        rayon_median = Some(median);
                    }
                    cells.push(Row {
                        workload: name.clone(),
                        threads: pools.threads,
                        contender: label,
                        timing: Ok((median, times[0])),
                        reps,
                        speedup: Some(seq_median.as_secs_f64() / median.as_secs_f64()),
                        vs_rayon: None,
                        steals,
                        sleeps,
                    });
                }
            }
            for cell in cells.iter_mut() {
                if let (Ok((median, _)), Some(rayon)) = (&cell.timing, rayon_median) {
                    cell.vs_rayon = Some(rayon.as_secs_f64() / median.as_secs_f64());
                }
            }
            rows.extend(cells);
        }
    }
    let idle = idle_rows(&options);
    let report = render(&rows, &idle, options.format, &options);
    print!("{report}");
    if let Some(dir) = &options.out {
        write_outputs(dir, &rows, &idle, &options);
    }
    #[cfg(feature = "processes")]
    if options.workloads.is_empty() {
        eprintln!("compare: process backend rows ...");
        println!("{}", process_rows::rows(options.quick));
    }
    eprintln!("compare: done in {:.1} s", started.elapsed().as_secs_f64());
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

struct IdleRow {
    contender: &'static str,
    threads: usize,
    situation: &'static str,
    cpu_ms_per_s: f64,
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

fn idle_rows(options: &Options) -> Vec<IdleRow> {
    let threads = *options.threads.iter().max().unwrap_or(&1);
    if !options.workloads.is_empty()
        && !options
            .workloads
            .iter()
            .any(|w| "idle".contains(w.as_str()))
    {
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
        rows.push(IdleRow {
            contender: contender.name(),
            threads,
            situation: "after a burst",
            cpu_ms_per_s: after_burst,
        });
        rows.push(IdleRow {
            contender: contender.name(),
            threads,
            situation: "caller blocked inside",
            cpu_ms_per_s: blocked_inside,
        });
    }
    rows
}

// ---------------------------------------------------------------- output

fn fmt_duration(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}×"))
}

fn render(rows: &[Row], idle: &[IdleRow], format: Format, options: &Options) -> String {
    let mut out = String::new();
    match format {
        Format::Markdown => {
            let _ = writeln!(
                out,
                "<!-- cargo run --release --example compare{} | {} cores | {} -->",
                if options.quick { " -- --quick" } else { "" },
                parjob::cpu_count(),
                std::env::consts::ARCH
            );
            let _ = writeln!(
                out,
                "| workload | threads | contender | median | min | speedup vs sequential | rayon time / this | steals | sleeps |"
            );
            let _ = writeln!(out, "|---|---:|---|---:|---:|---:|---:|---:|---:|");
            for r in rows {
                let (median, min) = match &r.timing {
                    Ok((m, n)) => (fmt_duration(*m), fmt_duration(*n)),
                    Err(e) => (e.clone(), "-".into()),
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    r.workload,
                    r.threads,
                    r.contender,
                    median,
                    min,
                    opt(r.speedup, 2),
                    opt(r.vs_rayon, 2),
                    r.steals.map_or("-".into(), |v| v.to_string()),
                    r.sleeps.map_or("-".into(), |v| v.to_string()),
                );
            }
            if !idle.is_empty() {
                let _ = writeln!(
                    out,
                    "\n| idle cost | threads | situation | CPU ms per idle second |"
                );
                let _ = writeln!(out, "|---|---:|---|---:|");
                for r in idle {
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | {:.2} |",
                        r.contender, r.threads, r.situation, r.cpu_ms_per_s
                    );
                }
            }
        }
        Format::Csv => {
            let _ = writeln!(out, "workload,threads,contender,median_ns,min_ns,reps,speedup,rayon_ratio,steals,sleeps,error");
            for r in rows {
                let (median, min, error) = match &r.timing {
                    Ok((m, n)) => (
                        m.as_nanos().to_string(),
                        n.as_nanos().to_string(),
                        String::new(),
                    ),
                    Err(e) => (String::new(), String::new(), e.clone()),
                };
                let _ = writeln!(
                    out,
                    "\"{}\",{},{},{},{},{},{},{},{},{},\"{}\"",
                    r.workload,
                    r.threads,
                    r.contender,
                    median,
                    min,
                    r.reps,
                    r.speedup.map_or(String::new(), |v| format!("{v:.4}")),
                    r.vs_rayon.map_or(String::new(), |v| format!("{v:.4}")),
                    r.steals.map_or(String::new(), |v| v.to_string()),
                    r.sleeps.map_or(String::new(), |v| v.to_string()),
                    error
                );
            }
            for r in idle {
                let _ = writeln!(
                    out,
                    "\"idle: {}\",{},{},,,,,,,,\"cpu_ms_per_s={:.3}\"",
                    r.situation, r.threads, r.contender, r.cpu_ms_per_s
                );
            }
        }
        Format::Json => {
            let results: Vec<serde_json::Value> = rows
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "workload": r.workload,
                        "threads": r.threads,
                        "contender": r.contender,
                        "median_ns": r.timing.as_ref().ok().map(|(m, _)| m.as_nanos() as u64),
                        "min_ns": r.timing.as_ref().ok().map(|(_, n)| n.as_nanos() as u64),
                        "error": r.timing.as_ref().err(),
                        "reps": r.reps,
                        "speedup": r.speedup,
                        "rayon_ratio": r.vs_rayon,
                        "steals": r.steals,
                        "sleeps": r.sleeps,
                    })
                })
                .collect();
            let idle: Vec<serde_json::Value> = idle
                .iter()
                .map(|r| {
                    serde_json::json!({"contender": r.contender, "threads": r.threads,
                        "situation": r.situation, "cpu_ms_per_idle_s": r.cpu_ms_per_s})
                })
                .collect();
            let doc = serde_json::json!({
                "cores": parjob::cpu_count(),
                "quick": options.quick,
                "results": results,
                "idle": idle,
            });
            let _ = writeln!(out, "{}", serde_json::to_string_pretty(&doc).expect("json"));
        }
    }
    out
}

fn write_outputs(dir: &std::path::Path, rows: &[Row], idle: &[IdleRow], options: &Options) {
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("compare: cannot create {}: {e}", dir.display());
        std::process::exit(1);
    }
    for (format, file) in [
        (Format::Markdown, "results.md"),
        (Format::Csv, "results.csv"),
        (Format::Json, "results.json"),
    ] {
        let path = dir.join(file);
        if let Err(e) = std::fs::write(&path, render(rows, idle, format, options)) {
            eprintln!("compare: cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
    }
    let svg = speedup_svg(rows, *options.threads.iter().max().unwrap_or(&1));
    let path = dir.join("speedup.svg");
    if let Err(e) = std::fs::write(&path, svg) {
        eprintln!("compare: cannot write {}: {e}", path.display());
        std::process::exit(1);
    }
    eprintln!(
        "compare: wrote results.md, results.csv, results.json, speedup.svg to {}",
        dir.display()
    );
}

/// A grouped bar chart of speedup over sequential at `threads` threads, one group per workload.
/// Hand-written SVG (a dozen rects per group) rather than a plotting crate: it keeps the
/// comparison's build small, and the file opens in any browser.
fn speedup_svg(rows: &[Row], threads: usize) -> String {
    let mut workloads: Vec<&str> = Vec::new();
    let mut contenders: Vec<&str> = Vec::new();
    for r in rows
        .iter()
        .filter(|r| r.threads == threads && r.speedup.is_some())
    {
        if !workloads.contains(&r.workload.as_str()) {
            workloads.push(&r.workload);
        }
        if !contenders.contains(&r.contender.as_str()) {
            contenders.push(&r.contender);
        }
    }
    let palette = [
        "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
    ];
    let max = rows
        .iter()
        .filter(|r| r.threads == threads)
        .filter_map(|r| r.speedup)
        .fold(1.0f64, f64::max)
        .min(8.0);
    let (bar_w, gap, left, top, height) = (14.0, 18.0, 60.0, 40.0, 260.0);
    let group_w = bar_w * contenders.len().max(1) as f64 + gap;
    let width = left + group_w * workloads.len() as f64 + 180.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{:.0}" font-family="sans-serif" font-size="11">"#,
        top + height + 150.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="{left}" y="20" font-size="14">Speedup over sequential, {threads} thread(s) (higher is better)</text>"#
    );
    for tick in 0..=(max.ceil() as usize) {
        let y = top + height - tick as f64 / max * height;
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" x2="{:.0}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.0}" y="{:.1}" text-anchor="end">{tick}×</text>"##,
            width - 180.0,
            left - 5.0,
            y + 4.0
        );
    }
    for (wi, workload) in workloads.iter().enumerate() {
        let x0 = left + wi as f64 * group_w;
        for (ci, contender) in contenders.iter().enumerate() {
            let Some(speedup) = rows
                .iter()
                .find(|r| {
                    r.threads == threads && r.workload == *workload && r.contender == *contender
                })
                .and_then(|r| r.speedup)
            else {
                continue;
            };
            let h = speedup.min(max) / max * height;
            let _ = writeln!(
                svg,
                r#"<rect x="{:.1}" y="{:.1}" width="{bar_w}" height="{h:.1}" fill="{}"><title>{workload} / {contender}: {speedup:.2}×</title></rect>"#,
                x0 + ci as f64 * bar_w,
                top + height - h,
                palette[ci % palette.len()]
            );
        }
        let _ = writeln!(
            svg,
            r#"<text transform="translate({:.1},{:.1}) rotate(40)">{workload}</text>"#,
            x0 + 4.0,
            top + height + 12.0
        );
    }
    for (ci, contender) in contenders.iter().enumerate() {
        let y = top + 16.0 * ci as f64;
        let x = width - 170.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{x:.0}" y="{y:.0}" width="10" height="10" fill="{}"/><text x="{:.0}" y="{:.0}">{contender}</text>"#,
            palette[ci % palette.len()],
            x + 14.0,
            y + 9.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}
