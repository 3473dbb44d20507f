//! Binds per second of the whole controller against the fake API server (tower-test mock
//! transport): one-GPU pods appear at once on 125 nodes × 8 H100; the time runs from the pods'
//! creation to the last pod bound as seen through the fake's store. Two client settings: no
//! throttle (`--qps 0`, 1,000 pods: what the controller itself sustains) and the shipped default
//! (`--qps 50 --burst 100`, 200 pods, so a run stays short). Each bind is one request (the
//! Binding carries the annotations); status writes share its bucket, events have their own.
//! This is the controller alone, with no API server cost: `examples/bind_throughput.rs`
//! measures the same against a real API server.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gantry_kube::{ControllerConfig, Metrics};

const NODES: u32 = 125;

async fn one_run(pods: u32, qps: f64, burst: u32) -> Duration {
    let api = FakeApi::default();
    for i in 0..NODES {
        let n = format!("n{i}");
        api.apply(CORE, "nodes", node(&n, &format!("r{}", i / 8)));
        api.apply(GANTRY, "nodeinventories", inventory(&n, 8, &[]));
    }
    api.apply(GANTRY, "queues", queue("team-a", None, None));
    let mut cfg = ControllerConfig::new("bench");
    cfg.leader_elect = false;
    cfg.qps = qps;
    cfg.burst = burst;
    cfg.debounce = Duration::from_millis(5);
    cfg.tick = Duration::from_millis(100);
    let client = api.client();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let ctl = tokio::spawn(async move {
        let _ = gantry_kube::run(client, cfg, Metrics::new(), async {
            let _ = rx.await;
        })
        .await;
    });
    // Let the watches sync on the empty pod set first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    for i in 0..pods {
        api.apply(
            CORE,
            "pods",
            pod("bench", &format!("p{i}"), 1, None, Some("team-a")),
        );
    }
    api.wait_for(600, "every pod bound", |a| {
        (a.bound_pods() == pods as usize).then_some(())
    })
    .await;
    let took = t0.elapsed();
    let _ = tx.send(());
    let _ = ctl.await;
    took
}

fn binds(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("binds");
    g.sample_size(10);
    for (label, pods, qps, burst) in [
        ("qps-unlimited/1000-pods", 1_000u32, 0.0, 100u32),
        ("qps-50-burst-100/200-pods", 200, 50.0, 100),
    ] {
        g.throughput(Throughput::Elements(u64::from(pods)));
        if qps > 0.0 {
            g.measurement_time(Duration::from_secs(60));
        }
        g.bench_with_input(
            BenchmarkId::from_parameter(label),
            &(pods, qps, burst),
            |b, &(p, q, bu)| {
                b.to_async(&rt).iter_custom(|iters| async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += one_run(p, q, bu).await;
                    }
                    total
                });
            },
        );
    }
    g.finish();
}

criterion_group!(benches, binds);
criterion_main!(benches);
