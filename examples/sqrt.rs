//! joblib's first example, in Rust:
//!
//! ```python
//! from math import sqrt
//! from joblib import Parallel, delayed
//! numeros = range(10)
//! resultado = Parallel(n_jobs=2)(delayed(calcular_raiz_cuadrada)(n) for n in numeros)
//! ```
//!
//! Run: `cargo run --release --example sqrt [COUNT]` (COUNT defaults to 10 million).

use parjob::{delayed, Parallel};
use std::time::Instant;

fn calcular_raiz_cuadrada(n: f64) -> f64 {
    n.sqrt()
}

fn main() {
    // The joblib example, as written there.
    let numeros: Vec<f64> = (0..10).map(f64::from).collect();
    let resultado: Vec<f64> = Parallel::new()
        .n_jobs(2)
        .run(numeros.iter().map(|&n| delayed(calcular_raiz_cuadrada)(n)));
    println!("{resultado:.3?}");

    // The same on many numbers: Auto batching packs the tiny tasks into large batches, and the
    // results are written straight into the output vector.
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000);
    let numeros: Vec<f64> = (0..count).map(|i| i as f64).collect();
    let start = Instant::now();
    let sequential: Vec<f64> = numeros.iter().map(|&n| calcular_raiz_cuadrada(n)).collect();
    let sequential_time = start.elapsed();
    let start = Instant::now();
    let parallel: Vec<f64> = Parallel::new()
        .n_jobs(2)
        .run(numeros.iter().map(|&n| delayed(calcular_raiz_cuadrada)(n)));
    let parallel_time = start.elapsed();
    assert_eq!(sequential, parallel);
    println!(
        "{count} square roots: sequential {sequential_time:.2?}, Parallel(n_jobs=2) {parallel_time:.2?} (one run, not a benchmark)"
    );
}
