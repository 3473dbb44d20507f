//! The controller: watches in, engine cycles, writes out.
//!
//! Five watches (Nodes, NodeInventories, Queues, PodGroups, and pods whose
//! `spec.schedulerName` is gantry's, selected by the API server) feed one task that owns the
//! [`Mirror`]. Each watch lists once and then streams changes; a re-list after a broken watch
//! turns objects that vanished meanwhile into deletes, so nothing is ever re-listed per cycle.
//! After a change, and at least every `tick`, the leader runs a cycle once the changes have
//! settled for `debounce`, and hands the result to the [`Writer`], which writes it in the
//! background: the loop never waits on the API server. What came of the writes (a refused
//! bind, an eviction a PodDisruptionBudget refused) comes back on a channel the same loop reads,
//! so the mirror is only ever touched by this one task. Replicas that do not hold the lease keep
//! their mirror warm and write nothing, so a hand-over needs no warm-up.
//!
//! The loop beats [`Metrics::beat`] on every turn. If it stops turning for `stall_after`,
//! `/readyz` fails and the leader stops renewing its Lease, so a standby takes over.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::{Stream, StreamExt};
use gantry_engine::Profile;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::{mpsc, watch};

use crate::apply::{Writer, WriterConfig};
use crate::crd::{NodeInventory, PodGroup, Queue};
use crate::error::KubeError;
use crate::leader::LeaseLock;
use crate::metrics::Metrics;
use crate::mirror::Mirror;

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Pods with this `spec.schedulerName` are gantry's.
    pub scheduler_name: String,
    /// Client-side write throttle: requests per second (<= 0: none).
    pub qps: f64,
    /// Requests that may go at once before throttling.
    pub burst: u32,
    /// Events per second, a bucket of their own (<= 0: none).
    pub event_qps: f64,
    /// Events that may go at once before throttling.
    pub event_burst: u32,
    /// Longest any one API call may take before it counts as failed.
    pub api_timeout: Duration,
    /// Most binds and evictions in flight at once.
    pub concurrency: usize,
    /// How long the loop may go without turning before `/readyz` fails and the leader steps
    /// down.
    pub stall_after: Duration,
    /// How long a NodeInventory may go without a new heartbeat before its node takes no new
    /// pods (zero: never).
    pub inventory_stale_after: Duration,
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
    /// Defaults: scheduler `gantry`, 50 qps / burst 100 for writes and the same for events
    /// (kube-scheduler's defaults), 10 s per API call, 128 writes in flight, leader election on,
    /// lease `gantry-system/gantry-scheduler` for 15 s renewed every 2 s, 20 ms debounce, 1 s
    /// tick, stalled after 30 s, inventories stale after 90 s without a heartbeat (the device
    /// plugin beats every 30 s).
    pub fn new(identity: impl Into<String>) -> Self {
        ControllerConfig {
            scheduler_name: "gantry".into(),
            qps: 50.0,
            burst: 100,
            event_qps: 50.0,
            event_burst: 100,
            api_timeout: Duration::from_secs(10),
            concurrency: 128,
            stall_after: Duration::from_secs(30),
            inventory_stale_after: Duration::from_secs(90),
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
            let beat = i.status.as_ref().and_then(|s| s.heartbeat_time.clone());
            m.upsert_inventory(&name, i.spec);
            m.inventory_heartbeat(&name, beat.as_deref(), now_ms());
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

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A client for the controller: `config` with kube-client's default retry turned off. That
/// retry (up to 15 tries, backing off to 1,000 s, on 429/503/504) would turn one eviction a
/// PodDisruptionBudget refuses into minutes of waiting; the controller bounds every call itself
/// and treats a refusal as an answer.
///
/// # Errors
/// The configuration cannot make a client (TLS, auth).
pub fn client(mut config: kube::Config) -> Result<Client, KubeError> {
    config.default_retry = false;
    Client::try_from(config).map_err(|e| KubeError::Client(e.to_string()))
}

/// Keep trying for the lease; publish whether this replica holds it. A holder that cannot
/// renew within the lease duration steps down, and so does one whose loop stalled.
async fn elect(
    mut lock: LeaseLock,
    cfg: ControllerConfig,
    metrics: Metrics,
    tx: watch::Sender<bool>,
) {
    // client-go's renew deadline: stop leading well before a standby may take over (it waits a
    // whole lease duration from the last renewal it saw, which is no earlier than `sent`).
    let renew_deadline = cfg.lease_duration * 2 / 3;
    let mut last_renewal_sent = tokio::time::Instant::now();
    loop {
        let sent = tokio::time::Instant::now();
        if metrics.stalled() {
            // A leader whose loop does not turn binds nothing: let a standby have the lease.
            if tx.send_replace(false) {
                tracing::error!(
                    stalled_ms = metrics.since_beat().as_millis() as u64,
                    "the scheduling loop stalled; stopped renewing the lease"
                );
            }
            tokio::select! {
                _ = tokio::time::sleep(cfg.renew_every) => {}
                _ = tx.closed() => return,
            }
            continue;
        }
        // A lease call that does not answer counts as a failed one.
        let call = tokio::time::timeout(renew_deadline, lock.try_acquire_or_renew()).await;
        let leader =
            match call.unwrap_or_else(|_| Err(KubeError::Client("lease call timed out".into()))) {
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
/// `client` should come from [`client`] (no built-in retry); the writer bounds every call with
/// `cfg.api_timeout` either way.
///
/// # Errors
/// The engine refused an empty cluster (not expected).
pub async fn run(
    client: Client,
    cfg: ControllerConfig,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), KubeError> {
    run_with(client, cfg, metrics, None, shutdown).await
}

/// [`run`], also feeding the read-only web dashboard (`dashboard::channel`) with boards built
/// from the mirror while someone looks.
///
/// # Errors
/// The engine refused an empty cluster (not expected).
pub async fn run_with(
    client: Client,
    cfg: ControllerConfig,
    metrics: Metrics,
    mut dashboard: Option<crate::dashboard::Publisher>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), KubeError> {
    let mut mirror = Mirror::new(cfg.profile.clone())?;
    mirror.set_inventory_stale_after(cfg.inventory_stale_after);
    metrics.set_stall_after(cfg.stall_after);
    metrics.beat();
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
        Some(tokio::spawn(elect(
            lock,
            cfg.clone(),
            metrics.clone(),
            lead_tx,
        )))
    } else {
        drop(lead_tx);
        None
    };
    let wcfg = WriterConfig {
        qps: cfg.qps,
        burst: cfg.burst,
        timeout: cfg.api_timeout,
        concurrency: cfg.concurrency,
        event_qps: cfg.event_qps,
        event_burst: cfg.event_burst,
        instance: cfg.identity.clone(),
    };
    let (writer, mut outcomes) = Writer::new(
        client.clone(),
        &wcfg,
        metrics.clone(),
        Some(lead_rx.clone()),
    );
    let mut synced: BTreeSet<&'static str> = BTreeSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut pending_change = true;
    let mut due: Option<tokio::time::Instant> = None;
    let mut next_tick = tokio::time::Instant::now() + cfg.tick;
    loop {
        metrics.beat();
        let wake = due.unwrap_or(next_tick).min(next_tick);
        tokio::select! {
            _ = &mut shutdown => break,
            c = rx.recv() => {
                let Some(c) = c else { break };
                let mut next = Some(c);
                while let Some(c) = next {
                    if let Change::Synced(kind) = &c {
                        synced.insert(kind);
                        if synced.len() == 5 && !metrics.is_ready() {
                            metrics.set_ready();
                            tracing::info!("caches synced");
                        }
                    }
                    apply_change(&mut mirror, c);
                    next = rx.try_recv().ok();
                }
                if let Some(d) = dashboard.as_mut() {
                    d.touch();
                }
                pending_change = true;
                due = Some(tokio::time::Instant::now() + cfg.debounce);
            }
            o = outcomes.recv() => {
                let Some(o) = o else { break };
                let mut next = Some(o);
                while let Some(o) = next {
                    let follow = mirror.outcome(o, now_ms());
                    if let Some(d) = dashboard.as_mut() {
                        d.record_events(&mirror, &follow.events, now_ms());
                        d.touch();
                    }
                    if !follow.is_empty() {
                        writer.submit(follow);
                    }
                    next = outcomes.try_recv().ok();
                }
                // Failures are looked at again on the next cycle, after the debounce: a refusal
                // does not clear in microseconds, and backed-off victims wait longer still.
                pending_change = true;
                due.get_or_insert_with(|| tokio::time::Instant::now() + cfg.debounce);
            }
            _ = tokio::time::sleep_until(wake) => {
                let leader = *lead_rx.borrow();
                metrics.is_leader.set(i64::from(leader));
                let ticked = tokio::time::Instant::now() >= next_tick;
                if ticked {
                    next_tick = tokio::time::Instant::now() + cfg.tick;
                }
                due = None;
                if let Some(d) = dashboard.as_mut() {
                    d.publish(&mirror, &cfg.profile, leader, now_ms());
                }
                if !(leader && metrics.is_ready() && (pending_change || ticked)) {
                    metrics.observe(&mirror);
                    continue;
                }
                pending_change = false;
                let t0 = std::time::Instant::now();
                let actions = mirror.cycle(now_ms());
                let elapsed = t0.elapsed();
                metrics.cycle.observe(elapsed.as_secs_f64());
                let (binds, evictions) = (actions.binds.len(), actions.evictions.len());
                if let Some(d) = dashboard.as_mut() {
                    d.record_events(&mirror, &actions.events, now_ms());
                    if binds + evictions > 0 {
                        d.touch();
                    }
                }
                if !actions.is_empty() {
                    writer.submit(actions);
                }
                gantry_metrics::SchedulerMetrics::raise_to(&metrics.preemptions, mirror.preemptions());
                metrics.observe(&mirror);
                if binds + evictions > 0 {
                    tracing::debug!(
                        binds,
                        evictions,
                        elapsed_us = elapsed.as_micros() as u64,
                        "cycle planned"
                    );
                }
            }
        }
    }
    for w in watches {
        w.abort();
    }
    // The elector releases the lease once no one listens to it any more.
    drop(writer);
    drop(lead_rx);
    if let Some(e) = elector {
        let _ = tokio::time::timeout(Duration::from_secs(5), e).await;
    }
    Ok(())
}
