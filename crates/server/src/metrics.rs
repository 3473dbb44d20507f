//! Prometheus metrics and the health endpoints, served over plain HTTP beside the gRPC API:
//! `/metrics`, `/healthz` (the process answers) and `/readyz` (the store was recovered and the
//! writer is alive — true once [`crate::Server::start`] returned).
//!
//! Gauges are computed from the state when scraped; counters are brought up to the state's
//! counters at the same time; the cycle histogram is observed by the scheduling loop.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::record::JobState;
use crate::state::State;

/// The server's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Pending jobs per queue.
    pub pending: IntGaugeVec,
    /// Running jobs per queue.
    pub running: IntGaugeVec,
    /// Duration of scheduling cycles.
    pub cycle: Histogram,
    /// GPUs allocated (whole devices; shares counted by fraction, rounded down).
    pub gpus_allocated: IntGauge,
    /// Healthy GPUs on ready nodes.
    pub gpus: IntGauge,
    /// Ready nodes.
    pub nodes_ready: IntGauge,
    /// Preemptions applied.
    pub preemptions: IntCounter,
    /// Jobs requeued because their node was lost.
    pub lost_requeues: IntCounter,
    /// Store transactions committed.
    pub commits: IntCounter,
    /// Writes committed (several per transaction under load).
    pub writes: IntCounter,
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
        let cycle = must(Histogram::with_opts(
            HistogramOpts::new(
                "gantry_schedule_cycle_duration_seconds",
                "One scheduling cycle, from the engine run to its plan being durable",
            )
            .buckets(prometheus::exponential_buckets(0.000_05, 2.0, 16).unwrap_or_default()),
        ));
        let gpus_allocated = must(IntGauge::new("gantry_gpus_allocated", "GPUs allocated"));
        let gpus = must(IntGauge::new("gantry_gpus", "Healthy GPUs on ready nodes"));
        let nodes_ready = must(IntGauge::new(
            "gantry_nodes_ready",
            "Nodes within their lease",
        ));
        let preemptions = must(IntCounter::new(
            "gantry_preemptions_total",
            "Preemptions applied",
        ));
        let lost_requeues = must(IntCounter::new(
            "gantry_lost_node_requeues_total",
            "Jobs requeued because their node was lost",
        ));
        let commits = must(IntCounter::new(
            "gantry_store_commits_total",
            "Store transactions",
        ));
        let writes = must(IntCounter::new("gantry_store_writes_total", "Store writes"));
        for c in [
            Box::new(pending.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(running.clone()),
            Box::new(cycle.clone()),
            Box::new(gpus_allocated.clone()),
            Box::new(gpus.clone()),
            Box::new(nodes_ready.clone()),
            Box::new(preemptions.clone()),
            Box::new(lost_requeues.clone()),
            Box::new(commits.clone()),
            Box::new(writes.clone()),
        ] {
            must(registry.register(c));
        }
        Metrics {
            registry,
            pending,
            running,
            cycle,
            gpus_allocated,
            gpus,
            nodes_ready,
            preemptions,
            lost_requeues,
            commits,
            writes,
        }
    }

    /// Bring gauges and counters up to `state` and the writer's counts, and render the text
    /// exposition format.
    pub fn render(&self, st: &State, commits: u64, writes: u64) -> String {
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
        let up = |c: &IntCounter, to: u64| c.inc_by(to.saturating_sub(c.get()));
        up(&self.preemptions, st.counters.preemptions);
        up(&self.lost_requeues, st.counters.lost_requeues);
        up(&self.commits, commits);
        up(&self.writes, writes);
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            return format!("# encoding failed: {e}\n");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
