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
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The user's callback, shared by a `Parallel` and the iterators it made. A plain std `Mutex`
/// (not part of any protocol loom checks), held only to take the callback out or put it back:
/// the callback runs with no lock held, so it may itself drive a call of the same `Parallel`.
pub(crate) type Callback<'p> = Arc<Mutex<Option<UserCallback<'p>>>>;

/// The callback itself, boxed.
pub(crate) type UserCallback<'p> = Box<dyn FnMut(usize, Option<usize>) + Send + 'p>;

/// Puts a callback back into its slot when dropped (also when the callback panicked).
struct PutBack<'a, 'p> {
    slot: &'a Mutex<Option<UserCallback<'p>>>,
    callback: Option<UserCallback<'p>>,
}

impl Drop for PutBack<'_, '_> {
    fn drop(&mut self) {
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = self.callback.take();
    }
}

/// Takes the callback out of its slot. `None` while it is out: either this thread is inside it
/// (a callback that drives another call of the same `Parallel`: that call's updates are not
/// reported, rather than deadlocking), or another thread driving a call of the same `Parallel`
/// is inside it (then this waits until it is back, so calls never run it concurrently).
fn take_out<'a, 'p>(
    slot: &'a Mutex<Option<UserCallback<'p>>>,
    running_here: &std::cell::Cell<bool>,
) -> Option<PutBack<'a, 'p>> {
    loop {
        if let Some(callback) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Some(PutBack {
                slot,
                callback: Some(callback),
            });
        }
        if running_here.get() {
            return None;
        }
        std::thread::yield_now();
    }
}

std::thread_local! {
    /// This thread is inside some `on_progress` callback.
    static IN_CALLBACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
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
            IN_CALLBACK.with(|here| {
                if let Some(mut taken) = take_out(slot, here) {
                    let outer = here.replace(true);
                    /// Restores the thread's flag, also when the callback panics.
                    struct Restore<'a>(&'a std::cell::Cell<bool>, bool);
                    impl Drop for Restore<'_> {
                        fn drop(&mut self) {
                            self.0.set(self.1);
                        }
                    }
                    let _restore = Restore(here, outer);
                    let callback = taken.callback.as_mut().expect("taken out above");
                    for k in from..=done {
                        (callback)(k, self.total);
                    }
                }
            });
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
        let callback: super::Callback<'static> = Arc::new(Mutex::new(Some(Box::new(
            move |done: usize, total: Option<usize>| log.lock().unwrap().push((done, total)),
        ))));
        let mut p = Progress::new(Some(callback), 0, 2, Some(5), false);
        p.update(2);
        p.update(2);
        p.update(1);
        p.finish(5);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen, (1..=5).map(|d| (d, Some(5))).collect::<Vec<_>>());
    }
}
