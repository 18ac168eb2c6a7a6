//! A worker thread: its deque, its private forks, its main loop, and how it waits.

use super::builder::VictimPolicy;
use super::job::JobRef;
use super::latch::{CoreLatch, WakeTarget};
use super::metrics::now_ns;
use super::metrics::WorkerCounters;
use super::registry::{ForkRequests, Registry, UNCOUNTED};
use super::sleep::{Sleep, Woken};
use super::trace::EventKind;
use super::unwind;
use crate::sync::deque::{Injector, Steal, Worker};
use crate::sync::mutant::{self, Mutant};
use crate::sync::{spin_loop, Arc, AtomicU32, Ordering};
use std::cell::{Cell, UnsafeCell};
use std::ptr;

/// Forks that only this worker can see, oldest first.
///
/// `jobs[bottom..]` are private; `jobs[..bottom]` were published to the deque (oldest first, so a
/// thief always gets the biggest piece of work this worker has). A `join` remembers the index of
/// its fork; when its first half returns, everything above that index has been consumed, so the
/// fork is either still at `idx >= bottom` (run it inline, no atomics at all) or was published.
struct PrivateForks {
    jobs: Vec<JobRef>,
    bottom: usize,
}

/// The per-thread state of a worker. Lives on the worker's stack for the thread's whole life;
/// other threads reach it only through the registry (stealers, sleep state), never directly.
pub(crate) struct WorkerThread {
    deque: Worker<JobRef>,
    /// Touched only by this thread, never across a call into user code (see `push_fork`/`pop_fork`).
    private: UnsafeCell<PrivateForks>,
    index: usize,
    registry: Arc<Registry>,
    /// This worker as a latch setter needs it (`SpinLatch`): the registry above and `index`.
    wake_target: WakeTarget,
    /// Points into `registry.fork_requests[index]`, which the `Arc` above keeps alive.
    requests: *const ForkRequests,
    eager: bool,
    /// Joins that may go unrecorded after a recorded one (the policy's sampling period - 1).
    unrecorded_per_record: u32,
    /// Length of the fork list when the running job started (jobs run while helping stack their
    /// forks above the waiting job's): the job's own first forks are the ones at
    /// `job_base..job_base + MIN_PRIVATE_FORKS`.
    job_base: Cell<usize>,
    rng: Cell<u64>,
    last_victim: Cell<usize>,
}

crate::sync::thread_local_const! {
    /// The worker running on this thread (null on any other thread).
    static CURRENT: Cell<*const WorkerThread> = Cell::new(ptr::null());
}

crate::sync::thread_local_const! {
    /// The sampling count-down of the worker running on this thread
    /// (`ForkRequests::unrecorded_left`, the atomic `may_skip_fork` reads), null on any other
    /// thread. The free `join`'s hot path reads it straight from here: one thread-local load
    /// instead of the worker pointer and then the worker's `requests` pointer, a dependent load
    /// fewer on the path almost every join takes. Set and cleared with `CURRENT`.
    static UNRECORDED_LEFT: Cell<*const AtomicU32> = Cell::new(ptr::null());
}

/// Takes one unrecorded join from a sampling count-down: `true` (and a counted value one lower)
/// if any was left.
#[inline(always)]
fn count_down(left: &AtomicU32) -> bool {
    // Relaxed: a hint (see `ForkRequests::unrecorded_left`). A thief that wants work zeroes it,
    // so this one load also answers "is a thief hungry?" on the path almost every join takes;
    // the recorded path then reads the flag itself. `UNCOUNTED` (the default) is not written
    // back: a store per join would chain every join's load to the previous join's store.
    match left.load(Ordering::Relaxed) {
        UNCOUNTED => true,
        n => count_down_counted(left, n),
    }
}

/// `count_down` on a counted value `n` (a thief's zero included). Cold, so that the default's
/// path (`UNCOUNTED`) is the one laid out straight through: as a taken branch it cost fib(35)
/// 10 % on one thread.
#[cold]
#[inline(always)]
fn count_down_counted(left: &AtomicU32, n: u32) -> bool {
    if n == 0 {
        return false;
    }
    left.store(n - 1, Ordering::Relaxed);
    true
}

/// Spin rounds cap the doubling of pauses per round (2^6 = 64 `pause`s).
const MAX_SPIN_SHIFT: u32 = 6;

/// Wall-clock cap on one fruitless search, whatever `spin_rounds` says: an idle pool must cost
/// nothing measurable (at most this per wake-up), and a pause is 10 to 140 cycles depending on the
/// CPU, so a round count alone does not bound the time. The default 32 rounds stay well inside it
/// on the CPUs measured; larger counts are cut here.
const MAX_SPIN_NS: u64 = 100_000;

/// Every join is recorded while fewer forks than this are private, and the next one is whenever one
/// of the first this-many recorded forks returns, so the forks nearest the root of the running job
/// (the biggest pieces of work) are always available to a thief. (A returning fork further down
/// the list does not count: refilling its slot at once would record a small fork after every
/// small fork that returns.)
const MIN_PRIVATE_FORKS: usize = 3;

impl WorkerThread {
    /// The worker running on this thread, if any.
    #[inline]
    pub(crate) fn current() -> Option<&'static WorkerThread> {
        let ptr = CURRENT.with(|c| c.get());
        // SAFETY: CURRENT is set in `main_loop` to a WorkerThread on that thread's stack and reset
        // before it is dropped; a non-null value read on this thread therefore points to a live
        // worker for as long as this thread runs code called from `main_loop`, which is the only
        // place such a reference can be used. ('static is a white lie confined to this crate: no
        // reference escapes to user code.)
        unsafe { ptr.as_ref() }
    }

    #[inline]
    pub(crate) fn index(&self) -> usize {
        self.index
    }

    /// Who a `SpinLatch` this worker waits on must wake.
    #[inline]
    pub(crate) fn wake_target(&self) -> &WakeTarget {
        &self.wake_target
    }

    #[inline]
    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    #[inline]
    pub(crate) fn counters(&self) -> &WorkerCounters {
        self.registry.counters.worker(self.index)
    }

    /// May the `join` about to start run without recording its fork?
    ///
    /// A fork that is never recorded can never be given to a thief, so recording is sampled such
    /// that thieves still get big pieces: every join is recorded while fewer than
    /// `MIN_PRIVATE_FORKS` forks are private (so the oldest, biggest forks of the running job are),
    /// then none (the default) or one in the policy's `fork_sample_period`; and a hungry thief
    /// zeroes the count, so the next join is recorded and publishes at once. Under the eager
    /// policy the count stays zero: every fork is recorded and published. An unrecorded join
    /// costs one load of the count (and a store with a counted period): the caller runs A then B
    /// as the sequential program would.
    #[inline(always)]
    pub(crate) fn may_skip_fork(&self) -> bool {
        count_down(&self.requests().unrecorded_left)
    }

    /// [`may_skip_fork`](Self::may_skip_fork) for whichever worker runs on this thread, without
    /// looking the worker up: `false` on a thread that is no worker (and when the count is out).
    #[inline(always)]
    pub(crate) fn may_skip_fork_here() -> bool {
        let left = UNRECORDED_LEFT.with(|c| c.get());
        // SAFETY: `UNRECORDED_LEFT` is non-null only while `main_loop` runs on this thread, and
        // then points to `registry.fork_requests[index].unrecorded_left` of the worker running
        // here, which that worker's `Arc<Registry>` keeps alive until after `main_loop` cleared
        // the pointer (`ResetCurrent`, dropped before the worker). Only shared access is made, to
        // an atomic.
        match unsafe { left.as_ref() } {
            Some(left) => count_down(left),
            None => false,
        }
    }

    #[inline(always)]
    fn requests(&self) -> &ForkRequests {
        // SAFETY: `requests` points into `registry.fork_requests[index]`, which the
        // `Arc<Registry>` this worker holds keeps alive for the worker's whole life.
        unsafe { &*self.requests }
    }

    /// Sets how many joins may go unrecorded from now on, given the private forks left.
    #[inline]
    fn refresh_fork_sampling(&self, private: &PrivateForks) {
        let left = if self.eager || private.jobs.len() - private.bottom < MIN_PRIVATE_FORKS {
            0
        } else {
            self.unrecorded_per_record
        };
        let requests = self.requests();
        requests.unrecorded_left.store(left, Ordering::Relaxed);
        // A thief that raised the flag since our caller read it had its zero overwritten just
        // now: put it back, so it is answered at the next join rather than a period later.
        if left != 0 && requests.hungry.load(Ordering::Relaxed) {
            requests.unrecorded_left.store(0, Ordering::Relaxed);
        }
    }

    /// Every join from now on is recorded until the sampling is refreshed.
    #[inline]
    fn record_next_forks(&self) {
        self.requests().unrecorded_left.store(0, Ordering::Relaxed);
    }

    /// Records a `join`'s second half. Returns its index for `pop_fork`.
    #[inline]
    pub(crate) fn push_fork(&self, job: JobRef) -> usize {
        // SAFETY: `private` is only accessed by this thread, and no other borrow of it is live:
        // every access is a short block like this one that calls no user code.
        let index = unsafe {
            let private = &mut *self.private.get();
            private.jobs.push(job);
            private.jobs.len() - 1
        };
        // Under the eager policy the flag is never cleared, so every fork is published.
        if self.requests().hungry.load(Ordering::Relaxed) {
            self.publish_oldest();
        }
        // SAFETY: only this thread touches `private`; this shared borrow ends with the statement
        // and no user code runs during it.
        self.refresh_fork_sampling(unsafe { &*self.private.get() });
        index
    }

    /// Forgets the fork at `index` and everything above it. Returns `true` if it was still private
    /// (the caller runs it inline); `false` if it was published (the caller must reclaim or wait).
    #[inline]
    pub(crate) fn pop_fork(&self, index: usize) -> bool {
        // SAFETY: `private` is touched only by this thread (the worker that owns it), and no other
        // borrow of it is live: this block calls no user code and creates the only reference.
        unsafe {
            let private = &mut *self.private.get();
            private.jobs.truncate(index);
            let still_private = index >= private.bottom;
            if !still_private {
                private.bottom = index;
            }
            if index < self.job_base.get() + MIN_PRIVATE_FORKS {
                self.record_next_forks();
            }
            still_private
        }
    }

    /// Moves the oldest private fork to the stealable deque and wakes a sleeper if needed.
    #[cold]
    fn publish_oldest(&self) {
        if !self.eager {
            self.requests().hungry.store(false, Ordering::Relaxed);
        }
        // SAFETY: only this thread touches `private`; the block calls no user code (the deque push
        // below happens after the reference is gone), so this is the only live borrow.
        let job = unsafe {
            let private = &mut *self.private.get();
            if private.bottom == private.jobs.len() {
                return;
            }
            private.bottom += 1;
            private.jobs[private.bottom - 1]
        };
        self.deque.push(job);
        self.counters().bump_publishes();
        self.trace(EventKind::Publish, 0);
        self.registry.sleep.new_work(self.counters());
    }

    /// Publishes every recorded private fork: called before this worker waits, so they never sit
    /// invisible while it is blocked on something else. (The second halves of unrecorded joins
    /// around the wait cannot be published: they exist only as closures in their callers' frames.)
    /// The joins of whatever job the wait runs next are recorded from its start.
    fn publish_all_private(&self) {
        self.record_next_forks();
        // SAFETY: only this thread touches `private`, and this shared borrow ends inside the
        // condition, before `publish_oldest` takes its own mutable one.
        while unsafe {
            let private = &*self.private.get();
            private.bottom < private.jobs.len()
        } {
            self.publish_oldest();
        }
    }

    /// Pushes a job that is stealable at once (a scope spawn).
    #[inline]
    pub(crate) fn push_shared(&self, job: JobRef) {
        self.deque.push(job);
        self.registry.sleep.new_work(self.counters());
    }

    #[inline]
    pub(crate) fn execute(&self, job: JobRef) {
        // A new job starts from its root: record its first forks, the biggest it will make.
        self.record_next_forks();
        // SAFETY: only this thread touches `private`; this shared borrow ends with the statement.
        let base = unsafe { (*self.private.get()).jobs.len() };
        let outer_base = self.job_base.replace(base);
        self.counters().bump_tasks_executed();
        self.trace(EventKind::TaskStart, 0);
        // SAFETY: every JobRef in our queues is live until executed, and each is popped/stolen by
        // exactly one thread (crossbeam's guarantee), so this is its single execution.
        unsafe { job.execute() }
        self.trace(EventKind::TaskEnd, 0);
        // (Jobs never unwind: stack and heap jobs abort on an escaping panic.)
        self.job_base.set(outer_base);
    }

    /// Records a trace event (feature `trace`; otherwise nothing at all).
    #[inline(always)]
    fn trace(&self, kind: EventKind, arg: u32) {
        #[cfg(feature = "trace")]
        self.registry
            .trace
            .record(self.index, self.registry.counters.epoch, kind, arg);
        #[cfg(not(feature = "trace"))]
        let _ = (kind, arg);
    }

    /// A `join`'s second half `job_b` was published: pop it back if no thief took it. Returns
    /// `true` if we got it (the caller runs it inline: no JobRef to it is left anywhere). B is the
    /// newest job we published, so the deque's top is B unless B was stolen; then the top is an
    /// older fork of ours, which we run rather than leave waiting, and report `false`.
    #[cold]
    #[inline(never)]
    pub(crate) fn take_back(&self, job_b: JobRef) -> bool {
        match self.deque.pop() {
            Some(job) => {
                self.counters().bump_local_pops();
                if job == job_b {
                    return true;
                }
                self.execute(job);
                false
            }
            None => false,
        }
    }

    /// Runs other work of this pool until `latch` is set, sleeping when there is none.
    #[cold]
    pub(crate) fn wait_until(&self, latch: &CoreLatch) {
        self.run_until(Some(latch));
    }

    /// The scheduling loop: find work and run it; when there is none, search for a while, then
    /// sleep. With a latch it returns once the latch is set; without, once the pool terminates and
    /// no work is left (shutdown drains the queues).
    fn run_until(&self, latch: Option<&CoreLatch>) {
        self.publish_all_private();
        let sleep = &self.registry.sleep;
        let epoch = self.registry.counters.epoch;
        let mut searching = false;
        let mut spins = 0u32;
        // When the current fruitless search began (for the searching-time metric).
        let mut search_began: Option<u64> = None;
        let end_search = |began: &mut Option<u64>| {
            if let Some(start) = began.take() {
                self.counters()
                    .add_searching_ns(now_ns(epoch).saturating_sub(start));
            }
        };
        loop {
            if latch.is_some_and(|l| l.probe()) || self.registry.exits_without_draining() {
                break;
            }
            if let Some(job) = self.find_work() {
                end_search(&mut search_began);
                if searching {
                    sleep.stop_searching_found_work(self.counters());
                    searching = false;
                }
                spins = 0;
                self.execute(job);
                continue;
            }
            if search_began.is_none() {
                search_began = Some(now_ns(epoch));
            }
            if latch.is_none()
                && self.registry.is_terminating()
                && !self.registry.has_visible_work()
            {
                break;
            }
            if !searching {
                searching = sleep.start_searching();
            }
            let spun_too_long = || {
                search_began.is_some_and(|began| now_ns(epoch).saturating_sub(began) > MAX_SPIN_NS)
            };
            if spins < self.registry.policy.spin_rounds && !spun_too_long() {
                for _ in 0..(1u32 << spins.min(MAX_SPIN_SHIFT)) {
                    spin_loop();
                }
                spins += 1;
                continue;
            }
            // Nothing to do: give up searching and sleep.
            if searching {
                sleep.stop_searching_idle();
                searching = false;
            }
            if let Some(l) = latch {
                if !mutant::active(Mutant::LatchSkipsAnnounce) && !l.fall_asleep() {
                    continue; // set meanwhile
                }
            }
            end_search(&mut search_began);
            let sleep_began = now_ns(epoch);
            self.trace(EventKind::Sleep, 0);
            let woken = sleep.sleep(
                self.index,
                self.counters(),
                &self.registry.counters.wake_latency,
                || self.registry.has_visible_work(),
                || match latch {
                    Some(l) => !l.probe(),
                    None => !self.registry.is_terminating(),
                },
            );
            self.trace(EventKind::Wake, 0);
            self.counters()
                .add_sleeping_ns(now_ns(epoch).saturating_sub(sleep_began));
            if let Some(l) = latch {
                l.wake_up();
            }
            searching = woken == Woken::AsSearcher || sleep.start_searching();
            spins = 0;
        }
        end_search(&mut search_began);
        if searching {
            // We were counted as a searcher but are leaving: hand the search on, in case the
            // waker woke us for work we will not take.
            sleep.stop_searching_found_work(self.counters());
        }
    }

    /// Own deque (LIFO), then the injector, then outside offers, then peers.
    #[inline]
    fn find_work(&self) -> Option<JobRef> {
        if let Some(job) = self.deque.pop() {
            self.counters().bump_local_pops();
            return Some(job);
        }
        if let Some(job) = take_injected(
            &self.registry.injector,
            &self.deque,
            &self.registry.sleep,
            self.counters(),
        ) {
            self.counters().bump_injector_pops();
            self.trace(EventKind::InjectorPop, 0);
            return Some(job);
        }
        if let Some(job) = self.registry.offers.claim(self.index) {
            // Work from outside the pool, like the injector's: counted with it.
            self.counters().bump_injector_pops();
            self.trace(EventKind::InjectorPop, 0);
            return Some(job);
        }
        self.steal_from_peers()
    }

    fn steal_from_peers(&self) -> Option<JobRef> {
        let registry = &*self.registry;
        let n = registry.num_threads();
        if n <= 1 {
            return None;
        }
        let start = match registry.policy.victims {
            VictimPolicy::Random => self.next_random() as usize % n,
            VictimPolicy::RoundRobin => (self.last_victim.get() + 1) % n,
            VictimPolicy::LastSuccessful => self.last_victim.get() % n,
        };
        loop {
            let mut retry = false;
            for offset in 0..n {
                let victim = (start + offset) % n;
                if victim == self.index {
                    continue;
                }
                match registry.stealers[victim].steal() {
                    Steal::Success(job) => {
                        self.counters().bump_steals();
                        self.trace(EventKind::Steal, victim as u32);
                        self.last_victim.set(victim);
                        return Some(job);
                    }
                    Steal::Retry => retry = true,
                    Steal::Empty => {
                        if !self.eager {
                            registry.mark_hungry(victim);
                        }
                    }
                }
            }
            if !retry {
                break;
            }
        }
        if registry.policy.victims == VictimPolicy::RoundRobin {
            self.last_victim.set((start + n - 1) % n);
        }
        self.counters().bump_failed_steals();
        None
    }

    /// xorshift64*: victim order only needs to differ between workers and rounds.
    #[inline]
    fn next_random(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Takes a job from the injector with `steal_batch_and_pop`, which may also move a batch of
/// injected jobs into the worker's own deque `own`.
///
/// That move is a publication like any other: a sleeper that re-checked the injector before it
/// would not see the moved jobs while their new owner is busy (a hang if the job returned here
/// waits for one of them). So it is announced through the same fence-and-read wake-up check as
/// every push (`Sleep::new_work`). A free function so the loom batch model runs this exact code.
#[inline]
pub(crate) fn take_injected<T>(
    injector: &Injector<T>,
    own: &Worker<T>,
    sleep: &Sleep,
    counters: &WorkerCounters,
) -> Option<T> {
    loop {
        match injector.steal_batch_and_pop(own) {
            Steal::Success(job) => {
                if !mutant::active(Mutant::BatchSkipsNotify) && !own.is_empty() {
                    sleep.new_work(counters);
                }
                return Some(job);
            }
            Steal::Empty => return None,
            Steal::Retry => continue,
        }
    }
}

/// Records a trace event on the current thread's worker, if it is one and a trace is running
/// (feature `trace`; otherwise nothing). For layers above the scheduler (`Parallel` batches).
#[inline(always)]
pub(crate) fn trace_current(kind: EventKind, arg: u32) {
    #[cfg(feature = "trace")]
    if let Some(worker) = WorkerThread::current() {
        worker.trace(kind, arg);
    }
    #[cfg(not(feature = "trace"))]
    let _ = (kind, arg);
}

/// Runs a pool's start or exit handler on worker `index`; a panic in it aborts the process (see
/// `ThreadPoolBuilder::start_handler`).
pub(crate) fn run_handler(
    handler: Option<&(dyn Fn(usize) + Send + Sync)>,
    index: usize,
    what: &str,
) {
    if let Some(handler) = handler {
        if super::unwind::halt_unwinding(|| handler(index)).is_err() {
            eprintln!("parjob: the {what} handler of worker {index} panicked; aborting");
            std::process::abort();
        }
    }
}

/// Body of every worker thread.
pub(crate) fn main_loop(
    registry: Arc<Registry>,
    index: usize,
    deque: Worker<JobRef>,
    core: Option<usize>,
) {
    if let Some(core) = core {
        if crate::sync::pin_current_thread(core) {
            registry.counters.worker(index).set_core(core);
        }
    }
    registry
        .counters
        .worker(index)
        .set_started_ns(now_ns(registry.counters.epoch));
    let requests: *const ForkRequests = &registry.fork_requests[index];
    let wake_target = WakeTarget {
        registry: Arc::as_ptr(&registry),
        index,
    };
    let worker = WorkerThread {
        wake_target,
        deque,
        private: UnsafeCell::new(PrivateForks {
            jobs: Vec::with_capacity(64),
            bottom: 0,
        }),
        index,
        eager: registry.eager(),
        unrecorded_per_record: registry.policy.unrecorded_per_record,
        job_base: Cell::new(0),
        registry,
        requests,
        rng: Cell::new(0x9E37_79B9_7F4A_7C15 ^ ((index as u64 + 1) << 17)),
        last_victim: Cell::new(index),
    };
    /// Clears `CURRENT` and `UNRECORDED_LEFT` however the loop is left, before `worker` (declared
    /// earlier, and holding the registry they point into) is dropped.
    struct ResetCurrent;
    impl Drop for ResetCurrent {
        fn drop(&mut self) {
            UNRECORDED_LEFT.with(|c| c.set(ptr::null()));
            CURRENT.with(|c| c.set(ptr::null()));
        }
    }
    CURRENT.with(|c| c.set(&worker));
    UNRECORDED_LEFT.with(|c| c.set(&*worker.requests().unrecorded_left));
    let _reset = ResetCurrent;
    // Jobs never unwind (stack and heap jobs abort on an escaping panic), and nothing else in the
    // loop runs user code; a panic here is a scheduler bug. Unwinding would kill this worker while
    // others may wait on latches it owes, so abort.
    let abort = unwind::AbortIfPanic;
    worker.registry.sleep.register_current_thread(index);
    worker.registry.worker_started();
    worker.run_until(None);
    std::mem::forget(abort);
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::{WorkerThread, UNCOUNTED};
    use crate::sync::Ordering;
    use crate::ThreadPoolBuilder;

    /// Past the forks a worker always records, sampling lets joins go unrecorded; a thief's
    /// request must end that at once (not after a sampling period, here never).
    #[test]
    fn a_thiefs_request_makes_the_next_join_recorded() {
        let pool = ThreadPoolBuilder::new()
            .num_threads(1)
            .fork_sample_period(u32::MAX)
            .build()
            .unwrap();
        let (skipped_before, skipped_after) = with_three_recorded_forks(&pool, |worker| {
            let before = worker.may_skip_fork();
            worker.registry().mark_hungry(worker.index());
            (before, worker.may_skip_fork())
        });
        assert!(
            skipped_before,
            "with three private forks, sampling skips the next join"
        );
        assert!(
            !skipped_after,
            "after a thief's request, the next join is recorded"
        );
    }

    /// Runs `f` on `pool`'s worker inside three nested joins, whose forks (the job's first, so
    /// always recorded) are then private: past them, only the sampling rule decides.
    fn with_three_recorded_forks<R: Send>(
        pool: &crate::ThreadPool,
        f: impl FnOnce(&WorkerThread) -> R + Send,
    ) -> R {
        pool.install(|| {
            let nested = || f(WorkerThread::current().expect("on a worker"));
            crate::join(
                || crate::join(|| crate::join(nested, || ()).0, || ()).0,
                || (),
            )
            .0
        })
    }

    /// What `may_skip_fork` answers for 8 joins in a row, and the count word after them, past
    /// the first forks.
    fn eight_joins_past_the_first_forks(period: Option<u32>) -> (Vec<bool>, u32) {
        let builder = ThreadPoolBuilder::new().num_threads(1);
        let builder = match period {
            Some(period) => builder.fork_sample_period(period),
            None => builder,
        };
        let pool = builder.build().unwrap();
        with_three_recorded_forks(&pool, |worker| {
            let answers = (0..8).map(|_| worker.may_skip_fork()).collect();
            let left = worker.requests().unrecorded_left.load(Ordering::Relaxed);
            (answers, left)
        })
    }

    /// The default counts nothing: every join past the first forks goes unrecorded and none
    /// writes the word (the load-only hot path).
    #[test]
    fn by_default_unrecorded_joins_leave_the_count_unwritten() {
        assert_eq!(
            eight_joins_past_the_first_forks(None),
            (vec![true; 8], UNCOUNTED)
        );
    }

    /// A counted period records one join in `period` once the first forks are private.
    #[test]
    fn a_counted_period_records_one_join_in_period() {
        let (answers, left) = eight_joins_past_the_first_forks(Some(4));
        assert_eq!(
            answers,
            [true, true, true, false, false, false, false, false]
        );
        assert_eq!(left, 0);
    }
}
