//! `ThreadPoolBuilder::start_handler` / `exit_handler`: run once per worker, and a panicking
//! handler aborts (checked in a child process: this test binary re-run on one test).

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[test]
fn start_and_exit_handlers_run_once_per_worker() {
    let started = Arc::new(Mutex::new(Vec::new()));
    let exited = Arc::new(AtomicUsize::new(0));
    let (s, e) = (Arc::clone(&started), Arc::clone(&exited));
    let pool = parjob::ThreadPoolBuilder::new()
        .num_threads(3)
        .start_handler(move |index| {
            s.lock()
                .unwrap()
                .push((index, std::thread::current().name().map(str::to_owned)))
        })
        .exit_handler(move |_| {
            e.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap();
    // Every start handler has returned when `build` does, on the worker thread itself.
    let mut seen = started.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        (0..3)
            .map(|i| (i, Some(format!("parjob-worker-{i}"))))
            .collect::<Vec<_>>()
    );
    assert_eq!(pool.install(|| 7), 7);
    assert_eq!(exited.load(Ordering::SeqCst), 0);
    drop(pool);
    assert_eq!(exited.load(Ordering::SeqCst), 3);
}

const CHILD: &str = "PARJOB_HANDLER_PANIC_CHILD";

#[test]
fn panicking_handlers_abort() {
    if let Ok(mode) = std::env::var(CHILD) {
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `no_core` is a valid rlimit that outlives the call; no core file from the abort.
        unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
        if mode == "exit" {
            let pool = parjob::ThreadPoolBuilder::new()
                .num_threads(1)
                .exit_handler(|_| panic!("cannot clean up"))
                .build()
                .unwrap();
            drop(pool);
            unreachable!("drop returned although the exit handler panicked");
        }
        let _ = parjob::ThreadPoolBuilder::new()
            .num_threads(1)
            .start_handler(|_| panic!("cannot set up"))
            .build();
        unreachable!("build returned although the start handler panicked");
    }
    for (mode, message, which) in [
        (
            "start",
            "cannot set up",
            "start handler of worker 0 panicked",
        ),
        (
            "exit",
            "cannot clean up",
            "exit handler of worker 0 panicked",
        ),
    ] {
        let output = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "panicking_handlers_abort", "--nocapture"])
            .env(CHILD, mode)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            output.status.signal(),
            Some(libc::SIGABRT),
            "{mode}: {stderr}"
        );
        assert!(stderr.contains(message), "{stderr}");
        assert!(stderr.contains(which), "{stderr}");
    }
}
