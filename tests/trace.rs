//! Traces (feature `trace`) and the time/latency accounting in `Metrics`.

#![cfg(feature = "trace")]

use parjob::{EventKind, ThreadPoolBuilder};
use std::sync::atomic::{AtomicUsize, Ordering};

#[test]
fn a_trace_contains_exactly_the_tasks_that_ran_properly_nested() {
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    // Warm up so no stale events from pool start-up are in the window.
    pool.install(|| ());
    pool.start_trace();
    let ran = AtomicUsize::new(0);
    let spawns = 20;
    pool.scope(|s| {
        for _ in 0..spawns {
            s.spawn(|_| {
                ran.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    let trace = pool.stop_trace();
    assert_eq!(trace.dropped(), 0);
    assert_eq!(trace.num_workers(), 2);
    let mut starts = 0;
    for worker in 0..trace.num_workers() {
        let mut depth = 0i32;
        let mut last_time = 0;
        for event in trace.events(worker) {
            assert!(
                event.time_ns >= last_time,
                "events of one worker are in time order"
            );
            last_time = event.time_ns;
            match event.kind {
                EventKind::TaskStart => {
                    starts += 1;
                    depth += 1;
                }
                EventKind::TaskEnd => {
                    depth -= 1;
                    assert!(
                        depth >= 0,
                        "a task ended that never started on worker {worker}"
                    );
                }
                EventKind::Steal => {
                    assert!((event.arg as usize) < 2 && event.arg as usize != worker)
                }
                _ => {}
            }
        }
        // The job that finished the scope may record its end just after `stop_trace` (the caller
        // is released by the job's latch, set before the worker records the end): at most that
        // one task may be open.
        assert!(
            (0..=1).contains(&depth),
            "unbalanced tasks on worker {worker}: depth {depth}"
        );
    }
    // The scope body ran as one injected job; each spawn as one job.
    assert_eq!(starts, spawns + 1);
    assert_eq!(ran.load(Ordering::SeqCst), spawns);
}

#[test]
fn chrome_json_parses_and_has_the_required_fields() {
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    pool.start_trace();
    pool.install(|| {
        parjob::scope(|s| {
            for i in 0..8u64 {
                s.spawn(move |_| {
                    std::hint::black_box((0..1000 * i).sum::<u64>());
                });
            }
        })
    });
    let trace = pool.stop_trace();
    let json: serde_json::Value =
        serde_json::from_str(&trace.to_chrome_json()).expect("valid JSON");
    let events = json["traceEvents"].as_array().expect("traceEvents array");
    assert!(!events.is_empty());
    // Per thread: no `E` without an earlier `B`. A worker may still be inside a task or asleep
    // when the trace stops, so a few `B`s may stay open (the format allows that).
    let mut open = std::collections::HashMap::<u64, i64>::new();
    for e in events {
        let ph = e["ph"].as_str().expect("ph");
        assert!(e["pid"].is_u64() && e["tid"].is_u64(), "{e}");
        assert!(e["name"].is_string(), "{e}");
        match ph {
            "M" => assert!(e["args"]["name"].is_string()),
            "B" => *open.entry(e["tid"].as_u64().unwrap()).or_default() += 1,
            "E" => {
                let depth = open.entry(e["tid"].as_u64().unwrap()).or_default();
                *depth -= 1;
                assert!(*depth >= 0, "an end without a begin: {e}");
            }
            "i" => assert!(e["ts"].is_number()),
            other => panic!("unexpected phase {other}"),
        }
        if ph != "M" {
            assert!(e["ts"].is_number(), "{e}");
        }
    }
    assert!(open.values().all(|&d| (0..=2).contains(&d)), "{open:?}");
    let dir = std::env::temp_dir().join(format!("parjob-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("trace.json");
    trace.write_chrome_json(&path).unwrap();
    let reread: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(reread, json);
    std::fs::remove_dir_all(&dir).unwrap();
    let summary = trace.summary();
    assert_eq!(summary.workers.len(), 2);
    assert!(summary.to_string().contains("busy"));
}

#[test]
fn restarting_a_trace_discards_the_previous_one() {
    let pool = ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    pool.start_trace();
    for _ in 0..5 {
        pool.install(|| ());
    }
    pool.start_trace();
    pool.install(|| ());
    let trace = pool.stop_trace();
    let starts = trace
        .events(0)
        .iter()
        .filter(|e| e.kind == EventKind::TaskStart)
        .count();
    assert_eq!(starts, 1);
}

#[test]
fn inject_latency_is_recorded_with_the_feature() {
    let pool = ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for _ in 0..10 {
        pool.install(|| ());
    }
    let latency = pool.metrics().inject_latency();
    assert!(latency.count >= 10, "{latency:?}");
    assert!(
        latency.p50_ns <= latency.p99_ns && latency.p99_ns <= latency.max_ns,
        "{latency:?}"
    );
}
