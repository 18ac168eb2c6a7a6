//! The process backend's rows of the comparison run (`cargo run --release --features processes
//! --example compare`): the same workloads on sequential code, on threads (`Parallel`'s default
//! backend) and on worker processes (`Backend::Processes`), in the same run. Self-contained: the
//! rest of `compare` does not depend on it.

use crate::workloads::{iterations_for_ns, spin_work};
use parjob::processes::ProcessPoolBuilder;
use parjob::{delayed, Backend, Parallel, ThreadPoolBuilder};
use std::time::{Duration, Instant};

/// Median of `reps` timings of `f`.
fn median(reps: usize, f: impl FnMut()) -> Duration {
    median_checked(reps, f, |()| {})
}

/// Median of `reps` timings of `f`, each output handed to `check` after the clock stops: a check
/// is a serial pass over the output (and then its free), which would cap every parallel
/// contender's speedup if it were timed.
fn median_checked<T>(reps: usize, mut f: impl FnMut() -> T, mut check: impl FnMut(T)) -> Duration {
    let mut times: Vec<Duration> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            let output = f();
            let elapsed = start.elapsed();
            check(output);
            elapsed
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn fmt(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

fn add_one(x: u64) -> u64 {
    x + 1
}

/// The markdown table of the process rows.
pub fn rows(quick: bool) -> String {
    let cores = parjob::cpu_count();
    let reps = if quick { 3 } else { 7 };
    let threads = Parallel::new().n_jobs(cores as i32);
    let processes = Parallel::new()
        .n_jobs(cores as i32)
        .backend(Backend::Processes);
    let mut out = format!(
        "\n### Process backend ({cores} workers; speedup over sequential; `Backend::Processes` vs threads)\n\n\
         | workload | sequential | threads | processes | threads × | processes × |\n|---|---:|---:|---:|---:|---:|\n"
    );

    // Uneven: 64 tasks of 0.5–10 ms, deterministic pseudo-random lengths.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let uneven: Vec<u64> = (0..64)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let ms = 0.5 + 9.5 * (state % 1000) as f64 / 1000.0;
            iterations_for_ns(ms * 1e6 / if quick { 4.0 } else { 1.0 })
        })
        .collect();
    let expected: Vec<u64> = uneven
        .iter()
        .enumerate()
        .map(|(i, &n)| spin_work(i as u64, n))
        .collect();
    let seq = median(reps, || {
        let out: Vec<u64> = uneven
            .iter()
            .enumerate()
            .map(|(i, &n)| spin_work(i as u64, n))
            .collect();
        assert_eq!(out, expected);
    });
    let thr = median(reps, || {
        let out = threads.run(
            uneven
                .iter()
                .enumerate()
                .map(|(i, &n)| parjob::delayed!(spin_work(i as u64, n))),
        );
        assert_eq!(out, expected);
    });
    let pro = median(reps, || {
        let out = processes.run_in_processes(
            uneven
                .iter()
                .enumerate()
                .map(|(i, &n)| parjob::delayed_fn!(spin_work(i as u64, n))),
        );
        assert_eq!(out, expected);
    });
    push(&mut out, "64 uneven tasks (0.5–10 ms)", seq, thr, pro);

    // Tiny: 1M tasks of ~50 ns.
    let count: u64 = if quick { 100_000 } else { 1_000_000 };
    let n = iterations_for_ns(50.0);
    let expected: Vec<u64> = (0..count).map(|i| spin_work(i, n)).collect();
    let check = |out: Vec<u64>| assert!(out == expected, "wrong results");
    // Every contender produces the same vector of results; the check is not timed.
    let seq = median_checked(
        reps,
        || (0..count).map(|i| spin_work(i, n)).collect::<Vec<u64>>(),
        check,
    );
    let thr = median_checked(
        reps,
        || threads.run((0..count).map(|i| parjob::delayed!(spin_work(i, n)))),
        check,
    );
    let pro = median_checked(
        reps,
        || processes.run_in_processes((0..count).map(|i| parjob::delayed_fn!(spin_work(i, n)))),
        check,
    );
    push(
        &mut out,
        &format!("{count} tiny tasks (~50 ns)"),
        seq,
        thr,
        pro,
    );

    // Latency: a warm 2-task call.
    let calls = if quick { 200 } else { 2_000 };
    let seq = median(calls, || {
        assert_eq!(
            Parallel::new()
                .n_jobs(1)
                .run((0..2u64).map(|x| delayed(add_one)(x))),
            [1, 2]
        )
    });
    let thr = median(calls, || {
        assert_eq!(threads.run((0..2u64).map(|x| delayed(add_one)(x))), [1, 2])
    });
    let pro = median(calls, || {
        assert_eq!(
            processes.run_in_processes((0..2u64).map(|x| parjob::delayed_fn(add_one)(x))),
            [1, 2]
        )
    });
    push(&mut out, "warm 2-task call (latency)", seq, thr, pro);

    // Cold: a new pool (threads or processes) and its first 2-task call.
    let thr = median(reps, || {
        let pool = ThreadPoolBuilder::new().num_threads(cores).build().unwrap();
        let out = Parallel::new()
            .backend(Backend::Pool(pool))
            .run((0..2u64).map(|x| delayed(add_one)(x)));
        assert_eq!(out, [1, 2]);
    });
    let pro = median(reps, || {
        let pool = ProcessPoolBuilder::new()
            .num_workers(cores)
            .build()
            .unwrap();
        let out = Parallel::new()
            .backend(Backend::ProcessPool(pool))
            .run_in_processes((0..2u64).map(|x| parjob::delayed_fn(add_one)(x)));
        assert_eq!(out, [1, 2]);
    });
    out.push_str(&format!(
        "| first 2-task call incl. pool start-up | – | {} | {} | – | – |\n",
        fmt(thr),
        fmt(pro)
    ));
    out
}

fn push(out: &mut String, name: &str, seq: Duration, thr: Duration, pro: Duration) {
    let x = |d: Duration| seq.as_secs_f64() / d.as_secs_f64();
    out.push_str(&format!(
        "| {name} | {} | {} | {} | {:.2}× | {:.2}× |\n",
        fmt(seq),
        fmt(thr),
        fmt(pro),
        x(thr),
        x(pro)
    ));
}
