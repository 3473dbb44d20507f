//! Prometheus metrics of the Kubernetes controller and its HTTP endpoints: `/metrics`,
//! `/healthz` (the process answers) and `/readyz`: the caches have synced once **and** the
//! controller loop turned recently (true on a standby replica too, so rollouts do not wait for
//! leadership). A loop that stops turning (a call that never returns) fails `/readyz` after
//! [`Metrics::stall_after`], and the leader stops renewing its Lease, so a standby takes over.
//!
//! Metric names match `gantry serve` where the meaning is the same (queue gauges, the cycle
//! histogram, GPUs, preemptions), so one Grafana dashboard (`deploy/grafana/`) serves both.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_engine::JobPhase;
use gantry_metrics::SchedulerMetrics;
use prometheus::{Histogram, IntCounter, IntGauge};

use crate::mirror::Mirror;

/// The controller's metrics: the shared set (through `Deref`) and Kubernetes mode's own.
#[derive(Debug, Clone)]
pub struct Metrics {
    core: SchedulerMetrics,
    /// Pods bound.
    pub binds: IntCounter,
    /// Binds refused by the API.
    pub bind_errors: IntCounter,
    /// Pods evicted.
    pub evictions: IntCounter,
    /// Evictions the API refused (a PodDisruptionBudget, or an error).
    pub eviction_refusals: IntCounter,
    /// Time from a bind's planning to the API's answer.
    pub bind_latency: Histogram,
    /// Binds and evictions sent and not yet answered.
    pub writes_in_flight: IntGauge,
    /// Events dropped because the event queue was full.
    pub events_dropped: IntCounter,
    /// Events written.
    pub events: IntCounter,
    /// 1 while this replica holds the lease.
    pub is_leader: IntGauge,
    ready: Arc<AtomicBool>,
    /// When the loop last turned, in ms since `epoch`.
    beat_ms: Arc<AtomicU64>,
    stall_ms: Arc<AtomicU64>,
    epoch: Instant,
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
            "Scheduling cycle duration (engine only: API writes run outside the cycle)",
            "GPUs known from node inventories",
            "Nodes that take pods",
        );
        Metrics {
            binds: core.counter("gantry_binds_total", "Pods bound"),
            bind_errors: core.counter("gantry_bind_errors_total", "Binds refused by the API"),
            evictions: core.counter("gantry_evictions_total", "Pods evicted"),
            eviction_refusals: core.counter(
                "gantry_eviction_refusals_total",
                "Evictions the API refused (PodDisruptionBudget, errors)",
            ),
            bind_latency: core.histogram(
                "gantry_bind_duration_seconds",
                "From a bind's planning to the API server's answer (throttle wait included)",
            ),
            writes_in_flight: core.gauge(
                "gantry_api_writes_in_flight",
                "Binds and evictions sent and not answered yet",
            ),
            events_dropped: core.counter(
                "gantry_events_dropped_total",
                "Events dropped because the event queue was full",
            ),
            events: core.counter("gantry_events_total", "Events written"),
            is_leader: core.gauge("gantry_is_leader", "1 while this replica holds the lease"),
            ready: Arc::new(AtomicBool::new(false)),
            beat_ms: Arc::new(AtomicU64::new(0)),
            stall_ms: Arc::new(AtomicU64::new(30_000)),
            epoch: Instant::now(),
            core,
        }
    }

    /// The controller loop turned now.
    pub fn beat(&self) {
        self.beat_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long the loop may go without turning before it counts as stalled.
    pub fn set_stall_after(&self, d: Duration) {
        self.stall_ms.store(d.as_millis() as u64, Ordering::Relaxed);
    }

    /// See [`Metrics::set_stall_after`].
    pub fn stall_after(&self) -> Duration {
        Duration::from_millis(self.stall_ms.load(Ordering::Relaxed))
    }

    /// How long since the loop last turned.
    pub fn since_beat(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.beat_ms.load(Ordering::Relaxed)))
    }

    /// Whether the loop has not turned for longer than [`Metrics::stall_after`].
    pub fn stalled(&self) -> bool {
        self.since_beat() > self.stall_after()
    }

    /// Mark the caches synced (`/readyz` answers 200 from then on).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Whether the caches have synced.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// What `/readyz` answers: synced and not stalled.
    pub fn is_healthy(&self) -> bool {
        self.is_ready() && !self.stalled()
    }

    /// Bring the gauges up to the mirror.
    pub fn observe(&self, m: &Mirror) {
        let snap = m.snapshot();
        self.observe_queues(snap);
        self.running.reset();
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

/// Serve `/metrics`, `/healthz` and `/readyz` (caches synced, loop not stalled) on `listener`
/// until the task is dropped.
///
/// # Errors
/// The listener failed.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Metrics) -> std::io::Result<()> {
    serve_with(listener, metrics, axum::Router::new()).await
}

/// [`serve`] with `pages` beside the endpoints (the dashboard's routes).
///
/// # Errors
/// The listener failed.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    pages: axum::Router,
) -> std::io::Result<()> {
    let m = metrics.clone();
    gantry_metrics::serve(
        listener,
        move || m.render(),
        move || metrics.is_healthy(),
        pages,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_synced_caches_and_a_loop_that_turns() {
        let m = Metrics::new();
        m.set_stall_after(Duration::from_millis(50));
        m.beat();
        assert!(!m.is_healthy(), "ready before the caches synced");
        m.set_ready();
        assert!(m.is_healthy());
        std::thread::sleep(Duration::from_millis(80));
        assert!(m.stalled());
        assert!(!m.is_healthy(), "ready while the loop stalls");
        m.beat();
        assert!(m.is_healthy());
    }
}
