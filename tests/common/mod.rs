//! Helpers shared by the scheduler's integration tests.
#![allow(dead_code)]

/// Tests scale their iteration counts down under Miri (which is ~1000× slower).
pub const fn iterations(normal: usize, miri: usize) -> usize {
    if cfg!(miri) {
        miri
    } else {
        normal
    }
}

/// A small deterministic PRNG (splitmix64) so failures reproduce from the seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

pub fn fib_seq(n: u64) -> u64 {
    if n < 2 {
        n
    } else {
        fib_seq(n - 1) + fib_seq(n - 2)
    }
}

pub fn fib_join(n: u64) -> u64 {
    if n < 2 {
        return n;
    }
    let (a, b) = parjob::join(|| fib_join(n - 1), || fib_join(n - 2));
    a + b
}

pub fn quicksort<T: PartialOrd + Send>(v: &mut [T]) {
    if v.len() <= 16 {
        // insertion sort for small slices
        for i in 1..v.len() {
            let mut j = i;
            while j > 0 && v[j - 1] > v[j] {
                v.swap(j - 1, j);
                j -= 1;
            }
        }
        return;
    }
    let mid = partition(v);
    let (lo, hi) = v.split_at_mut(mid);
    parjob::join(|| quicksort(lo), || quicksort(&mut hi[1..]));
}

fn partition<T: PartialOrd>(v: &mut [T]) -> usize {
    let pivot = v.len() - 1;
    v.swap(v.len() / 2, pivot);
    let mut store = 0;
    for i in 0..pivot {
        if v[i] <= v[pivot] {
            v.swap(i, store);
            store += 1;
        }
    }
    v.swap(store, pivot);
    store
}

/// Number of threads in this process (Linux: /proc/self/status).
pub fn process_thread_count() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Every scheduling policy combination the builder offers (share × victims × spin budget), as a
/// label and a function that builds a pool of `threads` workers under it. The correctness and
/// stress suites run under each.
pub fn policies() -> Vec<(String, impl Fn(usize) -> parjob::ThreadPool)> {
    use parjob::{SharePolicy, ThreadPoolBuilder, VictimPolicy};
    let mut all = Vec::new();
    for share in [SharePolicy::Lazy, SharePolicy::Eager] {
        for victims in [
            VictimPolicy::Random,
            VictimPolicy::RoundRobin,
            VictimPolicy::LastSuccessful,
        ] {
            for spin in [0, parjob::DEFAULT_SPIN_ROUNDS] {
                let build = move |threads: usize| {
                    ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .share_policy(share)
                        .victim_policy(victims)
                        .spin_rounds(spin)
                        .build()
                        .unwrap()
                };
                all.push((format!("{share:?}/{victims:?}/spin={spin}"), build));
            }
        }
    }
    all
}

/// Holds the only worker of the 1-thread `pool` busy inside a job (run from a thread of scope `s`)
/// until the returned closure is called, which releases the worker and waits for the holding
/// thread. Outside joins made meanwhile find no worker to take their B.
pub fn hold_the_only_worker<'scope>(
    s: &'scope std::thread::Scope<'scope, '_>,
    pool: &'scope parjob::ThreadPool,
) -> impl FnOnce() + 'scope {
    let (release, held) = std::sync::mpsc::channel::<()>();
    let busy = std::sync::Arc::new(std::sync::Barrier::new(2));
    let in_job = std::sync::Arc::clone(&busy);
    let holder = s.spawn(move || {
        pool.install(move || {
            in_job.wait();
            held.recv().unwrap();
        })
    });
    busy.wait();
    move || {
        release.send(()).unwrap();
        holder.join().unwrap();
    }
}

/// Runs `f` on its own thread; fails the test if it does not finish within `limit` (a hang).
pub fn within<T: Send + 'static>(
    limit: std::time::Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .expect("the call hung (or panicked outside catch_unwind)")
}

/// [`within`] 20 s.
pub fn within_20s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    within(std::time::Duration::from_secs(20), f)
}

/// A value that counts its drops in its counter (one per test: tests run at once), then panics,
/// even while a panic unwinds (where that would abort the process, unless parjob contains it).
#[derive(Debug)]
pub struct PanicsOnDrop(pub &'static std::sync::atomic::AtomicUsize);

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        panic!("PanicsOnDrop::drop");
    }
}

/// The message of a caught panic.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("<not a message>")
}

/// A panic payload whose `Drop` panics, unless a panic is already unwinding (which would abort:
/// these tests are about the scheduler's handling of a *first* panic out of a user `Drop`).
#[derive(Debug)]
pub struct Bomb;

impl Drop for Bomb {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("Bomb::drop");
        }
    }
}

/// An input that yields the numbers of its range but claims, in its `size_hint`, an exact length
/// far beyond memory (2^40 items): pre-allocating for the claim would abort the process.
pub struct ClaimsTooMuch(pub std::ops::Range<u64>);

impl Iterator for ClaimsTooMuch {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        self.0.next()
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (1 << 40, Some(1 << 40))
    }
}

/// An input that yields the numbers of its range and panics when dropped (even while a panic
/// unwinds: dropped by an unwinding, it aborts the process unless parjob contains it).
pub struct BreaksOnDrop(pub std::ops::Range<u64>);

impl Iterator for BreaksOnDrop {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        self.0.next()
    }
}

impl Drop for BreaksOnDrop {
    fn drop(&mut self) {
        panic!("input dropped");
    }
}
