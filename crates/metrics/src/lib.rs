//! The metrics every driver of the engine exports, defined once.
//!
//! [`SchedulerMetrics`] owns a Prometheus registry with the shared set — per-queue pending and
//! running jobs, the cycle-duration histogram, GPUs allocated and known, ready nodes,
//! preemptions — and registers a driver's own extras on the same registry
//! ([`SchedulerMetrics::counter`], [`SchedulerMetrics::gauge`], …). `gantry serve` and the
//! Kubernetes controller both build on it, so one Grafana dashboard (`deploy/grafana/`) reads
//! either. [`serve`] answers `/metrics`, `/healthz` and `/readyz` over plain HTTP.

use prometheus::{
    core::Collector, Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The shared metrics and the registry they live in. Cheap to clone (shared handles).
#[derive(Debug, Clone)]
pub struct SchedulerMetrics {
    registry: Registry,
    /// `gantry_queue_pending_jobs{queue}`.
    pub pending: IntGaugeVec,
    /// `gantry_queue_running_jobs{queue}`.
    pub running: IntGaugeVec,
    /// `gantry_schedule_cycle_duration_seconds`.
    pub cycle: Histogram,
    /// `gantry_gpus_allocated`.
    pub gpus_allocated: IntGauge,
    /// `gantry_gpus`.
    pub gpus: IntGauge,
    /// `gantry_nodes_ready`.
    pub nodes_ready: IntGauge,
    /// `gantry_preemptions_total`.
    pub preemptions: IntCounter,
    /// `gantry_queue_gpus_used{queue,flavor}`: GPUs (or slices) in use, subtree included.
    pub queue_used: GaugeVec,
    /// `gantry_queue_gpus_nominal{queue,flavor}`.
    pub queue_nominal: GaugeVec,
    /// `gantry_queue_gpus_borrowed{queue,flavor}`: used beyond nominal.
    pub queue_borrowed: GaugeVec,
    /// `gantry_queue_share{queue}`: the dominant share, used over nominal at its largest.
    pub queue_share: GaugeVec,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Names and labels here and in the drivers are fixed and valid, and each is registered once;
    // registration cannot fail.
    match r {
        Ok(v) => v,
        Err(e) => unreachable!("metric definition: {e}"),
    }
}

impl SchedulerMetrics {
    /// The shared set; `cycle_help` says what one of this driver's cycles spans, `gpus_help`
    /// which GPUs `gantry_gpus` counts and `nodes_help` when a node counts as ready.
    pub fn new(cycle_help: &str, gpus_help: &str, nodes_help: &str) -> Self {
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
            HistogramOpts::new("gantry_schedule_cycle_duration_seconds", cycle_help)
                .buckets(prometheus::exponential_buckets(0.000_05, 2.0, 18).unwrap_or_default()),
        ));
        let gpus_allocated = must(IntGauge::new("gantry_gpus_allocated", "GPUs allocated"));
        let gpus = must(IntGauge::new("gantry_gpus", gpus_help));
        let nodes_ready = must(IntGauge::new("gantry_nodes_ready", nodes_help));
        let preemptions = must(IntCounter::new(
            "gantry_preemptions_total",
            "Jobs preempted",
        ));
        let per_flavor = |name: &str, help: &str| {
            must(GaugeVec::new(Opts::new(name, help), &["queue", "flavor"]))
        };
        let m = SchedulerMetrics {
            registry,
            pending,
            running,
            cycle,
            gpus_allocated,
            gpus,
            nodes_ready,
            preemptions,
            queue_used: per_flavor(
                "gantry_queue_gpus_used",
                "GPUs (or MIG slices) in use per queue and flavor, its subtree included",
            ),
            queue_nominal: per_flavor(
                "gantry_queue_gpus_nominal",
                "Nominal quota per queue and flavor (a cohort: its subtree's)",
            ),
            queue_borrowed: per_flavor(
                "gantry_queue_gpus_borrowed",
                "GPUs (or slices) a queue uses beyond its nominal quota, per flavor",
            ),
            queue_share: must(GaugeVec::new(
                Opts::new(
                    "gantry_queue_share",
                    "Dominant share per queue: its largest used/nominal over flavors",
                ),
                &["queue"],
            )),
        };
        let build = must(IntGaugeVec::new(
            Opts::new("gantry_build_info", "1, labelled with the gantry version"),
            &["version"],
        ));
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for c in [
            Box::new(m.pending.clone()) as Box<dyn Collector>,
            Box::new(m.running.clone()),
            Box::new(m.cycle.clone()),
            Box::new(m.gpus_allocated.clone()),
            Box::new(m.gpus.clone()),
            Box::new(m.nodes_ready.clone()),
            Box::new(m.preemptions.clone()),
            Box::new(m.queue_used.clone()),
            Box::new(m.queue_nominal.clone()),
            Box::new(m.queue_borrowed.clone()),
            Box::new(m.queue_share.clone()),
            Box::new(build),
            // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, …
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ] {
            must(m.registry.register(c));
        }
        m
    }

    fn add<C: Collector + Clone + 'static>(&self, c: C) -> C {
        must(self.registry.register(Box::new(c.clone())));
        c
    }

    /// Register a driver's own counter.
    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.add(must(IntCounter::new(name, help)))
    }

    /// Register a driver's own gauge.
    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.add(must(IntGauge::new(name, help)))
    }

    /// Register a driver's own histogram of seconds, with exponential buckets from 1 ms to
    /// about 65 s.
    pub fn histogram(&self, name: &str, help: &str) -> Histogram {
        self.add(must(Histogram::with_opts(
            HistogramOpts::new(name, help)
                .buckets(prometheus::exponential_buckets(0.001, 2.0, 17).unwrap_or_default()),
        )))
    }

    /// Register a driver's own labelled counter.
    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(must(IntCounterVec::new(Opts::new(name, help), labels)))
    }

    /// Register a driver's own labelled gauge of floats.
    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        self.add(must(GaugeVec::new(Opts::new(name, help), labels)))
    }

    /// Set the per-queue gauges from a snapshot: pending jobs of each leaf, and per flavor the
    /// GPUs used, the nominal quota, what is borrowed beyond it, and the dominant share.
    pub fn observe_queues(&self, snap: &gantry_engine::Snapshot) {
        self.pending.reset();
        self.queue_used.reset();
        self.queue_nominal.reset();
        self.queue_borrowed.reset();
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
                let (used, nominal) = (snap.queue_usage(qid, f), snap.queue_nominal(qid, f));
                if used == 0 && nominal == 0 {
                    continue;
                }
                let labels = [name.as_str(), snap.flavor_name(f)];
                self.queue_used
                    .with_label_values(&labels)
                    .set(used as f64 / 1000.0);
                self.queue_nominal
                    .with_label_values(&labels)
                    .set(nominal as f64 / 1000.0);
                self.queue_borrowed
                    .with_label_values(&labels)
                    .set(used.saturating_sub(nominal) as f64 / 1000.0);
                if nominal > 0 {
                    share = share.max(used as f64 / nominal as f64);
                }
            }
            self.queue_share.with_label_values(&[&name]).set(share);
        }
    }

    /// Bring a counter up to a total counted elsewhere (counters only go up).
    pub fn raise_to(c: &IntCounter, total: u64) {
        c.inc_by(total.saturating_sub(c.get()));
    }

    /// Everything in the registry, in the text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            return format!("# encoding failed: {e}\n");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Serve `/metrics` (whatever `render` returns), `/healthz` (always 200) and `/readyz` (200 when
/// `ready` says so, else 503) on `listener`, with `extra`'s routes beside them (a driver's web
/// pages), until the task is dropped.
///
/// # Errors
/// The listener failed.
pub async fn serve<R, Q>(
    listener: tokio::net::TcpListener,
    render: R,
    ready: Q,
    extra: axum::Router,
) -> std::io::Result<()>
where
    R: Fn() -> String + Clone + Send + Sync + 'static,
    Q: Fn() -> bool + Clone + Send + Sync + 'static,
{
    use axum::http::StatusCode;
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/metrics", get(move || async move { render() }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || async move {
                if ready() {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }),
        )
        .merge(extra);
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_and_driver_metrics_render_together() {
        let m = SchedulerMetrics::new("a cycle", "GPUs", "nodes");
        let binds = m.counter("gantry_binds_total", "Pods bound");
        m.pending.with_label_values(&["team-a"]).set(3);
        binds.inc_by(2);
        let c = m.counter("gantry_x_total", "x");
        SchedulerMetrics::raise_to(&c, 5);
        SchedulerMetrics::raise_to(&c, 4);
        let text = m.render();
        assert!(
            text.contains("gantry_queue_pending_jobs{queue=\"team-a\"} 3"),
            "{text}"
        );
        assert!(text.contains("gantry_binds_total 2"));
        assert!(text.contains("gantry_x_total 5"));
        assert!(text.contains("# TYPE gantry_schedule_cycle_duration_seconds histogram"));
    }
}
