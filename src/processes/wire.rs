//! What travels between the parent and a worker process, and how a task function crosses.
//!
//! **Functions.** Worker processes run the same executable as the parent (procspawn re-executes
//! `/proc/self/exe`), so a function's address differs between the two only by the image's load
//! offset (ASLR shifts the whole image at once). A batch therefore names its runner as an offset
//! from [`anchor`], a fixed function of this crate: the worker adds its own `anchor` address back.
//! This is procspawn's own scheme. At start-up the worker checks that the offset of a second known
//! function ([`layout_probe`]) matches the parent's, and refuses to run otherwise.
//! It holds when parjob and the task functions are linked into the executable (Rust's default);
//! a parjob built as a `dylib` is not supported.
//!
//! **Batches** (parent → worker, raw bytes): `runner offset: i64 LE`, `count: u64 LE`, then the
//! `count` argument tuples, bincode-encoded back to back.
//!
//! **Replies** (worker → parent, [`FromWorker`]): `Ready` once after start-up, then one `Batch`
//! per batch with `count` outcomes back to back: a tag byte (0 = returned, then the bincode
//! result; 1 = panicked, then the bincode message).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The message type of a worker's reply channel.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum FromWorker {
    /// Start-up finished (layout checked, initializer run); tasks may come.
    Ready,
    /// Start-up failed with this message; the worker exits.
    InitFailed(String),
    /// The outcomes of one batch and the time the worker spent running it.
    Batch {
        elapsed_ns: u64,
        #[serde(with = "serde_bytes")]
        outcomes: Vec<u8>,
    },
}

/// Runs one encoded batch: `(arguments, count, outcomes out)`.
pub(crate) type Runner = fn(&[u8], u64, &mut Vec<u8>);

/// The fixed point every offset is measured from. `#[inline(never)]` and a body of its own so it
/// has one address.
#[inline(never)]
pub(crate) fn anchor() -> u64 {
    std::hint::black_box(0x7061_726a_6f62)
}

/// A second fixed point: parent and worker compare `offset_of(layout_probe)`.
#[inline(never)]
pub(crate) fn layout_probe() -> u64 {
    std::hint::black_box(0x0070_726f_6265)
}

/// `address - anchor`, the form in which a function crosses to a worker.
pub(crate) fn offset_of(address: usize) -> i64 {
    (address as i64).wrapping_sub(anchor as fn() -> u64 as usize as i64)
}

/// The address `offset` names in this process.
pub(crate) fn address_at(offset: i64) -> usize {
    (anchor as fn() -> u64 as usize as i64).wrapping_add(offset) as usize
}

/// The offset of the runner for tasks of type `F` over arguments `A` returning `R`.
///
/// `F` must be zero-sized: checked at compile time here, since a value of `F` is re-created from
/// nothing in the worker (see [`run_batch`]).
pub(crate) fn runner_offset<F, A, R>() -> i64
where
    F: crate::Apply<A, Output = R> + Copy + 'static,
    A: DeserializeOwned,
    R: Serialize,
{
    const {
        assert!(
            std::mem::size_of::<F>() == 0,
            "parjob: a task sent to worker processes must be a function item (`delayed(square)`) \
             or a closure that captures nothing; not a closure with captures, and not a `fn` \
             pointer (neither can be named in another process)"
        )
    };
    offset_of(run_batch::<F, A, R> as Runner as usize)
}

/// Writes a batch header for `count` tasks of runner `runner` at the start of `bytes`.
pub(crate) fn batch_header(runner: i64, count: u64) -> [u8; 16] {
    let mut header = [0u8; 16];
    header[..8].copy_from_slice(&runner.to_le_bytes());
    header[8..].copy_from_slice(&count.to_le_bytes());
    header
}

/// Splits a batch into `(runner offset, count, arguments)`; `None` if it is too short.
pub(crate) fn split_batch(bytes: &[u8]) -> Option<(i64, u64, &[u8])> {
    let runner = i64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let count = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
    Some((runner, count, &bytes[16..]))
}

/// The text of a panic payload, as a thread task's panic would show it.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any> (a panic payload that is not a string)".to_owned()
    }
}

/// Runs `count` tasks of type `F` whose arguments are encoded back to back in `input`, appending
/// each outcome to `out`. Runs in the worker.
fn run_batch<F, A, R>(mut input: &[u8], count: u64, out: &mut Vec<u8>)
where
    F: crate::Apply<A, Output = R> + Copy + 'static,
    A: DeserializeOwned,
    R: Serialize,
{
    for _ in 0..count {
        let outcome = match bincode::deserialize_from::<_, A>(&mut input) {
            Ok(args) => catch_unwind(AssertUnwindSafe(|| {
                // SAFETY: `F` is zero-sized (`runner_offset`, the only way to name this function
                // to a worker, asserts it at compile time) and `Copy`, and it is inhabited: the
                // parent held a value of it to build this batch. A zero-sized value has no bytes,
                // so `zeroed` creates exactly the value the parent holds, and since `F: Copy`
                // a second instance of it is something safe code could make with a plain copy.
                let f: F = unsafe { std::mem::zeroed() };
                f.apply(args)
            }))
            .map_err(|payload| panic_message(&*payload)),
            Err(error) => Err(format!(
                "parjob: cannot decode the task's arguments: {error}"
            )),
        };
        push_outcome(out, outcome);
    }
}

fn push_outcome<R: Serialize>(out: &mut Vec<u8>, outcome: Result<R, String>) {
    let start = out.len();
    if let Ok(value) = &outcome {
        out.push(0);
        if let Err(error) = bincode::serialize_into(&mut *out, value) {
            out.truncate(start);
            push_panic(
                out,
                &format!("parjob: cannot encode the task's result: {error}"),
            );
        }
    } else if let Err(message) = &outcome {
        push_panic(out, message);
    }
}

fn push_panic(out: &mut Vec<u8>, message: &str) {
    out.push(1);
    // A `&str` always encodes.
    let _ = bincode::serialize_into(&mut *out, message);
}

/// Reads one outcome from the front of `input`: `Ok(result)` or `Err(panic message)`.
pub(crate) fn read_outcome<R: DeserializeOwned>(input: &mut &[u8]) -> Result<R, String> {
    let (&tag, rest) = input
        .split_first()
        .ok_or_else(|| "parjob: a worker sent too few results".to_owned())?;
    *input = rest;
    if tag == 0 {
        bincode::deserialize_from(&mut *input)
            .map_err(|error| format!("parjob: cannot decode the task's result: {error}"))
    } else {
        Err(bincode::deserialize_from::<_, String>(&mut *input)
            .unwrap_or_else(|error| format!("parjob: cannot decode a panic message: {error}")))
    }
}
