//! Prometheus metrics of the Kubernetes controller and its HTTP endpoints: `/metrics`,
//! `/healthz` (the process answers) and `/readyz` (the caches have synced once; true on a
//! standby replica too, so rollouts do not wait for leadership).
//!
//! Metric names match `gantry serve` where the meaning is the same (queue gauges, the cycle
//! histogram, GPUs, preemptions), so one Grafana dashboard (`deploy/grafana/`) serves both.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use gantry_engine::JobPhase;
use gantry_metrics::SchedulerMetrics;
use prometheus::{GaugeVec, IntCounter, IntGauge};

use crate::mirror::Mirror;

/// The controller's metrics: the shared set (through `Deref`) and Kubernetes mode's own.
#[derive(Debug, Clone)]
pub struct Metrics {
    core: SchedulerMetrics,
    /// GPUs used per queue and flavor.
    pub queue_gpus: GaugeVec,
    /// Dominant share per queue.
    pub queue_share: GaugeVec,
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

impl std::ops::Deref for Metrics {
    type Target = SchedulerMetrics;
    fn deref(&self) -> &SchedulerMetrics {
        &self.core
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
        let core = SchedulerMetrics::new(
            "Scheduling cycle duration (engine and API writes)",
            "GPUs known from node inventories",
            "Nodes that take pods",
        );
        Metrics {
            queue_gpus: core.gauge_vec(
                "gantry_queue_gpus_used",
                "GPUs used per queue and flavor",
                &["queue", "flavor"],
            ),
            queue_share: core.gauge_vec(
                "gantry_queue_share",
                "Dominant share per queue",
                &["queue"],
            ),
            binds: core.counter("gantry_binds_total", "Pods bound"),
            bind_errors: core.counter("gantry_bind_errors_total", "Binds refused by the API"),
            evictions: core.counter("gantry_evictions_total", "Pods evicted"),
            is_leader: core.gauge("gantry_is_leader", "1 while this replica holds the lease"),
            ready: Arc::new(AtomicBool::new(false)),
            core,
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
        self.core.render()
    }
}

/// Serve `/metrics`, `/healthz` and `/readyz` (caches synced) on `listener` until the task is
/// dropped.
///
/// # Errors
/// The listener failed.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Metrics) -> std::io::Result<()> {
    let m = metrics.clone();
    gantry_metrics::serve(listener, move || m.render(), move || metrics.is_ready()).await
}
