//! The markdown report: provenance, then one table row per measured cell, then the idle cost.

use super::{fmt_duration, Run};
use std::fmt::Write as _;

fn ratio(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}×"))
}

fn count(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

pub fn render(run: &Run) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", run.provenance.markdown());
    let _ = writeln!(
        out,
        "| workload | threads | contender | median | min | max | reps | speedup vs sequential | rayon time / this | steals | sleeps |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in &run.rows {
        let (median, min, max) = match (&r.times, r.median(), r.min(), r.max()) {
            (_, Some(median), Some(min), Some(max)) => {
                (fmt_duration(median), fmt_duration(min), fmt_duration(max))
            }
            (Err(e), ..) => (e.clone(), "-".into(), "-".into()),
            _ => ("no repetitions".into(), "-".into(), "-".into()),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {median} | {min} | {max} | {} | {} | {} | {} | {} |",
            r.workload,
            r.threads,
            r.contender,
            r.reps(),
            ratio(r.speedup),
            ratio(r.vs_rayon),
            count(r.steals),
            count(r.sleeps),
        );
    }
    if !run.idle.is_empty() {
        let _ = writeln!(
            out,
            "\n| idle cost | threads | situation | CPU ms per idle second |"
        );
        let _ = writeln!(out, "|---|---:|---|---:|");
        for r in &run.idle {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.2} |",
                r.contender, r.threads, r.situation, r.cpu_ms_per_s
            );
        }
    }
    out
}
