//! The runner side of the engine: the state a call's driver and its tokens share, the batches
//! and the chunks they post, and the token loop. See the parent module for the protocol.

use super::Task;
use crate::parallel::cancel::Tracker;
use crate::pool::unwind::{self, drop_contained, Panic};
use crate::pool::Signal;
use crate::sync::{Arc, AtomicBool, AtomicU64, AtomicUsize, Mutex, Ordering};
use std::collections::VecDeque;
use std::time::Instant;

/// A pointer into the output vector, sent to the runner that owns that slot range.
pub(crate) struct SlotPtr<R>(pub(crate) *mut R);
// SAFETY: a `SlotPtr` is only dereferenced by the single runner that owns the batch it belongs to
// (slot ranges of batches are disjoint), and `R: Send` lets that runner produce the value there.
unsafe impl<R: Send> Send for SlotPtr<R> {}

/// Where a batch puts its results.
pub(crate) enum Dest<R> {
    /// Write result `k` of the batch to `ptr.add(k)`.
    Slots(SlotPtr<R>),
    /// Collect the results into a vector of the batch's own.
    Own,
}

pub(crate) struct Batch<T: Task> {
    pub(super) start: usize,
    pub(super) tasks: Vec<T>,
    pub(super) dest: Dest<T::Output>,
}

/// A finished (or stopped) batch: `written` results from input index `start` on, in place or in
/// `own`; the task after them panicked (`panic`) or failed fast (`failure`), or was skipped.
pub(crate) struct Chunk<R> {
    pub(crate) start: usize,
    pub(crate) written: usize,
    pub(crate) own: Option<Vec<R>>,
    pub(crate) panic: Option<Panic>,
    pub(crate) failure: Option<R>,
}

pub(super) struct Queue<T: Task> {
    pub(super) batches: VecDeque<Batch<T>>,
    /// Tokens queued or running (each counts as a potential runner).
    pub(super) tokens: usize,
}

/// `run`/`try_run`'s [`timeout`](crate::Parallel::timeout) as every runner sees it: the longest
/// time the call may go without a result (a batch finishing), counted from its start.
///
/// The driver's wait alone cannot keep it: the driver runs tasks too (it helps), and so do the
/// workers while the driver waits on a worker thread; inside a task nobody noticed the timeout
/// expire, runners went on starting the tasks it had cancelled, and a call with more runners than
/// tasks succeeded though no result came within the timeout (round 13). So each runner checks it
/// before each task ([`Shared::stop_before_next_task`]), and each result checks the gap it
/// closes ([`Shared::result_arrived`]): a task that starts after the timeout expired finds it
/// expired, and a result that comes after it finds the gap too long. Either closes the call, which
/// then fails with the timeout. Time the driver spends in user code (pulling the input, the
/// progress callback) is not a wait for a result: the clock restarts when it leaves that code
/// (`Engine::driver_was_busy`), as joblib's runs only while its caller polls for a result.
pub(crate) struct Quiet {
    limit_ns: u64,
    epoch: Instant,
    /// Nanoseconds from `epoch` to the latest result, or to when the driver last left user code
    /// (the input's `next()`, the progress callback), whichever is later (0: the call's start).
    last_ns: AtomicU64,
}

impl Quiet {
    pub(super) fn new(limit: std::time::Duration) -> Self {
        Quiet {
            // A limit beyond `u64` nanoseconds (584 years; `Duration::MAX`) never passes.
            limit_ns: u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX),
            epoch: Instant::now(),
            last_ns: AtomicU64::new(0),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// No result for longer than the limit, now.
    fn expired(&self) -> bool {
        self.now_ns()
            .saturating_sub(self.last_ns.load(Ordering::Relaxed))
            > self.limit_ns
    }

    /// A result arrived now; `true` if the wait for it (since the latest result) was longer than
    /// the limit. Relaxed: the timestamps order nothing else, and a stale read only compares
    /// against an older result, which makes a gap look longer, never hides one that was.
    fn arrived(&self) -> bool {
        let now = self.now_ns();
        let previous = self.last_ns.fetch_max(now, Ordering::Relaxed);
        now.saturating_sub(previous) > self.limit_ns
    }

    /// The driver was busy with user code (input, callback) until now: the wait for the next
    /// result counts from here, unless a result came later.
    pub(crate) fn busy_until_now(&self) {
        self.last_ns.fetch_max(self.now_ns(), Ordering::Relaxed);
    }

    /// When the latest result arrived, or the driver last left user code (the call's start if
    /// neither has happened).
    pub(crate) fn last_result(&self) -> Instant {
        self.epoch + std::time::Duration::from_nanos(self.last_ns.load(Ordering::Relaxed))
    }
}

/// The state a call's driver and its tokens share.
pub(crate) struct Shared<T: Task> {
    pub(crate) tracker: Tracker,
    pub(super) queue: Mutex<Queue<T>>,
    pub(super) done: Mutex<Vec<Chunk<T::Output>>>,
    /// Emptied batch buffers, reused by the driver.
    pub(super) spare: SpareBuffers<T>,
    /// The driver's wake-up, notified after every chunk posted and every batch finished. Set by the
    /// driver before it first waits, replaced if it moves to another thread (a stream).
    pub(super) waiter: Mutex<Option<Arc<Signal>>>,
    /// Tasks that ran to completion (progress, and `run`'s window).
    pub(crate) tasks_done: AtomicUsize,
    pub(super) timing_tasks: AtomicU64,
    pub(super) timing_ns: AtomicU64,
    pub(super) deadline: Option<Instant>,
    /// A batch found the deadline passed and closed the call.
    pub(crate) deadline_hit: AtomicBool,
    /// `run`/`try_run`'s timeout, kept by every runner (`None` for streams: their timeout counts
    /// the consumer's wait in `next()`, which only the consumer sees).
    pub(crate) quiet: Option<Quiet>,
    /// A runner found the timeout expired (`quiet`) and closed the call.
    pub(crate) timeout_hit: AtomicBool,
    /// Results for which this returns `true` close the call (`try_run`'s `Err`).
    pub(super) fail_fast: Option<fn(&T::Output) -> bool>,
    /// A panic closes the call (`run`), or only ends the stream at its position (streams).
    pub(super) close_on_panic: bool,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> impl std::ops::DerefMut<Target = T> + '_ {
    // No user code runs while these locks are held; poisoning could only come from an allocation
    // failure, and the data stays consistent then.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T: Task> Shared<T> {
    /// Checked before each task that is not in a plain run: the call is closed, or this check
    /// finds the deadline passed or the timeout expired (and closes it).
    #[inline]
    pub(super) fn stop_before_next_task(&self) -> bool {
        if self
            .tracker
            .stop_before_next_task(self.deadline, &self.deadline_hit)
        {
            return true;
        }
        match &self.quiet {
            Some(quiet) if quiet.expired() => {
                self.timeout_hit.store(true, Ordering::Relaxed);
                self.tracker.close();
                true
            }
            _ => false,
        }
    }

    /// A batch of `written` results finished: with a timeout, the wait for them is checked.
    #[inline]
    pub(super) fn result_arrived(&self, written: usize) {
        if let Some(quiet) = &self.quiet {
            if written > 0 && quiet.arrived() {
                self.timeout_hit.store(true, Ordering::Relaxed);
                self.tracker.close();
            }
        }
    }

    pub(super) fn notify(&self) {
        let waiter = lock(&self.waiter).clone();
        if let Some(signal) = waiter {
            signal.notify();
        }
    }

    /// Runs one batch and posts its chunk. The caller must be active in the tracker. Never
    /// unwinds: a task's panic is caught and posted.
    pub(super) fn run_batch(&self, batch: Batch<T>) {
        let Batch {
            start,
            mut tasks,
            dest,
        } = batch;
        let started = Instant::now();
        crate::pool::trace_current(crate::EventKind::BatchStart, tasks.len() as u32);
        let mut written = 0usize;
        let mut failure = None;
        let mut own = match dest {
            Dest::Own => Some(Vec::with_capacity(tasks.len())),
            Dest::Slots(_) => None,
        };
        // Results that need no drop, in place, with nothing to check per task: runs of
        // `CHECK_EVERY` tasks in a plain loop (a panic mid-run leaves nothing that must be
        // dropped, and fails the call anyway), the cancel flag checked between runs.
        let plain = !std::mem::needs_drop::<T::Output>()
            && self.fail_fast.is_none()
            && self.deadline.is_none()
            && self.quiet.is_none();
        // Outside the closure: if a task panics, the tasks not yet run are not dropped while
        // unwinding (a panicking `Drop` there would abort), but below, one by one.
        let mut left = tasks.drain(..);
        let outcome = unwind::halt_unwinding(|| match &dest {
            Dest::Slots(ptr) if plain => {
                while !self.tracker.is_closed() {
                    let run = left.len().min(CHECK_EVERY);
                    if run == 0 {
                        break;
                    }
                    // SAFETY: this batch owns slots `start .. start + tasks.len()` of the output
                    // buffer (disjoint from other batches', inside its capacity:
                    // `Engine::refill`); `written` tasks were taken so far and `run` more are
                    // left, so `written .. written + run` is inside the batch's range. The buffer
                    // outlives every active runner (`Engine::new`'s contract); each slot is
                    // written once. Viewed as `MaybeUninit`, the slots may hold anything.
                    let slots = unsafe {
                        std::slice::from_raw_parts_mut(
                            ptr.0
                                .add(written)
                                .cast::<std::mem::MaybeUninit<T::Output>>(),
                            run,
                        )
                    };
                    run_plain(&mut left, slots);
                    written += run;
                }
            }
            _ => {
                for task in left.by_ref() {
                    if self.stop_before_next_task() {
                        break;
                    }
                    let value = task.run();
                    if self.fail_fast.is_some_and(|failed| failed(&value)) {
                        failure = Some(value);
                        self.tracker.close();
                        break;
                    }
                    match (&dest, &mut own) {
                        (Dest::Slots(ptr), _) => {
                            // SAFETY: this batch owns slots `start .. start + tasks.len()` of the
                            // output buffer (disjoint from every other batch's, inside its
                            // capacity: `Engine::refill`), and `written < tasks.len()`; the buffer
                            // outlives every active runner (`Engine::new`'s contract). Each slot
                            // is written once, and read only after the tracker is quiescent.
                            unsafe { ptr.0.add(written).write(value) }
                        }
                        (Dest::Own, Some(v)) => v.push(value),
                        (Dest::Own, None) => unreachable!("an Own batch has its vector"),
                    }
                    written += 1;
                }
            }
        });
        // The tasks not run (skipped after a close, or after a panic): a task's `Drop` is user
        // code, so each is dropped on its own, contained. The emptied buffer goes back to the
        // driver for a later batch (fresh multi-megabyte buffers cost a page fault per page).
        left.for_each(drop_contained);
        self.recycle(tasks);
        let panic = outcome.err();
        if panic.is_some() && self.close_on_panic {
            self.tracker.close();
        }
        crate::pool::trace_current(crate::EventKind::BatchEnd, written as u32);
        self.timing_tasks
            .fetch_add(written as u64, Ordering::Relaxed);
        self.timing_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.tasks_done.fetch_add(written, Ordering::Release);
        self.result_arrived(written);
        lock(&self.done).push(Chunk {
            start,
            written,
            own,
            panic,
            failure,
        });
        // After the push: a driver that installed its signal after our read of `waiter` finds the
        // chunk when it checks `done` (both under locks, see `Engine::wait`).
        self.notify();
    }

    /// Keeps an emptied batch buffer for the driver's next batch (a few at most).
    fn recycle(&self, buffer: Vec<T>) {
        self.spare.put(buffer);
    }

    pub(super) fn pop(&self) -> Option<Batch<T>> {
        lock(&self.queue).batches.pop_front()
    }
}

impl<T: Task> Drop for Shared<T> {
    /// Only a stream's shared state can still hold values here (a settled call holds none): the
    /// last `Arc` may go with a token, on a pool worker, which must never unwind, so each value is
    /// dropped on its own and a panic from its `Drop` is discarded.
    fn drop(&mut self) {
        let batches = std::mem::take(&mut lock(&self.queue).batches);
        batches
            .into_iter()
            .for_each(|b| b.tasks.into_iter().for_each(drop_contained));
        for chunk in std::mem::take(&mut *lock(&self.done)) {
            drop_chunk(chunk);
        }
    }
}

/// Drops a chunk's own results, payload and failure one by one, containing panics. (In-place
/// results are not the chunk's: see `dispatch::drop_written`.)
pub(crate) fn drop_chunk<R>(chunk: Chunk<R>) {
    if let Some(own) = chunk.own {
        own.into_iter().for_each(drop_contained);
    }
    if let Some(payload) = chunk.panic {
        drop_contained(payload);
    }
    drop_contained(chunk.failure);
}

/// A token's job. Never unwinds (a `spawn_unchecked` job must not): `run_batch` catches every
/// panic of a task, and anything else (a bug) is caught here and its payload discarded.
pub(super) fn token<T: Task>(shared: Arc<Shared<T>>) {
    if let Err(payload) = unwind::halt_unwinding(move || token_loop(shared)) {
        drop_contained(payload);
    }
}

/// A token: runs batches of the call until the queue is empty or the call is closed.
fn token_loop<T: Task>(shared: Arc<Shared<T>>) {
    loop {
        let batch = {
            let mut queue = lock(&shared.queue);
            // Become active only with a batch in hand: an idle token (the driver or another token
            // took the work) must not make a settling driver wait for it. `begin` under the queue
            // lock is still ordered against `close` by the tracker's fences; `settle` drains the
            // queue under this lock after closing, so we either pop a batch it will then wait
            // for, or find the tracker closed (or the queue empty).
            let batch = if queue.batches.is_empty() || !shared.tracker.begin() {
                None
            } else {
                queue.batches.pop_front()
            };
            if batch.is_none() {
                queue.tokens -= 1;
            }
            batch
        };
        let Some(batch) = batch else { return };
        shared.run_batch(batch);
        shared.tracker.finish();
        // A settling driver waits for `finish`: wake it (`run_batch`'s notify came before).
        shared.notify();
    }
}

/// Emptied batch buffers (no values in them), handed back to the driver **oldest first**.
///
/// The buffer a runner emptied last is the one whose cache lines are still in that runner's
/// cache; a driver that writes the next batch's tasks into it waits for every line to come back
/// (on 1.5 ns tasks that wait was most of the driver's pull: sqrt over 10M `f64` into a recycled
/// output ran at 0.67-0.72x sequential on 2 threads reusing the newest buffer, 1.16-1.17x reusing
/// the oldest; docs/benchmarks-history.md, round 8).
pub(crate) struct SpareBuffers<T>(Mutex<VecDeque<Vec<T>>>);

impl<T> SpareBuffers<T> {
    pub(crate) fn new() -> Self {
        SpareBuffers(Mutex::new(VecDeque::new()))
    }

    /// Keeps `buffer` (which must be empty) unless `MAX_SPARE_BUFFERS` are kept already.
    pub(crate) fn put(&self, buffer: Vec<T>) {
        debug_assert!(buffer.is_empty());
        let mut spare = lock(&self.0);
        if spare.len() < MAX_SPARE_BUFFERS {
            spare.push_back(buffer);
        }
    }

    /// The buffer kept longest, or a new (unallocated) one.
    pub(crate) fn take(&self) -> Vec<T> {
        lock(&self.0).pop_front().unwrap_or_default()
    }
}

/// Emptied batch buffers kept for reuse, per call: enough for every batch of a full window
/// (`pre_dispatch` batches of the batcher's size, cut into buffers of at most `MAX_BATCH_BYTES`),
/// so a call in its steady state allocates no buffer at all. Buffers of that size come from
/// `mmap`, and a fresh one costs a page fault per page. Spares only come from finished batches,
/// so they never outnumber the buffers the call had in flight at once.
pub(super) const MAX_SPARE_BUFFERS: usize = 64;

/// In the plain loop of `run_batch`, the cancel flag is checked once per this many tasks.
pub(super) const CHECK_EVERY: usize = 64;

/// `slots[k] = next task's result`, for every slot. A function of its own so that `slots` is a
/// `&mut` argument: the compiler may assume the writes change nothing else it reads (the tasks),
/// and can keep the loop tight or vectorise it. The caller gives no more slots than tasks left.
#[inline]
fn run_plain<T: Task>(
    tasks: &mut std::vec::Drain<'_, T>,
    slots: &mut [std::mem::MaybeUninit<T::Output>],
) {
    for (slot, task) in slots.iter_mut().zip(tasks) {
        slot.write(task.run());
    }
}

/// `slots[k] = next task's result` while the input has tasks; returns how many slots it wrote
/// (fewer than `slots.len()` only when `tasks` ran out). As [`run_plain`], `slots` is a `&mut`
/// argument so the loop can stay tight.
#[inline]
pub(super) fn fill_from<T: Task>(
    tasks: &mut impl Iterator<Item = T>,
    slots: &mut [std::mem::MaybeUninit<T::Output>],
) -> usize {
    let mut n = 0;
    for slot in slots.iter_mut() {
        let Some(task) = tasks.next() else { break };
        slot.write(task.run());
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::{SpareBuffers, MAX_SPARE_BUFFERS};

    #[test]
    fn spare_buffers_come_back_oldest_first() {
        let spare = SpareBuffers::<u64>::new();
        let [first, second, third] = [1, 2, 3].map(Vec::<u64>::with_capacity);
        let addresses = [first.as_ptr(), second.as_ptr(), third.as_ptr()];
        spare.put(first);
        spare.put(second);
        // Each taken buffer stays alive, so no address can be handed out twice.
        let reused_first = spare.take();
        assert_eq!(
            reused_first.as_ptr(),
            addresses[0],
            "the oldest buffer is reused first"
        );
        spare.put(third);
        let reused_second = spare.take();
        let reused_third = spare.take();
        assert_eq!(reused_second.as_ptr(), addresses[1]);
        assert_eq!(reused_third.as_ptr(), addresses[2]);
        assert_eq!(
            spare.take().capacity(),
            0,
            "none left: a new, unallocated buffer"
        );
    }

    #[test]
    fn spare_buffers_keep_at_most_the_cap() {
        let spare = SpareBuffers::<u64>::new();
        for _ in 0..MAX_SPARE_BUFFERS + 5 {
            spare.put(Vec::with_capacity(4));
        }
        let kept = std::iter::from_fn(|| Some(spare.take()))
            .take_while(|buffer| buffer.capacity() != 0)
            .count();
        assert_eq!(kept, MAX_SPARE_BUFFERS);
    }
}
