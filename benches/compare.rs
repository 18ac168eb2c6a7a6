//! Criterion: every workload of the comparison run (`examples/compare/`, same code in
//! `benches/workloads/`), sequential vs parjob vs rayon vs chili (vs a static 2-way split), each on
//! 1 thread and on all cores (vs, for the fork-join workloads, the same recursion through a `join`
//! with no scheduler, on 1 thread), one criterion group per workload so the report puts them side
//! by side. `cargo bench --bench compare` (filter: `cargo bench --bench compare -- fib`).

mod workloads;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::time::Duration;
use workloads::fork_join::{Fib, JoinLatency, Quicksort, TreeSum};
use workloads::{Contender, Pools, Workload};

fn thread_counts() -> Vec<usize> {
    let all = parjob::cpu_count();
    if all > 1 {
        vec![1, all]
    } else {
        vec![1]
    }
}

fn bench_workload(c: &mut Criterion, workload: &mut dyn Workload, pools: &[Pools]) {
    let mut group = c.benchmark_group(workload.name());
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    workload.setup();
    let expected = workload
        .run(Contender::Sequential, &pools[0])
        .map(|returned| workload.checksum(returned));
    group.bench_function("sequential", |b| {
        b.iter(|| {
            workload.setup();
            workload.run(Contender::Sequential, &pools[0])
        })
    });
    for p in pools {
        for contender in [
            Contender::Parjob,
            Contender::Rayon,
            Contender::Chili,
            Contender::StaticSplit,
            Contender::JoinShape,
        ] {
            workload.setup();
            let Some(returned) = workload.run(contender, p) else {
                continue;
            };
            let got = Some(workload.checksum(returned));
            assert_eq!(
                got,
                expected,
                "{} gave a wrong answer on {}",
                contender.name(),
                workload.name()
            );
            group.bench_with_input(
                BenchmarkId::new(contender.name(), format!("{}t", p.threads)),
                p,
                |b, p| {
                    b.iter(|| {
                        workload.setup();
                        workload.run(contender, p)
                    })
                },
            );
        }
    }
    group.finish();
}

fn all_workloads(c: &mut Criterion) {
    let pools: Vec<Pools> = thread_counts().into_iter().map(Pools::new).collect();
    bench_workload(c, &mut Fib(30), &pools);
    bench_workload(c, &mut Fib(35), &pools);
    bench_workload(c, &mut TreeSum::new(20, false), &pools);
    bench_workload(c, &mut TreeSum::new(23, false), &pools);
    bench_workload(c, &mut TreeSum::new(23, true), &pools);
    bench_workload(c, &mut Quicksort::new(1_000_000), &pools);
    for mut workload in workloads::tasks::all(false) {
        bench_workload(c, workload.as_mut(), &pools);
    }
    bench_workload(c, &mut JoinLatency { calls: 1000 }, &pools);
    for mut workload in workloads::tasks::latency(true) {
        bench_workload(c, workload.as_mut(), &pools);
    }
}

criterion_group!(benches, all_workloads);
criterion_main!(benches);
