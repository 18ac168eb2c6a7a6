//! A trace of the grid-search workload: 64 tasks of 0.5–10 ms through `Parallel`, recorded with
//! the scheduler's tracer and written as Chrome trace JSON (open it in https://ui.perfetto.dev or
//! chrome://tracing; `docs/research.md` says what to look for).
//!
//! ```text
//! cargo run --release --features trace --example trace_grid [OUT.json]
//! ```

use parjob::{delayed, Backend, Parallel, ThreadPoolBuilder};
use std::time::{Duration, Instant};

/// A stand-in for fitting one model: busy-waits for `ms` milliseconds and returns a "score".
fn fit(combination: usize, ms: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs_f64(ms / 1e3);
    let mut x = combination as f64;
    while Instant::now() < deadline {
        x = (x * 1.000_001).sin() + 1.0;
    }
    x
}

fn main() -> std::io::Result<()> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/trace_grid.json".to_string());
    let pool = ThreadPoolBuilder::new().build().expect("pool");
    // Durations drawn once from a fixed seed, as in the comparison run's uneven workload.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let durations: Vec<f64> = (0..64)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            0.5 + 9.5 * ((seed >> 11) as f64 / (1u64 << 53) as f64)
        })
        .collect();

    pool.start_trace();
    let scores: Vec<f64> = Parallel::new()
        .n_jobs(pool.num_threads() as i32)
        .backend(Backend::Pool(pool.clone()))
        .run(
            durations
                .iter()
                .enumerate()
                .map(|(i, &ms)| delayed!(fit(i, ms))),
        );
    let trace = pool.stop_trace();

    let best = scores
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i);
    println!("{} combinations, best index {:?}", scores.len(), best);
    if let Some(parent) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(parent)?;
    }
    trace.write_chrome_json(&out)?;
    println!("trace: {out} ({} events dropped)", trace.dropped());
    print!("{}", trace.summary());
    println!("{}", pool.metrics());
    Ok(())
}
