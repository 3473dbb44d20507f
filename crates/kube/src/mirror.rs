//! The controller's view of the cluster and the engine snapshot it keeps in step, one watch
//! event at a time.
//!
//! Watchers feed [`Mirror`] with upserts and deletes of Nodes, NodeInventories, Queues,
//! PodGroups and pods. Each change marks only what it touches: a pod or PodGroup marks its job,
//! a node turning not-ready flips that node in the snapshot, a device's health flips that
//! device. Only a change of the node set, a node's hardware or the queue tree rebuilds the
//! snapshot (the engine cannot add nodes to a built snapshot); a rebuild resubmits every job
//! and gives bound pods their recorded devices back through `Snapshot::restore`.
//!
//! [`Mirror::cycle`] syncs the marked jobs, runs the engine and turns its plan into
//! [`Actions`]: binds with their annotations, evictions, pod conditions, PodGroup and Queue
//! statuses and events, each written only when it differs from what the API already shows.
//! The mirror assumes its own binds and evictions until the watch confirms them, so a resync in
//! between never hands a device out twice.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use gantry_engine::{schedule, JobId, JobPhase, NamedAlloc, Profile, Snapshot};
use gantry_model::{
    Cluster, ClusterSpec, QueueTree, QueuesSpec, SelectorOp, SelectorRequirement, SelectorTerm,
};
use k8s_openapi::api::core::v1::{Node as KubeNode, Pod};
use kube::ResourceExt;

use crate::apply::{EvictResult, Outcome};
use crate::crd::{NodeInventorySpec, PodGroup, PodGroupSpec, PodGroupStatus, Queue, QueueStatus};
use crate::error::KubeError;
use crate::translate::{
    bind_annotations, created_ms, job_spec, node_of, pod_info, queue_tree, spread_excluded, JobKey,
    JobTranslation, NodeView, PodInfo, PodKey, PodState, HOSTNAME_KEY,
};

/// A pod to bind.
#[derive(Debug, Clone, PartialEq)]
pub struct BindAction {
    /// The pod.
    pub pod: PodKey,
    /// Its job (a gang's pods share one).
    pub job: JobKey,
    /// Target node.
    pub node: String,
    /// Annotations to set before the binding: the allocation and the device uuids.
    pub annotations: BTreeMap<String, String>,
}

/// A pod to evict.
#[derive(Debug, Clone, PartialEq)]
pub struct EvictAction {
    /// The pod.
    pub pod: PodKey,
    /// Its job.
    pub job: JobKey,
    /// Why (`preempted by … (Priority)`).
    pub reason: String,
    /// The job it makes room for, when it is a preemption victim.
    pub preemptor: Option<JobKey>,
}

/// An object an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Regarding {
    /// A pod.
    Pod(PodKey),
    /// A PodGroup (namespace, name).
    PodGroup(String, String),
    /// A Queue.
    Queue(String),
}

/// An event to record.
#[derive(Debug, Clone, PartialEq)]
pub struct EventAction {
    /// What it is about.
    pub regarding: Regarding,
    /// Its `metadata.uid` (kubectl finds an object's events by uid; empty when unknown).
    pub uid: String,
    /// `Normal` or `Warning`.
    pub warning: bool,
    /// One CamelCase word, kube-scheduler's where one exists (`Scheduled`, `FailedScheduling`,
    /// `Preempted`).
    pub reason: String,
    /// Human text.
    pub note: String,
}

impl EventAction {
    /// The event's `action`, from its reason (kube-scheduler's words).
    pub fn action(&self) -> &'static str {
        match self.reason.as_str() {
            "Scheduled" => "Binding",
            "Preempted" | "Nominated" | "PreemptionBlocked" => "Preempting",
            "Evicted" => "Evicting",
            _ => "Scheduling",
        }
    }
}

/// `PodScheduled=False` for a pod that waits.
#[derive(Debug, Clone, PartialEq)]
pub struct PodCondition {
    /// The pod.
    pub pod: PodKey,
    /// Why it waits.
    pub message: String,
    /// RFC 3339 time the condition became False (kept while it stays False).
    pub since: String,
}

/// Everything one cycle wants written to the API, in the order it should be applied.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Actions {
    /// Evictions (applied first: they free what the binds may use).
    pub evictions: Vec<EvictAction>,
    /// Binds, gang by gang.
    pub binds: Vec<BindAction>,
    /// Pods to mark `PodScheduled=False`.
    pub pod_conditions: Vec<PodCondition>,
    /// `controller.kubernetes.io/pod-deletion-cost` to set on inference replicas.
    pub pod_costs: Vec<(PodKey, String)>,
    /// PodGroup statuses that changed.
    pub group_statuses: Vec<((String, String), PodGroupStatus)>,
    /// Queue statuses that changed.
    pub queue_statuses: Vec<(String, QueueStatus)>,
    /// Events.
    pub events: Vec<EventAction>,
}

impl Actions {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        *self == Actions::default()
    }
}

/// Each live pod of a job and the allocation the snapshot was given for it (if bound).
type BoundPods = Vec<(PodKey, Option<NamedAlloc>)>;

#[derive(Debug, Default)]
pub(crate) struct JobEntry {
    pub(crate) id: Option<JobId>,
    /// The translation the snapshot holds, and the allocations it was given back.
    current: Option<(JobTranslation, BoundPods)>,
    /// Why it is not in the snapshot, or why it waits.
    pub(crate) reason: Option<String>,
}

/// A victim whose eviction was refused: not a victim again before `until_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub(crate) until_ms: u64,
    pub(crate) attempts: u32,
}

/// The first wait after a refused eviction, doubled on each refusal up to [`BACKOFF_MAX_MS`].
pub const BACKOFF_MIN_MS: u64 = 1_000;
/// The longest wait after refused evictions.
pub const BACKOFF_MAX_MS: u64 = 300_000;

/// See the module docs.
#[derive(Debug)]
pub struct Mirror {
    profile: Profile,
    kube_nodes: BTreeMap<String, KubeNode>,
    inventories: BTreeMap<String, NodeInventorySpec>,
    views: BTreeMap<String, NodeView>,
    pub(crate) queues: BTreeMap<String, Queue>,
    pub(crate) groups: BTreeMap<(String, String), (PodGroupSpec, u64)>,
    pub(crate) group_uids: BTreeMap<(String, String), String>,
    pub(crate) pods: BTreeMap<PodKey, PodInfo>,
    /// Pods gantry cannot schedule as written: why, and their uid.
    pub(crate) bad_pods: BTreeMap<PodKey, (String, String)>,
    pub(crate) pods_of: BTreeMap<JobKey, BTreeSet<PodKey>>,
    pub(crate) jobs: BTreeMap<JobKey, JobEntry>,
    pub(crate) in_flight: BTreeMap<PodKey, NamedAlloc>,
    evicting: BTreeSet<PodKey>,
    /// Victims whose eviction was refused, backing off.
    pub(crate) protection: BTreeMap<JobKey, Backoff>,
    /// Preemptors whose victims could not be evicted: why they wait.
    pub(crate) budget_wait: BTreeMap<JobKey, String>,
    /// Jobs evicted for a preemptor (by whom), until they run again.
    pub(crate) preempted: BTreeMap<JobKey, String>,
    /// Devices (whole uuids, `uuid@start` for MIG slices) that pods present in the API hold by
    /// their recorded allocation, running or terminating. A bind never goes out for a device
    /// another pod still claims: the API, not the snapshot, has the last word.
    claims: HashMap<String, PodKey>,
    /// Binds planned onto devices another pod still claims (a preempted pod in its grace
    /// period, a pod being deleted), sent once the claim is gone.
    pub(crate) held: BTreeMap<PodKey, BindAction>,
    pub(crate) snap: Snapshot,
    tree: QueueTree,
    /// Per inventory: the heartbeat last seen, and when (this controller's clock, ms).
    heartbeats: BTreeMap<String, (Option<String>, u64)>,
    /// Inventories whose heartbeat stopped: their nodes take no new pods.
    stale: BTreeSet<String>,
    /// How long an inventory may go without a new heartbeat (0: never stale).
    stale_after_ms: u64,
    next_stale_check_ms: u64,
    /// Queues left out of the tree, and why.
    pub(crate) invalid_queues: BTreeMap<String, String>,
    structure_dirty: bool,
    dirty: BTreeSet<JobKey>,
    resubmits: usize,
    preemptions: u64,
    /// `PodScheduled=False` as the API shows it: message and transition time.
    pub(crate) observed_pod_reason: HashMap<PodKey, (String, String)>,
    /// Deletion costs sent and not yet seen back on the pod.
    pub(crate) cost_written: HashMap<PodKey, String>,
    pub(crate) observed_group: BTreeMap<(String, String), PodGroupStatus>,
    pub(crate) observed_queue: BTreeMap<String, QueueStatus>,
}

pub(crate) fn rfc3339(now_ms: u64) -> String {
    k8s_openapi::jiff::Timestamp::from_millisecond(now_ms as i64)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

impl Mirror {
    /// An empty mirror scheduling with `profile`.
    ///
    /// # Errors
    /// The engine refused an empty cluster (not expected).
    pub fn new(profile: Profile) -> Result<Self, KubeError> {
        let tree = QueuesSpec::default()
            .build()
            .map_err(|e| KubeError::Engine(e.to_string()))?;
        let snap = Snapshot::new(&Cluster::default(), &tree)
            .map_err(|e| KubeError::Engine(e.to_string()))?;
        Ok(Mirror {
            profile,
            kube_nodes: BTreeMap::new(),
            inventories: BTreeMap::new(),
            views: BTreeMap::new(),
            queues: BTreeMap::new(),
            groups: BTreeMap::new(),
            group_uids: BTreeMap::new(),
            pods: BTreeMap::new(),
            bad_pods: BTreeMap::new(),
            pods_of: BTreeMap::new(),
            jobs: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            claims: HashMap::new(),
            held: BTreeMap::new(),
            evicting: BTreeSet::new(),
            protection: BTreeMap::new(),
            budget_wait: BTreeMap::new(),
            preempted: BTreeMap::new(),
            snap,
            tree,
            invalid_queues: BTreeMap::new(),
            heartbeats: BTreeMap::new(),
            stale: BTreeSet::new(),
            stale_after_ms: 0,
            next_stale_check_ms: 0,
            structure_dirty: true,
            dirty: BTreeSet::new(),
            resubmits: 0,
            preemptions: 0,
            observed_pod_reason: HashMap::new(),
            cost_written: HashMap::new(),
            observed_group: BTreeMap::new(),
            observed_queue: BTreeMap::new(),
        })
    }

    /// The engine snapshot (read-only; for metrics and tests).
    pub fn snapshot(&self) -> &Snapshot {
        &self.snap
    }

    /// Pods bound or being bound by this controller and not yet confirmed by the watch.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Ids of the jobs in the snapshot.
    pub fn job_ids(&self) -> impl Iterator<Item = JobId> + '_ {
        self.jobs.values().filter_map(|e| e.id)
    }

    /// Nodes that take new pods.
    pub fn ready_nodes(&self) -> usize {
        self.views.values().filter(|v| v.ready).count()
    }

    /// Queues left out of the tree because they are not valid, and why (the rest of the tree
    /// is in use).
    pub fn invalid_queues(&self) -> &BTreeMap<String, String> {
        &self.invalid_queues
    }

    // ------------------------------------------------------------------ nodes

    fn refresh_node(&mut self, name: &str) {
        let Some(kn) = self.kube_nodes.get(name) else {
            if self.views.remove(name).is_some() {
                self.structure_dirty = true;
            }
            return;
        };
        let view = match node_of(kn, self.inventories.get(name)) {
            Ok(mut v) => {
                if self.stale.contains(name) {
                    v.node.taints.push(stale_taint());
                }
                v
            }
            Err(e) => {
                tracing::warn!(node = name, error = %e, "node left out");
                if self.views.remove(name).is_some() {
                    self.structure_dirty = true;
                }
                return;
            }
        };
        match self.views.get(name) {
            Some(old) if old.node == view.node && old.ready == view.ready => {}
            Some(old) if !self.structure_dirty && same_hardware(&old.node, &view.node) => {
                if let Some(id) = self.snap.node_by_name(name) {
                    if old.ready != view.ready {
                        self.snap.set_node_ready(id, view.ready);
                    }
                    for (a, b) in old.node.devices.iter().zip(&view.node.devices) {
                        let Some(d) = self.snap.device_by_uuid(&b.uuid) else {
                            continue;
                        };
                        if a.health != b.health {
                            self.snap.set_device_health(d, b.health);
                        }
                        // One XID can hit one MIG slice and not its siblings.
                        let slices = |x: &gantry_model::Device| {
                            x.mig.as_ref().map(|m| m.slices.clone()).unwrap_or_default()
                        };
                        for (sa, sb) in slices(a).iter().zip(&slices(b)) {
                            if sa.health != sb.health {
                                self.snap.set_slice_health(d, sb.start, sb.health);
                            }
                        }
                    }
                }
                self.views.insert(name.to_string(), view);
            }
            _ => {
                self.views.insert(name.to_string(), view);
                self.structure_dirty = true;
            }
        }
    }

    /// A Node was added or changed.
    pub fn upsert_node(&mut self, node: KubeNode) {
        let name = node.name_any();
        self.kube_nodes.insert(name.clone(), node);
        self.refresh_node(&name);
    }

    /// A Node was deleted.
    pub fn delete_node(&mut self, name: &str) {
        self.kube_nodes.remove(name);
        self.refresh_node(name);
    }

    /// A NodeInventory was added or changed.
    pub fn upsert_inventory(&mut self, name: &str, spec: NodeInventorySpec) {
        self.inventories.insert(name.to_string(), spec);
        self.refresh_node(name);
    }

    /// A NodeInventory was deleted.
    pub fn delete_inventory(&mut self, name: &str) {
        self.inventories.remove(name);
        self.heartbeats.remove(name);
        self.stale.remove(name);
        self.refresh_node(name);
    }

    /// Nodes whose inventory has not heartbeated for `after` take no new pods (zero: never).
    pub fn set_inventory_stale_after(&mut self, after: std::time::Duration) {
        self.stale_after_ms = after.as_millis() as u64;
    }

    /// An inventory's heartbeat as the watch shows it, seen at `now_ms` on this controller's
    /// clock. Staleness counts from when the value last changed, so the node's clock does not
    /// matter (as with leases).
    pub fn inventory_heartbeat(&mut self, name: &str, value: Option<&str>, now_ms: u64) {
        let value = value.map(str::to_string);
        if self.heartbeats.get(name).is_none_or(|(v, _)| *v != value) {
            self.heartbeats.insert(name.to_string(), (value, now_ms));
        }
        self.check_stale(name, now_ms);
    }

    /// Nodes whose inventory is stale now.
    pub fn stale_nodes(&self) -> impl Iterator<Item = &str> {
        self.stale.iter().map(String::as_str)
    }

    fn check_stale(&mut self, name: &str, now_ms: u64) {
        let stale = self.stale_after_ms > 0
            && self
                .heartbeats
                .get(name)
                .is_some_and(|(_, seen)| now_ms.saturating_sub(*seen) > self.stale_after_ms);
        if stale == self.stale.contains(name) {
            return;
        }
        if stale {
            tracing::warn!(
                node = name,
                "NodeInventory stopped heartbeating; no new pods go there"
            );
            self.stale.insert(name.to_string());
        } else {
            tracing::info!(node = name, "NodeInventory heartbeats again");
            self.stale.remove(name);
        }
        self.refresh_node(name);
    }

    // ------------------------------------------------------------------ queues and groups

    /// A Queue was added or changed (a status-only change rebuilds nothing).
    pub fn upsert_queue(&mut self, q: Queue) {
        let name = q.name_any();
        if let Some(st) = &q.status {
            self.observed_queue.insert(name.clone(), st.clone());
        }
        let same = self.queues.get(&name).is_some_and(|old| old.spec == q.spec);
        self.queues.insert(name, q);
        if !same {
            self.structure_dirty = true;
        }
    }

    /// A Queue was deleted.
    pub fn delete_queue(&mut self, name: &str) {
        self.observed_queue.remove(name);
        if self.queues.remove(name).is_some() {
            self.structure_dirty = true;
        }
    }

    /// A PodGroup was added or changed.
    pub fn upsert_group(&mut self, g: PodGroup) {
        let key = (g.namespace().unwrap_or_default(), g.name_any());
        if let Some(st) = &g.status {
            self.observed_group.insert(key.clone(), st.clone());
        }
        if let Some(uid) = &g.metadata.uid {
            self.group_uids.insert(key.clone(), uid.clone());
        }
        let created = created_ms(&g.metadata);
        let changed = self.groups.get(&key).is_none_or(|(s, _)| s != &g.spec);
        self.groups.insert(key.clone(), (g.spec, created));
        if changed {
            self.dirty.insert(JobKey::Group(key.0, key.1));
        }
    }

    /// A PodGroup was deleted.
    pub fn delete_group(&mut self, ns: &str, name: &str) {
        let key = (ns.to_string(), name.to_string());
        self.observed_group.remove(&key);
        self.group_uids.remove(&key);
        self.preempted
            .remove(&JobKey::Group(key.0.clone(), key.1.clone()));
        if self.groups.remove(&key).is_some() {
            self.dirty.insert(JobKey::Group(key.0, key.1));
        }
    }

    // ------------------------------------------------------------------ pods

    /// A pod with gantry's scheduler name was added or changed.
    pub fn upsert_pod(&mut self, pod: &Pod) {
        let ns = pod.namespace().unwrap_or_else(|| "default".into());
        let key = PodKey {
            ns,
            name: pod.name_any(),
        };
        let reason = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"))
            .filter(|c| c.status == "False")
            .and_then(|c| {
                let since = c
                    .last_transition_time
                    .as_ref()
                    .map(|t| t.0.to_string())
                    .unwrap_or_default();
                c.message.clone().map(|m| (m, since))
            });
        match reason {
            Some(r) => self.observed_pod_reason.insert(key.clone(), r),
            None => self.observed_pod_reason.remove(&key),
        };
        match pod_info(pod) {
            Ok(info) => {
                self.bad_pods.remove(&key);
                // Bound: the API's word replaces any assumption (ours confirmed, or another
                // leader's bind seen after a lost lease).
                if info.node.is_some() {
                    self.in_flight.remove(&key);
                }
                let old = self.pods.get(&key);
                if old == Some(&info) {
                    return;
                }
                if old.is_some_and(|o| o.uid != info.uid) {
                    // Deleted and re-created under the same name while the watch was away: what
                    // was assumed about the old pod does not apply to the new one.
                    self.in_flight.remove(&key);
                    self.evicting.remove(&key);
                    self.held.remove(&key);
                }
                self.set_claims(&key, Some(&info));
                let old = self.pods.get(&key);
                if let Some(o) = old {
                    if o.job != info.job {
                        self.unlink(&key);
                    }
                }
                self.pods_of
                    .entry(info.job.clone())
                    .or_default()
                    .insert(key.clone());
                self.dirty.insert(info.job.clone());
                let ns = key.ns.clone();
                self.pods.insert(key, info);
                self.spread_changed(&ns);
            }
            Err(e) => {
                self.unlink(&key);
                self.set_claims(&key, None);
                self.pods.remove(&key);
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                self.bad_pods.insert(key, (e, uid));
            }
        }
    }

    /// A pod was deleted.
    pub fn delete_pod(&mut self, ns: &str, name: &str) {
        let key = PodKey {
            ns: ns.to_string(),
            name: name.to_string(),
        };
        self.unlink(&key);
        self.set_claims(&key, None);
        self.pods.remove(&key);
        self.bad_pods.remove(&key);
        self.in_flight.remove(&key);
        self.held.remove(&key);
        self.evicting.remove(&key);
        self.observed_pod_reason.remove(&key);
        self.cost_written.remove(&key);
        self.spread_changed(ns);
    }

    /// Record the devices `info` holds by its allocation (none when it is gone or unbound).
    fn set_claims(&mut self, key: &PodKey, info: Option<&PodInfo>) {
        if let Some(old) = self.pods.get(key).and_then(|p| p.allocation.as_ref()) {
            for k in claim_keys(old) {
                if self.claims.get(&k) == Some(key) {
                    self.claims.remove(&k);
                }
            }
        }
        if let Some(i) = info.filter(|i| i.node.is_some() && i.state.holds()) {
            if let Some(a) = &i.allocation {
                for k in claim_keys(a) {
                    self.claims.insert(k, key.clone());
                }
            }
        }
    }

    /// Whether a bind for `pod` would take a device another present pod still holds.
    fn claimed_by_other(&self, pod: &PodKey, alloc: &NamedAlloc) -> bool {
        claim_keys(alloc)
            .iter()
            .any(|k| self.claims.get(k).is_some_and(|holder| holder != pod))
    }

    /// Held binds whose devices are free now, for this cycle; held binds that no longer apply
    /// (the pod is gone, bound, or its placement was dropped) are forgotten.
    fn release_held(&mut self, actions: &mut Actions) {
        let held = std::mem::take(&mut self.held);
        let mut by_job: BTreeMap<JobKey, Vec<BindAction>> = BTreeMap::new();
        for (pod, b) in held {
            let still = self
                .pods
                .get(&pod)
                .is_some_and(|p| p.node.is_none() && p.state == PodState::Live)
                && self.in_flight.contains_key(&pod);
            if still {
                by_job.entry(b.job.clone()).or_default().push(b);
            }
        }
        for (_, binds) in by_job {
            let free = binds.iter().all(|b| {
                self.in_flight
                    .get(&b.pod)
                    .is_some_and(|a| !self.claimed_by_other(&b.pod, a))
            });
            if free {
                actions.binds.extend(binds);
            } else {
                self.held
                    .extend(binds.into_iter().map(|b| (b.pod.clone(), b)));
            }
        }
    }

    /// Pods whose binds wait for devices that terminating pods still hold.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    fn unlink(&mut self, key: &PodKey) {
        if let Some(info) = self.pods.get(key) {
            let job = info.job.clone();
            if let Some(set) = self.pods_of.get_mut(&job) {
                set.remove(key);
            }
            self.dirty.insert(job);
        }
    }

    /// The API refused a bind the last cycle planned: forget the assumption and resync the job
    /// (its other pods, bound or not, are put back as the API shows them).
    pub fn bind_failed(&mut self, pod: &PodKey, job: &JobKey) {
        self.in_flight.remove(pod);
        self.dirty.insert(job.clone());
    }

    /// A gang member's bind was refused after other members of the same placement were bound:
    /// those are evicted, so the gang is never left partly running; it is placed again whole.
    /// Returns the evictions to apply.
    pub fn roll_back_gang(
        &mut self,
        job: &JobKey,
        bound: &[PodKey],
        why: &str,
    ) -> Vec<EvictAction> {
        let mut out = Vec::new();
        for pod in bound {
            self.in_flight.remove(pod);
            if self.evicting.insert(pod.clone()) {
                out.push(EvictAction {
                    pod: pod.clone(),
                    job: job.clone(),
                    reason: format!("gang rolled back: {why}"),
                    preemptor: None,
                });
            }
        }
        self.dirty.insert(job.clone());
        out
    }

    /// Status writes the API refused: forget that they were written, so the next cycle sends
    /// them again.
    pub fn status_writes_failed(&mut self, failed: &[Regarding]) {
        for r in failed {
            match r {
                Regarding::Pod(p) => {
                    self.observed_pod_reason.remove(p);
                    self.cost_written.remove(p);
                }
                Regarding::PodGroup(ns, name) => {
                    self.observed_group.remove(&(ns.clone(), name.clone()));
                }
                Regarding::Queue(name) => {
                    self.observed_queue.remove(name);
                }
            }
        }
    }

    /// The API refused an eviction: the pod stays where it is, so count it again.
    pub fn evict_failed(&mut self, pod: &PodKey, job: &JobKey) {
        self.evicting.remove(pod);
        self.dirty.insert(job.clone());
    }

    // ------------------------------------------------------------------ the cycle

    fn rebuild(&mut self, actions: &mut Actions) {
        let (tree, invalid) = queue_tree(self.queues.values());
        for (name, why) in &invalid {
            if self.invalid_queues.get(name) != Some(why) {
                tracing::warn!(queue = %name, error = %why, "queue left out of the tree");
                actions.events.push(self.event(
                    Regarding::Queue(name.clone()),
                    true,
                    "InvalidQueue",
                    why.clone(),
                ));
            }
        }
        self.tree = tree;
        self.invalid_queues = invalid;
        let nodes: Vec<_> = self.views.values().map(|v| v.node.clone()).collect();
        let cluster = ClusterSpec {
            nodes,
            ..ClusterSpec::default()
        }
        .build()
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "nodes do not form a valid cluster; scheduling on none");
            Cluster::default()
        });
        let snap = Snapshot::new(&cluster, &self.tree).or_else(|e| {
            tracing::error!(error = %e, "cannot build a snapshot");
            Snapshot::new(&Cluster::default(), &self.tree)
        });
        let Ok(mut snap) = snap else {
            return;
        };
        for (name, v) in &self.views {
            if !v.ready {
                if let Some(id) = snap.node_by_name(name) {
                    snap.set_node_ready(id, false);
                }
            }
        }
        self.snap = snap;
        self.resubmits = 0;
        for (key, e) in &mut self.jobs {
            e.id = None;
            e.current = None;
            self.dirty.insert(key.clone());
        }
        for key in self.pods_of.keys() {
            self.dirty.insert(key.clone());
        }
        self.structure_dirty = false;
    }

    /// Where a pending lone pod with host spread constraints may not go, or why it waits.
    ///
    /// Siblings (pods of its namespace its constraints select) count on the node they are bound
    /// to or being bound to. The nodes are the ready ones that carry its `nodeSelector` labels.
    /// Siblings are placed one at a time, oldest first, so two placed in one cycle never land
    /// against the constraint: a pod waits while an older sibling is still unplaced.
    fn spread_exclusions(&self, pod: &PodInfo) -> Result<Vec<String>, String> {
        let siblings: Vec<&PodInfo> = self
            .pods
            .values()
            .filter(|p| p.key.ns == pod.key.ns && p.key != pod.key && p.state.holds())
            .filter(|p| pod.spread.iter().any(|c| c.selects(&p.labels)))
            .collect();
        if let Some(first) = siblings
            .iter()
            .filter(|p| p.node.is_none() && !self.in_flight.contains_key(&p.key))
            .filter(|p| !p.spread.is_empty())
            .find(|p| (p.created_ms, &p.key) < (pod.created_ms, &pod.key))
        {
            return Err(format!(
                "waits for {} to be placed first: pods spread over {HOSTNAME_KEY}                  (topologySpreadConstraints) are placed one at a time",
                first.key
            ));
        }
        let nodes: Vec<String> = self
            .views
            .iter()
            .filter(|(_, v)| v.ready)
            .filter(|(_, v)| {
                pod.demand
                    .constraints
                    .node_selector
                    .iter()
                    .all(|(k, val)| v.node.labels.get(k) == Some(val))
            })
            .map(|(n, _)| n.clone())
            .collect();
        let counts: Vec<BTreeMap<String, u32>> = pod
            .spread
            .iter()
            .map(|c| {
                let mut m = BTreeMap::new();
                for p in siblings.iter().filter(|p| c.selects(&p.labels)) {
                    let node = p
                        .node
                        .clone()
                        .or_else(|| self.in_flight.get(&p.key).map(|a| a.node.clone()));
                    if let Some(n) = node {
                        *m.entry(n).or_insert(0) += 1;
                    }
                }
                m
            })
            .collect();
        Ok(spread_excluded(&pod.spread, &nodes, &counts))
    }

    /// Pending lone pods with spread constraints in `ns` look again (a sibling moved).
    fn spread_changed(&mut self, ns: &str) {
        let keys: Vec<JobKey> = self
            .pods
            .values()
            .filter(|p| p.key.ns == ns && !p.spread.is_empty() && p.node.is_none())
            .map(|p| p.job.clone())
            .collect();
        self.dirty.extend(keys);
    }

    fn live_pods(&self, key: &JobKey) -> Vec<&PodInfo> {
        self.pods_of
            .get(key)
            .into_iter()
            .flatten()
            .filter(|k| !self.evicting.contains(*k))
            .filter_map(|k| self.pods.get(k))
            .filter(|p| p.state.holds())
            // Bound without gantry's allocation (bound by hand): its devices are unknown, so it
            // is left out of its job and never bound again.
            .filter(|p| p.node.is_none() || p.allocation.is_some())
            .collect()
    }

    fn retire(&mut self, key: &JobKey) {
        if let Some(e) = self.jobs.get_mut(key) {
            if let Some(id) = e.id.take() {
                let _ = self.snap.cancel(id);
            }
            e.current = None;
        }
    }

    /// Bring one job in the snapshot in line with its pods.
    fn sync_job(&mut self, key: &JobKey, now_ms: u64, actions: &mut Actions) {
        let live = self.live_pods(key);
        if live.is_empty() {
            self.retire(key);
            if self.pods_of.get(key).is_none_or(BTreeSet::is_empty) {
                self.pods_of.remove(key);
                self.jobs.remove(key);
                self.protection.remove(key);
                self.budget_wait.remove(key);
                // A PodGroup keeps showing that it was preempted until new pods come; a lone
                // pod that is gone has nothing left to show it on.
                if let JobKey::Pod(_) = key {
                    self.preempted.remove(key);
                }
            }
            return;
        }
        let group = match key {
            JobKey::Group(ns, name) => self.groups.get(&(ns.clone(), name.clone())).cloned(),
            JobKey::Pod(_) => None,
        };
        let has_bound = live
            .iter()
            .any(|p| p.node.is_some() || self.in_flight.contains_key(&p.key));
        if let (JobKey::Group(..), Some((g, _))) = (key, &group) {
            // A running gang that lost members keeps what it holds; only a gang with nothing
            // bound waits for minMember.
            if (live.len() as u32) < g.min_member && !has_bound {
                let why = format!(
                    "{} of {} pods exist; waiting for minMember",
                    live.len(),
                    g.min_member
                );
                self.retire(key);
                self.jobs.entry(key.clone()).or_default().reason = Some(why);
                return;
            }
        }
        let mut tr = match job_spec(key, &live, group.as_ref().map(|(g, c)| (g, *c))) {
            Ok(t) => t,
            Err(why) => {
                self.retire(key);
                self.jobs.entry(key.clone()).or_default().reason = Some(why);
                return;
            }
        };
        if let JobKey::Pod(pk) = key {
            let spread = self
                .pods
                .get(pk)
                .filter(|p| !p.spread.is_empty() && p.node.is_none())
                .map(|p| self.spread_exclusions(p));
            match spread {
                Some(Err(why)) => {
                    self.retire(key);
                    self.jobs.entry(key.clone()).or_default().reason = Some(why);
                    return;
                }
                Some(Ok(excluded)) if !excluded.is_empty() => {
                    let not_here = SelectorRequirement {
                        key: "metadata.name".into(),
                        operator: SelectorOp::NotIn,
                        values: excluded,
                    };
                    for g in &mut tr.spec.tasks {
                        if g.node_affinity.is_empty() {
                            g.node_affinity.push(SelectorTerm {
                                match_expressions: Vec::new(),
                            });
                        }
                        for term in &mut g.node_affinity {
                            term.match_expressions.push(not_here.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        // What is bound, or assumed bound: the allocation the pod carries or the one in flight.
        let bound: BoundPods = live
            .iter()
            .map(|p| {
                let a = match &p.node {
                    Some(_) => p.allocation.clone(),
                    None => self.in_flight.get(&p.key).cloned(),
                };
                (p.key.clone(), a)
            })
            .collect();
        let entry = self.jobs.entry(key.clone()).or_default();
        if let Some((cur_tr, cur_bound)) = &entry.current {
            if cur_tr == &tr && cur_bound == &bound && entry.id.is_some() {
                return;
            }
        }
        if let Some(id) = entry.id.take() {
            let _ = self.snap.cancel(id);
            self.resubmits += 1;
        }
        entry.current = None;
        let job = match tr.spec.validate(&self.tree, None) {
            Ok(j) => j,
            Err(e) => {
                entry.reason = Some(match self.invalid_queues.get(&tr.spec.queue) {
                    Some(why) => format!("its queue is left out: {why}"),
                    None => format!("cannot be scheduled: {e}"),
                });
                return;
            }
        };
        let id = match self.snap.submit(&job, tr.submitted_ms) {
            Ok(id) => id,
            Err(e) => {
                entry.reason = Some(format!("cannot be scheduled: {e}"));
                return;
            }
        };
        entry.id = Some(id);
        entry.reason = None;
        let mut tasks = Vec::new();
        let mut lost = Vec::new();
        for (pod, alloc) in &bound {
            let Some(alloc) = alloc else { continue };
            let Some((group, index)) = tr.task_of(pod) else {
                continue;
            };
            let mut a = alloc.clone();
            a.group = group;
            a.index = index;
            match a.to_alloc(&self.snap) {
                Some(t) => tasks.push(t),
                None => lost.push(pod.clone()),
            }
        }
        let restored = if tasks.is_empty() {
            Ok(())
        } else {
            self.snap
                .restore(id, tasks, tr.submitted_ms.min(now_ms))
                .map_err(|e| e.to_string())
        };
        let evict_all = match (&restored, lost.is_empty()) {
            (Ok(()), true) => None,
            (Ok(()), false) => Some("its node or devices are gone".to_string()),
            (Err(e), _) => Some(format!("its recorded devices cannot be restored: {e}")),
        };
        if let Some(why) = evict_all {
            // Requeue the gang whole: evict every pod that holds devices, resubmit the rest.
            if self.snap.job_phase(id) == JobPhase::Running {
                let _ = self.snap.requeue(id);
            }
            for (pod, alloc) in &bound {
                if alloc.is_some() && self.evicting.insert(pod.clone()) {
                    self.in_flight.remove(pod);
                    actions.evictions.push(EvictAction {
                        pod: pod.clone(),
                        job: key.clone(),
                        reason: format!("requeued: {why}"),
                        preemptor: None,
                    });
                }
            }
            let _ = self.snap.cancel(id);
            if let Some(e) = self.jobs.get_mut(key) {
                e.id = None;
            }
            self.dirty.insert(key.clone());
            return;
        }
        if let Some(e) = self.jobs.get_mut(key) {
            e.current = Some((tr, bound));
        }
    }

    /// The uid of what an event is about (empty when unknown).
    pub(crate) fn uid_of(&self, r: &Regarding) -> String {
        match r {
            Regarding::Pod(p) => self
                .pods
                .get(p)
                .map(|i| i.uid.clone())
                .or_else(|| self.bad_pods.get(p).map(|(_, u)| u.clone()))
                .unwrap_or_default(),
            Regarding::PodGroup(ns, n) => self
                .group_uids
                .get(&(ns.clone(), n.clone()))
                .cloned()
                .unwrap_or_default(),
            Regarding::Queue(n) => self
                .queues
                .get(n)
                .and_then(|q| q.metadata.uid.clone())
                .unwrap_or_default(),
        }
    }

    /// An event about `regarding`, with its uid.
    pub(crate) fn event(
        &self,
        regarding: Regarding,
        warning: bool,
        reason: &str,
        note: String,
    ) -> EventAction {
        EventAction {
            uid: self.uid_of(&regarding),
            regarding,
            warning,
            reason: reason.into(),
            note,
        }
    }

    /// Jobs whose eviction for a preemptor went through (for `gantry_preemptions_total`).
    pub fn preemptions(&self) -> u64 {
        self.preemptions
    }

    /// Keep backed-off victims out of this cycle's victim searches.
    fn apply_protection(&mut self, now_ms: u64) {
        for (job, b) in &self.protection {
            if b.until_ms > now_ms {
                if let Some(id) = self.jobs.get(job).and_then(|e| e.id) {
                    self.snap.protect(id, b.until_ms);
                }
            }
        }
    }

    /// Sync what changed, run the engine, and say what to write.
    pub fn cycle(&mut self, now_ms: u64) -> Actions {
        let mut actions = Actions::default();
        if now_ms >= self.next_stale_check_ms {
            // At most once a second: staleness is measured in tens of seconds.
            self.next_stale_check_ms = now_ms + 1_000;
            let watched: Vec<String> = self.heartbeats.keys().cloned().collect();
            for name in watched {
                self.check_stale(&name, now_ms);
            }
        }
        if self.resubmits > 4 * self.jobs.len().max(1024) {
            // Retired slots stay in the snapshot; rebuilding compacts it.
            self.structure_dirty = true;
        }
        if self.structure_dirty {
            self.rebuild(&mut actions);
        }
        // Evictions made while syncing can mark more jobs; loop until settled.
        let mut rounds = 0;
        while !self.dirty.is_empty() && rounds < 4 {
            rounds += 1;
            let dirty = std::mem::take(&mut self.dirty);
            for key in dirty {
                self.sync_job(&key, now_ms, &mut actions);
            }
        }
        self.release_held(&mut actions);
        self.apply_protection(now_ms);
        let plan = schedule(&mut self.snap, &self.profile, now_ms);
        let names: HashMap<String, JobKey> = self
            .jobs
            .iter()
            .filter(|(_, e)| e.id.is_some())
            .map(|(k, _)| (k.engine_name(), k.clone()))
            .collect();
        let key_of = |snap: &Snapshot, id: JobId| names.get(snap.job_name(id)).cloned();
        for p in &plan.preemptions {
            let (Some(victim), preemptor) = (
                key_of(&self.snap, p.victim),
                key_of(&self.snap, p.preemptor),
            ) else {
                continue;
            };
            let by = preemptor
                .as_ref()
                .map(|k| k.to_string())
                .unwrap_or_default();
            let reason = format!("preempted by {by} ({:?})", p.cause);
            let pods: Vec<PodKey> = self
                .live_pods(&victim)
                .iter()
                .filter(|p| p.node.is_some() || self.in_flight.contains_key(&p.key))
                .map(|p| p.key.clone())
                .collect();
            for pod in pods {
                self.in_flight.remove(&pod);
                self.evicting.insert(pod.clone());
                actions.evictions.push(EvictAction {
                    pod,
                    job: victim.clone(),
                    reason: reason.clone(),
                    preemptor: preemptor.clone(),
                });
            }
            if let Some(e) = self.jobs.get_mut(&victim) {
                e.current = None;
                if let Some(id) = e.id.take() {
                    let _ = self.snap.cancel(id);
                }
            }
        }
        let mut spread_moved: Vec<String> = Vec::new();
        for b in &plan.binds {
            let Some(key) = key_of(&self.snap, b.job) else {
                continue;
            };
            let Some(entry) = self.jobs.get_mut(&key) else {
                continue;
            };
            let Some((tr, bound)) = entry.current.as_mut() else {
                continue;
            };
            entry.reason = None;
            let mut waiting = 0usize;
            let mut batch = Vec::new();
            for t in &b.tasks {
                let Some(pod) = tr
                    .tasks
                    .get(t.group as usize)
                    .and_then(|g| g.get(t.index as usize))
                    .cloned()
                else {
                    continue;
                };
                let alloc = NamedAlloc::from_alloc(&self.snap, t);
                let devices = self
                    .views
                    .get(&alloc.node)
                    .map(|v| v.node.devices.as_slice())
                    .unwrap_or(&[]);
                let annotations = match bind_annotations(&alloc, devices) {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::error!(%pod, error = %e, "cannot encode the allocation");
                        continue;
                    }
                };
                if let Some(slot) = bound.iter_mut().find(|(p, _)| p == &pod) {
                    slot.1 = Some(alloc.clone());
                }
                self.in_flight.insert(pod.clone(), alloc.clone());
                spread_moved.push(pod.ns.clone());
                // Devices a preempted or deleted pod still holds (its grace period) are waited
                // for: the bind goes out once that pod is gone.
                let claimed = claim_keys(&alloc)
                    .iter()
                    .any(|k| self.claims.get(k).is_some_and(|h| h != &pod));
                waiting += usize::from(claimed);
                batch.push(BindAction {
                    pod: pod.clone(),
                    job: key.clone(),
                    node: alloc.node.clone(),
                    annotations,
                });
            }
            // A gang goes out whole: if one member waits, all of this placement waits.
            if waiting > 0 {
                let nodes: BTreeSet<&str> = batch.iter().map(|b| b.node.as_str()).collect();
                let note = format!(
                    "{} pods placed on {}; bound once preempted or deleted pods release the devices of {waiting} of them",
                    batch.len(),
                    nodes.into_iter().collect::<Vec<_>>().join(", ")
                );
                for b in batch {
                    self.held.insert(b.pod.clone(), b);
                }
                actions
                    .events
                    .push(self.event(regarding_of(&key), false, "Nominated", note));
            } else {
                actions.binds.extend(batch);
            }
        }
        // A sibling of spread pods was placed: the next one looks now (next cycle).
        spread_moved.sort();
        spread_moved.dedup();
        for ns in spread_moved {
            self.spread_changed(&ns);
        }
        // Every waiting job's reason as the engine sees it now: the plan's reasons, and for a
        // queue the cycle skipped whole (out of quota), the queue's reason. A preemptor whose
        // victims could not be evicted says so instead.
        for (key, e) in &mut self.jobs {
            let Some(id) = e.id else { continue };
            match self.snap.job_phase(id) {
                JobPhase::Pending => {
                    if let Some(msg) = self.budget_wait.get(key) {
                        e.reason = Some(msg.clone());
                    } else if let Some(w) = self.snap.why(id) {
                        e.reason = Some(w.text);
                    }
                }
                JobPhase::Running => {
                    self.budget_wait.remove(key);
                    self.preempted.remove(key);
                }
                _ => {}
            }
        }
        self.statuses(now_ms, &mut actions);
        actions
    }

    /// Take in what came of writes the last cycles sent; returns what to write because of it
    /// (a gang's roll-back, events).
    pub fn outcome(&mut self, o: Outcome, now_ms: u64) -> Actions {
        let mut out = Actions::default();
        match o {
            Outcome::Binds { job, results } => self.binds_answered(&job, results, &mut out),
            Outcome::Eviction { action, result } => {
                self.eviction_answered(action, result, now_ms, &mut out);
            }
            Outcome::StatusFailed(r) => self.status_writes_failed(std::slice::from_ref(&r)),
        }
        out
    }

    fn binds_answered(
        &mut self,
        job: &JobKey,
        results: Vec<(BindAction, Result<(), String>)>,
        out: &mut Actions,
    ) {
        let mut bound: Vec<BindAction> = Vec::new();
        let mut failed: Vec<(BindAction, String)> = Vec::new();
        for (b, r) in results {
            match r {
                Ok(()) => {
                    let note = format!(
                        "Successfully assigned {}/{} to {}",
                        b.pod.ns, b.pod.name, b.node
                    );
                    out.events.push(self.event(
                        Regarding::Pod(b.pod.clone()),
                        false,
                        "Scheduled",
                        note,
                    ));
                    bound.push(b);
                }
                Err(e) => {
                    let note = format!("Binding rejected: {e}");
                    out.events.push(self.event(
                        Regarding::Pod(b.pod.clone()),
                        true,
                        "FailedScheduling",
                        note,
                    ));
                    self.bind_failed(&b.pod, job);
                    failed.push((b, e));
                }
            }
        }
        let JobKey::Group(..) = job else { return };
        if failed.is_empty() {
            let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
            for b in &bound {
                *per_node.entry(b.node.as_str()).or_default() += 1;
            }
            let nodes: Vec<String> = per_node
                .into_iter()
                .map(|(n, c)| {
                    if c > 1 {
                        format!("{n} ×{c}")
                    } else {
                        n.to_string()
                    }
                })
                .collect();
            let note = format!("{} pods bound to {}", bound.len(), nodes.join(", "));
            out.events
                .push(self.event(regarding_of(job), false, "Scheduled", note));
        } else if !bound.is_empty() {
            // A gang whose placement was only partly bound is rolled back: the members bound in
            // this batch are evicted, so no gang is left partly running.
            let why = format!("binding {} failed: {}", failed[0].0.pod, failed[0].1);
            let pods: Vec<PodKey> = bound.iter().map(|b| b.pod.clone()).collect();
            out.evictions.extend(self.roll_back_gang(job, &pods, &why));
            out.events.push(self.event(
                regarding_of(job),
                true,
                "FailedScheduling",
                format!("gang rolled back: {why}"),
            ));
        }
    }

    fn eviction_answered(
        &mut self,
        a: EvictAction,
        result: EvictResult,
        now_ms: u64,
        out: &mut Actions,
    ) {
        let (refused, message, retry_after) = match result {
            EvictResult::Done => {
                let Some(_) = &a.preemptor else {
                    out.events.push(self.event(
                        Regarding::Pod(a.pod.clone()),
                        false,
                        "Evicted",
                        a.reason.clone(),
                    ));
                    return;
                };
                self.protection.remove(&a.job);
                out.events.push(self.event(
                    Regarding::Pod(a.pod.clone()),
                    false,
                    "Preempted",
                    a.reason.clone(),
                ));
                if self
                    .preempted
                    .insert(a.job.clone(), a.reason.clone())
                    .is_none()
                {
                    self.preemptions += 1;
                    if let JobKey::Group(..) = &a.job {
                        out.events.push(self.event(
                            regarding_of(&a.job),
                            false,
                            "Preempted",
                            a.reason.clone(),
                        ));
                    }
                }
                return;
            }
            EvictResult::Refused {
                message,
                retry_after,
            } => (true, message, retry_after),
            EvictResult::Failed(message) => (false, message, None),
        };
        self.evict_failed(&a.pod, &a.job);
        // Not a preemption (a gang roll-back, a requeue): tried again next cycle.
        let Some(by) = a.preemptor.clone() else {
            return;
        };
        let b = self.protection.entry(a.job.clone()).or_insert(Backoff {
            until_ms: 0,
            attempts: 0,
        });
        b.attempts += 1;
        let exp = BACKOFF_MIN_MS
            .saturating_mul(1u64 << (b.attempts - 1).min(20))
            .min(BACKOFF_MAX_MS);
        let wait = retry_after.map_or(exp, |d| (d.as_millis() as u64).max(exp));
        b.until_ms = now_ms + wait;
        let secs = wait.div_ceil(1000);
        let why = if refused {
            format!(
                "waiting on a PodDisruptionBudget: evicting {} was refused ({message}); next try in {secs} s",
                a.pod
            )
        } else {
            format!(
                "waiting to preempt: evicting {} failed ({message}); next try in {secs} s",
                a.pod
            )
        };
        self.drop_nomination(&by);
        self.budget_wait.insert(by.clone(), why.clone());
        out.events
            .push(self.event(regarding_of(&by), true, "PreemptionBlocked", why));
    }

    /// A preemptor was placed on devices a victim keeps (its eviction was refused): forget the
    /// placement, so the victim gets its devices back and the preemptor is placed again.
    fn drop_nomination(&mut self, job: &JobKey) {
        let pods: Vec<PodKey> = self
            .pods_of
            .get(job)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        for p in pods {
            // Only binds not sent yet: a sent bind is the API's to confirm or refuse.
            if self.held.remove(&p).is_some() {
                self.in_flight.remove(&p);
            }
        }
        self.retire(job);
        self.dirty.insert(job.clone());
    }
}

/// The exclusive units an allocation takes: whole devices, and MIG slices by parent and start.
/// Shared fractions are left to the engine's accounting.
fn claim_keys(a: &NamedAlloc) -> Vec<String> {
    match &a.gpu {
        gantry_engine::NamedGpu::Whole(us) => us.clone(),
        gantry_engine::NamedGpu::Mig { uuid, start, .. } => vec![format!("{uuid}@{start}")],
        gantry_engine::NamedGpu::Shared { .. } | gantry_engine::NamedGpu::None => Vec::new(),
    }
}

pub(crate) fn regarding_of(key: &JobKey) -> Regarding {
    match key {
        JobKey::Group(ns, name) => Regarding::PodGroup(ns.clone(), name.clone()),
        JobKey::Pod(p) => Regarding::Pod(p.clone()),
    }
}

/// The same node apart from health (of devices and MIG slices), which the snapshot takes in
/// place; anything else (taints included) rebuilds it.
fn same_hardware(a: &gantry_model::Node, b: &gantry_model::Node) -> bool {
    a.name == b.name
        && a.cpu_milli == b.cpu_milli
        && a.memory_mib == b.memory_mib
        && a.labels == b.labels
        && a.taints == b.taints
        && a.devices.len() == b.devices.len()
        && a.devices.iter().zip(&b.devices).all(|(x, y)| {
            let mut y = y.clone();
            y.health = x.health;
            if let (Some(mx), Some(my)) = (&x.mig, y.mig.as_mut()) {
                if mx.slices.len() == my.slices.len() {
                    for (sx, sy) in mx.slices.iter().zip(my.slices.iter_mut()) {
                        sy.health = sx.health;
                    }
                }
            }
            *x == y
        })
}

/// The taint a node whose inventory stopped heartbeating carries in the snapshot: new GPU pods
/// stay off it, and the reason names it.
pub fn stale_taint() -> gantry_model::Taint {
    gantry_model::Taint {
        key: STALE_TAINT_KEY.into(),
        value: "no-heartbeat".into(),
        effect: gantry_model::TaintEffect::NoSchedule,
    }
}

/// Key of [`stale_taint`].
pub const STALE_TAINT_KEY: &str = "gantry.dev/inventory-stale";

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crd::PodGroupPhase;
    use serde_json::json;

    pub(crate) fn node(name: &str) -> KubeNode {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {"allocatable": {"cpu": "96", "memory": "1Ti"},
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap()
    }

    pub(crate) fn inventory(node: &str, gpus: u32) -> NodeInventorySpec {
        let devices = (0..gpus)
            .map(|i| {
                serde_json::from_value(
                    json!({"uuid": format!("GPU-{node}-{i}"), "model": "h100-80gb"}),
                )
                .unwrap()
            })
            .collect();
        NodeInventorySpec::new(devices, None)
    }

    pub(crate) fn pod(
        name: &str,
        gpus: u32,
        labels: serde_json::Value,
        ann: serde_json::Value,
        node: Option<&str>,
    ) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ml", "uid": format!("uid-{name}"), "labels": labels, "annotations": ann},
            "spec": {"schedulerName": "gantry", "nodeName": node, "containers": [{"name": "c",
                "resources": {"limits": {"nvidia.com/gpu": gpus.to_string()}}}]}
        }))
        .unwrap()
    }

    pub(crate) fn mirror(nodes: &[(&str, u32)]) -> Mirror {
        let mut m = Mirror::new(Profile::gantry()).unwrap();
        for (n, g) in nodes {
            m.upsert_node(node(n));
            m.upsert_inventory(n, inventory(n, *g));
        }
        // A queue with no quota that may use any flavor, up to capacity.
        m.upsert_queue(
            serde_json::from_value(
                json!({"metadata": {"name": "q"}, "spec": {"unlistedFlavors": "allow"}}),
            )
            .unwrap(),
        );
        m
    }

    fn group(min: u32) -> PodGroup {
        serde_json::from_value(json!({"metadata": {"name": "g", "namespace": "ml"},
            "spec": {"minMember": min, "queue": "q"}}))
        .unwrap()
    }

    /// A replica of a service spread over hosts (maxSkew 1), as a Deployment would make it.
    fn spread_pod(name: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ml", "uid": format!("uid-{name}"),
                         "labels": {"app": "svc", "gantry.dev/queue": "q"}},
            "spec": {"schedulerName": "gantry",
                "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                    "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "svc"}}}],
                "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}
        }))
        .unwrap()
    }

    #[test]
    fn inference_replicas_carry_a_deletion_cost_so_the_freest_node_loses_its_replica_first() {
        let mut m = mirror(&[("n1", 8), ("n2", 8)]);
        let svc = json!({"gantry.dev/queue": "q", "gantry.dev/priority-class": "inference"});
        m.upsert_pod(&pod("svc-a", 1, svc.clone(), json!({}), Some("n1")));
        m.upsert_pod(&pod("svc-b", 1, svc.clone(), json!({}), Some("n2")));
        m.upsert_pod(&pod(
            "train",
            4,
            json!({"gantry.dev/queue": "q"}),
            json!({}),
            Some("n1"),
        ));
        let a = m.cycle(1_000);
        let mut costs = a.pod_costs.clone();
        costs.sort();
        let got: Vec<(&str, &str)> = costs
            .iter()
            .map(|(k, c)| (k.name.as_str(), c.as_str()))
            .collect();
        // svc-a shares n1 with 4 GPUs of training: it stays; svc-b is alone: it goes first.
        assert_eq!(got, [("svc-a", "4"), ("svc-b", "0")], "{a:#?}");
        // Sent once; once the pods show them, nothing more is written.
        assert!(m.cycle(2_000).pod_costs.is_empty());
        m.upsert_pod(&pod(
            "svc-b",
            1,
            svc,
            json!({"controller.kubernetes.io/pod-deletion-cost": "0"}),
            Some("n2"),
        ));
        assert!(m.cycle(3_000).pod_costs.is_empty());
    }

    #[test]
    fn replicas_spread_over_hosts_land_one_per_node_before_doubling_up() {
        let mut m = mirror(&[("n1", 4), ("n2", 4)]);
        for p in ["a", "b", "c"] {
            m.upsert_pod(&spread_pod(p));
        }
        let mut placed: Vec<(String, String)> = Vec::new();
        for t in 1..=3u64 {
            let a = m.cycle(t * 1_000);
            for b in &a.binds {
                placed.push((b.pod.name.clone(), b.node.clone()));
            }
            // One at a time, oldest first: the others say why they wait.
            assert_eq!(a.binds.len(), 1, "cycle {t}: {a:#?}");
        }
        assert_eq!(placed[0].0, "a");
        assert_eq!(placed[1].0, "b");
        assert_ne!(
            placed[0].1, placed[1].1,
            "the second replica went to the other node: {placed:?}"
        );
        // Bin packing alone would have stacked them on one node.
        let on_n1 = placed.iter().filter(|p| p.1 == "n1").count();
        assert!((1..=2).contains(&on_n1), "{placed:?}");
    }

    #[test]
    fn a_spread_the_scheduler_cannot_read_is_said_on_the_pod() {
        let mut m = mirror(&[("n1", 4)]);
        let mut p = spread_pod("a");
        if let Some(spec) = p.spec.as_mut() {
            if let Some(c) = spec.topology_spread_constraints.as_mut() {
                c[0].label_selector = Some(
                    serde_json::from_value(json!({
                        "matchExpressions": [{"key": "app", "operator": "In", "values": ["svc"]}]
                    }))
                    .unwrap(),
                );
            }
        }
        m.upsert_pod(&p);
        let a = m.cycle(1_000);
        assert!(a.binds.is_empty());
        let said = format!("{a:?}");
        assert!(
            said.contains("labelSelector.matchExpressions: gantry reads matchLabels only"),
            "{said}"
        );
    }

    /// Each row: what the watches delivered, then what one cycle must write.
    #[test]
    fn one_cycle_turns_watched_objects_into_the_right_writes() {
        type Setup = fn(&mut Mirror);
        struct Row {
            what: &'static str,
            setup: Setup,
            binds: usize,
            evictions: usize,
            condition_contains: Option<&'static str>,
            group_phase: Option<PodGroupPhase>,
        }
        let rows = [
            Row {
                what: "a gang short of minMember waits as Pending",
                setup: |m| {
                    m.upsert_group(group(3));
                    m.upsert_pod(&pod(
                        "a",
                        1,
                        json!({"gantry.dev/pod-group": "g"}),
                        json!({}),
                        None,
                    ));
                },
                binds: 0,
                evictions: 0,
                condition_contains: Some("1 of 3 pods exist"),
                group_phase: Some(PodGroupPhase::Pending),
            },
            Row {
                what: "a complete gang binds whole",
                setup: |m| {
                    m.upsert_group(group(2));
                    for p in ["a", "b"] {
                        m.upsert_pod(&pod(
                            p,
                            4,
                            json!({"gantry.dev/pod-group": "g"}),
                            json!({}),
                            None,
                        ));
                    }
                },
                binds: 2,
                evictions: 0,
                condition_contains: None,
                // Binds sent, not yet confirmed by the watch.
                group_phase: Some(PodGroupPhase::Nominated),
            },
            Row {
                what: "a group pod before its PodGroup names what is missing",
                setup: |m| {
                    m.upsert_pod(&pod(
                        "a",
                        1,
                        json!({"gantry.dev/pod-group": "g"}),
                        json!({}),
                        None,
                    ));
                },
                binds: 0,
                evictions: 0,
                condition_contains: Some("PodGroup ml/g does not exist"),
                group_phase: None,
            },
            Row {
                what: "a lone pod without a queue label is told which label",
                setup: |m| m.upsert_pod(&pod("a", 1, json!({}), json!({}), None)),
                binds: 0,
                evictions: 0,
                condition_contains: Some("gantry.dev/queue"),
                group_phase: None,
            },
            Row {
                what: "a lone pod asking for more than any node has waits with a reason",
                setup: |m| {
                    m.upsert_pod(&pod(
                        "a",
                        9,
                        json!({"gantry.dev/queue": "q"}),
                        json!({}),
                        None,
                    ))
                },
                binds: 0,
                evictions: 0,
                condition_contains: Some(""),
                group_phase: None,
            },
            Row {
                what: "a pod bound on a node that is gone is evicted so its gang requeues",
                setup: |m| {
                    let alloc = json!({"group": 0, "index": 0, "node": "gone", "cpu_milli": 0,
                        "memory_mib": 0, "gpu": {"Whole": ["GPU-gone-0"]}, "flavor": "h100-80gb", "amount": 1000});
                    m.upsert_pod(&pod(
                        "a",
                        1,
                        json!({"gantry.dev/queue": "q"}),
                        json!({"gantry.dev/allocation": alloc.to_string()}),
                        Some("gone"),
                    ));
                },
                binds: 0,
                evictions: 1,
                condition_contains: None,
                group_phase: None,
            },
        ];
        for row in rows {
            let mut m = mirror(&[("n0", 8)]);
            (row.setup)(&mut m);
            let a = m.cycle(1_000);
            assert_eq!(a.binds.len(), row.binds, "{}: {a:#?}", row.what);
            assert_eq!(a.evictions.len(), row.evictions, "{}: {a:#?}", row.what);
            match row.condition_contains {
                Some(needle) => assert!(
                    a.pod_conditions
                        .iter()
                        .any(|c| c.message.contains(needle) && !c.message.is_empty()),
                    "{}: {:?}",
                    row.what,
                    a.pod_conditions
                ),
                None => assert!(
                    a.pod_conditions.is_empty(),
                    "{}: {:?}",
                    row.what,
                    a.pod_conditions
                ),
            }
            if let Some(phase) = row.group_phase {
                assert_eq!(a.group_statuses[0].1.phase, phase, "{}", row.what);
            }
        }
    }

    #[test]
    fn a_pod_arriving_at_a_queue_out_of_quota_is_told_why() {
        let mut m = mirror(&[("n0", 8)]);
        m.upsert_queue(
            serde_json::from_value(json!({"metadata": {"name": "q"},
                "spec": {"quotas": {"h100-80gb": {"nominal": 1}}}}))
            .unwrap(),
        );
        m.upsert_pod(&pod(
            "a",
            1,
            json!({"gantry.dev/queue": "q"}),
            json!({}),
            None,
        ));
        assert_eq!(m.cycle(1_000).binds.len(), 1);
        // The queue is now full, so the next cycle skips it whole: the new pod still gets the
        // queue's reason.
        m.upsert_pod(&pod(
            "b",
            1,
            json!({"gantry.dev/queue": "q"}),
            json!({}),
            None,
        ));
        let a = m.cycle(2_000);
        assert!(a.binds.is_empty());
        assert!(
            a.pod_conditions
                .iter()
                .any(|c| c.pod.name == "b" && c.message.contains("quota")),
            "{:?}",
            a.pod_conditions
        );
    }

    fn bound_pod(name: &str, gpus: u32, labels: serde_json::Value, terminating: bool) -> Pod {
        let uuids: Vec<String> = (0..gpus).map(|i| format!("GPU-n0-{i}")).collect();
        let alloc = json!({"group": 0, "index": 0, "node": "n0", "cpu_milli": 0, "memory_mib": 0,
            "gpu": {"Whole": uuids}, "flavor": "h100-80gb", "amount": gpus * 1000});
        let mut p = pod(
            name,
            gpus,
            labels,
            json!({"gantry.dev/allocation": alloc.to_string()}),
            Some("n0"),
        );
        if terminating {
            p.metadata.deletion_timestamp =
                Some(serde_json::from_value(json!("2026-11-21T10:00:00Z")).unwrap());
        }
        p
    }

    #[test]
    fn a_terminating_pod_holds_its_devices_until_it_is_deleted() {
        let mut m = mirror(&[("n0", 8)]);
        m.upsert_pod(&bound_pod("old", 8, json!({"gantry.dev/queue": "q"}), true));
        m.upsert_pod(&pod(
            "new",
            8,
            json!({"gantry.dev/queue": "q"}),
            json!({}),
            None,
        ));
        assert!(
            m.cycle(1_000).binds.is_empty(),
            "bound onto a terminating pod's GPUs"
        );
        m.delete_pod("ml", "old");
        let a = m.cycle(2_000);
        assert_eq!(a.binds.len(), 1, "{a:#?}");
    }

    #[test]
    fn a_preemptor_is_bound_only_once_its_victims_are_gone() {
        let mut m = mirror(&[("n0", 8)]);
        m.upsert_pod(&bound_pod(
            "low",
            8,
            json!({"gantry.dev/queue": "q", "gantry.dev/priority-class": "batch"}),
            false,
        ));
        m.upsert_pod(&pod(
            "high",
            8,
            json!({"gantry.dev/queue": "q", "gantry.dev/priority-class": "training"}),
            json!({}),
            None,
        ));
        let a = m.cycle(1_000);
        assert_eq!(a.evictions.len(), 1, "{a:#?}");
        assert!(
            a.binds.is_empty(),
            "bound while the victim still runs: {a:#?}"
        );
        assert_eq!(m.held(), 1);
        assert!(
            a.events.iter().any(|e| e.reason == "Nominated"),
            "{:?}",
            a.events
        );
        // The eviction starts the victim's grace period: still nothing is bound.
        m.upsert_pod(&bound_pod(
            "low",
            8,
            json!({"gantry.dev/queue": "q", "gantry.dev/priority-class": "batch"}),
            true,
        ));
        assert!(m.cycle(2_000).binds.is_empty());
        // The victim is deleted: the preemptor goes out, on the devices it was given.
        m.delete_pod("ml", "low");
        let a = m.cycle(3_000);
        assert_eq!(a.binds.len(), 1, "{a:#?}");
        assert_eq!(a.binds[0].pod.name, "high");
        assert_eq!(m.held(), 0);
    }

    #[test]
    fn a_refused_eviction_backs_the_victim_off_and_tells_the_preemptor_why() {
        let mut m = mirror(&[("n0", 8)]);
        let low_labels = json!({"gantry.dev/queue": "q", "gantry.dev/priority-class": "batch"});
        m.upsert_pod(&bound_pod("low", 8, low_labels.clone(), false));
        m.upsert_pod(&pod(
            "high",
            8,
            json!({"gantry.dev/queue": "q", "gantry.dev/priority-class": "training"}),
            json!({}),
            None,
        ));
        let a = m.cycle(1_000);
        assert_eq!(a.evictions.len(), 1);
        assert!(
            !a.events.iter().any(|e| e.reason == "Preempted"),
            "Preempted before the eviction went through: {:?}",
            a.events
        );
        let ev = a.evictions[0].clone();
        assert_eq!(
            ev.preemptor.as_ref().map(ToString::to_string).as_deref(),
            Some("pod ml/high")
        );
        // A PodDisruptionBudget refuses it, asking for 5 s.
        let follow = m.outcome(
            Outcome::Eviction {
                action: ev,
                result: EvictResult::Refused {
                    message: "Cannot evict pod as it would violate the pod's disruption budget."
                        .into(),
                    retry_after: Some(std::time::Duration::from_secs(5)),
                },
            },
            1_100,
        );
        assert!(follow.evictions.is_empty(), "{follow:#?}");
        assert!(follow
            .events
            .iter()
            .any(|e| e.reason == "PreemptionBlocked" && e.note.contains("disruption budget")));
        assert_eq!(m.held(), 0, "the preemptor's nomination is dropped");
        // The victim gets its devices back (never "cannot be restored … already taken"), is not
        // evicted again during its backoff, and the preemptor says why it waits.
        let a = m.cycle(1_200);
        assert!(a.evictions.is_empty(), "{a:#?}");
        assert!(a.binds.is_empty(), "{a:#?}");
        let why = a
            .pod_conditions
            .iter()
            .find(|c| c.pod.name == "high")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        assert!(why.contains("PodDisruptionBudget"), "{why}");
        assert!(why.contains("next try in 5 s"), "{why}");
        let low = m.jobs[&JobKey::Pod(PodKey {
            ns: "ml".into(),
            name: "low".into(),
        })]
            .id
            .expect("the victim is back in the snapshot");
        assert_eq!(m.snapshot().job_phase(low), JobPhase::Running);
        assert!(
            m.cycle(4_000).evictions.is_empty(),
            "evicted during the backoff"
        );
        // After the backoff the victim is tried again.
        let a = m.cycle(6_200);
        assert_eq!(a.evictions.len(), 1, "{a:#?}");
        // This time it goes through: the victim gets its Preempted event, with its uid.
        let follow = m.outcome(
            Outcome::Eviction {
                action: a.evictions[0].clone(),
                result: EvictResult::Done,
            },
            6_300,
        );
        let pre = follow
            .events
            .iter()
            .find(|e| e.reason == "Preempted")
            .expect("Preempted event");
        assert_eq!(pre.uid, "uid-low");
        assert_eq!(m.preemptions(), 1);
    }

    #[test]
    fn a_node_whose_inventory_stops_heartbeating_takes_no_new_pods_and_says_why() {
        let mut m = mirror(&[("n0", 8), ("n1", 8)]);
        m.set_inventory_stale_after(std::time::Duration::from_secs(90));
        m.inventory_heartbeat("n0", Some("2026-11-30T10:00:00Z"), 0);
        m.inventory_heartbeat("n1", Some("2026-11-30T10:00:00Z"), 0);
        // n1 keeps beating; n0's plugin is gone.
        m.inventory_heartbeat("n1", Some("2026-11-30T10:01:00Z"), 60_000);
        m.inventory_heartbeat("n1", Some("2026-11-30T10:02:00Z"), 120_000);
        m.upsert_pod(&pod(
            "a",
            8,
            json!({"gantry.dev/queue": "q"}),
            json!({}),
            None,
        ));
        let a = m.cycle(121_000);
        assert_eq!(m.stale_nodes().collect::<Vec<_>>(), ["n0"]);
        assert_eq!(a.binds.len(), 1);
        assert_eq!(
            a.binds[0].node, "n1",
            "placed on a node with a stale inventory"
        );
        // n1 goes quiet too: the next pod waits and the reason names the stale inventories.
        m.upsert_pod(&pod(
            "b",
            8,
            json!({"gantry.dev/queue": "q"}),
            json!({}),
            None,
        ));
        let a = m.cycle(300_000);
        assert!(a.binds.is_empty(), "{a:#?}");
        let why = &a
            .pod_conditions
            .iter()
            .find(|c| c.pod.name == "b")
            .expect("b waits")
            .message;
        assert!(why.contains("gantry.dev/inventory-stale"), "{why}");
        // n0's plugin comes back: its node takes pods again.
        m.inventory_heartbeat("n0", Some("2026-11-30T10:05:00Z"), 301_000);
        let a = m.cycle(302_000);
        assert_eq!(a.binds.len(), 1, "{a:#?}");
        assert_eq!(a.binds[0].node, "n0");
    }

    #[test]
    fn an_unhealthy_mig_slice_in_the_inventory_is_not_handed_out() {
        let mig_inventory = |bad: bool| -> NodeInventorySpec {
            let slice = |start: u8, unhealthy: bool| {
                json!({"profile": "1g.10gb", "start": start, "uuid": format!("MIG-{start}"),
                       "health": if unhealthy { "Unhealthy" } else { "Healthy" }})
            };
            let d = json!({"uuid": "GPU-m0-0", "model": "a100-80gb",
                "mig": {"slices": [slice(0, bad), slice(1, false)]}});
            NodeInventorySpec::new(vec![serde_json::from_value(d).unwrap()], None)
        };
        let mut m = mirror(&[]);
        m.upsert_node(node("m0"));
        m.upsert_inventory("m0", mig_inventory(false));
        m.cycle(1_000);
        // An XID hits slice 0 only; the rebuilt inventory says so.
        m.upsert_inventory("m0", mig_inventory(true));
        let mig_pod = |name: &str| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ml", "labels": {"gantry.dev/queue": "q"}},
                "spec": {"schedulerName": "gantry", "containers": [{"name": "c",
                    "resources": {"limits": {"nvidia.com/mig-1g.10gb": "1"}}}]}
            }))
            .unwrap()
        };
        m.upsert_pod(&mig_pod("a"));
        m.upsert_pod(&mig_pod("b"));
        let a = m.cycle(2_000);
        assert_eq!(a.binds.len(), 1, "{a:#?}");
        let devs = &a.binds[0].annotations["gantry.dev/devices"];
        assert!(devs.contains("MIG-1"), "{devs}");
        // It recovers: the second pod gets it.
        m.upsert_inventory("m0", mig_inventory(false));
        let a = m.cycle(3_000);
        assert_eq!(a.binds.len(), 1, "{a:#?}");
        assert!(
            a.binds[0].annotations["gantry.dev/devices"].contains("MIG-0"),
            "{a:#?}"
        );
    }

    #[test]
    fn a_bind_seen_in_the_api_replaces_what_this_replica_assumed() {
        let mut m = mirror(&[("n0", 8)]);
        m.upsert_pod(&pod(
            "x",
            2,
            json!({"gantry.dev/queue": "q"}),
            json!({}),
            None,
        ));
        let planned: Vec<String> =
            serde_json::from_str(&m.cycle(1_000).binds[0].annotations["gantry.dev/devices"])
                .unwrap();
        // Another replica (which held the lease meanwhile) bound x elsewhere on the node.
        let theirs: Vec<String> = (0..8)
            .map(|i| format!("GPU-n0-{i}"))
            .filter(|d| !planned.contains(d))
            .take(2)
            .collect();
        let alloc = json!({"group": 0, "index": 0, "node": "n0", "cpu_milli": 0, "memory_mib": 0,
            "gpu": {"Whole": theirs}, "flavor": "h100-80gb", "amount": 2000});
        m.upsert_pod(&pod(
            "x",
            2,
            json!({"gantry.dev/queue": "q"}),
            json!({"gantry.dev/allocation": alloc.to_string()}),
            Some("n0"),
        ));
        assert_eq!(m.in_flight(), 0);
        m.upsert_pod(&pod(
            "y",
            6,
            json!({"gantry.dev/queue": "q"}),
            json!({}),
            None,
        ));
        let a = m.cycle(2_000);
        let got: Vec<String> =
            serde_json::from_str(&a.binds[0].annotations["gantry.dev/devices"]).unwrap();
        assert!(
            got.iter().all(|d| !theirs.contains(d)),
            "{got:?} overlaps {theirs:?}"
        );
        assert_eq!(got.len(), 6);
    }

    #[test]
    fn bound_pods_keep_their_devices_across_a_restart_and_in_flight_binds_are_never_reused() {
        // A controller restarts: the watch shows a pod bound with gantry's annotation.
        let mut m = mirror(&[("n0", 8)]);
        let alloc = json!({"group": 0, "index": 0, "node": "n0", "cpu_milli": 0, "memory_mib": 0,
            "gpu": {"Whole": ["GPU-n0-0", "GPU-n0-1", "GPU-n0-2", "GPU-n0-3", "GPU-n0-4", "GPU-n0-5"]},
            "flavor": "h100-80gb", "amount": 6000});
        m.upsert_pod(&pod(
            "old",
            6,
            json!({"gantry.dev/queue": "q"}),
            json!({"gantry.dev/allocation": alloc.to_string()}),
            Some("n0"),
        ));
        m.upsert_pod(&pod(
            "new",
            2,
            json!({"gantry.dev/queue": "q"}),
            json!({}),
            None,
        ));
        let a = m.cycle(1_000);
        assert_eq!(a.binds.len(), 1, "{a:#?}");
        let devs: Vec<String> =
            serde_json::from_str(&a.binds[0].annotations["gantry.dev/devices"]).unwrap();
        assert_eq!(devs, ["GPU-n0-6", "GPU-n0-7"]);
        // Before the watch confirms "new", another pod arrives and the job set is resynced:
        // the two GPUs in flight must not be handed out again.
        m.upsert_pod(&pod(
            "third",
            1,
            json!({"gantry.dev/queue": "q"}),
            json!({}),
            None,
        ));
        // A node joins, so the snapshot is rebuilt from scratch: "new" must come back from the
        // in-flight assumption, not from the old snapshot.
        m.upsert_node(node("n1"));
        let a = m.cycle(2_000);
        assert!(a.binds.is_empty(), "{a:#?}");
        assert_eq!(m.in_flight(), 1);
        // The bind fails: the assumption is dropped and exactly those two GPUs are free again.
        let new = PodKey {
            ns: "ml".into(),
            name: "new".into(),
        };
        m.bind_failed(&new, &JobKey::Pod(new.clone()));
        let a = m.cycle(3_000);
        let reused: Vec<String> = a
            .binds
            .iter()
            .flat_map(|b| {
                serde_json::from_str::<Vec<String>>(&b.annotations["gantry.dev/devices"]).unwrap()
            })
            .collect();
        assert!(!reused.is_empty(), "{a:#?}");
        assert!(
            reused.iter().all(|d| d == "GPU-n0-6" || d == "GPU-n0-7"),
            "{reused:?}"
        );
    }
}
