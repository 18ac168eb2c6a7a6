//! `run` / `try_run`: results in input order, assembled from the engine's chunks.
//!
//! With an input of exact known length (`size_hint`), results are written straight into the
//! output vector: each batch owns the disjoint slot range `[start, start + len)`
//! ([`Dest::Slots`](super::engine::Dest)). Batches past that capacity (a lying `size_hint`, or an
//! unknown length) collect their own vector, appended in order at the end.
//!
//! # Soundness with borrowed tasks
//! Tasks, results and the output buffer may borrow the caller's stack. [`Call`], a local of
//! [`run_on_pool`] that is never handed out (so it cannot be leaked), owns the engine and ends
//! every call: [`Call::finish`] on the normal path, its `Drop` on unwinding (a panicking input
//! iterator or progress callback unwinds through it). Both first [`settle`](Engine::settle) the
//! engine (close, wait until no runner is active) and only then drop values of the call's types,
//! on this thread: unstarted tasks, the chunks' own vectors, panic payloads, failures, the
//! results written in place (the output vector's length is still 0), and the input. Each of
//! those drops is contained (`drop_contained`), so a panicking `Drop` skips neither the wait nor
//! the other values, and never runs while a panic unwinds; a panic from the input's `Drop` is
//! resumed as the call's only if it came first. `settled` is set only after the wait.

use super::backend::Plan;
use super::engine::{drop_chunk, drop_unstarted, Chunk, Engine, Setup, Stop, Task, Waited};
use crate::pool::unwind::{drop_contained, halt_unwinding, resume_unwinding};
use std::time::Instant;

/// Runs every task; results in input order.
pub(crate) fn run<I, T>(
    tasks: I,
    setup: Setup<'_>,
    fail_fast: Option<fn(&T::Output) -> bool>,
) -> Result<Vec<T::Output>, Stop<T::Output>>
where
    I: Iterator<Item = T>,
    T: Task + Send,
    T::Output: Send,
{
    match setup.plan {
        Plan::Inline => run_inline(tasks, setup, fail_fast),
        Plan::Pool {
            ref pool, runners, ..
        } if runners >= 2
            && setup.exact_len == Some(2)
            && setup.limits.timeout.is_none()
            && setup.limits.budget.is_none() =>
        {
            run_pair(tasks, setup, fail_fast)
        }
        Plan::Pool {
            ref pool,
            runners,
            caller_runs,
            ..
        } => {
            let pool = (pool.clone(), runners, caller_runs);
            run_on_pool(tasks, setup, pool, fail_fast)
        }
    }
}

/// A call of exactly two tasks: [`ThreadPool::join`](crate::ThreadPool::join), which from outside
/// the pool runs the first task on the calling thread and offers the second to the workers
/// (taking it back if none has started it), with no engine state at all. Both tasks run (or
/// panic) before it returns; a panic is resumed as `join` resumes it (the first task's, else the
/// second's).
fn run_pair<I, T>(
    mut tasks: I,
    mut setup: Setup<'_>,
    fail_fast: Option<fn(&T::Output) -> bool>,
) -> Result<Vec<T::Output>, Stop<T::Output>>
where
    I: Iterator<Item = T>,
    T: Task + Send,
    T::Output: Send,
{
    let Plan::Pool {
        pool,
        runners,
        caller_runs,
        ..
    } = &setup.plan
    else {
        unreachable!("a pair runs on a pool")
    };
    // The input's `next()` and `Drop` and the tasks are user code: whichever panics first, the
    // other values here are dropped contained before its panic goes on (left to the unwinding,
    // a `Drop` that panicked too aborted the process). The input is dropped after the tasks ran,
    // as on the general path, so a task's panic comes before its `Drop`'s.
    use crate::pool::unwind::{halt_unwinding, resume_unwinding};
    let mut pulled = [None, None, None];
    let mut first = halt_unwinding(|| {
        for slot in &mut pulled {
            *slot = tasks.next();
            if slot.is_none() {
                break;
            }
        }
    })
    .err();
    if first.is_none() && !matches!(pulled, [Some(_), Some(_), None]) {
        // The input's `size_hint` said exactly two tasks, and lied (safe code may): the general
        // path runs every task, those pulled here first. (Trusted, the hint lost the tasks after
        // the second, or panicked on a missing one.) An input that already said `None` is not
        // asked again: an iterator that is not fused may yield more after its end, and the
        // general path never pulls past the first `None` either.
        let ended = pulled.iter().any(Option::is_none);
        let pool = (pool.clone(), *runners, *caller_runs);
        let rest = tasks.take(if ended { 0 } else { usize::MAX });
        let tasks = pulled.into_iter().flatten().chain(rest);
        // The length it said is wrong: the batcher must not size batches by it.
        setup.exact_len = None;
        return run_on_pool(tasks, setup, pool, fail_fast);
    }
    // The third slot is empty: the input ended after two tasks, or panicked before.
    let [a, b, _] = pulled;
    let joined = match (a, b) {
        (Some(a), Some(b)) if first.is_none() => {
            // From outside the pool the caller runs A, and B too when no worker took it: as on
            // the general path (`run_from_input`, `help`), `Parallel` calls they make nest into
            // `pool`, not the default pool (on a worker of `pool` this changes nothing).
            let nest = |task: T| move || super::backend::running_tasks_of(pool, || task.run());
            halt_unwinding(|| pool.join(nest(a), nest(b)))
                .map_err(|payload| first = Some(payload))
                .ok()
        }
        // The input panicked.
        (a, b) => {
            drop_contained(a);
            drop_contained(b);
            None
        }
    };
    if let Err(payload) = halt_unwinding(move || drop(tasks)) {
        crate::pool::unwind::keep_first(&mut first, payload);
    }
    if let Some(payload) = first {
        // Each on its own: in one `drop_contained`, the second `Drop` to panic would do so
        // while the first one's panic unwound.
        if let Some((ra, rb)) = joined {
            drop_contained(ra);
            drop_contained(rb);
        }
        resume_unwinding(payload);
    }
    let (ra, rb) = joined.expect("joined unless something panicked");
    // The callback is user code: if it panics, both results are dropped contained before its
    // panic goes on (left to the unwinding, a result whose `Drop` panics aborts the process).
    if let Err(payload) = halt_unwinding(|| setup.progress.update(2)) {
        drop_contained(ra);
        drop_contained(rb);
        resume_unwinding(payload);
    }
    if let Some(failed) = fail_fast {
        if failed(&ra) {
            drop_contained(rb);
            return Err(Stop::Failed {
                index: 0,
                value: ra,
            });
        }
        if failed(&rb) {
            drop_contained(ra);
            return Err(Stop::Failed {
                index: 1,
                value: rb,
            });
        }
    }
    // `finish` reports no new count, but may still run the callback: while no thread runs it, a
    // report runs it for other calls' queued reports too (`progress.rs`). So its panic is caught
    // like `update`'s, with both results dropped contained (round 9 review: a report queued by a
    // stream of the same `Parallel` on another thread, delivered here to a callback that panicked,
    // unwound over `ra` and `rb`; one whose `Drop` panicked aborted the process).
    setup
        .progress
        .finish_with(vec![ra, rb])
        .map_err(Stop::Panic)
}

/// The sequential path: every task on this thread, in order; a panic (a task's, the input's,
/// the progress callback's) is resumed as it is.
///
/// The results collected so far are user values whose `Drop` may panic, even while a panic
/// unwinds (which aborts the process): so the loop runs under a catch, and on a panic they are
/// dropped each on its own, contained, before it is resumed, as the pool path does (see the
/// module docs); the results a `Stop` does not return likewise, and the input too before a
/// panic is resumed.
fn run_inline<I, T>(
    mut tasks: I,
    mut setup: Setup<'_>,
    fail_fast: Option<fn(&T::Output) -> bool>,
) -> Result<Vec<T::Output>, Stop<T::Output>>
where
    I: Iterator<Item = T>,
    T: Task,
{
    let mut out = Vec::new();
    let ran = halt_unwinding(|| inline_loop(&mut tasks, &mut setup, fail_fast, &mut out));
    // The input's `Drop` is user code too: contained after a panic; otherwise its panic is the
    // call's. (Dropped at the end of this function, it unwound with the results in the return
    // value, which were leaked or, with a `Stop`'s value, dropped while unwinding.)
    let ran = match ran {
        Err(payload) => {
            drop_contained(tasks);
            Err(payload)
        }
        Ok(stopped) => match halt_unwinding(move || drop(tasks)) {
            Ok(()) => Ok(stopped),
            Err(payload) => {
                drop_contained(stopped);
                Err(payload)
            }
        },
    };
    match ran {
        Ok(Ok(())) => Ok(out),
        Ok(Err(stop)) => {
            out.into_iter().for_each(drop_contained);
            Err(stop)
        }
        Err(payload) => {
            out.into_iter().for_each(drop_contained);
            resume_unwinding(payload)
        }
    }
}

/// [`run_inline`]'s loop: the results go to `out` (empty when called).
fn inline_loop<I, T>(
    tasks: &mut I,
    setup: &mut Setup<'_>,
    fail_fast: Option<fn(&T::Output) -> bool>,
    out: &mut Vec<T::Output>,
) -> Result<(), Stop<T::Output>>
where
    I: Iterator<Item = T>,
    T: Task,
{
    let limits = setup.limits;
    if fail_fast.is_none()
        && limits.timeout.is_none()
        && limits.budget.is_none()
        && setup.progress.is_silent()
    {
        // Nothing to check between tasks: the plain loop. `extend` is the fastest one for std's
        // iterators of known length (the joblib spelling over a zip of slices took 1.7x as long
        // pushed one by one: 22.4 against 12.8 ms for 10M tasks), but it reserves what the
        // input's `size_hint` (user code) claims, and a claim beyond memory aborted the process.
        // So it runs only once room for the exact length claimed is reserved; else push.
        if setup
            .exact_len
            .is_some_and(|len| out.try_reserve(len).is_ok())
        {
            out.extend(tasks.map(Task::run));
        } else {
            for task in tasks {
                out.push(task.run());
            }
        }
        setup.progress.finish(out.len());
        return Ok(());
    }
    super::reserve_for_hint(out, setup.exact_len);
    let mut index = 0;
    while let Some(task) = tasks.next() {
        // The timeout times the task alone: pulling the input and the progress callback are
        // user code of the caller's, not a wait for a result (as in a call on a pool).
        let started = limits.timeout.map(|_| Instant::now());
        let value = task.run();
        let ran_for = started.map(|started| started.elapsed());
        if fail_fast.is_some_and(|failed| failed(&value)) {
            // The callback is user code: if it panics, the failure it was told about is dropped
            // on its own, contained (held here while that panic unwound, a `Drop` that panicked
            // too aborted the process), and the callback's panic is the call's.
            if let Err(payload) = halt_unwinding(|| setup.progress.update(index + 1)) {
                drop_contained(value);
                resume_unwinding(payload);
            }
            return Err(Stop::Failed { index, value });
        }
        out.push(value);
        index += 1;
        setup.progress.update(index);
        if limits.timeout.is_none() && limits.budget.is_none() {
            continue;
        }
        // The timeout expired (this task took longer): stop. The deadline passed: stop, unless
        // nothing is left to skip.
        let now = Instant::now();
        let expired = match (limits.timeout, limits.budget, ran_for) {
            (Some(t), _, Some(ran_for)) if ran_for > t => Some(t),
            // Pull the next task to see whether the deadline skips one. It is dropped unrun, on
            // its own and contained, as every unstarted task is (left in a `Peekable`, it was
            // dropped with the loop's locals, and a panic from its `Drop` replaced the timeout).
            // The input's own panic unwinds to `run_inline`, which drops the input contained.
            (_, Some((budget, at)), _) if now >= at => match tasks.next() {
                Some(task) => {
                    drop_contained(task);
                    Some(budget)
                }
                // The end: nothing was skipped, and an input that is not fused is not asked
                // again (it may yield more after its `None`).
                None => break,
            },
            _ => None,
        };
        if let Some(limit) = expired {
            return Err(Stop::Timeout {
                completed: index,
                limit,
            });
        }
    }
    setup.progress.finish(out.len());
    Ok(())
}

/// One call on a pool: the engine, the chunks collected so far, and the output buffer they
/// write into. See the module docs.
struct Call<'p, I, T: Task> {
    engine: Engine<'p, I, T>,
    chunks: Vec<Chunk<T::Output>>,
    /// The output buffer (a local of the calling frame declared before the call, so it outlives
    /// it): on the unwinding path the results written there in place are dropped through it.
    base: *mut T::Output,
    /// `finish` has settled the call and taken everything: the drop has nothing left to do.
    settled: bool,
}

impl<I, T: Task> Drop for Call<'_, I, T> {
    /// The unwinding path: settle, then drop everything of the call's types, each value on its
    /// own, containing panics from their `Drop`.
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let (unstarted, done) = self.engine.settle();
        self.settled = true;
        self.chunks.extend(done);
        drop_unstarted(unstarted);
        let chunks = std::mem::take(&mut self.chunks);
        let base = self.base;
        drop_written(base, &chunks);
        chunks.into_iter().for_each(drop_chunk);
    }
}

/// Results written in place by the chunks: drop them (the output vector's length stays 0, so it
/// would otherwise leak them).
/// Each result is dropped on its own and a panic from its `Drop` (user code) is discarded, so one
/// panicking result neither skips the others nor unwinds into a second panic.
pub(super) fn drop_written<R>(base: *mut R, chunks: &[Chunk<R>]) {
    for chunk in chunks.iter().filter(|c| c.own.is_none()) {
        for k in chunk.start..chunk.start + chunk.written {
            // SAFETY: slots `start .. start + written` were initialised by the chunk's batch,
            // which has finished (the call is settled); nothing else owns or reads them, and each
            // is read (moved out) exactly once, here.
            drop_contained(unsafe { base.add(k).read() });
        }
    }
}

fn run_on_pool<I, T>(
    tasks: I,
    setup: Setup<'_>,
    pool: (crate::ThreadPool, usize, bool),
    fail_fast: Option<fn(&T::Output) -> bool>,
) -> Result<Vec<T::Output>, Stop<T::Output>>
where
    I: Iterator<Item = T>,
    T: Task + Send,
    T::Output: Send,
{
    let mut out: Vec<T::Output> = Vec::new();
    super::reserve_for_hint(&mut out, setup.exact_len);
    let base = out.as_mut_ptr();
    // SAFETY: `call` is a local of this frame, declared after `out` (so dropped before it) and
    // never handed out; on every path it settles the engine before anything the tasks borrow or
    // `out` goes away: `finish` below, or its `Drop` on unwinding. `base` has room for
    // `out.capacity()` values, and `out` is not touched until the call is settled.
    let mut engine =
        unsafe { Engine::new(tasks, setup, pool, fail_fast, Some((base, out.capacity()))) };
    engine.runs_from_input();
    let mut call = Call {
        engine,
        chunks: Vec::new(),
        base,
        settled: false,
    };
    // A limit that passed: `(limit, true)` for the timeout (fails the call), `(budget, false)` for
    // the deadline (fails it only if a task was skipped).
    let mut timed_out = None;
    loop {
        let engine = &mut call.engine;
        engine.take_done(&mut call.chunks);
        let done = engine
            .shared
            .tasks_done
            .load(std::sync::atomic::Ordering::Acquire);
        engine.report(done);
        engine.driver_was_busy();
        if engine.shared.tracker.is_closed() {
            break;
        }
        let all_pulled_ran = engine.exhausted && done == engine.pulled;
        if engine.past_deadline() && !all_pulled_ran {
            timed_out = engine.limits.budget.map(|(b, _)| (b, false));
            break;
        }
        engine.refill(None);
        if engine.exhausted && call.chunks.len() == engine.batches {
            break;
        }
        // Help: run the next tasks straight from the input, else a queued batch, else wait.
        if let Some(chunk) = engine.run_from_input() {
            call.chunks.push(chunk);
            continue;
        }
        if engine.help() {
            continue;
        }
        // With a timeout the runners keep the time of the latest result (the driver's own
        // batches included) and of the driver's last user code: the wait counts from there.
        let since = engine
            .shared
            .quiet
            .as_ref()
            .map(|quiet| quiet.last_result());
        if let Waited::Expired(limit, whole_call) = engine.wait(since) {
            timed_out = Some((limit, !whole_call));
            break;
        }
    }
    call.finish(out, timed_out)
}

impl<I, T> Call<'_, I, T>
where
    I: Iterator<Item = T>,
    T: Task + Send,
    T::Output: Send,
{
    /// The normal end of a call: settle, then build the result or the reason it stopped.
    fn finish(
        mut self,
        mut out: Vec<T::Output>,
        timed_out: Option<(std::time::Duration, bool)>,
    ) -> Result<Vec<T::Output>, Stop<T::Output>> {
        let (unstarted, done) = self.engine.settle();
        self.settled = true;
        self.chunks.extend(done);
        // From here on the shared state holds nothing of the call's types, and everything below
        // runs on this thread.
        drop_unstarted(unstarted);
        let mut chunks = std::mem::take(&mut self.chunks);
        let engine = &mut self.engine;
        let completed = engine
            .shared
            .tasks_done
            .load(std::sync::atomic::Ordering::Acquire);
        // A runner found the timeout expired: that fails the call, whatever the driver saw (a
        // deadline it woke for would let a call that skipped nothing succeed).
        let timeout_hit = engine
            .shared
            .timeout_hit
            .load(std::sync::atomic::Ordering::Relaxed)
            .then(|| engine.limits.timeout.map(|t| (t, true)))
            .flatten();
        let timed_out = timeout_hit.or(timed_out).or_else(|| {
            engine
                .shared
                .deadline_hit
                .load(std::sync::atomic::Ordering::Relaxed)
                .then(|| engine.limits.budget.map(|(b, _)| (b, false)))
                .flatten()
        });
        // The first panic caught (in arrival order), else the failure with the smallest index.
        let mut panic = None;
        let mut failure: Option<(usize, T::Output)> = None;
        for chunk in &mut chunks {
            if let Some(payload) = chunk.panic.take() {
                crate::pool::unwind::keep_first(&mut panic, payload);
            }
            if let Some(value) = chunk.failure.take() {
                let index = chunk.start + chunk.written;
                match &failure {
                    Some((first, _)) if *first < index => drop_contained(value),
                    _ => {
                        if let Some((_, old)) = failure.replace((index, value)) {
                            drop_contained(old);
                        }
                    }
                }
            }
        }
        // An expired timeout fails the call; a deadline that passed while the last tasks ran
        // skipped nothing: that call succeeded (see docs/joblib.md, "Timeouts").
        let mut timed_out = timed_out.filter(|_| panic.is_none() && failure.is_none());
        if let Some((_, false)) = timed_out {
            if completed == engine.pulled {
                match engine.input_has_more() {
                    Ok(true) => {}
                    Ok(false) => timed_out = None,
                    // The input's panic is the call's.
                    Err(payload) => {
                        panic = Some(payload);
                        timed_out = None;
                    }
                }
            }
        }
        // The input's `Drop` (user code) runs here, where its panic can take its place in the
        // call's outcome (see `Engine::drop_input`): the call's panic if it is the first.
        if let Err(payload) = engine.drop_input() {
            crate::pool::unwind::keep_first(&mut panic, payload);
        }
        let timed_out = timed_out
            .filter(|_| panic.is_none())
            .map(|(limit, _)| limit);
        if panic.is_some() || failure.is_some() || timed_out.is_some() {
            drop_written(self.base, &chunks);
            chunks.into_iter().for_each(drop_chunk);
            if let Some(payload) = panic {
                if let Some((_, value)) = failure {
                    drop_contained(value);
                }
                return Err(Stop::Panic(payload));
            }
            if let Some((index, value)) = failure {
                return Err(Stop::Failed { index, value });
            }
            return Err(Stop::Timeout {
                completed,
                limit: timed_out.unwrap_or_default(),
            });
        }
        // Every batch finished in full: slots `0 .. in_place` are initialised, the rest are in
        // `own` vectors.
        let in_place = chunks
            .iter()
            .filter(|c| c.own.is_some())
            .map(|c| c.start)
            .min()
            .unwrap_or(engine.pulled);
        // SAFETY: every batch with `Dest::Slots` covered a range below the capacity, batches were
        // cut in input order, and all of them finished writing (`completed == pulled`, and the
        // call is settled: Acquire), so exactly the slots `0 .. in_place` are initialised.
        unsafe { out.set_len(in_place) };
        chunks.retain(|c| c.own.is_some());
        chunks.sort_unstable_by_key(|c| c.start);
        for chunk in chunks {
            out.extend(chunk.own.into_iter().flatten());
        }
        // Counts not reported yet (the last batches', when the loop left on a deadline that
        // skipped nothing) are reported here, with every result in `out`.
        engine.progress.finish_with(out).map_err(Stop::Panic)
    }
}
