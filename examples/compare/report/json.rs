//! The JSON report, which is also the baseline format: `provenance` (an object), `quick`,
//! `results` (one object per measured cell, with every repetition's time in `times_ns`) and
//! `idle`. [`parse`] reads it back.

use super::Run;
use crate::provenance::Provenance;
use crate::runner::{IdleRow, Row};
use serde_json::{json, Value};
use std::time::Duration;

pub fn to_value(run: &Run) -> Value {
    let ns = |d: Option<Duration>| d.map(|d| d.as_nanos() as u64);
    let results: Vec<Value> = run
        .rows
        .iter()
        .map(|r| {
            json!({
                "workload": r.workload,
                "threads": r.threads,
                "contender": r.contender,
                "latency": r.latency,
                "median_ns": ns(r.median()),
                "min_ns": ns(r.min()),
                "max_ns": ns(r.max()),
                "reps": r.reps(),
                "times_ns": r.times.as_ref().ok().map(|t| {
                    t.iter().map(|d| d.as_nanos() as u64).collect::<Vec<_>>()
                }),
                "error": r.times.as_ref().err(),
                "speedup": r.speedup,
                "speedup_min": r.speedup_range.map(|(lo, _)| lo),
                "speedup_max": r.speedup_range.map(|(_, hi)| hi),
                "rayon_ratio": r.vs_rayon,
                "steals": r.steals,
                "sleeps": r.sleeps,
            })
        })
        .collect();
    let idle: Vec<Value> = run
        .idle
        .iter()
        .map(|r| {
            json!({"contender": r.contender, "threads": r.threads,
                "situation": r.situation, "cpu_ms_per_idle_s": r.cpu_ms_per_s})
        })
        .collect();
    json!({
        "provenance": run.provenance.to_json(),
        "quick": run.quick,
        "results": results,
        "idle": idle,
    })
}

pub fn render(run: &Run) -> String {
    let mut text = serde_json::to_string_pretty(&to_value(run)).expect("JSON values serialize");
    text.push('\n');
    text
}

/// Reads a run written by [`render`]. A row without `times_ns` (written before baselines existed)
/// or with an `error` loads as an untimed row, so it shows up in a diff as "no timing".
pub fn parse(text: &str) -> Result<Run, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let results = doc["results"]
        .as_array()
        .ok_or("no \"results\" array: not a compare results file")?;
    let mut rows = Vec::with_capacity(results.len());
    for (i, r) in results.iter().enumerate() {
        let text = |key: &str| {
            r[key]
                .as_str()
                .map(String::from)
                .ok_or_else(|| format!("result {i}: no \"{key}\""))
        };
        let times = match (r["times_ns"].as_array(), r["error"].as_str()) {
            (_, Some(error)) => Err(error.to_string()),
            (Some(times), None) => {
                let mut times = times
                    .iter()
                    .map(|t| t.as_u64().map(Duration::from_nanos))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| format!("result {i}: times_ns must be integers"))?;
                times.sort();
                Ok(times)
            }
            (None, None) => Err("no per-repetition times in this file".to_string()),
        };
        let f64_of = |key: &str| r[key].as_f64();
        rows.push(Row {
            workload: text("workload")?,
            threads: r["threads"]
                .as_u64()
                .ok_or_else(|| format!("result {i}: no \"threads\""))?
                as usize,
            contender: text("contender")?,
            latency: r["latency"].as_bool().unwrap_or(false),
            times,
            speedup: f64_of("speedup"),
            speedup_range: f64_of("speedup_min").zip(f64_of("speedup_max")),
            vs_rayon: f64_of("rayon_ratio"),
            steals: r["steals"].as_u64(),
            sleeps: r["sleeps"].as_u64(),
        });
    }
    let idle = doc["idle"]
        .as_array()
        .map(|idle| {
            idle.iter()
                .map(|r| IdleRow {
                    contender: r["contender"].as_str().unwrap_or("?").to_string(),
                    threads: r["threads"].as_u64().unwrap_or(0) as usize,
                    situation: r["situation"].as_str().unwrap_or("?").to_string(),
                    cpu_ms_per_s: r["cpu_ms_per_idle_s"].as_f64().unwrap_or(f64::NAN),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Run {
        provenance: Provenance::from_json(&doc["provenance"]),
        quick: doc["quick"].as_bool().unwrap_or(false),
        rows,
        idle,
    })
}
