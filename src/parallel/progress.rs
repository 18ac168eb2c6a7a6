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

use crate::pool::unwind::{drop_contained, halt_unwinding, Panic};
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

/// Counts `from..=to` of a call whose length is `total`.
type Report = (usize, usize, Option<usize>);

/// See [`Callback`].
pub(crate) struct CallbackSlot<'p> {
    /// `None` while some thread runs it.
    callback: Option<UserCallback<'p>>,
    /// The thread running it, while it is out.
    holder: Option<std::thread::ThreadId>,
    /// Reports not yet delivered, oldest first. Only non-empty while the callback is out: the
    /// thread running it delivers them before it puts it back.
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

/// Puts the callback back into its slot if a report panicked (the reports still queued stay
/// there, for the next thread that takes it out).
struct PutBack<'a, 'p> {
    slot: &'a Mutex<CallbackSlot<'p>>,
    callback: Option<UserCallback<'p>>,
}

impl Drop for PutBack<'_, '_> {
    fn drop(&mut self) {
        if let Some(callback) = self.callback.take() {
            let mut slot = lock(self.slot);
            slot.callback = Some(callback);
            slot.holder = None;
        }
    }
}

/// Delivers `report`, never blocking. If another thread runs the callback (another call of the
/// same `Parallel` reports there), the report is queued, and that thread delivers it, in order,
/// before it puts the callback back: waiting for the callback instead hung a callback that waited
/// for a call of the same `Parallel` on another thread (which waited for the callback), and
/// dropping the report lost counts of calls that merely ran at the same time. If this thread runs
/// it (the callback drives a call of the same `Parallel` here), the report is skipped: queued, it
/// would run the callback once more per nested report, and a callback that drives a call in every
/// report would never return.
fn deliver(slot: &Mutex<CallbackSlot<'_>>, report: Report) {
    let mut guard = lock(slot);
    let here = std::thread::current().id();
    let Some(callback) = guard.callback.take() else {
        if guard.holder != Some(here) {
            guard.queued.push_back(report);
        }
        return;
    };
    guard.holder = Some(here);
    guard.queued.push_back(report);
    let mut holder = PutBack {
        slot,
        callback: Some(callback),
    };
    loop {
        let Some((from, to, total)) = guard.queued.pop_front() else {
            // Put back under the same lock that saw the queue empty: a report queued after this
            // finds the callback in its slot and delivers itself.
            guard.callback = holder.callback.take();
            guard.holder = None;
            return;
        };
        drop(guard);
        let callback = holder.callback.as_mut().expect("held until put back");
        for k in from..=to {
            callback(k, total);
        }
        guard = lock(slot);
    }
}

pub(crate) struct Progress<'p> {
    callback: Option<Callback<'p>>,
    verbose: u32,
    requested_n_jobs: i32,
    total: Option<usize>,
    reported: usize,
    /// When the call started (only read for verbose lines: not taken otherwise).
    started: Option<Instant>,
    #[cfg(feature = "progress")]
    bar: Option<indicatif::ProgressBar>,
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
        if done <= self.reported {
            return;
        }
        let from = self.reported + 1;
        // Marked reported first: a panicking callback does not see these updates again.
        self.reported = done;
        if let Some(slot) = &self.callback {
            deliver(slot, (from, done, self.total));
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
        self.update(done);
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

    /// A report made on another thread while the callback runs is queued, not dropped and not
    /// waited for, and delivered after the report in progress, before that report returns; one
    /// made on the thread running the callback (a call the callback drives) is skipped.
    #[test]
    fn reports_made_while_the_callback_runs_are_queued_or_skipped() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let other: Arc<Mutex<Option<Progress<'static>>>> = Arc::new(Mutex::new(None));
        let (log, others) = (Arc::clone(&seen), Arc::clone(&other));
        let callback =
            super::shared_callback(Box::new(move |done: usize, total: Option<usize>| {
                log.lock().unwrap().push((done, total));
                if total == Some(2) && done == 1 {
                    let mut other = others.lock().unwrap().take().expect("set below");
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
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![(1, Some(2)), (2, Some(2)), (2, Some(3)), (3, Some(3))],
            "the other thread's counts come after the running report's, none lost"
        );
    }
}
