//! [`WorkerDeath`]: how a worker process ended, read from the kernel's exit status.
//!
//! The driver thread that owns a worker learns that it is gone when its reply channel closes. It
//! then asks the kernel how the process ended with `waitid(P_PID, pid, WEXITED | WNOWAIT)`:
//! `WNOWAIT` reads the status without reaping, so the process stays a zombie (and its pid cannot be
//! reused) until procspawn's handle reaps it when the driver drops it. procspawn's own error only
//! says "remote side closed" for every kind of death.

use std::fmt;
use std::time::{Duration, Instant};

/// How a worker process died (or failed to start), as reported in
/// [`Error::WorkerCrashed`](crate::Error::WorkerCrashed).
///
/// ```
/// use parjob::processes::WorkerDeath;
/// let abort = WorkerDeath::Signal(6);
/// assert_eq!(abort.signal(), Some(6));
/// assert_eq!(abort.to_string(), "killed by signal 6 (SIGABRT)");
/// assert_eq!(WorkerDeath::Exit(3).exit_code(), Some(3));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerDeath {
    /// Killed by this signal: 6 (`SIGABRT`) for `abort()`, a failed `panic = "abort"` and a stack
    /// overflow (Rust's overflow handler aborts), 11 (`SIGSEGV`) for a bad memory access, 9
    /// (`SIGKILL`) for a kill from outside such as the out-of-memory killer.
    Signal(i32),
    /// The process exited by itself (`std::process::exit`, a C library calling `exit`) with this
    /// status code, in the middle of a task.
    Exit(i32),
    /// The pool's initializer panicked in the worker, with this message; no task ran there.
    InitializerPanicked(String),
    /// The worker could not be started (see the message; most often `init()` was not called at
    /// the top of `main`).
    StartFailed(String),
    /// The parent lost its worker's batch: the thread that drives that worker stopped with a
    /// panic (see the message; e.g. running out of file descriptors), so whether the batch's
    /// tasks ran is unknown. The call gets this error instead of waiting forever.
    DriverFailed(String),
}

impl WorkerDeath {
    /// The signal that killed the worker, if a signal did.
    ///
    /// ```
    /// assert_eq!(parjob::processes::WorkerDeath::Signal(11).signal(), Some(11));
    /// assert_eq!(parjob::processes::WorkerDeath::Exit(1).signal(), None);
    /// ```
    pub fn signal(&self) -> Option<i32> {
        match self {
            WorkerDeath::Signal(signal) => Some(*signal),
            _ => None,
        }
    }

    /// The exit code, if the worker exited by itself.
    ///
    /// ```
    /// assert_eq!(parjob::processes::WorkerDeath::Exit(2).exit_code(), Some(2));
    /// ```
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            WorkerDeath::Exit(code) => Some(*code),
            _ => None,
        }
    }
}

fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGTRAP => "SIGTRAP",
        _ => return None,
    })
}

impl fmt::Display for WorkerDeath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerDeath::Signal(signal) => match signal_name(*signal) {
                Some(name) => write!(f, "killed by signal {signal} ({name})"),
                None => write!(f, "killed by signal {signal}"),
            },
            WorkerDeath::Exit(code) => write!(f, "exited with code {code}"),
            WorkerDeath::InitializerPanicked(message) => {
                write!(f, "initializer panicked: {message}")
            }
            WorkerDeath::StartFailed(message) => write!(f, "could not start: {message}"),
            WorkerDeath::DriverFailed(message) => {
                write!(f, "its driver thread in the parent failed: {message}")
            }
        }
    }
}

/// How the child `pid` ended, without reaping it. Waits at most `patience` for it to end; if it
/// is still running then (its channel broke for another reason), kills it and reports the kill.
///
/// The caller must own `pid`: a child of this process that nobody reaps before this returns (so
/// the pid still names that child; see the module doc).
pub(crate) fn wait_for_death(pid: u32, patience: Duration) -> WorkerDeath {
    let give_up = Instant::now() + patience;
    let mut killed = false;
    loop {
        let blocking = killed;
        match peek_status(pid, blocking) {
            Some(death) => return death,
            None if Instant::now() >= give_up && !killed => {
                kill(pid);
                killed = true;
            }
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// Whether child `pid` has ended (it is left unreaped: [`wait_for_death`] reads how). Never
/// waits.
pub(crate) fn has_ended(pid: u32) -> bool {
    peek_status(pid, false).is_some()
}

/// The exit status of child `pid` if it has ended (`blocking`: wait until it has), left unreaped.
fn peek_status(pid: u32, blocking: bool) -> Option<WorkerDeath> {
    let mut options = libc::WEXITED | libc::WNOWAIT;
    if !blocking {
        options |= libc::WNOHANG;
    }
    // SAFETY: `siginfo_t` is a plain C struct for which all-zero bytes are a valid value; the
    // kernel overwrites the fields it reports.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `info` is a valid, writable `siginfo_t` that lives across the call; `waitid`
        // only writes into it. `P_PID` with our own unreaped child is a valid id (see the
        // caller's contract), and `WNOWAIT` leaves the child unreaped, so no other owner's view of
        // the pid changes.
        let rc = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, options) };
        if rc == 0 {
            break;
        }
        if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        // ECHILD: not our child any more (reaped elsewhere). Nothing more can be learned.
        return Some(WorkerDeath::StartFailed(format!(
            "worker process {pid} vanished: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: after a successful `waitid`, `si_pid` is set; it is 0 when `WNOHANG` found no
    // child that changed state (the man page's documented way to tell).
    if unsafe { info.si_pid() } == 0 {
        return None;
    }
    // SAFETY: `waitid` reported a child state change (si_pid != 0), so `si_status` holds the exit
    // code or the signal number, as `si_code` says.
    let status = unsafe { info.si_status() };
    Some(match info.si_code {
        libc::CLD_EXITED => WorkerDeath::Exit(status),
        _ => WorkerDeath::Signal(status),
    })
}

/// Sends `SIGKILL` to child `pid`. The caller must own `pid` (an unreaped child of ours), so the
/// signal cannot reach an unrelated process that reused the number.
pub(crate) fn kill(pid: u32) {
    // SAFETY: `kill` has no memory-safety preconditions; it is called on a pid that is still our
    // unreaped child (the caller's contract), so it signals that process and no other.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}
