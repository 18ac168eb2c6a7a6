//! The pool's shared-memory slabs: where batch arguments and outcomes travel without being copied
//! through a socket.
//!
//! A pool owns two memfd-backed mappings made with ipc-channel's [`IpcSharedMemory`], cut into
//! [`SLABS_PER_WORKER`] × workers slabs: an *argument* area per slab (written by the parent,
//! mapped read-only in the workers) and an *outcome* area per slab (written by the worker that
//! ran the slab's batch, read by the parent). Every worker maps both (its driver sends them before
//! the first request that names a slab), so whichever worker takes a batch finds its arguments in
//! place. The pool makes the mappings on a background thread when a call first batches several
//! tasks together (zeroing them takes milliseconds); until they exist, batches travel in the
//! messages.
//!
//! **Who may touch a slab.** A slab belongs to the holder of its [`Lease`] (taken from the free
//! list by the call that encodes a batch into it, released when the last `Arc<Lease>` drops):
//! * the call writes the argument area before queueing the batch, and reads the outcome area only
//!   after the worker's reply said it wrote it;
//! * the worker running the batch reads the argument area and writes the outcome area only
//!   between receiving the request and sending the reply (both are socket system calls, which
//!   order the memory accesses on either side of them);
//! * a batch that never reached a worker, or whose worker died or was killed (and reaped, so it
//!   writes nothing more), gives the slab back with its lease.
//!
//! So no byte is ever accessed by two parties at once, as long as tasks are memory-safe. A task
//! that writes through wild pointers can corrupt any outcome area, since every worker maps all
//! of them read-write, including one the parent is decoding at that moment (the argument area
//! is read-only in workers: the parent's copy of the arguments, used to re-send a crashed
//! batch's tasks, stays intact). Outcome bytes are only ever decoded, and decoding checks their
//! structure, but a plausible wrong value can get through: like any memory-unsafe code in a
//! task, such writes are outside what the process backend isolates (it isolates crashes).
//!
//! A batch whose arguments do not fit a slab, or that finds no free slab, travels inline in the
//! socket message instead (the previous path), and so do outcomes that do not fit.

use ipc_channel::ipc::IpcSharedMemory;
use std::sync::{Arc, Mutex};

/// Slabs per worker: room for the dispatch window (2 batches per worker by default), a batch
/// being decoded, and a finished one waiting for an earlier one.
pub(crate) const SLABS_PER_WORKER: usize = 6;

/// Bytes of one slab's argument area (a batch closes when the next task does not fit).
pub(crate) const SLAB_ARGS: usize = 512 << 10;

/// Bytes of one slab's outcome area (a larger batch of outcomes travels inline).
pub(crate) const SLAB_OUTCOMES: usize = 512 << 10;

/// The pool's slabs (parent side).
pub(crate) struct Arena {
    /// The mappings the parent writes arguments into and reads outcomes from; kept alive (and
    /// never dereferenced as a whole) for `args_base` and `outcomes_base`.
    args: IpcSharedMemory,
    outcomes: IpcSharedMemory,
    args_base: *mut u8,
    outcomes_base: *const u8,
    free: Mutex<Vec<usize>>,
}

// SAFETY: the raw pointers point into mappings owned by this value (`args`, `outcomes`), which
// live as long as it does and are shared-memory mappings, valid from any thread. Access to the
// bytes behind them is only through a `Lease`, which gives exclusive use of one slab (see the
// module documentation), so sharing the `Arena` between threads creates no data race.
unsafe impl Send for Arena {}
// SAFETY: through `&Arena` other threads only clone the mappings' handles (`for_worker`), take
// slabs from the free list (behind a mutex) and read the two base pointers; the bytes behind
// those pointers are accessed only through a `Lease`, one holder per slab (module docs), so
// shared use of the `Arena` creates no data race on them.
unsafe impl Sync for Arena {}

impl Arena {
    /// An arena for `workers` workers.
    pub(crate) fn new(workers: usize) -> Arena {
        let slabs = SLABS_PER_WORKER * workers.max(1);
        let mut args = IpcSharedMemory::from_byte(0, slabs * SLAB_ARGS);
        let outcomes = IpcSharedMemory::from_byte(0, slabs * SLAB_OUTCOMES);
        // SAFETY: `deref_mut` is unsafe because another holder of the same memory could access
        // it at the same time; here it is only used to obtain the base pointer, and every later
        // access goes through a `Lease` (exclusive per slab, module documentation).
        let args_base = unsafe { args.deref_mut() }.as_mut_ptr();
        let outcomes_base = outcomes.as_ptr();
        Arena {
            args,
            outcomes,
            args_base,
            outcomes_base,
            free: Mutex::new((0..slabs).rev().collect()),
        }
    }

    /// What a worker needs to map the slabs.
    pub(crate) fn for_worker(&self) -> WorkerSlabs {
        WorkerSlabs {
            args: self.args.clone(),
            outcomes: self.outcomes.clone(),
        }
    }

    /// A free slab, if there is one.
    pub(crate) fn lease(self: &Arc<Self>) -> Option<Lease> {
        let index = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
        Some(Lease {
            arena: Arc::clone(self),
            index,
        })
    }
}

/// Exclusive use of one slab until dropped (see the module documentation).
pub(crate) struct Lease {
    arena: Arc<Arena>,
    index: usize,
}

impl Lease {
    /// The slab's number, as the request names it to the worker.
    pub(crate) fn index(&self) -> usize {
        self.index
    }

    /// The argument area, to encode a batch into (before it is queued).
    pub(crate) fn args_mut(&mut self) -> &mut [u8] {
        // SAFETY: `index < slabs`, so the range lies inside the argument mapping, which lives as
        // long as `self.arena`. The lease is the only one for this slab and `&mut self` makes
        // this borrow unique in this process; no worker writes argument areas (they are
        // read-only there), and none reads this one before the batch is queued, which needs the
        // borrow to have ended.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.arena.args_base.add(self.index * SLAB_ARGS),
                SLAB_ARGS,
            )
        }
    }

    /// The first `len` bytes of the argument area (to re-send a crashed batch's tasks).
    pub(crate) fn args(&self, len: usize) -> &[u8] {
        let len = len.min(SLAB_ARGS);
        // SAFETY: `index < slabs` and `len <= SLAB_ARGS`, so the range lies inside the argument
        // mapping, which lives as long as `self.arena`. Workers cannot write argument areas
        // (read-only there), and in this process only the lease holder writes this one, through
        // `args_mut`, which needs `&mut self` and so cannot overlap this borrow.
        unsafe { std::slice::from_raw_parts(self.arena.args_base.add(self.index * SLAB_ARGS), len) }
    }

    /// The first `len` bytes of the outcome area, once the worker has replied that it wrote
    /// them.
    pub(crate) fn outcomes(&self, len: usize) -> &[u8] {
        let len = len.min(SLAB_OUTCOMES);
        // SAFETY: inside the outcome mapping (`index < slabs`, `len <= SLAB_OUTCOMES`). The
        // worker that wrote the area replied before this is called and writes this slab no
        // more (a new batch needs a new lease for it, which this one blocks); nothing in this
        // process writes outcome areas.
        unsafe {
            std::slice::from_raw_parts(
                self.arena.outcomes_base.add(self.index * SLAB_OUTCOMES),
                len,
            )
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.arena
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(self.index);
    }
}

/// The slabs as a worker receives them (serialized: the memfds cross with the start-up message).
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct WorkerSlabs {
    args: IpcSharedMemory,
    outcomes: IpcSharedMemory,
}

/// The slabs as a worker uses them.
pub(crate) struct WorkerView {
    _slabs: WorkerSlabs,
    args_base: *const u8,
    outcomes_base: *mut u8,
    slabs: usize,
}

impl WorkerView {
    /// Maps the slabs for this worker; the argument areas become read-only here.
    pub(crate) fn new(mut slabs: WorkerSlabs) -> Option<WorkerView> {
        let count = slabs.args.len() / SLAB_ARGS;
        if count == 0 || slabs.outcomes.len() / SLAB_OUTCOMES != count {
            return None;
        }
        let args_base = slabs.args.as_ptr();
        // SAFETY: `mprotect` of a whole mapping we own (`slabs.args` is a page-aligned `mmap`
        // of exactly `len` bytes, ipc-channel's) to read-only: no Rust reference to it is held
        // across the call, and every later access through `args_base` is a read.
        let protected = unsafe {
            libc::mprotect(
                args_base as *mut libc::c_void,
                slabs.args.len(),
                libc::PROT_READ,
            )
        };
        if protected != 0 {
            return None;
        }
        // SAFETY: `deref_mut` is unsafe because other holders of the mapping may access it. The
        // `&mut [u8]` it returns lives only for this expression and no byte is accessed through
        // it: only its base pointer is kept. In this process nothing else refers to the mapping
        // (the worker has not handled a batch yet), and later accesses go through that pointer
        // one slab at a time, under the protocol of the module documentation.
        let outcomes_base = unsafe { slabs.outcomes.deref_mut() }.as_mut_ptr();
        Some(WorkerView {
            _slabs: slabs,
            args_base,
            outcomes_base,
            slabs: count,
        })
    }

    /// Slab `index`'s first `len` argument bytes and its outcome area; `None` if out of range.
    pub(crate) fn slab(&mut self, index: usize, len: usize) -> Option<(&[u8], &mut [u8])> {
        if index >= self.slabs || len > SLAB_ARGS {
            return None;
        }
        // SAFETY: both ranges lie inside their mappings (checked above), which `_slabs` keeps
        // mapped, and the two mappings are distinct, so the slices do not overlap; `&mut self`
        // makes the borrow unique in this process. The parent wrote the argument bytes before
        // sending the request naming this slab and does not write them again until this worker
        // has replied (it holds the slab's lease; and the mapping is read-only here). It reads
        // the outcome area only after that reply, under the same lease.
        unsafe {
            Some((
                std::slice::from_raw_parts(self.args_base.add(index * SLAB_ARGS), len),
                std::slice::from_raw_parts_mut(
                    self.outcomes_base.add(index * SLAB_OUTCOMES),
                    SLAB_OUTCOMES,
                ),
            ))
        }
    }
}
