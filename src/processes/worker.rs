//! The worker process: what runs in the child that procspawn starts.
//!
//! Start-up, in order: no core dumps (a crashing task must not write a `core` file into the
//! working directory), die with the parent (`PR_SET_PDEATHSIG`, Linux), check that the binary's
//! layout matches the parent's ([`super::wire`]), run the pool's initializer, send
//! `Ready`. Then, until the parent closes the request channel: receive a batch, run it, send the
//! outcomes (into the batch's shared-memory slab when it came in one and they fit, else in the
//! reply). A task that crashes takes this process with it; the parent notices the closed
//! channel and starts another worker.

use super::shm::{WorkerSlabs, WorkerView};
use super::wire::{self, FromWorker};
use ipc_channel::ipc::{IpcBytesReceiver, IpcReceiver, IpcSender};
use serde::{Deserialize, Serialize};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

/// What the parent hands a new worker (through procspawn, serialized).
#[derive(Serialize, Deserialize)]
pub(crate) struct WorkerArgs {
    pub(crate) requests: IpcBytesReceiver,
    pub(crate) replies: IpcSender<FromWorker>,
    /// The pool's shared-memory slabs ([`shm`](super::shm)), sent before the first request
    /// that names a slab.
    pub(crate) slabs: IpcReceiver<WorkerSlabs>,
    /// The parent's `offset_of(layout_probe)`.
    pub(crate) layout: i64,
    /// The parent's pid: if the worker's parent is already another process, the parent died
    /// before `PR_SET_PDEATHSIG` was armed, and the worker leaves at once.
    pub(crate) parent: u32,
    /// The offset of the pool's `fn()` initializer, if any.
    pub(crate) initializer: Option<i64>,
}

/// The worker's whole life (procspawn's entry point in the child).
pub(crate) fn worker_main(args: WorkerArgs) {
    harden(args.parent);
    let fail = |message: &str| {
        let _ = args
            .replies
            .send(FromWorker::InitFailed(message.to_owned()));
    };
    if args.layout != wire::offset_of(wire::layout_probe as fn() -> u64 as usize) {
        fail(
            "the worker's executable differs from the parent's (parjob must be linked statically)",
        );
        return;
    }
    if let Some(offset) = args.initializer {
        // SAFETY: `offset` was computed by the parent as `checked_offset(f as usize)` for a
        // `fn()` in the object that holds `anchor` (a function anywhere else made `build` fail
        // before any worker started), and this is the same executable with the same layout
        // (checked above), so every function of that object sits at the same offset from
        // `anchor` here as there; adding our `anchor` back gives the address of that same `fn()`
        // in this process, so the transmuted pointer has the right signature and points to code.
        let initializer: fn() = unsafe { std::mem::transmute(wire::address_at(offset)) };
        if let Err(payload) = catch_unwind(initializer) {
            fail(&wire::panic_message(&*payload));
            return;
        }
    }
    if args.replies.send(FromWorker::Ready).is_err() {
        return;
    }
    let mut slabs: Option<WorkerView> = None;
    let mut out = Vec::new();
    while let Ok(request) = args.requests.recv() {
        let Some((functions, count, slab, len, inline)) = wire::split_request(&request) else {
            return;
        };
        let (input, area) = if slab == wire::INLINE {
            (inline, None)
        } else {
            if slabs.is_none() {
                slabs = args.slabs.recv().ok().and_then(WorkerView::new);
            }
            match slabs
                .as_mut()
                .and_then(|view| view.slab(slab as usize, len as usize))
            {
                Some((input, area)) => (input, Some(area)),
                None => return,
            }
        };
        let started = Instant::now();
        // SAFETY: the parent wrote `functions.runner` with `runner_offset::<F, A, R>()`, the
        // offset of a monomorphized `run_batch` in the object that holds `anchor` (checked there
        // before sending) of this same executable, whose type is exactly `Runner`; the layout
        // check at start-up showed offsets mean the same here, so `address_at` gives that
        // function's address in this process.
        let run: wire::Runner = unsafe { std::mem::transmute(wire::address_at(functions.runner)) };
        let mut sink = wire::Sink::new(area.unwrap_or_default(), &mut out);
        // `run_batch` catches each task's panic itself, its arguments' `Deserialize` included
        // (each task's arguments are a frame of their own); this catch is for a panic outside
        // any task, which `run_batch` does not expect: the worker exits, and the parent re-sends
        // the tasks one by one as after a crash. The payload is user data whose `Drop` may
        // panic: dropped contained, so the exit stays this orderly one.
        // SAFETY: the parent wrote `functions.function` in the same header as the runner, as the
        // checked offset of the `fn` pointer of type `F` that this batch's tasks hold (`Call`
        // puts only tasks of one function in a batch), which is `run_batch::<F, A, R>`'s
        // contract; the layout check covers the offset as it covers the runner's.
        let ran = catch_unwind(AssertUnwindSafe(|| unsafe {
            run(functions.function, input, count, &mut sink)
        }));
        if let Err(payload) = ran {
            crate::pool::unwind::drop_contained(payload);
            return;
        }
        let elapsed_ns = started.elapsed().as_nanos() as u64;
        let reply = match sink.in_area() {
            Some(len) if slab != wire::INLINE => FromWorker::BatchInSlab {
                elapsed_ns,
                len: len as u64,
            },
            _ => FromWorker::Batch {
                elapsed_ns,
                outcomes: std::mem::take(&mut out),
            },
        };
        let sent = args.replies.send(reply);
        if sent.is_err() {
            return;
        }
    }
}

/// No core files; die with the parent.
fn harden(parent: u32) {
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `no_core` is a valid `rlimit` that outlives the call; `setrlimit` only reads it.
    unsafe {
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `PR_SET_PDEATHSIG` takes one integer argument (the signal); the variadic call
        // passes exactly that, as a C `unsigned long`.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
        }
        // SAFETY: `getppid` has no preconditions and cannot fail.
        if unsafe { libc::getppid() } as u32 != parent {
            std::process::exit(0);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = parent;
}
