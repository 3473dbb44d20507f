//! Writing a cycle's [`Actions`] to the API server.
//!
//! - Evictions first (they free devices the binds may use), through the Eviction API so
//!   PodDisruptionBudgets are honoured.
//! - Binds: one `pods/binding` request per pod, whose annotations (the allocation and the device
//!   uuids the device plugin reads from `gantry.dev/devices`) the API server copies onto the pod
//!   together with `spec.nodeName`. The engine only plans whole gangs, so a gang's pods are all
//!   in the same batch; they are bound concurrently.
//! - Pod conditions (`PodScheduled=False`, reason `Unschedulable`, the engine's message),
//!   PodGroup and Queue statuses (status subresource), and Events.
//!
//! Every request first takes a token from a [`RateLimiter`] (`--qps`, `--burst`), the way
//! client-go throttles a scheduler. Failures are counted and returned so the mirror can forget
//! what it assumed.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{EvictParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};

use crate::crd::{PodGroup, Queue};
use crate::metrics::Metrics;
use crate::mirror::{Actions, BindAction, EvictAction, Regarding};
use crate::translate::{JobKey, PodKey};

/// A token bucket: `qps` tokens per second, at most `burst` saved. `qps <= 0` disables it.
#[derive(Debug)]
pub struct RateLimiter {
    qps: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// A bucket that starts full.
    pub fn new(qps: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        RateLimiter {
            qps,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// How long to wait before the next request may go, taking its token.
    fn reserve(&self, now: Instant) -> Duration {
        if self.qps <= 0.0 {
            return Duration::ZERO;
        }
        let Ok(mut s) = self.state.lock() else {
            return Duration::ZERO;
        };
        let (tokens, last) = *s;
        let elapsed = now.saturating_duration_since(last).as_secs_f64();
        let tokens = (tokens + elapsed * self.qps).min(self.burst) - 1.0;
        *s = (tokens, now.max(last));
        if tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-tokens / self.qps)
        }
    }

    /// Wait for a token.
    pub async fn acquire(&self) {
        let wait = self.reserve(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// What did not go through.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ApplyReport {
    /// Pods bound.
    pub bound: usize,
    /// Binds refused: (pod, job, error).
    pub failed_binds: Vec<(PodKey, JobKey, String)>,
    /// Evictions made.
    pub evicted: usize,
    /// Evictions refused: (pod, job, error). A 404 counts as done (the pod is gone already).
    pub failed_evictions: Vec<(PodKey, JobKey, String)>,
    /// Status and event writes that failed (logged).
    pub failed_writes: usize,
    /// The status writes among them, so the mirror writes them again next cycle.
    pub failed_status: Vec<Regarding>,
}

/// Writes actions with one client.
pub struct Applier {
    client: Client,
    limiter: RateLimiter,
    recorder: Recorder,
    metrics: Metrics,
    concurrency: usize,
    leader: Option<tokio::sync::watch::Receiver<bool>>,
}

impl std::fmt::Debug for Applier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applier")
            .field("limiter", &self.limiter)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl Applier {
    /// An applier for `client`, throttled to `qps`/`burst`, reporting events as `instance`.
    pub fn new(client: Client, qps: f64, burst: u32, instance: String, metrics: Metrics) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "gantry-scheduler".into(),
                instance: Some(instance),
            },
        );
        Applier {
            client,
            limiter: RateLimiter::new(qps, burst),
            recorder,
            metrics,
            concurrency: burst.clamp(1, 64) as usize,
            leader: None,
        }
    }

    /// Check `leader` before every bind and eviction (leader election on).
    pub fn with_leader(mut self, leader: tokio::sync::watch::Receiver<bool>) -> Self {
        self.leader = Some(leader);
        self
    }

    fn leading(&self) -> bool {
        self.leader.as_ref().is_none_or(|l| *l.borrow())
    }

    /// One request per pod: the API server copies a Binding's annotations onto the pod as it
    /// sets `spec.nodeName`, so the device plugin never sees a bound pod without its devices.
    async fn bind(&self, b: &BindAction) -> Result<(), String> {
        // A throttled batch can outlast the lease: every bind checks it still leads.
        if !self.leading() {
            return Err("this replica no longer holds the lease".into());
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &b.pod.ns);
        let binding = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": b.pod.name, "namespace": b.pod.ns, "annotations": b.annotations},
            "target": {"apiVersion": "v1", "kind": "Node", "name": b.node},
        });
        self.limiter.acquire().await;
        api.create_subresource::<_, serde_json::Value>(
            "binding",
            &b.pod.name,
            &PostParams::default(),
            &binding,
        )
        .await
        .map_err(|e| format!("bind to {}: {e}", b.node))?;
        Ok(())
    }

    async fn bind_one<'a>(&self, b: &'a BindAction) -> (&'a BindAction, Result<(), String>) {
        (b, self.bind(b).await)
    }

    async fn evict_one<'a>(&self, e: &'a EvictAction) -> (&'a EvictAction, Result<(), String>) {
        (e, self.evict(e).await)
    }

    async fn evict(&self, e: &EvictAction) -> Result<(), String> {
        if !self.leading() {
            return Err("this replica no longer holds the lease".into());
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &e.pod.ns);
        self.limiter.acquire().await;
        match api.evict(&e.pod.name, &EvictParams::default()).await {
            Ok(_) => Ok(()),
            Err(err) if is_not_found(&err) => Ok(()),
            Err(err) => Err(err.to_string()),
        }
    }

    /// Merge-patch an object's status subresource; false when the API refused (a 404 means the
    /// object is gone, which is not a failure).
    async fn write_status<K, S>(&self, api: &Api<K>, name: &str, status: &S) -> bool
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
        S: serde::Serialize,
    {
        let patch = serde_json::json!({ "status": status });
        self.limiter.acquire().await;
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => true,
            Err(e) if is_not_found(&e) => true,
            Err(e) => {
                tracing::warn!(object = %name, error = %e, "cannot write status");
                false
            }
        }
    }

    fn reference(&self, r: &Regarding) -> ObjectReference {
        match r {
            Regarding::Pod(p) => ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                namespace: Some(p.ns.clone()),
                name: Some(p.name.clone()),
                ..Default::default()
            },
            Regarding::PodGroup(ns, name) => ObjectReference {
                api_version: Some("gantry.dev/v1alpha1".into()),
                kind: Some("PodGroup".into()),
                namespace: Some(ns.clone()),
                name: Some(name.clone()),
                ..Default::default()
            },
            Regarding::Queue(name) => ObjectReference {
                api_version: Some("gantry.dev/v1alpha1".into()),
                kind: Some("Queue".into()),
                name: Some(name.clone()),
                ..Default::default()
            },
        }
    }

    /// Write everything; never stops at the first failure.
    pub async fn apply(&self, actions: &Actions) -> ApplyReport {
        let mut report = ApplyReport::default();
        // Futures are collected first: a closure inside the stream would make the future
        // borrow a higher-ranked lifetime that `tokio::spawn` cannot accept.
        let futs: Vec<_> = actions
            .evictions
            .iter()
            .map(|e| self.evict_one(e))
            .collect();
        let evictions: Vec<_> = futures::stream::iter(futs)
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        for (e, r) in evictions {
            match r {
                Ok(()) => {
                    report.evicted += 1;
                    self.metrics.evictions.inc();
                    tracing::info!(pod = %e.pod, job = %e.job, reason = %e.reason, "evicted");
                }
                Err(err) => {
                    tracing::warn!(pod = %e.pod, error = %err, "eviction refused");
                    report
                        .failed_evictions
                        .push((e.pod.clone(), e.job.clone(), err));
                }
            }
        }
        let futs: Vec<_> = actions.binds.iter().map(|b| self.bind_one(b)).collect();
        let binds: Vec<_> = futures::stream::iter(futs)
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        for (b, r) in binds {
            match r {
                Ok(()) => {
                    report.bound += 1;
                    self.metrics.binds.inc();
                    tracing::info!(pod = %b.pod, job = %b.job, node = %b.node, "bound");
                }
                Err(err) => {
                    self.metrics.bind_errors.inc();
                    tracing::warn!(pod = %b.pod, job = %b.job, error = %err, "bind failed");
                    report
                        .failed_binds
                        .push((b.pod.clone(), b.job.clone(), err));
                }
            }
        }
        for (pod, message) in &actions.pod_conditions {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.ns);
            let patch = serde_json::json!({"status": {"conditions": [{
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": message,
            }]}});
            self.limiter.acquire().await;
            if let Err(e) = api
                .patch_status(
                    &pod.name,
                    &PatchParams::default(),
                    &Patch::Strategic(&patch),
                )
                .await
            {
                if !is_not_found(&e) {
                    report.failed_writes += 1;
                    report.failed_status.push(Regarding::Pod(pod.clone()));
                    tracing::warn!(%pod, error = %e, "cannot set PodScheduled");
                }
            }
        }
        for ((ns, name), status) in &actions.group_statuses {
            let api: Api<PodGroup> = Api::namespaced(self.client.clone(), ns);
            if !self.write_status(&api, name, status).await {
                report.failed_writes += 1;
                report
                    .failed_status
                    .push(Regarding::PodGroup(ns.clone(), name.clone()));
            }
        }
        for (name, status) in &actions.queue_statuses {
            let api: Api<Queue> = Api::all(self.client.clone());
            if !self.write_status(&api, name, status).await {
                report.failed_writes += 1;
                report.failed_status.push(Regarding::Queue(name.clone()));
            }
        }
        for ev in &actions.events {
            let event = Event {
                type_: if ev.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: ev.reason.clone(),
                note: Some(truncate(&ev.note, 1000)),
                action: "Scheduling".into(),
                secondary: None,
            };
            self.limiter.acquire().await;
            if let Err(e) = self
                .recorder
                .publish(&event, &self.reference(&ev.regarding))
                .await
            {
                report.failed_writes += 1;
                tracing::debug!(error = %e, "cannot record event");
            }
        }
        report
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_lets_a_burst_through_then_paces_at_qps() {
        let rl = RateLimiter::new(10.0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(rl.reserve(t0), Duration::ZERO);
        }
        let w = rl.reserve(t0);
        assert!((w.as_secs_f64() - 0.1).abs() < 1e-9, "{w:?}");
        let w = rl.reserve(t0);
        assert!((w.as_secs_f64() - 0.2).abs() < 1e-9, "{w:?}");
        // A second later the debt is paid and 8 tokens accrued, capped at the burst of 3.
        let later = t0 + Duration::from_secs(1);
        for _ in 0..3 {
            assert_eq!(rl.reserve(later), Duration::ZERO);
        }
        assert!(rl.reserve(later) > Duration::ZERO);
        let off = RateLimiter::new(0.0, 1);
        for _ in 0..100 {
            assert_eq!(off.reserve(t0), Duration::ZERO);
        }
    }

    #[test]
    fn long_notes_are_cut_on_a_char_boundary() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("ééé", 3), "é…");
    }
}
