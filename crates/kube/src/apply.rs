//! Writing a cycle's [`Actions`] to the API server, outside the scheduling loop.
//!
//! The loop hands each cycle's actions to a [`Writer`] and goes on scheduling; nothing the API
//! server does (a slow reply, a 429, a call that never returns) can hold it. What came of each
//! write comes back as an [`Outcome`] on a channel the loop reads between cycles, so the
//! [`Mirror`](crate::Mirror) forgets what did not happen.
//!
//! - **Binds** (the critical path, like kube-scheduler's binding cycle): one `pods/binding`
//!   request per pod, whose annotations (the allocation and the device uuids the device plugin
//!   reads from `gantry.dev/devices`) the API server copies onto the pod together with
//!   `spec.nodeName`. A gang's pods are bound concurrently and reported together, so a refused
//!   member rolls the rest back. Jobs are bound concurrently with each other.
//! - **Evictions** go through the Eviction API so PodDisruptionBudgets are honoured. A refusal
//!   (429) is a value, [`EvictResult::Refused`], with the server's `Retry-After`; the mirror backs
//!   the victim off and tells the preemptor why it waits.
//! - **Statuses** (pod `PodScheduled` conditions, PodGroup and Queue statuses) go through a
//!   coalescing queue: a newer status for the same object replaces one not yet written.
//! - **Events** go to the [`EventSink`](crate::events::EventSink), off the critical path.
//!
//! Binds, evictions and statuses take a token from one [`RateLimiter`] (`--qps`, `--burst`), the
//! way client-go throttles a scheduler; events have their own bucket. Every call is bounded by
//! `--api-timeout`: a call that does not answer in time counts as failed.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{EvictParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio::sync::{mpsc, Notify, Semaphore};

use crate::crd::{PodGroup, PodGroupStatus, Queue, QueueStatus};
use crate::events::EventSink;
use crate::metrics::Metrics;
use crate::mirror::{Actions, BindAction, EvictAction, PodCondition, Regarding};
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

/// What became of an eviction.
#[derive(Debug, Clone, PartialEq)]
pub enum EvictResult {
    /// Evicted (or already gone).
    Done,
    /// Refused with 429: a PodDisruptionBudget allows no disruption now.
    Refused {
        /// The API server's message.
        message: String,
        /// `Retry-After`, when the server gave one.
        retry_after: Option<Duration>,
    },
    /// Another error, or no answer within the call timeout.
    Failed(String),
}

/// What came of writes, reported back to the loop.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every bind of one job's batch answered: each pod's result.
    Binds {
        /// The job.
        job: JobKey,
        /// Each bind and its result.
        results: Vec<(BindAction, Result<(), String>)>,
    },
    /// An eviction answered.
    Eviction {
        /// What was asked.
        action: EvictAction,
        /// What became of it.
        result: EvictResult,
    },
    /// A status write was refused (the mirror writes it again next cycle).
    StatusFailed(Regarding),
}

/// How the writer talks to the API server.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Requests per second for binds, evictions and statuses (<= 0: no throttle).
    pub qps: f64,
    /// Requests that may go at once above `qps`.
    pub burst: u32,
    /// Longest one call may take.
    pub timeout: Duration,
    /// Most binds and evictions in flight at once.
    pub concurrency: usize,
    /// Events per second (own bucket; <= 0: none).
    pub event_qps: f64,
    /// Events that may go at once above `event_qps`.
    pub event_burst: u32,
    /// This replica's name (events' `reportingInstance`).
    pub instance: String,
}

impl WriterConfig {
    /// `qps`/`burst` for writes, the same for events, a 10 s call timeout and up to 128 writes
    /// in flight.
    pub fn new(qps: f64, burst: u32, instance: impl Into<String>) -> Self {
        WriterConfig {
            qps,
            burst,
            timeout: Duration::from_secs(10),
            concurrency: 128,
            event_qps: qps,
            event_burst: burst,
            instance: instance.into(),
        }
    }
}

/// The status of one object to write.
#[derive(Debug, Clone, PartialEq)]
enum StatusWrite {
    Pod(PodCondition),
    /// `controller.kubernetes.io/pod-deletion-cost`.
    Cost(String),
    Group(PodGroupStatus),
    Queue(QueueStatus),
}

/// Statuses waiting to be written, newest per object.
#[derive(Debug, Default)]
struct StatusQueue {
    pending: Mutex<BTreeMap<StatusKey, StatusWrite>>,
    notify: Notify,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum StatusKey {
    Pod(PodKey),
    Cost(PodKey),
    Group(String, String),
    Queue(String),
}

impl StatusKey {
    fn regarding(&self) -> Regarding {
        match self {
            StatusKey::Pod(p) | StatusKey::Cost(p) => Regarding::Pod(p.clone()),
            StatusKey::Group(ns, n) => Regarding::PodGroup(ns.clone(), n.clone()),
            StatusKey::Queue(n) => Regarding::Queue(n.clone()),
        }
    }
}

struct Inner {
    client: Client,
    limiter: RateLimiter,
    timeout: Duration,
    permits: Semaphore,
    leader: Option<tokio::sync::watch::Receiver<bool>>,
    metrics: Metrics,
    outcomes: mpsc::UnboundedSender<Outcome>,
    statuses: StatusQueue,
}

/// Writes actions in the background; see the module docs.
pub struct Writer {
    inner: Arc<Inner>,
    events: EventSink,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("limiter", &self.inner.limiter)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Run `call` within `timeout`; a late answer is an error that says so.
async fn bounded<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(CallError::Api(e)),
        Err(_) => Err(CallError::Timeout(timeout)),
    }
}

#[derive(Debug)]
enum CallError {
    Api(kube::Error),
    Timeout(Duration),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Api(e) => write!(f, "{e}"),
            CallError::Timeout(d) => write!(f, "no answer within {} ms", d.as_millis()),
        }
    }
}

impl CallError {
    fn not_found(&self) -> bool {
        matches!(self, CallError::Api(e) if is_not_found(e))
    }
}

/// What an eviction's error means: a 429 is a refusal (PodDisruptionBudget) with the server's
/// `Retry-After`; anything else is a failure.
fn classify_eviction(e: &CallError) -> EvictResult {
    match e {
        CallError::Api(kube::Error::Api(s)) if s.code == 429 => EvictResult::Refused {
            message: s.message.clone(),
            retry_after: s
                .details
                .as_ref()
                .map(|d| d.retry_after_seconds)
                .filter(|&s| s > 0)
                .map(|s| Duration::from_secs(u64::from(s))),
        },
        _ if e.not_found() => EvictResult::Done,
        other => EvictResult::Failed(other.to_string()),
    }
}

impl Inner {
    fn leading(&self) -> bool {
        self.leader.as_ref().is_none_or(|l| *l.borrow())
    }

    /// One request per pod: the API server copies a Binding's annotations onto the pod as it
    /// sets `spec.nodeName`, so the device plugin never sees a bound pod without its devices.
    async fn bind(&self, b: &BindAction) -> Result<(), String> {
        let _permit = self.permits.acquire().await.map_err(|e| e.to_string())?;
        self.limiter.acquire().await;
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
        self.metrics.writes_in_flight.inc();
        let r = bounded(
            self.timeout,
            api.create_subresource::<_, serde_json::Value>(
                "binding",
                &b.pod.name,
                &PostParams::default(),
                &binding,
            ),
        )
        .await;
        self.metrics.writes_in_flight.dec();
        r.map(|_| ())
            .map_err(|e| format!("bind to {}: {e}", b.node))
    }

    async fn evict(&self, e: &EvictAction) -> EvictResult {
        let Ok(_permit) = self.permits.acquire().await else {
            return EvictResult::Failed("the writer is shutting down".into());
        };
        self.limiter.acquire().await;
        if !self.leading() {
            return EvictResult::Failed("this replica no longer holds the lease".into());
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &e.pod.ns);
        self.metrics.writes_in_flight.inc();
        let r = bounded(
            self.timeout,
            api.evict(&e.pod.name, &EvictParams::default()),
        )
        .await;
        self.metrics.writes_in_flight.dec();
        match r {
            Ok(_) => EvictResult::Done,
            Err(err) => classify_eviction(&err),
        }
    }

    /// Merge-patch an object's status subresource.
    async fn merge_status<K, S>(
        &self,
        api: &Api<K>,
        name: &str,
        status: &S,
    ) -> Result<(), CallError>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
        S: serde::Serialize,
    {
        let patch = serde_json::json!({ "status": status });
        bounded(
            self.timeout,
            api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await
        .map(|_| ())
    }

    /// Write one status; false when the API refused (a 404 means the object is gone, which is
    /// not a failure).
    async fn write_status(&self, key: &StatusKey, w: &StatusWrite) -> bool {
        self.limiter.acquire().await;
        let r = match (key, w) {
            (StatusKey::Pod(pod), StatusWrite::Pod(c)) => {
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.ns);
                let patch = serde_json::json!({"status": {"conditions": [{
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": c.message,
                    "lastTransitionTime": c.since,
                }]}});
                bounded(
                    self.timeout,
                    api.patch_status(
                        &pod.name,
                        &PatchParams::default(),
                        &Patch::Strategic(&patch),
                    ),
                )
                .await
                .map(|_| ())
            }
            (StatusKey::Cost(pod), StatusWrite::Cost(cost)) => {
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.ns);
                let patch = serde_json::json!({"metadata": {"annotations": {
                    crate::translate::DELETION_COST_ANNOTATION: cost,
                }}});
                bounded(
                    self.timeout,
                    api.patch(&pod.name, &PatchParams::default(), &Patch::Merge(&patch)),
                )
                .await
                .map(|_| ())
            }
            (StatusKey::Group(ns, name), StatusWrite::Group(st)) => {
                let api: Api<PodGroup> = Api::namespaced(self.client.clone(), ns);
                self.merge_status(&api, name, st).await
            }
            (StatusKey::Queue(name), StatusWrite::Queue(st)) => {
                let api: Api<Queue> = Api::all(self.client.clone());
                self.merge_status(&api, name, st).await
            }
            _ => Ok(()),
        };
        match r {
            Ok(()) => true,
            Err(e) if e.not_found() => true,
            Err(e) => {
                tracing::warn!(object = ?key, error = %e, "cannot write status");
                false
            }
        }
    }

    /// Write the queued statuses, newest per object, until told to stop.
    async fn status_worker(self: Arc<Self>) {
        loop {
            let batch = {
                let Ok(mut p) = self.statuses.pending.lock() else {
                    return;
                };
                std::mem::take(&mut *p)
            };
            if batch.is_empty() {
                self.statuses.notify.notified().await;
                continue;
            }
            let me = &self;
            let failed: Vec<StatusKey> = futures::stream::iter(batch)
                .map(|(k, w)| async move { (!me.write_status(&k, &w).await).then_some(k) })
                .buffer_unordered(16)
                .filter_map(|k| async move { k })
                .collect()
                .await;
            for k in failed {
                let _ = self.outcomes.send(Outcome::StatusFailed(k.regarding()));
            }
        }
    }
}

impl Writer {
    /// A writer for `client`; the receiver gets what came of every bind, eviction and failed
    /// status write. `leader`, when given, is checked before every bind and eviction.
    pub fn new(
        client: Client,
        cfg: &WriterConfig,
        metrics: Metrics,
        leader: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> (Writer, mpsc::UnboundedReceiver<Outcome>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            client: client.clone(),
            limiter: RateLimiter::new(cfg.qps, cfg.burst),
            timeout: cfg.timeout,
            permits: Semaphore::new(cfg.concurrency.max(1)),
            leader,
            metrics: metrics.clone(),
            outcomes: tx,
            statuses: StatusQueue::default(),
        });
        let (events, event_task) = EventSink::start(client, cfg, metrics);
        let status_task = tokio::spawn(inner.clone().status_worker());
        (
            Writer {
                inner,
                events,
                tasks: vec![status_task, event_task],
            },
            rx,
        )
    }

    /// Start writing `actions`; returns at once. Evictions and binds start now, statuses and
    /// events are queued.
    pub fn submit(&self, actions: Actions) {
        let Actions {
            evictions,
            binds,
            pod_conditions,
            pod_costs,
            group_statuses,
            queue_statuses,
            events,
        } = actions;
        for e in evictions {
            let inner = self.inner.clone();
            tokio::spawn(async move {
                let result = inner.evict(&e).await;
                match &result {
                    EvictResult::Done => {
                        inner.metrics.evictions.inc();
                        tracing::info!(pod = %e.pod, job = %e.job, reason = %e.reason, "evicted");
                    }
                    EvictResult::Refused { message, .. } | EvictResult::Failed(message) => {
                        inner.metrics.eviction_refusals.inc();
                        tracing::warn!(pod = %e.pod, error = %message, "eviction refused");
                    }
                }
                let _ = inner.outcomes.send(Outcome::Eviction { action: e, result });
            });
        }
        let mut by_job: Vec<(JobKey, Vec<BindAction>)> = Vec::new();
        for b in binds {
            match by_job.last_mut() {
                Some((j, v)) if *j == b.job => v.push(b),
                _ => by_job.push((b.job.clone(), vec![b])),
            }
        }
        for (job, batch) in by_job {
            let inner = self.inner.clone();
            let t0 = Instant::now();
            tokio::spawn(async move {
                let results = futures::future::join_all(batch.into_iter().map(|b| {
                    let inner = &inner;
                    async move {
                        let r = inner.bind(&b).await;
                        inner.metrics.bind_latency.observe(t0.elapsed().as_secs_f64());
                        match &r {
                            Ok(()) => {
                                inner.metrics.binds.inc();
                                tracing::debug!(pod = %b.pod, job = %b.job, node = %b.node, "bound");
                            }
                            Err(err) => {
                                inner.metrics.bind_errors.inc();
                                tracing::warn!(pod = %b.pod, job = %b.job, error = %err, "bind failed");
                            }
                        }
                        (b, r)
                    }
                }))
                .await;
                let _ = inner.outcomes.send(Outcome::Binds { job, results });
            });
        }
        let queued = !pod_conditions.is_empty()
            || !pod_costs.is_empty()
            || !group_statuses.is_empty()
            || !queue_statuses.is_empty();
        if queued {
            if let Ok(mut p) = self.inner.statuses.pending.lock() {
                for c in pod_conditions {
                    p.insert(StatusKey::Pod(c.pod.clone()), StatusWrite::Pod(c));
                }
                for (pod, cost) in pod_costs {
                    p.insert(StatusKey::Cost(pod), StatusWrite::Cost(cost));
                }
                for ((ns, name), st) in group_statuses {
                    p.insert(StatusKey::Group(ns, name), StatusWrite::Group(st));
                }
                for (name, st) in queue_statuses {
                    p.insert(StatusKey::Queue(name), StatusWrite::Queue(st));
                }
            }
            self.inner.statuses.notify.notify_one();
        }
        for ev in events {
            self.events.record(ev);
        }
    }
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

    fn api_error(code: u16, retry: u32) -> CallError {
        CallError::Api(kube::Error::Api(Box::new(kube::core::Status {
            code,
            message: "Cannot evict pod as it would violate the pod's disruption budget.".into(),
            details: Some(
                serde_json::from_value(serde_json::json!({"retryAfterSeconds": retry}))
                    .expect("status details"),
            ),
            ..Default::default()
        })))
    }

    #[test]
    fn a_429_is_a_refusal_with_the_servers_retry_after_and_a_404_is_done() {
        match classify_eviction(&api_error(429, 10)) {
            EvictResult::Refused {
                message,
                retry_after,
            } => {
                assert!(message.contains("disruption budget"));
                assert_eq!(retry_after, Some(Duration::from_secs(10)));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify_eviction(&api_error(429, 0)),
            EvictResult::Refused {
                retry_after: None,
                ..
            }
        ));
        assert_eq!(classify_eviction(&api_error(404, 0)), EvictResult::Done);
        assert!(matches!(
            classify_eviction(&api_error(500, 0)),
            EvictResult::Failed(_)
        ));
        assert_eq!(
            classify_eviction(&CallError::Timeout(Duration::from_secs(2))),
            EvictResult::Failed("no answer within 2000 ms".into())
        );
    }

    #[tokio::test]
    async fn a_call_that_never_answers_is_cut_at_the_timeout() {
        tokio::time::pause();
        let never = std::future::pending::<Result<(), kube::Error>>();
        let r = bounded(Duration::from_secs(3), never).await;
        assert!(matches!(r, Err(CallError::Timeout(_))), "{r:?}");
    }
}
