//! Prometheus metrics of the Kubernetes controller and its HTTP endpoints: `/metrics`,
//! `/healthz` (the process answers) and `/readyz` (the caches have synced once; true on a
//! standby replica too, so rollouts do not wait for leadership).
//!
//! Metric names match `gantry serve` where the meaning is the same (queue gauges, the cycle
//! histogram, GPUs, preemptions), so one Grafana dashboard (`deploy/grafana/`) serves both.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use gantry_engine::JobPhase;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::mirror::Mirror;

/// The controller's metrics. Cheap to clone (shared handles).
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Pending jobs per queue.
    pub pending: IntGaugeVec,
    /// Running jobs per queue.
    pub running: IntGaugeVec,
    /// GPUs used per queue and flavor.
    pub queue_gpus: GaugeVec,
    /// Dominant share per queue.
    pub queue_share: GaugeVec,
    /// Duration of scheduling cycles (engine plus the writes they cause).
    pub cycle: Histogram,
    /// GPUs allocated.
    pub gpus_allocated: IntGauge,
    /// GPUs known from inventories.
    pub gpus: IntGauge,
    /// Nodes that take pods.
    pub nodes_ready: IntGauge,
    /// Jobs preempted.
    pub preemptions: IntCounter,
    /// Pods bound.
    pub binds: IntCounter,
    /// Binds refused by the API.
    pub bind_errors: IntCounter,
    /// Pods evicted.
    pub evictions: IntCounter,
    /// 1 while this replica holds the lease.
    pub is_leader: IntGauge,
    ready: Arc<AtomicBool>,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Names and labels below are fixed and valid; registration of distinct names cannot fail.
    match r {
        Ok(v) => v,
        Err(e) => unreachable!("metric definition: {e}"),
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Define and register every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let pending = must(IntGaugeVec::new(
            Opts::new("gantry_queue_pending_jobs", "Pending jobs per queue"),
            &["queue"],
        ));
        let running = must(IntGaugeVec::new(
            Opts::new("gantry_queue_running_jobs", "Running jobs per queue"),
            &["queue"],
        ));
        let queue_gpus = must(GaugeVec::new(
            Opts::new("gantry_queue_gpus_used", "GPUs used per queue and flavor"),
            &["queue", "flavor"],
        ));
        let queue_share = must(GaugeVec::new(
            Opts::new("gantry_queue_share", "Dominant share per queue"),
            &["queue"],
        ));
        let cycle = must(Histogram::with_opts(
            HistogramOpts::new(
                "gantry_schedule_cycle_duration_seconds",
                "Scheduling cycle duration (engine and API writes)",
            )
            .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16).unwrap_or_default()),
        ));
        let gauge = |n: &str, h: &str| must(IntGauge::new(n, h));
        let counter = |n: &str, h: &str| must(IntCounter::new(n, h));
        let gpus_allocated = gauge("gantry_gpus_allocated", "GPUs allocated");
        let gpus = gauge("gantry_gpus", "GPUs known from node inventories");
        let nodes_ready = gauge("gantry_nodes_ready", "Nodes that take pods");
        let preemptions = counter("gantry_preemptions_total", "Jobs preempted");
        let binds = counter("gantry_binds_total", "Pods bound");
        let bind_errors = counter("gantry_bind_errors_total", "Binds refused by the API");
        let evictions = counter("gantry_evictions_total", "Pods evicted");
        let is_leader = gauge("gantry_is_leader", "1 while this replica holds the lease");
        for c in [
            Box::new(pending.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(running.clone()),
            Box::new(queue_gpus.clone()),
            Box::new(queue_share.clone()),
            Box::new(cycle.clone()),
            Box::new(gpus_allocated.clone()),
            Box::new(gpus.clone()),
            Box::new(nodes_ready.clone()),
            Box::new(preemptions.clone()),
            Box::new(binds.clone()),
            Box::new(bind_errors.clone()),
            Box::new(evictions.clone()),
            Box::new(is_leader.clone()),
        ] {
            must(registry.register(c));
        }
        Metrics {
            registry,
            pending,
            running,
            queue_gpus,
            queue_share,
            cycle,
            gpus_allocated,
            gpus,
            nodes_ready,
            preemptions,
            binds,
            bind_errors,
            evictions,
            is_leader,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Mark the caches synced (`/readyz` answers 200 from then on).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Whether the caches have synced.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Bring the gauges up to the mirror.
    pub fn observe(&self, m: &Mirror) {
        let snap = m.snapshot();
        self.pending.reset();
        self.running.reset();
        self.queue_gpus.reset();
        self.queue_share.reset();
        for q in 0..snap.queue_count() {
            let qid = gantry_engine::QueueId(q as u32);
            let name = snap.queue_name(qid).to_string();
            if snap.queue_is_leaf(qid) {
                self.pending
                    .with_label_values(&[&name])
                    .set(snap.queue_pending(qid) as i64);
            }
            let mut share: f64 = 0.0;
            for f in snap.flavors() {
                let used = snap.queue_usage(qid, f);
                let nominal = snap.queue_nominal(qid, f);
                if used > 0 {
                    self.queue_gpus
                        .with_label_values(&[&name, snap.flavor_name(f)])
                        .set(used as f64 / 1000.0);
                }
                if nominal > 0 {
                    share = share.max(used as f64 / nominal as f64);
                }
            }
            self.queue_share.with_label_values(&[&name]).set(share);
        }
        for id in m.job_ids() {
            if snap.job_phase(id) == JobPhase::Running {
                let q = snap.job_queue(id);
                self.running.with_label_values(&[snap.queue_name(q)]).inc();
            }
        }
        let t = snap.gpu_totals();
        self.gpus_allocated.set((t.allocated_milli / 1000) as i64);
        self.gpus.set(t.devices as i64);
        self.nodes_ready.set(m.ready_nodes() as i64);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            return format!("# encoding failed: {e}\n");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Serve `/metrics`, `/healthz` and `/readyz` on `listener` until the task is dropped.
///
/// # Errors
/// The listener failed.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Metrics) -> std::io::Result<()> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let m1 = metrics.clone();
    let m2 = metrics;
    let app = axum::Router::new()
        .route("/metrics", get(move || async move { m1.render() }))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                if m2.is_ready() {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
                }
            }),
        );
    axum::serve(listener, app).await
}
