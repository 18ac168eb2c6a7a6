//! Progress reporting for one call, on the calling thread: the `on_progress` callback, joblib's
//! `verbose` lines on stderr, and (cargo feature `progress`) an `indicatif` bar.
//!
//! Line format, as joblib's `Parallel._print` / `print_progress` (`T` is `" %5.1fs"` up to a
//! minute, then `"%4.1fmin"`; `w` is the width of the task count, 3 when it is unknown):
//!
//! ```text
//! [Parallel(n_jobs=2)]: Using backend WorkStealing with 2 concurrent workers.
//! [Parallel(n_jobs=2)]: Done  4 out of 10 | elapsed:    0.0s
//! [Parallel(n_jobs=2)]: Done   4 tasks      | elapsed:    0.0s
//! [Parallel(n_jobs=2)]: Done 10 out of 10 | elapsed:    0.1s finished
//! ```
//!
//! How often: at `verbose > 10` after every update; at `1..=10` with joblib's quadratic spacing
//! (a line when `floor(sqrt(done / s))` changes, `s = 0.5 * (11 - verbose)^2`), so higher levels
//! print more often.

use crate::pool::unwind::{drop_contained, halt_unwinding, resume_unwinding, Panic};
use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The user's callback, shared by a `Parallel` and the iterators it made, with the reports that
/// arrived while it was busy. A plain std `Mutex` (not part of any protocol loom checks), held
/// only to take the callback out, queue a report or put the callback back: the callback runs with
/// no lock held, so it may itself drive a call of the same `Parallel`.
pub(crate) type Callback<'p> = Arc<Mutex<CallbackSlot<'p>>>;

/// The callback itself, boxed.
pub(crate) type UserCallback<'p> = Box<dyn FnMut(usize, Option<usize>) + Send + 'p>;

/// Counts `from..=to` (possibly none) of one call, waiting in the queue.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Report {
    /// The call's `Progress::id`.
    call: u64,
    from: usize,
    to: usize,
    total: Option<usize>,
    /// The call has ended: no later report of it will come and deliver this one.
    last: bool,
}

/// See [`Callback`].
pub(crate) struct CallbackSlot<'p> {
    /// `None` while some thread runs it.
    callback: Option<UserCallback<'p>>,
    /// The thread running it, while it is out.
    holder: Option<std::thread::ThreadId>,
    /// Reports not yet delivered, oldest first: at most one entry per call and run of counts.
    queued: VecDeque<Report>,
}

/// A new shared slot holding `callback`.
pub(crate) fn shared_callback(callback: UserCallback<'_>) -> Callback<'_> {
    Arc::new(Mutex::new(CallbackSlot {
        callback: Some(callback),
        holder: None,
        queued: VecDeque::new(),
    }))
}

fn lock<'a, 'p>(slot: &'a Mutex<CallbackSlot<'p>>) -> std::sync::MutexGuard<'a, CallbackSlot<'p>> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// Queues `report`, merged into its call's newest entry when it continues it: a call's reports
/// follow each other, so the queue holds about one entry per call running at once, however
/// long the callback is busy.
fn enqueue(queued: &mut VecDeque<Report>, report: Report) {
    if let Some(newest) = queued.iter_mut().rev().find(|q| q.call == report.call) {
        if report.from > report.to {
            // No counts: it only says the call has ended (its skipped counts stay skipped).
            newest.last |= report.last;
            return;
        }
        if newest.to + 1 == report.from {
            newest.to = report.to;
            newest.last |= report.last;
            return;
        }
    }
    if report.from <= report.to {
        queued.push_back(report);
    }
}

/// What the thread holding the callback delivers before it puts it back: the entries queued when
/// it took the callback (`prefix`, its own included), then the entries of the calls that had
/// ended by the time those were delivered (`ended`, taken once). Both are fixed when taken, so a
/// holder's work for others is bounded however fast other calls report or end (counted until
/// nothing was left, a holder delivered for a thread that kept ending short calls for as long
/// as it did); what arrives later waits for the next report of any call, or the slot's drop.
struct Owed {
    prefix: usize,
    ended: Option<Vec<u64>>,
}

impl Owed {
    fn next(&mut self, queued: &mut VecDeque<Report>) -> Option<Report> {
        if self.prefix > 0 {
            self.prefix -= 1;
            return queued.pop_front();
        }
        let ended = self
            .ended
            .get_or_insert_with(|| queued.iter().filter(|q| q.last).map(|q| q.call).collect());
        // Each ended call's entries in order: the first of any of them in the queue.
        let at = queued.iter().position(|q| ended.contains(&q.call))?;
        queued.remove(at)
    }
}

/// Runs `callback` for each count of `report`, catching a panic (the rest of that report's counts
/// are then not delivered).
fn run_report(callback: &mut UserCallback<'_>, report: Report) -> Result<(), Panic> {
    halt_unwinding(|| {
        for k in report.from..=report.to {
            callback(k, report.total);
        }
    })
}

impl Drop for CallbackSlot<'_> {
    /// Every handle is gone (the `Parallel`, its streams, its calls): the counts still queued are
    /// delivered now, in order, each under a catch. A panic from the callback here is dropped:
    /// no call is left to fail.
    fn drop(&mut self) {
        let Some(callback) = self.callback.as_mut() else {
            return;
        };
        while let Some(next) = self.queued.pop_front() {
            if let Err(payload) = run_report(callback, next) {
                drop_contained(payload);
            }
        }
    }
}

/// Delivers `report`, never blocking.
///
/// If another thread runs the callback (another call of the same `Parallel` reports there), the
/// report is queued, and that thread delivers it before it puts the callback back if the call
/// had ended by then (see [`Owed`]), else the next report of any call does, at the latest the
/// slot's drop. (Waiting for the callback instead hung a callback that waited for a call of the
/// same `Parallel` on another thread, which waited for the callback; dropping the report lost
/// counts of calls that merely ran at the same time.)
/// If this thread runs it (the callback drives a call of the same `Parallel` here, or a job this
/// thread runs while the callback waits in the pool does), the report is skipped: queued, it
/// would run the callback once more per nested report, and a callback that drives a call in
/// every report would never return.
///
/// Each invocation runs under a catch: a panic from the callback (user code) must not strand the
/// reports other calls left to this thread. The rest of the panicking report's counts are not
/// delivered (as with a call's own report), the queue is served as usual, the callback is put
/// back, and the first panic is resumed here, in whichever call's thread ran the callback.
fn deliver(slot: &Mutex<CallbackSlot<'_>>, report: Report) {
    let mut guard = lock(slot);
    let here = std::thread::current().id();
    let Some(mut callback) = guard.callback.take() else {
        if guard.holder != Some(here) {
            enqueue(&mut guard.queued, report);
        }
        return;
    };
    guard.holder = Some(here);
    enqueue(&mut guard.queued, report);
    let mut owed = Owed {
        prefix: guard.queued.len(),
        ended: None,
    };
    let mut first_panic = None;
    loop {
        let Some(next) = owed.next(&mut guard.queued) else {
            // Put back under the same lock that found nothing owed: a report queued after this
            // finds the callback in its slot and delivers itself.
            guard.callback = Some(callback);
            guard.holder = None;
            drop(guard);
            if let Some(payload) = first_panic {
                resume_unwinding(payload);
            }
            return;
        };
        drop(guard);
        if let Err(payload) = run_report(&mut callback, next) {
            match first_panic {
                None => first_panic = Some(payload),
                Some(_) => drop_contained(payload),
            }
        }
        guard = lock(slot);
    }
}

/// Identifies a call's reports in a shared callback's queue.
static NEXT_CALL_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub(crate) struct Progress<'p> {
    callback: Option<Callback<'p>>,
    /// This call's id in the callback's queue.
    id: u64,
    /// The call's end was reported (`finish`).
    ended: bool,
    verbose: u32,
    requested_n_jobs: i32,
    total: Option<usize>,
    reported: usize,
    /// When the call started (only read for verbose lines: not taken otherwise).
    started: Option<Instant>,
    #[cfg(feature = "progress")]
    bar: Option<indicatif::ProgressBar>,
}

impl Drop for Progress<'_> {
    /// A call that ends without `finish` (a failure, a timeout, a panic, a stream dropped early)
    /// says so like a finished one, so the counts it left queued go out with the callback's
    /// current holder. A panic from the callback here is dropped: the call is failing or gone.
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        if let Some(slot) = &self.callback {
            let (call, total) = (self.id, self.total);
            let (from, to) = (self.reported + 1, self.reported);
            let ended = Report {
                call,
                from,
                to,
                total,
                last: true,
            };
            if let Err(payload) = halt_unwinding(|| deliver(slot, ended)) {
                drop_contained(payload);
            }
        }
    }
}

fn format_time(seconds: f64) -> String {
    if seconds <= 60.0 {
        format!(" {seconds:5.1}s")
    } else {
        format!("{:4.1}min", seconds / 60.0)
    }
}

impl<'p> Progress<'p> {
    pub(crate) fn new(
        callback: Option<Callback<'p>>,
        verbose: u32,
        requested_n_jobs: i32,
        total: Option<usize>,
        bar: bool,
    ) -> Self {
        #[cfg(not(feature = "progress"))]
        let _ = bar;
        Progress {
            callback,
            id: NEXT_CALL_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            ended: false,
            verbose,
            requested_n_jobs,
            total,
            reported: 0,
            started: (verbose > 0).then(Instant::now),
            #[cfg(feature = "progress")]
            bar: bar.then(|| match total {
                Some(n) => indicatif::ProgressBar::new(n as u64),
                None => indicatif::ProgressBar::new_spinner(),
            }),
        }
    }

    fn line(&self, message: &str) {
        if self.verbose == 0 {
            return;
        }
        let _ = writeln!(
            std::io::stderr().lock(),
            "[Parallel(n_jobs={})]: {message}",
            self.requested_n_jobs
        );
    }

    /// joblib's "Using backend ..." line, for calls that run on a pool.
    pub(crate) fn announce(&self, backend: &str, workers: usize) {
        if self.verbose == 0 {
            // Not even formatted: a silent call must not pay for the message (an allocation).
            return;
        }
        self.line(&format!(
            "Using backend {backend} with {workers} concurrent workers."
        ));
    }

    fn width(&self) -> usize {
        match self.total {
            Some(n) if n > 0 => (n as f64).log10().floor() as usize + 1,
            _ => 3,
        }
    }

    fn should_print(&self, done: usize) -> bool {
        if self.verbose > 10 {
            return true;
        }
        let scale = 0.5 * f64::from(11 - self.verbose).powi(2);
        let before = ((done - 1) as f64 / scale).sqrt().floor();
        let after = (done as f64 / scale).sqrt().floor();
        before != after || done == 1
    }

    /// Nothing to report to: no callback, not verbose, no bar.
    pub(crate) fn is_silent(&self) -> bool {
        #[cfg(feature = "progress")]
        let bar = self.bar.is_some();
        #[cfg(not(feature = "progress"))]
        let bar = false;
        self.callback.is_none() && self.verbose == 0 && !bar
    }

    /// `done` tasks have completed so far (monotone).
    pub(crate) fn update(&mut self, done: usize) {
        self.report(done, false);
    }

    /// `update`, and with `last` the call's end: counts of it still queued are then delivered by
    /// whoever holds the callback, since this call reports no more.
    fn report(&mut self, done: usize, last: bool) {
        let fresh = done > self.reported;
        if !fresh && !last {
            return;
        }
        // With nothing new, an empty range (`from > to`): it only marks the call's queued counts
        // as its last.
        let (from, to) = (self.reported + 1, done.max(self.reported));
        // Marked reported first: a panicking callback does not see these updates again.
        self.reported = to;
        // The total came from the input's `size_hint`, which may lie: past it, the total is not
        // known (reporting "4 of 3" would be a count that contradicts its own total).
        if self.total.is_some_and(|total| to > total) {
            self.total = None;
        }
        self.ended |= last;
        if let Some(slot) = &self.callback {
            let (call, total) = (self.id, self.total);
            deliver(
                slot,
                Report {
                    call,
                    from,
                    to,
                    total,
                    last,
                },
            );
        }
        if !fresh {
            return;
        }
        #[cfg(feature = "progress")]
        if let Some(bar) = &self.bar {
            bar.set_position(done as u64);
        }
        if self.verbose > 0 && self.should_print(done) && Some(done) != self.total {
            let w = self.width();
            let elapsed = format_time(self.started.map_or(0.0, |t| t.elapsed().as_secs_f64()));
            let msg = match self.total {
                Some(n) => format!("Done {done:>w$} out of {n:>w$} | elapsed: {elapsed}"),
                None => format!(
                    "Done {done:>w$} tasks {:pad$}| elapsed: {elapsed}",
                    "",
                    pad = 7 + w - 5
                ),
            };
            self.line(&msg);
        }
    }

    /// The final report of a call that succeeded with `results`, which are handed back. The
    /// callback is user code and may panic; the results are then dropped here, each on its own
    /// and contained, and its panic returned (left to the unwinding, a result whose `Drop`
    /// panics too aborts the process).
    pub(crate) fn finish_with<R>(&mut self, results: Vec<R>) -> Result<Vec<R>, Panic> {
        match halt_unwinding(|| self.finish(results.len())) {
            Ok(()) => Ok(results),
            Err(payload) => {
                results.into_iter().for_each(drop_contained);
                Err(payload)
            }
        }
    }

    /// Every task finished: the final line.
    pub(crate) fn finish(&mut self, done: usize) {
        self.report(done, true);
        #[cfg(feature = "progress")]
        if let Some(bar) = &self.bar {
            bar.finish();
        }
        if self.verbose > 0 {
            let w = self
                .width()
                .max((done.max(1) as f64).log10().floor() as usize + 1);
            let elapsed = format_time(self.started.map_or(0.0, |t| t.elapsed().as_secs_f64()));
            self.line(&format!(
                "Done {done:>w$} out of {done:>w$} | elapsed: {elapsed} finished"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{format_time, Progress};
    use std::sync::{Arc, Mutex};

    /// joblib's quadratic spacing: at verbose 10 (scale 0.5) a line whenever floor(sqrt(2·done))
    /// changes; at verbose 1 (scale 50) far fewer; above 10 every update.
    #[test]
    fn verbose_levels_space_lines_quadratically() {
        let printed = |verbose: u32| {
            let p = Progress::new(None, verbose, 2, None, false);
            (1..=200).filter(|&d| p.should_print(d)).collect::<Vec<_>>()
        };
        let every = printed(11);
        assert_eq!(every.len(), 200);
        let ten = printed(10);
        assert_eq!(&ten[..6], &[1, 2, 5, 8, 13, 18]);
        let one = printed(1);
        assert_eq!(one, vec![1, 50, 200]);
        assert!(one.len() < ten.len());
    }

    #[test]
    fn times_format_like_joblib() {
        assert_eq!(format_time(0.04), "   0.0s");
        assert_eq!(format_time(59.9), "  59.9s");
        assert_eq!(format_time(90.0), " 1.5min");
    }

    /// Every completed task is reported once, in order, even when updates skip counts.
    #[test]
    fn the_callback_sees_every_count_once() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let callback =
            super::shared_callback(Box::new(move |done: usize, total: Option<usize>| {
                log.lock().unwrap().push((done, total))
            }));
        let mut p = Progress::new(Some(callback), 0, 2, Some(5), false);
        p.update(2);
        p.update(2);
        p.update(1);
        p.finish(5);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen, (1..=5).map(|d| (d, Some(5))).collect::<Vec<_>>());
    }

    /// Reports made while the callback runs: on another thread, queued (not dropped, not waited
    /// for) and delivered at that call's next report or its end; on the thread running the
    /// callback, skipped.
    #[test]
    fn reports_made_while_the_callback_runs_are_queued_or_skipped() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let other: Arc<Mutex<Option<Progress<'static>>>> = Arc::new(Mutex::new(None));
        let (log, others) = (Arc::clone(&seen), Arc::clone(&other));
        let callback =
            super::shared_callback(Box::new(move |done: usize, total: Option<usize>| {
                log.lock().unwrap().push((done, total));
                if total == Some(2) && done == 1 {
                    let mut guard = others.lock().unwrap();
                    let other = guard.as_mut().expect("set below");
                    // On this thread: skipped. On another thread, waited for here: queued.
                    other.update(1);
                    std::thread::scope(|s| {
                        s.spawn(|| other.update(3));
                    });
                }
            }));
        *other.lock().unwrap() = Some(Progress::new(
            Some(Arc::clone(&callback)),
            0,
            2,
            Some(3),
            false,
        ));
        let mut first = Progress::new(Some(callback), 0, 2, Some(2), false);
        first.update(2);
        assert_eq!(*seen.lock().unwrap(), vec![(1, Some(2)), (2, Some(2))]);
        // The other call's end delivers what it left queued (a report of any call would).
        other.lock().unwrap().as_mut().unwrap().finish(3);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![(1, Some(2)), (2, Some(2)), (2, Some(3)), (3, Some(3))],
            "the other call's counts, each once and in order"
        );
    }

    type Log = Arc<Mutex<Vec<(usize, Option<usize>)>>>;

    /// A shared callback that logs every `(done, total)`, then runs `react(total, itself)`, where
    /// `itself` is the callback's own slot (held weakly in between, so the slot can be dropped;
    /// `None` while it is), for `react` to start other calls on.
    fn logging_callback(
        react: impl Fn(Option<usize>, Option<super::Callback<'static>>) + Send + 'static,
    ) -> (super::Callback<'static>, Log) {
        let seen = Log::default();
        let log = Arc::clone(&seen);
        let itself: Arc<Mutex<std::sync::Weak<Mutex<super::CallbackSlot<'static>>>>> =
            Arc::default();
        let reach = Arc::clone(&itself);
        let callback = super::shared_callback(Box::new(move |done, total| {
            log.lock().unwrap().push((done, total));
            let slot = reach.lock().unwrap().upgrade();
            react(total, slot);
        }));
        *itself.lock().unwrap() = Arc::downgrade(&callback);
        (callback, seen)
    }

    /// A call that ends while another thread's report runs the callback leaves its counts to
    /// that thread, which delivers them before it puts the callback back, even when the callback
    /// panicked meanwhile (its panic is resumed after); the callback is back afterwards.
    #[test]
    fn an_ended_calls_counts_are_delivered_even_if_the_callback_panics() {
        let (callback, seen) = logging_callback(|total, itself| {
            if total == Some(1) {
                std::thread::scope(|s| {
                    s.spawn(|| Progress::new(itself, 0, 2, Some(2), false).finish(2));
                });
                panic!("callback");
            }
        });
        let mut first = Progress::new(Some(Arc::clone(&callback)), 0, 2, Some(1), false);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| first.update(1)));
        let payload = caught.expect_err("the callback panicked");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"callback"));
        assert_eq!(
            *seen.lock().unwrap(),
            vec![(1, Some(1)), (1, Some(2)), (2, Some(2))]
        );
        Progress::new(Some(callback), 0, 2, Some(4), false).update(1);
        let last = seen.lock().unwrap().last().copied();
        assert_eq!(last, Some((1, Some(4))), "the callback is back");
    }

    /// A call that ends without `finish` (here: dropped after one count, as a failed call or a
    /// stream dropped early is) while another thread runs the callback hands its queued count to
    /// that thread, like a finished call.
    #[test]
    fn a_call_dropped_unfinished_hands_its_counts_over() {
        let (callback, seen) = logging_callback(|total, itself| {
            if total == Some(1) {
                std::thread::scope(|s| {
                    s.spawn(|| Progress::new(itself, 0, 2, Some(9), false).update(1));
                });
            }
        });
        let mut first = Progress::new(Some(Arc::clone(&callback)), 0, 2, Some(1), false);
        first.update(1);
        // `callback` is still alive, so the slot's drop (which delivers what is left) is not
        // what delivered it.
        assert_eq!(*seen.lock().unwrap(), vec![(1, Some(1)), (1, Some(9))]);
        drop((first, callback));
    }

    /// The thread holding the callback delivers for others only what it owed when it started:
    /// a call that ends while it delivers an ended call's counts is left to the next report of
    /// any call (here none comes, so to the slot's drop). Counted until nothing was left, a
    /// holder delivered for a thread that kept ending calls for as long as it did (here a chain:
    /// each delivery ends the next call).
    #[test]
    fn a_holder_delivers_only_what_it_owed() {
        let (callback, seen) = logging_callback(|total, itself| {
            // The call of total 1 ends call 101 on another thread; call 101 ends call 102. Call
            // 102's count is delivered by the slot's drop, where the callback's panic is dropped.
            let next = match total {
                Some(1) => 101,
                Some(101) => 102,
                Some(102) => panic!("in the slot's drop"),
                _ => return,
            };
            std::thread::scope(|s| {
                s.spawn(|| Progress::new(itself, 0, 2, Some(next), false).finish(1));
            });
        });
        let mut first = Progress::new(Some(Arc::clone(&callback)), 0, 2, Some(1), false);
        first.finish(1);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![(1, Some(1)), (1, Some(101))],
            "call 102 ended after the holder's account was taken"
        );
        // No call is left to report (the first one finished: its drop says nothing more): the
        // slot's drop delivers what is left.
        drop(first);
        assert_eq!(seen.lock().unwrap().len(), 2);
        drop(callback);
        assert_eq!(seen.lock().unwrap().last(), Some(&(1, Some(102))));
    }

    /// A call dropped unfinished while its counts wait in the queue delivers them from its own
    /// drop when the callback is free; a panic from the callback there is dropped, not resumed
    /// (the drop may run while the call's own panic unwinds).
    #[test]
    fn a_panic_from_the_callback_in_a_calls_drop_is_contained() {
        let parked: Arc<Mutex<Option<Progress<'static>>>> = Arc::default();
        let park = Arc::clone(&parked);
        let (callback, seen) = logging_callback(move |total, itself| match total {
            // Another thread's call reports once while this report runs, and is parked.
            Some(1) => std::thread::scope(|s| {
                s.spawn(|| {
                    let mut other = Progress::new(itself, 0, 2, Some(5), false);
                    other.update(1);
                    *park.lock().unwrap() = Some(other);
                });
            }),
            Some(5) => panic!("in a call's drop"),
            _ => {}
        });
        let mut first = Progress::new(Some(Arc::clone(&callback)), 0, 2, Some(1), false);
        first.update(1);
        // The parked call is still running: its count waits in the queue.
        assert_eq!(*seen.lock().unwrap(), vec![(1, Some(1))]);
        let other = parked.lock().unwrap().take().expect("parked");
        drop(other);
        assert_eq!(*seen.lock().unwrap(), vec![(1, Some(1)), (1, Some(5))]);
        drop((first, callback));
    }
}
