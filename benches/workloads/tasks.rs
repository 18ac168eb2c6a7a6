//! Task-parallel workloads (joblib shapes): filled in with `Parallel`.
use super::Workload;
pub fn all(_quick: bool) -> Vec<Box<dyn Workload>> {
    Vec::new()
}
pub fn latency(_quick: bool) -> Vec<Box<dyn Workload>> {
    Vec::new()
}
