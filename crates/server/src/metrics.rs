//! Prometheus metrics and the health endpoints, served over plain HTTP beside the gRPC API:
//! `/metrics`, `/healthz` (the process answers) and `/readyz` (the store was recovered and the
//! writer is alive — true once [`crate::Server::start`] returned).
//!
//! The shared set (queue gauges, cycle histogram, GPUs, ready nodes, preemptions) comes from
//! `gantry-metrics`, the same as in Kubernetes mode; the server adds its store and lost-node
//! counters. Gauges are computed from the state when scraped; counters are brought up to the
//! state's counters at the same time; the cycle histogram is observed by the scheduling loop.

use gantry_metrics::SchedulerMetrics;
use prometheus::IntCounter;

use crate::record::JobState;
use crate::state::State;

/// The server's metrics: the shared set (through `Deref`) and the server's own.
#[derive(Debug, Clone)]
pub struct Metrics {
    core: SchedulerMetrics,
    /// Jobs requeued because their node was lost.
    pub lost_requeues: IntCounter,
    /// Store transactions committed.
    pub commits: IntCounter,
    /// Writes committed (several per transaction under load).
    pub writes: IntCounter,
    /// Failed store commits (each retry after reopening counts).
    pub store_errors: IntCounter,
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
            "One scheduling cycle, from the engine run to its plan being durable",
            "Healthy GPUs on ready nodes",
            "Nodes within their lease",
        );
        Metrics {
            lost_requeues: core.counter(
                "gantry_lost_node_requeues_total",
                "Jobs requeued because their node was lost",
            ),
            commits: core.counter("gantry_store_commits_total", "Store transactions"),
            writes: core.counter("gantry_store_writes_total", "Store writes"),
            store_errors: core.counter(
                "gantry_store_errors_total",
                "Failed store commits (each retry after reopening counts); readiness fails once a batch cannot be committed",
            ),
            core,
        }
    }

    /// Bring gauges and counters up to `state` and the writer's counts, and render the text
    /// exposition format.
    pub fn render(&self, st: &State, commits: u64, writes: u64, store_errors: u64) -> String {
        for q in st.queues.keys() {
            self.pending.with_label_values(&[q]).set(0);
            self.running.with_label_values(&[q]).set(0);
        }
        for e in st.jobs.values() {
            let g = match e.rec.state {
                JobState::Pending => &self.pending,
                JobState::Running => &self.running,
                _ => continue,
            };
            g.with_label_values(&[&e.rec.spec.queue]).inc();
        }
        let t = st.snap.gpu_totals();
        self.gpus_allocated.set((t.allocated_milli / 1000) as i64);
        self.gpus.set(t.devices as i64);
        self.nodes_ready
            .set(st.nodes.values().filter(|n| n.ready).count() as i64);
        SchedulerMetrics::raise_to(&self.preemptions, st.counters.preemptions);
        SchedulerMetrics::raise_to(&self.lost_requeues, st.counters.lost_requeues);
        SchedulerMetrics::raise_to(&self.commits, commits);
        SchedulerMetrics::raise_to(&self.writes, writes);
        SchedulerMetrics::raise_to(&self.store_errors, store_errors);
        self.core.render()
    }
}
