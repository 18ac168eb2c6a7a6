//! What travels between the parent and a worker process, and how a task function crosses.
//!
//! **Functions.** Worker processes run the same executable as the parent (procspawn re-executes
//! `/proc/self/exe`), so a function's address differs between the two only by the image's load
//! offset (ASLR shifts the whole image at once). A batch therefore names two functions as offsets
//! from [`anchor`], a fixed function of this crate: its runner (`run_batch` for the call's types)
//! and the task's function (a `fn` pointer, [`ProcessFn`]); the worker adds
//! its own `anchor` address back. This is procspawn's own scheme. At start-up the worker checks
//! that the offset of a second known function ([`layout_probe`]) matches the parent's, and
//! refuses to run otherwise. Before a batch is sent, the parent checks that both functions lie in
//! the object that holds `anchor` ([`checked_offset`]): a function of a shared library is loaded
//! at another offset in the worker, so its tasks fail instead (as does every task when parjob is
//! built as a `dylib` and the runner is not in it).
//!
//! **Frames.** Every task's arguments and every result travel as a *frame*: the value's bincode
//! bytes behind their length (`u32 LE`, [`FRAME`] bytes; [`encode_frame`], [`next_frame`]; a
//! value of more than 4 GiB fails its task with a message saying so). Each
//! value is decoded from its own frame, so a type whose `Deserialize` reads fewer bytes than its
//! `Serialize` wrote (`#[serde(skip_deserializing)]`, any asymmetric impl) gets exactly what
//! `bincode::deserialize(&bincode::serialize(&x))` gives it, and a value that fails to decode
//! fails its own task only. (Until round 12 values went back to back with no lengths: a value
//! that read fewer bytes than were written shifted every later task of the batch onto another
//! task's bytes, and most of a batch came back as wrong `Ok` results.)
//!
//! **Requests** (parent → worker, raw bytes): a 40-byte header `runner offset: i64 LE`,
//! `function offset: i64 LE`, `count: u64 LE`, `slab: u64 LE`, `len: u64 LE`, then, when `slab`
//! is [`INLINE`], the `len` bytes of the `count` argument tuples' frames, back to back.
//! Otherwise those bytes are at the start of slab `slab`'s argument area ([`shm`](super::shm)).
//!
//! **Replies** (worker → parent, [`FromWorker`]): `Ready` once after start-up, then per batch
//! `BatchInSlab` (the outcomes are the first `len` bytes of the batch's slab's outcome area) or,
//! for a batch that came inline or whose outcomes do not fit the slab, `Batch` with the outcomes
//! in the message. The outcomes are, in order: the frame of every task's result that returned,
//! back to back in task order (no per-task tag: the common case, every task returned, is a plain
//! run of frames that the parent decodes in one tight loop); then one record per task that failed
//! (panicked, its arguments or its result could not be decoded or encoded), in task order: its
//! position in the batch (`u64 LE`) and the bincode message; then a [`FOOTER`]: the length of the
//! values (`u64 LE`) and the number of failure records (`u64 LE`). The parent checks the footer
//! and the failure records before it trusts any of it ([`split_outcomes`]).
//!
//! Encoding is bincode 1's default (fixed-size little-endian integers, trailing bytes allowed:
//! what `bincode::serialize` and `bincode::deserialize` use).

use super::ProcessFn;
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
    /// One batch ran; its outcomes are the first `len` bytes of its slab's outcome area.
    BatchInSlab { elapsed_ns: u64, len: u64 },
}

/// The `slab` of a request whose arguments are in the message.
pub(crate) const INLINE: u64 = u64::MAX;

/// Bytes of a request's header.
pub(crate) const HEADER: usize = 40;

/// Bytes of a frame's length, in front of each task's encoded arguments or result. Four, not
/// eight: for tiny tasks the frames are a good part of the bytes (a `u64` result takes 12 bytes
/// instead of 16), and the caller that encodes and decodes them is what bounds such a call.
pub(crate) const FRAME: usize = 4;

/// A writer that can go back and fill in a frame's length once the value behind it is written.
pub(crate) trait Framing: std::io::Write {
    /// Bytes written so far.
    fn position(&self) -> usize;
    /// Overwrites the `FRAME` bytes at `at` (written before, by `encode_frame`) with `len`.
    fn patch_length(&mut self, at: usize, len: u32);
    /// Writes the frame of `value`, `value.len()` bytes known to fit a `u32`: its length, then
    /// `value`, in one write (one update of the position).
    fn write_frame(&mut self, value: &[u8]) -> std::io::Result<()>;
}

impl Framing for Vec<u8> {
    fn position(&self) -> usize {
        self.len()
    }
    fn patch_length(&mut self, at: usize, len: u32) {
        self[at..at + FRAME].copy_from_slice(&len.to_le_bytes());
    }
    fn write_frame(&mut self, value: &[u8]) -> std::io::Result<()> {
        self.reserve(FRAME + value.len());
        self.extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.extend_from_slice(value);
        Ok(())
    }
}

/// Writes `value` to `out` as one frame (its bincode bytes behind their length). `Err`: `value`'s
/// `Serialize` failed, `out` ran out of room, or the value took more than 4 GiB; the caller
/// forgets what was written from the position `out` had before (the frame may be partly
/// written).
///
/// The value is first encoded into a small buffer on the stack and the whole frame goes to `out`
/// in one write; only a value larger than that buffer is written to `out` in pieces, its length
/// filled in afterwards. `out`'s position lives in memory (the writer is reached through a
/// reference), and each write loads and stores it: written as length placeholder, value, patch,
/// every task's frame chained three such round trips, and 1M tasks of 50 ns took about 20 %
/// longer over processes than with unframed values; staged, one.
#[inline]
pub(crate) fn encode_frame<W: Framing, T: Serialize + ?Sized>(
    out: &mut W,
    value: &T,
) -> bincode::Result<()> {
    let mut staged = Staged {
        out,
        small: [0; STAGED],
        len: 0,
        start: None,
    };
    value.serialize(&mut bincode::Serializer::new(&mut staged, options()))?;
    staged.finish()
}

/// Bytes of [`Staged`]'s buffer: a value that fits crosses in one write.
const STAGED: usize = 32;

/// The writer behind [`encode_frame`]: the value's bytes in `small` while they fit, else the
/// frame in `out` from `start` on.
struct Staged<'a, W: Framing> {
    out: &'a mut W,
    small: [u8; STAGED],
    /// Bytes of `small` in use.
    len: usize,
    /// Where the frame starts in `out`, once the value did not fit `small`.
    start: Option<usize>,
}

impl<W: Framing> Staged<'_, W> {
    /// Moves the frame so far to `out` (a placeholder for its length first); later writes go
    /// there too.
    #[cold]
    #[inline(never)]
    fn overflow(&mut self, data: &[u8]) -> std::io::Result<()> {
        if self.start.is_none() {
            self.start = Some(self.out.position());
            self.out.write_all(&[0; FRAME])?;
            self.out.write_all(&self.small[..self.len])?;
        }
        self.out.write_all(data)
    }

    /// Writes the frame if the value is still in `small`, else fills in its length.
    #[inline]
    fn finish(self) -> bincode::Result<()> {
        match self.start {
            // The length and the bytes go out in one write (composing them in `small` first
            // made the copy read back two separate stores at once, which stalls).
            None => self.out.write_frame(&self.small[..self.len])?,
            Some(start) => {
                // Saturating: a `Serialize` that swallowed a write error may have left less.
                let len = self.out.position().saturating_sub(start + FRAME);
                let Ok(len) = u32::try_from(len) else {
                    return Err(too_large(len));
                };
                self.out.patch_length(start, len);
            }
        }
        Ok(())
    }
}

impl<W: Framing> std::io::Write for Staged<'_, W> {
    #[inline]
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.write_all(data).map(|()| data.len())
    }

    #[inline(always)]
    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        if self.start.is_none() {
            if let Some(dst) = self.small.get_mut(self.len..self.len + data.len()) {
                dst.copy_from_slice(data);
                self.len += data.len();
                return Ok(());
            }
        }
        self.overflow(data)
    }

    #[inline]
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cold]
#[inline(never)]
fn too_large(len: usize) -> bincode::Error {
    Box::new(bincode::ErrorKind::Custom(format!(
        "{len} bytes: a value of more than 4 GiB cannot cross between processes"
    )))
}

/// Where the frame that starts at `at` in `bytes` holds its value: `at + FRAME .. end`, `end`
/// being where the next frame starts. `None` if no whole frame starts at `at`.
#[inline(always)]
fn frame_at(bytes: &[u8], at: usize) -> Option<(usize, usize)> {
    let start = at.checked_add(FRAME)?;
    let len = u32::from_le_bytes(bytes.get(at..start)?.try_into().ok()?);
    let end = start
        .checked_add(len as usize)
        .filter(|&end| end <= bytes.len())?;
    Some((start, end))
}

/// The bytes of the frame at the front of `input`, which then holds the bytes after it; `None`
/// (and `input` unchanged) if `input` does not start with a whole frame.
#[inline]
pub(crate) fn next_frame<'a>(input: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (start, end) = frame_at(input, 0)?;
    let frame = &input[start..end];
    *input = &input[end..];
    Some(frame)
}

/// Decodes one value from exactly the bytes of its frame.
#[inline]
fn decode_frame<T: DeserializeOwned>(frame: &[u8]) -> bincode::Result<T> {
    T::deserialize(&mut bincode::Deserializer::from_slice(frame, options()))
}

/// bincode 1's default encoding (what `bincode::serialize` uses), as options.
pub(crate) fn options() -> impl bincode::Options + Copy {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
}

/// Runs one encoded batch: `(function offset, arguments, count, outcomes out)`.
///
/// Calling one is sound only with the offset of a function of the type it was made for (see
/// [`run_batch`]); it is a plain `fn` pointer so that it can be named to the worker by address.
pub(crate) type Runner = unsafe fn(i64, &[u8], u64, &mut Sink<'_>);

/// Where a worker writes a batch's outcomes: straight into the batch's slab outcome area while
/// they fit, and once one does not, all of them (those written so far copied over) into a
/// vector that travels in the reply.
pub(crate) struct Sink<'a> {
    area: &'a mut [u8],
    len: usize,
    spill: &'a mut Vec<u8>,
    spilled: bool,
}

impl<'a> Sink<'a> {
    /// A sink writing into `area` first (empty: straight into `spill`, which is cleared).
    pub(crate) fn new(area: &'a mut [u8], spill: &'a mut Vec<u8>) -> Self {
        spill.clear();
        Sink {
            area,
            len: 0,
            spill,
            spilled: false,
        }
    }

    /// The bytes written so far (wherever they are).
    #[inline]
    fn len(&self) -> usize {
        if self.spilled {
            self.spill.len()
        } else {
            self.len
        }
    }

    /// Forgets what was written from `at` on.
    fn truncate(&mut self, at: usize) {
        if self.spilled {
            self.spill.truncate(at);
        } else {
            self.len = self.len.min(at);
        }
    }

    /// The slow path of `write_all`: into the vector (moving what the area holds there first).
    #[cold]
    #[inline(never)]
    fn write_spilled(&mut self, data: &[u8]) {
        if !self.spilled {
            self.spill.extend_from_slice(&self.area[..self.len]);
            self.spilled = true;
        }
        self.spill.extend_from_slice(data);
    }

    /// `Some(len)`: every outcome is in the area, `len` bytes; `None`: they are in the vector.
    pub(crate) fn in_area(&self) -> Option<usize> {
        (!self.spilled).then_some(self.len)
    }
}

impl Framing for Sink<'_> {
    #[inline]
    fn position(&self) -> usize {
        self.len()
    }

    #[inline]
    fn patch_length(&mut self, at: usize, len: u32) {
        let bytes = if self.spilled {
            &mut self.spill[at..at + FRAME]
        } else {
            &mut self.area[at..at + FRAME]
        };
        bytes.copy_from_slice(&len.to_le_bytes());
    }

    #[inline(always)]
    fn write_frame(&mut self, value: &[u8]) -> std::io::Result<()> {
        if !self.spilled {
            let end = self.len + FRAME + value.len();
            if let Some(dst) = self.area.get_mut(self.len..end) {
                dst[..FRAME].copy_from_slice(&(value.len() as u32).to_le_bytes());
                dst[FRAME..].copy_from_slice(value);
                self.len = end;
                return Ok(());
            }
        }
        use std::io::Write as _;
        self.write_all(&(value.len() as u32).to_le_bytes())?;
        self.write_all(value)
    }
}

impl std::io::Write for Sink<'_> {
    #[inline]
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.write_all(data).map(|()| data.len())
    }

    #[inline(always)]
    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        if !self.spilled {
            if let Some(dst) = self.area.get_mut(self.len..self.len + data.len()) {
                dst.copy_from_slice(data);
                self.len += data.len();
                return Ok(());
            }
        }
        self.write_spilled(data);
        Ok(())
    }

    #[inline]
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

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

/// The offset of the runner for tasks of function type `F` over arguments `A` returning `R`,
/// checked like a task's function ([`checked_offset`]).
pub(crate) fn runner_offset<F, A, R>() -> Result<i64, String>
where
    F: ProcessFn<A, Output = R>,
    A: DeserializeOwned,
    R: Serialize,
{
    checked_offset(
        run_batch::<F, A, R> as Runner as usize,
        "parjob's runner for this call's task type",
    )
    .map_err(|message| format!("{message} (is parjob built as a `dylib`?)"))
}

/// `offset_of(address)`, if `address` lies in the loaded object (the executable, or a shared
/// library) that holds [`anchor`]: only there is the offset the same in a worker, since each
/// object is loaded at its own address. Else the message a task calling it fails with, naming
/// the function as `what`.
///
/// When the C library cannot say which object holds `anchor` (`dladdr` in a statically linked
/// executable, glibc `-static` and `-static-pie` alike), the program is one image loaded at one
/// offset, and every offset is accepted: a safe `fn` pointer then points into that image (other
/// mappings, the vDSO or a library opened with glibc's static `dlopen`, are reached only through
/// `unsafe` code that vouches for what it makes of them).
pub(crate) fn checked_offset(address: usize, what: &str) -> Result<i64, String> {
    static ANCHOR_OBJECT: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let anchor_object =
        *ANCHOR_OBJECT.get_or_init(|| loaded_object_of(anchor as fn() -> u64 as usize));
    match anchor_object {
        None => Ok(offset_of(address)),
        Some(base) if loaded_object_of(address) == Some(base) => Ok(offset_of(address)),
        Some(_) => Err(format!(
            "parjob: {what} (at {address:#x}) is not in the executable that parjob is linked \
             into (a shared library is loaded at another address in a worker process): it \
             cannot be sent to worker processes"
        )),
    }
}

/// The base address of the loaded object that holds `address`, if the C library knows it.
fn loaded_object_of(address: usize) -> Option<usize> {
    // SAFETY: `Dl_info` is a plain C struct of pointers, for which all zeroes is a valid value.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: `dladdr` only reads its first argument as an address (it need not point to
    // anything valid) and writes `info`, a live, writable `Dl_info`.
    let found = unsafe { libc::dladdr(address as *const libc::c_void, &mut info) };
    (found != 0 && !info.dli_fbase.is_null()).then_some(info.dli_fbase as usize)
}

/// The two functions a batch names, as checked offsets ([`checked_offset`]): its runner and its
/// tasks' function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Functions {
    pub(crate) runner: i64,
    pub(crate) function: i64,
}

/// A request header: `count` tasks calling `functions`, `len` argument bytes, in slab `slab`
/// (or [`INLINE`]: the arguments follow the header).
pub(crate) fn header(functions: Functions, count: u64, slab: u64, len: u64) -> [u8; HEADER] {
    let mut header = [0u8; HEADER];
    header[..8].copy_from_slice(&functions.runner.to_le_bytes());
    header[8..16].copy_from_slice(&functions.function.to_le_bytes());
    header[16..24].copy_from_slice(&count.to_le_bytes());
    header[24..32].copy_from_slice(&slab.to_le_bytes());
    header[32..].copy_from_slice(&len.to_le_bytes());
    header
}

/// A request's parts: `(functions, count, slab, len, inline bytes)`; `None` if it is too short.
pub(crate) fn split_request(bytes: &[u8]) -> Option<(Functions, u64, u64, u64, &[u8])> {
    let word = |at: usize| -> Option<[u8; 8]> { bytes.get(at..at + 8)?.try_into().ok() };
    let functions = Functions {
        runner: i64::from_le_bytes(word(0)?),
        function: i64::from_le_bytes(word(8)?),
    };
    Some((
        functions,
        u64::from_le_bytes(word(16)?),
        u64::from_le_bytes(word(24)?),
        u64::from_le_bytes(word(32)?),
        &bytes[HEADER..],
    ))
}

/// An `io::Write` over a fixed slice (a slab's argument area) that records running out of room
/// instead of growing.
pub(crate) struct SliceWriter<'a> {
    pub(crate) buf: &'a mut [u8],
    pub(crate) len: usize,
    /// A write did not fit: the value being encoded is incomplete.
    pub(crate) full: bool,
}

impl Framing for SliceWriter<'_> {
    #[inline]
    fn position(&self) -> usize {
        self.len
    }

    #[inline]
    fn patch_length(&mut self, at: usize, len: u32) {
        self.buf[at..at + FRAME].copy_from_slice(&len.to_le_bytes());
    }

    #[inline(always)]
    fn write_frame(&mut self, value: &[u8]) -> std::io::Result<()> {
        let end = self.len + FRAME + value.len();
        match self.buf.get_mut(self.len..end) {
            Some(dst) => {
                dst[..FRAME].copy_from_slice(&(value.len() as u32).to_le_bytes());
                dst[FRAME..].copy_from_slice(value);
                self.len = end;
                Ok(())
            }
            None => {
                self.full = true;
                Err(std::io::ErrorKind::WriteZero.into())
            }
        }
    }
}

impl std::io::Write for SliceWriter<'_> {
    #[inline]
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.write_all(data).map(|()| data.len())
    }

    #[inline]
    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self.buf.get_mut(self.len..self.len + data.len()) {
            Some(dst) => {
                dst.copy_from_slice(data);
                self.len += data.len();
                Ok(())
            }
            None => {
                self.full = true;
                Err(std::io::ErrorKind::WriteZero.into())
            }
        }
    }

    #[inline]
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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

/// The failure message of a task whose arguments' `Deserialize` (user code) panicked in the
/// worker.
fn decoding_arguments_panicked(panicked: &str) -> String {
    format!("parjob: decoding the task's arguments panicked: {panicked}")
}

/// Runs `count` tasks calling the function at offset `function` (of type `F`) whose arguments'
/// frames are back to back in `input`, writing their outcomes to `out` (laid out as the module
/// documentation says). Runs in the worker.
///
/// # Safety
/// `function` is the offset ([`offset_of`], in this process or in one running the same
/// executable with the same layout) of a function whose pointer type is exactly `F`: the offset
/// the parent computed from a value of `F`.
///
/// One `catch_unwind` covers the whole loop (not one per task): after a task's panic its failure
/// is recorded and the loop resumes at the next task, whose frame is located before its
/// arguments are decoded. So arguments whose `Deserialize` fails or panics fail their own task
/// and nothing else, and the worker stays.
unsafe fn run_batch<F, A, R>(function: i64, input: &[u8], count: u64, out: &mut Sink<'_>)
where
    F: ProcessFn<A, Output = R>,
    A: DeserializeOwned,
    R: Serialize,
{
    // SAFETY: by this function's contract `function` is the offset of a function of pointer
    // type `F`, measured in an executable laid out as this one, so `address_at` gives that
    // function's address in this process, which is what `from_address` requires. `F` is a `fn`
    // pointer (`ProcessFn` is sealed): it carries nothing but that address, so the value built
    // here is exactly the one the parent held.
    let f: F = unsafe { F::from_address(address_at(function)) };
    let mut rest = input;
    let mut done = 0u64;
    let values_start = out.len();
    // Failed tasks: (position, message). Kept apart so the values stay a plain run.
    let mut failures: Vec<(u64, String)> = Vec::new();
    // Where the value of the task being run starts in `out`, and whether it is being decoded.
    let mut start = out.len();
    let mut decoding = false;
    // The encode error of the task being run, kept until its result is dropped: if that `Drop`
    // panics too, the task still gets one failure record (two at one position would make the
    // parent refuse the whole batch).
    let mut unencoded: Option<String> = None;
    while done < count {
        let ran = catch_unwind(AssertUnwindSafe(|| {
            while done < count {
                start = out.len();
                let Some(frame) = next_frame(&mut rest) else {
                    // Not what a parent of this build sends (a task that scribbled on the slab's
                    // argument area could do it): the rest of the batch cannot be located.
                    while done < count {
                        failures.push((done, CORRUPT_ARGUMENTS.to_owned()));
                        done += 1;
                    }
                    return;
                };
                decoding = true;
                let decoded = decode_frame::<A>(frame);
                decoding = false;
                let args = match decoded {
                    Ok(args) => args,
                    Err(error) => {
                        failures.push((
                            done,
                            format!("parjob: cannot decode the task's arguments: {error}"),
                        ));
                        done += 1;
                        continue;
                    }
                };
                let value = f.apply(args);
                if let Err(error) = encode_frame(out, &value) {
                    unencoded = Some(encode_failed(out, start, error));
                }
                // Dropped before the task is counted: a result whose `Drop` panics is caught
                // below as this task's panic, and must not be counted twice.
                drop(value);
                if let Some(message) = unencoded.take() {
                    failures.push((done, message));
                }
                done += 1;
            }
        }));
        if let Err(payload) = ran {
            // The task's value may be partly (or wholly, if its `Drop` panicked) written.
            out.truncate(start);
            let panicked = panic_message(&*payload);
            // The payload is user data whose `Drop` may panic (`panic_any`): dropped here
            // unguarded, that panic escaped the batch, the worker exited, and the task came
            // back as a crash (after every task of its batch had been run again).
            crate::pool::unwind::drop_contained(payload);
            let message = if decoding {
                // Its frame was taken off `rest` before decoding: the loop goes on at the next.
                decoding_arguments_panicked(&panicked)
            } else {
                // A result that could not be encoded and whose `Drop` then panicked: one
                // record, with both messages.
                match unencoded.take() {
                    Some(unencoded) => {
                        format!("{unencoded}; then dropping it panicked: {panicked}")
                    }
                    None => panicked,
                }
            };
            failures.push((done, message));
            done += 1;
        }
    }
    write_failures(out, values_start, &failures);
}

/// A result that cannot be encoded becomes that task's failure: forgets what of it was written
/// (from `start` on) and returns the failure's message.
#[cold]
#[inline(never)]
fn encode_failed(out: &mut Sink<'_>, start: usize, error: bincode::Error) -> String {
    out.truncate(start);
    format!("parjob: cannot encode the task's result: {error}")
}

/// Appends the failure records and the footer after the values (which start at `values_start`).
fn write_failures(out: &mut Sink<'_>, values_start: usize, failures: &[(u64, String)]) {
    use std::io::Write as _;
    let values_len = (out.len() - values_start) as u64;
    // A sink always takes the bytes, and a `&str` always encodes: these writes cannot fail.
    for (position, message) in failures {
        let _ = out.write_all(&position.to_le_bytes());
        let _ = bincode::serialize_into(&mut *out, message.as_str());
    }
    let _ = out.write_all(&values_len.to_le_bytes());
    let _ = out.write_all(&(failures.len() as u64).to_le_bytes());
}

/// Bytes of the footer that ends a batch's outcomes.
pub(crate) const FOOTER: usize = 16;

/// What a batch's outcomes say, checked: `(values_len, failures)`, where the values are the first
/// `values_len` bytes and `failures` the failed tasks' `(position in the batch, message)`, in
/// task order. `Err` with a message when the footer or the failure records are not what a worker
/// writes for `count` tasks: then nothing in the bytes can be located, and every task of the
/// batch fails with the message.
pub(crate) fn split_outcomes(
    bytes: &[u8],
    count: usize,
) -> Result<(usize, Vec<(usize, String)>), String> {
    let corrupt = |what: &str| format!("parjob: the batch's outcomes are corrupt ({what})");
    let Some(body) = bytes.len().checked_sub(FOOTER) else {
        return Err(corrupt("too short"));
    };
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let (values_len, failed) = (word(body), word(body + 8));
    if values_len > body as u64 || failed > count as u64 {
        return Err(corrupt("bad footer"));
    }
    let values_len = values_len as usize;
    let mut failures = Vec::new();
    let mut rest = &bytes[values_len..body];
    for _ in 0..failed {
        let Some(position) = rest.get(..8) else {
            return Err(corrupt("truncated failure record"));
        };
        let position = u64::from_le_bytes(position.try_into().expect("8 bytes"));
        let after = &rest[8..];
        let in_order = match failures.last() {
            Some(&(last, _)) => position > last as u64,
            None => true,
        };
        if position >= count as u64 || !in_order {
            return Err(corrupt("failure out of place"));
        }
        let (message, after) = read_message(after).map_err(|_| corrupt("bad failure message"))?;
        failures.push((position as usize, message));
        rest = after;
    }
    if !rest.is_empty() {
        return Err(corrupt("trailing bytes"));
    }
    if failures.len() == count && values_len != 0 {
        return Err(corrupt("results of no task"));
    }
    Ok((values_len, failures))
}

/// Why a result was not read.
#[derive(Debug)]
pub(crate) enum Unread {
    /// Its frame was read, but the bytes did not decode as a result: that task fails with this
    /// message, and the next result is where it was written.
    Value(String),
    /// No whole frame is there: where this result and the ones after it start is unknown.
    Frame,
}

/// Reads one result from the frame at the front of `input`, leaving the rest there.
#[inline]
pub(crate) fn read_value<R: DeserializeOwned>(input: &mut &[u8]) -> Result<R, Unread> {
    let frame = next_frame(input).ok_or(Unread::Frame)?;
    decode_frame(frame).map_err(undecodable_result)
}

#[cold]
#[inline(never)]
fn undecodable_result(error: bincode::Error) -> Unread {
    Unread::Value(format!("parjob: cannot decode the task's result: {error}"))
}

/// A bincode reader over a slice that leaves the unread rest in the caller's variable (bincode's
/// own slice reader does not say where it stopped).
struct Cursor<'a, 'b>(&'b mut &'a [u8]);

fn eof() -> std::io::Error {
    std::io::ErrorKind::UnexpectedEof.into()
}

impl<'a> Cursor<'a, '_> {
    #[inline]
    fn take(&mut self, n: usize) -> bincode::Result<&'a [u8]> {
        if n > self.0.len() {
            return Err(Box::new(bincode::ErrorKind::Io(eof())));
        }
        let (head, tail) = self.0.split_at(n);
        *self.0 = tail;
        Ok(head)
    }
}

impl std::io::Read for Cursor<'_, '_> {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.0.len());
        self.read_exact(&mut buf[..n])?;
        Ok(n)
    }

    #[inline]
    fn read_exact(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        if buf.len() > self.0.len() {
            return Err(eof());
        }
        let (head, tail) = self.0.split_at(buf.len());
        buf.copy_from_slice(head);
        *self.0 = tail;
        Ok(())
    }
}

impl<'a> bincode::BincodeRead<'a> for Cursor<'a, '_> {
    #[inline]
    fn forward_read_str<V: serde::de::Visitor<'a>>(
        &mut self,
        length: usize,
        visitor: V,
    ) -> bincode::Result<V::Value> {
        match std::str::from_utf8(self.take(length)?) {
            Ok(s) => visitor.visit_borrowed_str(s),
            Err(error) => Err(Box::new(bincode::ErrorKind::InvalidUtf8Encoding(error))),
        }
    }

    #[inline]
    fn get_byte_buffer(&mut self, length: usize) -> bincode::Result<Vec<u8>> {
        self.take(length).map(<[u8]>::to_vec)
    }

    #[inline]
    fn forward_read_bytes<V: serde::de::Visitor<'a>>(
        &mut self,
        length: usize,
        visitor: V,
    ) -> bincode::Result<V::Value> {
        visitor.visit_borrowed_bytes(self.take(length)?)
    }
}

/// A failure message at the front of `input`, and the bytes after it.
#[inline(never)]
fn read_message(mut input: &[u8]) -> Result<(String, &[u8]), String> {
    let mut de = bincode::Deserializer::with_bincode_read(Cursor(&mut input), options());
    match <String as serde::Deserialize>::deserialize(&mut de) {
        Ok(message) => Ok((message, input)),
        Err(error) => Err(format!("parjob: cannot decode a panic message: {error}")),
    }
}

/// Appends `count` results read from the frames at the front of `input` to `values`, leaving the
/// unread rest in `input`. At a result that does not decode, or where no whole frame is, stops
/// with why ([`Unread`]; after `Value`, that result's frame is read too): the results before it
/// are in `values` (so `values`' new length says where it stopped).
///
/// The loop keeps its state in locals and writes results into `values`' spare capacity, so for
/// plain result types it compiles to a few instructions per task.
#[inline]
pub(crate) fn read_values<R: DeserializeOwned>(
    input: &mut &[u8],
    count: usize,
    values: &mut Vec<R>,
) -> Result<(), Unread> {
    values.reserve(count);
    let spare = &mut values.spare_capacity_mut()[..count];
    let mut written = 0;
    // An index into one slice, not a shrinking `&[u8]` written back per value: the loop's state
    // stays in registers (written as `read_value` in a loop, the slice went through the stack
    // at every value, and decoding took about three times as long).
    let bytes = *input;
    let mut at = 0;
    let mut broken = None;
    for slot in spare.iter_mut() {
        let Some((start, end)) = frame_at(bytes, at) else {
            broken = Some(Unread::Frame);
            break;
        };
        at = end;
        match decode_frame(&bytes[start..end]) {
            Ok(value) => {
                slot.write(value);
                written += 1;
            }
            Err(error) => {
                broken = Some(undecodable_result(error));
                break;
            }
        }
    }
    let new_len = values.len() + written;
    // SAFETY: `spare` is the spare capacity of `values` (`reserve(count)` made room for `count`
    // values), and its first `written` slots were initialized above with `write`; nothing else
    // touched `values` in between. So the first `new_len` elements are initialized and
    // `new_len <= capacity`. (A panic in a `Deserialize` impl skips this: the values written are
    // leaked, not exposed.)
    unsafe { values.set_len(new_len) };
    *input = &bytes[at..];
    broken.map_or(Ok(()), Err)
}

/// The message of a task whose result has no whole frame, and of the tasks after it: where their
/// results start is unknown.
pub(crate) const CORRUPT: &str =
    "parjob: cannot decode the task's result: the batch's outcomes are corrupt";

/// The message of a batch's tasks from the first whose arguments have no whole frame on: not
/// what a parent sends (a task that wrote into its slab's argument area could cause it).
pub(crate) const CORRUPT_ARGUMENTS: &str =
    "parjob: cannot decode the task's arguments: the batch's arguments are corrupt";

/// The message of the tasks of a batch whose result frames did not end at the end of the results
/// area: some frame's length was wrong, so any of them may be.
pub(crate) const UNREAD: &str =
    "parjob: the batch's outcomes are corrupt (bytes left over after its results)";

#[cfg(test)]
mod tests {
    use super::super::function::sealed::Pointer as _;
    use super::*;

    fn halve_odd(x: u64) -> u64 {
        assert!(x % 2 == 0, "odd {x}");
        x / 2
    }

    /// Runs `run_batch` here (no worker) for `f` over `(x,)` for each of `args`, with an outcome
    /// area of `area` bytes.
    fn run_f<R: Serialize + 'static>(f: fn(u64) -> R, args: &[u64], area: usize) -> Vec<u8> {
        let mut input = Vec::new();
        for &x in args {
            encode_frame(&mut input, &(x,)).unwrap();
        }
        let mut area = vec![0u8; area];
        let mut spill = Vec::new();
        let mut sink = Sink::new(&mut area, &mut spill);
        let function = checked_offset(f.address(), "f").expect("a function of this test binary");
        // SAFETY: `function` is the offset of `f`, of type `fn(u64) -> R`, in this process.
        unsafe {
            run_batch::<fn(u64) -> R, (u64,), R>(function, &input, args.len() as u64, &mut sink)
        };
        match sink.in_area() {
            Some(len) => area[..len].to_vec(),
            None => spill,
        }
    }

    fn run(args: &[u64], area: usize) -> Vec<u8> {
        run_f(halve_odd, args, area)
    }

    #[test]
    fn values_and_failures_come_back_at_their_places_in_the_area_or_spilled() {
        let args = [2, 3, 4, 6, 7, 8];
        // 6 tasks, 2 of them failing: big enough for all, and too small (spilled).
        for area in [4096, 20] {
            let bytes = run(&args, area);
            let (values_len, failures) = split_outcomes(&bytes, args.len()).unwrap();
            assert_eq!(values_len, 4 * (FRAME + 8));
            let positions: Vec<usize> = failures.iter().map(|(p, _)| *p).collect();
            assert_eq!(positions, [1, 4]);
            assert!(failures[0].1.contains("odd 3"), "{}", failures[0].1);
            let mut values = Vec::new();
            let mut input = &bytes[..values_len];
            read_values::<u64>(&mut input, 4, &mut values).unwrap();
            assert_eq!(values, [1, 2, 3, 4]);
            assert!(input.is_empty());
        }
    }

    #[test]
    fn malformed_outcomes_are_refused_as_a_whole() {
        let good = run(&[2, 3, 4], 4096);
        assert!(split_outcomes(&good, 3).is_ok());
        let refused = |bytes: &[u8], count: usize| split_outcomes(bytes, count).unwrap_err();
        assert!(refused(&good[..10], 3).contains("too short"));
        // The same failure claimed for a batch of one task: its position is out of range.
        assert!(refused(&good, 1).contains("out of place"));
        // A footer whose values run past the body.
        let mut bad = good.clone();
        let at = bad.len() - FOOTER;
        bad[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(refused(&bad, 3).contains("bad footer"));
        // A byte between the failure records and the footer.
        let mut bad = good[..at].to_vec();
        bad.push(0);
        bad.extend_from_slice(&good[at..]);
        assert!(refused(&bad, 3).contains("trailing bytes"));
        // Two failures at the same position.
        let mut bad = Vec::new();
        for _ in 0..2 {
            bad.extend_from_slice(&0u64.to_le_bytes());
            bincode::serialize_into(&mut bad, "boom").unwrap();
        }
        bad.extend_from_slice(&0u64.to_le_bytes());
        bad.extend_from_slice(&2u64.to_le_bytes());
        assert!(refused(&bad, 3).contains("out of place"));
        // Results, though every task failed.
        let mut bad = 7u64.to_le_bytes().to_vec();
        bad.extend_from_slice(&0u64.to_le_bytes());
        bincode::serialize_into(&mut bad, "boom").unwrap();
        bad.extend_from_slice(&8u64.to_le_bytes());
        bad.extend_from_slice(&1u64.to_le_bytes());
        assert!(refused(&bad, 1).contains("results of no task"));
    }

    /// A result of task 1 that cannot be encoded and whose `Drop` panics.
    struct Unencodable(u64);

    impl Serialize for Unencodable {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            if self.0 == 1 {
                return Err(serde::ser::Error::custom("no encoding for 1"));
            }
            s.serialize_u64(self.0)
        }
    }

    impl Drop for Unencodable {
        fn drop(&mut self) {
            if self.0 == 1 {
                panic!("dropping 1");
            }
        }
    }

    fn unencodable(x: u64) -> Unencodable {
        Unencodable(x)
    }

    /// `run_batch` of `f` over `input`, here (no worker).
    fn run_unencodable(f: fn(u64) -> Unencodable, input: &[u8], count: u64, sink: &mut Sink<'_>) {
        let function = checked_offset(f.address(), "f").expect("a function of this test binary");
        // SAFETY: `function` is the offset of `f`, of type `fn(u64) -> Unencodable`, here.
        unsafe {
            run_batch::<fn(u64) -> Unencodable, (u64,), Unencodable>(function, input, count, sink)
        };
    }

    /// The task's failure is recorded once (with both messages), not once for the encode error
    /// and again for the `Drop`'s panic: two records at one position made the whole batch
    /// corrupt, and the other tasks lost their results.
    #[test]
    fn a_result_that_fails_to_encode_and_panics_in_drop_fails_once() {
        let mut input = Vec::new();
        for x in [0u64, 1, 2] {
            encode_frame(&mut input, &(x,)).unwrap();
        }
        let mut area = vec![0u8; 4096];
        let mut spill = Vec::new();
        let mut sink = Sink::new(&mut area, &mut spill);
        run_unencodable(unencodable, &input, 3, &mut sink);
        let len = sink.in_area().unwrap();
        let bytes = &area[..len];
        let (values_len, failures) = split_outcomes(bytes, 3).unwrap();
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert_eq!(failures[0].0, 1);
        let message = &failures[0].1;
        assert!(message.contains("no encoding for 1"), "{message}");
        assert!(message.contains("dropping 1"), "{message}");
        let mut values = Vec::new();
        let mut input = &bytes[..values_len];
        read_values::<u64>(&mut input, 2, &mut values).unwrap();
        assert_eq!(values, [0, 2]);
        assert!(input.is_empty());
    }

    /// A result whose `Serialize` panics (for odd values) after writing part of itself.
    struct PanicsToEncode(u64);

    impl Serialize for PanicsToEncode {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeTuple;
            let mut tuple = s.serialize_tuple(2)?;
            tuple.serialize_element(&self.0)?;
            assert!(self.0 % 2 == 0, "cannot encode {}", self.0);
            tuple.serialize_element(&self.0)?;
            tuple.end()
        }
    }

    fn panics_to_encode(x: u64) -> PanicsToEncode {
        PanicsToEncode(x)
    }

    /// A result's `Serialize` panics in the worker halfway through writing it: that task fails
    /// with the panic's message, its partial bytes are forgotten (in the area, or after the
    /// outcomes spilled into the vector), and every other task's value is read back at its place.
    #[test]
    fn a_result_whose_serialize_panics_is_that_tasks_failure_only() {
        let args = [2, 3, 4, 6, 7, 8];
        for area in [4096, 20] {
            let bytes = run_f(panics_to_encode, &args, area);
            let (values_len, failures) = split_outcomes(&bytes, args.len()).unwrap();
            let positions: Vec<usize> = failures.iter().map(|(p, _)| *p).collect();
            assert_eq!(positions, [1, 4], "area {area}");
            assert!(
                failures[1].1.contains("cannot encode 7"),
                "{}",
                failures[1].1
            );
            let mut values = Vec::new();
            let mut input = &bytes[..values_len];
            read_values::<(u64, u64)>(&mut input, 4, &mut values).unwrap();
            assert_eq!(values, [(2, 2), (4, 4), (6, 6), (8, 8)], "area {area}");
            assert!(input.is_empty());
        }
    }

    /// A function of the executable crosses as an offset that leads back to it; one of a shared
    /// library (here the C library's `getpid`, which a dynamically linked test binary does not
    /// contain) is refused with a message, since a worker loads that library elsewhere. (A
    /// statically linked test binary has no shared library to refuse.)
    #[test]
    #[cfg(all(target_os = "linux", not(target_feature = "crt-static")))]
    fn only_functions_of_the_executable_cross() {
        let f: fn(u64) -> u64 = halve_odd;
        let offset = checked_offset(f.address(), "f").unwrap();
        assert_eq!(address_at(offset), f.address());
        // SAFETY: `address_at(offset)` is `f`'s address, a `fn(u64) -> u64`.
        let back = unsafe { <fn(u64) -> u64>::from_address(address_at(offset)) };
        assert_eq!(back(8), 4);
        let foreign = libc::getpid as unsafe extern "C" fn() -> libc::pid_t as usize;
        assert!(loaded_object_of(f.address()).is_some());
        assert_ne!(loaded_object_of(foreign), loaded_object_of(f.address()));
        let error = checked_offset(foreign, "getpid").unwrap_err();
        assert!(error.contains("not in the executable"), "{error}");
    }

    /// A frame whose bytes do not decode stops `read_values` there with that task's error, its
    /// frame read: the next call goes on at the next result. A frame that is not whole stops it
    /// where it starts.
    #[test]
    fn read_values_stops_at_a_result_that_does_not_decode_and_can_go_on_after_it() {
        let mut bytes = Vec::new();
        encode_frame(&mut bytes, &7u64).unwrap();
        // A frame of three bytes cannot hold a `u64`.
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&[1, 2, 3]);
        encode_frame(&mut bytes, &9u64).unwrap();
        let whole = bytes.len();
        // A frame that claims more bytes than follow it.
        bytes.extend_from_slice(&100u32.to_le_bytes());
        bytes.extend_from_slice(&[0; 8]);
        let mut values = vec![5u64];
        let mut input = &bytes[..];
        match read_values::<u64>(&mut input, 4, &mut values) {
            Err(Unread::Value(message)) => {
                assert!(
                    message.contains("cannot decode the task's result"),
                    "{message}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(values, [5, 7]);
        match read_values::<u64>(&mut input, 2, &mut values) {
            Err(Unread::Frame) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(values, [5, 7, 9]);
        assert_eq!(
            input.len(),
            bytes.len() - whole,
            "stopped where the broken frame starts"
        );
    }

    /// Frames of every size around the staging buffer's (written whole, or in pieces with their
    /// length filled in afterwards), into each kind of writer, read back as they were written.
    #[test]
    fn frames_of_every_size_read_back_from_every_writer() {
        let values: Vec<Vec<u8>> = (0..3 * STAGED).map(|n| (0..n as u8).collect()).collect();
        let mut in_vec = Vec::new();
        let mut area = vec![0u8; 4 * STAGED];
        let mut spill = Vec::new();
        let mut sink = Sink::new(&mut area, &mut spill);
        let mut slab = vec![0u8; 1 << 16];
        let mut slice = SliceWriter {
            buf: &mut slab,
            len: 0,
            full: false,
        };
        for value in &values {
            encode_frame(&mut in_vec, value).unwrap();
            encode_frame(&mut sink, value).unwrap();
            encode_frame(&mut slice, value).unwrap();
        }
        assert!(sink.in_area().is_none(), "the sink spilled midway");
        let slice_len = slice.len;
        for bytes in [&in_vec[..], &spill[..], &slab[..slice_len]] {
            let mut read = Vec::new();
            let mut input = bytes;
            read_values::<Vec<u8>>(&mut input, values.len(), &mut read).unwrap();
            assert_eq!(read, values);
            assert!(input.is_empty());
        }
        // A writer that runs out of room mid-frame says so.
        let mut tiny = [0u8; STAGED + 2];
        let mut full = SliceWriter {
            buf: &mut tiny,
            len: 0,
            full: false,
        };
        assert!(encode_frame(&mut full, &values[STAGED]).is_err());
        assert!(full.full);
    }

    /// A type whose `Deserialize` reads fewer bytes than its `Serialize` writes gets, from its
    /// frame, what `bincode::deserialize` gives it, and the next value is read from its own
    /// frame. Back to back without lengths, the second value was read from the first one's
    /// leftover bytes.
    #[test]
    fn each_value_is_read_from_its_own_frame() {
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        struct Skips {
            x: u64,
            #[serde(skip_deserializing)]
            label: u64,
        }
        let mut bytes = Vec::new();
        for x in [1u64, 2, 3] {
            encode_frame(&mut bytes, &Skips { x, label: 99 }).unwrap();
        }
        let mut values = Vec::new();
        let mut input = &bytes[..];
        read_values::<Skips>(&mut input, 3, &mut values).unwrap();
        let alone: Vec<Skips> = [1u64, 2, 3]
            .iter()
            .map(|&x| bincode::deserialize(&bincode::serialize(&Skips { x, label: 99 }).unwrap()))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(values, alone);
        assert_eq!(values.iter().map(|v| v.x).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(input.is_empty());
    }
}
