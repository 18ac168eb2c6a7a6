//! Scheduler traces (cargo feature `trace`): per-worker, timestamped events in per-worker buffers,
//! written without locks, exported as Chrome trace JSON or summarised.
//!
//! Buffer protocol. Each worker owns one fixed-capacity buffer and is its only writer. It writes
//! an event into slot `len`, then publishes it with a Release store of `len + 1`; a full buffer
//! drops the event and counts it. A reader (`stop_trace`) first clears `enabled`, then reads `len`
//! with Acquire and copies slots `0..len`: those were completely written before `len` was
//! published, and a worker that raced past the `enabled` check writes only at the unpublished slot
//! `len`, never below. Buffers are reset by their own worker when it sees a new generation (set by
//! `start_trace`), never by the reader, and `start_trace`/`stop_trace` are serialised by a mutex,
//! so a reset cannot overlap a copy.
//!
//! Without the feature this module compiles to nothing and every hook is an empty inline function.

use std::fmt;

/// What happened, in a [`TraceEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// The worker started running a job taken from a queue.
    TaskStart,
    /// That job returned.
    TaskEnd,
    /// The worker stole a job from worker `arg`.
    Steal,
    /// The worker took a job from the pool's injector.
    InjectorPop,
    /// The worker made one of its private forks stealable.
    Publish,
    /// The worker parked its thread.
    Sleep,
    /// The worker came back from parking.
    Wake,
    /// The worker started a `Parallel` batch of `arg` tasks (inside the job that runs batches).
    BatchStart,
    /// That batch ended after running `arg` tasks.
    BatchEnd,
}

impl EventKind {
    fn name(self) -> &'static str {
        match self {
            EventKind::TaskStart | EventKind::TaskEnd => "task",
            EventKind::Steal => "steal",
            EventKind::InjectorPop => "injector pop",
            EventKind::Publish => "publish",
            EventKind::Sleep | EventKind::Wake => "sleep",
            EventKind::BatchStart | EventKind::BatchEnd => "batch",
        }
    }
}

/// One event of one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceEvent {
    /// Nanoseconds since the pool was built.
    pub time_ns: u64,
    /// What happened.
    pub kind: EventKind,
    /// The victim's index for [`EventKind::Steal`], else 0.
    pub arg: u32,
}

/// The events recorded between `ThreadPool::start_trace` and
/// `ThreadPool::stop_trace` (cargo feature `trace`).
#[derive(Debug, Clone)]
pub struct Trace {
    workers: Vec<Vec<TraceEvent>>,
    dropped: u64,
}

impl Trace {
    /// The events of worker `index`, in time order.
    pub fn events(&self, worker: usize) -> &[TraceEvent] {
        &self.workers[worker]
    }

    /// Number of workers traced.
    pub fn num_workers(&self) -> usize {
        self.workers.len()
    }

    /// Events lost because a worker's buffer was full ([`TRACE_CAPACITY`] per worker).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The trace in the Chrome trace event format (a JSON object with `traceEvents`), which
    /// Perfetto (ui.perfetto.dev) and `chrome://tracing` open as one timeline row per worker.
    /// Tasks are duration events (`B`/`E`), sleeps too; steals, injector pops and publications are
    /// instant events whose `args` name the victim.
    pub fn to_chrome_json(&self) -> String {
        let mut out = String::from("{\"displayTimeUnit\":\"ns\",\"traceEvents\":[");
        let mut first = true;
        let mut push = |out: &mut String, event: String| {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(&event);
        };
        for (tid, events) in self.workers.iter().enumerate() {
            push(
                &mut out,
                format!(
                    "{{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":1,\"tid\":{tid},\"args\":{{\"name\":\"worker {tid}\"}}}}"
                ),
            );
            for e in events {
                let ts = e.time_ns as f64 / 1000.0;
                let name = e.kind.name();
                let event = match e.kind {
                    EventKind::TaskStart | EventKind::Sleep => {
                        format!("{{\"name\":\"{name}\",\"ph\":\"B\",\"ts\":{ts:.3},\"pid\":1,\"tid\":{tid}}}")
                    }
                    EventKind::BatchStart => format!(
                        "{{\"name\":\"{name}\",\"ph\":\"B\",\"ts\":{ts:.3},\"pid\":1,\"tid\":{tid},\"args\":{{\"tasks\":{}}}}}",
                        e.arg
                    ),
                    EventKind::TaskEnd | EventKind::Wake | EventKind::BatchEnd => {
                        format!("{{\"name\":\"{name}\",\"ph\":\"E\",\"ts\":{ts:.3},\"pid\":1,\"tid\":{tid}}}")
                    }
                    EventKind::Steal => format!(
                        "{{\"name\":\"{name}\",\"ph\":\"i\",\"s\":\"t\",\"ts\":{ts:.3},\"pid\":1,\"tid\":{tid},\"args\":{{\"victim\":{}}}}}",
                        e.arg
                    ),
                    EventKind::InjectorPop | EventKind::Publish => {
                        format!("{{\"name\":\"{name}\",\"ph\":\"i\",\"s\":\"t\",\"ts\":{ts:.3},\"pid\":1,\"tid\":{tid}}}")
                    }
                };
                push(&mut out, event);
            }
        }
        out.push_str(&format!(
            "],\"otherData\":{{\"dropped_events\":{}}}}}",
            self.dropped
        ));
        out
    }

    /// Writes [`to_chrome_json`](Self::to_chrome_json) to `path`.
    ///
    /// # Errors
    /// Any I/O error from creating or writing the file.
    pub fn write_chrome_json(&self, path: impl AsRef<std::path::Path>) -> std::io::Result<()> {
        std::fs::write(path, self.to_chrome_json())
    }

    /// Per worker: time running jobs, sleeping, and neither (searching or running inline work
    /// outside a queued job), over the traced window; steals per (thief, victim) pair.
    pub fn summary(&self) -> TraceSummary {
        let start = self
            .workers
            .iter()
            .filter_map(|w| w.first())
            .map(|e| e.time_ns)
            .min()
            .unwrap_or(0);
        let end = self
            .workers
            .iter()
            .filter_map(|w| w.last())
            .map(|e| e.time_ns)
            .max()
            .unwrap_or(0);
        let n = self.workers.len();
        let mut steals = vec![vec![0u64; n]; n];
        let mut workers = Vec::with_capacity(n);
        for (thief, events) in self.workers.iter().enumerate() {
            let (mut in_task, mut asleep) = (0u64, 0u64);
            let (mut task_depth, mut task_since, mut sleep_since) = (0u32, None, None);
            for e in events {
                match e.kind {
                    EventKind::TaskStart => {
                        if task_depth == 0 {
                            task_since = Some(e.time_ns);
                        }
                        task_depth += 1;
                    }
                    EventKind::TaskEnd => {
                        task_depth = task_depth.saturating_sub(1);
                        if task_depth == 0 {
                            if let Some(since) = task_since.take() {
                                in_task += e.time_ns - since;
                            }
                        }
                    }
                    EventKind::Sleep => sleep_since = Some(e.time_ns),
                    EventKind::Wake => {
                        if let Some(since) = sleep_since.take() {
                            asleep += e.time_ns - since;
                        }
                    }
                    EventKind::Steal => {
                        if let Some(row) = steals.get_mut(thief) {
                            if let Some(cell) = row.get_mut(e.arg as usize) {
                                *cell += 1;
                            }
                        }
                    }
                    EventKind::InjectorPop
                    | EventKind::Publish
                    | EventKind::BatchStart
                    | EventKind::BatchEnd => {}
                }
            }
            // A task or sleep still open when the trace stopped lasts until the window's end.
            if let Some(since) = task_since {
                in_task += end - since;
            }
            if let Some(since) = sleep_since {
                asleep += end - since;
            }
            let window = end - start;
            workers.push(WorkerTime {
                busy_ns: in_task,
                sleeping_ns: asleep,
                other_ns: window.saturating_sub(in_task + asleep),
            });
        }
        TraceSummary {
            window_ns: end - start,
            workers,
            steals,
        }
    }
}

/// Time split of one worker over a trace window (see [`Trace::summary`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerTime {
    /// Inside jobs taken from a queue (outermost job only, so nested jobs are not counted twice).
    pub busy_ns: u64,
    /// Parked.
    pub sleeping_ns: u64,
    /// The rest: searching for work, spinning, bookkeeping.
    pub other_ns: u64,
}

/// What [`Trace::summary`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceSummary {
    /// From the first to the last event of the trace.
    pub window_ns: u64,
    /// One entry per worker.
    pub workers: Vec<WorkerTime>,
    /// `steals[thief][victim]`.
    pub steals: Vec<Vec<u64>>,
}

impl fmt::Display for TraceSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pct = |ns: u64| {
            if self.window_ns == 0 {
                0.0
            } else {
                ns as f64 * 100.0 / self.window_ns as f64
            }
        };
        writeln!(f, "trace window: {:.3} ms", self.window_ns as f64 / 1e6)?;
        writeln!(
            f,
            "{:>6} {:>8} {:>9} {:>8}",
            "worker", "busy %", "sleeping %", "other %"
        )?;
        for (i, w) in self.workers.iter().enumerate() {
            writeln!(
                f,
                "{:>6} {:>8.1} {:>9.1} {:>8.1}",
                i,
                pct(w.busy_ns),
                pct(w.sleeping_ns),
                pct(w.other_ns)
            )?;
        }
        writeln!(f, "steals (row: thief, column: victim)")?;
        for (thief, row) in self.steals.iter().enumerate() {
            let cells: Vec<String> = row.iter().map(|c| format!("{c:>6}")).collect();
            writeln!(f, "{thief:>6} {}", cells.join(" "))?;
        }
        Ok(())
    }
}

/// Events each worker can hold per trace; later events are dropped and counted.
pub const TRACE_CAPACITY: usize = 1 << 16;

#[cfg(feature = "trace")]
pub(crate) use enabled::PoolTrace;

#[cfg(feature = "trace")]
mod enabled {
    use super::{drop_unopened_ends, EventKind, Trace, TraceEvent, TRACE_CAPACITY};
    use std::cell::UnsafeCell;
    use std::mem::MaybeUninit;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Mutex, OnceLock};
    use std::time::Instant;

    /// One worker's buffer. Single writer (the worker), readers only under `PoolTrace::control`.
    pub(crate) struct WorkerTrace {
        /// Allocated by the first `start_trace` (so pools that are never traced cost nothing).
        slots: OnceLock<Box<[UnsafeCell<MaybeUninit<TraceEvent>>]>>,
        len: AtomicUsize,
        generation: AtomicU64,
        dropped: AtomicU64,
    }

    // SAFETY: slots are written only by the owning worker, at the unpublished index `len`, and read
    // by others only below the published `len` (Release/Acquire) — see the module docs.
    unsafe impl Sync for WorkerTrace {}

    impl WorkerTrace {
        fn new() -> Self {
            WorkerTrace {
                slots: OnceLock::new(),
                len: AtomicUsize::new(0),
                generation: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
            }
        }
    }

    pub(crate) struct PoolTrace {
        enabled: AtomicBool,
        generation: AtomicU64,
        control: Mutex<()>,
        workers: Box<[WorkerTrace]>,
    }

    impl PoolTrace {
        pub(crate) fn new(num_workers: usize) -> Self {
            PoolTrace {
                enabled: AtomicBool::new(false),
                generation: AtomicU64::new(0),
                control: Mutex::new(()),
                workers: (0..num_workers).map(|_| WorkerTrace::new()).collect(),
            }
        }

        /// Worker `index` records an event (no-op unless a trace is running).
        #[inline]
        pub(crate) fn record(&self, index: usize, epoch: Instant, kind: EventKind, arg: u32) {
            if !self.enabled.load(Ordering::Relaxed) {
                return;
            }
            let buffer = &self.workers[index];
            // Acquire (inside `get`): pairs with the initialisation in `start`.
            let Some(slots) = buffer.slots.get() else {
                return;
            };
            let generation = self.generation.load(Ordering::Acquire);
            if buffer.generation.load(Ordering::Relaxed) != generation {
                // Only the owner resets its buffer; readers are excluded by the control mutex
                // (a reader copies only while no trace runs, and start bumps the generation).
                buffer.len.store(0, Ordering::Relaxed);
                buffer.dropped.store(0, Ordering::Relaxed);
                // Release: a reader that sees the new generation also sees the reset `len`.
                buffer.generation.store(generation, Ordering::Release);
            }
            let len = buffer.len.load(Ordering::Relaxed);
            if len >= slots.len() {
                buffer.dropped.store(
                    buffer.dropped.load(Ordering::Relaxed) + 1,
                    Ordering::Relaxed,
                );
                return;
            }
            let event = TraceEvent {
                time_ns: epoch.elapsed().as_nanos() as u64,
                kind,
                arg,
            };
            // SAFETY: slot `len` is unpublished, and only this worker (the owner) writes it.
            unsafe { (*slots[len].get()).write(event) };
            buffer.len.store(len + 1, Ordering::Release);
        }

        pub(crate) fn start(&self) {
            let _control = self.control.lock().unwrap();
            for buffer in self.workers.iter() {
                buffer.slots.get_or_init(|| {
                    (0..TRACE_CAPACITY)
                        .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
                        .collect()
                });
            }
            self.generation.fetch_add(1, Ordering::AcqRel);
            self.enabled.store(true, Ordering::Release);
        }

        pub(crate) fn stop(&self) -> Trace {
            let _control = self.control.lock().unwrap();
            self.enabled.store(false, Ordering::Release);
            let generation = self.generation.load(Ordering::Acquire);
            let mut dropped = 0;
            let workers: Vec<Vec<TraceEvent>> = self
                .workers
                .iter()
                .map(|buffer| {
                    if buffer.generation.load(Ordering::Acquire) != generation {
                        return Vec::new(); // this worker recorded nothing in this trace
                    }
                    let Some(slots) = buffer.slots.get() else {
                        return Vec::new();
                    };
                    let len = buffer.len.load(Ordering::Acquire);
                    dropped += buffer.dropped.load(Ordering::Relaxed);
                    (0..len)
                        // SAFETY: slots below the published `len` are initialised and no
                        // longer written (see the module docs).
                        .map(|i| unsafe { (*slots[i].get()).assume_init() })
                        .collect()
                })
                .collect();
            Trace {
                workers: workers.into_iter().map(drop_unopened_ends).collect(),
                dropped,
            }
        }
    }
}

/// Drops end events whose start happened before the trace started (a task or sleep already in
/// progress at `start_trace`), so every worker's events are properly nested: each end has its start
/// earlier in the trace. Starts may stay open at the end (still running at `stop_trace`).
#[cfg(feature = "trace")]
fn drop_unopened_ends(events: Vec<TraceEvent>) -> Vec<TraceEvent> {
    let (mut tasks, mut sleeps, mut batches) = (0u32, 0u32, 0u32);
    events
        .into_iter()
        .filter(|e| {
            let depth = match e.kind {
                EventKind::TaskStart | EventKind::TaskEnd => &mut tasks,
                EventKind::Sleep | EventKind::Wake => &mut sleeps,
                EventKind::BatchStart | EventKind::BatchEnd => &mut batches,
                _ => return true,
            };
            match e.kind {
                EventKind::TaskStart | EventKind::Sleep | EventKind::BatchStart => {
                    *depth += 1;
                    true
                }
                _ if *depth == 0 => false,
                _ => {
                    *depth -= 1;
                    true
                }
            }
        })
        .collect()
}
