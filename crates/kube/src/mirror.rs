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
use gantry_model::{Cluster, ClusterSpec, QueueTree, QueuesSpec};
use k8s_openapi::api::core::v1::{Node as KubeNode, Pod};
use kube::ResourceExt;

use crate::crd::{
    GroupCondition, NodeInventorySpec, PodGroup, PodGroupPhase, PodGroupSpec, PodGroupStatus,
    Queue, QueueStatus,
};
use crate::error::KubeError;
use crate::translate::{
    bind_annotations, created_ms, job_spec, node_of, pod_info, queue_specs, JobKey, JobTranslation,
    NodeView, PodInfo, PodKey, PodState,
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
    /// `Normal` or `Warning`.
    pub warning: bool,
    /// One CamelCase word (`Scheduled`, `Preempted`, `Unschedulable`).
    pub reason: String,
    /// Human text.
    pub note: String,
}

/// Everything one cycle wants written to the API, in the order it should be applied.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Actions {
    /// Evictions (applied first: they free what the binds may use).
    pub evictions: Vec<EvictAction>,
    /// Binds, gang by gang.
    pub binds: Vec<BindAction>,
    /// Pods to mark `PodScheduled=False` with this message.
    pub pod_conditions: Vec<(PodKey, String)>,
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
struct JobEntry {
    id: Option<JobId>,
    /// The translation the snapshot holds, and the allocations it was given back.
    current: Option<(JobTranslation, BoundPods)>,
    /// Why it is not in the snapshot, or why it waits.
    reason: Option<String>,
}

/// See the module docs.
#[derive(Debug)]
pub struct Mirror {
    profile: Profile,
    kube_nodes: BTreeMap<String, KubeNode>,
    inventories: BTreeMap<String, NodeInventorySpec>,
    views: BTreeMap<String, NodeView>,
    queues: BTreeMap<String, Queue>,
    groups: BTreeMap<(String, String), (PodGroupSpec, u64)>,
    pods: BTreeMap<PodKey, PodInfo>,
    bad_pods: BTreeMap<PodKey, String>,
    pods_of: BTreeMap<JobKey, BTreeSet<PodKey>>,
    jobs: BTreeMap<JobKey, JobEntry>,
    in_flight: BTreeMap<PodKey, NamedAlloc>,
    evicting: BTreeSet<PodKey>,
    /// Devices (whole uuids, `uuid@start` for MIG slices) that pods present in the API hold by
    /// their recorded allocation, running or terminating. A bind never goes out for a device
    /// another pod still claims: the API, not the snapshot, has the last word.
    claims: HashMap<String, PodKey>,
    /// Binds planned onto devices another pod still claims (a preempted pod in its grace
    /// period, a pod being deleted), sent once the claim is gone.
    held: BTreeMap<PodKey, BindAction>,
    snap: Snapshot,
    tree: QueueTree,
    tree_error: Option<String>,
    structure_dirty: bool,
    dirty: BTreeSet<JobKey>,
    resubmits: usize,
    observed_pod_reason: HashMap<PodKey, String>,
    observed_group: BTreeMap<(String, String), PodGroupStatus>,
    observed_queue: BTreeMap<String, QueueStatus>,
}

fn rfc3339(now_ms: u64) -> String {
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
            pods: BTreeMap::new(),
            bad_pods: BTreeMap::new(),
            pods_of: BTreeMap::new(),
            jobs: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            claims: HashMap::new(),
            held: BTreeMap::new(),
            evicting: BTreeSet::new(),
            snap,
            tree,
            tree_error: None,
            structure_dirty: true,
            dirty: BTreeSet::new(),
            resubmits: 0,
            observed_pod_reason: HashMap::new(),
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

    /// Why the queue tree is not valid, if it is not (the last valid tree stays in use).
    pub fn tree_error(&self) -> Option<&str> {
        self.tree_error.as_deref()
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
            Ok(v) => v,
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
                        if a.health != b.health {
                            if let Some(d) = self.snap.device_by_uuid(&b.uuid) {
                                self.snap.set_device_health(d, b.health);
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
            .and_then(|c| c.message.clone());
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
                self.pods.insert(key, info);
            }
            Err(e) => {
                self.unlink(&key);
                self.set_claims(&key, None);
                self.pods.remove(&key);
                self.bad_pods.insert(key, e);
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
        let specs = queue_specs(self.queues.values());
        match (QueuesSpec {
            queues: specs,
            priority_classes: None,
        })
        .build()
        {
            Ok(tree) => {
                self.tree = tree;
                self.tree_error = None;
            }
            Err(e) => {
                let msg = format!("queues are not a valid tree, keeping the last valid one: {e}");
                if self.tree_error.as_deref() != Some(&msg) {
                    tracing::warn!(error = %e, "invalid queue tree");
                    for name in self.queues.keys() {
                        actions.events.push(EventAction {
                            regarding: Regarding::Queue(name.clone()),
                            warning: true,
                            reason: "InvalidQueues".into(),
                            note: msg.clone(),
                        });
                    }
                }
                self.tree_error = Some(msg);
            }
        }
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
        let tr = match job_spec(key, &live, group.as_ref().map(|(g, c)| (g, *c))) {
            Ok(t) => t,
            Err(why) => {
                self.retire(key);
                self.jobs.entry(key.clone()).or_default().reason = Some(why);
                return;
            }
        };
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
                entry.reason = Some(format!("cannot be scheduled: {e}"));
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

    /// Sync what changed, run the engine, and say what to write.
    pub fn cycle(&mut self, now_ms: u64) -> Actions {
        let mut actions = Actions::default();
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
            let by = preemptor.map(|k| k.to_string()).unwrap_or_default();
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
                });
            }
            if let Some(e) = self.jobs.get_mut(&victim) {
                e.current = None;
                if let Some(id) = e.id.take() {
                    let _ = self.snap.cancel(id);
                }
            }
            actions.events.push(EventAction {
                regarding: regarding_of(&victim),
                warning: true,
                reason: "Preempted".into(),
                note: reason,
            });
        }
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
            let (mut placed, mut waiting) = (0usize, 0usize);
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
                // Devices a preempted or deleted pod still holds (its grace period) are waited
                // for: the bind goes out once that pod is gone.
                let claimed = claim_keys(&alloc)
                    .iter()
                    .any(|k| self.claims.get(k).is_some_and(|h| h != &pod));
                waiting += usize::from(claimed);
                placed += 1;
                batch.push(BindAction {
                    pod: pod.clone(),
                    job: key.clone(),
                    node: alloc.node.clone(),
                    annotations,
                });
            }
            // A gang goes out whole: if one member waits, all of this placement waits.
            if waiting > 0 {
                for b in batch {
                    self.held.insert(b.pod.clone(), b);
                }
            } else {
                actions.binds.extend(batch);
            }
            actions.events.push(EventAction {
                regarding: regarding_of(&key),
                warning: false,
                reason: if waiting > 0 { "Nominated" } else { "Scheduled" }.into(),
                note: if waiting > 0 {
                    format!(
                        "{placed} pods placed by gantry; bound once preempted or deleted pods release {waiting} of their placements"
                    )
                } else {
                    format!("{placed} pods placed by gantry")
                },
            });
        }
        // Every waiting job's reason as the engine sees it now: the plan's reasons, and for a
        // queue the cycle skipped whole (out of quota), the queue's reason.
        for e in self.jobs.values_mut() {
            if let Some(id) = e.id {
                if self.snap.job_phase(id) == JobPhase::Pending {
                    if let Some(w) = self.snap.why(id) {
                        e.reason = Some(w.text);
                    }
                }
            }
        }
        self.statuses(now_ms, &mut actions);
        actions
    }

    fn statuses(&mut self, now_ms: u64, actions: &mut Actions) {
        // Pods: PodScheduled=False with the reason of their job, or of their own spec.
        let mut want_pod: Vec<(PodKey, String)> = Vec::new();
        for (key, why) in &self.bad_pods {
            want_pod.push((
                key.clone(),
                format!("gantry cannot schedule this pod: {why}"),
            ));
        }
        for (jkey, pods) in &self.pods_of {
            let Some(e) = self.jobs.get(jkey) else {
                continue;
            };
            let Some(why) = &e.reason else { continue };
            for pk in pods {
                let Some(p) = self.pods.get(pk) else { continue };
                if p.node.is_none() && p.state == PodState::Live && !self.in_flight.contains_key(pk)
                {
                    want_pod.push((pk.clone(), why.clone()));
                }
            }
        }
        for (pk, why) in want_pod {
            if self.observed_pod_reason.get(&pk) != Some(&why) {
                self.observed_pod_reason.insert(pk.clone(), why.clone());
                actions.pod_conditions.push((pk, why));
            }
        }
        // PodGroups.
        let keys: Vec<(String, String)> = self.groups.keys().cloned().collect();
        for gk in keys {
            let jkey = JobKey::Group(gk.0.clone(), gk.1.clone());
            let pods: Vec<&PodInfo> = self
                .pods_of
                .get(&jkey)
                .into_iter()
                .flatten()
                .filter_map(|k| self.pods.get(k))
                .collect();
            let running = pods
                .iter()
                .filter(|p| p.state == PodState::Live && p.node.is_some())
                .count() as u32
                + pods
                    .iter()
                    .filter(|p| {
                        p.node.is_none()
                            && self.in_flight.contains_key(&p.key)
                            && !self.held.contains_key(&p.key)
                    })
                    .count() as u32;
            let live = pods.iter().filter(|p| p.state == PodState::Live).count();
            let entry = self.jobs.get(&jkey);
            let in_snapshot = entry.and_then(|e| e.id);
            let reason = entry.and_then(|e| e.reason.clone());
            let (phase, message) = if live == 0 && !pods.is_empty() {
                if pods.iter().all(|p| p.state == PodState::Succeeded) {
                    (PodGroupPhase::Succeeded, String::new())
                } else {
                    (PodGroupPhase::Failed, "a pod failed".to_string())
                }
            } else if let Some(id) = in_snapshot {
                match self.snap.job_phase(id) {
                    JobPhase::Running => (PodGroupPhase::Running, String::new()),
                    _ => match reason {
                        Some(r) => (PodGroupPhase::Unschedulable, r),
                        None => (PodGroupPhase::Inqueue, String::new()),
                    },
                }
            } else {
                let r = reason.unwrap_or_else(|| "no pods yet".into());
                if r.contains("waiting for minMember") || pods.is_empty() {
                    (PodGroupPhase::Pending, r)
                } else {
                    (PodGroupPhase::Unschedulable, r)
                }
            };
            let observed = self.observed_group.get(&gk);
            let conditions = conditions_for(
                phase,
                &message,
                observed.map(|o| o.conditions.as_slice()).unwrap_or(&[]),
                now_ms,
            );
            let want = PodGroupStatus {
                phase,
                conditions,
                running,
                message: message.clone(),
            };
            if observed != Some(&want) {
                if phase == PodGroupPhase::Unschedulable
                    && observed.is_none_or(|o| o.message != message)
                {
                    actions.events.push(EventAction {
                        regarding: Regarding::PodGroup(gk.0.clone(), gk.1.clone()),
                        warning: true,
                        reason: "Unschedulable".into(),
                        note: message.clone(),
                    });
                }
                self.observed_group.insert(gk.clone(), want.clone());
                actions.group_statuses.push((gk, want));
            }
        }
        // Queues.
        let mut admitted: HashMap<String, u32> = HashMap::new();
        for e in self.jobs.values() {
            if let Some(id) = e.id {
                if self.snap.job_phase(id) == JobPhase::Running {
                    let q = self.snap.job_queue(id);
                    *admitted
                        .entry(self.snap.queue_name(q).to_string())
                        .or_default() += 1;
                }
            }
        }
        let names: Vec<String> = self.queues.keys().cloned().collect();
        for name in names {
            let Some(q) = self.snap.queue_by_name(&name) else {
                continue;
            };
            let mut usage = BTreeMap::new();
            let mut share: f64 = 0.0;
            let mut summary = Vec::new();
            for f in self.snap.flavors() {
                let used = self.snap.queue_usage(q, f);
                let nominal = self.snap.queue_nominal(q, f);
                if used == 0 && nominal == 0 {
                    continue;
                }
                let flavor = self.snap.flavor_name(f).to_string();
                usage.insert(flavor.clone(), used as f64 / 1000.0);
                if nominal > 0 {
                    share = share.max(used as f64 / nominal as f64);
                }
                summary.push(format!(
                    "{flavor} {}/{}",
                    fmt_milli(used),
                    fmt_milli(nominal)
                ));
            }
            let want = QueueStatus {
                usage,
                pending: self.snap.queue_pending(q) as u32,
                admitted: admitted.get(&name).copied().unwrap_or(0),
                share: (share * 1000.0).round() / 1000.0,
                summary: summary.join(", "),
            };
            if self.observed_queue.get(&name) != Some(&want) {
                self.observed_queue.insert(name.clone(), want.clone());
                actions.queue_statuses.push((name, want));
            }
        }
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

fn fmt_milli(v: u64) -> String {
    if v.is_multiple_of(1000) {
        (v / 1000).to_string()
    } else {
        format!("{:.2}", v as f64 / 1000.0)
    }
}

fn regarding_of(key: &JobKey) -> Regarding {
    match key {
        JobKey::Group(ns, name) => Regarding::PodGroup(ns.clone(), name.clone()),
        JobKey::Pod(p) => Regarding::Pod(p.clone()),
    }
}

/// One condition per phase type; the current phase's is `True`. A condition keeps its
/// transition time while its status stays the same.
fn conditions_for(
    phase: PodGroupPhase,
    message: &str,
    observed: &[GroupCondition],
    now_ms: u64,
) -> Vec<GroupCondition> {
    [
        PodGroupPhase::Pending,
        PodGroupPhase::Inqueue,
        PodGroupPhase::Running,
        PodGroupPhase::Unschedulable,
    ]
    .into_iter()
    .map(|t| {
        let status = if t == phase { "True" } else { "False" };
        let old = observed.iter().find(|c| c.type_ == t.as_str());
        let time = match old {
            Some(c) if c.status == status => c.last_transition_time.clone(),
            _ => rfc3339(now_ms),
        };
        GroupCondition {
            type_: t.as_str().to_string(),
            status: status.to_string(),
            reason: if t == phase {
                t.as_str().to_string()
            } else {
                format!("Not{}", t.as_str())
            },
            message: if t == phase {
                message.to_string()
            } else {
                String::new()
            },
            last_transition_time: time,
        }
    })
    .collect()
}

fn same_hardware(a: &gantry_model::Node, b: &gantry_model::Node) -> bool {
    a.name == b.name
        && a.cpu_milli == b.cpu_milli
        && a.memory_mib == b.memory_mib
        && a.labels == b.labels
        && a.devices.len() == b.devices.len()
        && a.devices.iter().zip(&b.devices).all(|(x, y)| {
            let mut y = y.clone();
            y.health = x.health;
            *x == y
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str) -> KubeNode {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {"allocatable": {"cpu": "96", "memory": "1Ti"},
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap()
    }

    fn inventory(node: &str, gpus: u32) -> NodeInventorySpec {
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

    fn pod(
        name: &str,
        gpus: u32,
        labels: serde_json::Value,
        ann: serde_json::Value,
        node: Option<&str>,
    ) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ml", "labels": labels, "annotations": ann},
            "spec": {"schedulerName": "gantry", "nodeName": node, "containers": [{"name": "c",
                "resources": {"limits": {"nvidia.com/gpu": gpus.to_string()}}}]}
        }))
        .unwrap()
    }

    fn mirror(nodes: &[(&str, u32)]) -> Mirror {
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
                group_phase: Some(PodGroupPhase::Running),
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
                        .any(|(_, msg)| msg.contains(needle) && !msg.is_empty()),
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
                .any(|(p, msg)| p.name == "b" && msg.contains("quota")),
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
