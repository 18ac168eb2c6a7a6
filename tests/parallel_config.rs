//! `parallel_config` / `parallel_backend`: scoped, nested, restored even by a panic.

use parjob::{delayed, parallel_backend, parallel_config, Backend, Config, Parallel};
use std::thread::ThreadId;

fn thread_ids(p: &Parallel<'_>) -> Vec<ThreadId> {
    p.run((0..16).map(|_| {
        delayed(|_: ()| {
            std::thread::sleep(std::time::Duration::from_micros(200));
            std::thread::current().id()
        })(())
    }))
}

fn runs_on_caller(p: &Parallel<'_>) -> bool {
    let me = std::thread::current().id();
    thread_ids(p).iter().all(|&id| id == me)
}

#[test]
fn default_uses_all_cores() {
    assert_eq!(Parallel::new().get_n_jobs(), -1);
    assert_eq!(
        parjob::effective_n_jobs(Parallel::new().get_n_jobs()),
        Ok(parjob::cpu_count())
    );
}

#[test]
fn parallel_backend_overrides_nest_and_restore() {
    assert_eq!(Parallel::new().get_n_jobs(), -1);
    parallel_backend(Backend::Sequential, || {
        assert!(runs_on_caller(&Parallel::new().n_jobs(4)));
        parallel_config(
            Config::new().backend(Backend::WorkStealing).n_jobs(3),
            || {
                assert_eq!(Parallel::new().get_n_jobs(), 3);
                parallel_config(Config::new().n_jobs(5), || {
                    // backend inherited from the enclosing override, n_jobs replaced
                    assert_eq!(Parallel::new().get_n_jobs(), 5);
                });
                assert_eq!(Parallel::new().get_n_jobs(), 3);
            },
        );
        // Back to the outer override: sequential again.
        assert!(runs_on_caller(&Parallel::new().n_jobs(4)));
    });
    assert_eq!(Parallel::new().get_n_jobs(), -1);
    if parjob::cpu_count() > 1 {
        assert!(!runs_on_caller(
            &Parallel::new().n_jobs(2).backend(Backend::Pool(
                parjob::ThreadPoolBuilder::new()
                    .num_threads(2)
                    .build()
                    .unwrap()
            ))
        ));
    }
}

#[test]
fn override_is_restored_after_a_panic() {
    let result = std::panic::catch_unwind(|| {
        parallel_config(Config::new().n_jobs(7), || {
            parallel_backend(Backend::Sequential, || {
                assert_eq!(Parallel::new().get_n_jobs(), 7);
                panic!("inside the override");
            })
        })
    });
    assert!(result.is_err());
    assert_eq!(Parallel::new().get_n_jobs(), -1);
    // And the backend is no longer Sequential.
    let p = Parallel::new();
    assert!(format!("{p:?}").contains("WorkStealing"));
}

#[test]
fn overrides_are_per_thread() {
    parallel_config(Config::new().n_jobs(2), || {
        let other = std::thread::spawn(|| Parallel::new().get_n_jobs())
            .join()
            .unwrap();
        assert_eq!(other, -1);
        assert_eq!(Parallel::new().get_n_jobs(), 2);
    });
}

#[test]
fn explicit_settings_win_over_the_override() {
    parallel_config(Config::new().n_jobs(1).verbose(0), || {
        assert_eq!(Parallel::new().n_jobs(3).get_n_jobs(), 3);
    });
}

/// `effective_n_jobs` answers for a call made where it is asked: on the default backend, a call
/// nested in a pool runs on that pool, so at most its threads (it used to answer `n` there).
#[test]
fn effective_n_jobs_inside_a_pool_counts_that_pools_threads() {
    let pool = parjob::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    assert_eq!(pool.install(|| parjob::effective_n_jobs(8)), Ok(2));
    assert_eq!(pool.install(|| parjob::effective_n_jobs(1)), Ok(1));
    // What a call nested there really uses: never more than 2 threads.
    let threads = pool.install(|| {
        let ids = Parallel::new().n_jobs(8).run((0..64).map(|_| {
            parjob::Delayed::new(|| {
                std::thread::sleep(std::time::Duration::from_millis(1));
                std::thread::current().id()
            })
        }));
        ids.into_iter()
            .collect::<std::collections::HashSet<_>>()
            .len()
    });
    assert!(threads <= 2, "{threads}");
    assert_eq!(parjob::effective_n_jobs(8), Ok(8), "outside any pool");
}
