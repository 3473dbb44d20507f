//! Prometheus metrics and the health endpoints, served over plain HTTP beside the gRPC API:
//! `/metrics`, `/healthz` (the process answers) and `/readyz` (the store was recovered and the
//! writer is alive — true once [`crate::Server::start`] returned).
//!
//! The shared set (queue gauges, cycle histogram, GPUs, ready nodes, preemptions) comes from
//! `gantry-metrics`, the same as in Kubernetes mode; the server adds its store and lost-node
//! counters. Gauges are computed from the state when scraped; counters are brought up to the
//! state's counters at the same time; the cycle histogram is observed by the scheduling loop.

use gantry_metrics::SchedulerMetrics;
use prometheus::{GaugeVec, Histogram, IntCounter, IntCounterVec};

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
    /// Submissions accepted.
    pub submitted: IntCounter,
    /// Jobs finished, by final state.
    pub finished: IntCounterVec,
    /// From a submission's arrival to its durable answer.
    pub submit_latency: Histogram,
    /// Seconds since each node's last heartbeat.
    pub heartbeat_age: GaugeVec,
    /// GPUs per node and model.
    pub node_gpus: GaugeVec,
    /// GPUs held per node (a share or slice counts once per task).
    pub node_gpus_used: GaugeVec,
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
            submitted: core.counter("gantry_jobs_submitted_total", "Submissions accepted"),
            finished: core.counter_vec(
                "gantry_jobs_finished_total",
                "Jobs finished, by final state (succeeded, failed, cancelled)",
                &["state"],
            ),
            submit_latency: core.histogram(
                "gantry_submit_duration_seconds",
                "From a submission's arrival to its durable answer",
            ),
            heartbeat_age: core.gauge_vec(
                "gantry_node_heartbeat_age_seconds",
                "Seconds since each node's agent last heartbeated (a lost node keeps growing)",
                &["node"],
            ),
            node_gpus: core.gauge_vec(
                "gantry_node_gpus",
                "GPUs per node and model",
                &["node", "model"],
            ),
            node_gpus_used: core.gauge_vec(
                "gantry_node_gpus_used",
                "GPUs held per node (a shared GPU or MIG slice counts once per task)",
                &["node"],
            ),
            core,
        }
    }

    /// Bring gauges and counters up to `state` and the writer's counts, and render the text
    /// exposition format.
    pub fn render(&self, st: &State, commits: u64, writes: u64, store_errors: u64) -> String {
        self.observe_queues(&st.snap);
        for q in st.queues.keys() {
            self.running.with_label_values(&[q]).set(0);
        }
        for e in st.jobs.values() {
            if e.rec.state == JobState::Running {
                self.running.with_label_values(&[&e.rec.spec.queue]).inc();
            }
        }
        // GPUs held per node, each counted once, as `gantry nodes` and the dashboard count.
        let used: std::collections::BTreeMap<String, f64> = st
            .snap
            .gpu_report()
            .into_iter()
            .map(|n| {
                let k = n.gpus_held();
                (n.name, f64::from(k))
            })
            .collect();
        let now = crate::server::now_ms();
        self.heartbeat_age.reset();
        self.node_gpus.reset();
        self.node_gpus_used.reset();
        for (name, n) in &st.nodes {
            self.heartbeat_age
                .with_label_values(&[name])
                .set(now.saturating_sub(n.last_seen_ms) as f64 / 1000.0);
            let mut models: std::collections::BTreeMap<&str, f64> = Default::default();
            for d in &n.rec.node.devices {
                *models.entry(d.model.as_str()).or_default() += 1.0;
            }
            for (m, k) in models {
                self.node_gpus.with_label_values(&[name, m]).set(k);
            }
            self.node_gpus_used
                .with_label_values(&[name])
                .set(used.get(name.as_str()).copied().unwrap_or(0.0));
        }
        SchedulerMetrics::raise_to(&self.submitted, st.counters.submitted);
        for (state, n) in [
            ("succeeded", st.counters.succeeded),
            ("failed", st.counters.failed),
            ("cancelled", st.counters.cancelled),
        ] {
            SchedulerMetrics::raise_to(&self.finished.with_label_values(&[state]), n);
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
