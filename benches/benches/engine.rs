//! Engine throughput at the sizes. Figures are medians of criterion samples; the
//! incremental benchmark also prints its own p50/p99 over individual cycles.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use gantry_benches::{flat, jobs, loaded, submit_all};
use gantry_engine::testing::{ClusterBuilder, JobBuilder, QueueBuilder};
use gantry_engine::{schedule, Profile, Snapshot};

/// 50,000 one-GPU jobs onto 5,000 nodes × 8 GPUs, in one cycle: 40,000 fit (every GPU) and
/// 10,000 are left pending with a reason — both are part of the cycle's work.
fn one_gpu_jobs(c: &mut Criterion) {
    let (base, q) = flat(5_000);
    let js = jobs(&q, "j", 50_000, |b| b.queue("q0").gpus(1));
    let mut s0 = base.clone();
    submit_all(&mut s0, &js, 0);
    let mut g = c.benchmark_group("cycle");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("50k_1gpu_jobs_5k_nodes", |b| {
        b.iter_batched(
            || s0.clone(),
            |mut s| {
                let plan = schedule(&mut s, &Profile::gantry(), 100_000);
                assert_eq!(plan.stats.tasks_placed, 40_000);
                assert_eq!(s.pending_count(), 10_000);
                plan
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// The same with constraints: 10% of the nodes are tainted (no job tolerates them), half the
/// nodes carry `zone=a` and half the jobs select it. 36,000 GPUs are eligible; unconstrained
/// jobs that arrive early also take `zone=a` GPUs, so 34,000 are placed and 16,000 wait with a
/// reason (and nothing lands on a tainted node).
fn one_gpu_jobs_with_taints_and_selectors(c: &mut Criterion) {
    let cluster = ClusterBuilder::new()
        .pool("a", 2_250, 8, "h100-80gb")
        .label("zone", "a")
        .pool("b", 2_250, 8, "h100-80gb")
        .label("zone", "b")
        .pool("t", 500, 8, "h100-80gb")
        .taint("dedicated=other:NoSchedule")
        .build();
    let q = QueueBuilder::new()
        .queue("q0", "", "h100-80gb", 40_000)
        .build();
    let base = Snapshot::new(&cluster, &q).expect("snapshot");
    let js: Vec<_> = (0..50_000)
        .map(|i| {
            let b = JobBuilder::new(&format!("j{i}")).queue("q0").gpus(1);
            if i % 2 == 0 {
                b.selector("zone", "a")
            } else {
                b
            }
            .build(&q)
        })
        .collect();
    let mut s0 = base.clone();
    submit_all(&mut s0, &js, 0);
    let mut g = c.benchmark_group("cycle");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("50k_1gpu_jobs_5k_nodes_10pct_tainted_half_selector", |b| {
        b.iter_batched(
            || s0.clone(),
            |mut s| {
                let plan = schedule(&mut s, &Profile::gantry(), 100_000);
                assert_eq!(plan.stats.tasks_placed, 34_000);
                plan
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// 5,000 gangs × 8 tasks × 1 GPU, each gang inside one NVLink domain, on 5,000 nodes.
fn domain_gangs(c: &mut Criterion) {
    let (base, q) = flat(5_000);
    let js = jobs(&q, "g", 5_000, |b| {
        b.queue("q0").tasks(8).gpus(1).placement("nvlink-domain")
    });
    let mut s0 = base.clone();
    submit_all(&mut s0, &js, 0);
    let mut g = c.benchmark_group("cycle");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("5k_gangs_x8_nvlink_5k_nodes", |b| {
        b.iter_batched(
            || s0.clone(),
            |mut s| {
                let plan = schedule(&mut s, &Profile::gantry(), 100_000);
                assert_eq!(plan.stats.tasks_placed, 40_000);
                plan
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// An incremental cycle after 100 completions and 100 arrivals, with 100,000 pending jobs,
/// 1,000 queues and 10,000 nodes.
fn incremental(c: &mut Criterion) {
    let (mut s, q, mut running) = loaded(10_000, 1_000, 100_000);
    let mut now = 3_000_000u64;
    let mut next = 0usize;
    let mut samples: Vec<Duration> = Vec::new();
    let mut step =
        |s: &mut gantry_engine::Snapshot, running: &mut Vec<gantry_engine::JobId>| -> Duration {
            for _ in 0..100 {
                if let Some(id) = running.pop() {
                    s.complete(id).expect("complete");
                }
            }
            for i in 0..100 {
                let j = JobBuilder::new(&format!("arr{next}"))
                    .queue(&format!("q{}", (next + i) % 1_000))
                    .gpus([1, 2, 4, 8][next % 4])
                    .build(&q);
                next += 1;
                s.submit(&j, now).expect("submit");
            }
            now += 1_000;
            let t = Instant::now();
            let plan = schedule(s, &Profile::gantry(), now);
            let d = t.elapsed();
            for b in &plan.binds {
                running.insert(0, b.job);
            }
            // Hold the backlog at 100,000: arrivals beyond what the cycle admitted are withdrawn
            // (cancelled) before the next step, outside the timed region.
            let mut k = next;
            while s.pending_count() > 100_000 && k > 0 {
                k -= 1;
                if let Some(id) = s.job_by_name(&format!("arr{k}")) {
                    if s.job_phase(id) == gantry_engine::JobPhase::Pending {
                        s.cancel(id).expect("cancel");
                    }
                }
            }
            d
        };
    let mut g = c.benchmark_group("cycle");
    g.sample_size(50).measurement_time(Duration::from_secs(10));
    g.bench_function(
        "incremental_100_events_100k_pending_1k_queues_10k_nodes",
        |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let d = step(&mut s, &mut running);
                    samples.push(d);
                    total += d;
                }
                total
            })
        },
    );
    g.finish();
    if samples.is_empty() {
        return; // filtered out
    }
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    eprintln!(
        "incremental cycle over {} cycles: p50 {:?}, p99 {:?}, max {:?} ({} jobs pending)",
        samples.len(),
        pct(0.50),
        pct(0.99),
        samples.last().copied().unwrap_or_default(),
        s.pending_count()
    );
}

criterion_group!(
    benches,
    one_gpu_jobs,
    one_gpu_jobs_with_taints_and_selectors,
    domain_gangs,
    incremental
);
criterion_main!(benches);
