//! Criterion benchmarks of the suite shapes on the CPU backend: one group per
//! case and direction, one function per algorithm (`auto` and each forced one),
//! so a report compares algorithms on one shape. Throughput is in FLOPs:
//! criterion prints them as "elem/s", so 1 Gelem/s is 1 GFLOP/s.
//!
//! Environment:
//! - `FERROCONV_BENCH_CASES`: `all`, or comma-separated case names
//!   (default: one case of each kind, so `cargo bench` takes a few minutes);
//! - `FERROCONV_BENCH_THREADS`: CPU threads (default: one per core).
//!
//! `cargo bench --bench conv -- r50_3x3_256` runs one shape (criterion's filter).

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ferroconv::bench::{Direction, Prepared, Suite};
use ferroconv::{CpuAlgorithm, CpuBackend};

/// One case of each kind: tiny (call overhead), dense 3x3, depthwise, grouped,
/// and the two transposed convs.
const DEFAULT_CASES: &[&str] =
    &["article_conv", "article_convT", "r50_3x3_256", "mbv2_dw_144", "resnext_g32", "unet_up_128"];

fn selected_suite() -> Suite {
    let suite = Suite::builtin().expect("the built-in suite parses");
    match std::env::var("FERROCONV_BENCH_CASES") {
        Ok(list) if list == "all" => suite,
        Ok(list) => suite.select(&list.split(',').collect::<Vec<_>>()).expect("FERROCONV_BENCH_CASES names cases"),
        Err(_) => suite.select(DEFAULT_CASES).expect("the default cases are in the suite"),
    }
}

fn threads() -> usize {
    match std::env::var("FERROCONV_BENCH_THREADS") {
        Ok(n) => n.parse().expect("FERROCONV_BENCH_THREADS is a number"),
        Err(_) => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

fn conv(c: &mut Criterion) {
    let threads = threads();
    let backends: Vec<CpuBackend> = std::iter::once(CpuAlgorithm::Auto)
        .chain(CpuAlgorithm::ALL.iter().copied())
        .map(|a| CpuBackend::with_threads(threads).expect("a thread pool starts").with_algorithm(a))
        .collect();
    for case in selected_suite().cases() {
        let geometry = case.geometry(1).expect("suite cases are valid");
        for direction in Direction::ALL {
            let mut prepared = Prepared::<f32, _>::new(&backends[0], geometry.clone(), direction).expect("allocates");
            let mut group =
                c.benchmark_group(format!("{}.{} [elem = FLOP, {threads} threads]", case.name, direction.name()));
            group.throughput(Throughput::Elements(u64::try_from(prepared.flops()).expect("fits u64")));
            group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
            for backend in &backends {
                group.bench_function(BenchmarkId::from_parameter(backend.algorithm().name()), |b| {
                    b.iter(|| prepared.run(backend).expect("the op runs"))
                });
            }
            group.finish();
        }
    }
}

criterion_group!(benches, conv);
criterion_main!(benches);
