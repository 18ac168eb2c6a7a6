//! Time accounting and wake-up latency in `Metrics` (always on).

use parjob::ThreadPoolBuilder;

#[test]
fn worker_time_splits_into_busy_searching_sleeping() {
    let pool = ThreadPoolBuilder::new()
        .num_threads(2)
        .spin_rounds(0)
        .build()
        .unwrap();
    pool.install(|| std::thread::sleep(std::time::Duration::from_millis(20)));
    let metrics = pool.metrics();
    // The worker that ran the install was busy for the 20 ms sleep inside it (lower bound of a
    // sleep, not a timing assumption about speed).
    assert!(
        metrics
            .workers()
            .iter()
            .any(|w| w.busy >= std::time::Duration::from_millis(20)),
        "{metrics}"
    );
    let totals = metrics.totals();
    assert_eq!(totals.busy, metrics.workers().iter().map(|w| w.busy).sum());
}

#[test]
fn wake_ups_are_counted_and_their_latency_recorded() {
    let pool = ThreadPoolBuilder::new()
        .num_threads(2)
        .spin_rounds(0)
        .build()
        .unwrap();
    // Make sure both workers are parked, then give them work: each install is a wake-up.
    for _ in 0..20 {
        while pool
            .metrics()
            .workers()
            .iter()
            .map(|w| w.sleeps)
            .sum::<u64>()
            < 2
        {
            std::thread::yield_now();
        }
        pool.install(|| ());
    }
    let metrics = pool.metrics();
    let latency = metrics.wake_latency();
    assert!(latency.count > 0, "{metrics}");
    assert!(
        latency.p50_ns <= latency.p99_ns && latency.p99_ns <= latency.max_ns,
        "{latency:?}"
    );
    assert!(metrics.totals().wakeups > 0);
}

/// However many spin rounds are configured, an idle worker parks: one fruitless search spins for a
/// bounded wall-clock time. With `u32::MAX` rounds and no cap, the workers would spin for hours and
/// never count a sleep; the loop below waits up to 30 s (a hang guard, not a speed assumption).
#[test]
fn idle_workers_park_whatever_spin_rounds_says() {
    let pool = ThreadPoolBuilder::new()
        .num_threads(2)
        .spin_rounds(u32::MAX)
        .build()
        .unwrap();
    assert_eq!(pool.install(|| parjob::join(|| 1, || 2)), (1, 2));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let metrics = pool.metrics();
        if metrics.workers().iter().all(|w| w.sleeps > 0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "workers still spinning after 30 s: {metrics}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
