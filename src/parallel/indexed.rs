//! Splittable input: `Parallel::run_indexed(n, f)` and `Parallel::map(&items, f)`.
//!
//! When the tasks are "call `f(i)` for every `i` in `0..n`", no thread has to pull them one by
//! one: every runner (the caller and up to `runners - 1` tokens on the pool) claims the next index
//! range itself from one shared cursor, runs it, and writes the results in place. Ranges are sized
//! like OpenMP's *guided* schedule: a claim takes `remaining / (GUIDED_DIVISOR × runners)` indices
//! (at least 1), so the first claims are large (few claims in all: about `GUIDED_DIVISOR × runners
//! × ln n`), and the last ones are single indices, which balances uneven tasks at the end.
//!
//! # Soundness
//! `f`, the output buffer and the results may borrow the caller. The tokens hold an `Arc` of the
//! shared state, which holds no value of the call's types, only erased pointers to `f` and the
//! buffer; a runner dereferences them only while active in the call's [`Tracker`]. Before
//! `run_indexed` returns or unwinds (a local guard, [`Settle`], never handed out), it closes the
//! tracker and waits until it is quiescent: afterwards no runner touches `f` or the buffer again.
//! A token that runs later finds the tracker closed and only drops its `Arc`.

use super::backend::Plan;
use super::cancel::Tracker;
use super::engine::{Setup, Stop};
use crate::pool::unwind::{self, drop_contained, Panic};
use crate::pool::Signal;
use crate::sync::{Arc, AtomicUsize, Mutex, Ordering};
use std::time::Instant;

/// A claim takes `remaining / (GUIDED_DIVISOR × runners)` indices: 4 gives each runner about four
/// shrinking claims per halving of the remaining work (a common choice for guided schedules).
const GUIDED_DIVISOR: usize = 4;

/// The size of the next claim, given `remaining` indices and `runners`.
#[inline]
pub(crate) fn guided_claim(remaining: usize, runners: usize) -> usize {
    (remaining / (GUIDED_DIVISOR * runners.max(1))).max(1)
}

/// Where results go: written into uninitialised slots (a fresh vector), or assigned over the
/// existing values of a buffer (the old value is dropped).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Write {
    Fresh,
    Assign,
}

/// The state the runners share. No value of the call's types lives here (see the module docs).
struct Shared {
    tracker: Tracker,
    /// The next unclaimed index.
    cursor: AtomicUsize,
    n: usize,
    runners: usize,
    /// Indices whose results are written (progress).
    done: AtomicUsize,
    deadline: Option<Instant>,
    deadline_hit: crate::sync::AtomicBool,
    /// The first panic caught.
    panic: Mutex<Option<Panic>>,
    /// Ranges written, `(start, len)`, appended once per runner (a stopped call drops them).
    written: Mutex<Vec<(usize, usize)>>,
    signal: Arc<Signal>,
    /// Type-erased `&F` and output pointer: `body` knows their types.
    body: unsafe fn(*const (), *mut (), usize, usize, &mut usize),
    f: *const (),
    out: *mut (),
}

// SAFETY: moving a `Shared` (inside its `Arc`) to a token's thread moves only the two erased
// pointers, which that thread dereferences (through `body`) only while active, when the caller
// keeps both pointees alive (module docs). What it does through them is what `Sync` below allows.
// All other fields are `Send` themselves.
unsafe impl Send for Shared {}
// SAFETY: through `&Shared`, runners on several threads at once call `f` via `&F` (`F: Sync`,
// required by `run_indexed`) and write results into `out`, each only in the index range its
// cursor claim gave it alone, so no slot is touched by two threads; a result made (or, with
// `Write::Assign`, an old value dropped) on a worker belongs to the caller afterwards, which
// `R: Send` (required by `run_indexed`) allows. All other fields are `Sync` themselves.
unsafe impl Sync for Shared {}

/// Runs `f(i)` for `i` in `lo..hi` into `out`, counting results in `written` (read even when a
/// call panics).
///
/// # Safety
/// `f` must point to a live `F`, `out` to a buffer of at least `hi` slots of `R` that no one else
/// touches in `lo..hi`; with `Write::Assign` those slots must be initialised.
unsafe fn body<F: Fn(usize) -> R, R, const ASSIGN: bool>(
    f: *const (),
    out: *mut (),
    lo: usize,
    hi: usize,
    written: &mut usize,
) {
    // SAFETY: the caller guarantees `f` points to a live `F`.
    let f = unsafe { &*(f as *const F) };
    let out = out as *mut R;
    if !std::mem::needs_drop::<R>() {
        // Nothing to drop if a task panics, so no count is needed until the end: a plain loop
        // over a `&mut` slice (which tells the compiler it aliases nothing, so it can vectorise).
        // SAFETY: `lo..hi` is inside the buffer and owned by this runner alone (the caller's
        // guarantee); viewed as `MaybeUninit<R>`, its slots are valid to write whatever they
        // hold (with `Write::Assign` the old values need no drop: `!needs_drop::<R>()`).
        let slots = unsafe {
            std::slice::from_raw_parts_mut(out.add(lo).cast::<std::mem::MaybeUninit<R>>(), hi - lo)
        };
        fill(f, slots, lo);
        *written = hi - lo;
        return;
    }
    let mut i = lo;
    while i < hi {
        let value = f(i);
        // SAFETY: `i < hi`, inside the buffer, and this runner owns slots `lo..hi`.
        unsafe {
            if ASSIGN {
                *out.add(i) = value;
            } else {
                out.add(i).write(value);
            }
        }
        i += 1;
        *written = i - lo;
    }
}

/// `slots[k] = f(lo + k)`. A function of its own so that `f` and `slots` are reference
/// *arguments*: the compiler may then assume the writes do not change what `f` reads (without
/// that, it reloads `f`'s captures after every write and cannot vectorise the loop).
#[inline]
fn fill<F: Fn(usize) -> R, R>(f: &F, slots: &mut [std::mem::MaybeUninit<R>], lo: usize) {
    for (k, slot) in slots.iter_mut().enumerate() {
        slot.write(f(lo + k));
    }
}

impl Shared {
    /// Claims and runs ranges until none is left or the call is closed. The caller must be
    /// active in the tracker. Never unwinds. `on_range`: called between ranges (the caller's
    /// progress reports, user code): its panic fails the call as a task's does.
    fn run(&self, mut on_range: impl FnMut(&Shared)) {
        let mut stopped_ranges = Vec::new();
        loop {
            if self
                .tracker
                .stop_before_next_task(self.deadline, &self.deadline_hit)
            {
                break;
            }
            let mut lo = self.cursor.load(Ordering::Relaxed);
            let hi = loop {
                if lo >= self.n {
                    break None;
                }
                let hi = lo + guided_claim(self.n - lo, self.runners);
                match self.cursor.compare_exchange_weak(
                    lo,
                    hi,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break Some(hi),
                    Err(now) => lo = now,
                }
            };
            let Some(hi) = hi else { break };
            crate::pool::trace_current(crate::EventKind::BatchStart, (hi - lo) as u32);
            let mut written = 0usize;
            let outcome = unwind::halt_unwinding(|| {
                if self.deadline.is_none() {
                    // SAFETY: `f` and `out` are alive while we are active (module docs); the
                    // claim made us the only runner of `lo..hi`, which is inside the buffer
                    // (`hi <= n`).
                    unsafe { (self.body)(self.f, self.out, lo, hi, &mut written) }
                    return;
                }
                // With a deadline, no index may start after it (`Parallel::deadline`), and early
                // claims are large (a quarter of a runner's share): the clock is read before each
                // index, not once per claim. The indices of the claim not run are skipped work,
                // which the deadline check recorded.
                for i in lo..hi {
                    if i > lo
                        && self
                            .tracker
                            .stop_before_next_task(self.deadline, &self.deadline_hit)
                    {
                        break;
                    }
                    let mut one = 0;
                    // SAFETY: as above, for the one index `i` of our claim `lo..hi`.
                    unsafe { (self.body)(self.f, self.out, i, i + 1, &mut one) }
                    // Slots `lo..lo + written` are written: indices run in order, each once.
                    written += one;
                }
            });
            crate::pool::trace_current(crate::EventKind::BatchEnd, written as u32);
            self.done.fetch_add(written, Ordering::Relaxed);
            stopped_ranges.push((lo, written));
            // A callback's panic is recorded and stops the call like a task's: unwinding from
            // here lost `stopped_ranges`, so the results this runner had written leaked.
            let outcome = outcome.and_then(|()| unwind::halt_unwinding(|| on_range(self)));
            if let Err(payload) = outcome {
                self.record_panic(payload);
                break;
            }
        }
        // Only a stopped call reads these (to drop the results written before it stopped); one
        // lock per runner and call.
        super::engine::lock(&self.written).append(&mut stopped_ranges);
    }

    /// Keeps the first panic (a task's or the progress callback's) and closes the call; a later
    /// one is dropped contained.
    fn record_panic(&self, payload: Panic) {
        let mut first = super::engine::lock(&self.panic);
        match *first {
            None => *first = Some(payload),
            Some(_) => {
                drop(first);
                drop_contained(payload);
            }
        }
        self.tracker.close();
    }

    fn notify(&self) {
        self.signal.notify();
    }
}

/// A token's job. Never unwinds: `Shared::run` catches every task panic.
fn token(shared: Arc<Shared>) {
    if shared.tracker.begin() {
        shared.run(|_| {});
        shared.tracker.finish();
    }
    shared.notify();
}

/// Closes the call and waits until no runner is active, on every path out of `run_indexed`.
struct Settle<'a>(&'a Shared);

impl Drop for Settle<'_> {
    fn drop(&mut self) {
        let shared = self.0;
        shared.tracker.close();
        shared.signal.wait_while(|| !shared.tracker.is_quiescent());
    }
}

/// Runs `f(i)` for every `i` in `0..n` and returns the results in order, or writes them over
/// `into` (`Write::Assign`, `into.len() == n`).
pub(crate) fn run_indexed<F, R>(
    mut setup: Setup<'_>,
    n: usize,
    f: &F,
    mode: Write,
    into: Option<&mut [R]>,
) -> Result<Vec<R>, Stop<R>>
where
    F: Fn(usize) -> R + Sync,
    R: Send,
{
    let mut fresh: Vec<R> = Vec::new();
    let out: *mut R = match into {
        Some(buffer) => {
            debug_assert!(mode == Write::Assign && buffer.len() == n);
            buffer.as_mut_ptr()
        }
        None => {
            fresh.reserve_exact(n);
            fresh.as_mut_ptr()
        }
    };
    let (pool, runners) = match &setup.plan {
        Plan::Pool { pool, runners, .. } => (Some(pool.clone()), (*runners).max(1)),
        Plan::Inline => (None, 1),
    };
    let body: unsafe fn(*const (), *mut (), usize, usize, &mut usize) = match mode {
        Write::Fresh => body::<F, R, false>,
        Write::Assign => body::<F, R, true>,
    };
    let shared = Arc::new(Shared {
        tracker: Tracker::new(),
        cursor: AtomicUsize::new(0),
        n,
        runners,
        done: AtomicUsize::new(0),
        deadline: setup.limits.deadline(),
        deadline_hit: crate::sync::AtomicBool::new(false),
        panic: Mutex::new(None),
        written: Mutex::new(Vec::new()),
        signal: Arc::new(Signal::for_current_thread()),
        body,
        f: (f as *const F).cast(),
        out: out.cast(),
    });
    {
        let settle = Settle(&shared);
        if let Some(pool) = &pool {
            let tokens = (runners - 1).min(n.saturating_sub(1));
            for _ in 0..tokens {
                let shared = Arc::clone(&shared);
                // SAFETY: the token dereferences `f` and `out` (which may borrow this frame) only
                // while active in `shared.tracker`, and `settle` (a local, dropped before `f`,
                // `fresh` and `into` go away, on return and on unwinding) closes the tracker and
                // waits until it is quiescent. `token` never unwinds.
                unsafe { pool.spawn_unchecked(move || token(shared)) };
            }
        }
        if shared.tracker.begin() {
            let progress = &mut setup.progress;
            shared.run(|s| progress.update(s.done.load(Ordering::Relaxed)));
            shared.tracker.finish();
        }
        drop(settle);
    }
    // Settled: no runner touches `f` or the buffer any more; everything below is ours.
    let panic = super::engine::lock(&shared.panic).take();
    let completed = shared.done.load(Ordering::Acquire);
    if panic.is_some() || completed < n {
        if mode == Write::Fresh {
            let ranges = std::mem::take(&mut *super::engine::lock(&shared.written));
            for (lo, written) in ranges {
                for k in lo..lo + written {
                    // SAFETY: slots `lo .. lo + written` were initialised by a runner that has
                    // finished (settled); the vector's length is still 0, so nothing else owns
                    // them, and each is read (moved out) exactly once, here. Dropped one by one,
                    // a panic from a result's `Drop` discarded, so none is skipped.
                    drop_contained(unsafe { out.add(k).read() });
                }
            }
        }
        if let Some(payload) = panic {
            return Err(Stop::Panic(payload));
        }
        let limit = setup
            .limits
            .budget
            .map_or_else(Default::default, |(b, _)| b);
        return Err(Stop::Timeout { completed, limit });
    }
    if mode == Write::Fresh {
        // SAFETY: every index in `0..n` was claimed exactly once and its runner finished writing
        // (`completed == n` counts only written results; the call is settled, Acquire).
        unsafe { fresh.set_len(n) };
    }
    // The last counts (those of the tokens' last ranges) are reported here, with every result in
    // `fresh`.
    setup.progress.finish_with(fresh).map_err(Stop::Panic)
}

#[cfg(test)]
mod tests {
    use super::guided_claim;

    #[test]
    fn guided_claims_shrink_to_one_and_cover_everything() {
        let (n, runners) = (10_000_000usize, 2);
        let mut at = 0;
        let mut claims = Vec::new();
        while at < n {
            let k = guided_claim(n - at, runners);
            claims.push(k);
            at += k;
        }
        assert_eq!(at, n);
        assert_eq!(claims[0], n / 8);
        assert_eq!(*claims.last().unwrap(), 1);
        assert!(claims.windows(2).all(|w| w[1] <= w[0]));
        assert!(claims.len() < 200, "{} claims", claims.len());
    }
}
