//! The controller: watches in, engine cycles, writes out.
//!
//! Five watches (Nodes, NodeInventories, Queues, PodGroups, and pods whose
//! `spec.schedulerName` is gantry's, selected by the API server) feed one task that owns the
//! [`Mirror`]. Each watch lists once and then streams changes; a re-list after a broken watch
//! turns objects that vanished meanwhile into deletes, so nothing is ever re-listed per cycle.
//! After a change, and at least every `tick`, the leader runs a cycle once the changes have
//! settled for `debounce`, and the [`Applier`] writes the result. Replicas that do not hold the
//! lease keep their mirror warm and write nothing, so a hand-over needs no warm-up.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use gantry_engine::Profile;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::{mpsc, watch};

use crate::apply::{Applier, ApplyReport};
use crate::crd::{NodeInventory, PodGroup, Queue};
use crate::error::KubeError;
use crate::leader::LeaseLock;
use crate::metrics::Metrics;
use crate::mirror::{Actions, Mirror};
use crate::translate::{JobKey, PodKey};

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Pods with this `spec.schedulerName` are gantry's.
    pub scheduler_name: String,
    /// Client-side write throttle: requests per second (<= 0: none).
    pub qps: f64,
    /// Requests that may go at once before throttling.
    pub burst: u32,
    /// Use a Lease so only one replica schedules.
    pub leader_elect: bool,
    /// Lease namespace.
    pub lease_namespace: String,
    /// Lease name.
    pub lease_name: String,
    /// This replica's identity in the lease (its pod name).
    pub identity: String,
    /// How long a lease lasts without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews (and a standby looks).
    pub renew_every: Duration,
    /// Quiet time after a change before a cycle.
    pub debounce: Duration,
    /// Longest time between cycles.
    pub tick: Duration,
    /// Engine policy.
    pub profile: Profile,
}

impl ControllerConfig {
    /// Defaults: scheduler `gantry`, 50 qps / burst 100, leader election on, lease
    /// `gantry-system/gantry-scheduler` for 15 s renewed every 2 s, 20 ms debounce, 1 s tick.
    pub fn new(identity: impl Into<String>) -> Self {
        ControllerConfig {
            scheduler_name: "gantry".into(),
            qps: 50.0,
            burst: 100,
            leader_elect: true,
            lease_namespace: "gantry-system".into(),
            lease_name: "gantry-scheduler".into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(2),
            debounce: Duration::from_millis(20),
            tick: Duration::from_secs(1),
            profile: Profile::gantry(),
        }
    }
}

/// One watched change.
#[derive(Debug)]
enum Change {
    Node(Box<Node>),
    NodeGone(String),
    Inventory(Box<NodeInventory>),
    InventoryGone(String),
    Queue(Box<Queue>),
    QueueGone(String),
    Group(Box<PodGroup>),
    GroupGone(String, String),
    Pod(Box<Pod>),
    PodGone(String, String),
    Synced(&'static str),
}

fn key_of<K: Resource>(o: &K) -> (String, String) {
    (o.namespace().unwrap_or_default(), o.name_any())
}

/// Turn a watch stream into changes, with re-lists reconciled into deletes.
fn forward<K, S>(
    kind: &'static str,
    stream: S,
    tx: mpsc::UnboundedSender<Change>,
    up: fn(K) -> Change,
    gone: fn(String, String) -> Change,
) -> tokio::task::JoinHandle<()>
where
    K: Resource + Clone + Send + 'static,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut known: BTreeSet<(String, String)> = BTreeSet::new();
        let mut relist: Option<BTreeSet<(String, String)>> = None;
        let mut synced = false;
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::warn!(kind, error = %e, "watch failed; retrying with backoff");
                    continue;
                }
            };
            let sent = match ev {
                Event::Init => {
                    relist = Some(BTreeSet::new());
                    Ok(())
                }
                Event::InitApply(o) => {
                    let k = key_of(&o);
                    if let Some(r) = relist.as_mut() {
                        r.insert(k.clone());
                    }
                    known.insert(k);
                    tx.send(up(o))
                }
                Event::InitDone => {
                    let seen = relist.take().unwrap_or_default();
                    for k in known.difference(&seen) {
                        let _ = tx.send(gone(k.0.clone(), k.1.clone()));
                    }
                    known = seen;
                    if !synced {
                        synced = true;
                        let _ = tx.send(Change::Synced(kind));
                    }
                    Ok(())
                }
                Event::Apply(o) => {
                    known.insert(key_of(&o));
                    tx.send(up(o))
                }
                Event::Delete(o) => {
                    let k = key_of(&o);
                    known.remove(&k);
                    tx.send(gone(k.0, k.1))
                }
            };
            if sent.is_err() {
                return;
            }
        }
    })
}

fn start_watches(
    client: &Client,
    scheduler: &str,
    tx: &mpsc::UnboundedSender<Change>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let cfg = watcher::Config::default;
    vec![
        forward(
            "nodes",
            watcher(Api::<Node>::all(client.clone()), cfg()).default_backoff(),
            tx.clone(),
            |o| Change::Node(Box::new(o)),
            |_, n| Change::NodeGone(n),
        ),
        forward(
            "nodeinventories",
            watcher(Api::<NodeInventory>::all(client.clone()), cfg()).default_backoff(),
            tx.clone(),
            |o| Change::Inventory(Box::new(o)),
            |_, n| Change::InventoryGone(n),
        ),
        forward(
            "queues",
            watcher(Api::<Queue>::all(client.clone()), cfg()).default_backoff(),
            tx.clone(),
            |o| Change::Queue(Box::new(o)),
            |_, n| Change::QueueGone(n),
        ),
        forward(
            "podgroups",
            watcher(Api::<PodGroup>::all(client.clone()), cfg()).default_backoff(),
            tx.clone(),
            |o| Change::Group(Box::new(o)),
            Change::GroupGone,
        ),
        forward(
            "pods",
            watcher(
                Api::<Pod>::all(client.clone()),
                cfg().fields(&format!("spec.schedulerName={scheduler}")),
            )
            .default_backoff(),
            tx.clone(),
            |o| Change::Pod(Box::new(o)),
            Change::PodGone,
        ),
    ]
}

fn watcher<K>(api: Api<K>, cfg: watcher::Config) -> impl Stream<Item = watcher::Result<Event<K>>>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher::watcher(api, cfg)
}

fn apply_change(m: &mut Mirror, c: Change) {
    match c {
        Change::Node(n) => m.upsert_node(*n),
        Change::NodeGone(n) => m.delete_node(&n),
        Change::Inventory(i) => {
            let name = i.name_any();
            m.upsert_inventory(&name, i.spec);
        }
        Change::InventoryGone(n) => m.delete_inventory(&n),
        Change::Queue(q) => m.upsert_queue(*q),
        Change::QueueGone(n) => m.delete_queue(&n),
        Change::Group(g) => m.upsert_group(*g),
        Change::GroupGone(ns, n) => m.delete_group(&ns, &n),
        Change::Pod(p) => m.upsert_pod(&p),
        Change::PodGone(ns, n) => m.delete_pod(&ns, &n),
        Change::Synced(_) => {}
    }
}

/// A gang whose placement was only partly bound (the API refused a member) is rolled back:
/// the members bound in this batch are evicted, so no gang is left partly running.
fn roll_back_partial_gangs(
    mirror: &mut Mirror,
    actions: &Actions,
    report: &ApplyReport,
) -> Actions {
    let mut out = Actions::default();
    let failed: BTreeSet<&JobKey> = report
        .failed_binds
        .iter()
        .map(|(_, job, _)| job)
        .filter(|j| matches!(j, JobKey::Group(..)))
        .collect();
    for job in failed {
        let refused: BTreeSet<&PodKey> = report
            .failed_binds
            .iter()
            .filter(|(_, j, _)| j == job)
            .map(|(p, _, _)| p)
            .collect();
        let bound: Vec<PodKey> = actions
            .binds
            .iter()
            .filter(|b| &b.job == job && !refused.contains(&b.pod))
            .map(|b| b.pod.clone())
            .collect();
        let why = report
            .failed_binds
            .iter()
            .find(|(_, j, _)| j == job)
            .map(|(p, _, e)| format!("binding {p} failed: {e}"))
            .unwrap_or_default();
        out.evictions
            .extend(mirror.roll_back_gang(job, &bound, &why));
    }
    out
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Keep trying for the lease; publish whether this replica holds it. A holder that cannot
/// renew within the lease duration steps down.
async fn elect(mut lock: LeaseLock, cfg: ControllerConfig, tx: watch::Sender<bool>) {
    // client-go's renew deadline: stop leading well before a standby may take over (it waits a
    // whole lease duration from the last renewal it saw, which is no earlier than `sent`).
    let renew_deadline = cfg.lease_duration * 2 / 3;
    let mut last_renewal_sent = tokio::time::Instant::now();
    loop {
        let sent = tokio::time::Instant::now();
        let leader = match lock.try_acquire_or_renew().await {
            Ok(l) => {
                if l {
                    last_renewal_sent = sent;
                }
                l
            }
            Err(e) => {
                tracing::warn!(error = %e, "lease call failed");
                *tx.borrow() && last_renewal_sent.elapsed() < renew_deadline
            }
        };
        if tx.send_replace(leader) != leader && !leader {
            tracing::warn!(identity = %cfg.identity, "lost the lease; stopped scheduling");
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.renew_every) => {}
            _ = tx.closed() => {
                if *tx.borrow() {
                    let _ = lock.release().await;
                }
                return;
            }
        }
    }
}

/// Run the controller until `shutdown` resolves. The lease is released on the way out.
///
/// # Errors
/// The engine refused an empty cluster (not expected).
pub async fn run(
    client: Client,
    cfg: ControllerConfig,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), KubeError> {
    let mut mirror = Mirror::new(cfg.profile.clone())?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let watches = start_watches(&client, &cfg.scheduler_name, &tx);
    drop(tx);
    let (lead_tx, lead_rx) = watch::channel(!cfg.leader_elect);
    let elector = if cfg.leader_elect {
        let lock = LeaseLock::new(
            client.clone(),
            &cfg.lease_namespace,
            &cfg.lease_name,
            &cfg.identity,
            cfg.lease_duration,
        );
        Some(tokio::spawn(elect(lock, cfg.clone(), lead_tx)))
    } else {
        drop(lead_tx);
        None
    };
    let applier = Arc::new(
        Applier::new(
            client.clone(),
            cfg.qps,
            cfg.burst,
            cfg.identity.clone(),
            metrics.clone(),
        )
        .with_leader(lead_rx.clone()),
    );
    let mut synced: BTreeSet<&'static str> = BTreeSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut pending_change = true;
    let mut due: Option<tokio::time::Instant> = None;
    let mut next_tick = tokio::time::Instant::now() + cfg.tick;
    loop {
        let wake = due.unwrap_or(next_tick).min(next_tick);
        tokio::select! {
            _ = &mut shutdown => break,
            c = rx.recv() => {
                let Some(c) = c else { break };
                if let Change::Synced(kind) = &c {
                    synced.insert(kind);
                    if synced.len() == 5 {
                        metrics.set_ready();
                        tracing::info!("caches synced");
                    }
                }
                apply_change(&mut mirror, c);
                while let Ok(c) = rx.try_recv() {
                    if let Change::Synced(kind) = &c {
                        synced.insert(kind);
                        if synced.len() == 5 {
                            metrics.set_ready();
                        }
                    }
                    apply_change(&mut mirror, c);
                }
                pending_change = true;
                due = Some(tokio::time::Instant::now() + cfg.debounce);
            }
            _ = tokio::time::sleep_until(wake) => {
                let leader = *lead_rx.borrow();
                metrics.is_leader.set(i64::from(leader));
                let ticked = tokio::time::Instant::now() >= next_tick;
                if ticked {
                    next_tick = tokio::time::Instant::now() + cfg.tick;
                }
                if !(leader && metrics.is_ready() && (pending_change || ticked)) {
                    due = None;
                    metrics.observe(&mirror);
                    continue;
                }
                due = None;
                pending_change = false;
                let t0 = std::time::Instant::now();
                let actions = mirror.cycle(now_ms());
                let report = applier.apply(&actions).await;
                for (pod, job, _) in &report.failed_binds {
                    mirror.bind_failed(pod, job);
                }
                let rollback = roll_back_partial_gangs(&mut mirror, &actions, &report);
                if !rollback.evictions.is_empty() {
                    let r = applier.apply(&rollback).await;
                    for (pod, job, _) in &r.failed_evictions {
                        mirror.evict_failed(pod, job);
                    }
                }
                for (pod, job, _) in &report.failed_evictions {
                    mirror.evict_failed(pod, job);
                }
                mirror.status_writes_failed(&report.failed_status);
                // Failures are retried on the next tick, not at once: a refusal (a
                // PodDisruptionBudget, a lost lease) does not clear in milliseconds.
                if !report.failed_binds.is_empty() || !report.failed_evictions.is_empty() {
                    pending_change = true;
                }
                metrics.preemptions.inc_by(
                    actions
                        .events
                        .iter()
                        .filter(|e| e.reason == "Preempted")
                        .count() as u64,
                );
                metrics.cycle.observe(t0.elapsed().as_secs_f64());
                metrics.observe(&mirror);
                let _span = tracing::debug_span!(
                    "cycle",
                    binds = report.bound,
                    evictions = report.evicted,
                    failed = report.failed_binds.len()
                )
                .entered();
                if !actions.is_empty() {
                    tracing::debug!(elapsed_ms = t0.elapsed().as_millis() as u64, "cycle applied");
                }
            }
        }
    }
    for w in watches {
        w.abort();
    }
    // The elector releases the lease once no one listens to it any more.
    drop(applier);
    drop(lead_rx);
    if let Some(e) = elector {
        let _ = tokio::time::timeout(Duration::from_secs(5), e).await;
    }
    Ok(())
}
