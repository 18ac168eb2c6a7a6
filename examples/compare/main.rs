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
//! cargo run --release --example compare -- --quick --save-baseline before
//! cargo run --release --example compare -- --quick --baseline before --fail-on-regression 10
//! cargo run --release --example compare -- --help              # every option
//! ```
//!
//! Layout: the workloads are in `benches/workloads/` (shared with the criterion benches) and are
//! listed by [`all_workloads`] below; `compare/cli.rs` is the command line, `compare/runner.rs`
//! measures the rows, `compare/report/` writes markdown, CSV, JSON and the charts,
//! `compare/baseline.rs` saves runs and diffs against them, `compare/provenance.rs` says what
//! produced a result. `docs/benchmarks.md` explains how to read the output.

#[path = "../../benches/workloads/mod.rs"]
mod workloads;
// The process backend's rows: a self-contained section (`--features processes`).
#[cfg(feature = "processes")]
#[path = "../../benches/workloads/processes.rs"]
mod process_rows;

mod baseline;
mod cli;
mod provenance;
mod report;
mod runner;

use clap::{CommandFactory, Parser};
use std::time::Instant;
use workloads::fork_join::{Fib, JoinLatency, Quicksort, TreeSum};
use workloads::{tasks, Workload};

/// Every workload of the run, in table order. A new workload is added here (its code goes in
/// `benches/workloads/`, and usually in `benches/compare.rs` too).
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

fn fail(message: String) -> ! {
    eprintln!("compare: {message}");
    std::process::exit(1)
}

fn main() {
    // First in `main`: in a worker process this serves tasks and never returns.
    #[cfg(feature = "processes")]
    parjob::processes::init();
    let options = cli::Options::parse();
    #[cfg(feature = "processes")]
    if options.workloads == ["processes"] {
        // `--workload processes`: only the process backend's rows.
        println!("{}", process_rows::rows(options.quick));
        return;
    }
    if options.trace_dir.is_some() && cfg!(not(feature = "trace")) {
        cli::Options::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--trace needs the trace feature: \
                 cargo run --release --features trace --example compare -- --trace DIR",
            )
            .exit();
    }
    // Read the baseline first: a typo in its name should not cost a whole run.
    let old = options
        .baseline
        .as_deref()
        .map(|name| baseline::load(name).unwrap_or_else(|e| fail(e)));
    let policy = options
        .policies
        .iter()
        .map(|p| p.name())
        .collect::<Vec<_>>()
        .join(",");
    let provenance = provenance::Provenance::collect(policy);
    let started = Instant::now();
    eprintln!(
        "compare: {} core(s), threads {:?}, {} mode; spin_work calibrated at {:.2} iterations/ns",
        parjob::cpu_count(),
        options.thread_counts(),
        if options.quick { "quick" } else { "full" },
        workloads::spin_iterations_per_ns()
    );

    let mut workloads = all_workloads(options.quick);
    workloads.retain(|w| options.selects(&w.name()));
    if workloads.is_empty() && !options.selects("idle") {
        cli::Options::command()
            .error(
                clap::error::ErrorKind::InvalidValue,
                format!("no workload matches {:?}", options.workloads),
            )
            .exit();
    }
    let thread_pools = runner::build_pools(&options);
    let mut rows = Vec::new();
    for workload in workloads.iter_mut() {
        rows.extend(runner::run_workload(
            workload.as_mut(),
            &thread_pools,
            &options,
        ));
    }
    let run = report::Run {
        provenance,
        quick: options.quick,
        rows,
        idle: runner::idle_rows(&options),
    };

    print!("{}", report::render(&run, options.format));
    if let Some(dir) = &options.out {
        match report::write_outputs(dir, &run) {
            Ok(files) => eprintln!("compare: wrote {} to {}", files.join(", "), dir.display()),
            Err(e) => fail(format!("cannot write to {}: {e}", dir.display())),
        }
    }
    if let Some(name) = &options.save_baseline {
        match baseline::save(name, &run) {
            Ok(path) => eprintln!("compare: saved baseline {name} as {}", path.display()),
            Err(e) => fail(e),
        }
    }
    let mut status = 0;
    if let (Some(old), Some(name)) = (&old, &options.baseline) {
        let changes = baseline::diff(old, &run);
        let table = baseline::render(name, old, &run, &changes);
        // The diff follows a markdown report on stdout; after CSV or JSON it goes to stderr, so
        // stdout stays one parseable document.
        if options.format == cli::Format::Markdown {
            println!("\n{table}");
        } else {
            eprintln!("\n{table}");
        }
        if let Some(dir) = &options.out {
            if let Err(e) = std::fs::write(dir.join("baseline-diff.md"), &table) {
                fail(format!("cannot write to {}: {e}", dir.display()));
            }
        }
        if let Some(pct) = options.fail_on_regression {
            let regressed = baseline::regressions(&changes, pct);
            for c in &regressed {
                eprintln!(
                    "compare: REGRESSION {} / {} threads / {}: {:+.1}%, beyond noise",
                    c.workload,
                    c.threads,
                    c.contender,
                    c.change_pct.unwrap_or(0.0)
                );
            }
            if !regressed.is_empty() {
                status = 1;
            }
        }
    }
    #[cfg(feature = "processes")]
    if options.workloads.is_empty() {
        // Printed after the thread tables; not part of the JSON, charts or baselines.
        eprintln!("compare: process backend rows ...");
        println!("{}", process_rows::rows(options.quick));
    }
    eprintln!("compare: done in {:.1} s", started.elapsed().as_secs_f64());
    std::process::exit(status);
}
